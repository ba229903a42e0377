/*-------------------------------------------------------------------------
 *
 * retry.c
 *		Retry state of work items: the back-off arithmetic, and charging a
 *		failed attempt to items, which either schedules their next attempt
 *		or moves them, with their whole history, to courier.failures.
 *
 * Every stage charges its failures through courier_charge_attempt, so the
 * rules (max attempts, back-off, what a permanent failure does) are the
 * same everywhere.  Deciding whether something failed is the stage's job.
 *
 * IDENTIFICATION
 *		src/retry.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "courier.h"

/*
 * One statement for a whole batch of failed items: the ones whose attempts
 * run out (or that failed permanently) move to failures with their history
 * and their request's trace, the others get their next not_before.  The
 * two halves touch disjoint rows, so they can share a statement.  The
 * time ($8), the back-off's jitter per item ($9) and its base and cap ($10,
 * $11) come in as parameters: the statement calls no clock nor random
 * function, only the immutable courier.backoff_step (docs/citus.md,
 * rule 3).
 */
static const char *const charge_sql =
"WITH r AS ("
"    SELECT u.*, pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object("
"               'at', $8, 'error', u.error, 'sqlstate', u.sqlstate,"
"               'http_status', u.http_status,"
"               'outcome_unknown', CASE WHEN u.unknown THEN true END)) AS e"
"      FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bool[], $6::bool[],"
"                  $9::float8[], $12::bigint[])"
"           AS u(item_id, error, sqlstate, http_status, permanent, unknown, jitter,"
"                seller_id)"
"), moved AS ("
"    DELETE FROM courier.work_items w USING r"
"     WHERE w.seller_id = r.seller_id AND w.item_id = r.item_id"
"       AND (w.attempts + 1 >= $7 OR r.permanent)"
"    RETURNING w.*, r.e, r.error AS last_error, r.sqlstate AS last_sqlstate,"
"              r.http_status AS last_http_status"
"), failed AS ("
"    INSERT INTO courier.failures (item_id, stage, seller_id, order_id,"
"        request_id, attempts, last_error, last_sqlstate,"
"        last_http_status, errors, first_queued_at, traceparent)"
"    SELECT m.item_id, m.stage, m.seller_id, m.order_id, m.request_id,"
"           m.attempts + 1, m.last_error, m.last_sqlstate,"
"           m.last_http_status, m.errors || m.e, m.created_at,"
"           (SELECT q.traceparent FROM courier.requests q"
"             WHERE q.request_id = m.request_id)"
"      FROM moved m"
") "
"UPDATE courier.work_items w"
"   SET attempts = w.attempts + 1,"
"       not_before = $8 + courier.backoff_step(w.attempts + 1, $10, $11, r.jitter),"
"       leased_by = NULL,"
"       errors = w.errors || r.e"
"  FROM r"
" WHERE w.seller_id = r.seller_id AND w.item_id = r.item_id"
"   AND NOT (w.attempts + 1 >= $7 OR r.permanent)";

/*
 * The same for the tms stage, whose queue entries are the pending notices
 * themselves (keys order_id, ship_date): a notice either falls due again
 * after its back-off or fails, and its failure row names it.  $8 is the
 * time of the charge; $10-$12 the back-off's jitter, base and cap, as in
 * charge_sql.  Only the notices this process still holds ($14, its pid)
 * are charged: a sender whose lease ran out must not charge a notice
 * another one took over.  (That is also what keeps the statement on the
 * primary key: a guard on status = 'pending' matched the partial index
 * notices_due, and a plan made on statistics that said "no notices"
 * nested-looped the whole of that index per charged notice, t/048.)
 */
static const char *const charge_notices_sql =
"WITH r AS ("
"    SELECT u.*, pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object("
"               'at', $8, 'error', u.error, 'sqlstate', u.sqlstate,"
"               'http_status', u.http_status,"
"               'outcome_unknown', CASE WHEN u.unknown THEN true END)) AS e"
"      FROM unnest($1::bigint[], $2::date[], $3::text[], $4::text[], $5::int[],"
"                  $6::bool[], $7::bool[], $10::float8[], $13::bigint[])"
"           AS u(order_id, ship_date, error, sqlstate, http_status, permanent,"
"                unknown, jitter, seller_id)"
"), charged AS ("
"    UPDATE courier.notices n"
"       SET attempts = n.attempts + 1,"
"           status = CASE WHEN n.attempts + 1 >= $9 OR r.permanent"
"                         THEN 'failed' ELSE 'pending' END,"
"           due_at = CASE WHEN n.attempts + 1 >= $9 OR r.permanent THEN NULL"
"                         ELSE $8 + courier.backoff_step(n.attempts + 1, $11, $12, r.jitter) END,"
"           leased_by = NULL,"
"           errors = n.errors || r.e"
"      FROM r"
"     WHERE n.seller_id = r.seller_id AND n.order_id = r.order_id"
"       AND n.ship_date = r.ship_date AND n.leased_by = $14"
"    RETURNING n.seller_id, n.order_id, n.ship_date, n.attempts, n.errors,"
"              n.created_at, n.status, r.error, r.sqlstate, r.http_status,"
"              n.traceparent"
") "
"INSERT INTO courier.failures (stage, seller_id, order_id, ship_date, attempts,"
"    last_error, last_sqlstate, last_http_status, errors, first_queued_at,"
"    traceparent)"
"SELECT 'tms', c.seller_id, c.order_id, c.ship_date, c.attempts, c.error,"
"       c.sqlstate, c.http_status, c.errors, c.created_at, c.traceparent"
"  FROM charged c WHERE c.status = 'failed'";

static SPIPlanPtr charge_plan = NULL;
static SPIPlanPtr charge_notices_plan = NULL;

/*
 * courier_backoff_ms
 *		Milliseconds to wait before retry number attempt (1 for the first
 *		retry): the exponential step min(cap, base * 2^(attempt-1)), of
 *		which a random half is waited on top of the other half ("equal
 *		jitter"), so retries of a burst spread out but never come sooner
 *		than half the step.
 */
double
courier_backoff_ms(int attempt)
{
	return courier_backoff_step_ms(attempt, courier_retry_base_ms,
								   courier_retry_cap_ms,
								   pg_prng_double(&pg_global_prng_state));
}

/*
 * courier_backoff_step_ms
 *		The same from given parts: base and cap in ms, jitter in [0, 1).  A
 *		pure function, so the statements that charge many items compute it
 *		per item from a jitter they are given (courier.backoff_step).
 */
double
courier_backoff_step_ms(int attempt, int base_ms, int cap_ms, double jitter)
{
	double		step;

	if (attempt < 1)
		attempt = 1;
	step = (double) base_ms * pow(2.0, Min(attempt - 1, 60));
	if (step > cap_ms)
		step = cap_ms;
	return step / 2.0 + jitter * step / 2.0;
}

/*
 * courier_error_is_transient
 *		Errors of concurrency, not of the data: a deadlock, a serialization
 *		failure (SQLSTATE class 40), a lock not available.  The work is
 *		tried again as it is; no item is charged an attempt for them.
 */
bool
courier_error_is_transient(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
}

/*
 * courier_charges_init
 *		Start a list of failed attempts to charge, for up to size items of a
 *		stage (work items of the logic stage, notices of the tms stage), in
 *		the current memory context.
 */
void
courier_charges_init(CourierCharges *c, int size, CourierStage stage)
{
	size = Max(size, 1);
	c->n = 0;
	c->stage = stage;
	c->sellers = palloc(sizeof(Datum) * size);
	c->ids = palloc(sizeof(Datum) * size);
	c->dates = palloc(sizeof(Datum) * size);
	c->jitter = palloc(sizeof(Datum) * size);
	c->errors = palloc(sizeof(Datum) * size);
	c->sqlstates = palloc(sizeof(Datum) * size);
	c->sqlstate_nulls = palloc(sizeof(bool) * size);
	c->http = palloc(sizeof(Datum) * size);
	c->http_nulls = palloc(sizeof(bool) * size);
	c->permanent = palloc(sizeof(Datum) * size);
	c->unknown = palloc(sizeof(Datum) * size);
}

/*
 * courier_charges_add
 *		One failed attempt of an item (a work item's seller and id, or a
 *		notice's seller, order_id and ship_date): why (error; sqlstate and http_status
 *		when there are some, NULL and 0 otherwise), whether it is permanent
 *		(straight to failures) and whether the outcome of a send is unknown
 *		(flagged in the history).
 */
void
courier_charges_add(CourierCharges *c, int64 seller, int64 id,
					DateADT ship_date, const char *error, const char *sqlstate, int http_status,
					bool permanent, bool unknown)
{
	int			i = c->n++;

	c->sellers[i] = Int64GetDatum(seller);
	c->ids[i] = Int64GetDatum(id);
	c->dates[i] = DateADTGetDatum(ship_date);
	c->jitter[i] = Float8GetDatum(pg_prng_double(&pg_global_prng_state));
	c->errors[i] = CStringGetTextDatum(error ? error : "unknown error");
	c->sqlstate_nulls[i] = (sqlstate == NULL);
	c->sqlstates[i] = sqlstate ? CStringGetTextDatum(sqlstate) : (Datum) 0;
	c->http_nulls[i] = (http_status == 0);
	c->http[i] = Int32GetDatum(http_status);
	c->permanent[i] = BoolGetDatum(permanent);
	c->unknown[i] = BoolGetDatum(unknown);
}

/*
 * courier_charge
 *		Charge the attempts of the list, in one statement: each item either
 *		gets its next not_before or, when its attempts run out or it failed
 *		permanently, moves with its whole history to courier.failures.
 *
 * Runs in the caller's transaction with SPI connected; for the logic stage
 * that is after the failed subtransaction was rolled back, so the charge
 * commits with the rest of the batch.
 */
void
courier_charge(CourierCharges *c)
{
	/*
	 * logic: $1 ids, $2-$6 why, $7 max attempts, $8 now, $9 jitter, $10-$11
	 * back-off, $12 sellers
	 */
	Oid			item_types[12] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, BOOLARRAYOID, BOOLARRAYOID, INT4OID, TIMESTAMPTZOID,
	FLOAT8ARRAYOID, INT4OID, INT4OID, INT8ARRAYOID};

	/*
	 * tms: $1-$2 keys, $3-$7 why, $8 now, $9 max attempts, $10 jitter,
	 * $11-$12 back-off, $13 sellers
	 */
	Oid			notice_types[14] = {INT8ARRAYOID, DATEARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, INT4ARRAYOID, BOOLARRAYOID, BOOLARRAYOID, TIMESTAMPTZOID,
	INT4OID, FLOAT8ARRAYOID, INT4OID, INT4OID, INT8ARRAYOID, INT4OID};
	Datum		values[14];
	int			dims[1] = {c->n};
	int			lbs[1] = {1};
	Datum		ids,
				sellers,
				errors,
				sqlstates,
				http,
				permanent,
				unknown,
				jitter,
				now;

	if (c->n == 0)
		return;
	ids = courier_int8_array(c->ids, c->n);
	sellers = courier_int8_array(c->sellers, c->n);
	errors = PointerGetDatum(construct_array(c->errors, c->n, TEXTOID, -1,
											 false, TYPALIGN_INT));
	sqlstates = PointerGetDatum(construct_md_array(c->sqlstates, c->sqlstate_nulls,
												   1, dims, lbs, TEXTOID, -1,
												   false, TYPALIGN_INT));
	http = PointerGetDatum(construct_md_array(c->http, c->http_nulls, 1,
											  dims, lbs, INT4OID, 4, true,
											  TYPALIGN_INT));
	permanent = PointerGetDatum(construct_array(c->permanent, c->n, BOOLOID, 1,
												true, TYPALIGN_CHAR));
	unknown = PointerGetDatum(construct_array(c->unknown, c->n, BOOLOID, 1,
											  true, TYPALIGN_CHAR));
	jitter = PointerGetDatum(construct_array(c->jitter, c->n, FLOAT8OID, 8,
											 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	now = TimestampTzGetDatum(GetCurrentTimestamp());

	if (c->stage == COURIER_STAGE_TMS)
	{
		values[0] = ids;
		values[1] = PointerGetDatum(construct_array(c->dates, c->n, DATEOID, 4,
													true, TYPALIGN_INT));
		values[2] = errors;
		values[3] = sqlstates;
		values[4] = http;
		values[5] = permanent;
		values[6] = unknown;
		values[7] = now;
		values[8] = Int32GetDatum(courier_max_attempts);
		values[9] = jitter;
		values[10] = Int32GetDatum(courier_retry_base_ms);
		values[11] = Int32GetDatum(courier_retry_cap_ms);
		values[12] = sellers;
		values[13] = Int32GetDatum(MyProcPid);
		if (charge_notices_plan == NULL)
			charge_notices_plan = courier_prepare_kept(charge_notices_sql, 14,
													   notice_types, true);
		courier_execute_kept(&charge_notices_plan, charge_notices_sql, 14,
							 notice_types, values, NULL, SPI_OK_INSERT);
		return;
	}

	values[0] = ids;
	values[1] = errors;
	values[2] = sqlstates;
	values[3] = http;
	values[4] = permanent;
	values[5] = unknown;
	values[6] = Int32GetDatum(courier_max_attempts);
	values[7] = now;
	values[8] = jitter;
	values[9] = Int32GetDatum(courier_retry_base_ms);
	values[10] = Int32GetDatum(courier_retry_cap_ms);
	values[11] = sellers;
	courier_execute_kept(&charge_plan, charge_sql, 12, item_types, values, NULL,
						 SPI_OK_UPDATE);
}

/*
 * courier_charge_attempt
 *		Charge one attempt to every item of a claim for the same reason (an
 *		item that failed alone, or a batch that died as a whole).
 */
void
courier_charge_attempt(const CourierClaim *items, const char *error,
					   const char *sqlstate, int http_status, bool permanent)
{
	CourierCharges charges;

	courier_charges_init(&charges, items->n, COURIER_STAGE_LOGIC);
	for (int i = 0; i < items->n; i++)
		courier_charges_add(&charges, DatumGetInt64(items->sellers[i]),
							DatumGetInt64(items->ids[i]), 0, error, sqlstate,
							http_status, permanent, false);
	courier_charge(&charges);
}

/*
 * courier_charge_lost_batch
 *		A batch died as a whole (an error no subtransaction could isolate,
 *		such as a cancel): charge every item an attempt and mark it solo, so
 *		the logic stage retries each alone and only the culprit pays again.
 */
void
courier_charge_lost_batch(const CourierClaim *items, const char *error,
						  const char *sqlstate)
{
	static SPIPlanPtr solo_plan = NULL;
	Oid			argtypes[2] = {INT8ARRAYOID, INT8ARRAYOID};
	Datum		values[2];

	courier_charge_attempt(items, error, sqlstate, 0, false);
	values[0] = courier_int8_array(items->ids, items->n);
	values[1] = courier_int8_array(items->sellers, items->n);
	courier_execute_kept(&solo_plan,
						 "UPDATE courier.work_items w SET solo = true"
						 "  FROM unnest($1::bigint[], $2::bigint[]) AS c(item_id, seller_id)"
						 " WHERE w.seller_id = c.seller_id AND w.item_id = c.item_id",
						 2, argtypes, values, NULL, SPI_OK_UPDATE);
}
