
# 053_sender_overlaps_sql_and_network.pl
#	A sender leases its next batch while the current one is still on the
#	wire, and a stop in the middle of that spends no attempt and loses
#	nothing.
#
#	One tms worker, batches of 20 notices, 4 requests in flight, a provider
#	that answers in 100 ms: a batch takes 5 waves.  While the last wave of a
#	batch is in flight the worker leases the next (its SQL runs in the
#	dispatcher's wait, in a transaction committed before the wait goes
#	on), so at some moment the worker holds two leases (two distinct lease
#	ends on its notices) and is in no open transaction: pg_stat_activity
#	shows it "idle" (not "idle in transaction") while its requests fly.
#
#	Then a fast stop while it sends: the requests in flight finish and are
#	recorded, the batch leased ahead is released unsent.  No pending notice
#	is left leased, none was charged an attempt, none has an
#	outcome-unknown entry.  After a restart every notice is delivered
#	exactly once, on its first attempt.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 400;

my $mock = start_mock();
my $node = tms_node(
	'pipeline', $mock, conf => q{
courier.batch_size = 20
courier.tms_concurrency = 4
courier.tms_min_workers = 1
courier.tms_max_workers = 1
});

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
mock_control($mock, latency_ms => 100);
delay_tms($node, 1, $N, 10);

# Two leases held by one sender at once: the next batch was leased while
# the current one was on the wire.
ok( poll_until(
		$node,
		q{SELECT count(DISTINCT due_at) >= 2 FROM courier.notices
		   WHERE status = 'pending' AND leased_by IS NOT NULL},
		't', 30),
	'the sender holds the lease of its next batch while the current one is on the wire');
ok( poll_until(
		$node,
		q{SELECT count(*) > 0 FROM pg_stat_activity
		   WHERE backend_type = 'courier tms worker' AND query = 'tms: sending'
			 AND state = 'active' AND backend_xid IS NULL AND backend_xmin IS NULL},
		't', 30),
	'while sending, the sender holds no transaction (no xid, no snapshot)');

# Stop while sending: some delivered, some leased ahead, some not yet leased.
ok( poll_until(
		$node,
		q{SELECT count(*) BETWEEN 40 AND 320 FROM courier.notices WHERE status = 'delivered'},
		't', 30),
	'part of the notices are delivered');
$node->stop('fast');
# paused from the start, so what the stop left is read before a sender runs
$node->append_conf('postgresql.conf', 'courier.pause_tms = on');
$node->start;

is(query($node, q{
	SELECT count(*) FILTER (WHERE leased_by IS NOT NULL),
		   count(*) FILTER (WHERE attempts > 0),
		   count(*) FILTER (WHERE jsonb_array_length(errors) > 0)
	  FROM courier.notices WHERE status = 'pending'}),
	'0|0|0',
	'after the stop no pending notice is leased, charged or flagged outcome-unknown');

$node->append_conf('postgresql.conf', 'courier.pause_tms = off');
$node->reload;
mock_control($mock, latency_ms => 0);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE status = 'delivered'",
		"$N", 60),
	"after the restart all $N notices are delivered");
is(query($node, "SELECT count(*) FROM courier.notices WHERE attempts = 1"),
	"$N", 'each on its first attempt');
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'the mock has no request in flight');
my $s = mock_stats($mock);
is("$s->{messages_received}|$s->{duplicates}", "$N|0",
	"the provider received each of the $N notices exactly once");

$node->stop;
done_testing();
