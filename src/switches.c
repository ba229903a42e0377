/*-------------------------------------------------------------------------
 *
 * switches.c
 *		Stage names and the operator's switches: whether a stage may run
 *		now (the kill switch courier.enabled and the per-stage pauses).
 *
 * Also the rollout switches: courier.rollout_<name> (one dot: PostgreSQL
 * 15's configuration file parser takes no more), a percentage (or
 * on/off) of orders that take a new path.  Whether an order is in is
 * decided by a stable hash of the switch name and the order id, so the same
 * order always takes the same path and raising the percentage only adds
 * orders.  courier.switch_enabled(name, key) evaluates one from SQL.
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

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "courier.h"

PG_FUNCTION_INFO_V1(courier_switch_enabled);
PG_FUNCTION_INFO_V1(courier_rollout_bucket);

/*
 * The rollout switches courier knows.  PostgreSQL 15's ALTER SYSTEM only
 * accepts parameters a module defined, so each is a GUC of its own.
 */
typedef struct RolloutSwitch
{
	const char *name;
	const char *description;
	int			boot_percent;
	char	   *value;			/* the GUC's string, checked by check_rollout */
} RolloutSwitch;

static RolloutSwitch rollouts[] = {
	{"notice_v2", "Share of orders whose notices use courier.notice_template_v2.", 0, NULL},
	{"overdue_sweep", "Share of overdue orders courier.sweep_overdue() notifies.", 100, NULL},
};

static bool check_rollout(char **newval, void **extra, GucSource source);
static bool courier_switch_is_on(const char *name, int64 key);

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

/*
 * parse_percent
 *		"on"/"off"/"true"/"false", or 0 to 100 with an optional "%".
 */
static int
parse_percent(const char *s)
{
	char	   *end;
	long		v;

	if (pg_strcasecmp(s, "on") == 0 || pg_strcasecmp(s, "true") == 0)
		return 100;
	if (pg_strcasecmp(s, "off") == 0 || pg_strcasecmp(s, "false") == 0)
		return 0;
	v = strtol(s, &end, 10);
	if (end == s || (*end != '\0' && strcmp(end, "%") != 0) || v < 0 || v > 100)
		return -1;
	return (int) v;
}

static bool
check_rollout(char **newval, void **extra, GucSource source)
{
	if (parse_percent(*newval) < 0)
	{
		GUC_check_errdetail("A rollout switch is a percentage from 0 to 100, or on or off.");
		return false;
	}
	return true;
}

/*
 * courier_define_rollouts
 *		Define courier.rollout_<name> for every known switch.  Called from
 *		courier_define_gucs, before the prefix is reserved.
 */
void
courier_define_rollouts(void)
{
	for (int i = 0; i < lengthof(rollouts); i++)
	{
		char		boot[8];

		snprintf(boot, sizeof(boot), "%d", rollouts[i].boot_percent);
		DefineCustomStringVariable(psprintf("courier.rollout_%s", rollouts[i].name),
								   rollouts[i].description,
								   NULL,
								   &rollouts[i].value,
								   pstrdup(boot),
								   PGC_SUSET,
								   0,
								   check_rollout, NULL, NULL);
	}
}

/*
 * rollout_bucket
 *		The order's place, 0 to 99, on a switch's scale: FNV-1a over the
 *		switch name and the key.  It is stable across processes, restarts
 *		and versions (no seed, no PostgreSQL hash function that may change),
 *		and independent between switches.
 */
static int
rollout_bucket(const char *name, int64 key)
{
	uint64		h = UINT64CONST(14695981039346656037);

	for (const char *p = name; *p; p++)
	{
		h ^= (unsigned char) *p;
		h *= UINT64CONST(1099511628211);
	}
	for (int i = 0; i < 8; i++)
	{
		h ^= (unsigned char) ((uint64) key >> (8 * i));
		h *= UINT64CONST(1099511628211);
	}
	return (int) (h % 100);
}

/*
 * courier_rollout_percent
 *		The percentage switch name is rolled out to now (courier.rollout_<name>).
 *		A statement that decides many orders takes it once, as a parameter,
 *		and compares courier.rollout_bucket() with it.
 */
int
courier_rollout_percent(const char *name)
{
	for (int i = 0; i < lengthof(rollouts); i++)
	{
		if (strcmp(rollouts[i].name, name) == 0)
			return parse_percent(rollouts[i].value);
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("unknown rollout switch \"%s\"", name),
			 errhint("The switches are notice_v2 and overdue_sweep (courier.rollout_<name>).")));
	return 0;
}

/*
 * courier_switch_is_on
 *		Is key (an order id) inside switch name's rollout?
 */
static bool
courier_switch_is_on(const char *name, int64 key)
{
	return rollout_bucket(name, key) < courier_rollout_percent(name);
}

/*
 * courier_switch_enabled
 *		SQL: courier.switch_enabled(name text, key bigint) returns boolean.
 */
Datum
courier_switch_enabled(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_BOOL(courier_switch_is_on(name, PG_GETARG_INT64(1)));
}

/*
 * courier_rollout_bucket
 *		SQL: courier.rollout_bucket(name text, key bigint) returns integer,
 *		the key's place (0-99) on the switch's scale.  Immutable: it depends
 *		on its arguments only, so a statement may call it anywhere (Citus
 *		refuses stable functions in CASE); the percentage comes in apart.
 */
Datum
courier_rollout_bucket(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_INT32(rollout_bucket(name, PG_GETARG_INT64(1)));
}
