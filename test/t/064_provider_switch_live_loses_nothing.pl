
# 064_provider_switch_live_loses_nothing.pl
#	Switching a live installation to another provider loses nothing and
#	sends nothing twice.  A backlog of 3,000 notices drains through NHN
#	AlimTalk, slowly (the mock answers after 150 ms), when
#	courier.tms_provider is switched to SENS SMS with ALTER SYSTEM (its
#	credentials, service id and sender number set in the same go) and one
#	pg_reload_conf():
#
#	- every notice reaches its customer's handset exactly once in total,
#	  by AlimTalk before the switch or by SMS after it (the mock's handset
#	  counters), none is lost, none fails, none is charged a second attempt;
#	- each notice records the provider that took it (channel alimtalk and
#	  an NHN request id, or channel sms and a SENS request id);
#	- the switch takes effect at the next request, not at the end of the
#	  batch a sender was sending: after the reload NHN sees no more than
#	  the requests that were already in flight;
#	- no configuration error is logged (no request went out with the new
#	  dialect and the old credentials, or the reverse).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $N = 3000;
my $CONCURRENCY = 2;
my $mock = start_provider_mock();
my $c = $mock->{creds};

# NHN AlimTalk, and no SENS credentials yet.
my $node = tms_node(
	'provider_switch', $mock,
	conf => provider_conf($mock, 'nhn_alimtalk') . qq{
courier.tms_hmac_access_key = ''
courier.tms_hmac_secret = ''
courier.sens_sms_service_id = ''
courier.sens_sms_from = ''
courier.tms_bulk_size = 20
courier.tms_concurrency = $CONCURRENCY
courier.tms_min_workers = 2
courier.tms_max_workers = 2
});

# Ordinary numbers only (5xxx): the mock's number patterns play no part.
is( register_tms_orders(
		$node, 1, $N,
		phone_sql => q{'010' || lpad(g::text, 4, '0') || '5' || lpad((g % 1000)::text, 3, '0')}),
	$N, "register $N orders");
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier tms worker'",
		'2', 30),
	'two tms workers run');
mock_control($mock, latency_ms => 150);
delay_tms($node, 1, $N, 10);
my $d10 = 'ship_date = current_date + 10';

ok( poll_until(
		$node,
		"SELECT count(*) FILTER (WHERE status = 'delivered') >= 200"
		  . "   AND count(*) FILTER (WHERE status = 'pending') >= 1000"
		  . "  FROM courier.notices WHERE $d10",
		't', 60),
	'the backlog drains through NHN AlimTalk: some delivered, most still pending');

# The switch, live: the new dialect's parameters and the dialect in one go.
my $log = log_offset($node);
query($node, qq{
	ALTER SYSTEM SET courier.tms_hmac_access_key = '$c->{sens_access_key}';
	ALTER SYSTEM SET courier.tms_hmac_secret = '$c->{sens_secret}';
	ALTER SYSTEM SET courier.sens_sms_service_id = '$c->{sens_sms_service_id}';
	ALTER SYSTEM SET courier.sens_sms_from = '$c->{sens_sms_from}';
	ALTER SYSTEM SET courier.tms_provider = 'sens_sms';
});
my $at_switch = query($node, qq{
	SELECT count(*) FILTER (WHERE status = 'delivered') || '|'
		   || count(*) FILTER (WHERE status = 'pending')
	  FROM courier.notices WHERE $d10});
my $nhn_at_switch = mock_stats($mock)->{nhn_alimtalk_sends};
query($node, 'SELECT pg_reload_conf()');
my ($delivered_before, $pending_before) = split /\|/, $at_switch;
diag("at the switch: $delivered_before delivered, $pending_before pending,"
	  . " $nhn_at_switch NHN requests");
cmp_ok($pending_before, '>=', 500, 'the switch comes with a backlog still pending');

ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d10 AND status = 'delivered'",
		"$N", 180),
	"all $N notices are delivered");
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 30, 'no request in flight'),
	'the mock has no request in flight');

my $s = mock_stats($mock);
diag("NHN AlimTalk requests: $s->{nhn_alimtalk_sends} ($nhn_at_switch at the switch);"
	  . " SENS SMS requests: $s->{sens_sms_sends}");
cmp_ok($s->{sens_sms_sends}, '>', 0, 'SENS SMS took over after the switch');
cmp_ok($s->{nhn_alimtalk_sends} - $nhn_at_switch, '<=', 2 * 2 * $CONCURRENCY,
	'after the reload NHN saw at most the requests already in flight (2 senders x '
	  . "$CONCURRENCY), not the rest of their batches");

is(query($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'"),
	'0', 'no notice is left pending');
is(query($node, 'SELECT count(*) FROM courier.failures'), '0', 'none failed');
is(query($node, "SELECT count(*) FROM courier.notices WHERE $d10 AND attempts <> 1"),
	'0', 'each notice was charged exactly one attempt: the switch cost none');
my $split = query($node, qq{
	SELECT count(*) FILTER (WHERE channel = 'alimtalk'
							AND provider_id ~ '^[0-9]{14}AT[0-9]{9}/[0-9]+\$'),
		   count(*) FILTER (WHERE channel = 'sms'
							AND provider_id ~ '^RSSA-[0-9]{14}-[0-9]{9}/[0-9]+\$'),
		   count(DISTINCT provider_id)
	  FROM courier.notices WHERE $d10});
my ($by_at, $by_sms, $distinct) = split /\|/, $split;
diag("delivered by NHN AlimTalk: $by_at, by SENS SMS: $by_sms");
is($by_at + $by_sms, $N, 'each notice records the provider that took it (channel, request id)');
is($distinct, $N, 'no two notices share a provider id');
cmp_ok($by_at, '>=', $delivered_before, 'what NHN took before the switch stays NHN\'s');
cmp_ok($by_sms, '>', 0, 'and SENS took the rest');

ok(wait_receipts_final($mock), 'every message reached its final state');
my $cust = mock_customers($mock);
is("$cust->{alimtalk}|$cust->{sms}|$cust->{lms}|$cust->{failed}|$cust->{refused}",
	"$by_at|$by_sms|0|0|0",
	'the providers delivered exactly what courier recorded, nothing failed or refused');
my $h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, "$d10 AND channel = 'alimtalk'"), alimtalk => 1) },
	0, 'each customer of the NHN part received exactly one AlimTalk and no SMS');
is(scalar @{ handset_mismatches($h, phones_of($node, "$d10 AND channel = 'sms'"), sms => 1) },
	0, 'each customer of the SENS part received exactly one SMS and no AlimTalk');
is(scalar(keys %$h), $N, "$N handsets received something: every customer");

my $after = slurp_file($node->logfile, $log);
unlike($after, qr/TMS configuration error/, 'no configuration error was logged around the switch');
unlike($after, qr/circuit breaker opened/, 'the breaker never opened');

$node->stop;
done_testing();
