
# 048_kept_plans_keep_their_shape.pl
#	The statements courier's workers keep (claim, apply, lease (which also
#	reads what the messages are made of), record, the charge of failed
#	sends (one request in twenty fails), and the receipt stage's lease and
#	record (the notices go through NHN AlimTalk, and each is waited for
#	until its receipt says delivered), and a subscriber's lease and record
#	(a subscriber of order.delayed and notice.delivered, so that the
#	notice trigger runs in the senders' statements too)) reach its tables through
#	indexes, whatever the
#	statistics said when the plan was made: prepared while the queue was
#	empty and never analyzed, executed on a queue of 20,000, again after an
#	ANALYZE made the planner see a full queue, and again after the notices
#	and the history were emptied and analyzed so (the statistics say "no
#	rows", the tables then fill).  auto_explain logs every
#	plan a worker runs; none may scan a courier table (nor a slot of the
#	queue, work_items_0..2) sequentially, nor join a whole index of one to
#	the batch by a filter (an index scan without an Index Cond in a nested
#	loop with a Join Filter).
#
#	0.3's first lease of the notices was a generic plan: made on notices
#	analyzed empty, it scanned the whole primary key of the notices for
#	each lease and filtered the claimed rows out (0.4-2.4 s per lease).
#
#	courier 0.1 kept generic plans made from the statistics of the moment:
#	the lease joined its claim to work_items with a Nested Loop over a Seq
#	Scan on work_items (3 s per lease of 1,000 with 30,000 queued), and a
#	status filter made the apply statement hash-join a Seq Scan of every
#	order into each batch.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 20000;
my $tables = 'work_items(?:_\d)?|orders|notices|requests|delay_history|failures|events|deliveries';

# Through NHN AlimTalk, so that the receipt stage's statements run too.
my $mock = start_provider_mock();
my $node = tms_node(
	'kept_plans', $mock, conf => provider_conf($mock, 'nhn_alimtalk') . q{
shared_preload_libraries = 'courier,auto_explain'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
log_line_prefix = '%m [%p] %b '
courier.tms_bulk_size = 100
courier.max_attempts = 100
courier.receipt_interval = '100ms'
});

# numbers ending in 1: none of the mock's special patterns (docs/providers.md)
my $phones = q{'0105' || lpad((g * 10 + 1)::text, 7, '0')};

# delivered(DAYS): every notice of the new date in DAYS days is on its
# customer's handset (the provider's receipt says so).
sub delivered
{
	my ($days) = @_;
	return poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE ship_date = current_date + $days"
		  . " AND status = 'delivered' AND receipt_status = 'delivered'",
		"$N", 180);
}

# worker_plans(OFFSET): the plans courier's workers logged from OFFSET on,
# one string each.
sub worker_plans
{
	my ($offset) = @_;
	my @entries = split /\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)/,
	  slurp_file($node->logfile, $offset);
	return grep { /^\S+ \S+ \S+ \[\d+\] courier (?:logic|tms|subscriber) worker LOG:  duration: .* plan:/ }
	  @entries;
}

# check_round(LABEL, OFFSET): every hot statement was logged, none with a
# sequential scan of a courier table.
sub check_round
{
	my ($label, $offset) = @_;
	my @plans = worker_plans($offset);
	my %seen;
	for my $p (@plans)
	{
		$seen{claim} = 1 if $p =~ /FOR UPDATE SKIP LOCKED/ && $p =~ /stage = 'logic'/;
		$seen{apply} = 1 if $p =~ /INSERT INTO courier\.delay_history/;
		$seen{lease} = 1 if $p =~ /WHERE n\.ctid = ANY \(ARRAY\(/;
		$seen{record} = 1 if $p =~ /SET status = CASE r\.status WHEN 'closed'/;
		$seen{charge} = 1 if $p =~ /charged AS \(\s*UPDATE courier\.notices n/;
		$seen{receipt_lease} = 1 if $p =~ /c\.receipt_status IN \('awaiting'/;
		$seen{receipt_record} = 1 if $p =~ /receipt_checks = CASE WHEN r\.absent/;
		$seen{subscriber_lease} = 1 if $p =~ /x\.order_id = d\.order_id/;
		$seen{subscriber_record} = 1 if $p =~ /INSERT INTO courier\.failures \(item_id, stage, seller_id, order_id, subscriber_id/;
	}
	is(join(',', sort keys %seen),
		'apply,charge,claim,lease,receipt_lease,receipt_record,record,subscriber_lease,subscriber_record',
		"$label: the workers ran every hot statement (" . scalar(@plans) . ' plans logged)');
	my @seq = grep { /Seq Scan on (?:$tables)\b/ } @plans;
	is(scalar(@seq), 0, "$label: no plan of a worker scans a courier table sequentially")
	  or diag("first such plan:\n" . substr($seq[0], 0, 3000));
	my @whole = grep { whole_index_scan($_) && /Join Filter:/ } @plans;
	is(scalar(@whole), 0,
		"$label: no plan joins a whole-index scan of a courier table by a filter (n x m)")
	  or diag("first such plan:\n" . substr($whole[0], 0, 3000));
	return;
}

# whole_index_scan(PLAN): does PLAN scan an index of a courier table without
# an Index Cond, i.e. read the whole index?  Joined by a Join Filter, that
# is a nested loop that reads the whole table for every row of the batch
# (or the batch for every row of the table), whatever its size.
sub whole_index_scan
{
	my @lines = split /\n/, shift;
	for my $i (0 .. $#lines - 1)
	{
		next unless $lines[$i] =~ /Index (?:Only )?Scan (?:Backward )?using \S+ on (?:$tables)\b/;
		return 1 unless $lines[ $i + 1 ] =~ /Index Cond:/;
	}
	return 0;
}

# pause_both(LABEL): pause both stages and wait until every worker says so.
sub pause_both
{
	my ($label) = @_;
	my $workers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN"
	  . " ('courier logic worker', 'courier tms worker')";

	query($node, 'ALTER SYSTEM SET courier.pause_logic = on');
	query($node, 'ALTER SYSTEM SET courier.pause_tms = on');
	query($node, 'SELECT pg_reload_conf()');
	ok( poll_until(
			$node, "$workers AND query LIKE 'courier.pause_%'",
			query($node, $workers), 30),
		"$label: both stages are paused");
	return;
}

ok(query($node, "SELECT courier.subscribe('plans', '$mock->{base}/hooks/plans',"
	  . " ARRAY['order.delayed', 'notice.delivered'])") > 0,
	'a subscriber of order.delayed and notice.delivered');

# One request in twenty fails (HTTP 500), so that every round charges
# attempts to notices (the charge statement) besides recording deliveries.
mock_control($mock, error_rate => 0.05, error_status => 500);

# Round 1: plans made on an empty, never analyzed queue.
is(query($node, "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'courier' AND last_analyze IS NULL AND last_autoanalyze IS NULL"),
	query($node, "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'courier'"),
	'no courier table has been analyzed when the workers make their plans');
my $offset = log_offset($node);
is(register_tms_orders($node, 1, $N, phone_sql => $phones), $N,
	"register_orders registers $N orders");
delay_tms($node, 1, $N, 10);
ok(delivered(10),
	"round 1: all $N notices are delivered, their receipts say so");
ok(poll_until($node, "SELECT backlog FROM courier.subscribers", '0', 120),
	'round 1: the subscriber received every event');
check_round('round 1 (plans made on an empty queue)', $offset);

# Round 2: an ANALYZE of a full queue invalidates the plans; the new ones
# must keep the same shape.
pause_both('round 2');
delay_tms($node, 1, $N, 11);
query($node, 'ANALYZE courier.work_items, courier.orders, courier.notices');
$offset = log_offset($node);
query($node, 'ALTER SYSTEM RESET courier.pause_logic');
query($node, 'ALTER SYSTEM RESET courier.pause_tms');
query($node, 'SELECT pg_reload_conf()');
ok(delivered(11),
	"round 2: all $N notices are delivered, their receipts say so");
ok(poll_until($node, "SELECT backlog FROM courier.subscribers", '0', 120),
	'round 2: the subscriber received every event');
check_round('round 2 (plans remade after ANALYZE of a full queue)', $offset);

# Round 3: the tables emptied and analyzed while empty (a fresh install, a
# TRUNCATE and ANALYZE): the statistics say "no rows".  The tms stage runs
# its lease once on the empty notices before the logic stage fills them.
pause_both('round 3');
query($node, q{
	TRUNCATE courier.notices, courier.delay_history, courier.events, courier.deliveries;
	ANALYZE courier.notices, courier.delay_history, courier.work_items, courier.events,
		courier.deliveries;});
is(query($node, q{
	SELECT string_agg(relname || ':' || reltuples, ',' ORDER BY relname) FROM pg_class
	 WHERE relnamespace = 'courier'::regnamespace AND relname IN ('notices', 'delay_history')}),
	'delay_history:0,notices:0', 'round 3: the notices and the history are analyzed empty');
$offset = log_offset($node);
query($node, 'ALTER SYSTEM RESET courier.pause_tms');
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 AND bool_and(query = 'tms: waiting for work')"
		  . "  FROM pg_stat_activity WHERE backend_type = 'courier tms worker'",
		't', 30),
	'round 3: the tms workers looked at the empty queue and wait');
delay_tms($node, 1, $N, 12);
query($node, 'ALTER SYSTEM RESET courier.pause_logic');
query($node, 'SELECT pg_reload_conf()');
ok(delivered(12),
	"round 3: all $N notices are delivered, their receipts say so");
ok(poll_until($node, "SELECT backlog FROM courier.subscribers", '0', 120),
	'round 3: the subscriber received every event');
check_round('round 3 (plans made after ANALYZE of empty tables)', $offset);

$node->stop;
done_testing();
