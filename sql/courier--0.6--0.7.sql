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

/* each subscriber worker's POST latency, from shared memory (ops.c) */
CREATE FUNCTION courier.subscriber_latency(OUT subscriber_id integer, OUT latency_le float8[],
										   OUT latency_count bigint[], OUT latency_sum float8)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'courier_subscriber_latency';
COMMENT ON FUNCTION courier.subscriber_latency() IS
	'Per subscriber being delivered: the latency histogram of its worker''s POSTs since the worker started (the shape of tms_state''s).';

/*
 * The age of the oldest queued event, in queue_stats (fanout) and
 * subscribers: read from the event with the smallest id of the queue, one
 * lookup by its key, instead of joining every queued delivery to its event
 * (metrics() and each scrape read these; with 200,000 queued events the
 * join was half their cost).  Event ids follow the order events are
 * recorded in, so that event is the oldest but for events recorded at the
 * same moment by transactions that overlapped.
 */
CREATE OR REPLACE VIEW courier.queue_stats AS
WITH queued(stage, backlog, due_now, in_flight, oldest_age) AS (
	SELECT 'logic', count(*),
		   count(*) FILTER (WHERE w.not_before <= now()),
		   count(*) FILTER (WHERE w.leased_by IS NOT NULL AND w.not_before > now()),
		   now() - min(w.created_at)
	  FROM courier.work_items w
	 WHERE w.stage = 'logic'
	UNION ALL
	/* the tms stage's queue is its pending notices */
	SELECT 'tms', count(*),
		   count(*) FILTER (WHERE n.due_at <= now()),
		   count(*) FILTER (WHERE n.leased_by IS NOT NULL AND n.due_at > now()),
		   now() - min(n.created_at)
	  FROM courier.notices n
	 WHERE n.status = 'pending'
	UNION ALL
	/*
	 * the fan-out's: every subscription's deliveries not failed (a
	 * subscriber's worker marks nothing in flight: 0)
	 */
	SELECT 'fanout', f.n, f.due, 0,
		   now() - (SELECT e.occurred_at FROM courier.events e
					 WHERE e.seller_id = f.oldest[2] AND e.event_id = f.oldest[1])
	  FROM (SELECT count(*) AS n,
				   count(*) FILTER (WHERE d.not_before <= now()) AS due,
				   min(ARRAY[d.event_id, d.seller_id]) AS oldest
			  FROM courier.deliveries d
			 WHERE d.failed_at IS NULL) f
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
	   CASE s.stage::text
		   WHEN 'logic' THEN (SELECT count(*) FROM courier.delay_history
							   WHERE applied_at > now() - interval '1 hour')
		   WHEN 'tms' THEN (SELECT count(*) FROM courier.notices
							 WHERE sent_at > now() - interval '1 hour')
	   END AS done_last_hour,
	   (SELECT count(*) FROM courier.failures f
		 WHERE f.stage = s.stage AND f.failed_at > now() - interval '1 hour') AS failed_last_hour,
	   (SELECT count(*) FROM courier.failures f
		 WHERE f.stage = s.stage AND f.discarded_at IS NULL) AS failures_open,
	   CASE s.stage::text WHEN 'tms' THEN r.awaiting END AS receipts_awaiting,
	   CASE s.stage::text WHEN 'tms' THEN r.delivered END AS receipts_delivered,
	   CASE s.stage::text WHEN 'tms' THEN r.failed END AS receipts_failed,
	   CASE s.stage::text WHEN 'tms' THEN r.expired END AS receipts_expired
  FROM unnest(enum_range(NULL::courier.stage)) AS s(stage)
  LEFT JOIN queued q ON q.stage = s.stage::text
 CROSS JOIN receipts r;
CREATE OR REPLACE VIEW courier.subscribers AS
SELECT s.subscriber_id, s.name, s.url, s.event_types, s.batch_size, s.rate_limit,
	   s.timeout_ms, s.paused, s.secret IS NOT NULL AS has_secret, s.created_at,
	   q.backlog, q.failed,
	   pg_catalog.now() - (SELECT e.occurred_at FROM courier.events e
							WHERE e.seller_id = q.oldest[2] AND e.event_id = q.oldest[1])
		   AS oldest_undelivered_age,
	   w.pid AS worker_pid, coalesce(w.breaker, 'closed') AS breaker,
	   coalesce(w.delivered, 0) AS delivered, coalesce(w.retried, 0) AS retried
  FROM courier.subscriptions s
 CROSS JOIN LATERAL (
	SELECT count(*) FILTER (WHERE d.failed_at IS NULL) AS backlog,
		   count(*) FILTER (WHERE d.failed_at IS NOT NULL) AS failed,
		   min(ARRAY[d.event_id, d.seller_id]) AS oldest
	  FROM courier.deliveries d
	 WHERE d.subscriber_id = s.subscriber_id) q
  LEFT JOIN courier.subscriber_workers() w ON w.subscriber_id = s.subscriber_id;
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
	), subscriber_latency AS (
		SELECT s.name, l.latency_le, l.latency_count, l.latency_sum
		  FROM courier.subscriber_latency() l
		  JOIN courier.subscriptions s ON s.subscriber_id = l.subscriber_id
		 WHERE families IS NULL
			OR 'courier_subscriber_request_duration_seconds' = ANY (families)
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
		UNION ALL
		SELECT 'courier_subscriber_request_duration_seconds',
			   'courier_subscriber_request_duration_seconds_bucket', NULL, l.name, NULL, NULL,
			   NULL, NULL, CASE WHEN b.le = 'Infinity' THEN '+Inf' ELSE b.le::text END, b.n
		  FROM subscriber_latency l, unnest(l.latency_le, l.latency_count) AS b(le, n)
		UNION ALL
		SELECT 'courier_subscriber_request_duration_seconds',
			   'courier_subscriber_request_duration_seconds_sum', NULL, l.name, NULL, NULL,
			   NULL, NULL, NULL, round(l.latency_sum::numeric, 6)
		  FROM subscriber_latency l
		UNION ALL
		SELECT 'courier_subscriber_request_duration_seconds',
			   'courier_subscriber_request_duration_seconds_count', NULL, l.name, NULL, NULL,
			   NULL, NULL, NULL, l.latency_count[pg_catalog.array_upper(l.latency_count, 1)]
		  FROM subscriber_latency l
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
		('courier_subscriber_breaker_open', 'gauge', '1 while the circuit breaker of a subscriber is open or probing.', 17),
		('courier_subscriber_request_duration_seconds', 'histogram', 'Time from sending a POST to a subscriber to its full answer (or its failure), since its worker started.', 18)
	), sample AS (
		SELECT s.family, s.name, s.value,
			   concat_ws(',', 'stage="' || s.stage || '"', 'subscriber="' || s.subscriber || '"',
						 'result="' || s.result || '"', 'event="' || s.event || '"',
						 'table="' || s."table" || '"', 'receipt="' || s.receipt || '"',
						 'le="' || s.le || '"') AS labels,
			   concat_ws(',', s.stage, s.subscriber, s.result, s.event, s."table", s.receipt) AS series,
			   /* a histogram's buckets by bound, then _sum and _count */
			   CASE WHEN s.le = '+Inf' THEN 'Infinity'::float8 ELSE s.le::float8 END AS bound
		  FROM courier.metric_samples() s
	)
	SELECT string_agg(format(E'# HELP %s %s\n# TYPE %s %s', f.name, f.help, f.name, f.type)
					  || coalesce((SELECT string_agg(E'\n' || s.name
													 || CASE WHEN s.labels <> '' THEN '{' || s.labels || '}' ELSE '' END
													 || ' ' || s.value,
													 '' ORDER BY s.name, s.series, s.bound)
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
REVOKE ALL ON FUNCTION courier.tms_state(), courier.subscriber_latency(),
	courier.metric_samples(text[]) FROM PUBLIC;
GRANT USAGE ON SCHEMA courier TO courier_monitor;
GRANT EXECUTE ON FUNCTION courier.metric_samples(text[]), courier.metrics() TO courier_monitor;
GRANT EXECUTE ON FUNCTION courier.tms_state(), courier.subscriber_latency(),
	courier.metric_samples(text[]) TO courier_admin;

/* -- end of section: metrics -- */

/* ========================================================================
 * Section: alerts (Alertmanager)
 * ======================================================================== */

/*
 * failure_digest() raises three kinds of alert and resolves them when
 * their condition clears (docs/metrics.md, "Alertmanager"):
 *
 *	CourierNewFailures{stage}		failures appeared since the last digest;
 *									firing while the stage has open ones
 *	CourierBreakerOpen{stage="tms"}	the TMS's circuit breaker (tms_state())
 *	CourierBreakerOpen{stage="fanout",subscriber}	a subscriber's breaker
 *	CourierBacklogOld{stage}		the oldest item of the logic or tms
 *									queue is older than
 *									courier.alert_backlog_age
 *	CourierBacklogOld{stage="fanout",subscriber}	the oldest event a
 *									subscriber has not accepted is older
 *									than that
 *
 * Every alert also carries service="courier" and database (and cluster,
 * from cluster_name, when set): the label set is the alert's identity,
 * the same at every post, so Alertmanager updates and then resolves one
 * alert.  What fires is remembered in digest_state.firing, so the next
 * digest can tell what started, what goes on and what cleared.
 *
 * Everything still goes out through the outbox, courier.alerts, which
 * the launcher POSTs outside any transaction.  A row the launcher has not
 * posted yet is superseded by a newer row of the same alert: the newer
 * one carries the whole current state, and an outdated "firing" is never
 * sent after the "resolved" that followed it.
 */
ALTER TABLE courier.alerts
	ADD COLUMN format text NOT NULL DEFAULT 'courier'
		CHECK (format IN ('courier', 'alertmanager')),
	ADD COLUMN labels jsonb,
	ADD COLUMN superseded_by bigint;
COMMENT ON COLUMN courier.alerts.format IS
	'The shape of payload, courier.alert_format when the row was written: courier (courier''s own JSON) or alertmanager (an array for Alertmanager''s /api/v2/alerts). The launcher posts the rows of the format in force.';
COMMENT ON COLUMN courier.alerts.labels IS
	'Which alert the row is about: its label set (alertname, severity, service, database, stage, subscriber). NULL for the courier format''s new_failures digest, which reports an event, not a state.';
COMMENT ON COLUMN courier.alerts.superseded_by IS
	'A newer row of the same alert (same labels) written before this one was posted: it carries the current state, so this row is never posted. Such rows are deleted by failure_digest() after courier.retention.';

/* the launcher: the next alert to post, by next_post_at, never a superseded one */
DROP INDEX courier.alerts_unposted;
CREATE INDEX alerts_unposted ON courier.alerts (next_post_at, alert_id)
	WHERE posted_at IS NULL AND superseded_by IS NULL;

ALTER TABLE courier.digest_state
	ADD COLUMN firing jsonb NOT NULL DEFAULT '[]';
COMMENT ON COLUMN courier.digest_state.firing IS
	'The alerts firing at the last digest, one object each: kind, labels, annotations, starts_at. The next digest resolves those whose condition cleared. Read it through courier.alerts_firing.';

CREATE VIEW courier.alerts_firing AS
SELECT a.value ->> 'kind' AS kind,
	   a.value -> 'labels' ->> 'alertname' AS alertname,
	   a.value -> 'labels' ->> 'stage' AS stage,
	   a.value -> 'labels' ->> 'subscriber' AS subscriber,
	   (a.value ->> 'starts_at')::timestamptz AS starts_at,
	   a.value -> 'labels' AS labels,
	   a.value -> 'annotations' AS annotations
  FROM courier.digest_state s
 CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(s.firing) AS a;
COMMENT ON VIEW courier.alerts_firing IS
	'The alerts courier.failure_digest() found firing at its last run: alertname, stage, subscriber, since when, and the labels and annotations it posts.';

CREATE OR REPLACE FUNCTION courier.failure_digest()
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	fmt text := coalesce(current_setting('courier.alert_format', true), 'courier');
	backlog_age interval := coalesce(nullif(current_setting('courier.alert_backlog_age', true), ''),
									 '0')::interval;
	/* the labels every alert carries: who raises it */
	common jsonb := jsonb_strip_nulls(jsonb_build_object(
		'service', 'courier',
		'database', current_database()::text,
		'cluster', nullif(current_setting('cluster_name'), '')));
	since bigint;
	newest bigint;
	prev_run timestamptz;
	was jsonb;
	now_firing jsonb;
	n integer;
	payload jsonb;
	lifetime interval;
	tms_breaker text;
	last_id bigint;
	ev record;
BEGIN
	SELECT d.last_failure_id, d.last_run_at, d.firing INTO since, prev_run, was
	  FROM courier.digest_state d FOR UPDATE;
	SELECT count(*), max(f.failure_id) INTO n, newest
	  FROM courier.failures f WHERE f.failure_id > since;
	SELECT coalesce(max(a.alert_id), 0) INTO last_id FROM courier.alerts a;

	/*
	 * The failures that are new since the last digest, as courier has
	 * always reported them: NOTIFY, and the outbox in the courier format.
	 */
	IF n > 0 THEN
		SELECT jsonb_build_object(
				'alert', 'new_failures',
				'count', n,
				'since_failure_id', since,
				'by_stage', (SELECT jsonb_object_agg(stage, c) FROM
								(SELECT f.stage, count(*) AS c FROM courier.failures f
								  WHERE f.failure_id > since GROUP BY f.stage) s),
				'top_errors', (SELECT jsonb_agg(jsonb_build_object('error', last_error, 'count', c)) FROM
								(SELECT f.last_error, count(*) AS c FROM courier.failures f
								  WHERE f.failure_id > since
								  GROUP BY f.last_error ORDER BY c DESC LIMIT 5) e))
		  INTO payload;
		IF fmt = 'courier' THEN
			INSERT INTO courier.alerts (kind, payload) VALUES ('new_failures', payload);
		END IF;
		PERFORM pg_notify('courier_alerts', payload::text);
	END IF;

	SELECT t.breaker INTO tms_breaker FROM courier.tms_state() t;

	/*
	 * What fires now: one object per alert, kind, labels and annotations
	 * (Alertmanager wants strings), starts_at kept from the last digest
	 * while the alert goes on.
	 */
	WITH open_failures AS (
		SELECT f.stage::text AS stage, count(*) AS n_open,
			   count(*) FILTER (WHERE f.failure_id > since) AS n_new
		  FROM courier.failures f
		 WHERE f.discarded_at IS NULL
		 GROUP BY f.stage
	), cond(kind, labels, annotations) AS (
		SELECT 'new_failures',
			   common || jsonb_build_object('alertname', 'CourierNewFailures',
											'severity', 'warning', 'stage', o.stage),
			   jsonb_build_object(
				'summary', format('%s open failure(s) in stage %s, %s new since the last digest',
								  o.n_open, o.stage, o.n_new),
				'description', format('Items of stage %s exhausted their attempts or failed permanently'
									  ' and wait in courier.failures. Top errors: %s.', o.stage,
									  (SELECT string_agg(format('%s x "%s"', e.c, left(e.last_error, 200)),
														 '; ' ORDER BY e.c DESC, e.last_error)
										 FROM (SELECT f.last_error, count(*) AS c
												 FROM courier.failures f
												WHERE f.stage::text = o.stage AND f.discarded_at IS NULL
												GROUP BY f.last_error
												ORDER BY c DESC, f.last_error LIMIT 3) e)),
				'open_failures', o.n_open::text,
				'new_failures', o.n_new::text,
				'hint', format('SELECT * FROM courier.failures WHERE stage = %L AND discarded_at IS NULL;'
							   ' once the cause is fixed, SELECT courier.retry_failures(stage => %L),'
							   ' or drop them with SELECT courier.discard_failures(stage => %L).'
							   ' The alert resolves when none is open.',
							   o.stage, o.stage, o.stage))
		  FROM open_failures o
		 WHERE o.n_new > 0
			OR EXISTS (SELECT 1 FROM jsonb_array_elements(was) w
						WHERE w -> 'labels' = common || jsonb_build_object(
								'alertname', 'CourierNewFailures', 'severity', 'warning',
								'stage', o.stage))
		UNION ALL
		SELECT 'breaker_open',
			   common || jsonb_build_object('alertname', 'CourierBreakerOpen',
											'severity', 'critical', 'stage', 'tms'),
			   jsonb_build_object(
				'summary', format('The TMS circuit breaker is %s: notices are not being sent', tms_breaker),
				'description', 'TMS requests failed courier.tms_breaker_threshold times in a row (or the TMS'
							   ' refused courier''s credentials). Sending pauses; one probe request goes out'
							   ' per courier.tms_breaker_cooldown and closes the breaker once the TMS answers.'
							   ' Pending notices wait, nothing is lost.',
				'breaker', tms_breaker,
				'hint', 'Check the TMS at courier.tms_url and the server log (WARNING "circuit breaker opened");'
						' SELECT * FROM courier.tms_state(); SELECT * FROM courier.queue_stats WHERE stage = ''tms''.')
		 WHERE tms_breaker IS DISTINCT FROM 'closed'
		UNION ALL
		SELECT 'breaker_open',
			   common || jsonb_build_object('alertname', 'CourierBreakerOpen', 'severity', 'warning',
											'stage', 'fanout', 'subscriber', s.name),
			   jsonb_build_object(
				'summary', format('The circuit breaker of subscriber %s is %s: its events are not being delivered',
								  s.name, s.breaker),
				'description', format('Deliveries to subscriber %s failed courier.tms_breaker_threshold times'
									  ' in a row. Its events wait (%s queued), nothing is lost.',
									  s.name, s.backlog),
				'breaker', s.breaker,
				'backlog', s.backlog::text,
				'hint', format('Check the subscriber''s endpoint; SELECT * FROM courier.subscribers WHERE name = %L.',
							   s.name))
		  FROM courier.subscribers s
		 WHERE s.breaker <> 'closed'
		UNION ALL
		SELECT 'backlog_old',
			   common || jsonb_build_object('alertname', 'CourierBacklogOld',
											'severity', 'warning', 'stage', q.stage::text),
			   jsonb_build_object(
				'summary', format('The oldest item queued in stage %s waits for %s (threshold %s)',
								  q.stage, date_trunc('second', q.oldest_age), backlog_age),
				'description', format('Stage %s has %s item(s) queued, %s due now, %s in flight;'
									  ' the oldest was queued %s ago.', q.stage, q.backlog, q.due_now,
									  q.in_flight, date_trunc('second', q.oldest_age)),
				'oldest_age_seconds', round(extract(epoch FROM q.oldest_age))::text,
				'backlog', q.backlog::text,
				'threshold', backlog_age::text,
				'hint', format('Is courier.enabled off, courier.pause_%s on, courier.tms_mode off, or a breaker'
							   ' open? Are its workers running (pg_stat_activity, backend_type courier %s worker)?'
							   ' SELECT * FROM courier.queue_stats.', q.stage, q.stage))
		  FROM courier.queue_stats q
		 WHERE backlog_age > interval '0'
		   AND q.stage::text <> 'fanout'	/* the subscribers' queues, below, one by one */
		   AND q.oldest_age > backlog_age
		UNION ALL
		SELECT 'backlog_old',
			   common || jsonb_build_object('alertname', 'CourierBacklogOld', 'severity', 'warning',
											'stage', 'fanout', 'subscriber', s.name),
			   jsonb_build_object(
				'summary', format('The oldest event subscriber %s has not accepted is %s old (threshold %s)',
								  s.name, date_trunc('second', s.oldest_undelivered_age), backlog_age),
				'description', format('Subscriber %s has %s event(s) queued and %s failed (each holds back'
									  ' its order''s later events)%s.', s.name, s.backlog, s.failed,
									  CASE WHEN s.paused THEN '; it is paused' ELSE '' END),
				'oldest_age_seconds', round(extract(epoch FROM s.oldest_undelivered_age))::text,
				'backlog', s.backlog::text,
				'failed', s.failed::text,
				'paused', s.paused::text,
				'threshold', backlog_age::text,
				'hint', format('SELECT * FROM courier.subscribers WHERE name = %L; a paused subscriber resumes'
							   ' with courier.resume_subscriber(%L), failed events are in courier.failures'
							   ' (stage fanout).', s.name, s.name))
		  FROM courier.subscribers s
		 WHERE backlog_age > interval '0'
		   AND s.oldest_undelivered_age > backlog_age
	)
	SELECT coalesce(jsonb_agg(jsonb_build_object(
				'kind', c.kind, 'labels', c.labels, 'annotations', c.annotations,
				'starts_at', coalesce((SELECT w -> 'starts_at' FROM jsonb_array_elements(was) w
										WHERE w -> 'labels' = c.labels LIMIT 1),
									  to_jsonb(now())))
				ORDER BY c.labels), '[]')
	  INTO now_firing
	  FROM cond c;

	/*
	 * Started and cleared since the last digest, in courier's own shape:
	 * NOTIFYed in either format, and the outbox's rows in the courier
	 * format (which posts changes only).  New failures were reported
	 * above, as they always were.
	 */
	FOR ev IN
		SELECT a -> 'labels' AS labels, a ->> 'kind' AS kind,
			   jsonb_build_object('alert', a ->> 'kind', 'state', 'firing',
								  'labels', a -> 'labels', 'annotations', a -> 'annotations',
								  'starts_at', a -> 'starts_at') AS payload
		  FROM jsonb_array_elements(now_firing) a
		 WHERE a ->> 'kind' <> 'new_failures'
		   AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(was) w
							WHERE w -> 'labels' = a -> 'labels')
		UNION ALL
		SELECT w -> 'labels', w ->> 'kind',
			   jsonb_build_object('alert', w ->> 'kind', 'state', 'resolved',
								  'labels', w -> 'labels', 'annotations', w -> 'annotations',
								  'starts_at', w -> 'starts_at', 'ends_at', to_jsonb(now()))
		  FROM jsonb_array_elements(was) w
		 WHERE w ->> 'kind' <> 'new_failures'
		   AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(now_firing) a
							WHERE a -> 'labels' = w -> 'labels')
	LOOP
		IF fmt = 'courier' THEN
			INSERT INTO courier.alerts (kind, format, labels, payload)
			VALUES (ev.kind, 'courier', ev.labels, ev.payload);
		END IF;
		PERFORM pg_notify('courier_alerts', ev.payload::text);
	END LOOP;

	/*
	 * Alertmanager: every firing alert again, with an explicit endsAt,
	 * and every cleared one with endsAt now, which resolves it.  Without
	 * endsAt Alertmanager would end an alert resolve_timeout (5 min) after
	 * the post, the very interval of the digest; so endsAt is three digest
	 * intervals ahead, the interval being the time since the previous
	 * digest, no less than the 5 minutes of courier.schedule_defaults()
	 * and no more than an hour: a missed run or two, or Alertmanager down
	 * for a while, does not end an alert that still fires, while an alert
	 * whose digest stopped running ends by itself within 15 min to 3 h.
	 */
	IF fmt = 'alertmanager' THEN
		lifetime := 3 * least(greatest(coalesce(now() - prev_run, interval '5 minutes'),
									   interval '5 minutes'),
							  interval '1 hour');
		INSERT INTO courier.alerts (kind, format, labels, payload)
		SELECT a ->> 'kind', 'alertmanager', a -> 'labels',
			   jsonb_build_array(jsonb_build_object(
				'labels', a -> 'labels', 'annotations', a -> 'annotations',
				'startsAt', a -> 'starts_at', 'endsAt', to_jsonb(now() + lifetime)))
		  FROM jsonb_array_elements(now_firing) a
		UNION ALL
		SELECT w ->> 'kind', 'alertmanager', w -> 'labels',
			   jsonb_build_array(jsonb_build_object(
				'labels', w -> 'labels', 'annotations', w -> 'annotations',
				'startsAt', w -> 'starts_at', 'endsAt', to_jsonb(now())))
		  FROM jsonb_array_elements(was) w
		 WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(now_firing) a
							WHERE a -> 'labels' = w -> 'labels');
	END IF;

	/*
	 * A row of the same alert not posted yet is outdated by the one just
	 * written: it is never posted (a row in flight finishes, then the new
	 * one goes).  Digests run one at a time (the lock on digest_state),
	 * so the rows after last_id are this digest's.
	 */
	UPDATE courier.alerts o
	   SET superseded_by = r.alert_id
	  FROM courier.alerts r
	 WHERE r.alert_id > last_id
	   AND r.labels = o.labels
	   AND o.alert_id <= last_id
	   AND o.posted_at IS NULL
	   AND o.superseded_by IS NULL;
	/* superseded rows are never posted, so prune() would keep them */
	DELETE FROM courier.alerts o
	 WHERE o.superseded_by IS NOT NULL
	   AND o.created_at < now() - coalesce(current_setting('courier.retention', true), '30 days')::interval;

	UPDATE courier.digest_state
	   SET last_failure_id = coalesce(newest, last_failure_id), last_run_at = now(),
		   firing = now_firing;
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.failure_digest() IS
	'Report failures that appeared since the last digest (NOTIFY courier_alerts, and a POST to courier.alert_url by the launcher), and raise and resolve CourierNewFailures, CourierBreakerOpen and CourierBacklogOld in courier.alert_format. Returns the number of new failures.';

REVOKE ALL ON courier.alerts_firing FROM PUBLIC;
GRANT SELECT ON courier.alerts_firing TO courier_admin;

/* -- end of section: alerts -- */

/* ========================================================================
 * Section: trace context
 * ======================================================================== */

/*
 * A delay request's W3C trace (docs/dba-console.md, "Follow one
 * request").  delay_orders records the app's courier.traceparent, or one
 * courier starts, with the request; the logic stage copies it to the
 * notices and the order.delayed events the request makes, and a notice's
 * trace goes to its notice.* events; every failure keeps the trace of its
 * item.  Every HTTP request courier makes for them (TMS sends, subscriber
 * POSTs) carries the trace id with a span id of its own.  Rows written
 * before 0.7 have none (NULL); adding the columns rewrites nothing.
 */
ALTER TABLE courier.requests ADD COLUMN traceparent text;
COMMENT ON COLUMN courier.requests.traceparent IS
	'W3C traceparent of the request: the app''s courier.traceparent when delay_orders was called, else one courier started (flags 01). Every HTTP request made for it carries its trace id; request_status shows it. NULL: made before 0.7.';
ALTER TABLE courier.notices ADD COLUMN traceparent text;
COMMENT ON COLUMN courier.notices.traceparent IS
	'The traceparent of the delay request that created the notice; its sends carry its trace id, each with a span id of its own. A later request for the same order and date finds the notice there and leaves it: the notice keeps the first request''s trace. NULL: written before 0.7.';
ALTER TABLE courier.events ADD COLUMN traceparent text;
COMMENT ON COLUMN courier.events.traceparent IS
	'The trace the event belongs to: order.delayed its request''s, notice.* its notice''s, order.invoiced and order.overdue the app''s courier.traceparent when it set one. Sent in the event''s body and the POST''s traceparent header. NULL: none.';
ALTER TABLE courier.failures ADD COLUMN traceparent text;
COMMENT ON COLUMN courier.failures.traceparent IS
	'The trace of the failed item (logic: its request''s; tms: its notice''s; fanout: its event''s), to find it in the app''s and the provider''s logs. NULL: none.';

/*
 * emit_events takes each event's traceparent (NULL: none).  A new
 * parameter, with a default so that 0.6's five-argument calls still
 * resolve: dropped and created again (it is granted to no one).
 */
DROP FUNCTION courier.emit_events(bigint[], bigint[], text[], jsonb[], timestamptz);
CREATE FUNCTION courier.emit_events(seller_ids bigint[], order_ids bigint[], types text[],
									payloads jsonb[], occurred_at timestamptz,
									traceparents text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
	n bigint;
BEGIN
	WITH ev AS (
		INSERT INTO courier.events (seller_id, order_id, type, occurred_at, payload,
									traceparent)
		SELECT u.seller_id, u.order_id, u.type, emit_events.occurred_at, u.payload,
			   u.traceparent
		  FROM unnest(seller_ids, order_ids, types, payloads, traceparents)
			   AS u(seller_id, order_id, type, payload, traceparent)
		 WHERE EXISTS (SELECT 1 FROM courier.subscriptions s
						WHERE u.type = ANY (s.event_types))
		RETURNING seller_id, event_id, order_id, type
	), fanned AS (
		INSERT INTO courier.deliveries (seller_id, subscriber_id, event_id, order_id, not_before)
		SELECT ev.seller_id, s.subscriber_id, ev.event_id, ev.order_id, emit_events.occurred_at
		  FROM ev JOIN courier.subscriptions s ON ev.type = ANY (s.event_types)
		RETURNING 1
	)
	SELECT count(*) INTO n FROM ev;
	IF n > 0 THEN
		PERFORM courier.wake_subscribers();
	END IF;
	RETURN n;
END
$$;
REVOKE ALL ON FUNCTION courier.emit_events(bigint[], bigint[], text[], jsonb[], timestamptz, text[])
	FROM PUBLIC;

/* notice.delivered and notice.failed carry their notice's trace */
CREATE OR REPLACE FUNCTION courier.notice_events()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $fn$
BEGIN
	/*
	 * EXECUTE: planned at each call, for the sizes of this statement's
	 * transition tables.  A cached plan made on the first call (a lease of
	 * 5 notices) nested-looped the old and new rows, quadratic in the
	 * rows of every later statement (the tms stage ran 4x slower).
	 */
	EXECUTE $q$
	SELECT courier.emit_events(pg_catalog.array_agg(x.seller_id),
							   pg_catalog.array_agg(x.order_id),
							   pg_catalog.array_agg(x.type),
							   pg_catalog.array_agg(x.payload),
							   pg_catalog.now(),
							   pg_catalog.array_agg(x.traceparent))
	  FROM (SELECT n.seller_id, n.order_id, n.traceparent,
				   CASE WHEN (n.status = 'delivered' AND o.status <> 'delivered'
							  AND n.receipt_status IS NULL)
							 OR (n.receipt_status = 'delivered'
								 AND o.receipt_status IS DISTINCT FROM 'delivered')
						THEN 'notice.delivered'
						WHEN (n.status = 'failed' AND o.status <> 'failed')
							 OR (n.receipt_status IN ('failed', 'expired')
								 AND o.receipt_status IS DISTINCT FROM n.receipt_status
								 AND n.status <> 'pending')
						THEN 'notice.failed' END AS type,
				   pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
					   'ship_date', n.ship_date, 'key',
					   'dn-' || n.order_id || '-' || pg_catalog.to_char(n.ship_date, 'YYYYMMDD'),
					   'status', n.status, 'channel', n.channel, 'provider', n.provider,
					   'provider_id', n.provider_id, 'attempts', n.attempts,
					   'sent_at', n.sent_at, 'receipt', n.receipt_status,
					   'receipt_code', n.receipt_code,
					   'fallback_channel', n.fallback_channel,
					   'last_error', n.errors -> -1)) AS payload
			  FROM new_notices n
			  JOIN old_notices o ON o.seller_id = n.seller_id AND o.order_id = n.order_id
							  AND o.ship_date = n.ship_date) x
	 WHERE x.type IS NOT NULL
	HAVING pg_catalog.count(*) > 0
	$q$;
	RETURN NULL;
END
$fn$;

/*
 * sweep_overdue: order.overdue carries the caller's courier.traceparent
 * when it set one (a schedule usually does not: then none), and so does
 * the delay request the sweep makes (delay_orders reads the same setting,
 * or starts a trace).  Read leniently here: courier's check refuses a
 * malformed value only once the library is loaded.
 */
CREATE OR REPLACE FUNCTION courier.sweep_overdue()
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids bigint[];
	tp text := pg_catalog.current_setting('courier.traceparent', true);
BEGIN
	IF tp IS NULL OR tp !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
	   OR tp ~ '^00-0{32}-' OR tp ~ '-0{16}-[0-9a-f]{2}$' THEN
		tp := NULL;
	END IF;

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
		RETURNING o.seller_id, o.order_id, o.invoice_deadline
	), overdue AS (
		/* order.overdue, in the transaction that marks the order */
		SELECT courier.emit_events(pg_catalog.array_agg(m.seller_id),
				   pg_catalog.array_agg(m.order_id),
				   pg_catalog.array_agg('order.overdue'::text),
				   pg_catalog.array_agg(pg_catalog.jsonb_build_object(
					   'invoice_deadline', m.invoice_deadline)),
				   pg_catalog.now(),
				   pg_catalog.array_agg(tp)) AS n
		  FROM marked m
	)
	SELECT pg_catalog.array_agg(m.order_id ORDER BY m.order_id) INTO ids
	  FROM marked m, overdue;

	IF ids IS NULL THEN
		RETURN 0;
	END IF;
	PERFORM courier.delay_orders(ids, pg_catalog.current_setting('courier.overdue_reason'),
								 CURRENT_DATE + pg_catalog.current_setting('courier.overdue_delay_days')::integer);
	RETURN pg_catalog.cardinality(ids);
END
$$;

/*
 * request_status also returns the request's trace id (the 32 hex digits
 * of its traceparent; NULL for a request made before 0.7), for the DBA to
 * find the request's sends in the provider's log.  New OUT columns change
 * its result type: dropped and created again, with 0.1's grants.
 */
DROP FUNCTION courier.request_status(bigint);
CREATE FUNCTION courier.request_status(request_id bigint,
	OUT total integer, OUT done integer, OUT failed integer, OUT pending integer,
	OUT trace_id text)
RETURNS record
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	SELECT r.total,
		   r.pruned_done + (SELECT count(*)::integer FROM courier.delay_history h
							 WHERE h.request_id = r.request_id),
		   r.pruned_failed + (SELECT count(*)::integer FROM courier.failures f
							   WHERE f.request_id = r.request_id AND f.stage = 'logic'),
		   pg_catalog.substr(r.traceparent, 4, 32)
	  INTO total, done, failed, trace_id
	  FROM courier.requests r
	 WHERE r.request_id = request_status.request_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	pending := total - done - failed;
END
$$;
COMMENT ON FUNCTION courier.request_status(bigint) IS
	'Progress of a delay request: total orders, done (delay applied), failed, pending; and its W3C trace id, which every HTTP request made for it carries.';
REVOKE ALL ON FUNCTION courier.request_status(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.request_status(bigint) TO courier_app, courier_admin;

/* -- end of section: trace context -- */
