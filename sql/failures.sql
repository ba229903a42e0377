-- One bad item does not sink its batch; retries with back-off; failures
-- table; replay and discard.
SET client_min_messages = warning;
SET datestyle = ISO;
-- start from an empty courier schema
DROP EXTENSION courier;
CREATE EXTENSION courier;

SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 10) g;

-- A trigger stands in for any bad data: it rejects changes to order 7.
CREATE FUNCTION public.reject_order_7() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id = 7 THEN
		RAISE EXCEPTION 'order 7 is locked by the warehouse' USING ERRCODE = 'check_violation';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER reject_order_7 BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.reject_order_7();

-- bad_item_is_isolated_from_its_batch
SET courier.max_attempts = 3;
SELECT courier.delay_orders(array_agg(g), 'rain', current_date + 5) AS r
  FROM generate_series(1, 10) g \gset
SELECT courier.run_once('logic') AS handled;
SELECT total, done, failed, pending FROM courier.request_status(:r);
SELECT order_id, attempts, not_before > now() AS backing_off,
       errors -> 0 ->> 'error' AS error, errors -> 0 ->> 'sqlstate' AS sqlstate
  FROM courier.work_items WHERE stage = 'logic';

-- not due before its back-off has passed
SELECT courier.run_once('logic') AS handled_while_backing_off;

-- exhausted_item_moves_to_failures_with_history (time is moved on by hand)
UPDATE courier.work_items SET not_before = now() - interval '1 second' WHERE stage = 'logic';
SELECT courier.run_once('logic') AS handled;
UPDATE courier.work_items SET not_before = now() - interval '1 second' WHERE stage = 'logic';
SELECT courier.run_once('logic') AS handled;
SELECT count(*) AS logic_items_left FROM courier.work_items WHERE stage = 'logic';
SELECT stage, order_id, attempts, last_error, last_sqlstate, jsonb_array_length(errors) AS attempts_logged
  FROM courier.failures;
SELECT total, done, failed, pending FROM courier.request_status(:r);

-- retry_failures puts it back with fresh attempts and its history
DROP TRIGGER reject_order_7 ON courier.orders;
SELECT courier.retry_failures(stage => 'tms') AS retried_tms;
SELECT courier.retry_failures() AS retried;
SELECT attempts, jsonb_array_length(errors) AS history FROM courier.work_items WHERE stage = 'logic';
SELECT courier.run_once('logic') AS handled;
SELECT total, done, failed, pending FROM courier.request_status(:r);
SELECT count(*) AS failures FROM courier.failures;

-- discard_failures keeps the record but never retries it
CREATE TRIGGER reject_order_7 BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.reject_order_7();
SET courier.max_attempts = 1;
SELECT courier.delay_orders(ARRAY[7], 'rain', current_date + 6) AS r2 \gset
SELECT courier.run_once('logic') AS handled;
SELECT failure_id AS f FROM courier.failures WHERE request_id = :r2 \gset
SELECT courier.discard_failures(ARRAY[:f]::bigint[]) AS discarded;
SELECT courier.discard_failures(ARRAY[:f]::bigint[]) AS discarded_again;
SELECT courier.retry_failures(ARRAY[:f]::bigint[]) AS retried_discarded;
SELECT total, done, failed, pending FROM courier.request_status(:r2);

-- backoff_grows_exponentially_with_jitter_and_cap (defaults: base 1s, cap 5min)
RESET courier.max_attempts;
SELECT a,
       bool_and(d BETWEEN lo AND hi) AS within_bounds,
       count(DISTINCT d) > 1 AS jittered
  FROM (SELECT a, courier.backoff_delay(a) AS d,
               least(interval '1 second' * 2 ^ (a - 1), interval '5 minutes') / 2 AS lo,
               least(interval '1 second' * 2 ^ (a - 1), interval '5 minutes') AS hi
          FROM generate_series(1, 12) a, generate_series(1, 50)) s
 GROUP BY a ORDER BY a;
DROP TRIGGER reject_order_7 ON courier.orders;
DROP FUNCTION public.reject_order_7();
