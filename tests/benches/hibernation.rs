//! Idle groups under `wrangler dev`, hibernating against always-on (`TANDEM_HIBERNATION=off`,
//! the design before hibernation), side by side in one run: workerd's memory with every group's
//! two devices connected and idle, how many objects the runtime dropped and constructed again,
//! and what waking costs the first reflect after the silence. Figures go to BENCHMARKS.md.
//!
//! `cargo bench -p tandem-tests --bench hibernation -- [--groups 1000] [--idle-secs 20]
//! [--runs 1]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::future::join_all;
use tandem_shared::proto::d2d::{envelope::Content, Envelope, OutgoingMessage};
use tandem_tests::harness::{random_device_id, use_release_chat_server, Device, Fixture, Identity};
use tandem_tests::reliability::{after_gc, rss_pair};

/// Groups whose reflects are timed one at a time.
const SAMPLE: usize = 50;

#[derive(Parser, Debug)]
struct Args {
    /// Device groups, two connected devices each.
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// Seconds every device stays silent (workerd drops an idle object 10 s after it last had
    /// anything pending; the group stores its acks after a 2 s tick).
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Runs of the pair (hibernating, always-on).
    #[arg(long, default_value_t = 1)]
    runs: usize,
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

/// What one mode measured.
#[derive(Debug, Default)]
struct Figures {
    /// workerd RSS (KiB) with the isolate started and nobody connected.
    rss_base: u64,
    /// With every device connected and each group having reflected once.
    rss_active: u64,
    /// After the silence.
    rss_idle: u64,
    /// After the silence and a forced full collection.
    rss_idle_gc: u64,
    /// V8 heap in use after that collection (bytes).
    heap_idle_gc: u64,
    /// Objects constructed during the silence and the reflects after it.
    constructed_on_wake: u64,
    /// Connections resumed from their snapshots.
    resumed: u64,
    /// First reflect after the silence, send to sibling receipt (µs), p50 and p95, one group at
    /// a time (the first `SAMPLE` groups).
    wake_p50_us: u64,
    wake_p95_us: u64,
    /// A reflect of a group that is awake (its second), for comparison (µs), p50.
    awake_p50_us: u64,
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
    let mut table = Vec::new();
    for run in 0..args.runs {
        for mode in ["on", "off"] {
            let figures = measure(&args, mode).await;
            println!("run {run} hibernation {mode}: {figures:?}");
            table.push((mode, figures));
        }
    }
    println!(
        "\n| hibernation | groups | workerd RSS, nobody connected | connected, active | idle {} s | idle, after GC | V8 heap after GC | objects constructed on waking | connections resumed | first reflect after the silence p50 / p95 | reflect, awake, p50 |",
        args.idle_secs
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (mode, f) in &table {
        println!(
            "| {mode} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} | {:.2} / {:.2} ms | {:.2} ms |",
            args.groups,
            mib(f.rss_base),
            mib(f.rss_active),
            mib(f.rss_idle),
            mib(f.rss_idle_gc),
            f.heap_idle_gc as f64 / 1_048_576.0,
            f.constructed_on_wake,
            f.resumed,
            f.wake_p50_us as f64 / 1000.0,
            f.wake_p95_us as f64 / 1000.0,
            f.awake_p50_us as f64 / 1000.0,
        );
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn measure(args: &Args, mode: &str) -> Figures {
    let fx = Fixture::with_wrangler(&[format!("TANDEM_HIBERNATION:{mode}")])
        .await
        .unwrap_or_else(|err| panic!("the fixture did not start: {err}"));
    // One registered identity gives the server group and key; the groups only need their own
    // keys (d2m only, no chat server connection), so the rest are made here.
    let template = fx.identity().await.unwrap();
    let identities: Vec<Identity> = (0..args.groups)
        .map(|_| {
            let client_key = tandem_shared::keys::ClientKey::new(
                tandem_shared::crypto::SecretKey::generate(&mut rand::rngs::OsRng),
            );
            let keys = tandem_shared::keys::DeviceGroupKey::from_client_key(client_key.secret())
                .derive_keys();
            Identity {
                client_key,
                keys,
                ..template.clone()
            }
        })
        .collect();
    let mut figures = Figures {
        rss_base: rss_pair(&fx).0,
        ..Figures::default()
    };

    let mut pairs = Vec::with_capacity(args.groups);
    for chunk in identities.chunks(50) {
        let connected = join_all(chunk.iter().map(|id| connect_pair(&fx, id))).await;
        pairs.extend(connected);
    }
    for chunk in pairs.chunks_mut(50) {
        join_all(chunk.iter_mut().map(|(a, b)| one_reflect(a, b, 1))).await;
    }
    // One group at a time, so that the figure is a reflect's, not the queueing of 50.
    let mut awake = Vec::new();
    for (a, b) in pairs.iter_mut().take(SAMPLE) {
        awake.push(one_reflect(a, b, 2).await);
    }
    figures.awake_p50_us = percentile(&mut awake, 50);
    figures.rss_active = rss_pair(&fx).0;
    let (constructed_before, resumed_before) = stats(&fx, &identities[0]).await;

    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    figures.rss_idle = rss_pair(&fx).0;
    for _ in 0..3 {
        // workerd's inspector answers only while the isolate runs something: with every object
        // hibernated, one request (a stats read, which wakes one group) lets it through.
        let (gc, _) = tokio::join!(after_gc(&fx), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stats(&fx, &identities[0]).await
        });
        if let Some(gc) = gc {
            figures.rss_idle_gc = gc.workerd_after_kib;
            figures.heap_idle_gc = gc.heap_after.used;
            break;
        }
    }
    let mut woken = Vec::new();
    for (a, b) in pairs.iter_mut().take(SAMPLE) {
        woken.push(one_reflect(a, b, 3).await);
    }
    for chunk in pairs.get_mut(SAMPLE..).unwrap_or_default().chunks_mut(50) {
        join_all(chunk.iter_mut().map(|(a, b)| one_reflect(a, b, 3))).await;
    }
    figures.wake_p50_us = percentile(&mut woken, 50);
    figures.wake_p95_us = percentile(&mut woken, 95);
    let (constructed_after, resumed_after) = stats(&fx, &identities[0]).await;
    figures.constructed_on_wake = constructed_after.saturating_sub(constructed_before);
    figures.resumed = resumed_after.saturating_sub(resumed_before);
    for (a, b) in pairs {
        a.disconnect().await;
        b.disconnect().await;
    }
    figures
}

async fn connect_pair(fx: &Fixture, id: &Identity) -> (Device, Device) {
    let url = id.mediator_url(&fx.ws_base()).unwrap();
    let (mut a, _) = Device::connect_online(&url, "a", id.device_config(random_device_id(), "a"))
        .await
        .unwrap();
    a.queue_dry().await.unwrap();
    let (mut b, _) = Device::connect_online(&url, "b", id.device_config(random_device_id(), "b"))
        .await
        .unwrap();
    b.queue_dry().await.unwrap();
    (a, b)
}

/// µs from a's reflect to b's receipt (b acks it).
async fn one_reflect(a: &mut Device, b: &mut Device, tag: u64) -> u64 {
    let envelope = Envelope {
        content: Some(Content::OutgoingMessage(OutgoingMessage {
            message_id: tag,
            body: vec![0x42; 64],
            ..Default::default()
        })),
        ..Default::default()
    };
    let started = Instant::now();
    let id = a.reflect(&envelope).await.unwrap();
    let got = b.receive_reflected(1, true).await.unwrap();
    let took = started.elapsed();
    assert_eq!(got.len(), 1);
    a.reflect_acked(id).await.unwrap();
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}

/// `(objectsConstructed, connectionsResumed)` of the isolate.
async fn stats(fx: &Fixture, id: &Identity) -> (u64, u64) {
    let json = fx.group_stats(id).await.unwrap().expect("wrangler dev");
    (
        json["objectsConstructed"].as_u64().unwrap(),
        json["connectionsResumed"].as_u64().unwrap(),
    )
}

fn percentile(values: &mut [u64], p: usize) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let index = (values.len().saturating_sub(1) * p) / 100;
    values[index]
}
