
# 052_queue_rotation_keeps_storage_flat.pl
#	The queue's storage does not grow with what has passed through it, and
#	rotating the slots under live traffic loses nothing.
#
#	With courier.queue_rotate_interval = 500ms the launcher rotates the
#	three slots of courier.work_items while 4 requests of 20,000 orders
#	each are queued back to back (the app inserting while slots turn) and
#	drained by 2 logic and 2 tms workers.  One logic item sits in a long
#	back-off in the slot it was queued in: rotation moves it to the current
#	slot rather than wait for it (and it is applied once due).
#
#	Checked: every slot was truncated at least once (its relfilenode
#	changed); the queue took megabytes at its peak and is back to the size
#	of an empty queue at the end, with no VACUUM FULL; every order of every
#	request was applied exactly once, every notice delivered exactly once;
#	the straggler changed slot and was applied.
#
#	courier 0.2 kept one queue heap: 1,000,000 orders left it at 544 MB for
#	48 live rows.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 20000;
my $ROUNDS = 4;

my $mock = start_mock();
my $node = tms_node(
	'rotation', $mock, conf => q{
courier.queue_rotate_interval = '500ms'
courier.logic_min_workers = 2
courier.tms_min_workers = 2
courier.max_attempts = 100
});

my $storage = q{SELECT sum(pg_total_relation_size(relid))
				  FROM pg_partition_tree('courier.work_items') WHERE isleaf};
my $filenodes = q{SELECT string_agg(relname || ':' || pg_relation_filenode(oid), ','
								   ORDER BY relname)
					FROM pg_class WHERE relname ~ '^work_items_[012]$'
					 AND relnamespace = 'courier'::regnamespace};

my $empty_size = query($node, $storage);
my @nodes_before = split /,/, query($node, $filenodes);

is(register_tms_orders($node, 1, $N + 1), $N + 1, 'register_orders registers the orders');

# The straggler: order N+1's logic item, in a back-off longer than a
# rotation takes (set in the same transaction, before any worker sees it).
my $straggler_req = query($node, qq{
	BEGIN;
	SELECT courier.delay_orders(ARRAY[@{[ $N + 1 ]}]::bigint[], 'rain', current_date + 9) \\gset
	UPDATE courier.work_items SET not_before = now() + interval '1 hour', attempts = 1
	 WHERE request_id = :delay_orders;
	COMMIT;
	SELECT :delay_orders;});
my $straggler_slot = query($node,
	"SELECT slot FROM courier.work_items WHERE request_id = $straggler_req");

my @requests;
my $peak = 0;
for my $r (1 .. $ROUNDS)
{
	push @requests, delay_tms($node, 1, $N, 9 + $r);
	my $size = query($node, $storage);
	$peak = $size if $size > $peak;
}
ok( wait_for(
		sub {
			my $size = query($node, $storage);
			$peak = $size if $size > $peak;
			query($node, "SELECT count(*) FROM courier.notices WHERE status = 'delivered'")
			  >= $N * $ROUNDS;
		},
		180,
		'all notices delivered'),
	"the workers deliver all " . $N * $ROUNDS . " notices while the slots rotate");

ok( poll_until(
		$node,
		"SELECT slot <> $straggler_slot FROM courier.work_items WHERE request_id = $straggler_req",
		't', 30),
	'the item in back-off was moved out of its draining slot, not waited for');
query($node, "UPDATE courier.work_items SET not_before = now() WHERE request_id = $straggler_req");
ok( poll_until($node, 'SELECT count(*) FROM courier.work_items', '0', 30),
	'the straggler, once due, is applied: the queue is empty');

cmp_ok($peak, '>', 1024 * 1024,
	"the queue took megabytes at its peak ($peak bytes)");
ok( poll_until(
		$node,
		"SELECT ($storage) <= 2 * $empty_size",
		't', 30),
	"its storage is back to about an empty queue's ($empty_size bytes), without VACUUM FULL")
  or diag(query($node, 'SELECT * FROM courier.queue_storage'));

my @nodes_after = split /,/, query($node, $filenodes);
my $truncated = grep { $nodes_before[$_] ne $nodes_after[$_] } 0 .. 2;
is($truncated, 3, 'every slot was truncated at least once (a new relfilenode each)');

is(query($node, qq{
	SELECT count(*) FILTER (WHERE s.done = s.total AND s.failed = 0 AND s.pending = 0)
	  FROM unnest(ARRAY[@{[ join(',', @requests, $straggler_req) ]}]::bigint[]) AS r(id),
		   courier.request_status(r.id) AS s}),
	$ROUNDS + 1, 'every request is done: every order applied, none failed');
is(query($node, q{
	SELECT count(*), count(DISTINCT (request_id, order_id)) FROM courier.delay_history}),
	($N * $ROUNDS + 1) . '|' . ($N * $ROUNDS + 1),
	'each order of each request was applied exactly once');

ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'the mock has no request in flight');
my $s = mock_stats($mock);
my $total = $N * $ROUNDS + 1;
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE status = 'delivered'",
		"$total", 30),
	'the straggler\'s notice is delivered too');
$s = mock_stats($mock);
is("$s->{messages_received}|$s->{duplicates}", "$total|0",
	"the provider received each of the $total notices exactly once");

$node->stop;
done_testing();
