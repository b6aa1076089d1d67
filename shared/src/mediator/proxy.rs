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
