//! The native device harness: real devices (tokio + tokio-tungstenite over `shared`'s sans-IO
//! [`DeviceSession`](tandem_shared::device::DeviceSession)) against a real chat server process
//! and a real mediator (`wrangler dev`, or the in-process [`LocalMediator`]).
//!
//! - [`Device`]: one device connection; async commands and waits with timeouts that name what
//!   was awaited. [`RawSocket`] is the escape hatch for bytes no session would send.
//! - [`Identity`]: an identity created in the chat server's directory, its device group keys and
//!   device configurations.
//! - [`ChatServer`], [`WranglerDev`], [`LocalMediator`]: the processes and servers, each ended
//!   with everything it started when dropped.
//! - [`Fixture`]: a chat server plus a mediator, with logs in a scratch directory.
//! - [`Runner`]: named scenarios in sequence, timed, one failure not stopping the rest.
//! - [`AppDevice`]: the whole device core over a real WebSocket, with a store that survives a
//!   kill; [`FaultProxy`]: a misbehaving TCP path between the mediator and the chat server.
//!
//! How it fits together and how to run one scenario: `docs/testing.md`.

mod app_device;
mod balancer;
mod chat_server;
mod device;
mod error;
mod fault_proxy;
mod fixture;
mod http;
mod identity;
pub mod inspector;
mod local_mediator;
mod process;
mod raw;
mod runner;
mod worker;

pub use app_device::{unix_ms, AppDevice};
pub use balancer::Balancer;
pub use chat_server::{
    build_release_chat_server, use_release_chat_server, ChatServer, CHAT_SERVER_BIN_VAR,
    CHAT_SERVER_NODES_VAR,
};
pub use device::{Device, Received, TransactionStart, DEFAULT_WAIT};
pub use error::HarnessError;
pub use fault_proxy::{FaultProxy, ProxyMode};
pub use fixture::{Fixture, Mediator, Scratch, KEEP_SCRATCH_VAR};
pub use http::{http_request, HttpResponse};
pub use identity::{lookup_public_key, random_device_id, Identity};
pub use local_mediator::LocalMediator;
pub use process::Served;
pub use raw::RawSocket;
pub use runner::{Runner, ScenarioResult, SCENARIO_VAR};
pub use worker::{
    free_port, WranglerDev, FIRST_START_WAIT, INSPECTOR_PORT_VAR, READY_PROBE_PATH, RESTART_WAIT,
};

/// The repository's root (the scripts live under it).
#[must_use]
pub fn repo_root() -> std::path::PathBuf {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}
