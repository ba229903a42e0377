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
 * With courier.claim_per_seller both first pick the seller of the oldest
 * due work and then take that seller's work only, so that every statement
 * of the batch is restricted to one seller (a deployment sharded by
 * seller runs it on the node that holds the seller, docs/citus.md).
 *
 * The caller has SPI connected and a snapshot pushed.
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

/*
 * The due items of a stage at time $2, oldest first; the first %s is the
 * stage name, the second empty or the per-seller restriction.
 */
#define DUE_ITEMS_SQL \
	"SELECT item_id, leased_by, solo, seller_id FROM courier.work_items " \
	" WHERE stage = '%s' AND not_before <= $2 %s" \
	" ORDER BY not_before, item_id " \
	" LIMIT $1 FOR UPDATE SKIP LOCKED"

/* the restriction of a claim to the seller $3 (courier.claim_per_seller) */
#define ONE_SELLER " AND seller_id = $3"

static SPIPlanPtr claim_plans[COURIER_NUM_STAGES][2];

/*
 * The ids and sellers of the last claim, kept outside any transaction so
 * that a worker whose batch died with an error can still charge the
 * attempt to its items.
 */
static int64 *last_ids = NULL;
static int64 *last_sellers = NULL;
static int	last_claim_n = 0;
static int	last_claim_size = 0;

static void execute_claim(SPIPlanPtr plan, Datum *values, int expected);
static bool pick_seller(CourierStage stage, TimestampTz now, Datum *seller);
static SPIPlanPtr prepare_pick(const char *sql);
static bool execute_pick(SPIPlanPtr plan, TimestampTz now, Datum *seller);

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
 * pick_seller
 *		courier.claim_per_seller: the seller of the oldest due work of a
 *		stage that no other batch holds, locking that one row (the claim
 *		that follows takes it again); false when nothing is due.  On a
 *		sharded deployment each node's workers pick among the sellers of
 *		their own shards, and the claim is then routed to one shard.
 */
static bool
pick_seller(CourierStage stage, TimestampTz now, Datum *seller)
{
	static SPIPlanPtr plans[COURIER_NUM_STAGES];

	if (plans[stage] == NULL)
		plans[stage] = prepare_pick(stage == COURIER_STAGE_TMS ?
									"SELECT seller_id FROM courier.notices"
									" WHERE status = 'pending' AND due_at <= $1"
									" ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED" :
									psprintf("SELECT seller_id FROM courier.work_items"
											 " WHERE stage = '%s' AND not_before <= $1"
											 " ORDER BY not_before, item_id"
											 " LIMIT 1 FOR UPDATE SKIP LOCKED",
											 courier_stage_name(stage)));
	return execute_pick(plans[stage], now, seller);
}

/*
 * courier_pick_receipt_seller
 *		The same for the receipt stage (receipts.c): the seller of the
 *		notice whose receipt has been due longest.
 */
bool
courier_pick_receipt_seller(TimestampTz now, Datum *seller)
{
	static SPIPlanPtr plan = NULL;

	if (plan == NULL)
		plan = prepare_pick("SELECT seller_id FROM courier.notices"
							" WHERE receipt_status IN ('awaiting', 'unconfirmed')"
							"   AND receipt_due_at <= $1"
							" ORDER BY receipt_due_at LIMIT 1 FOR UPDATE SKIP LOCKED");
	return execute_pick(plan, now, seller);
}

/* A pick statement, kept: $1 is the time. */
static SPIPlanPtr
prepare_pick(const char *sql)
{
	Oid			argtypes[1] = {TIMESTAMPTZOID};

	return courier_prepare_kept(sql, 1, argtypes, false);
}

/* Run a pick statement: false when it found nothing due. */
static bool
execute_pick(SPIPlanPtr plan, TimestampTz now, Datum *seller)
{
	Datum		values[1] = {TimestampTzGetDatum(now)};
	bool		isnull;

	execute_claim(plan, values, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	*seller = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
							&isnull);
	return true;
}

/*
 * courier_claim_due
 *		Lock up to limit due items of a stage for the current transaction:
 *		*claim gets their ids and sellers (in ascending claim order, in the
 *		current memory context).  With courier.claim_per_seller the items
 *		are of one seller.  The claim's rows (item_id, leased_by, solo,
 *		seller_id) stay in SPI_tuptable for the caller.
 */
void
courier_claim_due(CourierStage stage, int limit, CourierClaim *claim)
{
	Oid			argtypes[3] = {INT4OID, TIMESTAMPTZOID, INT8OID};
	TimestampTz now = GetCurrentStatementStartTimestamp();
	Datum		values[3] = {Int32GetDatum(limit), TimestampTzGetDatum(now), 0};
	int			one = courier_claim_per_seller ? 1 : 0;

	claim->n = 0;
	if (one && !pick_seller(stage, now, &values[2]))
	{
		claim->ids = claim->sellers = NULL;
		courier_remember_claim(claim);
		return;
	}
	if (claim_plans[stage][one] == NULL)
		claim_plans[stage][one] =
			courier_prepare_kept(psprintf(DUE_ITEMS_SQL, courier_stage_name(stage),
										  one ? ONE_SELLER : ""),
								 2 + one, argtypes, false);
	execute_claim(claim_plans[stage][one], values, SPI_OK_SELECT);

	claim->n = (int) SPI_processed;
	claim->ids = palloc(sizeof(Datum) * Max(claim->n, 1));
	claim->sellers = palloc(sizeof(Datum) * Max(claim->n, 1));
	for (int i = 0; i < claim->n; i++)
	{
		bool		isnull;

		claim->ids[i] = SPI_getbinval(SPI_tuptable->vals[i],
									  SPI_tuptable->tupdesc, 1, &isnull);
		claim->sellers[i] = SPI_getbinval(SPI_tuptable->vals[i],
										  SPI_tuptable->tupdesc, 4, &isnull);
	}
	courier_remember_claim(claim);
}

/*
 * courier_remember_claim
 *		Copy a claim to last_ids and last_sellers (TopMemoryContext): the
 *		items a batch death is charged to.
 */
void
courier_remember_claim(const CourierClaim *claim)
{
	if (claim->n > last_claim_size)
	{
		if (last_ids)
		{
			pfree(last_ids);
			pfree(last_sellers);
		}
		last_ids = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * claim->n);
		last_sellers = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * claim->n);
		last_claim_size = claim->n;
	}
	for (int i = 0; i < claim->n; i++)
	{
		last_ids[i] = DatumGetInt64(claim->ids[i]);
		last_sellers[i] = DatumGetInt64(claim->sellers[i]);
	}
	last_claim_n = claim->n;
}

/*
 * courier_last_claim
 *		This process's last claim, in the current memory context.
 */
void
courier_last_claim(CourierClaim *claim)
{
	claim->n = last_claim_n;
	claim->ids = palloc(sizeof(Datum) * Max(last_claim_n, 1));
	claim->sellers = palloc(sizeof(Datum) * Max(last_claim_n, 1));
	for (int i = 0; i < last_claim_n; i++)
	{
		claim->ids[i] = Int64GetDatum(last_ids[i]);
		claim->sellers[i] = Int64GetDatum(last_sellers[i]);
	}
}

/*
 * courier_lease_notices
 *		Lease up to limit due notices (the tms stage's queue is the pending
 *		notices) until now + lease_ms, held by this process, and return what
 *		their messages are made of.  A notice whose previous lease ran out is
 *		charged that lost attempt, flagged outcome-unknown.  With
 *		courier.claim_per_seller the notices are of one seller.
 *
 * The result (SPI_tuptable) has the columns order_id, ship_date, attempts,
 * customer_phone, product_name, reason, variant, expired (older than
 * max_age_min minutes), open (the order is still open in this statement's
 * snapshot, which the close ring then covers, closes.c), seller_id and
 * fallback (an AlimTalk that could not reach the customer: courier sends
 * its SMS/LMS fallback now; receipts.c and tms.c leave such a notice
 * pending with its fallback_reason set), refusals (how many of its
 * attempts the provider answered with a refusal, outcome known: the
 * idempotency key changes with it, provider_common.c) and traceparent
 * (the trace its sends carry, NULL for a notice older than 0.7).
 * The caller must commit before doing anything slow with the notices.
 */
int
courier_lease_notices(int limit, int lease_ms, TimestampTz now, int max_age_min)
{
	static SPIPlanPtr plans[2];
	Oid			argtypes[6] = {INT4OID, INT4OID, INT4OID, TIMESTAMPTZOID, INT4OID,
	INT8OID};
	Datum		values[6] = {Int32GetDatum(limit), Int32GetDatum(lease_ms),
		Int32GetDatum(MyProcPid), TimestampTzGetDatum(now),
	Int32GetDatum(max_age_min), 0};
	int			one = courier_claim_per_seller ? 1 : 0;

	if (one && !pick_seller(COURIER_STAGE_TMS, now, &values[5]))
		return 0;

	/*
	 * No join: the claim (locking the rows it takes) gives the row ids
	 * (ctid) of the notices, and the UPDATE reaches exactly those by a TID
	 * scan, whatever the statistics say.  A join of the claim back to the
	 * notices was planned, on a table believed empty, as a scan of the
	 * whole primary key filtered for the claimed rows.  The rows are
	 * locked by this statement, so their ctids cannot move before the
	 * UPDATE reaches them.  Times come in as $4, so the statement reads no
	 * clock of its own (the same time for the whole batch).  In SET,
	 * n.leased_by is the previous holder: set when its lease ran out.  Per
	 * seller, both halves name the seller ($6), so that a sharded
	 * deployment routes the statement to that seller's shard, where its
	 * ctids mean something.
	 */
	if (plans[one] == NULL)
		plans[one] = courier_prepare_kept(psprintf(
			"UPDATE courier.notices n"
			"   SET due_at = $4 + $2 * interval '1 ms',"
			"       leased_by = $3,"
			"       attempts = n.attempts + (n.leased_by IS NOT NULL)::int,"
			"       errors = CASE WHEN n.leased_by IS NULL THEN n.errors ELSE n.errors || "
			"           pg_catalog.jsonb_build_object('at', $4, 'outcome_unknown', true,"
			"               'error', 'the lease of sender ' || n.leased_by || ' ran out: outcome of its send unknown') END"
			" WHERE n.ctid = ANY (ARRAY("
			"    SELECT c.ctid FROM courier.notices c"
			"     WHERE c.status = 'pending' AND c.due_at <= $4%s"
			"     ORDER BY c.due_at LIMIT $1 FOR UPDATE SKIP LOCKED))%s "
			"RETURNING n.order_id, n.ship_date, n.attempts,"
			"          n.customer_phone, n.product_name, n.reason, n.variant,"
			"          n.created_at < $4 - $5 * interval '1 minute',"
			"          coalesce((SELECT o.status IN ('paid', 'shipping_requested')"
			"                      FROM courier.orders o"
			"                     WHERE o.seller_id = n.seller_id AND o.order_id = n.order_id), false),"
			"          n.seller_id, n.fallback_reason IS NOT NULL,"
			"          (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_array_elements(n.errors) e"
			"            WHERE NOT coalesce((e ->> 'outcome_unknown')::boolean, false))::int,"
			"          n.traceparent",
			one ? " AND c.seller_id = $6" : "",
			one ? " AND n.seller_id = $6" : ""),
			5 + one, argtypes, false);
	execute_claim(plans[one], values, SPI_OK_UPDATE_RETURNING);
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
