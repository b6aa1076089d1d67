//! The package in a shared worker (headless Chromium): the checks of `every_scope/`.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod every_scope;

const SCOPE: &str = "SharedWorkerGlobalScope";

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_shared_worker);
