
# 021_tms_faults_lose_nothing.pl
#	A TMS that fails a fifth of the requests with 500, hangs some past
#	courier.tms_timeout, resets connections, answers 200 with a garbage
#	body and throttles with 429 + Retry-After loses nothing: every one of
#	3,000 notices ends delivered or failed (never both, never neither), the
#	failed ones are in courier.failures with their reasons, and what
#	courier marks delivered is exactly what the provider delivered:
#
#	  courier-delivered is a subset of mock-delivered, itself a subset of
#	  all notices; an id the mock delivered that courier did not mark
#	  delivered belongs to a failed notice whose history says the outcome
#	  of a send was unknown; a duplicate at the mock (a re-send of an id it
#	  already had) can only come from a retry, so there are at most as
#	  many as retries.
#
#	With this mock a faulted request delivers nothing, so in practice the
#	two sets are equal and there are no duplicates; the test allows what a
#	real provider may legitimately cause and reports the figures.
#
#	Then each fault alone, deterministically: a 2xx with an unreadable
#	body, a connection reset after the request and no answer within
#	courier.tms_timeout are retried with every history entry flagged
#	outcome_unknown (the provider may well have taken the message), until
#	courier.max_attempts moves the notice to courier.failures; a connection
#	refused is retried without the flag (nothing was sent); a 429 with
#	Retry-After charges no attempt and is re-sent no sooner than asked.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 3000;
my $MAX_ATTEMPTS = 8;

my $mock = start_mock();

# The breaker is pinned down by 023; here a high threshold keeps its
# cooldowns out of the run time.
my $node = tms_node(
	'tms_faults', $mock, conf => qq{
courier.tms_timeout = '500ms'
courier.max_attempts = $MAX_ATTEMPTS
courier.tms_breaker_threshold = 100000
});

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");

mock_control(
	$mock,
	seed => 21,
	error_rate => 0.2,
	error_status => 500,
	hang_rate => 0.05,
	hang_ms => 3000,
	malformed_rate => 0.02,
	reset_rate => 0.02,
	retry_after_s => 1,
	burst_429 => 5);

delay_tms($node, 1, $N, 10);

# A second burst of 429s half way through, if the run is not over by then.
if (wait_for(sub { mock_stats($mock)->{delivered} >= $N / 2 }, 120,
		'half of the notices delivered'))
{
	mock_control($mock, burst_429 => 5);
}

ok( poll_until(
		$node,
		"SELECT (SELECT count(*) FROM courier.notices"
		  . "       WHERE ship_date = current_date + 10) = $N"
		  . "   AND NOT EXISTS (SELECT 1 FROM courier.notices WHERE status = 'pending')",
		't', 180),
	"all $N notices are written and the tms queue drains despite the faults");
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'the mock has no request in flight');

my $s = mock_stats($mock);
diag(sprintf(
		"mock: %d requests, %d messages received, %d delivered, %d duplicates,"
		  . " %d 5xx, %d hangs, %d resets, %d malformed, %d throttled",
		@$s{
			qw(requests messages_received delivered duplicates status_5xx
			  hangs resets malformed throttled_429)
		}));

# The faults did happen, or this test would prove nothing.
cmp_ok($s->{status_5xx}, '>', 0, 'the mock answered some requests 500');
cmp_ok($s->{hangs}, '>', 0, 'the mock hung some requests past the timeout');
cmp_ok($s->{resets}, '>', 0, 'the mock reset some connections');
cmp_ok($s->{malformed}, '>', 0, 'the mock sent some garbage 200 bodies');
cmp_ok($s->{throttled_429}, '>=', 5, 'the mock throttled with 429');

# Every notice ended delivered or failed.
my ($delivered, $failed, $other) = split /\|/, query($node, qq{
	SELECT count(*) FILTER (WHERE status = 'delivered'),
		   count(*) FILTER (WHERE status = 'failed'),
		   count(*) FILTER (WHERE status NOT IN ('delivered', 'failed'))
	  FROM courier.notices WHERE ship_date = current_date + 10});
diag("courier: $delivered delivered, $failed failed");
is($delivered + $failed, $N, "delivered + failed = $N: no notice is lost");
is($other, 0, 'no notice is left pending');

# The failed ones are in courier.failures, each once, with its reason and
# every attempt in its history; the delivered ones are not.
is(query($node, qq{
	SELECT count(*) FROM courier.notices n
	 WHERE n.ship_date = current_date + 10 AND n.status = 'failed'
	   AND (SELECT count(*) FROM courier.failures f
			 WHERE f.stage = 'tms' AND f.order_id = n.order_id
			   AND f.ship_date = n.ship_date
			   AND f.last_error <> ''
			   AND f.attempts = $MAX_ATTEMPTS
			   AND jsonb_array_length(f.errors) = $MAX_ATTEMPTS) = 1}),
	$failed,
	"each failed notice is in courier.failures once, with a reason and"
	  . " its $MAX_ATTEMPTS attempts");
is(query($node, qq{
	SELECT count(*) FROM courier.failures f
	 WHERE f.stage = 'tms'
	   AND NOT EXISTS (SELECT 1 FROM courier.notices n
					    WHERE n.order_id = f.order_id
						  AND n.ship_date = f.ship_date
						  AND n.status = 'failed')}),
	'0', 'every tms failure belongs to a notice marked failed');
is(query($node, qq{
	SELECT count(*) FROM courier.notices n JOIN courier.failures f
		   ON f.order_id = n.order_id AND f.ship_date = n.ship_date
	 WHERE n.status = 'delivered'}),
	'0', 'no notice is both delivered and failed');

# Retries happened, within the limit, and show in the delivered notices.
my ($retried, $max_att, $resends) = split /\|/, query($node, qq{
	SELECT count(*) FILTER (WHERE attempts > 1), max(attempts),
		   coalesce(sum(attempts - 1), 0)
	  FROM courier.notices
	 WHERE ship_date = current_date + 10 AND status = 'delivered'});
cmp_ok($retried, '>', 0, 'some notices were delivered on a retry');
cmp_ok($max_att, '<=', $MAX_ATTEMPTS,
	"no delivered notice took more than $MAX_ATTEMPTS attempts");
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE ship_date = current_date + 10 AND status = 'delivered'
	   AND (sent_at IS NULL OR http_status <> 200 OR provider_id IS NULL)}),
	'0', 'every delivered notice has sent_at, HTTP 200 and a provider id');

# Courier and the provider agree on what was delivered.
my @mock_list = @{ mock_delivered($mock) };
my %mock_ids = map { $_ => 1 } @mock_list;
my %all = map { $_ => 1 } @{ notice_keys($node, 'ship_date = current_date + 10') };
my @courier_delivered =
  @{ notice_keys($node, "ship_date = current_date + 10 AND status = 'delivered'") };
my %unknown_failed = map { $_ => 1 } @{
	notice_keys(
		$node, q{ship_date = current_date + 10 AND status = 'failed'
		  AND EXISTS (SELECT 1 FROM courier.failures f,
							 jsonb_array_elements(f.errors) e
					   WHERE f.order_id = notices.order_id
						 AND f.ship_date = notices.ship_date
						 AND (e->>'outcome_unknown')::boolean)})
};

is(scalar(grep { !$mock_ids{$_} } @courier_delivered),
	0, 'every notice courier marks delivered was delivered by the mock');
is(scalar(grep { !$all{$_} } keys %mock_ids),
	0, 'every id the mock delivered is a notice');
my %cd = map { $_ => 1 } @courier_delivered;
my @mock_only = grep { !$cd{$_} } keys %mock_ids;
diag(scalar(@mock_only)
	  . ' ids delivered by the mock but not marked delivered by courier');
is(scalar(grep { !$unknown_failed{$_} } @mock_only),
	0,
	'an id the mock delivered but courier did not mark delivered is a failed'
	  . ' notice with an outcome_unknown attempt');
cmp_ok($s->{duplicates}, '<=', $resends,
	'duplicates at the mock are at most the retries courier made');
is(scalar(@mock_list) . '|' . scalar(keys %mock_ids), "$s->{delivered}|$s->{delivered}",
	'the mock delivered each id once');

# Deterministic: each kind of fault alone, until the attempts run out.
# exhausts(LABEL, ORDER, DAYS, UNKNOWN, ERROR_LIKE, HTTP_STATUS, RECEIVED)
#	The notice of ORDER for today + DAYS ends in courier.failures after
#	max_attempts attempts, every history entry flagged outcome_unknown
#	(UNKNOWN true) or none (false), last_error LIKE ERROR_LIKE and
#	last_http_status HTTP_STATUS ('' for none), and the mock received
#	the message RECEIVED times, or between RECEIVED->[0] and RECEIVED->[1]
#	times.
sub exhausts
{
	my ($label, $order, $days, $unknown, $error_like, $http, $received) = @_;
	my $where = "order_id = $order AND ship_date = current_date + $days";
	my $flag = $unknown ? 'bool_and' : 'NOT bool_or';

	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.failures WHERE stage = 'tms' AND $where",
			'1', 60),
		"$label: the notice ends in courier.failures");
	is(query($node, qq{
		SELECT f.attempts, jsonb_array_length(f.errors), f.last_http_status,
			   f.last_error LIKE '$error_like',
			   (SELECT $flag(coalesce((e->>'outcome_unknown')::boolean, false))
				  FROM jsonb_array_elements(f.errors) e)
		  FROM courier.failures f WHERE f.stage = 'tms' AND $where}),
		"$MAX_ATTEMPTS|$MAX_ATTEMPTS|$http|t|t",
		"$label: $MAX_ATTEMPTS attempts in the history, "
		  . ($unknown ? 'every one' : 'none') . ' flagged outcome_unknown, '
		  . ($error_like eq '%' ? 'an error recorded'
			  : "last_error like '$error_like'"));
	is(query($node, "SELECT status FROM courier.notices WHERE $where"),
		'failed', "$label: the notice is marked failed");
	my $got = mock_stats($mock)->{messages_received};
	if (ref $received)
	{
		ok($got >= $received->[0] && $got <= $received->[1],
			"$label: the mock received it $received->[0] to $received->[1] times")
		  or diag("received $got times");
	}
	else
	{
		is($got, $received,
			"$label: the mock received it $received times, then no more");
	}
	return;
}

mock_reset($mock);
mock_control($mock, malformed_rate => 1.0);
delay_tms($node, 1, 1, 11);
exhausts('garbage 200 body', 1, 11, 1, '%unreadable%', '200', $MAX_ATTEMPTS);

# libcurl re-sends a request by itself when a kept-alive connection it
# reused is closed without an answer, on the next connection of its pool,
# which may be another such one: up to 5 times (libcurl's CONN_MAX_RETRIES)
# within one attempt, under the same idempotency key.  (CI once saw 17
# receptions of 8 attempts.)  A provider without an idempotency key gets
# connections of their own instead (t/068).
mock_reset($mock);
mock_control($mock, reset_rate => 1.0);
delay_tms($node, 2, 2, 11);
exhausts('connection reset after the request', 2, 11, 1, '%', '',
	[ $MAX_ATTEMPTS, 6 * $MAX_ATTEMPTS ]);

mock_reset($mock);
mock_control($mock, hang_rate => 1.0, hang_ms => 3000);
delay_tms($node, 3, 3, 11);
exhausts('no answer within courier.tms_timeout', 3, 11, 1, '%Timeout%', '',
	$MAX_ATTEMPTS);

# Deterministic: a 429 with Retry-After releases the notice without
# charging an attempt, and it is not sent again before Retry-After.
mock_reset($mock);
mock_control($mock, burst_429 => 1, retry_after_s => 1);
delay_tms($node, 4, 4, 11);
ok( poll_until(
		$node,
		"SELECT status FROM courier.notices"
		  . " WHERE order_id = 4 AND ship_date = current_date + 11",
		'delivered', 30),
	'a notice throttled once with 429 is delivered');
is(query($node, qq{
	SELECT attempts, http_status,
		   sent_at - created_at >= interval '900 ms'
	  FROM courier.notices
	 WHERE order_id = 4 AND ship_date = current_date + 11}),
	'1|200|t',
	'the 429 charged no attempt, and the re-send waited for Retry-After (1 s)');
my $t = mock_stats($mock);
is("$t->{throttled_429}|$t->{messages_received}|$t->{delivered}", '1|2|1',
	'the mock throttled it once and delivered it on the second request');
is(query($node,
	"SELECT count(*) FROM courier.failures WHERE ship_date = current_date + 11"
	  . " AND order_id = 4"),
	'0', 'the throttled notice is not in courier.failures');

# A connection refused sent nothing: retried, but not outcome_unknown.
my $gone = start_mock();
stop_mock($gone);
mock_reset($mock);
query($node,
	"ALTER SYSTEM SET courier.tms_url = 'http://127.0.0.1:$gone->{port}/send'");
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.tms_url', "http://127.0.0.1:$gone->{port}/send", 30),
	'courier.tms_url points at a closed port after a reload');
delay_tms($node, 5, 5, 11);
exhausts('connection refused', 5, 11, 0, '%connect%', '', 0);

$node->stop;
done_testing();
