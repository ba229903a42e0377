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
#include "utils/builtins.h"

#include "courier.h"

/*
 * One statement: items whose attempts run out (or that failed permanently)
 * move to failures, the others get their next not_before.  The two halves
 * touch disjoint rows, so they can share a statement.
 */
static const char *const charge_sql =
"WITH entry AS ("
"    SELECT jsonb_build_object('at', statement_timestamp(), 'error', $2::text,"
"                              'sqlstate', $3::text, 'http_status', $4::int) AS e"
"), moved AS ("
"    DELETE FROM courier.work_items w"
"     WHERE w.item_id = ANY ($1) AND (w.attempts + 1 >= $5 OR $6)"
"    RETURNING w.*"
"), failed AS ("
"    INSERT INTO courier.failures (item_id, stage, seller_id, order_id,"
"        request_id, ship_date, attempts, last_error, last_sqlstate, errors,"
"        first_queued_at)"
"    SELECT m.item_id, m.stage, m.seller_id, m.order_id, m.request_id,"
"           m.ship_date, m.attempts + 1, $2, $3,"
"           m.errors || (SELECT e FROM entry), m.created_at"
"      FROM moved m"
"    RETURNING stage, order_id, ship_date"
"), failed_notices AS ("
"    UPDATE courier.notices n SET status = 'failed'"
"      FROM failed f"
"     WHERE f.stage = 'tms' AND n.order_id = f.order_id AND n.ship_date = f.ship_date"
") "
"UPDATE courier.work_items w"
"   SET attempts = w.attempts + 1,"
"       not_before = statement_timestamp() + courier.backoff_delay(w.attempts + 1),"
"       leased_by = NULL,"
"       errors = w.errors || (SELECT e FROM entry)"
" WHERE w.item_id = ANY ($1) AND NOT (w.attempts + 1 >= $5 OR $6)";

static SPIPlanPtr charge_plan = NULL;

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
	double		step;

	if (attempt < 1)
		attempt = 1;
	step = (double) courier_retry_base_ms * pow(2.0, Min(attempt - 1, 60));
	if (step > courier_retry_cap_ms)
		step = courier_retry_cap_ms;
	return step / 2.0 + pg_prng_double(&pg_global_prng_state) * step / 2.0;
}

/*
 * courier_charge_attempt
 *		Charge one failed attempt to the given items (an int8[] datum).
 *		permanent sends them to failures at once, whatever their attempts.
 *
 * Runs in the caller's transaction (SPI connected); for the logic stage
 * that is after the failed subtransaction was rolled back, so the charge
 * itself commits with the batch.  sqlstate or http_status may be absent
 * (NULL / 0).
 */
void
courier_charge_attempt(Datum item_ids, const char *error, const char *sqlstate,
					   int http_status, bool permanent)
{
	Oid			argtypes[6] = {INT8ARRAYOID, TEXTOID, TEXTOID, INT4OID,
	INT4OID, BOOLOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = item_ids;
	values[1] = CStringGetTextDatum(error ? error : "unknown error");
	if (sqlstate)
		values[2] = CStringGetTextDatum(sqlstate);
	else
		nulls[2] = 'n';
	values[3] = Int32GetDatum(http_status);
	if (http_status == 0)
		nulls[3] = 'n';
	values[4] = Int32GetDatum(courier_max_attempts);
	values[5] = BoolGetDatum(permanent);

	courier_execute_kept(&charge_plan, charge_sql, 6, argtypes, values, nulls,
						 SPI_OK_UPDATE);
}
