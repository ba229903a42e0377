/*-------------------------------------------------------------------------
 *
 * provider.h
 *		A TMS provider's dialect: how messages become one HTTP request, and
 *		how its answer becomes one outcome per message.  One file per
 *		dialect (provider_<name>.c), registered in provider.c; dispatch.c
 *		drives them.  What dialects share is in provider_common.c.
 *
 * IDENTIFICATION
 *		src/provider.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_PROVIDER_H
#define COURIER_PROVIDER_H

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

#include "dispatch.h"
#include "http.h"

/*
 * One request: messages msgs[idx[0..count)] of the batch.  dispatch.c
 * fills idx and count; the dialect the rest.  Allocated in the dispatch's
 * memory context, which lives until the next batch.
 */
typedef struct CourierRequest
{
	int		   *idx;
	int			count;
	const char *url;			/* where to POST it */
	StringInfoData body;
	List	   *headers;		/* "Name: value" lines, palloc'd */
} CourierRequest;

typedef struct CourierProvider
{
	/* what courier.tms_provider would name it */
	const char *name;

	/* most messages one request may carry */
	int			max_per_request;

	/*
	 * Fill req's url, body and headers (its idempotency key among them)
	 * for its messages.  Called in the dispatch's memory context.
	 */
	void		(*build) (CourierRequest *req, const CourierMessage *msgs);

	/*
	 * Add what must be computed anew for every attempt (a signature over
	 * a timestamp) right before req starts; NULL when nothing is.
	 */
	void		(*sign) (CourierRequest *req);

	/*
	 * Give each message of req its outcome (courier_set_outcome) from an
	 * answer that came in full: res->status, res->body.  Returns the
	 * request's class for the shared limits (courier_limits_report).  The
	 * caller then sets every message's latency and Retry-After.  Allocates
	 * in the caller's context (the tms batch's); raises no error on any
	 * answer.
	 */
	CourierOutcome (*read_answer) (const CourierRequest *req,
								   const CourierHttpResult *res,
								   CourierMessage *msgs);
} CourierProvider;

/* provider.c: the registry */
#define COURIER_DEFAULT_PROVIDER "generic"
extern const CourierProvider *courier_provider_lookup(const char *name);

/* provider_common.c: what dialects share */
extern void courier_set_outcome(CourierMessage *m, CourierOutcome outcome,
								bool unknown, int http_status,
								const char *code, const char *error);
extern void courier_set_request_outcome(const CourierRequest *req,
										CourierMessage *msgs,
										CourierOutcome outcome, bool unknown,
										int http_status, const char *code,
										const char *error);
extern char *courier_idempotency_key(const CourierRequest *req,
									 const CourierMessage *msgs);
extern Jsonb *courier_parse_json_answer(const char *body, size_t len);
extern void courier_sign_ncp(CourierRequest *req, const char *access_key,
							 const char *secret);

#endif							/* COURIER_PROVIDER_H */
