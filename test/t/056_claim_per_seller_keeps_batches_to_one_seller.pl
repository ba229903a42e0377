
# 056_claim_per_seller_keeps_batches_to_one_seller.pl
#	With courier.claim_per_seller = on (postgresql.conf, from the start),
#	every batch is one seller's: the logic claim and the tms lease take the
#	due work of one seller, and every statement of the batch names that
#	seller's rows by (seller_id, key).  That is how a deployment sharded
#	by seller on Citus runs each batch on the node that holds the seller
#	(docs/citus.md, rule 2); Citus is not packaged for Debian, so the test
#	checks the property on plain PostgreSQL.
#
#	600 orders of 50 sellers are delayed in one request, 20 of them with
#	numbers the provider rejects (the tms charge), one refused by a shop
#	trigger (the logic charge), with 10% of requests answered 500
#	(retries), two workers per stage.  Triggers of the test note, per
#	transaction, the sellers whose history rows (logic batch), leases and
#	deliveries (tms batch) it wrote.  Every transaction of each kind
#	touched one seller; every notice reached the provider exactly once;
#	pg_stat_statements shows the claim and the lease restricted to a
#	seller parameter and the other hot statements joining on seller_id.
#	Then the switch is turned off live and 600 more orders show batches
#	of many sellers: the notes would see a mix if the mode did nothing.
#	Last, with the switch on again and NHN AlimTalk chosen live, 300
#	orders show the receipt stage's leases one seller's each (the notes
#	see each lease of awaited receipts).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = start_provider_mock();
my $node = tms_node(
	'perseller', $mock, conf => provider_conf($mock, 'generic') . qq{
courier.tms_url = '$mock->{url}'
} . q{
shared_preload_libraries = 'courier,pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.max = 5000
courier.claim_per_seller = on
courier.max_attempts = 8
courier.tms_bulk_size = 5
courier.logic_max_workers = 2
courier.tms_min_workers = 2
courier.tms_max_workers = 2
});
query($node, 'CREATE EXTENSION pg_stat_statements');

query($node, q{
CREATE TABLE public.batch_sellers (kind text, xid bigint, seller_id bigint);
CREATE FUNCTION public.note_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.batch_sellers VALUES ('logic', pg_catalog.txid_current(), NEW.seller_id);
	RETURN NULL;
END $$;
CREATE FUNCTION public.note_notice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.leased_by IS NOT NULL AND OLD.leased_by IS DISTINCT FROM NEW.leased_by THEN
		INSERT INTO public.batch_sellers VALUES ('lease', pg_catalog.txid_current(), NEW.seller_id);
	ELSIF NEW.status = 'delivered' AND OLD.status = 'pending' THEN
		INSERT INTO public.batch_sellers VALUES ('record', pg_catalog.txid_current(), NEW.seller_id);
	ELSIF OLD.receipt_status IN ('awaiting', 'unconfirmed')
		  AND NEW.receipt_status = OLD.receipt_status
		  AND NEW.receipt_checks = OLD.receipt_checks
		  AND NEW.receipt_due_at IS DISTINCT FROM OLD.receipt_due_at THEN
		INSERT INTO public.batch_sellers VALUES ('receipt_lease', pg_catalog.txid_current(), NEW.seller_id);
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER note_history AFTER INSERT ON courier.delay_history
	FOR EACH ROW EXECUTE FUNCTION public.note_history();
CREATE TRIGGER note_notice AFTER UPDATE ON courier.notices
	FOR EACH ROW EXECUTE FUNCTION public.note_notice();
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

# Per transaction: how many sellers, for each kind of batch.
my $mixed = q{
	SELECT kind || ':' || count(*) FILTER (WHERE n > 1) || ':' || count(*)
	  FROM (SELECT kind, xid, count(DISTINCT seller_id) AS n
			  FROM public.batch_sellers GROUP BY kind, xid) b
	 GROUP BY kind ORDER BY kind};

is(register_tms_orders($node, 1, 580), 580, 'register 580 orders of 50 sellers');
is(register_tms_orders($node, 581, 600, phone_prefix => '0109'), 20,
	'and 20 whose numbers the provider rejects');
mock_control($mock, reject_prefix => '0109', error_rate => 0.1, error_status => 500, seed => 7);
query($node, 'SELECT pg_stat_statements_reset()');
delay_tms($node, 1, 600, 10);

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
ok(wait_for(sub { mock_stats($mock)->{in_flight} == 0 }, 10, 'mock idle'),
	'the mock has no request in flight');
my $s = mock_stats($mock);
is("$s->{delivered}|$s->{duplicates}", '579|0',
	'the provider delivered 579 notices (600 less order 7 and 20 rejected), none twice');

my ($lease, $logic, $record) = split /\n/, query($node, $mixed);
like($logic, qr/^logic:0:\d+$/, "no logic batch touched two sellers ($logic)");
like($lease, qr/^lease:0:\d+$/, "no lease took notices of two sellers ($lease)");
like($record, qr/^record:0:\d+$/, "no record wrote notices of two sellers ($record)");
cmp_ok((split /:/, $logic)[2], '>=', 50, 'the logic stage ran one batch per seller at least');

my %hot = (
	claim => [ q{query LIKE 'SELECT item_id, leased_by, solo, seller_id FROM courier.work_items%'},
		q{query LIKE '%AND seller_id = $3%'} ],
	lease => [ q{query LIKE '%n.ctid = ANY (ARRAY(%' AND query NOT LIKE '%receipt_status%'},
		q{query LIKE '%c.seller_id = $6%' AND query LIKE '%n.seller_id = $6%'} ],
	apply => [ q{query LIKE '%INSERT INTO courier.delay_history%'},
		q{query LIKE '%w.seller_id = c.seller_id AND w.item_id = c.item_id%' AND query LIKE '%ON CONFLICT (seller_id, order_id, ship_date)%'} ],
	record => [ q{query LIKE '%UPDATE courier.notices n%SET status = CASE r.status%'},
		q{query LIKE '%n.seller_id = r.seller_id AND n.order_id = r.order_id%'} ],
	charge_logic => [ q{query LIKE '%DELETE FROM courier.work_items w USING r%'},
		q{query LIKE '%w.seller_id = r.seller_id AND w.item_id = r.item_id%'} ],
	charge_tms => [ q{query LIKE '%INSERT INTO courier.failures (stage, seller_id, order_id, ship_date%'},
		q{query LIKE '%n.seller_id = r.seller_id AND n.order_id = r.order_id%'} ],
);
for my $name (sort keys %hot)
{
	my ($which, $restricted) = @{ $hot{$name} };
	is(query($node, "SELECT count(*) > 0, bool_and($restricted) FROM pg_stat_statements WHERE $which"),
		't|t', "the $name statement ran, restricted to the batch's seller")
	  or diag(query($node, "SELECT query FROM pg_stat_statements WHERE $which LIMIT 1"));
}

# The same workload with the switch off, changed live: batches mix sellers.
query($node, q{
	TRUNCATE public.batch_sellers;
	ALTER SYSTEM SET courier.claim_per_seller = off;
	SELECT pg_reload_conf();});
mock_control($mock, error_rate => 0);
is(register_tms_orders($node, 1001, 1600), 600, 'register 600 more orders');
delay_tms($node, 1001, 1600, 10);
ok( poll_until(
		$node,
		q{SELECT (SELECT count(*) FROM courier.work_items)
			   + (SELECT count(*) FROM courier.notices WHERE status = 'pending')},
		'0', 120),
	'they drain');
like(query($node, "SELECT string_agg(x, ' ') FROM ($mixed) m(x)"),
	qr/^lease:[1-9]\d*:\d+ logic:[1-9]\d*:\d+ record:[1-9]\d*:\d+$/,
	'with the switch off, logic batches, leases and records mix sellers');

# Through NHN AlimTalk, with the switch on again: the receipt stage's
# lease takes one seller's awaited receipts (its other statements join on
# the notice's key).
query($node, 'TRUNCATE public.batch_sellers');
set_conf($node, claim_per_seller => 'on', tms_provider => 'nhn_alimtalk',
	tms_url => $mock->{base}, receipt_interval => '100ms');
query($node, 'SELECT pg_stat_statements_reset()');
# numbers ending in 1: none of the mock's special patterns
is(register_tms_orders($node, 2001, 2300, phone_sql => q{'0105' || lpad((g * 10 + 1)::text, 7, '0')}),
	300, 'register 300 orders of 50 sellers');
delay_tms($node, 2001, 2300, 10);
ok( poll_until(
		$node,
		q{SELECT count(*) FROM courier.notices
		   WHERE order_id BETWEEN 2001 AND 2300 AND receipt_status = 'delivered'},
		'300', 120),
	'through NHN AlimTalk, the 300 notices are delivered and their receipts say so');
like(query($node, "SELECT string_agg(x, ' ') FROM ($mixed) m(x) WHERE x LIKE 'receipt%'"),
	qr/^receipt_lease:0:[1-9]\d*$/,
	'no lease of the receipt stage took notices of two sellers');
is(query($node, q{
	SELECT count(*) > 0, bool_and(query LIKE '%c.seller_id = $4%' AND query LIKE '%n.seller_id = $4%')
	  FROM pg_stat_statements WHERE query LIKE '%SET receipt_due_at = $2%'}),
	't|t', 'the receipt lease ran, restricted to one seller in both halves');

$node->stop;
done_testing();
