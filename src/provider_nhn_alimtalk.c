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
 *			 value}, "resendParameter": {"isResend", ...},
 *			 "recipientGroupingKey"}, ...]}, at most 1,000 recipients
 * Answer:	{"header": {"resultCode", "resultMessage", "isSuccessful"},
 *			 "message": {"requestId", "sendResults": [{"recipientSeq",
 *			 "resultCode", "resultMessage", "recipientGroupingKey"}]}}
 *
 * The template code is courier.alimtalk_template, or courier.
 * alimtalk_template_v2 for an order inside the notice_v2 rollout; one
 * request carries one template.  courier.alimtalk_template_params says
 * which field of the notice fills which #{key}.  The rendered text is not
 * sent, except as the text of NHN's own SMS/LMS fallback: with courier.
 * alimtalk_fallback = provider each recipient asks NHN to resend it
 * (resendParameter) when the AlimTalk cannot be delivered; with none it
 * asks for no fallback, whatever the console sets.  A delivered message's
 * channel is "alimtalk".  Every result code courier knows is in codes[]
 * below and in docs/providers.md.
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
static void nhn_alimtalk_receipt_query(CourierRequest *req, const char *request_id,
								 const char *key, const char *channel,
								 const char *to);
static int	nhn_alimtalk_read_receipts(const CourierHttpResult *res,
									   CourierReceipt *receipts, int max);
static void append_resend(StringInfo body, const CourierMessage *m);

const CourierProvider courier_provider_nhn_alimtalk = {
	.name = "nhn_alimtalk",
	.max_per_request = 1000,
	.fallback_dialect = "nhn_sms",
	.build = nhn_alimtalk_build,
	.sign = nhn_alimtalk_sign,
	.read_answer = nhn_alimtalk_read_answer,
	.joinable = nhn_alimtalk_joinable,
	.unsendable = nhn_alimtalk_unsendable,
	.receipt_query = nhn_alimtalk_receipt_query,
	.read_receipts = nhn_alimtalk_read_receipts
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
	escape_json(&req->body, courier_template_code(&msgs[req->idx[0]]));
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
		appendStringInfoString(&req->body, "}, \"resendParameter\": ");
		append_resend(&req->body, m);
		appendStringInfoString(&req->body, ", \"recipientGroupingKey\": ");
		escape_json(&req->body, m->key);
		appendStringInfoChar(&req->body, '}');
	}
	appendStringInfoString(&req->body, "]}");

	req->headers = list_make1(pstrdup("Content-Type: application/json;charset=UTF-8"));
	req->headers = lappend(req->headers,
						   psprintf("X-NC-API-IDEMPOTENCY-KEY: %s", key));
}

/*
 * append_resend
 *		m's resendParameter: with courier.alimtalk_fallback = provider, NHN
 *		is to resend m's rendered text by SMS or LMS (by its EUC-KR length,
 *		courier_fallback_type; an LMS titled with m's subject) from courier.
 *		nhn_sms_send_no when the AlimTalk cannot be delivered (NHN's delivery
 *		codes 3018/3019/3020 and other failures); otherwise explicitly no
 *		resend, so that a fallback set in NHN's console does not send an SMS
 *		courier does not know of.
 */
static void
append_resend(StringInfo body, const CourierMessage *m)
{
	const char *type;

	if (courier_alimtalk_fallback != COURIER_ALIMTALK_FALLBACK_PROVIDER)
	{
		appendStringInfoString(body, "{\"isResend\": false}");
		return;
	}
	type = courier_fallback_type(m);
	appendStringInfo(body, "{\"isResend\": true, \"resendType\": \"%s\"", type);
	if (strcmp(type, "LMS") == 0)
	{
		appendStringInfoString(body, ", \"resendTitle\": ");
		escape_json(body, m->subject ? m->subject : COURIER_LMS_SUBJECT);
	}
	appendStringInfoString(body, ", \"resendContent\": ");
	escape_json(body, m->text);
	appendStringInfoString(body, ", \"resendSendNo\": ");
	escape_json(body, courier_nhn_sms_send_no);
	appendStringInfoChar(body, '}');
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
 *		this dialect's codes; what it delivered went by AlimTalk.
 */
static CourierOutcome
nhn_alimtalk_read_answer(const CourierRequest *req, const CourierHttpResult *res,
						 CourierMessage *msgs)
{
	CourierOutcome klass = courier_read_nhn_answer(req, res, msgs, &shape);

	courier_mark_delivered_channel(req, msgs, "alimtalk");
	return klass;
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
	const char *why;

	if (courier_nhn_alimtalk_appkey == NULL || courier_nhn_alimtalk_appkey[0] == '\0')
		return "courier.nhn_alimtalk_appkey is not set";
	if (courier_nhn_alimtalk_secret_key == NULL || courier_nhn_alimtalk_secret_key[0] == '\0')
		return "courier.nhn_alimtalk_secret_key is not set";
	if (courier_nhn_alimtalk_sender_key == NULL || courier_nhn_alimtalk_sender_key[0] == '\0')
		return "courier.nhn_alimtalk_sender_key is not set";
	if ((why = courier_template_code_unset(m)) != NULL)
		return why;
	if (courier_alimtalk_fallback == COURIER_ALIMTALK_FALLBACK_PROVIDER)
	{
		if (courier_nhn_sms_send_no == NULL || courier_nhn_sms_send_no[0] == '\0')
			return "courier.nhn_sms_send_no is not set (the sender of the fallback, courier.alimtalk_fallback = provider)";
		if (m->text == NULL)
			return "the tms stage gave the message no text for the fallback";
	}
	for (int p = 0; params != NULL && p < params->n; p++)
	{
		if (courier_message_field(m, params->items[p].field) == NULL)
			return "a field courier.alimtalk_template_params names was not filled by the tms stage";
	}
	return NULL;
}

/*
 * nhn_alimtalk_receipt_query
 *		The recipients of one request and how each ended: GET
 *		.../messages?requestId=R (the list answers up to 1,000 a page, as
 *		many as one request carries), signed like a send.
 */
static void
nhn_alimtalk_receipt_query(CourierRequest *req, const char *request_id,
						   const char *key, const char *channel, const char *to)
{
	if (request_id[0] != '\0')
		req->url = courier_provider_url("/alimtalk/v2.3/appkeys/%s/messages?requestId=%s&pageSize=1000",
										courier_nhn_alimtalk_appkey, request_id);
	else
	{
		/*
		 * Taken under a request courier never learned (-1005): search by
		 * the key it carried as recipientGroupingKey, over the days a
		 * receipt is asked for.
		 */
		char		from[32];
		char		until[32];

		courier_search_window(from, until, sizeof(from), "%Y-%m-%d%%20%H:%M");
		req->url = courier_provider_url("/alimtalk/v2.3/appkeys/%s/messages?startRequestDate=%s&endRequestDate=%s&recipientGroupingKey=%s&pageSize=1000",
										courier_nhn_alimtalk_appkey, from, until, key);
	}
	nhn_alimtalk_sign(req);
}

/*
 * nhn_alimtalk_read_receipts
 *		messageSearchResultResponse.messages: messageStatus COMPLETED is
 *		delivered; FAILED is failed with its resultCode, unless the provider
 *		resends it by SMS/LMS (resendStatus RSC03 under way, RSC04 the
 *		fallback delivered, RSC05 it failed: the receipt is then the
 *		fallback's, and the AlimTalk code its reason); anything else
 *		(READY, ...) is not final yet.  A failure NHN does not resend
 *		whose code calls for SMS/LMS is marked fallback_due.
 */
static int
nhn_alimtalk_read_receipts(const CourierHttpResult *res, CourierReceipt *receipts,
						   int max)
{
	JsonbContainer *list = courier_nhn_receipt_list(res, "messageSearchResultResponse", "messages");
	int			n = 0;

	if (list == NULL)
		return -1;

	for (uint32 i = 0; i < JsonContainerSize(list) && n < max; i++)
	{
		JsonbContainer *e = courier_json_object(getIthJsonbValueFromContainer(list, i));
		CourierReceipt *r = &receipts[n];
		char	   *status;
		char	   *code;
		char	   *resend;

		if (e == NULL)
			continue;
		courier_nhn_receipt_ids(r, e);
		status = courier_json_text(courier_json_key(e, "messageStatus"));
		code = courier_json_text(courier_json_key(e, "resultCode"));
		resend = courier_json_text(courier_json_key(e, "resendStatus"));

		r->state = COURIER_RECEIPT_PENDING;
		if (status != NULL && strcmp(status, "COMPLETED") == 0)
			r->state = COURIER_RECEIPT_DELIVERED;
		else if (status != NULL &&
				 (strcmp(status, "FAILED") == 0 || strcmp(status, "CANCEL") == 0))
		{
			r->state = COURIER_RECEIPT_FAILED;
			if (resend != NULL &&
				(strcmp(resend, "RSC03") == 0 || strcmp(resend, "RSC04") == 0 ||
				 strcmp(resend, "RSC05") == 0))
			{
				/* the customer's receipt is the fallback's */
				strlcpy(r->fallback_reason, code ? code : "", sizeof(r->fallback_reason));
				code = resend;
				r->state = strcmp(resend, "RSC04") == 0 ? COURIER_RECEIPT_DELIVERED :
					strcmp(resend, "RSC05") == 0 ? COURIER_RECEIPT_FAILED :
					COURIER_RECEIPT_PENDING;
			}
			else if (code == NULL)
				code = status;
			else
				r->fallback_due = courier_alimtalk_fallback_code(code);
		}
		if (r->state != COURIER_RECEIPT_PENDING && code != NULL)
			strlcpy(r->code, code, sizeof(r->code));
		n++;
	}
	return n;
}
