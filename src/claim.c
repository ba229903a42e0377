/*-------------------------------------------------------------------------
 *
 * claim.c
 *		Claiming due work items: the one place that says which items a
 *		worker of a stage takes next.
 *
 * An item is due when its not_before has passed.  The claim takes the
 * oldest due items of one stage, LIMIT batch size, FOR UPDATE SKIP LOCKED,
 * through the index work_items_due, so any number of workers share a
 * queue without waiting on each other and without taking an item twice.
 *
 * Two ways to hold a claim:
 *	- courier_claim_due: the row locks of the calling transaction are the
 *	  claim (the logic stage does all its work in that transaction);
 *	- courier_lease_due: the claim outlives the transaction as a lease:
 *	  not_before moves to the lease's end and leased_by names the holder,
 *	  so a sender can commit, go on the network, and if it dies the items
 *	  fall due again by themselves when the lease runs out.
 *
 * The caller has SPI connected and a snapshot pushed.  A per-seller
 * variant (for a sharded deployment) would be added beside these.
 *
 * IDENTIFICATION
 *		src/claim.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "courier.h"

/* The due items of a stage, oldest first; %s is the stage name. */
#define DUE_ITEMS_SQL \
	"SELECT item_id, leased_by, solo FROM courier.work_items " \
	" WHERE stage = '%s' AND not_before <= pg_catalog.statement_timestamp() " \
	" ORDER BY not_before, item_id " \
	" LIMIT $1 FOR UPDATE SKIP LOCKED"

static SPIPlanPtr claim_plans[COURIER_NUM_STAGES];

/*
 * The ids of the last claim, kept outside any transaction so that a worker
 * whose batch died with an error can still charge the attempt to them.
 */
static int64 *last_claim = NULL;
static int	last_claim_n = 0;
static int	last_claim_size = 0;
static SPIPlanPtr lease_plans[COURIER_NUM_STAGES];

static void execute_claim(SPIPlanPtr plan, Datum *values, int expected);

/*
 * execute_claim
 *		Run a claim statement (execute_pinned, without sorts).
 */
static void
execute_claim(SPIPlanPtr plan, Datum *values, int expected)
{
	int			ret = courier_execute_pinned(plan, values, NULL, true);

	if (ret != expected)
		elog(ERROR, "courier: claim failed: %s", SPI_result_code_string(ret));
}

/*
 * courier_claim_due
 *		Lock up to limit due items of a stage for the current transaction and
 *		return their ids as an int8[] (in ascending claim order).  The claim's
 *		rows (item_id, leased_by, solo) stay in SPI_tuptable for the caller.
 */
Datum
courier_claim_due(CourierStage stage, int limit, int *nclaimed)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(limit)};
	Datum		result;

	if (claim_plans[stage] == NULL)
		claim_plans[stage] = courier_prepare_kept(psprintf(DUE_ITEMS_SQL,
												   courier_stage_name(stage)),
										  1, argtypes);
	execute_claim(claim_plans[stage], values, SPI_OK_SELECT);
	result = courier_ids_to_array(nclaimed);
	courier_remember_claim(result);
	return result;
}

/*
 * courier_remember_claim
 *		Copy the ids of a claim to last_claim (TopMemoryContext): the items
 *		a batch death is charged to.
 */
void
courier_remember_claim(Datum ids)
{
	ArrayType  *arr = DatumGetArrayTypeP(ids);
	int			n = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));

	if (n > last_claim_size)
	{
		if (last_claim)
			pfree(last_claim);
		last_claim = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * n);
		last_claim_size = n;
	}
	if (n > 0)
		memcpy(last_claim, ARR_DATA_PTR(arr), sizeof(int64) * n);
	last_claim_n = n;
}

/*
 * courier_last_claim
 *		The ids of this process's last claim, as an int8[] in the current
 *		memory context.
 */
Datum
courier_last_claim(int *n)
{
	Datum	   *ids = palloc(sizeof(Datum) * Max(last_claim_n, 1));

	for (int i = 0; i < last_claim_n; i++)
		ids[i] = Int64GetDatum(last_claim[i]);
	*n = last_claim_n;
	return courier_int8_array(ids, last_claim_n);
}

/*
 * courier_lease_due
 *		Claim up to limit due items of a stage as a lease that ends after
 *		lease_ms, held by this process.  An item whose previous lease ran
 *		out is charged that lost attempt, flagged outcome-unknown.  The result (SPI_tuptable) has the
 *		columns item_id, order_id, ship_date, attempts, was_leased; was_leased
 *		is true for an item whose previous lease ran out, i.e. whose holder
 *		died with the outcome of its send unknown.
 *
 * The caller must commit before doing anything slow with the items.
 */
int
courier_lease_due(CourierStage stage, int limit, int lease_ms)
{
	Oid			argtypes[3] = {INT4OID, INT4OID, INT4OID};
	Datum		values[3] = {Int32GetDatum(limit), Int32GetDatum(lease_ms),
	Int32GetDatum(MyProcPid)};

	if (lease_plans[stage] == NULL)
	{
		char	   *due = psprintf(DUE_ITEMS_SQL, courier_stage_name(stage));

		/*
		 * The claim is a MATERIALIZED CTE: run once, then joined.  As a
		 * subquery in FROM, a generic plan may put it on the inner side of
		 * a nested loop and re-run the claim for every row of the queue.
		 */
		lease_plans[stage] = courier_prepare_kept(psprintf(
			"WITH c AS MATERIALIZED (%s) "
			"UPDATE courier.work_items w "
			"   SET not_before = pg_catalog.statement_timestamp() + $2 * interval '1 ms', "
			"       leased_by = $3, "
			"       attempts = w.attempts + (c.leased_by IS NOT NULL)::int, "
			"       errors = CASE WHEN c.leased_by IS NULL THEN w.errors ELSE w.errors || "
			"           pg_catalog.jsonb_build_object('at', pg_catalog.clock_timestamp(), 'outcome_unknown', true, "
			"               'error', 'the lease of sender ' || c.leased_by || ' ran out: outcome of its send unknown') END "
			"  FROM c "
			" WHERE w.item_id = c.item_id "
			"RETURNING w.item_id, w.order_id, w.ship_date, w.attempts, "
			"          c.leased_by IS NOT NULL AS was_leased", due),
			3, argtypes);
	}
	execute_claim(lease_plans[stage], values, SPI_OK_UPDATE_RETURNING);
	{
		SPITupleTable *tuptable = SPI_tuptable;
		uint64		processed = SPI_processed;
		int			n;

		courier_remember_claim(courier_ids_to_array(&n));
		SPI_tuptable = tuptable;
		SPI_processed = processed;
	}
	return (int) SPI_processed;
}

/*
 * courier_next_due_ms
 *		Milliseconds until the earliest not_before of a stage (an item in
 *		back-off, a lease running out), so an idle worker sleeps exactly
 *		until then; courier.idle_wakeup when the queue is empty.
 */
long
courier_next_due_ms(CourierStage stage)
{
	static SPIPlanPtr plans[COURIER_NUM_STAGES];
	bool		isnull;
	Datum		d;

	courier_execute_kept(&plans[stage],
						 psprintf("SELECT pg_catalog.ceil(extract(epoch FROM"
								  " pg_catalog.min(not_before) - pg_catalog.clock_timestamp()) * 1000)::bigint"
								  "  FROM courier.work_items WHERE stage = '%s'",
								  courier_stage_name(stage)),
						 0, NULL, NULL, NULL, SPI_OK_SELECT);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return courier_idle_wakeup_ms;
	return Min(Max(DatumGetInt64(d), 0) + 1, courier_idle_wakeup_ms);
}
