-- Delivery receipts: a notice a provider accepted awaits its receipt; the
-- app hands courier NHN Cloud's MESSAGE_RESULT_UPDATE webhook bodies, and
-- each named notice becomes delivered (code 1000) or failed with its code.
SET client_min_messages = warning;
SET datestyle = ISO;
DROP EXTENSION courier;
CREATE EXTENSION courier;

SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 10 + g % 2, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 4) g;
SELECT courier.delay_orders(ARRAY[1, 2, 3, 4], 'Heavy rain', current_date + 5) IS NOT NULL AS queued;
-- the notices' idempotency keys end in the new date
SELECT to_char(current_date + 5, 'YYYYMMDD') AS d \gset
SELECT courier.run_once('logic');
-- as a sender of a provider with receipts records an acceptance
UPDATE courier.notices SET status = 'delivered', sent_at = now(), due_at = NULL,
       receipt_status = 'awaiting'
 WHERE order_id IN (1, 2, 3);

-- record_receipts_marks_delivered_and_failed
SELECT courier.record_receipts(replace($${"hooksId": "h-1", "productName": "KakaoTalk Bizmessage",
  "appKey": "app", "event": "MESSAGE_RESULT_UPDATE",
  "hooks": [
    {"requestId": "20310301090000AT000000001", "recipientSeq": 1, "recipientNo": "01012340001",
     "resultCode": "1000", "recipientGroupingKey": "dn-1-YMD"},
    {"requestId": "20310301090000AT000000001", "recipientSeq": 2, "recipientNo": "01012340002",
     "resultCode": "3019", "recipientGroupingKey": "dn-2-YMD"},
    {"requestId": "x", "recipientSeq": 9, "resultCode": "1000", "recipientGroupingKey": "someone-else"},
    {"requestId": "x", "recipientSeq": 9, "resultCode": "1000", "recipientGroupingKey": "dn-99-YMD"},
    {"requestId": "x", "recipientSeq": 4, "resultCode": "1000", "recipientGroupingKey": "dn-4-YMD"}
  ]}$$, 'YMD', :'d')::jsonb) AS recorded;
-- 1 delivered, 2 failed (3019), 3 still awaiting, 4 never sent (pending):
-- a receipt for a notice that was not sent changes nothing
SELECT order_id, status, receipt_status, receipt_code, receipt_at IS NOT NULL AS has_time
  FROM courier.notices ORDER BY order_id;

-- record_receipts_is_idempotent: the first final state wins
SELECT courier.record_receipts(replace('{"event": "MESSAGE_RESULT_UPDATE", "hooks": [
    {"resultCode": "3018", "recipientGroupingKey": "dn-1-YMD"},
    {"resultCode": "1000", "recipientGroupingKey": "dn-2-YMD"}]}', 'YMD', :'d')::jsonb) AS recorded_again;
SELECT order_id, receipt_status, receipt_code FROM courier.notices ORDER BY order_id;

-- metrics_counts_receipts
SELECT line FROM regexp_split_to_table(courier.metrics(), E'\n') AS line
 WHERE line LIKE 'courier_notices_receipts%' ORDER BY line;

-- queue_stats_counts_receipts: the tms stage's row, none on the logic's
SELECT stage, receipts_awaiting, receipts_delivered, receipts_failed, receipts_expired
  FROM courier.queue_stats ORDER BY stage;

-- record_receipts_refuses_other_bodies
SELECT courier.record_receipts('{"event": "SOMETHING_ELSE", "hooks": []}');
SELECT courier.record_receipts('[1, 2]');
SELECT courier.record_receipts('{"event": "MESSAGE_RESULT_UPDATE"}');

-- the app role may hand receipts over; an ordinary role may not
SELECT has_function_privilege('courier_app', 'courier.record_receipts(jsonb)', 'EXECUTE') AS app,
       has_function_privilege('public', 'courier.record_receipts(jsonb)', 'EXECUTE') AS public;
