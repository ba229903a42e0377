/*-------------------------------------------------------------------------
 *
 * guc.c
 *		Every configuration parameter of courier, defined in one place.
 *
 * Operators flip the switches here with ALTER SYSTEM + pg_reload_conf(),
 * so everything that may change at run time is PGC_SIGHUP, or PGC_SUSET
 * where a superuser's session may also want its own value (batch size and
 * retry tuning for run_once, validation limits); only what the postmaster
 * needs at start is PGC_POSTMASTER.
 * The README's configuration table is checked against this file by the
 * test suite (test/t/001_readme_gucs.pl).
 *
 * IDENTIFICATION
 *		src/guc.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"

#include "courier.h"
#include "provider.h"

char	   *courier_database = NULL;
bool		courier_enabled = true;
bool		courier_pause_logic = false;
bool		courier_pause_tms = false;
int			courier_batch_size = 1000;
int			courier_max_attempts = 5;
int			courier_retry_base_ms = 1000;
int			courier_retry_cap_ms = 300000;
int			courier_max_orders_per_request = 100000;
int			courier_max_reason_length = 200;
int			courier_max_delay_days = 90;
int			courier_invoice_deadline_min = 1440;
int			courier_min_workers[COURIER_NUM_STAGES] = {1, 1};
int			courier_max_workers[COURIER_NUM_STAGES] = {2, 2};
int			courier_worker_idle_exit_ms = 60000;
int			courier_idle_wakeup_ms = 10000;
int			courier_lease_ms = 60000;
int			courier_queue_rotate_ms = 10000;
bool		courier_claim_per_seller = false;
int			courier_receipt_interval_ms = 10000;
int			courier_receipt_horizon_min = 1500;
int			courier_tms_mode = COURIER_TMS_LIVE;
char	   *courier_tms_url = NULL;
int			courier_tms_bulk_size = 1;
int			courier_tms_concurrency = 16;
int			courier_tms_rate_limit = 0;
int			courier_tms_timeout_ms = 10000;
int			courier_tms_connect_timeout_ms = 2000;
char	   *courier_tms_auth_header = NULL;
char	   *courier_tms_hmac_access_key = NULL;
char	   *courier_tms_hmac_secret = NULL;
char	   *courier_tms_idempotency_header = NULL;
int			courier_tms_max_response_bytes = 1048576;
bool		courier_tms_tls_verify = true;
int			courier_tms_max_notice_age_min = 1440;
int			courier_tms_breaker_threshold = 10;
int			courier_tms_breaker_cooldown_ms = 5000;
char	   *courier_notice_template = NULL;
char	   *courier_notice_template_v2 = NULL;
char	   *courier_alert_url = NULL;
int			courier_alert_format = COURIER_ALERT_FORMAT_COURIER;
int			courier_alert_backlog_age_s = 900;

/* the TMS provider's dialect and what it needs (provider_<name>.c) */
int			courier_tms_provider = COURIER_PROVIDER_generic;
char	   *courier_nhn_alimtalk_appkey = NULL;
char	   *courier_nhn_alimtalk_secret_key = NULL;
char	   *courier_nhn_alimtalk_sender_key = NULL;
char	   *courier_nhn_sms_appkey = NULL;
char	   *courier_nhn_sms_secret_key = NULL;
char	   *courier_nhn_sms_send_no = NULL;
char	   *courier_sens_alimtalk_service_id = NULL;
char	   *courier_sens_sms_service_id = NULL;
char	   *courier_sens_plus_friend_id = NULL;
char	   *courier_sens_sms_from = NULL;
char	   *courier_alimtalk_template = NULL;
char	   *courier_alimtalk_template_v2 = NULL;
char	   *courier_alimtalk_template_params = NULL;
int			courier_alimtalk_fallback = COURIER_ALIMTALK_FALLBACK_NONE;
char	   *courier_traceparent = NULL;
const CourierTemplateParams *courier_alimtalk_params = NULL;

/* read by SQL only, through current_setting() */
static int	courier_retention_min = 43200;
static char *courier_overdue_reason = NULL;
static int	courier_overdue_delay_days = 2;

/* the dialects of provider.h's list, by name */
#define PROVIDER_OPTION(name) {#name, COURIER_PROVIDER_##name, false},
static const struct config_enum_entry tms_provider_options[] = {
	COURIER_PROVIDERS(PROVIDER_OPTION)
	{NULL, 0, false}
};
#undef PROVIDER_OPTION

/* who sends the SMS/LMS when AlimTalk cannot reach a customer */
static const struct config_enum_entry alimtalk_fallback_options[] = {
	{"none", COURIER_ALIMTALK_FALLBACK_NONE, false},
	{"provider", COURIER_ALIMTALK_FALLBACK_PROVIDER, false},
	{"courier", COURIER_ALIMTALK_FALLBACK_COURIER, false},
	{NULL, 0, false}
};

/* the fields of a notice a template parameter may name, by CourierField */
static const char *const field_names[COURIER_NUM_FIELDS] = {
	"order_id", "product", "reason", "ship_date"
};

static bool check_path_segment(char **newval, void **extra, GucSource source);
static bool check_header_value(char **newval, void **extra, GucSource source);
static bool check_template_params(char **newval, void **extra, GucSource source);
static bool check_traceparent(char **newval, void **extra, GucSource source);
static void assign_template_params(const char *newval, void *extra);

/* the shape of the alerts the launcher POSTs to courier.alert_url */
static const struct config_enum_entry alert_format_options[] = {
	{"courier", COURIER_ALERT_FORMAT_COURIER, false},
	{"alertmanager", COURIER_ALERT_FORMAT_ALERTMANAGER, false},
	{NULL, 0, false}
};

static const struct config_enum_entry tms_mode_options[] = {
	{"live", COURIER_TMS_LIVE, false},
	{"dry_run", COURIER_TMS_DRY_RUN, false},
	{"off", COURIER_TMS_OFF, false},
	{NULL, 0, false}
};

/*
 * courier_define_gucs
 *		Define all courier.* parameters but the rollout switches (switches.c
 *		defines those); _PG_init then reserves the prefix, so that a
 *		misspelt courier.* setting is reported instead of silently ignored.
 *
 * Called from _PG_init, in the postmaster when preloaded or in a backend
 * that loads the library later.
 */
void
courier_define_gucs(void)
{
	/*
	 * Where the workers run.  Only the postmaster starts workers, and a
	 * PGC_POSTMASTER parameter cannot be defined after startup (FATAL):
	 * loaded without preloading, for run_once, courier has no such
	 * parameter.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("courier.database",
							   "Database in which courier's background workers run; empty for none.",
							   NULL,
							   &courier_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	/* Switches */
	DefineCustomBoolVariable("courier.enabled",
							 "Kill switch: when off, no stage processes work; requests still queue.",
							 NULL,
							 &courier_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("courier.pause_logic",
							 "Pause the logic stage: delay requests queue but are not applied.",
							 NULL,
							 &courier_pause_logic,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("courier.pause_tms",
							 "Pause the tms stage: notices queue but are not sent.",
							 NULL,
							 &courier_pause_tms,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	/* Batches and retries */
	DefineCustomIntVariable("courier.batch_size",
							"Items a worker claims and processes in one transaction.",
							NULL,
							&courier_batch_size,
							1000, 1, 100000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.max_attempts",
							"Attempts an item gets before it moves to courier.failures.",
							NULL,
							&courier_max_attempts,
							5, 1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.retry_base",
							"Back-off before the first retry; doubles with each further attempt.",
							NULL,
							&courier_retry_base_ms,
							1000, 1, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.retry_cap",
							"Longest back-off between two attempts.",
							NULL,
							&courier_retry_cap_ms,
							300000, 1, 86400000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.lease_time",
							"How long a sender holds claimed notices before they fall due again; never less than twice courier.tms_timeout plus 1 s.",
							NULL,
							&courier_lease_ms,
							60000, 1000, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("courier.queue_rotate_interval",
							"How long a queue slot takes new items before the next one does; the old slot is truncated once drained.",
							"The launcher rotates; 0 stops it (courier.rotate_queue() still rotates when called).",
							&courier_queue_rotate_ms,
							10000, 0, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("courier.claim_per_seller",
							 "Whether each batch takes the due work of one seller only.",
							 "For a deployment sharded by seller (docs/citus.md): every statement of a batch is then restricted to that seller. Off: a batch takes the oldest due work of any sellers.",
							 &courier_claim_per_seller,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("courier.receipt_interval",
							"How long after a provider accepted a notice courier first asks how its delivery ended; the wait doubles between checks, up to 64 times this.",
							"Only providers with delivery receipts (every courier.tms_provider but generic).",
							&courier_receipt_interval_ms,
							10000, 10, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.receipt_horizon",
							"How long courier keeps asking for a notice's receipt before it records it expired.",
							"NHN keeps SMS results 25 hours, LMS 80 hours.",
							&courier_receipt_horizon_min,
							1500, 1, 10080,
							PGC_SIGHUP,
							GUC_UNIT_MIN,
							NULL, NULL, NULL);

	/* Validation limits of the app API */
	DefineCustomIntVariable("courier.max_orders_per_request",
							"Most orders one register_orders, request_shipping or delay_orders call may name.",
							NULL,
							&courier_max_orders_per_request,
							100000, 1, 10000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.max_reason_length",
							"Longest delay reason, in characters.",
							NULL,
							&courier_max_reason_length,
							200, 1, 2000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.max_delay_days",
							"How far ahead of today a new ship date may be, in days.",
							NULL,
							&courier_max_delay_days,
							90, 0, 3650,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.invoice_deadline",
							"Time after a shipping request by which an invoice is due.",
							NULL,
							&courier_invoice_deadline_min,
							1440, 1, 525600,
							PGC_SUSET,
							GUC_UNIT_MIN,
							NULL, NULL, NULL);

	/* The app's trace context, set per transaction (SET LOCAL) */
	DefineCustomStringVariable("courier.traceparent",
							   "W3C traceparent that delay_orders and register_invoice record with their work; empty: courier starts a trace per request.",
							   NULL,
							   &courier_traceparent,
							   "",
							   PGC_USERSET,
							   0,
							   check_traceparent, NULL, NULL);

	/* Worker pools */
	DefineCustomIntVariable("courier.logic_min_workers",
							"Logic-stage workers kept running even when idle.",
							NULL,
							&courier_min_workers[COURIER_STAGE_LOGIC],
							1, 0, COURIER_MAX_WORKERS_PER_STAGE,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.logic_max_workers",
							"Most logic-stage workers run while the backlog grows.",
							NULL,
							&courier_max_workers[COURIER_STAGE_LOGIC],
							2, 0, COURIER_MAX_WORKERS_PER_STAGE,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_min_workers",
							"TMS-stage workers kept running even when idle.",
							NULL,
							&courier_min_workers[COURIER_STAGE_TMS],
							1, 0, COURIER_MAX_WORKERS_PER_STAGE,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_max_workers",
							"Most TMS-stage workers run while the backlog grows.",
							NULL,
							&courier_max_workers[COURIER_STAGE_TMS],
							2, 0, COURIER_MAX_WORKERS_PER_STAGE,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.worker_idle_exit",
							"Idle time after which a worker above the stage minimum is retired.",
							NULL,
							&courier_worker_idle_exit_ms,
							60000, 100, 86400000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.idle_wakeup",
							"Longest sleep of an idle worker before it looks for due work anyway.",
							NULL,
							&courier_idle_wakeup_ms,
							10000, 10, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	/* The TMS stage: what is sent where, how fast */
	DefineCustomEnumVariable("courier.tms_mode",
							 "TMS mode: live sends, dry_run renders and logs without HTTP, off lets notices accumulate.",
							 NULL,
							 &courier_tms_mode,
							 COURIER_TMS_LIVE,
							 tms_mode_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("courier.tms_url",
							   "URL the TMS stage POSTs notices to; empty: the stage waits.",
							   NULL,
							   &courier_tms_url,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_bulk_size",
							"Messages per TMS request.",
							NULL,
							&courier_tms_bulk_size,
							1, 1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_concurrency",
							"TMS requests in flight at once, per sender.",
							NULL,
							&courier_tms_concurrency,
							16, 1, 256,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_rate_limit",
							"Messages per second all senders together may send; 0 for no limit.",
							NULL,
							&courier_tms_rate_limit,
							0, 0, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_timeout",
							"Longest a TMS request may take, connection included.",
							NULL,
							&courier_tms_timeout_ms,
							10000, 100, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_connect_timeout",
							"Longest wait for a connection to the TMS.",
							NULL,
							&courier_tms_connect_timeout_ms,
							2000, 100, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("courier.tms_auth_header",
							   "A whole header line sent with every TMS request, e.g. X-Secret-Key: ... (secret).",
							   NULL,
							   &courier_tms_auth_header,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("courier.tms_hmac_access_key",
							   "Access key for HMAC-signed TMS requests (SENS style); empty for none (secret).",
							   NULL,
							   &courier_tms_hmac_access_key,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("courier.tms_hmac_secret",
							   "Secret key that signs TMS requests with HMAC-SHA256 (secret).",
							   NULL,
							   &courier_tms_hmac_secret,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("courier.tms_idempotency_header",
							   "Name of the header that carries a request's idempotency key.",
							   NULL,
							   &courier_tms_idempotency_header,
							   "Idempotency-Key",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_max_response_size",
							"Largest TMS response body read; a larger one counts as a failed request.",
							NULL,
							&courier_tms_max_response_bytes,
							1048576, 1024, 67108864,
							PGC_SIGHUP,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("courier.tms_tls_verify",
							 "Verify the TMS server's TLS certificate and host name.",
							 NULL,
							 &courier_tms_tls_verify,
							 true,
							 PGC_SIGHUP,
							 GUC_SUPERUSER_ONLY,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_max_notice_age",
							"A notice older than this goes to failures instead of being sent late.",
							NULL,
							&courier_tms_max_notice_age_min,
							1440, 1, 525600,
							PGC_SUSET,
							GUC_UNIT_MIN,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_breaker_threshold",
							"Failed TMS requests in a row that open the circuit breaker.",
							NULL,
							&courier_tms_breaker_threshold,
							10, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.tms_breaker_cooldown",
							"How long an open breaker waits before it lets one probe request through.",
							NULL,
							&courier_tms_breaker_cooldown_ms,
							5000, 10, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	/* The TMS provider's dialect (docs/providers.md) */
	DefineCustomEnumVariable("courier.tms_provider",
							 "Dialect of the TMS provider: generic, nhn_alimtalk, nhn_sms, sens_alimtalk or sens_sms.",
							 "courier.tms_url is then the provider's base URL, to which the dialect appends its documented path.",
							 &courier_tms_provider,
							 COURIER_PROVIDER_generic,
							 tms_provider_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("courier.nhn_alimtalk_appkey",
							   "App key of the NHN Cloud KakaoTalk Bizmessage project (nhn_alimtalk).",
							   NULL,
							   &courier_nhn_alimtalk_appkey,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_path_segment, NULL, NULL);
	DefineCustomStringVariable("courier.nhn_alimtalk_secret_key",
							   "Secret key (X-Secret-Key) of the NHN Cloud KakaoTalk Bizmessage project (secret).",
							   NULL,
							   &courier_nhn_alimtalk_secret_key,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.nhn_alimtalk_sender_key",
							   "Sender key (senderKey) of the KakaoTalk channel AlimTalk is sent from (nhn_alimtalk).",
							   NULL,
							   &courier_nhn_alimtalk_sender_key,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.nhn_sms_appkey",
							   "App key of the NHN Cloud SMS project (nhn_sms).",
							   NULL,
							   &courier_nhn_sms_appkey,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_path_segment, NULL, NULL);
	DefineCustomStringVariable("courier.nhn_sms_secret_key",
							   "Secret key (X-Secret-Key) of the NHN Cloud SMS project (secret).",
							   NULL,
							   &courier_nhn_sms_secret_key,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.nhn_sms_send_no",
							   "Registered sender number (sendNo) of NHN Cloud SMS (nhn_sms).",
							   NULL,
							   &courier_nhn_sms_send_no,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.sens_alimtalk_service_id",
							   "Service id of the Naver Cloud SENS Biz Message (AlimTalk) project, ncp:kkobizmsg:... (sens_alimtalk).",
							   "Requests are signed with courier.tms_hmac_access_key and courier.tms_hmac_secret.",
							   &courier_sens_alimtalk_service_id,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_path_segment, NULL, NULL);
	DefineCustomStringVariable("courier.sens_sms_service_id",
							   "Service id of the Naver Cloud SENS SMS project, ncp:sms:... (sens_sms).",
							   "Requests are signed with courier.tms_hmac_access_key and courier.tms_hmac_secret.",
							   &courier_sens_sms_service_id,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_path_segment, NULL, NULL);
	DefineCustomStringVariable("courier.sens_plus_friend_id",
							   "KakaoTalk channel id (plusFriendId) AlimTalk is sent from (sens_alimtalk).",
							   NULL,
							   &courier_sens_plus_friend_id,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.sens_sms_from",
							   "Registered sender number (from) of SENS SMS (sens_sms).",
							   NULL,
							   &courier_sens_sms_from,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.alimtalk_template",
							   "Code of the approved AlimTalk template a delay notice is sent with (nhn_alimtalk, sens_alimtalk).",
							   NULL,
							   &courier_alimtalk_template,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.alimtalk_template_v2",
							   "Code of the AlimTalk template for orders inside the notice_v2 rollout.",
							   NULL,
							   &courier_alimtalk_template_v2,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_header_value, NULL, NULL);
	DefineCustomStringVariable("courier.alimtalk_template_params",
							   "Which field of a notice fills each #{key} of the AlimTalk template, e.g. 'orderId=order_id, product=product, reason=reason, shipDate=ship_date' (nhn_alimtalk).",
							   "Fields: order_id, product, reason, ship_date (YYYY-MM-DD).  Both templates take the same keys.",
							   &courier_alimtalk_template_params,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_template_params, assign_template_params, NULL);
	DefineCustomEnumVariable("courier.alimtalk_fallback",
							 "Who resends a notice by SMS/LMS when AlimTalk cannot reach the customer: none, provider or courier (nhn_alimtalk, sens_alimtalk).",
							 "provider: each AlimTalk recipient asks the provider to resend the rendered text itself, from courier.nhn_sms_send_no or courier.sens_sms_from; courier: courier sends it itself through the provider's SMS dialect (nhn_sms, sens_sms) once AlimTalk reports 3018, 3019 or 3020; none: no fallback, whatever the provider's console sets.",
							 &courier_alimtalk_fallback,
							 COURIER_ALIMTALK_FALLBACK_NONE,
							 alimtalk_fallback_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("courier.notice_template",
							   "Text of a delay notice; {order_id}, {product}, {reason} and {new_ship_date} are replaced.",
							   NULL,
							   &courier_notice_template,
							   "[{product}] Order {order_id}: shipping is delayed ({reason}). New ship date: {new_ship_date}.",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("courier.notice_template_v2",
							   "Text of a delay notice for orders inside the notice_v2 rollout.",
							   NULL,
							   &courier_notice_template_v2,
							   "[{product}] Sorry! Order {order_id} now ships {new_ship_date}: {reason}.",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	/* Schedules */
	DefineCustomStringVariable("courier.alert_url",
							   "URL courier.failure_digest() alerts are POSTed to; empty for NOTIFY only.",
							   NULL,
							   &courier_alert_url,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomEnumVariable("courier.alert_format",
							 "Shape of the alerts POSTed to courier.alert_url: courier (courier's own JSON) or alertmanager (Alertmanager's /api/v2/alerts).",
							 "alertmanager: labels, annotations, startsAt and endsAt, re-posted by each courier.failure_digest() while firing and resolved when the condition clears.  courier.failure_digest() writes its alerts in the format in force; the launcher posts those.",
							 &courier_alert_format,
							 COURIER_ALERT_FORMAT_COURIER,
							 alert_format_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("courier.alert_backlog_age",
							"Age of a stage's or a subscriber's oldest queued item from which courier.failure_digest() raises CourierBacklogOld; 0 turns that alert off.",
							NULL,
							&courier_alert_backlog_age_s,
							900, 0, 7 * 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.retention",
							"Age after which courier.prune() deletes delivered notices, history and discarded failures.",
							NULL,
							&courier_retention_min,
							43200, 1, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MIN,
							NULL, NULL, NULL);

	DefineCustomStringVariable("courier.overdue_reason",
							   "Reason courier.sweep_overdue() gives customers whose order missed its invoice deadline.",
							   NULL,
							   &courier_overdue_reason,
							   "Preparing your shipment is taking longer than planned",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("courier.overdue_delay_days",
							"Days from today to the new ship date courier.sweep_overdue() announces.",
							NULL,
							&courier_overdue_delay_days,
							2, 0, 3650,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
}

/*
 * check_path_segment
 *		An app key or a service id goes into the path of the provider's URL
 *		(and into what SENS signs): letters, digits and ".", "_", "-", ":"
 *		only, so it can neither break the URL nor change the path.  Empty
 *		means unset.
 */
static bool
check_path_segment(char **newval, void **extra, GucSource source)
{
	for (const char *p = *newval; *p != '\0'; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') ||
			  *p == '.' || *p == '_' || *p == '-' || *p == ':'))
		{
			GUC_check_errdetail("Character %d of the value is not a letter, a digit, \".\", \"_\", \"-\" or \":\"; the value goes into the provider's URL.",
								(int) (p - *newval) + 1);
			return false;
		}
	}
	return true;
}

/*
 * check_header_value
 *		A value that goes into a header line or a request's fields: no
 *		control characters (a line break would end the header).  The value
 *		itself is not repeated, since it may be a secret.
 */
static bool
check_header_value(char **newval, void **extra, GucSource source)
{
	for (const char *p = *newval; *p != '\0'; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
		{
			GUC_check_errdetail("Character %d of the value is a control character.",
								(int) (p - *newval) + 1);
			return false;
		}
	}
	return true;
}

/*
 * check_traceparent
 *		courier.traceparent is empty or a W3C traceparent of version 00 in
 *		lowercase hex (trace.c): a header courier would have to ignore is
 *		refused when it is set, so the app learns at once that its trace
 *		would not be followed.  The value is no secret: it is repeated.
 */
static bool
check_traceparent(char **newval, void **extra, GucSource source)
{
	if (**newval == '\0' || courier_traceparent_valid(*newval))
		return true;
	GUC_check_errdetail("A traceparent is \"00-<trace id>-<parent id>-<flags>\": 32, 16 and 2 lowercase hex digits, the ids not all zero, e.g. \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\".");
	GUC_check_errhint("Pass the W3C traceparent header of the app's current request as it came, or leave courier.traceparent empty for courier to start a trace.");
	return false;
}

/*
 * check_template_params
 *		Parse courier.alimtalk_template_params, "key=field, key=field, ...":
 *		each #{key} of the AlimTalk template (written with or without #{})
 *		and the field of the notice that fills it.  An empty value means a
 *		template without parameters.  The parsed list goes to the assign
 *		hook as extra (one malloc'd block, as GUC extras are); an error
 *		names the entry at fault.
 */
static bool
check_template_params(char **newval, void **extra, GucSource source)
{
	CourierTemplateParams *params;
	int			max = 1;
	int			entry = 0;
	const char *p = *newval;

	for (const char *c = *newval; *c != '\0'; c++)
		max += (*c == ',');
	params = malloc(offsetof(CourierTemplateParams, items) +
					sizeof(CourierTemplateParam) * max);
	if (params == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	params->n = 0;

	for (;;)
	{
		const char *end = strchr(p, ',');
		const char *eq;
		const char *key;
		const char *key_end;
		const char *field;
		const char *field_end;
		int			f;

		if (end == NULL)
			end = p + strlen(p);
		entry++;
		while (p < end && isspace((unsigned char) *p))
			p++;
		eq = memchr(p, '=', end - p);
		if (p == end)
		{
			if (entry == 1 && *end == '\0')
				break;			/* empty or blank: no parameters */
			GUC_check_errdetail("Entry %d is empty.", entry);
			goto fail;
		}
		if (eq == NULL)
		{
			GUC_check_errdetail("Entry %d, \"%.*s\", has no \"=\".", entry,
								(int) (end - p), p);
			GUC_check_errhint("Write key=field, separated by commas, e.g. 'orderId=order_id, shipDate=ship_date'.");
			goto fail;
		}

		/* the key, trimmed, and without #{} */
		key = p;
		key_end = eq;
		while (key_end > key && isspace((unsigned char) key_end[-1]))
			key_end--;
		if (key_end - key > 3 && key[0] == '#' && key[1] == '{' && key_end[-1] == '}')
		{
			key += 2;
			key_end--;
		}
		if (key_end == key)
		{
			GUC_check_errdetail("Entry %d, \"%.*s\", has no template key before \"=\".",
								entry, (int) (end - p), p);
			goto fail;
		}
		if (key_end - key >= COURIER_TEMPLATE_KEY_LEN)
		{
			GUC_check_errdetail("Entry %d: the template key \"%.*s\" is longer than %d bytes.",
								entry, (int) (key_end - key), key,
								COURIER_TEMPLATE_KEY_LEN - 1);
			goto fail;
		}
		for (const char *c = key; c < key_end; c++)
		{
			if (isspace((unsigned char) *c) || (unsigned char) *c < 0x20 ||
				*c == '@' || *c == '#' || *c == '{' || *c == '}' || *c == '"')
			{
				GUC_check_errdetail("Entry %d: the template key \"%.*s\" has a character a #{key} cannot have (white space, @, #, braces or quotes).",
									entry, (int) (key_end - key), key);
				goto fail;
			}
		}

		/* the field, trimmed */
		field = eq + 1;
		field_end = end;
		while (field < field_end && isspace((unsigned char) *field))
			field++;
		while (field_end > field && isspace((unsigned char) field_end[-1]))
			field_end--;
		for (f = 0; f < COURIER_NUM_FIELDS; f++)
		{
			if (strlen(field_names[f]) == (size_t) (field_end - field) &&
				strncmp(field_names[f], field, field_end - field) == 0)
				break;
		}
		if (f == COURIER_NUM_FIELDS)
		{
			GUC_check_errdetail("Entry %d, \"%.*s\", names no field of a notice: \"%.*s\".",
								entry, (int) (end - p), p,
								(int) (field_end - field), field);
			GUC_check_errhint("The fields are order_id, product, reason and ship_date.");
			goto fail;
		}

		for (int i = 0; i < params->n; i++)
		{
			if (strlen(params->items[i].key) == (size_t) (key_end - key) &&
				strncmp(params->items[i].key, key, key_end - key) == 0)
			{
				GUC_check_errdetail("Entry %d names the template key \"%.*s\" again.",
									entry, (int) (key_end - key), key);
				goto fail;
			}
		}
		memcpy(params->items[params->n].key, key, key_end - key);
		params->items[params->n].key[key_end - key] = '\0';
		params->items[params->n].field = (CourierField) f;
		params->n++;

		if (*end == '\0')
			break;
		p = end + 1;
	}
	*extra = params;
	return true;

fail:
	free(params);
	return false;
}

/*
 * assign_template_params
 *		Make the list check_template_params parsed the one in force.
 */
static void
assign_template_params(const char *newval, void *extra)
{
	courier_alimtalk_params = (const CourierTemplateParams *) extra;
}
