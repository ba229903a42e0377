#!/usr/bin/env bash
# bench/logic_bench.sh: throughput of courier's validation and logic stage,
# next to the raw-SQL floor on the same cluster and data.  Prints figures;
# never fails on time.  See bench/README.md.
#
#   bash bench/logic_bench.sh
#
# Environment (optional):
#   BENCH_SKIP_BUILD=1  use the installed courier (no make install)
#   BENCH_REPEAT=3      repetitions of each drain / floor measurement (median)
#   BENCH_PORT=56432    first port tried
#   BENCH_PGSS=1        also preload pg_stat_statements (track = all) and print
#                       the statements that took the most time
#   BENCH_KEEP=1        keep the work dir (cluster data, logs)

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPEAT=${BENCH_REPEAT:-3}
N_ORDERS=100000        # orders registered, items drained by 1b / 1c
N_ENQUEUE=30000        # orders of one delay_orders call in 1a
N_ENQUEUE_CALLS=5
N_BIG_CALLS=10         # delay_orders calls of 100,000 for the 1,000,000 queue
N_BIG_BATCHES=10       # run_once calls timed at the 1,000,000 queue
DB=bench
T_START=$(now_s)

preload=courier
pgss_conf=
if [[ -n ${BENCH_PGSS:-} ]]; then
  preload=courier,pg_stat_statements
  pgss_conf="pg_stat_statements.track = all"
fi

echo "== courier logic_bench =="
bench_build
bench_cluster_start logic "shared_preload_libraries = '$preload'
courier.database = ''
$pgss_conf"
Q postgres "CREATE DATABASE $DB" >/dev/null
Q $DB "CREATE EXTENSION courier" >/dev/null
[[ -n ${BENCH_PGSS:-} ]] && Q $DB "CREATE EXTENSION pg_stat_statements" >/dev/null
machine_line
echo "cluster: port $PORT, $(settings_line $DB)"
echo "workers: none (courier.database = ''); every figure is from client sessions"

# ------------------------------------------------------------------ helpers

# psql running a script file; ON_ERROR_STOP is on, so a failed statement fails us
run_file() { psql_on "$PORT" $DB -f "$1" >/dev/null; }

# timings FILE: the "Time: X ms" lines of a psql \timing run, in ms
timings() { awk '/^Time:/ {print $2}' "$1"; }

# reset: empty the queue and everything the logic stage wrote, vacuum the
# orders (each drain updates all of them), checkpoint; every drain starts
# from the same state
reset_state() {
  Q $DB "TRUNCATE courier.work_items, courier.requests, courier.delay_history, courier.notices" >/dev/null
  Q $DB "VACUUM (ANALYZE) courier.orders" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
}

# queue_all DAYS: one delay_orders call for orders 1..N_ORDERS, new ship date
# today + DAYS; prints the request id
queue_all() {
  Q $DB "SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, $N_ORDERS)::bigint),
                                      'bench: harvest delayed by rain', current_date + $1)"
}

prepare_drain() {
  Q $DB "VACUUM (ANALYZE) courier.work_items" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
}

logic_left() { Q $DB "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'"; }

check_drained() {
  local req=$1 st
  st=$(Q $DB "SELECT total || '/' || done || '/' || failed FROM courier.request_status($req)")
  if [[ $st != "$N_ORDERS/$N_ORDERS/0" || $(logic_left) != 0 ]]; then
    echo "!! drain incomplete: request $req total/done/failed = $st, logic items left $(logic_left)" >&2
    exit 1
  fi
}

# run_once files: SELECT courier.run_once('logic'); once per line, autocommit.
# 1,000 items per batch: 100 batches drain 100,000; the extra lines find an
# empty queue and return 0 (about a millisecond each).
RUN_ONCE_FILE=$WORK/run_once.sql
{
  printf '%s\n' '\timing on'
  for ((i = 0; i < N_ORDERS / 1000 + 5; i++)); do
    echo "SELECT courier.run_once('logic');"
  done
} >"$RUN_ONCE_FILE"

# drain_1 OUT: one session drains the queue; per-statement times go to OUT
drain_1() { psql_on "$PORT" $DB -f "$RUN_ONCE_FILE" >"$1"; }

# batch_split OUT: "median ms of batches 1-5 / median of batches 6-100"
# (a new session's first 5 executions of the kept plans are custom plans)
batch_split() {
  local -a ms
  mapfile -t ms < <(timings "$1" | head -n $((N_ORDERS / 1000)))
  echo "$(median "${ms[@]:0:5}") $(median "${ms[@]:5}")"
}

# ------------------------------------------------------------------ data
t=$(now_s)
bench_register_orders $DB "$N_ORDERS"
printf 'setup: %d orders registered and shipping requested in %.1f s\n' \
  "$N_ORDERS" "$(awk -v a="$(now_s)" -v b="$t" 'BEGIN {print a - b}')"

# ------------------------------------------------------------------ 1a
echo
echo "-- 1a: validate and enqueue $N_ENQUEUE orders in one delay_orders call ($N_ENQUEUE_CALLS calls) --"
reset_state
{
  printf '%s\n' '\timing on'
  for ((i = 1; i <= N_ENQUEUE_CALLS; i++)); do
    echo "SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, $N_ENQUEUE)::bigint),
                                       'bench: harvest delayed by rain', current_date + $i);"
  done
} >"$WORK/enqueue.sql"
psql_on "$PORT" $DB -f "$WORK/enqueue.sql" >"$WORK/enqueue.out"
mapfile -t ENQ_MS < <(timings "$WORK/enqueue.out")
ENQ_MED=$(median "${ENQ_MS[@]}")
echo "calls (ms, each its own transaction, commit included): $(fmt_list1 "${ENQ_MS[@]}")"
[[ $(Q $DB "SELECT count(*) FROM courier.work_items") == $((N_ENQUEUE * N_ENQUEUE_CALLS)) ]] ||
  { echo "!! enqueue did not queue every item" >&2; exit 1; }

# ------------------------------------------------------------------ 1b
echo
echo "-- 1b: logic stage draining $N_ORDERS items with run_once (batch 1,000, one commit per batch) --"
declare -a R1 R2 FIRST5 REST
day=10
# warm-up: the first drain over freshly loaded orders is slower (their heap
# pages are full, so no update is HOT: every new row version goes to a new
# page with a new index entry); shown, not counted
for ((r = 0; r <= REPEAT; r++)); do
  reset_state
  req=$(queue_all $day); day=$((day + 1))
  prepare_drain
  t0=$(now_s)
  drain_1 "$WORK/drain1.out"
  t1=$(now_s)
  check_drained "$req"
  secs=$(awk -v a="$t1" -v b="$t0" 'BEGIN {print a - b}')
  read -r f5 rest <<<"$(batch_split "$WORK/drain1.out")"
  if ((r == 0)); then
    echo "  1 session,  warm-up: $(printf '%.2f' "$secs") s, $(fmt_rate $N_ORDERS "$secs") orders/s (first drain after loading the orders; not counted)"
    continue
  fi
  R1+=("$(fmt_rate $N_ORDERS "$secs")")
  FIRST5+=("$f5"); REST+=("$rest")
  echo "  1 session,  run $r: $(printf '%.2f' "$secs") s, ${R1[-1]} orders/s (ms per batch: batches 1-5 $f5, batches 6-100 $rest)"
done
for ((r = 1; r <= REPEAT; r++)); do
  reset_state
  req=$(queue_all $day); day=$((day + 1))
  prepare_drain
  t0=$(now_s)
  drain_1 "$WORK/drain2a.out" & pa=$!
  drain_1 "$WORK/drain2b.out" & pb=$!
  wait $pa; wait $pb
  t1=$(now_s)
  check_drained "$req"
  secs=$(awk -v a="$t1" -v b="$t0" 'BEGIN {print a - b}')
  R2+=("$(fmt_rate $N_ORDERS "$secs")")
  echo "  2 sessions, run $r: $(printf '%.2f' "$secs") s, ${R2[-1]} orders/s"
done
R1_MED=$(median "${R1[@]}")
FIRST5_MED=$(median "${FIRST5[@]}")
REST_MED=$(median "${REST[@]}")
R2_MED=$(median "${R2[@]}")
# what the last drain wrote, to show the work is real
echo "  each drain: per item 1 orders UPDATE, 1 delay_history row, 1 notice, 1 work item deleted (and before 0.3 1 tms work item);"
echo "  last drain wrote $(Q $DB "SELECT count(*) FROM courier.delay_history WHERE outcome = 'delayed'") history rows 'delayed', $(Q $DB "SELECT count(*) FROM courier.notices") notices, $(Q $DB "SELECT count(*) FROM courier.notices WHERE status = 'pending'") pending notices (the tms stage's queue)"

# ------------------------------------------------------------------ 1c
echo
echo "-- 1c: raw-SQL floor on the same cluster --"
# (i) one set-based UPDATE of the orders rows
declare -a UPD_MS
for ((r = 1; r <= REPEAT; r++)); do
  Q $DB "VACUUM courier.orders" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
  printf '%s\n' '\timing on' \
    "UPDATE courier.orders SET promised_ship_date = promised_ship_date + 1 WHERE order_id BETWEEN 1 AND $N_ORDERS;" \
    >"$WORK/upd.sql"
  psql_on "$PORT" $DB -f "$WORK/upd.sql" >"$WORK/upd.out"
  UPD_MS+=("$(timings "$WORK/upd.out")")
done
UPD_MED=$(median "${UPD_MS[@]}")
UPD_RATE=$(fmt_rate $N_ORDERS "$(awk -v m="$UPD_MED" 'BEGIN {print m / 1000}')")
echo "  (i) one UPDATE of $N_ORDERS orders rows (ms): $(fmt_list1 "${UPD_MS[@]}")"

# (ii) SKIP LOCKED claim loop over a plain queue, batches of 1,000, one
# transaction per batch, partial index on the rows not done
claim_loop() {   # claim_loop update|delete -> rows/s
  local kind=$1 stmt t0 t1 secs
  Q $DB "DROP TABLE IF EXISTS bench_q" >/dev/null 2>&1
  Q $DB "CREATE TABLE bench_q (id bigint PRIMARY KEY, done boolean NOT NULL DEFAULT false,
                               payload text NOT NULL)" >/dev/null
  Q $DB "INSERT INTO bench_q (id, payload) SELECT g, 'order ' || g FROM generate_series(1, $N_ORDERS) g" >/dev/null
  Q $DB "CREATE INDEX bench_q_due ON bench_q (id) WHERE NOT done" >/dev/null
  Q $DB "VACUUM (ANALYZE) bench_q" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
  if [[ $kind == update ]]; then
    stmt="WITH c AS (SELECT id FROM bench_q WHERE NOT done ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED)
          UPDATE bench_q q SET done = true FROM c WHERE q.id = c.id;"
  else
    stmt="WITH c AS (SELECT id FROM bench_q WHERE NOT done ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED)
          DELETE FROM bench_q q USING c WHERE q.id = c.id;"
  fi
  for ((i = 0; i < N_ORDERS / 1000 + 5; i++)); do echo "$stmt"; done >"$WORK/claim_$kind.sql"
  t0=$(now_s)
  run_file "$WORK/claim_$kind.sql"
  t1=$(now_s)
  [[ $(Q $DB "SELECT count(*) FROM bench_q WHERE NOT done") == 0 ]] ||
    { echo "!! claim loop left rows" >&2; exit 1; }
  secs=$(awk -v a="$t1" -v b="$t0" 'BEGIN {print a - b}')
  fmt_rate $N_ORDERS "$secs"
}
declare -a CU CD
for ((r = 1; r <= REPEAT; r++)); do CU+=("$(claim_loop update)"); done
for ((r = 1; r <= REPEAT; r++)); do CD+=("$(claim_loop delete)"); done
Q $DB "DROP TABLE bench_q" >/dev/null
CU_MED=$(median "${CU[@]}")
CD_MED=$(median "${CD[@]}")
echo "  (ii) claim loop, UPDATE done = true (rows/s): $(fmt_list "${CU[@]}")"
echo "  (ii) claim loop, DELETE (rows/s):             $(fmt_list "${CD[@]}")"

# ------------------------------------------------------------------ 1,000,000
echo
echo "-- claim at a 1,000,000-item queue ($N_BIG_CALLS delay_orders calls of $N_ORDERS) --"
reset_state
t=$(now_s)
for ((i = 1; i <= N_BIG_CALLS; i++)); do
  queue_all $((30 + i)) >/dev/null
done
BIG_Q_SECS=$(awk -v a="$(now_s)" -v b="$t" 'BEGIN {print a - b}')
prepare_drain
BIG_N=$(logic_left)
echo "  queued $BIG_N items in $(printf '%.1f' "$BIG_Q_SECS") s"
{
  printf '%s\n' '\timing on'
  for ((i = 1; i <= N_BIG_BATCHES; i++)); do echo "SELECT courier.run_once('logic');"; done
} >"$WORK/big.sql"
psql_on "$PORT" $DB -f "$WORK/big.sql" >"$WORK/big.out"
mapfile -t BIG_MS < <(timings "$WORK/big.out")
BIG_F5=$(median "${BIG_MS[@]:0:5}")
BIG_MED=$(median "${BIG_MS[@]:5}")
echo "  run_once batches of 1,000 at ~1,000,000 queued, one new session (ms): $(fmt_list1 "${BIG_MS[@]}")"
# the claim statement alone (the one claim.c runs, with its planner pins)
CLAIM_EXPLAIN=$(psql_on "$PORT" $DB -At <<'EOF'
BEGIN;
SET LOCAL enable_sort = off;
SET LOCAL enable_bitmapscan = off;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)
SELECT item_id, leased_by FROM courier.work_items
 WHERE stage = 'logic' AND not_before <= statement_timestamp()
 ORDER BY not_before, item_id LIMIT 1000 FOR UPDATE SKIP LOCKED;
ROLLBACK;
EOF
)
CLAIM_MS=$(awk '/Execution Time/ {print $3}' <<<"$CLAIM_EXPLAIN")
# the first scan or sort node; a partitioned queue (0.3) shows Merge Append
# of its partitions' index scans ("Sort Key" is no sort node)
CLAIM_PLAN=$(grep -o 'Merge Append\|Index Scan using [a-z_0-9]*\|Bitmap Heap Scan\|Seq Scan\|Sort$' <<<"$CLAIM_EXPLAIN" | head -1)
echo "  the claim statement alone at that size: ${CLAIM_MS} ms ($CLAIM_PLAN)"


# ------------------------------------------------------------------ pgss
if [[ -n ${BENCH_PGSS:-} ]]; then
  echo
  echo "-- pg_stat_statements: top statements by total time --"
  psql_on "$PORT" $DB -c "SELECT calls, round(total_exec_time::numeric) AS total_ms,
                                 round(mean_exec_time::numeric, 2) AS mean_ms, rows,
                                 left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
                            FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"
fi

# ------------------------------------------------------------------ table
T_END=$(now_s)
echo
echo "== logic_bench figures (median of runs; fsync=on, synchronous_commit=on, batch 1,000) =="
printf '  %-58s %14s  %s\n' "figure" "value" "ratio / target"
row "1a delay_orders of $N_ENQUEUE orders, one call (median of $N_ENQUEUE_CALLS)" "$(printf '%.1f ms' "$ENQ_MED")" \
    "$(fmt_rate $N_ENQUEUE "$(awk -v m="$ENQ_MED" 'BEGIN {print m / 1000}')") orders/s validated+queued"
R1_FLOOR=$(ratio "$R1_MED" "$CU_MED")
row "1b run_once, 1 session, drain $N_ORDERS" "$R1_MED/s" \
    "$R1_FLOOR of claim floor; TARGET >= 0.7 of the floor: $(awk -v r="$R1_FLOOR" 'BEGIN { print ((r >= 0.7) ? "met" : "MISSED") }')"
row "1b run_once, 2 sessions, drain $N_ORDERS" "$R2_MED/s" \
    "$(ratio "$R2_MED" "$CU_MED") of claim floor; $(ratio "$R2_MED" "$R1_MED") of 1 session"
row "1c(i) one set-based UPDATE of $N_ORDERS orders" "$UPD_RATE/s" \
    "$(printf '%.0f ms' "$UPD_MED"); run_once 1 session = $(ratio "$R1_MED" "$UPD_RATE") of it"
row "1c(ii) claim loop floor, UPDATE done (1 session)" "$CU_MED/s" "1.00 (the floor)"
row "1c(ii) claim loop, DELETE (1 session)" "$CD_MED/s" "run_once 1 session = $(ratio "$R1_MED" "$CD_MED") of it"
row "run_once ms per batch, <=100,000 queued, batches 6-100 (1b)" "$(printf '%.1f ms' "$REST_MED")" \
    "batches 1-5 of a session: $(printf '%.1f ms' "$FIRST5_MED") (custom plans)"
row "run_once ms per batch, $BIG_N queued, batches 6-10" "$(printf '%.1f ms' "$BIG_MED")" \
    "batches 1-5: $(printf '%.1f ms' "$BIG_F5"); claim alone ${CLAIM_MS} ms"
echo "  (targets of issue 10: run_once >= 0.7 x the claim-loop floor, above; the logic stage >= 100,000 orders/s"
echo "   with 2 workers: that figure is worker_bench.sh's '2b 2 logic workers' row)"
echo
printf 'logic_bench total runtime: %.0f s\n' "$(awk -v a="$T_END" -v b="$T_START" 'BEGIN {print a - b}')"
