
# 073_trace_context_follows_a_request.pl
#	W3C trace context (issue 13): one bulk delay can be followed from the
#	app's log through courier to the TMS's and the subscribers' logs.
#	  (e) SET courier.traceparent to something that is no version-00
#	      traceparent fails at once, SQLSTATE 22023, saying the shape;
#	  (a) the app sets courier.traceparent (flags 03) and delays 200
#	      orders, bulk 10, with a subscriber of order.delayed and notice.*
#	      (batches of 10), 10 of the numbers refused by the TMS: every TMS
#	      request and every subscriber POST made for it carries that trace
#	      id and flags, each with a span id of its own; request_status
#	      shows the trace id; the notices, their events and the failures
#	      carry the traceparent; each event's body carries it too;
#	  (b) a request without the setting gets a trace courier started
#	      (valid, not all zero, not (a)'s), and its requests carry it; an
#	      order.invoiced made without the setting has no trace: its POST
#	      carries no header;
#	  (c) two requests of two traces applied in one logic batch and sent
#	      from one lease, bulk 10: no HTTP request mixes traces;
#	  (d) a notice and an event the mock answers 500 first are retried
#	      with the same trace id, a new span id each time;
#	  (f) every header the mock saw is lowercase hex,
#	      ^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$, and names the trace
#	      of every item the request carried;
#	  (g) through NHN AlimTalk, a provider with delivery receipts: the
#	      sends and the receipt queries made for a request both carry its
#	      trace id, each with a span id of its own.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $TP_A = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03';
my $TP_C1 = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
my $TP_C2 = '00-a3ce929d0e0e47364bf92f3577b34da6-7169203331b7ad6b-00';
my $TP_D = '00-5d2f1c7e9a8b4c3d2e1f0a9b8c7d6e5f-1a2b3c4d5e6f7a8b-01';
my $HEADER = qr/^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

my $mock = start_mock();
my $node = tms_node('trace_context', $mock, conf => q{
courier.tms_bulk_size = 10
courier.max_attempts = 50
courier.tms_breaker_cooldown = '300ms'
courier.idle_wakeup = '1s'
});

# traces(): the mock's log of requests and their traceparent headers
sub traces { return CourierTms::mock_request($mock, 'GET', '/_traces'); }

# trace_of(TRACEPARENT): its trace id and flags ("id-flags"), '' for none
sub trace_of
{
	my ($tp) = @_;
	return '' if !defined $tp || $tp eq '';
	return $tp =~ $HEADER ? "$1-$3" : "malformed($tp)";
}

# db_map(SQL): the first column of SQL's rows mapped to the second
sub db_map
{
	my ($sql) = @_;
	my %m;
	for my $row (split /\n/, query($node, $sql))
	{
		my ($k, $v) = split /\|/, $row, 2;
		$m{$k} = $v // '';
	}
	return \%m;
}

# notice_tps(), event_tps(): each notice's key, each event's id, mapped to
# its stored traceparent ('' for none)
sub notice_tps
{
	return db_map("SELECT 'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD'),"
		  . " coalesce(traceparent, '') FROM courier.notices");
}
sub event_tps
{
	return db_map("SELECT event_id, coalesce(traceparent, '') FROM courier.events");
}

# requests_for(TRACES, KIND, IDS): the logged requests of KIND (send or
# hook) that carried any of the ids IDS (a hash ref)
sub requests_for
{
	my ($log, $kind, $ids) = @_;
	return [ grep {
			$_->{kind} eq $kind && grep { $ids->{$_} } @{ $_->{ids} // [] }
		} @$log ];
}

# all_carry(REQUESTS, TRACEPARENT, WHAT): each request's header is of the
# trace TRACEPARENT (id and flags), with a span id of its own
sub all_carry
{
	my ($reqs, $tp, $what) = @_;
	my $want = trace_of($tp);
	my @wrong = grep { trace_of($_->{traceparent}) ne $want } @$reqs;
	my ($parent) = $tp =~ $HEADER ? ($2) : ('');
	my %span;
	for (@$reqs)
	{
		$span{$2}++ if defined $_->{traceparent} && $_->{traceparent} =~ $HEADER;
	}
	my @reused = grep { $span{$_} > 1 || $_ eq $parent } keys %span;
	diag("$what: " . scalar(@wrong) . " carry another trace, e.g. "
		  . ($wrong[0]{traceparent} // 'none')) if @wrong;
	diag("$what: span ids used twice or equal to the app's: @reused") if @reused;
	return @$reqs > 0 && !@wrong && !@reused;
}

# delay_traced(FIRST, LAST, DAYS, TRACEPARENT, EVERY): one delay_orders of
# the orders FIRST..LAST (every EVERY-th) with courier.traceparent set for
# its transaction; returns the request id
sub delay_traced
{
	my ($first, $last, $days, $tp, $every) = @_;
	$every //= 1;
	return query($node, qq{
		BEGIN;
		SET LOCAL courier.traceparent = '$tp';
		SELECT courier.delay_orders(
			array(SELECT g::bigint FROM generate_series($first, $last, $every) g),
			'rain', current_date + $days);
		COMMIT;});
}

# drained(DAYS, N): the N notices of today + DAYS ended, and the subscriber
# has every event
sub drained
{
	my ($days, $n, $label) = @_;
	ok(poll_until($node, "SELECT count(*) FROM courier.notices WHERE ship_date = current_date + $days"
			  . " AND status IN ('delivered', 'failed')", "$n", 120),
		"$label: its $n notices end");
	ok(poll_until($node, "SELECT backlog || '|' || failed FROM courier.subscribers WHERE name = 'tr'",
			'0|0', 60),
		"$label: the subscriber received every event");
}

# ---------------------------------------------------------------------------
# (e) a malformed traceparent is refused when it is set
# ---------------------------------------------------------------------------
for my $bad ('00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01',
	'00-00000000000000000000000000000000-00f067aa0ba902b7-01', 'traceparent')
{
	my ($out, $err) = CourierTest::try_psql($node, "\\set VERBOSITY verbose\nSET courier.traceparent = '$bad'");
	like($err,
		qr/ERROR:\s+22023: invalid value for parameter "courier\.traceparent": "\Q$bad\E".*DETAIL:\s+A traceparent is "00-<trace id>-<parent id>-<flags>": 32, 16 and 2 lowercase hex digits/s,
		"SET courier.traceparent = '$bad' fails with 22023 and the expected shape");
}

# ---------------------------------------------------------------------------
# (a) the app's trace, through bulk sends, fan-out and failures
# ---------------------------------------------------------------------------
query($node, "SELECT courier.subscribe('tr', '$mock->{base}/hooks/tr',"
	  . " ARRAY['order.delayed', 'order.invoiced', 'notice.delivered', 'notice.failed'], 10)");
mock_control($mock, reject_prefix => '0109');
is(register_tms_orders($node, 1, 600,
		phone_sql => q{CASE WHEN g <= 200 AND g % 20 = 0 THEN '0109' ELSE '0101' END
					   || lpad(g::text, 7, '0')}),
	600, '600 orders; 10 of the first 200 to numbers the TMS refuses');

my $req_a = delay_traced(1, 200, 5, $TP_A);
drained(5, 200, '(a)');
is(query($node, "SELECT trace_id FROM courier.request_status($req_a)"),
	substr($TP_A, 3, 32), '(a) request_status shows the app\'s trace id');
is(query($node, "SELECT traceparent FROM courier.requests WHERE request_id = $req_a"),
	$TP_A, '(a) the request keeps the traceparent as the app gave it');
is(query($node, "SELECT count(*) FILTER (WHERE traceparent = '$TP_A') || '|' || count(*)"
	  . " FROM courier.notices WHERE ship_date = current_date + 5"),
	'200|200', '(a) its 200 notices carry it');
is(query($node, qq{
	SELECT string_agg(type || ':' || n, ',' ORDER BY type)
	  FROM (SELECT e.type, count(*) AS n FROM courier.events e
			 WHERE e.traceparent = '$TP_A' GROUP BY e.type) t}),
	'notice.delivered:190,notice.failed:10,order.delayed:200',
	'(a) so do their 200 order.delayed, 190 notice.delivered and 10 notice.failed events');
is(query($node, "SELECT count(*) FROM courier.events e WHERE e.traceparent IS DISTINCT FROM '$TP_A'"),
	'0', '(a) and no other event');
is(query($node, "SELECT stage || ':' || count(*) FROM courier.failures"
	  . " WHERE traceparent = '$TP_A' GROUP BY stage"),
	'tms:10', '(a) the 10 refused notices failed, and their failures carry it');

my $log = traces();
my %keys_a = map { $_ => 1 } @{ notice_keys($node, 'ship_date = current_date + 5') };
my %events_a = map { $_ => 1 } split /\n/,
  query($node, "SELECT event_id FROM courier.events WHERE traceparent = '$TP_A'");
my $sends_a = requests_for($log, 'send', \%keys_a);
my $posts_a = requests_for($log, 'hook', \%events_a);
cmp_ok(scalar(@$sends_a), '>=', 20, '(a) the 200 notices went out in at least 20 requests of up to 10');
ok(all_carry($sends_a, $TP_A, '(a) TMS requests'),
	'(a) every TMS request carries the trace id and flags 03, each its own span id');
cmp_ok(scalar(@$posts_a), '>=', 40, '(a) the 400 events went out in at least 40 POSTs of up to 10');
ok(all_carry($posts_a, $TP_A, '(a) subscriber POSTs'),
	'(a) every subscriber POST carries the trace id and flags 03, each its own span id');
is(scalar(grep { my $p = $_; grep { ($_ // '') ne $TP_A } @{ $p->{event_traceparents} } } @$posts_a),
	0, '(a) every event in their bodies carries the traceparent');

# ---------------------------------------------------------------------------
# (b) without the setting, courier starts a trace per request
# ---------------------------------------------------------------------------
my $req_b = query($node, "SELECT courier.delay_orders(array(SELECT generate_series(201, 260)::bigint),"
	  . " 'rain', current_date + 6)");
my $req_b2 = query($node, "SELECT courier.delay_orders(ARRAY[261::bigint], 'rain', current_date + 6)");
drained(6, 61, '(b)');
my $tp_b = query($node, "SELECT traceparent FROM courier.requests WHERE request_id = $req_b");
like($tp_b, qr/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/, "(b) courier started a trace: $tp_b");
ok($tp_b !~ /^00-0{32}-/ && $tp_b !~ /-0{16}-01$/, '(b) its ids are not all zero');
isnt(substr($tp_b, 3, 32), substr($TP_A, 3, 32), '(b) it is not (a)\'s trace');
isnt(query($node, "SELECT traceparent FROM courier.requests WHERE request_id = $req_b2"), $tp_b,
	'(b) the next request gets a trace of its own');
is(query($node, "SELECT trace_id FROM courier.request_status($req_b)"), substr($tp_b, 3, 32),
	'(b) request_status shows it');
$log = traces();
my %keys_b = map { $_ => 1 }
  @{ notice_keys($node, "ship_date = current_date + 6 AND order_id <= 260") };
ok(all_carry(requests_for($log, 'send', \%keys_b), $tp_b, '(b) TMS requests'),
	'(b) its TMS requests carry that trace');

# an order.invoiced without the setting has no trace: a POST of its own, no header
is(query($node, "SELECT courier.register_invoice(201, 'INV-201')"), 'delivered',
	'(b) order 201 is invoiced');
my $invoiced = query($node, "SELECT event_id || '|' || coalesce(traceparent, 'none')"
	  . " FROM courier.events WHERE type = 'order.invoiced' AND order_id = 201");
my ($invoiced_id) = split /\|/, $invoiced;
like($invoiced, qr/\|none$/, '(b) its order.invoiced event has no trace');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'tr'", '0', 60),
	'(b) the subscriber receives it');
my $posts_inv = requests_for(traces(), 'hook', { $invoiced_id => 1 });
ok(@$posts_inv == 1 && !defined $posts_inv->[0]{traceparent}
	  && !grep({ defined } @{ $posts_inv->[0]{event_traceparents} }),
	'(b) the POST carrying it has no traceparent header, nor its event one');

# ---------------------------------------------------------------------------
# (c) two traces in one logic batch and one lease: no request mixes them
# ---------------------------------------------------------------------------
set_conf($node, pause_logic => 'on', pause_tms => 'on');
my $req_c1 = delay_traced(301, 399, 7, $TP_C1, 2);
my $req_c2 = delay_traced(302, 400, 7, $TP_C2, 2);
set_conf($node, pause_logic => 'off');
ok(poll_until($node, "SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 7 AND status = 'pending'", '100', 60),
	'(c) both requests\' 100 notices wait, interleaved by order');
set_conf($node, pause_tms => 'off');
drained(7, 100, '(c)');
$log = traces();
my %keys_c1 = map { $_ => 1 }
  @{ notice_keys($node, "ship_date = current_date + 7 AND order_id % 2 = 1") };
my %keys_c2 = map { $_ => 1 }
  @{ notice_keys($node, "ship_date = current_date + 7 AND order_id % 2 = 0") };
my $sends_c1 = requests_for($log, 'send', \%keys_c1);
my $sends_c2 = requests_for($log, 'send', \%keys_c2);
ok(all_carry($sends_c1, $TP_C1, '(c) first trace'), '(c) the first request\'s sends carry its trace');
ok(all_carry($sends_c2, $TP_C2, '(c) second trace'),
	'(c) the second\'s carry its own (flags 00 kept)');
my %in_c1 = map { $_->{request} => 1 } @$sends_c1;
is(scalar(grep { $in_c1{ $_->{request} } } @$sends_c2), 0, '(c) no TMS request carries both');
my @order = map { $in_c1{ $_->{request} } ? 1 : 2 }
  sort { $a->{request} <=> $b->{request} } (@$sends_c1, @$sends_c2);
my $switches = grep { $order[$_] != $order[ $_ - 1 ] } 1 .. $#order;
cmp_ok($switches, '>=', 2,
	'(c) their requests alternate: the two traces were sent from one batch (' . join('', @order) . ')');
my $ev = event_tps();
my %events_c = map { $_ => 1 } grep { $ev->{$_} eq $TP_C1 || $ev->{$_} eq $TP_C2 } keys %$ev;
is(scalar(grep {
			my $p = $_;
			my %t = map { trace_of($ev->{$_}) => 1 } @{ $p->{ids} };
			keys(%t) != 1 || !exists $t{ trace_of($p->{traceparent}) }
		} @{ requests_for($log, 'hook', \%events_c) }),
	0, '(c) nor does any subscriber POST');

# ---------------------------------------------------------------------------
# (d) retries: the same trace id, a new span id each time
# ---------------------------------------------------------------------------
mock_control($mock, error_rate => 1, error_status => 500, hook_status => { tr => 500 });
my $req_d = delay_traced(501, 501, 8, $TP_D);
my $key_d = poll_for($node, "SELECT 'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD')"
	  . " FROM courier.notices WHERE ship_date = current_date + 8", 60) // 'none';
my $event_d = poll_for($node, "SELECT event_id FROM courier.events"
	  . " WHERE type = 'order.delayed' AND order_id = 501", 60) // -1;
ok(wait_for(sub {
			my $l = traces();
			grep({ $_->{status} == 500 } @{ requests_for($l, 'send', { $key_d => 1 }) })
			  && grep({ $_->{status} == 500 } @{ requests_for($l, 'hook', { $event_d => 1 }) });
		}, 60, 'a 500 for the notice and for the event'),
	'(d) the mock answered the notice\'s send and the event\'s POST with 500');
mock_control($mock, error_rate => 0, hook_status => {});
ok(poll_until($node, "SELECT status FROM courier.notices WHERE ship_date = current_date + 8",
		'delivered', 60),
	'(d) the notice is delivered on a retry');
ok(poll_until($node, "SELECT backlog FROM courier.subscribers WHERE name = 'tr'", '0', 60),
	'(d) the event too');
$log = traces();
for my $case ([ 'send', { $key_d => 1 }, 'notice' ], [ 'hook', { $event_d => 1 }, 'event' ])
{
	my ($kind, $ids, $what) = @$case;
	my $tries = requests_for($log, $kind, $ids);
	ok(@$tries >= 2 && $tries->[0]{status} == 500 && $tries->[-1]{status} == 200,
		"(d) the $what went out " . scalar(@$tries) . ' times: first 500, last 200');
	ok(all_carry($tries, $TP_D, "(d) $what"),
		"(d) every try of the $what carries the trace id, each with a new span id");
}
like(query($node, "SELECT errors::text FROM courier.notices WHERE ship_date = current_date + 8"),
	qr/"http_status": 500/, '(d) the notice\'s history has the failed try');

# ---------------------------------------------------------------------------
# (f) every header is well-formed and names the trace of what it carried
# ---------------------------------------------------------------------------
$log = traces();
my $nt = notice_tps();
$ev = event_tps();
my @traced = grep { defined $_->{traceparent} } @$log;
is(scalar(grep { $_->{traceparent} !~ $HEADER } @traced), 0,
	scalar(@traced) . ' headers, each ^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
my %spans;
$spans{ ($_->{traceparent} =~ $HEADER)[1] }++ for @traced;
is(scalar(grep { $spans{$_} > 1 } keys %spans), 0, 'no two requests share a span id');
my @mixed = grep {
	my $r = $_;
	my $map = $r->{kind} eq 'send' ? $nt : $ev;
	grep { trace_of($map->{$_}) ne trace_of($r->{traceparent}) } @{ $r->{ids} // [] }
} @$log;
is(scalar(@mixed), 0, 'every request names the trace of each item it carried, or none for none');
diag(explain($mixed[0])) if @mixed;

$node->stop;

# ---------------------------------------------------------------------------
# (g) a provider with receipts: its sends and its receipt queries
# ---------------------------------------------------------------------------
my $TP_G = '00-7e1d2c3b4a5968778695a4b3c2d1e0f1-0f1e2d3c4b5a6978-01';
my $pmock = start_provider_mock();
my $pnode = tms_node('trace_context_nhn', $pmock,
	conf => provider_conf($pmock, 'nhn_alimtalk') . q{
courier.tms_bulk_size = 10
courier.receipt_interval = '200ms'
courier.idle_wakeup = '1s'
});
is(register_tms_orders($pnode, 1, 40), 40, '(g) 40 orders for NHN AlimTalk');
query($pnode, qq{
	BEGIN;
	SET LOCAL courier.traceparent = '$TP_G';
	SELECT courier.delay_orders(array(SELECT generate_series(1, 40)::bigint),
								'rain', current_date + 5);
	COMMIT;});
ok(poll_until($pnode, "SELECT count(*) FROM courier.notices WHERE receipt_status = 'delivered'",
		'40', 120),
	'(g) the receipts of the 40 notices say delivered');
my @provider = grep { $_->{kind} eq 'dialect' } @{ CourierTms::mock_request($pmock, 'GET', '/_traces') };
my $queries = mock_stats($pmock)->{queries};
ok($queries > 0 && @provider > $queries, "(g) the mock logged " . scalar(@provider)
	  . " requests to NHN, $queries of them receipt queries (GET)");
ok(all_carry(\@provider, $TP_G, '(g) NHN requests'),
	'(g) every send and every receipt query carries the request\'s trace id, each with a span id of its own');

$pnode->stop;
done_testing();
