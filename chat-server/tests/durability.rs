//! Nothing acked is lost: SIGKILL the server process after acks and before delivery, restart it
//! on the same data directory, and every acked message is delivered.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;

use support::{drain_backlog, open_text, text_message, Account, Client, ServerProcess};
use tandem_shared::csp::{CspPayload, MessageAck, MessageFlags};

#[tokio::test]
async fn acked_messages_survive_sigkill_and_are_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start(dir.path(), &[]);
    let a = Account::create(first.http).await;
    let b = Account::create(first.http).await;
    let mut sender = Client::connect(first.csp, a.config(&first.public_key, 1))
        .await
        .unwrap();
    for id in 1..=50_u64 {
        let text = format!("message {id}");
        sender
            .send(&CspPayload::OutgoingMessage(text_message(
                &a,
                &b,
                id,
                MessageFlags::NONE,
                &text,
            )))
            .await;
    }
    for id in 1..=50_u64 {
        assert_eq!(
            sender.expect().await,
            CspPayload::OutgoingMessageAck(MessageAck {
                identity: b.identity,
                message_id: id
            })
        );
    }
    // Acked, not delivered (nobody of B is online): kill -9.
    first.kill();
    drop(sender);

    let second = ServerProcess::start(dir.path(), &[]);
    assert_eq!(second.public_key, first.public_key, "the key persists");
    second.wait_for_log(&["chat server started", "queued=50"]);
    let mut receiver = Client::connect(second.csp, b.config(&second.public_key, 1))
        .await
        .unwrap();
    let got = drain_backlog(&mut receiver).await;
    let ids: Vec<u64> = got.iter().map(|m| m.message_id).collect();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>(), "all of them, in order");
    for m in &got {
        assert_eq!(open_text(&b, &a, m), format!("message {}", m.message_id));
    }
}

#[tokio::test]
async fn sigkill_in_the_middle_of_a_burst_loses_nothing_that_was_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start(dir.path(), &[]);
    let a = Account::create(first.http).await;
    let b = Account::create(first.http).await;
    let mut sender = Client::connect(first.csp, a.config(&first.public_key, 1))
        .await
        .unwrap();
    const TOTAL: u64 = 2_000;
    const KILL_AFTER: usize = 300;
    let message = text_message(&a, &b, 0, MessageFlags::NONE, "burst");
    for id in 1..=TOTAL {
        let mut m = message.clone();
        m.message_id = id;
        sender
            .csp
            .send(&CspPayload::OutgoingMessage(m).encode().unwrap())
            .unwrap();
    }
    // Write the whole burst from another task while this one counts acks.
    let mut units = Vec::new();
    while let Some(unit) = sender.csp.poll_transmit() {
        units.extend(unit);
    }
    let (mut read_half, mut write_half) = sender.stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = write_half.write_all(&units).await;
        write_half
    });
    let mut acked = BTreeSet::new();
    let mut buf = vec![0_u8; 64 * 1024];
    while acked.len() < KILL_AFTER {
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(support::PATIENCE, read_half.read(&mut buf))
            .await
            .expect("acks in time")
            .unwrap();
        assert!(n > 0, "server closed early");
        sender.csp.receive(&buf[..n]).unwrap();
        while let Some(event) = sender.csp.poll_event() {
            if let tandem_shared::csp::ClientEvent::Payload(p) = event {
                match CspPayload::decode(
                    &p,
                    tandem_shared::csp::MessagePayloadVersion::WithMetadataBox,
                )
                .unwrap()
                {
                    CspPayload::OutgoingMessageAck(ack) => {
                        acked.insert(ack.message_id);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    first.kill();
    let _ = writer.await;

    let second = ServerProcess::start(dir.path(), &[]);
    let mut receiver = Client::connect(second.csp, b.config(&second.public_key, 1))
        .await
        .unwrap();
    let got = drain_backlog(&mut receiver).await;
    let ids: Vec<u64> = got.iter().map(|m| m.message_id).collect();
    let delivered: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(delivered.len(), ids.len(), "no duplicates");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
    let lost: Vec<&u64> = acked.difference(&delivered).collect();
    assert!(lost.is_empty(), "acked but lost: {lost:?}");
    assert!(acked.len() >= KILL_AFTER);
}
