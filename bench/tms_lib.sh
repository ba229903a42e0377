# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source it
# bench/tms_lib.sh: helpers of the benchmarks that run courier's background
# workers against an HTTP endpoint (tms_bench.sh, headline_bench.sh,
# soak_bench.sh).  Sourced after lib.sh; the functions that touch the
# cluster need bench_cluster_start to have run (PORT, WORK, DATA) and DB set.
#
#   tms_trap                     installs the EXIT trap that stops what these
#                                helpers started, then the cluster (bench_cleanup)
#   mock_start / mock_http / mock_stats / mock_delivered / mock_reset
#                                the project's mock TMS (test/mock_tms) on a free port
#   nginx_ensure / nginx_start   nginx-light answering every POST with 200
#                                {"results":[]}, on a free port, config in WORK
#   reload / set_conf / set_pool / n_workers / wait_for / reset_state
#                                settings and worker pools of the running cluster
#   tms_queue_detect             TMS_Q: the tms stage's queue of the installed
#                                version (pending notices from 0.3 on)
#   next_day / delay_range_sql   a new ship date per run, the delay_orders call
#   poller_start / poll_q / poller_stop
#                                one persistent psql session for polling
#   cpu_begin / cpu_end          CPU seconds per kind of process over a run
#   perf_start / perf_stop       optional perf profile (BENCH_PERF=1)
#   sampler_start / sampler_stop pg_stat_activity every 20 ms, summarised
#   us_now / us_to_s / elapsed   microsecond clock (EPOCHREALTIME), conversions

MOCK_BIN=$REPO/test/mock_tms/mock_tms
CEILING_BIN=$BENCH_DIR/curl_ceiling

MOCK_PID=
MOCK_PORT=
MOCK_URL=
NGINX_PID=
NGINX_PORT=
NGINX_URL=
SAMPLER_PID=
PERF_PID=
PERF_N=0
POLLER_PID=
# pids of further background loops a script starts (soak_bench's memory
# sampler); stopped by the trap like the others
EXTRA_PIDS=()

tms_cleanup() {
  local rc=$? p
  set +e   # a failing kill must not end the cleanup before the cluster is stopped
  for p in "${EXTRA_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
  [[ -n ${POLLER_PID:-} ]] && kill "$POLLER_PID" 2>/dev/null
  [[ -n $PERF_PID ]] && kill -INT "$PERF_PID" 2>/dev/null
  [[ -n $MOCK_PID ]] && kill "$MOCK_PID" 2>/dev/null
  # TERM is nginx's fast shutdown; it is our own non-daemon master
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null
  (exit "$rc")   # bench_cleanup exits with the status it finds in $?
  bench_cleanup
}
tms_trap() { trap tms_cleanup EXIT; }

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
us_now() { local t=$EPOCHREALTIME; echo "${t/./}"; }
us_to_s() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1e6 }'; }

# ------------------------------------------------------------------ mock TMS

# mock_start: the mock on a free port (it picks one: --port 0); sets
# MOCK_PID, MOCK_PORT, MOCK_URL
mock_start() {
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
}

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

# ------------------------------------------------------------------ nginx

NGINX_BIN=/usr/sbin/nginx

# nginx_ensure: Debian's nginx-light, installed when missing (as root; the
# container's policy-rc.d keeps apt from starting the system service)
nginx_ensure() {
  [[ -x $NGINX_BIN ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$NGINX_BIN is missing; install it as root: apt-get install -y nginx-light" >&2
    exit 1
  fi
  echo "installing nginx-light (apt-get) ..."
  # the package lists may be missing or stale on a fresh machine: update once
  # only if the plain install fails
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >"$WORK/apt.log" 2>&1; then
    apt-get update -q >>"$WORK/apt.log" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >>"$WORK/apt.log" 2>&1; then
      echo "apt-get install nginx-light failed:" >&2
      tail -20 "$WORK/apt.log" >&2
      exit 1
    fi
  fi
}

# nginx_start: our own nginx master (daemon off, so $! is the master and the
# trap can stop it by pid) on 127.0.0.1 and a free port, with config, pid,
# logs and temp paths in WORK/nginx; every request is answered 200
# {"results":[]}, which courier's generic provider reads as "all accepted"
# and curl_ceiling counts as accepted too.  Sets NGINX_PID, NGINX_PORT,
# NGINX_URL.
nginx_start() {
  local dir=$WORK/nginx user_line=
  mkdir -p "$dir/tmp"
  NGINX_PORT=$(pick_free_port "${BENCH_NGINX_PORT:-58080}") || { echo "no free port for nginx" >&2; exit 1; }
  # a root master hands its worker to an unprivileged user; Debian has no
  # "nobody" group, which is nginx's compiled-in default
  [[ $(id -u) -eq 0 ]] && user_line="user nobody nogroup;"
  cat >"$dir/nginx.conf" <<EOF
# written by bench/tms_lib.sh: a TMS that accepts everything, as fast as nginx can
$user_line
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  # one kept-alive connection carries a whole run
  keepalive_requests 100000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    # return discards the request body
    location / { default_type application/json; return 200 '{"results":[]}'; }
  }
}
EOF
  # -e: the error log before the config is read, else /var/log/nginx
  "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout" 2>&1 &
  NGINX_PID=$!
  for _ in $(seq 200); do
    port_is_free "$NGINX_PORT" || break
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.025
  done
  if ! kill -0 "$NGINX_PID" 2>/dev/null || port_is_free "$NGINX_PORT"; then
    echo "nginx did not start:" >&2
    cat "$dir/stdout" "$dir/error.log" >&2 2>/dev/null
    exit 1
  fi
  NGINX_URL=http://127.0.0.1:$NGINX_PORT/send
}

# ------------------------------------------------------------------ cluster

reload() { Q "$DB" "SELECT pg_reload_conf()" >/dev/null; }
set_conf() {   # set_conf NAME VALUE: ALTER SYSTEM, no reload
  Q "$DB" "ALTER SYSTEM SET $1 = '$2'" >/dev/null
}

n_workers() {   # n_workers logic|tms
  Q "$DB" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'courier $1 worker'"
}

# wait_pool STAGE N: wait until exactly N workers of STAGE run, twice 0.2 s
# apart (a retiring worker may still show once)
wait_pool() {
  local stage=$1 n=$2 have deadline
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

# set_pool STAGE N: min = max = N with ALTER SYSTEM, reload, wait for N workers
set_pool() {
  set_conf "courier.${1}_min_workers" "$2"
  set_conf "courier.${1}_max_workers" "$2"
  reload
  wait_pool "$1" "$2"
}

# wait_for SQL EXPECTED SECONDS WHAT
wait_for() {
  local sql=$1 want=$2 secs=$3 what=$4 got deadline
  deadline=$(( $(date +%s) + secs ))
  while :; do
    got=$(Q "$DB" "$sql")
    [[ $got == "$want" ]] && return 0
    if (( $(date +%s) > deadline )); then
      echo "!! $what: got '$got', wanted '$want' after $secs s" >&2
      Q "$DB" "SELECT * FROM courier.queue_stats" >&2 || true
      grep -E 'WARNING|ERROR|FATAL' "$WORK/server.log" | tail -10 >&2 || true
      exit 1
    fi
    sleep 0.05
  done
}

# tms_queue_detect: sets TMS_Q, the FROM clause of the tms stage's queue.
# From courier 0.3 on the pending notices are that queue (notices.due_at,
# its lease, exists); before, the tms work items were.  Scripts count and
# probe it through TMS_Q, so they measure either version.  Needs the
# extension created.
TMS_Q=
tms_queue_detect() {
  if [[ $(Q "$DB" "SELECT count(*) FROM pg_attribute WHERE attrelid = 'courier.notices'::regclass
                     AND attname = 'due_at' AND NOT attisdropped") == 1 ]]; then
    TMS_Q="courier.notices WHERE status = 'pending'"
  else
    TMS_Q="courier.work_items WHERE stage = 'tms'"
  fi
}

# reset_state: empty the queue and everything the stages wrote; every run
# starts from the same state (the orders keep their last date)
reset_state() {
  Q "$DB" "TRUNCATE courier.work_items, courier.requests, courier.delay_history, courier.notices" >/dev/null
  Q "$DB" "VACUUM (ANALYZE) courier.orders" >/dev/null
}

DAY=5
next_day() {   # sets DAY: a new ship date per run (days ahead, <= 90), so every notice is new
  DAY=$(( DAY + 1 ))
  if (( DAY > 88 )); then DAY=6; fi
}

delay_range_sql() {   # delay_range_sql FIRST LAST DAYS: delay orders FIRST..LAST to today + DAYS
  echo "SELECT courier.delay_orders(ARRAY(SELECT generate_series($1, $2)::bigint),
                                    'bench: harvest delayed by rain', current_date + $3)"
}

# server log lines worth showing: warnings and worse, without the routine
# ones of a restart or a pool shrinking
server_warnings() {
  grep -E 'WARNING|ERROR|FATAL|PANIC' "$WORK/server.log" |
    grep -v 'terminating background worker\|terminating connection due to administrator' | head -"${1:-5}" || true
}

# ------------------------------------------------- one psql session for polls
# A connection per poll would cost a fork and a backend start every few ms;
# one session in autocommit holds no snapshot between polls.
poller_start() {
  coproc POLLER { exec "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" 2>"$WORK/poller.err"; }
}
poll_q() {   # poll_q SQL: the one-line answer in POLL_OUT
  echo "$1;" >&"${POLLER[1]}"
  if ! read -r -t 60 POLL_OUT <&"${POLLER[0]}"; then
    echo "!! the polling session gave no answer in 60 s to: $1" >&2
    cat "$WORK/poller.err" >&2
    exit 1
  fi
}
# (bash unsets POLLER_PID once the coproc has ended, hence the :-)
poller_stop() {
  [[ -n ${POLLER_PID:-} ]] || return 0
  { echo '\q' >&"${POLLER[1]:-}"; } 2>/dev/null || true
  wait "$POLLER_PID" 2>/dev/null || true
  POLLER_PID=
}

# --------------------------------------------------- CPU by kind of process
#
# cpu_snap: CPU ticks (utime + stime) of every child of the postmaster and
# of the mock and nginx, into CPU_T[pid], with the kind of process in
# CPU_K[pid].  cpu_begin / cpu_end WALL: CPU seconds per kind in between.
# (Client backends that exited meanwhile are not counted.)
CLK_TCK=$(getconf CLK_TCK)
PM_PID=
declare -A CPU_T CPU_K CPU_T0

proc_kind() {
  local pid=$1 cmd
  if [[ $pid == "$MOCK_PID" ]]; then echo mock; return; fi
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || { echo gone; return; }
  case $cmd in
    *"courier subscriber worker"*) echo subscriber ;;
    *"courier tms worker"*) echo tms ;;
    *"courier logic worker"*) echo logic ;;
    *"courier launcher"*) echo launcher ;;
    *"nginx: "*) echo nginx ;;
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
    if [[ ${fld[1]} == "$PM_PID" || $pid == "$MOCK_PID" ||
          ( -n $NGINX_PID && ( $pid == "$NGINX_PID" || ${fld[1]} == "$NGINX_PID" ) ) ]]; then
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
  for k in tms logic subscriber launcher mock nginx walwriter autovacuum ckpt+bgwriter other; do
    [[ -n ${sum[$k]:-} ]] || continue
    out+=$(awk -v k="$k" -v t="${sum[$k]}" -v hz="$CLK_TCK" -v w="$wall" \
      'BEGIN { printf "%s %.2f s (%.0f%%), ", k, t / hz, (w > 0) ? 100 * t / hz / w : 0 }')
  done
  echo "     cpu over $(printf '%.2f' "$wall") s wall ($(nproc) cores = $(( 100 * $(nproc) ))%): ${out%, }"
  read -r b0 t0 <<<"$SYS0"
  read -r b1 t1 <<<"$sys1"
  awk -v b=$(( b1 - b0 )) -v t=$(( t1 - t0 )) -v o="$ours" -v n="$(nproc)" 'BEGIN {
      if (t <= 0) exit
      printf "     whole machine busy %.0f%% of its %d cores (courier cluster + mock/nginx: %.0f%%, everything else: %.0f%%)\n",
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
  pids=$(Q "$DB" "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type IN (${kinds%,})")
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
  "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" \
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

# check_settings CONFIG [ARGS...]: the server runs with the values the
# caller's measured_settings ARGS prints, and they come from where CONFIG
# says: postgresql.conf (conf) or postgresql.auto.conf (live).  Exits when
# not, so that no figure is printed for another configuration.
check_settings() {
  local cfg=$1 want got
  shift
  want=$(measured_settings "$@" | awk -F' = ' '{ gsub("\047", "", $2); printf "%s=%s,", $1, $2 }')
  got=$(Q $DB "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) || ','
                 FROM pg_settings WHERE name IN ($(measured_settings "$@" |
                      awk -F' = ' '{ printf "%s\047%s\047", (NR > 1 ? "," : ""), $1 }'))")
  want=$(tr ',' '\n' <<<"$want" | sed '/^$/d' | sort | tr '\n' ',')
  if [[ $got != "$want" ]]; then
    echo "!! the server runs with $got, not $want" >&2
    exit 1
  fi
  got=$(Q $DB "SELECT string_agg(DISTINCT regexp_replace(sourcefile, '.*/', ''), ',')
                 FROM pg_settings WHERE name LIKE 'courier.%' AND name <> 'courier.database'
                  AND source = 'configuration file'")
  if [[ $cfg == conf && $got != postgresql.conf ]] || [[ $cfg == live && $got != postgresql.auto.conf ]]; then
    echo "!! configuration $cfg, but the courier settings come from: $got" >&2
    exit 1
  fi
}
