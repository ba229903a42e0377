
# 068_unanswered_send_looked_up_before_resend.pl
#	NHN SMS has no idempotency key: a resend of an attempt whose answer
#	never came could reach the customer twice.  courier looks such a
#	notice up at the provider (by the key it carried as
#	recipientGroupingKey) before any resend: found, it is recorded as sent
#	with the provider's request id and its receipt; answered three times
#	without it, it is sent again under the same key.
#
#	nhn_sms, one message a request, courier.receipt_interval = 100ms:
#	1. 20 notices, half of whose replies are lost (the mock takes and
#	   delivers each, then closes the connection without an answer): each
#	   unanswered notice's one attempt is flagged outcome-unknown, it is
#	   found by its key, marked delivered with provider id requestId/seq
#	   and receipt 1000, and courier never sends it a second time
#	   (attempts 1); nor does libcurl (which resends a request over a
#	   reused connection that closes unanswered): each customer gets
#	   exactly one SMS;
#	2. 10 notices whose connections are reset (nothing taken): looked up,
#	   not found three times, sent again once the provider answers, and
#	   delivered: each customer gets exactly one SMS.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_provider_mock();
my $node = tms_node('lookup', $mock,
	conf => provider_conf($mock, 'nhn_sms', receipt_interval => '100ms') . q{
courier.tms_bulk_size = 1
courier.tms_timeout = '2s'
courier.max_attempts = 5
});

# ---- 1. lost replies: taken, found, not resent.  Half the replies are
# lost, so connections that answered are there to be reused: libcurl
# would resend a request by itself over a reused connection that closes
# unanswered, unless courier sends each request over a connection of its
# own (src/http.c).
is(register_tms_orders($node, 1, 20, phone_prefix => '0101'), 20, 'register 20 orders');
my $lost = mock_stats($mock)->{lost_replies};
mock_control($mock, lost_reply_rate => 0.5, seed => 68);
delay_tms($node, 1, 20, 10);
ok( poll_until(
		$node,
		q{SELECT count(*) FROM courier.notices
		   WHERE receipt_status = 'unconfirmed' OR status = 'delivered'},
		'20', 60),
	'every notice is answered, or unanswered and held for a look-up, not resent');
mock_control($mock, lost_reply_rate => 0);
cmp_ok(mock_stats($mock)->{lost_replies} - $lost, '>=', 3, 'the provider lost replies');
ok( poll_until(
		$node,
		q{SELECT count(*) FROM courier.notices
		   WHERE status = 'delivered' AND receipt_status = 'delivered'},
		'20', 60),
	'each is delivered; the unanswered ones found at the provider by their key');
is(query($node, q{
	SELECT count(*) FILTER (WHERE attempts = 1 AND provider_id ~ '^[0-9]{14}SM[0-9]{9}/[0-9]+$'
							  AND receipt_code = '1000')
		   || '|' || (count(*) FILTER (WHERE jsonb_array_length(errors) = 1
											AND (errors -> 0 ->> 'outcome_unknown')::boolean) > 2)
	  FROM courier.notices}),
	'20|true', 'each: one attempt (never resent by courier), provider id and code; the unanswered'
	  . ' ones with outcome-unknown noted');
is(query($node, 'SELECT count(*) FROM courier.failures'), '0', 'nothing failed');
ok(wait_receipts_final($mock), 'the provider has a final state for every message');
is(scalar @{ handset_mismatches(mock_handsets($mock),
			phones_of($node, 'ship_date = current_date + 10'), sms => 1) },
	0, 'each of the 20 customers received exactly one SMS: libcurl resent nothing by itself');

# ---- 2. resets: nothing taken, looked up, sent again
my $before = mock_customers($mock);
is(register_tms_orders($node, 101, 110, phone_prefix => '0102'), 10, 'register 10 more');
mock_control($mock, reset_rate => 1);
delay_tms($node, 101, 110, 11);
ok( poll_until(
		$node,
		q{SELECT count(*) FROM courier.notices
		   WHERE ship_date = current_date + 11 AND receipt_status = 'unconfirmed'},
		'10', 60),
	'the 10 unanswered notices are held for a look-up');
mock_control($mock, reset_rate => 0);
ok( poll_until(
		$node,
		q{SELECT count(*) FROM courier.notices
		   WHERE ship_date = current_date + 11 AND status = 'delivered'
		     AND receipt_status = 'delivered'},
		'10', 60),
	'not found, they are sent again and delivered')
  or diag(query($node, q{SELECT order_id, status, attempts, due_at, receipt_status, receipt_checks, receipt_due_at, provider_id, provider, channel, errors FROM courier.notices WHERE ship_date = current_date + 11 ORDER BY 1 LIMIT 3}));
is(query($node, q{
	SELECT min(attempts) || '|' || max(attempts) FROM courier.notices
	 WHERE ship_date = current_date + 11}),
	'2|2', 'each took two attempts: the unanswered one and the resend');
ok(wait_receipts_final($mock), 'the provider has a final state for every message');
is(scalar @{ handset_mismatches(mock_handsets($mock),
			phones_of($node, 'ship_date = current_date + 11'), sms => 1) },
	0, 'each of the 10 customers received exactly one SMS');

$node->stop;
done_testing();
