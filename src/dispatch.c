/*-------------------------------------------------------------------------
 *
 * dispatch.c
 *		Sends a batch of messages (TMS notices, or a subscriber's events) and
 *		gives each one outcome: groups the messages into requests in the
 *		dialect the caller names (provider.h), as many as the dialect lets
 *		share a request, keeps up to the caller's concurrency (courier.
 *		tms_concurrency for the TMS) of them in flight through the HTTP
 *		transport (http.c), and asks the shared limits before each request
 *		and tells them after.
 *
 * This file knows neither HTTP nor any provider: the transport moves the
 * bytes, the dialect writes the requests and reads the answers.  Nor does
 * it know the database: no SPI, no transaction.  What the outcomes mean
 * for the queue is tms.c's business; shared limits (rate, breaker), the
 * close rule and stopping are asked through the caller's hooks.  Two things
 * it decides itself.  A request carries the messages of one trace only
 * (W3C trace context, trace.c), and its traceparent header names that
 * trace with a span id of its own, whatever the dialect; messages without
 * a trace travel together, with no such header.  And a background worker
 * whose configuration is about to be reloaded starts no further request
 * (reload_pending), so that a changed provider, URL or credentials apply
 * from the next request on, not from the next batch.
 *
 * IDENTIFICATION
 *		src/dispatch.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "utils/memutils.h"

#include "courier.h"
#include "dispatch.h"
#include "http.h"
#include "provider.h"

#define DEFAULT_RETRY_AFTER_MS 1000
#define MAX_RETRY_AFTER_MS 3600000L

/*
 * Messages a request looks past, after one the dialect would not let join
 * it, for more that may: bounds the work of grouping when few can share a
 * request (a dialect whose request carries one text).
 */
#define JOIN_WINDOW 1000

/*
 * What the requests of one courier_dispatch call allocate (bodies, header
 * lines, signatures): reset at the start of the next call, so a sender's
 * memory does not grow with the requests it sends.
 */
static MemoryContext dispatch_context = NULL;

static bool reload_pending(void);
static int	next_unsent(CourierMessage *msgs, int n, int from);
static int	hold_unsendable(const CourierProvider *provider,
							CourierMessage *msgs, int n);
static int	collect_request(const CourierProvider *provider,
							CourierMessage *msgs, int n, int from, int bulk,
							int *idx);
static void start_request(const CourierProvider *provider, CourierMessage *msgs,
						  int n, int *next, int bulk, int timeout_ms);
static void finish_request(const CourierProvider *provider,
						   const CourierHttpResult *res, CourierMessage *msgs,
						   const CourierDispatchHooks *hooks);

/*
 * courier_dispatch
 *		Send the messages of msgs[0..n) not marked skip, and give each an
 *		outcome, in the dialect provider (the one courier.tms_provider
 *		names, or its fallback_dialect for courier's own SMS fallbacks).  Returns when
 *		every message has one, or (after hooks->should_stop, a refusal of
 *		hooks->admit, or a configuration reload pending in a worker) when
 *		every request started has finished; messages never sent stay
 *		PENDING.  A message the dialect cannot send as courier is
 *		configured is not sent: it gets the configuration outcome, and the
 *		shared limits hear of it once, as of a request refused for our
 *		configuration (the breaker opens).
 *
 * Called with no transaction open in workers.  An ERROR (query cancel in
 * a backend's run_once) drops the requests in flight before going on.
 */
void
courier_dispatch(const CourierProvider *provider, CourierMessage *msgs, int n,
				 const CourierDispatchSizes *sizes,
				 const CourierDispatchHooks *hooks)
{
	int			next;
	int			in_flight = 0;
	bool		stopping = false;
	int			bulk;
	int			concurrency;

	bulk = Min(Max(sizes->bulk_size, 1), provider->max_per_request);
	concurrency = courier_http_prepare(sizes->concurrency);

	if (dispatch_context == NULL)
		dispatch_context = AllocSetContextCreate(TopMemoryContext, "courier dispatch",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(dispatch_context);

	for (int i = 0; i < n; i++)
	{
		if (msgs[i].skip)
			continue;
		msgs[i].started = false;
		courier_set_outcome(&msgs[i], COURIER_OUT_PENDING, false, 0, "", "not sent");
	}
	if (hold_unsendable(provider, msgs, n) > 0)
		hooks->request_done(COURIER_OUT_UNAUTHORIZED, 0, -1.0);
	next = next_unsent(msgs, n, 0);

	PG_TRY();
	{
		while (next < n || in_flight > 0)
		{
			long		rate_wait = -1;
			CourierHttpResult res;

			if (!stopping && reload_pending())
				stopping = true;

			/* start what the limits allow */
			while (!stopping && next < n && in_flight < concurrency)
			{
				int			wait = hooks->acquire(Max(collect_request(provider, msgs, n,
																	  next, bulk, NULL), 1));

				if (wait > 0)
				{
					rate_wait = wait;
					break;
				}
				if (!hooks->admit())
				{
					stopping = true;
					break;
				}
				next = next_unsent(msgs, n, next);
				if (next >= n)
					break;
				start_request(provider, msgs, n, &next, bulk, sizes->timeout_ms);
				in_flight++;
			}
			if (in_flight == 0 && (stopping || next >= n))
				break;

			if (in_flight > 0 && hooks->while_waiting != NULL)
				hooks->while_waiting(stopping || next >= n);
			if (courier_http_wait(rate_wait) && hooks->should_stop())
				stopping = true;
			while (courier_http_next_done(&res))
			{
				finish_request(provider, &res, msgs, hooks);
				courier_http_release(&res);
				in_flight--;
			}
			if (!stopping && hooks->should_stop())
				stopping = true;
		}
	}
	PG_CATCH();
	{
		courier_http_abort_all();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * reload_pending
 *		Has a background worker been told to reload its configuration
 *		(SIGHUP), which it does at its next loop turn?  Then the dialect
 *		chosen for this batch, its URL or its credentials may be about to
 *		change: the dispatcher starts no further request, the requests in
 *		flight finish, and the unsent rest of the batch is released without
 *		an attempt, to go out under the new configuration.  (Sending on
 *		would carry the old provider to the end of a batch of up to
 *		courier.batch_size notices.)  A backend's run_once reloads only
 *		after its statement, and is left to finish.
 */
static bool
reload_pending(void)
{
	return IsBackgroundWorker && ConfigReloadPending;
}

/*
 * next_unsent
 *		The first message from index from on that is still to be sent: not
 *		skipped, not started, and given no outcome by the admit hook.
 */
static int
next_unsent(CourierMessage *msgs, int n, int from)
{
	while (from < n &&
		   (msgs[from].skip || msgs[from].started ||
			msgs[from].outcome != COURIER_OUT_PENDING))
		from++;
	return from;
}

/*
 * hold_unsendable
 *		Give every message the dialect cannot send as courier is configured
 *		(provider->unsendable) the configuration outcome, so that it is not
 *		sent, and log why (the tms stage records no reason for a message it
 *		releases).  Returns how many there are.
 */
static int
hold_unsendable(const CourierProvider *provider, CourierMessage *msgs, int n)
{
	int			held = 0;

	if (provider->unsendable == NULL)
		return 0;
	for (int i = 0; i < n; i++)
	{
		const char *why;

		if (msgs[i].skip)
			continue;
		why = provider->unsendable(&msgs[i]);
		if (why == NULL)
			continue;
		courier_set_outcome(&msgs[i], COURIER_OUT_UNAUTHORIZED, false, 0,
							"configuration", why);
		courier_note_config(provider->name, "configuration", why);
		held++;
	}
	return held;
}

/*
 * collect_request
 *		The messages the next request would carry: from index from on, up
 *		to bulk messages still to be sent that are of the first one's trace
 *		and that the dialect lets travel with it (provider->joinable),
 *		looking at most JOIN_WINDOW messages past those it leaves for a
 *		later request.  Fills idx, when not NULL, and returns how many.
 */
static int
collect_request(const CourierProvider *provider, CourierMessage *msgs, int n,
				int from, int bulk, int *idx)
{
	int			count = 0;
	int			first = -1;
	int			passed = 0;

	for (int i = next_unsent(msgs, n, from); i < n && count < bulk;
		 i = next_unsent(msgs, n, i + 1))
	{
		if (first >= 0 &&
			(!courier_same_trace(msgs[first].traceparent, msgs[i].traceparent) ||
			 (provider->joinable != NULL &&
			  !provider->joinable(&msgs[first], &msgs[i]))))
		{
			if (++passed >= JOIN_WINDOW)
				break;
			continue;
		}
		if (first < 0)
			first = i;
		if (idx != NULL)
			idx[count] = i;
		count++;
	}
	return count;
}

/*
 * start_request
 *		Start one request for up to bulk messages still to be sent, from
 *		*next on (collect_request); *next moves to the first message still
 *		to be sent.  The dialect builds it and signs it (each start is an
 *		attempt), in dispatch_context.  Messages of a trace make it carry a
 *		traceparent header: their trace id, a new span id for every
 *		request (a retry is a span of its own), their flags.
 */
static void
start_request(const CourierProvider *provider, CourierMessage *msgs, int n,
			  int *next, int bulk, int timeout_ms)
{
	MemoryContext old = MemoryContextSwitchTo(dispatch_context);
	CourierRequest *req = palloc0(sizeof(CourierRequest));

	req->idx = palloc(sizeof(int) * bulk);
	req->count = collect_request(provider, msgs, n, *next, bulk, req->idx);
	for (int k = 0; k < req->count; k++)
		msgs[req->idx[k]].started = true;
	*next = next_unsent(msgs, n, *next);

	provider->build(req, msgs);
	if (msgs[req->idx[0]].traceparent != NULL)
		req->headers = lappend(req->headers,
							   courier_traceparent_header(msgs[req->idx[0]].traceparent));
	if (provider->sign)
		provider->sign(req);
	/* without an idempotency key, libcurl must not resend it by itself */
	(void) courier_http_start(req->url, req->headers, req->body.data,
							  (size_t) req->body.len,
							  provider->looks_up_before_resend, timeout_ms, req);
	MemoryContextSwitchTo(old);
}

/*
 * finish_request
 *		Give the messages of a finished request their outcomes, and tell the
 *		shared limits its class.
 *
 *	no answer before anything was sent			RETRY
 *	timeout / reset / no full answer after		RETRY, unknown
 *	an answer									the dialect's read_answer
 */
static void
finish_request(const CourierProvider *provider, const CourierHttpResult *res,
			   CourierMessage *msgs, const CourierDispatchHooks *hooks)
{
	const CourierRequest *req = (const CourierRequest *) res->arg;
	int			retry_after_ms = res->retry_after_ms >= 0 ?
		(int) Min(res->retry_after_ms, MAX_RETRY_AFTER_MS) : DEFAULT_RETRY_AFTER_MS;
	CourierOutcome klass;

	if (!res->completed)
	{
		bool		unknown = res->sent || (res->status >= 200 && res->status < 300);

		klass = COURIER_OUT_RETRY;
		courier_set_request_outcome(req, msgs, klass, unknown, res->status,
									res->error_code, res->error);
	}
	else
		klass = provider->read_answer(req, res, msgs);

	for (int k = 0; k < req->count; k++)
	{
		CourierMessage *m = &msgs[req->idx[k]];

		m->latency_ms = res->latency_ms;
		m->retry_after_ms = retry_after_ms;
	}
	hooks->request_done(klass, retry_after_ms, res->latency_ms);
}
