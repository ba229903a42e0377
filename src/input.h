/*-------------------------------------------------------------------------
 *
 * input.h
 *		Validated input of the app API (input.c), for api.c.
 *
 * IDENTIFICATION
 *		src/input.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_INPUT_H
#define COURIER_INPUT_H

#include "utils/date.h"
#include "utils/jsonb.h"

/* One order of register_orders' input, validated. */
typedef struct OrderInput
{
	int64		order_id;
	int64		seller_id;
	char	   *phone;
	char	   *product;
	DateADT		ship_date;
	char	   *status;			/* NULL: keep (or 'paid' when new) */
} OrderInput;

extern OrderInput *courier_parse_orders(Jsonb *jb, int *n);
extern int	courier_control_char_position(const char *s);

#endif							/* COURIER_INPUT_H */
