//! The mediator Worker under `wrangler dev` and under plain `workerd` (the self-hosting config),
//! for real: binary echo through the device group's Durable Object, its SQLite counter across a
//! restart, the outbound TCP relay to a local echo server, the bench relay, directory forwarding,
//! and the close codes.
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

use futures_util::{SinkExt, StreamExt};
use tandem_shared::crypto::PublicKey;
use tandem_shared::keys::ClientUrlInfo;
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

/// Echoed (non-proxy) frames sent before the restart.
const ECHO_FRAMES: i64 = 5;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
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
            if let Ok(Ok((status, _))) =
                tokio::time::timeout(Duration::from_secs(2), http_get(self.port, "/")).await
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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
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
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A TCP server echoing every byte, standing in for the chat server.
async fn tcp_echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let port = listener.local_addr().expect("echo addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    port
}

/// An HTTP server answering every request with its request line as the body, standing in for
/// the chat server's directory.
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
            let line = head.lines().next().unwrap_or_default().to_owned();
            let body = format!("directory saw: {line}");
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

async fn check_echo(port: u16, group_id: [u8; 32], frames: i64) {
    let mut ws = ws_connect(port, &group_path(group_id, "01")).await;
    for i in 0..frames {
        // Type byte 0x80 is no d2m proxy container, so the skeleton echoes it.
        let frame: Vec<u8> = [0x80, 0, 0, 0]
            .into_iter()
            .chain((0..200u8).map(|b| b.wrapping_add(i as u8)))
            .collect();
        ws.send(Message::binary(frame.clone())).await.expect("send");
        let echoed = next_binary(&mut ws).await;
        assert!(
            !echoed.is_empty(),
            "binary frame arrived empty (binaryType trap)"
        );
        assert_eq!(echoed, frame);
    }
    ws.close(None).await.expect("close");
}

async fn check_tcp_relay(port: u16) {
    let mut ws = ws_connect(port, &group_path([7; 32], "01")).await;
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut container = vec![0x00, 0, 0, 0];
    container.extend_from_slice(&payload);
    ws.send(Message::binary(container))
        .await
        .expect("send proxy");
    let mut received = Vec::new();
    while received.len() < payload.len() {
        let frame = next_binary(&mut ws).await;
        assert_eq!(
            frame.get(..4),
            Some(&[0u8, 0, 0, 0][..]),
            "proxy container header"
        );
        received.extend_from_slice(&frame[4..]);
    }
    assert_eq!(received, payload);
    ws.close(None).await.expect("close");
}

async fn check_unreachable_chat_server(port: u16, server_group: &str) {
    let mut ws = ws_connect(port, &group_path([8; 32], server_group)).await;
    // A d2m-only device keeps working: echo still answers before any proxy container.
    ws.send(Message::binary(vec![0x80, 0, 0, 0, 1]))
        .await
        .expect("send");
    assert_eq!(next_binary(&mut ws).await, vec![0x80, 0, 0, 0, 1]);
    ws.send(Message::binary(vec![0x00, 0, 0, 0, 1]))
        .await
        .expect("send proxy");
    assert_eq!(
        close_code(&mut ws).await,
        4001,
        "server group {server_group}"
    );
}

async fn check_text_frame_is_a_protocol_error(port: u16) {
    let mut ws = ws_connect(port, &group_path([9; 32], "01")).await;
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

/// After a restart on the same storage: the counter of the [`ECHO_FRAMES`] echoed before the
/// restart is still there and counts on.
async fn check_counter_survived(port: u16, group_id: [u8; 32]) {
    let stats = group_stats(port, group_id).await;
    assert_eq!(stats["framesEchoed"], ECHO_FRAMES, "counter lost: {stats}");
    assert_eq!(stats["openConnections"], 0, "{stats}");
    check_echo(port, group_id, 1).await;
    let stats = group_stats(port, group_id).await;
    assert_eq!(stats["framesEchoed"], ECHO_FRAMES + 1, "{stats}");
    assert_eq!(stats["connectionsAccepted"], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mediator_worker_under_wrangler_dev_and_workerd() {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "worker-smoke-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    ));
    let state_dir = scratch.join("state");
    std::fs::create_dir_all(&state_dir).expect("create state dir");

    let echo_port = tcp_echo_server().await;
    let closed_port = free_port();
    let directory_port = directory_server();
    let vars = vec![
        format!("CHAT_SERVER_01:127.0.0.1:{echo_port}"),
        format!("CHAT_SERVER_02:127.0.0.1:{closed_port}"),
        format!("DIRECTORY_URL:http://127.0.0.1:{directory_port}"),
    ];
    let group_id = [0x5a; 32];

    let mut dev = Served::wrangler_dev(&state_dir, &scratch.join("wrangler-1.log"), &vars, true);
    let first_start = dev.wait_ready(FIRST_START_TIMEOUT).await;
    eprintln!("wrangler dev answered after {first_start:?} (first start, includes the build)");

    check_http_routes(dev.port).await;
    check_echo(dev.port, group_id, ECHO_FRAMES).await;
    let stats = group_stats(dev.port, group_id).await;
    assert_eq!(stats["framesEchoed"], ECHO_FRAMES, "{stats}");
    assert_eq!(stats["connectionsAccepted"], 1, "{stats}");
    check_tcp_relay(dev.port).await;
    check_unreachable_chat_server(dev.port, "02").await;
    check_unreachable_chat_server(dev.port, "zz9").await;
    check_text_frame_is_a_protocol_error(dev.port).await;
    check_bench_relay(dev.port).await;
    dev.stop();

    let mut dev = Served::wrangler_dev(&state_dir, &scratch.join("wrangler-2.log"), &vars, false);
    let restart = dev.wait_ready(RESTART_TIMEOUT).await;
    eprintln!("wrangler dev answered after {restart:?} (restart on the same state, no build)");
    check_counter_survived(dev.port, group_id).await;
    dev.stop();

    // Self-hosting: the same build under plain workerd with the checked-in config, on the
    // Durable Object storage wrangler dev left (same layout: `<persist-to>/v3/do/<uniqueKey>`).
    let workerd_state = state_dir.join("v3/do");
    let env = [
        ("CHAT_SERVER_01", format!("127.0.0.1:{echo_port}")),
        (
            "DIRECTORY_URL",
            format!("http://127.0.0.1:{directory_port}"),
        ),
        ("TANDEM_DEV_ROUTES", "on".to_owned()),
    ];
    let mut workerd = Served::workerd(&workerd_state, &scratch.join("workerd-1.log"), &env);
    let started = workerd.wait_ready(RESTART_TIMEOUT).await;
    eprintln!("workerd answered after {started:?}");
    check_http_routes(workerd.port).await;
    assert_eq!(
        group_stats(workerd.port, group_id).await["framesEchoed"],
        ECHO_FRAMES + 1,
        "workerd did not read wrangler dev's storage"
    );
    check_echo(workerd.port, group_id, 1).await;
    check_tcp_relay(workerd.port).await;
    check_bench_relay(workerd.port).await;
    workerd.stop();
    let mut workerd = Served::workerd(&workerd_state, &scratch.join("workerd-2.log"), &env);
    workerd.wait_ready(RESTART_TIMEOUT).await;
    let stats = group_stats(workerd.port, group_id).await;
    assert_eq!(
        stats["framesEchoed"],
        ECHO_FRAMES + 2,
        "counter lost: {stats}"
    );
    assert_eq!(stats["connectionsAccepted"], 3, "{stats}");
    workerd.stop();

    let _ = std::fs::remove_dir_all(&scratch);
}
