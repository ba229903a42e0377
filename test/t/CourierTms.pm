
# CourierTms.pm
#	Helpers of the TMS-stage TAP tests (test/t/02*_tms_*.pl): the mock TMS
#	server (start it on a free port, steer its faults, read its counters and
#	its delivered ids), a UTF-8 cluster whose tms stage points at the mock,
#	orders and delays with chosen phones, products and reasons, and waiting
#	on conditions that are not SQL (the mock's counters) with a deadline.
#	For the providers' dialects (test/t/06*_provider_*.pl): a mock that
#	checks every provider's credentials, the postgresql.conf lines that
#	point courier at it, its queries (NHN's secret key, SENS's signature)
#	and its counters of what each customer's handset received.
#
# Builds on CourierTest.pm (query, poll_until, poll_log, ...).  The clusters
# are initialised in UTF-8 whatever the caller's locale, because the tms
# stage measures messages in EUC-KR and must be able to tell which
# characters EUC-KR lacks; under SQL_ASCII it could not.
#
# Every mock started here is stopped when the test file ends (END block),
# whether the test passed, failed or died.

package CourierTms;

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use Encode ();
use Exporter 'import';
use FindBin;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use CourierTest;

our @EXPORT = qw(
  start_mock
  stop_mock
  mock_control
  mock_reset
  mock_stats
  mock_delivered
  tms_node
  register_tms_orders
  delay_tms
  notice_keys
  wait_for
  set_conf
  stays_true
  sql_literal
  provider_creds
  start_provider_mock
  provider_conf
  mock_customers
  mock_handsets
  mock_received
  received_counts
  handset_mismatches
  wait_receipts_final
  nhn_query
  sens_query
  phones_of
  listen_alerts
  heard_alert
  wrong_secret_then_fixed
  mock_hooks
);

my @mocks;    # every mock started by this process, stopped in END

# start_mock(EXTRA_ARGS...)
#	Start test/mock_tms/mock_tms on a free port (--port 0) and wait for its
#	"listening" line.  Returns a handle: { port, url (the message endpoint),
#	base, run }.  Dies (failing the test) when the mock does not come up.
sub start_mock
{
	my (@args) = @_;
	my $bin = $ENV{COURIER_MOCK_TMS}
	  // "$FindBin::RealBin/../mock_tms/mock_tms";
	my ($out, $err) = ('', '');

	die "mock TMS server not found at $bin (make -C test/mock_tms)\n"
	  unless -x $bin;
	my $run = IPC::Run::start([ $bin, '--port', '0', @args ],
		'<', \undef, '>', \$out, '2>', \$err);
	my $mock = { run => $run };
	push @mocks, $mock;

	my $deadline = time() + 10;
	my $port;
	until (($port) = $out =~ /mock_tms listening on 127\.0\.0\.1:(\d+)/)
	{
		die "mock TMS server did not start: $err\n"
		  if time() > $deadline || !$run->pumpable;
		$run->pump_nb;
		usleep(20_000);
	}
	$mock->{port} = $port;
	$mock->{base} = "http://127.0.0.1:$mock->{port}";
	$mock->{url} = "$mock->{base}/send";
	note("mock TMS on port $mock->{port}" . (@args ? " (@args)" : ''));
	return $mock;
}

# stop_mock(MOCK): SIGTERM, then reap (SIGKILL after 5 s).
sub stop_mock
{
	my ($mock) = @_;
	return unless $mock->{run};
	eval {
		$mock->{run}->signal('TERM');
		$mock->{run}->finish;
		1;
	} or eval { $mock->{run}->kill_kill(grace => 5); };
	delete $mock->{run};
	return;
}

END
{
	my $status = $?;
	stop_mock($_) for @mocks;
	$? = $status;
}

my $http = HTTP::Tiny->new(timeout => 10);

sub mock_request
{
	my ($mock, $method, $path, $body) = @_;
	my $res = $http->request($method, "$mock->{base}$path",
		defined $body
		? {
			content => $body,
			headers => { 'Content-Type' => 'application/json' }
		  }
		: {});
	die "mock TMS $method $path: $res->{status} $res->{content}\n"
	  unless $res->{success};
	return decode_json($res->{content});
}

# mock_control(MOCK, KEY => VALUE, ...): set faults; returns the settings.
sub mock_control
{
	my ($mock, %settings) = @_;
	return mock_request($mock, 'POST', '/_control', encode_json(\%settings));
}

# mock_reset(MOCK): clear counters, delivered ids and faults.
sub mock_reset
{
	my ($mock) = @_;
	return mock_request($mock, 'POST', '/_reset', '{}');
}

# mock_stats(MOCK): the counters of GET /_stats, as a hash ref.
sub mock_stats
{
	my ($mock) = @_;
	return mock_request($mock, 'GET', '/_stats');
}

# mock_hooks(MOCK, NAME): the events the mock's subscriber endpoint
# /hooks/NAME recorded, in arrival order (GET /_hooks?hook=NAME): hashes
# of id, type, order_id, seller_id, request, signature, dup.
sub mock_hooks
{
	my ($mock, $name) = @_;
	return mock_request($mock, 'GET', "/_hooks?hook=$name");
}

# mock_delivered(MOCK): the delivered ids, as an array ref.
sub mock_delivered
{
	my ($mock) = @_;
	return mock_request($mock, 'GET', '/_delivered');
}

# tms_node(NAME, MOCK, conf => EXTRA_CONF, create => 1)
#	A started UTF-8 cluster with courier preloaded (workers in the database
#	postgres), the extension created (unless create => 0) and
#	courier.tms_url pointing at MOCK.  EXTRA_CONF comes last, so it wins
#	over the defaults set here.
sub tms_node
{
	my ($name, $mock, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'courier'
courier.database = 'postgres'
max_worker_processes = 16
courier.retry_base = '20ms'
courier.retry_cap = '200ms'
courier.tms_url = '$mock->{url}'
});
	$node->append_conf('postgresql.conf', $opt{conf}) if defined $opt{conf};
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION courier')
	  if $opt{create} // 1;
	return $node;
}

# register_tms_orders(NODE, FIRST_ID, LAST_ID, phone_prefix => '0101',
#                     product => 'corn', phone_sql => EXPR)
#	Register the orders FIRST_ID..LAST_ID, promised in 3 days, each with
#	the phone PREFIX followed by the order id, zero-padded to 11 digits,
#	or, with phone_sql, the phone the SQL expression EXPR gives for the
#	order id g (to choose the mock's number patterns).  Returns how many
#	were registered.
sub register_tms_orders
{
	my ($node, $first, $last, %opt) = @_;
	my $prefix = $opt{phone_prefix} // '0101';
	my $product = sql_literal($opt{product} // 'corn');
	my $width = 11 - length($prefix);
	my $phone = $opt{phone_sql} // "'$prefix' || lpad(g::text, $width, '0')";

	return query(
		$node, qq{
		SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
			'order_id', g,
			'seller_id', g % 50 + 1,
			'customer_phone', $phone,
			'product_name', $product,
			'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD'))))
		  FROM generate_series($first, $last) AS g});
}

# delay_tms(NODE, FIRST_ID, LAST_ID, DAYS, REASON)
#	One delay request for FIRST_ID..LAST_ID to today + DAYS with REASON
#	(default 'rain'); returns the request id.
sub delay_tms
{
	my ($node, $first, $last, $days, $reason) = @_;
	my $r = sql_literal($reason // 'rain');

	return query(
		$node, qq{
		SELECT courier.delay_orders(
			array(SELECT generate_series($first, $last)::bigint),
			$r, current_date + $days)});
}

# notice_keys(NODE, WHERE): the idempotency keys (dn-<order>-<YYYYMMDD>)
# of the notices matching the SQL condition WHERE, as an array ref.
sub notice_keys
{
	my ($node, $where) = @_;
	my $out = query($node,
		"SELECT 'dn-' || order_id || '-' || to_char(ship_date, 'YYYYMMDD')"
		  . " FROM courier.notices WHERE $where ORDER BY 1");
	return [ grep { $_ ne '' } split /\n/, $out ];
}

# wait_for(CODE, TIMEOUT_SECONDS, WHAT)
#	Call CODE every 100 ms until it returns true or the deadline passes.
#	Returns whether it did; on timeout, a diagnostic names WHAT.
sub wait_for
{
	my ($code, $timeout, $what) = @_;
	my $deadline = time() + $timeout;

	while (1)
	{
		return 1 if $code->();
		last if time() > $deadline;
		usleep(100_000);
	}
	diag("wait_for timed out after ${timeout}s: $what");
	return 0;
}

# stays_true(CODE, SECONDS, WHAT)
#	Check CODE every 100 ms for SECONDS: true if it held every time, false
#	(with a diagnostic naming WHAT) as soon as it does not.  For "nothing
#	happens while ...": the window is the test's claim, not a sleep that
#	hopes something finished.
sub stays_true
{
	my ($code, $seconds, $what) = @_;
	my $end = time() + $seconds;

	while (time() < $end)
	{
		if (!$code->())
		{
			diag("stays_true: stopped holding: $what");
			return 0;
		}
		usleep(100_000);
	}
	return $code->() ? 1 : 0;
}

# sql_literal(STRING): STRING as a quoted SQL literal, in UTF-8 bytes (the
# clusters are UTF-8 and psql passes the bytes through).
sub sql_literal
{
	my ($s) = @_;
	$s = Encode::encode('UTF-8', $s) if utf8::is_utf8($s);
	$s =~ s/'/''/g;
	return "'$s'";
}

# ---------------------------------------------------------------------------
# The providers' dialects (docs/providers.md, test/mock_tms/README.md)
# ---------------------------------------------------------------------------

# provider_creds(): the credentials, ids and sender numbers the provider
# tests use, as a hash: what start_provider_mock makes the mock check and
# provider_conf gives courier.
sub provider_creds
{
	return (
		nhn_appkey => 'courier-test-appkey',
		nhn_secret => 'nhn-alimtalk-secret',
		nhn_sms_secret => 'nhn-sms-secret',
		nhn_sender_key => 'K' x 40,
		nhn_sms_send_no => '0212345678',
		sens_access_key => 'sens-access-key',
		sens_secret => 'sens-secret-key',
		sens_alimtalk_service_id => 'ncp:kkobizmsg:kr:1:courier',
		sens_sms_service_id => 'ncp:sms:kr:1:courier',
		sens_plus_friend_id => '@courier',
		sens_sms_from => '0298765432');
}

# start_provider_mock(EXTRA_ARGS...)
#	A mock that checks the credentials of every provider dialect
#	(provider_creds: NHN's app key and secret keys, SENS's access key and
#	signature), with receipts final 50 ms after acceptance (and a
#	provider's fallback 50 ms later), so that the handset counters settle
#	fast.  $mock->{creds} holds the credentials.
sub start_provider_mock
{
	my (@args) = @_;
	my %c = provider_creds();
	my $mock = start_mock(
		'--nhn-appkey', $c{nhn_appkey},
		'--nhn-secret', $c{nhn_secret},
		'--nhn-sms-secret', $c{nhn_sms_secret},
		'--sens-access-key', $c{sens_access_key},
		'--sens-secret', $c{sens_secret}, @args);

	$mock->{creds} = \%c;
	mock_control($mock, receipt_delay_ms => 50, resend_delay_ms => 50);
	return $mock;
}

# provider_conf(MOCK, DIALECT, NAME => VALUE, ...)
#	postgresql.conf lines that make courier speak DIALECT to MOCK (its base
#	URL), with the credentials of every dialect (so a switch of
#	courier.tms_provider alone changes the dialect), the mock's approved
#	templates COURIER_DELAY and COURIER_DELAY_V2 and their parameters; each
#	NAME => VALUE pair adds courier.NAME = 'VALUE' after these.
sub provider_conf
{
	my ($mock, $dialect, @extra) = @_;
	my $c = $mock->{creds};
	my $conf = qq{
courier.tms_provider = '$dialect'
courier.tms_url = '$mock->{base}'
courier.nhn_alimtalk_appkey = '$c->{nhn_appkey}'
courier.nhn_alimtalk_secret_key = '$c->{nhn_secret}'
courier.nhn_alimtalk_sender_key = '$c->{nhn_sender_key}'
courier.nhn_sms_appkey = '$c->{nhn_appkey}'
courier.nhn_sms_secret_key = '$c->{nhn_sms_secret}'
courier.nhn_sms_send_no = '$c->{nhn_sms_send_no}'
courier.tms_hmac_access_key = '$c->{sens_access_key}'
courier.tms_hmac_secret = '$c->{sens_secret}'
courier.sens_alimtalk_service_id = '$c->{sens_alimtalk_service_id}'
courier.sens_sms_service_id = '$c->{sens_sms_service_id}'
courier.sens_plus_friend_id = '$c->{sens_plus_friend_id}'
courier.sens_sms_from = '$c->{sens_sms_from}'
courier.alimtalk_template = 'COURIER_DELAY'
courier.alimtalk_template_v2 = 'COURIER_DELAY_V2'
courier.alimtalk_template_params = 'orderId=order_id, product=product, reason=reason, shipDate=ship_date'
};
	while (my ($name, $value) = splice(@extra, 0, 2))
	{
		$conf .= "courier.$name = '$value'\n";
	}
	return $conf;
}

# set_conf(NODE, NAME => VALUE, ...)
#	courier.NAME = 'VALUE' for each pair by ALTER SYSTEM and a reload,
#	waited for until the backend sees every one.
sub set_conf
{
	my ($node, %set) = @_;
	for my $name (sort keys %set)
	{
		query($node, "ALTER SYSTEM SET courier.$name = '$set{$name}'");
	}
	query($node, 'SELECT pg_reload_conf()');
	for my $name (sort keys %set)
	{
		poll_until($node, "SHOW courier.$name", $set{$name}, 30)
		  or die "courier.$name did not become $set{$name}";
	}
	return;
}

# mock_customers(MOCK): GET /_customers (what handsets received, by kind).
sub mock_customers
{
	my ($mock) = @_;
	return mock_request($mock, 'GET', '/_customers');
}

# mock_handsets(MOCK)
#	GET /_handsets summed over days: { NUMBER => { alimtalk, sms, lms,
#	fallback_sms, fallback_lms, total } }.
sub mock_handsets
{
	my ($mock) = @_;
	my %h;

	for my $row (@{ mock_request($mock, 'GET', '/_handsets') })
	{
		for my $k (qw(alimtalk sms lms fallback_sms fallback_lms total))
		{
			$h{ $row->{to} }{$k} += $row->{$k};
		}
	}
	return \%h;
}

# mock_received(MOCK): GET /_received, every message (or provider's
# recipient, under its recipientGroupingKey or its number) of every
# well-formed request, with the HTTP status it was answered.
sub mock_received
{
	my ($mock) = @_;
	return mock_request($mock, 'GET', '/_received');
}

# received_counts(MOCK, STATUS): { ID => how many times the mock received
# it }, counting only answers of HTTP STATUS when STATUS is given.
sub received_counts
{
	my ($mock, $status) = @_;
	my %n;

	for my $r (@{ mock_received($mock) })
	{
		$n{ $r->{id} }++ if !defined $status || $r->{status} == $status;
	}
	return \%n;
}

# handset_mismatches(HANDSETS, PHONES, KIND => N, ...)
#	The phones of the array PHONES whose handset counters (mock_handsets)
#	differ from what is expected: N of each KIND named, 0 of every other
#	kind, and the sum in total.  Returns "PHONE kind=got..." strings, to
#	be counted (and shown) by the caller.
sub handset_mismatches
{
	my ($handsets, $phones, %expect) = @_;
	my @bad;
	my $total = 0;

	$total += $_ for values %expect;
	for my $p (@$phones)
	{
		my $h = $handsets->{$p} // {};
		my @kinds = qw(alimtalk sms lms fallback_sms fallback_lms);

		my $differs = grep { ($h->{$_} // 0) != ($expect{$_} // 0) } @kinds;

		next if !$differs && ($h->{total} // 0) == $total;
		push @bad, "$p " . join(' ', map { "$_=" . ($h->{$_} // 0) } @kinds, 'total');
	}
	diag("handsets not as expected (first 5): @bad[0 .. ($#bad < 4 ? $#bad : 4)]")
	  if @bad;
	return \@bad;
}

# wait_receipts_final(MOCK, TIMEOUT): wait until every record of the
# providers' store is final (/_customers pending 0; fallbacks included).
sub wait_receipts_final
{
	my ($mock, $timeout) = @_;
	return wait_for(sub { mock_customers($mock)->{pending} == 0 },
		$timeout // 30, 'every provider record final (/_customers pending 0)');
}

# mock_get(MOCK, PATH, HEADERS): GET PATH with the header hash; the decoded
# JSON answer, or { _status => S, _body => B } when it is not 2xx.
sub mock_get
{
	my ($mock, $path, $headers) = @_;
	my $res = $http->request('GET', "$mock->{base}$path", { headers => $headers });

	return { _status => $res->{status}, _body => $res->{content} }
	  unless $res->{success};
	return decode_json($res->{content});
}

# nhn_query(MOCK, PATH): an NHN query API GET (PATH from /alimtalk/ or
# /sms/ on) with the X-Secret-Key of its product.
sub nhn_query
{
	my ($mock, $path) = @_;
	my $c = $mock->{creds};
	my $secret = $path =~ m{^/sms/} ? $c->{nhn_sms_secret} : $c->{nhn_secret};

	return mock_get($mock, $path, { 'X-Secret-Key' => $secret });
}

# sens_query(MOCK, URI): a SENS query API GET, signed as the API gateway
# wants (x-ncp-apigw-signature-v2 over "GET URI\nTIMESTAMP\nACCESS_KEY").
sub sens_query
{
	my ($mock, $uri) = @_;
	my $c = $mock->{creds};
	my $ts = sprintf('%.0f', time() * 1000);
	my $sig = encode_base64(
		hmac_sha256("GET $uri\n$ts\n$c->{sens_access_key}", $c->{sens_secret}), '');

	return mock_get(
		$mock, $uri,
		{
			'x-ncp-apigw-timestamp' => $ts,
			'x-ncp-iam-access-key' => $c->{sens_access_key},
			'x-ncp-apigw-signature-v2' => $sig
		});
}

# phones_of(NODE, WHERE): the customer phones of the notices matching the
# SQL condition WHERE, as an array ref (as the dialects send them).
sub phones_of
{
	my ($node, $where) = @_;
	my $out = query($node,
		"SELECT customer_phone FROM courier.notices WHERE $where ORDER BY 1");
	return [ grep { $_ ne '' } split /\n/, $out ];
}

# listen_alerts(NODE): a background session listening on courier_alerts.
sub listen_alerts
{
	my ($node) = @_;
	my $listener = $node->background_psql('postgres');
	$listener->query_safe('LISTEN courier_alerts');
	return $listener;
}

# heard_alert(LISTENER, ALERT, TIMEOUT)
#	Wait until the listening session has been notified on courier_alerts
#	with a payload naming ALERT ("alert": "ALERT"); returns whether it was.
sub heard_alert
{
	my ($listener, $alert, $timeout) = @_;
	my $heard = '';

	return wait_for(
		sub {
			$heard .= $listener->query('SELECT 1');
			$heard =~ /courier_alerts" with payload ".*"alert": "\Q$alert\E"/;
		},
		$timeout // 30,
		"a notification on courier_alerts naming $alert");
}

# wrong_secret_then_fixed(NODE, MOCK, setting => GUC, right => VALUE,
#                         refusal => REGEXP, counter => MOCK_STAT,
#                         kind => HANDSET_KIND, first => ID, last => ID,
#                         days => N)
#	The provider tests' configuration case: orders FIRST..LAST are delayed
#	while postgresql.conf has a wrong value of courier.SETTING.  The log
#	names the provider's refusal (REFUSAL), the breaker opens at once, an
#	alert is raised, the mock counts the refusals (its stat COUNTER) and a
#	probe after the cooldown is refused again; the notices stay pending,
#	no attempt is charged, none fails, no customer receives anything.
#	Once RIGHT is back in postgresql.conf and reloaded, the breaker closes
#	and every notice is delivered on its first charged attempt: each
#	customer receives exactly one message of KIND.
sub wrong_secret_then_fixed
{
	my ($node, $mock, %a) = @_;
	my $listener = listen_alerts($node);
	my $log = log_offset($node);
	my $n = $a{last} - $a{first} + 1;
	my $when = "ship_date = current_date + $a{days}";

	is(register_tms_orders($node, $a{first}, $a{last}, phone_prefix => '0102'), $n,
		"register $n orders");
	$node->append_conf('postgresql.conf', "courier.$a{setting} = 'not-the-secret'\n");
	$node->reload;
	ok(poll_until($node, "SHOW courier.$a{setting}", 'not-the-secret', 30),
		"postgresql.conf now has a wrong courier.$a{setting}");
	my $refused0 = mock_stats($mock)->{ $a{counter} };
	delay_tms($node, $a{first}, $a{last}, $a{days});

	ok(poll_log($node, $a{refusal}, $log, 30), "the log names the provider's refusal");
	ok(poll_log($node, qr/WARNING:.*circuit breaker opened: the TMS refused/, $log, 30),
		'the breaker opens at once');
	ok(heard_alert($listener, 'tms_unauthorized'), 'an alert tms_unauthorized is raised');
	$listener->quit;
	my $refused1 = mock_stats($mock)->{ $a{counter} };
	cmp_ok($refused1, '>', $refused0, "the provider refused the requests ($a{counter})");
	ok(wait_for(sub { mock_stats($mock)->{ $a{counter} } > $refused1 }, 30,
			'another refused probe'),
		'after the cooldown a probe is refused again');
	is(query($node, qq{
		SELECT count(*), coalesce(sum(attempts), 0) FROM courier.notices
		 WHERE $when AND status = 'pending'}),
		"$n|0", "the $n notices stay pending and no attempt is charged");
	is(query($node, "SELECT count(*) FROM courier.failures WHERE $when"), '0', 'none failed');
	is(scalar @{ handset_mismatches(mock_handsets($mock), phones_of($node, $when)) },
		0, 'no customer received anything');

	$log = log_offset($node);
	$node->append_conf('postgresql.conf', "courier.$a{setting} = '$a{right}'\n");
	$node->reload;
	ok(poll_log($node, qr/LOG:.*circuit breaker closed/, $log, 30),
		'with the right value reloaded the breaker closes');
	ok( poll_until(
			$node,
			"SELECT count(*) FROM courier.notices WHERE $when AND status = 'delivered'"
			  . ' AND attempts = 1',
			$n, 60),
		"all $n are delivered, each on its first charged attempt");
	ok(wait_receipts_final($mock), 'the messages reached their final state');
	is(scalar @{ handset_mismatches(mock_handsets($mock), phones_of($node, $when),
				$a{kind} => 1) },
		0, "each of the $n customers received exactly one message ($a{kind})");
	return;
}

1;
