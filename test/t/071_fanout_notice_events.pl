
# 071_fanout_notice_events.pl
#	notice.delivered and notice.failed (issue 12), in the transaction that
#	ends the notice, once per notice:
#	  - without a subscription for them, courier.notices has no trigger;
#	    subscribing to a notice.* type creates it, unsubscribing the last
#	    such subscriber drops it;
#	  - a bulk delay of 600 orders whose notices go out through the generic
#	    dialect, 60 of them to numbers the TMS refuses: 540
#	    notice.delivered and 60 notice.failed events, one per notice,
#	    matching the notices' final status, each received once by the
#	    subscriber "cs";
#	  - through NHN AlimTalk, which reports delivery receipts: a notice is
#	    notice.delivered only once its receipt says so, not when accepted.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_mock();
my $node = tms_node('notice_events', $mock, conf => q{
courier.idle_wakeup = '1s'
});
my $trigger = "SELECT count(*) FROM pg_trigger"
  . " WHERE tgrelid = 'courier.notices'::regclass AND tgname = 'notices_events'";

is(query($node, $trigger), '0', 'without a notice subscriber, courier.notices has no trigger');
query($node, "SELECT courier.subscribe('ops', '$mock->{base}/hooks/ops', ARRAY['order.delayed'])");
is(query($node, $trigger), '0', 'a subscriber of order.delayed alone adds none');
query($node, "SELECT courier.subscribe('cs', '$mock->{base}/hooks/cs',"
	  . " ARRAY['notice.delivered', 'notice.failed'])");
is(query($node, $trigger), '1', 'subscribing to notice.* creates it');

mock_control($mock, reject_prefix => '0109');
is(register_tms_orders($node, 1, 600,
		phone_sql => q{CASE WHEN g % 10 = 0 THEN '0109' ELSE '0101' END || lpad(g::text, 7, '0')}),
	600, '600 orders, every tenth to a number the TMS refuses');
delay_tms($node, 1, 600, 5);
ok(poll_until($node, "SELECT count(*) FROM courier.notices WHERE status IN ('delivered', 'failed')",
		'600', 120),
	'all 600 notices end');
is(query($node, q{
	SELECT string_agg(type || ':' || n, ',' ORDER BY type)
	  FROM (SELECT type, count(*) AS n FROM courier.events
			 WHERE type LIKE 'notice.%' GROUP BY type) t}),
	'notice.delivered:540,notice.failed:60',
	'540 notice.delivered and 60 notice.failed events');
is(query($node, q{
	SELECT count(*) FROM courier.notices n
	  JOIN courier.events e ON e.order_id = n.order_id AND e.type LIKE 'notice.%'
	 WHERE e.type <> 'notice.' || n.status
		OR (e.payload ->> 'ship_date')::date <> n.ship_date}),
	'0', "each event's type is its notice's final status, for that ship date");
is(query($node, q{
	SELECT count(*) FROM (SELECT order_id FROM courier.events WHERE type LIKE 'notice.%'
						   GROUP BY order_id HAVING count(*) > 1) d}),
	'0', 'one event per notice');
is(query($node, q{
	SELECT count(*) FROM courier.events WHERE type = 'notice.failed'
	   AND payload -> 'last_error' ->> 'error' IS NOT NULL}),
	'60', 'a notice.failed event carries the last error');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'cs'", '0', 60),
	'cs receives them all');
my $hooks = mock_hooks($mock, 'cs');
is(scalar(@$hooks), 600, 'cs received 600 events');
is(scalar(grep { $_->{dup} } @$hooks), 0, 'each once');
is(scalar(grep { $_->{type} eq 'order.delayed' } @{ mock_hooks($mock, 'ops') }), 600,
	'ops received the 600 order.delayed events, and no notice event');

query($node, "SELECT courier.unsubscribe('cs')");
is(query($node, $trigger), '0', 'unsubscribing the last notice subscriber drops the trigger');
delay_tms($node, 1, 50, 8);
ok(poll_until($node, "SELECT count(*) FROM courier.notices WHERE ship_date = current_date + 8"
		  . " AND status IN ('delivered', 'failed')", '50', 60),
	'50 more notices end');
is(query($node, "SELECT count(*) FROM courier.events WHERE type LIKE 'notice.%'"), '600',
	'and record no notice event');

$node->stop;

# ---------------------------------------------------------------------------
# Through a provider with receipts: delivered means on the handset
# ---------------------------------------------------------------------------
my $pmock = start_provider_mock();
my $pnode = tms_node('notice_events_nhn', $pmock,
	conf => provider_conf($pmock, 'nhn_alimtalk') . q{
courier.receipt_interval = '200ms'
courier.idle_wakeup = '1s'
});
query($pnode, "SELECT courier.subscribe('cs', '$pmock->{base}/hooks/cs',"
	  . " ARRAY['notice.delivered', 'notice.failed'])");
is(register_tms_orders($pnode, 1, 100), 100, '100 orders for NHN AlimTalk');
delay_tms($pnode, 1, 100, 5);
ok(poll_until($pnode, "SELECT count(*) FROM courier.notices WHERE receipt_status = 'delivered'",
		'100', 120),
	'their receipts say delivered');
is(query($pnode, q{
	SELECT count(*) || '|' || count(DISTINCT order_id) FROM courier.events
	 WHERE type = 'notice.delivered' AND payload ->> 'receipt' = 'delivered'}),
	'100|100', 'one notice.delivered per notice, recorded with its receipt');
is(query($pnode, "SELECT count(*) FROM courier.events WHERE type = 'notice.failed'"), '0',
	'and no notice.failed');

$pnode->stop;
done_testing();
