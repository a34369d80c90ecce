#!/usr/bin/env bash
# The function binaries as Lambda runs them: each built `main`, configured only from its
# environment, polling a Lambda runtime API (`cargo lambda watch --only-lambda-apis`, loopback
# only), invoked with its payloads from events/ against the AWS endpoint in AWS_ENDPOINT_URL.
# Run by scripts/test.sh while moto is up; needs cargo, python3 and that endpoint.
#
# By default it runs the mains built for this machine. With SMOKE_BOOTSTRAPS=DIR (a `sam build`
# directory, as scripts/sam-build.sh sets) it runs the deployed artifacts instead,
# DIR/<Name>Function/bootstrap, arm64, under qemu-aarch64 with an aarch64 glibc.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${AWS_ENDPOINT_URL:?set AWS_ENDPOINT_URL (scripts/test.sh does)}"

. scripts/lib.sh
VENV=.venv-lambda
ensure_venv "$VENV" scripts/requirements-lambda.txt
export PATH="$PWD/$VENV/bin:$PATH"
PY="$VENV/bin/python"

FUNCTIONS=(command query projector publisher snapshotter activity archiver reactor anchorer)
echo "== building the function binaries"
cargo build --locked -p chronicle $(printf -- '-p %s ' "${FUNCTIONS[@]}")
# Where cargo put them: CARGO_TARGET_DIR when set (a relative one is relative to here).
BIN="${CARGO_TARGET_DIR:-target}/debug"

# Fresh, uniquely named resources on the endpoint.
SUFFIX=$("$PY" -c 'import uuid; print(uuid.uuid4().hex[:10])')
export CHRONICLE_EVENTS_TABLE="smoke-$SUFFIX-events" CHRONICLE_READ_TABLE="smoke-$SUFFIX-read" \
       CHRONICLE_SNAPSHOT_BUCKET="smoke-$SUFFIX-snapshots" CHRONICLE_ARCHIVE_BUCKET="smoke-$SUFFIX-archive" \
       CHRONICLE_ANCHOR_BUCKET="smoke-$SUFFIX-anchors" CHRONICLE_KEY_TABLE="smoke-$SUFFIX-keys" \
       CHRONICLE_EVENT_STREAM="smoke-$SUFFIX-stream" CHRONICLE_SNAPSHOT_EVERY=2 RUST_LOG=info \
       CHRONICLE_ARCHIVE_AFTER=0s CHRONICLE_ARCHIVE_BELOW_SNAPSHOT=false CHRONICLE_EXPIRE_AFTER=7d
"$BIN/chronicle" aws-setup >/dev/null

WORK=$(mktemp -d -t chronicle-smoke.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(free_port "$PY")
cargo lambda watch --only-lambda-apis --invoke-address 127.0.0.1 --invoke-port "$PORT" >"$WORK/watch.txt" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.2
done

binary() { # binary FN: the command that runs FN's main
    if [ -n "${SMOKE_BOOTSTRAPS:-}" ]; then
        echo "qemu-aarch64 -L ${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu} $SMOKE_BOOTSTRAPS/${1^}Function/bootstrap"
    else
        echo "$BIN/$1"
    fi
}
start() { # start FN: the binary, on its own runtime API path, like a Lambda sandbox
    # shellcheck disable=SC2046
    AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$PORT/.rt/$1" AWS_LAMBDA_FUNCTION_NAME="$1" \
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256 AWS_LAMBDA_FUNCTION_VERSION='$LATEST' \
        $(binary "$1") >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
}
for f in "${FUNCTIONS[@]}"; do start "$f"; done

FAILED=0
# invoke FN FILE CHECK: CHECK is a Python expression over `r`, the function's JSON answer.
invoke() {
    local fn=$1 file=$2 check=$3 out
    if ! out=$(timeout 60 cargo lambda invoke "$fn" --invoke-address 127.0.0.1 --invoke-port "$PORT" \
            --data-file "$file" --output-format json 2>&1); then
        echo "FAIL $fn $file: invoke failed: $out"; FAILED=1; return
    fi
    if printf '%s' "$out" | "$PY" -c "import json, sys; r = json.load(sys.stdin); sys.exit(0 if ($check) else 1)"; then
        echo "ok   $fn $(basename "$file")"
    else
        echo "FAIL $fn $file: $check: $out"; FAILED=1
    fi
}
body() { echo "json.loads(r['body'])$1"; }

invoke command events/apigw/01-open.json "r['statusCode'] == 200 and $(body "['version']") == 1"
invoke command events/apigw/02-deposit.json "r['statusCode'] == 200 and $(body "['version']") == 2"
invoke command events/apigw/12-bad-json.json "r['statusCode'] == 400 and $(body "['error']['code']") == 'malformed_json'"
invoke command events/apigw/43-reads-on-command-function.json "r['statusCode'] == 404"
invoke query events/apigw/05-state-consistent.json "r['statusCode'] == 200 and $(body "['balance']") == 100"
invoke query events/apigw/07-history.json "r['statusCode'] == 200 and len($(body "['events']")) == 2"
invoke query events/apigw/00-health.json "r['statusCode'] == 200"
invoke projector events/dynamodb/stream-batch.json "r['batchItemFailures'] == []"
invoke publisher events/dynamodb/stream-batch.json "r['batchItemFailures'] == []"
invoke snapshotter events/kinesis/batch.json "r['batchItemFailures'] == []"
invoke activity events/kinesis/batch.json "r['batchItemFailures'] == []"
# The projector's read model, through the query function.
"$PY" - "$WORK/projected.json" <<'PYEOF'
import json, sys
ev = json.load(open("events/apigw/05-state-consistent.json"))
ev["rawPath"] = ev["requestContext"]["http"]["path"] = "/accounts/acc-stream-1"
ev["rawQueryString"] = ""
ev.pop("queryStringParameters", None)
json.dump(ev, open(sys.argv[1], "w"))
PYEOF
invoke query "$WORK/projected.json" "r['statusCode'] == 200 and $(body "['balance']") == 200 and $(body "['version']") == 3"
# The audit feed (its GSI) through the query function: the two events stored above, asked
# for the hours around now (the payload names a fixed day).
"$PY" - "$WORK/audit.json" <<'PYEOF'
import datetime, json, sys
now = datetime.datetime.now(datetime.timezone.utc)
at = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
q = {"from": at(now - datetime.timedelta(hours=1)), "to": at(now + datetime.timedelta(hours=1))}
ev = json.load(open("events/apigw/52-audit-feed.json"))
ev["rawQueryString"] = "&".join(f"{k}={v}" for k, v in q.items())
ev["queryStringParameters"] = q
json.dump(ev, open(sys.argv[1], "w"))
PYEOF
invoke query "$WORK/audit.json" "r['statusCode'] == 200 and [e['version'] for e in $(body "['events']")] == [1, 2]"

# The archiver on its schedule's event: acc-1's v1 goes to a segment and expires in a week;
# its head (v2) stays. Then history still reads both (nothing is deleted).
invoke archiver events/eventbridge/schedule.json "r['events_archived'] == 1 and r['events_expiring'] == 1 and r['segments'] == 1 and r['refused'] == []"
invoke query events/apigw/07-history.json "r['statusCode'] == 200 and len($(body "['events']")) == 2"

# The orders sample (after the archiver, which counts every stream): stock through the command
# function, then the reactor on a published OrderPlaced (ord-2: 3 of sku-1, 1 of sku-2), twice
# as Kinesis may deliver it; the inventory, folded from the table by the query function, holds
# the reservation once. ord-1, placed here, stays placed: no Kinesis feeds the reactor here.
invoke command events/apigw/61-restock.json "r['statusCode'] == 200 and $(body "['version']") == 1"
invoke command events/apigw/62-restock-other.json "r['statusCode'] == 200 and $(body "['version']") == 1"
invoke command events/apigw/63-place.json "r['statusCode'] == 200 and $(body "['events'][0]['event_type']") == 'OrderPlaced'"
invoke command events/apigw/64-place-no-lines.json "r['statusCode'] == 400 and $(body "['error']['code']") == 'invalid_command'"
invoke command events/apigw/65-client-confirm.json "r['statusCode'] == 400 and $(body "['error']['code']") == 'invalid_command'"
invoke query events/apigw/66-order-state.json "r['statusCode'] == 200 and $(body "['status']") == 'placed'"
invoke query events/apigw/67-inventory-state.json "r['statusCode'] == 200 and ($(body "['available']"), $(body "['reserved']")) == (10, 0)"
invoke query events/apigw/68-openapi.json "r['statusCode'] == 200 and '/orders/{id}/commands' in $(body "['paths']")"
invoke reactor events/kinesis/orders-batch.json "r['batchItemFailures'] == []"
invoke reactor events/kinesis/orders-batch.json "r['batchItemFailures'] == []"
invoke query events/apigw/67-inventory-state.json "r['statusCode'] == 200 and ($(body "['available']"), $(body "['reserved']")) == (7, 3)"
"$PY" - "$WORK/sku-2.json" <<'PYEOF'
import json, sys
ev = json.load(open("events/apigw/67-inventory-state.json"))
ev["rawPath"] = ev["requestContext"]["http"]["path"] = "/inventory/sku-2"
json.dump(ev, open(sys.argv[1], "w"))
PYEOF
invoke query "$WORK/sku-2.json" "r['statusCode'] == 200 and ($(body "['available']"), $(body "['reserved']")) == (4, 1)"

# The anchorer on its schedule's event: every stream's head under one root, the anchors chained.
invoke anchorer events/eventbridge/schedule.json "r['sequence'] == 1 and r['streams'] >= 4 and r['previous'] == ''"
invoke anchorer events/eventbridge/schedule.json "r['sequence'] == 2 and r['streams'] >= 4 and len(r['previous']) == 64"

# Configuration comes from the environment: a bad value stops the function at init, named.
if CHRONICLE_SNAPSHOT_EVERY=often AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$PORT/.rt/bad" \
        AWS_LAMBDA_FUNCTION_NAME=bad timeout 20 $(binary projector) >"$WORK/bad.txt" 2>&1; then
    echo "FAIL a bad CHRONICLE_SNAPSHOT_EVERY was accepted"; FAILED=1
elif grep -q CHRONICLE_SNAPSHOT_EVERY "$WORK/bad.txt"; then
    echo "ok   a bad CHRONICLE_SNAPSHOT_EVERY stops the function at init, named"
else
    echo "FAIL the init error does not name the variable: $(cat "$WORK/bad.txt")"; FAILED=1
fi
if CHRONICLE_EXPIRE_AFTER=soon AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$PORT/.rt/bad-archiver" \
        AWS_LAMBDA_FUNCTION_NAME=bad-archiver timeout 20 $(binary archiver) >"$WORK/bad-archiver.txt" 2>&1; then
    echo "FAIL a bad CHRONICLE_EXPIRE_AFTER was accepted"; FAILED=1
elif grep -q CHRONICLE_EXPIRE_AFTER "$WORK/bad-archiver.txt"; then
    echo "ok   a bad CHRONICLE_EXPIRE_AFTER stops the archiver at init, named"
else
    echo "FAIL the init error does not name the variable: $(cat "$WORK/bad-archiver.txt")"; FAILED=1
fi
# Logs are JSON inside Lambda: every line any function wrote.
cat "$WORK"/*.log >"$WORK/all-lines"
if ! "$PY" -c "import json, sys; lines = [l for l in open(sys.argv[1]) if l.strip()]; [json.loads(l) for l in lines]; sys.exit(0 if lines else 1)" "$WORK/all-lines"; then
    echo "FAIL function logs are not all JSON"; FAILED=1
else
    echo "ok   function logs are JSON lines"
fi

if [ "$FAILED" != 0 ]; then
    for f in "${FUNCTIONS[@]}"; do echo "--- $f log"; tail -n 20 "$WORK/$f.log"; done
    exit 1
fi
echo "== function binaries (${SMOKE_BOOTSTRAPS:-$BIN}): every invocation answered as expected"
