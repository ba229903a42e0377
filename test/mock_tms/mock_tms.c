/*-------------------------------------------------------------------------
 *
 * mock_tms.c
 *		A stand-in for the text-message service (TMS) that courier posts to,
 *		used by the tests and the benchmarks.
 *
 * What it does: accepts courier's bulk JSON requests on any path that does
 * not start with "/_" and is not one of the providers' paths, answers one
 * result per message, de-duplicates message ids (an id seen again is
 * answered "accepted" with the provider id it got the first time), rejects
 * invalid recipients, and counts everything so a test can check what
 * arrived.  Faults (latency, error statuses, 429 bursts, hangs, resets,
 * malformed bodies, lost replies, 401s, odd result statuses, a fixed reply
 * body) are switched on at run time through POST /_control; GET /_stats,
 * GET /_delivered, GET /_received, GET /_customers, GET /_handsets,
 * GET /_hooks, GET /_hooks/stats, GET /_traces and POST /_reset serve the
 * test harness.  Every message of every well-formed request is logged
 * with the time it arrived and the status it got, so a test can check
 * when courier sent what; every request to a message, provider or
 * subscriber path is logged with its W3C traceparent header and the ids
 * it carried, so a test can check which trace each request belonged to.  Delays and hangs suspend the connection and let a timer thread
 * resume it, so they never hold a server thread.  The providers' own
 * dialects (NHN Cloud, Naver Cloud SENS) live in dialects.c and share the
 * faults, the counters and the received log.  The subscriber endpoint
 * (POST /hooks/<name>, where courier delivers order events) lives in
 * hooks.c; it shares the faults but keeps its own records and counters.
 *
 * What it does not do: TLS, persistence across restarts, HTTP/2, or
 * listening on anything but a loopback address.  The JSON scanner
 * understands exactly the request shape courier sends and skips unknown
 * keys; it is not a general-purpose JSON library.
 *
 * IDENTIFICATION
 *	  test/mock_tms/mock_tms.c
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "mock_tms.h"

#define MAX_CONTROL_PAIRS		32
#define MAX_REPLY_BODY_BYTES	(16 * 1024 * 1024)

#define RECEIVED_MAX_ENTRIES	2000000
#define RECEIVED_MAX_ID_BYTES	(256 * 1024 * 1024)

#define TRACES_MAX_BYTES		(256 * 1024 * 1024)
#define TRACEPARENT_MAX_BYTES	256	/* longer headers are cut */

#define IDSET_SHARDS			256	/* power of two; top hash bits pick it */
#define IDSET_INITIAL_SLOTS		1024	/* power of two */
#define ARENA_CHUNK_BYTES		(256 * 1024)

#define DEFAULT_ERROR_STATUS	500
#define DEFAULT_RETRY_AFTER_S	1
#define DEFAULT_HANG_MS			30000
#define DEFAULT_RESULT_STATUS	"accepted"
#define DEFAULT_RECEIPT_DELAY_MS	500
#define DEFAULT_RESEND_DELAY_MS	500
#define DEFAULT_IDEMPOTENCY_WINDOW_S	600
#define SHUTDOWN_GRACE_MS		3000

/* A delivered id; lives in its shard's arena until /_reset. */
typedef struct IdRecord
{
	uint64_t	seq;			/* provider id number */
	uint32_t	len;
	char		key[];
} IdRecord;

typedef struct IdSlot
{
	uint64_t	hash;
	IdRecord   *rec;			/* NULL: empty slot */
} IdSlot;

typedef struct ArenaChunk
{
	struct ArenaChunk *next;
	size_t		used;
	size_t		size;
	char		data[];
} ArenaChunk;

typedef struct IdShard
{
	pthread_mutex_t lock;
	IdSlot	   *slots;
	size_t		mask;
	size_t		count;
	ArenaChunk *chunks;
} __attribute__((aligned(64))) IdShard;

typedef enum SettingType
{
	SET_INT,
	SET_RATE,
	SET_BOOL,
	SET_PREFIX,
	SET_SEED,
	SET_RESULT_STATUS,
	SET_REPLY_BODY,
	SET_TEMPLATES,
	SET_HOOK_STATUS,
	SET_HOOK_SECRETS
} SettingType;

typedef struct Setting
{
	const char *name;
	SettingType type;
	int64_t		min;
	int64_t		max;
	_Atomic int64_t *int_target;
	_Atomic double *rate_target;
	_Atomic bool *bool_target;
} Setting;

typedef struct ControlPair
{
	char	   *key;
	char	   *value;			/* NULL: JSON null, or a bare "key" */
} ControlPair;

typedef struct ControlPairs
{
	ControlPair pairs[MAX_CONTROL_PAIRS];
	int			count;
	bool		overflow;
} ControlPairs;

typedef struct TimerEntry
{
	uint64_t	due_us;
	struct MHD_Connection *conn;
} TimerEntry;

typedef struct Timer
{
	pthread_mutex_t lock;
	pthread_cond_t cond;
	TimerEntry *heap;
	size_t		count;
	size_t		cap;
	bool		stop;
	pthread_t	thread;
} Timer;

/*
 * One message as it arrived, for /_received: when the request carrying it
 * was complete, what that request was answered (0: hang or reset), and
 * where its id is in the log's byte buffer.
 */
typedef struct ReceivedEntry
{
	uint64_t	us;
	uint64_t	offset;
	uint32_t	len;
	uint32_t	status;
} ReceivedEntry;

/*
 * The received log: append-only until /_reset, bounded by
 * RECEIVED_MAX_ENTRIES messages and RECEIVED_MAX_ID_BYTES bytes of ids;
 * what does not fit is dropped and sets overflow.
 */
typedef struct ReceivedLog
{
	pthread_mutex_t lock;
	ReceivedEntry *entries;
	size_t		count;
	size_t		cap;
	char	   *ids;
	size_t		ids_len;
	size_t		ids_cap;
	_Atomic bool overflow;
} ReceivedLog;

/*
 * The trace log of /_traces: one JSON object per request to a message,
 * provider or subscriber path, rendered when the request was decided and
 * kept, comma-separated, in one text until /_reset.  Past
 * TRACES_MAX_BYTES entries are dropped and overflow is set.
 */
typedef struct TraceLog
{
	pthread_mutex_t lock;
	char	   *text;
	size_t		len;
	size_t		cap;
	uint64_t	count;			/* entries logged: the next one's number - 1 */
	_Atomic bool overflow;
} TraceLog;

/* one id copied out for /_delivered */
typedef struct DeliveredItem
{
	uint64_t	seq;
	size_t		offset;
	size_t		len;
} DeliveredItem;

/* command line and process lifetime */
static void usage(FILE *out);
static void parse_options(int argc, char **argv);
static void log_from_mhd(void *cls, const char *fmt, va_list ap);

/* the MHD callbacks and the request life cycle */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn);
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
								  const char *url, const char *method,
								  const char *version, const char *upload_data,
								  size_t *upload_data_size, void **con_cls);
static void on_completed(void *cls, struct MHD_Connection *conn,
						 void **con_cls, enum MHD_RequestTerminationCode toe);
static void request_start(Request *req, struct MHD_Connection *conn,
						  const char *url);
static void request_append_body(Request *req, const char *data, size_t len);
static int64_t request_decide(Request *req, struct MHD_Connection *conn,
							  const char *method);
static enum MHD_Result request_answer(struct MHD_Connection *conn, Request *req);

/* the message endpoint */
static int64_t decide_send(Request *req, struct MHD_Connection *conn);
static bool is_authorized(struct MHD_Connection *conn);
static void answer_batch(Request *req, const Batch *batch);
static const char *reject_code(const Message *m, const char *prefix,
							   size_t prefix_len);

/* the harness endpoints */
static void decide_control(Request *req, struct MHD_Connection *conn,
						   bool is_post);
static enum MHD_Result collect_query_pair(void *cls, enum MHD_ValueKind kind,
										  const char *key, const char *value);
static bool parse_control_json(char *body, size_t len, ControlPairs *out);
static void parse_control_form(char *body, ControlPairs *out);
static void add_control_pair(ControlPairs *out, const char *key, size_t key_len,
							 const char *value, size_t value_len);
static bool apply_setting(const char *key, const char *value, bool dry_run,
						  char *err, size_t errlen);
static void faults_reset(void);
static void faults_json(OutBuf *out);
static void stats_reset(void);
static void stats_json(OutBuf *out);
static void delivered_json(OutBuf *out);
static int	compare_delivered(const void *a, const void *b);

/* the received log */
static void received_clear(void);
static void received_json(OutBuf *out);
static void traces_append(Request *req, struct MHD_Connection *conn);
static void traces_clear(void);
static void traces_json(OutBuf *out);

/* JSON scanning */
static int	hex_value(char ch);
static long hex4(const char *p, const char *end);
static bool json_copy_value(JsonCursor *c, OutBuf *out, int depth);
static bool parse_batch(char *body, size_t len, Batch *batch);
static bool parse_messages(JsonCursor *c, Batch *batch);
static bool parse_message(JsonCursor *c, Message *m);

/* the id set */
static void idset_init(void);
static void idset_clear(void);
static bool idset_insert(const char *key, size_t len, uint64_t *seq);

/* the timer that resumes suspended connections */
static void timer_start(void);
static void timer_stop(void);
static void timer_add(struct MHD_Connection *conn, int64_t delay_ms);
static struct MHD_Connection *timer_pop(void);
static void *timer_main(void *arg);

/* small helpers */
static void atomic_max_i64(_Atomic int64_t *target, int64_t value);
static void atomic_max_u64(_Atomic uint64_t *target, uint64_t value);

Options		options;
Faults		faults;
Stats		stats;
_Atomic bool shutting_down;
static IdShard idset[IDSET_SHARDS];
static Timer timer;
static ReceivedLog received;
static TraceLog traces;
static _Atomic uint64_t rng_state;
static _Atomic uint64_t next_provider_seq;

static const Setting settings[] = {
	{"latency_ms", SET_INT, 0, 600000, &faults.latency_ms, NULL, NULL},
	{"error_rate", SET_RATE, 0, 0, NULL, &faults.error_rate, NULL},
	{"error_status", SET_INT, 100, 599, &faults.error_status, NULL, NULL},
	{"burst_429", SET_INT, 0, INT64_C(1000000000000), &faults.burst_429, NULL, NULL},
	{"retry_after_s", SET_INT, 0, 86400, &faults.retry_after_s, NULL, NULL},
	{"hang_rate", SET_RATE, 0, 0, NULL, &faults.hang_rate, NULL},
	{"hang_ms", SET_INT, 0, 3600000, &faults.hang_ms, NULL, NULL},
	{"reset_rate", SET_RATE, 0, 0, NULL, &faults.reset_rate, NULL},
	{"malformed_rate", SET_RATE, 0, 0, NULL, &faults.malformed_rate, NULL},
	{"lost_reply_rate", SET_RATE, 0, 0, NULL, &faults.lost_reply_rate, NULL},
	{"reject_prefix", SET_PREFIX, 0, 0, NULL, NULL, NULL},
	{"unauthorized", SET_BOOL, 0, 0, NULL, NULL, &faults.unauthorized},
	{"seed", SET_SEED, 0, 0, NULL, NULL, NULL},
	{"result_status", SET_RESULT_STATUS, 0, MAX_RESULT_STATUS_BYTES, NULL, NULL, NULL},
	{"reply_body", SET_REPLY_BODY, 0, MAX_REPLY_BODY_BYTES, NULL, NULL, NULL},
	{"receipt_delay_ms", SET_INT, 0, 86400000, &faults.receipt_delay_ms, NULL, NULL},
	{"resend_delay_ms", SET_INT, 0, 86400000, &faults.resend_delay_ms, NULL, NULL},
	{"idempotency_window_s", SET_INT, 0, 86400, &faults.idempotency_window_s, NULL, NULL},
	{"nhn_auth_status", SET_INT, 200, 599, &faults.nhn_auth_status, NULL, NULL},
	{"send_fallback_codes", SET_INT, 0, 1, &faults.send_fallback_codes, NULL, NULL},
	{"templates", SET_TEMPLATES, 0, 0, NULL, NULL, NULL},
	{"hook_status", SET_HOOK_STATUS, 0, 0, NULL, NULL, NULL},
	{"hook_secrets", SET_HOOK_SECRETS, 0, 0, NULL, NULL, NULL},
	{"hook_reject_bad_signature", SET_BOOL, 0, 0, NULL, NULL, &faults.hook_reject_bad_signature},
};


/*
 * main: bind to loopback, announce the port on stdout (scripts wait for that
 * line), then sleep in sigwait until SIGTERM or SIGINT and shut down so that
 * no connection is left suspended (MHD forbids stopping with suspended
 * connections).
 */
int
main(int argc, char **argv)
{
	struct sockaddr_in addr;
	struct MHD_Daemon *daemon;
	const union MHD_DaemonInfo *info;
	unsigned int flags;
	sigset_t	sigs;
	int			sig;
	char		addr_text[INET_ADDRSTRLEN];
	uint64_t	deadline;
	struct MHD_OptionItem mhd_opts[16];
	int			nopt;

	parse_options(argc, argv);

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t) options.port);
	if (inet_pton(AF_INET, options.bind, &addr.sin_addr) != 1)
	{
		fprintf(stderr, "mock_tms: --bind %s is not an IPv4 address\n",
				options.bind);
		return 2;
	}
	if ((ntohl(addr.sin_addr.s_addr) >> 24) != 127)
	{
		fprintf(stderr, "mock_tms: --bind %s is not a loopback address\n",
				options.bind);
		return 2;
	}
	inet_ntop(AF_INET, &addr.sin_addr, addr_text, sizeof(addr_text));

	/* Threads started from here on inherit this mask; main takes signals. */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	pthread_mutex_init(&faults.prefix_lock, NULL);
	pthread_mutex_init(&faults.text_lock, NULL);
	pthread_mutex_init(&received.lock, NULL);
	pthread_mutex_init(&traces.lock, NULL);
	dialect_init();
	hooks_init();
	faults_reset();
	idset_init();
	timer_start();

	flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
		MHD_USE_TURBO | MHD_USE_ERROR_LOG;
	/* The logger first, so it sees every message; a pool only if > 1. */
	nopt = 0;
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_EXTERNAL_LOGGER, (intptr_t) log_from_mhd, NULL
	};
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_SOCK_ADDR, 0, &addr
	};
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) on_completed, NULL
	};
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_URI_LOG_CALLBACK, (intptr_t) on_uri, NULL
	};
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_CONNECTION_LIMIT, 10000, NULL
	};
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024, NULL
	};
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_CONNECTION_TIMEOUT, 0, NULL
	};
	if (options.threads > 1)
		mhd_opts[nopt++] = (struct MHD_OptionItem)
		{
			MHD_OPTION_THREAD_POOL_SIZE, options.threads, NULL
		};
	mhd_opts[nopt++] = (struct MHD_OptionItem)
	{
		MHD_OPTION_END, 0, NULL
	};
	daemon = MHD_start_daemon(flags, (uint16_t) options.port, NULL, NULL,
							  on_request, NULL,
							  MHD_OPTION_ARRAY, mhd_opts,
							  MHD_OPTION_END);
	if (daemon == NULL)
	{
		fprintf(stderr, "mock_tms: could not listen on %s:%d\n",
				addr_text, options.port);
		timer_stop();
		return 1;
	}
	info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
	printf("mock_tms listening on %s:%u\n", addr_text,
		   info != NULL ? (unsigned int) info->port : (unsigned int) options.port);
	fflush(stdout);

	do
	{
		if (sigwait(&sigs, &sig) != 0)
			sig = 0;
	} while (sig != SIGINT && sig != SIGTERM);

	/*
	 * Refuse new requests, answer or close the ones under way at once,
	 * release every suspended connection, and wait (bounded) for those
	 * requests to finish before stopping MHD.
	 */
	atomic_store(&shutting_down, true);
	MHD_quiesce_daemon(daemon);
	timer_stop();
	deadline = monotonic_us() + SHUTDOWN_GRACE_MS * 1000;
	while ((atomic_load(&stats.in_flight) > 0 ||
			atomic_load(&stats.hook_in_flight) > 0) && monotonic_us() < deadline)
		usleep(10000);
	MHD_stop_daemon(daemon);
	idset_clear();
	received_clear();
	traces_clear();
	dialect_reset();
	hooks_clear();
	return 0;
}

static void
usage(FILE *out)
{
	fprintf(out,
			"usage: mock_tms --port N [--bind 127.0.0.1] [--threads N]\n"
			"                [--require-header 'Name: value']\n"
			"                [--idempotency-header Name] [--verbose]\n"
			"                [--nhn-appkey KEY] [--nhn-secret SECRET]\n"
			"                [--nhn-sms-secret SECRET]\n"
			"                [--sens-access-key KEY --sens-secret SECRET]\n"
			"                [--hook-secret NAME=SECRET]...\n"
			"  --port 0 picks a free port; the chosen one is printed as\n"
			"  \"mock_tms listening on ADDR:PORT\".  See README.md for the\n"
			"  providers' dialects, the subscriber endpoint /hooks/NAME, and\n"
			"  the /_control, /_stats, /_delivered, /_received, /_customers,\n"
			"  /_handsets, /_hooks, /_hooks/stats and /_reset endpoints.\n");
}

/*
 * parse_options: fill the global options or exit(2).  --require-header is
 * split once here so the hot path compares two plain strings.
 */
static void
parse_options(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"port", required_argument, NULL, 'p'},
		{"bind", required_argument, NULL, 'b'},
		{"threads", required_argument, NULL, 't'},
		{"require-header", required_argument, NULL, 'r'},
		{"idempotency-header", required_argument, NULL, 'i'},
		{"verbose", no_argument, NULL, 'v'},
		{"nhn-appkey", required_argument, NULL, 'A'},
		{"nhn-secret", required_argument, NULL, 'S'},
		{"nhn-sms-secret", required_argument, NULL, 'M'},
		{"sens-access-key", required_argument, NULL, 'K'},
		{"sens-secret", required_argument, NULL, 'Z'},
		{"hook-secret", required_argument, NULL, 'H'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	bool		have_port = false;
	long		ncpu;
	int			opt;
	char	   *end;
	long		n;

	ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	options.threads = ncpu > 0 ? (int) ncpu : 2;
	options.bind = "127.0.0.1";

	while ((opt = getopt_long(argc, argv, "p:b:t:r:i:vh", longopts, NULL)) != -1)
	{
		switch (opt)
		{
			case 'p':
				n = strtol(optarg, &end, 10);
				if (*optarg == '\0' || *end != '\0' || n < 0 || n > 65535)
				{
					fprintf(stderr, "mock_tms: --port %s is not a port number\n", optarg);
					exit(2);
				}
				options.port = (int) n;
				have_port = true;
				break;
			case 'b':
				options.bind = strcmp(optarg, "localhost") == 0 ? "127.0.0.1" : optarg;
				break;
			case 't':
				n = strtol(optarg, &end, 10);
				if (*optarg == '\0' || *end != '\0' || n < 1 || n > 256)
				{
					fprintf(stderr, "mock_tms: --threads %s is not between 1 and 256\n", optarg);
					exit(2);
				}
				options.threads = (int) n;
				break;
			case 'r':
				{
					char	   *colon = strchr(optarg, ':');
					char	   *name_end;
					char	   *value;

					if (colon == NULL || colon == optarg)
					{
						fprintf(stderr, "mock_tms: --require-header wants 'Name: value', got '%s'\n", optarg);
						exit(2);
					}
					options.auth_name = strndup(optarg, (size_t) (colon - optarg));
					name_end = options.auth_name + strlen(options.auth_name);
					while (name_end > options.auth_name && name_end[-1] == ' ')
						*--name_end = '\0';
					value = colon + 1;
					while (*value == ' ' || *value == '\t')
						value++;
					options.auth_value = strdup(value);
					break;
				}
			case 'i':
				options.idempotency_header = optarg;
				break;
			case 'v':
				options.verbose = true;
				break;
			case 'A':
				options.nhn_appkey = optarg;
				break;
			case 'S':
				options.nhn_secret = optarg;
				break;
			case 'M':
				options.nhn_sms_secret = optarg;
				break;
			case 'K':
				options.sens_access_key = optarg;
				break;
			case 'Z':
				options.sens_secret = optarg;
				break;
			case 'H':
				if (!hook_secret_option(optarg))
				{
					fprintf(stderr, "mock_tms: --hook-secret wants NAME=SECRET, NAME 1 to %d of [A-Za-z0-9_.-] and SECRET not empty; got '%s'\n",
							HOOK_NAME_MAX, optarg);
					exit(2);
				}
				break;
			case 'h':
				usage(stdout);
				exit(0);
			default:
				usage(stderr);
				exit(2);
		}
	}
	if (!have_port || optind != argc)
	{
		usage(stderr);
		exit(2);
	}
	if ((options.sens_access_key == NULL) != (options.sens_secret == NULL))
	{
		fprintf(stderr, "mock_tms: --sens-access-key and --sens-secret go together\n");
		exit(2);
	}
	if (options.nhn_sms_secret == NULL)
		options.nhn_sms_secret = options.nhn_secret;
}

/*
 * log_from_mhd: MHD logs "Application reported internal error" every time
 * we close a connection on purpose (reset and hang faults); keep stderr quiet
 * about those unless --verbose.
 */
static void
log_from_mhd(void *cls, const char *fmt, va_list ap)
{
	char		line[1024];

	(void) cls;
	vsnprintf(line, sizeof(line), fmt, ap);
	if (!options.verbose && strstr(line, "Application reported") != NULL)
		return;
	fprintf(stderr, "mock_tms: %s%s", line,
			line[0] != '\0' && line[strlen(line) - 1] == '\n' ? "" : "\n");
}


/*
 * on_uri: MHD's URI log callback, called once per request as soon as the
 * request line is read.  It is the only place MHD shows the URI exactly as
 * the client sent it, query string and escapes included, which the SENS
 * signature covers; so the Request is born here and MHD hands it to
 * on_request as *con_cls.  on_completed frees it whatever happens next.
 */
static void *
on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	Request    *req = xmalloc(sizeof(Request));

	(void) cls;
	(void) conn;
	memset(req, 0, sizeof(Request));
	req->phase = PHASE_NEW;
	req->retry_after_s = -1;
	req->raw_uri = strdup(uri != NULL ? uri : "");
	if (req->raw_uri == NULL)
	{
		fprintf(stderr, "mock_tms: out of memory copying a URI\n");
		abort();
	}
	return req;
}

/*
 * on_request: MHD's access handler.  MHD calls it once when the headers are
 * in, once per chunk of body, once more when the body is complete, and again
 * after a suspended connection is resumed.  The decision about the answer is
 * made exactly once, at body end; a delay suspends the connection and hands
 * it to the timer thread, so no pool thread ever sleeps.
 */
static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url,
		   const char *method, const char *version, const char *upload_data,
		   size_t *upload_data_size, void **con_cls)
{
	Request    *req = *con_cls;
	int64_t		delay_ms;

	(void) cls;
	(void) version;

	if (req == NULL || req->phase == PHASE_NEW)
	{
		/* Shutting down: drop requests that were not already under way. */
		if (atomic_load_explicit(&shutting_down, memory_order_relaxed))
			return MHD_NO;
		if (req == NULL)
			*con_cls = req = on_uri(NULL, url, conn);
		request_start(req, conn, url);
		return MHD_YES;
	}

	if (req->phase == PHASE_RECEIVING)
	{
		if (*upload_data_size > 0)
		{
			request_append_body(req, upload_data, *upload_data_size);
			*upload_data_size = 0;
			return MHD_YES;
		}
		delay_ms = request_decide(req, conn, method);
		if (delay_ms > 0)
		{
			/* Suspend first: the timer may resume it at once. */
			MHD_suspend_connection(conn);
			timer_add(conn, delay_ms);
			return MHD_YES;
		}
	}

	if (req->phase == PHASE_CLOSE)
		return MHD_NO;
	return request_answer(conn, req);
}

/*
 * on_completed: MHD is done with the request, answered or not (client gone,
 * reset fault, hang fault).  Frees what on_uri and request_start allocated.
 */
static void
on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	Request    *req = *con_cls;

	(void) cls;
	(void) conn;
	(void) toe;

	if (req == NULL)
		return;
	if (req->counted)
		atomic_fetch_sub_explicit(&stats.in_flight, 1, memory_order_relaxed);
	if (req->hook_counted)
		atomic_fetch_sub_explicit(&stats.hook_in_flight, 1, memory_order_relaxed);
	free(req->raw_uri);
	free(req->body);
	free(req->answer);
	free(req->trace_fields);
	free(req);
	*con_cls = NULL;
}

/*
 * request_start: classify the request by path (a provider's path, a
 * subscriber's /hooks/<name>, another message path, or a harness endpoint)
 * and size the body buffer from Content-Length so a big batch is not copied
 * several times while growing.  Message requests of every dialect are
 * counted here, once; subscriber requests only in their own gauge, so that
 * /_stats stays about the TMS.
 */
static void
request_start(Request *req, struct MHD_Connection *conn, const char *url)
{
	const char *clen;
	size_t		cap = 256;

	req->phase = PHASE_RECEIVING;

	if (strncmp(url, "/hooks/", 7) == 0)
	{
		size_t		len = strlen(url + 7);

		/* under /hooks/, a bad name is not a message path either */
		if (hook_name_valid(url + 7, len))
		{
			req->kind = REQ_HOOK;
			memcpy(req->hook, url + 7, len + 1);
			req->hook_counted = true;
			atomic_fetch_add_explicit(&stats.hook_in_flight, 1, memory_order_relaxed);
		}
		else
			req->kind = REQ_NOT_FOUND;
	}
	else if (strncmp(url, "/_", 2) != 0)
		req->kind = dialect_route(url, &req->route) ? REQ_DIALECT : REQ_SEND;
	else if (strcmp(url, "/_control") == 0)
		req->kind = REQ_CONTROL;
	else if (strcmp(url, "/_reset") == 0)
		req->kind = REQ_RESET;
	else if (strcmp(url, "/_stats") == 0)
		req->kind = REQ_STATS;
	else if (strcmp(url, "/_delivered") == 0)
		req->kind = REQ_DELIVERED;
	else if (strcmp(url, "/_received") == 0)
		req->kind = REQ_RECEIVED;
	else if (strcmp(url, "/_customers") == 0)
		req->kind = REQ_CUSTOMERS;
	else if (strcmp(url, "/_handsets") == 0)
		req->kind = REQ_HANDSETS;
	else if (strcmp(url, "/_hooks") == 0)
		req->kind = REQ_HOOKS;
	else if (strcmp(url, "/_hooks/stats") == 0)
		req->kind = REQ_HOOKS_STATS;
	else if (strcmp(url, "/_traces") == 0)
		req->kind = REQ_TRACES;
	else
		req->kind = REQ_NOT_FOUND;

	if (req->kind == REQ_SEND || req->kind == REQ_DIALECT)
	{
		int64_t		now_in_flight;

		req->counted = true;
		atomic_fetch_add_explicit(&stats.requests, 1, memory_order_relaxed);
		now_in_flight = atomic_fetch_add_explicit(&stats.in_flight, 1,
												  memory_order_relaxed) + 1;
		atomic_max_i64(&stats.max_in_flight, now_in_flight);
	}

	clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
									   MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (clen != NULL)
	{
		unsigned long long n = strtoull(clen, NULL, 10);

		if (n < MAX_BODY_BYTES)
			cap = (size_t) n + 1;
	}
	req->body = xmalloc(cap);
	req->body[0] = '\0';
	req->body_cap = cap;
}

/*
 * request_append_body: keep the body NUL-terminated; past MAX_BODY_BYTES
 * just remember it was too large (answered 413) and drop the rest.
 */
static void
request_append_body(Request *req, const char *data, size_t len)
{
	if (req->body_too_large || req->body_len + len > MAX_BODY_BYTES)
	{
		req->body_too_large = true;
		return;
	}
	if (req->body_len + len + 1 > req->body_cap)
	{
		size_t		cap = req->body_cap * 2;

		while (cap < req->body_len + len + 1)
			cap *= 2;
		req->body = xrealloc(req->body, cap);
		req->body_cap = cap;
	}
	memcpy(req->body + req->body_len, data, len);
	req->body_len += len;
	req->body[req->body_len] = '\0';
}

/*
 * request_decide: prepare the answer (or the decision to close) once the body
 * is complete.  Returns how long to hold the connection first, in ms.  A
 * request to a message, provider or subscriber path is logged for
 * /_traces once it is decided, whatever its answer.
 */
static int64_t
request_decide(Request *req, struct MHD_Connection *conn, const char *method)
{
	bool		is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
	bool		is_post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
	OutBuf		out;
	int64_t		delay_ms = 0;

	req->phase = PHASE_ANSWER;
	switch (req->kind)
	{
		case REQ_SEND:
		case REQ_HOOK:
			if (!is_post)
				set_answer_text(req, MHD_HTTP_METHOD_NOT_ALLOWED,
								"{\"error\":\"method_not_allowed\"}");
			else if (req->kind == REQ_SEND)
				delay_ms = decide_send(req, conn);
			else
				delay_ms = hook_decide(req, conn);
			traces_append(req, conn);
			return delay_ms;
		case REQ_DIALECT:
			delay_ms = dialect_decide(req, conn, method);
			traces_append(req, conn);
			return delay_ms;
		case REQ_CONTROL:
			if (!is_post && !is_get)
				break;
			decide_control(req, conn, is_post);
			return 0;
		case REQ_RESET:
			if (!is_post)
				break;
			stats_reset();
			faults_reset();
			idset_clear();
			received_clear();
			traces_clear();
			dialect_reset();
			hooks_clear();
			set_answer_text(req, MHD_HTTP_OK, "{\"ok\":true}");
			return 0;
		case REQ_STATS:
			if (!is_get)
				break;
			out_init(&out, 1024);
			stats_json(&out);
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_DELIVERED:
			if (!is_get)
				break;
			out_init(&out, 4096);
			delivered_json(&out);
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_RECEIVED:
			if (!is_get)
				break;
			out_init(&out, 4096);
			received_json(&out);
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_CUSTOMERS:
			if (!is_get)
				break;
			out_init(&out, 512);
			customers_json(&out);
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_HANDSETS:
			if (!is_get)
				break;
			out_init(&out, 4096);
			handsets_json(&out);
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_HOOKS:
			if (!is_get)
				break;
			out_init(&out, 4096);
			hooks_json(&out, MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
														 "hook"));
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_HOOKS_STATS:
			if (!is_get)
				break;
			out_init(&out, 512);
			hooks_stats_json(&out);
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_TRACES:
			if (!is_get)
				break;
			out_init(&out, 4096);
			traces_json(&out);
			set_answer(req, MHD_HTTP_OK, &out);
			return 0;
		case REQ_NOT_FOUND:
			set_answer_text(req, MHD_HTTP_NOT_FOUND, "{\"error\":\"not_found\"}");
			return 0;
	}
	set_answer_text(req, MHD_HTTP_METHOD_NOT_ALLOWED,
					"{\"error\":\"method_not_allowed\"}");
	return 0;
}

/*
 * request_answer: queue the prepared answer; MHD takes ownership of the body
 * buffer.  Status classes are counted here, when the answer really goes out,
 * and only for message requests (generic and providers' dialects).
 */
static enum MHD_Result
request_answer(struct MHD_Connection *conn, Request *req)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(req->answer_len, req->answer,
										   MHD_RESPMEM_MUST_FREE);
	if (resp == NULL)
		return MHD_NO;
	req->answer = NULL;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
							"application/json");
	if (req->retry_after_s >= 0)
	{
		char		value[32];

		snprintf(value, sizeof(value), "%d", req->retry_after_s);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, value);
	}
	ret = MHD_queue_response(conn, req->status, resp);
	MHD_destroy_response(resp);

	if (req->counted && ret == MHD_YES)
	{
		if (req->status >= 200 && req->status < 300)
			atomic_fetch_add_explicit(&stats.status_2xx, 1, memory_order_relaxed);
		else if (req->status >= 400 && req->status < 500)
			atomic_fetch_add_explicit(&stats.status_4xx, 1, memory_order_relaxed);
		else if (req->status >= 500)
			atomic_fetch_add_explicit(&stats.status_5xx, 1, memory_order_relaxed);
	}
	return ret;
}

/* set_answer: take over the buffer of body as the prepared answer. */
void
set_answer(Request *req, unsigned int status, OutBuf *body)
{
	free(req->answer);
	req->status = status;
	req->answer = body->data;
	req->answer_len = body->len;
	body->data = NULL;
}

void
set_answer_text(Request *req, unsigned int status, const char *text)
{
	OutBuf		out;

	out_init(&out, strlen(text) + 1);
	out_str(&out, text);
	set_answer(req, status, &out);
}


/*
 * decide_send: the message endpoint.  The order is the order a real provider
 * would check things in: authentication, request syntax, then the injected
 * faults, then per-message processing.  Only a request that gets past every
 * fault has its messages delivered.  Whatever the answer, the messages of a
 * well-formed body go to the received log, stamped with the time the body
 * was complete (now).  Returns the delay before answering.
 */
static int64_t
decide_send(Request *req, struct MHD_Connection *conn)
{
	Batch		batch;
	uint64_t	arrived_us = wall_us();
	bool		shutting = atomic_load_explicit(&shutting_down, memory_order_relaxed);
	int64_t		delay_ms = shutting ? 0 :
		atomic_load_explicit(&faults.latency_ms, memory_order_relaxed);
	bool		authorized;
	bool		well_formed;

	if (options.idempotency_header != NULL)
	{
		const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
													  options.idempotency_header);

		if (key == NULL)
			atomic_fetch_add_explicit(&stats.missing_idempotency_key, 1,
									  memory_order_relaxed);
		else if (options.verbose)
			fprintf(stderr, "mock_tms: %s: %s\n", options.idempotency_header, key);
	}

	/* Parsed before the 401 too, so that the received log has its messages. */
	authorized = is_authorized(conn) && !atomic_load(&faults.unauthorized);
	memset(&batch, 0, sizeof(batch));
	batch.msgs = batch.inline_msgs;
	batch.cap = INLINE_MESSAGES;
	well_formed = !req->body_too_large &&
		parse_batch(req->body, req->body_len, &batch);

	if (!authorized)
	{
		set_answer_text(req, MHD_HTTP_UNAUTHORIZED, "{\"error\":\"unauthorized\"}");
		goto done;
	}
	if (req->body_too_large)
	{
		set_answer_text(req, 413, "{\"error\":\"too_large\"}");
		goto done;
	}
	if (!well_formed)
	{
		set_answer_text(req, MHD_HTTP_BAD_REQUEST, "{\"error\":\"bad_request\"}");
		goto done;
	}
	atomic_fetch_add_explicit(&stats.messages_received, (uint64_t) batch.count,
							  memory_order_relaxed);

	if (apply_faults(req, &delay_ms, shutting, "{\"results\": ["))
		goto done;
	if (!answer_reply_body(req, batch.count))
	{
		answer_batch(req, &batch);
		if (roll(&faults.lost_reply_rate))
		{
			/* delivered, but the answer never reaches the client */
			atomic_fetch_add_explicit(&stats.lost_replies, 1, memory_order_relaxed);
			req->phase = PHASE_CLOSE;
			delay_ms = 0;
		}
	}

done:
	if (well_formed)
	{
		OutBuf		fields;
		int			i;

		received_append(&batch, arrived_us,
						req->phase == PHASE_CLOSE ? 0 : req->status);
		out_init(&fields, 16 + (size_t) batch.count * 24);
		OUT_LIT(&fields, ",\"ids\":[");
		for (i = 0; i < batch.count; i++)
		{
			if (i > 0)
				OUT_LIT(&fields, ",");
			out_json_string(&fields, batch.msgs[i].id, batch.msgs[i].id_len);
		}
		OUT_LIT(&fields, "]");
		trace_fields_take(req, &fields);
	}
	if (batch.msgs != batch.inline_msgs)
		free(batch.msgs);
	return delay_ms;
}

/*
 * apply_faults: the injected faults, in the order every message endpoint
 * checks them: burst_429, then reset_rate, hang_rate, error_rate and
 * malformed_rate.  garbage is the truncated body a malformed answer gets.
 * Returns true when a fault decided the answer (or the close), with
 * *delay_ms adjusted; false when the request goes on.  Subscriber requests
 * get the same faults but are not counted in /_stats, so that its
 * "requests == status classes + hangs + resets + lost_replies" holds.
 */
bool
apply_faults(Request *req, int64_t *delay_ms, bool shutting, const char *garbage)
{
	bool		tms = req->kind != REQ_HOOK;

	if (atomic_load_explicit(&faults.burst_429, memory_order_relaxed) > 0)
	{
		int64_t		left = atomic_load(&faults.burst_429);

		while (left > 0 &&
			   !atomic_compare_exchange_weak(&faults.burst_429, &left, left - 1))
			;
		if (left > 0)
		{
			if (tms)
				atomic_fetch_add_explicit(&stats.throttled_429, 1, memory_order_relaxed);
			set_answer_text(req, 429, "{\"error\":\"too_many_requests\"}");
			req->retry_after_s = (int) atomic_load(&faults.retry_after_s);
			return true;
		}
	}
	if (roll(&faults.reset_rate))
	{
		if (tms)
			atomic_fetch_add_explicit(&stats.resets, 1, memory_order_relaxed);
		req->phase = PHASE_CLOSE;
		*delay_ms = 0;
		return true;
	}
	if (roll(&faults.hang_rate))
	{
		if (tms)
			atomic_fetch_add_explicit(&stats.hangs, 1, memory_order_relaxed);
		req->phase = PHASE_CLOSE;
		*delay_ms = shutting ? 0 : atomic_load(&faults.hang_ms);
		return true;
	}
	if (roll(&faults.error_rate))
	{
		set_answer_text(req, (unsigned int) atomic_load(&faults.error_status),
						"{\"error\":\"injected\"}");
		return true;
	}
	if (roll(&faults.malformed_rate))
	{
		if (tms)
			atomic_fetch_add_explicit(&stats.malformed, 1, memory_order_relaxed);
		set_answer_text(req, MHD_HTTP_OK, garbage);
		return true;
	}
	return false;
}

static bool
is_authorized(struct MHD_Connection *conn)
{
	const char *value;

	if (options.auth_name == NULL)
		return true;
	value = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, options.auth_name);
	return value != NULL && strcmp(value, options.auth_value) == 0;
}

/*
 * answer_batch: deliver each message (or reject it) and build the results
 * array in message order.  While result_status is not "accepted", a message
 * that would have been accepted gets that status instead and is neither
 * delivered nor remembered, so a re-send is answered the same way.
 * Counters are added once per batch to keep the shared cache lines quiet.
 */
static void
answer_batch(Request *req, const Batch *batch)
{
	OutBuf		out;
	char		prefix[MAX_PREFIX_BYTES + 1];
	size_t		prefix_len = load_reject_prefix(prefix);
	char		odd[MAX_RESULT_STATUS_BYTES + 1];
	bool		is_odd = false;
	uint64_t	n_new = 0;
	uint64_t	n_dup = 0;
	uint64_t	n_rejected = 0;
	uint64_t	n_odd = 0;
	int			i;

	if (atomic_load_explicit(&faults.odd_status, memory_order_relaxed))
	{
		pthread_mutex_lock(&faults.text_lock);
		is_odd = atomic_load(&faults.odd_status);
		memcpy(odd, faults.result_status, sizeof(odd));
		pthread_mutex_unlock(&faults.text_lock);
	}

	out_init(&out, 32 + (size_t) batch->count * 96);
	OUT_LIT(&out, "{\"results\":[");
	for (i = 0; i < batch->count; i++)
	{
		const Message *m = &batch->msgs[i];
		const char *code = reject_code(m, prefix, prefix_len);
		uint64_t	seq;

		if (i > 0)
			OUT_LIT(&out, ",");
		OUT_LIT(&out, "{\"id\":");
		out_json_string(&out, m->id, m->id_len);
		if (code != NULL)
		{
			OUT_LIT(&out, ",\"status\":\"rejected\",\"code\":\"");
			out_str(&out, code);
			OUT_LIT(&out, "\",\"provider_id\":\"\"}");
			n_rejected++;
			continue;
		}
		if (is_odd)
		{
			OUT_LIT(&out, ",\"status\":");
			out_json_string(&out, odd, strlen(odd));
			OUT_LIT(&out, ",\"code\":\"injected\",\"provider_id\":\"\"}");
			n_odd++;
			continue;
		}
		if (idset_insert(m->id, m->id_len, &seq))
		{
			OUT_LIT(&out, ",\"status\":\"accepted\",\"code\":\"ok\",\"provider_id\":\"tms-");
			n_new++;
		}
		else
		{
			OUT_LIT(&out, ",\"status\":\"accepted\",\"code\":\"duplicate\",\"provider_id\":\"tms-");
			n_dup++;
		}
		out_u64(&out, seq);
		OUT_LIT(&out, "\"}");
	}
	OUT_LIT(&out, "]}");

	if (n_new > 0)
	{
		uint64_t	now = wall_us();
		uint64_t	zero = 0;

		atomic_fetch_add_explicit(&stats.delivered, n_new, memory_order_relaxed);
		atomic_compare_exchange_strong(&stats.first_delivery_us, &zero, now);
		atomic_max_u64(&stats.last_delivery_us, now);
	}
	if (n_dup > 0)
		atomic_fetch_add_explicit(&stats.duplicates, n_dup, memory_order_relaxed);
	if (n_rejected > 0)
		atomic_fetch_add_explicit(&stats.rejected, n_rejected, memory_order_relaxed);
	if (n_odd > 0)
		atomic_fetch_add_explicit(&stats.odd_status, n_odd, memory_order_relaxed);
	set_answer(req, MHD_HTTP_OK, &out);
}

/*
 * answer_reply_body: while reply_body is set, answer 200 with exactly that
 * body and deliver nothing; the nmessages messages are counted in
 * custom_replies.  Returns false (and prepares nothing) while it is null.
 */
bool
answer_reply_body(Request *req, int nmessages)
{
	OutBuf		out;

	if (!atomic_load_explicit(&faults.has_reply_body, memory_order_relaxed))
		return false;
	pthread_mutex_lock(&faults.text_lock);
	if (faults.reply_body == NULL)
	{
		pthread_mutex_unlock(&faults.text_lock);
		return false;
	}
	out_init(&out, faults.reply_body_len + 1);
	out_bytes(&out, faults.reply_body, faults.reply_body_len);
	pthread_mutex_unlock(&faults.text_lock);

	atomic_fetch_add_explicit(&stats.custom_replies, (uint64_t) nmessages,
							  memory_order_relaxed);
	set_answer(req, MHD_HTTP_OK, &out);
	return true;
}

/*
 * reject_code: the permanent per-message error for m, or NULL.  Recipients
 * must be 10 or 11 ASCII digits and must not start with the configured
 * reject prefix; a channel, when given, must be "sms" or "lms".
 */
static const char *
reject_code(const Message *m, const char *prefix, size_t prefix_len)
{
	size_t		i;

	if (m->to_len < 10 || m->to_len > 11)
		return "invalid_number";
	for (i = 0; i < m->to_len; i++)
		if (m->to[i] < '0' || m->to[i] > '9')
			return "invalid_number";
	if (prefix_len > 0 && prefix_len <= m->to_len &&
		memcmp(m->to, prefix, prefix_len) == 0)
		return "invalid_number";
	if (m->channel != NULL &&
		!json_key_is(m->channel, m->channel_len, "sms") &&
		!json_key_is(m->channel, m->channel_len, "lms"))
		return "invalid_channel";
	return NULL;
}

/* load_reject_prefix: copy the prefix into buf; returns its length (0: none). */
size_t
load_reject_prefix(char *buf)
{
	size_t		len;

	if (atomic_load_explicit(&faults.reject_prefix_len, memory_order_relaxed) == 0)
		return 0;
	pthread_mutex_lock(&faults.prefix_lock);
	len = strlen(faults.reject_prefix);
	memcpy(buf, faults.reject_prefix, len + 1);
	pthread_mutex_unlock(&faults.prefix_lock);
	return len;
}


/*
 * decide_control: GET shows the faults; POST sets them from the query string
 * and from the body (a JSON object, or key=value&... form).  Every pair is
 * validated before any is applied, so a bad request changes nothing.
 */
static void
decide_control(Request *req, struct MHD_Connection *conn, bool is_post)
{
	ControlPairs pairs;
	OutBuf		out;
	char		err[256];
	int			i;

	memset(&pairs, 0, sizeof(pairs));
	if (is_post)
	{
		char	   *b = req->body;

		MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND,
								  collect_query_pair, &pairs);
		while (*b == ' ' || *b == '\t' || *b == '\r' || *b == '\n')
			b++;
		if (*b == '{')
		{
			if (!parse_control_json(req->body, req->body_len, &pairs))
			{
				snprintf(err, sizeof(err), "body is not a JSON object of settings");
				goto bad;
			}
		}
		else if (*b != '\0')
			parse_control_form(b, &pairs);
		if (pairs.overflow)
		{
			snprintf(err, sizeof(err), "more than %d settings", MAX_CONTROL_PAIRS);
			goto bad;
		}
		for (i = 0; i < pairs.count; i++)
			if (!apply_setting(pairs.pairs[i].key, pairs.pairs[i].value, true,
							   err, sizeof(err)))
				goto bad;
		for (i = 0; i < pairs.count; i++)
			apply_setting(pairs.pairs[i].key, pairs.pairs[i].value, false,
						  err, sizeof(err));
	}
	out_init(&out, 512);
	faults_json(&out);
	set_answer(req, MHD_HTTP_OK, &out);
	goto cleanup;

bad:
	out_init(&out, 512);
	OUT_LIT(&out, "{\"error\":\"bad_control\",\"detail\":");
	out_json_string(&out, err, strlen(err));
	OUT_LIT(&out, "}");
	set_answer(req, MHD_HTTP_BAD_REQUEST, &out);

cleanup:
	for (i = 0; i < pairs.count; i++)
	{
		free(pairs.pairs[i].key);
		free(pairs.pairs[i].value);
	}
}

static enum MHD_Result
collect_query_pair(void *cls, enum MHD_ValueKind kind, const char *key,
				   const char *value)
{
	(void) kind;
	add_control_pair((ControlPairs *) cls, key, strlen(key),
					 value, value != NULL ? strlen(value) : 0);
	return MHD_YES;
}

/*
 * parse_control_json: an object of settings.  Strings are decoded, numbers
 * and true/false are kept as their text, null becomes a NULL value, and an
 * object or array (hook_status, hook_secrets) becomes its JSON text,
 * re-encoded by json_copy_value, for its setting to parse.
 */
static bool
parse_control_json(char *body, size_t len, ControlPairs *out)
{
	JsonCursor	c = {body, body + len};
	char	   *key;
	size_t		key_len;
	char	   *val;
	size_t		val_len;

	if (!json_accept(&c, '{'))
		return false;
	if (!json_accept(&c, '}'))
	{
		for (;;)
		{
			if (!json_string(&c, &key, &key_len) || !json_accept(&c, ':'))
				return false;
			json_ws(&c);
			if (c.p >= c.end)
				return false;
			if (*c.p == '"')
			{
				if (!json_string(&c, &val, &val_len))
					return false;
				add_control_pair(out, key, key_len, val, val_len);
			}
			else if (*c.p == 't' || *c.p == 'f' || *c.p == 'n')
			{
				const char *lit = *c.p == 't' ? "true" : *c.p == 'f' ? "false" : "null";
				size_t		lit_len = strlen(lit);

				if ((size_t) (c.end - c.p) < lit_len || memcmp(c.p, lit, lit_len) != 0)
					return false;
				c.p += lit_len;
				add_control_pair(out, key, key_len,
								 *lit == 'n' ? NULL : lit, lit_len);
			}
			else if (*c.p == '{' || *c.p == '[')
			{
				OutBuf		text;
				bool		copied;

				out_init(&text, 256);
				copied = json_copy_value(&c, &text, 1);
				if (copied)
					add_control_pair(out, key, key_len, text.data, text.len);
				free(text.data);
				if (!copied)
					return false;
			}
			else
			{
				if (!json_number(&c, &val, &val_len))
					return false;
				add_control_pair(out, key, key_len, val, val_len);
			}
			if (json_accept(&c, ','))
				continue;
			if (json_accept(&c, '}'))
				break;
			return false;
		}
	}
	json_ws(&c);
	return c.p == c.end;
}

/* parse_control_form: key=value&key=value, with %XX and '+' decoding. */
static void
parse_control_form(char *body, ControlPairs *out)
{
	char	   *save = NULL;
	char	   *item;

	for (item = strtok_r(body, "&\r\n", &save); item != NULL;
		 item = strtok_r(NULL, "&\r\n", &save))
	{
		char	   *eq = strchr(item, '=');
		char	   *p;

		for (p = item; *p != '\0'; p++)
			if (*p == '+')
				*p = ' ';
		if (eq != NULL)
			*eq = '\0';
		MHD_http_unescape(item);
		if (eq != NULL)
			MHD_http_unescape(eq + 1);
		add_control_pair(out, item, strlen(item),
						 eq != NULL ? eq + 1 : NULL, eq != NULL ? strlen(eq + 1) : 0);
	}
}

static void
add_control_pair(ControlPairs *out, const char *key, size_t key_len,
				 const char *value, size_t value_len)
{
	if (out->count >= MAX_CONTROL_PAIRS)
	{
		out->overflow = true;
		return;
	}
	out->pairs[out->count].key = strndup(key, key_len);
	out->pairs[out->count].value = value != NULL ? strndup(value, value_len) : NULL;
	out->count++;
}

/*
 * apply_setting: validate one control setting and, unless dry_run, store it.
 * On failure err says which key and value were wrong and what is allowed.
 */
static bool
apply_setting(const char *key, const char *value, bool dry_run,
			  char *err, size_t errlen)
{
	const Setting *s = NULL;
	size_t		i;
	char	   *end;

	for (i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
		if (strcmp(settings[i].name, key) == 0)
			s = &settings[i];
	if (s == NULL)
	{
		snprintf(err, errlen, "unknown key \"%s\"", key);
		return false;
	}
	if (value == NULL && s->type != SET_PREFIX &&
		s->type != SET_RESULT_STATUS && s->type != SET_REPLY_BODY &&
		s->type != SET_TEMPLATES && s->type != SET_HOOK_STATUS &&
		s->type != SET_HOOK_SECRETS)
	{
		snprintf(err, errlen, "key \"%s\" needs a value", key);
		return false;
	}

	switch (s->type)
	{
		case SET_INT:
			{
				double		d = strtod(value, &end);

				if (*value == '\0' || *end != '\0' || !isfinite(d) || d != floor(d) ||
					d < (double) s->min || d > (double) s->max)
				{
					snprintf(err, errlen, "%s=%s is not an integer from %" PRId64 " to %" PRId64,
							 key, value, s->min, s->max);
					return false;
				}
				if (!dry_run)
					atomic_store(s->int_target, (int64_t) d);
				return true;
			}
		case SET_RATE:
			{
				double		d = strtod(value, &end);

				if (*value == '\0' || *end != '\0' || !isfinite(d) || d < 0.0 || d > 1.0)
				{
					snprintf(err, errlen, "%s=%s is not a fraction from 0 to 1", key, value);
					return false;
				}
				if (!dry_run)
					atomic_store(s->rate_target, d);
				return true;
			}
		case SET_BOOL:
			{
				bool		b;

				if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0 ||
					strcmp(value, "yes") == 0 || strcmp(value, "on") == 0)
					b = true;
				else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0 ||
						 strcmp(value, "no") == 0 || strcmp(value, "off") == 0)
					b = false;
				else
				{
					snprintf(err, errlen, "%s=%s is not a boolean", key, value);
					return false;
				}
				if (!dry_run)
					atomic_store(s->bool_target, b);
				return true;
			}
		case SET_PREFIX:
			{
				size_t		len = value != NULL ? strlen(value) : 0;

				if (len > MAX_PREFIX_BYTES)
				{
					snprintf(err, errlen, "%s is longer than %d bytes", key, MAX_PREFIX_BYTES);
					return false;
				}
				if (!dry_run)
				{
					pthread_mutex_lock(&faults.prefix_lock);
					memcpy(faults.reject_prefix, value != NULL ? value : "", len + 1);
					atomic_store(&faults.reject_prefix_len, (int) len);
					pthread_mutex_unlock(&faults.prefix_lock);
				}
				return true;
			}
		case SET_SEED:
			{
				unsigned long long seed = strtoull(value, &end, 10);

				if (*value == '\0' || *value == '-' || *end != '\0')
				{
					snprintf(err, errlen, "%s=%s is not an unsigned integer", key, value);
					return false;
				}
				if (!dry_run)
				{
					atomic_store(&faults.seed, (uint64_t) seed);
					atomic_store(&rng_state, (uint64_t) seed);
				}
				return true;
			}
		case SET_RESULT_STATUS:
			{
				/* null restores "accepted"; any other text is taken as is */
				const char *status = value != NULL ? value : DEFAULT_RESULT_STATUS;
				size_t		len = strlen(status);
				size_t		j;

				if (len > (size_t) s->max)
				{
					snprintf(err, errlen, "%s is longer than %" PRId64 " bytes", key, s->max);
					return false;
				}
				for (j = 0; j < len; j++)
					if (status[j] < 0x20 || status[j] > 0x7e)
					{
						snprintf(err, errlen, "%s may hold only printable ASCII", key);
						return false;
					}
				if (!dry_run)
				{
					pthread_mutex_lock(&faults.text_lock);
					memcpy(faults.result_status, status, len + 1);
					atomic_store(&faults.odd_status,
								 strcmp(status, DEFAULT_RESULT_STATUS) != 0);
					pthread_mutex_unlock(&faults.text_lock);
				}
				return true;
			}
		case SET_REPLY_BODY:
			{
				/* null: answer normally again; "" is an empty body */
				size_t		len = value != NULL ? strlen(value) : 0;
				char	   *copy = NULL;
				char	   *old;

				if (len > (size_t) s->max)
				{
					snprintf(err, errlen, "%s is longer than %" PRId64 " bytes", key, s->max);
					return false;
				}
				if (!dry_run)
				{
					if (value != NULL)
					{
						copy = xmalloc(len + 1);
						memcpy(copy, value, len + 1);
					}
					pthread_mutex_lock(&faults.text_lock);
					old = faults.reply_body;
					faults.reply_body = copy;
					faults.reply_body_len = len;
					atomic_store(&faults.has_reply_body, copy != NULL);
					pthread_mutex_unlock(&faults.text_lock);
					free(old);
				}
				return true;
			}
		case SET_TEMPLATES:
			return dialect_set_templates(value, dry_run, err, errlen);
		case SET_HOOK_STATUS:
			return hook_set_status(value, dry_run, err, errlen);
		case SET_HOOK_SECRETS:
			return hook_set_secrets(value, dry_run, err, errlen);
	}
	return false;
}

/*
 * faults_reset: everything back to "a well-behaved provider", the dialects'
 * settings and templates and the subscribers' settings included (but not
 * the --hook-secret secrets, which are not settings).
 */
static void
faults_reset(void)
{
	atomic_store(&faults.latency_ms, 0);
	atomic_store(&faults.error_rate, 0.0);
	atomic_store(&faults.error_status, DEFAULT_ERROR_STATUS);
	atomic_store(&faults.burst_429, 0);
	atomic_store(&faults.retry_after_s, DEFAULT_RETRY_AFTER_S);
	atomic_store(&faults.hang_rate, 0.0);
	atomic_store(&faults.hang_ms, DEFAULT_HANG_MS);
	atomic_store(&faults.reset_rate, 0.0);
	atomic_store(&faults.malformed_rate, 0.0);
	atomic_store(&faults.lost_reply_rate, 0.0);
	atomic_store(&faults.unauthorized, false);
	atomic_store(&faults.seed, 0);
	atomic_store(&rng_state, 0);
	pthread_mutex_lock(&faults.prefix_lock);
	faults.reject_prefix[0] = '\0';
	atomic_store(&faults.reject_prefix_len, 0);
	pthread_mutex_unlock(&faults.prefix_lock);
	pthread_mutex_lock(&faults.text_lock);
	strcpy(faults.result_status, DEFAULT_RESULT_STATUS);
	atomic_store(&faults.odd_status, false);
	free(faults.reply_body);
	faults.reply_body = NULL;
	faults.reply_body_len = 0;
	atomic_store(&faults.has_reply_body, false);
	pthread_mutex_unlock(&faults.text_lock);
	atomic_store(&faults.receipt_delay_ms, DEFAULT_RECEIPT_DELAY_MS);
	atomic_store(&faults.resend_delay_ms, DEFAULT_RESEND_DELAY_MS);
	atomic_store(&faults.idempotency_window_s, DEFAULT_IDEMPOTENCY_WINDOW_S);
	atomic_store(&faults.send_fallback_codes, 0);
	atomic_store(&faults.nhn_auth_status, MHD_HTTP_OK);
	dialect_set_templates(NULL, false, NULL, 0);
	atomic_store(&faults.hook_reject_bad_signature, false);
	hooks_settings_reset();
}

static void
faults_json(OutBuf *out)
{
	char		buf[1024];
	char		prefix[MAX_PREFIX_BYTES + 1];
	size_t		prefix_len = load_reject_prefix(prefix);

	snprintf(buf, sizeof(buf),
			 "{\"latency_ms\":%" PRId64 ",\"error_rate\":%g,\"error_status\":%" PRId64
			 ",\"burst_429\":%" PRId64 ",\"retry_after_s\":%" PRId64
			 ",\"hang_rate\":%g,\"hang_ms\":%" PRId64 ",\"reset_rate\":%g"
			 ",\"malformed_rate\":%g,\"unauthorized\":%s,\"seed\":%" PRIu64
			 ",\"reject_prefix\":",
			 atomic_load(&faults.latency_ms), atomic_load(&faults.error_rate),
			 atomic_load(&faults.error_status), atomic_load(&faults.burst_429),
			 atomic_load(&faults.retry_after_s), atomic_load(&faults.hang_rate),
			 atomic_load(&faults.hang_ms), atomic_load(&faults.reset_rate),
			 atomic_load(&faults.malformed_rate),
			 atomic_load(&faults.unauthorized) ? "true" : "false",
			 atomic_load(&faults.seed));
	out_str(out, buf);
	out_json_string(out, prefix, prefix_len);
	pthread_mutex_lock(&faults.text_lock);
	OUT_LIT(out, ",\"result_status\":");
	out_json_string(out, faults.result_status, strlen(faults.result_status));
	OUT_LIT(out, ",\"reply_body\":");
	if (faults.reply_body != NULL)
		out_json_string(out, faults.reply_body, faults.reply_body_len);
	else
		OUT_LIT(out, "null");
	pthread_mutex_unlock(&faults.text_lock);
	snprintf(buf, sizeof(buf),
			 ",\"lost_reply_rate\":%g,\"receipt_delay_ms\":%" PRId64
			 ",\"resend_delay_ms\":%" PRId64 ",\"idempotency_window_s\":%" PRId64
			 ",\"nhn_auth_status\":%" PRId64 ",\"send_fallback_codes\":%" PRId64
			 ",\"templates\":",
			 atomic_load(&faults.lost_reply_rate),
			 atomic_load(&faults.receipt_delay_ms),
			 atomic_load(&faults.resend_delay_ms),
			 atomic_load(&faults.idempotency_window_s),
			 atomic_load(&faults.nhn_auth_status),
			 atomic_load(&faults.send_fallback_codes));
	out_str(out, buf);
	dialect_templates_json(out);
	OUT_LIT(out, ",\"hook_reject_bad_signature\":");
	if (atomic_load(&faults.hook_reject_bad_signature))
		OUT_LIT(out, "true");
	else
		OUT_LIT(out, "false");
	hook_settings_json(out);
	OUT_LIT(out, "}");
}

/*
 * stats_reset: zero the counters.  in_flight is a gauge, not a counter, so it
 * stays; max_in_flight restarts from it.
 */
static void
stats_reset(void)
{
	atomic_store(&stats.requests, 0);
	atomic_store(&stats.messages_received, 0);
	atomic_store(&stats.delivered, 0);
	atomic_store(&stats.duplicates, 0);
	atomic_store(&stats.rejected, 0);
	atomic_store(&stats.status_2xx, 0);
	atomic_store(&stats.status_4xx, 0);
	atomic_store(&stats.status_5xx, 0);
	atomic_store(&stats.throttled_429, 0);
	atomic_store(&stats.hangs, 0);
	atomic_store(&stats.resets, 0);
	atomic_store(&stats.malformed, 0);
	atomic_store(&stats.odd_status, 0);
	atomic_store(&stats.custom_replies, 0);
	atomic_store(&stats.missing_idempotency_key, 0);
	atomic_store(&stats.max_in_flight, atomic_load(&stats.in_flight));
	atomic_store(&stats.first_delivery_us, 0);
	atomic_store(&stats.last_delivery_us, 0);
	atomic_store(&stats.lost_replies, 0);
	atomic_store(&stats.nhn_alimtalk_sends, 0);
	atomic_store(&stats.nhn_sms_sends, 0);
	atomic_store(&stats.sens_sms_sends, 0);
	atomic_store(&stats.sens_alimtalk_sends, 0);
	atomic_store(&stats.queries, 0);
	atomic_store(&stats.dialect_accepted, 0);
	atomic_store(&stats.dialect_refused, 0);
	atomic_store(&stats.auth_failures, 0);
	atomic_store(&stats.sens_signature_failures, 0);
	atomic_store(&stats.sens_clock_skew, 0);
	atomic_store(&stats.idempotency_rejected, 0);
	atomic_store(&stats.template_errors, 0);
}

static void
stats_json(OutBuf *out)
{
	char		buf[2048];
	size_t		logged;

	pthread_mutex_lock(&received.lock);
	logged = received.count;
	pthread_mutex_unlock(&received.lock);

	snprintf(buf, sizeof(buf),
			 "{\"requests\":%" PRIu64 ",\"messages_received\":%" PRIu64
			 ",\"delivered\":%" PRIu64 ",\"duplicates\":%" PRIu64
			 ",\"rejected\":%" PRIu64 ",\"status_2xx\":%" PRIu64
			 ",\"status_4xx\":%" PRIu64 ",\"status_5xx\":%" PRIu64
			 ",\"throttled_429\":%" PRIu64 ",\"hangs\":%" PRIu64
			 ",\"resets\":%" PRIu64 ",\"malformed\":%" PRIu64
			 ",\"odd_status\":%" PRIu64 ",\"custom_replies\":%" PRIu64
			 ",\"missing_idempotency_key\":%" PRIu64
			 ",\"received_logged\":%" PRIu64 ",\"received_overflow\":%s"
			 ",\"in_flight\":%" PRId64 ",\"max_in_flight\":%" PRId64
			 ",\"first_delivery_us\":%" PRIu64 ",\"last_delivery_us\":%" PRIu64,
			 atomic_load(&stats.requests), atomic_load(&stats.messages_received),
			 atomic_load(&stats.delivered), atomic_load(&stats.duplicates),
			 atomic_load(&stats.rejected), atomic_load(&stats.status_2xx),
			 atomic_load(&stats.status_4xx), atomic_load(&stats.status_5xx),
			 atomic_load(&stats.throttled_429), atomic_load(&stats.hangs),
			 atomic_load(&stats.resets), atomic_load(&stats.malformed),
			 atomic_load(&stats.odd_status), atomic_load(&stats.custom_replies),
			 atomic_load(&stats.missing_idempotency_key),
			 (uint64_t) logged, atomic_load(&received.overflow) ? "true" : "false",
			 atomic_load(&stats.in_flight), atomic_load(&stats.max_in_flight),
			 atomic_load(&stats.first_delivery_us), atomic_load(&stats.last_delivery_us));
	out_str(out, buf);
	snprintf(buf, sizeof(buf),
			 ",\"lost_replies\":%" PRIu64 ",\"nhn_alimtalk_sends\":%" PRIu64
			 ",\"nhn_sms_sends\":%" PRIu64 ",\"sens_sms_sends\":%" PRIu64
			 ",\"sens_alimtalk_sends\":%" PRIu64 ",\"queries\":%" PRIu64
			 ",\"dialect_accepted\":%" PRIu64 ",\"dialect_refused\":%" PRIu64
			 ",\"auth_failures\":%" PRIu64 ",\"sens_signature_failures\":%" PRIu64
			 ",\"sens_clock_skew\":%" PRIu64 ",\"idempotency_rejected\":%" PRIu64
			 ",\"template_errors\":%" PRIu64,
			 atomic_load(&stats.lost_replies), atomic_load(&stats.nhn_alimtalk_sends),
			 atomic_load(&stats.nhn_sms_sends), atomic_load(&stats.sens_sms_sends),
			 atomic_load(&stats.sens_alimtalk_sends), atomic_load(&stats.queries),
			 atomic_load(&stats.dialect_accepted), atomic_load(&stats.dialect_refused),
			 atomic_load(&stats.auth_failures), atomic_load(&stats.sens_signature_failures),
			 atomic_load(&stats.sens_clock_skew), atomic_load(&stats.idempotency_rejected),
			 atomic_load(&stats.template_errors));
	out_str(out, buf);
	dialect_stats_json(out);
	OUT_LIT(out, "}");
}

static int
compare_delivered(const void *a, const void *b)
{
	uint64_t	x = ((const DeliveredItem *) a)->seq;
	uint64_t	y = ((const DeliveredItem *) b)->seq;

	return x < y ? -1 : x > y;
}

/*
 * delivered_json: every delivered id, in delivery order.  Keys are copied
 * out under each shard's lock, because /_reset may free them right after.
 * Meant for small tests; it is O(ids) in time and memory.
 */
static void
delivered_json(OutBuf *out)
{
	OutBuf		keys;
	DeliveredItem *items = NULL;
	size_t		n = 0;
	size_t		cap = 0;
	size_t		i;
	int			s;

	out_init(&keys, 4096);
	for (s = 0; s < IDSET_SHARDS; s++)
	{
		IdShard    *shard = &idset[s];

		pthread_mutex_lock(&shard->lock);
		for (i = 0; i <= shard->mask; i++)
		{
			IdRecord   *rec = shard->slots[i].rec;

			if (rec == NULL)
				continue;
			if (n == cap)
			{
				cap = cap ? cap * 2 : 1024;
				items = xrealloc(items, cap * sizeof(DeliveredItem));
			}
			items[n].seq = rec->seq;
			items[n].offset = keys.len;
			items[n].len = rec->len;
			out_bytes(&keys, rec->key, rec->len);
			n++;
		}
		pthread_mutex_unlock(&shard->lock);
	}
	if (n > 1)
		qsort(items, n, sizeof(DeliveredItem), compare_delivered);

	OUT_LIT(out, "[");
	for (i = 0; i < n; i++)
	{
		if (i > 0)
			OUT_LIT(out, ",");
		out_json_string(out, keys.data + items[i].offset, items[i].len);
	}
	OUT_LIT(out, "]");
	free(items);
	free(keys.data);
}


/*
 * received_append: log every message of a batch as arrived at us and
 * answered status.  One lock per batch; the arrays double as they fill, up
 * to the bounds, past which messages are dropped and overflow is set.
 */
void
received_append(const Batch *batch, uint64_t us, unsigned int status)
{
	int			i;

	pthread_mutex_lock(&received.lock);
	for (i = 0; i < batch->count; i++)
	{
		const Message *m = &batch->msgs[i];
		ReceivedEntry *e;

		if (received.count >= RECEIVED_MAX_ENTRIES ||
			received.ids_len + m->id_len > RECEIVED_MAX_ID_BYTES)
		{
			atomic_store(&received.overflow, true);
			break;
		}
		if (received.count == received.cap)
		{
			received.cap = received.cap ? received.cap * 2 : 4096;
			received.entries = xrealloc(received.entries,
										received.cap * sizeof(ReceivedEntry));
		}
		if (received.ids_len + m->id_len > received.ids_cap)
		{
			size_t		cap = received.ids_cap ? received.ids_cap : 64 * 1024;

			while (received.ids_len + m->id_len > cap)
				cap *= 2;
			received.ids = xrealloc(received.ids, cap);
			received.ids_cap = cap;
		}
		e = &received.entries[received.count++];
		e->us = us;
		e->offset = received.ids_len;
		e->len = (uint32_t) m->id_len;
		e->status = status;
		memcpy(received.ids + received.ids_len, m->id, m->id_len);
		received.ids_len += m->id_len;
	}
	pthread_mutex_unlock(&received.lock);
}

/* received_clear: forget the log and give its memory back (for /_reset). */
static void
received_clear(void)
{
	pthread_mutex_lock(&received.lock);
	free(received.entries);
	free(received.ids);
	received.entries = NULL;
	received.ids = NULL;
	received.count = received.cap = 0;
	received.ids_len = received.ids_cap = 0;
	atomic_store(&received.overflow, false);
	pthread_mutex_unlock(&received.lock);
}

/*
 * received_json: the log as [{"id":...,"us":...,"status":...}, ...] in the
 * order the messages were logged.  Built under the lock (senders wait for
 * it); meant for reading at the end of a test.
 */
static void
received_json(OutBuf *out)
{
	size_t		i;

	pthread_mutex_lock(&received.lock);
	out_reserve(out, received.count * 64 + 2);
	OUT_LIT(out, "[");
	for (i = 0; i < received.count; i++)
	{
		const ReceivedEntry *e = &received.entries[i];

		if (i > 0)
			OUT_LIT(out, ",");
		OUT_LIT(out, "{\"id\":");
		out_json_string(out, received.ids + e->offset, e->len);
		OUT_LIT(out, ",\"us\":");
		out_u64(out, e->us);
		OUT_LIT(out, ",\"status\":");
		out_u64(out, e->status);
		OUT_LIT(out, "}");
	}
	OUT_LIT(out, "]");
	pthread_mutex_unlock(&received.lock);
}

/*
 * trace_fields_take: the members req's /_traces entry ends with (the ids a
 * well-formed body carried), taken over from fields.  Called by the
 * endpoints that parse a body, before the request is logged.
 */
void
trace_fields_take(Request *req, OutBuf *fields)
{
	free(req->trace_fields);
	req->trace_fields = fields->data;
	req->trace_fields_len = fields->len;
	fields->data = NULL;
}

/*
 * traces_append: log a decided request for /_traces: its number (1, 2, ...
 * since the start or the last /_reset, in the order logged), its kind,
 * path (without the query), the traceparent header as it came (the first
 * one, cut at TRACEPARENT_MAX_BYTES; null when absent), the status it is
 * answered (0 for a hang or a reset) and the members its endpoint added
 * (trace_fields_take).  The entry is rendered outside the lock.
 */
static void
traces_append(Request *req, struct MHD_Connection *conn)
{
	static const char *const kinds[] = {"send", "dialect", "hook"};
	const char *tp = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
												 "traceparent");
	const char *query = strchr(req->raw_uri, '?');
	OutBuf		entry;

	out_init(&entry, 256 + req->trace_fields_len);
	OUT_LIT(&entry, ",\"kind\":\"");
	out_str(&entry, kinds[req->kind == REQ_SEND ? 0 : req->kind == REQ_DIALECT ? 1 : 2]);
	OUT_LIT(&entry, "\",\"path\":");
	out_json_string(&entry, req->raw_uri,
					query != NULL ? (size_t) (query - req->raw_uri) : strlen(req->raw_uri));
	OUT_LIT(&entry, ",\"traceparent\":");
	if (tp == NULL)
		OUT_LIT(&entry, "null");
	else
		out_json_string(&entry, tp, strnlen(tp, TRACEPARENT_MAX_BYTES));
	OUT_LIT(&entry, ",\"status\":");
	out_u64(&entry, req->phase == PHASE_CLOSE ? 0 : req->status);
	if (req->trace_fields != NULL)
		out_bytes(&entry, req->trace_fields, req->trace_fields_len);
	OUT_LIT(&entry, "}");

	pthread_mutex_lock(&traces.lock);
	if (traces.len + entry.len + 32 > TRACES_MAX_BYTES)
		atomic_store(&traces.overflow, true);
	else
	{
		char		number[40];
		int			n = snprintf(number, sizeof(number), "%s{\"request\":%" PRIu64,
								 traces.count > 0 ? "," : "", traces.count + 1);

		if (traces.len + (size_t) n + entry.len > traces.cap)
		{
			size_t		cap = traces.cap ? traces.cap : 64 * 1024;

			while (traces.len + (size_t) n + entry.len > cap)
				cap *= 2;
			traces.text = xrealloc(traces.text, cap);
			traces.cap = cap;
		}
		memcpy(traces.text + traces.len, number, (size_t) n);
		traces.len += (size_t) n;
		memcpy(traces.text + traces.len, entry.data, entry.len);
		traces.len += entry.len;
		traces.count++;
	}
	pthread_mutex_unlock(&traces.lock);
	free(entry.data);
}

/* traces_clear: forget the trace log (for /_reset and at exit). */
static void
traces_clear(void)
{
	pthread_mutex_lock(&traces.lock);
	free(traces.text);
	traces.text = NULL;
	traces.len = traces.cap = 0;
	traces.count = 0;
	atomic_store(&traces.overflow, false);
	pthread_mutex_unlock(&traces.lock);
}

/*
 * traces_json: the trace log as [{"request":1,"kind":...}, ...] in the
 * order logged.  Built under the lock; meant for reading at the end of a
 * test.
 */
static void
traces_json(OutBuf *out)
{
	pthread_mutex_lock(&traces.lock);
	out_reserve(out, traces.len + 2);
	OUT_LIT(out, "[");
	out_bytes(out, traces.text != NULL ? traces.text : "", traces.len);
	OUT_LIT(out, "]");
	pthread_mutex_unlock(&traces.lock);
}


void
json_ws(JsonCursor *c)
{
	while (c->p < c->end &&
		   (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

/* json_accept: skip whitespace and consume ch if it is next. */
bool
json_accept(JsonCursor *c, char ch)
{
	json_ws(c);
	if (c->p < c->end && *c->p == ch)
	{
		c->p++;
		return true;
	}
	return false;
}

static int
hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* hex4: the code unit of the four hex digits at p, or -1. */
static long
hex4(const char *p, const char *end)
{
	long		v = 0;
	int			i;

	if (end - p < 4)
		return -1;
	for (i = 0; i < 4; i++)
	{
		int			h = hex_value(p[i]);

		if (h < 0)
			return -1;
		v = (v << 4) | h;
	}
	return v;
}

/*
 * json_string: decode a JSON string in place and NUL-terminate it.  Decoding
 * never lengthens the text (the shortest escape, two bytes, yields one; six
 * bytes of \uXXXX yield at most three; a twelve-byte surrogate pair yields
 * four), so the writer always trails the reader and the NUL lands at or
 * before the closing quote, which is already consumed.  Lone surrogates
 * become U+FFFD; raw control characters are an error, as JSON says.
 */
bool
json_string(JsonCursor *c, char **out, size_t *out_len)
{
	char	   *r;
	char	   *w;

	json_ws(c);
	if (c->p >= c->end || *c->p != '"')
		return false;
	r = w = ++c->p;
	*out = w;
	while (r < c->end)
	{
		unsigned char ch = (unsigned char) *r;
		long		cp;

		if (ch == '"')
		{
			*out_len = (size_t) (w - *out);
			*w = '\0';
			c->p = r + 1;
			return true;
		}
		if (ch < 0x20)
			return false;
		if (ch != '\\')
		{
			*w++ = *r++;
			continue;
		}
		if (++r >= c->end)
			return false;
		switch (*r++)
		{
			case '"':
				*w++ = '"';
				break;
			case '\\':
				*w++ = '\\';
				break;
			case '/':
				*w++ = '/';
				break;
			case 'b':
				*w++ = '\b';
				break;
			case 'f':
				*w++ = '\f';
				break;
			case 'n':
				*w++ = '\n';
				break;
			case 'r':
				*w++ = '\r';
				break;
			case 't':
				*w++ = '\t';
				break;
			case 'u':
				if ((cp = hex4(r, c->end)) < 0)
					return false;
				r += 4;
				if (cp >= 0xD800 && cp <= 0xDBFF)
				{
					long		lo = -1;

					if (c->end - r >= 6 && r[0] == '\\' && r[1] == 'u')
						lo = hex4(r + 2, c->end);
					if (lo >= 0xDC00 && lo <= 0xDFFF)
					{
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
						r += 6;
					}
					else
						cp = 0xFFFD;
				}
				else if (cp >= 0xDC00 && cp <= 0xDFFF)
					cp = 0xFFFD;

				if (cp < 0x80)
					*w++ = (char) cp;
				else if (cp < 0x800)
				{
					*w++ = (char) (0xC0 | (cp >> 6));
					*w++ = (char) (0x80 | (cp & 0x3F));
				}
				else if (cp < 0x10000)
				{
					*w++ = (char) (0xE0 | (cp >> 12));
					*w++ = (char) (0x80 | ((cp >> 6) & 0x3F));
					*w++ = (char) (0x80 | (cp & 0x3F));
				}
				else
				{
					*w++ = (char) (0xF0 | (cp >> 18));
					*w++ = (char) (0x80 | ((cp >> 12) & 0x3F));
					*w++ = (char) (0x80 | ((cp >> 6) & 0x3F));
					*w++ = (char) (0x80 | (cp & 0x3F));
				}
				break;
			default:
				return false;
		}
	}
	return false;
}

/* json_number: consume a number per the JSON grammar; out points at its text. */
bool
json_number(JsonCursor *c, char **out, size_t *out_len)
{
	char	   *p;
	char	   *digits;

	json_ws(c);
	p = c->p;
	if (p < c->end && *p == '-')
		p++;
	digits = p;
	while (p < c->end && *p >= '0' && *p <= '9')
		p++;
	if (p == digits || (*digits == '0' && p - digits > 1))
		return false;
	if (p < c->end && *p == '.')
	{
		digits = ++p;
		while (p < c->end && *p >= '0' && *p <= '9')
			p++;
		if (p == digits)
			return false;
	}
	if (p < c->end && (*p == 'e' || *p == 'E'))
	{
		p++;
		if (p < c->end && (*p == '+' || *p == '-'))
			p++;
		digits = p;
		while (p < c->end && *p >= '0' && *p <= '9')
			p++;
		if (p == digits)
			return false;
	}
	*out = c->p;
	*out_len = (size_t) (p - c->p);
	c->p = p;
	return true;
}

/* json_skip_value: consume any JSON value, nesting at most MAX_JSON_DEPTH. */
bool
json_skip_value(JsonCursor *c, int depth)
{
	char	   *s;
	size_t		len;

	if (depth > MAX_JSON_DEPTH)
		return false;
	json_ws(c);
	if (c->p >= c->end)
		return false;
	switch (*c->p)
	{
		case '"':
			return json_string(c, &s, &len);
		case '{':
			c->p++;
			if (json_accept(c, '}'))
				return true;
			for (;;)
			{
				if (!json_string(c, &s, &len) || !json_accept(c, ':') ||
					!json_skip_value(c, depth + 1))
					return false;
				if (json_accept(c, ','))
					continue;
				return json_accept(c, '}');
			}
		case '[':
			c->p++;
			if (json_accept(c, ']'))
				return true;
			for (;;)
			{
				if (!json_skip_value(c, depth + 1))
					return false;
				if (json_accept(c, ','))
					continue;
				return json_accept(c, ']');
			}
		case 't':
			if (c->end - c->p < 4 || memcmp(c->p, "true", 4) != 0)
				return false;
			c->p += 4;
			return true;
		case 'f':
			if (c->end - c->p < 5 || memcmp(c->p, "false", 5) != 0)
				return false;
			c->p += 5;
			return true;
		case 'n':
			if (c->end - c->p < 4 || memcmp(c->p, "null", 4) != 0)
				return false;
			c->p += 4;
			return true;
		default:
			return json_number(c, &s, &len);
	}
}

/*
 * json_copy_value: consume any JSON value, like json_skip_value, and append
 * it to out re-encoded: strings decoded and escaped again by
 * out_json_string, numbers and literals as they were, no whitespace.  The
 * scanner decodes strings in place, so the raw text of a nested value
 * cannot be kept as it was; this gives an equivalent text instead.
 */
static bool
json_copy_value(JsonCursor *c, OutBuf *out, int depth)
{
	char	   *s;
	size_t		len;

	if (depth > MAX_JSON_DEPTH)
		return false;
	json_ws(c);
	if (c->p >= c->end)
		return false;
	switch (*c->p)
	{
		case '"':
			if (!json_string(c, &s, &len))
				return false;
			out_json_string(out, s, len);
			return true;
		case '{':
			c->p++;
			OUT_LIT(out, "{");
			if (!json_accept(c, '}'))
			{
				for (;;)
				{
					if (!json_string(c, &s, &len) || !json_accept(c, ':'))
						return false;
					out_json_string(out, s, len);
					OUT_LIT(out, ":");
					if (!json_copy_value(c, out, depth + 1))
						return false;
					if (json_accept(c, ','))
					{
						OUT_LIT(out, ",");
						continue;
					}
					if (!json_accept(c, '}'))
						return false;
					break;
				}
			}
			OUT_LIT(out, "}");
			return true;
		case '[':
			c->p++;
			OUT_LIT(out, "[");
			if (!json_accept(c, ']'))
			{
				for (;;)
				{
					if (!json_copy_value(c, out, depth + 1))
						return false;
					if (json_accept(c, ','))
					{
						OUT_LIT(out, ",");
						continue;
					}
					if (!json_accept(c, ']'))
						return false;
					break;
				}
			}
			OUT_LIT(out, "]");
			return true;
		default:
			{
				char	   *start = c->p;

				if (!json_skip_value(c, depth))
					return false;
				out_bytes(out, start, (size_t) (c->p - start));
				return true;
			}
	}
}

bool
json_key_is(const char *key, size_t key_len, const char *name)
{
	size_t		n = strlen(name);

	return key_len == n && memcmp(key, name, n) == 0;
}

/*
 * json_parse_wrapped: a body {"<key>": [ ... ]}: other top-level keys are
 * skipped, a second <key> or trailing garbage is an error; parse_array
 * reads the array (arg is its own).  The message batch's shape and the
 * subscriber endpoint's (hooks.c).
 */
bool
json_parse_wrapped(char *body, size_t len, const char *wanted,
				   bool (*parse_array) (JsonCursor *c, void *arg), void *arg)
{
	JsonCursor	c = {body, body + len};
	bool		seen = false;
	char	   *key;
	size_t		key_len;

	if (!json_accept(&c, '{'))
		return false;
	if (!json_accept(&c, '}'))
	{
		for (;;)
		{
			if (!json_string(&c, &key, &key_len) || !json_accept(&c, ':'))
				return false;
			if (json_key_is(key, key_len, wanted))
			{
				if (seen || !parse_array(&c, arg))
					return false;
				seen = true;
			}
			else if (!json_skip_value(&c, 1))
				return false;
			if (json_accept(&c, ','))
				continue;
			if (json_accept(&c, '}'))
				break;
			return false;
		}
	}
	json_ws(&c);
	return c.p == c.end && seen;
}

static bool
parse_messages_of(JsonCursor *c, void *batch)
{
	return parse_messages(c, (Batch *) batch);
}

/*
 * parse_batch: {"messages": [ {...}, ... ]} with 1 to MAX_MESSAGES entries.
 */
static bool
parse_batch(char *body, size_t len, Batch *batch)
{
	return json_parse_wrapped(body, len, "messages", parse_messages_of, batch) &&
		batch->count >= 1;
}

static bool
parse_messages(JsonCursor *c, Batch *batch)
{
	if (!json_accept(c, '['))
		return false;
	if (json_accept(c, ']'))
		return true;
	for (;;)
	{
		if (batch->count >= MAX_MESSAGES)
			return false;
		if (batch->count == batch->cap)
		{
			int			cap = batch->cap * 4;

			if (batch->msgs == batch->inline_msgs)
			{
				batch->msgs = xmalloc((size_t) cap * sizeof(Message));
				memcpy(batch->msgs, batch->inline_msgs,
					   (size_t) batch->count * sizeof(Message));
			}
			else
				batch->msgs = xrealloc(batch->msgs, (size_t) cap * sizeof(Message));
			batch->cap = cap;
		}
		if (!parse_message(c, &batch->msgs[batch->count]))
			return false;
		batch->count++;
		if (json_accept(c, ','))
			continue;
		return json_accept(c, ']');
	}
}

/*
 * parse_message: one message object.  id and to are required strings;
 * channel, subject and text may be strings or null; anything else is
 * skipped.  An id must be 1 to MAX_ID_BYTES bytes.
 */
static bool
parse_message(JsonCursor *c, Message *m)
{
	char	   *key;
	size_t		key_len;
	char	   *val;
	size_t		val_len;

	memset(m, 0, sizeof(Message));
	if (!json_accept(c, '{'))
		return false;
	if (!json_accept(c, '}'))
	{
		for (;;)
		{
			bool		is_id,
						is_to,
						is_channel;

			if (!json_string(c, &key, &key_len) || !json_accept(c, ':'))
				return false;
			is_id = json_key_is(key, key_len, "id");
			is_to = json_key_is(key, key_len, "to");
			is_channel = json_key_is(key, key_len, "channel");
			json_ws(c);
			if ((is_id || is_to || is_channel) && c->p < c->end && *c->p == '"')
			{
				if (!json_string(c, &val, &val_len))
					return false;
				if (is_id)
				{
					m->id = val;
					m->id_len = val_len;
				}
				else if (is_to)
				{
					m->to = val;
					m->to_len = val_len;
				}
				else
				{
					m->channel = val;
					m->channel_len = val_len;
				}
			}
			else if (is_id || is_to)
				return false;
			else
			{
				if (is_channel)
					m->channel = NULL;
				if (!json_skip_value(c, 2))
					return false;
			}
			if (json_accept(c, ','))
				continue;
			if (json_accept(c, '}'))
				break;
			return false;
		}
	}
	return m->id != NULL && m->to != NULL &&
		m->id_len >= 1 && m->id_len <= MAX_ID_BYTES;
}


static void
idset_init(void)
{
	int			s;

	for (s = 0; s < IDSET_SHARDS; s++)
	{
		pthread_mutex_init(&idset[s].lock, NULL);
		idset[s].slots = xmalloc(IDSET_INITIAL_SLOTS * sizeof(IdSlot));
		memset(idset[s].slots, 0, IDSET_INITIAL_SLOTS * sizeof(IdSlot));
		idset[s].mask = IDSET_INITIAL_SLOTS - 1;
		idset[s].count = 0;
		idset[s].chunks = NULL;
	}
}

/* idset_clear: forget every id and give the memory back (for /_reset). */
static void
idset_clear(void)
{
	int			s;

	for (s = 0; s < IDSET_SHARDS; s++)
	{
		IdShard    *shard = &idset[s];
		ArenaChunk *chunk;

		pthread_mutex_lock(&shard->lock);
		while ((chunk = shard->chunks) != NULL)
		{
			shard->chunks = chunk->next;
			free(chunk);
		}
		if (shard->mask != IDSET_INITIAL_SLOTS - 1)
		{
			free(shard->slots);
			shard->slots = xmalloc(IDSET_INITIAL_SLOTS * sizeof(IdSlot));
			shard->mask = IDSET_INITIAL_SLOTS - 1;
		}
		memset(shard->slots, 0, IDSET_INITIAL_SLOTS * sizeof(IdSlot));
		shard->count = 0;
		pthread_mutex_unlock(&shard->lock);
	}
	/* a run of millions of ids leaves a lot for glibc to hand back */
	malloc_trim(0);
}

/*
 * idset_insert: the de-duplication point.  Returns true if key is new (it is
 * stored and gets the next provider sequence number), false if it was there
 * already; either way *seq is the key's provider number.  Each of the
 * IDSET_SHARDS shards is an open-addressing table with linear probing,
 * doubled at 3/4 load, whose records live in an append-only arena, so a
 * shard costs about 40 bytes plus the key per id and a lookup touches one
 * lock that is rarely contended.
 */
static bool
idset_insert(const char *key, size_t len, uint64_t *seq)
{
	uint64_t	h = hash_bytes(key, len);
	IdShard    *shard = &idset[h >> 56];
	size_t		i;
	IdRecord   *rec;
	size_t		need;

	pthread_mutex_lock(&shard->lock);
	for (i = h & shard->mask;; i = (i + 1) & shard->mask)
	{
		IdSlot	   *slot = &shard->slots[i];

		if (slot->rec == NULL)
			break;
		if (slot->hash == h && slot->rec->len == len &&
			memcmp(slot->rec->key, key, len) == 0)
		{
			*seq = slot->rec->seq;
			pthread_mutex_unlock(&shard->lock);
			return false;
		}
	}

	need = (sizeof(IdRecord) + len + 7) & ~(size_t) 7;
	if (shard->chunks == NULL || shard->chunks->size - shard->chunks->used < need)
	{
		size_t		size = need > ARENA_CHUNK_BYTES ? need : ARENA_CHUNK_BYTES;
		ArenaChunk *chunk = xmalloc(sizeof(ArenaChunk) + size);

		chunk->next = shard->chunks;
		chunk->used = 0;
		chunk->size = size;
		shard->chunks = chunk;
	}
	rec = (IdRecord *) (shard->chunks->data + shard->chunks->used);
	shard->chunks->used += need;
	rec->seq = atomic_fetch_add_explicit(&next_provider_seq, 1,
										 memory_order_relaxed) + 1;
	rec->len = (uint32_t) len;
	memcpy(rec->key, key, len);
	shard->slots[i].hash = h;
	shard->slots[i].rec = rec;
	shard->count++;
	*seq = rec->seq;

	if (shard->count * 4 >= (shard->mask + 1) * 3)
	{
		size_t		new_mask = shard->mask * 2 + 1;
		IdSlot	   *slots = xmalloc((new_mask + 1) * sizeof(IdSlot));
		size_t		j;

		memset(slots, 0, (new_mask + 1) * sizeof(IdSlot));
		for (j = 0; j <= shard->mask; j++)
		{
			IdSlot	   *old = &shard->slots[j];
			size_t		k;

			if (old->rec == NULL)
				continue;
			for (k = old->hash & new_mask; slots[k].rec != NULL; k = (k + 1) & new_mask)
				;
			slots[k] = *old;
		}
		free(shard->slots);
		shard->slots = slots;
		shard->mask = new_mask;
	}
	pthread_mutex_unlock(&shard->lock);
	return true;
}

/* hash_bytes: FNV-1a, finished with murmur3's fmix64 so high bits mix too. */
uint64_t
hash_bytes(const char *key, size_t len)
{
	uint64_t	h = UINT64_C(0xcbf29ce484222325);
	size_t		i;

	for (i = 0; i < len; i++)
	{
		h ^= (unsigned char) key[i];
		h *= UINT64_C(0x100000001b3);
	}
	h ^= h >> 33;
	h *= UINT64_C(0xff51afd7ed558ccd);
	h ^= h >> 33;
	h *= UINT64_C(0xc4ceb9fe1a85ec53);
	h ^= h >> 33;
	return h;
}


static void
timer_start(void)
{
	pthread_condattr_t attr;

	pthread_mutex_init(&timer.lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&timer.cond, &attr);
	pthread_condattr_destroy(&attr);
	if (pthread_create(&timer.thread, NULL, timer_main, NULL) != 0)
	{
		fprintf(stderr, "mock_tms: could not start the timer thread\n");
		exit(1);
	}
}

/* timer_stop: resume everything still waiting, then end the thread. */
static void
timer_stop(void)
{
	pthread_mutex_lock(&timer.lock);
	timer.stop = true;
	pthread_cond_signal(&timer.cond);
	pthread_mutex_unlock(&timer.lock);
	pthread_join(timer.thread, NULL);
}

/*
 * timer_add: have conn resumed delay_ms from now.  The caller has already
 * suspended it.  A binary min-heap on the due time.
 */
static void
timer_add(struct MHD_Connection *conn, int64_t delay_ms)
{
	uint64_t	due = monotonic_us() + (uint64_t) delay_ms * 1000;
	size_t		i;

	pthread_mutex_lock(&timer.lock);
	if (timer.stop)
	{
		pthread_mutex_unlock(&timer.lock);
		MHD_resume_connection(conn);
		return;
	}
	if (timer.count == timer.cap)
	{
		timer.cap = timer.cap ? timer.cap * 2 : 256;
		timer.heap = xrealloc(timer.heap, timer.cap * sizeof(TimerEntry));
	}
	i = timer.count++;
	while (i > 0 && timer.heap[(i - 1) / 2].due_us > due)
	{
		timer.heap[i] = timer.heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	timer.heap[i].due_us = due;
	timer.heap[i].conn = conn;
	if (i == 0)
		pthread_cond_signal(&timer.cond);
	pthread_mutex_unlock(&timer.lock);
}

/* timer_pop: remove the earliest entry; timer.lock held, heap not empty. */
static struct MHD_Connection *
timer_pop(void)
{
	struct MHD_Connection *conn = timer.heap[0].conn;
	TimerEntry	last = timer.heap[--timer.count];
	size_t		i = 0;

	for (;;)
	{
		size_t		child = 2 * i + 1;

		if (child >= timer.count)
			break;
		if (child + 1 < timer.count &&
			timer.heap[child + 1].due_us < timer.heap[child].due_us)
			child++;
		if (timer.heap[child].due_us >= last.due_us)
			break;
		timer.heap[i] = timer.heap[child];
		i = child;
	}
	if (timer.count > 0)
		timer.heap[i] = last;
	return conn;
}

/*
 * timer_main: resume connections when they fall due, in batches, calling
 * MHD_resume_connection outside the lock (it wakes the owning MHD thread).
 * On stop, every remaining connection is resumed at once.
 */
static void *
timer_main(void *arg)
{
	struct MHD_Connection *due[256];

	(void) arg;
	/* The default 50us timer slack shows up in every injected delay. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
	pthread_mutex_lock(&timer.lock);
	for (;;)
	{
		uint64_t	now = monotonic_us();
		int			n = 0;
		int			i;

		while (timer.count > 0 && n < 256 &&
			   (timer.stop || timer.heap[0].due_us <= now))
			due[n++] = timer_pop();
		if (n > 0)
		{
			pthread_mutex_unlock(&timer.lock);
			for (i = 0; i < n; i++)
				MHD_resume_connection(due[i]);
			pthread_mutex_lock(&timer.lock);
			continue;
		}
		if (timer.stop)
			break;
		if (timer.count == 0)
			pthread_cond_wait(&timer.cond, &timer.lock);
		else
		{
			uint64_t	wake = timer.heap[0].due_us;
			struct timespec ts;

			ts.tv_sec = (time_t) (wake / 1000000);
			ts.tv_nsec = (long) (wake % 1000000) * 1000;
			pthread_cond_timedwait(&timer.cond, &timer.lock, &ts);
		}
	}
	pthread_mutex_unlock(&timer.lock);
	return NULL;
}


void *
xmalloc(size_t size)
{
	void	   *p = malloc(size);

	if (p == NULL)
	{
		fprintf(stderr, "mock_tms: out of memory allocating %zu bytes\n", size);
		abort();
	}
	return p;
}

void *
xrealloc(void *ptr, size_t size)
{
	void	   *p = realloc(ptr, size);

	if (p == NULL)
	{
		fprintf(stderr, "mock_tms: out of memory allocating %zu bytes\n", size);
		abort();
	}
	return p;
}

void
out_init(OutBuf *b, size_t cap)
{
	b->cap = cap > 16 ? cap : 16;
	b->data = xmalloc(b->cap);
	b->len = 0;
}

void
out_reserve(OutBuf *b, size_t extra)
{
	if (b->len + extra > b->cap)
	{
		while (b->len + extra > b->cap)
			b->cap *= 2;
		b->data = xrealloc(b->data, b->cap);
	}
}

void
out_bytes(OutBuf *b, const char *s, size_t n)
{
	out_reserve(b, n);
	memcpy(b->data + b->len, s, n);
	b->len += n;
}

void
out_str(OutBuf *b, const char *s)
{
	out_bytes(b, s, strlen(s));
}

void
out_u64(OutBuf *b, uint64_t v)
{
	char		tmp[24];
	int			n = 0;

	do
	{
		tmp[sizeof(tmp) - 1 - n++] = (char) ('0' + v % 10);
		v /= 10;
	} while (v > 0);
	out_bytes(b, tmp + sizeof(tmp) - n, (size_t) n);
}

/* out_i64: a signed decimal, INT64_MIN included. */
void
out_i64(OutBuf *b, int64_t v)
{
	if (v < 0)
	{
		OUT_LIT(b, "-");
		out_u64(b, (uint64_t) 0 - (uint64_t) v);
	}
	else
		out_u64(b, (uint64_t) v);
}

/* out_json_string: s as a quoted JSON string; bytes >= 0x80 pass through. */
void
out_json_string(OutBuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t		i;

	out_reserve(b, n * 6 + 2);
	b->data[b->len++] = '"';
	for (i = 0; i < n; i++)
	{
		unsigned char ch = (unsigned char) s[i];

		if (ch == '"' || ch == '\\')
		{
			b->data[b->len++] = '\\';
			b->data[b->len++] = (char) ch;
		}
		else if (ch < 0x20)
		{
			b->data[b->len++] = '\\';
			b->data[b->len++] = 'u';
			b->data[b->len++] = '0';
			b->data[b->len++] = '0';
			b->data[b->len++] = hex[ch >> 4];
			b->data[b->len++] = hex[ch & 15];
		}
		else
			b->data[b->len++] = (char) ch;
	}
	b->data[b->len++] = '"';
}

uint64_t
monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

uint64_t
wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

/*
 * roll: true with probability *rate.  One shared splitmix64 stream, so a
 * given seed gives the same sequence of choices when requests arrive one at
 * a time (tests); under concurrency only the proportions are reproducible.
 * Draws nothing when the rate is 0 or 1, so unused faults do not shift the
 * stream.
 */
bool
roll(_Atomic double *rate)
{
	double		r = atomic_load_explicit(rate, memory_order_relaxed);
	uint64_t	z;

	if (r <= 0.0)
		return false;
	if (r >= 1.0)
		return true;
	z = atomic_fetch_add_explicit(&rng_state, UINT64_C(0x9e3779b97f4a7c15),
								  memory_order_relaxed) + UINT64_C(0x9e3779b97f4a7c15);
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	z ^= z >> 31;
	return (double) (z >> 11) * (1.0 / 9007199254740992.0) < r;
}

static void
atomic_max_i64(_Atomic int64_t *target, int64_t value)
{
	int64_t		cur = atomic_load_explicit(target, memory_order_relaxed);

	while (cur < value &&
		   !atomic_compare_exchange_weak_explicit(target, &cur, value,
												  memory_order_relaxed,
												  memory_order_relaxed))
		;
}

static void
atomic_max_u64(_Atomic uint64_t *target, uint64_t value)
{
	uint64_t	cur = atomic_load_explicit(target, memory_order_relaxed);

	while (cur < value &&
		   !atomic_compare_exchange_weak_explicit(target, &cur, value,
												  memory_order_relaxed,
												  memory_order_relaxed))
		;
}
