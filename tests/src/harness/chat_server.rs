//! [`ChatServer`]: the real `tandem-chat-server` binary on free ports with a scratch data
//! directory (docs/chat-server.md "Running").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tandem_shared::crypto::PublicKey;

use super::error::HarnessError;
use super::process::Served;

/// Set to a built `tandem-chat-server` to skip the nested `cargo build`.
pub const CHAT_SERVER_BIN_VAR: &str = "TANDEM_CHAT_SERVER_BIN";

const START_WAIT: Duration = Duration::from_secs(60);

/// The chat server process and where it listens.
#[derive(Debug)]
pub struct ChatServer {
    process: Served,
    /// CSP over TCP (what the mediator connects to).
    pub csp_addr: SocketAddr,
    /// The directory over HTTP.
    pub http_addr: SocketAddr,
    /// `SK.public`, as printed on start.
    pub public_key: PublicKey,
}

impl ChatServer {
    /// Builds the binary if needed, starts it with its data in `dir/chat-data` and its output in
    /// `dir/chat-server.log`, and waits for its three start lines.
    pub async fn start(dir: &Path) -> Result<Self, HarnessError> {
        let binary = tokio::task::spawn_blocking(binary)
            .await
            .map_err(|err| HarnessError::process("cargo build", err.to_string()))??;
        let data_dir = dir.join("chat-data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|err| HarnessError::io(format!("create {}", data_dir.display()), err))?;
        let log = dir.join("chat-server.log");
        let mut cmd = Command::new(&binary);
        cmd.args([
            "--csp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "--data-dir",
        ])
        .arg(&data_dir);
        let mut process = Served::spawn("chat server", cmd, &log)?;
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
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
                return Ok(Self {
                    process,
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

    /// The directory's `host:port` for [`super::http_request`] and [`super::Identity::create`].
    #[must_use]
    pub fn directory(&self) -> String {
        self.http_addr.to_string()
    }

    /// Ends the process: SIGKILL with `crash`, else SIGTERM (then SIGKILL after a grace).
    pub fn stop(&mut self, crash: bool) {
        if crash {
            self.process.kill();
        } else {
            self.process.stop();
        }
    }

    /// The process (log, pid).
    #[must_use]
    pub const fn process(&self) -> &Served {
        &self.process
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
