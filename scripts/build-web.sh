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

# The threaded build (pkg-threads): the CPU path's matmuls on Web Workers
# sharing the module's memory; the CPU backend alone (no WebGPU, see
# bindings/wasm's `webgpu` feature). Rust's std must be rebuilt with atomics,
# which takes the nightly toolchain's -Z build-std (and its rust-src);
# without them the page runs pkg on one thread. Its own target dir: other
# flags, other artifacts. The 4 GiB cap bounds growth; it reserves nothing.
if cargo +nightly -V >/dev/null 2>&1 &&
  [ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]; then
  say "building arny-wasm with wasm threads (nightly, -Z build-std)"
  # Memory imported and shared (wasm-bindgen then writes the glue that
  # hands it to workers), and the TLS symbols each worker's instance
  # initialises its thread-locals with.
  link=""
  for a in --shared-memory --import-memory --max-memory=4294967296 \
    --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base; do
    link="$link -C link-arg=$a"
  done
  # Not the stable toolchain's clippy-driver that scripts/test.sh sets as
  # the workspace wrapper: it would look for std's sources in stable.
  env -u RUSTC_WORKSPACE_WRAPPER -u RUSTC CARGO_TARGET_DIR="$target/wasm-threads" \
    RUSTFLAGS="--cfg getrandom_backend=\"wasm_js\" -C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals $link" \
    cargo +nightly build --release --locked -p arny-wasm --target wasm32-unknown-unknown \
    --no-default-features -Z build-std=std,panic_abort
  say "wasm-bindgen --target web -> bindings/web-demo/pkg-threads"
  "$bindgen" --target web --out-dir bindings/web-demo/pkg-threads \
    "$target/wasm-threads/wasm32-unknown-unknown/release/arny_wasm.wasm"
  ls -l bindings/web-demo/pkg-threads/arny_wasm_bg.wasm >&2
else
  say "no nightly toolchain with rust-src (scripts/setup.sh installs it): pkg-threads not built, the page runs on one thread"
  rm -rf bindings/web-demo/pkg-threads
fi
