-- The rules that keep courier runnable on Citus (docs/citus.md) that can be
-- checked in the catalog of a plain PostgreSQL.
BEGIN;
SELECT plan(6);

-- Rule 4: nothing that must plan on Citus is a SQL-language function with
-- parameters (Citus could not plan request_status, retry_failures and
-- discard_failures as such in 0.1).
SELECT is_empty(
	$$SELECT p.oid::regprocedure::text FROM pg_proc p
	   WHERE p.pronamespace = 'courier'::regnamespace
	     AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'sql')
	     AND p.pronargs > 0$$,
	'no courier function with parameters is written in SQL');

-- The tables that stay small and are read everywhere are meant to be
-- reference tables; every other courier table carries seller_id.
SELECT is_empty(
	$$SELECT c.relname::text FROM pg_class c
	   WHERE c.relnamespace = 'courier'::regnamespace AND c.relkind IN ('r', 'p')
	     AND NOT c.relispartition
	     AND c.relname NOT IN ('requests', 'alerts', 'digest_state', 'queue_slots', 'subscriptions')
	     AND NOT EXISTS (SELECT 1 FROM pg_attribute a
						  WHERE a.attrelid = c.oid AND a.attname = 'seller_id'
						    AND a.attnotnull)$$,
	'every courier table but the reference tables carries a NOT NULL seller_id');

-- Rule 1: every primary and unique key of a table meant to be distributed
-- starts with seller_id (Citus refuses a key without the distribution
-- column).  Partitions carry their parent's keys.
SELECT is_empty(
	$$SELECT i.indexrelid::regclass::text FROM pg_index i
	   JOIN pg_class c ON c.oid = i.indrelid
	  WHERE c.relnamespace = 'courier'::regnamespace AND c.relkind IN ('r', 'p')
	    AND NOT c.relispartition
	    AND c.relname NOT IN ('requests', 'alerts', 'digest_state', 'queue_slots', 'subscriptions')
	    AND i.indisunique
	    AND (SELECT a.attname FROM pg_attribute a
	          WHERE a.attrelid = c.oid AND a.attnum = i.indkey[0]) <> 'seller_id'$$,
	'every primary and unique key of a distributed table starts with seller_id');

SELECT bag_eq(
	$$SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	   WHERE c.relnamespace = 'courier'::regnamespace AND NOT c.relispartition
	     AND i.indisprimary
	     AND c.relname IN ('orders', 'notices', 'delay_history', 'failures', 'work_items')$$,
	ARRAY['orders', 'notices', 'delay_history', 'failures', 'work_items'],
	'every distributed table keeps a primary key');

-- The rule that comes with it: an order never changes seller, and a call
-- that tries is refused whole.
SELECT courier.register_orders('[{"order_id": 905001, "seller_id": 71, "customer_phone": "010-1111-2222",
	"product_name": "mug", "promised_ship_date": "2031-01-10"}]');
SELECT throws_ok(
	$$SELECT courier.register_orders('[{"order_id": 905002, "seller_id": 71, "customer_phone": "010-1111-2222",
		"product_name": "cup", "promised_ship_date": "2031-01-10"},
		{"order_id": 905001, "seller_id": 72, "customer_phone": "010-1111-2222",
		"product_name": "mug", "promised_ship_date": "2031-01-10"}]')$$,
	'23505', '1 order would change seller',
	'registering a known order under another seller is refused');
SELECT results_eq(
	$$SELECT order_id, seller_id FROM courier.orders WHERE order_id IN (905001, 905002)$$,
	$$VALUES (905001::bigint, 71::bigint)$$,
	'the refused call wrote nothing: the order keeps its seller, the new one is not in');

SELECT * FROM finish();
ROLLBACK;
