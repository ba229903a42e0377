/*-------------------------------------------------------------------------
 *
 * provider.h
 *		A TMS provider's dialect: how messages become one HTTP request, and
 *		how its answer becomes one outcome per message.  One file per
 *		dialect (provider_<name>.c), listed in COURIER_PROVIDERS below and
 *		chosen by courier.tms_provider; dispatch.c drives them.  What
 *		dialects share is in provider_common.c: outcomes, keys, JSON, the
 *		SENS signature, and classifying answers by a table of result codes.
 *		docs/providers.md describes every dialect and every code.
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
 * The dialects courier speaks, one line each: a file provider_<name>.c
 * defining courier_provider_<name>.  courier.tms_provider is an enum of
 * these names (guc.c), the registry (provider.c) a table of them, both
 * made from this one list.
 */
#define COURIER_PROVIDERS(X) \
	X(generic) \
	X(nhn_alimtalk) \
	X(nhn_sms) \
	X(sens_alimtalk) \
	X(sens_sms)

#define COURIER_PROVIDER_ID(name) COURIER_PROVIDER_##name,
typedef enum CourierProviderId
{
	COURIER_PROVIDERS(COURIER_PROVIDER_ID)
	COURIER_NUM_PROVIDERS
} CourierProviderId;
#undef COURIER_PROVIDER_ID

/*
 * courier.alimtalk_fallback (guc.c): who sends the SMS/LMS when AlimTalk
 * cannot reach a customer.  NONE: the AlimTalk dialects ask the provider
 * for no fallback (whatever its console says); PROVIDER: each recipient
 * asks the provider to resend the rendered text by SMS/LMS itself;
 * COURIER: the provider is asked for none, and courier sends the rendered
 * text itself through the SMS dialect of the same provider (the dialect's
 * fallback_dialect) once the AlimTalk's answer or receipt says it cannot
 * reach the customer (tms.c, receipts.c).
 */
/* what a notice's history says when courier sends its SMS/LMS fallback */
#define COURIER_FALLBACK_NOTE "AlimTalk cannot reach the customer: courier sends the SMS/LMS instead"

typedef enum CourierAlimtalkFallback
{
	COURIER_ALIMTALK_FALLBACK_NONE,
	COURIER_ALIMTALK_FALLBACK_PROVIDER,
	COURIER_ALIMTALK_FALLBACK_COURIER
} CourierAlimtalkFallback;

/*
 * courier.alimtalk_template_params parsed (guc.c): which field of a notice
 * fills each #{key} of the AlimTalk template.  One malloc'd block.
 */
#define COURIER_TEMPLATE_KEY_LEN 64

typedef struct CourierTemplateParam
{
	char		key[COURIER_TEMPLATE_KEY_LEN];	/* #{key}, without #{} */
	CourierField field;
} CourierTemplateParam;

typedef struct CourierTemplateParams
{
	int			n;
	CourierTemplateParam items[FLEXIBLE_ARRAY_MEMBER];
} CourierTemplateParams;

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

/*
 * How one recipient of a provider's request ended, as its query API says
 * (receipts.c matches it to its notice by key, else by ref, else by to).
 */
typedef enum CourierReceiptState
{
	COURIER_RECEIPT_PENDING = 0,	/* not final yet: ask again later */
	COURIER_RECEIPT_DELIVERED,	/* on the handset */
	COURIER_RECEIPT_FAILED		/* will not reach it */
} CourierReceiptState;

typedef struct CourierReceipt
{
	char		key[128];		/* the message's key (grouping key), or "" */
	char		request_id[64];	/* the provider's request, or "" */
	char		ref[128];		/* what provider_id has after the request id
								 * (NHN: the recipient's seq; SENS AlimTalk:
								 * its messageId), or "" */
	char		to[32];			/* the recipient's number, or "" */
	char		message[64];	/* the provider's id of this one message, to
								 * ask it alone (message_query), or "" */
	CourierReceiptState state;	/* the customer's: AlimTalk or its fallback */
	char		code[64];		/* the provider's final code */
	char		fallback_channel[8];	/* "sms"/"lms": the provider resent it so,
										 * when it says (else receipts.c has it
										 * from the text's length) */
	char		fallback_reason[64];	/* the AlimTalk code that called for it */
	uint32		text_hash;		/* hash_bytes of the message's text as the
								 * provider holds it, 0 when not given: a
								 * look-up by number matches by text too */
	bool		fallback_due;	/* failed with a code that calls for SMS/LMS
								 * (courier_alimtalk_fallback_code), and the
								 * provider resends nothing: courier's own
								 * fallback is due, under courier.
								 * alimtalk_fallback = courier */
} CourierReceipt;

typedef struct CourierProvider
{
	/* what courier.tms_provider would name it */
	const char *name;

	/* most messages one request may carry */
	int			max_per_request;

	/*
	 * An attempt whose answer never came may have been taken, and the
	 * provider has no idempotency key to refuse a resend; but its
	 * receipt_query finds a message without its request id (NHN SMS by
	 * its key, SENS by its number and text).  Such a notice is looked up
	 * before any resend (receipts.c, 'unconfirmed'), and its sends go over
	 * connections of their own (http.c: libcurl resends nothing).
	 */
	bool		looks_up_before_resend;

	/*
	 * An AlimTalk dialect: the SMS dialect of the same provider, which
	 * sends courier's own SMS/LMS fallback (courier.alimtalk_fallback =
	 * courier).  NULL for the others: a fallback pending when one of them
	 * is chosen goes out through it.
	 */
	const char *fallback_dialect;

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

	/*
	 * May m travel in the same request as first, the request's first
	 * message?  For a dialect whose request carries one template, one
	 * message type or one text for all its recipients.  NULL: any may.
	 */
	bool		(*joinable) (const CourierMessage *first,
							 const CourierMessage *m);

	/*
	 * Why m cannot be sent as courier is configured (a parameter the
	 * dialect needs is unset, the template names a field m lacks), or NULL
	 * when it can.  Such a message is not sent: it gets the configuration
	 * outcome (COURIER_OUT_UNAUTHORIZED).  Called once per message and
	 * batch, before any request; raises no error.  NULL: every message can.
	 */
	const char *(*unsendable) (const CourierMessage *m);

	/*
	 * Delivery receipts (receipts.c): fill req's url and headers (signed)
	 * for a query of how the recipients of the provider's request
	 * request_id ended (req->body stays empty: a GET); when request_id is
	 * "" (the provider took the message under a request courier never
	 * learned, COURIER_CODE_TAKEN, or an unanswered attempt is looked
	 * up), of the message whose key is key, sent to the number to (a
	 * provider without keys: its messages to that number lately, matched
	 * by their text).  channel is the notice's (sms, lms, alimtalk).
	 * NULL: the provider reports no delivery (generic).
	 */
	void		(*receipt_query) (CourierRequest *req, const char *request_id,
								  const char *key, const char *channel,
								  const char *to);

	/*
	 * For a dialect whose list of a number's messages (a look-up, above)
	 * does not give their text: fill req for a query of the one message
	 * the provider's id message names (CourierReceipt.message), whose answer read_receipts reads as a
	 * list of one with its text.  receipts.c asks it of each message the
	 * look-up found for the number, to tell the notice's by its text.
	 * NULL: the look-up gives the text (or a key) already.
	 */
	void		(*message_query) (CourierRequest *req, const char *message);

	/*
	 * Read a query's answer (res->status, res->body) into receipts, one
	 * per recipient it names; returns how many, or -1 when the answer is
	 * not one (an error, a refusal: asked again later).  At most max.
	 * Raises no error on any answer.
	 */
	int			(*read_receipts) (const CourierHttpResult *res,
								  CourierReceipt *receipts, int max);
} CourierProvider;

/*
 * What a provider's result code means to courier: one row of a dialect's
 * table, the same rows as docs/providers.md.  A code no row names is
 * unknown: retried under the same key, logged once (courier_apply_code).
 */
typedef enum CourierCodeClass
{
	COURIER_CODE_ACCEPTED,		/* delivered */
	COURIER_CODE_PERMANENT,		/* rejected: this message will never go */
	COURIER_CODE_RETRYABLE,		/* the provider failed: send again */
	COURIER_CODE_CONFIG,		/* ours to fix: breaker, alert, no attempt */
	COURIER_CODE_FALLBACK,		/* not by AlimTalk: by SMS/LMS instead */
	COURIER_CODE_TAKEN			/* the idempotency key was used already:
								 * accepted by an earlier attempt, never
								 * resent, found again by its receipt */
} CourierCodeClass;

typedef struct CourierCode
{
	const char *code;			/* as the answer spells it */
	CourierCodeClass klass;

	/*
	 * A permanent code that, given for a whole request (no result per
	 * recipient), is about the request's own fields: configuration.
	 */
	bool		request_config;
	const char *meaning;		/* the provider's documentation, shortly */
} CourierCode;

/*
 * The shape of an NHN Cloud answer (AlimTalk, SMS): a header with the
 * request's result code, and under data_path the request id and a list of
 * per-recipient results (courier_read_nhn_answer).
 */
typedef struct CourierNhnShape
{
	const char *provider;		/* the dialect, in errors and logs */
	const CourierCode *table;	/* its result codes */
	const char *data_path[3];	/* keys from the root, NULL-terminated */
	const char *results_key;	/* the per-recipient results' key */
} CourierNhnShape;

/*
 * The subscriber dialect (provider_subscriber.c): not one courier.
 * tms_provider names; a subscriber's worker points it at its subscription.
 */
extern const CourierProvider courier_subscriber_dialect;
extern void courier_subscriber_dialect_target(const char *name,
											  const char *url,
											  const char *secret);

/* provider.c: the registry */
extern const CourierProvider *courier_provider_lookup(const char *name);
extern const CourierProvider *courier_provider_by_id(int id);

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
extern void courier_hmac_sha256(const char *key, const uint8 *data, size_t len,
								uint8 mac[32]);
extern char *courier_provider_url(const char *fmt,...) pg_attribute_printf(1, 2);
extern const char *courier_message_field(const CourierMessage *m,
										 CourierField field);
extern bool courier_same_text(const char *a, const char *b);
extern const char *courier_fallback_type(const CourierMessage *m);
extern bool courier_alimtalk_fallback_code(const char *code);
extern uint32 courier_text_hash(const char *text);
extern void courier_mark_delivered_channel(const CourierRequest *req,
										   CourierMessage *msgs,
										   const char *channel);

/* provider_common.c: reading an answer's JSON, NULL for what is not there */
extern JsonbValue *courier_json_key(JsonbContainer *object, const char *key);
extern JsonbContainer *courier_json_object(JsonbValue *v);
extern JsonbContainer *courier_json_array(JsonbValue *v);
extern char *courier_json_text(JsonbValue *v);

/* provider_common.c: classifying answers */
extern const CourierCode *courier_code_lookup(const CourierCode *table,
											  const char *code);
extern void courier_apply_code(CourierMessage *m, const char *provider,
							   const CourierCode *table, const char *code,
							   bool request_level, int http_status,
							   const char *provider_message);
extern void courier_apply_http_status(const CourierRequest *req,
									  CourierMessage *msgs,
									  const char *provider, int http_status,
									  const char *provider_message);
extern CourierOutcome courier_request_class(const CourierRequest *req,
											const CourierMessage *msgs);
extern void courier_note_config(const char *provider, const char *code,
								const char *why);
extern CourierOutcome courier_read_nhn_answer(const CourierRequest *req,
											  const CourierHttpResult *res,
											  CourierMessage *msgs,
											  const CourierNhnShape *shape);
extern JsonbContainer *courier_nhn_receipt_list(const CourierHttpResult *res,
												const char *object,
												const char *array);
extern void courier_nhn_receipt_ids(CourierReceipt *r, JsonbContainer *e);
extern void courier_search_window(char *from, char *to, size_t len,
								  const char *format);
extern char *courier_url_escape(const char *s);
extern const char *courier_template_code(const CourierMessage *m);
extern const char *courier_template_code_unset(const CourierMessage *m);
extern int	courier_read_sens_receipts(const CourierHttpResult *res,
									   CourierReceipt *receipts, int max,
									   bool alimtalk);
extern CourierOutcome courier_read_sens_answer(const CourierRequest *req,
											   const CourierHttpResult *res,
											   CourierMessage *msgs,
											   const char *provider,
											   const CourierCode *table);

#endif							/* COURIER_PROVIDER_H */
