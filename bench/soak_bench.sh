#!/usr/bin/env bash
# bench/soak_bench.sh: 1,000,000 orders through every stage, with the TMS
# live against the project's mock, to show what a long run does to time,
# worker memory and the queue's storage.  Prints figures; never fails on
# time.  See bench/README.md.
#
#   BENCH_SKIP_BUILD=1 bash bench/soak_bench.sh
#   BENCH_SKIP_BUILD=1 BENCH_SOAK_ORDERS=50000 bash bench/soak_bench.sh   # a quick run
#
# How: register ORDERS / 10 orders, then delay all of them 10 times, each
# round to a new ship date (so every delay makes a new notice), in
# delay_orders calls of 20,000 orders.  Before each call the driver waits
# until the queue holds at most one more chunk (2 x 20,000 items in all), so
# the queue stays the size a busy shop would see instead of 1,000,000 items
# at once.  The cluster has the settings of the other benchmarks (fsync on,
# synchronous_commit on) and courier's settings in postgresql.conf from its
# start: 2 logic + 2 tms workers, bulk 1, the mock at latency 0.
#
# Printed at the end:
#   - time from the first call until the logic stage was done, until the
#     mock had accepted every notice, and until every outcome was recorded;
#     throughput; time the driver waited for the queue to drain;
#   - memory of every courier background worker (VmRSS, VmHWM, RssAnon from
#     /proc/PID/status, the pids from pg_stat_activity), sampled every
#     second, since the pool may replace a worker: the maximum per worker;
#   - the queue tables' storage (courier.work_items and its partitions)
#     before, right after, and after a wait for autovacuum (of the queue's
#     tables and of courier.notices, 0.3's tms queue); the log tables
#     (notices, delay_history) kept for courier.retention, separately;
#   - n_dead_tup per courier table at the same three points;
#   - with courier 0.3's queue rotation (courier.rotate_queue(), which the
#     launcher calls; the script never does), the partitions and slots.
# Target (reported only): the queue tables within 10 MB of their size before.
#
# Environment (optional):
#   BENCH_SKIP_BUILD=1            use the installed courier (no make install)
#   BENCH_SOAK_ORDERS=1000000     notices in all (orders x rounds)
#   BENCH_SOAK_ROUNDS=10          delays of each order, each to a new date
#   BENCH_SOAK_CHUNK=20000        orders per delay_orders call
#   BENCH_SOAK_BACKLOG=2 x chunk  most work items queued when a call starts
#   BENCH_SOAK_BULK=1             courier.tms_bulk_size
#   BENCH_SOAK_VACUUM_WAIT=180    seconds to wait for autovacuum at the end
#   BENCH_SOAK_STALL=120          stop when nothing moved for that many seconds
#   BENCH_LOGIC_WORKERS=2, BENCH_TMS_WORKERS=2
#   BENCH_PORT=56832              first port tried for the cluster
#   BENCH_KEEP=1                  keep the work dir (cluster data, logs, samples)

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/tms_lib.sh
source "$BENCH_DIR/tms_lib.sh"

TOTAL_WANTED=${BENCH_SOAK_ORDERS:-1000000}
ROUNDS=${BENCH_SOAK_ROUNDS:-10}
REG=$(( TOTAL_WANTED / ROUNDS ))
TOTAL=$(( REG * ROUNDS ))
CHUNK=${BENCH_SOAK_CHUNK:-20000}
(( CHUNK > REG )) && CHUNK=$REG
BACKLOG=${BENCH_SOAK_BACKLOG:-$(( 2 * CHUNK ))}
(( BACKLOG < CHUNK )) && BACKLOG=$CHUNK
BULK=${BENCH_SOAK_BULK:-1}
VACUUM_WAIT=${BENCH_SOAK_VACUUM_WAIT:-180}
LOGIC_W=${BENCH_LOGIC_WORKERS:-2}
TMS_W=${BENCH_TMS_WORKERS:-2}
DB=bench
T_START=$EPOCHREALTIME

if (( REG < 1 || ROUNDS > 80 )); then
  echo "BENCH_SOAK_ORDERS must be at least BENCH_SOAK_ROUNDS, and at most 80 rounds fit in courier.max_delay_days" >&2
  exit 2
fi

echo "== courier soak_bench =="
bench_build
bench_build_tools

BENCH_PORT=${BENCH_PORT:-56832}
bench_cluster_start soak "shared_preload_libraries = 'courier'
courier.database = ''
max_worker_processes = 16"
tms_trap
mock_start
mock_reset 0

Q postgres "CREATE DATABASE $DB" >/dev/null
Q $DB "CREATE EXTENSION courier" >/dev/null
tms_queue_detect
machine_line
echo
echo "-- setup: $REG orders registered and shipping requested --"
bench_register_orders $DB "$REG"

# courier's settings in postgresql.conf from the start, as a deployment
# runs (no ALTER SYSTEM), then the restart that starts the workers
bench_conf_block "courier.database = '$DB'
courier.tms_url = '$MOCK_URL'
courier.tms_bulk_size = $BULK
courier.logic_min_workers = $LOGIC_W
courier.logic_max_workers = $LOGIC_W
courier.tms_min_workers = $TMS_W
courier.tms_max_workers = $TMS_W"
bench_cluster_restart
wait_pool logic "$LOGIC_W"
wait_pool tms "$TMS_W"
echo "cluster: port $PORT, $(settings_line $DB)"
echo "courier: $(Q $DB "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings
                        WHERE name IN ('courier.tms_bulk_size', 'courier.tms_concurrency', 'courier.logic_max_workers',
                                       'courier.tms_max_workers', 'courier.retention', 'courier.queue_rotate_interval')"),
         from $(Q $DB "SELECT string_agg(DISTINCT regexp_replace(sourcefile, '.*/', ''), ', ') FROM pg_settings
                        WHERE name LIKE 'courier.%' AND source = 'configuration file'")"
echo "mock TMS: $MOCK_URL (pid $MOCK_PID), latency 0"
ROTATION=$(Q $DB "SELECT to_regproc('courier.rotate_queue') IS NOT NULL")
if [[ $BULK != 1 ]]; then
  echo "NOTE: bulk $BULK (BENCH_SOAK_BULK), not the default 1: fewer, larger requests"
fi
echo "plan: $ROUNDS rounds x $REG orders = $TOTAL notices, delay_orders calls of $CHUNK orders," \
     "each started once at most $(( BACKLOG - CHUNK )) entries are queued (so at most $BACKLOG; tms queue: $TMS_Q)"

# ------------------------------------------------------------------ snapshots

# snapshot PHASE: storage and dead tuples into S_*[PHASE] / DEAD[PHASE,rel] ...
declare -A S_QUEUE S_NOTICES S_HISTORY S_ORDERS S_PARTS DEAD LIVE AVC
RELS=()
snapshot() {
  local phase=$1 rel live dead avc
  S_QUEUE[$phase]=$(Q $DB "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('courier.work_items')")
  S_NOTICES[$phase]=$(Q $DB "SELECT pg_total_relation_size('courier.notices')")
  S_HISTORY[$phase]=$(Q $DB "SELECT pg_total_relation_size('courier.delay_history')")
  S_ORDERS[$phase]=$(Q $DB "SELECT pg_total_relation_size('courier.orders')")
  S_PARTS[$phase]=$(Q $DB "SELECT count(*) FROM pg_partition_tree('courier.work_items')")
  while IFS='|' read -r rel live dead avc; do
    [[ " ${RELS[*]} " == *" $rel "* ]] || RELS+=("$rel")
    LIVE[$phase,$rel]=$live
    DEAD[$phase,$rel]=$dead
    AVC[$phase,$rel]=$avc
  done < <(Q $DB "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count
                    FROM pg_stat_user_tables WHERE schemaname = 'courier' ORDER BY relname")
}
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1048576 }'; }

# queue_dead: dead tuples left in the queue's tables (work_items or its partitions)
queue_dead() {
  Q $DB "SELECT coalesce(sum(s.n_dead_tup), 0) FROM pg_partition_tree('courier.work_items') t
           JOIN pg_stat_user_tables s ON s.relid = t.relid"
}

Q $DB "CHECKPOINT" >/dev/null
snapshot before

# ------------------------------------------------------------------ memory sampler
# Every second: each courier background process's pid from pg_stat_activity,
# then its /proc status.  One line per process and sample:
#   epoch kind pid VmRSS VmHWM RssAnon (kB)
# Its own loop in the background, so that a driver waiting on the queue does
# not stretch the period; ended by the trap (EXTRA_PIDS).
mem_sampler() {
  local pid kind
  set +e   # a worker gone between the query and the read is normal
  while :; do
    Q $DB "SELECT pid || ' ' || replace(backend_type, ' ', '_') FROM pg_stat_activity
             WHERE backend_type LIKE 'courier%'" 2>/dev/null |
      while read -r pid kind; do
        awk -v t="$EPOCHSECONDS" -v p="$pid" -v k="$kind" '
          /^(VmRSS|VmHWM|RssAnon):/ { v[$1] = $2 }
          END { if (v["VmRSS:"] != "") print t, k, p, v["VmRSS:"], v["VmHWM:"], v["RssAnon:"] }' \
          "/proc/$pid/status" 2>/dev/null
      done
    sleep 1
  done >>"$WORK/mem.txt"
}
mem_sampler &
EXTRA_PIDS+=($!)

# ------------------------------------------------------------------ the run
poller_start
LAST_PROGRESS=0
LAST_SIG=
STALL_SINCE=
ALL_QUEUED=0
T0=
# stuck: what an operator would look at, then stop (an installed courier
# that fails every item would otherwise keep the run waiting forever)
stuck() {
  echo "!! $1" >&2
  Q $DB "SELECT * FROM courier.queue_stats" >&2 || true
  Q $DB "SELECT status, count(*) FROM courier.notices GROUP BY 1" >&2 || true
  Q $DB "SELECT stage, count(*), min(last_error) FROM courier.failures GROUP BY 1" >&2 || true
  server_warnings 10 >&2
  exit 1
}
# progress WHAT: a line every 10 s, so a long run shows it is alive; stops
# the run when nothing moved for BENCH_SOAK_STALL seconds, or when the queue
# is empty after the last call while notices are still missing
progress() {
  local now=$EPOCHSECONDS d sig
  (( now - LAST_PROGRESS >= 10 )) || return 0
  LAST_PROGRESS=$now
  poll_q "SELECT (SELECT count(*) FROM courier.work_items WHERE stage = 'logic') || ' ' || (SELECT count(*) FROM $TMS_Q)"
  d=$(mock_delivered)
  printf '     %6.1f s: %s; queued logic/tms items %s; mock delivered %s\n' \
    "$(us_to_s $(( $(us_now) - T0 )))" "$1" "${POLL_OUT%% *}/${POLL_OUT##* }" "$d"
  if (( ALL_QUEUED )) && [[ $POLL_OUT == "0 0" ]] && (( d < TOTAL )); then
    stuck "the queue is empty, but the mock has only $d of $TOTAL notices"
  fi
  sig="$POLL_OUT $d"
  if [[ $sig != "$LAST_SIG" ]]; then
    LAST_SIG=$sig
    STALL_SINCE=$now
  elif (( now - STALL_SINCE >= ${BENCH_SOAK_STALL:-120} )); then
    stuck "nothing moved for $(( now - STALL_SINCE )) s"
  fi
}

# wait_backlog MAX: until both stages' queues hold at most MAX entries
# together (logic work items + the tms queue; counting stops at MAX + 1, so
# a poll never counts a long queue)
T_WAIT_US=0
wait_backlog() {
  local max=$1 t
  t=$(us_now)
  while :; do
    poll_q "SELECT (SELECT count(*) FROM (SELECT 1 FROM courier.work_items WHERE stage = 'logic' LIMIT $(( max + 1 ))) a)
                 + (SELECT count(*) FROM (SELECT 1 FROM $TMS_Q LIMIT $(( max + 1 ))) b)"
    (( POLL_OUT <= max )) && break
    progress "waiting for the queue to drain to $max"
    sleep 0.1
  done
  T_WAIT_US=$(( T_WAIT_US + $(us_now) - t ))
}

# delay_call FIRST LAST DAYS: one delay_orders call in its own session; an
# error of concurrency (40001, 40P01) is the caller's to retry, as the
# README tells the app
delay_call() {
  local try
  for try in 1 2 3 4 5; do
    Q $DB "$(delay_range_sql "$@")" >/dev/null 2>"$WORK/delay.err" && return 0
    echo "     delay_orders($1..$2) failed (try $try): $(head -1 "$WORK/delay.err")"
    sleep 0.2
  done
  exit 1
}

echo
echo "-- run: $TOTAL notices --"
cpu_begin
T0=$(us_now)
T_CALLS_US=0
N_CALLS=0
for ((round = 1; round <= ROUNDS; round++)); do
  # distinct dates, never the registered one (today + 3)
  day=$(( 5 + round ))
  for ((first = 1; first <= REG; first += CHUNK)); do
    last=$(( first + CHUNK - 1 ))
    (( last > REG )) && last=$REG
    wait_backlog $(( BACKLOG - (last - first + 1) ))
    t=$(us_now)
    delay_call "$first" "$last" "$day"
    T_CALLS_US=$(( T_CALLS_US + $(us_now) - t ))
    N_CALLS=$(( N_CALLS + 1 ))
    progress "round $round, orders $first..$last queued"
  done
done
T_ENQ=$(us_to_s $(( $(us_now) - T0 )))
echo "     all $N_CALLS delay_orders calls made after $T_ENQ s"
ALL_QUEUED=1

while :; do
  poll_q "SELECT EXISTS (SELECT 1 FROM courier.work_items WHERE stage = 'logic')"
  [[ $POLL_OUT == f ]] && break
  progress "logic stage catching up"
  sleep 0.1
done
while :; do
  d=$(mock_delivered)
  (( d >= TOTAL )) && break
  progress "tms stage catching up"
  sleep 0.1
done
mock_stats
T_ACCEPTED=$(us_to_s $(( MS[last_delivery_us] - T0 )))
while :; do
  poll_q "SELECT EXISTS (SELECT 1 FROM courier.work_items) OR EXISTS (SELECT 1 FROM $TMS_Q)"
  [[ $POLL_OUT == f ]] && break
  progress "recording the last outcomes"
  sleep 0.1
done
cpu_end "$T_ACCEPTED"
T_LOGIC=$(Q $DB "SELECT round((extract(epoch FROM max(applied_at)) * 1e6 - $T0) / 1e6, 3) FROM courier.delay_history")
T_REC=$(Q $DB "SELECT round((extract(epoch FROM max(sent_at)) * 1e6 - $T0) / 1e6, 3) FROM courier.notices")
N_HIST=$(Q $DB "SELECT count(*) FROM courier.delay_history WHERE outcome = 'delayed'")
N_STATUS=$(Q $DB "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT status, count(*) n FROM courier.notices GROUP BY 1) s")
N_DELIVERED=$(Q $DB "SELECT count(*) FROM courier.notices WHERE status = 'delivered'")
N_FAIL=$(Q $DB "SELECT count(*) FROM courier.failures")
T_AFTER=$(us_now)
snapshot after

# ------------------------------------------------------------------ autovacuum
# The wait ends when the queue's tables hold no dead tuple and autovacuum
# has been through courier.notices since the run (or it has none dead):
# from 0.3 on the pending notices are the tms stage's queue, and every
# lease and record leaves a dead version of the row behind.
echo
echo "-- waiting up to $VACUUM_WAIT s for autovacuum: no dead tuple left in work_items, courier.notices vacuumed --"
AV_WAITED=0
while :; do
  qd=$(queue_dead)
  read -r nd navc <<<"$(Q $DB "SELECT n_dead_tup || ' ' || autovacuum_count FROM pg_stat_user_tables
                                WHERE relid = 'courier.notices'::regclass")"
  (( qd == 0 && (nd == 0 || navc > ${AVC[after,notices]:-0}) )) && break
  if (( AV_WAITED >= VACUUM_WAIT )); then
    echo "     after $VACUUM_WAIT s: $qd dead tuples in the queue's tables, $nd in courier.notices" \
         "($(( navc - ${AVC[after,notices]:-0} )) autovacuum runs on it since the run)"
    break
  fi
  sleep 5
  AV_WAITED=$(( AV_WAITED + 5 ))
done
AV_WAITED=$(us_to_s $(( $(us_now) - T_AFTER )))
echo "     waited $AV_WAITED s"
snapshot vacuumed
poller_stop
kill "${EXTRA_PIDS[@]}" 2>/dev/null || true
wait "${EXTRA_PIDS[@]}" 2>/dev/null || true
EXTRA_PIDS=()

# ------------------------------------------------------------------ report
WARN=$(server_warnings 5)
T_END=$EPOCHREALTIME

echo
echo "== soak_bench figures: $TOTAL notices ($REG orders x $ROUNDS new dates), calls of $CHUNK, queue kept <= $BACKLOG items,"
echo "   $LOGIC_W logic + $TMS_W tms workers, bulk $BULK$([[ $BULK == 1 ]] || echo ' (NOT the default 1)'), mock latency 0, fsync = on, synchronous_commit = on =="
echo "time (seconds from the first delay_orders call):"
row "all $N_CALLS delay_orders calls made" "$T_ENQ s" \
    "$(us_to_s "$T_CALLS_US") s in the calls, $(us_to_s "$T_WAIT_US") s waiting for the queue"
row "logic stage done (last delay_history row)" "$T_LOGIC s" "$(fmt_rate "$TOTAL" "$T_LOGIC") orders/s"
row "every notice accepted by the mock (its last delivery)" "$T_ACCEPTED s" "$(fmt_rate "$TOTAL" "$T_ACCEPTED") notices/s end to end"
row "every outcome recorded (last notices.sent_at)" "$T_REC s" ""
echo "counts: delay_history 'delayed' $N_HIST; notices: $N_STATUS; failures $N_FAIL;" \
     "mock: ${MS[requests]} requests, ${MS[delivered]} delivered, ${MS[duplicates]} duplicates, ${MS[rejected]} rejected"
if [[ $N_DELIVERED != "$TOTAL" || $N_HIST != "$TOTAL" ]]; then
  echo "!! expected $TOTAL delivered notices and history rows"
fi

echo
echo "worker memory (kB; sampled every second from /proc/PID/status; RssAnon = private memory, VmRSS also counts shared buffers touched):"
printf '  %-22s %-8s %7s | %-14s %-14s %-10s | %-10s %s\n' kind pid samples "RssAnon first" "RssAnon last" "max" "max VmRSS" "max VmHWM"
if [[ -s $WORK/mem.txt ]]; then
  awk '{ k = $2; p = $3
         if (!((k, p) in n)) { first[k, p] = $6; order[++np] = k SUBSEP p }
         n[k, p]++; last[k, p] = $6
         if ($4 > rss[k, p]) rss[k, p] = $4
         if ($5 > hwm[k, p]) hwm[k, p] = $5
         if ($6 > anon[k, p]) anon[k, p] = $6 }
       END { for (i = 1; i <= np; i++) { split(order[i], a, SUBSEP); k = a[1]; p = a[2]; kk = k; gsub("_", " ", kk)
               printf "  %-22s %-8s %7d | %-14s %-14s %-10s | %-10s %s\n", kk, p, n[k, p], first[k, p], last[k, p], anon[k, p], rss[k, p], hwm[k, p] } }' \
    "$WORK/mem.txt" | sort -k1,3 -s
  echo "  max per kind:"
  awk '{ if ($4 > r[$2]) r[$2] = $4; if ($5 > h[$2]) h[$2] = $5; if ($6 > a[$2]) a[$2] = $6
         if (!(($2, $3) in seen)) { seen[$2, $3] = 1; n[$2]++ } }
       END { for (k in r) { kk = k; gsub("_", " ", kk)
             printf "    %-22s %d pid(s): max VmRSS %d kB, max VmHWM %d kB, max RssAnon %d kB\n", kk, n[k], r[k], h[k], a[k] } }' \
    "$WORK/mem.txt" | sort
else
  echo "  (no samples)"
fi

echo
echo "storage (pg_total_relation_size):"
printf '  %-54s %12s %12s %12s\n' "" before after "after autovacuum wait ($AV_WAITED s)"
printf '  %-54s %12s %12s %12s\n' "queue: courier.work_items (all partitions)" "$(mb "${S_QUEUE[before]}")" "$(mb "${S_QUEUE[after]}")" "$(mb "${S_QUEUE[vacuumed]}")"
printf '  %-54s %12s %12s %12s\n' "log tables kept for courier.retention: notices" "$(mb "${S_NOTICES[before]}")" "$(mb "${S_NOTICES[after]}")" "$(mb "${S_NOTICES[vacuumed]}")"
printf '  %-54s %12s %12s %12s\n' "log tables kept for courier.retention: delay_history" "$(mb "${S_HISTORY[before]}")" "$(mb "${S_HISTORY[after]}")" "$(mb "${S_HISTORY[vacuumed]}")"
printf '  %-54s %12s %12s %12s\n' "courier.orders ($REG rows, each updated $ROUNDS times)" "$(mb "${S_ORDERS[before]}")" "$(mb "${S_ORDERS[after]}")" "$(mb "${S_ORDERS[vacuumed]}")"
growth=$(( S_QUEUE[vacuumed] - S_QUEUE[before] ))
printf '  TARGET queue tables within 10 MB of before: %s after the wait (%s right after the run): %s\n' \
  "$(awk -v b="$growth" 'BEGIN { printf "%+.1f MB", b / 1048576 }')" \
  "$(awk -v b="$(( S_QUEUE[after] - S_QUEUE[before] ))" 'BEGIN { printf "%+.1f MB", b / 1048576 }')" \
  "$( (( growth <= 10 * 1048576 )) && echo met || echo MISSED)"
if [[ $ROTATION == t ]]; then
  echo "  queue rotation (courier.rotate_queue, called by the launcher): pg_partition_tree('courier.work_items') rows" \
       "${S_PARTS[before]} / ${S_PARTS[after]} / ${S_PARTS[vacuumed]} (the root included); slots now:" \
       "$(Q $DB "SELECT string_agg(slot || ' ' || state || ' since ' || to_char(since, 'HH24:MI:SS'), ', ' ORDER BY slot) FROM courier.queue_slots" 2>/dev/null || echo '?')"
else
  echo "  (no courier.rotate_queue in this build: work_items is one table)"
fi

echo
echo "dead tuples per courier table (pg_stat_user_tables; autovacuum runs between before and the end in brackets):"
printf '  %-24s %12s %12s %12s %12s\n' table "live now" "dead before" "dead after" "after wait"
for rel in "${RELS[@]}"; do
  printf '  %-24s %12s %12s %12s %12s\n' "$rel" "${LIVE[vacuumed,$rel]:-}" "${DEAD[before,$rel]:-}" "${DEAD[after,$rel]:-}" \
    "${DEAD[vacuumed,$rel]:-} ($(( ${AVC[vacuumed,$rel]:-0} - ${AVC[before,$rel]:-0} )))"
done

if [[ -n $WARN ]]; then
  echo
  echo "server log warnings/errors (first 5):"
  echo "$WARN"
fi
echo
printf 'soak_bench total runtime: %.0f s (load average now %s)\n' "$(elapsed "$T_START" "$T_END")" "$(cut -d' ' -f1-3 /proc/loadavg)"
