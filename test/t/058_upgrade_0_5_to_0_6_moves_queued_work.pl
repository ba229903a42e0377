
# 058_upgrade_0_5_to_0_6_moves_queued_work.pl
#	Upgrading a database from courier 0.5 to 0.6 keeps and finishes the
#	work queued under 0.5, and the work queued before a subscription
#	exists becomes events once one does.
#
#	0.6 adds the fan-out (events, subscriptions, deliveries), the fanout
#	stage in courier.failures (a new column, subscriber_id, NULL for the
#	rows already there) and the subscriber filter of retry_failures and
#	discard_failures.  Under 0.5 the app queues request 1 (orders 1-20),
#	a pending notice (order 101) and a tms failure (order 102) are left as
#	a 0.5 sender leaves them.  ALTER EXTENSION courier UPDATE runs with
#	both stages paused: every row is as it was.  A subscriber then
#	subscribes to order.delayed, the stages resume, retry_failures (its
#	new signature) re-opens 102: every notice goes out once, and the 20
#	orders of request 1, applied after the update, reach the subscriber as
#	20 order.delayed events, each once.

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

my $mock = start_mock();
my $node = tms_node('upgrade05', $mock, create => 0, conf => q{
courier.idle_wakeup = '500ms'
});

my $workers = "SELECT count(*) FROM pg_stat_activity"
  . " WHERE backend_type IN ('courier logic worker', 'courier tms worker')";

create_at_version($node, '0.5');

is(register_tms_orders($node, 1, 20), 20, 'register_orders registers 20 orders under 0.5');
is(register_tms_orders($node, 101, 102), 2, 'and 2 more');
my $req1 = delay_tms($node, 1, 20, 10);
is(query($node, "SELECT count(*) FROM courier.work_items WHERE request_id = $req1"),
	'20', 'under 0.5, delay_orders queues 20 logic items');

query($node, q{
	INSERT INTO courier.requests (reason, new_ship_date, total)
	VALUES ('hail', current_date + 12, 2);
	INSERT INTO courier.notices (order_id, ship_date, seller_id, customer_phone,
								 product_name, reason, status, due_at, attempts)
	SELECT o.order_id, current_date + 12, o.seller_id, o.customer_phone,
		   o.product_name, 'hail',
		   CASE o.order_id WHEN 101 THEN 'pending' ELSE 'failed' END,
		   CASE o.order_id WHEN 101 THEN now() END,
		   CASE o.order_id WHEN 101 THEN 0 ELSE 5 END
	  FROM courier.orders o WHERE o.order_id BETWEEN 101 AND 102;
	INSERT INTO courier.failures (stage, seller_id, order_id, ship_date,
								  attempts, last_error, last_http_status, errors,
								  first_queued_at)
	SELECT 'tms', o.seller_id, o.order_id, current_date + 12, 5,
		   'TMS answered HTTP 500', 500,
		   '[{"at": "2026-01-01T00:00:00Z", "error": "TMS answered HTTP 500", "http_status": 500}]',
		   now() - interval '1 hour'
	  FROM courier.orders o WHERE o.order_id = 102;
});

# every row, on the columns it has now (later versions add some)
my %columns;
my @tables = qw(work_items notices failures orders requests delay_history);
my %before;
for my $t (@tables)
{
	$columns{$t} = table_columns($node, $t);
	$before{$t} = rows_digest($node, $t, $columns{$t});
}

query($node, q{
	ALTER SYSTEM SET courier.pause_logic = on;
	ALTER SYSTEM SET courier.pause_tms = on;
	SELECT pg_reload_conf();});
query($node, 'ALTER EXTENSION courier UPDATE');
is(query($node, "SELECT extversion FROM pg_extension WHERE extname = 'courier'"),
	$current, "ALTER EXTENSION courier UPDATE brings the extension to $current");
is(rows_digest($node, $_, $columns{$_}), $before{$_},
	"every row of courier.$_ is as it was under 0.5") for @tables;
is(query($node, 'SELECT count(*) FROM courier.failures WHERE subscriber_id IS NOT NULL'),
	'0', 'the failures kept from 0.5 name no subscriber');
is(query($node, q{SELECT string_agg(stage::text, ',' ORDER BY stage) FROM courier.queue_stats}),
	'logic,tms,fanout', 'queue_stats has the fanout row');

ok(query($node, "SELECT courier.subscribe('backoffice', '$mock->{base}/hooks/backoffice',"
		  . " ARRAY['order.delayed'])") > 0,
	'a subscriber subscribes to order.delayed');
is(query($node, "SELECT courier.retry_failures(stage => 'tms')"), '1',
	'retry_failures (0.6 signature) puts the tms failure back');
query($node, q{
	ALTER SYSTEM RESET courier.pause_logic;
	ALTER SYSTEM RESET courier.pause_tms;
	SELECT pg_reload_conf();});
ok(poll_until($node, $workers, '2', 30), 'the logic and tms workers start under 0.6');

ok( poll_until(
		$node,
		"SELECT (SELECT count(*) FROM courier.work_items)"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'pending')"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'delivered')",
		'0|0|22', 60),
	'the queued work drains: no item, no pending notice, 22 notices delivered');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req1)"), '20|20|0|0',
	'request 1 (queued under 0.5): 20 total, 20 done, 0 failed, 0 pending');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'backoffice'",
		'0', 60),
	'the subscriber has received every event');
my $hooks = mock_hooks($mock, 'backoffice');
is(join(',', sort { $a <=> $b } map { $_->{order_id} } @$hooks), join(',', 1 .. 20),
	'the subscriber received one order.delayed per order of request 1, once each');
is(query($node, 'SELECT count(*) FROM courier.failures WHERE discarded_at IS NULL'), '0',
	'no failure is left');

$node->stop;
done_testing();
