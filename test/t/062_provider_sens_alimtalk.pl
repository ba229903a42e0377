
# 062_provider_sens_alimtalk.pl
#	courier speaking Naver Cloud SENS AlimTalk v2 (courier.tms_provider =
#	'sens_alimtalk', set in postgresql.conf from the start) to the mock,
#	which checks the access key and the HMAC signature of every request,
#	with bulk requests (courier.tms_bulk_size = 50):
#
#	1. happy path: every notice reaches its customer's handset exactly once
#	   as an AlimTalk, is marked delivered with provider_id
#	   requestId/messageId and channel alimtalk, and SENS holds for it the
#	   template of its variant (COURIER_DELAY, COURIER_DELAY_V2 for the
#	   notice_v2 rollout) and the text rendered from courier.notice_template
#	   (or _v2), with no SMS failover asked (courier.alimtalk_fallback =
#	   none);
#	2. SENS judges no recipient at send time: numbers ending 2019 (phone
#	   number error) and 3019 (not a KakaoTalk user) are accepted, marked
#	   delivered, and reach no handset; requests answered HTTP 500 are
#	   retried, each notice charged once per failed request that carried it,
#	   and delivered exactly once; a notice whose every request fails ends
#	   in courier.failures after courier.max_attempts with tms:http_500;
#	3. a wrong secret (the signature does not match: HTTP 401): the breaker
#	   opens, an alert is raised and logged, no attempt is charged; once
#	   postgresql.conf has the right secret again and is reloaded,
#	   everything is delivered exactly once;
#	5. a template that is not approved (the mock's HTTP 400): configuration,
#	   the breaker opens with SENS's words in the log, no attempt is
#	   charged; fixed, everything goes out once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 300;
my $mock = start_provider_mock();
my $node = tms_node(
	'sens_alimtalk', $mock,
	conf => provider_conf($mock, 'sens_alimtalk') . q{
courier.tms_bulk_size = 50
courier.max_attempts = 20
courier.tms_breaker_cooldown = '500ms'
courier.rollout_notice_v2 = 50
courier.notice_template = '[{product}] Order {order_id}: shipping is delayed ({reason}). New ship date: {new_ship_date}.'
courier.notice_template_v2 = '[{product}] Sorry! Order {order_id} now ships {new_ship_date}: {reason}.'
});
my $service = $mock->{creds}{sens_alimtalk_service_id};

is(query($node, 'SHOW courier.tms_provider'), 'sens_alimtalk',
	'courier.tms_provider is sens_alimtalk from postgresql.conf');

# ---- 1. happy path, in bulk
is(register_tms_orders($node, 1, $N), $N, "register $N orders");
delay_tms($node, 1, $N, 10);
my $d10 = 'ship_date = current_date + 10';

ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d10 AND status = 'delivered'",
		"$N", 90),
	"all $N notices are delivered");
is(query($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'"),
	'0', 'no notice is left pending');
is(query($node, 'SELECT count(*) FROM courier.failures'), '0', 'nothing failed');
is(query($node, qq{
	SELECT count(*), count(DISTINCT provider_id)
	  FROM courier.notices
	 WHERE $d10 AND provider_id ~ '^RATA-[0-9]{14}-[0-9]{9}/[0-9a-f-]{36}\$'
	   AND channel = 'alimtalk' AND http_status = 202 AND attempts = 1
	   AND sent_at IS NOT NULL}),
	"$N|$N",
	'each notice has its own provider_id requestId/messageId, channel alimtalk,'
	  . ' HTTP 202 and 1 attempt');
my $s = mock_stats($mock);
my $requests = query($node,
	"SELECT count(DISTINCT split_part(provider_id, '/', 1)) FROM courier.notices WHERE $d10");
diag("$N notices in $requests requests ($s->{sens_alimtalk_sends} sends)");
cmp_ok($requests, '<=', $N / 10, "the $N notices went in bulk: at most " . ($N / 10) . ' requests');
is($s->{sens_alimtalk_sends}, $requests, 'the mock saw exactly those send requests');
is(query($node, qq{
	SELECT count(*) FILTER (WHERE variant = 'v1') > 0 AND count(*) FILTER (WHERE variant = 'v2') > 0
	  FROM courier.notices WHERE $d10}),
	't', 'the notice_v2 rollout gave both variants');

# What SENS holds for each message (its query API, signed).
my %expected;
my %held;
for my $row (split /\n/, query($node, qq{
	SELECT split_part(provider_id, '/', 2), customer_phone,
		   CASE variant WHEN 'v2' THEN 'COURIER_DELAY_V2' ELSE 'COURIER_DELAY' END,
		   CASE variant
			 WHEN 'v2' THEN format('[%s] Sorry! Order %s now ships %s: %s.', product_name,
								   order_id, to_char(ship_date, 'YYYY-MM-DD'), reason)
			 ELSE format('[%s] Order %s: shipping is delayed (%s). New ship date: %s.',
						 product_name, order_id, reason, to_char(ship_date, 'YYYY-MM-DD'))
		   END
	  FROM courier.notices WHERE $d10}))
{
	my ($mid, $phone, $code, $text) = split /\|/, $row, 4;
	my $m = sens_query($mock, "/alimtalk/v2/services/$service/messages/$mid");

	$expected{$mid} = "$phone $code $text false";
	$held{$mid} = join(' ', $m->{to} // '?', $m->{templateCode} // '?',
		$m->{content} // '?', ($m->{useSmsFailover} ? 'true' : 'false'));
}
is(scalar(keys %held), $N, "SENS was asked about $N messages");
is_deeply(\%held, \%expected,
	'each message carried its variant\'s template code and its rendered text, no failover');

ok(wait_receipts_final($mock), 'the AlimTalks reached their final state');
my $c = mock_customers($mock);
is("$c->{alimtalk}|$c->{sms}|$c->{lms}|$c->{fallback_sms}|$c->{fallback_lms}|$c->{failed}",
	"$N|0|0|0|0|0", "the customers received $N AlimTalks and nothing else");
is(scalar @{ handset_mismatches(mock_handsets($mock), phones_of($node, $d10), alimtalk => 1) },
	0, 'every customer received exactly one AlimTalk');

# ---- 2. numbers SENS accepts but cannot reach; failed requests retried
my $mix = q{'010' || lpad(g::text, 4, '0') ||
	CASE g % 4 WHEN 0 THEN '2019' WHEN 1 THEN '3019'
	ELSE '5' || lpad((g % 1000)::text, 3, '0') END};
is(register_tms_orders($node, 1001, 1100, phone_sql => $mix),
	100, 'register 100 orders whose numbers choose the outcome');
my $before = mock_customers($mock);
my $s5 = mock_stats($mock)->{status_5xx};
mock_control($mock, error_rate => 1.0, error_status => 500);
delay_tms($node, 1001, 1100, 11);
my $d11 = 'ship_date = current_date + 11';

ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d11 AND status = 'pending' AND attempts >= 1",
		'100', 60),
	'SENS answering HTTP 500, every notice is charged an attempt and stays pending');
mock_control($mock, error_rate => 0);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d11 AND status = 'delivered'",
		'100', 90),
	'once SENS answers again all 100 are delivered (SENS accepts every number)');
is(query($node, "SELECT count(*) FROM courier.failures WHERE $d11"), '0', 'none failed');
cmp_ok(mock_stats($mock)->{status_5xx} - $s5, '>=', 2, 'SENS answered HTTP 500 to requests');

my $ok = received_counts($mock, 202);
my $err = received_counts($mock, 500);
my @wrong;
for my $row (split /\n/, query($node,
	"SELECT customer_phone, attempts FROM courier.notices WHERE $d11"))
{
	my ($phone, $attempts) = split /\|/, $row;
	push @wrong, "$phone: $attempts attempts, " . ($err->{$phone} // 0) . ' x 500, '
	  . ($ok->{$phone} // 0) . ' x 202'
	  unless ($ok->{$phone} // 0) == 1
	  && ($err->{$phone} // 0) >= 1
	  && $attempts == ($err->{$phone} // 0) + 1;
}
is(scalar @wrong, 0,
	'each notice was accepted once, after as many HTTP 500s as it was charged attempts')
  or diag("@wrong[0 .. ($#wrong < 4 ? $#wrong : 4)]");

ok(wait_receipts_final($mock), 'the AlimTalks reached their final state');
my $h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone ~ '5[0-9]{3}\$'"),
			alimtalk => 1) },
	0, 'each ordinary number received exactly one AlimTalk');
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone !~ '5[0-9]{3}\$'")) },
	0, 'the 2019 and 3019 numbers received nothing (no failover asked)');
$c = mock_customers($mock);
is(($c->{alimtalk} - $before->{alimtalk}) . '|' . ($c->{failed} - $before->{failed})
	  . '|' . ($c->{refused} - $before->{refused}),
	'50|50|0', 'SENS: 50 delivered, 50 failed after acceptance (2019, 3019), none refused');

# A notice whose every request fails: courier.max_attempts, then failures.
query($node, 'ALTER SYSTEM SET courier.max_attempts = 3');
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.max_attempts', '3', 30), 'courier.max_attempts = 3');
is(register_tms_orders($node, 1201, 1205, phone_prefix => '0103'), 5, 'register 5 orders');
mock_control($mock, error_rate => 1.0, error_status => 500);
delay_tms($node, 1201, 1205, 11);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.failures WHERE order_id BETWEEN 1201 AND 1205",
		'5', 60),
	'with every request failing, the 5 notices end in courier.failures');
mock_control($mock, error_rate => 0);
is(query($node, qq{
	SELECT count(*) FROM courier.failures
	 WHERE order_id BETWEEN 1201 AND 1205 AND attempts = 3
	   AND last_sqlstate = 'tms:http_500' AND last_http_status = 500}),
	'5', 'after courier.max_attempts (3), with tms:http_500');
$err = received_counts($mock, 500);
is(join(',', map { $err->{$_} // 0 } @{ phones_of($node, 'order_id BETWEEN 1201 AND 1205') }),
	'3,3,3,3,3', 'SENS received each of them 3 times');
query($node, 'ALTER SYSTEM RESET courier.max_attempts');
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.max_attempts', '20', 30), 'courier.max_attempts back to 20');

# ---- 3. a wrong secret: the signature does not match
wrong_secret_then_fixed($node, $mock, setting => 'tms_hmac_secret',
	right => $mock->{creds}{sens_secret}, counter => 'sens_signature_failures',
	refusal => qr/WARNING:.*TMS configuration error: SENS AlimTalk http_401/,
	kind => 'alimtalk', first => 2101, last => 2150, days => 12);

# ---- 5. a template that is not approved
my $listener = listen_alerts($node);
my $log = log_offset($node);
query($node, "ALTER SYSTEM SET courier.alimtalk_template = 'NOT_APPROVED'");
query($node, "ALTER SYSTEM SET courier.alimtalk_template_v2 = 'NOT_APPROVED'");
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.alimtalk_template', 'NOT_APPROVED', 30),
	'courier.alimtalk_template names a template that is not approved');
is(register_tms_orders($node, 4101, 4140, phone_prefix => '0102'), 40, 'register 40 orders');
my $t0 = mock_stats($mock)->{template_errors};
delay_tms($node, 4101, 4140, 14);
my $d14 = 'ship_date = current_date + 14';

ok( poll_log(
		$node,
		qr/WARNING:.*TMS configuration error: SENS AlimTalk http_400: .*template is not approved/,
		$log, 30),
	"the log names SENS's refusal: http_400, template is not approved");
ok(poll_log($node, qr/WARNING:.*circuit breaker opened/, $log, 30), 'the breaker opens at once');
ok(heard_alert($listener, 'tms_unauthorized'), 'an alert is raised');
$listener->quit;
cmp_ok(mock_stats($mock)->{template_errors}, '>', $t0, 'SENS refused the template');
is(query($node, qq{
	SELECT count(*), coalesce(sum(attempts), 0) FROM courier.notices
	 WHERE $d14 AND status = 'pending'}),
	'40|0', 'the 40 notices stay pending and no attempt is charged');
is(query($node, "SELECT count(*) FROM courier.failures WHERE $d14"), '0', 'none failed');

$log = log_offset($node);
query($node, 'ALTER SYSTEM RESET courier.alimtalk_template');
query($node, 'ALTER SYSTEM RESET courier.alimtalk_template_v2');
query($node, 'SELECT pg_reload_conf()');
ok(poll_log($node, qr/LOG:.*circuit breaker closed/, $log, 30),
	'with the approved templates back the breaker closes');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d14 AND status = 'delivered' AND attempts = 1",
		'40', 60),
	'all 40 are delivered, each on its first charged attempt');
ok(wait_receipts_final($mock), 'the AlimTalks reached their final state');
is(scalar @{ handset_mismatches(mock_handsets($mock), phones_of($node, $d14), alimtalk => 1) },
	0, 'each of the 40 customers received exactly one AlimTalk');

is(scalar(grep { $_->{total} > 1 } values %{ mock_handsets($mock) }),
	0, 'no handset received more than one message');

$node->stop;
done_testing();
