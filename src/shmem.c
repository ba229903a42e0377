/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		courier's shared memory: the worker slots of each stage and of the
 *		subscribers (pid and latch, so that a commit can wake them; a
 *		subscriber's own limits), the launcher's latch and the counters
 *		that metrics report.
 *
 * Waking is done at commit: a backend that queued work for a stage calls
 * courier_wake_stage_at_commit(), and a transaction callback sets the
 * stage's latches once when (and only if) the transaction commits.  This
 * file does not decide what a worker does; it only lets processes find
 * each other.
 *
 * Locking rules, for all of courier's shared memory:
 *	- courier_shared->lock (one LWLock of the "courier" tranche) protects
 *	  the worker slots and launcher_latch: exclusive to change them (a
 *	  worker attaching, retiring or detaching, the launcher reserving a
 *	  slot), shared to read them (waking a stage, counting workers).
 *	  Latches are set while it is held in shared mode, so a slot is never
 *	  reused under a SetLatch.
 *	- The per-stage counters are atomics: added to and read without a lock.
 *	- The TMS limits and each subscriber's (rate bucket, Retry-After,
 *	  breaker) are under their own spinlock, held for a few instructions, never across a call that can
 *	  error or wait (limits.c).
 *	- The close ring is lock-free: atomic positions, barriers, and a
 *	  sequence number per slot (closes.c).
 *	- Everything is created once, in the postmaster, under
 *	  AddinShmemInitLock; a crash restart creates it anew.
 *
 * IDENTIFICATION
 *		src/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include "courier.h"

CourierShared *courier_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* stages to wake when the current transaction commits */
static bool wake_pending[COURIER_NUM_STAGES];
static bool wake_subscribers_pending = false;
static bool xact_callback_registered = false;

static void courier_shmem_request_hook(void);
static void courier_shmem_startup(void);
static void courier_xact_callback(XactEvent event, void *arg);
static void courier_wake_stage(CourierStage stage);
static void courier_wake_subscribers(void);

/*
 * courier_shmem_install_hooks
 *		Chain our hooks; PostgreSQL 15 only accepts shared-memory requests
 *		from shmem_request_hook.  Called from _PG_init while preloading.
 */
void
courier_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = courier_shmem_request_hook;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = courier_shmem_startup;
}

static void
courier_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CourierShared)));
	RequestNamedLWLockTranche("courier", 1);
}

/*
 * courier_shmem_startup
 *		Create or attach to the shared state.  Runs in the postmaster (and in
 *		EXEC_BACKEND children), under AddinShmemInitLock.
 */
static void
courier_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	courier_shared = ShmemInitStruct("courier", sizeof(CourierShared), &found);
	if (!found)
	{
		memset(courier_shared, 0, sizeof(CourierShared));
		courier_shared->lock = &(GetNamedLWLockTranche("courier"))->lock;
		for (int s = 0; s < COURIER_NUM_STAGES; s++)
		{
			CourierStageState *st = &courier_shared->stages[s];

			pg_atomic_init_u64(&st->items_done, 0);
			pg_atomic_init_u64(&st->items_failed, 0);
			pg_atomic_init_u64(&st->batches, 0);
		}
		pg_atomic_init_u64(&courier_shared->closes.head, 0);
		for (int i = 0; i < COURIER_CLOSE_RING_SIZE; i++)
			pg_atomic_init_u64(&courier_shared->closes.slots[i].seq, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * courier_wake_stage
 *		Set the latch of every running worker of a stage, and the launcher's
 *		so that it can scale the pool.  Harmless when courier is not
 *		preloaded (no shared memory) or no worker runs.
 */
static void
courier_wake_stage(CourierStage stage)
{
	CourierStageState *st;

	if (courier_shared == NULL)
		return;
	st = &courier_shared->stages[stage];

	LWLockAcquire(courier_shared->lock, LW_SHARED);
	for (int i = 0; i < COURIER_MAX_WORKERS_PER_STAGE; i++)
	{
		if (st->slots[i].pid != 0 && st->slots[i].latch != NULL)
			SetLatch(st->slots[i].latch);
	}
	if (courier_shared->launcher_latch != NULL)
		SetLatch(courier_shared->launcher_latch);
	LWLockRelease(courier_shared->lock);
}

/*
 * courier_reserve_slot
 *		Reserve a free worker slot of a stage for a worker the launcher is
 *		about to start; -1 when the stage has no free slot.  The slot stays
 *		reserved until the worker exits (courier_release_slot), so the
 *		launcher counts starting workers as running and never starts two
 *		for one slot.
 */
int
courier_reserve_slot(CourierStage stage)
{
	CourierStageState *st = &courier_shared->stages[stage];
	int			found = -1;

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < COURIER_MAX_WORKERS_PER_STAGE; i++)
	{
		if (!st->slots[i].in_use)
		{
			memset(&st->slots[i], 0, sizeof(CourierWorkerSlot));
			st->slots[i].in_use = true;
			found = i;
			break;
		}
	}
	LWLockRelease(courier_shared->lock);
	return found;
}

void
courier_release_slot(CourierStage stage, int slot)
{
	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	memset(&courier_shared->stages[stage].slots[slot], 0,
		   sizeof(CourierWorkerSlot));
	LWLockRelease(courier_shared->lock);
}

int
courier_slots_in_use(CourierStage stage)
{
	int			n = 0;

	LWLockAcquire(courier_shared->lock, LW_SHARED);
	for (int i = 0; i < COURIER_MAX_WORKERS_PER_STAGE; i++)
		n += courier_shared->stages[stage].slots[i].in_use ? 1 : 0;
	LWLockRelease(courier_shared->lock);
	return n;
}

/*
 * courier_reserve_subscriber_slot
 *		Reserve a slot for the worker of subscription subscriber_id, which
 *		the launcher is about to start: -1 when one is held for it already
 *		or none is free.  Its limits start afresh.  The worker releases the
 *		slot when it exits (subscriber.c).
 */
int
courier_reserve_subscriber_slot(int32 subscriber_id)
{
	int			found = -1;

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < COURIER_MAX_SUBSCRIBERS; i++)
	{
		CourierSubscriberSlot *slot = &courier_shared->subscribers[i];

		if (slot->in_use && slot->subscriber_id == subscriber_id)
		{
			found = -1;
			break;
		}
		if (!slot->in_use && found < 0)
			found = i;
	}
	if (found >= 0)
	{
		CourierSubscriberSlot *slot = &courier_shared->subscribers[found];

		slot->in_use = true;
		slot->subscriber_id = subscriber_id;
		slot->pid = 0;
		slot->latch = NULL;
		courier_limits_init(&slot->limits);
		pg_atomic_init_u64(&slot->delivered, 0);
		pg_atomic_init_u64(&slot->failed, 0);
		pg_atomic_init_u64(&slot->retried, 0);
	}
	LWLockRelease(courier_shared->lock);
	return found;
}

/*
 * courier_wake_subscribers
 *		Set the latch of every subscriber worker: events were queued.
 */
static void
courier_wake_subscribers(void)
{
	if (courier_shared == NULL)
		return;
	LWLockAcquire(courier_shared->lock, LW_SHARED);
	for (int i = 0; i < COURIER_MAX_SUBSCRIBERS; i++)
	{
		CourierSubscriberSlot *slot = &courier_shared->subscribers[i];

		if (slot->pid != 0 && slot->latch != NULL)
			SetLatch(slot->latch);
	}
	if (courier_shared->launcher_latch != NULL)
		SetLatch(courier_shared->launcher_latch);
	LWLockRelease(courier_shared->lock);
}

/*
 * courier_wake_subscribers_at_commit
 *		Wake the subscriber workers (and the launcher, which starts the
 *		missing ones) when the current transaction commits: it queued
 *		events for them (courier.emit_events, replay, resume).
 */
void
courier_wake_subscribers_at_commit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(courier_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_subscribers_pending = true;
}

/*
 * courier_wake_launcher
 *		Ask the launcher to look at the pools again (a worker exited, a
 *		setting changed).
 */
void
courier_wake_launcher(void)
{
	if (courier_shared == NULL)
		return;
	LWLockAcquire(courier_shared->lock, LW_SHARED);
	if (courier_shared->launcher_latch != NULL)
		SetLatch(courier_shared->launcher_latch);
	LWLockRelease(courier_shared->lock);
}

/*
 * courier_wake_stage_at_commit
 *		Remember to wake a stage when the current transaction commits: a
 *		30,000-row request wakes once, a rolled-back one not at all.
 */
void
courier_wake_stage_at_commit(CourierStage stage)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(courier_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_pending[stage] = true;
}

static void
courier_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			for (int s = 0; s < COURIER_NUM_STAGES; s++)
			{
				if (wake_pending[s])
					courier_wake_stage((CourierStage) s);
			}
			if (wake_subscribers_pending)
				courier_wake_subscribers();
			memset(wake_pending, 0, sizeof(wake_pending));
			wake_subscribers_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:

			/*
			 * A prepared transaction commits later, perhaps in another
			 * session, where no callback of ours runs: its work is found by
			 * courier.idle_wakeup.  Waking now would only find it invisible;
			 * carrying the wish over would wake at an unrelated commit.
			 */
			memset(wake_pending, 0, sizeof(wake_pending));
			wake_subscribers_pending = false;
			break;
		default:
			break;
	}
}
