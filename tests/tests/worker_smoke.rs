//! The mediator Worker under `wrangler dev` and under plain `workerd` (the self-hosting config),
//! for real: d2m handshakes with real device sessions against the device group's Durable Object,
//! a reflect queued for an offline device and delivered after a restart (Durable Object SQLite),
//! the store's contract checks inside a real object, the CSP proxy to a local TCP chat server
//! (bytes out, one CSP unit per container back), a transaction TTL ended by the object's alarm
//! (4011), the bench relay, directory forwarding, and the close codes 4001 and 4010.
//!
//! Needs the Worker toolchain (`scripts/install-worker-toolchain.sh`, run by `scripts/test.sh`);
//! without it this test fails and says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::rngs::OsRng;
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::d2d::{DeviceInfo, Platform, Scope};
use tandem_shared::d2m::CloseCode;
use tandem_shared::device::{DeviceConfig, DeviceSession, Event, ServerInfo};
use tandem_shared::keys::{ClientUrlInfo, DeviceGroupKey, DeviceGroupKeys};
use tandem_shared::proto::d2d as d2d_pb;
use tandem_shared::proto::d2m::DeviceSlotState;
use tandem_tests::harness::repo_root;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A cold start compiles the Worker crate for wasm32 first.
const FIRST_START_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const RESTART_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// `scripts/worker-dev.sh` exits with this when the toolchain is missing.
const EXIT_TOOLCHAIN_MISSING: i32 = 3;

fn free_port() -> u16 {
    tandem_tests::harness::free_port().expect("bind an ephemeral port")
}

/// The Worker served by `wrangler dev` or plain `workerd`, in its own process group, ended
/// (with every child) on drop.
struct Served {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Served {
    /// Starts `scripts/worker-dev.sh`; `build` false serves the previous build as it is.
    fn wrangler_dev(state_dir: &Path, log: &Path, vars: &[String], build: bool) -> Self {
        let port = free_port();
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/worker-dev.sh"))
            .arg(port.to_string())
            .arg(state_dir);
        for var in vars {
            cmd.arg("--var").arg(var);
        }
        if !build {
            cmd.env("TANDEM_WORKER_SKIP_BUILD", "1");
        }
        Self::spawn(cmd, port, log)
    }

    /// Starts the `workerd` of the wrangler npm package on the checked-in
    /// `mediator-worker/workerd.capnp` and the build wrangler served.
    fn workerd(state_dir: &Path, log: &Path, env: &[(&str, String)]) -> Self {
        let worker_dir = repo_root().join("mediator-worker");
        let workerd = worker_dir.join("node_modules/workerd/bin/workerd");
        assert!(
            workerd.exists(),
            "{} is missing: run scripts/install-worker-toolchain.sh (scripts/test.sh does)",
            workerd.display()
        );
        let port = free_port();
        let mut cmd = Command::new(workerd);
        cmd.arg("serve")
            .arg(worker_dir.join("workerd.capnp"))
            .arg("--directory-path")
            .arg(format!("do-storage={}", state_dir.display()))
            .arg("--socket-addr")
            .arg(format!("http=127.0.0.1:{port}"));
        for (name, value) in env {
            cmd.env(name, value);
        }
        Self::spawn(cmd, port, log)
    }

    fn spawn(mut cmd: Command, port: u16, log: &Path) -> Self {
        let log_file = std::fs::File::create(log).expect("create server log");
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {cmd:?}: {err}"));
        Self {
            child,
            port,
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the Worker answers HTTP; fails with the log if wrangler exits first.
    async fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll wrangler") {
                if status.code() == Some(EXIT_TOOLCHAIN_MISSING) {
                    panic!(
                        "the Worker toolchain is not installed: run scripts/install-worker-toolchain.sh \
                         (scripts/test.sh does)\n{}",
                        self.log_tail()
                    );
                }
                panic!("the server exited with {status}:\n{}", self.log_tail());
            }
            if let Ok(Ok((status, _))) = tokio::time::timeout(
                Duration::from_secs(2),
                http_get(self.port, tandem_tests::harness::READY_PROBE_PATH),
            )
            .await
            {
                if status == 404 {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < timeout,
                "the server did not answer within {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM to the whole group (wrangler and workerd), SIGKILL if it lingers.
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                // workerd may outlive node briefly; make sure the group is gone.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &group])
                    .stderr(Stdio::null())
                    .status();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 GET: status code and body (wrangler keeps the connection open, so the
/// body is read by its `content-length`).
async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    http_raw(port, request.as_bytes()).await
}

/// Sends `request` (a whole HTTP/1.1 request) as it is: status code and body.
async fn http_raw(port: u16, request: &[u8]) -> std::io::Result<(u16, String)> {
    let (status, _, body) = http_exchange(port, request).await?;
    Ok((status, body))
}

/// Sends `request` as it is: status code, response head (lower-cased) and body.
async fn http_exchange(port: u16, request: &[u8]) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request).await?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed inside the head"));
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = raw[head_end..].to_vec();
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            stream.read_to_end(&mut body).await?;
        }
    }
    Ok((
        status,
        head.to_ascii_lowercase(),
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// An HTTP server answering every request with its request line and headers as the body,
/// standing in for the chat server's directory.
fn directory_server() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind directory");
    let port = listener.local_addr().expect("directory addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let mut lines = head.lines();
            let line = lines.next().unwrap_or_default().to_owned();
            let headers: Vec<String> = lines
                .filter(|l| !l.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            let length = headers.iter().find_map(|h| {
                h.strip_prefix("content-length:")?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
            let mut request_body = vec![0; length.unwrap_or(0)];
            let _ = stream.read_exact(&mut request_body);
            let body = format!(
                "directory saw: {line}\nheaders: {}\nbody bytes: {}",
                headers.join(" | "),
                request_body.len()
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn group_path(group_id: [u8; 32], server_group: &str) -> String {
    let info = ClientUrlInfo::new(PublicKey(group_id), server_group).expect("valid url info");
    format!("/{}", info.path())
}

async fn ws_connect(port: u16, path: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
    )
    .await
    .expect("WebSocket connect timed out")
    .unwrap_or_else(|err| panic!("WebSocket connect to {url}: {err}"));
    ws
}

/// The next data frame's bytes (pings are answered by tungstenite).
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        let msg = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .expect("no frame within the timeout")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Binary(bytes) => return bytes.to_vec(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

/// The close code the server ends the socket with.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        let msg = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .expect("no close within the timeout");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => return u16::from(WsCloseCode::Status),
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("socket error before close: {err}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}

async fn group_stats(port: u16, group_id: [u8; 32]) -> serde_json::Value {
    let (status, body) = http_get(port, &format!("/_dev/group/{}", hex::encode(group_id)))
        .await
        .expect("stats request");
    assert_eq!(status, 200, "stats: {body}");
    let json = body
        .find('{')
        .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    serde_json::from_str(json).expect("stats JSON")
}

/// Unix time in ms (the device session's clock).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The keys of a test device group; `seed` names the group (its identity secret).
fn group_keys(seed: u8) -> DeviceGroupKeys {
    DeviceGroupKey::from_client_key(&SecretKey::from_bytes([seed; 32])).derive_keys()
}

/// A device id above 2^53, where a JS number would round it (the store keeps ids exact).
const DEVICE_A: u64 = 0xa11c_e000_0000_0001;
/// A device id above 2^63, stored as a negative i64.
const DEVICE_B: u64 = 0xb0b0_0000_0000_0002;
/// The group the reflect/restart checks use.
const GROUP_SEED: u8 = 0x5a;

/// A d2m device on a real WebSocket, driven by the sans-IO `DeviceSession`.
struct Device {
    ws: Ws,
    session: DeviceSession,
}

impl Device {
    async fn connect(
        port: u16,
        keys: &DeviceGroupKeys,
        server_group: &str,
        device_id: u64,
        expected: DeviceSlotState,
    ) -> Self {
        let ws = ws_connect(port, &group_path(keys.dgpk_public.0, server_group)).await;
        let info = DeviceInfo {
            platform: Platform::Web,
            platform_details: "worker smoke test".into(),
            app_version: "0".into(),
            label: format!("{device_id:016x}"),
        };
        let mut config = DeviceConfig::new(keys.clone(), device_id, info);
        config.expected_slot_state = expected;
        let session = DeviceSession::new(config, now_ms(), &mut OsRng).expect("device session");
        let mut device = Self { ws, session };
        device.flush().await;
        device
    }

    async fn flush(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.ws.send(Message::binary(bytes)).await.expect("send");
        }
    }

    /// The session's next event, reading the socket as needed.
    async fn event(&mut self) -> Event {
        loop {
            if let Some(event) = self.session.poll_event() {
                return event;
            }
            let msg = tokio::time::timeout(IO_TIMEOUT, self.ws.next())
                .await
                .expect("no frame from the mediator within the timeout");
            match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    self.session
                        .on_binary(&bytes, now_ms(), &mut OsRng)
                        .expect("the mediator broke the protocol");
                    self.flush().await;
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    self.session.on_close(CloseCode::from(code));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => panic!("socket error: {err}"),
                None => self.session.on_close(CloseCode::from(1006)),
            }
        }
    }

    /// Handshake through `ReflectionQueueDry`: `ServerInfo` and the queued envelopes as
    /// (reflected id, timestamp, message id).
    async fn login(&mut self) -> (ServerInfo, Vec<(u32, u64, u64)>) {
        let info = match self.event().await {
            Event::ServerInfo(info) => info,
            other => panic!("expected ServerInfo, got {other:?}"),
        };
        let mut queued = Vec::new();
        loop {
            match self.event().await {
                Event::QueueProgress { .. } => {}
                Event::Reflected {
                    reflected_id,
                    timestamp,
                    ephemeral: false,
                    envelope,
                    ..
                } => queued.push((reflected_id, timestamp, tag_of(&envelope.0))),
                Event::QueueDry => return (info, queued),
                other => panic!("expected queued Reflected or QueueDry, got {other:?}"),
            }
        }
    }

    /// Reflects a message with id `tag`; its `ReflectAck` timestamp.
    async fn reflect(&mut self, tag: u64) -> u64 {
        let id = self
            .session
            .reflect(&message(tag), false, &mut OsRng)
            .expect("reflect");
        self.flush().await;
        match self.event().await {
            Event::ReflectAcked {
                reflect_id,
                timestamp,
            } if reflect_id == id => timestamp,
            other => panic!("expected ReflectAcked for {id}, got {other:?}"),
        }
    }

    async fn ack(&mut self, reflected_id: u32) {
        self.session.ack_reflected(reflected_id).expect("ack");
        self.flush().await;
    }

    async fn close(mut self) {
        self.ws.close(None).await.expect("close");
        // Read to the end so the close handshake completes before the next step.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(IO_TIMEOUT, self.ws.next()).await {}
    }
}

fn message(tag: u64) -> d2d_pb::Envelope {
    d2d_pb::Envelope {
        padding: Vec::new(),
        device_id: 0,
        protocol_version: 0,
        content: Some(d2d_pb::envelope::Content::OutgoingMessage(
            d2d_pb::OutgoingMessage {
                message_id: tag,
                body: tag.to_le_bytes().to_vec(),
                ..Default::default()
            },
        )),
    }
}

fn tag_of(envelope: &d2d_pb::Envelope) -> u64 {
    match &envelope.content {
        Some(d2d_pb::envelope::Content::OutgoingMessage(m)) => m.message_id,
        other => panic!("unexpected envelope content {other:?}"),
    }
}

/// A fresh group: A and B get NEW slots, A is promoted, B goes offline, A reflects message 1.
/// Returns its `ReflectAck` timestamp.
async fn check_first_reflect(port: u16) -> u64 {
    let keys = group_keys(GROUP_SEED);
    let mut a = Device::connect(port, &keys, "01", DEVICE_A, DeviceSlotState::New).await;
    let (info, queued) = a.login().await;
    assert_eq!(info.device_slot_state, DeviceSlotState::New, "{info:?}");
    assert_eq!((info.reflection_queue_length, queued.len()), (0, 0));
    assert_eq!(info.max_device_slots, 8);
    assert!(info.current_time.abs_diff(now_ms()) < 60_000, "{info:?}");
    assert_eq!(a.event().await, Event::PromotedToLeader);

    let mut b = Device::connect(port, &keys, "01", DEVICE_B, DeviceSlotState::New).await;
    let (info, queued) = b.login().await;
    assert_eq!(info.device_slot_state, DeviceSlotState::New, "{info:?}");
    assert!(queued.is_empty());
    b.close().await;

    let stored_at = a.reflect(1).await;
    a.close().await;
    stored_at
}

/// B comes back (EXISTING) and must get exactly the queued `(message id, ReflectAck time)`s in
/// order; it acks them. Then A reflects `next_tag` while B is offline; its `ReflectAck` time.
async fn check_queue_then_reflect(port: u16, expected: &[(u64, u64)], next_tag: u64) -> u64 {
    let keys = group_keys(GROUP_SEED);
    let mut b = Device::connect(port, &keys, "01", DEVICE_B, DeviceSlotState::Existing).await;
    let (info, queued) = b.login().await;
    assert_eq!(
        info.device_slot_state,
        DeviceSlotState::Existing,
        "{info:?}"
    );
    assert_eq!(
        info.reflection_queue_length as usize,
        expected.len(),
        "{info:?}"
    );
    let got: Vec<(u64, u64)> = queued.iter().map(|&(_, at, tag)| (tag, at)).collect();
    assert_eq!(got, expected, "queued envelopes (message id, stored at)");
    // Nobody else is online: B leads now.
    assert_eq!(b.event().await, Event::PromotedToLeader);
    for (reflected_id, _, _) in queued {
        b.ack(reflected_id).await;
    }
    b.close().await;

    let mut a = Device::connect(port, &keys, "01", DEVICE_A, DeviceSlotState::Existing).await;
    let (info, queued) = a.login().await;
    assert_eq!(
        info.device_slot_state,
        DeviceSlotState::Existing,
        "{info:?}"
    );
    assert!(queued.is_empty(), "A reflected, it has nothing queued");
    // B has left: A leads.
    assert_eq!(a.event().await, Event::PromotedToLeader);
    let stored_at = a.reflect(next_tag).await;
    a.close().await;
    stored_at
}

/// The group's stats, once `check` holds (acks travel on another connection than the stats
/// request, so they may land a moment later).
async fn wait_stats(port: u16, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let group = group_keys(GROUP_SEED).dgpk_public.0;
    let started = Instant::now();
    loop {
        let stats = group_stats(port, group).await;
        if check(&stats) {
            return stats;
        }
        assert!(
            started.elapsed() < IO_TIMEOUT,
            "stats never matched: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store's contract checks inside a real Durable Object (transactionSync rollback, device
/// ids above 2^53, commit order, reference counts).
async fn check_store_selftest(port: u16) {
    let (status, body) = http_get(port, "/_dev/store-selftest")
        .await
        .expect("self-test request");
    assert_eq!(status, 200, "{body}");
    let json = body
        .find('{')
        .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let report: serde_json::Value = serde_json::from_str(json).expect("self-test JSON");
    let passed = report["passed"].as_array().expect("passed list");
    assert_eq!(passed.len(), 11, "{report}");
}

/// A stand-in chat server: reads the device's 48-byte client-hello, answers with a server-hello
/// (80 B), a login-ack (32 B) and one frame, cut in the middle of the server-hello and of the
/// frame; reports what it read and, later, that the mediator closed the connection.
async fn fake_chat_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind chat server");
    let port = listener.local_addr().expect("chat server addr").port();
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                stream.set_nodelay(true).expect("nodelay");
                let mut hello = vec![0u8; 48];
                if stream.read_exact(&mut hello).await.is_err() {
                    return;
                }
                let _ = report.send(hello);
                let stream_bytes = server_units().concat();
                for part in [
                    &stream_bytes[..50],
                    &stream_bytes[50..130],
                    &stream_bytes[130..],
                ] {
                    stream.write_all(part).await.expect("write units");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Whatever else comes until the mediator closes the connection.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                let _ = report.send(rest);
            });
        }
    });
    (port, reports)
}

/// What the fake chat server sends: server-hello, login-ack, one 20-byte frame.
fn server_units() -> Vec<Vec<u8>> {
    let mut frame = 20_u16.to_le_bytes().to_vec();
    frame.extend((0..20).map(|i| 0xf0 | i));
    vec![vec![0x5e; 80], vec![0x1a; 32], frame]
}

/// A device's proxy payload reaches the chat server byte for byte; the server's stream comes
/// back one CSP unit per proxy container; the device leaving closes the TCP connection.
async fn check_proxy(
    port: u16,
    seed: u8,
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let keys = group_keys(seed);
    let mut device = Device::connect(port, &keys, "01", 7, DeviceSlotState::New).await;
    device.login().await;
    assert_eq!(device.event().await, Event::PromotedToLeader);
    let hello: Vec<u8> = (0..48).collect();
    let mut container = vec![0x00, 0, 0, 0];
    container.extend_from_slice(&hello);
    device
        .ws
        .send(Message::binary(container))
        .await
        .expect("send proxy");
    let received = tokio::time::timeout(IO_TIMEOUT, reports.recv())
        .await
        .expect("the chat server got nothing")
        .expect("chat server task");
    assert_eq!(received, hello, "proxy payload at the chat server");
    for unit in server_units() {
        let frame = next_binary(&mut device.ws).await;
        assert_eq!(frame.get(..4), Some(&[0u8, 0, 0, 0][..]), "proxy container");
        assert_eq!(&frame[4..], unit.as_slice(), "one CSP unit per container");
    }
    device.ws.close(None).await.expect("close");
    let rest = tokio::time::timeout(IO_TIMEOUT, reports.recv())
        .await
        .expect("the chat server connection stayed open after the device left")
        .expect("chat server task");
    assert!(rest.is_empty(), "nothing more was sent: {rest:?}");
}

/// A device works d2m-only until its first proxy container; then a chat server that cannot be
/// reached closes it with 4001.
async fn check_unreachable_chat_server(port: u16, server_group: &str, seed: u8) {
    let keys = group_keys(seed);
    let mut device = Device::connect(port, &keys, server_group, 9, DeviceSlotState::New).await;
    device.login().await;
    assert_eq!(device.event().await, Event::PromotedToLeader);
    device.session.get_devices_info().expect("devices info");
    device.flush().await;
    match device.event().await {
        Event::DevicesInfo(entries) => assert_eq!(entries.len(), 1, "{entries:?}"),
        other => panic!("expected DevicesInfo, got {other:?}"),
    }
    device
        .ws
        .send(Message::binary(vec![0x00, 0, 0, 0, 1, 2, 3]))
        .await
        .expect("send proxy");
    assert_eq!(
        close_code(&mut device.ws).await,
        4001,
        "server group {server_group}"
    );
}

/// A chat server that accepts and never reads, with a small receive buffer.
async fn black_hole_chat_server() -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind black hole");
    let listener = socket.listen(16).expect("listen");
    let port = listener.local_addr().expect("black hole addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    port
}

/// Device bytes the chat server does not take are bounded: once the kernel buffers are full
/// and 1 MiB more waits in the object, the device is closed with 4009.
async fn check_backlog_bound(port: u16, server_group: &str, seed: u8) {
    let keys = group_keys(seed);
    let device = Device::connect(port, &keys, server_group, 13, DeviceSlotState::New).await;
    let mut device = device;
    device.login().await;
    assert_eq!(device.event().await, Event::PromotedToLeader);
    let (mut tx, mut rx) = device.ws.split();
    let mut container = vec![0u8; 65_536];
    container[4..].fill(0x42);
    let mut sent = 0usize;
    // Far more than the kernel buffers of a loopback connection plus the 1 MiB bound.
    while sent < 64 * 1024 * 1024 {
        if tx.send(Message::binary(container.clone())).await.is_err() {
            break;
        }
        sent += container.len();
        if let Some(Some(msg)) = rx.next().now_or_never() {
            match msg {
                Ok(Message::Close(Some(frame))) => {
                    assert_eq!(u16::from(frame.code), 4009, "after {sent} bytes");
                    eprintln!("backlog bound: closed with 4009 after {sent} bytes");
                    return;
                }
                other => panic!("unexpected {other:?} while flooding the proxy"),
            }
        }
    }
    let code = loop {
        let msg = tokio::time::timeout(IO_TIMEOUT, rx.next())
            .await
            .expect("no close within the timeout");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, 4009, "after {sent} bytes");
    eprintln!("backlog bound: closed with 4009 after {sent} bytes");
}

/// The object's alarm: a transaction whose 1 s TTL runs out while its holder stays silent is
/// ended by the alarm alone (no input arrives that could advance the group's clock) with 4011.
async fn check_ttl_alarm(port: u16, seed: u8) {
    let keys = group_keys(seed);
    let mut device = Device::connect(port, &keys, "01", 11, DeviceSlotState::New).await;
    device.login().await;
    assert_eq!(device.event().await, Event::PromotedToLeader);
    device
        .session
        .begin_transaction(Scope::ContactSync, 1, &mut OsRng)
        .expect("begin");
    device.flush().await;
    assert_eq!(device.event().await, Event::TransactionBegun);
    let begun = Instant::now();
    match device.event().await {
        Event::Closed { code, .. } => assert_eq!(code.as_u16(), 4011),
        other => panic!("expected the TTL close, got {other:?}"),
    }
    let waited = begun.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
}

async fn check_text_frame_is_a_protocol_error(port: u16) {
    let mut ws = ws_connect(port, &group_path(group_keys(9).dgpk_public.0, "01")).await;
    ws.send(Message::text("hello")).await.expect("send text");
    assert_eq!(close_code(&mut ws).await, 4010);
}

async fn check_bench_relay(port: u16) {
    let mut a = ws_connect(port, "/bench-relay/smoke").await;
    let mut b = ws_connect(port, "/bench-relay/smoke").await;
    let mut c = ws_connect(port, "/bench-relay/smoke").await;
    a.send(Message::binary(b"from a".to_vec()))
        .await
        .expect("send a");
    assert_eq!(next_binary(&mut b).await, b"from a");
    assert_eq!(next_binary(&mut c).await, b"from a");
    b.send(Message::binary(b"from b".to_vec()))
        .await
        .expect("send b");
    // a's next frame is b's: the relay never sends a frame back to its sender.
    assert_eq!(next_binary(&mut a).await, b"from b");
    assert_eq!(next_binary(&mut c).await, b"from b");
    for mut ws in [a, b, c] {
        ws.close(None).await.expect("close");
    }
}

async fn check_http_routes(port: u16) {
    let (status, body) = http_get(port, "/ab/zz").await.expect("bad path");
    assert_eq!(status, 400);
    assert!(body.contains("bad mediator path"), "{body}");
    let (status, _) = http_get(port, &group_path([7; 32], "01"))
        .await
        .expect("no upgrade");
    assert_eq!(status, 426);
    let (status, body) = http_get(port, "/directory/identity/ECHOECHO?x=1")
        .await
        .expect("directory");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("directory saw: GET /identity/ECHOECHO?x=1 HTTP/1.1"),
        "{body}"
    );
}

/// A POST to `/directory{path}` with `headers` (name, value) and `body`: status and body.
async fn directory_post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut request = format!(
        "POST /directory{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    http_raw(port, &request).await.expect("directory POST")
}

/// `/directory/*` passes on only the headers the directory needs (never the client's address or
/// cookies), refuses bodies over 64 KiB (declared or chunked) with 413, and, where the runtime
/// has the rate limiter binding (`limited`: wrangler dev), answers identity creation past 60
/// requests a minute from one address with 429 while other addresses and lookups go on.
async fn check_directory_forwarding(port: u16, limited: bool) {
    let (status, body) = directory_post(
        port,
        "/identity/fetch_bulk",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("CF-Connecting-IP", "203.0.113.9"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Real-IP", "203.0.113.9"),
            ("Cookie", "session=secret"),
            ("User-Agent", "Threema/6.0"),
        ],
        br#"{"identities":["ECHOECHO"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("directory saw: POST /identity/fetch_bulk"),
        "{body}"
    );
    assert!(body.contains("content-type: application/json"), "{body}");
    assert!(body.contains("body bytes: 27"), "{body}");
    for leak in [
        "203.0.113.9",
        "cookie",
        "secret",
        "x-forwarded-for",
        "user-agent",
    ] {
        assert!(!body.contains(leak), "{leak} reached the directory: {body}");
    }

    let big = vec![b'x'; 64 * 1024 + 1];
    let (status, body) = directory_post(port, "/identity/fetch_bulk", &[], &big).await;
    assert_eq!(status, 413, "declared length over 64 KiB: {body}");
    let mut chunked = format!(
        "POST /directory/identity/fetch_bulk HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..9 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b'y', 8 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = http_raw(port, &chunked).await.expect("chunked POST");
    assert_eq!(status, 413, "chunked body over 64 KiB: {body}");

    check_directory_cors(port).await;
    if !limited {
        return;
    }
    let create = |address: &'static str| async move {
        directory_post(
            port,
            "/identity/create",
            &[("CF-Connecting-IP", address)],
            b"{}",
        )
        .await
    };
    // The limiter counts in fixed windows of a minute (Cloudflare's, and wrangler's simulation:
    // buckets cleared at each whole minute since the epoch): all 61 requests go in one window.
    let into_minute = now_ms() % 60_000;
    if into_minute > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into_minute + 200)).await;
    }
    for n in 1..=60 {
        let (status, body) = create("198.51.100.1").await;
        assert_eq!(status, 200, "creation request {n} of 60: {body}");
    }
    let (status, body) = create("198.51.100.1").await;
    assert_eq!(status, 429, "the 61st creation request in a minute: {body}");
    assert!(body.contains("too many identities"), "{body}");
    // A spelling the chat server might read the same way counts too.
    let (status, _) = directory_post(
        port,
        "/identity/create/",
        &[("CF-Connecting-IP", "198.51.100.1")],
        b"{}",
    )
    .await;
    assert_eq!(
        status, 429,
        "a trailing slash does not step around the limit"
    );
    let (status, body) = create("198.51.100.2").await;
    assert_eq!(status, 200, "another address is not limited: {body}");
    let (status, body) = directory_post(
        port,
        "/identity/fetch_bulk",
        &[("CF-Connecting-IP", "198.51.100.1")],
        b"{}",
    )
    .await;
    assert_eq!(status, 200, "lookups are not creation: {body}");
}

/// A page on another origin: its preflight passes, its request is refused with 403 and a reason
/// it can read unless the origin is in `TANDEM_DIRECTORY_ORIGINS` (the smoke test allows
/// `https://app.example`); the Worker's own origin (the web app) needs no listing.
async fn check_directory_cors(port: u16) {
    let request = |method: &str, origin: &str| {
        format!(
            "{method} /directory/identity/ECHOECHO HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Connection: close\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\n\r\n"
        )
    };
    let exchange = |request: String| async move {
        http_exchange(port, request.as_bytes())
            .await
            .expect("directory CORS request")
    };
    let (status, head, _) = exchange(request("OPTIONS", "https://other.example")).await;
    assert_eq!(status, 204, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://other.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: content-type"),
        "{head}"
    );

    let (status, head, body) = exchange(request("GET", "https://other.example")).await;
    assert_eq!(status, 403, "{head}{body}");
    assert!(
        head.contains("access-control-allow-origin: https://other.example"),
        "{head}"
    );
    assert!(body.contains("TANDEM_DIRECTORY_ORIGINS"), "{body}");
    assert!(
        !body.contains("directory saw"),
        "a refused origin reached the directory: {body}"
    );

    let (status, head, body) = exchange(request("GET", "https://app.example")).await;
    assert_eq!(status, 200, "{head}{body}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(
        body.contains("directory saw: GET /identity/ECHOECHO"),
        "{body}"
    );

    let (status, head, body) = exchange(request("GET", &format!("http://127.0.0.1:{port}"))).await;
    assert_eq!(status, 200, "same origin: {head}{body}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mediator_worker_under_wrangler_dev_and_workerd() {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "worker-smoke-{}-{}",
        std::process::id(),
        now_ms()
    ));
    let state_dir = scratch.join("state");
    std::fs::create_dir_all(&state_dir).expect("create state dir");

    let (chat_port, mut chat_reports) = fake_chat_server().await;
    let closed_port = free_port();
    let black_hole_port = black_hole_chat_server().await;
    let directory_port = directory_server();
    let vars = vec![
        format!("CHAT_SERVER_01:127.0.0.1:{chat_port}"),
        format!("CHAT_SERVER_02:127.0.0.1:{closed_port}"),
        format!("CHAT_SERVER_03:127.0.0.1:{black_hole_port}"),
        format!("DIRECTORY_URL:http://127.0.0.1:{directory_port}"),
        "TANDEM_DIRECTORY_ORIGINS:https://app.example".to_owned(),
    ];

    let mut dev = Served::wrangler_dev(&state_dir, &scratch.join("wrangler-1.log"), &vars, true);
    let first_start = dev.wait_ready(FIRST_START_TIMEOUT).await;
    eprintln!("wrangler dev answered after {first_start:?} (first start, includes the build)");

    check_http_routes(dev.port).await;
    check_directory_forwarding(dev.port, true).await;
    check_store_selftest(dev.port).await;
    let first = check_first_reflect(dev.port).await;
    let stats = group_stats(dev.port, group_keys(GROUP_SEED).dgpk_public.0).await;
    assert_eq!(
        (&stats["slots"], &stats["queued"], &stats["envelopes"]),
        (&2.into(), &1.into(), &1.into()),
        "{stats}"
    );
    check_proxy(dev.port, 1, &mut chat_reports).await;
    check_unreachable_chat_server(dev.port, "02", 2).await;
    check_unreachable_chat_server(dev.port, "zz9", 3).await;
    check_text_frame_is_a_protocol_error(dev.port).await;
    check_ttl_alarm(dev.port, 5).await;
    check_backlog_bound(dev.port, "03", 10).await;
    check_bench_relay(dev.port).await;
    dev.stop();

    // Restart on the same state (no build): B, offline during the reflect, gets it now.
    let mut dev = Served::wrangler_dev(&state_dir, &scratch.join("wrangler-2.log"), &vars, false);
    let restart = dev.wait_ready(RESTART_TIMEOUT).await;
    eprintln!("wrangler dev answered after {restart:?} (restart on the same state, no build)");
    let second = check_queue_then_reflect(dev.port, &[(1, first)], 2).await;
    let stats = wait_stats(dev.port, |s| s["queued"] == 1).await;
    assert_eq!(
        (&stats["slots"], &stats["envelopes"]),
        (&2.into(), &1.into()),
        "{stats}"
    );
    assert_eq!(stats["openConnections"], 0, "{stats}");
    dev.stop();

    // Self-hosting: the same build under plain workerd with the checked-in config, on the
    // Durable Object storage wrangler dev left (same layout: `<persist-to>/v3/do/<uniqueKey>`).
    let workerd_state = state_dir.join("v3/do");
    let env = [
        ("CHAT_SERVER_01", format!("127.0.0.1:{chat_port}")),
        (
            "DIRECTORY_URL",
            format!("http://127.0.0.1:{directory_port}"),
        ),
        ("TANDEM_DEV_ROUTES", "on".to_owned()),
        ("TANDEM_DIRECTORY_ORIGINS", "https://app.example".to_owned()),
    ];
    let mut workerd = Served::workerd(&workerd_state, &scratch.join("workerd-1.log"), &env);
    let started = workerd.wait_ready(RESTART_TIMEOUT).await;
    eprintln!("workerd answered after {started:?}");
    check_http_routes(workerd.port).await;
    check_directory_forwarding(workerd.port, false).await;
    let third = check_queue_then_reflect(workerd.port, &[(2, second)], 3).await;
    check_store_selftest(workerd.port).await;
    check_proxy(workerd.port, 4, &mut chat_reports).await;
    check_ttl_alarm(workerd.port, 6).await;
    check_bench_relay(workerd.port).await;
    workerd.stop();

    let mut workerd = Served::workerd(&workerd_state, &scratch.join("workerd-2.log"), &env);
    workerd.wait_ready(RESTART_TIMEOUT).await;
    check_queue_then_reflect(workerd.port, &[(3, third)], 4).await;
    let stats = wait_stats(workerd.port, |s| s["queued"] == 1).await;
    assert_eq!(
        (&stats["slots"], &stats["envelopes"]),
        (&2.into(), &1.into()),
        "{stats}"
    );
    workerd.stop();

    check_deploy_dry_run(&scratch.join("deploy"));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// `wrangler deploy --dry-run` (`scripts/worker-deploy-check.sh`) accepts wrangler.toml and
/// builds what a deploy uploads: the release build, without the `dev` feature, so none of the
/// development routes' code is in its wasm (docs/worker.md "Deploying to Cloudflare"). Last in
/// the test: it leaves that build in mediator-worker/build.
fn check_deploy_dry_run(out: &Path) {
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/worker-deploy-check.sh"))
        .arg(out)
        .env_remove("TANDEM_WORKER_PREBUILT")
        .stdin(Stdio::null())
        .output()
        .expect("run worker-deploy-check.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "wrangler deploy --dry-run failed:\n{log}"
    );
    assert!(log.contains("--dry-run: exiting now"), "{log}");
    for binding in ["DEVICE_GROUP", "IDENTITY_CREATION"] {
        assert!(log.contains(binding), "binding {binding} missing:\n{log}");
    }
    let wasm = std::fs::read_dir(out)
        .expect("the dry run's output directory")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .unwrap_or_else(|| panic!("no wasm in {}:\n{log}", out.display()));
    let wasm = std::fs::read(&wasm).expect("read the deploy's wasm");
    let has = |needle: &str| wasm.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has("frame too large"),
        "the deploy's wasm is not the mediator"
    );
    for dev in ["/_dev/", "tamper-next", "store-selftest", "store self-test"] {
        assert!(
            !has(dev),
            "the deploy's wasm has development code ({dev:?})"
        );
    }
}
