/*-------------------------------------------------------------------------
 *
 * trace.c
 *		W3C trace context: what a traceparent is, new trace ids, and the
 *		traceparent header of one outgoing HTTP request.
 *
 * A delay request carries a traceparent (the app's courier.traceparent,
 * or one courier starts), stored with the request and copied to its
 * notices and events.  Every HTTP request courier makes for them carries
 * the same trace id with a span id of its own, so that one bulk delay can
 * be followed from the app's log through courier to the provider's.
 * Version 00 only, lowercase hex as the specification writes it:
 *
 *		00-<trace id: 32 hex, not all 0>-<parent id: 16 hex, not all 0>-<flags: 2 hex>
 *
 * Pure functions of their arguments and a random source; no SQL, no
 * queue, no HTTP, and no other file of courier (guc.c's check hook calls
 * it, so it must stay a leaf).
 *
 * IDENTIFICATION
 *		src/trace.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"

#include "courier.h"

/* where the parts of a version-00 traceparent are */
#define TRACE_ID_AT		3
#define TRACE_ID_LEN	32
#define SPAN_ID_AT		36
#define SPAN_ID_LEN		16
#define FLAGS_AT		53

static bool lower_hex(const char *s, int len, bool *all_zero);
static void random_hex(char *out, int nbytes);

/*
 * courier_traceparent_valid
 *		Is s a W3C traceparent of version 00, in lowercase hex, with a
 *		trace id and a parent id that are not all zero?  What the
 *		specification says a receiver must otherwise ignore, courier
 *		refuses: the app is told at once that its header is wrong, rather
 *		than finding later that the trace was restarted.
 */
bool
courier_traceparent_valid(const char *s)
{
	bool		zero;

	if (s == NULL || strlen(s) != COURIER_TRACEPARENT_LEN)
		return false;
	if (s[0] != '0' || s[1] != '0' || s[2] != '-' ||
		s[SPAN_ID_AT - 1] != '-' || s[FLAGS_AT - 1] != '-')
		return false;
	if (!lower_hex(s + TRACE_ID_AT, TRACE_ID_LEN, &zero) || zero)
		return false;
	if (!lower_hex(s + SPAN_ID_AT, SPAN_ID_LEN, &zero) || zero)
		return false;
	return lower_hex(s + FLAGS_AT, 2, &zero);
}

/*
 * courier_traceparent_stored
 *		A traceparent read from a row (a notice's, an event's), as the
 *		requests made for the row carry it: s when it is one courier can
 *		send, NULL when the row has none (older than 0.7) or a value that
 *		is not one.
 */
const char *
courier_traceparent_stored(const char *s)
{
	return courier_traceparent_valid(s) ? s : NULL;
}

/*
 * courier_traceparent_new
 *		A traceparent that starts a trace: a random trace id and parent id
 *		(neither all zero), flags 01 (sampled: courier records every
 *		request it makes).  palloc'd in the current memory context.
 */
char *
courier_traceparent_new(void)
{
	char	   *tp = palloc(COURIER_TRACEPARENT_LEN + 1);

	memcpy(tp, "00-", 3);
	random_hex(tp + TRACE_ID_AT, TRACE_ID_LEN / 2);
	tp[SPAN_ID_AT - 1] = '-';
	random_hex(tp + SPAN_ID_AT, SPAN_ID_LEN / 2);
	memcpy(tp + FLAGS_AT - 1, "-01", 4);
	return tp;
}

/*
 * courier_same_trace
 *		May items with these traceparents share one HTTP request?  When
 *		they are of the same trace (trace id and flags), or both have none.
 *		Their parent ids may differ: each request gets a span id of its
 *		own anyway.
 */
bool
courier_same_trace(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return memcmp(a + TRACE_ID_AT, b + TRACE_ID_AT, TRACE_ID_LEN) == 0 &&
		memcmp(a + FLAGS_AT, b + FLAGS_AT, 2) == 0;
}

/*
 * courier_traceparent_header
 *		The header line of one outgoing HTTP request made for items of the
 *		trace traceparent: "traceparent: 00-<its trace id>-<a new span
 *		id>-<its flags>".  Each request (a retry too) is a span of its own,
 *		whose parent is the span that recorded the work.  palloc'd in the
 *		current memory context.
 */
char *
courier_traceparent_header(const char *traceparent)
{
	static const char name[] = "traceparent: ";
	char	   *line = palloc(sizeof(name) - 1 + COURIER_TRACEPARENT_LEN + 1);
	char	   *tp = line + sizeof(name) - 1;

	memcpy(line, name, sizeof(name) - 1);
	memcpy(tp, traceparent, COURIER_TRACEPARENT_LEN + 1);
	random_hex(tp + SPAN_ID_AT, SPAN_ID_LEN / 2);
	return line;
}

/*
 * lower_hex
 *		Are the len characters at s lowercase hex digits?  *all_zero says
 *		whether they are all '0'.
 */
static bool
lower_hex(const char *s, int len, bool *all_zero)
{
	*all_zero = true;
	for (int i = 0; i < len; i++)
	{
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
		if (s[i] != '0')
			*all_zero = false;
	}
	return true;
}

/*
 * random_hex
 *		nbytes random bytes, not all zero, as 2 * nbytes lowercase hex
 *		digits at out (not terminated).  From pg_strong_random, or, should
 *		the system's source fail, from the process's own generator: an id
 *		need only be unlikely to repeat, and a send must not fail for it.
 */
static void
random_hex(char *out, int nbytes)
{
	static const char hex[] = "0123456789abcdef";
	uint8		buf[16];
	bool		zero;

	Assert(nbytes <= (int) sizeof(buf));
	do
	{
		if (!pg_strong_random(buf, nbytes))
		{
			for (int i = 0; i < nbytes; i++)
				buf[i] = (uint8) pg_prng_uint32(&pg_global_prng_state);
		}
		zero = true;
		for (int i = 0; i < nbytes; i++)
			zero = zero && buf[i] == 0;
	} while (zero);
	for (int i = 0; i < nbytes; i++)
	{
		out[2 * i] = hex[buf[i] >> 4];
		out[2 * i + 1] = hex[buf[i] & 0x0f];
	}
}
