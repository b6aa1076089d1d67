//! The checks behind the cargo-fuzz targets in `fuzz/`, kept here so that the stable regression
//! test (`tests/tests/fuzz_regressions.rs`) replays every saved input through exactly the code the
//! fuzzer ran.
//!
//! Each check takes arbitrary bytes and must not panic on any of them; where something decodes it
//! asserts the codec's promises (re-encoding gives bytes that decode to the same value, a state
//! machine accepts any chunking). A failed assertion is a bug the fuzzer reports as a crash.
#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a check reports a broken promise, or a broken fixed fixture, by panicking"
)]

mod csp_payload;
mod csp_stream;
mod d2d;
mod d2m;
mod input;
mod seeds;
mod url_and_backup;

pub use csp_payload::csp_payload;
pub use csp_stream::{csp_client, csp_server};
pub use d2d::d2d_envelope;
pub use d2m::{d2m_container, d2m_structbuf};
pub use seeds::{seeds, Seed};
pub use url_and_backup::url_and_backup;

/// A fuzz target: its name (the file in `fuzz/fuzz_targets/` and the folder in
/// `fuzz/regressions/`) and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target, by name.
pub const TARGETS: [Target; 7] = [
    ("d2m_container", d2m_container),
    ("d2m_structbuf", d2m_structbuf),
    ("d2d_envelope", d2d_envelope),
    ("csp_server", csp_server),
    ("csp_client", csp_client),
    ("csp_payload", csp_payload),
    ("url_and_backup", url_and_backup),
];
