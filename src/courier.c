/*-------------------------------------------------------------------------
 *
 * courier.c
 *		Module entry point: defines the GUCs and, when courier is in
 *		shared_preload_libraries, asks for shared memory and registers the
 *		launcher background worker.
 *
 * Loaded without preloading (plain CREATE EXTENSION), courier still works
 * through run_once; it just has no workers and wakes no one.
 *
 * IDENTIFICATION
 *		src/courier.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "courier.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	courier_define_gucs();

	if (!process_shared_preload_libraries_in_progress)
		return;

	courier_shmem_install_hooks();
	courier_register_launcher();
}
