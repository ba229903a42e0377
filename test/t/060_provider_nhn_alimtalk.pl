
# 060_provider_nhn_alimtalk.pl
#	courier speaking NHN Cloud AlimTalk v2.3 (courier.tms_provider =
#	'nhn_alimtalk', set in postgresql.conf from the start) to the mock,
#	which checks the app key and X-Secret-Key, with bulk requests
#	(courier.tms_bulk_size = 100):
#
#	1. happy path: every notice reaches its customer's handset exactly once
#	   as an AlimTalk (the mock's handset counters), is marked delivered with
#	   provider_id requestId/recipientSeq and channel alimtalk, and the
#	   provider saw the right template (COURIER_DELAY, or COURIER_DELAY_V2
#	   for orders of the notice_v2 rollout) with the notice's parameters;
#	   requests carried many recipients;
#	2. per-recipient codes by number: -5000 (ends in 2019) fails at once
#	   with tms:-5000, -9999 (ends in 9990) is retried and fails after
#	   courier.max_attempts with tms:-9999, 3019 (not a KakaoTalk user: a
#	   delivery result, accepted at send) is marked delivered but reaches no
#	   handset; the counts add up, nothing lost, nothing twice;
#	3. a wrong secret key (-1001): the breaker opens, an alert is raised
#	   and logged, no attempt is charged; once postgresql.conf has the right
#	   key again and is reloaded, everything is delivered exactly once;
#	4. an attempt whose reply is lost (delivered, no answer), retried under
#	   the same X-NC-API-IDEMPOTENCY-KEY (courier.tms_bulk_size = 1), is
#	   answered -1005: the notice is taken, not sent again (one AlimTalk
#	   per customer); it is marked sent without a provider id, and the
#	   receipt stage finds the send by the notice's key (NHN's query by
#	   recipientGroupingKey): its provider id and final receipt are filled
#	   in, nothing fails.  The retry is courier's second attempt, or, when
#	   the lost reply came on a reused connection, libcurl's own resend
#	   within the first: either way it carries the same key; an attempt
#	   NHN refused (-9999, outcome known) is retried under a new key, so a
#	   refusal is never read as "taken" (NHN keeps the refused request's
#	   key): refused three times, it fails, received three times;
#	5. a template that is not approved (-3005): configuration, the breaker
#	   opens, no attempt is charged; fixed, everything goes out once.

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
	'nhn_alimtalk', $mock,
	conf => provider_conf($mock, 'nhn_alimtalk', receipt_interval => '200ms') . q{
courier.tms_bulk_size = 100
courier.max_attempts = 3
courier.tms_breaker_cooldown = '500ms'
courier.rollout_notice_v2 = 50
});

is(query($node, 'SHOW courier.tms_provider'), 'nhn_alimtalk',
	'courier.tms_provider is nhn_alimtalk from postgresql.conf');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier tms worker'",
		't', 30),
	'a tms worker runs');

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
	 WHERE $d10 AND provider_id ~ '^[0-9]{14}AT[0-9]{9}/[0-9]+\$'
	   AND channel = 'alimtalk' AND http_status = 200 AND attempts = 1
	   AND sent_at IS NOT NULL}),
	"$N|$N",
	'each notice has its own provider_id requestId/recipientSeq, channel'
	  . ' alimtalk, HTTP 200 and 1 attempt');

my $s = mock_stats($mock);
my $requests = query($node,
	"SELECT count(DISTINCT split_part(provider_id, '/', 1)) FROM courier.notices WHERE $d10");
diag("$N notices in $requests requests ($s->{nhn_alimtalk_sends} sends)");
cmp_ok($requests, '<=', $N / 10, "the $N notices went in bulk: at most " . ($N / 10) . ' requests');
is($s->{nhn_alimtalk_sends}, $requests, 'the mock saw exactly those send requests');
is(query($node, qq{
	SELECT count(*) FILTER (WHERE variant = 'v1') > 0 AND count(*) FILTER (WHERE variant = 'v2') > 0
	  FROM courier.notices WHERE $d10}),
	't', 'the notice_v2 rollout gave both variants');

# What NHN holds for each recipient: the template of its variant and the
# notice's parameters (the mock writes them as the content).
my %expected = map { my @f = split /\|/; ($f[0] => "$f[1] $f[2]") } split /\n/,
  query($node, qq{
	SELECT 'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD'),
		   CASE variant WHEN 'v2' THEN 'COURIER_DELAY_V2' ELSE 'COURIER_DELAY' END,
		   format('[%s] orderId=%s, product=%s, reason=%s, shipDate=%s',
				  CASE variant WHEN 'v2' THEN 'COURIER_DELAY_V2' ELSE 'COURIER_DELAY' END,
				  order_id, product_name, reason, to_char(ship_date, 'YYYY-MM-DD'))
	  FROM courier.notices WHERE $d10});
my %held;
for my $rid (split /\n/,
	query($node, "SELECT DISTINCT split_part(provider_id, '/', 1) FROM courier.notices WHERE $d10"))
{
	my $ans = nhn_query($mock,
		"/alimtalk/v2.3/appkeys/$mock->{creds}{nhn_appkey}/messages?requestId=$rid&pageSize=1000");
	for my $m (@{ $ans->{messageSearchResultResponse}{messages} // [] })
	{
		$held{ $m->{recipientGroupingKey} // '?' } = "$m->{templateCode} $m->{content}";
	}
}
is(scalar(keys %held), $N, "the provider's query API lists $N recipients");
is_deeply(\%held, \%expected,
	'each recipient carried its variant\'s template code and the notice\'s parameters');

ok(wait_receipts_final($mock), 'the AlimTalks reached their final state');
my $c = mock_customers($mock);
is("$c->{alimtalk}|$c->{sms}|$c->{lms}|$c->{fallback_sms}|$c->{fallback_lms}|$c->{failed}",
	"$N|0|0|0|0|0", "the customers received $N AlimTalks and nothing else");
my $phones = phones_of($node, $d10);
is(scalar @$phones, $N, "$N customers");
is(scalar @{ handset_mismatches(mock_handsets($mock), $phones, alimtalk => 1) },
	0, 'every customer received exactly one AlimTalk');

# ---- 2. per-recipient codes by number
# order g: its own 4 digits, then 2019 (-5000), 9990 (-9999), 3019
# (not a KakaoTalk user) or 5xxx (an ordinary number).
my $mix = q{'010' || lpad(g::text, 4, '0') ||
	CASE g % 5 WHEN 0 THEN '2019' WHEN 1 THEN '9990' WHEN 2 THEN '3019'
	ELSE '5' || lpad((g % 1000)::text, 3, '0') END};
is(register_tms_orders($node, 1001, 1100, phone_sql => $mix),
	100, 'register 100 orders whose numbers choose the outcome');
my $before = mock_customers($mock);
delay_tms($node, 1001, 1100, 11);
my $d11 = 'ship_date = current_date + 11';

ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d11 AND status IN ('delivered', 'failed')",
		'100', 90),
	'all 100 notices are settled');
is(query($node, qq{
	SELECT string_agg(k || ':' || n, ' ' ORDER BY k)
	  FROM (SELECT CASE WHEN customer_phone ~ '5[0-9]{3}\$' THEN 'other'
						ELSE right(customer_phone, 4) END || '/' || status AS k,
				   count(*) AS n
			  FROM courier.notices WHERE $d11 GROUP BY 1) s}),
	'2019/failed:20 3019/delivered:20 9990/failed:20 other/delivered:40',
	'2019 and 9990 failed; 3019 and the ordinary numbers were taken by NHN');
is(query($node, qq{
	SELECT string_agg(k || ':' || n, ' ' ORDER BY k)
	  FROM (SELECT right(n.customer_phone, 4) || ':' || f.last_sqlstate || ':'
				   || f.attempts AS k, count(*) AS n
			  FROM courier.failures f
			  JOIN courier.notices n USING (order_id, ship_date)
			 WHERE f.$d11 AND f.stage = 'tms'
			 GROUP BY 1) s}),
	'2019:tms:-5000:1:20 9990:tms:-9999:3:20',
	'-5000 failed at its first attempt, -9999 after courier.max_attempts (3)');
is(query($node, qq{
	SELECT count(*), count(DISTINCT order_id) FROM courier.failures WHERE $d11}),
	'40|40', 'one failure per failed notice, none twice');
is(query($node, "SELECT count(*) FROM courier.notices WHERE $d11 AND status = 'pending'"),
	'0', 'nothing of them is left pending');

my $recv = received_counts($mock);
my %times;
for my $row (split /\n/, query($node, qq{
	SELECT right(customer_phone, 4) ~ '^(2019|9990|3019)\$', right(customer_phone, 4),
		   'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD')
	  FROM courier.notices WHERE $d11}))
{
	my ($special, $tail, $key) = split /\|/, $row;
	my $class = $special eq 't' ? $tail : 'other';
	$times{ $class . ':' . ($recv->{$key} // 0) }++;
}
is(join(' ', map { "$_=$times{$_}" } sort keys %times),
	'2019:1=20 3019:1=20 9990:3=20 other:1=40',
	'NHN received the -9999 ones 3 times, every other recipient once');

ok(wait_receipts_final($mock), 'the AlimTalks reached their final state');
my $h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone ~ '5[0-9]{3}\$'"),
			alimtalk => 1) },
	0, 'each ordinary number received exactly one AlimTalk');
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone !~ '5[0-9]{3}\$'")) },
	0, 'the 2019, 9990 and 3019 numbers received nothing (3019: not a KakaoTalk user)');
$c = mock_customers($mock);
is(($c->{alimtalk} - $before->{alimtalk}) . '|' . ($c->{failed} - $before->{failed})
	  . '|' . ($c->{refused} - $before->{refused}),
	'40|20|80',
	'NHN: 40 delivered, 20 failed (3019), 80 refusals (20 of -5000, 60 of -9999)');

# ---- 3. a wrong secret key
wrong_secret_then_fixed($node, $mock, setting => 'nhn_alimtalk_secret_key',
	right => $mock->{creds}{nhn_secret}, counter => 'auth_failures',
	refusal => qr/WARNING:.*TMS configuration error: NHN AlimTalk -1001/,
	kind => 'alimtalk', first => 2101, last => 2150, days => 12);

# ---- 4. a lost reply, retried under the same key: -1005, not resent
query($node, 'ALTER SYSTEM SET courier.tms_bulk_size = 1');
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.tms_bulk_size', '1', 30),
	'courier.tms_bulk_size = 1: a notice keeps its key on every attempt');
is(register_tms_orders($node, 3101, 3105, phone_prefix => '0102'), 5, 'register 5 orders');
$s = mock_stats($mock);
mock_control($mock, lost_reply_rate => 1);
delay_tms($node, 3101, 3105, 13);
my $d13 = 'ship_date = current_date + 13';

ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d13 AND status = 'delivered'"
		  . " AND receipt_status = 'delivered'",
		'5', 60),
	'the 5 notices are taken, and the receipt stage finds each delivered');
mock_control($mock, lost_reply_rate => 0);
my $s2 = mock_stats($mock);
cmp_ok($s2->{lost_replies} - $s->{lost_replies}, '>=', 5,
	'each was taken by NHN, whose reply was lost');
cmp_ok($s2->{idempotency_rejected} - $s->{idempotency_rejected}, '>=', 5,
	'and each retry under the same key was answered -1005');
is(query($node, "SELECT count(*) FROM courier.failures WHERE $d13"), '0',
	'none of them failed');
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE $d13 AND provider_id ~ '^[0-9]{14}AT[0-9]{9}/[0-9]+\$' AND receipt_code = '1000'}),
	'5', 'each learned its provider id (requestId/seq) and code 1000 from the query by its key');
diag('attempts of the taken notices: '
	  . query($node, "SELECT string_agg(attempts::text, ',') FROM courier.notices WHERE $d13"));
ok(wait_receipts_final($mock), 'the AlimTalks reached their final state');
is(scalar @{ handset_mismatches(mock_handsets($mock), phones_of($node, $d13), alimtalk => 1) },
	0, 'each of the 5 customers received exactly one AlimTalk: not resent');

# ---- 4b. refused (-9999), retried one message a request: a new key each
# time.  NHN keeps the key of the refused request (the mock's choice), so
# the same key would be answered -1005 and read as "taken".
is(register_tms_orders($node, 3201, 3203,
		phone_sql => q{'010' || lpad(g::text, 4, '0') || '9990'}),
	3, 'register 3 orders whose numbers NHN refuses with -9999');
$s = mock_stats($mock);
delay_tms($node, 3201, 3203, 13);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE order_id BETWEEN 3201 AND 3203"
		  . " AND status IN ('delivered', 'failed')",
		'3', 60),
	'the 3 refused notices are settled');
is(query($node, q{
	SELECT string_agg(n.status || ':' || f.last_sqlstate || ':' || f.attempts, ' ')
	  FROM courier.notices n
	  JOIN courier.failures f USING (seller_id, order_id, ship_date)
	 WHERE n.order_id BETWEEN 3201 AND 3203}),
	'failed:tms:-9999:3 failed:tms:-9999:3 failed:tms:-9999:3',
	'each failed with -9999 after courier.max_attempts (3): none mistaken for taken');
is(mock_stats($mock)->{idempotency_rejected} - $s->{idempotency_rejected}, 0,
	'no retry was answered -1005: each went under a new key');
my $keys = received_counts($mock);
is(join(',', map { $keys->{$_} // 0 } @{ notice_keys($node, 'order_id BETWEEN 3201 AND 3203') }),
	'3,3,3', 'NHN received each 3 times');

query($node, 'ALTER SYSTEM SET courier.tms_bulk_size = 100');
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.tms_bulk_size', '100', 30), 'back to bulk requests');

# ---- 5. a template that is not approved
my $listener = listen_alerts($node);
my $log = log_offset($node);
query($node, "ALTER SYSTEM SET courier.alimtalk_template = 'NOT_APPROVED'");
query($node, "ALTER SYSTEM SET courier.alimtalk_template_v2 = 'NOT_APPROVED'");
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.alimtalk_template', 'NOT_APPROVED', 30),
	'courier.alimtalk_template names a template NHN has not approved');
is(register_tms_orders($node, 4101, 4140, phone_prefix => '0102'), 40, 'register 40 orders');
my $t0 = mock_stats($mock)->{template_errors};
delay_tms($node, 4101, 4140, 14);
my $d14 = 'ship_date = current_date + 14';

ok(poll_log($node, qr/WARNING:.*TMS configuration error: NHN AlimTalk -3005/, $log, 30),
	'the log names the code: NHN AlimTalk -3005 (template not approved)');
ok(poll_log($node, qr/WARNING:.*circuit breaker opened/, $log, 30), 'the breaker opens');
ok(heard_alert($listener, 'tms_unauthorized'), 'an alert is raised');
$listener->quit;
cmp_ok(mock_stats($mock)->{template_errors}, '>', $t0, 'NHN refused the template');
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

# Over the whole test: no customer received anything twice.
is(scalar(grep { $_->{total} > 1 } values %{ mock_handsets($mock) }),
	0, 'no handset received more than one message');

$node->stop;
done_testing();
