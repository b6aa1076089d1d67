# shellcheck shell=bash
# Sourced by the Worker scripts: points worker-build at local binaries (it would otherwise
# download wasm-bindgen and wasm-opt from GitHub, which CI cannot reach) and keeps wrangler
# offline. Returns non-zero, saying what is missing, when the toolchain is not installed;
# scripts/install-worker-toolchain.sh installs it.
#
# Pins (DESIGN.md §6): wasm-bindgen-cli must equal the `wasm-bindgen` crate (=0.2.130) and
# worker-build the `worker` crate (=0.8.7); wrangler 4.86.0 and binaryen 132.0.0 come from
# mediator-worker/package-lock.json.

TANDEM_WASM_BINDGEN_VERSION=0.2.130
TANDEM_WORKER_BUILD_VERSION=0.8.7
TANDEM_WRANGLER_VERSION=4.86.0
TANDEM_BINARYEN_VERSION=132

TANDEM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TANDEM_WORKER_DIR="$TANDEM_ROOT/mediator-worker"
TANDEM_CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in
  *":$TANDEM_CARGO_BIN:"*) ;;
  *) export PATH="$TANDEM_CARGO_BIN:$PATH" ;;
esac

export WASM_BINDGEN_BIN="$TANDEM_CARGO_BIN/wasm-bindgen"
# npm binaryen runs wasm-opt as a Node program; Debian's binaryen 108 produces broken wasm.
export WASM_OPT_BIN="$TANDEM_WORKER_DIR/node_modules/binaryen/bin/wasm-opt"
export ESBUILD_BIN="$TANDEM_WORKER_DIR/node_modules/esbuild/bin/esbuild"
export TANDEM_WRANGLER="$TANDEM_WORKER_DIR/node_modules/wrangler/bin/wrangler.js"
export TANDEM_WORKERD="$TANDEM_WORKER_DIR/node_modules/workerd/bin/workerd"

# wrangler offline: no metrics, no error reports, no request.cf fetch.
export WRANGLER_SEND_METRICS=false
export WRANGLER_SEND_ERROR_REPORTS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
# The banner would also ask the npm registry for a newer wrangler.
export WRANGLER_HIDE_BANNER=true
export WRANGLER_LOG_PATH="${WRANGLER_LOG_PATH:-$TANDEM_WORKER_DIR/.wrangler/logs}"

# Returns 0 when every tool is there; otherwise prints what is missing (one line each) and
# returns 1.
tandem_worker_toolchain_ready() {
  local missing=0 v
  v="$("$WASM_BINDGEN_BIN" --version 2>/dev/null || true)"
  if [ "$v" != "wasm-bindgen $TANDEM_WASM_BINDGEN_VERSION" ]; then
    echo "wasm-bindgen-cli $TANDEM_WASM_BINDGEN_VERSION missing (found: ${v:-none})"
    missing=1
  fi
  v="$(worker-build --version 2>/dev/null || true)"
  if [ "$v" != "$TANDEM_WORKER_BUILD_VERSION" ]; then
    echo "worker-build $TANDEM_WORKER_BUILD_VERSION missing (found: ${v:-none})"
    missing=1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "rust target wasm32-unknown-unknown missing"
    missing=1
  fi
  v="$(node "$TANDEM_WRANGLER" --version 2>/dev/null | tail -n 1 || true)"
  if [ "$v" != "$TANDEM_WRANGLER_VERSION" ]; then
    echo "wrangler $TANDEM_WRANGLER_VERSION missing in mediator-worker/node_modules (found: ${v:-none})"
    missing=1
  fi
  v="$("$WASM_OPT_BIN" --version 2>/dev/null || true)"
  case "$v" in
    "wasm-opt version $TANDEM_BINARYEN_VERSION "*) ;;
    *)
      echo "binaryen $TANDEM_BINARYEN_VERSION missing in mediator-worker/node_modules (found: ${v:-none})"
      missing=1
      ;;
  esac
  if [ ! -x "$ESBUILD_BIN" ]; then
    echo "esbuild missing in mediator-worker/node_modules"
    missing=1
  fi
  return "$missing"
}
