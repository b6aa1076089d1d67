//! Incoming latency when a device group is asleep (docs/protocol.md "CSP on demand"), under
//! `wrangler dev` with the real chat server: a leader with CSP on demand has closed its chat
//! server connection and the group's object has hibernated; another identity sends it a
//! message. Measured from the sender's write: the leader's `Wake` (chat server push → Worker
//! route → woken object), the message at the leader (a new CSP login through the proxy,
//! unblock, delivery) and its reflection at the sibling. Goal (issue 14): p50 ≤ 1 s locally.
//!
//! `cargo bench -p tandem-tests --bench wake -- [--groups 4] [--rounds 5] [--idle-secs 14]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rand::rngs::OsRng;
use rand::RngCore;
use tandem_shared::app::TANDEM_PUSH_TOKEN_TYPE;
use tandem_shared::crypto::random_nonce;
use tandem_shared::csp::{
    seal_message_with_nonce, CspPayload, E2eMessageType, MessageAck, MessageFlags, MessageToSeal,
    PushToken,
};
use tandem_shared::d2m::TANDEM_FEATURE_CSP_ON_DEMAND;
use tandem_shared::device::Event;
use tandem_shared::proto::d2d::{envelope::Content, Envelope, IncomingMessage};
use tandem_tests::harness::{random_device_id, use_release_chat_server, Device, Fixture, Identity};

#[derive(Parser, Debug)]
struct Args {
    /// Device groups (a leader with CSP on demand and a sibling each), and as many senders.
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// Rounds: every leader closes its chat server connection, every group sleeps, then each
    /// gets one message.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Silence before each round's messages (workerd drops an idle object 10 s after it last
    /// had anything pending).
    #[arg(long, default_value_t = 14)]
    idle_secs: u64,
    /// Ignored: `cargo bench` passes it.
    #[arg(long)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

struct Group {
    id: Identity,
    leader: Device,
    sibling: Device,
    sender_id: Identity,
    sender: Device,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn run(args: Args) {
    println!(
        "nproc {}, load {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    use_release_chat_server()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let fx = Fixture::with_wrangler(&[])
        .await
        .unwrap_or_else(|err| panic!("the fixture did not start: {err}"));
    let mut groups = Vec::new();
    for g in 0..args.groups {
        groups.push(group(&fx, g).await);
    }
    let (mut wake, mut leader, mut sibling) = (Vec::new(), Vec::new(), Vec::new());
    let mut hibernated = 0;
    for round in 0..args.rounds {
        for g in &mut groups {
            g.leader.close_csp().await.unwrap();
        }
        // The count is the isolate's (every object): read while every group is awake.
        let before = constructed(&fx, &groups[0].id).await;
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        for g in &mut groups {
            let (w, l, s) = one_message(g, round).await;
            wake.push(w);
            leader.push(l);
            sibling.push(s);
        }
        hibernated += constructed(&fx, &groups[0].id).await.saturating_sub(before);
    }
    let samples = wake.len();
    println!(
        "\n{samples} messages to sleeping groups (objects constructed again meanwhile: {hibernated}), {} groups, idle {} s:",
        args.groups, args.idle_secs
    );
    println!("| from the sender's write to | p50 | p90 | max |");
    println!("|---|---:|---:|---:|");
    for (what, values) in [
        ("`Wake` at the leader", &mut wake),
        (
            "the message at the leader (CSP login, unblock, delivery)",
            &mut leader,
        ),
        ("its reflection at the sibling", &mut sibling),
    ] {
        values.sort_unstable();
        let at = |p: usize| values[(values.len() * p / 100).min(values.len() - 1)];
        println!(
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(at(50)),
            ms(at(90)),
            ms(*values.last().unwrap())
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn constructed(fx: &Fixture, id: &Identity) -> u64 {
    let json = fx.group_stats(id).await.unwrap().expect("dev stats");
    json["objectsConstructed"].as_u64().unwrap()
}

/// A group whose leader speaks CSP on demand and registered its push URL, its sibling, and a
/// sender of another identity logged in at the chat server.
async fn group(fx: &Fixture, g: usize) -> Group {
    let id = fx.identity().await.unwrap();
    let url = id.mediator_url(&fx.ws_base()).unwrap();
    let mut config = id.csp_device_config(random_device_id(), random_device_id(), "leader");
    config.tandem_features = TANDEM_FEATURE_CSP_ON_DEMAND;
    let (mut leader, _) = Device::connect_online(&url, &format!("leader{g}"), config)
        .await
        .unwrap();
    leader.queue_dry().await.unwrap();
    let push = leader
        .wait_for("PushUrl", Duration::from_secs(10), |e| match e {
            Event::PushUrl(url) => Some(url.clone()),
            _ => None,
        })
        .await
        .unwrap();
    leader.csp_established().await.unwrap();
    leader.promoted().await.unwrap();
    leader
        .csp_send(&CspPayload::SetPushNotificationToken(
            PushToken::new(TANDEM_PUSH_TOKEN_TYPE, push.into_bytes()).unwrap(),
        ))
        .await
        .unwrap();
    let (mut sibling, _) = Device::connect_online(
        &url,
        &format!("sibling{g}"),
        id.device_config(random_device_id(), "sibling"),
    )
    .await
    .unwrap();
    sibling.queue_dry().await.unwrap();
    let sender_id = fx.identity().await.unwrap();
    let config = sender_id.csp_device_config(random_device_id(), random_device_id(), "sender");
    let (mut sender, _) = Device::connect_online(
        &sender_id.mediator_url(&fx.ws_base()).unwrap(),
        &format!("sender{g}"),
        config,
    )
    .await
    .unwrap();
    sender.queue_dry().await.unwrap();
    sender.csp_established().await.unwrap();
    Group {
        id,
        leader,
        sibling,
        sender_id,
        sender,
    }
}

/// One message to a sleeping group: (Wake, at the leader, at the sibling), from the write.
async fn one_message(g: &mut Group, round: usize) -> (Duration, Duration, Duration) {
    let message_id = OsRng.next_u64();
    let body = format!("round {round}");
    let sealed = seal_message_with_nonce(
        &g.sender_id.client_key,
        &MessageToSeal {
            sender: g.sender_id.identity,
            receiver: g.id.identity,
            receiver_public_key: g.id.client_key.public_key(),
            message_id,
            created_at_ms: now_ms(),
            flags: MessageFlags::SEND_PUSH,
            nickname: None,
            message_type: E2eMessageType::TEXT,
            body: body.as_bytes(),
        },
        &random_nonce(&mut OsRng),
        &mut OsRng,
    )
    .unwrap();
    let sent = Instant::now();
    g.sender
        .csp_send(&CspPayload::OutgoingMessage(sealed))
        .await
        .unwrap();
    g.leader
        .wait_for("Wake", Duration::from_secs(30), |e| {
            matches!(e, Event::Wake).then_some(())
        })
        .await
        .unwrap();
    let wake = sent.elapsed();
    g.leader.open_csp().await.unwrap();
    g.leader
        .csp_send(&CspPayload::UnblockIncomingMessages)
        .await
        .unwrap();
    let CspPayload::IncomingMessage(incoming) = g.leader.csp_payload("the message").await.unwrap()
    else {
        panic!("expected the message");
    };
    assert_eq!(incoming.message_id, message_id);
    let at_leader = sent.elapsed();
    let reflect = g
        .leader
        .reflect(&Envelope {
            content: Some(Content::IncomingMessage(IncomingMessage {
                sender_identity: g.sender_id.id_str(),
                message_id,
                body: body.into_bytes(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .unwrap();
    g.leader.reflect_acked(reflect).await.unwrap();
    g.sibling.receive_reflected(1, true).await.unwrap();
    let at_sibling = sent.elapsed();
    g.leader
        .csp_send(&CspPayload::IncomingMessageAck(MessageAck {
            identity: g.sender_id.identity,
            message_id,
        }))
        .await
        .unwrap();
    // The sender's message-ack (and the leader's queue-send-complete) end the round.
    g.sender.csp_payload("message-ack").await.unwrap();
    g.leader.csp_payload("queue-send-complete").await.unwrap();
    (wake, at_leader, at_sibling)
}
