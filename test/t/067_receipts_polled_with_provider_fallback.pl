
# 067_receipts_polled_with_provider_fallback.pl
#	The receipt stage asks the provider how each accepted notice ended,
#	and records the customer's final state, AlimTalk or its SMS/LMS
#	fallback, per notice.
#
#	For each AlimTalk dialect (nhn_alimtalk, sens_alimtalk): 21 orders go
#	out with courier.alimtalk_fallback = provider (the provider resends by
#	SMS/LMS what AlimTalk cannot deliver) and courier.receipt_interval =
#	100ms, set in postgresql.conf from the start.  The mock delivers AlimTalk to 010-1111-3001 .. 3020 except
#	those ending in 3008, 3016, 3018, 3019 and 3020, which fail and are
#	resent and delivered by SMS/LMS; 010-1111-3119 fails with 3019 and its
#	fallback fails too (3001); 010-1111-2019 is invalid (NHN refuses it at
#	send, SENS accepts it and it fails with 3008, not resent).  Without any
#	webhook, every notice reaches
#	a final receipt: 15 delivered by AlimTalk (NHN code 1000, SENS 0000), 5
#	delivered by their fallback (NHN RSC04, SENS 0; the AlimTalk code as
#	the fallback's reason), 1 failed (NHN RSC05, SENS 3001; reason 3019);
#	each fallback records its channel (the provider resent the short text
#	by SMS); each notice names the provider that sent it; the mock's handset
#	counters agree;
#	metrics() counts them; nothing is left awaiting, and each notice was
#	asked about a bounded number of times.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

for my $case (
	[ 'nhn_alimtalk', '1000', 'RSC04', 'RSC05', 'failed/-/-' ],
	[ 'sens_alimtalk', '0000', '0', '3001', 'delivered/failed/3008' ])
{
	my ($dialect, $ok, $fallback_ok, $fallback_failed, $invalid) = @$case;
	my $mock = start_provider_mock();
	my $node = tms_node("polled_$dialect", $mock,
		conf => provider_conf($mock, $dialect, tms_bulk_size => 10,
			alimtalk_fallback => 'provider', receipt_interval => '100ms'));

	is(register_tms_orders($node, 3001, 3020, phone_prefix => '0101111'), 20,
		"$dialect: register 20 orders, numbers 010-1111-3001 .. 3020");
	is(register_tms_orders($node, 3119, 3119, phone_prefix => '0101111'), 1,
		"$dialect: and one whose fallback fails too, 010-1111-3119");
	is(register_tms_orders($node, 2019, 2019, phone_prefix => '0101111'), 1,
		"$dialect: and one with a number the provider finds invalid, 010-1111-2019");
	delay_tms($node, 3001, 3020, 10);
	delay_tms($node, 3119, 3119, 10);
	delay_tms($node, 2019, 2019, 10);
	my $rest = 'order_id <> 2019';

	ok( poll_until(
			$node,
			qq{SELECT count(*) FILTER (WHERE receipt_status IN ('delivered', 'failed'))
			   || '|' || count(*) FROM courier.notices WHERE $rest},
			'21|21', 60),
		"$dialect: every notice reaches a final receipt, asked for by the receipt stage alone");
	is(query($node, qq{
		SELECT r || ':' || count(*)
		  FROM (SELECT receipt_status || ':' || receipt_code || ':'
					   || coalesce(fallback_reason, '-') AS r
				  FROM courier.notices WHERE $rest) n
		 GROUP BY r ORDER BY r COLLATE "C"}),
		join("\n", sort
			"delivered:$fallback_ok:3008:1", "delivered:$fallback_ok:3016:1",
			"delivered:$fallback_ok:3018:1", "delivered:$fallback_ok:3019:1",
			"delivered:$fallback_ok:3020:1", "delivered:$ok:-:15",
			"failed:$fallback_failed:3019:1"),
		"$dialect: 15 by AlimTalk; 5 by the SMS/LMS fallback, each with its reason; 1 failed in both");
	ok( poll_until(
			$node,
			q{SELECT status || '/' || coalesce(receipt_status, '-') || '/'
					 || coalesce(receipt_code, '-') || '/' || coalesce(fallback_reason, '-')
				FROM courier.notices WHERE order_id = 2019},
			"$invalid/-", 30),
		"$dialect: the invalid number: $invalid, no fallback");
	is(query($node, q{
		SELECT count(*) FROM courier.notices
		 WHERE fallback_reason IS NOT NULL
		   AND right(customer_phone, 4) NOT IN (fallback_reason, '3119')}),
		'0', "$dialect: each fallback's reason is its number's AlimTalk code");
	is(query($node, q{
		SELECT count(*) FILTER (WHERE fallback_channel = 'sms') || '|'
			   || count(*) FILTER (WHERE fallback_reason IS NULL AND fallback_channel IS NOT NULL)
		  FROM courier.notices WHERE fallback_reason IS NOT NULL OR fallback_channel IS NOT NULL}),
		'6|0', "$dialect: each of the 6 fallbacks records its channel (SMS: a short text), no other notice one");
	is(query($node, 'SELECT string_agg(DISTINCT provider, \',\') FROM courier.notices'),
		$dialect, "$dialect: each notice names the provider that sent it");

	my $c = mock_customers($mock);
	is("$c->{alimtalk}|" . ($c->{fallback_sms} + $c->{fallback_lms}), '15|5',
		"$dialect: the mock agrees: 15 AlimTalk messages and 5 fallbacks reached a handset");
	is(query($node, q{
		SELECT string_agg(line, ' ' ORDER BY line)
		  FROM regexp_split_to_table(courier.metrics(), E'\n') AS line
		 WHERE line LIKE 'courier_notices_receipts%'}),
		'courier_notices_receipts{receipt="awaiting"} 0 courier_notices_receipts{receipt="delivered"} 20'
		  . ' courier_notices_receipts{receipt="expired"} 0 courier_notices_receipts{receipt="failed"} '
		  . ($dialect eq 'nhn_alimtalk' ? 1 : 2),
		"$dialect: metrics() counts 20 delivered, the failed ones, none awaiting or expired");
	cmp_ok(query($node, 'SELECT max(receipt_checks) FROM courier.notices'), '<=', 8,
		"$dialect: no notice was asked about more than 8 times (the checks back off)");
	is(query($node, q{
		SELECT count(*) FROM courier.notices
		 WHERE receipt_due_at IS NOT NULL OR (receipt_at IS NULL AND status = 'delivered')}),
		'0', "$dialect: nothing is left to ask, and every receipt has its time");
	$node->stop;
}

done_testing();
