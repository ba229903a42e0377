/*-------------------------------------------------------------------------
 *
 * provider_nhn_sms.c
 *		The NHN Cloud SMS dialect (API v3.0): the rendered notice as an SMS,
 *		or as an LMS with courier's subject when it is longer than an SMS
 *		takes.
 *
 * Request:	POST {courier.tms_url}/sms/v3.0/appKeys/{appKey}/sender/sms
 *			(LMS: .../sender/mms, with "title")
 *			X-Secret-Key
 *			{"body", "sendNo", "senderGroupingKey", "recipientList":
 *			 [{"recipientNo", "recipientGroupingKey"}, ...]}, at most 1,000
 *			recipients
 * Answer:	{"header": {"isSuccessful", "resultCode", "resultMessage"},
 *			 "body": {"data": {"requestId", "statusCode", "sendResultList":
 *			 [{"recipientNo", "resultCode", "resultMessage", "recipientSeq",
 *			 "recipientGroupingKey"}]}}}
 *
 * The body (and title) belongs to the request, not to a recipient: one
 * request carries messages of one text only (nhn_sms_joinable).  courier's
 * notices name their order, so in practice every request carries one
 * message, whatever courier.tms_bulk_size says.  NHN's SMS API documents no
 * idempotency header: a retry after an unknown outcome may send twice; the
 * grouping keys (the message's key per recipient, the request's as
 * senderGroupingKey) let a later reconciliation find the first send.
 * Every result code courier knows is in codes[] below and in
 * docs/providers.md.
 *
 * No transfer and no database here: dispatch.c sends what this builds.
 *
 * IDENTIFICATION
 *		src/provider_nhn_sms.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "courier.h"
#include "provider.h"

#define PROVIDER_NAME "NHN SMS"

static void nhn_sms_build(CourierRequest *req, const CourierMessage *msgs);
static void nhn_sms_sign(CourierRequest *req);
static CourierOutcome nhn_sms_read_answer(const CourierRequest *req,
										  const CourierHttpResult *res,
										  CourierMessage *msgs);
static bool nhn_sms_joinable(const CourierMessage *first,
							 const CourierMessage *m);
static const char *nhn_sms_unsendable(const CourierMessage *m);
static void nhn_sms_receipt_query(CourierRequest *req, const char *request_id,
								  const char *key, const char *channel,
								  const char *to);
static int	nhn_sms_read_receipts(const CourierHttpResult *res,
								  CourierReceipt *receipts, int max);

const CourierProvider courier_provider_nhn_sms = {
	.name = "nhn_sms",
	.max_per_request = 1000,
	.looks_up_before_resend = true,
	.build = nhn_sms_build,
	.sign = nhn_sms_sign,
	.read_answer = nhn_sms_read_answer,
	.joinable = nhn_sms_joinable,
	.unsendable = nhn_sms_unsendable,
	.receipt_query = nhn_sms_receipt_query,
	.read_receipts = nhn_sms_read_receipts
};

/*
 * The result codes courier knows, from NHN's SMS "Result codes" page (API
 * result codes).  -1005 means an invalid search condition here (queries
 * only), not a reused idempotency key as in AlimTalk.
 */
static const CourierCode codes[] = {
	{"0", COURIER_CODE_ACCEPTED, false, "success"},

	/* our credentials, project or sender number */
	{"-1000", COURIER_CODE_CONFIG, false, "invalid appkey"},
	{"-1001", COURIER_CODE_CONFIG, false, "the appkey does not exist"},
	{"-1002", COURIER_CODE_CONFIG, false, "the appkey is closed"},
	{"-1003", COURIER_CODE_CONFIG, false, "not a member of the project"},
	{"-1004", COURIER_CODE_CONFIG, false, "IP not allowed"},
	{"-1007", COURIER_CODE_CONFIG, false, "invalid member"},
	{"-1008", COURIER_CODE_CONFIG, false, "the project is blocked"},
	{"-2312", COURIER_CODE_CONFIG, false, "the sender number is missing or not registered"},
	{"-2313", COURIER_CODE_CONFIG, false, "the sender number is blocked"},

	/* a request courier should never build */
	{"-1006", COURIER_CODE_CONFIG, false, "invalid message type"},
	{"-2001", COURIER_CODE_CONFIG, false, "the recipient list is empty"},
	{"-2016", COURIER_CODE_CONFIG, false, "more than 1,000 recipients"},
	{"-9995", COURIER_CODE_CONFIG, false, "invalid API version"},
	{"-9996", COURIER_CODE_CONFIG, false, "only application/json is supported"},
	{"-9997", COURIER_CODE_CONFIG, false, "invalid JSON"},
	{"-9998", COURIER_CODE_CONFIG, false, "no such API (check courier.tms_url)"},

	/* the message itself (its text is the request's body) */
	{"4", COURIER_CODE_PERMANENT, false, "parameter validation failed (body or title too long)"},
	{"-2014", COURIER_CODE_PERMANENT, false, "the title or body is empty"},
	{"-2015", COURIER_CODE_PERMANENT, false, "the title or body exceeds its byte limit"},
	{"-2018", COURIER_CODE_PERMANENT, false, "the recipient number is empty"},
	{"-2019", COURIER_CODE_PERMANENT, false, "invalid recipient number"},
	{"-2023", COURIER_CODE_PERMANENT, false, "the title or body has characters not allowed (emoji)"},
	{"-2024", COURIER_CODE_PERMANENT, false, "LMS/MMS cannot go abroad"},
	{"-6001", COURIER_CODE_PERMANENT, false, "the recipient refused (080 call rejection)"},

	/* the provider failed */
	{"-2021", COURIER_CODE_RETRYABLE, false, "system error (queue save failed)"},
	{"-9999", COURIER_CODE_RETRYABLE, false, "system error"},
	{NULL, COURIER_CODE_PERMANENT, false, NULL}
};

static const CourierNhnShape shape = {
	.provider = PROVIDER_NAME,
	.table = codes,
	.data_path = {"body", "data", NULL},
	.results_key = "sendResultList"
};

/*
 * nhn_sms_build
 *		The body for the request's messages, which share one text, channel
 *		and subject (nhn_sms_joinable): SMS, or LMS (the "mms" endpoint
 *		without attachments) with a title.
 */
static void
nhn_sms_build(CourierRequest *req, const CourierMessage *msgs)
{
	const CourierMessage *first = &msgs[req->idx[0]];
	bool		lms = (strcmp(first->channel, "lms") == 0);

	req->url = courier_provider_url("/sms/v3.0/appKeys/%s/sender/%s",
									courier_nhn_sms_appkey, lms ? "mms" : "sms");

	initStringInfo(&req->body);
	if (lms)
	{
		appendStringInfoString(&req->body, "{\"title\": ");
		escape_json(&req->body, first->subject ? first->subject : "");
		appendStringInfoString(&req->body, ", \"body\": ");
	}
	else
		appendStringInfoString(&req->body, "{\"body\": ");
	escape_json(&req->body, first->text);
	appendStringInfoString(&req->body, ", \"sendNo\": ");
	escape_json(&req->body, courier_nhn_sms_send_no);
	appendStringInfoString(&req->body, ", \"senderGroupingKey\": ");
	escape_json(&req->body, courier_idempotency_key(req, msgs));
	appendStringInfoString(&req->body, ", \"recipientList\": [");
	for (int k = 0; k < req->count; k++)
	{
		const CourierMessage *m = &msgs[req->idx[k]];

		if (k > 0)
			appendStringInfoString(&req->body, ", ");
		appendStringInfoString(&req->body, "{\"recipientNo\": ");
		escape_json(&req->body, m->to);
		appendStringInfoString(&req->body, ", \"recipientGroupingKey\": ");
		escape_json(&req->body, m->key);
		appendStringInfoChar(&req->body, '}');
	}
	appendStringInfoString(&req->body, "]}");

	req->headers = list_make1(pstrdup("Content-Type: application/json;charset=UTF-8"));
}

/*
 * nhn_sms_sign
 *		The secret key, as every request of NHN's SMS API v3.0 carries it.
 */
static void
nhn_sms_sign(CourierRequest *req)
{
	req->headers = lappend(req->headers,
						   psprintf("X-Secret-Key: %s", courier_nhn_sms_secret_key));
}

/*
 * nhn_sms_read_answer
 *		The shared reading of NHN answers (courier_read_nhn_answer), with
 *		this dialect's codes.
 */
static CourierOutcome
nhn_sms_read_answer(const CourierRequest *req, const CourierHttpResult *res,
					CourierMessage *msgs)
{
	return courier_read_nhn_answer(req, res, msgs, &shape);
}

/*
 * nhn_sms_joinable
 *		The text, its channel and its subject belong to the request.
 */
static bool
nhn_sms_joinable(const CourierMessage *first, const CourierMessage *m)
{
	return courier_same_text(first->channel, m->channel) &&
		courier_same_text(first->subject, m->subject) &&
		courier_same_text(first->text, m->text);
}

/*
 * nhn_sms_unsendable
 *		What the dialect lacks to send m.
 */
static const char *
nhn_sms_unsendable(const CourierMessage *m)
{
	if (courier_nhn_sms_appkey == NULL || courier_nhn_sms_appkey[0] == '\0')
		return "courier.nhn_sms_appkey is not set";
	if (courier_nhn_sms_secret_key == NULL || courier_nhn_sms_secret_key[0] == '\0')
		return "courier.nhn_sms_secret_key is not set";
	if (courier_nhn_sms_send_no == NULL || courier_nhn_sms_send_no[0] == '\0')
		return "courier.nhn_sms_send_no is not set";
	if (m->text == NULL || m->channel == NULL)
		return "the tms stage gave the message no text or channel";
	return NULL;
}

/*
 * nhn_sms_receipt_query
 *		The recipients of one request and how each ended: GET
 *		.../sender/sms?requestId=R, or .../sender/mms for an LMS request
 *		(NHN lists the two kinds apart), signed like a send; without a
 *		request id, the message whose key is key (recipientGroupingKey).
 */
static void
nhn_sms_receipt_query(CourierRequest *req, const char *request_id, const char *key,
					  const char *channel, const char *to)
{
	const char *kind = strcmp(channel, "lms") == 0 ? "mms" : "sms";

	if (request_id[0] != '\0')
		req->url = courier_provider_url("/sms/v3.0/appKeys/%s/sender/%s?requestId=%s&pageSize=1000",
										courier_nhn_sms_appkey, kind, request_id);
	else
	{
		/* an attempt that got no answer: did NHN take it?  By its key. */
		char		from[32];
		char		until[32];

		courier_search_window(from, until, sizeof(from), "%Y-%m-%d%%20%H:%M");
		req->url = courier_provider_url("/sms/v3.0/appKeys/%s/sender/%s?startRequestDate=%s&endRequestDate=%s&recipientGroupingKey=%s&pageSize=1000",
										courier_nhn_sms_appkey, kind, from, until, key);
	}
	nhn_sms_sign(req);
}

/*
 * nhn_sms_read_receipts
 *		body.data: msgStatus 3 is delivered, 0 failed (resultCode), 2 and
 *		anything else not final yet.
 */
static int
nhn_sms_read_receipts(const CourierHttpResult *res, CourierReceipt *receipts, int max)
{
	JsonbContainer *list = courier_nhn_receipt_list(res, "body", "data");
	int			n = 0;

	if (list == NULL)
		return -1;

	for (uint32 i = 0; i < JsonContainerSize(list) && n < max; i++)
	{
		JsonbContainer *e = courier_json_object(getIthJsonbValueFromContainer(list, i));
		CourierReceipt *r = &receipts[n];
		char	   *status;
		char	   *code;

		if (e == NULL)
			continue;
		courier_nhn_receipt_ids(r, e);
		status = courier_json_text(courier_json_key(e, "msgStatus"));
		code = courier_json_text(courier_json_key(e, "resultCode"));
		r->state = status == NULL ? COURIER_RECEIPT_PENDING :
			strcmp(status, "3") == 0 ? COURIER_RECEIPT_DELIVERED :
			strcmp(status, "0") == 0 ? COURIER_RECEIPT_FAILED :
			COURIER_RECEIPT_PENDING;
		if (r->state != COURIER_RECEIPT_PENDING)
			strlcpy(r->code, code ? code : status, sizeof(r->code));
		n++;
	}
	return n;
}
