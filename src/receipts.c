/*-------------------------------------------------------------------------
 *
 * receipts.c
 *		The receipt stage: accepted is not delivered.  A provider with
 *		delivery receipts (every dialect but generic) answers a send with
 *		"accepted"; whether the message reached the handset, or failed, or
 *		went out as SMS/LMS because AlimTalk could not reach the customer,
 *		it tells later through its query API.  The tms workers ask it, in
 *		rounds between their sends, and record each notice's final state.
 *
 * A notice the provider accepted is 'awaiting' its receipt, first due
 * courier.receipt_interval after the send (tms.c).  A round leases the due
 * ones (receipt_due_at moves to the lease's end, so a worker that dies
 * mid-round leaves them to fall due again), commits, asks the provider one
 * query per provider request (the notice's provider_id is
 * "requestId/seq"), with no transaction open, and records what came in
 * one statement: a final state, or the next check after a back-off that
 * doubles up to 64 intervals, or 'expired' once courier.receipt_horizon
 * has passed since the send.  The app can also hand courier NHN's webhook
 * bodies (courier.record_receipts); the first final state wins either way.
 *
 * The same rounds reconcile sends whose answer never came, by the notice's
 * key (the provider's id of them is unknown): one the provider took under
 * an idempotency key it then refused to see again (NHN AlimTalk -1005,
 * recorded sent), and, through a provider without idempotency keys (NHN
 * SMS, found by its key; SENS, by its number and its text), one whose
 * attempt got no answer at all ('unconfirmed', not due): found, it is
 * recorded sent; answered LOOKUPS_BEFORE_RESEND times without it, it
 * falls due and is sent again under the same key.
 *
 * The dialect builds the query and reads its answer (provider.h); this
 * file knows neither HTTP bodies nor a provider's fields.
 *
 * IDENTIFICATION
 *		src/receipts.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "courier.h"
#include "provider.h"

#define RECEIPT_BATCH		500		/* notices one round asks about */
#define RECEIPTS_PER_ANSWER	1000	/* most recipients one answer names */
#define RECEIPT_MAX_STEPS	6		/* back-off: at most 2^6 intervals */
#define LOOKUPS_BEFORE_RESEND 3	/* answered lookups that found nothing */

/* One notice of a round. */
typedef struct ReceiptNotice
{
	int64		seller_id;
	int64		order_id;
	DateADT		ship_date;
	char	   *key;			/* dn-<order>-<yyyymmdd> */
	const CourierProvider *provider;	/* the dialect that sent it */
	char	   *request_id;		/* the provider's, from provider_id */
	char	   *ref;			/* what provider_id has after it, or "" */
	char	   *to;
	char	   *channel;		/* sms, lms, alimtalk */
	int			checks;			/* asked before this round */
	bool		unconfirmed;	/* no answer came to its send: taken? */
	uint32		text_hash;		/* unconfirmed: courier_text_hash of its
								 * text, rendered again (a look-up by
								 * number matches by text) */
	char	   *product;		/* what its text is rendered from */
	char	   *reason;
	bool		v2;				/* courier.notice_template_v2's */
	bool		answered;		/* the query about it was answered */
	CourierReceipt *found;		/* what the answer said, or NULL */
	const char *traceparent;	/* its request's trace, or NULL (trace.c) */
} ReceiptNotice;

/* The notices of one provider request, asked about in one query. */
typedef struct ReceiptGroup
{
	int			first;			/* index of its first notice (sorted) */
	int			count;
	bool		unanswered;		/* a query about it got no usable answer */
} ReceiptGroup;

/*
 * One query in flight: about a group's notices, or (message set) about one
 * message a look-up listed, for its text (CourierProvider.message_query).
 */
typedef struct ReceiptAsk
{
	ReceiptGroup *group;
	char		message[64];	/* "" for the group's own query */
} ReceiptAsk;

static MemoryContext round_context = NULL;

static int	lease_due(ReceiptNotice **notices, TimestampTz now,
					  TimestampTz lease_end);
static int	compare_by_request(const void *a, const void *b);
static const CourierProvider *provider_of(const char *name);
static void ask_provider(ReceiptNotice *notices, ReceiptGroup *groups,
						 int ngroups, volatile sig_atomic_t *stop);
static void match_receipts(ReceiptNotice *notices, const ReceiptGroup *group,
						   CourierReceipt *receipts, int n);
static void record_round(ReceiptNotice *notices, int n, TimestampTz now,
						 TimestampTz lease_end);
static int	next_wait_ms(int checks);
static char *notice_text(const ReceiptNotice *r);

/*
 * courier_receipts_round
 *		One round of the receipt stage in a tms worker: lease the notices
 *		whose receipt is due, ask the provider, record.  Returns the notices
 *		asked about (0: none was due, or the provider has no receipts).
 *		Opens and commits its own transactions; none is open while it waits
 *		on the network.  Stops asking when *stop is set: the notices not
 *		asked about are asked again after their back-off.
 */
int
courier_receipts_round(volatile sig_atomic_t *stop)
{
	ReceiptNotice *notices;
	ReceiptGroup *groups;
	int			n;
	int			ngroups = 0;
	MemoryContext old;
	TimestampTz now = GetCurrentTimestamp();

	/* past the time a round's queries may take */
	TimestampTz lease_end = TimestampTzPlusMilliseconds(now,
														2 * (courier_tms_timeout_ms + 1000) + 1000);

	if (round_context == NULL)
		round_context = AllocSetContextCreate(TopMemoryContext, "courier receipts",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(round_context);

	courier_begin_transaction();
	n = lease_due(&notices, now, lease_end);
	courier_commit_transaction();
	if (n == 0)
		return 0;

	pgstat_report_activity(STATE_RUNNING, "tms: asking for receipts");
	old = MemoryContextSwitchTo(round_context);
	qsort(notices, n, sizeof(ReceiptNotice), compare_by_request);
	groups = palloc(sizeof(ReceiptGroup) * n);
	for (int i = 0; i < n; i++)
	{
		if (i == 0 || compare_by_request(&notices[i], &notices[i - 1]) != 0)
		{
			groups[ngroups].first = i;
			groups[ngroups].count = 0;
			ngroups++;
		}
		groups[ngroups - 1].count++;
	}
	ask_provider(notices, groups, ngroups, stop);
	MemoryContextSwitchTo(old);

	courier_begin_transaction();
	record_round(notices, n, GetCurrentTimestamp(), lease_end);
	courier_commit_transaction();
	return n;
}

/*
 * courier_receipts_next_due_ms
 *		Milliseconds until a notice's receipt is next due, capped at
 *		courier.idle_wakeup (also when none awaits): an idle sender sleeps
 *		no longer.  In a transaction.
 */
long
courier_receipts_next_due_ms(void)
{
	static SPIPlanPtr plan = NULL;
	bool		isnull;
	Datum		d;

	courier_execute_kept(&plan,
						 "SELECT pg_catalog.ceil(extract(epoch FROM"
						 " pg_catalog.min(receipt_due_at) - pg_catalog.clock_timestamp()) * 1000)::bigint"
						 "  FROM courier.notices WHERE receipt_status = 'awaiting'",
						 0, NULL, NULL, NULL, SPI_OK_SELECT);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return courier_idle_wakeup_ms;
	return Min(Max(DatumGetInt64(d), 0) + 1, courier_idle_wakeup_ms);
}

/*
 * lease_due
 *		Lease up to RECEIPT_BATCH notices whose receipt is due at now: their
 *		receipt_due_at moves past the time a round's queries may take, so
 *		no other sender asks about them meanwhile.  *notices gets them (in
 *		round_context).  The same shape as the tms lease (claim.c): the
 *		claim's ctids, reached by a TID scan; with courier.claim_per_seller,
 *		the notices of one seller (docs/citus.md, rule 2), named in both
 *		halves.
 */
static int
lease_due(ReceiptNotice **notices, TimestampTz now, TimestampTz lease_end)
{
	static SPIPlanPtr plans[2];
	static char *sql[2];
	Oid			argtypes[4] = {TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, INT8OID};
	Datum		values[4];
	MemoryContext old;
	int			n;
	int			one = courier_claim_per_seller ? 1 : 0;

	values[0] = TimestampTzGetDatum(now);
	values[1] = TimestampTzGetDatum(lease_end);
	values[2] = Int32GetDatum(RECEIPT_BATCH);
	if (one && !courier_pick_receipt_seller(now, &values[3]))
		return 0;
	if (sql[one] == NULL)
		sql[one] = MemoryContextStrdup(TopMemoryContext, psprintf(
			"UPDATE courier.notices n"
			"   SET receipt_due_at = $2"
			" WHERE n.ctid = ANY (ARRAY("
			"    SELECT c.ctid FROM courier.notices c"
			"     WHERE c.receipt_status IN ('awaiting', 'unconfirmed')"
			"       AND c.receipt_due_at <= $1%s"
			"     ORDER BY c.receipt_due_at LIMIT $3 FOR UPDATE SKIP LOCKED))%s "
			"RETURNING n.seller_id, n.order_id, n.ship_date,"
			"          coalesce(n.provider_id, ''), n.customer_phone, n.receipt_checks,"
			"          n.provider, coalesce(n.channel, ''),"
			"          n.receipt_status = 'unconfirmed',"
			"          n.product_name, n.reason, n.variant, n.traceparent",
			one ? " AND c.seller_id = $4" : "",
			one ? " AND n.seller_id = $4" : ""));
	courier_execute_kept(&plans[one], sql[one], 3 + one, argtypes, values, NULL,
						 SPI_OK_UPDATE_RETURNING);

	n = (int) SPI_processed;
	old = MemoryContextSwitchTo(round_context);
	*notices = palloc0(sizeof(ReceiptNotice) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		ReceiptNotice *r = &(*notices)[i];
		bool		isnull;
		char	   *provider_id = SPI_getvalue(tup, desc, 4);
		char	   *slash = strrchr(provider_id, '/');
		int			year,
					month,
					day;

		r->seller_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		r->order_id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		r->ship_date = DatumGetDateADT(SPI_getbinval(tup, desc, 3, &isnull));
		r->to = SPI_getvalue(tup, desc, 5);
		r->checks = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		r->provider = provider_of(SPI_getvalue(tup, desc, 7));
		r->channel = SPI_getvalue(tup, desc, 8);
		r->unconfirmed = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
		r->product = SPI_getvalue(tup, desc, 10);
		r->reason = SPI_getvalue(tup, desc, 11);
		r->v2 = strcmp(SPI_getvalue(tup, desc, 12), "v2") == 0;
		r->traceparent = courier_traceparent_stored(SPI_getvalue(tup, desc, 13));
		if (r->unconfirmed)
			r->text_hash = courier_text_hash(notice_text(r));
		j2date(r->ship_date + POSTGRES_EPOCH_JDATE, &year, &month, &day);
		r->key = psprintf("dn-" INT64_FORMAT "-%04d%02d%02d", r->order_id,
						  year, month, day);
		r->ref = "";
		if (slash != NULL)
		{
			*slash = '\0';
			r->ref = slash + 1;
		}
		r->request_id = provider_id;
	}
	MemoryContextSwitchTo(old);
	return n;
}

/* qsort: notices of one provider request next to each other */
static int
compare_by_request(const void *a, const void *b)
{
	const ReceiptNotice *x = (const ReceiptNotice *) a;
	const ReceiptNotice *y = (const ReceiptNotice *) b;

	int			c;

	if (x->provider != y->provider)
		return x->provider < y->provider ? -1 : 1;
	c = strcmp(x->request_id, y->request_id);
	if (c != 0 || x->request_id[0] != '\0')
		return c;
	/* taken under a request courier never learned: asked about one by one */
	return strcmp(x->key, y->key);
}

/*
 * provider_of
 *		The dialect a notice was sent with (notices.provider), which is
 *		asked for its receipt even after courier.tms_provider moved on;
 *		the current one for a notice that names none or an unknown one.
 */
static const CourierProvider *
provider_of(const char *name)
{
	const CourierProvider *p = name ? courier_provider_lookup(name) : NULL;

	return p ? p : courier_provider_by_id(courier_tms_provider);
}

/*
 * ask_provider
 *		One query per group, courier.tms_concurrency of them in flight at
 *		once; each answer's receipts are matched to the group's notices.
 *		An answer that is not one (an error, a refusal, no answer) leaves
 *		the group's notices as they were: asked again after their back-off.
 *		A look-up whose dialect lists a number's messages without their
 *		text (message_query) asks each listed message to that number for
 *		its text before the notice is matched, or counted as not found.
 */
static void
ask_provider(ReceiptNotice *notices, ReceiptGroup *groups, int ngroups,
			 volatile sig_atomic_t *stop)
{
	int			concurrency = courier_http_prepare(courier_tms_concurrency);
	int			next = 0;
	int			in_flight = 0;
	CourierReceipt *receipts = palloc(sizeof(CourierReceipt) * RECEIPTS_PER_ANSWER);
	List	   *follow_ups = NIL;	/* ReceiptAsks about one message, to start */
	ListCell   *lc;

	PG_TRY();
	{
		while (next < ngroups || follow_ups != NIL || in_flight > 0)
		{
			CourierHttpResult res;

			while (!*stop && in_flight < concurrency &&
				   (follow_ups != NIL || next < ngroups))
			{
				ReceiptAsk *ask;
				ReceiptNotice *first;
				CourierRequest req;

				if (follow_ups != NIL)
				{
					ask = linitial(follow_ups);
					follow_ups = list_delete_first(follow_ups);
				}
				else
				{
					ask = palloc0(sizeof(ReceiptAsk));
					ask->group = &groups[next++];
				}
				first = &notices[ask->group->first];
				if (first->provider->receipt_query == NULL)
				{
					/* a dialect without receipts: expires */
					ask->group->unanswered = true;
					continue;
				}
				memset(&req, 0, sizeof(req));
				if (ask->message[0] != '\0')
					first->provider->message_query(&req, ask->message);
				else
					first->provider->receipt_query(&req, first->request_id, first->key,
												   first->channel, first->to);
				/* a query is a span of the trace its notices were sent in */
				if (first->traceparent != NULL)
					req.headers = lappend(req.headers,
										  courier_traceparent_header(first->traceparent));
				courier_http_start(req.url, req.headers, NULL, 0, false,
								   courier_tms_timeout_ms, ask);
				in_flight++;
			}
			if (in_flight == 0)
				break;
			(void) courier_http_wait(-1);
			CHECK_FOR_INTERRUPTS();
			while (courier_http_next_done(&res))
			{
				ReceiptAsk *ask = (ReceiptAsk *) res.arg;
				ReceiptNotice *first = &notices[ask->group->first];
				int			got = res.completed ?
					first->provider->read_receipts(&res, receipts, RECEIPTS_PER_ANSWER) : -1;

				if (got < 0)
					ask->group->unanswered = true;
				else if (ask->message[0] == '\0' && first->request_id[0] == '\0' &&
						 first->provider->message_query != NULL)
				{
					/* a look-up's list: ask each message to the number for its text */
					for (int k = 0; k < got; k++)
					{
						ReceiptAsk *one;

						if (receipts[k].message[0] == '\0' ||
							strcmp(receipts[k].to, first->to) != 0)
							continue;
						one = palloc0(sizeof(ReceiptAsk));
						one->group = ask->group;
						strlcpy(one->message, receipts[k].message, sizeof(one->message));
						follow_ups = lappend(follow_ups, one);
					}
					got = 0;
				}
				if (got > 0)
					match_receipts(notices, ask->group, receipts, got);
				courier_http_release(&res);
				in_flight--;
			}
		}
		/* stopped early: what was not asked is not answered */
		for (int g = next; g < ngroups; g++)
			groups[g].unanswered = true;
		foreach(lc, follow_ups)
			((ReceiptAsk *) lfirst(lc))->group->unanswered = true;
		for (int g = 0; g < ngroups; g++)
			for (int i = groups[g].first; i < groups[g].first + groups[g].count; i++)
				notices[i].answered = !groups[g].unanswered;
	}
	PG_CATCH();
	{
		courier_http_abort_all();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * match_receipts
 *		Give each notice of the group the receipt that names it: by the key
 *		courier sent as the recipient's grouping key, else by what the
 *		provider's id of it has after the request id (a seq, a message id),
 *		else by its number.  A notice looked up without a request id (its
 *		attempt got no answer) has no such id: the receipt must carry its
 *		key, or its number and its text (a provider without keys lists
 *		every message to that number, another notice's among them).
 *		Copies the receipt (the buffer is reused for the next answer).
 */
static void
match_receipts(ReceiptNotice *notices, const ReceiptGroup *group,
			   CourierReceipt *receipts, int n)
{
	for (int i = group->first; i < group->first + group->count; i++)
	{
		ReceiptNotice *r = &notices[i];

		for (int k = 0; k < n; k++)
		{
			CourierReceipt *c = &receipts[k];
			bool		same;

			if (c->key[0] != '\0')
				same = strcmp(c->key, r->key) == 0;
			else if (r->request_id[0] == '\0')
				same = r->text_hash != 0 && c->text_hash == r->text_hash &&
					strcmp(c->to, r->to) == 0;
			else if (c->ref[0] != '\0' && r->ref[0] != '\0')
				same = strcmp(c->ref, r->ref) == 0;
			else
				same = c->to[0] != '\0' && strcmp(c->to, r->to) == 0;
			if (same)
			{
				r->found = palloc(sizeof(CourierReceipt));
				memcpy(r->found, c, sizeof(CourierReceipt));
				break;
			}
		}
	}
}

/*
 * record_round
 *		Write what the round learned, in one statement: a final state with
 *		its code (and how the provider fell back), or the next check after
 *		the back-off, or 'expired' once courier.receipt_horizon has passed
 *		since the send.  Only the notices the round still holds are written:
 *		their receipt_due_at is still its lease's end ($16).  A receipt
 *		that came by another way meanwhile (a webhook, final or a fallback)
 *		cleared it, a round that took a notice over after this one's lease
 *		ran out moved it.  (A guard on receipt_status, as the lease has,
 *		would match the partial index notices_receipt_due, and a plan made
 *		on statistics that saw no receipt awaited nested-looped the whole of
 *		that index per notice, t/048.)  An AlimTalk that cannot reach its customer
 *		(fallback_due), under courier.alimtalk_fallback = courier, goes back
 *		to pending, due now, with the code as its fallback_reason: the tms
 *		stage sends its SMS/LMS next (once: a notice with a fallback_reason
 *		never falls back again).  The time ($1) and the
 *		horizon ($2) come in as parameters (docs/citus.md, rule 3).
 */
static void
record_round(ReceiptNotice *notices, int n, TimestampTz now, TimestampTz lease_end)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[16] = {TIMESTAMPTZOID, INT4OID, INT8ARRAYOID, INT8ARRAYOID,
		DATEARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, TEXTARRAYOID, BOOLARRAYOID, INT4OID, BOOLARRAYOID, BOOLOID,
	TIMESTAMPTZOID};
	Datum		values[16];
	Datum	   *answered = palloc(sizeof(Datum) * n);
	Datum	   *fallback_due = palloc(sizeof(Datum) * n);
	Datum	   *found_ids = palloc(sizeof(Datum) * n);
	bool	   *found_nulls = palloc(sizeof(bool) * n);
	Datum	   *sellers = palloc(sizeof(Datum) * n);
	Datum	   *orders = palloc(sizeof(Datum) * n);
	Datum	   *dates = palloc(sizeof(Datum) * n);
	Datum	   *states = palloc(sizeof(Datum) * n);
	Datum	   *codes = palloc(sizeof(Datum) * n);
	bool	   *code_nulls = palloc(sizeof(bool) * n);
	Datum	   *channels = palloc(sizeof(Datum) * n);
	bool	   *channel_nulls = palloc(sizeof(bool) * n);
	Datum	   *reasons = palloc(sizeof(Datum) * n);
	bool	   *reason_nulls = palloc(sizeof(bool) * n);
	Datum	   *waits = palloc(sizeof(Datum) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		ReceiptNotice *r = &notices[i];
		CourierReceipt *c = r->found;
		const char *state = "pending";

		if (c != NULL && c->state == COURIER_RECEIPT_DELIVERED)
			state = "delivered";
		else if (c != NULL && c->state == COURIER_RECEIPT_FAILED)
			state = "failed";
		sellers[i] = Int64GetDatum(r->seller_id);
		orders[i] = Int64GetDatum(r->order_id);
		dates[i] = DateADTGetDatum(r->ship_date);
		states[i] = CStringGetTextDatum(state);
		code_nulls[i] = (c == NULL || c->code[0] == '\0');
		codes[i] = code_nulls[i] ? (Datum) 0 : CStringGetTextDatum(c->code);
		channel_nulls[i] = (c == NULL || c->fallback_reason[0] == '\0');
		if (!channel_nulls[i] && c->fallback_channel[0] == '\0')
		{
			/*
			 * The provider resent it and does not say how: as courier asked,
			 * by SMS or LMS as the text's length in EUC-KR routed it (tms.c).
			 */
			strlcpy(c->fallback_channel,
					courier_sms_channel(courier_euckr_length(notice_text(r))),
					sizeof(c->fallback_channel));
		}
		channels[i] = channel_nulls[i] ? (Datum) 0 :
			CStringGetTextDatum(c->fallback_channel);
		reason_nulls[i] = (c == NULL || c->fallback_reason[0] == '\0');
		reasons[i] = reason_nulls[i] ? (Datum) 0 :
			CStringGetTextDatum(c->fallback_reason);
		waits[i] = Int32GetDatum(next_wait_ms(r->checks));
		answered[i] = BoolGetDatum(r->answered);
		fallback_due[i] = BoolGetDatum(c != NULL && c->fallback_due);
		/* a taken notice learns its provider id from its receipt */
		found_nulls[i] = (c == NULL || c->request_id[0] == '\0');
		found_ids[i] = found_nulls[i] ? (Datum) 0 :
			CStringGetTextDatum(c->ref[0] != '\0' ?
								psprintf("%s/%s", c->request_id, c->ref) :
								c->request_id);
	}

	values[0] = TimestampTzGetDatum(now);
	values[1] = Int32GetDatum(courier_receipt_horizon_min);
	values[2] = courier_int8_array(sellers, n);
	values[3] = courier_int8_array(orders, n);
	values[4] = PointerGetDatum(construct_array(dates, n, DATEOID, 4, true, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_array(states, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[6] = PointerGetDatum(construct_md_array(codes, code_nulls, 1, dims, lbs,
												   TEXTOID, -1, false, TYPALIGN_INT));
	values[7] = PointerGetDatum(construct_md_array(channels, channel_nulls, 1, dims, lbs,
												   TEXTOID, -1, false, TYPALIGN_INT));
	values[8] = PointerGetDatum(construct_md_array(reasons, reason_nulls, 1, dims, lbs,
												   TEXTOID, -1, false, TYPALIGN_INT));
	values[9] = PointerGetDatum(construct_array(waits, n, INT4OID, 4, true, TYPALIGN_INT));
	values[10] = PointerGetDatum(construct_md_array(found_ids, found_nulls, 1, dims, lbs,
													TEXTOID, -1, false, TYPALIGN_INT));
	values[11] = PointerGetDatum(construct_array(answered, n, BOOLOID, 1, true,
												 TYPALIGN_CHAR));
	values[12] = Int32GetDatum(LOOKUPS_BEFORE_RESEND);
	values[13] = PointerGetDatum(construct_array(fallback_due, n, BOOLOID, 1, true,
												 TYPALIGN_CHAR));
	values[14] = BoolGetDatum(courier_alimtalk_fallback == COURIER_ALIMTALK_FALLBACK_COURIER);
	values[15] = TimestampTzGetDatum(lease_end);

	courier_execute_kept(&plan,
						 "WITH r AS ("
						 "    SELECT u.*,"
						 "           u.state = 'pending'"
						 "               AND coalesce(n0.sent_at < $1 - $2 * interval '1 minute',"
						 "                            false) AS expired,"
						 "           n0.receipt_status = 'unconfirmed' AS unconfirmed,"
						 "           n0.receipt_status = 'unconfirmed' AND u.found_id IS NULL"
						 "               AND u.answered AND n0.receipt_checks + 1 >= $13 AS absent,"
						 "           u.fallback_due AND $15 AND n0.fallback_reason IS NULL"
						 "               AS fallback"
						 "      FROM unnest($3::bigint[], $4::bigint[], $5::date[], $6::text[],"
						 "                  $7::text[], $8::text[], $9::text[], $10::int[],"
						 "                  $11::text[], $12::bool[], $14::bool[])"
						 "           AS u(seller_id, order_id, ship_date, state, code,"
						 "                fallback_channel, fallback_reason, wait_ms, found_id,"
						 "                answered, fallback_due)"
						 "      JOIN courier.notices n0 ON n0.seller_id = u.seller_id"
						 "           AND n0.order_id = u.order_id AND n0.ship_date = u.ship_date"
						 ") "
						 "UPDATE courier.notices n"
						 "   SET status = CASE WHEN r.fallback THEN 'pending'"
						 "                     WHEN r.unconfirmed AND r.found_id IS NOT NULL"
						 "                     THEN 'delivered' ELSE n.status END,"
						 "       sent_at = CASE WHEN r.unconfirmed AND r.found_id IS NOT NULL"
						 "                      THEN $1 ELSE n.sent_at END,"
						 "       due_at = CASE WHEN r.absent OR r.fallback THEN $1 ELSE n.due_at END,"
						 "       receipt_status = CASE WHEN r.absent OR r.fallback THEN NULL"
						 "                             WHEN r.unconfirmed AND r.found_id IS NULL"
						 "                             THEN 'unconfirmed'"
						 "                             WHEN r.state <> 'pending' THEN r.state"
						 "                             WHEN r.expired THEN 'expired'"
						 "                             ELSE 'awaiting' END,"
						 "       receipt_code = coalesce(r.code, n.receipt_code),"
						 "       receipt_at = CASE WHEN (r.state <> 'pending' OR r.expired) AND NOT r.fallback"
						 "                         THEN $1 END,"
						 "       receipt_due_at = CASE WHEN r.absent OR r.fallback THEN NULL"
						 "                             WHEN r.state = 'pending' AND NOT r.expired"
						 "                             THEN $1 + r.wait_ms * interval '1 ms' END,"
						 "       errors = CASE WHEN r.fallback THEN n.errors ||"
						 "           pg_catalog.jsonb_build_object('at', $1, 'code', 'tms:' || r.code,"
						 "               'error', '" COURIER_FALLBACK_NOTE "')"
						 "           ELSE n.errors END,"
						 "       receipt_checks = CASE WHEN r.absent OR r.fallback THEN 0"
						 "                             ELSE n.receipt_checks + 1 END,"
						 "       fallback_channel = coalesce(r.fallback_channel, n.fallback_channel),"
						 "       fallback_reason = CASE WHEN r.fallback THEN r.code"
						 "                              ELSE coalesce(r.fallback_reason, n.fallback_reason) END,"
						 "       provider_id = coalesce(nullif(n.provider_id, ''), r.found_id)"
						 "  FROM r"
						 " WHERE n.seller_id = r.seller_id AND n.order_id = r.order_id"
						 "   AND n.ship_date = r.ship_date"
						 "   AND n.receipt_due_at = $16",
						 16, argtypes, values, NULL, SPI_OK_UPDATE);
}

/*
 * notice_text
 *		r's text rendered again from the notice's parts and the current
 *		courier.notice_template (or _v2): what was sent, unless the
 *		template changed since.  In round_context's caller's context.
 */
static char *
notice_text(const ReceiptNotice *r)
{
	return courier_render_notice(r->v2, r->order_id, r->ship_date, r->product,
								 r->reason);
}

/*
 * next_wait_ms
 *		The wait before the next check of a notice asked about checks + 1
 *		times: courier.receipt_interval doubled per check, at most 2^6
 *		intervals (a provider takes seconds, sometimes hours).
 */
static int
next_wait_ms(int checks)
{
	int64		wait = (int64) courier_receipt_interval_ms <<
		Min(checks + 1, RECEIPT_MAX_STEPS);

	return (int) Min(wait, (int64) PG_INT32_MAX);
}
