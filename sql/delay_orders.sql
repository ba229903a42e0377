-- delay_orders: bulk delay requests, validated all or nothing.
SET client_min_messages = warning;
SET datestyle = ISO;
-- start from an empty courier schema
DROP EXTENSION courier;
CREATE EXTENSION courier;

-- Error messages that name dates relative to today are masked so that this
-- file's expected output does not change from day to day.
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text; det text;
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
	RETURN st || ': ' || regexp_replace(msg || ' / ' || det, '\d{4}-\d\d-\d\d', 'YYYY-MM-DD', 'g');
END $$;

SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1 + g % 3, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 20) g;
SELECT courier.register_orders('[{"order_id": 21, "seller_id": 1, "customer_phone": "01000000021", "product_name": "corn", "promised_ship_date": "2030-01-01", "status": "shipped"},
                                 {"order_id": 22, "seller_id": 1, "customer_phone": "01000000022", "product_name": "corn", "promised_ship_date": "2030-01-01", "status": "cancelled"}]');

-- delay_orders_queues_one_item_per_order
SELECT courier.delay_orders(ARRAY[1, 2, 3], 'Heavy rain delayed the harvest', current_date + 5) AS request_id \gset
SELECT total, done, failed, pending FROM courier.request_status(:request_id);
SELECT stage, order_id, request_id = :request_id AS of_request, attempts FROM courier.work_items ORDER BY item_id;

-- delay_rejects_*: each rejected call leaves nothing behind
SELECT count(*) AS requests_before FROM courier.requests;
SELECT courier.delay_orders(NULL, 'rain', current_date + 5);
SELECT courier.delay_orders(ARRAY[1], NULL, current_date + 5);
SELECT courier.delay_orders(ARRAY[1], 'rain', NULL);
SELECT courier.delay_orders('{}', 'rain', current_date + 5);
SELECT courier.delay_orders(ARRAY[1, NULL, 3], 'rain', current_date + 5);
SELECT courier.delay_orders(ARRAY[4, 5, 4, 6, 5], 'rain', current_date + 5);
SELECT courier.delay_orders(ARRAY[4, 1000, 5, 1001], 'rain', current_date + 5);
SELECT courier.delay_orders(ARRAY[4, 21, 22], 'rain', current_date + 5);
SELECT courier.delay_orders(ARRAY[4], '   ', current_date + 5);
SELECT courier.delay_orders(ARRAY[4], repeat('x', 201), current_date + 5);
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[4], 'rain', current_date - 1)$$);
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[4], 'rain', current_date + 91)$$);
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[4], 'rain', 'infinity')$$);
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[4], 'rain', current_date + 90)$$);
SET courier.max_orders_per_request = 2;
SELECT courier.delay_orders(ARRAY[4, 5, 6], 'rain', current_date + 5);
RESET courier.max_orders_per_request;
SELECT count(*) AS requests_after FROM courier.requests;
SELECT count(*) AS items_after FROM courier.work_items;

-- only superusers may loosen the limits
CREATE ROLE courier_regress_user;
SET ROLE courier_regress_user;
SET courier.max_orders_per_request = 1000000;
RESET ROLE;
DROP ROLE courier_regress_user;
