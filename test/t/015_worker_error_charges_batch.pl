
# 015_worker_error_charges_batch.pl
#	An error that is not about one item's data (here a trigger raising
#	query_canceled for a few "poison" orders) ends the worker's batch: the
#	worker logs it whole (the ERROR itself, and a line with the stage and
#	batch), charges every item of the batch one attempt and backs off
#	before its next batch instead of exiting (a worker that exits on every
#	dead batch is replaced at once, in a storm).  With
#	courier.max_attempts = 3 the poison items end in
#	courier.failures after exactly 3 attempts, while every other order of
#	the request, including the poison items' batch-mates, is applied.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 1000;
my @poison = (50, 450, 777);    # each in a different batch of 100
my $poison_list = join(', ', @poison);

my $node = courier_node(
	'batch_error', logic_only => 1, conf => q{
courier.max_attempts = 3
courier.batch_size = 100
});

is(register_orders($node, 1, $N), $N, "register_orders registers $N orders");

query($node, qq{
CREATE FUNCTION public.poison_orders() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	IF NEW.order_id IN ($poison_list) THEN
		RAISE EXCEPTION 'poisoned order %', NEW.order_id
			USING ERRCODE = 'query_canceled';
	END IF;
	RETURN NEW;
END \$\$;
CREATE TRIGGER poison_orders BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.poison_orders();
});

my $log_offset = log_offset($node);
my $req = delay_orders($node, 1, $N, 10);
my $good = $N - @poison;

ok( poll_until(
		$node,
		"SELECT done + failed FROM courier.request_status($req)",
		"$N", 90),
	'every item of the request ends done or failed');

is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
	"$N|$good|3|0",
	"request_status: $good done, the 3 poison orders failed, none pending");
is(query($node, qq{
	SELECT string_agg(order_id || ':' || attempts || ':' || last_sqlstate, ','
					  ORDER BY order_id)
	  FROM courier.failures WHERE request_id = $req}),
	join(',', map { "$_:3:57014" } @poison),
	'exactly the poison orders are in failures, each after 3 attempts, with SQLSTATE 57014');
is(query($node, qq{
	SELECT count(*) FROM courier.failures
	 WHERE request_id = $req AND jsonb_array_length(errors) = 3
	   AND last_error LIKE 'poisoned order %'}),
	'3', 'each failure keeps its 3 attempts and the trigger\'s message');
is(query($node, qq{
	SELECT count(*), count(DISTINCT order_id) FROM courier.delay_history
	 WHERE request_id = $req AND order_id NOT IN ($poison_list)}),
	"$good|$good",
	"the $good other orders, batch-mates of the poison ones included, are applied once");
is(query($node, qq{
	SELECT count(*) FROM courier.delay_history
	 WHERE request_id = $req AND order_id IN ($poison_list)}),
	'0', 'no poison order is in the history');
is(query($node, "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"),
	'0', 'no logic item is left');
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE ship_date = current_date + 10 AND order_id NOT IN ($poison_list)}),
	"$good", "one notice for each of the $good applied orders");

my $log = slurp_file($node->logfile, $log_offset);
like($log,
	qr/courier logic worker: batch of \d+ items failed: poisoned order \d+/,
	"the worker logs the batch's error message with its stage");
like($log, qr/(?:LOG|ERROR):\s+poisoned order \d+\n.*CONTEXT:/,
	'the batch-killing error itself is in the log (EmitErrorReport)');
unlike($log,
	qr/background worker "courier logic worker" \(PID \d+\) exited with exit code 1/,
	'the worker whose batch failed does not exit: it backs off');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		't', 30),
	'the launcher keeps a logic worker running after the failures');

$node->stop;
done_testing();
