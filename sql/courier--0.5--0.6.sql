/* courier--0.5--0.6.sql
 *
 * courier 0.6: order events for subscribers (docs/fanout.md).
 *
 * An event is written by the statement that makes the change, in its
 * transaction: a rolled-back change leaves none.  Each subscription gets
 * its own queue of the events it asked for (courier.deliveries), fanned
 * out by the same statement; a delivery leaves the queue once the
 * subscriber accepted it.
 *
 * Run by ALTER EXTENSION courier UPDATE TO '0.6' (and by CREATE EXTENSION,
 * after the earlier scripts).  New tables only: queued work, notices and
 * failures stay as they are.
 */

\echo Use "ALTER EXTENSION courier UPDATE TO '0.6'" to load this file. \quit

CREATE TABLE courier.events (
	seller_id			bigint NOT NULL,
	event_id			bigint GENERATED ALWAYS AS IDENTITY,
	order_id			bigint NOT NULL,
	type				text NOT NULL
		CHECK (type IN ('order.delayed', 'order.invoiced', 'order.overdue',
						'notice.delivered', 'notice.failed')),
	occurred_at			timestamptz NOT NULL,
	payload				jsonb NOT NULL,
	PRIMARY KEY (seller_id, event_id)
);
COMMENT ON TABLE courier.events IS
	'Order events, each written in the transaction of the change it records; event_id never changes (the idempotency key subscribers see). Kept courier.retention.';
/* retention and replay read it by time */
CREATE INDEX events_occurred ON courier.events USING brin (occurred_at);

CREATE TABLE courier.subscriptions (
	subscriber_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name				text NOT NULL UNIQUE,
	url					text NOT NULL,
	event_types			text[] NOT NULL,
	batch_size			integer NOT NULL DEFAULT 100,
	rate_limit			integer NOT NULL DEFAULT 0,
	timeout_ms			integer NOT NULL DEFAULT 10000,
	secret				text,
	paused				boolean NOT NULL DEFAULT false,
	created_at			timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE courier.subscriptions IS
	'Who gets which events, where; the secret signs every POST. Read through courier.subscribers (no secret); changed through courier.subscribe and friends.';

CREATE TABLE courier.deliveries (
	seller_id			bigint NOT NULL,
	subscriber_id		integer NOT NULL,
	event_id			bigint NOT NULL,
	order_id			bigint NOT NULL,
	not_before			timestamptz NOT NULL,
	attempts			integer NOT NULL DEFAULT 0,
	errors				jsonb NOT NULL DEFAULT '[]',
	failed_at			timestamptz,
	PRIMARY KEY (seller_id, subscriber_id, order_id, event_id)
);
COMMENT ON TABLE courier.deliveries IS
	'Each subscription''s queue: one row per matching event until the subscriber accepted it. A failed one stays (failed_at) and holds back the later events of its order for that subscriber until it is retried or discarded.';
/*
 * The primary key finds the head of each (subscriber, order): its
 * smallest event id.  The due work of a subscriber, by time:
 */
CREATE INDEX deliveries_due ON courier.deliveries (subscriber_id, not_before)
	WHERE failed_at IS NULL;

/* the subscriber workers' side of shared memory (ops.c) */
CREATE FUNCTION courier.wake_subscribers()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'courier_wake_subscribers';
REVOKE ALL ON FUNCTION courier.wake_subscribers() FROM PUBLIC;

CREATE FUNCTION courier.subscriber_workers(OUT subscriber_id integer, OUT pid integer,
										   OUT breaker text, OUT delivered bigint,
										   OUT failed bigint, OUT retried bigint,
										   OUT requests bigint, OUT breaker_opened bigint)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'courier_subscriber_workers';
COMMENT ON FUNCTION courier.subscriber_workers() IS
	'The subscriber workers running now (shared memory): pid, breaker (closed, open, probing) and counters since the worker started.';

/*
 * courier.emit_events: record events and fan them out to the subscriptions
 * that asked for their type, in the caller's transaction.  An event of a
 * type no subscription asks for is not recorded at all: an installation
 * without subscribers pays nothing for them, and a subscription replays
 * only what was recorded while some subscription asked for the type.  The one way
 * courier writes an event: the logic stage's apply statement, the app API
 * and the senders call it with the rows their change touched.  Internal:
 * granted to no one (the callers run as the extension's owner).  jit is
 * off: the workers plan their statements with sequential scans disabled,
 * whose cost on the (tiny) subscriptions table made every call compile
 * its plan (100 ms per batch of 1,000 in the logic benchmark).
 */
CREATE FUNCTION courier.emit_events(seller_ids bigint[], order_ids bigint[], types text[],
									payloads jsonb[], occurred_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
	n bigint;
BEGIN
	WITH ev AS (
		INSERT INTO courier.events (seller_id, order_id, type, occurred_at, payload)
		SELECT u.seller_id, u.order_id, u.type, emit_events.occurred_at, u.payload
		  FROM unnest(seller_ids, order_ids, types, payloads)
			   AS u(seller_id, order_id, type, payload)
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
REVOKE ALL ON FUNCTION courier.emit_events(bigint[], bigint[], text[], jsonb[], timestamptz) FROM PUBLIC;

/* ------------------------------------------------------------------------
 * notice.delivered and notice.failed
 * ------------------------------------------------------------------------ */

/*
 * A notice reaches its end in several statements: the sender's record
 * (accepted by a provider without receipts), its charge (failed), the
 * receipt stage and the provider's webhook (on the handset, or not).  One
 * statement-level trigger sees them all, in the transaction of the
 * change: it compares each updated notice before and after, and records
 * notice.delivered when a notice is delivered to the customer (accepted
 * by a provider that reports no receipt, or its receipt says delivered)
 * and notice.failed when it fails for good (its attempts exhausted, or
 * its receipt failed or expired without a fallback to come).
 *
 * The trigger exists only while some subscription asks for a notice.*
 * type (courier.sync_notice_events, called by subscribe and
 * unsubscribe): without one, the senders pay nothing, not even the
 * transition tables' copies of the rows they update.
 */
CREATE FUNCTION courier.notice_events()
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
							   pg_catalog.now())
	  FROM (SELECT n.seller_id, n.order_id,
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
REVOKE ALL ON FUNCTION courier.notice_events() FROM PUBLIC;

CREATE FUNCTION courier.sync_notice_events()
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	wanted boolean := EXISTS (SELECT 1 FROM courier.subscriptions s
							   WHERE s.event_types && ARRAY['notice.delivered', 'notice.failed']);
	present boolean := EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
								WHERE t.tgrelid = 'courier.notices'::pg_catalog.regclass
								  AND t.tgname = 'notices_events');
BEGIN
	IF wanted AND NOT present THEN
		CREATE TRIGGER notices_events AFTER UPDATE ON courier.notices
			REFERENCING OLD TABLE AS old_notices NEW TABLE AS new_notices
			FOR EACH STATEMENT EXECUTE FUNCTION courier.notice_events();
	ELSIF present AND NOT wanted THEN
		DROP TRIGGER notices_events ON courier.notices;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION courier.sync_notice_events() FROM PUBLIC;
COMMENT ON FUNCTION courier.sync_notice_events() IS
	'Create the trigger that records notice.delivered and notice.failed while a subscription asks for them, and drop it when none does (called by subscribe and unsubscribe).';

CREATE VIEW courier.subscribers AS
SELECT s.subscriber_id, s.name, s.url, s.event_types, s.batch_size, s.rate_limit,
	   s.timeout_ms, s.paused, s.secret IS NOT NULL AS has_secret, s.created_at,
	   q.backlog, q.failed, q.oldest_undelivered_age,
	   w.pid AS worker_pid, coalesce(w.breaker, 'closed') AS breaker,
	   coalesce(w.delivered, 0) AS delivered, coalesce(w.retried, 0) AS retried
  FROM courier.subscriptions s
 CROSS JOIN LATERAL (
	SELECT count(*) FILTER (WHERE d.failed_at IS NULL) AS backlog,
		   count(*) FILTER (WHERE d.failed_at IS NOT NULL) AS failed,
		   pg_catalog.now() - min(e.occurred_at) AS oldest_undelivered_age
	  FROM courier.deliveries d
	  JOIN courier.events e ON e.seller_id = d.seller_id AND e.event_id = d.event_id
	 WHERE d.subscriber_id = s.subscriber_id) q
  LEFT JOIN courier.subscriber_workers() w ON w.subscriber_id = s.subscriber_id;
COMMENT ON VIEW courier.subscribers IS
	'Each subscription, without its secret: what it gets, where, its limits, whether paused; its queue (events not yet accepted, failed ones, the age of the oldest); its worker (pid, breaker, events delivered and attempts retried since the worker started).';

/* courier.event_types(): the types a subscription may ask for */
CREATE FUNCTION courier.event_types()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY['order.delayed', 'order.invoiced', 'order.overdue',
				   'notice.delivered', 'notice.failed'] $$;

CREATE FUNCTION courier.subscribe(name text, url text, event_types text[],
								  batch_size integer DEFAULT 100, secret text DEFAULT NULL,
								  rate_limit integer DEFAULT 0,
								  timeout interval DEFAULT '10 seconds')
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	unknown text[];
	id integer;
BEGIN
	IF name IS NULL OR name !~ '^[a-z0-9][a-z0-9_-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid subscriber name %', coalesce(pg_catalog.quote_literal(name), 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A name is 1 to 63 lowercase letters, digits, "_" or "-", starting with a letter or digit.',
				  HINT = 'e.g. courier.subscribe(''seller-backoffice'', ''https://...'', ARRAY[''order.delayed'']).';
	END IF;
	IF url IS NULL OR url !~ '^https?://[^[:space:]]+$' THEN
		RAISE EXCEPTION 'invalid URL for subscriber "%"', name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The URL must start with http:// or https:// and contain no spaces.';
	END IF;
	SELECT pg_catalog.array_agg(t) INTO unknown
	  FROM pg_catalog.unnest(event_types) AS t
	 WHERE t IS NULL OR t <> ALL (courier.event_types());
	IF event_types IS NULL OR pg_catalog.cardinality(event_types) = 0 OR unknown IS NOT NULL THEN
		RAISE EXCEPTION 'invalid event types for subscriber "%"', name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('Unknown: %s. Known: %s.',
											 coalesce(pg_catalog.array_to_string(unknown, ', ', 'NULL'), 'none given'),
											 pg_catalog.array_to_string(courier.event_types(), ', '));
	END IF;
	IF batch_size IS NULL OR batch_size NOT BETWEEN 1 AND 1000 THEN
		RAISE EXCEPTION 'invalid batch size % for subscriber "%"', batch_size, name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The batch size is the most events one POST carries: 1 to 1000.';
	END IF;
	IF rate_limit IS NULL OR rate_limit < 0 THEN
		RAISE EXCEPTION 'invalid rate limit % for subscriber "%"', rate_limit, name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The rate limit is the most POSTs a second to the subscriber; 0 means none.';
	END IF;
	IF timeout IS NULL OR timeout < interval '100 ms' OR timeout > interval '5 min' THEN
		RAISE EXCEPTION 'invalid timeout % for subscriber "%"', timeout, name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A POST to the subscriber may take 100 ms to 5 minutes.';
	END IF;
	IF secret IS NOT NULL AND pg_catalog.length(secret) < 16 THEN
		RAISE EXCEPTION 'the secret of subscriber "%" is too short', name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A signing secret has at least 16 characters.';
	END IF;
	INSERT INTO courier.subscriptions AS s (name, url, event_types, batch_size, secret,
											rate_limit, timeout_ms)
	VALUES (subscribe.name, subscribe.url,
			ARRAY(SELECT DISTINCT t FROM pg_catalog.unnest(subscribe.event_types) AS t ORDER BY t),
			subscribe.batch_size, subscribe.secret, subscribe.rate_limit,
			(pg_catalog.date_part('epoch', subscribe.timeout) * 1000)::integer)
	ON CONFLICT ON CONSTRAINT subscriptions_name_key DO NOTHING
	RETURNING s.subscriber_id INTO id;
	IF id IS NULL THEN
		RAISE EXCEPTION 'subscriber "%" already exists', name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'courier.unsubscribe it first, or choose another name.';
	END IF;
	PERFORM courier.sync_notice_events();
	RETURN id;
END
$$;
COMMENT ON FUNCTION courier.subscribe(text, text, text[], integer, text, integer, interval) IS
	'Add a subscriber: from now on every event of the given types is POSTed to url, up to batch_size events a POST, signed with secret (when given), at most rate_limit POSTs a second (0: no limit), each given timeout. Returns its id.';

CREATE FUNCTION courier.subscriber_id(name text)
RETURNS integer
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer;
BEGIN
	SELECT s.subscriber_id INTO id FROM courier.subscriptions s WHERE s.name = subscriber_id.name;
	IF id IS NULL THEN
		RAISE EXCEPTION 'no subscriber "%"', name
			USING ERRCODE = 'undefined_object',
				  HINT = 'SELECT name FROM courier.subscribers lists them.';
	END IF;
	RETURN id;
END
$$;

CREATE FUNCTION courier.unsubscribe(name text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := courier.subscriber_id(name);
	n bigint;
BEGIN
	DELETE FROM courier.deliveries d WHERE d.subscriber_id = id;
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE courier.failures f SET discarded_at = pg_catalog.now()
	 WHERE f.subscriber_id = id AND f.discarded_at IS NULL;
	DELETE FROM courier.subscriptions s WHERE s.subscriber_id = id;
	PERFORM courier.sync_notice_events();
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.unsubscribe(text) IS
	'Remove a subscriber and its queue (its open failures are discarded). Returns how many undelivered events were dropped.';

CREATE FUNCTION courier.pause_subscriber(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE courier.subscriptions s SET paused = true
	 WHERE s.subscriber_id = courier.subscriber_id(pause_subscriber.name);
END
$$;
COMMENT ON FUNCTION courier.pause_subscriber(text) IS
	'Stop delivering to a subscriber; its events keep queueing. courier.resume_subscriber starts again where it stopped.';

CREATE FUNCTION courier.resume_subscriber(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE courier.subscriptions s SET paused = false
	 WHERE s.subscriber_id = courier.subscriber_id(resume_subscriber.name);
	PERFORM courier.wake_subscribers();
END
$$;
COMMENT ON FUNCTION courier.resume_subscriber(text) IS
	'Deliver to a paused subscriber again, from where it stopped.';

CREATE FUNCTION courier.replay(name text, since timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := courier.subscriber_id(name);
	n bigint;
BEGIN
	IF since IS NULL THEN
		RAISE EXCEPTION 'replay of subscriber "%" needs a start time', name
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'e.g. courier.replay(''seller-backoffice'', now() - interval ''1 day'').';
	END IF;
	INSERT INTO courier.deliveries (seller_id, subscriber_id, event_id, order_id, not_before)
	SELECT e.seller_id, id, e.event_id, e.order_id, pg_catalog.now()
	  FROM courier.events e
	  JOIN courier.subscriptions s ON s.subscriber_id = id AND e.type = ANY (s.event_types)
	 WHERE e.occurred_at >= since
	ON CONFLICT (seller_id, subscriber_id, order_id, event_id) DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM courier.wake_subscribers();
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.replay(text, timestamptz) IS
	'Deliver again to a subscriber every event of its types that occurred since the given time, with the same event ids (what is still queued is not queued twice). Returns how many were queued.';


/* ------------------------------------------------------------------------
 * Failed deliveries in the DBA console
 * ------------------------------------------------------------------------ */

/*
 * A delivery that exhausted its attempts (or that the subscriber refused)
 * stays in its queue, failed, holding back the later events of its order,
 * and is listed in courier.failures as stage 'fanout' (item_id: the event
 * id), with its subscriber.  retry_failures puts it back in its queue;
 * discard_failures drops it from the queue, which releases its order's
 * later events.  The new enum value is not used by this script itself
 * (PostgreSQL allows that only once the script committed).
 */
ALTER TYPE courier.stage ADD VALUE IF NOT EXISTS 'fanout';
ALTER TABLE courier.failures ADD COLUMN subscriber_id integer;
COMMENT ON COLUMN courier.failures.subscriber_id IS
	'fanout failures: the subscription the event was not delivered to (courier.subscribers); NULL for the other stages.';

DROP FUNCTION courier.retry_failures(bigint[], courier.stage, text, timestamptz, timestamptz);
DROP FUNCTION courier.discard_failures(bigint[], courier.stage, text, timestamptz, timestamptz);
DROP FUNCTION courier.failures_matching(bigint[], courier.stage, text, timestamptz, timestamptz);

CREATE FUNCTION courier.failures_matching(failure_ids bigint[], stage courier.stage,
										  error_pattern text, failed_after timestamptz,
										  failed_before timestamptz, subscriber text)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	sid integer;
BEGIN
	IF $6 IS NOT NULL THEN
		sid := courier.subscriber_id($6);
	END IF;
	RETURN QUERY
	SELECT f.failure_id FROM courier.failures f
	 WHERE f.discarded_at IS NULL
	   AND ($1 IS NULL OR f.failure_id = ANY ($1))
	   AND ($2 IS NULL OR f.stage = $2)
	   AND ($3 IS NULL OR f.last_error ILIKE $3)
	   AND ($4 IS NULL OR f.failed_at >= $4)
	   AND ($5 IS NULL OR f.failed_at < $5)
	   AND (sid IS NULL OR f.subscriber_id = sid);
END
$$;
COMMENT ON FUNCTION courier.failures_matching(bigint[], courier.stage, text, timestamptz, timestamptz, text) IS
	'The open failures a DBA filter names (NULL: any): ids, stage, error pattern (ILIKE), time range, subscriber. Shared by retry_failures and discard_failures.';

CREATE FUNCTION courier.retry_failures(failure_ids bigint[] DEFAULT NULL,
									   stage courier.stage DEFAULT NULL,
									   error_pattern text DEFAULT NULL,
									   failed_after timestamptz DEFAULT NULL,
									   failed_before timestamptz DEFAULT NULL,
									   subscriber text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	IF $6 IS NOT NULL THEN
		PERFORM courier.subscriber_id($6);	/* an unknown name is an error */
	END IF;
	WITH moved AS (
		DELETE FROM courier.failures f
		 WHERE f.failure_id IN (SELECT courier.failures_matching($1, $2, $3, $4, $5, $6))
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
	), redelivered AS (
		UPDATE courier.deliveries d
		   SET failed_at = NULL, attempts = 0, not_before = pg_catalog.now()
		  FROM moved m
		 WHERE m.stage::text = 'fanout' AND d.seller_id = m.seller_id
		   AND d.subscriber_id = m.subscriber_id AND d.order_id = m.order_id
		   AND d.event_id = m.item_id
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM queued) + (SELECT count(*) FROM reopened)
		   + (SELECT count(*) FROM redelivered) INTO n;
	IF n > 0 THEN
		PERFORM courier.wake_subscribers();
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.retry_failures(bigint[], courier.stage, text, timestamptz, timestamptz, text) IS
	'Put failures back in their queue with fresh attempts (history kept), filtered by ids, stage, error pattern (ILIKE), time range and subscriber; no arguments: all. Returns how many.';

CREATE FUNCTION courier.discard_failures(failure_ids bigint[] DEFAULT NULL,
										 stage courier.stage DEFAULT NULL,
										 error_pattern text DEFAULT NULL,
										 failed_after timestamptz DEFAULT NULL,
										 failed_before timestamptz DEFAULT NULL,
										 subscriber text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	IF $6 IS NOT NULL THEN
		PERFORM courier.subscriber_id($6);	/* an unknown name is an error */
	END IF;
	WITH discarded AS (
		UPDATE courier.failures f
		   SET discarded_at = pg_catalog.now()
		 WHERE f.failure_id IN (SELECT courier.failures_matching($1, $2, $3, $4, $5, $6))
		RETURNING f.*
	), dropped AS (
		/* a failed event leaves its subscriber's queue: its order moves on */
		DELETE FROM courier.deliveries d
		 USING discarded x
		 WHERE x.stage::text = 'fanout' AND d.seller_id = x.seller_id
		   AND d.subscriber_id = x.subscriber_id AND d.order_id = x.order_id
		   AND d.event_id = x.item_id
		RETURNING 1
	)
	SELECT count(*) INTO n FROM discarded;
	PERFORM courier.wake_subscribers();
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.discard_failures(bigint[], courier.stage, text, timestamptz, timestamptz, text) IS
	'Mark failures as discarded (kept for the record, never retried; a failed event leaves its subscriber''s queue), filtered like retry_failures. Returns how many.';

REVOKE ALL ON FUNCTION courier.failures_matching(bigint[], courier.stage, text, timestamptz, timestamptz, text),
	courier.retry_failures(bigint[], courier.stage, text, timestamptz, timestamptz, text),
	courier.discard_failures(bigint[], courier.stage, text, timestamptz, timestamptz, text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	courier.retry_failures(bigint[], courier.stage, text, timestamptz, timestamptz, text),
	courier.discard_failures(bigint[], courier.stage, text, timestamptz, timestamptz, text)
	TO courier_admin;

/* ------------------------------------------------------------------------
 * The fan-out in queue_stats and metrics
 * ------------------------------------------------------------------------ */

/*
 * queue_stats gains the fanout row: every subscription's queue together
 * (events not yet accepted, failed ones aside), its oldest event's age,
 * and its open failures; no done_last_hour (an accepted event leaves no
 * row: courier.subscribers counts them).  The stages are compared as
 * text: the new enum value may not be named in this script.
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
	SELECT 'fanout', count(*),
		   count(*) FILTER (WHERE d.not_before <= now()),
		   0,
		   now() - min(e.occurred_at)
	  FROM courier.deliveries d
	  JOIN courier.events e ON e.seller_id = d.seller_id AND e.event_id = d.event_id
	 WHERE d.failed_at IS NULL
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
COMMENT ON VIEW courier.queue_stats IS
	'Per stage: items queued (logic: work items; tms: pending notices; fanout: events not yet accepted by their subscribers), due now, in flight (leased), age of the oldest, done (logic, tms) and failed in the last hour, open failures; for the tms stage also the notices kept by their delivery receipt: accepted and awaiting it, delivered to the handset, failed, expired.';

/*
 * metrics(): the subscribers, one series each (courier.subscribers).
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
		('courier_table_dead_tuples', 'gauge', 'Dead tuples of courier tables (queue bloat).', 9),
		('courier_notices_receipts', 'gauge', 'Notices kept (courier.retention) that went through a provider with delivery receipts, by receipt: awaiting (accepted), delivered (on the handset), failed, expired (no receipt within courier.receipt_horizon).', 10),
		('courier_subscriber_backlog', 'gauge', 'Events queued per subscriber, not yet accepted (failed ones aside).', 11),
		('courier_subscriber_oldest_age_seconds', 'gauge', 'Age of the oldest event a subscriber has not accepted yet.', 12),
		('courier_subscriber_failed', 'gauge', 'Events per subscriber that failed for good and wait for the DBA (courier.failures, stage fanout).', 13),
		('courier_subscriber_events_total', 'counter', 'Events per subscriber delivered (accepted) and attempts retried, since its worker started.', 14),
		('courier_subscriber_breaker_open', 'gauge', '1 while the circuit breaker of a subscriber is open or probing.', 15)
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
		UNION ALL
		SELECT g.name, format('subscriber="%s"', s.name), g.value
		  FROM courier.subscribers s,
			   LATERAL (VALUES ('courier_subscriber_backlog', s.backlog::numeric),
							   ('courier_subscriber_oldest_age_seconds',
								coalesce(round(extract(epoch FROM s.oldest_undelivered_age), 3), 0)),
							   ('courier_subscriber_failed', s.failed),
							   ('courier_subscriber_breaker_open',
								(s.breaker <> 'closed')::int)) AS g(name, value)
		UNION ALL
		SELECT 'courier_subscriber_events_total',
			   format('subscriber="%s",result="%s"', s.name, r.result), r.value
		  FROM courier.subscribers s,
			   LATERAL (VALUES ('delivered', s.delivered::numeric),
							   ('retried', s.retried)) AS r(result, value)
	)
	SELECT string_agg(format(E'# HELP %s %s\n# TYPE %s %s', f.name, f.help, f.name, f.type)
					  || coalesce((SELECT string_agg(format(E'\n%s{%s} %s', s.name, s.labels, s.value),
													 '' ORDER BY s.labels)
									 FROM sample s WHERE s.name = f.name), ''),
					  E'\n' ORDER BY f.ord) || E'\n'
	  FROM family f
$$;

/*
 * prune_chunk: events older than the cutoff that no subscriber still
 * waits for go too (retention of events follows courier.retention).
 */
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

	/* events no subscriber still waits for */
	DELETE FROM courier.events e
	 WHERE (e.seller_id, e.event_id) IN (
		SELECT x.seller_id, x.event_id FROM courier.events x
		 WHERE x.occurred_at < cutoff
		   AND NOT EXISTS (SELECT 1 FROM courier.deliveries d
							WHERE d.seller_id = x.seller_id AND d.event_id = x.event_id)
		 LIMIT chunk);
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

/*
 * sweep_overdue: order.overdue for each order it marks, written with the
 * mark.
 */
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
		RETURNING o.seller_id, o.order_id, o.invoice_deadline
	), overdue AS (
		/* order.overdue, in the transaction that marks the order */
		SELECT courier.emit_events(pg_catalog.array_agg(m.seller_id),
				   pg_catalog.array_agg(m.order_id),
				   pg_catalog.array_agg('order.overdue'::text),
				   pg_catalog.array_agg(pg_catalog.jsonb_build_object(
					   'invoice_deadline', m.invoice_deadline)),
				   pg_catalog.now()) AS n
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

REVOKE ALL ON courier.events, courier.subscriptions, courier.deliveries,
	courier.subscribers FROM PUBLIC;
GRANT SELECT ON courier.events, courier.deliveries, courier.subscribers TO courier_admin;
REVOKE ALL ON FUNCTION courier.subscriber_workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.subscriber_workers() TO courier_admin;
REVOKE ALL ON FUNCTION courier.event_types() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.event_types() TO courier_admin;
REVOKE ALL ON FUNCTION courier.subscribe(text, text, text[], integer, text, integer, interval),
	courier.subscriber_id(text), courier.unsubscribe(text),
	courier.pause_subscriber(text), courier.resume_subscriber(text),
	courier.replay(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.subscribe(text, text, text[], integer, text, integer, interval),
	courier.subscriber_id(text), courier.unsubscribe(text),
	courier.pause_subscriber(text), courier.resume_subscriber(text),
	courier.replay(text, timestamptz) TO courier_admin;
