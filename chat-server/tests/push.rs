//! Push (docs/chat-server.md "Push", docs/protocol.md "CSP on demand"): the real server process
//! POSTs to an identity's registered push URL when a message waits for it and no session
//! receives, looks again with back-off, stops once a session receives; refuses URLs outside
//! `--push-origin`. The push target here is a small HTTP listener that counts the POSTs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{text_message, Account, Client, ServerProcess};
use tandem_shared::app::TANDEM_PUSH_TOKEN_TYPE;
use tandem_shared::csp::{CspPayload, MessageAck, MessageFlags, PushToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The request lines the listener got, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// A listener on a free port that answers every request 204 and records its request line.
async fn push_target() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                record
                    .lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or("").to_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    (port, seen)
}

async fn register(client: &mut Client, url: &str) {
    client
        .send(&CspPayload::SetPushNotificationToken(
            PushToken::new(TANDEM_PUSH_TOKEN_TYPE, url.as_bytes().to_vec()).unwrap(),
        ))
        .await;
    // An echo round trip: the token was handled (and stored) before the answer.
    client.send(&CspPayload::EchoRequest(vec![1])).await;
    assert_eq!(client.expect().await, CspPayload::EchoResponse(vec![1]));
}

async fn send_acked(client: &mut Client, from: &Account, to: &Account, id: u64) {
    let message = text_message(from, to, id, MessageFlags::NONE, "hi");
    client.send(&CspPayload::OutgoingMessage(message)).await;
    assert_eq!(
        client.expect().await,
        CspPayload::OutgoingMessageAck(MessageAck {
            identity: to.identity,
            message_id: id,
        })
    );
}

async fn wait_for_posts(seen: &Seen, count: usize, within: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let lines = seen.lock().unwrap().clone();
        if lines.len() >= count || tokio::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server started with `extra`, a receiver that registered
/// `http://127.0.0.1:PORT/push/{path}` (PORT: a listener's) and logged out, and a sender whose
/// first message to it is stored.
struct OneMessage {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    seen: Seen,
    sender: Account,
    receiver: Account,
    s: Client,
}

async fn one_message_stored(extra: &[&str], path: &str) -> OneMessage {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), extra);
    let (port, seen) = push_target().await;
    let sender = Account::create(server.http).await;
    let receiver = Account::create(server.http).await;
    let mut r = Client::connect(server.csp, receiver.config(&server.public_key, 1))
        .await
        .unwrap();
    register(&mut r, &format!("http://127.0.0.1:{port}/push/{path}")).await;
    drop(r);
    let mut s = Client::connect(server.csp, sender.config(&server.public_key, 1))
        .await
        .unwrap();
    send_acked(&mut s, &sender, &receiver, 1).await;
    OneMessage {
        _dir: dir,
        server,
        seen,
        sender,
        receiver,
        s,
    }
}

#[tokio::test]
async fn a_message_nobody_receives_is_pushed_until_a_session_receives_it() {
    let OneMessage {
        server,
        seen,
        sender,
        receiver,
        mut s,
        ..
    } = one_message_stored(&["--push-origin", "http://127.0.0.1"], "token-1").await;
    let lines = wait_for_posts(&seen, 1, Duration::from_secs(5)).await;
    assert_eq!(lines, ["POST /push/token-1 HTTP/1.1"], "pushed at once");
    // More messages while the schedule runs: no burst of POSTs.
    send_acked(&mut s, &sender, &receiver, 2).await;
    send_acked(&mut s, &sender, &receiver, 3).await;
    // Nobody came: it pushes again after 2 s.
    let lines = wait_for_posts(&seen, 2, Duration::from_secs(5)).await;
    assert_eq!(lines.len(), 2, "{lines:?}");

    // The receiver logs in and receives: the pushes stop.
    let mut r = Client::connect(server.csp, receiver.config(&server.public_key, 1))
        .await
        .unwrap();
    r.send(&CspPayload::UnblockIncomingMessages).await;
    let mut got = 0;
    loop {
        match r.expect().await {
            CspPayload::IncomingMessage(m) => {
                got += 1;
                r.send(&CspPayload::IncomingMessageAck(MessageAck {
                    identity: m.sender,
                    message_id: m.message_id,
                }))
                .await;
            }
            CspPayload::QueueSendComplete => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 3);
    let before = seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(seen.lock().unwrap().len(), before, "no push once received");
    // While it receives, a new message is delivered, not pushed.
    send_acked(&mut s, &sender, &receiver, 4).await;
    assert!(matches!(r.expect().await, CspPayload::IncomingMessage(_)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(seen.lock().unwrap().len(), before);
}

/// What the listener got within 3 s of [`one_message_stored`].
async fn pushes_after_one_message(extra: &[&str], path: &str) -> Vec<String> {
    let stored = one_message_stored(extra, path).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = stored.seen.lock().unwrap().clone();
    lines
}

#[tokio::test]
async fn a_url_outside_the_allowed_origins_is_never_posted_to() {
    // The local network is not an allowed origin: a client cannot make the server POST there.
    let lines =
        pushes_after_one_message(&["--push-origin", "https://mediator.example.org"], "t2").await;
    assert!(lines.is_empty(), "{lines:?}");
}

#[tokio::test]
async fn without_push_origins_nothing_is_pushed() {
    let lines = pushes_after_one_message(&[], "t3").await;
    assert!(lines.is_empty(), "{lines:?}");
}

#[tokio::test]
async fn with_an_allowed_origin_one_message_is_pushed_once_at_first() {
    let lines = pushes_after_one_message(&["--push-origin", "http://127.0.0.1"], "t4").await;
    // At once, and again after 2 s (nobody came).
    assert_eq!(
        lines.first().map(String::as_str),
        Some("POST /push/t4 HTTP/1.1")
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
}
