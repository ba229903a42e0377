#!/usr/bin/env bash
# courier demo: the whole pipeline on a throwaway cluster.
#
#   bash scripts/demo.sh            (as root on Debian 12, or as any user
#                                    once the packages are installed)
#
# Installs what it needs, builds courier and the mock TMS, starts a
# PostgreSQL 15 cluster in a temporary directory (127.0.0.1, courier
# preloaded, workers on) and the mock TMS on a free port, then plays the
# story: 30,000 paid orders, one bulk delay after a rain storm, the logic
# workers apply it, the TMS workers send the notices; it prints what
# happened and cleans everything up.
#
# Environment: DEMO_ORDERS (default 30000), DEMO_BULK (messages per TMS
# request, default 100), DEMO_PROVIDER (the provider's dialect: generic,
# the default, or nhn_alimtalk, nhn_sms, sens_alimtalk, sens_sms; the mock
# then plays that provider, and some customers' numbers are set up to
# fail: 1 in 100 has no KakaoTalk (AlimTalk 3019, so it gets an SMS
# instead), 1 in 250 is not a valid number), DEMO_FALLBACK (who sends that
# SMS for an AlimTalk provider: provider, the default, courier or none),
# COURIER_SKIP_DEPS=1 to skip the apt step.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORDERS=${DEMO_ORDERS:-30000}
BULK=${DEMO_BULK:-100}
PROVIDER=${DEMO_PROVIDER:-generic}
FALLBACK=${DEMO_FALLBACK:-provider}
case $FALLBACK in
	provider | courier | none) ;;
	*)
		echo "DEMO_FALLBACK must be provider, courier or none" >&2
		exit 2
		;;
esac
case $PROVIDER in
	generic | nhn_alimtalk | nhn_sms | sens_alimtalk | sens_sms) ;;
	*)
		echo "DEMO_PROVIDER must be generic, nhn_alimtalk, nhn_sms, sens_alimtalk or sens_sms" >&2
		exit 2
		;;
esac
PGBIN=/usr/lib/postgresql/15/bin

# shellcheck source=test/lib/cluster.sh
source "$REPO/test/lib/cluster.sh"

say() { printf '\n== %s\n' "$*"; }
now_ms() { date +%s%3N; }

if [[ -z ${COURIER_SKIP_DEPS:-} && $(id -u) -eq 0 ]]; then
	say "installing packages (Debian)"
	bash "$REPO/scripts/install_deps.sh"
fi

say "building courier and the mock TMS"
make -s -C "$REPO" PG_CONFIG=$PGBIN/pg_config >/dev/null
make -s -C "$REPO" PG_CONFIG=$PGBIN/pg_config install >/dev/null
make -s -C "$REPO/test/mock_tms" >/dev/null

WORK=$(mktemp -d /tmp/courier-demo.XXXXXX)
chmod 755 "$WORK"
[[ $(id -u) -eq 0 ]] && chown postgres "$WORK"
MOCK_PID=
cleanup() {
	[[ -n $MOCK_PID ]] && kill "$MOCK_PID" 2>/dev/null || true
	cluster_stop "$WORK/data" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

say "starting the mock TMS"
"$REPO/test/mock_tms/mock_tms" --port 0 --nhn-appkey demo-app --nhn-secret demo-secret \
	--sens-access-key demo-access --sens-secret demo-sens-secret >"$WORK/mock.out" 2>&1 &
MOCK_PID=$!
for _ in $(seq 100); do
	grep -q listening "$WORK/mock.out" 2>/dev/null && break
	sleep 0.05
done
MOCK=$(sed -n 's/^mock_tms listening on \(.*\)$/\1/p' "$WORK/mock.out")
[[ -n $MOCK ]] || { echo "mock TMS did not start"; cat "$WORK/mock.out"; exit 1; }
echo "mock TMS on http://$MOCK"
mock_stat() { curl -s "http://$MOCK/_stats" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
customers() { curl -s "http://$MOCK/_customers" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
# final states come 50 ms after a send (a real provider takes seconds)
curl -s -XPOST "http://$MOCK/_control" -d '{"receipt_delay_ms": 50, "resend_delay_ms": 50}' >/dev/null

# what postgresql.conf says of the provider
case $PROVIDER in
	generic) PROVIDER_CONF="courier.tms_url = 'http://$MOCK/send'" ;;
	*) PROVIDER_CONF="courier.tms_provider = '$PROVIDER'
courier.tms_url = 'http://$MOCK'
courier.nhn_alimtalk_appkey = 'demo-app'
courier.nhn_alimtalk_secret_key = 'demo-secret'
courier.nhn_alimtalk_sender_key = 'demo-sender-key'
courier.nhn_sms_appkey = 'demo-app'
courier.nhn_sms_secret_key = 'demo-secret'
courier.nhn_sms_send_no = '0212345678'
courier.sens_alimtalk_service_id = 'ncp:kkobizmsg:kr:demo'
courier.sens_sms_service_id = 'ncp:sms:kr:demo'
courier.sens_plus_friend_id = '@demo'
courier.sens_sms_from = '0212345678'
courier.tms_hmac_access_key = 'demo-access'
courier.tms_hmac_secret = 'demo-sens-secret'
courier.alimtalk_template = 'COURIER_DELAY'
courier.alimtalk_template_v2 = 'COURIER_DELAY_V2'
courier.alimtalk_template_params = 'orderId=order_id, product=product, reason=reason, shipDate=ship_date'
courier.alimtalk_fallback = '$FALLBACK'
courier.receipt_interval = '100ms'" ;;
esac
echo "provider: $PROVIDER$([[ $PROVIDER == *alimtalk ]] && echo ", AlimTalk fallback by: $FALLBACK")"

say "starting a throwaway PostgreSQL 15 cluster"
cluster_init "$WORK/data" "$WORK/initdb.log"
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
shared_preload_libraries = 'courier'
courier.database = 'postgres'
$PROVIDER_CONF
courier.tms_bulk_size = $BULK
courier.logic_max_workers = 2
courier.tms_max_workers = 2
max_worker_processes = 16
EOF
cluster_start "$WORK/data" 55600 "$WORK/server.log"
PORT=$CLUSTER_PORT
sql() { psql_on "$PORT" postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }
echo "cluster on 127.0.0.1:$PORT"

sql -c "CREATE EXTENSION courier"

say "registering $ORDERS paid orders of super-sweet corn"
t0=$(now_ms)
sql -c "SELECT courier.register_orders(jsonb_agg(jsonb_build_object(
	'order_id', g, 'seller_id', 1 + g % 40,
	'customer_phone', '010-' || lpad((g / 10000)::text, 4, '0') || '-'
		|| CASE WHEN g % 100 = 7 THEN '3019' WHEN g % 250 = 11 THEN '2019'
				ELSE lpad((g % 10000)::text, 4, '0') END,
	'product_name', 'Super-sweet corn 10kg',
	'promised_ship_date', to_char(current_date + 1, 'YYYY-MM-DD'))))
  FROM generate_series(1, $ORDERS) g" >/dev/null
sql -c "SELECT courier.request_shipping(array_agg(g)) FROM generate_series(1, $ORDERS) g" >/dev/null
echo "registered and shipping requested in $(( $(now_ms) - t0 )) ms"

say "the app rejects a bad request, all or nothing"
sql -c "SELECT courier.delay_orders(ARRAY[1, 2, 999999999], 'rain', current_date + 3)" 2>&1 | sed 's/^/  /' || true
echo "  requests recorded after the rejected call: $(sql -c 'SELECT count(*) FROM courier.requests')"

say "a storm: the seller delays all $ORDERS orders by 4 days in one call"
t_start=$(now_ms)
# the app passes its W3C trace context, so the request can be followed from
# its log through courier to the provider's
APP_TRACE=00-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')-01
REQ=$(sql -c "SET courier.traceparent = '$APP_TRACE'" \
          -c "SELECT courier.delay_orders(array_agg(g), 'Heavy rain delayed the harvest', current_date + 5)
                FROM generate_series(1, $ORDERS) g")
t_enqueued=$(now_ms)
echo "request $REQ validated and queued in $(( t_enqueued - t_start )) ms"

t_applied=
t_sent=
deadline=$(( $(now_ms) + 120000 ))
while (( $(now_ms) < deadline )); do
	if [[ -z $t_applied ]]; then
		done_n=$(sql -c "SELECT done + failed FROM courier.request_status($REQ)")
		[[ $done_n -ge $ORDERS ]] && t_applied=$(now_ms)
	fi
	if [[ $PROVIDER == generic ]]; then
		settled=$(( $(mock_stat delivered) >= ORDERS ))
	else
		# every notice sent or failed, and its receipt final
		settled=$(sql -c "SELECT count(*) = 0 FROM courier.notices
		                   WHERE status = 'pending' OR receipt_status = 'awaiting'")
		[[ $settled == t && -n $t_applied ]] && settled=1 || settled=0
	fi
	if (( settled )); then
		t_sent=$(now_ms)
		[[ -z $t_applied ]] && t_applied=$t_sent
		break
	fi
	sleep 0.01
done

say "what happened"
printf '  %-46s %s\n' "orders delayed (logic stage)" "$(sql -c "SELECT done FROM courier.request_status($REQ)")"
printf '  %-46s %s ms\n' "commit -> all delays applied by the workers" "$(( ${t_applied:-$t_start} - t_start ))"
printf '  %-46s %s ms\n' "commit -> every notice settled (and its receipt)" "$(( ${t_sent:-0} - t_start ))"
if [[ $PROVIDER == generic ]]; then
	printf '  %-46s %s\n' "TMS requests / messages / delivered / dupes" \
		"$(mock_stat requests) / $(mock_stat messages_received) / $(mock_stat delivered) / $(mock_stat duplicates)"
else
	printf '  %-46s %s\n' "requests to the provider (sends, queries)" "$(mock_stat requests)"
fi
sql -c "SELECT '  notices ' || status || ': ' || count(*) FROM courier.notices GROUP BY status ORDER BY status"
sql -c "SELECT '  failures: ' || count(*) FROM courier.failures"
sql -c "SELECT '    ' || count(*) || ' failed with ' || last_sqlstate || ': ' || max(last_error)
          FROM courier.failures GROUP BY last_sqlstate ORDER BY last_sqlstate"
if [[ $PROVIDER != generic ]]; then
	echo "  what the customers' handsets received (the mock's count):"
	printf '    %-40s %s\n' "AlimTalk" "$(customers alimtalk)" \
		"SMS / LMS by the SMS API (courier's fallback too)" "$(customers sms) / $(customers lms)" \
		"SMS / LMS after an AlimTalk fallback" "$(customers fallback_sms) / $(customers fallback_lms)" \
		"received nothing" "$(( ORDERS - $(customers total) ))" \
		"  of them refused at send (in courier.failures)" "$(customers refused)"
	echo "  what courier learned from the provider's receipts:"
	sql -c "SELECT '    ' || coalesce(receipt_status, 'no receipt') || ' '
	               || coalesce(receipt_code, '') || coalesce(' after AlimTalk ' || fallback_reason, '')
	               || coalesce(' (' || fallback_channel || ' via ' || provider || ')', '')
	               || ': ' || count(*)
	          FROM courier.notices
	         GROUP BY receipt_status, receipt_code, fallback_reason, fallback_channel, provider
	         ORDER BY count(*) DESC"
fi
sql -c "SELECT '  still queued: ' || (SELECT count(*) FROM courier.work_items) || ' logic items, '
               || (SELECT count(*) FROM courier.notices WHERE status = 'pending') || ' pending notices'"
sql -c "SELECT '  queue slots: ' || string_agg(slot || ' ' || state || ' ' || pg_size_pretty(bytes), ', ' ORDER BY slot)
          FROM courier.queue_storage"
echo "  a delivered notice:"
sql -c "SELECT '    ' || order_id || ' ' || ship_date || ' via ' || channel || ', HTTP ' || http_status
               || ', provider id ' || provider_id || ', ' || round(latency_ms::numeric, 1) || ' ms'
          FROM courier.notices WHERE status = 'delivered' ORDER BY order_id LIMIT 1"
say "what monitoring sees"
echo "  the app's traceparent:            $APP_TRACE"
echo "  request_status's trace id:        $(sql -c "SELECT trace_id FROM courier.request_status($REQ)")"
echo "  a traceparent the TMS received:   $(curl -s "http://$MOCK/_traces" | head -c 4000 |
	grep -o '"traceparent":"[^"]*"' | head -1 | cut -d'"' -f4) (same trace id, a span id of its own)"
echo "  from courier.metric_samples(), what postgres_exporter exposes to Prometheus:"
sql -c "SELECT '    ' || name || coalesce('{stage=\"' || stage || '\",result=\"' || result || '\"}', '') || ' ' || value
          FROM courier.metric_samples('{courier_items_total}') ORDER BY stage, result"
sql -c "SELECT '    ' || name || ' ' || value
          FROM courier.metric_samples('{courier_tms_request_duration_seconds,courier_tms_breaker_open}')
         WHERE name NOT LIKE '%bucket' ORDER BY name"
sql -c "SELECT '    TMS requests answered within ' || min(le::float8) || ' s: at least half of them'
          FROM courier.metric_samples('{courier_tms_request_duration_seconds}') b
         WHERE b.name LIKE '%bucket' AND b.le <> '+Inf'
           AND b.value * 2 >= (SELECT value FROM courier.metric_samples('{courier_tms_request_duration_seconds}')
                                WHERE name LIKE '%count')"
sql -c "SELECT courier.failure_digest()" >/dev/null
echo "  alerts firing after courier.failure_digest() (courier.alerts_firing):"
sql -c "SELECT coalesce(string_agg('    ' || alertname || ' ' || coalesce(stage, '') || ': '
                                   || (annotations ->> 'summary'), E'\n' ORDER BY alertname, stage),
                        '    none: nothing failed, no breaker is open, no queue waits')
          FROM courier.alerts_firing"
echo "  the workers:"
sql -c "SELECT '    ' || backend_type || ': ' || coalesce(query, '') FROM pg_stat_activity
         WHERE backend_type LIKE 'courier%' ORDER BY backend_type"
if [[ -z $t_sent ]]; then
	echo "not every notice was delivered within 120 s"
	exit 1
fi
