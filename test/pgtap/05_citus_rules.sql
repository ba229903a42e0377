-- The rules that keep courier runnable on Citus (docs/citus.md) that can be
-- checked in the catalog of a plain PostgreSQL.
BEGIN;
SELECT plan(2);

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
	     AND c.relname NOT IN ('requests', 'alerts', 'digest_state', 'queue_slots')
	     AND NOT EXISTS (SELECT 1 FROM pg_attribute a
						  WHERE a.attrelid = c.oid AND a.attname = 'seller_id'
						    AND a.attnotnull)$$,
	'every courier table but the reference tables carries a NOT NULL seller_id');

SELECT * FROM finish();
ROLLBACK;
