/* courier--0.1.sql
 *
 * The data model of courier, read top to bottom: types, tables (each with a
 * COMMENT saying what it holds), indexes with the query they serve, then the
 * functions grouped as app API, stage drivers, DBA console.
 *
 * Every table carries seller_id so that it can later be distributed by it;
 * keys that later steps need (the notice key) are natural, not sequences.
 */

\echo Use "CREATE EXTENSION courier" to load this file. \quit

/* ------------------------------------------------------------------------
 * Types
 * ------------------------------------------------------------------------ */

CREATE TYPE courier.order_status AS ENUM
	('paid', 'shipping_requested', 'invoiced', 'shipped', 'cancelled');

CREATE TYPE courier.stage AS ENUM ('logic', 'tms');
COMMENT ON TYPE courier.stage IS
	'A processing stage: logic applies delays and writes notices, tms sends them.';

/* ------------------------------------------------------------------------
 * Tables
 * ------------------------------------------------------------------------ */

CREATE TABLE courier.orders (
	order_id			bigint PRIMARY KEY,
	seller_id			bigint NOT NULL,
	customer_phone		text NOT NULL,
	product_name		text NOT NULL,
	status				courier.order_status NOT NULL DEFAULT 'paid',
	promised_ship_date	date NOT NULL,
	invoice_deadline	timestamptz,
	invoice_number		text,
	delay_reason		text,
	overdue_notified_for timestamptz,
	updated_at			timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE courier.orders IS
	'Orders courier tracks: registered by the app, delayed by requests, closed by an invoice.';

CREATE TABLE courier.requests (
	request_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	reason				text NOT NULL,
	new_ship_date		date NOT NULL,
	total				integer NOT NULL,
	requested_by		name NOT NULL DEFAULT current_user,
	created_at			timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE courier.requests IS
	'Bulk delay requests made by courier.delay_orders(); progress is derived by courier.request_status().';

CREATE TABLE courier.work_items (
	item_id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	stage				courier.stage NOT NULL,
	seller_id			bigint NOT NULL,
	order_id			bigint NOT NULL,
	request_id			bigint,
	ship_date			date,
	attempts			integer NOT NULL DEFAULT 0,
	not_before			timestamptz NOT NULL DEFAULT now(),
	leased_by			integer,
	solo				boolean NOT NULL DEFAULT false,
	errors				jsonb NOT NULL DEFAULT '[]',
	created_at			timestamptz NOT NULL DEFAULT now(),
	CHECK ((stage = 'logic') = (request_id IS NOT NULL)),
	CHECK ((stage = 'tms') = (ship_date IS NOT NULL))
);
COMMENT ON TABLE courier.work_items IS
	'The queue of every stage: one row per item not yet done. Done items are deleted, failed ones move to courier.failures.';
COMMENT ON COLUMN courier.work_items.request_id IS
	'logic items: the delay request to apply to order_id.';
COMMENT ON COLUMN courier.work_items.ship_date IS
	'tms items: the notice (order_id, ship_date) to send.';
COMMENT ON COLUMN courier.work_items.not_before IS
	'The item is not claimed before this time: now for new work, the back-off after a failed attempt, the lease expiry while a sender holds it.';
COMMENT ON COLUMN courier.work_items.leased_by IS
	'pid of the sender holding a lease; the lease ends at not_before, so a dead sender''s items fall due again by themselves.';
COMMENT ON COLUMN courier.work_items.solo IS
	'The item''s batch died as a whole: it is retried alone, so only the culprit pays another attempt.';
COMMENT ON COLUMN courier.work_items.errors IS
	'One object per failed attempt: at, error, sqlstate, http_status.';

CREATE TABLE courier.delay_history (
	request_id			bigint NOT NULL,
	order_id			bigint NOT NULL,
	seller_id			bigint NOT NULL,
	old_ship_date		date,
	new_ship_date		date NOT NULL,
	outcome				text NOT NULL CHECK (outcome IN ('delayed', 'unchanged', 'skipped')),
	applied_at			timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (request_id, order_id)
);
COMMENT ON TABLE courier.delay_history IS
	'One row per order of a request whose delay the logic stage applied: delayed, unchanged (already that date) or skipped (order closed meanwhile).';

CREATE TABLE courier.notices (
	order_id			bigint NOT NULL,
	ship_date			date NOT NULL,
	seller_id			bigint NOT NULL,
	customer_phone		text NOT NULL,
	product_name		text NOT NULL,
	reason				text NOT NULL,
	variant				text NOT NULL DEFAULT 'v1',
	status				text NOT NULL DEFAULT 'pending'
		CHECK (status IN ('pending', 'delivered', 'dry_run', 'dropped', 'failed')),
	created_at			timestamptz NOT NULL DEFAULT now(),
	sent_at				timestamptz,
	channel				text,
	attempts			integer,
	http_status			integer,
	latency_ms			double precision,
	provider_id			text,
	PRIMARY KEY (order_id, ship_date)
);
COMMENT ON TABLE courier.notices IS
	'The outbox and delivery log: one delay notice per order and distinct new ship date, drained by the tms stage; the key is the idempotency key. Delivered notices keep the provider id, HTTP status, latency and attempts.';

CREATE TABLE courier.failures (
	failure_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	item_id				bigint NOT NULL,
	stage				courier.stage NOT NULL,
	seller_id			bigint NOT NULL,
	order_id			bigint NOT NULL,
	request_id			bigint,
	ship_date			date,
	attempts			integer NOT NULL,
	last_error			text,
	last_sqlstate		text,
	last_http_status	integer,
	errors				jsonb NOT NULL,
	first_queued_at		timestamptz NOT NULL,
	failed_at			timestamptz NOT NULL DEFAULT now(),
	discarded_at		timestamptz
);
COMMENT ON TABLE courier.failures IS
	'Items that exhausted their attempts or failed permanently, with every attempt in errors. Replay with courier.retry_failures(), drop with courier.discard_failures().';

CREATE TABLE courier.alerts (
	alert_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind				text NOT NULL,
	payload				jsonb NOT NULL,
	created_at			timestamptz NOT NULL DEFAULT now(),
	posted_at			timestamptz,
	post_attempts		integer NOT NULL DEFAULT 0,
	next_post_at		timestamptz NOT NULL DEFAULT now(),
	post_error			text
);
COMMENT ON TABLE courier.alerts IS
	'Alerts raised by courier (failure digests): also sent with NOTIFY courier_alerts; the launcher POSTs unposted ones to courier.alert_url outside any transaction.';

CREATE TABLE courier.digest_state (
	singleton			boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	last_failure_id		bigint NOT NULL DEFAULT 0,
	last_run_at			timestamptz
);
INSERT INTO courier.digest_state DEFAULT VALUES;
COMMENT ON TABLE courier.digest_state IS
	'Where courier.failure_digest() stopped: failures with a higher id are new.';

/* ------------------------------------------------------------------------
 * Indexes, each with the query it serves
 * ------------------------------------------------------------------------ */

/* claim: WHERE stage = $1 AND not_before <= now() ORDER BY not_before, item_id LIMIT n FOR UPDATE SKIP LOCKED */
CREATE INDEX work_items_due ON courier.work_items (stage, not_before, item_id);

/* register_invoice / sweep: the tms items of one order */
CREATE INDEX work_items_order ON courier.work_items (order_id) WHERE stage = 'tms';

/* request_status: failed count of a request */
CREATE INDEX failures_request ON courier.failures (request_id) WHERE request_id IS NOT NULL;

/* DBA console: failures by stage and time */
CREATE INDEX failures_stage_time ON courier.failures (stage, failed_at);

/* sweep_overdue: open orders past their invoice deadline */
CREATE INDEX orders_overdue ON courier.orders (invoice_deadline)
	WHERE status = 'shipping_requested' AND invoice_number IS NULL;

/* prune: delivered notices by age */
CREATE INDEX notices_sent_at ON courier.notices (sent_at) WHERE sent_at IS NOT NULL;

/* prune: history by age */
CREATE INDEX delay_history_applied_at ON courier.delay_history (applied_at);

/* the launcher: alerts not yet posted */
CREATE INDEX alerts_unposted ON courier.alerts (next_post_at) WHERE posted_at IS NULL;

/*
 * The queue churns: every item is inserted once and deleted once.  Vacuum it
 * early so the claim index scan does not wade through dead entries.
 */
ALTER TABLE courier.work_items SET (autovacuum_vacuum_scale_factor = 0.0,
									autovacuum_vacuum_threshold = 5000,
									autovacuum_vacuum_insert_scale_factor = 0.0,
									autovacuum_vacuum_insert_threshold = 20000,
									autovacuum_analyze_scale_factor = 0.0,
									autovacuum_analyze_threshold = 20000);

/* ------------------------------------------------------------------------
 * App API
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.register_orders(orders jsonb)
RETURNS integer
AS 'MODULE_PATHNAME', 'courier_register_orders'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION courier.register_orders(jsonb) IS
	'Add or update orders from a JSON array of {order_id, seller_id, customer_phone, product_name, promised_ship_date[, status]}; all or nothing.';

CREATE FUNCTION courier.request_shipping(order_ids bigint[])
RETURNS integer
AS 'MODULE_PATHNAME', 'courier_request_shipping'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION courier.request_shipping(bigint[]) IS
	'Payment done: the orders become shipping_requested and get an invoice deadline (courier.invoice_deadline).';

CREATE FUNCTION courier.register_invoice(order_id bigint, invoice_number text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'courier_register_invoice'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION courier.register_invoice(bigint, text) IS
	'Invoice registered: the order becomes invoiced and a notice not yet sent for it is dropped. Returns whether a notice was dropped.';

CREATE FUNCTION courier.delay_orders(order_ids bigint[], reason text, new_ship_date date)
RETURNS bigint
AS 'MODULE_PATHNAME', 'courier_delay_orders'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION courier.delay_orders(bigint[], text, date) IS
	'Validate a bulk delay and queue it for the logic stage; returns the request id. All or nothing.';

CREATE FUNCTION courier.request_status(request_id bigint,
	OUT total integer, OUT done integer, OUT failed integer, OUT pending integer)
RETURNS record
LANGUAGE sql STABLE STRICT
AS $$
	SELECT r.total, d.done, f.failed, r.total - d.done - f.failed
	  FROM courier.requests r,
		   LATERAL (SELECT count(*)::integer AS done
					  FROM courier.delay_history h
					 WHERE h.request_id = r.request_id) d,
		   LATERAL (SELECT count(*)::integer AS failed
					  FROM courier.failures f
					 WHERE f.request_id = r.request_id AND f.stage = 'logic') f
	 WHERE r.request_id = $1
$$;
COMMENT ON FUNCTION courier.request_status(bigint) IS
	'Progress of a delay request: total orders, done (delay applied), failed, pending.';

/* ------------------------------------------------------------------------
 * Stage drivers
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.run_once(stage text)
RETURNS integer
AS 'MODULE_PATHNAME', 'courier_run_once'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION courier.run_once(text) IS
	'Process one batch of a stage (logic or tms) in this session; returns the items handled, 0 when nothing is due.';

CREATE FUNCTION courier.backoff_delay(attempt integer)
RETURNS interval
AS 'MODULE_PATHNAME', 'courier_backoff_delay'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION courier.backoff_delay(integer) IS
	'Wait before retry number attempt: min(cap, base * 2^(attempt-1)), of which a random half (equal jitter).';

CREATE FUNCTION courier.switch_enabled(name text, key bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'courier_switch_enabled'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION courier.switch_enabled(text, bigint) IS
	'Is key (an order id) inside rollout switch courier.rollout_<name>? Stable: the same order always gets the same answer, and raising the percentage only adds orders.';

/* ------------------------------------------------------------------------
 * Schedules (pg_cron runs them; each also works called by hand)
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.sweep_overdue()
RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	ids bigint[];
BEGIN
	/* orders past their invoice deadline, not yet notified for that deadline */
	WITH due AS (
		SELECT o.order_id
		  FROM courier.orders o
		 WHERE o.status = 'shipping_requested'
		   AND o.invoice_number IS NULL
		   AND o.invoice_deadline < now()
		   AND o.overdue_notified_for IS DISTINCT FROM o.invoice_deadline
		   AND courier.switch_enabled('overdue_sweep', o.order_id)
		 ORDER BY o.invoice_deadline
		 LIMIT current_setting('courier.max_orders_per_request')::integer
		   FOR UPDATE SKIP LOCKED
	), marked AS (
		UPDATE courier.orders o
		   SET overdue_notified_for = o.invoice_deadline
		  FROM due
		 WHERE o.order_id = due.order_id
		RETURNING o.order_id
	)
	SELECT array_agg(order_id ORDER BY order_id) INTO ids FROM marked;

	IF ids IS NULL THEN
		RETURN 0;
	END IF;
	PERFORM courier.delay_orders(ids, current_setting('courier.overdue_reason'),
								 current_date + current_setting('courier.overdue_delay_days')::integer);
	RETURN cardinality(ids);
END
$$;
COMMENT ON FUNCTION courier.sweep_overdue() IS
	'Notify orders in shipping_requested whose invoice deadline passed with no invoice: one delay request with courier.overdue_reason. Running it again sends nothing twice.';

CREATE FUNCTION courier.prune_chunk(cutoff timestamptz, chunk integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	n bigint;
BEGIN
	DELETE FROM courier.notices n
	 WHERE (n.order_id, n.ship_date) IN (
		SELECT order_id, ship_date FROM courier.notices
		 WHERE sent_at < cutoff AND status IN ('delivered', 'dry_run')
		 LIMIT chunk);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		RETURN n;
	END IF;
	DELETE FROM courier.delay_history h
	 WHERE (h.request_id, h.order_id) IN (
		SELECT request_id, order_id FROM courier.delay_history
		 WHERE applied_at < cutoff LIMIT chunk);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		RETURN n;
	END IF;
	DELETE FROM courier.failures f
	 WHERE f.failure_id IN (SELECT failure_id FROM courier.failures
							 WHERE discarded_at < cutoff LIMIT chunk);
	GET DIAGNOSTICS n = ROW_COUNT;
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
COMMENT ON FUNCTION courier.prune_chunk(timestamptz, integer) IS
	'One chunk of courier.prune(): delete up to chunk rows older than cutoff from the first table that has some; 0 when done.';

CREATE PROCEDURE courier.prune(INOUT deleted bigint DEFAULT NULL,
							   retention interval DEFAULT NULL,
							   chunk integer DEFAULT 5000)
LANGUAGE plpgsql
AS $$
DECLARE
	cutoff timestamptz := now() - coalesce(retention,
		current_setting('courier.retention')::interval);
	n bigint;
BEGIN
	IF chunk IS NULL OR chunk < 1 THEN
		RAISE EXCEPTION 'chunk must be a positive number of rows, not %', chunk
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	deleted := 0;
	/* each chunk commits on its own, so no lock is held for long */
	LOOP
		n := courier.prune_chunk(cutoff, chunk);
		EXIT WHEN n = 0;
		deleted := deleted + n;
		COMMIT;
	END LOOP;
END
$$;
COMMENT ON PROCEDURE courier.prune(bigint, interval, integer) IS
	'Delete delivered notices, delay history, discarded failures and posted alerts older than courier.retention (or retention), chunk rows per transaction. CALL it outside a transaction block.';

CREATE FUNCTION courier.failure_digest()
RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	since bigint;
	newest bigint;
	n integer;
	payload jsonb;
BEGIN
	SELECT last_failure_id INTO since FROM courier.digest_state FOR UPDATE;
	SELECT count(*), max(failure_id) INTO n, newest
	  FROM courier.failures WHERE failure_id > since;
	UPDATE courier.digest_state
	   SET last_failure_id = coalesce(newest, last_failure_id), last_run_at = now();
	IF n = 0 THEN
		RETURN 0;
	END IF;

	SELECT jsonb_build_object(
			'alert', 'new_failures',
			'count', n,
			'since_failure_id', since,
			'by_stage', (SELECT jsonb_object_agg(stage, c) FROM
							(SELECT stage, count(*) AS c FROM courier.failures
							  WHERE failure_id > since GROUP BY stage) s),
			'top_errors', (SELECT jsonb_agg(jsonb_build_object('error', last_error, 'count', c)) FROM
							(SELECT last_error, count(*) AS c FROM courier.failures
							  WHERE failure_id > since
							  GROUP BY last_error ORDER BY c DESC LIMIT 5) e))
	  INTO payload;
	INSERT INTO courier.alerts (kind, payload) VALUES ('new_failures', payload);
	PERFORM pg_notify('courier_alerts', payload::text);
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.failure_digest() IS
	'Raise an alert when failures appeared since the last digest: NOTIFY courier_alerts, and a POST to courier.alert_url by the launcher. Returns the number of new failures.';

CREATE FUNCTION courier.schedule_defaults()
RETURNS TABLE (jobname text, schedule text, command text)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	jobs text[] := ARRAY[
		['courier-sweep-overdue', '* * * * *', 'SELECT courier.sweep_overdue()'],
		['courier-prune', '17 3 * * *', 'CALL courier.prune()'],
		['courier-failure-digest', '*/5 * * * *', 'SELECT courier.failure_digest()']];
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
		RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
			USING ERRCODE = 'undefined_object',
				  DETAIL = 'courier.schedule_defaults() registers its jobs with pg_cron, which must be created in the database courier runs in.',
				  HINT = format('Add pg_cron to shared_preload_libraries, set cron.database_name = %L, restart and run CREATE EXTENSION pg_cron. '
								'Or schedule these yourself: SELECT courier.sweep_overdue() every minute, '
								'CALL courier.prune() daily, SELECT courier.failure_digest() every 5 minutes.',
								current_database());
	END IF;
	FOR i IN 1 .. array_length(jobs, 1) LOOP
		EXECUTE 'SELECT cron.schedule($1, $2, $3)' USING jobs[i][1], jobs[i][2], jobs[i][3];
		jobname := jobs[i][1];
		schedule := jobs[i][2];
		command := jobs[i][3];
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION courier.schedule_defaults() IS
	'Register the overdue sweep (every minute), prune (daily) and failure digest (every 5 minutes) with pg_cron; idempotent (the jobs are named).';

/* ------------------------------------------------------------------------
 * DBA console
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.failures_matching(failure_ids bigint[], stage courier.stage,
										  error_pattern text, failed_after timestamptz,
										  failed_before timestamptz)
RETURNS SETOF bigint
LANGUAGE sql STABLE
AS $$
	SELECT f.failure_id FROM courier.failures f
	 WHERE f.discarded_at IS NULL
	   AND ($1 IS NULL OR f.failure_id = ANY ($1))
	   AND ($2 IS NULL OR f.stage = $2)
	   AND ($3 IS NULL OR f.last_error ILIKE $3)
	   AND ($4 IS NULL OR f.failed_at >= $4)
	   AND ($5 IS NULL OR f.failed_at < $5)
$$;
COMMENT ON FUNCTION courier.failures_matching(bigint[], courier.stage, text, timestamptz, timestamptz) IS
	'The open failures a DBA filter names (NULL: any): ids, stage, error pattern (ILIKE), time range. Shared by retry_failures and discard_failures.';

CREATE FUNCTION courier.retry_failures(failure_ids bigint[] DEFAULT NULL,
									   stage courier.stage DEFAULT NULL,
									   error_pattern text DEFAULT NULL,
									   failed_after timestamptz DEFAULT NULL,
									   failed_before timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
	WITH moved AS (
		DELETE FROM courier.failures f
		 WHERE f.failure_id IN (SELECT courier.failures_matching($1, $2, $3, $4, $5))
		   /* never a second item beside one still queued for the same work */
		   AND NOT EXISTS (SELECT 1 FROM courier.work_items w
							WHERE w.stage = f.stage AND w.order_id = f.order_id
							  AND w.request_id IS NOT DISTINCT FROM f.request_id
							  AND w.ship_date IS NOT DISTINCT FROM f.ship_date)
		RETURNING f.*
	), queued AS (
		INSERT INTO courier.work_items
			(stage, seller_id, order_id, request_id, ship_date, errors, created_at)
		SELECT m.stage, m.seller_id, m.order_id, m.request_id, m.ship_date,
			   m.errors, m.first_queued_at
		  FROM moved m
		RETURNING stage, order_id, ship_date
	), reopened AS (
		UPDATE courier.notices n SET status = 'pending'
		  FROM queued q
		 WHERE q.stage = 'tms' AND n.order_id = q.order_id AND n.ship_date = q.ship_date
	)
	SELECT count(*)::integer FROM queued
$$;
COMMENT ON FUNCTION courier.retry_failures(bigint[], courier.stage, text, timestamptz, timestamptz) IS
	'Put failures back in their queue with fresh attempts (history kept), filtered by ids, stage, error pattern (ILIKE) and time range; no arguments: all. Returns how many.';

CREATE FUNCTION courier.discard_failures(failure_ids bigint[] DEFAULT NULL,
										 stage courier.stage DEFAULT NULL,
										 error_pattern text DEFAULT NULL,
										 failed_after timestamptz DEFAULT NULL,
										 failed_before timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
	WITH dropped AS (
		UPDATE courier.failures f
		   SET discarded_at = now()
		 WHERE f.failure_id IN (SELECT courier.failures_matching($1, $2, $3, $4, $5))
		RETURNING 1
	)
	SELECT count(*)::integer FROM dropped
$$;
COMMENT ON FUNCTION courier.discard_failures(bigint[], courier.stage, text, timestamptz, timestamptz) IS
	'Mark failures as discarded (kept for the record, never retried), filtered like retry_failures. Returns how many.';

CREATE VIEW courier.failure_attempts AS
SELECT f.failure_id, f.stage, f.order_id, f.request_id, f.ship_date,
	   a.ordinality AS attempt, (a.e ->> 'at')::timestamptz AS at,
	   a.e ->> 'error' AS error, a.e ->> 'sqlstate' AS sqlstate,
	   (a.e ->> 'http_status')::integer AS http_status,
	   coalesce((a.e ->> 'outcome_unknown')::boolean, false) AS outcome_unknown
  FROM courier.failures f,
	   LATERAL jsonb_array_elements(f.errors) WITH ORDINALITY AS a(e, ordinality);
COMMENT ON VIEW courier.failure_attempts IS
	'Every attempt of every failure, one row each: when, the error, its SQLSTATE or HTTP status.';

CREATE VIEW courier.queue_stats AS
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
		 WHERE f.stage = s.stage AND f.discarded_at IS NULL) AS failures_open
  FROM unnest(enum_range(NULL::courier.stage)) AS s(stage)
  LEFT JOIN LATERAL (
	SELECT count(*) AS backlog,
		   count(*) FILTER (WHERE w.not_before <= now()) AS due_now,
		   count(*) FILTER (WHERE w.leased_by IS NOT NULL AND w.not_before > now()) AS in_flight,
		   now() - min(w.created_at) AS oldest_age
	  FROM courier.work_items w
	 WHERE w.stage = s.stage) q ON true;
COMMENT ON VIEW courier.queue_stats IS
	'Per stage: items queued, due now, in flight (leased), age of the oldest, done and failed in the last hour, open failures.';

CREATE FUNCTION courier.shared_counters(OUT stage text, OUT counter text, OUT value bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'courier_shared_counters'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION courier.shared_counters() IS
	'Counters kept in shared memory since the server started (empty when courier is not preloaded).';

CREATE FUNCTION courier.metrics()
RETURNS text
LANGUAGE sql STABLE
AS $$
	SELECT string_agg(line, E'\n' ORDER BY ord) || E'\n'
	  FROM (
		SELECT 1 AS ord, '# HELP courier_items_total Items processed per stage and result since server start.' AS line
		UNION ALL SELECT 2, '# TYPE courier_items_total counter'
		UNION ALL SELECT 3, format('courier_items_total{stage="%s",result="%s"} %s', c.stage, c.counter, c.value)
		  FROM courier.shared_counters() c WHERE c.counter IN ('done', 'failed')
		UNION ALL SELECT 4, '# HELP courier_batches_total Batches processed per stage since server start.'
		UNION ALL SELECT 5, '# TYPE courier_batches_total counter'
		UNION ALL SELECT 6, format('courier_batches_total{stage="%s"} %s', c.stage, c.value)
		  FROM courier.shared_counters() c WHERE c.counter = 'batches'
		UNION ALL SELECT 7, '# HELP courier_tms_events_total TMS requests, throttles and breaker openings since server start.'
		UNION ALL SELECT 8, '# TYPE courier_tms_events_total counter'
		UNION ALL SELECT 9, format('courier_tms_events_total{event="%s"} %s', c.counter, c.value)
		  FROM courier.shared_counters() c WHERE c.counter LIKE 'tms\_%'
		UNION ALL SELECT 10, '# HELP courier_queue_backlog Items queued per stage.'
		UNION ALL SELECT 11, '# TYPE courier_queue_backlog gauge'
		UNION ALL SELECT 12, format('courier_queue_backlog{stage="%s"} %s', q.stage, q.backlog) FROM courier.queue_stats q
		UNION ALL SELECT 13, '# HELP courier_queue_due Items due now per stage.'
		UNION ALL SELECT 14, '# TYPE courier_queue_due gauge'
		UNION ALL SELECT 15, format('courier_queue_due{stage="%s"} %s', q.stage, q.due_now) FROM courier.queue_stats q
		UNION ALL SELECT 16, '# HELP courier_queue_in_flight Items leased by senders per stage.'
		UNION ALL SELECT 17, '# TYPE courier_queue_in_flight gauge'
		UNION ALL SELECT 18, format('courier_queue_in_flight{stage="%s"} %s', q.stage, q.in_flight) FROM courier.queue_stats q
		UNION ALL SELECT 19, '# HELP courier_queue_oldest_age_seconds Age of the oldest queued item per stage.'
		UNION ALL SELECT 20, '# TYPE courier_queue_oldest_age_seconds gauge'
		UNION ALL SELECT 21, format('courier_queue_oldest_age_seconds{stage="%s"} %s', q.stage,
								   coalesce(round(extract(epoch FROM q.oldest_age), 3), 0)) FROM courier.queue_stats q
		UNION ALL SELECT 22, '# HELP courier_failures_open Failures neither retried nor discarded per stage.'
		UNION ALL SELECT 23, '# TYPE courier_failures_open gauge'
		UNION ALL SELECT 24, format('courier_failures_open{stage="%s"} %s', q.stage, q.failures_open) FROM courier.queue_stats q
		UNION ALL SELECT 25, '# HELP courier_table_dead_tuples Dead tuples of courier tables (queue bloat).'
		UNION ALL SELECT 26, '# TYPE courier_table_dead_tuples gauge'
		UNION ALL SELECT 27, format('courier_table_dead_tuples{table="%s"} %s', t.relname, t.n_dead_tup)
		  FROM pg_stat_user_tables t WHERE t.schemaname = 'courier'
	  ) m
$$;
COMMENT ON FUNCTION courier.metrics() IS
	'courier''s metrics in the Prometheus text exposition format: counters from shared memory, queue gauges, dead tuples.';

/* ------------------------------------------------------------------------
 * Roles and privileges: nothing for PUBLIC; courier_app may call the app
 * API, courier_admin the console.  The functions they call run as the
 * extension's owner (SECURITY DEFINER) with a pinned search_path.
 * ------------------------------------------------------------------------ */

DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'courier_app') THEN
		CREATE ROLE courier_app NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'courier_admin') THEN
		CREATE ROLE courier_admin NOLOGIN;
	END IF;
END
$$;

REVOKE ALL ON SCHEMA courier FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA courier FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA courier FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA courier FROM PUBLIC;

DO $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN
		SELECT p.oid::regprocedure FROM pg_proc p
		 WHERE p.pronamespace = 'courier'::regnamespace
		   AND p.proname IN ('register_orders', 'request_shipping', 'register_invoice',
							 'delay_orders', 'request_status', 'run_once',
							 'retry_failures', 'discard_failures', 'sweep_overdue',
							 'failure_digest', 'metrics', 'shared_counters', 'prune_chunk',
							 'failures_matching')
	LOOP
		EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
	END LOOP;
END
$$;

GRANT USAGE ON SCHEMA courier TO courier_app, courier_admin;
GRANT EXECUTE ON FUNCTION courier.register_orders(jsonb), courier.request_shipping(bigint[]),
	courier.register_invoice(bigint, text), courier.delay_orders(bigint[], text, date),
	courier.request_status(bigint), courier.switch_enabled(text, bigint)
	TO courier_app;
GRANT EXECUTE ON FUNCTION courier.request_status(bigint), courier.switch_enabled(text, bigint),
	courier.run_once(text), courier.retry_failures(bigint[], courier.stage, text, timestamptz, timestamptz),
	courier.discard_failures(bigint[], courier.stage, text, timestamptz, timestamptz),
	courier.sweep_overdue(), courier.failure_digest(), courier.metrics(),
	courier.backoff_delay(integer), courier.prune_chunk(timestamptz, integer)
	TO courier_admin;
GRANT EXECUTE ON PROCEDURE courier.prune(bigint, interval, integer) TO courier_admin;
GRANT SELECT ON courier.orders, courier.requests, courier.work_items, courier.delay_history,
	courier.notices, courier.failures, courier.failure_attempts, courier.queue_stats,
	courier.alerts
	TO courier_admin;
