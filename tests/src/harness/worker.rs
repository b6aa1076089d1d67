//! [`WranglerDev`]: the mediator Worker under `wrangler dev` through `scripts/worker-dev.sh`
//! (docs/worker.md), restartable on the same Durable Object storage.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::HarnessError;
use super::http::http_request;
use super::process::Served;

/// `scripts/worker-dev.sh` exits with this when the Worker toolchain is missing.
const EXIT_TOOLCHAIN_MISSING: i32 = 3;

/// `scripts/worker-dev.sh` passes it to `--inspector-port`; set, the harness uses it (to attach
/// `mediator-worker/tools/*.mjs` at a known port), else it picks a free port.
pub const INSPECTOR_PORT_VAR: &str = "TANDEM_INSPECTOR_PORT";

/// A cold first start compiles the Worker for wasm32 (up to 20 min on a 2-core machine).
pub const FIRST_START_WAIT: Duration = Duration::from_secs(20 * 60);

/// A restart serves the existing build.
pub const RESTART_WAIT: Duration = Duration::from_secs(5 * 60);

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, HarnessError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| HarnessError::io("bind an ephemeral port", err))
}

/// `wrangler dev` serving the mediator on one port, its Durable Objects' SQLite in one state
/// directory.
#[derive(Debug)]
pub struct WranglerDev {
    process: Option<Served>,
    port: u16,
    /// wrangler's inspector proxy (the isolate's V8 inspector), fixed across restarts.
    inspector_port: u16,
    state_dir: PathBuf,
    log_dir: PathBuf,
    vars: Vec<String>,
    starts: u32,
}

impl WranglerDev {
    /// Builds the Worker (`worker-build --release`) and serves it with `--var` for each of
    /// `vars` (`NAME:value`); returns once it answers HTTP, with the time that took.
    pub async fn start(
        state_dir: &Path,
        log_dir: &Path,
        vars: Vec<String>,
    ) -> Result<(Self, Duration), HarnessError> {
        let mut dev = Self {
            process: None,
            port: free_port()?,
            inspector_port: match std::env::var(INSPECTOR_PORT_VAR)
                .ok()
                .and_then(|port| port.parse().ok())
            {
                Some(port) => port,
                None => free_port()?,
            },
            state_dir: state_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            vars,
            starts: 0,
        };
        let took = dev.launch(true, FIRST_START_WAIT).await?;
        Ok((dev, took))
    }

    /// Stops `wrangler dev` (SIGTERM to its group) and serves the same build on the same port
    /// and state again; returns the time until it answered.
    pub async fn restart(&mut self) -> Result<Duration, HarnessError> {
        self.stop();
        self.launch(false, RESTART_WAIT).await
    }

    /// SIGKILL to wrangler and workerd at once (a crash), then the same build on the same port
    /// and state again; returns the time until it answered.
    pub async fn crash_and_restart(&mut self) -> Result<Duration, HarnessError> {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.launch(false, RESTART_WAIT).await
    }

    /// Ends `wrangler dev` and workerd (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// `ws://127.0.0.1:PORT`, the base of every mediator URL.
    #[must_use]
    pub fn ws_base(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT` for HTTP requests.
    #[must_use]
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port of wrangler's inspector proxy: the Worker isolate's V8 inspector
    /// ([`super::inspector`]).
    #[must_use]
    pub const fn inspector_port(&self) -> u16 {
        self.inspector_port
    }

    /// The process group of the running `wrangler dev` (node and workerd), for CPU accounting.
    #[must_use]
    pub fn process_group(&self) -> Option<u32> {
        self.process.as_ref().map(Served::pid)
    }

    /// The last `lines` lines of the current (or last) log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.log_path(), lines)
    }

    /// Lines of every log so far that show a crash inside the Worker: a Rust panic or an
    /// uncaught JavaScript exception (a wasm trap included).
    #[must_use]
    pub fn crash_lines(&self) -> Vec<String> {
        (1..=self.starts)
            .map(|n| self.log_dir.join(format!("wrangler-{n}.log")))
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|text| {
                text.lines()
                    .filter(|line| line.contains("panicked at") || line.contains("Uncaught"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("wrangler-{}.log", self.starts.max(1)))
    }

    async fn launch(&mut self, build: bool, within: Duration) -> Result<Duration, HarnessError> {
        self.starts += 1;
        let script = super::repo_root().join("scripts/worker-dev.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .arg(self.port.to_string())
            .arg(&self.state_dir);
        for var in &self.vars {
            cmd.arg("--var").arg(var);
        }
        cmd.env(INSPECTOR_PORT_VAR, self.inspector_port.to_string());
        if !build {
            cmd.env("TANDEM_WORKER_SKIP_BUILD", "1");
        }
        let log = self.log_path();
        let process = Served::spawn("wrangler dev", cmd, &log)?;
        let process = self.process.insert(process);
        let started = Instant::now();
        loop {
            if let Some(status) = process.exited() {
                let hint = if status.code() == Some(EXIT_TOOLCHAIN_MISSING) {
                    "the Worker toolchain is not installed: run scripts/install-worker-toolchain.sh \
                     (scripts/test.sh does)"
                } else {
                    "exited"
                };
                return Err(HarnessError::process(
                    "wrangler dev",
                    format!("{hint} ({status}):\n{}", process.log_tail(40)),
                ));
            }
            let probe = http_request(
                &format!("127.0.0.1:{}", self.port),
                "GET",
                READY_PROBE_PATH,
                None,
                Duration::from_secs(2),
            )
            .await;
            if probe.is_ok_and(|response| response.status == 404) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(HarnessError::process(
                    "wrangler dev",
                    format!("no answer within {within:?}:\n{}", process.log_tail(40)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A path that is neither a web app file (those are answered without the Worker) nor a Worker
/// route: the Worker's own 404 for it means the Worker is loaded.
pub const READY_PROBE_PATH: &str = "/_tandem/ready-probe";

impl Drop for WranglerDev {
    fn drop(&mut self) {
        self.stop();
    }
}
