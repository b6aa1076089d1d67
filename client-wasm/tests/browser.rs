//! Storage and crypto inside headless Chromium (`scripts/test.sh` runs these with
//! wasm-bindgen-test-runner; on the host this file is empty), in a page; plus the checks every
//! global scope must pass (`every_scope/`, also run in workers by `dedicated_worker.rs` and
//! `shared_worker.rs`).
#![cfg(target_arch = "wasm32")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use tandem_client::idb::Database;
use tandem_shared::app::{Batch, Op, Record, RecordKind};
use tandem_shared::crypto::{random_nonce, SecretKey};
use tandem_shared::keys::{ClientUrlInfo, DeviceGroupKey};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

mod every_scope;
use every_scope::{message, options};

/// The global scope `every_scope` checks for.
const SCOPE: &str = "Window";

wasm_bindgen_test_configure!(run_in_browser);

fn put(kind: RecordKind, key: &[u8], value: &[u8]) -> Op {
    Op::Put(Record::new(kind, key.to_vec(), value.to_vec()))
}

fn sorted(mut records: Vec<Record>) -> Vec<(RecordKind, Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> = records
        .drain(..)
        .map(|r| (r.kind, r.key.clone(), r.value.to_vec()))
        .collect();
    out.sort();
    out
}

async fn fresh(name: &str) -> Database {
    Database::delete(name).await.unwrap();
    Database::open(name).await.unwrap()
}

#[wasm_bindgen_test]
async fn a_new_database_has_every_store_and_no_records() {
    let db = fresh("t-empty").await;
    assert!(db.read_all().await.unwrap().is_empty());
    db.close();
}

#[wasm_bindgen_test]
async fn batches_apply_in_order_and_deletes_remove() {
    let db = fresh("t-order").await;
    let first = Batch {
        id: 1,
        ops: vec![
            put(RecordKind::Contact, b"ALICE123", b"v1"),
            put(RecordKind::Message, &1_u64.to_be_bytes(), b"m1"),
        ],
    };
    let second = Batch {
        id: 2,
        ops: vec![
            put(RecordKind::Contact, b"ALICE123", b"v2"),
            Op::Delete {
                kind: RecordKind::Message,
                key: 1_u64.to_be_bytes().to_vec(),
            },
        ],
    };
    // Both issued before either completes: the second must still win.
    let w1 = db.write(&first).unwrap();
    let w2 = db.write(&second).unwrap();
    JsFuture::from(w1.done).await.unwrap();
    JsFuture::from(w2.done).await.unwrap();
    assert_eq!(
        sorted(db.read_all().await.unwrap()),
        vec![(RecordKind::Contact, b"ALICE123".to_vec(), b"v2".to_vec())]
    );
    db.close();
}

#[wasm_bindgen_test]
async fn an_aborted_batch_leaves_nothing() {
    let db = fresh("t-abort").await;
    let kept = Batch {
        id: 1,
        ops: vec![put(RecordKind::Settings, b"self", b"kept")],
    };
    db.apply(&kept).await.unwrap();
    let doomed = Batch {
        id: 2,
        ops: vec![
            put(RecordKind::Settings, b"self", b"lost"),
            put(RecordKind::Contact, b"BOB45678", b"lost"),
            put(RecordKind::Nonce, &[0; 33], b""),
        ],
    };
    let write = db.write(&doomed).unwrap();
    write.transaction.abort().unwrap();
    assert!(
        JsFuture::from(write.done).await.is_err(),
        "abort must reject"
    );
    assert_eq!(
        sorted(db.read_all().await.unwrap()),
        vec![(RecordKind::Settings, b"self".to_vec(), b"kept".to_vec())]
    );
    db.close();
}

/// A batch's `complete` releases acks, so its transaction must be flushed to disk first
/// (docs/client.md "Storage"): `durability` reads "strict", for the batch's transaction and
/// for every other readwrite one (the `client` store is written before any ack too).
#[wasm_bindgen_test]
async fn every_readwrite_transaction_is_strict() {
    use wasm_bindgen::JsValue;
    let db = fresh("t-strict").await;
    let batch = Batch {
        id: 1,
        ops: vec![put(RecordKind::Contact, b"ALICE123", b"v1")],
    };
    let write = db.write(&batch).unwrap();
    let durability =
        js_sys::Reflect::get(&write.transaction, &JsValue::from_str("durability")).unwrap();
    assert_eq!(durability.as_string().as_deref(), Some("strict"));
    JsFuture::from(write.done).await.unwrap();

    // Every transaction the database opens, seen through a wrapper of the prototype's method.
    let spy = js_sys::Function::new_no_args(
        "const proto = IDBDatabase.prototype;
         const original = proto.transaction;
         const seen = [];
         proto.transaction = function (...args) {
           const tx = original.apply(this, args);
           seen.push(tx.mode + ' ' + tx.durability);
           return tx;
         };
         return { seen, restore() { proto.transaction = original; } };",
    )
    .call0(&JsValue::UNDEFINED)
    .unwrap();
    let second = Batch {
        id: 2,
        ops: vec![put(RecordKind::Contact, b"BOB45678", b"v1")],
    };
    let applied = db.apply(&second).await;
    let stored = db
        .put_client(&[("deviceLabel", JsValue::from_str("test"))])
        .await;
    let read = db.read_all().await;
    let restore: js_sys::Function = js_sys::Reflect::get(&spy, &JsValue::from_str("restore"))
        .unwrap()
        .into();
    restore.call0(&spy).unwrap();
    applied.unwrap();
    stored.unwrap();
    assert_eq!(read.unwrap().len(), 2);
    let seen: Vec<String> =
        js_sys::Array::from(&js_sys::Reflect::get(&spy, &JsValue::from_str("seen")).unwrap())
            .iter()
            .filter_map(|v| v.as_string())
            .collect();
    let readwrite: Vec<&String> = seen.iter().filter(|s| s.starts_with("readwrite")).collect();
    assert_eq!(readwrite.len(), 2, "{seen:?}");
    assert!(
        readwrite.iter().all(|s| s.as_str() == "readwrite strict"),
        "{seen:?}"
    );
    db.close();
}

#[wasm_bindgen_test]
async fn reopening_gives_back_equal_records() {
    let db = fresh("t-reload").await;
    let mut ops = Vec::new();
    for kind in RecordKind::ALL {
        ops.push(put(kind, b"self", kind.name().as_bytes()));
    }
    for i in 0_u64..50 {
        ops.push(put(RecordKind::Message, &i.to_be_bytes(), &[i as u8; 40]));
    }
    db.apply(&Batch { id: 1, ops }).await.unwrap();
    let before = sorted(db.read_all().await.unwrap());
    db.close();
    let again = Database::open("t-reload").await.unwrap();
    let after = again.read_all().await.unwrap();
    // Messages come back in key order (big-endian sequence numbers sort numerically).
    let seqs: Vec<Vec<u8>> = after
        .iter()
        .filter(|r| r.kind == RecordKind::Message && r.key.len() == 8)
        .map(|r| r.key.clone())
        .collect();
    let mut expected = seqs.clone();
    expected.sort();
    assert_eq!(seqs, expected);
    assert_eq!(sorted(after), before);
    assert_eq!(before.len(), RecordKind::ALL.len() + 50);
    again.close();
}

#[wasm_bindgen_test]
async fn two_databases_side_by_side_are_independent() {
    let a = fresh("t-device-a").await;
    let b = fresh("t-device-b").await;
    a.apply(&Batch {
        id: 1,
        ops: vec![put(RecordKind::Identity, b"self", b"A")],
    })
    .await
    .unwrap();
    b.apply(&Batch {
        id: 1,
        ops: vec![put(RecordKind::Identity, b"self", b"B")],
    })
    .await
    .unwrap();
    // Deleting A (its open connection yields to the delete) leaves B untouched.
    Database::delete("t-device-a").await.unwrap();
    assert!(
        a.read_all().await.is_err(),
        "A's connection was closed by the delete"
    );
    assert_eq!(
        sorted(b.read_all().await.unwrap()),
        vec![(RecordKind::Identity, b"self".to_vec(), b"B".to_vec())]
    );
    b.close();
}

#[wasm_bindgen_test]
async fn the_client_store_keeps_adapter_values() {
    let db = fresh("t-client").await;
    db.put_client(&[("deviceLabel", "Laptop".into())])
        .await
        .unwrap();
    let label = db.get_client("deviceLabel").await.unwrap();
    assert_eq!(label.and_then(|v| v.as_string()).as_deref(), Some("Laptop"));
    assert!(db.get_client("missing").await.unwrap().is_none());
    db.close();
}

#[wasm_bindgen_test]
fn os_rng_draws_from_the_browser() {
    let mut rng = rand_core::OsRng;
    let a = random_nonce(&mut rng);
    let b = random_nonce(&mut rng);
    assert_ne!(a, b);
    assert_ne!(a, [0; 24]);
}

#[wasm_bindgen_test]
fn sealed_messages_open_and_tampering_is_detected() {
    let mut rng = rand_core::OsRng;
    let alice = SecretKey::generate(&mut rng);
    let bob = SecretKey::generate(&mut rng);
    let nonce = random_nonce(&mut rng);
    let sealed = alice
        .box_key(&bob.public_key())
        .seal(&nonce, b"hello from the browser");
    let key = bob.box_key(&alice.public_key());
    assert_eq!(
        key.open(&nonce, &sealed).unwrap(),
        b"hello from the browser"
    );
    let mut bad = sealed.clone();
    bad[0] ^= 1;
    assert!(key.open(&nonce, &bad).is_err());
}

/// Spec §1.2 worked example (vector 1): DGK → DGPK.public and the mediator path.
#[wasm_bindgen_test]
fn device_group_key_derivation_matches_the_spec_vector() {
    let dgk: [u8; 32] =
        hex::decode("1b35ed7e1ba9993171fe4a7eed30c2831905c3a583616d61e93782da900bf8ba")
            .unwrap()
            .try_into()
            .unwrap();
    let keys = DeviceGroupKey::from_bytes(dgk).derive_keys();
    assert_eq!(
        hex::encode(keys.dgpk_public.0),
        "e77d9b02195b880c1374650ec136b44e7b0b6d9e47b479dbd5d97c470acb0b40"
    );
    let info = ClientUrlInfo::new(keys.dgpk_public, "01").unwrap();
    assert_eq!(
        info.path(),
        "e7/0a20e77d9b02195b880c1374650ec136b44e7b0b6d9e47b479dbd5d97c470acb0b401a023031"
    );
}

#[wasm_bindgen_test]
async fn opening_an_empty_database_says_to_create_or_import() {
    Database::delete("t-api-empty").await.unwrap();
    let e = tandem_client::TandemClient::open(options(&[
        ("database", "t-api-empty"),
        ("mediatorUrl", "ws://127.0.0.1:9"),
    ]))
    .await
    .unwrap_err();
    assert_eq!(
        message(&e),
        "database \"t-api-empty\" holds no identity: create one or import an ID backup first"
    );
}

#[wasm_bindgen_test]
async fn a_wrong_backup_password_is_named() {
    let mut rng = rand_core::OsRng;
    let backup = tandem_shared::id_backup::encode(
        "ABCD1234",
        &SecretKey::generate(&mut rng),
        "correct horse",
        &mut rng,
    )
    .unwrap();
    let e = tandem_client::TandemClient::import_backup(options(&[
        ("database", "t-api-backup"),
        ("mediatorUrl", "ws://127.0.0.1:9"),
        ("backup", &backup),
        ("password", "wrong horse"),
    ]))
    .await
    .unwrap_err();
    assert_eq!(message(&e), "wrong backup password (or a mistyped backup)");
}

#[wasm_bindgen_test]
async fn missing_options_are_named() {
    let e = tandem_client::TandemClient::open(options(&[]))
        .await
        .unwrap_err();
    assert_eq!(
        message(&e),
        "invalid database: a non-empty name is required"
    );
}
