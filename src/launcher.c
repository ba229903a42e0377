/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher: a static background worker, registered when courier
 *		is preloaded, that keeps each stage's pool of dynamic workers
 *		between courier.<stage>_min_workers and _max_workers in the
 *		database courier.database, adding workers while the backlog grows.
 *
 * Workers retire themselves when idle (worker.c); the launcher only
 * starts them, so the two never race over who stops whom.  The launcher
 * also POSTs alerts (courier.alerts, raised by failure_digest) to
 * courier.alert_url, outside any transaction and in the background of its
 * loop: a receiver that never answers holds up neither the pools nor a
 * shutdown.  Workers are started only once the extension's installed
 * version is the one this library was built for (after ALTER EXTENSION
 * courier UPDATE).  It rotates the queue's slots (courier.rotate_queue(),
 * at most once a second), so the queue's storage stays what its backlog
 * needs.  When
 * max_worker_processes has no free slot the launcher says so, keeps the
 * workers it has and tries again later.
 *
 * IDENTIFICATION
 *		src/launcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "courier.h"
#include "http.h"

/* Shortest time between two looks at the backlog. */
#define LAUNCHER_MIN_INTERVAL_MS	100
/* Longest sleep of the launcher when nothing happens. */
#define LAUNCHER_MAX_INTERVAL_MS	1000
/* How often to repeat the "no free worker slot" warning. */
#define NO_SLOT_WARNING_INTERVAL_MS 60000

static bool extension_ready(void);
static int	due_backlog(CourierStage stage, int cap);
static void balance_stage(CourierStage stage, bool ready);
static bool start_worker(CourierStage stage);
static void launcher_detach(int code, Datum arg);
static void post_alerts(void);
static void rotate_queue(void);
static void balance_subscribers(void);
static bool start_subscriber_worker(int32 subscriber_id, const char *name);

static TimestampTz last_no_slot_warning = 0;
static TimestampTz last_rotation = 0;
static bool version_warned = false;

/* The alert being POSTed in the background, 0 when none. */
static int64 alert_in_flight = 0;

/*
 * courier_register_launcher
 *		Register the launcher with the postmaster; called from _PG_init while
 *		preloading.  An empty courier.database means: no workers.
 */
void
courier_register_launcher(void)
{
	BackgroundWorker worker;

	if (courier_database == NULL || courier_database[0] == '\0')
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "courier");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "courier_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "courier launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "courier launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * courier_launcher_main
 *		Look at every stage's pool whenever woken (a commit queued work, a
 *		worker started or stopped, a reload) and at least once a second.
 */
void
courier_launcher_main(Datum main_arg)
{
	MemoryContext loop_context;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(courier_database, NULL, 0);
	courier_pin_search_path();
	loop_context = AllocSetContextCreate(TopMemoryContext, "courier launcher loop",
										 ALLOCSET_DEFAULT_SIZES);

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	courier_shared->launcher_latch = MyLatch;
	LWLockRelease(courier_shared->lock);
	on_shmem_exit(launcher_detach, (Datum) 0);

	ereport(LOG,
			(errmsg("courier launcher started in database \"%s\"",
					courier_database)));

	for (;;)
	{
		bool		ready;

		courier_loop_turn(loop_context);

		ready = extension_ready();
		for (int s = 0; s < COURIER_NUM_STAGES; s++)
			balance_stage((CourierStage) s, ready);
		if (ready)
			balance_subscribers();
		if (ready && (courier_alert_url[0] != '\0' || alert_in_flight != 0))
			post_alerts();
		if (ready && courier_queue_rotate_ms > 0)
			rotate_queue();
		MemoryContextSwitchTo(loop_context);
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, ready ? "balancing worker pools" :
							   "waiting for CREATE EXTENSION courier");

		/* Rate-limit: a storm of commits must not become a storm of counts. */
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 LAUNCHER_MIN_INTERVAL_MS, PG_WAIT_EXTENSION);
		if (alert_in_flight == 0)
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 LAUNCHER_MAX_INTERVAL_MS - LAUNCHER_MIN_INTERVAL_MS,
							 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	courier_shared->launcher_latch = NULL;
	LWLockRelease(courier_shared->lock);
}

/*
 * balance_stage
 *		Start workers until the stage runs its minimum, then one more per
 *		look while there is more than a batch of due work per worker, up to
 *		the maximum.  Before CREATE EXTENSION nothing is started.
 */
static void
balance_stage(CourierStage stage, bool ready)
{
	int			running = courier_slots_in_use(stage);
	int			max = courier_max_workers[stage];
	int			min = Min(courier_min_workers[stage], max);
	const char *why;

	if (!ready)
		return;
	while (running < min)
	{
		if (!start_worker(stage))
			return;
		running++;
	}
	if (running < max && courier_stage_runnable(stage, &why) &&
		due_backlog(stage, (running + 1) * courier_batch_size) >
		running * courier_batch_size)
		(void) start_worker(stage);
}

/*
 * start_worker
 *		Reserve a slot and register a dynamic worker for it.  On failure
 *		(no free max_worker_processes slot) release the slot and warn, at
 *		most once a minute.
 */
static bool
start_worker(CourierStage stage)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	int			slot = courier_reserve_slot(stage);

	if (slot < 0)
		return false;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "courier");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "courier_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "courier %s worker %d",
			 courier_stage_name(stage), slot);
	snprintf(worker.bgw_type, BGW_MAXLEN, "courier %s worker",
			 courier_stage_name(stage));
	worker.bgw_main_arg = Int32GetDatum(stage * COURIER_MAX_WORKERS_PER_STAGE + slot);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		courier_release_slot(stage, slot);
		if (TimestampDifferenceExceeds(last_no_slot_warning, GetCurrentTimestamp(),
									   NO_SLOT_WARNING_INTERVAL_MS))
		{
			last_no_slot_warning = GetCurrentTimestamp();
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("courier launcher could not start a %s worker: no free background worker slot",
							courier_stage_name(stage)),
					 errdetail("%d %s workers are running; the launcher keeps them and tries again.",
							   courier_slots_in_use(stage), courier_stage_name(stage)),
					 errhint("Raise max_worker_processes (currently %d) or lower courier.%s_max_workers.",
							 max_worker_processes, courier_stage_name(stage))));
		}
		return false;
	}
	pfree(handle);
	return true;
}

/*
 * balance_subscribers
 *		Start a worker for every subscription that is not paused, has
 *		events due and has no worker yet (subscriber.c).  A worker stays
 *		until its subscription is paused or removed.
 */
static void
balance_subscribers(void)
{
	int			n;
	int32	   *ids;
	char	  **names;

	courier_begin_transaction();
	if (SPI_execute("SELECT s.subscriber_id, s.name FROM courier.subscriptions s"
					" WHERE NOT s.paused AND EXISTS (SELECT 1 FROM courier.deliveries d"
					"  WHERE d.subscriber_id = s.subscriber_id AND d.failed_at IS NULL"
					"    AND d.not_before <= pg_catalog.now())"
					" ORDER BY s.subscriber_id", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not read the subscriptions");
	n = (int) SPI_processed;
	ids = palloc(sizeof(int32) * Max(n, 1));
	names = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
		names[i] = MemoryContextStrdup(CurTransactionContext,
									   SPI_getvalue(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 2));
	}
	for (int i = 0; i < n; i++)
		(void) start_subscriber_worker(ids[i], names[i]);
	courier_commit_transaction();
}

/*
 * start_subscriber_worker
 *		Reserve the subscription's slot (none when it has a worker already)
 *		and register its worker.  Without a free slot or a free background
 *		worker slot, warn at most once a minute, as for the stages.
 */
static bool
start_subscriber_worker(int32 subscriber_id, const char *name)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	int			slot = courier_reserve_subscriber_slot(subscriber_id);
	bool		have_one = false;

	if (slot < 0)
	{
		LWLockAcquire(courier_shared->lock, LW_SHARED);
		for (int i = 0; i < COURIER_MAX_SUBSCRIBERS; i++)
			have_one |= (courier_shared->subscribers[i].in_use &&
						 courier_shared->subscribers[i].subscriber_id == subscriber_id);
		LWLockRelease(courier_shared->lock);
		if (!have_one &&
			TimestampDifferenceExceeds(last_no_slot_warning, GetCurrentTimestamp(),
									   NO_SLOT_WARNING_INTERVAL_MS))
		{
			last_no_slot_warning = GetCurrentTimestamp();
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("courier launcher could not start a worker for subscriber \"%s\": %d subscribers are being delivered already",
							name, COURIER_MAX_SUBSCRIBERS),
					 errhint("Pause or remove a subscriber; courier delivers to at most %d at once.",
							 COURIER_MAX_SUBSCRIBERS)));
		}
		return false;
	}

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "courier");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "courier_subscriber_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "courier subscriber worker %s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "courier subscriber worker");
	worker.bgw_main_arg = Int32GetDatum(slot);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
		courier_shared->subscribers[slot].in_use = false;
		LWLockRelease(courier_shared->lock);
		if (TimestampDifferenceExceeds(last_no_slot_warning, GetCurrentTimestamp(),
									   NO_SLOT_WARNING_INTERVAL_MS))
		{
			last_no_slot_warning = GetCurrentTimestamp();
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("courier launcher could not start a worker for subscriber \"%s\": no free background worker slot",
							name),
					 errhint("Raise max_worker_processes (currently %d): each subscriber being delivered takes one.",
							 max_worker_processes)));
		}
		return false;
	}
	pfree(handle);
	return true;
}

/*
 * extension_ready
 *		Has CREATE EXTENSION courier been run in this database, at the
 *		version this library works with?  Workers are only started once it
 *		has: a newer library over an older schema waits for ALTER EXTENSION
 *		courier UPDATE (and says so once).
 */
static bool
extension_ready(void)
{
	char	   *version = NULL;
	bool		ready;

	courier_begin_transaction();
	version = courier_installed_version();
	ready = (version != NULL && strcmp(version, COURIER_SCHEMA_VERSION) == 0);
	if (version != NULL && !ready && !version_warned)
	{
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("courier launcher: extension courier is at version %s, the library needs %s; no worker is started",
						version, COURIER_SCHEMA_VERSION),
				 errhint("Run ALTER EXTENSION courier UPDATE in database \"%s\".",
						 courier_database)));
		version_warned = true;
	}
	if (ready)
		version_warned = false;
	courier_commit_transaction();
	return ready;
}

/*
 * due_backlog
 *		Due items of a stage (pending notices for the tms stage), counted up
 *		to cap: enough to decide on one more worker without counting a
 *		million-row queue.
 */
static int
due_backlog(CourierStage stage, int cap)
{
	int			n;
	bool		isnull;

	courier_begin_transaction();
	if (SPI_execute(stage == COURIER_STAGE_TMS ?
					psprintf("SELECT pg_catalog.count(*)::int FROM (SELECT 1 FROM courier.notices"
							 " WHERE status = 'pending' AND due_at <= pg_catalog.now() LIMIT %d) d",
							 cap) :
					psprintf("SELECT pg_catalog.count(*)::int FROM (SELECT 1 FROM courier.work_items"
							 " WHERE stage = '%s' AND not_before <= pg_catalog.now() LIMIT %d) d",
							 courier_stage_name(stage), cap),
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not count the backlog");
	n = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
									SPI_tuptable->tupdesc, 1, &isnull));
	courier_commit_transaction();
	return n;
}

/*
 * post_alerts
 *		Move the alert outbox along, never waiting on the network: finish
 *		the POST in flight (recording its result), then start the next one
 *		due.  A failed post is retried with back-off (doubling, up to an
 *		hour) until it succeeds.
 *
 * Only rows written in the format in force (courier.alert_format) are
 * posted: a receiver understands one shape.  A row that a newer row of
 * the same alert superseded (courier.failure_digest() marks it) is never
 * posted, even when it failed before: the newer row carries the alert's
 * current state, and one in flight is finished before the next starts, so
 * a receiver never gets an outdated "firing" after its "resolved".
 */
static void
post_alerts(void)
{
	int			http = 0;
	char		error[256] = "";
	Oid			format_type[1] = {TEXTOID};
	Datum		format;

	if (alert_in_flight != 0)
	{
		Oid			argtypes[3] = {INT8OID, BOOLOID, TEXTOID};
		Datum		values[3];
		bool		ok;
		bool		wrong_path;
		bool		wrong_format;

		if (!courier_http_post_poll(&http, error, sizeof(error)))
			return;				/* still going */
		ok = (http >= 200 && http < 300);
		/* Alertmanager answers 404 or 405 on any path but its API's */
		wrong_path = (http == 404 || http == 405) &&
			courier_alert_format == COURIER_ALERT_FORMAT_ALERTMANAGER;
		/* and 400 to courier's own JSON, which is no array of alerts */
		wrong_format = http == 400 &&
			courier_alert_format == COURIER_ALERT_FORMAT_COURIER &&
			strstr(courier_alert_url, "/api/v2/alerts") != NULL;
		if (!ok && error[0] == '\0')
			snprintf(error, sizeof(error), "alert URL answered HTTP %d", http);
		if (!ok)
			ereport(WARNING,
					(errcode(http == 0 ? ERRCODE_CONNECTION_FAILURE :
							 ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("courier could not post alert " INT64_FORMAT " to courier.alert_url: %s",
							alert_in_flight, error),
					 errdetail("The alert stays in courier.alerts and is posted again later, after a back-off that doubles up to an hour."),
					 wrong_path ?
					 errhint("With courier.alert_format = alertmanager, courier.alert_url is Alertmanager's alerts endpoint, e.g. http://alertmanager:9093/api/v2/alerts.") :
					 wrong_format ?
					 errhint("courier.alert_url looks like Alertmanager's alerts endpoint: set courier.alert_format = alertmanager, which posts the alerts in its shape.") : 0));
		values[0] = Int64GetDatum(alert_in_flight);
		values[1] = BoolGetDatum(ok);
		values[2] = CStringGetTextDatum(error);
		alert_in_flight = 0;
		courier_begin_transaction();
		if (SPI_execute_with_args("UPDATE courier.alerts"
								  "   SET post_attempts = post_attempts + 1,"
								  "       posted_at = CASE WHEN $2 THEN pg_catalog.now() END,"
								  "       next_post_at = pg_catalog.now() + LEAST(interval '1 hour',"
								  "           interval '1 second' * 2 ^ LEAST(post_attempts, 12)),"
								  "       post_error = NULLIF($3, '')"
								  " WHERE alert_id = $1",
								  3, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "courier: could not record an alert");
		courier_commit_transaction();
	}

	if (courier_alert_url[0] == '\0')
		return;					/* the URL was emptied meanwhile */

	/* the next one due, if any */
	format = CStringGetTextDatum(courier_alert_format == COURIER_ALERT_FORMAT_ALERTMANAGER ?
								 "alertmanager" : "courier");
	courier_begin_transaction();
	if (SPI_execute_with_args("SELECT alert_id, payload::text FROM courier.alerts"
							  " WHERE posted_at IS NULL AND superseded_by IS NULL"
							  "   AND next_post_at <= pg_catalog.now() AND format = $1"
							  " ORDER BY next_post_at, alert_id LIMIT 1",
							  1, format_type, &format, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not read alerts");
	if (SPI_processed > 0)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1, &isnull));

		if (courier_http_post_start(courier_alert_url, "application/json",
									SPI_getvalue(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 2)))
			alert_in_flight = id;
	}
	courier_commit_transaction();
}

/*
 * rotate_queue
 *		Give courier.rotate_queue() its turn, at most once a second: it
 *		truncates drained slots and makes a fresh slot current when the
 *		current one is courier.queue_rotate_interval old.  It waits at most
 *		100 ms for a lock, so a busy queue delays the pools only briefly.
 */
static void
rotate_queue(void)
{
	if (!TimestampDifferenceExceeds(last_rotation, GetCurrentTimestamp(),
									Min(courier_queue_rotate_ms, LAUNCHER_MAX_INTERVAL_MS)))
		return;
	last_rotation = GetCurrentTimestamp();
	pgstat_report_activity(STATE_RUNNING, "rotating the queue");
	courier_begin_transaction();
	if (SPI_execute("SELECT courier.rotate_queue()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not rotate the queue");
	courier_commit_transaction();
}
