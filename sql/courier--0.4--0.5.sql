/* courier--0.4--0.5.sql
 *
 * courier 0.5: courier's own SMS/LMS fallback of an AlimTalk, and the
 * delivery receipts in queue_stats.
 *
 * With courier.alimtalk_fallback = courier the AlimTalk dialects ask the
 * provider for no fallback; when AlimTalk cannot reach the customer
 * (3018, 3019, 3020, in the send answer or in the receipt), courier sends
 * the rendered text itself through the provider's SMS dialect (nhn_sms,
 * sens_sms).  The notice records it in the columns 0.4 added: its
 * fallback_reason is set, it is pending again, and once the SMS/LMS is
 * accepted its fallback_channel says which, its provider is the SMS
 * dialect and its receipt is the SMS's.  A notice falls back once: one
 * with a fallback_reason never does again.  No column is added; the
 * webhook function learns the new mode, and queue_stats counts receipts.
 *
 * Run by ALTER EXTENSION courier UPDATE TO '0.5' (and by CREATE EXTENSION,
 * after the earlier scripts).  No row changes: queued work, leases,
 * receipts awaited and failures stay as they are.  The library of 0.5
 * refuses to run batches on a 0.4 schema (courier.run_once says so); app
 * calls keep working across the update.
 */

\echo Use "ALTER EXTENSION courier UPDATE TO '0.5'" to load this file. \quit

COMMENT ON COLUMN courier.notices.fallback_channel IS
	'AlimTalk could not reach the customer and the notice went out again by this channel (sms, lms): resent by the provider (courier.alimtalk_fallback = provider) or by courier through the provider''s SMS dialect (courier).';
COMMENT ON COLUMN courier.notices.fallback_reason IS
	'The AlimTalk result code that called for the fallback (3018, 3019, 3020, ...).  On a pending notice: courier is about to send the SMS/LMS itself (courier.alimtalk_fallback = courier).  A notice with a fallback_reason never falls back again.';

/*
 * The webhook learns courier.alimtalk_fallback = courier: a hook with
 * 3018-3020 then puts its notice back in the tms stage's queue, due now,
 * with the code as its fallback_reason, as the receipt stage does (the
 * sender takes it within courier.idle_wakeup).
 */
CREATE OR REPLACE FUNCTION courier.record_receipts(body jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	/* who resends by SMS/LMS what AlimTalk cannot deliver */
	fallback text := pg_catalog.current_setting('courier.alimtalk_fallback', true);
BEGIN
	IF body IS NULL OR pg_catalog.jsonb_typeof(body) <> 'object'
	   OR body ->> 'event' IS DISTINCT FROM 'MESSAGE_RESULT_UPDATE'
	   OR pg_catalog.jsonb_typeof(body -> 'hooks') IS DISTINCT FROM 'array' THEN
		RAISE EXCEPTION 'not an NHN Cloud MESSAGE_RESULT_UPDATE webhook body'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The body is an object with "event": "MESSAGE_RESULT_UPDATE" and a "hooks" array of {recipientGroupingKey, resultCode, ...}.',
				  HINT = 'Pass the webhook''s body as it came, e.g. SELECT courier.record_receipts($1::jsonb).';
	END IF;

	/*
	 * Each hook names its notice by the key courier sent as the recipient's
	 * grouping key, dn-<order id>-<yyyymmdd>; hooks of other messages are
	 * skipped.  The first final state wins: a repeated webhook changes
	 * nothing.  An AlimTalk that cannot reach the customer (3018-3020) is
	 * not final when someone sends the SMS/LMS instead: under 'provider'
	 * the notice keeps awaiting, with the code as its fallback's reason,
	 * and the receipt stage learns how the provider's resend ended; under
	 * 'courier' it is pending again, due now, and the tms stage sends it
	 * through the SMS dialect.  Either way once: a notice with a
	 * fallback_reason is not touched again.
	 */
	WITH hook AS (
		SELECT h ->> 'recipientGroupingKey' AS key, h ->> 'resultCode' AS code
		  FROM pg_catalog.jsonb_array_elements(body -> 'hooks') AS h
		 WHERE pg_catalog.jsonb_typeof(h) = 'object'
	), target AS (
		SELECT DISTINCT ON (k.order_id, k.ship_date) k.order_id, k.ship_date, k.code
		  FROM (SELECT pg_catalog.split_part(hook.key, '-', 2)::bigint AS order_id,
					   pg_catalog.to_date(pg_catalog.split_part(hook.key, '-', 3), 'YYYYMMDD') AS ship_date,
					   hook.code
				  FROM hook
				 WHERE hook.key ~ '^dn-[0-9]{1,18}-[0-9]{8}$' AND hook.code IS NOT NULL) k
	)
	UPDATE courier.notices n
	   SET status = CASE WHEN t.by_courier THEN 'pending' ELSE n.status END,
		   due_at = CASE WHEN t.by_courier THEN pg_catalog.now() ELSE n.due_at END,
		   errors = CASE WHEN t.by_courier THEN n.errors ||
						   pg_catalog.jsonb_build_object('at', pg_catalog.now(),
							   'code', 'tms:' || t.code,
							   'error', 'AlimTalk cannot reach the customer: courier sends the SMS/LMS instead')
					ELSE n.errors END,
		   receipt_status = CASE WHEN t.by_courier THEN NULL
								 WHEN t.code = '1000' THEN 'delivered'
								 WHEN t.by_provider THEN 'awaiting' ELSE 'failed' END,
		   receipt_code = CASE WHEN t.by_provider THEN n.receipt_code ELSE t.code END,
		   receipt_at = CASE WHEN t.by_provider OR t.by_courier THEN NULL
							 ELSE pg_catalog.now() END,
		   receipt_due_at = CASE WHEN t.by_provider THEN n.receipt_due_at END,
		   receipt_checks = CASE WHEN t.by_courier THEN 0 ELSE n.receipt_checks END,
		   fallback_reason = CASE WHEN t.by_provider OR t.by_courier THEN t.code
								  ELSE n.fallback_reason END
	  FROM (SELECT t0.*,
				   fallback IS NOT DISTINCT FROM 'provider'
				   AND t0.code IN ('3018', '3019', '3020') AS by_provider,
				   fallback IS NOT DISTINCT FROM 'courier'
				   AND t0.code IN ('3018', '3019', '3020') AS by_courier
			  FROM target t0) t
	  JOIN courier.orders o ON o.order_id = t.order_id
	 WHERE n.seller_id = o.seller_id AND n.order_id = t.order_id
	   AND n.ship_date = t.ship_date
	   AND n.status = 'delivered'
	   AND n.receipt_status IS DISTINCT FROM 'delivered'
	   AND n.receipt_status IS DISTINCT FROM 'failed'
	   AND n.receipt_status IS DISTINCT FROM 'expired'
	   AND n.fallback_reason IS NULL;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.record_receipts(jsonb) IS
	'Records the delivery receipts of an NHN Cloud MESSAGE_RESULT_UPDATE webhook body (handed over by the app): each named notice becomes delivered (code 1000) or failed with the code; with 3018-3020 it waits for the SMS/LMS fallback instead (courier.alimtalk_fallback = provider or courier). Returns the notices changed.';

/*
 * queue_stats: the tms stage's row also counts the notices kept by their
 * receipt: accepted and awaiting it, delivered to the handset, failed,
 * expired (NULL on the logic stage's row).  New columns come last, so the
 * view is replaced, not dropped: grants and metrics() stay.
 */
CREATE OR REPLACE VIEW courier.queue_stats AS
WITH queued(stage, backlog, due_now, in_flight, oldest_age) AS (
	SELECT 'logic'::courier.stage, count(*),
		   count(*) FILTER (WHERE w.not_before <= now()),
		   count(*) FILTER (WHERE w.leased_by IS NOT NULL AND w.not_before > now()),
		   now() - min(w.created_at)
	  FROM courier.work_items w
	 WHERE w.stage = 'logic'
	UNION ALL
	/* the tms stage's queue is its pending notices */
	SELECT 'tms'::courier.stage, count(*),
		   count(*) FILTER (WHERE n.due_at <= now()),
		   count(*) FILTER (WHERE n.leased_by IS NOT NULL AND n.due_at > now()),
		   now() - min(n.created_at)
	  FROM courier.notices n
	 WHERE n.status = 'pending'
), receipts(awaiting, delivered, failed, expired) AS (
	SELECT count(*) FILTER (WHERE n.receipt_status = 'awaiting'),
		   count(*) FILTER (WHERE n.receipt_status = 'delivered'),
		   count(*) FILTER (WHERE n.receipt_status = 'failed'),
		   count(*) FILTER (WHERE n.receipt_status = 'expired')
	  FROM courier.notices n
	 WHERE n.receipt_status IS NOT NULL
)
SELECT s.stage,
	   coalesce(q.backlog, 0) AS backlog,
	   coalesce(q.due_now, 0) AS due_now,
	   coalesce(q.in_flight, 0) AS in_flight,
	   q.oldest_age,
	   CASE s.stage
		   WHEN 'logic' THEN (SELECT count(*) FROM courier.delay_history
							   WHERE applied_at > now() - interval '1 hour')
		   ELSE (SELECT count(*) FROM courier.notices
				  WHERE sent_at > now() - interval '1 hour')
	   END AS done_last_hour,
	   (SELECT count(*) FROM courier.failures f
		 WHERE f.stage = s.stage AND f.failed_at > now() - interval '1 hour') AS failed_last_hour,
	   (SELECT count(*) FROM courier.failures f
		 WHERE f.stage = s.stage AND f.discarded_at IS NULL) AS failures_open,
	   CASE s.stage WHEN 'tms' THEN r.awaiting END AS receipts_awaiting,
	   CASE s.stage WHEN 'tms' THEN r.delivered END AS receipts_delivered,
	   CASE s.stage WHEN 'tms' THEN r.failed END AS receipts_failed,
	   CASE s.stage WHEN 'tms' THEN r.expired END AS receipts_expired
  FROM unnest(enum_range(NULL::courier.stage)) AS s(stage)
  LEFT JOIN queued q ON q.stage = s.stage
 CROSS JOIN receipts r;
COMMENT ON VIEW courier.queue_stats IS
	'Per stage: items queued (logic: work items; tms: pending notices), due now, in flight (leased), age of the oldest, done and failed in the last hour, open failures; for the tms stage also the notices kept by their delivery receipt: accepted and awaiting it, delivered to the handset, failed, expired.';
