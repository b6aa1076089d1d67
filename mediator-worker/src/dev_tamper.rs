//! Development-only fault injection (`TANDEM_DEV_ROUTES=on`): `/_dev/group/{hex}/tamper-next`
//! arms a one-shot bit flip in the next `Reflected` container the group's object sends, so the
//! browser end-to-end test (`tests/tests/browser_e2e.rs`) can check that a device rejects a
//! reflected envelope that does not open, acks it away and keeps its state. The route exists only
//! with the development routes on; without it nothing ever arms the flip.

use std::cell::Cell;

use tandem_shared::d2m::PayloadType;
use worker::Response;

/// Path of the arming request the Worker sends to the object.
pub(crate) const PATH: &str = "/_dev/tamper-next";

/// The one-shot bit: set by [`Tamper::arm`], spent by the next `Reflected` sent.
#[derive(Debug, Default)]
pub(crate) struct Tamper {
    armed: Cell<bool>,
}

impl Tamper {
    /// Arms the flip; answers 200 so the caller knows the object got it.
    pub(crate) fn arm(&self) -> worker::Result<Response> {
        self.armed.set(true);
        Response::ok("armed")
    }

    /// When armed and `bytes` is a `Reflected` container, flips the lowest bit of its last byte
    /// (inside the envelope's authentication tag) and disarms. The mediator's own state is not
    /// touched: only this one copy on the wire is damaged.
    pub(crate) fn apply(&self, bytes: &mut [u8]) {
        if !self.armed.get() || bytes.first() != Some(&(PayloadType::Reflected as u8)) {
            return;
        }
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
            self.armed.set(false);
        }
    }
}
