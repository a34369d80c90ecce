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
    trap 'kill $MOTO_PID 2>/dev/null || true; rm -f "$MOTO_LOG"' EXIT
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
