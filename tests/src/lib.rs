//! Cross-component test support for Tandem.
//!
//! For now this holds the conformance shim's logic ([`conformance`]); the native device harness
//! and the end-to-end fixtures join it with the mediator and chat server.
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
