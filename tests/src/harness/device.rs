//! [`Device`]: one device's mediator connection, driven the quinn way: the WebSocket's messages
//! and a monotonic clock go into a [`DeviceSession`], its transmits go out, its events are kept
//! in a backlog the async waits pick from.
//!
//! There is no background task: a device reads its socket only while one of its methods is
//! awaited. The mediator buffers what it sends meanwhile (a Durable Object's `send` does not
//! block; TCP buffers the rest), so a test can drive devices one after the other, or several at
//! once with `tokio::join!`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::rngs::OsRng;
use tandem_shared::csp::{CspPayload, MessagePayloadVersion};
use tandem_shared::d2d::Scope;
use tandem_shared::d2m::CloseCode;
use tandem_shared::device::{
    CloseOrigin, DeviceConfig, DeviceEntry, DeviceError, DeviceSession, Event, ServerInfo,
};
use tandem_shared::proto::d2d::Envelope;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::error::HarnessError;

/// How long a wait lasts unless the caller says otherwise (generous: 2 loaded cores).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Events remembered for error messages.
const RECENT_EVENTS: usize = 12;

/// Reflects written before the device reads what has arrived meanwhile.
const REFLECT_CHUNK: usize = 256;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Milliseconds on a monotonic clock shared by every device of the process (the session only
/// compares them with its own deadlines).
fn clock_ms() -> u64 {
    u64::try_from(clock_start().elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn clock_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn instant_of(ms: u64) -> Instant {
    clock_start() + Duration::from_millis(ms)
}

/// Opens a WebSocket with Nagle off (DESIGN §6: `TCP_NODELAY` on native test clients).
pub(crate) async fn open_ws(url: &str, name: &str) -> Result<Ws, HarnessError> {
    let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
    match tokio::time::timeout(DEFAULT_WAIT, connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(err)) => Err(HarnessError::WebSocket {
            device: name.to_owned(),
            action: "connect",
            detail: format!("{url}: {err}"),
        }),
        Err(_) => Err(HarnessError::WebSocket {
            device: name.to_owned(),
            action: "connect",
            detail: format!("{url}: no answer within {DEFAULT_WAIT:?}"),
        }),
    }
}

/// A close frame with a code and an empty reason.
pub(crate) fn close_frame(code: u16) -> CloseFrame {
    CloseFrame {
        code: WsCloseCode::from(code),
        reason: "".into(),
    }
}

/// A decrypted `Reflected` as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The id to ack.
    pub reflected_id: u32,
    /// When the mediator stored it, Unix ms.
    pub timestamp: u64,
    /// Sent to online devices only.
    pub ephemeral: bool,
    /// The decrypted envelope.
    pub envelope: Envelope,
}

/// The answer to `BeginTransaction` (spec §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionStart {
    /// `BeginTransactionAck`: the lock is ours.
    Begun,
    /// Another device holds the lock.
    Rejected {
        /// Its device id.
        holder: u64,
        /// Its scope, if it opened.
        scope: Option<Scope>,
    },
}

/// One device connected to a mediator.
pub struct Device {
    name: String,
    device_id: u64,
    session: DeviceSession,
    ws: Option<Ws>,
    backlog: VecDeque<Event>,
    recent: VecDeque<String>,
    closed: Option<(CloseCode, CloseOrigin)>,
    keep_progress: bool,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("device_id", &format_args!("{:#018x}", self.device_id))
            .field("open", &self.ws.is_some())
            .field("backlog", &self.backlog.len())
            .field("closed", &self.closed.map(|(code, _)| code.as_u16()))
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the WebSocket at `url` (the mediator path of the device's group) and starts the
    /// session; with CSP configured its client-hello goes out at once (spec §3.1). Does not wait
    /// for the handshake: [`Device::server_info`] does.
    pub async fn connect(
        url: &str,
        name: impl Into<String>,
        config: DeviceConfig,
    ) -> Result<Self, HarnessError> {
        let name = name.into();
        let ws = open_ws(url, &name).await?;
        let device_id = config.device_id;
        let session = DeviceSession::new(config, clock_ms(), &mut OsRng).map_err(|source| {
            HarnessError::Session {
                device: name.clone(),
                action: "start the session".into(),
                source,
            }
        })?;
        let mut device = Self {
            name,
            device_id,
            session,
            ws: Some(ws),
            backlog: VecDeque::new(),
            recent: VecDeque::new(),
            closed: None,
            keep_progress: false,
        };
        device.flush().await;
        Ok(device)
    }

    /// [`Device::connect`], then waits for `ServerInfo`.
    pub async fn connect_online(
        url: &str,
        name: impl Into<String>,
        config: DeviceConfig,
    ) -> Result<(Self, ServerInfo), HarnessError> {
        let mut device = Self::connect(url, name, config).await?;
        let info = device.server_info().await?;
        Ok((device, info))
    }

    /// The name used in errors.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The d2m device id.
    #[must_use]
    pub const fn device_id(&self) -> u64 {
        self.device_id
    }

    /// Whether `RolePromotedToLeader` has arrived on this connection.
    #[must_use]
    pub const fn is_leader(&self) -> bool {
        self.session.is_leader()
    }

    /// The close code the connection ended with, once it has.
    #[must_use]
    pub fn close_code(&self) -> Option<CloseCode> {
        self.closed.map(|(code, _)| code)
    }

    /// Keep `QueueProgress` events (dropped by default: one per queued frame).
    pub fn keep_progress_events(&mut self, keep: bool) {
        self.keep_progress = keep;
    }

    /// Escape hatch: the session itself. Call [`Device::flush`] after commands on it.
    pub fn session_mut(&mut self) -> &mut DeviceSession {
        &mut self.session
    }

    // ---- waiting ------------------------------------------------------------------------------

    /// The first event for which `pick` returns `Some`, within `within`. Events it passes over
    /// stay in the backlog, in order, for later waits.
    pub async fn wait_for<T>(
        &mut self,
        awaited: &str,
        within: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, HarnessError> {
        let deadline = Instant::now() + within;
        let mut scanned = 0;
        loop {
            while let Some(event) = self.backlog.get(scanned) {
                if let Some(found) = pick(event) {
                    self.backlog.remove(scanned);
                    return Ok(found);
                }
                scanned += 1;
            }
            if let Some((code, origin)) = self.closed {
                return Err(self.closed_error(awaited, code, origin));
            }
            if !self.pump(deadline).await {
                return Err(HarnessError::Timeout {
                    device: self.name.clone(),
                    awaited: awaited.to_owned(),
                    after: within,
                    recent: self.recent(),
                });
            }
        }
    }

    /// The next event, whatever it is.
    pub async fn next_event(&mut self, awaited: &str) -> Result<Event, HarnessError> {
        self.wait_for(awaited, DEFAULT_WAIT, |e| Some(e.clone()))
            .await
    }

    /// Fails if an event matching `forbidden` arrives within `period`; other events stay in the
    /// backlog. Checks the backlog first.
    pub async fn expect_none(
        &mut self,
        period: Duration,
        context: &str,
        mut forbidden: impl FnMut(&Event) -> bool,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + period;
        let mut scanned = 0;
        loop {
            while let Some(event) = self.backlog.get(scanned) {
                if forbidden(event) {
                    return Err(HarnessError::Unexpected {
                        device: self.name.clone(),
                        event: format!("{event:?}"),
                        context: context.to_owned(),
                    });
                }
                scanned += 1;
            }
            if self.closed.is_some() {
                // Nothing more can arrive; sleep out the period so callers keep their timing.
                tokio::time::sleep_until(deadline.into()).await;
                return Ok(());
            }
            if !self.pump(deadline).await {
                return Ok(());
            }
        }
    }

    /// Fails if any event arrives within `period`.
    pub async fn expect_quiet(
        &mut self,
        period: Duration,
        context: &str,
    ) -> Result<(), HarnessError> {
        self.expect_none(period, context, |_| true).await
    }

    /// Every event in the backlog, taken out.
    pub fn take_backlog(&mut self) -> Vec<Event> {
        self.backlog.drain(..).collect()
    }

    /// `ServerInfo` (the end of the handshake).
    pub async fn server_info(&mut self) -> Result<ServerInfo, HarnessError> {
        self.wait_for("ServerInfo", DEFAULT_WAIT, |e| match e {
            Event::ServerInfo(info) => Some(info.clone()),
            _ => None,
        })
        .await
    }

    /// `ReflectionQueueDry`.
    pub async fn queue_dry(&mut self) -> Result<(), HarnessError> {
        self.wait_for("ReflectionQueueDry", DEFAULT_WAIT, |e| {
            matches!(e, Event::QueueDry).then_some(())
        })
        .await
    }

    /// `RolePromotedToLeader`.
    pub async fn promoted(&mut self) -> Result<(), HarnessError> {
        self.wait_for("RolePromotedToLeader", DEFAULT_WAIT, |e| {
            matches!(e, Event::PromotedToLeader).then_some(())
        })
        .await
    }

    /// The close code the connection ends with (waiting up to `within`).
    pub async fn closed(&mut self, within: Duration) -> Result<CloseCode, HarnessError> {
        self.wait_for("the connection to close", within, |e| match e {
            Event::Closed { code, .. } => Some(*code),
            _ => None,
        })
        .await
    }

    /// The next `count` `Reflected` events (ephemeral ones included), acking each non-ephemeral
    /// one right away when `ack` is set.
    pub async fn receive_reflected(
        &mut self,
        count: usize,
        ack: bool,
    ) -> Result<Vec<Received>, HarnessError> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let awaited = format!("Reflected {} of {count}", out.len() + 1);
            let received = self
                .wait_for(&awaited, DEFAULT_WAIT, |e| match e {
                    Event::Reflected {
                        reflected_id,
                        timestamp,
                        ephemeral,
                        envelope,
                        ..
                    } => Some(Received {
                        reflected_id: *reflected_id,
                        timestamp: *timestamp,
                        ephemeral: *ephemeral,
                        envelope: (*envelope.0).clone(),
                    }),
                    _ => None,
                })
                .await?;
            if ack && !received.ephemeral {
                self.ack(received.reflected_id).await?;
            }
            out.push(received);
        }
        Ok(out)
    }

    /// The `ReflectAck` of `reflect_id`: the mediator's storing time.
    pub async fn reflect_acked(&mut self, reflect_id: u32) -> Result<u64, HarnessError> {
        let awaited = format!("ReflectAck for reflect {reflect_id}");
        self.wait_for(&awaited, DEFAULT_WAIT, |e| match e {
            Event::ReflectAcked {
                reflect_id: id,
                timestamp,
            } if *id == reflect_id => Some(*timestamp),
            _ => None,
        })
        .await
    }

    /// The next CSP payload from the chat server, decoded.
    pub async fn csp_payload(&mut self, awaited: &str) -> Result<CspPayload, HarnessError> {
        let bytes = self
            .wait_for(awaited, DEFAULT_WAIT, |e| match e {
                Event::CspPayload(payload) => Some(payload.0.clone()),
                _ => None,
            })
            .await?;
        CspPayload::decode(&bytes, MessagePayloadVersion::WithMetadataBox).map_err(|err| {
            HarnessError::Unexpected {
                device: self.name.clone(),
                event: format!("undecodable CSP payload ({err})"),
                context: format!("waiting for {awaited}"),
            }
        })
    }

    /// CSP login-ack through the proxy.
    pub async fn csp_established(&mut self) -> Result<(), HarnessError> {
        self.wait_for("CSP login-ack", DEFAULT_WAIT, |e| {
            matches!(e, Event::CspEstablished(_)).then_some(())
        })
        .await
    }

    // ---- commands -----------------------------------------------------------------------------

    /// Reflects one envelope; returns its reflect id.
    pub async fn reflect(&mut self, envelope: &Envelope) -> Result<u32, HarnessError> {
        let id = self.reflect_queued(envelope, false)?;
        self.flush().await;
        Ok(id)
    }

    /// Reflects one envelope with the ephemeral flag (no ack, online siblings only).
    pub async fn reflect_ephemeral(&mut self, envelope: &Envelope) -> Result<u32, HarnessError> {
        let id = self.reflect_queued(envelope, true)?;
        self.flush().await;
        Ok(id)
    }

    /// Reflects every envelope without waiting for acks (written in chunks, reading what has
    /// arrived in between); returns the reflect ids in order.
    pub async fn reflect_all(&mut self, envelopes: &[Envelope]) -> Result<Vec<u32>, HarnessError> {
        let mut ids = Vec::with_capacity(envelopes.len());
        for chunk in envelopes.chunks(REFLECT_CHUNK) {
            for envelope in chunk {
                ids.push(self.reflect_queued(envelope, false)?);
            }
            self.flush().await;
            self.pump_ready().await;
        }
        Ok(ids)
    }

    /// Waits for the `ReflectAck` of every id, in order; returns their timestamps.
    pub async fn reflect_acks(&mut self, ids: &[u32]) -> Result<Vec<u64>, HarnessError> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            out.push(self.reflect_acked(id).await?);
        }
        Ok(out)
    }

    /// Acks a received `Reflected`.
    pub async fn ack(&mut self, reflected_id: u32) -> Result<(), HarnessError> {
        let result = self.session.ack_reflected(reflected_id);
        self.command(result, || format!("ack Reflected {reflected_id}"))?;
        self.flush().await;
        Ok(())
    }

    /// Asks for the group lock and waits for the answer.
    pub async fn begin_transaction(
        &mut self,
        scope: Scope,
        ttl_s: u32,
    ) -> Result<TransactionStart, HarnessError> {
        let result = self.session.begin_transaction(scope, ttl_s, &mut OsRng);
        self.command(result, || format!("begin a {scope:?} transaction"))?;
        self.flush().await;
        self.wait_for(
            "BeginTransactionAck or TransactionRejected",
            DEFAULT_WAIT,
            |e| match e {
                Event::TransactionBegun => Some(TransactionStart::Begun),
                Event::TransactionRejected { holder, scope } => Some(TransactionStart::Rejected {
                    holder: *holder,
                    scope: *scope,
                }),
                _ => None,
            },
        )
        .await
    }

    /// Commits the held transaction and waits for `CommitTransactionAck`.
    pub async fn commit_transaction(&mut self) -> Result<(), HarnessError> {
        let result = self.session.commit_transaction();
        self.command(result, || "commit the transaction".to_owned())?;
        self.flush().await;
        self.wait_for("CommitTransactionAck", DEFAULT_WAIT, |e| {
            matches!(e, Event::CommitAcked).then_some(())
        })
        .await
    }

    /// The next `TransactionEnded`: the former holder and its scope.
    pub async fn transaction_ended(&mut self) -> Result<(u64, Option<Scope>), HarnessError> {
        self.wait_for("TransactionEnded", DEFAULT_WAIT, |e| match e {
            Event::TransactionEnded { device_id, scope } => Some((*device_id, *scope)),
            _ => None,
        })
        .await
    }

    /// Asks for `DevicesInfo` and waits for it.
    pub async fn devices_info(&mut self) -> Result<Vec<DeviceEntry>, HarnessError> {
        let result = self.session.get_devices_info();
        self.command(result, || "get devices info".to_owned())?;
        self.flush().await;
        self.wait_for("DevicesInfo", DEFAULT_WAIT, |e| match e {
            Event::DevicesInfo(entries) => Some(entries.clone()),
            _ => None,
        })
        .await
    }

    /// Drops a slot and waits for `DropDeviceAck`.
    pub async fn drop_device(&mut self, device_id: u64) -> Result<(), HarnessError> {
        let result = self.session.drop_device(device_id);
        self.command(result, || format!("drop device {device_id:#018x}"))?;
        self.flush().await;
        let awaited = format!("DropDeviceAck for {device_id:#018x}");
        self.wait_for(&awaited, DEFAULT_WAIT, |e| match e {
            Event::DropDeviceAck { device_id: id } if *id == device_id => Some(()),
            _ => None,
        })
        .await
    }

    /// Sets the group's shared device data (no ack exists; see [`Device::sync_barrier`]).
    pub async fn set_shared_device_data(&mut self, version: u32) -> Result<(), HarnessError> {
        let result = self.session.set_shared_device_data(version, &mut OsRng);
        self.command(result, || "set shared device data".to_owned())?;
        self.flush().await;
        Ok(())
    }

    /// A round trip (`GetDevicesInfo`): once it returns, the mediator has handled everything
    /// this device sent before, and — Durable Object output gates hold a reply until the
    /// storage writes before it are durable — stored it.
    pub async fn sync_barrier(&mut self) -> Result<(), HarnessError> {
        self.devices_info().await.map(drop)
    }

    /// Sends one CSP payload through the proxy (after [`Device::csp_established`]).
    pub async fn csp_send(&mut self, payload: &CspPayload) -> Result<(), HarnessError> {
        let container = payload.encode().map_err(|err| HarnessError::Unexpected {
            device: self.name.clone(),
            event: format!("unencodable CSP payload ({err})"),
            context: "sending a CSP payload".into(),
        })?;
        let result = self.session.csp_send(&container);
        self.command(result, || format!("send CSP {:?}", payload.payload_type()))?;
        self.flush().await;
        Ok(())
    }

    /// CSP on demand: closes the chat server connection and waits for the mediator's answer.
    pub async fn close_csp(&mut self) -> Result<(), HarnessError> {
        let result = self.session.close_csp();
        self.command(result, || "close_csp".into())?;
        self.flush().await;
        self.wait_for("CspClosed", DEFAULT_WAIT, |e| {
            matches!(e, Event::CspClosed).then_some(())
        })
        .await
    }

    /// CSP on demand: logs in at the chat server again and waits for the login-ack.
    pub async fn open_csp(&mut self) -> Result<(), HarnessError> {
        let result = self.session.open_csp(&mut rand::rngs::OsRng);
        self.command(result, || "open_csp".into())?;
        self.flush().await;
        self.csp_established().await
    }

    /// Escape hatch: writes a WebSocket message as it is, bypassing the session.
    pub async fn send_raw(&mut self, message: Message) -> Result<(), HarnessError> {
        let Some(ws) = self.ws.as_mut() else {
            return Err(HarnessError::WebSocket {
                device: self.name.clone(),
                action: "send",
                detail: "the connection is closed".into(),
            });
        };
        ws.send(message)
            .await
            .map_err(|err| HarnessError::WebSocket {
                device: self.name.clone(),
                action: "send",
                detail: err.to_string(),
            })
    }

    /// Closes the WebSocket with 1000 and waits (briefly) for the mediator's close frame.
    pub async fn disconnect(mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                if ws.close(None).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        }
    }

    /// Drops the TCP connection without a close frame (a crash or a lost network).
    pub fn abort(mut self) {
        self.ws = None;
    }

    /// Writes what the session has queued. Write errors are left for the read side, which sees
    /// the close frame or the end of the stream.
    pub async fn flush(&mut self) {
        let Some(ws) = self.ws.as_mut() else {
            while self.session.poll_transmit().is_some() {}
            return;
        };
        let mut written = false;
        while let Some(bytes) = self.session.poll_transmit() {
            if ws.feed(Message::binary(bytes)).await.is_err() {
                return;
            }
            written = true;
        }
        if written {
            let _ = ws.flush().await;
        }
    }

    // ---- internals ----------------------------------------------------------------------------

    fn reflect_queued(
        &mut self,
        envelope: &Envelope,
        ephemeral: bool,
    ) -> Result<u32, HarnessError> {
        let result = self.session.reflect(envelope, ephemeral, &mut OsRng);
        self.command(result, || "reflect".to_owned())
    }

    fn command<T>(
        &self,
        result: Result<T, DeviceError>,
        action: impl FnOnce() -> String,
    ) -> Result<T, HarnessError> {
        result.map_err(|source| HarnessError::Session {
            device: self.name.clone(),
            action: action(),
            source,
        })
    }

    /// Reads what has already arrived, without waiting.
    async fn pump_ready(&mut self) {
        loop {
            let Some(ws) = self.ws.as_mut() else { return };
            match ws.next().now_or_never() {
                Some(message) => self.on_message(message).await,
                None => return,
            }
        }
    }

    /// Feeds one WebSocket message, or the session's timer, into the session. Returns `false`
    /// if `deadline` passed with nothing to feed (or the connection is gone).
    async fn pump(&mut self, deadline: Instant) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        let timer = self.session.poll_timeout().map(instant_of);
        let until = timer.map_or(deadline, |t| t.min(deadline));
        match tokio::time::timeout_at(until.into(), ws.next()).await {
            Ok(message) => {
                self.on_message(message).await;
                true
            }
            Err(_) if timer.is_some_and(|t| t <= Instant::now()) => {
                let result = self.session.on_timeout(clock_ms());
                self.after_input(result).await;
                true
            }
            Err(_) => false,
        }
    }

    async fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) {
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                let result = self.session.on_binary(&bytes, clock_ms(), &mut OsRng);
                self.after_input(result).await;
            }
            Some(Ok(Message::Text(_))) => {
                // A mediator never sends text (spec §2.1): a protocol error on its side.
                self.remember("text frame from the mediator".into());
                self.close_locally(CloseCode::ProtocolError).await;
                self.session.on_close(CloseCode::ProtocolError);
                self.collect_events();
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                if let Some(mut ws) = self.ws.take() {
                    // Completes the closing handshake (tungstenite queued the reply).
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
                }
                self.session.on_close(CloseCode::from_u16(code));
                self.collect_events();
            }
            Some(Ok(_)) => {
                // Ping / pong: tungstenite answers pings on the next write.
                self.flush().await;
            }
            Some(Err(err)) => {
                self.remember(format!("socket error: {err}"));
                self.ws = None;
                self.session.on_close(CloseCode::AbnormalClosure);
                self.collect_events();
            }
            None => {
                self.remember("socket ended without a close frame".into());
                self.ws = None;
                self.session.on_close(CloseCode::AbnormalClosure);
                self.collect_events();
            }
        }
    }

    async fn after_input(&mut self, result: Result<(), DeviceError>) {
        if let Err(err) = result {
            self.remember(format!("session error: {err}"));
            if let Some(code) = err.close_code() {
                self.close_locally(code).await;
            }
        }
        self.collect_events();
        self.flush().await;
    }

    /// The session closed itself with `code`: close the WebSocket with it.
    async fn close_locally(&mut self, code: CloseCode) {
        if let Some(mut ws) = self.ws.take() {
            let wire_code = if code.is_local_only() {
                1000
            } else {
                code.as_u16()
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                ws.close(Some(close_frame(wire_code))),
            )
            .await;
        }
    }

    fn collect_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            if let Event::Closed { code, origin, .. } = &event {
                self.closed = Some((*code, *origin));
                self.ws = None;
            }
            if !self.keep_progress && matches!(event, Event::QueueProgress { .. }) {
                continue;
            }
            self.remember(short(&event));
            self.backlog.push_back(event);
        }
    }

    fn remember(&mut self, what: String) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(what);
    }

    fn recent(&self) -> String {
        self.recent.iter().cloned().collect::<Vec<_>>().join(", ")
    }

    fn closed_error(&self, awaited: &str, code: CloseCode, origin: CloseOrigin) -> HarnessError {
        HarnessError::Closed {
            device: self.name.clone(),
            awaited: awaited.to_owned(),
            code: code.as_u16(),
            origin: match origin {
                CloseOrigin::Local => "local",
                CloseOrigin::Remote => "remote",
            },
            recent: self.recent(),
        }
    }
}

/// One event in a few words.
fn short(event: &Event) -> String {
    match event {
        Event::Reflected {
            reflected_id,
            ephemeral,
            ..
        } => format!(
            "Reflected#{reflected_id}{}",
            if *ephemeral { " (ephemeral)" } else { "" }
        ),
        Event::ReflectAcked { reflect_id, .. } => format!("ReflectAck#{reflect_id}"),
        Event::Closed { code, origin, .. } => format!("Closed({} {origin:?})", code.as_u16()),
        Event::DevicesInfo(entries) => format!("DevicesInfo({} entries)", entries.len()),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tandem_shared::crypto::SecretKey;
    use tandem_shared::keys::{ClientKey, DeviceGroupKey};
    use tandem_shared::mediator::GroupConfig;
    use tandem_shared::proto::d2m::DeviceSlotState;

    use super::*;
    use crate::harness::{random_device_id, Identity, LocalMediator};

    /// An identity that never saw a directory: enough for d2m-only devices.
    fn identity() -> Identity {
        let client_key = ClientKey::new(SecretKey::generate(&mut OsRng));
        Identity {
            identity: *b"UNITTEST",
            keys: DeviceGroupKey::from_client_key(client_key.secret()).derive_keys(),
            client_key,
            server_group: "01".into(),
            chat_server_key: SecretKey::generate(&mut OsRng).public_key(),
        }
    }

    async fn setup() -> (LocalMediator, Identity, String) {
        let mediator = LocalMediator::start(GroupConfig::default(), HashMap::new())
            .await
            .unwrap();
        let id = identity();
        let url = id.mediator_url(&mediator.ws_base()).unwrap();
        (mediator, id, url)
    }

    fn envelope() -> Envelope {
        Envelope {
            content: Some(
                tandem_shared::proto::d2d::envelope::Content::OutgoingMessage(
                    tandem_shared::proto::d2d::OutgoingMessage {
                        message_id: 7,
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn events_passed_over_stay_in_the_backlog_in_order() {
        let (_mediator, id, url) = setup().await;
        let mut a = Device::connect(&url, "a", id.device_config(random_device_id(), "a"))
            .await
            .unwrap();
        a.promoted().await.unwrap();
        assert!(a.is_leader());
        assert!(matches!(
            a.next_event("1st").await.unwrap(),
            Event::ServerInfo(_)
        ));
        assert!(matches!(
            a.next_event("2nd").await.unwrap(),
            Event::QueueDry
        ));
        assert!(a.take_backlog().is_empty());
    }

    #[tokio::test]
    async fn a_timeout_names_the_device_and_what_was_awaited() {
        let (_mediator, id, url) = setup().await;
        let (mut a, _) = Device::connect_online(&url, "alice", id.device_config(1, "a"))
            .await
            .unwrap();
        let err = a
            .wait_for("DevicesInfo", Duration::from_millis(300), |e| {
                matches!(e, Event::DevicesInfo(_)).then_some(())
            })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("alice: no DevicesInfo within 300ms"),
            "{text}"
        );
        assert!(text.contains("ServerInfo"), "recent events listed: {text}");
    }

    #[tokio::test]
    async fn a_wait_on_a_closed_connection_reports_its_close_code() {
        let (_mediator, id, url) = setup().await;
        let device_id = random_device_id();
        let (mut first, _) =
            Device::connect_online(&url, "first", id.device_config(device_id, "a"))
                .await
                .unwrap();
        let mut config = id.device_config(device_id, "a");
        config.expected_slot_state = DeviceSlotState::Existing;
        let (_second, _) = Device::connect_online(&url, "second", config)
            .await
            .unwrap();
        let err = first.devices_info().await.unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::DeviceIdReused), "{err}");
        assert!(
            err.to_string().contains("first: closed with 4112 (remote)"),
            "{err}"
        );
        assert_eq!(first.close_code(), Some(CloseCode::DeviceIdReused));
        assert!(matches!(
            first.reflect(&envelope()).await,
            Err(HarnessError::Session {
                source: DeviceError::Closed,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn expect_none_fails_on_a_forbidden_event_and_keeps_the_others() {
        let (_mediator, id, url) = setup().await;
        let (mut a, _) = Device::connect_online(&url, "a", id.device_config(1, "a"))
            .await
            .unwrap();
        let (mut b, _) = Device::connect_online(&url, "b", id.device_config(2, "b"))
            .await
            .unwrap();
        b.queue_dry().await.unwrap();
        b.expect_none(Duration::from_millis(200), "idle", |e| {
            matches!(e, Event::Reflected { .. })
        })
        .await
        .unwrap();
        let reflect_id = a.reflect(&envelope()).await.unwrap();
        a.reflect_acked(reflect_id).await.unwrap();
        let err = b
            .expect_none(Duration::from_secs(5), "after a reflect", |e| {
                matches!(e, Event::Reflected { .. })
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unexpected Reflected"), "{err}");
        let got = b.receive_reflected(1, true).await.unwrap();
        assert_eq!(got[0].envelope.device_id, 1, "still in the backlog");
    }

    #[tokio::test]
    async fn a_raw_frame_gets_the_mediators_close_code() {
        let (_mediator, id, url) = setup().await;
        let (mut a, _) = Device::connect_online(&url, "a", id.device_config(1, "a"))
            .await
            .unwrap();
        a.send_raw(Message::text("not binary")).await.unwrap();
        assert_eq!(
            a.closed(Duration::from_secs(5)).await.unwrap(),
            CloseCode::ProtocolError
        );
    }
}
