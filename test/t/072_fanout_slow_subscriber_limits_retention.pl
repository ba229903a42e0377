
# 072_fanout_slow_subscriber_limits_retention.pl
#	What a subscriber's own limits do, and what the fan-out leaves behind
#	(issue 12):
#	  - a slow subscriber (its receiver answers after 4 s) delays neither
#	    the customer notices nor another subscriber: while its first POST
#	    hangs, the TMS and the fast subscriber receive everything;
#	  - rate_limit: a subscriber limited to 10 POSTs a second, one event a
#	    POST, takes at least 2.5 s for 30 events (a lower bound: a slow
#	    machine only makes it longer), and the POSTs carry the events'
#	    ids as their idempotency keys (one event each);
#	  - courier.metrics() reports each subscriber's backlog and delivered
#	    events;
#	  - order.overdue: sweep_overdue records one per order it marks;
#	  - retention: courier.prune deletes the events no subscriber waits
#	    for, and keeps the one a queued delivery still holds;
#	  - a subscriber's worker idle for courier.worker_idle_exit leaves, and
#	    the launcher starts one again when events come.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(time);
use Test::More;

my $mock = start_mock();
my $slow_mock = start_mock();
my $node = tms_node('fanout_limits', $mock, conf => q{
courier.idle_wakeup = '1s'
courier.worker_idle_exit = '3s'
});

query($node, "SELECT courier.subscribe('fast', '$mock->{base}/hooks/fast', ARRAY['order.delayed'])");
query($node, "SELECT courier.subscribe('slow', '$slow_mock->{base}/hooks/slow',"
	  . " ARRAY['order.delayed'], timeout => '30 s')");
mock_control($slow_mock, latency_ms => 4000);

# ---------------------------------------------------------------------------
# A slow subscriber holds up no one else
# ---------------------------------------------------------------------------
is(register_tms_orders($node, 1, 1000), 1000, '1,000 orders');
delay_tms($node, 1, 1000, 5);
ok(poll_until($node, "SELECT count(*) FROM courier.notices WHERE status = 'delivered'",
		'1000', 60),
	'the TMS receives every notice');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'fast'", '0', 60),
	'the fast subscriber receives every event');
my $slow_so_far = scalar @{ mock_hooks($slow_mock, 'slow') };
ok($slow_so_far < 1000,
	"meanwhile the slow subscriber (4 s an answer, 4 POSTs of 100 at once) had $slow_so_far of 1,000");
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'slow'", '0', 120),
	'the slow subscriber gets everything in the end');
is(scalar @{ mock_hooks($slow_mock, 'slow') }, 1000, 'all 1,000 events, once each');

# ---------------------------------------------------------------------------
# rate_limit, and the idempotency key
# ---------------------------------------------------------------------------
query($node, "SELECT courier.subscribe('limited', '$mock->{base}/hooks/limited',"
	  . " ARRAY['order.delayed'], batch_size => 1, rate_limit => 10)");
my $t0 = time();
delay_tms($node, 1, 30, 6);
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'limited'", '0', 60),
	'the limited subscriber receives the 30 events');
my $elapsed = time() - $t0;
ok($elapsed >= 2.5,
	sprintf('at 10 POSTs a second, one event each, 30 events took %.1f s (at least 2.5 s)', $elapsed));
my $limited = mock_hooks($mock, 'limited');
my %requests = map { $_->{request} => 1 } @$limited;
is(scalar(keys %requests), 30, 'one POST per event (batch_size 1)');

# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
ok(poll_until($node, "SELECT backlog FROM courier.queue_stats WHERE stage = 'fanout'", '0', 60),
	'every subscriber, the slow one too, has received the 30 events');
my $metrics = query($node, 'SELECT courier.metrics()');
like($metrics, qr/^courier_subscriber_backlog\{subscriber="limited"\} 0$/m,
	'metrics: the limited subscriber\'s backlog is 0');
like($metrics, qr/^courier_subscriber_events_total\{subscriber="limited",result="delivered"\} 30$/m,
	'metrics: it has 30 events delivered');
like($metrics, qr/^courier_subscriber_breaker_open\{subscriber="slow"\} 0$/m,
	'metrics: the slow subscriber\'s breaker is closed');
like($metrics, qr/^courier_queue_backlog\{stage="fanout"\} 0$/m,
	'metrics: the fanout stage\'s backlog is 0');

# ---------------------------------------------------------------------------
# order.overdue
# ---------------------------------------------------------------------------
query($node, "SELECT courier.subscribe('cs', '$mock->{base}/hooks/cs', ARRAY['order.overdue'])");
is(query($node, 'SELECT courier.request_shipping(ARRAY(SELECT generate_series(901, 910)::bigint))'),
	'10', 'orders 901-910 are requested to ship');
query($node, q{UPDATE courier.orders SET invoice_deadline = now() - interval '1 hour'
				WHERE order_id BETWEEN 901 AND 910});
is(query($node, 'SELECT courier.sweep_overdue()'), '10', 'the sweep marks 10 overdue orders');
is(query($node, q{SELECT count(*) || '|' || count(DISTINCT order_id) || '|' || min(order_id)
				  || '|' || max(order_id) FROM courier.events WHERE type = 'order.overdue'
				  AND payload ? 'invoice_deadline'}),
	'10|10|901|910', 'one order.overdue event per order, with its deadline');
is(query($node, 'SELECT courier.sweep_overdue()'), '0', 'a second sweep marks nothing');
is(query($node, q{SELECT count(*) FROM courier.events WHERE type = 'order.overdue'}), '10',
	'and records no event');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'cs'", '0', 60),
	'cs receives them');

# ---------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------
ok(poll_until($node, "SELECT (SELECT count(*) FROM courier.work_items)"
		  . " + (SELECT backlog FROM courier.subscribers WHERE name = 'fast')", '0', 60),
	"the sweep's delays are applied and the fast subscriber has them");
query($node, "SELECT courier.pause_subscriber('fast')");
delay_tms($node, 1, 1, 9);
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'fast'", '1', 60),
	'one event waits for the paused subscriber');
ok(poll_until($node, "SELECT count(*) FROM courier.deliveries d JOIN courier.subscriptions s"
		  . " USING (subscriber_id) WHERE s.name <> 'fast'", '0', 60),
	'the others have received everything');
my $waiting = query($node, "SELECT event_id FROM courier.deliveries");
query($node, "CALL courier.prune(retention => '0 seconds')");
is(query($node, 'SELECT string_agg(event_id::text, \',\') FROM courier.events'), $waiting,
	'prune deletes every event no subscriber waits for, and keeps the one still queued');

# ---------------------------------------------------------------------------
# Idle workers retire; events bring one back
# ---------------------------------------------------------------------------
my $limited_worker = "SELECT count(*) FROM pg_stat_activity a"
  . " WHERE a.backend_type = 'courier subscriber worker'"
  . " AND a.pid = (SELECT worker_pid FROM courier.subscribers WHERE name = 'limited')";
ok(poll_until($node, "SELECT worker_pid IS NULL FROM courier.subscribers WHERE name = 'limited'",
		't', 60),
	"the limited subscriber's worker retires after 3 s with nothing due");
my $before = scalar @{ mock_hooks($mock, 'limited') };
delay_tms($node, 2, 2, 12);
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'limited'", '0', 60),
	'a new event brings a worker back, which delivers it');
is(scalar @{ mock_hooks($mock, 'limited') }, $before + 1, 'the limited subscriber has it');

$node->stop;
done_testing();
