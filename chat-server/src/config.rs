//! Command line and configuration (see `docs/chat-server.md` for every default and why).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How hard SQLite syncs each commit of a batch (WAL mode in both cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// `synchronous=FULL`: the WAL is fsynced at every commit; acked messages survive power loss.
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced only at checkpoints; acked messages survive a
    /// process kill, not a power loss.
    Normal,
}

impl SyncMode {
    /// The value of SQLite's `synchronous` pragma.
    #[must_use]
    pub const fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// The chat server: CSP over TCP, durable queues in SQLite, the identity directory over HTTP.
#[derive(Debug, Clone, Parser)]
#[command(name = "tandem-chat-server", version)]
pub struct Config {
    /// Address for CSP connections (the mediator opens one per device).
    #[arg(long, default_value = "127.0.0.1:5222")]
    pub csp_listen: SocketAddr,
    /// Address for the directory's HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Folder for the server key and the SQLite database; created if missing.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive list).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Keep identities, tokens and queues in this PostgreSQL database instead of SQLite, so
    /// that several nodes serve one server group (`postgres://user@host1,host2/db?\
    /// target_session_attrs=read-write`: a host list finds the primary after a failover).
    /// The server key stays in `--data-dir`.
    #[arg(long)]
    pub database: Option<String>,
    /// With `--database`: how often each node re-reads the queues of its receiving sessions,
    /// so that a lost cross-node hint costs at most this much latency.
    #[arg(long, default_value_t = 2_000)]
    pub sweep_interval_ms: u64,
    /// With `--database`: tell other nodes of new messages and demotions at once (`LISTEN` /
    /// `NOTIFY`). `false` leaves it to the sweep alone, for a PostgreSQL path that cannot
    /// `LISTEN` (a pooler in transaction mode); messages then wait up to one sweep interval.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cross_node_hints: bool,
    /// With `--database`: storage threads, each with its own connection and its own share of
    /// the receivers (a PostgreSQL backend runs one batch on one core).
    #[arg(long, default_value_t = 2)]
    pub storage_connections: usize,
    /// SQLite `synchronous` setting for the message queues.
    #[arg(long, value_enum, default_value = "full")]
    pub sync: SyncMode,
    /// Server group announced by the directory (`^[0-9a-zA-Z]+$`, DESIGN §2.5).
    #[arg(long, default_value = "01", value_parser = parse_server_group)]
    pub server_group: String,
    /// Origin allowed to call the directory from a browser; repeatable; `*` allows any.
    /// None given: no CORS headers.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// Origins the server may POST push requests to (repeatable; `https://mediator.example.org`,
    /// or `http://127.0.0.1` for any port of that host). Devices register the URL that wakes
    /// their device group (docs/chat-server.md "Push"); a URL under no listed origin is ignored,
    /// and without any the server pushes nothing.
    #[arg(long = "push-origin")]
    pub push_origins: Vec<String>,
    /// A text sent as an alert (payload 0xe1) to every session right after login.
    #[arg(long)]
    pub alert: Option<String>,
    /// Most messages one identity's queue may hold; further messages are not stored nor acked.
    #[arg(long, default_value_t = 100_000)]
    pub max_queue: u32,
    /// Most CSP connections at once; further ones are closed at accept.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,
    /// Seconds a connection may take from accept to login-ack.
    #[arg(long, default_value_t = 30)]
    pub handshake_timeout_s: u64,
    /// Idle timeout in seconds until the client sets its own (spec §9.4 default 300).
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_s: u64,
    /// Seconds a short-lived message (flag 0x20) stays queued (spec §9.5: 60).
    #[arg(long, default_value_t = 60)]
    pub short_lived_ttl_s: u64,
    /// Seconds a duplicate (sender, receiver, message id) is still recognised after its ack.
    #[arg(long, default_value_t = 86_400)]
    pub dedupe_window_s: u64,
}

fn parse_server_group(value: &str) -> Result<String, String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(value.to_owned())
    } else {
        Err("server group must match ^[0-9a-zA-Z]+$".to_owned())
    }
}

impl Config {
    /// The handshake deadline.
    #[must_use]
    pub const fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_s)
    }
}
