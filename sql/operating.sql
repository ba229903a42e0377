-- Operating courier from psql: rollout switches, the overdue sweep, the
-- failure digest, prune, queue_stats and metrics.
SET client_min_messages = warning;
SET datestyle = ISO;
-- start from an empty courier schema
DROP EXTENSION courier;
CREATE EXTENSION courier;

-- switch_is_stable_and_monotonic
SET courier.rollout_notice_v2 = 0;
SELECT count(*) FILTER (WHERE courier.switch_enabled('notice_v2', g)) AS at_0
  FROM generate_series(1, 10000) g;
SET courier.rollout_notice_v2 = '30%';
CREATE TEMP TABLE at30 AS
SELECT g FROM generate_series(1, 10000) g WHERE courier.switch_enabled('notice_v2', g);
SELECT count(*) BETWEEN 2800 AND 3200 AS about_30_percent FROM at30;
SELECT count(*) = (SELECT count(*) FROM at30) AS same_answer_again
  FROM generate_series(1, 10000) g WHERE courier.switch_enabled('notice_v2', g);
SET courier.rollout_notice_v2 = 60;
SELECT count(*) AS lost_when_raised FROM at30 WHERE NOT courier.switch_enabled('notice_v2', g);
SELECT count(*) FILTER (WHERE courier.switch_enabled('notice_v2', g)) BETWEEN 5800 AND 6200 AS about_60_percent
  FROM generate_series(1, 10000) g;
SET courier.rollout_notice_v2 = on;
SELECT bool_and(courier.switch_enabled('notice_v2', g)) AS all_on FROM generate_series(1, 1000) g;
-- switches are independent of each other
SET courier.rollout_overdue_sweep = 30;
SET courier.rollout_notice_v2 = 30;
SELECT count(*) < 3000 AS independent
  FROM at30 WHERE courier.switch_enabled('overdue_sweep', g);
RESET courier.rollout_overdue_sweep;
SELECT courier.switch_enabled('no_such_switch', 1);
SET courier.rollout_notice_v2 = 101;
SET courier.rollout_notice_v2 = 'half';

-- the logic stage writes the variant the switch gives each order
SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
         'order_id', g, 'seller_id', 1, 'customer_phone', '0101234' || lpad(g::text, 4, '0'),
         'product_name', 'corn', 'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, 200) g;
SELECT courier.delay_orders(array_agg(g), 'rain', current_date + 5) FROM generate_series(1, 200) g \gset
SELECT courier.run_once('logic');
SELECT count(*) FILTER (WHERE variant = 'v2') = count(*) FILTER (WHERE courier.switch_enabled('notice_v2', order_id))
       AS variant_follows_switch,
       count(DISTINCT variant) AS variants
  FROM courier.notices;
RESET courier.rollout_notice_v2;

-- sweep_overdue_notifies_once_per_deadline
SELECT courier.request_shipping(array_agg(g)) FROM generate_series(101, 110) g;
UPDATE courier.orders SET invoice_deadline = now() - interval '1 minute' WHERE order_id BETWEEN 101 AND 105;
SELECT courier.sweep_overdue() AS swept;
SELECT courier.sweep_overdue() AS swept_again;
SELECT r.reason, r.new_ship_date - current_date AS days_ahead, r.total
  FROM courier.requests r ORDER BY request_id DESC LIMIT 1;
SELECT courier.run_once('logic') AS applied;
SELECT count(*) AS overdue_notices FROM courier.notices
 WHERE order_id BETWEEN 101 AND 105 AND ship_date = current_date + 2;
-- an invoiced order is not swept; a new deadline is swept again
SELECT courier.register_invoice(106, 'CJ-106');
UPDATE courier.orders SET invoice_deadline = now() - interval '1 minute' WHERE order_id IN (106, 107);
SELECT courier.sweep_overdue() AS swept_only_107;

-- failure_digest_counts_new_failures_once
SET courier.max_attempts = 1;
CREATE FUNCTION public.reject_150() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id = 150 THEN RAISE EXCEPTION 'order 150 is frozen'; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER reject_150 BEFORE UPDATE ON courier.orders FOR EACH ROW EXECUTE FUNCTION public.reject_150();
SELECT courier.delay_orders(ARRAY[150, 151], 'trucks', current_date + 9) AS r2 \gset
SELECT courier.run_once('logic');
SELECT courier.failure_digest() AS new_failures;
SELECT courier.failure_digest() AS new_failures_again;
SELECT kind, payload -> 'count' AS count, payload -> 'by_stage' AS by_stage,
       payload -> 'top_errors' -> 0 ->> 'error' AS top_error, posted_at IS NULL AS not_yet_posted
  FROM courier.alerts;
SELECT failure_id > 0 AS has_id, stage, attempt, error, sqlstate FROM courier.failure_attempts;
DROP TRIGGER reject_150 ON courier.orders;
DROP FUNCTION public.reject_150();
RESET courier.max_attempts;

-- queue_stats and metrics (the tms stage's backlog: its pending notices)
SELECT stage, backlog, due_now, in_flight, failures_open FROM courier.queue_stats ORDER BY stage;
SELECT line FROM regexp_split_to_table(courier.metrics(), E'\n') AS line
 WHERE line ~ '^courier_(queue_backlog|failures_open)' ORDER BY line;
SELECT count(*) AS help_and_type_lines FROM regexp_split_to_table(courier.metrics(), E'\n') AS line
 WHERE line ~ '^# (HELP|TYPE) courier_';

-- prune_deletes_old_rows_in_chunks
-- (delivered by hand as the tms stage would: out of its queue, no due time)
UPDATE courier.notices SET status = 'delivered', sent_at = now() - interval '40 days',
       due_at = NULL, leased_by = NULL
 WHERE order_id <= 50;
CALL courier.prune(chunk => 7);
CALL courier.prune(chunk => 7);
SELECT count(*) AS delivered_left FROM courier.notices WHERE status = 'delivered';
CALL courier.prune(chunk => 0);
