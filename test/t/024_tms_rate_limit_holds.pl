
# 024_tms_rate_limit_holds.pl
#	courier.tms_rate_limit is one budget shared by all senders: with a
#	limit of 500 messages/s and two tms workers sending at the same time
#	(batches of 200), 2,000 notices reach the mock at no more than 500/s
#	(+15%), apart from the initial burst the token bucket allows (a tenth
#	of a second's worth).  The achieved rate is measured by the mock (first
#	and last delivery) and reported.  Nothing is lost or duplicated.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 2000;
my $RATE = 500;
my $BURST = $RATE / 10;    # the bucket's capacity: 100 ms of the rate

my $mock = start_mock();
my $node = tms_node(
	'tms_rate', $mock, conf => qq{
courier.tms_rate_limit = $RATE
courier.tms_min_workers = 2
courier.tms_max_workers = 2
courier.batch_size = 200
});

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier tms worker'",
		'2', 30),
	'two tms workers run');

delay_tms($node, 1, $N, 10);

# Small batches spread the notices over both workers: the budget is shared
# only if both send at once.
ok( wait_for(
		sub {
			query($node,
				"SELECT count(*) FROM pg_stat_activity"
				  . " WHERE backend_type = 'courier tms worker'"
				  . "   AND query = 'tms: sending'") == 2;
		},
		20,
		'both tms workers sending at once'),
	'both tms workers are sending at the same time');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 10 AND status = 'delivered'",
		"$N", 60),
	"all $N notices are delivered");

my $s = mock_stats($mock);
is("$s->{delivered}|$s->{duplicates}", "$N|0",
	"the mock delivered $N distinct ids, no duplicate");

my $span = ($s->{last_delivery_us} - $s->{first_delivery_us}) / 1e6;
my $rate = $span > 0 ? $s->{delivered} / $span : 0;
my $steady = $span > 0 ? ($s->{delivered} - $BURST) / $span : 0;
diag(sprintf(
		"rate limit %d/s, 2 workers: %d messages in %.3f s = %.1f/s"
		  . " (%.1f/s after the %d-message burst)",
		$RATE, $s->{delivered}, $span, $rate, $steady, $BURST));

cmp_ok($span, '>', 0, 'the mock timed the deliveries');
cmp_ok($steady, '<=', $RATE * 1.15,
	"the achieved rate, less the initial burst of $BURST, is at most"
	  . " $RATE/s + 15%");
cmp_ok($rate, '>=', $RATE * 0.5,
	'and the limit does not throttle to less than half of it');

$node->stop;
done_testing();
