/*-------------------------------------------------------------------------
 *
 * dialects.c
 *		The providers' own dialects of the mock TMS: NHN Cloud KakaoTalk
 *		Bizmessage AlimTalk API v2.3, NHN Cloud SMS API v3.0, Naver Cloud
 *		SENS SMS API v2 and SENS AlimTalk (Biz Message) API v2.
 *
 * What it does: answers the providers' send and query paths with their
 * headers, authentication (X-Secret-Key; the SENS HMAC-SHA256 signature
 * with its 5-minute clock window), response shapes and result codes.  The
 * outcome of each recipient is chosen by the last digits of its number (see
 * outcome_for and the README table).  Every accepted recipient becomes a
 * record that is "in progress" first and reaches its final state
 * receipt_delay_ms later; AlimTalk that failed and asked for a fallback is
 * resent by the mock itself as SMS/LMS resend_delay_ms after that.  The
 * query APIs read those records; /_customers and /_handsets count what the
 * handsets really received (a record counts once its final state is due).
 * NHN AlimTalk's X-NC-API-IDEMPOTENCY-KEY is remembered for
 * idempotency_window_s: a reuse is refused with -1005 and delivers nothing.
 *
 * What it does not do: webhooks, scheduled sends (requestDate/reserveTime
 * are ignored), attachments, templates' real text (the AlimTalk content is
 * synthesized from the template code and parameters), EUC-KR, or any other
 * endpoint of those APIs.  All state is in memory, bounded, and cleared by
 * /_reset.  One mutex guards the records: the dialects are for correctness
 * tests, not for the benchmarks, which use the generic dialect.
 *
 * IDENTIFICATION
 *	  test/mock_tms/dialects.c
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mock_tms.h"

#define NHN_MAX_RECIPIENTS		1000
#define SENS_MAX_MESSAGES		100
#define SENS_MAX_SKEW_MS		300000	/* the documented 5 minutes */
#define DSTORE_MAX_RECORDS		2000000
#define DSTORE_MAX_TEXT_BYTES	(256 * 1024 * 1024)
#define JDOC_MAX_NODES			4000000
#define IDEM_BUCKETS			65536	/* power of two */
#define IDEM_MAX_KEYS			1000000
#define IDEM_MAX_KEY_BYTES		1024
#define MAX_TEMPLATES			64
#define MAX_TEMPLATE_CODE		64
#define MAX_TEMPLATES_TEXT		4096
#define DEFAULT_TEMPLATES \
	"COURIER_DELAY:approved,COURIER_DELAY_V2:approved,NOT_APPROVED:requested"
#define NEVER_US				UINT64_MAX
#define SMS_MAX_EUCKR_BYTES		90	/* longer fallbacks go as LMS */

/* Which dialect a request speaks. */
typedef enum Dialect
{
	D_NHN_AT,
	D_NHN_SMS,
	D_SENS_SMS,
	D_SENS_AT
} Dialect;

/* What kind of request a batch of records came from. */
typedef enum BatchKind
{
	BK_NHN_AT,					/* NHN AlimTalk send */
	BK_NHN_SMS,					/* NHN SMS/LMS send, or NHN's own fallback */
	BK_SENS_SMS,				/* SENS SMS/LMS send */
	BK_SENS_AT,					/* SENS AlimTalk send */
	BK_SENS_FAILOVER			/* SENS's own failover SMS: never listed */
} BatchKind;

typedef enum Channel
{
	CH_ALIMTALK,
	CH_SMS,
	CH_LMS
} Channel;

/*
 * One recipient of one request.  Text lives in the store's text buffer;
 * offsets are 0 when absent.  The final state is known when the record is
 * made (code), but is shown only from due_us on.
 */
typedef struct DRec
{
	uint32_t	batch;			/* index into dstore.batches */
	uint32_t	seq;			/* 1-based position in its request */
	uint32_t	tag;			/* random part of a SENS messageId */
	uint8_t		channel;
	bool		fallback;		/* a provider's SMS/LMS in place of AlimTalk */
	bool		resend;			/* AlimTalk that asked for a fallback */
	bool		refused;		/* refused at send time: never sent */
	int32_t		fallback_rec;	/* AlimTalk: its fallback record, or -1 */
	int			code;			/* final result: 1000 success, else failure */
	int			send_code;		/* refused: the send-time code */
	uint64_t	due_us;			/* final state from then on; NEVER_US */
	uint32_t	to;
	uint32_t	gkey;			/* recipientGroupingKey */
	uint32_t	content;
	uint32_t	subject;
	uint32_t	from;			/* fallback: its sender number */
} DRec;

/* One request: the records [first, first + count) of the store. */
typedef struct DBatch
{
	uint8_t		kind;
	bool		lms;			/* NHN: sent through /sender/mms */
	uint64_t	created_us;
	uint64_t	number;			/* the number inside request_id */
	uint32_t	first;
	uint32_t	count;
	uint32_t	sender;			/* senderKey, sendNo, from, plusFriendId */
	uint32_t	template_code;
	uint32_t	sender_gkey;	/* senderGroupingKey */
	uint32_t	service;		/* appkey or serviceId */
	char		request_id[48];
} DBatch;

typedef struct DStore
{
	pthread_mutex_t lock;
	DRec	   *recs;
	size_t		nrecs;
	size_t		recs_cap;
	DBatch	   *batches;
	size_t		nbatches;
	size_t		batches_cap;
	char	   *text;
	size_t		text_len;
	size_t		text_cap;
	uint64_t	batch_base;		/* number of batches[0] */
	uint64_t	rec_base;		/* number of recs[0] (SENS messageIds) */
	uint64_t	next_batch;		/* never reset: old ids stay unknown */
	uint64_t	next_rec;
	bool		overflow;
} DStore;

/* An idempotency key and when its request was accepted. */
typedef struct IdemKey
{
	struct IdemKey *next;
	uint64_t	hash;
	uint64_t	at_us;
	size_t		len;
	char		key[];
} IdemKey;

typedef struct Template
{
	char		code[MAX_TEMPLATE_CODE + 1];
	char		status[16];		/* approved, requested, inspecting, rejected */
} Template;

/* A parsed JSON value; children are linked by index (the array grows). */
typedef enum JType
{
	J_NULL,
	J_FALSE,
	J_TRUE,
	J_NUMBER,
	J_STRING,
	J_ARRAY,
	J_OBJECT
} JType;

typedef struct JNode
{
	JType		type;
	const char *key;			/* member name, inside an object */
	size_t		key_len;
	const char *str;			/* decoded string, or a number's text */
	size_t		len;
	int			first;			/* first child, -1 if none */
	int			next;			/* next sibling, -1 if none */
	int			count;			/* number of children */
} JNode;

typedef struct JDoc
{
	JNode	   *nodes;
	int			count;
	int			cap;
} JDoc;

/* What the last digits of a recipient number make of it. */
typedef struct Outcome
{
	bool		valid;			/* a number the provider takes */
	bool		sys_error;		/* NHN: refused at send time, retryable */
	bool		never;			/* never reaches a final state */
	int			at_code;		/* AlimTalk delivery result, 1000: success */
	int			sms_code;		/* SMS/LMS delivery result, 1000: success */
} Outcome;

/* One recipient as a send request gave it; pointers into the body. */
typedef struct SendItem
{
	const char *to;
	size_t		to_len;
	const char *gkey;
	const char *content;		/* SENS: per-message content, AlimTalk text */
	const char *subject;
	const char *fb_type;		/* fallback: SMS, LMS or NULL */
	const char *fb_from;
	const char *fb_subject;
	const char *fb_content;
	bool		resend;			/* resendParameter.isResend, useSmsFailover */
	int			params;			/* templateParameter node, -1 */
} SendItem;

/* A send request of any dialect, once its shape is checked. */
typedef struct SendReq
{
	Dialect		dialect;
	bool		lms;			/* NHN /sender/mms; SENS type LMS or MMS */
	const char *sender;
	const char *template_code;
	size_t		template_len;
	const char *sender_gkey;
	const char *body;			/* NHN SMS body, SENS default content */
	const char *title;			/* NHN SMS title, SENS default subject */
	SendItem   *items;
	int			count;
} SendReq;

/* A query's filters; NULL or 0 when not given. */
typedef struct Query
{
	const char *request_id;
	uint64_t	from_us;
	uint64_t	to_us;
	bool		by_time;
	const char *recipient_no;
	const char *sender_gkey;
	const char *recipient_gkey;
	const char *template_code;
	const char *status;			/* NHN AT messageStatus, NHN SMS msgStatus */
	long		page;			/* NHN: 1-based pageNum; SENS: pageIndex */
	long		page_size;
} Query;

/* the request path */
static bool split_path(const char *url, char parts[][ROUTE_PART_BYTES],
					   int max, int *n);
static Dialect dialect_of(DialectOp op);
static bool is_send_op(DialectOp op);
static int64_t dialect_send(Request *req, struct MHD_Connection *conn,
							const char *method);
static int64_t dialect_query(Request *req, struct MHD_Connection *conn,
							 const char *method);

/* authentication */
static bool nhn_authorized(Request *req, struct MHD_Connection *conn,
						   Dialect d);
static bool sens_authorized(Request *req, struct MHD_Connection *conn,
							const char *method);
static void sens_auth_fail(Request *req, const char *details);

/* the send requests' shapes */
static bool shape_nhn_at(const JDoc *doc, SendReq *sr, int *code,
						 char *msg, size_t msglen);
static bool shape_nhn_sms(const JDoc *doc, SendReq *sr, int *code,
						  char *msg, size_t msglen);
static bool shape_sens(const JDoc *doc, SendReq *sr, char *msg, size_t msglen);
static bool has_emoji(const char *s);
static size_t utf8_chars(const char *s);
static size_t euckr_bytes(const char *s);

/* answers */
static void nhn_error(Request *req, Dialect d, unsigned int status, int code,
					  const char *msg);
static void sens_error(Request *req, unsigned int status, const char *msg,
					   const char *detail);
static void answer_send(Request *req, const SendReq *sr, const DBatch *b,
						const Outcome *outs, char (*message_ids)[40]);
static void out_nhn_header(OutBuf *o, Dialect d, int code, const char *msg);
static void out_text(OutBuf *o, const char *s);
static void out_local_time(OutBuf *o, uint64_t us, int style);

/* the records */
static void process_send(const JDoc *doc, const SendReq *sr,
						 const DialectRoute *route, uint64_t now,
						 char *request_id, Outcome *outs,
						 char (*message_ids)[40], size_t body_len);
static void dstore_reserve(size_t n);
static uint32_t dstore_text(const char *s, size_t len);
static const char *dtext(uint32_t off);
static DBatch *dstore_batch(BatchKind kind, bool lms, uint64_t created_us,
							uint32_t count, const char *service,
							const char *sender, const char *template_code,
							const char *sender_gkey);
static void make_request_id(DBatch *b);
static DBatch *find_batch(BatchKind kind, const char *request_id);
static DRec *find_sens_message(BatchKind kind, const char *message_id);
static void sens_message_id(const DRec *r, char *buf);
static void outcome_for(const char *to, size_t len, Outcome *o);
static void synth_content(const JDoc *doc, const SendReq *sr,
						  const SendItem *it, OutBuf *o);

/* the query answers */
static bool parse_query(struct MHD_Connection *conn, Dialect d, Query *q,
						const char **err);
static bool parse_local_time(const char *s, bool end, uint64_t *us);
static bool rec_final(const DRec *r, uint64_t now);
static const char *nhn_at_status(const DRec *r, uint64_t now);
static const char *nhn_sms_status(const DRec *r, uint64_t now);
static bool rec_matches(const DRec *r, const DBatch *b, const Query *q,
						Dialect d, uint64_t now);
static size_t list_matches(BatchKind kind, int lms, const Query *q, Dialect d,
						   uint64_t now, size_t skip, size_t take, OutBuf *o,
						   void (*emit) (OutBuf *, const DRec *,
										 const DBatch *, uint64_t),
						   size_t *emitted);
static void emit_nhn_at(OutBuf *o, const DRec *r, const DBatch *b,
						uint64_t now);
static void emit_sens_sms(OutBuf *o, const DRec *r, const DBatch *b,
						  uint64_t now);
static void query_nhn_at_list(Request *req, const Query *q, uint64_t now);
static void query_nhn_at_one(Request *req, const DialectRoute *route,
							 uint64_t now);
static void query_nhn_sms_list(Request *req, const Query *q, bool lms,
							   uint64_t now);
static void query_nhn_sms_one(Request *req, struct MHD_Connection *conn,
							  const DialectRoute *route, uint64_t now);
static void query_sens_list(Request *req, const Query *q, Dialect d,
							uint64_t now);
static void query_sens_one(Request *req, const DialectRoute *route, Dialect d,
						   uint64_t now);
static void out_nhn_at_message(OutBuf *o, const DRec *r, const DBatch *b,
							   uint64_t now, bool single);
static void out_nhn_sms_message(OutBuf *o, const DRec *r, const DBatch *b,
								uint64_t now);
static void out_sens_sms_message(OutBuf *o, const DRec *r, const DBatch *b,
								 uint64_t now, bool single);
static void out_sens_at_message(OutBuf *o, const DRec *r, const DBatch *b,
								uint64_t now);
static const char *at_code_name(int code);
static bool send_fallback_code(const Outcome *oc);
static const char *sms_code_name(int code);

/* the counters of what handsets received */
static int	received_bucket(const DRec *r, uint64_t now);
static int	compare_received(const void *a, const void *b);

/* idempotency keys */
static bool idem_claim(const char *key, size_t len, uint64_t now,
					   uint64_t window_us);
static void idem_clear(void);

/* templates */
static int	template_state(const char *code, size_t len);

/* JSON trees */
static bool jparse(JDoc *doc, char *body, size_t len);
static int	jparse_value(JDoc *doc, JsonCursor *c, int depth);
static int	jnew(JDoc *doc, JType type);
static const JNode *jget(const JDoc *doc, const JNode *obj, const char *key);
static const char *jstr(const JDoc *doc, const JNode *obj, const char *key);
static bool jtrue(const JDoc *doc, const JNode *obj, const char *key);

static uint64_t dhash(const char *s, size_t len);

static DStore dstore;
static pthread_mutex_t idem_lock = PTHREAD_MUTEX_INITIALIZER;
static IdemKey *idem_buckets[IDEM_BUCKETS];
static size_t idem_count;
static pthread_mutex_t template_lock = PTHREAD_MUTEX_INITIALIZER;
static Template templates[MAX_TEMPLATES];
static int	ntemplates;
static char templates_text[MAX_TEMPLATES_TEXT + 1];
static _Atomic uint64_t tag_state = UINT64_C(0x243f6a8885a308d3);

/* time styles for out_local_time */
#define TS_NHN			0		/* 2025-01-31 09:30:00 */
#define TS_NHN_SMS		1		/* 2025-01-31 09:30:00.0 */
#define TS_SENS_REQ		2		/* 2025-01-31T09:30:00.123 */
#define TS_SENS_DONE	3		/* 2025-01-31T09:30:00 */
#define TS_DATE			4		/* 2025-01-31 */


/*
 * dialect_init: the store's lock and an empty store.  Called once, before
 * the first request and before faults_reset() loads the default templates.
 */
void
dialect_init(void)
{
	pthread_mutex_init(&dstore.lock, NULL);
	dialect_reset();
}

/*
 * dialect_reset: forget every record and idempotency key (for /_reset and
 * at exit).  Batch and record numbers go on from where they were, so an id
 * handed out before the reset is unknown after it, never someone else's.
 */
void
dialect_reset(void)
{
	pthread_mutex_lock(&dstore.lock);
	free(dstore.recs);
	free(dstore.batches);
	free(dstore.text);
	dstore.recs = NULL;
	dstore.batches = NULL;
	dstore.nrecs = dstore.recs_cap = 0;
	dstore.nbatches = dstore.batches_cap = 0;
	dstore.text_cap = 4096;
	dstore.text = xmalloc(dstore.text_cap);
	dstore.text[0] = '\0';		/* offset 0: absent */
	dstore.text_len = 1;
	dstore.batch_base = dstore.next_batch;
	dstore.rec_base = dstore.next_rec;
	dstore.overflow = false;
	pthread_mutex_unlock(&dstore.lock);
	idem_clear();
}

/*
 * dialect_route: is url one of the providers' paths?  Fills route with the
 * operation and the path's variable parts.  Paths are matched on their
 * segments, as the providers spell them (appkeys for AlimTalk, appKeys for
 * SMS).  Any other path stays with the generic dialect.
 */
bool
dialect_route(const char *url, DialectRoute *route)
{
	char		p[8][ROUTE_PART_BYTES];
	int			n;

	memset(route, 0, sizeof(DialectRoute));
	if (!split_path(url, p, 8, &n) || n < 5)
		return false;

	if (strcmp(p[0], "alimtalk") == 0 && strcmp(p[1], "v2.3") == 0 &&
		strcmp(p[2], "appkeys") == 0 && strcmp(p[4], "messages") == 0)
	{
		strcpy(route->service, p[3]);
		if (n == 5)
			route->op = DOP_NHN_AT_MESSAGES;
		else if (n == 7 && strlen(p[6]) < sizeof(route->seq))
		{
			route->op = DOP_NHN_AT_MESSAGE;
			strcpy(route->id, p[5]);
			strcpy(route->seq, p[6]);
		}
		else
			return false;
		return true;
	}
	if (strcmp(p[0], "sms") == 0 && strcmp(p[1], "v3.0") == 0 &&
		strcmp(p[2], "appKeys") == 0 && n >= 6 && strcmp(p[4], "sender") == 0 &&
		(strcmp(p[5], "sms") == 0 || strcmp(p[5], "mms") == 0))
	{
		strcpy(route->service, p[3]);
		route->lms = strcmp(p[5], "mms") == 0;
		if (n == 6)
			route->op = DOP_NHN_SMS_SENDER;
		else if (n == 7)
		{
			route->op = DOP_NHN_SMS_ONE;
			strcpy(route->id, p[6]);
		}
		else
			return false;
		return true;
	}
	if ((strcmp(p[0], "sms") == 0 || strcmp(p[0], "alimtalk") == 0) &&
		strcmp(p[1], "v2") == 0 && strcmp(p[2], "services") == 0 &&
		strcmp(p[4], "messages") == 0)
	{
		bool		sms = strcmp(p[0], "sms") == 0;

		strcpy(route->service, p[3]);
		if (n == 5)
			route->op = sms ? DOP_SENS_SMS_MESSAGES : DOP_SENS_AT_MESSAGES;
		else if (n == 6)
		{
			route->op = sms ? DOP_SENS_SMS_MESSAGE : DOP_SENS_AT_MESSAGE;
			strcpy(route->id, p[5]);
		}
		else
			return false;
		return true;
	}
	return false;
}

/*
 * split_path: "/a/b/c" into its non-empty segments.  False when there are
 * more than max segments or one does not fit ROUTE_PART_BYTES.
 */
static bool
split_path(const char *url, char parts[][ROUTE_PART_BYTES], int max, int *n)
{
	const char *p = url;

	*n = 0;
	while (*p != '\0')
	{
		const char *end;
		size_t		len;

		while (*p == '/')
			p++;
		if (*p == '\0')
			break;
		end = strchr(p, '/');
		len = end != NULL ? (size_t) (end - p) : strlen(p);
		if (*n >= max || len >= ROUTE_PART_BYTES)
			return false;
		memcpy(parts[*n], p, len);
		parts[*n][len] = '\0';
		(*n)++;
		p += len;
	}
	return true;
}

static Dialect
dialect_of(DialectOp op)
{
	switch (op)
	{
		case DOP_NHN_AT_MESSAGES:
		case DOP_NHN_AT_MESSAGE:
			return D_NHN_AT;
		case DOP_NHN_SMS_SENDER:
		case DOP_NHN_SMS_ONE:
			return D_NHN_SMS;
		case DOP_SENS_SMS_MESSAGES:
		case DOP_SENS_SMS_MESSAGE:
			return D_SENS_SMS;
		case DOP_SENS_AT_MESSAGES:
		case DOP_SENS_AT_MESSAGE:
			return D_SENS_AT;
	}
	return D_NHN_AT;
}

static bool
is_send_op(DialectOp op)
{
	return op == DOP_NHN_AT_MESSAGES || op == DOP_NHN_SMS_SENDER ||
		op == DOP_SENS_SMS_MESSAGES || op == DOP_SENS_AT_MESSAGES;
}

/*
 * dialect_decide: a provider's path, once the body is complete.  POST on a
 * send path sends; GET on any path queries.  Returns the delay before the
 * answer, as request_decide does.
 */
int64_t
dialect_decide(Request *req, struct MHD_Connection *conn, const char *method)
{
	bool		is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
	bool		is_post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;

	req->phase = PHASE_ANSWER;
	if (is_post && is_send_op(req->route.op))
		return dialect_send(req, conn, method);
	if (is_get)
		return dialect_query(req, conn, method);
	set_answer_text(req, MHD_HTTP_METHOD_NOT_ALLOWED,
					"{\"error\":\"method_not_allowed\"}");
	return 0;
}

/*
 * dialect_send: a send request of any dialect.  The order is the order the
 * generic dialect uses, which is the order a provider checks things in:
 * authentication, body size and syntax, the injected faults, reply_body,
 * then the provider's own request-level checks (template, idempotency key)
 * and at last the recipients.  Only a request that gets that far makes
 * records.  The recipients of a well-shaped body go to the received log
 * whatever the answer, each under its recipientGroupingKey (NHN) or its
 * number.  Returns the delay before the answer.
 */
static int64_t
dialect_send(Request *req, struct MHD_Connection *conn, const char *method)
{
	Dialect		d = dialect_of(req->route.op);
	bool		sens = d == D_SENS_SMS || d == D_SENS_AT;
	uint64_t	arrived_us = wall_us();
	bool		shutting = atomic_load_explicit(&shutting_down, memory_order_relaxed);
	int64_t		delay_ms = shutting ? 0 :
		atomic_load_explicit(&faults.latency_ms, memory_order_relaxed);
	JDoc		doc;
	SendReq		sr;
	Batch		log;
	bool		authorized;
	bool		parsed;
	bool		shaped = false;
	int			code = 0;
	char		msg[256];
	char		request_id[48];
	Outcome    *outs = NULL;
	char	  (*message_ids)[40] = NULL;
	int			i;

	memset(&doc, 0, sizeof(doc));
	memset(&sr, 0, sizeof(sr));
	memset(&log, 0, sizeof(log));
	log.msgs = log.inline_msgs;
	log.cap = INLINE_MESSAGES;
	sr.dialect = d;
	sr.lms = req->route.lms;
	msg[0] = '\0';

	switch (d)
	{
		case D_NHN_AT:
			atomic_fetch_add_explicit(&stats.nhn_alimtalk_sends, 1, memory_order_relaxed);
			break;
		case D_NHN_SMS:
			atomic_fetch_add_explicit(&stats.nhn_sms_sends, 1, memory_order_relaxed);
			break;
		case D_SENS_SMS:
			atomic_fetch_add_explicit(&stats.sens_sms_sends, 1, memory_order_relaxed);
			break;
		case D_SENS_AT:
			atomic_fetch_add_explicit(&stats.sens_alimtalk_sends, 1, memory_order_relaxed);
			break;
	}

	/* Authentication prepares its own refusal; the body is parsed anyway. */
	authorized = sens ? sens_authorized(req, conn, method) :
		nhn_authorized(req, conn, d);
	parsed = !req->body_too_large && jparse(&doc, req->body, req->body_len);
	if (parsed)
	{
		if (d == D_NHN_AT)
			shaped = shape_nhn_at(&doc, &sr, &code, msg, sizeof(msg));
		else if (d == D_NHN_SMS)
			shaped = shape_nhn_sms(&doc, &sr, &code, msg, sizeof(msg));
		else
			shaped = shape_sens(&doc, &sr, msg, sizeof(msg));
	}

	if (!authorized)
		goto done;
	if (req->body_too_large)
	{
		set_answer_text(req, 413, "{\"error\":\"too_large\"}");
		goto done;
	}
	if (!parsed)
	{
		if (d == D_NHN_AT)
			nhn_error(req, d, MHD_HTTP_OK, -3002, "Field is not valid.");
		else if (d == D_NHN_SMS)
			nhn_error(req, d, MHD_HTTP_OK, -9997, "Invalid API parameters.");
		else
			sens_error(req, MHD_HTTP_BAD_REQUEST, "Bad Request",
					   "the body is not valid JSON");
		goto done;
	}
	if (!shaped)
	{
		if (sens)
			sens_error(req, MHD_HTTP_BAD_REQUEST, "Bad Request", msg);
		else
			nhn_error(req, d, MHD_HTTP_OK, code, msg);
		goto done;
	}
	atomic_fetch_add_explicit(&stats.messages_received, (uint64_t) sr.count,
							  memory_order_relaxed);

	if (apply_faults(req, &delay_ms, shutting,
					 sens ? "{\"requestId\": \"" : "{\"header\": {"))
		goto done;
	if (answer_reply_body(req, sr.count))
		goto done;

	if (d == D_NHN_AT || d == D_SENS_AT)
	{
		int			state = template_state(sr.template_code, sr.template_len);

		if (state <= 0)
		{
			atomic_fetch_add_explicit(&stats.template_errors, 1, memory_order_relaxed);
			if (d == D_NHN_AT && state < 0)
				nhn_error(req, d, MHD_HTTP_OK, -3003, "Template does not exist.");
			else if (d == D_NHN_AT)
				nhn_error(req, d, MHD_HTTP_OK, -3005, "Please check template status.");
			else
				sens_error(req, MHD_HTTP_BAD_REQUEST, "Bad Request",
						   state < 0 ? "template does not exist" :
						   "template is not approved");
			goto done;
		}
	}
	if (d == D_NHN_AT)
	{
		const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
													  "X-NC-API-IDEMPOTENCY-KEY");

		if (key != NULL && strlen(key) > IDEM_MAX_KEY_BYTES)
		{
			snprintf(msg, sizeof(msg),
					 "The 'X-NC-API-IDEMPOTENCY-KEY' must be at less than or equal to %d.",
					 IDEM_MAX_KEY_BYTES);
			nhn_error(req, d, MHD_HTTP_OK, -2000, msg);
			goto done;
		}
		if (key != NULL &&
			!idem_claim(key, strlen(key), arrived_us,
						(uint64_t) atomic_load(&faults.idempotency_window_s) * 1000000))
		{
			atomic_fetch_add_explicit(&stats.idempotency_rejected, 1, memory_order_relaxed);
			nhn_error(req, d, MHD_HTTP_OK, -1005,
					  "The same 'X-NC-API-IDEMPOTENCY-KEY' was used within the last 10 minute.");
			goto done;
		}
	}

	outs = xmalloc((size_t) sr.count * sizeof(Outcome));
	message_ids = xmalloc((size_t) sr.count * sizeof(*message_ids));
	{
		DBatch		b;

		process_send(&doc, &sr, &req->route, arrived_us, request_id, outs,
					 message_ids, req->body_len);
		memset(&b, 0, sizeof(b));
		b.created_us = arrived_us;
		strcpy(b.request_id, request_id);
		answer_send(req, &sr, &b, outs, message_ids);
	}
	if (roll(&faults.lost_reply_rate))
	{
		/* taken and delivered, but the answer never reaches the client */
		atomic_fetch_add_explicit(&stats.lost_replies, 1, memory_order_relaxed);
		req->phase = PHASE_CLOSE;
		delay_ms = 0;
	}

done:
	if (shaped)
	{
		for (i = 0; i < sr.count; i++)
		{
			Message    *m;

			if (log.count == log.cap)
			{
				int			cap = log.cap * 4;

				if (log.msgs == log.inline_msgs)
				{
					log.msgs = xmalloc((size_t) cap * sizeof(Message));
					memcpy(log.msgs, log.inline_msgs,
						   (size_t) log.count * sizeof(Message));
				}
				else
					log.msgs = xrealloc(log.msgs, (size_t) cap * sizeof(Message));
				log.cap = cap;
			}
			m = &log.msgs[log.count++];
			memset(m, 0, sizeof(Message));
			m->to = sr.items[i].to;
			m->to_len = sr.items[i].to_len;
			m->id = sr.items[i].gkey != NULL && sr.items[i].gkey[0] != '\0' ?
				sr.items[i].gkey : sr.items[i].to;
			m->id_len = strlen(m->id);
			if (m->id_len > MAX_ID_BYTES)
				m->id_len = MAX_ID_BYTES;
		}
		received_append(&log, arrived_us,
						req->phase == PHASE_CLOSE ? 0 : req->status);
	}
	if (log.msgs != log.inline_msgs)
		free(log.msgs);
	free(sr.items);
	free(doc.nodes);
	free(outs);
	free(message_ids);
	return delay_ms;
}

/*
 * nhn_authorized: the appkey in the path (when --nhn-appkey is given) and
 * X-Secret-Key (when --nhn-secret, or --nhn-sms-secret for SMS, is given);
 * the unauthorized fault fails it too.  On failure the answer is prepared:
 * the documented envelope, with HTTP status nhn_auth_status.
 */
static bool
nhn_authorized(Request *req, struct MHD_Connection *conn, Dialect d)
{
	const char *secret = d == D_NHN_AT ? options.nhn_secret : options.nhn_sms_secret;
	const char *given = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
													"X-Secret-Key");
	unsigned int status = (unsigned int) atomic_load(&faults.nhn_auth_status);

	if (options.nhn_appkey != NULL &&
		strcmp(req->route.service, options.nhn_appkey) != 0)
	{
		atomic_fetch_add_explicit(&stats.auth_failures, 1, memory_order_relaxed);
		nhn_error(req, d, status, -1000, "Invalid appKey.");
		return false;
	}
	if (atomic_load(&faults.unauthorized) ||
		(secret != NULL && (given == NULL || strcmp(given, secret) != 0)))
	{
		atomic_fetch_add_explicit(&stats.auth_failures, 1, memory_order_relaxed);
		if (d == D_NHN_AT)
			nhn_error(req, d, status, -1001, "Invalid secretKey.");
		else
			nhn_error(req, d, status, -1000, "Invalid appKey.");
		return false;
	}
	return true;
}

/*
 * sens_authorized: the API Gateway's check of every SENS request: the three
 * x-ncp-* headers present, the access key known, the timestamp within five
 * minutes of the mock's clock, and x-ncp-apigw-signature-v2 equal to
 * Base64(HMAC-SHA256(secret, "METHOD URI\ntimestamp\naccessKey")) where URI
 * is the path and query exactly as sent.  Without --sens-access-key nothing
 * is checked (but the unauthorized fault still answers 401).
 */
static bool
sens_authorized(Request *req, struct MHD_Connection *conn, const char *method)
{
	const char *ts = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
												 "x-ncp-apigw-timestamp");
	const char *ak = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
												 "x-ncp-iam-access-key");
	const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
												  "x-ncp-apigw-signature-v2");
	unsigned char mac[SHA256_DIGEST_BYTES];
	char		expected[64];
	OutBuf		text;
	char	   *end;
	unsigned long long ts_ms;
	int64_t		skew;
	bool		ok;

	if (atomic_load(&faults.unauthorized))
	{
		atomic_fetch_add_explicit(&stats.auth_failures, 1, memory_order_relaxed);
		sens_auth_fail(req, "Invalid authentication information.");
		return false;
	}
	if (options.sens_access_key == NULL)
		return true;
	if (ts == NULL || ak == NULL || sig == NULL || *ts == '\0' || *ak == '\0' ||
		*sig == '\0')
	{
		atomic_fetch_add_explicit(&stats.auth_failures, 1, memory_order_relaxed);
		sens_auth_fail(req, "Authentication information are missing.");
		return false;
	}
	if (strcmp(ak, options.sens_access_key) != 0)
	{
		atomic_fetch_add_explicit(&stats.auth_failures, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&stats.sens_signature_failures, 1, memory_order_relaxed);
		sens_auth_fail(req, "Invalid authentication information.");
		return false;
	}
	ts_ms = strtoull(ts, &end, 10);
	skew = (int64_t) (wall_us() / 1000) - (int64_t) ts_ms;
	if (*ts < '0' || *ts > '9' || *end != '\0' || skew > SENS_MAX_SKEW_MS ||
		skew < -SENS_MAX_SKEW_MS)
	{
		atomic_fetch_add_explicit(&stats.auth_failures, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&stats.sens_clock_skew, 1, memory_order_relaxed);
		sens_auth_fail(req, "Invalid timestamp.");
		return false;
	}

	out_init(&text, 256);
	out_str(&text, method);
	OUT_LIT(&text, " ");
	out_str(&text, req->raw_uri);
	OUT_LIT(&text, "\n");
	out_str(&text, ts);
	OUT_LIT(&text, "\n");
	out_str(&text, ak);
	hmac_sha256((const unsigned char *) options.sens_secret,
				strlen(options.sens_secret),
				(const unsigned char *) text.data, text.len, mac);
	free(text.data);
	base64_encode(mac, sizeof(mac), expected);
	ok = strcmp(expected, sig) == 0;
	if (!ok)
	{
		atomic_fetch_add_explicit(&stats.auth_failures, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&stats.sens_signature_failures, 1, memory_order_relaxed);
		sens_auth_fail(req, "Invalid authentication information.");
		if (options.verbose)
			fprintf(stderr, "mock_tms: SENS signature mismatch for \"%s %s\"\n",
					method, req->raw_uri);
	}
	return ok;
}

/* sens_auth_fail: the API Gateway's 401. */
static void
sens_auth_fail(Request *req, const char *details)
{
	OutBuf		o;

	out_init(&o, 160);
	OUT_LIT(&o, "{\"error\":{\"errorCode\":\"200\",\"message\":\"Authentication Failed\",\"details\":");
	out_json_string(&o, details, strlen(details));
	OUT_LIT(&o, "}}");
	set_answer(req, MHD_HTTP_UNAUTHORIZED, &o);
}

/*
 * shape_nhn_at: an NHN AlimTalk send body, checked as the provider checks
 * it.  Fills sr (items point into the body); on failure *code and msg are
 * the request-level result.  Unknown keys are skipped.
 */
static bool
shape_nhn_at(const JDoc *doc, SendReq *sr, int *code, char *msg, size_t msglen)
{
	const JNode *root = &doc->nodes[0];
	const JNode *list;
	const JNode *n;
	int			i;

	if (root->type != J_OBJECT)
	{
		*code = -3002;
		snprintf(msg, msglen, "Field is not valid.");
		return false;
	}
	sr->sender = jstr(doc, root, "senderKey");
	sr->template_code = jstr(doc, root, "templateCode");
	sr->sender_gkey = jstr(doc, root, "senderGroupingKey");
	list = jget(doc, root, "recipientList");
	*code = -2001;
	if (sr->sender == NULL || sr->sender[0] == '\0')
	{
		snprintf(msg, msglen, "The 'senderKey' must not be blank.");
		return false;
	}
	if (sr->template_code == NULL || sr->template_code[0] == '\0')
	{
		snprintf(msg, msglen, "The 'templateCode' must not be blank.");
		return false;
	}
	sr->template_len = strlen(sr->template_code);
	if (list == NULL || list->type != J_ARRAY || list->count == 0)
	{
		snprintf(msg, msglen, "The 'recipientList' must not be blank.");
		return false;
	}
	if (list->count > NHN_MAX_RECIPIENTS)
	{
		*code = -2005;
		snprintf(msg, msglen, "The 'recipientList' must be less than or equal to %d.",
				 NHN_MAX_RECIPIENTS);
		return false;
	}

	sr->items = xmalloc((size_t) list->count * sizeof(SendItem));
	for (i = 0, n = &doc->nodes[list->first]; i < list->count;
		 i++, n = n->next >= 0 ? &doc->nodes[n->next] : NULL)
	{
		SendItem   *it = &sr->items[i];
		const JNode *params;
		const JNode *resend;

		memset(it, 0, sizeof(SendItem));
		if (n->type != J_OBJECT)
		{
			*code = -3002;
			snprintf(msg, msglen, "Field is not valid.");
			return false;
		}
		it->to = jstr(doc, n, "recipientNo");
		if (it->to == NULL || it->to[0] == '\0')
		{
			snprintf(msg, msglen, "The 'recipientNo' must not be blank.");
			return false;
		}
		it->to_len = strlen(it->to);
		it->gkey = jstr(doc, n, "recipientGroupingKey");
		params = jget(doc, n, "templateParameter");
		it->params = params != NULL && params->type == J_OBJECT ?
			(int) (params - doc->nodes) : -1;
		resend = jget(doc, n, "resendParameter");
		if (resend != NULL && resend->type == J_OBJECT)
		{
			it->resend = jtrue(doc, resend, "isResend");
			it->fb_type = jstr(doc, resend, "resendType");
			it->fb_subject = jstr(doc, resend, "resendTitle");
			it->fb_content = jstr(doc, resend, "resendContent");
			it->fb_from = jstr(doc, resend, "resendSendNo");
		}
		sr->count = i + 1;
	}
	return true;
}

/*
 * shape_nhn_sms: an NHN SMS (or, on /sender/mms, LMS) send body.  Lengths
 * are counted in characters against the documented maximums (255 for an
 * SMS body; 120 and 4,000 for an LMS title and body); four-byte UTF-8
 * characters (emoji) are refused as EUC-KR cannot carry them.
 */
static bool
shape_nhn_sms(const JDoc *doc, SendReq *sr, int *code, char *msg, size_t msglen)
{
	const JNode *root = &doc->nodes[0];
	const JNode *list;
	const JNode *n;
	int			i;

	if (root->type != J_OBJECT)
	{
		*code = -9997;
		snprintf(msg, msglen, "Invalid API parameters.");
		return false;
	}
	sr->body = jstr(doc, root, "body");
	sr->title = jstr(doc, root, "title");
	sr->sender = jstr(doc, root, "sendNo");
	sr->sender_gkey = jstr(doc, root, "senderGroupingKey");
	list = jget(doc, root, "recipientList");
	if (sr->body == NULL || sr->body[0] == '\0' ||
		(sr->lms && (sr->title == NULL || sr->title[0] == '\0')))
	{
		*code = -2014;
		snprintf(msg, msglen, "Title or body is missing.");
		return false;
	}
	if (sr->sender == NULL || sr->sender[0] == '\0')
	{
		*code = -2312;
		snprintf(msg, msglen, "Not regist sendno.");
		return false;
	}
	if (list == NULL || list->type != J_ARRAY || list->count == 0)
	{
		*code = -2001;
		snprintf(msg, msglen, "RecipientList can not be null.");
		return false;
	}
	if (list->count > NHN_MAX_RECIPIENTS)
	{
		*code = -2016;
		snprintf(msg, msglen, "The max recipient size is %d.", NHN_MAX_RECIPIENTS);
		return false;
	}
	if ((!sr->lms && utf8_chars(sr->body) > 255) ||
		(sr->lms && (utf8_chars(sr->body) > 4000 || utf8_chars(sr->title) > 120)))
	{
		*code = -2015;
		snprintf(msg, msglen, "Title or Body exceed maximum byte.");
		return false;
	}
	if (has_emoji(sr->body) || (sr->lms && has_emoji(sr->title)))
	{
		*code = -2023;
		snprintf(msg, msglen, "Unacceptable characters in title and body.");
		return false;
	}

	sr->items = xmalloc((size_t) list->count * sizeof(SendItem));
	for (i = 0, n = &doc->nodes[list->first]; i < list->count;
		 i++, n = n->next >= 0 ? &doc->nodes[n->next] : NULL)
	{
		SendItem   *it = &sr->items[i];

		memset(it, 0, sizeof(SendItem));
		it->params = -1;
		if (n->type != J_OBJECT)
		{
			*code = -9997;
			snprintf(msg, msglen, "Invalid API parameters.");
			return false;
		}
		it->to = jstr(doc, n, "recipientNo");
		if (it->to == NULL)
			it->to = jstr(doc, n, "internationalRecipientNo");
		if (it->to == NULL)
			it->to = "";
		it->to_len = strlen(it->to);
		it->gkey = jstr(doc, n, "recipientGroupingKey");
		sr->count = i + 1;
	}
	return true;
}

/*
 * shape_sens: a SENS SMS or AlimTalk send body (the dialect is in sr).  Any
 * problem is a 400 whose detail is msg.
 */
static bool
shape_sens(const JDoc *doc, SendReq *sr, char *msg, size_t msglen)
{
	const JNode *root = &doc->nodes[0];
	const JNode *list;
	const JNode *n;
	bool		at = sr->dialect == D_SENS_AT;
	int			i;

	if (root->type != J_OBJECT)
	{
		snprintf(msg, msglen, "the body is not a JSON object");
		return false;
	}
	if (at)
	{
		sr->sender = jstr(doc, root, "plusFriendId");
		sr->template_code = jstr(doc, root, "templateCode");
		if (sr->sender == NULL || sr->sender[0] == '\0')
		{
			snprintf(msg, msglen, "plusFriendId is required");
			return false;
		}
		if (sr->template_code == NULL || sr->template_code[0] == '\0')
		{
			snprintf(msg, msglen, "templateCode is required");
			return false;
		}
		sr->template_len = strlen(sr->template_code);
	}
	else
	{
		const char *type = jstr(doc, root, "type");

		if (type == NULL ||
			(strcasecmp(type, "SMS") != 0 && strcasecmp(type, "LMS") != 0 &&
			 strcasecmp(type, "MMS") != 0))
		{
			snprintf(msg, msglen, "type must be SMS, LMS or MMS");
			return false;
		}
		sr->lms = strcasecmp(type, "SMS") != 0;
		sr->sender = jstr(doc, root, "from");
		sr->body = jstr(doc, root, "content");
		sr->title = jstr(doc, root, "subject");
		if (sr->sender == NULL || sr->sender[0] == '\0')
		{
			snprintf(msg, msglen, "from is required");
			return false;
		}
		if (sr->body == NULL || sr->body[0] == '\0')
		{
			snprintf(msg, msglen, "content is required");
			return false;
		}
	}
	list = jget(doc, root, "messages");
	if (list == NULL || list->type != J_ARRAY || list->count == 0 ||
		list->count > SENS_MAX_MESSAGES)
	{
		snprintf(msg, msglen, "messages must hold 1 to %d items", SENS_MAX_MESSAGES);
		return false;
	}

	sr->items = xmalloc((size_t) list->count * sizeof(SendItem));
	for (i = 0, n = &doc->nodes[list->first]; i < list->count;
		 i++, n = n->next >= 0 ? &doc->nodes[n->next] : NULL)
	{
		SendItem   *it = &sr->items[i];

		memset(it, 0, sizeof(SendItem));
		it->params = -1;
		if (n->type != J_OBJECT)
		{
			snprintf(msg, msglen, "messages[%d] is not an object", i);
			return false;
		}
		it->to = jstr(doc, n, "to");
		if (it->to == NULL || it->to[0] == '\0')
		{
			snprintf(msg, msglen, "messages[%d].to is required", i);
			return false;
		}
		it->to_len = strlen(it->to);
		it->content = jstr(doc, n, "content");
		it->subject = jstr(doc, n, "subject");
		if (at)
		{
			const JNode *fc = jget(doc, n, "failoverConfig");

			if (it->content == NULL || it->content[0] == '\0')
			{
				snprintf(msg, msglen, "messages[%d].content is required", i);
				return false;
			}
			it->resend = jtrue(doc, n, "useSmsFailover");
			if (fc != NULL && fc->type == J_OBJECT)
			{
				it->fb_type = jstr(doc, fc, "type");
				it->fb_from = jstr(doc, fc, "from");
				it->fb_subject = jstr(doc, fc, "subject");
				it->fb_content = jstr(doc, fc, "content");
			}
		}
		sr->count = i + 1;
	}
	return true;
}

/* has_emoji: any four-byte UTF-8 sequence (outside the BMP). */
static bool
has_emoji(const char *s)
{
	for (; s != NULL && *s != '\0'; s++)
		if ((unsigned char) *s >= 0xF0)
			return true;
	return false;
}

static size_t
utf8_chars(const char *s)
{
	size_t		n = 0;

	for (; s != NULL && *s != '\0'; s++)
		if (((unsigned char) *s & 0xC0) != 0x80)
			n++;
	return n;
}

/* euckr_bytes: what s would weigh in EUC-KR: ASCII 1 byte, the rest 2. */
static size_t
euckr_bytes(const char *s)
{
	size_t		n = 0;

	for (; s != NULL && *s != '\0'; s++)
	{
		unsigned char ch = (unsigned char) *s;

		if (ch < 0x80)
			n++;
		else if ((ch & 0xC0) != 0x80)
			n += 2;
	}
	return n;
}

/*
 * nhn_error: an NHN answer that is only a header, for request-level
 * failures (isSuccessful false).
 */
static void
nhn_error(Request *req, Dialect d, unsigned int status, int code, const char *msg)
{
	OutBuf		o;

	out_init(&o, 200);
	OUT_LIT(&o, "{");
	out_nhn_header(&o, d, code, msg);
	if (d == D_NHN_SMS)
		OUT_LIT(&o, ",\"body\":null");
	OUT_LIT(&o, "}");
	set_answer(req, status, &o);
}

/* sens_error: a SENS service error, {"status", "errorMessage", "errors"}. */
static void
sens_error(Request *req, unsigned int status, const char *msg, const char *detail)
{
	OutBuf		o;

	out_init(&o, 200);
	OUT_LIT(&o, "{\"status\":");
	out_u64(&o, status);
	OUT_LIT(&o, ",\"errorMessage\":");
	out_json_string(&o, msg, strlen(msg));
	OUT_LIT(&o, ",\"errors\":[");
	if (detail != NULL)
		out_json_string(&o, detail, strlen(detail));
	OUT_LIT(&o, "]}");
	set_answer(req, status, &o);
}

/*
 * out_nhn_header: "header":{...} in the key order each NHN product
 * documents (AlimTalk: resultCode first; SMS: isSuccessful first).
 */
static void
out_nhn_header(OutBuf *o, Dialect d, int code, const char *msg)
{
	if (d == D_NHN_SMS)
	{
		OUT_LIT(o, "\"header\":{\"isSuccessful\":");
		out_str(o, code == 0 ? "true" : "false");
		OUT_LIT(o, ",\"resultCode\":");
		out_i64(o, code);
		OUT_LIT(o, ",\"resultMessage\":");
		out_json_string(o, msg, strlen(msg));
		OUT_LIT(o, "}");
	}
	else
	{
		OUT_LIT(o, "\"header\":{\"resultCode\":");
		out_i64(o, code);
		OUT_LIT(o, ",\"resultMessage\":");
		out_json_string(o, msg, strlen(msg));
		OUT_LIT(o, ",\"isSuccessful\":");
		out_str(o, code == 0 ? "true" : "false");
		OUT_LIT(o, "}");
	}
}

/*
 * answer_send: the success answer of a send request, one result per
 * recipient for NHN (recipientSeq is the 1-based position), the 202 of SENS
 * (AlimTalk lists each message's messageId).
 */
static void
answer_send(Request *req, const SendReq *sr, const DBatch *b,
			const Outcome *outs, char (*message_ids)[40])
{
	OutBuf		o;
	int			i;

	out_init(&o, 256 + (size_t) sr->count * 160);
	if (sr->dialect == D_NHN_AT || sr->dialect == D_NHN_SMS)
	{
		bool		at = sr->dialect == D_NHN_AT;

		OUT_LIT(&o, "{");
		out_nhn_header(&o, sr->dialect, 0, "SUCCESS");
		out_str(&o, at ? ",\"message\":{\"requestId\":" : ",\"body\":{\"data\":{\"requestId\":");
		out_text(&o, b->request_id);
		if (!at)
			OUT_LIT(&o, ",\"statusCode\":\"2\"");
		OUT_LIT(&o, ",\"senderGroupingKey\":");
		out_text(&o, sr->sender_gkey);
		out_str(&o, at ? ",\"sendResults\":[" : ",\"sendResultList\":[");
		for (i = 0; i < sr->count; i++)
		{
			const SendItem *it = &sr->items[i];
			const Outcome *oc = &outs[i];
			int			code = 0;
			const char *msg = "SUCCESS";

			if (!oc->valid)
			{
				code = at ? -5000 : -2019;
				msg = "RecipientNo is invalid.";
			}
			else if (oc->sys_error)
			{
				code = at ? -9999 : -2021;
				msg = at ? "System error." : "System error. Failed insert queue.";
			}
			else if (at && send_fallback_code(oc))
			{
				code = oc->at_code;
				msg = at_code_name(code);
			}
			if (i > 0)
				OUT_LIT(&o, ",");
			if (at)
			{
				OUT_LIT(&o, "{\"recipientSeq\":");
				out_u64(&o, (uint64_t) i + 1);
				OUT_LIT(&o, ",\"recipientNo\":");
				out_text(&o, it->to);
				OUT_LIT(&o, ",\"resultCode\":");
				out_i64(&o, code);
				OUT_LIT(&o, ",\"resultMessage\":");
				out_text(&o, msg);
			}
			else
			{
				OUT_LIT(&o, "{\"recipientNo\":");
				out_text(&o, it->to);
				OUT_LIT(&o, ",\"resultCode\":");
				out_i64(&o, code);
				OUT_LIT(&o, ",\"resultMessage\":");
				out_text(&o, msg);
				OUT_LIT(&o, ",\"recipientSeq\":");
				out_u64(&o, (uint64_t) i + 1);
			}
			OUT_LIT(&o, ",\"recipientGroupingKey\":");
			out_text(&o, it->gkey);
			OUT_LIT(&o, "}");
		}
		out_str(&o, at ? "]}}" : "]}}}");
		set_answer(req, MHD_HTTP_OK, &o);
		return;
	}

	OUT_LIT(&o, "{\"requestId\":");
	out_text(&o, b->request_id);
	OUT_LIT(&o, ",\"requestTime\":");
	out_local_time(&o, b->created_us, TS_SENS_REQ);
	OUT_LIT(&o, ",\"statusCode\":\"202\",\"statusName\":\"success\"");
	if (sr->dialect == D_SENS_AT)
	{
		OUT_LIT(&o, ",\"messages\":[");
		for (i = 0; i < sr->count; i++)
		{
			const SendItem *it = &sr->items[i];

			if (i > 0)
				OUT_LIT(&o, ",");
			OUT_LIT(&o, "{\"messageId\":");
			out_text(&o, message_ids[i]);
			OUT_LIT(&o, ",\"countryCode\":\"82\",\"to\":");
			out_text(&o, it->to);
			OUT_LIT(&o, ",\"content\":");
			out_text(&o, it->content);
			OUT_LIT(&o, ",\"requestStatusCode\":\"A000\",\"requestStatusName\":\"success\""
					",\"requestStatusDesc\":\"성공\",\"useSmsFailover\":");
			out_str(&o, it->resend ? "true" : "false");
			OUT_LIT(&o, "}");
		}
		OUT_LIT(&o, "]");
	}
	OUT_LIT(&o, "}");
	set_answer(req, 202, &o);
}

/* out_text: s as a JSON string, or null. */
static void
out_text(OutBuf *o, const char *s)
{
	if (s == NULL)
		OUT_LIT(o, "null");
	else
		out_json_string(o, s, strlen(s));
}

/* out_local_time: us as a quoted local date-time in one of the TS_ styles. */
static void
out_local_time(OutBuf *o, uint64_t us, int style)
{
	time_t		t = (time_t) (us / 1000000);
	struct tm	tm;
	char		buf[48];
	size_t		n;

	localtime_r(&t, &tm);
	switch (style)
	{
		case TS_NHN:
			n = strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
			break;
		case TS_NHN_SMS:
			n = strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S.0", &tm);
			break;
		case TS_SENS_REQ:
			n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
			n += (size_t) snprintf(buf + n, sizeof(buf) - n, ".%03u",
								   (unsigned int) ((us / 1000) % 1000));
			break;
		case TS_SENS_DONE:
			n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
			break;
		default:
			n = strftime(buf, sizeof(buf), "%Y-%m-%d", &tm);
			break;
	}
	out_json_string(o, buf, n);
}

/*
 * process_send: make the records of an accepted send request and decide
 * each recipient's outcome, under the store's lock.  The request's records
 * are consecutive, in recipient order.  An AlimTalk whose delivery fails
 * and that asked for a fallback gets a second record, the provider's own
 * SMS/LMS, in a request of its own (NHN: a real SMS request, listed by the
 * SMS query API under resendRequestId; SENS: internal).  When the store is
 * full nothing is kept (dialect_overflow) and the ids handed out resolve to
 * nothing.  Fills request_id, outs and message_ids (SENS AlimTalk).
 */
static void
process_send(const JDoc *doc, const SendReq *sr, const DialectRoute *route,
			 uint64_t now, char *request_id, Outcome *outs,
			 char (*message_ids)[40], size_t body_len)
{
	uint64_t	delay_us = (uint64_t) atomic_load(&faults.receipt_delay_ms) * 1000;
	uint64_t	resend_us = (uint64_t) atomic_load(&faults.resend_delay_ms) * 1000;
	BatchKind	kind;
	OutBuf		content;
	uint64_t	accepted = 0;
	uint64_t	refused = 0;
	size_t		bidx;
	int			i;

	switch (sr->dialect)
	{
		case D_NHN_AT:
			kind = BK_NHN_AT;
			break;
		case D_NHN_SMS:
			kind = BK_NHN_SMS;
			break;
		case D_SENS_SMS:
			kind = BK_SENS_SMS;
			break;
		default:
			kind = BK_SENS_AT;
			break;
	}
	for (i = 0; i < sr->count; i++)
		outcome_for(sr->items[i].to, sr->items[i].to_len, &outs[i]);

	out_init(&content, 256);
	pthread_mutex_lock(&dstore.lock);
	if (dstore.nrecs + 2 * (size_t) sr->count > DSTORE_MAX_RECORDS ||
		dstore.text_len + 2 * body_len + 2048 * (size_t) sr->count > DSTORE_MAX_TEXT_BYTES)
	{
		DBatch		lost;

		dstore.overflow = true;
		memset(&lost, 0, sizeof(lost));
		lost.kind = kind;
		lost.created_us = now;
		lost.number = 999999999;	/* never a stored batch */
		make_request_id(&lost);
		strcpy(request_id, lost.request_id);
		for (i = 0; i < sr->count; i++)
			strcpy(message_ids[i], "00000000-0000-4000-8000-ffffffffffff");
		pthread_mutex_unlock(&dstore.lock);
		free(content.data);
		return;
	}

	dstore_batch(kind, sr->lms, now, (uint32_t) sr->count, route->service,
				 sr->sender, sr->template_code, sr->sender_gkey);
	bidx = dstore.nbatches - 1;
	strcpy(request_id, dstore.batches[bidx].request_id);

	for (i = 0; i < sr->count; i++)
	{
		const SendItem *it = &sr->items[i];
		const Outcome *oc = &outs[i];
		DRec		r;
		size_t		ri;
		const char *text;

		memset(&r, 0, sizeof(r));
		r.batch = (uint32_t) bidx;
		r.seq = (uint32_t) i + 1;
		r.tag = (uint32_t) (atomic_fetch_add(&tag_state, UINT64_C(0x9e3779b97f4a7c15)) >> 32);
		r.fallback_rec = -1;
		r.to = dstore_text(it->to, it->to_len);
		r.gkey = it->gkey != NULL ? dstore_text(it->gkey, strlen(it->gkey)) : 0;
		r.due_us = oc->never ? NEVER_US : now + delay_us;

		switch (sr->dialect)
		{
			case D_NHN_AT:
				content.len = 0;
				synth_content(doc, sr, it, &content);
				r.content = dstore_text(content.data, content.len);
				r.channel = CH_ALIMTALK;
				r.resend = it->resend;
				r.code = oc->at_code;
				if (!oc->valid || oc->sys_error)
				{
					r.refused = true;
					r.send_code = !oc->valid ? -5000 : -9999;
				}
				else if (send_fallback_code(oc))
				{
					r.refused = true;
					r.send_code = oc->at_code;
				}
				break;
			case D_NHN_SMS:
				r.content = dstore_text(sr->body, strlen(sr->body));
				r.subject = sr->title != NULL && sr->lms ?
					dstore_text(sr->title, strlen(sr->title)) : 0;
				r.channel = sr->lms ? CH_LMS : CH_SMS;
				r.code = oc->sms_code;
				if (!oc->valid || oc->sys_error)
				{
					r.refused = true;
					r.send_code = !oc->valid ? -2019 : -2021;
				}
				break;
			case D_SENS_SMS:
				text = it->content != NULL ? it->content : sr->body;
				r.content = dstore_text(text, strlen(text));
				text = it->subject != NULL ? it->subject : sr->title;
				r.subject = text != NULL ? dstore_text(text, strlen(text)) : 0;
				r.channel = sr->lms ? CH_LMS : CH_SMS;
				r.code = oc->valid ? oc->sms_code : 3003;
				break;
			case D_SENS_AT:
				r.content = dstore_text(it->content, strlen(it->content));
				r.channel = CH_ALIMTALK;
				r.resend = it->resend;
				r.code = oc->valid ? oc->at_code : 3008;
				break;
		}
		if (r.refused)
		{
			r.due_us = now;
			refused++;
		}
		else
			accepted++;

		dstore_reserve(1);
		ri = dstore.nrecs++;
		dstore.recs[ri] = r;
		if (message_ids != NULL)
			sens_message_id(&dstore.recs[ri], message_ids[i]);
	}

	/*
	 * The provider's own fallback of each failed AlimTalk, after the
	 * request's records so that those stay consecutive.
	 */
	for (i = 0; i < sr->count; i++)
	{
		const SendItem *it = &sr->items[i];
		const Outcome *oc = &outs[i];
		size_t		ri = dstore.batches[bidx].first + (size_t) i;
		DRec		r = dstore.recs[ri];

		if (r.channel == CH_ALIMTALK && r.resend && !r.refused && oc->valid &&
			!oc->never && r.code != 1000)
		{
			const char *fb_text = it->fb_content != NULL ? it->fb_content :
			dtext(r.content);
			bool		lms;
			DRec		f;
			size_t		fi;

			if (it->fb_type != NULL && strcasecmp(it->fb_type, "LMS") == 0)
				lms = true;
			else if (it->fb_type != NULL && strcasecmp(it->fb_type, "SMS") == 0)
				lms = false;
			else
				lms = euckr_bytes(fb_text) > SMS_MAX_EUCKR_BYTES;

			/* copy first: dstore_text may move the text that fb_text is in */
			content.len = 0;
			out_str(&content, fb_text);
			dstore_batch(sr->dialect == D_NHN_AT ? BK_NHN_SMS : BK_SENS_FAILOVER,
						 lms, r.due_us, 1, route->service, it->fb_from, NULL, NULL);
			memset(&f, 0, sizeof(f));
			f.batch = (uint32_t) (dstore.nbatches - 1);
			f.seq = 1;
			f.tag = r.tag ^ 0x5bd1e995;
			f.channel = lms ? CH_LMS : CH_SMS;
			f.fallback = true;
			f.fallback_rec = -1;
			f.code = oc->sms_code;
			f.due_us = r.due_us + resend_us;
			f.to = r.to;
			f.gkey = r.gkey;
			f.content = dstore_text(content.data, content.len);
			f.subject = it->fb_subject != NULL ?
				dstore_text(it->fb_subject, strlen(it->fb_subject)) : 0;
			f.from = it->fb_from != NULL ? dstore_text(it->fb_from, strlen(it->fb_from)) : 0;
			dstore_reserve(1);
			fi = dstore.nrecs++;
			dstore.recs[fi] = f;
			dstore.recs[ri].fallback_rec = (int32_t) fi;
		}
	}
	dstore.next_rec = dstore.rec_base + dstore.nrecs;
	pthread_mutex_unlock(&dstore.lock);
	free(content.data);

	atomic_fetch_add_explicit(&stats.dialect_accepted, accepted, memory_order_relaxed);
	atomic_fetch_add_explicit(&stats.dialect_refused, refused, memory_order_relaxed);
}

/*
 * dstore_batch: append a batch (dstore.lock held) with room for count more
 * records, and give it its request id.  Pointers into the store are not
 * stable across this call.
 */
static DBatch *
dstore_batch(BatchKind kind, bool lms, uint64_t created_us, uint32_t count,
			 const char *service, const char *sender, const char *template_code,
			 const char *sender_gkey)
{
	DBatch	   *b;

	if (dstore.nbatches == dstore.batches_cap)
	{
		dstore.batches_cap = dstore.batches_cap ? dstore.batches_cap * 2 : 256;
		dstore.batches = xrealloc(dstore.batches, dstore.batches_cap * sizeof(DBatch));
	}
	dstore_reserve(count);
	b = &dstore.batches[dstore.nbatches];
	memset(b, 0, sizeof(DBatch));
	b->kind = (uint8_t) kind;
	b->lms = lms;
	b->created_us = created_us;
	b->number = dstore.batch_base + dstore.nbatches;
	b->first = (uint32_t) dstore.nrecs;
	b->count = count;
	dstore.nbatches++;
	dstore.next_batch = b->number + 1;
	make_request_id(b);
	/* dstore_text may move dstore.text, not dstore.batches: b stays valid */
	b->service = service != NULL ? dstore_text(service, strlen(service)) : 0;
	b->sender = sender != NULL ? dstore_text(sender, strlen(sender)) : 0;
	b->template_code = template_code != NULL ?
		dstore_text(template_code, strlen(template_code)) : 0;
	b->sender_gkey = sender_gkey != NULL ?
		dstore_text(sender_gkey, strlen(sender_gkey)) : 0;
	return b;
}

/* dstore_reserve: room for n more records (lock held). */
static void
dstore_reserve(size_t n)
{
	while (dstore.nrecs + n > dstore.recs_cap)
	{
		dstore.recs_cap = dstore.recs_cap ? dstore.recs_cap * 2 : 1024;
		dstore.recs = xrealloc(dstore.recs, dstore.recs_cap * sizeof(DRec));
	}
}

/*
 * make_request_id: a request id shaped like the provider's (NHN: 25
 * characters starting with the local date-time; SENS: a dash-separated
 * prefix), ending in the batch number so that find_batch needs no index.
 */
static void
make_request_id(DBatch *b)
{
	time_t		t = (time_t) (b->created_us / 1000000);
	struct tm	tm;
	char		stamp[20];
	unsigned long n = (unsigned long) (b->number % 1000000000);

	localtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%d%H%M%S", &tm);
	switch ((BatchKind) b->kind)
	{
		case BK_NHN_AT:
			snprintf(b->request_id, sizeof(b->request_id), "%sAT%09lu", stamp, n);
			break;
		case BK_NHN_SMS:
			snprintf(b->request_id, sizeof(b->request_id), "%sSM%09lu", stamp, n);
			break;
		case BK_SENS_SMS:
			snprintf(b->request_id, sizeof(b->request_id), "RSSA-%s-%09lu", stamp, n);
			break;
		case BK_SENS_AT:
			snprintf(b->request_id, sizeof(b->request_id), "RATA-%s-%09lu", stamp, n);
			break;
		case BK_SENS_FAILOVER:
			snprintf(b->request_id, sizeof(b->request_id), "RSFO-%s-%09lu", stamp, n);
			break;
	}
}

/* find_batch: the batch of that kind with that request id (lock held). */
static DBatch *
find_batch(BatchKind kind, const char *request_id)
{
	size_t		len = request_id != NULL ? strlen(request_id) : 0;
	uint64_t	n = 0;
	size_t		i;

	if (len < 9 || len >= sizeof(((DBatch *) NULL)->request_id))
		return NULL;
	for (i = len - 9; i < len; i++)
	{
		if (request_id[i] < '0' || request_id[i] > '9')
			return NULL;
		n = n * 10 + (uint64_t) (request_id[i] - '0');
	}
	if (n < dstore.batch_base % 1000000000)
		return NULL;
	n -= dstore.batch_base % 1000000000;
	if (n >= dstore.nbatches || dstore.batches[n].kind != kind ||
		strcmp(dstore.batches[n].request_id, request_id) != 0)
		return NULL;
	return &dstore.batches[n];
}

/*
 * sens_message_id: a UUID-shaped messageId whose first group is the
 * record's random tag and whose last group is the record's number.
 */
static void
sens_message_id(const DRec *r, char *buf)
{
	uint64_t	number = dstore.rec_base + (uint64_t) (r - dstore.recs);

	snprintf(buf, 40, "%08x-%04x-4%03x-8%03x-%012" PRIx64,
			 r->tag, (unsigned int) (r->tag >> 16) & 0xffff,
			 (unsigned int) r->tag & 0xfff, (unsigned int) (r->tag >> 20) & 0xfff,
			 number & UINT64_C(0xffffffffffff));
}

/* find_sens_message: the record of a messageId of that kind (lock held). */
static DRec *
find_sens_message(BatchKind kind, const char *message_id)
{
	char		check[40];
	uint64_t	number;
	DRec	   *r;

	if (message_id == NULL || strlen(message_id) != 36)
		return NULL;
	number = strtoull(message_id + 24, NULL, 16);
	if (number < dstore.rec_base || number - dstore.rec_base >= dstore.nrecs)
		return NULL;
	r = &dstore.recs[number - dstore.rec_base];
	if (dstore.batches[r->batch].kind != kind || r->fallback)
		return NULL;
	sens_message_id(r, check);
	return strcmp(check, message_id) == 0 ? r : NULL;
}

/*
 * dstore_text: copy s into the text buffer (lock held); returns its offset,
 * never 0 (0 means absent).  Earlier dtext() pointers may move.
 */
static uint32_t
dstore_text(const char *s, size_t len)
{
	size_t		off = dstore.text_len;

	if (s == NULL)
		return 0;
	if (dstore.text_len + len + 1 > dstore.text_cap)
	{
		size_t		cap = dstore.text_cap;

		while (dstore.text_len + len + 1 > cap)
			cap *= 2;
		dstore.text = xrealloc(dstore.text, cap);
		dstore.text_cap = cap;
	}
	memcpy(dstore.text + off, s, len);
	dstore.text[off + len] = '\0';
	dstore.text_len += len + 1;
	return (uint32_t) off;
}

static const char *
dtext(uint32_t off)
{
	return off == 0 ? NULL : dstore.text + off;
}

/*
 * outcome_for: what the number's last four digits make of a recipient (the
 * README's table).  A number must be 10 or 11 ASCII digits and must not
 * start with reject_prefix to be valid at all.
 */
static void
outcome_for(const char *to, size_t len, Outcome *o)
{
	char		prefix[MAX_PREFIX_BYTES + 1];
	size_t		prefix_len = load_reject_prefix(prefix);
	int			suffix = 0;
	size_t		i;

	memset(o, 0, sizeof(Outcome));
	o->at_code = 1000;
	o->sms_code = 1000;
	if (to == NULL || len < 10 || len > 11)
		return;
	for (i = 0; i < len; i++)
		if (to[i] < '0' || to[i] > '9')
			return;
	if (prefix_len > 0 && prefix_len <= len && memcmp(to, prefix, prefix_len) == 0)
		return;
	for (i = len - 4; i < len; i++)
		suffix = suffix * 10 + (to[i] - '0');
	if (suffix == 2019)
		return;
	o->valid = true;
	switch (suffix)
	{
		case 3008:
		case 3016:
		case 3018:
		case 3019:
		case 3020:
		case 9998:
		case 9999:
			o->at_code = suffix;
			break;
		case 3119:
			o->at_code = 3019;
			o->sms_code = 3001;
			break;
		case 3001:
			o->sms_code = 3001;
			break;
		case 4000:
			o->never = true;
			break;
		case 9990:
			o->sys_error = true;
			break;
		default:
			break;
	}
}

/*
 * synth_content: the AlimTalk text the provider would have rendered.  The
 * mock does not know the template's text, so it writes the code and the
 * parameters: "[COURIER_DELAY] name=Kim, date=2025-01-31".
 */
static void
synth_content(const JDoc *doc, const SendReq *sr, const SendItem *it, OutBuf *o)
{
	const JNode *n;
	bool		first = true;

	OUT_LIT(o, "[");
	out_bytes(o, sr->template_code, sr->template_len);
	OUT_LIT(o, "]");
	if (it->params < 0)
		return;
	for (n = doc->nodes[it->params].first >= 0 ?
		 &doc->nodes[doc->nodes[it->params].first] : NULL;
		 n != NULL; n = n->next >= 0 ? &doc->nodes[n->next] : NULL)
	{
		if (n->type != J_STRING && n->type != J_NUMBER)
			continue;
		out_str(o, first ? " " : ", ");
		out_bytes(o, n->key, n->key_len);
		OUT_LIT(o, "=");
		out_bytes(o, n->str, n->len);
		first = false;
	}
}

/*
 * dialect_query: a GET on a provider's path: the list of a request's (or a
 * time range's) recipients, or one recipient.  Authenticated like a send,
 * and subject to the same faults; counted in queries.
 */
static int64_t
dialect_query(Request *req, struct MHD_Connection *conn, const char *method)
{
	Dialect		d = dialect_of(req->route.op);
	bool		sens = d == D_SENS_SMS || d == D_SENS_AT;
	uint64_t	now = wall_us();
	bool		shutting = atomic_load_explicit(&shutting_down, memory_order_relaxed);
	int64_t		delay_ms = shutting ? 0 :
		atomic_load_explicit(&faults.latency_ms, memory_order_relaxed);
	Query		q;
	const char *err = NULL;

	atomic_fetch_add_explicit(&stats.queries, 1, memory_order_relaxed);
	if (sens ? !sens_authorized(req, conn, method) : !nhn_authorized(req, conn, d))
		return delay_ms;
	if (apply_faults(req, &delay_ms, shutting,
					 sens ? "{\"requestId\": \"" : "{\"header\": {"))
		return delay_ms;

	switch (req->route.op)
	{
		case DOP_NHN_AT_MESSAGES:
			if (!parse_query(conn, d, &q, &err))
				nhn_error(req, d, MHD_HTTP_OK, -4103,
						  "RequestId or startRequestDate/endRequestDate is invalid.");
			else
				query_nhn_at_list(req, &q, now);
			break;
		case DOP_NHN_AT_MESSAGE:
			query_nhn_at_one(req, &req->route, now);
			break;
		case DOP_NHN_SMS_SENDER:
			if (!parse_query(conn, d, &q, &err))
				nhn_error(req, d, MHD_HTTP_OK, -2011,
						  "RequestId or start/endRequestDate or start/endCreateDate is required.");
			else
				query_nhn_sms_list(req, &q, req->route.lms, now);
			break;
		case DOP_NHN_SMS_ONE:
			query_nhn_sms_one(req, conn, &req->route, now);
			break;
		case DOP_SENS_SMS_MESSAGES:
		case DOP_SENS_AT_MESSAGES:
			if (!parse_query(conn, d, &q, &err))
				sens_error(req, MHD_HTTP_BAD_REQUEST, "Bad Request", err);
			else
				query_sens_list(req, &q, d, now);
			break;
		case DOP_SENS_SMS_MESSAGE:
		case DOP_SENS_AT_MESSAGE:
			query_sens_one(req, &req->route, d, now);
			break;
	}
	return delay_ms;
}

/*
 * parse_query: the list filters of each dialect.  A request id, or a time
 * range (both ends), is required (SENS AlimTalk: with a plusFriendId);
 * the recipient's number filters (NHN recipientNo, SENS to).  NHN pages are 1-based pageNum of
 * pageSize (15 by default, at most 1,000); SENS pages are 0-based pageIndex
 * of pageSize (20 by default, at most 100).
 */
static bool
parse_query(struct MHD_Connection *conn, Dialect d, Query *q, const char **err)
{
	const char *start = NULL;
	const char *end = NULL;
	const char *v;
	bool		nhn = d == D_NHN_AT || d == D_NHN_SMS;

#define ARG(name) MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, (name))
	memset(q, 0, sizeof(Query));
	q->request_id = ARG("requestId");
	if (q->request_id != NULL && q->request_id[0] == '\0')
		q->request_id = NULL;
	if (nhn)
	{
		start = ARG("startRequestDate");
		end = ARG("endRequestDate");
		if (start == NULL && end == NULL)
		{
			start = ARG("startCreateDate");
			end = ARG("endCreateDate");
		}
		q->recipient_no = ARG("recipientNo");
		q->sender_gkey = ARG("senderGroupingKey");
		q->recipient_gkey = ARG("recipientGroupingKey");
		q->template_code = d == D_NHN_AT ? ARG("templateCode") : NULL;
		q->status = ARG(d == D_NHN_AT ? "messageStatus" : "msgStatus");
		v = ARG("pageNum");
		q->page = v != NULL ? strtol(v, NULL, 10) : 1;
		v = ARG("pageSize");
		q->page_size = v != NULL ? strtol(v, NULL, 10) : 15;
		if (q->page < 1)
			q->page = 1;
		if (q->page_size < 1 || q->page_size > 1000)
			q->page_size = q->page_size < 1 ? 15 : 1000;
	}
	else
	{
		start = ARG("requestStartTime");
		end = ARG("requestEndTime");
		q->recipient_no = ARG("to");
		if (d == D_SENS_AT && q->request_id == NULL && ARG("plusFriendId") == NULL)
		{
			*err = "plusFriendId is required without a requestId";
			return false;
		}
		v = ARG("pageIndex");
		q->page = v != NULL ? strtol(v, NULL, 10) : 0;
		v = ARG("pageSize");
		q->page_size = v != NULL ? strtol(v, NULL, 10) : 20;
		if (q->page < 0)
			q->page = 0;
		if (q->page_size < 1 || q->page_size > 100)
			q->page_size = q->page_size < 1 ? 20 : 100;
	}
#undef ARG
	if (start != NULL || end != NULL)
	{
		if (start == NULL || end == NULL ||
			!parse_local_time(start, false, &q->from_us) ||
			!parse_local_time(end, true, &q->to_us))
		{
			*err = "the time range is not yyyy-MM-dd HH:mm[:ss] to yyyy-MM-dd HH:mm[:ss]";
			return false;
		}
		q->by_time = true;
	}
	if (q->request_id == NULL && !q->by_time)
	{
		*err = "requestId or a request time range is required";
		return false;
	}
	return true;
}

/*
 * parse_local_time: "yyyy-MM-dd HH:mm" or "yyyy-MM-dd HH:mm:ss" (a 'T'
 * works as the separator too) in the mock's local time zone.  An end
 * without seconds covers its whole minute.
 */
static bool
parse_local_time(const char *s, bool end, uint64_t *us)
{
	struct tm	tm;
	int			n = 0;
	int			sec = -1;
	time_t		t;

	memset(&tm, 0, sizeof(tm));
	if (sscanf(s, "%4d-%2d-%2d%*1[ T]%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
			   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &n) != 5)
		return false;
	if (s[n] == ':')
	{
		int			m = 0;

		if (sscanf(s + n, ":%2d%n", &sec, &m) != 1)
			return false;
		n += m;
	}
	if (s[n] != '\0')
		return false;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	tm.tm_sec = sec >= 0 ? sec : (end ? 59 : 0);
	tm.tm_isdst = -1;
	t = mktime(&tm);
	if (t == (time_t) -1)
		return false;
	*us = (uint64_t) t * 1000000 + (end ? 999999 : 0);
	return true;
}

/* rec_final: has r reached its final state at now? */
static bool
rec_final(const DRec *r, uint64_t now)
{
	return r->refused || (r->due_us != NEVER_US && now >= r->due_us);
}

/* nhn_at_status: messageStatus of an NHN AlimTalk record at now. */
static const char *
nhn_at_status(const DRec *r, uint64_t now)
{
	if (!rec_final(r, now))
		return "READY";
	return !r->refused && r->code == 1000 ? "COMPLETED" : "FAILED";
}

/* nhn_sms_status: msgStatus of an NHN SMS record at now. */
static const char *
nhn_sms_status(const DRec *r, uint64_t now)
{
	if (!rec_final(r, now))
		return "2";
	return !r->refused && r->code == 1000 ? "3" : "0";
}

/*
 * rec_matches: does the record r of batch b pass q's filters?  (lock held)
 */
static bool
rec_matches(const DRec *r, const DBatch *b, const Query *q, Dialect d, uint64_t now)
{
	const char *s;

	if (q->by_time && (b->created_us < q->from_us || b->created_us > q->to_us))
		return false;
	if (q->recipient_no != NULL &&
		((s = dtext(r->to)) == NULL || strcmp(s, q->recipient_no) != 0))
		return false;
	if (q->recipient_gkey != NULL &&
		((s = dtext(r->gkey)) == NULL || strcmp(s, q->recipient_gkey) != 0))
		return false;
	if (q->sender_gkey != NULL &&
		((s = dtext(b->sender_gkey)) == NULL || strcmp(s, q->sender_gkey) != 0))
		return false;
	if (q->template_code != NULL &&
		((s = dtext(b->template_code)) == NULL || strcmp(s, q->template_code) != 0))
		return false;
	if (q->status != NULL && d == D_NHN_AT && strcmp(q->status, nhn_at_status(r, now)) != 0)
		return false;
	if (q->status != NULL && d == D_NHN_SMS && strcmp(q->status, nhn_sms_status(r, now)) != 0)
		return false;
	return true;
}

/*
 * list_matches: call emit for every record of kind (and lms, for NHN SMS)
 * that passes q, in request order, counting them all and emitting only
 * those of the page [skip, skip + take).  Returns the total.  (lock held)
 */
static size_t
list_matches(BatchKind kind, int lms, const Query *q, Dialect d, uint64_t now,
			 size_t skip, size_t take, OutBuf *o,
			 void (*emit) (OutBuf *, const DRec *, const DBatch *, uint64_t),
			 size_t *emitted)
{
	size_t		total = 0;
	size_t		lo = 0;
	size_t		hi = dstore.nbatches;
	size_t		bi;

	*emitted = 0;
	if (q->request_id != NULL)
	{
		DBatch	   *b = find_batch(kind, q->request_id);

		if (b == NULL)
			return 0;
		lo = (size_t) (b - dstore.batches);
		hi = lo + 1;
	}
	for (bi = lo; bi < hi; bi++)
	{
		const DBatch *b = &dstore.batches[bi];
		uint32_t	k;

		if (b->kind != kind || (lms >= 0 && b->lms != (lms != 0)))
			continue;
		for (k = 0; k < b->count; k++)
		{
			const DRec *r = &dstore.recs[b->first + k];

			if (!rec_matches(r, b, q, d, now))
				continue;
			if (total >= skip && *emitted < take)
			{
				if (*emitted > 0)
					OUT_LIT(o, ",");
				emit(o, r, b, now);
				(*emitted)++;
			}
			total++;
		}
	}
	return total;
}

static void
emit_nhn_at(OutBuf *o, const DRec *r, const DBatch *b, uint64_t now)
{
	out_nhn_at_message(o, r, b, now, false);
}

static void
emit_sens_sms(OutBuf *o, const DRec *r, const DBatch *b, uint64_t now)
{
	out_sens_sms_message(o, r, b, now, false);
}

/*
 * query_nhn_at_list: GET /alimtalk/v2.3/appkeys/K/messages, answered as
 * {"header", "messageSearchResultResponse": {"messages", "totalCount"}}.
 */
static void
query_nhn_at_list(Request *req, const Query *q, uint64_t now)
{
	OutBuf		o;
	size_t		total;
	size_t		emitted;

	out_init(&o, 4096);
	OUT_LIT(&o, "{");
	out_nhn_header(&o, D_NHN_AT, 0, "SUCCESS");
	OUT_LIT(&o, ",\"messageSearchResultResponse\":{\"messages\":[");
	pthread_mutex_lock(&dstore.lock);
	total = list_matches(BK_NHN_AT, -1, q, D_NHN_AT, now,
						 (size_t) (q->page - 1) * (size_t) q->page_size,
						 (size_t) q->page_size, &o, emit_nhn_at, &emitted);
	pthread_mutex_unlock(&dstore.lock);
	OUT_LIT(&o, "],\"totalCount\":");
	out_u64(&o, total);
	OUT_LIT(&o, "}}");
	set_answer(req, MHD_HTTP_OK, &o);
}

/*
 * query_nhn_at_one: GET .../messages/{requestId}/{recipientSeq}, answered
 * as {"header", "message"}; an unknown one gets -4016 (no data).
 */
static void
query_nhn_at_one(Request *req, const DialectRoute *route, uint64_t now)
{
	OutBuf		o;
	DBatch	   *b;
	char	   *end;
	long		seq = strtol(route->seq, &end, 10);

	pthread_mutex_lock(&dstore.lock);
	b = find_batch(BK_NHN_AT, route->id);
	if (b == NULL || *end != '\0' || seq < 1 || (uint64_t) seq > b->count)
	{
		pthread_mutex_unlock(&dstore.lock);
		nhn_error(req, D_NHN_AT, MHD_HTTP_OK, -4016, "Not exist data.");
		return;
	}
	out_init(&o, 2048);
	OUT_LIT(&o, "{");
	out_nhn_header(&o, D_NHN_AT, 0, "SUCCESS");
	OUT_LIT(&o, ",\"message\":");
	out_nhn_at_message(&o, &dstore.recs[b->first + (uint32_t) seq - 1], b, now, true);
	pthread_mutex_unlock(&dstore.lock);
	OUT_LIT(&o, "}");
	set_answer(req, MHD_HTTP_OK, &o);
}

/*
 * out_nhn_at_message: one recipient of an NHN AlimTalk request, with the
 * resend (fallback) status: RSC01 no fallback asked, RSC02 fallback asked
 * (and not needed, or not yet), RSC03 fallback under way, RSC04 fallback
 * delivered, RSC05 fallback failed.  The single view adds resendResultCode
 * and resendRequestId, as the documentation's does.
 */
static void
out_nhn_at_message(OutBuf *o, const DRec *r, const DBatch *b, uint64_t now,
				   bool single)
{
	bool		final = rec_final(r, now);
	const DRec *f = r->fallback_rec >= 0 ? &dstore.recs[r->fallback_rec] : NULL;
	const char *rsc = "RSC01";
	const char *rsc_name = "Not subject to fallback";
	char		code[16];

	if (r->resend)
	{
		rsc = "RSC02";
		rsc_name = "Subject to fallback";
	}
	if (f != NULL && final)
	{
		if (!rec_final(f, now))
		{
			rsc = "RSC03";
			rsc_name = "Fallback in progress";
		}
		else if (f->code == 1000)
		{
			rsc = "RSC04";
			rsc_name = "Fallback succeeded";
		}
		else
		{
			rsc = "RSC05";
			rsc_name = "Fallback failed";
		}
	}

	OUT_LIT(o, "{\"requestId\":");
	out_text(o, b->request_id);
	OUT_LIT(o, ",\"recipientSeq\":");
	out_u64(o, r->seq);
	OUT_LIT(o, ",\"plusFriendId\":\"@mock\",\"senderKey\":");
	out_text(o, dtext(b->sender));
	OUT_LIT(o, ",\"templateCode\":");
	out_text(o, dtext(b->template_code));
	OUT_LIT(o, ",\"recipientNo\":");
	out_text(o, dtext(r->to));
	OUT_LIT(o, ",\"content\":");
	out_text(o, dtext(r->content));
	OUT_LIT(o, ",\"requestDate\":");
	out_local_time(o, b->created_us, TS_NHN);
	OUT_LIT(o, ",\"createDate\":");
	out_local_time(o, b->created_us, TS_NHN);
	OUT_LIT(o, ",\"receiveDate\":");
	if (final)
		out_local_time(o, r->due_us, TS_NHN);
	else
		OUT_LIT(o, "null");
	OUT_LIT(o, ",\"resendStatus\":");
	out_text(o, rsc);
	OUT_LIT(o, ",\"resendStatusName\":");
	out_text(o, rsc_name);
	if (single)
	{
		OUT_LIT(o, ",\"resendResultCode\":");
		if (f != NULL && final && rec_final(f, now))
		{
			snprintf(code, sizeof(code), "%d", f->code);
			out_text(o, code);
		}
		else
			OUT_LIT(o, "null");
		OUT_LIT(o, ",\"resendRequestId\":");
		out_text(o, f != NULL && final ? dstore.batches[f->batch].request_id : NULL);
	}
	OUT_LIT(o, ",\"messageStatus\":");
	out_text(o, nhn_at_status(r, now));
	OUT_LIT(o, ",\"resultCode\":");
	if (final)
	{
		snprintf(code, sizeof(code), "%d", r->refused ? r->send_code : r->code);
		out_text(o, code);
		OUT_LIT(o, ",\"resultCodeName\":");
		out_text(o, r->refused ? (r->send_code == -5000 ? "RecipientNo is invalid." :
								  "System error.") : at_code_name(r->code));
	}
	else
		OUT_LIT(o, "null,\"resultCodeName\":null");
	OUT_LIT(o, ",\"createUser\":null,\"senderGroupingKey\":");
	out_text(o, dtext(b->sender_gkey));
	OUT_LIT(o, ",\"recipientGroupingKey\":");
	out_text(o, dtext(r->gkey));
	OUT_LIT(o, "}");
}

static const char *
at_code_name(int code)
{
	switch (code)
	{
		case 1000:
			return "Success";
		case 3008:
			return "Phone number error";
		case 3016:
			return "Message content does not match template";
		case 3018:
			return "Unable to send message";
		case 3019:
			return "Unable to send message: not a KakaoTalk user";
		case 3020:
			return "Unable to send message: AlimTalk blocked";
		case 9998:
			return "System problem, service not currently provided";
		case 9999:
			return "System problem, unknown error";
	}
	return "Failure";
}

/*
 * send_fallback_code: with send_fallback_codes set, NHN AlimTalk answers a
 * recipient whose delivery would end 3018, 3019 or 3020 with that code at
 * send time already (whether NHN ever does is not documented; courier
 * handles both).
 */
static bool
send_fallback_code(const Outcome *oc)
{
	return atomic_load(&faults.send_fallback_codes) != 0 &&
		(oc->at_code == 3018 || oc->at_code == 3019 || oc->at_code == 3020);
}

static const char *
sms_code_name(int code)
{
	switch (code)
	{
		case 1000:
			return "Success";
		case 3001:
			return "No subscriber available";
		case 3003:
			return "Error of recipient number type";
	}
	return "Failure";
}

/*
 * query_nhn_sms_list: GET /sms/v3.0/appKeys/K/sender/sms (or mms), as
 * {"header", "body": {"pageNum", "pageSize", "totalCount", "data": [...]}}.
 * The mock's AlimTalk fallbacks are listed here too, as NHN sends them
 * through its SMS service.
 */
static void
query_nhn_sms_list(Request *req, const Query *q, bool lms, uint64_t now)
{
	OutBuf		o;
	OutBuf		items;
	size_t		total;
	size_t		emitted;

	out_init(&items, 4096);
	pthread_mutex_lock(&dstore.lock);
	total = list_matches(BK_NHN_SMS, lms ? 1 : 0, q, D_NHN_SMS, now,
						 (size_t) (q->page - 1) * (size_t) q->page_size,
						 (size_t) q->page_size, &items, out_nhn_sms_message, &emitted);
	pthread_mutex_unlock(&dstore.lock);

	out_init(&o, items.len + 256);
	OUT_LIT(&o, "{");
	out_nhn_header(&o, D_NHN_SMS, 0, "SUCCESS");
	OUT_LIT(&o, ",\"body\":{\"pageNum\":");
	out_u64(&o, (uint64_t) q->page);
	OUT_LIT(&o, ",\"pageSize\":");
	out_u64(&o, emitted);
	OUT_LIT(&o, ",\"totalCount\":");
	out_u64(&o, total);
	OUT_LIT(&o, ",\"data\":[");
	out_bytes(&o, items.data, items.len);
	OUT_LIT(&o, "]}}");
	free(items.data);
	set_answer(req, MHD_HTTP_OK, &o);
}

/*
 * query_nhn_sms_one: GET .../sender/sms/{requestId}?recipientSeq=N, as
 * {"header", "body": {"data": {...}}}; an unknown one gets -2012.
 */
static void
query_nhn_sms_one(Request *req, struct MHD_Connection *conn,
				  const DialectRoute *route, uint64_t now)
{
	const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
												"recipientSeq");
	OutBuf		o;
	DBatch	   *b;
	char	   *end = NULL;
	long		seq = v != NULL ? strtol(v, &end, 10) : 0;

	pthread_mutex_lock(&dstore.lock);
	b = find_batch(BK_NHN_SMS, route->id);
	if (b == NULL || b->lms != route->lms || v == NULL || *end != '\0' ||
		seq < 1 || (uint64_t) seq > b->count)
	{
		pthread_mutex_unlock(&dstore.lock);
		nhn_error(req, D_NHN_SMS, MHD_HTTP_OK, -2012,
				  "Search parameter is invalid.(requestId and mtPr).");
		return;
	}
	out_init(&o, 2048);
	OUT_LIT(&o, "{");
	out_nhn_header(&o, D_NHN_SMS, 0, "SUCCESS");
	OUT_LIT(&o, ",\"body\":{\"data\":");
	out_nhn_sms_message(&o, &dstore.recs[b->first + (uint32_t) seq - 1], b, now);
	pthread_mutex_unlock(&dstore.lock);
	OUT_LIT(&o, "}}");
	set_answer(req, MHD_HTTP_OK, &o);
}

/*
 * out_nhn_sms_message: one recipient of an NHN SMS/LMS request.  msgStatus
 * is "2" (processing) until the final "3" (successful) or "0" (failed);
 * resultCode is the receiving result code ("1000" success), or the
 * send-time code of a refused recipient.
 */
static void
out_nhn_sms_message(OutBuf *o, const DRec *r, const DBatch *b, uint64_t now)
{
	bool		final = rec_final(r, now);
	const char *st = nhn_sms_status(r, now);
	char		code[16];

	OUT_LIT(o, "{\"requestId\":");
	out_text(o, b->request_id);
	OUT_LIT(o, ",\"requestDate\":");
	out_local_time(o, b->created_us, TS_NHN_SMS);
	OUT_LIT(o, ",\"resultDate\":");
	if (final)
		out_local_time(o, r->due_us, TS_NHN_SMS);
	else
		OUT_LIT(o, "null");
	OUT_LIT(o, ",\"templateId\":null,\"templateName\":null,\"categoryId\":0"
			",\"categoryName\":null");
	if (b->lms)
	{
		OUT_LIT(o, ",\"title\":");
		out_text(o, dtext(r->subject));
	}
	OUT_LIT(o, ",\"body\":");
	out_text(o, dtext(r->content));
	OUT_LIT(o, ",\"sendNo\":");
	out_text(o, dtext(r->fallback ? r->from : b->sender));
	OUT_LIT(o, ",\"countryCode\":\"82\",\"recipientNo\":");
	out_text(o, dtext(r->to));
	OUT_LIT(o, ",\"msgStatus\":");
	out_text(o, st);
	OUT_LIT(o, ",\"msgStatusName\":");
	out_text(o, st[0] == '3' ? "successful" : st[0] == '2' ? "processing" : "failed");
	OUT_LIT(o, ",\"resultCode\":");
	if (final)
	{
		snprintf(code, sizeof(code), "%d", r->refused ? r->send_code : r->code);
		out_text(o, code);
		OUT_LIT(o, ",\"resultCodeName\":");
		out_text(o, r->refused ? "RecipientNo is invalid." : sms_code_name(r->code));
	}
	else
		OUT_LIT(o, "null,\"resultCodeName\":null");
	if (final && !r->refused && r->code == 1000)
		OUT_LIT(o, ",\"telecomCode\":10001,\"telecomCodeName\":\"SKT\"");
	else
		OUT_LIT(o, ",\"telecomCode\":null,\"telecomCodeName\":null");
	OUT_LIT(o, ",\"recipientSeq\":");
	out_u64(o, r->seq);
	out_str(o, b->lms ? ",\"sendType\":\"1\",\"messageType\":\"LMS\"" :
			",\"sendType\":\"0\",\"messageType\":\"SMS\",\"messageCount\":1");
	OUT_LIT(o, ",\"userId\":null,\"adYn\":\"N\",\"resultMessage\":\"\",\"senderGroupingKey\":");
	out_text(o, dtext(b->sender_gkey));
	OUT_LIT(o, ",\"recipientGroupingKey\":");
	out_text(o, dtext(r->gkey));
	OUT_LIT(o, "}");
}

/*
 * query_sens_list: GET /sms/v2/services/S/messages or
 * /alimtalk/v2/services/S/messages, as {"requestId", "statusCode",
 * "statusName", "messages", "pageIndex", "pageSize", "itemCount",
 * "hasMore"}.
 */
static void
query_sens_list(Request *req, const Query *q, Dialect d, uint64_t now)
{
	OutBuf		o;
	OutBuf		items;
	size_t		total;
	size_t		emitted;
	size_t		skip = (size_t) q->page * (size_t) q->page_size;

	out_init(&items, 4096);
	pthread_mutex_lock(&dstore.lock);
	total = list_matches(d == D_SENS_SMS ? BK_SENS_SMS : BK_SENS_AT, -1, q, d, now,
						 skip, (size_t) q->page_size, &items,
						 d == D_SENS_SMS ? emit_sens_sms : out_sens_at_message,
						 &emitted);
	pthread_mutex_unlock(&dstore.lock);

	out_init(&o, items.len + 256);
	OUT_LIT(&o, "{\"requestId\":");
	out_text(&o, q->request_id);
	OUT_LIT(&o, ",\"statusCode\":\"200\",\"statusName\":\"success\",\"messages\":[");
	out_bytes(&o, items.data, items.len);
	OUT_LIT(&o, "],\"pageIndex\":");
	out_u64(&o, (uint64_t) q->page);
	OUT_LIT(&o, ",\"pageSize\":");
	out_u64(&o, (uint64_t) q->page_size);
	OUT_LIT(&o, ",\"itemCount\":");
	out_u64(&o, emitted);
	OUT_LIT(&o, ",\"hasMore\":");
	out_str(&o, skip + emitted < total ? "true" : "false");
	OUT_LIT(&o, "}");
	free(items.data);
	set_answer(req, MHD_HTTP_OK, &o);
}

/*
 * query_sens_one: GET .../messages/{messageId}.  SMS answers
 * {"statusCode", "statusName", "messages": [one]}; AlimTalk answers the
 * message object itself.  An unknown messageId gets a 404.
 */
static void
query_sens_one(Request *req, const DialectRoute *route, Dialect d, uint64_t now)
{
	OutBuf		o;
	DRec	   *r;

	pthread_mutex_lock(&dstore.lock);
	r = find_sens_message(d == D_SENS_SMS ? BK_SENS_SMS : BK_SENS_AT, route->id);
	if (r == NULL)
	{
		pthread_mutex_unlock(&dstore.lock);
		sens_error(req, MHD_HTTP_NOT_FOUND, "Not Found", "no such messageId");
		return;
	}
	out_init(&o, 2048);
	if (d == D_SENS_SMS)
	{
		OUT_LIT(&o, "{\"statusCode\":\"200\",\"statusName\":\"success\",\"messages\":[");
		out_sens_sms_message(&o, r, &dstore.batches[r->batch], now, true);
		OUT_LIT(&o, "]}");
	}
	else
		out_sens_at_message(&o, r, &dstore.batches[r->batch], now);
	pthread_mutex_unlock(&dstore.lock);
	set_answer(req, MHD_HTTP_OK, &o);
}

/*
 * out_sens_sms_message: one SENS SMS/LMS message.  status is READY for the
 * first half of the receipt delay, PROCESSING for the second, COMPLETED
 * from then on, when statusCode ("0" success, else the failure code),
 * statusName (success | fail), statusMessage, completeTime and telcoCode
 * appear.  The single view adds subject, content and files.
 */
static void
out_sens_sms_message(OutBuf *o, const DRec *r, const DBatch *b, uint64_t now,
					 bool single)
{
	char		message_id[40];
	char		code[16];
	bool		final = rec_final(r, now);

	sens_message_id(r, message_id);
	OUT_LIT(o, "{\"requestId\":");
	out_text(o, b->request_id);
	OUT_LIT(o, ",\"messageId\":");
	out_text(o, message_id);
	OUT_LIT(o, ",\"requestTime\":");
	out_local_time(o, b->created_us, TS_SENS_REQ);
	OUT_LIT(o, ",\"contentType\":\"COMM\",\"type\":");
	out_text(o, r->channel == CH_LMS ? "LMS" : "SMS");
	if (single)
	{
		OUT_LIT(o, ",\"subject\":");
		out_text(o, dtext(r->subject));
		OUT_LIT(o, ",\"content\":");
		out_text(o, dtext(r->content));
	}
	OUT_LIT(o, ",\"countryCode\":\"82\",\"from\":");
	out_text(o, dtext(b->sender));
	OUT_LIT(o, ",\"to\":");
	out_text(o, dtext(r->to));
	OUT_LIT(o, ",\"status\":");
	if (final)
	{
		OUT_LIT(o, "\"COMPLETED\",\"completeTime\":");
		out_local_time(o, r->due_us, TS_SENS_DONE);
		OUT_LIT(o, ",\"telcoCode\":\"SKT\",\"statusCode\":");
		snprintf(code, sizeof(code), "%d", r->code == 1000 ? 0 : r->code);
		out_text(o, code);
		OUT_LIT(o, ",\"statusName\":");
		out_text(o, r->code == 1000 ? "success" : "fail");
		OUT_LIT(o, ",\"statusMessage\":");
		out_text(o, r->code == 1000 ? "성공" : sms_code_name(r->code));
	}
	else if (r->due_us == NEVER_US ||
			 now >= b->created_us + (r->due_us - b->created_us) / 2)
		OUT_LIT(o, "\"PROCESSING\"");
	else
		OUT_LIT(o, "\"READY\"");
	if (single)
		OUT_LIT(o, ",\"files\":[]");
	OUT_LIT(o, "}");
}

/*
 * out_sens_at_message: one SENS AlimTalk message.  requestStatus* is the
 * acceptance (always A000 here); messageStatusCode ("0000" success, else
 * the Kakao result code), messageStatusName (success | fail),
 * messageStatusDesc and completeTime appear once final.  With
 * useSmsFailover, a failed message shows failoverStatusName (processing,
 * then success | fail) and, once final, failoverStatusCode ("0" success,
 * else the SMS failure code) and failoverStatusDesc.
 */
static void
out_sens_at_message(OutBuf *o, const DRec *r, const DBatch *b, uint64_t now)
{
	char		message_id[40];
	char		code[16];
	bool		final = rec_final(r, now);
	const DRec *f = r->fallback_rec >= 0 ? &dstore.recs[r->fallback_rec] : NULL;

	sens_message_id(r, message_id);
	OUT_LIT(o, "{\"requestId\":");
	out_text(o, b->request_id);
	OUT_LIT(o, ",\"messageId\":");
	out_text(o, message_id);
	OUT_LIT(o, ",\"requestTime\":");
	out_local_time(o, b->created_us, TS_SENS_REQ);
	if (final)
	{
		OUT_LIT(o, ",\"completeTime\":");
		out_local_time(o, r->due_us, TS_SENS_DONE);
	}
	OUT_LIT(o, ",\"plusFriendId\":");
	out_text(o, dtext(b->sender));
	OUT_LIT(o, ",\"templateCode\":");
	out_text(o, dtext(b->template_code));
	OUT_LIT(o, ",\"countryCode\":\"82\",\"to\":");
	out_text(o, dtext(r->to));
	OUT_LIT(o, ",\"content\":");
	out_text(o, dtext(r->content));
	OUT_LIT(o, ",\"requestStatusCode\":\"A000\",\"requestStatusName\":\"success\""
			",\"requestStatusDesc\":\"성공\"");
	if (final)
	{
		OUT_LIT(o, ",\"messageStatusCode\":");
		snprintf(code, sizeof(code), "%04d", r->code == 1000 ? 0 : r->code);
		out_text(o, code);
		OUT_LIT(o, ",\"messageStatusName\":");
		out_text(o, r->code == 1000 ? "success" : "fail");
		OUT_LIT(o, ",\"messageStatusDesc\":");
		out_text(o, r->code == 1000 ? "성공" : at_code_name(r->code));
	}
	OUT_LIT(o, ",\"useSmsFailover\":");
	out_str(o, r->resend ? "true" : "false");
	if (f != NULL && final)
	{
		if (rec_final(f, now))
		{
			OUT_LIT(o, ",\"failoverStatusCode\":");
			snprintf(code, sizeof(code), "%d", f->code == 1000 ? 0 : f->code);
			out_text(o, code);
			OUT_LIT(o, ",\"failoverStatusName\":");
			out_text(o, f->code == 1000 ? "success" : "fail");
			OUT_LIT(o, ",\"failoverStatusDesc\":");
			out_text(o, f->code == 1000 ? "성공" : sms_code_name(f->code));
		}
		else
			OUT_LIT(o, ",\"failoverStatusName\":\"processing\"");
	}
	OUT_LIT(o, "}");
}

/* the columns of /_customers and /_handsets */
typedef enum Bucket
{
	BU_ALIMTALK,
	BU_SMS,
	BU_LMS,
	BU_FALLBACK_SMS,
	BU_FALLBACK_LMS,
	BU_COUNT
} Bucket;

static const char *const bucket_names[BU_COUNT] = {
	"alimtalk", "sms", "lms", "fallback_sms", "fallback_lms"
};

/* One message a handset received, for sorting by number and date. */
typedef struct Received
{
	const char *to;
	int			date;			/* yyyymmdd, local */
	int			bucket;
} Received;

/*
 * received_bucket: which column a record counts in once a handset has it,
 * or -1 if no handset ever gets it (refused, failed, not yet due).
 */
static int
received_bucket(const DRec *r, uint64_t now)
{
	if (r->refused || r->code != 1000 || !rec_final(r, now))
		return -1;
	if (r->channel == CH_ALIMTALK)
		return BU_ALIMTALK;
	if (r->fallback)
		return r->channel == CH_LMS ? BU_FALLBACK_LMS : BU_FALLBACK_SMS;
	return r->channel == CH_LMS ? BU_LMS : BU_SMS;
}

/*
 * customers_json: what customers really received, over every dialect, by
 * channel, plus the records still in progress, failed, or refused at send
 * time.  A record counts once its final state is due, whether or not
 * anyone queried it.
 */
void
customers_json(OutBuf *out)
{
	uint64_t	now = wall_us();
	uint64_t	n[BU_COUNT];
	uint64_t	total = 0;
	uint64_t	pending = 0;
	uint64_t	failed = 0;
	uint64_t	refused = 0;
	size_t		i;
	int			k;

	memset(n, 0, sizeof(n));
	pthread_mutex_lock(&dstore.lock);
	for (i = 0; i < dstore.nrecs; i++)
	{
		const DRec *r = &dstore.recs[i];
		int			bu = received_bucket(r, now);

		if (bu >= 0)
		{
			n[bu]++;
			total++;
		}
		else if (r->refused)
			refused++;
		else if (!rec_final(r, now))
			pending++;
		else
			failed++;
	}
	pthread_mutex_unlock(&dstore.lock);

	OUT_LIT(out, "{");
	for (k = 0; k < BU_COUNT; k++)
	{
		out_json_string(out, bucket_names[k], strlen(bucket_names[k]));
		OUT_LIT(out, ":");
		out_u64(out, n[k]);
		OUT_LIT(out, ",");
	}
	OUT_LIT(out, "\"total\":");
	out_u64(out, total);
	OUT_LIT(out, ",\"pending\":");
	out_u64(out, pending);
	OUT_LIT(out, ",\"failed\":");
	out_u64(out, failed);
	OUT_LIT(out, ",\"refused\":");
	out_u64(out, refused);
	OUT_LIT(out, "}");
}

static int
compare_received(const void *a, const void *b)
{
	const Received *x = a;
	const Received *y = b;
	int			c = strcmp(x->to, y->to);

	if (c != 0)
		return c;
	return x->date < y->date ? -1 : x->date > y->date;
}

/*
 * handsets_json: per recipient number and local date of receipt, how many
 * messages of each channel the handset got, sorted by number then date:
 * [{"to","date","alimtalk","sms","lms","fallback_sms","fallback_lms",
 * "total"}].  Built under the store's lock; meant for small tests.
 */
void
handsets_json(OutBuf *out)
{
	uint64_t	now = wall_us();
	Received   *rows = NULL;
	size_t		nrows = 0;
	size_t		i;
	size_t		j;

	pthread_mutex_lock(&dstore.lock);
	if (dstore.nrecs > 0)
		rows = xmalloc(dstore.nrecs * sizeof(Received));
	for (i = 0; i < dstore.nrecs; i++)
	{
		const DRec *r = &dstore.recs[i];
		int			bu = received_bucket(r, now);
		time_t		t;
		struct tm	tm;

		if (bu < 0)
			continue;
		t = (time_t) (r->due_us / 1000000);
		localtime_r(&t, &tm);
		rows[nrows].to = dtext(r->to);
		rows[nrows].date = (tm.tm_year + 1900) * 10000 + (tm.tm_mon + 1) * 100 + tm.tm_mday;
		rows[nrows].bucket = bu;
		nrows++;
	}
	if (nrows > 1)
		qsort(rows, nrows, sizeof(Received), compare_received);

	OUT_LIT(out, "[");
	for (i = 0; i < nrows; i = j)
	{
		uint64_t	n[BU_COUNT];
		char		date[16];
		int			k;

		memset(n, 0, sizeof(n));
		for (j = i; j < nrows && compare_received(&rows[i], &rows[j]) == 0; j++)
			n[rows[j].bucket]++;
		if (i > 0)
			OUT_LIT(out, ",");
		OUT_LIT(out, "{\"to\":");
		out_text(out, rows[i].to);
		snprintf(date, sizeof(date), "%04d-%02d-%02d", rows[i].date / 10000,
				 rows[i].date / 100 % 100, rows[i].date % 100);
		OUT_LIT(out, ",\"date\":");
		out_text(out, date);
		for (k = 0; k < BU_COUNT; k++)
		{
			OUT_LIT(out, ",");
			out_json_string(out, bucket_names[k], strlen(bucket_names[k]));
			OUT_LIT(out, ":");
			out_u64(out, n[k]);
		}
		OUT_LIT(out, ",\"total\":");
		out_u64(out, (uint64_t) (j - i));
		OUT_LIT(out, "}");
	}
	OUT_LIT(out, "]");
	pthread_mutex_unlock(&dstore.lock);
	free(rows);
}

/* dialect_stats_json: the store's size, appended to /_stats. */
void
dialect_stats_json(OutBuf *out)
{
	size_t		nrecs;
	bool		overflow;
	size_t		keys;

	pthread_mutex_lock(&dstore.lock);
	nrecs = dstore.nrecs;
	overflow = dstore.overflow;
	pthread_mutex_unlock(&dstore.lock);
	pthread_mutex_lock(&idem_lock);
	keys = idem_count;
	pthread_mutex_unlock(&idem_lock);

	OUT_LIT(out, ",\"dialect_records\":");
	out_u64(out, nrecs);
	OUT_LIT(out, ",\"dialect_overflow\":");
	out_str(out, overflow ? "true" : "false");
	OUT_LIT(out, ",\"idempotency_keys\":");
	out_u64(out, keys);
}

/*
 * idem_claim: take key for a request accepted at now.  False if the key
 * was taken less than window_us ago (the -1005 case).  Expired keys are
 * swept when the table is full; if it is still full the key is not
 * remembered (the request goes through).
 */
static bool
idem_claim(const char *key, size_t len, uint64_t now, uint64_t window_us)
{
	uint64_t	h = dhash(key, len);
	IdemKey   **bucket = &idem_buckets[h & (IDEM_BUCKETS - 1)];
	IdemKey    *k;

	pthread_mutex_lock(&idem_lock);
	for (k = *bucket; k != NULL; k = k->next)
	{
		if (k->hash == h && k->len == len && memcmp(k->key, key, len) == 0)
		{
			bool		fresh = now < k->at_us + window_us;

			if (!fresh)
				k->at_us = now;
			pthread_mutex_unlock(&idem_lock);
			return !fresh;
		}
	}
	if (idem_count >= IDEM_MAX_KEYS)
	{
		size_t		b;

		for (b = 0; b < IDEM_BUCKETS; b++)
		{
			IdemKey   **p = &idem_buckets[b];

			while (*p != NULL)
			{
				if (now >= (*p)->at_us + window_us)
				{
					IdemKey    *gone = *p;

					*p = gone->next;
					free(gone);
					idem_count--;
				}
				else
					p = &(*p)->next;
			}
		}
	}
	if (idem_count < IDEM_MAX_KEYS)
	{
		k = xmalloc(sizeof(IdemKey) + len);
		k->hash = h;
		k->at_us = now;
		k->len = len;
		memcpy(k->key, key, len);
		k->next = *bucket;
		*bucket = k;
		idem_count++;
	}
	pthread_mutex_unlock(&idem_lock);
	return true;
}

static void
idem_clear(void)
{
	size_t		b;

	pthread_mutex_lock(&idem_lock);
	for (b = 0; b < IDEM_BUCKETS; b++)
	{
		while (idem_buckets[b] != NULL)
		{
			IdemKey    *gone = idem_buckets[b];

			idem_buckets[b] = gone->next;
			free(gone);
		}
	}
	idem_count = 0;
	pthread_mutex_unlock(&idem_lock);
}

/*
 * dialect_set_templates: the AlimTalk templates the providers know, from
 * "CODE:status,CODE:status" (status approved, requested, inspecting or
 * rejected; a bare CODE is approved; "" knows none).  NULL restores the
 * defaults.  With dry_run only validates; err says what is wrong.
 */
bool
dialect_set_templates(const char *value, bool dry_run, char *err, size_t errlen)
{
	Template	parsed[MAX_TEMPLATES];
	int			n = 0;
	const char *p;

	if (value == NULL)
		value = DEFAULT_TEMPLATES;
	if (strlen(value) > MAX_TEMPLATES_TEXT)
	{
		if (err != NULL)
			snprintf(err, errlen, "templates is longer than %d bytes", MAX_TEMPLATES_TEXT);
		return false;
	}
	for (p = value; *p != '\0';)
	{
		const char *end = strchr(p, ',');
		size_t		len = end != NULL ? (size_t) (end - p) : strlen(p);
		const char *colon = memchr(p, ':', len);
		size_t		code_len = colon != NULL ? (size_t) (colon - p) : len;
		size_t		st_len = colon != NULL ? len - code_len - 1 : 0;
		size_t		i;

		if (n >= MAX_TEMPLATES || code_len == 0 || code_len > MAX_TEMPLATE_CODE)
		{
			if (err != NULL)
				snprintf(err, errlen, "templates wants up to %d CODE[:status] items, codes of 1 to %d bytes",
						 MAX_TEMPLATES, MAX_TEMPLATE_CODE);
			return false;
		}
		for (i = 0; i < code_len; i++)
			if (p[i] <= 0x20 || p[i] > 0x7e)
			{
				if (err != NULL)
					snprintf(err, errlen, "template codes are printable ASCII without spaces");
				return false;
			}
		memcpy(parsed[n].code, p, code_len);
		parsed[n].code[code_len] = '\0';
		if (colon == NULL)
			strcpy(parsed[n].status, "approved");
		else if ((st_len == 8 && memcmp(colon + 1, "approved", 8) == 0) ||
				 (st_len == 9 && memcmp(colon + 1, "requested", 9) == 0) ||
				 (st_len == 10 && memcmp(colon + 1, "inspecting", 10) == 0) ||
				 (st_len == 8 && memcmp(colon + 1, "rejected", 8) == 0))
		{
			memcpy(parsed[n].status, colon + 1, st_len);
			parsed[n].status[st_len] = '\0';
		}
		else
		{
			if (err != NULL)
				snprintf(err, errlen, "template %s: status must be approved, requested, inspecting or rejected",
						 parsed[n].code);
			return false;
		}
		n++;
		p += len;
		if (*p == ',')
			p++;
	}
	if (dry_run)
		return true;

	pthread_mutex_lock(&template_lock);
	memcpy(templates, parsed, (size_t) n * sizeof(Template));
	ntemplates = n;
	strcpy(templates_text, value);
	pthread_mutex_unlock(&template_lock);
	return true;
}

/* dialect_templates_json: the templates setting, as a JSON string. */
void
dialect_templates_json(OutBuf *out)
{
	pthread_mutex_lock(&template_lock);
	out_json_string(out, templates_text, strlen(templates_text));
	pthread_mutex_unlock(&template_lock);
}

/* template_state: 1 approved, 0 known but not approved, -1 unknown. */
static int
template_state(const char *code, size_t len)
{
	int			state = -1;
	int			i;

	pthread_mutex_lock(&template_lock);
	for (i = 0; i < ntemplates; i++)
		if (strlen(templates[i].code) == len && memcmp(templates[i].code, code, len) == 0)
		{
			state = strcmp(templates[i].status, "approved") == 0 ? 1 : 0;
			break;
		}
	pthread_mutex_unlock(&template_lock);
	return state;
}

/*
 * jparse: body as a JSON tree, strings decoded in place; node 0 is the
 * root.  False on any syntax error, trailing garbage, more than
 * MAX_JSON_DEPTH levels or JDOC_MAX_NODES values.
 */
static bool
jparse(JDoc *doc, char *body, size_t len)
{
	JsonCursor	c = {body, body + len};

	if (jparse_value(doc, &c, 0) != 0)
		return false;
	json_ws(&c);
	return c.p == c.end;
}

static int
jnew(JDoc *doc, JType type)
{
	JNode	   *n;

	if (doc->count == doc->cap)
	{
		if (doc->cap >= JDOC_MAX_NODES)
			return -1;
		doc->cap = doc->cap ? doc->cap * 2 : 64;
		doc->nodes = xrealloc(doc->nodes, (size_t) doc->cap * sizeof(JNode));
	}
	n = &doc->nodes[doc->count];
	memset(n, 0, sizeof(JNode));
	n->type = type;
	n->first = -1;
	n->next = -1;
	return doc->count++;
}

/*
 * jparse_value: one value and, for containers, its children, linked in
 * order.  Returns the value's node index, -1 on error.  Works with indexes
 * because doc->nodes moves as it grows.
 */
static int
jparse_value(JDoc *doc, JsonCursor *c, int depth)
{
	int			self;
	int			last = -1;
	char	   *s;
	size_t		len;

	if (depth > MAX_JSON_DEPTH)
		return -1;
	json_ws(c);
	if (c->p >= c->end)
		return -1;
	switch (*c->p)
	{
		case '{':
		case '[':
			{
				bool		object = *c->p == '{';

				if ((self = jnew(doc, object ? J_OBJECT : J_ARRAY)) < 0)
					return -1;
				c->p++;
				if (json_accept(c, object ? '}' : ']'))
					return self;
				for (;;)
				{
					char	   *key = NULL;
					size_t		key_len = 0;
					int			child;

					if (object &&
						(!json_string(c, &key, &key_len) || !json_accept(c, ':')))
						return -1;
					if ((child = jparse_value(doc, c, depth + 1)) < 0)
						return -1;
					doc->nodes[child].key = key;
					doc->nodes[child].key_len = key_len;
					if (last < 0)
						doc->nodes[self].first = child;
					else
						doc->nodes[last].next = child;
					last = child;
					doc->nodes[self].count++;
					if (json_accept(c, ','))
						continue;
					if (json_accept(c, object ? '}' : ']'))
						return self;
					return -1;
				}
			}
		case '"':
			if ((self = jnew(doc, J_STRING)) < 0 || !json_string(c, &s, &len))
				return -1;
			doc->nodes[self].str = s;
			doc->nodes[self].len = len;
			return self;
		case 't':
		case 'f':
		case 'n':
			{
				const char *lit = *c->p == 't' ? "true" : *c->p == 'f' ? "false" : "null";
				size_t		lit_len = strlen(lit);

				if ((size_t) (c->end - c->p) < lit_len || memcmp(c->p, lit, lit_len) != 0)
					return -1;
				c->p += lit_len;
				return jnew(doc, *lit == 't' ? J_TRUE : *lit == 'f' ? J_FALSE : J_NULL);
			}
		default:
			if ((self = jnew(doc, J_NUMBER)) < 0 || !json_number(c, &s, &len))
				return -1;
			doc->nodes[self].str = s;
			doc->nodes[self].len = len;
			return self;
	}
}

/* jget: the first member of object obj named key, or NULL. */
static const JNode *
jget(const JDoc *doc, const JNode *obj, const char *key)
{
	const JNode *n;

	if (obj == NULL || obj->type != J_OBJECT || obj->first < 0)
		return NULL;
	for (n = &doc->nodes[obj->first];; n = &doc->nodes[n->next])
	{
		if (json_key_is(n->key, n->key_len, key))
			return n;
		if (n->next < 0)
			return NULL;
	}
}

/* jstr: member key of obj if it is a string (NUL-terminated), else NULL. */
static const char *
jstr(const JDoc *doc, const JNode *obj, const char *key)
{
	const JNode *n = jget(doc, obj, key);

	return n != NULL && n->type == J_STRING ? n->str : NULL;
}

/* jtrue: is member key of obj true (or the string "true")? */
static bool
jtrue(const JDoc *doc, const JNode *obj, const char *key)
{
	const JNode *n = jget(doc, obj, key);

	return n != NULL && (n->type == J_TRUE ||
						 (n->type == J_STRING && strcmp(n->str, "true") == 0));
}

/* dhash: FNV-1a, finished with murmur3's fmix64. */
static uint64_t
dhash(const char *s, size_t len)
{
	uint64_t	h = UINT64_C(0xcbf29ce484222325);
	size_t		i;

	for (i = 0; i < len; i++)
	{
		h ^= (unsigned char) s[i];
		h *= UINT64_C(0x100000001b3);
	}
	h ^= h >> 33;
	h *= UINT64_C(0xff51afd7ed558ccd);
	h ^= h >> 33;
	h *= UINT64_C(0xc4ceb9fe1a85ec53);
	h ^= h >> 33;
	return h;
}
