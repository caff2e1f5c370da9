#!/usr/bin/env bash
# Sets up (scripts/setup.sh --with test) and runs every check and test:
# formatting, clippy, the wasm32 builds, the whole test suite (tiny
# generated models for plumbing, the real model for behaviour) and the
# browser tests. This is the command CI runs.
#
#   ARNY_TEST_TIMES=FILE   append "stage seconds" lines to FILE
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
t0=$(date +%s)
stage_start=$t0
stage_name="setup"
stage() {
  local now
  now=$(date +%s)
  if [ -n "${ARNY_TEST_TIMES:-}" ]; then
    echo "$stage_name $((now - stage_start))" >>"$ARNY_TEST_TIMES"
  fi
  stage_name="$1"
  stage_start=$now
  say "$1"
}

# Waits for a background job, shows its log, and stops the run if it failed.
await_job() {
  local ok=0
  wait "$1" || ok=$?
  cat "$2" >&2
  if [ "$ok" -ne 0 ]; then
    say "$3 failed"
    exit 1
  fi
}

# The export venv (~6 GB of wheels to unpack) and the tune layer over it
# install in the background while the workspace compiles; the export stage
# waits for them.
# wasm-bindgen-cli (3 min of compiling, needed only by the browser package)
# and cargo-fuzz (1 min) build beside it too: the workspace build leaves a
# core idle in its serial stretches.
scripts/setup.sh --deps-only --with test --without pte-export,tune,web-cli,fuzz
venv_log=$(mktemp)
scripts/setup.sh --deps-only --with pte-export,tune >"$venv_log" 2>&1 &
venv_pid=$!
cli_log=$(mktemp)
scripts/setup.sh --deps-only --with web-cli,fuzz >"$cli_log" 2>&1 &
cli_pid=$!
target="${CARGO_TARGET_DIR:-target}"
arny="$target/release/arny"
# The CLI with every engine, and the same features in every cargo command
# below, so that nothing is compiled twice.
features=(--features arny-cli/burn,arny-cli/pte)
# Mesa's Vulkan drivers want a runtime dir; CI containers often lack one.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d)
  export XDG_RUNTIME_DIR
fi

stage "cargo fmt --check"
cargo fmt --all -- --check
# The fuzz targets are a workspace of their own.
(cd tools/fuzz && cargo fmt -- --check)
# Libraries built with `test = false` / `doctest = false` (to save a compile)
# must not grow unit tests or Rust doc examples that would then never run.
for toml in $(git ls-files '*Cargo.toml'); do
  grep -q '^test = false' "$toml" || continue
  src="$(dirname "$toml")/src"
  [ -d "$src" ] || continue
  found=$(find "$src" -name '*.rs' -exec awk '
    FNR == 1 { fence = 0 }
    /#\[(cfg\(test\)|test)\]/ { print FILENAME; nextfile }
    /^[[:space:]]*\/\/[!\/] ```/ {
      if (fence) { fence = 0; next }
      fence = 1
      lang = $0; sub(/.*```/, "", lang)
      if (lang == "" || lang ~ /^(rust|no_run|should_panic|compile_fail)/) { print FILENAME; nextfile }
    }' {} +)
  if [ -n "$found" ]; then
    say "$toml says test = false, but these hold tests or Rust doc examples: $found"
    exit 1
  fi
done

# Clippy lints the workspace's crates while they are compiled for real:
# `cargo clippy` is `cargo check` with clippy-driver as the workspace's
# compiler, and the driver compiles as rustc does, so running the build
# through it lints every target (warnings are errors) without a second,
# check-only pass over the dependencies. The variables stay set for the
# test run, which then reuses the same artifacts.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
if [ -x "$clippy_driver" ]; then
  export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
fi
stage "building the workspace and its tests, linted by clippy (cold: llama.cpp and Burn, 23 to 32 min on 2 cores)"
# --timings leaves a report of where the build's time went in
# $target/cargo-timings (CI's cold-run figures come from it).
cargo build --release --locked --workspace --all-targets "${features[@]}" --timings
if [ -z "${RUSTC_WORKSPACE_WRAPPER:-}" ]; then
  stage "clippy (warnings are errors)"
  cargo clippy --release --locked --workspace --all-targets "${features[@]}" -- -D warnings
fi

stage "fetching the default model, and Gemma 3 270M (real Q4_K and Q6_K blocks for the kernels' tests on every target)"
"$arny" models fetch >/dev/null
"$arny" models fetch gemma3-270m-q4_k_m >/dev/null
# The pte engine's tests run the fp32 and 8da4w exports of the default
# model and of the tiny model. All are cached under keys covering the
# model, the exporter and its pinned requirements; a fresh machine exports
# them here (the default model's 7.5 and 14 min alone on this project's
# 2-core VMs, the tiny ones about 1 min each).
stage "the PTE export venv and the tune layer (installed in the background since setup)"
await_job "$venv_pid" "$venv_log" "creating the PTE export venv"
# The exports run beside the wasm32 builds, and beside each other: each is
# one Python process that keeps about one core busy (the 8da4w one 14 min
# alone, 71% of it in ExecuTorch's graph passes), so one after the other
# they were the cold run's longest chain (fp32 451 s, then 8da4w 1209 s
# beside the builds, then 279 s of waiting with a core idle).
stage "the browser package (wasm32: the SDK, the router, the Burn engine), exporting the default model to ExecuTorch (fp32, 8da4w) beside it (cached after the first run)"
export_quants=(fp32 8da4w)
export_pids=()
export_logs=()
for q in "${export_quants[@]}"; do
  export_logs+=("$(mktemp)")
  "$arny" export pte --quant "$q" >/dev/null 2>"${export_logs[-1]}" &
  export_pids+=($!)
done
await_job "$cli_pid" "$cli_log" "installing wasm-bindgen-cli"
scripts/build-web.sh
stage "the PTE engine (which reports itself unavailable there) builds for wasm32-unknown-unknown"
cargo build --release --locked -p arny-engine-pte --target wasm32-unknown-unknown
# The exports (a core each; 8da4w's ~14 min alone, more beside the builds)
# outlast the browser builds: the stages below that do not need them run
# beside them, and the fuzz targets' instrumented build starts in the
# background (about 3.5 min cold; a cold run measured 279 s of waiting for
# the export with one core idle).
stage "the packed-weight kernels on aarch64 (cross-built, run under qemu-user: NEON and NEON dotprod against the scalar reference)"
scripts/test-aarch64.sh
stage "the packed-weight kernels on wasm32 (simd128, under Node's WASI: against the scalar reference)"
scripts/test-wasm-kernels.sh
fuzz_log=$(mktemp)
scripts/fuzz.sh build >"$fuzz_log" 2>&1 &
fuzz_pid=$!
stage "waiting for the ExecuTorch export"
for i in "${!export_quants[@]}"; do
  await_job "${export_pids[$i]}" "${export_logs[$i]}" "exporting the default model to ExecuTorch (${export_quants[$i]})"
done

stage "tests"
# The SDK's app-level test runs once per engine listed here.
export ARNY_TEST_ENGINES="${ARNY_TEST_ENGINES:-gguf,burn,pte}"
# Two test binaries at a time (scripts/run-tests.py): one binary alone keeps
# the two cores ~1.5 busy. The durations file only orders the binaries.
scripts/run-tests.py --jobs "${ARNY_TEST_JOBS:-2}" --times "$target/arny-test-durations.json" \
  -- --release --locked --workspace "${features[@]}"

stage "browser tests: the web demo in Chromium, WebGPU and CPU paths (screenshots in bindings/web-demo/tests/artifacts)"
(cd bindings/web-demo/tests &&
  ARNY_BIN="$(cd ../../.. && realpath "$target")/release/arny" npm test)
# The fuzz targets were built in their own instrumented target dir in the
# background (cached after); every checked-in seed is replayed, then each
# target runs for 10 s.
stage "fuzzing: the seed corpora replayed, then each of the 6 targets for 10 s"
await_job "$fuzz_pid" "$fuzz_log" "building the fuzz targets"
scripts/fuzz.sh all "${ARNY_FUZZ_SECONDS:-10}"
stage "done"
say "all checks passed in $(($(date +%s) - t0)) s"
