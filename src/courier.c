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
#include "utils/guc.h"

#include "courier.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static emit_log_hook_type prev_emit_log_hook = NULL;
static void redact_secrets(ErrorData *edata);

void
_PG_init(void)
{
	courier_define_gucs();
	courier_define_rollouts();
	MarkGUCPrefixReserved("courier");

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = redact_secrets;

	if (!process_shared_preload_libraries_in_progress)
		return;

	courier_shmem_install_hooks();
	courier_limits_install_hooks();
	courier_register_launcher();
}

/*
 * redact_secrets
 *		When the configuration is reloaded, the postmaster logs every changed
 *		parameter with its new value, superuser-only or not.  For courier's
 *		secrets (the TMS credentials) keep the fact, drop the value.
 */
static void
redact_secrets(ErrorData *edata)
{
	static const char *const secrets[] = {
		"courier.tms_auth_header",
		"courier.tms_hmac_access_key",
		"courier.tms_hmac_secret",
	};

	if (edata->message_id != NULL && edata->message != NULL &&
		strcmp(edata->message_id, "parameter \"%s\" changed to \"%s\"") == 0)
	{
		for (int i = 0; i < lengthof(secrets); i++)
		{
			char	   *quoted = psprintf("\"%s\"", secrets[i]);

			if (strstr(edata->message, quoted) != NULL)
				edata->message = psprintf("parameter %s changed (value not logged)",
										  quoted);
			pfree(quoted);
		}
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}
