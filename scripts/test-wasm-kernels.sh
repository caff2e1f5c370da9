#!/usr/bin/env bash
# Builds the packed-weight kernels (`arny-qmatmul`) for wasm32 with simd128,
# as the browser package has them, and runs their tests under Node's WASI
# (V8, the engine Chromium runs the page on): the simd128 kernels against
# the scalar reference on random blocks and on the default model's tensors.
# wasm32-wasip1 rather than the page's wasm32-unknown-unknown only because a
# test binary needs a file system and a clock; the kernels are the same code.
# Installs the rustup target when it is missing.
#
#   scripts/test-wasm-kernels.sh [cargo test args...]
#   scripts/test-wasm-kernels.sh --speed   # each kernel's time per type under V8
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
rustup target list --installed | grep -qx wasm32-wasip1 ||
  rustup target add wasm32-wasip1
command -v node >/dev/null 2>&1 || {
  echo "error: node is needed (scripts/setup.sh --with test installs it)" >&2
  exit 1
}
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C target-feature=+simd128"
export CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings --single-threaded-gc $PWD/scripts/wasi-run.mjs"
if [ "${1:-}" = --speed ]; then
  exec cargo run --release --locked -p arny-qmatmul --target wasm32-wasip1 --example kernel_speed
fi
say "arny-qmatmul's tests on wasm32 simd128 (Node's WASI)"
cargo test --release --locked -p arny-qmatmul --target wasm32-wasip1 "$@"
