
# 054_hot_statements_take_their_clocks_as_parameters.pl
#	The statements the workers run for every batch (claim, apply, lease,
#	record, both charges) call no clock, no random and no stable function:
#	times, the rollout percentage and the back-off's jitter come in as
#	parameters, and what they compute per row goes through immutable
#	functions (courier.rollout_bucket, courier.backoff_step).  That is what
#	Citus needs to run them on distributed tables (docs/citus.md, rule 3),
#	and a batch then sees one time.
#
#	pg_stat_statements (track = all) records every statement the workers
#	run, nested ones included, while a workload goes through every path: a
#	delay of 200 orders, one refused by a shop trigger (the logic charge),
#	20 phone numbers the provider rejects and 10% of requests answered 500 (the tms
#	charge, retries).  Each hot statement is found among them, and none
#	names clock_timestamp, statement_timestamp, now, transaction_timestamp,
#	random, backoff_delay or switch_enabled.
#
#	courier 0.2's apply called statement_timestamp() in UPDATE SET and
#	switch_enabled() in a CASE; its lease called statement_timestamp() in
#	SET and clock_timestamp() in a CASE; its charge called backoff_delay().

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_mock();
my $node = tms_node(
	'clocks', $mock, conf => q{
shared_preload_libraries = 'courier,pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.max = 5000
courier.max_attempts = 6
});
query($node, 'CREATE EXTENSION pg_stat_statements');

# Every path: the logic charge, tms rejections and retries.
query($node, q{
CREATE FUNCTION public.shop_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_id = 7 AND NEW.promised_ship_date <> OLD.promised_ship_date THEN
		RAISE EXCEPTION 'order 7 is held by the warehouse' USING ERRCODE = 'check_violation';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER shop_guard BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.shop_guard();
});
is(register_tms_orders($node, 1, 180, phone_prefix => '0101'), 180, 'register 180 orders');
is(register_tms_orders($node, 181, 200, phone_prefix => '0109'), 20,
	'and 20 with numbers the provider rejects');
mock_control($mock, reject_prefix => '0109', error_rate => 0.1, error_status => 500);
query($node, 'SELECT pg_stat_statements_reset()');
delay_tms($node, 1, 200, 10);

ok( poll_until(
		$node,
		q{SELECT (SELECT count(*) FROM courier.work_items)
			   + (SELECT count(*) FROM courier.notices WHERE status = 'pending')},
		'0', 120),
	'the workload drains: nothing queued, no notice pending');
is(query($node, q{
	SELECT stage || ':' || count(*) FROM courier.failures GROUP BY stage ORDER BY stage}),
	"logic:1\ntms:20",
	'the logic charge (order 7) and the tms charge (20 rejected numbers) both ran');

my %hot = (
	claim => q{query LIKE '%FOR UPDATE SKIP LOCKED%' AND query LIKE '%courier.work_items%'},
	apply => q{query LIKE '%INSERT INTO courier.delay_history%'},
	lease => q{query LIKE '%n.ctid = ANY (ARRAY(%'},
	record => q{query LIKE '%UPDATE courier.notices n%SET status = CASE r.status%'},
	charge_logic => q{query LIKE '%DELETE FROM courier.work_items w USING r%'},
	charge_tms => q{query LIKE '%INSERT INTO courier.failures (stage, seller_id, order_id, ship_date%'},
);
my $forbidden = q{query ~* '(clock_timestamp|statement_timestamp|transaction_timestamp|\mnow\s*\(|random\s*\(|backoff_delay|switch_enabled)'};
for my $name (sort keys %hot)
{
	is(query($node, "SELECT count(*) > 0 FROM pg_stat_statements WHERE $hot{$name}"),
		't', "the $name statement ran");
	is(query($node, "SELECT count(*) FROM pg_stat_statements WHERE ($hot{$name}) AND $forbidden"),
		'0', "the $name statement calls no clock, random or stable function")
	  or diag(query($node, "SELECT query FROM pg_stat_statements WHERE ($hot{$name}) AND $forbidden LIMIT 1"));
}

$node->stop;
done_testing();
