//! Runtime APIs `worker` 0.8.7 does not bind, declared on the Durable Object's `ctx.storage`.

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::js_sys;

#[wasm_bindgen]
extern "C" {
    /// The object's `ctx.storage` (the same JS object as `worker::Storage`).
    #[wasm_bindgen(extends = js_sys::Object)]
    #[derive(Debug, Clone)]
    pub(crate) type RawStorage;

    /// `transactionSync(fn)`: runs `fn` inside one SQLite transaction, rolled back when `fn`
    /// throws (the exception is then rethrown).
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    pub(crate) fn transaction_sync(
        this: &RawStorage,
        body: &mut dyn FnMut() -> Result<JsValue, JsValue>,
    ) -> Result<JsValue, JsValue>;

    /// `setAlarm(ms)`: the object's single alarm, at Unix time `ms`.
    #[wasm_bindgen(method, catch, js_name = setAlarm)]
    pub(crate) fn set_alarm(this: &RawStorage, at_ms: f64) -> Result<js_sys::Promise, JsValue>;

    /// `deleteAll()`: empties the object's storage (on SQLite-backed objects the whole
    /// database, tables included); the alarm stays.
    #[wasm_bindgen(method, catch, js_name = deleteAll)]
    pub(crate) fn delete_all(this: &RawStorage) -> Result<js_sys::Promise, JsValue>;

    /// `deleteAlarm()`.
    #[wasm_bindgen(method, catch, js_name = deleteAlarm)]
    pub(crate) fn delete_alarm(this: &RawStorage) -> Result<js_sys::Promise, JsValue>;
}

/// The raw storage object of a `worker::Storage`.
pub(crate) fn raw_storage(storage: &worker::Storage) -> RawStorage {
    storage.as_raw().unchecked_ref::<RawStorage>().clone()
}
