
# 018_dying_batches_back_off.pl
#	A logic worker whose every batch dies whole (a trigger on
#	courier.orders raises query_canceled for every order, an error no
#	subtransaction can isolate to one item) stays the same process and
#	backs off, instead of exiting and being replaced in a storm:
#	- over an 8 s window the server log gets at most 3 "courier logic
#	  worker started" lines (it gets none: the one worker stays);
#	- pg_stat_activity shows the worker "logic: backing off N ms after K
#	  failed batches in a row", and the wait grows (1 s, then longer);
#	- each dead batch is logged: the error itself (with its context), then
#	  a line with the stage and batch; every item is charged an attempt
#	  with SQLSTATE 57014, and none is lost (max_attempts = 1000: nothing
#	  moves to failures);
#	- once the trigger stops raising, the back-off ends and all 100 orders
#	  are applied.
#
# The old code (0.1) exited with code 1 after every dead batch, so the
# launcher started a replacement at once, which died on its first batch
# in turn: hundreds of worker starts a minute, and a log full of them.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CourierTest;
use CourierTms qw(wait_for stays_true);
use PostgreSQL::Test::Utils;
use Test::More;

my $node = courier_node(
	'dying_batches', logic_only => 1, conf => q{
courier.max_attempts = 1000
courier.logic_min_workers = 1
courier.logic_max_workers = 1
});

is(register_orders($node, 1, 100), 100, 'register_orders registers 100 orders');

query($node, q{
CREATE TABLE public.refusing (refuse boolean NOT NULL);
INSERT INTO public.refusing VALUES (true);
CREATE FUNCTION public.refuse_every_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF (SELECT refuse FROM public.refusing) THEN
		RAISE EXCEPTION 'order % refused by the test trigger', NEW.order_id
			USING ERRCODE = 'query_canceled';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER refuse_every_order BEFORE UPDATE ON courier.orders
	FOR EACH ROW EXECUTE FUNCTION public.refuse_every_order();
});

ok( poll_until(
		$node,
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier logic worker'},
		'1', 30),
	'one logic worker runs before the delay');

my $offset = log_offset($node);
my $req = delay_orders($node, 1, 100, 10);

ok( poll_log(
		$node,
		qr/LOG:  order \d+ refused by the test trigger\n(?:.*\n)*?.*LOG:  courier logic worker: batch of \d+ items failed: order \d+ refused by the test trigger/,
		$offset, 30),
	'the dead batch is logged: the trigger\'s error itself, then the stage and batch');

# The window: count worker starts while the batches keep dying, and note
# every back-off the worker shows.
my %backoffs;
my $starts = 0;
ok( stays_true(
		sub {
			$starts = () = slurp_file($node->logfile, $offset) =~
			  /courier logic worker started/g;
			my $q = query($node, q{
				SELECT query FROM pg_stat_activity
				 WHERE backend_type = 'courier logic worker'});
			$backoffs{$1} = 1 while $q =~ /logic: backing off (\d+) ms after \d+ failed batches in a row/g;
			return $starts <= 3;
		},
		8,
		'at most 3 logic worker starts'),
	'over 8 s of dying batches the log gets at most 3 "courier logic worker started" lines');
note("logic worker starts during the window: $starts; back-offs seen (ms): "
	  . join(', ', sort { $a <=> $b } keys %backoffs));

ok( poll_for(
		$node, q{
		SELECT query FROM pg_stat_activity
		 WHERE backend_type = 'courier logic worker'
		   AND query ~ '^logic: backing off \d+ ms after \d+ failed batches in a row$'},
		30),
	'pg_stat_activity shows the logic worker backing off after failed batches');
ok(scalar(grep { $_ >= 2000 } keys %backoffs),
	'the back-off grows after batches die in a row (a wait of 2 s or more was shown)');

is(query($node, "SELECT total, done, failed FROM courier.request_status($req)"),
	'100|0|0', 'nothing is applied and nothing has failed: the items wait their turn');
is(query($node, qq{
	SELECT count(*), bool_and(attempts >= 1) FROM courier.work_items
	 WHERE stage = 'logic' AND request_id = $req}),
	'100|t', 'all 100 items are still queued, each charged at least one attempt');
is(query($node, qq{
	SELECT count(*) FROM courier.work_items
	 WHERE stage = 'logic' AND request_id = $req
	   AND errors -> -1 ->> 'sqlstate' = '57014'
	   AND errors -> -1 ->> 'error' LIKE 'order % refused by the test trigger'}),
	'100', "each item's last attempt records the trigger's error and SQLSTATE 57014");

# The cause goes away: the back-off ends by itself.
query($node, 'UPDATE public.refusing SET refuse = false');
ok( poll_until(
		$node, "SELECT total, done, failed, pending FROM courier.request_status($req)",
		'100|100|0|0', 90),
	'once the trigger stops raising, all 100 orders are applied');
check_nothing_lost($node, $req, 1, 100, 10);

$starts = () = slurp_file($node->logfile, $offset) =~ /courier logic worker started/g;
cmp_ok($starts, '<=', 3, 'from the delay to the end, at most 3 logic worker starts in all');
unlike(slurp_file($node->logfile, $offset),
	qr/"courier logic worker" \(PID \d+\) exited with exit code 1/,
	'no logic worker exited with code 1');

$node->stop;
done_testing();
