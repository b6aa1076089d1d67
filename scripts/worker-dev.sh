#!/usr/bin/env bash
# Builds the mediator Worker and serves it with `wrangler dev` (local workerd), offline.
#
#   scripts/worker-dev.sh PORT STATE_DIR [extra `wrangler dev` arguments...]
#
# STATE_DIR holds the Durable Objects' SQLite files; starting again on the same directory keeps
# them. The development routes (/bench-relay/{name}, /_dev/group/{id}) are built in (cargo
# feature `dev`, which `wrangler deploy`'s release build lacks) and on. Chat servers are
# `--var CHAT_SERVER_<group>:host:port`, the directory `--var DIRECTORY_URL:http://host:port`.
#
# Environment:
#   TANDEM_PUSH_KEY           64 hex digits sealing push tokens (default: random per start)
#   TANDEM_WORKER_BUILD_ARGS  worker-build arguments (default `--release --features dev`;
#                             add `--no-opt` to skip wasm-opt; without `--features dev` the
#                             build is the one `wrangler deploy` makes, with no development routes)
#   TANDEM_WORKER_SKIP_BUILD  1: serve the existing mediator-worker/build as it is
#
# The script execs wrangler, so its process group is wrangler's: stop it with `kill -- -PGID`
# to end workerd too. Exits 3 when the toolchain is missing.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 PORT STATE_DIR [wrangler dev arguments...]" >&2
  exit 2
fi
port="$1"
state_dir="$2"
shift 2

# shellcheck source=scripts/worker-env.sh
source "$(dirname "$0")/worker-env.sh"
if ! missing="$(tandem_worker_toolchain_ready)"; then
  echo "the Worker toolchain is missing; run scripts/install-worker-toolchain.sh first:" >&2
  echo "$missing" >&2
  exit 3
fi

mkdir -p "$state_dir"
state_dir="$(cd "$state_dir" && pwd)"
# wrangler.toml serves the web app from www/dist; wrangler refuses a missing folder. Without a
# built app (scripts/build-www.sh) only the mediator and /directory/* answer.
mkdir -p "$TANDEM_WORKER_DIR/../www/dist"
cd "$TANDEM_WORKER_DIR"

if [ "${TANDEM_WORKER_SKIP_BUILD:-}" != 1 ]; then
  started=$SECONDS
  # shellcheck disable=SC2086 # the arguments are a word list
  worker-build ${TANDEM_WORKER_BUILD_ARGS:---release --features dev} >&2
  echo "worker-dev: worker-build took $((SECONDS - started)) s" >&2
fi
if [ ! -f build/index.js ] || [ ! -f build/index_bg.wasm ]; then
  echo "worker-dev: no build in mediator-worker/build (unset TANDEM_WORKER_SKIP_BUILD)" >&2
  exit 1
fi
# wrangler's own build step (wrangler.toml) becomes a no-op: the build above is the build.
export TANDEM_WORKER_PREBUILT=1

# The push key seals the URLs the chat server wakes device groups with (docs/worker.md "Waking a
# group"). A deployment keeps one as a secret (`wrangler secret put TANDEM_PUSH_KEY`); here a
# fresh one per start unless TANDEM_PUSH_KEY is set (devices reconnect after a restart and
# register new URLs anyway).
push_key="${TANDEM_PUSH_KEY:-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')}"

# The inspector (devtools) port defaults to a fixed 9229, which collides between instances.
exec node "$TANDEM_WRANGLER" dev \
  --ip 127.0.0.1 \
  --port "$port" \
  --inspector-port "${TANDEM_INSPECTOR_PORT:-0}" \
  --persist-to "$state_dir" \
  --show-interactive-dev-session=false \
  --var TANDEM_DEV_ROUTES:on \
  --var "TANDEM_PUSH_KEY:$push_key" \
  "$@"
