/*-------------------------------------------------------------------------
 *
 * provider_generic.c
 *		The generic TMS dialect, courier's own JSON contract: a bulk JSON
 *		body, the idempotency key in courier.tms_idempotency_header,
 *		courier.tms_auth_header as is, a Naver-style HMAC signature when
 *		courier.tms_hmac_access_key is set; answers read by the HTTP status
 *		and, for a 2xx, by the 2xx rule.
 *
 * Request:	{"messages": [{"id", "to", "channel", "subject", "text"}, ...]}
 * Answer:	{"results": [{"id", "status", "code", "provider_id"}, ...]}
 *
 * No transfer and no database here: dispatch.c sends what this builds, and
 * hands back what came.
 *
 * IDENTIFICATION
 *		src/provider_generic.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"
#include "utils/jsonb.h"

#include "courier.h"
#include "provider.h"

static void generic_build(CourierRequest *req, const CourierMessage *msgs);
static void generic_sign(CourierRequest *req);
static CourierOutcome generic_read_answer(const CourierRequest *req,
										  const CourierHttpResult *res,
										  CourierMessage *msgs);
static CourierOutcome apply_results(const CourierRequest *req,
									const CourierHttpResult *res,
									CourierMessage *msgs);

const CourierProvider courier_provider_generic = {
	.name = "generic",
	.max_per_request = 1000,
	.build = generic_build,
	.sign = generic_sign,
	.read_answer = generic_read_answer
};

/*
 * generic_build
 *		The body {"messages": [...]}, JSON content, the idempotency key and
 *		the static authorization header, for courier.tms_url.
 */
static void
generic_build(CourierRequest *req, const CourierMessage *msgs)
{
	req->url = pstrdup(courier_tms_url);

	initStringInfo(&req->body);
	appendStringInfoString(&req->body, "{\"messages\": [");
	for (int k = 0; k < req->count; k++)
	{
		const CourierMessage *m = &msgs[req->idx[k]];

		if (k > 0)
			appendStringInfoString(&req->body, ", ");
		appendStringInfoString(&req->body, "{\"id\": ");
		escape_json(&req->body, m->key);
		appendStringInfoString(&req->body, ", \"to\": ");
		escape_json(&req->body, m->to);
		appendStringInfoString(&req->body, ", \"channel\": ");
		escape_json(&req->body, m->channel);
		if (m->subject)
		{
			appendStringInfoString(&req->body, ", \"subject\": ");
			escape_json(&req->body, m->subject);
		}
		appendStringInfoString(&req->body, ", \"text\": ");
		escape_json(&req->body, m->text);
		appendStringInfoChar(&req->body, '}');
	}
	appendStringInfoString(&req->body, "]}");

	req->headers = list_make1(pstrdup("Content-Type: application/json"));
	req->headers = lappend(req->headers,
						   psprintf("%s: %s", courier_tms_idempotency_header,
									courier_idempotency_key(req, msgs)));
	if (courier_tms_auth_header && courier_tms_auth_header[0])
		req->headers = lappend(req->headers, pstrdup(courier_tms_auth_header));
}

/*
 * generic_sign
 *		The SENS-style signature, when courier.tms_hmac_access_key is set.
 */
static void
generic_sign(CourierRequest *req)
{
	if (courier_tms_hmac_access_key && courier_tms_hmac_access_key[0])
		courier_sign_ncp(req, courier_tms_hmac_access_key, courier_tms_hmac_secret);
}

/*
 * generic_read_answer
 *		Classify an answer by its HTTP status:
 *
 *	2xx												apply_results (the 2xx rule)
 *	429, 503										THROTTLED (Retry-After)
 *	401, 403										UNAUTHORIZED
 *	408, other 5xx, 1xx, 3xx						RETRY
 *	other 4xx										REJECTED
 */
static CourierOutcome
generic_read_answer(const CourierRequest *req, const CourierHttpResult *res,
					CourierMessage *msgs)
{
	int			http = res->status;
	CourierOutcome klass;
	const char *code;
	char		error[256];

	if (http >= 200 && http < 300)
		return apply_results(req, res, msgs);

	snprintf(error, sizeof(error), "TMS answered HTTP %d", http);
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
	courier_set_request_outcome(req, msgs, klass, false, http, code, error);
	return klass;
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
 */
static CourierOutcome
apply_results(const CourierRequest *req, const CourierHttpResult *res,
			  CourierMessage *msgs)
{
	int			http_status = res->status;
	Jsonb	   *jb;
	JsonbValue *results;

	courier_set_request_outcome(req, msgs, COURIER_OUT_DELIVERED, false, http_status, "accepted", "");

	if (res->body_len == 0)
		return COURIER_OUT_DELIVERED;	/* no body: accepted as a whole */

	jb = courier_parse_json_answer(res->body, res->body_len);
	if (jb == NULL || JB_ROOT_IS_SCALAR(jb) || !JB_ROOT_IS_OBJECT(jb))
	{
		courier_set_request_outcome(req, msgs, COURIER_OUT_RETRY, true, http_status,
				"malformed_response", "TMS answered 2xx with an unreadable body");
		return COURIER_OUT_RETRY;
	}
	results = getKeyJsonValueFromContainer(&jb->root, "results", 7, NULL);
	if (results == NULL)
		return COURIER_OUT_DELIVERED;	/* no per-message verdicts */
	if (results->type != jbvBinary || !JsonContainerIsArray(results->val.binary.data))
	{
		courier_set_request_outcome(req, msgs, COURIER_OUT_RETRY, true, http_status,
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
		if ((int) r < req->count && strcmp(msgs[req->idx[r]].key, idstr) == 0)
			match = req->idx[r];
		for (int k = 0; match < 0 && k < req->count; k++)
		{
			if (strcmp(msgs[req->idx[k]].key, idstr) == 0)
				match = req->idx[k];
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
			courier_set_outcome(&msgs[match], COURIER_OUT_REJECTED, false, http_status,
								c ? c : "rejected",
								psprintf("TMS rejected the message: %s", c ? c : "rejected"));
		else
			courier_set_outcome(&msgs[match], COURIER_OUT_RETRY, true, http_status,
								c ? c : "unknown_status",
								psprintf("TMS answered status \"%s\" for the message: neither accepted nor rejected",
										 st));
	}
	return COURIER_OUT_DELIVERED;
}
