/*-------------------------------------------------------------------------
 *
 * subscriber.c
 *		A subscriber's worker: delivers the events of one subscription
 *		(courier.deliveries) to its URL, batch after batch, in the order
 *		of each order's events, with its own retries, rate and breaker.
 *
 * The launcher starts one worker per subscription that is not paused and
 * has events due (launcher.c), in a slot of its own (shmem.c); the worker
 * keeps the slot until the subscription is paused or removed, or it was
 * idle for courier.worker_idle_exit.  A
 * subscriber that hangs or refuses therefore holds up its own worker only:
 * not the TMS senders, not another subscriber.
 *
 * A batch is three moves, as in the tms stage (tms.c): read the due
 * events in one transaction; the POSTs with no transaction open
 * (dispatch.c, in the subscriber dialect of provider_subscriber.c); the
 * outcomes in a second transaction.  Reading them marks nothing: a
 * subscription has one worker at a time, and a worker that dies in
 * between leaves its events due, sent again with the same ids by its
 * successor.
 *
 * Order per order: the lease takes only the head of each order's queue,
 * the delivery with no earlier event of the same order still queued for
 * this subscriber (in flight, due later, or failed).  So event 2 of an
 * order never leaves before event 1 was accepted, across retries, and a
 * failed event holds back the rest of its order until the DBA retries or
 * discards it (courier.retry_failures / discard_failures).
 *
 * Outcomes:
 *	accepted (2xx)				delivery deleted
 *	refused (other 4xx)			failed at once: listed in courier.failures
 *	retry (5xx, timeout, reset)	an attempt charged, back-off; failed after
 *								courier.max_attempts
 *	not reached (connection		released without an attempt: a subscriber
 *	refused, no such host)		that is down loses no event; its breaker
 *								opens and spaces the tries
 *	throttled, configuration,	released without an attempt (after
 *	not sent					Retry-After when given); the breaker holds
 *								further sends
 *
 * IDENTIFICATION
 *		src/subscriber.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "courier.h"
#include "dispatch.h"
#include "provider.h"

/* Requests of one subscriber in flight at once. */
#define SUBSCRIBER_CONCURRENCY	4

/* The subscription as its worker last read it. */
typedef struct Subscription
{
	char		name[64];
	int			batch_size;
	int			rate_limit;
	int			timeout_ms;
	bool		paused;
} Subscription;

/* One batch: events[i] of order orders[i] of seller sellers[i]. */
typedef struct DeliveryBatch
{
	int			n;
	Datum	   *sellers;
	Datum	   *events;
	Datum	   *orders;
	CourierMessage *msgs;
} DeliveryBatch;

static int	my_slot = -1;
static int32 my_id = 0;
static volatile sig_atomic_t got_sigterm = false;
static volatile sig_atomic_t sending = false;
static Subscription sub;
static CourierLimitsConfig limits_config;
static char limits_who[96];
static char limits_activity[96];
static SPIPlanPtr lease_plan = NULL;
static SPIPlanPtr record_plan = NULL;

static void subscriber_attach(int slot);
static void subscriber_detach(int code, Datum arg);
static void subscriber_sigterm(SIGNAL_ARGS);
static bool read_subscription(void);
static int	deliver_batch(MemoryContext batch_context, long *sleep_ms);
static long next_due_ms(void);
static void lease(DeliveryBatch *b, MemoryContext batch_context);
static void record(DeliveryBatch *b);
static CourierTmsLimits *my_limits(void);
static int	acquire(int n);
static void request_done(CourierOutcome outcome, int retry_after_ms,
						 double latency_ms);
static bool should_stop(void);
static bool admit(void);

static const CourierDispatchHooks hooks = {
	acquire,
	request_done,
	should_stop,
	admit,
	NULL
};

/*
 * The lease: the due heads of this subscriber's orders ($1 the
 * subscriber, $2 now, $3 how many), each with its event rendered as the
 * receiver gets it.  It writes nothing: a subscription has one worker at a
 * time (its slot), so no other worker can take the same events, and a
 * worker that dies leaves them due, to be sent again at once by its
 * successor.  (Marking them leased cost an update of every event, with a
 * new entry in each of its three indexes.)  Written for the plan it needs
 * whatever the statistics say: the head test is the first event of the
 * order by the primary key (seller, subscriber, order, event: a min() the
 * planner reads off it; a NOT EXISTS planned on a queue analyzed empty
 * read the subscriber's whole backlog per head), and the events are
 * joined after the LIMIT.  An event of a trace carries its traceparent in
 * the body too (as CloudEvents' distributed tracing extension does), and
 * the lease returns it for the request's header (dispatch.c).
 */
static const char *const lease_sql =
"SELECT h.seller_id, h.event_id, h.order_id,"
"       (pg_catalog.jsonb_build_object('id', e.event_id, 'type', e.type,"
"           'order_id', e.order_id, 'seller_id', e.seller_id,"
"           'occurred_at', e.occurred_at, 'data', e.payload)"
"        || CASE WHEN e.traceparent IS NULL THEN '{}'::jsonb"
"                ELSE pg_catalog.jsonb_build_object('traceparent', e.traceparent) END)::text,"
"       e.traceparent"
"  FROM (SELECT d.seller_id, d.event_id, d.order_id"
"          FROM courier.deliveries d"
"         WHERE d.subscriber_id = $1 AND d.failed_at IS NULL AND d.not_before <= $2"
"           AND d.event_id = (SELECT pg_catalog.min(x.event_id) FROM courier.deliveries x"
"                              WHERE x.seller_id = d.seller_id"
"                                AND x.subscriber_id = d.subscriber_id"
"                                AND x.order_id = d.order_id)"
"         ORDER BY d.not_before"
"         LIMIT $3) h"
"  JOIN courier.events e ON e.seller_id = h.seller_id AND e.event_id = h.event_id"
" ORDER BY h.event_id";

/*
 * The outcomes, in one statement: $1-$7 per event (seller, event,
 * outcome, error, HTTP status, release_ms, back-off jitter), $8 the
 * subscriber, $9 courier.max_attempts, $10 now, $11-$12 the back-off's
 * base and cap, $13 each event's order (with the seller, the subscriber
 * and the event: the primary key).  Accepted events leave the queue; the others are charged
 * or released.  An event that failed for good stays in
 * the queue, failed, holding back its order, and is listed in
 * courier.failures for the DBA, with the event's trace.  Returns how many
 * were delivered and failed.
 */
static const char *const record_sql =
"WITH r AS ("
"    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],"
"                         $5::int[], $6::int[], $7::float8[], $13::bigint[])"
"           AS r(seller_id, event_id, outcome, error, http_status, release_ms, jitter,"
"                order_id)"
"), done AS ("
"    DELETE FROM courier.deliveries d USING r"
"     WHERE r.outcome = 'delivered' AND d.seller_id = r.seller_id"
"       AND d.subscriber_id = $8 AND d.order_id = r.order_id AND d.event_id = r.event_id"
"    RETURNING 1"
"), charged AS ("
"    UPDATE courier.deliveries d"
"       SET attempts = d.attempts + (r.outcome IN ('retry', 'rejected'))::int,"
"           failed_at = CASE WHEN r.outcome = 'rejected'"
"                              OR (r.outcome = 'retry' AND d.attempts + 1 >= $9)"
"                            THEN $10 END,"
"           not_before = CASE r.outcome"
"                            WHEN 'retry' THEN $10 + courier.backoff_step(d.attempts + 1,"
"                                                                          $11, $12, r.jitter)"
"                            ELSE $10 + r.release_ms * interval '1 ms' END,"
"           errors = CASE WHEN r.outcome IN ('retry', 'rejected') THEN d.errors ||"
"               pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object("
"                   'at', $10, 'error', r.error, 'http_status', r.http_status))"
"               ELSE d.errors END"
"      FROM r"
"     WHERE r.outcome <> 'delivered' AND d.seller_id = r.seller_id"
"       AND d.subscriber_id = $8 AND d.order_id = r.order_id AND d.event_id = r.event_id"
"    RETURNING d.seller_id, d.event_id, d.order_id, d.attempts, d.errors, d.failed_at,"
"              r.error, r.http_status"
"), failed AS ("
"    INSERT INTO courier.failures (item_id, stage, seller_id, order_id, subscriber_id,"
"        attempts, last_error, last_http_status, errors, first_queued_at, traceparent)"
"    SELECT c.event_id, 'fanout', c.seller_id, c.order_id, $8, c.attempts, c.error,"
"           c.http_status, c.errors, e.occurred_at, e.traceparent"
"      FROM charged c"
"      JOIN courier.events e ON e.seller_id = c.seller_id AND e.event_id = c.event_id"
"     WHERE c.failed_at IS NOT NULL"
"    RETURNING 1"
") "
"SELECT (SELECT pg_catalog.count(*) FROM done)::int,"
"       (SELECT pg_catalog.count(*) FROM failed)::int";

/*
 * courier_subscriber_main
 *		Entry point; main_arg is the slot the launcher reserved for the
 *		subscription.
 */
void
courier_subscriber_main(Datum main_arg)
{
	MemoryContext loop_context;
	MemoryContext batch_context;
	int			dead_batches = 0;
	char		idle_activity[128];
	TimestampTz idle_since = GetCurrentTimestamp();

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, subscriber_sigterm);
	BackgroundWorkerUnblockSignals();

	subscriber_attach(DatumGetInt32(main_arg));
	BackgroundWorkerInitializeConnection(courier_database, NULL, 0);
	courier_pin_search_path();
	SetConfigOption("application_name", MyBgworkerEntry->bgw_type,
					PGC_USERSET, PGC_S_SESSION);
	loop_context = AllocSetContextCreate(TopMemoryContext, "courier subscriber loop",
										 ALLOCSET_DEFAULT_SIZES);
	batch_context = AllocSetContextCreate(TopMemoryContext, "courier subscriber batch",
										  ALLOCSET_DEFAULT_SIZES);

	while (!got_sigterm)
	{
		long		sleep_ms = courier_idle_wakeup_ms;
		int			handled = 0;
		const char *activity;
		const char *why;
		long		wait;

		courier_loop_turn(loop_context);
		if (!read_subscription())
			break;				/* paused or removed: the slot goes free */
		snprintf(idle_activity, sizeof(idle_activity),
				 "subscriber %s: waiting for events", sub.name);
		activity = idle_activity;

		if (!courier_enabled)
			activity = "courier.enabled is off";
		else if ((wait = courier_limits_wait_on(my_limits(), &limits_config,
												&why)) > 0)
		{
			activity = why;
			sleep_ms = wait;
		}
		else
		{
			PG_TRY();
			{
				handled = deliver_batch(batch_context, &sleep_ms);
				dead_batches = 0;
			}
			PG_CATCH();
			{
				MemoryContextSwitchTo(loop_context);
				EmitErrorReport();
				FlushErrorState();
				AbortCurrentTransaction();
				sending = false;
				dead_batches++;
				sleep_ms = courier_dead_batch_backoff_ms(dead_batches);
				activity = "subscriber: backing off after a failed batch";
				handled = 0;
			}
			PG_END_TRY();
		}
		MemoryContextSwitchTo(loop_context);
		if (handled > 0 || activity != idle_activity)
			idle_since = GetCurrentTimestamp();
		if (handled > 0)
			continue;			/* more may be due */

		/*
		 * Idle (nothing due, the breaker closed) for courier.
		 * worker_idle_exit: leave; the launcher starts a worker again when
		 * events fall due.  Until then wake when that time is up.
		 */
		if (TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(),
									   courier_worker_idle_exit_ms))
		{
			ereport(LOG,
					(errmsg("courier subscriber worker for \"%s\" retiring after %d ms idle",
							sub.name, courier_worker_idle_exit_ms)));
			break;
		}
		sleep_ms = Min(sleep_ms, courier_worker_idle_exit_ms + 1);
		pgstat_report_activity(STATE_IDLE, activity);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

/*
 * subscriber_attach
 *		Take the slot the launcher reserved, so commits can wake this
 *		worker and stats can find it.
 */
static void
subscriber_attach(int slot)
{
	CourierSubscriberSlot *s = &courier_shared->subscribers[slot];

	my_slot = slot;
	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	s->pid = MyProcPid;
	s->latch = MyLatch;
	my_id = s->subscriber_id;
	LWLockRelease(courier_shared->lock);
	on_shmem_exit(subscriber_detach, (Datum) 0);
}

static void
subscriber_detach(int code, Datum arg)
{
	CourierSubscriberSlot *s = &courier_shared->subscribers[my_slot];

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	if (s->pid == MyProcPid)
	{
		s->in_use = false;
		s->pid = 0;
		s->latch = NULL;
	}
	LWLockRelease(courier_shared->lock);
	courier_wake_launcher();
}

/*
 * subscriber_sigterm
 *		As a stage worker's: die() at once, unless requests are on the wire
 *		and their outcomes to record; then stop after recording them.
 */
static void
subscriber_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
	if (!sending)
		die(postgres_signal_arg);
	errno = save_errno;
}

static CourierTmsLimits *
my_limits(void)
{
	return &courier_shared->subscribers[my_slot].limits;
}

/*
 * read_subscription
 *		Read this worker's subscription anew (each turn: a change made with
 *		courier.subscribe's friends applies from the next batch) and point
 *		the dialect and the limits at it.  false when it is paused or gone.
 */
static bool
read_subscription(void)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(my_id)};
	bool		found;

	courier_begin_transaction();
	if (SPI_execute_with_args("SELECT name, url, secret, batch_size, rate_limit,"
							  "       timeout_ms, paused"
							  "  FROM courier.subscriptions WHERE subscriber_id = $1",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not read a subscription");
	found = (SPI_processed == 1);
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		strlcpy(sub.name, SPI_getvalue(tup, desc, 1), sizeof(sub.name));
		courier_subscriber_dialect_target(sub.name, SPI_getvalue(tup, desc, 2),
										  SPI_getvalue(tup, desc, 3));
		sub.batch_size = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		sub.rate_limit = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		sub.timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		sub.paused = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	}
	courier_commit_transaction();
	if (!found || sub.paused)
	{
		ereport(LOG,
				(errmsg("courier subscriber worker %d stops: the subscription is %s",
						my_id, found ? "paused" : "removed")));
		return false;
	}

	snprintf(limits_who, sizeof(limits_who), "subscriber \"%s\"", sub.name);
	snprintf(limits_activity, sizeof(limits_activity), "subscriber %s", sub.name);
	limits_config.who = limits_who;
	limits_config.activity = limits_activity;
	limits_config.hint = "Check the subscriber's URL and whether it is up (courier.subscribers).";
	limits_config.rate_limit = sub.rate_limit;
	limits_config.breaker_threshold = courier_tms_breaker_threshold;
	limits_config.breaker_cooldown_ms = courier_tms_breaker_cooldown_ms;
	return true;
}

/*
 * deliver_batch
 *		Lease, send, record one batch; returns how many events it held.
 *		When none was due, *sleep_ms is capped at the time until the next
 *		one is (a retry's back-off).
 */
static int
deliver_batch(MemoryContext batch_context, long *sleep_ms)
{
	DeliveryBatch b;
	CourierDispatchSizes sizes;

	MemoryContextReset(batch_context);
	MemoryContextSwitchTo(batch_context);
	memset(&b, 0, sizeof(b));

	pgstat_report_activity(STATE_RUNNING, "subscriber: leasing events");
	courier_begin_transaction();
	lease(&b, batch_context);
	if (b.n == 0)
		*sleep_ms = Min(*sleep_ms, next_due_ms());
	courier_commit_transaction();
	MemoryContextSwitchTo(batch_context);
	if (b.n == 0)
		return 0;

	pgstat_report_activity(STATE_RUNNING, "subscriber: posting events");
	sizes.bulk_size = sub.batch_size;
	sizes.concurrency = SUBSCRIBER_CONCURRENCY;
	sizes.timeout_ms = sub.timeout_ms;
	sending = true;
	courier_dispatch(&courier_subscriber_dialect, b.msgs, b.n, &sizes, &hooks);

	pgstat_report_activity(STATE_RUNNING, "subscriber: recording outcomes");
	courier_begin_transaction();
	record(&b);
	courier_commit_transaction();
	MemoryContextSwitchTo(batch_context);
	sending = false;
	return b.n;
}

/*
 * next_due_ms
 *		Milliseconds until this subscriber's next event falls due (failed
 *		ones aside), from the partial index deliveries_due; a large value
 *		when none is queued.  In the caller's transaction.
 */
static long
next_due_ms(void)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(my_id)};
	bool		isnull;
	Datum		next;

	if (plan == NULL)
		plan = courier_prepare_kept("SELECT pg_catalog.min(d.not_before)"
									"  FROM courier.deliveries d"
									" WHERE d.subscriber_id = $1 AND d.failed_at IS NULL",
									1, argtypes, false);
	if (courier_execute_pinned(plan, values, NULL, false) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "courier: could not find the next due event");
	next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return LONG_MAX;
	return Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
											   DatumGetTimestampTz(next)), 1);
}

/*
 * lease
 *		Take up to SUBSCRIBER_CONCURRENCY requests' worth of due order heads
 *		and copy them into the batch, in batch_context, which outlives the
 *		transaction.
 */
static void
lease(DeliveryBatch *b, MemoryContext batch_context)
{
	Oid			argtypes[3] = {INT4OID, TIMESTAMPTZOID, INT4OID};
	Datum		values[3];

	values[0] = Int32GetDatum(my_id);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = Int32GetDatum(sub.batch_size * SUBSCRIBER_CONCURRENCY);
	if (lease_plan == NULL)
		lease_plan = courier_prepare_kept(lease_sql, 3, argtypes, false);
	if (courier_execute_pinned(lease_plan, values, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not lease events");

	MemoryContextSwitchTo(batch_context);
	b->n = (int) SPI_processed;
	b->sellers = palloc(sizeof(Datum) * Max(b->n, 1));
	b->events = palloc(sizeof(Datum) * Max(b->n, 1));
	b->orders = palloc(sizeof(Datum) * Max(b->n, 1));
	b->msgs = palloc0(sizeof(CourierMessage) * Max(b->n, 1));
	for (int i = 0; i < b->n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		event;

		b->sellers[i] = SPI_getbinval(tup, desc, 1, &isnull);
		event = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		b->events[i] = Int64GetDatum(event);
		b->orders[i] = SPI_getbinval(tup, desc, 3, &isnull);
		b->msgs[i].key = psprintf(INT64_FORMAT, event);
		b->msgs[i].text = SPI_getvalue(tup, desc, 4);
		b->msgs[i].traceparent = courier_traceparent_stored(SPI_getvalue(tup, desc, 5));
		b->msgs[i].to = "";
		b->msgs[i].channel = "event";
	}
}

/*
 * record
 *		Write every event's outcome back (record_sql), and count them.
 */
static void
record(DeliveryBatch *b)
{
	CourierSubscriberSlot *slot = &courier_shared->subscribers[my_slot];
	Oid			argtypes[13] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, INT4ARRAYOID, INT4ARRAYOID, FLOAT8ARRAYOID, INT4OID,
	INT4OID, TIMESTAMPTZOID, INT4OID, INT4OID, INT8ARRAYOID};
	Datum		values[13];
	Datum	   *outcome = palloc(sizeof(Datum) * b->n);
	Datum	   *error = palloc(sizeof(Datum) * b->n);
	Datum	   *http = palloc(sizeof(Datum) * b->n);
	Datum	   *release = palloc(sizeof(Datum) * b->n);
	Datum	   *jitter = palloc(sizeof(Datum) * b->n);
	int			retried = 0;
	bool		isnull;

	for (int i = 0; i < b->n; i++)
	{
		const CourierMessage *m = &b->msgs[i];
		const char *o;
		int			release_ms = 0;

		switch (m->outcome)
		{
			case COURIER_OUT_DELIVERED:
				o = "delivered";
				break;
			case COURIER_OUT_REJECTED:
				o = "rejected";
				break;
			case COURIER_OUT_RETRY:
				if (m->http_status == 0 && !m->unknown)
				{
					/* nothing reached it (refused, unresolvable): no attempt */
					o = "release";
					break;
				}
				o = "retry";
				retried++;
				break;
			case COURIER_OUT_THROTTLED:
				o = "release";
				release_ms = m->retry_after_ms;
				break;
			default:
				o = "release";	/* not sent, or ours to fix: no attempt */
				break;
		}
		outcome[i] = CStringGetTextDatum(o);
		error[i] = CStringGetTextDatum(m->error);
		http[i] = Int32GetDatum(m->http_status);
		release[i] = Int32GetDatum(release_ms);
		jitter[i] = Float8GetDatum(pg_prng_double(&pg_global_prng_state));
	}
	values[0] = courier_int8_array(b->sellers, b->n);
	values[1] = courier_int8_array(b->events, b->n);
	values[2] = PointerGetDatum(construct_array(outcome, b->n, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(error, b->n, TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(http, b->n, INT4OID, 4, true, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_array(release, b->n, INT4OID, 4, true, TYPALIGN_INT));
	values[6] = PointerGetDatum(construct_array(jitter, b->n, FLOAT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[7] = Int32GetDatum(my_id);
	values[8] = Int32GetDatum(courier_max_attempts);
	values[9] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[10] = Int32GetDatum(courier_retry_base_ms);
	values[11] = Int32GetDatum(courier_retry_cap_ms);
	values[12] = courier_int8_array(b->orders, b->n);
	if (record_plan == NULL)
		record_plan = courier_prepare_kept(record_sql, 13, argtypes, true);
	if (courier_execute_pinned(record_plan, values, NULL, false) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "courier: could not record the outcomes of subscriber \"%s\"",
			 sub.name);
	pg_atomic_fetch_add_u64(&slot->delivered,
							DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1, &isnull)));
	pg_atomic_fetch_add_u64(&slot->failed,
							DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 2, &isnull)));
	pg_atomic_fetch_add_u64(&slot->retried, retried);
}

/* The dispatcher's hooks, on this subscriber's own limits. */
static int
acquire(int n)
{
	return courier_limits_acquire_on(my_limits(), &limits_config, 1);
}

static void
request_done(CourierOutcome outcome, int retry_after_ms, double latency_ms)
{
	courier_limits_report_on(my_limits(), &limits_config, outcome,
							 retry_after_ms, latency_ms);
}

static bool
should_stop(void)
{
	return got_sigterm || courier_limits_breaker_open_on(my_limits());
}

/*
 * admit
 *		Every request may start: nothing else holds these events.
 */
static bool
admit(void)
{
	return true;
}
