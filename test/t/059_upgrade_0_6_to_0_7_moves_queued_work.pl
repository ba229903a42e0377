
# 059_upgrade_0_6_to_0_7_moves_queued_work.pl
#	Upgrading a database from courier 0.6 to 0.7 keeps and finishes the
#	work queued under 0.6.
#
#	0.7 adds the metric rows (metric_samples, tms_state, the role
#	courier_monitor), alerts in Alertmanager's shape with their state, and
#	the trace context (columns on requests, notices, events, failures).
#	Under 0.6 the app queues request 1 (orders 1-20), a subscriber waits
#	for the order.invoiced event of order 103, a pending notice (order 101)
#	and a tms failure (order 102) are left as a 0.6 sender leaves them,
#	and the failure digest raised an alert nobody posted.
#	ALTER EXTENSION courier UPDATE runs with both stages paused: every row
#	is as it was, on the columns it had.  metric_samples() counts the
#	queued work at once; then the stages resume, retry_failures re-opens
#	102: every notice goes out once, request 1 (which has no trace) is
#	applied, and the subscriber gets the event queued under 0.6 and the 20
#	order.delayed events, each once.  A request made after the update gets
#	a trace.

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
my $node = tms_node('upgrade06', $mock, create => 0, conf => q{
courier.idle_wakeup = '500ms'
});

my $workers = "SELECT count(*) FROM pg_stat_activity"
  . " WHERE backend_type IN ('courier logic worker', 'courier tms worker')";

create_at_version($node, '0.6');

is(register_tms_orders($node, 1, 20), 20, 'register_orders registers 20 orders under 0.6');
is(register_tms_orders($node, 101, 103), 3, 'and 3 more');
ok(query($node, "SELECT courier.subscribe('backoffice', '$mock->{base}/hooks/backoffice',"
		  . " ARRAY['order.delayed', 'order.invoiced'])") > 0,
	'under 0.6 a subscriber subscribes to order.delayed and order.invoiced');
is(query($node, "SELECT courier.register_invoice(103, 'INV-103')"), 'none',
	'under 0.6 register_invoice closes order 103');
is(query($node, "SELECT count(*) FROM courier.deliveries"), '1',
	'its order.invoiced event waits in the subscriber\'s queue');
my $req1 = delay_tms($node, 1, 20, 10);
is(query($node, "SELECT count(*) FROM courier.work_items WHERE request_id = $req1"),
	'20', 'under 0.6, delay_orders queues 20 logic items');

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
is(query($node, 'SELECT courier.failure_digest()'), '1',
	'under 0.6 the failure digest counts the failure');
is(query($node, 'SELECT count(*) FROM courier.alerts WHERE posted_at IS NULL'), '1',
	'and raises an alert that is not posted (no courier.alert_url)');

# every row, on the columns it has under 0.6 (0.7 adds some)
my @tables = qw(work_items notices failures orders requests delay_history
  events deliveries subscriptions alerts digest_state);
my (%columns, %before);
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
	"every row of courier.$_ is as it was under 0.6") for @tables;

# 0.7's metrics count the work queued under 0.6
is( query($node, q{
	SELECT string_agg(stage || '=' || value, ' ' ORDER BY stage)
	  FROM courier.metric_samples('{courier_queue_backlog}')}),
	'fanout=1 logic=20 tms=1',
	'metric_samples() counts the queued work: 20 logic items, 1 pending notice, 1 event');
is( query($node, q{
	SELECT value FROM courier.metric_samples('{courier_failures_open}') WHERE stage = 'tms'}),
	'1', 'and the open tms failure');
like(query($node, 'SELECT courier.metrics()'),
	qr/^courier_tms_request_duration_seconds_bucket\{le="\+Inf"\} 0$/m,
	'metrics() has the TMS latency histogram');
ok( query($node, q{SELECT pg_has_role('courier_monitor', 'courier_monitor', 'MEMBER')
		AND has_function_privilege('courier_monitor', 'courier.metric_samples(text[])', 'EXECUTE')}) eq 't',
	'the update creates courier_monitor, which may read metric_samples()');

is(query($node, "SELECT courier.retry_failures(stage => 'tms')"), '1',
	'retry_failures puts the tms failure back');
query($node, q{
	ALTER SYSTEM RESET courier.pause_logic;
	ALTER SYSTEM RESET courier.pause_tms;
	SELECT pg_reload_conf();});
ok(poll_until($node, $workers, '2', 30), 'the logic and tms workers start under 0.7');

ok( poll_until(
		$node,
		"SELECT (SELECT count(*) FROM courier.work_items)"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'pending')"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'delivered')",
		'0|0|22', 60),
	'the queued work drains: no item, no pending notice, 22 notices delivered');
is(query($node, "SELECT total, done, failed, pending, trace_id IS NULL FROM courier.request_status($req1)"),
	'20|20|0|0|t',
	'request 1 (queued under 0.6): 20 total, 20 done, 0 failed, 0 pending, and no trace');
is(query($node, "SELECT count(*) FROM courier.notices WHERE traceparent IS NOT NULL"), '0',
	'its notices, applied after the update, carry no trace either');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'backoffice'",
		'0', 60),
	'the subscriber has received every event');
my $hooks = mock_hooks($mock, 'backoffice');
is( join(',', sort map { "$_->{type}:$_->{order_id}" } @$hooks),
	join(',', sort((map { "order.delayed:$_" } 1 .. 20), 'order.invoiced:103')),
	'the subscriber received the order.invoiced queued under 0.6 and one order.delayed'
	  . ' per order of request 1, once each');
is(query($node, 'SELECT count(*) FROM courier.failures WHERE discarded_at IS NULL'), '0',
	'no failure is left');
my $s = mock_stats($mock);
is($s->{delivered}, 22, 'the TMS delivered 22 messages, one per notice');
my $req2 = delay_tms($node, 101, 102, 14);
like(query($node, "SELECT trace_id FROM courier.request_status($req2)"), qr/^[0-9a-f]{32}$/,
	'a request made under 0.7 gets a trace courier started');

$node->stop;
done_testing();
