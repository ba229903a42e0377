/*-------------------------------------------------------------------------
 *
 * provider_common.c
 *		What the TMS provider dialects share: setting a message's outcome, a
 *		request's idempotency key, reading a JSON answer without raising an
 *		error, the Naver Cloud API gateway signature, a provider's URL, and
 *		classifying an answer by a table of the provider's result codes
 *		(with the log lines for codes courier does not know and for
 *		configuration errors).
 *
 * Helpers only: no dialect, no transfer (http.c), no loop (dispatch.c).
 * Nothing here logs a phone number or a message's text.
 *
 * IDENTIFICATION
 *		src/provider_common.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "common/base64.h"
#include "common/hashfn.h"
#include "common/hmac.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "courier.h"
#include "provider.h"

#define MAX_ANSWER_DEPTH 64		/* deeper JSON answers are unreadable */

/* Unknown result codes logged once each per process; past these, none. */
#define MAX_UNKNOWN_CODES_LOGGED 64
#define MAX_CODE_LEN 32

/* A configuration error is logged again after this long. */
#define CONFIG_LOG_INTERVAL_MS 60000

/* The resource owner HMAC contexts need outside a transaction. */
static ResourceOwner hmac_owner = NULL;

/* "provider code" of the unknown codes already logged by this process */
static char unknown_logged[MAX_UNKNOWN_CODES_LOGGED][64];
static int	n_unknown_logged = 0;

/* the configuration error this process logged last, and when */
static char config_logged[256];
static TimestampTz config_logged_at = 0;

static bool answer_is_json(const char *body, size_t len);
static void note_unknown(const char *provider, const char *code,
						 const char *traceparent);
static void printable_code(char *dst, size_t len, const char *code);
static char *masked_digits(const char *text);

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
 *		for a bulk request the first key, the count and a 64-bit digest of
 *		every key in order, so the key is the same exactly when the same
 *		messages are sent together again.  (Before 0.4 it was the first and
 *		last keys and the count: two requests with different messages
 *		between the same ends shared a key, and a provider that de-duplicates
 *		by it dropped the second.)  At most 64 + 29 characters; palloc'd.
 *
 * A bulk key is stable only while the group is: the tms stage retries each
 * message after its own jittered back-off, so a message retried after a
 * bulk request usually travels with other messages, under another key.
 * Only one-message requests (courier.tms_bulk_size = 1) keep one key per
 * message across every attempt whose outcome is unknown.
 *
 * An attempt the provider answered with a refusal (-9999: a system error,
 * the recipient refused, outcome known) makes a new key for the next:
 * "<key>-r<n>" after n refusals.  A provider may keep the key of a request
 * it refused (NHN keeps an idempotency key 10 minutes, and does not say
 * whether a refused request's counts: the mock's does), and would answer
 * the retry -1005, which courier reads as "an earlier attempt was taken".
 * That reading holds only after an attempt whose outcome is unknown, and
 * those keep the key.
 */
char *
courier_idempotency_key(const CourierRequest *req, const CourierMessage *msgs)
{
	const CourierMessage *first = &msgs[req->idx[0]];
	uint64		digest = 0;

	if (req->count == 1)
		return first->refusals == 0 ? pstrdup(first->key) :
			psprintf("%s-r%d", first->key, first->refusals);
	for (int k = 0; k < req->count; k++)
	{
		const CourierMessage *m = &msgs[req->idx[k]];

		digest = hash_combine64(digest,
								hash_bytes_extended((const unsigned char *) m->key,
													(int) strlen(m->key),
													k + ((uint64) m->refusals << 32)));
	}
	return psprintf("bulk-%.64s-%d-%016llx", first->key, req->count,
					(unsigned long long) digest);
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
 * courier_hmac_sha256
 *		mac = HMAC-SHA256(key, data[0..len)): the SENS signature's and a
 *		subscriber's (provider_subscriber.c).
 */
void
courier_hmac_sha256(const char *key, const uint8 *data, size_t len,
					uint8 mac[32])
{
	pg_hmac_ctx *ctx;
	bool		ok;

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
		  pg_hmac_init(ctx, (const uint8 *) key, strlen(key)) == 0 &&
		  pg_hmac_update(ctx, data, len) == 0 &&
		  pg_hmac_final(ctx, mac, 32) == 0);
	pg_hmac_free(ctx);
	if (CurrentResourceOwner == hmac_owner)
		CurrentResourceOwner = NULL;
	if (!ok)
		elog(ERROR, "courier: could not compute the HMAC signature");
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

	if (secret == NULL)
		secret = "";
	ts = psprintf(INT64_FORMAT, (int64) (GetCurrentTimestamp() / 1000 +
										 (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000));
	/* a request without a body is a query (GET) */
	to_sign = psprintf("%s %s\n%s\n%s", req->body.data != NULL ? "POST" : "GET",
					   courier_http_url_path(req->url), ts, access_key);

	courier_hmac_sha256(secret, (const uint8 *) to_sign, strlen(to_sign), mac);
	b64len = pg_b64_encode((const char *) mac, sizeof(mac), b64, sizeof(b64) - 1);
	b64[Max(b64len, 0)] = '\0';

	req->headers = lappend(req->headers, psprintf("x-ncp-apigw-timestamp: %s", ts));
	req->headers = lappend(req->headers, psprintf("x-ncp-iam-access-key: %s", access_key));
	req->headers = lappend(req->headers, psprintf("x-ncp-apigw-signature-v2: %s", b64));
}

/*
 * courier_provider_url
 *		courier.tms_url, the provider's base URL, without its trailing
 *		slashes, followed by the path fmt gives (which starts with "/").
 *		palloc'd.
 */
char *
courier_provider_url(const char *fmt,...)
{
	const char *base = courier_tms_url ? courier_tms_url : "";
	int			baselen = (int) strlen(base);
	StringInfoData url;

	while (baselen > 0 && base[baselen - 1] == '/')
		baselen--;
	initStringInfo(&url);
	appendBinaryStringInfo(&url, base, baselen);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&url, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&url, needed);
	}
	return url.data;
}

/*
 * courier_message_field
 *		The value of one field of m, as a template parameter carries it;
 *		NULL when the tms stage did not fill it.
 */
const char *
courier_message_field(const CourierMessage *m, CourierField field)
{
	switch (field)
	{
		case COURIER_FIELD_ORDER_ID:
			return m->order_id;
		case COURIER_FIELD_PRODUCT:
			return m->product;
		case COURIER_FIELD_REASON:
			return m->reason;
		case COURIER_FIELD_SHIP_DATE:
			return m->ship_date;
	}
	return NULL;
}

/*
 * courier_same_text
 *		Are a and b the same text, NULL being the same only as NULL?  For a
 *		dialect's joinable: the fields one request carries for all.
 */
bool
courier_same_text(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/*
 * courier_fallback_type
 *		The type of the SMS/LMS an AlimTalk provider is asked to resend m as
 *		(courier.alimtalk_fallback = provider): the channel the tms stage
 *		routed m's rendered text to by its length in EUC-KR, "SMS" up to
 *		COURIER_SMS_MAX_BYTES, "LMS" beyond.  (The length is not measured
 *		again here: that needs a transaction, and a dialect runs without.)
 */
const char *
courier_fallback_type(const CourierMessage *m)
{
	return (m->channel != NULL && strcmp(m->channel, "lms") == 0) ? "LMS" : "SMS";
}

/*
 * courier_text_hash
 *		A message's text as a number, to match a message a provider lists
 *		to the notice it was rendered from without keeping either text
 *		(CourierReceipt.text_hash; never 0, which means "not given").
 */
uint32
courier_text_hash(const char *text)
{
	uint32		h = hash_bytes((const unsigned char *) text, (int) strlen(text));

	return h != 0 ? h : 1;
}

/*
 * courier_alimtalk_fallback_code
 *		Does a final AlimTalk code say that AlimTalk cannot reach the
 *		customer, so that the notice is to go out by SMS/LMS instead?
 *		Kakao's delivery codes 3018 (cannot send: inactive user, ...), 3019
 *		(not a KakaoTalk user) and 3020 (AlimTalk blocked), as NHN passes
 *		them and as SENS does (messageStatusCode, zero-padded to four
 *		digits either way).
 */
bool
courier_alimtalk_fallback_code(const char *code)
{
	return code != NULL &&
		(strcmp(code, "3018") == 0 || strcmp(code, "3019") == 0 ||
		 strcmp(code, "3020") == 0);
}

/*
 * courier_mark_delivered_channel
 *		For a dialect that delivers by another channel than the SMS/LMS the
 *		tms stage routed to (AlimTalk): the channel each delivered message
 *		of req went by, which is what its notice records.  Called from
 *		read_answer, once the outcomes are set; channel must be a constant.
 */
void
courier_mark_delivered_channel(const CourierRequest *req, CourierMessage *msgs,
							   const char *channel)
{
	for (int k = 0; k < req->count; k++)
	{
		CourierMessage *m = &msgs[req->idx[k]];

		if (m->outcome == COURIER_OUT_DELIVERED)
			m->channel = channel;
	}
}

/*
 * courier_json_key
 *		The value of key in a JSON object, or NULL when object is NULL or
 *		has no such key.
 */
JsonbValue *
courier_json_key(JsonbContainer *object, const char *key)
{
	if (object == NULL || !JsonContainerIsObject(object))
		return NULL;
	return getKeyJsonValueFromContainer(object, key, (uint32) strlen(key), NULL);
}

/*
 * courier_json_object
 *		v as a JSON object, or NULL when it is none.
 */
JsonbContainer *
courier_json_object(JsonbValue *v)
{
	if (v == NULL || v->type != jbvBinary ||
		!JsonContainerIsObject(v->val.binary.data))
		return NULL;
	return v->val.binary.data;
}

/*
 * courier_json_array
 *		v as a JSON array, or NULL when it is none.
 */
JsonbContainer *
courier_json_array(JsonbValue *v)
{
	if (v == NULL || v->type != jbvBinary ||
		!JsonContainerIsArray(v->val.binary.data))
		return NULL;
	return v->val.binary.data;
}

/*
 * courier_json_text
 *		A scalar as text: a string as is, a number as it was written ("0",
 *		"-3003"), a boolean as true or false.  NULL for null, an object, an
 *		array or nothing.  palloc'd.
 */
char *
courier_json_text(JsonbValue *v)
{
	if (v == NULL)
		return NULL;
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			return NULL;
	}
}

/*
 * courier_code_lookup
 *		The row of table (ended by a row with a NULL code) for code, or NULL
 *		when courier does not know the code.
 */
const CourierCode *
courier_code_lookup(const CourierCode *table, const char *code)
{
	if (code == NULL)
		return NULL;
	for (const CourierCode *c = table; c->code != NULL; c++)
	{
		if (strcmp(c->code, code) == 0)
			return c;
	}
	return NULL;
}

/*
 * courier_apply_code
 *		Give message m the outcome its result code calls for, by the
 *		dialect's table:
 *
 *	accepted						DELIVERED (the caller sets provider_id)
 *	permanent						REJECTED; but configuration when the code
 *									came for the whole request and is about
 *									the request's own fields (request_config)
 *	retryable						RETRY
 *	configuration					UNAUTHORIZED, logged (courier_note_config)
 *	fallback						FALLBACK
 *	taken (key used already)		REJECTED, outcome unknown: never resent
 *	unknown (no row)				RETRY, outcome unknown, so sent again
 *									under the same key and failed once its
 *									attempts are used up; logged once per
 *									code and process
 *
 * provider names the dialect in errors and logs; provider_message (the
 * answer's own words, may be NULL) goes to the message's error, for the
 * failure history only.  request_level: the code was given for the whole
 * request, not for this recipient.
 */
void
courier_apply_code(CourierMessage *m, const char *provider,
				   const CourierCode *table, const char *code,
				   bool request_level, int http_status,
				   const char *provider_message)
{
	const CourierCode *c = courier_code_lookup(table, code);
	char		shown[MAX_CODE_LEN + 1];
	char	   *error;

	printable_code(shown, sizeof(shown), code);
	if (c == NULL)
	{
		note_unknown(provider, shown, m->traceparent);
		courier_set_outcome(m, COURIER_OUT_RETRY, true, http_status, shown,
							psprintf("%s answered result code %s, which courier does not know (%s): sent again",
									 provider, shown,
									 provider_message ? provider_message : "no message"));
		return;
	}

	error = psprintf("%s %s: %s%s%s%s", provider, c->code, c->meaning,
					 provider_message ? " (" : "",
					 provider_message ? provider_message : "",
					 provider_message ? ")" : "");
	switch (c->klass)
	{
		case COURIER_CODE_ACCEPTED:
			courier_set_outcome(m, COURIER_OUT_DELIVERED, false, http_status,
								c->code, "");
			break;
		case COURIER_CODE_PERMANENT:
			if (request_level && c->request_config)
			{
				courier_note_config(provider, c->code, c->meaning);
				courier_set_outcome(m, COURIER_OUT_UNAUTHORIZED, false,
									http_status, c->code, error);
			}
			else
				courier_set_outcome(m, COURIER_OUT_REJECTED, false,
									http_status, c->code, error);
			break;
		case COURIER_CODE_RETRYABLE:
			courier_set_outcome(m, COURIER_OUT_RETRY, false, http_status,
								c->code, error);
			break;
		case COURIER_CODE_CONFIG:
			courier_note_config(provider, c->code, c->meaning);
			courier_set_outcome(m, COURIER_OUT_UNAUTHORIZED, false,
								http_status, c->code, error);
			break;
		case COURIER_CODE_FALLBACK:
			courier_set_outcome(m, COURIER_OUT_FALLBACK, false, http_status,
								c->code, error);
			break;
		case COURIER_CODE_TAKEN:

			/*
			 * The provider has the message already (an earlier attempt
			 * whose answer was lost): accepted, under a request id this
			 * answer does not give.  Never sent again; the receipt stage
			 * finds the send by the message's key (receipts.c).
			 */
			courier_set_outcome(m, COURIER_OUT_DELIVERED, true, http_status,
								c->code, error);
			m->provider_id[0] = '\0';
			break;
	}
}

/*
 * courier_apply_http_status
 *		Classify a request by its HTTP status alone, for a dialect whose
 *		answer carried no result code it could read:
 *
 *	429, 503							THROTTLED (Retry-After)
 *	401, 403, 404						configuration: our credentials, or a
 *										URL, app key or service id that is
 *										not there
 *	408, 5xx, 1xx, 3xx					RETRY
 *	other 4xx (400, 413, ...)			RETRY: the provider refused the
 *										request as a whole, and does not say
 *										whether for a message or for our
 *										configuration; retried, so that a
 *										configuration error opens the breaker
 *										(failures in a row) instead of failing
 *										every notice, and a bad message fails
 *										once its attempts are used up
 *	2xx									RETRY, outcome unknown: accepted, but
 *										unreadable
 */
void
courier_apply_http_status(const CourierRequest *req, CourierMessage *msgs,
						  const char *provider, int http_status,
						  const char *provider_message)
{
	CourierOutcome outcome;
	bool		unknown = false;
	char		code[32];
	char	   *error;

	snprintf(code, sizeof(code), "http_%d", http_status);
	error = psprintf("%s answered HTTP %d%s%s%s", provider, http_status,
					 provider_message ? " (" : "",
					 provider_message ? provider_message : "",
					 provider_message ? ")" : "");
	if (http_status == 429 || http_status == 503)
		outcome = COURIER_OUT_THROTTLED;
	else if (http_status == 401 || http_status == 403 || http_status == 404)
	{
		outcome = COURIER_OUT_UNAUTHORIZED;
		courier_note_config(provider, code,
							http_status == 404 ?
							"the URL, app key or service id is not there (HTTP 404)" :
							"the provider refused courier's credentials");
	}
	else if (http_status >= 200 && http_status < 300)
	{
		outcome = COURIER_OUT_RETRY;
		unknown = true;
		strlcpy(code, "malformed_response", sizeof(code));
		error = psprintf("%s answered HTTP %d with a body courier cannot read",
						 provider, http_status);
	}
	else
		outcome = COURIER_OUT_RETRY;
	courier_set_request_outcome(req, msgs, outcome, unknown, http_status, code,
								error);
}

/*
 * courier_request_class
 *		A request's class for the shared limits, from its messages'
 *		outcomes: configuration if any message met a configuration error
 *		(the breaker opens at once); else throttled if any was; else
 *		DELIVERED if the provider took or judged any message (delivered,
 *		rejected, fallback: it answers); else RETRY if any is to be retried
 *		(failures in a row open the breaker); else DELIVERED.
 */
CourierOutcome
courier_request_class(const CourierRequest *req, const CourierMessage *msgs)
{
	bool		config = false,
				throttled = false,
				judged = false,
				retry = false;

	for (int k = 0; k < req->count; k++)
	{
		switch (msgs[req->idx[k]].outcome)
		{
			case COURIER_OUT_UNAUTHORIZED:
				config = true;
				break;
			case COURIER_OUT_THROTTLED:
				throttled = true;
				break;
			case COURIER_OUT_DELIVERED:
			case COURIER_OUT_REJECTED:
			case COURIER_OUT_FALLBACK:
				judged = true;
				break;
			case COURIER_OUT_RETRY:
				retry = true;
				break;
			case COURIER_OUT_PENDING:
			case COURIER_OUT_CLOSED:
				break;
		}
	}
	if (config)
		return COURIER_OUT_UNAUTHORIZED;
	if (throttled)
		return COURIER_OUT_THROTTLED;
	if (judged)
		return COURIER_OUT_DELIVERED;
	if (retry)
		return COURIER_OUT_RETRY;
	return COURIER_OUT_DELIVERED;
}

/*
 * courier_note_config
 *		Log a configuration error (a code the provider gave, or a parameter
 *		courier lacks) as a WARNING: the tms stage releases such messages
 *		without recording why, and its alert cannot say which setting is
 *		wrong.  The same error is logged again only after a minute, so a
 *		breaker probing every few seconds does not flood the log.
 */
void
courier_note_config(const char *provider, const char *code, const char *why)
{
	char		line[256];
	TimestampTz now = GetCurrentTimestamp();

	snprintf(line, sizeof(line), "%s %s: %s", provider, code, why);
	if (strcmp(line, config_logged) == 0 &&
		!TimestampDifferenceExceeds(config_logged_at, now, CONFIG_LOG_INTERVAL_MS))
		return;
	strlcpy(config_logged, line, sizeof(config_logged));
	config_logged_at = now;
	ereport(WARNING,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("courier: TMS configuration error: %s", line),
			 errdetail("The messages concerned are not sent and spend no attempt; the circuit breaker opens and an alert is raised."),
			 errhint("Fix the setting or the provider's console (docs/providers.md), then reload the configuration.")));
}

/*
 * note_unknown
 *		Log, once per process, that provider answered a result code courier
 *		does not know.  Only the provider, the code and the trace id of the
 *		message that got it are logged (the provider's log has the same
 *		trace id: the request to show its support), never a number or a
 *		text.
 */
static void
note_unknown(const char *provider, const char *code, const char *traceparent)
{
	char		entry[64];

	snprintf(entry, sizeof(entry), "%s %s", provider, code);
	for (int i = 0; i < n_unknown_logged; i++)
	{
		if (strcmp(unknown_logged[i], entry) == 0)
			return;
	}
	if (n_unknown_logged >= MAX_UNKNOWN_CODES_LOGGED)
		return;
	strlcpy(unknown_logged[n_unknown_logged++], entry, sizeof(unknown_logged[0]));
	ereport(LOG,
			(errmsg("courier: %s answered result code %s, which courier does not know",
					provider, code),
			 errdetail("Messages with this code are sent again under the same idempotency key, and fail once their attempts are used up.  Logged once per code and process; first seen in trace %.32s.",
					   traceparent != NULL && strlen(traceparent) > 3 ? traceparent + 3 : "(none)"),
			 errhint("Add the code to the dialect's table and to docs/providers.md.")));
}

/*
 * printable_code
 *		A provider's result code as courier shows it: at most MAX_CODE_LEN
 *		printable ASCII characters ("?" for others), "none" when absent.
 *		A code comes from the answer, which courier does not trust.
 */
static void
printable_code(char *dst, size_t len, const char *code)
{
	size_t		i = 0;

	if (code == NULL || code[0] == '\0')
	{
		strlcpy(dst, "none", len);
		return;
	}
	for (; code[i] != '\0' && i + 1 < len; i++)
		dst[i] = (code[i] >= 0x20 && code[i] < 0x7f) ? code[i] : '?';
	dst[i] = '\0';
}

/*
 * masked_digits
 *		A provider's words with every run of six or more digits masked, for
 *		the log: they may quote a recipient's number.  palloc'd.
 */
static char *
masked_digits(const char *text)
{
	char	   *out = pstrdup(text);

	for (char *p = out; *p != '\0';)
	{
		char	   *q = p;

		while (*q >= '0' && *q <= '9')
			q++;
		if (q - p >= 6)
			memset(p, '#', q - p);
		p = (q > p) ? q : p + 1;
	}
	return out;
}

/*
 * courier_read_nhn_answer
 *		Give each message of req its outcome from an NHN Cloud answer
 *		(AlimTalk and SMS answer alike), and return the request's class:
 *
 *	no readable header.resultCode			by the HTTP status alone
 *											(courier_apply_http_status)
 *	per-recipient results					each message by its own result's
 *											resultCode, found by its
 *											recipientGroupingKey (its key),
 *											else by its place; a message
 *											with no result: RETRY, outcome
 *											unknown
 *	no per-recipient results				every message by header.resultCode,
 *											a verdict on the whole request
 *
 * A delivered message keeps "requestId/recipientSeq" as its provider id
 * (the request id alone when the answer gave no results), by which its
 * receipt can be queried and matched.  The answer's words go to the
 * messages' errors only; nothing is logged but codes.
 */
CourierOutcome
courier_read_nhn_answer(const CourierRequest *req, const CourierHttpResult *res,
						CourierMessage *msgs, const CourierNhnShape *shape)
{
	Jsonb	   *jb = NULL;
	JsonbContainer *root = NULL;
	JsonbContainer *header;
	JsonbContainer *data;
	JsonbContainer *results;
	char	   *code;
	char	   *message;
	char	   *request_id;
	bool	   *matched;

	if (res->body_len > 0)
		jb = courier_parse_json_answer(res->body, res->body_len);
	if (jb != NULL && !JB_ROOT_IS_SCALAR(jb) && JB_ROOT_IS_OBJECT(jb))
		root = &jb->root;
	header = courier_json_object(courier_json_key(root, "header"));
	code = courier_json_text(courier_json_key(header, "resultCode"));
	if (code == NULL)
	{
		courier_apply_http_status(req, msgs, shape->provider, res->status, NULL);
		return courier_request_class(req, msgs);
	}
	message = courier_json_text(courier_json_key(header, "resultMessage"));

	data = root;
	for (int i = 0; data != NULL && shape->data_path[i] != NULL; i++)
		data = courier_json_object(courier_json_key(data, shape->data_path[i]));
	request_id = courier_json_text(courier_json_key(data, "requestId"));
	results = courier_json_array(courier_json_key(data, shape->results_key));

	if (results == NULL || JsonContainerSize(results) == 0)
	{
		for (int k = 0; k < req->count; k++)
		{
			CourierMessage *m = &msgs[req->idx[k]];

			courier_apply_code(m, shape->provider, shape->table, code, true,
							   res->status, message);
			if (m->outcome == COURIER_OUT_DELIVERED && request_id != NULL)
				strlcpy(m->provider_id, request_id, sizeof(m->provider_id));
		}
		return courier_request_class(req, msgs);
	}

	matched = palloc0(sizeof(bool) * req->count);
	for (uint32 r = 0; r < JsonContainerSize(results); r++)
	{
		JsonbContainer *entry = courier_json_object(getIthJsonbValueFromContainer(results, r));
		char	   *grouping;
		char	   *seq;
		int			match = -1;
		CourierMessage *m;

		if (entry == NULL)
			continue;
		grouping = courier_json_text(courier_json_key(entry, "recipientGroupingKey"));
		if (grouping != NULL)
		{
			/* results usually come in request order: try that first */
			if ((int) r < req->count && !matched[r] &&
				strcmp(msgs[req->idx[r]].key, grouping) == 0)
				match = (int) r;
			for (int k = 0; match < 0 && k < req->count; k++)
			{
				if (!matched[k] && strcmp(msgs[req->idx[k]].key, grouping) == 0)
					match = k;
			}
		}
		else if ((int) r < req->count && !matched[r])
			match = (int) r;
		if (match < 0)
			continue;
		matched[match] = true;

		m = &msgs[req->idx[match]];
		courier_apply_code(m, shape->provider, shape->table,
						   courier_json_text(courier_json_key(entry, "resultCode")),
						   false, res->status,
						   courier_json_text(courier_json_key(entry, "resultMessage")));
		seq = courier_json_text(courier_json_key(entry, "recipientSeq"));
		if (m->outcome == COURIER_OUT_DELIVERED)
			snprintf(m->provider_id, sizeof(m->provider_id), "%s/%s",
					 request_id ? request_id : "", seq ? seq : "");
	}
	for (int k = 0; k < req->count; k++)
	{
		if (!matched[k])
			courier_set_outcome(&msgs[req->idx[k]], COURIER_OUT_RETRY, true,
								res->status, "no_result",
								psprintf("%s answered with no result for the message: sent again under the same key",
										 shape->provider));
	}
	return courier_request_class(req, msgs);
}

/*
 * courier_read_sens_answer
 *		Give each message of req its outcome from a Naver Cloud SENS answer
 *		(SMS and AlimTalk alike), and return the request's class:
 *
 *	400									configuration: SENS refused the
 *										request as a whole (a template, the
 *										sender number, the body), which it
 *										does not tell from a bad message;
 *										its errorMessage and errors are
 *										logged, digits masked
 *	other statuses but 2xx				by the HTTP status, with the answer's
 *										errorMessage and errors, or the API
 *										gateway's
 *										error.errorCode and error.message
 *										(courier_apply_http_status)
 *	2xx, body not a JSON object			RETRY, outcome unknown
 *	2xx, a "messages" list				each message by its entry's
 *										requestStatusCode (AlimTalk), found by
 *										its place, checked by its "to"; a
 *										message with no entry: RETRY, outcome
 *										unknown
 *	2xx, no list						every message by statusCode ("202":
 *										accepted), or accepted when the answer
 *										has a requestId but no statusCode
 *
 * A delivered message keeps "requestId/messageId" as its provider id, or
 * "requestId/<its place in the request, from 1>" when the answer names no
 * message (SMS): the request's messages are then found by the request id.
 */
CourierOutcome
courier_read_sens_answer(const CourierRequest *req, const CourierHttpResult *res,
						 CourierMessage *msgs, const char *provider,
						 const CourierCode *table)
{
	Jsonb	   *jb = NULL;
	JsonbContainer *root = NULL;
	JsonbContainer *list;
	char	   *request_id;
	char	   *status;
	bool	   *matched;

	if (res->body_len > 0)
		jb = courier_parse_json_answer(res->body, res->body_len);
	if (jb != NULL && !JB_ROOT_IS_SCALAR(jb) && JB_ROOT_IS_OBJECT(jb))
		root = &jb->root;

	if (res->status < 200 || res->status >= 300 || root == NULL)
	{
		char	   *why = courier_json_text(courier_json_key(root, "errorMessage"));
		JsonbContainer *errors = courier_json_array(courier_json_key(root, "errors"));

		/* SENS's own errors: {"status", "errorMessage", "errors": [...]} */
		for (uint32 e = 0; why != NULL && errors != NULL &&
			 e < Min(JsonContainerSize(errors), 4); e++)
		{
			char	   *detail = courier_json_text(getIthJsonbValueFromContainer(errors, e));

			if (detail != NULL)
				why = psprintf("%s; %s", why, detail);
		}
		if (why == NULL)
		{
			/* the API gateway's own errors: {"error": {"errorCode", "message"}} */
			JsonbContainer *error = courier_json_object(courier_json_key(root, "error"));
			char	   *code = courier_json_text(courier_json_key(error, "errorCode"));
			char	   *message = courier_json_text(courier_json_key(error, "message"));

			if (code != NULL || message != NULL)
				why = psprintf("%s %s", code ? code : "", message ? message : "");
		}
		if (res->status == 400)
		{
			/*
			 * SENS refused the request as a whole, and documents no code
			 * that tells a bad message from a bad template, sender number or
			 * body: configuration, so that nothing is charged and the
			 * breaker holds everything until an operator has looked.
			 * Retried instead, one such request charges every message it
			 * carries, and its messages fail long before ten failures in a
			 * row open the breaker.  The words go to the log with their
			 * digits masked (they may quote a number).
			 */
			char	   *shown = why ? masked_digits(why) :
				pstrdup("SENS refused the request (HTTP 400)");

			courier_note_config(provider, "http_400", shown);
			courier_set_request_outcome(req, msgs, COURIER_OUT_UNAUTHORIZED, false,
										400, "http_400",
										psprintf("%s answered HTTP 400 (%s)", provider, shown));
			return courier_request_class(req, msgs);
		}
		courier_apply_http_status(req, msgs, provider, res->status, why);
		return courier_request_class(req, msgs);
	}

	request_id = courier_json_text(courier_json_key(root, "requestId"));
	status = courier_json_text(courier_json_key(root, "statusCode"));
	list = courier_json_array(courier_json_key(root, "messages"));
	if (list == NULL || JsonContainerSize(list) == 0)
	{
		if (status == NULL && request_id == NULL)
		{
			courier_apply_http_status(req, msgs, provider, res->status, NULL);
			return courier_request_class(req, msgs);
		}
		for (int k = 0; k < req->count; k++)
		{
			CourierMessage *m = &msgs[req->idx[k]];

			courier_apply_code(m, provider, table, status ? status : "202", true,
							   res->status,
							   courier_json_text(courier_json_key(root, "statusName")));
			if (m->outcome == COURIER_OUT_DELIVERED)
				snprintf(m->provider_id, sizeof(m->provider_id), "%s/%d",
						 request_id ? request_id : "", k + 1);
		}
		return courier_request_class(req, msgs);
	}

	matched = palloc0(sizeof(bool) * req->count);
	for (uint32 r = 0; r < JsonContainerSize(list); r++)
	{
		JsonbContainer *entry = courier_json_object(getIthJsonbValueFromContainer(list, r));
		char	   *to;
		char	   *message_id;
		int			match = -1;
		CourierMessage *m;

		if (entry == NULL)
			continue;
		to = courier_json_text(courier_json_key(entry, "to"));

		/* entries come in request order; "to" tells a misplaced one */
		if ((int) r < req->count && !matched[r] &&
			(to == NULL || strcmp(msgs[req->idx[r]].to, to) == 0))
			match = (int) r;
		for (int k = 0; match < 0 && to != NULL && k < req->count; k++)
		{
			if (!matched[k] && strcmp(msgs[req->idx[k]].to, to) == 0)
				match = k;
		}
		if (match < 0)
			continue;
		matched[match] = true;

		m = &msgs[req->idx[match]];
		courier_apply_code(m, provider, table,
						   courier_json_text(courier_json_key(entry, "requestStatusCode")),
						   false, res->status,
						   courier_json_text(courier_json_key(entry, "requestStatusDesc")));
		message_id = courier_json_text(courier_json_key(entry, "messageId"));
		if (m->outcome == COURIER_OUT_DELIVERED)
			snprintf(m->provider_id, sizeof(m->provider_id), "%s/%s",
					 request_id ? request_id : "", message_id ? message_id : "");
	}
	for (int k = 0; k < req->count; k++)
	{
		if (!matched[k])
			courier_set_outcome(&msgs[req->idx[k]], COURIER_OUT_RETRY, true,
								res->status, "no_result",
								psprintf("%s answered with no result for the message: sent again",
										 provider));
	}
	return courier_request_class(req, msgs);
}

/*
 * courier_read_sens_receipts
 *		The messages of a SENS query (GET .../messages?requestId=R) as
 *		receipts; -1 when the answer is not a list.  SMS: status COMPLETED
 *		is final, statusName success or fail with statusCode.  AlimTalk
 *		(alimtalk): messageStatusName success or fail with
 *		messageStatusCode; a failed one that SENS resends by SMS/LMS
 *		(useSmsFailover) ends as its failover does (failoverStatusName
 *		success or fail), with the AlimTalk code as the fallback's reason;
 *		one it does not resend, whose code calls for SMS/LMS, is marked
 *		fallback_due.  Each carries its requestId, its messageId (and as
 *		its ref for AlimTalk, whose provider_id ends in it; an SMS's ends in
 *		its position in courier's request, SENS answering an SMS send with
 *		no messageId: matched by number) and, when the answer gives it, a
 *		hash of its text.  Reads the answer of one message (GET
 *		.../messages/{messageId}) too: SMS as a list of one.
 */
int
courier_read_sens_receipts(const CourierHttpResult *res, CourierReceipt *receipts,
						   int max, bool alimtalk)
{
	Jsonb	   *jb = NULL;
	JsonbContainer *root = NULL;
	JsonbContainer *list;
	int			n = 0;

	if (res->status != 200 || res->body_len == 0)
		return -1;
	jb = courier_parse_json_answer(res->body, res->body_len);
	if (jb != NULL && !JB_ROOT_IS_SCALAR(jb) && JB_ROOT_IS_OBJECT(jb))
		root = &jb->root;
	list = courier_json_array(courier_json_key(root, "messages"));
	if (list == NULL)
		return -1;

	for (uint32 i = 0; i < JsonContainerSize(list) && n < max; i++)
	{
		JsonbContainer *e = courier_json_object(getIthJsonbValueFromContainer(list, i));
		CourierReceipt *r = &receipts[n];
		char	   *name;
		char	   *code;
		char	   *v;

		if (e == NULL)
			continue;
		memset(r, 0, sizeof(CourierReceipt));
		if ((v = courier_json_text(courier_json_key(e, "to"))) != NULL)
			strlcpy(r->to, v, sizeof(r->to));
		if ((v = courier_json_text(courier_json_key(e, "requestId"))) != NULL)
			strlcpy(r->request_id, v, sizeof(r->request_id));
		if ((v = courier_json_text(courier_json_key(e, "content"))) != NULL)
			r->text_hash = courier_text_hash(v);
		r->state = COURIER_RECEIPT_PENDING;
		if ((v = courier_json_text(courier_json_key(e, "messageId"))) != NULL)
		{
			strlcpy(r->message, v, sizeof(r->message));
			/* AlimTalk's provider_id ends in it; an SMS's in its position */
			if (alimtalk)
				strlcpy(r->ref, v, sizeof(r->ref));
		}
		if (!alimtalk)
		{
			char	   *status = courier_json_text(courier_json_key(e, "status"));

			name = courier_json_text(courier_json_key(e, "statusName"));
			code = courier_json_text(courier_json_key(e, "statusCode"));
			if (status != NULL && strcmp(status, "COMPLETED") == 0)
				r->state = (name != NULL && strcmp(name, "success") == 0) ?
					COURIER_RECEIPT_DELIVERED : COURIER_RECEIPT_FAILED;
		}
		else
		{
			char	   *failover = courier_json_text(courier_json_key(e, "useSmsFailover"));

			name = courier_json_text(courier_json_key(e, "messageStatusName"));
			code = courier_json_text(courier_json_key(e, "messageStatusCode"));
			if (name != NULL && strcmp(name, "success") == 0)
				r->state = COURIER_RECEIPT_DELIVERED;
			else if (name != NULL && strcmp(name, "fail") == 0)
			{
				r->state = COURIER_RECEIPT_FAILED;
				if (failover != NULL && strcmp(failover, "true") == 0)
				{
					char	   *fname = courier_json_text(courier_json_key(e, "failoverStatusName"));

					/*
					 * A final AlimTalk failure with no failover status: SENS
					 * is not resending it (an invalid number): failed as it
					 * is.  Otherwise the failover's outcome is the receipt.
					 */
					if (fname != NULL)
					{
						strlcpy(r->fallback_reason, code ? code : "", sizeof(r->fallback_reason));
						code = courier_json_text(courier_json_key(e, "failoverStatusCode"));
						r->state = strcmp(fname, "processing") == 0 ? COURIER_RECEIPT_PENDING :
							strcmp(fname, "success") == 0 ? COURIER_RECEIPT_DELIVERED :
							COURIER_RECEIPT_FAILED;
					}
				}
				if (r->state == COURIER_RECEIPT_FAILED && r->fallback_reason[0] == '\0')
					r->fallback_due = courier_alimtalk_fallback_code(code);
			}
		}
		if (r->state != COURIER_RECEIPT_PENDING && code != NULL)
			strlcpy(r->code, code, sizeof(r->code));
		n++;
	}
	return n;
}

/*
 * courier_nhn_receipt_list
 *		The list of an NHN query answer (GET, HTTP 200, header.isSuccessful
 *		true): the array at object.array of the root (AlimTalk:
 *		messageSearchResultResponse.messages; SMS: body.data), or NULL when
 *		the answer is not one.  Allocates in the caller's context.
 */
JsonbContainer *
courier_nhn_receipt_list(const CourierHttpResult *res, const char *object,
						 const char *array)
{
	Jsonb	   *jb;
	JsonbContainer *root = NULL;
	char	   *success;

	if (res->status != 200 || res->body_len == 0)
		return NULL;
	jb = courier_parse_json_answer(res->body, res->body_len);
	if (jb != NULL && !JB_ROOT_IS_SCALAR(jb) && JB_ROOT_IS_OBJECT(jb))
		root = &jb->root;
	success = courier_json_text(courier_json_key(courier_json_object(courier_json_key(root, "header")),
												 "isSuccessful"));
	if (success == NULL || strcmp(success, "true") != 0)
		return NULL;
	return courier_json_array(courier_json_key(courier_json_object(courier_json_key(root, object)),
											   array));
}

/*
 * courier_nhn_receipt_ids
 *		Clear r and fill what names the recipient in an NHN query answer's
 *		entry e: recipientGroupingKey (courier's key), requestId,
 *		recipientSeq, recipientNo.
 */
void
courier_nhn_receipt_ids(CourierReceipt *r, JsonbContainer *e)
{
	char	   *v;

	memset(r, 0, sizeof(CourierReceipt));
	if ((v = courier_json_text(courier_json_key(e, "recipientGroupingKey"))) != NULL)
		strlcpy(r->key, v, sizeof(r->key));
	if ((v = courier_json_text(courier_json_key(e, "requestId"))) != NULL)
		strlcpy(r->request_id, v, sizeof(r->request_id));
	if ((v = courier_json_text(courier_json_key(e, "recipientSeq"))) != NULL)
		strlcpy(r->ref, v, sizeof(r->ref));
	if ((v = courier_json_text(courier_json_key(e, "recipientNo"))) != NULL)
		strlcpy(r->to, v, sizeof(r->to));
}

/*
 * courier_search_window
 *		The two ends of a provider's search by time for a look-up by key or
 *		number (URL encoded, strftime format: NHN "%Y-%m-%d%%20%H:%M", SENS
 *		"%Y-%m-%d%%20%H:%M:%S"): two days back to one day ahead, so that
 *		the provider's local time, whatever its zone, covers every day a
 *		look-up is made for.
 */
void
courier_search_window(char *from, char *to, size_t len, const char *format)
{
	time_t		now = time(NULL);
	time_t		t;
	struct tm	tm;

	t = now - 2 * 86400;
	strftime(from, len, format, gmtime_r(&t, &tm));
	t = now + 86400;
	strftime(to, len, format, gmtime_r(&t, &tm));
}

/*
 * courier_url_escape
 *		s percent-encoded for a URL's query (every byte but the unreserved
 *		A-Z a-z 0-9 - . _ ~), palloc'd.  For values from configuration or
 *		a notice (a channel id, a number) put into a provider's query.
 */
char *
courier_url_escape(const char *s)
{
	StringInfoData out;

	initStringInfo(&out);
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(&out, (char) *p);
		else
			appendStringInfo(&out, "%%%02X", *p);
	}
	return out.data;
}

/*
 * courier_template_code
 *		The AlimTalk template code for m's variant (courier.alimtalk_template,
 *		or courier.alimtalk_template_v2 inside the notice_v2 rollout); ""
 *		when unset.  Shared by the AlimTalk dialects.
 */
const char *
courier_template_code(const CourierMessage *m)
{
	const char *code = (m->variant == 2) ?
		courier_alimtalk_template_v2 : courier_alimtalk_template;

	return code ? code : "";
}

/*
 * courier_template_code_unset
 *		Why m has no template code to be sent with (for a dialect's
 *		unsendable hook), or NULL when it has one.
 */
const char *
courier_template_code_unset(const CourierMessage *m)
{
	if (courier_template_code(m)[0] != '\0')
		return NULL;
	return m->variant == 2 ?
		"courier.alimtalk_template_v2 is not set (a notice of the notice_v2 rollout)" :
		"courier.alimtalk_template is not set";
}
