
# 022_tms_permanent_errors_fail_fast.pl
#	Permanent errors are not retried: a message the TMS rejects (invalid
#	number) or answered with a 4xx other than 401/403/408/429 goes straight
#	to courier.failures after its one attempt, with the provider's code in
#	last_error, while the other notices of the batch are delivered.  A
#	message courier knows cannot be carried (a character EUC-KR lacks, such
#	as an emoji) fails at once without being sent at all, and so does a
#	notice older than courier.tms_max_notice_age.  Routing counts
#	bytes in EUC-KR, as Korean carriers do: up to 90 bytes is an SMS, more
#	an LMS; Hangul is 2 bytes there (3 in UTF-8).
#
#	courier.notice_template is '{reason}' here, so the message is exactly
#	the reason and its length is chosen by the test.

use strict;
use warnings;
use utf8;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_mock();
my $node = tms_node('tms_permanent', $mock, conf => "courier.notice_template = '{reason}'\n");

is(query($node, 'SHOW server_encoding'), 'UTF8', 'the database is UTF-8');

# Orders 1..100 have good phones, 101..120 phones the mock rejects.
is(register_tms_orders($node, 1, 100, phone_prefix => '0101'),
	100, 'register 100 orders with valid numbers');
is(register_tms_orders($node, 101, 120, phone_prefix => '0109'),
	20, 'register 20 orders with numbers the TMS rejects');
mock_control($mock, reject_prefix => '0109');

delay_tms($node, 1, 120, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 10 AND status <> 'pending'",
		'120', 60),
	'all 120 notices are settled');
is(query($node, qq{
	SELECT string_agg(status || ':' || n || ':' || lo || '-' || hi, ' ' ORDER BY status)
	  FROM (SELECT status, count(*) AS n, min(order_id) AS lo, max(order_id) AS hi
			  FROM courier.notices WHERE ship_date = current_date + 10
			 GROUP BY status) s}),
	'delivered:100:1-100 failed:20:101-120',
	'the 100 valid numbers are delivered, the 20 rejected ones failed');
is(query($node, qq{
	SELECT count(*) FROM courier.failures
	 WHERE stage = 'tms' AND ship_date = current_date + 10
	   AND order_id BETWEEN 101 AND 120
	   AND attempts = 1 AND jsonb_array_length(errors) = 1
	   AND last_error LIKE '%invalid_number%' AND last_http_status = 200}),
	'20',
	'each rejected notice is in courier.failures after 1 attempt,'
	  . ' last_error naming invalid_number');
is(query($node, "SELECT count(*) FROM courier.failures"),
	'20', 'nothing else failed');
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE order_id BETWEEN 101 AND 120
	   AND (status = 'pending' OR due_at IS NOT NULL OR leased_by IS NOT NULL)}),
	'0', 'no rejected notice stays queued for a retry: none pending, due or leased');
my $s = mock_stats($mock);
is("$s->{messages_received}|$s->{delivered}|$s->{rejected}", '120|100|20',
	'the mock received each message once: 100 delivered, 20 rejected, no retry');

# Routing by length in EUC-KR bytes (the message is the reason).
my %reason = (
	1 => 'a' x 90,     # 90 bytes: sms
	2 => 'a' x 91,     # 91 bytes: lms
	3 => '가' x 45,    # 90 bytes in EUC-KR, 135 in UTF-8: sms
	4 => '가' x 46,    # 92 bytes in EUC-KR: lms
);
delay_tms($node, $_, $_, 11, $reason{$_}) for sort keys %reason;
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 11 AND status = 'delivered'",
		'4', 60),
	'the 4 notices of chosen lengths are delivered');
is(query($node, qq{
	SELECT string_agg(order_id || ':' || channel, ' ' ORDER BY order_id)
	  FROM courier.notices WHERE ship_date = current_date + 11}),
	'1:sms 2:lms 3:sms 4:lms',
	'90 bytes goes sms, 91 lms; 45 Hangul (90 EUC-KR bytes) sms, 46 lms');

# An emoji: not sent at all.
my $before = mock_stats($mock);
delay_tms($node, 5, 5, 12, "rain \x{1F327}");
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.failures"
		  . " WHERE order_id = 5 AND ship_date = current_date + 12",
		'1', 30),
	'a notice with an emoji ends in courier.failures');
is(query($node, qq{
	SELECT attempts, last_http_status IS NULL, last_error LIKE '%EUC-KR%'
	  FROM courier.failures WHERE order_id = 5 AND ship_date = current_date + 12}),
	'1|t|t',
	'after 1 attempt, without an HTTP status, the error naming EUC-KR');
is(query($node,
	"SELECT status, sent_at IS NULL FROM courier.notices"
	  . " WHERE order_id = 5 AND ship_date = current_date + 12"),
	'failed|t', 'its notice is failed and was never sent');
my $after = mock_stats($mock);
is("$after->{requests}|$after->{messages_received}",
	"$before->{requests}|$before->{messages_received}",
	'the mock received no request and no message for it');

# A notice older than courier.tms_max_notice_age (1 day): not sent late.
# The tms stage is paused while the notice is aged.
query($node, 'ALTER SYSTEM SET courier.pause_tms = on');
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 AND bool_and(query = 'courier.pause_tms is on')"
		  . "  FROM pg_stat_activity WHERE backend_type = 'courier tms worker'",
		't', 30),
	'with courier.pause_tms = on the tms workers hold');
delay_tms($node, 7, 7, 12);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE order_id = 7 AND ship_date = current_date + 12"
		  . "   AND status = 'pending' AND due_at IS NOT NULL",
		'1', 30),
	'the notice to age is queued (pending)');
query($node,
	"UPDATE courier.notices SET created_at = now() - interval '25 hours'"
	  . " WHERE order_id = 7 AND ship_date = current_date + 12");
my $before_age = mock_stats($mock);
query($node, 'ALTER SYSTEM SET courier.pause_tms = off');
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.failures"
		  . " WHERE order_id = 7 AND ship_date = current_date + 12",
		'1', 30),
	'a notice older than courier.tms_max_notice_age ends in courier.failures');
is(query($node, qq{
	SELECT f.attempts, f.last_error LIKE '%tms_max_notice_age%', n.status,
		   n.sent_at IS NULL
	  FROM courier.failures f JOIN courier.notices n USING (order_id, ship_date)
	 WHERE f.order_id = 7 AND f.ship_date = current_date + 12}),
	'1|t|failed|t',
	'after 1 attempt, the error naming courier.tms_max_notice_age, never sent');
is(mock_stats($mock)->{requests}, $before_age->{requests},
	'the mock received no request for it');

# Another 4xx (422): permanent, one attempt.
mock_control($mock, error_rate => 1.0, error_status => 422);
delay_tms($node, 6, 6, 12);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.failures"
		  . " WHERE order_id = 6 AND ship_date = current_date + 12",
		'1', 30),
	'a notice answered HTTP 422 ends in courier.failures');
is(query($node, qq{
	SELECT attempts, last_http_status, last_error LIKE '%422%'
	  FROM courier.failures WHERE order_id = 6 AND ship_date = current_date + 12}),
	'1|422|t', 'after 1 attempt, with HTTP status 422 in the record');
is(mock_stats($mock)->{requests} - $after->{requests},
	1, 'it was sent once, not retried');

$node->stop;
done_testing();
