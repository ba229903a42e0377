
# 032_failure_digest_alerts.pl
#	courier.failure_digest() raises one alert for the failures that are
#	new since the last digest:
#	- it returns their number, stores the alert in courier.alerts and
#	  sends it with NOTIFY courier_alerts (a JSON payload with the count,
#	  the count per stage and the top errors);
#	- called again with no new failure it returns 0 and raises nothing;
#	  the next failures make the next alert, counted from where the last
#	  digest stopped;
#	- with courier.alert_url set (ALTER SYSTEM + reload) the launcher POSTs
#	  every alert not yet posted, as JSON, and records posted_at; a POST
#	  that fails is recorded (post_attempts, post_error) and tried again,
#	  and an alert that was posted is not posted again.
#
# The alert receiver is a tiny HTTP server forked by this test: the mock
# TMS answers 400 to any body without "messages", so it cannot stand in
# for an alert endpoint.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms qw(wait_for stays_true);
use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Utils;
use Test::More;

# ---------------------------------------------------------------------------
# The alert receiver: answers 200 {} to every request and appends one JSON
# line per request (method, path, content_type, body) to a file.
# ---------------------------------------------------------------------------
my $received_file = PostgreSQL::Test::Utils::tempdir() . '/alerts.jsonl';
my $listen = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Proto => 'tcp',
	Listen => 16,
	ReuseAddr => 1) or die "cannot listen: $!";
my $receiver_port = $listen->sockport;
my $receiver_pid = fork();
die "fork: $!" unless defined $receiver_pid;
if ($receiver_pid == 0)
{
	$SIG{TERM} = sub { POSIX::_exit(0) };
	$SIG{PIPE} = 'IGNORE';
	while (my $c = $listen->accept)
	{
		my ($head, $body) = ('', '');
		while (defined(my $line = <$c>))
		{
			$head .= $line;
			last if $line =~ /^\r?\n$/;
		}
		print $c "HTTP/1.1 100 Continue\r\n\r\n"
		  if $head =~ /^Expect:\s*100-continue/mi;
		my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
		read($c, $body, $len) if $len;
		my ($method, $path) = $head =~ /^(\S+)\s+(\S+)/;
		my ($ctype) = $head =~ /^Content-Type:\s*([^\r\n]*)/mi;
		open my $fh, '>>', $received_file or POSIX::_exit(1);
		print $fh encode_json({ method => $method, path => $path,
				content_type => $ctype // '', body => $body }) . "\n";
		close $fh;
		print $c "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
		  . "Content-Length: 2\r\nConnection: close\r\n\r\n{}";
		close $c;
	}
	POSIX::_exit(0);
}
close $listen;

END
{
	my $status = $?;
	if ($receiver_pid)
	{
		kill 'TERM', $receiver_pid;
		waitpid($receiver_pid, 0);
	}
	$? = $status;
}

# received(): the requests the receiver has seen, as hash refs.
sub received
{
	return [] unless -e $received_file;
	return [ map { decode_json($_) } grep { /\n$/ } split /(?<=\n)/,
		slurp_file($received_file) ];
}

# ---------------------------------------------------------------------------
# A cluster whose logic stage fails some orders at the first attempt.
# ---------------------------------------------------------------------------
my $node = courier_node(
	'digest', conf => q{
courier.max_attempts = 1
courier.retry_base = '20ms'
courier.tms_mode = 'dry_run'
});

query($node, q{
CREATE FUNCTION public.seller_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id % 10 = 0 THEN
		RAISE EXCEPTION 'seller closed the order';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER seller_closed BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.seller_closed();
});

# A session listening on the channel; notifications show up in its output
# when it runs a statement.
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN courier_alerts');
my @notified;

# notifications(N): poll the listener until it has seen N notifications on
# courier_alerts in all; returns whether it did.  The payloads are decoded
# into @notified, in arrival order.
sub notifications
{
	my ($n) = @_;
	return wait_for(
		sub {
			my $out = $listener->query_safe('SELECT 1');
			push @notified, map { decode_json($_) }
			  $out =~ /^Asynchronous notification "courier_alerts" with payload "(.*)" received from server process with PID \d+\.$/mg;
			return @notified >= $n;
		},
		30, "$n notifications on courier_alerts");
}

is(register_orders($node, 1, 100), 100, 'register_orders registers 100 orders');
my $req = delay_orders($node, 1, 100, 10);
ok( poll_until(
		$node, "SELECT total, done, failed, pending FROM courier.request_status($req)",
		'100|90|10|0', 60),
	'the 10 orders the trigger rejects fail at their first attempt, the 90 others are applied');

# ---------------------------------------------------------------------------
# The digest: count, alert row, NOTIFY.
# ---------------------------------------------------------------------------
is(query($node, 'SELECT courier.failure_digest()'), '10',
	'failure_digest() returns the 10 new failures');
is(query($node, q{SELECT count(*) || '|' || min(kind) FROM courier.alerts}),
	'1|new_failures', 'it stored one new_failures alert');
ok(notifications(1), 'the listener got a notification on courier_alerts');
is($notified[0]{alert}, 'new_failures', 'the payload names the alert new_failures');
is($notified[0]{count}, 10, 'the payload counts the 10 failures');
is_deeply($notified[0]{by_stage}, { logic => 10 }, 'the payload counts them per stage');
like($notified[0]{top_errors}[0]{error}, qr/seller closed the order/,
	"the payload's top error is the trigger's message");
is($notified[0]{top_errors}[0]{count}, 10, '... counted 10 times');
is_deeply(
	decode_json(query($node, 'SELECT payload FROM courier.alerts')),
	$notified[0], 'the stored alert has the payload that was notified');

is(query($node, 'SELECT courier.failure_digest()'), '0',
	'a second digest with no new failure returns 0');
is(query($node, 'SELECT count(*) FROM courier.alerts'), '1', 'and stores no alert');

# Five more failures: the next digest counts only those.  Notifications
# arrive in commit order, so if the empty digest had notified, its
# notification would come before this one.
my $req2 = delay_orders($node, 1, 50, 11);
ok( poll_until(
		$node, "SELECT total, done, failed, pending FROM courier.request_status($req2)",
		'50|45|5|0', 60),
	'a second request fails 5 more orders');
is(query($node, 'SELECT courier.failure_digest()'), '5',
	'the next digest returns only the 5 new failures');
ok(notifications(2), 'the listener got a second notification');
is(scalar(@notified), 2, 'exactly two notifications: the empty digest sent none');
is($notified[1]{count}, 5, 'the second notification counts 5 failures');
is($notified[1]{since_failure_id},
	query($node, "SELECT max(failure_id) FROM courier.failures WHERE request_id = $req"),
	'the second digest starts where the first stopped');
$listener->quit;

# ---------------------------------------------------------------------------
# POSTing the alerts.
# ---------------------------------------------------------------------------
is(query($node, 'SELECT count(*) FROM courier.alerts WHERE posted_at IS NULL'), '2',
	'without courier.alert_url no alert is posted');

# A port nobody listens on: the POSTs fail, are recorded, and are retried.
my $probe = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
	Proto => 'tcp', Listen => 1) or die "cannot listen: $!";
my $dead_port = $probe->sockport;
close $probe;
query($node, "ALTER SYSTEM SET courier.alert_url = 'http://127.0.0.1:$dead_port/alerts'");
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node, q{
		SELECT bool_and(post_attempts >= 1 AND posted_at IS NULL AND post_error IS NOT NULL)
		  FROM courier.alerts},
		't', 30),
	'with an alert URL nobody answers, each failed POST is recorded and the alert stays unposted');
like(query($node, 'SELECT min(post_error) FROM courier.alerts'), qr/connect/i,
	'post_error says the receiver could not be reached');

query($node, "ALTER SYSTEM SET courier.alert_url = 'http://127.0.0.1:$receiver_port/alerts'");
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node,
		'SELECT count(*) FILTER (WHERE posted_at IS NOT NULL AND post_error IS NULL)'
		  . ' FROM courier.alerts',
		'2', 30),
	'once the receiver answers, the launcher posts both alerts (posted_at set, error cleared)');
ok(wait_for(sub { @{ received() } >= 2 }, 10, 'the receiver sees 2 requests'),
	'the receiver got the POSTs');
ok( stays_true(sub { @{ received() } == 2 }, 2, 'the receiver saw exactly 2 requests'),
	'each alert is posted once: no further POST after posted_at is set');

my $got = received();
is(join(',', map { "$_->{method} $_->{path}" } @$got), 'POST /alerts,POST /alerts',
	'two POSTs to the path of courier.alert_url');
like($got->[0]{content_type}, qr{^application/json}, 'sent as application/json');
is_deeply([ map { decode_json($_->{body})->{count} } @$got ], [ 10, 5 ],
	'the bodies are the alerts in order, with the right counts (10, then 5)');
is_deeply(decode_json($got->[0]{body}), $notified[0],
	'the posted body is the payload that was notified');

$node->stop;
done_testing();
