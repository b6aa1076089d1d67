//! Limits of one device group (DESIGN §3); every default is argued in `docs/mediator.md`.

/// Tunables of a [`super::Group`]. Build with `GroupConfig::default()` and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupConfig {
    /// Slots per group, sent in `ServerInfo` (DESIGN §3: default 8).
    pub max_device_slots: u32,
    /// How long a VOLATILE slot outlives its last disconnect (DESIGN §3: default 5 min).
    pub volatile_grace_ms: u64,
    /// Entries a slot's reflection queue may hold; one more drops the slot with 4114.
    pub max_queue_len: u64,
    /// Upper bound for a transaction's TTL, and the TTL when the device asks for 0 (spec §6).
    pub max_transaction_ttl_s: u32,
    /// Proxy containers held before the handshake completes (spec §3.1); one more is 4010.
    pub max_pre_auth_proxy_frames: usize,
    /// Proxy payload bytes held before the handshake completes; more is 4010.
    pub max_pre_auth_proxy_bytes: usize,
    /// `Reflected` frames sent to a connection and not yet acked; the next one waits for an ack,
    /// which bounds memory when a long queue drains (0 counts as 1).
    pub max_in_flight: usize,
    /// Ephemeral frames held for a connection that is still behind on its queue; older ones are
    /// dropped (ephemeral delivery is best effort, spec §5).
    pub max_pending_ephemeral: usize,
    /// Time from `ServerHello` to a valid `ClientHello`; after it the connection is closed with
    /// 4013.
    pub handshake_timeout_ms: u64,
    /// When a store call fails while expiring a slot, the next attempt waits this long.
    pub store_retry_ms: u64,
    /// Chat server connections open at once per group (Cloudflare allows 6 simultaneous
    /// outbound connections; a group has up to 8 devices). A device whose first proxy frame
    /// finds them all taken waits for one to close (docs/mediator.md "Chat server sockets").
    pub max_csp_connections: usize,
    /// How long a device may wait for a chat server connection; then it is closed with 4001.
    pub csp_wait_timeout_ms: u64,
    /// Connections of the group in their handshake (no valid `ClientHello` yet) at once; one
    /// more is closed at once with 1013. Each costs memory and, until its timeout, a socket: a
    /// client that opens them in a loop is bounded here, not by the handshake timeout.
    pub max_handshakes: usize,
    /// Bytes sent to an authenticated connection since its last frame; one more frame closes it
    /// with 4009 ("device not reading"). A Durable Object's `send` has no backpressure and no
    /// `bufferedAmount`, so what a device does not read piles up in the runtime's memory,
    /// shared by every object of the isolate. Every device that receives much also sends (acks
    /// of reflections and of chat server messages), so only a device that stopped reading, or a
    /// silent one flooded with ephemeral frames, reaches it.
    pub max_unanswered_bytes: usize,
    /// The URL devices that speak CSP on demand register at the chat server as their push token
    /// (docs/protocol.md "CSP on demand"), sent in `PushUrl` after `ServerInfo`; `None` when the
    /// deployment has no push key (devices then keep their chat server connection open).
    pub push_url: Option<String>,
    /// While the leader's chat server connection is closed, it is woken this often even without
    /// a push (a lost push costs at most this long).
    pub wake_poll_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            max_device_slots: 8,
            volatile_grace_ms: 5 * 60 * 1000,
            max_queue_len: 10_000,
            max_transaction_ttl_s: 120,
            max_pre_auth_proxy_frames: 4,
            max_pre_auth_proxy_bytes: 16 * 1024,
            max_in_flight: 64,
            max_pending_ephemeral: 64,
            handshake_timeout_ms: 30_000,
            store_retry_ms: 1_000,
            max_csp_connections: 6,
            csp_wait_timeout_ms: 15_000,
            max_handshakes: 16,
            max_unanswered_bytes: 8 * 1024 * 1024,
            push_url: None,
            wake_poll_ms: 30 * 60 * 1000,
        }
    }
}
