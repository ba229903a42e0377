/*-------------------------------------------------------------------------
 *
 * switches.c
 *		Stage names and the operator's switches: whether a stage may run
 *		now (the kill switch courier.enabled and the per-stage pauses).
 *
 * The switches are GUCs (guc.c) so that ALTER SYSTEM + pg_reload_conf()
 * reaches running workers; this file only interprets them.  Nothing here
 * touches the database.
 *
 * IDENTIFICATION
 *		src/switches.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "courier.h"

static const char *const stage_names[COURIER_NUM_STAGES] = {"logic", "tms"};

const char *
courier_stage_name(CourierStage stage)
{
	Assert(stage >= 0 && stage < COURIER_NUM_STAGES);
	return stage_names[stage];
}

/*
 * courier_stage_from_name
 *		Map a stage name given by a user to the stage, or report the names
 *		that exist.
 */
CourierStage
courier_stage_from_name(const char *name)
{
	for (int s = 0; s < COURIER_NUM_STAGES; s++)
	{
		if (strcmp(name, stage_names[s]) == 0)
			return (CourierStage) s;
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown courier stage \"%s\"", name),
			 errhint("The stages are \"logic\" and \"tms\".")));
	return COURIER_STAGE_LOGIC;	/* keep compiler quiet */
}

/*
 * courier_stage_runnable
 *		May this stage process work now?  When not, *why names the switch
 *		that holds it, for logs and notices.
 */
bool
courier_stage_runnable(CourierStage stage, const char **why)
{
	if (!courier_enabled)
	{
		*why = "courier.enabled is off";
		return false;
	}
	if (stage == COURIER_STAGE_LOGIC && courier_pause_logic)
	{
		*why = "courier.pause_logic is on";
		return false;
	}
	if (stage == COURIER_STAGE_TMS && courier_pause_tms)
	{
		*why = "courier.pause_tms is on";
		return false;
	}
	if (stage == COURIER_STAGE_TMS && courier_tms_mode == COURIER_TMS_OFF)
	{
		*why = "courier.tms_mode is off";
		return false;
	}
	if (stage == COURIER_STAGE_TMS && courier_tms_mode == COURIER_TMS_LIVE &&
		(courier_tms_url == NULL || courier_tms_url[0] == '\0'))
	{
		*why = "courier.tms_url is not set";
		return false;
	}
	*why = NULL;
	return true;
}
