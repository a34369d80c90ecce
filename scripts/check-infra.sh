#!/usr/bin/env bash
# Offline checks of the SAM template (infra/template.yaml): cfn-lint, `sam validate --lint`,
# checkov and infra/tests/test_template.py. Needs python3 (3.9+) with venv; the only network
# use is PyPI, to install the pinned tools into .venv-infra (cfn-lint, aws-sam-cli) and
# .venv-checkov (checkov, kept apart: in the SAM venv it downgrades boto3). No AWS account,
# no Docker, no cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "python3 (3.9+) is required" >&2; exit 1; }

TEMPLATE=infra/template.yaml
START=$(date +%s)

. scripts/lib.sh
ensure_venv .venv-infra scripts/requirements-infra.txt
ensure_venv .venv-checkov scripts/requirements-checkov.txt

pinned() { grep -i "^$1==" "$2" | cut -d= -f3; }

# No telemetry (and no network use for it) from the SAM CLI.
export SAM_CLI_TELEMETRY=0

echo "== cfn-lint $(pinned cfn-lint scripts/requirements-infra.txt) (errors, warnings, informational)"
.venv-infra/bin/cfn-lint --include-checks I -- "$TEMPLATE"

echo "== sam validate --lint (aws-sam-cli $(pinned aws-sam-cli scripts/requirements-infra.txt))"
# The region only satisfies the CLI; nothing is sent to AWS.
.venv-infra/bin/sam validate --lint --region us-east-1 -t "$TEMPLATE"

echo "== checkov $(pinned checkov scripts/requirements-checkov.txt) (skips are listed in the template with reasons)"
.venv-checkov/bin/checkov --skip-download --quiet --compact --framework cloudformation -f "$TEMPLATE"

echo "== python infra/tests/test_template.py"
.venv-infra/bin/python infra/tests/test_template.py

echo "== infra checks passed in $(( $(date +%s) - START )) s"
