/* courier--0.2--0.3.sql
 *
 * courier 0.3: a queue whose storage does not grow with what has passed
 * through it, and fewer writes per order.
 *
 * A heap that rows are inserted into and deleted from keeps its high-water
 * mark: 1,000,000 orders through 0.2 left courier.work_items at 544 MB for
 * 48 live rows.  0.3 splits the queue into three slots, the partitions of a
 * table partitioned by slot, and rotates them the way PgQ rotates its event
 * tables: new items go to the current slot; after courier.queue_rotate_
 * interval the next (empty) slot becomes current and the old one drains;
 * once a draining slot holds no row it is emptied with TRUNCATE, which
 * gives its pages and its index pages back at once.  The few items that
 * stay long in a draining slot (a back-off, a lease) are moved to the
 * current slot, so a slot never waits for them.  The launcher rotates
 * (courier.rotate_queue()); without workers, pg_cron or a DBA can.
 *
 * The notice is the tms stage's queue entry: it carries its own due time,
 * lease, attempts and history, so the logic stage writes one row per
 * notice instead of two, and a sender's lease and record touch one row
 * instead of two.  courier.work_items keeps the logic stage's items.
 *
 * Run by ALTER EXTENSION courier UPDATE TO '0.3' (and by CREATE EXTENSION,
 * after the earlier scripts).  The queued items are copied into the new
 * queue with their ids, attempts, back-off and history, and the tms items'
 * state moves into their notices, in the update's transaction: nothing
 * queued is lost.  A lease held by a sender of the old library (which
 * cannot outlive the server restart that loads the new one) is kept and
 * runs out as any lease of a dead sender does.
 */

\echo Use "ALTER EXTENSION courier UPDATE TO '0.3'" to load this file. \quit

/* ------------------------------------------------------------------------
 * The slots
 * ------------------------------------------------------------------------ */

CREATE TABLE courier.queue_slots (
	slot				smallint PRIMARY KEY CHECK (slot BETWEEN 0 AND 2),
	state				text NOT NULL CHECK (state IN ('current', 'draining', 'clean')),
	since				timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE courier.queue_slots IS
	'The three slots of courier.work_items: one current (new items go there), the others draining (emptied by courier.rotate_queue() once no item is left) or clean (truncated, waiting to become current).';
COMMENT ON COLUMN courier.queue_slots.since IS
	'When the slot entered its state: a current slot rotates after courier.queue_rotate_interval, a draining one has its stragglers moved after as long.';
INSERT INTO courier.queue_slots (slot, state) VALUES (0, 'current'), (1, 'clean'), (2, 'clean');
CREATE UNIQUE INDEX queue_slots_one_current ON courier.queue_slots (state) WHERE state = 'current';

CREATE FUNCTION courier.queue_slot()
RETURNS smallint
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT s.slot FROM courier.queue_slots s WHERE s.state = 'current'
$$;
COMMENT ON FUNCTION courier.queue_slot() IS
	'The slot new work items go to.  Statements that queue many items read it once, in a scalar subquery.';

/* ------------------------------------------------------------------------
 * The queue, partitioned by slot; the 0.2 table's items move over
 * ------------------------------------------------------------------------ */

DROP VIEW courier.queue_stats;
ALTER TABLE courier.work_items RENAME TO work_items_0_2;
ALTER INDEX courier.work_items_pkey RENAME TO work_items_0_2_pkey;
ALTER INDEX courier.work_items_due RENAME TO work_items_0_2_due;
ALTER INDEX courier.work_items_order RENAME TO work_items_0_2_order;

CREATE TABLE courier.work_items (
	item_id				bigint GENERATED ALWAYS AS IDENTITY,
	slot				smallint NOT NULL DEFAULT courier.queue_slot(),
	stage				courier.stage NOT NULL,
	seller_id			bigint NOT NULL,
	order_id			bigint NOT NULL,
	request_id			bigint,
	attempts			integer NOT NULL DEFAULT 0,
	not_before			timestamptz NOT NULL DEFAULT now(),
	leased_by			integer,
	solo				boolean NOT NULL DEFAULT false,
	errors				jsonb NOT NULL DEFAULT '[]',
	created_at			timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (item_id, slot),
	CHECK ((stage = 'logic') = (request_id IS NOT NULL)),
	CHECK (stage <> 'tms')
) PARTITION BY LIST (slot);
COMMENT ON TABLE courier.work_items IS
	'The queue of the logic stage: one row per item not yet done, in one of three rotating slots (courier.queue_slots). Done items are deleted, failed ones move to courier.failures. The tms stage''s queue is courier.notices itself (status pending).';
COMMENT ON COLUMN courier.work_items.slot IS
	'The partition the item lives in: the current slot when it was queued, or the one courier.rotate_queue() moved it to.';
COMMENT ON COLUMN courier.work_items.request_id IS
	'logic items: the delay request to apply to order_id.';
COMMENT ON COLUMN courier.work_items.not_before IS
	'The item is not claimed before this time: now for new work, the back-off after a failed attempt.';
COMMENT ON COLUMN courier.work_items.leased_by IS
	'Unused by the logic stage (its claim is a row lock); kept for stages that lease.';
COMMENT ON COLUMN courier.work_items.solo IS
	'The item''s batch died as a whole: it is retried alone, so only the culprit pays another attempt.';
COMMENT ON COLUMN courier.work_items.errors IS
	'One object per failed attempt: at, error, sqlstate, http_status.';

/*
 * Autovacuum still matters between two rotations: the claim's index scan
 * should not wade through the dead entries of the items done since.
 */
CREATE TABLE courier.work_items_0 PARTITION OF courier.work_items FOR VALUES IN (0)
	WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 5000,
		  autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 20000,
		  autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 20000);
CREATE TABLE courier.work_items_1 PARTITION OF courier.work_items FOR VALUES IN (1)
	WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 5000,
		  autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 20000,
		  autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 20000);
CREATE TABLE courier.work_items_2 PARTITION OF courier.work_items FOR VALUES IN (2)
	WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 5000,
		  autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 20000,
		  autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 20000);

/* claim: WHERE stage = $1 AND not_before <= now() ORDER BY not_before, item_id LIMIT n FOR UPDATE SKIP LOCKED */
CREATE INDEX work_items_due ON courier.work_items (stage, not_before, item_id);


INSERT INTO courier.work_items
	(item_id, slot, stage, seller_id, order_id, request_id, attempts,
	 not_before, leased_by, solo, errors, created_at)
OVERRIDING SYSTEM VALUE
SELECT w.item_id, 0, w.stage, w.seller_id, w.order_id, w.request_id,
	   w.attempts, w.not_before, w.leased_by, w.solo, w.errors, w.created_at
  FROM courier.work_items_0_2 w
 WHERE w.stage = 'logic';

/* ------------------------------------------------------------------------
 * The notice is the tms stage's queue entry
 * ------------------------------------------------------------------------ */

ALTER TABLE courier.notices
	ADD COLUMN due_at timestamptz,
	ADD COLUMN leased_by integer,
	ADD COLUMN errors jsonb NOT NULL DEFAULT '[]',
	ALTER COLUMN attempts SET DEFAULT 0;
COMMENT ON COLUMN courier.notices.due_at IS
	'A pending notice is not leased before this time: when it was written, the back-off after a failed attempt, the lease''s end while a sender holds it.';
COMMENT ON COLUMN courier.notices.leased_by IS
	'pid of the sender holding the notice''s lease; the lease ends at due_at, so a dead sender''s notices fall due again by themselves.';
COMMENT ON COLUMN courier.notices.attempts IS
	'Attempts at sending: failed ones while pending, all of them (the last one delivered) once sent.';
COMMENT ON COLUMN courier.notices.errors IS
	'One object per failed attempt: at, error, http_status, outcome_unknown.';
COMMENT ON TABLE courier.notices IS
	'The outbox, the tms stage''s queue and the delivery log: one delay notice per order and distinct new ship date. Pending ones are leased by senders (due_at, leased_by); the key is the idempotency key. Delivered notices keep the provider id, HTTP status, latency and attempts.';

/* the tms lease: pending notices by due time (a lease moves due_at) */
CREATE INDEX notices_due ON courier.notices (due_at) WHERE status = 'pending';

UPDATE courier.notices n
   SET due_at = w.not_before, leased_by = w.leased_by,
	   attempts = w.attempts, errors = w.errors
  FROM courier.work_items_0_2 w
 WHERE w.stage = 'tms' AND n.order_id = w.order_id AND n.ship_date = w.ship_date
   AND n.status = 'pending';

/* failures of the tms stage name their notice, not an item */
ALTER TABLE courier.failures ALTER COLUMN item_id DROP NOT NULL;
COMMENT ON COLUMN courier.failures.item_id IS
	'logic failures: the work item''s id; NULL for tms failures, whose notice is (order_id, ship_date).';

/* new ids go on after every id ever given, also those already in failures */
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('courier.work_items', 'item_id'),
						 greatest((SELECT max(item_id) FROM courier.work_items_0_2),
								  (SELECT max(item_id) FROM courier.failures), 0) + 1,
						 false);

DROP TABLE courier.work_items_0_2;

/* (0.2 kept a queue row beside every pending notice; should one lack it, it is due now) */
UPDATE courier.notices n SET due_at = now()
 WHERE n.status = 'pending' AND n.due_at IS NULL;

/* ------------------------------------------------------------------------
 * What closes, retries and reports read the tms queue from now on
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
	 WHERE n.order_id = NEW.order_id AND n.status = 'pending'
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
					 WHERE w.stage = 'logic' AND w.order_id = f.order_id
					   AND w.request_id = f.request_id))
		   AND NOT (f.stage = 'tms' AND EXISTS (
					SELECT 1 FROM courier.notices p
					 WHERE p.order_id = f.order_id AND p.ship_date = f.ship_date
					   AND p.status = 'pending'))
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
		 WHERE m.stage = 'tms' AND n.order_id = m.order_id AND n.ship_date = m.ship_date
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM queued) + (SELECT count(*) FROM reopened) INTO n;
	RETURN n;
END
$$;

/* PL/pgSQL: the notice's fate is read in a fresh snapshot, after the close */
COMMENT ON FUNCTION courier.register_invoice(bigint, text) IS
	'Invoice registered: the order becomes invoiced and no send of its notice starts afterwards. Returns what became of its newest notice: dropped (not sent, and never will be), in_flight (a sender holds it: a request may be on the wire; notices.status tells the outcome), delivered, failed, or none.';

/*
 * A delay rewrites its order's row without changing an indexed column: with
 * room left on the page the new version stays on it (a HOT update, no index
 * entry).  Pages filled to the brim by register_orders left no room.
 * Applies to pages written from now on.
 */
ALTER TABLE courier.orders SET (fillfactor = 85);

/*
 * The history is written in time order and read by time only in bulk
 * (prune by age, queue_stats' last hour): a BRIN index serves that at a
 * fraction of a B-tree's size, and the logic stage no longer pays a B-tree
 * insert per order for it.
 */
DROP INDEX courier.delay_history_applied_at;
CREATE INDEX delay_history_applied_at ON courier.delay_history USING brin (applied_at);

/* ------------------------------------------------------------------------
 * Rotation
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.rotate_queue(min_age interval DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	age interval := coalesce(min_age,
		pg_catalog.current_setting('courier.queue_rotate_interval')::interval);
	cur smallint;
	s record;
	part text;
	truncated integer := 0;
	old_timeout text;
	busy boolean;
BEGIN
	/* one rotation at a time; the slots' rows are the lock */
	PERFORM 1 FROM courier.queue_slots q ORDER BY q.slot FOR UPDATE;
	SELECT q.slot INTO cur FROM courier.queue_slots q WHERE q.state = 'current';

	FOR s IN SELECT q.slot, q.since FROM courier.queue_slots q
			  WHERE q.state = 'draining' ORDER BY q.slot
	LOOP
		/*
		 * Stragglers (items in back-off, leased, or retried by hand) keep a
		 * slot from being emptied: after a whole interval of draining they
		 * move to the current slot.  Row movement, so a sender updating one
		 * of them meanwhile gets a serialization failure and tries again,
		 * never an update that finds nothing.  Locked rows are in a batch
		 * right now and will be gone soon: skipped.
		 */
		IF s.since <= pg_catalog.now() - age THEN
			UPDATE courier.work_items w SET slot = cur
			 WHERE w.slot = s.slot
			   AND w.item_id IN (SELECT m.item_id FROM courier.work_items m
								  WHERE m.slot = s.slot
								  FOR UPDATE SKIP LOCKED);
		END IF;

	END LOOP;

	FOR s IN SELECT q.slot FROM courier.queue_slots q
			  WHERE q.state = 'draining' ORDER BY q.slot
	LOOP
		part := 'work_items_' || s.slot;

		/* a look without the lock first: most looks find items left */
		EXECUTE format('SELECT EXISTS (SELECT 1 FROM courier.%I)', part) INTO busy;
		CONTINUE WHEN busy;

		/*
		 * Empty: truncate it under its ACCESS EXCLUSIVE lock, which also
		 * keeps anyone from adding a row between the look and the TRUNCATE.
		 * The lock is waited for only briefly (workers hold the partition
		 * for one batch): when it does not come, the next call tries again.
		 */
		old_timeout := pg_catalog.current_setting('lock_timeout');
		BEGIN
			PERFORM pg_catalog.set_config('lock_timeout', '100ms', true);
			EXECUTE format('LOCK TABLE courier.%I IN ACCESS EXCLUSIVE MODE', part);
			PERFORM pg_catalog.set_config('lock_timeout', old_timeout, true);
			EXECUTE format('SELECT EXISTS (SELECT 1 FROM courier.%I)', part) INTO busy;
			IF NOT busy THEN
				EXECUTE format('TRUNCATE courier.%I', part);
				UPDATE courier.queue_slots q SET state = 'clean', since = pg_catalog.now()
				 WHERE q.slot = s.slot;
				truncated := truncated + 1;
			END IF;
		EXCEPTION WHEN lock_not_available THEN
			NULL;				/* busy: next time */
		END;
		PERFORM pg_catalog.set_config('lock_timeout', old_timeout, true);
	END LOOP;

	/* the current slot turns draining once it is old and holds something */
	IF EXISTS (SELECT 1 FROM courier.queue_slots q
				WHERE q.slot = cur AND q.since <= pg_catalog.now() - age)
	   AND pg_catalog.pg_relation_size(format('courier.work_items_%s', cur)::regclass) > 0
	   AND EXISTS (SELECT 1 FROM courier.queue_slots q WHERE q.state = 'clean')
	THEN
		UPDATE courier.queue_slots q SET state = 'draining', since = pg_catalog.now()
		 WHERE q.slot = cur;
		UPDATE courier.queue_slots q SET state = 'current', since = pg_catalog.now()
		 WHERE q.slot = (SELECT c.slot FROM courier.queue_slots c
						  WHERE c.state = 'clean' ORDER BY c.since, c.slot LIMIT 1);
	END IF;
	RETURN truncated;
END
$$;
COMMENT ON FUNCTION courier.rotate_queue(interval) IS
	'Rotate the queue''s slots: truncate draining slots that hold no item, move items left in a slot draining for longer than min_age (default courier.queue_rotate_interval) to the current one, and make a clean slot current once the current one is that old. Returns the slots truncated. The launcher calls it; call it yourself when no worker runs.';

/* ------------------------------------------------------------------------
 * What reads the queue
 * ------------------------------------------------------------------------ */

CREATE VIEW courier.queue_stats AS
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
		 WHERE f.stage = s.stage AND f.discarded_at IS NULL) AS failures_open
  FROM unnest(enum_range(NULL::courier.stage)) AS s(stage)
  LEFT JOIN queued q ON q.stage = s.stage;
COMMENT ON VIEW courier.queue_stats IS
	'Per stage: items queued (logic: work items; tms: pending notices), due now, in flight (leased), age of the oldest, done and failed in the last hour, open failures.';

CREATE VIEW courier.queue_storage AS
SELECT q.slot, q.state, q.since,
	   (SELECT count(*) FROM courier.work_items w WHERE w.slot = q.slot) AS items,
	   pg_catalog.pg_total_relation_size(format('courier.work_items_%s', q.slot)::regclass) AS bytes
  FROM courier.queue_slots q;
COMMENT ON VIEW courier.queue_storage IS
	'Each slot of the queue: its state, since when, the items in it and the bytes it takes with its indexes.';

/* ------------------------------------------------------------------------
 * Privileges of what 0.3 adds
 * ------------------------------------------------------------------------ */

REVOKE ALL ON courier.work_items, courier.work_items_0, courier.work_items_1,
	courier.work_items_2, courier.queue_slots, courier.queue_stats,
	courier.queue_storage FROM PUBLIC;
REVOKE ALL ON FUNCTION courier.queue_slot(), courier.rotate_queue(interval) FROM PUBLIC;
GRANT SELECT ON courier.work_items, courier.queue_slots, courier.queue_stats,
	courier.queue_storage TO courier_admin;
GRANT EXECUTE ON FUNCTION courier.rotate_queue(interval) TO courier_admin;

/* ------------------------------------------------------------------------
 * Nothing that takes parameters is a SQL-language function: PL/pgSQL plans
 * per call, also where SQL functions with parameters cannot be planned
 * (Citus: docs/citus.md, rule 4).
 * ------------------------------------------------------------------------ */

CREATE OR REPLACE FUNCTION courier.failures_matching(failure_ids bigint[], stage courier.stage,
													 error_pattern text, failed_after timestamptz,
													 failed_before timestamptz)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN QUERY
	SELECT f.failure_id FROM courier.failures f
	 WHERE f.discarded_at IS NULL
	   AND ($1 IS NULL OR f.failure_id = ANY ($1))
	   AND ($2 IS NULL OR f.stage = $2)
	   AND ($3 IS NULL OR f.last_error ILIKE $3)
	   AND ($4 IS NULL OR f.failed_at >= $4)
	   AND ($5 IS NULL OR f.failed_at < $5);
END
$$;

CREATE OR REPLACE FUNCTION courier.discard_failures(failure_ids bigint[] DEFAULT NULL,
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
	UPDATE courier.failures f
	   SET discarded_at = pg_catalog.now()
	 WHERE f.failure_id IN (SELECT courier.failures_matching($1, $2, $3, $4, $5));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

/* ------------------------------------------------------------------------
 * Immutable parts for the hot statements: they take times, percentages and
 * jitter as parameters and call no clock, random or stable function where
 * Citus refuses one (docs/citus.md, rule 3).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.rollout_bucket(name text, key bigint)
RETURNS integer
AS 'MODULE_PATHNAME', 'courier_rollout_bucket'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION courier.rollout_bucket(text, bigint) IS
	'Where key (an order id) falls, 0 to 99, on rollout switch name''s scale: switch_enabled(name, key) is rollout_bucket(name, key) < the switch''s percentage.';

CREATE FUNCTION courier.backoff_step(attempt integer, base_ms integer, cap_ms integer,
									 jitter double precision)
RETURNS interval
AS 'MODULE_PATHNAME', 'courier_backoff_step'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION courier.backoff_step(integer, integer, integer, double precision) IS
	'The wait before retry number attempt: min(cap_ms, base_ms * 2^(attempt-1)), of which the fraction jitter (0 to 1) of the upper half; backoff_delay(attempt) draws the jitter and takes courier.retry_base and retry_cap.';

REVOKE ALL ON FUNCTION courier.rollout_bucket(text, bigint),
	courier.backoff_step(integer, integer, integer, double precision) FROM PUBLIC;
/* internal: the statements that call them run as the extension's owner */
