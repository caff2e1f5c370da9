#!/usr/bin/env bash
# Builds the browser package: bindings/wasm for wasm32 (release), then
# wasm-bindgen writes the JS glue and the module into bindings/web-demo/pkg.
# scripts/setup.sh installs the matching wasm-bindgen-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '==> %s\n' "$*" >&2; }

target="${CARGO_TARGET_DIR:-target}"
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
bindgen="${ARNY_TOOLS_DIR:-$HOME/.cargo}/bin/wasm-bindgen"
[ -x "$bindgen" ] || bindgen=$(command -v wasm-bindgen || true)
have=$("${bindgen:-false}" --version 2>/dev/null | cut -d' ' -f2 || true)
if [ "$have" != "$want" ]; then
  echo "error: wasm-bindgen-cli $want is needed (found: ${have:-none}): run scripts/setup.sh --deps-only" >&2
  exit 1
fi
say "building arny-wasm for wasm32-unknown-unknown (release)"
cargo build --release --locked -p arny-wasm --target wasm32-unknown-unknown
say "wasm-bindgen --target web -> bindings/web-demo/pkg"
"$bindgen" --target web --out-dir bindings/web-demo/pkg \
  "$target/wasm32-unknown-unknown/release/arny_wasm.wasm"
ls -l bindings/web-demo/pkg/arny_wasm_bg.wasm >&2
