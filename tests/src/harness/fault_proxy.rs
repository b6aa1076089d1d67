//! [`FaultProxy`]: a TCP proxy between the mediator and the chat server that misbehaves on
//! command, as a real network does: every link cut at once, every chunk delayed, a link cut in
//! the middle of a frame, or a half-open path that swallows bytes and never closes. Its target
//! can be moved, so a chat server restarted on another port stays behind the same address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::error::HarnessError;

/// How the proxy treats the bytes of every link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward at once.
    Pass,
    /// Hold each chunk this long before forwarding it.
    Delay(Duration),
    /// Read and drop everything, close nothing: a half-open path.
    Blackhole,
}

#[derive(Debug)]
struct State {
    target: SocketAddr,
    mode: ProxyMode,
    /// The next chunk from the chat server is forwarded in part, then both ends close.
    cut_next_frame: bool,
    links: Vec<Link>,
    accepted: u64,
}

/// One proxied connection.
#[derive(Debug)]
struct Link {
    task: JoinHandle<()>,
    /// Swallow everything from now on, close nothing (this link only).
    dead: Arc<AtomicBool>,
}

/// See the module docs; dropped, it ends every link.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where the mediator connects.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| HarnessError::io("bind the fault proxy", err))?;
        let addr = listener
            .local_addr()
            .map_err(|err| HarnessError::io("fault proxy address", err))?;
        let state = Arc::new(Mutex::new(State {
            target,
            mode: ProxyMode::Pass,
            cut_next_frame: false,
            links: Vec::new(),
            accepted: 0,
        }));
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// New links go to `target` (links already open stay where they are).
    pub fn retarget(&self, target: SocketAddr) {
        self.lock().target = target;
    }

    /// How every link treats its bytes from now on.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.lock().mode = mode;
    }

    /// Closes every open link at once (both sockets drop).
    pub fn cut_all(&self) {
        for link in self.lock().links.drain(..) {
            link.task.abort();
        }
    }

    /// Every open link goes half-open: it swallows all bytes and never closes, while new links
    /// work (a path through a NAT that forgot it, or to a host that died without a word).
    pub fn half_open_existing(&self) {
        for link in &self.lock().links {
            link.dead.store(true, Ordering::Relaxed);
        }
    }

    /// The next chunk the chat server sends on any link goes through in part; then that link
    /// closes: a frame cut in the middle.
    pub fn cut_next_frame(&self) {
        self.lock().cut_next_frame = true;
    }

    /// Links accepted so far.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    while let Ok((client, _)) = listener.accept().await {
        let target = {
            let mut s = lock(&state);
            s.accepted += 1;
            s.links.retain(|l| !l.task.is_finished());
            s.target
        };
        let link_state = Arc::clone(&state);
        let dead = Arc::new(AtomicBool::new(false));
        let link_dead = Arc::clone(&dead);
        let task = tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = Pump {
                state: Arc::clone(&link_state),
                dead: Arc::clone(&link_dead),
                from_server: false,
            };
            let down = Pump {
                state: link_state,
                dead: link_dead,
                from_server: true,
            };
            // Either direction ending ends the link, as a proxy that lost one side does.
            tokio::select! {
                () = up.run(client_read, server_write) => {}
                () = down.run(server_read, client_write) => {}
            }
        });
        lock(&state).links.push(Link { task, dead });
    }
}

/// One direction of a link.
struct Pump {
    state: Arc<Mutex<State>>,
    dead: Arc<AtomicBool>,
    from_server: bool,
}

impl Pump {
    async fn run(self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let mut buf = vec![0_u8; 16 * 1024];
        loop {
            let Ok(n) = from.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            let (mode, cut) = {
                let mut s = lock(&self.state);
                let cut = self.from_server && std::mem::take(&mut s.cut_next_frame);
                (s.mode, cut)
            };
            let chunk = buf.get(..n).unwrap_or_default();
            if self.dead.load(Ordering::Relaxed) {
                continue;
            }
            match mode {
                ProxyMode::Blackhole => continue,
                ProxyMode::Delay(by) => tokio::time::sleep(by).await,
                ProxyMode::Pass => {}
            }
            if cut {
                let part = chunk.get(..n.div_ceil(2)).unwrap_or_default();
                let _ = to.write_all(part).await;
                return;
            }
            if to.write_all(chunk).await.is_err() {
                return;
            }
        }
    }
}
