#!/usr/bin/env bash
# bench/tms_bench.sh: courier's TMS stage against the mock TMS, next to a bare
# libcurl client (bench/curl_ceiling) sending the same messages to the same
# mock, and the headline: one delay_orders call of 30,000 orders with every
# stage live, timed until the mock has accepted every notice.  Prints
# figures; never fails on time.  See bench/README-tms.md.
#
#   bash bench/tms_bench.sh
#
# What it measures (N = 30,000 orders, new ship date per run):
#   1. dispatcher: pause the tms stage, delay N orders, wait until the logic
#      stage has written all N notices, reset the mock, unpause, and time
#      from the unpause (the pg_reload_conf() call) to the mock's last new
#      delivery; provider latency 0 / 20 ms x bulk 1 / 100, and at 0 ms /
#      bulk 1 with 1 and with 2 tms workers.
#   2. ceiling: curl_ceiling, the same number of messages to the same mock at
#      the same latency and bulk, concurrency = courier.tms_concurrency x
#      tms workers; ratio courier / ceiling (target, reported only: >= 0.8 at
#      bulk 1).
#   3. headline: from just before one delay_orders(N orders) call, with no
#      stage paused, until the mock has accepted all N (polled every 10 ms;
#      the mock's own last_delivery_us is the exact figure); bulk 1 and 100.
#      Targets (reported only): < 2 s, and < 1 s with bulk sends.
# Each measurement also prints the CPU seconds each kind of process used
# during it (from /proc), and the headline samples pg_stat_activity every
# 20 ms, to show where the time goes.
#
# Environment (optional):
#   BENCH_N=30000               orders per run
#   BENCH_TMS_WORKERS=2         tms workers (min = max) of the runs other than
#                               the 1-worker one
#   BENCH_HEADLINE_LOGIC=2      logic workers (min = max) in the headline
#   BENCH_HEADLINE_TMS=2        tms workers (min = max) in the headline
#   BENCH_HEADLINE_REPEAT=3     headline runs per bulk size (best and median)
#   BENCH_PERF=1                also perf-record the workers during each
#                               measurement and print the share of their CPU
#                               under courier's phase functions (needs perf)
#   BENCH_PORT=56632            first port tried for the cluster
#   BENCH_KEEP=1                keep the work dir (cluster data, logs)

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${BENCH_N:-30000}
TMS_W=${BENCH_TMS_WORKERS:-2}
HL_LOGIC=${BENCH_HEADLINE_LOGIC:-2}
HL_TMS=${BENCH_HEADLINE_TMS:-2}
HL_REPEAT=${BENCH_HEADLINE_REPEAT:-3}
DB=bench
MOCK_BIN=$REPO/test/mock_tms/mock_tms
CEILING_BIN=$BENCH_DIR/curl_ceiling
T_START=$EPOCHREALTIME

echo "== courier tms_bench =="
bench_build
if ! make -s -C "$REPO/test/mock_tms" >/dev/null || ! make -s -C "$BENCH_DIR" curl_ceiling >/dev/null; then
  echo "build of the mock TMS or curl_ceiling failed" >&2
  exit 1
fi

# ------------------------------------------------------------------ mock TMS

MOCK_PID=
MOCK_PORT=
SAMPLER_PID=
PERF_PID=
PERF_N=0

tms_cleanup() {
  local rc=$?
  set +e   # a failing kill must not end the cleanup before the cluster is stopped
  [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
  [[ -n $PERF_PID ]] && kill -INT "$PERF_PID" 2>/dev/null
  [[ -n $MOCK_PID ]] && kill "$MOCK_PID" 2>/dev/null
  (exit "$rc")   # bench_cleanup exits with the status it finds in $?
  bench_cleanup
}

BENCH_PORT=${BENCH_PORT:-56632}
bench_cluster_start tms "shared_preload_libraries = 'courier'
courier.database = ''
max_worker_processes = 16"
trap tms_cleanup EXIT

"$MOCK_BIN" --port 0 >"$WORK/mock.out" 2>&1 &
MOCK_PID=$!
for _ in $(seq 200); do
  grep -q listening "$WORK/mock.out" 2>/dev/null && break
  sleep 0.025
done
MOCK_PORT=$(sed -n 's/^mock_tms listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/mock.out")
if [[ -z $MOCK_PORT ]]; then
  echo "mock TMS did not start:" >&2
  cat "$WORK/mock.out" >&2
  exit 1
fi
MOCK_URL=http://127.0.0.1:$MOCK_PORT/send

# mock_http METHOD PATH [BODY]: one HTTP/1.1 request over bash's /dev/tcp (no
# fork, about 0.5 ms, so polling every 10 ms costs almost nothing); prints
# the response body
mock_http() {
  local method=$1 path=$2 body=${3:-} fd resp
  exec {fd}<>"/dev/tcp/127.0.0.1/$MOCK_PORT"
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$method" "$path" "${#body}" "$body" >&"$fd"
  IFS= read -r -d '' -u "$fd" resp || true
  exec {fd}>&-
  printf '%s' "${resp#*$'\r\n\r\n'}"
}

# mock_stats: read /_stats into MS[key] (numbers only)
declare -A MS
mock_stats() {
  local json k
  json=$(mock_http GET /_stats)
  for k in requests delivered duplicates rejected status_2xx status_4xx status_5xx \
           max_in_flight first_delivery_us last_delivery_us; do
    if [[ $json =~ \"$k\":([0-9]+) ]]; then MS[$k]=${BASH_REMATCH[1]}; else MS[$k]=0; fi
  done
}

# mock_delivered: the delivered counter only (the poll)
mock_delivered() {
  local json
  json=$(mock_http GET /_stats)
  [[ $json =~ \"delivered\":([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo -1
}

mock_reset() {   # mock_reset LATENCY_MS
  mock_http POST /_reset >/dev/null
  local r
  r=$(mock_http POST /_control "{\"latency_ms\": $1}")
  if [[ $r != *"\"latency_ms\":$1"* && $r != *"\"latency_ms\": $1"* ]]; then
    echo "!! mock refused latency_ms=$1: $r" >&2
    exit 1
  fi
}

# ------------------------------------------------------------------ cluster

Q postgres "CREATE DATABASE $DB" >/dev/null
Q $DB "CREATE EXTENSION courier" >/dev/null
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

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
us_now() { local t=$EPOCHREALTIME; echo "${t/./}"; }
us_to_s() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1e6 }'; }

reload() { Q $DB "SELECT pg_reload_conf()" >/dev/null; }
set_conf() {   # set_conf NAME VALUE (no reload)
  Q $DB "ALTER SYSTEM SET $1 = '$2'" >/dev/null
}

n_workers() {   # n_workers logic|tms
  Q $DB "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier $1 worker'"
}

# set_pool STAGE N: min = max = N, reload, wait until N workers run
set_pool() {
  local stage=$1 n=$2 have deadline
  set_conf "courier.${stage}_min_workers" "$n"
  set_conf "courier.${stage}_max_workers" "$n"
  reload
  deadline=$(( $(date +%s) + 30 ))
  while :; do
    have=$(n_workers "$stage")
    if (( have == n )); then
      sleep 0.2
      have=$(n_workers "$stage")
      (( have == n )) && return 0
    fi
    if (( $(date +%s) > deadline )); then
      echo "!! $have $stage workers running 30 s after asking for $n" >&2
      grep -i 'courier' "$WORK/server.log" | tail -20 >&2
      exit 1
    fi
    sleep 0.05
  done
}

reset_state() {
  Q $DB "TRUNCATE courier.work_items, courier.requests, courier.delay_history, courier.notices" >/dev/null
  Q $DB "VACUUM (ANALYZE) courier.orders" >/dev/null
}

DAY=5
next_day() {   # sets DAY: a new ship date per run (days ahead, <= 90), so every notice is new
  DAY=$(( DAY + 1 ))
  if (( DAY > 88 )); then DAY=6; fi
}

delay_all_sql() {   # delay_all_sql DAYS
  echo "SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, $N)::bigint),
                                    'bench: harvest delayed by rain', current_date + $1)"
}

# wait_for SQL EXPECTED SECONDS WHAT
wait_for() {
  local sql=$1 want=$2 secs=$3 what=$4 got deadline
  deadline=$(( $(date +%s) + secs ))
  while :; do
    got=$(Q $DB "$sql")
    [[ $got == "$want" ]] && return 0
    if (( $(date +%s) > deadline )); then
      echo "!! $what: got '$got', wanted '$want' after $secs s" >&2
      Q $DB "SELECT * FROM courier.queue_stats" >&2 || true
      grep -E 'WARNING|ERROR|FATAL' "$WORK/server.log" | tail -10 >&2 || true
      exit 1
    fi
    sleep 0.05
  done
}

# wait until the tms stage has recorded every outcome (no tms item left) and
# every notice is delivered
wait_recorded() {
  wait_for "SELECT count(*) FROM courier.work_items WHERE stage = 'tms'" 0 60 "tms items left after the mock had them all"
  wait_for "SELECT count(*) FILTER (WHERE status = 'delivered') || '/' || count(*) FROM courier.notices" "$N/$N" 30 "notices delivered/total"
}

# --------------------------------------------------- CPU by kind of process
#
# cpu_snap: CPU ticks (utime + stime) of every child of the postmaster and
# of the mock, into CPU_T[pid], with the kind of process in CPU_K[pid].
# cpu_report BEFORE_ASSOC: CPU seconds per kind since that snapshot.
# (Client backends that exited meanwhile are not counted.)
CLK_TCK=$(getconf CLK_TCK)
PM_PID=$(head -1 "$DATA/postmaster.pid")
declare -A CPU_T CPU_K CPU_T0

proc_kind() {
  local pid=$1 cmd
  if [[ $pid == "$MOCK_PID" ]]; then echo mock; return; fi
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || { echo gone; return; }
  case $cmd in
    *"courier tms worker"*) echo tms ;;
    *"courier logic worker"*) echo logic ;;
    *"courier launcher"*) echo launcher ;;
    *walwriter*) echo walwriter ;;
    *"autovacuum worker"*) echo autovacuum ;;
    *checkpointer* | *"background writer"*) echo ckpt+bgwriter ;;
    *) echo other ;;
  esac
}

cpu_snap() {
  local f line rest pid
  local -a fld
  PM_PID=$(head -1 "$DATA/postmaster.pid")
  CPU_T=()
  for f in /proc/[0-9]*/stat; do
    IFS= read -r line 2>/dev/null <"$f" || continue
    pid=${line%% *}
    rest=${line##*) }
    read -r -a fld <<<"$rest"
    # fld: 0 state, 1 ppid, ..., 11 utime, 12 stime
    if [[ ${fld[1]} == "$PM_PID" || $pid == "$MOCK_PID" ]]; then
      CPU_T[$pid]=$(( fld[11] + fld[12] ))
      [[ -n ${CPU_K[$pid]:-} ]] || CPU_K[$pid]=$(proc_kind "$pid")
    fi
  done
}
# sys_ticks: "busy total" jiffies of the whole machine (all cores), /proc/stat
sys_ticks() {
  local user nice system idle iowait irq softirq steal rest
  read -r _ user nice system idle iowait irq softirq steal rest </proc/stat
  echo "$(( user + nice + system + irq + softirq + steal )) $(( user + nice + system + idle + iowait + irq + softirq + steal ))"
}
SYS0=
cpu_begin() {
  cpu_snap
  CPU_T0=()
  local p
  for p in "${!CPU_T[@]}"; do CPU_T0[$p]=${CPU_T[$p]}; done
  SYS0=$(sys_ticks)
}
cpu_end() {   # cpu_end WALL_SECONDS: prints two lines
  local wall=$1 p k d out='' ours=0 sys1 b0 t0 b1 t1
  local -A sum=()
  sys1=$(sys_ticks)
  cpu_snap
  for p in "${!CPU_T[@]}"; do
    d=$(( CPU_T[$p] - ${CPU_T0[$p]:-0} ))
    k=${CPU_K[$p]}
    sum[$k]=$(( ${sum[$k]:-0} + d ))
    ours=$(( ours + d ))
  done
  for k in tms logic launcher mock walwriter autovacuum ckpt+bgwriter other; do
    [[ -n ${sum[$k]:-} ]] || continue
    out+=$(awk -v k="$k" -v t="${sum[$k]}" -v hz="$CLK_TCK" -v w="$wall" \
      'BEGIN { printf "%s %.2f s (%.0f%%), ", k, t / hz, (w > 0) ? 100 * t / hz / w : 0 }')
  done
  echo "     cpu over $(printf '%.2f' "$wall") s wall ($(nproc) cores = $(( 100 * $(nproc) ))%): ${out%, }"
  read -r b0 t0 <<<"$SYS0"
  read -r b1 t1 <<<"$sys1"
  awk -v b=$(( b1 - b0 )) -v t=$(( t1 - t0 )) -v o="$ours" -v n="$(nproc)" 'BEGIN {
      if (t <= 0) exit
      printf "     whole machine busy %.0f%% of its %d cores (courier cluster + mock: %.0f%%, everything else: %.0f%%)\n",
             100 * b / t, n, 100 * o / t, 100 * (b - o) / t }'
}

# ------------------------------------------- optional perf profile (BENCH_PERF=1)
# perf_start KINDS...: perf record (call graphs) of the running courier workers
# of those kinds (tms, logic); perf_stop: stop it and print the share of the
# on-CPU samples spent under courier's phase functions.
perf_start() {
  [[ -n ${BENCH_PERF:-} ]] || return 0
  if ! command -v perf >/dev/null; then
    echo "     (BENCH_PERF set but perf is not installed)"
    return 0
  fi
  local kinds pids
  kinds=$(printf "'courier %s worker'," "$@")
  pids=$(Q $DB "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type IN (${kinds%,})")
  PERF_N=$((PERF_N + 1))
  perf record -q -g -p "$pids" -o "$WORK/perf.$PERF_N.data" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.3   # perf attaches
}
perf_stop() {
  [[ -n $PERF_PID ]] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=
  echo "     perf, share of the workers' on-CPU samples (callers include callees):"
  perf report -i "$WORK/perf.$PERF_N.data" --children --sort symbol -g none --stdio 2>/dev/null |
    awk '$4 ~ /^(tms_lease|tms_send|tms_record|courier_dispatch|courier_logic_run_batch|courier_claim_due|courier_lease_due|apply_isolating_failures|CommitTransactionCommand|curl_multi_socket_action|WaitEventSetWait|__send|__libc_recv|recv|epoll_wait)$/ {
           printf "       %-28s %s\n", $4, $1 }'
}

# ------------------------------------------------- pg_stat_activity sampler
sampler_start() {
  cat >"$WORK/sampler.sql" <<'EOF'
SELECT backend_type || '|' || coalesce(state, '-') || '|' ||
       coalesce(wait_event_type || ':' || wait_event, 'CPU') || '|' || coalesce(left(query, 30), '')
  FROM pg_stat_activity
 WHERE backend_type LIKE 'courier%worker' OR backend_type IN ('walwriter', 'autovacuum worker');
\watch 0.02
EOF
  "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d $DB \
    -f "$WORK/sampler.sql" >"$WORK/sampler.out" 2>&1 &
  SAMPLER_PID=$!
  sleep 0.1
}
sampler_stop() {   # prints the summary
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=
  # readable version: per backend type, top 4 states by share of samples
  awk -F'|' 'NF >= 3 && $1 != "" {
      n[$1]++; lbl = $2 " " $3 (($2 == "active") ? " [" $4 "]" : ""); c[$1 SUBSEP lbl]++ }
    END {
      for (k in c) { split(k, a, SUBSEP); printf "%s\t%d\t%s\n", a[1], 100 * c[k] / n[a[1]], a[2] } }' \
    "$WORK/sampler.out" | sort -t$'\t' -k1,1 -k2,2nr |
    awk -F'\t' '{ if ($1 != last) { if (last != "") printf "\n"; printf "       %-22s", $1 ":"; last = $1; shown = 0 }
                  if (shown < 4) { printf " %s%% %s;", $2, $3; shown++ } }
                END { if (last != "") printf "\n" }'
}

# ------------------------------------------------------------------ data
echo
echo "-- setup: $N orders registered and shipping requested --"
bench_register_orders $DB "$N"
set_pool logic "$HL_LOGIC"
set_pool tms "$TMS_W"

# ------------------------------------------------------- 1 + 2: dispatcher
declare -A R_S R_RATE R_SPAN R_FIRST R_INFL R_DUP R_LOGIC C_S C_RATE C_ERR C_SPAN

# dispatch_run KEY LATENCY BULK WORKERS
dispatch_run() {
  local key=$1 lat=$2 bulk=$3 w=$4 t0 d t_poll wall cl rec tq req
  echo
  echo "-- dispatcher: latency $lat ms, bulk $bulk, $w tms worker$([[ $w == 1 ]] || echo s) (in flight <= $((CONC * w))) --"
  # paused: queue N notices
  set_conf courier.pause_tms on
  set_conf courier.tms_bulk_size "$bulk"
  reload
  set_pool tms "$w"
  reset_state
  next_day
  tq=$(us_now)
  req=$(Q $DB "$(delay_all_sql "$DAY")")
  wait_for "SELECT count(*) FROM courier.work_items WHERE stage = 'logic'" 0 120 "logic items left"
  R_LOGIC[$key]=$(Q $DB "SELECT round((extract(epoch FROM max(applied_at)) * 1e6 - $tq) / 1e6, 3)
                           FROM courier.delay_history WHERE request_id = $req")
  echo "     queued with the tms stage paused: delay_orders call + logic stage ($HL_LOGIC workers) done ${R_LOGIC[$key]} s after the call started"
  wait_for "SELECT count(*) FROM courier.notices" "$N" 30 "notices written by the logic stage"
  wait_for "SELECT count(*) FROM courier.work_items WHERE stage = 'tms'" "$N" 30 "tms items queued"
  Q $DB "VACUUM (ANALYZE) courier.work_items" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
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
  cl=$("$CEILING_BIN" --url "$MOCK_URL" --messages "$N" --bulk "$bulk" --concurrency $((CONC * w)))
  mock_stats
  C_S[$key]=$(sed -n 's/.* seconds=\([0-9.]*\).*/\1/p' <<<"$cl")
  C_RATE[$key]=$(sed -n 's/.* msgs_per_s=\([0-9]*\).*/\1/p' <<<"$cl")
  C_ERR[$key]=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$cl")
  C_SPAN[$key]=$(fmt_rate "$N" "$(us_to_s $(( MS[last_delivery_us] - MS[first_delivery_us] )))")
  echo "     ceiling: $cl (mock: max in flight ${MS[max_in_flight]}, first->last ${C_SPAN[$key]} msgs/s)"
  echo "     ratio courier / ceiling: $(ratio "${R_RATE[$key]}" "${C_RATE[$key]}")"
}

RUNS=("0:1:1" "0:1:$TMS_W" "0:100:$TMS_W" "20:1:$TMS_W" "20:100:$TMS_W")
if [[ $TMS_W == 1 ]]; then RUNS=("0:1:1" "0:1:2" "0:100:1" "20:1:1" "20:100:1"); fi
for r in "${RUNS[@]}"; do
  IFS=: read -r lat bulk w <<<"$r"
  dispatch_run "$r" "$lat" "$bulk" "$w"
done

# ------------------------------------------------------------ 3: headline
declare -A H_CALL H_LOGIC H_FIRST H_LAST H_POLL H_REC H_REQ H_DUP

headline_run() {   # headline_run BULK REP
  local bulk=$1 rep=$2 k="$1,$2" t0 t_call t_poll d req logic
  echo
  echo "-- headline, run $rep: one delay_orders($N orders), everything live, bulk $bulk, logic workers $HL_LOGIC, tms workers $HL_TMS, mock latency 0 --"
  set_conf courier.pause_tms off
  set_conf courier.pause_logic off
  set_conf courier.tms_bulk_size "$bulk"
  reload
  set_pool logic "$HL_LOGIC"
  set_pool tms "$HL_TMS"
  reset_state
  Q $DB "VACUUM (ANALYZE) courier.work_items" >/dev/null
  Q $DB "CHECKPOINT" >/dev/null
  mock_reset 0
  next_day
  sleep 0.5   # every worker asleep on its latch
  sampler_start
  perf_start tms logic
  cpu_begin
  t0=$(us_now)
  req=$(Q $DB "$(delay_all_sql "$DAY")")
  t_call=$(us_now)
  while :; do
    d=$(mock_delivered)
    (( d >= N )) && break
    if (( $(us_now) - t0 > 300000000 )); then
      echo "!! only $d of $N delivered 300 s after the call" >&2
      exit 1
    fi
    sleep 0.01
  done
  t_poll=$(us_now)
  mock_stats
  H_LAST[$k]=$(us_to_s $(( MS[last_delivery_us] - t0 )))
  cpu_end "${H_LAST[$k]}"
  perf_stop
  echo "     pg_stat_activity every 20 ms (share of samples per backend type):"
  sampler_stop
  H_CALL[$k]=$(us_to_s $(( t_call - t0 )))
  H_FIRST[$k]=$(us_to_s $(( MS[first_delivery_us] - t0 )))
  H_POLL[$k]=$(us_to_s $(( t_poll - t0 )))
  H_REQ[$k]=${MS[requests]}
  H_DUP[$k]=${MS[duplicates]}
  wait_recorded
  logic=$(Q $DB "SELECT round((extract(epoch FROM max(applied_at)) * 1e6 - $t0) / 1e6, 3)
                   FROM courier.delay_history WHERE request_id = $req")
  H_LOGIC[$k]=$logic
  H_REC[$k]=$(Q $DB "SELECT round((extract(epoch FROM max(sent_at)) * 1e6 - $t0) / 1e6, 3) FROM courier.notices")
  local st
  st=$(Q $DB "SELECT total || '/' || done || '/' || failed FROM courier.request_status($req)")
  printf '     call returned %s s; logic stage done %s s; first accepted %s s; ALL ACCEPTED %s s (poll saw it at %s s); all recorded %s s\n' \
    "${H_CALL[$k]}" "$logic" "${H_FIRST[$k]}" "${H_LAST[$k]}" "${H_POLL[$k]}" "${H_REC[$k]}"
  printf '     mock: %s requests, %s delivered, %s duplicates, max in flight %s; request_status total/done/failed %s\n' \
    "${MS[requests]}" "${MS[delivered]}" "${MS[duplicates]}" "${MS[max_in_flight]}" "$st"
}

for ((rep = 1; rep <= HL_REPEAT; rep++)); do
  headline_run 1 "$rep"
  headline_run 100 "$rep"
done

# ------------------------------------------------------------------ table
WARN=$(grep -E 'WARNING|ERROR|FATAL|PANIC' "$WORK/server.log" |
       grep -v 'terminating background worker\|terminating connection due to administrator' | head -5 || true)
T_END=$EPOCHREALTIME

echo
echo "== tms_bench figures: N = $N, fsync = on, synchronous_commit = on, batch $BATCH, tms_concurrency $CONC, mock on loopback =="
echo "1+2. dispatcher (unpause -> mock's last new delivery) vs curl_ceiling (same mock, messages, latency, bulk;"
echo "     concurrency = tms_concurrency x workers)"
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
echo
echo "3. headline: one delay_orders($N) call, nothing paused, logic workers $HL_LOGIC, tms workers $HL_TMS, mock latency 0"
printf '  %-5s %-4s | %-13s %-11s %-14s %-14s %-13s | %s\n' bulk run "call returned" "logic done" "first accepted" "ALL ACCEPTED" "all recorded" "requests/dups"
for b in 1 100; do
  for ((rep = 1; rep <= HL_REPEAT; rep++)); do
    k="$b,$rep"
    printf '  %-5s %-4s | %-13s %-11s %-14s %-14s %-13s | %s\n' "$b" "$rep" "${H_CALL[$k]} s" "${H_LOGIC[$k]} s" \
      "${H_FIRST[$k]} s" "${H_LAST[$k]} s" "${H_REC[$k]} s" "${H_REQ[$k]}/${H_DUP[$k]}"
  done
done
echo "  (seconds from just before the call; ALL ACCEPTED = the mock's last_delivery_us; logic done = last delay_history row)"
lvals=()
for r in "${RUNS[@]}"; do lvals+=("${R_LOGIC[$r]}"); done
echo "  for comparison, the same call with the tms stage paused (part 1's queueing): logic stage done after" \
     "$(printf '%.3f' "$(median "${lvals[@]}")") s median ($(min_of "${lvals[@]}")..$(max_of "${lvals[@]}") s over ${#lvals[@]} runs)"
for b in 1 100; do
  if [[ $b == 1 ]]; then lim=2; else lim=1; fi
  vals=()
  for ((rep = 1; rep <= HL_REPEAT; rep++)); do vals+=("${H_LAST[$b,$rep]}"); done
  best=$(min_of "${vals[@]}")
  med=$(median "${vals[@]}")
  met=$(awk -v s="$med" -v l="$lim" 'BEGIN { print ((s < l) ? "met" : "MISSED") }')
  printf '  HEADLINE bulk %-3s: all %s accepted in %s s median, %s s best of %d   (target < %s s: %s by the median)\n' \
    "$b" "$N" "$(printf '%.3f' "$med")" "$best" "$HL_REPEAT" "$lim" "$met"
done
if [[ -n $WARN ]]; then
  echo
  echo "server log warnings/errors (first 5):"
  echo "$WARN"
fi
echo
printf 'tms_bench total runtime: %.0f s (load average now %s)\n' "$(elapsed "$T_START" "$T_END")" "$(cut -d' ' -f1-3 /proc/loadavg)"
