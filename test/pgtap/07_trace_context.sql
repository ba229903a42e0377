-- Trace context (docs/dba-console.md, "Follow one request"): the app's
-- W3C traceparent (courier.traceparent), or one courier starts, is stored
-- with a delay request and goes with its notices, its events and its
-- failures; request_status shows its trace id.
BEGIN;
SELECT plan(24);

-- ---------------------------------------------------------------------------
-- The schema
-- ---------------------------------------------------------------------------
SELECT has_column('courier', 'requests', 'traceparent', 'requests have a traceparent');
SELECT has_column('courier', 'notices', 'traceparent', 'notices have a traceparent');
SELECT has_column('courier', 'events', 'traceparent', 'events have a traceparent');
SELECT has_column('courier', 'failures', 'traceparent', 'failures have a traceparent');
SELECT is(pg_get_function_arguments('courier.request_status(bigint)'::regprocedure),
	'request_id bigint, OUT total integer, OUT done integer, OUT failed integer, OUT pending integer, OUT trace_id text',
	'request_status returns the four counts, then the trace id');
SELECT ok(has_function_privilege('courier_app', 'courier.request_status(bigint)', 'EXECUTE')
		  AND has_function_privilege('courier_admin', 'courier.request_status(bigint)', 'EXECUTE')
		  AND NOT has_function_privilege('public', 'courier.request_status(bigint)', 'EXECUTE'),
	'request_status keeps its grants: courier_app and courier_admin, not PUBLIC');
SELECT has_function('courier', 'emit_events',
	ARRAY['bigint[]', 'bigint[]', 'text[]', 'jsonb[]', 'timestamp with time zone', 'text[]'],
	'emit_events takes the events'' traceparents');

-- ---------------------------------------------------------------------------
-- courier.traceparent accepts a W3C traceparent of version 00, nothing else
-- ---------------------------------------------------------------------------
SELECT throws_ok($$SET LOCAL courier.traceparent = 'not-a-trace'$$,
	'22023', 'invalid value for parameter "courier.traceparent": "not-a-trace"',
	'a value that is no traceparent is refused');
SELECT throws_ok($$SET LOCAL courier.traceparent = '00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01'$$,
	'22023', NULL, 'uppercase hex is refused');
SELECT throws_ok($$SET LOCAL courier.traceparent = '00-00000000000000000000000000000000-00f067aa0ba902b7-01'$$,
	'22023', NULL, 'an all-zero trace id is refused');
SELECT throws_ok($$SET LOCAL courier.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01'$$,
	'22023', NULL, 'an all-zero parent id is refused');
SELECT throws_ok($$SET LOCAL courier.traceparent = '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'$$,
	'22023', NULL, 'another version is refused');
SELECT lives_ok($$SET LOCAL courier.traceparent = ''$$, 'empty is accepted (courier starts a trace)');

-- ---------------------------------------------------------------------------
-- A request takes the app's trace, or starts one, and hands it on
-- ---------------------------------------------------------------------------
SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1 + g % 3, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 12) g;
SELECT courier.subscribe('traced', 'https://seller.test/hooks', courier.event_types());

SET LOCAL courier.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
CREATE TEMP TABLE traced_request AS
	SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, 6)::bigint), 'rain',
								current_date + 5) AS request_id;
SET LOCAL courier.traceparent = '';
CREATE TEMP TABLE own_request AS
	SELECT courier.delay_orders(ARRAY(SELECT generate_series(7, 12)::bigint), 'rain',
								current_date + 6) AS request_id;
CREATE TEMP TABLE own_request_2 AS
	SELECT courier.delay_orders(ARRAY[1::bigint], 'hail', current_date + 7) AS request_id;

SELECT is((SELECT traceparent FROM courier.requests WHERE request_id = (SELECT request_id FROM traced_request)),
	'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
	'the request stores the app''s traceparent as given');
SELECT is((SELECT trace_id FROM courier.request_status((SELECT request_id FROM traced_request))),
	'4bf92f3577b34da6a3ce929d0e0e4736', 'request_status shows its trace id');
SELECT matches((SELECT traceparent FROM courier.requests WHERE request_id = (SELECT request_id FROM own_request)),
	'^00-[0-9a-f]{32}-[0-9a-f]{16}-01$', 'without a setting, courier starts a trace (flags 01)');
SELECT ok((SELECT traceparent !~ '^00-0{32}-' AND traceparent !~ '-0{16}-01$'
			 FROM courier.requests WHERE request_id = (SELECT request_id FROM own_request)),
	'its ids are not all zero');
SELECT isnt((SELECT traceparent FROM courier.requests WHERE request_id = (SELECT request_id FROM own_request)),
	(SELECT traceparent FROM courier.requests WHERE request_id = (SELECT request_id FROM own_request_2)),
	'each request gets a trace of its own');

-- the logic stage: order 1 is named by two requests of this batch; the
-- newest one's delay is applied, and its notice carries that one's trace
SELECT courier.run_once('logic');
SELECT is((SELECT count(*) FROM courier.notices n JOIN courier.requests r
			 ON r.traceparent = n.traceparent
			WHERE r.request_id IN ((SELECT request_id FROM traced_request),
								   (SELECT request_id FROM own_request),
								   (SELECT request_id FROM own_request_2))
			  AND n.ship_date = r.new_ship_date),
	12::bigint, 'each notice carries the trace of the request that created it');
SELECT is((SELECT count(*) FROM courier.events e JOIN courier.notices n
			 ON n.seller_id = e.seller_id AND n.order_id = e.order_id
			AND n.ship_date = (e.payload ->> 'new_ship_date')::date
			WHERE e.type = 'order.delayed' AND e.traceparent = n.traceparent),
	12::bigint, 'each order.delayed event carries its request''s trace');

-- register_invoice: the app's trace when it set one, else none
SET LOCAL courier.traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00';
SELECT courier.register_invoice(2, 'INV-2');
SET LOCAL courier.traceparent = '';
SELECT courier.register_invoice(3, 'INV-3');
SELECT results_eq(
	$$SELECT order_id, traceparent FROM courier.events WHERE type = 'order.invoiced' ORDER BY order_id$$,
	$$VALUES (2::bigint, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'), (3::bigint, NULL)$$,
	'order.invoiced carries the app''s traceparent, or none');

-- a logic item that fails keeps its request's trace in courier.failures
CREATE FUNCTION pg_temp.reject_order_4() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id = 4 THEN
		RAISE EXCEPTION 'order 4 refused' USING ERRCODE = 'check_violation';
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER reject_order_4 BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION pg_temp.reject_order_4();
SET LOCAL courier.max_attempts = 1;
SET LOCAL courier.traceparent = '00-11111111111111111111111111111111-2222222222222222-01';
SELECT courier.delay_orders(ARRAY[4::bigint, 5::bigint], 'frost', current_date + 8);
SET LOCAL courier.traceparent = '';
SELECT courier.run_once('logic');
SELECT results_eq(
	$$SELECT stage::text, order_id, traceparent FROM courier.failures$$,
	$$VALUES ('logic', 4::bigint, '00-11111111111111111111111111111111-2222222222222222-01')$$,
	'the failure of a logic item carries its request''s trace');
DROP TRIGGER reject_order_4 ON courier.orders;

-- notice.* events carry their notice's trace
UPDATE courier.notices SET status = 'failed', attempts = 5
 WHERE order_id = 5 AND ship_date = current_date + 8;
SELECT is((SELECT traceparent FROM courier.events WHERE type = 'notice.failed' AND order_id = 5),
	'00-11111111111111111111111111111111-2222222222222222-01',
	'notice.failed carries its notice''s trace');

-- the overdue sweep: order.overdue with the caller's trace, and its delay
UPDATE courier.orders SET status = 'shipping_requested', invoice_deadline = now() - interval '1 hour'
 WHERE order_id = 6;
SET LOCAL courier.traceparent = '00-33333333333333333333333333333333-4444444444444444-01';
SELECT courier.sweep_overdue();
SELECT results_eq(
	$$SELECT (SELECT traceparent FROM courier.events WHERE type = 'order.overdue' AND order_id = 6),
			 (SELECT r.traceparent FROM courier.requests r
			   WHERE r.request_id = (SELECT max(request_id) FROM courier.requests))$$,
	$$VALUES ('00-33333333333333333333333333333333-4444444444444444-01',
			  '00-33333333333333333333333333333333-4444444444444444-01')$$,
	'sweep_overdue: order.overdue and the delay request it makes carry the caller''s trace');

SELECT * FROM finish();
ROLLBACK;
