/*-------------------------------------------------------------------------
 *
 * provider_sens_sms.c
 *		The Naver Cloud SENS SMS dialect (SMS API v2): the rendered notice
 *		as an SMS, or as an LMS with courier's subject when it is longer
 *		than an SMS takes; each message carries its own text.
 *
 * Request:	POST {courier.tms_url}/sms/v2/services/{serviceId}/messages
 *			x-ncp-apigw-timestamp, x-ncp-iam-access-key,
 *			x-ncp-apigw-signature-v2 (computed anew for every attempt)
 *			{"type": "SMS"|"LMS", "contentType": "COMM", "from", "subject",
 *			 "content", "messages": [{"to", "subject", "content"}, ...]}, at
 *			most 100 messages
 * Answer:	202 {"requestId", "requestTime", "statusCode", "statusName"};
 *			errors 400/401/403/404/429/500 with "errorMessage"
 *
 * The message type belongs to the request: one request carries messages of
 * one channel (sens_sms_joinable).  The request's own "content" is
 * required; each message's content overrides it, so it is the first
 * message's text.  SENS documents no idempotency key: a retry after an
 * unknown outcome may send twice, and is to be reconciled through the
 * request id.  The access key and secret are courier.tms_hmac_access_key
 * and courier.tms_hmac_secret, the account's API keys, as the generic
 * dialect's SENS-style signature uses them.
 *
 * No transfer and no database here: dispatch.c sends what this builds.
 *
 * IDENTIFICATION
 *		src/provider_sens_sms.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "courier.h"
#include "provider.h"

#define PROVIDER_NAME "SENS SMS"

static void sens_sms_build(CourierRequest *req, const CourierMessage *msgs);
static void sens_sms_sign(CourierRequest *req);
static CourierOutcome sens_sms_read_answer(const CourierRequest *req,
										   const CourierHttpResult *res,
										   CourierMessage *msgs);
static bool sens_sms_joinable(const CourierMessage *first,
							  const CourierMessage *m);
static const char *sens_sms_unsendable(const CourierMessage *m);
static void sens_sms_receipt_query(CourierRequest *req, const char *request_id,
								 const char *key, const char *channel,
								 const char *to);
static void sens_sms_message_query(CourierRequest *req, const char *message);
static int	sens_sms_read_receipts(const CourierHttpResult *res,
							 CourierReceipt *receipts, int max);

const CourierProvider courier_provider_sens_sms = {
	.name = "sens_sms",
	.max_per_request = 100,
	.looks_up_before_resend = true,
	.build = sens_sms_build,
	.sign = sens_sms_sign,
	.read_answer = sens_sms_read_answer,
	.joinable = sens_sms_joinable,
	.unsendable = sens_sms_unsendable,
	.receipt_query = sens_sms_receipt_query,
	.message_query = sens_sms_message_query,
	.read_receipts = sens_sms_read_receipts
};

/*
 * The codes courier knows in a 2xx answer (statusCode); HTTP statuses are
 * classified by courier_apply_http_status (docs/providers.md has both).
 */
static const CourierCode codes[] = {
	{"202", COURIER_CODE_ACCEPTED, false, "accepted"},
	{NULL, COURIER_CODE_PERMANENT, false, NULL}
};

/*
 * sens_sms_build
 *		The body for the request's messages, all of one channel.
 */
static void
sens_sms_build(CourierRequest *req, const CourierMessage *msgs)
{
	const CourierMessage *first = &msgs[req->idx[0]];
	bool		lms = (strcmp(first->channel, "lms") == 0);

	req->url = courier_provider_url("/sms/v2/services/%s/messages",
									courier_sens_sms_service_id);

	initStringInfo(&req->body);
	appendStringInfo(&req->body,
					 "{\"type\": \"%s\", \"contentType\": \"COMM\", \"from\": ",
					 lms ? "LMS" : "SMS");
	escape_json(&req->body, courier_sens_sms_from);
	if (lms)
	{
		appendStringInfoString(&req->body, ", \"subject\": ");
		escape_json(&req->body, first->subject ? first->subject : "");
	}
	appendStringInfoString(&req->body, ", \"content\": ");
	escape_json(&req->body, first->text);
	appendStringInfoString(&req->body, ", \"messages\": [");
	for (int k = 0; k < req->count; k++)
	{
		const CourierMessage *m = &msgs[req->idx[k]];

		if (k > 0)
			appendStringInfoString(&req->body, ", ");
		appendStringInfoString(&req->body, "{\"to\": ");
		escape_json(&req->body, m->to);
		if (lms && m->subject)
		{
			appendStringInfoString(&req->body, ", \"subject\": ");
			escape_json(&req->body, m->subject);
		}
		appendStringInfoString(&req->body, ", \"content\": ");
		escape_json(&req->body, m->text);
		appendStringInfoChar(&req->body, '}');
	}
	appendStringInfoString(&req->body, "]}");

	req->headers = list_make1(pstrdup("Content-Type: application/json; charset=utf-8"));
}

/*
 * sens_sms_sign
 *		The API gateway's signature over this attempt's timestamp.
 */
static void
sens_sms_sign(CourierRequest *req)
{
	courier_sign_ncp(req, courier_tms_hmac_access_key, courier_tms_hmac_secret);
}

/*
 * sens_sms_read_answer
 *		The shared reading of SENS answers (courier_read_sens_answer).
 */
static CourierOutcome
sens_sms_read_answer(const CourierRequest *req, const CourierHttpResult *res,
					 CourierMessage *msgs)
{
	return courier_read_sens_answer(req, res, msgs, PROVIDER_NAME, codes);
}

/*
 * sens_sms_joinable
 *		The message type (SMS or LMS) belongs to the request.
 */
static bool
sens_sms_joinable(const CourierMessage *first, const CourierMessage *m)
{
	return courier_same_text(first->channel, m->channel);
}

/*
 * sens_sms_unsendable
 *		What the dialect lacks to send m.
 */
static const char *
sens_sms_unsendable(const CourierMessage *m)
{
	if (courier_tms_hmac_access_key == NULL || courier_tms_hmac_access_key[0] == '\0')
		return "courier.tms_hmac_access_key is not set";
	if (courier_tms_hmac_secret == NULL || courier_tms_hmac_secret[0] == '\0')
		return "courier.tms_hmac_secret is not set";
	if (courier_sens_sms_service_id == NULL || courier_sens_sms_service_id[0] == '\0')
		return "courier.sens_sms_service_id is not set";
	if (courier_sens_sms_from == NULL || courier_sens_sms_from[0] == '\0')
		return "courier.sens_sms_from is not set";
	if (m->text == NULL || m->channel == NULL)
		return "the tms stage gave the message no text or channel";
	return NULL;
}

/*
 * sens_sms_receipt_query
 *		The messages of one request and how each ended: GET
 *		.../messages?requestId=R (a request carries at most 100), signed
 *		like a send, over the path with its query.  Without a request id
 *		(an attempt that got no answer: did SENS take it?), the messages to
 *		the number to over the days a look-up is made for; receipts.c
 *		asks each of them for its text (sens_sms_message_query) and picks
 *		the notice's.
 */
static void
sens_sms_receipt_query(CourierRequest *req, const char *request_id,
					   const char *key, const char *channel, const char *to)
{
	if (request_id[0] != '\0')
		req->url = courier_provider_url("/sms/v2/services/%s/messages?requestId=%s&pageSize=100",
										courier_sens_sms_service_id, request_id);
	else
	{
		char		from[32];
		char		until[32];

		courier_search_window(from, until, sizeof(from), "%Y-%m-%d%%20%H:%M:%S");
		req->url = courier_provider_url("/sms/v2/services/%s/messages?requestStartTime=%s&requestEndTime=%s&to=%s&pageSize=100",
										courier_sens_sms_service_id, from, until,
										courier_url_escape(to));
	}
	sens_sms_sign(req);
}

/*
 * sens_sms_message_query
 *		One message and how it ended, with its text (the list does not
 *		give it): GET .../messages/{messageId}, signed.
 */
static void
sens_sms_message_query(CourierRequest *req, const char *message)
{
	req->url = courier_provider_url("/sms/v2/services/%s/messages/%s",
									courier_sens_sms_service_id, courier_url_escape(message));
	sens_sms_sign(req);
}

/* The query's answer: courier_read_sens_receipts. */
static int
sens_sms_read_receipts(const CourierHttpResult *res, CourierReceipt *receipts, int max)
{
	return courier_read_sens_receipts(res, receipts, max, false);
}
