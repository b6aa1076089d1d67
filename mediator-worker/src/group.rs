//! The device group's Durable Object (DESIGN.md §1, §3): it drives `shared`'s sans-IO mediator
//! state machine, one `Group<SqlGroupStore>` per object, with the group's device WebSockets, one
//! chat server TCP connection per device, the clock and the object's alarm.
//!
//! Every input (a frame, a close, chat server bytes, the alarm) goes through [`input`]: borrow
//! the group, feed it, take every effect and the next deadline out, release the borrow, then
//! carry the effects out. Nothing awaits while the group is borrowed; what needs to wait (TCP)
//! runs in spawned tasks that come back through [`input`]. `docs/worker.md` has the whole
//! picture, the bounds and the restart rule.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use std::sync::atomic::{AtomicU64, Ordering};

use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use rand_core::OsRng;
#[cfg(feature = "dev")]
use serde::Serialize;
use tandem_shared::crypto::PublicKey;
use tandem_shared::d2m::{CloseCode, PayloadType};
use tandem_shared::keys::ClientUrlInfo;
use tandem_shared::mediator::{
    decode_attachment, encode_attachment, frame_fits, push_url, ConnId, ConnSnapshot, Effect,
    Group, GroupConfig, PushKey, PushOutcome,
};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys::ext::WebSocketExt;
use worker::worker_sys::{DurableObjectState, WebSocketRequestResponsePair};
use worker::{
    console_error, console_warn, durable_object, js_sys, wasm_bindgen_futures, web_sys,
    DurableObject, Env, Request, Response, SqlStorage, State, WebSocket,
};

use crate::config::{self, chat_server_vars, ChatServerAddr};
use crate::runtime::{self, RawStorage};
use crate::schema;
#[cfg(feature = "dev")]
use crate::selftest;
use crate::store::SqlGroupStore;
use crate::tcp;
use crate::ws::{self, Frame};

/// Path of the push request the Worker sends to the object once it has opened a push token
/// (docs/worker.md "Waking a group").
pub(crate) const PUSH_PATH: &str = "/push";

/// Path of the development-only stats request the Worker sends to the object.
#[cfg(feature = "dev")]
pub(crate) const STATS_PATH: &str = "/_dev/stats";
/// Path of the development-only store self-test (run in an object that serves no group).
#[cfg(feature = "dev")]
pub(crate) const SELFTEST_PATH: &str = "/_dev/store-selftest";

/// Bytes from one device waiting to be written to its chat server socket. Beyond this the
/// device is closed with 4009 (docs/worker.md, "Bounds").
pub(crate) const MAX_CSP_BACKLOG: usize = 1024 * 1024;

/// Bytes read from the chat server at once.
const TCP_READ_CHUNK: usize = 16 * 1024;

/// Device frame bytes one coalesced turn may gather (16 full containers): past it the turn is
/// handled at once instead of waiting for the timer (docs/worker.md "Bounds").
const MAX_TURN_BYTES: usize = 1024 * 1024;

/// How long `connect()` may take to open a chat server socket: `connect()` itself has no
/// timeout, and a device would otherwise wait for ever (closed with 4001 after it).
const CSP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The latest time a JS `Date` can hold (ms); alarms are clamped to it.
const MAX_DATE_MS: u64 = 8_640_000_000_000_000;

/// How often an object that must stay in memory checks whether it still must, and how long a
/// group must be without input before its batched acks are stored so that it may hibernate
/// (docs/worker.md "Hibernation").
const KEEP_AWAKE_TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Set to `off`, the object never hibernates while a device is connected (the always-on design,
/// kept to measure against; docs/worker.md "Hibernation").
pub(crate) const HIBERNATION_VAR: &str = "TANDEM_HIBERNATION";

/// The keepalive a device may send as a text frame; the runtime answers [`KEEPALIVE_RESPONSE`]
/// without waking the object (`setWebSocketAutoResponse`, docs/protocol.md "Keepalive").
pub(crate) const KEEPALIVE_REQUEST: &str = "ping";
/// The runtime's answer to [`KEEPALIVE_REQUEST`].
pub(crate) const KEEPALIVE_RESPONSE: &str = "pong";

/// Object instances constructed in this isolate: a woken group is a new instance (development
/// stats).
static CONSTRUCTED: AtomicU64 = AtomicU64::new(0);
/// Device connections resumed from their snapshots in this isolate (development stats).
static RESUMED: AtomicU64 = AtomicU64::new(0);

/// One device group's Durable Object, named `hex(DGPK.public)`. Its device WebSockets are
/// hibernatable: the runtime may drop the object from memory while they stay connected and
/// construct it again for their next event (docs/worker.md "Hibernation").
#[durable_object(alarm)]
pub struct DeviceGroup {
    env: Env,
    state: DurableObjectState,
    io: Rc<Io>,
}

impl std::fmt::Debug for DeviceGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceGroup")
            .field("links", &self.io.links.borrow().len())
            .finish_non_exhaustive()
    }
}

/// What the object and its tasks share.
struct Io {
    sql: SqlStorage,
    storage: RawStorage,
    /// The group's tables exist. They are created by the first write a valid `ClientHello`
    /// causes, and the object's storage is emptied when the last slot is gone
    /// (docs/worker.md "Storage only for a group that exists").
    created: Rc<Cell<bool>>,
    /// The limits, or why the vars holding them were refused.
    config: Result<GroupConfig, String>,
    group: RefCell<GroupState>,
    /// The sockets of the connections the group may still talk to.
    links: RefCell<BTreeMap<ConnId, Link>>,
    /// Each open device WebSocket (the JS object) to its connection number.
    sockets: js_sys::Map,
    /// Whether the object may hibernate ([`HIBERNATION_VAR`]).
    hibernation: bool,
    /// A task keeps the object in memory (the group is not quiescent, or hibernation is off).
    keep_awake: Cell<bool>,
    /// Inputs fed so far: the keep-awake task tells from it whether the group was idle.
    inputs: Cell<u64>,
    next_conn: Cell<u64>,
    /// What the object's alarm is set to, as far as this instance knows.
    alarm: Cell<Armed>,
    /// Device WebSockets accepted by this instance (development stats).
    accepted: Cell<u64>,
    /// Device frames handled, and of them those already waiting when the frame before them
    /// was handled (development stats: whether workerd ever delivers frames together).
    frames: Cell<u64>,
    frames_together: Cell<u64>,
    /// Proxy frames fed at once instead of in the next turn (development stats).
    proxied_at_once: Cell<u64>,
    /// Device inputs waiting for the next turn, in arrival order (docs/worker.md "Coalescing").
    waiting: RefCell<VecDeque<(ConnId, Waiting)>>,
    /// Frame bytes in `waiting`; past [`MAX_TURN_BYTES`] the turn is handled at once.
    waiting_bytes: Cell<usize>,
    /// Turns handled at once because of [`MAX_TURN_BYTES`] (development stats).
    turns_cut: Cell<u64>,
    /// A task that handles `waiting` is scheduled.
    drain_scheduled: Cell<bool>,
    /// Seals push tokens (`TANDEM_PUSH_KEY`); `None`: devices get no push URL.
    push_key: Option<PushKey>,
    /// `TANDEM_PUBLIC_URL`, the origin of push URLs when set.
    public_url: Option<String>,
    /// Pushes this instance took, and of them those that woke the leader (development stats).
    pushes: Cell<u64>,
    pushes_woken: Cell<u64>,
    /// Development fault injection (`crate::dev_tamper`).
    #[cfg(feature = "dev")]
    tamper: crate::dev_tamper::Tamper,
}

/// A device input deferred to the next turn.
enum Waiting {
    Binary(Vec<u8>),
    /// A binary frame too long for any container, not copied (only its length was read).
    Oversize,
    Text,
    Disconnect,
}

enum GroupState {
    /// The object does not know its group yet (started without its name and nothing stored):
    /// the first device WebSocket's URL tells it.
    Unknown,
    Ready {
        id: PublicKey,
        group: Box<Group<SqlGroupStore>>,
    },
    /// The schema, the limits or loading the group failed: every request is answered 500.
    Failed(String),
}

/// One device WebSocket and what belongs to it.
struct Link {
    ws: WebSocket,
    /// The chat server of the device's server group, or why there is none.
    chat_server: Result<ChatServerAddr, String>,
    /// The chat server connection, from `OpenCsp` to `CloseCsp`.
    csp: Option<CspLink>,
    /// The attachment last written to the socket (`encode_attachment`).
    attachment: Vec<u8>,
    /// That attachment says "busy".
    busy: bool,
}

/// The sending side of one chat server connection's task; dropping it ends the task and
/// closes the socket.
struct CspLink {
    /// Device bytes for the chat server. Unbounded as a channel, bounded by `queued`.
    to_server: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes in `to_server` or being written; at most [`MAX_CSP_BACKLOG`].
    queued: Rc<Cell<usize>>,
    _cancel: oneshot::Sender<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// Not known (a new instance may find an alarm of an earlier one).
    Unknown,
    None,
    At(u64),
}

/// Something to feed back into the group once the current effects are carried out.
enum FollowUp {
    /// There is no chat server for the device's server group.
    NoChatServer(ConnId),
    /// The device sent more than [`MAX_CSP_BACKLOG`] the chat server has not taken yet.
    Backlog(ConnId),
}

impl DurableObject for DeviceGroup {
    fn new(state: State, env: Env) -> Self {
        CONSTRUCTED.fetch_add(1, Ordering::Relaxed);
        let storage = state.storage();
        let sql = storage.sql();
        let named = state.id().name().and_then(|name| group_id_of_name(&name));
        let state = state._inner();
        let config = config::group_config(|name| env.var(name).ok().map(|var| var.to_string()))
            .map_err(|err| err.to_string());
        let hibernation = env
            .var(HIBERNATION_VAR)
            .map_or(true, |var| var.to_string() != "off");
        let push_key =
            config::push_key(|name| config::env_text(&env, name)).unwrap_or_else(|err| {
                console_error!("{err}");
                None
            });
        let public_url = config::env_text(&env, config::PUBLIC_URL_VAR);
        let io = Rc::new(Io {
            sql,
            storage: runtime::raw_storage(&storage),
            created: Rc::new(Cell::new(false)),
            config,
            group: RefCell::new(GroupState::Unknown),
            links: RefCell::new(BTreeMap::new()),
            sockets: js_sys::Map::new(),
            hibernation,
            keep_awake: Cell::new(false),
            inputs: Cell::new(0),
            next_conn: Cell::new(0),
            alarm: Cell::new(Armed::Unknown),
            accepted: Cell::new(0),
            frames: Cell::new(0),
            frames_together: Cell::new(0),
            proxied_at_once: Cell::new(0),
            waiting: RefCell::new(VecDeque::new()),
            waiting_bytes: Cell::new(0),
            turns_cut: Cell::new(0),
            drain_scheduled: Cell::new(false),
            push_key,
            public_url,
            pushes: Cell::new(0),
            pushes_woken: Cell::new(0),
            #[cfg(feature = "dev")]
            tamper: crate::dev_tamper::Tamper::default(),
        });
        match WebSocketRequestResponsePair::new(KEEPALIVE_REQUEST, KEEPALIVE_RESPONSE)
            .and_then(|pair| state.set_websocket_auto_response(&pair))
        {
            Ok(()) => {}
            Err(err) => console_error!("setting the keepalive auto-response: {err:?}"),
        }
        // The sockets still connected from before hibernation (none for a new object).
        let sockets = state.get_websockets().unwrap_or_else(|err| {
            console_error!("listing the device sockets: {err:?}");
            Vec::new()
        });
        // An object whose group has no tables (new, or emptied) reads nothing and writes
        // nothing until a device completes its handshake; one that has them brings them up to
        // date (every statement is idempotent).
        let prepared = schema::exists(&io.sql).and_then(|exists| {
            if exists {
                schema::create(&io.sql)?;
            }
            Ok(exists)
        });
        match prepared {
            Err(err) => fail(&io, format!("reading the schema: {err}")),
            Ok(exists) => {
                io.created.set(exists);
                // The object's name is hex(DGPK.public); an alarm or a hibernated socket may
                // start it without one, so the id is also stored.
                let stored = if exists {
                    schema::stored_group_id(&io.sql).ok().flatten()
                } else {
                    None
                };
                match named.or(stored) {
                    Some(id) => wake_group(&io, &state, &env, id, sockets),
                    None => close_all(sockets, "device group unknown"),
                }
            }
        }
        if let GroupState::Failed(_) = &*io.group.borrow() {
            let links = std::mem::take(&mut *io.links.borrow_mut());
            close_all(
                links
                    .into_values()
                    .map(|link| link.ws.as_ref().clone())
                    .collect(),
                "internal error",
            );
        }
        Self { env, state, io }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let path = req.path();
        #[cfg(feature = "dev")]
        if path == SELFTEST_PATH {
            return self.store_selftest();
        }
        if let GroupState::Failed(reason) = &*self.io.group.borrow() {
            return Response::error(format!("device group unavailable: {reason}"), 500);
        }
        if path == PUSH_PATH {
            return push(&self.io);
        }
        #[cfg(feature = "dev")]
        if path == STATS_PATH {
            return Response::from_json(&stats(&self.io)?);
        }
        #[cfg(feature = "dev")]
        if path == crate::dev_tamper::PATH {
            return self.io.tamper.arm();
        }
        if !crate::is_websocket_upgrade(&req)? {
            return Response::error("not found", 404);
        }
        let info = match ClientUrlInfo::from_path(&path) {
            Ok(info) => info,
            Err(err) => return Response::error(format!("bad mediator path: {err}"), 400),
        };
        if let Err(reason) = ensure_group(&self.io, info.device_group_id) {
            return Response::error(format!("device group unavailable: {reason}"), 500);
        }
        refresh_push_url(&self.io, &req);
        self.accept_device(&info)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // The alarm that fired is spent; `input` sets the next one.
        self.io.alarm.set(Armed::None);
        input(&self.io, |group, now| group.on_timeout(now));
        Response::ok("")
    }
}

/// The hibernation API's event handlers (`webSocketMessage`, `webSocketClose`,
/// `webSocketError`), bound here rather than through the `worker` crate's `DurableObject` trait:
/// its glue copies every binary message into wasm memory before any code can look at its length
/// (docs/worker.md "Limits").
#[wasm_bindgen]
impl DeviceGroup {
    /// One frame from a device.
    #[wasm_bindgen(js_name = webSocketMessage)]
    pub fn web_socket_message(&self, ws: web_sys::WebSocket, message: JsValue) {
        match conn_of(&self.io, &ws) {
            Some(conn) => handle_frame(&self.io, conn, ws::frame_of_data(&message)),
            None => ws::close_raw(
                &ws,
                CloseCode::ServerInternalError.as_u16(),
                "internal error",
            ),
        }
    }

    /// The device closed its socket.
    #[wasm_bindgen(js_name = webSocketClose)]
    pub fn web_socket_close(
        &self,
        ws: web_sys::WebSocket,
        code: u16,
        _reason: String,
        _clean: bool,
    ) {
        // Completes the closing handshake where the runtime has not already answered it, with
        // the device's code where `close()` accepts it.
        let reply = if (3000..=4999).contains(&code) {
            code
        } else {
            1000
        };
        ws::close_raw(&ws, reply, "");
        socket_gone(&self.io, &ws);
    }

    /// The device's socket failed.
    #[wasm_bindgen(js_name = webSocketError)]
    pub fn web_socket_error(&self, ws: web_sys::WebSocket, _error: JsValue) {
        socket_gone(&self.io, &ws);
    }
}

impl DeviceGroup {
    /// Accepts a device WebSocket of this group as hibernatable, tagged with its server group
    /// (a woken object finds its chat server from it).
    fn accept_device(&self, info: &ClientUrlInfo) -> worker::Result<Response> {
        let (client, server) = ws::pair()?;
        self.state
            .accept_websocket_with_tags(
                server.as_ref(),
                vec![JsValue::from_str(&info.server_group)],
            )
            .map_err(worker::Error::from)?;
        let conn = ConnId(self.io.next_conn.get());
        self.io
            .next_conn
            .set(self.io.next_conn.get().wrapping_add(1));
        self.io
            .accepted
            .set(self.io.accepted.get().saturating_add(1));
        let mut link = Link {
            ws: server,
            chat_server: chat_server_of(&self.env, &info.server_group),
            csp: None,
            attachment: Vec::new(),
            busy: true,
        };
        // Busy until its handshake is done: a restarted object closes it.
        write_attachment(&mut link, encode_attachment(conn, None));
        self.io.sockets.set(link.ws.as_ref(), &conn_key(conn));
        self.io.links.borrow_mut().insert(conn, link);
        input(&self.io, |group, now| {
            group.on_connect(conn, now, &mut OsRng)
        });
        Response::from_websocket(client)
    }

    /// Runs the store's contract checks on this object's tables, which must serve no group.
    #[cfg(feature = "dev")]
    fn store_selftest(&self) -> worker::Result<Response> {
        if !matches!(&*self.io.group.borrow(), GroupState::Unknown) {
            return Response::error(
                "the store self-test runs only in an object with no group",
                409,
            );
        }
        let mut store = SqlGroupStore::new(self.io.sql.clone(), self.io.storage.clone());
        match selftest::run(&self.io.sql, &mut store) {
            Ok(passed) => Response::from_json(&serde_json::json!({ "passed": passed })),
            Err(failure) => Response::error(format!("store self-test failed: {failure}"), 500),
        }
    }
}

/// The chat server has messages for this group's identity and nobody receives them: wakes the
/// leader (`Group::on_push`). 204 whatever happened, 404 for an object that serves no group (a
/// group whose storage was deleted after a token was issued).
fn push(io: &Rc<Io>) -> worker::Result<Response> {
    if !matches!(&*io.group.borrow(), GroupState::Ready { .. }) {
        return Response::error("not found", 404);
    }
    io.pushes.set(io.pushes.get().saturating_add(1));
    let mut outcome = PushOutcome::NoLeader;
    input(io, |group, now| outcome = group.on_push(now));
    if outcome == PushOutcome::Woken {
        io.pushes_woken.set(io.pushes_woken.get().saturating_add(1));
    }
    Ok(Response::empty()?.with_status(204))
}

/// Seals a fresh push token for the device connecting with `req` (its URL gives the origin
/// unless `TANDEM_PUBLIC_URL` is set); the group hands it out after `ServerInfo`.
fn refresh_push_url(io: &Io, req: &Request) {
    let Some(key) = &io.push_key else {
        return;
    };
    let origin = req
        .url()
        .ok()
        .and_then(|url| config::push_origin(io.public_url.clone(), &url));
    let mut state = io.group.borrow_mut();
    if let GroupState::Ready { id, group } = &mut *state {
        let url = origin.map(|origin| push_url(&origin, &key.seal(id, now_ms(), &mut OsRng)));
        group.set_push_url(url);
    }
}

/// The chat server of a server group, or why there is none.
fn chat_server_of(env: &Env, server_group: &str) -> Result<ChatServerAddr, String> {
    chat_server_vars(server_group)
        .iter()
        .find_map(|name| env.var(name).ok())
        .ok_or_else(|| format!("no chat server for server group {server_group}"))
        .and_then(|var| ChatServerAddr::parse(&var.to_string()).map_err(|e| e.to_string()))
}

/// The key of a connection in [`Io::sockets`].
fn conn_key(conn: ConnId) -> JsValue {
    // Connection numbers count up from 0 per object instance and its resumed sockets: far
    // below 2^53, so exact as a JS number.
    JsValue::from_f64(conn.0 as f64)
}

/// The connection of a device socket: from the map, or from its attachment when the map does
/// not know the JS object (the runtime may hand a woken object new wrappers).
fn conn_of(io: &Io, ws: &web_sys::WebSocket) -> Option<ConnId> {
    if let Some(n) = io.sockets.get(ws).as_f64() {
        // Exact: written by `conn_key`.
        return Some(ConnId(n as u64));
    }
    let bytes = read_attachment(ws)?;
    let (conn, _) = decode_attachment(&bytes).ok()?;
    if !io.links.borrow().contains_key(&conn) {
        return None;
    }
    io.sockets.set(ws, &conn_key(conn));
    Some(conn)
}

/// The device's socket is gone (closed or failed): the group forgets it in the next turn.
fn socket_gone(io: &Rc<Io>, ws: &web_sys::WebSocket) {
    let Some(conn) = conn_of(io, ws) else {
        return;
    };
    io.sockets.delete(ws);
    drop(io.links.borrow_mut().remove(&conn));
    defer(io, conn, Waiting::Disconnect);
}

/// The socket's attachment bytes, if it has any.
fn read_attachment(ws: &web_sys::WebSocket) -> Option<Vec<u8>> {
    let value = ws.deserialize_attachment().ok()?;
    value
        .dyn_into::<js_sys::Uint8Array>()
        .ok()
        .map(|bytes| bytes.to_vec())
}

/// Writes a link's attachment if it changed.
fn write_attachment(link: &mut Link, bytes: Vec<u8>) {
    if link.attachment == bytes {
        return;
    }
    let value = js_sys::Uint8Array::from(bytes.as_slice());
    match AsRef::<web_sys::WebSocket>::as_ref(&link.ws).serialize_attachment(value.into()) {
        Ok(()) => link.attachment = bytes,
        // Left as it was: if that was a snapshot, it is now stale, so the socket must not be
        // resumed from it. Closing it makes sure.
        Err(err) => {
            console_error!("writing a socket attachment: {err:?}");
            ws::close(
                &link.ws,
                CloseCode::ServerInternalError.as_u16(),
                "internal error",
            );
        }
    }
}

/// Closes sockets a (woken) object cannot serve; their devices reconnect.
fn close_all(sockets: Vec<web_sys::WebSocket>, reason: &str) {
    for ws in sockets {
        ws::close_raw(&ws, CloseCode::ServerShutdown.as_u16(), reason);
    }
}

/// Starts the group of `id`, resuming the sockets still connected from before hibernation:
/// each from its snapshot; one without a snapshot (it was busy, or its handshake was not done)
/// or refused by the group is closed with 1001, and its device reconnects.
fn wake_group(
    io: &Rc<Io>,
    state: &DurableObjectState,
    env: &Env,
    id: PublicKey,
    sockets: Vec<web_sys::WebSocket>,
) {
    let mut resumed: Vec<(ConnId, ConnSnapshot)> = Vec::new();
    let mut links = Vec::new();
    let mut refused = Vec::new();
    // New connections are numbered after every number a socket still carries, resumed or not:
    // a refused socket's late close must not name a new connection.
    let mut next = 0_u64;
    for ws in sockets {
        let decoded = read_attachment(&ws).map(|bytes| (decode_attachment(&bytes), bytes));
        if let Some((Ok((conn, _)), _)) = &decoded {
            next = next.max(conn.0.saturating_add(1));
        }
        match decoded {
            Some((Ok((conn, Some(snapshot))), bytes)) => {
                let server_group = state
                    .get_tags(&ws)
                    .ok()
                    .and_then(|tags| tags.into_iter().next())
                    .unwrap_or_default();
                resumed.push((conn, snapshot));
                links.push((conn, ws, server_group, bytes));
            }
            _ => refused.push(ws),
        }
    }
    io.next_conn.set(next);
    // The links first: waking may already send (a promotion).
    for (conn, ws, server_group, attachment) in links {
        io.sockets.set(&ws, &conn_key(conn));
        io.links.borrow_mut().insert(
            conn,
            Link {
                ws: ws.into(),
                chat_server: chat_server_of(env, &server_group),
                csp: None,
                attachment,
                busy: false,
            },
        );
    }
    let count = resumed.len();
    let not_resumed = start_group(io, id, resumed);
    for conn in &not_resumed {
        if let Some(link) = io.links.borrow_mut().remove(conn) {
            io.sockets.delete(link.ws.as_ref());
            refused.push(link.ws.as_ref().clone());
        }
    }
    let resumed = count.saturating_sub(not_resumed.len());
    RESUMED.fetch_add(
        u64::try_from(resumed).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    close_all(refused, "mediator restarted");
}

/// Queues a device input for the next turn. Every frame is its own workerd event and every event
/// that writes is committed on its own; handling what arrived meanwhile together in a later turn
/// lets all their writes share one commit (docs/worker.md "Coalescing").
fn defer(io: &Rc<Io>, conn: ConnId, what: Waiting) {
    let bytes = match &what {
        Waiting::Binary(bytes) => bytes.len(),
        Waiting::Oversize | Waiting::Text | Waiting::Disconnect => 0,
    };
    io.waiting.borrow_mut().push_back((conn, what));
    io.waiting_bytes
        .set(io.waiting_bytes.get().saturating_add(bytes));
    if io.waiting_bytes.get() > MAX_TURN_BYTES {
        // workerd dispatches every frame that has arrived before the timer turn; a burst must
        // not pile up in wasm memory (shared by the isolate's objects) until then. The timer
        // task already scheduled finds an empty queue.
        io.turns_cut.set(io.turns_cut.get().saturating_add(1));
        drain_waiting(io);
        return;
    }
    if io.drain_scheduled.replace(true) {
        return;
    }
    let io = Rc::clone(io);
    wasm_bindgen_futures::spawn_local(async move {
        worker::Delay::from(std::time::Duration::ZERO).await;
        io.drain_scheduled.set(false);
        drain_waiting(&io);
    });
}

/// Feeds every deferred input to the group as one batch.
fn drain_waiting(io: &Rc<Io>) {
    let batch = std::mem::take(&mut *io.waiting.borrow_mut());
    io.waiting_bytes.set(0);
    if batch.is_empty() {
        return;
    }
    let together = u64::try_from(batch.len().saturating_sub(1)).unwrap_or(u64::MAX);
    io.frames_together
        .set(io.frames_together.get().saturating_add(together));
    // One input for the whole turn: the group stores its reflects together (one
    // `enqueue_batch`, docs/mediator.md "Batched reflects") and the per-input work (clock,
    // effects, deadline, alarm) is paid once.
    input(io, |group, now| {
        group.begin_batch();
        for (conn, what) in batch {
            match what {
                Waiting::Binary(bytes) => group.on_binary(conn, &bytes, now),
                Waiting::Oversize => group.on_oversize_frame(conn, now),
                Waiting::Text => group.on_text(conn, now),
                Waiting::Disconnect => group.on_disconnect(conn, now),
            }
        }
        group.end_batch(now);
    });
}

/// Feeds one device frame to the group (or defers it to the next turn).
fn handle_frame(io: &Rc<Io>, conn: ConnId, frame: Frame) {
    match frame {
        Frame::Binary(buffer) => {
            io.frames.set(io.frames.get().saturating_add(1));
            // Checked before the copy: Cloudflare accepts frames up to 32 MiB, and wasm memory
            // that grows for one never shrinks (docs/worker.md "Limits").
            let fits = usize::try_from(buffer.byte_length()).is_ok_and(frame_fits);
            if !fits {
                defer(io, conn, Waiting::Oversize);
                return;
            }
            let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
            if is_proxy(&bytes) && !io.waiting.borrow().iter().any(|(c, _)| *c == conn) {
                // CSP bytes write nothing, so there is no commit to share: the timer hop would
                // only add latency. Nothing of this connection waits, so order is kept.
                io.proxied_at_once
                    .set(io.proxied_at_once.get().saturating_add(1));
                input(io, |group, now| group.on_binary(conn, &bytes, now));
            } else {
                defer(io, conn, Waiting::Binary(bytes));
            }
        }
        Frame::Text => defer(io, conn, Waiting::Text),
        Frame::Unreadable => {
            console_error!("binary frame not readable: was binaryType set before accept()?");
            close_link(
                io,
                conn,
                CloseCode::ServerInternalError.as_u16(),
                "internal error",
            );
        }
    }
}

/// Whether a device frame is a d2m proxy container (CSP bytes for the chat server).
fn is_proxy(frame: &[u8]) -> bool {
    frame.first() == Some(&PayloadType::Proxy.as_u8())
}

/// Feeds one input to the group (if it is running) and carries out what it asks for.
fn input(io: &Rc<Io>, feed: impl FnOnce(&mut Group<SqlGroupStore>, u64)) {
    let now = now_ms();
    let (effects, deadline) = {
        let mut state = io.group.borrow_mut();
        let GroupState::Ready { group, .. } = &mut *state else {
            return;
        };
        feed(group, now);
        let effects: Vec<Effect> = std::iter::from_fn(|| group.poll_effect()).collect();
        while let Some(err) = group.poll_store_error() {
            console_error!("device group store: {err}");
        }
        (effects, group.poll_timeout())
    };
    carry_out_all(io, effects, deadline);
    after_input(io);
}

/// Brings every socket's attachment up to date (a snapshot, or busy) and keeps the object in
/// memory while the group is not quiescent (docs/worker.md "Hibernation").
fn after_input(io: &Rc<Io>) {
    io.inputs.set(io.inputs.get().wrapping_add(1));
    let quiescent = {
        let state = io.group.borrow();
        let GroupState::Ready { group, .. } = &*state else {
            return;
        };
        let mut links = io.links.borrow_mut();
        for (&conn, link) in links.iter_mut() {
            // Most inputs leave a busy connection busy: nothing to build or compare then.
            let snapshot = group.snapshot(conn);
            if snapshot.is_some() || !link.busy {
                write_attachment(link, encode_attachment(conn, snapshot.as_ref()));
                link.busy = snapshot.is_none();
            }
        }
        let empty = links.is_empty() && group.slots().next().is_none();
        if empty && io.created.get() && group.is_quiescent() {
            wipe_storage(io);
        }
        group.is_quiescent()
    };
    if !quiescent || !io.hibernation {
        keep_awake(io);
    }
}

/// The group's last slot is gone and nobody is connected: everything it stored goes (rows stay
/// billed while they exist), the alarm too. A device that comes later starts a new group, as it
/// would have found it anyway.
fn wipe_storage(io: &Rc<Io>) {
    arm_alarm(io, None);
    io.created.set(false);
    match io.storage.delete_all() {
        Ok(promise) => wasm_bindgen_futures::spawn_local(async move {
            if let Err(err) = wasm_bindgen_futures::JsFuture::from(promise).await {
                console_error!("emptying the storage failed: {err:?}");
            }
        }),
        Err(err) => console_error!("emptying the storage failed: {err:?}"),
    }
}

/// Keeps the object in memory with a pending timer until the group is quiescent (or, with
/// hibernation off, until no device is connected). After a tick without input the group stores
/// its batched acks (`Group::quiesce`), the last thing an idle group holds only in memory.
fn keep_awake(io: &Rc<Io>) {
    if io.keep_awake.replace(true) {
        return;
    }
    let io = Rc::clone(io);
    wasm_bindgen_futures::spawn_local(async move {
        loop {
            let seen = io.inputs.get();
            worker::Delay::from(KEEP_AWAKE_TICK).await;
            if io.inputs.get() == seen {
                input(&io, |group, now| group.quiesce(now));
            }
            let quiescent = match &*io.group.borrow() {
                GroupState::Ready { group, .. } => group.is_quiescent(),
                GroupState::Unknown | GroupState::Failed(_) => true,
            };
            let connected = !io.links.borrow().is_empty();
            if quiescent && (io.hibernation || !connected) {
                break;
            }
        }
        io.keep_awake.set(false);
    });
}

/// Sets the alarm and carries out a batch of effects, then feeds back what they caused. Not
/// generic, so that the feedback's `input` calls do not instantiate `input` without end.
fn carry_out_all(io: &Rc<Io>, effects: Vec<Effect>, deadline: Option<u64>) {
    arm_alarm(io, deadline);
    let mut follow_ups = Vec::new();
    for effect in effects {
        carry_out(io, effect, &mut follow_ups);
    }
    for follow_up in follow_ups {
        match follow_up {
            FollowUp::NoChatServer(conn) => {
                input(io, |group, now| group.on_csp_connect_failed(conn, now));
            }
            FollowUp::Backlog(conn) => {
                console_warn!(
                    "closing a device with 4009: over {MAX_CSP_BACKLOG} bytes wait for its chat server"
                );
                close_link(
                    io,
                    conn,
                    CloseCode::CspInternalError.as_u16(),
                    "chat server backlog",
                );
                input(io, |group, now| group.on_disconnect(conn, now));
            }
        }
    }
}

fn carry_out(io: &Rc<Io>, effect: Effect, follow_ups: &mut Vec<FollowUp>) {
    match effect {
        Effect::Send { conn, bytes } => {
            #[cfg(feature = "dev")]
            let bytes = {
                let mut bytes = bytes;
                io.tamper.apply(&mut bytes);
                bytes
            };
            if let Some(link) = io.links.borrow().get(&conn) {
                // A socket already gone reports its close through `webSocketClose`.
                if let Err(err) = link.ws.send_with_bytes(&bytes) {
                    worker::console_debug!("send on a closing socket: {err}");
                }
            }
        }
        Effect::Close { conn, code, cause } => close_link(io, conn, code.as_u16(), cause.reason()),
        Effect::OpenCsp { conn } => open_csp(io, conn, follow_ups),
        Effect::CspSend { conn, bytes } => {
            let mut links = io.links.borrow_mut();
            let Some(link) = links.get_mut(&conn) else {
                return;
            };
            let over = match &link.csp {
                None => return,
                Some(csp) => {
                    let queued = csp.queued.get().saturating_add(bytes.len());
                    if queued <= MAX_CSP_BACKLOG {
                        csp.queued.set(queued);
                        // A closed channel means the task already ended and told the group.
                        let _ = csp.to_server.unbounded_send(bytes);
                    }
                    queued > MAX_CSP_BACKLOG
                }
            };
            if over {
                // Dropping the chat server side ends its task; the device follows.
                let dropped = link.csp.take();
                drop(links);
                drop(dropped);
                follow_ups.push(FollowUp::Backlog(conn));
            }
        }
        Effect::CloseCsp { conn } => {
            let dropped = io
                .links
                .borrow_mut()
                .get_mut(&conn)
                .and_then(|link| link.csp.take());
            drop(dropped);
        }
    }
}

/// Closes a device WebSocket and forgets it (its chat server connection goes with it).
fn close_link(io: &Io, conn: ConnId, code: u16, reason: &str) {
    let link = io.links.borrow_mut().remove(&conn);
    if let Some(link) = link {
        io.sockets.delete(link.ws.as_ref());
        ws::close(&link.ws, code, reason);
    }
}

/// Starts the task that connects to the device's chat server and relays both ways.
fn open_csp(io: &Rc<Io>, conn: ConnId, follow_ups: &mut Vec<FollowUp>) {
    let mut links = io.links.borrow_mut();
    let Some(link) = links.get_mut(&conn) else {
        return;
    };
    let addr = match &link.chat_server {
        Ok(addr) => addr.clone(),
        Err(reason) => {
            console_warn!("chat server connection not opened: {reason}");
            follow_ups.push(FollowUp::NoChatServer(conn));
            return;
        }
    };
    let (to_server, from_device) = mpsc::unbounded();
    let (cancel, cancelled) = oneshot::channel();
    let queued = Rc::new(Cell::new(0));
    link.csp = Some(CspLink {
        to_server,
        queued: Rc::clone(&queued),
        _cancel: cancel,
    });
    drop(links);
    let io = Rc::clone(io);
    wasm_bindgen_futures::spawn_local(async move {
        match relay_chat_server(&io, conn, &addr, from_device, cancelled, &queued).await {
            TcpEnd::Cancelled => {}
            TcpEnd::ConnectFailed => {
                input(&io, |group, now| group.on_csp_connect_failed(conn, now))
            }
            TcpEnd::ServerClosed | TcpEnd::Io => {
                input(&io, |group, now| group.on_csp_closed(conn, now));
            }
        }
    });
}

/// How a chat server connection ended.
#[derive(Debug)]
enum TcpEnd {
    /// The group closed it (`CloseCsp`) or the device is gone; nothing to report.
    Cancelled,
    /// `connect()` failed or the socket never opened.
    ConnectFailed,
    /// The chat server closed its side.
    ServerClosed,
    /// Reading or writing failed.
    Io,
}

/// Connects, then writes the device's bytes and feeds the server's bytes to the group until
/// either side ends or the link is dropped; always closes the socket.
///
/// The socket is driven through its JS streams directly, with one reader and one writer for the
/// connection's life: the `worker` crate's `Socket` (its `AsyncRead`/`AsyncWrite`) takes and
/// releases a reader lock for every read and a writer lock for every write, which was ≈ 20 % of
/// the Worker's CPU per CSP echo (`getReader`, `releaseLock`, `getWriter`; docs/worker.md "CSP
/// echo").
async fn relay_chat_server(
    io: &Rc<Io>,
    conn: ConnId,
    addr: &ChatServerAddr,
    mut from_device: mpsc::UnboundedReceiver<Vec<u8>>,
    mut cancelled: oneshot::Receiver<()>,
    queued: &Cell<usize>,
) -> TcpEnd {
    let Ok(socket) = tcp::connect(&addr.host, addr.port) else {
        return TcpEnd::ConnectFailed;
    };
    let opened = {
        let opened = socket.opened();
        let timeout = worker::Delay::from(CSP_CONNECT_TIMEOUT);
        futures_util::pin_mut!(opened);
        match select(select(opened, timeout), &mut cancelled).await {
            Either::Left((Either::Left((Ok(()), _)), _)) => None,
            Either::Left((Either::Left((Err(()), _)) | Either::Right(_), _)) => {
                Some(TcpEnd::ConnectFailed)
            }
            Either::Right(_) => Some(TcpEnd::Cancelled),
        }
    };
    if let Some(end) = opened {
        socket.close().await;
        return end;
    }
    let Some((reader, writer)) = socket.lock_streams() else {
        socket.close().await;
        return TcpEnd::Io;
    };

    let end = {
        let upstream = async {
            while let Some(bytes) = from_device.next().await {
                if writer.write(&bytes).await.is_err() {
                    return TcpEnd::Io;
                }
                queued.set(queued.get().saturating_sub(bytes.len()));
            }
            TcpEnd::Cancelled
        };
        let downstream = async {
            loop {
                let data = match reader.read().await {
                    Ok(Some(data)) => data,
                    Ok(None) => return TcpEnd::ServerClosed,
                    Err(()) => return TcpEnd::Io,
                };
                // A read that completed after the group closed this connection (`CspClose`)
                // must not reach the connection the device opened since.
                if !is_current_link(io, conn, queued) {
                    return TcpEnd::Cancelled;
                }
                // At most TCP_READ_CHUNK per input, as the bounds promise (docs/worker.md).
                for chunk in data.chunks(TCP_READ_CHUNK) {
                    input(io, |group, now| group.on_csp_bytes(conn, chunk, now));
                }
            }
        };
        futures_util::pin_mut!(upstream, downstream);
        match select(select(upstream, downstream), &mut cancelled).await {
            Either::Left((Either::Left((end, _)) | Either::Right((end, _)), _)) => end,
            Either::Right(_) => TcpEnd::Cancelled,
        }
    };
    // Not `releaseLock` first: with a read pending workerd throws there. `close()` closes both
    // streams, locked or not, and settles the pending read.
    drop((reader, writer));
    socket.close().await;
    end
}

/// Whether `queued` is still the counter of `conn`'s chat server connection.
fn is_current_link(io: &Io, conn: ConnId, queued: &Cell<usize>) -> bool {
    io.links
        .borrow()
        .get(&conn)
        .and_then(|link| link.csp.as_ref())
        .is_some_and(|csp| std::ptr::eq(Rc::as_ptr(&csp.queued), queued))
}

/// Starts the group of `id` over this object's storage (loading its slots), resuming the
/// connections in `resumed` ([`Group::resume`]); returns those the group refused.
fn start_group(io: &Rc<Io>, id: PublicKey, resumed: Vec<(ConnId, ConnSnapshot)>) -> Vec<ConnId> {
    let started = match &io.config {
        Err(reason) => Err(format!("group limits: {reason}")),
        Ok(config) => remember_group_id(io, &id).and_then(|()| {
            let store = SqlGroupStore::lazy(
                io.sql.clone(),
                io.storage.clone(),
                Rc::clone(&io.created),
                id,
            );
            Group::resume(config.clone(), id, store, now_ms(), resumed)
                .map_err(|err| format!("loading the group: {err}"))
        }),
    };
    match started {
        Ok((group, refused)) => {
            *io.group.borrow_mut() = GroupState::Ready {
                id,
                group: Box::new(group),
            };
            // Promotion of a resumed device, if the leader was not resumed.
            input(io, |_, _| {});
            refused
        }
        Err(reason) => {
            fail(io, reason);
            Vec::new()
        }
    }
}

/// Stores the group id unless it already is (a woken object writes nothing it need not) or the
/// tables do not exist yet (the store creates them with the id).
fn remember_group_id(io: &Io, id: &PublicKey) -> Result<(), String> {
    if !io.created.get() || schema::stored_group_id(&io.sql).ok().flatten() == Some(*id) {
        return Ok(());
    }
    schema::remember_group_id(&io.sql, id).map_err(|err| format!("storing the group id: {err}"))
}

fn fail(io: &Io, reason: String) {
    console_error!("device group unavailable: {reason}");
    *io.group.borrow_mut() = GroupState::Failed(reason);
}

/// Makes sure the object runs the group of `id` (the URL's); an object never serves two.
fn ensure_group(io: &Rc<Io>, id: PublicKey) -> Result<(), String> {
    let unknown = match &*io.group.borrow() {
        GroupState::Unknown => true,
        GroupState::Ready { id: running, .. } if *running == id => false,
        GroupState::Ready { .. } => return Err("the object serves another group".into()),
        GroupState::Failed(reason) => return Err(reason.clone()),
    };
    if unknown {
        start_group(io, id, Vec::new());
        if let GroupState::Failed(reason) = &*io.group.borrow() {
            return Err(reason.clone());
        }
    }
    Ok(())
}

/// Sets or deletes the object's alarm when the group's next deadline changed.
fn arm_alarm(io: &Rc<Io>, deadline: Option<u64>) {
    // Without tables the only deadlines are handshakes, which the keep-awake task's ticks
    // check: setting an alarm would be a storage write for a peer that may never authenticate.
    let deadline = deadline.filter(|_| io.created.get());
    let want = deadline.map_or(Armed::None, |at| Armed::At(at.min(MAX_DATE_MS)));
    if !io.created.get() && io.alarm.get() == Armed::Unknown {
        // No tables, so no alarm was ever set (emptying deletes it first).
        io.alarm.set(Armed::None);
        return;
    }
    if io.alarm.get() == want {
        return;
    }
    io.alarm.set(want);
    let call = match want {
        // Exact: MAX_DATE_MS < 2^53.
        Armed::At(at) => io.storage.set_alarm(at as f64),
        Armed::None | Armed::Unknown => io.storage.delete_alarm(),
    };
    match call {
        Ok(promise) => {
            let io = Rc::clone(io);
            wasm_bindgen_futures::spawn_local(async move {
                if let Err(err) = wasm_bindgen_futures::JsFuture::from(promise).await {
                    console_error!("setting the alarm failed: {err:?}");
                    io.alarm.set(Armed::Unknown);
                }
            });
        }
        Err(err) => {
            console_error!("setting the alarm failed: {err:?}");
            io.alarm.set(Armed::Unknown);
        }
    }
}

/// Unix time in ms. Inside a Worker it only advances between I/O events, which is all the group
/// needs: it never goes back.
pub(crate) fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// `hex(DGPK.public)`: 64 lowercase hex digits.
fn group_id_of_name(name: &str) -> Option<PublicKey> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(name, &mut id).ok()?;
    (hex::encode(id) == name).then_some(PublicKey(id))
}

/// What the development stats route reports about a group.
#[cfg(feature = "dev")]
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    /// `ready` or `unknown` (no device has connected to this object since it was created).
    group: &'static str,
    slots: u64,
    queued: u64,
    envelopes: u64,
    staged: u64,
    /// Device WebSockets open right now.
    open_connections: usize,
    /// Device WebSockets accepted by this instance (since the object last started).
    connections_accepted: u64,
    /// Device frames handled by this instance.
    frames: u64,
    /// Of them, frames already waiting when the one before them was handled.
    frames_ready_together: u64,
    /// Of them, proxy frames fed at once (nothing of their connection was waiting).
    proxy_frames_at_once: u64,
    /// Coalesced turns handled at once because their frames passed `MAX_TURN_BYTES`.
    turns_cut: u64,
    /// `sql.exec` calls of the group stores in this isolate so far.
    sql_statements: u64,
    /// `transactionSync` calls of the group stores in this isolate so far.
    sql_transactions: u64,
    /// `enqueue_batch` calls (two or more reflects stored together) of the group stores in
    /// this isolate so far, and the reflects they stored (docs/mediator.md "Batched reflects").
    reflect_batches: u64,
    reflects_batched: u64,
    leader: Option<String>,
    transaction_holder: Option<String>,
    alarm_at: Option<u64>,
    /// The isolate's wasm linear memory (shared by every object in it; it never shrinks), to
    /// tell its growth from the rest of workerd's in the soak (RELIABILITY.md).
    wasm_memory_bytes: u64,
    /// Object instances constructed in this isolate so far (every object; a woken group is a
    /// new one), and device connections resumed from their snapshots.
    objects_constructed: u64,
    connections_resumed: u64,
    /// Whether the group's tables exist, and the object's SQLite database size in bytes
    /// (`sql.databaseSize`).
    stored: bool,
    database_bytes: u64,
    /// Whether this object may hibernate, and whether it keeps itself in memory right now.
    hibernation: bool,
    keep_awake: bool,
    /// Whether devices get a push URL, pushes this instance took, and of them those that woke
    /// the leader (docs/worker.md "Waking a group").
    push: bool,
    pushes: u64,
    pushes_woken: u64,
}

#[cfg(all(feature = "dev", target_arch = "wasm32"))]
fn wasm_memory_bytes() -> u64 {
    (core::arch::wasm32::memory_size::<0>() as u64).saturating_mul(65_536)
}

#[cfg(all(feature = "dev", not(target_arch = "wasm32")))]
const fn wasm_memory_bytes() -> u64 {
    0
}

#[cfg(feature = "dev")]
fn stats(io: &Io) -> worker::Result<Stats> {
    let state = io.group.borrow();
    let (name, counts, leader, holder) = match &*state {
        GroupState::Ready { group, .. } => (
            "ready",
            group.store().counts(),
            group.leader().map(|id| id.to_string()),
            group.transaction_holder().map(|id| id.to_string()),
        ),
        _ if !io.created.get() => ("unknown", Ok(Default::default()), None, None),
        _ => (
            "unknown",
            SqlGroupStore::new(io.sql.clone(), io.storage.clone()).counts(),
            None,
            None,
        ),
    };
    let counts = counts.map_err(|err| worker::Error::RustError(err.to_string()))?;
    Ok(Stats {
        group: name,
        slots: counts.slots,
        queued: counts.queued,
        envelopes: counts.envelopes,
        staged: counts.staged,
        open_connections: io.links.borrow().len(),
        connections_accepted: io.accepted.get(),
        frames: io.frames.get(),
        frames_ready_together: io.frames_together.get(),
        proxy_frames_at_once: io.proxied_at_once.get(),
        turns_cut: io.turns_cut.get(),
        sql_statements: crate::store::sql_calls().0,
        sql_transactions: crate::store::sql_calls().1,
        reflect_batches: crate::store::batch_calls().0,
        reflects_batched: crate::store::batch_calls().1,
        leader,
        transaction_holder: holder,
        alarm_at: match io.alarm.get() {
            Armed::At(at) => Some(at),
            Armed::None | Armed::Unknown => None,
        },
        wasm_memory_bytes: wasm_memory_bytes(),
        objects_constructed: CONSTRUCTED.load(Ordering::Relaxed),
        stored: io.created.get(),
        database_bytes: js_sys::Reflect::get(io.sql.as_ref(), &JsValue::from_str("databaseSize"))
            .ok()
            .and_then(|size| size.as_f64())
            // A byte count: non-negative and far below 2^53.
            .map_or(0, |size| size as u64),
        connections_resumed: RESUMED.load(Ordering::Relaxed),
        hibernation: io.hibernation,
        keep_awake: io.keep_awake.get(),
        push: io.push_key.is_some(),
        pushes: io.pushes.get(),
        pushes_woken: io.pushes_woken.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_name_is_lowercase_hex_of_32_bytes() {
        let name = "ab".repeat(32);
        assert_eq!(group_id_of_name(&name), Some(PublicKey([0xab; 32])));
        assert_eq!(group_id_of_name(&"AB".repeat(32)), None);
        assert_eq!(group_id_of_name("store-selftest"), None);
        assert_eq!(group_id_of_name(&"ab".repeat(31)), None);
    }
}
