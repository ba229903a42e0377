/*-------------------------------------------------------------------------
 *
 * dispatch.h
 *		The sender's interface: messages in, one outcome per message out.
 *		Used by the tms stage (tms.c); the provider dialects (provider.h)
 *		write these outcomes, the shared limits (limits.c) read them.
 *
 * IDENTIFICATION
 *		src/dispatch.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_DISPATCH_H
#define COURIER_DISPATCH_H

/*
 * What became of one message.  The numbering is stored nowhere; tms.c maps
 * outcomes onto the retry state.
 */
typedef enum CourierOutcome
{
	COURIER_OUT_PENDING = 0,	/* not sent: the sender stopped first */
	COURIER_OUT_DELIVERED,		/* accepted by the provider */
	COURIER_OUT_REJECTED,		/* permanent failure of this message */
	COURIER_OUT_RETRY,			/* 5xx, 408, timeout, connection error */
	COURIER_OUT_THROTTLED,		/* 429/503: not before retry_after_ms */

	/*
	 * Configuration: ours to fix, not the message's.  HTTP 401/403, a
	 * provider's code for our credentials, sender or template (missing,
	 * not approved), or a parameter the dialect needs left unset (then the
	 * message was not sent at all).  code and error say which.
	 */
	COURIER_OUT_UNAUTHORIZED,
	COURIER_OUT_CLOSED,			/* not sent: the caller's admit hook said so */

	/*
	 * AlimTalk cannot reach this recipient (NHN delivery codes 3018, 3019,
	 * 3020: inactive or not a KakaoTalk user, AlimTalk blocked): the notice
	 * is to go out by SMS/LMS instead, never by AlimTalk again.  Not a
	 * failure of the provider: the breaker and the rate are not told.
	 */
	COURIER_OUT_FALLBACK
} CourierOutcome;

/*
 * The fields of a notice a template's parameters can name (courier.
 * alimtalk_template_params), as CourierMessage carries them.
 */
typedef enum CourierField
{
	COURIER_FIELD_ORDER_ID,
	COURIER_FIELD_PRODUCT,
	COURIER_FIELD_REASON,
	COURIER_FIELD_SHIP_DATE
} CourierField;

#define COURIER_NUM_FIELDS (COURIER_FIELD_SHIP_DATE + 1)

typedef struct CourierMessage
{
	/* input */
	const char *key;			/* stable idempotency key */
	const char *traceparent;	/* the W3C trace its sends carry: a valid
								 * version-00 traceparent (trace.c) or
								 * NULL for none: a request holds messages
								 * of one trace only */
	const char *to;
	const char *channel;		/* "sms" or "lms"; once delivered by another
								 * channel, the dialect sets that
								 * ("alimtalk"), which the notice records */
	const char *subject;		/* NULL for none */
	const char *text;			/* rendered: what SMS sends, what the DBA sees */
	bool		skip;			/* not to be sent at all */
	int			refusals;		/* attempts the provider refused, outcome
								 * known (the idempotency key changes with
								 * them: courier_idempotency_key) */
	bool		fallback;		/* courier's own SMS/LMS fallback of an
								 * AlimTalk that could not reach the
								 * customer: sent by the SMS dialect */

	/*
	 * Input for the template dialects (AlimTalk): the notice as a template
	 * code and parameters instead of rendered text.  The tms stage fills
	 * them from the notice it leased; palloc'd, NULL only where a dialect
	 * does not use them (a dialect holds back a message whose template
	 * names a field left NULL, as a configuration error).
	 */
	const char *order_id;		/* the order id, as text */
	const char *product;		/* the product's name */
	const char *reason;			/* the delay reason */
	const char *ship_date;		/* the new ship date, YYYY-MM-DD */
	int			variant;		/* template: 2 for an order inside the
								 * notice_v2 rollout (courier.
								 * alimtalk_template_v2), else 1 (0 reads
								 * as 1) */

	/* output */
	bool		started;		/* a request carrying it has started */
	CourierOutcome outcome;
	bool		unknown;		/* sent, but no usable answer: may be delivered */
	int			http_status;	/* 0 when no response came */
	int			retry_after_ms; /* THROTTLED: wait at least this long */
	double		latency_ms;
	char		code[64];		/* provider's result code, or curl's error */
	char		provider_id[128];	/* delivered: the provider's request id and
									 * the message's place in it
									 * ("requestId/recipientSeq"), what its
									 * receipt will be matched by */
	char		error[256];		/* why it failed, for the failure history */
} CourierMessage;

/* Shared limits the dispatcher asks before and tells after each request. */
typedef struct CourierDispatchHooks
{
	/* 0: a request of n messages may start now; else ms to wait */
	int			(*acquire) (int n);
	/*
	 * the outcome class of a finished request, and how long it took (ms;
	 * negative when no request was made)
	 */
	void		(*request_done) (CourierOutcome outcome, int retry_after_ms,
								 double latency_ms);
	/* true: start no further request (shutdown, breaker opened) */
	bool		(*should_stop) (void);

	/*
	 * Called right before a request is built: may set the outcome of
	 * messages not yet started (they are then not sent); false: start no
	 * further request.
	 */
	bool		(*admit) (void);

	/*
	 * Called before each wait for requests in flight: the caller may do
	 * other work meanwhile (all_started: every message has a request), and
	 * must leave no transaction open.  NULL: none.
	 */
	void		(*while_waiting) (bool all_started);
} CourierDispatchHooks;

/*
 * How a caller sends: up to bulk_size messages in one request (fewer when
 * the dialect allows fewer), concurrency requests in flight, timeout_ms
 * for each (courier.tms_* for the TMS, the subscription's own for a
 * subscriber).
 */
typedef struct CourierDispatchSizes
{
	int			bulk_size;
	int			concurrency;
	int			timeout_ms;
} CourierDispatchSizes;

struct CourierProvider;

extern void courier_dispatch(const struct CourierProvider *provider,
							 CourierMessage *msgs, int n,
							 const CourierDispatchSizes *sizes,
							 const CourierDispatchHooks *hooks);

/* limits.c: the shared limits behind the hooks */
extern int	courier_limits_acquire(int n);
extern void courier_limits_report(CourierOutcome outcome, int retry_after_ms,
								  double latency_ms);
extern bool courier_limits_breaker_open(void);

/* the same for another set of limits (a subscriber's, courier.h) */
struct CourierTmsLimits;
struct CourierLimitsConfig;
extern int	courier_limits_acquire_on(struct CourierTmsLimits *lim,
									  const struct CourierLimitsConfig *cfg,
									  int n);
extern void courier_limits_report_on(struct CourierTmsLimits *lim,
									 const struct CourierLimitsConfig *cfg,
									 CourierOutcome outcome,
									 int retry_after_ms, double latency_ms);

#endif							/* COURIER_DISPATCH_H */
