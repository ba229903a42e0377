
# CourierTest.pm
#	Shared helpers of courier's TAP tests (test/t/*.pl): a preloaded
#	throwaway cluster with the extension created, bulk set-up of orders and
#	delay requests done server-side (so the statements in the server log
#	stay short), counting queries, and polling a condition with a deadline.
#
# Waiting is always polling with a deadline, never a bare sleep.  The
# polling here tolerates connection errors, so it also waits across a
# crash restart or a server start.
#
# The tests find this module through "use lib" on their own directory, so
# they run under plain prove as well as under test/run_all.sh.

package CourierTest;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(
  courier_node
  register_orders
  delay_orders
  query
  poll_until
  poll_for
  check_nothing_lost
  logic_workers
  log_offset
  poll_log
  library_version
  create_at_version
  table_columns
  rows_digest
);

# The settings every courier test cluster runs with; a test adds its own
# after these (later lines win in postgresql.conf).
my $BASE_CONF = <<'EOC';
shared_preload_libraries = 'courier'
courier.database = 'postgres'
max_worker_processes = 16
courier.retry_base = '10ms'
EOC

# For tests of the logic stage alone (logic_only => 1): no tms worker runs,
# so the notices the logic stage writes stay pending (the tms stage's queue
# is its pending notices) to be counted, and every background worker slot
# left over is the logic pool's.
my $LOGIC_ONLY_CONF = <<'EOC';
courier.tms_min_workers = 0
courier.tms_max_workers = 0
EOC

# courier_node(NAME, conf => EXTRA_CONF, create => 1, logic_only => 0)
#	A started cluster with courier preloaded and (unless create => 0) the
#	extension created in the database postgres, which is where the
#	launcher starts workers.  logic_only => 1 runs no tms workers.
sub courier_node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf', $BASE_CONF);
	$node->append_conf('postgresql.conf', $LOGIC_ONLY_CONF)
	  if $opt{logic_only};
	$node->append_conf('postgresql.conf', $opt{conf}) if defined $opt{conf};
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION courier')
	  if $opt{create} // 1;
	return $node;
}

# register_orders(NODE, FIRST_ID, LAST_ID)
#	Register the orders FIRST_ID..LAST_ID (promised in 3 days), in calls of
#	at most 100,000 (courier.max_orders_per_request).  Returns how many.
sub register_orders
{
	my ($node, $first, $last) = @_;
	my $n = 0;

	for (my $lo = $first; $lo <= $last; $lo += 100_000)
	{
		my $hi = $lo + 99_999 > $last ? $last : $lo + 99_999;

		$n += $node->safe_psql(
			'postgres', qq{
			SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
				'order_id', g,
				'seller_id', g % 50 + 1,
				'customer_phone', format('010-%s-%s',
					lpad((g / 10000 % 10000)::text, 4, '0'),
					lpad((g % 10000)::text, 4, '0')),
				'product_name', 'super-sweet corn 10kg',
				'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD'))))
			  FROM generate_series($lo, $hi) AS g});
	}
	return $n;
}

# delay_orders(NODE, FIRST_ID, LAST_ID, DAYS)
#	One delay request for the orders FIRST_ID..LAST_ID to today + DAYS
#	(default 10); returns the request id.
sub delay_orders
{
	my ($node, $first, $last, $days) = @_;
	$days //= 10;
	return $node->safe_psql(
		'postgres', qq{
		SELECT courier.delay_orders(
			array(SELECT generate_series($first, $last)::bigint),
			'harvest delayed by rain', current_date + $days)});
}

# query(NODE, SQL): the result of SQL in the database postgres (dies on error).
sub query
{
	my ($node, $sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# try_psql(NODE, SQL)
#	Run SQL once and return (stdout, stderr) without dying: a server that
#	crashes or restarts under psql (a broken pipe makes IPC::Run die) gives
#	an error text, which the pollers count as "not yet".
sub try_psql
{
	my ($node, $sql) = @_;
	my ($out, $err, $timed_out) = ('', '', 0);

	my $ok = eval {
		$node->psql(
			'postgres', $sql,
			stdout => \$out,
			stderr => \$err,
			timeout => 30,
			timed_out => \$timed_out);
		1;
	};
	$err = "psql died: $@" unless $ok;
	$err = 'psql timed out' if $timed_out;
	return ($out, $err);
}

# poll_until(NODE, SQL, EXPECTED, TIMEOUT_SECONDS)
#	Run SQL every 100 ms until its output equals EXPECTED or the deadline
#	passes.  Errors (server restarting, not yet accepting connections) count
#	as "not yet".  Returns true on success; on timeout prints the last
#	output and returns false, so the caller's ok() fails with it.
sub poll_until
{
	my ($node, $sql, $expected, $timeout) = @_;
	my $deadline = time() + ($timeout // 60);
	my ($out, $err) = ('', '');

	while (1)
	{
		($out, $err) = try_psql($node, $sql);
		chomp $out;
		return 1 if $out eq $expected && $err eq '';
		last if time() > $deadline;
		usleep(100_000);
	}
	diag("poll_until timed out after ${timeout}s\n  query: $sql\n"
		  . "  expected: $expected\n  last output: $out\n  last stderr: $err");
	return 0;
}

# poll_for(NODE, SQL, TIMEOUT_SECONDS)
#	Run SQL every 100 ms until it returns a non-empty result, and return
#	that result; undef (after a diagnostic) when the deadline passes.
sub poll_for
{
	my ($node, $sql, $timeout) = @_;
	my $deadline = time() + ($timeout // 60);
	my ($out, $err) = ('', '');

	while (1)
	{
		($out, $err) = try_psql($node, $sql);
		chomp $out;
		return $out if $out ne '' && $err eq '';
		last if time() > $deadline;
		usleep(100_000);
	}
	diag("poll_for timed out after ${timeout}s\n  query: $sql\n"
		  . "  last stderr: $err");
	return undef;
}

# check_nothing_lost(NODE, REQUEST_ID, FIRST_ID, LAST_ID, DAYS)
#	After a request for the orders FIRST_ID..LAST_ID (to today + DAYS) has
#	drained: every order is in exactly one of done (history), failed
#	(failures) or pending (logic queue), with nothing failed or pending,
#	no order twice in the history, and exactly one notice per order, each
#	still pending, due and held by no sender: queued for the tms stage,
#	which does not run in these (logic_only) clusters.  Emits the
#	assertions itself.
sub check_nothing_lost
{
	my ($node, $req, $first, $last, $days) = @_;
	my $n = $last - $first + 1;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	is(query($node,
		"SELECT total, done, failed, pending FROM courier.request_status($req)"),
		"$n|$n|0|0", "request_status: $n total, $n done, 0 failed, 0 pending");
	is(query($node, qq{
		WITH o AS (SELECT order_id FROM courier.orders
					WHERE order_id BETWEEN $first AND $last),
			 h AS (SELECT order_id, count(*) AS n FROM courier.delay_history
					WHERE request_id = $req GROUP BY order_id),
			 f AS (SELECT order_id, count(*) AS n FROM courier.failures
					WHERE request_id = $req AND stage = 'logic' GROUP BY order_id),
			 w AS (SELECT order_id, count(*) AS n FROM courier.work_items
					WHERE request_id = $req AND stage = 'logic' GROUP BY order_id)
		SELECT count(*) FILTER (WHERE coalesce(h.n, 0) + coalesce(f.n, 0) + coalesce(w.n, 0) = 1),
			   count(*) FILTER (WHERE coalesce(h.n, 0) + coalesce(f.n, 0) + coalesce(w.n, 0) <> 1)
		  FROM o LEFT JOIN h USING (order_id) LEFT JOIN f USING (order_id)
				 LEFT JOIN w USING (order_id)}),
		"$n|0", "each of the $n orders is in exactly one of done, failed, pending");
	is(query($node,
		"SELECT count(*), count(DISTINCT order_id) FROM courier.delay_history"
		  . " WHERE request_id = $req"),
		"$n|$n", "$n history rows, no order twice");
	is(query($node,
		"SELECT count(*) FROM courier.work_items"
		  . " WHERE stage = 'logic' AND request_id = $req"),
		'0', 'no logic item of the request is left');
	is(query($node,
		"SELECT count(*) FROM courier.failures WHERE request_id = $req"),
		'0', 'no item of the request failed');
	is(query($node,
		"SELECT count(*), count(DISTINCT order_id) FROM courier.notices"
		  . " WHERE order_id BETWEEN $first AND $last"
		  . "   AND ship_date = current_date + $days"),
		"$n|$n", "notices == orders: one notice per order ($n)");
	is(query($node,
		"SELECT count(*), count(DISTINCT order_id) FROM courier.notices"
		  . " WHERE order_id BETWEEN $first AND $last"
		  . "   AND ship_date = current_date + $days AND status = 'pending'"
		  . "   AND due_at <= now() AND leased_by IS NULL"),
		"$n|$n", "each notice is queued for the tms stage: pending, due, unleased ($n)");
	return;
}

# logic_workers(NODE): how many logic workers pg_stat_activity shows.
sub logic_workers
{
	my ($node) = @_;
	return query($node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'");
}

# log_offset(NODE): the current size of the server log, to look only at
# what is logged after this point.
sub log_offset
{
	my ($node) = @_;
	return -s $node->logfile;
}

# poll_log(NODE, REGEX, OFFSET, TIMEOUT_SECONDS)
#	Read the server log from OFFSET every 100 ms until REGEX matches or the
#	deadline passes; returns whether it matched.
sub poll_log
{
	my ($node, $regex, $offset, $timeout) = @_;
	my $deadline = time() + ($timeout // 60);

	while (1)
	{
		return 1 if slurp_file($node->logfile, $offset) =~ $regex;
		last if time() > $deadline;
		usleep(100_000);
	}
	diag("poll_log timed out after ${timeout}s waiting for $regex");
	return 0;
}

# library_version()
#	The version the installed library needs its schema at: courier.control's
#	default_version (the upgrade tests update to it).
sub library_version
{
	my $control = `pg_config --sharedir`;
	chomp $control;
	open(my $fh, '<', "$control/extension/courier.control")
	  or die "cannot read courier.control: $!";
	while (<$fh>)
	{
		return $1 if /^default_version\s*=\s*'([^']+)'/;
	}
	die "no default_version in courier.control";
}

# create_at_version(NODE, VERSION)
#	The upgrade tests' start: CREATE EXTENSION courier at an older VERSION
#	under the current library; two tests check that it is at VERSION and
#	that the launcher says so and starts no worker.
sub create_at_version
{
	my ($node, $version) = @_;
	my $current = library_version();
	my $offset = log_offset($node);

	query($node, "CREATE EXTENSION courier VERSION '$version'");
	is(query($node, "SELECT extversion FROM pg_extension WHERE extname = 'courier'"),
		$version, "the extension is created at version $version");
	ok( poll_log(
			$node,
			qr/courier launcher: extension courier is at version \Q$version\E, the library needs \Q$current\E; no worker is started/,
			$offset, 30),
		"the launcher warns that the extension is at $version and starts no worker");
	return;
}

# table_columns(NODE, TABLE)
#	The columns courier.TABLE has now, as the inside of an SQL array of
#	text, for rows_digest: an upgrade test takes them before the update,
#	so columns a later version adds are left out of the comparison.
sub table_columns
{
	my ($node, $table) = @_;
	return query($node, qq{
		SELECT string_agg(quote_literal(attname), ',' ORDER BY attnum)
		  FROM pg_attribute
		 WHERE attrelid = 'courier.$table'::regclass AND attnum > 0
		   AND NOT attisdropped});
}

# rows_digest(NODE, TABLE, COLUMNS)
#	md5 of every row of courier.TABLE as JSON, restricted to COLUMNS
#	(from table_columns), in a stable order, and the row count: equal
#	before and after an update when no row of those columns changed.
sub rows_digest
{
	my ($node, $table, $columns) = @_;
	return query($node, qq{
		SELECT md5(string_agg(j::text, ',' ORDER BY j::text)) || ':' || count(*)
		  FROM (SELECT (SELECT jsonb_object_agg(e.key, e.value)
						  FROM jsonb_each(to_jsonb(t)) AS e
						 WHERE e.key = ANY (ARRAY[$columns])) AS j
				  FROM courier.$table t) s});
}

1;
