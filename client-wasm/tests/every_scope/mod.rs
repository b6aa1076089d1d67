//! Checks that must hold in every global scope the package may run in — a page, a dedicated
//! worker, a shared worker — because the adapter reaches `fetch`, `WebSocket`, `indexedDB` and
//! `setTimeout` through the global object, never through `window`. Included by `browser.rs`
//! (page), `dedicated_worker.rs` and `shared_worker.rs`, one test binary per scope
//! (`wasm_bindgen_test_configure!` is per binary), each naming its scope in `SCOPE`.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise, Reflect, Uint8Array};
use rand_core::OsRng;
use tandem_client::directory::Directory;
use tandem_client::idb::Database;
use tandem_client::{ClientError, TandemClient};
use tandem_shared::app::{App, AppConfig, Effect, Identity};
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::d2d::{DeviceInfo, Platform};
use tandem_shared::keys::ClientKey;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

pub(crate) fn options(pairs: &[(&str, &str)]) -> JsValue {
    let obj = js_sys::Object::new();
    for (k, v) in pairs {
        Reflect::set(&obj, &(*k).into(), &(*v).into()).unwrap();
    }
    obj.into()
}

pub(crate) fn message(e: &JsValue) -> String {
    String::from(e.dyn_ref::<js_sys::Error>().expect("a JS Error").message())
}

fn get(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &key.into()).unwrap()
}

/// The origin the test runner serves this scope from (`location.origin` of the page or worker).
fn origin() -> String {
    get(&get(&js_sys::global(), "location"), "origin")
        .as_string()
        .unwrap()
}

/// The including binary runs where it says (`SCOPE`: `Window`, `DedicatedWorkerGlobalScope`,
/// `SharedWorkerGlobalScope`), so a worker binary fails if the runner put it in a page.
#[wasm_bindgen_test]
fn this_binary_runs_in_its_global_scope() {
    let name = get(&get(&js_sys::global(), "constructor"), "name");
    assert_eq!(name.as_string().as_deref(), Some(super::SCOPE));
}

/// A device as `create` leaves it, without the directory: the identity batch and the `client`
/// store's server key and group, so `open` connects at once.
async fn stored_device(database: &str) {
    Database::delete(database).await.unwrap();
    let db = Database::open(database).await.unwrap();
    let identity: Identity = "SCOPE001".parse().unwrap();
    let info = DeviceInfo {
        platform: Platform::Web,
        platform_details: "test".to_owned(),
        app_version: "0".to_owned(),
        label: "scope".to_owned(),
    };
    let key = ClientKey::new(SecretKey::generate(&mut OsRng));
    let mut app = App::create(
        identity,
        key,
        AppConfig::new(info, PublicKey([7; 32])),
        &mut OsRng,
    );
    while let Some(effect) = app.poll_effect() {
        if let Effect::Persist(batch) = effect {
            db.apply(&batch).await.unwrap();
            app.on_persisted(batch.id).unwrap();
        }
    }
    db.put_client(&[
        ("serverGroup", "01".into()),
        ("serverPublicKey", Uint8Array::from(&[7u8; 32][..]).into()),
    ])
    .await
    .unwrap();
    db.close();
}

#[wasm_bindgen_test]
async fn an_unreachable_directory_is_reported_with_its_url() {
    Database::delete("t-api-nodir").await.unwrap();
    let e = TandemClient::create(options(&[
        ("database", "t-api-nodir"),
        ("mediatorUrl", "ws://127.0.0.1:9"),
    ]))
    .await
    .unwrap_err();
    let text = message(&e);
    assert!(
        text.starts_with(
            "directory at http://127.0.0.1:9/directory/server-info: cannot be reached"
        ),
        "{text}"
    );
}

/// A real HTTP answer through gloo-net's `fetch` in this scope: the test runner's server has no
/// `/directory/`, so its 404 must come back as the directory's "not found".
#[wasm_bindgen_test]
async fn a_directory_answer_arrives_through_fetch() {
    let base = origin();
    let e = Directory::new(&base).server_info().await.unwrap_err();
    match e {
        ClientError::Directory { url, reason } => {
            assert_eq!(url, format!("{base}/directory/server-info"));
            assert_eq!(reason, "not found (is the directory URL right?)");
        }
        other => panic!("{other}"),
    }
}

/// The socket path in this scope: `open` connects at once, the refused connection's close code
/// (1006) reaches the core, and the core schedules a retry.
#[wasm_bindgen_test]
async fn a_refused_socket_reports_its_close_code_and_a_retry() {
    stored_device("t-scope-socket").await;
    let client = TandemClient::open(options(&[
        ("database", "t-scope-socket"),
        ("mediatorUrl", "ws://127.0.0.1:9"),
    ]))
    .await
    .unwrap();
    let seen: Rc<RefCell<Vec<JsValue>>> = Rc::default();
    let mut settle = None;
    let disconnected = Promise::new(&mut |resolve, _| settle = Some(resolve));
    let resolve = settle.unwrap();
    let log = Rc::clone(&seen);
    let listener = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
        let state = get(&event, "state").as_string();
        log.borrow_mut().push(event);
        if state.as_deref() == Some("disconnected") {
            resolve.call0(&JsValue::UNDEFINED).unwrap();
        }
    });
    let listener: Function = listener.into_js_value().unchecked_into();
    client.on("connection".to_owned(), listener).unwrap();
    JsFuture::from(disconnected).await.unwrap();
    client.close().unwrap();
    let seen = seen.borrow();
    let states: Vec<_> = seen
        .iter()
        .map(|e| get(e, "state").as_string().unwrap())
        .collect();
    assert_eq!(states, ["connecting", "disconnected"]);
    let down = seen.get(1).unwrap();
    assert_eq!(get(down, "code").as_f64(), Some(1006.0));
    assert!(get(down, "retryAt").as_f64().is_some());
    assert!(get(down, "stopped").is_undefined());
}
