//! [`Fixture`]: one chat server and one mediator (`wrangler dev` or in process) wired to it,
//! with their logs in a [`Scratch`] directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_shared::mediator::GroupConfig;

use super::chat_server::ChatServer;
use super::error::HarnessError;
use super::fault_proxy::FaultProxy;
use super::identity::Identity;
use super::local_mediator::LocalMediator;
use super::worker::WranglerDev;

/// Set (to anything) to keep the scratch directory of a passing run too.
pub const KEEP_SCRATCH_VAR: &str = "TANDEM_KEEP_SCRATCH";

/// A directory under the system's temp directory, removed on drop unless [`Scratch::keep`] was
/// called (a failed run keeps its logs) or [`KEEP_SCRATCH_VAR`] is set.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// Creates `tandem-<label>-<pid>-<ms>` in the temp directory.
    pub fn new(label: &str) -> Result<Self, HarnessError> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!("tandem-{label}-{}-{ms}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|err| HarnessError::io(format!("create {}", path.display()), err))?;
        let keep = std::env::var_os(KEEP_SCRATCH_VAR).is_some();
        Ok(Self { path, keep })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the directory in place.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The mediator a fixture serves.
#[derive(Debug)]
pub enum Mediator {
    /// The Worker under `wrangler dev`.
    Wrangler(WranglerDev),
    /// `shared`'s state machine in this process.
    Local(LocalMediator),
}

/// A chat server and a mediator that proxies to it.
#[derive(Debug)]
pub struct Fixture {
    /// The chat server.
    pub chat: ChatServer,
    /// The mediator.
    pub mediator: Mediator,
    /// Start and restart times, for the report.
    pub timings: Vec<(String, Duration)>,
    // Dropped last: the processes above still write into it until they are stopped.
    scratch: Scratch,
}

impl Fixture {
    /// Starts the chat server, then builds and starts the Worker under `wrangler dev` with
    /// `CHAT_SERVER_<server group>` and `DIRECTORY_URL` pointing at it, plus `extra_vars`.
    pub async fn with_wrangler(extra_vars: &[String]) -> Result<Self, HarnessError> {
        Self::wrangler_to(extra_vars, None).await
    }

    /// As [`Self::with_wrangler`], with the mediator's chat server connections going through
    /// a [`FaultProxy`] (returned, and told where the chat server is).
    pub async fn with_wrangler_behind_proxy(
        extra_vars: &[String],
    ) -> Result<(Self, FaultProxy), HarnessError> {
        // The proxy needs a target before the chat server runs; it gets the real one below.
        let proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 9))).await?;
        let fx = Self::wrangler_to(extra_vars, Some(&proxy)).await?;
        Ok((fx, proxy))
    }

    async fn wrangler_to(
        extra_vars: &[String],
        proxy: Option<&FaultProxy>,
    ) -> Result<Self, HarnessError> {
        let scratch = Scratch::new("mediator-it")?;
        let mut timings = Vec::new();
        let started = Instant::now();
        let chat = ChatServer::start(scratch.path()).await?;
        timings.push((
            "chat server start (incl. cargo build)".into(),
            started.elapsed(),
        ));
        let server_group = server_group(&chat).await?;
        let csp_addr = match proxy {
            Some(proxy) => {
                proxy.retarget(chat.csp_addr);
                proxy.addr
            }
            None => chat.csp_addr,
        };
        let mut vars = vec![
            format!("CHAT_SERVER_{server_group}:{csp_addr}"),
            format!("DIRECTORY_URL:http://{}", chat.http_addr),
        ];
        vars.extend_from_slice(extra_vars);
        let (dev, took) =
            WranglerDev::start(&scratch.path().join("worker-state"), scratch.path(), vars).await?;
        timings.push(("wrangler dev first start (incl. worker-build)".into(), took));
        Ok(Self {
            chat,
            mediator: Mediator::Wrangler(dev),
            timings,
            scratch,
        })
    }

    /// Starts the chat server and the in-process mediator with `config`.
    pub async fn with_local_mediator(config: GroupConfig) -> Result<Self, HarnessError> {
        let scratch = Scratch::new("local-mediator-it")?;
        let started = Instant::now();
        let chat = ChatServer::start(scratch.path()).await?;
        let mut timings = vec![("chat server start".to_owned(), started.elapsed())];
        let server_group = server_group(&chat).await?;
        let started = Instant::now();
        let local =
            LocalMediator::start(config, HashMap::from([(server_group, chat.csp_addr)])).await?;
        timings.push(("local mediator start".into(), started.elapsed()));
        Ok(Self {
            chat,
            mediator: Mediator::Local(local),
            timings,
            scratch,
        })
    }

    /// `ws://host:port` of the mediator.
    #[must_use]
    pub fn ws_base(&self) -> String {
        match &self.mediator {
            Mediator::Wrangler(dev) => dev.ws_base(),
            Mediator::Local(local) => local.ws_base(),
        }
    }

    /// Which mediator this is, for messages.
    #[must_use]
    pub const fn mediator_kind(&self) -> &'static str {
        match self.mediator {
            Mediator::Wrangler(_) => "wrangler dev",
            Mediator::Local(_) => "local mediator",
        }
    }

    /// A fresh identity (so a fresh device group) in the chat server's directory.
    pub async fn identity(&self) -> Result<Identity, HarnessError> {
        Identity::create(&self.chat.directory()).await
    }

    /// The development stats of `id`'s group object (`/_dev/group/{hex(DGPK.public)}`, which
    /// constructs the object if it hibernates) as JSON; `None` for the in-process mediator.
    pub async fn group_stats(
        &self,
        id: &Identity,
    ) -> Result<Option<serde_json::Value>, HarnessError> {
        if !matches!(self.mediator, Mediator::Wrangler(_)) {
            return Ok(None);
        }
        let path = format!("/_dev/group/{}", hex::encode(id.keys.dgpk_public.0));
        let addr = self.ws_base().trim_start_matches("ws://").to_owned();
        let stats = super::http_request(&addr, "GET", &path, None, Duration::from_secs(30)).await?;
        let body = &stats.body;
        let json = body
            .find('{')
            .and_then(|start| body.rfind('}').and_then(|end| body.get(start..=end)))
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| HarnessError::Http {
                request: format!("GET {path}"),
                detail: format!("not JSON: {body}"),
            })?;
        Ok(Some(json))
    }

    /// Restarts the mediator on the same storage and port; every connection drops. `crash`:
    /// SIGKILL instead of SIGTERM (the in-process mediator drops everything either way).
    pub async fn restart_mediator(&mut self, crash: bool) -> Result<Duration, HarnessError> {
        let started = Instant::now();
        let took = match &mut self.mediator {
            Mediator::Wrangler(dev) if crash => dev.crash_and_restart().await?,
            Mediator::Wrangler(dev) => dev.restart().await?,
            Mediator::Local(local) => {
                local.restart().await?;
                started.elapsed()
            }
        };
        let what = if crash {
            "mediator crash + restart"
        } else {
            "mediator restart"
        };
        self.timings.push((what.into(), took));
        Ok(took)
    }

    /// Stops the chat server (SIGKILL with `crash`, else SIGTERM) and starts it again on the
    /// same data directory; it listens on new ports (a [`FaultProxy`] in front is retargeted by
    /// the caller). Returns the time until it answered.
    pub async fn restart_chat_server(&mut self, crash: bool) -> Result<Duration, HarnessError> {
        let started = Instant::now();
        self.chat.stop(crash);
        // The new process's start lines are read from the top of a fresh log.
        let log = self.chat.process().log_path().to_path_buf();
        let mut old = log.clone();
        old.set_extension(format!("log.{}", unix_ms_now()));
        std::fs::rename(&log, &old)
            .map_err(|err| HarnessError::io(format!("move {}", log.display()), err))?;
        self.chat = ChatServer::start(self.scratch.path()).await?;
        Ok(started.elapsed())
    }

    /// The scratch directory (logs, chat server data, Worker state).
    #[must_use]
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Keep the scratch directory after the fixture is gone.
    pub fn keep_scratch(&mut self) {
        self.scratch.keep();
    }

    /// Log lines showing a crash inside the mediator (none for the in-process one, whose
    /// panics fail the test directly).
    #[must_use]
    pub fn mediator_crash_lines(&self) -> Vec<String> {
        match &self.mediator {
            Mediator::Wrangler(dev) => dev.crash_lines(),
            Mediator::Local(_) => Vec::new(),
        }
    }

    /// [`Self::mediator_crash_lines`] without workerd's "Uncaught Error: Network connection
    /// lost." after a client closed a Worker's WebSocket cleanly (its bookkeeping, not a crash:
    /// docs/testing.md), whose count is printed.
    pub fn mediator_crashes(&self) -> Vec<String> {
        const CONNECTION_LOST: &str = "Network connection lost.";
        let (lost, crashes): (Vec<String>, Vec<String>) = self
            .mediator_crash_lines()
            .into_iter()
            .partition(|line| line.contains(CONNECTION_LOST) && !line.contains("panicked at"));
        if !lost.is_empty() {
            eprintln!(
                "note: wrangler dev logged {} × \"Uncaught Error: {CONNECTION_LOST}\"",
                lost.len()
            );
        }
        crashes
    }

    /// The tails of every log, for a failure report.
    #[must_use]
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for process in self.chat.processes() {
            out.push_str(&format!(
                "--- chat server ({}) ---\n{}\n",
                process.log_path().display(),
                process.log_tail(lines)
            ));
        }
        if let Mediator::Wrangler(dev) = &self.mediator {
            out.push_str(&format!("--- wrangler dev ---\n{}\n", dev.log_tail(lines)));
        }
        out
    }
}

async fn server_group(chat: &ChatServer) -> Result<String, HarnessError> {
    let response = super::http::http_request(
        &chat.directory(),
        "GET",
        "/server-info",
        None,
        Duration::from_secs(30),
    )
    .await?;
    let json = response.json("GET /server-info")?;
    json.get("serverGroup")
        .and_then(|g| g.as_str())
        .map(str::to_owned)
        .ok_or_else(|| HarnessError::Http {
            request: "GET /server-info".into(),
            detail: format!("no serverGroup in {json}"),
        })
}

fn unix_ms_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}
