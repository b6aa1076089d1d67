//! Small types every part of the server shares.

use core::fmt;
use std::sync::Arc;

use tandem_shared::csp::MessageFlags;
use tandem_shared::keys::IDENTITY_LEN;

/// An identity: 8 ASCII characters.
pub type Identity = [u8; IDENTITY_LEN];

/// An identity for logs: the characters, never anything else about the account.
#[derive(Clone, Copy)]
pub struct Id<'a>(pub &'a Identity);

impl fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0))
    }
}

impl fmt::Debug for Id<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A message in a receiver's queue, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Position in the queues: strictly increasing in commit order, never reused in a process.
    pub seq: u64,
    /// The sender.
    pub sender: Identity,
    /// The message id.
    pub message_id: u64,
    /// The header flags.
    pub flags: MessageFlags,
    /// Unix ms after which the message is dropped (short-lived queuing), if any.
    pub expires_at_ms: Option<u64>,
    /// The `message-with-metadata-box` as it will be delivered.
    pub body: Arc<[u8]>,
}

impl fmt::Debug for QueuedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedMessage")
            .field("seq", &self.seq)
            .field("sender", &Id(&self.sender))
            .field("message_id", &format_args!("{:#018x}", self.message_id))
            .field("flags", &self.flags)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl QueuedMessage {
    /// Whether a short-lived message has run out at `now_ms`.
    #[must_use]
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// Unix time in milliseconds (0 if the clock is before 1970).
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
