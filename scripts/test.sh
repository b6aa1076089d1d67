#!/usr/bin/env bash
# Runs every test of Tandem, the way CI does: installs what is missing, then formatting, lints,
# the whole workspace's tests, and the wasm build of the protocol core.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

scripts/bootstrap.sh
# The mediator Worker's smoke test builds and serves it: wasm-bindgen-cli, worker-build,
# wrangler and binaryen (prints the env it set up, which the Worker scripts set themselves).
scripts/install-worker-toolchain.sh >/dev/null

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The mediator's development routes (feature `dev`, docs/worker.md): linted and unit-tested
# with the feature too (the workspace runs build it without, as a deploy does).
cargo clippy -p tandem-mediator --all-targets --features dev --locked -- -D warnings
cargo clippy -p tandem-mediator --target wasm32-unknown-unknown --features dev --locked -- -D warnings

say "shared builds for wasm32-unknown-unknown"
cargo build -p tandem-shared --target wasm32-unknown-unknown --locked

say "cargo test (workspace)"
cargo test --workspace --locked
cargo test -p tandem-mediator --features dev --locked

say "chat server suite again on PostgreSQL (real servers, started by the tests)"
TANDEM_TEST_DATABASE=postgres cargo test -p tandem-chat-server --tests --locked
# The mediator scenarios against two chat-server nodes on PostgreSQL behind one address (the
# in-process mediator here, ≈ 45 s; the wrangler dev variant takes minutes: docs/testing.md).
TANDEM_CHAT_SERVER_NODES=2 cargo test -p tandem-tests --test mediator_integration --locked \
  reference_state_machine_in_process

say "client-wasm browser tests (headless Chromium via chromedriver)"
# wasm-bindgen-test-runner reads client-wasm/webdriver.json (headless, no sandbox: CI runs as root).
(
  cd client-wasm
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen-test-runner" \
  CHROMEDRIVER="$(command -v chromedriver || echo /usr/bin/chromedriver)" \
  WASM_BINDGEN_TEST_TIMEOUT=120 \
    cargo test -p tandem-client --target wasm32-unknown-unknown --locked
)
