
# 031_pg_cron_schedules.pl
#	courier's periodic jobs under pg_cron:
#	- courier.schedule_defaults() in a database without pg_cron fails with
#	  SQLSTATE 42704 (undefined_object) and a hint that says how to set
#	  pg_cron up;
#	- in the database pg_cron runs in it registers the three named jobs
#	  (courier-sweep-overdue every minute, courier-prune, courier-failure-
#	  digest), and calling it again keeps exactly those three jobs;
#	- pg_cron really runs the sweep: orders whose invoice deadline passed
#	  get one overdue notice each, through the workers, and a second sweep
#	  finds nothing (nothing is sent twice);
#	- CALL courier.prune(retention => '0 seconds', chunk => 100) deletes
#	  every delivered / dry_run notice (and the history) in chunks of at
#	  most 100 rows, each chunk in its own transaction, and returns the
#	  number of rows deleted in its INOUT parameter deleted.
#
# pg_cron 1.4 schedules at minute granularity: waiting for the sweep takes
# up to a minute.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = courier_node(
	'cron', conf => q{
shared_preload_libraries = 'courier,pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 24
courier.retry_base = '20ms'
courier.tms_mode = 'dry_run'
courier.tms_min_workers = 1
courier.tms_max_workers = 2
});
query($node, 'CREATE EXTENSION pg_cron');

my @JOBS = (
	'courier-failure-digest|*/5 * * * *|SELECT courier.failure_digest()',
	'courier-prune|17 3 * * *|CALL courier.prune()',
	'courier-sweep-overdue|* * * * *|SELECT courier.sweep_overdue()');
my $JOB_LIST = q{
	SELECT string_agg(jobname || '|' || schedule || '|' || command, E'\n' ORDER BY jobname)
	  FROM cron.job};

# ---------------------------------------------------------------------------
# Without pg_cron in the database: a clear error, nothing scheduled.
# ---------------------------------------------------------------------------
query($node, 'CREATE DATABASE no_cron');
$node->safe_psql('no_cron', 'CREATE EXTENSION courier');
my ($ret, $out, $err) = $node->psql('no_cron', 'SELECT courier.schedule_defaults()',
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'schedule_defaults() fails in a database without pg_cron');
like($err, qr/ERROR:\s+42704: pg_cron is not installed in database "no_cron"/,
	'the error is SQLSTATE 42704 and names the database');
like($err, qr/HINT:\s+Add pg_cron to shared_preload_libraries.*CREATE EXTENSION pg_cron/s,
	'the hint says how to set pg_cron up');
is(query($node, 'SELECT count(*) FROM cron.job'), '0',
	'the failed call scheduled nothing');

# ---------------------------------------------------------------------------
# With pg_cron: three named jobs, idempotent.
# ---------------------------------------------------------------------------
is(query($node, q{
	SELECT string_agg(jobname || '|' || schedule || '|' || command, E'\n' ORDER BY jobname)
	  FROM courier.schedule_defaults()}),
	join("\n", @JOBS), 'schedule_defaults() returns its 3 jobs');
is(query($node, $JOB_LIST), join("\n", @JOBS),
	'cron.job holds the 3 named jobs with their schedules and commands');
is(query($node, q{
	SELECT count(*) FROM cron.job
	 WHERE database = 'postgres' AND active AND jobname LIKE 'courier-%'}),
	'3', 'the jobs run in the database postgres and are active');
my $jobids = query($node, 'SELECT string_agg(jobid::text, \',\' ORDER BY jobid) FROM cron.job');

is(query($node, 'SELECT count(*) FROM courier.schedule_defaults()'), '3',
	'schedule_defaults() called again returns 3 rows');
is(query($node, $JOB_LIST), join("\n", @JOBS),
	'after a second call cron.job still holds exactly the 3 jobs');
is(query($node, 'SELECT string_agg(jobid::text, \',\' ORDER BY jobid) FROM cron.job'),
	$jobids, 'the second call updated the jobs in place (same job ids)');

# ---------------------------------------------------------------------------
# pg_cron runs the overdue sweep; the workers send the notices.
# ---------------------------------------------------------------------------
my $NOV = 50;
is(query($node, qq{
	SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
		'order_id', g, 'seller_id', g % 5 + 1,
		'customer_phone', '0101234' || lpad(g::text, 4, '0'),
		'product_name', 'super-sweet corn',
		'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
	  FROM generate_series(1, $NOV) g}),
	$NOV, "register_orders registers $NOV orders");
is(query($node, "SELECT courier.request_shipping(array(SELECT generate_series(1, $NOV)::bigint))"),
	$NOV, "request_shipping for the $NOV orders");
my $t0 = query($node, 'SELECT now()');
is(query($node, qq{
	WITH u AS (UPDATE courier.orders SET invoice_deadline = now() - interval '1 minute'
				WHERE order_id BETWEEN 1 AND $NOV RETURNING 1)
	SELECT count(*) FROM u}), $NOV,
	"the invoice deadline of the $NOV orders is pushed into the past");

ok( poll_until(
		$node, qq{
		SELECT EXISTS (SELECT 1 FROM cron.job_run_details d JOIN cron.job j USING (jobid)
						WHERE j.jobname = 'courier-sweep-overdue' AND d.status = 'succeeded'
						  AND d.start_time >= '$t0')
		   AND (SELECT count(*) FROM courier.notices
				 WHERE order_id BETWEEN 1 AND $NOV AND status = 'dry_run') = $NOV},
		't', 130),
	"pg_cron ran courier-sweep-overdue successfully and the $NOV overdue orders got their notices");
is(query($node, qq{
	SELECT count(*) || '|' || sum(total) FROM courier.requests
	 WHERE reason = current_setting('courier.overdue_reason')}),
	"1|$NOV", "the sweep made one delay request for the $NOV orders, with courier.overdue_reason");
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE order_id BETWEEN 1 AND $NOV
	   AND ship_date = current_date + current_setting('courier.overdue_delay_days')::int}),
	$NOV, 'each notice announces today + courier.overdue_delay_days');
is(query($node, qq{
	SELECT count(*) FROM courier.orders
	 WHERE order_id BETWEEN 1 AND $NOV AND overdue_notified_for = invoice_deadline}),
	$NOV, 'each order is marked as notified for its deadline');

is(query($node, 'SELECT courier.sweep_overdue()'), '0',
	'a second sweep by hand finds nothing to do');
is(query($node, qq{
	SELECT count(*) || '|' || count(DISTINCT order_id) FROM courier.notices
	 WHERE order_id BETWEEN 1 AND $NOV}),
	"$NOV|$NOV", 'still exactly one notice per overdue order: nothing sent twice');
is(query($node, q{
	SELECT count(*) FROM courier.requests
	 WHERE reason = current_setting('courier.overdue_reason')}),
	'1', 'and no second overdue request');

# ---------------------------------------------------------------------------
# prune: everything old enough goes, chunk by chunk, one transaction each.
# ---------------------------------------------------------------------------
my $NP = 300;
register_orders($node, 1001, 1000 + $NP);
delay_orders($node, 1001, 1000 + $NP, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE order_id BETWEEN 1001 AND " . (1000 + $NP) . " AND status = 'dry_run'",
		"$NP", 60),
	"the $NP notices of a further delay are rendered by the dry run");

# Every DELETE statement on courier.notices records its transaction and
# how many rows it deleted.
query($node, q{
CREATE TABLE public.pruned (xid xid8, n bigint);
CREATE FUNCTION public.record_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.pruned SELECT pg_current_xact_id(), count(*) FROM gone;
	RETURN NULL;
END $$;
CREATE TRIGGER record_pruned AFTER DELETE ON courier.notices
	REFERENCING OLD TABLE AS gone
	FOR EACH STATEMENT EXECUTE FUNCTION public.record_pruned();
});

my ($notices, $expected) = split /\|/, query($node, q{
	SELECT n || '|' || n + h + f + a FROM
	  (SELECT count(*) AS n FROM courier.notices
		WHERE status IN ('delivered', 'dry_run') AND sent_at IS NOT NULL) n,
	  (SELECT count(*) AS h FROM courier.delay_history) h,
	  (SELECT count(*) AS f FROM courier.failures WHERE discarded_at IS NOT NULL) f,
	  (SELECT count(*) AS a FROM courier.alerts WHERE posted_at IS NOT NULL) a});
is($notices, $NOV + $NP, "before pruning: $notices sent (dry_run) notices");

is(query($node,
	"CALL courier.prune(retention => '0 seconds'::interval, chunk => 100)"),
	$expected,
	"prune returns in deleted the $expected rows it removed (notices and history)");
is(query($node, q{
	SELECT count(*) FROM courier.notices WHERE status IN ('delivered', 'dry_run')}),
	'0', 'no delivered or dry_run notice is left');
is(query($node, 'SELECT count(*) FROM courier.delay_history'), '0',
	'no delay history is left');
my $chunks = int(($notices + 99) / 100);
is(query($node, q{
	SELECT count(*) || '|' || count(DISTINCT xid) || '|' || max(n) || '|' || sum(n)
	  FROM public.pruned WHERE n > 0}),
	"$chunks|$chunks|100|$notices",
	"the $notices notices went in $chunks chunks of at most 100 rows, each in its own transaction");
is(query($node, 'SELECT count(*) FROM courier.orders'), $NOV + $NP,
	'prune leaves the orders alone');

$node->stop;
done_testing();
