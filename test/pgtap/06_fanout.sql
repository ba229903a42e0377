-- Fan-out (docs/fanout.md): subscribers, and order events written in the
-- transaction of the change that causes them, fanned out to the
-- subscriptions that asked for their type.
BEGIN;
SELECT plan(35);

-- ---------------------------------------------------------------------------
-- courier.subscribe refuses bad input, with a SQLSTATE, and writes nothing
-- ---------------------------------------------------------------------------
SELECT throws_ok($$SELECT courier.subscribe('Back Office', 'https://x.test/h', ARRAY['order.delayed'])$$,
	'22023', 'invalid subscriber name ''Back Office''', 'a name with capitals and a space is refused');
SELECT throws_ok($$SELECT courier.subscribe('bo', 'ftp://x.test/h', ARRAY['order.delayed'])$$,
	'22023', 'invalid URL for subscriber "bo"', 'a URL that is not http(s) is refused');
SELECT throws_ok($$SELECT courier.subscribe('bo', 'https://x.test/h', ARRAY['order.delayed', 'order.lost'])$$,
	'22023', 'invalid event types for subscriber "bo"', 'an unknown event type is refused');
SELECT throws_ok($$SELECT courier.subscribe('bo', 'https://x.test/h', ARRAY[]::text[])$$,
	'22023', 'invalid event types for subscriber "bo"', 'no event type is refused');
SELECT throws_ok($$SELECT courier.subscribe('bo', 'https://x.test/h', ARRAY['order.delayed'], 0)$$,
	'22023', 'invalid batch size 0 for subscriber "bo"', 'a batch size of 0 is refused');
SELECT throws_ok($$SELECT courier.subscribe('bo', 'https://x.test/h', ARRAY['order.delayed'], 10, 'short')$$,
	'22023', 'the secret of subscriber "bo" is too short', 'a short secret is refused');
SELECT throws_ok($$SELECT courier.subscribe('bo', 'https://x.test/h', ARRAY['order.delayed'], rate_limit => -1)$$,
	'22023', 'invalid rate limit -1 for subscriber "bo"', 'a negative rate limit is refused');
SELECT throws_ok($$SELECT courier.subscribe('bo', 'https://x.test/h', ARRAY['order.delayed'], timeout => '10 min')$$,
	'22023', 'invalid timeout 00:10:00 for subscriber "bo"', 'a timeout over 5 minutes is refused');
SELECT is((SELECT count(*) FROM courier.subscriptions), 0::bigint, 'nothing was written');
SELECT is(courier.emit_events(ARRAY[1]::bigint[], ARRAY[1]::bigint[], ARRAY['order.overdue'],
							  ARRAY['{}'::jsonb], now()), 0::bigint,
	'without a subscription, an event is not recorded');

SELECT ok(courier.subscribe('backoffice', 'https://seller.test/hooks',
						   ARRAY['order.delayed', 'order.invoiced', 'order.delayed'], 50,
						   'a-secret-of-32-characters-----!!') > 0,
	'a subscriber of two event types, with a secret');
SELECT ok(courier.subscribe('analytics', 'http://analytics.test/in', ARRAY['order.invoiced']) > 0,
	'a subscriber of order.invoiced only');
SELECT throws_ok($$SELECT courier.subscribe('analytics', 'http://a.test/', ARRAY['order.delayed'])$$,
	'42710', 'subscriber "analytics" already exists', 'a name is taken once');
SELECT results_eq(
	$$SELECT name, event_types, batch_size, has_secret, paused FROM courier.subscribers ORDER BY name$$,
	$$VALUES ('analytics', ARRAY['order.invoiced'], 100, false, false),
			 ('backoffice', ARRAY['order.delayed', 'order.invoiced'], 50, true, false)$$,
	'courier.subscribers lists them, their types once each, whether they have a secret');
SELECT hasnt_column('courier', 'subscribers', 'secret', 'the view shows no secret');
SELECT ok(NOT has_table_privilege('courier_admin', 'courier.subscriptions', 'SELECT')
		  AND NOT has_column_privilege('courier_admin', 'courier.subscriptions', 'secret', 'SELECT'),
	'courier_admin cannot read the secrets');

-- ---------------------------------------------------------------------------
-- Events in the change's transaction, fanned out by type
-- ---------------------------------------------------------------------------
SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1 + g % 3, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 20) g;

-- a delay applied and rolled back leaves no event and no delivery
SAVEPOINT before_delay;
SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, 20)::bigint), 'rain', current_date + 5);
SELECT courier.run_once('logic');
ROLLBACK TO SAVEPOINT before_delay;
SELECT is((SELECT count(*) FROM courier.events) + (SELECT count(*) FROM courier.deliveries),
	0::bigint, 'a delay applied, then rolled back, left no event and no delivery');

SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, 20)::bigint), 'rain', current_date + 5);
SELECT courier.run_once('logic');
SELECT is((SELECT count(*) FROM courier.events WHERE type = 'order.delayed'), 20::bigint,
	'each of the 20 orders delayed is one order.delayed event');
SELECT is((SELECT count(*) FROM courier.events e
			 JOIN courier.orders o ON o.seller_id = e.seller_id AND o.order_id = e.order_id
			WHERE e.type = 'order.delayed'
			  AND e.payload ->> 'new_ship_date' = to_char(current_date + 5, 'YYYY-MM-DD')
			  AND e.payload ->> 'old_ship_date' = to_char(current_date + 1, 'YYYY-MM-DD')
			  AND e.payload ->> 'reason' = 'rain'
			  AND (e.payload ->> 'request_id')::bigint IS NOT NULL),
	20::bigint, 'each names its order and seller, the request, the old and new dates and the reason');
SELECT results_eq(
	$$SELECT s.name, count(*) FROM courier.deliveries d
		JOIN courier.subscriptions s USING (subscriber_id) GROUP BY s.name ORDER BY s.name$$,
	$$VALUES ('backoffice', 20::bigint)$$,
	'the 20 are queued for the subscriber of order.delayed, not for the other');

SELECT courier.register_invoice(3, 'INV-3');
SELECT results_eq(
	$$SELECT s.name, e.type, e.payload ->> 'invoice_number' FROM courier.deliveries d
		JOIN courier.subscriptions s USING (subscriber_id)
		JOIN courier.events e ON e.seller_id = d.seller_id AND e.event_id = d.event_id
	   WHERE e.type = 'order.invoiced' ORDER BY s.name$$,
	$$VALUES ('analytics', 'order.invoiced', 'INV-3'), ('backoffice', 'order.invoiced', 'INV-3')$$,
	'register_invoice writes one order.invoiced event, queued for both subscribers');

-- ---------------------------------------------------------------------------
-- Replay: the same event ids, nothing twice in the queue
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE delivered AS
	SELECT event_id FROM courier.deliveries d
	 WHERE d.subscriber_id = courier.subscriber_id('backoffice');
DELETE FROM courier.deliveries d WHERE d.subscriber_id = courier.subscriber_id('backoffice');
SELECT is(courier.replay('backoffice', now() - interval '1 hour'), 21::bigint,
	'replay queues again the 21 events of its types');
SELECT set_eq(
	$$SELECT event_id FROM courier.deliveries d WHERE d.subscriber_id = courier.subscriber_id('backoffice')$$,
	$$SELECT event_id FROM delivered$$,
	'with the same event ids');
SELECT is(courier.replay('backoffice', now() - interval '1 hour'), 0::bigint,
	'replaying again queues nothing twice');

-- ---------------------------------------------------------------------------
-- Pause, resume, the DBA console's subscriber filter, the notice trigger
-- ---------------------------------------------------------------------------
SELECT courier.pause_subscriber('analytics');
SELECT is((SELECT paused FROM courier.subscribers WHERE name = 'analytics'), true,
	'pause_subscriber pauses it');
SELECT courier.resume_subscriber('analytics');
SELECT is((SELECT paused FROM courier.subscribers WHERE name = 'analytics'), false,
	'resume_subscriber resumes it');
SELECT throws_ok($$SELECT courier.pause_subscriber('nobody')$$,
	'42704', 'no subscriber "nobody"', 'pausing an unknown subscriber is refused');
SELECT throws_ok($$SELECT courier.retry_failures(subscriber => 'nobody')$$,
	'42704', 'no subscriber "nobody"', 'retry_failures names only a known subscriber');

-- a failed delivery of order 3's first event, and its failure row
UPDATE courier.deliveries d SET failed_at = now(), attempts = 5
 WHERE d.subscriber_id = courier.subscriber_id('analytics');
INSERT INTO courier.failures (item_id, stage, seller_id, order_id, subscriber_id, attempts,
							  last_error, errors, first_queued_at)
SELECT d.event_id, 'fanout', d.seller_id, d.order_id, d.subscriber_id, 5, 'HTTP 500', '[]', now()
  FROM courier.deliveries d WHERE d.subscriber_id = courier.subscriber_id('analytics');
SELECT is(courier.discard_failures(subscriber => 'backoffice'), 0,
	'discard_failures for another subscriber touches nothing');
SELECT is(courier.retry_failures(subscriber => 'analytics'), 1,
	'retry_failures(subscriber => ...) puts the failed event back');
SELECT is((SELECT count(*) FROM courier.deliveries d
			WHERE d.subscriber_id = courier.subscriber_id('analytics') AND d.failed_at IS NULL
			  AND d.attempts = 0), 1::bigint,
	'its delivery is due again, with fresh attempts');

SELECT is((SELECT count(*) FROM pg_trigger WHERE tgrelid = 'courier.notices'::regclass
			  AND tgname = 'notices_events'), 0::bigint,
	'no notice trigger while nobody asks for notice events');
SELECT courier.subscribe('cs', 'https://cs.test/in', ARRAY['notice.failed']);
SELECT is((SELECT count(*) FROM pg_trigger WHERE tgrelid = 'courier.notices'::regclass
			  AND tgname = 'notices_events'), 1::bigint,
	'a subscriber of notice.failed creates it');
SELECT is(courier.unsubscribe('cs'), 0::bigint, 'unsubscribe drops the subscriber (nothing queued)');
SELECT is((SELECT count(*) FROM pg_trigger WHERE tgrelid = 'courier.notices'::regclass
			  AND tgname = 'notices_events'), 0::bigint,
	'and the trigger with the last notice subscriber');

SELECT * FROM finish();
ROLLBACK;
