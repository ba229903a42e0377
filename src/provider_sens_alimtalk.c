/*-------------------------------------------------------------------------
 *
 * provider_sens_alimtalk.c
 *		The Naver Cloud SENS AlimTalk dialect (AlimTalk API v2): a notice
 *		goes out under an approved template's code with its content filled
 *		in; SENS does not fill templates, so the content is courier's
 *		rendered text, which must match the template as Kakao approved it.
 *
 * Request:	POST {courier.tms_url}/alimtalk/v2/services/{serviceId}/messages
 *			x-ncp-apigw-timestamp, x-ncp-iam-access-key,
 *			x-ncp-apigw-signature-v2 (computed anew for every attempt)
 *			{"plusFriendId", "templateCode", "messages": [{"to", "content",
 *			 "useSmsFailover", "failoverConfig"}, ...]}, at most 100 messages
 * Answer:	202 {"requestId", "requestTime", "statusCode", "statusName",
 *			 "messages": [{"messageId", "to", "requestStatusCode",
 *			 "requestStatusName", "requestStatusDesc", ...}]};
 *			errors 400/401/403/404/429/500 with "errorMessage"
 *
 * The template code is courier.alimtalk_template, or courier.
 * alimtalk_template_v2 for an order inside the notice_v2 rollout; one
 * request carries one template.  The content is the text rendered from
 * courier.notice_template (or _v2): those must be the approved templates'
 * text with courier's placeholders where the template has #{...}.  With
 * courier.alimtalk_fallback = provider each message asks SENS to send the
 * same text by SMS/LMS when the AlimTalk cannot be delivered
 * (useSmsFailover, failoverConfig); with none it asks for no failover.  A
 * delivered message's channel is "alimtalk".  SENS documents no
 * idempotency key.
 *
 * No transfer and no database here: dispatch.c sends what this builds.
 *
 * IDENTIFICATION
 *		src/provider_sens_alimtalk.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "courier.h"
#include "provider.h"

#define PROVIDER_NAME "SENS AlimTalk"

static void sens_alimtalk_build(CourierRequest *req, const CourierMessage *msgs);
static void sens_alimtalk_sign(CourierRequest *req);
static CourierOutcome sens_alimtalk_read_answer(const CourierRequest *req,
												const CourierHttpResult *res,
												CourierMessage *msgs);
static bool sens_alimtalk_joinable(const CourierMessage *first,
								   const CourierMessage *m);
static const char *sens_alimtalk_unsendable(const CourierMessage *m);
static void sens_alimtalk_receipt_query(CourierRequest *req, const char *request_id,
								 const char *key, const char *channel,
								 const char *to);
static int	sens_alimtalk_read_receipts(const CourierHttpResult *res,
							 CourierReceipt *receipts, int max);
static void append_failover(StringInfo body, const CourierMessage *m);

const CourierProvider courier_provider_sens_alimtalk = {
	.name = "sens_alimtalk",
	.max_per_request = 100,
	.looks_up_before_resend = true,
	.fallback_dialect = "sens_sms",
	.build = sens_alimtalk_build,
	.sign = sens_alimtalk_sign,
	.read_answer = sens_alimtalk_read_answer,
	.joinable = sens_alimtalk_joinable,
	.unsendable = sens_alimtalk_unsendable,
	.receipt_query = sens_alimtalk_receipt_query,
	.read_receipts = sens_alimtalk_read_receipts
};

/*
 * The codes courier knows in a 2xx answer: the request's statusCode and
 * each message's requestStatusCode; HTTP statuses are classified by
 * courier_apply_http_status (docs/providers.md has all).
 */
static const CourierCode codes[] = {
	{"202", COURIER_CODE_ACCEPTED, false, "accepted"},
	{"A000", COURIER_CODE_ACCEPTED, false, "send request accepted"},
	{NULL, COURIER_CODE_PERMANENT, false, NULL}
};

/*
 * sens_alimtalk_build
 *		The body for the request's messages, all of one template variant.
 */
static void
sens_alimtalk_build(CourierRequest *req, const CourierMessage *msgs)
{
	req->url = courier_provider_url("/alimtalk/v2/services/%s/messages",
									courier_sens_alimtalk_service_id);

	initStringInfo(&req->body);
	appendStringInfoString(&req->body, "{\"plusFriendId\": ");
	escape_json(&req->body, courier_sens_plus_friend_id);
	appendStringInfoString(&req->body, ", \"templateCode\": ");
	escape_json(&req->body, courier_template_code(&msgs[req->idx[0]]));
	appendStringInfoString(&req->body, ", \"messages\": [");
	for (int k = 0; k < req->count; k++)
	{
		const CourierMessage *m = &msgs[req->idx[k]];

		if (k > 0)
			appendStringInfoString(&req->body, ", ");
		appendStringInfoString(&req->body, "{\"to\": ");
		escape_json(&req->body, m->to);
		appendStringInfoString(&req->body, ", \"content\": ");
		escape_json(&req->body, m->text);
		append_failover(&req->body, m);
		appendStringInfoChar(&req->body, '}');
	}
	appendStringInfoString(&req->body, "]}");

	req->headers = list_make1(pstrdup("Content-Type: application/json; charset=utf-8"));
}

/*
 * append_failover
 *		m's failover fields: with courier.alimtalk_fallback = provider, SENS
 *		is to send m's rendered text by SMS or LMS (by its EUC-KR length,
 *		courier_fallback_type; an LMS with m's subject) from courier.
 *		sens_sms_from when the AlimTalk cannot be delivered; otherwise
 *		explicitly no failover.
 */
static void
append_failover(StringInfo body, const CourierMessage *m)
{
	const char *type;

	if (courier_alimtalk_fallback != COURIER_ALIMTALK_FALLBACK_PROVIDER)
	{
		appendStringInfoString(body, ", \"useSmsFailover\": false");
		return;
	}
	type = courier_fallback_type(m);
	appendStringInfo(body,
					 ", \"useSmsFailover\": true, \"failoverConfig\": {\"type\": \"%s\", \"from\": ",
					 type);
	escape_json(body, courier_sens_sms_from);
	if (strcmp(type, "LMS") == 0)
	{
		appendStringInfoString(body, ", \"subject\": ");
		escape_json(body, m->subject ? m->subject : COURIER_LMS_SUBJECT);
	}
	appendStringInfoString(body, ", \"content\": ");
	escape_json(body, m->text);
	appendStringInfoChar(body, '}');
}

/*
 * sens_alimtalk_sign
 *		The API gateway's signature over this attempt's timestamp.
 */
static void
sens_alimtalk_sign(CourierRequest *req)
{
	courier_sign_ncp(req, courier_tms_hmac_access_key, courier_tms_hmac_secret);
}

/*
 * sens_alimtalk_read_answer
 *		The shared reading of SENS answers (courier_read_sens_answer); what
 *		it delivered went by AlimTalk.
 */
static CourierOutcome
sens_alimtalk_read_answer(const CourierRequest *req, const CourierHttpResult *res,
						  CourierMessage *msgs)
{
	CourierOutcome klass = courier_read_sens_answer(req, res, msgs, PROVIDER_NAME, codes);

	courier_mark_delivered_channel(req, msgs, "alimtalk");
	return klass;
}

/*
 * sens_alimtalk_joinable
 *		One request carries one templateCode: messages of one variant.
 */
static bool
sens_alimtalk_joinable(const CourierMessage *first, const CourierMessage *m)
{
	return (first->variant == 2) == (m->variant == 2);
}

/*
 * sens_alimtalk_unsendable
 *		What the dialect lacks to send m.
 */
static const char *
sens_alimtalk_unsendable(const CourierMessage *m)
{
	const char *why;

	if (courier_tms_hmac_access_key == NULL || courier_tms_hmac_access_key[0] == '\0')
		return "courier.tms_hmac_access_key is not set";
	if (courier_tms_hmac_secret == NULL || courier_tms_hmac_secret[0] == '\0')
		return "courier.tms_hmac_secret is not set";
	if (courier_sens_alimtalk_service_id == NULL || courier_sens_alimtalk_service_id[0] == '\0')
		return "courier.sens_alimtalk_service_id is not set";
	if (courier_sens_plus_friend_id == NULL || courier_sens_plus_friend_id[0] == '\0')
		return "courier.sens_plus_friend_id is not set";
	if ((why = courier_template_code_unset(m)) != NULL)
		return why;
	if (m->text == NULL)
		return "the tms stage gave the message no text";
	if (courier_alimtalk_fallback == COURIER_ALIMTALK_FALLBACK_PROVIDER &&
		(courier_sens_sms_from == NULL || courier_sens_sms_from[0] == '\0'))
		return "courier.sens_sms_from is not set (the sender of the failover, courier.alimtalk_fallback = provider)";
	return NULL;
}

/*
 * sens_alimtalk_receipt_query
 *		The messages of one request and how each ended: GET
 *		.../messages?requestId=R (a request carries at most 100), signed
 *		like a send, over the path with its query.  Without a request id
 *		(an attempt that got no answer: did SENS take it?), the channel's
 *		messages to the number to over the days a look-up is made for;
 *		receipts.c picks the notice's by its text.
 */
static void
sens_alimtalk_receipt_query(CourierRequest *req, const char *request_id,
							const char *key, const char *channel, const char *to)
{
	if (request_id[0] != '\0')
		req->url = courier_provider_url("/alimtalk/v2/services/%s/messages?requestId=%s&pageSize=100",
										courier_sens_alimtalk_service_id, request_id);
	else
	{
		char		from[32];
		char		until[32];

		courier_search_window(from, until, sizeof(from), "%Y-%m-%d%%20%H:%M:%S");
		req->url = courier_provider_url("/alimtalk/v2/services/%s/messages?plusFriendId=%s&requestStartTime=%s&requestEndTime=%s&to=%s&pageSize=100",
										courier_sens_alimtalk_service_id,
										courier_url_escape(courier_sens_plus_friend_id),
										from, until, courier_url_escape(to));
	}
	sens_alimtalk_sign(req);
}

/* The query's answer: courier_read_sens_receipts. */
static int
sens_alimtalk_read_receipts(const CourierHttpResult *res, CourierReceipt *receipts, int max)
{
	return courier_read_sens_receipts(res, receipts, max, true);
}
