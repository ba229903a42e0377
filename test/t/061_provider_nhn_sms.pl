
# 061_provider_nhn_sms.pl
#	courier speaking NHN Cloud SMS v3.0 (courier.tms_provider = 'nhn_sms',
#	set in postgresql.conf from the start) to the mock, which checks the
#	app key and X-Secret-Key.  The notice text here names no order
#	(courier.notice_template without {order_id}), so notices of one delay
#	share their text and NHN's bulk requests (one body, many recipients,
#	courier.tms_bulk_size = 100) are really used:
#
#	1. happy path: short texts go as SMS (/sender/sms), long ones as LMS
#	   (/sender/mms, titled); every customer's handset receives exactly one
#	   message of its kind; notices are marked delivered with provider_id
#	   requestId/recipientSeq and their channel; NHN holds the rendered text,
#	   courier's sender number and the notice's key per recipient;
#	2. per-recipient codes by number: -2019 (ends in 2019) fails at once
#	   with tms:-2019, -2021 (ends in 9990) is retried and fails after
#	   courier.max_attempts with tms:-2021, 3001 (no subscriber: a receipt,
#	   accepted at send) is marked delivered but reaches no handset; the
#	   counts add up, nothing lost, nothing twice;
#	   The receipt stage then asks NHN how each accepted message ended:
#	   the ordinary numbers delivered (1000), the 3001 ones failed (3001),
#	   the LMS ones found under /sender/mms;
#	3. a wrong secret key (the mock answers -1000): the breaker opens, an
#	   alert is raised and logged, no attempt is charged; once
#	   postgresql.conf has the right key again and is reloaded, everything
#	   is delivered exactly once.

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
	'nhn_sms', $mock,
	conf => provider_conf($mock, 'nhn_sms', receipt_interval => '200ms') . q{
courier.tms_bulk_size = 100
courier.max_attempts = 3
courier.tms_breaker_cooldown = '500ms'
courier.notice_template = '[{product}] shipping is delayed ({reason}). New ship date: {new_ship_date}.'
});
my $appkey = $mock->{creds}{nhn_appkey};
my $long = 'the harvest is late because of heavy rain in the valley, sorry ' x 2;

is(query($node, 'SHOW courier.tms_provider'), 'nhn_sms',
	'courier.tms_provider is nhn_sms from postgresql.conf');

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
	 WHERE $d10 AND provider_id ~ '^[0-9]{14}SM[0-9]{9}/[0-9]+\$'
	   AND http_status = 200 AND attempts = 1 AND sent_at IS NOT NULL}),
	'400|400',
	'each notice has its own provider_id requestId/recipientSeq, HTTP 200 and 1 attempt');
my $s = mock_stats($mock);
my $requests = query($node,
	"SELECT count(DISTINCT split_part(provider_id, '/', 1)) FROM courier.notices WHERE $d10");
diag("400 notices in $requests requests ($s->{nhn_sms_sends} sends)");
cmp_ok($requests, '<=', 40, 'the 400 notices went in bulk: at most 40 requests');
is($s->{nhn_sms_sends}, $requests, 'the mock saw exactly those send requests');

# What NHN holds for each recipient: courier's text (and title), sender
# number and the notice's key.
my %expected = map { my @f = split /\|/, $_, 2; ($f[0] => $f[1]) } split /\n/,
  query($node, qq{
	SELECT 'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD'),
		   customer_phone || ' ' || CASE channel WHEN 'lms' THEN 'Shipping delay' ELSE '-' END || ' '
		   || format('[%s] shipping is delayed (%s). New ship date: %s.',
					 product_name, reason, to_char(ship_date, 'YYYY-MM-DD'))
		   || ' $mock->{creds}{nhn_sms_send_no}'
	  FROM courier.notices WHERE $d10});
my %held;
for my $row (split /\n/, query($node, qq{
	SELECT DISTINCT split_part(provider_id, '/', 1), channel FROM courier.notices WHERE $d10}))
{
	my ($rid, $channel) = split /\|/, $row;
	my $kind = $channel eq 'lms' ? 'mms' : 'sms';
	my $ans = nhn_query($mock,
		"/sms/v3.0/appKeys/$appkey/sender/$kind?requestId=$rid&pageSize=1000");
	for my $m (@{ $ans->{body}{data} // [] })
	{
		$held{ $m->{recipientGroupingKey} // '?' } =
		  "$m->{recipientNo} " . ($m->{title} // '-') . " $m->{body} $m->{sendNo}";
	}
}
is(scalar(keys %held), 400, "the provider's query API lists 400 recipients");
is_deeply(\%held, \%expected,
	'each recipient got the rendered text (LMS: titled), from courier.nhn_sms_send_no');

ok(wait_receipts_final($mock), 'the messages reached their final state');
my $c = mock_customers($mock);
is("$c->{sms}|$c->{lms}|$c->{alimtalk}|$c->{failed}", '300|100|0|0',
	'the customers received 300 SMS and 100 LMS, nothing else');
my $h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, "$d10 AND channel = 'sms'"), sms => 1) },
	0, 'each SMS customer received exactly one SMS');
is(scalar @{ handset_mismatches($h, phones_of($node, "$d10 AND channel = 'lms'"), lms => 1) },
	0, 'each LMS customer received exactly one LMS');

# ---- 2. per-recipient codes by number
my $mix = q{'010' || lpad(g::text, 4, '0') ||
	CASE g % 5 WHEN 0 THEN '2019' WHEN 1 THEN '9990' WHEN 2 THEN '3001'
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
	'2019/failed:20 3001/delivered:20 9990/failed:20 other/delivered:40',
	'2019 and 9990 failed; 3001 and the ordinary numbers were taken by NHN');
is(query($node, qq{
	SELECT string_agg(k || ':' || n, ' ' ORDER BY k)
	  FROM (SELECT right(n.customer_phone, 4) || ':' || f.last_sqlstate || ':'
				   || f.attempts AS k, count(*) AS n
			  FROM courier.failures f
			  JOIN courier.notices n USING (order_id, ship_date)
			 WHERE f.$d11 AND f.stage = 'tms'
			 GROUP BY 1) s}),
	'2019:tms:-2019:1:20 9990:tms:-2021:3:20',
	'-2019 failed at its first attempt, -2021 after courier.max_attempts (3)');
is(query($node, "SELECT count(*), count(DISTINCT order_id) FROM courier.failures WHERE $d11"),
	'40|40', 'one failure per failed notice, none twice');
is(query($node, "SELECT count(*) FROM courier.notices WHERE $d11 AND status = 'pending'"),
	'0', 'nothing of them is left pending');

my $recv = received_counts($mock);
my %times;
for my $row (split /\n/, query($node, qq{
	SELECT right(customer_phone, 4) ~ '^(2019|9990|3001)\$', right(customer_phone, 4),
		   'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD')
	  FROM courier.notices WHERE $d11}))
{
	my ($special, $tail, $key) = split /\|/, $row;
	my $class = $special eq 't' ? $tail : 'other';
	$times{ $class . ':' . ($recv->{$key} // 0) }++;
}
is(join(' ', map { "$_=$times{$_}" } sort keys %times),
	'2019:1=20 3001:1=20 9990:3=20 other:1=40',
	'NHN received the -2021 ones 3 times, every other recipient once');

ok(wait_receipts_final($mock), 'the messages reached their final state');
$h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone ~ '5[0-9]{3}\$'"),
			sms => 1) },
	0, 'each ordinary number received exactly one SMS');
is(scalar @{ handset_mismatches($h, phones_of($node, "$d11 AND customer_phone !~ '5[0-9]{3}\$'")) },
	0, 'the 2019, 9990 and 3001 numbers received nothing (3001: no subscriber)');
$c = mock_customers($mock);
is(($c->{sms} - $before->{sms}) . '|' . ($c->{failed} - $before->{failed})
	  . '|' . ($c->{refused} - $before->{refused}),
	'40|20|80',
	'NHN: 40 delivered, 20 failed (3001), 80 refusals (20 of -2019, 60 of -2021)');

# the receipt stage asks NHN (/sender/sms by request id) how each ended
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $d11 AND receipt_status = 'awaiting'",
		'0', 60),
	'no notice of them awaits its receipt any more');
is(query($node, qq{
	SELECT string_agg(k || ':' || n, ' ' ORDER BY k)
	  FROM (SELECT CASE WHEN customer_phone ~ '5[0-9]{3}\$' THEN 'other'
						ELSE right(customer_phone, 4) END || '/' || status || '/'
				   || coalesce(receipt_status, '-') || '/' || coalesce(receipt_code, '-') AS k,
				   count(*) AS n
			  FROM courier.notices WHERE $d11 GROUP BY 1) s}),
	'2019/failed/-/-:20 3001/delivered/failed/3001:20 9990/failed/-/-:20 other/delivered/delivered/1000:40',
	'receipts: the 40 ordinary numbers delivered (1000), the 20 accepted 3001 numbers failed with 3001');
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE channel = 'lms' AND receipt_status = 'delivered' AND receipt_code = '1000'}),
	'100', 'the LMS notices of part 1 got their receipts through /sender/mms');

# ---- 3. a wrong secret key
wrong_secret_then_fixed($node, $mock, setting => 'nhn_sms_secret_key',
	right => $mock->{creds}{nhn_sms_secret}, counter => 'auth_failures',
	refusal => qr/WARNING:.*TMS configuration error: NHN SMS -1000/,
	kind => 'sms', first => 2101, last => 2150, days => 12);

is(scalar(grep { $_->{total} > 1 } values %{ mock_handsets($mock) }),
	0, 'no handset received more than one message');

$node->stop;
done_testing();
