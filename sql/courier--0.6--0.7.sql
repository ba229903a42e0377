/* courier--0.6--0.7.sql
 *
 * courier 0.7: observability for real (docs/metrics.md).
 *
 * - metric_samples(): every figure of metrics() as rows, the one source
 *   of both metrics() and postgres_exporter's queries (docs/monitoring);
 *   tms_state(): the TMS breaker and its request latency histogram.
 * - Alerts in Alertmanager's v2 shape, resolved when their condition clears.
 * - Trace context: a W3C trace id per delay request, carried by every
 *   request courier makes for it.
 *
 * Run by ALTER EXTENSION courier UPDATE TO '0.7' (and by CREATE EXTENSION,
 * after the earlier scripts).  Queued work, notices and failures stay.
 */

\echo Use "ALTER EXTENSION courier UPDATE TO '0.7'" to load this file. \quit

/* ========================================================================
 * Section: metrics (metric_samples, tms_state)
 * ======================================================================== */

/* the TMS's breaker and request latency, from shared memory (ops.c) */
CREATE FUNCTION courier.tms_state(OUT breaker text, OUT latency_le float8[],
								  OUT latency_count bigint[], OUT latency_sum float8)
RETURNS record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'courier_tms_state';
COMMENT ON FUNCTION courier.tms_state() IS
	'The TMS circuit breaker now (closed, open, probing) and the latency histogram of its requests since the server started: bucket bounds in seconds (the last is Infinity), cumulative counts, sum of seconds.';

/*
 * metric_samples(): every figure metrics() shows, one row per sample, its
 * labels as columns.  metrics() formats all of them; postgres_exporter's
 * queries (docs/monitoring/queries.yaml) ask for the families they expose,
 * so one scrape computes each figure once, and both show the same values
 * under the same names.  PL/pgSQL: a function with a parameter may not be
 * LANGUAGE sql (docs/citus.md), and each branch is skipped (a one-time
 * filter) when its families are not asked for.
 */
CREATE FUNCTION courier.metric_samples(families text[] DEFAULT NULL)
RETURNS TABLE (family text, name text, stage text, subscriber text, result text,
			   event text, "table" text, receipt text, le text, value numeric)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	RETURN QUERY
	WITH counter AS (
		SELECT c.stage, c.counter, c.value FROM courier.shared_counters() c
		 WHERE families IS NULL
			OR families && ARRAY['courier_items_total', 'courier_batches_total',
								 'courier_tms_events_total']
	), tms AS (
		SELECT t.breaker, t.latency_le, t.latency_count, t.latency_sum
		  FROM courier.tms_state() t
		 WHERE families IS NULL
			OR families && ARRAY['courier_tms_breaker_open',
								 'courier_tms_request_duration_seconds']
	), queue AS (
		SELECT q.* FROM courier.queue_stats q
		 WHERE families IS NULL
			OR families && ARRAY['courier_queue_backlog', 'courier_queue_due',
								 'courier_queue_in_flight', 'courier_queue_oldest_age_seconds',
								 'courier_failures_open']
	), subscriber AS (
		SELECT s.* FROM courier.subscribers s
		 WHERE families IS NULL
			OR families && ARRAY['courier_subscriber_backlog', 'courier_subscriber_oldest_age_seconds',
								 'courier_subscriber_failed', 'courier_subscriber_breaker_open',
								 'courier_subscriber_events_total']
	), sample(family, name, stage, subscriber, result, event, "table", receipt, le, value) AS (
		SELECT 'courier_items_total', 'courier_items_total', c.stage, NULL, c.counter,
			   NULL, NULL, NULL, NULL, c.value::numeric
		  FROM counter c WHERE c.counter IN ('done', 'failed')
		UNION ALL
		SELECT 'courier_batches_total', 'courier_batches_total', c.stage, NULL, NULL,
			   NULL, NULL, NULL, NULL, c.value
		  FROM counter c WHERE c.counter = 'batches'
		UNION ALL
		SELECT 'courier_tms_events_total', 'courier_tms_events_total', NULL, NULL, NULL,
			   c.counter, NULL, NULL, NULL, c.value
		  FROM counter c WHERE c.counter LIKE 'tms\_%'
		UNION ALL
		SELECT 'courier_tms_breaker_open', 'courier_tms_breaker_open', NULL, NULL, NULL,
			   NULL, NULL, NULL, NULL, (t.breaker <> 'closed')::int
		  FROM tms t
		UNION ALL
		SELECT 'courier_tms_request_duration_seconds', 'courier_tms_request_duration_seconds_bucket',
			   NULL, NULL, NULL, NULL, NULL, NULL,
			   CASE WHEN b.le = 'Infinity' THEN '+Inf' ELSE b.le::text END, b.n
		  FROM tms t, unnest(t.latency_le, t.latency_count) AS b(le, n)
		UNION ALL
		SELECT 'courier_tms_request_duration_seconds', 'courier_tms_request_duration_seconds_sum',
			   NULL, NULL, NULL, NULL, NULL, NULL, NULL, round(t.latency_sum::numeric, 6)
		  FROM tms t
		UNION ALL
		SELECT 'courier_tms_request_duration_seconds', 'courier_tms_request_duration_seconds_count',
			   NULL, NULL, NULL, NULL, NULL, NULL, NULL,
			   t.latency_count[pg_catalog.array_upper(t.latency_count, 1)]
		  FROM tms t
		UNION ALL
		SELECT g.name, g.name, q.stage::text, NULL, NULL, NULL, NULL, NULL, NULL, g.value
		  FROM queue q,
			   LATERAL (VALUES ('courier_queue_backlog', q.backlog::numeric),
							   ('courier_queue_due', q.due_now),
							   ('courier_queue_in_flight', q.in_flight),
							   ('courier_queue_oldest_age_seconds',
								coalesce(round(extract(epoch FROM q.oldest_age), 3), 0)),
							   ('courier_failures_open', q.failures_open)) AS g(name, value)
		UNION ALL
		SELECT 'courier_table_dead_tuples', 'courier_table_dead_tuples', NULL, NULL, NULL,
			   NULL, t.relname::text, NULL, NULL, t.n_dead_tup
		  FROM pg_stat_user_tables t
		 WHERE t.schemaname = 'courier'
		   AND (families IS NULL OR 'courier_table_dead_tuples' = ANY (families))
		UNION ALL
		SELECT 'courier_notices_receipts', 'courier_notices_receipts', NULL, NULL, NULL,
			   NULL, NULL, r.status, NULL,
			   (SELECT count(*) FROM courier.notices n WHERE n.receipt_status = r.status)
		  FROM (VALUES ('awaiting'), ('delivered'), ('failed'), ('expired')) AS r(status)
		 WHERE families IS NULL OR 'courier_notices_receipts' = ANY (families)
		UNION ALL
		SELECT g.name, g.name, NULL, s.name, NULL, NULL, NULL, NULL, NULL, g.value
		  FROM subscriber s,
			   LATERAL (VALUES ('courier_subscriber_backlog', s.backlog::numeric),
							   ('courier_subscriber_oldest_age_seconds',
								coalesce(round(extract(epoch FROM s.oldest_undelivered_age), 3), 0)),
							   ('courier_subscriber_failed', s.failed),
							   ('courier_subscriber_breaker_open',
								(s.breaker <> 'closed')::int)) AS g(name, value)
		UNION ALL
		SELECT 'courier_subscriber_events_total', 'courier_subscriber_events_total', NULL,
			   s.name, r.result, NULL, NULL, NULL, NULL, r.value
		  FROM subscriber s,
			   LATERAL (VALUES ('delivered', s.delivered::numeric),
							   ('retried', s.retried)) AS r(result, value)
	)
	SELECT s.family, s.name, s.stage, s.subscriber, s.result, s.event, s."table",
		   s.receipt, s.le, s.value
	  FROM sample s
	 WHERE families IS NULL OR s.family = ANY (families);
END
$$;
COMMENT ON FUNCTION courier.metric_samples(text[]) IS
	'Every figure of courier.metrics() as rows: its family, sample name, labels (NULL where a family has none) and value; families limits the rows (and the work) to those families. What postgres_exporter''s queries read (docs/monitoring/queries.yaml).';

/*
 * metrics(): the text exposition of metric_samples(), family by family,
 * labels in a fixed order; a histogram's samples are _bucket, _sum and
 * _count.  New: courier_tms_breaker_open and
 * courier_tms_request_duration_seconds.
 */
CREATE OR REPLACE FUNCTION courier.metrics()
RETURNS text
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH family(name, type, help, ord) AS (VALUES
		('courier_items_total', 'counter', 'Items processed per stage and result since server start.', 1),
		('courier_batches_total', 'counter', 'Batches processed per stage since server start.', 2),
		('courier_tms_events_total', 'counter', 'TMS requests, throttles and breaker openings since server start.', 3),
		('courier_tms_breaker_open', 'gauge', '1 while the TMS circuit breaker is open or probing.', 4),
		('courier_tms_request_duration_seconds', 'histogram', 'Time from sending a TMS request to its full answer (or its failure), since server start.', 5),
		('courier_queue_backlog', 'gauge', 'Items queued per stage.', 6),
		('courier_queue_due', 'gauge', 'Items due now per stage.', 7),
		('courier_queue_in_flight', 'gauge', 'Items leased by senders per stage.', 8),
		('courier_queue_oldest_age_seconds', 'gauge', 'Age of the oldest queued item per stage.', 9),
		('courier_failures_open', 'gauge', 'Failures neither retried nor discarded per stage.', 10),
		('courier_table_dead_tuples', 'gauge', 'Dead tuples of courier tables (queue bloat).', 11),
		('courier_notices_receipts', 'gauge', 'Notices kept (courier.retention) that went through a provider with delivery receipts, by receipt: awaiting (accepted), delivered (on the handset), failed, expired (no receipt within courier.receipt_horizon).', 12),
		('courier_subscriber_backlog', 'gauge', 'Events queued per subscriber, not yet accepted (failed ones aside).', 13),
		('courier_subscriber_oldest_age_seconds', 'gauge', 'Age of the oldest event a subscriber has not accepted yet.', 14),
		('courier_subscriber_failed', 'gauge', 'Events per subscriber that failed for good and wait for the DBA (courier.failures, stage fanout).', 15),
		('courier_subscriber_events_total', 'counter', 'Events per subscriber delivered (accepted) and attempts retried, since its worker started.', 16),
		('courier_subscriber_breaker_open', 'gauge', '1 while the circuit breaker of a subscriber is open or probing.', 17)
	), sample AS (
		SELECT s.family, s.name, s.value,
			   concat_ws(',', 'stage="' || s.stage || '"', 'subscriber="' || s.subscriber || '"',
						 'result="' || s.result || '"', 'event="' || s.event || '"',
						 'table="' || s."table" || '"', 'receipt="' || s.receipt || '"',
						 'le="' || s.le || '"') AS labels,
			   /* a histogram's buckets by bound, then _sum and _count */
			   CASE WHEN s.le = '+Inf' THEN 'Infinity'::float8 ELSE s.le::float8 END AS bound
		  FROM courier.metric_samples() s
	)
	SELECT string_agg(format(E'# HELP %s %s\n# TYPE %s %s', f.name, f.help, f.name, f.type)
					  || coalesce((SELECT string_agg(E'\n' || s.name
													 || CASE WHEN s.labels <> '' THEN '{' || s.labels || '}' ELSE '' END
													 || ' ' || s.value,
													 '' ORDER BY s.name, s.bound, s.labels)
									 FROM sample s WHERE s.family = f.name), ''),
					  E'\n' ORDER BY f.ord) || E'\n'
	  FROM family f
$$;

/*
 * The role postgres_exporter logs in with needs only this
 * (docs/monitoring): GRANT courier_monitor TO <its login role>.
 */
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'courier_monitor') THEN
		CREATE ROLE courier_monitor NOLOGIN;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION courier.tms_state(), courier.metric_samples(text[]) FROM PUBLIC;
GRANT USAGE ON SCHEMA courier TO courier_monitor;
GRANT EXECUTE ON FUNCTION courier.metric_samples(text[]), courier.metrics() TO courier_monitor;
GRANT EXECUTE ON FUNCTION courier.tms_state(), courier.metric_samples(text[]) TO courier_admin;

/* -- end of section: metrics -- */

/* ========================================================================
 * Section: alerts (Alertmanager)
 * ======================================================================== */

/* -- end of section: alerts -- */

/* ========================================================================
 * Section: trace context
 * ======================================================================== */

/* -- end of section: trace context -- */
