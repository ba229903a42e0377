#!/usr/bin/env bash
# bench/tms_bench.sh: courier's TMS stage (the sender) against the project's
# mock TMS and against nginx, each next to a bare libcurl client
# (bench/curl_ceiling) sending the same messages to the same server.  Prints
# figures; never fails on time.  See bench/README.md.  The headline (one
# delay_orders call with every stage live) is bench/headline_bench.sh.
#
#   BENCH_SKIP_BUILD=1 bash bench/tms_bench.sh
#
# What it measures (N = 30,000 orders, a new ship date per run, so every
# notice is new):
#   1. dispatcher vs mock: pause the tms stage, delay N orders, wait until
#      the logic stage has written all N notices, reset the mock, unpause,
#      and time from the unpause (the pg_reload_conf() call) to the mock's
#      last new delivery; provider latency 0 / 20 ms x bulk 1 / 100, and at
#      0 ms / bulk 1 with 1 and with 2 tms workers.  One run each.
#   2. ceiling vs mock: curl_ceiling, the same number of messages to the
#      same mock at the same latency and bulk, concurrency =
#      courier.tms_concurrency x tms workers; ratio courier / ceiling.
#   3. nginx: the same as 1 + 2 at bulk 1 with 1 and with 2 tms workers, but
#      against nginx answering every POST with 200 {"results":[]} (no
#      counter there: courier's own count of delivered notices ends the
#      clock, at the last outcome recorded); BENCH_REPEAT runs each,
#      medians.  Target (reported only): courier >= 0.8 of the bare client.
# Each measurement also prints the CPU seconds each kind of process used
# during it (from /proc).
#
# Environment (optional):
#   BENCH_SKIP_BUILD=1          use the installed courier (no make install)
#   BENCH_N=30000               orders per run
#   BENCH_REPEAT=3              runs per nginx figure (median)
#   BENCH_TMS_WORKERS=2         tms workers (min = max) of the runs other than
#                               the 1-worker one
#   BENCH_LOGIC_WORKERS=2       logic workers that queue the notices
#   BENCH_MOCK=0                skip parts 1 + 2 (the mock)
#   BENCH_NGINX=0               skip part 3 (nginx)
#   BENCH_PERF=1                also perf-record the workers during each
#                               measurement and print the share of their CPU
#                               under courier's phase functions (needs perf)
#   BENCH_PORT=56632            first port tried for the cluster
#   BENCH_NGINX_PORT=58080      first port tried for nginx
#   BENCH_KEEP=1                keep the work dir (cluster data, logs)

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/tms_lib.sh
source "$BENCH_DIR/tms_lib.sh"

N=${BENCH_N:-30000}
REPEAT=${BENCH_REPEAT:-3}
TMS_W=${BENCH_TMS_WORKERS:-2}
LOGIC_W=${BENCH_LOGIC_WORKERS:-2}
DO_MOCK=${BENCH_MOCK:-1}
DO_NGINX=${BENCH_NGINX:-1}
DB=bench
T_START=$EPOCHREALTIME

echo "== courier tms_bench =="
bench_build
bench_build_tools

BENCH_PORT=${BENCH_PORT:-56632}
bench_cluster_start tms "shared_preload_libraries = 'courier'
courier.database = ''
max_worker_processes = 16"
tms_trap
mock_start
if [[ $DO_NGINX == 1 ]]; then
  nginx_ensure
  nginx_start
fi

Q postgres "CREATE DATABASE $DB" >/dev/null
Q $DB "CREATE EXTENSION courier" >/dev/null
tms_queue_detect
# courier.database is PGC_POSTMASTER: name the bench database, then restart
Q postgres "ALTER SYSTEM SET courier.database = '$DB'" >/dev/null
Q postgres "ALTER SYSTEM SET courier.tms_url = '$MOCK_URL'" >/dev/null
Q postgres "ALTER SYSTEM SET courier.pause_tms = on" >/dev/null
Q postgres "ALTER SYSTEM SET courier.tms_min_workers = $TMS_W" >/dev/null
Q postgres "ALTER SYSTEM SET courier.tms_max_workers = $TMS_W" >/dev/null
bench_cluster_restart
machine_line
echo "cluster: port $PORT, $(settings_line $DB)"
CONC=$(Q $DB "SHOW courier.tms_concurrency")
BATCH=$(Q $DB "SHOW courier.batch_size")
echo "mock TMS: $MOCK_URL (pid $MOCK_PID); courier.tms_concurrency = $CONC, courier.batch_size = $BATCH"
if [[ $DO_NGINX == 1 ]]; then
  echo "nginx: $NGINX_URL (pid $NGINX_PID, $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), 1 worker process, answers 200 {\"results\":[]})"
fi

# wait until the tms stage has recorded every outcome (its queue is empty) and
# every notice is delivered
wait_recorded() {
  wait_for "SELECT count(*) FROM $TMS_Q" 0 60 "tms queue entries left after the server had them all"
  wait_for "SELECT count(*) FILTER (WHERE status = 'delivered') || '/' || count(*) FROM courier.notices" "$N/$N" 30 "notices delivered/total"
}

# ------------------------------------------------------------------ data
echo
echo "-- setup: $N orders registered and shipping requested --"
bench_register_orders $DB "$N"
set_pool logic "$LOGIC_W"
set_pool tms "$TMS_W"

# queue_paused KEY BULK WORKERS: with the tms stage paused, one delay_orders
# call for the N orders; waits until the logic stage has written all N
# notices and their tms items, then VACUUM and CHECKPOINT, so the timed part
# starts from the same state every run.  R_LOGIC[KEY]: the call + logic stage.
declare -A R_LOGIC
queue_paused() {
  local key=$1 bulk=$2 w=$3 tq req
  set_conf courier.pause_tms on
  set_conf courier.tms_bulk_size "$bulk"
  reload
  set_pool tms "$w"
  reset_state
  next_day
  tq=$(us_now)
  req=$(Q $DB "$(delay_range_sql 1 "$N" "$DAY")")
  wait_for "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'" 0 120 "logic items left"
  R_LOGIC[$key]=$(Q $DB "SELECT round((extract(epoch FROM max(applied_at)) * 1e6 - $tq) / 1e6, 3)
                           FROM courier.delay_history WHERE request_id = $req")
  echo "     queued with the tms stage paused: delay_orders call + logic stage ($LOGIC_W workers) done ${R_LOGIC[$key]} s after the call started"
  wait_for "SELECT count(*) FROM courier.notices" "$N" 30 "notices written by the logic stage"
  wait_for "SELECT count(*) FROM $TMS_Q" "$N" 30 "tms queue entries"
  Q $DB "VACUUM (ANALYZE) courier.work_items" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
}

# ceiling_run URL BULK CONCURRENCY: curl_ceiling's line; sets CL_S, CL_RATE, CL_ERR
ceiling_run() {
  CL_LINE=$("$CEILING_BIN" --url "$1" --messages "$N" --bulk "$2" --concurrency "$3")
  CL_S=$(sed -n 's/.* seconds=\([0-9.]*\).*/\1/p' <<<"$CL_LINE")
  CL_RATE=$(sed -n 's/.* msgs_per_s=\([0-9]*\).*/\1/p' <<<"$CL_LINE")
  CL_ERR=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$CL_LINE")
}

# ------------------------------------------------------- 1 + 2: dispatcher vs mock
declare -A R_S R_RATE R_SPAN R_FIRST R_INFL R_DUP C_S C_RATE C_ERR C_SPAN

# dispatch_run KEY LATENCY BULK WORKERS
dispatch_run() {
  local key=$1 lat=$2 bulk=$3 w=$4 t0 d t_poll wall rec
  echo
  echo "-- dispatcher vs mock: latency $lat ms, bulk $bulk, $w tms worker$([[ $w == 1 ]] || echo s) (in flight <= $((CONC * w))) --"
  queue_paused "$key" "$bulk" "$w"
  mock_reset "$lat"

  # unpause and time
  set_conf courier.pause_tms off
  perf_start tms
  cpu_begin
  t0=$(us_now)
  reload
  while :; do
    d=$(mock_delivered)
    (( d >= N )) && break
    if (( $(us_now) - t0 > 300000000 )); then
      echo "!! only $d of $N delivered 300 s after the unpause" >&2
      exit 1
    fi
    sleep 0.01
  done
  t_poll=$(us_now)
  mock_stats
  wall=$(us_to_s $(( MS[last_delivery_us] - t0 )))
  cpu_end "$wall"
  perf_stop
  R_S[$key]=$wall
  R_RATE[$key]=$(fmt_rate "$N" "$wall")
  R_FIRST[$key]=$(us_to_s $(( MS[first_delivery_us] - t0 )))
  R_SPAN[$key]=$(fmt_rate "$N" "$(us_to_s $(( MS[last_delivery_us] - MS[first_delivery_us] )))")
  R_INFL[$key]=${MS[max_in_flight]}
  R_DUP[$key]=${MS[duplicates]}
  wait_recorded
  rec=$(Q $DB "SELECT round((extract(epoch FROM max(sent_at)) * 1e6 - $t0) / 1e6, 3) FROM courier.notices")
  printf '     courier: %s s unpause -> last accepted (%s msgs/s; poll saw it at %s s); first accepted at %s s; all recorded in the database at %s s\n' \
    "$wall" "${R_RATE[$key]}" "$(us_to_s $(( t_poll - t0 )))" "${R_FIRST[$key]}" "$rec"
  printf '     mock: %s requests, %s delivered, %s duplicates, max in flight %s; first->last %s msgs/s\n' \
    "${MS[requests]}" "${MS[delivered]}" "${MS[duplicates]}" "${MS[max_in_flight]}" "${R_SPAN[$key]}"

  # the ceiling: same mock, latency, bulk, messages; concurrency = courier's total
  set_conf courier.pause_tms on
  reload
  mock_reset "$lat"
  ceiling_run "$MOCK_URL" "$bulk" $((CONC * w))
  mock_stats
  C_S[$key]=$CL_S
  C_RATE[$key]=$CL_RATE
  C_ERR[$key]=$CL_ERR
  C_SPAN[$key]=$(fmt_rate "$N" "$(us_to_s $(( MS[last_delivery_us] - MS[first_delivery_us] )))")
  echo "     ceiling: $CL_LINE (mock: max in flight ${MS[max_in_flight]}, first->last ${C_SPAN[$key]} msgs/s)"
  echo "     ratio courier / ceiling: $(ratio "${R_RATE[$key]}" "${C_RATE[$key]}")"
}

RUNS=("0:1:1" "0:1:$TMS_W" "0:100:$TMS_W" "20:1:$TMS_W" "20:100:$TMS_W")
if [[ $TMS_W == 1 ]]; then RUNS=("0:1:1" "0:1:2" "0:100:1" "20:1:1" "20:100:1"); fi
if [[ $DO_MOCK == 1 ]]; then
  for r in "${RUNS[@]}"; do
    IFS=: read -r lat bulk w <<<"$r"
    dispatch_run "$r" "$lat" "$bulk" "$w"
  done
fi

# ------------------------------------------------------------ 3: nginx
# nginx keeps no count of what it received, so courier's own bookkeeping
# ends the clock: a poll (one persistent session, every 10 ms, an index
# probe) sees the tms queue empty (TMS_Q), then checks that all N notices
# are delivered, and the figure is the server's time of the
# last recorded outcome (max(notices.sent_at), set when a batch's outcomes
# are recorded), which the poll's period does not blur.  The mock runs
# above end at the mock's last delivery instead, a little earlier (before
# the last record).
declare -A NG_S NG_RATE NG_POLL NB_S NB_RATE NB_ERR
NG_WORKERS=(1 "$TMS_W")
[[ $TMS_W == 1 ]] && NG_WORKERS=(1)

nginx_run() {   # nginx_run WORKERS REP
  local w=$1 rep=$2 k="$1,$2" t0 t_poll last st
  echo
  echo "-- nginx, run $rep: bulk 1, $w tms worker$([[ $w == 1 ]] || echo s) (in flight <= $((CONC * w))) --"
  queue_paused "nginx,$k" 1 "$w"
  set_conf courier.pause_tms off
  perf_start tms
  cpu_begin
  t0=$(us_now)
  reload
  while :; do
    poll_q "SELECT EXISTS (SELECT 1 FROM $TMS_Q)"
    [[ $POLL_OUT == f ]] && break
    if (( $(us_now) - t0 > 300000000 )); then
      echo "!! tms queue not empty 300 s after the unpause" >&2
      exit 1
    fi
    sleep 0.01
  done
  t_poll=$(us_now)
  poll_q "SELECT count(*) FILTER (WHERE status = 'delivered') || ' ' || count(*) || ' ' ||
                 coalesce(round(extract(epoch FROM max(sent_at)) * 1e6)::bigint, 0) FROM courier.notices"
  read -r st _ last <<<"$POLL_OUT"
  NG_S[$k]=$(us_to_s $(( last - t0 )))
  cpu_end "${NG_S[$k]}"
  perf_stop
  if [[ $st != "$N" ]]; then
    echo "!! $st of $N notices delivered once no tms item was left:" >&2
    Q $DB "SELECT status, count(*) FROM courier.notices GROUP BY 1" >&2
    exit 1
  fi
  NG_RATE[$k]=$(fmt_rate "$N" "${NG_S[$k]}")
  NG_POLL[$k]=$(us_to_s $(( t_poll - t0 )))
  printf '     courier: %s s unpause -> last outcome recorded, %s msgs/s (poll saw the tms queue empty at %s s)\n' \
    "${NG_S[$k]}" "${NG_RATE[$k]}" "${NG_POLL[$k]}"

  set_conf courier.pause_tms on
  reload
  ceiling_run "$NGINX_URL" 1 $((CONC * w))
  NB_S[$k]=$CL_S
  NB_RATE[$k]=$CL_RATE
  NB_ERR[$k]=$CL_ERR
  echo "     bare client: $CL_LINE (${NB_S[$k]} s)"
  echo "     ratio courier / bare client: $(ratio "${NG_RATE[$k]}" "${NB_RATE[$k]}")"
}

if [[ $DO_NGINX == 1 ]]; then
  set_conf courier.tms_url "$NGINX_URL"
  reload
  poller_start
  # interleaved, so that drift in the machine's load hits both worker counts alike
  for ((rep = 1; rep <= REPEAT; rep++)); do
    for w in "${NG_WORKERS[@]}"; do nginx_run "$w" "$rep"; done
  done
  poller_stop
  set_conf courier.tms_url "$MOCK_URL"
  reload
fi

# ------------------------------------------------------------------ table
WARN=$(server_warnings 5)
T_END=$EPOCHREALTIME

echo
echo "== tms_bench figures: N = $N, fsync = on, synchronous_commit = on, batch $BATCH, tms_concurrency $CONC, servers on loopback =="
if [[ $DO_MOCK == 1 ]]; then
  echo "1+2. dispatcher vs the mock (unpause -> mock's last new delivery) and curl_ceiling (same mock, messages, latency, bulk;"
  echo "     concurrency = tms_concurrency x workers); one run each"
  printf '  %-7s %-5s %-7s %-8s | %-9s %-9s %-8s | %-9s %-9s %-6s | %-6s %s\n' \
    latency bulk workers inflight "courier s" "msgs/s" "seen max" "ceiling s" "msgs/s" "errors" ratio "target"
  for r in "${RUNS[@]}"; do
    IFS=: read -r lat bulk w <<<"$r"
    tgt=""
    [[ $bulk == 1 ]] && tgt=">= 0.80 $(awk -v a="${R_RATE[$r]}" -v b="${C_RATE[$r]}" 'BEGIN { print ((b > 0 && a / b >= 0.8) ? "met" : "MISSED") }')"
    printf '  %-7s %-5s %-7s %-8s | %-9s %-9s %-8s | %-9s %-9s %-6s | %-6s %s\n' \
      "$lat ms" "$bulk" "$w" "$((CONC * w))" "${R_S[$r]}" "${R_RATE[$r]}" "${R_INFL[$r]}" \
      "${C_S[$r]}" "${C_RATE[$r]}" "${C_ERR[$r]}" "$(ratio "${R_RATE[$r]}" "${C_RATE[$r]}")" "$tgt"
  done
  echo "  (seen max = the mock's max_in_flight during courier's run; courier s includes the reload that"
  echo "   unpauses and the first lease; duplicates seen by the mock in courier's runs:" \
       "$(for r in "${RUNS[@]}"; do printf '%s ' "${R_DUP[$r]}"; done))"
fi
if [[ $DO_NGINX == 1 ]]; then
  echo
  echo "3. courier vs the bare libcurl client against nginx (bulk 1, latency 0, same connections: tms_concurrency x workers);"
  echo "   courier: unpause -> last outcome recorded; medians of $REPEAT runs, the runs in brackets"
  printf '  %-38s | %-26s | %-26s | %-5s | %s\n' figure "courier msgs/s" "bare client req/s" ratio "target"
  for w in "${NG_WORKERS[@]}"; do
    cr=() br=()
    for ((rep = 1; rep <= REPEAT; rep++)); do cr+=("${NG_RATE[$w,$rep]}"); br+=("${NB_RATE[$w,$rep]}"); done
    cm=$(printf '%.0f' "$(median "${cr[@]}")")
    bm=$(printf '%.0f' "$(median "${br[@]}")")
    rt=$(ratio "$cm" "$bm")
    printf '  %-38s | %-26s | %-26s | %-5s | %s\n' \
      "bulk 1, $w tms worker$([[ $w == 1 ]] || echo s), $((CONC * w)) connections" \
      "$cm ($(fmt_list "${cr[@]}"))" "$bm ($(fmt_list "${br[@]}"))" "$rt" \
      ">= 0.8: $(awk -v r="$rt" 'BEGIN { print ((r >= 0.8) ? "met" : "MISSED") }')"
  done
  errs=()
  for k in "${!NB_ERR[@]}"; do errs+=("${NB_ERR[$k]}"); done
  echo "  (bare client errors per run: $(max_of "${errs[@]}") at most; nginx: 1 worker process, access_log off)"
fi
if [[ -n $WARN ]]; then
  echo
  echo "server log warnings/errors (first 5):"
  echo "$WARN"
fi
echo
printf 'tms_bench total runtime: %.0f s (load average now %s)\n' "$(elapsed "$T_START" "$T_END")" "$(cut -d' ' -f1-3 /proc/loadavg)"
