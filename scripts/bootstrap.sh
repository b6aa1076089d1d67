#!/usr/bin/env bash
# Installs what a fresh machine lacks for building and testing Tandem. Idempotent: every step
# checks first, so running it on a prepared machine costs a second.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# Components the checks need.
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
      say "installing rustup component ${component}"
      rustup component add "${component}"
    fi
  done
  # `shared` must build for the browser and the Worker.
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "installing the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
fi

# The browser tests of client-wasm run in headless Chromium through chromedriver (Debian's
# packages; Playwright's own browser download cannot work offline, DESIGN.md §6).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  say "installing chromium and chromium-driver (apt-get)"
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); elif command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); else sudo_cmd=(false); fi
  if ! command -v apt-get >/dev/null 2>&1 \
    || ! { "${sudo_cmd[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq chromium chromium-driver; }; then
    echo "could not install chromium + chromium-driver: install them (Debian: apt-get install chromium chromium-driver, as root) so that /usr/bin/chromium and /usr/bin/chromedriver exist" >&2
    exit 1
  fi
fi

# The chat server's PostgreSQL tests start real PostgreSQL servers (initdb, postgres,
# pg_basebackup; as the `postgres` user when run as root): Debian's postgresql-15. The package's
# own cluster is not used; the tests make their own in temporary directories.
if [ -z "${TANDEM_PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  say "installing postgresql-15 (apt-get)"
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); elif command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); else sudo_cmd=(false); fi
  if ! command -v apt-get >/dev/null 2>&1 \
    || ! { "${sudo_cmd[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq postgresql-15; }; then
    echo "could not install postgresql-15: install it (Debian: apt-get install postgresql-15, as root) or set TANDEM_PG_BIN to a directory with initdb, postgres, pg_ctl, pg_basebackup, pg_isready and psql" >&2
    exit 1
  fi
fi
