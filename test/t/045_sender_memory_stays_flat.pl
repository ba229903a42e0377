
# 045_sender_memory_stays_flat.pl
#	A tms worker sending signed requests (courier.tms_hmac_access_key and
#	courier.tms_hmac_secret set, one message per request) does not grow:
#	after a warm-up of 10,000 notices its memory (the "Grand total" that
#	pg_log_backend_memory_contexts() logs for it) grows by less than 1 MB
#	while it sends COURIER_MEMTEST_MESSAGES more (default 40,000; the
#	issue asked for 200,000: run with COURIER_MEMTEST_MESSAGES=200000).
#	Every notice is delivered, by the same worker process throughout.
#
# The old code (0.1) built each request's HMAC signature headers in
# TopMemoryContext and never freed them: several hundred bytes per
# request, about 20 MB for 40,000 messages, without end in a long-running
# sender.  Now bodies, headers and signatures live in a per-dispatch
# context that is reset every batch.  Before that, a worker's first signed
# request crashed it (signal 11, so the whole server restarted): with
# OpenSSL, pg_hmac_create registers with the current resource owner, and a
# sender has none while no transaction is open.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $WARMUP = 10_000;
my $MORE = $ENV{COURIER_MEMTEST_MESSAGES} // 40_000;
my $CHUNK = 100_000;    # courier.max_orders_per_request

my $mock = start_mock();
my $node = tms_node(
	'sender_memory', $mock, conf => q{
courier.tms_hmac_access_key = 'ak'
courier.tms_hmac_secret = 'sk'
courier.tms_bulk_size = 1
courier.tms_min_workers = 1
courier.tms_max_workers = 1
});

# send_notices(FIRST, LAST): register and delay the orders in chunks, then wait
# until the mock has delivered everything up to LAST and the notices say
# so.
sub send_notices
{
	my ($first, $last) = @_;
	for (my $lo = $first; $lo <= $last; $lo += $CHUNK)
	{
		my $hi = $lo + $CHUNK - 1 > $last ? $last : $lo + $CHUNK - 1;
		register_tms_orders($node, $lo, $hi);
		delay_tms($node, $lo, $hi, 5);
	}
	# A crashed worker takes the server down (restart_after_crash is off
	# in test clusters): stop waiting then.
	return wait_for(
		sub {
			mock_stats($mock)->{delivered} >= $last
			  || slurp_file($node->logfile) =~ /terminated by signal/;
		},
		180, "the mock has delivered $last messages")
	  && mock_stats($mock)->{delivered} >= $last
	  && poll_until($node,
		"SELECT count(*) FILTER (WHERE status = 'delivered'), count(*) FROM courier.notices",
		"$last|$last", 60);
}

# idle_tms_worker(): the pid of the one tms worker, once it waits for work.
sub idle_tms_worker
{
	return poll_for(
		$node, q{
		SELECT pid FROM pg_stat_activity
		 WHERE backend_type = 'courier tms worker' AND query = 'tms: waiting for work'},
		60);
}

# memory(PID): the Grand total, in bytes, that the worker logs for
# pg_log_backend_memory_contexts().
sub memory
{
	my ($pid) = @_;
	my $offset = log_offset($node);
	my $re = qr/\[$pid\] LOG:  Grand total: (\d+) bytes/;

	is(query($node, "SELECT pg_log_backend_memory_contexts($pid)"), 't',
		"pg_log_backend_memory_contexts($pid) signals the tms worker");
	return undef unless poll_log($node, $re, $offset, 30);
	my ($bytes) = slurp_file($node->logfile, $offset) =~ $re;
	return $bytes;
}

ok(send_notices(1, $WARMUP), "warm-up: all $WARMUP notices are delivered");
if (slurp_file($node->logfile) =~ /^(.*terminated by signal.*)$/m)
{
	fail("no server process crashes while sending signed requests: $1");
	$node->stop('immediate', fail_ok => 1);
	done_testing();
	exit;
}
pass('no server process crashed while sending signed requests');
my $pid = idle_tms_worker();
ok(defined $pid, 'the tms worker waits for work after the warm-up');
is(query($node, q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier tms worker'}),
	'1', 'exactly one tms worker runs');
my $before = memory($pid // 0);
ok(defined $before, "the tms worker logged its memory after $WARMUP messages");

ok(send_notices($WARMUP + 1, $WARMUP + $MORE),
	"then all $MORE further notices are delivered");
my $pid_after = idle_tms_worker();
is($pid_after, $pid, 'the same tms worker sent them all (it did not exit or restart)');
my $after = memory($pid // 0);
ok(defined $after, "the tms worker logged its memory after " . ($WARMUP + $MORE) . ' messages');

my $growth = ($after // 0) - ($before // 0);
note("tms worker memory (Grand total): $before bytes after $WARMUP messages, "
	  . "$after bytes after $MORE more: growth $growth bytes ("
	  . sprintf('%.1f', $growth / ($MORE || 1)) . ' bytes per message)');
cmp_ok($growth, '<', 1024 * 1024,
	"the tms worker's memory grows by less than 1 MB over $MORE signed requests");

my $stats = mock_stats($mock);
is($stats->{delivered}, $WARMUP + $MORE, 'the mock delivered every message once');
is($stats->{requests}, $WARMUP + $MORE, 'one request per message (tms_bulk_size = 1)');

$node->stop;
done_testing();
