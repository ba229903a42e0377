/*-------------------------------------------------------------------------
 *
 * closes.c
 *		The close rule: once a close of an order (invoice, shipment,
 *		cancellation, by any function or statement) has committed, no send
 *		of that order's notice starts afterwards.
 *
 * Three guards together keep it:
 *	- the trigger courier.order_closed (SQL) drops the notices of a closed
 *	  order that no sender holds, in the closing transaction;
 *	- a sender renders the notices it leased joined with their orders and
 *	  does not send those whose order is closed in that snapshot (tms.c);
 *	- for closes that commit after that snapshot, while the sender is
 *	  already outside any transaction and about to send, the closing
 *	  backend publishes the order ids in a ring in shared memory when it
 *	  commits, and the sender reads the ring before it starts each request
 *	  and drops the messages of orders it finds there.
 *
 * The ring is written from the XACT_EVENT_COMMIT callback, that is after
 * the commit became visible and before the client is told: a sender that
 * reads the ring from a position taken before its render snapshot sees
 * every close that snapshot missed.  A reader that falls more than the
 * ring's size behind cannot tell what it missed and says so; the sender
 * then starts nothing more and releases its messages, which are leased and
 * rendered again with a fresh snapshot.  Without shared memory (courier not
 * preloaded) there is no ring and no worker; run_once('tms') then locks
 * the orders it sends for until the caller's transaction ends (tms.c).
 *
 * A close in a transaction that is prepared (PREPARE TRANSACTION) is
 * published at PREPARE, which errs on the safe side: senders skip the
 * order and release its message to be checked again later.
 *
 * Locking: writers take a position with an atomic increment and publish
 * the slot with its sequence number after a write barrier; readers check
 * the sequence before and after reading the id.  No lock is taken.
 *
 * IDENTIFICATION
 *		src/closes.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "utils/memutils.h"

#include "courier.h"

PG_FUNCTION_INFO_V1(courier_close_at_commit);

/* order ids this transaction closed, in TopTransactionContext */
static int64 *pending_closes = NULL;
static int	npending = 0;
static int	pending_size = 0;
static bool callback_registered = false;

static void closes_xact_callback(XactEvent event, void *arg);
static void publish_closes(void);

/*
 * courier_close_at_commit
 *		SQL: courier.close_at_commit(order_id bigint).  Called by the trigger
 *		on courier.orders for every order whose status becomes closed:
 *		remember it, to publish it when the transaction commits.
 */
Datum
courier_close_at_commit(PG_FUNCTION_ARGS)
{
	int64		order_id = PG_GETARG_INT64(0);
	MemoryContext old;

	if (!callback_registered)
	{
		RegisterXactCallback(closes_xact_callback, NULL);
		callback_registered = true;
	}
	if (courier_shared == NULL)
		PG_RETURN_VOID();		/* no ring, no sender to tell */

	if (npending == pending_size)
	{
		old = MemoryContextSwitchTo(TopTransactionContext);
		pending_size = Max(pending_size * 2, 16);
		pending_closes = (npending == 0) ?
			palloc(sizeof(int64) * pending_size) :
			repalloc(pending_closes, sizeof(int64) * pending_size);
		MemoryContextSwitchTo(old);
	}
	pending_closes[npending++] = order_id;
	PG_RETURN_VOID();
}

/*
 * closes_xact_callback
 *		Publish at commit (or prepare), forget at abort.  The list lives in
 *		TopTransactionContext, which is still there when this is called.
 */
static void
closes_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			publish_closes();
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			pending_closes = NULL;	/* went with TopTransactionContext */
			npending = 0;
			pending_size = 0;
			break;
		default:
			break;
	}
}

static void
publish_closes(void)
{
	CourierCloseRing *ring;

	if (courier_shared == NULL || npending == 0)
		return;
	ring = &courier_shared->closes;
	for (int i = 0; i < npending; i++)
	{
		uint64		pos = pg_atomic_fetch_add_u64(&ring->head, 1);
		CourierCloseSlot *slot = &ring->slots[pos % COURIER_CLOSE_RING_SIZE];

		slot->order_id = pending_closes[i];
		pg_write_barrier();
		pg_atomic_write_u64(&slot->seq, pos + 1);
	}
}

/*
 * courier_closes_position
 *		Where the ring's writers are now: a sender takes this before it
 *		renders its batch, and reads every close from there on.
 */
uint64
courier_closes_position(void)
{
	if (courier_shared == NULL)
		return 0;
	return pg_atomic_read_u64(&courier_shared->closes.head);
}

/*
 * courier_closes_read
 *		Call fn(order_id, arg) for every close published from *next on,
 *		and advance *next past them.  Stops at a slot whose writer has taken
 *		its position but not yet published it (it will be read next time).
 *		Returns false when closes were lost to the ring wrapping around:
 *		the caller cannot know which orders closed.
 */
bool
courier_closes_read(uint64 *next, void (*fn) (int64 order_id, void *arg),
					void *arg)
{
	CourierCloseRing *ring;
	uint64		head;

	if (courier_shared == NULL)
		return true;
	ring = &courier_shared->closes;
	head = pg_atomic_read_u64(&ring->head);
	if (head - *next > COURIER_CLOSE_RING_SIZE)
		return false;

	while (*next < head)
	{
		CourierCloseSlot *slot = &ring->slots[*next % COURIER_CLOSE_RING_SIZE];
		uint64		seq = pg_atomic_read_u64(&slot->seq);
		int64		order_id;

		if (seq < *next + 1)
			break;				/* not published yet */
		pg_read_barrier();
		order_id = slot->order_id;
		pg_read_barrier();
		if (seq != *next + 1 || pg_atomic_read_u64(&slot->seq) != seq)
			return false;		/* overwritten: the ring wrapped */
		fn(order_id, arg);
		(*next)++;
	}
	return true;
}
