-- The close rule (courier 0.2): once an order's close (invoiced, shipped or
-- cancelled, by register_invoice, register_orders or any UPDATE of
-- courier.orders.status) commits, no send of its notice starts: the trigger
-- courier.order_closed drops the notices no sender holds.  register_invoice
-- says what became of the order's newest notice.  register_orders does not
-- undo a delay courier applied.
-- No HTTP here: courier.tms_url is empty and run_once('tms') is never called.
-- Where a test needs a notice that a sender holds, delivered or failed, it
-- sets that state directly with UPDATE (as superuser), standing in for the
-- tms stage.
-- Since 0.3 the tms stage's queue is the pending notices themselves: a
-- notice is queued while its status is pending, falls due at due_at and is
-- held by the sender whose pid is in leased_by until due_at (the lease's
-- end).  A drop clears both.
SET client_min_messages = warning;
SET datestyle = ISO;
-- start from an empty courier schema
DROP EXTENSION courier;
CREATE EXTENSION courier;

-- orders 1-12 get a pending notice for current_date + 5; 13-14 have none
SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 14) g;
SELECT courier.delay_orders(array_agg(g ORDER BY g), 'Heavy rain', current_date + 5)
  FROM generate_series(1, 12) g \gset
SELECT courier.run_once('logic') AS applied;
-- each is queued for the tms stage: due now, held by no sender
SELECT count(*) AS pending_notices,
       count(*) FILTER (WHERE n.due_at <= now() AND n.leased_by IS NULL) AS due_for_tms
  FROM courier.notices n
 WHERE n.status = 'pending';

-- register_orders_close_drops_pending_notice
-- 0.1: register_orders with "status": "cancelled" (or "shipped") closed the
-- order but left its notice pending and queued for the tms stage, so it was
-- still sent.  An order re-registered without a status keeps its notice,
-- still queued (pending with its due time); a dropped one keeps none.
SELECT courier.register_orders(jsonb_build_array(
  jsonb_build_object('order_id', 1, 'seller_id', 1, 'customer_phone', '01012340001', 'product_name', 'corn',
                     'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'), 'status', 'cancelled'),
  jsonb_build_object('order_id', 2, 'seller_id', 1, 'customer_phone', '01012340002', 'product_name', 'corn (sweet)',
                     'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD')),
  jsonb_build_object('order_id', 3, 'seller_id', 1, 'customer_phone', '01012340003', 'product_name', 'corn',
                     'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'), 'status', 'shipped')));
SELECT o.order_id, o.status AS order_status, n.status AS notice_status,
       n.due_at IS NOT NULL AS has_due_at, n.leased_by
  FROM courier.orders o
  JOIN courier.notices n ON n.order_id = o.order_id
 WHERE o.order_id IN (1, 2, 3)
 ORDER BY 1;

-- update_of_status_drops_pending_notice
-- 0.1: only register_invoice dropped notices; a plain UPDATE of the status
-- (here: shipped) left the notice pending and sendable.  A close that is
-- rolled back drops nothing.
UPDATE courier.orders SET status = 'shipped' WHERE order_id = 4;
BEGIN;
UPDATE courier.orders SET status = 'cancelled' WHERE order_id = 5;
ROLLBACK;
SELECT o.order_id, o.status AS order_status, n.status AS notice_status,
       n.due_at IS NOT NULL AS has_due_at, n.leased_by
  FROM courier.orders o
  JOIN courier.notices n ON n.order_id = o.order_id
 WHERE o.order_id IN (4, 5)
 ORDER BY 1;

-- register_invoice_returns_text
-- 0.1: register_invoice returned boolean (whether a notice was dropped).
SELECT format_type(prorettype, NULL) AS returns
  FROM pg_proc WHERE oid = 'courier.register_invoice(bigint, text)'::regprocedure;

-- register_invoice_says_dropped_for_unsent_notice
-- 0.1: returned true.
SELECT courier.register_invoice(6, 'CJ-6');
SELECT n.status AS notice_status, n.due_at IS NOT NULL AS has_due_at, n.leased_by
  FROM courier.notices n
 WHERE n.order_id = 6;

-- register_invoice_says_in_flight_for_leased_notice
-- A sender holds order 7's notice (a live lease, set by hand): the trigger
-- leaves it to the sender, which drops it before sending.  0.1 returned false.
UPDATE courier.notices SET leased_by = 4242, due_at = now() + interval '1 hour'
 WHERE status = 'pending' AND order_id = 7;
SELECT courier.register_invoice(7, 'CJ-7');
-- still pending, the lease untouched
SELECT n.status AS notice_status, n.leased_by, n.due_at > now() AS lease_live
  FROM courier.notices n
 WHERE n.order_id = 7;

-- register_invoice_drops_notice_whose_lease_expired
-- The sender that leased order 8's notice died: its lease ran out, so no
-- sender holds it.  0.1 kept every leased item (leased_by IS NULL was the
-- test), left the notice pending and returned false.
UPDATE courier.notices SET leased_by = 4242, due_at = now() - interval '1 minute'
 WHERE status = 'pending' AND order_id = 8;
SELECT courier.register_invoice(8, 'CJ-8');
-- dropped, and the dead sender's lease cleared with its due time
SELECT n.status AS notice_status, n.due_at IS NOT NULL AS has_due_at, n.leased_by
  FROM courier.notices n
 WHERE n.order_id = 8;

-- register_invoice_says_delivered_for_sent_notice
-- Order 9's notice was delivered (set by hand as the tms stage would: status,
-- sent_at, out of the queue: no due time, no lease).  0.1 returned false.
UPDATE courier.notices SET status = 'delivered', sent_at = now(), http_status = 200,
       due_at = NULL, leased_by = NULL
 WHERE order_id = 9;
SELECT courier.register_invoice(9, 'CJ-9');
SELECT status AS notice_status FROM courier.notices WHERE order_id = 9;

-- register_invoice_says_failed_for_failed_notice
-- Order 10's notice failed (set by hand: status failed, out of the queue).
-- 0.1 returned false.
UPDATE courier.notices SET status = 'failed', due_at = NULL, leased_by = NULL
 WHERE order_id = 10;
SELECT courier.register_invoice(10, 'CJ-10');
SELECT status AS notice_status FROM courier.notices WHERE order_id = 10;

-- register_invoice_answers_for_the_newest_notice
-- Order 11: its first notice (+5) was delivered, a second delay (+6) is
-- pending: the pending one is dropped, the delivered one stays delivered.
-- 0.1 returned true.
UPDATE courier.notices SET status = 'delivered', sent_at = now(), http_status = 200,
       due_at = NULL, leased_by = NULL
 WHERE order_id = 11;
SELECT courier.delay_orders(ARRAY[11], 'Trucks late', current_date + 6) \gset
SELECT courier.run_once('logic') AS applied;
SELECT courier.register_invoice(11, 'CJ-11');
SELECT ship_date - current_date AS days_ahead, status AS notice_status
  FROM courier.notices WHERE order_id = 11 ORDER BY ship_date;

-- register_invoice_says_none_without_notice
-- Order 13 never had a notice.  0.1 returned false.
SELECT courier.register_invoice(13, 'CJ-13');

-- every close above dropped exactly the notices no sender held: the tms
-- queue (the pending notices) is 2, 5 and 12, due and unleased, and 7,
-- still held by its sender
SELECT n.order_id, n.status AS notice_status, n.due_at IS NOT NULL AS has_due_at, n.leased_by
  FROM courier.notices n
 ORDER BY n.order_id, n.ship_date;

-- register_orders_keeps_date_courier_delayed
-- Order 12 was delayed by courier to current_date + 5; order 14 never was.
-- The app re-registers both with its own (stale) date, current_date + 3:
-- order 12 keeps the date its customer was told (and takes the new product
-- name), order 14 takes the app's date.  0.1 reset order 12 to the app's
-- date as well, silently undoing the delay.
SELECT courier.register_orders(jsonb_build_array(
  jsonb_build_object('order_id', 12, 'seller_id', 1, 'customer_phone', '01012340012', 'product_name', 'corn 10kg',
                     'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD')),
  jsonb_build_object('order_id', 14, 'seller_id', 1, 'customer_phone', '01012340014', 'product_name', 'corn 10kg',
                     'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD'))));
SELECT order_id, product_name, promised_ship_date - current_date AS days_ahead, delay_reason, status
  FROM courier.orders WHERE order_id IN (12, 14) ORDER BY 1;
-- the delayed order's notice is untouched
SELECT ship_date - current_date AS days_ahead, status AS notice_status
  FROM courier.notices WHERE order_id = 12;
