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
 * caught at the loop's edge: logged with the stage and batch, the batch's
 * items are charged an attempt in a fresh transaction, and the worker
 * exits with code 1; the launcher starts a replacement.
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

static void worker_attach(CourierStage stage, int slot);
static void worker_detach(int code, Datum arg);
static int	run_batch_transaction(long *sleep_ms);
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

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();

	worker_attach(arg / COURIER_MAX_WORKERS_PER_STAGE,
				  arg % COURIER_MAX_WORKERS_PER_STAGE);
	BackgroundWorkerInitializeConnection(courier_database, NULL, 0);
	SetConfigOption("application_name", MyBgworkerEntry->bgw_type,
					PGC_USERSET, PGC_S_SESSION);
	snprintf(idle_activity, sizeof(idle_activity), "%s: waiting for work",
			 courier_stage_name(my_stage));

	ereport(LOG,
			(errmsg("courier %s worker started", courier_stage_name(my_stage))));

	while (!got_sigterm)
	{
		const char *why;
		long		sleep_ms = courier_idle_wakeup_ms;
		int			handled = 0;
		long		wait;
		const char *activity;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		activity = idle_activity;
		if (!courier_stage_runnable(my_stage, &why))
			activity = why;
		else if (my_stage == COURIER_STAGE_TMS &&
				 (wait = courier_limits_send_wait_ms(&why)) > 0)
		{
			activity = why;
			sleep_ms = wait;
		}
		else
		{
			MemoryContext batch_context = CurrentMemoryContext;

			PG_TRY();
			{
				if (my_stage == COURIER_STAGE_TMS)
					handled = courier_tms_worker_batch(&got_sigterm, &sleep_ms);
				else
					handled = run_batch_transaction(&sleep_ms);
			}
			PG_CATCH();
			{
				ErrorData  *edata;

				MemoryContextSwitchTo(batch_context);
				edata = CopyErrorData();
				FlushErrorState();
				AbortCurrentTransaction();
				charge_lost_batch(edata);
				proc_exit(1);
			}
			PG_END_TRY();
		}

		if (courier_batch_error != NULL)
		{
			ereport(LOG,
					(errmsg("courier %s worker: batch of %d items failed: %s",
							courier_stage_name(my_stage), handled,
							courier_batch_error->message),
					 errdetail("Every item of the batch is charged an attempt; the worker exits and is replaced.")));
			proc_exit(1);
		}
		if (handled > 0)
			continue;			/* more may be due: no sleep */

		if (should_retire(&sleep_ms))
			proc_exit(0);
		pgstat_report_activity(STATE_IDLE, activity);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	ereport(LOG,
			(errmsg("courier %s worker shutting down", courier_stage_name(my_stage))));
	proc_exit(0);
}

/*
 * worker_sigterm
 *		Ask the loop to stop after the batch in hand: a logic batch is short
 *		and commits; a sender stops starting requests, waits for those in
 *		flight and records every outcome, releasing what it did not send.
 */
static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
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
 * run_batch_transaction
 *		One batch in its own transaction.  When nothing was due, also find
 *		when the stage's next item falls due and return the time to sleep
 *		in *sleep_ms.
 *
 * Memory allocated by the batch lives in the SPI context and goes with
 * SPI_finish, so nothing accumulates across batches.
 */
static int
run_batch_transaction(long *sleep_ms)
{
	int			handled;

	courier_begin_transaction();
	pgstat_report_activity(STATE_RUNNING, courier_stage_name(my_stage));

	set_busy(true, false);
	handled = courier_run_batch(my_stage);
	if (handled == 0)
		*sleep_ms = Min(*sleep_ms, courier_next_due_ms(my_stage));

	courier_commit_transaction();
	set_busy(false, handled > 0);
	return handled;
}

/*
 * courier_begin_transaction
 *		Start a transaction in a background worker with SPI connected and a
 *		snapshot pushed: every transaction of the launcher and the workers
 *		starts here.
 */
void
courier_begin_transaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

/*
 * courier_commit_transaction
 *		Undo courier_begin_transaction and commit.  SPI_finish frees what the
 *		batch allocated; pgstat_report_stat tells autovacuum about the churn
 *		(without it the queue tables would never be vacuumed).
 */
void
courier_commit_transaction(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
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
	int			n;
	Datum		ids;

	ids = courier_last_claim(&n);
	ereport(LOG,
			(errmsg("courier %s worker: batch of %d items failed: %s",
					courier_stage_name(my_stage), n, edata->message),
			 errdetail("Every item of the batch is charged an attempt; the worker exits and is replaced.")));
	if (n == 0)
		return;

	courier_begin_transaction();
	courier_charge_lost_batch(ids, edata->message,
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
