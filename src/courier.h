/*-------------------------------------------------------------------------
 *
 * courier.h
 *		What every courier source file shares: the stages, the GUC
 *		variables, the shared-memory state and the entry points each
 *		concern exports to the others.
 *
 * Only names used by more than one file live here; everything else is
 * static in the file that owns it.
 *
 * IDENTIFICATION
 *		src/courier.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_H
#define COURIER_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
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

/* Most workers one stage may run; bounds courier.<stage>_max_workers. */
#define COURIER_MAX_WORKERS_PER_STAGE 16

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
	pg_atomic_uint64 items_retried;
	pg_atomic_uint64 items_failed;
	pg_atomic_uint64 batches;
} CourierStageState;

typedef struct CourierShared
{
	LWLock	   *lock;			/* protects the slots and launcher fields */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	CourierStageState stages[COURIER_NUM_STAGES];
} CourierShared;

extern CourierShared *courier_shared;

extern void courier_shmem_request(void);
extern void courier_shmem_install_hooks(void);
extern void courier_wake_stage_at_commit(CourierStage stage);
extern void courier_wake_stage(CourierStage stage);
extern void courier_wake_launcher(void);
extern int	courier_reserve_slot(CourierStage stage);
extern void courier_release_slot(CourierStage stage, int slot);
extern int	courier_slots_in_use(CourierStage stage);

/* ----------
 * Stages, names and switches (switches.c)
 * ----------
 */
extern const char *courier_stage_name(CourierStage stage);
extern CourierStage courier_stage_from_name(const char *name);
extern bool courier_stage_runnable(CourierStage stage, const char **why);

/* ----------
 * Claiming and retry state (claim.c, retry.c)
 * ----------
 */
extern int	courier_execute_kept(SPIPlanPtr *plan, const char *sql, int nargs,
								 Oid *argtypes, Datum *values,
								 const char *nulls, int expected);
extern Datum courier_ids_to_array(int *n);
extern Datum courier_claim_due(CourierStage stage, int limit, int *nclaimed);
extern Datum courier_last_claim(int *n);
extern int	courier_lease_due(CourierStage stage, int limit, int lease_ms);
extern void courier_charge_attempt(Datum item_ids, const char *error,
								   const char *sqlstate, int http_status,
								   bool permanent);
extern double courier_backoff_ms(int attempt);

/* ----------
 * Stage processing (logic.c)
 * ----------
 */
extern int	courier_logic_run_batch(void);
extern int	courier_run_batch(CourierStage stage);

/* ----------
 * Background workers (launcher.c, worker.c)
 * ----------
 */
extern void courier_register_launcher(void);
extern PGDLLEXPORT void courier_launcher_main(Datum main_arg);
extern PGDLLEXPORT void courier_worker_main(Datum main_arg);

#endif							/* COURIER_H */
