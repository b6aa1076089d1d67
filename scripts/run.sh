#!/usr/bin/env bash
# Starts the whole Tandem system locally: the chat server, and the mediator Worker under
# `wrangler dev` (local workerd, state on disk) serving the web app, with embedded defaults and
# no account. Installs
# what is missing first. Ctrl-C (or SIGTERM) stops everything cleanly.
#
#   ./scripts/run.sh
#
# Environment (all optional):
#   TANDEM_DATA_DIR        state and logs (default ./data); delete it to start over
#   TANDEM_CSP_PORT        chat server CSP port, loopback (default 5222)
#   TANDEM_HTTP_PORT       chat server directory HTTP port, loopback (default 8080)
#   TANDEM_MEDIATOR_PORT   mediator port, loopback (default 8787)
#   TANDEM_RUN_PROFILE     cargo profile of the chat server: release (default) or dev
#
# The line "tandem: ready" is printed once both servers answer; scripts may wait for it.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
data_dir="${TANDEM_DATA_DIR:-./data}"
csp_port="${TANDEM_CSP_PORT:-5222}"
http_port="${TANDEM_HTTP_PORT:-8080}"
mediator_port="${TANDEM_MEDIATOR_PORT:-8787}"
profile="${TANDEM_RUN_PROFILE:-release}"
server_group=01

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'tandem: %s\n' "$*" >&2; exit 1; }

case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) die "TANDEM_RUN_PROFILE must be release or dev, not '$profile'" ;;
esac
for port in "$csp_port" "$http_port" "$mediator_port"; do
  [[ "$port" =~ ^[0-9]+$ ]] || die "ports must be numbers, got '$port'"
done

mkdir -p "$data_dir/logs"
data_dir="$(cd "$data_dir" && pwd)"
logs="$data_dir/logs"

# 1. What a fresh machine lacks: rustup components and targets, the Worker toolchain.
"$repo/scripts/bootstrap.sh"
"$repo/scripts/install-worker-toolchain.sh" >/dev/null

# 2. The chat server binary.
say "building the chat server ($profile)"
(cd "$repo" && cargo build --locked --profile "$profile" -p tandem-chat-server)
target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
chat_server="$target_dir/$profile_dir/tandem-chat-server"
[ -x "$chat_server" ] || die "no chat server binary at $chat_server"

# 3. The web app (the browser client package + www/), served by the mediator Worker.
say "building the web app (browser client, wasm)"
"$repo/scripts/build-www.sh"

# Refuse to start on ports that are taken: a second copy would otherwise half-start.
port_free() {
  node -e 'const s=require("net").createServer();s.once("error",()=>process.exit(1));
           s.listen(+process.argv[1],"127.0.0.1",()=>s.close(()=>process.exit(0)))' "$1"
}
for port in "$csp_port" "$http_port" "$mediator_port"; do
  port_free "$port" || die "port $port on 127.0.0.1 is in use (another ./scripts/run.sh?); set TANDEM_*_PORT"
done

# Each server runs in its own process group (setsid), so stopping it also stops its children
# (wrangler's workerd).
chat_pid=""
mediator_pid=""
stop_group() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
stopping=0
shutdown() {
  [ "$stopping" = 1 ] && return
  stopping=1
  say "stopping"
  stop_group "$mediator_pid"
  stop_group "$chat_pid"
}
# A requested stop is a success.
trap 'shutdown; exit 0' INT TERM
trap 'shutdown' EXIT

log_tail() {
  echo "---- last lines of $1 ----" >&2
  tail -n 30 "$1" >&2 || true
}

# Waits until URL answers 200 (and prints the body), while the process group PID lives.
wait_http() {
  local url="$1" pid="$2" log="$3" seconds="$4" body
  for _ in $(seq 1 $((seconds * 4))); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail "$log"
      die "the process serving $url exited"
    fi
    if body="$(node -e 'fetch(process.argv[1]).then(async r=>{if(!r.ok)process.exit(1);
                 process.stdout.write(await r.text())}).catch(()=>process.exit(1))' "$url")"; then
      printf '%s' "$body"
      return 0
    fi
    sleep 0.25
  done
  log_tail "$log"
  die "$url did not answer within $seconds s"
}

# 4. The chat server.
say "starting the chat server (CSP 127.0.0.1:$csp_port, directory http://127.0.0.1:$http_port)"
setsid "$chat_server" \
  --csp-listen "127.0.0.1:$csp_port" \
  --http-listen "127.0.0.1:$http_port" \
  --data-dir "$data_dir/chat-server" \
  --server-group "$server_group" \
  --push-origin "http://127.0.0.1:$mediator_port" \
  >"$logs/chat-server.log" 2>&1 &
chat_pid=$!
server_info="$(wait_http "http://127.0.0.1:$http_port/server-info" "$chat_pid" "$logs/chat-server.log" 60)"

# 5. The mediator under wrangler dev (builds the Worker first; a cold build takes minutes).
say "building and starting the mediator (wrangler dev on 127.0.0.1:$mediator_port; log $logs/mediator.log)"
setsid "$repo/scripts/worker-dev.sh" "$mediator_port" "$data_dir/mediator" \
  --var "CHAT_SERVER_$server_group:127.0.0.1:$csp_port" \
  --var "DIRECTORY_URL:http://127.0.0.1:$http_port" \
  --var "TANDEM_PUBLIC_URL:http://127.0.0.1:$mediator_port" \
  >"$logs/mediator.log" 2>&1 &
mediator_pid=$!
# Through the Worker: proves routing and the directory forwarding to the chat server.
forwarded="$(wait_http "http://127.0.0.1:$mediator_port/directory/server-info" "$mediator_pid" "$logs/mediator.log" 1800)"
[ "$forwarded" = "$server_info" ] || die "the mediator's /directory/server-info ($forwarded) differs from the chat server's ($server_info)"

public_key="$(printf '%s' "$server_info" | node -e 'let s="";process.stdin.on("data",d=>s+=d)
  .on("end",()=>console.log(Buffer.from(JSON.parse(s).publicKey,"base64").toString("hex")))')"

cat <<EOF

Tandem is running (state in $data_dir; delete it to start over).

  web app      http://127.0.0.1:$mediator_port/   (?device=NAME: another device in the same browser)
  mediator     ws://127.0.0.1:$mediator_port/{first 8 hex of the group id}/{hex(ClientUrlInfo)}
               (server group $server_group; docs/worker.md)
  directory    http://127.0.0.1:$mediator_port/directory/   (forwarded to http://127.0.0.1:$http_port)
  chat server  127.0.0.1:$csp_port, public key $public_key
  logs         $logs/chat-server.log, $logs/mediator.log

Press Ctrl-C to stop.
tandem: ready
EOF

# 6. Run until a signal, or until one of the servers dies (then stop the other and fail).
while :; do
  if ! kill -0 "$chat_pid" 2>/dev/null; then
    log_tail "$logs/chat-server.log"
    die "the chat server exited"
  fi
  if ! kill -0 "$mediator_pid" 2>/dev/null; then
    log_tail "$logs/mediator.log"
    die "the mediator exited"
  fi
  sleep 1
done
