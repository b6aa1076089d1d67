//! Bench-only exports (cargo feature `bench`; the shipped package is built without them), driven
//! by `client-wasm/bench/run.mjs` (BENCHMARKS.md, "Browser device"):
//!
//! - [`IncomingBench`]: `tandem_shared::app::bench::IncomingBench` as a JS class, so the page
//!   times exactly the function `shared/benches/incoming.rs` times natively.
//! - [`bench_populate`]: writes a device with many contacts and messages into an IndexedDB
//!   database through the real storage path (`idb::Database::apply`, the batch a device writes),
//!   plus the adapter's `client` store, so `TandemClient.open` can be timed on it.

use rand_core::OsRng;
use tandem_shared::app::bench::{populated_device, x25519_agreements, IncomingBench as Workload};
use tandem_shared::app::Identity;
use tandem_shared::crypto::SecretKey;
use tandem_shared::keys::ClientKey;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;

use crate::idb::Database;

fn failed(e: &impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

/// N incoming 1:1 texts recorded in memory, replayed into a fresh device by `process()`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct IncomingBench(Workload);

#[wasm_bindgen]
impl IncomingBench {
    /// Records the exchange (untimed setup; see the shared module).
    #[wasm_bindgen(constructor)]
    pub fn new(messages: u32, seed: u32) -> Result<Self, JsValue> {
        let messages = usize::try_from(messages).map_err(|e| failed(&e))?;
        Workload::prepare(messages, u64::from(seed))
            .map(Self)
            .map_err(|e| failed(&e))
    }

    /// The d2m containers `process` feeds.
    #[wasm_bindgen(getter)]
    pub fn frames(&self) -> usize {
        self.0.frames()
    }

    /// The timed part: the device processes every recorded container.
    pub fn process(&mut self) -> Result<(), JsValue> {
        self.0.process().map_err(|e| failed(&e))
    }

    /// Checks the replay reproduced the recording; returns the containers the device sent.
    pub fn verify(&self) -> Result<usize, JsValue> {
        self.0.verify().map_err(|e| failed(&e))
    }
}

/// Creates database `database` holding a device with `contacts` contacts and `messages`
/// messages, as `TandemClient.open` expects it (the identity is random, `mediatorUrl` is
/// stored as given, the server key and group are placeholders so `open` needs no network).
/// Resolves to the identity.
#[wasm_bindgen(js_name = benchPopulate)]
pub async fn bench_populate(
    database: String,
    contacts: u32,
    messages: u32,
    #[wasm_bindgen(js_name = mediatorUrl)] mediator_url: String,
) -> Result<String, JsValue> {
    let identity: Identity = "BENCH001".parse().map_err(|e| failed(&e))?;
    let key = ClientKey::new(SecretKey::generate(&mut OsRng));
    let contacts = usize::try_from(contacts).map_err(|e| failed(&e))?;
    let messages = usize::try_from(messages).map_err(|e| failed(&e))?;
    let batch = populated_device(identity, key, contacts, messages, 7).map_err(|e| failed(&e))?;
    let db = Database::open(&database).await?;
    db.apply(&batch).await?;
    db.put_client(&[
        ("mediatorUrl", mediator_url.as_str().into()),
        ("directoryUrl", "http://127.0.0.1:9".into()),
        ("deviceLabel", "bench".into()),
        ("serverGroup", "bench".into()),
        (
            "serverPublicKey",
            js_sys::Uint8Array::from([9_u8; 32].as_slice()).into(),
        ),
    ])
    .await?;
    db.close();
    Ok(identity.as_str().to_owned())
}

/// `n` X25519 key agreements (`app::bench::x25519_agreements`), for the breakdown.
#[wasm_bindgen(js_name = benchX25519)]
pub fn bench_x25519(n: u32, seed: u32) -> Result<u8, JsValue> {
    let n = usize::try_from(n).map_err(|e| failed(&e))?;
    x25519_agreements(n, u64::from(seed)).map_err(|e| failed(&e))
}
