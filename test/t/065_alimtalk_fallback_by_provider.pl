
# 065_alimtalk_fallback_by_provider.pl
#	courier.alimtalk_fallback = provider: the AlimTalk dialects ask the
#	provider to resend a notice by SMS/LMS itself when the AlimTalk cannot
#	be delivered (NHN resendParameter, SENS useSmsFailover +
#	failoverConfig), with the rendered text, SMS or LMS by its length in
#	EUC-KR, from courier's sender number.  For NHN AlimTalk and SENS
#	AlimTalk in turn (switched with ALTER SYSTEM and a reload):
#
#	- a customer whose number ends in 3019 (not a KakaoTalk user) receives
#	  exactly one SMS (one LMS for a long text) and no AlimTalk;
#	- a customer with an ordinary number receives exactly one AlimTalk and
#	  no SMS;
#	- NHN's fallback carries courier's text, title (LMS) and
#	  courier.nhn_sms_send_no (the provider's SMS query API);
#	- with courier.alimtalk_fallback = none, a 3019 number receives nothing
#	  from the provider (courier asks for no fallback), an ordinary number
#	  its AlimTalk.
#
#	courier marks every one of these notices delivered (channel alimtalk,
#	one attempt): the provider took them; what became of them is in its
#	receipts.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_provider_mock();
my $c = $mock->{creds};
my $node = tms_node(
	'alimtalk_fallback', $mock,
	conf => provider_conf($mock, 'nhn_alimtalk') . q{
courier.tms_bulk_size = 50
courier.notice_template = '[{product}] Order {order_id}: shipping is delayed ({reason}). New ship date: {new_ship_date}.'
});
my $long = 'the harvest is late because of heavy rain in the valley, sorry ' x 2;

# odd orders: not a KakaoTalk user (3019); even: an ordinary number
my $phones = q{'010' || lpad(g::text, 4, '0') ||
	CASE g % 2 WHEN 1 THEN '3019' ELSE '5' || lpad((g % 1000)::text, 3, '0') END};

# round(DIALECT, FIRST): orders FIRST..FIRST+19 with a short text and
# FIRST+20..FIRST+39 with a long one, with courier.alimtalk_fallback =
# provider; then FIRST+40..FIRST+49, short, with none.  Checks what each
# customer received.
sub round
{
	my ($dialect, $first) = @_;
	my $range = sub { "order_id BETWEEN $_[0] AND $_[1] AND ship_date = current_date + 10" };
	my $short = $range->($first, $first + 19);
	my $longer = $range->($first + 20, $first + 39);
	my $none = $range->($first + 40, $first + 49);

	set_conf($node, tms_provider => $dialect, alimtalk_fallback => 'provider');
	is(register_tms_orders($node, $first, $first + 49, phone_sql => $phones),
		50, "$dialect: register 50 orders, half of them not KakaoTalk users");
	delay_tms($node, $first, $first + 19, 10);
	delay_tms($node, $first + 20, $first + 39, 10, $long);
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE ($short OR $longer)"
			  . " AND status = 'delivered' AND channel = 'alimtalk' AND attempts = 1",
			'40', 60),
		"$dialect, fallback provider: the 40 notices are delivered by AlimTalk, one attempt each");
	is(query($node, "SELECT count(*) FROM courier.notices WHERE $longer"
			  . " AND length(convert_to(format('[%s] Order %s: shipping is delayed (%s). New ship date: %s.',"
			  . " product_name, order_id, reason, ship_date), 'EUC_KR')) > 90"),
		'20', "$dialect: the long texts are over 90 bytes in EUC-KR (an LMS)");

	ok(wait_receipts_final($mock), "$dialect: the AlimTalks and fallbacks reached their final state");
	my $h = mock_handsets($mock);
	is(scalar @{ handset_mismatches($h, phones_of($node, "$short AND customer_phone ~ '3019\$'"),
				fallback_sms => 1) },
		0, "$dialect: each 3019 customer (short text) received exactly one SMS, no AlimTalk");
	is(scalar @{ handset_mismatches($h, phones_of($node, "$longer AND customer_phone ~ '3019\$'"),
				fallback_lms => 1) },
		0, "$dialect: each 3019 customer (long text) received exactly one LMS, no AlimTalk");
	is(scalar @{ handset_mismatches($h,
				phones_of($node, "($short OR $longer) AND customer_phone !~ '3019\$'"),
				alimtalk => 1) },
		0, "$dialect: each ordinary customer received exactly one AlimTalk, no SMS");

	set_conf($node, alimtalk_fallback => 'none');
	delay_tms($node, $first + 40, $first + 49, 10);
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE $none"
			  . " AND status = 'delivered' AND channel = 'alimtalk' AND attempts = 1",
			'10', 60),
		"$dialect, fallback none: the 10 notices are delivered by AlimTalk");
	ok(wait_receipts_final($mock), "$dialect: the AlimTalks reached their final state");
	$h = mock_handsets($mock);
	is(scalar @{ handset_mismatches($h, phones_of($node, "$none AND customer_phone ~ '3019\$'")) },
		0, "$dialect, fallback none: the 3019 customers received nothing from the provider");
	is(scalar @{ handset_mismatches($h, phones_of($node, "$none AND customer_phone !~ '3019\$'"),
				alimtalk => 1) },
		0, "$dialect, fallback none: each ordinary customer received exactly one AlimTalk");
	return;
}

# ---- NHN AlimTalk
round('nhn_alimtalk', 1);

# NHN's record of each fallback: courier's text, title and sender number.
my %expected;
my %held;
for my $row (split /\n/, query($node, qq{
	SELECT split_part(provider_id, '/', 1), split_part(provider_id, '/', 2), channel_of_text,
		   text
	  FROM (SELECT provider_id,
				   format('[%s] Order %s: shipping is delayed (%s). New ship date: %s.',
						  product_name, order_id, reason, ship_date) AS text,
				   CASE WHEN order_id > 20 THEN 'mms' ELSE 'sms' END AS channel_of_text
			  FROM courier.notices
			 WHERE order_id BETWEEN 1 AND 40 AND ship_date = current_date + 10
			   AND customer_phone ~ '3019\$') n}))
{
	my ($rid, $seq, $kind, $text) = split /\|/, $row, 4;
	my $at = nhn_query($mock, "/alimtalk/v2.3/appkeys/$c->{nhn_appkey}/messages/$rid/$seq");
	my $fb = $at->{message}{resendRequestId} // 'none';
	my $sms = nhn_query($mock,
		"/sms/v3.0/appKeys/$c->{nhn_appkey}/sender/$kind?requestId=$fb");
	my $m = $sms->{body}{data}[0] // {};

	$expected{"$rid/$seq"} = join(' ', 'RSC04', $kind eq 'mms' ? 'Shipping delay' : '-',
		$text, $c->{nhn_sms_send_no});
	$held{"$rid/$seq"} = join(' ', $at->{message}{resendStatus} // '?',
		$kind eq 'mms' ? $m->{title} // '?' : '-', $m->{body} // '?', $m->{sendNo} // '?');
}
is(scalar(keys %held), 20, 'NHN AlimTalk: 20 fallbacks to look at');
is_deeply(\%held, \%expected,
	'NHN resent each by SMS/LMS with courier\'s text, title and courier.nhn_sms_send_no');
my $rsc = join(',', sort map {
	my ($rid, $seq) = split m{/};
	nhn_query($mock, "/alimtalk/v2.3/appkeys/$c->{nhn_appkey}/messages/$rid/$seq")
	  ->{message}{resendStatus} // '?'
} split /\n/, query($node,
	"SELECT provider_id FROM courier.notices WHERE order_id BETWEEN 41 AND 50 ORDER BY 1"));
is($rsc, join(',', ('RSC01') x 10), 'NHN AlimTalk, fallback none: no recipient asked NHN to resend');

# ---- SENS AlimTalk
round('sens_alimtalk', 101);

my @fo = map {
	my $mid = (split m{/})[1];
	my $m = sens_query($mock,
		"/alimtalk/v2/services/$c->{sens_alimtalk_service_id}/messages/$mid");
	($m->{useSmsFailover} ? 'true' : 'false')
} split /\n/, query($node, qq{
	SELECT provider_id FROM courier.notices
	 WHERE order_id BETWEEN 101 AND 150 AND ship_date = current_date + 10 ORDER BY order_id});
is(join('', map { $_ eq 'true' ? 'P' : 'N' } @fo), ('P' x 40) . ('N' x 10),
	'SENS AlimTalk: useSmsFailover is true with provider, false with none');

my $cust = mock_customers($mock);
is("$cust->{alimtalk}|$cust->{fallback_sms}|$cust->{fallback_lms}|$cust->{sms}|$cust->{lms}",
	'50|20|20|0|0',
	'in all: 50 AlimTalks, 20 fallback SMS, 20 fallback LMS, no direct SMS/LMS');
is(scalar(grep { $_->{total} > 1 } values %{ mock_handsets($mock) }),
	0, 'no handset received more than one message');

$node->stop;
done_testing();
