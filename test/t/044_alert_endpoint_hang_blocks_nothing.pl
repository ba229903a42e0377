
# 044_alert_endpoint_hang_blocks_nothing.pl
#	An alert endpoint (courier.alert_url) that accepts the connection and
#	the request but never answers holds up neither the launcher's pool
#	balancing nor a shutdown, even with courier.tms_timeout = 60s (the
#	time a request to it may take):
#	- a failure and courier.failure_digest() raise an alert; the launcher
#	  POSTs it, and the endpoint holds the request open;
#	- while it hangs, a bulk delay makes the launcher grow the logic pool
#	  from 1 to 2 and more workers (logic_max_workers = 3), and once the
#	  backlog is gone the extra workers retire back to 1
#	  (worker_idle_exit = 1s); all that time the alert's POST is still
#	  unanswered (no outcome recorded, the connection still open);
#	- pg_ctl stop -m fast then finishes in under 20 s.
#
# The old code (0.1) posted alerts with curl_easy_perform in the
# launcher's loop: the launcher sat in that call until courier.tms_timeout
# (60 s) ran out, starting no worker meanwhile, and a fast shutdown waited
# for it too.
#
# The endpoint is a listener forked by this test that reads each request
# and never writes a byte.  The mock TMS cannot play it: it parses the body
# before injecting hangs and answers 400 to an alert, which has no
# "messages".

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms qw(wait_for stays_true);
use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# ---------------------------------------------------------------------------
# The silent endpoint: logs "METHOD PATH" of each request to a file once
# its head has arrived, keeps the connection open, never answers.
# ---------------------------------------------------------------------------
my $seen_file = PostgreSQL::Test::Utils::tempdir() . '/silent.log';
my $listen = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Proto => 'tcp',
	Listen => 16,
	ReuseAddr => 1) or die "cannot listen: $!";
my $silent_port = $listen->sockport;
my $silent_pid = fork();
die "fork: $!" unless defined $silent_pid;
if ($silent_pid == 0)
{
	$SIG{TERM} = sub { POSIX::_exit(0) };
	my @held;
	while (my $c = $listen->accept)
	{
		my $head = '';
		while (defined(my $line = <$c>))
		{
			$head .= $line;
			last if $line =~ /^\r?\n$/;
		}
		my ($method, $path) = $head =~ /^(\S+)\s+(\S+)/;
		open my $fh, '>>', $seen_file or POSIX::_exit(1);
		print $fh ($method // '?') . ' ' . ($path // '?') . "\n";
		close $fh;
		push @held, $c;    # held open, never answered
	}
	POSIX::_exit(0);
}
close $listen;

END
{
	my $status = $?;
	if ($silent_pid)
	{
		kill 'TERM', $silent_pid;
		waitpid($silent_pid, 0);
	}
	$? = $status;
}

sub seen_requests
{
	return -e $seen_file ? slurp_file($seen_file) : '';
}

# ---------------------------------------------------------------------------
# A cluster whose logic stage is slow (2 ms per order) and fails order 10.
# ---------------------------------------------------------------------------
my $N = 5000;
my $node = courier_node(
	'alert_hang', logic_only => 1, conf => qq{
courier.alert_url = 'http://127.0.0.1:$silent_port/alerts'
courier.tms_timeout = '60s'
courier.max_attempts = 1
courier.batch_size = 50
courier.logic_min_workers = 1
courier.logic_max_workers = 3
courier.worker_idle_exit = '1s'
});

query($node, q{
CREATE FUNCTION public.slow_seller() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id = 10 THEN
		RAISE EXCEPTION 'seller closed the order';
	END IF;
	PERFORM pg_sleep(0.002);
	RETURN NEW;
END $$;
CREATE TRIGGER slow_seller BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.slow_seller();
});
is(register_orders($node, 1, $N + 10), $N + 10, 'register_orders registers ' . ($N + 10) . ' orders');

my $req1 = delay_orders($node, 1, 10, 10);
ok( poll_until(
		$node, "SELECT total, done, failed, pending FROM courier.request_status($req1)",
		'10|9|1|0', 60),
	'order 10 fails (max_attempts = 1), the 9 others are applied');
is(query($node, 'SELECT courier.failure_digest()'), '1',
	'failure_digest() raises an alert for the new failure');

ok(wait_for(sub { seen_requests() =~ m{^POST /alerts$}m }, 30,
		'the silent endpoint got the alert POST'),
	'the launcher POSTs the alert and the endpoint holds it unanswered');
is(query($node, 'SELECT post_attempts, posted_at IS NULL FROM courier.alerts'), '0|t',
	'the POST has no outcome yet (no attempt recorded)');

# ---------------------------------------------------------------------------
# While the alert hangs: the pool grows, then shrinks.
# ---------------------------------------------------------------------------
is(logic_workers($node), '1', 'one logic worker runs before the bulk delay');
my $t0 = time();
my $req2 = delay_orders($node, 11, $N + 10, 10);
my $max_workers = 1;
ok( wait_for(
		sub {
			my $n = logic_workers($node);
			$max_workers = $n if $n > $max_workers;
			return $n >= 2;
		},
		30, 'a second logic worker'),
	'the launcher starts more logic workers for the backlog while the alert POST hangs');
note(sprintf('a second logic worker ran %.1f s after the bulk delay', time() - $t0));

ok( poll_until(
		$node, "SELECT total, done, failed, pending FROM courier.request_status($req2)",
		"$N|$N|0|0", 60),
	"the $N orders of the bulk delay are applied");
ok( wait_for(
		sub {
			my $n = logic_workers($node);
			$max_workers = $n if $n > $max_workers;
			return $n == 1;
		},
		30, 'the logic pool back at 1 worker'),
	'once idle, the extra logic workers retire: the pool is back at 1');
note("the logic pool peaked at $max_workers workers");
cmp_ok($max_workers, '>=', 2, 'the pool grew to 2 or more workers');

is(query($node, 'SELECT post_attempts, posted_at IS NULL FROM courier.alerts'), '0|t',
	'all that time the alert POST was still unanswered (no outcome recorded)');
is(scalar(() = seen_requests() =~ /^POST /mg), 1,
	'the endpoint got exactly one POST (the one it holds)');
cmp_ok(time() - $t0, '<', 55,
	'all of this happened well within the 60 s the POST may take');

# ---------------------------------------------------------------------------
# A fast stop while the POST hangs.
# ---------------------------------------------------------------------------
my $started = time();
my $stopped;
{
	local $ENV{PGCTLTIMEOUT} = 90;
	$stopped = $node->stop('fast', fail_ok => 1);
}
my $took = time() - $started;
note(sprintf('pg_ctl stop -m fast took %.1f s', $took));
ok($stopped, 'pg_ctl stop -m fast succeeds while the alert POST hangs');
cmp_ok($took, '<', 20, 'the fast stop finishes in under 20 s (not after the 60 s POST timeout)');
$node->stop('immediate', fail_ok => 1) unless $stopped;

done_testing();
