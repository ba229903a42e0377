/*-------------------------------------------------------------------------
 *
 * logic.c
 *		The business-logic stage: apply a batch of delay requests to their
 *		orders, keep the history, and write the notices to send (the outbox,
 *		which is also the tms stage's queue) in the same transaction.
 *
 * The work is one set-based statement over the whole batch.  One bad item
 * must not sink its batch, so the statement runs in a subtransaction; when
 * it fails, the batch is split in halves and each half retried the same
 * way, until the failing items stand alone and are charged an attempt
 * (retry.c).  A batch with one bad item in 1,000 costs about 20 extra
 * subtransactions; a clean batch costs one.
 *
 * This file does not claim (claim.c) nor decide back-off (retry.c), and it
 * does not know whether it runs in a worker or in run_once.
 *
 * IDENTIFICATION
 *		src/logic.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "courier.h"

/*
 * Apply the delays of the items $1, of the sellers $4 (every row is
 * reached by (seller_id, key), docs/citus.md).  An order named by several
 * items of the batch takes the newest request's date (rn = 1); the notice
 * is written only when the promised date really changes, and once per
 * (order, new date), in the variant the notice_v2 rollout switch gives
 * the order.  Every item gets a history row, and leaves the queue.  The
 * time ($2) and the switch's percentage ($3) come in as parameters: the
 * statement calls no clock and no stable function in a CASE, only the
 * immutable courier.rollout_bucket (docs/citus.md, rule 3).  Each order
 * delayed is an order.delayed event, fanned out to the subscriptions that
 * asked for it (courier.emit_events, one call per batch, and no event at
 * all, nor its payload built, while no subscription asks for the type; the DELETE's
 * one-time filter reads its result, so that it runs, without changing
 * how the DELETE reaches the queue: joined as a relation, it made the
 * planner scan the whole queue per batch).
 *
 * The request's trace (its traceparent, docs/dba-console.md) goes with
 * the notice it creates and the order.delayed event: a notice that
 * already exists for the order and date (ON CONFLICT) keeps the trace of
 * the request that created it, since its sends are that request's.
 *
 * Orders that were invoiced, shipped or cancelled (or are gone) are
 * skipped.  The items CTE reads them in the statement's snapshot, so the
 * UPDATE tests the status again, in its SET and RETURNING: an UPDATE that
 * waited for a row lock evaluates those on the newest version of the row,
 * so an order whose close committed meanwhile is left as it is, gets no
 * notice and is recorded 'skipped'.  Every row the UPDATE is given comes
 * back (applied or not), so the history is made from the UPDATE's result
 * and the items it was not given, without joining two CTEs (whose row
 * estimates are guesses, and a nested loop over a CTE scan costs a batch
 * of n items n^2 row visits).  The window sorts the items by order id
 * first, so the UPDATE locks the orders in order id order, the order
 * register_orders locks them in: the two never deadlock.
 */
static const char *const apply_sql =
"WITH items AS ("
"    SELECT w.item_id, w.order_id, w.request_id, w.seller_id,"
"           r.reason, r.new_ship_date, r.traceparent, o.promised_ship_date AS old_date,"
"           coalesce(o.status IN ('paid', 'shipping_requested'), false) AS open,"
"           pg_catalog.row_number() OVER (PARTITION BY w.order_id, w.seller_id"
"                                         ORDER BY w.request_id DESC) AS rn"
"      FROM unnest($1::bigint[], $4::bigint[]) AS c(item_id, seller_id)"
"      JOIN courier.work_items w ON w.seller_id = c.seller_id AND w.item_id = c.item_id"
"      JOIN courier.requests r ON r.request_id = w.request_id"
"      LEFT JOIN courier.orders o ON o.seller_id = w.seller_id AND o.order_id = w.order_id"
"), changed AS ("
"    UPDATE courier.orders o"
"       SET promised_ship_date = CASE WHEN o.status IN ('paid', 'shipping_requested')"
"                                     THEN i.new_ship_date ELSE o.promised_ship_date END,"
"           delay_reason = CASE WHEN o.status IN ('paid', 'shipping_requested')"
"                               THEN i.reason ELSE o.delay_reason END,"
"           updated_at = $2"
"      FROM items i"
"     WHERE o.seller_id = i.seller_id AND o.order_id = i.order_id"
"       AND i.open AND i.rn = 1 AND i.old_date <> i.new_ship_date"
"    RETURNING i.request_id, o.order_id, o.seller_id, i.old_date, i.new_ship_date,"
"              o.customer_phone, o.product_name, i.reason, i.traceparent,"
"              o.status IN ('paid', 'shipping_requested') AS applied"
"), notice AS ("
"    INSERT INTO courier.notices (order_id, ship_date, seller_id,"
"                                 customer_phone, product_name, reason, variant,"
"                                 due_at, traceparent)"
"    SELECT ch.order_id, ch.new_ship_date, ch.seller_id, ch.customer_phone,"
"           ch.product_name, ch.reason,"
"           CASE WHEN courier.rollout_bucket('notice_v2', ch.order_id) < $3"
"                THEN 'v2' ELSE 'v1' END,"
"           $2, ch.traceparent"
"      FROM changed ch WHERE ch.applied"
"    ON CONFLICT (seller_id, order_id, ship_date) DO NOTHING"
"), history AS ("
"    INSERT INTO courier.delay_history (request_id, order_id, seller_id,"
"                                       old_ship_date, new_ship_date, outcome)"
"    SELECT ch.request_id, ch.order_id, ch.seller_id, ch.old_date, ch.new_ship_date,"
"           CASE WHEN ch.applied THEN 'delayed' ELSE 'skipped' END"
"      FROM changed ch"
"    UNION ALL"
"    SELECT i.request_id, i.order_id, i.seller_id, i.old_date, i.new_ship_date,"
"           CASE WHEN NOT i.open THEN 'skipped'"
"                WHEN i.old_date = i.new_ship_date THEN 'unchanged'"
"                ELSE 'delayed' END"
"      FROM items i"
"     WHERE NOT (i.open AND i.rn = 1 AND i.old_date <> i.new_ship_date)"
"), delayed AS ("
"    SELECT courier.emit_events(pg_catalog.array_agg(ch.seller_id),"
"               pg_catalog.array_agg(ch.order_id),"
"               pg_catalog.array_agg('order.delayed'::text),"
"               pg_catalog.array_agg(pg_catalog.jsonb_build_object("
"                   'request_id', ch.request_id, 'reason', ch.reason,"
"                   'old_ship_date', ch.old_date, 'new_ship_date', ch.new_ship_date)),"
"               $2, pg_catalog.array_agg(ch.traceparent)) AS n"
"      FROM changed ch WHERE ch.applied"
"       AND EXISTS (SELECT 1 FROM courier.subscriptions s"
"                    WHERE 'order.delayed' = ANY (s.event_types))"
") "
"DELETE FROM courier.work_items w"
" USING unnest($1::bigint[], $4::bigint[]) AS c(item_id, seller_id)"
" WHERE w.seller_id = c.seller_id AND w.item_id = c.item_id"
"   AND (SELECT d.n FROM delayed d) >= 0";

static SPIPlanPtr apply_plan = NULL;

static int	apply_or_charge_batch(CourierClaim *items, ErrorData **batch_error);
static int	apply_isolating_failures(CourierClaim *items);
static void apply_items(CourierClaim *items);

/*
 * courier_logic_run_batch
 *		Claim one batch of due logic items and apply it.  Returns how many
 *		items were handled (applied or charged), 0 when nothing was due.
 *		When the batch died as a whole (its items are then charged),
 *		*batch_error is that error (in TopMemoryContext: the caller frees
 *		it with FreeErrorData), else NULL: a worker backs off, run_once
 *		warns.
 *
 * Runs in the caller's transaction with SPI connected; the claim's row
 * locks hold until that transaction ends.
 */
int
courier_logic_run_batch(ErrorData **batch_error)
{
	CourierClaim items;
	int			n;
	int			failed;
	CourierStageState *st;

	courier_claim_due(COURIER_STAGE_LOGIC, courier_batch_size, &items);
	n = items.n;
	if (n == 0)
		return 0;

	/*
	 * An item whose batch died as a whole is retried alone, in a batch of
	 * its own, so that only the culprit is charged again; the other claimed
	 * items are left untouched and unlocked at commit.
	 */
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i],
									   SPI_tuptable->tupdesc, 3, &isnull)))
		{
			items.ids = &items.ids[i];
			items.sellers = &items.sellers[i];
			items.n = n = 1;
			courier_remember_claim(&items);
			break;
		}
	}
	failed = apply_or_charge_batch(&items, batch_error);
	if (failed < n)
		courier_wake_stage_at_commit(COURIER_STAGE_TMS);

	if (courier_shared != NULL)
	{
		st = &courier_shared->stages[COURIER_STAGE_LOGIC];
		pg_atomic_fetch_add_u64(&st->batches, 1);
		pg_atomic_fetch_add_u64(&st->items_done, n - failed);
		pg_atomic_fetch_add_u64(&st->items_failed, failed);
	}
	return n;
}

/*
 * apply_or_charge_batch
 *		Apply the batch; if it dies as a whole (an error that is not about
 *		one item: a cancel), charge every item one attempt and mark it solo
 *		while the claim's row locks are still held, so that no other worker
 *		can take the items before the charge is in, and return the error in
 *		*batch_error.  A transient error (courier_error_is_transient) is thrown
 *		on instead: the caller's transaction is lost, the claimed items fall
 *		due again untouched.
 *		Returns the number of items charged.
 *
 * The subtransactions of apply_isolating_failures are already rolled back
 * when its error arrives here, so the claiming transaction is intact.
 */
static int
apply_or_charge_batch(CourierClaim *items, ErrorData **batch_error)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	int			failed = 0;

	*batch_error = NULL;
	PG_TRY();
	{
		failed = apply_isolating_failures(items);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		if (courier_error_is_transient(edata->sqlerrcode))
			PG_RE_THROW();		/* retried whole, nobody is charged */
		/* outlives the caller's SPI and transaction; the caller frees it */
		MemoryContextSwitchTo(TopMemoryContext);
		*batch_error = CopyErrorData();
		FlushErrorState();
		MemoryContextSwitchTo(oldcontext);
	}
	PG_END_TRY();

	if (*batch_error != NULL)
	{
		courier_charge_lost_batch(items, (*batch_error)->message,
								  unpack_sql_state((*batch_error)->sqlerrcode));
		failed = items->n;
	}
	return failed;
}

/*
 * apply_isolating_failures
 *		Apply the items in a subtransaction; if that fails, bisect.  Returns
 *		the number of items charged a failed attempt.
 *
 * Errors that are not about the data (query cancel, shutdown) are
 * re-thrown: they must end the batch, not be charged to an item.  So are
 * the errors of concurrency (deadlock, serialization failure, lock not
 * available): the batch is tried again as it is, and no item pays.
 */
static int
apply_isolating_failures(CourierClaim *items)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);

	PG_TRY();
	{
		apply_items(items);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_END_TRY();

	if (edata == NULL)
		return 0;

	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
		edata->sqlerrcode == ERRCODE_OUT_OF_MEMORY ||
		courier_error_is_transient(edata->sqlerrcode))
		ReThrowError(edata);

	if (items->n > 1)
	{
		int			half = items->n / 2;
		CourierClaim first = {half, items->ids, items->sellers};
		CourierClaim second = {items->n - half, items->ids + half,
		items->sellers + half};

		return apply_isolating_failures(&first) +
			apply_isolating_failures(&second);
	}

	ereport(LOG,
			(errmsg("courier: logic item " INT64_FORMAT " failed: %s",
					DatumGetInt64(items->ids[0]), edata->message)));
	courier_charge_attempt(items, edata->message,
						   unpack_sql_state(edata->sqlerrcode), 0, false);
	FreeErrorData(edata);
	return 1;
}

static void
apply_items(CourierClaim *items)
{
	Oid			argtypes[4] = {INT8ARRAYOID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID};
	Datum		values[4];

	values[0] = courier_int8_array(items->ids, items->n);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = Int32GetDatum(courier_rollout_percent("notice_v2"));
	values[3] = courier_int8_array(items->sellers, items->n);
	courier_execute_kept(&apply_plan, apply_sql, 4, argtypes, values, NULL,
						 SPI_OK_DELETE);
}
