/*-------------------------------------------------------------------------
 *
 * provider.c
 *		The registry of TMS provider dialects: which dialects courier speaks,
 *		by name.
 *
 * A dialect is one file, provider_<name>.c, defining one CourierProvider
 * (provider.h), and one line in the table below (with its extern).  What
 * the dialects share is in provider_common.c.
 *
 * IDENTIFICATION
 *		src/provider.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "provider.h"

/* The dialects, one line each. */
extern const CourierProvider courier_provider_generic;

static const CourierProvider *const providers[] = {
	&courier_provider_generic,
};

/*
 * courier_provider_lookup
 *		The dialect of that name, or NULL when there is none.
 */
const CourierProvider *
courier_provider_lookup(const char *name)
{
	for (int i = 0; i < lengthof(providers); i++)
	{
		if (strcmp(providers[i]->name, name) == 0)
			return providers[i];
	}
	return NULL;
}
