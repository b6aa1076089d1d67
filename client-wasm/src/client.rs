//! `TandemClient`: the JS API around [`App`] (docs/app.md §5). Every input from the browser
//! (socket open, message, close, timer, batch durable, directory answer, a UI command) is one
//! step: call the core, then drain its effects, containers and events. Events reach JS
//! listeners only after the core is released, so a listener may call the client again.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::{Array, Function, Uint8Array};
use rand_core::OsRng;
use tandem_shared::app::{
    App, AppConfig, AppEvent, ConversationId, Effect, MessageKey, ReconnectDecision, RecordKind,
    StopReason,
};
use tandem_shared::crypto::PublicKey;
use tandem_shared::d2d::{DeviceInfo, Platform};
use tandem_shared::d2m::CloseCode;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use crate::convert;
use crate::directory::{Directory, Lookup, ServerInfo};
use crate::error::ClientError;
use crate::idb::Database;
use crate::js::{get_string, now_ms, Obj};

type Shared = Rc<RefCell<Inner>>;

/// The open WebSocket and the handlers that must live as long as it.
struct Socket {
    ws: WebSocket,
    generation: u64,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

struct Timer {
    handle: JsValue,
    at: u64,
    _callback: Closure<dyn FnMut()>,
}

struct Inner {
    app: App,
    db: Database,
    mediator_url: String,
    server_group: String,
    directory: Directory,
    socket: Option<Socket>,
    generation: u64,
    timer: Option<Timer>,
    listeners: Vec<(String, Function)>,
    device_waiters: Vec<(Function, Function)>,
    /// Rejects of promises waiting for the next connection (`renameDevice`); `close` calls
    /// them (rejecting a settled promise does nothing).
    connection_waiters: Vec<Function>,
    queued: Vec<(&'static str, JsValue)>,
    conversations_dirty: bool,
    leader: bool,
    /// A batch failed to persist: nothing is confirmed any more (a later confirmation would
    /// vouch for the lost batch too) and the device stays offline until the page reloads.
    storage_failed: bool,
    closed: bool,
    me: Weak<RefCell<Self>>,
}

impl Inner {
    fn emit(&mut self, name: &'static str, payload: JsValue) {
        self.queued.push((name, payload));
    }

    fn error(&mut self, e: &ClientError) {
        self.emit("error", Obj::new().set("message", e.to_string()).build());
    }

    /// Drains the core: effects first (batches start in order), then containers, then events.
    fn drain(&mut self) {
        if self.closed {
            return;
        }
        while let Some(effect) = self.app.poll_effect() {
            self.effect(effect);
        }
        if let Some(socket) = &self.socket {
            while let Some(bytes) = self.app.poll_transmit() {
                if socket.ws.send_with_u8_array(&bytes).is_err() {
                    break;
                }
            }
        }
        while let Some(event) = self.app.poll_event() {
            self.event(event);
        }
        if std::mem::take(&mut self.conversations_dirty) {
            let list = self.conversation_list();
            self.emit("conversations", list);
        }
        self.schedule();
    }

    fn effect(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(batch) => match self.db.write(&batch) {
                Ok(write) => {
                    let me = self.me.clone();
                    let id = batch.id;
                    spawn_local(async move {
                        let result = JsFuture::from(write.done).await;
                        step(&me, &mut |inner| match &result {
                            Ok(_) if inner.storage_failed => {}
                            Ok(_) => {
                                if let Err(e) = inner.app.on_persisted(id) {
                                    inner.error(&e.into());
                                }
                            }
                            Err(e) => inner.fail_storage(&ClientError::storage(e)),
                        });
                    });
                }
                Err(e) => self.fail_storage(&e),
            },
            Effect::LookupIdentity(identity) => {
                let me = self.me.clone();
                let directory = self.directory.clone();
                spawn_local(async move {
                    let answer = directory.lookup(identity).await;
                    step(&me, &mut |inner| match &answer {
                        Ok(Lookup::Found(key)) => {
                            inner.app.on_identity_lookup(
                                identity,
                                Some(*key),
                                now_ms(),
                                &mut OsRng,
                            );
                        }
                        Ok(Lookup::NotFound) => {
                            inner
                                .app
                                .on_identity_lookup(identity, None, now_ms(), &mut OsRng);
                        }
                        Err(e) => {
                            inner.error(e);
                            inner.app.on_identity_lookup_failed(identity);
                        }
                    });
                });
            }
            Effect::CloseWebSocket(code) => self.drop_socket(code.as_u16()),
            Effect::Connect if self.storage_failed => {}
            Effect::Connect => self.open_socket(),
            _ => {}
        }
    }

    /// Stops the device after a lost batch: offline until the page reloads from the store.
    fn fail_storage(&mut self, e: &ClientError) {
        self.emit(
            "error",
            Obj::new()
                .set("message", format!("{e}; reload the page to continue"))
                .build(),
        );
        if !std::mem::replace(&mut self.storage_failed, true) && self.socket.is_some() {
            self.drop_socket(1000);
            self.app
                .on_close(CloseCode::from_u16(1000), now_ms(), &mut OsRng);
        }
    }

    /// Closes the socket without reporting its close to the core (the core closed it).
    fn drop_socket(&mut self, code: u16) {
        if let Some(socket) = self.socket.take() {
            socket.ws.set_onopen(None);
            socket.ws.set_onmessage(None);
            socket.ws.set_onclose(None);
            // Browsers allow only 1000 and 3000–4999 from scripts.
            let code = if (3000..=4999).contains(&code) {
                code
            } else {
                1000
            };
            let _ = socket.ws.close_with_code(code);
        }
    }

    fn open_socket(&mut self) {
        self.drop_socket(1000);
        let path = match self.app.client_url_info(&self.server_group) {
            Ok(info) => info.path(),
            Err(e) => {
                self.error(&ClientError::invalid("server group", e.to_string()));
                return;
            }
        };
        let url = format!("{}/{path}", self.mediator_url.trim_end_matches('/'));
        self.emit("connection", Obj::new().set("state", "connecting").build());
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(e) => {
                self.error(&ClientError::invalid(
                    "mediatorUrl",
                    crate::js::describe(&e),
                ));
                self.app
                    .on_close(CloseCode::from_u16(5001), now_ms(), &mut OsRng);
                return;
            }
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let me = self.me.clone();
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            step(&me, &mut |inner| {
                if inner.current(generation) {
                    if let Err(e) = inner.app.connect(now_ms(), &mut OsRng) {
                        inner.error(&e.into());
                    }
                }
            });
        });
        let me = self.me.clone();
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let Some(data) = event
                .dyn_ref::<MessageEvent>()
                .map(MessageEvent::data)
                .and_then(|d| d.dyn_into::<js_sys::ArrayBuffer>().ok())
            else {
                return;
            };
            let bytes = Uint8Array::new(&data).to_vec();
            step(&me, &mut |inner| {
                if inner.current(generation) {
                    inner.app.on_binary(&bytes, now_ms(), &mut OsRng);
                }
            });
        });
        let me = self.me.clone();
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let code = event.dyn_ref::<CloseEvent>().map_or(1006, CloseEvent::code);
            step(&me, &mut |inner| {
                if inner.current(generation) {
                    inner.socket = None;
                    inner
                        .app
                        .on_close(CloseCode::from_u16(code), now_ms(), &mut OsRng);
                }
            });
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        self.socket = Some(Socket {
            ws,
            generation,
            _handlers: vec![on_open, on_message, on_close],
        });
    }

    fn current(&self, generation: u64) -> bool {
        !self.closed
            && self
                .socket
                .as_ref()
                .is_some_and(|s| s.generation == generation)
    }

    /// Keeps one `setTimeout` armed for the core's next deadline.
    fn schedule(&mut self) {
        let next = self.app.poll_timeout();
        if self.timer.as_ref().map(|t| t.at) == next {
            return;
        }
        if let Some(timer) = self.timer.take() {
            call_global("clearTimeout", &timer.handle);
        }
        let Some(at) = next else {
            return;
        };
        let me = self.me.clone();
        let callback = Closure::<dyn FnMut()>::new(move || {
            step(&me, &mut |inner| {
                inner.timer = None;
                inner.app.on_timeout(now_ms(), &mut OsRng);
            });
        });
        let delay = at.saturating_sub(now_ms()).min(i32::MAX as u64);
        let global = js_sys::global();
        let handle = js_sys::Reflect::get(&global, &JsValue::from_str("setTimeout"))
            .ok()
            .and_then(|f| f.dyn_into::<Function>().ok())
            .and_then(|f| {
                #[allow(clippy::cast_precision_loss)]
                let delay = JsValue::from(delay as f64);
                f.call2(&global, callback.as_ref(), &delay).ok()
            });
        if let Some(handle) = handle {
            self.timer = Some(Timer {
                handle,
                at,
                _callback: callback,
            });
        }
    }

    /// `message` (added) or `messageChanged` (edited, deleted; `message` null once deleted on
    /// this device): the conversation, the key and the message as it is now.
    fn message_event(
        &mut self,
        name: &'static str,
        conversation: &ConversationId,
        key: &MessageKey,
    ) {
        let message = self
            .app
            .state()
            .message(key)
            .filter(|m| !m.hidden)
            .map_or(JsValue::NULL, convert::message);
        self.emit(
            name,
            Obj::new()
                .set(
                    "conversation",
                    convert::conversation_to_string(conversation),
                )
                .set("key", convert::message_key_to_string(key))
                .set("message", message)
                .build(),
        );
        self.conversations_dirty = true;
    }

    fn event(&mut self, event: AppEvent) {
        let state = |s: &str| Obj::new().set("state", s);
        match event {
            AppEvent::Connected => {
                // The waiters' listeners settle on this event; their close hooks are done.
                self.connection_waiters.clear();
                self.emit("connection", state("connected").build());
            }
            AppEvent::Loading { received, total } => self.emit(
                "syncProgress",
                Obj::new()
                    .set("received", received)
                    .set("total", total)
                    .build(),
            ),
            AppEvent::Online => self.emit("connection", state("online").build()),
            AppEvent::Leader => {
                self.leader = true;
                self.emit("leader", Obj::new().set("leader", true).build());
            }
            AppEvent::MessageAdded { conversation, key } => {
                self.message_event("message", &conversation, &key);
            }
            AppEvent::MessageChanged { conversation, key } => {
                self.message_event("messageChanged", &conversation, &key);
            }
            AppEvent::MessageState { key, state: s } => {
                let conversation = self
                    .app
                    .state()
                    .message(&key)
                    .map(|m| convert::conversation_to_string(&m.conversation));
                self.emit(
                    "messageState",
                    Obj::new()
                        .set("key", convert::message_key_to_string(&key))
                        .set(
                            "conversation",
                            conversation.map_or(JsValue::NULL, JsValue::from),
                        )
                        .set("state", convert::state_name(s))
                        .build(),
                );
                self.conversations_dirty = true;
            }
            AppEvent::ContactChanged(id) | AppEvent::ContactRemoved(id) => {
                let contact = self
                    .app
                    .state()
                    .contact(&id)
                    .map_or(JsValue::NULL, convert::contact);
                self.emit(
                    "contact",
                    Obj::new()
                        .set("identity", id.as_str())
                        .set("contact", contact)
                        .build(),
                );
            }
            AppEvent::ContactNotFound(id) => {
                let message = ClientError::IdentityNotFound(id.to_string()).to_string();
                self.emit(
                    "contactNotFound",
                    Obj::new()
                        .set("identity", id.as_str())
                        .set("message", message)
                        .build(),
                );
            }
            AppEvent::LookupFailed(id) => self.emit(
                "error",
                Obj::new()
                    .set(
                        "message",
                        format!("the directory could not be reached to look up {id}; try again"),
                    )
                    .build(),
            ),
            AppEvent::GroupChanged(id) | AppEvent::GroupRemoved(id) => {
                let group = self
                    .app
                    .state()
                    .group(&id)
                    .map_or(JsValue::NULL, convert::group);
                self.emit(
                    "group",
                    Obj::new()
                        .set("id", convert::group_to_string(&id))
                        .set("group", group)
                        .build(),
                );
                self.conversations_dirty = true;
            }
            AppEvent::DistributionListChanged(id) | AppEvent::DistributionListRemoved(id) => {
                let list = self
                    .app
                    .state()
                    .distribution_lists()
                    .get(&id)
                    .map_or(JsValue::NULL, convert::distribution_list);
                self.emit(
                    "distributionList",
                    Obj::new()
                        .set("id", convert::id_to_string(id))
                        .set("list", list)
                        .build(),
                );
            }
            AppEvent::SettingsChanged => {
                let settings = convert::settings(self.app.state().settings());
                self.emit("settings", settings);
            }
            AppEvent::ProfileChanged => {
                let nickname = self.app.state().profile().nickname.clone();
                self.emit("profile", Obj::new().set("nickname", nickname).build());
            }
            AppEvent::Typing { identity, typing } => self.emit(
                "typing",
                Obj::new()
                    .set("identity", identity.as_str())
                    .set("typing", typing)
                    .build(),
            ),
            AppEvent::Dropped(reason) => self.emit(
                "dropped",
                Obj::new()
                    .set("reason", convert::dropped_name(&reason))
                    .build(),
            ),
            AppEvent::Devices(devices) => {
                let own = self.app.state().own().device_id;
                let list: Array = devices.iter().map(|d| convert::device(d, own)).collect();
                for (resolve, _) in self.device_waiters.drain(..) {
                    let _ = resolve.call1(&JsValue::UNDEFINED, &list);
                }
                self.emit("devices", list.into());
            }
            AppEvent::NewDeviceSyncSent {
                device_id,
                messages,
            } => self.emit(
                "newDeviceSync",
                Obj::new()
                    .set("deviceId", convert::id_to_string(device_id))
                    .set("messages", messages)
                    .build(),
            ),
            AppEvent::SyncFailed { scope, code } => self.emit(
                "syncFailed",
                Obj::new()
                    .set("scope", scope.as_str_name())
                    .set("code", code.as_u16())
                    .set("reason", code.reason())
                    .build(),
            ),
            AppEvent::Alert(text) => self.emit("alert", Obj::new().set("text", text).build()),
            AppEvent::ClockOffset { offset_ms } => {
                // Far below 2^53 for any real clock; a number is what a UI compares.
                #[allow(clippy::cast_precision_loss)]
                let offset_ms = offset_ms as f64;
                self.emit("clockOffset", Obj::new().set("offsetMs", offset_ms).build());
            }
            AppEvent::Disconnected { code, next } => {
                let mut payload = state("disconnected")
                    .set("code", code.as_u16())
                    .set("reason", code.reason());
                match next {
                    ReconnectDecision::RetryAt(at) => {
                        #[allow(clippy::cast_precision_loss)]
                        let at = at as f64;
                        payload = payload.set("retryAt", at);
                    }
                    ReconnectDecision::Stop(reason) => {
                        self.connection_waiters.clear();
                        payload = payload.set("stopped", stop_message(&reason));
                    }
                }
                self.emit("connection", payload.build());
                if std::mem::take(&mut self.leader) {
                    self.emit("leader", Obj::new().set("leader", false).build());
                }
                let error: JsValue =
                    js_sys::Error::new("disconnected before the device list came").into();
                for (_, reject) in self.device_waiters.drain(..) {
                    let _ = reject.call1(&JsValue::UNDEFINED, &error);
                }
            }
            _ => {}
        }
    }

    fn conversation_list(&self) -> JsValue {
        let state = self.app.state();
        state
            .conversation_list()
            .iter()
            .map(|s| convert::summary(s, state.messages().get(&s.last_seq)))
            .collect::<Array>()
            .into()
    }
}

impl Drop for Inner {
    /// `free()` from JS or a dropped client: the socket and timer must not call into freed
    /// closures.
    fn drop(&mut self) {
        self.drop_socket(1000);
        if let Some(timer) = self.timer.take() {
            call_global("clearTimeout", &timer.handle);
        }
    }
}

fn stop_message(reason: &StopReason) -> String {
    match reason {
        StopReason::NeedsUserAction(code) => format!(
            "the mediator refused this device ({} {}); call retryNow() after fixing it",
            code.as_u16(),
            code.reason()
        ),
        StopReason::ChatServerRefused => {
            "the chat server refused the login; call retryNow() to try again".to_owned()
        }
        _ => "stopped; call retryNow() to try again".to_owned(),
    }
}

fn call_global(name: &str, arg: &JsValue) {
    let global = js_sys::global();
    if let Some(f) = js_sys::Reflect::get(&global, &JsValue::from_str(name))
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
    {
        let _ = f.call1(&global, arg);
    }
}

/// One input: run `f` on the core, drain, then tell the listeners (with the core released).
/// Not generic: as `impl FnOnce` it was copied into every command and callback with the drain
/// and dispatch inlined (docs/client.md "Size").
#[inline(never)]
fn step(me: &Weak<RefCell<Inner>>, f: &mut dyn FnMut(&mut Inner)) {
    let Some(shared) = me.upgrade() else {
        return;
    };
    let (queued, listeners) = {
        let Ok(mut inner) = shared.try_borrow_mut() else {
            return;
        };
        if inner.closed {
            return;
        }
        f(&mut inner);
        inner.drain();
        (std::mem::take(&mut inner.queued), inner.listeners.clone())
    };
    dispatch(&queued, &listeners);
}

fn dispatch(queued: &[(&'static str, JsValue)], listeners: &[(String, Function)]) {
    for (name, payload) in queued {
        for (_, callback) in listeners.iter().filter(|(n, _)| n == name) {
            // A throwing listener must not stop the others.
            let _ = callback.call1(&JsValue::UNDEFINED, payload);
        }
    }
}

/// Settles at the next `connection` event that ends a connection attempt: resolves on
/// `connected`, rejects on `disconnected` with `stopped` (a retry keeps waiting). A one-shot
/// listener that removes itself; `renameDevice` waits on it.
fn next_connection(shared: &Shared) -> Result<js_sys::Promise, JsValue> {
    let mut settle = None;
    let promise = js_sys::Promise::new(&mut |resolve, reject| settle = Some((resolve, reject)));
    let Some((resolve, reject)) = settle else {
        return Err(ClientError::invalid("call", "promise executor did not run").into());
    };
    let on_close = reject.clone();
    let me = Rc::downgrade(shared);
    let own: Rc<RefCell<Option<Function>>> = Rc::default();
    let own_in_listener = Rc::clone(&own);
    let listener = Closure::<dyn FnMut(JsValue)>::new(move |payload: JsValue| {
        let state = get_string(&payload, "state");
        let _ = match (state.as_deref(), get_string(&payload, "stopped")) {
            (Some("connected"), _) => resolve.call0(&JsValue::UNDEFINED),
            (Some("disconnected"), Some(why)) => reject.call1(
                &JsValue::UNDEFINED,
                &js_sys::Error::new(&format!(
                    "the label is stored but the device could not reconnect: {why}"
                )),
            ),
            _ => return,
        };
        // Listeners run after the core is released, so the client can be borrowed here.
        if let (Some(shared), Some(function)) = (me.upgrade(), own_in_listener.borrow_mut().take())
        {
            if let Ok(mut inner) = shared.try_borrow_mut() {
                inner.listeners.retain(|(_, f)| f != &function);
            }
        }
    });
    let function: Function = listener.into_js_value().unchecked_into();
    *own.borrow_mut() = Some(function.clone());
    let mut inner = shared
        .try_borrow_mut()
        .map_err(|_| JsValue::from(ClientError::invalid("call", "re-entered the client")))?;
    inner.listeners.push(("connection".to_owned(), function));
    inner.connection_waiters.push(on_close);
    Ok(promise)
}

/// Options shared by `create`, `importBackup` and `open`.
struct Options {
    database: String,
    mediator_url: Option<String>,
    directory_url: Option<String>,
    device_label: Option<String>,
}

impl Options {
    fn parse(value: &JsValue) -> Result<Self, ClientError> {
        if !value.is_object() {
            return Err(ClientError::invalid("options", "expected an object"));
        }
        let database = get_string(value, "database")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ClientError::invalid("database", "a non-empty name is required"))?;
        Ok(Self {
            database,
            mediator_url: get_string(value, "mediatorUrl"),
            directory_url: get_string(value, "directoryUrl"),
            device_label: get_string(value, "deviceLabel"),
        })
    }
}

/// The directory base when none is given: the mediator's origin over HTTP(S) (the Worker
/// forwards `/directory/*`, DESIGN §2.6).
fn directory_from_mediator(mediator: &str) -> String {
    if let Some(rest) = mediator.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = mediator.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        mediator.to_owned()
    }
}

/// The mediator URL (required when making a new device) and the directory base (given, or the
/// mediator's origin).
fn new_device_endpoints(options: &Options) -> Result<(String, String), ClientError> {
    let mediator_url = options
        .mediator_url
        .clone()
        .ok_or_else(|| ClientError::invalid("mediatorUrl", "required"))?;
    let directory_url = options
        .directory_url
        .clone()
        .unwrap_or_else(|| directory_from_mediator(&mediator_url));
    Ok((mediator_url, directory_url))
}

/// What the client store keeps besides the core's records.
struct Setup {
    mediator_url: String,
    directory_url: String,
    device_label: String,
    server: ServerInfo,
}

fn device_info(label: &str) -> DeviceInfo {
    DeviceInfo {
        platform: Platform::Web,
        platform_details: "Browser".to_owned(),
        app_version: env!("CARGO_PKG_VERSION").to_owned(),
        label: label.to_owned(),
    }
}

async fn save_setup(db: &Database, setup: &Setup) -> Result<(), ClientError> {
    db.put_client(&[
        ("mediatorUrl", setup.mediator_url.as_str().into()),
        ("directoryUrl", setup.directory_url.as_str().into()),
        ("deviceLabel", setup.device_label.as_str().into()),
        ("serverGroup", setup.server.server_group.as_str().into()),
        (
            "serverPublicKey",
            Uint8Array::from(setup.server.public_key.0.as_slice()).into(),
        ),
    ])
    .await
}

async fn load_setup(db: &Database, options: &Options) -> Result<Setup, ClientError> {
    let stored = |key: &'static str| async move {
        db.get_client(key)
            .await
            .map(|v| v.and_then(|v| v.as_string()))
    };
    let mediator_url = match &options.mediator_url {
        Some(url) => url.clone(),
        None => stored("mediatorUrl")
            .await?
            .ok_or_else(|| ClientError::invalid("mediatorUrl", "required (none is stored)"))?,
    };
    let directory_url = match &options.directory_url {
        Some(url) => url.clone(),
        None => stored("directoryUrl")
            .await?
            .unwrap_or_else(|| directory_from_mediator(&mediator_url)),
    };
    let device_label = match &options.device_label {
        Some(label) => label.clone(),
        None => stored("deviceLabel").await?.unwrap_or_default(),
    };
    let key = db
        .get_client("serverPublicKey")
        .await?
        .and_then(|v| v.dyn_into::<Uint8Array>().ok())
        .and_then(|a| <[u8; 32]>::try_from(a.to_vec()).ok());
    let group = stored("serverGroup").await?;
    let server = match (key, group) {
        (Some(key), Some(server_group)) => ServerInfo {
            public_key: PublicKey(key),
            server_group,
        },
        _ => Directory::new(&directory_url).server_info().await?,
    };
    Ok(Setup {
        mediator_url,
        directory_url,
        device_label,
        server,
    })
}

async fn open_empty(options: &Options) -> Result<Database, ClientError> {
    let db = Database::open(&options.database).await?;
    let records = db.read_all().await?;
    if let Some(own) = records.iter().find(|r| r.kind == RecordKind::Identity) {
        let identity = own
            .value
            .get(1..9)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        db.close();
        return Err(ClientError::IdentityExists(
            options.database.clone(),
            identity,
        ));
    }
    Ok(db)
}

/// Persists the first batches (the identity) before the client is handed out, so that a reload
/// right after `create` finds the device.
async fn persist_initial(app: &mut App, db: &Database) -> Result<(), ClientError> {
    let mut later = Vec::new();
    while let Some(effect) = app.poll_effect() {
        match effect {
            Effect::Persist(batch) => {
                db.apply(&batch).await?;
                app.on_persisted(batch.id)?;
            }
            other => later.push(other),
        }
    }
    // Nothing but batches comes out of a fresh core; anything else would be dropped here.
    debug_assert!(later.is_empty());
    Ok(())
}

/// A Tandem device in this browser tab.
#[wasm_bindgen]
pub struct TandemClient {
    inner: Shared,
}

impl core::fmt::Debug for TandemClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TandemClient").finish_non_exhaustive()
    }
}

/// The core's settings for this device: CSP on demand on (docs/protocol.md): a tab left open
/// keeps no chat server connection while nothing happens, so its mediator group can hibernate.
fn app_config(setup: &Setup) -> AppConfig {
    let mut config = AppConfig::new(device_info(&setup.device_label), setup.server.public_key);
    config.csp_idle_ms = Some(tandem_shared::app::CSP_IDLE_MS);
    config
}

impl TandemClient {
    /// A new device in an empty database: stores the setup, creates the core and persists its
    /// first batch (the identity) before the client is handed out.
    async fn start_new(
        identity: tandem_shared::app::Identity,
        ck: tandem_shared::keys::ClientKey,
        db: Database,
        setup: Setup,
    ) -> Result<Self, ClientError> {
        save_setup(&db, &setup).await?;
        let config = app_config(&setup);
        let mut app = App::create(identity, ck, config, &mut OsRng);
        persist_initial(&mut app, &db).await?;
        Ok(Self::start(app, db, setup))
    }

    fn start(app: App, db: Database, setup: Setup) -> Self {
        let inner = Rc::new_cyclic(|me| {
            RefCell::new(Inner {
                app,
                db,
                mediator_url: setup.mediator_url,
                server_group: setup.server.server_group,
                directory: Directory::new(&setup.directory_url),
                socket: None,
                generation: 0,
                timer: None,
                listeners: Vec::new(),
                device_waiters: Vec::new(),
                connection_waiters: Vec::new(),
                queued: Vec::new(),
                conversations_dirty: false,
                leader: false,
                storage_failed: false,
                closed: false,
                me: me.clone(),
            })
        });
        // Connect once the caller had a chance to add listeners (next microtask).
        let me = Rc::downgrade(&inner);
        spawn_local(async move {
            step(&me, &mut Inner::open_socket);
        });
        Self { inner }
    }

    /// Runs a command on the core and drains; errors become JS `Error`s.
    fn command<R>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<R, ClientError>,
    ) -> Result<R, JsValue> {
        let mut f = Some(f);
        let mut out = None;
        self.run(&mut |inner| {
            if let Some(f) = f.take() {
                out = Some(f(inner));
            }
        })?;
        match out {
            Some(result) => result.map_err(JsValue::from),
            None => Err(ClientError::invalid(
                "call",
                "the client is busy; call again from a later task",
            )
            .into()),
        }
    }

    /// [`Self::command`]'s checks and step, compiled once.
    #[inline(never)]
    fn run(&self, f: &mut dyn FnMut(&mut Inner)) -> Result<(), JsValue> {
        let me = Rc::downgrade(&self.inner);
        {
            let inner = self
                .inner
                .try_borrow()
                .map_err(|_| ClientError::invalid("call", "re-entered the client"))?;
            if inner.closed {
                return Err(ClientError::Closed.into());
            }
        }
        step(&me, f);
        Ok(())
    }

    fn read<R>(&self, f: impl FnOnce(&Inner) -> R) -> Result<R, JsValue> {
        let inner = self
            .inner
            .try_borrow()
            .map_err(|_| JsValue::from(ClientError::invalid("call", "re-entered the client")))?;
        if inner.closed {
            return Err(ClientError::Closed.into());
        }
        Ok(f(&inner))
    }
}

impl TandemClient {
    /// `create` and `importBackup` in one body: the two exports' futures were two copies of
    /// the same steps (≈ 5.4 KB each before wasm-opt; docs/client.md "Size").
    async fn new_device(options: JsValue, from_backup: bool) -> Result<Self, ClientError> {
        let backup = if from_backup {
            let backup = get_string(&options, "backup")
                .ok_or_else(|| ClientError::invalid("backup", "required"))?;
            let password = get_string(&options, "password")
                .ok_or_else(|| ClientError::invalid("password", "required"))?;
            Some((backup, password))
        } else {
            None
        };
        let options = Options::parse(&options)?;
        let (mediator_url, directory_url) = new_device_endpoints(&options)?;
        let directory = Directory::new(&directory_url);
        let decoded = match backup {
            Some((backup, password)) => {
                let decoded = tandem_shared::id_backup::decode(&backup, &password)?;
                let identity = convert::identity(&decoded.identity)?;
                let ck = tandem_shared::keys::ClientKey::new(decoded.ck);
                match directory.lookup(identity).await? {
                    Lookup::NotFound => {
                        return Err(ClientError::IdentityNotFound(identity.to_string()))
                    }
                    Lookup::Found(key) if key != ck.public_key() => {
                        return Err(ClientError::invalid(
                            "backup",
                            format!("its key does not match the directory's key for {identity}"),
                        ))
                    }
                    Lookup::Found(_) => {}
                }
                Some((identity, ck))
            }
            None => None,
        };
        let db = open_empty(&options).await?;
        let server = directory.server_info().await?;
        let (identity, ck) = match decoded {
            Some(found) => found,
            None => directory.create_identity(&mut OsRng).await?,
        };
        let setup = Setup {
            mediator_url,
            directory_url,
            device_label: options.device_label.clone().unwrap_or_default(),
            server,
        };
        Self::start_new(identity, ck, db, setup).await
    }
}

fn conversation(text: &str) -> Result<ConversationId, ClientError> {
    convert::conversation_from_string(text)
}

#[wasm_bindgen]
impl TandemClient {
    /// A new identity from the directory, in a new database.
    #[wasm_bindgen(js_name = create)]
    pub async fn create(
        #[wasm_bindgen(unchecked_param_type = "CreateOptions")] options: JsValue,
    ) -> Result<Self, JsValue> {
        Ok(Self::new_device(options, false).await?)
    }

    /// An identity from a Threema ID backup, in a new database; its state comes from the
    /// identity's other devices.
    #[wasm_bindgen(js_name = importBackup)]
    pub async fn import_backup(
        #[wasm_bindgen(unchecked_param_type = "ImportOptions")] options: JsValue,
    ) -> Result<Self, JsValue> {
        Ok(Self::new_device(options, true).await?)
    }
    /// The device stored in a database (after a reload).
    #[wasm_bindgen(js_name = open)]
    pub async fn open(
        #[wasm_bindgen(unchecked_param_type = "OpenOptions")] options: JsValue,
    ) -> Result<Self, JsValue> {
        let options = Options::parse(&options)?;
        let db = Database::open(&options.database).await?;
        let records = db.read_all().await?;
        if !records.iter().any(|r| r.kind == RecordKind::Identity) {
            db.close();
            return Err(ClientError::NoIdentity(options.database).into());
        }
        let setup = load_setup(&db, &options).await?;
        save_setup(&db, &setup).await?;
        let config = app_config(&setup);
        let app = App::open(records, config).map_err(ClientError::from)?;
        Ok(Self::start(app, db, setup))
    }

    /// Whether `database` holds a device (an identity): `open` it if so, else `create` or
    /// `importBackup`. Reads IndexedDB only (no connection, no device opened) and never creates
    /// the database.
    #[wasm_bindgen(js_name = hasIdentity, unchecked_return_type = "Promise<boolean>")]
    pub fn has_identity(database: &str) -> js_sys::Promise {
        crate::idb::has_identity(database)
    }

    /// Deletes a database and everything this device stored in it.
    #[wasm_bindgen(js_name = deleteDatabase)]
    pub async fn delete_database(database: String) -> Result<(), JsValue> {
        Database::delete(&database).await?;
        Ok(())
    }

    /// Listens to an event (see `TandemEvents` in the typings).
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, name: String, callback: Function) -> Result<(), JsValue> {
        let mut inner = self
            .inner
            .try_borrow_mut()
            .map_err(|_| JsValue::from(ClientError::invalid("call", "re-entered the client")))?;
        inner.listeners.push((name, callback));
        Ok(())
    }

    /// Stops listening.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, name: String, callback: Function) -> Result<(), JsValue> {
        let mut inner = self
            .inner
            .try_borrow_mut()
            .map_err(|_| JsValue::from(ClientError::invalid("call", "re-entered the client")))?;
        inner.listeners.retain(|(n, f)| {
            !(*n == name && JsValue::from(f.clone()) == JsValue::from(callback.clone()))
        });
        Ok(())
    }

    /// The own identity.
    #[wasm_bindgen(getter)]
    pub fn identity(&self) -> Result<String, JsValue> {
        self.read(|i| i.app.state().own().identity.to_string())
    }

    /// This device's id in the group (16 hex digits).
    #[wasm_bindgen(getter, js_name = deviceId)]
    pub fn device_id(&self) -> Result<String, JsValue> {
        self.read(|i| convert::id_to_string(i.app.state().own().device_id))
    }

    /// Whether the device is connected, up to date, leader.
    #[wasm_bindgen(getter, js_name = isOnline)]
    pub fn is_online(&self) -> Result<bool, JsValue> {
        self.read(|i| i.app.is_online())
    }

    /// The longest text `sendText` accepts, in UTF-8 bytes (`new TextEncoder().encode(text).length`):
    /// an app can split or warn before a paste is refused.
    #[wasm_bindgen(getter, js_name = maxTextBytes)]
    pub fn max_text_bytes(&self) -> u32 {
        u32::try_from(tandem_shared::app::MAX_TEXT_LEN).unwrap_or(u32::MAX)
    }

    /// Whether this device receives for the group.
    #[wasm_bindgen(getter, js_name = isLeader)]
    pub fn is_leader(&self) -> Result<bool, JsValue> {
        self.read(|i| i.app.is_leader())
    }

    /// Whether closing the tab now would lose a step (warn in `beforeunload`).
    #[wasm_bindgen(getter, js_name = hasUnsavedChanges)]
    pub fn has_unsaved_changes(&self) -> Result<bool, JsValue> {
        self.read(|i| i.app.has_unconfirmed_batches())
    }

    /// Conversations, most recent first.
    #[wasm_bindgen(unchecked_return_type = "ConversationSummary[]")]
    pub fn conversations(&self) -> Result<JsValue, JsValue> {
        self.read(Inner::conversation_list)
    }

    /// The messages of a conversation, in order.
    #[wasm_bindgen(unchecked_return_type = "Message[]")]
    pub fn messages(
        &self,
        #[wasm_bindgen(js_name = "conversationId")] conversation_id: &str,
    ) -> Result<JsValue, JsValue> {
        let id = conversation(conversation_id)?;
        self.read(|i| {
            i.app
                .state()
                .conversation(&id)
                .map(convert::message)
                .collect::<Array>()
                .into()
        })
    }

    /// Every contact.
    #[wasm_bindgen(unchecked_return_type = "Contact[]")]
    pub fn contacts(&self) -> Result<JsValue, JsValue> {
        self.read(|i| {
            i.app
                .state()
                .contacts()
                .values()
                .map(convert::contact)
                .collect::<Array>()
                .into()
        })
    }

    /// Every group.
    #[wasm_bindgen(unchecked_return_type = "Group[]")]
    pub fn groups(&self) -> Result<JsValue, JsValue> {
        self.read(|i| {
            i.app
                .state()
                .groups()
                .values()
                .map(convert::group)
                .collect::<Array>()
                .into()
        })
    }

    /// Every distribution list.
    #[wasm_bindgen(js_name = distributionLists, unchecked_return_type = "DistributionList[]")]
    pub fn distribution_lists(&self) -> Result<JsValue, JsValue> {
        self.read(|i| {
            i.app
                .state()
                .distribution_lists()
                .values()
                .map(convert::distribution_list)
                .collect::<Array>()
                .into()
        })
    }

    /// The settings.
    #[wasm_bindgen(unchecked_return_type = "Settings")]
    pub fn settings(&self) -> Result<JsValue, JsValue> {
        self.read(|i| convert::settings(i.app.state().settings()))
    }

    /// The own nickname.
    pub fn nickname(&self) -> Result<String, JsValue> {
        self.read(|i| i.app.state().profile().nickname.clone())
    }

    /// Sends a text; returns the message key. It is stored and shown at once.
    #[wasm_bindgen(js_name = sendText)]
    pub fn send_text(
        &self,
        #[wasm_bindgen(js_name = "conversationId")] conversation_id: &str,
        text: &str,
    ) -> Result<String, JsValue> {
        let id = conversation(conversation_id)?;
        self.command(|i| {
            let key = i.app.send_text(id, text, now_ms(), &mut OsRng)?;
            Ok(convert::message_key_to_string(&key))
        })
    }

    /// Edits an own message for everyone (Threema's edit message; up to 6 hours after it was
    /// written). The text changes here at once; `messageChanged` follows on every device.
    #[wasm_bindgen(js_name = editMessage)]
    pub fn edit_message(
        &self,
        #[wasm_bindgen(js_name = "messageKey")] message_key: &str,
        text: &str,
    ) -> Result<(), JsValue> {
        let key = convert::message_key_from_string(message_key)?;
        self.command(|i| Ok(i.app.edit_message(key, text, now_ms(), &mut OsRng)?))
    }

    /// Deletes a message: `forEveryone` (an own message, up to 6 hours after it was written;
    /// Threema's delete message: its text is gone on every device and at every receiver), or on
    /// this device only (any message).
    #[wasm_bindgen(js_name = deleteMessage)]
    pub fn delete_message(
        &self,
        #[wasm_bindgen(js_name = "messageKey")] message_key: &str,
        #[wasm_bindgen(js_name = "forEveryone")] for_everyone: bool,
    ) -> Result<(), JsValue> {
        let key = convert::message_key_from_string(message_key)?;
        self.command(|i| {
            Ok(i.app
                .delete_message(key, for_everyone, now_ms(), &mut OsRng)?)
        })
    }

    /// Puts an emoji on any message (`apply`) or takes it off (Threema's reaction).
    pub fn react(
        &self,
        #[wasm_bindgen(js_name = "messageKey")] message_key: &str,
        emoji: &str,
        apply: bool,
    ) -> Result<(), JsValue> {
        let key = convert::message_key_from_string(message_key)?;
        self.command(|i| Ok(i.app.react(key, emoji, apply, now_ms(), &mut OsRng)?))
    }

    /// Marks a conversation read; returns how many messages changed.
    #[wasm_bindgen(js_name = markRead)]
    pub fn mark_read(
        &self,
        #[wasm_bindgen(js_name = "conversationId")] conversation_id: &str,
    ) -> Result<u32, JsValue> {
        let id = conversation(conversation_id)?;
        self.command(|i| {
            Ok(u32::try_from(i.app.mark_read(id, now_ms(), &mut OsRng)).unwrap_or(u32::MAX))
        })
    }

    /// Tells a contact the user is (or stopped) typing.
    #[wasm_bindgen(js_name = sendTyping)]
    pub fn send_typing(&self, identity: &str, typing: bool) -> Result<(), JsValue> {
        let identity = convert::identity(identity)?;
        self.command(|i| Ok(i.app.send_typing(identity, typing, now_ms(), &mut OsRng)?))
    }

    /// Adds a contact by identity: a `contact` or `contactNotFound` event follows.
    #[wasm_bindgen(js_name = addContact)]
    pub fn add_contact(&self, identity: &str) -> Result<(), JsValue> {
        let identity = convert::identity(identity)?;
        self.command(|i| Ok(i.app.add_contact(identity)?))
    }

    /// Renames a contact; `undefined` keeps a name.
    #[wasm_bindgen(js_name = renameContact)]
    pub fn rename_contact(
        &self,
        identity: &str,
        #[wasm_bindgen(js_name = "firstName")] first_name: Option<String>,
        #[wasm_bindgen(js_name = "lastName")] last_name: Option<String>,
    ) -> Result<(), JsValue> {
        let identity = convert::identity(identity)?;
        self.command(|i| {
            Ok(i.app.rename_contact(
                identity,
                first_name.as_deref(),
                last_name.as_deref(),
                now_ms(),
                &mut OsRng,
            )?)
        })
    }

    /// Changes settings: only the fields given.
    #[wasm_bindgen(js_name = updateSettings)]
    pub fn update_settings(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Partial<Settings>")] update: JsValue,
    ) -> Result<(), JsValue> {
        let update = convert::settings_update(&update)?;
        self.command(|i| {
            i.app.update_settings(update, now_ms(), &mut OsRng);
            Ok(())
        })
    }

    /// Sets the own nickname.
    #[wasm_bindgen(js_name = setNickname)]
    pub fn set_nickname(&self, nickname: &str) -> Result<(), JsValue> {
        self.command(|i| {
            i.app.set_nickname(nickname, now_ms(), &mut OsRng);
            Ok(())
        })
    }

    /// Creates a distribution list; returns its id.
    #[wasm_bindgen(js_name = createDistributionList)]
    pub fn create_distribution_list(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "string[]")] members: JsValue,
    ) -> Result<String, JsValue> {
        let members = convert::identities(&members)?;
        self.command(|i| {
            let id = i
                .app
                .create_distribution_list(name, members, now_ms(), &mut OsRng)?;
            Ok(convert::id_to_string(id))
        })
    }

    /// Renames a distribution list and/or replaces its members (`undefined` keeps).
    #[wasm_bindgen(js_name = updateDistributionList)]
    pub fn update_distribution_list(
        &self,
        id: &str,
        name: Option<String>,
        #[wasm_bindgen(unchecked_param_type = "string[] | undefined")] members: JsValue,
    ) -> Result<(), JsValue> {
        let id = convert::id_from_string("distribution list", id)?;
        let members = if members.is_undefined() || members.is_null() {
            None
        } else {
            Some(convert::identities(&members)?)
        };
        self.command(|i| {
            Ok(i.app.update_distribution_list(
                id,
                name.as_deref(),
                members,
                now_ms(),
                &mut OsRng,
            )?)
        })
    }

    /// Deletes a distribution list.
    #[wasm_bindgen(js_name = deleteDistributionList)]
    pub fn delete_distribution_list(&self, id: &str) -> Result<(), JsValue> {
        let id = convert::id_from_string("distribution list", id)?;
        self.command(|i| Ok(i.app.delete_distribution_list(id, now_ms(), &mut OsRng)?))
    }

    /// Creates a group with this user as creator; returns its id (`CREATOR/HEXID`).
    #[wasm_bindgen(js_name = createGroup)]
    pub fn create_group(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "string[]")] members: JsValue,
    ) -> Result<String, JsValue> {
        let members = convert::identities(&members)?;
        self.command(|i| {
            let id = i.app.create_group(name, members, now_ms(), &mut OsRng)?;
            Ok(convert::group_to_string(&id))
        })
    }

    /// Renames a group this user created.
    #[wasm_bindgen(js_name = renameGroup)]
    pub fn rename_group(&self, id: &str, name: &str) -> Result<(), JsValue> {
        let id = convert::group_from_string(id)?;
        self.command(|i| Ok(i.app.rename_group(id, name, now_ms(), &mut OsRng)?))
    }

    /// Replaces the members of a group this user created.
    #[wasm_bindgen(js_name = setGroupMembers)]
    pub fn set_group_members(
        &self,
        id: &str,
        #[wasm_bindgen(unchecked_param_type = "string[]")] members: JsValue,
    ) -> Result<(), JsValue> {
        let id = convert::group_from_string(id)?;
        let members = convert::identities(&members)?;
        self.command(|i| Ok(i.app.set_group_members(id, members, now_ms(), &mut OsRng)?))
    }

    /// Leaves a group (its creator dissolves it).
    #[wasm_bindgen(js_name = leaveGroup)]
    pub fn leave_group(&self, id: &str) -> Result<(), JsValue> {
        let id = convert::group_from_string(id)?;
        self.command(|i| Ok(i.app.leave_group(id, now_ms(), &mut OsRng)?))
    }

    /// The group's devices (needs a connection); a `devices` event carries them too.
    #[wasm_bindgen(js_name = listDevices, unchecked_return_type = "Promise<Device[]>")]
    pub fn list_devices(&self) -> Result<js_sys::Promise, JsValue> {
        let mut waiter = None;
        let promise = js_sys::Promise::new(&mut |resolve, reject| waiter = Some((resolve, reject)));
        self.command(|i| {
            i.app.request_devices(now_ms(), &mut OsRng)?;
            if let Some(waiter) = waiter.take() {
                i.device_waiters.push(waiter);
            }
            Ok(())
        })?;
        Ok(promise)
    }

    /// Removes a device from the group (this device's own id unlinks it).
    #[wasm_bindgen(js_name = dropDevice)]
    pub fn drop_device(
        &self,
        #[wasm_bindgen(js_name = "deviceId")] device_id: &str,
    ) -> Result<(), JsValue> {
        let id = convert::id_from_string("device id", device_id)?;
        self.command(|i| Ok(i.app.drop_device(id, now_ms(), &mut OsRng)?))
    }

    /// Renames this device. The label is stored, and a device that is connected (or connecting)
    /// reconnects at once, because d2m can change a device's info only with a new `ClientHello`
    /// (spec §7). The promise resolves when that connection is accepted (the `connection` event
    /// with state `connected`): from then on a sibling's `listDevices` shows the new label.
    /// Offline, it resolves once the label is stored and the next connection announces it. It
    /// rejects if the reconnect logic stops (docs/client.md, "Decisions").
    #[wasm_bindgen(js_name = renameDevice)]
    pub async fn rename_device(&self, label: String) -> Result<(), JsValue> {
        if label.len() > tandem_shared::d2d::MAX_LABEL_LEN {
            return Err(ClientError::invalid(
                "label",
                format!("at most {} bytes", tandem_shared::d2d::MAX_LABEL_LEN),
            )
            .into());
        }
        let db = self.read(|i| i.db.clone())?;
        db.put_client(&[("deviceLabel", label.as_str().into())])
            .await?;
        let info = device_info(&label);
        self.command(|i| {
            i.app.set_device_info(info, now_ms());
            Ok(())
        })?;
        // After the drain: a socket exists iff a connection is being (re)opened.
        if self.read(|i| i.socket.is_some())? {
            JsFuture::from(next_connection(&self.inner)?).await?;
        }
        Ok(())
    }

    /// The identity as a Threema ID backup protected by `password` (at least 8 characters).
    #[wasm_bindgen(js_name = exportBackup)]
    pub fn export_backup(&self, password: &str) -> Result<String, JsValue> {
        self.read(|i| {
            let own = i.app.state().own();
            tandem_shared::id_backup::encode(
                own.identity.as_str(),
                own.client_key.secret(),
                password,
                &mut OsRng,
            )
        })?
        .map_err(|e| ClientError::from(e).into())
    }

    /// Connects now: after the reconnect logic stopped (41xx, a refused login), or instead of
    /// waiting for a pending retry, whose timer it cancels (`App::retry_now`).
    #[wasm_bindgen(js_name = retryNow)]
    pub fn retry_now(&self) -> Result<(), JsValue> {
        self.command(|i| {
            i.app.retry_now();
            Ok(())
        })
    }

    /// Closes the connection and the database; the client cannot be used afterwards.
    pub fn close(&self) -> Result<(), JsValue> {
        let mut inner = self
            .inner
            .try_borrow_mut()
            .map_err(|_| JsValue::from(ClientError::invalid("call", "re-entered the client")))?;
        inner.drop_socket(1000);
        if let Some(timer) = inner.timer.take() {
            call_global("clearTimeout", &timer.handle);
        }
        inner.closed = true;
        // Pending `listDevices` and `renameDevice` promises settle now instead of never.
        let closed = JsValue::from(ClientError::Closed);
        for (_, reject) in std::mem::take(&mut inner.device_waiters) {
            let _ = reject.call1(&JsValue::UNDEFINED, &closed);
        }
        for reject in std::mem::take(&mut inner.connection_waiters) {
            let _ = reject.call1(&JsValue::UNDEFINED, &closed);
        }
        inner.listeners.clear();
        inner.db.close();
        Ok(())
    }
}
