//! CSP on demand (docs/protocol.md "CSP on demand"): a device that negotiated it closes its chat
//! server connection when it has been idle (`CspClose`) and stays connected to the mediator; the
//! group wakes its leader (`Wake`) when the chat server pushes, or every
//! `GroupConfig::wake_poll_ms` in case a push was lost.
//!
//! Why here and not in the chat server connection's own idle timeout: an open outbound socket
//! keeps a Durable Object in memory (and billed), so a group whose leader keeps one open can
//! never hibernate. The device decides when it is idle because the mediator sees only encrypted
//! CSP frames, in which keepalives and messages look alike.

use super::effect::{CloseCause, ConnId, Effect};
use super::group::Group;
use super::store::GroupStore;
use crate::d2m::D2mMessage;

pub use crate::d2m::TANDEM_FEATURE_CSP_ON_DEMAND;

/// Every Tandem extension this mediator accepts; `ServerInfo.tandem_features` is the device's
/// mask and this.
pub const SUPPORTED_TANDEM_FEATURES: u32 = TANDEM_FEATURE_CSP_ON_DEMAND;

/// A push within this long of the last `Wake` to the same leader sends none: the chat server
/// retries until the leader receives, and one `Wake` reconnects it.
pub const WAKE_DEBOUNCE_MS: u64 = 5_000;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The leader was sent `Wake`.
    Woken,
    /// The leader was sent `Wake` less than [`WAKE_DEBOUNCE_MS`] ago.
    Debounced,
    /// The leader's chat server connection was not closed by `CspClose` (it is open, opening,
    /// or the leader does not speak CSP on demand): it receives without being woken.
    NotClosed,
    /// No device is connected as leader: the messages wait for the next device to connect.
    NoLeader,
}

impl<S: GroupStore> Group<S> {
    /// `CspClose`: closes the device's chat server connection, keeps its d2m connection and
    /// answers `CspClose`. Its next proxy frame opens a new one. A device that did not negotiate
    /// the extension is closed with 4010.
    pub(super) fn on_csp_close(&mut self, conn: ConnId) {
        let wake_at = self.now.saturating_add(self.config.wake_poll_ms);
        let Some(session) = self.session_mut(conn) else {
            return;
        };
        if session.features & TANDEM_FEATURE_CSP_ON_DEMAND == 0 {
            return self.close(conn, CloseCause::ExtensionNotNegotiated);
        }
        session.wake_at = Some(wake_at);
        session.woken_at = None;
        if let Some(link) = session.csp.take() {
            if link.waiting.is_none() {
                self.effects.push_back(Effect::CloseCsp { conn });
                self.csp_freed = true;
            }
        }
        // Confirms it: every proxy frame before this one came from the closed connection.
        self.send(conn, D2mMessage::CspClose);
    }

    /// The chat server has messages for this group's identity and nobody receives them (the
    /// Worker's push route, docs/worker.md "Waking a group"): wakes the leader.
    pub fn on_push(&mut self, now_ms: u64) -> PushOutcome {
        self.advance(now_ms);
        let outcome = match self.leader {
            None => PushOutcome::NoLeader,
            Some(conn) => self.wake(conn),
        };
        self.settle();
        outcome
    }

    /// Replaces the push URL devices are given from now on (the Worker seals a fresh token for
    /// each device connection; `GroupConfig::push_url`).
    pub fn set_push_url(&mut self, url: Option<String>) {
        self.config.push_url = url;
    }

    /// When the leader is next woken without a push.
    pub(super) fn leader_wake_at(&self) -> Option<u64> {
        self.leader
            .and_then(|conn| self.session(conn))
            .and_then(|s| s.wake_at)
    }

    /// Wakes the leader if its poll time has come (called as time advances).
    pub(super) fn poll_wake(&mut self, now: u64) {
        if let Some(conn) = self.leader {
            if self.leader_wake_at().is_some_and(|at| at <= now) {
                self.wake(conn);
            }
        }
    }

    /// After `ServerInfo`: tells a device that speaks CSP on demand where the chat server can
    /// wake the group, if this deployment can be woken.
    pub(super) fn send_push_url(&mut self, conn: ConnId) {
        let speaks = self
            .session(conn)
            .is_some_and(|s| s.features & TANDEM_FEATURE_CSP_ON_DEMAND != 0);
        if let (true, Some(url)) = (speaks, self.config.push_url.clone()) {
            self.send(conn, D2mMessage::PushUrl(url));
        }
    }

    fn wake(&mut self, conn: ConnId) -> PushOutcome {
        let (now, poll) = (self.now, self.config.wake_poll_ms);
        let Some(session) = self.session_mut(conn) else {
            return PushOutcome::NoLeader;
        };
        if session.csp.is_some() || session.wake_at.is_none() {
            return PushOutcome::NotClosed;
        }
        if session
            .woken_at
            .is_some_and(|at| now.saturating_sub(at) < WAKE_DEBOUNCE_MS)
        {
            return PushOutcome::Debounced;
        }
        session.woken_at = Some(now);
        // Until it opens the connection (which clears this), the poll goes on.
        session.wake_at = Some(now.saturating_add(poll));
        self.send(conn, D2mMessage::Wake);
        PushOutcome::Woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d2m::D2mMessage;
    use crate::mediator::testkit::{names, Harness};
    use crate::mediator::GroupConfig;

    const URL: &str = "https://mediator.example/push/00";

    fn harness() -> Harness {
        Harness::with_config(GroupConfig {
            push_url: Some(URL.into()),
            wake_poll_ms: 60_000,
            ..GroupConfig::default()
        })
    }

    /// A device that speaks CSP on demand, logged in, with its chat server connection open.
    fn online(h: &mut Harness, device: u64) -> ConnId {
        let conn = h.login_with(device, |hello| {
            hello.tandem_features = TANDEM_FEATURE_CSP_ON_DEMAND | 0x8000;
        });
        h.send(conn, D2mMessage::Proxy(vec![1; 48]));
        conn
    }

    #[test]
    fn the_feature_is_negotiated_and_the_push_url_follows_server_info() {
        let mut h = harness();
        let conn = h.connect();
        let mut hello = h.client_hello(conn, 1);
        hello.tandem_features = TANDEM_FEATURE_CSP_ON_DEMAND | 0x8000;
        h.send(conn, hello);
        let messages = h.take(conn);
        assert_eq!(
            names(&messages)[..2],
            ["ServerInfo", "PushUrl"],
            "{messages:?}"
        );
        let Some(D2mMessage::ServerInfo(info)) = messages.first() else {
            panic!()
        };
        // Unknown bits are not echoed.
        assert_eq!(info.tandem_features, TANDEM_FEATURE_CSP_ON_DEMAND);
        assert_eq!(messages.get(1), Some(&D2mMessage::PushUrl(URL.into())));
    }

    #[test]
    fn a_threema_device_gets_neither_the_feature_nor_a_push_url() {
        let mut h = harness();
        let conn = h.login(1);
        let messages = h.take(conn);
        assert!(
            !names(&messages).iter().any(|n| n == "PushUrl"),
            "{messages:?}"
        );
        let Some(D2mMessage::ServerInfo(info)) = messages.first() else {
            panic!()
        };
        assert_eq!(info.tandem_features, 0);
        // And its CspClose is a protocol error.
        h.send(conn, D2mMessage::CspClose);
        assert_eq!(h.closed(conn), Some(CloseCause::ExtensionNotNegotiated));
    }

    #[test]
    fn no_push_url_without_a_push_key() {
        let mut h = Harness::new();
        let conn = online(&mut h, 1);
        assert!(!names(&h.take(conn)).iter().any(|n| n == "PushUrl"));
    }

    #[test]
    fn csp_close_closes_the_socket_keeps_the_device_and_the_next_proxy_frame_reopens() {
        let mut h = harness();
        let a = online(&mut h, 1);
        h.take(a);
        h.csp.clear();
        h.send(a, D2mMessage::CspClose);
        assert_eq!(h.csp, [Effect::CloseCsp { conn: a }]);
        assert_eq!(names(&h.take(a)), ["CspClose"], "the close is confirmed");
        assert_eq!(h.closed(a), None);
        assert!(h.group.is_quiescent(), "nothing left in memory only");
        // The socket's own close report changes nothing now.
        h.group.on_csp_closed(a, h.now);
        assert_eq!(h.closed(a), None);
        h.csp.clear();
        h.send(a, D2mMessage::Proxy(vec![2; 48]));
        assert_eq!(
            h.csp,
            [
                Effect::OpenCsp { conn: a },
                Effect::CspSend {
                    conn: a,
                    bytes: vec![2; 48]
                }
            ]
        );
        assert_eq!(h.group.leader_wake_at(), None, "open again: no poll");
    }

    #[test]
    fn a_push_wakes_the_leader_once_and_only_while_its_connection_is_closed() {
        let mut h = harness();
        let a = online(&mut h, 1);
        let b = online(&mut h, 2);
        h.take(a);
        h.take(b);
        assert_eq!(h.group.on_push(h.now), PushOutcome::NotClosed);
        h.send(a, D2mMessage::CspClose);
        h.send(b, D2mMessage::CspClose);
        h.take(a);
        h.take(b);
        assert_eq!(h.group.on_push(h.now), PushOutcome::Woken);
        h.drain();
        assert_eq!(names(&h.take(a)), ["Wake"], "the leader is woken");
        assert!(h.take(b).is_empty(), "a sibling is not");
        h.tick(WAKE_DEBOUNCE_MS - 1);
        assert_eq!(h.group.on_push(h.now), PushOutcome::Debounced);
        h.tick(1);
        assert_eq!(h.group.on_push(h.now), PushOutcome::Woken);
        h.send(a, D2mMessage::Proxy(vec![3; 48]));
        assert_eq!(h.group.on_push(h.now), PushOutcome::NotClosed);
    }

    #[test]
    fn without_a_push_the_leader_is_woken_every_poll_interval() {
        let mut h = harness();
        let a = online(&mut h, 1);
        h.send(a, D2mMessage::CspClose);
        h.take(a);
        let due = h.now + 60_000;
        assert_eq!(h.group.poll_timeout(), Some(due));
        h.now = due - 1;
        h.group.on_timeout(h.now);
        h.drain();
        assert!(h.take(a).is_empty());
        h.now = due;
        h.group.on_timeout(h.now);
        h.drain();
        assert_eq!(names(&h.take(a)), ["Wake"]);
        assert_eq!(
            h.group.poll_timeout(),
            Some(due + 60_000),
            "until it reopens"
        );
    }

    #[test]
    fn a_new_leader_with_a_closed_connection_is_woken_by_the_next_push() {
        let mut h = harness();
        let a = online(&mut h, 1);
        let b = online(&mut h, 2);
        h.send(b, D2mMessage::CspClose);
        h.group.on_disconnect(a, h.now);
        h.drain();
        h.take(b);
        assert_eq!(h.group.on_push(h.now), PushOutcome::Woken);
        h.drain();
        assert_eq!(names(&h.take(b)), ["Wake"]);
        h.group.on_disconnect(b, h.now);
        assert_eq!(h.group.on_push(h.now), PushOutcome::NoLeader);
    }
}
