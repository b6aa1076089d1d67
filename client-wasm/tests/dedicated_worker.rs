//! The package in a dedicated worker (headless Chromium): the checks of `every_scope/`.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod every_scope;

const SCOPE: &str = "DedicatedWorkerGlobalScope";

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_dedicated_worker);
