
# 050_upgrade_from_0_1_moves_queued_work.pl
#	Upgrading a database from courier 0.1 to the current version (through
#	every upgrade script: 0.1 -> 0.2 -> 0.3) keeps and finishes the work
#	queued under 0.1.
#
#	The current library is loaded over an extension created at VERSION '0.1':
#	the launcher warns (once) that the extension is at 0.1 and starts no
#	worker, so work queued meanwhile stays queued; run_once refuses (the
#	library's stages work on its own schema only), while the app API keeps
#	working.  Under 0.1: request 1 (orders 1-40) was applied in part by
#	0.1's logic stage, one batch of 20, which wrote 19 pending notices and
#	their tms items and moved order 7 to courier.failures (written here in
#	0.1's tables as 0.1 wrote them); request 2 (orders 41-80) is queued
#	whole; the app invoices order 3, whose notice is pending.
#
#	Then ALTER EXTENSION courier UPDATE: the extension is at 0.3, the
#	workers start and drain everything.  Every queued logic item is
#	applied once; every notice (39 + 40) is delivered exactly once at the
#	provider, except order 3's, which is dropped unsent (its close
#	committed before); order 7's failure is still there as it was;
#	request_status adds up (request 1: 40 total, 39 done, 1 failed;
#	request 2: 40 done); register_invoice answers in text ('delivered',
#	'none').
#
#	courier 0.1 had no upgrade script (ALTER EXTENSION courier UPDATE had
#	nowhere to go), its launcher started workers whatever version was
#	installed, and register_invoice returned a boolean.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# the version the library needs; ALTER EXTENSION UPDATE goes all the way
my $current = library_version();

my $mock = start_mock();

# The extension is created below, at version 0.1.
my $node = tms_node('upgrade', $mock, create => 0);

my $workers = "SELECT count(*) FROM pg_stat_activity"
  . " WHERE backend_type IN ('courier logic worker', 'courier tms worker')";

my $offset = log_offset($node);
create_at_version($node, '0.1');

is(register_tms_orders($node, 1, 80), 80, 'register_orders registers 80 orders under 0.1');
my $req1 = delay_tms($node, 1, 40, 10);

# The library's stages work on its own schema only: run_once says so.
my ($rc, $out, $err) = $node->psql('postgres', "SELECT courier.run_once('logic')");
like($err, qr/courier\.run_once needs the extension at version \Q$current\E, it is at 0\.1.*HINT:  Run ALTER EXTENSION courier UPDATE/s,
	'under 0.1, run_once refuses: the library needs the schema of its own version');

# What 0.1's logic stage wrote for one batch of 20 items of request 1, in
# 0.1's tables: orders 1-20 but 7 delayed, with history, a pending notice
# and its tms item each; order 7 in courier.failures (a shop trigger had
# refused to change it; courier.max_attempts was 1).
query($node, qq{
	UPDATE courier.orders SET promised_ship_date = current_date + 10, delay_reason = 'rain'
	 WHERE order_id BETWEEN 1 AND 20 AND order_id <> 7;
	INSERT INTO courier.delay_history (request_id, order_id, seller_id, old_ship_date,
									   new_ship_date, outcome)
	SELECT $req1, order_id, seller_id, current_date + 3, current_date + 10, 'delayed'
	  FROM courier.orders WHERE order_id BETWEEN 1 AND 20 AND order_id <> 7;
	INSERT INTO courier.notices (order_id, ship_date, seller_id, customer_phone,
								 product_name, reason)
	SELECT order_id, current_date + 10, seller_id, customer_phone, product_name, 'rain'
	  FROM courier.orders WHERE order_id BETWEEN 1 AND 20 AND order_id <> 7;
	INSERT INTO courier.work_items (stage, seller_id, order_id, ship_date)
	SELECT 'tms', seller_id, order_id, ship_date FROM courier.notices;
	INSERT INTO courier.failures (item_id, stage, seller_id, order_id, request_id,
								  attempts, last_error, last_sqlstate, errors,
								  first_queued_at)
	SELECT w.item_id, 'logic', w.seller_id, w.order_id, w.request_id, 1,
		   'order 7 is held by the warehouse', '23514',
		   '[{"at": "2026-01-01T00:00:00Z", "error": "order 7 is held by the warehouse", "sqlstate": "23514"}]',
		   w.created_at
	  FROM courier.work_items w WHERE w.stage = 'logic' AND w.order_id = 7;
	DELETE FROM courier.work_items
	 WHERE stage = 'logic' AND request_id = $req1 AND order_id BETWEEN 1 AND 20;
});
my $req2 = delay_tms($node, 41, 80, 11);

my $failure = query($node, q{
	SELECT failure_id || '|' || stage || '|' || order_id || '|' || request_id
		   || '|' || attempts || '|' || last_sqlstate || '|' || last_error
	  FROM courier.failures});
is($failure, "1|logic|7|$req1|1|23514|order 7 is held by the warehouse",
	'under 0.1, order 7 is in courier.failures after its one attempt');
is(query($node, qq{
	SELECT (SELECT count(*) FROM courier.notices WHERE status = 'pending'),
		   (SELECT count(*) FROM courier.work_items WHERE stage = 'tms'),
		   (SELECT count(*) FROM courier.work_items WHERE stage = 'logic' AND request_id = $req1),
		   (SELECT count(*) FROM courier.work_items WHERE stage = 'logic' AND request_id = $req2)}),
	'19|19|20|40',
	'under 0.1: 19 notices pending with their tms items; 20 + 40 logic items queued');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req1)"), '40|19|1|20',
	'under 0.1, request 1: 40 total, 19 done, 1 failed, 20 pending');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req2)"), '40|0|0|40',
	'under 0.1, request 2: 40 total, all pending');

# The app invoices order 3, whose notice is pending, before the upgrade.
# Through 0.1's declaration the current library answers as 0.1 did (a boolean:
# was a notice dropped) and drops the notice as 0.1 did (0.1 has no trigger).
is(query($node, "SELECT courier.register_invoice(3, 'INV-3')"), 't',
	'under 0.1, register_invoice answers as 0.1 did: true, a notice was dropped');
is(query($node, "SELECT status FROM courier.orders WHERE order_id = 3"),
	'invoiced', 'under 0.1 the app invoices order 3, whose notice is pending');
is(query($node, "SELECT status FROM courier.notices WHERE order_id = 3"),
	'dropped', "under 0.1, order 3's pending notice is dropped at once");

# While the extension is at 0.1, nothing moves: no worker, no send.
ok( stays_true(
		sub {
			query($node, $workers) eq '0'
			  && query($node, 'SELECT count(*) FROM courier.work_items') eq '78';
		},
		2,
		'no courier worker and the 78 queued items stay queued'),
	'under 0.1 no courier worker starts and the queued work stays queued');
is(mock_stats($mock)->{messages_received}, 0, 'under 0.1 nothing was sent');
my @warnings = slurp_file($node->logfile, $offset)
  =~ /extension courier is at version 0\.1, the library needs \Q$current\E/g;
is(scalar(@warnings), 1, 'the launcher gave its warning once, not on every look');

query($node, 'ALTER EXTENSION courier UPDATE');
is(query($node, "SELECT extversion FROM pg_extension WHERE extname = 'courier'"),
	$current, "ALTER EXTENSION courier UPDATE brings the extension to $current");
ok( poll_until(
		$node,
		"SELECT count(*) FILTER (WHERE backend_type = 'courier logic worker') > 0"
		  . "   AND count(*) FILTER (WHERE backend_type = 'courier tms worker') > 0"
		  . "  FROM pg_stat_activity",
		't', 30),
	'after the update the launcher starts logic and tms workers');
ok( poll_until(
		$node,
		"SELECT (SELECT count(*) FROM courier.work_items)"
		  . "   || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'delivered')",
		'0|78', 60),
	'the queued work drains: no item left, 78 notices delivered');

is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req1)"), '40|39|1|0',
	'request 1: 40 total, 39 done, 1 failed, 0 pending');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req2)"), '40|40|0|0',
	'request 2: 40 total, 40 done, 0 failed, 0 pending');
is(query($node, qq{
	SELECT request_id, count(*), count(DISTINCT order_id),
		   count(*) FILTER (WHERE outcome = 'delayed')
	  FROM courier.delay_history GROUP BY request_id ORDER BY request_id}),
	"$req1|39|39|39\n$req2|40|40|40",
	'every queued logic item was applied once: 39 + 40 orders delayed, none twice');
is(query($node, q{
	SELECT failure_id || '|' || stage || '|' || order_id || '|' || request_id
		   || '|' || attempts || '|' || last_sqlstate || '|' || last_error
	  FROM courier.failures}),
	$failure, 'order 7\'s failure is still in courier.failures, unchanged and alone');
is(query($node, q{
	SELECT count(*),
		   count(*) FILTER (WHERE status = 'delivered' AND attempts = 1 AND http_status = 200),
		   count(*) FILTER (WHERE order_id = 7)
	  FROM courier.notices WHERE order_id <> 3}),
	'78|78|0', 'the 78 other notices are delivered on their first attempt; order 7 has none');
is(query($node, "SELECT status FROM courier.notices WHERE order_id = 3"),
	'dropped', 'the notice of order 3, invoiced under 0.1, is dropped, not sent');

ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'the mock has no request in flight');
my $s = mock_stats($mock);
is("$s->{messages_received}|$s->{delivered}|$s->{duplicates}", '78|78|0',
	'the provider received and delivered each of the 78 notices exactly once');
is_deeply(
	[ sort @{ mock_delivered($mock) } ],
	notice_keys($node, "status = 'delivered'"),
	'what the provider delivered is exactly the notices marked delivered');

is(query($node, q{
	SELECT courier.register_invoice(1, 'INV-1'), courier.register_invoice(7, 'INV-7')}),
	'delivered|none',
	'register_invoice answers in text: delivered for order 1, none for order 7');

$node->stop;
done_testing();
