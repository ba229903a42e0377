/*-------------------------------------------------------------------------
 *
 * api.c
 *		The app API: register_orders, request_shipping, register_invoice
 *		and delay_orders, with the checks of order ids they share.
 *
 * The app API validates its whole input before anything is written, or
 * raises an error that rolls back everything the call did: a caller never
 * sees half a request.  Each kind of bad input has its own SQLSTATE and
 * names the offending values.  Processing of queued work is not done here
 * (logic.c); this file only validates, writes and wakes the workers.
 * The orders JSON and the text checks are validated in input.c; the
 * operators' functions (run_once, ...) are in ops.c.
 *
 * IDENTIFICATION
 *		src/api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "courier.h"
#include "input.h"

PG_FUNCTION_INFO_V1(courier_register_orders);
PG_FUNCTION_INFO_V1(courier_request_shipping);
PG_FUNCTION_INFO_V1(courier_register_invoice);
PG_FUNCTION_INFO_V1(courier_delay_orders);

/* How many offending values an error message names. */
#define NAMED_IN_ERROR 5

static Datum *check_order_ids(ArrayType *arr, const char *argname, int *n);
static void check_no_duplicates(Datum *ids, int n, const char *argname);
static void write_every_order(const char *sql, int nargs, Oid *argtypes,
							  Datum *values, int expected, Datum ids, int n,
							  const char *action);
static void report_unusable_orders(Datum ids_array, const char *action);
static int64 find_offending_orders(Datum ids_array, const char *join_where,
								   bool with_status, StringInfo list);
static char *date_to_cstring(DateADT d);
static bool schema_is_at_least(const char *version);
static const char *app_traceparent(void);
static void refuse_seller_change(Datum *values);

/* ----------------------------------------------------------------
 * Validation helpers shared by the app API
 * ----------------------------------------------------------------
 */

/*
 * check_order_ids
 *		Validate an array of order ids given to the app API: not NULL,
 *		one-dimensional, not empty, no NULL element, within
 *		courier.max_orders_per_request, no duplicates.  Returns the ids.
 */
static Datum *
check_order_ids(ArrayType *arr, const char *argname, int *n)
{
	Datum	   *ids;
	bool	   *nulls;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", argname)));

	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &ids, &nulls, n);
	if (*n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is empty", argname),
				 errdetail("A request names at least one order.")));
	if (*n > courier_max_orders_per_request)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s names %d orders, more than the limit of %d",
						argname, *n, courier_max_orders_per_request),
				 errhint("Split the request, or raise courier.max_orders_per_request.")));
	for (int i = 0; i < *n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s contains a NULL at position %d", argname, i + 1),
					 errdetail("Every element must be an order id.")));
	}
	check_no_duplicates(ids, *n, argname);
	return ids;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * check_no_duplicates
 *		Reject an id named twice: a duplicate is almost always a bug in the
 *		caller, and applying it twice would count the order twice.
 */
static void
check_no_duplicates(Datum *ids, int n, const char *argname)
{
	int64	   *sorted = palloc(sizeof(int64) * n);
	StringInfoData dups;
	int			ndups = 0;

	for (int i = 0; i < n; i++)
		sorted[i] = DatumGetInt64(ids[i]);
	qsort(sorted, n, sizeof(int64), cmp_int64);

	initStringInfo(&dups);
	for (int i = 1; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (sorted[i] != sorted[i - 1] || (i > 1 && sorted[i] == sorted[i - 2]))
			continue;
		if (ndups < NAMED_IN_ERROR)
			appendStringInfo(&dups, "%s" INT64_FORMAT, ndups ? ", " : "",
							 sorted[i]);
		ndups++;
	}
	if (ndups > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg_plural("%s names %d order more than once",
							   "%s names %d orders more than once",
							   ndups, argname, ndups),
				 errdetail("Named more than once: %s%s.", dups.data,
						   ndups > NAMED_IN_ERROR ? ", ..." : "")));
	pfree(sorted);
}

/*
 * write_every_order
 *		Run a statement of the app API that must write one row for each of
 *		the n orders of ids (one of its parameters), or raise the error that
 *		names the orders it could not use (report_unusable_orders), which
 *		rolls back what it wrote.  SPI connected.
 */
static void
write_every_order(const char *sql, int nargs, Oid *argtypes, Datum *values,
				  int expected, Datum ids, int n, const char *action)
{
	if (SPI_execute_with_args(sql, nargs, argtypes, values, NULL, false, 0) != expected)
		elog(ERROR, "courier: could not %s the orders", action);
	if (SPI_processed != (uint64) n)
		report_unusable_orders(ids, action);
}

/*
 * report_unusable_orders
 *		Called when some ids of a request are unknown or closed (invoiced,
 *		shipped, cancelled): find which, and raise the matching error naming
 *		the first few.  Unknown ids are reported first.
 */
static void
report_unusable_orders(Datum ids_array, const char *action)
{
	StringInfoData list;
	int64		total;

	total = find_offending_orders(ids_array,
								  "LEFT JOIN courier.orders o ON o.order_id = u.id"
								  " WHERE o.order_id IS NULL",
								  false, &list);
	if (total > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg_plural("%lld unknown order id", "%lld unknown order ids",
							   total, (long long) total),
				 errdetail("Not registered: %s%s.", list.data,
						   total > NAMED_IN_ERROR ? ", ..." : ""),
				 errhint("Register orders with courier.register_orders() first.")));

	total = find_offending_orders(ids_array,
								  "JOIN courier.orders o ON o.order_id = u.id"
								  " WHERE o.status NOT IN ('paid', 'shipping_requested')",
								  true, &list);
	if (total > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg_plural("cannot %s %lld order that is already closed",
							   "cannot %s %lld orders that are already closed",
							   total, action, (long long) total),
				 errdetail("Closed: %s%s.", list.data,
						   total > NAMED_IN_ERROR ? ", ..." : ""),
				 errhint("Only paid or shipping_requested orders can be changed.")));

	/*
	 * Every id looked usable on the second look, which reads with the
	 * snapshot the call started with: the writing statement, with its newer
	 * snapshot, saw an order closed by a transaction that committed after
	 * the call started.  Nothing was written; trying again is the answer
	 * (and then names the closed order).
	 */
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not %s the orders: they changed while the request was validated",
					action),
			 errdetail("A concurrent transaction changed some of the orders; nothing was written."),
			 errhint("Retry the call.")));
}

/*
 * find_offending_orders
 *		Count the ids of a request that the join-and-filter clause keeps, and
 *		list the first few in *list ("5, 9" or, with_status, "order 5 is
 *		shipped, order 9 is cancelled") in the order the caller gave them.
 */
static int64
find_offending_orders(Datum ids_array, const char *join_where, bool with_status,
					  StringInfo list)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1] = {ids_array};
	bool		isnull;

	if (SPI_execute_with_args(psprintf("SELECT u.id, o.status::text, pg_catalog.count(*) OVER ()"
									   "  FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(id, ord) %s"
									   " ORDER BY u.ord LIMIT %d",
									   join_where, NAMED_IN_ERROR),
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not look up the offending orders");
	initStringInfo(list);
	if (SPI_processed == 0)
		return 0;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *id = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		if (with_status)
			appendStringInfo(list, "%sorder %s is %s", i ? ", " : "", id,
							 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
		else
			appendStringInfo(list, "%s%s", i ? ", " : "", id);
	}
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									   3, &isnull));
}

static char *
date_to_cstring(DateADT d)
{
	return DatumGetCString(DirectFunctionCall1(date_out, DateADTGetDatum(d)));
}

/*
 * app_traceparent
 *		The app's trace for the work of this call: courier.traceparent when
 *		it is set (its check hook let only a valid one in), else NULL.
 */
static const char *
app_traceparent(void)
{
	return courier_traceparent != NULL && courier_traceparent[0] != '\0' ?
		courier_traceparent : NULL;
}

/*
 * schema_is_at_least
 *		Is the installed schema that version or later?  0.3 put the tms
 *		queue in the notices and the logic queue in slots; 0.4 made every
 *		key start with seller_id.  Between the restart that loads a new
 *		library and ALTER EXTENSION courier UPDATE the app keeps calling
 *		courier: its functions then write what the older schema holds.
 *		(Versions are "0.N" with one digit, so they compare as strings.)
 */
static bool
schema_is_at_least(const char *version)
{
	char	   *installed = courier_installed_version();

	return installed != NULL && strcmp(installed, version) >= 0;
}

/* ----------------------------------------------------------------
 * register_orders(jsonb)
 * ----------------------------------------------------------------
 */

/*
 * refuse_seller_change
 *		An order never changes seller: raise an error naming the first few
 *		orders of the input ($1 ids, $2 sellers) that are registered under
 *		another seller.  Courier's tables are keyed by (seller_id, ...) so
 *		that they can be sharded by seller (docs/citus.md): moving an order
 *		would mean moving its row to another shard, and no index keeps an
 *		order id unique across sellers.  Reads with a fresh snapshot, right
 *		before the orders are written.
 */
static void
refuse_seller_change(Datum *values)
{
	Oid			argtypes[2] = {INT8ARRAYOID, INT8ARRAYOID};
	StringInfoData list;
	uint64		total;

	if (SPI_execute_with_args(
			"SELECT u.id, o.seller_id, u.seller"
			"  FROM unnest($1, $2) AS u(id, seller)"
			"  JOIN courier.orders o ON o.order_id = u.id"
			" WHERE o.seller_id <> u.seller"
			" ORDER BY u.id",
			2, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not read orders");
	total = SPI_processed;
	if (total == 0)
		return;

	initStringInfo(&list);
	for (uint64 i = 0; i < total && i < NAMED_IN_ERROR; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		appendStringInfo(&list, "%sorder %s is registered under seller %s, not %s",
						 i > 0 ? "; " : "", SPI_getvalue(tup, desc, 1),
						 SPI_getvalue(tup, desc, 2), SPI_getvalue(tup, desc, 3));
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg_plural("%llu order would change seller",
						   "%llu orders would change seller",
						   total, (unsigned long long) total),
			 errdetail("%s%s.", list.data, total > NAMED_IN_ERROR ? "; ..." : ""),
			 errhint("An order never changes seller: register it again under its seller, or use a new order id for the other seller's order.")));
}

/*
 * courier_register_orders
 *		Add or update orders from a JSON array.  Every element is checked
 *		(required keys, types, phone, date, status, no unknown keys, no
 *		order twice) before one INSERT and one UPDATE write them all.
 */
Datum
courier_register_orders(PG_FUNCTION_ARGS)
{
	int			n;
	OrderInput *orders;
	Datum	   *ids,
			   *sellers,
			   *phones,
			   *products,
			   *dates,
			   *statuses;
	bool	   *status_nulls;
	Oid			argtypes[7] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, DATEARRAYOID, TEXTARRAYOID, TIMESTAMPTZOID};
	Datum		values[7];
	int			dims[1];
	int			lbs[1] = {1};

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("orders must not be NULL"),
				 errdetail("Pass a JSON array of order objects.")));
	orders = courier_parse_orders(PG_GETARG_JSONB_P(0), &n);
	ids = palloc(sizeof(Datum) * n);
	sellers = palloc(sizeof(Datum) * n);
	phones = palloc(sizeof(Datum) * n);
	products = palloc(sizeof(Datum) * n);
	dates = palloc(sizeof(Datum) * n);
	statuses = palloc(sizeof(Datum) * n);
	status_nulls = palloc(sizeof(bool) * n);

	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(orders[i].order_id);
		sellers[i] = Int64GetDatum(orders[i].seller_id);
		phones[i] = CStringGetTextDatum(orders[i].phone);
		products[i] = CStringGetTextDatum(orders[i].product);
		dates[i] = DateADTGetDatum(orders[i].ship_date);
		status_nulls[i] = (orders[i].status == NULL);
		statuses[i] = status_nulls[i] ? (Datum) 0 :
			CStringGetTextDatum(orders[i].status);
	}
	check_no_duplicates(ids, n, "orders");

	dims[0] = n;
	values[0] = courier_int8_array(ids, n);
	values[1] = courier_int8_array(sellers, n);
	values[2] = PointerGetDatum(construct_array(phones, n, TEXTOID, -1, false,
												TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(products, n, TEXTOID, -1, false,
												TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(dates, n, DATEOID, 4, true,
												TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_md_array(statuses, status_nulls, 1,
												   dims, lbs, TEXTOID, -1,
												   false, TYPALIGN_INT));
	values[6] = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());

	SPI_connect();

	refuse_seller_change(values);

	/*
	 * New orders first, in order_id order, then the ones that existed:
	 * locked in order_id order before the UPDATE (whose join may visit them
	 * in any order), which then sees, with its fresh snapshot, also rows a
	 * concurrent call inserted in between.  Rows this call just inserted
	 * are identical to their input and are skipped.
	 *
	 * An existing order that courier delayed keeps its promised date: the
	 * app's copy of the date is older than the delay the customer was told
	 * about.  Closing an order here (status invoiced, shipped, cancelled)
	 * drops its pending notice like register_invoice does (the trigger
	 * courier.order_closed).
	 */
	if (SPI_execute_with_args(psprintf(
			"INSERT INTO courier.orders (order_id, seller_id, customer_phone,"
			"    product_name, promised_ship_date, status)"
			"SELECT u.id, u.seller, u.phone, u.product, u.ship,"
			"       coalesce(u.status::courier.order_status, 'paid')"
			"  FROM unnest($1, $2, $3, $4, $5, $6)"
			"       AS u(id, seller, phone, product, ship, status)"
			" ORDER BY u.id "
			"ON CONFLICT (%s) DO NOTHING",
			schema_is_at_least("0.4") ? "seller_id, order_id" : "order_id"),
			6, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "courier: could not insert orders");
	if (SPI_processed < (uint64) n)
	{
		if (SPI_execute_with_args(
				"SELECT 1 FROM courier.orders o"
				" WHERE o.order_id = ANY ($1)"
				" ORDER BY o.order_id, o.seller_id FOR UPDATE",
				1, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "courier: could not lock orders");
		if (SPI_execute_with_args(
				"UPDATE courier.orders o"
				"   SET customer_phone = u.phone,"
				"       product_name = u.product,"
				"       promised_ship_date = CASE WHEN o.delay_reason IS NULL"
				"           THEN u.ship ELSE o.promised_ship_date END,"
				"       status = coalesce(u.status::courier.order_status, o.status),"
				"       updated_at = $7"
				"  FROM unnest($1, $2, $3, $4, $5, $6)"
				"       AS u(id, seller, phone, product, ship, status)"
				" WHERE o.seller_id = u.seller AND o.order_id = u.id"
				"   AND ((o.customer_phone, o.product_name)"
				"        IS DISTINCT FROM (u.phone, u.product)"
				"        OR (o.delay_reason IS NULL AND o.promised_ship_date <> u.ship)"
				"        OR o.status::text <> coalesce(u.status, o.status::text))",
				7, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "courier: could not update orders");
	}

	SPI_finish();
	PG_RETURN_INT32(n);
}

/* ----------------------------------------------------------------
 * request_shipping(bigint[]) and register_invoice(bigint, text)
 * ----------------------------------------------------------------
 */

/*
 * courier_request_shipping
 *		Payment completed: the orders become shipping_requested and their
 *		invoice deadline starts.  Asking again for an order already
 *		requested keeps its first deadline.
 */
Datum
courier_request_shipping(PG_FUNCTION_ARGS)
{
	Datum	   *ids;
	int			n;
	Datum		arr;
	Oid			argtypes[3] = {INT8ARRAYOID, INT4OID, TIMESTAMPTZOID};
	Datum		values[3];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("order_ids must not be NULL")));
	ids = check_order_ids(PG_GETARG_ARRAYTYPE_P(0), "order_ids", &n);
	arr = courier_int8_array(ids, n);

	SPI_connect();
	values[0] = arr;
	values[1] = Int32GetDatum(courier_invoice_deadline_min);
	values[2] = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());
	write_every_order(
			"UPDATE courier.orders o"
			"   SET status = 'shipping_requested',"
			"       invoice_deadline = coalesce(o.invoice_deadline,"
			"           $3 + $2 * interval '1 minute'),"
			"       updated_at = $3"
			" WHERE o.order_id = ANY ($1)"
			"   AND o.status IN ('paid', 'shipping_requested')",
			3, argtypes, values, SPI_OK_UPDATE, arr, n, "request shipping for");
	SPI_finish();
	PG_RETURN_INT32(n);
}

/*
 * courier_register_invoice
 *		The seller registered an invoice: the order becomes invoiced, and no
 *		send of its notice starts after this commits (the close rule: the
 *		trigger courier.order_closed drops a notice no sender holds, and a
 *		sender that holds one drops it before sending, see closes.c).
 *
 * Returns what became of the order's newest notice, so the app can tell
 * its seller: 'dropped' (never sent), 'in_flight' (a sender holds it: a
 * request may already be on the wire; the notice's status will say how it
 * ended), 'delivered', 'failed', or 'none' (the order had no notice).
 */
Datum
courier_register_invoice(PG_FUNCTION_ARGS)
{
	int64		order_id;
	text	   *invoice;
	Oid			argtypes[5] = {INT8OID, TEXTOID, INT8OID, TIMESTAMPTZOID, TEXTOID};
	Datum		values[5];
	bool		isnull;
	char	   *status;
	char	   *fate;
	const char *in_flight;
	bool		dropped;
	MemoryContext caller = CurrentMemoryContext;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL",
						PG_ARGISNULL(0) ? "order_id" : "invoice_number")));
	order_id = PG_GETARG_INT64(0);
	invoice = PG_GETARG_TEXT_PP(1);
	if (VARSIZE_ANY_EXHDR(invoice) == 0 || VARSIZE_ANY_EXHDR(invoice) > 100)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid invoice number for order " INT64_FORMAT, order_id),
				 errdetail("An invoice number has 1 to 100 bytes.")));

	values[0] = Int64GetDatum(order_id);
	values[1] = PointerGetDatum(invoice);
	SPI_connect();
	if (SPI_execute_with_args("SELECT status::text, seller_id FROM courier.orders"
							  " WHERE order_id = $1 FOR UPDATE",
							  1, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not read order");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("unknown order id " INT64_FORMAT, order_id),
				 errhint("Register orders with courier.register_orders() first.")));
	status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	/* the order's seller: every row of the order is keyed by it */
	values[2] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
							  &isnull);
	values[3] = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());
	if (strcmp(status, "shipped") == 0 || strcmp(status, "cancelled") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot register an invoice for order " INT64_FORMAT ", which is %s",
						order_id, status)));

	if (SPI_execute_with_args("UPDATE courier.orders SET status = 'invoiced',"
							  "       invoice_number = $2,"
							  "       updated_at = $4"
							  " WHERE seller_id = $3 AND order_id = $1",
							  4, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "courier: could not register invoice");

	/*
	 * The order.invoiced event, in this transaction (0.6's schema on), with
	 * the app's trace when it set courier.traceparent (0.7's schema on: the
	 * sixth argument of emit_events).
	 */
	if (schema_is_at_least("0.6"))
	{
		bool		with_trace = schema_is_at_least("0.7");
		const char *app = app_traceparent();
		char		nulls[5] = {' ', ' ', ' ', ' ', app != NULL ? ' ' : 'n'};

		values[4] = app != NULL ? CStringGetTextDatum(app) : (Datum) 0;
		if (SPI_execute_with_args(psprintf("SELECT courier.emit_events(ARRAY[$3], ARRAY[$1],"
										   "    ARRAY['order.invoiced'],"
										   "    ARRAY[pg_catalog.jsonb_build_object('invoice_number', $2::text)],"
										   "    $4%s)",
										   with_trace ? ", ARRAY[$5]" : ""),
								  with_trace ? 5 : 4, argtypes, values, nulls,
								  false, 0) != SPI_OK_SELECT)
			elog(ERROR, "courier: could not record the order.invoiced event");
	}

	/*
	 * Called through 0.1's declaration (returns boolean, and no trigger
	 * drops the notice): the library was updated, ALTER EXTENSION courier
	 * UPDATE not yet run.  Drop as 0.1 did and answer as 0.1 did.
	 */
	if (get_func_rettype(fcinfo->flinfo->fn_oid) == BOOLOID)
	{
		if (SPI_execute_with_args(
				"WITH dropped AS ("
				"    DELETE FROM courier.work_items w"
				"     WHERE w.stage = 'tms' AND w.order_id = $1 AND w.leased_by IS NULL"
				"    RETURNING w.order_id, w.ship_date"
				") "
				"UPDATE courier.notices n SET status = 'dropped'"
				"  FROM dropped d"
				" WHERE n.order_id = d.order_id AND n.ship_date = d.ship_date",
				1, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "courier: could not drop the order's notice");
		dropped = SPI_processed > 0;
		SPI_finish();
		PG_RETURN_BOOL(dropped);
	}

	/* a notice a sender holds; under 0.2, the tms items were work items */
	in_flight = schema_is_at_least("0.3") ?
		"SELECT 'in_flight' FROM courier.notices p"
		" WHERE p.seller_id = $3 AND p.order_id = $1 AND p.status = 'pending'"
		"   AND p.leased_by IS NOT NULL"
		"   AND p.due_at > pg_catalog.statement_timestamp()" :
		"SELECT 'in_flight' FROM courier.work_items w"
		" WHERE w.stage = 'tms' AND w.order_id = $1"
		"   AND w.leased_by IS NOT NULL"
		"   AND w.not_before > pg_catalog.statement_timestamp()";

	/* a fresh snapshot: also notices the logic stage committed meanwhile */
	if (SPI_execute_with_args(psprintf(
			"SELECT coalesce("
			"    (%s LIMIT 1),"
			"    (SELECT CASE WHEN n.status IN ('delivered', 'dry_run') THEN 'delivered'"
			"                 WHEN n.status = 'failed' THEN 'failed'"
			"                 ELSE 'dropped' END"
			"       FROM courier.notices n WHERE n.seller_id = $3 AND n.order_id = $1"
			"      ORDER BY n.created_at DESC, n.ship_date DESC LIMIT 1),"
			"    'none')", in_flight),
			3, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "courier: could not read the order's notice");
	fate = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	fate = MemoryContextStrdup(caller, fate);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(fate));
}

/* ----------------------------------------------------------------
 * delay_orders(bigint[], text, date)
 * ----------------------------------------------------------------
 */

/*
 * courier_delay_orders
 *		Validate a bulk delay, record the request and queue one logic item
 *		per order; the logic workers are woken when the caller commits.
 *		Returns the request id for courier.request_status().
 *
 * The happy path is two statements whatever the size: the INSERT of the
 * items joins the ids with the orders and keeps only open ones, so one
 * count tells whether every id was usable; only when it was not does a
 * second look find which ids to name in the error.
 */
Datum
courier_delay_orders(PG_FUNCTION_ARGS)
{
	Datum	   *ids;
	int			n;
	Datum		arr;
	text	   *reason;
	char	   *reason_str;
	int			reason_chars;
	DateADT		new_date;
	DateADT		today;
	Oid			argtypes[6] = {TEXTOID, DATEOID, INT4OID, INT8ARRAYOID, NAMEOID,
	TEXTOID};
	Datum		values[6];
	bool		isnull;
	bool		slots;
	bool		traced;
	int64		request_id;

	for (int i = 0; i < 3; i++)
	{
		static const char *const names[] = {"order_ids", "reason", "new_ship_date"};

		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be NULL", names[i])));
	}

	/* reason: not blank, not longer than the limit */
	reason = PG_GETARG_TEXT_PP(1);
	reason_str = text_to_cstring(reason);
	reason_chars = pg_mbstrlen(reason_str);
	if (strspn(reason_str, " \t\r\n") == strlen(reason_str))
		ereport(ERROR,
				(errcode(ERRCODE_ZERO_LENGTH_CHARACTER_STRING),
				 errmsg("reason is empty"),
				 errdetail("Customers are told the reason for the delay, so it must say something.")));
	if (courier_control_char_position(reason_str) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("reason contains a control character at byte %d",
						courier_control_char_position(reason_str)),
				 errdetail("The reason is sent to customers as a text message; control characters (including line breaks) are not allowed.")));
	if (reason_chars > courier_max_reason_length)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("reason has %d characters, more than the limit of %d",
						reason_chars, courier_max_reason_length),
				 errhint("Shorten the reason, or raise courier.max_reason_length.")));

	/* new ship date: from today up to the horizon */
	new_date = PG_GETARG_DATEADT(2);
	today = GetSQLCurrentDate();
	if (DATE_NOT_FINITE(new_date))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("new ship date must be a calendar date, not %s",
						date_to_cstring(new_date))));
	if (new_date < today)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("new ship date %s is in the past", date_to_cstring(new_date)),
				 errdetail("Today is %s.", date_to_cstring(today))));
	if (new_date > today + courier_max_delay_days)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("new ship date %s is more than %d days ahead",
						date_to_cstring(new_date), courier_max_delay_days),
				 errdetail("The latest allowed date is %s.",
						   date_to_cstring(today + courier_max_delay_days)),
				 errhint("Choose an earlier date, or raise courier.max_delay_days.")));

	ids = check_order_ids(PG_GETARG_ARRAYTYPE_P(0), "order_ids", &n);
	arr = courier_int8_array(ids, n);

	SPI_connect();
	values[0] = PointerGetDatum(reason);
	values[1] = DateADTGetDatum(new_date);
	values[2] = Int32GetDatum(n);
	values[3] = arr;
	/* the caller, not the SECURITY DEFINER owner current_user would give */
	values[4] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false)));

	/*
	 * The request's trace: the app's (courier.traceparent, checked when it
	 * was set), or one started here.  Every HTTP request made for it
	 * carries its trace id (trace.c).  0.6's schema has no column for it.
	 */
	traced = schema_is_at_least("0.7");
	values[5] = CStringGetTextDatum(app_traceparent() != NULL ?
									app_traceparent() : courier_traceparent_new());
	if (SPI_execute_with_args(traced ?
							  "INSERT INTO courier.requests (reason, new_ship_date, total,"
							  "    requested_by, traceparent)"
							  " VALUES ($1, $2, $3, $5, $6) RETURNING request_id" :
							  "INSERT INTO courier.requests (reason, new_ship_date, total, requested_by)"
							  " VALUES ($1, $2, $3, $5) RETURNING request_id",
							  traced ? 6 : 5, argtypes, values, NULL, false, 1) !=
		SPI_OK_INSERT_RETURNING)
		elog(ERROR, "courier: could not insert request");
	request_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));

	argtypes[0] = INT8OID;
	values[0] = Int64GetDatum(request_id);
	/* the queue's current slot; 0.1 and 0.2 had one queue table, no slots */
	slots = schema_is_at_least("0.3");
	write_every_order(psprintf(
			"INSERT INTO courier.work_items (%sstage, seller_id, order_id, request_id)"
			"SELECT %s'logic', o.seller_id, o.order_id, $1"
			"  FROM pg_catalog.unnest($4) WITH ORDINALITY AS u(id, ord)"
			"  JOIN courier.orders o ON o.order_id = u.id"
			" WHERE o.status IN ('paid', 'shipping_requested')"
			" ORDER BY u.ord",
			slots ? "slot, " : "", slots ? "(SELECT courier.queue_slot()), " : ""),
			4, argtypes, values, SPI_OK_INSERT, arr, n, "delay");

	SPI_finish();
	courier_wake_stage_at_commit(COURIER_STAGE_LOGIC);
	PG_RETURN_INT64(request_id);
}
