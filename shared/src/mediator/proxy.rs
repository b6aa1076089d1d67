//! The CSP proxy (spec §9.1, DESIGN §3 "CSP proxy"): one chat server connection per device,
//! opened on its first proxy container; server bytes go back one CSP unit per container.

use super::effect::{CloseCause, ConnId, Effect};
use super::group::{Conn, CspLink, CspWait, Group};
use super::store::GroupStore;
use crate::csp::ServerUnitSplitter;

/// Chat server bytes held for one device behind its unsent queue entries. A device that is
/// caught up holds none; one whose window is full of unacked entries (slow storage) holds what
/// the chat server sends meanwhile. 1 MiB is dozens of full CSP frames: past it the device is
/// too far behind, and closing it (the chat server redelivers everything unacked) bounds the
/// object's memory.
pub const MAX_HELD_PROXY_BYTES: usize = 1024 * 1024;

/// Device → chat server bytes held for a device that waits for a chat server connection
/// (`GroupConfig::max_csp_connections`). A login and a few messages are a few KiB; past this
/// the device is closed with 4009.
pub const MAX_WAITING_PROXY_BYTES: usize = 64 * 1024;

impl<S: GroupStore> Group<S> {
    /// Writes a device's proxy payload to its chat server connection, opening it first if this
    /// is the first one. Empty payloads are dropped (there is nothing to write).
    ///
    /// At most `max_csp_connections` sockets are open at once: a device that finds them taken
    /// waits (its payloads held, in order) until one closes, for at most `csp_wait_timeout_ms`.
    pub(super) fn forward_proxy(&mut self, conn: ConnId, payload: Vec<u8>) {
        let first = self.session_mut(conn).is_some_and(|s| s.csp.is_none());
        // Sockets are counted for a device's first proxy frame only, not on every one.
        let may_open = first && self.csp_sockets() < self.config.max_csp_connections.max(1);
        let deadline = self.now.saturating_add(self.config.csp_wait_timeout_ms);
        let Some(session) = self.session_mut(conn) else {
            return;
        };
        if first {
            // A connection closed by `CspClose` is open again: no more wake polls.
            session.wake_at = None;
            session.woken_at = None;
            session.csp = Some(CspLink {
                splitter: ServerUnitSplitter::new(),
                waiting: (!may_open).then(|| CspWait {
                    deadline,
                    held: Vec::new(),
                    held_bytes: 0,
                }),
            });
        }
        if let Some(wait) = session.csp.as_mut().and_then(|l| l.waiting.as_mut()) {
            if !payload.is_empty() {
                wait.held_bytes = wait.held_bytes.saturating_add(payload.len());
                wait.held.push(payload);
            }
            if wait.held_bytes > MAX_WAITING_PROXY_BYTES {
                self.close(conn, CloseCause::CspBacklog);
            }
            return;
        }
        if first {
            // Not waiting, so `may_open` held.
            self.effects.push_back(Effect::OpenCsp { conn });
        }
        if !payload.is_empty() {
            self.effects.push_back(Effect::CspSend {
                conn,
                bytes: payload,
            });
        }
    }

    /// Chat server sockets asked for and not closed.
    pub(super) fn csp_sockets(&self) -> usize {
        self.conns
            .values()
            .filter(|c| match c {
                Conn::Online(s) => s.csp.as_ref().is_some_and(|l| l.waiting.is_none()),
                Conn::Handshake(_) => false,
            })
            .count()
    }

    /// Devices whose wait for a chat server connection ends at or before `now`.
    pub(super) fn csp_waits_over(&self, now: u64) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter_map(|(&conn, c)| match c {
                Conn::Online(s) => s
                    .csp
                    .as_ref()?
                    .waiting
                    .as_ref()
                    .filter(|w| w.deadline <= now)
                    .map(|_| conn),
                Conn::Handshake(_) => None,
            })
            .collect()
    }

    /// Gives freed chat server connections to waiting devices, longest-connected first (the
    /// lowest connection ids): `OpenCsp`, then what each had sent meanwhile.
    pub(super) fn open_waiting_csp(&mut self) {
        let max = self.config.max_csp_connections.max(1);
        let mut sockets = self.csp_sockets();
        let waiting: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(&conn, c)| match c {
                Conn::Online(s) => s.csp.as_ref()?.waiting.as_ref().map(|_| conn),
                Conn::Handshake(_) => None,
            })
            .collect();
        for conn in waiting {
            if sockets >= max {
                break;
            }
            let Some(wait) = self
                .session_mut(conn)
                .and_then(|s| s.csp.as_mut())
                .and_then(|l| l.waiting.take())
            else {
                continue;
            };
            sockets += 1;
            self.effects.push_back(Effect::OpenCsp { conn });
            for bytes in wait.held {
                self.effects.push_back(Effect::CspSend { conn, bytes });
            }
        }
    }

    /// Bytes read from the chat server connection of `conn`.
    pub fn on_csp_bytes(&mut self, conn: ConnId, bytes: &[u8], now_ms: u64) {
        self.advance(now_ms);
        let mut units = Vec::new();
        let mut failed = false;
        if let Some(splitter) = self
            .session_mut(conn)
            .and_then(|s| s.csp.as_mut())
            .map(|l| &mut l.splitter)
        {
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
                self.csp_freed = true;
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
    fn at_most_six_chat_server_connections_the_seventh_waits_then_opens_the_eighth_times_out() {
        let mut h = Harness::new();
        let conns: Vec<ConnId> = (1..=8).map(|d| h.login(d)).collect();
        let began = h.now;
        for (i, &conn) in conns.iter().enumerate() {
            h.send(conn, D2mMessage::Proxy(vec![u8::try_from(i).unwrap(); 3]));
        }
        h.drain();
        let opened = |csp: &[Effect]| -> Vec<ConnId> {
            csp.iter()
                .filter_map(|e| match e {
                    Effect::OpenCsp { conn } => Some(*conn),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(opened(&h.csp), conns[..6], "six sockets, in order");
        assert!(
            !h.csp
                .iter()
                .any(|e| matches!(e, Effect::CspSend { conn, .. } if *conn == conns[6])),
            "nothing written for a device without a socket"
        );
        h.csp.clear();

        // The seventh waits; more of its bytes wait with it, in order.
        h.send(conns[6], D2mMessage::Proxy(vec![60; 2]));
        h.tick(1_000);
        h.group.on_csp_closed(conns[1], h.now);
        h.drain();
        assert_eq!(h.closed(conns[1]), Some(CloseCause::CspClosed));
        assert_eq!(
            h.csp,
            [
                Effect::OpenCsp { conn: conns[6] },
                Effect::CspSend {
                    conn: conns[6],
                    bytes: vec![6; 3]
                },
                Effect::CspSend {
                    conn: conns[6],
                    bytes: vec![60; 2]
                },
            ],
            "the freed socket goes to the longest waiting device, with what it sent meanwhile"
        );
        h.csp.clear();

        // The eighth still waits; past the wait it is closed with 4001, nothing opened for it.
        let wait = GroupConfig::default().csp_wait_timeout_ms;
        assert_eq!(h.group.poll_timeout(), Some(began + wait));
        h.tick(wait - 1_001);
        h.timeout();
        assert_eq!(h.closed(conns[7]), None, "still waiting");
        h.tick(1);
        h.timeout();
        assert_eq!(h.closed(conns[7]), Some(CloseCause::CspUnreachable));
        assert_eq!(
            CloseCause::CspUnreachable.code(),
            CloseCode::CspUnableToEstablish
        );
        assert!(h.csp.is_empty(), "{:?}", h.csp);
        for &conn in conns.iter().take(6).filter(|&&c| c != conns[1]) {
            assert_eq!(h.closed(conn), None, "{conn:?} keeps its socket");
        }
    }

    #[test]
    fn a_device_waiting_for_a_chat_server_connection_holds_at_most_64_kib() {
        let mut h = Harness::with_config(GroupConfig {
            max_csp_connections: 1,
            ..GroupConfig::default()
        });
        let (a, b) = (h.login(1), h.login(2));
        h.send(a, D2mMessage::Proxy(vec![1; 10]));
        for _ in 0..=MAX_WAITING_PROXY_BYTES / 8192 {
            h.send(b, D2mMessage::Proxy(vec![2; 8192]));
        }
        h.drain();
        assert_eq!(h.closed(b), Some(CloseCause::CspBacklog));
        assert_eq!(h.closed(a), None);
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
