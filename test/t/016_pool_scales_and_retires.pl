
# 016_pool_scales_and_retires.pl
#	The launcher grows the logic pool while the backlog is large and never
#	past courier.logic_max_workers; once the queue is drained the workers
#	above courier.logic_min_workers retire after courier.worker_idle_exit.
#	When max_worker_processes has no free slot, the launcher warns ("no free
#	background worker slot") and the workers it has still drain the queue.
#
# courier.idle_wakeup keeps its default (10s): an idle worker decides to
# retire only when it wakes up, so the shrink is polled with a deadline
# well above idle_wakeup + worker_idle_exit.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $N = 200_000;

my $node = courier_node(
	'pool', logic_only => 1, conf => q{
courier.logic_min_workers = 1
courier.logic_max_workers = 3
courier.worker_idle_exit = '500ms'
courier.batch_size = 1000
max_parallel_workers = 0
});

# drain_watching_workers(TIMEOUT, REQUEST_ID...)
#	Poll every 100 ms until every request is done; returns the most logic
#	workers seen running at once, or undef when the deadline passes.
sub drain_watching_workers
{
	my ($timeout, @reqs) = @_;
	my $all_done = join(' AND ',
		map { "(SELECT done = total FROM courier.request_status($_))" } @reqs);
	my $sql = "SELECT (SELECT count(*) FROM pg_stat_activity"
	  . "  WHERE backend_type = 'courier logic worker'), $all_done";
	my $deadline = time() + $timeout;
	my $most = 0;

	while (1)
	{
		my ($out, $err) = ('', '');
		$node->psql('postgres', $sql, stdout => \$out, stderr => \$err);
		my ($workers, $done) = split /\|/, $out;
		$most = $workers if defined $workers && $workers =~ /^\d+$/ && $workers > $most;
		return $most if defined $done && $done eq 't';
		if (time() > $deadline)
		{
			diag("requests @reqs not done after ${timeout}s: $out $err");
			return undef;
		}
		usleep(100_000);
	}
}

is(register_orders($node, 1, $N), $N, "register_orders registers $N orders");
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		'1', 30),
	'with an empty queue exactly logic_min_workers (1) worker runs');

# ---- the pool grows under a backlog, up to the maximum, then shrinks
my $log_offset = log_offset($node);
my @reqs = (delay_orders($node, 1, 100_000, 10),
	delay_orders($node, 100_001, $N, 10));
my $most = drain_watching_workers(120, @reqs);
ok(defined $most, "the pool drains the $N queued items");
cmp_ok($most // 0, '>', 1,
	'more than one logic worker runs at some point under the backlog');
cmp_ok($most // 99, '<=', 3, 'never more than logic_max_workers (3) run');
is(query($node, "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"),
	'0', 'no logic item is left');
is(query($node, 'SELECT count(*) FROM courier.delay_history'),
	"$N", "$N history rows");

ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		'1', 30),
	'after the queue drains the pool shrinks back to exactly 1 worker');
ok( $node->log_contains(
		qr/courier logic worker retiring after 500 ms idle/, $log_offset),
	'the workers above the minimum log their retirement');

# ---- no free max_worker_processes slot: warn, keep draining
# max_worker_processes = 4 leaves 2 slots for dynamic workers: the courier
# launcher and the logical replication launcher take the other two
# (autovacuum does not count; parallel query is off above).
query($node, 'ALTER SYSTEM SET courier.logic_max_workers = 16');
$node->append_conf('postgresql.conf', 'max_worker_processes = 4');
$node->restart;
is(query($node, 'SHOW max_worker_processes'), '4', 'max_worker_processes is 4');
is(query($node,
	"SELECT count(*) FROM pg_stat_activity"
	  . " WHERE backend_type IN ('courier launcher', 'logical replication launcher')"),
	'2', 'the two static workers hold 2 of the 4 slots');

$log_offset = log_offset($node);
@reqs = (delay_orders($node, 1, 100_000, 20),
	delay_orders($node, 100_001, $N, 20));

ok( poll_log(
		$node,
		qr/WARNING:  courier launcher could not start a logic worker: no free background worker slot/,
		$log_offset, 60),
	'the launcher warns that no background worker slot is free');
$most = drain_watching_workers(120, @reqs);
ok(defined $most, "the workers that could start drain the $N new items");
cmp_ok($most // 99, '<=', 2,
	'no more logic workers run than max_worker_processes leaves free (2)');
ok( $node->log_contains(
		qr/HINT:  Raise max_worker_processes \(currently 4\) or lower courier\.logic_max_workers\./,
		$log_offset),
	'the warning hints at max_worker_processes and logic_max_workers');
is(query($node,
	"SELECT count(*), count(DISTINCT order_id) FROM courier.notices"
	  . " WHERE ship_date = current_date + 20"),
	"$N|$N", "one notice per order for the second date ($N)");
is(query($node, "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"),
	'0', 'no logic item is left');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing failed');
is(query($node,
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier launcher'"),
	'1', 'the launcher is still running');

$node->stop;
done_testing();
