
# 070_fanout_subscribers.pl
#	Order events to two subscribers and the customer notices to the TMS, at
#	once (issue 12):
#	  - subscriber "a" (every type, mock A) and "b" (order.delayed and
#	    order.invoiced, batches of 50, its own mock B) are subscribed with
#	    secrets; mock B is stopped, so b's POSTs are refused;
#	  - a bulk delay of N orders, invoices for some of them and a second
#	    delay of others make 1 to 3 events per order; a and the TMS receive
#	    everything while b is down, and for 30 s b's events stay queued,
#	    none charged an attempt, none failed;
#	  - mock B comes back on the same port: b receives every event of its
#	    types exactly once per id, and per order in the order they
#	    happened; every signature verifies;
#	  - replay from a timestamp re-delivers with the same ids (the receiver
#	    sees them as duplicates), pause holds deliveries and resume
#	    releases them, a wrong secret at the receiver is detected;
#	  - a subscriber that refuses an event (HTTP 400) fails it into
#	    courier.failures (stage fanout, its subscriber), the order's later
#	    event waits behind it, and retry_failures(subscriber => ...)
#	    delivers both, in order;
#	  - kill -9 of b's worker while its POST hangs loses nothing.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 2000;
my $SECRET_A = 'a-secret-of-sixteen-chars';
my $SECRET_B = 'b-secret-of-sixteen-chars';

my $mock_a = start_mock('--hook-secret', "a=$SECRET_A");
my $mock_b = start_mock('--hook-secret', "b=$SECRET_B");
my $port_b = $mock_b->{port};
my $node = tms_node(
	'fanout', $mock_a, conf => q{
courier.tms_breaker_cooldown = '500ms'
courier.idle_wakeup = '1s'
restart_after_crash = on
});

sub hooks { return mock_hooks(@_); }

# db_events(TYPES): "id" lines of the events of those types, ordered.
sub db_events
{
	my ($types) = @_;
	return query($node,
		"SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM courier.events"
		  . " WHERE type = ANY ($types)");
}

# in_order(RECORDS): true when, per order, the ids of the order.* events
# arrive increasing.  Their writers (the logic stage, register_invoice, the
# sweep) update the order's row, so they commit in the order of their ids.
# A notice's outcome is recorded without that lock, concurrently with the
# app's invoice of the same order: whichever commits first is sent first,
# whatever the ids (docs/fanout.md); notice_after_delay checks what does
# hold for them.
sub in_order
{
	my ($records) = @_;
	my %last;
	for my $r (@$records)
	{
		next if $r->{dup} || $r->{type} !~ /^order\./;
		if (exists $last{ $r->{order_id} } && $last{ $r->{order_id} }->{id} > $r->{id})
		{
			diag("order $r->{order_id}: $r->{type} $r->{id} arrived after "
				  . "$last{ $r->{order_id} }->{type} $last{ $r->{order_id} }->{id}");
			return 0;
		}
		$last{ $r->{order_id} } = $r;
	}
	return 1;
}

# notice_after_delay(RECORDS): every notice.* event of an order arrives
# after that order's first order.delayed (its notice exists only once the
# delay committed).
sub notice_after_delay
{
	my ($records) = @_;
	my %delayed;
	for my $r (@$records)
	{
		$delayed{ $r->{order_id} } = 1 if $r->{type} eq 'order.delayed';
		if ($r->{type} =~ /^notice\./ && !$delayed{ $r->{order_id} })
		{
			diag("order $r->{order_id}: $r->{type} $r->{id} arrived before its order.delayed");
			return 0;
		}
	}
	return 1;
}

# ids_once(RECORDS): the ids received, sorted, joined; and how many came twice.
sub ids_once
{
	my ($records) = @_;
	my %seen;
	$seen{ $_->{id} }++ for @$records;
	return (join(',', sort { $a <=> $b } keys %seen),
		scalar grep { $_ > 1 } values %seen);
}

# ---------------------------------------------------------------------------
# Subscribers, and b's receiver down
# ---------------------------------------------------------------------------
is(query($node, qq{
	SELECT courier.subscribe('a', '$mock_a->{base}/hooks/a',
		courier.event_types(), secret => '$SECRET_A') > 0}),
	't', 'subscriber a subscribes to every event type');
is(query($node, qq{
	SELECT courier.subscribe('b', 'http://127.0.0.1:$port_b/hooks/b',
		ARRAY['order.delayed', 'order.invoiced'], batch_size => 50,
		secret => '$SECRET_B') > 0}),
	't', 'subscriber b subscribes to order.delayed and order.invoiced');
stop_mock($mock_b);

is(register_tms_orders($node, 1, $N), $N, "$N orders registered");
my $t0 = query($node, 'SELECT now()');
delay_tms($node, 1, $N, 5, 'rain');
ok(poll_until($node, "SELECT count(*) FROM courier.events WHERE type = 'order.delayed'",
		"$N", 60),
	"the logic stage records $N order.delayed events");
# a second event for orders 1..200 (invoiced) and a third for 1..100
query($node, "SELECT courier.register_invoice(g, 'INV-' || g) FROM generate_series(1, 200) g");
delay_tms($node, 201, 300, 6, 'truck');
ok(poll_until($node, "SELECT count(*) FROM courier.events WHERE type LIKE 'order.%'",
		$N + 300, 60),
	'invoices and the second delay add 300 order events');

ok(poll_until($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'", '0', 120),
	'the TMS receives every notice while b is down');
is(query($node, "SELECT count(*) FROM courier.events WHERE type = 'notice.delivered'"),
	query($node, "SELECT count(*) FROM courier.notices WHERE status = 'delivered'"),
	'each delivered notice is a notice.delivered event (a asks for every type)');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'a'", '0', 120),
	'a receives every event while b is down');
my $a_records = hooks($mock_a, 'a');
my ($a_ids, $a_twice) = ids_once($a_records);
is($a_ids, db_events("courier.event_types()"), 'a received exactly the events of its types');
is($a_twice, 0, 'a received no event twice');
ok(in_order($a_records), "a received each order's order.* events in order");
ok(notice_after_delay($a_records), "a received each notice event after its order's delay");
is(scalar(grep { $_->{signature} ne 'ok' } @$a_records), 0, "every POST to a carries a valid signature");

ok( stays_true(
		sub {
			query($node, "SELECT backlog = $N + 200 + 100 AND failed = 0"
				  . " FROM courier.subscribers WHERE name = 'b'") eq 't'
			  && query($node, "SELECT count(*) FROM courier.deliveries d"
				  . " JOIN courier.subscriptions s USING (subscriber_id)"
				  . " WHERE s.name = 'b' AND d.attempts > 0") eq '0';
		},
		30,
		"b's events stay queued, uncharged, unfailed"),
	"for 30 s with b refusing connections, b's 2,300 events stay queued: none charged an attempt, none failed");
is(query($node, "SELECT count(*) FROM courier.failures WHERE stage = 'fanout'"), '0',
	'no delivery failed while b was down');

# ---------------------------------------------------------------------------
# b comes back
# ---------------------------------------------------------------------------
$mock_b = start_mock('--port', $port_b, '--hook-secret', "b=$SECRET_B");
is($mock_b->{port}, $port_b, "b's receiver is back on port $port_b");
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'b'", '0', 120),
	'b drains its queue after it comes back');
my $b_records = hooks($mock_b, 'b');
my ($b_ids, $b_twice) = ids_once($b_records);
is($b_ids, db_events("ARRAY['order.delayed', 'order.invoiced']"),
	'b received exactly the events of its two types');
is($b_twice, 0, 'b received every event exactly once');
ok(in_order($b_records), "b received each order's events in the order they happened");
is(scalar(grep { $_->{signature} ne 'ok' } @$b_records), 0, 'every POST to b carries a valid signature');
ok(scalar(grep { $_->{order_id} == 250 } @$b_records) == 2,
	'order 250 (delayed twice) reached b as two events');

# ---------------------------------------------------------------------------
# Replay, pause/resume, a wrong secret
# ---------------------------------------------------------------------------
my $replayed = query($node, "SELECT courier.replay('b', '$t0')");
is($replayed, $N + 300, 'replay queues every event of b since the start again');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'b'", '0', 120),
	'the replay is delivered');
$b_records = hooks($mock_b, 'b');
my @again = grep { $_->{dup} } @$b_records;
is(scalar(@again), $N + 300, 'the receiver sees every replayed event again, with the same id');
($b_ids) = ids_once($b_records);
is($b_ids, db_events("ARRAY['order.delayed', 'order.invoiced']"),
	'the replay brought no id the receiver did not know');

query($node, "SELECT courier.pause_subscriber('b')");
ok(poll_until($node, "SELECT worker_pid IS NULL FROM courier.subscribers WHERE name = 'b'",
		't', 30),
	"pausing b stops its worker");
my $before = scalar @{ hooks($mock_b, 'b') };
delay_tms($node, 1001, 1100, 7, 'flood');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'a'", '0', 60),
	'a gets the new events while b is paused');
ok( stays_true(sub { scalar @{ hooks($mock_b, 'b') } == $before }, 3,
		'b receives nothing while paused'),
	'b receives nothing while paused');
is(query($node, "SELECT backlog FROM courier.subscribers WHERE name = 'b'"), '100',
	"b's 100 new events wait in its queue");
query($node, "SELECT courier.resume_subscriber('b')");
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'b'", '0', 60),
	'resume delivers what waited');

mock_control($mock_a, hook_secrets => { a => 'not-the-secret-at-all' });
delay_tms($node, 1101, 1110, 7, 'flood');
ok(wait_for(sub { grep { $_->{signature} eq 'bad' } @{ hooks($mock_a, 'a') } }, 60,
		'a bad signature'),
	'a receiver with another secret detects the signature as wrong');

# ---------------------------------------------------------------------------
# A refused event fails into the DBA console and holds its order
# ---------------------------------------------------------------------------
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'b'", '0', 60),
	"b's queue is empty before it starts refusing");
mock_control($mock_b, hook_status => { b => 400 });
delay_tms($node, 1500, 1500, 9, 'late truck');
ok(poll_until($node, "SELECT count(*) FROM courier.failures WHERE stage = 'fanout'"
		  . " AND subscriber_id = courier.subscriber_id('b') AND discarded_at IS NULL",
		'1', 60),
	'an event b refuses (HTTP 400) fails at once into courier.failures, stage fanout, with its subscriber');
mock_control($mock_b, hook_status => {});
query($node, "SELECT courier.register_invoice(1500, 'INV-1500')");
ok(poll_until($node, "SELECT count(*) FROM courier.deliveries d"
		  . " WHERE d.subscriber_id = courier.subscriber_id('b') AND d.order_id = 1500",
		'2', 60),
	"the order's next event queues behind the failed one");
my $held = query($node, "SELECT max(event_id) FROM courier.events WHERE order_id = 1500");
ok( stays_true(sub { !grep { $_->{id} == $held } @{ hooks($mock_b, 'b') } }, 3,
		'the later event of order 1500 does not overtake'),
	'for 3 s, the later event of order 1500 is not sent while the earlier one is failed');
is(query($node, "SELECT courier.retry_failures(subscriber => 'b')"), '1',
	"retry_failures(subscriber => 'b') puts the failed event back");
ok(poll_until($node, "SELECT count(*) FROM courier.deliveries WHERE order_id = 1500", '0', 60),
	"both events of order 1500 are delivered");
my @o1500 = map { $_->{id} } grep { $_->{order_id} == 1500 && !$_->{dup} } @{ hooks($mock_b, 'b') };
is_deeply(\@o1500, [ sort { $a <=> $b } @o1500 ], "order 1500's events reached b in order");

# ---------------------------------------------------------------------------
# kill -9 of b's worker while its POST hangs
# ---------------------------------------------------------------------------
mock_control($mock_b, latency_ms => 3000);
delay_tms($node, 1200, 1399, 10, 'storm');
my $pid;
ok( wait_for(
		sub {
			$pid = query($node, "SELECT pid FROM pg_stat_activity"
				  . " WHERE backend_type = 'courier subscriber worker'"
				  . " AND query = 'subscriber: posting events'"
				  . " AND application_name = 'courier subscriber worker'"
				  . " AND pid = (SELECT worker_pid FROM courier.subscribers WHERE name = 'b')");
			$pid ne '';
		},
		60, "b's worker posting"),
	"b's worker is posting (the receiver answers after 3 s)");
kill 'KILL', $pid;
$node->poll_query_until('postgres', 'SELECT 1', '1');
mock_control($mock_b, latency_ms => 0);
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'b'", '0', 180),
	'after kill -9 and the restart, b drains its queue');
$b_records = hooks($mock_b, 'b');
($b_ids) = ids_once($b_records);
is($b_ids, db_events("ARRAY['order.delayed', 'order.invoiced']"),
	'b received every event of its types (none lost by the kill)');
ok(in_order($b_records), "and each order's events in order");

done_testing();
