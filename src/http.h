/*-------------------------------------------------------------------------
 *
 * http.h
 *		The HTTP transport: POST requests in flight together, waited for
 *		beside the process latch, and one POST in the background of a loop.
 *		Knows HTTP and libcurl; nothing of messages, providers or SQL.
 *
 * IDENTIFICATION
 *		src/http.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_HTTP_H
#define COURIER_HTTP_H

#include "nodes/pg_list.h"

/* Most requests in flight at once; bounds courier.tms_concurrency. */
#define COURIER_HTTP_MAX_IN_FLIGHT 256

/*
 * A finished request, as the transport saw it.  body points into the
 * transport's buffer: valid until courier_http_release.
 */
typedef struct CourierHttpResult
{
	int			handle;			/* for courier_http_release */
	void	   *arg;			/* the caller's, from courier_http_start */
	bool		completed;		/* the answer came in full */
	bool		sent;			/* some of the request went out */
	int			status;			/* HTTP status, 0 when none came */
	const char *body;			/* the answer's body, NUL-terminated */
	size_t		body_len;
	long		retry_after_ms; /* from Retry-After, -1 when none */
	double		latency_ms;
	const char *error_code;		/* not completed: curl's name for the error */
	char		error[256];		/* not completed: why */
} CourierHttpResult;

extern int	courier_http_prepare(int max_in_flight);
extern int	courier_http_start(const char *url, List *headers,
							   const char *body, size_t len, bool at_most_once,
							   int timeout_ms, void *arg);
extern bool courier_http_wait(long max_wait_ms);
extern bool courier_http_next_done(CourierHttpResult *res);
extern void courier_http_release(const CourierHttpResult *res);
extern void courier_http_abort_all(void);
extern char *courier_http_url_path(const char *url);

/* One POST in the background of a loop (the launcher's alerts). */
extern bool courier_http_post_start(const char *url, const char *content_type,
									const char *body);
extern bool courier_http_post_poll(int *http_status, char *error, size_t errlen);

#endif							/* COURIER_HTTP_H */
