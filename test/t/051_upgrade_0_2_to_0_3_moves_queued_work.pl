
# 051_upgrade_0_2_to_0_3_moves_queued_work.pl
#	Upgrading a database from courier 0.2 to 0.3 keeps and finishes the
#	work queued under 0.2.
#
#	0.3 moves the logic items into a queue partitioned in three slots and
#	the tms items into their notices (due_at, leased_by, attempts,
#	errors).  The 0.3 library is loaded over an extension created at
#	VERSION '0.2': no worker starts, and the app API keeps working
#	(delay_orders queues request 1, orders 1-40, into 0.2's one queue
#	table; register_invoice answers from 0.2's tables).  The tms stage's
#	state of a 0.2 database is written as 0.2's logic stage wrote it, for
#	the notices of orders 101-104 (new date in 12 days):
#	  101  a tms item due now, never tried
#	  102  leased by a sender that died: its lease ran out a second ago
#	  103  in back-off after one failed attempt (due in 3 s), with that
#	       attempt in its history
#	  104  failed (in courier.failures, stage tms), its notice 'failed'
#	and a logic item of request 1 (order 40) in back-off after a failed
#	attempt.
#
#	ALTER EXTENSION courier UPDATE runs with both stages paused, so the
#	moved state can be read before anything drains it: the logic items
#	keep their ids, attempts, due times and histories (all in the current
#	slot); each tms item's state is in its notice; the failure is as it
#	was; new items get ids above every old one; retry_failures re-opens
#	order 104's notice.  Then the stages resume: every notice (orders
#	2-41, 101-104; order 1 was invoiced under 0.2) reaches the provider
#	exactly once; order 102 pays the lost
#	attempt of its dead sender (2 attempts, one flagged outcome-unknown);
#	order 103 keeps its history (2 attempts); request 1 adds up; nothing
#	is left queued.

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

# The extension is created below, at version 0.2.
my $node = tms_node('upgrade02', $mock, create => 0);

my $workers = "SELECT count(*) FROM pg_stat_activity"
  . " WHERE backend_type IN ('courier logic worker', 'courier tms worker')";

create_at_version($node, '0.2');

# The app API works over the 0.2 schema.
is(register_tms_orders($node, 1, 40), 40, 'register_orders registers 40 orders under 0.2');
is(register_tms_orders($node, 101, 104), 4, 'and 4 more');
my $req1 = delay_tms($node, 1, 40, 10);
is(query($node, qq{
	SELECT count(*), min(item_id), max(item_id), bool_and(stage = 'logic')
	  FROM courier.work_items WHERE request_id = $req1}),
	'40|1|40|t', 'under 0.2, delay_orders queues 40 logic items in 0.2\'s queue table');

# 0.2's tms state, as its logic stage and senders left it.
query($node, q{
	INSERT INTO courier.requests (reason, new_ship_date, total)
	VALUES ('hail', current_date + 12, 4);
	INSERT INTO courier.notices (order_id, ship_date, seller_id, customer_phone,
								 product_name, reason, status)
	SELECT o.order_id, current_date + 12, o.seller_id, o.customer_phone,
		   o.product_name, 'hail', CASE WHEN o.order_id = 104 THEN 'failed' ELSE 'pending' END
	  FROM courier.orders o WHERE o.order_id BETWEEN 101 AND 104;
	INSERT INTO courier.work_items (stage, seller_id, order_id, ship_date,
									attempts, not_before, leased_by, errors)
	SELECT 'tms', o.seller_id, o.order_id, current_date + 12,
		   CASE o.order_id WHEN 103 THEN 1 ELSE 0 END,
		   CASE o.order_id WHEN 101 THEN now()
						   WHEN 102 THEN now() - interval '1 second'
						   ELSE now() + interval '3 seconds' END,
		   CASE o.order_id WHEN 102 THEN 4242 END,
		   CASE o.order_id WHEN 103
			   THEN '[{"at": "2026-01-01T00:00:00Z", "error": "TMS answered HTTP 503", "http_status": 503}]'::jsonb
			   ELSE '[]' END
	  FROM courier.orders o WHERE o.order_id BETWEEN 101 AND 103;
	INSERT INTO courier.failures (item_id, stage, seller_id, order_id, ship_date,
								  attempts, last_error, last_http_status, errors,
								  first_queued_at)
	SELECT 999, 'tms', o.seller_id, o.order_id, current_date + 12, 5,
		   'TMS answered HTTP 500', 500,
		   '[{"at": "2026-01-01T00:00:00Z", "error": "TMS answered HTTP 500", "http_status": 500}]',
		   now() - interval '1 hour'
	  FROM courier.orders o WHERE o.order_id = 104;
	UPDATE courier.work_items
	   SET attempts = 1, not_before = now() + interval '3 seconds',
		   errors = '[{"at": "2026-01-01T00:00:00Z", "error": "deadlock", "sqlstate": "40P01"}]'
	 WHERE stage = 'logic' AND order_id = 40;
});

is(query($node, "SELECT courier.register_invoice(1, 'INV-1')"), 'none',
	'under 0.2, register_invoice answers from 0.2\'s tables (order 1 has no notice yet)');

# What 0.2 holds, to compare with what 0.3 holds after the update.
my $logic_before = query($node, q{
	SELECT string_agg(item_id || ':' || order_id || ':' || attempts || ':'
					  || (not_before > now()) || ':' || jsonb_array_length(errors), ','
					  ORDER BY item_id)
	  FROM courier.work_items WHERE stage = 'logic'});
my $tms_before = query($node, q{
	SELECT string_agg(order_id || ':' || attempts || ':' || coalesce(leased_by, 0) || ':'
					  || not_before || ':' || errors::text, ',' ORDER BY order_id)
	  FROM courier.work_items WHERE stage = 'tms'});
# on the columns it has now (later versions add some)
my $failure_columns = table_columns($node, 'failures');
my $failure_before = rows_digest($node, 'failures', $failure_columns);
my $max_id = query($node, 'SELECT max(item_id) FROM courier.work_items');

ok( stays_true(sub { query($node, $workers) eq '0' }, 1,
		'no courier worker under 0.2'),
	'under 0.2 no courier worker starts');

# Paused, so the moved state can be read before the workers take it.
query($node, q{
	ALTER SYSTEM SET courier.pause_logic = on;
	ALTER SYSTEM SET courier.pause_tms = on;
	SELECT pg_reload_conf();});
query($node, 'ALTER EXTENSION courier UPDATE');
is(query($node, "SELECT extversion FROM pg_extension WHERE extname = 'courier'"),
	$current, "ALTER EXTENSION courier UPDATE brings the extension to $current");

is(query($node, q{
	SELECT string_agg(item_id || ':' || order_id || ':' || attempts || ':'
					  || (not_before > now()) || ':' || jsonb_array_length(errors), ','
					  ORDER BY item_id)
	  FROM courier.work_items}),
	$logic_before,
	'every logic item is in the new queue with its id, attempts, due time and history');
is(query($node, q{
	SELECT count(*), count(DISTINCT slot), min(slot) FROM courier.work_items}),
	'40|1|0', 'they are all in the current slot, slot 0');
is(query($node, q{
	SELECT string_agg(order_id || ':' || attempts || ':' || coalesce(leased_by, 0) || ':'
					  || due_at || ':' || errors::text, ',' ORDER BY order_id)
	  FROM courier.notices WHERE status = 'pending'}),
	$tms_before,
	'each tms item\'s state (attempts, lease holder, due time, history) is in its pending notice');
is(rows_digest($node, 'failures', $failure_columns), $failure_before,
	'the tms failure is unchanged');
is(query($node, q{
	SELECT count(*) FROM pg_class
	 WHERE relnamespace = 'courier'::regnamespace AND relname = 'work_items_0_2'}),
	'0', 'the 0.2 queue table is gone');

register_tms_orders($node, 41, 41);
my $req2 = delay_tms($node, 41, 41, 10);
cmp_ok(query($node, "SELECT item_id FROM courier.work_items WHERE request_id = $req2"),
	'>', $max_id, 'a new item gets an id above every id of 0.2');

is(query($node, "SELECT courier.retry_failures(stage => 'tms')"), '1',
	'retry_failures puts the tms failure back');
is(query($node, q{
	SELECT status || ':' || attempts || ':' || jsonb_array_length(errors)
	  FROM courier.notices WHERE order_id = 104}),
	'pending:0:1', 'order 104\'s notice is pending again, its history kept');
query($node, q{
	ALTER SYSTEM RESET courier.pause_logic;
	ALTER SYSTEM RESET courier.pause_tms;
	SELECT pg_reload_conf();});

ok( poll_until(
		$node,
		"SELECT (SELECT count(*) FROM courier.work_items)"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'pending')"
		  . " || '|' || (SELECT count(*) FROM courier.notices WHERE status = 'delivered')",
		'0|0|44', 60),
	'the queued work drains: no item, no pending notice, 44 notices delivered');

ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'the mock has no request in flight');
my $s = mock_stats($mock);
is("$s->{messages_received}|$s->{delivered}|$s->{duplicates}", '44|44|0',
	'the provider received and delivered each of the 44 notices exactly once');
is(query($node, q{
	SELECT count(*) || ':' || min(order_id) FROM courier.notices WHERE order_id < 100}),
	'40:2', 'orders 2-41 got a notice; order 1, invoiced under 0.2, none');
is_deeply(
	[ sort @{ mock_delivered($mock) } ],
	notice_keys($node, "status = 'delivered'"),
	'what the provider delivered is exactly the notices marked delivered');

is(query($node, q{
	SELECT attempts || ':' || (errors -> 0 ->> 'outcome_unknown')
	  FROM courier.notices WHERE order_id = 102}),
	'2:true',
	'order 102 paid the attempt its dead sender lost (outcome unknown), then was delivered');
is(query($node, q{
	SELECT attempts || ':' || (errors -> 0 ->> 'http_status')
	  FROM courier.notices WHERE order_id = 103}),
	'2:503', 'order 103 kept its history from 0.2 and was delivered on its second attempt');
is(query($node, "SELECT count(*) FROM courier.failures"), '0',
	'no failure is left');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req1)"), '40|40|0|0',
	'request 1 (queued under 0.2): 40 total, 40 done (order 1 skipped), 0 failed, 0 pending');

$node->stop;
done_testing();
