
# 010_workers_drain_bulk_delay.pl
#	A bulk delay of 30,000 orders is applied by the background workers
#	alone (nobody calls run_once): every order gets exactly one history row
#	and one notice, left pending (the tms stage's queue, no tms worker runs
#	here), and the logic queue ends empty.  The launcher and the logic
#	workers are visible in pg_stat_activity.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 30_000;

my $node = courier_node(
	'drain', logic_only => 1);

is(register_orders($node, 1, $N), $N, "register_orders registers $N orders");

ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier launcher'"
		  . "   AND datname = 'postgres'",
		'1', 30),
	'the courier launcher runs in courier.database');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		't', 30),
	'the launcher has started a logic worker after CREATE EXTENSION');

my $req = delay_orders($node, 1, $N);

ok( poll_until(
		$node, "SELECT done FROM courier.request_status($req)",
		"$N", 120),
	"workers alone bring request_status to done = $N");

is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
	"$N|$N|0|0", 'request_status: all done, none failed, none pending');
is(query($node, "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"),
	'0', 'no logic work item is left');
is(query($node,
	"SELECT count(*), count(DISTINCT order_id) FROM courier.delay_history"
	  . " WHERE request_id = $req AND outcome = 'delayed'"),
	"$N|$N", "$N history rows, one per order, all 'delayed'");
is(query($node,
	"SELECT count(*), count(DISTINCT order_id) FROM courier.notices"
	  . " WHERE ship_date = current_date + 10"),
	"$N|$N", "$N notices, one per order for the new date");
is(query($node,
	"SELECT count(*), count(DISTINCT order_id) FROM courier.notices"
	  . " WHERE ship_date = current_date + 10 AND status = 'pending'"
	  . "   AND due_at <= now() AND leased_by IS NULL"),
	"$N|$N", "all $N notices are queued for the tms stage: pending, due, unleased");
is(query($node,
	"SELECT count(*) FROM courier.orders"
	  . " WHERE promised_ship_date = current_date + 10"
	  . "   AND delay_reason = 'harvest delayed by rain'"),
	"$N", 'every order carries the new ship date and the reason');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing failed');

# The workers show what they are: their backend type, and an activity text
# naming their stage ("logic" while running a batch, "logic: waiting for
# work" when idle).
my $workers = query($node,
	"SELECT count(*) FROM pg_stat_activity"
	  . " WHERE backend_type = 'courier logic worker'"
	  . "   AND datname = 'postgres' AND query LIKE 'logic%'");
cmp_ok($workers, '>=', 1,
	'logic workers are in pg_stat_activity with an activity naming the stage');
is(query($node,
	"SELECT count(*) FROM pg_stat_activity"
	  . " WHERE backend_type = 'courier logic worker'"
	  . "   AND query NOT LIKE 'logic%'"),
	'0', 'no logic worker shows an activity that does not name its stage');
is(query($node,
	"SELECT count(*) FROM pg_stat_activity"
	  . " WHERE backend_type = 'courier launcher'"),
	'1', 'exactly one launcher is running');

$node->stop;
done_testing();
