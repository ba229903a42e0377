/*-------------------------------------------------------------------------
 *
 * http.c
 *		The HTTP transport, on libcurl's multi interface: POSTs up to
 *		COURIER_HTTP_MAX_IN_FLIGHT requests at once over kept-alive
 *		connections, waits for them beside the process latch, and hands back
 *		each finished one (HTTP status, body, Retry-After, or why it failed).
 *		Also one POST in the background of a loop, for the launcher's alerts.
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
 * This file is the only one that knows libcurl.  It knows nothing of
 * messages, providers or the database: what a request carries and what an
 * answer means are the caller's (dispatch.c and the provider dialects).
 * The courier.tms_* timeouts, TLS verification and response size apply to
 * every request.
 *
 * IDENTIFICATION
 *		src/http.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "courier.h"
#include "http.h"

/* One request in flight. */
typedef struct Transfer
{
	CURL	   *easy;
	bool		busy;
	void	   *arg;			/* the caller's */
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
static Transfer transfers[COURIER_HTTP_MAX_IN_FLIGHT];

/* The background POST of courier_http_post_start. */
static CURLM *post_multi = NULL;
static CURL *post_easy = NULL;
static struct curl_slist *post_headers = NULL;
static char *post_body = NULL;
static char post_errbuf[CURL_ERROR_SIZE];

static void http_init(void);
static void http_cleanup(int code, Datum arg);
static int	socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
					  void *socketp);
static int	timer_cb(CURLM *m, long timeout_ms, void *userp);
static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata);
static size_t discard_cb(char *ptr, size_t size, size_t nmemb, void *userdata);
static size_t header_cb(char *buffer, size_t size, size_t nitems, void *userdata);
static struct curl_slist *header_lines(List *headers);
static void set_common_options(CURL *easy, const char *url,
							   struct curl_slist *headers, char *errbuf);
static void drive_curl(bool socket_ready);
static void release_transfer(Transfer *t);

/*
 * http_init
 *		Once per process, after fork: libcurl's global state, the multi
 *		handle kept for the life of the process (so connections and DNS
 *		answers are reused across batches), the epoll set and the wait set.
 */
static void
http_init(void)
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

	for (int i = 0; i < COURIER_HTTP_MAX_IN_FLIGHT; i++)
		transfers[i].easy = NULL;

	on_proc_exit(http_cleanup, (Datum) 0);
	initialized = true;
}

static void
http_cleanup(int code, Datum arg)
{
	for (int i = 0; i < COURIER_HTTP_MAX_IN_FLIGHT; i++)
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
 * courier_http_prepare
 *		Ready the transport for a round of requests, at most max_in_flight
 *		of them at once over as many connections.  Returns that bound,
 *		within [1, COURIER_HTTP_MAX_IN_FLIGHT]: the caller keeps no more
 *		requests in flight than this.
 */
int
courier_http_prepare(int max_in_flight)
{
	int			n = Min(Max(max_in_flight, 1), COURIER_HTTP_MAX_IN_FLIGHT);

	http_init();
	curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) n);
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) n);
	return n;
}

/*
 * courier_http_start
 *		Start POSTing body (len bytes) to url with the given header lines
 *		("Name: value", a List of C strings, copied), or a GET when body is
 *		NULL (a provider's query API).  body is not copied: it must stay
 *		until the request is released.  arg comes back in the request's
 *		result.  Returns the request's handle.
 *
 * at_most_once: the request must reach the server at most once (a send
 * to a provider without an idempotency key).  libcurl resends a request
 * by itself when a reused connection closes before any byte of the
 * answer, which is also what a server that took the request and died
 * looks like; such a request therefore goes over a connection of its own,
 * closed after it.  The rest reuse connections.
 *
 * At most courier_http_prepare's bound of requests are in flight; asking
 * for more is an internal error.
 */
int
courier_http_start(const char *url, List *headers, const char *body,
				   size_t len, bool at_most_once, int timeout_ms, void *arg)
{
	Transfer   *t = NULL;

	for (int i = 0; i < COURIER_HTTP_MAX_IN_FLIGHT; i++)
	{
		if (!transfers[i].busy)
		{
			t = &transfers[i];
			break;
		}
	}
	if (t == NULL)
		elog(ERROR, "courier: more than %d HTTP requests in flight",
			 COURIER_HTTP_MAX_IN_FLIGHT);

	if (t->easy == NULL)
		t->easy = curl_easy_init();
	else
		curl_easy_reset(t->easy);
	if (t->easy == NULL)
		elog(ERROR, "courier: curl_easy_init failed");

	t->arg = arg;
	t->resp = NULL;
	t->resp_len = 0;
	t->resp_cap = 0;
	t->resp_overflow = false;
	t->retry_after_ms = -1;
	t->errbuf[0] = '\0';
	t->headers = header_lines(headers);
	t->busy = true;

	set_common_options(t->easy, url, t->headers, t->errbuf);
	curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
	if (body != NULL)
	{
		curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long) len);
	}
	else
		curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
	if (at_most_once)
	{
		curl_easy_setopt(t->easy, CURLOPT_FRESH_CONNECT, 1L);
		curl_easy_setopt(t->easy, CURLOPT_FORBID_REUSE, 1L);
	}
	curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
	curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPALIVE, 1L);

	t->started = GetCurrentTimestamp();
	if (curl_multi_add_handle(multi, t->easy) != CURLM_OK)
	{
		release_transfer(t);
		elog(ERROR, "courier: curl_multi_add_handle failed");
	}
	return (int) (t - transfers);
}

/*
 * header_lines
 *		curl's list of the caller's header lines, and "Expect:" so that a
 *		large body is sent without waiting for a 100-continue.
 */
static struct curl_slist *
header_lines(List *headers)
{
	struct curl_slist *list = NULL;
	ListCell   *lc;

	foreach(lc, headers)
		list = curl_slist_append(list, (const char *) lfirst(lc));
	return curl_slist_append(list, "Expect:");
}

/*
 * set_common_options
 *		The options every courier request shares, the TMS's, the
 *		subscribers' and the alerts': POST to url over http(s) only, the
 *		timeouts (courier.tms_timeout; courier_http_start sets the caller's),
 *		TLS verification (on unless courier.tms_tls_verify is off), no
 *		signals.
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
 * courier_http_wait
 *		Wait until a socket is ready, curl's timer runs out, max_wait_ms
 *		passes (-1: no bound of the caller's) or the latch is set, and let
 *		curl act.  Returns true when the latch was set: interrupts have then
 *		been processed, and the caller should look at its own flags.  The
 *		requests that finished are then read with courier_http_next_done.
 */
bool
courier_http_wait(long max_wait_ms)
{
	long		timeout = curl_timeout_ms >= 0 ? curl_timeout_ms : 1000;
	WaitEvent	event;
	int			nevents;
	bool		woken = false;

	if (max_wait_ms >= 0)
		timeout = Min(timeout, max_wait_ms);
	nevents = WaitEventSetWait(wait_set, timeout, &event, 1, PG_WAIT_EXTENSION);
	if (nevents > 0 && (event.events & WL_LATCH_SET))
	{
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		woken = true;
	}
	drive_curl(nevents > 0 && (event.events & WL_SOCKET_READABLE));
	return woken;
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
 * courier_http_next_done
 *		The next request that finished, if any: fills *res and returns true.
 *		The request stays the caller's until courier_http_release.
 */
bool
courier_http_next_done(CourierHttpResult *res)
{
	CURLMsg    *done;
	int			left;

	while ((done = curl_multi_info_read(multi, &left)) != NULL)
	{
		Transfer   *t;
		CURLcode	rc = done->data.result;
		long		http = 0;
		curl_off_t	sent = 0;

		if (done->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(done->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &http);
		curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &sent);

		res->handle = (int) (t - transfers);
		res->arg = t->arg;
		res->completed = (rc == CURLE_OK);
		res->sent = (sent > 0);
		res->status = (int) http;
		res->body = t->resp ? t->resp : "";
		res->body_len = t->resp_len;
		res->retry_after_ms = t->retry_after_ms;
		res->latency_ms = (double) (GetCurrentTimestamp() - t->started) / 1000.0;
		res->error_code = (rc == CURLE_OK) ? "" : curl_easy_strerror(rc);
		res->error[0] = '\0';
		if (rc != CURLE_OK && t->resp_overflow)
			snprintf(res->error, sizeof(res->error),
					 "response larger than courier.tms_max_response_size (%d bytes)",
					 courier_tms_max_response_bytes);
		else if (rc != CURLE_OK)
			snprintf(res->error, sizeof(res->error), "%s%s%s", curl_easy_strerror(rc),
					 t->errbuf[0] ? ": " : "", t->errbuf);
		return true;
	}
	return false;
}

/*
 * courier_http_release
 *		Done with a finished request: its body and handle go back.
 */
void
courier_http_release(const CourierHttpResult *res)
{
	Assert(res->handle >= 0 && res->handle < COURIER_HTTP_MAX_IN_FLIGHT);
	release_transfer(&transfers[res->handle]);
}

/*
 * courier_http_abort_all
 *		Drop every request in flight or not yet released: for a caller's
 *		error path (a query cancel in a backend), before it re-throws.
 */
void
courier_http_abort_all(void)
{
	for (int i = 0; i < COURIER_HTTP_MAX_IN_FLIGHT; i++)
	{
		if (transfers[i].busy)
			release_transfer(&transfers[i]);
	}
}

static void
release_transfer(Transfer *t)
{
	curl_multi_remove_handle(multi, t->easy);
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	free(t->resp);
	t->resp = NULL;
	t->busy = false;
}

/*
 * courier_http_url_path
 *		The path of url with its query ("/" when it has none), as a request
 *		signature covers it.  palloc'd.
 */
char *
courier_http_url_path(const char *url)
{
	CURLU	   *u = curl_url();
	char	   *path = NULL;
	char	   *query = NULL;
	char	   *result;

	if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK)
	{
		curl_url_get(u, CURLUPART_PATH, &path, 0);
		curl_url_get(u, CURLUPART_QUERY, &query, 0);
	}
	result = psprintf("%s%s%s", path ? path : "/",
					  query ? "?" : "", query ? query : "");
	curl_free(path);
	curl_free(query);
	curl_url_cleanup(u);
	return result;
}

/*
 * courier_http_post_start
 *		Start POSTing one document to url in the background: the caller
 *		polls with courier_http_post_poll from its loop, and is never held
 *		up by a slow or silent receiver.  Returns false when a POST is still
 *		in progress or could not be started.
 */
bool
courier_http_post_start(const char *url, const char *content_type,
						const char *body)
{
	int			running;
	char	   *line;

	http_init();
	if (post_easy != NULL)
		return false;
	if (post_multi == NULL && (post_multi = curl_multi_init()) == NULL)
		return false;
	if ((post_easy = curl_easy_init()) == NULL)
		return false;
	free(post_body);
	post_body = strdup(body);
	curl_slist_free_all(post_headers);
	line = psprintf("Content-Type: %s", content_type);
	post_headers = curl_slist_append(NULL, line);
	pfree(line);
	if (post_body == NULL || post_headers == NULL)
	{
		curl_easy_cleanup(post_easy);
		post_easy = NULL;
		return false;
	}
	post_errbuf[0] = '\0';
	set_common_options(post_easy, url, post_headers, post_errbuf);
	curl_easy_setopt(post_easy, CURLOPT_POSTFIELDS, post_body);
	curl_easy_setopt(post_easy, CURLOPT_WRITEFUNCTION, discard_cb);
	curl_multi_add_handle(post_multi, post_easy);
	curl_multi_perform(post_multi, &running);
	return true;
}

/*
 * courier_http_post_poll
 *		Drive the POST of courier_http_post_start without waiting.  Returns
 *		true once it finished: *http_status is its HTTP status, 0 when no
 *		answer came (error then says why; it is empty when an answer came).
 *		False while it is still going.
 */
bool
courier_http_post_poll(int *http_status, char *error, size_t errlen)
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
			curl_easy_getinfo(post_easy, CURLINFO_RESPONSE_CODE, &http);
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
