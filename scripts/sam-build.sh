#!/usr/bin/env bash
# `sam build` of infra/template.yaml, offline: every function through cargo-lambda (Zig,
# glibc 2.30 at most, arm64), then each bootstrap's size and the newest glibc symbol it needs.
# A separate check from scripts/test.sh: a cold run compiles the AWS SDK once more, for arm64
# in release (its time is in the README).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rustup >/dev/null || { echo "rustup is required (for the aarch64 target)" >&2; exit 1; }

. scripts/lib.sh
ensure_venv .venv-infra scripts/requirements-infra.txt
ensure_venv .venv-lambda scripts/requirements-lambda.txt
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu

# cargo-lambda runs Zig as `python -m ziglang`: its venv must come first on PATH.
export PATH="$PWD/.venv-lambda/bin:$PWD/.venv-infra/bin:$PATH"
export SAM_CLI_TELEMETRY=0
# One target directory for every function: the dependencies compile once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BUILD_DIR=${SAM_BUILD_DIR:-.aws-sam/build}

# Built for size and a short cold start: the workspace's [workspace.metadata.lambda.build]
# (Cargo.toml), which cargo lambda, and so sam build, applies to every function.

START=$(date +%s)
echo "== sam build"
sam build --template-file infra/template.yaml --build-dir "$BUILD_DIR"
echo "== sam build took $(( $(date +%s) - START )) s"

# Each bootstrap against the size budget (docs/deploy.md): 8 MB.
BUDGET=8000000
OVER=0
printf '%-20s %10s  %s\n' FUNCTION BYTES "NEWEST GLIBC SYMBOL"
for dir in "$BUILD_DIR"/*/; do
    b="$dir/bootstrap"
    [ -f "$b" ] || continue
    glibc=$(readelf --dyn-syms --wide "$b" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
    size=$(stat -c %s "$b")
    printf '%-20s %10s  %s\n' "$(basename "$dir")" "$size" "$glibc"
    [ "$size" -le "$BUDGET" ] || OVER=1
done

# The deployed artifacts themselves, run as Lambda runs them (scripts/lambda-smoke.sh), where
# this machine can execute arm64 code.
if command -v qemu-aarch64 >/dev/null && [ -e "${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}/lib/ld-linux-aarch64.so.1" ]; then
    if [ -z "${AWS_ENDPOINT_URL:-}" ]; then start_moto; fi
    SMOKE_BOOTSTRAPS="$BUILD_DIR" ./scripts/lambda-smoke.sh
else
    echo "== not running the arm64 bootstraps: install qemu-user and libc6-arm64-cross (Debian) to run them here"
fi
if [ "$OVER" != 0 ]; then
    echo "WARNING a bootstrap is above the size budget of $BUDGET bytes (docs/deploy.md)" >&2
fi
