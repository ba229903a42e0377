-- Input checks added in courier 0.2: text that reaches a customer's phone
-- carries no control characters, a product name is not blank, and
-- run_once(NULL) is an error.
SET client_min_messages = warning;
SET datestyle = ISO;
-- start from an empty courier schema
DROP EXTENSION courier;
CREATE EXTENSION courier;

-- Runs a statement and prints its SQLSTATE and message, or ok.
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text;
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
	RETURN st || ': ' || msg;
END $$;

-- register_orders(product_name) for order 1 as element 2 of a call whose
-- element 1 (order 2) is good
CREATE FUNCTION pg_temp.register_product(product text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.try(format('SELECT courier.register_orders(%L)', jsonb_build_array(
		jsonb_build_object('order_id', 2, 'seller_id', 1, 'customer_phone', '01012340002',
						   'product_name', 'corn', 'promised_ship_date', '2030-01-10'),
		jsonb_build_object('order_id', 1, 'seller_id', 1, 'customer_phone', '01012340001',
						   'product_name', product, 'promised_ship_date', '2030-01-10'))))
$$;

-- register_orders_rejects_control_characters_in_product_name
-- The byte position is counted in bytes (the Korean name has 3 bytes per
-- character).  Nothing of the call is written.  0.1 accepted all of these.
SELECT pg_temp.register_product(E'corn\x01 10kg') AS soh;
SELECT pg_temp.register_product(E'corn\n10kg') AS line_feed;
SELECT pg_temp.register_product(E'corn 10kg\t') AS tab;
SELECT pg_temp.register_product(E'corn\x7f') AS del;
SELECT pg_temp.register_product(E'초당옥수수\x1b[31m') AS escape_after_korean;
SELECT count(*) AS orders_written FROM courier.orders;

-- register_orders_rejects_blank_product_name
-- 0.1 rejected only the empty string and stored a name of spaces.
SELECT pg_temp.register_product('   ') AS spaces;
SELECT pg_temp.register_product('') AS empty;
SELECT count(*) AS orders_written FROM courier.orders;
-- the same call with a real name (Korean included) goes through
SELECT pg_temp.register_product('초당옥수수 10kg') AS korean;
SELECT order_id, product_name FROM courier.orders ORDER BY 1;

-- delay_orders_rejects_control_characters_in_reason
-- Nothing is queued.  0.1 accepted them and sent them to customers.
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[1, 2], E'rain\x01', current_date + 5)$$) AS soh;
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[1, 2], E'Heavy rain.\nSorry!', current_date + 5)$$) AS line_feed;
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[1, 2], E'폭우\x7f', current_date + 5)$$) AS del_after_korean;
SELECT (SELECT count(*) FROM courier.requests) AS requests,
       (SELECT count(*) FROM courier.work_items) AS items;
-- a reason without control characters is accepted
SELECT pg_temp.try($$SELECT courier.delay_orders(ARRAY[1, 2], '폭우로 수확이 늦어졌습니다', current_date + 5)$$) AS korean;

-- run_once_null_is_an_error
-- 0.1 (a STRICT function) returned NULL without doing anything.
SELECT pg_temp.try($$SELECT courier.run_once(NULL)$$) AS run_once_null;
