
# 030_rollout_split_follows_reload.pl
#	The rollout switch courier.rollout.notice_v2, changed with ALTER SYSTEM
#	+ pg_reload_conf() while the workers run (no restart), decides which
#	notices the logic stage writes as variant v2:
#	- at 0 every notice is v1;
#	- at 30 about 30% are v2, and exactly the orders for which
#	  courier.switch_enabled('notice_v2', order_id) is true;
#	- at 60 about 60% are v2, every order that was v2 at 30 still is
#	  (raising the percentage only adds orders), and again exactly the
#	  orders switch_enabled names.
#	The tms stage runs in dry_run, so every notice is rendered (in its
#	variant's template) and marked 'dry_run' without any HTTP request.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 2000;

my $node = courier_node(
	'rollout', conf => q{
courier.retry_base = '20ms'
courier.tms_mode = 'dry_run'
courier.tms_min_workers = 1
courier.tms_max_workers = 2
});

# The switch's GUC: courier.rollout.notice_v2 as first named, or
# courier.rollout_notice_v2.  PostgreSQL 15's configuration-file parser
# accepts only one dot in a parameter name, so a two-dot name written by
# ALTER SYSTEM makes postgresql.auto.conf unparseable (the check in
# set_rollout says so).
my $GUC = query($node, q{
	SELECT string_agg(name, ',') FROM pg_settings
	 WHERE name ~ '^courier\.rollout[._]notice_v2$'});
like($GUC, qr/^courier\.rollout[._]notice_v2$/,
	"the rollout switch notice_v2 is a GUC ($GUC)");

# The server processes as they are now: postmaster pid (postmaster.pid),
# start time and the launcher's pid.  A restart, or a crash restart of the
# background workers, would change one of them.
sub server_identity
{
	my ($pid) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
	return join('|',
		$pid,
		query($node, q{
			SELECT pg_postmaster_start_time() || '|' ||
				   (SELECT string_agg(pid::text, ',') FROM pg_stat_activity
					 WHERE backend_type = 'courier launcher')}));
}

# set_rollout(VALUE): ALTER SYSTEM + reload; wait until a new session sees
# it (the postmaster has reloaded and signalled its children, which re-read
# the file before their next batch).
sub set_rollout
{
	my ($value) = @_;
	query($node, "ALTER SYSTEM SET $GUC = '$value'");
	is(query($node, q{
		SELECT coalesce(string_agg(sourcefile || ':' || sourceline || ': ' || error, '; '), '')
		  FROM pg_file_settings WHERE error IS NOT NULL}),
		'', "after ALTER SYSTEM SET $GUC = '$value' the configuration files parse without error");
	query($node, 'SELECT pg_reload_conf()');
	return poll_until($node, "SHOW $GUC", $value, 20);
}

# delay_all_and_drain(DAYS): one delay request for all orders to today +
# DAYS, and wait until its N notices are rendered by the dry run.
sub delay_all_and_drain
{
	my ($days) = @_;
	my $req = delay_orders($node, 1, $N, $days);
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices"
			  . " WHERE ship_date = current_date + $days AND status = 'dry_run'",
			"$N", 60),
		"all $N notices for today + $days are rendered by the dry run");
	is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
		"$N|$N|0|0", "request for today + $days: all $N delays applied, none failed");
	return $req;
}

# split_matches_switch(DAYS): the notices for today + DAYS that are v2
# versus the orders switch_enabled() puts in the rollout (evaluated in a
# new session, which has the current setting): "mismatches|v2 count".
sub split_matches_switch
{
	my ($days) = @_;
	return query($node, qq{
		SELECT count(*) FILTER (WHERE (variant = 'v2')
								  <> courier.switch_enabled('notice_v2', order_id))
			   || '|' || count(*) FILTER (WHERE variant = 'v2')
		  FROM courier.notices WHERE ship_date = current_date + $days});
}

is(register_orders($node, 1, $N), $N, "register_orders registers $N orders");
is(query($node, "SHOW $GUC"), '0', "$GUC starts at 0");
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		't', 30),
	'a logic worker is running');

# 0%: all v1.
delay_all_and_drain(10);
is(query($node, qq{
	SELECT count(*) FILTER (WHERE variant = 'v1') || '|' || count(*)
	  FROM courier.notices WHERE ship_date = current_date + 10}),
	"$N|$N", "with notice_v2 at 0 all $N notices are v1");

my $before = server_identity();
my ($conf_loaded) = query($node, 'SELECT pg_conf_load_time()');

# 30%, reloaded while the workers run.
ok(set_rollout('30'), "$GUC = 30 after ALTER SYSTEM + reload");
ok(query($node, "SELECT pg_conf_load_time() > '$conf_loaded'") eq 't',
	'the configuration was reloaded (pg_conf_load_time advanced)');
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM pg_stat_activity"
		  . " WHERE backend_type = 'courier logic worker'",
		't', 30),
	'a logic worker is running after the reload');
delay_all_and_drain(11);
my ($mismatch30, $v2_at_30) = split /\|/, split_matches_switch(11);
is($mismatch30, '0',
	"at 30%: a notice is v2 exactly when switch_enabled('notice_v2', order_id) is true");
cmp_ok(abs($v2_at_30 / $N * 100 - 30), '<=', 5,
	"at 30%: $v2_at_30 of $N notices are v2, within 30% +- 5 points");
is(server_identity(), $before,
	'no restart: postmaster pid, start time and launcher pid are unchanged');

# 60%: more orders, never fewer.
ok(set_rollout('60%'), "$GUC = 60% after ALTER SYSTEM + reload");
delay_all_and_drain(12);
my ($mismatch60, $v2_at_60) = split /\|/, split_matches_switch(12);
is($mismatch60, '0',
	"at 60%: a notice is v2 exactly when switch_enabled('notice_v2', order_id) is true");
cmp_ok(abs($v2_at_60 / $N * 100 - 60), '<=', 5,
	"at 60%: $v2_at_60 of $N notices are v2, within 60% +- 5 points");
is(query($node, q{
	SELECT count(*) FROM courier.notices a
	  JOIN courier.notices b ON b.order_id = a.order_id
	 WHERE a.ship_date = current_date + 11 AND a.variant = 'v2'
	   AND b.ship_date = current_date + 12 AND b.variant <> 'v2'}),
	'0', 'monotonic: every order that was v2 at 30% is still v2 at 60%');
cmp_ok($v2_at_60, '>', $v2_at_30, 'raising the rollout to 60% added orders to v2');
is(query($node, q{
	SELECT count(*) FILTER (WHERE variant = 'v1') || '|' || count(*)
	  FROM courier.notices WHERE ship_date = current_date + 10}),
	"$N|$N", 'the notices written at 0% stay v1 (a switch only affects new notices)');
is(server_identity(), $before,
	'still no restart after the second reload');

$node->stop;
done_testing();
