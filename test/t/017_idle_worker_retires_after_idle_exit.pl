
# 017_idle_worker_retires_after_idle_exit.pl
#	A worker above courier.logic_min_workers retires once it has been idle
#	for courier.worker_idle_exit, even when nothing wakes it: its sleep
#	must end when its idle time runs out, not only at courier.idle_wakeup
#	(1h here) or when some commit or signal happens to set its latch.
#
# Two workers run (min = max = 2); min is lowered to 1 by a reload, which
# wakes both while they have been idle for less than worker_idle_exit (2s),
# so neither may leave yet.  After that nothing wakes them: within a few
# seconds one must have retired on its own.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = courier_node(
	'idle_exit', logic_only => 1, conf => q{
courier.logic_min_workers = 2
courier.logic_max_workers = 2
courier.worker_idle_exit = '2s'
courier.idle_wakeup = '1h'
});

ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		'2', 30),
	'two logic workers run (logic_min_workers = 2)');

my $log_offset = log_offset($node);
query($node, 'ALTER SYSTEM SET courier.logic_min_workers = 1');
query($node, 'SELECT pg_reload_conf()');

ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		'1', 15),
	'one worker retires after worker_idle_exit (2s) with nothing waking it');
ok( $node->log_contains(
		qr/courier logic worker retiring after 2000 ms idle/, $log_offset),
	'the retiring worker logs its idle exit');

$node->stop;
done_testing();
