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
# One build with the test suite's features serves the tests, the CLI and
# the C library (`--all-targets` also links the cdylib, which `cargo test`
# alone does not); building `-p arny-cli` alone would resolve features
# differently and compile llama.cpp's and Burn's dependency trees again.
say "building the workspace and its tests (the first build compiles llama.cpp and Burn, ~20 min)"
cargo build --release --locked --workspace --all-targets
say "fetching the default model"
"${CARGO_TARGET_DIR:-target}/release/arny" models fetch >/dev/null
# The pte engine's tests run the fp32 export of the default model. It is
# cached under a key covering the model, the exporter and its pinned
# requirements; a fresh machine exports it here (about 5 min).
say "exporting the default model to ExecuTorch (cached after the first run)"
"${CARGO_TARGET_DIR:-target}/release/arny" export pte --quant fp32 >/dev/null
say "clippy (warnings are errors)"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
say "the PTE engine (which reports itself unavailable there) builds for wasm32-unknown-unknown"
cargo build --release --locked -p arny-engine-pte --target wasm32-unknown-unknown
# The browser package: the SDK with engine-api, the router, the GGUF reader
# and tokenizer and the Burn engine, for wasm32, plus wasm-bindgen's glue.
scripts/build-web.sh
say "tests"
# The SDK's app-level test runs once per engine listed here.
export ARNY_TEST_ENGINES="${ARNY_TEST_ENGINES:-gguf,burn,pte}"
cargo test --release --locked --workspace
say "browser tests: the web demo in Chromium, WebGPU and CPU paths (screenshots in bindings/web-demo/tests/artifacts)"
(cd bindings/web-demo/tests &&
  ARNY_BIN="$(cd ../../.. && realpath "${CARGO_TARGET_DIR:-target}")/release/arny" npm test)
