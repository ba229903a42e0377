
# 069_alimtalk_fallback_by_courier.pl
#	courier.alimtalk_fallback = courier: the AlimTalk dialects ask the
#	provider for no fallback; when an AlimTalk's receipt says it cannot
#	reach the customer (3018/3019/3020), courier itself sends the rendered
#	text by SMS (LMS when long) through the SMS dialect of the same
#	provider (nhn_alimtalk -> nhn_sms, sens_alimtalk -> sens_sms), and
#	follows that SMS's receipt.  For NHN and SENS in turn (switched live):
#
#	- an ordinary customer receives exactly one AlimTalk, nothing else;
#	- a customer who is not a KakaoTalk user (number ending 3019) receives
#	  exactly one SMS (one LMS for a long text) from courier, never an
#	  AlimTalk and never the provider's own fallback; the notice records
#	  fallback_reason 3019, fallback_channel sms/lms, the SMS dialect as
#	  its provider, two attempts, the AlimTalk's code in its history and
#	  the SMS's receipt (delivered);
#	- a customer whose SMS fails too (3119: AlimTalk 3019, then SMS 3001)
#	  ends failed with the SMS's code, after one SMS attempt: never twice;
#	- with courier.alimtalk_fallback = none a 3019 notice just fails.
#
#	The same code in NHN's send answer (the mock's send_fallback_codes)
#	sends the SMS at once.  Then the race: the app records NHN's webhook
#	(courier.record_receipts) for 3019 notices while the receipt stage
#	is asking about them, and holds its transaction open until the
#	stage's record waits on it; each notice still falls back once and
#	each customer gets exactly one SMS.

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
	'alimtalk_fallback_courier', $mock,
	conf => provider_conf($mock, 'nhn_alimtalk', alimtalk_fallback => 'courier')
	  . q{
courier.tms_bulk_size = 50
courier.receipt_interval = '100ms'
courier.notice_template = '[{product}] Order {order_id}: shipping is delayed ({reason}). New ship date: {new_ship_date}.'
});
my $long = 'the harvest is late because of heavy rain in the valley, sorry ' x 2;

is(query($node, 'SHOW courier.alimtalk_fallback'), 'courier',
	'courier.alimtalk_fallback = courier from postgresql.conf');

# g % 3: 0 an ordinary number, 1 not a KakaoTalk user (3019), 2 not a
# KakaoTalk user whose SMS fails too (3119)
my $phones = q{'010' || lpad(g::text, 4, '0') ||
	CASE g % 3 WHEN 1 THEN '3019' WHEN 2 THEN '3119'
	ELSE '5' || lpad((g % 1000)::text, 3, '0') END};

# round(DIALECT, SMS_DIALECT, FIRST): orders FIRST..FIRST+59 with a short
# text, FIRST+60..FIRST+89 with a long one; checks what each customer
# received and what each notice says.
sub round
{
	my ($dialect, $sms, $first) = @_;
	my $all = "order_id BETWEEN $first AND " . ($first + 89) . ' AND ship_date = current_date + 10';
	my $short = "order_id BETWEEN $first AND " . ($first + 59) . ' AND ship_date = current_date + 10';
	my $longer = "order_id BETWEEN " . ($first + 60) . ' AND ' . ($first + 89)
	  . ' AND ship_date = current_date + 10';

	set_conf($node, tms_provider => $dialect);
	is(register_tms_orders($node, $first, $first + 89, phone_sql => $phones),
		90, "$dialect: register 90 orders, two thirds of them not KakaoTalk users");
	delay_tms($node, $first, $first + 59, 10);
	delay_tms($node, $first + 60, $first + 89, 10, $long);
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE $all"
			  . " AND receipt_status IN ('delivered', 'failed')",
			'90', 90),
		"$dialect: every notice reached a final receipt");
	ok(wait_receipts_final($mock), "$dialect: the provider's records are final");

	is(query($node, qq{
		SELECT count(*) FROM courier.notices
		 WHERE $all AND customer_phone !~ '(3019|3119)\$'
		   AND status = 'delivered' AND channel = 'alimtalk' AND provider = '$dialect'
		   AND receipt_status = 'delivered' AND fallback_reason IS NULL
		   AND fallback_channel IS NULL AND attempts = 1}),
		'30', "$dialect: the 30 ordinary notices were delivered by AlimTalk, one attempt");
	is(query($node, qq{
		SELECT count(*) FROM courier.notices
		 WHERE $all AND customer_phone ~ '3019\$'
		   AND status = 'delivered' AND provider = '$sms'
		   AND fallback_reason = '3019' AND channel = fallback_channel
		   AND fallback_channel = CASE WHEN $longer THEN 'lms' ELSE 'sms' END
		   AND receipt_status = 'delivered' AND attempts = 2
		   AND errors @> '[{"code": "tms:3019"}]'
		   AND NOT errors @> '[{"http_status": 200}]'}),
		'30',
		"$dialect: the 30 notices of 3019 numbers went out again by courier's SMS/LMS through"
		  . " $sms: fallback_reason 3019, its channel, two attempts, delivered");
	is(query($node, qq{
		SELECT count(*) FROM courier.notices
		 WHERE $all AND customer_phone ~ '3119\$'
		   AND status = 'delivered' AND provider = '$sms' AND fallback_reason = '3019'
		   AND receipt_status = 'failed' AND receipt_code IS NOT NULL
		   AND receipt_code <> '3019' AND attempts = 2}),
		'30',
		"$dialect: the 30 notices whose SMS failed too end failed with the SMS's code,"
		  . ' after one SMS attempt');
	is(query($node, "SELECT count(*) FROM courier.notices WHERE $all AND status = 'pending'"),
		'0', "$dialect: nothing is left pending");

	my $h = mock_handsets($mock);
	is(scalar @{ handset_mismatches($h,
				phones_of($node, "$all AND customer_phone !~ '(3019|3119)\$'"), alimtalk => 1) },
		0, "$dialect: each ordinary customer received exactly one AlimTalk");
	is(scalar @{ handset_mismatches($h, phones_of($node, "$short AND customer_phone ~ '3019\$'"),
				sms => 1) },
		0, "$dialect: each 3019 customer (short text) received exactly one SMS, from courier");
	is(scalar @{ handset_mismatches($h, phones_of($node, "$longer AND customer_phone ~ '3019\$'"),
				lms => 1) },
		0, "$dialect: each 3019 customer (long text) received exactly one LMS, from courier");
	is(scalar @{ handset_mismatches($h, phones_of($node, "$all AND customer_phone ~ '3119\$'")) },
		0, "$dialect: the 3119 customers received nothing (their SMS failed)");
	return;
}

round('nhn_alimtalk', 'nhn_sms', 1);
round('sens_alimtalk', 'sens_sms', 101);

my $cust = mock_customers($mock);
is("$cust->{alimtalk}|$cust->{fallback_sms}|$cust->{fallback_lms}",
	'60|0|0', 'in all: 60 AlimTalks and not one fallback sent by a provider');
is(scalar(grep { $_->{total} > 1 } values %{ mock_handsets($mock) }),
	0, 'no handset received more than one message');

# ---- the same code in NHN's send answer (not in its delivery result):
# the notice goes out by SMS at once
set_conf($node, tms_provider => 'nhn_alimtalk');
mock_control($mock, send_fallback_codes => 1);
is(register_tms_orders($node, 301, 320, phone_sql => $phones), 20, 'register 20 orders');
delay_tms($node, 301, 320, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE order_id BETWEEN 301 AND 320"
		  . " AND receipt_status IN ('delivered', 'failed')",
		'20', 60),
	'3019 in the send answer: every notice reached a final receipt');
is(query($node, q{
	SELECT count(*) FROM courier.notices
	 WHERE order_id BETWEEN 301 AND 320 AND customer_phone ~ '3019$'
	   AND provider = 'nhn_sms' AND fallback_reason = '3019' AND fallback_channel = 'sms'
	   AND receipt_status = 'delivered' AND attempts = 2
	   AND errors @> '[{"code": "tms:3019", "http_status": 200}]'}),
	'7', 'the 7 notices NHN refused with 3019 in its send answer (HTTP 200, in their history)'
	  . ' went out by courier\'s SMS');
is(query($node, 'SELECT count(*) FROM courier.failures WHERE order_id BETWEEN 301 AND 320'),
	'0', 'none of them is a failure');
ok(wait_receipts_final($mock), 'the provider\'s records are final');
is(scalar @{ handset_mismatches(mock_handsets($mock),
			phones_of($node, "order_id BETWEEN 301 AND 320 AND customer_phone ~ '3019\$'"),
			sms => 1) },
	0, 'each of those customers received exactly one SMS');
mock_control($mock, send_fallback_codes => 0);

# webhook_3019(WHERE): the SQL that hands courier NHN's webhook saying
# 3019 (not a KakaoTalk user) for each notice matching WHERE.
sub webhook_3019
{
	my ($where) = @_;
	return qq{
	SELECT courier.record_receipts(jsonb_build_object(
		'event', 'MESSAGE_RESULT_UPDATE',
		'hooks', (SELECT jsonb_agg(jsonb_build_object(
					'recipientGroupingKey',
					'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD'),
					'resultCode', '3019'))
					FROM courier.notices WHERE $where)))};
}

# ---- the race: the app hands courier NHN's webhook for notices the
# receipt stage is asking about.  The poller leases them and asks (the
# mock answers everything 2.5 s late, from before the send, so the
# window does not depend on the machine's speed); meanwhile an app session records the webhook
# (all 40 fall back) and holds its transaction open, so that the poller's
# record of the same 3019 receipts waits on the rows' locks; then the app
# commits.  The poller must not send a second fallback.
set_conf($node, receipt_interval => '2s');
is(register_tms_orders($node, 401, 440, phone_sql => q{'010' || lpad(g::text, 4, '0') || '3019'}),
	40, 'register 40 orders of 3019 numbers');
my $race = 'order_id BETWEEN 401 AND 440 AND ship_date = current_date + 10';
mock_control($mock, latency_ms => 2500);
delay_tms($node, 401, 440, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $race"
		  . " AND status = 'delivered' AND receipt_status = 'awaiting' AND receipt_checks = 0",
		'40', 30),
	'the 40 AlimTalks are accepted and await their receipts');
my $sender = "SELECT %s FROM pg_stat_activity WHERE backend_type = 'courier tms worker'";
ok( poll_until($node, sprintf($sender, "count(*) FILTER (WHERE query = 'tms: asking for receipts')"),
		'1', 30),
	'the sender is asking the provider for their receipts');
my $app = $node->background_psql('postgres');
$app->query_safe('BEGIN');
is($app->query_safe(webhook_3019($race)),
	'40', 'meanwhile the app records the webhook: the 40 notices fall back (not committed yet)');
ok( poll_until($node, sprintf($sender, "count(*) FILTER (WHERE wait_event_type = 'Lock')"),
		'1', 30),
	'the sender, answered, waits on those notices to record the same receipts');
mock_control($mock, latency_ms => 0);
$app->query_safe('COMMIT');
$app->quit;
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE $race AND receipt_status IN ('delivered', 'failed')",
		'40', 60),
	'the 40 raced notices reached a final receipt');
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE $race AND provider = 'nhn_sms' AND fallback_reason = '3019'
	   AND fallback_channel = 'sms' AND receipt_status = 'delivered' AND attempts = 2
	   AND jsonb_array_length(errors) = 1}),
	'40', 'each raced notice fell back once: one SMS attempt, one entry in its history');
is(query($node, webhook_3019($race)),
	'0', 'the same webhook again changes nothing');
ok(wait_receipts_final($mock), 'the provider\'s records are final');
is(scalar @{ handset_mismatches(mock_handsets($mock), phones_of($node, $race), sms => 1) },
	0, 'each raced customer received exactly one SMS');
set_conf($node, receipt_interval => '100ms');

# ---- none: a 3019 notice fails with the AlimTalk's code, nothing is resent
set_conf($node, tms_provider => 'nhn_alimtalk', alimtalk_fallback => 'none');
is(register_tms_orders($node, 201, 210, phone_sql => q{'010' || lpad(g::text, 4, '0') || '3019'}),
	10, 'register 10 orders of 3019 numbers');
delay_tms($node, 201, 210, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE order_id BETWEEN 201 AND 210"
		  . " AND receipt_status = 'failed' AND receipt_code = '3019'"
		  . " AND fallback_reason IS NULL AND channel = 'alimtalk' AND attempts = 1",
		'10', 60),
	'fallback none: the 10 notices fail with 3019 and go out no other way');
ok(wait_receipts_final($mock), 'the provider\'s records are final');
is(scalar @{ handset_mismatches(mock_handsets($mock),
			phones_of($node, 'order_id BETWEEN 201 AND 210')) },
	0, 'fallback none: those customers received nothing');

$node->stop;
done_testing();
