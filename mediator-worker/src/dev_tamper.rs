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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_the_next_reflected_once() {
        let tamper = Tamper::default();
        let reflected = vec![PayloadType::Reflected as u8, 0, 0, 0, 7, 8, 9];
        let mut unarmed = reflected.clone();
        tamper.apply(&mut unarmed);
        assert_eq!(unarmed, reflected, "nothing happens unless armed");

        tamper.armed.set(true);
        let mut other = vec![PayloadType::ReflectAck as u8, 0, 0, 0, 1];
        tamper.apply(&mut other);
        assert_eq!(other, [PayloadType::ReflectAck as u8, 0, 0, 0, 1]);
        let mut first = reflected.clone();
        tamper.apply(&mut first);
        assert_eq!(first, [PayloadType::Reflected as u8, 0, 0, 0, 7, 8, 8]);
        let mut second = reflected.clone();
        tamper.apply(&mut second);
        assert_eq!(second, reflected, "one shot");
    }
}
