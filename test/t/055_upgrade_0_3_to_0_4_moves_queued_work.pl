
# 055_upgrade_0_3_to_0_4_moves_queued_work.pl
#	Upgrading a database from courier 0.3 to 0.4 keeps and finishes the
#	work queued under 0.3.
#
#	0.4 changes only keys: every primary key of orders, notices,
#	delay_history, failures and work_items starts with seller_id
#	(docs/citus.md, rule 1), with plain indexes for the lookups by an id
#	alone.  The 0.4 library is loaded over an extension created at
#	VERSION '0.3': no worker starts, and the app API keeps working
#	(register_orders registers and re-registers orders 1-40 and 101-104
#	under 0.3's keys; delay_orders queues request 1, orders 1-40;
#	register_invoice closes order 1).  The state of the sender is
#	written as 0.3 leaves it, for the notices of orders 101-104 (new date
#	in 12 days):
#	  101  pending, due now, never tried
#	  102  leased by a sender that died: its lease ran out a second ago
#	  103  in back-off after one failed attempt (due in 3 s), with that
#	       attempt in its history
#	  104  failed (in courier.failures, stage tms), its notice 'failed'
#	and a logic item of request 1 (order 40) in back-off after a failed
#	attempt.
#
#	ALTER EXTENSION courier UPDATE runs with both stages paused: every
#	row of the queue, the notices, the failures and the history is as it
#	was (its columns' values compared as JSON; 0.4 adds the notices'
#	receipt columns, empty for every old notice, and receipt_checks 0); the keys are the new
#	ones.  retry_failures
#	re-opens order 104's notice.  Then the stages resume: every notice
#	(orders 2-41, 101-104) reaches the provider exactly once; order 102
#	pays the lost attempt of its dead sender; order 103 keeps its
#	history; request 1 adds up; nothing is left queued.

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

# The extension is created below, at version 0.3.
my $node = tms_node('upgrade03', $mock, create => 0);

my $workers = "SELECT count(*) FROM pg_stat_activity"
  . " WHERE backend_type IN ('courier logic worker', 'courier tms worker')";

create_at_version($node, '0.3');

# The app API works over the 0.3 schema, re-registrations included.
is(register_tms_orders($node, 1, 40), 40, 'register_orders registers 40 orders under 0.3');
is(register_tms_orders($node, 1, 40), 40, 'and registers them again (no change)');
is(register_tms_orders($node, 101, 104), 4, 'and 4 more');
my $req1 = delay_tms($node, 1, 40, 10);
is(query($node, qq{
	SELECT count(*), min(item_id), max(item_id) FROM courier.work_items
	 WHERE request_id = $req1}),
	'40|1|40', 'under 0.3, delay_orders queues 40 logic items');

# 0.3's tms state, as its logic stage and senders leave it.
query($node, q{
	INSERT INTO courier.requests (reason, new_ship_date, total)
	VALUES ('hail', current_date + 12, 4);
	INSERT INTO courier.notices (order_id, ship_date, seller_id, customer_phone,
								 product_name, reason, status, due_at, leased_by,
								 attempts, errors)
	SELECT o.order_id, current_date + 12, o.seller_id, o.customer_phone,
		   o.product_name, 'hail',
		   CASE WHEN o.order_id = 104 THEN 'failed' ELSE 'pending' END,
		   CASE o.order_id WHEN 101 THEN now()
						   WHEN 102 THEN now() - interval '1 second'
						   WHEN 103 THEN now() + interval '3 seconds' END,
		   CASE o.order_id WHEN 102 THEN 4242 END,
		   CASE o.order_id WHEN 103 THEN 1 WHEN 104 THEN 5 ELSE 0 END,
		   CASE o.order_id WHEN 103
			   THEN '[{"at": "2026-01-01T00:00:00Z", "error": "TMS answered HTTP 503", "http_status": 503}]'::jsonb
			   ELSE '[]' END
	  FROM courier.orders o WHERE o.order_id BETWEEN 101 AND 104;
	INSERT INTO courier.failures (stage, seller_id, order_id, ship_date,
								  attempts, last_error, last_http_status, errors,
								  first_queued_at)
	SELECT 'tms', o.seller_id, o.order_id, current_date + 12, 5,
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
	'under 0.3, register_invoice closes order 1 (no notice yet)');

# Everything 0.3 holds, row by row, to compare after the update.
my %before;
for my $t (qw(work_items notices failures orders requests delay_history))
{
	$before{$t} = query($node, "SELECT md5(string_agg(jsonb_strip_nulls(to_jsonb(t) - 'receipt_checks')::text, ',' ORDER BY jsonb_strip_nulls(to_jsonb(t) - 'receipt_checks')::text)) || ':' || count(*) FROM courier.$t t");
}
my $max_id = query($node, 'SELECT max(item_id) FROM courier.work_items');

ok( stays_true(sub { query($node, $workers) eq '0' }, 1,
		'no courier worker under 0.3'),
	'under 0.3 no courier worker starts');

# Paused, so the state can be read before the workers take it.
query($node, q{
	ALTER SYSTEM SET courier.pause_logic = on;
	ALTER SYSTEM SET courier.pause_tms = on;
	SELECT pg_reload_conf();});
query($node, 'ALTER EXTENSION courier UPDATE');
is(query($node, "SELECT extversion FROM pg_extension WHERE extname = 'courier'"),
	$current, "ALTER EXTENSION courier UPDATE brings the extension to $current");

for my $t (qw(work_items notices failures orders requests delay_history))
{
	is(query($node, "SELECT md5(string_agg(jsonb_strip_nulls(to_jsonb(t) - 'receipt_checks')::text, ',' ORDER BY jsonb_strip_nulls(to_jsonb(t) - 'receipt_checks')::text)) || ':' || count(*) FROM courier.$t t"),
		$before{$t}, "every row of courier.$t is as it was under 0.3");
}
is(query($node, q{
	SELECT string_agg(c.relname || '(' || (SELECT string_agg(a.attname, ',' ORDER BY k.n)
											 FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
											 JOIN pg_attribute a ON a.attrelid = c.oid
																AND a.attnum = k.attnum) || ')',
					  ' ' ORDER BY c.relname)
	  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	 WHERE i.indisprimary AND c.relnamespace = 'courier'::regnamespace
	   AND NOT c.relispartition
	   AND c.relname IN ('orders', 'notices', 'delay_history', 'failures', 'work_items')}),
	'delay_history(seller_id,request_id,order_id) failures(seller_id,failure_id)'
	  . ' notices(seller_id,order_id,ship_date) orders(seller_id,order_id)'
	  . ' work_items(seller_id,item_id,slot)',
	'the primary keys start with seller_id');

register_tms_orders($node, 41, 41);
my $req2 = delay_tms($node, 41, 41, 10);
cmp_ok(query($node, "SELECT item_id FROM courier.work_items WHERE request_id = $req2"),
	'>', $max_id, 'a new item gets an id above every id of 0.3');

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
	'40:2', 'orders 2-41 got a notice; order 1, invoiced under 0.3, none');
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
	'2:503', 'order 103 kept its history from 0.3 and was delivered on its second attempt');
is(query($node, "SELECT count(*) FROM courier.failures"), '0',
	'no failure is left');
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req1)"), '40|40|0|0',
	'request 1 (queued under 0.3): 40 total, 40 done (order 1 skipped), 0 failed, 0 pending');

$node->stop;
done_testing();
