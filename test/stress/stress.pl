
# stress.pl
#	Real app traffic against live workers and a faulty TMS for a bounded
#	time, then invariants checked as TAP assertions.
#
#	Traffic (several pgbench processes at once, each at its own rate):
#	  delay     courier.delay_orders on the open orders of overlapping
#	            random windows of 50-500 ids, to today + 1..30 days; a
#	            tenth names the newest ids blindly, as an app that delays
#	            orders it has just registered from another worker
#	  invoice   courier.register_invoice on random orders (a close)
#	  ship      courier.request_shipping on small random arrays
#	  register  courier.register_orders re-sending 5-30 existing orders of
#	            a window, in random order, with the data they were
#	            registered with, the first one sometimes as cancelled or
#	            shipped (a close)
#	  fresh     courier.register_orders of 1-5 new orders
#	  status    courier.request_status of recent and older requests
#	  prune     CALL courier.prune() with a 10 s retention every 5 s, as
#	            pg_cron would run it
#	Half of the delay and register calls go to a hot range of 500 ids, so
#	that calls and workers contend for the same rows.
#	The mock TMS adds latency, 500s, 429 bursts, hangs past
#	courier.tms_timeout and connection resets; half way through a courier
#	worker is killed with SIGKILL and the cluster restarts
#	(restart_after_crash = on).  Then the faults stop and the queues drain.
#
#	Every app call goes through a PL/pgSQL wrapper in the schema stress
#	that catches the error and records its SQLSTATE in stress.errors, so
#	legitimate refusals (a closed order, 55000) do not stop pgbench and
#	every answer courier gave is kept.  A close is committed in its own
#	statement; the next statement of the pgbench script stamps it with
#	clock_timestamp() after that commit.
#
#	Invariants:
#	  1. nothing lost: every notice ends delivered, failed or dropped (none
#	     is left pending, the tms stage's queue), no work item (the logic
#	     stage's queue) is left, every order of every request is done or
#	     failed
#	  2. no request for an order reaches the TMS after its close (beyond
#	     $MARGIN_MS)
#	  3. each (order, new date) is delivered under one idempotency key
#	  4. every request_status adds up, during the run and at the end
#	  5. no XX000, no deadlock (40P01), no SQLSTATE outside the documented
#	     table in the app's answers; no error escaped the wrappers
#	  6. no crash but the one caused, no PANIC
#	courier.prune() deletes history and delivered notices during the run:
#	orders whose history it deleted count through courier's own pruned
#	counters (requests.pruned_done/pruned_failed when the installed
#	version has them), and a missing notice is excused only if the mock
#	delivered it before a prune's cutoff.
#
#	The pgbench logs (stress_pgbench_<stream>.log) and what the mock
#	received (stress_mock_received.tsv: us, id, HTTP status) are kept in
#	tmp_check/log next to the server log.
#
# Knobs: COURIER_STRESS_SECONDS (traffic time, default 60),
# COURIER_STRESS_ORDERS (default 20000), COURIER_STRESS_SEED (default 1).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../t";
use CourierTest;
use CourierTms;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

# The SQLSTATEs of the README's error table: the only ones the app may see.
# 40001 (serialization failure, with a retry hint) is an answer courier may
# give under concurrency.  XX000 and 40P01 are never allowed.
my @DOCUMENTED_SQLSTATES = qw(22004 22023 2200F 22008 22001 54000 23505 23503
  55000 22P02 22007 40001);

# How long after the app saw the COMMIT of a close a request for that order
# may still reach the mock: a sender that checked the order just before the
# commit and started its request at once needs the time to write the
# request and for the mock to read it (well under a millisecond on
# loopback), plus scheduling noise on a loaded 2-core machine.  Anything
# later was started after the close.
my $MARGIN_MS = 20;

my $SECONDS = $ENV{COURIER_STRESS_SECONDS} // 60;
my $N = $ENV{COURIER_STRESS_ORDERS} // 20_000;
my $HOT = 500;
my $RETENTION_S = 10;
my $SEED = $ENV{COURIER_STRESS_SEED} // 1;
my $DRAIN_TIMEOUT = 90;

my $log_dir = $PostgreSQL::Test::Utils::log_path;
my $work = PostgreSQL::Test::Utils::tempdir('stress');

# ------------------------------------------------------------ cluster, mock

my $mock = start_mock('--idempotency-header', 'Idempotency-Key');
my $node = tms_node(
	'stress', $mock, conf => qq{
restart_after_crash = on
max_connections = 100
courier.retry_base = '20ms'
courier.retry_cap = '500ms'
courier.lease_time = '5s'
courier.tms_timeout = '2s'
courier.logic_max_workers = 2
courier.tms_max_workers = 2
courier.max_attempts = 20
log_lock_waits = on
});

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
query($node,
	"SELECT courier.request_shipping(array(SELECT generate_series(1, $N, 2)::bigint))");
my $FIRST_NEW = int($N / 1000 + 1) * 1000 + 1;

# ------------------------------------------------------------ the app's side

my $setup = <<'SQL';
CREATE SCHEMA stress;

-- every error courier answered an app call with
CREATE TABLE stress.errors (
	at			timestamptz NOT NULL DEFAULT clock_timestamp(),
	call		text NOT NULL,
	sqlstate	text NOT NULL,
	message		text,
	detail		text,
	hint		text
);

-- every request delay_orders returned
CREATE TABLE stress.requests (
	request_id	bigint PRIMARY KEY,
	orders		integer NOT NULL,
	new_ship_date date NOT NULL,
	at			timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- every close that committed; after_commit is stamped by the next
-- statement of the same session, after the client saw the commit
CREATE TABLE stress.closed (
	order_id	bigint NOT NULL,
	how			text NOT NULL,
	result		text,
	session		text NOT NULL,
	in_tx		timestamptz NOT NULL DEFAULT clock_timestamp(),
	after_commit timestamptz
);
CREATE INDEX ON stress.closed (session) WHERE after_commit IS NULL;

-- an upper bound of the cutoff of every prune that ran
CREATE TABLE stress.prunes (
	cutoff_at_most timestamptz NOT NULL
);

-- ids of the orders the fresh stream registers
CREATE SEQUENCE stress.new_ids START :first_new;

-- request_status answers that did not add up, and the highest done seen
CREATE TABLE stress.status_bad (
	at			timestamptz NOT NULL DEFAULT clock_timestamp(),
	request_id	bigint NOT NULL,
	problem		text NOT NULL
);
CREATE TABLE stress.status_seen (
	request_id	bigint PRIMARY KEY,
	done		integer NOT NULL,
	calls		integer NOT NULL DEFAULT 1
);

CREATE FUNCTION stress.session() RETURNS text LANGUAGE sql AS $$
	SELECT pg_backend_pid() || '@' || backend_start
	  FROM pg_stat_activity WHERE pid = pg_backend_pid()
$$;

CREATE FUNCTION stress.record_error(call text, st text, msg text, det text, hnt text)
RETURNS void LANGUAGE sql AS $$
	INSERT INTO stress.errors (call, sqlstate, message, detail, hint)
	VALUES (call, st, msg, det, hnt)
$$;

-- stamp this session's closes with the time after their commit
CREATE FUNCTION stress.stamp_closes() RETURNS void LANGUAGE sql AS $$
	UPDATE stress.closed SET after_commit = clock_timestamp()
	 WHERE session = stress.session() AND after_commit IS NULL
$$;

-- delay the open orders of [lo, lo + width) to today + days, as an app
-- would: it picks the orders it may still delay
CREATE FUNCTION stress.delay(lo bigint, width integer, days integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	ids bigint[];
	r bigint;
	st text; msg text; det text; hnt text;
BEGIN
	SELECT array_agg(order_id ORDER BY random()) INTO ids
	  FROM courier.orders
	 WHERE order_id >= lo AND order_id < lo + width
	   AND status IN ('paid', 'shipping_requested');
	IF ids IS NULL THEN
		RETURN NULL;
	END IF;
	BEGIN
		r := courier.delay_orders(ids, 'stress: heavy rain', current_date + days);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
		PERFORM stress.record_error('delay_orders', st, msg, det, hnt);
		RETURN NULL;
	END;
	INSERT INTO stress.requests VALUES (r, cardinality(ids), current_date + days);
	RETURN r;
END $$;

-- delay the newest ids (registered or being registered) without looking
CREATE FUNCTION stress.delay_newest(days integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	last bigint;
	ids bigint[];
	r bigint;
	st text; msg text; det text; hnt text;
BEGIN
	SELECT last_value INTO last FROM stress.new_ids;
	IF last < 20 THEN
		RETURN NULL;
	END IF;
	ids := array(SELECT g FROM generate_series(last - 15, last) g);
	BEGIN
		r := courier.delay_orders(ids, 'stress: heavy rain', current_date + days);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
		PERFORM stress.record_error('delay_orders', st, msg, det, hnt);
		RETURN NULL;
	END;
	INSERT INTO stress.requests VALUES (r, cardinality(ids), current_date + days);
	RETURN r;
END $$;

-- register n new orders
CREATE FUNCTION stress.register_new(n integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
	ids bigint[] := array(SELECT nextval('stress.new_ids') FROM generate_series(1, n));
	st text; msg text; det text; hnt text;
BEGIN
	RETURN courier.register_orders((
		SELECT jsonb_agg(jsonb_build_object(
			'order_id', g,
			'seller_id', g % 50 + 1,
			'customer_phone', '0101' || lpad(g::text, 7, '0'),
			'product_name', 'corn',
			'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD')))
		  FROM unnest(ids) g));
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
	PERFORM stress.record_error('register_orders', st, msg, det, hnt);
	RETURN NULL;
END $$;

-- register an invoice; the result is kept as text (boolean today, a word
-- such as 'dropped' later)
CREATE FUNCTION stress.invoice(id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	res text;
	st text; msg text; det text; hnt text;
BEGIN
	BEGIN
		res := courier.register_invoice(id, 'INV-' || id)::text;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
		PERFORM stress.record_error('register_invoice', st, msg, det, hnt);
		RETURN 'error ' || st;
	END;
	INSERT INTO stress.closed (order_id, how, result, session)
	VALUES (id, 'invoiced', res, stress.session());
	RETURN res;
END $$;

CREATE FUNCTION stress.ship(ids bigint[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text; det text; hnt text;
BEGIN
	RETURN courier.request_shipping(ids);
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
	PERFORM stress.record_error('request_shipping', st, msg, det, hnt);
	RETURN NULL;
END $$;

-- re-send n orders of [lo, lo + 50) in random order with the data they
-- were registered with; close_as ('cancelled', 'shipped' or '') is the
-- status sent for the first of them, or none
CREATE FUNCTION stress.reregister(lo bigint, n integer, close_as text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
	ids bigint[];
	r integer;
	st text; msg text; det text; hnt text;
BEGIN
	SELECT array_agg(g) INTO ids
	  FROM (SELECT g FROM generate_series(lo, lo + 49) g
			 ORDER BY random() LIMIT n) s;
	BEGIN
		r := courier.register_orders((
			SELECT jsonb_agg(jsonb_build_object(
				'order_id', o.order_id,
				'seller_id', o.order_id % 50 + 1,
				'customer_phone', '0101' || lpad(o.order_id::text, 7, '0'),
				'product_name', 'corn',
				'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD'))
				|| CASE WHEN close_as <> '' AND o.ord = 1
						THEN jsonb_build_object('status', close_as) ELSE '{}' END
				ORDER BY o.ord)
			  FROM unnest(ids) WITH ORDINALITY AS o(order_id, ord)));
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
		PERFORM stress.record_error('register_orders', st, msg, det, hnt);
		RETURN NULL;
	END;
	IF close_as <> '' THEN
		INSERT INTO stress.closed (order_id, how, result, session)
		VALUES (ids[1], close_as, r::text, stress.session());
	END IF;
	RETURN r;
END $$;

-- read the progress of one of the latest requests and record any answer
-- that does not add up; one session runs this, so its snapshots only move
-- forward and done may never go down
CREATE FUNCTION stress.check_status(back integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	req bigint;
	s record;
	seen integer;
	st text; msg text; det text; hnt text;
BEGIN
	SELECT request_id INTO req FROM stress.requests
	 ORDER BY request_id DESC OFFSET back LIMIT 1;
	IF req IS NULL THEN
		RETURN;
	END IF;
	BEGIN
		SELECT * INTO s FROM courier.request_status(req);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
			det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
		PERFORM stress.record_error('request_status', st, msg, det, hnt);
		RETURN;
	END;
	IF s.total IS NULL THEN
		INSERT INTO stress.status_bad (request_id, problem) VALUES (req, 'no row');
		RETURN;
	END IF;
	IF s.total <> s.done + s.failed + s.pending OR s.done < 0 OR s.failed < 0
	   OR s.pending < 0 OR s.total <> (SELECT orders FROM stress.requests WHERE request_id = req)
	THEN
		INSERT INTO stress.status_bad (request_id, problem)
		VALUES (req, format('total %s done %s failed %s pending %s',
							s.total, s.done, s.failed, s.pending));
	END IF;
	SELECT done INTO seen FROM stress.status_seen WHERE request_id = req;
	IF seen > s.done THEN
		INSERT INTO stress.status_bad (request_id, problem)
		VALUES (req, format('done went down from %s to %s', seen, s.done));
	END IF;
	INSERT INTO stress.status_seen AS x (request_id, done) VALUES (req, s.done)
	ON CONFLICT (request_id) DO UPDATE
	   SET done = greatest(x.done, EXCLUDED.done), calls = x.calls + 1;
END $$;
SQL
$setup =~ s/:first_new\b/$FIRST_NEW/;
query($node, $setup);

# ------------------------------------------------------------ pgbench scripts

my $maxlo = $N - 500;
my $hotlo = $HOT - 50;
my %scripts = (
	delay => <<"EOS",
\\set pick random(1, 10)
\\set lo CASE WHEN :pick <= 5 THEN random(1, $hotlo) ELSE random(1, $maxlo) END
\\set width random(50, 500)
\\set days random(1, 30)
SELECT CASE WHEN :pick = 10 THEN stress.delay_newest(:days) ELSE stress.delay(:lo, :width, :days) END;
EOS
	invoice => <<"EOS",
\\set id random(1, $N)
SELECT stress.invoice(:id);
SELECT stress.stamp_closes();
EOS
	ship => <<"EOS",
\\set a random(1, $N)
\\set b random(1, $N)
\\set c random(1, $N)
\\set n random(1, 3)
SELECT stress.ship((ARRAY[:a, :b, :c]::bigint[])[1:(:n)]);
EOS
	register => <<"EOS",
\\set hot random(1, 2)
\\set lo CASE WHEN :hot = 1 THEN random(1, $hotlo) ELSE random(1, $N - 49) END
\\set n random(5, 30)
\\set pick random(1, 20)
SELECT stress.reregister(:lo, :n, CASE :pick WHEN 1 THEN 'cancelled' WHEN 2 THEN 'shipped' ELSE '' END);
SELECT stress.stamp_closes();
EOS
	fresh => <<"EOS",
\\set n random(1, 5)
SELECT stress.register_new(:n);
EOS
	status => <<"EOS",
\\set pick random(1, 4)
\\set back CASE WHEN :pick = 1 THEN random(0, 300) ELSE random(0, 20) END
SELECT stress.check_status(:back);
EOS
	prune => <<"EOS",
CALL courier.prune(retention => interval '$RETENTION_S seconds');
INSERT INTO stress.prunes VALUES (clock_timestamp() - interval '$RETENTION_S seconds');
\\sleep 5 s
EOS
);

# name => [clients, transactions per second for the whole stream (undef:
# as the script paces itself)]
my %streams = (
	delay => [ 3, 3 ],
	invoice => [ 2, 20 ],
	ship => [ 1, 5 ],
	register => [ 4, 40 ],
	fresh => [ 1, 20 ],
	status => [ 1, 20 ],
	prune => [ 1, undef ],);

for my $name (keys %scripts)
{
	open my $fh, '>', "$work/$name.sql" or die "$work/$name.sql: $!";
	print $fh $scripts{$name};
	close $fh;
}

# start_stream(NAME, SECONDS, ROUND): one pgbench for the stream NAME,
# appending its output to the stream's log; each round has its own seed.
sub start_stream
{
	my ($name, $secs, $round) = @_;
	my ($clients, $rate) = @{ $streams{$name} };
	my $logf = "$log_dir/stress_pgbench_$name.log";

	open my $fh, '>>', $logf or die "$logf: $!";
	printf $fh "---- %s: pgbench for %d s\n", scalar(localtime), $secs;
	close $fh;
	return IPC::Run::start(
		[
			'pgbench', '-n', '-h', $node->host, '-p', $node->port,
			'-c', $clients, '-j', $clients, (defined $rate ? ('-R', $rate) : ()),
			'-T', $secs,
			'--random-seed', $SEED * 1000 + $round, '-f', "$work/$name.sql", 'postgres'
		],
		'<', \undef, '>>', $logf, '2>>', $logf);
}

# ------------------------------------------------------------ the run

mock_control(
	$mock,
	seed => $SEED,
	latency_ms => 20,
	error_rate => 0.05,
	error_status => 500,
	hang_rate => 0.005,
	hang_ms => 3000,
	reset_rate => 0.01,
	retry_after_s => 1,
	burst_429 => 10);

my $start = time();
my $end = $start + $SECONDS;
my $kill_at = $start + $SECONDS / 2;
my $next_fault = $start + 5;
my @latencies = (20, 35, 50, 30);
my $fault_round = 0;
my %running;
my %last_start;
my %rounds;
my ($victim, $victim_type, $log_before_kill);

while (time() < $end)
{
	my $now = time();

	# (re)start every stream that is not running, e.g. after the crash
	for my $name (sort keys %streams)
	{
		# pump_nb dies once the process has ended
		if ($running{$name}
			&& !(eval { $running{$name}->pump_nb; 1 } && $running{$name}->pumpable))
		{
			eval { $running{$name}->finish; 1 };
			delete $running{$name};
		}
		next if $running{$name};
		next if $now - ($last_start{$name} // 0) < 0.5;
		my $left = int($end - $now);
		next if $left < 1;
		$rounds{$name}++;
		$running{$name} = start_stream($name, $left, $rounds{$name});
		$last_start{$name} = $now;
	}

	# vary the provider: another latency every 5 s, a 429 burst every 15 s
	if ($now >= $next_fault)
	{
		$fault_round++;
		my %set = (latency_ms => $latencies[ $fault_round % @latencies ]);
		$set{burst_429} = 10 if $fault_round % 3 == 0;
		eval { mock_control($mock, %set); 1 } or diag("mock_control: $@");
		$next_fault += 5;
	}

	# half way: SIGKILL a tms worker (a logic worker if no sender runs)
	if (!defined $victim && $now >= $kill_at)
	{
		my ($out, $err) = CourierTest::try_psql($node, q{
			SELECT pid || '|' || backend_type FROM pg_stat_activity
			 WHERE backend_type IN ('courier tms worker', 'courier logic worker')
			 ORDER BY backend_type = 'courier tms worker' DESC, state = 'active' DESC
			 LIMIT 1});
		chomp $out;
		if ($out =~ /^(\d+)\|(.*)$/)
		{
			($victim, $victim_type) = ($1, $2);
			$log_before_kill = log_offset($node);
			note(sprintf("%.1f s: SIGKILL to %s %d", $now - $start, $victim_type, $victim));
			kill 'KILL', $victim;
		}
	}
	usleep(100_000);
}

# pgbench was started with -T for the time left, so it ends by itself
for my $name (sort keys %running)
{
	eval { $running{$name}->finish; 1 }
	  or eval { $running{$name}->kill_kill(grace => 5) };
}
my $traffic_s = time() - $start;
note(sprintf('traffic ran %.1f s; pgbench rounds: %s', $traffic_s,
		join(', ', map { "$_ $rounds{$_}" } sort keys %rounds)));

ok(defined $victim, 'a courier worker was killed with SIGKILL half way through');
ok( defined $victim
	  && poll_log($node, qr/all server processes terminated; reinitializing/,
		$log_before_kill, 30),
	'the postmaster reinitialised after the kill');

# ------------------------------------------------------------ drain

mock_control(
	$mock,
	latency_ms => 0,
	error_rate => 0,
	hang_rate => 0,
	reset_rate => 0,
	burst_429 => 0);
my $drain_start = time();
# The logic stage's queue is courier.work_items, the tms stage's the
# pending notices: both empty.
my $drained = poll_until($node,
	"SELECT (SELECT count(*) FROM courier.work_items)"
	  . "     + (SELECT count(*) FROM courier.notices WHERE status = 'pending')",
	'0', $DRAIN_TIMEOUT);
ok($drained, "the logic and tms queues drain within ${DRAIN_TIMEOUT}s once the faults stop");
note(sprintf('drained in %.1f s', time() - $drain_start));
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'the mock has no request in flight');

# ------------------------------------------------------------ figures

my $stats = mock_stats($mock);
my $received = CourierTms::mock_request($mock, 'GET', '/_received');
{
	# kept next to the server log, for a look at what arrived when
	open my $fh, '>', "$log_dir/stress_mock_received.tsv" or die $!;
	print $fh "$_->{us}\t$_->{id}\t$_->{status}\n" for @$received;
	close $fh;
}
my @mock_delivered = @{ mock_delivered($mock) };

my %fig;
@fig{qw(orders new_orders prunes requests req_orders invoices closes_reg notices delivered failed dropped pending)}
  = split /\|/, query($node, qq{
	SELECT (SELECT count(*) FROM courier.orders),
		   (SELECT count(*) FROM courier.orders WHERE order_id >= $FIRST_NEW),
		   (SELECT count(*) FROM stress.prunes),
		   (SELECT count(*) FROM courier.requests),
		   (SELECT coalesce(sum(total), 0) FROM courier.requests),
		   (SELECT count(*) FROM stress.closed WHERE how = 'invoiced'),
		   (SELECT count(*) FROM stress.closed WHERE how <> 'invoiced'),
		   (SELECT count(*) FROM courier.notices),
		   (SELECT count(*) FROM courier.notices WHERE status = 'delivered'),
		   (SELECT count(*) FROM courier.notices WHERE status = 'failed'),
		   (SELECT count(*) FROM courier.notices WHERE status = 'dropped'),
		   (SELECT count(*) FROM courier.notices
			 WHERE status NOT IN ('delivered', 'failed', 'dropped'))});
diag(sprintf(
		"stress: %.0f s of traffic, %d orders (%d registered during the run), %d prunes,"
		  . " %d requests (%d orders), %d invoices, %d closes by register_orders",
		$traffic_s, @fig{qw(orders new_orders prunes requests req_orders invoices closes_reg)}));
diag(sprintf("notices: %d: %d delivered, %d failed, %d dropped, %d other",
		@fig{qw(notices delivered failed dropped pending)}));
diag(sprintf(
		"mock: %d requests, %d messages, %d delivered, %d duplicates, %d 5xx,"
		  . " %d 429, %d hangs, %d resets, %d without idempotency key",
		@$stats{
			qw(requests messages_received delivered duplicates status_5xx
			  throttled_429 hangs resets missing_idempotency_key)
		}));
diag('app errors by call and SQLSTATE: '
	  . (join(', ', split /\n/, query($node, q{
		SELECT call || ' ' || sqlstate || ': ' || count(*)
		  FROM stress.errors GROUP BY call, sqlstate ORDER BY call, sqlstate}))
		  || 'none'));

# The run did what it claims, or the invariants below prove nothing.
cmp_ok($fig{requests}, '>', 0, 'the app made delay requests');
cmp_ok($fig{delivered}, '>', 0, 'notices were delivered');
cmp_ok($fig{invoices} + $fig{closes_reg}, '>', 0, 'the app closed orders');
cmp_ok($stats->{status_5xx} + $stats->{hangs} + $stats->{resets}, '>', 0,
	'the mock injected faults');
ok(!$stats->{received_overflow}, "the mock's received log did not overflow");

# ------------------------------------------------------------ 1. nothing lost

is($fig{pending}, 0,
	'nothing lost: every notice is delivered, failed or dropped (none pending)');
is(query($node, 'SELECT count(*) FROM courier.work_items'), '0',
	'nothing lost: no work item (logic queue) is left');
# Orders whose history courier.prune() deleted count as done if courier
# keeps that count (pruned_done, pruned_failed since 0.2); without it they
# are lost to the count, which is what request_status reports too.
my $bad_requests = query($node, q{
	SELECT count(*) FROM courier.requests r
	 WHERE r.total <> (SELECT count(*) FROM courier.delay_history h
						WHERE h.request_id = r.request_id)
				   + (SELECT count(*) FROM courier.failures f
					   WHERE f.request_id = r.request_id AND f.stage = 'logic')
				   + coalesce((to_jsonb(r) ->> 'pruned_done')::integer, 0)
				   + coalesce((to_jsonb(r) ->> 'pruned_failed')::integer, 0)});
is($bad_requests, '0',
	'nothing lost: every order of every request is in the history or failed'
	  . ' (or counted as pruned)');
is(query($node, q{
	SELECT count(*) FROM (
		SELECT request_id, order_id FROM courier.delay_history
		UNION ALL
		SELECT request_id, order_id FROM courier.failures WHERE stage = 'logic') x
	 GROUP BY request_id, order_id HAVING count(*) > 1}) || '0', '0',
	'no order of a request is applied or failed twice');
is(query($node, q{
	SELECT count(*) FROM stress.requests s
	  LEFT JOIN courier.requests r USING (request_id)
	 WHERE r.total IS DISTINCT FROM s.orders}), '0',
	'every request the app got back exists with the orders it named');
# A notice may be missing only because courier.prune() deleted it once it
# was delivered: then the mock delivered it before the last prune's cutoff.
my $last_cutoff_us = query($node,
	'SELECT coalesce((extract(epoch FROM max(cutoff_at_most)) * 1000000)::bigint, 0)'
	  . ' FROM stress.prunes');
my %first_200;
for my $e (@$received)
{
	$first_200{ $e->{id} } //= $e->{us} if $e->{status} == 200;
}
my @no_notice = grep {
	!(defined $first_200{$_} && $first_200{$_} < $last_cutoff_us)
} split /\n/, query($node, q{
	SELECT DISTINCT 'dn-' || h.order_id || '-' || to_char(h.new_ship_date, 'YYYYMMDD')
	  FROM courier.delay_history h
	 WHERE h.outcome = 'delayed'
	   AND NOT EXISTS (SELECT 1 FROM courier.notices n
					    WHERE n.order_id = h.order_id
						  AND n.ship_date = h.new_ship_date)});
is(scalar(@no_notice), 0, 'every applied delay has its notice (or it was delivered and pruned)')
  or diag('first: ' . join(', ', @no_notice[ 0 .. ($#no_notice < 4 ? $#no_notice : 4) ]));

# For the record, not a rule: a notice marked dropped whose id the mock
# delivered after the last prune's cutoff (so not a re-notice of a pruned
# one) reached the customer although courier says it was dropped; a crash
# between a send and its record does that.
my @dropped_delivered = grep {
	defined $first_200{$_} && $first_200{$_} >= $last_cutoff_us
} @{ notice_keys($node, "status = 'dropped'") };
diag(scalar(@dropped_delivered) . ' notices marked dropped were delivered by the mock'
	  . ' (after the last prune cutoff)');
is(query($node, q{
	SELECT count(*) FROM courier.notices n
	 WHERE n.status = 'failed'
	   AND NOT EXISTS (SELECT 1 FROM courier.failures f
					    WHERE f.stage = 'tms' AND f.order_id = n.order_id
						  AND f.ship_date = n.ship_date)}), '0',
	'every failed notice is in courier.failures');

my %mock_ids = map { $_ => 1 } @mock_delivered;
my @courier_delivered = @{ notice_keys($node, "status = 'delivered'") };
my @not_at_mock = grep { !$mock_ids{$_} } @courier_delivered;
is(scalar(@not_at_mock), 0,
	'every notice courier marks delivered was delivered by the mock')
  or diag('first: ' . join(', ', @not_at_mock[ 0 .. ($#not_at_mock < 4 ? $#not_at_mock : 4) ]));

# ------------------------------------------------------------ 2. close rule

my %close_us;
my $unstamped = 0;
for my $line (split /\n/, query($node, q{
	SELECT order_id, coalesce((extract(epoch FROM min(after_commit)) * 1000000)::bigint::text, '')
	  FROM stress.closed GROUP BY order_id}))
{
	my ($o, $us) = split /\|/, $line;
	if ($us eq '') { $unstamped++; next; }
	$close_us{$o} = $us;
}
my (@late, %late_orders);
my $bad_ids = 0;
my %keys_of;    # "order|date" => { id => 1 }
for my $e (@$received)
{
	my ($o, $d) = $e->{id} =~ /^dn-(\d+)-(\d{8})$/;
	if (!defined $o) { $bad_ids++; next; }
	$keys_of{"$o|$d"}{ $e->{id} } = 1;
	next unless defined $close_us{$o};
	if ($e->{us} > $close_us{$o} + $MARGIN_MS * 1000)
	{
		push @late, [ $e->{id}, ($e->{us} - $close_us{$o}) / 1000, $e->{status} ];
		$late_orders{$o} = 1;
	}
}
note("$unstamped closed orders have no after-commit time (their session died"
	  . ' before stamping) and are left out of the close rule')
  if $unstamped;
is(scalar(@late), 0,
	"no request for an order reached the TMS more than ${MARGIN_MS} ms after"
	  . ' its close was committed')
  or diag(sprintf("%d late requests for %d closed orders (of %d closed); first: %s",
		scalar(@late), scalar(keys %late_orders), scalar(keys %close_us),
		join('; ', map { sprintf('%s %.1f ms after the close (HTTP %d)', @$_) }
			  (sort { $a->[1] <=> $b->[1] } @late)[ 0 .. ($#late < 4 ? $#late : 4) ])));

# ------------------------------------------------------------ 3. once per (order, date)

is($bad_ids, 0, 'every message id the mock received is dn-<order>-<YYYYMMDD>');
my %seen;
is(scalar(grep { $seen{$_}++ } @mock_delivered), 0,
	'the mock delivered each id once');
diag("the mock saw $stats->{duplicates} re-sends of ids it had already delivered"
	  . ' (same idempotency key)');
my @two_keys = grep { keys %{ $keys_of{$_} } > 1 } keys %keys_of;
is(scalar(@two_keys), 0,
	'no (order, date) reached the mock under two idempotency keys');
is(query($node, q{
	SELECT count(*) FROM (SELECT 1 FROM courier.notices
						   GROUP BY order_id, ship_date HAVING count(*) > 1) x}),
	'0', 'courier.notices has at most one row per (order, date)');

# ------------------------------------------------------------ 4. request_status

my $status_bad = query($node, 'SELECT count(*) FROM stress.status_bad');
is($status_bad, '0', 'every request_status read during the run added up')
  or diag("first: " . join('; ', split /\n/, query($node,
	  "SELECT request_id || ': ' || problem FROM stress.status_bad ORDER BY at LIMIT 5")));
diag(query($node, 'SELECT coalesce(sum(calls), 0) FROM stress.status_seen')
	  . ' request_status reads during the run');
my $status_end = query($node, q{
	SELECT count(*) FILTER (WHERE s.total IS NULL),
		   count(*) FILTER (WHERE s.pending <> 0 OR s.done + s.failed <> s.total
							OR s.total <> r.orders)
	  FROM stress.requests r
	  LEFT JOIN LATERAL courier.request_status(r.request_id) s ON true});
is($status_end, '0|0',
	'at the end every request_status has a row, pending = 0 and done + failed = total');

# ------------------------------------------------------------ 5. SQLSTATEs

my $documented = join(',', map { "'$_'" } @DOCUMENTED_SQLSTATES);
sub errors_where
{
	my ($label, $where) = @_;
	my $n = query($node, "SELECT count(*) FROM stress.errors WHERE $where");
	is($n, '0', $label)
	  or diag("first: " . join("\n  ", split /\n/, query($node,
		"SELECT call || ' ' || sqlstate || ': ' || message"
		  . " || coalesce(' DETAIL: ' || detail, '')"
		  . " FROM stress.errors WHERE $where ORDER BY at LIMIT 5")));
	return;
}
errors_where('no app call got XX000 (internal error)', "sqlstate = 'XX000'");
errors_where('no app call got 40P01 (deadlock)', "sqlstate = '40P01'");
errors_where('no app call got a SQLSTATE outside the documented table',
	"sqlstate NOT IN ($documented, 'XX000', '40P01')");

# Errors that escaped the wrappers: the connection errors of the crash
# restart are expected; anything else is not.
my $CRASH_NOISE = qr/terminating connection because of crash
  | perhaps\ the\ backend\ died
  | server\ closed\ the\ connection
  | connection\ to\ server\ .*\ failed
  | could\ not\ (connect|create\ connection)
  | the\ database\ system\ is\ (in\ recovery|starting\ up|shutting\ down|not\ yet\ accepting)
  | no\ connection\ to\ the\ server
  | Run\ was\ aborted/x;
my @escaped;
for my $name (sort keys %streams)
{
	my $text = slurp_file("$log_dir/stress_pgbench_$name.log");
	for my $line (split /\n/, $text)
	{
		next unless $line =~ /ERROR|FATAL|aborted/;
		next if $line =~ $CRASH_NOISE;
		push @escaped, "$name: $line";
	}
}
is(scalar(@escaped), 0, 'no error but the crash restart reached pgbench')
  or diag(join("\n", @escaped[ 0 .. ($#escaped < 9 ? $#escaped : 9) ]));

# ------------------------------------------------------------ 6. server log

my $log = slurp_file($node->logfile);
my $deadlocks = () = $log =~ /deadlock detected/g;
is($deadlocks, 0, 'the server log reports no deadlock');
my $sig9 = () = $log =~ /was terminated by signal 9/g;
is($sig9, defined $victim ? 1 : 0,
	'exactly the one process killed by the test was terminated by signal 9');
my @other_signals = $log =~ /(.*terminated by signal (?!9\b)\d+.*)/g;
is(scalar(@other_signals), 0, 'no process was terminated by another signal')
  or diag(join("\n", @other_signals[ 0 .. ($#other_signals < 4 ? $#other_signals : 4) ]));
my @panics = $log =~ /(.*(?:PANIC|TRAP:).*)/g;
is(scalar(@panics), 0, 'no PANIC and no failed assertion in the server log')
  or diag(join("\n", @panics[ 0 .. ($#panics < 4 ? $#panics : 4) ]));

# ------------------------------------------------------------ summary

diag(sprintf(
		"summary: %d orders, %d requests, %d invoices, notices %d delivered / %d failed"
		  . " / %d dropped, mock %d requests / %d duplicates, %d late requests,"
		  . " %d app errors outside the table, %d bad request_status reads,"
		  . " %d deadlocks in the log",
		$fig{orders}, $fig{requests}, $fig{invoices}, $fig{delivered}, $fig{failed},
		$fig{dropped}, $stats->{requests}, $stats->{duplicates}, scalar(@late),
		query($node, "SELECT count(*) FROM stress.errors WHERE sqlstate NOT IN ($documented)"),
		$status_bad, $deadlocks));

$node->stop;
done_testing();
