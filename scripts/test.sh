#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, then every test.
# Installs nothing beyond the Rust toolchain today; later suites (a local AWS endpoint)
# install what they need from here.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
