-- Roles and privileges: nothing for PUBLIC, the app API for courier_app, the
-- DBA console for courier_admin, and nothing at all for any other role.
--
-- Three login roles made for this test (rolled back with everything else):
--   courier_tap_app     member of courier_app
--   courier_tap_admin   member of courier_admin
--   courier_tap_nobody  member of neither
--   courier_tap_monitor member of courier_monitor (postgres_exporter's login)
-- Each section runs as one of them (SET ROLE) and checks what it may do and
-- that the rest is refused with SQLSTATE 42501 (insufficient_privilege).
-- Also: every SECURITY DEFINER function pins its search_path, no ACL in the
-- schema grants anything to PUBLIC, and the TMS secrets stay unreadable.
BEGIN;
SELECT plan(132);

CREATE ROLE courier_tap_app LOGIN;
CREATE ROLE courier_tap_admin LOGIN;
CREATE ROLE courier_tap_nobody LOGIN;
CREATE ROLE courier_tap_monitor LOGIN;
GRANT courier_app TO courier_tap_app;
GRANT courier_admin TO courier_tap_admin;
GRANT courier_monitor TO courier_tap_monitor;

-- Where the app's request id is kept between the roles' steps.
CREATE TEMP TABLE tap_request (request_id bigint);
GRANT SELECT, INSERT ON tap_request TO courier_tap_app, courier_tap_admin;

-- ---------------------------------------------------------------------------
-- The exact surface of each role (catalog view of the grants)
-- ---------------------------------------------------------------------------

SELECT set_eq(
	$$SELECT proname::text FROM pg_proc
	   WHERE pronamespace = 'courier'::regnamespace
	     AND has_function_privilege('courier_app', oid, 'EXECUTE')$$,
	ARRAY['register_orders', 'request_shipping', 'register_invoice', 'delay_orders',
		  'request_status', 'switch_enabled', 'record_receipts'],
	'courier_app may execute exactly the app API');
SELECT set_eq(
	$$SELECT proname::text FROM pg_proc
	   WHERE pronamespace = 'courier'::regnamespace
	     AND has_function_privilege('courier_admin', oid, 'EXECUTE')$$,
	ARRAY['request_status', 'switch_enabled', 'record_receipts', 'run_once', 'retry_failures',
		  'discard_failures', 'sweep_overdue', 'failure_digest', 'metrics',
		  'backoff_delay', 'prune_chunk', 'prune', 'rotate_queue',
		  'subscribe', 'unsubscribe', 'pause_subscriber', 'resume_subscriber', 'replay',
		  'subscriber_id', 'event_types', 'subscriber_workers', 'metric_samples', 'tms_state', 'subscriber_latency'],
	'courier_admin may execute exactly the DBA console (and the read-only request_status, switch_enabled)');
SELECT is_empty(
	$$SELECT c.oid::regclass::text FROM pg_class c
	   WHERE c.relnamespace = 'courier'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
	     AND has_table_privilege('courier_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')$$,
	'courier_app holds no privilege on any courier table or view');
SELECT is_empty(
	$$SELECT c.oid::regclass::text FROM pg_class c
	   WHERE c.relnamespace = 'courier'::regnamespace AND c.relkind IN ('r', 'p')
	     AND has_table_privilege('courier_admin', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')$$,
	'courier_admin cannot write any courier table');
SELECT is_empty(
	$$SELECT c.oid::regclass::text FROM pg_class c
	   WHERE c.relnamespace = 'courier'::regnamespace AND c.relkind = 'S'
	     AND (has_sequence_privilege('courier_app', c.oid, 'USAGE, SELECT, UPDATE')
	       OR has_sequence_privilege('courier_admin', c.oid, 'USAGE, SELECT, UPDATE'))$$,
	'neither role holds a privilege on courier''s sequences');
SELECT set_eq(
	$$SELECT proname::text FROM pg_proc
	   WHERE pronamespace = 'courier'::regnamespace
	     AND has_function_privilege('courier_monitor', oid, 'EXECUTE')$$,
	ARRAY['metric_samples', 'metrics'],
	'courier_monitor may execute exactly the metrics');
SELECT is_empty(
	$$SELECT c.oid::regclass::text FROM pg_class c
	   WHERE c.relnamespace = 'courier'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
	     AND has_table_privilege('courier_monitor', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')$$,
	'courier_monitor holds no privilege on any courier table or view');

-- courier_monitor: the metrics, and nothing else
SET ROLE courier_tap_monitor;
SELECT ok((SELECT count(*) FROM courier.metric_samples('{courier_queue_backlog}')) = 3,
	'courier_monitor reads a family of courier.metric_samples() (one row per stage)');
SELECT ok(courier.metrics() LIKE '%# TYPE courier_tms_request_duration_seconds histogram%',
	'courier_monitor reads courier.metrics()');
SELECT throws_ok('SELECT count(*) FROM courier.notices', '42501', NULL,
	'courier_monitor cannot read the notices (phone numbers)');
SELECT throws_ok('SELECT courier.failure_digest()', '42501', NULL,
	'courier_monitor cannot run the failure digest');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- courier_app: the app API works ...
-- ---------------------------------------------------------------------------
SET ROLE courier_tap_app;

SELECT is(courier.register_orders(jsonb_agg(jsonb_build_object(
			'order_id', g, 'seller_id', 7,
			'customer_phone', '0101234' || lpad(g::text, 4, '0'),
			'product_name', 'super-sweet corn',
			'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD')))),
		  3, 'courier_app registers orders with courier.register_orders')
  FROM generate_series(1, 3) g;
SELECT is(courier.request_shipping(ARRAY[1, 2, 3]::bigint[]), 3,
		  'courier_app requests shipping with courier.request_shipping');
SELECT lives_ok(
	$$INSERT INTO tap_request
	  SELECT courier.delay_orders(ARRAY[1, 2, 3]::bigint[], 'rain', current_date + 5)$$,
	'courier_app delays orders with courier.delay_orders');
SELECT results_eq(
	$$SELECT total, done, failed, pending
	    FROM courier.request_status((SELECT request_id FROM tap_request))$$,
	$$VALUES (3, 0, 0, 3)$$,
	'courier_app reads its request''s progress with courier.request_status');
SELECT is(courier.switch_enabled('overdue_sweep', 1), true,
		  'courier_app evaluates a rollout switch (overdue_sweep, 100% by default)');

-- ... and everything else is refused.
SELECT throws_ok(format('SELECT * FROM courier.%I', t), '42501',
				 format('permission denied for table %s', t),
				 format('courier_app cannot read table courier.%s', t))
  FROM unnest(ARRAY['orders', 'requests', 'work_items', 'delay_history', 'notices',
					'failures', 'alerts', 'digest_state']) t;
SELECT throws_ok(format('SELECT * FROM courier.%I', v), '42501',
				 format('permission denied for view %s', v),
				 format('courier_app cannot read view courier.%s', v))
  FROM unnest(ARRAY['failure_attempts', 'queue_stats']) v;
SELECT throws_ok($$UPDATE courier.orders SET status = 'cancelled' WHERE order_id = 1$$,
				 '42501', 'permission denied for table orders',
				 'courier_app cannot UPDATE courier.orders directly');
SELECT throws_ok($$DELETE FROM courier.work_items$$,
				 '42501', 'permission denied for table work_items',
				 'courier_app cannot DELETE from the queue directly');
SELECT throws_ok(call, '42501', format('permission denied for %s', what),
				 format('courier_app cannot call the console: %s', call))
  FROM (VALUES
	($$SELECT courier.run_once('logic')$$, 'function run_once'),
	($$SELECT courier.retry_failures()$$, 'function retry_failures'),
	($$SELECT courier.discard_failures()$$, 'function discard_failures'),
	($$SELECT courier.metrics()$$, 'function metrics'),
	($$SELECT courier.sweep_overdue()$$, 'function sweep_overdue'),
	($$SELECT courier.failure_digest()$$, 'function failure_digest'),
	($$SELECT courier.backoff_delay(1)$$, 'function backoff_delay'),
	($$SELECT courier.prune_chunk(now(), 10)$$, 'function prune_chunk'),
	($$CALL courier.prune()$$, 'procedure prune'),
	($$SELECT courier.schedule_defaults()$$, 'function schedule_defaults'),
	($$SELECT courier.shared_counters()$$, 'function shared_counters')) AS c(call, what);

RESET ROLE;

SELECT is((SELECT requested_by::text FROM courier.requests
			WHERE request_id = (SELECT request_id FROM tap_request)),
		  'courier_tap_app',
		  'delay_orders records the calling role, not the function owner, in requests.requested_by');

-- ---------------------------------------------------------------------------
-- courier_admin: the console works and the tables and views can be read ...
-- ---------------------------------------------------------------------------
SET ROLE courier_tap_admin;

SELECT is(courier.run_once('logic'), 3,
		  'courier_admin runs one batch of the logic stage: the app''s 3 delays');
SELECT is((SELECT count(*) FROM courier.delay_history
			WHERE request_id = (SELECT request_id FROM tap_request)), 3::bigint,
		  'courier_admin reads courier.delay_history: 3 rows for the request');
SELECT is((SELECT count(*) FROM courier.notices WHERE ship_date = current_date + 5), 3::bigint,
		  'courier_admin reads courier.notices: 3 notices for the new date');
SELECT lives_ok(format('SELECT * FROM courier.%I', t),
				format('courier_admin can read courier.%s', t))
  FROM unnest(ARRAY['orders', 'requests', 'work_items', 'delay_history', 'notices',
					'failures', 'alerts', 'failure_attempts', 'queue_stats']) t;
SELECT is((SELECT backlog FROM courier.queue_stats WHERE stage = 'logic'), 0::bigint,
		  'courier_admin reads courier.queue_stats: the logic backlog is drained');
SELECT is(courier.retry_failures(), 0, 'courier_admin calls retry_failures (nothing to retry)');
SELECT is(courier.discard_failures(), 0, 'courier_admin calls discard_failures (nothing to discard)');
SELECT is(courier.sweep_overdue(), 0, 'courier_admin calls sweep_overdue (no deadline has passed)');
SELECT is(courier.failure_digest(), 0, 'courier_admin calls failure_digest (no new failure)');
SELECT matches(courier.metrics(), 'courier_queue_backlog\{stage="logic"\} 0',
			   'courier_admin reads courier.metrics()');
SELECT ok(courier.backoff_delay(1) > interval '0', 'courier_admin calls backoff_delay');
SELECT is(courier.prune_chunk(now() - interval '1 day', 10), 0::bigint,
		  'courier_admin calls prune_chunk (nothing older than a day)');
SELECT lives_ok('CALL courier.prune()', 'courier_admin calls the procedure courier.prune()');

-- ... but not the app API, and never writes the tables directly.
SELECT throws_ok(call, '42501', format('permission denied for function %s', fn),
				 format('courier_admin cannot call the app API: %s', fn))
  FROM (VALUES
	($$SELECT courier.delay_orders(ARRAY[1]::bigint[], 'rain', current_date + 9)$$, 'delay_orders'),
	($$SELECT courier.register_orders('[]'::jsonb)$$, 'register_orders'),
	($$SELECT courier.request_shipping(ARRAY[1]::bigint[])$$, 'request_shipping'),
	($$SELECT courier.register_invoice(1, 'INV-1')$$, 'register_invoice')) AS c(call, fn);
SELECT throws_ok(stmt, '42501', format('permission denied for table %s', t),
				 format('courier_admin cannot %s courier.%s', verb, t))
  FROM (VALUES ('orders', 'status'), ('requests', 'reason'), ('work_items', 'attempts'),
			   ('delay_history', 'outcome'), ('notices', 'status'), ('failures', 'attempts'),
			   ('alerts', 'kind'), ('digest_state', 'last_run_at')) AS tc(t, col),
	   LATERAL (VALUES
		('INSERT', format('INSERT INTO courier.%I DEFAULT VALUES', t)),
		('UPDATE', format('UPDATE courier.%I SET %I = %I', t, col, col)),
		('DELETE', format('DELETE FROM courier.%I', t))) AS s(verb, stmt);

RESET ROLE;

-- The app sees the console's work and closes an order with its invoice.
SET ROLE courier_tap_app;

SELECT results_eq(
	$$SELECT total, done, failed, pending
	    FROM courier.request_status((SELECT request_id FROM tap_request))$$,
	$$VALUES (3, 3, 0, 0)$$,
	'courier_app sees its request done once the logic stage ran');
SELECT is(courier.register_invoice(1, 'INV-0001'), 'dropped',
		  'courier_app registers an invoice with courier.register_invoice (the pending notice is dropped)');

RESET ROLE;

-- ---------------------------------------------------------------------------
-- A role with neither: refused everything, starting with the schema
-- ---------------------------------------------------------------------------
SELECT ok(NOT has_schema_privilege('courier_tap_nobody', 'courier', 'USAGE'),
		  'a role with neither courier role has no USAGE on schema courier');
SELECT is((SELECT count(*) FROM pg_proc
			WHERE pronamespace = 'courier'::regnamespace
			  AND has_function_privilege('courier_tap_nobody', oid, 'EXECUTE')), 0::bigint,
		  'a role with neither courier role may execute no courier function');

SET ROLE courier_tap_nobody;

SELECT throws_ok(format('SELECT * FROM courier.%I', t), '42501',
				 'permission denied for schema courier',
				 format('a role with neither courier role cannot read courier.%s', t))
  FROM unnest(ARRAY['orders', 'requests', 'work_items', 'delay_history', 'notices',
					'failures', 'alerts', 'digest_state', 'failure_attempts', 'queue_stats']) t;
SELECT throws_ok(call, '42501', 'permission denied for schema courier',
				 format('a role with neither courier role cannot call %s', call))
  FROM unnest(ARRAY[
	$$SELECT courier.register_orders('[]'::jsonb)$$,
	$$SELECT courier.request_shipping(ARRAY[1]::bigint[])$$,
	$$SELECT courier.register_invoice(1, 'INV-1')$$,
	$$SELECT courier.delay_orders(ARRAY[1]::bigint[], 'rain', current_date + 9)$$,
	$$SELECT courier.request_status(1)$$,
	$$SELECT courier.switch_enabled('notice_v2', 1)$$,
	$$SELECT courier.run_once('logic')$$,
	$$SELECT courier.retry_failures()$$,
	$$SELECT courier.discard_failures()$$,
	$$SELECT courier.sweep_overdue()$$,
	$$SELECT courier.failure_digest()$$,
	$$SELECT courier.metrics()$$,
	$$SELECT courier.backoff_delay(1)$$,
	$$SELECT courier.prune_chunk(now(), 10)$$,
	$$CALL courier.prune()$$,
	$$SELECT courier.schedule_defaults()$$,
	$$SELECT courier.shared_counters()$$]) AS call;
SELECT throws_ok($$UPDATE courier.orders SET status = 'cancelled'$$, '42501',
				 'permission denied for schema courier',
				 'a role with neither courier role cannot UPDATE courier.orders');

RESET ROLE;

-- ---------------------------------------------------------------------------
-- SECURITY DEFINER functions pin their search_path
-- ---------------------------------------------------------------------------
SELECT set_has(
	$$SELECT proname::text FROM pg_proc
	   WHERE pronamespace = 'courier'::regnamespace AND prosecdef$$,
	$$SELECT unnest(ARRAY['register_orders', 'request_shipping', 'register_invoice',
		'delay_orders', 'request_status', 'run_once', 'retry_failures', 'discard_failures',
		'sweep_overdue', 'failure_digest', 'metrics', 'prune_chunk'])$$,
	'the API and console functions that touch the tables run as the owner (SECURITY DEFINER)');
SELECT is_empty(
	$$SELECT p.oid::regprocedure::text FROM pg_proc p
	   WHERE p.pronamespace = 'courier'::regnamespace AND p.prosecdef
	     AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)$$,
	'every SECURITY DEFINER function in courier has search_path=pg_catalog, pg_temp in proconfig');

-- ---------------------------------------------------------------------------
-- Nothing for PUBLIC (a NULL ACL means the object type's default ACL)
-- ---------------------------------------------------------------------------
SELECT is_empty(
	$$SELECT n.nspname::text, a.privilege_type
	    FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
	   WHERE n.nspname = 'courier' AND a.grantee = 0$$,
	'schema courier grants nothing to PUBLIC');
SELECT is_empty(
	$$SELECT c.oid::regclass::text, a.privilege_type
	    FROM pg_class c,
	         aclexplode(coalesce(c.relacl,
	             acldefault(CASE c.relkind WHEN 'S' THEN 's'::"char" ELSE 'r'::"char" END,
	                        c.relowner))) a
	   WHERE c.relnamespace = 'courier'::regnamespace AND a.grantee = 0$$,
	'no table, view or sequence in courier grants anything to PUBLIC');
SELECT is_empty(
	$$SELECT p.oid::regprocedure::text, a.privilege_type
	    FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
	   WHERE p.pronamespace = 'courier'::regnamespace AND a.grantee = 0$$,
	'no function or procedure in courier is executable by PUBLIC');

-- ---------------------------------------------------------------------------
-- The TMS secrets: unreadable for a role that is not superuser, even the DBA role
-- ---------------------------------------------------------------------------
SET ROLE courier_tap_admin;

SELECT throws_ok(format('SELECT current_setting(%L)', s), '42501', NULL,
				 format('courier_admin gets an error from current_setting(''%s'')', s))
  FROM unnest(ARRAY['courier.tms_auth_header', 'courier.tms_hmac_access_key',
					'courier.tms_hmac_secret']) s;
SELECT throws_ok('SHOW courier.tms_auth_header', '42501', NULL,
				 'courier_admin gets an error from SHOW courier.tms_auth_header');
SELECT is((SELECT count(*) FROM pg_settings
			WHERE name IN ('courier.tms_auth_header', 'courier.tms_hmac_access_key',
						   'courier.tms_hmac_secret')), 0::bigint,
		  'courier_admin sees no pg_settings row for the secrets');
SELECT cmp_ok((SELECT count(*) FROM pg_settings WHERE name LIKE 'courier.%'), '>', 0::bigint,
			  'courier_admin does see the other courier settings in pg_settings');

RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
