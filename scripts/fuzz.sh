#!/usr/bin/env bash
# Builds the libFuzzer targets in tools/fuzz, replays every checked-in seed
# and every past finding (tools/fuzz/corpus/<target>, tools/fuzz/regressions/
# <target>) as regression tests, then fuzzes each target for a bounded time.
#
#   scripts/fuzz.sh                 # every target, 10 s each (CI)
#   scripts/fuzz.sh gguf 600        # one target, ten minutes
#   scripts/fuzz.sh build           # only the instrumented build (CI starts
#                                   # it early, beside work that leaves a
#                                   # core idle)
#
#   ARNY_FUZZ_TARGET_DIR   where the instrumented build goes (default:
#                          $CARGO_TARGET_DIR-fuzz, or tools/fuzz/target)
#
# New inputs the fuzzer finds go to a scratch corpus, never into the
# checked-in one; a crash, panic, timeout (10 s) or 2 GiB of memory stops
# the run with the input saved under $ARNY_FUZZ_ARTIFACTS (default
# /tmp/arny-fuzz-artifacts): copy it to tools/fuzz/regressions/<target>
# once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
all=(gguf pte_header manifest chat_template options tokenizer)
targets=("${1:-all}")
[ "${targets[0]}" = all ] && targets=("${all[@]}")
seconds="${2:-10}"

scripts/setup.sh --deps-only --with fuzz --without burn,pte,pte-export,tune,web,web-cli,browser,test >&2
export PATH="${ARNY_TOOLS_DIR:-$HOME/.cargo}/bin:$PATH"
export CARGO_TARGET_DIR="${ARNY_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR-fuzz}}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-tools/fuzz/target}"
# The main build's clippy wrapper must not lint the instrumented build.
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
artifacts="${ARNY_FUZZ_ARTIFACTS:-/tmp/arny-fuzz-artifacts}"
mkdir -p "$artifacts"

say "building the fuzz targets (coverage-instrumented, no sanitizer)"
cargo fuzz build --fuzz-dir tools/fuzz -s none >&2
[ "${targets[0]}" = build ] && exit 0

# One target: its seeds replayed, then fuzzed; everything it says into $2.
fuzz_one() {
  local t=$1 out=$2 scratch log
  local seeds=(tools/fuzz/corpus/"$t")
  [ -d tools/fuzz/regressions/"$t" ] && seeds+=(tools/fuzz/regressions/"$t")
  {
    say "$t: replaying $(find "${seeds[@]}" -type f | wc -l) checked-in inputs"
    cargo fuzz run --fuzz-dir tools/fuzz -s none "$t" "${seeds[@]}" -- -runs=0 2>&1 | tail -n 1
    scratch=$(mktemp -d)
    say "$t: fuzzing for $seconds s"
    log=$(mktemp)
    if ! cargo fuzz run --fuzz-dir tools/fuzz -s none "$t" "$scratch" "${seeds[@]}" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$artifacts/$t-" -print_final_stats=1 >"$log" 2>&1; then
      tail -n 60 "$log"
      say "$t: the fuzzer found a failure; the input is in $artifacts"
      return 1
    fi
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$log" | tail -n 2 || true
    rm -rf "$scratch" "$log"
  } >"$out" 2>&1
}

# Each libFuzzer run keeps one core busy: two targets at a time (each still
# fuzzed for its full time), each one's output shown whole when it ends.
jobs="${ARNY_FUZZ_JOBS:-2}"
declare -A running=()
failed=()
# Waits for whichever target ends first and shows its output.
reap() {
  local pid ok=0
  wait -n -p pid || ok=$?
  cat "${running[$pid]#* }" >&2
  rm -f "${running[$pid]#* }"
  [ "$ok" -eq 0 ] || failed+=("${running[$pid]%% *}")
  unset "running[$pid]"
}
for t in "${targets[@]}"; do
  while [ "${#running[@]}" -ge "$jobs" ]; do reap; done
  out=$(mktemp)
  fuzz_one "$t" "$out" &
  running[$!]="$t $out"
done
while [ "${#running[@]}" -gt 0 ]; do reap; done
if [ "${#failed[@]}" -gt 0 ]; then
  say "the fuzzer found failures in: ${failed[*]} (inputs in $artifacts)"
  exit 1
fi
say "fuzzed ${targets[*]}: no crash, panic, timeout or memory blow-up"
