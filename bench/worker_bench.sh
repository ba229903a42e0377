#!/usr/bin/env bash
# bench/worker_bench.sh: courier's background workers: latency from the
# commit of a delay request to its application, and drain throughput at 1, 2
# and 4 logic workers beside run_once on the same cluster.  Prints figures;
# never fails on time.  See bench/README.md.
#
#   bash bench/worker_bench.sh
#
# Environment (optional):
#   BENCH_SKIP_BUILD=1     use the installed courier (no make install)
#   BENCH_REPEAT=3         repetitions of each drain (median)
#   BENCH_LATENCY_N=1000   one-order requests of the latency test
#   BENCH_POLL=status      how the drain's end is detected every 20 ms:
#                          status = courier.request_status(id) done = total (the
#                          brief's method; a count over delay_history, ~5-10 ms
#                          per poll at 100,000 rows); cheap = "no logic item left"
#                          (an index probe), confirmed by request_status at the end
#   BENCH_PORT=56532       first port tried
#   BENCH_KEEP=1           keep the work dir (cluster data, logs)

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPEAT=${BENCH_REPEAT:-3}
LAT_N=${BENCH_LATENCY_N:-1000}
POLL=${BENCH_POLL:-status}
N_ORDERS=100000
WORKER_COUNTS=(1 2 4)
DB=bench
T_START=$(now_s)

echo "== courier worker_bench =="
bench_build
BENCH_PORT=${BENCH_PORT:-56532}
bench_cluster_start workers "shared_preload_libraries = 'courier'
courier.database = ''
max_worker_processes = 16"
Q postgres "CREATE DATABASE $DB" >/dev/null
Q $DB "CREATE EXTENSION courier" >/dev/null
# courier.database is PGC_POSTMASTER: name the bench database, then restart
Q postgres "ALTER SYSTEM SET courier.database = '$DB'" >/dev/null
Q postgres "ALTER SYSTEM SET courier.idle_wakeup = '1h'" >/dev/null
Q postgres "ALTER SYSTEM SET courier.logic_min_workers = 1" >/dev/null
Q postgres "ALTER SYSTEM SET courier.logic_max_workers = 2" >/dev/null
# the logic stage alone is measured: the notices it writes are not sent
Q postgres "ALTER SYSTEM SET courier.pause_tms = on" >/dev/null
bench_cluster_restart
machine_line
echo "cluster: port $PORT, $(settings_line $DB)"

# ------------------------------------------------------------------ helpers

run_file() { psql_on "$PORT" $DB -f "$1" >/dev/null; }
timings() { awk '/^Time:/ {print $2}' "$1"; }

n_logic_workers() {
  Q $DB "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier logic worker'"
}

# set_workers MIN MAX: ALTER SYSTEM + reload, then wait until the running
# logic workers are within [MIN, MAX] (the launcher adds them, surplus ones
# retire when woken by the reload)
set_workers() {
  local min=$1 max=$2 n deadline
  Q $DB "ALTER SYSTEM SET courier.logic_min_workers = $min" >/dev/null
  Q $DB "ALTER SYSTEM SET courier.logic_max_workers = $max" >/dev/null
  Q $DB "SELECT pg_reload_conf()" >/dev/null
  deadline=$(( $(date +%s) + 30 ))
  while :; do
    n=$(n_logic_workers)
    if (( n >= min && n <= max )); then
      # the workers' reload was seen by the launcher too: settle a moment
      sleep 0.2
      n=$(n_logic_workers)
      (( n >= min && n <= max )) && return 0
    fi
    if (( $(date +%s) > deadline )); then
      echo "!! $n logic workers running 30 s after asking for $min..$max" >&2
      grep -i 'courier\|worker' "$WORK/server.log" | tail -20 >&2
      exit 1
    fi
    sleep 0.05
  done
}

set_pause() {   # set_pause on|off
  Q $DB "ALTER SYSTEM SET courier.pause_logic = $1" >/dev/null
  Q $DB "SELECT pg_reload_conf()" >/dev/null
}

reset_state() {
  Q $DB "TRUNCATE courier.work_items, courier.requests, courier.delay_history, courier.notices" >/dev/null
  Q $DB "VACUUM (ANALYZE) courier.orders" >/dev/null
}

queue_all() {   # queue_all DAYS -> request id
  Q $DB "SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, $N_ORDERS)::bigint),
                                      'bench: harvest delayed by rain', current_date + $1)"
}

prepare_drain() {
  Q $DB "VACUUM (ANALYZE) courier.work_items" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
}

check_drained() {
  local req=$1 st
  st=$(Q $DB "SELECT total || '/' || done || '/' || failed FROM courier.request_status($req)")
  if [[ $st != "$N_ORDERS/$N_ORDERS/0" ]]; then
    echo "!! drain incomplete: request $req total/done/failed = $st" >&2
    exit 1
  fi
}

elapsed() { awk -v a="$2" -v b="$1" 'BEGIN {print a - b}'; }

# ------------------------------------------------------------------ data
bench_register_orders $DB "$N_ORDERS"
Q $DB "CHECKPOINT" >/dev/null

# ------------------------------------------------------------------ 2a
echo
echo "-- 2a: commit-to-applied latency, $LAT_N sequential one-order requests --"
set_pause off
set_workers 1 2
echo "  logic workers: min 1, max 2 ($(n_logic_workers) running); courier.idle_wakeup = 1h, so only wake-on-commit can explain a fast apply"
# let the workers' idle timers start: they are now asleep on their latches
sleep 1
for ((i = 1; i <= LAT_N; i++)); do
  echo "SELECT courier.delay_orders(ARRAY[$i]::bigint[], 'bench: latency', current_date + 1);"
done >"$WORK/latency.sql"
FIRST_REQ=$(( $(Q $DB "SELECT coalesce(max(request_id), 0) FROM courier.requests") + 1 ))
t0=$(now_s)
run_file "$WORK/latency.sql"
t1=$(now_s)
LAT_SEND_S=$(elapsed "$t0" "$t1")
deadline=$(( $(date +%s) + 60 ))
while [[ $(Q $DB "SELECT count(*) FROM courier.delay_history WHERE request_id >= $FIRST_REQ") -lt $LAT_N ]]; do
  if (( $(date +%s) > deadline )); then
    echo "!! only $(Q $DB "SELECT count(*) FROM courier.delay_history WHERE request_id >= $FIRST_REQ") of $LAT_N one-order requests applied 60 s after the last commit: a lost wake-up (idle_wakeup is 1h)" >&2
    exit 1
  fi
  sleep 0.05
done
LAT=$(Q $DB "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2) || ' ' ||
                     round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2) || ' ' ||
                     round(max(ms)::numeric, 2) || ' ' || round(min(ms)::numeric, 2) || ' ' || count(*)
                FROM (SELECT extract(epoch FROM h.applied_at - r.created_at) * 1000 AS ms
                        FROM courier.requests r
                        JOIN courier.delay_history h USING (request_id)
                       WHERE r.request_id >= $FIRST_REQ) l")
read -r LAT_P50 LAT_P99 LAT_MAX LAT_MIN LAT_CNT <<<"$LAT"
echo "  $LAT_CNT requests sent in $(printf '%.2f' "$LAT_SEND_S") s ($(fmt_rate "$LAT_N" "$LAT_SEND_S") requests/s, each its own commit)"
echo "  latency ms: min $LAT_MIN, p50 $LAT_P50, p99 $LAT_P99, max $LAT_MAX"
echo "  logic workers running at the end: $(n_logic_workers) (a second one starts only when more than a batch is due)"

# ------------------------------------------------------------------ 2b
echo
echo "-- 2b: draining $N_ORDERS items: run_once (1 session) vs 1, 2, 4 workers, poll = $POLL every 20 ms --"
RUN_ONCE_FILE=$WORK/run_once.sql
for ((i = 0; i < N_ORDERS / 1000 + 5; i++)); do
  echo "SELECT courier.run_once('logic');"
done >"$RUN_ONCE_FILE"

# a persistent psql for polling: no connection per poll, no snapshot held
# between polls (a held snapshot would keep the claimed items' dead index
# entries alive and slow the claim)
coproc POLLER { exec "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d $DB 2>"$WORK/poller.err"; }
poll_q() {
  echo "$1;" >&"${POLLER[1]}"
  if ! read -r -t 60 POLL_OUT <&"${POLLER[0]}"; then
    echo "!! the polling session gave no answer in 60 s to: $1" >&2
    cat "$WORK/poller.err" >&2
    exit 1
  fi
}

declare -A RATE SRV
day=10
drain_once() {   # drain_once REP: one run_once drain, workers stopped
  local req t0 t1 secs tsrv
  set_workers 0 0
  reset_state
  req=$(queue_all $day); day=$((day + 1))
  prepare_drain
  tsrv=$(Q $DB "SELECT extract(epoch FROM clock_timestamp())")
  t0=$(now_s)
  run_file "$RUN_ONCE_FILE"
  t1=$(now_s)
  check_drained "$req"
  secs=$(elapsed "$t0" "$t1")
  RATE[run_once,$1]=$(fmt_rate $N_ORDERS "$secs")
  # server side: from just before the drain to the last applied item
  SRV[run_once,$1]=$(Q $DB "SELECT round(($N_ORDERS / (extract(epoch FROM max(applied_at)) - $tsrv))::numeric)
                              FROM courier.delay_history WHERE request_id = $req")
  printf '  run_once,  run %d: %.2f s, %s orders/s\n' "$1" "$secs" "${RATE[run_once,$1]}"
}

drain_workers() {   # drain_workers N REP
  local n=$1 rep=$2 req t0 t1 secs polls=0 tsrv
  set_pause on
  set_workers "$n" "$n"
  reset_state
  req=$(queue_all $day); day=$((day + 1))
  prepare_drain
  Q $DB "ALTER SYSTEM SET courier.pause_logic = off" >/dev/null
  t0=$(now_s)
  tsrv=$(Q $DB "SELECT extract(epoch FROM clock_timestamp()) FROM pg_reload_conf()")
  while :; do
    if [[ $POLL == cheap ]]; then
      poll_q "SELECT NOT EXISTS (SELECT 1 FROM courier.work_items WHERE stage = 'logic')"
      if [[ $POLL_OUT == t ]]; then
        poll_q "SELECT done = total FROM courier.request_status($req)"
      fi
    else
      poll_q "SELECT done = total FROM courier.request_status($req)"
    fi
    polls=$((polls + 1))
    [[ $POLL_OUT == t ]] && break
    [[ $POLL_OUT == f ]] || { echo "!! poll said: $POLL_OUT" >&2; exit 1; }
    sleep 0.02
  done
  t1=$(now_s)
  check_drained "$req"
  secs=$(elapsed "$t0" "$t1")
  RATE[$n,$rep]=$(fmt_rate $N_ORDERS "$secs")
  # server side: from the reload that unpaused to the last applied item
  SRV[$n,$rep]=$(Q $DB "SELECT round(($N_ORDERS / (extract(epoch FROM max(applied_at)) - $tsrv))::numeric)
                          FROM courier.delay_history WHERE request_id = $req")
  printf '  %d worker%s, run %d: %.2f s, %s orders/s (%d polls; server side %s orders/s)\n' \
    "$n" "$([[ $n == 1 ]] || echo s)" "$rep" "$secs" "${RATE[$n,$rep]}" "$polls" "${SRV[$n,$rep]}"
}

for ((r = 1; r <= REPEAT; r++)); do
  drain_once "$r"
  for n in "${WORKER_COUNTS[@]}"; do
    drain_workers "$n" "$r"
  done
done
set_pause off
echo '\q' >&"${POLLER[1]}"

med_of() {   # med_of KEY: median over the repetitions
  local k=$1 r vals=()
  for ((r = 1; r <= REPEAT; r++)); do vals+=("${RATE[$k,$r]}"); done
  median "${vals[@]}"
}
srv_med_of() {
  local k=$1 r vals=()
  for ((r = 1; r <= REPEAT; r++)); do vals+=("${SRV[$k,$r]}"); done
  median "${vals[@]}"
}

# what the workers logged that was not routine
WARN=$(grep -E 'WARNING|ERROR|FATAL|PANIC' "$WORK/server.log" | grep -v 'terminating background worker\|terminating connection due to administrator\|listen socket\|any TCP/IP sockets\|could not bind' | head -5 || true)

# ------------------------------------------------------------------ table
T_END=$(now_s)
RO=$(med_of run_once)
echo
echo "== worker_bench figures (median of $REPEAT runs; fsync=on, synchronous_commit=on, batch 1,000) =="
printf '  %-58s %14s  %s\n' "figure" "value" "ratio / target"
row "2a latency commit -> applied, p50 ($LAT_CNT one-order requests)" "$LAT_P50 ms" "target < 5 ms"
row "2a latency p99" "$LAT_P99 ms" ""
row "2a latency max" "$LAT_MAX ms" "(min $LAT_MIN ms)"
row "2b run_once, 1 session, drain $N_ORDERS" "$RO/s" "1.00 (server side $(srv_med_of run_once)/s)"
for n in "${WORKER_COUNTS[@]}"; do
  m=$(med_of "$n")
  tgt=""
  [[ $n == 2 ]] && tgt="; TARGET >= 100000/s: $(awk -v m="$m" 'BEGIN { print ((m >= 100000) ? "met" : "MISSED") }')"
  row "2b $n logic worker$([[ $n == 1 ]] || echo s), drain $N_ORDERS (poll: $POLL)" "$m/s" \
      "$(ratio "$m" "$RO") of run_once (target >= 0.8); server side $(srv_med_of "$n")/s$tgt"
done
if [[ -n $WARN ]]; then
  echo
  echo "server log warnings/errors (first 5):"
  echo "$WARN"
fi
echo
printf 'worker_bench total runtime: %.0f s\n' "$(elapsed "$T_START" "$T_END")"
