
# 014_immediate_stop_loses_nothing.pl
#	An immediate shutdown (pg_ctl -m immediate: no checkpoint, every process
#	killed) in the middle of a 100,000-order delay loses nothing and does
#	nothing twice: after a plain start the workers finish the request by
#	themselves, every order is applied exactly once, and there is exactly
#	one notice per order.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 100_000;

my $node = courier_node(
	'immediate', logic_only => 1, conf => 'courier.batch_size = 1000');

is(register_orders($node, 1, $N), $N, "register_orders registers $N orders");
my $req = delay_orders($node, 1, $N, 10);

my $done_before = poll_for(
	$node, qq{
	SELECT s.done FROM courier.request_status($req) s
	 WHERE s.done BETWEEN 1 AND s.total / 2}, 60);
ok(defined $done_before, 'the request is seen at most half done');
note("stopping (immediate) with " . ($done_before // '?') . " of $N done");

ok($node->stop('immediate'), 'immediate shutdown in the middle of the request');

my $log_offset = log_offset($node);
ok($node->start, 'the server starts again');
ok( $node->log_contains(
		qr/database system was interrupted|was not properly shut down/,
		$log_offset),
	'the start ran crash recovery');

my $done_at_start = query($node, "SELECT done FROM courier.request_status($req)");
cmp_ok($done_at_start, '<', $N,
	'after recovery the request is still part done (the stop interrupted it)');

ok( poll_until(
		$node, "SELECT done FROM courier.request_status($req)",
		"$N", 120),
	"after the start the workers bring done to $N");

check_nothing_lost($node, $req, 1, $N, 10);

$node->stop;
done_testing();
