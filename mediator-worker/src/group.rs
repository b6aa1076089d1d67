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

use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use rand_core::OsRng;
#[cfg(feature = "dev")]
use serde::Serialize;
use tandem_shared::crypto::PublicKey;
use tandem_shared::d2m::{CloseCode, PayloadType};
use tandem_shared::keys::ClientUrlInfo;
use tandem_shared::mediator::{frame_fits, ConnId, Effect, Group, GroupConfig};
use worker::{
    console_error, console_warn, durable_object, js_sys, wasm_bindgen_futures, DurableObject, Env,
    Request, Response, SqlStorage, State, WebSocket,
};

use crate::config::{self, chat_server_vars, ChatServerAddr};
use crate::runtime::{self, RawStorage};
use crate::schema;
#[cfg(feature = "dev")]
use crate::selftest;
use crate::store::SqlGroupStore;
use crate::tcp;
use crate::ws::{self, Frame};

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

/// One device group's Durable Object, named `hex(DGPK.public)`.
#[durable_object]
pub struct DeviceGroup {
    env: Env,
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
    /// The limits, or why the vars holding them were refused.
    config: Result<GroupConfig, String>,
    group: RefCell<GroupState>,
    /// The sockets of the connections the group may still talk to.
    links: RefCell<BTreeMap<ConnId, Link>>,
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
    /// Dropped with the link: ends the task reading the WebSocket.
    _stop_reader: oneshot::Sender<()>,
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
        let storage = state.storage();
        let sql = storage.sql();
        let config = config::group_config(|name| env.var(name).ok().map(|var| var.to_string()))
            .map_err(|err| err.to_string());
        let io = Rc::new(Io {
            sql,
            storage: runtime::raw_storage(&storage),
            config,
            group: RefCell::new(GroupState::Unknown),
            links: RefCell::new(BTreeMap::new()),
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
            #[cfg(feature = "dev")]
            tamper: crate::dev_tamper::Tamper::default(),
        });
        match schema::create(&io.sql) {
            Err(err) => fail(&io, format!("creating the schema: {err}")),
            Ok(()) => {
                // The object's name is hex(DGPK.public); an alarm may start it without one, so
                // the id is also stored.
                let named = state.id().name().and_then(|name| group_id_of_name(&name));
                let stored = schema::stored_group_id(&io.sql).ok().flatten();
                if let Some(id) = named.or(stored) {
                    start_group(&io, id);
                }
            }
        }
        Self { env, io }
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
        self.accept_device(&info)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // The alarm that fired is spent; `input` sets the next one.
        self.io.alarm.set(Armed::None);
        input(&self.io, |group, now| group.on_timeout(now));
        Response::ok("")
    }
}

impl DeviceGroup {
    /// Accepts a device WebSocket of this group and starts the task reading it.
    fn accept_device(&self, info: &ClientUrlInfo) -> worker::Result<Response> {
        let chat_server = chat_server_vars(&info.server_group)
            .iter()
            .find_map(|name| self.env.var(name).ok())
            .ok_or_else(|| format!("no chat server for server group {}", info.server_group))
            .and_then(|var| ChatServerAddr::parse(&var.to_string()).map_err(|e| e.to_string()));
        let (client, server) = ws::accept_pair()?;
        let conn = ConnId(self.io.next_conn.get());
        self.io
            .next_conn
            .set(self.io.next_conn.get().wrapping_add(1));
        self.io
            .accepted
            .set(self.io.accepted.get().saturating_add(1));
        let (stop_reader, stopped) = oneshot::channel();
        self.io.links.borrow_mut().insert(
            conn,
            Link {
                ws: server.clone(),
                chat_server,
                csp: None,
                _stop_reader: stop_reader,
            },
        );
        let io = Rc::clone(&self.io);
        wasm_bindgen_futures::spawn_local(read_device(io, conn, server, stopped));
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

/// Reads one device WebSocket until it closes or the link is dropped, feeding the group.
async fn read_device(io: Rc<Io>, conn: ConnId, ws: WebSocket, mut stopped: oneshot::Receiver<()>) {
    input(&io, |group, now| group.on_connect(conn, now, &mut OsRng));
    match ws.events() {
        Ok(mut events) => loop {
            let event = match select(events.next(), &mut stopped).await {
                Either::Left((Some(event), _)) => event,
                // Closed, or the link was dropped (the group or the driver closed the socket).
                Either::Left((None, _)) | Either::Right(_) => break,
            };
            if !handle_event(&io, conn, event) {
                break;
            }
        },
        Err(err) => {
            console_error!("device socket events: {err}");
            close_link(
                &io,
                conn,
                CloseCode::ServerInternalError.as_u16(),
                "internal error",
            );
        }
    }
    drop(io.links.borrow_mut().remove(&conn));
    defer(&io, conn, Waiting::Disconnect);
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

/// Feeds one WebSocket event to the group; `false` when the socket is done.
fn handle_event(io: &Rc<Io>, conn: ConnId, event: worker::Result<worker::WebsocketEvent>) -> bool {
    match ws::frame_of(event) {
        Frame::Binary(buffer) => {
            io.frames.set(io.frames.get().saturating_add(1));
            // Checked before the copy: Cloudflare accepts frames up to 32 MiB, and wasm memory
            // that grows for one never shrinks (docs/worker.md "Limits").
            let fits = usize::try_from(buffer.byte_length()).is_ok_and(frame_fits);
            if !fits {
                defer(io, conn, Waiting::Oversize);
                return true;
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
            true
        }
        Frame::Text => {
            defer(io, conn, Waiting::Text);
            true
        }
        Frame::Unreadable => {
            console_error!("binary frame not readable: was binaryType set before accept()?");
            close_link(
                io,
                conn,
                CloseCode::ServerInternalError.as_u16(),
                "internal error",
            );
            false
        }
        Frame::Closed => false,
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
                // A socket already gone reports its close through the reading task.
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

/// Starts the group of `id` over this object's storage (loading its slots).
fn start_group(io: &Rc<Io>, id: PublicKey) {
    let started = match &io.config {
        Err(reason) => Err(format!("group limits: {reason}")),
        Ok(config) => schema::remember_group_id(&io.sql, &id)
            .map_err(|err| format!("storing the group id: {err}"))
            .and_then(|()| {
                let store = SqlGroupStore::new(io.sql.clone(), io.storage.clone());
                Group::new(config.clone(), id, store, now_ms())
                    .map_err(|err| format!("loading the group: {err}"))
            }),
    };
    match started {
        Ok(group) => {
            let deadline = group.poll_timeout();
            *io.group.borrow_mut() = GroupState::Ready {
                id,
                group: Box::new(group),
            };
            arm_alarm(io, deadline);
        }
        Err(reason) => fail(io, reason),
    }
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
        start_group(io, id);
        if let GroupState::Failed(reason) = &*io.group.borrow() {
            return Err(reason.clone());
        }
    }
    Ok(())
}

/// Sets or deletes the object's alarm when the group's next deadline changed.
fn arm_alarm(io: &Rc<Io>, deadline: Option<u64>) {
    let want = deadline.map_or(Armed::None, |at| Armed::At(at.min(MAX_DATE_MS)));
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
fn now_ms() -> u64 {
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
