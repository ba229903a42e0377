#!/usr/bin/env bash
# bench/scrape_bench.sh: what monitoring costs the server (issue 13).
#
# One throwaway cluster, the tms stage paused from server start (in
# postgresql.conf), so a bulk delay leaves BENCH_SCRAPE_N pending notices
# (default 100,000) and, with BENCH_SCRAPE_SUBSCRIBERS paused subscribers of
# order.delayed (default 2), that many queued events each.  Measured, empty
# and then loaded:
#   - SELECT courier.metrics(), median of BENCH_REPEAT (default 5) calls;
#   - one scrape of Debian's prometheus-postgres-exporter configured with
#     docs/monitoring/queries.yaml (its own pg_exporter_last_scrape_duration
#     and the wall time of the HTTP GET), median of BENCH_REPEAT scrapes.
# No target: the figures say what a scrape interval costs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${BENCH_SCRAPE_N:-100000}
SUBS=${BENCH_SCRAPE_SUBSCRIBERS:-2}
REPEAT=${BENCH_REPEAT:-5}
DB=postgres
EXPORTER=/usr/bin/prometheus-postgres-exporter

[[ -x $EXPORTER ]] || { echo "$EXPORTER is missing: bash scripts/install_deps.sh" >&2; exit 1; }
bench_build
bench_cluster_start scrape "shared_preload_libraries = 'courier'
courier.database = 'postgres'
courier.pause_tms = on
max_worker_processes = 16"
Q "$DB" "CREATE EXTENSION courier" >/dev/null
Q "$DB" "CREATE ROLE courier_exporter LOGIN; GRANT courier_monitor TO courier_exporter" >/dev/null

EXPORTER_PORT=$(pick_free_port 29187)
DATA_SOURCE_NAME="host=$WORK port=$PORT user=courier_exporter dbname=$DB sslmode=disable" \
  "$EXPORTER" --web.listen-address="127.0.0.1:$EXPORTER_PORT" \
  --extend.query-path="$REPO/docs/monitoring/queries.yaml" \
  --disable-default-metrics --disable-settings-metrics \
  --no-collector.database --no-collector.bgwriter >"$WORK/exporter.log" 2>&1 &

# measure LABEL: metrics() and the exporter's scrape, medians
measure() {
  local label=$1 t0 t1 ms=() scrape=() wall=() i body
  for ((i = 0; i < REPEAT; i++)); do
    t0=$(now_s)
    Q "$DB" "SELECT length(courier.metrics())" >/dev/null
    t1=$(now_s)
    ms+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) * 1000 }')")
    t0=$(now_s)
    body=$(curl -sf "http://127.0.0.1:$EXPORTER_PORT/metrics")
    t1=$(now_s)
    wall+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) * 1000 }')")
    scrape+=("$(awk '/^pg_exporter_last_scrape_duration_seconds / { print $2 * 1000 }' <<<"$body")")
  done
  if ! grep -q '^pg_exporter_last_scrape_error 0' <<<"$body"; then
    echo "the exporter's scrape failed; its log:" >&2
    tail -20 "$WORK/exporter.log" >&2
    exit 1
  fi
  echo "$label: $(grep -c '^courier_' <<<"$body") courier series"
  row "SELECT courier.metrics() (psql round trip included)" "$(printf '%.1f ms' "$(median "${ms[@]}")")"
  row "exporter scrape, its own duration" "$(printf '%.1f ms' "$(median "${scrape[@]}")")"
  row "exporter scrape, HTTP GET /metrics" "$(printf '%.1f ms' "$(median "${wall[@]}")")"
}

machine_line
echo "settings: $(settings_line "$DB")"
for ((i = 0; i < 50; i++)); do
  curl -sf "http://127.0.0.1:$EXPORTER_PORT/metrics" >/dev/null && break
  sleep 0.1
done
measure "empty queues"

bench_register_orders "$DB" "$N"
for ((s = 1; s <= SUBS; s++)); do
  Q "$DB" "SELECT courier.subscribe('sub$s', 'http://127.0.0.1:9/hooks', '{order.delayed}');
           SELECT courier.pause_subscriber('sub$s')" >/dev/null
done
Q "$DB" "SELECT courier.delay_orders(ARRAY(SELECT generate_series(1, $N)::bigint), 'rain', current_date + 10)" >/dev/null
for ((i = 0; i < 600; i++)); do
  [[ $(Q "$DB" "SELECT backlog FROM courier.queue_stats WHERE stage = 'tms'") == "$N" ]] && break
  sleep 0.2
done
Q "$DB" "VACUUM (ANALYZE)" >/dev/null
measure "$N pending notices, $SUBS paused subscribers with $N queued events each"
