
# CourierTms.pm
#	Helpers of the TMS-stage TAP tests (test/t/02*_tms_*.pl): the mock TMS
#	server (start it on a free port, steer its faults, read its counters and
#	its delivered ids), a UTF-8 cluster whose tms stage points at the mock,
#	orders and delays with chosen phones, products and reasons, and waiting
#	on conditions that are not SQL (the mock's counters) with a deadline.
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

use Encode ();
use Exporter 'import';
use FindBin;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
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
  stays_true
  sql_literal
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
#                     product => 'corn')
#	Register the orders FIRST_ID..LAST_ID, promised in 3 days, each with
#	the phone PREFIX followed by the order id, zero-padded to 11 digits.
#	Returns how many were registered.
sub register_tms_orders
{
	my ($node, $first, $last, %opt) = @_;
	my $prefix = $opt{phone_prefix} // '0101';
	my $product = sql_literal($opt{product} // 'corn');
	my $width = 11 - length($prefix);

	return query(
		$node, qq{
		SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
			'order_id', g,
			'seller_id', g % 50 + 1,
			'customer_phone', '$prefix' || lpad(g::text, $width, '0'),
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

1;
