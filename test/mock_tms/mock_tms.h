/*-------------------------------------------------------------------------
 *
 * mock_tms.h
 *		What the files of the mock TMS share: the request being answered,
 *		the faults, the counters, the JSON scanner and the output buffer.
 *
 * mock_tms.c owns the server, the generic dialect and the harness
 * endpoints (the trace log of /_traces among them); dialects.c owns the providers' dialects (NHN Cloud AlimTalk
 * and SMS, Naver Cloud SENS SMS and AlimTalk); hooks.c owns the subscriber
 * endpoint (courier's webhooks) and its records; crypto.c owns SHA-256,
 * HMAC-SHA256 and Base64 for the SENS and subscriber signatures.  Nothing
 * here is meant for anything but this test tool.
 *
 * IDENTIFICATION
 *	  test/mock_tms/mock_tms.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MOCK_TMS_H
#define MOCK_TMS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#define MAX_BODY_BYTES			(64 * 1024 * 1024)
#define MAX_MESSAGES			1000
#define MAX_ID_BYTES			1024
#define MAX_JSON_DEPTH			64
#define MAX_PREFIX_BYTES		64
#define MAX_RESULT_STATUS_BYTES	64
#define INLINE_MESSAGES			8
#define HOOK_NAME_MAX			64
#define HOOK_MAX_EVENTS			1000

/* What a request is, decided from its path when it starts. */
typedef enum RequestKind
{
	REQ_SEND,					/* a generic message batch: any other path
								 * not under /_ */
	REQ_DIALECT,				/* a provider's path (dialects.c) */
	REQ_HOOK,					/* /hooks/<name>, a subscriber (hooks.c) */
	REQ_CONTROL,				/* /_control */
	REQ_RESET,					/* /_reset */
	REQ_STATS,					/* /_stats */
	REQ_DELIVERED,				/* /_delivered */
	REQ_RECEIVED,				/* /_received */
	REQ_CUSTOMERS,				/* /_customers */
	REQ_HANDSETS,				/* /_handsets */
	REQ_HOOKS,					/* /_hooks */
	REQ_HOOKS_STATS,			/* /_hooks/stats */
	REQ_TRACES,					/* /_traces */
	REQ_NOT_FOUND				/* any other /_ path */
} RequestKind;

/* Where a request stands between MHD's calls to the access handler. */
typedef enum RequestPhase
{
	PHASE_NEW,					/* only the URI is known (URI log callback) */
	PHASE_RECEIVING,			/* body still arriving */
	PHASE_ANSWER,				/* answer prepared; send it (maybe after a
								 * delay) */
	PHASE_CLOSE					/* close without answering (reset or hang) */
} RequestPhase;

/* Which provider operation a dialect path names; see dialect_route(). */
typedef enum DialectOp
{
	DOP_NHN_AT_MESSAGES,		/* /alimtalk/v2.3/appkeys/K/messages */
	DOP_NHN_AT_MESSAGE,			/* ... /messages/{requestId}/{recipientSeq} */
	DOP_NHN_SMS_SENDER,			/* /sms/v3.0/appKeys/K/sender/sms|mms */
	DOP_NHN_SMS_ONE,			/* ... /sender/sms|mms/{requestId} */
	DOP_SENS_SMS_MESSAGES,		/* /sms/v2/services/S/messages */
	DOP_SENS_SMS_MESSAGE,		/* ... /messages/{messageId} */
	DOP_SENS_AT_MESSAGES,		/* /alimtalk/v2/services/S/messages */
	DOP_SENS_AT_MESSAGE			/* ... /messages/{messageId} */
} DialectOp;

#define ROUTE_PART_BYTES		256

typedef struct DialectRoute
{
	DialectOp	op;
	bool		lms;			/* NHN SMS: /sender/mms */
	char		service[ROUTE_PART_BYTES];	/* appkey or serviceId */
	char		id[ROUTE_PART_BYTES];	/* requestId or messageId */
	char		seq[32];		/* NHN AlimTalk recipientSeq */
} DialectRoute;

typedef struct Request
{
	RequestKind kind;
	RequestPhase phase;
	bool		counted;		/* counted in requests and in_flight */
	bool		hook_counted;	/* counted in hook_in_flight */
	char	   *raw_uri;		/* as the client sent it, query included */
	DialectRoute route;			/* when kind is REQ_DIALECT */
	char		hook[HOOK_NAME_MAX + 1];	/* when kind is REQ_HOOK */
	char	   *body;			/* NUL-terminated; decoded in place by the
								 * JSON scanner */
	size_t		body_len;
	size_t		body_cap;
	bool		body_too_large;
	unsigned int status;		/* prepared answer */
	char	   *answer;			/* malloc'd; handed to MHD when sent */
	size_t		answer_len;
	int			retry_after_s;	/* -1: no Retry-After header */
	char	   *trace_fields;	/* malloc'd JSON members its /_traces entry
								 * ends with (",\"ids\":[...]"), or NULL */
	size_t		trace_fields_len;
} Request;

/* One message of a batch; pointers into the request body. */
typedef struct Message
{
	const char *id;
	size_t		id_len;
	const char *to;
	size_t		to_len;
	const char *channel;		/* NULL when absent or null */
	size_t		channel_len;
} Message;

typedef struct Batch
{
	Message    *msgs;
	int			count;
	int			cap;
	Message		inline_msgs[INLINE_MESSAGES];
} Batch;

typedef struct JsonCursor
{
	char	   *p;
	char	   *end;
} JsonCursor;

typedef struct OutBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} OutBuf;

/* Faults and behaviour, all settable through /_control, reset by /_reset. */
typedef struct Faults
{
	_Atomic int64_t latency_ms;
	_Atomic double error_rate;
	_Atomic int64_t error_status;
	_Atomic int64_t burst_429;	/* requests still to be throttled */
	_Atomic int64_t retry_after_s;
	_Atomic double hang_rate;
	_Atomic int64_t hang_ms;
	_Atomic double reset_rate;
	_Atomic double malformed_rate;
	_Atomic double lost_reply_rate;
	_Atomic bool unauthorized;
	_Atomic uint64_t seed;
	_Atomic int reject_prefix_len;	/* 0: no prefix; guards the copy below */
	pthread_mutex_t prefix_lock;
	char		reject_prefix[MAX_PREFIX_BYTES + 1];

	/*
	 * The two text settings below share text_lock.  The flags let the hot
	 * path skip the lock while they are at their defaults.
	 */
	pthread_mutex_t text_lock;
	_Atomic bool odd_status;	/* result_status is not "accepted" */
	char		result_status[MAX_RESULT_STATUS_BYTES + 1];
	_Atomic bool has_reply_body;	/* reply_body is not null */
	char	   *reply_body;		/* malloc'd; NULL when null */
	size_t		reply_body_len;

	/* the providers' dialects */
	_Atomic int64_t receipt_delay_ms;
	_Atomic int64_t resend_delay_ms;
	_Atomic int64_t idempotency_window_s;
	_Atomic int64_t nhn_auth_status;
	_Atomic int64_t send_fallback_codes;	/* 1: NHN AlimTalk answers 3018-3020
											 * at send time */

	/* the subscriber endpoint; hook_status and hook_secrets are in hooks.c */
	_Atomic bool hook_reject_bad_signature;
} Faults;

typedef struct Stats
{
	_Atomic uint64_t requests;
	_Atomic uint64_t messages_received;
	_Atomic uint64_t delivered;
	_Atomic uint64_t duplicates;
	_Atomic uint64_t rejected;
	_Atomic uint64_t status_2xx;
	_Atomic uint64_t status_4xx;
	_Atomic uint64_t status_5xx;
	_Atomic uint64_t throttled_429;
	_Atomic uint64_t hangs;
	_Atomic uint64_t resets;
	_Atomic uint64_t malformed;
	_Atomic uint64_t odd_status;
	_Atomic uint64_t custom_replies;
	_Atomic uint64_t missing_idempotency_key;
	_Atomic int64_t in_flight;
	_Atomic int64_t max_in_flight;
	_Atomic uint64_t first_delivery_us;
	_Atomic uint64_t last_delivery_us;

	/* the providers' dialects */
	_Atomic uint64_t lost_replies;
	_Atomic uint64_t nhn_alimtalk_sends;
	_Atomic uint64_t nhn_sms_sends;
	_Atomic uint64_t sens_sms_sends;
	_Atomic uint64_t sens_alimtalk_sends;
	_Atomic uint64_t queries;
	_Atomic uint64_t dialect_accepted;
	_Atomic uint64_t dialect_refused;
	_Atomic uint64_t auth_failures;
	_Atomic uint64_t sens_signature_failures;
	_Atomic uint64_t sens_clock_skew;
	_Atomic uint64_t idempotency_rejected;
	_Atomic uint64_t template_errors;

	/*
	 * Subscriber requests being handled now.  Not in /_stats (hook requests
	 * are counted in /_hooks/stats); shutdown waits for it like in_flight.
	 */
	_Atomic int64_t hook_in_flight;
} Stats;

/* A subscriber's secret, from --hook-secret or the hook_secrets setting. */
typedef struct HookSecret
{
	char		name[HOOK_NAME_MAX + 1];
	char	   *secret;			/* malloc'd; may hold NUL bytes */
	size_t		secret_len;
} HookSecret;

typedef struct Options
{
	int			port;
	const char *bind;
	int			threads;
	char	   *auth_name;		/* --require-header, split */
	char	   *auth_value;
	const char *idempotency_header;
	bool		verbose;
	const char *nhn_appkey;		/* NULL: any appkey */
	const char *nhn_secret;		/* NULL: X-Secret-Key not checked */
	const char *nhn_sms_secret; /* defaults to nhn_secret */
	const char *sens_access_key;	/* NULL: SENS signature not checked */
	const char *sens_secret;
	HookSecret *hook_secrets;	/* --hook-secret NAME=SECRET, repeatable */
	int			nhook_secrets;
} Options;

extern Options options;
extern Faults faults;
extern Stats stats;
extern _Atomic bool shutting_down;

/* "" lit: only a string literal compiles, so sizeof is its length + 1 */
#define OUT_LIT(b, lit)		out_bytes((b), "" lit, sizeof(lit) - 1)

/* mock_tms.c: answers, faults and the received log */
extern void set_answer(Request *req, unsigned int status, OutBuf *body);
extern void set_answer_text(Request *req, unsigned int status, const char *text);
extern bool apply_faults(Request *req, int64_t *delay_ms, bool shutting,
						 const char *garbage);
extern bool answer_reply_body(Request *req, int nmessages);
extern void received_append(const Batch *batch, uint64_t us, unsigned int status);
extern void trace_fields_take(Request *req, OutBuf *fields);
extern size_t load_reject_prefix(char *buf);
extern bool roll(_Atomic double *rate);

/* mock_tms.c: JSON scanning */
extern void json_ws(JsonCursor *c);
extern bool json_parse_wrapped(char *body, size_t len, const char *wanted,
							   bool (*parse_array) (JsonCursor *c, void *arg),
							   void *arg);
extern bool json_accept(JsonCursor *c, char ch);
extern bool json_string(JsonCursor *c, char **out, size_t *out_len);
extern bool json_number(JsonCursor *c, char **out, size_t *out_len);
extern bool json_skip_value(JsonCursor *c, int depth);
extern bool json_key_is(const char *key, size_t key_len, const char *name);

/* mock_tms.c: small helpers */
extern void *xmalloc(size_t size);
extern void *xrealloc(void *ptr, size_t size);
extern void out_init(OutBuf *b, size_t cap);
extern void out_reserve(OutBuf *b, size_t extra);
extern void out_bytes(OutBuf *b, const char *s, size_t n);
extern void out_str(OutBuf *b, const char *s);
extern void out_u64(OutBuf *b, uint64_t v);
extern void out_json_string(OutBuf *b, const char *s, size_t n);
extern void out_i64(OutBuf *b, int64_t v);
extern uint64_t hash_bytes(const char *key, size_t len);
extern uint64_t monotonic_us(void);
extern uint64_t wall_us(void);

/* dialects.c */
extern void dialect_init(void);
extern void dialect_reset(void);
extern bool dialect_route(const char *url, DialectRoute *route);
extern int64_t dialect_decide(Request *req, struct MHD_Connection *conn,
							  const char *method);
extern bool dialect_set_templates(const char *value, bool dry_run,
								  char *err, size_t errlen);
extern void dialect_templates_json(OutBuf *out);
extern void dialect_stats_json(OutBuf *out);
extern void customers_json(OutBuf *out);
extern void handsets_json(OutBuf *out);

/* hooks.c */
extern void hooks_init(void);
extern void hooks_clear(void);
extern void hooks_settings_reset(void);
extern bool hook_name_valid(const char *name, size_t len);
extern bool hook_secret_option(const char *arg);
extern int64_t hook_decide(Request *req, struct MHD_Connection *conn);
extern bool hook_set_status(const char *value, bool dry_run,
							char *err, size_t errlen);
extern bool hook_set_secrets(const char *value, bool dry_run,
							 char *err, size_t errlen);
extern void hook_settings_json(OutBuf *out);
extern void hooks_json(OutBuf *out, const char *hook);
extern void hooks_stats_json(OutBuf *out);

/* crypto.c */
#define SHA256_DIGEST_BYTES		32
extern void hmac_sha256(const unsigned char *key, size_t key_len,
						const unsigned char *msg, size_t msg_len,
						unsigned char out[SHA256_DIGEST_BYTES]);
extern void hmac_sha256_parts(const unsigned char *key, size_t key_len,
							  const unsigned char *const *parts,
							  const size_t *part_lens, int nparts,
							  unsigned char out[SHA256_DIGEST_BYTES]);
extern size_t base64_encode(const unsigned char *in, size_t len, char *out);

#endif							/* MOCK_TMS_H */
