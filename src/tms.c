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
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "courier.h"
#include "dispatch.h"

#define SMS_MAX_BYTES	90
#define LMS_MAX_BYTES	2000
#define LMS_SUBJECT		"Shipping delay"
#define TMS_MAX_LEASE	20000	/* most notices one sender leases at once */

/* What to do with a message that is not sent. */
typedef enum Verdict
{
	VERDICT_SEND = 0,
	VERDICT_TOO_LONG,
	VERDICT_UNSUPPORTED,
	VERDICT_EXPIRED,
	VERDICT_EXHAUSTED
} Verdict;

typedef struct TmsBatch
{
	int			n;
	int64	   *item_ids;
	Verdict    *verdict;
	CourierMessage *msgs;
	bool		dry_run;
} TmsBatch;

static MemoryContext batch_context = NULL;
static volatile sig_atomic_t *stop_flag = NULL;
static TimestampTz lease_started = 0;
static SPIPlanPtr render_plan = NULL;
static SPIPlanPtr record_plan = NULL;

static void tms_lease(TmsBatch *b);
static int	euckr_length(const char *text);
static void tms_send(TmsBatch *b);
static void tms_record(TmsBatch *b);
static bool stop_requested(void);

static const CourierDispatchHooks hooks = {
	courier_limits_acquire,
	courier_limits_report,
	stop_requested
};

/*
 * The notices of the leased items, rendered.  The key is the notice's
 * natural key, the same on every attempt.
 */
static const char *const render_sql =
"SELECT w.item_id, n.customer_phone,"
"       'dn-' || n.order_id || '-' || to_char(n.ship_date, 'YYYYMMDD') AS key,"
"       n.created_at < statement_timestamp() - $3 * interval '1 minute' AS expired,"
"       replace(replace(replace(replace("
"           CASE n.variant WHEN 'v2' THEN $4 ELSE $2 END,"
"           '{order_id}', n.order_id::text),"
"           '{new_ship_date}', to_char(n.ship_date, 'YYYY-MM-DD')),"
"           '{product}', n.product_name),"
"           '{reason}', n.reason) AS text,"
"       w.attempts"
"  FROM unnest($1::bigint[]) WITH ORDINALITY AS c(item_id, ord)"
"  JOIN courier.work_items w ON w.item_id = c.item_id"
"  JOIN courier.notices n ON n.order_id = w.order_id AND n.ship_date = w.ship_date"
" ORDER BY c.ord";

/* attempts lost with dead senders count too: column 6 of render_sql */
#define RENDER_ATTEMPTS_COLUMN 6

/*
 * Delivered items leave the queue and are logged, whoever holds them now (a
 * delivery is a fact); released ones fall due, if this sender still holds
 * them.
 */
static const char *const record_sql =
"WITH r AS ("
"    SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[],"
"                         $5::text[], $6::float8[], $7::int[])"
"           AS r(item_id, status, http_status, provider_id, channel, latency_ms, release_ms)"
"), done AS ("
"    DELETE FROM courier.work_items w USING r"
"     WHERE w.item_id = r.item_id AND r.status IN ('delivered', 'dry_run')"
"    RETURNING w.order_id, w.ship_date, w.attempts, r.*"
"), logged AS ("
"    UPDATE courier.notices n"
"       SET status = d.status, sent_at = clock_timestamp(),"
"           http_status = d.http_status, provider_id = nullif(d.provider_id, ''),"
"           channel = d.channel, latency_ms = d.latency_ms, attempts = d.attempts + 1"
"      FROM done d"
"     WHERE n.order_id = d.order_id AND n.ship_date = d.ship_date"
") "
"UPDATE courier.work_items w"
"   SET not_before = statement_timestamp() + r.release_ms * interval '1 ms',"
"       leased_by = NULL"
"  FROM r"
" WHERE w.item_id = r.item_id AND r.status = 'release' AND w.leased_by = $8";

/*
 * courier_tms_worker_batch
 *		One batch in a worker: lease and render (transaction), send (no
 *		transaction), record (transaction).  Returns the items handled; when
 *		none were due, *sleep_ms says when the next one is.
 */
int
courier_tms_worker_batch(volatile sig_atomic_t *stop, long *sleep_ms)
{
	TmsBatch	batch;

	stop_flag = stop;
	if (batch_context == NULL)
		batch_context = AllocSetContextCreate(TopMemoryContext, "courier tms batch",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(batch_context);

	courier_begin_transaction();
	tms_lease(&batch);
	if (batch.n == 0)
		*sleep_ms = Min(*sleep_ms, courier_next_due_ms(COURIER_STAGE_TMS));
	courier_commit_transaction();
	if (batch.n == 0)
		return 0;

	pgstat_report_activity(STATE_RUNNING, "tms: sending");
	tms_send(&batch);

	courier_begin_transaction();
	tms_record(&batch);
	courier_commit_transaction();
	return batch.n;
}

/*
 * courier_tms_run_once
 *		The same steps in the caller's transaction, SPI connected.
 */
int
courier_tms_run_once(void)
{
	TmsBatch	batch;

	stop_flag = NULL;
	if (batch_context == NULL)
		batch_context = AllocSetContextCreate(TopMemoryContext, "courier tms batch",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(batch_context);

	tms_lease(&batch);
	if (batch.n == 0)
		return 0;
	tms_send(&batch);
	tms_record(&batch);
	return batch.n;
}

/*
 * stop_requested
 *		Stop starting requests on shutdown, when the breaker opens, or when
 *		half the lease is gone (rate limits or Retry-After made the batch
 *		slow): what is not sent by then is released, so that no other
 *		sender takes over items this one is still sending.
 */
static bool
stop_requested(void)
{
	return (stop_flag != NULL && *stop_flag) ||
		courier_limits_breaker_open() ||
		TimestampDifferenceExceeds(lease_started, GetCurrentTimestamp(),
								   courier_lease_ms / 2);
}

/*
 * tms_lease
 *		Lease a batch and render its messages into batch_context, which
 *		outlives the transaction.  Routing: up to 90 bytes in EUC-KR is an
 *		SMS, up to 2,000 an LMS (with a subject); longer, or with characters
 *		EUC-KR cannot carry, is rejected without being sent.
 */
static void
tms_lease(TmsBatch *b)
{
	int			n;
	Datum		ids;
	Oid			argtypes[4] = {INT8ARRAYOID, TEXTOID, INT4OID, TEXTOID};
	Datum		values[4];
	MemoryContext old;

	memset(b, 0, sizeof(TmsBatch));
	b->dry_run = (courier_tms_mode == COURIER_TMS_DRY_RUN);
	lease_started = GetCurrentTimestamp();
	/*
	 * Enough for every request slot to be busy: with bulk sends a batch of
	 * courier.batch_size notices would fill only a few requests.
	 */
	n = courier_lease_due(COURIER_STAGE_TMS,
						  Max(courier_batch_size,
							  Min(courier_tms_bulk_size * courier_tms_concurrency,
								  TMS_MAX_LEASE)),
						  courier_lease_ms);
	if (n == 0)
		return;
	ids = courier_ids_to_array(&n);

	values[0] = ids;
	values[1] = CStringGetTextDatum(courier_notice_template);
	values[2] = Int32GetDatum(courier_tms_max_notice_age_min);
	values[3] = CStringGetTextDatum(courier_notice_template_v2);
	courier_execute_kept(&render_plan, render_sql, 4, argtypes, values, NULL,
						 SPI_OK_SELECT);

	old = MemoryContextSwitchTo(batch_context);
	b->n = (int) SPI_processed;
	b->item_ids = palloc(sizeof(int64) * Max(b->n, 1));
	b->verdict = palloc0(sizeof(Verdict) * Max(b->n, 1));
	b->msgs = palloc0(sizeof(CourierMessage) * Max(b->n, 1));
	for (int i = 0; i < b->n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		CourierMessage *m = &b->msgs[i];
		int			bytes;

		b->item_ids[i] = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		m->to = SPI_getvalue(tup, desc, 2);
		m->key = SPI_getvalue(tup, desc, 3);
		m->text = SPI_getvalue(tup, desc, 5);
		bytes = euckr_length(m->text);
		if (DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull)))
			b->verdict[i] = VERDICT_EXPIRED;
		else if (DatumGetInt32(SPI_getbinval(tup, desc, RENDER_ATTEMPTS_COLUMN,
											 &isnull)) >= courier_max_attempts)
			b->verdict[i] = VERDICT_EXHAUSTED;
		else if (bytes < 0)
			b->verdict[i] = VERDICT_UNSUPPORTED;
		else if (bytes > LMS_MAX_BYTES)
			b->verdict[i] = VERDICT_TOO_LONG;
		m->channel = (bytes >= 0 && bytes <= SMS_MAX_BYTES) ? "sms" : "lms";
		m->subject = (strcmp(m->channel, "lms") == 0) ? LMS_SUBJECT : NULL;
	}
	MemoryContextSwitchTo(old);
}

/*
 * euckr_length
 *		Bytes of text in EUC-KR, the encoding Korean carriers count SMS and
 *		LMS lengths in; -1 when a character has no EUC-KR form (emoji, for
 *		instance), which the carrier would garble.  Needs a transaction (the
 *		conversion is looked up in the catalog).
 */
static int
euckr_length(const char *text)
{
	static Oid	proc = InvalidOid;
	int			len = strlen(text);
	unsigned char *buf;
	int			converted;
	int			result;

	if (GetDatabaseEncoding() == PG_EUC_KR)
		return len;
	if (!OidIsValid(proc))
		proc = FindDefaultConversionProc(GetDatabaseEncoding(), PG_EUC_KR);
	if (!OidIsValid(proc))
		return len;				/* no conversion known: count the bytes */

	buf = palloc((size_t) len * MAX_CONVERSION_GROWTH + 1);
	converted = pg_do_encoding_conversion_buf(proc, GetDatabaseEncoding(), PG_EUC_KR,
											  (unsigned char *) text, len,
											  buf, len * MAX_CONVERSION_GROWTH + 1,
											  true);
	result = (converted == len) ? (int) strlen((char *) buf) : -1;
	pfree(buf);
	return result;
}

/*
 * tms_send
 *		Send every message with verdict SEND; in dry_run render and log only.
 *		Runs with no transaction open in a worker.
 */
static void
tms_send(TmsBatch *b)
{
	CourierMessage *send;
	int		   *index;
	int			m = 0;
	MemoryContext old = MemoryContextSwitchTo(batch_context);

	send = palloc0(sizeof(CourierMessage) * b->n);
	index = palloc(sizeof(int) * b->n);
	for (int i = 0; i < b->n; i++)
	{
		if (b->verdict[i] == VERDICT_SEND)
		{
			send[m] = b->msgs[i];
			index[m++] = i;
		}
	}

	if (b->dry_run)
	{
		for (int i = 0; i < m; i++)
		{
			send[i].outcome = COURIER_OUT_DELIVERED;
			strlcpy(send[i].code, "dry_run", sizeof(send[i].code));
		}
		if (m > 0)
			ereport(LOG,
					(errmsg("courier tms dry_run: %d messages rendered, none sent; first to %s (%s): %s",
							m, send[0].to, send[0].channel, send[0].text)));
	}
	else if (m > 0)
		courier_dispatch(send, m, &hooks);

	for (int i = 0; i < m; i++)
		b->msgs[index[i]] = send[i];
	MemoryContextSwitchTo(old);
}

/*
 * tms_record
 *		Write back what became of each message, in the current transaction:
 *		one statement for delivered and released items, one for the failed.
 */
static void
tms_record(TmsBatch *b)
{
	int			n = b->n;
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *status = palloc(sizeof(Datum) * n);
	Datum	   *http = palloc(sizeof(Datum) * n);
	Datum	   *pid = palloc(sizeof(Datum) * n);
	Datum	   *channel = palloc(sizeof(Datum) * n);
	Datum	   *latency = palloc(sizeof(Datum) * n);
	Datum	   *release = palloc(sizeof(Datum) * n);
	Datum	   *f_ids = palloc(sizeof(Datum) * n);
	Datum	   *f_err = palloc(sizeof(Datum) * n);
	Datum	   *f_state = palloc(sizeof(Datum) * n);
	Datum	   *f_http = palloc(sizeof(Datum) * n);
	Datum	   *f_perm = palloc(sizeof(Datum) * n);
	Datum	   *f_unknown = palloc(sizeof(Datum) * n);
	bool	   *f_state_null = palloc(sizeof(bool) * n);
	bool	   *f_http_null = palloc(sizeof(bool) * n);
	int			nf = 0;
	int			delivered = 0;
	bool		unauthorized = false;
	Oid			argtypes[8] = {INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, INT4ARRAYOID, INT4OID};
	Datum		values[8];
	CourierStageState *st;

	for (int i = 0; i < n; i++)
	{
		CourierMessage *m = &b->msgs[i];
		const char *s = "charge";
		int			release_ms = 0;
		bool		permanent = false;
		const char *error = m->error;

		switch (b->verdict[i])
		{
			case VERDICT_EXPIRED:
				permanent = true;
				error = psprintf("notice older than courier.tms_max_notice_age (%d min): not sent late",
								 courier_tms_max_notice_age_min);
				break;
			case VERDICT_TOO_LONG:
				permanent = true;
				error = psprintf("message of %d bytes in EUC-KR exceeds the LMS limit of %d",
								 euckr_length(m->text), LMS_MAX_BYTES);
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
						unauthorized = true;
						break;
					case COURIER_OUT_REJECTED:
						permanent = true;
						break;
					case COURIER_OUT_RETRY:
						break;
				}
				break;
		}

		ids[i] = Int64GetDatum(b->item_ids[i]);
		status[i] = CStringGetTextDatum(s);
		http[i] = Int32GetDatum(m->http_status);
		pid[i] = CStringGetTextDatum(m->provider_id);
		channel[i] = CStringGetTextDatum(m->channel);
		latency[i] = Float8GetDatum(m->latency_ms);
		release[i] = Int32GetDatum(release_ms);
		if (strcmp(s, "charge") == 0)
		{
			f_ids[nf] = ids[i];
			f_err[nf] = CStringGetTextDatum(error);
			f_state_null[nf] = (b->verdict[i] != VERDICT_SEND || m->code[0] == '\0');
			f_state[nf] = f_state_null[nf] ? (Datum) 0 :
				CStringGetTextDatum(psprintf("tms:%s", m->code));
			f_http_null[nf] = (m->http_status == 0);
			f_http[nf] = Int32GetDatum(m->http_status);
			f_perm[nf] = BoolGetDatum(permanent);
			f_unknown[nf] = BoolGetDatum(m->unknown);
			nf++;
		}
	}

	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(status, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(http, n, INT4OID, 4, true, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(pid, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(channel, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_array(latency, n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[6] = PointerGetDatum(construct_array(release, n, INT4OID, 4, true, TYPALIGN_INT));
	values[7] = Int32GetDatum(MyProcPid);
	courier_execute_kept(&record_plan, record_sql, 8, argtypes, values, NULL,
						 SPI_OK_UPDATE);

	if (nf > 0)
	{
		int			dims[1] = {nf};
		int			lbs[1] = {1};

		courier_charge_items(PointerGetDatum(construct_array(f_ids, nf, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)),
							 PointerGetDatum(construct_array(f_err, nf, TEXTOID, -1, false, TYPALIGN_INT)),
							 PointerGetDatum(construct_md_array(f_state, f_state_null, 1, dims, lbs,
																TEXTOID, -1, false, TYPALIGN_INT)),
							 PointerGetDatum(construct_md_array(f_http, f_http_null, 1, dims, lbs,
																INT4OID, 4, true, TYPALIGN_INT)),
							 PointerGetDatum(construct_array(f_perm, nf, BOOLOID, 1, true, TYPALIGN_CHAR)),
							 PointerGetDatum(construct_array(f_unknown, nf, BOOLOID, 1, true, TYPALIGN_CHAR)));
	}

	if (unauthorized)
	{
		if (SPI_execute("SELECT pg_notify('courier_alerts',"
						" '{\"alert\": \"tms_unauthorized\", \"detail\": "
						"\"the TMS refused courier''s credentials (HTTP 401/403); sending is paused\"}')",
						false, 0) != SPI_OK_SELECT)
			elog(ERROR, "courier: could not raise the alert");
	}

	if (courier_shared != NULL)
	{
		st = &courier_shared->stages[COURIER_STAGE_TMS];
		pg_atomic_fetch_add_u64(&st->batches, 1);
		pg_atomic_fetch_add_u64(&st->items_done, delivered);
		pg_atomic_fetch_add_u64(&st->items_failed, nf);
	}
}
