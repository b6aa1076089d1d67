//! Messaging through the real server process over real TCP and SQLite: sessions per device,
//! the receiving (leader) session, acks, redelivery, flags, echo, timeouts, alerts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use support::{http_json, now_ms, open_text, text_message, Account, Client, ServerProcess};
use tandem_shared::crypto::PublicKey;
use tandem_shared::csp::{
    clock_warning, open_message, CspFeatures, CspPayload, MessageAck, MessageFlags,
    MessageWithMetadataBox,
};

struct World {
    server: ServerProcess,
    _dir: tempfile::TempDir,
    a: Account,
    b: Account,
}

async fn world(extra: &[&str]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), extra);
    let a = Account::create(server.http).await;
    let b = Account::create(server.http).await;
    World {
        server,
        _dir: dir,
        a,
        b,
    }
}

impl World {
    async fn connect(&self, account: &Account, device_id: u64) -> Client {
        Client::connect(
            self.server.csp,
            account.config(&self.server.public_key, device_id),
        )
        .await
        .unwrap()
    }
}

/// Sends a message and waits for its message-ack.
async fn send_acked(client: &mut Client, message: MessageWithMetadataBox) {
    let ack = MessageAck {
        identity: message.receiver,
        message_id: message.message_id,
    };
    client.send(&CspPayload::OutgoingMessage(message)).await;
    assert_eq!(client.expect().await, CspPayload::OutgoingMessageAck(ack));
}

async fn expect_incoming(client: &mut Client) -> MessageWithMetadataBox {
    match client.expect().await {
        CspPayload::IncomingMessage(m) => m,
        other => panic!("expected an incoming message, got {other:?}"),
    }
}

async fn ack_incoming(client: &mut Client, message: &MessageWithMetadataBox) {
    client
        .send(&CspPayload::IncomingMessageAck(MessageAck {
            identity: message.sender,
            message_id: message.message_id,
        }))
        .await;
}

/// Unblocks and returns the backlog delivered before queue-send-complete.
async fn unblock(client: &mut Client) -> Vec<MessageWithMetadataBox> {
    client.send(&CspPayload::UnblockIncomingMessages).await;
    let mut backlog = Vec::new();
    loop {
        match client.expect().await {
            CspPayload::IncomingMessage(m) => backlog.push(m),
            CspPayload::QueueSendComplete => return backlog,
            other => panic!("unexpected {other:?} during the backlog"),
        }
    }
}

#[tokio::test]
async fn only_the_unblocked_leader_receives_ack_removes_and_no_ack_redelivers_once() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    let mut leader = w.connect(&w.b, 1).await;
    let mut other = w.connect(&w.b, 2).await;

    // Queued before anyone of B unblocked: nothing is delivered yet.
    send_acked(
        &mut a,
        text_message(&w.a, &w.b, 1, MessageFlags::NONE, "hello B"),
    )
    .await;
    leader.expect_silence().await;
    other.expect_silence().await;

    let backlog = unblock(&mut leader).await;
    assert_eq!(backlog.len(), 1);
    assert_eq!(open_text(&w.b, &w.a, &backlog[0]), "hello B");
    ack_incoming(&mut leader, &backlog[0]).await;

    // Live delivery to the receiving session only.
    send_acked(
        &mut a,
        text_message(&w.a, &w.b, 2, MessageFlags::NONE, "second"),
    )
    .await;
    let live = expect_incoming(&mut leader).await;
    assert_eq!(open_text(&w.b, &w.a, &live), "second");
    // Not acked: reconnect the leader's device; it comes again, exactly once.
    drop(leader);
    let mut leader = w.connect(&w.b, 1).await;
    let backlog = unblock(&mut leader).await;
    assert_eq!(
        backlog.len(),
        1,
        "the acked message is gone, the unacked one is back"
    );
    assert_eq!(backlog[0].message_id, 2);
    ack_incoming(&mut leader, &backlog[0]).await;
    leader.expect_silence().await;

    // After the ack, a fresh receiving session finds the queue empty.
    drop(leader);
    let mut leader = w.connect(&w.b, 1).await;
    assert!(unblock(&mut leader).await.is_empty());

    // The non-leader session saw nothing at all.
    other.expect_silence().await;
}

#[tokio::test]
async fn messages_arrive_in_order_across_backlog_and_live_delivery() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    for id in 1..=300_u64 {
        a.send(&CspPayload::OutgoingMessage(text_message(
            &w.a,
            &w.b,
            id,
            MessageFlags::NONE,
            "x",
        )))
        .await;
    }
    for id in 1..=300_u64 {
        assert_eq!(
            a.expect().await,
            CspPayload::OutgoingMessageAck(MessageAck {
                identity: w.b.identity,
                message_id: id
            })
        );
    }
    let mut b = w.connect(&w.b, 7).await;
    b.send(&CspPayload::UnblockIncomingMessages).await;
    let mut next = 1_u64;
    let mut complete = false;
    // Acks open the in-flight window; new messages sent meanwhile follow the backlog.
    let mut sent_live = false;
    while next <= 310 {
        match b.expect().await {
            CspPayload::IncomingMessage(m) => {
                assert_eq!(m.message_id, next, "in order");
                next += 1;
                ack_incoming(&mut b, &m).await;
                if !sent_live {
                    sent_live = true;
                    for id in 301..=310_u64 {
                        a.send(&CspPayload::OutgoingMessage(text_message(
                            &w.a,
                            &w.b,
                            id,
                            MessageFlags::NONE,
                            "y",
                        )))
                        .await;
                    }
                }
            }
            CspPayload::QueueSendComplete => {
                assert!(!complete);
                assert!(next > 300, "queue-send-complete after the backlog ({next})");
                complete = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // When the live messages were stored before the backlog ran out, they belong to the backlog
    // and queue-send-complete follows the last of them.
    if !complete {
        assert_eq!(b.expect().await, CspPayload::QueueSendComplete);
    }
}

#[tokio::test]
async fn latest_unblock_takes_over_and_gets_the_unacked_messages() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    let mut first = w.connect(&w.b, 1).await;
    let mut second = w.connect(&w.b, 2).await;
    assert!(unblock(&mut first).await.is_empty());
    send_acked(
        &mut a,
        text_message(&w.a, &w.b, 10, MessageFlags::NONE, "one"),
    )
    .await;
    assert_eq!(expect_incoming(&mut first).await.message_id, 10);
    // The second device unblocks: it now receives, including what the first left unacked.
    let backlog = unblock(&mut second).await;
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0].message_id, 10);
    send_acked(
        &mut a,
        text_message(&w.a, &w.b, 11, MessageFlags::NONE, "two"),
    )
    .await;
    assert_eq!(expect_incoming(&mut second).await.message_id, 11);
    first.expect_silence().await;
}

#[tokio::test]
async fn same_device_id_replaces_the_older_session_with_a_close_error() {
    let w = world(&[]).await;
    let mut old = w.connect(&w.b, 5).await;
    let mut new = w.connect(&w.b, 5).await;
    let (can_reconnect, text) = old.expect_close().await.expect("a close-error");
    assert!(!can_reconnect);
    assert!(text.contains("same identity and device id"), "{text}");
    new.send(&CspPayload::EchoRequest(b"still here".to_vec()))
        .await;
    assert_eq!(
        new.expect().await,
        CspPayload::EchoResponse(b"still here".to_vec())
    );
}

#[tokio::test]
async fn duplicate_message_ids_are_acked_again_but_delivered_once() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    let message = text_message(&w.a, &w.b, 99, MessageFlags::NONE, "once");
    send_acked(&mut a, message.clone()).await;
    // The sender lost the ack and resends after reconnecting.
    drop(a);
    let mut a = w.connect(&w.a, 1).await;
    send_acked(&mut a, message.clone()).await;
    let mut b = w.connect(&w.b, 1).await;
    let backlog = unblock(&mut b).await;
    assert_eq!(backlog.len(), 1);
    ack_incoming(&mut b, &backlog[0]).await;
    // Even after the receiver acked it, a resend is acked and not delivered again.
    send_acked(&mut a, message).await;
    b.expect_silence().await;
}

#[tokio::test]
async fn dont_queue_reaches_only_an_online_receiver_and_is_never_stored() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    // Nobody of B is receiving: acked, dropped.
    send_acked(
        &mut a,
        text_message(&w.a, &w.b, 1, MessageFlags::DONT_QUEUE, "lost"),
    )
    .await;
    let mut b = w.connect(&w.b, 1).await;
    assert!(unblock(&mut b).await.is_empty());
    // Now B receives: delivered at once.
    send_acked(
        &mut a,
        text_message(&w.a, &w.b, 2, MessageFlags::DONT_QUEUE, "typing"),
    )
    .await;
    let m = expect_incoming(&mut b).await;
    assert_eq!(m.message_id, 2);
    // Not acked by B and yet not redelivered: it was never queued.
    drop(b);
    let mut b = w.connect(&w.b, 1).await;
    assert!(unblock(&mut b).await.is_empty());
}

#[tokio::test]
async fn dont_ack_gets_no_message_ack_and_leaves_the_queue_once_sent() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    a.send(&CspPayload::OutgoingMessage(text_message(
        &w.a,
        &w.b,
        1,
        MessageFlags::DONT_ACK,
        "no ack",
    )))
    .await;
    // The next normal message's ack is the first thing the sender hears.
    send_acked(
        &mut a,
        text_message(&w.a, &w.b, 2, MessageFlags::NONE, "ack"),
    )
    .await;
    let mut b = w.connect(&w.b, 1).await;
    let backlog = unblock(&mut b).await;
    assert_eq!(
        backlog.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // B acks neither; after reconnecting only the one that expects an ack comes back.
    drop(b);
    let mut b = w.connect(&w.b, 1).await;
    let backlog = unblock(&mut b).await;
    assert_eq!(
        backlog.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        vec![2]
    );
}

#[tokio::test]
async fn short_lived_messages_expire_and_get_the_server_time() {
    let w = world(&["--short-lived-ttl-s", "1"]).await;
    let mut a = w.connect(&w.a, 1).await;
    let mut old = text_message(&w.a, &w.b, 1, MessageFlags::SHORT_LIVED, "soon gone");
    old.created_at = 1_000;
    send_acked(&mut a, old).await;
    // Waiting is the point here: the message must outlive its 1 s lifetime.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut fresh = text_message(&w.a, &w.b, 2, MessageFlags::SHORT_LIVED, "in time");
    fresh.created_at = 1_000;
    send_acked(&mut a, fresh).await;
    let mut b = w.connect(&w.b, 1).await;
    let backlog = unblock(&mut b).await;
    assert_eq!(backlog.len(), 1, "the expired one is gone");
    assert_eq!(backlog[0].message_id, 2);
    let now_s = now_ms() / 1000;
    let created = u64::from(backlog[0].created_at);
    assert!(
        created + 30 >= now_s && created <= now_s + 1,
        "overwritten with server time"
    );
}

#[tokio::test]
async fn created_at_in_the_future_is_overwritten_and_within_the_skew_kept() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    let now_s = u32::try_from(now_ms() / 1000).unwrap();
    let cases = [(1, now_s + 3_600), (2, now_s + 5), (3, now_s - 3_600)];
    for (id, created_at) in cases {
        let mut m = text_message(&w.a, &w.b, id, MessageFlags::NONE, "t");
        m.created_at = created_at;
        send_acked(&mut a, m).await;
    }
    let mut b = w.connect(&w.b, 1).await;
    let backlog = unblock(&mut b).await;
    let got: Vec<u32> = backlog.iter().map(|m| m.created_at).collect();
    assert!(
        got[0] >= now_s && got[0] < now_s + 60,
        "future beyond the skew: server time"
    );
    assert_eq!(got[1], now_s + 5, "within the skew: kept");
    assert_eq!(got[2], now_s - 3_600, "past: kept");
    // The e2e content is untouched by the header change.
    assert_eq!(open_text(&w.b, &w.a, &backlog[0]), "t");
}

#[tokio::test]
async fn echo_alert_and_device_cookie_indication() {
    let w = world(&["--alert", "maintenance at noon"]).await;
    let mut config = w.a.config(&w.server.public_key, 1);
    config.extensions.device_cookie = Some(tandem_shared::csp::DeviceCookie([1; 16]));
    let mut a = Client::connect(w.server.csp, config.clone()).await.unwrap();
    assert_eq!(
        a.expect().await,
        CspPayload::Alert("maintenance at noon".into())
    );
    a.send(&CspPayload::EchoRequest(vec![1, 2, 3])).await;
    assert_eq!(a.expect().await, CspPayload::EchoResponse(vec![1, 2, 3]));
    // Another cookie: the change indication comes on this and every later login until cleared.
    config.extensions.device_cookie = Some(tandem_shared::csp::DeviceCookie([2; 16]));
    for device_id in [2, 3] {
        config.extensions.csp_device_id = Some(device_id);
        let mut c = Client::connect(w.server.csp, config.clone()).await.unwrap();
        assert_eq!(c.expect().await, CspPayload::DeviceCookieChangeIndication);
        assert_eq!(
            c.expect().await,
            CspPayload::Alert("maintenance at noon".into())
        );
    }
    let mut c = Client::connect(w.server.csp, config.clone()).await.unwrap();
    assert_eq!(c.expect().await, CspPayload::DeviceCookieChangeIndication);
    c.expect().await;
    c.send(&CspPayload::ClearDeviceCookieChangeIndication).await;
    c.expect_silence().await;
    // Cleared: the next login with the same cookie only gets the alert.
    config.extensions.csp_device_id = Some(4);
    let mut d = Client::connect(w.server.csp, config.clone()).await.unwrap();
    assert_eq!(
        d.expect().await,
        CspPayload::Alert("maintenance at noon".into())
    );
    d.expect_silence().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_the_client_may_set_its_timeout() {
    let w = world(&["--idle-timeout-s", "2"]).await;
    let mut idle = w.connect(&w.a, 1).await;
    assert_eq!(
        idle.expect_close().await,
        Some((true, "idle timeout".to_owned()))
    );
    // A client that asks for 30 s outlives the server's 2 s default (waiting is the point).
    let mut patient = w.connect(&w.a, 2).await;
    patient
        .send(&CspPayload::SetConnectionIdleTimeout(30))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    patient.send(&CspPayload::EchoRequest(vec![7])).await;
    assert_eq!(patient.expect().await, CspPayload::EchoResponse(vec![7]));
    // Out of range (30–600): refused with a close-error.
    let mut bad = w.connect(&w.a, 3).await;
    bad.send(&CspPayload::SetConnectionIdleTimeout(10)).await;
    let (can_reconnect, text) = bad.expect_close().await.unwrap();
    assert!(!can_reconnect);
    assert!(text.contains("idle timeout of 10 s"), "{text}");
}

#[tokio::test]
async fn protocol_violations_end_with_a_close_error() {
    let w = world(&[]).await;
    // A message whose sender is someone else.
    let mut b = w.connect(&w.b, 1).await;
    let forged = text_message(&w.a, &w.b, 1, MessageFlags::NONE, "forged");
    b.send(&CspPayload::OutgoingMessage(forged)).await;
    let (can_reconnect, text) = b.expect_close().await.unwrap();
    assert!(!can_reconnect);
    assert!(
        text.contains("sender is not the logged-in identity"),
        "{text}"
    );
    // A payload type only the server sends.
    let mut a = w.connect(&w.a, 1).await;
    a.send(&CspPayload::QueueSendComplete).await;
    let (_, text) = a.expect_close().await.unwrap();
    assert!(text.contains("only the server sends"), "{text}");
    // An unknown payload type.
    let mut a = w.connect(&w.a, 1).await;
    a.csp.send(&[0x77, 0, 0, 0]).unwrap();
    a.flush().await.unwrap();
    let (_, text) = a.expect_close().await.unwrap();
    assert!(text.contains("unknown payload type 0x77"), "{text}");
    // The server still serves: a message to an unknown identity is acked and dropped.
    let mut a = w.connect(&w.a, 1).await;
    let mut nobody = text_message(&w.a, &w.b, 5, MessageFlags::NONE, "?");
    nobody.receiver = *b"NOBODY00";
    send_acked(&mut a, nobody).await;
}

/// Spec §12: login extension 0x02 is a feature bit field. Every value logs in (the Desktop
/// snapshot's server refused anything but 0 and 1 with a close-error); bit 0 picks the message
/// struct, other bits do not matter for it.
#[tokio::test]
async fn every_feature_byte_logs_in_and_bit_0_picks_the_message_struct() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    for (device, bits, metadata) in [
        (1, 3_u8, true),
        (2, 2, false),
        (3, 9, true),
        (4, 0xfe, false),
    ] {
        let m = text_message(&w.a, &w.b, device, MessageFlags::NONE, "bits");
        send_acked(&mut a, m).await;
        let mut config = w.b.config(&w.server.public_key, device);
        config.extensions.features = Some(CspFeatures(bits));
        let mut b = Client::connect(w.server.csp, config).await.unwrap();
        b.send(&CspPayload::EchoRequest(vec![bits])).await;
        assert_eq!(b.expect().await, CspPayload::EchoResponse(vec![bits]));
        b.send(&CspPayload::UnblockIncomingMessages).await;
        let got = expect_incoming(&mut b).await;
        assert_eq!(got.message_id, device, "bits {bits:#04x}");
        assert_eq!(!got.metadata.is_empty(), metadata, "bits {bits:#04x}");
        ack_incoming(&mut b, &got).await;
        assert_eq!(b.expect().await, CspPayload::QueueSendComplete);
    }
}

/// The walk-through of a current Threema client (spec §12): it announces feature bits 3,
/// learns the server's time and its queue length from login-ack, has its echo requests answered
/// and answers the server's, receives its queue, looks the unknown sender up with
/// `fetch_bulk`, opens the message with the key it got, and acks.
#[tokio::test]
async fn a_current_client_logs_in_echoes_receives_looks_up_the_sender_and_acks() {
    let w = world(&["--idle-timeout-s", "2"]).await;
    let mut a = w.connect(&w.a, 1).await;
    for id in [1, 2] {
        send_acked(
            &mut a,
            text_message(&w.a, &w.b, id, MessageFlags::NONE, "hi"),
        )
        .await;
    }
    drop(a);

    let mut config = w.b.config(&w.server.public_key, 7);
    config.extensions.features = Some(CspFeatures(3));
    let before = now_ms();
    let mut b = Client::connect(w.server.csp, config.clone()).await.unwrap();
    let after = now_ms();
    assert_eq!(b.login_ack.queued_messages, 2);
    let server_time = b.login_ack.server_time_ms;
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&server_time),
        "server time {server_time} outside {before}..={after}"
    );
    assert_eq!(clock_warning(&b.login_ack, after), None);
    // Our echo request is answered.
    b.send(&CspPayload::EchoRequest(vec![1, 2, 3])).await;
    assert_eq!(b.expect().await, CspPayload::EchoResponse(vec![1, 2, 3]));
    // Silent for half the idle timeout (1 s of 2 s), we get an echo request; answering it keeps
    // the session alive past the idle timeout, three times over.
    for _ in 0..3 {
        match b.recv_within(Duration::from_millis(1800)).await.unwrap() {
            CspPayload::EchoRequest(data) => b.send(&CspPayload::EchoResponse(data)).await,
            other => panic!("expected an echo request, got {other:?}"),
        }
    }
    // The queue, then the sender looked up in bulk (B has never seen A).
    let backlog = unblock(&mut b).await;
    assert_eq!(backlog.len(), 2);
    let (status, answer) = http_json(
        w.server.http,
        "POST",
        "/identity/fetch_bulk",
        Some(serde_json::json!({
            "identities": [String::from_utf8_lossy(&backlog[0].sender), "NOBODY00"]
        })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let entries = answer["identities"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{answer}");
    assert_eq!(
        entries[0]["identity"],
        String::from_utf8_lossy(&w.a.identity).as_ref()
    );
    assert_eq!(entries[0]["type"], 0);
    assert_eq!(entries[0]["state"], 0);
    assert!(entries[0]["featureMask"].is_u64());
    let sender_key = PublicKey::from_slice(
        &B64.decode(entries[0]["publicKey"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    for m in &backlog {
        let opened = open_message(&w.b.key, &sender_key, m).unwrap();
        assert_eq!(opened.body, b"hi");
        ack_incoming(&mut b, m).await;
    }
    b.send(&CspPayload::EchoRequest(vec![9])).await;
    assert_eq!(b.expect().await, CspPayload::EchoResponse(vec![9]));
    drop(b);
    // Acked means gone: the next login-ack counts nothing.
    let b = Client::connect(w.server.csp, config).await.unwrap();
    assert_eq!(b.login_ack.queued_messages, 0);
}

/// A client without feature bit 1 (Desktop's snapshot sends `1`) gets no echo request: the
/// server stays silent and the idle timeout ends the session as before.
#[tokio::test]
async fn a_client_without_the_echo_bit_gets_no_echo_request() {
    let w = world(&["--idle-timeout-s", "2"]).await;
    let mut config = w.a.config(&w.server.public_key, 1);
    config.extensions.features = Some(CspFeatures::DESKTOP);
    let mut a = Client::connect(w.server.csp, config).await.unwrap();
    match a.recv_within(Duration::from_secs(10)).await.unwrap() {
        CspPayload::CloseError { message, .. } => assert_eq!(message, "idle timeout"),
        other => panic!("expected the idle timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn legacy_session_gets_messages_without_metadata() {
    let w = world(&[]).await;
    let mut a = w.connect(&w.a, 1).await;
    let m = text_message(&w.a, &w.b, 3, MessageFlags::NONE, "legacy");
    assert!(!m.metadata.is_empty());
    send_acked(&mut a, m).await;
    let mut config = w.b.config(&w.server.public_key, 1);
    config.extensions.features = None;
    let mut b = Client::connect(w.server.csp, config).await.unwrap();
    b.send(&CspPayload::UnblockIncomingMessages).await;
    // The client decodes as with-metadata; a legacy body reads as L = 0.
    let got = expect_incoming(&mut b).await;
    assert!(got.metadata.is_empty());
    assert_eq!(got.message_id, 3);
}
