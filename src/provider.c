/*-------------------------------------------------------------------------
 *
 * provider.c
 *		The registry of TMS provider dialects: which dialects courier speaks,
 *		by name and by the value of courier.tms_provider.
 *
 * A dialect is one file, provider_<name>.c, defining one CourierProvider
 * named courier_provider_<name> (provider.h), and one line in the list
 * COURIER_PROVIDERS of provider.h; the Makefile builds every .c file of
 * src/.  What the dialects share is in provider_common.c.
 *
 * IDENTIFICATION
 *		src/provider.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "provider.h"

#define DECLARE_PROVIDER(name) extern const CourierProvider courier_provider_##name;
#define LIST_PROVIDER(name) &courier_provider_##name,

COURIER_PROVIDERS(DECLARE_PROVIDER)

/* in the order of CourierProviderId, the values of courier.tms_provider */
static const CourierProvider *const providers[] = {
	COURIER_PROVIDERS(LIST_PROVIDER)
};

StaticAssertDecl(lengthof(providers) == COURIER_NUM_PROVIDERS,
				 "one dialect per CourierProviderId");

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

/*
 * courier_provider_by_id
 *		The dialect courier.tms_provider names (a CourierProviderId), or
 *		NULL for a value out of range.
 */
const CourierProvider *
courier_provider_by_id(int id)
{
	if (id < 0 || id >= (int) lengthof(providers))
		return NULL;
	return providers[id];
}
