#!/usr/bin/env bash
# Installs what building and running the mediator Worker needs, skipping what is already there:
# wasm-bindgen-cli and worker-build (cargo), the wasm32 target, and wrangler + binaryen
# (npm ci in mediator-worker/, from the committed package-lock.json).
#
# Prints the environment the Worker scripts use as `export` lines on stdout (progress goes to
# stderr), so `eval "$(scripts/install-worker-toolchain.sh)"` sets it in the calling shell.
set -euo pipefail
# shellcheck source=scripts/worker-env.sh
source "$(dirname "$0")/worker-env.sh"

say() { printf '==> %s\n' "$*" >&2; }

for tool in cargo rustup node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$tool is missing: the Worker toolchain needs Rust (rustup) and Node.js 20+ with npm" >&2
    exit 1
  fi
done

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "installing the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown >&2
fi

# `cargo install` builds in the caller's CARGO_TARGET_DIR when one is set; a private one keeps
# the tools' build out of the project's and lets it be removed afterwards.
install_crate() { # crate version
  local tmp
  tmp="$(mktemp -d)"
  say "installing $1 $2 with cargo (several minutes on a cold machine)"
  # Without --locked: the crate's own lock file does not build with this toolchain.
  CARGO_TARGET_DIR="$tmp" cargo install "$1" --version "$2" >&2
  rm -rf "$tmp"
}

if [ "$("$WASM_BINDGEN_BIN" --version 2>/dev/null || true)" != "wasm-bindgen $TANDEM_WASM_BINDGEN_VERSION" ]; then
  install_crate wasm-bindgen-cli "$TANDEM_WASM_BINDGEN_VERSION"
fi
if [ "$(worker-build --version 2>/dev/null || true)" != "$TANDEM_WORKER_BUILD_VERSION" ]; then
  install_crate worker-build "$TANDEM_WORKER_BUILD_VERSION"
fi

if ! tandem_worker_toolchain_ready >/dev/null; then
  say "npm ci in mediator-worker/ (wrangler $TANDEM_WRANGLER_VERSION, binaryen $TANDEM_BINARYEN_VERSION)"
  (cd "$TANDEM_WORKER_DIR" && npm ci --no-audit --no-fund >&2)
fi

if ! missing="$(tandem_worker_toolchain_ready)"; then
  echo "the Worker toolchain is still incomplete:" >&2
  echo "$missing" >&2
  exit 1
fi
say "Worker toolchain ready"

for var in PATH WASM_BINDGEN_BIN WASM_OPT_BIN ESBUILD_BIN WRANGLER_SEND_METRICS \
  WRANGLER_SEND_ERROR_REPORTS CLOUDFLARE_CF_FETCH_ENABLED WRANGLER_HIDE_BANNER; do
  printf 'export %s=%q\n' "$var" "${!var}"
done
