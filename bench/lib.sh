# shellcheck shell=bash
# bench/lib.sh: helpers shared by every benchmark script (bench/*_bench.sh).
# Sourced, not executed.  bench/tms_lib.sh adds the helpers of the scripts
# that run courier's workers against an HTTP endpoint.
#
#   bench_build                  make + make install (PGXS) at the repo top;
#                                with BENCH_SKIP_BUILD=1 neither: the courier
#                                installed now is used as it is
#   bench_build_tools            make the mock TMS and bench/curl_ceiling (never
#                                installed, so built even with BENCH_SKIP_BUILD)
#   bench_cluster_start NAME CONF  throwaway cluster (initdb as postgres in a
#                                mktemp -d work dir, CONF appended to
#                                postgresql.conf); sets PORT, WORK, DATA; a
#                                trap stops it and removes the work dir on exit
#   bench_cluster_restart        pg_ctl restart of that cluster
#   bench_conf_block TEXT        TEXT becomes the block of bench settings at the
#                                end of postgresql.conf, replacing the last one
#   Q DB SQL                     one statement, unaligned tuples-only output
#   now_s                        wall clock in seconds with nanoseconds
#   median / min_of / max_of     of the numbers given as arguments
#   fmt_rate ROWS SECONDS        rows per second, rounded
#   settings_line DB             the settings that matter for the figures

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

# shellcheck source=test/lib/cluster.sh
source "$REPO/test/lib/cluster.sh"

export LC_ALL=C.UTF-8 LANG=C.UTF-8

bench_build() {
  if [[ ${BENCH_SKIP_BUILD:-} == 1 ]]; then
    # Someone else may be changing and installing courier on this machine
    # meanwhile: measure what is installed, and say which build that is,
    # since the figures belong to it and not to this work tree.
    local lib ctl
    lib=$("$PG_CONFIG" --pkglibdir)/courier.so
    ctl=$("$PG_CONFIG" --sharedir)/extension/courier.control
    if [[ ! -f $lib || ! -f $ctl ]]; then
      echo "BENCH_SKIP_BUILD=1, but no courier is installed ($lib, $ctl)" >&2
      exit 1
    fi
    echo "BENCH_SKIP_BUILD=1: the installed courier, default_version" \
         "$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$ctl"), $lib of $(date -r "$lib" '+%F %T')"
    return 0
  fi
  if ! (cd "$REPO" && make -s PG_CONFIG="$PG_CONFIG" >/dev/null &&
        make -s install PG_CONFIG="$PG_CONFIG" >/dev/null); then
    echo "build or install of the extension failed" >&2
    (cd "$REPO" && make PG_CONFIG="$PG_CONFIG" 2>&1 | tail -20) >&2
    exit 1
  fi
}

bench_build_tools() {
  if ! make -s -C "$REPO/test/mock_tms" >/dev/null || ! make -s -C "$BENCH_DIR" curl_ceiling >/dev/null; then
    echo "build of the mock TMS or curl_ceiling failed" >&2
    exit 1
  fi
}

WORK=
DATA=
PORT=

bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # children we started (psql sessions in the background), by pid
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  if [[ -n $DATA ]]; then
    cluster_stop "$DATA"
  fi
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ -n ${BENCH_KEEP:-} ]]; then
      echo "kept work dir $WORK" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}

# bench_cluster_start NAME EXTRA_CONF
bench_cluster_start() {
  local name=$1 conf=$2
  WORK=$(mktemp -d "/tmp/courier-bench-$name.XXXXXX")
  chown postgres: "$WORK"
  chmod 700 "$WORK"
  DATA=$WORK/data
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  if ! cluster_init "$DATA" "$WORK/initdb.log"; then
    cat "$WORK/initdb.log" >&2
    exit 1
  fi
  cat >>"$DATA/postgresql.conf" <<EOF
# --- courier bench ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
fsync = on
synchronous_commit = on
shared_buffers = '512MB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
log_min_messages = warning
log_line_prefix = '%m [%p] %b '
$conf
# BENCH_CONF: extra lines for a look inside (auto_explain, ...); last, so they win
${BENCH_CONF:-}
EOF
  if ! cluster_start "$DATA" "${BENCH_PORT:-56432}" "$WORK/server.log"; then
    echo "cluster did not start; server log:" >&2
    tail -50 "$WORK/server.log" >&2
    exit 1
  fi
  PORT=$CLUSTER_PORT
}

bench_cluster_restart() {
  if ! as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w -t 120 \
       -o "-p $PORT" restart >/dev/null 2>&1; then
    echo "cluster did not restart; server log:" >&2
    tail -50 "$WORK/server.log" >&2
    exit 1
  fi
}

# bench_conf_block TEXT: the settings that must be in postgresql.conf from
# the server's start (no ALTER SYSTEM) go in one marked block at the end of
# the file, so the next call replaces them instead of piling up.  Rewritten
# in place (cat >) so that the file keeps its owner, postgres.
bench_conf_block() {
  local conf=$DATA/postgresql.conf tmp
  tmp=$(mktemp)
  awk '/^# --- bench settings block ---$/ { skip = 1 }
       !skip { print }
       /^# --- end of bench settings block ---$/ { skip = 0 }' "$conf" >"$tmp"
  printf '# --- bench settings block ---\n%s\n# --- end of bench settings block ---\n' "$1" >>"$tmp"
  cat "$tmp" >"$conf"
  rm -f "$tmp"
}

# Q DB SQL: run SQL, print the result unaligned without headers.
Q() {
  local db=$1
  shift
  psql_on "$PORT" "$db" -At -c "$*"
}

# bench_register_orders DB N: orders 1..N registered and shipping requested,
# then VACUUM (ANALYZE)d, the same data set for every benchmark.
bench_register_orders() {
  local db=$1 n=$2
  Q "$db" "SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
          'order_id', g, 'seller_id', g % 50 + 1,
          'customer_phone', format('010-%s-%s', lpad((g % 10000)::text, 4, '0'),
                                   lpad((g / 10000)::text, 4, '0')),
          'product_name', 'super-sweet corn 10 ears',
          'promised_ship_date', to_char(current_date + 3, 'YYYY-MM-DD'))))
         FROM generate_series(1, $n) g" >/dev/null
  Q "$db" "SELECT courier.request_shipping(ARRAY(SELECT generate_series(1, $n)::bigint))" >/dev/null
  Q "$db" "VACUUM (ANALYZE) courier.orders" >/dev/null
}

now_s() { date +%s.%N; }

median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2 }'
}
min_of() { printf '%s\n' "$@" | sort -g | head -1; }
max_of() { printf '%s\n' "$@" | sort -g | tail -1; }

# fmt_rate ROWS SECONDS
fmt_rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
# ratio A B (A / B, 2 decimals)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }'; }
# list of numbers rounded, for "runs: ..." lines
fmt_list() { local x out=; for x in "$@"; do out+="$(printf '%.0f' "$x") "; done; echo "${out% }"; }
fmt_list1() { local x out=; for x in "$@"; do out+="$(printf '%.1f' "$x") "; done; echo "${out% }"; }

settings_line() {
  Q "$1" "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)
            FROM pg_settings
           WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_wal_size',
                          'courier.database', 'courier.batch_size', 'max_worker_processes',
                          'courier.idle_wakeup', 'courier.pause_tms', 'wal_sync_method', 'autovacuum')"
}

# machine_line: what else is running (the figures are noisy on a shared box)
machine_line() {
  echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')"
}

# table helpers: a fixed-width row
row() { printf '  %-58s %14s  %s\n' "$1" "$2" "${3:-}"; }
