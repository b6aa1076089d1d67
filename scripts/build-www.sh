#!/usr/bin/env bash
# Builds the web app into www/dist/: the browser client package (scripts/build-client.sh) plus
# the app's own files. The mediator Worker serves www/dist/ as static assets (wrangler.toml
# [assets]), so the app, the mediator WebSocket and /directory/* share one origin (DESIGN §2.6).
# Prints, last, the client package's tarball path (as build-client.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."

tarball="$(scripts/build-client.sh | tail -n 1)"
rm -rf www/dist.tmp
mkdir -p www/dist.tmp/pkg
cp www/index.html www/app.js www/style.css www/noscript.css www/_headers www/dist.tmp/
cp client-wasm/pkg/tandem_client.js client-wasm/pkg/tandem_client_bg.wasm www/dist.tmp/pkg/
# The glue imports wasm-bindgen's inline JS snippets (`./snippets/…`) beside it.
if [ -d client-wasm/pkg/snippets ]; then cp -r client-wasm/pkg/snippets www/dist.tmp/pkg/; fi
rm -rf www/dist
mv www/dist.tmp www/dist
echo "==> web app in www/dist ($(du -sh www/dist | cut -f1))" >&2
echo "$tarball"
