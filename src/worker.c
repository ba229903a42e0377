/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The loop of a stage worker: a dynamic background worker started by
 *		the launcher, which claims and processes batches of its stage, one
 *		transaction per batch, and sleeps on its latch when nothing is due.
 *
 * Wake-ups come from commits that queue work for the stage (shmem.c) or
 * from the earliest back-off of the stage falling due; a worker does not
 * poll in a tight loop.  A worker idle for courier.worker_idle_exit while
 * its stage runs more than courier.<stage>_min_workers retires itself.
 *
 * An error that escapes a batch (anything not isolated to one item) is
 * caught at the loop's edge and logged whole (SQLSTATE, detail, context)
 * with the stage and batch.  An error of concurrency (deadlock,
 * serialization failure) retries the batch, charging nobody.  Any other
 * charges the batch's items an attempt in a fresh transaction, and the
 * worker backs off before its next batch, longer after each batch that
 * dies in a row (and says so in pg_stat_activity), instead of exiting and
 * being replaced in a storm.
 *
 * SIGTERM ends the worker at once (die(), which also interrupts a lock
 * wait), except while a sender has requests on the wire and outcomes to
 * write: then it stops starting requests, finishes those in flight and
 * records them, and leaves.
 *
 * Before any SQL runs, search_path is pinned to pg_catalog, pg_temp: the
 * database's default search_path may contain schemas other roles can
 * create objects in, and a worker runs with the bootstrap superuser's
 * rights.
 *
 * What a batch does is not here (logic.c, and the sender for tms).
 *
 * IDENTIFICATION
 *		src/worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "courier.h"


static CourierStage my_stage;
static int	my_slot = -1;
static volatile sig_atomic_t got_sigterm = false;
static volatile sig_atomic_t sending = false;
static int	dead_batches = 0;	/* batches that died in a row */

static void worker_attach(CourierStage stage, int slot);
static void worker_detach(int code, Datum arg);
static int	run_logic_batch(long *sleep_ms, ErrorData **batch_error);
static long batch_died(MemoryContext loop_context);
static long dead_batch_backoff_ms(void);
static void charge_lost_batch(ErrorData *edata);
static bool should_retire(long *sleep_ms);
static void set_busy(bool busy, bool worked);
static void worker_sigterm(SIGNAL_ARGS);

/*
 * courier_worker_main
 *		Entry point; main_arg packs the stage and the slot the launcher
 *		reserved (stage * COURIER_MAX_WORKERS_PER_STAGE + slot).
 */
void
courier_worker_main(Datum main_arg)
{
	int			arg = DatumGetInt32(main_arg);
	char		idle_activity[64];
	char		backoff_activity[128];
	MemoryContext loop_context;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();

	worker_attach(arg / COURIER_MAX_WORKERS_PER_STAGE,
				  arg % COURIER_MAX_WORKERS_PER_STAGE);
	BackgroundWorkerInitializeConnection(courier_database, NULL, 0);
	courier_pin_search_path();
	SetConfigOption("application_name", MyBgworkerEntry->bgw_type,
					PGC_USERSET, PGC_S_SESSION);
	snprintf(idle_activity, sizeof(idle_activity), "%s: waiting for work",
			 courier_stage_name(my_stage));
	loop_context = AllocSetContextCreate(TopMemoryContext, "courier worker loop",
										 ALLOCSET_DEFAULT_SIZES);

	ereport(LOG,
			(errmsg("courier %s worker started", courier_stage_name(my_stage))));

	while (!got_sigterm)
	{
		const char *why;
		long		sleep_ms = courier_idle_wakeup_ms;
		int			handled = 0;
		long		wait;
		const char *activity;
		ErrorData  *batch_error = NULL;
		bool		runnable;
		bool		receipts_only = false;

		courier_loop_turn(loop_context);

		activity = idle_activity;
		runnable = true;
		if (!courier_stage_runnable(my_stage, &why))
		{
			activity = why;
			runnable = false;
		}
		else if (my_stage == COURIER_STAGE_TMS &&
				 (wait = courier_limits_send_wait_ms(&why)) > 0)
		{
			/* no send now (breaker, rate); receipts are asked all the same */
			activity = why;
			sleep_ms = wait;
			runnable = false;
			receipts_only = true;
		}

		if (runnable || sending || receipts_only)
		{
			PG_TRY();
			{
				if (!runnable)
				{
					/* a sender that waits holds nothing meanwhile */
					if (sending)
						courier_tms_release();
					sending = false;
					if (receipts_only)
						handled = courier_receipts_round(&got_sigterm);
				}
				else if (my_stage == COURIER_STAGE_TMS)
					handled = courier_tms_worker_batch(&got_sigterm, &sending,
													   &sleep_ms);
				else
					handled = run_logic_batch(&sleep_ms, &batch_error);
				if (batch_error == NULL && runnable)
					dead_batches = 0;
			}
			PG_CATCH();
			{
				sending = false;
				sleep_ms = batch_died(loop_context);
				handled = 0;
			}
			PG_END_TRY();

			if (batch_error != NULL)
			{
				/*
				 * A logic batch died whole; its items are already charged.
				 * The error itself is logged whole (SQLSTATE, detail,
				 * context), then what became of the batch.
				 */
				batch_error->elevel = LOG;
				ThrowErrorData(batch_error);
				ereport(LOG,
						(errmsg("courier %s worker: batch of %d items failed: %s",
								courier_stage_name(my_stage), handled,
								batch_error->message),
						 errdetail("Every item of the batch was charged an attempt and will be retried alone.")));
				FreeErrorData(batch_error);
				sleep_ms = dead_batch_backoff_ms();
				handled = 0;
			}
			if (dead_batches > 0 && handled == 0)
			{
				snprintf(backoff_activity, sizeof(backoff_activity),
						 "%s: backing off %ld ms after %d failed batches in a row",
						 courier_stage_name(my_stage), sleep_ms, dead_batches);
				activity = backoff_activity;
			}
		}

		MemoryContextSwitchTo(loop_context);
		if (handled > 0)
			continue;			/* more may be due: no sleep */

		if (dead_batches == 0 && should_retire(&sleep_ms))
			proc_exit(0);
		pgstat_report_activity(STATE_IDLE, activity);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	/* outcomes not yet written and a batch leased ahead (asked to stop meanwhile) */
	if (my_stage == COURIER_STAGE_TMS && sending)
		courier_tms_release();
	ereport(LOG,
			(errmsg("courier %s worker shutting down", courier_stage_name(my_stage))));
	proc_exit(0);
}

/*
 * batch_died
 *		At the loop's edge, after an error escaped a batch: log it whole,
 *		abort, and either retry (a concurrency error: no one is charged, a
 *		short pause) or charge the batch's items and back off.  Returns the
 *		milliseconds to wait before the next batch.
 */
static long
batch_died(MemoryContext loop_context)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(loop_context);
	EmitErrorReport();
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(loop_context);
	set_busy(false, false);
	if (my_stage == COURIER_STAGE_TMS)
		courier_tms_forget();

	if (courier_error_is_transient(edata->sqlerrcode))
	{
		ereport(LOG,
				(errmsg("courier %s worker: batch interrupted by a concurrent transaction, trying it again",
						courier_stage_name(my_stage)),
				 errdetail("SQLSTATE %s; no item is charged an attempt.",
						   unpack_sql_state(edata->sqlerrcode))));
		return 10 + (long) (pg_prng_double(&pg_global_prng_state) * 90);
	}

	PG_TRY();
	{
		charge_lost_batch(edata);
	}
	PG_CATCH();
	{
		/* cannot even charge: leave it to a fresh process */
		EmitErrorReport();
		proc_exit(1);
	}
	PG_END_TRY();

	return dead_batch_backoff_ms();
}

/*
 * dead_batch_backoff_ms
 *		Count one more batch that died in a row and return how long to wait
 *		before the next: 1 s, doubling, up to a minute.
 */
static long
dead_batch_backoff_ms(void)
{
	dead_batches++;
	return courier_dead_batch_backoff_ms(dead_batches);
}

/*
 * worker_sigterm
 *		die() at once, interrupting even a lock wait; but while a sender has
 *		requests on the wire and their outcomes to record, only ask the
 *		loop to stop: it starts no further request, waits for those in
 *		flight, records every outcome and leaves.
 */
static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
	if (!sending)
		die(postgres_signal_arg);
	errno = save_errno;
}

/*
 * worker_attach
 *		Publish this process in its reserved slot so commits can wake it.
 */
static void
worker_attach(CourierStage stage, int slot)
{
	CourierWorkerSlot *s;

	my_stage = stage;
	my_slot = slot;
	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	s = &courier_shared->stages[stage].slots[slot];
	s->in_use = true;
	s->pid = MyProcPid;
	s->latch = MyLatch;
	s->busy = false;
	s->idle_since = GetCurrentTimestamp();
	LWLockRelease(courier_shared->lock);
	on_shmem_exit(worker_detach, (Datum) 0);
}

static void
worker_detach(int code, Datum arg)
{
	CourierWorkerSlot *s = &courier_shared->stages[my_stage].slots[my_slot];

	/* a retired worker's slot may already belong to its successor */
	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	if (s->pid == MyProcPid)
		memset(s, 0, sizeof(CourierWorkerSlot));
	LWLockRelease(courier_shared->lock);
	courier_wake_launcher();
}

/*
 * set_busy
 *		Publish whether a batch is running; idle time counts from the end of
 *		the last batch that found work.
 */
static void
set_busy(bool busy, bool worked)
{
	CourierWorkerSlot *s = &courier_shared->stages[my_stage].slots[my_slot];

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	s->busy = busy;
	if (worked)
		s->idle_since = GetCurrentTimestamp();
	LWLockRelease(courier_shared->lock);
}

/*
 * run_logic_batch
 *		One logic batch in its own transaction.  When nothing was due, also
 *		find when the stage's next item falls due and return the time to
 *		sleep in *sleep_ms.  *batch_error: see courier_logic_run_batch.
 *
 * Memory allocated by the batch lives in the SPI context and goes with
 * SPI_finish, so nothing accumulates across batches.
 */
static int
run_logic_batch(long *sleep_ms, ErrorData **batch_error)
{
	int			handled;

	courier_begin_transaction();
	pgstat_report_activity(STATE_RUNNING, courier_stage_name(my_stage));

	set_busy(true, false);
	handled = courier_logic_run_batch(batch_error);
	if (handled == 0)
		*sleep_ms = Min(*sleep_ms, courier_next_due_ms(my_stage));

	courier_commit_transaction();
	set_busy(false, handled > 0);
	return handled;
}

/*
 * charge_lost_batch
 *		After an error escaped a batch: log it with the stage and batch, and
 *		charge one attempt to every item of the batch in a new transaction,
 *		so that an item that kills workers ends in failures instead of
 *		killing them forever.
 */
static void
charge_lost_batch(ErrorData *edata)
{
	CourierClaim items;

	if (my_stage == COURIER_STAGE_TMS)
	{
		/* leased notices charge themselves when their lease runs out */
		ereport(LOG,
				(errmsg("courier tms worker: batch failed: %s", edata->message),
				 errdetail("The notices it leased fall due again when the lease runs out, charged an attempt with the outcome unknown; the worker backs off before its next batch.")));
		return;
	}
	courier_last_claim(&items);
	ereport(LOG,
			(errmsg("courier %s worker: batch of %d items failed: %s",
					courier_stage_name(my_stage), items.n, edata->message),
			 errdetail("Every item of the batch is charged an attempt; the worker backs off before its next batch.")));
	if (items.n == 0)
		return;

	courier_begin_transaction();
	courier_charge_lost_batch(&items, edata->message,
							  unpack_sql_state(edata->sqlerrcode));
	courier_commit_transaction();
}

/*
 * should_retire
 *		An idle worker above its stage's minimum leaves after
 *		courier.worker_idle_exit; until then *sleep_ms is capped so that it
 *		wakes when that time is up.  Decided under the exclusive lock so two
 *		idle workers cannot both leave the stage below its minimum.
 */
static bool
should_retire(long *sleep_ms)
{
	CourierStageState *st = &courier_shared->stages[my_stage];
	bool		retire = false;
	int			running = 0;

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < COURIER_MAX_WORKERS_PER_STAGE; i++)
		running += st->slots[i].in_use ? 1 : 0;
	if (running > courier_max_workers[my_stage] ||
		(running > courier_min_workers[my_stage] &&
		 TimestampDifferenceExceeds(st->slots[my_slot].idle_since,
									GetCurrentTimestamp(),
									courier_worker_idle_exit_ms)))
	{
		retire = true;
		st->slots[my_slot].in_use = false;	/* leaving: no longer counted */
	}
	else if (running > courier_min_workers[my_stage])
	{
		/* wake up when the idle time is up, not only when work comes */
		long		idle_ms = (long) ((GetCurrentTimestamp() -
									   st->slots[my_slot].idle_since) / 1000);

		*sleep_ms = Min(*sleep_ms, Max(courier_worker_idle_exit_ms - idle_ms, 0) + 1);
	}
	LWLockRelease(courier_shared->lock);

	if (retire && running > courier_max_workers[my_stage])
		ereport(LOG,
				(errmsg("courier %s worker retiring: %d running, more than courier.%s_max_workers (%d)",
						courier_stage_name(my_stage), running,
						courier_stage_name(my_stage), courier_max_workers[my_stage])));
	else if (retire)
		ereport(LOG,
				(errmsg("courier %s worker retiring after %d ms idle",
						courier_stage_name(my_stage), courier_worker_idle_exit_ms)));
	return retire;
}
