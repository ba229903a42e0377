/*-------------------------------------------------------------------------
 *
 * curl_ceiling.c
 *		The fastest courier could possibly send: a bare libcurl multi client
 *		posting message batches with no database behind it.
 *
 * What it does: sends --messages N messages in requests of --bulk B, in the
 * JSON shape courier sends ({"messages": [{"id", "to", "channel", "subject",
 * "text"}]}), with at most --concurrency C requests in flight over C
 * kept-alive connections (one reused easy handle per connection), and
 * prints one line:
 *	 curl_ceiling: messages=N bulk=B concurrency=C seconds=S msgs_per_s=R errors=E
 * where E counts messages not accepted: every message of a request that
 * failed or was not answered 200, plus those the answer gave a status other
 * than "accepted" (a 200 without per-message verdicts accepts all, as
 * courier's 2xx rule does).  Ids are
 * "<prefix>-<n>"; the prefix is unique per run unless --id-prefix is given,
 * which lets a second run re-send the same ids (to exercise
 * de-duplication).  The dispatcher's throughput is compared with this.
 *
 * What it does not do: retries, backoff, TLS tuning, or any check of the
 * answer beyond counting verdicts.  The exit status is 0 whenever the run
 * completed, whatever E is; 2 on bad usage, 1 on setup failure.
 *
 * IDENTIFICATION
 *	  bench/curl_ceiling.c
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#define MAX_EXTRA_HEADERS	16

/* One connection's worth of state: an easy handle and its buffers. */
typedef struct Slot
{
	CURL	   *easy;
	struct curl_slist *headers;
	char	   *body;
	size_t		body_len;
	size_t		body_cap;
	char	   *resp;
	size_t		resp_len;
	size_t		resp_cap;
	int64_t		first_msg;		/* messages [first_msg, first_msg + nmsgs) */
	int			nmsgs;
	char		errbuf[CURL_ERROR_SIZE];
} Slot;

typedef struct Options
{
	const char *url;
	int64_t		messages;
	int			bulk;
	int			concurrency;
	char	   *id_prefix;
	const char *idempotency_header;
	const char *extra_headers[MAX_EXTRA_HEADERS];
	int			n_extra_headers;
	long		timeout_ms;
	bool		verbose;
} Options;

static void usage(FILE *out);
static void parse_options(int argc, char **argv);
static int64_t parse_count(const char *name, const char *text, int64_t min,
						   int64_t max);
static void slot_init(Slot *slot);
static void slot_prepare(Slot *slot, int64_t first_msg, int nmsgs);
static int64_t slot_accepted(Slot *slot, CURLcode result);
static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata);
static void body_append(Slot *slot, const char *s, size_t n);
static void body_append_u64(Slot *slot, uint64_t v);
static double now_seconds(void);

static Options options;

#define BODY_LIT(slot, lit)		body_append((slot), (lit), sizeof(lit) - 1)


/*
 * main: keep every slot busy until all messages are sent.  A finished easy
 * handle is removed and re-added with the next batch; the multi handle's
 * connection cache keeps its connection alive in between.
 */
int
main(int argc, char **argv)
{
	CURLM	   *multi;
	Slot	   *slots;
	int64_t		next_msg = 0;
	int64_t		accepted = 0;
	int			active = 0;
	int			i;
	double		start;
	double		seconds;

	parse_options(argc, argv);

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
	{
		fprintf(stderr, "curl_ceiling: curl_global_init failed\n");
		return 1;
	}
	multi = curl_multi_init();
	if (multi == NULL)
	{
		fprintf(stderr, "curl_ceiling: curl_multi_init failed\n");
		return 1;
	}
	curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) options.concurrency);
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) options.concurrency);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) options.concurrency);
	curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long) CURLPIPE_NOTHING);

	slots = calloc((size_t) options.concurrency, sizeof(Slot));
	if (slots == NULL)
	{
		fprintf(stderr, "curl_ceiling: out of memory\n");
		return 1;
	}
	for (i = 0; i < options.concurrency; i++)
		slot_init(&slots[i]);

	start = now_seconds();
	for (i = 0; i < options.concurrency && next_msg < options.messages; i++)
	{
		int			n = (int) (options.messages - next_msg < options.bulk ?
							   options.messages - next_msg : options.bulk);

		slot_prepare(&slots[i], next_msg, n);
		next_msg += n;
		curl_multi_add_handle(multi, slots[i].easy);
		active++;
	}

	while (active > 0)
	{
		CURLMsg    *msg;
		int			running;
		int			queued;

		curl_multi_perform(multi, &running);
		while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
		{
			Slot	   *slot;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &slot);
			accepted += slot_accepted(slot, msg->data.result);
			curl_multi_remove_handle(multi, slot->easy);
			active--;
			if (next_msg < options.messages)
			{
				int			n = (int) (options.messages - next_msg < options.bulk ?
									   options.messages - next_msg : options.bulk);

				slot_prepare(slot, next_msg, n);
				next_msg += n;
				curl_multi_add_handle(multi, slot->easy);
				active++;
			}
		}
		if (active > 0 && running > 0)
			curl_multi_poll(multi, NULL, 0, 1000, NULL);
	}
	seconds = now_seconds() - start;

	printf("curl_ceiling: messages=%" PRId64 " bulk=%d concurrency=%d seconds=%.3f"
		   " msgs_per_s=%.0f errors=%" PRId64 "\n",
		   options.messages, options.bulk, options.concurrency, seconds,
		   seconds > 0 ? (double) options.messages / seconds : 0.0,
		   options.messages - accepted);

	for (i = 0; i < options.concurrency; i++)
	{
		curl_easy_cleanup(slots[i].easy);
		curl_slist_free_all(slots[i].headers);
		free(slots[i].body);
		free(slots[i].resp);
	}
	free(slots);
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	return 0;
}

static void
usage(FILE *out)
{
	fprintf(out,
			"usage: curl_ceiling --url URL --messages N --bulk B --concurrency C\n"
			"                    [--id-prefix P] [--header 'Name: value']...\n"
			"                    [--idempotency-header Name] [--timeout-ms MS]\n"
			"                    [--verbose]\n");
}

/* parse_options: fill the global options or exit(2). */
static void
parse_options(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"url", required_argument, NULL, 'u'},
		{"messages", required_argument, NULL, 'n'},
		{"bulk", required_argument, NULL, 'b'},
		{"concurrency", required_argument, NULL, 'c'},
		{"id-prefix", required_argument, NULL, 'p'},
		{"header", required_argument, NULL, 'H'},
		{"idempotency-header", required_argument, NULL, 'i'},
		{"timeout-ms", required_argument, NULL, 't'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			opt;

	options.bulk = 1;
	options.concurrency = 64;
	options.idempotency_header = "Idempotency-Key";
	options.timeout_ms = 60000;

	while ((opt = getopt_long(argc, argv, "u:n:b:c:p:H:i:t:vh", longopts, NULL)) != -1)
	{
		switch (opt)
		{
			case 'u':
				options.url = optarg;
				break;
			case 'n':
				options.messages = parse_count("--messages", optarg, 1, INT64_C(1) << 40);
				break;
			case 'b':
				options.bulk = (int) parse_count("--bulk", optarg, 1, 1000);
				break;
			case 'c':
				options.concurrency = (int) parse_count("--concurrency", optarg, 1, 10000);
				break;
			case 'p':
				options.id_prefix = optarg;
				break;
			case 'H':
				if (options.n_extra_headers == MAX_EXTRA_HEADERS)
				{
					fprintf(stderr, "curl_ceiling: at most %d --header options\n",
							MAX_EXTRA_HEADERS);
					exit(2);
				}
				options.extra_headers[options.n_extra_headers++] = optarg;
				break;
			case 'i':
				options.idempotency_header = optarg;
				break;
			case 't':
				options.timeout_ms = (long) parse_count("--timeout-ms", optarg, 1, 86400000);
				break;
			case 'v':
				options.verbose = true;
				break;
			case 'h':
				usage(stdout);
				exit(0);
			default:
				usage(stderr);
				exit(2);
		}
	}
	if (options.url == NULL || options.messages == 0 || optind != argc)
	{
		usage(stderr);
		exit(2);
	}
	if (options.id_prefix == NULL)
	{
		struct timespec ts;
		char		buf[64];

		clock_gettime(CLOCK_REALTIME, &ts);
		snprintf(buf, sizeof(buf), "ceil-%lx%05lx-%d",
				 (long) ts.tv_sec, (long) (ts.tv_nsec / 10000) & 0xfffff,
				 (int) getpid());
		options.id_prefix = strdup(buf);
	}
}

static int64_t
parse_count(const char *name, const char *text, int64_t min, int64_t max)
{
	char	   *end;
	long long	v = strtoll(text, &end, 10);

	if (*text == '\0' || *end != '\0' || v < min || v > max)
	{
		fprintf(stderr, "curl_ceiling: %s %s is not an integer from %" PRId64
				" to %" PRId64 "\n", name, text, min, max);
		exit(2);
	}
	return (int64_t) v;
}

/* slot_init: the options that never change between requests. */
static void
slot_init(Slot *slot)
{
	slot->easy = curl_easy_init();
	if (slot->easy == NULL)
	{
		fprintf(stderr, "curl_ceiling: curl_easy_init failed\n");
		exit(1);
	}
	slot->body_cap = 4096;
	slot->body = malloc(slot->body_cap);
	slot->resp_cap = 4096;
	slot->resp = malloc(slot->resp_cap);
	if (slot->body == NULL || slot->resp == NULL)
	{
		fprintf(stderr, "curl_ceiling: out of memory\n");
		exit(1);
	}
	curl_easy_setopt(slot->easy, CURLOPT_URL, options.url);
	curl_easy_setopt(slot->easy, CURLOPT_POST, 1L);
	curl_easy_setopt(slot->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(slot->easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(slot->easy, CURLOPT_TIMEOUT_MS, options.timeout_ms);
	curl_easy_setopt(slot->easy, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(slot->easy, CURLOPT_WRITEDATA, slot);
	curl_easy_setopt(slot->easy, CURLOPT_PRIVATE, slot);
	curl_easy_setopt(slot->easy, CURLOPT_ERRORBUFFER, slot->errbuf);
	if (options.verbose)
		curl_easy_setopt(slot->easy, CURLOPT_VERBOSE, 1L);
}

/*
 * slot_prepare: build the body and headers for messages [first_msg,
 * first_msg + nmsgs).  The idempotency key of a request is the id of its
 * first message, so a re-run with the same --id-prefix re-sends the same
 * keys.  "Expect:" turns off libcurl's 100-continue round trip for bodies
 * over 1 kB, which courier does too.
 */
static void
slot_prepare(Slot *slot, int64_t first_msg, int nmsgs)
{
	char		header[512];
	int			i;

	slot->first_msg = first_msg;
	slot->nmsgs = nmsgs;
	slot->body_len = 0;
	slot->resp_len = 0;
	slot->errbuf[0] = '\0';

	BODY_LIT(slot, "{\"messages\": [");
	for (i = 0; i < nmsgs; i++)
	{
		int64_t		n = first_msg + i;

		if (i > 0)
			BODY_LIT(slot, ", ");
		BODY_LIT(slot, "{\"id\": \"");
		body_append(slot, options.id_prefix, strlen(options.id_prefix));
		BODY_LIT(slot, "-");
		body_append_u64(slot, (uint64_t) n);
		/* 010 + 8 digits: always a valid 11-digit number */
		BODY_LIT(slot, "\", \"to\": \"010");
		{
			char		digits[8];
			uint64_t	v = (uint64_t) n % 100000000;
			int			d;

			for (d = 7; d >= 0; d--)
			{
				digits[d] = (char) ('0' + v % 10);
				v /= 10;
			}
			body_append(slot, digits, 8);
		}
		BODY_LIT(slot, "\", \"channel\": \"sms\", \"subject\": \"\", "
				 "\"text\": \"Your order has shipped. Tracking: CR123456789KR\"}");
	}
	BODY_LIT(slot, "]}");

	curl_slist_free_all(slot->headers);
	slot->headers = curl_slist_append(NULL, "Content-Type: application/json");
	slot->headers = curl_slist_append(slot->headers, "Expect:");
	snprintf(header, sizeof(header), "%s: %s-%" PRId64,
			 options.idempotency_header, options.id_prefix, first_msg);
	slot->headers = curl_slist_append(slot->headers, header);
	for (i = 0; i < options.n_extra_headers; i++)
		slot->headers = curl_slist_append(slot->headers, options.extra_headers[i]);

	curl_easy_setopt(slot->easy, CURLOPT_HTTPHEADER, slot->headers);
	curl_easy_setopt(slot->easy, CURLOPT_POSTFIELDSIZE, (long) slot->body_len);
	curl_easy_setopt(slot->easy, CURLOPT_POSTFIELDS, slot->body);
}

/*
 * slot_accepted: how many of the request's messages the server accepted.
 * Courier's 2xx rule, counted cheaply: in a 200 answer every message is
 * accepted except those with a per-message "status" other than
 * "accepted" (the mock answers one entry per message; nginx's
 * {"results":[]} has none, so all are accepted).  Anything else accepts
 * nothing.
 */
static int64_t
slot_accepted(Slot *slot, CURLcode result)
{
	long		status = 0;
	int64_t		n = 0;
	int64_t		entries = 0;
	const char *p;
	const char *end;

	if (result != CURLE_OK)
	{
		if (options.verbose)
			fprintf(stderr, "curl_ceiling: request at message %" PRId64 " failed: %s\n",
					slot->first_msg,
					slot->errbuf[0] ? slot->errbuf : curl_easy_strerror(result));
		return 0;
	}
	curl_easy_getinfo(slot->easy, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200)
	{
		if (options.verbose)
			fprintf(stderr, "curl_ceiling: request at message %" PRId64 " got HTTP %ld\n",
					slot->first_msg, status);
		return 0;
	}
	end = slot->resp + slot->resp_len;
	for (p = slot->resp; (p = memmem(p, (size_t) (end - p), "\"accepted\"", 10)) != NULL; p += 10)
		n++;
	for (p = slot->resp; (p = memmem(p, (size_t) (end - p), "\"status\"", 8)) != NULL; p += 8)
		entries++;
	/* entries without "accepted" are the ones the server refused */
	n = slot->nmsgs - (entries > n ? entries - n : 0);
	return n > 0 ? n : 0;
}

static size_t
on_write(char *data, size_t size, size_t nmemb, void *userdata)
{
	Slot	   *slot = userdata;
	size_t		n = size * nmemb;

	if (slot->resp_len + n > slot->resp_cap)
	{
		size_t		cap = slot->resp_cap * 2;
		char	   *resp;

		while (cap < slot->resp_len + n)
			cap *= 2;
		resp = realloc(slot->resp, cap);
		if (resp == NULL)
			return 0;			/* makes libcurl fail the transfer */
		slot->resp = resp;
		slot->resp_cap = cap;
	}
	memcpy(slot->resp + slot->resp_len, data, n);
	slot->resp_len += n;
	return n;
}

static void
body_append(Slot *slot, const char *s, size_t n)
{
	if (slot->body_len + n > slot->body_cap)
	{
		while (slot->body_len + n > slot->body_cap)
			slot->body_cap *= 2;
		slot->body = realloc(slot->body, slot->body_cap);
		if (slot->body == NULL)
		{
			fprintf(stderr, "curl_ceiling: out of memory\n");
			exit(1);
		}
	}
	memcpy(slot->body + slot->body_len, s, n);
	slot->body_len += n;
}

static void
body_append_u64(Slot *slot, uint64_t v)
{
	char		tmp[24];
	int			n = 0;

	do
	{
		tmp[sizeof(tmp) - 1 - n++] = (char) ('0' + v % 10);
		v /= 10;
	} while (v > 0);
	body_append(slot, tmp + sizeof(tmp) - n, (size_t) n);
}

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}
