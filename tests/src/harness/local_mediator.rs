//! [`LocalMediator`]: `shared`'s mediator state machine (`Group<MemoryStore>`) behind real
//! WebSockets and real chat server TCP connections, in this process. It is the reference the
//! Worker is compared with: the same scenarios run against both, so a failure that shows only
//! under `wrangler dev` is the Worker's, one that shows here too is the state machine's (or the
//! test's). A restart keeps every group's store and drops every connection, as a crash of the
//! Worker with durable storage would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::OsRng;
use tandem_shared::crypto::PublicKey;
use tandem_shared::keys::ClientUrlInfo;
use tandem_shared::mediator::{
    frame_fits, push_url, ConnId, Effect, Group, GroupConfig, MemoryStore, PushKey, PUSH_PATH,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::device::close_frame;
use super::error::HarnessError;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a group's task is told.
enum Input {
    Connect {
        conn: ConnId,
        server_group: String,
        out: mpsc::UnboundedSender<Out>,
    },
    Binary(ConnId, Vec<u8>),
    Text(ConnId),
    Disconnect(ConnId),
    /// From the chat server connection with this number (a link closed by `CspClose` may still
    /// report after the device opened its next one: those reports are dropped).
    CspBytes(ConnId, u64, Vec<u8>),
    CspClosed(ConnId, u64),
    CspFailed(ConnId, u64),
    /// `POST /push/{token}` for this group: answered once the group took it.
    Push(oneshot::Sender<()>),
    /// Hand the store over and stop.
    Shutdown(oneshot::Sender<MemoryStore>),
}

/// What a connection's writer is told.
enum Out {
    Frame(Vec<u8>),
    Close(u16),
}

struct Shared {
    config: GroupConfig,
    chat_servers: HashMap<String, SocketAddr>,
    groups: Mutex<HashMap<[u8; 32], mpsc::UnboundedSender<Input>>>,
    /// Stores handed over by a restart, picked up by the next group task of each id.
    stores: Mutex<HashMap<[u8; 32], MemoryStore>>,
    /// Every connection and chat server task, aborted on restart.
    tasks: Mutex<Vec<AbortHandle>>,
    next_conn: Mutex<u64>,
    /// Seals the push URLs devices get, as the Worker's `TANDEM_PUSH_KEY` (random per start).
    push_key: PushKey,
    /// The port the mediator listens on (the push URLs' origin), once bound.
    port: std::sync::atomic::AtomicU16,
}

impl Shared {
    fn next_number(&self) -> u64 {
        let mut next = self
            .next_conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *next += 1;
        *next
    }

    fn track(&self, handle: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    fn group(self: &Arc<Self>, id: [u8; 32]) -> mpsc::UnboundedSender<Input> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = groups.get(&id).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self
            .stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
            .unwrap_or_default();
        tokio::spawn(run_group(Arc::clone(self), id, store, tx.downgrade(), rx));
        groups.insert(id, tx.clone());
        tx
    }
}

/// The in-process mediator on one port.
#[derive(Debug)]
pub struct LocalMediator {
    port: u16,
    shared: Arc<SharedHandle>,
    accept: JoinHandle<()>,
}

/// `Shared` without a `Debug` of its internals.
struct SharedHandle(Arc<Shared>);

impl std::fmt::Debug for SharedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalMediatorState")
    }
}

impl LocalMediator {
    /// Listens on a free port; `chat_servers` maps server groups to chat server addresses.
    pub async fn start(
        config: GroupConfig,
        chat_servers: HashMap<String, SocketAddr>,
    ) -> Result<Self, HarnessError> {
        let shared = Arc::new(Shared {
            config,
            chat_servers,
            groups: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            next_conn: Mutex::new(0),
            push_key: PushKey::from_bytes(rand::random()),
            port: std::sync::atomic::AtomicU16::new(0),
        });
        let (port, accept) = listen(Arc::clone(&shared), 0).await?;
        shared
            .port
            .store(port, std::sync::atomic::Ordering::Relaxed);
        Ok(Self {
            port,
            shared: Arc::new(SharedHandle(shared)),
            accept,
        })
    }

    /// `ws://127.0.0.1:PORT`.
    #[must_use]
    pub fn ws_base(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Drops every connection (no close frame) and restarts every group from its store on the
    /// same port, as `Group::new` does after a Worker restart.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        let shared = &self.shared.0;
        self.accept.abort();
        for task in shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        let groups: Vec<_> = shared
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (id, tx) in groups {
            let (reply, stored) = oneshot::channel();
            if tx.send(Input::Shutdown(reply)).is_ok() {
                if let Ok(store) = stored.await {
                    shared
                        .stores
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, store);
                }
            }
        }
        let (_, accept) = listen(Arc::clone(shared), self.port).await?;
        self.accept = accept;
        Ok(())
    }
}

impl Drop for LocalMediator {
    fn drop(&mut self) {
        self.accept.abort();
        let shared = &self.shared.0;
        for task in shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        // Group tasks end when their senders are gone.
        shared
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

async fn listen(shared: Arc<Shared>, port: u16) -> Result<(u16, JoinHandle<()>), HarnessError> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|err| HarnessError::io(format!("bind 127.0.0.1:{port}"), err))?;
    let port = listener
        .local_addr()
        .map_err(|err| HarnessError::io("local address", err))?
        .port();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let task = tokio::spawn(serve(Arc::clone(&shared), stream));
            shared.track(task.abort_handle());
        }
    });
    Ok((port, accept))
}

/// A push request (`… /push/…`, answered as the Worker does) or a device WebSocket.
async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let mut start = [0_u8; 11];
    let peeked = stream.peek(&mut start).await.unwrap_or(0);
    let line = start.get(..peeked).unwrap_or_default();
    if line.starts_with(b"POST /push/") || line.starts_with(b"GET /push/") {
        serve_push(&shared, stream).await;
    } else {
        serve_connection(shared, stream).await;
    }
}

/// `POST /push/{token}`: 204 once the token's group took the push, 404 for a token that does
/// not open or a group with no task here, 405 for another method (docs/worker.md "Waking a
/// group"). The body is not read.
async fn serve_push(shared: &Arc<Shared>, mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut chunk = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let token = path.strip_prefix(PUSH_PATH).unwrap_or("");
    let status = if method != "POST" {
        "405 Method Not Allowed"
    } else {
        match shared.push_key.open(token, unix_ms()) {
            Err(_) => "404 Not Found",
            Ok(group) => {
                let tx = shared
                    .groups
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&group.0)
                    .cloned();
                let (reply, taken) = oneshot::channel();
                match tx.map(|tx| tx.send(Input::Push(reply))) {
                    Some(Ok(())) if taken.await.is_ok() => "204 No Content",
                    _ => "404 Not Found",
                }
            }
        }
    };
    let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
}

/// One device WebSocket: the path names the group; frames go to the group's task, its frames
/// come back through `out`.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut path = String::new();
    #[expect(
        clippy::result_large_err,
        reason = "the signature is tungstenite's handshake Callback"
    )]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Ok(info) = ClientUrlInfo::from_path(&path) else {
        let (mut sink, _) = ws.split();
        let _ = sink.send(Message::Close(Some(close_frame(1008)))).await;
        return;
    };
    let conn = {
        let mut next = shared
            .next_conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *next += 1;
        ConnId(*next)
    };
    let group = shared.group(info.device_group_id.0);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    if group
        .send(Input::Connect {
            conn,
            server_group: info.server_group.clone(),
            out: out_tx,
        })
        .is_err()
    {
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Frame(bytes) => {
                    if sink.send(Message::binary(bytes)).await.is_err() {
                        return;
                    }
                }
                Out::Close(code) => {
                    let _ = sink.send(Message::Close(Some(close_frame(code)))).await;
                    return;
                }
            }
        }
    });
    shared.track(writer.abort_handle());
    while let Some(message) = stream.next().await {
        let input = match message {
            Ok(Message::Binary(bytes)) => Input::Binary(conn, bytes.to_vec()),
            Ok(Message::Text(_)) => Input::Text(conn),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if group.send(input).is_err() {
            break;
        }
    }
    let _ = group.send(Input::Disconnect(conn));
}

/// A device's chat server connection: what the group writes, and what the server sends back.
struct Csp {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    task: AbortHandle,
    /// Which of the group's chat server connections this is.
    number: u64,
}

struct ConnState {
    out: mpsc::UnboundedSender<Out>,
    server_group: String,
    csp: Option<Csp>,
}

/// One group's task: the state machine, its connections and its timer.
async fn run_group(
    shared: Arc<Shared>,
    id: [u8; 32],
    store: MemoryStore,
    inputs_tx: mpsc::WeakUnboundedSender<Input>,
    mut inputs: mpsc::UnboundedReceiver<Input>,
) {
    let Ok(mut group) = Group::new(shared.config.clone(), PublicKey(id), store, unix_ms()) else {
        return;
    };
    let mut conns: HashMap<ConnId, ConnState> = HashMap::new();
    loop {
        let timer = group.poll_timeout().map(|at| {
            let wait = Duration::from_millis(at.saturating_sub(unix_ms()));
            tokio::time::Instant::now() + wait
        });
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = sleep_until(timer) => {
                group.on_timeout(unix_ms());
                apply_effects(&shared, &mut group, &mut conns, &inputs_tx);
                continue;
            }
        };
        let now = unix_ms();
        match input {
            None => return,
            Some(Input::Shutdown(reply)) => {
                let _ = reply.send(group.store().clone());
                for state in conns.into_values() {
                    if let Some(csp) = state.csp {
                        csp.task.abort();
                    }
                }
                return;
            }
            Some(Input::Connect {
                conn,
                server_group,
                out,
            }) => {
                // As the Worker does: a fresh token per device connection.
                let port = shared.port.load(std::sync::atomic::Ordering::Relaxed);
                let token = shared.push_key.seal(&PublicKey(id), now, &mut OsRng);
                group.set_push_url(Some(push_url(&format!("http://127.0.0.1:{port}"), &token)));
                conns.insert(
                    conn,
                    ConnState {
                        out,
                        server_group,
                        csp: None,
                    },
                );
                group.on_connect(conn, now, &mut OsRng);
            }
            // As the Worker does: a frame no container fits is refused by its length.
            Some(Input::Binary(conn, bytes)) if !frame_fits(bytes.len()) => {
                group.on_oversize_frame(conn, now);
            }
            Some(Input::Binary(conn, bytes)) => group.on_binary(conn, &bytes, now),
            Some(Input::Text(conn)) => group.on_text(conn, now),
            Some(Input::Disconnect(conn)) => {
                group.on_disconnect(conn, now);
                if let Some(csp) = conns.remove(&conn).and_then(|state| state.csp) {
                    csp.task.abort();
                }
            }
            Some(Input::CspBytes(conn, number, bytes)) => {
                if is_current(&conns, conn, number) {
                    group.on_csp_bytes(conn, &bytes, now);
                }
            }
            Some(Input::CspClosed(conn, number)) => {
                if is_current(&conns, conn, number) {
                    group.on_csp_closed(conn, now);
                }
            }
            Some(Input::CspFailed(conn, number)) => {
                if is_current(&conns, conn, number) {
                    group.on_csp_connect_failed(conn, now);
                }
            }
            Some(Input::Push(reply)) => {
                group.on_push(now);
                let _ = reply.send(());
            }
        }
        apply_effects(&shared, &mut group, &mut conns, &inputs_tx);
    }
}

/// Whether chat server connection `number` is still `conn`'s.
fn is_current(conns: &HashMap<ConnId, ConnState>, conn: ConnId, number: u64) -> bool {
    conns
        .get(&conn)
        .and_then(|state| state.csp.as_ref())
        .is_some_and(|csp| csp.number == number)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn apply_effects(
    shared: &Arc<Shared>,
    group: &mut Group<MemoryStore>,
    conns: &mut HashMap<ConnId, ConnState>,
    inputs: &mpsc::WeakUnboundedSender<Input>,
) {
    while let Some(effect) = group.poll_effect() {
        match effect {
            Effect::Send { conn, bytes } => {
                if let Some(state) = conns.get(&conn) {
                    let _ = state.out.send(Out::Frame(bytes));
                }
            }
            Effect::Close { conn, code, .. } => {
                if let Some(state) = conns.remove(&conn) {
                    let _ = state.out.send(Out::Close(code.as_u16()));
                    if let Some(csp) = state.csp {
                        csp.task.abort();
                    }
                }
            }
            Effect::OpenCsp { conn } => {
                if let (Some(state), Some(inputs)) = (conns.get_mut(&conn), inputs.upgrade()) {
                    // The Worker's lookup, leniency included (docs/protocol.md).
                    let addr = tandem_shared::keys::server_group_spellings(&state.server_group)
                        .iter()
                        .find_map(|group| shared.chat_servers.get(group).copied());
                    let (tx, rx) = mpsc::unbounded_channel();
                    let number = shared.next_number();
                    let task = tokio::spawn(run_csp(addr, conn, number, rx, inputs));
                    shared.track(task.abort_handle());
                    state.csp = Some(Csp {
                        tx,
                        task: task.abort_handle(),
                        number,
                    });
                }
            }
            Effect::CspSend { conn, bytes } => {
                if let Some(csp) = conns.get(&conn).and_then(|state| state.csp.as_ref()) {
                    let _ = csp.tx.send(bytes);
                }
            }
            Effect::CloseCsp { conn } => {
                if let Some(csp) = conns.get_mut(&conn).and_then(|state| state.csp.take()) {
                    csp.task.abort();
                }
            }
        }
    }
    while group.poll_store_error().is_some() {}
}

/// Connects to the chat server, writes what the group sends, reports what the server sends.
async fn run_csp(
    addr: Option<SocketAddr>,
    conn: ConnId,
    number: u64,
    mut writes: mpsc::UnboundedReceiver<Vec<u8>>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let stream = match addr {
        // As the Worker does: `connect` gets 10 s, then the device is closed with 4001.
        Some(addr) => tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let Some(stream) = stream else {
        let _ = inputs.send(Input::CspFailed(conn, number));
        return;
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = writes.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let bytes = buf.get(..n).unwrap_or_default().to_vec();
                if inputs.send(Input::CspBytes(conn, number, bytes)).is_err() {
                    break;
                }
            }
        }
    }
    writer.abort();
    let _ = inputs.send(Input::CspClosed(conn, number));
}
