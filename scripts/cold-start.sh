#!/usr/bin/env bash
# Init time of each Lambda function: every function binary started RUNS times (20) with a
# deployed function's environment against a stand-in for the Lambda runtime API
# (scripts/runtime_api.py), timed from just before it is spawned to its first
# `GET /2018-06-01/runtime/invocation/next`; min, median and max per function. Before the
# timed runs each binary runs once under strace (when installed), which must show no network
# call but the runtime API's: init builds the SDK clients and calls nothing. No AWS endpoint
# is needed.
#
# By default it builds the functions for this machine with the deployed build's settings
# (`cargo lambda build --release`, which applies the workspace's
# [workspace.metadata.lambda.build] as sam build does, for the host's architecture) into $CARGO_TARGET_DIR/lambda-host. With COLD_START_BOOTSTRAPS=DIR (a
# `sam build` directory, as scripts/sam-build.sh writes) it times the arm64 bootstraps there
# instead, under qemu-aarch64 (emulated: several times slower than on Lambda's CPUs).
#
#   ./scripts/cold-start.sh [FUNCTION...]        RUNS=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure_venv .venv-lambda scripts/requirements-lambda.txt
# cargo-lambda runs Zig as `python -m ziglang`: its venv must come first on PATH.
export PATH="$PWD/.venv-lambda/bin:$PATH"

# Every function crate (functions/<name>/Cargo.toml, binary <name>), or those named.
FUNCTIONS=("$@")
if [ ${#FUNCTIONS[@]} -eq 0 ]; then
    for manifest in functions/*/Cargo.toml; do FUNCTIONS+=("$(basename "$(dirname "$manifest")")"); done
fi
RUNS=${RUNS:-20}
TARGET=${CARGO_TARGET_DIR:-target}

ARGS=(--runs "$RUNS"
      --env-vars shared/aws/src/config.rs
      --archiver-env-vars shared/lambda/src/archiver.rs)
if command -v strace >/dev/null; then
    ARGS+=(--check-network)
else
    echo "== strace not installed: not checking that init makes no network call" >&2
fi

SPECS=()
if [ -n "${COLD_START_BOOTSTRAPS:-}" ]; then
    LD_PREFIX=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
    command -v qemu-aarch64 >/dev/null && [ -e "$LD_PREFIX/lib/ld-linux-aarch64.so.1" ] ||
        { echo "COLD_START_BOOTSTRAPS needs qemu-aarch64 and an aarch64 glibc (Debian: qemu-user libc6-arm64-cross)" >&2; exit 1; }
    ARGS+=(--wrapper "qemu-aarch64 -L $LD_PREFIX")
    for f in "${FUNCTIONS[@]}"; do SPECS+=("$f=$COLD_START_BOOTSTRAPS/${f^}Function/bootstrap"); done
    echo "== arm64 bootstraps in $COLD_START_BOOTSTRAPS, under qemu-aarch64"
else
    case "$(uname -m)" in
        x86_64) ARCH=--x86-64 ;;
        aarch64) ARCH=--arm64 ;;
        *) echo "unsupported host architecture $(uname -m)" >&2; exit 1 ;;
    esac
    # With sam build's settings, for this machine's architecture, into a directory of its own
    # so that the arm64 bootstraps in $TARGET/lambda stay; every function in one build.
    BINS=()
    for f in "${FUNCTIONS[@]}"; do BINS+=(--bin "$f"); SPECS+=("$f=$TARGET/lambda-host/$f/bootstrap"); done
    echo "== cargo lambda build --release $ARCH ${BINS[*]}"
    cargo lambda build --release "$ARCH" --lambda-dir "$TARGET/lambda-host" "${BINS[@]}"
fi

echo "== $RUNS cold starts per function: process spawn to the first GET .../invocation/next"
python3 scripts/runtime_api.py "${ARGS[@]}" "${SPECS[@]}"
