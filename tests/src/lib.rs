//! Cross-component test support for Tandem.
//!
//! The conformance shim's logic ([`conformance`]), the fuzz regression checks, and the native
//! device harness with its fixtures ([`harness`]) that the mediator integration tests and the
//! benchmark drive.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod conformance;
pub mod fuzz_checks;
pub mod harness;
pub mod reliability;
