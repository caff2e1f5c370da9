#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every check and test: formatting,
# clippy, the wasm32 builds, and the whole test suite on the real
# model. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps-only

say() { printf '==> %s\n' "$*" >&2; }
# Mesa's Vulkan drivers want a runtime dir; CI containers often lack one.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d)
  export XDG_RUNTIME_DIR
fi
say "cargo fmt --check"
cargo fmt --all -- --check
# One build with the test suite's features serves the tests and the CLI;
# building `-p arny-cli` alone would resolve features differently and
# compile llama.cpp's and Burn's dependency trees a second time.
say "building the workspace and its tests (the first build compiles llama.cpp and Burn, ~20 min)"
cargo test --release --locked --workspace --no-run
say "fetching the default model"
"${CARGO_TARGET_DIR:-target}/release/arny" models fetch >/dev/null
# The pte engine's tests run the fp32 export of the default model. It is
# cached under a key covering the model, the exporter and its pinned
# requirements; a fresh machine exports it here (about 5 min).
say "exporting the default model to ExecuTorch (cached after the first run)"
"${CARGO_TARGET_DIR:-target}/release/arny" export pte --quant fp32 >/dev/null
say "clippy (warnings are errors)"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
say "engine-api, the gateway router, the GGUF reader and tokenizer, the Burn engine and the PTE engine (which reports itself unavailable there) build for wasm32-unknown-unknown"
cargo build --locked -p arny-engine-api -p arny-router -p arny-gguf-file -p arny-gguf-tokenizer \
  -p arny-engine-burn-wgpu -p arny-engine-pte --target wasm32-unknown-unknown
say "tests"
# The SDK's app-level test runs once per engine listed here.
export ARNY_TEST_ENGINES="${ARNY_TEST_ENGINES:-gguf,burn,pte}"
cargo test --release --locked --workspace
