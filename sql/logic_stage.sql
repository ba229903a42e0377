-- The logic stage driven by run_once: delays applied set-based, history kept,
-- one notice per order and distinct new ship date.
SET client_min_messages = warning;
SET datestyle = ISO;
-- start from an empty courier schema
DROP EXTENSION courier;
CREATE EXTENSION courier;

SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1 + g % 3, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 10) g;

-- run_once_returns_zero_when_nothing_is_due
SELECT courier.run_once('logic');
SELECT courier.run_once('sorting');

-- logic_applies_delay_and_writes_notice
SELECT courier.delay_orders(ARRAY[1, 2, 3, 4], 'Heavy rain', current_date + 5) AS r1 \gset
SELECT courier.run_once('logic');
SELECT (promised_ship_date - current_date) AS days_ahead, delay_reason, count(*)
  FROM courier.orders GROUP BY 1, 2 ORDER BY 1;
SELECT order_id, (ship_date - current_date) AS days_ahead, reason, status FROM courier.notices ORDER BY 1;
-- the logic items are done; the tms stage's queue is the pending notices
-- (since 0.3): all four, due now, unleased, no attempt yet
SELECT (SELECT count(*) FROM courier.work_items) AS logic_items_left,
       count(*) AS tms_queued,
       count(*) FILTER (WHERE due_at <= now() AND leased_by IS NULL
                          AND attempts = 0 AND errors = '[]') AS due_fresh
  FROM courier.notices WHERE status = 'pending';
SELECT total, done, failed, pending FROM courier.request_status(:r1);

-- notified_once_per_distinct_date: same date again -> no new notice; new date -> one more
SELECT courier.delay_orders(ARRAY[1, 2], 'Heavy rain (again)', current_date + 5) AS r2 \gset
SELECT courier.delay_orders(ARRAY[2], 'Trucks late', current_date + 6) AS r3 \gset
SELECT courier.run_once('logic');
SELECT request_id - :r1 AS req, order_id, outcome FROM courier.delay_history ORDER BY 1, 2;
SELECT order_id, (ship_date - current_date) AS days_ahead, reason FROM courier.notices ORDER BY 1, 2;

-- an order with two pending requests in one batch takes the newest one
SELECT courier.delay_orders(ARRAY[5], 'first', current_date + 7) AS r4 \gset
SELECT courier.delay_orders(ARRAY[5], 'second', current_date + 8) AS r5 \gset
SELECT courier.run_once('logic');
SELECT (promised_ship_date - current_date) AS days_ahead, delay_reason FROM courier.orders WHERE order_id = 5;

-- closed_orders_are_skipped: invoiced between request and processing
SELECT courier.delay_orders(ARRAY[6, 7], 'rain', current_date + 9) AS r6 \gset
SELECT courier.register_invoice(6, 'CJ-6');
SELECT courier.run_once('logic');
SELECT order_id, outcome FROM courier.delay_history WHERE request_id = :r6 ORDER BY 1;
SELECT count(*) AS notices_for_6 FROM courier.notices WHERE order_id = 6 AND ship_date = current_date + 9;

-- register_invoice_drops_unsent_notice
SELECT courier.register_invoice(7, 'CJ-7');
-- dropped, so out of the tms queue: no due time, no lease
SELECT status, due_at, leased_by FROM courier.notices WHERE order_id = 7;

-- batches honour courier.batch_size
SET courier.batch_size = 2;
SELECT courier.delay_orders(ARRAY[8, 9, 10], 'rain', current_date + 10) AS r7 \gset
SELECT courier.run_once('logic');
SELECT total, done, failed, pending FROM courier.request_status(:r7);
SELECT courier.run_once('logic');
SELECT courier.run_once('logic');
SELECT total, done, failed, pending FROM courier.request_status(:r7);
RESET courier.batch_size;
SELECT courier.request_status(-1) IS NULL AS unknown_request_is_null;
