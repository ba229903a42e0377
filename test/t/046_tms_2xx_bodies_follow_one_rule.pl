
# 046_tms_2xx_bodies_follow_one_rule.pl
#	Every 2xx answer of the provider is read by one rule:
#	  - an empty body, or a JSON object without "results", accepts every
#	    message of the request: delivered;
#	  - with a "results" array, each message's entry decides: "accepted"
#	    delivered (with its provider_id), "rejected" a permanent failure
#	    (courier.failures after 1 attempt), any other status ("failed",
#	    "queued") retried under the same idempotency key with its outcome
#	    unknown, until courier.max_attempts moves it to courier.failures;
#	    a message without an entry is delivered;
#	  - a body that is not JSON, JSON that is not an object ([]), or
#	    "results" that is not an array: every message retried, outcome
#	    unknown, until courier.max_attempts.
#	One distinct set of orders (and ship date) per case, the mock steered
#	with reply_body, result_status and reject_prefix; each case checks the
#	notices' end state, the failures' attempts, last_error and outcome
#	flags, and how often the mock received each message (the retries carry
#	the same message id, which is the idempotency key).
#
#	courier 0.1 treated any status other than "rejected" as accepted, so a
#	message the provider answered "failed" (or "queued") was recorded as
#	delivered and never sent again; and it required "results", so the
#	provider's `{"queued": true}` was read as unreadable, retried 3 times
#	and failed, and "results" that is not an array was reported as an
#	unreadable body rather than named.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $MAX = 3;

my $mock = start_mock();

# Bulk sends, so that one case's messages share a request and each entry
# of "results" must be matched to its message.  The breaker (023) is kept
# out of the way: the unreadable answers fail many requests in a row.
my $node = tms_node(
	'tms_2xx_rule', $mock, conf => qq{
courier.max_attempts = $MAX
courier.tms_bulk_size = 10
courier.tms_breaker_threshold = 100000
});

is(register_tms_orders($node, 1, 89), 89, 'register_orders registers 89 orders');
is(register_tms_orders($node, 91, 93, phone_prefix => '0109'),
	3, 'register_orders registers 3 orders with phones the provider rejects');

# the message id (idempotency key) of ORDER's notice for today + DAYS
sub key_of
{
	my ($order, $days) = @_;
	return "dn-$order-"
	  . query($node, "SELECT to_char(current_date + $days, 'YYYYMMDD')");
}

# run_case(LABEL, FIRST, LAST, DAYS, CONTROLS...)
#	Reset the mock, apply CONTROLS, delay FIRST..LAST to today + DAYS and
#	wait until none of their notices is left in the tms queue.  Returns
#	the mock's counters.
sub run_case
{
	my ($label, $first, $last, $days, %controls) = @_;
	my $n = $last - $first + 1;
	my $where = "order_id BETWEEN $first AND $last";

	mock_reset($mock);
	mock_control($mock, %controls) if %controls;
	delay_tms($node, $first, $last, $days);
	ok( poll_until(
			$node,
			"SELECT (SELECT count(*) FROM courier.notices"
			  . "       WHERE $where AND ship_date = current_date + $days) = $n"
			  . "   AND NOT EXISTS (SELECT 1 FROM courier.notices"
			  . "                    WHERE status = 'pending' AND $where)",
			't', 30),
		"$label: the $n notices are written and leave the tms queue");
	wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight');
	return mock_stats($mock);
}

# delivered(LABEL, FIRST, LAST, DAYS, PROVIDER_IDS)
#	Each notice is delivered on its first attempt, HTTP 200, with the
#	provider ids PROVIDER_IDS (a comma list in order id order; '' for
#	none), and none is in courier.failures.
sub delivered
{
	my ($label, $first, $last, $days, $pids) = @_;
	my $n = $last - $first + 1;
	my $where = "order_id BETWEEN $first AND $last AND ship_date = current_date + $days";

	is(query($node, qq{
		SELECT count(*) FILTER (WHERE status = 'delivered' AND attempts = 1
								  AND http_status = 200 AND sent_at IS NOT NULL),
			   coalesce(string_agg(provider_id, ',' ORDER BY order_id), '')
		  FROM courier.notices WHERE $where}),
		"$n|$pids",
		"$label: the $n notices are delivered on their first attempt"
		  . ($pids eq '' ? ', with no provider id' : " with provider ids $pids"));
	is(query($node, "SELECT count(*) FROM courier.failures WHERE $where"),
		'0', "$label: nothing in courier.failures");
	return;
}

# failed(LABEL, FIRST, LAST, DAYS, ATTEMPTS, ERROR, UNKNOWN)
#	Each notice is marked failed and in courier.failures once, after
#	ATTEMPTS attempts all in its history, with last_error ERROR and HTTP
#	200, every attempt flagged outcome_unknown (UNKNOWN) or none.
sub failed
{
	my ($label, $first, $last, $days, $attempts, $error, $unknown) = @_;
	my $n = $last - $first + 1;
	my $where = "order_id BETWEEN $first AND $last AND ship_date = current_date + $days";
	my $flag = $unknown ? 'bool_and' : 'NOT bool_or';

	is(query($node, "SELECT count(*) FILTER (WHERE status = 'failed') FROM courier.notices WHERE $where"),
		"$n", "$label: the $n notices are marked failed");
	is(query($node, qq{
		SELECT count(*), count(DISTINCT order_id),
			   count(*) FILTER (WHERE attempts = $attempts
								  AND jsonb_array_length(errors) = $attempts
								  AND last_http_status = 200
								  AND (SELECT $flag(coalesce((e->>'outcome_unknown')::boolean, false))
										 FROM jsonb_array_elements(errors) e))
		  FROM courier.failures WHERE stage = 'tms' AND $where}),
		"$n|$n|$n",
		"$label: each is in courier.failures once after $attempts attempt(s), HTTP 200, "
		  . ($unknown ? 'every attempt' : 'no attempt') . ' flagged outcome_unknown');
	is(query($node, "SELECT DISTINCT last_error FROM courier.failures WHERE stage = 'tms' AND $where"),
		$error, "$label: last_error is '$error'");
	return;
}

# received(LABEL, FIRST, LAST, DAYS, TIMES): the mock received each
# message exactly TIMES times (under its one message id).
sub received
{
	my ($label, $first, $last, $days, $times) = @_;
	my $got = received_counts($mock);
	my @keys = map { key_of($_, $days) } $first .. $last;
	my @wrong = grep { ($got->{$_} // 0) != $times } @keys;

	is(scalar(@wrong), 0,
		"$label: the mock received each message $times time(s), under the same id")
	  or diag(join(', ', map { "$_: " . ($got->{$_} // 0) } @wrong));
	return;
}

my $s;

# An empty body accepts the request as a whole.
$s = run_case('empty body', 1, 3, 10, reply_body => '');
delivered('empty body', 1, 3, 10, '');
received('empty body', 1, 3, 10, 1);

# A JSON object without "results" accepts the request as a whole.
$s = run_case('{"queued": true}', 11, 13, 10, reply_body => '{"queued": true}');
delivered('{"queued": true}', 11, 13, 10, '');
received('{"queued": true}', 11, 13, 10, 1);

# A "results" array without an entry for a message accepts that message.
$s = run_case('{"results": []}', 21, 23, 10, reply_body => '{"results": []}');
delivered('{"results": []}', 21, 23, 10, '');
received('{"results": []}', 21, 23, 10, 1);

# One request, one entry per message decides: accepted, rejected, an odd
# status, and no entry at all.
{
	my ($k31, $k32, $k33) = map { key_of($_, 10) } 31, 32, 33;
	my $body = qq({"results": [)
	  . qq({"id": "$k31", "status": "accepted", "code": "ok", "provider_id": "p-31"}, )
	  . qq({"id": "$k32", "status": "rejected", "code": "blocked", "provider_id": ""}, )
	  . qq({"id": "$k33", "status": "failed", "code": "carrier_down"}]});
	my $label = 'entries decide per message';

	$s = run_case($label, 31, 34, 10, reply_body => $body);
	is(query($node, qq{
		SELECT string_agg(order_id || ':' || status || ':' || coalesce(attempts::text, '-')
						  || ':' || coalesce(provider_id, '-'), ',' ORDER BY order_id)
		  FROM courier.notices WHERE order_id BETWEEN 31 AND 34
		   AND ship_date = current_date + 10}),
		'31:delivered:1:p-31,32:failed:1:-,33:failed:3:-,34:delivered:1:-',
		"$label: accepted and no entry are delivered (with the entry's provider id),"
		  . ' rejected (after 1 attempt) and "failed" (after 3, its retries) end failed,'
		  . ' each notice counting its attempts');
	is(query($node, qq{
		SELECT string_agg(order_id || ':' || attempts || ':' || last_error, ' / ' ORDER BY order_id)
		  FROM courier.failures WHERE order_id BETWEEN 31 AND 34
		   AND ship_date = current_date + 10}),
		'32:1:TMS rejected the message: blocked / '
		  . "33:$MAX:TMS answered status \"failed\" for the message: neither accepted nor rejected",
		"$label: rejected fails at once, \"failed\" after $MAX attempts");
	my $got = received_counts($mock);
	is(join(',', map { $got->{ key_of($_, 10) } // 0 } 31 .. 34),
		"1,1,$MAX,1",
		"$label: only the message answered \"failed\" was sent again ($MAX times in all)");
}

# A status other than accepted or rejected leaves the outcome unknown:
# retried under the same id until the attempts run out.
for my $case ([ 'failed', 41, 43 ], [ 'queued', 51, 53 ])
{
	my ($status, $first, $last) = @$case;
	my $label = "result status \"$status\"";

	$s = run_case($label, $first, $last, 10, result_status => $status);
	failed($label, $first, $last, 10, $MAX,
		"TMS answered status \"$status\" for the message: neither accepted nor rejected", 1);
	received($label, $first, $last, 10, $MAX);
	is($s->{delivered}, 0, "$label: the mock delivered none of them");
}

# Unreadable 2xx answers: every message retried, outcome unknown.
for my $case (
	[ '[]', 61, 63, 'TMS answered 2xx with an unreadable body' ],
	[ '{"results": {}}', 71, 73,
		'TMS answered 2xx with "results" that is not an array' ],
	[ 'OK, got them', 81, 83, 'TMS answered 2xx with an unreadable body' ])
{
	my ($body, $first, $last, $error) = @$case;
	my $label = "body '$body'";

	$s = run_case($label, $first, $last, 10, reply_body => $body);
	failed($label, $first, $last, 10, $MAX, $error, 1);
	received($label, $first, $last, 10, $MAX);
}

# The provider's own rejection: failed at once, not sent again.
$s = run_case('rejected recipient', 91, 93, 10, reject_prefix => '0109');
failed('rejected recipient', 91, 93, 10, 1,
	'TMS rejected the message: invalid_number', 0);
received('rejected recipient', 91, 93, 10, 1);
is($s->{rejected}, 3, 'rejected recipient: the mock rejected the 3 messages');

$node->stop;
done_testing();
