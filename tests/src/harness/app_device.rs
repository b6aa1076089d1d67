//! [`AppDevice`]: the whole device core (`shared::app::App`) over a real WebSocket, as the
//! browser client runs it, but natively: a tokio task moves the socket's messages, a wall clock
//! and the directory's answers into the `App`, applies its storage batches to a
//! [`MemoryStore`] that survives [`AppDevice::kill`], and sends its transmits. The fault matrix
//! and the soak (`tests/benches/reliability.rs`) count what such devices show.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::OsRng;
use tandem_shared::app::{
    App, AppConfig, AppEvent, Effect, Identity as AppIdentity, MemoryStore, Message,
};
use tandem_shared::d2d::{DeviceInfo, Platform};
use tandem_shared::d2m::CloseCode;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::device::{close_frame, open_ws, Ws};
use super::error::HarnessError;
use super::identity::{lookup_public_key, Identity};

/// Unix milliseconds: the `App` stamps messages with them.
#[must_use]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the driver task and the test share.
struct Shared {
    /// `None` while killed.
    app: Option<App>,
    /// Survives a kill: every batch is applied and confirmed at once (a durable store).
    store: MemoryStore,
    config: AppConfig,
    events: Vec<AppEvent>,
    /// Close codes the connection ended with, in order.
    closes: Vec<u16>,
}

/// One device running the app core; see the module docs.
pub struct AppDevice {
    name: String,
    url: String,
    directory: String,
    shared: Arc<Mutex<Shared>>,
    poke: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AppDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppDevice")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AppDevice {
    /// A new, empty device of `identity` (it asks its siblings for their state once online),
    /// connected to the mediator at `ws_base`; `directory` is the chat server's `host:port`.
    pub fn start(
        name: &str,
        identity: &Identity,
        ws_base: &str,
        directory: &str,
    ) -> Result<Self, HarnessError> {
        let id = AppIdentity::new(identity.identity).map_err(|err| HarnessError::Http {
            request: "identity".into(),
            detail: err.to_string(),
        })?;
        let info = DeviceInfo {
            platform: Platform::Unspecified,
            platform_details: "tandem-tests".into(),
            app_version: "0".into(),
            label: name.into(),
        };
        let mut config = AppConfig::new(info, identity.chat_server_key);
        // A dead path to the chat server is noticed within 5 s instead of 80 s, so that the
        // fault matrix's half-open row stays short.
        config.echo_interval_ms = 2_000;
        config.echo_timeout_ms = 3_000;
        let app = App::create(id, identity.client_key.clone(), config.clone(), &mut OsRng);
        let shared = Arc::new(Mutex::new(Shared {
            app: Some(app),
            store: MemoryStore::new(),
            config,
            events: Vec::new(),
            closes: Vec::new(),
        }));
        let mut device = Self {
            name: name.to_owned(),
            url: identity.mediator_url(ws_base)?,
            directory: directory.to_owned(),
            shared,
            poke: Arc::new(Notify::new()),
            task: None,
        };
        device.spawn();
        Ok(device)
    }

    fn spawn(&mut self) {
        let driver = Driver {
            name: self.name.clone(),
            url: self.url.clone(),
            directory: self.directory.clone(),
            shared: Arc::clone(&self.shared),
            poke: Arc::clone(&self.poke),
        };
        self.task = Some(tokio::spawn(driver.run()));
    }

    /// The name given at start.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the app (a command), then lets the driver move what it produced. `None`
    /// while the device is killed.
    pub fn with<T>(&self, f: impl FnOnce(&mut App) -> T) -> Option<T> {
        let out = self.lock().app.as_mut().map(f);
        self.poke.notify_one();
        out
    }

    /// Reads the app's state. `None` while killed.
    pub fn read<T>(&self, f: impl FnOnce(&App) -> T) -> Option<T> {
        self.lock().app.as_ref().map(f)
    }

    /// Every message the device shows, oldest first.
    #[must_use]
    pub fn messages(&self) -> Vec<Message> {
        self.read(|app| app.state().messages().values().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes the events reported so far.
    pub fn take_events(&self) -> Vec<AppEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// The close codes its connections ended with so far.
    #[must_use]
    pub fn closes(&self) -> Vec<u16> {
        self.lock().closes.clone()
    }

    /// The process dies: the socket drops without a close frame, the app is gone, the store
    /// (every confirmed batch) stays.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.lock().app = None;
    }

    /// Starts again from the store, as a reopened tab does.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        {
            let mut shared = self.lock();
            let app = App::open(shared.store.records(), shared.config.clone()).map_err(|err| {
                HarnessError::Http {
                    request: "reopen".into(),
                    detail: err.to_string(),
                }
            })?;
            shared.app = Some(app);
        }
        self.spawn();
        Ok(())
    }

    /// Whether the app is online (its reflection queue drained on this connection).
    #[must_use]
    pub fn is_online(&self) -> bool {
        self.read(App::is_online).unwrap_or(false)
    }

    /// Waits until `check` holds, polling every 20 ms, at most `within`.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&Self) -> bool,
    ) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + within;
        while !check(self) {
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::WebSocket {
                    device: self.name.clone(),
                    action: "wait",
                    detail: format!("not {what} within {within:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for AppDevice {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The adapter task: only moves bytes, time and answers.
struct Driver {
    name: String,
    url: String,
    directory: String,
    shared: Arc<Mutex<Shared>>,
    poke: Arc<Notify>,
}

/// What one pass over the app's outputs asks the adapter to do.
#[derive(Default)]
struct Outputs {
    transmits: Vec<Vec<u8>>,
    close: Option<CloseCode>,
    connect: bool,
    lookups: Vec<AppIdentity>,
    timeout: Option<u64>,
}

impl Driver {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drains effects (persisting each batch at once), events and transmits.
    fn outputs(&self) -> Outputs {
        let mut out = Outputs::default();
        let mut guard = self.lock();
        let Shared {
            app,
            store,
            events,
            closes,
            ..
        } = &mut *guard;
        let Some(app) = app.as_mut() else {
            return out;
        };
        loop {
            let mut moved = false;
            while let Some(effect) = app.poll_effect() {
                moved = true;
                match effect {
                    Effect::Persist(batch) => {
                        let id = batch.id;
                        store.apply(batch);
                        // Batches are confirmed in order, so this cannot fail.
                        let _ = app.on_persisted(id);
                    }
                    Effect::LookupIdentity(identity) => out.lookups.push(identity),
                    Effect::CloseWebSocket(code) => out.close = Some(code),
                    Effect::Connect => out.connect = true,
                    _ => {}
                }
            }
            while let Some(bytes) = app.poll_transmit() {
                moved = true;
                out.transmits.push(bytes);
            }
            if !moved {
                break;
            }
        }
        for event in std::iter::from_fn(|| app.poll_event()) {
            if let AppEvent::Disconnected { code, .. } = &event {
                closes.push(code.as_u16());
            }
            events.push(event);
        }
        out.timeout = app.poll_timeout();
        out
    }

    async fn run(self) {
        let mut ws: Option<Ws> = None;
        // A started (or restarted) device connects at once.
        let mut connect = true;
        loop {
            if connect {
                connect = false;
                match open_ws(&self.url, &self.name).await {
                    Ok(socket) => {
                        ws = Some(socket);
                        if let Some(app) = self.lock().app.as_mut() {
                            let _ = app.connect(unix_ms(), &mut OsRng);
                        }
                    }
                    Err(_) => {
                        if let Some(app) = self.lock().app.as_mut() {
                            app.on_close(CloseCode::from_u16(5001), unix_ms(), &mut OsRng);
                        }
                    }
                }
            }
            let out = self.outputs();
            if let Some(socket) = ws.as_mut() {
                for bytes in out.transmits {
                    if socket.feed(WsMessage::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                let _ = socket.flush().await;
            }
            if let Some(code) = out.close {
                if let Some(mut socket) = ws.take() {
                    let _ = socket.close(Some(close_frame(code.as_u16()))).await;
                }
            }
            connect |= out.connect;
            let looked_up = !out.lookups.is_empty();
            for identity in out.lookups {
                let key = lookup_public_key(&self.directory, identity.as_str()).await;
                if let Some(app) = self.lock().app.as_mut() {
                    match key {
                        Ok(key) => {
                            app.on_identity_lookup(identity, Some(key), unix_ms(), &mut OsRng);
                        }
                        Err(HarnessError::Http { detail, .. })
                            if detail.starts_with("status 404") =>
                        {
                            app.on_identity_lookup(identity, None, unix_ms(), &mut OsRng);
                        }
                        Err(_) => app.on_identity_lookup_failed(identity),
                    }
                }
            }
            if connect || looked_up {
                continue;
            }
            let sleep = out.timeout.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(unix_ms()))
            });
            tokio::select! {
                message = next_message(&mut ws) => self.on_message(&mut ws, message),
                () = tokio::time::sleep(sleep) => {
                    if let Some(app) = self.lock().app.as_mut() {
                        app.on_timeout(unix_ms(), &mut OsRng);
                    }
                }
                () = self.poke.notified() => {}
            }
        }
    }

    fn on_message(
        &self,
        ws: &mut Option<Ws>,
        message: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) {
        let mut guard = self.lock();
        let Some(app) = guard.app.as_mut() else {
            return;
        };
        match message {
            Some(Ok(WsMessage::Binary(bytes))) => app.on_binary(&bytes, unix_ms(), &mut OsRng),
            Some(Ok(WsMessage::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                *ws = None;
                app.on_close(CloseCode::from_u16(code), unix_ms(), &mut OsRng);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                *ws = None;
                app.on_close(CloseCode::AbnormalClosure, unix_ms(), &mut OsRng);
            }
        }
    }
}

/// The socket's next message, or never while there is no socket.
async fn next_message(
    ws: &mut Option<Ws>,
) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match ws.as_mut() {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}
