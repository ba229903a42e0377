/*-------------------------------------------------------------------------
 *
 * provider.c
 *		The registry of TMS provider dialects: which dialects courier speaks,
 *		by name.
 *
 * A dialect is one file, provider_<name>.c, defining one CourierProvider
 * named courier_provider_<name> (provider.h), and one line in the list
 * below; the Makefile builds every .c file of src/.  What the dialects
 * share is in provider_common.c.
 *
 * IDENTIFICATION
 *		src/provider.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "provider.h"

/* The dialects, one line each. */
#define COURIER_PROVIDERS(X) \
	X(generic)

#define DECLARE_PROVIDER(name) extern const CourierProvider courier_provider_##name;
#define LIST_PROVIDER(name) &courier_provider_##name,

COURIER_PROVIDERS(DECLARE_PROVIDER)

static const CourierProvider *const providers[] = {
	COURIER_PROVIDERS(LIST_PROVIDER)
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
