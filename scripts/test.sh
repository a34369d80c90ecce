#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, the SAM template's checks, lints, then
# every test, including the AWS suite against a local AWS endpoint.
#
# The AWS endpoint: by default moto server (pinned in scripts/requirements-aws.txt, installed
# into .venv-aws) started here on a free loopback port and stopped at the end. Set
# AWS_ENDPOINT_URL beforehand (e.g. http://localhost:4566 for LocalStack) to use that endpoint
# instead; see the README for a real account.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 (3.9+) is required for the local AWS endpoint" >&2; exit 1; }

. scripts/lib.sh
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
    start_moto
fi
export AWS_REGION="${AWS_REGION:-us-east-1}"
export CHRONICLE_AWS_TESTS=1

echo "== cargo fmt --check"
cargo fmt --all -- --check

# The SAM template: cfn-lint, sam validate --lint, checkov and the template test (offline).
./scripts/check-infra.sh

echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (AWS endpoint $AWS_ENDPOINT_URL)"
cargo test --workspace --locked

echo "== schemathesis against chronicle serve, from GET /openapi.json"
./scripts/schemathesis.sh

echo "== the function binaries behind a Lambda runtime API (cargo lambda watch)"
./scripts/lambda-smoke.sh
