//! Protobuf types generated from `shared/proto/*.proto`, the single source of field numbers.
//!
//! The generated structs are the raw wire shapes; the typed layers in [`crate::d2m`],
//! [`crate::d2d`] and [`crate::csp`] add validation on top.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::use_self,
    clippy::doc_markdown,
    clippy::derive_partial_eq_without_eq,
    clippy::enum_variant_names,
    clippy::large_enum_variant
)]

/// The encoded `google.protobuf.FileDescriptorSet` of every message in this module, for tools
/// that need reflection (JSON mapping in the conformance shim).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

pub mod common {
    include!(concat!(env!("OUT_DIR"), "/common.rs"));
}
pub mod csp_e2e {
    include!(concat!(env!("OUT_DIR"), "/csp_e2e.rs"));
}
pub mod d2d {
    include!(concat!(env!("OUT_DIR"), "/d2d.rs"));
}
pub mod d2m {
    include!(concat!(env!("OUT_DIR"), "/d2m.rs"));
}
pub mod sync {
    include!(concat!(env!("OUT_DIR"), "/sync.rs"));
}
