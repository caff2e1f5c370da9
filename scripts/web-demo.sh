#!/usr/bin/env bash
# One command for the browser demo: builds what is missing (the CLI, the
# model, the wasm package) and serves the page on http://127.0.0.1:8000/.
# Extra arguments go to `arny web` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-web.sh
exec "${CARGO_TARGET_DIR:-target}/release/arny" web "$@"
