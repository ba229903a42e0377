
# 020_tms_happy_path_exactly_once.pl
#	With a healthy TMS, a bulk delay of 5,000 orders becomes 5,000 notices
#	sent by the tms workers alone, each exactly once: the mock receives
#	5,000 messages, delivers 5,000 distinct ids (exactly the keys of the
#	notices) and sees no duplicate; every notice records its delivery (sent
#	at, provider id, HTTP 200, channel sms, one attempt) and the queue ends
#	empty.  Then, with courier.tms_bulk_size = 100 set by ALTER SYSTEM and a
#	reload, another 5,000 go out in bulk requests, again exactly once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 5000;

my $mock = start_mock('--idempotency-header', 'Idempotency-Key');
my $node = tms_node('tms_happy', $mock);

# check_round(DAYS, STATS_BEFORE, LABEL): the notices of today + DAYS are
# all delivered exactly once; returns the mock's counters afterwards.
sub check_round
{
	my ($days, $before, $label) = @_;
	my $date = "ship_date = current_date + $days";

	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices"
			  . " WHERE $date AND status = 'delivered'",
			"$N", 120),
		"$label: the workers deliver all $N notices");
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE status = 'pending'",
			'0', 30),
		"$label: no notice is left pending (the tms queue is empty)");
	is(query($node, "SELECT count(*) FROM courier.notices WHERE $date"),
		"$N", "$label: one notice per order, $N in all");
	is(query($node, qq{
		SELECT count(*), count(DISTINCT provider_id)
		  FROM courier.notices
		 WHERE $date AND sent_at IS NOT NULL AND provider_id LIKE 'tms-%'
		   AND http_status = 200 AND channel = 'sms' AND attempts = 1}),
		"$N|$N",
		"$label: every notice has sent_at, its own provider id, HTTP 200,"
		  . " channel sms and 1 attempt");

	ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 30,
			'mock has no request in flight'),
		"$label: the mock has no request in flight");
	my $s = mock_stats($mock);
	is($s->{messages_received} - $before->{messages_received}, $N,
		"$label: the mock received exactly $N messages (none sent twice)");
	is($s->{delivered} - $before->{delivered}, $N,
		"$label: the mock delivered $N new ids");
	is($s->{duplicates}, 0, "$label: the mock saw no duplicate id");
	is($s->{rejected}, 0, "$label: the mock rejected nothing");
	is($s->{missing_idempotency_key}, 0,
		"$label: every request carried the Idempotency-Key header");
	is($s->{status_2xx}, $s->{requests},
		"$label: every request was answered 2xx");
	return $s;
}

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier tms worker'",
		't', 30),
	'the launcher runs a tms worker');

my $zero = mock_stats($mock);
delay_tms($node, 1, $N, 10);
my $s1 = check_round(10, $zero, 'one message per request');
is($s1->{requests}, $N,
	"with courier.tms_bulk_size = 1 each of the $N messages has its own request");

# The ids the mock delivered are exactly the notices' idempotency keys.
my $keys = notice_keys($node, 'ship_date = current_date + 10');
is_deeply([ sort @{ mock_delivered($mock) } ], $keys,
	'the mock delivered exactly the keys dn-<order>-<YYYYMMDD> of the notices');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing is in courier.failures');

# Bulk: 100 messages per request, set while the workers run.
query($node, 'ALTER SYSTEM SET courier.tms_bulk_size = 100');
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.tms_bulk_size', '100', 30),
	'courier.tms_bulk_size = 100 after the reload');

delay_tms($node, 1, $N, 11);
my $s2 = check_round(11, $s1, 'bulk of 100');
my $bulk_requests = $s2->{requests} - $s1->{requests};
diag("bulk of 100: $N messages in $bulk_requests requests");
cmp_ok($bulk_requests, '<=', $N / 50,
	"with courier.tms_bulk_size = 100 the $N messages go in at most "
	  . ($N / 50) . ' requests');
cmp_ok($bulk_requests, '>=', $N / 100,
	'and at least ' . ($N / 100) . ' requests (no more than 100 messages each on average)');
is($s2->{delivered}, 2 * $N,
	'the mock delivered ' . (2 * $N) . ' distinct ids over both rounds');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'still nothing in courier.failures');

$node->stop;
done_testing();
