/*-------------------------------------------------------------------------
 *
 * provider_nhn_alimtalk.c
 *		The NHN Cloud KakaoTalk Bizmessage AlimTalk dialect (API v2.3): a
 *		notice goes out as an approved template's code and the values of
 *		its #{key} parameters, not as text; NHN fills the template in.
 *
 * Request:	POST {courier.tms_url}/alimtalk/v2.3/appkeys/{appkey}/messages
 *			X-Secret-Key, X-NC-API-IDEMPOTENCY-KEY
 *			{"senderKey", "templateCode", "senderGroupingKey",
 *			 "recipientList": [{"recipientNo", "templateParameter": {key:
 *			 value}, "recipientGroupingKey"}, ...]}, at most 1,000 recipients
 * Answer:	{"header": {"resultCode", "resultMessage", "isSuccessful"},
 *			 "message": {"requestId", "sendResults": [{"recipientSeq",
 *			 "resultCode", "resultMessage", "recipientGroupingKey"}]}}
 *
 * The template code is courier.alimtalk_template, or courier.
 * alimtalk_template_v2 for an order inside the notice_v2 rollout; one
 * request carries one template.  courier.alimtalk_template_params says
 * which field of the notice fills which #{key}.  The rendered text is not
 * sent: the tms stage keeps it for the DBA and for an SMS fallback.  No
 * resendParameter is sent, so NHN's own SMS fallback is whatever the
 * console sets (courier's fallback is later work).  Every result code
 * courier knows is in codes[] below and in docs/providers.md.
 *
 * No transfer and no database here: dispatch.c sends what this builds.
 *
 * IDENTIFICATION
 *		src/provider_nhn_alimtalk.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "courier.h"
#include "provider.h"

#define PROVIDER_NAME "NHN AlimTalk"

static void nhn_alimtalk_build(CourierRequest *req, const CourierMessage *msgs);
static void nhn_alimtalk_sign(CourierRequest *req);
static CourierOutcome nhn_alimtalk_read_answer(const CourierRequest *req,
											   const CourierHttpResult *res,
											   CourierMessage *msgs);
static bool nhn_alimtalk_joinable(const CourierMessage *first,
								  const CourierMessage *m);
static const char *nhn_alimtalk_unsendable(const CourierMessage *m);
static const char *template_code(const CourierMessage *m);

const CourierProvider courier_provider_nhn_alimtalk = {
	.name = "nhn_alimtalk",
	.max_per_request = 1000,
	.build = nhn_alimtalk_build,
	.sign = nhn_alimtalk_sign,
	.read_answer = nhn_alimtalk_read_answer,
	.joinable = nhn_alimtalk_joinable,
	.unsendable = nhn_alimtalk_unsendable
};

/*
 * The result codes courier knows, from NHN's "Error Code" page of
 * KakaoTalk Bizmessage (API response codes, and the delivery result codes
 * read defensively should they appear in a send answer).
 */
static const CourierCode codes[] = {
	{"0", COURIER_CODE_ACCEPTED, false, "success"},
	{"1000", COURIER_CODE_ACCEPTED, false, "success (delivery result)"},

	/* our credentials, sender profile or template */
	{"-1000", COURIER_CODE_CONFIG, false, "invalid appKey"},
	{"-1001", COURIER_CODE_CONFIG, false, "invalid secretKey"},
	{"-1002", COURIER_CODE_CONFIG, false, "invalid SMS appkey (fallback set in the console)"},
	{"-1003", COURIER_CODE_CONFIG, false, "invalid SMS sender number (fallback set in the console)"},
	{"-1006", COURIER_CODE_CONFIG, false, "the sender profile has no senderKey"},
	{"-1014", COURIER_CODE_CONFIG, false, "the sender profile is not active"},
	{"-1027", COURIER_CODE_CONFIG, false, "the sender profile is blocked"},
	{"-1030", COURIER_CODE_CONFIG, false, "self verification is required"},
	{"-2017", COURIER_CODE_CONFIG, false, "no such sender profile"},
	{"-2502", COURIER_CODE_CONFIG, false, "fallback requested without a resend setting"},
	{"-3003", COURIER_CODE_CONFIG, false, "the template does not exist"},
	{"-3004", COURIER_CODE_CONFIG, false, "template parameter error"},
	{"-3005", COURIER_CODE_CONFIG, false, "the template is not approved"},
	{"-3049", COURIER_CODE_CONFIG, false, "the template parameters do not match the template"},
	{"-3324", COURIER_CODE_CONFIG, false, "invalid template variable"},
	{"-3347", COURIER_CODE_CONFIG, false, "a template parameter key contains '@'"},
	{"-4004", COURIER_CODE_CONFIG, false, "the appkey does not exist"},
	{"-4005", COURIER_CODE_CONFIG, false, "the appkey is disabled"},
	{"-9996", COURIER_CODE_CONFIG, false, "only application/json is supported"},
	{"-9998", COURIER_CODE_CONFIG, false, "no such API (check courier.tms_url)"},

	/* a field refused: the recipient's, or for the whole request ours */
	{"4", COURIER_CODE_PERMANENT, true, "parameter verification failed"},
	{"-2000", COURIER_CODE_PERMANENT, true, "a field is too long"},
	{"-2001", COURIER_CODE_PERMANENT, true, "a field is blank"},
	{"-2002", COURIER_CODE_PERMANENT, true, "a field is null"},
	{"-2003", COURIER_CODE_PERMANENT, true, "a field is below its minimum"},
	{"-2004", COURIER_CODE_PERMANENT, true, "a field is out of its length range"},
	{"-2005", COURIER_CODE_PERMANENT, true, "a field is out of its range"},
	{"-3002", COURIER_CODE_PERMANENT, true, "the request body cannot be read"},
	{"-9997", COURIER_CODE_PERMANENT, true, "inappropriate request"},

	/* the message itself */
	{"-1028", COURIER_CODE_PERMANENT, false, "template values differ by more than 14 characters (first-time sender limit)"},
	{"-2019", COURIER_CODE_PERMANENT, false, "the filled-in template exceeds 1,300 characters"},
	{"-2032", COURIER_CODE_PERMANENT, false, "the filled-in template title exceeds 50 characters"},
	{"-2035", COURIER_CODE_PERMANENT, false, "the filled-in template header exceeds 16 characters"},
	{"-3010", COURIER_CODE_PERMANENT, false, "the content does not match the template"},
	{"-3048", COURIER_CODE_PERMANENT, false, "a template parameter exceeds 1,300 characters"},
	{"-4019", COURIER_CODE_PERMANENT, false, "invalid recipient number"},
	{"-5000", COURIER_CODE_PERMANENT, false, "invalid recipient number"},
	{"-8008", COURIER_CODE_PERMANENT, false, "the content has a banned word"},
	{"3008", COURIER_CODE_PERMANENT, false, "phone number error (delivery result)"},
	{"3016", COURIER_CODE_PERMANENT, false, "the content does not match the template (delivery result)"},

	/* the provider failed */
	{"-1031", COURIER_CODE_RETRYABLE, false, "every recipient failed (no result per recipient)"},
	{"-7000", COURIER_CODE_RETRYABLE, false, "the vendor's API failed"},
	{"-9999", COURIER_CODE_RETRYABLE, false, "system error"},
	{"9998", COURIER_CODE_RETRYABLE, false, "system problem, service stopped (delivery result)"},
	{"9999", COURIER_CODE_RETRYABLE, false, "unknown system error (delivery result)"},

	/* the same X-NC-API-IDEMPOTENCY-KEY within 10 minutes */
	{"-1005", COURIER_CODE_TAKEN, false, "the idempotency key was used within the last 10 minutes: already taken, to be reconciled"},

	/* cannot reach the recipient by AlimTalk: SMS/LMS instead */
	{"3018", COURIER_CODE_FALLBACK, false, "cannot send: inactive user, SIM and KakaoTalk numbers differ, or sanctioned (delivery result)"},
	{"3019", COURIER_CODE_FALLBACK, false, "not a KakaoTalk user (delivery result)"},
	{"3020", COURIER_CODE_FALLBACK, false, "the user blocked AlimTalk (delivery result)"},
	{NULL, COURIER_CODE_PERMANENT, false, NULL}
};

static const CourierNhnShape shape = {
	.provider = PROVIDER_NAME,
	.table = codes,
	.data_path = {"message", NULL},
	.results_key = "sendResults"
};

/*
 * nhn_alimtalk_build
 *		The body for the request's messages, all of one template variant
 *		(nhn_alimtalk_joinable), its JSON content type and its idempotency
 *		key.
 *
 * X-NC-API-IDEMPOTENCY-KEY is courier_idempotency_key: a one-message
 * request carries the message's own key (dn-<order>-<date>) on every
 * attempt; a bulk request's key is the same only when the same messages are
 * grouped again, which retries rarely do (each message has its own jittered
 * back-off).  NHN refuses a key seen within 10 minutes (-1005) whether or
 * not the first request went through, so -1005 is read as "already taken":
 * never sent again, outcome unknown, to be reconciled.  Each recipient also
 * carries its message's key as recipientGroupingKey, and the request its
 * key as senderGroupingKey, by which a send can be found again whatever the
 * grouping.
 */
static void
nhn_alimtalk_build(CourierRequest *req, const CourierMessage *msgs)
{
	const CourierTemplateParams *params = courier_alimtalk_params;
	char	   *key = courier_idempotency_key(req, msgs);

	req->url = courier_provider_url("/alimtalk/v2.3/appkeys/%s/messages",
									courier_nhn_alimtalk_appkey);

	initStringInfo(&req->body);
	appendStringInfoString(&req->body, "{\"senderKey\": ");
	escape_json(&req->body, courier_nhn_alimtalk_sender_key);
	appendStringInfoString(&req->body, ", \"templateCode\": ");
	escape_json(&req->body, template_code(&msgs[req->idx[0]]));
	appendStringInfoString(&req->body, ", \"senderGroupingKey\": ");
	escape_json(&req->body, key);
	appendStringInfoString(&req->body, ", \"recipientList\": [");
	for (int k = 0; k < req->count; k++)
	{
		const CourierMessage *m = &msgs[req->idx[k]];

		if (k > 0)
			appendStringInfoString(&req->body, ", ");
		appendStringInfoString(&req->body, "{\"recipientNo\": ");
		escape_json(&req->body, m->to);
		appendStringInfoString(&req->body, ", \"templateParameter\": {");
		for (int p = 0; params != NULL && p < params->n; p++)
		{
			const char *value = courier_message_field(m, params->items[p].field);

			if (p > 0)
				appendStringInfoString(&req->body, ", ");
			escape_json(&req->body, params->items[p].key);
			appendStringInfoString(&req->body, ": ");
			escape_json(&req->body, value ? value : "");
		}
		appendStringInfoString(&req->body, "}, \"recipientGroupingKey\": ");
		escape_json(&req->body, m->key);
		appendStringInfoChar(&req->body, '}');
	}
	appendStringInfoString(&req->body, "]}");

	req->headers = list_make1(pstrdup("Content-Type: application/json;charset=UTF-8"));
	req->headers = lappend(req->headers,
						   psprintf("X-NC-API-IDEMPOTENCY-KEY: %s", key));
}

/*
 * nhn_alimtalk_sign
 *		The secret key, as every request of NHN's API carries it.
 */
static void
nhn_alimtalk_sign(CourierRequest *req)
{
	req->headers = lappend(req->headers,
						   psprintf("X-Secret-Key: %s", courier_nhn_alimtalk_secret_key));
}

/*
 * nhn_alimtalk_read_answer
 *		The shared reading of NHN answers (courier_read_nhn_answer), with
 *		this dialect's codes.
 */
static CourierOutcome
nhn_alimtalk_read_answer(const CourierRequest *req, const CourierHttpResult *res,
						 CourierMessage *msgs)
{
	return courier_read_nhn_answer(req, res, msgs, &shape);
}

/*
 * nhn_alimtalk_joinable
 *		One request carries one templateCode: messages of one variant.
 */
static bool
nhn_alimtalk_joinable(const CourierMessage *first, const CourierMessage *m)
{
	return (first->variant == 2) == (m->variant == 2);
}

/*
 * nhn_alimtalk_unsendable
 *		What the dialect lacks to send m: a parameter, its variant's template
 *		code, or a field the template parameters name.
 */
static const char *
nhn_alimtalk_unsendable(const CourierMessage *m)
{
	const CourierTemplateParams *params = courier_alimtalk_params;

	if (courier_nhn_alimtalk_appkey == NULL || courier_nhn_alimtalk_appkey[0] == '\0')
		return "courier.nhn_alimtalk_appkey is not set";
	if (courier_nhn_alimtalk_secret_key == NULL || courier_nhn_alimtalk_secret_key[0] == '\0')
		return "courier.nhn_alimtalk_secret_key is not set";
	if (courier_nhn_alimtalk_sender_key == NULL || courier_nhn_alimtalk_sender_key[0] == '\0')
		return "courier.nhn_alimtalk_sender_key is not set";
	if (template_code(m)[0] == '\0')
		return m->variant == 2 ?
			"courier.alimtalk_template_v2 is not set (a notice of the notice_v2 rollout)" :
			"courier.alimtalk_template is not set";
	for (int p = 0; params != NULL && p < params->n; p++)
	{
		if (courier_message_field(m, params->items[p].field) == NULL)
			return "a field courier.alimtalk_template_params names was not filled by the tms stage";
	}
	return NULL;
}

/*
 * template_code
 *		The template code for m's variant; "" when unset.
 */
static const char *
template_code(const CourierMessage *m)
{
	const char *code = (m->variant == 2) ?
		courier_alimtalk_template_v2 : courier_alimtalk_template;

	return code ? code : "";
}
