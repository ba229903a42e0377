/*-------------------------------------------------------------------------
 *
 * dispatch.c
 *		HTTP dispatch of TMS messages with libcurl's multi interface: builds
 *		the requests (bulk JSON, auth and idempotency headers, HMAC
 *		signature), keeps up to courier.tms_concurrency of them in flight
 *		over kept-alive connections, and classifies each answer into one
 *		outcome per message.
 *
 * The wait is on the process latch and curl's sockets together: curl's
 * sockets live in a private epoll set whose descriptor is one event of a
 * WaitEventSet beside the latch and postmaster death, with curl's timer as
 * the timeout.  So SIGTERM, SIGHUP and barriers are seen at once even while
 * requests hang.
 *
 * libcurl's callbacks never palloc nor ereport (a longjmp through libcurl
 * leaves it broken): they write into malloc'd buffers and flags, and
 * everything that may fail is done after curl_multi_* returns.
 *
 * This file knows nothing of the database: no SPI, no transaction.  What
 * the outcomes mean for the queue is tms.c's business; shared limits (rate,
 * breaker) are asked through the hooks.
 *
 * IDENTIFICATION
 *		src/dispatch.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <curl/curl.h>

#include "common/base64.h"
#include "common/hmac.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "courier.h"
#include "dispatch.h"

#define MAX_TRANSFERS 256		/* bounds courier.tms_concurrency */
#define DEFAULT_RETRY_AFTER_MS 1000
#define MAX_RESPONSE_DEPTH 64	/* deeper JSON answers are unreadable */

/* One request in flight: messages idx[0..count) of the batch. */
typedef struct Transfer
{
	CURL	   *easy;
	bool		busy;
	int		   *idx;
	int			count;
	StringInfoData body;
	struct curl_slist *headers;
	char	   *resp;			/* malloc'd: written by a curl callback */
	size_t		resp_len;
	size_t		resp_cap;
	bool		resp_overflow;
	long		retry_after_ms; /* from a Retry-After header, -1 if none */
	TimestampTz started;
	char		errbuf[CURL_ERROR_SIZE];
} Transfer;

static bool initialized = false;
static CURLM *multi = NULL;
static int	epfd = -1;
static long curl_timeout_ms = -1;	/* from curl's timer callback */
static WaitEventSet *wait_set = NULL;
static Transfer transfers[MAX_TRANSFERS];

/*
 * What the requests of one courier_dispatch call allocate (bodies, header
 * lines, signatures): reset at the start of the next call, so a sender's
 * memory does not grow with the requests it sends.
 */
static MemoryContext dispatch_context = NULL;

/* The resource owner HMAC contexts need outside a transaction. */
static ResourceOwner hmac_owner = NULL;

/* The background POST of courier_post_start (the launcher's alerts). */
static CURLM *post_multi = NULL;
static CURL *post_easy = NULL;
static struct curl_slist *post_headers = NULL;
static char *post_body = NULL;
static char post_errbuf[CURL_ERROR_SIZE];

static void dispatch_init(void);
static void dispatch_cleanup(int code, Datum arg);
static int	socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
					  void *socketp);
static int	timer_cb(CURLM *m, long timeout_ms, void *userp);
static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata);
static size_t header_cb(char *buffer, size_t size, size_t nitems, void *userdata);
static int	next_unsent(CourierMessage *msgs, int n, int from);
static Transfer *start_transfer(CourierMessage *msgs, int n, int *next, int bulk);
static void set_common_options(CURL *easy, const char *url,
							   struct curl_slist *headers, char *errbuf);
static bool body_is_json(const char *body, size_t len);
static void finish_transfer(Transfer *t, CURLcode rc, CourierMessage *msgs,
							const CourierDispatchHooks *hooks);
static void drive_curl(bool socket_ready);
static void set_outcome(CourierMessage *m, CourierOutcome outcome, bool unknown,
						int http_status, const char *code, const char *error);
static CourierOutcome apply_results(Transfer *t, CourierMessage *msgs,
									int http_status);
static void add_hmac_headers(Transfer *t);
static void release_transfer(Transfer *t);
static size_t discard_cb(char *ptr, size_t size, size_t nmemb, void *userdata);

/*
 * dispatch_init
 *		Once per process, after fork: libcurl's global state, the multi
 *		handle kept for the life of the process (so connections and DNS
 *		answers are reused across batches), the epoll set and the wait set.
 */
static void
dispatch_init(void)
{
	if (initialized)
		return;
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		elog(ERROR, "courier: curl_global_init failed");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "courier: curl_multi_init failed");
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		elog(ERROR, "courier: epoll_create1 failed: %m");

	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);

	wait_set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, epfd, NULL, NULL);

	for (int i = 0; i < MAX_TRANSFERS; i++)
		transfers[i].easy = NULL;
	dispatch_context = AllocSetContextCreate(TopMemoryContext, "courier dispatch",
											 ALLOCSET_DEFAULT_SIZES);

	on_proc_exit(dispatch_cleanup, (Datum) 0);
	initialized = true;
}

static void
dispatch_cleanup(int code, Datum arg)
{
	for (int i = 0; i < MAX_TRANSFERS; i++)
	{
		if (transfers[i].easy)
		{
			curl_multi_remove_handle(multi, transfers[i].easy);
			curl_easy_cleanup(transfers[i].easy);
		}
	}
	curl_multi_cleanup(multi);
	if (post_multi)
	{
		if (post_easy)
		{
			curl_multi_remove_handle(post_multi, post_easy);
			curl_easy_cleanup(post_easy);
		}
		curl_multi_cleanup(post_multi);
	}
	curl_slist_free_all(post_headers);
	free(post_body);
	curl_global_cleanup();
}

/* curl callbacks: no palloc, no ereport ------------------------------- */

static int
socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = fd;
	if (what == CURL_POLL_REMOVE)
	{
		(void) epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) != 0)
		(void) epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
	return 0;
}

static int
timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	curl_timeout_ms = timeout_ms;
	return 0;
}

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Transfer   *t = (Transfer *) userdata;
	size_t		n = size * nmemb;

	if (t->resp_len + n > (size_t) courier_tms_max_response_bytes)
	{
		t->resp_overflow = true;
		return 0;				/* makes curl fail with CURLE_WRITE_ERROR */
	}
	if (t->resp_len + n + 1 > t->resp_cap)
	{
		size_t		cap = Max(t->resp_cap * 2, t->resp_len + n + 1);
		char	   *p = realloc(t->resp, Max(cap, 4096));

		if (p == NULL)
			return 0;
		t->resp = p;
		t->resp_cap = Max(cap, 4096);
	}
	memcpy(t->resp + t->resp_len, ptr, n);
	t->resp_len += n;
	t->resp[t->resp_len] = '\0';
	return n;
}

static size_t
discard_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	return size * nmemb;
}

/*
 * header_cb
 *		Pick up Retry-After, in seconds or as an HTTP-date.
 */
static size_t
header_cb(char *buffer, size_t size, size_t nitems, void *userdata)
{
	Transfer   *t = (Transfer *) userdata;
	size_t		n = size * nitems;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) && pg_strncasecmp(buffer, name, sizeof(name) - 1) == 0)
	{
		char		value[128];
		size_t		len = Min(n - (sizeof(name) - 1), sizeof(value) - 1);
		char	   *v = value;
		char	   *end;
		long		secs;

		memcpy(value, buffer + sizeof(name) - 1, len);
		value[len] = '\0';
		while (*v == ' ' || *v == '\t')
			v++;
		secs = strtol(v, &end, 10);
		if (end != v && (*end == '\r' || *end == '\n' || *end == '\0'))
			t->retry_after_ms = Max(secs, 0) * 1000;
		else
		{
			time_t		when = curl_getdate(v, NULL);

			if (when > 0)
				t->retry_after_ms = Max((long) (when - time(NULL)), 0) * 1000;
		}
	}
	return n;
}

/* ------------------------------------------------------------------ */

/*
 * courier_dispatch
 *		Send the messages of msgs[0..n) not marked skip, and give each an
 *		outcome.  Returns when every message has one, or (after
 *		hooks->should_stop or a refusal of hooks->admit) when every request
 *		started has finished; messages never sent stay PENDING.
 *
 * Called with no transaction open in workers.  An ERROR (query cancel in
 * a backend's run_once) removes the transfers in flight before going on.
 */
void
courier_dispatch(CourierMessage *msgs, int n, const CourierDispatchHooks *hooks)
{
	int			next;
	int			in_flight = 0;
	bool		stopping = false;
	int			bulk = Max(courier_tms_bulk_size, 1);
	int			concurrency = Min(Max(courier_tms_concurrency, 1), MAX_TRANSFERS);

	dispatch_init();
	MemoryContextReset(dispatch_context);
	curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) concurrency);
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) concurrency);

	for (int i = 0; i < n; i++)
	{
		msgs[i].started = false;
		if (!msgs[i].skip)
			set_outcome(&msgs[i], COURIER_OUT_PENDING, false, 0, "", "not sent");
	}
	next = next_unsent(msgs, n, 0);

	PG_TRY();
	{
		while (next < n || in_flight > 0)
		{
			long		timeout;
			long		rate_wait = -1;
			WaitEvent	event;
			int			nevents;
			CURLMsg    *done;
			int			left;

			/* start what the limits allow */
			while (!stopping && next < n && in_flight < concurrency)
			{
				int			wait = hooks->acquire(Min(bulk, n - next));

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
				if (start_transfer(msgs, n, &next, bulk) == NULL)
					break;
				in_flight++;
			}
			if (in_flight == 0 && (stopping || next >= n))
				break;

			timeout = curl_timeout_ms >= 0 ? curl_timeout_ms : 1000;
			if (rate_wait >= 0)
				timeout = Min(timeout, rate_wait);
			nevents = WaitEventSetWait(wait_set, timeout, &event, 1,
									   PG_WAIT_EXTENSION);
			if (nevents > 0 && (event.events & WL_LATCH_SET))
			{
				ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
				if (hooks->should_stop())
					stopping = true;
			}
			drive_curl(nevents > 0 && (event.events & WL_SOCKET_READABLE));

			while ((done = curl_multi_info_read(multi, &left)) != NULL)
			{
				Transfer   *t;

				if (done->msg != CURLMSG_DONE)
					continue;
				curl_easy_getinfo(done->easy_handle, CURLINFO_PRIVATE, (char **) &t);
				finish_transfer(t, done->data.result, msgs, hooks);
				in_flight--;
			}
			if (!stopping && hooks->should_stop())
				stopping = true;
		}
	}
	PG_CATCH();
	{
		for (int i = 0; i < MAX_TRANSFERS; i++)
		{
			if (transfers[i].busy)
				release_transfer(&transfers[i]);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
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
 * drive_curl
 *		Let curl act on the sockets that are ready, or on its timer.
 */
static void
drive_curl(bool socket_ready)
{
	int			running;

	if (socket_ready)
	{
		struct epoll_event evs[64];
		int			nev = epoll_wait(epfd, evs, lengthof(evs), 0);

		for (int i = 0; i < nev; i++)
		{
			int			mask = 0;

			if (evs[i].events & EPOLLIN)
				mask |= CURL_CSELECT_IN;
			if (evs[i].events & EPOLLOUT)
				mask |= CURL_CSELECT_OUT;
			if (evs[i].events & (EPOLLERR | EPOLLHUP))
				mask |= CURL_CSELECT_ERR;
			curl_multi_socket_action(multi, evs[i].data.fd, mask, &running);
		}
	}
	/* the timer: on expiry, and cheaply always, so no deadline is missed */
	curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

/*
 * start_transfer
 *		Build and add one request for up to bulk messages still to be sent,
 *		from *next on; *next moves past them.  Allocates in dispatch_context.
 */
static Transfer *
start_transfer(CourierMessage *msgs, int n, int *next, int bulk)
{
	Transfer   *t = NULL;
	char	   *idem;
	CourierMessage *first;
	CourierMessage *last;
	MemoryContext old;

	for (int i = 0; i < MAX_TRANSFERS; i++)
	{
		if (!transfers[i].busy)
		{
			t = &transfers[i];
			break;
		}
	}
	if (t == NULL)
		return NULL;

	if (t->easy == NULL)
		t->easy = curl_easy_init();
	else
		curl_easy_reset(t->easy);
	if (t->easy == NULL)
		elog(ERROR, "courier: curl_easy_init failed");

	old = MemoryContextSwitchTo(dispatch_context);
	t->idx = palloc(sizeof(int) * bulk);
	t->count = 0;
	for (int i = *next; i < n && t->count < bulk; i = next_unsent(msgs, n, i + 1))
	{
		t->idx[t->count++] = i;
		msgs[i].started = true;
		*next = i + 1;
	}
	*next = next_unsent(msgs, n, *next);
	first = &msgs[t->idx[0]];
	last = &msgs[t->idx[t->count - 1]];

	t->busy = true;
	t->resp = NULL;
	t->resp_len = 0;
	t->resp_cap = 0;
	t->resp_overflow = false;
	t->retry_after_ms = -1;
	t->headers = NULL;
	t->errbuf[0] = '\0';

	/* body: {"messages": [{"id": ..., "to": ..., ...}, ...]} */
	initStringInfo(&t->body);
	appendStringInfoString(&t->body, "{\"messages\": [");
	for (int k = 0; k < t->count; k++)
	{
		CourierMessage *m = &msgs[t->idx[k]];

		if (k > 0)
			appendStringInfoString(&t->body, ", ");
		appendStringInfoString(&t->body, "{\"id\": ");
		escape_json(&t->body, m->key);
		appendStringInfoString(&t->body, ", \"to\": ");
		escape_json(&t->body, m->to);
		appendStringInfoString(&t->body, ", \"channel\": ");
		escape_json(&t->body, m->channel);
		if (m->subject)
		{
			appendStringInfoString(&t->body, ", \"subject\": ");
			escape_json(&t->body, m->subject);
		}
		appendStringInfoString(&t->body, ", \"text\": ");
		escape_json(&t->body, m->text);
		appendStringInfoChar(&t->body, '}');
	}
	appendStringInfoString(&t->body, "]}");

	/*
	 * The request's idempotency key: the message's own for one message;
	 * for a bulk request the first and last keys and the count, which are
	 * the same whenever the same messages are sent together again.
	 */
	if (t->count == 1)
		idem = psprintf("%s: %s", courier_tms_idempotency_header, first->key);
	else
		idem = psprintf("%s: bulk-%s-%s-%d", courier_tms_idempotency_header,
						first->key, last->key, t->count);
	t->headers = curl_slist_append(t->headers, "Content-Type: application/json");
	t->headers = curl_slist_append(t->headers, "Expect:");
	t->headers = curl_slist_append(t->headers, idem);
	if (courier_tms_auth_header && courier_tms_auth_header[0])
		t->headers = curl_slist_append(t->headers, courier_tms_auth_header);
	if (courier_tms_hmac_access_key && courier_tms_hmac_access_key[0])
		add_hmac_headers(t);

	set_common_options(t->easy, courier_tms_url, t->headers, t->errbuf);
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body.data);
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long) t->body.len);
	curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
	curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPALIVE, 1L);

	t->started = GetCurrentTimestamp();
	MemoryContextSwitchTo(old);

	if (curl_multi_add_handle(multi, t->easy) != CURLM_OK)
	{
		release_transfer(t);
		elog(ERROR, "courier: curl_multi_add_handle failed");
	}
	return t;
}

/*
 * set_common_options
 *		The options every courier request shares, the TMS's and the alerts':
 *		POST to url over http(s) only, the timeouts, TLS verification (on
 *		unless courier.tms_tls_verify is off), no signals.
 */
static void
set_common_options(CURL *easy, const char *url, struct curl_slist *headers,
				   char *errbuf)
{
	curl_easy_setopt(easy, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) courier_tms_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
					 (long) courier_tms_connect_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, courier_tms_tls_verify ? 1L : 0L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, courier_tms_tls_verify ? 2L : 0L);
}

/*
 * add_hmac_headers
 *		Sign the request the way Naver Cloud SENS does: a millisecond
 *		timestamp, the access key, and base64(HMAC-SHA256(secret,
 *		"POST <path>\n<timestamp>\n<access key>")).  Computed per attempt,
 *		since the timestamp is part of what is signed.  Its strings live in
 *		dispatch_context (curl copies the header lines it is given).
 */
static void
add_hmac_headers(Transfer *t)
{
	CURLU	   *u = curl_url();
	char	   *path = NULL;
	char	   *query = NULL;
	char	   *ts;
	char	   *to_sign;
	uint8		mac[32];
	char		b64[64];
	int			b64len;
	pg_hmac_ctx *ctx;
	bool		ok;

	if (curl_url_set(u, CURLUPART_URL, courier_tms_url, 0) == CURLUE_OK)
	{
		curl_url_get(u, CURLUPART_PATH, &path, 0);
		curl_url_get(u, CURLUPART_QUERY, &query, 0);
	}
	ts = psprintf(INT64_FORMAT, (int64) (GetCurrentTimestamp() / 1000 +
										 (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000));
	to_sign = psprintf("POST %s%s%s\n%s\n%s", path ? path : "/",
					   query ? "?" : "", query ? query : "",
					   ts, courier_tms_hmac_access_key);

	/*
	 * With OpenSSL, PostgreSQL registers an HMAC context with the current
	 * resource owner, and a worker sends with no transaction (so no owner)
	 * open: lend it one of its own for the few calls the signature takes.
	 */
	if (CurrentResourceOwner == NULL)
	{
		if (hmac_owner == NULL)
			hmac_owner = ResourceOwnerCreate(NULL, "courier hmac");
		CurrentResourceOwner = hmac_owner;
	}
	ctx = pg_hmac_create(PG_SHA256);
	ok = (ctx != NULL &&
		  pg_hmac_init(ctx, (const uint8 *) courier_tms_hmac_secret,
					   strlen(courier_tms_hmac_secret)) == 0 &&
		  pg_hmac_update(ctx, (const uint8 *) to_sign, strlen(to_sign)) == 0 &&
		  pg_hmac_final(ctx, mac, sizeof(mac)) == 0);
	pg_hmac_free(ctx);
	if (CurrentResourceOwner == hmac_owner)
		CurrentResourceOwner = NULL;
	curl_free(path);
	curl_free(query);
	curl_url_cleanup(u);
	if (!ok)
		elog(ERROR, "courier: could not compute the HMAC signature");
	b64len = pg_b64_encode((const char *) mac, sizeof(mac), b64, sizeof(b64) - 1);
	b64[Max(b64len, 0)] = '\0';

	t->headers = curl_slist_append(t->headers,
								   psprintf("x-ncp-apigw-timestamp: %s", ts));
	t->headers = curl_slist_append(t->headers,
								   psprintf("x-ncp-iam-access-key: %s",
											courier_tms_hmac_access_key));
	t->headers = curl_slist_append(t->headers,
								   psprintf("x-ncp-apigw-signature-v2: %s", b64));
}

static void
release_transfer(Transfer *t)
{
	curl_multi_remove_handle(multi, t->easy);
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	t->body.data = NULL;		/* in dispatch_context */
	free(t->resp);
	t->resp = NULL;
	t->busy = false;
}

static void
set_outcome(CourierMessage *m, CourierOutcome outcome, bool unknown,
			int http_status, const char *code, const char *error)
{
	m->outcome = outcome;
	m->unknown = unknown;
	m->http_status = http_status;
	strlcpy(m->code, code, sizeof(m->code));
	strlcpy(m->error, error, sizeof(m->error));
	if (outcome != COURIER_OUT_DELIVERED)
		m->provider_id[0] = '\0';
}

/*
 * finish_transfer
 *		Classify a finished request and give its messages their outcomes.
 *
 *	transport error before anything was sent		RETRY
 *	timeout / reset / no answer after sending		RETRY, unknown
 *	2xx												apply_results (the 2xx rule)
 *	429, 503										THROTTLED (Retry-After)
 *	401, 403										UNAUTHORIZED
 *	408, other 5xx, 1xx, 3xx						RETRY
 *	other 4xx										REJECTED
 */
static void
finish_transfer(Transfer *t, CURLcode rc, CourierMessage *msgs,
				const CourierDispatchHooks *hooks)
{
	long		http = 0;
	curl_off_t	sent = 0;
	double		latency;
	CourierOutcome klass;
	bool		unknown = false;
	char		error[256];
	CourierMessage *first = &msgs[t->idx[0]];

	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &http);
	curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &sent);
	latency = (double) (GetCurrentTimestamp() - t->started) / 1000.0;

	if (rc != CURLE_OK)
	{
		bool		answered_2xx = (http >= 200 && http < 300);

		klass = COURIER_OUT_RETRY;
		unknown = (sent > 0) || answered_2xx;
		if (t->resp_overflow)
			snprintf(error, sizeof(error),
					 "response larger than courier.tms_max_response_size (%d bytes)",
					 courier_tms_max_response_bytes);
		else
			snprintf(error, sizeof(error), "%s%s%s", curl_easy_strerror(rc),
					 t->errbuf[0] ? ": " : "", t->errbuf);
		for (int k = 0; k < t->count; k++)
			set_outcome(&msgs[t->idx[k]], klass, unknown, (int) http,
						curl_easy_strerror(rc), error);
	}
	else if (http >= 200 && http < 300)
	{
		klass = apply_results(t, msgs, (int) http);
	}
	else
	{
		const char *code;

		snprintf(error, sizeof(error), "TMS answered HTTP %ld", http);
		if (http == 429 || http == 503)
		{
			klass = COURIER_OUT_THROTTLED;
			code = "throttled";
		}
		else if (http == 401 || http == 403)
		{
			klass = COURIER_OUT_UNAUTHORIZED;
			code = "unauthorized";
		}
		else if (http == 408 || http >= 500 || http < 200 || (http >= 300 && http < 400))
		{
			klass = COURIER_OUT_RETRY;
			code = "http_error";
		}
		else
		{
			klass = COURIER_OUT_REJECTED;
			code = "http_rejected";
		}
		for (int k = 0; k < t->count; k++)
			set_outcome(&msgs[t->idx[k]], klass, false, (int) http, code, error);
	}

	for (int k = 0; k < t->count; k++)
	{
		CourierMessage *m = &msgs[t->idx[k]];

		m->latency_ms = latency;
		m->retry_after_ms = t->retry_after_ms >= 0 ?
			(int) Min(t->retry_after_ms, 3600000L) : DEFAULT_RETRY_AFTER_MS;
	}
	hooks->request_done(klass, first->retry_after_ms);
	release_transfer(t);
}

/*
 * apply_results
 *		The 2xx rule: a 2xx answer accepts every message it says nothing
 *		against.
 *	- An empty body, or a JSON object without "results": the request was
 *	  accepted as a whole; every message DELIVERED.
 *	- {"results": [{"id", "status", "code", "provider_id"}, ...]}: per
 *	  message by its id: "accepted" DELIVERED, "rejected" REJECTED (a
 *	  permanent failure of that message), any other status (or none) RETRY
 *	  with its outcome unknown (sent again under the same idempotency key);
 *	  a message without an entry DELIVERED.
 *	- Anything else (not JSON, JSON that is not an object, "results" that
 *	  is not an array): the answer is unreadable; every message RETRY,
 *	  outcome unknown.
 *	Returns the request's class for the shared limits: RETRY when the body
 *	was unreadable, else DELIVERED.
 *
 * The body is checked by the JSON parser that reports instead of throwing
 * before it is converted, so no error is raised (and none caught) here.
 */
static CourierOutcome
apply_results(Transfer *t, CourierMessage *msgs, int http_status)
{
	Jsonb	   *jb;
	JsonbValue *results;

	for (int k = 0; k < t->count; k++)
		set_outcome(&msgs[t->idx[k]], COURIER_OUT_DELIVERED, false, http_status,
					"accepted", "");

	if (t->resp_len == 0)
		return COURIER_OUT_DELIVERED;	/* no body: accepted as a whole */

	if (!body_is_json(t->resp, t->resp_len) ||
		(jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(t->resp)))) == NULL ||
		JB_ROOT_IS_SCALAR(jb) || !JB_ROOT_IS_OBJECT(jb))
	{
		for (int k = 0; k < t->count; k++)
			set_outcome(&msgs[t->idx[k]], COURIER_OUT_RETRY, true, http_status,
						"malformed_response", "TMS answered 2xx with an unreadable body");
		return COURIER_OUT_RETRY;
	}
	results = getKeyJsonValueFromContainer(&jb->root, "results", 7, NULL);
	if (results == NULL)
		return COURIER_OUT_DELIVERED;	/* no per-message verdicts */
	if (results->type != jbvBinary || !JsonContainerIsArray(results->val.binary.data))
	{
		for (int k = 0; k < t->count; k++)
			set_outcome(&msgs[t->idx[k]], COURIER_OUT_RETRY, true, http_status,
						"malformed_response", "TMS answered 2xx with \"results\" that is not an array");
		return COURIER_OUT_RETRY;
	}

	for (uint32 r = 0; r < JsonContainerSize(results->val.binary.data); r++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(results->val.binary.data, r);
		JsonbValue *id,
				   *status,
				   *code,
				   *pid;
		char	   *idstr;
		char	   *st;
		char	   *c;
		int			match = -1;

		if (e == NULL || e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
			continue;
		id = getKeyJsonValueFromContainer(e->val.binary.data, "id", 2, NULL);
		if (id == NULL || id->type != jbvString)
			continue;
		idstr = pnstrdup(id->val.string.val, id->val.string.len);

		/* results usually come in request order: try that first */
		if ((int) r < t->count && strcmp(msgs[t->idx[r]].key, idstr) == 0)
			match = t->idx[r];
		for (int k = 0; match < 0 && k < t->count; k++)
		{
			if (strcmp(msgs[t->idx[k]].key, idstr) == 0)
				match = t->idx[k];
		}
		if (match < 0)
			continue;

		status = getKeyJsonValueFromContainer(e->val.binary.data, "status", 6, NULL);
		code = getKeyJsonValueFromContainer(e->val.binary.data, "code", 4, NULL);
		pid = getKeyJsonValueFromContainer(e->val.binary.data, "provider_id", 11, NULL);
		st = (status && status->type == jbvString) ?
			pnstrdup(status->val.string.val, status->val.string.len) : pstrdup("");
		c = (code && code->type == jbvString) ?
			pnstrdup(code->val.string.val, code->val.string.len) : NULL;

		if (strcmp(st, "accepted") == 0)
		{
			if (pid && pid->type == jbvString)
			{
				int			len = Min(pid->val.string.len,
									  (int) sizeof(msgs[match].provider_id) - 1);

				memcpy(msgs[match].provider_id, pid->val.string.val, len);
				msgs[match].provider_id[len] = '\0';
			}
		}
		else if (strcmp(st, "rejected") == 0)
			set_outcome(&msgs[match], COURIER_OUT_REJECTED, false, http_status,
						c ? c : "rejected",
						psprintf("TMS rejected the message: %s", c ? c : "rejected"));
		else
			set_outcome(&msgs[match], COURIER_OUT_RETRY, true, http_status,
						c ? c : "unknown_status",
						psprintf("TMS answered status \"%s\" for the message: neither accepted nor rejected",
								 st));
	}
	return COURIER_OUT_DELIVERED;
}

/*
 * body_is_json
 *		Is the body well-formed JSON that jsonb_in will take without an
 *		error?  pg_parse_json reports instead of throwing; the nesting is
 *		bounded first, since the parser recurses (and a stack-depth check
 *		would throw).
 */
static bool
body_is_json(const char *body, size_t len)
{
	JsonLexContext *lex;
	int			depth = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		char		ch = body[i];

		if (in_string)
		{
			if (ch == '\\')
				i++;
			else if (ch == '"')
				in_string = false;
		}
		else if (ch == '"')
			in_string = true;
		else if (ch == '{' || ch == '[')
		{
			if (++depth > MAX_RESPONSE_DEPTH)
				return false;
		}
		else if (ch == '}' || ch == ']')
			depth--;
	}
	if (strlen(body) != len)
		return false;			/* a NUL inside */
	lex = makeJsonLexContextCstringLen(unconstify(char *, body), (int) len,
									   GetDatabaseEncoding(), true);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/*
 * courier_post_start
 *		Start POSTing one JSON document (an alert) to url in the background:
 *		the caller polls with courier_post_poll from its loop, and is never
 *		held up by a slow or silent receiver.  Returns false when a POST is
 *		still in progress or could not be started.  The TMS's TLS and
 *		timeout settings apply.
 */
bool
courier_post_start(const char *url, const char *json)
{
	int			running;

	dispatch_init();
	if (post_easy != NULL)
		return false;
	if (post_multi == NULL && (post_multi = curl_multi_init()) == NULL)
		return false;
	if ((post_easy = curl_easy_init()) == NULL)
		return false;
	free(post_body);
	post_body = strdup(json);
	if (post_body == NULL)
	{
		curl_easy_cleanup(post_easy);
		post_easy = NULL;
		return false;
	}
	if (post_headers == NULL)
		post_headers = curl_slist_append(NULL, "Content-Type: application/json");
	post_errbuf[0] = '\0';
	set_common_options(post_easy, url, post_headers, post_errbuf);
	curl_easy_setopt(post_easy, CURLOPT_POSTFIELDS, post_body);
	curl_easy_setopt(post_easy, CURLOPT_WRITEFUNCTION, discard_cb);
	curl_multi_add_handle(post_multi, post_easy);
	curl_multi_perform(post_multi, &running);
	return true;
}

/*
 * courier_post_poll
 *		Drive the POST of courier_post_start without waiting.  Returns true
 *		once it finished: *http_status is its HTTP status (0 when no answer
 *		came; error then says why).  False while it is still going.
 */
bool
courier_post_poll(int *http_status, char *error, size_t errlen)
{
	int			running;
	int			left;
	CURLMsg    *done;
	bool		finished = false;

	if (post_easy == NULL)
		return false;
	curl_multi_perform(post_multi, &running);
	while ((done = curl_multi_info_read(post_multi, &left)) != NULL)
	{
		long		http = 0;

		if (done->msg != CURLMSG_DONE)
			continue;
		finished = true;
		error[0] = '\0';
		if (done->data.result == CURLE_OK)
		{
			curl_easy_getinfo(post_easy, CURLINFO_RESPONSE_CODE, &http);
			if (http < 200 || http >= 300)
				snprintf(error, errlen, "alert URL answered HTTP %ld", http);
		}
		else
			snprintf(error, errlen, "%s%s%s", curl_easy_strerror(done->data.result),
					 post_errbuf[0] ? ": " : "", post_errbuf);
		*http_status = (int) http;
	}
	if (finished)
	{
		curl_multi_remove_handle(post_multi, post_easy);
		curl_easy_cleanup(post_easy);
		post_easy = NULL;
	}
	return finished;
}
