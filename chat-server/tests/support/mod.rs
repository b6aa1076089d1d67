//! Test harness: the real server binary as a child process, a tiny HTTP client for the
//! directory, and a native CSP client over tokio TCP that drives `shared`'s `CspClient`.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::csp::{
    ClientEvent, CspClient, CspClientConfig, CspError, CspPayload, Extensions, LoginAck,
    MessageFlags, MessagePayloadVersion, MessageWithMetadataBox, PayloadError,
};
use tandem_shared::keys::ClientKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod pg;

/// Generous timeout for anything that should happen (loaded 2-core machines).
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How long we wait to be convinced that something does not happen.
pub const QUIET: Duration = Duration::from_millis(700);

pub type Identity = [u8; 8];

// ---------------------------------------------------------------------------------------------
// The server process

/// Log lines of a child, with a condition variable to wait for one.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

pub struct ServerProcess {
    child: Child,
    pub csp: SocketAddr,
    pub http: SocketAddr,
    pub public_key: PublicKey,
    pub data_dir: PathBuf,
    logs: Arc<Logs>,
}

impl ServerProcess {
    /// Starts the binary on free ports with `data_dir`, and waits for its start lines.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let log_level = if extra.contains(&"--log-level") {
            &[][..]
        } else {
            &["--log-level", "debug"][..]
        };
        // TANDEM_TEST_DATABASE=postgres: the same tests on PostgreSQL, one database per data
        // directory on the suite's shared server (a restart on the directory finds its data).
        let database = (pg::suite_uses_postgres() && !extra.contains(&"--database")).then(|| {
            let server = pg::shared();
            let name = pg::database_for(data_dir);
            server.ensure_database(&name);
            server.url(&name)
        });
        let database_args: Vec<&str> = database
            .as_deref()
            .map(|url| vec!["--database", url])
            .unwrap_or_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-chat-server"))
            .args([
                "--csp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(log_level)
            .args(&database_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandem-chat-server");
        let logs = Arc::new(Logs::default());
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("CHAT_SERVER_LOGS").is_some() {
                    eprintln!("[server] {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut read_line = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read start line");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .to_owned()
        };
        let key = hex::decode(read_line("server public key: ")).unwrap();
        let csp = read_line("csp listening on ").parse().unwrap();
        let http = read_line("http listening on ").parse().unwrap();
        // Keep draining stdout so the child never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stdout.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Self {
            child,
            csp,
            http,
            public_key: PublicKey::from_slice(&key).unwrap(),
            data_dir: data_dir.to_owned(),
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until a log line contains every needle; returns it.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.logs.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no log line with {needles:?}; last lines:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
            lines = self
                .logs
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One HTTP/1.1 request with `Connection: close`.
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

pub async fn http_raw(addr: SocketAddr, request_head: &str, body: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request_head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, String) {
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let response = http_raw(addr, &head, body).await;
    (response.status, response.body)
}

pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = http(addr, method, path, body.as_deref().map(str::as_bytes)).await;
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, value)
}

/// Registers `ck` in the directory (both steps) and returns its identity.
pub async fn create_identity(http_addr: SocketAddr, ck: &ClientKey) -> Identity {
    create_identity_via(http_addr, http_addr, ck).await
}

/// Registers `ck` with step one sent to `first` and step two to `second` (two nodes of one
/// server group share their tokens).
pub async fn create_identity_via(
    first: SocketAddr,
    second: SocketAddr,
    ck: &ClientKey,
) -> Identity {
    let public = B64.encode(ck.public_key().as_bytes());
    let (status, step1) = http_json(
        first,
        "POST",
        "/identity/create",
        Some(serde_json::json!({ "publicKey": public })),
    )
    .await;
    assert_eq!(status, 200, "{step1}");
    let token = step1["token"].as_str().unwrap().to_owned();
    let challenge = PublicKey::from_slice(
        &B64.decode(step1["tokenRespKeyPub"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let response =
        tandem_shared::directory::client_response(ck, &challenge, &B64.decode(&token).unwrap())
            .unwrap();
    let (status, step2) = http_json(
        second,
        "POST",
        "/identity/create",
        Some(serde_json::json!({ "publicKey": public, "token": token, "response": B64.encode(response) })),
    )
    .await;
    assert_eq!(status, 200, "{step2}");
    assert_eq!(step2["success"], true);
    step2["identity"]
        .as_str()
        .unwrap()
        .as_bytes()
        .try_into()
        .unwrap()
}

/// A fresh key and its registered identity.
pub struct Account {
    pub identity: Identity,
    pub key: ClientKey,
}

impl Account {
    pub async fn create(http_addr: SocketAddr) -> Self {
        let key = ClientKey::new(SecretKey::generate(&mut OsRng));
        let identity = create_identity(http_addr, &key).await;
        Self { identity, key }
    }

    pub fn config(&self, server: &PublicKey, device_id: u64) -> CspClientConfig {
        CspClientConfig {
            identity: self.identity,
            client_key: self.key.clone(),
            server_public_key: *server,
            extensions: Extensions {
                csp_device_id: Some(device_id),
                ..Extensions::new("0.1;Q;en/CH;tandem-tests")
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CSP client

#[derive(Debug)]
pub enum ClientError {
    /// The server closed the connection (EOF).
    Closed,
    /// The connection was reset.
    Io(std::io::Error),
    /// The client state machine failed.
    Csp(CspError),
    /// A payload did not decode.
    Payload(PayloadError),
    /// Nothing arrived in time.
    Timeout,
}

pub struct Client {
    pub stream: TcpStream,
    pub csp: CspClient,
    /// What login-ack carried (spec §12).
    pub login_ack: LoginAck,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// Connects and completes the handshake.
    pub async fn connect(addr: SocketAddr, config: CspClientConfig) -> Result<Self, ClientError> {
        let mut client = Self::start(addr, config).await;
        client.flush().await?;
        loop {
            match client.next_event().await? {
                ClientEvent::Established(ack) => {
                    client.login_ack = ack;
                    return Ok(client);
                }
                other => client.events.push_back(other),
            }
        }
    }

    /// Connects and sends the client-hello, nothing more.
    pub async fn start(addr: SocketAddr, config: CspClientConfig) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let csp = CspClient::new(config, &mut OsRng).unwrap();
        Self {
            stream,
            csp,
            login_ack: LoginAck::default(),
            events: VecDeque::new(),
        }
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        while let Some(unit) = self.csp.poll_transmit() {
            self.stream
                .write_all(&unit)
                .await
                .map_err(ClientError::Io)?;
        }
        Ok(())
    }

    async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        let mut buf = vec![0_u8; 16 * 1024];
        loop {
            if let Some(event) = self.csp.poll_event() {
                self.flush().await?;
                return Ok(event);
            }
            let n = self.stream.read(&mut buf).await.map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.csp.receive(&buf[..n]).map_err(ClientError::Csp)?;
            self.flush().await?;
        }
    }

    pub async fn send(&mut self, payload: &CspPayload) {
        self.csp.send(&payload.encode().unwrap()).unwrap();
        self.flush().await.unwrap();
    }

    /// The next payload.
    pub async fn recv(&mut self) -> Result<CspPayload, ClientError> {
        match self.next_event().await? {
            ClientEvent::Payload(bytes) => {
                CspPayload::decode(&bytes, MessagePayloadVersion::WithMetadataBox)
                    .map_err(ClientError::Payload)
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// The next payload within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Result<CspPayload, ClientError> {
        tokio::time::timeout(d, self.recv())
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// The next payload, which must come within [`PATIENCE`].
    pub async fn expect(&mut self) -> CspPayload {
        self.recv_within(PATIENCE).await.expect("a payload")
    }

    /// Waits for the connection to end; returns the close-error, if one came first.
    pub async fn expect_close(&mut self) -> Option<(bool, String)> {
        let mut close = None;
        loop {
            match self.recv_within(PATIENCE).await {
                Ok(CspPayload::CloseError {
                    can_reconnect,
                    message,
                }) => close = Some((can_reconnect, message)),
                Ok(_) => {}
                Err(ClientError::Closed | ClientError::Io(_)) => return close,
                Err(e) => panic!("connection did not close: {e:?}"),
            }
        }
    }

    /// Asserts that nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        match self.recv_within(QUIET).await {
            Err(ClientError::Timeout) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Unblocks, acks every message of the backlog, and returns them (up to queue-send-complete).
pub async fn drain_backlog(b: &mut Client) -> Vec<MessageWithMetadataBox> {
    b.send(&CspPayload::UnblockIncomingMessages).await;
    let mut got = Vec::new();
    loop {
        match b.expect().await {
            CspPayload::IncomingMessage(m) => {
                b.send(&CspPayload::IncomingMessageAck(
                    tandem_shared::csp::MessageAck {
                        identity: m.sender,
                        message_id: m.message_id,
                    },
                ))
                .await;
                got.push(m);
            }
            CspPayload::QueueSendComplete => return got,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Waits until the server has closed a raw stream (EOF or reset), reading anything before it.
pub async fn expect_raw_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("server did not close the connection"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// A sealed text message from `from` to `to` (the server never opens it; receivers do).
pub fn text_message(
    from: &Account,
    to: &Account,
    message_id: u64,
    flags: MessageFlags,
    text: &str,
) -> MessageWithMetadataBox {
    tandem_shared::csp::seal_message(
        &from.key,
        &tandem_shared::csp::MessageToSeal {
            sender: from.identity,
            receiver: to.identity,
            receiver_public_key: to.key.public_key(),
            message_id,
            created_at_ms: now_ms(),
            flags,
            nickname: None,
            message_type: tandem_shared::csp::E2eMessageType::TEXT,
            body: text.as_bytes(),
        },
        &mut OsRng,
    )
    .unwrap()
}

/// Opens a received message and returns its text.
pub fn open_text(to: &Account, from: &Account, message: &MessageWithMetadataBox) -> String {
    let opened =
        tandem_shared::csp::open_message(&to.key, &from.key.public_key(), message).unwrap();
    String::from_utf8(opened.body).unwrap()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
