/*-------------------------------------------------------------------------
 *
 * ops.c
 *		The SQL-callable functions for operators and tests: run_once (one
 *		batch of a stage in the calling session), backoff_delay (the retry
 *		arithmetic, used by the retry statement), shared_counters,
 *		tms_state, subscriber_workers and subscriber_latency (what
 *		courier.metrics() and courier.subscribers read from shared memory),
 *		and wake_subscribers.
 *
 * No app-facing function lives here (api.c), and no stage's work: a
 * batch is the stage's own (logic.c, tms.c); this file only picks which.
 *
 * IDENTIFICATION
 *		src/ops.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/timestamp.h"

#include "courier.h"

PG_FUNCTION_INFO_V1(courier_run_once);
PG_FUNCTION_INFO_V1(courier_backoff_delay);
PG_FUNCTION_INFO_V1(courier_backoff_step);
PG_FUNCTION_INFO_V1(courier_shared_counters);
PG_FUNCTION_INFO_V1(courier_subscriber_workers);
PG_FUNCTION_INFO_V1(courier_tms_state);
PG_FUNCTION_INFO_V1(courier_subscriber_latency);
PG_FUNCTION_INFO_V1(courier_wake_subscribers);

static void put_counter(ReturnSetInfo *rsinfo, const char *stage,
						const char *counter, uint64 value);
static void latency_datums(CourierTmsLimits *lim, Datum *values);

/* Fills the values and nulls of one subscriber slot's row (subscriber_rows). */
typedef void (*SubscriberRowFn) (CourierSubscriberSlot *slot, Datum *values, bool *nulls);
#define SUBSCRIBER_ROW_MAX	8		/* the widest row: subscriber_workers' */

static Datum subscriber_rows(FunctionCallInfo fcinfo, SubscriberRowFn row);
static void worker_row(CourierSubscriberSlot *slot, Datum *values, bool *nulls);
static void latency_row(CourierSubscriberSlot *slot, Datum *values, bool *nulls);

/* CourierBreakerState's names, as SQL shows them */
static const char *const breaker_names[] = {"closed", "open", "probing"};

/*
 * courier_run_once
 *		Process one batch of a stage in the calling session and return the
 *		number of items handled.  The switches apply here too: a stopped
 *		stage handles nothing and says why.
 */
Datum
courier_run_once(PG_FUNCTION_ARGS)
{
	char	   *name;
	CourierStage stage;
	const char *why;
	int			handled;
	char	   *version;
	ErrorData  *batch_error = NULL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stage must not be NULL"),
				 errhint("The stages are logic and tms.")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	stage = courier_stage_from_name(name);

	if (!courier_stage_runnable(stage, &why))
	{
		ereport(NOTICE,
				(errmsg("courier stage \"%s\" is stopped: %s", name, why)));
		PG_RETURN_INT32(0);
	}

	SPI_connect();
	version = courier_installed_version();
	if (version == NULL || strcmp(version, COURIER_SCHEMA_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("courier.run_once needs the extension at version %s, it is at %s",
						COURIER_SCHEMA_VERSION, version ? version : "none"),
				 errdetail("The library was updated; its stages work on the schema of its own version."),
				 errhint("Run ALTER EXTENSION courier UPDATE.")));
	if (stage == COURIER_STAGE_LOGIC)
		handled = courier_logic_run_batch(&batch_error);
	else
		handled = courier_tms_run_once();
	SPI_finish();
	if (batch_error != NULL)
	{
		ereport(WARNING,
				(errmsg("courier %s batch of %d items failed as a whole: %s",
						name, handled, batch_error->message),
				 errdetail("Every item of the batch was charged an attempt and will be retried alone.")));
		FreeErrorData(batch_error);
	}
	PG_RETURN_INT32(handled);
}

/*
 * courier_backoff_delay
 *		SQL face of courier_backoff_ms, used by the retry statement and by
 *		tests of the arithmetic.
 */
Datum
courier_backoff_delay(PG_FUNCTION_ARGS)
{
	int32		attempt = PG_GETARG_INT32(0);
	double		ms = courier_backoff_ms(attempt);
	Interval   *result = palloc0(sizeof(Interval));

	result->time = (TimeOffset) (ms * 1000.0);
	PG_RETURN_INTERVAL_P(result);
}

/*
 * courier_backoff_step
 *		SQL: courier.backoff_step(attempt, base_ms, cap_ms, jitter) returns
 *		interval: the wait before retry number attempt, from given parts.
 *		Immutable, so the charge statements may call it anywhere; they pass
 *		the settings and a jitter drawn per item.
 */
Datum
courier_backoff_step(PG_FUNCTION_ARGS)
{
	double		ms = courier_backoff_step_ms(PG_GETARG_INT32(0), PG_GETARG_INT32(1),
											 PG_GETARG_INT32(2), PG_GETARG_FLOAT8(3));
	Interval   *result = palloc0(sizeof(Interval));

	result->time = (TimeOffset) (ms * 1000.0);
	PG_RETURN_INTERVAL_P(result);
}

/*
 * courier_shared_counters
 *		The counters in shared memory as (stage, counter, value) rows, for
 *		courier.metrics().  Empty when courier is not preloaded.
 */
Datum
courier_shared_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	uint64		requests,
				throttled,
				breaker_opened;

	InitMaterializedSRF(fcinfo, 0);
	if (courier_shared == NULL)
		return (Datum) 0;

	for (int s = 0; s < COURIER_NUM_STAGES; s++)
	{
		CourierStageState *st = &courier_shared->stages[s];
		const char *stage = courier_stage_name((CourierStage) s);

		put_counter(rsinfo, stage, "done", pg_atomic_read_u64(&st->items_done));
		put_counter(rsinfo, stage, "failed", pg_atomic_read_u64(&st->items_failed));
		put_counter(rsinfo, stage, "batches", pg_atomic_read_u64(&st->batches));
	}
	courier_limits_counters(&requests, &throttled, &breaker_opened);
	put_counter(rsinfo, "tms", "tms_requests", requests);
	put_counter(rsinfo, "tms", "tms_throttled", throttled);
	put_counter(rsinfo, "tms", "tms_breaker_opened", breaker_opened);
	return (Datum) 0;
}

/* One row of courier_shared_counters. */
static void
put_counter(ReturnSetInfo *rsinfo, const char *stage, const char *counter,
			uint64 value)
{
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	values[0] = CStringGetTextDatum(stage);
	values[1] = CStringGetTextDatum(counter);
	values[2] = Int64GetDatum((int64) value);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * courier_tms_state
 *		SQL: courier.tms_state() returns one row: the TMS's circuit breaker
 *		(closed, open, probing) and the latency histogram of its requests
 *		since the server started: bucket bounds in seconds (the last is
 *		Infinity), cumulative counts, and the sum of seconds, the shape of a
 *		Prometheus histogram.  For metrics() and failure_digest().
 */
Datum
courier_tms_state(PG_FUNCTION_ARGS)
{
	CourierTmsLimits *lim = courier_limits_tms();
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "courier: tms_state must return a row");
	tupdesc = BlessTupleDesc(tupdesc);

	values[0] = CStringGetTextDatum(breaker_names[courier_limits_breaker_state_on(lim)]);
	latency_datums(lim, &values[1]);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * courier_subscriber_latency
 *		SQL: courier.subscriber_latency() returns one row per subscriber
 *		being delivered: its id and the latency histogram of its worker's
 *		POSTs since the worker took its slot (the shape of tms_state's).
 *		Empty when courier is not preloaded.
 */
Datum
courier_subscriber_latency(PG_FUNCTION_ARGS)
{
	return subscriber_rows(fcinfo, latency_row);
}

/* One row of courier_subscriber_latency. */
static void
latency_row(CourierSubscriberSlot *slot, Datum *values, bool *nulls)
{
	values[0] = Int32GetDatum(slot->subscriber_id);
	latency_datums(&slot->limits, &values[1]);
}

/*
 * latency_datums
 *		The latency histogram of the limits lim as three Datums: the bucket
 *		bounds in seconds (float8[], the last Infinity), the cumulative
 *		counts (bigint[]) and the sum of seconds (float8).
 */
static void
latency_datums(CourierTmsLimits *lim, Datum *values)
{
	Datum		bounds[COURIER_LATENCY_BUCKETS];
	Datum		counts[COURIER_LATENCY_BUCKETS];
	uint64		cumulative = 0;

	for (int b = 0; b < COURIER_LATENCY_BUCKETS; b++)
	{
		cumulative += pg_atomic_read_u64(&lim->latency_count[b]);
		bounds[b] = Float8GetDatum(b < COURIER_LATENCY_BOUNDS ?
								   courier_latency_bounds[b] : get_float8_infinity());
		counts[b] = Int64GetDatum((int64) cumulative);
	}
	values[0] = PointerGetDatum(construct_array(bounds, COURIER_LATENCY_BUCKETS, FLOAT8OID,
												sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(counts, COURIER_LATENCY_BUCKETS, INT8OID,
												sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = Float8GetDatum((double) pg_atomic_read_u64(&lim->latency_sum_us) / 1000000.0);
}

/*
 * courier_subscriber_workers
 *		One row per subscriber being delivered (subscriber.c): its id, its
 *		worker's pid (NULL while starting), its breaker (closed, open,
 *		probing), and the counters since its worker took the slot.  Empty
 *		when courier is not preloaded.
 */
Datum
courier_subscriber_workers(PG_FUNCTION_ARGS)
{
	return subscriber_rows(fcinfo, worker_row);
}

/* One row of courier_subscriber_workers. */
static void
worker_row(CourierSubscriberSlot *slot, Datum *values, bool *nulls)
{
	values[0] = Int32GetDatum(slot->subscriber_id);
	values[1] = Int32GetDatum(slot->pid);
	nulls[1] = (slot->pid == 0);
	values[2] = CStringGetTextDatum(breaker_names[courier_limits_breaker_state_on(&slot->limits)]);
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->delivered));
	values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->failed));
	values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->retried));
	values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->limits.requests));
	values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->limits.breaker_opened));
}

/*
 * subscriber_rows
 *		The rows of a set-returning function with one row per subscriber
 *		slot in use, each filled by row() under the slots' lock (shared):
 *		what subscriber_workers and subscriber_latency show.  Empty when
 *		courier is not preloaded.
 */
static Datum
subscriber_rows(FunctionCallInfo fcinfo, SubscriberRowFn row)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (courier_shared == NULL)
		return (Datum) 0;

	LWLockAcquire(courier_shared->lock, LW_SHARED);
	for (int i = 0; i < COURIER_MAX_SUBSCRIBERS; i++)
	{
		CourierSubscriberSlot *slot = &courier_shared->subscribers[i];
		Datum		values[SUBSCRIBER_ROW_MAX];
		bool		nulls[SUBSCRIBER_ROW_MAX] = {false};

		if (!slot->in_use)
			continue;
		row(slot, values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(courier_shared->lock);
	return (Datum) 0;
}

/*
 * courier_wake_subscribers
 *		Wake the subscriber workers, and the launcher, when the calling
 *		transaction commits: it queued events (courier.emit_events,
 *		replay, resume_subscriber).
 */
Datum
courier_wake_subscribers(PG_FUNCTION_ARGS)
{
	courier_wake_subscribers_at_commit();
	PG_RETURN_VOID();
}
