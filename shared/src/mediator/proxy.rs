//! The CSP proxy (spec §9.1, DESIGN §3 "CSP proxy"): one chat server connection per device,
//! opened on its first proxy container; server bytes go back one CSP unit per container.

use super::effect::{CloseCause, ConnId, Effect};
use super::group::Group;
use super::store::GroupStore;
use crate::csp::ServerUnitSplitter;

/// Chat server bytes held for one device behind its unsent queue entries. A device that is
/// caught up holds none; one whose window is full of unacked entries (slow storage) holds what
/// the chat server sends meanwhile. 1 MiB is dozens of full CSP frames: past it the device is
/// too far behind, and closing it (the chat server redelivers everything unacked) bounds the
/// object's memory.
pub const MAX_HELD_PROXY_BYTES: usize = 1024 * 1024;

impl<S: GroupStore> Group<S> {
    /// Writes a device's proxy payload to its chat server connection, opening it first if this
    /// is the first one. Empty payloads are dropped (there is nothing to write).
    pub(super) fn forward_proxy(&mut self, conn: ConnId, payload: Vec<u8>) {
        let Some(session) = self.session_mut(conn) else {
            return;
        };
        if session.csp.is_none() {
            session.csp = Some(ServerUnitSplitter::new());
            self.effects.push_back(Effect::OpenCsp { conn });
        }
        if !payload.is_empty() {
            self.effects.push_back(Effect::CspSend {
                conn,
                bytes: payload,
            });
        }
    }

    /// Bytes read from the chat server connection of `conn`.
    pub fn on_csp_bytes(&mut self, conn: ConnId, bytes: &[u8], now_ms: u64) {
        self.advance(now_ms);
        let mut units = Vec::new();
        let mut failed = false;
        if let Some(splitter) = self.session_mut(conn).and_then(|s| s.csp.as_mut()) {
            failed = splitter.feed(bytes).is_err();
            units.extend(core::iter::from_fn(|| splitter.pop()));
        }
        if !units.is_empty() {
            self.place_proxy(conn, units);
        }
        if failed {
            self.close(conn, CloseCause::CspStreamInvalid);
        }
        self.settle();
    }

    /// Sends chat server units to the device after every queue entry its slot holds now: a
    /// receipt (or a group message) never reaches a leader before the reflection of the message
    /// (or group) it refers to, which a sibling stored before the chat server had it. Over
    /// [`MAX_HELD_PROXY_BYTES`] waiting, the device does not keep up: closed with 4009.
    fn place_proxy(&mut self, conn: ConnId, units: Vec<Vec<u8>>) {
        let Some(device) = self.device_of(conn) else {
            return;
        };
        let after = self.slots.get(&device).and_then(|s| s.tail);
        let Some(session) = self.session_mut(conn) else {
            return;
        };
        let delivery = &mut session.delivery;
        for unit in units {
            delivery.pending_proxy_bytes = delivery.pending_proxy_bytes.saturating_add(unit.len());
            delivery.pending_proxy.push_back((after, unit));
        }
        self.flush_placed(conn);
        if self
            .session_mut(conn)
            .is_some_and(|s| s.delivery.pending_proxy_bytes > MAX_HELD_PROXY_BYTES)
        {
            self.close(conn, CloseCause::CspBacklog);
        }
    }

    /// The chat server closed the connection of `conn`: the device is closed with 4000.
    pub fn on_csp_closed(&mut self, conn: ConnId, now_ms: u64) {
        self.csp_gone(conn, now_ms, CloseCause::CspClosed);
    }

    /// The chat server connection of `conn` could not be opened: the device is closed with 4001.
    pub fn on_csp_connect_failed(&mut self, conn: ConnId, now_ms: u64) {
        self.csp_gone(conn, now_ms, CloseCause::CspUnreachable);
    }

    fn csp_gone(&mut self, conn: ConnId, now_ms: u64, cause: CloseCause) {
        self.advance(now_ms);
        if let Some(session) = self.session_mut(conn) {
            if session.csp.take().is_some() {
                self.close(conn, cause);
            }
        }
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d2m::{CloseCode, D2mMessage, PayloadType};
    use crate::mediator::testkit::{names, reflected, Harness};
    use crate::mediator::GroupConfig;
    use proptest::prelude::*;

    fn server_stream() -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut frame = 20_u16.to_le_bytes().to_vec();
        frame.extend([7; 20]);
        let units = vec![vec![1; 80], vec![2; 32], frame];
        (units.concat(), units)
    }

    fn proxies(messages: &[D2mMessage]) -> Vec<Vec<u8>> {
        messages
            .iter()
            .filter_map(|m| match m {
                D2mMessage::Proxy(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_proxy_opens_the_chat_server_connection_once() {
        let mut h = Harness::new();
        let a = h.login(1);
        assert!(h.csp.is_empty(), "a d2m-only device opens nothing");
        h.send(a, D2mMessage::Proxy(vec![1; 48]));
        h.send(a, D2mMessage::Proxy(vec![2; 9]));
        assert_eq!(
            h.csp,
            [
                Effect::OpenCsp { conn: a },
                Effect::CspSend {
                    conn: a,
                    bytes: vec![1; 48]
                },
                Effect::CspSend {
                    conn: a,
                    bytes: vec![2; 9]
                },
            ]
        );
    }

    #[test]
    fn chat_server_bytes_go_back_one_unit_per_proxy_container() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.send(a, D2mMessage::Proxy(vec![1; 48]));
        h.take(a);
        let (bytes, units) = server_stream();
        let (x, y) = bytes.split_at(100);
        h.group.on_csp_bytes(a, x, h.now);
        h.group.on_csp_bytes(a, y, h.now);
        h.drain();
        let got = h.take(a);
        assert!(got.iter().all(|m| m.payload_type() == PayloadType::Proxy));
        assert_eq!(proxies(&got), units);
    }

    /// Device 2 (window 1) has one queue entry sent and unacked and one not yet sent.
    fn behind_by_one() -> (Harness, ConnId, ConnId, u32) {
        let mut h = Harness::with_config(GroupConfig {
            max_in_flight: 1,
            ..GroupConfig::default()
        });
        let a = h.login(1);
        let b = h.login(2);
        h.send(b, D2mMessage::Proxy(vec![1; 48]));
        h.take(a);
        h.take(b);
        h.reflect(a, b"m1");
        h.reflect(a, b"m2");
        let first = reflected(&h.take(b));
        assert_eq!(first.len(), 1, "window of one");
        (h, a, b, first[0].reflected_id)
    }

    #[test]
    fn chat_server_data_waits_behind_the_reflections_stored_before_it() {
        // A receipt must not reach a leader before the reflection of the message it names.
        let (mut h, _, b, id) = behind_by_one();
        let (bytes, units) = server_stream();
        h.group.on_csp_bytes(b, &bytes, h.now);
        h.drain();
        assert!(h.take(b).is_empty(), "held behind m2, not sent yet");
        h.ack(b, id);
        let rest = h.take(b);
        assert_eq!(names(&rest), ["Reflected", "Proxy", "Proxy", "Proxy"]);
        assert_eq!(proxies(&rest), units);
        // Caught up: chat server data goes at once.
        let mut frame = 20_u16.to_le_bytes().to_vec();
        frame.extend([9; 20]);
        h.group.on_csp_bytes(b, &frame, h.now);
        h.drain();
        assert_eq!(proxies(&h.take(b)), [frame]);
    }

    #[test]
    fn a_device_that_does_not_keep_up_with_chat_server_data_is_closed_4009() {
        let (mut h, a, b, _) = behind_by_one();
        h.group.on_csp_bytes(b, &[0; 112], h.now);
        let mut frame = 8_000_u16.to_le_bytes().to_vec();
        frame.extend([7; 8_000]);
        let frames = MAX_HELD_PROXY_BYTES / frame.len() + 1;
        for _ in 0..frames {
            h.group.on_csp_bytes(b, &frame, h.now);
        }
        h.drain();
        assert_eq!(h.closed(b), Some(CloseCause::CspBacklog));
        assert_eq!(CloseCause::CspBacklog.code(), CloseCode::CspInternalError);
        // The sibling goes on.
        h.take(a);
        let (id, _) = h.reflect(a, b"m3");
        assert!(h
            .take(a)
            .iter()
            .any(|m| matches!(m, D2mMessage::ReflectAck(ack) if ack.reflect_id == id)));
        assert_eq!(h.closed(a), None);
    }

    #[test]
    fn chat_server_close_closes_the_device_4000() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.send(a, D2mMessage::Proxy(vec![1; 48]));
        h.csp.clear();
        h.group.on_csp_closed(a, h.now);
        h.drain();
        assert_eq!(h.closed(a), Some(CloseCause::CspClosed));
        assert_eq!(CloseCause::CspClosed.code(), CloseCode::CspClosed);
        assert!(
            h.csp.is_empty(),
            "no CloseCsp for a connection already closed"
        );
    }

    #[test]
    fn chat_server_unreachable_closes_the_device_4001() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.send(a, D2mMessage::Proxy(vec![1; 48]));
        h.group.on_csp_connect_failed(a, h.now);
        h.drain();
        assert_eq!(h.closed(a), Some(CloseCause::CspUnreachable));
        assert_eq!(
            CloseCause::CspUnreachable.code(),
            CloseCode::CspUnableToEstablish
        );
    }

    #[test]
    fn invalid_chat_server_stream_closes_the_device_4009_and_the_socket() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.send(a, D2mMessage::Proxy(vec![1; 48]));
        h.csp.clear();
        // server-hello, login-ack, then a frame claiming 9000 bytes (over 8192).
        let mut bytes = vec![0; 112];
        bytes.extend(9000_u16.to_le_bytes());
        h.group.on_csp_bytes(a, &bytes, h.now);
        h.drain();
        assert_eq!(h.closed(a), Some(CloseCause::CspStreamInvalid));
        assert_eq!(
            CloseCause::CspStreamInvalid.code(),
            CloseCode::CspInternalError
        );
        assert_eq!(
            proxies(&h.take(a)).len(),
            2,
            "the good units went out first"
        );
        assert_eq!(h.csp, [Effect::CloseCsp { conn: a }]);
    }

    #[test]
    fn device_leaving_closes_its_chat_server_connection() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.send(a, D2mMessage::Proxy(vec![1; 48]));
        h.csp.clear();
        h.disconnect(a);
        h.disconnect(b);
        assert_eq!(h.csp, [Effect::CloseCsp { conn: a }]);
    }

    proptest! {
        #[test]
        fn any_chunking_of_the_server_stream_gives_the_same_frames(cut in 0_usize..=132) {
            let mut h = Harness::new();
            let a = h.login(1);
            h.send(a, D2mMessage::Proxy(vec![1; 48]));
            h.take(a);
            let (bytes, units) = server_stream();
            let (x, y) = bytes.split_at(cut.min(bytes.len()));
            h.group.on_csp_bytes(a, x, h.now);
            h.group.on_csp_bytes(a, y, h.now);
            h.drain();
            prop_assert_eq!(proxies(&h.take(a)), units);
        }
    }
}
