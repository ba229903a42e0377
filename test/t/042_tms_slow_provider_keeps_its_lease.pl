
# 042_tms_slow_provider_keeps_its_lease.pl
#	A provider that is merely slow does not cost a notice its lease: with
#	courier.lease_time = '2s', courier.tms_timeout at its 10 s default and
#	a provider that answers every request in 3 s, 100 notices sent by two
#	senders (50 requests in flight each) are all delivered, each on its
#	first attempt and sent exactly once: nothing in courier.failures, and
#	the provider receives 100 messages, delivers 100 and sees no duplicate.
#
#	A lease lasts max(courier.lease_time, 2 * (courier.tms_timeout + 1 s))
#	(here 22 s) and a sender starts no request once less than
#	courier.tms_timeout + 1 s of it is left, so a request in flight never
#	outlives the lease that covers it.
#
#	courier 0.1 leased for courier.lease_time alone (2 s) and stopped
#	starting requests after half of it: the other sender took over notices
#	whose requests were still on the wire, sent them again and charged the
#	holder's lost lease as an attempt.  Of 100 notices 52 were delivered
#	and 48 went to courier.failures ("attempts used up by senders that died
#	while sending it"), 16 of these accepted by the provider all the same;
#	the provider saw 48 duplicates.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 100;

my $mock = start_mock();
my $node = tms_node(
	'tms_slow_provider', $mock, conf => q{
courier.lease_time = '2s'
courier.tms_concurrency = 50
courier.tms_min_workers = 2
courier.tms_max_workers = 2
});

is(query($node, 'SHOW courier.tms_timeout'), '10s',
	'courier.tms_timeout is at its 10 s default');
is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier tms worker'",
		'2', 30),
	'two tms workers run');

mock_control($mock, latency_ms => 3000);
delay_tms($node, 1, $N, 10);

# Two waves of 3 s; 40 s leaves room for a loaded machine, and is far
# shorter than the 22 s lease plus a retry would take if a lease ran out.
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 10 AND status = 'delivered'",
		"$N", 40),
	"all $N notices are delivered although each request takes 3 s and"
	  . ' courier.lease_time is 2 s');
is(query($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'"),
	'0', 'the tms queue is empty: no notice is pending');
is(query($node,
	"SELECT count(*) FROM courier.notices"
	  . " WHERE ship_date = current_date + 10 AND attempts = 1"),
	"$N", 'each notice was delivered on its first attempt')
  or diag("attempts|notices:\n" . query($node,
	"SELECT attempts, count(*) FROM courier.notices"
	  . " WHERE ship_date = current_date + 10 GROUP BY 1 ORDER BY 1"));
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing went to courier.failures')
  or diag(query($node,
	'SELECT last_error, count(*) FROM courier.failures GROUP BY 1'));
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'the mock has no request in flight');
my $s = mock_stats($mock);
diag("mock: $s->{messages_received} messages received, $s->{delivered} delivered,"
	  . " $s->{duplicates} duplicates, $s->{max_in_flight} requests at most in flight");
is("$s->{messages_received}|$s->{delivered}|$s->{duplicates}", "$N|$N|0",
	"the provider received each of the $N messages once: no second sender took"
	  . ' over a request in flight');

$node->stop;
done_testing();
