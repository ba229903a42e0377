
# 068_unanswered_send_looked_up_before_resend.pl
#	NHN SMS, SENS SMS and SENS AlimTalk have no idempotency key: a resend
#	of an attempt whose answer never came could reach the customer twice.
#	courier looks such a notice up at the provider before any resend: NHN
#	SMS by the key it carried as recipientGroupingKey; SENS by the
#	customer's number over the last days, telling the notice's message from
#	the customer's others by its text (SENS SMS lists no text: each listed
#	message is asked for its own).  Found, it is recorded as sent with the
#	provider's ids and its receipt; answered three times without it, it is
#	sent again under the same key.
#
#	For each dialect in turn (switched live), one message a request,
#	courier.receipt_interval = 100ms, and two orders per customer (the
#	look-up by number sees both of a customer's messages):
#	1. 20 notices, half of whose replies are lost (the mock takes and
#	   delivers each, then closes the connection without an answer): each
#	   unanswered notice's one attempt is flagged outcome-unknown, it is
#	   found, marked delivered with the provider's ids and its receipt,
#	   and courier never sends it a second time (attempts 1); nor does
#	   libcurl (which resends a request over a reused connection that
#	   closes unanswered): each customer gets exactly one message per
#	   order;
#	2. 10 notices to the same customers whose connections are reset
#	   (nothing taken): looked up, not found three times (the customer's
#	   messages of part 1 are not theirs), sent again once the provider
#	   answers, and delivered: each customer gets exactly one message per
#	   order.

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

# what each dialect's notices look like once delivered
my %dialects = (
	nhn_sms => { id => qr/^[0-9]{14}SM[0-9]{9}\/[0-9]+$/, code => '1000', kind => 'sms' },
	sens_sms => {
		id => qr/^RSSA-[0-9]{14}-[0-9]{9}(\/[0-9]+)?$/,
		code => '0',
		kind => 'sms'
	},
	sens_alimtalk => {
		id => qr/^RATA-[0-9]{14}-[0-9]{9}\/[0-9a-f-]{36}$/,
		code => '0000',
		kind => 'alimtalk'
	});

# lookups(DIALECT, FIRST, PREFIX): both parts for orders FIRST.. with
# numbers PREFIX + n, two orders to each number.
sub lookups
{
	my ($dialect, $first, $prefix) = @_;
	my $d = $dialects{$dialect};
	my $part1 = "order_id BETWEEN $first AND " . ($first + 19);
	my $part2 = "order_id BETWEEN " . ($first + 100) . ' AND ' . ($first + 109);
	my $phones = "'$prefix' || lpad(((g + 1) / 2)::text, 7, '0')";

	set_conf($node, tms_provider => $dialect);

	# ---- 1. lost replies: taken, found, not resent
	is(register_tms_orders($node, $first, $first + 19, phone_sql => $phones),
		20, "$dialect: register 20 orders, two to each number");
	my $lost = mock_stats($mock)->{lost_replies};
	my $before = mock_handsets($mock);
	mock_control($mock, lost_reply_rate => 0.5, seed => $first);
	delay_tms($node, $first, $first + 19, 10);
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE $part1"
			  . " AND (receipt_status = 'unconfirmed' OR status = 'delivered')",
			'20', 60),
		"$dialect: every notice is answered, or unanswered and held for a look-up");
	mock_control($mock, lost_reply_rate => 0);
	cmp_ok(mock_stats($mock)->{lost_replies} - $lost, '>=', 3,
		"$dialect: the provider lost replies");
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE $part1"
			  . " AND status = 'delivered' AND receipt_status = 'delivered'",
			'20', 60),
		"$dialect: each is delivered; the unanswered ones found at the provider");
	my @rows = split /\n/, query($node, qq{
		SELECT order_id, attempts, provider_id, receipt_code,
			   jsonb_array_length(errors) = 1 AND (errors -> 0 ->> 'outcome_unknown')::boolean
		  FROM courier.notices WHERE $part1 ORDER BY order_id});
	my @wrong = grep {
		my (undef, $attempts, $pid, $code) = split /\|/;
		$attempts ne '1' || $pid !~ $d->{id} || $code ne $d->{code}
	} @rows;
	is(scalar(@wrong), 0,
		"$dialect: each: one attempt (never resent by courier), its provider ids and code $d->{code}")
	  or diag("first: $wrong[0]");
	cmp_ok(scalar(grep { /\|t$/ } @rows), '>=', 3,
		"$dialect: the unanswered ones have their outcome-unknown attempt noted");
	is(query($node, "SELECT count(*) FROM courier.failures WHERE $part1"), '0',
		"$dialect: nothing failed");
	ok(wait_receipts_final($mock), "$dialect: the provider has a final state for every message");
	my $after = mock_handsets($mock);
	my @twice = grep {
		($after->{$_}{ $d->{kind} } // 0) - ($before->{$_}{ $d->{kind} } // 0) != 2
		  || ($after->{$_}{total} // 0) - ($before->{$_}{total} // 0) != 2
	} @{ phones_of($node, "$part1 AND order_id % 2 = $first % 2") };
	is(scalar(@twice), 0,
		"$dialect: each of the 10 customers received exactly one $d->{kind} per order:"
		  . ' libcurl resent nothing by itself')
	  or diag("first: $twice[0]");

	# ---- 2. resets: nothing taken, looked up, sent again.  Their customers
	# are those of part 1 (order g + 100 goes to the number of order g): a
	# look-up by number sees their part-1 messages, and must not take one
	# of those for the notice's own.
	$before = mock_handsets($mock);
	is(register_tms_orders($node, $first + 100, $first + 109,
			phone_sql => "'$prefix' || lpad(((g - 100 + 1) / 2)::text, 7, '0')"),
		10, "$dialect: register 10 more, for customers of part 1");
	mock_control($mock, reset_rate => 1);
	delay_tms($node, $first + 100, $first + 109, 11);
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE $part2 AND receipt_status = 'unconfirmed'",
			'10', 60),
		"$dialect: the 10 unanswered notices are held for a look-up");
	mock_control($mock, reset_rate => 0);
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE $part2"
			  . " AND status = 'delivered' AND receipt_status = 'delivered'",
			'10', 60),
		"$dialect: not found, they are sent again and delivered");
	is(query($node, "SELECT min(attempts) || '|' || max(attempts) FROM courier.notices WHERE $part2"),
		'2|2', "$dialect: each took two attempts: the unanswered one and the resend");
	ok(wait_receipts_final($mock), "$dialect: the provider has a final state for every message");
	$after = mock_handsets($mock);
	@twice = grep {
		($after->{$_}{ $d->{kind} } // 0) - ($before->{$_}{ $d->{kind} } // 0) != 2
		  || ($after->{$_}{total} // 0) - ($before->{$_}{total} // 0) != 2
	} @{ phones_of($node, "$part2 AND order_id % 2 = $first % 2") };
	is(scalar(@twice), 0,
		"$dialect: each of the 5 customers received exactly one more $d->{kind} per order")
	  or diag("first: $twice[0]");
	return;
}

lookups('nhn_sms', 1, '0101');
lookups('sens_sms', 1001, '0102');
lookups('sens_alimtalk', 2001, '0103');

$node->stop;
done_testing();
