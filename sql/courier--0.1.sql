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

/* ------------------------------------------------------------------------
 * Indexes, each with the query it serves
 * ------------------------------------------------------------------------ */

/* claim: WHERE stage = $1 AND not_before <= now() ORDER BY not_before, item_id LIMIT n FOR UPDATE SKIP LOCKED */
CREATE INDEX work_items_due ON courier.work_items (stage, not_before, item_id);

/* register_invoice / sweep: the tms items of one order */
CREATE INDEX work_items_order ON courier.work_items (order_id) WHERE stage = 'tms';

/* request_status: done count of a request (the primary key serves it) */

/* request_status: failed count of a request */
CREATE INDEX failures_request ON courier.failures (request_id) WHERE request_id IS NOT NULL;

/* DBA console: failures by stage and time */
CREATE INDEX failures_stage_time ON courier.failures (stage, failed_at);

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

/* ------------------------------------------------------------------------
 * DBA console
 * ------------------------------------------------------------------------ */

CREATE FUNCTION courier.retry_failures(failure_ids bigint[] DEFAULT NULL,
									   stage courier.stage DEFAULT NULL)
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
	WITH moved AS (
		DELETE FROM courier.failures f
		 WHERE f.discarded_at IS NULL
		   AND ($1 IS NULL OR f.failure_id = ANY ($1))
		   AND ($2 IS NULL OR f.stage = $2)
		RETURNING f.*
	), queued AS (
		INSERT INTO courier.work_items
			(stage, seller_id, order_id, request_id, ship_date, errors, created_at)
		SELECT m.stage, m.seller_id, m.order_id, m.request_id, m.ship_date,
			   m.errors, m.first_queued_at
		  FROM moved m
		RETURNING 1
	)
	SELECT count(*)::integer FROM queued
$$;
COMMENT ON FUNCTION courier.retry_failures(bigint[], courier.stage) IS
	'Put failures back in their queue with fresh attempts (history kept): the ones named, or of a stage, or all (no arguments). Returns how many.';

CREATE FUNCTION courier.discard_failures(failure_ids bigint[] DEFAULT NULL,
										 stage courier.stage DEFAULT NULL)
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
	WITH dropped AS (
		UPDATE courier.failures f
		   SET discarded_at = now()
		 WHERE f.discarded_at IS NULL
		   AND ($1 IS NULL OR f.failure_id = ANY ($1))
		   AND ($2 IS NULL OR f.stage = $2)
		RETURNING 1
	)
	SELECT count(*)::integer FROM dropped
$$;
COMMENT ON FUNCTION courier.discard_failures(bigint[], courier.stage) IS
	'Mark failures as discarded (kept for the record, never retried): the ones named, or of a stage, or all. Returns how many.';
