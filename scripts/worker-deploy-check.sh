#!/usr/bin/env bash
# What `wrangler deploy` would upload, without uploading: builds the mediator Worker the way a
# deploy does (wrangler.toml `[build]`: `worker-build --release`, no `dev` feature, so no
# development routes), checks wrangler.toml's bindings and migrations, and writes the bundle to
# OUT_DIR. Needs no Cloudflare account and no network (docs/worker.md "Deploying to Cloudflare").
#
#   scripts/worker-deploy-check.sh OUT_DIR
#
# Leaves that release build in mediator-worker/build; scripts/worker-dev.sh builds its own again.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
out="$(mkdir -p "$1" && cd "$1" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/worker-env.sh
source "$root/scripts/worker-env.sh"
cd "$TANDEM_WORKER_DIR"
unset TANDEM_WORKER_PREBUILT
exec node "$TANDEM_WRANGLER" deploy --dry-run --outdir "$out"
