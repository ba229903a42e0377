
# 080_prometheus_scrapes_courier.pl
#	courier's figures reach Prometheus for real: Debian's
#	prometheus-postgres-exporter, configured with docs/monitoring/queries.yaml
#	and logged in as a role that holds only courier_monitor, is scraped by
#	Debian's prometheus every second, and Prometheus's query API gives
#	the same series (names, labels, values) as SELECT courier.metrics():
#	- while the tms stage is paused with a bulk delay queued (the backlog
#	  and its age, nothing sent yet);
#	- after it is sent, with rejected numbers: the items counters, the open
#	  failures, the TMS request counters and the latency histogram (the mock
#	  answers 40 ms late, so every request falls in the buckets above 25 ms);
#	- the metadata types (counter, gauge, histogram) and no server label;
#	- every expression of docs/monitoring/grafana-dashboard.json is valid
#	  PromQL that names only metrics the exporter exposes;
#	- the rules of docs/monitoring/courier-rules.yml load and evaluate
#	  without error, and the open failures make their alert pending or firing.
#
# The daemons run in the foreground on free ports of 127.0.0.1, with their
# data in this test's temporary directory; they are killed in END.  They
# are not optional: CI installs them (scripts/install_deps.sh).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use HTTP::Tiny;
use IO::Socket::INET;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $EXPORTER = '/usr/bin/prometheus-postgres-exporter';
my $PROMETHEUS = '/usr/bin/prometheus';
my $monitoring = "$FindBin::RealBin/../../docs/monitoring";
my $http = HTTP::Tiny->new(timeout => 10);
my @daemons;

END
{
	my $status = $?;
	for my $d (@daemons)
	{
		eval { $d->kill_kill(grace => 5); 1 };
	}
	$? = $status;
}

ok(-x $EXPORTER, "$EXPORTER is installed (prometheus-postgres-exporter)")
  or BAIL_OUT('prometheus-postgres-exporter is missing: scripts/install_deps.sh installs it');
ok(-x $PROMETHEUS, "$PROMETHEUS is installed (prometheus)")
  or BAIL_OUT('prometheus is missing: scripts/install_deps.sh installs it');

# free_port(): a port nothing listens on now.
sub free_port
{
	my $s = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Proto => 'tcp',
		Listen => 1) or die "cannot find a free port: $!";
	my $port = $s->sockport;
	close $s;
	return $port;
}

# ---------------------------------------------------------------------------
# courier, with the tms stage paused from server start, and the mock
# answering 40 ms late and rejecting numbers starting 0109.
# ---------------------------------------------------------------------------
my $mock = start_mock();
mock_control($mock, latency_ms => 40, reject_prefix => '0109');
my $node = tms_node('prometheus', $mock, conf => "courier.pause_tms = on\n");

query($node, q{
	CREATE ROLE courier_exporter LOGIN;
	GRANT courier_monitor TO courier_exporter});
is( query($node, q{
	SELECT has_table_privilege('courier_exporter', 'courier.notices', 'SELECT')
		OR has_table_privilege('courier_exporter', 'courier.failures', 'SELECT')
		OR has_function_privilege('courier_exporter',
			'courier.retry_failures(bigint[], courier.stage, text, timestamptz, timestamptz, text)', 'EXECUTE')}),
	'f',
	'the exporter role reads no courier table and cannot retry failures');
is( query($node, q{
	SET ROLE courier_exporter;
	SELECT count(*) > 0 FROM courier.metric_samples('{courier_queue_backlog}')}),
	't',
	'with only courier_monitor it reads courier.metric_samples()');

# ---------------------------------------------------------------------------
# The exporter and Prometheus
# ---------------------------------------------------------------------------
my $tmp = PostgreSQL::Test::Utils::tempdir();
my $exporter_port = free_port();
my $prom_port = free_port();
my $dsn = sprintf('host=%s port=%d user=courier_exporter dbname=postgres sslmode=disable',
	$node->host, $node->port);
my ($exp_out, $prom_out) = ('', '');

{
	local $ENV{DATA_SOURCE_NAME} = $dsn;
	push @daemons, IPC::Run::start(
		[
			$EXPORTER, "--web.listen-address=127.0.0.1:$exporter_port",
			"--extend.query-path=$monitoring/queries.yaml",
			'--disable-default-metrics', '--disable-settings-metrics',
			'--no-collector.database', '--no-collector.bgwriter'
		],
		'<', \undef, '>&', \$exp_out);
}

open my $fh, '>', "$tmp/prometheus.yml" or die $!;
print $fh <<"EOY";
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $monitoring/courier-rules.yml
scrape_configs:
  - job_name: courier
    static_configs:
      - targets: ['127.0.0.1:$exporter_port']
    metric_relabel_configs:
      - action: labeldrop
        regex: server
EOY
close $fh;
push @daemons, IPC::Run::start(
	[
		$PROMETHEUS, "--config.file=$tmp/prometheus.yml",
		"--storage.tsdb.path=$tmp/prometheus-data",
		"--web.listen-address=127.0.0.1:$prom_port"
	],
	'<', \undef, '>&', \$prom_out);
my $prom = "http://127.0.0.1:$prom_port";

# prom_get(PATH, PARAMS): the decoded JSON of a GET on Prometheus's API.
sub prom_get
{
	my ($path, %params) = @_;
	my $res = $http->get("$prom$path?" . $http->www_form_urlencode(\%params));
	return undef unless $res->{success} || $res->{status} == 400 || $res->{status} == 422;
	return eval { decode_json($res->{content}) };
}

# prom_series(EXPR): { 'name{label="v",...}' => value } of an instant
# query (labels sorted, job and instance left out), or undef on error.
sub prom_series
{
	my ($expr) = @_;
	my $r = prom_get('/api/v1/query', query => $expr);
	return undef unless $r && $r->{status} eq 'success';
	my %out;
	for my $s (@{ $r->{data}{result} })
	{
		my %l = %{ $s->{metric} };
		my $name = delete $l{__name__} // '';
		delete @l{qw(job instance)};
		$out{ series_key($name, \%l) } = $s->{value}[1];
	}
	return \%out;
}

sub series_key
{
	my ($name, $labels) = @_;
	return $name . '{' . join(',', map { qq{$_="$labels->{$_}"} } sort keys %$labels) . '}';
}

# courier_metrics(FAMILIES_REGEX): SELECT courier.metrics() as
# { 'name{labels sorted}' => value } for the sample names matching.
sub courier_metrics
{
	my ($re) = @_;
	my %out;
	for my $line (split /\n/, query($node, 'SELECT courier.metrics()'))
	{
		next if $line =~ /^#/ || $line eq '';
		my ($name, $labels, $value) = $line =~ /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/
		  or die "metrics() line not understood: $line";
		next unless $name =~ $re;
		my %l = ($labels // '') =~ /(\w+)="([^"]*)"/g;
		$out{ series_key($name, \%l) } = $value;
	}
	return \%out;
}

# same_figures(RE, WHAT): wait until Prometheus's latest samples of the
# courier series whose names match RE are exactly metrics()'s (the same
# series, equal values), then pass; fail with the difference otherwise.
sub same_figures
{
	my ($re, $what) = @_;
	my ($want, $got, $diff);
	my $ok = wait_for(
		sub {
			$want = courier_metrics($re);
			$got = prom_series(qq({__name__=~"courier_.+"}));
			return 0 unless $got;
			$got = { map { $_ => $got->{$_} } grep { /^([a-z_]+)\{/ && $1 =~ $re } keys %$got };
			$diff = join("\n", map {
					my ($a, $b) = ($want->{$_} // 'missing', $got->{$_} // 'missing');
					($a ne 'missing' && $b ne 'missing' && $a == $b) ? () : "  $_: metrics() $a, Prometheus $b"
				} sort { $a cmp $b } keys %{ { %$want, %$got } });
			return %$want && $diff eq '';
		},
		40, $what);
	ok($ok, $what) or diag("differences:\n$diff");
	return $got;
}

ok( wait_for(
		sub {
			my $r = prom_get('/api/v1/targets');
			return $r && grep { $_->{health} eq 'up' } @{ $r->{data}{activeTargets} // [] };
		},
		40,
		'Prometheus scraping the exporter'),
	'Prometheus scrapes the exporter (target up)')
  or diag("exporter output:\n$exp_out\nprometheus output:\n$prom_out");

# ---------------------------------------------------------------------------
# A bulk delay queued, not sent: the tms stage is paused
# ---------------------------------------------------------------------------
is(register_tms_orders($node, 1, 400, phone_prefix => '0101'), 400,
	'register 400 orders with numbers the mock accepts');
is(register_tms_orders($node, 401, 500, phone_prefix => '0109'), 100,
	'register 100 orders with numbers the mock rejects');
query($node, "SELECT courier.subscribe('shop', '$mock->{base}/hooks/shop', '{order.delayed}')");
my $request = delay_tms($node, 1, 500, 10);
ok( poll_until(
		$node,
		"SELECT backlog FROM courier.queue_stats WHERE stage = 'tms'",
		'500', 60),
	'the logic stage queued 500 notices; the paused tms stage sent none');

my $seen = same_figures(qr/^courier_(queue_backlog|queue_due|queue_in_flight|failures_open|items_total|batches_total)$/,
	'queued: Prometheus has the same queue, failure and item series as metrics(), with the same values');
is($seen->{'courier_queue_backlog{stage="tms"}'}, '500',
	'Prometheus: courier_queue_backlog{stage="tms"} is 500');
is($seen->{'courier_items_total{result="done",stage="logic"}'}, '500',
	'Prometheus: courier_items_total{stage="logic",result="done"} is 500');
is($seen->{'courier_items_total{result="done",stage="tms"}'}, '0',
	'Prometheus: nothing sent yet (courier_items_total{stage="tms",result="done"} is 0)');
my $age = prom_series('courier_queue_oldest_age_seconds{stage="tms"}');
ok($age && ($age->{'courier_queue_oldest_age_seconds{stage="tms"}'} // 0) > 0,
	'Prometheus: the oldest pending notice has an age');

# ---------------------------------------------------------------------------
# Sent: 400 delivered, 100 rejected into courier.failures
# ---------------------------------------------------------------------------
set_conf($node, pause_tms => 'off');
ok( poll_until(
		$node,
		"SELECT count(*) FROM courier.notices WHERE status = 'pending'",
		'0', 90),
	'the tms stage sends every notice once unpaused');
ok( poll_until(
		$node,
		"SELECT backlog FROM courier.subscribers WHERE name = 'shop'",
		'0', 60),
	'the subscriber shop accepted the 500 order.delayed events');
is( query($node, q{
	SELECT string_agg(status || ':' || n, ' ' ORDER BY status)
	  FROM (SELECT status, count(*) AS n FROM courier.notices GROUP BY status) s}),
	'delivered:400 failed:100', '400 delivered, 100 failed');

$seen = same_figures(qr/^courier_(queue_backlog|failures_open|items_total|batches_total|tms_events_total|tms_breaker_open|tms_request_duration_seconds_(bucket|sum|count)|subscriber_.*)$/,
	'sent: Prometheus has the same item, failure, TMS, latency and subscriber series as metrics(), with the same values');
note("what Prometheus saw after the send:\n" . join("\n",
		map { "  $_ $seen->{$_}" } grep { !/_bucket|dead_tuples/ } sort keys %$seen));
is($seen->{'courier_items_total{result="done",stage="tms"}'}, '400',
	'Prometheus: courier_items_total{stage="tms",result="done"} is 400');
is($seen->{'courier_items_total{result="failed",stage="tms"}'}, '100',
	'Prometheus: courier_items_total{stage="tms",result="failed"} is 100');
is($seen->{'courier_failures_open{stage="tms"}'}, '100',
	'Prometheus: courier_failures_open{stage="tms"} is 100');
is($seen->{'courier_queue_backlog{stage="tms"}'}, '0',
	'Prometheus: courier_queue_backlog{stage="tms"} is back to 0');
is($seen->{'courier_subscriber_events_total{result="delivered",subscriber="shop"}'}, '500',
	'Prometheus: courier_subscriber_events_total{subscriber="shop",result="delivered"} is 500');
my $count = $seen->{'courier_tms_request_duration_seconds_count{}'} // 0;
ok($count >= 1, "Prometheus: the latency histogram counted $count TMS requests");
is($seen->{'courier_tms_request_duration_seconds_bucket{le="0.025"}'}, '0',
	'no request answered 40 ms late falls in the 25 ms bucket');
is($seen->{'courier_tms_request_duration_seconds_bucket{le="+Inf"}'}, $count,
	'the +Inf bucket holds every request');
my $p50 = prom_series('histogram_quantile(0.5, courier_tms_request_duration_seconds_bucket)');
my ($median) = values %{ $p50 // {} };
ok(defined $median && $median > 0.025 && $median <= 1,
	'histogram_quantile(0.5) over the buckets is above 25 ms: ' . ($median // 'none'));

# ---------------------------------------------------------------------------
# Metadata, labels, the exporter's own health
# ---------------------------------------------------------------------------
my $meta = prom_get('/api/v1/metadata');
my %type = map { $_ => $meta->{data}{$_}[0]{type} } keys %{ $meta->{data} // {} };
my %want_type;
for my $line (split /\n/, query($node, 'SELECT courier.metrics()'))
{
	$want_type{$1} = $2 if $line =~ /^# TYPE (\S+) (\S+)$/;
}
ok(scalar(keys %want_type) >= 17, scalar(keys %want_type) . ' families in metrics()');
my @wrong = grep { ($type{$_} // 'missing') ne $want_type{$_} } sort keys %want_type;
is("@wrong", '', 'every family has the TYPE in Prometheus that metrics() gives it (counter, gauge, histogram)');
my $labelled = prom_series('count by (server) ({__name__=~"courier_.+"})');
is(join(',', keys %{ $labelled // {} }), '{}', 'no courier series carries the exporter\'s server label');
my $health = join(' ', map {
		my $v = prom_series($_);
		"$_=" . join(',', values %{ $v // {} });
	} qw(pg_up pg_exporter_last_scrape_error pg_exporter_user_queries_load_error));
is($health, 'pg_up=1 pg_exporter_last_scrape_error=0 pg_exporter_user_queries_load_error=0',
	'the exporter: connected, its queries loaded, its last scrape without error');
my $scrape = prom_series('pg_exporter_last_scrape_duration_seconds');
diag(sprintf('exporter scrape of courier: %.1f ms', 1000 * ((values %{ $scrape // {} })[0] // 0)));

# ---------------------------------------------------------------------------
# The Grafana dashboard: valid PromQL over the exporter's metrics
# ---------------------------------------------------------------------------
my $names = prom_get('/api/v1/label/__name__/values');
my %exposed = map { $_ => 1 } @{ $names->{data} // [] };
open my $dfh, '<', "$monitoring/grafana-dashboard.json" or die "dashboard: $!";
my $dashboard = decode_json(do { local $/; <$dfh> });
close $dfh;
my @exprs;
my $walk;
$walk = sub {
	my ($n) = @_;
	if (ref $n eq 'HASH')
	{
		push @exprs, $n->{expr} if defined $n->{expr} && !ref $n->{expr};
		$walk->($_) for values %$n;
	}
	elsif (ref $n eq 'ARRAY')
	{
		$walk->($_) for @$n;
	}
};
$walk->($dashboard);
ok(@exprs >= 15, scalar(@exprs) . ' expressions in the dashboard');

# dashboard_problems(EXPRS): what is wrong with each expression, checked
# against this Prometheus: unknown courier metrics, PromQL errors.
sub dashboard_problems
{
	my @problems;
	for my $e (@_)
	{
		(my $q = $e) =~ s/\$__rate_interval/1m/g;
		$q =~ s/\$instance/.*/g;
		my @unknown = grep { !$exposed{$_} } ($q =~ /\b(courier_[a-z0-9_]+)/g);
		push @problems, "$e: not exposed: @unknown" if @unknown;
		my $r = prom_get('/api/v1/query', query => $q);
		push @problems, "$e: " . ($r ? $r->{error} // '' : 'no answer')
		  unless $r && $r->{status} eq 'success';
	}
	return @problems;
}
my @problems = dashboard_problems(@exprs);
is(scalar(@problems), 0, 'every dashboard expression parses and names only exposed courier metrics')
  or diag(join("\n", @problems));
is( scalar(dashboard_problems('sum(courier_queue_backlogg)', 'rate(courier_items_total[')),
	2, 'the check catches a misspelt metric and a broken expression');
my $panel_count = grep { $_->{type} ne 'row' } @{ $dashboard->{panels} };
ok($panel_count >= 12, "the dashboard has $panel_count panels");
my $all = join("\n", @exprs);
for my $metric (qw(courier_queue_backlog courier_queue_oldest_age_seconds courier_items_total
	courier_failures_open courier_tms_breaker_open courier_tms_request_duration_seconds_bucket
	courier_subscriber_backlog))
{
	like($all, qr/\b\Q$metric\E\b/, "the dashboard shows $metric");
}

# ---------------------------------------------------------------------------
# The alerting rules, evaluated by this Prometheus on these metrics
# ---------------------------------------------------------------------------
my $rules = prom_get('/api/v1/rules', type => 'alert');
my @alert_rules = map { @{ $_->{rules} } } @{ $rules->{data}{groups} // [] };
ok(@alert_rules >= 3, scalar(@alert_rules) . ' alerting rules loaded from courier-rules.yml');
ok( wait_for(
		sub {
			$rules = prom_get('/api/v1/rules', type => 'alert');
			@alert_rules = map { @{ $_->{rules} } } @{ $rules->{data}{groups} // [] };
			return @alert_rules && !grep { ($_->{health} // '') ne 'ok' } @alert_rules;
		},
		30, 'every alerting rule evaluated'),
	'every alerting rule evaluates without error')
  or diag(join("\n", map { "$_->{name}: $_->{health} $_->{lastError}" } @alert_rules));
my @failure_alerts;
ok( wait_for(
		sub {
			$rules = prom_get('/api/v1/rules', type => 'alert');
			@alert_rules = map { @{ $_->{rules} } } @{ $rules->{data}{groups} // [] };
			@failure_alerts = grep {
				$_->{query} =~ /courier_failures_open/
				  && grep { ($_->{labels}{stage} // '') eq 'tms' } @{ $_->{alerts} // [] }
			} @alert_rules;
			return scalar @failure_alerts;
		},
		30, 'the failures alert of stage tms'),
	'the 100 open tms failures make the failures alert pending or firing')
  or diag(encode_json([ map { { name => $_->{name}, state => $_->{state} } } @alert_rules ]));
is( scalar(grep { $_->{state} ne 'inactive' } grep { $_->{query} !~ /courier_failures_open/ } @alert_rules),
	0, 'no other courier alert is pending or firing (no backlog is old, no breaker is open)');

done_testing();
