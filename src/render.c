/*-------------------------------------------------------------------------
 *
 * render.c
 *		What a notice says and how it travels: its text, rendered from
 *		courier.notice_template (or _v2) in one pass, and its length in
 *		EUC-KR, the encoding Korean carriers count SMS (90 bytes) and LMS
 *		(2,000 bytes) in.
 *
 * Pure functions of their arguments (and the database encoding); no SQL,
 * no queue, no HTTP.  Which channel a length means is tms.c's decision,
 * with the limits named in courier.h.
 *
 * IDENTIFICATION
 *		src/render.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/date.h"

#include "courier.h"

/*
 * courier_render_notice
 *		The notice's text: its variant's template (courier.notice_template,
 *		or _v2 inside the notice_v2 rollout) with {order_id},
 *		{new_ship_date}, {product} and {reason} replaced, in one pass, so
 *		that a value that itself contains "{reason}" is never expanded
 *		again.
 */
char *
courier_render_notice(bool v2, int64 order_id, DateADT ship_date,
					  const char *product, const char *reason)
{
	const char *template = v2 ? courier_notice_template_v2 : courier_notice_template;
	StringInfoData out;
	char	   *date = DatumGetCString(DirectFunctionCall1(date_out,
														   DateADTGetDatum(ship_date)));
	char	   *id = psprintf(INT64_FORMAT, order_id);
	const struct
	{
		const char *name;
		const char *value;
	}			fields[] = {
		{"{order_id}", id},
		{"{new_ship_date}", date},
		{"{product}", product},
		{"{reason}", reason},
	};

	initStringInfo(&out);
	for (const char *p = template; *p;)
	{
		bool		replaced = false;

		if (*p == '{')
		{
			for (int f = 0; f < lengthof(fields); f++)
			{
				size_t		len = strlen(fields[f].name);

				if (strncmp(p, fields[f].name, len) == 0)
				{
					appendStringInfoString(&out, fields[f].value);
					p += len;
					replaced = true;
					break;
				}
			}
		}
		if (!replaced)
			appendStringInfoChar(&out, *p++);
	}
	return out.data;
}

/*
 * courier_sms_channel
 *		The channel a text of that many EUC-KR bytes goes by (courier_euckr_
 *		length): "sms" up to COURIER_SMS_MAX_BYTES, else "lms" (a text too
 *		long even for an LMS, or one EUC-KR cannot carry, is refused before
 *		this matters).
 */
const char *
courier_sms_channel(int euckr_bytes)
{
	return (euckr_bytes >= 0 && euckr_bytes <= COURIER_SMS_MAX_BYTES) ? "sms" : "lms";
}

/*
 * courier_euckr_length
 *		Bytes of text in EUC-KR, the encoding Korean carriers count SMS and
 *		LMS lengths in; -1 when a character has no EUC-KR form (emoji, for
 *		instance), which the carrier would garble.  Needs a transaction (the
 *		conversion is looked up in the catalog).
 */
int
courier_euckr_length(const char *text)
{
	static Oid	proc = InvalidOid;
	int			len = strlen(text);
	unsigned char *buf;
	int			converted;
	int			result;

	if (GetDatabaseEncoding() == PG_EUC_KR)
		return len;
	if (!OidIsValid(proc))
		proc = FindDefaultConversionProc(GetDatabaseEncoding(), PG_EUC_KR);
	if (!OidIsValid(proc))
		return len;				/* no conversion known: count the bytes */

	buf = palloc((size_t) len * MAX_CONVERSION_GROWTH + 1);
	converted = pg_do_encoding_conversion_buf(proc, GetDatabaseEncoding(), PG_EUC_KR,
											  (unsigned char *) text, len,
											  buf, len * MAX_CONVERSION_GROWTH + 1,
											  true);
	result = (converted == len) ? (int) strlen((char *) buf) : -1;
	pfree(buf);
	return result;
}

