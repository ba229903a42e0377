/*-------------------------------------------------------------------------
 *
 * provider_common.c
 *		What the TMS provider dialects share: setting a message's outcome, a
 *		request's idempotency key, reading a JSON answer without raising an
 *		error, and the Naver Cloud API gateway signature.
 *
 * Helpers only: no dialect, no transfer (http.c), no loop (dispatch.c).
 *
 * IDENTIFICATION
 *		src/provider_common.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "common/hmac.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "provider.h"

#define MAX_ANSWER_DEPTH 64		/* deeper JSON answers are unreadable */

/* The resource owner HMAC contexts need outside a transaction. */
static ResourceOwner hmac_owner = NULL;

static bool answer_is_json(const char *body, size_t len);

/*
 * courier_set_outcome
 *		What became of message m, and why (code and error go to its failure
 *		history).  Only a delivered message keeps its provider id.
 */
void
courier_set_outcome(CourierMessage *m, CourierOutcome outcome, bool unknown,
					int http_status, const char *code, const char *error)
{
	m->outcome = outcome;
	m->unknown = unknown;
	m->http_status = http_status;
	strlcpy(m->code, code, sizeof(m->code));
	strlcpy(m->error, error, sizeof(m->error));
	if (outcome != COURIER_OUT_DELIVERED)
		m->provider_id[0] = '\0';
}

/*
 * courier_set_request_outcome
 *		The same outcome for every message of req.
 */
void
courier_set_request_outcome(const CourierRequest *req, CourierMessage *msgs,
							CourierOutcome outcome, bool unknown,
							int http_status, const char *code,
							const char *error)
{
	for (int k = 0; k < req->count; k++)
		courier_set_outcome(&msgs[req->idx[k]], outcome, unknown, http_status,
							code, error);
}

/*
 * courier_idempotency_key
 *		The request's idempotency key: the message's own for one message;
 *		for a bulk request the first and last keys and the count, which are
 *		the same whenever the same messages are sent together again.
 *		palloc'd.
 */
char *
courier_idempotency_key(const CourierRequest *req, const CourierMessage *msgs)
{
	const CourierMessage *first = &msgs[req->idx[0]];
	const CourierMessage *last = &msgs[req->idx[req->count - 1]];

	if (req->count == 1)
		return pstrdup(first->key);
	return psprintf("bulk-%s-%s-%d", first->key, last->key, req->count);
}

/*
 * courier_parse_json_answer
 *		An answer's body as jsonb, or NULL when it is not well-formed JSON.
 *		The body is checked by the JSON parser that reports instead of
 *		throwing before it is converted, so no error is raised (and none
 *		caught) here.
 */
Jsonb *
courier_parse_json_answer(const char *body, size_t len)
{
	if (!answer_is_json(body, len))
		return NULL;
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(body)));
}

/*
 * answer_is_json
 *		Is the body well-formed JSON that jsonb_in will take without an
 *		error?  pg_parse_json reports instead of throwing; the nesting is
 *		bounded first, since the parser recurses (and a stack-depth check
 *		would throw).
 */
static bool
answer_is_json(const char *body, size_t len)
{
	JsonLexContext *lex;
	int			depth = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		char		ch = body[i];

		if (in_string)
		{
			if (ch == '\\')
				i++;
			else if (ch == '"')
				in_string = false;
		}
		else if (ch == '"')
			in_string = true;
		else if (ch == '{' || ch == '[')
		{
			if (++depth > MAX_ANSWER_DEPTH)
				return false;
		}
		else if (ch == '}' || ch == ']')
			depth--;
	}
	if (strlen(body) != len)
		return false;			/* a NUL inside */
	lex = makeJsonLexContextCstringLen(unconstify(char *, body), (int) len,
									   GetDatabaseEncoding(), true);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/*
 * courier_sign_ncp
 *		Sign req the way the Naver Cloud API gateway (SENS) wants: a
 *		millisecond timestamp, the access key, and base64(HMAC-SHA256(secret,
 *		"POST <path>\n<timestamp>\n<access key>")), as three header lines.
 *		For a dialect's sign step: the timestamp is part of what is signed,
 *		so it is computed for every attempt.  Allocates in the current
 *		memory context (the dispatch's).
 */
void
courier_sign_ncp(CourierRequest *req, const char *access_key, const char *secret)
{
	char	   *ts;
	char	   *to_sign;
	uint8		mac[32];
	char		b64[64];
	int			b64len;
	pg_hmac_ctx *ctx;
	bool		ok;

	if (secret == NULL)
		secret = "";
	ts = psprintf(INT64_FORMAT, (int64) (GetCurrentTimestamp() / 1000 +
										 (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000));
	to_sign = psprintf("POST %s\n%s\n%s", courier_http_url_path(req->url),
					   ts, access_key);

	/*
	 * With OpenSSL, PostgreSQL registers an HMAC context with the current
	 * resource owner, and a worker sends with no transaction (so no owner)
	 * open: lend it one of its own for the few calls the signature takes.
	 */
	if (CurrentResourceOwner == NULL)
	{
		if (hmac_owner == NULL)
			hmac_owner = ResourceOwnerCreate(NULL, "courier hmac");
		CurrentResourceOwner = hmac_owner;
	}
	ctx = pg_hmac_create(PG_SHA256);
	ok = (ctx != NULL &&
		  pg_hmac_init(ctx, (const uint8 *) secret, strlen(secret)) == 0 &&
		  pg_hmac_update(ctx, (const uint8 *) to_sign, strlen(to_sign)) == 0 &&
		  pg_hmac_final(ctx, mac, sizeof(mac)) == 0);
	pg_hmac_free(ctx);
	if (CurrentResourceOwner == hmac_owner)
		CurrentResourceOwner = NULL;
	if (!ok)
		elog(ERROR, "courier: could not compute the HMAC signature");
	b64len = pg_b64_encode((const char *) mac, sizeof(mac), b64, sizeof(b64) - 1);
	b64[Max(b64len, 0)] = '\0';

	req->headers = lappend(req->headers, psprintf("x-ncp-apigw-timestamp: %s", ts));
	req->headers = lappend(req->headers, psprintf("x-ncp-iam-access-key: %s", access_key));
	req->headers = lappend(req->headers, psprintf("x-ncp-apigw-signature-v2: %s", b64));
}
