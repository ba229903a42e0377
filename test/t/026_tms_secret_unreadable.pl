
# 026_tms_secret_unreadable.pl
#	courier.tms_auth_header is a secret: the workers send it (a mock that
#	requires the header delivers every message and answers no 401), but an
#	ordinary role cannot read it, nor the other secret settings
#	(courier.tms_hmac_access_key, courier.tms_hmac_secret), by SHOW,
#	current_setting() or pg_settings, and its value is written nowhere in
#	the server log, neither at start nor when it is rotated by a reload.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::MD5 qw(md5_hex);

my $N = 100;
my $SECRET = 's3cr3t';
my $ROTATED = 'r0tat3d';

my $mock = start_mock('--require-header', "X-Secret-Key: $SECRET");
my $node = tms_node('tms_secret', $mock,
	conf => "courier.tms_auth_header = 'X-Secret-Key: $SECRET'\n");

is(register_tms_orders($node, 1, $N), $N, "register_orders registers $N orders");
delay_tms($node, 1, $N, 10);
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices"
		  . " WHERE ship_date = current_date + 10 AND status = 'delivered'",
		"$N", 60),
	"all $N notices are delivered by a TMS that requires the header");
my $s = mock_stats($mock);
is("$s->{delivered}|$s->{status_4xx}", "$N|0",
	"the mock delivered $N and answered no 401: the header was sent every time");

query($node, 'CREATE ROLE app LOGIN');

for my $guc (qw(courier.tms_auth_header courier.tms_hmac_access_key
	courier.tms_hmac_secret))
{
	my ($ret, $out, $err) = $node->psql('postgres', "SHOW $guc",
		extra_params => [ '-U', 'app' ]);
	isnt($ret, 0, "role app: SHOW $guc fails");
	like($err, qr/permission denied|must be superuser/,
		"role app: SHOW $guc is refused for lack of privilege");

	($ret, $out, $err) = $node->psql('postgres',
		"SELECT current_setting('$guc')", extra_params => [ '-U', 'app' ]);
	isnt($ret, 0, "role app: current_setting('$guc') fails");
	like($err, qr/permission denied|must be superuser/,
		"role app: current_setting('$guc') is refused for lack of privilege");

	($ret, $out, $err) = $node->psql('postgres',
		"SELECT count(*) FROM pg_settings WHERE name = '$guc'",
		extra_params => [ '-U', 'app' ]);
	is("$ret|$out", '0|0', "role app: pg_settings has no row for $guc");
}

my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT current_setting('courier.tms_auth_header', true)",
	extra_params => [ '-U', 'app' ]);
unlike($out, qr/\Q$SECRET\E/,
	"role app: current_setting(..., missing_ok) does not return the secret");
($ret, $out, $err) = $node->psql('postgres',
	"SELECT string_agg(name || '=' || setting, ',') FROM pg_settings"
	  . " WHERE name LIKE 'courier.%'",
	extra_params => [ '-U', 'app' ]);
is($ret, 0, 'role app can read the other courier settings');
unlike($out, qr/\Q$SECRET\E/, "role app: no courier setting shows the secret");

# Rotating the secret the way operators change courier's settings: a new
# value in the configuration and a reload.  (Edited in postgresql.conf
# rather than by ALTER SYSTEM so that log_statement = all, which the test
# cluster runs with, does not log the statement text.)
$node->append_conf('postgresql.conf',
	"courier.tms_auth_header = 'X-Secret-Key: $ROTATED'\n");
$node->reload;
# Compared by digest: the statement itself is logged (log_statement = all).
ok( poll_until(
		$node,
		"SELECT md5(current_setting('courier.tms_auth_header'))",
		md5_hex("X-Secret-Key: $ROTATED"), 30),
	'the rotated secret is in effect after the reload');

# The server log: everything up to a clean stop.
$node->stop;
my @log = split /\n/, slurp_file($node->logfile);
cmp_ok(scalar(@log), '>', 0, 'the server log was written');
for my $case ([ $SECRET, 'the secret' ], [ $ROTATED, 'the rotated secret' ])
{
	my ($value, $what) = @$case;
	my @leaks = grep { /\Q$value\E/ } @log;
	is(scalar(@leaks), 0, "$what appears nowhere in the server log")
	  or diag("log lines with $what:\n" . join("\n", @leaks));
}

done_testing();
