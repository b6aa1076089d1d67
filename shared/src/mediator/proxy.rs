//! The CSP proxy (spec §9.1, DESIGN §3 "CSP proxy"): one chat server connection per device,
//! opened on its first proxy container; server bytes go back one CSP unit per container.

use super::effect::{CloseCause, ConnId, Effect};
use super::group::Group;
use super::store::GroupStore;
use crate::csp::ServerUnitSplitter;
use crate::d2m::D2mMessage;

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
        for unit in units {
            self.send(conn, D2mMessage::Proxy(unit));
        }
        if failed {
            self.close(conn, CloseCause::CspStreamInvalid);
        }
        self.settle();
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
    use crate::d2m::{CloseCode, PayloadType};
    use crate::mediator::testkit::Harness;
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
