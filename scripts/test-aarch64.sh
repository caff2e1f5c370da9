#!/usr/bin/env bash
# Cross-builds the packed-weight kernels (`arny-qmatmul`) for aarch64 Linux
# and runs their tests under qemu's user-mode emulator with `-cpu max`, so
# that the NEON and NEON dotprod kernels are checked against the scalar
# reference on an x86 machine. Installs what it needs (Debian's cross gcc
# and qemu-user, the rustup target) when it is missing.
#
#   scripts/test-aarch64.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
if ((${#need[@]})); then
  say "installing Debian packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
  rustup target add aarch64-unknown-linux-gnu

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# `-cpu max` has every extension qemu emulates, dotprod included.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"
say "arny-qmatmul's tests on aarch64 (qemu-user)"
cargo test --release --locked -p arny-qmatmul --target aarch64-unknown-linux-gnu "$@"
