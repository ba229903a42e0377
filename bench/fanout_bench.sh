#!/usr/bin/env bash
# bench/fanout_bench.sh: order events to subscribers (courier 0.6, issue 12,
# docs/fanout.md), in two parts, every stage live (2 logic, 2 tms workers,
# one subscriber worker per subscription, the mock TMS at latency 0 serving
# the TMS and the subscribers' /hooks/<name> alike):
#
#   1. events/s to 4 subscribers at once.  4 subscriptions (s1..s4) to
#      order.delayed, each with a signing secret (so that the HMAC of every
#      POST is measured; the mock is started with --hook-secret for each and
#      verifies it) and batch_size BENCH_FANOUT_BATCH.  One
#      courier.delay_orders call of N orders; timed from just before the call
#      until the mock has recorded 4 * N events (GET /_hooks/stats over
#      bash's /dev/tcp every BENCH_FANOUT_POLL_MS) and then every
#      subscriber's backlog is 0 (the deliveries not yet accepted, polled
#      from one persistent psql session).  Prints events in total, seconds,
#      events/s in total and per subscriber (each from the poll that first
#      saw its N events), the duplicates and bad signatures the mock saw
#      (expected 0), and, from the same run, when the logic stage was done
#      and when the mock TMS had accepted every notice.
#   2. the subscribers' cost to the TMS headline.  The same call timed as
#      headline_bench.sh times it (bulk 1, until the mock TMS's
#      last_delivery_us), (a) with no subscription (no event is recorded at
#      all then) and (b) with s1..s4 subscribed to order.delayed,
#      notice.delivered and notice.failed.  Prints both medians and b / a.
#      After (b)'s timing the script waits for the subscribers to drain and
#      prints when they were done and the events recorded by type (a build
#      without the notice.* events shows none of them).
#
# Both parts run in the two configurations of headline_bench.sh: conf (every
# courier setting in postgresql.conf from the server's start) and live (the
# server started with courier.database only, the rest by ALTER SYSTEM +
# reload).  Each run: unsubscribe everything, empty every queue table
# (courier.events and courier.deliveries included), VACUUM (ANALYZE) the
# empty queues (work_items, deliveries), subscribe what the run needs, write
# the settings, restart, wait for the logic and tms pools; with subscribers,
# one warm-up event (courier.emit_events, order_id 0) starts their 4
# workers, as they run in a deployment that has had events before (the
# launcher starts a subscriber's worker at its first due event, and it stays),
# and is delivered before the clock starts; then CHECKPOINT, reset the mock,
# the call.  Runs are interleaved (per repetition: part 1 conf, part 1 live,
# 2a conf, 2b conf, 2a live, 2b live), medians printed with the runs beside
# them.  Prints figures; never fails on time: it stops only when a run
# makes no progress (no new event at the mock, no change of the backlog, no
# new notice) for BENCH_STALL seconds, printing the subscribers' state and
# the server log.  A line every 10 s shows a long run is alive.
#
# The empty deliveries queue is VACUUM (ANALYZE)d before each run, as
# autovacuum leaves a drained queue (headline_bench.sh does the same with
# work_items): the subscriber workers then plan their kept lease on the
# warm-up event's tiny, analyzed queue, as a worker started by a trickle of
# events does in a deployment.  BENCH_FANOUT_ANALYZE_EMPTY=0 leaves the
# queue as TRUNCATE left it (never analyzed), which plans differently.
# See bench/README.md.
#
#   BENCH_SKIP_BUILD=1 bash bench/fanout_bench.sh
#   BENCH_SKIP_BUILD=1 BENCH_N=2000 BENCH_REPEAT=1 bash bench/fanout_bench.sh   # a quick check
#
# Environment (optional):
#   BENCH_SKIP_BUILD=1       use the installed courier (no make install)
#   BENCH_N=30000            orders of the delay_orders call (every part)
#   BENCH_FANOUT_BATCH=100   batch_size of each subscription (events per POST)
#   BENCH_REPEAT=3           runs per figure (median)
#   BENCH_CONFIGS="conf live"  which configurations to run
#   BENCH_PARTS="1 2"        which parts to run
#   BENCH_LOGIC_WORKERS=2    logic workers (min = max)
#   BENCH_TMS_WORKERS=2      tms workers (min = max)
#   BENCH_FANOUT_POLL_MS=20  poll interval of the mock's /_hooks/stats in part 1
#   BENCH_FANOUT_ANALYZE_EMPTY=1  VACUUM (ANALYZE) the emptied courier.deliveries
#                            before each run (0: leave it never analyzed)
#   BENCH_STALL=120          seconds without progress after which a run stops
#                            with the subscribers' state and the server log
#   BENCH_FANOUT_TYPES="order.delayed notice.delivered notice.failed"  the
#                            types the 4 subscribers of part 2b ask for
#   BENCH_PORT=56832         first port tried for the cluster
#   BENCH_KEEP=1             keep the work dir (cluster data, logs)

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/tms_lib.sh
source "$BENCH_DIR/tms_lib.sh"

N=${BENCH_N:-30000}
BATCH=${BENCH_FANOUT_BATCH:-100}
REPEAT=${BENCH_REPEAT:-3}
read -r -a CONFIGS <<<"${BENCH_CONFIGS:-conf live}"
read -r -a PARTS <<<"${BENCH_PARTS:-1 2}"
LOGIC_W=${BENCH_LOGIC_WORKERS:-2}
TMS_W=${BENCH_TMS_WORKERS:-2}
POLL_MS=${BENCH_FANOUT_POLL_MS:-20}
STALL=${BENCH_STALL:-120}
SUBS=(s1 s2 s3 s4)
NSUB=${#SUBS[@]}
TYPES_1="order.delayed"
TYPES_2=${BENCH_FANOUT_TYPES:-"order.delayed notice.delivered notice.failed"}
DB=bench
T_START=$EPOCHREALTIME
POLL_S=$(awk -v m="$POLL_MS" 'BEGIN { printf "%.3f", m / 1000 }')

has_part() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }
secret_of() { echo "bench-fanout-secret-of-$1"; }   # >= 16 characters

echo "== courier fanout_bench =="
bench_build
# only the mock is needed (no curl_ceiling); make does nothing when it is up to date
if ! make -s -C "$REPO/test/mock_tms" >/dev/null; then
  echo "build of the mock TMS failed" >&2
  exit 1
fi

BENCH_PORT=${BENCH_PORT:-56832}
# launcher + logic + tms + 4 subscriber workers, and room for parallel query
bench_cluster_start fanout "shared_preload_libraries = 'courier'
courier.database = ''
max_worker_processes = 20"
tms_trap

# the mock with a secret per subscriber: it verifies every signature (and
# --hook-secret survives /_reset, unlike hook_secrets set by /_control)
fan_mock_start() {
  local args=() s
  for s in "${SUBS[@]}"; do args+=(--hook-secret "$s=$(secret_of "$s")"); done
  "$MOCK_BIN" --port 0 "${args[@]}" >"$WORK/mock.out" 2>&1 &
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
}
fan_mock_start

Q postgres "CREATE DATABASE $DB" >/dev/null
Q $DB "CREATE EXTENSION courier" >/dev/null
if [[ $(Q $DB "SELECT to_regproc('courier.subscribe') IS NOT NULL AND to_regclass('courier.deliveries') IS NOT NULL") != t ]]; then
  echo "the installed courier ($(Q $DB "SELECT extversion FROM pg_extension WHERE extname = 'courier'")) has no subscribers (courier.subscribe, 0.6)" >&2
  exit 1
fi
WARM_SQL="SELECT courier.emit_events(ARRAY[1]::bigint[], ARRAY[0]::bigint[], ARRAY['order.delayed'],
                                     ARRAY['{\"bench\": \"warm-up\"}'::jsonb], now())"
if [[ $(Q $DB "SELECT to_regprocedure('courier.emit_events(bigint[],bigint[],text[],jsonb[],timestamptz)') IS NOT NULL") != t ]]; then
  WARM_SQL=
  echo "!! no courier.emit_events(bigint[], bigint[], text[], jsonb[], timestamptz): no warm-up event;" \
       "the subscriber workers start inside the measurement"
fi
tms_queue_detect
machine_line
echo "installed extension: courier $(Q $DB "SELECT extversion FROM pg_extension WHERE extname = 'courier'")"
echo "mock TMS and subscribers: $MOCK_URL and http://127.0.0.1:$MOCK_PORT/hooks/{$(IFS=,; echo "${SUBS[*]}")} (pid $MOCK_PID), latency 0"
echo
echo "-- setup: $N orders registered and shipping requested --"
bench_register_orders $DB "$N"

# the measured settings, in postgresql.conf syntax (headline_bench's, bulk 1)
measured_settings() {
  cat <<EOF
courier.database = '$DB'
courier.tms_url = '$MOCK_URL'
courier.tms_bulk_size = 1
courier.logic_min_workers = $LOGIC_W
courier.logic_max_workers = $LOGIC_W
courier.tms_min_workers = $TMS_W
courier.tms_max_workers = $TMS_W
EOF
}

cfg_title() { [[ $1 == conf ]] && echo "(conf) postgresql.conf from start" || echo "(live) ALTER SYSTEM + reload"; }

# ---------------------------------------------------------- the subscribers

# hook_stats: GET /_hooks/stats into HS_REQ/HS_EV/HS_DUP/HS_BAD[hook] and
# HOOKS_EV, HOOKS_DUP, HOOKS_BAD, HOOKS_REQ (sums over s1..s4)
declare -A HS_REQ HS_EV HS_DUP HS_BAD
HOOKS_EV=0 HOOKS_DUP=0 HOOKS_BAD=0 HOOKS_REQ=0 HOOKS_JSON=
hook_stats() {
  local s obj re
  HOOKS_JSON=$(mock_http GET /_hooks/stats)
  HOOKS_EV=0 HOOKS_DUP=0 HOOKS_BAD=0 HOOKS_REQ=0
  for s in "${SUBS[@]}"; do
    HS_REQ[$s]=0 HS_EV[$s]=0 HS_DUP[$s]=0 HS_BAD[$s]=0
    re="\"$s\":[{]([^}]*)[}]"
    if [[ $HOOKS_JSON =~ $re ]]; then
      obj=${BASH_REMATCH[1]}
      [[ $obj =~ \"requests\":([0-9]+) ]] && HS_REQ[$s]=${BASH_REMATCH[1]}
      [[ $obj =~ \"events\":([0-9]+) ]] && HS_EV[$s]=${BASH_REMATCH[1]}
      [[ $obj =~ \"duplicates\":([0-9]+) ]] && HS_DUP[$s]=${BASH_REMATCH[1]}
      [[ $obj =~ \"bad_signatures\":([0-9]+) ]] && HS_BAD[$s]=${BASH_REMATCH[1]}
    fi
    HOOKS_EV=$(( HOOKS_EV + HS_EV[$s] ))
    HOOKS_DUP=$(( HOOKS_DUP + HS_DUP[$s] ))
    HOOKS_BAD=$(( HOOKS_BAD + HS_BAD[$s] ))
    HOOKS_REQ=$(( HOOKS_REQ + HS_REQ[$s] ))
  done
}

# the subscribers' state, for a run that does not complete
subscribers_state() {
  Q $DB "SELECT name || ': backlog ' || backlog || ', failed ' || failed || ', oldest ' || coalesce(oldest_undelivered_age::text, '-')
                || ', worker ' || coalesce(worker_pid::text, 'none') || ', breaker ' || breaker
                || ', delivered ' || delivered || ', retried ' || retried
           FROM courier.subscribers ORDER BY name" 2>&1 | sed 's/^/     /'
}
stuck() {   # stuck WHAT: say what did not finish, show the state, stop
  echo "!! $1" >&2
  {
    echo "   courier.subscribers:"
    subscribers_state
    echo "   mock /_hooks/stats: $(mock_http GET /_hooks/stats)"
    echo "   queues: logic+tms $(Q $DB "SELECT (SELECT count(*) FROM courier.work_items) + (SELECT count(*) FROM $TMS_Q)"), mock TMS delivered $(mock_delivered)"
    echo "   subscriber workers: $(n_workers subscriber)"
    echo "   server log (last warnings/errors):"
    grep -E 'WARNING|ERROR|FATAL|PANIC' "$WORK/server.log" | tail -10 | sed 's/^/     /'
  } >&2
  exit 1
}

# progress VALUE WHAT: called in a poll loop; stops the run when VALUE has
# not changed for STALL seconds, and prints WHAT every 10 s (from
# progress_start T0 on)
PROG_V='' PROG_T=0 PROG_T0=0 PROG_SHOWN=0
progress_start() { PROG_V='' PROG_T=$(us_now) PROG_T0=$1 PROG_SHOWN=$(us_now); }
progress() {
  local now
  now=$(us_now)
  if [[ $1 != "$PROG_V" ]]; then PROG_V=$1 PROG_T=$now; fi
  if (( now - PROG_T > STALL * 1000000 )); then
    stuck "$2: no progress for $STALL s"
  fi
  if (( now - PROG_SHOWN >= 10000000 )); then
    PROG_SHOWN=$now
    echo "     ... $(us_to_s $(( now - PROG_T0 ))) s: $2"
  fi
}

backlog_sql="SELECT count(*) FILTER (WHERE failed_at IS NULL) || ' ' || count(*) FILTER (WHERE failed_at IS NOT NULL) FROM courier.deliveries"

# wait_drained T0 WHAT: poll (persistent session, every POLL_MS) until no
# delivery is left; sets T_DRAIN (us since T0).  A failed delivery stops it.
wait_drained() {
  local t0=$1 what=$2
  progress_start "$t0"
  while :; do
    poll_q "$backlog_sql"
    [[ ${POLL_OUT% *} == 0 && ${POLL_OUT#* } == 0 ]] && break
    if [[ ${POLL_OUT#* } != 0 ]]; then
      stuck "$what: ${POLL_OUT#* } deliveries failed (backlog ${POLL_OUT% *})"
    fi
    progress "$POLL_OUT" "$what: backlog ${POLL_OUT% *}"
    sleep "$POLL_S"
  done
  T_DRAIN=$(( $(us_now) - t0 ))
}

# events recorded by type (the warm-up event, order_id 0, left out)
events_by_type() {
  Q $DB "SELECT coalesce(string_agg(type || ' ' || c, ', ' ORDER BY type), 'none')
           FROM (SELECT type, count(*) AS c FROM courier.events WHERE order_id <> 0 GROUP BY type) x"
}
events_of_type() {
  Q $DB "SELECT count(*) FROM courier.events WHERE order_id <> 0 AND type = '$1'"
}

# ---------------------------------------------------------------- each run

# prepare CONFIG TYPES: no subscription, empty queues, TYPES' subscriptions
# (none when empty), the settings of CONFIG, a restarted server with the
# workers running (the subscriber workers warmed up), a reset mock
prepare() {
  local cfg=$1 types=$2 name value line s arr tl
  poller_stop
  Q $DB "SELECT count(courier.unsubscribe(name)) FROM courier.subscriptions" >/dev/null
  reset_state
  Q $DB "TRUNCATE courier.events, courier.deliveries" >/dev/null
  # the queues analyzed empty, as autovacuum leaves them after a drain (the
  # log tables, events among them, keep what TRUNCATE leaves: headline_bench)
  Q $DB "VACUUM (ANALYZE) courier.work_items" >/dev/null
  if [[ ${BENCH_FANOUT_ANALYZE_EMPTY:-1} == 1 ]]; then
    Q $DB "VACUUM (ANALYZE) courier.deliveries" >/dev/null
  fi
  if [[ -n $types ]]; then
    read -r -a tl <<<"$types"
    arr=$(printf "'%s'," "${tl[@]}")
    arr="ARRAY[${arr%,}]"
    for s in "${SUBS[@]}"; do
      Q $DB "SELECT courier.subscribe('$s', 'http://127.0.0.1:$MOCK_PORT/hooks/$s', $arr,
                                      batch_size => $BATCH, secret => '$(secret_of "$s")')" >/dev/null
    done
  fi
  Q $DB "ALTER SYSTEM RESET ALL" >/dev/null
  if [[ $cfg == conf ]]; then
    bench_conf_block "$(measured_settings)"
    bench_cluster_restart
  else
    bench_conf_block "courier.database = '$DB'"
    bench_cluster_restart
    while IFS= read -r line; do
      name=${line%% = *}
      value=${line#* = }
      [[ $name == courier.database ]] && continue
      Q $DB "ALTER SYSTEM SET $name = $value" >/dev/null
    done < <(measured_settings)
    reload
  fi
  wait_pool logic "$LOGIC_W"
  wait_pool tms "$TMS_W"
  check_settings "$cfg"
  if [[ -n $types && -n $WARM_SQL ]]; then
    Q $DB "$WARM_SQL" >/dev/null
    wait_pool subscriber "$NSUB"
    wait_for "$backlog_sql" "0 0" 30 "the warm-up event's deliveries (backlog, failed)"
  fi
  Q $DB "CHECKPOINT" >/dev/null
  mock_reset 0
  CPU_K=()
  poller_start
}

declare -A F_DRAIN F_MOCK F_TMS F_LOGIC F_CALL F_EV F_DUP F_BAD F_REQ F_SUB
declare -A H_LAST H_DRAIN H_TYPES

# fanout_run CONFIG REP: part 1
fanout_run() {
  local cfg=$1 rep=$2 k="$1,$2" t0 t_call t_mock now s req st left d
  local -A done_us=()
  echo
  echo "-- part 1, run $rep, $(cfg_title "$cfg"): delay_orders($N orders) to $NSUB subscribers of order.delayed, batch $BATCH, signed --"
  prepare "$cfg" "$TYPES_1"
  next_day
  sleep 0.5   # every worker asleep on its latch
  cpu_begin
  t0=$(us_now)
  req=$(Q $DB "$(delay_range_sql 1 "$N" "$DAY")")
  t_call=$(us_now)
  progress_start "$t0"
  while :; do
    hook_stats
    now=$(us_now)
    for s in "${SUBS[@]}"; do
      if [[ -z ${done_us[$s]:-} ]] && (( HS_EV[$s] >= N )); then done_us[$s]=$(( now - t0 )); fi
    done
    (( HOOKS_EV >= NSUB * N )) && break
    progress "$HOOKS_EV" "part 1: the mock has $HOOKS_EV of $(( NSUB * N )) events"
    sleep "$POLL_S"
  done
  t_mock=$(( $(us_now) - t0 ))
  # (a hook with duplicates may have reached the total before another its N)
  for s in "${SUBS[@]}"; do [[ -n ${done_us[$s]:-} ]] || done_us[$s]=$t_mock; done
  wait_drained "$t0" "part 1"
  F_DRAIN[$k]=$(us_to_s "$T_DRAIN")
  cpu_end "${F_DRAIN[$k]}"
  F_MOCK[$k]=$(us_to_s "$t_mock")
  F_CALL[$k]=$(us_to_s $(( t_call - t0 )))
  for s in "${SUBS[@]}"; do F_SUB[$k,$s]=$(fmt_rate "$N" "$(us_to_s "${done_us[$s]}")"); done
  # the TMS side of the same run
  progress_start "$t0"
  while :; do
    d=$(mock_delivered)
    (( d >= N )) && break
    progress "$d" "part 1: the mock TMS has $d of $N notices"
    sleep 0.05
  done
  mock_stats
  F_TMS[$k]=$(us_to_s $(( MS[last_delivery_us] - t0 )))
  wait_for "SELECT (SELECT count(*) FROM courier.work_items) + (SELECT count(*) FROM $TMS_Q)" 0 60 \
    "work items and tms queue entries left after the mock had them all"
  wait_for "SELECT count(*) FILTER (WHERE status = 'delivered') || '/' || count(*) FROM courier.notices" "$N/$N" 30 "notices delivered/total"
  F_LOGIC[$k]=$(Q $DB "SELECT round((extract(epoch FROM max(applied_at)) * 1e6 - $t0) / 1e6, 3)
                         FROM courier.delay_history WHERE request_id = $req")
  st=$(Q $DB "SELECT total || '/' || done || '/' || failed FROM courier.request_status($req)")
  hook_stats
  # shellcheck disable=SC2034  # read through vals' nameref
  F_EV[$k]=$HOOKS_EV F_DUP[$k]=$HOOKS_DUP F_BAD[$k]=$HOOKS_BAD F_REQ[$k]=$HOOKS_REQ
  left=$(Q $DB "SELECT count(*) FROM courier.deliveries")
  printf '     call returned %s s; logic stage done %s s; mock had all %s events %s s; BACKLOG 0 at %s s; TMS had all %s notices %s s\n' \
    "${F_CALL[$k]}" "${F_LOGIC[$k]}" "$(( NSUB * N ))" "${F_MOCK[$k]}" "${F_DRAIN[$k]}" "$N" "${F_TMS[$k]}"
  printf '     %s events/s in total; per subscriber (N / when the poll saw its N):' "$(fmt_rate "$(( NSUB * N ))" "${F_DRAIN[$k]}")"
  for s in "${SUBS[@]}"; do printf ' %s %s/s (%s s)' "$s" "${F_SUB[$k,$s]}" "$(us_to_s "${done_us[$s]}")"; done
  echo
  printf '     mock hooks: %s events in %s requests, %s duplicates, %s bad signatures; events recorded: %s; deliveries left %s\n' \
    "$HOOKS_EV" "$HOOKS_REQ" "$HOOKS_DUP" "$HOOKS_BAD" "$(events_by_type)" "$left"
  printf '     mock TMS: %s requests, %s delivered, %s duplicates; request_status total/done/failed %s\n' \
    "${MS[requests]}" "${MS[delivered]}" "${MS[duplicates]}" "$st"
  echo "     courier.subscribers:"
  subscribers_state
}

# headline_run CONFIG REP none|subs: part 2
headline_run() {
  local cfg=$1 rep=$2 with=$3 k="$1,$2,$3" t0 d req types='' expect nd
  [[ $with == subs ]] && types=$TYPES_2
  echo
  if [[ $with == subs ]]; then
    echo "-- part 2b, run $rep, $(cfg_title "$cfg"): the headline, delay_orders($N orders), bulk 1, $NSUB subscribers of ${types// /, } --"
  else
    echo "-- part 2a, run $rep, $(cfg_title "$cfg"): the headline, delay_orders($N orders), bulk 1, no subscription --"
  fi
  prepare "$cfg" "$types"
  next_day
  sleep 0.5
  cpu_begin
  t0=$(us_now)
  req=$(Q $DB "$(delay_range_sql 1 "$N" "$DAY")")
  progress_start "$t0"
  while :; do
    d=$(mock_delivered)
    (( d >= N )) && break
    progress "$d" "part 2: the mock TMS has $d of $N notices"
    sleep 0.01
  done
  mock_stats
  H_LAST[$k]=$(us_to_s $(( MS[last_delivery_us] - t0 )))
  cpu_end "${H_LAST[$k]}"
  wait_for "SELECT (SELECT count(*) FROM courier.work_items) + (SELECT count(*) FROM $TMS_Q)" 0 60 \
    "work items and tms queue entries left after the mock had them all"
  wait_for "SELECT count(*) FILTER (WHERE status = 'delivered') || '/' || count(*) FROM courier.notices" "$N/$N" 30 "notices delivered/total"
  printf '     ALL NOTICES ACCEPTED %s s (logic stage done %s s); mock TMS: %s requests, %s delivered, %s duplicates\n' \
    "${H_LAST[$k]}" "$(Q $DB "SELECT round((extract(epoch FROM max(applied_at)) * 1e6 - $t0) / 1e6, 3)
                                FROM courier.delay_history WHERE request_id = $req")" \
    "${MS[requests]}" "${MS[delivered]}" "${MS[duplicates]}"
  if [[ $with == subs ]]; then
    # every notice is recorded (and its notice.* events with it): wait for the subscribers
    wait_drained "$t0" "part 2b"
    H_DRAIN[$k]=$(us_to_s "$T_DRAIN")
    H_TYPES[$k]=$(events_by_type)
    nd=$(events_of_type notice.delivered)
    expect=$(( NSUB * $(Q $DB "SELECT count(*) FROM courier.events WHERE order_id <> 0") ))
    hook_stats
    printf '     subscribers drained %s s; events recorded: %s; mock hooks %s of %s events, %s duplicates, %s bad signatures\n' \
      "${H_DRAIN[$k]}" "${H_TYPES[$k]}" "$HOOKS_EV" "$expect" "$HOOKS_DUP" "$HOOKS_BAD"
    if (( nd == 0 )); then
      echo "     (no notice.delivered event was recorded: the installed build does not emit notice.* events)"
    fi
  else
    echo "     events recorded: $(events_by_type) (none expected without a subscription)"
  fi
}

for ((rep = 1; rep <= REPEAT; rep++)); do
  if has_part 1; then
    for cfg in "${CONFIGS[@]}"; do fanout_run "$cfg" "$rep"; done
  fi
  if has_part 2; then
    for cfg in "${CONFIGS[@]}"; do
      headline_run "$cfg" "$rep" none
      headline_run "$cfg" "$rep" subs
    done
  fi
done
poller_stop

# ------------------------------------------------------------------ tables
WARN=$(server_warnings 5)
T_END=$EPOCHREALTIME

vals() {   # vals KEYPREFIX ARRAY-NAME [KEYSUFFIX]: one figure over the runs
  local -n arr=$2
  local r out=()
  for ((r = 1; r <= REPEAT; r++)); do out+=("${arr[$1,$r${3:+,$3}]}"); done
  echo "${out[@]}"
}
med3() { printf '%.3f' "$(median "$@")"; }

if has_part 1; then
  echo
  echo "== fanout_bench part 1: one delay_orders($N orders), $NSUB subscribers of order.delayed (batch $BATCH, signed), $LOGIC_W logic +"
  echo "   $TMS_W tms workers, mock latency 0; seconds from just before the call until every subscriber's backlog is 0;"
  echo "   median of $REPEAT runs, the runs in brackets =="
  for cfg in "${CONFIGS[@]}"; do
    read -r -a v <<<"$(vals "$cfg" F_DRAIN)"
    med=$(med3 "${v[@]}")
    echo "  $(cfg_title "$cfg"):"
    row "orders" "$N"
    row "events delivered in total (mock, per run)" "$(vals "$cfg" F_EV)" "expected $(( NSUB * N )) each"
    row "seconds until backlog 0" "$med s" "($(vals "$cfg" F_DRAIN))"
    row "events/s in total" "$(fmt_rate "$(( NSUB * N ))" "$med")" "(runs: $(for x in "${v[@]}"; do fmt_rate "$(( NSUB * N ))" "$x"; echo; done | paste -sd' '))"
    for s in "${SUBS[@]}"; do
      read -r -a w <<<"$(vals "$cfg" F_SUB "$s")"
      row "events/s to $s" "$(printf '%.0f' "$(median "${w[@]}")")" "(runs: ${w[*]})"
    done
    read -r -a w <<<"$(vals "$cfg" F_DUP)"
    row "duplicates seen by the mock (expected 0)" "$(( $(printf '%s+' "${w[@]}")0 ))" "(runs: ${w[*]})"
    read -r -a w <<<"$(vals "$cfg" F_BAD)"
    row "bad signatures seen by the mock (expected 0)" "$(( $(printf '%s+' "${w[@]}")0 ))" "(runs: ${w[*]})"
    row "POSTs to the subscribers (per run)" "$(vals "$cfg" F_REQ)"
    read -r -a w <<<"$(vals "$cfg" F_LOGIC)"
    row "logic stage done (same runs)" "$(med3 "${w[@]}") s" "(${w[*]})"
    read -r -a w <<<"$(vals "$cfg" F_TMS)"
    row "TMS had all notices (same runs)" "$(med3 "${w[@]}") s" "(${w[*]})"
  done
fi

if has_part 2; then
  echo
  echo "== fanout_bench part 2: the headline (one delay_orders($N orders), bulk 1, until the mock TMS accepted every notice),"
  echo "   (a) no subscription, (b) $NSUB subscribers of ${TYPES_2// /, }; median of $REPEAT runs, the runs in brackets =="
  printf '  %-34s | %-30s | %-30s | %-6s | %s\n' configuration "(a) no subscription" "(b) $NSUB subscribers" "b / a" "(b) subscribers drained"
  for cfg in "${CONFIGS[@]}"; do
    read -r -a a <<<"$(vals "$cfg" H_LAST none)"
    read -r -a b <<<"$(vals "$cfg" H_LAST subs)"
    read -r -a c <<<"$(vals "$cfg" H_DRAIN subs)"
    ma=$(med3 "${a[@]}")
    mb=$(med3 "${b[@]}")
    printf '  %-34s | %-30s | %-30s | %-6s | %s\n' "$(cfg_title "$cfg")" "$ma s (${a[*]})" "$mb s (${b[*]})" \
      "$(ratio "$mb" "$ma")" "$(med3 "${c[@]}") s (${c[*]})"
  done
  echo "  events recorded in (b), last run: ${H_TYPES[${CONFIGS[-1]},$REPEAT,subs]}"
fi

if [[ -n $WARN ]]; then
  echo
  echo "server log warnings/errors (first 5):"
  echo "$WARN"
fi
echo
printf 'fanout_bench total runtime: %.0f s (load average now %s)\n' "$(elapsed "$T_START" "$T_END")" "$(cut -d' ' -f1-3 /proc/loadavg)"
