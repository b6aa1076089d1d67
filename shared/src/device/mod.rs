//! The device's side of the mediator connection (DESIGN §5, spec §3–§7, §9.1), sans-IO in the
//! quinn-proto way: the driver feeds WebSocket messages, close codes and time into a
//! [`DeviceSession`], writes what [`DeviceSession::poll_transmit`] returns as binary messages,
//! and hands [`DeviceSession::poll_event`]s to the app.
//!
//! One connection's life:
//!
//! ```text
//!  new ──(CSP configured: client-hello queued in a proxy container, spec §3.1)──┐
//!      ▼                                                                        │
//!  AwaitingServerHello ── ServerHello ok ──► ClientHello{response, device info} │
//!      ▼                                                                        │
//!  AwaitingServerInfo ── ServerInfo (anything else ──► 4010) ──► event ServerInfo
//!      ▼
//!  Draining ── Reflected ──► event Reflected | DroppedReflected (auto-acked), QueueProgress
//!      │     ── RolePromotedToLeader ──► 4010 (before QueueDry)
//!      ▼ ReflectionQueueDry ──► event QueueDry
//!  Online ── RolePromotedToLeader ──► event PromotedToLeader
//!
//!  from ServerInfo on: reflect / ReflectAck (in order, else 4010), ack_reflected,
//!  transactions, devices info, drop device, shared device data; proxy frames feed the CSP client
//!  at any time before Closed.
//!  any protocol error ──► Closed (local close code: 4010, 4009 for CSP, 4013 for the timeout)
//!  on_close(code)     ──► Closed (event Closed with the reconnect class)
//! ```

mod config;
mod event;
mod reflect;
mod session;
mod transaction;

pub use config::{DeviceConfig, DEFAULT_HANDSHAKE_TIMEOUT_MS};
pub use event::{
    CloseOrigin, ConnectionState, CspPayload, DeviceEntry, DeviceError, Event, ReflectedEnvelope,
    ServerInfo,
};
pub use session::DeviceSession;
