//! Two chat-server nodes on one PostgreSQL database (docs/chat-server.md "Several nodes"): real
//! processes, a real PostgreSQL server started by the test (as the `postgres` user when root),
//! real TCP. Cross-node delivery must be live (the catch-up sweep is set to ten minutes here, so
//! only the NOTIFY hints can deliver in time), in order and acked; the receiving session moves
//! between nodes without loss or duplicates after an ack; SIGKILL of a node loses nothing acked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{
    create_identity_via, http_json, open_text, pg, text_message, Account, Client, ServerProcess,
};
use tandem_shared::crypto::SecretKey;
use tandem_shared::csp::{CspPayload, MessageAck, MessageFlags, MessageWithMetadataBox};
use tandem_shared::keys::ClientKey;

/// No sweep during a test: only hints deliver across nodes.
const NO_SWEEP: &[&str] = &["--sweep-interval-ms", "600000"];

struct Nodes {
    a: ServerProcess,
    b: ServerProcess,
    /// The database both use, on the suite's PostgreSQL server.
    db: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Two nodes of one server group on a fresh database: B gets A's server key (docs: every node
/// reads the same `server.key`).
fn two_nodes(extra: &[&str]) -> Nodes {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = pg::shared();
    let name = pg::database_for(da.path());
    server.ensure_database(&name);
    let url = server.url(&name);
    let args: Vec<&str> = ["--database", url.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let a = ServerProcess::start(da.path(), &args);
    std::fs::copy(da.path().join("server.key"), db.path().join("server.key")).unwrap();
    let b = ServerProcess::start(db.path(), &args);
    assert_eq!(a.public_key, b.public_key, "one server key for the group");
    Nodes {
        a,
        b,
        db: name,
        _dirs: (da, db),
    }
}

/// X logged in on node A; Y logged in on node B, receiving, its queue empty.
async fn sender_on_a_receiver_on_b(nodes: &Nodes) -> (Account, Account, Client, Client) {
    let x = Account::create(nodes.a.http).await;
    let y = Account::create(nodes.a.http).await;
    let xa = connect(&nodes.a, &x, 1).await;
    let mut yb = connect(&nodes.b, &y, 1).await;
    yb.send(&CspPayload::UnblockIncomingMessages).await;
    assert_eq!(yb.expect().await, CspPayload::QueueSendComplete);
    (x, y, xa, yb)
}

async fn connect(node: &ServerProcess, account: &Account, device_id: u64) -> Client {
    Client::connect(node.csp, account.config(&node.public_key, device_id))
        .await
        .unwrap()
}

/// Writes every message without waiting for acks.
async fn send_all(client: &mut Client, messages: impl IntoIterator<Item = MessageWithMetadataBox>) {
    for m in messages {
        client
            .csp
            .send(&CspPayload::OutgoingMessage(m).encode().unwrap())
            .unwrap();
    }
    client.flush().await.unwrap();
}

fn texts(
    from: &Account,
    to: &Account,
    ids: std::ops::RangeInclusive<u64>,
) -> Vec<MessageWithMetadataBox> {
    ids.map(|id| text_message(from, to, id, MessageFlags::NONE, &format!("text {id}")))
        .collect()
}

/// Reads `n` message-acks (anything else fails).
async fn expect_acks(client: &mut Client, receiver: &Account, ids: impl IntoIterator<Item = u64>) {
    for id in ids {
        assert_eq!(
            client.expect().await,
            CspPayload::OutgoingMessageAck(MessageAck {
                identity: receiver.identity,
                message_id: id
            })
        );
    }
}

/// The next incoming message, skipping queue-send-complete.
async fn next_incoming(client: &mut Client) -> MessageWithMetadataBox {
    loop {
        match client.expect().await {
            CspPayload::IncomingMessage(m) => return m,
            CspPayload::QueueSendComplete => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Nothing more arrives, except the queue-send-complete if the backlog ended with the last
/// message read.
async fn expect_silence_after_backlog(client: &mut Client) {
    match client.recv_within(support::QUIET).await {
        Ok(CspPayload::QueueSendComplete) => client.expect_silence().await,
        Err(support::ClientError::Timeout) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

async fn ack(client: &mut Client, m: &MessageWithMetadataBox) {
    client
        .send(&CspPayload::IncomingMessageAck(MessageAck {
            identity: m.sender,
            message_id: m.message_id,
        }))
        .await;
}

#[tokio::test]
async fn identities_and_creation_tokens_are_shared_by_the_nodes() {
    let nodes = two_nodes(&[]);
    // Step one on A, step two on B, and the reverse.
    let mut made = Vec::new();
    for (first, second) in [(nodes.a.http, nodes.b.http), (nodes.b.http, nodes.a.http)] {
        let key = ClientKey::new(SecretKey::generate(&mut rand::rngs::OsRng));
        let identity = create_identity_via(first, second, &key).await;
        made.push((identity, key));
    }
    // Each is found through both nodes (lookup, bulk lookup, and a login vouched by it).
    for (identity, key) in &made {
        let id = String::from_utf8_lossy(identity).into_owned();
        for node in [&nodes.a, &nodes.b] {
            let (status, body) =
                http_json(node.http, "GET", &format!("/identity/{id}"), None).await;
            assert_eq!(status, 200, "{body}");
            let (status, body) = http_json(
                node.http,
                "POST",
                "/identity/fetch_bulk",
                Some(serde_json::json!({ "identities": [id] })),
            )
            .await;
            assert_eq!(status, 200);
            assert_eq!(body["identities"].as_array().unwrap().len(), 1, "{body}");
            let account = Account {
                identity: *identity,
                key: key.clone(),
            };
            connect(node, &account, 1).await;
        }
    }
    // A token is single use across the group: redeeming it again on the other node fails.
    let key = ClientKey::new(SecretKey::generate(&mut rand::rngs::OsRng));
    let public = base64_key(&key);
    let (_, step1) = http_json(
        nodes.a.http,
        "POST",
        "/identity/create",
        Some(serde_json::json!({ "publicKey": public })),
    )
    .await;
    let token = step1["token"].as_str().unwrap().to_owned();
    let wrong = base64_bytes(&[0_u8; 32]);
    let (status, _) = http_json(
        nodes.b.http,
        "POST",
        "/identity/create",
        Some(serde_json::json!({ "publicKey": public, "token": token, "response": wrong })),
    )
    .await;
    assert_eq!(status, 403, "wrong response");
    let (status, body) = http_json(
        nodes.a.http,
        "POST",
        "/identity/create",
        Some(serde_json::json!({ "publicKey": public, "token": token, "response": wrong })),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"], "unknown, used or expired token",
        "burnt by the first try"
    );
}

fn base64_bytes(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_key(key: &ClientKey) -> String {
    base64_bytes(key.public_key().as_bytes())
}

#[tokio::test]
async fn cross_node_messages_arrive_live_in_order_and_acked_both_ways() {
    let nodes = two_nodes(NO_SWEEP);
    let x = Account::create(nodes.a.http).await;
    let y = Account::create(nodes.b.http).await;
    let mut xa = connect(&nodes.a, &x, 1).await;
    let mut yb = connect(&nodes.b, &y, 1).await;
    yb.send(&CspPayload::UnblockIncomingMessages).await;
    assert_eq!(yb.expect().await, CspPayload::QueueSendComplete);
    xa.send(&CspPayload::UnblockIncomingMessages).await;
    assert_eq!(xa.expect().await, CspPayload::QueueSendComplete);

    const N: u64 = 200;
    // X (node A) → Y (node B), pipelined.
    send_all(&mut xa, texts(&x, &y, 1..=N)).await;
    let receive = async {
        let mut ids = Vec::new();
        for _ in 0..N {
            let m = next_incoming(&mut yb).await;
            assert_eq!(open_text(&y, &x, &m), format!("text {}", m.message_id));
            ack(&mut yb, &m).await;
            ids.push(m.message_id);
        }
        ids
    };
    let (ids, ()) = tokio::join!(receive, expect_acks(&mut xa, &y, 1..=N));
    assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "all, in order, once");

    // Y (node B) → X (node A), one at a time: each arrives before the next is sent.
    for id in 1..=20 {
        let m = text_message(&y, &x, id, MessageFlags::NONE, &format!("text {id}"));
        send_all(&mut yb, [m]).await;
        expect_acks(&mut yb, &x, [id]).await;
        let got = next_incoming(&mut xa).await;
        assert_eq!(got.message_id, id);
        ack(&mut xa, &got).await;
    }
    // A don't-queue message crosses nodes too (relayed, never stored).
    let typing = text_message(&x, &y, 10_000, MessageFlags::DONT_QUEUE, "typing");
    send_all(&mut xa, [typing]).await;
    expect_acks(&mut xa, &y, [10_000]).await;
    let got = next_incoming(&mut yb).await;
    assert_eq!(
        (got.message_id, open_text(&y, &x, &got).as_str()),
        (10_000, "typing")
    );
    // Closed receiving sessions stop naming their node (no more hints for offline identities).
    drop((xa, yb));
    for account in [&x, &y] {
        let sql = format!(
            "SELECT COALESCE(node::TEXT, 'none') FROM receiving WHERE identity = decode('{}', 'hex')",
            hex::encode(account.identity)
        );
        let deadline = std::time::Instant::now() + support::PATIENCE;
        while pg::shared().psql(&nodes.db, &sql) != "none" {
            assert!(
                std::time::Instant::now() < deadline,
                "receiving row kept its node"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Everything was acked: nothing comes again on new sessions.
    for (node, account) in [(&nodes.a, &y), (&nodes.b, &x)] {
        let mut c = connect(node, account, 1).await;
        c.send(&CspPayload::UnblockIncomingMessages).await;
        assert_eq!(c.expect().await, CspPayload::QueueSendComplete);
    }
}

#[tokio::test]
async fn the_receiving_session_moves_to_the_other_node_mid_stream() {
    let nodes = two_nodes(NO_SWEEP);
    let (x, y, mut xa, mut yb) = sender_on_a_receiver_on_b(&nodes).await;

    const N: u64 = 300;
    const ACKED_ON_B: u64 = 100;
    send_all(&mut xa, texts(&x, &y, 1..=N)).await;
    let mut on_b = Vec::new();
    while on_b.len() < usize::try_from(ACKED_ON_B).unwrap() {
        let m = next_incoming(&mut yb).await;
        ack(&mut yb, &m).await;
        on_b.push(m.message_id);
    }
    assert_eq!(on_b, (1..=ACKED_ON_B).collect::<Vec<_>>());
    // Barrier: an outgoing message of Y on B is acked only after B's storage committed
    // everything Y's session handed it before, the removals of the acked 100 included.
    // An echo round trip: B's session has handled the 100 acks (handed their removals to its
    // storage, which need not have committed them). Then Y's other device unblocks on node A
    // at once, while X is still sending: node A waits for B's release. It does not ack yet.
    let mut in_flight_on_b = echoed(&mut yb).await;
    let mut ya = connect(&nodes.a, &y, 2).await;
    ya.send(&CspPayload::UnblockIncomingMessages).await;
    let receive = async {
        let mut ids = Vec::new();
        while ids.len() < usize::try_from(N - ACKED_ON_B).unwrap() {
            ids.push(next_incoming(&mut ya).await.message_id);
        }
        ids
    };
    let (ids, ()) = tokio::join!(receive, expect_acks(&mut xa, &y, 1..=N));
    let rest: Vec<u64> = (ACKED_ON_B + 1..=N).collect();
    assert_eq!(
        ids, rest,
        "the rest, in order, once; nothing acked on B again"
    );
    expect_silence_after_backlog(&mut ya).await;
    // B was demoted: it acks everything it still holds; those late acks must remove nothing.
    in_flight_on_b.extend(barrier(&mut yb, &nodes.b, &y, &x, 2).await);
    assert!(
        !in_flight_on_b.is_empty(),
        "B had messages in flight when it was demoted"
    );
    for id in &in_flight_on_b {
        yb.send(&CspPayload::IncomingMessageAck(MessageAck {
            identity: x.identity,
            message_id: *id,
        }))
        .await;
    }
    assert!(
        barrier(&mut yb, &nodes.b, &y, &x, 3).await.is_empty(),
        "B gets nothing new"
    );
    // A new session on A gets every unacked message again, exactly once, in order.
    drop(ya);
    let mut ya = connect(&nodes.a, &y, 2).await;
    ya.send(&CspPayload::UnblockIncomingMessages).await;
    let mut again = Vec::new();
    for _ in &rest {
        let m = next_incoming(&mut ya).await;
        ack(&mut ya, &m).await;
        again.push(m.message_id);
    }
    assert_eq!(
        again, rest,
        "late acks of the demoted session removed nothing"
    );
    expect_silence_after_backlog(&mut ya).await;
    // New messages go to A's session only.
    send_all(&mut xa, texts(&x, &y, N + 1..=N + 1)).await;
    expect_acks(&mut xa, &y, [N + 1]).await;
    assert_eq!(next_incoming(&mut ya).await.message_id, N + 1);
    assert!(
        barrier(&mut yb, &nodes.b, &y, &x, 4).await.is_empty(),
        "B gets nothing new"
    );
}

/// An echo round trip: the session has handled every frame sent before. Returns the ids of the
/// messages that arrived meanwhile (not acked).
async fn echoed(client: &mut Client) -> Vec<u64> {
    client
        .send(&CspPayload::EchoRequest(b"barrier".to_vec()))
        .await;
    let mut arrived = Vec::new();
    loop {
        match client.expect().await {
            CspPayload::EchoResponse(_) => return arrived,
            CspPayload::IncomingMessage(m) => arrived.push(m.message_id),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Waits until the node's storage committed everything `from`'s session handed it before (its
/// acks' removals included): sends a message and waits for its ack (collecting the ids of the
/// messages that arrive meanwhile, not acked), then logs `from` in once more on the node,
/// since a login's queue count is read on the storage thread that holds `from`'s queue after
/// everything sent to it before (the message went to the receiver's thread).
async fn barrier(
    client: &mut Client,
    node: &ServerProcess,
    from: &Account,
    to: &Account,
    id: u64,
) -> Vec<u64> {
    send_all(
        client,
        [text_message(from, to, id, MessageFlags::NONE, "barrier")],
    )
    .await;
    let mut arrived = Vec::new();
    loop {
        match client.expect().await {
            CspPayload::OutgoingMessageAck(a) if a.message_id == id => break,
            CspPayload::IncomingMessage(m) => arrived.push(m.message_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(connect(node, from, 0x0BA4_41E4).await);
    arrived
}

#[tokio::test]
async fn sigkill_of_the_receivers_node_loses_nothing_acked() {
    let mut nodes = two_nodes(NO_SWEEP);
    let (x, y, mut xa, mut yb) = sender_on_a_receiver_on_b(&nodes).await;

    const N: u64 = 1_000;
    const KILL_AFTER: usize = 200;
    send_all(&mut xa, texts(&x, &y, 1..=N)).await;
    let mut before = Vec::new();
    while before.len() < KILL_AFTER {
        let m = next_incoming(&mut yb).await;
        ack(&mut yb, &m).await;
        before.push(m.message_id);
    }
    nodes.b.kill();
    drop(yb);
    // X's node is alive: every message gets its ack.
    expect_acks(&mut xa, &y, 1..=N).await;
    // Y reconnects to the other node and gets every message it has not seen, in order.
    let mut ya = connect(&nodes.a, &y, 1).await;
    ya.send(&CspPayload::UnblockIncomingMessages).await;
    let mut after = Vec::new();
    let seen: BTreeSet<u64> = before.iter().copied().collect();
    while (1..=N).any(|id| !seen.contains(&id) && !after.contains(&id)) {
        let m = next_incoming(&mut ya).await;
        ack(&mut ya, &m).await;
        after.push(m.message_id);
    }
    assert!(
        after.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    expect_silence_after_backlog(&mut ya).await;
}

#[tokio::test]
async fn without_hints_the_sweep_alone_delivers_and_demotes() {
    let nodes = two_nodes(&["--cross-node-hints", "false", "--sweep-interval-ms", "300"]);
    let (x, y, mut xa, mut yb) = sender_on_a_receiver_on_b(&nodes).await;
    send_all(&mut xa, texts(&x, &y, 1..=50)).await;
    expect_acks(&mut xa, &y, 1..=50).await;
    for id in 1..=50 {
        let m = next_incoming(&mut yb).await;
        assert_eq!(m.message_id, id, "in order, once");
        ack(&mut yb, &m).await;
    }
    // B's storage has committed the removals; then Y moves to node A, and node B hears of
    // it only through its sweep.
    assert!(barrier(&mut yb, &nodes.b, &y, &x, 1).await.is_empty());
    let mut ya = connect(&nodes.a, &y, 2).await;
    ya.send(&CspPayload::UnblockIncomingMessages).await;
    assert_eq!(ya.expect().await, CspPayload::QueueSendComplete);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // A message stored by node B: B's old receiving session must not get it (it would, from
    // B's own storage thread, had the sweep not demoted it); A's session gets it.
    let mut xb = connect(&nodes.b, &x, 2).await;
    send_all(&mut xb, texts(&x, &y, 51..=51)).await;
    expect_acks(&mut xb, &y, [51]).await;
    assert_eq!(next_incoming(&mut ya).await.message_id, 51);
    yb.expect_silence().await;
}
