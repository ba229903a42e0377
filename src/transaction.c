/*-------------------------------------------------------------------------
 *
 * transaction.c
 *		How every background process of courier runs: the start of each
 *		turn of its loop, the search_path it pins before any statement, the
 *		one transaction bracket of the launcher and the workers, the kept
 *		(prepared once, generic) plans with the planner pinned to their
 *		shapes, and the int8[] datums that carry claimed ids into those
 *		statements.
 *
 * A leaf: it knows no stage, no queue and no HTTP, and calls nothing else
 * of courier.  What the statements say is their callers' business.
 *
 * IDENTIFICATION
 *		src/transaction.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "courier.h"

/*
 * courier_pin_search_path
 *		Resolve every name a background process's SQL uses in pg_catalog
 *		(and pg_temp last), whatever search_path the database or role sets:
 *		a schema on that path that another role can create objects in would
 *		let that role's functions and operators run with courier's rights.
 *		Called right after connecting, before any SQL.
 */
void
courier_pin_search_path(void)
{
	SetConfigOption("search_path", "pg_catalog, pg_temp",
					PGC_SUSET, PGC_S_SESSION);
}

/*
 * courier_loop_turn
 *		The start of each turn of a background process's loop: serve
 *		interrupts, apply a configuration reload (courier's switches are
 *		flipped that way), and free what the last turn allocated in
 *		loop_context, which becomes current.
 */
void
courier_loop_turn(MemoryContext loop_context)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	MemoryContextReset(loop_context);
	MemoryContextSwitchTo(loop_context);
}

/*
 * courier_dead_batch_backoff_ms
 *		How long a background process waits after its dead_batches-th
 *		batch in a row died whole: 1 s, doubling, up to a minute, so that
 *		a persistent error neither spins nor makes the process exit.
 */
long
courier_dead_batch_backoff_ms(int dead_batches)
{
	return Min(1000L << Min(Max(dead_batches, 1) - 1, 10), 60000L);
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
 * courier_prepare_kept
 *		Prepare a statement once per process and keep it.  Callers cache the
 *		result in a static; the plan cache revalidates it if the extension's
 *		tables are recreated.
 *
 * custom false: the plan is generic from the first execution.  Most of
 * courier's statements take their rows from unnest($1) of claimed ids and
 * reach tables through primary keys, which a generic plan does with nested
 * loops; custom plans, made with the real 1,000-element array, chose hash
 * joins over whole scans of the queue and made the first batches of every
 * new process 2-3 times slower.
 *
 * custom true: planned anew at every execution, with the real arrays and
 * the tables' current sizes, for the statements that join a batch to the
 * notices (record, charge).  A generic plan is made once, from the
 * statistics of that moment: one made while courier.notices was empty and
 * analyzed so (a fresh install, a TRUNCATE and ANALYZE) believed it held
 * one row and scanned its whole primary key for every row of the batch,
 * for as long as the process lived.  (Citus plans such joins only custom.)
 */
SPIPlanPtr
courier_prepare_kept(const char *sql, int nargs, Oid *argtypes, bool custom)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes,
										  custom ? CURSOR_OPT_CUSTOM_PLAN :
										  CURSOR_OPT_GENERIC_PLAN);

	if (plan == NULL)
		elog(ERROR, "courier: SPI_prepare failed (%s): %s",
			 SPI_result_code_string(SPI_result), sql);
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "courier: SPI_keepplan failed");
	return plan;
}

/*
 * courier_execute_pinned
 *		Execute a kept plan with the planner pinned to the shapes courier's
 *		statements are written for, whatever the statistics say when the
 *		plan is made (or remade after an ANALYZE).
 *
 * Every kept statement reaches courier's tables from claimed ids or keys,
 * through indexes: no sequential scan.  A plan made while the queue was
 * empty, or from statistics that say few orders are open, would otherwise
 * hash-join a sequential scan of the whole queue or of every order into
 * each batch: milliseconds at a few rows, seconds at a million.  A claim
 * (claim) also goes without sorts and bitmap scans: the queue fills and
 * empties faster than autovacuum analyzes it, and with the statistics it
 * has the planner often believes few items are due and picks a bitmap
 * scan that reads and sorts every due item, instead of the ordered scan
 * of work_items_due that stops after LIMIT rows.  JIT is off: a scan the
 * planner must still make (of a table too small to need an index) costs
 * as much as a disabled one, which would set off JIT compilation of the
 * whole statement (measured: 100 ms added to a batch of 1,000 that
 * takes 30).  The settings are made the way a function's SET clause makes
 * them, for this statement only.
 */
int
courier_execute_pinned(SPIPlanPtr plan, Datum *values, const char *nulls,
					   bool claim)
{
	int			save_nestlevel = NewGUCNestLevel();
	int			ret;

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("jit", "off", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (claim)
	{
		(void) set_config_option("enable_sort", "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	}
	ret = SPI_execute_plan(plan, values, nulls, false, 0);
	AtEOXact_GUC(true, save_nestlevel);
	return ret;
}

/*
 * courier_execute_kept
 *		Run a statement kept by the caller in *plan (preparing it on first
 *		use, generic, unless the caller prepared it custom) and check it
 *		succeeded.  Every courier statement goes through
 *		here so the error handling is in one place, and so is the planner's
 *		pinning (courier_execute_pinned).
 */
int
courier_execute_kept(SPIPlanPtr *plan, const char *sql, int nargs,
					 Oid *argtypes, Datum *values, const char *nulls,
					 int expected)
{
	int			ret;

	if (*plan == NULL)
		*plan = courier_prepare_kept(sql, nargs, argtypes, false);
	ret = courier_execute_pinned(*plan, values, nulls, false);
	if (ret != expected)
		elog(ERROR, "courier: statement failed (%s): %s",
			 SPI_result_code_string(ret), sql);
	return ret;
}

/*
 * courier_int8_array
 *		An int8[] datum of values[0..n), in the current memory context: the
 *		form in which ids reach courier's statements ($1::bigint[]).
 */
Datum
courier_int8_array(Datum *values, int n)
{
	return PointerGetDatum(construct_array(values, n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * courier_ids_to_array
 *		Collect the int8 first column of the last SPI result into an int8[]
 *		datum, allocated in the caller's (per-batch) context.
 */
Datum
courier_ids_to_array(int *n)
{
	uint64		nrows = SPI_processed;
	Datum	   *ids;

	ids = palloc(sizeof(Datum) * Max(nrows, 1));
	for (uint64 i = 0; i < nrows; i++)
	{
		bool		isnull;

		ids[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
							   1, &isnull);
	}
	*n = (int) nrows;
	return courier_int8_array(ids, (int) nrows);
}


/*
 * courier_installed_version
 *		The version of the courier extension installed in this database
 *		(pg_extension.extversion), or NULL before CREATE EXTENSION; in the
 *		current memory context.  SPI connected.  A library newer than the
 *		installed schema must not run its statements on it: the launcher
 *		starts no worker, run_once refuses, the app API writes what the
 *		older schema holds.
 */
char *
courier_installed_version(void)
{
	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension"
					" WHERE extname = 'courier'", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not look up pg_extension");
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}
