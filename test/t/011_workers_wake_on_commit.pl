
# 011_workers_wake_on_commit.pl
#	Workers sleep on their latch and a commit that queues work wakes them:
#	with courier.idle_wakeup = 1h an idle worker would not look for work
#	for an hour by itself, yet a one-order delay is applied within seconds.
#	A delay made in a transaction that rolls back leaves nothing queued and
#	nothing applied.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = courier_node(
	'wake', logic_only => 1, conf => "courier.idle_wakeup = '1h'");

is(register_orders($node, 1, 10), 10, 'register_orders registers 10 orders');

# Wait until the worker has found nothing to do and gone to sleep, so the
# delay below can only be applied if the commit wakes it.
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'"
		  . "   AND state = 'idle' AND query = 'logic: waiting for work'",
		'1', 30),
	'one logic worker is asleep waiting for work');

# A delay that rolls back: nothing queued, nothing recorded.
my ($ret, $out, $err) = $node->psql(
	'postgres', q{
	BEGIN;
	SELECT courier.delay_orders(ARRAY[1, 2, 3]::bigint[], 'rain', current_date + 5);
	ROLLBACK;});
is($ret, 0, 'delay_orders inside a rolled-back transaction runs without error');
is(query($node, 'SELECT count(*) FROM courier.work_items'),
	'0', 'a rolled-back delay leaves no work item queued');
is(query($node, 'SELECT count(*) FROM courier.requests'),
	'0', 'a rolled-back delay leaves no request');

# A committed one-order delay: the commit wakes the sleeping worker.
my $req = query($node,
	"SELECT courier.delay_orders(ARRAY[7]::bigint[], 'rain', current_date + 5)");
ok( poll_until(
		$node, "SELECT done FROM courier.request_status($req)",
		'1', 20),
	'a committed one-order delay is applied without waiting for idle_wakeup');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
	'1|1|0|0', 'request_status of the one-order request: 1 done');
is(query($node,
	"SELECT order_id, outcome FROM courier.delay_history WHERE request_id = $req"),
	'7|delayed', 'the history names order 7 as delayed');
is(query($node, "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"),
	'0', 'no logic work item is left');
is(query($node,
	"SELECT string_agg(order_id::text, ',' ORDER BY order_id) FROM courier.notices"),
	'7', 'exactly one notice, for order 7');
is(query($node,
	"SELECT count(*) FROM courier.orders"
	  . " WHERE promised_ship_date = current_date + 5"),
	'1', 'only order 7 has the new date: the rolled-back delay applied nothing');

$node->stop;
done_testing();
