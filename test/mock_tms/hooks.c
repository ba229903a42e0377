/*-------------------------------------------------------------------------
 *
 * hooks.c
 *		The subscriber endpoint of the mock TMS: a stand-in for the web
 *		hooks courier POSTs order events to (POST /hooks/<name>).
 *
 * What it does: takes courier's {"events": [...]} batches, checks the
 * Courier-Signature header against the hook's secret (HMAC-SHA256 over
 * "<t>.<body>"), and records every event of every accepted request in
 * arrival order, flagging an event id the same hook already recorded, so a
 * test can check that each subscriber got every event exactly once per id
 * and, per order, in order.  The shared faults of /_control apply here as
 * they do to the message endpoint; hook_status makes one subscriber answer
 * a chosen status, hook_secrets (or --hook-secret) gives hooks a secret,
 * and hook_reject_bad_signature turns a wrong or missing signature into a
 * 401.  GET /_hooks lists the records, GET /_hooks/stats counts them per
 * hook; /_reset forgets them.
 *
 * What it does not do: check the timestamp's age (any t is accepted: a
 * replayed old request is the test's business), de-duplicate by
 * Idempotency-Key (it is only logged with --verbose), or keep data bodies.
 * Hook requests are not counted in /_stats, which stays about the TMS.  One
 * mutex guards the records and one the settings; each request takes the
 * records' lock twice, once to be counted and once to be recorded.
 *
 * IDENTIFICATION
 *	  test/mock_tms/hooks.c
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mock_tms.h"

#define HOOK_MAX_HOOKS			1024	/* distinct names until /_reset */
#define HOOK_LOG_MAX_EVENTS		10000000
#define HOOK_TYPES_MAX_BYTES	(64 * 1024 * 1024)
#define HOOK_INTERNED_TYPES		64
#define HOOK_MAX_SETTINGS		1024	/* names in hook_status, hook_secrets */
#define HOOK_MAX_SECRET_BYTES	4096
#define HOOK_MAX_V1				8	/* v1= entries looked at in a header */
#define HOOK_IDSET_INITIAL		64	/* power of two */
#define HOOK_IDSET_EMPTY		INT64_MIN	/* marks a free slot */
#define SIGNATURE_HEADER		"Courier-Signature"
#define IDEMPOTENCY_HEADER		"Idempotency-Key"

/* What the signature check found; the order of signature_names. */
typedef enum SigResult
{
	SIG_UNCHECKED,				/* the hook has no secret */
	SIG_OK,
	SIG_BAD,					/* header present but wrong or malformed */
	SIG_NONE					/* secret configured, no header */
} SigResult;

static const char *const signature_names[] = {"unchecked", "ok", "bad", "none"};

/* One event of a request body; type and traceparent point into the body. */
typedef struct EventIn
{
	int64_t		id;
	int64_t		order_id;
	int64_t		seller_id;
	const char *type;
	size_t		type_len;
	const char *traceparent;	/* NULL when absent or null */
	size_t		traceparent_len;
} EventIn;

typedef struct EventsIn
{
	EventIn    *events;
	int			count;
	int			cap;
} EventsIn;

/*
 * The event ids a hook recorded: open addressing with linear probing,
 * doubled at half load.  HOOK_IDSET_EMPTY marks a free slot, so that id
 * itself is remembered apart, in has_empty_key.
 */
typedef struct EventIdSet
{
	int64_t    *slots;
	size_t		mask;
	size_t		count;
	bool		has_empty_key;
} EventIdSet;

typedef struct Hook
{
	char		name[HOOK_NAME_MAX + 1];
	size_t		name_len;
	uint64_t	requests;		/* every POST, whatever it was answered */
	uint64_t	events;			/* events recorded */
	uint64_t	duplicates;		/* recorded events whose id it had already */
	uint64_t	bad_signatures; /* requests whose signature was bad or none */
	uint64_t	dropped;		/* recorded but not listed: the list was full */
	EventIdSet	ids;
} Hook;

/* One recorded event, for /_hooks; the type is in the book's type text. */
typedef struct HookEvent
{
	int64_t		id;
	int64_t		order_id;
	int64_t		seller_id;
	uint64_t	request;		/* the request's number among hook requests */
	uint32_t	type_offset;
	uint32_t	type_len;
	uint16_t	hook;			/* index into book.hooks */
	uint8_t		signature;		/* a SigResult */
	bool		dup;
} HookEvent;

typedef struct HookStatus
{
	char		name[HOOK_NAME_MAX + 1];
	int			status;
} HookStatus;

/*
 * Everything the endpoint keeps.  lock guards the hooks, the list and the
 * type text; settings_lock guards hook_status and hook_secrets (the
 * command line's secrets never change).  The two are never held together.
 */
typedef struct HookBook
{
	pthread_mutex_t lock;
	Hook	   *hooks[HOOK_MAX_HOOKS];
	int			nhooks;
	HookEvent  *events;
	size_t		count;
	size_t		cap;
	char	   *types;			/* the events' types, each stored once */
	size_t		types_len;
	size_t		types_cap;
	uint32_t	interned_offset[HOOK_INTERNED_TYPES];
	uint32_t	interned_len[HOOK_INTERNED_TYPES];
	int			ninterned;
	_Atomic uint64_t next_request;

	pthread_mutex_t settings_lock;
	HookStatus *status;			/* hook_status, without the 0s */
	int			nstatus;
	HookSecret *secrets;		/* hook_secrets */
	int			nsecrets;
} HookBook;

static SigResult signature_check(struct MHD_Connection *conn, const char *hook,
								 const char *body, size_t body_len);
static bool secret_of(const char *hook, char **secret, size_t *secret_len);
static int	status_of(const char *hook);
static bool count_request(const char *hook, SigResult sig);
static void record_events(const char *hook, uint64_t request, SigResult sig,
						  const EventsIn *in);
static int	hook_get(const char *name);
static bool type_store(const char *type, size_t len, uint32_t *offset);
static bool idset_add(EventIdSet *set, int64_t id);
static bool parse_events_body(char *body, size_t len, EventsIn *in);
static bool parse_events(JsonCursor *c, EventsIn *in);
static bool parse_event(JsonCursor *c, EventIn *e);
static bool json_int64(JsonCursor *c, int64_t *out);
static bool parse_hook_map(const char *value, bool secrets, HookStatus **status,
						   HookSecret **secrets_out, int *count,
						   char *err, size_t errlen);
static void free_secrets(HookSecret *secrets, int n);

static HookBook book;


/* hooks_init: the locks; the rest starts empty. */
void
hooks_init(void)
{
	pthread_mutex_init(&book.lock, NULL);
	pthread_mutex_init(&book.settings_lock, NULL);
}

/*
 * hooks_clear: forget the hooks, their records and counters, and restart
 * the request numbers (for /_reset and at exit).  The settings stay: they
 * are reset with the other settings, by hooks_settings_reset.
 */
void
hooks_clear(void)
{
	int			i;

	pthread_mutex_lock(&book.lock);
	for (i = 0; i < book.nhooks; i++)
	{
		free(book.hooks[i]->ids.slots);
		free(book.hooks[i]);
		book.hooks[i] = NULL;
	}
	book.nhooks = 0;
	free(book.events);
	book.events = NULL;
	book.count = book.cap = 0;
	free(book.types);
	book.types = NULL;
	book.types_len = book.types_cap = 0;
	book.ninterned = 0;
	atomic_store(&book.next_request, 0);
	pthread_mutex_unlock(&book.lock);
}

/*
 * hooks_settings_reset: hook_status and hook_secrets back to empty, as
 * /_reset does with every setting.  --hook-secret secrets are kept.
 */
void
hooks_settings_reset(void)
{
	HookStatus *status;
	HookSecret *secrets;
	int			nsecrets;

	pthread_mutex_lock(&book.settings_lock);
	status = book.status;
	secrets = book.secrets;
	nsecrets = book.nsecrets;
	book.status = NULL;
	book.nstatus = 0;
	book.secrets = NULL;
	book.nsecrets = 0;
	pthread_mutex_unlock(&book.settings_lock);
	free(status);
	free_secrets(secrets, nsecrets);
}

/* hook_name_valid: 1 to HOOK_NAME_MAX bytes of [A-Za-z0-9_.-]. */
bool
hook_name_valid(const char *name, size_t len)
{
	size_t		i;

	if (len < 1 || len > HOOK_NAME_MAX)
		return false;
	for (i = 0; i < len; i++)
	{
		char		ch = name[i];

		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
			  (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
			return false;
	}
	return true;
}

/*
 * hook_secret_option: one --hook-secret NAME=SECRET, split at the first '='
 * (the secret may hold more).  A name given twice keeps the last secret.
 * Returns false when the name is not a hook name or the secret is empty.
 */
bool
hook_secret_option(const char *arg)
{
	const char *eq = strchr(arg, '=');
	size_t		name_len;
	HookSecret *hs = NULL;
	int			i;

	if (eq == NULL)
		return false;
	name_len = (size_t) (eq - arg);
	if (!hook_name_valid(arg, name_len) || eq[1] == '\0' ||
		strlen(eq + 1) > HOOK_MAX_SECRET_BYTES)
		return false;
	for (i = 0; i < options.nhook_secrets; i++)
		if (strlen(options.hook_secrets[i].name) == name_len &&
			memcmp(options.hook_secrets[i].name, arg, name_len) == 0)
			hs = &options.hook_secrets[i];
	if (hs == NULL)
	{
		options.hook_secrets = xrealloc(options.hook_secrets,
										(size_t) (options.nhook_secrets + 1) *
										sizeof(HookSecret));
		hs = &options.hook_secrets[options.nhook_secrets++];
		memcpy(hs->name, arg, name_len);
		hs->name[name_len] = '\0';
	}
	else
		free(hs->secret);
	hs->secret_len = strlen(eq + 1);
	hs->secret = xmalloc(hs->secret_len + 1);
	memcpy(hs->secret, eq + 1, hs->secret_len + 1);
	return true;
}


/*
 * hook_decide: the subscriber endpoint.  The checks come in the message
 * endpoint's order: authentication (the unauthorized fault, then the
 * signature when hook_reject_bad_signature is on), body size and shape, the
 * shared faults, then this hook's own hook_status; only a request that
 * passes all of them is recorded, and then lost_reply_rate may still close
 * it unanswered.  The signature is checked before the body is parsed,
 * because the JSON scanner decodes strings in place and the HMAC covers the
 * bytes as they came.  Every request is counted in its hook's requests
 * (and bad_signatures), whatever it is answered.  Returns the delay before
 * answering.
 */
int64_t
hook_decide(Request *req, struct MHD_Connection *conn)
{
	bool		shutting = atomic_load_explicit(&shutting_down, memory_order_relaxed);
	int64_t		delay_ms = shutting ? 0 :
		atomic_load_explicit(&faults.latency_ms, memory_order_relaxed);
	uint64_t	request = atomic_fetch_add(&book.next_request, 1) + 1;
	bool		reject = atomic_load(&faults.hook_reject_bad_signature);
	SigResult	sig;
	EventsIn	in;
	bool		well_formed;
	bool		record = false;
	int			status;
	OutBuf		out;

	if (options.verbose)
	{
		const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
													  IDEMPOTENCY_HEADER);

		fprintf(stderr, "mock_tms: hook %s request %" PRIu64 " %s: %s\n",
				req->hook, request, IDEMPOTENCY_HEADER, key != NULL ? key : "(none)");
	}

	sig = signature_check(conn, req->hook, req->body, req->body_len);
	if (!count_request(req->hook, sig))
	{
		set_answer_text(req, MHD_HTTP_NOT_FOUND, "{\"error\":\"too_many_hooks\"}");
		return delay_ms;
	}

	memset(&in, 0, sizeof(in));
	well_formed = !req->body_too_large &&
		parse_events_body(req->body, req->body_len, &in);

	if (atomic_load(&faults.unauthorized))
		set_answer_text(req, MHD_HTTP_UNAUTHORIZED, "{\"error\":\"unauthorized\"}");
	else if (reject && (sig == SIG_BAD || sig == SIG_NONE))
		set_answer_text(req, MHD_HTTP_UNAUTHORIZED, "{\"error\":\"bad_signature\"}");
	else if (req->body_too_large)
		set_answer_text(req, 413, "{\"error\":\"too_large\"}");
	else if (!well_formed)
		set_answer_text(req, MHD_HTTP_BAD_REQUEST, "{\"error\":\"bad_request\"}");
	else if (!apply_faults(req, &delay_ms, shutting, "{\"received\": "))
	{
		/* no fault decided: this hook's own switch, then the events */
		if ((status = status_of(req->hook)) != 0)
			set_answer_text(req, (unsigned int) status, "{\"error\":\"injected\"}");
		else
		{
			record = true;
			out_init(&out, 32);
			OUT_LIT(&out, "{\"received\":");
			out_u64(&out, (uint64_t) in.count);
			OUT_LIT(&out, "}");
			set_answer(req, MHD_HTTP_OK, &out);
			if (roll(&faults.lost_reply_rate))
			{
				/* recorded, but the answer never reaches courier */
				req->phase = PHASE_CLOSE;
				delay_ms = 0;
			}
		}
	}

	if (record)
		record_events(req->hook, request, sig, &in);
	if (well_formed)
	{
		/* for /_traces: the events' ids, and the traceparent of each */
		OutBuf		fields;
		int			i;

		out_init(&fields, 64 + (size_t) in.count * 80);
		OUT_LIT(&fields, ",\"ids\":[");
		for (i = 0; i < in.count; i++)
		{
			if (i > 0)
				OUT_LIT(&fields, ",");
			out_i64(&fields, in.events[i].id);
		}
		OUT_LIT(&fields, "],\"event_traceparents\":[");
		for (i = 0; i < in.count; i++)
		{
			if (i > 0)
				OUT_LIT(&fields, ",");
			if (in.events[i].traceparent == NULL)
				OUT_LIT(&fields, "null");
			else
				out_json_string(&fields, in.events[i].traceparent,
								in.events[i].traceparent_len);
		}
		OUT_LIT(&fields, "]");
		trace_fields_take(req, &fields);
	}
	free(in.events);
	return delay_ms;
}

/*
 * signature_check: the Courier-Signature header of a request to hook,
 * "t=<unix seconds>,v1=<64 lowercase hex>", against HMAC-SHA256(secret,
 * "<t>.<body>").  Items may come in any order, with blanks after the
 * commas; unknown items are skipped; any of several v1 may match (as when a
 * secret is being rotated).  Any t is accepted.  The secret is copied out
 * of the settings so the HMAC runs without a lock.
 */
static SigResult
signature_check(struct MHD_Connection *conn, const char *hook,
				const char *body, size_t body_len)
{
	static const char hex[] = "0123456789abcdef";
	const char *header;
	const char *p;
	const char *t = NULL;
	size_t		t_len = 0;
	const char *v1[HOOK_MAX_V1];
	int			nv1 = 0;
	bool		malformed = false;
	char	   *secret;
	size_t		secret_len;
	unsigned char digest[SHA256_DIGEST_BYTES];
	char		expected[2 * SHA256_DIGEST_BYTES];
	const unsigned char *parts[3];
	size_t		part_lens[3];
	int			i;

	if (!secret_of(hook, &secret, &secret_len))
		return SIG_UNCHECKED;
	header = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, SIGNATURE_HEADER);
	if (header == NULL)
	{
		free(secret);
		return SIG_NONE;
	}

	for (p = header; *p != '\0';)
	{
		const char *item;
		size_t		len;

		while (*p == ' ' || *p == '\t')
			p++;
		item = p;
		while (*p != '\0' && *p != ',')
			p++;
		len = (size_t) (p - item);
		while (len > 0 && (item[len - 1] == ' ' || item[len - 1] == '\t'))
			len--;
		if (*p == ',')
			p++;

		if (len >= 2 && memcmp(item, "t=", 2) == 0)
		{
			size_t		j;

			if (t != NULL || len < 3 || len > 2 + 20)
				malformed = true;
			for (j = 2; j < len; j++)
				if (item[j] < '0' || item[j] > '9')
					malformed = true;
			t = item + 2;
			t_len = len - 2;
		}
		else if (len >= 3 && memcmp(item, "v1=", 3) == 0)
		{
			if (len == 3 + sizeof(expected) && nv1 < HOOK_MAX_V1)
				v1[nv1++] = item + 3;
		}
	}
	if (malformed || t == NULL || nv1 == 0)
	{
		free(secret);
		return SIG_BAD;
	}

	parts[0] = (const unsigned char *) t;
	part_lens[0] = t_len;
	parts[1] = (const unsigned char *) ".";
	part_lens[1] = 1;
	parts[2] = (const unsigned char *) body;
	part_lens[2] = body_len;
	hmac_sha256_parts((const unsigned char *) secret, secret_len, parts, part_lens,
					  3, digest);
	free(secret);
	for (i = 0; i < SHA256_DIGEST_BYTES; i++)
	{
		expected[2 * i] = hex[digest[i] >> 4];
		expected[2 * i + 1] = hex[digest[i] & 15];
	}
	for (i = 0; i < nv1; i++)
		if (memcmp(v1[i], expected, sizeof(expected)) == 0)
			return SIG_OK;
	return SIG_BAD;
}

/*
 * secret_of: a malloc'd copy of hook's secret, from hook_secrets first, else
 * from --hook-secret.  Returns false (and nothing to free) when it has none.
 */
static bool
secret_of(const char *hook, char **secret, size_t *secret_len)
{
	const HookSecret *found = NULL;
	int			i;

	pthread_mutex_lock(&book.settings_lock);
	for (i = 0; i < book.nsecrets && found == NULL; i++)
		if (strcmp(book.secrets[i].name, hook) == 0)
			found = &book.secrets[i];
	for (i = 0; i < options.nhook_secrets && found == NULL; i++)
		if (strcmp(options.hook_secrets[i].name, hook) == 0)
			found = &options.hook_secrets[i];
	if (found != NULL)
	{
		*secret_len = found->secret_len;
		*secret = xmalloc(found->secret_len + 1);
		memcpy(*secret, found->secret, found->secret_len + 1);
	}
	pthread_mutex_unlock(&book.settings_lock);
	return found != NULL;
}

/* status_of: hook's hook_status, 0 when it answers normally. */
static int
status_of(const char *hook)
{
	int			status = 0;
	int			i;

	pthread_mutex_lock(&book.settings_lock);
	for (i = 0; i < book.nstatus; i++)
		if (strcmp(book.status[i].name, hook) == 0)
			status = book.status[i].status;
	pthread_mutex_unlock(&book.settings_lock);
	return status;
}

/*
 * count_request: one more request to hook, a bad signature when sig is bad
 * or none.  Returns false when hook is new and there are HOOK_MAX_HOOKS
 * already.
 */
static bool
count_request(const char *hook, SigResult sig)
{
	int			index;

	pthread_mutex_lock(&book.lock);
	index = hook_get(hook);
	if (index >= 0)
	{
		book.hooks[index]->requests++;
		if (sig == SIG_BAD || sig == SIG_NONE)
			book.hooks[index]->bad_signatures++;
	}
	pthread_mutex_unlock(&book.lock);
	return index >= 0;
}

/*
 * record_events: append the events of one accepted request to the list and
 * to hook's id set, under one lock.  An event whose id the hook has already
 * is flagged dup.  Past HOOK_LOG_MAX_EVENTS (or HOOK_TYPES_MAX_BYTES of
 * types) events are still counted and de-duplicated, but not listed.  A
 * /_reset since count_request made the hook anew.
 */
static void
record_events(const char *hook, uint64_t request, SigResult sig, const EventsIn *in)
{
	int			index;
	Hook	   *h;
	int			i;

	pthread_mutex_lock(&book.lock);
	index = hook_get(hook);
	if (index < 0)
	{
		pthread_mutex_unlock(&book.lock);
		return;
	}
	h = book.hooks[index];
	for (i = 0; i < in->count; i++)
	{
		const EventIn *e = &in->events[i];
		bool		dup = !idset_add(&h->ids, e->id);
		uint32_t	offset;
		HookEvent  *he;

		h->events++;
		if (dup)
			h->duplicates++;
		if (book.count >= HOOK_LOG_MAX_EVENTS ||
			!type_store(e->type, e->type_len, &offset))
		{
			h->dropped++;
			continue;
		}
		if (book.count == book.cap)
		{
			book.cap = book.cap ? book.cap * 2 : 4096;
			if (book.cap > HOOK_LOG_MAX_EVENTS)
				book.cap = HOOK_LOG_MAX_EVENTS;
			book.events = xrealloc(book.events, book.cap * sizeof(HookEvent));
		}
		he = &book.events[book.count++];
		he->id = e->id;
		he->order_id = e->order_id;
		he->seller_id = e->seller_id;
		he->request = request;
		he->type_offset = offset;
		he->type_len = (uint32_t) e->type_len;
		he->hook = (uint16_t) index;
		he->signature = (uint8_t) sig;
		he->dup = dup;
	}
	pthread_mutex_unlock(&book.lock);
}

/*
 * hook_get: the index in book.hooks of the hook called name, made on its
 * first request; -1 when it is new and the table is full.  book.lock held.
 * A linear search: hooks are a handful, and a request does this twice.
 */
static int
hook_get(const char *name)
{
	size_t		len = strlen(name);
	Hook	   *h;
	int			i;

	for (i = 0; i < book.nhooks; i++)
		if (book.hooks[i]->name_len == len &&
			memcmp(book.hooks[i]->name, name, len) == 0)
			return i;
	if (book.nhooks >= HOOK_MAX_HOOKS)
		return -1;
	h = xmalloc(sizeof(Hook));
	memset(h, 0, sizeof(Hook));
	memcpy(h->name, name, len + 1);
	h->name_len = len;
	h->ids.slots = xmalloc(HOOK_IDSET_INITIAL * sizeof(int64_t));
	for (i = 0; i < HOOK_IDSET_INITIAL; i++)
		h->ids.slots[i] = HOOK_IDSET_EMPTY;
	h->ids.mask = HOOK_IDSET_INITIAL - 1;
	book.hooks[book.nhooks] = h;
	return book.nhooks++;
}

/*
 * type_store: where type is in the book's type text, stored there if new.
 * The first HOOK_INTERNED_TYPES distinct types are stored once (courier has
 * a few); any others are stored per event.  book.lock held.  Returns false
 * when the text is full.
 */
static bool
type_store(const char *type, size_t len, uint32_t *offset)
{
	int			i;

	for (i = 0; i < book.ninterned; i++)
		if (book.interned_len[i] == len &&
			memcmp(book.types + book.interned_offset[i], type, len) == 0)
		{
			*offset = book.interned_offset[i];
			return true;
		}
	if (book.types_len + len > HOOK_TYPES_MAX_BYTES)
		return false;
	if (book.types_len + len > book.types_cap)
	{
		size_t		cap = book.types_cap ? book.types_cap : 4096;

		while (book.types_len + len > cap)
			cap *= 2;
		book.types = xrealloc(book.types, cap);
		book.types_cap = cap;
	}
	memcpy(book.types + book.types_len, type, len);
	*offset = (uint32_t) book.types_len;
	book.types_len += len;
	if (book.ninterned < HOOK_INTERNED_TYPES)
	{
		book.interned_offset[book.ninterned] = *offset;
		book.interned_len[book.ninterned] = (uint32_t) len;
		book.ninterned++;
	}
	return true;
}

/*
 * idset_add: add id to set; false when it was there already.  The table
 * doubles at half load, so a probe is short and a million ids cost 16 MB.
 */
static bool
idset_add(EventIdSet *set, int64_t id)
{
	size_t		i;

	if (id == HOOK_IDSET_EMPTY)
	{
		if (set->has_empty_key)
			return false;
		set->has_empty_key = true;
		return true;
	}
	for (i = hash_bytes((const char *) &id, sizeof(id)) & set->mask;
		 set->slots[i] != HOOK_IDSET_EMPTY; i = (i + 1) & set->mask)
		if (set->slots[i] == id)
			return false;
	set->slots[i] = id;
	set->count++;

	if (set->count * 2 >= set->mask + 1)
	{
		size_t		new_mask = set->mask * 2 + 1;
		int64_t    *slots = xmalloc((new_mask + 1) * sizeof(int64_t));
		size_t		j;

		for (j = 0; j <= new_mask; j++)
			slots[j] = HOOK_IDSET_EMPTY;
		for (j = 0; j <= set->mask; j++)
		{
			int64_t		old = set->slots[j];
			size_t		k;

			if (old == HOOK_IDSET_EMPTY)
				continue;
			for (k = hash_bytes((const char *) &old, sizeof(old)) & new_mask;
				 slots[k] != HOOK_IDSET_EMPTY; k = (k + 1) & new_mask)
				;
			slots[k] = old;
		}
		free(set->slots);
		set->slots = slots;
		set->mask = new_mask;
	}
	return true;
}


static bool
parse_events_of(JsonCursor *c, void *in)
{
	return parse_events(c, (EventsIn *) in);
}

/*
 * parse_events_body: {"events": [ {...}, ... ]} with 1 to HOOK_MAX_EVENTS
 * events (json_parse_wrapped).  in->events is malloc'd (the caller frees
 * it, whatever is returned).
 */
static bool
parse_events_body(char *body, size_t len, EventsIn *in)
{
	return json_parse_wrapped(body, len, "events", parse_events_of, in) &&
		in->count >= 1;
}

static bool
parse_events(JsonCursor *c, EventsIn *in)
{
	if (!json_accept(c, '['))
		return false;
	if (json_accept(c, ']'))
		return true;
	for (;;)
	{
		if (in->count >= HOOK_MAX_EVENTS)
			return false;
		if (in->count == in->cap)
		{
			in->cap = in->cap ? in->cap * 4 : 16;
			in->events = xrealloc(in->events, (size_t) in->cap * sizeof(EventIn));
		}
		if (!parse_event(c, &in->events[in->count]))
			return false;
		in->count++;
		if (json_accept(c, ','))
			continue;
		return json_accept(c, ']');
	}
}

/*
 * parse_event: one event object.  id, order_id and seller_id are required
 * JSON integers (int64), type a required string; traceparent, when given,
 * a string or null; anything else (data, occurred_at, ...) is skipped,
 * whatever its value.
 */
static bool
parse_event(JsonCursor *c, EventIn *e)
{
	bool		have_id = false;
	bool		have_order = false;
	bool		have_seller = false;
	char	   *key;
	size_t		key_len;
	char	   *type;

	memset(e, 0, sizeof(EventIn));
	if (!json_accept(c, '{'))
		return false;
	if (!json_accept(c, '}'))
	{
		for (;;)
		{
			if (!json_string(c, &key, &key_len) || !json_accept(c, ':'))
				return false;
			if (json_key_is(key, key_len, "id"))
			{
				if (!json_int64(c, &e->id))
					return false;
				have_id = true;
			}
			else if (json_key_is(key, key_len, "order_id"))
			{
				if (!json_int64(c, &e->order_id))
					return false;
				have_order = true;
			}
			else if (json_key_is(key, key_len, "seller_id"))
			{
				if (!json_int64(c, &e->seller_id))
					return false;
				have_seller = true;
			}
			else if (json_key_is(key, key_len, "type"))
			{
				if (!json_string(c, &type, &e->type_len))
					return false;
				e->type = type;
			}
			else if (json_key_is(key, key_len, "traceparent"))
			{
				char	   *tp;

				json_ws(c);
				if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0)
					c->p += 4;
				else if (!json_string(c, &tp, &e->traceparent_len))
					return false;
				else
					e->traceparent = tp;
			}
			else if (!json_skip_value(c, 3))
				return false;
			if (json_accept(c, ','))
				continue;
			if (json_accept(c, '}'))
				break;
			return false;
		}
	}
	return have_id && have_order && have_seller && e->type != NULL;
}

/* json_int64: a JSON number that is an integer within int64 (no . or e). */
static bool
json_int64(JsonCursor *c, int64_t *out)
{
	char	   *text;
	size_t		len;
	size_t		i = 0;
	bool		negative;
	uint64_t	v = 0;
	uint64_t	limit;

	if (!json_number(c, &text, &len))
		return false;
	negative = text[0] == '-';
	if (negative)
		i++;
	limit = negative ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX;
	for (; i < len; i++)
	{
		unsigned int d;

		if (text[i] < '0' || text[i] > '9')
			return false;
		d = (unsigned int) (text[i] - '0');
		if (v > (limit - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = negative ? (int64_t) ((uint64_t) 0 - v) : (int64_t) v;
	return true;
}


/*
 * hook_set_status: the hook_status setting, {"<name>": <status>, ...} with
 * statuses 0 (answer normally) or 100 to 599; null or {} clears it.  Each
 * setting replaces the whole map.  Validates only when dry_run.
 */
bool
hook_set_status(const char *value, bool dry_run, char *err, size_t errlen)
{
	HookStatus *status = NULL;
	HookStatus *old;
	int			n = 0;

	if (value != NULL &&
		!parse_hook_map(value, false, &status, NULL, &n, err, errlen))
		return false;
	if (dry_run)
	{
		free(status);
		return true;
	}
	pthread_mutex_lock(&book.settings_lock);
	old = book.status;
	book.status = status;
	book.nstatus = n;
	pthread_mutex_unlock(&book.settings_lock);
	free(old);
	return true;
}

/*
 * hook_set_secrets: the hook_secrets setting, {"<name>": "<secret>", ...}
 * with secrets of 1 to HOOK_MAX_SECRET_BYTES bytes; null or {} clears it.
 * Each setting replaces the whole map; a name in it wins over the same
 * name's --hook-secret.  Validates only when dry_run.
 */
bool
hook_set_secrets(const char *value, bool dry_run, char *err, size_t errlen)
{
	HookSecret *secrets = NULL;
	HookSecret *old;
	int			n = 0;
	int			old_n;

	if (value != NULL &&
		!parse_hook_map(value, true, NULL, &secrets, &n, err, errlen))
		return false;
	if (dry_run)
	{
		free_secrets(secrets, n);
		return true;
	}
	pthread_mutex_lock(&book.settings_lock);
	old = book.secrets;
	old_n = book.nsecrets;
	book.secrets = secrets;
	book.nsecrets = n;
	pthread_mutex_unlock(&book.settings_lock);
	free_secrets(old, old_n);
	return true;
}

/*
 * parse_hook_map: a JSON object from hook names to statuses (secrets false)
 * or to secrets (secrets true) into a new array; a name given twice keeps
 * its last value, and a status 0 is left out.  On failure err says why and
 * nothing is returned.
 */
static bool
parse_hook_map(const char *value, bool secrets, HookStatus **status,
			   HookSecret **secrets_out, int *count, char *err, size_t errlen)
{
	const char *key_name = secrets ? "hook_secrets" : "hook_status";
	char	   *copy = strdup(value);
	JsonCursor	c;
	HookStatus *st = NULL;
	HookSecret *se = NULL;
	int			n = 0;
	char	   *key;
	size_t		key_len;

	if (copy == NULL)
	{
		fprintf(stderr, "mock_tms: out of memory copying a setting\n");
		abort();
	}
	c.p = copy;
	c.end = copy + strlen(copy);
	if (secrets)
		se = xmalloc(HOOK_MAX_SETTINGS * sizeof(HookSecret));
	else
		st = xmalloc(HOOK_MAX_SETTINGS * sizeof(HookStatus));

	if (!json_accept(&c, '{'))
	{
		snprintf(err, errlen, "%s is not a JSON object", key_name);
		goto bad;
	}
	if (!json_accept(&c, '}'))
	{
		for (;;)
		{
			int			slot;

			if (!json_string(&c, &key, &key_len) || !json_accept(&c, ':'))
			{
				snprintf(err, errlen, "%s is not a JSON object", key_name);
				goto bad;
			}
			if (!hook_name_valid(key, key_len))
			{
				snprintf(err, errlen, "%s: \"%.*s\" is not a hook name (1 to %d of [A-Za-z0-9_.-])",
						 key_name, (int) (key_len > 80 ? 80 : key_len), key,
						 HOOK_NAME_MAX);
				goto bad;
			}
			for (slot = 0; slot < n; slot++)
				if (strcmp(secrets ? se[slot].name : st[slot].name, key) == 0)
					break;
			if (slot == n && n >= HOOK_MAX_SETTINGS)
			{
				snprintf(err, errlen, "%s has more than %d names", key_name,
						 HOOK_MAX_SETTINGS);
				goto bad;
			}
			json_ws(&c);
			if (secrets)
			{
				char	   *secret;
				size_t		secret_len;

				if (c.p >= c.end || *c.p != '"' ||
					!json_string(&c, &secret, &secret_len) ||
					secret_len < 1 || secret_len > HOOK_MAX_SECRET_BYTES)
				{
					snprintf(err, errlen, "%s: the secret of \"%s\" is not a string of 1 to %d bytes",
							 key_name, key, HOOK_MAX_SECRET_BYTES);
					goto bad;
				}
				if (slot < n)
					free(se[slot].secret);
				else
				{
					memcpy(se[slot].name, key, key_len + 1);
					n++;
				}
				se[slot].secret = xmalloc(secret_len + 1);
				memcpy(se[slot].secret, secret, secret_len);
				se[slot].secret[secret_len] = '\0';
				se[slot].secret_len = secret_len;
			}
			else
			{
				int64_t		code;

				if (c.p >= c.end || *c.p == '"' || !json_int64(&c, &code) ||
					(code != 0 && (code < 100 || code > 599)))
				{
					snprintf(err, errlen, "%s: the status of \"%s\" is not 0 or an integer from 100 to 599",
							 key_name, key);
					goto bad;
				}
				if (slot == n)
				{
					memcpy(st[slot].name, key, key_len + 1);
					n++;
				}
				st[slot].status = (int) code;
			}
			if (json_accept(&c, ','))
				continue;
			if (json_accept(&c, '}'))
				break;
			snprintf(err, errlen, "%s is not a JSON object", key_name);
			goto bad;
		}
	}
	json_ws(&c);
	if (c.p != c.end)
	{
		snprintf(err, errlen, "%s is not a JSON object", key_name);
		goto bad;
	}
	free(copy);

	if (secrets)
		*secrets_out = se;
	else
	{
		int			i;
		int			kept = 0;

		for (i = 0; i < n; i++)
			if (st[i].status != 0)
				st[kept++] = st[i];
		n = kept;
		*status = st;
	}
	*count = n;
	return true;

bad:
	free(copy);
	free(st);
	free_secrets(se, n);
	return false;
}

static void
free_secrets(HookSecret *secrets, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		free(secrets[i].secret);
	free(secrets);
}

/*
 * hook_settings_json: ,"hook_status":{...},"hook_secrets":{...} for
 * /_control; the secrets are the hook_secrets setting only, not the
 * command line's.
 */
void
hook_settings_json(OutBuf *out)
{
	int			i;

	pthread_mutex_lock(&book.settings_lock);
	OUT_LIT(out, ",\"hook_status\":{");
	for (i = 0; i < book.nstatus; i++)
	{
		if (i > 0)
			OUT_LIT(out, ",");
		out_json_string(out, book.status[i].name, strlen(book.status[i].name));
		OUT_LIT(out, ":");
		out_u64(out, (uint64_t) book.status[i].status);
	}
	OUT_LIT(out, "},\"hook_secrets\":{");
	for (i = 0; i < book.nsecrets; i++)
	{
		if (i > 0)
			OUT_LIT(out, ",");
		out_json_string(out, book.secrets[i].name, strlen(book.secrets[i].name));
		OUT_LIT(out, ":");
		out_json_string(out, book.secrets[i].secret, book.secrets[i].secret_len);
	}
	OUT_LIT(out, "}");
	pthread_mutex_unlock(&book.settings_lock);
}


/*
 * hooks_json: the recorded events in arrival order, those of hook only when
 * it is not NULL (an unknown hook lists nothing).  Built under the lock
 * (subscriber requests wait for it); meant for reading at the end of a
 * test, O(events) whatever the filter.
 */
void
hooks_json(OutBuf *out, const char *hook)
{
	int			only = -1;
	bool		first = true;
	size_t		i;

	pthread_mutex_lock(&book.lock);
	if (hook != NULL)
	{
		only = HOOK_MAX_HOOKS;	/* matches no event */
		for (i = 0; i < (size_t) book.nhooks; i++)
			if (strcmp(book.hooks[i]->name, hook) == 0)
				only = (int) i;
	}
	out_reserve(out, (only < 0 ? book.count : 0) * 128 + 2);
	OUT_LIT(out, "[");
	for (i = 0; i < book.count; i++)
	{
		const HookEvent *e = &book.events[i];
		const Hook *h = book.hooks[e->hook];

		if (only >= 0 && e->hook != only)
			continue;
		if (!first)
			OUT_LIT(out, ",");
		first = false;
		OUT_LIT(out, "{\"hook\":");
		out_json_string(out, h->name, h->name_len);
		OUT_LIT(out, ",\"id\":");
		out_i64(out, e->id);
		OUT_LIT(out, ",\"type\":");
		out_json_string(out, book.types + e->type_offset, e->type_len);
		OUT_LIT(out, ",\"order_id\":");
		out_i64(out, e->order_id);
		OUT_LIT(out, ",\"seller_id\":");
		out_i64(out, e->seller_id);
		OUT_LIT(out, ",\"request\":");
		out_u64(out, e->request);
		OUT_LIT(out, ",\"signature\":\"");
		out_str(out, signature_names[e->signature]);
		if (e->dup)
			OUT_LIT(out, "\",\"dup\":true}");
		else
			OUT_LIT(out, "\",\"dup\":false}");
	}
	OUT_LIT(out, "]");
	pthread_mutex_unlock(&book.lock);
}

/*
 * hooks_stats_json: {"<name>":{"requests":..,"events":..,"duplicates":..,
 * "bad_signatures":..}, ...} in the order the hooks were first requested;
 * "dropped" is added only once the list was full.
 */
void
hooks_stats_json(OutBuf *out)
{
	int			i;

	pthread_mutex_lock(&book.lock);
	OUT_LIT(out, "{");
	for (i = 0; i < book.nhooks; i++)
	{
		const Hook *h = book.hooks[i];

		if (i > 0)
			OUT_LIT(out, ",");
		out_json_string(out, h->name, h->name_len);
		OUT_LIT(out, ":{\"requests\":");
		out_u64(out, h->requests);
		OUT_LIT(out, ",\"events\":");
		out_u64(out, h->events);
		OUT_LIT(out, ",\"duplicates\":");
		out_u64(out, h->duplicates);
		OUT_LIT(out, ",\"bad_signatures\":");
		out_u64(out, h->bad_signatures);
		if (h->dropped > 0)
		{
			OUT_LIT(out, ",\"dropped\":");
			out_u64(out, h->dropped);
		}
		OUT_LIT(out, "}");
	}
	OUT_LIT(out, "}");
	pthread_mutex_unlock(&book.lock);
}
