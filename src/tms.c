/*-------------------------------------------------------------------------
 *
 * tms.c
 *		The tms stage: lease a batch of due notices, render each message
 *		from courier.notice_template and route it to a channel, send the
 *		batch (dispatch.c), and write every outcome back in one transaction.
 *
 * In a worker the three steps are three moves: lease and render in one
 * transaction, which commits; the network with no transaction open; the
 * outcomes in a second transaction.  A sender that dies in between loses
 * nothing: its lease runs out and the items fall due again, sent under the
 * same idempotency key.  courier.run_once('tms') runs the same steps in
 * the caller's transaction (it is a function and cannot commit): for tests
 * and operation by hand, never the production path.
 *
 * Outcomes map onto the queue so:
 *	delivered, dry run			item deleted, notice logged (provider id, HTTP
 *								status, latency, channel, attempts)
 *	rejected, too long, expired	straight to failures
 *	retry						an attempt charged, back-off (flagged
 *								outcome-unknown when the request was sent)
 *	throttled (429/503)			released until Retry-After, no attempt charged
 *	unauthorized (401/403)		released, no attempt charged; breaker opens and
 *								an alert is raised (NOTIFY courier_alerts)
 *	not sent (stopping)			released at once
 *	order closed				not sent; item deleted, notice 'dropped' (the
 *								close rule, closes.c)
 *
 * A lease covers every request it may start: it lasts courier.lease_time
 * but at least twice the request budget (courier.tms_timeout plus a
 * second), and no request starts once less than one budget of the lease
 * is left.  So a live sender never loses its lease while a request is in
 * flight, and an item falls due again under the lease only when its
 * holder died.
 *
 * IDENTIFICATION
 *		src/tms.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "courier.h"
#include "dispatch.h"
#include "provider.h"

#define TMS_MAX_LEASE	20000	/* most notices one sender leases at once */
#define LEASE_MARGIN_MS	1000	/* time to record outcomes after a request */
#define RECORD_TRIES	5		/* attempts at recording, on transient errors */

/* What to do with a message that is not sent. */
typedef enum Verdict
{
	VERDICT_SEND = 0,
	VERDICT_TOO_LONG,
	VERDICT_UNSUPPORTED,
	VERDICT_EXPIRED,
	VERDICT_EXHAUSTED,
	VERDICT_CLOSED				/* the order is closed: not sent, dropped */
} Verdict;

/* Where the messages of one order are in a batch (for the close ring). */
typedef struct OrderEntry
{
	int64		order_id;		/* hash key */
	int			first;			/* index of its first message */
} OrderEntry;

typedef struct TmsBatch
{
	MemoryContext context;		/* everything below lives here */
	TimestampTz lease_started;
	int			lease_ms;		/* the lease ends lease_ms after lease_started */
	int			n;
	int64	   *seller_ids;
	int64	   *order_ids;
	DateADT    *ship_dates;
	int		   *attempts;
	int		   *next_of_order;	/* next message of the same order, or -1 */
	HTAB	   *orders;			/* order id -> OrderEntry */
	uint64		closes_next;	/* where to read the close ring from */
	Verdict    *verdict;
	CourierMessage *msgs;
	bool		dry_run;
	const CourierProvider *provider;	/* courier.tms_provider's dialect */
	const CourierProvider *fallback_provider;	/* the one that sends
												 * courier's own SMS/LMS
												 * fallbacks (msgs[i].
												 * fallback) */
} TmsBatch;

/*
 * A worker's two batches: batches[current] is the one being sent; the other
 * holds either the batch sent before it, whose outcomes are still to be
 * written (prev_unrecorded), or the next batch, leased while the current
 * one was on the wire (next_leased), never both.
 */
static TmsBatch batches[2];
static int	current = 0;
static bool prev_unrecorded = false;
static bool next_leased = false;
static bool next_tried = false;	/* a lease ahead was tried during this send */
static TimestampTz last_receipts_round = 0;

static volatile sig_atomic_t *stop_flag = NULL;
static TmsBatch *sending_batch = NULL;	/* the batch courier_dispatch sends */
static SPIPlanPtr lock_orders_plan = NULL;
static SPIPlanPtr record_plan = NULL;

static void tms_begin_batch(TmsBatch *b);
static void tms_while_waiting(bool all_started);
static void record_previous(void);
static void tms_lease(TmsBatch *b, bool lock_orders);
static void lock_leased_orders(TmsBatch *b);
static void index_orders(TmsBatch *b);
static bool admit_requests(void);
static void drop_closed_order(int64 order_id, void *arg);
static void tms_send(TmsBatch *b);
static void choose_dialects(TmsBatch *b);
static const CourierProvider *provider_of_message(const TmsBatch *b, int i);
static void tms_record(TmsBatch *b);
static void tms_record_retrying(TmsBatch *b);
static bool stop_requested(void);
static int	request_budget_ms(void);

static const CourierDispatchHooks hooks = {
	courier_limits_acquire,
	courier_limits_report,
	stop_requested,
	admit_requests,
	tms_while_waiting
};

/*
 * What happened to each message, written back to its notice in one
 * statement:
 *	delivered, dry_run	the notice is logged as sent (provider id, HTTP
 *						status, latency, channel, attempts), whoever holds
 *						it now: a delivery is a fact
 *	closed				the order closed before the send: the notice is
 *						dropped, if this sender still holds it
 *	release				the notice falls due after release_ms, if this
 *						sender still holds it
 *	unconfirmed			no answer came, and the provider has no
 *						idempotency key: the attempt is spent, the notice
 *						is not due again until the receipt stage has looked
 *						it up at the provider (receipts.c), if this sender
 *						still holds it
 *	fallback			AlimTalk cannot reach the customer, and courier
 *						sends the SMS/LMS itself (courier.alimtalk_fallback
 *						= courier): the attempt is spent, the code becomes
 *						the notice's fallback_reason and the notice is due
 *						again at once, to go out by the SMS dialect; once
 *						only, if this sender still holds it
 * ($9 is this sender's pid, $10 the time of recording, $11 the notices'
 * sellers: each notice is reached by its key, (seller_id, order_id,
 * ship_date), docs/citus.md; $12 whether each one's provider reports
 * delivery later: a notice it accepted then awaits its receipt, first
 * asked for $13 ms later, receipts.c; $14 the dialect each went through,
 * $15 the provider's code for it.)  A fallback that is delivered records
 * its channel as the notice's fallback_channel.  Charged notices
 * ('charge') are left alone here: they go through courier_charge (retry.c).
 */
static const char *const record_sql =
"WITH r AS ("
"    SELECT * FROM unnest($1::bigint[], $2::date[], $3::text[], $4::int[],"
"                         $5::text[], $6::text[], $7::float8[], $8::int[],"
"                         $11::bigint[], $12::bool[], $14::text[], $15::text[])"
"           AS r(order_id, ship_date, status, http_status, provider_id, channel,"
"                latency_ms, release_ms, seller_id, receipts, provider, code)"
") "
"UPDATE courier.notices n"
"   SET status = CASE r.status WHEN 'closed' THEN 'dropped'"
"                              WHEN 'release' THEN n.status"
"                              WHEN 'unconfirmed' THEN n.status"
"                              WHEN 'fallback' THEN n.status ELSE r.status END,"
"       sent_at = CASE WHEN r.status IN ('delivered', 'dry_run') THEN $10 ELSE n.sent_at END,"
"       http_status = CASE WHEN r.status IN ('delivered', 'dry_run') THEN r.http_status"
"                          ELSE n.http_status END,"
"       provider_id = CASE WHEN r.status IN ('delivered', 'dry_run')"
"                          THEN nullif(r.provider_id, '') ELSE n.provider_id END,"
"       channel = CASE WHEN r.status IN ('delivered', 'dry_run') THEN r.channel"
"                      ELSE n.channel END,"
"       latency_ms = CASE WHEN r.status IN ('delivered', 'dry_run') THEN r.latency_ms"
"                         ELSE n.latency_ms END,"
"       attempts = n.attempts"
"                  + (r.status IN ('delivered', 'dry_run', 'unconfirmed', 'fallback'))::int,"
"       errors = CASE WHEN r.status = 'unconfirmed' THEN n.errors ||"
"           pg_catalog.jsonb_build_object('at', $10, 'outcome_unknown', true,"
"               'error', 'no answer came: looked up at the provider before any resend')"
"                     WHEN r.status = 'fallback' THEN n.errors ||"
"           pg_catalog.jsonb_build_object('at', $10, 'code', 'tms:' || r.code,"
"               'http_status', r.http_status,"
"               'error', '" COURIER_FALLBACK_NOTE "')"
"           ELSE n.errors END,"
"       receipt_status = CASE WHEN r.status = 'delivered' AND r.receipts THEN 'awaiting'"
"                             WHEN r.status = 'unconfirmed' THEN 'unconfirmed'"
"                             ELSE n.receipt_status END,"
"       receipt_due_at = CASE WHEN (r.status = 'delivered' AND r.receipts)"
"                                  OR r.status = 'unconfirmed'"
"                             THEN $10 + $13 * interval '1 ms' ELSE n.receipt_due_at END,"
"       provider = CASE WHEN r.status IN ('delivered', 'unconfirmed', 'fallback')"
"                       THEN r.provider ELSE n.provider END,"
"       fallback_reason = CASE WHEN r.status = 'fallback' THEN r.code"
"                              ELSE n.fallback_reason END,"
"       fallback_channel = CASE WHEN r.status = 'delivered' AND n.fallback_reason IS NOT NULL"
"                               THEN r.channel ELSE n.fallback_channel END,"
"       due_at = CASE WHEN r.status = 'release' THEN $10 + r.release_ms * interval '1 ms'"
"                     WHEN r.status = 'fallback' THEN $10 END,"
"       leased_by = NULL"
"  FROM r"
" WHERE n.seller_id = r.seller_id AND n.order_id = r.order_id"
"   AND n.ship_date = r.ship_date"
"   AND (r.status IN ('delivered', 'dry_run')"
"        OR (r.status IN ('closed', 'release', 'unconfirmed')"
"            AND n.status = 'pending' AND n.leased_by = $9)"
"        OR (r.status = 'fallback' AND n.status = 'pending' AND n.leased_by = $9"
"            AND n.fallback_reason IS NULL))";

/*
 * courier_tms_worker_batch
 *		One batch in a worker: lease (a transaction), send (no transaction),
 *		record (a transaction).  The SQL of one batch overlaps the network
 *		of the next: while a batch's requests are in flight, the dispatcher
 *		lends its waits (tms_while_waiting) to record the batch sent before
 *		and, once every message of this one has started, to lease the next.
 *		Each runs in a transaction of its own that is committed before the
 *		wait goes on, so no transaction is open while the network is.
 *
 *		Returns the items handled; when none were due, *sleep_ms says when
 *		the next one is.  *sending stays set while the worker holds leases
 *		or outcomes not yet written: the worker's SIGTERM handler then only
 *		asks to stop, so that requests in flight finish, their outcomes are
 *		written and what is leased but not sent is released
 *		(courier_tms_release).
 */
int
courier_tms_worker_batch(volatile sig_atomic_t *stop,
						 volatile sig_atomic_t *sending, long *sleep_ms)
{
	TmsBatch   *b = &batches[current];

	stop_flag = stop;
	if (!next_leased)
	{
		record_previous();
		tms_begin_batch(b);
		courier_begin_transaction();
		tms_lease(b, false);
		if (b->n == 0)
			*sleep_ms = Min(*sleep_ms,
							Min(courier_next_due_ms(COURIER_STAGE_TMS),
								courier_receipts_next_due_ms()));
		*sending = true;
		courier_commit_transaction();
	}
	next_leased = false;
	if (b->n == 0)
	{
		/* nothing to send: ask for the receipts that are due */
		*sending = false;
		last_receipts_round = GetCurrentTimestamp();
		return courier_receipts_round(stop);
	}

	pgstat_report_activity(STATE_RUNNING, "tms: sending");
	next_tried = false;
	tms_send(b);

	/* this batch's outcomes wait for the next batch's network, if any */
	record_previous();
	prev_unrecorded = true;
	current = 1 - current;
	if (!next_leased || *stop)
		courier_tms_release();
	*sending = next_leased || prev_unrecorded;

	/* a busy sender still asks for receipts, about once a second */
	if (!next_leased && !*stop &&
		TimestampDifferenceExceeds(last_receipts_round, GetCurrentTimestamp(), 1000))
	{
		last_receipts_round = GetCurrentTimestamp();
		(void) courier_receipts_round(stop);
	}
	return b->n;
}

/*
 * courier_tms_release
 *		Write what the worker still holds: the outcomes of the batch sent
 *		last, and a batch leased ahead, which is released unsent (no
 *		attempt spent).  The worker calls it before it sleeps, pauses or
 *		exits.
 */
void
courier_tms_release(void)
{
	record_previous();
	if (next_leased)
	{
		/* never sent: every message is still PENDING, so "release" */
		tms_record_retrying(&batches[current]);
		next_leased = false;
	}
}

/*
 * courier_tms_forget
 *		After an error escaped a batch (the worker aborted the transaction):
 *		forget the batches in hand.  What they leased falls due again when
 *		the lease runs out, as a dead sender's would.
 */
void
courier_tms_forget(void)
{
	prev_unrecorded = false;
	next_leased = false;
	sending_batch = NULL;
}

/*
 * record_previous
 *		Write the outcomes of the batch sent before the current one, if they
 *		are not written yet.
 */
static void
record_previous(void)
{
	if (!prev_unrecorded)
		return;
	prev_unrecorded = false;
	tms_record_retrying(&batches[1 - current]);
}

/*
 * tms_while_waiting
 *		The dispatcher's hook before it waits for requests in flight: do one
 *		piece of the worker's SQL meanwhile.  First the outcomes of the
 *		previous batch; then, once every message of the current batch has
 *		started, the lease of the next batch (once per batch, not when
 *		stopping).  The caller's memory context is kept.
 */
static void
tms_while_waiting(bool all_started)
{
	MemoryContext old = CurrentMemoryContext;
	TmsBatch   *next = &batches[1 - current];

	if (stop_flag == NULL)
		return;					/* run_once: one batch, nothing to overlap */
	if (prev_unrecorded)
		record_previous();
	else if (all_started && !next_tried && !stop_requested())
	{
		next_tried = true;
		tms_begin_batch(next);
		courier_begin_transaction();
		tms_lease(next, false);
		courier_commit_transaction();
		next_leased = (next->n > 0);
	}
	MemoryContextSwitchTo(old);
}

/*
 * courier_tms_run_once
 *		The same steps in the caller's transaction, SPI connected.  The
 *		orders sent for stay locked (FOR SHARE) until that transaction ends,
 *		so a close waits for the send instead of following it unseen.
 */
int
courier_tms_run_once(void)
{
	TmsBatch   *b = &batches[current];

	stop_flag = NULL;
	tms_begin_batch(b);
	tms_lease(b, true);
	if (b->n == 0)
		return 0;
	tms_send(b);
	tms_record(b);
	return b->n;
}

/*
 * tms_begin_batch
 *		Empty a batch for a new lease: its memory context (created on first
 *		use, under TopMemoryContext: a batch outlives transactions) is reset.
 */
static void
tms_begin_batch(TmsBatch *b)
{
	MemoryContext context = b->context;

	if (context == NULL)
		context = AllocSetContextCreate(TopMemoryContext, "courier tms batch",
										ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(context);
	memset(b, 0, sizeof(TmsBatch));
	b->context = context;
}

/*
 * request_budget_ms
 *		The longest one request can take, and the time to record its
 *		outcome: what a lease must have left when a request starts.
 */
static int
request_budget_ms(void)
{
	return courier_tms_timeout_ms + LEASE_MARGIN_MS;
}

/*
 * stop_requested
 *		Stop starting requests on shutdown, when the breaker opens, or when
 *		less than one request budget of the lease is left (rate limits or
 *		Retry-After made the batch slow): what is not sent by then is
 *		released, so that no other sender takes over items this one is
 *		still sending.
 */
static bool
stop_requested(void)
{
	TmsBatch   *b = sending_batch;

	return (stop_flag != NULL && *stop_flag) ||
		courier_limits_breaker_open() ||
		(b != NULL &&
		 TimestampDifferenceExceeds(b->lease_started, GetCurrentTimestamp(),
									b->lease_ms - request_budget_ms()));
}

/*
 * admit_requests
 *		Called by the dispatcher before it starts a request: take note of
 *		the orders closed since the batch was rendered, so that their
 *		messages are not sent (drop_closed_order).  Returns false when the
 *		close ring wrapped and closes may have been missed: then no request
 *		may start, and the messages not sent are released, to be rendered
 *		again with a fresh snapshot.
 */
static bool
admit_requests(void)
{
	TmsBatch   *b = sending_batch;

	if (b == NULL)
		return true;
	if (courier_closes_read(&b->closes_next, drop_closed_order, b))
		return true;
	ereport(LOG,
			(errmsg("courier tms: too many orders closed while sending to tell which; the unsent rest of the batch is released")));
	return false;
}

/*
 * drop_closed_order
 *		An order of the batch closed: its messages not yet sent will not be.
 *		A message already on the wire is left to finish (and recorded).
 */
static void
drop_closed_order(int64 order_id, void *arg)
{
	TmsBatch   *b = (TmsBatch *) arg;
	OrderEntry *e = hash_search(b->orders, &order_id, HASH_FIND, NULL);

	if (e == NULL)
		return;
	for (int i = e->first; i >= 0; i = b->next_of_order[i])
	{
		if (b->msgs[i].outcome == COURIER_OUT_PENDING && !b->msgs[i].started)
			b->msgs[i].outcome = COURIER_OUT_CLOSED;
	}
}

/*
 * tms_lease
 *		Lease a batch and render its messages into the batch's context, which
 *		outlives the transaction.  Routing: up to 90 bytes in EUC-KR is an
 *		SMS, up to 2,000 an LMS (with a subject); longer, or with characters
 *		EUC-KR cannot carry, is rejected without being sent.  A message
 *		whose order is closed is not sent (VERDICT_CLOSED).
 *
 * The lease statement also reads what the messages are made of and
 * whether each order is still open.  The position in the close ring is
 * taken before that statement's snapshot, so every close the snapshot
 * misses is read from the ring before a request starts.  With lock_orders
 * (run_once), the orders are also locked FOR SHARE: a close then waits
 * for the caller's transaction.
 */
static void
tms_lease(TmsBatch *b, bool lock_orders)
{
	MemoryContext old;
	SPITupleTable *leased;

	b->dry_run = (courier_tms_mode == COURIER_TMS_DRY_RUN);
	b->closes_next = courier_closes_position();
	b->lease_started = GetCurrentTimestamp();
	b->lease_ms = Max(courier_lease_ms, 2 * request_budget_ms());

	/*
	 * Enough for every request slot to be busy: with bulk sends a batch of
	 * courier.batch_size notices would fill only a few requests.
	 */
	if (courier_lease_notices(Max(courier_batch_size,
								  Min(courier_tms_bulk_size * courier_tms_concurrency,
									  TMS_MAX_LEASE)),
							  b->lease_ms, b->lease_started,
							  courier_tms_max_notice_age_min) == 0)
		return;
	leased = SPI_tuptable;

	old = MemoryContextSwitchTo(b->context);
	b->n = (int) SPI_processed;
	b->seller_ids = palloc(sizeof(int64) * b->n);
	b->order_ids = palloc(sizeof(int64) * b->n);
	b->ship_dates = palloc(sizeof(DateADT) * b->n);
	b->attempts = palloc(sizeof(int) * b->n);
	b->verdict = palloc0(sizeof(Verdict) * b->n);
	b->msgs = palloc0(sizeof(CourierMessage) * b->n);
	for (int i = 0; i < b->n; i++)
	{
		HeapTuple	tup = leased->vals[i];
		TupleDesc	desc = leased->tupdesc;
		bool		isnull;
		CourierMessage *m = &b->msgs[i];
		char	   *variant = SPI_getvalue(tup, desc, 7);
		int			year,
					month,
					day;
		int			bytes;

		b->seller_ids[i] = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));
		b->order_ids[i] = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		b->ship_dates[i] = DatumGetDateADT(SPI_getbinval(tup, desc, 2, &isnull));
		b->attempts[i] = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		j2date(b->ship_dates[i] + POSTGRES_EPOCH_JDATE, &year, &month, &day);
		m->to = SPI_getvalue(tup, desc, 4);
		m->key = psprintf("dn-" INT64_FORMAT "-%04d%02d%02d", b->order_ids[i],
						  year, month, day);
		/* the notice's parts: template dialects send these, not the text */
		m->order_id = psprintf(INT64_FORMAT, b->order_ids[i]);
		m->product = SPI_getvalue(tup, desc, 5);
		m->reason = SPI_getvalue(tup, desc, 6);
		m->ship_date = psprintf("%04d-%02d-%02d", year, month, day);
		m->variant = strcmp(variant, "v2") == 0 ? 2 : 1;
		m->text = courier_render_notice(m->variant == 2, b->order_ids[i],
										b->ship_dates[i], m->product, m->reason);
		bytes = courier_euckr_length(m->text);
		if (!DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull)))
			b->verdict[i] = VERDICT_CLOSED;
		else if (DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull)))
			b->verdict[i] = VERDICT_EXPIRED;
		else if (b->attempts[i] >= courier_max_attempts)
			b->verdict[i] = VERDICT_EXHAUSTED;
		else if (bytes < 0)
			b->verdict[i] = VERDICT_UNSUPPORTED;
		else if (bytes > COURIER_LMS_MAX_BYTES)
			b->verdict[i] = VERDICT_TOO_LONG;
		m->fallback = DatumGetBool(SPI_getbinval(tup, desc, 11, &isnull));
		m->refusals = DatumGetInt32(SPI_getbinval(tup, desc, 12, &isnull));
		m->traceparent = courier_traceparent_stored(SPI_getvalue(tup, desc, 13));
		m->channel = courier_sms_channel(bytes);
		m->subject = (strcmp(m->channel, "lms") == 0) ? COURIER_LMS_SUBJECT : NULL;
	}
	index_orders(b);
	MemoryContextSwitchTo(old);

	if (lock_orders)
		lock_leased_orders(b);
}

/*
 * lock_leased_orders
 *		run_once: lock the batch's orders FOR SHARE until the caller's
 *		transaction ends, so a close waits for the send; an order that
 *		closed between the lease and the lock (FOR SHARE reads its newest
 *		version) is not sent.
 */
static void
lock_leased_orders(TmsBatch *b)
{
	Oid			argtypes[2] = {INT8ARRAYOID, INT8ARRAYOID};
	Datum	   *ids = palloc(sizeof(Datum) * b->n);
	Datum	   *sellers = palloc(sizeof(Datum) * b->n);
	Datum		values[2];

	for (int i = 0; i < b->n; i++)
	{
		ids[i] = Int64GetDatum(b->order_ids[i]);
		sellers[i] = Int64GetDatum(b->seller_ids[i]);
	}
	values[0] = courier_int8_array(ids, b->n);
	values[1] = courier_int8_array(sellers, b->n);
	courier_execute_kept(&lock_orders_plan,
						 "SELECT o.order_id, o.status IN ('paid', 'shipping_requested')"
						 "  FROM courier.orders o"
						 " WHERE (o.seller_id, o.order_id) IN"
						 "       (SELECT * FROM unnest($2::bigint[], $1::bigint[]))"
						 " ORDER BY o.order_id FOR SHARE OF o",
						 2, argtypes, values, NULL, SPI_OK_SELECT);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		bool		isnull;
		int64		order_id = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc,
														   1, &isnull));
		OrderEntry *e = hash_search(b->orders, &order_id, HASH_FIND, NULL);

		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
			continue;
		for (int i = e ? e->first : -1; i >= 0; i = b->next_of_order[i])
			b->verdict[i] = VERDICT_CLOSED;
	}
}

/*
 * index_orders
 *		Hash the batch's order ids to their messages, for drop_closed_order.
 *		In the batch's context.
 */
static void
index_orders(TmsBatch *b)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(OrderEntry);
	ctl.hcxt = b->context;
	b->orders = hash_create("courier tms batch orders", Max(b->n, 16), &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	b->next_of_order = palloc(sizeof(int) * Max(b->n, 1));
	for (int i = b->n - 1; i >= 0; i--)
	{
		bool		found;
		OrderEntry *e = hash_search(b->orders, &b->order_ids[i], HASH_ENTER, &found);

		b->next_of_order[i] = found ? e->first : -1;
		e->first = i;
	}
}

/*
 * choose_dialects
 *		The dialects b goes out in, as configured now, not when it was
 *		leased: a batch leased ahead while the one before was on the wire
 *		may be sent after a reload that switched courier.tms_provider.
 *		Called when b is sent, or recorded without having been sent.
 */
static void
choose_dialects(TmsBatch *b)
{
	b->provider = courier_provider_by_id(courier_tms_provider);
	if (b->provider == NULL)
		elog(ERROR, "courier: no TMS provider of number %d", courier_tms_provider);
	b->fallback_provider = b->provider->fallback_dialect != NULL ?
		courier_provider_lookup(b->provider->fallback_dialect) : b->provider;
	Assert(b->fallback_provider != NULL);
}

/*
 * provider_of_message
 *		The dialect that sends b's message i: courier.tms_provider's, or
 *		for courier's own SMS/LMS fallback of an AlimTalk its SMS dialect.
 */
static const CourierProvider *
provider_of_message(const TmsBatch *b, int i)
{
	return b->msgs[i].fallback ? b->fallback_provider : b->provider;
}

/*
 * tms_send
 *		Send every message with verdict SEND; in dry_run render and log only.
 *		Courier's own SMS/LMS fallbacks go out after the rest, through the
 *		SMS dialect (a dispatch of their own: one dialect per dispatch),
 *		unless the sender is stopping by then.  Runs with no transaction
 *		open in a worker.
 */
static void
tms_send(TmsBatch *b)
{
	int			m = 0;
	int			first = -1;
	MemoryContext old = MemoryContextSwitchTo(b->context);

	choose_dialects(b);

	for (int i = 0; i < b->n; i++)
	{
		b->msgs[i].skip = (b->verdict[i] != VERDICT_SEND);
		b->msgs[i].outcome = COURIER_OUT_PENDING;
		if (!b->msgs[i].skip)
		{
			if (first < 0)
				first = i;
			m++;
		}
	}

	if (b->dry_run)
	{
		for (int i = 0; i < b->n; i++)
		{
			if (b->msgs[i].skip)
				continue;
			b->msgs[i].outcome = COURIER_OUT_DELIVERED;
			strlcpy(b->msgs[i].code, "dry_run", sizeof(b->msgs[i].code));
		}
		/* the key names the order and date; phone and text stay out of logs */
		if (m > 0)
			ereport(LOG,
					(errmsg("courier tms dry_run: %d messages rendered, none sent; first %s (%s, %d bytes)",
							m, b->msgs[first].key, b->msgs[first].channel,
							(int) strlen(b->msgs[first].text))));
	}
	else if (m > 0)
	{
		sending_batch = b;
		PG_TRY();
		{
			for (int pass = 0; pass < 2; pass++)
			{
				const CourierProvider *provider = pass == 0 ? b->provider :
					b->fallback_provider;
				int			mine = 0;

				if (pass == 1 && (provider == b->provider || stop_requested()))
					break;
				for (int i = 0; i < b->n; i++)
				{
					b->msgs[i].skip = (b->verdict[i] != VERDICT_SEND ||
									   provider_of_message(b, i) != provider);
					mine += b->msgs[i].skip ? 0 : 1;
				}
				if (mine > 0)
				{
					CourierDispatchSizes sizes = {courier_tms_bulk_size,
						courier_tms_concurrency, courier_tms_timeout_ms};

					courier_dispatch(provider, b->msgs, b->n, &sizes, &hooks);
				}
			}
		}
		PG_FINALLY();
		{
			sending_batch = NULL;
		}
		PG_END_TRY();
	}
	MemoryContextSwitchTo(old);
}

/*
 * tms_record_retrying
 *		Record the outcomes in a transaction of their own (a worker's), and
 *		try again when it fails with a transient error (a deadlock with an
 *		app session, a serialization failure): the sends happened, and
 *		their outcomes must not be lost to a retryable error.
 */
static void
tms_record_retrying(TmsBatch *b)
{
	MemoryContext oldcontext = CurrentMemoryContext;

	for (int attempt = 1;; attempt++)
	{
		bool		done = false;

		PG_TRY();
		{
			courier_begin_transaction();
			tms_record(b);
			courier_commit_transaction();
			done = true;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(oldcontext);
			edata = CopyErrorData();
			if (!courier_error_is_transient(edata->sqlerrcode) ||
				attempt >= RECORD_TRIES)
				PG_RE_THROW();
			FlushErrorState();
			AbortCurrentTransaction();
			ereport(LOG,
					(errmsg("courier tms: recording %d outcomes failed, trying again: %s",
							b->n, edata->message)));
			FreeErrorData(edata);
		}
		PG_END_TRY();
		if (done)
			return;
	}
}

/*
 * tms_record
 *		Write back what became of each message, in the current transaction:
 *		one statement for delivered, dropped and released items, one for the
 *		charged ones.
 */
static void
tms_record(TmsBatch *b)
{
	int			n = b->n;
	Datum	   *sellers = palloc(sizeof(Datum) * n);
	Datum	   *orders = palloc(sizeof(Datum) * n);
	Datum	   *dates = palloc(sizeof(Datum) * n);
	Datum	   *status = palloc(sizeof(Datum) * n);
	Datum	   *http = palloc(sizeof(Datum) * n);
	Datum	   *pid = palloc(sizeof(Datum) * n);
	Datum	   *channel = palloc(sizeof(Datum) * n);
	Datum	   *latency = palloc(sizeof(Datum) * n);
	Datum	   *release = palloc(sizeof(Datum) * n);
	Datum	   *receipts = palloc(sizeof(Datum) * n);
	Datum	   *dialect = palloc(sizeof(Datum) * n);
	Datum	   *code = palloc(sizeof(Datum) * n);
	Datum		dialect_name[2];
	CourierCharges charges;
	int			delivered = 0;
	bool		unauthorized = false;
	char		unauthorized_code[64] = "";
	TimestampTz now = GetCurrentTimestamp();
	Oid			argtypes[15] = {INT8ARRAYOID, DATEARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, INT4ARRAYOID,
		INT4OID, TIMESTAMPTZOID, INT8ARRAYOID, BOOLARRAYOID, INT4OID,
	TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[15];
	CourierStageState *st;

	if (b->provider == NULL)
		choose_dialects(b);		/* leased ahead, released unsent */
	dialect_name[0] = CStringGetTextDatum(b->provider->name);
	dialect_name[1] = CStringGetTextDatum(b->fallback_provider->name);
	courier_charges_init(&charges, n, COURIER_STAGE_TMS);
	for (int i = 0; i < n; i++)
	{
		CourierMessage *m = &b->msgs[i];
		const CourierProvider *provider = provider_of_message(b, i);
		const char *s = "charge";
		int			release_ms = 0;
		bool		permanent = false;
		const char *error = m->error;

		switch (b->verdict[i])
		{
			case VERDICT_CLOSED:
				s = "closed";
				break;
			case VERDICT_EXPIRED:
				permanent = true;
				error = psprintf("notice older than courier.tms_max_notice_age (%d min): not sent late",
								 courier_tms_max_notice_age_min);
				break;
			case VERDICT_TOO_LONG:
				permanent = true;
				error = psprintf("message of %d bytes in EUC-KR exceeds the LMS limit of %d",
								 courier_euckr_length(m->text), COURIER_LMS_MAX_BYTES);
				break;
			case VERDICT_EXHAUSTED:
				permanent = true;
				error = "attempts used up by senders that died while sending it";
				break;
			case VERDICT_UNSUPPORTED:
				permanent = true;
				error = "message has characters that EUC-KR (SMS/LMS) cannot carry";
				break;
			case VERDICT_SEND:
				switch (m->outcome)
				{
					case COURIER_OUT_DELIVERED:
						s = b->dry_run ? "dry_run" : "delivered";
						delivered++;
						break;
					case COURIER_OUT_CLOSED:
						s = "closed";
						break;
					case COURIER_OUT_PENDING:
						s = "release";
						break;
					case COURIER_OUT_THROTTLED:
						s = "release";
						release_ms = m->retry_after_ms;
						break;
					case COURIER_OUT_UNAUTHORIZED:
						s = "release";
						release_ms = courier_tms_breaker_cooldown_ms;
						if (!unauthorized && m->code[0] != '\0' &&
							strncmp(m->code, "http_", 5) != 0)
							strlcpy(unauthorized_code, m->code, sizeof(unauthorized_code));
						unauthorized = true;
						break;
					case COURIER_OUT_REJECTED:
						permanent = true;
						break;
					case COURIER_OUT_FALLBACK:

						/*
						 * AlimTalk cannot reach the customer: never again
						 * by AlimTalk.  courier sends the SMS/LMS itself
						 * when so configured (once: a fallback is sent by
						 * an SMS dialect, which never answers so); else
						 * the notice fails with the provider's code.
						 */
						if (courier_alimtalk_fallback == COURIER_ALIMTALK_FALLBACK_COURIER &&
							!m->fallback)
							s = "fallback";
						else
							permanent = true;
						break;
					case COURIER_OUT_RETRY:
						/* taken or not?  asked before any resend */
						if (m->unknown && provider->looks_up_before_resend)
							s = "unconfirmed";
						break;
				}
				break;
		}

		sellers[i] = Int64GetDatum(b->seller_ids[i]);
		orders[i] = Int64GetDatum(b->order_ids[i]);
		dates[i] = DateADTGetDatum(b->ship_dates[i]);
		status[i] = CStringGetTextDatum(s);
		http[i] = Int32GetDatum(m->http_status);
		pid[i] = CStringGetTextDatum(m->provider_id);
		channel[i] = CStringGetTextDatum(m->channel);
		latency[i] = Float8GetDatum(m->latency_ms);
		release[i] = Int32GetDatum(release_ms);
		receipts[i] = BoolGetDatum(provider->receipt_query != NULL);
		dialect[i] = dialect_name[provider == b->provider ? 0 : 1];
		code[i] = CStringGetTextDatum(m->code);
		if (strcmp(s, "charge") == 0)
		{
			courier_charges_add(&charges, b->seller_ids[i], b->order_ids[i],
								b->ship_dates[i], error,
								(b->verdict[i] != VERDICT_SEND || m->code[0] == '\0') ?
								NULL : psprintf("tms:%s", m->code),
								m->http_status, permanent, m->unknown);
		}
	}

	values[0] = courier_int8_array(orders, n);
	values[1] = PointerGetDatum(construct_array(dates, n, DATEOID, 4, true, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(status, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(http, n, INT4OID, 4, true, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(pid, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_array(channel, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[6] = PointerGetDatum(construct_array(latency, n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[7] = PointerGetDatum(construct_array(release, n, INT4OID, 4, true, TYPALIGN_INT));
	values[8] = Int32GetDatum(MyProcPid);
	values[9] = TimestampTzGetDatum(now);
	values[10] = courier_int8_array(sellers, n);
	values[11] = PointerGetDatum(construct_array(receipts, n, BOOLOID, 1, true, TYPALIGN_CHAR));
	values[12] = Int32GetDatum(courier_receipt_interval_ms);
	values[13] = PointerGetDatum(construct_array(dialect, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[14] = PointerGetDatum(construct_array(code, n, TEXTOID, -1, false, TYPALIGN_INT));
	if (record_plan == NULL)
		record_plan = courier_prepare_kept(record_sql, 15, argtypes, true);
	courier_execute_kept(&record_plan, record_sql, 15, argtypes, values, NULL,
						 SPI_OK_UPDATE);

	courier_charge(&charges);

	if (unauthorized)
	{
		Oid			alert_types[1] = {TEXTOID};
		Datum		alert_values[1];

		/* the payload is JSON built by jsonb: the code is the provider's text */
		alert_values[0] = CStringGetTextDatum(unauthorized_code[0] != '\0' ?
											  psprintf("the provider refused courier's configuration (tms:%s: credentials, sender or template); sending is paused",
													   unauthorized_code) :
											  "the TMS refused courier's credentials (HTTP 401/403); sending is paused");
		if (SPI_execute_with_args("SELECT pg_catalog.pg_notify('courier_alerts',"
								  " pg_catalog.jsonb_build_object('alert', 'tms_unauthorized',"
								  "                               'detail', $1)::text)",
								  1, alert_types, alert_values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "courier: could not raise the alert");
	}

	if (courier_shared != NULL)
	{
		st = &courier_shared->stages[COURIER_STAGE_TMS];
		pg_atomic_fetch_add_u64(&st->batches, 1);
		pg_atomic_fetch_add_u64(&st->items_done, delivered);
		pg_atomic_fetch_add_u64(&st->items_failed, charges.n);
	}
}
