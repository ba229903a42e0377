
# 063_provider_sens_sms.pl
#	courier speaking Naver Cloud SENS SMS v2 (courier.tms_provider =
#	'sens_sms', set in postgresql.conf from the start) to the mock, which
#	checks the access key and the HMAC signature of every request, with
#	bulk requests (courier.tms_bulk_size = 50; each message carries its own
#	text, one request one type):
#
#	1. happy path: short texts go as SMS, long ones as LMS (with courier's
#	   subject); every customer's handset receives exactly one message of
#	   its kind; notices are marked delivered with provider_id
#	   requestId/<place> and their channel; SENS holds each message's
#	   number, type, sender number and text;
#	2. SENS judges no recipient at send time: numbers ending 2019
#	   (recipient number type error) and 3001 (no subscriber) are accepted,
#	   marked delivered, and reach no handset; requests answered HTTP 500
#	   are retried, each notice charged once per failed request that carried
#	   it, and delivered exactly once; HTTP 429 holds the sending without
#	   charging anything;
#	3. a wrong secret (the signature does not match: HTTP 401): the breaker
#	   opens, an alert is raised and logged, no attempt is charged; once
#	   postgresql.conf has the right secret again and is reloaded,
#	   everything is delivered exactly once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_provider_mock();
my $node = tms_node(
	'sens_sms', $mock,
	conf => provider_conf($mock, 'sens_sms') . q{
courier.tms_bulk_size = 50
courier.max_attempts = 20
courier.tms_breaker_cooldown = '500ms'
courier.notice_template = '[{product}] Order {order_id}: shipping is delayed ({reason}). New ship date: {new_ship_date}.'
});
my $service = $mock->{creds}{sens_sms_service_id};
my $long = 'the harvest is late because of heavy rain in the valley, sorry ' x 2;

is(query($node, 'SHOW courier.tms_provider'), 'sens_sms',
	'courier.tms_provider is sens_sms from postgresql.conf');

# ---- 1. happy path, in bulk: 300 SMS and 100 LMS
is(register_tms_orders($node, 1, 400), 400, 'register 400 orders');
delay_tms($node, 1, 300, 10);
delay_tms($node, 301, 400, 10, $long);
my $d10 = 'ship_date = current_date + 10';

ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d10 AND status = 'delivered'",
		'400', 90),
	'all 400 notices are delivered');
is(query($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'"),
	'0', 'no notice is left pending');
is(query($node, 'SELECT count(*) FROM courier.failures'), '0', 'nothing failed');
is(query($node, qq{
	SELECT string_agg(channel || ':' || n || ':' || lo || '-' || hi, ' ' ORDER BY channel)
	  FROM (SELECT channel, count(*) AS n, min(order_id) AS lo, max(order_id) AS hi
			  FROM courier.notices WHERE $d10 GROUP BY channel) s}),
	'lms:100:301-400 sms:300:1-300', 'the short texts went as SMS, the long ones as LMS');
is(query($node, qq{
	SELECT count(*), count(DISTINCT provider_id)
	  FROM courier.notices
	 WHERE $d10 AND provider_id ~ '^RSSA-[0-9]{14}-[0-9]{9}/[0-9]+\$'
	   AND http_status = 202 AND attempts = 1 AND sent_at IS NOT NULL}),
	'400|400',
	'each notice has its own provider_id requestId/place, HTTP 202 and 1 attempt');
my $s = mock_stats($mock);
my $requests = query($node,
	"SELECT count(DISTINCT split_part(provider_id, '/', 1)) FROM courier.notices WHERE $d10");
diag("400 notices in $requests requests ($s->{sens_sms_sends} sends)");
cmp_ok($requests, '<=', 40, 'the 400 notices went in bulk: at most 40 requests');
is($s->{sens_sms_sends}, $requests, 'the mock saw exactly those send requests');

# What SENS holds for each message: the request's list, then each message.
my %expected = map { my @f = split /\|/, $_, 2; ($f[0] => $f[1]) } split /\n/,
  query($node, qq{
	SELECT customer_phone,
		   upper(channel) || ' $mock->{creds}{sens_sms_from} '
		   || CASE channel WHEN 'lms' THEN 'Shipping delay' ELSE '-' END || ' '
		   || format('[%s] Order %s: shipping is delayed (%s). New ship date: %s.',
					 product_name, order_id, reason, to_char(ship_date, 'YYYY-MM-DD'))
	  FROM courier.notices WHERE $d10});
my %held;
for my $rid (split /\n/,
	query($node, "SELECT DISTINCT split_part(provider_id, '/', 1) FROM courier.notices WHERE $d10"))
{
	my $list = sens_query($mock, "/sms/v2/services/$service/messages?requestId=$rid&pageSize=100");
	for my $item (@{ $list->{messages} // [] })
	{
		my $m = sens_query($mock, "/sms/v2/services/$service/messages/$item->{messageId}");
		my $one = $m->{messages}[0] // {};

		$held{ $one->{to} // '?' } = join(' ', $one->{type} // '?', $one->{from} // '?',
			($one->{type} // '') eq 'LMS' ? $one->{subject} // '?' : '-', $one->{content} // '?');
	}
}
is(scalar(keys %held), 400, "SENS lists 400 messages for courier's request ids");
is_deeply(\%held, \%expected,
	'each message has its type, courier.sens_sms_from, the subject (LMS) and its text');

ok(wait_receipts_final($mock), 'the messages reached their final state');
my $c = mock_customers($mock);
is("$c->{sms}|$c->{lms}|$c->{alimtalk}|$c->{failed}", '300|100|0|0',
	'the customers received 300 SMS and 100 LMS, nothing else');
my $h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, "$d10 AND channel = 'sms'"), sms => 1) },
	0, 'each SMS customer received exactly one SMS');
is(scalar @{ handset_mismatches($h, phones_of($node, "$d10 AND channel = 'lms'"), lms => 1) },
	0, 'each LMS customer received exactly one LMS');

# ---- 2. numbers SENS accepts but cannot reach; failed requests retried
my $mix = q{'010' || lpad(g::text, 4, '0') ||
	CASE g % 4 WHEN 0 THEN '2019' WHEN 1 THEN '3001'
	ELSE '5' || lpad((g % 1000)::text, 3, '0') END};
is(register_tms_orders($node, 1001, 1100, phone_sql => $mix),
	100, 'register 100 orders whose numbers choose the outcome');
my $before = mock_customers($mock);
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

ok(wait_receipts_final($mock), 'the messages reached their final state');
$h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone ~ '5[0-9]{3}\$'"),
			sms => 1) },
	0, 'each ordinary number received exactly one SMS');
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone !~ '5[0-9]{3}\$'")) },
	0, 'the 2019 and 3001 numbers received nothing');
$c = mock_customers($mock);
is(($c->{sms} - $before->{sms}) . '|' . ($c->{failed} - $before->{failed})
	  . '|' . ($c->{refused} - $before->{refused}),
	'50|50|0', 'SENS: 50 delivered, 50 failed after acceptance (2019, 3001), none refused');

# HTTP 429: held back, no attempt charged.
is(register_tms_orders($node, 1201, 1230, phone_prefix => '0103'), 30, 'register 30 orders');
my $t429 = mock_stats($mock)->{throttled_429};
mock_control($mock, burst_429 => 2, retry_after_s => 1);
delay_tms($node, 1201, 1230, 11);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE order_id BETWEEN 1201 AND 1230 AND status = 'delivered' AND attempts = 1",
		'30', 60),
	'after SENS answered HTTP 429 the 30 notices are delivered, each on its first charged attempt');
cmp_ok(mock_stats($mock)->{throttled_429} - $t429, '==', 2, 'SENS answered HTTP 429 twice');
ok(wait_receipts_final($mock), 'the messages reached their final state');
is(scalar @{ handset_mismatches(mock_handsets($mock),
			phones_of($node, 'order_id BETWEEN 1201 AND 1230'), sms => 1) },
	0, 'each of the 30 customers received exactly one SMS');

# ---- 3. a wrong secret: the signature does not match
wrong_secret_then_fixed($node, $mock, setting => 'tms_hmac_secret',
	right => $mock->{creds}{sens_secret}, counter => 'sens_signature_failures',
	refusal => qr/WARNING:.*TMS configuration error: SENS SMS http_401/,
	kind => 'sms', first => 2101, last => 2150, days => 12);

is(scalar(grep { $_->{total} > 1 } values %{ mock_handsets($mock) }),
	0, 'no handset received more than one message');

$node->stop;
done_testing();
