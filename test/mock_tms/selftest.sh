#!/usr/bin/env bash
#
# test/mock_tms/selftest.sh
#
# Builds the mock TMS, starts it on a free loopback port and checks, with
# curl, each of its dialects: the generic one (unchanged answers), NHN Cloud
# AlimTalk v2.3 and SMS v3.0, Naver Cloud SENS SMS and AlimTalk; the SENS
# signature and clock window, NHN's idempotency key (-1005), asynchronous
# final states with the provider's own fallback, faults on the providers'
# paths, and the counters of what handsets received; and the subscriber
# endpoint (/hooks/<name>): what it records, duplicates, Courier-Signature
# results, hook_status, hook_reject_bad_signature, /_hooks and its filter,
# /_hooks/stats and /_reset; and the trace log (/_traces): each request's
# traceparent header, its ids and its events' traceparents.  Prints one line per check and "N passed, N
# failed"; exits 1 if any check failed.
#
# Needs bash, make, gcc, libmicrohttpd-dev, curl, and openssl or python3 (to
# sign SENS and subscriber requests).  Waits poll with a deadline; nothing
# sleeps blindly.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
PASS=0
FAIL=0
MOCK_PID=

cleanup()
{
	if [[ -n $MOCK_PID ]]; then
		kill "$MOCK_PID" 2>/dev/null
		wait "$MOCK_PID" 2>/dev/null
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

ok()  { PASS=$((PASS + 1)); echo "ok - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "not ok - $1"; [[ -n ${2:-} ]] && echo "#   got: ${2:0:600}"; }

# expect NAME HAYSTACK NEEDLE...: every needle occurs in the haystack
expect()
{
	local name=$1 hay=$2 s
	shift 2
	for s in "$@"; do
		if [[ $hay != *"$s"* ]]; then
			bad "$name" "$hay (missing: $s)"
			return 1
		fi
	done
	ok "$name"
}

# expect_not NAME HAYSTACK NEEDLE: the needle does not occur
expect_not()
{
	if [[ $2 == *"$3"* ]]; then bad "$1" "$2"; return 1; fi
	ok "$1"
}

# req ARGS...: curl; sets CODE (HTTP status, 000 when no answer) and BODY
req()
{
	CODE=$(curl -s --max-time 10 -o "$WORK/body" -w '%{http_code}' "$@")
	BODY=$(cat "$WORK/body" 2>/dev/null)
}

# field NAME [N]: the Nth (1st) string value of "NAME" in BODY
field()
{
	grep -o "\"$1\":\"[^\"]*\"" <<<"$BODY" | sed -n "${2:-1}p" | sed 's/.*:"\(.*\)"$/\1/'
}

# wait_until SECONDS FUNC ARGS...: call FUNC until it succeeds or time is up
wait_until()
{
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS >= deadline)) && return 1
		sleep 0.1
	done
}

# sens_sign METHOD URI TS: x-ncp-apigw-signature-v2 for the access key AK
sens_sign()
{
	local text
	text=$(printf '%s %s\n%s\n%s' "$1" "$2" "$3" "$SENS_AK")
	if command -v openssl >/dev/null 2>&1; then
		printf '%s' "$text" | openssl dgst -sha256 -hmac "$SENS_SK" -binary | base64
	else
		python3 -c 'import base64,hmac,hashlib,sys
print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).digest()).decode())' \
			"$SENS_SK" "$text"
	fi
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# sens METHOD URI [CURL ARGS...]: a signed SENS request
sens()
{
	local method=$1 uri=$2 ts
	shift 2
	ts=$(now_ms)
	req -X "$method" "$BASE$uri" -H "x-ncp-apigw-timestamp: $ts" \
		-H "x-ncp-iam-access-key: $SENS_AK" \
		-H "x-ncp-apigw-signature-v2: $(sens_sign "$method" "$uri" "$ts")" \
		-H 'Content-Type: application/json; charset=utf-8' "$@"
}

nhn() { req "$@" -H "X-Secret-Key: $NHN_SECRET" -H 'Content-Type: application/json;charset=UTF-8'; }

# hook_sign SECRET T BODY: the v1 of Courier-Signature, hex HMAC-SHA256 of "T.BODY"
hook_sign()
{
	if command -v openssl >/dev/null 2>&1; then
		printf '%s.%s' "$2" "$3" | openssl dgst -sha256 -hmac "$1" | awk '{print $NF}'
	else
		python3 -c 'import hmac,hashlib,sys
print(hmac.new(sys.argv[1].encode(), (sys.argv[2] + "." + sys.argv[3]).encode(), hashlib.sha256).hexdigest())' \
			"$1" "$2" "$3"
	fi
}

# hook_events ID...: a subscriber body with one order.delayed event per id
hook_events()
{
	local id sep= out='{"events":['
	for id in "$@"; do
		out+="$sep{\"id\":$id,\"type\":\"order.delayed\",\"order_id\":1001,\"seller_id\":7,\"occurred_at\":\"2026-11-30T10:00:00.123456+00:00\",\"data\":{\"reason\":\"late\",\"eta\":null,\"n\":[1,{\"x\":\"y\"}]}}"
		sep=,
	done
	echo "$out]}"
}

# hook NAME BODY [CURL ARGS...]: POST BODY to the subscriber NAME
hook() { local name=$1 body=$2; shift 2; req -X POST "$BASE/hooks/$name" -H 'Content-Type: application/json' -H "Idempotency-Key: $RANDOM" --data-binary "$body" "$@"; }

# hook_signed NAME SECRET BODY: the same, signed with SECRET
hook_signed() { local t; t=$(date +%s); hook "$1" "$3" -H "Courier-Signature: t=$t,v1=$(hook_sign "$2" "$t" "$3")"; }

# hook_entry HOOK ID REQUEST SIGNATURE DUP: one /_hooks entry of hook_events
hook_entry() { echo "{\"hook\":\"$1\",\"id\":$2,\"type\":\"order.delayed\",\"order_id\":1001,\"seller_id\":7,\"request\":$3,\"signature\":\"$4\",\"dup\":$5}"; }

# ---------------------------------------------------------------- start
# MOCK_TMS_BIN runs another build (say, one with sanitizers) instead.
BIN=${MOCK_TMS_BIN:-$HERE/mock_tms}
if [[ -z ${MOCK_TMS_BIN:-} ]]; then
	if ! make -s -C "$HERE" >"$WORK/make.log" 2>&1; then
		cat "$WORK/make.log"
		bad "mock builds"
		echo "$PASS passed, $FAIL failed"
		exit 1
	fi
	if grep -q -i warning "$WORK/make.log"; then
		bad "mock builds without warnings" "$(cat "$WORK/make.log")"
	else
		ok "mock builds without warnings"
	fi
fi

NHN_APPKEY=appkey-selftest
NHN_SECRET=nhn-secret-selftest
SENS_AK=sens-access-key
SENS_SK=sens-secret-key
HOOK_CLI_SECRET='cli secret=with spaces'
"$BIN" --port 0 --nhn-appkey "$NHN_APPKEY" --nhn-secret "$NHN_SECRET" \
	--sens-access-key "$SENS_AK" --sens-secret "$SENS_SK" \
	--hook-secret "cli-hook=$HOOK_CLI_SECRET" >"$WORK/mock.out" 2>"$WORK/mock.err" &
MOCK_PID=$!
listening() { grep -q 'mock_tms listening on' "$WORK/mock.out"; }
if ! wait_until 10 listening; then
	bad "mock starts" "$(cat "$WORK/mock.err")"
	echo "$PASS passed, $FAIL failed"
	exit 1
fi
PORT=$(sed -n 's/^mock_tms listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/mock.out")
BASE=http://127.0.0.1:$PORT
ok "mock starts on port $PORT"

# ---------------------------------------------------------------- generic
req -X POST "$BASE/send" -d '{"messages":[{"id":"g1","to":"01012345678","channel":"sms"},{"id":"g2","to":"123"}]}'
[[ $CODE == 200 && $BODY == '{"results":[{"id":"g1","status":"accepted","code":"ok","provider_id":"tms-1"},{"id":"g2","status":"rejected","code":"invalid_number","provider_id":""}]}' ]] &&
	ok "generic: answers as before" || bad "generic: answers as before" "$CODE $BODY"
req -X POST "$BASE/send" -d '{"messages":[{"id":"g1","to":"01012345678"}]}'
[[ $BODY == '{"results":[{"id":"g1","status":"accepted","code":"duplicate","provider_id":"tms-1"}]}' ]] &&
	ok "generic: duplicate id keeps its provider id" || bad "generic: duplicate id keeps its provider id" "$BODY"
req "$BASE/_delivered"
[[ $BODY == '["g1"]' ]] && ok "generic: /_delivered" || bad "generic: /_delivered" "$BODY"

req -X POST "$BASE/_control" -d '{"receipt_delay_ms":1000,"resend_delay_ms":500}'
expect "control: receipt and resend delays" "$BODY" '"receipt_delay_ms":1000' '"resend_delay_ms":500' \
	'"templates":"COURIER_DELAY:approved,COURIER_DELAY_V2:approved,NOT_APPROVED:requested"'
req -X POST "$BASE/_control" -d '{"templates":"A:maybe"}'
[[ $CODE == 400 ]] && ok "control: a bad templates value is refused" || bad "control: a bad templates value is refused" "$CODE $BODY"

# ---------------------------------------------------------------- NHN AlimTalk
AT=$BASE/alimtalk/v2.3/appkeys/$NHN_APPKEY/messages
AT_BODY='{"senderKey":"0123456789012345678901234567890123456789","templateCode":"COURIER_DELAY","senderGroupingKey":"batch-1","recipientList":[
 {"recipientNo":"01011112222","templateParameter":{"order":"A-1","date":"2025-01-31"},"recipientGroupingKey":"order-1"},
 {"recipientNo":"01011113019","templateParameter":{"order":"A-2"},"resendParameter":{"isResend":true,"resendType":"SMS","resendContent":"delay notice","resendSendNo":"0212345678"},"recipientGroupingKey":"order-2"},
 {"recipientNo":"0101","recipientGroupingKey":"order-3"}]}'
nhn -X POST "$AT" -H 'X-NC-API-IDEMPOTENCY-KEY: key-1' -d "$AT_BODY"
expect "nhn alimtalk: send succeeds" "$CODE $BODY" '200 ' '"resultCode":0' '"isSuccessful":true' \
	'"recipientSeq":1,"recipientNo":"01011112222","resultCode":0' '"recipientGroupingKey":"order-2"'
expect "nhn alimtalk: an invalid number gets -5000" "$BODY" \
	'"recipientSeq":3,"recipientNo":"0101","resultCode":-5000'
AT_RID=$(field requestId)
[[ ${#AT_RID} == 25 ]] && ok "nhn alimtalk: requestId has 25 characters" || bad "nhn alimtalk: requestId has 25 characters" "$AT_RID"

nhn "$AT?requestId=$AT_RID"
expect "nhn alimtalk: in progress at first" "$BODY" '"messageStatus":"READY"' '"totalCount":3' \
	'"resendStatus":"RSC02"'

nhn -X POST "$AT" -H 'X-NC-API-IDEMPOTENCY-KEY: key-1' -d "$AT_BODY"
expect "nhn alimtalk: a repeated idempotency key gets -1005" "$BODY" '"resultCode":-1005' '"isSuccessful":false'
expect_not "nhn alimtalk: -1005 does not replay the first answer" "$BODY" '"requestId"'

req -X POST "$AT" -H 'X-Secret-Key: wrong' -d "$AT_BODY"
expect "nhn alimtalk: a wrong X-Secret-Key gets -1001" "$BODY" '"resultCode":-1001' '"isSuccessful":false'
nhn -X POST "$BASE/alimtalk/v2.3/appkeys/other/messages" -d "$AT_BODY"
expect "nhn alimtalk: an unknown appkey gets -1000" "$BODY" '"resultCode":-1000'
nhn -X POST "$AT" -d '{"senderKey":"s","templateCode":"NO_SUCH","recipientList":[{"recipientNo":"01011112222"}]}'
expect "nhn alimtalk: an unknown template gets -3003" "$BODY" '"resultCode":-3003'
nhn -X POST "$AT" -d '{"senderKey":"s","templateCode":"NOT_APPROVED","recipientList":[{"recipientNo":"01011112222"}]}'
expect "nhn alimtalk: an unapproved template gets -3005" "$BODY" '"resultCode":-3005'

at_seq2_final() { nhn "$AT/$AT_RID/2"; [[ $BODY == *'"resendStatus":"RSC04"'* ]]; }
if wait_until 10 at_seq2_final; then ok "nhn alimtalk: 3019 reaches its final state and is resent"; else bad "nhn alimtalk: 3019 reaches its final state and is resent" "$BODY"; fi
expect "nhn alimtalk: 3019 shows its codes and the resend" "$BODY" '"messageStatus":"FAILED"' \
	'"resultCode":"3019"' '"resendResultCode":"1000"' '"resendStatusName"'
RESEND_RID=$(field resendRequestId)
nhn "$AT/$AT_RID/1"
expect "nhn alimtalk: a plain number is delivered" "$BODY" '"messageStatus":"COMPLETED"' '"resultCode":"1000"' \
	'"content":"[COURIER_DELAY] order=A-1, date=2025-01-31"' '"resendStatus":"RSC01"'
nhn "$BASE/sms/v3.0/appKeys/$NHN_APPKEY/sender/sms/$RESEND_RID?recipientSeq=1"
expect "nhn alimtalk: the resend is an SMS of the SMS API" "$BODY" '"msgStatus":"3"' \
	'"recipientNo":"01011113019"' '"body":"delay notice"' '"sendNo":"0212345678"'

# an accepted request whose answer is lost: the retry gets -1005, the
# query by grouping key and time finds what was taken
req -X POST "$BASE/_control" -d '{"lost_reply_rate":1}'
nhn -X POST "$AT" -H 'X-NC-API-IDEMPOTENCY-KEY: key-2' \
	-d '{"senderKey":"s","templateCode":"COURIER_DELAY_V2","senderGroupingKey":"batch-2","recipientList":[{"recipientNo":"01033334444","recipientGroupingKey":"order-9"}]}'
[[ $CODE == 000 ]] && ok "fault: lost_reply_rate closes without an answer" || bad "fault: lost_reply_rate closes without an answer" "$CODE $BODY"
req -X POST "$BASE/_control" -d '{"lost_reply_rate":0}'
nhn -X POST "$AT" -H 'X-NC-API-IDEMPOTENCY-KEY: key-2' \
	-d '{"senderKey":"s","templateCode":"COURIER_DELAY_V2","senderGroupingKey":"batch-2","recipientList":[{"recipientNo":"01033334444","recipientGroupingKey":"order-9"}]}'
expect "nhn alimtalk: the retry of a lost reply gets -1005" "$BODY" '"resultCode":-1005'
FROM=$(date -d '-1 minute' '+%Y-%m-%d%%20%H:%M')
TO=$(date -d '+1 minute' '+%Y-%m-%d%%20%H:%M')
nhn "$AT?startRequestDate=$FROM&endRequestDate=$TO&senderGroupingKey=batch-2"
expect "nhn alimtalk: reconcile by senderGroupingKey and time" "$BODY" '"totalCount":1' \
	'"recipientGroupingKey":"order-9"' '"templateCode":"COURIER_DELAY_V2"'

# ---------------------------------------------------------------- NHN SMS
SMS=$BASE/sms/v3.0/appKeys/$NHN_APPKEY/sender
nhn -X POST "$SMS/sms" -d '{"body":"your parcel is late","sendNo":"0212345678","senderGroupingKey":"sms-1","recipientList":[{"recipientNo":"01055556666","recipientGroupingKey":"o-5"},{"recipientNo":"01055552019","recipientGroupingKey":"o-6"},{"recipientNo":"01055559990"}]}'
expect "nhn sms: send succeeds" "$BODY" '"isSuccessful":true' '"statusCode":"2"' \
	'"recipientNo":"01055556666","resultCode":0,"resultMessage":"SUCCESS","recipientSeq":1'
expect "nhn sms: ...2019 gets -2019, ...9990 gets -2021" "$BODY" '"resultCode":-2019' '"resultCode":-2021'
SMS_RID=$(field requestId)
nhn -X POST "$SMS/mms" -d '{"body":"long","sendNo":"0212345678","recipientList":[{"recipientNo":"01055556666"}]}'
expect "nhn sms: LMS without a title gets -2014" "$BODY" '"resultCode":-2014'
MANY=$(printf '{"recipientNo":"01055556666"},%.0s' $(seq 1001))
nhn -X POST "$SMS/sms" -d "{\"body\":\"x\",\"sendNo\":\"0212345678\",\"recipientList\":[${MANY%,}]}"
expect "nhn sms: 1,001 recipients get -2016" "$BODY" '"resultCode":-2016'
nhn -X POST "$SMS/mms" -d '{"title":"배송 지연","body":"배송이 지연되었습니다","sendNo":"0212345678","recipientList":[{"recipientNo":"01055557777"}]}'
expect "nhn sms: LMS succeeds" "$BODY" '"isSuccessful":true'
sms_final() { nhn "$SMS/sms?requestId=$SMS_RID"; [[ $BODY == *'"msgStatus":"3"'* ]]; }
if wait_until 10 sms_final; then ok "nhn sms: reaches its final state"; else bad "nhn sms: reaches its final state" "$BODY"; fi
expect "nhn sms: query lists every recipient" "$BODY" '"totalCount":3' '"resultCode":"1000"' '"msgStatus":"0"'

# ---------------------------------------------------------------- SENS SMS
SENS_SMS=/sms/v2/services/ncp:sms:kr:2550000:courier/messages
SENS_SMS_BODY='{"type":"SMS","contentType":"COMM","countryCode":"82","from":"0212345678","content":"your parcel is late","messages":[{"to":"01077778888"},{"to":"01077773001"}]}'
sens POST "$SENS_SMS" -d "$SENS_SMS_BODY"
expect "sens sms: send answers 202" "$CODE $BODY" '202 ' '"statusCode":"202"' '"statusName":"success"' '"requestTime"'
SENS_RID=$(field requestId)
ts=$(now_ms)
req -X POST "$BASE$SENS_SMS" -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: $SENS_AK" \
	-H "x-ncp-apigw-signature-v2: $(sens_sign POST "$SENS_SMS" "$((ts + 1))")" -d "$SENS_SMS_BODY"
expect "sens: a wrong signature gets 401" "$CODE $BODY" '401 ' '"message":"Authentication Failed"'
ts=$(( $(now_ms) - 6 * 60 * 1000 ))
req -X POST "$BASE$SENS_SMS" -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: $SENS_AK" \
	-H "x-ncp-apigw-signature-v2: $(sens_sign POST "$SENS_SMS" "$ts")" -d "$SENS_SMS_BODY"
expect "sens: a timestamp 6 minutes old gets 401" "$CODE $BODY" '401 ' '"message":"Authentication Failed"'
ts=$(now_ms)
req -X POST "$BASE$SENS_SMS" -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: other" \
	-H "x-ncp-apigw-signature-v2: $(sens_sign POST "$SENS_SMS" "$ts")" -d "$SENS_SMS_BODY"
expect "sens: an unknown access key gets 401" "$CODE" '401'
req -X POST "$BASE$SENS_SMS" -d "$SENS_SMS_BODY"
expect "sens: missing headers get 401" "$CODE $BODY" '401 ' 'Authentication information are missing.'
MANY=$(printf '{"to":"01077778888"},%.0s' $(seq 101))
sens POST "$SENS_SMS" -d "{\"type\":\"SMS\",\"from\":\"0212345678\",\"content\":\"x\",\"messages\":[${MANY%,}]}"
expect "sens: 101 messages get 400" "$CODE $BODY" '400 ' '"status":400' '"errorMessage"'
sens_sms_final() { sens GET "$SENS_SMS?requestId=$SENS_RID"; [[ $BODY == *'"status":"COMPLETED"'* && $BODY != *'"status":"READY"'* && $BODY != *'"status":"PROCESSING"'* ]]; }
if wait_until 10 sens_sms_final; then ok "sens sms: reaches its final state"; else bad "sens sms: reaches its final state" "$BODY"; fi
expect "sens sms: the query shows each message" "$BODY" '"itemCount":2' '"statusName":"success"' \
	'"statusName":"fail"' '"statusCode":"3001"' '"hasMore":false'
MID=$(field messageId 2)
sens GET "$SENS_SMS/$MID"
expect "sens sms: one message by messageId" "$CODE $BODY" '200 ' "\"messageId\":\"$MID\"" '"to":"01077773001"' \
	'"status":"COMPLETED"' '"content":"your parcel is late"'
sens GET "$SENS_SMS/00000000-0000-4000-8000-000000000000"
expect "sens sms: an unknown messageId gets 404" "$CODE" '404'

# ---------------------------------------------------------------- SENS AlimTalk
SENS_AT=/alimtalk/v2/services/ncp:kkobizmsg:kr:2550000:courier/messages
sens POST "$SENS_AT" -d '{"plusFriendId":"@courier","templateCode":"COURIER_DELAY","messages":[
 {"to":"01099993019","content":"배송이 지연되었습니다 (A-7)","useSmsFailover":true,"failoverConfig":{"type":"LMS","from":"0212345678","subject":"배송 지연","content":"배송이 지연되었습니다"}},
 {"to":"01099990000","content":"배송이 지연되었습니다 (A-8)"}]}'
expect "sens alimtalk: send answers 202 with messageIds" "$CODE $BODY" '202 ' '"requestStatusCode":"A000"' \
	'"useSmsFailover":true' '"messageId"'
SAT_RID=$(field requestId)
SAT_MID=$(field messageId 1)
sens POST "$SENS_AT" -d '{"plusFriendId":"@courier","templateCode":"NO_SUCH","messages":[{"to":"01099990000","content":"x"}]}'
expect "sens alimtalk: an unknown template gets 400" "$CODE" '400'
sens_at_final() { sens GET "$SENS_AT/$SAT_MID"; [[ $BODY == *'"failoverStatusName":"success"'* ]]; }
if wait_until 10 sens_at_final; then ok "sens alimtalk: 3019 fails over to LMS"; else bad "sens alimtalk: 3019 fails over to LMS" "$BODY"; fi
expect "sens alimtalk: the message shows both results" "$BODY" '"messageStatusCode":"3019"' \
	'"messageStatusName":"fail"' '"failoverStatusCode":"0"' '"completeTime"'
sens GET "$SENS_AT?requestId=$SAT_RID"
expect "sens alimtalk: the list shows the delivered one" "$BODY" '"messageStatusCode":"0000"' '"itemCount":2'

# ---------------------------------------------------------------- faults
req -X POST "$BASE/_control" -d '{"burst_429":1,"retry_after_s":2}'
nhn -X POST "$AT" -d '{"senderKey":"s","templateCode":"COURIER_DELAY","recipientList":[{"recipientNo":"01011112222"}]}'
[[ $CODE == 429 ]] && ok "fault: burst_429 applies to NHN" || bad "fault: burst_429 applies to NHN" "$CODE $BODY"
req -X POST "$BASE/_control" -d '{"malformed_rate":1}'
sens POST "$SENS_SMS" -d "$SENS_SMS_BODY"
[[ $CODE == 200 && $BODY == '{"requestId": "' ]] && ok "fault: malformed_rate applies to SENS" || bad "fault: malformed_rate applies to SENS" "$CODE $BODY"
req -X POST "$BASE/_control" -d '{"malformed_rate":0,"unauthorized":true}'
sens GET "$SENS_SMS?requestId=$SENS_RID"
[[ $CODE == 401 ]] && ok "fault: unauthorized applies to SENS queries" || bad "fault: unauthorized applies to SENS queries" "$CODE $BODY"
req -X POST "$BASE/_control" -d '{"unauthorized":false}'

# ---------------------------------------------------------------- counters
# delivered: alimtalk 01011112222, 01033334444, 01099990000;
# fallback_sms 01011113019; fallback_lms 01099993019;
# sms 01055556666, 01077778888; lms 01055557777
all_final() { req "$BASE/_customers"; [[ $BODY == *'"pending":0'* ]]; }
wait_until 10 all_final
[[ $BODY == '{"alimtalk":3,"sms":2,"lms":1,"fallback_sms":1,"fallback_lms":1,"total":8,"pending":0,"failed":3,"refused":3}' ]] &&
	ok "counters: /_customers" || bad "counters: /_customers" "$BODY"
req "$BASE/_handsets"
expect "counters: /_handsets per number and date" "$BODY" \
	"{\"to\":\"01011113019\",\"date\":\"$(date '+%Y-%m-%d')\",\"alimtalk\":0,\"sms\":0,\"lms\":0,\"fallback_sms\":1,\"fallback_lms\":0,\"total\":1}" \
	'{"to":"01099993019","date":"'
req "$BASE/_stats"
expect "counters: /_stats" "$BODY" '"idempotency_rejected":2' '"sens_signature_failures":2' \
	'"sens_clock_skew":1' '"lost_replies":1' '"template_errors":3'
expect_not "counters: queries are counted" "$BODY" '"queries":0,'

req -X POST "$BASE/_reset"
req "$BASE/_customers"
[[ $BODY == '{"alimtalk":0,"sms":0,"lms":0,"fallback_sms":0,"fallback_lms":0,"total":0,"pending":0,"failed":0,"refused":0}' ]] &&
	ok "reset: clears the records" || bad "reset: clears the records" "$BODY"
nhn "$AT?requestId=$AT_RID"
expect "reset: old request ids are unknown" "$BODY" '"totalCount":0'
nhn -X POST "$AT" -H 'X-NC-API-IDEMPOTENCY-KEY: key-1' -d "$AT_BODY"
expect "reset: clears the idempotency keys" "$BODY" '"resultCode":0'

# ---------------------------------------------------------------- subscribers
# Request numbers count every POST to /hooks/ since the /_reset above.
req "$BASE/_stats"
TMS_REQUESTS=$(grep -o '"requests":[0-9]*' <<<"$BODY")
hook a "$(hook_events 11 12)"
[[ $CODE == 200 && $BODY == '{"received":2}' ]] && ok "hooks: a well-formed post is answered" || bad "hooks: a well-formed post is answered" "$CODE $BODY"
req "$BASE/_hooks"
[[ $BODY == "[$(hook_entry a 11 1 unchecked false),$(hook_entry a 12 1 unchecked false)]" ]] &&
	ok "hooks: a well-formed post is recorded" || bad "hooks: a well-formed post is recorded" "$BODY"
hook a "$(hook_events 12 13)"
req "$BASE/_hooks"
expect "hooks: a re-posted id is flagged dup, a new one not" "$BODY" \
	"$(hook_entry a 12 2 unchecked true),$(hook_entry a 13 2 unchecked false)"
hook a '{"events":[{"id":14,"type":"order.delayed",'
expect "hooks: malformed JSON gets 400" "$CODE $BODY" '400 {"error":"bad_request"}'
hook a '{"events":[]}'
expect "hooks: no events gets 400" "$CODE $BODY" '400 {"error":"bad_request"}'
hook a '{"events":[{"id":"14","type":"order.delayed","order_id":1001,"seller_id":7}]}'
expect "hooks: a string id gets 400" "$CODE $BODY" '400 {"error":"bad_request"}'
req "$BASE/_hooks"
expect_not "hooks: a 400 records nothing" "$BODY" '"request":3'

req -X POST "$BASE/_control" -d '{"hook_status":{"b":503}}'
expect "hooks: hook_status is set" "$CODE $BODY" '200 ' '"hook_status":{"b":503}'
hook b "$(hook_events 21)"
[[ $CODE == 503 && $BODY == '{"error":"injected"}' ]] && ok "hooks: hook_status answers its status" || bad "hooks: hook_status answers its status" "$CODE $BODY"
req "$BASE/_hooks?hook=b"
[[ $BODY == '[]' ]] && ok "hooks: hook_status records nothing" || bad "hooks: hook_status records nothing" "$BODY"
req -X POST "$BASE/_control" -d '{"latency_ms":5,"hook_status":{"b":"503"}}'
expect "hooks: a bad hook_status is refused" "$CODE $BODY" '400 ' '"error":"bad_control"'
req "$BASE/_control"
expect "hooks: a refused setting changes nothing" "$BODY" '"latency_ms":0,' '"hook_status":{"b":503}'
req -X POST "$BASE/_control" -d '{"hook_secrets":{"bad name":"x"}}'
[[ $CODE == 400 ]] && ok "hooks: a bad hook_secrets is refused" || bad "hooks: a bad hook_secrets is refused" "$CODE $BODY"
req -X POST "$BASE/_control" -d '{"hook_status":{}}'
expect "hooks: an empty hook_status clears it" "$BODY" '"hook_status":{}'
hook b "$(hook_events 21)"
[[ $CODE == 200 ]] && ok "hooks: a cleared hook_status answers 200" || bad "hooks: a cleared hook_status answers 200" "$CODE $BODY"

HOOK_SECRET='s3cr3t "quoted"'
req -X POST "$BASE/_control" -d '{"hook_secrets":{"s":"s3cr3t \"quoted\""}}'
expect "hooks: hook_secrets is set" "$CODE" '200'
hook_signed s "$HOOK_SECRET" "$(hook_events 31)"
hook_signed s "wrong secret" "$(hook_events 32)"
hook s "$(hook_events 33)"
hook s "$(hook_events 34)" -H 'Courier-Signature: t=now,v1=00'
hook_signed cli-hook "$HOOK_CLI_SECRET" "$(hook_events 41)"
req "$BASE/_hooks"
expect "hooks: signature ok" "$BODY" "$(hook_entry s 31 8 ok false)"
expect "hooks: signature bad" "$BODY" "$(hook_entry s 32 9 bad false)"
expect "hooks: signature none" "$BODY" "$(hook_entry s 33 10 none false)"
expect "hooks: a malformed signature is bad" "$BODY" "$(hook_entry s 34 11 bad false)"
expect "hooks: signature unchecked without a secret" "$BODY" "$(hook_entry b 21 7 unchecked false)"
expect "hooks: --hook-secret signs ok" "$BODY" "$(hook_entry cli-hook 41 12 ok false)"

req -X POST "$BASE/_control" -d 'hook_reject_bad_signature=true'
expect "hooks: hook_reject_bad_signature is set" "$BODY" '"hook_reject_bad_signature":true'
hook_signed s "wrong secret" "$(hook_events 35)"
expect "hooks: a rejected bad signature gets 401" "$CODE $BODY" '401 {"error":"bad_signature"}'
hook s "$(hook_events 36)"
expect "hooks: a rejected missing signature gets 401" "$CODE $BODY" '401 {"error":"bad_signature"}'
hook_signed s "$HOOK_SECRET" "$(hook_events 37)"
expect "hooks: a good signature still gets 200" "$CODE $BODY" '200 {"received":1}'
hook a "$(hook_events 15)"
expect "hooks: a hook without a secret is not rejected" "$CODE $BODY" '200 {"received":1}'
req "$BASE/_hooks?hook=s"
expect_not "hooks: a 401 records nothing" "$BODY" '"id":35,'
req -X POST "$BASE/_control" -d '{"hook_reject_bad_signature":false,"burst_429":1}'
hook a "$(hook_events 16)"
expect "hooks: the shared faults apply (burst_429)" "$CODE" '429'

req "$BASE/_hooks?hook=b"
[[ $BODY == "[$(hook_entry b 21 7 unchecked false)]" ]] && ok "hooks: ?hook= filters" || bad "hooks: ?hook= filters" "$BODY"
req "$BASE/_hooks/stats"
[[ $BODY == '{"a":{"requests":7,"events":5,"duplicates":1,"bad_signatures":0},"b":{"requests":2,"events":1,"duplicates":0,"bad_signatures":0},"s":{"requests":7,"events":5,"duplicates":0,"bad_signatures":5},"cli-hook":{"requests":1,"events":1,"duplicates":0,"bad_signatures":0}}' ]] &&
	ok "hooks: /_hooks/stats" || bad "hooks: /_hooks/stats" "$BODY"
req "$BASE/_stats"
expect "hooks: not counted in /_stats" "$BODY" "$TMS_REQUESTS," '"throttled_429":0,'

req -X POST "$BASE/_reset"
req "$BASE/_hooks"
[[ $BODY == '[]' ]] && ok "hooks: reset clears the records" || bad "hooks: reset clears the records" "$BODY"
req "$BASE/_hooks/stats"
[[ $BODY == '{}' ]] && ok "hooks: reset clears the counters" || bad "hooks: reset clears the counters" "$BODY"
req "$BASE/_control"
expect "hooks: reset clears the hook settings" "$BODY" '"hook_reject_bad_signature":false' \
	'"hook_status":{}' '"hook_secrets":{}'
hook cli-hook "$(hook_events 41)"
hook s "$(hook_events 31)"
req "$BASE/_hooks"
[[ $BODY == "[$(hook_entry cli-hook 41 1 none false),$(hook_entry s 31 2 unchecked false)]" ]] &&
	ok "hooks: after reset, --hook-secret stays, hook_secrets is gone" || bad "hooks: after reset, --hook-secret stays, hook_secrets is gone" "$BODY"

# ---------------------------------------------------------------- traces
# Every request to a message, provider or subscriber path, with its
# traceparent header; numbered from 1 again after a /_reset.
TP1=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
TP2=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00
req -X POST "$BASE/_reset"
req "$BASE/_traces"
[[ $BODY == '[]' ]] && ok "traces: reset clears the log" || bad "traces: reset clears the log" "$BODY"
req -X POST "$BASE/send" -H "traceparent: $TP1" -d '{"messages":[{"id":"t1","to":"01012345678"},{"id":"t2","to":"01012345679"}]}'
req -X POST "$BASE/send" -H "TraceParent: $TP2" -d '{"messages":[{"id":"t3","to":"01012345678"}]}'
req -X POST "$BASE/send" -d '{"messages": ['
hook tr "{\"events\":[{\"id\":51,\"type\":\"order.delayed\",\"order_id\":1,\"seller_id\":2,\"traceparent\":\"$TP1\"},{\"id\":52,\"type\":\"order.invoiced\",\"order_id\":1,\"seller_id\":2,\"traceparent\":null}]}" -H "traceparent: $TP1"
hook tr "$(hook_events 53)"
req -X POST "$BASE/_control" -d '{"hook_status":{"tr":500}}'
hook tr "$(hook_events 54)" -H "traceparent: $TP2"
req -X POST "$BASE/_control" -d '{"hook_status":{}}'
nhn "$BASE/sms/v3.0/appKeys/$NHN_APPKEY/sender/sms?requestId=x" -H "traceparent: $TP2"
req "$BASE/_traces"
expect "traces: a message request, its header and ids" "$BODY" \
	"[{\"request\":1,\"kind\":\"send\",\"path\":\"/send\",\"traceparent\":\"$TP1\",\"status\":200,\"ids\":[\"t1\",\"t2\"]},"
expect "traces: the header name in any case" "$BODY" \
	"{\"request\":2,\"kind\":\"send\",\"path\":\"/send\",\"traceparent\":\"$TP2\",\"status\":200,\"ids\":[\"t3\"]},"
expect "traces: no header is null, a malformed body has no ids" "$BODY" \
	'{"request":3,"kind":"send","path":"/send","traceparent":null,"status":400},'
expect "traces: a subscriber request, its events' ids and traceparents" "$BODY" \
	"{\"request\":4,\"kind\":\"hook\",\"path\":\"/hooks/tr\",\"traceparent\":\"$TP1\",\"status\":200,\"ids\":[51,52],\"event_traceparents\":[\"$TP1\",null]},"
expect "traces: events without a traceparent" "$BODY" \
	'{"request":5,"kind":"hook","path":"/hooks/tr","traceparent":null,"status":200,"ids":[53],"event_traceparents":[null]},'
expect "traces: a refused request is logged with its status" "$BODY" \
	"{\"request\":6,\"kind\":\"hook\",\"path\":\"/hooks/tr\",\"traceparent\":\"$TP2\",\"status\":500,\"ids\":[54],\"event_traceparents\":[null]},"
expect "traces: a provider's query, its path without the query" "$BODY" \
	"{\"request\":7,\"kind\":\"dialect\",\"path\":\"/sms/v3.0/appKeys/$NHN_APPKEY/sender/sms\",\"traceparent\":\"$TP2\",\"status\":200}]"
req "$BASE/_stats"
expect_not "traces: harness requests are not logged" "$(curl -s "$BASE/_traces")" '"path":"/_'
req -X POST "$BASE/_reset"
req "$BASE/_traces"
[[ $BODY == '[]' ]] && ok "traces: /_reset clears them" || bad "traces: /_reset clears them" "$BODY"

echo "$PASS passed, $FAIL failed"
((FAIL == 0))
