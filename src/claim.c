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
 *	- courier_lease_notices: the claim outlives the transaction as a
 *	  lease: the tms stage's queue is the pending notices, whose due_at
 *	  moves to the lease's end while leased_by names the holder, so a
 *	  sender can commit, go on the network, and if it dies the notices
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

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "courier.h"

/* The due items of a stage at time $2, oldest first; %s is the stage name. */
#define DUE_ITEMS_SQL \
	"SELECT item_id, leased_by, solo FROM courier.work_items " \
	" WHERE stage = '%s' AND not_before <= $2 " \
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
	Oid			argtypes[2] = {INT4OID, TIMESTAMPTZOID};
	Datum		values[2] = {Int32GetDatum(limit),
	TimestampTzGetDatum(GetCurrentStatementStartTimestamp())};
	Datum		result;

	if (claim_plans[stage] == NULL)
		claim_plans[stage] = courier_prepare_kept(psprintf(DUE_ITEMS_SQL,
												   courier_stage_name(stage)),
										  2, argtypes, false);
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
 * courier_lease_notices
 *		Lease up to limit due notices (the tms stage's queue is the pending
 *		notices) until now + lease_ms, held by this process, and return what
 *		their messages are made of.  A notice whose previous lease ran out is
 *		charged that lost attempt, flagged outcome-unknown.
 *
 * The result (SPI_tuptable) has the columns order_id, ship_date, attempts,
 * customer_phone, product_name, reason, variant, expired (older
 * than max_age_min minutes) and open (the order is still open in this
 * statement's snapshot, which the close ring then covers, closes.c).
 * The caller must commit before doing anything slow with the notices.
 */
int
courier_lease_notices(int limit, int lease_ms, TimestampTz now, int max_age_min)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[5] = {INT4OID, INT4OID, INT4OID, TIMESTAMPTZOID, INT4OID};
	Datum		values[5] = {Int32GetDatum(limit), Int32GetDatum(lease_ms),
		Int32GetDatum(MyProcPid), TimestampTzGetDatum(now),
	Int32GetDatum(max_age_min)};

	/*
	 * No join: the claim (locking the rows it takes) gives the row ids
	 * (ctid) of the notices, and the UPDATE reaches exactly those by a TID
	 * scan, whatever the statistics say.  A join of the claim back to the
	 * notices was planned, on a table believed empty, as a scan of the
	 * whole primary key filtered for the claimed rows.  The rows are
	 * locked by this statement, so their ctids cannot move before the
	 * UPDATE reaches them.  Times come in as $4, so the statement reads no
	 * clock of its own (the same time for the whole batch).  In SET,
	 * n.leased_by is the previous holder: set when its lease ran out.
	 */
	if (plan == NULL)
		plan = courier_prepare_kept(
			"UPDATE courier.notices n"
			"   SET due_at = $4 + $2 * interval '1 ms',"
			"       leased_by = $3,"
			"       attempts = n.attempts + (n.leased_by IS NOT NULL)::int,"
			"       errors = CASE WHEN n.leased_by IS NULL THEN n.errors ELSE n.errors || "
			"           pg_catalog.jsonb_build_object('at', $4, 'outcome_unknown', true,"
			"               'error', 'the lease of sender ' || n.leased_by || ' ran out: outcome of its send unknown') END"
			" WHERE n.ctid = ANY (ARRAY("
			"    SELECT c.ctid FROM courier.notices c"
			"     WHERE c.status = 'pending' AND c.due_at <= $4"
			"     ORDER BY c.due_at LIMIT $1 FOR UPDATE SKIP LOCKED)) "
			"RETURNING n.order_id, n.ship_date, n.attempts,"
			"          n.customer_phone, n.product_name, n.reason, n.variant,"
			"          n.created_at < $4 - $5 * interval '1 minute',"
			"          coalesce((SELECT o.status IN ('paid', 'shipping_requested')"
			"                      FROM courier.orders o WHERE o.order_id = n.order_id), false)",
			5, argtypes, false);
	execute_claim(plan, values, SPI_OK_UPDATE_RETURNING);
	return (int) SPI_processed;
}

/*
 * courier_next_due_ms
 *		Milliseconds until the earliest not_before of a stage (due_at of a
 *		pending notice for the tms stage: a back-off, a lease running out), so an idle worker sleeps exactly
 *		until then; courier.idle_wakeup when the queue is empty.
 */
long
courier_next_due_ms(CourierStage stage)
{
	static SPIPlanPtr plans[COURIER_NUM_STAGES];
	bool		isnull;
	Datum		d;

	courier_execute_kept(&plans[stage],
						 stage == COURIER_STAGE_TMS ?
						 "SELECT pg_catalog.ceil(extract(epoch FROM"
						 " pg_catalog.min(due_at) - pg_catalog.clock_timestamp()) * 1000)::bigint"
						 "  FROM courier.notices WHERE status = 'pending'" :
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
