
# 057_upgrade_0_4_to_0_5_moves_queued_work.pl
#	Upgrading a database from courier 0.4 to 0.5 keeps and finishes the
#	work queued under 0.4, receipts awaited included.
#
#	0.5 adds courier's own SMS fallback (courier.alimtalk_fallback =
#	courier: record_receipts learns it) and the receipt counts of
#	queue_stats; no table changes.  The server speaks NHN AlimTalk to the
#	mock with that fallback, from postgresql.conf.  The 0.5 library is
#	loaded over an extension created at VERSION '0.4': no worker starts,
#	and the app API keeps working (register_orders; delay_orders queues
#	request 1, orders 1-20).  The sender's state is written as 0.4 leaves
#	it, for the notices of orders 101-103 (new date in 12 days):
#	  101  pending, due now, never tried
#	  102  accepted by NHN AlimTalk, awaiting its receipt (its customer is
#	       not a KakaoTalk user: number ending 3019)
#	  103  failed (in courier.failures, stage tms), its notice 'failed'
#
#	ALTER EXTENSION courier UPDATE runs with both stages paused: every
#	row is as it was; queue_stats counts the awaited receipt.  Then the
#	stages resume, retry_failures re-opens 103, and NHN's webhook for 102
#	says 3019: 102 goes out once by courier's SMS through nhn_sms, every
#	other notice once by AlimTalk, and request 1 adds up.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $current = library_version();

my $mock = start_provider_mock();
my $node = tms_node(
	'upgrade04', $mock,
	create => 0,
	conf => provider_conf($mock, 'nhn_alimtalk', alimtalk_fallback => 'courier')
	  . q{
courier.receipt_interval = '100ms'
courier.idle_wakeup = '500ms'
});

my $workers = "SELECT count(*) FROM pg_stat_activity"
  . " WHERE backend_type IN ('courier logic worker', 'courier tms worker')";

create_at_version($node, '0.4');

# The app API works over the 0.4 schema.
is(register_tms_orders($node, 1, 20), 20, 'register_orders registers 20 orders under 0.4');
is(register_tms_orders($node, 101, 103,
		phone_sql => q{'010' || lpad(g::text, 4, '0') || CASE g WHEN 102 THEN '3019' ELSE '5000' END}),
	3, 'and 3 more, the second of a customer who is not a KakaoTalk user');
my $req1 = delay_tms($node, 1, 20, 10);
is(query($node, "SELECT count(*) FROM courier.work_items WHERE request_id = $req1"),
	'20', 'under 0.4, delay_orders queues 20 logic items');

# 0.4's tms state, as its senders leave it.
query($node, q{
	INSERT INTO courier.requests (reason, new_ship_date, total)
	VALUES ('hail', current_date + 12, 3);
	INSERT INTO courier.notices (order_id, ship_date, seller_id, customer_phone,
								 product_name, reason, status, due_at, attempts,
								 sent_at, channel, http_status, provider_id, provider,
								 receipt_status, receipt_due_at)
	SELECT o.order_id, current_date + 12, o.seller_id, o.customer_phone,
		   o.product_name, 'hail',
		   CASE o.order_id WHEN 101 THEN 'pending' WHEN 102 THEN 'delivered' ELSE 'failed' END,
		   CASE o.order_id WHEN 101 THEN now() END,
		   CASE o.order_id WHEN 101 THEN 0 WHEN 102 THEN 1 ELSE 5 END,
		   CASE o.order_id WHEN 102 THEN now() END,
		   CASE o.order_id WHEN 102 THEN 'alimtalk' END,
		   CASE o.order_id WHEN 102 THEN 200 END,
		   CASE o.order_id WHEN 102 THEN '20261130000000AT000000001/1' END,
		   CASE o.order_id WHEN 102 THEN 'nhn_alimtalk' END,
		   CASE o.order_id WHEN 102 THEN 'awaiting' END,
		   CASE o.order_id WHEN 102 THEN now() + interval '1 hour' END
	  FROM courier.orders o WHERE o.order_id BETWEEN 101 AND 103;
	INSERT INTO courier.failures (stage, seller_id, order_id, ship_date,
								  attempts, last_error, last_http_status, errors,
								  first_queued_at)
	SELECT 'tms', o.seller_id, o.order_id, current_date + 12, 5,
		   'TMS answered HTTP 500', 500,
		   '[{"at": "2026-01-01T00:00:00Z", "error": "TMS answered HTTP 500", "http_status": 500}]',
		   now() - interval '1 hour'
	  FROM courier.orders o WHERE o.order_id = 103;
});

# every row, on the columns it has now (later versions add some)
my %columns;
my %before;
for my $t (qw(work_items notices failures orders requests delay_history))
{
	$columns{$t} = table_columns($node, $t);
	$before{$t} = rows_digest($node, $t, $columns{$t});
}
ok( stays_true(sub { query($node, $workers) eq '0' }, 1,
		'no courier worker under 0.4'),
	'under 0.4 no courier worker starts');

query($node, q{
	ALTER SYSTEM SET courier.pause_logic = on;
	ALTER SYSTEM SET courier.pause_tms = on;
	SELECT pg_reload_conf();});
query($node, 'ALTER EXTENSION courier UPDATE');
is(query($node, "SELECT extversion FROM pg_extension WHERE extname = 'courier'"),
	$current, "ALTER EXTENSION courier UPDATE brings the extension to $current");
for my $t (qw(work_items notices failures orders requests delay_history))
{
	is(rows_digest($node, $t, $columns{$t}), $before{$t},
		"every row of courier.$t is as it was under 0.4");
}
is(query($node, q{
	SELECT receipts_awaiting || '|' || receipts_delivered || '|' || receipts_failed
	  FROM courier.queue_stats WHERE stage = 'tms'}),
	'1|0|0', 'queue_stats counts the receipt awaited since 0.4');

is(query($node, "SELECT courier.retry_failures(stage => 'tms')"), '1',
	'retry_failures puts the tms failure back');
query($node, q{
	ALTER SYSTEM RESET courier.pause_logic;
	ALTER SYSTEM RESET courier.pause_tms;
	SELECT pg_reload_conf();});
ok(poll_until($node, $workers, '2', 30), 'the logic and tms workers start under 0.5');

is(query($node, q{
	SELECT courier.record_receipts(jsonb_build_object(
		'event', 'MESSAGE_RESULT_UPDATE',
		'hooks', jsonb_build_array(jsonb_build_object(
			'recipientGroupingKey', 'dn-102-' || to_char(current_date + 12, 'YYYYMMDD'),
			'resultCode', '3019'))))}),
	'1', 'NHN\'s webhook says the AlimTalk of order 102 could not reach its customer');

ok( poll_until(
		$node,
		"SELECT (SELECT count(*) FROM courier.work_items)"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'pending')"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE receipt_status = 'delivered')",
		'0|0|23', 60),
	'the queued work drains: no item, no pending notice, 23 notices delivered to handsets');
is(query($node, q{
	SELECT provider || ':' || channel || ':' || fallback_reason || ':' || fallback_channel
		   || ':' || attempts
	  FROM courier.notices WHERE order_id = 102}),
	'nhn_sms:sms:3019:sms:2', 'order 102 went out once more, by courier\'s SMS through nhn_sms');
is(query($node, q{
	SELECT count(*) FROM courier.notices
	 WHERE order_id <> 102 AND provider = 'nhn_alimtalk' AND channel = 'alimtalk'
	   AND fallback_reason IS NULL}),
	'22', 'the 22 others went out by AlimTalk');
ok(wait_receipts_final($mock), 'the provider\'s records are final');
my $h = mock_handsets($mock);
is(scalar @{ handset_mismatches($h, phones_of($node, 'order_id <> 102'), alimtalk => 1) },
	0, 'each of those customers received exactly one AlimTalk');
is(scalar @{ handset_mismatches($h, phones_of($node, 'order_id = 102'), sms => 1) },
	0, 'the customer of order 102 received exactly one SMS');
is(query($node, 'SELECT count(*) FROM courier.failures'), '0', 'no failure is left');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req1)"), '20|20|0|0',
	'request 1 (queued under 0.4): 20 total, 20 done, 0 failed, 0 pending');

$node->stop;
done_testing();
