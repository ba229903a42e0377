
# 012_kill_switch_and_pause.pl
#	The operator's switches reach running workers through ALTER SYSTEM +
#	pg_reload_conf(), without a restart: with courier.enabled = off (the
#	kill switch), or courier.pause_logic = on, a queued delay stays pending
#	while the workers report the switch as their activity; switched back,
#	the delay is applied.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = courier_node(
	'switches', logic_only => 1);

is(register_orders($node, 1, 2000), 2000, 'register_orders registers 2000 orders');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		't', 30),
	'a logic worker is running');

# switch_holds_work(GUC, HOLD_VALUE, RUN_VALUE, WHY, FIRST, LAST, DAYS)
sub switch_holds_work
{
	my ($guc, $hold, $run, $why, $first, $last, $days) = @_;
	my $n = $last - $first + 1;

	query($node, "ALTER SYSTEM SET $guc = $hold");
	query($node, 'SELECT pg_reload_conf()');

	# Every logic worker has seen the reload and says why it is stopped.
	ok( poll_until(
			$node,
			"SELECT count(*) > 0 AND bool_and(query = '$why')"
			  . "  FROM pg_stat_activity"
			  . " WHERE backend_type = 'courier logic worker'",
			't', 15),
		"with $guc = $hold the logic workers report '$why'");

	my $req = delay_orders($node, $first, $last, $days);

	# The commit woke the workers; each answered by reporting the switch
	# again.  Wait for that, then check nothing moved.
	ok( poll_until(
			$node,
			"SELECT count(*) > 0 AND bool_and(query = '$why')"
			  . "  FROM pg_stat_activity"
			  . " WHERE backend_type = 'courier logic worker'",
			't', 15),
		"after the delay is queued the workers still report '$why'");
	is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
		"$n|0|0|$n", "with $guc = $hold all $n orders stay pending");
	is(query($node, "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"),
		"$n", "with $guc = $hold the $n logic items stay queued");
	is(query($node, "SELECT count(*) FROM courier.delay_history WHERE request_id = $req"),
		'0', "with $guc = $hold no history is written");

	query($node, "ALTER SYSTEM SET $guc = $run");
	query($node, 'SELECT pg_reload_conf()');

	ok( poll_until(
			$node, "SELECT done FROM courier.request_status($req)",
			"$n", 60),
		"after $guc = $run the workers apply all $n delays");
	is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
		"$n|$n|0|0", "request_status after $guc = $run: all done");
	is(query($node,
		"SELECT count(*) FROM courier.notices WHERE ship_date = current_date + $days"),
		"$n", "one notice per order for the new date");
	is(query($node, "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"),
		'0', 'no logic item is left');
	ok( poll_until(
			$node,
			"SELECT count(*) FROM pg_stat_activity"
			  . " WHERE backend_type = 'courier logic worker'"
			  . "   AND query LIKE '%courier.%'",
			'0', 30),
		"no logic worker reports a switch once $guc = $run");
}

switch_holds_work('courier.enabled', 'off', 'on', 'courier.enabled is off',
	1, 1000, 10);
switch_holds_work('courier.pause_logic', 'on', 'off', 'courier.pause_logic is on',
	1001, 2000, 11);

$node->stop;
done_testing();
