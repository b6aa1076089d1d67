//! Tandem's chat server (DESIGN §4): the CSP server side over TCP, durable per-identity message
//! queues in SQLite, and the identity directory over HTTP (DESIGN §2.5). The protocol itself is
//! `tandem-shared`'s sans-IO [`tandem_shared::csp::CspServer`]; this crate moves its bytes and
//! applies the server's rules. Decisions are listed in `docs/chat-server.md`.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod config;
pub mod directory;
pub mod mailbox;
pub mod push;
pub mod registry;
pub mod server_key;
pub mod session;
pub mod store;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_shared::crypto::PublicKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::directory::{Directory, HttpState};
use crate::mailbox::{CloseRequest, MailItem};
use crate::push::PushOrigins;
use crate::registry::Registry;
use crate::session::Context;
use crate::store::{Database, PgSettings, Store, StoreConfig, StoreError};

/// How often expired short-lived messages and old dedupe entries are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    /// The server key could not be loaded or created.
    #[error(transparent)]
    ServerKey(#[from] server_key::ServerKeyError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listening socket could not be bound.
    #[error("bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// A `--push-origin` is not `http(s)://host[:port]`.
    #[error("push origin {0}")]
    PushOrigin(String),
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Where CSP connections are accepted.
    pub csp_addr: SocketAddr,
    /// Where the directory answers.
    pub http_addr: SocketAddr,
    /// `SK.public`.
    pub server_public_key: PublicKey,
    /// Messages queued at startup.
    pub queued_at_start: u64,
    registry: Arc<Registry>,
    store: Store,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens storage, binds both listeners and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
    let server_key = server_key::load_or_create(&config.data_dir)?;
    let server_public_key = server_key.public_key();
    let registry = Registry::new();
    // With PostgreSQL the database may hold millions of identities: a node caches the ones in
    // use and reads a miss from the database.
    let directory = Arc::new(match &config.database {
        None => Directory::default(),
        Some(_) => Directory::bounded(directory::PG_CACHE_CAPACITY),
    });
    let database = match &config.database {
        None => Database::Sqlite {
            dir: config.data_dir.clone(),
        },
        Some(url) => Database::Postgres(PgSettings {
            url: url.clone(),
            sweep_interval: Duration::from_millis(config.sweep_interval_ms.max(10)),
            hints: config.cross_node_hints,
            connections: config.storage_connections,
        }),
    };
    let push_origins = PushOrigins::parse(&config.push_origins).map_err(StartError::PushOrigin)?;
    let (unreceived, names) = push::channel();
    let loaded = Store::open(
        StoreConfig {
            database,
            sync: config.sync,
            max_queue: config.max_queue,
            dedupe_window_ms: config.dedupe_window_s.saturating_mul(1000),
            unreceived: (!push_origins.is_empty()).then_some(unreceived),
        },
        &directory,
        Arc::clone(&registry),
    )
    .await?;
    let store = loaded.store;
    let gapless = loaded.node.is_some();

    let csp = TcpListener::bind(config.csp_listen)
        .await
        .map_err(|e| StartError::Bind(config.csp_listen, e))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| StartError::Bind(config.http_listen, e))?;
    let csp_addr = csp
        .local_addr()
        .map_err(|e| StartError::Bind(config.csp_listen, e))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| StartError::Bind(config.http_listen, e))?;

    let ctx = Arc::new(Context {
        server_key,
        directory: Arc::clone(&directory),
        registry: Arc::clone(&registry),
        store: store.clone(),
        alert: config.alert.clone(),
        handshake_timeout: config.handshake_timeout(),
        idle_timeout: Duration::from_secs(config.idle_timeout_s),
        short_lived_ttl_ms: config.short_lived_ttl_s.saturating_mul(1000),
        gapless,
        push_origins: push_origins.clone(),
    });
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut tasks = loaded.tasks;
    if !push_origins.is_empty() {
        tasks.push(push::spawn(store.clone(), Arc::clone(&registry), names));
    }
    tasks.push(tokio::spawn(accept_csp(csp, ctx, limit)));

    let app = directory::router(
        HttpState::new(
            store.clone(),
            directory,
            server_public_key,
            config.server_group.clone(),
        ),
        &config.cors_origins,
    );
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app).await {
            warn!(error = %e, "HTTP server stopped");
        }
    }));
    let purge_store = store.clone();
    tasks.push(tokio::spawn(async move {
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        loop {
            interval.tick().await;
            if purge_store.send(store::Command::Purge).await.is_err() {
                return;
            }
        }
    }));
    info!(%csp_addr, %http_addr, queued = loaded.queued, node = loaded.node, "chat server started");
    Ok(Running {
        csp_addr,
        http_addr,
        server_public_key,
        queued_at_start: loaded.queued,
        registry,
        store,
        tasks,
    })
}

async fn accept_csp(listener: TcpListener, ctx: Arc<Context>, limit: Arc<Semaphore>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    warn!("connection limit reached; connection refused");
                    drop(stream);
                    continue;
                };
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    session::serve(stream, ctx).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Running {
    /// Online sessions.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.registry.session_count()
    }

    /// Stops accepting, tells every session the server is going away, and waits until storage
    /// has committed everything it was handed.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        for mailbox in self.registry.all() {
            mailbox.push(MailItem::Close(CloseRequest::Shutdown));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.registry.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.store.flush().await {
            warn!(error = %e, "final storage flush failed");
        }
    }
}
