-- Progress and attempts that nothing but the work itself changes (courier
-- 0.2): request_status keeps its answer across prune, and errors of
-- concurrency in the logic stage are not charged to items.
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

SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 20) g;

-- request_status_survives_prune
-- Request r1: three orders, all applied.  Request r2: four orders, three
-- applied and one (order 7, rejected by a trigger standing in for bad data)
-- failed in the logic stage and was discarded.  After a prune that deletes
-- every history row and the discarded failure, both requests still report
-- the same progress.  0.1 counted only the rows still there: r1 (3,3,0,0)
-- became (3,0,0,3) and r2 (4,3,1,0) became (4,0,0,4).
CREATE FUNCTION public.reject_order_7() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id = 7 THEN
		RAISE EXCEPTION 'order 7 is locked by the warehouse' USING ERRCODE = 'check_violation';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER reject_order_7 BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.reject_order_7();
SET courier.max_attempts = 1;
SELECT courier.delay_orders(ARRAY[1, 2, 3], 'Heavy rain', current_date + 5) AS r1 \gset
SELECT courier.delay_orders(ARRAY[4, 5, 6, 7], 'Trucks late', current_date + 6) AS r2 \gset
SELECT courier.run_once('logic') AS handled;
RESET courier.max_attempts;
DROP TRIGGER reject_order_7 ON courier.orders;
DROP FUNCTION public.reject_order_7();
SELECT stage, order_id, request_id = :r2 AS of_r2, last_sqlstate FROM courier.failures;
SELECT courier.discard_failures(stage => 'logic') AS discarded;
SELECT 'r1' AS request, total, done, failed, pending FROM courier.request_status(:r1)
UNION ALL
SELECT 'r2', total, done, failed, pending FROM courier.request_status(:r2);
-- in chunks of 2, so that a request's history is deleted over several chunks
CALL courier.prune(retention => '0 seconds', chunk => 2);
SELECT (SELECT count(*) FROM courier.delay_history) AS history_left,
       (SELECT count(*) FROM courier.failures) AS failures_left;
SELECT 'r1' AS request, total, done, failed, pending FROM courier.request_status(:r1)
UNION ALL
SELECT 'r2', total, done, failed, pending FROM courier.request_status(:r2);
SELECT request_id - :r1 AS req, pruned_done, pruned_failed
  FROM courier.requests ORDER BY request_id;
-- pruning again finds nothing and counts nothing twice
CALL courier.prune(retention => '0 seconds');
SELECT 'r1' AS request, total, done, failed, pending FROM courier.request_status(:r1)
UNION ALL
SELECT 'r2', total, done, failed, pending FROM courier.request_status(:r2);
-- a request pruned in part counts both what was pruned and what is left:
-- order 8's history row is made 40 days old by hand, the default retention
-- (30 days) deletes only that one
SELECT courier.delay_orders(ARRAY[8, 9], 'Fog', current_date + 7) AS r3 \gset
SELECT courier.run_once('logic') AS handled;
UPDATE courier.delay_history SET applied_at = now() - interval '40 days' WHERE order_id = 8;
CALL courier.prune();
SELECT order_id FROM courier.delay_history WHERE request_id = :r3;
SELECT total, done, failed, pending FROM courier.request_status(:r3);

-- logic_concurrency_errors_are_not_charged
-- A trigger stands in for a concurrency error raised while the logic stage
-- applies its batch: 40001 serialization_failure, 40P01 deadlock_detected,
-- 55P03 lock_not_available.  run_once('logic') lets the error reach the
-- caller; the items keep attempts = 0 and no error in their history, and
-- the next run_once after the cause is gone applies them.  0.1 bisected the
-- batch, charged an attempt (with the error) to every item and returned 3.
CREATE FUNCTION public.raise_concurrency_error() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'simulated %', current_setting('courier_test.errcode')
		USING ERRCODE = current_setting('courier_test.errcode');
END $$;
CREATE TRIGGER raise_concurrency_error BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.raise_concurrency_error();
SELECT courier.delay_orders(ARRAY[11, 12, 13], 'Snow', current_date + 8) AS r5 \gset
SET courier_test.errcode = '40001';
SELECT pg_temp.try($$SELECT courier.run_once('logic')$$) AS run_once;
SELECT order_id, attempts, errors, not_before <= now() AS due
  FROM courier.work_items WHERE stage = 'logic' ORDER BY order_id;
SET courier_test.errcode = '40P01';
SELECT pg_temp.try($$SELECT courier.run_once('logic')$$) AS run_once;
SET courier_test.errcode = '55P03';
SELECT pg_temp.try($$SELECT courier.run_once('logic')$$) AS run_once;
SELECT order_id, attempts, errors, solo, not_before <= now() AS due
  FROM courier.work_items WHERE stage = 'logic' ORDER BY order_id;
SELECT count(*) AS failures FROM courier.failures;
SELECT total, done, failed, pending FROM courier.request_status(:r5);
-- the cause is gone: the next run applies the batch
DROP TRIGGER raise_concurrency_error ON courier.orders;
DROP FUNCTION public.raise_concurrency_error();
RESET courier_test.errcode;
SELECT courier.run_once('logic') AS handled;
SELECT order_id, outcome FROM courier.delay_history WHERE request_id = :r5 ORDER BY order_id;
SELECT total, done, failed, pending FROM courier.request_status(:r5);
SELECT count(*) AS logic_items_left FROM courier.work_items WHERE stage = 'logic';
