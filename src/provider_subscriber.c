/*-------------------------------------------------------------------------
 *
 * provider_subscriber.c
 *		The subscriber dialect: how a batch of order events becomes one
 *		POST to a subscriber's URL, signed with its secret, and how its
 *		answer becomes one outcome per event.  Not a TMS dialect (courier.
 *		tms_provider cannot name it): subscriber.c configures it for the
 *		subscription its worker delivers, and sends through dispatch.c.
 *
 * Request:	{"events": [{"id", "type", "order_id", "seller_id",
 *			"occurred_at", "data"}, ...]}, each event as the lease rendered
 *			it (CourierMessage.text), in the order of the batch.
 * Headers:	Content-Type, Idempotency-Key (the event id for a single event;
 *			for several, a digest of their ids), Courier-Subscriber, and
 *			with a secret Courier-Signature: t=<unix seconds>,v1=<hex of
 *			HMAC-SHA256(secret, "<t>.<body>")>, made anew for every attempt.
 * Answer:	by the HTTP status only (the body is not read):
 *	2xx							every event accepted
 *	429, 503					THROTTLED (Retry-After)
 *	401, 403, 404, 410			UNAUTHORIZED: ours to fix (the URL, the
 *								receiver's credentials); the breaker opens,
 *								no attempt is spent
 *	408, 5xx, 1xx, 3xx			RETRY
 *	other 4xx					REJECTED: the receiver refuses these events
 *
 * docs/fanout.md documents the contract for receivers.
 *
 * IDENTIFICATION
 *		src/provider_subscriber.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "courier.h"
#include "provider.h"

static void subscriber_build(CourierRequest *req, const CourierMessage *msgs);
static void subscriber_sign(CourierRequest *req);
static CourierOutcome subscriber_read_answer(const CourierRequest *req,
											 const CourierHttpResult *res,
											 CourierMessage *msgs);

/* The subscription being delivered (courier_subscriber_dialect_target). */
static char target_name[64];
static char *target_url = NULL;
static char *target_secret = NULL;

const CourierProvider courier_subscriber_dialect = {
	.name = "subscriber",
	.max_per_request = 1000,
	.build = subscriber_build,
	.sign = subscriber_sign,
	.read_answer = subscriber_read_answer
};

/*
 * courier_subscriber_dialect_target
 *		Point the dialect at a subscription: its name, URL and secret (NULL:
 *		unsigned).  Called by its worker whenever it reads the subscription
 *		anew; copies are kept in TopMemoryContext.
 */
void
courier_subscriber_dialect_target(const char *name, const char *url,
								  const char *secret)
{
	strlcpy(target_name, name, sizeof(target_name));
	if (target_url)
		pfree(target_url);
	target_url = MemoryContextStrdup(TopMemoryContext, url);
	if (target_secret)
	{
		explicit_bzero(target_secret, strlen(target_secret));
		pfree(target_secret);
	}
	target_secret = secret ? MemoryContextStrdup(TopMemoryContext, secret) : NULL;
}

/*
 * subscriber_build
 *		The body {"events": [...]} of the request's events, and its headers.
 */
static void
subscriber_build(CourierRequest *req, const CourierMessage *msgs)
{
	req->url = pstrdup(target_url ? target_url : "");

	initStringInfo(&req->body);
	appendStringInfoString(&req->body, "{\"events\": [");
	for (int k = 0; k < req->count; k++)
	{
		if (k > 0)
			appendStringInfoString(&req->body, ", ");
		appendStringInfoString(&req->body, msgs[req->idx[k]].text);
	}
	appendStringInfoString(&req->body, "]}");

	req->headers = list_make1(pstrdup("Content-Type: application/json"));
	req->headers = lappend(req->headers,
						   psprintf("Idempotency-Key: %s",
									courier_idempotency_key(req, msgs)));
	req->headers = lappend(req->headers,
						   psprintf("Courier-Subscriber: %s", target_name));
}

/*
 * subscriber_sign
 *		Courier-Signature over this attempt's time and the body, when the
 *		subscription has a secret: a receiver recomputes it and refuses a
 *		body that was changed or a signature too old to be this attempt's.
 */
static void
subscriber_sign(CourierRequest *req)
{
	int64		t;
	StringInfoData signed_part;
	uint8		mac[32];
	char		hex[65];

	if (target_secret == NULL)
		return;
	t = (int64) (GetCurrentTimestamp() / USECS_PER_SEC +
				 (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
	initStringInfo(&signed_part);
	appendStringInfo(&signed_part, INT64_FORMAT ".", t);
	appendBinaryStringInfo(&signed_part, req->body.data, req->body.len);
	courier_hmac_sha256(target_secret, (const uint8 *) signed_part.data,
						signed_part.len, mac);
	hex[hex_encode((const char *) mac, sizeof(mac), hex)] = '\0';
	req->headers = lappend(req->headers,
						   psprintf("Courier-Signature: t=" INT64_FORMAT ",v1=%s",
									t, hex));
}

/*
 * subscriber_read_answer
 *		Classify the answer by its status (the table above).
 */
static CourierOutcome
subscriber_read_answer(const CourierRequest *req, const CourierHttpResult *res,
					   CourierMessage *msgs)
{
	int			http = res->status;
	CourierOutcome klass;
	const char *code;
	char		error[256];

	if (http >= 200 && http < 300)
	{
		courier_set_request_outcome(req, msgs, COURIER_OUT_DELIVERED, false,
									http, "accepted", "");
		return COURIER_OUT_DELIVERED;
	}
	snprintf(error, sizeof(error), "subscriber \"%s\" answered HTTP %d",
			 target_name, http);
	if (http == 429 || http == 503)
	{
		klass = COURIER_OUT_THROTTLED;
		code = "throttled";
	}
	else if (http == 401 || http == 403 || http == 404 || http == 410)
	{
		klass = COURIER_OUT_UNAUTHORIZED;
		code = "configuration";
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
	courier_set_request_outcome(req, msgs, klass, false, http, code, error);
	return klass;
}
