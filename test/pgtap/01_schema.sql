-- The data model: tables, keys, the claim indexes, the queue's slots, the
-- public functions.
BEGIN;
SELECT plan(35);

SELECT has_schema('courier');
SELECT has_table('courier', t, 'table courier.' || t || ' exists')
  FROM unnest(ARRAY['orders', 'requests', 'work_items', 'delay_history', 'notices', 'failures']) t;
SELECT ok(obj_description(('courier.' || t)::regclass, 'pg_class') IS NOT NULL,
          'table courier.' || t || ' has a comment')
  FROM unnest(ARRAY['orders', 'requests', 'work_items', 'delay_history', 'notices', 'failures']) t;
SELECT col_not_null('courier', t, 'seller_id', 'courier.' || t || ' carries seller_id')
  FROM unnest(ARRAY['orders', 'work_items', 'delay_history', 'notices', 'failures']) t;
SELECT col_is_pk('courier', 'notices', ARRAY['seller_id', 'order_id', 'ship_date'],
                 'a notice is keyed by its seller and its natural idempotency key');
SELECT index_is_type('courier', 'work_items', 'work_items_due', 'btree');
SELECT has_index('courier', 'work_items', 'work_items_due', ARRAY['stage', 'not_before', 'item_id'],
                 'the claim is served by (stage, not_before, item_id)');
SELECT is_partitioned('courier', 'work_items', 'the queue courier.work_items is partitioned');
SELECT is((SELECT array_agg(c.relname::text || ':' || pg_get_expr(c.relpartbound, c.oid)
                            ORDER BY c.relname)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'courier.work_items'::regclass),
          ARRAY['work_items_0:FOR VALUES IN (''0'')', 'work_items_1:FOR VALUES IN (''1'')',
                'work_items_2:FOR VALUES IN (''2'')'],
          'the queue has three slots, one partition each');
SELECT is((SELECT string_agg(state, ',' ORDER BY slot) FROM courier.queue_slots),
          'current,clean,clean', 'a new queue has slot 0 current and the others clean');
SELECT has_index('courier', 'notices', 'notices_due', ARRAY['due_at'],
                 'the tms lease is served by the pending notices by due time');
SELECT is((SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i
            WHERE i.indexrelid = 'courier.notices_due'::regclass),
          '(status = ''pending''::text)', 'that index holds only pending notices');
SELECT has_function('courier', f, 'courier.' || f || ' exists')
  FROM unnest(ARRAY['register_orders', 'request_shipping', 'register_invoice', 'delay_orders',
                    'request_status', 'run_once', 'retry_failures', 'discard_failures']) f;
SELECT function_returns('courier', 'delay_orders', ARRAY['bigint[]', 'text', 'date'], 'bigint');

SELECT * FROM finish();
ROLLBACK;
