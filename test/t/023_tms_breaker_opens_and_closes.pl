
# 023_tms_breaker_opens_and_closes.pl
#	The circuit breaker protects a failing TMS and courier's attempts:
#
#	- when every request fails (HTTP 500), courier.tms_breaker_threshold
#	  failures in a row open it (WARNING 'circuit breaker opened', once);
#	  while it is open sending stops: the mock sees at most one probe
#	  request per courier.tms_breaker_cooldown, and only requests that
#	  were sent are charged an attempt.  When the TMS recovers, the next
#	  probe closes it (LOG 'circuit breaker closed') and everything is
#	  delivered;
#	- when the TMS refuses courier's credentials (HTTP 401), the breaker
#	  opens at once, a WARNING about the credentials is logged, a
#	  NOTIFY courier_alerts reaches a listening session, and no attempt is
#	  charged however often it is probed; once the credentials are accepted
#	  again every notice is delivered on its first charged attempt.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $COOLDOWN = 1;    # seconds

my $mock = start_mock();
my $node = tms_node(
	'tms_breaker', $mock, conf => qq{
courier.tms_breaker_threshold = 10
courier.tms_breaker_cooldown = '${COOLDOWN}s'
courier.max_attempts = 1000
});

is(register_tms_orders($node, 1, 80), 80, 'register 80 orders');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier tms worker'",
		't', 30),
	'a tms worker runs');

# ---- a failing TMS
mock_control($mock, error_rate => 1.0, error_status => 500);
my $log = log_offset($node);
delay_tms($node, 1, 50, 10);

ok(poll_log($node, qr/circuit breaker opened: TMS requests keep failing/, $log, 30),
	'every request failing opens the breaker (WARNING in the log)');
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10, 'no request in flight'),
	'the requests in flight when it opened have finished');

# While open: at most one probe per cooldown, counted from now.
my $r0 = mock_stats($mock)->{requests};
my $t0 = time();
my $last_delta = 0;
ok( stays_true(
		sub {
			$last_delta = mock_stats($mock)->{requests} - $r0;
			return $last_delta <= 1 + int((time() - $t0) / $COOLDOWN);
		},
		3.5,
		'requests grow by at most one probe per cooldown'),
	"while open the mock sees at most one probe per ${COOLDOWN}s cooldown");
diag("requests while open: $r0 before, $last_delta more in 3.5 s");
cmp_ok($last_delta, '>=', 1, 'the breaker lets probes through after the cooldown');
cmp_ok($last_delta, '<=', 4, 'but no more than one per cooldown');

# Only what was sent was charged: each failed request (one message each)
# is one attempt on its pending notice, the messages held back by the
# breaker none.
ok( wait_for(
		sub {
			my $s = mock_stats($mock);
			$s->{in_flight} == 0
			  && query($node,
				"SELECT coalesce(sum(attempts), 0) FROM courier.notices"
				  . " WHERE status = 'pending'") == $s->{status_5xx};
		},
		10,
		'attempts charged == requests answered 500'),
	'the attempts charged equal the requests the mock failed');
is(query($node,
	"SELECT count(*) FROM courier.notices"
	  . " WHERE ship_date = current_date + 10 AND status = 'pending'"),
	'50', 'all 50 notices are still pending');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing went to courier.failures');
my $opened = () = slurp_file($node->logfile, $log) =~ /circuit breaker opened/g;
is($opened, 1, "the breaker's opening is logged once, not once per failed probe");

# Recovery.
$log = log_offset($node);
mock_control($mock, error_rate => 0);
ok(poll_log($node, qr/LOG:.*circuit breaker closed/, $log, 30),
	'a successful probe closes the breaker (LOG)');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 10 AND status = 'delivered'",
		'50', 60),
	'after it closes all 50 notices are delivered');
is(query($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'"),
	'0', 'the tms queue is empty: no notice is pending');
my $s = mock_stats($mock);
is("$s->{delivered}|$s->{duplicates}", '50|0',
	'the mock delivered 50 distinct ids, no duplicate');

# ---- refused credentials
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN courier_alerts');

mock_control($mock, unauthorized => JSON::PP::true);
$log = log_offset($node);
delay_tms($node, 51, 80, 10);

ok( poll_log(
		$node,
		qr/WARNING:.*circuit breaker opened: the TMS refused courier's credentials/,
		$log, 30),
	'HTTP 401 opens the breaker at once with a WARNING about the credentials');

my $heard = '';
ok( wait_for(
		sub {
			$heard .= $listener->query('SELECT 1');
			$heard =~ /Asynchronous notification "courier_alerts"/;
		},
		30,
		'a notification on courier_alerts'),
	'a session listening on courier_alerts is notified');
like($heard, qr/courier_alerts" with payload ".*"alert": "tms_unauthorized"/,
	'the alert names tms_unauthorized');
$listener->quit;

# Probes keep being refused; nothing is charged.
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10, 'no request in flight'),
	'the refused requests have finished');
my $u0 = mock_stats($mock)->{status_4xx};
ok(wait_for(sub { mock_stats($mock)->{status_4xx} > $u0 }, 10, 'another 401'),
	'after the cooldown a probe is refused again');
is(query($node, qq{
	SELECT count(*), coalesce(sum(attempts), 0)
	  FROM courier.notices WHERE status = 'pending'}),
	'30|0', 'the 30 notices stay queued (pending) with no attempt charged');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing went to courier.failures');
is(mock_stats($mock)->{delivered}, 50, 'the mock delivered nothing new');

# Credentials accepted again.
$log = log_offset($node);
mock_control($mock, unauthorized => JSON::PP::false);
ok(poll_log($node, qr/LOG:.*circuit breaker closed/, $log, 30),
	'once the credentials are accepted the breaker closes');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE order_id BETWEEN 51 AND 80 AND status = 'delivered'",
		'30', 60),
	'all 30 notices are delivered');
is(query($node,
	"SELECT count(*) FROM courier.notices"
	  . " WHERE order_id BETWEEN 51 AND 80 AND attempts = 1"),
	'30', 'each on its first charged attempt: the 401s cost none');
$s = mock_stats($mock);
is("$s->{delivered}|$s->{duplicates}", '80|0',
	'the mock delivered 80 distinct ids in all, no duplicate');

$node->stop;
done_testing();
