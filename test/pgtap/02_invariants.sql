-- Nothing is lost: after a mixed workload with failing items, every item of
-- every request is in exactly one of pending, done or failed, and every
-- delayed order has exactly one notice per new date.
BEGIN;
SELECT plan(9);

SET LOCAL courier.max_attempts = 2;
SET LOCAL courier.batch_size = 64;

SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1 + g % 7, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 500) g;

CREATE FUNCTION pg_temp.reject_some() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id % 97 = 0 THEN
		RAISE EXCEPTION 'order % rejected', NEW.order_id;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER reject_some BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION pg_temp.reject_some();

SELECT courier.delay_orders(array_agg(g), 'rain', current_date + 5) FROM generate_series(1, 300) g;
SELECT courier.delay_orders(array_agg(g), 'trucks', current_date + 6) FROM generate_series(200, 500) g;
SELECT courier.delay_orders(array_agg(g), 'trucks', current_date + 6) FROM generate_series(1, 50) g;

-- drain, moving time on for the items in back-off
DO $$
BEGIN
	FOR i IN 1..100 LOOP
		UPDATE courier.work_items SET not_before = now() - interval '1 ms' WHERE stage = 'logic';
		EXIT WHEN courier.run_once('logic') = 0;
	END LOOP;
END $$;

SELECT is((SELECT count(*) FROM courier.work_items WHERE stage = 'logic'), 0::bigint,
          'the logic queue is drained');
SELECT is((SELECT sum(total) FROM courier.requests), 651::bigint, 'three requests, 300 + 301 + 50 items');
SELECT is((SELECT count(*) FROM courier.requests r, courier.request_status(r.request_id) s
            WHERE s.done + s.failed + s.pending <> s.total OR s.pending <> 0), 0::bigint,
          'every request: done + failed = total, nothing pending');
SELECT is((SELECT count(*) FROM courier.failures), 6::bigint,
          'exactly the items of orders 97, 194, 291 (first request) and 291, 388, 485 (second) failed');
SELECT is((SELECT count(*) FROM courier.delay_history h JOIN courier.failures f
             ON f.request_id = h.request_id AND f.order_id = h.order_id), 0::bigint,
          'no item is both done and failed');
SELECT is((SELECT count(*) FROM (SELECT request_id, order_id FROM courier.delay_history
                                  GROUP BY 1, 2 HAVING count(*) > 1) d), 0::bigint,
          'no item was applied twice');
SELECT is((SELECT count(*) FROM courier.notices), 
          (SELECT count(DISTINCT (order_id, new_ship_date)) FROM courier.delay_history WHERE outcome = 'delayed'),
          'one notice per order and distinct new date');
SELECT is((SELECT count(*) FROM courier.notices n
            WHERE NOT (n.status = 'pending' AND n.due_at <= clock_timestamp() AND n.leased_by IS NULL
                       AND n.attempts = 0)),
          0::bigint, 'every notice is queued for the tms stage: pending, due, unleased, untried');
SELECT ok((SELECT bool_and(jsonb_array_length(errors) = attempts) FROM courier.failures),
          'each failure keeps one history entry per attempt');

SELECT * FROM finish();
ROLLBACK;
