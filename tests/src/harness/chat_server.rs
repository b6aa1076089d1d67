//! [`ChatServer`]: the real `tandem-chat-server` binary on free ports with a scratch data
//! directory (docs/chat-server.md "Running"); with `TANDEM_CHAT_SERVER_NODES=N` (N ≥ 2), N nodes
//! of one server group on one PostgreSQL database (a real server started by the harness) behind
//! a round-robin [`Balancer`] for CSP and one for the directory, so that every test runs
//! unchanged against several nodes (docs/chat-server.md "Several nodes").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tandem_shared::crypto::PublicKey;

use super::balancer::Balancer;
use super::error::HarnessError;
use super::process::Served;

#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    unreachable_pub,
    missing_debug_implementations
)]
#[path = "../../../chat-server/tests/support/pg.rs"]
mod pg;

/// Set to a built `tandem-chat-server` to skip the nested `cargo build`.
pub const CHAT_SERVER_BIN_VAR: &str = "TANDEM_CHAT_SERVER_BIN";
/// Set to a number ≥ 2 to run that many chat-server nodes on PostgreSQL behind one address.
pub const CHAT_SERVER_NODES_VAR: &str = "TANDEM_CHAT_SERVER_NODES";

const START_WAIT: Duration = Duration::from_secs(60);

/// The chat server process and where it listens.
#[derive(Debug)]
pub struct ChatServer {
    process: Served,
    /// Nodes after the first (several nodes only).
    others: Vec<Served>,
    /// The CSP and directory balancers in front of the nodes (several nodes only).
    _balancers: Vec<Balancer>,
    /// CSP over TCP (what the mediator connects to).
    pub csp_addr: SocketAddr,
    /// The directory over HTTP.
    pub http_addr: SocketAddr,
    /// `SK.public`, as printed on start.
    pub public_key: PublicKey,
}

impl ChatServer {
    /// Builds the binary if needed, starts it with its data in `dir/chat-data` and its output in
    /// `dir/chat-server.log`, and waits for its three start lines. With
    /// [`CHAT_SERVER_NODES_VAR`] set, node `i > 0` uses `dir/chat-data-i` (with the first node's
    /// server key) and `dir/chat-server-i.log`, all on the PostgreSQL database of `dir`.
    pub async fn start(dir: &Path) -> Result<Self, HarnessError> {
        let binary = tokio::task::spawn_blocking(binary)
            .await
            .map_err(|err| HarnessError::process("cargo build", err.to_string()))??;
        let nodes = std::env::var(CHAT_SERVER_NODES_VAR)
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let database = if nodes > 1 {
            let dir = dir.to_path_buf();
            Some(
                tokio::task::spawn_blocking(move || {
                    let server = pg::shared();
                    let name = pg::database_for(&dir);
                    server.ensure_database(&name);
                    server.url(&name)
                })
                .await
                .map_err(|err| HarnessError::process("postgres", err.to_string()))?,
            )
        } else {
            None
        };
        let mut started = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("-{i}")
            };
            let data_dir = dir.join(format!("chat-data{suffix}"));
            std::fs::create_dir_all(&data_dir)
                .map_err(|err| HarnessError::io(format!("create {}", data_dir.display()), err))?;
            if i > 0 {
                // Every node of a server group reads the same server key.
                let key = dir.join("chat-data").join("server.key");
                std::fs::copy(&key, data_dir.join("server.key"))
                    .map_err(|err| HarnessError::io(format!("copy {}", key.display()), err))?;
            }
            let log = dir.join(format!("chat-server{suffix}.log"));
            if i > 0 && log.exists() {
                // A restart: the start lines are read from the top of a fresh log.
                let mut old = log.clone();
                old.set_extension(format!("log.{}", super::unix_ms()));
                std::fs::rename(&log, &old)
                    .map_err(|err| HarnessError::io(format!("move {}", log.display()), err))?;
            }
            let mut cmd = Command::new(&binary);
            cmd.args([
                "--csp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--log-level",
                "info",
                // The mediator under test (Worker or in process) listens on this host: the
                // server may POST to its push URLs (docs/chat-server.md "Push").
                "--push-origin",
                "http://127.0.0.1",
                "--data-dir",
            ])
            .arg(&data_dir);
            if let Some(url) = &database {
                cmd.args(["--database", url]);
            }
            let process = Served::spawn("chat server", cmd, &log)?;
            started.push(wait_for_start(process, &log).await?);
        }
        let mut started = started.into_iter();
        let Some(first) = started.next() else {
            return Err(HarnessError::process("chat server", "no node"));
        };
        let others: Vec<Self> = started.collect();
        if others.is_empty() {
            return Ok(first);
        }
        let csp = Balancer::start(
            std::iter::once(first.csp_addr)
                .chain(others.iter().map(|n| n.csp_addr))
                .collect(),
        )
        .await?;
        let http = Balancer::start(
            std::iter::once(first.http_addr)
                .chain(others.iter().map(|n| n.http_addr))
                .collect(),
        )
        .await?;
        Ok(Self {
            csp_addr: csp.addr,
            http_addr: http.addr,
            public_key: first.public_key,
            process: first.process,
            others: others.into_iter().map(|n| n.process).collect(),
            _balancers: vec![csp, http],
        })
    }

    /// The directory's `host:port` for [`super::http_request`] and [`super::Identity::create`].
    #[must_use]
    pub fn directory(&self) -> String {
        self.http_addr.to_string()
    }

    /// Ends the processes: SIGKILL with `crash`, else SIGTERM (then SIGKILL after a grace).
    pub fn stop(&mut self, crash: bool) {
        for process in std::iter::once(&mut self.process).chain(self.others.iter_mut()) {
            if crash {
                process.kill();
            } else {
                process.stop();
            }
        }
    }

    /// The (first node's) process (log, pid).
    #[must_use]
    pub const fn process(&self) -> &Served {
        &self.process
    }

    /// Every node's process.
    pub fn processes(&self) -> impl Iterator<Item = &Served> {
        std::iter::once(&self.process).chain(self.others.iter())
    }
}

/// Waits for a node's three start lines in its log.
async fn wait_for_start(mut process: Served, log: &Path) -> Result<ChatServer, HarnessError> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let field = |prefix: &str| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix(prefix).map(str::to_owned))
        };
        if let (Some(key), Some(csp), Some(http)) = (
            field("server public key: "),
            field("csp listening on "),
            field("http listening on "),
        ) {
            let parsed = (
                hex::decode(&key)
                    .ok()
                    .and_then(|k| PublicKey::from_slice(&k)),
                csp.parse().ok(),
                http.parse().ok(),
            );
            let (Some(public_key), Some(csp_addr), Some(http_addr)) = parsed else {
                return Err(HarnessError::process(
                    "chat server",
                    format!("unreadable start lines:\n{}", process.log_tail(20)),
                ));
            };
            return Ok(ChatServer {
                process,
                others: Vec::new(),
                _balancers: Vec::new(),
                csp_addr,
                http_addr,
                public_key,
            });
        }
        if let Some(status) = process.exited() {
            return Err(HarnessError::process(
                "chat server",
                format!("exited with {status}:\n{}", process.log_tail(20)),
            ));
        }
        if started.elapsed() > START_WAIT {
            return Err(HarnessError::process(
                "chat server",
                format!(
                    "no start lines within {START_WAIT:?}:\n{}",
                    process.log_tail(20)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `tandem-chat-server` binary: [`CHAT_SERVER_BIN_VAR`], else a nested
/// `cargo build -p tandem-chat-server --locked` (once per process). A nested cargo inside
/// `cargo test` does not deadlock: the outer cargo holds no target directory lock while tests
/// run.
fn binary() -> Result<PathBuf, HarnessError> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| match std::env::var_os(CHAT_SERVER_BIN_VAR) {
            Some(path) => Ok(PathBuf::from(path)),
            None => build(false),
        })
        .clone()
        .map_err(|detail| HarnessError::process("cargo build -p tandem-chat-server", detail))
}

/// Points [`CHAT_SERVER_BIN_VAR`] at a release build unless it is set: benchmarks measure the
/// optimised server, as deployed. Call it before any other thread runs (it sets the variable).
pub async fn use_release_chat_server() -> Result<(), HarnessError> {
    if std::env::var_os(CHAT_SERVER_BIN_VAR).is_none() {
        let bin = tokio::task::spawn_blocking(build_release_chat_server)
            .await
            .map_err(|err| HarnessError::process("cargo build --release", err.to_string()))??;
        std::env::set_var(CHAT_SERVER_BIN_VAR, bin);
    }
    Ok(())
}

/// Builds `tandem-chat-server` with the release profile (a nested `cargo build --release`) and
/// returns its path: benchmarks measure the optimised server, as deployed.
pub fn build_release_chat_server() -> Result<PathBuf, HarnessError> {
    build(true).map_err(|detail| {
        HarnessError::process("cargo build --release -p tandem-chat-server", detail)
    })
}

fn build(release: bool) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let root = super::repo_root();
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    let output = Command::new(cargo)
        .arg("build")
        .args(profile)
        .args([
            "-p",
            "tandem-chat-server",
            "--bin",
            "tandem-chat-server",
            "--locked",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|err| format!("run cargo: {err}"))?;
    if !output.status.success() {
        return Err(format!("cargo build failed with {}", output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| {
            msg.get("reason").and_then(|r| r.as_str()) == Some("compiler-artifact")
                && msg.pointer("/target/name").and_then(|n| n.as_str())
                    == Some("tandem-chat-server")
        })
        .find_map(|msg| {
            msg.get("executable")
                .and_then(|e| e.as_str())
                .map(PathBuf::from)
        })
        .ok_or_else(|| "cargo reported no tandem-chat-server executable".to_owned())
}
