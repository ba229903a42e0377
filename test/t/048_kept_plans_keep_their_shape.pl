
# 048_kept_plans_keep_their_shape.pl
#	The statements courier's workers keep (claim, apply, lease (which also
#	reads what the messages are made of), record) reach its tables through
#	indexes, whatever the
#	statistics said when the plan was made: prepared while the queue was
#	empty and never analyzed, executed on a queue of 20,000, and again after
#	an ANALYZE made the planner see a full queue.  auto_explain logs every
#	plan a worker runs; none may scan a courier table (nor a slot of the
#	queue, work_items_0..2) sequentially.
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

my $mock = start_mock();
my $node = tms_node(
	'kept_plans', $mock, conf => q{
shared_preload_libraries = 'courier,auto_explain'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
log_line_prefix = '%m [%p] %b '
courier.tms_bulk_size = 100
courier.max_attempts = 100
});

# worker_plans(OFFSET): the plans courier's workers logged from OFFSET on,
# one string each.
sub worker_plans
{
	my ($offset) = @_;
	my @entries = split /\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)/,
	  slurp_file($node->logfile, $offset);
	return grep { /^\S+ \S+ \S+ \[\d+\] courier (?:logic|tms) worker LOG:  duration: .* plan:/ }
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
		$seen{lease} = 1 if $p =~ /WITH c AS MATERIALIZED/ && $p =~ /UPDATE courier\.notices n/;
		$seen{record} = 1 if $p =~ /SET status = CASE r\.status WHEN 'closed'/;
	}
	is(join(',', sort keys %seen), 'apply,claim,lease,record',
		"$label: the workers ran every hot statement (" . scalar(@plans) . ' plans logged)');
	my @seq = grep { /Seq Scan on (?:work_items(?:_\d)?|orders|notices|requests|delay_history|failures)\b/ } @plans;
	is(scalar(@seq), 0, "$label: no plan of a worker scans a courier table sequentially")
	  or diag("first such plan:\n" . substr($seq[0], 0, 3000));
	return;
}

# Round 1: plans made on an empty, never analyzed queue.
is(query($node, "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'courier' AND last_analyze IS NULL AND last_autoanalyze IS NULL"),
	query($node, "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'courier'"),
	'no courier table has been analyzed when the workers make their plans');
my $offset = log_offset($node);
is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
delay_tms($node, 1, $N, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE ship_date = current_date + 10"
		  . " AND status = 'delivered'",
		"$N", 120),
	"round 1: all $N notices are delivered");
check_round('round 1 (plans made on an empty queue)', $offset);

# Round 2: an ANALYZE of a full queue invalidates the plans; the new ones
# must keep the same shape.
query($node, 'ALTER SYSTEM SET courier.pause_logic = on');
query($node, 'ALTER SYSTEM SET courier.pause_tms = on');
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type IN"
		  . " ('courier logic worker', 'courier tms worker')"
		  . " AND query LIKE 'courier.pause_%'",
		query($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN"
			  . " ('courier logic worker', 'courier tms worker')"), 30),
	'round 2: both stages are paused');
delay_tms($node, 1, $N, 11);
query($node, 'ANALYZE courier.work_items, courier.orders, courier.notices');
$offset = log_offset($node);
query($node, 'ALTER SYSTEM RESET courier.pause_logic');
query($node, 'ALTER SYSTEM RESET courier.pause_tms');
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE ship_date = current_date + 11"
		  . " AND status = 'delivered'",
		"$N", 120),
	"round 2: all $N notices are delivered");
check_round('round 2 (plans remade after ANALYZE of a full queue)', $offset);

$node->stop;
done_testing();
