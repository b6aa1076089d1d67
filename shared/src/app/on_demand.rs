//! CSP on demand on the device side (docs/protocol.md "CSP on demand", docs/app.md §4): the
//! chat server connection closes after [`AppConfig::csp_idle_ms`] without messages, receipts or
//! acks, while the mediator connection stays; it opens again for the next thing to send, when
//! this device becomes leader, or when the mediator says the chat server has messages (`Wake`).
//!
//! Why: an open chat server socket keeps the group's Durable Object in memory and billed; a tab
//! left open all day would otherwise cost as much as one in constant use.
//!
//! [`AppConfig::csp_idle_ms`]: super::AppConfig::csp_idle_ms

use rand_core::CryptoRngCore;

use super::core::App;
use crate::csp::{CspPayload, PushToken, PushTokenType};

/// Tandem's push token type (docs/protocol.md "CSP on demand"): the token is a URL the chat
/// server POSTs to (no body) when messages wait and nobody receives them. Threema's types are
/// below 0x20; 0xa0 is in no client's list.
pub const TANDEM_PUSH_TOKEN_TYPE: PushTokenType = PushTokenType(0xa0);

/// Default for [`AppConfig::csp_idle_ms`](super::AppConfig::csp_idle_ms): a minute without
/// anything but keepalives.
pub const CSP_IDLE_MS: u64 = 60_000;

impl App {
    /// Whether this connection's chat server connection is closed for being idle.
    #[must_use]
    pub const fn is_csp_asleep(&self) -> bool {
        self.conn.csp_asleep
    }

    /// When the chat server connection counts as idle, if it may close at all.
    pub(super) fn csp_idle_at(&self) -> Option<u64> {
        let idle_ms = self.config.csp_idle_ms?;
        let on_demand = self
            .session
            .as_ref()
            .is_some_and(crate::device::DeviceSession::csp_on_demand);
        (on_demand && self.conn.csp_ready && !self.conn.csp_asleep)
            .then(|| self.conn.csp_active_at.saturating_add(idle_ms))
    }

    /// Closes the chat server connection if it has been idle long enough and nothing waits on
    /// it; otherwise, if something does, looks again a whole idle window later.
    pub(super) fn close_idle_csp(&mut self, now_ms: u64) {
        if self.csp_idle_at().is_none_or(|at| now_ms < at) {
            return;
        }
        if !self.nothing_for_csp() {
            self.conn.csp_active_at = now_ms;
            return;
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if session.close_csp().is_ok() {
            self.conn.csp_asleep = true;
            self.conn.csp_ready = false;
            self.conn.unblocked = false;
            self.conn.next_echo_at = None;
            self.conn.echo_deadline = None;
        }
    }

    /// Opens the chat server connection again if it is asleep; the login and (as leader) the
    /// unblock follow as on a new connection.
    pub(super) fn wake_csp(&mut self, rng: &mut impl CryptoRngCore) {
        if !self.conn.csp_asleep {
            return;
        }
        if let Some(session) = self.session.as_mut() {
            if session.open_csp(rng).is_ok() {
                self.conn.csp_asleep = false;
            }
        }
    }

    /// Wakes the chat server connection when something is waiting to go out on it: a message
    /// (or receipt) job, or a read receipt.
    pub(super) fn wake_csp_if_needed(&mut self, rng: &mut impl CryptoRngCore) {
        if self.conn.csp_asleep && (self.jobs.len() > 0 || !self.reads.queue.is_empty()) {
            self.wake_csp(rng);
        }
    }

    /// Registers the mediator's push URL at the chat server (after every login: the chat
    /// server keeps one per identity, and a token expires, `MAX_PUSH_TOKEN_AGE_MS`).
    pub(super) fn register_push_url(&mut self) {
        let Some(url) = self.conn.push_url.clone() else {
            return;
        };
        if !self.conn.csp_ready {
            return;
        }
        // A URL over 255 bytes is a mediator misconfiguration: such a group is only woken by
        // the poll.
        if let Ok(token) = PushToken::new(TANDEM_PUSH_TOKEN_TYPE, url.into_bytes()) {
            self.csp_send(&CspPayload::SetPushNotificationToken(token));
        }
    }

    /// Nothing to send, nothing sent and unanswered, nothing received and unacked.
    fn nothing_for_csp(&self) -> bool {
        self.jobs.len() == 0
            && self.reads.queue.is_empty()
            && self.parked.is_empty()
            && self.conn.reflects.is_empty()
            && self.conn.deferred.is_empty()
    }
}
