
# 040_search_path_shadows_never_run.pl
#	courier's launcher and workers run as the bootstrap superuser, so the
#	SQL they run must never resolve a name to an object another role
#	planted.  Here the database's default search_path is
#	"evil_schema, public", and a login role "evil" (the app's role: a
#	member of courier_app, with CREATE on public) has put shadows in both
#	schemas that PostgreSQL prefers over pg_catalog's own whenever their
#	schema is on the path, because they match the argument types exactly
#	where pg_catalog's need a cast or are polymorphic:
#	  to_char(date, text)         pg_catalog has to_char(timestamp[tz], text)
#	  unnest(bigint[])            pg_catalog has unnest(anyarray)
#	  = (courier.stage, courier.stage), = (courier.order_status, ...)
#	                              pg_catalog has = (anyenum, anyenum)
#	  || (text, bigint), || (text, integer)
#	                              pg_catalog has || (text, anynonarray)
#	  ^ (integer, integer)        pg_catalog has ^ (float8, float8)
#	Each shadow returns the right value and inserts a row into
#	public.pwned (what ran, as whom, in which backend).  The test first
#	proves the shadows are live (evil's own session with the database's
#	path runs every one of them), then restarts the server so the
#	launcher and workers start under that path, and drives every stage
#	through it: orders registered and delayed by evil through the app API,
#	the logic stage, the tms stage sending to the mock TMS (live), failed
#	requests charged and retried (the mock answers 500 for a while),
#	rejected messages moved to failures, a failure digest whose alert the
#	launcher POSTs (the mock answers it 400, so the launcher records a
#	failed POST), and a replay with retry_failures().  In the end every
#	notice is delivered with the right key, and public.pwned is empty.
#
# The old code (0.1) ran its SQL with the database's search_path and
# unqualified names: the logic stage's unnest($1::bigint[]) and
# status IN (...), the claims' and the launcher's stage = '...', the tms
# render's 'dn-' || order_id || '-' || to_char(ship_date, ...), the
# lease's 'the lease of sender ' || leased_by and the launcher's
# 2 ^ least(post_attempts, 12) all resolved to the shadows, which then
# ran as superuser inside the workers and the launcher.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 200;            # orders; the last 10 get phones the mock rejects
my $REJECTED = 10;

my $mock = start_mock();
my $node = tms_node(
	'search_path', $mock, conf => qq{
courier.max_attempts = 100
courier.tms_breaker_cooldown = '200ms'
courier.alert_url = '$mock->{base}/alerts'
});

# The test's own sessions resolve names in pg_catalog only, whatever the
# database sets, so that nothing the test itself runs can reach a shadow.
# Only app_sql() (evil, as the app) runs with the database's path.
$ENV{PGOPTIONS} = '-c search_path=pg_catalog,pg_temp';

# app_sql(SQL): SQL in a session of evil with the database's search_path.
sub app_sql
{
	my ($sql) = @_;
	local $ENV{PGOPTIONS};
	delete $ENV{PGOPTIONS};
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', 'evil' ]);
}

# pwned(): the rows the shadows left, one line each.
sub pwned
{
	return query($node,
		q{SELECT what || ' by ' || by_user || ' in ' || coalesce(backend, '?')
			FROM public.pwned ORDER BY 1});
}

# ---------------------------------------------------------------------------
# The role, the schemas, the table the shadows write to.
# ---------------------------------------------------------------------------
query($node, q{
CREATE ROLE evil LOGIN;
GRANT courier_app TO evil;
GRANT CREATE ON SCHEMA public TO evil;
CREATE SCHEMA evil_schema AUTHORIZATION evil;
CREATE TABLE public.pwned (
	what		text NOT NULL,
	by_user		text NOT NULL DEFAULT current_user,
	backend		text,
	at			timestamptz NOT NULL DEFAULT clock_timestamp());
GRANT SELECT, INSERT ON public.pwned TO PUBLIC;
});

# The shadows, the same in both schemas, created by evil.  Their bodies
# name everything they use in pg_catalog, so they do not call each other.
my $shadows = '';
for my $s (qw(public evil_schema))
{
	my $log = qq{INSERT INTO public.pwned (what, backend) VALUES (\$w\$WHAT\$w\$,
		(SELECT backend_type FROM pg_catalog.pg_stat_activity
		  WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()));};
	my %body = (
		"$s.to_char(date, text) RETURNS text" =>
		  'RETURN pg_catalog.to_char($1::pg_catalog.timestamp, $2);',
		"$s.unnest(bigint[]) RETURNS SETOF bigint" =>
		  'RETURN QUERY SELECT pg_catalog.unnest($1);',
		"$s.stage_eq(courier.stage, courier.stage) RETURNS boolean" =>
		  'RETURN pg_catalog.enum_eq($1, $2);',
		"$s.status_eq(courier.order_status, courier.order_status) RETURNS boolean" =>
		  'RETURN pg_catalog.enum_eq($1, $2);',
		"$s.cat_bigint(text, bigint) RETURNS text" =>
		  'RETURN pg_catalog.textcat($1, $2::pg_catalog.text);',
		"$s.cat_int(text, integer) RETURNS text" =>
		  'RETURN pg_catalog.textcat($1, $2::pg_catalog.text);',
		"$s.pow_int(integer, integer) RETURNS double precision" =>
		  'RETURN pg_catalog.dpow($1::pg_catalog.float8, $2::pg_catalog.float8);',
	);
	for my $sig (sort keys %body)
	{
		my ($what) = $sig =~ /^(.*?\)) RETURNS/;
		(my $l = $log) =~ s/WHAT/$what/;
		$shadows .= qq{
CREATE FUNCTION $sig LANGUAGE plpgsql AS \$f\$
BEGIN
	$l
	$body{$sig}
END \$f\$;
};
	}
	$shadows .= qq{
CREATE OPERATOR $s.= (LEFTARG = courier.stage, RIGHTARG = courier.stage,
	FUNCTION = $s.stage_eq);
CREATE OPERATOR $s.= (LEFTARG = courier.order_status, RIGHTARG = courier.order_status,
	FUNCTION = $s.status_eq);
CREATE OPERATOR $s.|| (LEFTARG = text, RIGHTARG = bigint, FUNCTION = $s.cat_bigint);
CREATE OPERATOR $s.|| (LEFTARG = text, RIGHTARG = integer, FUNCTION = $s.cat_int);
CREATE OPERATOR $s.^ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = $s.pow_int);
};
}
$node->safe_psql('postgres', $shadows, extra_params => [ '-U', 'evil' ]);
query($node, 'ALTER DATABASE postgres SET search_path = evil_schema, public');

# ---------------------------------------------------------------------------
# The shadows are live: evil's own session with the database's path runs
# each of them (the evil_schema one: that schema comes first).
# ---------------------------------------------------------------------------
is(app_sql('SHOW search_path'), 'evil_schema, public',
	"evil's session has the database's search_path");
is( app_sql(q{
	SELECT to_char(current_date, 'YYYY') = extract(year FROM current_date)::text,
		   (SELECT sum(x) FROM unnest(ARRAY[1, 2]::bigint[]) AS x),
		   'logic'::courier.stage = 'tms',
		   'paid'::courier.order_status IN ('paid', 'shipping_requested'),
		   'dn-' || 5::bigint || '-' || 7,
		   2 ^ 3}),
	't|3|f|t|dn-5-7|8', 'the shadows return the values pg_catalog would');
is( query($node, 'SELECT string_agg(DISTINCT what, \',\' ORDER BY what) FROM public.pwned'),
	'evil_schema.cat_bigint(text, bigint),evil_schema.cat_int(text, integer),'
	  . 'evil_schema.pow_int(integer, integer),evil_schema.stage_eq(courier.stage, courier.stage),'
	  . 'evil_schema.status_eq(courier.order_status, courier.order_status),'
	  . 'evil_schema.to_char(date, text),evil_schema.unnest(bigint[])',
	'every shadow ran in that session and logged itself to public.pwned');
query($node, 'DELETE FROM public.pwned');

# ---------------------------------------------------------------------------
# Restart: the launcher and the workers start under the database's path.
# ---------------------------------------------------------------------------
$node->restart;
ok( poll_until(
		$node, q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type IN ('courier launcher', 'courier logic worker', 'courier tms worker')},
		'3', 30),
	'after the restart the launcher, a logic worker and a tms worker run');

# Requests that fail for a while (charged and retried), and rejected phones.
mock_control($mock, error_rate => 1, reject_prefix => '0109');

is( app_sql(qq{
	SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
		'order_id', g,
		'seller_id', g % 50 + 1,
		'customer_phone', CASE WHEN g > $N - $REJECTED THEN '0109' ELSE '0101' END
						  || lpad(g::text, 7, '0'),
		'product_name', 'corn',
		'promised_ship_date', (current_date + 3)::text)))
	  FROM generate_series(1, $N) AS g}),
	$N, "evil registers $N orders through the app API");
is(app_sql('SELECT courier.request_shipping(ARRAY[1, 2, 3]::bigint[])'), '3',
	'evil requests shipping for 3 of them');
my $req = app_sql(qq{
	SELECT courier.delay_orders(array(SELECT generate_series(1, $N)::bigint),
								'rain', current_date + 5)});
like($req, qr/^\d+$/, "evil delays the $N orders");

ok(wait_for(sub { mock_stats($mock)->{status_5xx} >= 20 }, 60,
		'the mock answered 20 requests with 500'),
	'the logic stage applied the delay and the first sends fail with 500');
ok( poll_for($node,
		q{SELECT 1 FROM courier.notices WHERE status = 'pending' AND attempts >= 1 LIMIT 1}, 30),
	'failed sends are charged an attempt and wait for their retry');
mock_control($mock, error_rate => 0);

ok( poll_until(
		$node, "SELECT total, done, failed, pending FROM courier.request_status($req)",
		"$N|$N|0|0", 60),
	"the delay of all $N orders is applied");
ok( poll_until(
		$node, q{
		SELECT count(*) FILTER (WHERE status = 'delivered'), count(*) FILTER (WHERE status = 'failed')
		  FROM courier.notices},
		($N - $REJECTED) . "|$REJECTED", 60),
	'once the mock answers again, every notice is delivered except the rejected ones, which failed');

# The digest and the launcher's POST of its alert (answered 400).
is(query($node, 'SELECT courier.failure_digest()'), $REJECTED,
	"failure_digest() counts the $REJECTED rejected notices");
ok( poll_until(
		$node, 'SELECT post_attempts >= 1 AND posted_at IS NULL FROM courier.alerts',
		't', 30),
	'the launcher POSTed the alert and recorded that it failed');

# Replay the failures once the phones are accepted.
mock_control($mock, reject_prefix => '');
is(query($node, 'SELECT courier.retry_failures()'), $REJECTED,
	"retry_failures() puts the $REJECTED failures back in the queue");
ok( poll_until(
		$node, q{SELECT count(*) FILTER (WHERE status = 'delivered'), count(*) FROM courier.notices},
		"$N|$N", 60),
	"after the replay all $N notices are delivered");

is_deeply(
	[ sort @{ mock_delivered($mock) } ],
	notice_keys($node, 'true'),
	'the mock got exactly one message per notice, under the right key');

# ---------------------------------------------------------------------------
# No shadow ran anywhere.
# ---------------------------------------------------------------------------
my $left = pwned();
is($left, '', 'public.pwned is empty: no shadow ran in the launcher, the workers or the API');
diag("shadows that ran:\n$left") if $left ne '';

$node->stop;
done_testing();
