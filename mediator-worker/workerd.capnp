# Self-hosting the mediator with plain workerd (DESIGN.md §2.7), no wrangler:
#
#   scripts/install-worker-toolchain.sh          # once
#   (cd mediator-worker && worker-build --release)   # with the env of scripts/worker-env.sh
#   CHAT_SERVER_01=127.0.0.1:5222 DIRECTORY_URL=http://127.0.0.1:8080 \
#   workerd serve mediator-worker/workerd.capnp \
#     --directory-path do-storage=/var/lib/tandem-mediator \
#     --socket-addr http=127.0.0.1:8787
#
# `workerd` is the binary inside the wrangler npm package
# (mediator-worker/node_modules/workerd/bin/workerd); the same version wrangler dev runs.
# Paths in `embed` are relative to this file. Durable Object SQLite files live under the
# directory given for `do-storage`. docs/worker.md explains each setting.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .mediator),
    # Where the Durable Objects keep their SQLite databases; set with --directory-path.
    (name = "do-storage", disk = (writable = true)),
    # Outbound fetch() and connect(): the chat server and its directory. "private" admits
    # loopback and RFC 1918 addresses, for a chat server on the same host or network.
    (name = "internet", network = (allow = ["public", "private"])),
  ],
  sockets = [
    (name = "http", address = "127.0.0.1:8787", http = (), service = "main"),
  ],
);

const mediator :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "build/index.js"),
    (name = "index_bg.wasm", wasm = embed "build/index_bg.wasm"),
  ],
  # Same date as wrangler.toml.
  compatibilityDate = "2026-04-20",
  bindings = [
    (name = "DEVICE_GROUP", durableObjectNamespace = "DeviceGroup"),
    (name = "BENCH_RELAY", durableObjectNamespace = "BenchRelay"),
    # Read from workerd's environment at start, like wrangler.toml's [vars]; an unset one is
    # absent (an unknown server group then fails its first proxy container with 4001).
    # Add one CHAT_SERVER_<group> line per server group.
    (name = "CHAT_SERVER_01", fromEnvironment = "CHAT_SERVER_01"),
    (name = "DIRECTORY_URL", fromEnvironment = "DIRECTORY_URL"),
    (name = "TANDEM_DEV_ROUTES", fromEnvironment = "TANDEM_DEV_ROUTES"),
    # Origins (comma-separated) whose pages may use /directory from a browser (docs/client.md).
    (name = "TANDEM_DIRECTORY_ORIGINS", fromEnvironment = "TANDEM_DIRECTORY_ORIGINS"),
  ],
  durableObjectNamespaces = [
    # uniqueKey names the namespace on disk: changing it orphans the stored groups.
    (className = "DeviceGroup", uniqueKey = "tandem-mediator-DeviceGroup", enableSql = true),
    (className = "BenchRelay", uniqueKey = "tandem-mediator-BenchRelay", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "do-storage"),
  globalOutbound = "internet",
);
