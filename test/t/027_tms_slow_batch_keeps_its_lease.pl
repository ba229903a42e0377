
# 027_tms_slow_batch_keeps_its_lease.pl
#	A sender that is merely slow keeps its work: when the rate limit makes
#	a batch take longer than courier.lease_time (here 60 notices at 20/s,
#	3 s, against a 1 s lease, with two senders), the other sender must not
#	take the batch over and send it again, and every delivery must be
#	recorded.  Expected: all 60 delivered, each sent once (no duplicate at
#	the mock), one attempt each, nothing in courier.failures.
#
#	A lease that runs out while its holder is alive and sending turns into
#	duplicate sends, and the holder's outcomes are then discarded; with two
#	senders taking the batch from each other the notices can stay pending
#	for ever.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 60;

my $mock = start_mock();
my $node = tms_node(
	'tms_lease', $mock, conf => q{
courier.tms_rate_limit = 20
courier.lease_time = '1s'
courier.batch_size = 100
courier.tms_min_workers = 2
courier.tms_max_workers = 2
});

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier tms worker'",
		'2', 30),
	'two tms workers run');

delay_tms($node, 1, $N, 10);

# At 20/s the 60 take 3 s; 30 s is ample.
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 10 AND status = 'delivered'",
		"$N", 30),
	"all $N notices are delivered although the batch outlives its lease");
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
	'0', 'nothing went to courier.failures');
my $s = mock_stats($mock);
diag("mock: $s->{messages_received} messages received, $s->{delivered} delivered,"
	  . " $s->{duplicates} duplicates");
is("$s->{messages_received}|$s->{delivered}|$s->{duplicates}", "$N|$N|0",
	"the mock received each of the $N messages once: no re-send by the other sender");

$node->stop;
done_testing();
