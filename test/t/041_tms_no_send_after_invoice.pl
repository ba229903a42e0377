
# 041_tms_no_send_after_invoice.pl
#	The close rule: once an order's invoice has committed, no send of its
#	notice starts.  courier.register_invoice says what became of the
#	notice: 'dropped' (never sent, never will be) or 'in_flight' (a sender
#	holds it; the notice's status tells how it ended).
#
#	(a) The retry path.  The provider answers 500 to everything:
#	  - orders 1-5 are invoiced while their notices wait in back-off after
#	    the 500 (no sender holds them): 'dropped' at once;
#	  - order 6 is invoiced while its request is on the wire (the provider
#	    holds it 1.5 s, then answers 500): 'in_flight'; the failed attempt
#	    is charged, and when the notice falls due again its sender finds the
#	    order closed and drops it.
#	  Then the provider heals.  None of the six is ever sent again: each
#	  reached the provider once (the 500), none is delivered, all six
#	  notices end 'dropped'.
#	(b) In flight.  The provider holds order 21's request 1.5 s; the order is
#	  invoiced once the request has reached it: 'in_flight'.  The send
#	  completes and is recorded: the notice ends 'delivered' with the
#	  provider's id, on its first attempt, the only request for it reached
#	  the provider before the invoice committed, and nothing of it is left
#	  to send.
#	(c) The close ring.  One sender leases 40 notices in one batch and sends
#	  them two at a time, 200 ms each; while the batch is being sent, half
#	  of the orders are invoiced one by one.  The sender rendered them
#	  before the invoices, so only the closes it reads from shared memory
#	  before each request can stop them.  From the mock's log of arrivals:
#	  no request for an invoiced order arrived more than 20 ms after its
#	  invoice committed (as seen by clock_timestamp() in the next
#	  statement); an invoiced order that was never sent ends 'dropped'
#	  (register_invoice said 'in_flight': the sender held it); the other
#	  orders are delivered, each once.
#
#	courier 0.1: register_invoice returned a boolean and dropped only
#	notices no sender held; a sender checked nothing before sending.  So a
#	notice whose send failed with a 500 while its order was invoiced was
#	re-sent after the invoice and delivered, a notice leased before the
#	invoice was sent whenever its turn came (seconds later in (c)), and
#	register_invoice answered 'f' instead of 'in_flight'.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $mock = start_mock();

# A long first back-off (2-4 s) so that (a) can invoice orders while their
# notices wait in it; two requests at a time from one sender for (c).
my $node = tms_node(
	'tms_no_send_after_invoice', $mock, conf => q{
courier.retry_base = '4s'
courier.retry_cap = '8s'
courier.tms_concurrency = 2
courier.tms_min_workers = 1
courier.tms_max_workers = 1
courier.tms_breaker_threshold = 100000
});

is(register_tms_orders($node, 1, 140), 140, 'register_orders registers 140 orders');
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier tms worker'",
		'1', 30),
	'one tms worker runs');

my $ymd = query($node, "SELECT to_char(current_date + 10, 'YYYYMMDD')");
sub key_of { return "dn-$_[0]-$ymd" }

# the mock's received log: message id -> [ [us, status], ... ]
sub received
{
	my %by_id;
	push @{ $by_id{ $_->{id} } }, [ $_->{us}, $_->{status} ]
	  for @{ CourierTms::mock_request($mock, 'GET', '/_received') };
	return \%by_id;
}

# invoice(ORDER): register the invoice; returns its answer and the time
# (µs since the epoch) of the next statement, which runs after the commit.
sub invoice
{
	my ($order) = @_;
	my ($answer, $us) = split /\n/, query($node, qq{
		SELECT courier.register_invoice($order, 'INV-$order');
		SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;});
	return ($answer, $us);
}

# tms_queue_empty(FIRST, LAST): SQL counting the orders' notices still in
# the tms queue (pending); '0' when none is left to send.
sub tms_queue_empty
{
	my ($first, $last) = @_;
	return "SELECT count(*) FROM courier.notices"
	  . " WHERE status = 'pending' AND order_id BETWEEN $first AND $last";
}

# ---------------------------------------------------------------- (a)
mock_control($mock, error_rate => 1, error_status => 500);
delay_tms($node, 1, 5, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE status = 'pending' AND order_id BETWEEN 1 AND 5 AND attempts = 1"
		  . "   AND leased_by IS NULL AND due_at > now() + interval '500 ms'",
		'5', 30),
	'(a) the notices of orders 1-5 failed once (500) and wait in back-off, held by no sender');
is(join(',', map { (invoice($_))[0] } 1 .. 5),
	join(',', ('dropped') x 5),
	'(a) register_invoice of orders 1-5 answers dropped');

mock_control($mock, latency_ms => 1500);
delay_tms($node, 6, 6, 10);
ok(wait_for(sub { exists received()->{ key_of(6) } }, 30,
		'the request for order 6 reached the mock'),
	'(a) the request for order 6 is on the wire (the mock holds it 1.5 s)');
is((invoice(6))[0], 'in_flight',
	'(a) register_invoice of order 6 answers in_flight: its sender holds it');
ok( poll_until(
		$node,
		"SELECT attempts, jsonb_array_length(errors) FROM courier.notices"
		  . " WHERE order_id = 6",
		'1|1', 30),
	'(a) the 500 answered to order 6 is charged: one attempt in its notice\'s history');

mock_control($mock, error_rate => 0, latency_ms => 0);
ok(poll_until($node, tms_queue_empty(1, 6), '0', 30),
	'(a) the provider heals and no notice of orders 1-6 is left in the tms queue');
is(query($node, qq{
	SELECT string_agg(status, ',' ORDER BY order_id) FROM courier.notices
	 WHERE order_id BETWEEN 1 AND 6}),
	join(',', ('dropped') x 6),
	'(a) the notices of orders 1-6 are dropped');
is(query($node, 'SELECT count(*) FROM courier.failures WHERE order_id BETWEEN 1 AND 6'),
	'0', '(a) none of them is in courier.failures');
{
	my $got = received();
	is(join(',', map { join('/', map { $_->[1] } @{ $got->{ key_of($_) } // [] }) } 1 .. 6),
		join(',', ('500') x 6),
		'(a) the mock received each of orders 1-6 once, answered 500: no send after the invoice');
	my %delivered = map { $_ => 1 } @{ mock_delivered($mock) };
	is(scalar(grep { $delivered{ key_of($_) } } 1 .. 6),
		0, '(a) the mock delivered none of them');
}

# ---------------------------------------------------------------- (b)
mock_control($mock, latency_ms => 1500);
delay_tms($node, 21, 21, 10);
ok(wait_for(sub { exists received()->{ key_of(21) } }, 30,
		'the request for order 21 reached the mock'),
	'(b) the request for order 21 is on the wire (the mock holds it 1.5 s)');
my ($answer21, $commit21) = invoice(21);
is($answer21, 'in_flight', '(b) register_invoice of order 21 answers in_flight');
ok( poll_until(
		$node,
		"SELECT status FROM courier.notices WHERE order_id = 21",
		'delivered', 30),
	'(b) the send in flight completes and the notice is recorded delivered');
my %delivered = map { $_ => 1 } @{ mock_delivered($mock) };
is(query($node, qq{
	SELECT attempts, http_status, provider_id LIKE 'tms-%'
	  FROM courier.notices WHERE order_id = 21}),
	'1|200|t', '(b) delivered on its first attempt, HTTP 200, with the provider\'s id');
ok($delivered{ key_of(21) }, '(b) the mock delivered it');
is(query($node, tms_queue_empty(21, 21)), '0',
	'(b) nothing of order 21 is left to send');
{
	my $arrivals = received()->{ key_of(21) };
	is(scalar(@$arrivals), 1, '(b) the mock received order 21 once');
	cmp_ok($arrivals->[0][0], '<', $commit21,
		'(b) that one request arrived before the invoice committed');
}

# ---------------------------------------------------------------- (c)
mock_reset($mock);
mock_control($mock, latency_ms => 200);
delay_tms($node, 101, 140, 10);
ok( wait_for(
		sub {
			my $got = received();
			(grep { exists $got->{ key_of($_) } } 101 .. 140) >= 4;
		},
		30,
		'the first requests of the batch reached the mock'),
	'(c) the sender is sending the batch of orders 101-140');
is(query($node, qq{
	SELECT count(*) FILTER (WHERE leased_by IS NULL), count(DISTINCT leased_by)
	  FROM courier.notices WHERE status = 'pending' AND order_id BETWEEN 101 AND 140}),
	'0|1', '(c) one sender holds every notice of the batch not yet sent');

my @invoiced = grep { $_ % 2 == 0 } 101 .. 140;
my (%answer, %committed);
($answer{$_}, $committed{$_}) = invoice($_) for @invoiced;
my %is_invoiced = map { $_ => 1 } @invoiced;

ok(poll_until($node, tms_queue_empty(101, 140), '0', 30),
	'(c) the tms queue drains');
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10,
		'mock has no request in flight'),
	'(c) the mock has no request in flight');

my $got = received();
my (@late, @sent, @unsent, $max_after);
for my $o (@invoiced)
{
	my $arrivals = $got->{ key_of($o) } // [];
	push @{ @$arrivals ? \@sent : \@unsent }, $o;
	for my $a (@$arrivals)
	{
		my $after = $a->[0] - $committed{$o};
		$max_after = $after if !defined $max_after || $after > $max_after;
		push @late, sprintf('%d arrived %.1f ms after its invoice', $o, $after / 1000)
		  if $after > 20_000;
	}
}
diag(sprintf('(c) of %d invoiced orders %d were sent before their invoice, %d not;'
	  . ' latest arrival relative to an invoice commit: %s ms',
	scalar(@invoiced), scalar(@sent), scalar(@unsent),
	defined $max_after ? sprintf('%.1f', $max_after / 1000) : 'none'));
is(scalar(@late), 0,
	'(c) no request for an invoiced order arrived more than 20 ms after its invoice committed')
  or diag(join("\n", @late));
cmp_ok(scalar(@unsent), '>=', 10,
	'(c) most invoiced orders were still waiting in the sender\'s batch when invoiced');
is(join(',', map { $answer{$_} } @unsent), join(',', ('in_flight') x @unsent),
	'(c) register_invoice answered in_flight for each of them: the sender held them');
my $unsent_list = join(',', @unsent) || 'NULL';
is(query($node, qq{
	SELECT count(*) FILTER (WHERE status = 'dropped'), count(*)
	  FROM courier.notices WHERE order_id IN ($unsent_list)}),
	scalar(@unsent) . '|' . scalar(@unsent),
	'(c) the invoiced orders that were not sent end dropped');
my $sent_list = join(',', @sent) || 'NULL';
is(query($node, qq{
	SELECT count(*) FILTER (WHERE status = 'delivered'), count(*)
	  FROM courier.notices WHERE order_id IN ($sent_list)}),
	scalar(@sent) . '|' . scalar(@sent),
	'(c) the invoiced orders sent before their invoice are recorded delivered');
my @open = grep { !$is_invoiced{$_} } 101 .. 140;
is(scalar(grep { scalar(@{ $got->{ key_of($_) } // [] }) != 1 } @open, @sent),
	0, '(c) every order sent reached the mock exactly once');
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE order_id BETWEEN 101 AND 140 AND order_id % 2 = 1 AND status = 'delivered'}),
	scalar(@open), '(c) the 20 orders not invoiced are delivered');
is(query($node, 'SELECT count(*) FROM courier.failures'),
	'0', 'nothing went to courier.failures');

$node->stop;
done_testing();
