/*-------------------------------------------------------------------------
 *
 * limits.c
 *		Limits every TMS sender shares through shared memory: the send rate
 *		(courier.tms_rate_limit, a token bucket, lowered while the provider
 *		answers 429/503), the provider's Retry-After, and the circuit
 *		breaker that stops sending when the provider keeps failing, lets one
 *		probe request through after courier.tms_breaker_cooldown, and
 *		closes when the probe succeeds.
 *
 * The dispatcher asks before each request (courier_limits_acquire) and
 * reports after it (courier_limits_report); a sender asks before leasing
 * a batch (courier_limits_send_wait_ms).  All state is under one spinlock,
 * held for a few instructions; logging happens after releasing it.
 *
 * IDENTIFICATION
 *		src/limits.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "courier.h"
#include "dispatch.h"

#define MIN_RATE_FACTOR		0.05
#define PROBE_WAIT_MS		100

const double courier_latency_bounds[COURIER_LATENCY_BOUNDS] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};

/*
 * The limits live in a shared-memory segment of their own ("courier
 * limits"), created by the hooks courier_limits_install_hooks chains, and
 * found in every process through shared_limits.  Without preloading (no
 * shared memory, no worker: run_once in a backend) a process has its own.
 */
static CourierTmsLimits *shared_limits = NULL;
static CourierTmsLimits local_limits;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void limits_shmem_request(void);
static void limits_shmem_startup(void);
static CourierTmsLimits *limits(void);
static const CourierLimitsConfig *tms_config(void);
static long ms_until(TimestampTz t, TimestampTz now);
static long cooldown_left_ms(CourierTmsLimits *lim,
							 const CourierLimitsConfig *cfg, TimestampTz now);
static long pause_ms(CourierTmsLimits *lim, const CourierLimitsConfig *cfg,
					 TimestampTz now, bool take_probe, const char **why);
static void observe_latency(CourierTmsLimits *lim, double latency_ms);

/*
 * courier_limits_install_hooks
 *		Chain the shared-memory hooks of the limits; called from _PG_init
 *		while preloading.
 */
void
courier_limits_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = limits_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = limits_shmem_startup;
}

static void
limits_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CourierTmsLimits)));
}

/* Create or attach, under AddinShmemInitLock (in the postmaster). */
static void
limits_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared_limits = ShmemInitStruct("courier limits", sizeof(CourierTmsLimits),
									&found);
	if (!found)
		courier_limits_init(shared_limits);
	LWLockRelease(AddinShmemInitLock);
}

/*
 * courier_limits_init
 *		Closed breaker, full rate, zero counters: the TMS's limits at start,
 *		and a subscriber's when its worker takes its slot (shmem.c).
 */
void
courier_limits_init(CourierTmsLimits *lim)
{
	memset(lim, 0, sizeof(CourierTmsLimits));
	SpinLockInit(&lim->mutex);
	lim->rate_factor = 1.0;
	lim->breaker = COURIER_BREAKER_CLOSED;
	pg_atomic_init_u64(&lim->requests, 0);
	pg_atomic_init_u64(&lim->throttled, 0);
	pg_atomic_init_u64(&lim->breaker_opened, 0);
	for (int i = 0; i < COURIER_LATENCY_BUCKETS; i++)
		pg_atomic_init_u64(&lim->latency_count[i], 0);
	pg_atomic_init_u64(&lim->latency_sum_us, 0);
}

static CourierTmsLimits *
limits(void)
{
	static bool local_ready = false;

	if (shared_limits != NULL)
		return shared_limits;
	if (!local_ready)
	{
		courier_limits_init(&local_limits);
		local_ready = true;
	}
	return &local_limits;
}

/*
 * tms_config
 *		The TMS's settings for the limits, as the GUCs say now.
 */
static const CourierLimitsConfig *
tms_config(void)
{
	static CourierLimitsConfig cfg;

	cfg.who = "TMS";
	cfg.activity = "tms";
	cfg.hint = "Check courier.tms_url and the credentials, and the provider's status.";
	cfg.rate_limit = courier_tms_rate_limit;
	cfg.breaker_threshold = courier_tms_breaker_threshold;
	cfg.breaker_cooldown_ms = courier_tms_breaker_cooldown_ms;
	return &cfg;
}

static long
ms_until(TimestampTz t, TimestampTz now)
{
	return t > now ? (long) ((t - now) / 1000) + 1 : 0;
}

/*
 * cooldown_left_ms
 *		How long an open breaker stays shut before it lets a probe through.
 *		lim->mutex held.
 */
static long
cooldown_left_ms(CourierTmsLimits *lim, const CourierLimitsConfig *cfg,
				 TimestampTz now)
{
	return ms_until(TimestampTzPlusMilliseconds(lim->breaker_opened_at,
												cfg->breaker_cooldown_ms), now);
}

/*
 * pause_ms
 *		How long sending must pause for the breaker or the provider's
 *		Retry-After, and why (*why; NULL when it need not).  With
 *		take_probe, an open breaker whose cooldown is over lets the caller's
 *		request through as the probe (the breaker goes PROBING, 0 is
 *		returned); while a probe is out, everyone else waits.  lim->mutex
 *		held.
 */
static long
pause_ms(CourierTmsLimits *lim, const CourierLimitsConfig *cfg,
		 TimestampTz now, bool take_probe, const char **why)
{
	static char reason[128];
	long		wait = 0;
	const char *what = NULL;
	bool		name_who = false;

	*why = NULL;
	if (lim->breaker == COURIER_BREAKER_OPEN)
	{
		wait = cooldown_left_ms(lim, cfg, now);
		what = lim->unauthorized ? "circuit breaker open (%s refused our credentials)" :
			"circuit breaker open";
		name_who = lim->unauthorized;
		if (wait == 0 && take_probe)
		{
			lim->breaker = COURIER_BREAKER_PROBING; /* this request probes */
			return 0;
		}
	}
	else if (lim->breaker == COURIER_BREAKER_PROBING)
	{
		wait = PROBE_WAIT_MS;
		what = "circuit breaker probing";
	}
	if (wait == 0 && lim->throttled_until > now)
	{
		wait = ms_until(lim->throttled_until, now);
		what = "throttled by the %s (Retry-After)";
		name_who = true;
	}
	if (what != NULL)
	{
		/* plain formatting into a static buffer: the spinlock is held */
		int			len = snprintf(reason, sizeof(reason), "%s: ", cfg->activity);

		if (name_who)
			snprintf(reason + len, sizeof(reason) - len, what, cfg->who);
		else
			strlcpy(reason + len, what, sizeof(reason) - len);
		*why = reason;
	}
	return wait;
}

/*
 * courier_limits_send_wait_ms
 *		How long a sender should wait before leasing a batch: while the
 *		breaker is open (until its cooldown ends) or the provider asked
 *		everyone to back off.  0 when sending may go on; *why names the
 *		reason otherwise.
 */
long
courier_limits_send_wait_ms(const char **why)
{
	return courier_limits_wait_on(limits(), tms_config(), why);
}

/* courier_limits_send_wait_ms of the limits lim, configured cfg */
long
courier_limits_wait_on(CourierTmsLimits *lim, const CourierLimitsConfig *cfg,
					   const char **why)
{
	TimestampTz now = GetCurrentTimestamp();
	long		wait = 0;

	SpinLockAcquire(&lim->mutex);
	wait = pause_ms(lim, cfg, now, false, why);
	SpinLockRelease(&lim->mutex);
	return wait;
}

/*
 * courier_limits_acquire
 *		May a request of n messages start now?  Returns 0 (and takes n
 *		tokens) or the milliseconds to wait.  An open breaker past its
 *		cooldown lets exactly one request through as the probe.
 */
int
courier_limits_acquire(int n)
{
	return courier_limits_acquire_on(limits(), tms_config(), n);
}

/* courier_limits_acquire of the limits lim, configured cfg */
int
courier_limits_acquire_on(CourierTmsLimits *lim, const CourierLimitsConfig *cfg,
						  int n)
{
	TimestampTz now = GetCurrentTimestamp();
	long		wait;
	const char *why;

	SpinLockAcquire(&lim->mutex);
	wait = pause_ms(lim, cfg, now, true, &why);
	if (wait > 0 || lim->breaker == COURIER_BREAKER_PROBING)
	{
		/* the probe itself (just admitted) waits for nothing */
		SpinLockRelease(&lim->mutex);
		return (int) wait;
	}

	/* grow the rate factor back by 10% a second without throttling */
	if (lim->rate_factor < 1.0 &&
		TimestampDifferenceExceeds(lim->factor_changed_at, now, 1000))
	{
		lim->rate_factor = Min(1.0, lim->rate_factor * 1.1);
		lim->factor_changed_at = now;
	}

	if (cfg->rate_limit > 0)
	{
		double		rate = cfg->rate_limit * lim->rate_factor;
		double		capacity = Max(rate / 10.0, (double) n);	/* 100 ms burst */

		if (lim->refilled_at == 0)
		{
			lim->tokens = capacity;
			lim->refilled_at = now;
		}
		lim->tokens = Min(capacity, lim->tokens +
						  rate * (double) (now - lim->refilled_at) / 1000000.0);
		lim->refilled_at = now;
		if (lim->tokens >= n)
			lim->tokens -= n;
		else
			wait = (long) ((n - lim->tokens) * 1000.0 / rate) + 1;
	}
	SpinLockRelease(&lim->mutex);
	if (wait == 0)
		pg_atomic_fetch_add_u64(&lim->requests, 1);
	return (int) wait;
}

/*
 * courier_limits_report
 *		Feed the outcome class of a finished request to the breaker and the
 *		rate: successes close a probing breaker; failures in a row open it;
 *		401/403 opens it at once; 429/503 pause everyone for Retry-After and
 *		halve the rate.
 */
void
courier_limits_report(CourierOutcome outcome, int retry_after_ms,
					  double latency_ms)
{
	courier_limits_report_on(limits(), tms_config(), outcome, retry_after_ms,
							 latency_ms);
}

/* courier_limits_report to the limits lim, configured cfg */
void
courier_limits_report_on(CourierTmsLimits *lim, const CourierLimitsConfig *cfg,
						 CourierOutcome outcome, int retry_after_ms,
						 double latency_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	const char *opened = NULL;
	bool		closed = false;

	if (latency_ms >= 0)
		observe_latency(lim, latency_ms);

	SpinLockAcquire(&lim->mutex);
	switch (outcome)
	{
		case COURIER_OUT_DELIVERED:
		case COURIER_OUT_REJECTED:
		case COURIER_OUT_FALLBACK:	/* the provider answered: not its failure */
			lim->consecutive_failures = 0;
			if (lim->breaker != COURIER_BREAKER_CLOSED)
			{
				lim->breaker = COURIER_BREAKER_CLOSED;
				lim->unauthorized = false;
				closed = true;
			}
			break;
		case COURIER_OUT_THROTTLED:
			lim->throttled_until = Max(lim->throttled_until,
									   TimestampTzPlusMilliseconds(now, retry_after_ms));
			if (TimestampDifferenceExceeds(lim->factor_changed_at, now, 1000))
			{
				lim->rate_factor = Max(MIN_RATE_FACTOR, lim->rate_factor / 2.0);
				lim->factor_changed_at = now;
			}
			if (lim->breaker == COURIER_BREAKER_PROBING)
				lim->breaker = COURIER_BREAKER_CLOSED;	/* it answers */
			pg_atomic_fetch_add_u64(&lim->throttled, 1);
			break;
		case COURIER_OUT_UNAUTHORIZED:
			if (lim->breaker != COURIER_BREAKER_OPEN)
				opened = "credentials";
			lim->breaker = COURIER_BREAKER_OPEN;
			lim->breaker_opened_at = now;
			lim->unauthorized = true;
			break;
		case COURIER_OUT_RETRY:
			lim->consecutive_failures++;
			if (lim->breaker == COURIER_BREAKER_PROBING ||
				(lim->breaker == COURIER_BREAKER_CLOSED &&
				 lim->consecutive_failures >= cfg->breaker_threshold))
			{
				if (lim->breaker == COURIER_BREAKER_CLOSED)
					opened = "failing";
				lim->breaker = COURIER_BREAKER_OPEN;
				lim->breaker_opened_at = now;
			}
			break;
		case COURIER_OUT_PENDING:
		case COURIER_OUT_CLOSED:
			break;
	}
	SpinLockRelease(&lim->mutex);

	if (opened)
	{
		pg_atomic_fetch_add_u64(&lim->breaker_opened, 1);
		if (strcmp(opened, "credentials") == 0)
			ereport(WARNING,
					(errmsg("courier: %s circuit breaker opened: the %s refused courier's credentials (HTTP 401/403)",
							cfg->who, cfg->who),
					 errdetail("Sending stops; one probe request is tried every %d ms until the %s answers.",
							   cfg->breaker_cooldown_ms, cfg->who),
					 errhint("%s", cfg->hint)));
		else
			ereport(WARNING,
					(errmsg("courier: %s circuit breaker opened: %s requests keep failing",
							cfg->who, cfg->who),
					 errdetail("Sending stops; one probe request is tried every %d ms until the %s answers.",
							   cfg->breaker_cooldown_ms, cfg->who),
					 errhint("%s", cfg->hint)));
	}
	if (closed)
		ereport(LOG,
				(errmsg("courier: %s circuit breaker closed: the %s answers again",
						cfg->who, cfg->who)));
}

/*
 * courier_limits_breaker_open
 *		True while the breaker is not closed: a sender stops starting new
 *		requests of its batch.
 */
bool
courier_limits_breaker_open(void)
{
	return courier_limits_breaker_open_on(limits());
}

/* courier_limits_breaker_open of the limits lim */
bool
courier_limits_breaker_open_on(CourierTmsLimits *lim)
{
	bool		open;

	SpinLockAcquire(&lim->mutex);
	open = (lim->breaker == COURIER_BREAKER_OPEN);
	SpinLockRelease(&lim->mutex);
	return open;
}

/*
 * courier_limits_breaker_state_on
 *		The breaker of the limits lim as it is now, for courier.tms_state()
 *		and courier.subscriber_workers().
 */
CourierBreakerState
courier_limits_breaker_state_on(CourierTmsLimits *lim)
{
	CourierBreakerState state;

	SpinLockAcquire(&lim->mutex);
	state = lim->breaker;
	SpinLockRelease(&lim->mutex);
	return state;
}

/*
 * courier_limits_tms
 *		The TMS's limits (shared, or this process's own without shared
 *		memory), for the functions that show them.
 */
CourierTmsLimits *
courier_limits_tms(void)
{
	return limits();
}

/*
 * observe_latency
 *		Count a finished request in the latency histogram of lim: lock-free,
 *		one bucket and the sum, so metrics() can show the provider's (or a
 *		subscriber's) answer time without reading courier.notices.
 */
static void
observe_latency(CourierTmsLimits *lim, double latency_ms)
{
	double		seconds = latency_ms / 1000.0;
	int			b = 0;

	while (b < COURIER_LATENCY_BOUNDS && seconds > courier_latency_bounds[b])
		b++;
	pg_atomic_fetch_add_u64(&lim->latency_count[b], 1);
	pg_atomic_fetch_add_u64(&lim->latency_sum_us, (uint64) (latency_ms * 1000.0));
}

/*
 * courier_limits_counters
 *		The counters of the shared limits, for courier.metrics(); zeros
 *		without shared memory.
 */
void
courier_limits_counters(uint64 *requests, uint64 *throttled,
						uint64 *breaker_opened)
{
	CourierTmsLimits *lim = limits();

	*requests = pg_atomic_read_u64(&lim->requests);
	*throttled = pg_atomic_read_u64(&lim->throttled);
	*breaker_opened = pg_atomic_read_u64(&lim->breaker_opened);
}
