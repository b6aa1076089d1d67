//! IndexedDB storage (docs/app.md §2): one object store per [`RecordKind::name`] with byte keys
//! and opaque byte values, plus the adapter's own `client` store (server key, device label).
//! Each [`Batch`] is written in ONE readwrite transaction whose scope is every store: IndexedDB
//! runs readwrite transactions with overlapping scopes in creation order, so batches complete
//! (and are confirmed) in the order they were polled. The database name is the caller's, so
//! several devices live side by side in one browser.
//!
//! Every readwrite transaction is opened with `durability: "strict"`: a batch's `complete`
//! confirms it to the core, which then releases acks (CSP message-ack, `ReflectedAck`) after
//! which the servers delete their copy. With the default ("relaxed" in Chromium since 121, as in
//! Firefox and Safari) `complete` fires once the data is in the OS's buffers, so a power cut or
//! OS crash could lose a message both sides consider delivered. The adapter's own `client` store gets the same
//! rule: it is written before the first connection, and so before any ack.

use js_sys::{Array, Promise, Uint8Array};
use tandem_shared::app::{Batch, Op, Record, RecordKind};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbFactory, IdbObjectStore, IdbRequest, IdbTransaction};

use crate::error::ClientError;

/// Schema version; bump with a migration in `upgrade` when stores change.
const VERSION: u32 = 1;

/// The adapter's own store: string keys, values it alone reads.
pub const CLIENT_STORE: &str = "client";

/// An open database.
#[derive(Debug, Clone)]
pub struct Database {
    db: IdbDatabase,
    name: String,
}

/// A batch on its way to disk: `done` resolves on `complete`, rejects on `abort`/`error`.
#[derive(Debug)]
pub struct Write {
    /// The transaction (tests abort it).
    pub transaction: IdbTransaction,
    /// Settles when the transaction does.
    pub done: Promise,
}

/// A readwrite transaction over `store_names` with `durability: "strict"` (see the module docs).
///
/// web-sys 0.3.107 has `IdbTransactionOptions`, `IdbTransactionDurability` and
/// `transaction_with_str_sequence_and_mode_and_options` only behind
/// `--cfg=web_sys_unstable_apis`, a RUSTFLAGS switch every build of the workspace would need; so
/// the options object is built with `js_sys::Reflect` and `IDBDatabase.transaction` called
/// through `Function::call3`. A browser without the option ignores the member.
fn strict_readwrite(db: &IdbDatabase, store_names: &Array) -> Result<IdbTransaction, JsValue> {
    let options = js_sys::Object::new();
    js_sys::Reflect::set(
        &options,
        &JsValue::from_str("durability"),
        &JsValue::from_str("strict"),
    )?;
    let transaction: js_sys::Function =
        js_sys::Reflect::get(db, &JsValue::from_str("transaction"))?.dyn_into()?;
    transaction
        .call3(db, store_names, &JsValue::from_str("readwrite"), &options)?
        .dyn_into()
}

fn factory() -> Result<IdbFactory, ClientError> {
    let value = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("indexedDB"))
        .map_err(|e| ClientError::storage(&e))?;
    value
        .dyn_into::<IdbFactory>()
        .map_err(|_| ClientError::Storage("IndexedDB is not available in this context".into()))
}

fn store_names() -> Array {
    let names: Array = RecordKind::ALL
        .iter()
        .map(|k| JsValue::from_str(k.name()))
        .collect();
    names.push(&JsValue::from_str(CLIENT_STORE));
    names
}

/// A promise settling with the request: its `result` on success, its `error` otherwise.
fn request_done(request: &IdbRequest) -> Promise {
    let request = request.clone();
    Promise::new(&mut |resolve, reject| {
        let req = request.clone();
        let on_success = Closure::once_into_js(move || {
            let result = req.result().unwrap_or(JsValue::UNDEFINED);
            let _ = resolve.call1(&JsValue::UNDEFINED, &result);
        });
        let req = request.clone();
        let on_error = Closure::once_into_js(move || {
            let error = req
                .error()
                .ok()
                .flatten()
                .map_or(JsValue::NULL, JsValue::from);
            let _ = reject.call1(&JsValue::UNDEFINED, &error);
        });
        request.set_onsuccess(Some(on_success.unchecked_ref()));
        request.set_onerror(Some(on_error.unchecked_ref()));
    })
}

/// A promise settling when the transaction does.
fn transaction_done(tx: &IdbTransaction) -> Promise {
    let tx = tx.clone();
    Promise::new(&mut |resolve, reject| {
        let on_complete = Closure::once_into_js(move || {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        });
        let t = tx.clone();
        let reject2 = reject.clone();
        let on_abort = Closure::once_into_js(move || {
            let error = t
                .error()
                .map_or_else(|| JsValue::from_str("transaction aborted"), JsValue::from);
            let _ = reject2.call1(&JsValue::UNDEFINED, &error);
        });
        tx.set_oncomplete(Some(on_complete.unchecked_ref()));
        // An error event is always followed by abort; abort alone settles the promise.
        tx.set_onabort(Some(on_abort.unchecked_ref()));
        let _ = reject;
    })
}

fn bytes(value: &JsValue) -> Option<Vec<u8>> {
    if let Some(buffer) = value.dyn_ref::<js_sys::ArrayBuffer>() {
        return Some(Uint8Array::new(buffer).to_vec());
    }
    value.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec)
}

/// `hasIdentity` in JS (docs/client.md, "hasIdentity"): the same question in Rust (an async fn
/// with its closures and bindings) cost 1 705 B gzipped, which the package's budget lacks.
/// The database is opened without a version, so an existing one is not upgraded; a missing one
/// would be created at version 1, and that upgrade is aborted: asking never creates a database.
#[wasm_bindgen(inline_js = "export function hasIdentity(name, store) {
  return new Promise((resolve, reject) => {
    let missing = false;
    const open = globalThis.indexedDB.open(name);
    open.onupgradeneeded = () => { missing = true; open.transaction.abort(); };
    open.onerror = () => (missing ? resolve(false) : reject(open.error));
    open.onsuccess = () => {
      const db = open.result;
      if (!db.objectStoreNames.contains(store)) { db.close(); resolve(false); return; }
      const count = db.transaction(store).objectStore(store).count();
      count.onsuccess = () => { db.close(); resolve(count.result > 0); };
      count.onerror = () => { db.close(); reject(count.error); };
    };
  });
}")]
extern "C" {
    #[wasm_bindgen(js_name = hasIdentity)]
    fn js_has_identity(name: &str, store: &str) -> Promise;
}

/// Whether a database called `name` exists and holds an identity record, without creating it
/// or opening a device; a promise of a boolean.
pub fn has_identity(name: &str) -> Promise {
    js_has_identity(name, RecordKind::Identity.name())
}

impl Database {
    /// Opens (creating if needed) the database called `name`.
    pub async fn open(name: &str) -> Result<Self, ClientError> {
        let request = factory()?
            .open_with_u32(name, VERSION)
            .map_err(|e| ClientError::storage(&e))?;
        let upgrade_request = request.clone();
        let on_upgrade = Closure::once_into_js(move || {
            let Ok(result) = upgrade_request.result() else {
                return;
            };
            let Ok(db) = result.dyn_into::<IdbDatabase>() else {
                return;
            };
            let existing = db.object_store_names();
            for name in store_names().iter().filter_map(|n| n.as_string()) {
                if !existing.contains(&name) {
                    // A failure aborts the upgrade, which rejects the open below.
                    let _ = db.create_object_store(&name);
                }
            }
        });
        request.set_onupgradeneeded(Some(on_upgrade.unchecked_ref()));
        let on_blocked = Closure::once_into_js(|| {});
        request.set_onblocked(Some(on_blocked.unchecked_ref()));
        let result = JsFuture::from(request_done(&request))
            .await
            .map_err(|e| ClientError::storage(&e))?;
        let db = result
            .dyn_into::<IdbDatabase>()
            .map_err(|_| ClientError::Storage("open did not yield a database".into()))?;
        // Another tab deleting or upgrading this database must not wait for this one forever.
        let handle = db.clone();
        let on_version_change = Closure::once_into_js(move || handle.close());
        db.set_onversionchange(Some(on_version_change.unchecked_ref()));
        Ok(Self {
            db,
            name: name.to_owned(),
        })
    }

    /// Deletes the database called `name` (every record of that device).
    pub async fn delete(name: &str) -> Result<(), ClientError> {
        let request = factory()?
            .delete_database(name)
            .map_err(|e| ClientError::storage(&e))?;
        JsFuture::from(request_done(&request))
            .await
            .map_err(|e| ClientError::storage(&e))?;
        Ok(())
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A transaction over every store; readwrite ones are strict (see the module docs), since
    /// each of them precedes acks.
    fn transaction(
        &self,
        mode: web_sys::IdbTransactionMode,
    ) -> Result<IdbTransaction, ClientError> {
        let result = if mode == web_sys::IdbTransactionMode::Readwrite {
            strict_readwrite(&self.db, &store_names())
        } else {
            self.db
                .transaction_with_str_sequence_and_mode(&store_names(), mode)
        };
        result.map_err(|e| ClientError::storage(&e))
    }

    fn store(tx: &IdbTransaction, name: &str) -> Result<IdbObjectStore, ClientError> {
        tx.object_store(name).map_err(|e| ClientError::storage(&e))
    }

    /// Every record of every kind, for `App::open`, read in one transaction.
    pub async fn read_all(&self) -> Result<Vec<Record>, ClientError> {
        let tx = self.transaction(web_sys::IdbTransactionMode::Readonly)?;
        let mut pending = Vec::new();
        for kind in RecordKind::ALL {
            let store = Self::store(&tx, kind.name())?;
            let keys = store.get_all_keys().map_err(|e| ClientError::storage(&e))?;
            let values = store.get_all().map_err(|e| ClientError::storage(&e))?;
            pending.push((kind, request_done(&keys), request_done(&values)));
        }
        let mut records = Vec::new();
        for (kind, keys, values) in pending {
            let keys: Array = JsFuture::from(keys)
                .await
                .map_err(|e| ClientError::storage(&e))?
                .unchecked_into();
            let values: Array = JsFuture::from(values)
                .await
                .map_err(|e| ClientError::storage(&e))?
                .unchecked_into();
            if keys.length() != values.length() {
                return Err(ClientError::Storage(format!(
                    "store {} returned {} keys for {} values",
                    kind.name(),
                    keys.length(),
                    values.length()
                )));
            }
            for (key, value) in keys.iter().zip(values.iter()) {
                let (Some(key), Some(value)) = (bytes(&key), bytes(&value)) else {
                    return Err(ClientError::Storage(format!(
                        "store {} holds a record that is not bytes",
                        kind.name()
                    )));
                };
                records.push(Record::new(kind, key, value));
            }
        }
        Ok(records)
    }

    /// Starts writing `batch` in one strict readwrite transaction; every put and delete is
    /// issued before this returns, so the transaction's order is the batch's.
    pub fn write(&self, batch: &Batch) -> Result<Write, ClientError> {
        let tx = self.transaction(web_sys::IdbTransactionMode::Readwrite)?;
        let done = transaction_done(&tx);
        for op in &batch.ops {
            let result = match op {
                Op::Put(record) => {
                    let store = Self::store(&tx, record.kind.name())?;
                    let value = Uint8Array::from(record.value.as_slice());
                    store.put_with_key(&value, &Uint8Array::from(record.key.as_slice()))
                }
                Op::Delete { kind, key } => {
                    let store = Self::store(&tx, kind.name())?;
                    store.delete(&Uint8Array::from(key.as_slice()))
                }
            };
            if let Err(e) = result {
                let _ = tx.abort();
                return Err(ClientError::storage(&e));
            }
        }
        Ok(Write {
            transaction: tx,
            done,
        })
    }

    /// Writes `batch` and waits until it is durable.
    pub async fn apply(&self, batch: &Batch) -> Result<(), ClientError> {
        let write = self.write(batch)?;
        JsFuture::from(write.done)
            .await
            .map_err(|e| ClientError::storage(&e))?;
        Ok(())
    }

    /// A value of the adapter's own store.
    pub async fn get_client(&self, key: &str) -> Result<Option<JsValue>, ClientError> {
        let tx = self.transaction(web_sys::IdbTransactionMode::Readonly)?;
        let request = Self::store(&tx, CLIENT_STORE)?
            .get(&JsValue::from_str(key))
            .map_err(|e| ClientError::storage(&e))?;
        let value = JsFuture::from(request_done(&request))
            .await
            .map_err(|e| ClientError::storage(&e))?;
        Ok(Some(value).filter(|v| !v.is_undefined()))
    }

    /// Sets values of the adapter's own store in one transaction and waits for it.
    pub async fn put_client(&self, entries: &[(&str, JsValue)]) -> Result<(), ClientError> {
        let tx = self.transaction(web_sys::IdbTransactionMode::Readwrite)?;
        let done = transaction_done(&tx);
        let store = Self::store(&tx, CLIENT_STORE)?;
        for (key, value) in entries {
            store
                .put_with_key(value, &JsValue::from_str(key))
                .map_err(|e| ClientError::storage(&e))?;
        }
        JsFuture::from(done)
            .await
            .map_err(|e| ClientError::storage(&e))?;
        Ok(())
    }

    /// Closes the connection to the database (pending transactions still finish).
    pub fn close(&self) {
        self.db.close();
    }
}
