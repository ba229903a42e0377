-- The data model: tables, keys, the claim index, the public functions.
BEGIN;
SELECT plan(30);

SELECT has_schema('courier');
SELECT has_table('courier', t, 'table courier.' || t || ' exists')
  FROM unnest(ARRAY['orders', 'requests', 'work_items', 'delay_history', 'notices', 'failures']) t;
SELECT ok(obj_description(('courier.' || t)::regclass, 'pg_class') IS NOT NULL,
          'table courier.' || t || ' has a comment')
  FROM unnest(ARRAY['orders', 'requests', 'work_items', 'delay_history', 'notices', 'failures']) t;
SELECT col_not_null('courier', t, 'seller_id', 'courier.' || t || ' carries seller_id')
  FROM unnest(ARRAY['orders', 'work_items', 'delay_history', 'notices', 'failures']) t;
SELECT col_is_pk('courier', 'notices', ARRAY['order_id', 'ship_date'],
                 'a notice is keyed by its natural idempotency key');
SELECT index_is_type('courier', 'work_items', 'work_items_due', 'btree');
SELECT has_index('courier', 'work_items', 'work_items_due', ARRAY['stage', 'not_before', 'item_id'],
                 'the claim is served by (stage, not_before, item_id)');
SELECT has_function('courier', f, 'courier.' || f || ' exists')
  FROM unnest(ARRAY['register_orders', 'request_shipping', 'register_invoice', 'delay_orders',
                    'request_status', 'run_once', 'retry_failures', 'discard_failures']) f;
SELECT function_returns('courier', 'delay_orders', ARRAY['bigint[]', 'text', 'date'], 'bigint');

SELECT * FROM finish();
ROLLBACK;
