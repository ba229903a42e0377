/*-------------------------------------------------------------------------
 *
 * courier.h
 *		The names courier's source files share: the stages, the GUC
 *		variables, the shared-memory state, and what each file exports to
 *		the others, grouped by the file that defines it.
 *
 * Only names used by more than one file live here; everything else is
 * static in the file that owns it.  The HTTP side has its own headers
 * (dispatch.h and what it includes), and so has the app's input (input.h).
 * Every .c file includes postgres.h first, then this.
 *
 * IDENTIFICATION
 *		src/courier.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_H
#define COURIER_H

#include <signal.h>

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/date.h"
#include "utils/elog.h"

/*
 * The stages of the pipeline.  The numbering is also the index into the
 * per-stage arrays of shared memory and the launcher.
 */
typedef enum CourierStage
{
	COURIER_STAGE_LOGIC = 0,	/* apply delays, write notices */
	COURIER_STAGE_TMS,			/* send notices to the TMS */
	COURIER_NUM_STAGES
} CourierStage;

/* TMS modes (courier.tms_mode) */
typedef enum CourierTmsMode
{
	COURIER_TMS_LIVE,
	COURIER_TMS_DRY_RUN,
	COURIER_TMS_OFF
} CourierTmsMode;

/* The shape of the alerts the launcher POSTs (courier.alert_format) */
typedef enum CourierAlertFormat
{
	COURIER_ALERT_FORMAT_COURIER,	/* courier's own JSON, one event each */
	COURIER_ALERT_FORMAT_ALERTMANAGER	/* Alertmanager's v2 /api/v2/alerts */
} CourierAlertFormat;

/* Most workers one stage may run; bounds courier.<stage>_max_workers. */
#define COURIER_MAX_WORKERS_PER_STAGE 16

/* The SQL version of courier this library works with. */
#define COURIER_SCHEMA_VERSION "0.7"

/* ----------
 * GUC variables (guc.c)
 * ----------
 */
extern char *courier_database;
extern bool courier_enabled;
extern bool courier_pause_logic;
extern bool courier_pause_tms;
extern int	courier_batch_size;
extern int	courier_max_attempts;
extern int	courier_retry_base_ms;
extern int	courier_retry_cap_ms;
extern int	courier_max_orders_per_request;
extern int	courier_max_reason_length;
extern int	courier_max_delay_days;
extern int	courier_invoice_deadline_min;
extern int	courier_min_workers[COURIER_NUM_STAGES];
extern int	courier_max_workers[COURIER_NUM_STAGES];
extern int	courier_worker_idle_exit_ms;
extern int	courier_idle_wakeup_ms;
extern int	courier_lease_ms;
extern int	courier_queue_rotate_ms;
extern bool courier_claim_per_seller;
extern int	courier_receipt_interval_ms;
extern int	courier_receipt_horizon_min;
extern int	courier_tms_mode;
extern char *courier_tms_url;
extern int	courier_tms_bulk_size;
extern int	courier_tms_concurrency;
extern int	courier_tms_rate_limit;
extern int	courier_tms_timeout_ms;
extern int	courier_tms_connect_timeout_ms;
extern char *courier_tms_auth_header;
extern char *courier_tms_hmac_access_key;
extern char *courier_tms_hmac_secret;
extern char *courier_tms_idempotency_header;
extern int	courier_tms_max_response_bytes;
extern bool courier_tms_tls_verify;
extern int	courier_tms_max_notice_age_min;
extern int	courier_tms_breaker_threshold;
extern int	courier_tms_breaker_cooldown_ms;
extern char *courier_notice_template;
extern char *courier_notice_template_v2;
extern char *courier_alert_url;
extern int	courier_alert_format;	/* a CourierAlertFormat */
extern int	courier_alert_backlog_age_s;
extern int	courier_tms_provider;	/* a CourierProviderId (provider.h) */
extern char *courier_nhn_alimtalk_appkey;
extern char *courier_nhn_alimtalk_secret_key;
extern char *courier_nhn_alimtalk_sender_key;
extern char *courier_nhn_sms_appkey;
extern char *courier_nhn_sms_secret_key;
extern char *courier_nhn_sms_send_no;
extern char *courier_sens_alimtalk_service_id;
extern char *courier_sens_sms_service_id;
extern char *courier_sens_plus_friend_id;
extern char *courier_sens_sms_from;
extern char *courier_alimtalk_template;
extern char *courier_alimtalk_template_v2;
extern char *courier_alimtalk_template_params;
extern int	courier_alimtalk_fallback;	/* a CourierAlimtalkFallback (provider.h) */
extern char *courier_traceparent;	/* the app's W3C traceparent, or "" */
/* courier.alimtalk_template_params parsed (provider.h) */
extern const struct CourierTemplateParams *courier_alimtalk_params;

extern void courier_define_gucs(void);

/* ----------
 * Shared memory (shmem.c)
 * ----------
 */

/* One slot per worker that may run; a free slot has pid 0. */
typedef struct CourierWorkerSlot
{
	bool		in_use;			/* reserved by the launcher for a worker */
	pid_t		pid;
	Latch	   *latch;
	bool		busy;			/* processing a batch right now */
	TimestampTz idle_since;		/* when it last found nothing to do */
} CourierWorkerSlot;

typedef struct CourierStageState
{
	CourierWorkerSlot slots[COURIER_MAX_WORKERS_PER_STAGE];
	pg_atomic_uint64 items_done;	/* counters since postmaster start */
	pg_atomic_uint64 items_failed;
	pg_atomic_uint64 batches;
} CourierStageState;

/* Send limits shared by all TMS senders (limits.c). */
typedef enum CourierBreakerState
{
	COURIER_BREAKER_CLOSED = 0,
	COURIER_BREAKER_OPEN,
	COURIER_BREAKER_PROBING
} CourierBreakerState;

/*
 * Request latency histogram buckets, in seconds (Prometheus' default
 * buckets; limits.c); one more bucket counts what is slower than the last.
 */
#define COURIER_LATENCY_BOUNDS	11
#define COURIER_LATENCY_BUCKETS (COURIER_LATENCY_BOUNDS + 1)
extern const double courier_latency_bounds[COURIER_LATENCY_BOUNDS];

typedef struct CourierTmsLimits
{
	slock_t		mutex;
	double		tokens;			/* rate limiter bucket */
	TimestampTz refilled_at;
	double		rate_factor;	/* 1, halved by each 429/503, grows back */
	TimestampTz factor_changed_at;
	TimestampTz throttled_until;	/* Retry-After for every sender */
	CourierBreakerState breaker;
	int			consecutive_failures;
	TimestampTz breaker_opened_at;
	bool		unauthorized;	/* the breaker opened on 401/403 */
	pg_atomic_uint64 requests;
	pg_atomic_uint64 throttled;
	pg_atomic_uint64 breaker_opened;
	/* finished requests by latency: per bucket (not cumulative), and sum */
	pg_atomic_uint64 latency_count[COURIER_LATENCY_BUCKETS];
	pg_atomic_uint64 latency_sum_us;
} CourierTmsLimits;

/* What a set of limits is told to hold to (limits.c). */
typedef struct CourierLimitsConfig
{
	const char *who;			/* in messages: "TMS", "subscriber \"x\"" */
	const char *activity;		/* prefix of a pause's reason: "tms" */
	const char *hint;			/* what to check when its breaker opens */
	int			rate_limit;		/* requests a second, 0: none */
	int			breaker_threshold;	/* failed requests in a row that open it */
	int			breaker_cooldown_ms;	/* open this long before a probe */
} CourierLimitsConfig;

/*
 * A subscriber's worker and its limits (subscriber.c): one slot per
 * subscription being delivered.  The launcher reserves a slot for a
 * subscription with events due and starts its worker; the worker keeps
 * it until the subscription is paused or removed, or it is stopped.  Its
 * rate and breaker are its own: a subscriber that fails holds back no
 * other.  Counters count since the slot was taken.
 */
#define COURIER_MAX_SUBSCRIBERS 32

typedef struct CourierSubscriberSlot
{
	bool		in_use;
	int32		subscriber_id;
	pid_t		pid;
	Latch	   *latch;
	CourierTmsLimits limits;
	pg_atomic_uint64 delivered;	/* events the subscriber accepted */
	pg_atomic_uint64 failed;	/* events that exhausted their attempts */
	pg_atomic_uint64 retried;	/* failed attempts of events */
} CourierSubscriberSlot;

/*
 * Closes of orders published at commit, for senders that are about to send
 * (closes.c).  A slot holds the order id and seq = its position + 1 once
 * written.
 */
#define COURIER_CLOSE_RING_SIZE 65536

typedef struct CourierCloseSlot
{
	pg_atomic_uint64 seq;
	int64		order_id;
} CourierCloseSlot;

typedef struct CourierCloseRing
{
	pg_atomic_uint64 head;		/* next position to write */
	CourierCloseSlot slots[COURIER_CLOSE_RING_SIZE];
} CourierCloseRing;

typedef struct CourierShared
{
	LWLock	   *lock;			/* protects the slots and launcher_latch */
	Latch	   *launcher_latch;
	CourierStageState stages[COURIER_NUM_STAGES];
	CourierSubscriberSlot subscribers[COURIER_MAX_SUBSCRIBERS];
	CourierCloseRing closes;
} CourierShared;

extern CourierShared *courier_shared;

extern void courier_shmem_install_hooks(void);
extern void courier_wake_stage_at_commit(CourierStage stage);
extern void courier_wake_launcher(void);
extern int	courier_reserve_slot(CourierStage stage);
extern void courier_release_slot(CourierStage stage, int slot);
extern int	courier_slots_in_use(CourierStage stage);
extern int	courier_reserve_subscriber_slot(int32 subscriber_id);
extern void courier_wake_subscribers_at_commit(void);

/* ----------
 * Shared TMS limits (limits.c; the dispatcher's side is in dispatch.h)
 * ----------
 */
extern void courier_limits_install_hooks(void);
extern long courier_limits_send_wait_ms(const char **why);
extern void courier_limits_counters(uint64 *requests, uint64 *throttled,
									uint64 *breaker_opened);
extern void courier_limits_init(CourierTmsLimits *lim);
extern long courier_limits_wait_on(CourierTmsLimits *lim,
								   const CourierLimitsConfig *cfg,
								   const char **why);
extern bool courier_limits_breaker_open_on(CourierTmsLimits *lim);
extern CourierBreakerState courier_limits_breaker_state_on(CourierTmsLimits *lim);
extern CourierTmsLimits *courier_limits_tms(void);

/* ----------
 * A notice's text and length (render.c)
 * ----------
 */
#define COURIER_SMS_MAX_BYTES	90	/* in EUC-KR */
#define COURIER_LMS_MAX_BYTES	2000
#define COURIER_LMS_SUBJECT		"Shipping delay"

extern char *courier_render_notice(bool v2, int64 order_id,
								   DateADT ship_date, const char *product,
								   const char *reason);
extern int	courier_euckr_length(const char *text);
extern const char *courier_sms_channel(int euckr_bytes);

/* ----------
 * W3C trace context (trace.c, a leaf)
 * ----------
 */
#define COURIER_TRACEPARENT_LEN 55	/* version 00: 00-<32>-<16>-<2> */

extern bool courier_traceparent_valid(const char *s);
extern const char *courier_traceparent_stored(const char *s);
extern char *courier_traceparent_new(void);
extern bool courier_same_trace(const char *a, const char *b);
extern char *courier_traceparent_header(const char *traceparent);

/* ----------
 * The stages' batches (logic.c, tms.c)
 * ----------
 */
extern int	courier_logic_run_batch(ErrorData **batch_error);
extern int	courier_tms_worker_batch(volatile sig_atomic_t *stop_requested,
									 volatile sig_atomic_t *sending,
									 long *sleep_ms);
extern int	courier_tms_run_once(void);
extern void courier_tms_release(void);

/* receipts.c: the receipt stage, run by the tms workers */
extern int	courier_receipts_round(volatile sig_atomic_t *stop);
extern long courier_receipts_next_due_ms(void);
extern void courier_tms_forget(void);

/* ----------
 * The close rule (closes.c)
 * ----------
 */
extern uint64 courier_closes_position(void);
extern bool courier_closes_read(uint64 *next,
								void (*fn) (int64 order_id, void *arg),
								void *arg);

/* ----------
 * Stages, names and switches (switches.c)
 * ----------
 */
extern const char *courier_stage_name(CourierStage stage);
extern CourierStage courier_stage_from_name(const char *name);
extern bool courier_stage_runnable(CourierStage stage, const char **why);
extern void courier_define_rollouts(void);
extern int	courier_rollout_percent(const char *name);

/* ----------
 * How background processes run (transaction.c, a leaf)
 * ----------
 */
extern void courier_loop_turn(MemoryContext loop_context);
extern long courier_dead_batch_backoff_ms(int dead_batches);
extern void courier_pin_search_path(void);
extern char *courier_installed_version(void);
extern void courier_begin_transaction(void);
extern void courier_commit_transaction(void);
extern SPIPlanPtr courier_prepare_kept(const char *sql, int nargs,
									   Oid *argtypes, bool custom);
extern int	courier_execute_pinned(SPIPlanPtr plan, Datum *values,
								   const char *nulls, bool claim);
extern int	courier_execute_kept(SPIPlanPtr *plan, const char *sql, int nargs,
								 Oid *argtypes, Datum *values,
								 const char *nulls, int expected);
extern Datum courier_int8_array(Datum *values, int n);
extern Datum courier_ids_to_array(int *n);

/* ----------
 * Claiming and retry state (claim.c, retry.c)
 * ----------
 */

/*
 * Work items claimed by a logic batch: ids[i] (int8) of seller sellers[i]
 * (int8).  Every statement of the batch reaches its rows by (seller_id,
 * item_id), the key a table sharded by seller keeps (docs/citus.md).
 */
typedef struct CourierClaim
{
	int			n;
	Datum	   *ids;
	Datum	   *sellers;
} CourierClaim;

extern void courier_claim_due(CourierStage stage, int limit, CourierClaim *claim);
extern void courier_last_claim(CourierClaim *claim);
extern void courier_remember_claim(const CourierClaim *claim);
extern int	courier_lease_notices(int limit, int lease_ms, TimestampTz now,
								  int max_age_min);
extern long courier_next_due_ms(CourierStage stage);
extern bool courier_pick_receipt_seller(TimestampTz now, Datum *seller);
extern void courier_charge_attempt(const CourierClaim *items, const char *error,
								   const char *sqlstate, int http_status,
								   bool permanent);
/* failed attempts to charge in one statement (retry.c) */
typedef struct CourierCharges
{
	int			n;
	CourierStage stage;
	Datum	   *sellers;		/* the seller of each */
	Datum	   *ids;			/* work item ids, or notices' order ids */
	Datum	   *dates;			/* notices' ship dates */
	Datum	   *jitter;			/* each item's back-off jitter, [0, 1) */
	Datum	   *errors;
	Datum	   *sqlstates;
	bool	   *sqlstate_nulls;
	Datum	   *http;
	bool	   *http_nulls;
	Datum	   *permanent;
	Datum	   *unknown;
} CourierCharges;

extern void courier_charges_init(CourierCharges *c, int size, CourierStage stage);
extern void courier_charges_add(CourierCharges *c, int64 seller, int64 id,
								DateADT ship_date,
								const char *error, const char *sqlstate,
								int http_status, bool permanent, bool unknown);
extern void courier_charge(CourierCharges *c);
extern void courier_charge_lost_batch(const CourierClaim *items,
									  const char *error, const char *sqlstate);
extern double courier_backoff_ms(int attempt);
extern double courier_backoff_step_ms(int attempt, int base_ms, int cap_ms,
									 double jitter);
extern bool courier_error_is_transient(int sqlerrcode);

/* ----------
 * Background workers (launcher.c, worker.c)
 * ----------
 */
extern void courier_register_launcher(void);
extern PGDLLEXPORT void courier_launcher_main(Datum main_arg);
extern PGDLLEXPORT void courier_worker_main(Datum main_arg);
extern PGDLLEXPORT void courier_subscriber_main(Datum main_arg);

#endif							/* COURIER_H */
