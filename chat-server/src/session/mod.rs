//! One CSP connection (spec §9, DESIGN §4): moves bytes between the TCP stream and `shared`'s
//! [`CspServer`], and applies the server's own rules to what comes out of it: sessions per
//! csp-device-id, storing outgoing messages before acking them, delivery to the receiving
//! session, idle timeout, close-error.
//!
//! One task per connection. Per loop turn it writes what is pending, then waits for the first of:
//! bytes from the client, its inbox ([`Mailbox`]), the deadline (handshake or idle timeout).

mod close;
mod delivery;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::OsRng;
use tandem_shared::app::TANDEM_PUSH_TOKEN_TYPE;
use tandem_shared::crypto::SecretKey;
use tandem_shared::csp::{
    check_idle_timeout, CspPayload, CspServer, CspServerConfig, Extensions, LoginAck, MessageAck,
    MessageFlags, MessagePayloadVersion, MessageWithMetadataBox, PayloadContainer, PayloadType,
    PushToken, PushTokenType, ServerEvent,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant, Sleep};
use tracing::{debug, info, warn};

use crate::directory::Directory;
use crate::mailbox::{CloseRequest, MailItem, Mailbox, StoreOutcome};
use crate::registry::Registry;
use crate::store::{Command, Enqueue, Store};
use crate::types::{now_ms, Id, Identity};

pub use close::CloseReason;
pub use delivery::{Action, Delivery, MAX_READY, PAGE, WINDOW};

/// Outgoing messages a session may have waiting for storage before we stop reading from it.
pub const MAX_PENDING_STORE: usize = 256;
/// How long a client may leave our bytes unread.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a session taking over from another node's session waits for that node to commit
/// what its session handed it (docs/chat-server.md "Which session receives").
pub const RELEASE_WAIT: Duration = Duration::from_secs(1);
/// A created-at this far ahead of the server's clock is accepted as it is; further is overwritten.
pub const FUTURE_SKEW_S: u64 = 60;
/// Bytes read from the socket per system call.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per wake-up before other work gets a turn.
const READS_PER_TURN: usize = 4;
/// A write buffer larger than this is released once written, so idle sessions stay small.
const KEEP_OUT_CAPACITY: usize = 16 * 1024;

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// What every connection shares.
#[derive(Debug)]
pub struct Context {
    /// The permanent key `SK`.
    pub server_key: SecretKey,
    /// Identities and their keys.
    pub directory: Arc<Directory>,
    /// Online sessions.
    pub registry: Arc<Registry>,
    /// Durable storage.
    pub store: Store,
    /// Alert text for every new session.
    pub alert: Option<String>,
    /// Deadline from accept to login-ack.
    pub handshake_timeout: Duration,
    /// Idle timeout until the client sets one.
    pub idle_timeout: Duration,
    /// How long short-lived messages stay queued, in ms.
    pub short_lived_ttl_ms: u64,
    /// Several nodes share the database (PostgreSQL): sequence numbers are gapless per receiver
    /// and other nodes commit some of them, so delivery takes only contiguous notifications;
    /// don't-queue messages for a receiver not on this node are relayed.
    pub gapless: bool,
    /// Where push URLs may point (`--push-origin`); empty: tokens are ignored.
    pub push_origins: crate::push::PushOrigins,
}

/// Serves one TCP connection until it ends.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "TCP_NODELAY not set");
    }
    let csp = CspServer::new(
        CspServerConfig {
            server_key: ctx.server_key.clone(),
        },
        &mut OsRng,
    );
    let deadline = Instant::now() + ctx.handshake_timeout;
    let mut conn = Conn {
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        deadline,
        timer: Box::pin(tokio::time::sleep_until(deadline)),
        ctx,
        stream,
        csp,
        out: Vec::new(),
        login: None,
        session: None,
        probe_at: None,
    };
    let reason = conn.run().await;
    conn.finish(reason).await;
}

/// The state after login.
#[derive(Debug)]
struct Session {
    identity: Identity,
    device_id: u64,
    session_id: u64,
    mailbox: Arc<Mailbox>,
    version: MessagePayloadVersion,
    /// The client announced feature bit 1 (spec §12): it answers echo requests.
    echo_requests: bool,
    idle_timeout: Duration,
    pending_store: usize,
    delivery: Option<Delivery>,
    /// The receiving epoch storage gave this session at its unblock (0: never unblocked).
    epoch: u64,
    /// Where the delivery's cursor is published for the catch-up sweep.
    cursor: Arc<AtomicU64>,
    /// Demoted: tell storage, after this session's earlier commands (several nodes).
    release: bool,
}

struct Conn {
    id: u64,
    ctx: Arc<Context>,
    stream: TcpStream,
    csp: CspServer,
    out: Vec<u8>,
    /// When the connection times out (handshake, then idle); moved forward by every frame.
    deadline: Instant,
    /// Fires at or before `deadline`; re-armed lazily when it fires early, so a busy connection
    /// does not touch the timer wheel for every frame.
    timer: Pin<Box<Sleep>>,
    /// The identity named in login-data, for logs before the session exists.
    login: Option<Identity>,
    session: Option<Session>,
    /// When to send an echo request to a silent client that receives them (half its idle
    /// timeout after its last frame; `None`: sent already, or the client does not take them).
    probe_at: Option<Instant>,
}

enum Read {
    Data,
    WouldBlock,
}

/// The session, borrowed alone so that the other fields stay usable. The state machine emits
/// payloads only after `Authenticated`, which creates the session.
fn logged_in(session: &mut Option<Session>) -> Result<&mut Session, CloseReason> {
    session
        .as_mut()
        .ok_or(CloseReason::Protocol("payload before login"))
}

async fn wait_mailbox(mailbox: Option<&Mailbox>) {
    match mailbox {
        Some(m) => m.wait().await,
        None => std::future::pending().await,
    }
}

impl Conn {
    async fn run(&mut self) -> CloseReason {
        loop {
            if let Err(reason) = self.flush().await {
                return reason;
            }
            let can_read = self
                .session
                .as_ref()
                .is_none_or(|s| s.pending_store < MAX_PENDING_STORE);
            let mailbox = self.session.as_ref().map(|s| Arc::clone(&s.mailbox));
            let result = tokio::select! {
                ready = self.stream.readable(), if can_read => match ready {
                    Ok(()) => self.on_readable().await,
                    Err(e) => Err(CloseReason::Io(e)),
                },
                () = wait_mailbox(mailbox.as_deref()) => self.on_mail().await,
                () = self.timer.as_mut() => self.on_timer(),
            };
            if let Err(reason) = result {
                return reason;
            }
        }
    }

    fn on_timer(&mut self) -> Result<(), CloseReason> {
        let now = Instant::now();
        if self.probe_at.is_some_and(|at| now >= at) {
            self.probe_at = None;
            self.send_echo_request()?;
        }
        if now < self.deadline {
            let wake = self.next_wake();
            self.timer.as_mut().reset(wake);
            return Ok(());
        }
        Err(if self.session.is_some() {
            CloseReason::IdleTimeout
        } else {
            CloseReason::HandshakeTimeout
        })
    }

    /// Moves the deadline; the timer follows when it fires (it only ever moves later, except
    /// when the client shortens its idle timeout, which re-arms it at once).
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
        let wake = self.next_wake();
        if wake < self.timer.deadline() {
            self.timer.as_mut().reset(wake);
        }
    }

    /// A frame arrived from a logged-in client: its idle timeout starts over, and so does the
    /// wait before an echo request if it takes them.
    fn client_active(&mut self, idle: Duration, echo_requests: bool) {
        let now = Instant::now();
        self.probe_at = echo_requests.then(|| now + idle / 2);
        self.set_deadline(now + idle);
    }

    fn next_wake(&self) -> Instant {
        self.probe_at
            .map_or(self.deadline, |at| at.min(self.deadline))
    }

    /// Asks a silent client that announced feature bit 1 whether it is still there (spec §12);
    /// its answer, like any frame, moves the idle deadline. Clients without the bit never get
    /// one (Desktop's snapshot does not expect them).
    fn send_echo_request(&mut self) -> Result<(), CloseReason> {
        debug!(conn = self.id, "echo request to a silent client");
        self.send(&CspPayload::EchoRequest(now_ms().to_le_bytes().to_vec()))
    }

    async fn on_readable(&mut self) -> Result<(), CloseReason> {
        for _ in 0..READS_PER_TURN {
            match self.read_once()? {
                Read::Data => self.process_events().await?,
                Read::WouldBlock => break,
            }
            if self
                .session
                .as_ref()
                .is_some_and(|s| s.pending_store >= MAX_PENDING_STORE)
            {
                break;
            }
        }
        Ok(())
    }

    /// One non-blocking read into a stack buffer (no per-connection read buffer), fed to the
    /// state machine.
    fn read_once(&mut self) -> Result<Read, CloseReason> {
        let mut buf = [0_u8; READ_CHUNK];
        match self.stream.try_read(&mut buf) {
            Ok(0) => Err(if self.csp.has_partial_input() {
                CloseReason::Truncated
            } else {
                CloseReason::ClientClosed
            }),
            Ok(n) => {
                let bytes = buf.get(..n).unwrap_or_default();
                self.csp.receive(bytes).map_err(CloseReason::Csp)?;
                Ok(Read::Data)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Read::WouldBlock),
            Err(e) => Err(CloseReason::Io(e)),
        }
    }

    async fn process_events(&mut self) -> Result<(), CloseReason> {
        while let Some(event) = self.csp.poll_event() {
            match event {
                ServerEvent::NeedIdentityKey { identity } => {
                    self.login = Some(identity);
                    // The record as stored: another node may have created the identity or
                    // changed its cookie state since this node cached it.
                    let info = self
                        .ctx
                        .store
                        .login(identity)
                        .await
                        .map_err(|_| CloseReason::StorageFailure)?;
                    let key = info.record.map(|record| {
                        let key = record.public_key;
                        self.ctx.directory.insert(record);
                        key
                    });
                    // The current login-ack layout (spec §12): our clock and the queue length,
                    // which clients of either generation accept (docs/protocol.md).
                    let queued_messages = if key.is_some() { info.queued } else { 0 };
                    let ack = LoginAck {
                        server_time_ms: now_ms(),
                        queued_messages,
                    };
                    self.csp
                        .provide_identity_key_with_ack(key, ack)
                        .map_err(CloseReason::Csp)?;
                }
                ServerEvent::Authenticated {
                    identity,
                    extensions,
                } => self.on_authenticated(identity, &extensions).await?,
                ServerEvent::Payload(bytes) => self.on_payload(&bytes).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn on_authenticated(
        &mut self,
        identity: Identity,
        extensions: &Extensions,
    ) -> Result<(), CloseReason> {
        // Every feature byte is accepted: bit 0 picks the message struct as Desktop's payload
        // version did, bit 1 allows echo requests, other bits are ignored (spec §12).
        let features = extensions.effective_features();
        let version = MessagePayloadVersion::from(features);
        let echo_requests = features.receives_echo_requests();
        // No csp-device-id: a single-device client, device id 0.
        let device_id = extensions.csp_device_id.unwrap_or(0);
        let mailbox = Mailbox::new();
        let session_id = self
            .ctx
            .registry
            .register(identity, device_id, Arc::clone(&mailbox));
        let idle_timeout = self.ctx.idle_timeout;
        self.client_active(idle_timeout, echo_requests);
        self.session = Some(Session {
            identity,
            device_id,
            session_id,
            mailbox,
            version,
            echo_requests,
            idle_timeout,
            pending_store: 0,
            delivery: None,
            epoch: 0,
            cursor: Arc::default(),
            release: false,
        });
        // No identity in info/warn logs (docs/chat-server.md "Logs"): the conn number ties a
        // session's lines together.
        info!(
            conn = self.id,
            device_id = format_args!("{device_id:#018x}"),
            features = features.0,
            "session established"
        );
        let cookie = extensions.device_cookie.as_ref().map(|c| c.0);
        self.cache_identity(identity).await?;
        let (update, changed) = self.ctx.directory.observe_cookie(&identity, cookie);
        if let Some((cookie, changed)) = update {
            self.store(Command::SetDeviceCookie {
                identity,
                cookie,
                changed,
            })
            .await?;
        }
        if changed {
            self.send(&CspPayload::DeviceCookieChangeIndication)?;
        }
        if let Some(alert) = self.ctx.alert.clone() {
            self.send(&CspPayload::Alert(alert))?;
        }
        Ok(())
    }

    fn session(&mut self) -> Result<&mut Session, CloseReason> {
        logged_in(&mut self.session)
    }

    async fn on_payload(&mut self, bytes: &[u8]) -> Result<(), CloseReason> {
        let session = logged_in(&mut self.session)?;
        let idle = session.idle_timeout;
        let version = session.version;
        let echo_requests = session.echo_requests;
        self.client_active(idle, echo_requests);
        let payload = CspPayload::decode(bytes, version).map_err(CloseReason::Payload)?;
        match payload {
            CspPayload::EchoRequest(data) => self.send(&CspPayload::EchoResponse(data)),
            CspPayload::EchoResponse(_) => Ok(()),
            CspPayload::OutgoingMessage(message) => self.on_outgoing(message).await,
            CspPayload::IncomingMessageAck(ack) => self.on_incoming_ack(ack).await,
            CspPayload::UnblockIncomingMessages => self.on_unblock().await,
            CspPayload::SetConnectionIdleTimeout(seconds) => {
                let seconds = check_idle_timeout(seconds).map_err(CloseReason::Payload)?;
                let session = self.session()?;
                session.idle_timeout = Duration::from_secs(u64::from(seconds));
                let idle = session.idle_timeout;
                let echo_requests = session.echo_requests;
                self.client_active(idle, echo_requests);
                Ok(())
            }
            CspPayload::SetPushNotificationToken(token) => self.on_push_token(&token).await,
            CspPayload::SetHighPriorityPushNotificationToken(_)
            | CspPayload::DeletePushNotificationToken(_) => {
                debug!(
                    conn = self.id,
                    "push services other than Tandem's are not supported; ignored"
                );
                Ok(())
            }
            CspPayload::ClearDeviceCookieChangeIndication => {
                let identity = self.session()?.identity;
                self.cache_identity(identity).await?;
                if let Some(cookie) = self.ctx.directory.clear_cookie_change(&identity) {
                    self.store(Command::SetDeviceCookie {
                        identity,
                        cookie,
                        changed: false,
                    })
                    .await?;
                }
                Ok(())
            }
            _ => Err(CloseReason::Protocol(
                "payload type that only the server sends",
            )),
        }
    }

    async fn on_outgoing(
        &mut self,
        mut message: MessageWithMetadataBox,
    ) -> Result<(), CloseReason> {
        let identity = logged_in(&mut self.session)?.identity;
        if message.sender != identity {
            return Err(CloseReason::Protocol(
                "sender is not the logged-in identity",
            ));
        }
        let ack = !message.flags.contains(MessageFlags::DONT_ACK);
        let receiver = message.receiver;
        let message_id = message.message_id;
        if receiver == identity || !self.cache_identity(receiver).await? {
            // Nobody could ever receive it: drop it, but answer so the sender does not wait.
            debug!(conn = self.id, receiver = %Id(&receiver), "message to self or unknown identity dropped");
            return self.ack_outgoing(ack, receiver, message_id);
        }
        let now = now_ms();
        let now_s = now / 1000;
        let short_lived = message.flags.contains(MessageFlags::SHORT_LIVED);
        if short_lived || u64::from(message.created_at) > now_s.saturating_add(FUTURE_SKEW_S) {
            message.created_at = u32::try_from(now_s).unwrap_or(u32::MAX);
        }
        let body: Arc<[u8]> = Arc::from(
            message
                .encode()
                .map_err(|e| CloseReason::Payload(e.into()))?,
        );
        if message.flags.contains(MessageFlags::DONT_QUEUE) {
            if let Some(mailbox) = self.ctx.registry.receiver(&receiver) {
                mailbox.push_delivery(MailItem::Transient(body));
            } else if self.ctx.gapless {
                // Several nodes: the receiving session may be on another one.
                self.store(Command::Relay { receiver, body }).await?;
            }
            return self.ack_outgoing(ack, receiver, message_id);
        }
        let session = logged_in(&mut self.session)?;
        session.pending_store = session.pending_store.saturating_add(1);
        let reply = Arc::clone(&session.mailbox);
        self.store(Command::Enqueue(Box::new(Enqueue {
            receiver,
            sender: identity,
            message_id,
            flags: message.flags,
            expires_at_ms: short_lived.then(|| now.saturating_add(self.ctx.short_lived_ttl_ms)),
            body,
            ack,
            reply,
        })))
        .await
    }

    /// Whether an identity exists: the cached directory, else the database (another node may
    /// have created it, or a node on PostgreSQL dropped it from its cache); a record found
    /// there is cached, since the cookie state is read and changed in the directory.
    async fn cache_identity(&self, identity: Identity) -> Result<bool, CloseReason> {
        if self.ctx.directory.contains(&identity) {
            return Ok(true);
        }
        let record = self
            .ctx
            .store
            .lookup(identity)
            .await
            .map_err(|_| CloseReason::StorageFailure)?;
        Ok(record.map(|r| self.ctx.directory.insert(r)).is_some())
    }

    fn ack_outgoing(
        &mut self,
        ack: bool,
        receiver: Identity,
        message_id: u64,
    ) -> Result<(), CloseReason> {
        if !ack {
            return Ok(());
        }
        self.send(&CspPayload::OutgoingMessageAck(MessageAck {
            identity: receiver,
            message_id,
        }))
    }

    async fn on_incoming_ack(&mut self, ack: MessageAck) -> Result<(), CloseReason> {
        let session = self.session()?;
        let seq = session
            .delivery
            .as_mut()
            .and_then(|d| d.on_ack(&ack.identity, ack.message_id));
        match seq {
            Some(seq) => {
                self.remove(seq).await?;
                self.pump().await
            }
            None => {
                debug!(
                    conn = self.id,
                    "ack for a message not in flight on this session; ignored"
                );
                Ok(())
            }
        }
    }

    /// `set-push-notification-token`: Tandem's type (0xa0) registers the URL that wakes the
    /// identity's device group, if it is under an allowed origin (docs/chat-server.md "Push");
    /// type NONE forgets it; other push services are not supported and ignored.
    async fn on_push_token(&mut self, token: &PushToken) -> Result<(), CloseReason> {
        let identity = self.session()?.identity;
        let url = match token.token_type() {
            TANDEM_PUSH_TOKEN_TYPE => match self.ctx.push_origins.check(token.token()) {
                Ok(url) => Some(url),
                Err(e) => {
                    debug!(conn = self.id, error = %e, "push URL ignored");
                    return Ok(());
                }
            },
            PushTokenType::NONE => None,
            _ => {
                debug!(
                    conn = self.id,
                    "push services other than Tandem's are not supported; ignored"
                );
                return Ok(());
            }
        };
        self.store(Command::SetPushUrl { identity, url }).await
    }

    async fn on_unblock(&mut self) -> Result<(), CloseReason> {
        let session = logged_in(&mut self.session)?;
        if session.delivery.is_some() {
            return Ok(());
        }
        let (identity, device_id, session_id) =
            (session.identity, session.device_id, session.session_id);
        // The epoch is stored before the queue is read: every node then knows which session
        // receives, and removes by an older one do nothing.
        let (epoch, handover) = self
            .ctx
            .store
            .claim(identity, session_id)
            .await
            .map_err(|_| CloseReason::StorageFailure)?;
        let Some(cursor) = self
            .ctx
            .registry
            .make_receiver(&identity, device_id, session_id, epoch)
        else {
            // Replaced meanwhile (the close request is already in the inbox), or a newer
            // unblock of this identity took over first.
            return Ok(());
        };
        if handover {
            // A session on another node received until now: read the queue only after that
            // node has committed what its session handed it (the removals of its acks), so
            // an acked message is not delivered again; a dead node is waited for only so long.
            let released = self
                .ctx
                .registry
                .wait_released(&identity, epoch, RELEASE_WAIT)
                .await;
            debug!(conn = self.id, released, "took over from another node");
        }
        let (delivery, first) = if self.ctx.gapless {
            Delivery::start_gapless()
        } else {
            Delivery::start()
        };
        let session = self.session()?;
        session.epoch = epoch;
        session.cursor = cursor;
        session.delivery = Some(delivery);
        debug!(conn = self.id, "receiving");
        self.act(vec![first]).await
    }

    async fn on_mail(&mut self) -> Result<(), CloseReason> {
        let session = self.session()?;
        let drained = session.mailbox.drain();
        for item in drained.items {
            self.on_mail_item(item)?;
        }
        if drained.overflowed {
            if let Some(d) = self.session()?.delivery.as_mut() {
                d.on_overflow();
            }
        }
        let session = self.session()?;
        if core::mem::take(&mut session.release) {
            let (identity, session_id) = (session.identity, session.session_id);
            self.store(Command::Release {
                identity,
                session_id,
            })
            .await?;
        }
        self.pump().await
    }

    fn on_mail_item(&mut self, item: MailItem) -> Result<(), CloseReason> {
        let several_nodes = self.ctx.gapless;
        let session = self.session()?;
        match item {
            MailItem::Stored {
                receiver,
                message_id,
                ack,
                outcome,
            } => {
                session.pending_store = session.pending_store.saturating_sub(1);
                match outcome {
                    StoreOutcome::Stored | StoreOutcome::Duplicate => {
                        self.ack_outgoing(ack, receiver, message_id)?;
                    }
                    StoreOutcome::QueueFull => {
                        warn!(
                            conn = self.id,
                            "receiver queue full; message not stored nor acked"
                        );
                    }
                    StoreOutcome::Failed => return Err(CloseReason::StorageFailure),
                }
            }
            MailItem::Fetched {
                messages,
                complete,
                backlog_end,
            } => {
                if let Some(d) = session.delivery.as_mut() {
                    d.on_fetched(messages, complete, backlog_end);
                }
            }
            MailItem::Queued(message) => {
                if let Some(d) = session.delivery.as_mut() {
                    d.on_queued(message);
                }
            }
            MailItem::Hinted(message) => {
                if let Some(d) = session.delivery.as_mut() {
                    d.on_hinted(message);
                }
            }
            MailItem::Transient(body) => {
                if session.delivery.is_some() {
                    let container = incoming_container(&body, session.version)?;
                    self.send_container(&container)?;
                }
            }
            MailItem::Recheck => {
                if let Some(d) = session.delivery.as_mut() {
                    d.on_hint();
                }
            }
            MailItem::Demoted => {
                if let Some(d) = session.delivery.take() {
                    session.release = several_nodes;
                    info!(
                        conn = self.id,
                        unacked = d.in_flight(),
                        "no longer receiving: another session unblocked"
                    );
                }
            }
            MailItem::Close(request) => {
                return Err(match request {
                    CloseRequest::Replaced => CloseReason::Replaced,
                    CloseRequest::Shutdown => CloseReason::Shutdown,
                    CloseRequest::StorageFailure => CloseReason::StorageFailure,
                })
            }
        }
        Ok(())
    }

    async fn pump(&mut self) -> Result<(), CloseReason> {
        let mut actions = Vec::new();
        if let Some(session) = self.session.as_mut() {
            if let Some(d) = session.delivery.as_mut() {
                d.pump(now_ms(), &mut actions);
                session.cursor.store(d.cursor(), Ordering::Relaxed);
            }
        }
        self.act(actions).await
    }

    async fn act(&mut self, actions: Vec<Action>) -> Result<(), CloseReason> {
        for action in actions {
            match action {
                Action::Send(message) => {
                    let version = self.session()?.version;
                    let container = incoming_container(&message.body, version)?;
                    self.send_container(&container)?;
                }
                Action::Fetch {
                    after,
                    limit,
                    backlog,
                } => {
                    let session = self.session()?;
                    let command = Command::Fetch {
                        receiver: session.identity,
                        after,
                        limit,
                        backlog,
                        epoch: session.epoch,
                        reply: Arc::clone(&session.mailbox),
                    };
                    self.store(command).await?;
                }
                Action::Remove(seq) => self.remove(seq).await?,
                Action::QueueSendComplete => self.send(&CspPayload::QueueSendComplete)?,
            }
        }
        Ok(())
    }

    /// Removes a message from this session's queue, under the session's receiving epoch.
    async fn remove(&mut self, seq: u64) -> Result<(), CloseReason> {
        let session = self.session()?;
        let (receiver, epoch) = (session.identity, session.epoch);
        self.store(Command::Remove {
            receiver,
            seq,
            epoch,
        })
        .await
    }

    async fn store(&self, command: Command) -> Result<(), CloseReason> {
        self.ctx
            .store
            .send(command)
            .await
            .map_err(|_| CloseReason::StorageFailure)
    }

    fn send(&mut self, payload: &CspPayload) -> Result<(), CloseReason> {
        let container = payload.encode().map_err(CloseReason::Payload)?;
        self.send_container(&container)
    }

    fn send_container(&mut self, container: &[u8]) -> Result<(), CloseReason> {
        self.csp.send(container).map_err(CloseReason::Csp)
    }

    async fn flush(&mut self) -> Result<(), CloseReason> {
        while let Some(unit) = self.csp.poll_transmit() {
            self.out.extend_from_slice(&unit);
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let written = timeout(WRITE_TIMEOUT, self.stream.write_all(&self.out)).await;
        self.out.clear();
        if self.out.capacity() > KEEP_OUT_CAPACITY {
            self.out = Vec::new();
        }
        match written {
            Err(_) => Err(CloseReason::WriteTimeout),
            Ok(Err(e)) => Err(CloseReason::Io(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Tells the client why (when the protocol allows it), closes, and leaves the registry.
    async fn finish(mut self, reason: CloseReason) {
        if let Some((can_reconnect, message)) = reason.close_error() {
            let payload = CspPayload::CloseError {
                can_reconnect,
                message,
            }
            .encode();
            if let Ok(container) = payload {
                if self.csp.is_established() {
                    let _ = self.csp.send(&container);
                } else if let Some(frame) = self.csp.seal_final(&container) {
                    self.out.extend_from_slice(&frame);
                }
            }
            let _ = self.flush().await;
        }
        let _ = timeout(WRITE_TIMEOUT, self.stream.shutdown()).await;
        match &self.session {
            Some(session) => {
                self.ctx.registry.unregister(
                    &session.identity,
                    session.device_id,
                    session.session_id,
                );
                if session.epoch > 0 && self.ctx.gapless {
                    // Other nodes stop hinting this node about the identity (best effort: a
                    // stale row costs a useless hint, nothing else).
                    let _ = self
                        .ctx
                        .store
                        .send(Command::Release {
                            identity: session.identity,
                            session_id: session.session_id,
                        })
                        .await;
                }
                info!(
                    conn = self.id,
                    device_id = format_args!("{:#018x}", session.device_id),
                    reason = %reason,
                    "session closed"
                );
            }
            // The identity only when the operator asked for debug lines (docs/chat-server.md
            // "Logs").
            None => match self.login {
                Some(identity) if tracing::enabled!(tracing::Level::DEBUG) => {
                    debug!(conn = self.id, identity = %Id(&identity), reason = %reason, "handshake failed");
                }
                _ => info!(conn = self.id, reason = %reason, "handshake failed"),
            },
        }
    }
}

/// The payload container of an incoming message (0x02) in the session's message struct: a
/// legacy session gets the message without its metadata container (spec §9.5 converts 1:1).
fn incoming_container(body: &[u8], version: MessagePayloadVersion) -> Result<Vec<u8>, CloseReason> {
    let legacy_body;
    let data = match version {
        MessagePayloadVersion::WithMetadataBox => body,
        MessagePayloadVersion::Legacy => {
            let mut message =
                MessageWithMetadataBox::decode(body).map_err(|e| CloseReason::Payload(e.into()))?;
            message.metadata.clear();
            legacy_body = message
                .encode()
                .map_err(|e| CloseReason::Payload(e.into()))?;
            &legacy_body
        }
    };
    PayloadContainer {
        payload_type: PayloadType::IncomingMessage.as_u8(),
        data,
    }
    .encode()
    .map_err(CloseReason::Payload)
}
