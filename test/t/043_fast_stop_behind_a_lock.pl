
# 043_fast_stop_behind_a_lock.pl
#	A logic worker blocked in a row-lock wait does not hold up a fast
#	shutdown, and nothing is lost by it:
#	- a prepared transaction holds the row lock of order 1 (it keeps its
#	  locks when its session ends and across a restart, unlike an idle
#	  session, which the shutdown would simply terminate);
#	- a delay of orders 1..10 makes the logic worker wait on that lock
#	  (pg_stat_activity: wait_event_type Lock);
#	- pg_ctl stop -m fast finishes in well under its 60 s timeout (the
#	  test allows 20 s; it takes about a second);
#	- after a restart and ROLLBACK PREPARED the delay is applied to all 10
#	  orders, each exactly once.
#
# The old code (0.1) only set a flag in its SIGTERM handler and checked it
# between batches, so a worker waiting for a lock never saw the shutdown:
# pg_ctl stop -m fast waited for the lock, i.e. forever while the
# prepared transaction lived, and gave up after its 60 s timeout.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = courier_node(
	'fast_stop', logic_only => 1, conf => q{
max_prepared_transactions = 2
});

is(register_orders($node, 1, 10), 10, 'register_orders registers 10 orders');

# The row lock of order 1, held by a prepared transaction.
query($node, q{
BEGIN;
SELECT order_id FROM courier.orders WHERE order_id = 1 FOR UPDATE;
PREPARE TRANSACTION 'hold';
});
is(query($node, q{SELECT gid FROM pg_prepared_xacts}), 'hold',
	'the prepared transaction holding order 1 exists');

my $req = delay_orders($node, 1, 10, 10);
my $blocked = poll_for(
	$node, q{
	SELECT pid FROM pg_stat_activity
	 WHERE backend_type = 'courier logic worker' AND wait_event_type = 'Lock'},
	60);
ok(defined $blocked, 'a logic worker waits on a lock (the row of order 1)');
is(query($node, "SELECT done FROM courier.request_status($req)"), '0',
	'while it waits, nothing of the request is applied');

# The old code makes pg_ctl give up after PGCTLTIMEOUT; 30 s is enough to
# tell it apart and keeps the run short.
my $started = time();
my $stopped;
{
	local $ENV{PGCTLTIMEOUT} = 30;
	$stopped = $node->stop('fast', fail_ok => 1);
}
my $took = time() - $started;
note(sprintf('pg_ctl stop -m fast took %.1f s', $took));
ok($stopped, 'pg_ctl stop -m fast succeeds while the logic worker waits on the lock');
cmp_ok($took, '<', 20, 'the fast stop finishes in under 20 s (not after the 60 s timeout)');
$node->stop('immediate', fail_ok => 1) unless $stopped;

$node->start;
is(query($node, q{SELECT gid FROM pg_prepared_xacts}), 'hold',
	'after the restart the prepared transaction still holds order 1');
ok( poll_for(
		$node, q{
		SELECT pid FROM pg_stat_activity
		 WHERE backend_type = 'courier logic worker' AND wait_event_type = 'Lock'},
		60),
	'after the restart a logic worker takes the delay up again and waits on the lock');
is(query($node, "SELECT done FROM courier.request_status($req)"), '0',
	'nothing was applied while the lock was held');

query($node, q{ROLLBACK PREPARED 'hold'});
ok( poll_until(
		$node, "SELECT total, done, failed, pending FROM courier.request_status($req)",
		'10|10|0|0', 60),
	'once the lock is released the delay of all 10 orders is applied');
check_nothing_lost($node, $req, 1, 10, 10);

$node->stop;
done_testing();
