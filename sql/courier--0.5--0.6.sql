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
	leased_by			integer,
	errors				jsonb NOT NULL DEFAULT '[]',
	failed_at			timestamptz,
	PRIMARY KEY (seller_id, subscriber_id, event_id)
);
COMMENT ON TABLE courier.deliveries IS
	'Each subscription''s queue: one row per matching event until the subscriber accepted it. A failed one stays (failed_at) and holds back the later events of its order for that subscriber until it is retried or discarded.';
/* the head of each (subscriber, order), and a subscriber's due work */
CREATE INDEX deliveries_order ON courier.deliveries (subscriber_id, order_id, event_id);
CREATE INDEX deliveries_due ON courier.deliveries (subscriber_id, not_before)
	WHERE failed_at IS NULL;

/*
 * courier.emit_events: record events and fan them out to the subscriptions
 * that asked for their type, in the caller's transaction.  The one way
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
		RETURNING seller_id, event_id, order_id, type
	), fanned AS (
		INSERT INTO courier.deliveries (seller_id, subscriber_id, event_id, order_id, not_before)
		SELECT ev.seller_id, s.subscriber_id, ev.event_id, ev.order_id, emit_events.occurred_at
		  FROM ev JOIN courier.subscriptions s ON ev.type = ANY (s.event_types)
		RETURNING 1
	)
	SELECT count(*) INTO n FROM ev;
	RETURN n;
END
$$;
REVOKE ALL ON FUNCTION courier.emit_events(bigint[], bigint[], text[], jsonb[], timestamptz) FROM PUBLIC;

CREATE VIEW courier.subscribers AS
SELECT s.name, s.url, s.event_types, s.batch_size, s.paused,
	   s.secret IS NOT NULL AS has_secret, s.created_at,
	   (SELECT count(*) FROM courier.deliveries d
		 WHERE d.subscriber_id = s.subscriber_id AND d.failed_at IS NULL) AS backlog,
	   (SELECT count(*) FROM courier.deliveries d
		 WHERE d.subscriber_id = s.subscriber_id AND d.failed_at IS NOT NULL) AS failed,
	   (SELECT now() - min(e.occurred_at)
		  FROM courier.deliveries d
		  JOIN courier.events e ON e.seller_id = d.seller_id AND e.event_id = d.event_id
		 WHERE d.subscriber_id = s.subscriber_id) AS oldest_undelivered_age
  FROM courier.subscriptions s;
COMMENT ON VIEW courier.subscribers IS
	'Each subscription, without its secret: what it gets, where, whether paused, and its queue: events not yet accepted, failed ones, the age of the oldest.';

/* courier.event_types(): the types a subscription may ask for */
CREATE FUNCTION courier.event_types()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY['order.delayed', 'order.invoiced', 'order.overdue',
				   'notice.delivered', 'notice.failed'] $$;

CREATE FUNCTION courier.subscribe(name text, url text, event_types text[],
								  batch_size integer DEFAULT 100, secret text DEFAULT NULL)
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
	IF secret IS NOT NULL AND pg_catalog.length(secret) < 16 THEN
		RAISE EXCEPTION 'the secret of subscriber "%" is too short', name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A signing secret has at least 16 characters.';
	END IF;
	INSERT INTO courier.subscriptions AS s (name, url, event_types, batch_size, secret)
	VALUES (subscribe.name, subscribe.url,
			ARRAY(SELECT DISTINCT t FROM pg_catalog.unnest(subscribe.event_types) AS t ORDER BY t),
			subscribe.batch_size, subscribe.secret)
	ON CONFLICT ON CONSTRAINT subscriptions_name_key DO NOTHING
	RETURNING s.subscriber_id INTO id;
	IF id IS NULL THEN
		RAISE EXCEPTION 'subscriber "%" already exists', name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'courier.unsubscribe it first, or choose another name.';
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION courier.subscribe(text, text, text[], integer, text) IS
	'Add a subscriber: from now on every event of the given types is POSTed to url, batched, signed with secret (when given). Returns its id.';

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
	DELETE FROM courier.subscriptions s WHERE s.subscriber_id = id;
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.unsubscribe(text) IS
	'Remove a subscriber and its queue. Returns how many undelivered events were dropped.';

CREATE FUNCTION courier.pause_subscriber(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE courier.subscriptions SET paused = true
	 WHERE subscriber_id = courier.subscriber_id(name);
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
	UPDATE courier.subscriptions SET paused = false
	 WHERE subscriber_id = courier.subscriber_id(name);
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
	ON CONFLICT (seller_id, subscriber_id, event_id) DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION courier.replay(text, timestamptz) IS
	'Deliver again to a subscriber every event of its types that occurred since the given time, with the same event ids (what is still queued is not queued twice). Returns how many were queued.';

REVOKE ALL ON courier.events, courier.subscriptions, courier.deliveries,
	courier.subscribers FROM PUBLIC;
GRANT SELECT ON courier.events, courier.deliveries, courier.subscribers TO courier_admin;
REVOKE ALL ON FUNCTION courier.event_types() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.event_types() TO courier_admin;
REVOKE ALL ON FUNCTION courier.subscribe(text, text, text[], integer, text),
	courier.subscriber_id(text), courier.unsubscribe(text),
	courier.pause_subscriber(text), courier.resume_subscriber(text),
	courier.replay(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.subscribe(text, text, text[], integer, text),
	courier.subscriber_id(text), courier.unsubscribe(text),
	courier.pause_subscriber(text), courier.resume_subscriber(text),
	courier.replay(text, timestamptz) TO courier_admin;
