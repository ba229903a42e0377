/*-------------------------------------------------------------------------
 *
 * input.c
 *		Validation of the app's input that is more than a range check: the
 *		JSON array of register_orders (keys, types, phone numbers, dates,
 *		statuses, unknown keys), and the check that text bound for a
 *		customer's phone carries no control characters.
 *
 * Everything here only reads its input and raises an error naming the
 * offending element and value; nothing is written.  What the app API does
 * with valid input is api.c's business.
 *
 * IDENTIFICATION
 *		src/input.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "courier.h"
#include "input.h"

static void parse_order(JsonbValue *elem, int index, OrderInput *out);
static JsonbValue *order_field(JsonbContainer *obj, const char *key,
							   int index, bool required);
static int64 json_to_int64(JsonbValue *v, const char *key, int index);
static char *json_to_string(JsonbValue *v, const char *key, int index);
static char *normalize_phone(const char *raw, int index, int64 order_id);
static DateADT parse_iso_date(const char *s, int index, int64 order_id);
static int	cmp_order_input(const void *a, const void *b);

/*
 * courier_parse_orders
 *		Validate register_orders' JSON array and return its orders sorted by
 *		order_id (so that the caller locks them in one canonical order and
 *		two calls naming the same orders cannot deadlock); *n is how many.
 *		Duplicates are the caller's to find.
 */
OrderInput *
courier_parse_orders(Jsonb *jb, int *n_out)
{
	OrderInput *orders;
	int			n;

	if (JB_ROOT_IS_SCALAR(jb) || !JB_ROOT_IS_ARRAY(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("orders must be a JSON array"),
				 errdetail("Each element is an object with order_id, seller_id, customer_phone, product_name and promised_ship_date.")));
	n = JB_ROOT_COUNT(jb);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("orders is empty"),
				 errdetail("A call registers at least one order.")));
	if (n > courier_max_orders_per_request)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("orders has %d elements, more than the limit of %d",
						n, courier_max_orders_per_request),
				 errhint("Split the call, or raise courier.max_orders_per_request.")));

	orders = palloc(sizeof(OrderInput) * n);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(&jb->root, i);

		CHECK_FOR_INTERRUPTS();
		parse_order(elem, i + 1, &orders[i]);
	}

	/*
	 * Write in order_id order: two calls naming the same orders in
	 * different orders then lock them in the same order, and cannot
	 * deadlock.
	 */
	qsort(orders, n, sizeof(OrderInput), cmp_order_input);
	*n_out = n;
	return orders;
}

/*
 * parse_order
 *		Validate element index (1-based) of register_orders' array.
 */
static void
parse_order(JsonbValue *elem, int index, OrderInput *out)
{
	static const char *const known[] = {"order_id", "seller_id",
		"customer_phone", "product_name", "promised_ship_date", "status"};
	JsonbContainer *obj;
	JsonbValue *v;
	int			nfound = 0;

	if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("element %d of orders is not a JSON object", index)));
	obj = elem->val.binary.data;

	out->order_id = json_to_int64(order_field(obj, "order_id", index, true),
								  "order_id", index);
	out->seller_id = json_to_int64(order_field(obj, "seller_id", index, true),
								   "seller_id", index);
	out->phone = normalize_phone(json_to_string(order_field(obj, "customer_phone", index, true),
												"customer_phone", index),
								 index, out->order_id);
	out->product = json_to_string(order_field(obj, "product_name", index, true),
								  "product_name", index);
	if (strspn(out->product, " \t\r\n") == strlen(out->product) ||
		strlen(out->product) > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid product_name in element %d (order " INT64_FORMAT ")",
						index, out->order_id),
				 errdetail("A product name has 1 to 1000 bytes, not all of them blank.")));
	if (courier_control_char_position(out->product) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("product_name in element %d (order " INT64_FORMAT ") contains a control character at byte %d",
						index, out->order_id, courier_control_char_position(out->product)),
				 errdetail("Names are sent to customers as text messages; control characters are not allowed.")));
	out->ship_date = parse_iso_date(json_to_string(order_field(obj, "promised_ship_date", index, true),
												   "promised_ship_date", index),
									index, out->order_id);
	nfound = 5;

	v = order_field(obj, "status", index, false);
	out->status = NULL;
	if (v != NULL)
	{
		static const char *const statuses[] = {"paid", "shipping_requested",
		"invoiced", "shipped", "cancelled"};
		bool		ok = false;

		nfound++;
		out->status = json_to_string(v, "status", index);
		for (int i = 0; i < lengthof(statuses); i++)
			ok |= (strcmp(out->status, statuses[i]) == 0);
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid status \"%s\" in element %d (order " INT64_FORMAT ")",
							out->status, index, out->order_id),
					 errdetail("The statuses are paid, shipping_requested, invoiced, shipped and cancelled.")));
	}

	/* Any other key is a typo the caller wants to hear about. */
	if (JsonContainerSize(obj) > nfound)
	{
		JsonbIterator *it = JsonbIteratorInit(obj);
		JsonbValue	key;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
		{
			bool		ok = false;
			char	   *name;

			if (tok != WJB_KEY)
				continue;
			name = pnstrdup(key.val.string.val, key.val.string.len);
			for (int i = 0; i < lengthof(known); i++)
				ok |= (strcmp(name, known[i]) == 0);
			if (!ok)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("unknown key \"%s\" in element %d of orders",
								name, index),
						 errdetail("The keys are order_id, seller_id, customer_phone, product_name, promised_ship_date and status.")));
		}
	}
}

static JsonbValue *
order_field(JsonbContainer *obj, const char *key, int index, bool required)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);

	if (v == NULL && required)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("element %d of orders has no \"%s\"", index, key)));
	if (v != NULL && v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("\"%s\" is null in element %d of orders", key, index)));
	return v;
}

static int64
json_to_int64(JsonbValue *v, const char *key, int index)
{
	char	   *text;
	char	   *end;
	int64		result;

	if (v->type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" in element %d of orders is not a number", key, index)));
	text = DatumGetCString(DirectFunctionCall1(numeric_out,
											   NumericGetDatum(v->val.numeric)));
	errno = 0;
	result = strtoi64(text, &end, 10);
	if (*end != '\0' || errno != 0 || result <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("\"%s\" in element %d of orders is %s, not a positive bigint",
						key, index, text)));
	return result;
}

static char *
json_to_string(JsonbValue *v, const char *key, int index)
{
	if (v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" in element %d of orders is not a string", key, index)));
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/*
 * normalize_phone
 *		Accept a Korean-style phone number with optional hyphens or spaces
 *		(010-1234-5678) and return its digits; reject anything else, since a
 *		wrong number would only be found when the TMS rejects the notice.
 */
static char *
normalize_phone(const char *raw, int index, int64 order_id)
{
	char	   *digits = palloc(strlen(raw) + 1);
	int			n = 0;
	bool		ok = true;

	for (const char *p = raw; *p; p++)
	{
		if (*p >= '0' && *p <= '9')
			digits[n++] = *p;
		else if (*p != '-' && *p != ' ')
			ok = false;
	}
	digits[n] = '\0';
	if (!ok || n < 10 || n > 11 || digits[0] != '0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid customer_phone \"%s\" in element %d (order " INT64_FORMAT ")",
						raw, index, order_id),
				 errdetail("A phone number has 10 or 11 digits starting with 0, optionally separated by hyphens, e.g. 010-1234-5678.")));
	return digits;
}

/*
 * parse_iso_date
 *		Strict YYYY-MM-DD: the app sends dates in one format, and a lenient
 *		parser would accept swapped months and days.
 */
static DateADT
parse_iso_date(const char *s, int index, int64 order_id)
{
	int			y,
				m,
				d;
	int			consumed = 0;
	int			yy,
				mm,
				dd;

	if (strlen(s) != 10 ||
		sscanf(s, "%4d-%2d-%2d%n", &y, &m, &d, &consumed) != 3 ||
		consumed != 10 || m < 1 || m > 12 || d < 1 || d > 31 || y < 1)
		goto bad;
	j2date(date2j(y, m, d), &yy, &mm, &dd);
	if (yy != y || mm != m || dd != d)
		goto bad;
	return date2j(y, m, d) - POSTGRES_EPOCH_JDATE;

bad:
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_DATETIME_FORMAT),
			 errmsg("invalid promised_ship_date \"%s\" in element %d (order " INT64_FORMAT ")",
					s, index, order_id),
			 errdetail("Dates are written YYYY-MM-DD and must exist in the calendar.")));
	return 0;
}

/*
 * courier_control_char_position
 *		1-based byte position of the first ASCII control character (C0 or
 *		DEL) in s, 0 when there is none.  Text that reaches a customer's
 *		phone must not carry them: carriers garble or reject them.
 */
int
courier_control_char_position(const char *s)
{
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7f)
			return (int) (p - (const unsigned char *) s) + 1;
	}
	return 0;
}

static int
cmp_order_input(const void *a, const void *b)
{
	int64		x = ((const OrderInput *) a)->order_id;
	int64		y = ((const OrderInput *) b)->order_id;

	return (x > y) - (x < y);
}

