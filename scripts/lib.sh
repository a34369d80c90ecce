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
