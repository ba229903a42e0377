#!/usr/bin/env bash
# bench/headline_bench.sh: the headline.  One courier.delay_orders call with
# every stage live, timed until the mock TMS has accepted every notice:
# 30,000 orders at bulk 1 and 100,000 orders at bulk 100, each in two
# configurations of the same settings:
#   (a) conf: every courier setting in postgresql.conf from the server's
#       start (no ALTER SYSTEM at all), the way a deployment runs;
#   (b) live: the server started with only courier.database (which needs a
#       restart), the rest changed with ALTER SYSTEM + pg_reload_conf()
#       while it runs, the way the other benchmarks set things up.
# They differ in what the workers see when they start and make their kept
# plans (an empty queue and the final settings, or defaults changed under
# them), which once made (a) 15x slower than (b).  Prints figures; never
# fails on time.  See bench/README.md.
#
#   BENCH_SKIP_BUILD=1 bash bench/headline_bench.sh
#
# Each run: empty every queue table, write the settings, restart the
# cluster, (b) ALTER SYSTEM + reload, wait until 2 logic and 2 tms workers
# run, CHECKPOINT, reset the mock, then time from just before the call to
# the mock's last new delivery (last_delivery_us; polled every 10 ms over
# bash's /dev/tcp, which costs almost nothing).  Runs are interleaved
# (bulk 1 conf, bulk 1 live, bulk 100 conf, bulk 100 live, repeat), so that
# drift in the machine's load hits every figure alike.  Targets (reported
# only): bulk 1 <= 1.0 s for 30,000 orders, bulk 100 <= 1.5 s for 100,000,
# by the median.
#
# Environment (optional):
#   BENCH_SKIP_BUILD=1       use the installed courier (no make install)
#   BENCH_N=30000            orders of the bulk-1 headline
#   BENCH_N_BULK=100000      orders of the bulk-100 headline
#   BENCH_REPEAT=3           runs per figure (median)
#   BENCH_CONFIGS="conf live"  which configurations to run
#   BENCH_LOGIC_WORKERS=2    logic workers (min = max)
#   BENCH_TMS_WORKERS=2      tms workers (min = max)
#   BENCH_ANALYZE_EMPTY=1    also ANALYZE the emptied log tables (notices,
#                            delay_history) before each run: a fresh install's
#                            state, which 0.3's kept lease plan handles badly
#   BENCH_SAMPLE=1           also sample pg_stat_activity every 20 ms during
#                            each run and print where the workers were (the
#                            sampling session costs a little CPU: off by default)
#   BENCH_PERF=1             also perf-record the workers during each run
#   BENCH_PORT=56732         first port tried for the cluster
#   BENCH_KEEP=1             keep the work dir (cluster data, logs)

set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/tms_lib.sh
source "$BENCH_DIR/tms_lib.sh"

N1=${BENCH_N:-30000}
N100=${BENCH_N_BULK:-100000}
REPEAT=${BENCH_REPEAT:-3}
read -r -a CONFIGS <<<"${BENCH_CONFIGS:-conf live}"
LOGIC_W=${BENCH_LOGIC_WORKERS:-2}
TMS_W=${BENCH_TMS_WORKERS:-2}
N_MAX=$(( N1 > N100 ? N1 : N100 ))
DB=bench
T_START=$EPOCHREALTIME

echo "== courier headline_bench =="
bench_build
bench_build_tools

BENCH_PORT=${BENCH_PORT:-56732}
# no workers while the orders are loaded: courier.database comes with the
# settings block of each run
bench_cluster_start headline "shared_preload_libraries = 'courier'
courier.database = ''
max_worker_processes = 16"
tms_trap
mock_start

Q postgres "CREATE DATABASE $DB" >/dev/null
Q $DB "CREATE EXTENSION courier" >/dev/null
tms_queue_detect
machine_line
echo "mock TMS: $MOCK_URL (pid $MOCK_PID), latency 0"
echo
echo "-- setup: $N_MAX orders registered and shipping requested --"
bench_register_orders $DB "$N_MAX"

# the measured settings of a bulk size, in postgresql.conf syntax
measured_settings() {
  cat <<EOF
courier.database = '$DB'
courier.tms_url = '$MOCK_URL'
courier.tms_bulk_size = $1
courier.logic_min_workers = $LOGIC_W
courier.logic_max_workers = $LOGIC_W
courier.tms_min_workers = $TMS_W
courier.tms_max_workers = $TMS_W
EOF
}

# prepare CONFIG BULK: an empty queue, the settings of CONFIG, a restarted
# server with the workers running
prepare() {
  local cfg=$1 bulk=$2 name value line
  reset_state
  # the queue is analyzed empty, as autovacuum leaves it after a drain; the
  # log tables (notices, delay_history) only lose their rows here because a
  # run must start clean: in a deployment they are never empty, so they keep
  # the statistics TRUNCATE leaves them (courier 0.3's lease, made on an
  # empty analyzed notices table, joins back with a full index scan per row)
  Q $DB "VACUUM (ANALYZE) courier.work_items" >/dev/null
  if [[ ${BENCH_ANALYZE_EMPTY:-} == 1 ]]; then
    Q $DB "VACUUM (ANALYZE) courier.notices, courier.delay_history" >/dev/null
  fi
  # whatever an earlier run of the other configuration set with ALTER SYSTEM
  Q $DB "ALTER SYSTEM RESET ALL" >/dev/null
  if [[ $cfg == conf ]]; then
    bench_conf_block "$(measured_settings "$bulk")"
    bench_cluster_restart
  else
    bench_conf_block "courier.database = '$DB'"
    bench_cluster_restart
    while IFS= read -r line; do
      name=${line%% = *}
      value=${line#* = }
      [[ $name == courier.database ]] && continue
      Q $DB "ALTER SYSTEM SET $name = $value" >/dev/null
    done < <(measured_settings "$bulk")
    reload
  fi
  wait_pool logic "$LOGIC_W"
  wait_pool tms "$TMS_W"
  check_settings "$cfg" "$bulk"
  Q $DB "CHECKPOINT" >/dev/null
  mock_reset 0
}

cfg_title() { [[ $1 == conf ]] && echo "(a) postgresql.conf from start" || echo "(b) ALTER SYSTEM + reload, live"; }

declare -A H_CALL H_LOGIC H_FIRST H_LAST H_POLL H_REC H_REQ H_DUP

# headline_run CONFIG BULK N REP
headline_run() {
  local cfg=$1 bulk=$2 n=$3 rep=$4 k="$1,$2,$4" t0 t_call t_poll d req st
  echo
  echo "-- run $rep, $(cfg_title "$cfg"): one delay_orders($n orders), bulk $bulk, logic workers $LOGIC_W, tms workers $TMS_W --"
  prepare "$cfg" "$bulk"
  next_day
  sleep 0.5   # every worker asleep on its latch
  [[ -n ${BENCH_SAMPLE:-} ]] && sampler_start
  perf_start tms logic
  cpu_begin
  t0=$(us_now)
  req=$(Q $DB "$(delay_range_sql 1 "$n" "$DAY")")
  t_call=$(us_now)
  while :; do
    d=$(mock_delivered)
    (( d >= n )) && break
    if (( $(us_now) - t0 > 300000000 )); then
      echo "!! only $d of $n delivered 300 s after the call" >&2
      exit 1
    fi
    sleep 0.01
  done
  t_poll=$(us_now)
  mock_stats
  H_LAST[$k]=$(us_to_s $(( MS[last_delivery_us] - t0 )))
  cpu_end "${H_LAST[$k]}"
  perf_stop
  if [[ -n ${BENCH_SAMPLE:-} ]]; then
    echo "     pg_stat_activity every 20 ms (share of samples per backend type):"
    sampler_stop
  fi
  H_CALL[$k]=$(us_to_s $(( t_call - t0 )))
  H_FIRST[$k]=$(us_to_s $(( MS[first_delivery_us] - t0 )))
  H_POLL[$k]=$(us_to_s $(( t_poll - t0 )))
  H_REQ[$k]=${MS[requests]}
  H_DUP[$k]=${MS[duplicates]}
  wait_for "SELECT (SELECT count(*) FROM courier.work_items) + (SELECT count(*) FROM $TMS_Q)" 0 60 \
    "work items and tms queue entries left after the mock had them all"
  wait_for "SELECT count(*) FILTER (WHERE status = 'delivered') || '/' || count(*) FROM courier.notices" "$n/$n" 30 "notices delivered/total"
  H_LOGIC[$k]=$(Q $DB "SELECT round((extract(epoch FROM max(applied_at)) * 1e6 - $t0) / 1e6, 3)
                         FROM courier.delay_history WHERE request_id = $req")
  H_REC[$k]=$(Q $DB "SELECT round((extract(epoch FROM max(sent_at)) * 1e6 - $t0) / 1e6, 3) FROM courier.notices")
  st=$(Q $DB "SELECT total || '/' || done || '/' || failed FROM courier.request_status($req)")
  printf '     call returned %s s; logic stage done %s s; first accepted %s s; ALL ACCEPTED %s s (poll saw it at %s s); all recorded %s s\n' \
    "${H_CALL[$k]}" "${H_LOGIC[$k]}" "${H_FIRST[$k]}" "${H_LAST[$k]}" "${H_POLL[$k]}" "${H_REC[$k]}"
  printf '     mock: %s requests, %s delivered, %s duplicates, max in flight %s; request_status total/done/failed %s\n' \
    "${MS[requests]}" "${MS[delivered]}" "${MS[duplicates]}" "${MS[max_in_flight]}" "$st"
}

FIGS=("1:$N1:30000:1.0" "100:$N100:100000:1.5")   # bulk:orders:orders of the target:target s
for ((rep = 1; rep <= REPEAT; rep++)); do
  for f in "${FIGS[@]}"; do
    IFS=: read -r bulk n _ _ <<<"$f"
    for cfg in "${CONFIGS[@]}"; do headline_run "$cfg" "$bulk" "$n" "$rep"; done
  done
done

# ------------------------------------------------------------------ table
WARN=$(server_warnings 5)
T_END=$EPOCHREALTIME

# vals KEYPART ARRAY-NAME: the values of one figure over the runs
vals() {
  local -n arr=$2
  local r out=()
  for ((r = 1; r <= REPEAT; r++)); do out+=("${arr[$1,$r]}"); done
  echo "${out[@]}"
}

echo
echo "== headline_bench figures: one delay_orders call, nothing paused, $LOGIC_W logic + $TMS_W tms workers, mock latency 0,"
echo "   fsync = on, synchronous_commit = on; seconds from just before the call until the mock has accepted every notice;"
echo "   median of $REPEAT runs, the runs in brackets =="
hdr="  %-24s"
args=("figure")
for cfg in "${CONFIGS[@]}"; do hdr+=" | %-38s"; args+=("$(cfg_title "$cfg")"); done
hdr+=" | %s\n"
args+=("target")
# shellcheck disable=SC2059  # the format is built above
printf "$hdr" "${args[@]}"
for f in "${FIGS[@]}"; do
  IFS=: read -r bulk n n_tgt lim <<<"$f"
  args=("$n orders, bulk $bulk")
  verdict=""
  for cfg in "${CONFIGS[@]}"; do
    read -r -a v <<<"$(vals "$cfg,$bulk" H_LAST)"
    med=$(printf '%.3f' "$(median "${v[@]}")")
    args+=("$med s ($(printf '%s ' "${v[@]}" | sed 's/ $//'))")
    if [[ $n == "$n_tgt" ]]; then
      verdict+="$(awk -v s="$med" -v l="$lim" 'BEGIN { print ((s <= l) ? "met" : "MISSED") }') by ($([[ $cfg == conf ]] && echo a || echo b)); "
    fi
  done
  if [[ $n == "$n_tgt" ]]; then
    args+=("<= $lim s: ${verdict%; }")
  else
    args+=("(<= $lim s is for $n_tgt orders)")
  fi
  # shellcheck disable=SC2059
  printf "$hdr" "${args[@]}"
done
echo
echo "  where the time went (medians; seconds from just before the call):"
printf '  %-24s %-32s | %-13s %-11s %-14s %-13s %-12s | %s\n' figure configuration "call returned" "logic done" "first accepted" "ALL ACCEPTED" "all recorded" "requests/dups per run"
for f in "${FIGS[@]}"; do
  IFS=: read -r bulk n _ _ <<<"$f"
  for cfg in "${CONFIGS[@]}"; do
    m=()
    for a in H_CALL H_LOGIC H_FIRST H_LAST H_REC; do
      read -r -a v <<<"$(vals "$cfg,$bulk" "$a")"
      m+=("$(printf '%.3f s' "$(median "${v[@]}")")")
    done
    rq=""
    for ((rep = 1; rep <= REPEAT; rep++)); do rq+="${H_REQ[$cfg,$bulk,$rep]}/${H_DUP[$cfg,$bulk,$rep]} "; done
    printf '  %-24s %-32s | %-13s %-11s %-14s %-13s %-12s | %s\n' "$n orders, bulk $bulk" "$(cfg_title "$cfg")" "${m[@]}" "$rq"
  done
done
echo "  (ALL ACCEPTED = the mock's last_delivery_us; logic done = the request's last delay_history row;"
echo "   all recorded = the last notices.sent_at, when the sender recorded the last outcome)"
if [[ -n $WARN ]]; then
  echo
  echo "server log warnings/errors (first 5):"
  echo "$WARN"
fi
echo
printf 'headline_bench total runtime: %.0f s (load average now %s)\n' "$(elapsed "$T_START" "$T_END")" "$(cut -d' ' -f1-3 /proc/loadavg)"
