-- The back-off arithmetic: exponential from courier.retry_base, capped at
-- courier.retry_cap, with equal jitter (a random point in the upper half).
BEGIN;
SELECT plan(6);

SET LOCAL courier.retry_base = '100ms';
SET LOCAL courier.retry_cap = '1s';

CREATE TEMP TABLE samples AS
SELECT a, extract(epoch FROM courier.backoff_delay(a)) * 1000 AS ms
  FROM generate_series(0, 40) a, generate_series(1, 200);

SELECT ok((SELECT bool_and(ms BETWEEN 50 AND 100) FROM samples WHERE a IN (0, 1)),
          'attempt 1 (and nonsense 0) waits between base/2 and base');
SELECT ok((SELECT bool_and(ms BETWEEN 200 AND 400) FROM samples WHERE a = 3),
          'attempt 3 waits between 2*base and 4*base');
SELECT ok((SELECT bool_and(ms BETWEEN 500 AND 1000) FROM samples WHERE a >= 5),
          'from attempt 5 on the cap holds (also far beyond: no overflow)');
SELECT ok((SELECT count(DISTINCT round(ms)) > 50 FROM samples WHERE a = 3),
          'retries of one attempt number are spread out (jitter)');
SELECT ok((SELECT avg(ms) BETWEEN 280 AND 320 FROM samples WHERE a = 3),
          'jitter is uniform over the upper half (mean near 3/4 of the step)');

-- a failed item is scheduled with that back-off
SELECT courier.register_orders('[{"order_id": 1, "seller_id": 1, "customer_phone": "01012345678", "product_name": "corn", "promised_ship_date": "2030-01-01"}]');
CREATE FUNCTION pg_temp.reject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no'; END $$;
CREATE TRIGGER reject BEFORE UPDATE ON courier.orders FOR EACH ROW EXECUTE FUNCTION pg_temp.reject();
SELECT courier.delay_orders(ARRAY[1], 'rain', current_date + 3);
-- the failure happens between "before" and "after": not_before lies within
-- [before + base/2, after + base] whatever the machine's speed
CREATE TEMP TABLE clock (before timestamptz, after timestamptz);
INSERT INTO clock (before) VALUES (clock_timestamp());
SELECT courier.run_once('logic');
UPDATE clock SET after = clock_timestamp();
SELECT ok((SELECT w.not_before >= c.before + interval '50 ms'
              AND w.not_before <= c.after + interval '100 ms'
             FROM courier.work_items w, clock c WHERE w.stage = 'logic'),
          'the first failure of an item schedules it base/2..base later');

SELECT * FROM finish();
ROLLBACK;
