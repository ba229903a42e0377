
# 013_kill9_worker_loses_nothing.pl
#	A logic worker killed with SIGKILL in the middle of a 100,000-order
#	delay (the postmaster then restarts every backend) loses nothing and
#	does nothing twice: after the restart the launcher and new workers
#	finish the request by themselves, every order is applied exactly once,
#	and there is exactly one notice per order.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 100_000;

# PostgreSQL::Test::Cluster writes restart_after_crash = off; a crash test
# needs the postmaster to reinitialise after the kill.
my $node = courier_node(
	'kill9', logic_only => 1, conf => qq{
restart_after_crash = on
courier.batch_size = 1000
});

is(register_orders($node, 1, $N), $N, "register_orders registers $N orders");
my $req = delay_orders($node, 1, $N, 10);

# A logic worker while the request is at most half done, preferring one in the
# middle of a batch.
my $victim = poll_for(
	$node, qq{
	SELECT a.pid || '|' || s.done
	  FROM pg_stat_activity a, courier.request_status($req) s
	 WHERE a.backend_type = 'courier logic worker'
	   AND s.done BETWEEN 1 AND s.total / 2
	 ORDER BY a.state = 'active' DESC
	 LIMIT 1}, 60);
ok(defined $victim, 'a logic worker is found while the request is at most half done');
my ($pid, $done_before) = split /\|/, $victim // '0|0';
note("killing logic worker $pid with $done_before of $N done");

my $log_offset = log_offset($node);
is(kill('KILL', $pid), 1, "SIGKILL is delivered to logic worker $pid");

ok( poll_until(
		$node, "SELECT done FROM courier.request_status($req)",
		"$N", 120),
	"after the crash restart the workers bring done to $N");

ok( $node->log_contains(
		qr/background worker "courier logic worker" \(PID $pid\) was terminated by signal 9/,
		$log_offset),
	'the postmaster logged the killed worker');
ok( $node->log_contains(
		qr/all server processes terminated; reinitializing/, $log_offset),
	'the postmaster reinitialised after the kill');

check_nothing_lost($node, $req, 1, $N, 10);

is(query($node,
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier launcher'"),
	'1', 'the launcher runs again after the restart');

$node->stop;
done_testing();
