//! Tandem in a browser tab (DESIGN §1 `client-wasm/`, `docs/client.md`): a thin adapter around
//! `tandem_shared::app::App` that moves bytes over a native WebSocket, persists records in
//! IndexedDB, asks the directory with `fetch` (through gloo-net) and tells the time. Every protocol decision is
//! the core's (`docs/app.md` §5 is this crate's checklist).
//!
//! - [`idb`]: IndexedDB, one object store per record kind, one transaction per batch.
//! - [`client`]: `TandemClient`, the JS API, and the WebSocket (web-sys).
//! - [`directory`]: the identity directory over `gloo_net::http`.
//! - [`convert`]: JS shapes of the core's values (ids as strings, plain objects).
//! - [`error`]: errors as JS `Error`s with a message a person can act on.

#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

#[cfg(feature = "bench")]
pub mod bench;
pub mod client;
pub mod convert;
pub mod directory;
pub mod error;
pub mod idb;
mod js;
mod typings;

pub use client::TandemClient;
pub use error::ClientError;

/// talc instead of the default dlmalloc: 2.9 KB smaller at the same speed (docs/client.md
/// "Size"). The module is single-threaded (no `atomics`), so its lock-free wasm variant is sound.
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
