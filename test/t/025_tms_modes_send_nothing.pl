
# 025_tms_modes_send_nothing.pl
#	courier.tms_mode, switched with ALTER SYSTEM + pg_reload_conf() while
#	the workers run:
#	- off: notices accumulate as pending, nothing reaches the TMS, and the
#	  tms workers say why in pg_stat_activity ('courier.tms_mode is off');
#	- dry_run: the accumulated notices are rendered and marked 'dry_run'
#	  (with their channel, logged), still without one HTTP request;
#	- live: new notices are delivered, and the dry-run ones are not sent
#	  after the fact.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 200;
my $OFF = 'courier.tms_mode is off';

my $mock = start_mock();
my $node = tms_node('tms_modes', $mock, conf => "courier.tms_mode = 'off'\n");

# set_mode(MODE): ALTER SYSTEM + reload, and wait until it is in effect.
sub set_mode
{
	my ($mode) = @_;
	query($node, "ALTER SYSTEM SET courier.tms_mode = '$mode'");
	query($node, 'SELECT pg_reload_conf()');
	return poll_until($node, 'SHOW courier.tms_mode', $mode, 30);
}

my $workers_say_off =
	"SELECT count(*) > 0 AND bool_and(query = '$OFF') FROM pg_stat_activity"
  . " WHERE backend_type = 'courier tms worker'";

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
ok(poll_until($node, $workers_say_off, 't', 30),
	"with courier.tms_mode = off the tms workers report '$OFF'");

my $req = delay_tms($node, 1, $N, 10);
ok( poll_until(
		$node,
		"SELECT done FROM courier.request_status($req)", "$N", 60),
	"the logic stage applies all $N delays");
is(query($node,
	"SELECT count(*) FROM courier.notices"
	  . " WHERE ship_date = current_date + 10 AND status = 'pending'"
	  . "   AND due_at IS NOT NULL"),
	"$N", "$N notices are queued for the tms stage (pending)");
ok(poll_until($node, $workers_say_off, 't', 30),
	"after the notices are queued the tms workers still report '$OFF'");
ok( stays_true(
		sub {
			mock_stats($mock)->{requests} == 0
			  && query($node,
				"SELECT count(*) FROM courier.notices WHERE status = 'pending'")
			  == $N;
		},
		2,
		'no request, all notices pending'),
	"with tms_mode off no request reaches the mock and the $N notices stay pending");

# dry_run: rendered, marked, not sent.
my $log = log_offset($node);
ok(set_mode('dry_run'), 'courier.tms_mode = dry_run after a reload');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 10 AND status = 'dry_run'",
		"$N", 60),
	"in dry_run all $N accumulated notices become 'dry_run'");
is(query($node, qq{
	SELECT count(*) FROM courier.notices
	 WHERE ship_date = current_date + 10 AND channel = 'sms'
	   AND provider_id IS NULL}),
	"$N", 'each was rendered (channel sms), with no provider id');
is(query($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'"),
	'0', 'the tms queue is empty: no notice is pending');
ok(poll_log($node, qr/courier tms dry_run: \d+ messages rendered, none sent/, $log, 10),
	'the dry run is logged');
is(mock_stats($mock)->{requests}, 0, 'in dry_run the mock still got no request');

# live: new notices are delivered; the dry-run ones stay as they are.
ok(set_mode('live'), 'courier.tms_mode = live after a reload');
delay_tms($node, 1, $N, 11);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 11 AND status = 'delivered'",
		"$N", 60),
	"in live mode the $N new notices are delivered");
my $s = mock_stats($mock);
is("$s->{messages_received}|$s->{delivered}|$s->{duplicates}", "$N|$N|0",
	"the mock received exactly the $N new messages, once each");
is(query($node,
	"SELECT count(*) FROM courier.notices"
	  . " WHERE ship_date = current_date + 10 AND status = 'dry_run'"),
	"$N", 'the dry-run notices were not sent afterwards');

$node->stop;
done_testing();
