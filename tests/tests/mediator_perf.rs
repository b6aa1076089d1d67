//! Quick throughput measurement of the mediator Worker under `wrangler dev` (docs/worker.md
//! "Measured"). Ignored by default; the benchmark (`tests/benches/mediator.rs`) is the official
//! figure. `TANDEM_PERF_ROUNDS=3 cargo test -p tandem-tests --test mediator_perf -- --ignored
//! --nocapture` prints one line per round and the medians.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};

use tandem_shared::device::DeviceConfig;
use tandem_shared::proto::common::CspE2eMessageType;
use tandem_shared::proto::d2d::{
    conversation_id, envelope::Content, ConversationId, Envelope, OutgoingMessage,
};
use tandem_shared::proto::d2m::DeviceSlotState;
use tandem_tests::harness::{http_request, random_device_id, Device, Fixture, HarnessError};

/// Queued entries drained by a device that comes online.
const DRAIN: u64 = 10_000;
/// Reflects flooded to three online siblings.
const FLOOD: u64 = 3_000;
/// One-way latency samples.
const LATENCY: usize = 200;

fn tagged(tag: u64) -> Envelope {
    Envelope {
        padding: Vec::new(),
        device_id: 0,
        protocol_version: 0,
        content: Some(Content::OutgoingMessage(OutgoingMessage {
            conversation: Some(ConversationId {
                id: Some(conversation_id::Id::Contact("ECHOECHO".to_owned())),
            }),
            message_id: tag,
            created_at: 1,
            r#type: CspE2eMessageType::Text.into(),
            body: vec![0; 4],
            ..Default::default()
        })),
    }
}

fn tags(count: u64, from: u64) -> Vec<Envelope> {
    (from..from + count).map(tagged).collect()
}

fn existing(mut config: DeviceConfig) -> DeviceConfig {
    config.expected_slot_state = DeviceSlotState::Existing;
    config
}

async fn online(url: &str, name: &str, config: DeviceConfig) -> Result<Device, HarnessError> {
    let (mut device, info) = Device::connect_online(url, name, config).await?;
    if info.reflection_queue_length == 0 {
        device.queue_dry().await?;
    }
    Ok(device)
}

/// One-way latency p50 through the bare relay object (`/bench-relay/…`, no storage, no
/// protocol), the lower bound the mediator is compared with.
async fn bare_relay_p50(fx: &Fixture, name: &str) -> Duration {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}/bench-relay/{name}", fx.ws_base());
    let (mut a, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .expect("relay a");
    let (mut b, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .expect("relay b");
    let mut samples = Vec::with_capacity(LATENCY);
    for i in 0..LATENCY + 20 {
        let started = Instant::now();
        a.send(Message::binary(vec![0_u8; 120]))
            .await
            .expect("send");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), b.next())
                .await
                .expect("relay timed out")
                .expect("relay closed")
                .expect("relay error");
            if matches!(msg, Message::Binary(_)) {
                break;
            }
        }
        if i >= 20 {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    samples[samples.len() / 2]
}

struct Round {
    fill_per_s: f64,
    drain: Duration,
    flood_per_s: f64,
    latency_p50: Duration,
    bare_p50: Duration,
}

async fn round(fx: &Fixture) -> Result<Round, HarnessError> {
    let id = fx.identity().await?;
    let url = id.mediator_url(&fx.ws_base())?;
    let d_id = random_device_id();
    let mut a = online(&url, "a", id.device_config(random_device_id(), "a")).await?;
    let d = online(&url, "d", id.device_config(d_id, "d")).await?;
    d.disconnect().await;

    // Fill: DRAIN reflects stored for one offline sibling, pipelined.
    let started = Instant::now();
    let ids = a.reflect_all(&tags(DRAIN, 0)).await?;
    a.reflect_acks(&ids).await?;
    let fill_per_s = DRAIN as f64 / started.elapsed().as_secs_f64();

    // Drain: connect, receive and ack all of them.
    let started = Instant::now();
    let (mut d, info) =
        Device::connect_online(&url, "d", existing(id.device_config(d_id, "d"))).await?;
    assert_eq!(u64::from(info.reflection_queue_length), DRAIN);
    d.receive_reflected(DRAIN as usize, true).await?;
    let drain = started.elapsed();
    d.queue_dry().await?;
    d.sync_barrier().await?;

    // Flood: 1 sender → 3 online siblings (d, b, c), each acking as it receives.
    let mut b = online(&url, "b", id.device_config(random_device_id(), "b")).await?;
    let mut c = online(&url, "c", id.device_config(random_device_id(), "c")).await?;
    let addr = fx.ws_base().trim_start_matches("ws://").to_owned();
    let path = format!("/_dev/group/{}", hex::encode(id.keys.dgpk_public.0));
    let before = sql_calls(&addr, &path).await;
    let started = Instant::now();
    let sender = async {
        let ids = a.reflect_all(&tags(FLOOD, DRAIN)).await?;
        a.reflect_acks(&ids).await?;
        Ok::<_, HarnessError>(())
    };
    let (sent, rb, rc, rd) = tokio::join!(
        sender,
        b.receive_reflected(FLOOD as usize, true),
        c.receive_reflected(FLOOD as usize, true),
        d.receive_reflected(FLOOD as usize, true)
    );
    sent?;
    rb?;
    rc?;
    rd?;
    let flood_per_s = FLOOD as f64 / started.elapsed().as_secs_f64();
    if let (Some(before), Some(after)) = (before, sql_calls(&addr, &path).await) {
        // Includes the stats request's own COUNT queries (4) and the siblings' last acks.
        eprintln!(
            "  flood: {:.2} SQL statements and {:.2} transactionSync per envelope",
            (after.0 - before.0) as f64 / FLOOD as f64,
            (after.1 - before.1) as f64 / FLOOD as f64
        );
    }

    // One-way latency to the first sibling (reflect sent → Reflected received), one at a time.
    let mut samples = Vec::with_capacity(LATENCY);
    for i in 0..LATENCY as u64 {
        let started = Instant::now();
        a.reflect(&tagged(DRAIN + FLOOD + i)).await?;
        b.receive_reflected(1, true).await?;
        samples.push(started.elapsed());
        c.receive_reflected(1, true).await?;
        d.receive_reflected(1, true).await?;
    }
    samples.sort();
    let latency_p50 = samples[samples.len() / 2];

    // Whether the object ever found a frame already waiting after handling one (docs/worker.md).
    if let Ok(stats) = http_request(&addr, "GET", &path, None, Duration::from_secs(10)).await {
        eprintln!("  group stats: {}", stats.body);
    }
    let bare_p50 = bare_relay_p50(fx, &hex::encode(id.identity)).await;
    Ok(Round {
        fill_per_s,
        drain,
        flood_per_s,
        latency_p50,
        bare_p50,
    })
}

/// `(sqlStatements, sqlTransactions)` from the group's development stats.
async fn sql_calls(addr: &str, path: &str) -> Option<(u64, u64)> {
    let stats = http_request(addr, "GET", path, None, Duration::from_secs(10))
        .await
        .ok()?;
    let body = &stats.body;
    let json = body.get(body.find('{')?..=body.rfind('}')?)?;
    let json: serde_json::Value = serde_json::from_str(json).ok()?;
    Some((
        json["sqlStatements"].as_u64()?,
        json["sqlTransactions"].as_u64()?,
    ))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, minutes long; run by hand (docs/worker.md)"]
async fn measure_mediator_under_wrangler_dev() {
    let rounds: usize = std::env::var("TANDEM_PERF_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let fx = Fixture::with_wrangler(&[]).await.expect("fixture");
    let mut all = Vec::new();
    for n in 0..rounds {
        let r = match round(&fx).await {
            Ok(r) => r,
            Err(err) => panic!("round {n}: {err}\n{}", fx.log_tails(40)),
        };
        eprintln!(
            "round {n}: fill {:.0}/s, drain {DRAIN} in {:.2?}, flood to 3 {:.0}/s, one-way p50 {:.2?} (bare relay {:.2?})",
            r.fill_per_s, r.drain, r.flood_per_s, r.latency_p50, r.bare_p50
        );
        all.push(r);
    }
    eprintln!(
        "median of {rounds}: fill {:.0}/s, drain {:.2} s, flood to 3 {:.0}/s, one-way p50 {:.2} ms (bare relay {:.2} ms)",
        median(all.iter().map(|r| r.fill_per_s).collect()),
        median(all.iter().map(|r| r.drain.as_secs_f64()).collect()),
        median(all.iter().map(|r| r.flood_per_s).collect()),
        median(
            all.iter()
                .map(|r| r.latency_p50.as_secs_f64() * 1000.0)
                .collect()
        ),
        median(
            all.iter()
                .map(|r| r.bare_p50.as_secs_f64() * 1000.0)
                .collect()
        ),
    );
}
