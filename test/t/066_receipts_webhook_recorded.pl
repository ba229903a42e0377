
# 066_receipts_webhook_recorded.pl
#	Accepted is not delivered: a notice sent through a provider with
#	delivery receipts awaits its receipt, and the app hands courier the
#	provider's webhook bodies (NHN Cloud's MESSAGE_RESULT_UPDATE) through
#	courier.record_receipts, which records each notice's final state.
#
#	The receipt stage's own polling is pushed an hour away
#	(courier.receipt_interval), so only the webhook records receipts here.
#	20 orders go out through nhn_alimtalk (bulk 10) to numbers 010-1111-3001
#	.. 3020; the mock fails AlimTalk for numbers ending in 3008, 3016,
#	3018, 3019 and 3020 and delivers the rest.  Once sent, every notice is
#	'delivered' (accepted) with receipt_status 'awaiting'.  Once the mock's
#	final states are in, the test builds the webhook body NHN would send
#	from the mock's query API (per request id courier recorded) and hands
#	it over as courier_app: each notice's receipt is the mock's final state
#	and code; metrics() counts them; the same body again changes nothing.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_provider_mock();
my $node = tms_node('receipts', $mock,
	conf => provider_conf($mock, 'nhn_alimtalk', tms_bulk_size => 10,
		receipt_interval => '1h'));

is(register_tms_orders($node, 3001, 3020, phone_prefix => '0101111'), 20,
	'register 20 orders, numbers 010-1111-3001 .. 3020');
delay_tms($node, 3001, 3020, 10);
ok( poll_until(
		$node,
		q{SELECT count(*) FILTER (WHERE status = 'delivered' AND receipt_status = 'awaiting')
		   || '|' || count(*) FROM courier.notices},
		'20|20', 60),
	'every notice is accepted by the provider and awaits its receipt');
like(courier_metric($node, 'awaiting'), qr/^20$/, 'metrics() counts 20 awaiting receipts');

ok(wait_receipts_final($mock, 30), 'the provider has a final state for every message');

# The webhook body NHN would send: one hook per recipient, from the query API.
my $appkey = $mock->{creds}{nhn_appkey};
my @hooks;
for my $request (split /\n/,
	query($node, q{SELECT DISTINCT split_part(provider_id, '/', 1) FROM courier.notices}))
{
	my $answer = nhn_query($mock,
		"/alimtalk/v2.3/appkeys/$appkey/messages?requestId=$request&pageSize=1000");
	for my $m (@{ $answer->{messageSearchResultResponse}{messages} })
	{
		push @hooks, {
			kakaoMessageType => 'ALIMTALK_NORMAL',
			map { $_ => $m->{$_} }
			  qw(requestId recipientSeq recipientNo resultCode recipientGroupingKey)
		};
	}
}
is(scalar @hooks, 20, 'the query API lists the 20 recipients');
my $body = encode_json({ hooksId => 'h-1', productName => 'KakaoTalk Bizmessage',
		appKey => $appkey, event => 'MESSAGE_RESULT_UPDATE', hooks => \@hooks });

is(query($node, 'SET ROLE courier_app; SELECT courier.record_receipts(' . sql_literal($body) . ')'),
	'20', 'courier_app hands the webhook body over: 20 notices get their final state');
is(query($node, q{
	SELECT receipt_status || ':' || count(*) FROM courier.notices
	 GROUP BY receipt_status ORDER BY receipt_status}),
	"delivered:15\nfailed:5", '15 delivered to the handset, 5 failed');
is(query($node, q{
	SELECT count(*) FROM courier.notices
	 WHERE receipt_status = 'failed' AND right(customer_phone, 4) <> receipt_code}),
	'0', 'each failed notice carries the provider\'s code (its number\'s pattern: 3008, 3016, 3018-3020)');
my $customers = mock_customers($mock);
is($customers->{alimtalk}, 15, 'the mock agrees: 15 AlimTalk messages reached a handset');
is(courier_metric($node, 'delivered') . '|' . courier_metric($node, 'failed') . '|'
	  . courier_metric($node, 'awaiting'),
	'15|5|0', 'metrics() counts 15 delivered, 5 failed, none awaiting');

is(query($node, 'SELECT courier.record_receipts(' . sql_literal($body) . ')'), '0',
	'the same webhook again changes nothing');

$node->stop;
done_testing();

# courier_metric(NODE, RECEIPT): the value of courier_notices_receipts{receipt}
sub courier_metric
{
	my ($node, $receipt) = @_;
	my ($v) = query($node, 'SELECT courier.metrics()')
	  =~ /^courier_notices_receipts\{receipt="$receipt"\} (\d+)$/m;
	return $v // 'none';
}
