
# 081_alertmanager_reads_courier_alerts.pl
#	With courier.alert_format = alertmanager, Debian's real Alertmanager
#	(prometheus-alertmanager) understands courier's alerts, and they
#	resolve when their condition clears:
#	- new failures raise CourierNewFailures{stage} (labels, annotations,
#	  an explicit endsAt ahead); the next digest posts it again while the
#	  failures are open; retried, the alert is resolved (gone from
#	  GET /api/v2/alerts);
#	- a queue older than courier.alert_backlog_age (changed live with
#	  ALTER SYSTEM + reload) raises CourierBacklogOld{stage}, a paused
#	  subscriber's CourierBacklogOld{stage="fanout",subscriber}; 0 turns
#	  that alert off;
#	- an open TMS breaker raises CourierBreakerOpen{stage="tms"} (critical),
#	  a subscriber's CourierBreakerOpen{stage="fanout",subscriber}; both
#	  are NOTIFYed too;
#	- Alertmanager down: the alert stays queued in courier.alerts (the
#	  failed POST recorded), a newer digest supersedes it, and the newest
#	  is delivered once Alertmanager is back;
#	- Alertmanager unreachable while a "firing" waits and the condition
#	  clears: the "resolved" supersedes it, the outdated "firing" is never
#	  sent, and Alertmanager ends the alert;
#	- a URL that is not Alertmanager's API is named in the log's hint, and
#	  so is the format when courier's own JSON goes to Alertmanager's API;
#	- bad settings are refused with the allowed values or range;
#	- the shipped Prometheus rules pass promtool check rules and
#	  promtool test rules (and broken copies fail both), and the example
#	  alertmanager.yml passes amtool check-config.
#
# The binaries come from Debian's prometheus and prometheus-alertmanager
# packages (scripts/install_deps.sh): without them this test fails.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use File::Copy qw(copy);
use HTTP::Tiny;
use IO::Socket::INET;
use IPC::Run;
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Utils;
use Test::More;

my $repo = $ENV{COURIER_REPO} // "$FindBin::RealBin/../..";
my $monitoring = "$repo/docs/monitoring";
my $tmp = PostgreSQL::Test::Utils::tempdir();
my $http = HTTP::Tiny->new(timeout => 10);

# which(NAME): the path of the program NAME on PATH, or undef.
sub which
{
	my ($name) = @_;
	for my $dir (split /:/, $ENV{PATH} // '', -1)
	{
		my $path = ($dir eq '' ? '.' : $dir) . "/$name";
		return $path if -f $path && -x _;
	}
	return undef;
}

my %bin = map { $_ => which($_) } qw(prometheus-alertmanager promtool amtool);
for my $name (sort keys %bin)
{
	ok(defined $bin{$name}, "$name is installed")
	  or diag("$name is missing: install Debian's prometheus and prometheus-alertmanager"
		  . " packages (scripts/install_deps.sh)");
}
die "the Prometheus and Alertmanager binaries are missing\n"
  if grep { !defined } values %bin;

# run(ARGV...): (exit code, stdout, stderr) of a program run to its end.
sub run
{
	my (@argv) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@argv, '<', \undef, '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# ---------------------------------------------------------------------------
# The shipped rules and the example Alertmanager configuration
# ---------------------------------------------------------------------------
my ($rc, $out, $err) = run($bin{promtool}, 'check', 'rules', "$monitoring/courier-rules.yml");
is($rc, 0, 'promtool check rules courier-rules.yml exits 0') or diag("$out$err");
like($out, qr/SUCCESS: [1-9]\d* rules found/, '... and finds the rules');

($rc, $out, $err) = run($bin{promtool}, 'test', 'rules', "$monitoring/courier-rules.test.yml");
is($rc, 0, 'promtool test rules courier-rules.test.yml exits 0') or diag("$out$err");
like($out, qr/SUCCESS/, '... and its unit tests pass');

($rc, $out, $err) = run($bin{amtool}, 'check-config', "$monitoring/alertmanager.yml");
is($rc, 0, 'amtool check-config accepts the example alertmanager.yml') or diag("$out$err");
like($out, qr/SUCCESS/, '... SUCCESS');

# A copy with one expression cut short must fail the check, and a copy
# with another threshold must fail the unit tests: both checks can fail.
my $rules = slurp_file("$monitoring/courier-rules.yml");
my $broken = $rules;
ok($broken =~ s/(expr: courier_tms_breaker_open) > 0/$1 >/, 'a broken copy of the rules is made');
mkdir "$tmp/broken";
append_to_file("$tmp/broken/courier-rules.yml", $broken);
($rc, $out, $err) = run($bin{promtool}, 'check', 'rules', "$tmp/broken/courier-rules.yml");
is($rc, 1, 'promtool check rules fails on the broken copy (exit 1)');
like($err, qr/FAILED:.*CourierBreakerOpen.*parse error/s, '... naming the rule and the parse error');

my $loose = $rules;
ok($loose =~ s/(courier_queue_oldest_age_seconds\{stage!="fanout"\}) > 900/$1 > 9000/,
	'a copy with another backlog threshold is made');
mkdir "$tmp/loose";
append_to_file("$tmp/loose/courier-rules.yml", $loose);
copy("$monitoring/courier-rules.test.yml", "$tmp/loose/courier-rules.test.yml")
  or die "copy: $!";
($rc, $out, $err) = run($bin{promtool}, 'test', 'rules', "$tmp/loose/courier-rules.test.yml");
isnt($rc, 0, 'promtool test rules fails when the rules change the threshold');
like("$out$err", qr/FAILED.*alertname: CourierBacklogOld/s, '... on the CourierBacklogOld test');

# ---------------------------------------------------------------------------
# Alertmanager, started and stopped by this test (killed by pid in END)
# ---------------------------------------------------------------------------

# free_port(): a TCP port of 127.0.0.1 nobody listens on (now).
sub free_port
{
	my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
		Proto => 'tcp', Listen => 1) or die "cannot listen: $!";
	my $port = $s->sockport;
	close $s;
	return $port;
}

my $am_port = free_port();
my $am_base = "http://127.0.0.1:$am_port";
my $am_pid;
append_to_file("$tmp/am.yml", <<'EOC');
route: {receiver: "null", group_wait: 0s, group_interval: 1s, repeat_interval: 1h}
receivers: [{name: "null"}]
EOC

# start_am(): start Alertmanager on $am_port and wait until it is ready.
sub start_am
{
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open STDOUT, '>>', "$tmp/am.log" or POSIX::_exit(126);
		open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
		exec($bin{'prometheus-alertmanager'}, "--config.file=$tmp/am.yml",
			"--storage.path=$tmp/am-data", "--web.listen-address=127.0.0.1:$am_port",
			'--cluster.listen-address=')
		  or POSIX::_exit(127);
	}
	$am_pid = $pid;
	return wait_for(sub { $http->get("$am_base/-/ready")->{status} == 200 }, 30,
		'Alertmanager answers /-/ready');
}

# stop_am(): SIGTERM to Alertmanager, and reap it.
sub stop_am
{
	return unless $am_pid;
	kill 'TERM', $am_pid;
	waitpid($am_pid, 0);
	$am_pid = undef;
	return;
}

END
{
	my $status = $?;
	stop_am();
	$? = $status;
}

# am_alerts(LABEL => VALUE, ...): the alerts Alertmanager lists (GET
# /api/v2/alerts: active, silenced or inhibited; never resolved ones)
# whose labels match, as an array ref; undef when it does not answer.
sub am_alerts
{
	my (%match) = @_;
	my $query = $http->www_form_urlencode(
		{ filter => [ map { qq{$_="$match{$_}"} } sort keys %match ] });
	my $res = $http->get("$am_base/api/v2/alerts?$query");
	return undef unless $res->{status} == 200;
	return decode_json($res->{content});
}

# am_wait(COUNT, LABEL => VALUE, ...): wait until Alertmanager lists COUNT
# alerts matching; returns them (array ref), or undef on timeout.
sub am_wait
{
	my ($count, %match) = @_;
	my $got;
	return wait_for(
		sub { $got = am_alerts(%match); defined $got && @$got == $count },
		30, "Alertmanager lists $count alert(s) matching "
		  . join(',', map { "$_=$match{$_}" } sort keys %match))
	  ? $got
	  : undef;
}

ok(start_am(), 'Alertmanager (Debian prometheus-alertmanager) starts on a free port');
is_deeply(am_alerts(), [], 'it lists no alert yet');

# ---------------------------------------------------------------------------
# courier, posting to it in the Alertmanager format from postgresql.conf
# ---------------------------------------------------------------------------
my $mock = start_mock();
my $node = tms_node(
	'am_alerts', $mock, conf => qq{
courier.alert_url = '$am_base/api/v2/alerts'
courier.alert_format = 'alertmanager'
courier.max_attempts = 1
courier.tms_breaker_threshold = 3
courier.tms_breaker_cooldown = '1s'
});
is(query($node, 'SHOW courier.alert_format'), 'alertmanager',
	'courier.alert_format = alertmanager from postgresql.conf');
is(query($node, 'SHOW courier.alert_backlog_age'), '15min',
	'courier.alert_backlog_age defaults to 15min');

# the labels every courier alert carries
my %common = (service => 'courier', database => 'postgres', cluster => 'am_alerts');

# from_now(TIMESTAMP): seconds from now to an RFC 3339 time, as PostgreSQL reads it.
sub from_now
{
	my ($ts) = @_;
	return query($node, "SELECT round(extract(epoch FROM '$ts'::timestamptz - now()))");
}

# digest(): run the digest once; returns the new failures it counts.
sub digest
{
	return query($node, 'SELECT courier.failure_digest()');
}

# ---------------------------------------------------------------------------
# New failures: CourierNewFailures{stage="logic"}
# ---------------------------------------------------------------------------
query($node, q{
CREATE FUNCTION public.seller_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id % 10 = 0 THEN
		RAISE EXCEPTION 'seller closed the order';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER seller_closed BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.seller_closed();
});
is(register_tms_orders($node, 1, 20), 20, 'register 20 orders');
my $req = delay_tms($node, 1, 20, 10);
ok(poll_until($node, "SELECT total, done, failed, pending FROM courier.request_status($req)",
		'20|18|2|0', 60),
	'orders 10 and 20 fail in the logic stage, the 18 others are applied');
my $listener = listen_alerts($node);
is(digest(), '2', 'failure_digest() counts the 2 new failures');
ok(heard_alert($listener, 'new_failures'), 'and still NOTIFYs them (courier_alerts)');

my $got = am_wait(1, alertname => 'CourierNewFailures');
ok($got, 'Alertmanager lists CourierNewFailures');
my $alert = $got ? $got->[0] : {};
is_deeply($alert->{labels},
	{ %common, alertname => 'CourierNewFailures', severity => 'warning', stage => 'logic' },
	'labels: alertname, severity warning, service, database, cluster, stage logic');
is($alert->{status}{state}, 'active', 'the alert is active');
is($alert->{annotations}{open_failures}, '2', 'annotation open_failures: 2');
is($alert->{annotations}{new_failures}, '2', 'annotation new_failures: 2');
like($alert->{annotations}{summary}, qr/^2 open failure\(s\) in stage logic, 2 new/,
	'annotation summary');
like($alert->{annotations}{description}, qr/2 x "seller closed the order"/,
	'annotation description: the top error, counted');
like($alert->{annotations}{hint}, qr/courier\.retry_failures\(stage => 'logic'\)/,
	'annotation hint: how to retry them');
my $ends = $alert->{endsAt} // 'epoch';
cmp_ok(from_now($ends), '>=', 14 * 60, 'endsAt is set explicitly, 15 min ahead');
cmp_ok(from_now($ends), '<=', 15 * 60, '... and no more');
ok(poll_until($node, q{
	SELECT format, posted_at IS NOT NULL, post_error IS NULL FROM courier.alerts
	 WHERE labels ->> 'alertname' = 'CourierNewFailures'}, 'alertmanager|t|t', 30),
	'the outbox row is in the alertmanager format, posted (once answered), no error');

# The next digest, no new failure, the old ones still open: posted again.
is(digest(), '0', 'the next digest has no new failure');
ok(poll_until($node, q{
	SELECT count(*) FILTER (WHERE posted_at IS NOT NULL) FROM courier.alerts
	 WHERE labels ->> 'alertname' = 'CourierNewFailures'}, '2', 30),
	'but posts CourierNewFailures again: the failures are still open');
ok( wait_for(
		sub {
			my $l = am_alerts(alertname => 'CourierNewFailures');
			$l && @$l == 1 && $l->[0]{endsAt} gt $ends
			  && $l->[0]{annotations}{new_failures} eq '0';
		},
		30, 'CourierNewFailures updated'),
	'Alertmanager keeps one alert (same labels), with a later endsAt and new_failures 0');

# Retried after the fix: resolved.
query($node, 'DROP TRIGGER seller_closed ON courier.orders');
is(query($node, "SELECT courier.retry_failures(stage => 'logic')"), '2', 'retry the 2 failures');
ok(poll_until($node, "SELECT total, done, failed, pending FROM courier.request_status($req)",
		'20|20|0|0', 60),
	'they are applied');
digest();
ok(am_wait(0, alertname => 'CourierNewFailures'),
	'once no failure is open, the digest resolves CourierNewFailures: Alertmanager lists it no more');
ok(poll_until($node, q{
	SELECT posted_at IS NOT NULL, (payload -> 0 ->> 'endsAt')::timestamptz <= now()
	  FROM courier.alerts WHERE labels ->> 'alertname' = 'CourierNewFailures'
	 ORDER BY alert_id DESC LIMIT 1}, 't|t', 30),
	'the last row is the resolution (endsAt not ahead), posted');
is(query($node, 'SELECT count(*) FROM courier.alerts_firing'), '0',
	'courier.alerts_firing is empty');

# ---------------------------------------------------------------------------
# Old backlogs: CourierBacklogOld{stage="tms"} and, for a paused
# subscriber, CourierBacklogOld{stage="fanout",subscriber}; the threshold
# changed live
# ---------------------------------------------------------------------------
is(query($node, qq{
	SELECT courier.subscribe('crm', '$mock->{base}/hooks/crm', ARRAY['order.delayed']) > 0}),
	't', 'subscriber crm subscribes to order.delayed');
query($node, q{SELECT courier.pause_subscriber('crm')});
query($node, q{ALTER SYSTEM SET courier.pause_tms = on});
query($node, q{ALTER SYSTEM SET courier.alert_backlog_age = '2s'});
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.alert_backlog_age', '2s', 30),
	'ALTER SYSTEM + reload: courier.alert_backlog_age = 2s');
delay_tms($node, 1, 5, 11);
ok(poll_until($node, q{
	SELECT q.backlog = 5 AND q.oldest_age > interval '2 seconds'
		   AND s.backlog = 5 AND s.oldest_undelivered_age > interval '2 seconds'
	  FROM courier.queue_stats q, courier.subscribers s
	 WHERE q.stage = 'tms' AND s.name = 'crm'}, 't', 60),
	'with the tms stage and crm paused, 5 notices and 5 events wait more than 2 s');
digest();
$got = am_wait(2, alertname => 'CourierBacklogOld');
ok($got, 'the digest raises CourierBacklogOld twice');
my %backlog = map { $_->{labels}{stage} => $_ } @{ $got // [] };
$alert = $backlog{tms} // {};
is_deeply($alert->{labels},
	{ %common, alertname => 'CourierBacklogOld', severity => 'warning', stage => 'tms' },
	'one for stage tms, severity warning (the drained logic stage raises none)');
is($alert->{status}{state}, 'active', 'the alert is active');
is($alert->{annotations}{backlog}, '5', 'annotation backlog: 5');
is($alert->{annotations}{threshold}, '00:00:02', 'annotation threshold: 2 s');
cmp_ok($alert->{annotations}{oldest_age_seconds} // 0, '>=', 2, 'annotation oldest_age_seconds');
like($alert->{annotations}{hint}, qr/courier\.pause_tms/, 'annotation hint names courier.pause_tms');
$alert = $backlog{fanout} // {};
is_deeply($alert->{labels},
	{ %common, alertname => 'CourierBacklogOld', severity => 'warning', stage => 'fanout',
	  subscriber => 'crm' },
	'one for subscriber crm (stage fanout), not one for the fanout stage as a whole');
is($alert->{status}{state}, 'active', 'the alert is active');
is("$alert->{annotations}{backlog}|$alert->{annotations}{paused}", '5|true',
	'annotations: backlog 5, paused');
like($alert->{annotations}{hint}, qr/courier\.resume_subscriber\('crm'\)/,
	'annotation hint: how to resume it');

query($node, q{ALTER SYSTEM RESET courier.pause_tms});
query($node, 'SELECT pg_reload_conf()');
query($node, q{SELECT courier.resume_subscriber('crm')});
ok(poll_until($node, q{
	SELECT q.backlog, s.backlog FROM courier.queue_stats q, courier.subscribers s
	 WHERE q.stage = 'tms' AND s.name = 'crm'}, '0|0', 60),
	'unpaused, the tms stage and crm drain');
digest();
ok(am_wait(0, alertname => 'CourierBacklogOld'), 'the digest resolves both CourierBacklogOld');

# ---------------------------------------------------------------------------
# Breakers open while Alertmanager is down: queued, then delivered
# ---------------------------------------------------------------------------
query($node, q{ALTER SYSTEM SET courier.alert_backlog_age = 0});
query($node, q{ALTER SYSTEM SET courier.max_attempts = 1000});
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.alert_backlog_age', '0', 30),
	'courier.alert_backlog_age = 0: no backlog alert');

stop_am();
ok(!defined am_alerts(), 'Alertmanager is stopped');
mock_control($mock, error_rate => 1.0, error_status => 500);
delay_tms($node, 1, 9, 12);
ok(poll_until($node, q{SELECT breaker <> 'closed' FROM courier.tms_state()}, 't', 60),
	'the TMS answers 500 to everything: its breaker opens');
ok(poll_until($node,
		q{SELECT breaker <> 'closed' FROM courier.subscribers WHERE name = 'crm'}, 't', 60),
	'and so does subscriber crm\'s');
ok(poll_until($node, q{
	SELECT backlog > 0 AND oldest_age > interval '2 seconds'
	  FROM courier.queue_stats WHERE stage = 'tms'}, 't', 60),
	'notices wait more than 2 s');
my $before = query($node, 'SELECT coalesce(max(alert_id), 0) FROM courier.alerts');
digest();
ok(heard_alert($listener, 'breaker_open'), 'the breakers opening are NOTIFYed (breaker_open)');
$listener->quit;
is(query($node, qq{
	SELECT count(*) FROM courier.alerts
	 WHERE alert_id > $before AND labels ->> 'alertname' = 'CourierBacklogOld'}),
	'0', 'with courier.alert_backlog_age = 0, the old tms backlog raises nothing');
ok(poll_until($node, qq{
	SELECT bool_and(posted_at IS NULL AND post_attempts >= 1 AND post_error ~* 'connect')
	  FROM courier.alerts WHERE alert_id > $before}, 't', 30),
	'Alertmanager down: the POSTs fail, are recorded, and the alerts stay queued');
my $first = query($node, qq{
	SELECT string_agg(alert_id::text, ',' ORDER BY alert_id) FROM courier.alerts
	 WHERE alert_id > $before});
digest();
is(query($node, qq{
	SELECT count(*) FROM courier.alerts WHERE alert_id IN ($first)
	   AND superseded_by IS NOT NULL AND posted_at IS NULL}),
	'2', 'the next digest supersedes both queued alerts with newer rows');

ok(start_am(), 'Alertmanager is started again');
$got = am_wait(2, alertname => 'CourierBreakerOpen');
ok($got, 'the queued alerts reach it: 2 CourierBreakerOpen');
my %by_stage = map { $_->{labels}{stage} => $_ } @{ $got // [] };
is_deeply($by_stage{tms}{labels},
	{ %common, alertname => 'CourierBreakerOpen', severity => 'critical', stage => 'tms' },
	"the TMS's breaker: stage tms, severity critical");
like($by_stage{tms}{annotations}{summary} // '', qr/TMS circuit breaker is (open|probing)/,
	'annotation summary');
is_deeply($by_stage{fanout}{labels},
	{ %common, alertname => 'CourierBreakerOpen', severity => 'warning', stage => 'fanout',
	  subscriber => 'crm' },
	"crm's breaker: stage fanout, subscriber crm, severity warning");
is(join(',', map { $_->{status}{state} } @{ $got // [] }), 'active,active', 'both active');
is(query($node, qq{
	SELECT count(*) FROM courier.alerts WHERE alert_id IN ($first) AND posted_at IS NULL}),
	'2', 'the superseded rows were never posted');

# ---------------------------------------------------------------------------
# Resolved while the firing post waits: the outdated firing is never sent
# ---------------------------------------------------------------------------
my $dead_port = free_port();
query($node, qq{ALTER SYSTEM SET courier.alert_url = 'http://127.0.0.1:$dead_port/api/v2/alerts'});
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.alert_url', "http://127.0.0.1:$dead_port/api/v2/alerts", 30),
	'courier.alert_url now points where nobody answers');
$before = query($node, 'SELECT max(alert_id) FROM courier.alerts');
digest();
ok(poll_until($node, qq{
	SELECT count(*) FILTER (WHERE posted_at IS NULL AND post_attempts >= 1)
	  FROM courier.alerts WHERE alert_id > $before}, '2', 30),
	'the breakers still open: the digest\'s firing posts fail and wait');
my $firing = query($node, qq{
	SELECT string_agg(alert_id::text, ',' ORDER BY alert_id) FROM courier.alerts
	 WHERE alert_id > $before});

mock_control($mock, error_rate => 0);
ok(poll_until($node, q{SELECT breaker FROM courier.tms_state()}, 'closed', 60),
	'the TMS recovers: its breaker closes');
ok(poll_until($node, q{SELECT breaker FROM courier.subscribers WHERE name = 'crm'}, 'closed', 60),
	'and crm\'s');
$before = query($node, 'SELECT max(alert_id) FROM courier.alerts');
digest();
is(query($node, qq{
	SELECT count(*) FROM courier.alerts a
	  JOIN courier.alerts r ON r.alert_id = a.superseded_by
	 WHERE a.alert_id IN ($firing) AND r.alert_id > $before
	   AND (r.payload -> 0 ->> 'endsAt')::timestamptz <= now()}),
	'2', 'the digest resolves both, and the resolutions supersede the waiting firing posts');

query($node, qq{ALTER SYSTEM SET courier.alert_url = '$am_base/api/v2/alerts'});
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, qq{
	SELECT count(*) FILTER (WHERE posted_at IS NOT NULL) FROM courier.alerts
	 WHERE alert_id > $before}, '2', 60),
	'Alertmanager reachable again: the resolutions are posted');
ok(am_wait(0, alertname => 'CourierBreakerOpen'),
	'and Alertmanager ends both CourierBreakerOpen alerts');
is(query($node, qq{
	SELECT count(*) FROM courier.alerts WHERE alert_id IN ($firing) AND posted_at IS NULL}),
	'2', 'the outdated firing posts were never sent');
is(query($node, q{
	SELECT count(*) FROM courier.alerts WHERE posted_at IS NULL AND superseded_by IS NULL}),
	'0', 'nothing is left to post');
is_deeply(am_alerts(service => 'courier'), [], 'Alertmanager lists no courier alert');

# A URL that is not Alertmanager's alerts endpoint: the log says which is.
query($node, qq{ALTER SYSTEM SET courier.alert_url = '$am_base/alerts'});
query($node, 'SELECT pg_reload_conf()');
ok(poll_until($node, 'SHOW courier.alert_url', "$am_base/alerts", 30),
	'courier.alert_url now misses /api/v2');
my $log = log_offset($node);
query($node, q{
	INSERT INTO courier.alerts (kind, format, labels, payload)
	VALUES ('test', 'alertmanager', '{"alertname": "CourierTest"}',
			'[{"labels": {"alertname": "CourierTest"}}]')});
ok( poll_log(
		$node,
		qr{WARNING:.*could not post alert \d+ to courier\.alert_url: alert URL answered HTTP 404.*?HINT:.*?http://alertmanager:9093/api/v2/alerts}s,
		$log, 30),
	'Alertmanager answers 404: the WARNING hints at its /api/v2/alerts endpoint');

# Alertmanager's endpoint, but courier's own format: the log says to switch.
query($node, qq{
	ALTER SYSTEM SET courier.alert_url = '$am_base/api/v2/alerts';
	ALTER SYSTEM SET courier.alert_format = 'courier';
	SELECT pg_reload_conf();});
ok(poll_until($node, 'SHOW courier.alert_format', 'courier', 30),
	'courier.alert_format is back to courier, the URL Alertmanager\'s API');
$log = log_offset($node);
query($node, q{
	INSERT INTO courier.alerts (kind, payload) VALUES ('test', '{"alert": "test"}')});
ok( poll_log(
		$node,
		qr{WARNING:.*could not post alert \d+ to courier\.alert_url: alert URL answered HTTP 400.*?HINT:.*?set courier\.alert_format = alertmanager}s,
		$log, 30),
	'Alertmanager refuses courier\'s own JSON (400): the WARNING hints at courier.alert_format');

# ---------------------------------------------------------------------------
# Bad settings
# ---------------------------------------------------------------------------
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{ALTER SYSTEM SET courier.alert_format = 'prometheus'});
like($stderr, qr/invalid value for parameter "courier\.alert_format": "prometheus"/,
	'an unknown courier.alert_format is refused');
like($stderr, qr/Available values: courier, alertmanager/, '... with the allowed values');
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{ALTER SYSTEM SET courier.alert_backlog_age = '-5min'});
like($stderr, qr/is outside the valid range for parameter "courier\.alert_backlog_age"/,
	'a negative courier.alert_backlog_age is refused');

$node->stop;
done_testing();
