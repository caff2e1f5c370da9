#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every check and test: formatting,
# clippy, the wasm build of engine-api, and the whole test suite on the real
# model. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

say() { printf '==> %s\n' "$*" >&2; }
say "cargo fmt --check"
cargo fmt --all -- --check
say "clippy (warnings are errors)"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
say "engine-api, the gateway router and the GGUF reader and tokenizer build for wasm32-unknown-unknown"
cargo build --locked -p arny-engine-api -p arny-router -p arny-gguf-file -p arny-gguf-tokenizer --target wasm32-unknown-unknown
say "tests"
# The SDK's app-level test runs once per engine listed here.
export ARNY_TEST_ENGINES="${ARNY_TEST_ENGINES:-gguf,burn}"
cargo test --release --locked --workspace
