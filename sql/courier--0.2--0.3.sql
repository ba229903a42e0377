/* courier--0.2--0.3.sql
 *
 * courier 0.3: a queue whose storage does not grow with what has passed
 * through it.
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
 * Run by ALTER EXTENSION courier UPDATE TO '0.3' (and by CREATE EXTENSION,
 * after the earlier scripts).  The queued items are copied into the new
 * queue with their ids, attempts, back-off, leases and history, in the
 * update's transaction: nothing queued is lost, and a sender that holds a
 * lease across the update records its outcome on the same item id.
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
	ship_date			date,
	attempts			integer NOT NULL DEFAULT 0,
	not_before			timestamptz NOT NULL DEFAULT now(),
	leased_by			integer,
	solo				boolean NOT NULL DEFAULT false,
	errors				jsonb NOT NULL DEFAULT '[]',
	created_at			timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (item_id, slot),
	CHECK ((stage = 'logic') = (request_id IS NOT NULL)),
	CHECK ((stage = 'tms') = (ship_date IS NOT NULL))
) PARTITION BY LIST (slot);
COMMENT ON TABLE courier.work_items IS
	'The queue of every stage: one row per item not yet done, in one of three rotating slots (courier.queue_slots). Done items are deleted, failed ones move to courier.failures.';
COMMENT ON COLUMN courier.work_items.slot IS
	'The partition the item lives in: the current slot when it was queued, or the one courier.rotate_queue() moved it to.';
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

/* register_invoice / the order_closed trigger: the tms items of one order */
CREATE INDEX work_items_order ON courier.work_items (order_id) WHERE stage = 'tms';

INSERT INTO courier.work_items
	(item_id, slot, stage, seller_id, order_id, request_id, ship_date, attempts,
	 not_before, leased_by, solo, errors, created_at)
OVERRIDING SYSTEM VALUE
SELECT w.item_id, 0, w.stage, w.seller_id, w.order_id, w.request_id, w.ship_date,
	   w.attempts, w.not_before, w.leased_by, w.solo, w.errors, w.created_at
  FROM courier.work_items_0_2 w;

/* new ids go on after every id ever given, also those already in failures */
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('courier.work_items', 'item_id'),
						 greatest((SELECT max(item_id) FROM courier.work_items_0_2),
								  (SELECT max(item_id) FROM courier.failures), 0) + 1,
						 false);

DROP TABLE courier.work_items_0_2;

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
