
# 019_create_extension_without_preload.pl
#	courier works in a server that does not preload it: CREATE EXTENSION
#	courier loads the library into a running backend, which then defines
#	courier's parameters; the backend survives that, keeps its session,
#	and the stages run through courier.run_once (no workers, no shared
#	memory):
#	- CREATE EXTENSION succeeds and the same psql session goes on working;
#	- run_once('logic') applies a delay of 10 orders (request_status done =
#	  10) and writes one notice per order;
#	- with courier.tms_mode = 'dry_run' (a reload parameter: ALTER SYSTEM
#	  and pg_reload_conf, since SET cannot change it) run_once('tms')
#	  renders the notices and marks them dry_run, sending nothing;
#	- the server log has no FATAL and no crash.
#
# The old code (0.1) defined courier.database as a PGC_POSTMASTER
# parameter whenever the library was loaded, so the backend running
# CREATE EXTENSION died with "FATAL: cannot create PGC_POSTMASTER
# variables after startup": the extension could not be created at all
# without preloading.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# A plain cluster: no shared_preload_libraries, so not courier_node.
my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '',
	'the server preloads nothing');

# CREATE EXTENSION and a statement after it in one session: a backend that
# died while loading the library would fail the second statement (and
# psql's exit code).
my ($rc, $out, $err) = $node->psql(
	'postgres', q{
CREATE EXTENSION courier;
SELECT 'still here after CREATE EXTENSION';
SELECT e.extversion = a.default_version FROM pg_extension e
  JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'courier';
});
is($rc, 0, 'CREATE EXTENSION courier and the statements after it succeed in one session');
is($out, "still here after CREATE EXTENSION\nt",
	'the session that created the extension goes on running statements');
unlike($err, qr/FATAL|server closed the connection/,
	'psql saw no FATAL and no lost connection');

# In a new session the library is loaded on the first call; that must not
# kill the backend either.
is(query($node, 'SELECT count(*) FROM pg_stat_activity'
	  . " WHERE backend_type LIKE 'courier%'"),
	'0', 'no courier launcher or worker runs without preloading');

is(register_orders($node, 1, 10), 10, 'register_orders registers 10 orders in a new session');
my $req = delay_orders($node, 1, 10, 7);
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
	'10|0|0|10', 'the delay of 10 orders is queued and stays pending: nobody works on it');

is(query($node, "SELECT courier.run_once('logic')"), '10',
	"run_once('logic') handles the 10 queued items");
is(query($node, "SELECT total, done, failed, pending FROM courier.request_status($req)"),
	'10|10|0|0', 'request_status: all 10 orders done');
is(query($node,
	'SELECT count(*) FROM courier.orders WHERE promised_ship_date = current_date + 7'),
	'10', 'the 10 orders have the new ship date');
is(query($node,
	"SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM courier.notices"),
	'10|10', 'one pending notice per order');

# courier.tms_mode is a reload parameter: SET is refused, ALTER SYSTEM works.
my ($set_rc, $set_out, $set_err) =
  $node->psql('postgres', "LOAD 'courier'; SET courier.tms_mode = 'dry_run'");
isnt($set_rc, 0, 'SET courier.tms_mode is refused in a session (it is a reload parameter)');
like($set_err, qr/cannot be changed now/, '... with "cannot be changed now"');

# ALTER SYSTEM checks the parameter, so the session loads the library first.
query($node, "LOAD 'courier'; ALTER SYSTEM SET courier.tms_mode = 'dry_run'");
query($node, "LOAD 'courier'; ALTER SYSTEM SET courier.tms_url = 'http://127.0.0.1:9/never-called'");
query($node, 'SELECT pg_reload_conf()');
ok( poll_until(
		$node, "LOAD 'courier'; SELECT current_setting('courier.tms_mode')",
		'dry_run', 30),
	'after ALTER SYSTEM and pg_reload_conf a new session sees courier.tms_mode = dry_run');

is(query($node, "SELECT courier.run_once('tms')"), '10',
	"run_once('tms') handles the 10 notices");
is(query($node,
	"SELECT count(*) FILTER (WHERE status = 'dry_run'), count(*) FROM courier.notices"),
	'10|10', 'the 10 notices are marked dry_run');
is(query($node, "SELECT count(*) FROM courier.notices WHERE status = 'pending'"),
	'0', 'no notice is left pending: the tms queue is empty');
is(query($node, "SELECT courier.run_once('tms')"), '0',
	"a second run_once('tms') finds nothing due");

my $log = slurp_file($node->logfile);
unlike($log, qr/FATAL/, 'the server log has no FATAL');
unlike($log, qr/terminated by signal|server process .* exited with exit code/,
	'the server log shows no backend that crashed or exited');

$node->stop;
done_testing();
