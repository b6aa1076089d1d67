//! The bench-only bare relay: a Durable Object that forwards every binary frame a socket sends
//! to all other sockets of the same object, with no protocol, storage or copies through wasm
//! memory. It is the lower bound the mediator's own relay is measured against.
//!
//! For the bench's diagnostic "relay with acks" (the mediator's frame count: 4 in, 4 out per
//! envelope) a socket may name its role in the query: `?role=acker` sends only to the sockets
//! without a role (the sender), `?role=sibling` sends to nobody (its frames are read and
//! dropped). Without a role nothing changes: every frame goes to every other socket.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::StreamExt;
use worker::{
    console_error, durable_object, wasm_bindgen_futures, DurableObject, Env, Request, Response,
    State, WebSocket,
};

use crate::ws::{self, Frame};

/// One relay room, named by the `/bench-relay/{name}` path.
#[durable_object]
pub struct BenchRelay {
    room: Rc<Room>,
}

impl std::fmt::Debug for BenchRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchRelay")
            .field("sockets", &self.room.sockets.borrow().len())
            .finish()
    }
}

struct Room {
    next_socket: Cell<u64>,
    /// Few sockets per room: a vector beats a map for the per-frame fan-out.
    sockets: RefCell<Vec<(u64, Role, WebSocket)>>,
}

/// Where a socket's frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// To every other socket.
    Sender,
    /// To the sockets with [`Role::Sender`] only.
    Acker,
    /// Nowhere.
    Sibling,
}

impl DurableObject for BenchRelay {
    fn new(_state: State, _env: Env) -> Self {
        Self {
            room: Rc::new(Room {
                next_socket: Cell::new(0),
                sockets: RefCell::new(Vec::new()),
            }),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        // The class stays in every build (wrangler.toml binds it and its migration created it);
        // without the `dev` feature it relays nothing, and the code below is compiled away.
        if !cfg!(feature = "dev") {
            return Response::error("not found", 404);
        }
        if !crate::is_websocket_upgrade(&req)? {
            return Response::error("expected a WebSocket upgrade", 426);
        }
        let role = match req
            .url()?
            .query_pairs()
            .find(|(key, _)| key == "role")
            .map(|(_, value)| value)
            .as_deref()
        {
            None => Role::Sender,
            Some("acker") => Role::Acker,
            Some("sibling") => Role::Sibling,
            Some(_) => return Response::error("role is acker or sibling", 400),
        };
        let (client, server) = ws::accept_pair()?;
        let id = self.room.next_socket.get();
        self.room.next_socket.set(id.wrapping_add(1));
        self.room
            .sockets
            .borrow_mut()
            .push((id, role, server.clone()));
        let room = Rc::clone(&self.room);
        wasm_bindgen_futures::spawn_local(async move {
            room.serve(id, role, &server).await;
            room.sockets
                .borrow_mut()
                .retain(|(other, _, _)| *other != id);
        });
        Response::from_websocket(client)
    }
}

impl Room {
    async fn serve(&self, id: u64, role: Role, ws: &WebSocket) {
        let mut events = match ws.events() {
            Ok(events) => events,
            Err(err) => {
                console_error!("relay socket events: {err}");
                return;
            }
        };
        while let Some(event) = events.next().await {
            match ws::frame_of(event) {
                Some(Frame::Binary(buffer)) => {
                    if role == Role::Sibling {
                        continue;
                    }
                    for (other, other_role, socket) in self.sockets.borrow().iter() {
                        let to =
                            *other != id && (role == Role::Sender || *other_role == Role::Sender);
                        // A peer that is closing misses the frame; the bench counts what arrives.
                        if to && ws::send_buffer(socket, &buffer).is_err() {
                            continue;
                        }
                    }
                }
                Some(Frame::Text | Frame::Unreadable) => {}
                None => return,
            }
        }
    }
}
