/* courier--0.1--0.2.sql
 *
 * courier 0.2: the close rule, progress that pruning cannot change, and a
 * register_invoice that says what became of the notice.
 *
 * Run by ALTER EXTENSION courier UPDATE TO '0.2' (and by CREATE EXTENSION,
 * after courier--0.1.sql).  Queued work, notices and failures are kept as
 * they are: this script adds columns with defaults, replaces functions and
 * adds a trigger; it rewrites no table.
 */

\echo Use "ALTER EXTENSION courier UPDATE TO '0.2'" to load this file. \quit

/* ------------------------------------------------------------------------
 * Progress that pruning does not change
 * ------------------------------------------------------------------------ */

ALTER TABLE courier.requests
	ADD COLUMN pruned_done integer NOT NULL DEFAULT 0,
	ADD COLUMN pruned_failed integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN courier.requests.pruned_done IS
	'Orders of the request whose history rows courier.prune() deleted: still counted as done by request_status.';
COMMENT ON COLUMN courier.requests.pruned_failed IS
	'Logic failures of the request that courier.prune() deleted (discarded ones): still counted as failed by request_status.';

/* PL/pgSQL rather than SQL: planned per call, also where SQL functions with parameters cannot be (Citus) */
CREATE OR REPLACE FUNCTION courier.request_status(request_id bigint,
	OUT total integer, OUT done integer, OUT failed integer, OUT pending integer)
RETURNS record
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	SELECT r.total,
		   r.pruned_done + (SELECT count(*)::integer FROM courier.delay_history h
							 WHERE h.request_id = r.request_id),
		   r.pruned_failed + (SELECT count(*)::integer FROM courier.failures f
							   WHERE f.request_id = r.request_id AND f.stage = 'logic')
	  INTO total, done, failed
	  FROM courier.requests r
	 WHERE r.request_id = request_status.request_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	pending := total - done - failed;
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
	 WHERE (n.order_id, n.ship_date) IN (
		SELECT order_id, ship_date FROM courier.notices
		 WHERE sent_at < cutoff AND status IN ('delivered', 'dry_run')
		 LIMIT chunk);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		RETURN n;
	END IF;

	/* history rows go, their count stays with the request */
	WITH gone AS (
		DELETE FROM courier.delay_history h
		 WHERE (h.request_id, h.order_id) IN (
			SELECT request_id, order_id FROM courier.delay_history
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
		 WHERE f.failure_id IN (SELECT failure_id FROM courier.failures
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

/* ------------------------------------------------------------------------
 * The close rule: once a close has committed, no send of the order's
 * notice starts afterwards (src/closes.c tells how).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.close_at_commit(order_id bigint)
RETURNS void
AS 'MODULE_PATHNAME', 'courier_close_at_commit'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION courier.close_at_commit(bigint) IS
	'Internal (the order_closed trigger): tell running senders, when this transaction commits, that the order closed.';

CREATE FUNCTION courier.order_closed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM courier.close_at_commit(NEW.order_id);
	/* notices no sender holds are dropped now; a held one is dropped by its sender */
	WITH dropped AS (
		DELETE FROM courier.work_items w
		 WHERE w.stage = 'tms' AND w.order_id = NEW.order_id
		   AND (w.leased_by IS NULL OR w.not_before <= statement_timestamp())
		RETURNING w.order_id, w.ship_date
	)
	UPDATE courier.notices n SET status = 'dropped'
	  FROM dropped d
	 WHERE n.order_id = d.order_id AND n.ship_date = d.ship_date;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION courier.order_closed() IS
	'Trigger: an order became invoiced, shipped or cancelled (by any statement): drop its notices no sender holds and tell the senders at commit.';

CREATE TRIGGER order_closed
	AFTER UPDATE OF status ON courier.orders
	FOR EACH ROW
	WHEN (OLD.status IN ('paid', 'shipping_requested')
		  AND NEW.status NOT IN ('paid', 'shipping_requested'))
	EXECUTE FUNCTION courier.order_closed();

/* register_invoice now says what became of the order's notice */
DROP FUNCTION courier.register_invoice(bigint, text);
CREATE FUNCTION courier.register_invoice(order_id bigint, invoice_number text)
RETURNS text
AS 'MODULE_PATHNAME', 'courier_register_invoice'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION courier.register_invoice(bigint, text) IS
	'Invoice registered: the order becomes invoiced and no send of its notice starts afterwards. Returns what became of its newest notice: dropped (not sent, and never will be), in_flight (a sender holds it: a request may be on the wire; notices.status tells the outcome), delivered, failed, or none.';

/* ------------------------------------------------------------------------
 * Smaller corrections
 * ------------------------------------------------------------------------ */

COMMENT ON TYPE courier.order_status IS
	'Where an order stands: paid, shipping_requested (invoice deadline running), then closed by invoiced, shipped or cancelled.';

/*
 * metrics(): one row per metric family (name, type, help) and one query of
 * samples, instead of numbered UNION ALL branches.  The families come out
 * in the order listed, each with its HELP and TYPE lines and its samples.
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
		('courier_queue_backlog', 'gauge', 'Items queued per stage.', 4),
		('courier_queue_due', 'gauge', 'Items due now per stage.', 5),
		('courier_queue_in_flight', 'gauge', 'Items leased by senders per stage.', 6),
		('courier_queue_oldest_age_seconds', 'gauge', 'Age of the oldest queued item per stage.', 7),
		('courier_failures_open', 'gauge', 'Failures neither retried nor discarded per stage.', 8),
		('courier_table_dead_tuples', 'gauge', 'Dead tuples of courier tables (queue bloat).', 9)
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
	)
	SELECT string_agg(format(E'# HELP %s %s\n# TYPE %s %s', f.name, f.help, f.name, f.type)
					  || coalesce((SELECT string_agg(format(E'\n%s{%s} %s', s.name, s.labels, s.value),
													 '' ORDER BY s.labels)
									 FROM sample s WHERE s.name = f.name), ''),
					  E'\n' ORDER BY f.ord) || E'\n'
	  FROM family f
$$;

/* run_once(NULL) is an error, not NULL */
ALTER FUNCTION courier.run_once(text) CALLED ON NULL INPUT;

/* ------------------------------------------------------------------------
 * Privileges of what 0.2 adds
 * ------------------------------------------------------------------------ */

REVOKE ALL ON FUNCTION courier.close_at_commit(bigint), courier.order_closed(),
	courier.register_invoice(bigint, text) FROM PUBLIC;
/* every function 0.2 creates or replaces declares SECURITY DEFINER and its search_path itself */
GRANT EXECUTE ON FUNCTION courier.register_invoice(bigint, text) TO courier_app;
