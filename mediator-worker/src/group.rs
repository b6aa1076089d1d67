//! The device group's Durable Object (DESIGN.md §1, §3), as a skeleton: it owns the group's
//! WebSockets, its SQLite schema and one chat server TCP connection per device, and moves bytes.
//!
//! Until `shared`'s mediator state machine is plugged in, a binary frame that is a d2m proxy
//! container (type 0x00) goes to the chat server over TCP and the server's bytes come back in proxy
//! containers; any other binary frame is echoed back and counted in SQLite.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures_channel::mpsc;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use tandem_shared::d2m::{CloseCode, Container, PayloadType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use worker::{
    console_error, durable_object, js_sys, wasm_bindgen_futures, DurableObject, Env, Request,
    Response, Socket, SqlStorage, State, WebSocket,
};

use crate::config::{chat_server_var, ChatServerAddr};
use crate::schema;
use crate::ws::{self, Frame};

/// Path of the development-only counters request the Worker sends to the object.
pub(crate) const STATS_PATH: &str = "/_dev/stats";

/// Bytes read from the chat server per proxy container sent to the device.
const TCP_READ_CHUNK: usize = 16 * 1024;

/// One device group's Durable Object, named `hex(DGPK.public)`.
#[durable_object]
pub struct DeviceGroup {
    env: Env,
    group: Rc<Group>,
}

impl std::fmt::Debug for DeviceGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceGroup")
            .field("connections", &self.group.connections.borrow().len())
            .finish_non_exhaustive()
    }
}

/// State shared between the object and its connection tasks.
struct Group {
    sql: SqlStorage,
    /// Set when creating the schema failed; every request is then refused.
    schema_error: Option<String>,
    next_connection: Cell<u64>,
    connections: RefCell<HashMap<u64, Connection>>,
}

/// One device WebSocket.
struct Connection {
    ws: WebSocket,
    /// The chat server of the device's server group, or why there is none.
    chat_server: Result<ChatServerAddr, String>,
    /// Bytes for the chat server, once the device sent its first proxy container.
    to_chat_server: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl DurableObject for DeviceGroup {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        let schema_error = schema::create(&sql).err().map(|err| err.to_string());
        if let Some(err) = &schema_error {
            console_error!("device group schema: {err}");
        }
        Self {
            env,
            group: Rc::new(Group {
                sql,
                schema_error,
                next_connection: Cell::new(0),
                connections: RefCell::new(HashMap::new()),
            }),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        if let Some(err) = &self.group.schema_error {
            return Response::error(format!("storage unavailable: {err}"), 500);
        }
        if crate::is_websocket_upgrade(&req)? {
            return self.accept_device(&req);
        }
        if req.path() == STATS_PATH {
            return Response::from_json(&self.group.stats()?);
        }
        Response::error("not found", 404)
    }
}

impl DeviceGroup {
    /// Accepts a device WebSocket; the Worker has already validated the path.
    fn accept_device(&self, req: &Request) -> worker::Result<Response> {
        let info = match tandem_shared::keys::ClientUrlInfo::from_path(&req.path()) {
            Ok(info) => info,
            Err(err) => return Response::error(format!("bad mediator path: {err}"), 400),
        };
        let chat_server = self
            .env
            .var(&chat_server_var(&info.server_group))
            .map_err(|_| format!("no chat server for server group {}", info.server_group))
            .and_then(|var| ChatServerAddr::parse(&var.to_string()).map_err(|e| e.to_string()));

        self.group.increment(schema::CONNECTIONS_ACCEPTED)?;
        let (client, server) = ws::accept_pair()?;
        let id = self.group.next_connection.get();
        self.group.next_connection.set(id.wrapping_add(1));
        self.group.connections.borrow_mut().insert(
            id,
            Connection {
                ws: server.clone(),
                chat_server,
                to_chat_server: None,
            },
        );

        let group = Rc::clone(&self.group);
        wasm_bindgen_futures::spawn_local(async move {
            serve_device(&group, id, server).await;
            // Dropping the connection drops its chat server sender, which ends the TCP task.
            group.connections.borrow_mut().remove(&id);
        });
        Response::from_websocket(client)
    }
}

/// Handles one device's frames until it closes.
async fn serve_device(group: &Group, id: u64, ws: WebSocket) {
    let mut events = match ws.events() {
        Ok(events) => events,
        Err(err) => {
            console_error!("device socket events: {err}");
            return;
        }
    };
    while let Some(event) = events.next().await {
        match ws::frame_of(event) {
            Frame::Binary(buffer) => {
                let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
                if let Err(err) = group.on_binary(id, &ws, &bytes) {
                    console_error!("device frame: {err}");
                    ws::close(
                        &ws,
                        CloseCode::ServerInternalError.as_u16(),
                        "internal error",
                    );
                    return;
                }
            }
            Frame::Text => {
                ws::close(
                    &ws,
                    CloseCode::ProtocolError.as_u16(),
                    "text frames are not part of d2m",
                );
                return;
            }
            Frame::Unreadable => {
                console_error!("binary frame not readable: was binaryType set before accept()?");
                ws::close(
                    &ws,
                    CloseCode::ServerInternalError.as_u16(),
                    "internal error",
                );
                return;
            }
            Frame::Closed => return,
        }
    }
}

impl Group {
    /// A proxy container goes to the chat server; anything else is echoed (skeleton behaviour).
    fn on_binary(&self, id: u64, ws: &WebSocket, bytes: &[u8]) -> worker::Result<()> {
        match Container::decode(bytes) {
            Ok(container) if container.payload_type == PayloadType::Proxy.as_u8() => {
                self.proxy(id, container.payload);
                Ok(())
            }
            _ => {
                ws.send_with_bytes(bytes)?;
                self.increment(schema::FRAMES_ECHOED)
            }
        }
    }

    /// Writes proxy payload towards the chat server, opening the connection on first use.
    fn proxy(&self, id: u64, payload: &[u8]) {
        let mut connections = self.connections.borrow_mut();
        let Some(connection) = connections.get_mut(&id) else {
            return;
        };
        let sender = match &connection.to_chat_server {
            Some(sender) => sender.clone(),
            None => {
                let addr = match &connection.chat_server {
                    Ok(addr) => addr.clone(),
                    Err(reason) => {
                        ws::close(
                            &connection.ws,
                            CloseCode::CspUnableToEstablish.as_u16(),
                            reason,
                        );
                        return;
                    }
                };
                let (sender, receiver) = mpsc::unbounded();
                connection.to_chat_server = Some(sender.clone());
                let ws = connection.ws.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    let end = relay_chat_server(&addr, &ws, receiver).await;
                    if let Some((code, reason)) = end.close_code() {
                        ws::close(&ws, code.as_u16(), reason);
                    }
                });
                sender
            }
        };
        // A closed channel means the TCP task already ended and closed the device.
        let _ = sender.unbounded_send(payload.to_vec());
    }

    fn increment(&self, counter: &str) -> worker::Result<()> {
        schema::increment(&self.sql, counter)
    }

    fn stats(&self) -> worker::Result<schema::Stats> {
        let mut stats = schema::read_stats(&self.sql)?;
        stats.open_connections = self.connections.borrow().len();
        Ok(stats)
    }
}

/// How a chat server connection ended.
#[derive(Debug)]
enum TcpEnd {
    /// The device went away first; nothing to tell it.
    DeviceGone,
    /// The chat server closed its side.
    ServerClosed,
    /// `connect()` failed or the socket never opened.
    ConnectFailed,
    /// Reading from or writing to the chat server failed.
    Io,
}

impl TcpEnd {
    /// The close code for the device (DESIGN.md §3, CSP proxy).
    fn close_code(&self) -> Option<(CloseCode, &'static str)> {
        match self {
            Self::DeviceGone => None,
            Self::ServerClosed => Some((CloseCode::CspClosed, "chat server closed")),
            Self::ConnectFailed => {
                Some((CloseCode::CspUnableToEstablish, "chat server unreachable"))
            }
            Self::Io => Some((CloseCode::CspClosed, "chat server connection failed")),
        }
    }
}

/// Moves bytes between one device and the chat server until either side ends.
async fn relay_chat_server(
    addr: &ChatServerAddr,
    ws: &WebSocket,
    mut to_server: mpsc::UnboundedReceiver<Vec<u8>>,
) -> TcpEnd {
    let socket = match Socket::builder().connect(addr.host.clone(), addr.port) {
        Ok(socket) => socket,
        Err(_) => return TcpEnd::ConnectFailed,
    };
    if socket.opened().await.is_err() {
        return TcpEnd::ConnectFailed;
    }
    let (mut reader, mut writer) = tokio::io::split(socket);

    let end = {
        let upstream = async {
            while let Some(bytes) = to_server.next().await {
                if writer.write_all(&bytes).await.is_err() {
                    return TcpEnd::Io;
                }
            }
            TcpEnd::DeviceGone
        };
        let downstream = async {
            let mut buf = vec![0u8; TCP_READ_CHUNK];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) => return TcpEnd::ServerClosed,
                    Ok(n) => n,
                    Err(_) => return TcpEnd::Io,
                };
                let Some(chunk) = buf.get(..n) else {
                    return TcpEnd::Io;
                };
                let frame = Container {
                    payload_type: PayloadType::Proxy.as_u8(),
                    payload: chunk,
                }
                .encode();
                match frame {
                    Ok(frame) if ws.send_with_bytes(&frame).is_ok() => {}
                    _ => return TcpEnd::DeviceGone,
                }
            }
        };
        futures_util::pin_mut!(upstream, downstream);
        match select(upstream, downstream).await {
            Either::Left((end, _)) | Either::Right((end, _)) => end,
        }
    };
    let mut socket = reader.unsplit(writer);
    if let Err(err) = socket.close().await {
        worker::console_debug!("closing chat server socket: {err}");
    }
    end
}
