/* courier--0.3--0.4.sql
 *
 * courier 0.4: keys that a table sharded by seller can keep (docs/citus.md,
 * rules 1 and 2).
 *
 * Citus distributes a table by one column and refuses a primary or unique
 * key that does not include it.  courier's tables are meant to be
 * distributed by seller_id, co-located with courier.orders, so every key
 * of those tables now starts with seller_id, every ON CONFLICT target
 * names it, and the statements of a batch carry the seller of each row so
 * that they join on (seller_id, key).  Lookups by an id alone (the app
 * names orders by order id, the DBA console failures by failure id,
 * request_status history rows by request id) go through plain indexes.
 *
 * One rule comes with it: an order never changes seller.  register_orders
 * refuses to register a known order id under another seller (a sharded
 * table cannot move a row by updating its distribution column, and no
 * index can keep an order id unique across sellers).
 *
 * Run by ALTER EXTENSION courier UPDATE TO '0.4' (and by CREATE EXTENSION,
 * after the earlier scripts).  Only keys and indexes change: no row moves,
 * queued work, leases and failures stay as they are.  The library of 0.4
 * refuses to run batches on a 0.3 schema (courier.run_once says so), and
 * app calls keep working across the update.
 */

\echo Use "ALTER EXTENSION courier UPDATE TO '0.4'" to load this file. \quit

/* ------------------------------------------------------------------------
 * Keys that start with seller_id (rule 1)
 * ------------------------------------------------------------------------ */

ALTER TABLE courier.orders DROP CONSTRAINT orders_pkey,
	ADD PRIMARY KEY (seller_id, order_id);
/* the app names orders by id alone: register_invoice, delay_orders, ... */
CREATE INDEX orders_order_id ON courier.orders (order_id);

ALTER TABLE courier.notices DROP CONSTRAINT notices_pkey,
	ADD PRIMARY KEY (seller_id, order_id, ship_date);

ALTER TABLE courier.delay_history DROP CONSTRAINT delay_history_pkey,
	ADD PRIMARY KEY (seller_id, request_id, order_id);
/* request_status counts a request's history rows */
CREATE INDEX delay_history_request ON courier.delay_history (request_id);

ALTER TABLE courier.failures DROP CONSTRAINT failures_pkey,
	ADD PRIMARY KEY (seller_id, failure_id);
/* the DBA console names failures by id alone */
CREATE INDEX failures_failure_id ON courier.failures (failure_id);

ALTER TABLE courier.work_items DROP CONSTRAINT work_items_pkey,
	ADD PRIMARY KEY (seller_id, item_id, slot);

/* ------------------------------------------------------------------------
 * The functions in SQL join on (seller_id, key)
 * ------------------------------------------------------------------------ */

CREATE OR REPLACE FUNCTION courier.order_closed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM courier.close_at_commit(NEW.order_id);
	/* notices no sender holds are dropped now; a held one is dropped by its sender */
	UPDATE courier.notices n SET status = 'dropped', due_at = NULL, leased_by = NULL
	 WHERE n.seller_id = NEW.seller_id AND n.order_id = NEW.order_id
	   AND n.status = 'pending'
	   AND (n.leased_by IS NULL OR n.due_at <= pg_catalog.statement_timestamp());
	RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION courier.retry_failures(failure_ids bigint[] DEFAULT NULL,
												  stage courier.stage DEFAULT NULL,
												  error_pattern text DEFAULT NULL,
												  failed_after timestamptz DEFAULT NULL,
												  failed_before timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	WITH moved AS (
		DELETE FROM courier.failures f
		 WHERE f.failure_id IN (SELECT courier.failures_matching($1, $2, $3, $4, $5))
		   /* never a second item beside one still queued for the same work */
		   AND NOT (f.stage = 'logic' AND EXISTS (
					SELECT 1 FROM courier.work_items w
					 WHERE w.stage = 'logic' AND w.seller_id = f.seller_id
					   AND w.order_id = f.order_id AND w.request_id = f.request_id))
		   AND NOT (f.stage = 'tms' AND EXISTS (
					SELECT 1 FROM courier.notices p
					 WHERE p.seller_id = f.seller_id AND p.order_id = f.order_id
					   AND p.ship_date = f.ship_date AND p.status = 'pending'))
		RETURNING f.*
	), queued AS (
		INSERT INTO courier.work_items
			(slot, stage, seller_id, order_id, request_id, errors, created_at)
		SELECT (SELECT courier.queue_slot()), m.stage, m.seller_id, m.order_id,
			   m.request_id, m.errors, m.first_queued_at
		  FROM moved m
		 WHERE m.stage = 'logic'
		RETURNING 1
	), reopened AS (
		UPDATE courier.notices n
		   SET status = 'pending', due_at = pg_catalog.now(), leased_by = NULL,
			   attempts = 0, errors = m.errors
		  FROM moved m
		 WHERE m.stage = 'tms' AND n.seller_id = m.seller_id
		   AND n.order_id = m.order_id AND n.ship_date = m.ship_date
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM queued) + (SELECT count(*) FROM reopened) INTO n;
	RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION courier.prune_chunk(cutoff timestamptz, chunk integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	DELETE FROM courier.notices n
	 WHERE (n.seller_id, n.order_id, n.ship_date) IN (
		SELECT seller_id, order_id, ship_date FROM courier.notices
		 WHERE sent_at < cutoff AND status IN ('delivered', 'dry_run')
		 LIMIT chunk);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		RETURN n;
	END IF;

	/* history rows go, their count stays with the request */
	WITH gone AS (
		DELETE FROM courier.delay_history h
		 WHERE (h.seller_id, h.request_id, h.order_id) IN (
			SELECT seller_id, request_id, order_id FROM courier.delay_history
			 WHERE applied_at < cutoff LIMIT chunk)
		RETURNING h.request_id
	), per_request AS (
		SELECT g.request_id, count(*) AS n FROM gone g GROUP BY g.request_id
	), folded AS (
		UPDATE courier.requests r SET pruned_done = r.pruned_done + p.n
		  FROM per_request p
		 WHERE r.request_id = p.request_id
	)
	SELECT count(*) INTO n FROM gone;
	IF n > 0 THEN
		RETURN n;
	END IF;

	WITH gone AS (
		DELETE FROM courier.failures f
		 WHERE (f.seller_id, f.failure_id) IN (
			SELECT seller_id, failure_id FROM courier.failures
			 WHERE discarded_at < cutoff LIMIT chunk)
		RETURNING f.request_id, f.stage
	), per_request AS (
		SELECT g.request_id, count(*) AS n FROM gone g
		 WHERE g.stage = 'logic' AND g.request_id IS NOT NULL
		 GROUP BY g.request_id
	), folded AS (
		UPDATE courier.requests r SET pruned_failed = r.pruned_failed + p.n
		  FROM per_request p
		 WHERE r.request_id = p.request_id
	)
	SELECT count(*) INTO n FROM gone;
	IF n > 0 THEN
		RETURN n;
	END IF;

	DELETE FROM courier.alerts a
	 WHERE a.alert_id IN (SELECT alert_id FROM courier.alerts
						   WHERE posted_at < cutoff LIMIT chunk);
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION courier.sweep_overdue()
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids bigint[];
BEGIN
	/* orders past their invoice deadline, not yet notified for that deadline */
	WITH due AS (
		SELECT o.seller_id, o.order_id
		  FROM courier.orders o
		 WHERE o.status = 'shipping_requested'
		   AND o.invoice_number IS NULL
		   AND o.invoice_deadline < pg_catalog.now()
		   AND o.overdue_notified_for IS DISTINCT FROM o.invoice_deadline
		   AND courier.switch_enabled('overdue_sweep', o.order_id)
		 ORDER BY o.invoice_deadline
		 LIMIT pg_catalog.current_setting('courier.max_orders_per_request')::integer
		   FOR UPDATE SKIP LOCKED
	), marked AS (
		UPDATE courier.orders o
		   SET overdue_notified_for = o.invoice_deadline
		  FROM due
		 WHERE o.seller_id = due.seller_id AND o.order_id = due.order_id
		RETURNING o.order_id
	)
	SELECT pg_catalog.array_agg(order_id ORDER BY order_id) INTO ids FROM marked;

	IF ids IS NULL THEN
		RETURN 0;
	END IF;
	PERFORM courier.delay_orders(ids, pg_catalog.current_setting('courier.overdue_reason'),
								 CURRENT_DATE + pg_catalog.current_setting('courier.overdue_delay_days')::integer);
	RETURN pg_catalog.cardinality(ids);
END
$$;

/* ------------------------------------------------------------------------
 * Delivery receipts: accepted is not delivered
 * ------------------------------------------------------------------------ */

/*
 * A provider that answers "accepted" still has to reach the handset; it
 * tells how that ended later, through its query API or a webhook.  A
 * notice sent through such a provider (every dialect but generic) is
 * 'awaiting' its receipt from the moment it is accepted, then 'delivered'
 * (on the handset) or 'failed' with the provider's code.  Adding columns
 * without defaults rewrites nothing.
 */
ALTER TABLE courier.notices
	ADD COLUMN receipt_status text
		CHECK (receipt_status IN ('awaiting', 'delivered', 'failed', 'expired',
								  'unconfirmed')),
	ADD COLUMN receipt_code text,
	ADD COLUMN receipt_at timestamptz,
	ADD COLUMN receipt_due_at timestamptz,
	ADD COLUMN receipt_checks integer NOT NULL DEFAULT 0,
	ADD COLUMN fallback_channel text CHECK (fallback_channel IN ('sms', 'lms')),
	ADD COLUMN fallback_reason text,
	ADD COLUMN provider text;
COMMENT ON COLUMN courier.notices.provider IS
	'The dialect (courier.tms_provider) that sent the notice: its receipt is asked of that provider, even after a switch to another.';
COMMENT ON COLUMN courier.notices.receipt_status IS
	'Through a provider that reports delivery (not generic): awaiting once accepted, then delivered (on the handset, by AlimTalk or by its SMS/LMS fallback) or failed, from the provider''s receipt; expired when courier.receipt_horizon passed without one.  unconfirmed: a pending notice whose last attempt got no answer, through a provider without an idempotency key, looked up there before any resend.';
COMMENT ON COLUMN courier.notices.receipt_due_at IS
	'When the receipt stage next asks the provider (back-off between checks; the lease''s end while a sender asks).';
COMMENT ON COLUMN courier.notices.receipt_checks IS
	'How many times the receipt stage asked the provider.';
COMMENT ON COLUMN courier.notices.fallback_channel IS
	'AlimTalk could not reach the customer and the provider resent the notice by this channel (sms, lms).';
COMMENT ON COLUMN courier.notices.fallback_reason IS
	'The AlimTalk result code that called for the fallback (NHN 3018, 3019, 3020, ...).';
COMMENT ON COLUMN courier.notices.receipt_code IS
	'The provider''s final result code for the recipient (NHN: 1000 delivered, 3019 not a KakaoTalk user, ...; docs/providers.md).';
COMMENT ON COLUMN courier.notices.receipt_at IS
	'When courier learned the final state.';

/* receipts by state, for metrics(); only notices of providers with receipts */
CREATE INDEX notices_receipt ON courier.notices (receipt_status)
	WHERE receipt_status IS NOT NULL;
/* the receipt stage: notices awaiting a receipt, by when to ask next */
CREATE INDEX notices_receipt_due ON courier.notices (receipt_due_at)
	WHERE receipt_status IN ('awaiting', 'unconfirmed');

CREATE FUNCTION courier.record_receipts(body jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	/* the provider resends by SMS/LMS what AlimTalk cannot deliver */
	resends boolean := pg_catalog.current_setting('courier.alimtalk_fallback', true)
					   IS NOT DISTINCT FROM 'provider';
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
	 * nothing.  An AlimTalk the provider is to resend by SMS/LMS (codes
	 * 3018-3020 under courier.alimtalk_fallback = provider) is not final:
	 * the notice keeps awaiting, with the code as its fallback's reason,
	 * and the receipt stage learns how the resend ended.
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
	   SET receipt_status = CASE WHEN t.code = '1000' THEN 'delivered'
								 WHEN t.resent THEN 'awaiting' ELSE 'failed' END,
		   receipt_code = CASE WHEN t.resent THEN n.receipt_code ELSE t.code END,
		   receipt_at = CASE WHEN t.resent THEN NULL ELSE pg_catalog.now() END,
		   receipt_due_at = CASE WHEN t.resent THEN n.receipt_due_at END,
		   fallback_reason = CASE WHEN t.resent THEN t.code ELSE n.fallback_reason END
	  FROM (SELECT t0.*, resends AND t0.code IN ('3018', '3019', '3020') AS resent
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
	'Records the delivery receipts of an NHN Cloud MESSAGE_RESULT_UPDATE webhook body (handed over by the app): each named notice becomes delivered (code 1000) or failed with the code. Returns the notices changed.';
REVOKE ALL ON FUNCTION courier.record_receipts(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.record_receipts(jsonb) TO courier_app, courier_admin;

CREATE OR REPLACE FUNCTION courier.metrics()
RETURNS text
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH family(name, type, help, ord) AS (VALUES
		('courier_items_total', 'counter', 'Items processed per stage and result since server start.', 1),
		('courier_batches_total', 'counter', 'Batches processed per stage since server start.', 2),
		('courier_tms_events_total', 'counter', 'TMS requests, throttles and breaker openings since server start.', 3),
		('courier_queue_backlog', 'gauge', 'Items queued per stage.', 4),
		('courier_queue_due', 'gauge', 'Items due now per stage.', 5),
		('courier_queue_in_flight', 'gauge', 'Items leased by senders per stage.', 6),
		('courier_queue_oldest_age_seconds', 'gauge', 'Age of the oldest queued item per stage.', 7),
		('courier_failures_open', 'gauge', 'Failures neither retried nor discarded per stage.', 8),
		('courier_table_dead_tuples', 'gauge', 'Dead tuples of courier tables (queue bloat).', 9),
		('courier_notices_receipts', 'gauge', 'Notices kept (courier.retention) that went through a provider with delivery receipts, by receipt: awaiting (accepted), delivered (on the handset), failed, expired (no receipt within courier.receipt_horizon).', 10)
	), counter AS (
		SELECT c.stage, c.counter, c.value FROM courier.shared_counters() c
	), sample(name, labels, value) AS (
		SELECT 'courier_items_total', format('stage="%s",result="%s"', c.stage, c.counter), c.value::numeric
		  FROM counter c WHERE c.counter IN ('done', 'failed')
		UNION ALL
		SELECT 'courier_batches_total', format('stage="%s"', c.stage), c.value
		  FROM counter c WHERE c.counter = 'batches'
		UNION ALL
		SELECT 'courier_tms_events_total', format('event="%s"', c.counter), c.value
		  FROM counter c WHERE c.counter LIKE 'tms\_%'
		UNION ALL
		SELECT g.name, format('stage="%s"', q.stage), g.value
		  FROM courier.queue_stats q,
			   LATERAL (VALUES ('courier_queue_backlog', q.backlog::numeric),
							   ('courier_queue_due', q.due_now),
							   ('courier_queue_in_flight', q.in_flight),
							   ('courier_queue_oldest_age_seconds',
								coalesce(round(extract(epoch FROM q.oldest_age), 3), 0)),
							   ('courier_failures_open', q.failures_open)) AS g(name, value)
		UNION ALL
		SELECT 'courier_table_dead_tuples', format('table="%s"', t.relname), t.n_dead_tup
		  FROM pg_stat_user_tables t WHERE t.schemaname = 'courier'
		UNION ALL
		SELECT 'courier_notices_receipts', format('receipt="%s"', r.status),
			   (SELECT count(*) FROM courier.notices n WHERE n.receipt_status = r.status)
		  FROM (VALUES ('awaiting'), ('delivered'), ('failed'), ('expired')) AS r(status)
	)
	SELECT string_agg(format(E'# HELP %s %s\n# TYPE %s %s', f.name, f.help, f.name, f.type)
					  || coalesce((SELECT string_agg(format(E'\n%s{%s} %s', s.name, s.labels, s.value),
													 '' ORDER BY s.labels)
									 FROM sample s WHERE s.name = f.name), ''),
					  E'\n' ORDER BY f.ord) || E'\n'
	  FROM family f
$$;

COMMENT ON FUNCTION courier.register_orders(jsonb) IS
	'Add or update orders from a JSON array of {order_id, seller_id, customer_phone, product_name, promised_ship_date[, status]}; all or nothing. An order never changes seller: a known order id under another seller is refused.';
