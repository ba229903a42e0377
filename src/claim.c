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

static SPIPlanPtr prepare_kept(const char *sql, int nargs, Oid *argtypes);
static int	execute_pinned(SPIPlanPtr plan, Datum *values, const char *nulls,
						   bool claim);
static void execute_claim(SPIPlanPtr plan, Datum *values, int expected);

/*
 * prepare_kept
 *		Prepare a statement once per process and keep the plan.  Callers
 *		cache the result in a static; the plan cache revalidates it if the
 *		extension's tables are recreated.
 *
 * The plan is generic from the first execution: courier's statements take
 * their rows from unnest($1) of claimed ids and reach tables through
 * primary keys, which the generic plan does with nested loops.  Custom
 * plans, made with the real 1,000-element array and a queue's unsettled
 * statistics, chose hash joins over sequential scans of the queue and made
 * the first batches of every new process 2-3 times slower.
 */
static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes,
										  CURSOR_OPT_GENERIC_PLAN);

	if (plan == NULL)
		elog(ERROR, "courier: SPI_prepare failed (%s): %s",
			 SPI_result_code_string(SPI_result), sql);
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "courier: SPI_keepplan failed");
	return plan;
}

/*
 * courier_execute_kept
 *		Run a statement kept by the caller in *plan (preparing it on first
 *		use) and check it succeeded.  Every courier statement goes through
 *		here so the error handling is in one place, and so is the planner's
 *		pinning (execute_pinned).
 */
int
courier_execute_kept(SPIPlanPtr *plan, const char *sql, int nargs,
					 Oid *argtypes, Datum *values, const char *nulls,
					 int expected)
{
	int			ret;

	if (*plan == NULL)
		*plan = prepare_kept(sql, nargs, argtypes);
	ret = execute_pinned(*plan, values, nulls, false);
	if (ret != expected)
		elog(ERROR, "courier: statement failed (%s): %s",
			 SPI_result_code_string(ret), sql);
	return ret;
}

/*
 * courier_ids_to_array
 *		Collect the int8 first column of the last SPI result into an int8[]
 *		datum, allocated in the caller's (per-batch) context.
 */
Datum
courier_ids_to_array(int *n)
{
	uint64		nrows = SPI_processed;
	Datum	   *ids;

	ids = palloc(sizeof(Datum) * Max(nrows, 1));
	for (uint64 i = 0; i < nrows; i++)
	{
		bool		isnull;

		ids[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
							   1, &isnull);
	}
	*n = (int) nrows;
	return PointerGetDatum(construct_array(ids, (int) nrows, INT8OID,
										   8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * execute_pinned
 *		Execute a kept plan with the planner pinned to the shapes courier's
 *		statements are written for, whatever the statistics say when the
 *		plan is made (or remade after an ANALYZE).
 *
 * Every kept statement reaches courier's tables from claimed ids or keys,
 * through indexes: no sequential scan.  A plan made while the queue was
 * empty, or from statistics that say few orders are open, would otherwise
 * hash-join a sequential scan of the whole queue or of every order into
 * each batch: milliseconds at a few rows, seconds at a million.  A claim
 * (claim) also goes without sorts and bitmap scans: the queue fills and
 * empties faster than autovacuum analyzes it, and with the statistics it
 * has the planner often believes few items are due and picks a bitmap
 * scan that reads and sorts every due item, instead of the ordered scan
 * of work_items_due that stops after LIMIT rows.  The settings are made
 * the way a function's SET clause makes them, for this statement only.
 */
static int
execute_pinned(SPIPlanPtr plan, Datum *values, const char *nulls, bool claim)
{
	int			save_nestlevel = NewGUCNestLevel();
	int			ret;

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (claim)
	{
		(void) set_config_option("enable_sort", "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	}
	ret = SPI_execute_plan(plan, values, nulls, false, 0);
	AtEOXact_GUC(true, save_nestlevel);
	return ret;
}

/*
 * execute_claim
 *		Run a claim statement (execute_pinned, without sorts).
 */
static void
execute_claim(SPIPlanPtr plan, Datum *values, int expected)
{
	int			ret = execute_pinned(plan, values, NULL, true);

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
		claim_plans[stage] = prepare_kept(psprintf(DUE_ITEMS_SQL,
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
	return PointerGetDatum(construct_array(ids, last_claim_n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
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
		lease_plans[stage] = prepare_kept(psprintf(
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
