//! Mediator benchmark (not a timed test; results go to BENCHMARKS.md, "## Mediator").
//!
//! One `wrangler dev` (the release Worker build, local workerd, through `scripts/worker-dev.sh`)
//! and one release chat server. Per run, each mediator measurement right next to its baseline:
//!
//! 1. **reflect**, 1 sender → 3 online siblings. Mediator: the sender reflects envelopes with at
//!    most `--window` un-`ReflectAck`ed; each sibling opens every `Reflected` and acks it. Relay
//!    (`/bench-relay/{room}` in the same workerd): frames of the same sizes, the sender keeping
//!    at most `--window` frames not yet received by the slowest receiver. Counted: envelopes
//!    received by all three siblings per second in the measuring window (after a warm-up), and
//!    the one-way latency (send → decoded at a sibling, one process clock). The mediator runs
//!    twice: with the `ReflectAck` window alone (the sender stays at most `--max-lag` ahead of
//!    the slowest sibling only so that no queue reaches the 10 000-entry limit), and with the
//!    relay's flow control added (at most `--window` not yet at the slowest sibling). Sibling 0
//!    times a `GetDevicesInfo` round trip every 100 ms: how long a sibling's own frames wait.
//!    Diagnostic floor, **relay with acks**: the relay again, its siblings answering every frame
//!    with a `ReflectedAck`-sized frame (sibling 0's forwarded to the sender, the others taken by
//!    the relay), i.e. the mediator's frame count per envelope (4 in, 4 out) with nothing else;
//!    at `--window` and at 1 in flight. The plain relay stays the baseline.
//! 2. **unloaded latency**: the same with one envelope in flight (the next is sent once the
//!    `ReflectAck` is in and all three siblings have it; relay: once all three have it), and
//!    *idle*: the same with at least `--idle-pace-ms` between two envelopes, so that the
//!    siblings' acks of the previous one are handled before the next arrives.
//! 3. **drain**: a device offline while `--drain` envelopes are reflected for it (filled through
//!    a sibling, not timed); then from its WebSocket open to the last `Reflected` received and
//!    acked and `ReflectionQueueDry`. Context: the relay pushing as many frames to one receiver.
//! 4. **CSP echo**: echo request → response, one at a time, alternating between a device logged
//!    in through the mediator's proxy and a direct TCP CSP connection to the chat server. Its
//!    floor (what a mediator doing nothing would take) is reported as the relay's one-way p50 at
//!    1 in flight plus the direct echo p50.
//!
//! CPU time (`/proc/<pid>/stat`) of this process (the client), of wrangler dev's two workerd
//! processes (its proxy and the runtime, with the runtime's busiest thread) and of wrangler's
//! node is read around every measuring window, and the disk flushes of the machine
//! (`/proc/diskstats`), so a missed target comes with what limited it.
//!
//! `cargo bench -p tandem-tests --bench mediator -- [--runs R] [--seconds S] [--warmup-seconds S]
//! [--latency-seconds S] [--window W] [--max-lag N] [--idle-pace-ms P] [--body-len B] [--drain N]
//! [--echoes N] [--skip-reflect] [--skip-latency] [--skip-drain] [--skip-echo] [--trace]`
//! (BENCHMARKS.md has the defaults and the recorded results).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations,
    unreachable_pub
)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::rngs::OsRng;
use tandem_shared::csp::{
    ClientEvent, CspClient, CspClientConfig, CspPayload, MessagePayloadVersion,
};
use tandem_shared::d2d::seal_envelope;
use tandem_shared::d2m::{D2mMessage, Reflect, ReflectFlags, ReflectedAck};
use tandem_shared::device::{DeviceConfig, DeviceSession, Event};
use tandem_shared::keys::DeviceGroupKeys;
use tandem_shared::proto::common::CspE2eMessageType;
use tandem_shared::proto::d2d::{
    conversation_id, envelope, ConversationId, Envelope, OutgoingMessage,
};
use tandem_shared::proto::d2m::DeviceSlotState;
use tandem_tests::harness::{
    http_request, random_device_id, use_release_chat_server, Device, Fixture, Identity, Mediator,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Anything that should happen but does not within this is a failure of the run.
const PATIENCE: Duration = Duration::from_secs(60);
/// Un-`ReflectAck`ed reflects while filling the drain queue (not timed).
const FILL_WINDOW: usize = 256;
/// Sibling 0's `GetDevicesInfo` probes are at least this far apart.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Relay frames are cut from this many sealed envelopes (realistic, random padding).
const RELAY_POOL: usize = 1024;
/// Where the relay frames carry sequence number and send time (inside the sealed bytes).
const STAMP_AT: usize = 16;
/// Linux `USER_HZ`: the unit of utime/stime in `/proc/<pid>/stat`.
const CLOCK_TICKS: f64 = 100.0;

#[derive(Debug, Clone)]
struct Args {
    runs: usize,
    seconds: f64,
    latency_seconds: f64,
    warmup_seconds: f64,
    window: usize,
    max_lag: u64,
    idle_pace_ms: u64,
    body_len: usize,
    drain: usize,
    echoes: usize,
    echo_warmup: usize,
    skip_reflect: bool,
    skip_latency: bool,
    skip_drain: bool,
    skip_echo: bool,
    trace: bool,
}

fn args() -> Args {
    let mut a = Args {
        runs: 3,
        seconds: 5.0,
        latency_seconds: 4.0,
        warmup_seconds: 1.0,
        window: 64,
        max_lag: 5_000,
        idle_pace_ms: 25,
        body_len: 64,
        drain: 10_000,
        echoes: 500,
        echo_warmup: 20,
        skip_reflect: false,
        skip_latency: false,
        skip_drain: false,
        skip_echo: false,
        trace: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value().parse().unwrap(),
            "--seconds" => a.seconds = value().parse().unwrap(),
            "--latency-seconds" => a.latency_seconds = value().parse().unwrap(),
            "--warmup-seconds" => a.warmup_seconds = value().parse().unwrap(),
            "--window" => a.window = value().parse().unwrap(),
            "--max-lag" => a.max_lag = value().parse().unwrap(),
            "--idle-pace-ms" => a.idle_pace_ms = value().parse().unwrap(),
            "--body-len" => a.body_len = value().parse().unwrap(),
            "--drain" => a.drain = value().parse().unwrap(),
            "--echoes" => a.echoes = value().parse().unwrap(),
            "--skip-reflect" => a.skip_reflect = true,
            "--skip-latency" => a.skip_latency = true,
            "--skip-drain" => a.skip_drain = true,
            "--skip-echo" => a.skip_echo = true,
            "--trace" => a.trace = true,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.runs > 0 && a.window > 0 && a.max_lag > 0 && a.drain > 0 && a.echoes > 0);
    assert!(
        a.body_len >= 8,
        "--body-len below 8 leaves no room for the send time"
    );
    a
}

// ---------------------------------------------------------------------------------------------
// Clock, CPU, disk

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap()
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

fn micros_since(stamp_ns: u64) -> u32 {
    u32::try_from(now_ns().saturating_sub(stamp_ns) / 1000).unwrap_or(u32::MAX)
}

/// `(comm, process group, CPU ticks)` of one process.
fn proc_stat(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state, ppid, pgrp, … utime (14th field of the line), stime (15th).
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, pgrp, utime + stime))
}

/// Every process of process group `pgid`: pid → (name, ticks). `wrangler dev` runs two workerd
/// processes: the proxy on the public port (named `workerd-proxy` here) that passes every
/// request and WebSocket frame on to the runtime serving the Worker and its objects (`workerd`).
fn group_ticks(pgid: u32, proxy_port: u16) -> HashMap<u32, (String, u64)> {
    let proxy_marker = format!("entry=127.0.0.1:{proxy_port}");
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((comm, pgrp, ticks)) = proc_stat(pid) {
            if pgrp == pgid {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let proxy = String::from_utf8_lossy(&cmdline).contains(&proxy_marker);
                let name = if comm == "workerd" && proxy {
                    "workerd-proxy".to_owned()
                } else {
                    comm
                };
                out.insert(pid, (name, ticks));
            }
        }
    }
    out
}

/// CPU ticks of every thread of the workerd runtime (not the proxy): a Durable Object runs on
/// one thread, so the busiest thread shows whether it is CPU-bound.
fn workerd_thread_ticks(wrangler: &HashMap<u32, (String, u64)>) -> HashMap<(u32, u32), u64> {
    let mut out = HashMap::new();
    for (pid, (comm, _)) in wrangler {
        if comm != "workerd" {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"));
            let ticks = stat.ok().and_then(|stat| {
                let fields: Vec<&str> = stat
                    .get(stat.rfind(')')? + 1..)?
                    .split_whitespace()
                    .collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            });
            if let Some(ticks) = ticks {
                out.insert((*pid, tid), ticks);
            }
        }
    }
    out
}

/// Flush requests completed and ms spent flushing, summed over the whole disks (not loop, zram
/// or partitions) of the machine.
fn disk_flushes() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 20)
        .collect();
    let names: Vec<&str> = rows.iter().map(|f| f[2]).collect();
    let mut flushes = 0;
    let mut ms = 0;
    for f in &rows {
        let name = f[2];
        let virtual_dev = ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p));
        let partition = names.iter().any(|n| *n != name && name.starts_with(n));
        if virtual_dev || partition {
            continue;
        }
        flushes += f[18].parse::<u64>().unwrap_or(0);
        ms += f[19].parse::<u64>().unwrap_or(0);
    }
    (flushes, ms)
}

/// Waits (up to 3 s) until the disks stop flushing: the objects of the last measurement have
/// committed what was still queued in them, and it does not bleed into the next one.
async fn settle() -> Duration {
    let started = Instant::now();
    let mut last = disk_flushes().0;
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = disk_flushes().0;
        if now.saturating_sub(last) <= 2 {
            break;
        }
        last = now;
    }
    started.elapsed()
}

/// `write(64 B)` + `fdatasync` on a growing file in `dir` (the file system holding the Durable
/// Objects' SQLite), `n` times: p50 and p90 in µs. One commit of an object costs at least one.
fn fsync_latency(dir: &std::path::Path, n: usize) -> (f64, f64) {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        file.write_all(&[0x5a; 64]).unwrap();
        file.sync_data().unwrap();
        samples.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.sort_unstable();
    let at = |p: f64| f64::from(samples[((samples.len() - 1) as f64 * p).round() as usize]);
    (at(0.5), at(0.9))
}

/// The server-side processes whose CPU is accounted: wrangler dev's process group (node,
/// workerd) and the chat server.
#[derive(Clone, Copy)]
struct Procs {
    wrangler_group: u32,
    /// wrangler dev's port: tells its proxy workerd from the runtime.
    proxy_port: u16,
    chat_server: u32,
}

#[derive(Clone)]
struct Snapshot {
    at: Instant,
    client: u64,
    wrangler: HashMap<u32, (String, u64)>,
    threads: HashMap<(u32, u32), u64>,
    chat: u64,
    disk: (u64, u64),
}

impl Snapshot {
    fn take(procs: Procs) -> Self {
        let wrangler = group_ticks(procs.wrangler_group, procs.proxy_port);
        Self {
            at: Instant::now(),
            client: proc_stat(std::process::id()).map_or(0, |s| s.2),
            threads: workerd_thread_ticks(&wrangler),
            wrangler,
            chat: proc_stat(procs.chat_server).map_or(0, |s| s.2),
            disk: disk_flushes(),
        }
    }
}

/// Resources used between two snapshots.
#[derive(Debug, Clone, Default)]
struct Usage {
    wall_s: f64,
    client_s: f64,
    /// CPU seconds per process name in wrangler's group (workerd, node, …).
    server_s: BTreeMap<String, f64>,
    /// CPU seconds of the busiest workerd thread.
    busiest_thread_s: f64,
    chat_s: f64,
    flushes: u64,
    flush_ms: u64,
}

impl Usage {
    fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let ticks = |t: u64| t as f64 / CLOCK_TICKS;
        let mut server_s = BTreeMap::new();
        for (pid, (comm, after)) in &b.wrangler {
            let before = a.wrangler.get(pid).map_or(0, |(_, t)| *t);
            *server_s.entry(comm.clone()).or_insert(0.0) += ticks(after.saturating_sub(before));
        }
        let busiest = b
            .threads
            .iter()
            .map(|(tid, after)| after.saturating_sub(a.threads.get(tid).copied().unwrap_or(0)))
            .max()
            .unwrap_or(0);
        Self {
            wall_s: b.at.duration_since(a.at).as_secs_f64(),
            client_s: ticks(b.client.saturating_sub(a.client)),
            server_s,
            busiest_thread_s: ticks(busiest),
            chat_s: ticks(b.chat.saturating_sub(a.chat)),
            flushes: b.disk.0.saturating_sub(a.disk.0),
            flush_ms: b.disk.1.saturating_sub(a.disk.1),
        }
    }

    /// The workerd runtime serving the Worker and its objects.
    fn workerd_s(&self) -> f64 {
        self.server_s.get("workerd").copied().unwrap_or(0.0)
    }

    /// wrangler dev's proxy workerd in front of it.
    fn proxy_s(&self) -> f64 {
        self.server_s.get("workerd-proxy").copied().unwrap_or(0.0)
    }

    /// Everything else in wrangler's group (node, esbuild, the watchdog shell).
    fn other_s(&self) -> f64 {
        self.server_s
            .iter()
            .filter(|(name, _)| !name.starts_with("workerd"))
            .map(|(_, s)| s)
            .sum()
    }

    fn pct(&self, cpu_s: f64) -> f64 {
        100.0 * cpu_s / self.wall_s.max(1e-9)
    }
}

// ---------------------------------------------------------------------------------------------
// A lean device driver: the session, the WebSocket halves, nothing else

async fn open_ws(url: &str) -> Ws {
    let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
    match tokio::time::timeout(PATIENCE, connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(err)) => panic!("connect {url}: {err}"),
        Err(_) => panic!("connect {url}: no answer within {PATIENCE:?}"),
    }
}

/// One device connection driven directly: no backlog, no waits with deadlines, events taken
/// straight from the session by the loops below.
struct Lean {
    name: String,
    session: DeviceSession,
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    bytes_out: u64,
    frames_out: u64,
}

impl Lean {
    /// Opens the WebSocket and starts the session (the handshake is the caller's).
    async fn connect(url: &str, name: &str, config: DeviceConfig) -> Self {
        let ws = open_ws(url).await;
        let (sink, stream) = ws.split();
        let session = DeviceSession::new(config, now_ms(), &mut OsRng).unwrap();
        let mut lean = Self {
            name: name.to_owned(),
            session,
            sink,
            stream,
            bytes_out: 0,
            frames_out: 0,
        };
        lean.flush().await;
        lean
    }

    /// Connects and waits for `ServerInfo` and `ReflectionQueueDry` (a fresh or empty slot).
    async fn online(url: &str, name: &str, config: DeviceConfig) -> Self {
        let mut lean = Self::connect(url, name, config).await;
        let mut info = false;
        loop {
            lean.read().await;
            lean.flush().await;
            while let Some(event) = lean.session.poll_event() {
                match event {
                    Event::ServerInfo(_) => info = true,
                    Event::QueueDry if info => return lean,
                    Event::Closed { code, .. } => {
                        panic!(
                            "{}: closed with {} in the handshake",
                            lean.name,
                            code.as_u16()
                        )
                    }
                    _ => {}
                }
            }
        }
    }

    /// Writes what the session has queued; whether there was anything.
    async fn flush(&mut self) -> bool {
        let mut wrote = false;
        while let Some(bytes) = self.session.poll_transmit() {
            self.bytes_out += bytes.len() as u64;
            self.frames_out += 1;
            if let Err(err) = self.sink.feed(Message::binary(bytes)).await {
                panic!("{}: write: {err}", self.name);
            }
            wrote = true;
        }
        if wrote {
            if let Err(err) = self.sink.flush().await {
                panic!("{}: flush: {err}", self.name);
            }
        }
        wrote
    }

    /// Waits for one message (within [`PATIENCE`]), feeds it and everything already arrived.
    async fn read(&mut self) {
        let message = match tokio::time::timeout(PATIENCE, self.stream.next()).await {
            Ok(message) => message,
            Err(_) => panic!("{}: nothing arrived within {PATIENCE:?}", self.name),
        };
        self.feed(message);
        self.feed_ready();
    }

    /// Feeds the messages that have already arrived, without waiting.
    fn feed_ready(&mut self) {
        while let Some(message) = self.stream.next().now_or_never() {
            self.feed(message);
        }
    }

    fn feed(&mut self, message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                // A terminal error closes the session: `Event::Closed` follows.
                let _ = self.session.on_binary(&bytes, now_ms(), &mut OsRng);
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                panic!("{}: the mediator closed with {code}", self.name);
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("{}: socket error: {err}", self.name),
            None => panic!("{}: the socket ended", self.name),
        }
    }

    /// Closes with 1000 and waits (briefly) for the mediator's close frame.
    async fn close(self) {
        close_ws(self.sink, self.stream).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Envelopes and relay frames

/// A sibling sync of a sent 1:1 text message: the realistic bulk of reflections. `message_id`
/// carries the sequence number, the first 8 body bytes the send time.
fn envelope_template(body_len: usize) -> Envelope {
    Envelope {
        content: Some(envelope::Content::OutgoingMessage(OutgoingMessage {
            conversation: Some(ConversationId {
                id: Some(conversation_id::Id::Contact("ECHOECHO".into())),
            }),
            message_id: 0,
            thread_message_id: None,
            created_at: 1_790_000_000_000,
            r#type: CspE2eMessageType::Text as i32,
            body: vec![b'a'; body_len],
            nonces: vec![vec![0x55; 24]],
        })),
        ..Default::default()
    }
}

fn stamp(envelope: &mut Envelope, seq: u64, at_ns: u64) {
    if let Some(envelope::Content::OutgoingMessage(m)) = &mut envelope.content {
        m.message_id = seq;
        m.body[..8].copy_from_slice(&at_ns.to_le_bytes());
    }
}

fn stamp_of(envelope: &Envelope) -> (u64, u64) {
    match &envelope.content {
        Some(envelope::Content::OutgoingMessage(m)) => (
            m.message_id,
            u64::from_le_bytes(m.body[..8].try_into().unwrap()),
        ),
        other => panic!("unexpected envelope content {other:?}"),
    }
}

/// Real `Reflect` containers (sealed under `dgrk`, random padding), so the relay carries the
/// mediator's frame sizes. The relay never looks inside: the stamp overwrites sealed bytes.
fn relay_pool(keys: &DeviceGroupKeys, body_len: usize) -> Vec<Vec<u8>> {
    let mut template = envelope_template(body_len);
    template.device_id = 1;
    (0..RELAY_POOL)
        .map(|i| {
            let sealed = seal_envelope(&keys.dgrk, template.clone(), &mut OsRng).unwrap();
            let id = u32::try_from(i + 1).unwrap();
            D2mMessage::Reflect(Reflect::new(id, ReflectFlags::NONE, sealed))
                .encode()
                .unwrap()
        })
        .collect()
}

fn relay_frame(pool: &[Vec<u8>], seq: u64) -> Vec<u8> {
    let mut frame = pool[(seq % pool.len() as u64) as usize].clone();
    frame[STAMP_AT..STAMP_AT + 8].copy_from_slice(&seq.to_le_bytes());
    frame[STAMP_AT + 8..STAMP_AT + 16].copy_from_slice(&now_ns().to_le_bytes());
    frame
}

fn relay_stamp_of(frame: &[u8]) -> (u64, u64) {
    (
        u64::from_le_bytes(frame[STAMP_AT..STAMP_AT + 8].try_into().unwrap()),
        u64::from_le_bytes(frame[STAMP_AT + 8..STAMP_AT + 16].try_into().unwrap()),
    )
}

// ---------------------------------------------------------------------------------------------
// Reflect: 1 sender → 3 siblings

const SIBLINGS: usize = 3;

/// How the sender paces itself.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Mediator: reflects awaiting their `ReflectAck` (the relay has no acks).
    window: usize,
    /// Envelopes sent and not yet received by the slowest sibling.
    lag_cap: u64,
    /// At least this long between two sends (zero: as fast as the limits allow).
    pace: Duration,
}

impl Shape {
    /// The flow control: `window` un-`ReflectAck`ed, `lag_cap` only as a safety limit.
    const fn acks(window: usize, lag_cap: u64) -> Self {
        Self {
            window,
            lag_cap,
            pace: Duration::ZERO,
        }
    }

    /// The relay's flow control: at most `window` not yet at the slowest sibling.
    const fn end_to_end(window: usize) -> Self {
        Self {
            window,
            lag_cap: window as u64,
            pace: Duration::ZERO,
        }
    }

    /// One envelope in flight, the next at least `pace` after the previous one.
    const fn paced(pace: Duration) -> Self {
        Self {
            window: 1,
            lag_cap: 1,
            pace,
        }
    }
}

/// What the tasks of one reflect measurement share.
struct Flow {
    measuring: AtomicBool,
    stop: watch::Sender<bool>,
    /// Envelopes each receiver has received so far (in order, so also the next sequence number).
    received: Vec<AtomicU64>,
    /// A receiver made progress (the sender may be waiting for the slowest).
    progress: Notify,
    /// Sent by the sender, and (mediator) `ReflectAck`ed: for `--trace`.
    sent: AtomicU64,
    acked: AtomicU64,
}

impl Flow {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            measuring: AtomicBool::new(false),
            stop: watch::channel(false).0,
            received: (0..SIBLINGS).map(|_| AtomicU64::new(0)).collect(),
            progress: Notify::new(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        })
    }

    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    fn counts(&self) -> Vec<u64> {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .collect()
    }

    fn record(&self, index: usize, count: u64) {
        self.received[index].store(count, Ordering::Release);
        self.progress.notify_one();
    }
}

/// The sender's side of a reflect measurement.
#[derive(Debug, Default)]
struct SenderStats {
    /// Largest `sent − received by the slowest sibling` seen.
    max_lag: u64,
    /// Mean size of the frames the sender wrote.
    frame_mean: f64,
    /// Mediator: time in the measuring window the sender had `ReflectAck` window left but was
    /// held by the lag limit.
    held_s: f64,
}

/// One reflect measurement.
#[derive(Debug, Clone, Default)]
struct ReflectResult {
    /// Envelopes received by all three siblings per second.
    rate: f64,
    /// Slowest and fastest sibling, envelopes per second.
    sibling_min: f64,
    sibling_max: f64,
    /// Mediator: `ReflectAck`s per second the sender got (envelopes stored).
    acked_rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Mediator: sibling 0's `GetDevicesInfo` round trips, median and longest.
    probe_p50_us: f64,
    probe_max_us: f64,
    usage: Usage,
    max_lag: u64,
    frame_mean: f64,
    /// Mediator: share of the window the sender was held by the lag limit, %.
    held_pct: f64,
}

impl ReflectResult {
    /// Per envelope received by all three; NaN when (almost) none were.
    fn per_envelope_us(&self, cpu_s: f64) -> f64 {
        self.per_envelope(cpu_s * 1e6)
    }

    fn per_envelope(&self, total: f64) -> f64 {
        let envelopes = self.rate * self.usage.wall_s;
        if envelopes < 10.0 {
            f64::NAN
        } else {
            total / envelopes
        }
    }

    fn line(&self, name: &str) -> String {
        let u = &self.usage;
        // Only the mediator stores and answers round trips.
        let mediator = if self.acked_rate > 0.0 || !self.probe_p50_us.is_nan() {
            format!(
                "; stored {:.0}/s; sibling round trip p50 {} max {}; sender held by the lag limit {:.0} %",
                self.acked_rate,
                fmt_us(self.probe_p50_us),
                fmt_us(self.probe_max_us),
                self.held_pct
            )
        } else {
            String::new()
        };
        format!(
            "  {name:<16} {:>8.0} env/s (siblings {:.0}–{:.0}{mediator})   p50 {:>9}   p99 {:>9}   \
             client {:>5.1} µs/env ({:>3.0} %)   workerd {:>6.1} µs/env ({:>3.0} %, busiest thread {:>3.0} %)   \
             proxy {:>3.0} %   node {:>3.0} %   disk flushes {:>6.0}/s ({:.2}/env, {:.0} ms/s)   max lag {}   frame {:.0} B",
            self.rate,
            self.sibling_min,
            self.sibling_max,
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            self.per_envelope_us(u.client_s),
            u.pct(u.client_s),
            self.per_envelope_us(u.workerd_s()),
            u.pct(u.workerd_s()),
            u.pct(u.busiest_thread_s),
            u.pct(u.proxy_s()),
            u.pct(u.other_s()),
            u.flushes as f64 / u.wall_s,
            self.per_envelope(u.flushes as f64),
            u.flush_ms as f64 / u.wall_s,
            self.max_lag,
            self.frame_mean,
        )
    }
}

/// Sleeps `seconds`; with `--trace`, prints the flow's progress every 250 ms meanwhile.
async fn watch_flow(flow: &Flow, seconds: f64, trace: bool) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    if !trace {
        tokio::time::sleep_until(until.into()).await;
        return;
    }
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250).min(until - Instant::now())).await;
        eprintln!(
            "    trace {:>7.3} s: sent {} acked {} received {:?}",
            base().elapsed().as_secs_f64(),
            flow.sent.load(Ordering::Relaxed),
            flow.acked.load(Ordering::Relaxed),
            flow.counts()
        );
    }
}

/// Counts at both ends of a measuring window, and what it used.
struct Window {
    received_before: Vec<u64>,
    received_after: Vec<u64>,
    /// `ReflectAck`s the mediator sender got in the window (0 for the relay).
    acked: u64,
    usage: Usage,
}

/// Warm-up, measuring window, stop; the counts and resources of the window.
async fn measure(flow: &Flow, args: &Args, seconds: f64, procs: Procs) -> Window {
    watch_flow(flow, args.warmup_seconds, args.trace).await;
    let before_counts = flow.counts();
    let acked_before = flow.acked.load(Ordering::Acquire);
    let before = Snapshot::take(procs);
    flow.measuring.store(true, Ordering::SeqCst);
    watch_flow(flow, seconds, args.trace).await;
    flow.measuring.store(false, Ordering::SeqCst);
    let received_after = flow.counts();
    let acked_after = flow.acked.load(Ordering::Acquire);
    let after = Snapshot::take(procs);
    flow.stop.send_replace(true);
    Window {
        received_before: before_counts,
        received_after,
        acked: acked_after - acked_before,
        usage: Usage::between(&before, &after),
    }
}

fn reflect_result(measured: &Window, latencies: Vec<u32>, sender: &SenderStats) -> ReflectResult {
    let usage = measured.usage.clone();
    let (before, after) = (&measured.received_before, &measured.received_after);
    let all = |counts: &[u64]| counts.iter().copied().min().unwrap_or(0);
    let per_sibling: Vec<f64> = before
        .iter()
        .zip(after)
        .map(|(b, a)| (a - b) as f64 / usage.wall_s)
        .collect();
    let (p50_us, p99_us) = percentiles(latencies);
    ReflectResult {
        rate: (all(after) - all(before)) as f64 / usage.wall_s,
        sibling_min: per_sibling.iter().copied().fold(f64::INFINITY, f64::min),
        sibling_max: per_sibling.iter().copied().fold(0.0, f64::max),
        acked_rate: measured.acked as f64 / usage.wall_s,
        p50_us,
        p99_us,
        probe_p50_us: f64::NAN,
        probe_max_us: f64::NAN,
        usage,
        max_lag: sender.max_lag,
        frame_mean: sender.frame_mean,
        held_pct: measured.usage.pct(sender.held_s),
    }
}

async fn mediator_reflect(
    fx: &Fixture,
    args: &Args,
    shape: Shape,
    seconds: f64,
    procs: Procs,
) -> ReflectResult {
    let id = fx.identity().await.unwrap();
    let url = id.mediator_url(&fx.ws_base()).unwrap();
    let mut siblings = Vec::new();
    for i in 0..SIBLINGS {
        let name = format!("sibling-{i}");
        let config = id.device_config(random_device_id(), &name);
        siblings.push(Lean::online(&url, &name, config).await);
    }
    let sender = Lean::online(
        &url,
        "sender",
        id.device_config(random_device_id(), "sender"),
    )
    .await;
    let flow = Flow::new();
    let receivers: Vec<_> = siblings
        .into_iter()
        .enumerate()
        .map(|(i, dev)| tokio::spawn(mediator_sibling(dev, Arc::clone(&flow), i)))
        .collect();
    let template = envelope_template(args.body_len);
    let sending = tokio::spawn(mediator_sender(sender, Arc::clone(&flow), shape, template));
    let measured = measure(&flow, args, seconds, procs).await;
    let stats = sending.await.unwrap();
    let mut latencies = Vec::new();
    let mut probes = Vec::new();
    for r in receivers {
        let seen = r.await.unwrap();
        latencies.extend(seen.latencies);
        probes.extend(seen.probes);
    }
    let mut result = reflect_result(&measured, latencies, &stats);
    (result.probe_p50_us, result.probe_max_us) = percentile_and_max(probes);
    result
}

async fn mediator_sender(
    mut dev: Lean,
    flow: Arc<Flow>,
    shape: Shape,
    mut template: Envelope,
) -> SenderStats {
    let mut stop = flow.stop.subscribe();
    let mut stats = SenderStats::default();
    let mut seq = 0_u64;
    let mut unacked = 0_usize;
    let (bytes_before, frames_before) = (dev.bytes_out, dev.frames_out);
    let mut next_at = Instant::now();
    loop {
        let mut held_by_lag = false;
        let mut paced = false;
        while unacked < shape.window {
            if seq - flow.slowest() >= shape.lag_cap {
                held_by_lag = true;
                break;
            }
            if !shape.pace.is_zero() {
                if Instant::now() < next_at {
                    paced = true;
                    break;
                }
                next_at = Instant::now() + shape.pace;
            }
            stamp(&mut template, seq, now_ns());
            dev.session.reflect(&template, false, &mut OsRng).unwrap();
            seq += 1;
            unacked += 1;
        }
        flow.sent.store(seq, Ordering::Relaxed);
        stats.max_lag = stats.max_lag.max(seq - flow.slowest());
        dev.flush().await;
        let waiting = Instant::now();
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = dev.stream.next() => {
                dev.feed(message);
                dev.feed_ready();
            }
            () = flow.progress.notified(), if held_by_lag => {}
            () = tokio::time::sleep_until(next_at.into()), if paced => {}
        }
        if held_by_lag && flow.measuring.load(Ordering::Relaxed) {
            stats.held_s += waiting.elapsed().as_secs_f64();
        }
        while let Some(event) = dev.session.poll_event() {
            match event {
                Event::ReflectAcked { .. } => {
                    unacked -= 1;
                    flow.acked.fetch_add(1, Ordering::Relaxed);
                }
                Event::Closed { code, .. } => panic!("sender: closed with {}", code.as_u16()),
                _ => {}
            }
        }
    }
    stats.frame_mean =
        (dev.bytes_out - bytes_before) as f64 / (dev.frames_out - frames_before).max(1) as f64;
    dev.close().await;
    stats
}

/// What a sibling saw: one-way latencies, and (sibling 0) its `GetDevicesInfo` round trips.
struct SiblingSeen {
    latencies: Vec<u32>,
    probes: Vec<u32>,
}

/// Receives, checks the order of and acks every `Reflected`. Sibling 0 also times a
/// `GetDevicesInfo` round trip every [`PROBE_EVERY`] while measuring: how long this sibling's
/// own frames wait in the mediator.
async fn mediator_sibling(mut dev: Lean, flow: Arc<Flow>, index: usize) -> SiblingSeen {
    let mut stop = flow.stop.subscribe();
    let mut count = 0_u64;
    let mut latencies = Vec::new();
    let mut probes = Vec::new();
    let mut probe: Option<Instant> = None;
    let mut last_probe = Instant::now();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = dev.stream.next() => {
                dev.feed(message);
                dev.feed_ready();
            }
            _ = tick.tick(), if index == 0 => {}
        }
        let measuring = flow.measuring.load(Ordering::Relaxed);
        while let Some(event) = dev.session.poll_event() {
            match event {
                Event::Reflected {
                    reflected_id,
                    ephemeral: false,
                    envelope,
                    ..
                } => {
                    let (seq, sent) = stamp_of(&envelope.0);
                    assert_eq!(seq, count, "{}: envelope out of order", dev.name);
                    count += 1;
                    if measuring {
                        latencies.push(micros_since(sent));
                    }
                    dev.session.ack_reflected(reflected_id).unwrap();
                }
                Event::Closed { code, .. } => {
                    panic!("{}: closed with {}", dev.name, code.as_u16())
                }
                Event::DroppedReflected { reason, .. } => {
                    panic!("{}: a Reflected did not open: {reason}", dev.name)
                }
                Event::DevicesInfo(_) => {
                    if let Some(sent) = probe.take() {
                        if measuring {
                            probes.push(
                                u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        if index == 0 && measuring && probe.is_none() && last_probe.elapsed() >= PROBE_EVERY {
            dev.session.get_devices_info().unwrap();
            last_probe = Instant::now();
            probe = Some(last_probe);
        }
        dev.flush().await;
        flow.record(index, count);
    }
    if let Some(sent) = probe {
        // Still unanswered at the end: it waited at least this long.
        probes.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    dev.close().await;
    SiblingSeen { latencies, probes }
}

/// Whether the relay's siblings answer like the mediator's do (the diagnostic "relay with
/// acks"): every sibling answers every frame with a `ReflectedAck`-sized frame; the relay
/// forwards sibling 0's to the sender (standing in for the one `ReflectAck`) and takes the
/// others without forwarding them. Per envelope that is the mediator's frame count: 4 in
/// (1 + 3 acks), 4 out (3 + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayAcks {
    None,
    LikeTheMediator,
}

/// What the relay measurements of one run share.
struct RelayRun<'a> {
    fx: &'a Fixture,
    args: &'a Args,
    pool: &'a Arc<Vec<Vec<u8>>>,
    procs: Procs,
}

impl RelayRun<'_> {
    /// The plain relay, then the relay with the mediator's acks, with the same shape: printed as
    /// `relay {label}` / `relay+acks {label}`, recorded as `relay{key}` / `relayack{key}`.
    async fn both(
        &self,
        shape: Shape,
        seconds: f64,
        room: &str,
        (label, key): (&str, &str),
        series: &mut Series,
    ) {
        for (acks, name, prefix, suffix) in [
            (RelayAcks::None, "relay", "relay", ""),
            (RelayAcks::LikeTheMediator, "relay+acks", "relayack", "a"),
        ] {
            let room = format!("{room}{suffix}");
            let r = relay_reflect(
                self.fx, self.args, self.pool, shape, seconds, &room, self.procs, acks,
            )
            .await;
            println!("{}", r.line(&format!("{name} {label}")));
            series.record_reflect(&format!("{prefix}{key}"), &r);
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the measurement's knobs, named at each call"
)]
async fn relay_reflect(
    fx: &Fixture,
    args: &Args,
    pool: &Arc<Vec<Vec<u8>>>,
    shape: Shape,
    seconds: f64,
    room: &str,
    procs: Procs,
    acks: RelayAcks,
) -> ReflectResult {
    let url = format!("{}/bench-relay/{room}", fx.ws_base());
    let mut receivers = Vec::new();
    for i in 0..SIBLINGS {
        // The relay routes by role (mediator-worker/src/bench_relay.rs): without one, a
        // socket's frames go to every other socket.
        let url = match (acks, i) {
            (RelayAcks::None, _) => url.clone(),
            (RelayAcks::LikeTheMediator, 0) => format!("{url}?role=acker"),
            (RelayAcks::LikeTheMediator, _) => format!("{url}?role=sibling"),
        };
        receivers.push(open_ws(&url).await);
    }
    let sender = open_ws(&url).await;
    let flow = Flow::new();
    let receiving: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(relay_receiver(ws, Arc::clone(&flow), i, acks)))
        .collect();
    let sending = tokio::spawn(relay_sender(
        sender,
        Arc::clone(&flow),
        shape,
        Arc::clone(pool),
    ));
    let measured = measure(&flow, args, seconds, procs).await;
    let stats = sending.await.unwrap();
    let mut latencies = Vec::new();
    for r in receiving {
        latencies.extend(r.await.unwrap());
    }
    reflect_result(&measured, latencies, &stats)
}

async fn relay_sender(
    ws: Ws,
    flow: Arc<Flow>,
    shape: Shape,
    pool: Arc<Vec<Vec<u8>>>,
) -> SenderStats {
    let (mut sink, mut stream) = ws.split();
    let mut stop = flow.stop.subscribe();
    let mut stats = SenderStats::default();
    let mut seq = 0_u64;
    let mut bytes = 0_u64;
    let mut next_at = Instant::now();
    // Frames coming back (the acks of the relay with acks): read and dropped, as the mediator's
    // sender reads its `ReflectAck`s.
    let read_back = |message: Option<Result<Message, _>>| match message {
        Some(Ok(Message::Close(_))) | None => panic!("relay sender: closed"),
        Some(Err(err)) => panic!("relay sender: {err}"),
        Some(Ok(_)) => {}
    };
    loop {
        let mut wrote = false;
        let mut paced = false;
        while seq - flow.slowest() < shape.lag_cap {
            if !shape.pace.is_zero() {
                if Instant::now() < next_at {
                    paced = true;
                    break;
                }
                next_at = Instant::now() + shape.pace;
            }
            let frame = relay_frame(&pool, seq);
            bytes += frame.len() as u64;
            sink.feed(Message::binary(frame)).await.unwrap();
            seq += 1;
            wrote = true;
        }
        flow.sent.store(seq, Ordering::Relaxed);
        stats.max_lag = stats.max_lag.max(seq - flow.slowest());
        if wrote {
            sink.flush().await.unwrap();
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = stream.next() => read_back(message),
            () = flow.progress.notified(), if !paced => {}
            () = tokio::time::sleep_until(next_at.into()), if paced => {}
        }
        while let Some(message) = stream.next().now_or_never() {
            read_back(message);
        }
    }
    stats.frame_mean = bytes as f64 / seq.max(1) as f64;
    close_ws(sink, stream).await;
    stats
}

async fn relay_receiver(ws: Ws, flow: Arc<Flow>, index: usize, acks: RelayAcks) -> Vec<u32> {
    let (mut sink, mut stream) = ws.split();
    let mut stop = flow.stop.subscribe();
    let mut count = 0_u64;
    let mut latencies = Vec::new();
    let mut to_ack: Vec<u32> = Vec::new();
    let mut on_message = |message: Option<Result<Message, _>>,
                          count: &mut u64,
                          to_ack: &mut Vec<u32>| match message {
        Some(Ok(Message::Binary(frame))) => {
            let (seq, sent) = relay_stamp_of(&frame);
            assert_eq!(seq, *count, "relay receiver {index}: frame out of order");
            *count += 1;
            if flow.measuring.load(Ordering::Relaxed) {
                latencies.push(micros_since(sent));
            }
            if acks != RelayAcks::None {
                #[allow(clippy::cast_possible_truncation, reason = "wraps like a reflected-id")]
                to_ack.push(seq as u32);
            }
        }
        Some(Ok(Message::Close(_))) | None => panic!("relay receiver {index}: closed"),
        Some(Ok(_)) => {}
        Some(Err(err)) => panic!("relay receiver {index}: {err}"),
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = stream.next() => on_message(message, &mut count, &mut to_ack),
        }
        while let Some(message) = stream.next().now_or_never() {
            on_message(message, &mut count, &mut to_ack);
        }
        // Acked like the mediator's siblings do: every frame of the batch just read, in one
        // flush.
        if !to_ack.is_empty() {
            for reflected_id in to_ack.drain(..) {
                let ack = D2mMessage::from(ReflectedAck { reflected_id })
                    .encode()
                    .unwrap();
                sink.feed(Message::binary(ack)).await.unwrap();
            }
            sink.flush().await.unwrap();
        }
        flow.record(index, count);
    }
    close_ws(sink, stream).await;
    latencies
}

/// Closes with 1000 and reads (and drops) what still arrives until the server's close frame,
/// within 5 s.
async fn close_ws(mut sink: SplitSink<Ws, Message>, mut stream: SplitStream<Ws>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        if sink.send(Message::Close(None)).await.is_ok() {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    return;
                }
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Drain

#[derive(Debug, Clone, Default)]
struct DrainResult {
    /// WebSocket open → last `Reflected` received and acked and `ReflectionQueueDry`.
    drain_s: f64,
    /// Until `ServerInfo` (the handshake).
    info_s: f64,
    /// Until the first `Reflected`.
    first_s: f64,
    /// Until a `GetDevicesInfo` round trip after the last ack came back: every ack handled.
    confirmed_s: f64,
    /// Filling the queue: reflects stored for the offline sibling, per second (not the target).
    fill_rate: f64,
    usage: Usage,
    /// The client's ack batches: `ReflectedAck`s written per flush.
    acks_per_write: f64,
}

async fn group_queued(fx: &Fixture, id: &Identity) -> Option<u64> {
    let Mediator::Wrangler(dev) = &fx.mediator else {
        return None;
    };
    let path = format!("/_dev/group/{}", hex::encode(id.group_id()));
    let response = http_request(&dev.http_addr(), "GET", &path, None, PATIENCE)
        .await
        .ok()?;
    response.json(&path).ok()?.get("queued")?.as_u64()
}

async fn mediator_drain(fx: &Fixture, n: usize, body_len: usize, procs: Procs) -> DrainResult {
    let id = fx.identity().await.unwrap();
    let url = id.mediator_url(&fx.ws_base()).unwrap();
    let target_id = random_device_id();
    // The target takes its slot and leaves.
    Lean::online(&url, "drain target", id.device_config(target_id, "target"))
        .await
        .close()
        .await;
    // A sibling fills the target's queue.
    let mut filler = Lean::online(
        &url,
        "filler",
        id.device_config(random_device_id(), "filler"),
    )
    .await;
    let mut template = envelope_template(body_len);
    let fill_started = Instant::now();
    let (mut sent, mut acked, mut unacked) = (0_usize, 0_usize, 0_usize);
    while acked < n {
        while unacked < FILL_WINDOW && sent < n {
            stamp(&mut template, sent as u64, now_ns());
            filler
                .session
                .reflect(&template, false, &mut OsRng)
                .unwrap();
            sent += 1;
            unacked += 1;
        }
        filler.flush().await;
        filler.read().await;
        while let Some(event) = filler.session.poll_event() {
            match event {
                Event::ReflectAcked { .. } => {
                    acked += 1;
                    unacked -= 1;
                }
                Event::Closed { code, .. } => panic!("filler: closed with {}", code.as_u16()),
                _ => {}
            }
        }
    }
    let fill_rate = n as f64 / fill_started.elapsed().as_secs_f64();
    filler.close().await;
    if let Some(queued) = group_queued(fx, &id).await {
        assert_eq!(queued, n as u64, "entries queued for the drain target");
    }

    // The timed part.
    let mut config = id.device_config(target_id, "target");
    config.expected_slot_state = DeviceSlotState::Existing;
    let before = Snapshot::take(procs);
    let ws = open_ws(&url).await;
    let opened = Instant::now();
    let (sink, stream) = ws.split();
    let mut dev = Lean {
        name: "drain target".into(),
        session: DeviceSession::new(config, now_ms(), &mut OsRng).unwrap(),
        sink,
        stream,
        bytes_out: 0,
        frames_out: 0,
    };
    dev.flush().await;
    let (mut info_s, mut first_s) = (None, None);
    let (mut received, mut dry, mut writes) = (0_usize, false, 0_u64);
    while received < n || !dry {
        dev.read().await;
        while let Some(event) = dev.session.poll_event() {
            match event {
                Event::ServerInfo(info) => {
                    info_s = Some(opened.elapsed().as_secs_f64());
                    assert_eq!(info.reflection_queue_length as usize, n, "queue length");
                }
                Event::Reflected {
                    reflected_id,
                    ephemeral: false,
                    envelope,
                    ..
                } => {
                    first_s.get_or_insert_with(|| opened.elapsed().as_secs_f64());
                    assert_eq!(stamp_of(&envelope.0).0, received as u64, "drain order");
                    received += 1;
                    dev.session.ack_reflected(reflected_id).unwrap();
                }
                Event::QueueDry => dry = true,
                Event::Closed { code, .. } => panic!("drain target: closed with {}", code.as_u16()),
                _ => {}
            }
        }
        if dev.flush().await {
            writes += 1;
        }
    }
    let drain_s = opened.elapsed().as_secs_f64();
    dev.session.get_devices_info().unwrap();
    dev.flush().await;
    'barrier: loop {
        dev.read().await;
        while let Some(event) = dev.session.poll_event() {
            if matches!(event, Event::DevicesInfo(_)) {
                break 'barrier;
            }
        }
    }
    let confirmed_s = opened.elapsed().as_secs_f64();
    let usage = Usage::between(&before, &Snapshot::take(procs));
    dev.close().await;
    if let Some(queued) = group_queued(fx, &id).await {
        assert_eq!(queued, 0, "entries left after the drain");
    }
    DrainResult {
        drain_s,
        info_s: info_s.unwrap_or(f64::NAN),
        first_s: first_s.unwrap_or(f64::NAN),
        confirmed_s,
        fill_rate,
        usage,
        acks_per_write: received as f64 / writes.max(1) as f64,
    }
}

/// The relay pushing `n` frames to one receiver: first write → last frame received.
async fn relay_push(fx: &Fixture, n: usize, pool: &Arc<Vec<Vec<u8>>>, room: &str) -> f64 {
    let url = format!("{}/bench-relay/{room}", fx.ws_base());
    let (receiver_sink, mut stream) = open_ws(&url).await.split();
    let (mut sink, sender_stream) = open_ws(&url).await.split();
    let receiving = tokio::spawn(async move {
        let mut count = 0;
        while count < n {
            match tokio::time::timeout(PATIENCE, stream.next()).await {
                Ok(Some(Ok(Message::Binary(_)))) => count += 1,
                Ok(Some(Ok(_))) => {}
                other => panic!("relay push receiver: {other:?} after {count} frames"),
            }
        }
        (Instant::now(), stream)
    });
    let started = Instant::now();
    for seq in 0..n as u64 {
        sink.feed(Message::binary(relay_frame(pool, seq)))
            .await
            .unwrap();
        if seq % 256 == 255 {
            sink.flush().await.unwrap();
        }
    }
    sink.flush().await.unwrap();
    let (done, stream) = receiving.await.unwrap();
    close_ws(sink, sender_stream).await;
    close_ws(receiver_sink, stream).await;
    done.duration_since(started).as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// CSP echo

/// `shared`'s CSP client over a plain TCP connection to the chat server.
struct DirectCsp {
    stream: TcpStream,
    csp: CspClient,
    buf: Vec<u8>,
}

impl DirectCsp {
    async fn connect(addr: SocketAddr, config: CspClientConfig) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let csp = CspClient::new(config, &mut OsRng).unwrap();
        let mut client = Self {
            stream,
            csp,
            buf: vec![0; 64 * 1024],
        };
        client.flush().await;
        while !matches!(client.next_event().await, ClientEvent::Established(_)) {}
        client
    }

    async fn flush(&mut self) {
        while let Some(unit) = self.csp.poll_transmit() {
            self.stream.write_all(&unit).await.unwrap();
        }
    }

    async fn next_event(&mut self) -> ClientEvent {
        loop {
            if let Some(event) = self.csp.poll_event() {
                self.flush().await;
                return event;
            }
            let n = match tokio::time::timeout(PATIENCE, self.stream.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                other => panic!("direct CSP: read {other:?}"),
            };
            self.csp.receive(&self.buf[..n]).unwrap();
            self.flush().await;
        }
    }

    async fn echo(&mut self, data: &[u8]) {
        let request = CspPayload::EchoRequest(data.to_vec()).encode().unwrap();
        self.csp.send(&request).unwrap();
        self.flush().await;
        loop {
            let ClientEvent::Payload(bytes) = self.next_event().await else {
                continue;
            };
            match CspPayload::decode(&bytes, MessagePayloadVersion::WithMetadataBox).unwrap() {
                CspPayload::EchoResponse(got) if got == data => return,
                other => panic!("direct CSP: expected the echo response, got {other:?}"),
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct EchoResult {
    mediator_p50_us: f64,
    mediator_p99_us: f64,
    direct_p50_us: f64,
    direct_p99_us: f64,
    /// workerd CPU per mediator echo, µs.
    workerd_us: f64,
    /// wrangler dev's proxy workerd per mediator echo, µs.
    proxy_us: f64,
    /// chat server CPU per echo (both paths), µs.
    chat_us: f64,
    client_us: f64,
}

async fn csp_echo(fx: &Fixture, args: &Args, procs: Procs) -> EchoResult {
    let via = fx.identity().await.unwrap();
    let direct_id = fx.identity().await.unwrap();
    let url = via.mediator_url(&fx.ws_base()).unwrap();
    let config = via.csp_device_config(random_device_id(), random_device_id(), "echo");
    let (mut device, _) = Device::connect_online(&url, "echo device", config)
        .await
        .unwrap();
    device.csp_established().await.unwrap();
    let mut direct =
        DirectCsp::connect(fx.chat.csp_addr, direct_id.csp_config(random_device_id())).await;
    let mut via_mediator = Vec::with_capacity(args.echoes);
    let mut direct_rtt = Vec::with_capacity(args.echoes);
    let mut before = None;
    for i in 0..args.echo_warmup + args.echoes {
        if i == args.echo_warmup {
            before = Some(Snapshot::take(procs));
        }
        let mut data = (i as u64).to_le_bytes().to_vec();
        data.extend_from_slice(&[0x42; 8]);
        // Alternate which path goes first.
        for path in [i % 2, 1 - i % 2] {
            let started = Instant::now();
            if path == 0 {
                device
                    .csp_send(&CspPayload::EchoRequest(data.clone()))
                    .await
                    .unwrap();
                let got = device.csp_payload("echo response").await.unwrap();
                assert_eq!(got, CspPayload::EchoResponse(data.clone()), "mediator echo");
            } else {
                direct.echo(&data).await;
            }
            let rtt = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            if i >= args.echo_warmup {
                if path == 0 {
                    via_mediator.push(rtt);
                } else {
                    direct_rtt.push(rtt);
                }
            }
        }
    }
    let usage = Usage::between(&before.unwrap(), &Snapshot::take(procs));
    device.disconnect().await;
    let n = args.echoes as f64;
    let (mediator_p50_us, mediator_p99_us) = percentiles(via_mediator);
    let (direct_p50_us, direct_p99_us) = percentiles(direct_rtt);
    EchoResult {
        mediator_p50_us,
        mediator_p99_us,
        direct_p50_us,
        direct_p99_us,
        workerd_us: usage.workerd_s() * 1e6 / n,
        proxy_us: usage.proxy_s() * 1e6 / n,
        chat_us: usage.chat_s * 1e6 / (2.0 * n),
        client_us: usage.client_s * 1e6 / (2.0 * n),
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report

fn percentile_and_max(mut values: Vec<u32>) -> (f64, f64) {
    values.sort_unstable();
    let max = values.last().map_or(f64::NAN, |&v| f64::from(v));
    (percentiles(values).0, max)
}

fn percentiles(mut values: Vec<u32>) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_unstable();
    let at = |p: f64| f64::from(values[((values.len() as f64 - 1.0) * p).round() as usize]);
    (at(0.50), at(0.99))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "—".into()
    } else if us.is_infinite() {
        "none arrived".into()
    } else if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

/// An integer with thin groups of three: `60 124`.
fn fmt_int(v: f64) -> String {
    if v.is_nan() {
        return "—".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Per-run values of every metric, by name, in the order first recorded.
#[derive(Default)]
struct Series(Vec<(String, Vec<f64>)>);

impl Series {
    fn push(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(value),
            None => self.0.push((name.to_owned(), vec![value])),
        }
    }

    fn values(&self, name: &str) -> Vec<f64> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn median(&self, name: &str) -> f64 {
        median(self.values(name))
    }

    fn has(&self, name: &str) -> bool {
        !self.values(name).is_empty()
    }

    fn record_reflect(&mut self, prefix: &str, r: &ReflectResult) {
        let u = &r.usage;
        let mut push = |key: &str, value: f64| self.push(&format!("{prefix}.{key}"), value);
        push("rate", r.rate);
        push("sibling_min", r.sibling_min);
        push("acked_rate", r.acked_rate);
        push("probe_p50", r.probe_p50_us);
        push("probe_max", r.probe_max_us);
        // No envelope in the window: an unbounded latency, not a missing value.
        let unbounded = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
        push("p50", unbounded(r.p50_us));
        push("p99", unbounded(r.p99_us));
        push("client_us", r.per_envelope_us(u.client_s));
        push("client_pct", u.pct(u.client_s));
        push("workerd_us", r.per_envelope_us(u.workerd_s()));
        push("workerd_pct", u.pct(u.workerd_s()));
        push("thread_pct", u.pct(u.busiest_thread_s));
        push("proxy_pct", u.pct(u.proxy_s()));
        push("node_pct", u.pct(u.other_s()));
        push("flushes_s", u.flushes as f64 / u.wall_s);
        push("flushes_env", r.per_envelope(u.flushes as f64));
        push("frame", r.frame_mean);
        push("max_lag", r.max_lag as f64);
        push("held_pct", r.held_pct);
    }
}

/// A per-envelope figure, or `—` when too few envelopes arrived to divide by.
fn per_env(value: f64, unit: &str, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}{unit}")
    } else {
        "—".into()
    }
}

/// `1.5 ×`, or `—` when one side is missing or unbounded.
fn fmt_ratio(ratio: f64, decimals: usize) -> String {
    if ratio.is_finite() {
        format!("{ratio:.decimals$} ×")
    } else {
        "—".into()
    }
}

fn verdict_at_least(ratio: f64, target: f64) -> String {
    if ratio.is_nan() {
        "—".into()
    } else if ratio >= target {
        "**met**".into()
    } else if ratio > 0.0 {
        format!("**missed**: {:.0} × short", target / ratio)
    } else {
        "**missed**: nothing arrived".into()
    }
}

fn verdict_at_most(ratio: f64, target: f64) -> String {
    if ratio.is_nan() {
        "—".into()
    } else if ratio.is_infinite() {
        "**missed**: nothing arrived".into()
    } else if ratio <= target {
        "**met**".into()
    } else {
        format!("**missed**: {:.1} × over", ratio / target)
    }
}

/// The mediator's two reflect flows that this series measured: key prefix, how the sender is
/// limited, median rate.
fn measured_flows(s: &Series, w: usize) -> Vec<(&'static str, String, f64)> {
    [
        ("med", format!("≤ {w} un-ReflectAcked")),
        ("medw", format!("≤ {w} not yet at the slowest sibling")),
    ]
    .into_iter()
    .filter(|(prefix, _)| s.has(&format!("{prefix}.rate")))
    .map(|(prefix, flow)| (prefix, flow, s.median(&format!("{prefix}.rate"))))
    .collect()
}

/// The medians table: mediator, baseline, ratio, target, verdict.
fn report(s: &Series, args: &Args) -> String {
    let mut out = String::new();
    let w = args.window;
    let _ = writeln!(out, "| | mediator | baseline | ratio | target | verdict |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
    let relay = s.median("relay.rate");
    for (prefix, flow, m) in measured_flows(s, w) {
        let _ = writeln!(
            out,
            "| reflect throughput, 1 → 3 siblings, envelopes/s received by all 3 ({flow}) | {} | {} (relay, ≤ {w} not yet at the slowest) | {} | ≥ 0.5 × | {} |",
            fmt_int(m),
            fmt_int(relay),
            fmt_ratio(m / relay, 3),
            verdict_at_least(m / relay, 0.5)
        );
        for key in ["p50", "p99"] {
            latency_row(
                &mut out,
                &format!("one-way latency {key}, same runs"),
                s.median(&format!("{prefix}.{key}")),
                s.median(&format!("relay.{key}")),
                "",
                (key == "p50").then_some(1.5),
            );
        }
    }
    if s.has("relayack.rate") {
        // Diagnostic floor: the relay with the mediator's frame count (4 in, 4 out).
        let floor = s.median("relayack.rate");
        for (_, flow, m) in measured_flows(s, w) {
            let _ = writeln!(
                out,
                "| diagnostic: reflect throughput ({flow}) against the relay with acks | {} | {} (relay with acks, ≤ {w} not yet at the slowest) | {} | — | — |",
                fmt_int(m),
                fmt_int(floor),
                fmt_ratio(m / floor, 3),
            );
        }
        if s.has("medw.p50") {
            latency_row(
                &mut out,
                &format!("diagnostic: one-way latency p50 (≤ {w} not yet at the slowest) against the relay with acks"),
                s.median("medw.p50"),
                s.median("relayack.p50"),
                " (relay with acks)",
                None,
            );
        }
    }
    if s.has("relayack1.rate") && s.has("med1.p50") {
        latency_row(
            &mut out,
            "diagnostic: one-way latency p50 (1 in flight) against the relay with acks",
            s.median("med1.p50"),
            s.median("relayack1.p50"),
            " (relay with acks)",
            None,
        );
    }
    for (prefix, what) in [
        ("1", "1 envelope in flight".to_owned()),
        (
            "idle",
            format!("idle: 1 in flight, ≥ {} ms apart", args.idle_pace_ms),
        ),
    ] {
        if !s.has(&format!("med{prefix}.rate")) {
            continue;
        }
        for key in ["p50", "p99"] {
            latency_row(
                &mut out,
                &format!("one-way latency {key} ({what})"),
                s.median(&format!("med{prefix}.{key}")),
                s.median(&format!("relay{prefix}.{key}")),
                " (relay)",
                None,
            );
        }
    }
    if s.has("drain.s") {
        let d = s.median("drain.s");
        let verdict = if d <= 2.0 {
            "**met**".to_owned()
        } else {
            format!(
                "**missed**: {:.1} × over ({:.2} s too long)",
                d / 2.0,
                d - 2.0
            )
        };
        let _ = writeln!(
            out,
            "| drain of {} queued envelopes (open → last acked + queue dry) | {:.2} s ({} env/s) | {:.3} s (relay pushing {} frames) | — | ≤ 2 s | {verdict} |",
            fmt_int(args.drain as f64),
            d,
            fmt_int(args.drain as f64 / d),
            s.median("push.s"),
            fmt_int(args.drain as f64),
        );
    }
    if s.has("echo.med.p50") {
        for key in ["p50", "p99"] {
            latency_row(
                &mut out,
                &format!("CSP echo round trip {key}"),
                s.median(&format!("echo.med.{key}")),
                s.median(&format!("echo.direct.{key}")),
                " (direct TCP)",
                (key == "p50").then_some(2.0),
            );
        }
        if s.has("relay1.p50") {
            // What a mediator doing no work at all would take: the WebSocket hop there and back
            // (the relay's one-way, 1 in flight) plus the chat server's own round trip.
            let floor = s.median("relay1.p50") + s.median("echo.direct.p50");
            latency_row(
                &mut out,
                "diagnostic: CSP echo p50 against its floor (relay one-way p50, 1 in flight + direct echo p50)",
                s.median("echo.med.p50"),
                floor,
                " (floor)",
                None,
            );
            latency_row(
                &mut out,
                "diagnostic: that floor against the direct echo",
                floor,
                s.median("echo.direct.p50"),
                " (direct TCP)",
                Some(2.0),
            );
        }
    }
    out
}

/// What each reflect measurement used (medians).
fn resources(s: &Series, args: &Args) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| | to all 3, env/s | stored, env/s | sibling round trip p50 / max | client CPU/env | client CPU | workerd CPU/env | workerd CPU | busiest workerd thread | proxy workerd | node | disk flushes/s | flushes/env | max lag | held by the lag limit | mean frame |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let w = args.window;
    for (label, prefix) in [
        (format!("mediator, ≤ {w} un-ReflectAcked"), "med"),
        (format!("mediator, ≤ {w} not at the slowest"), "medw"),
        (format!("relay, ≤ {w} not at the slowest"), "relay"),
        (
            format!("relay with acks, ≤ {w} not at the slowest"),
            "relayack",
        ),
        ("mediator, 1 in flight".to_owned(), "med1"),
        ("relay, 1 in flight".to_owned(), "relay1"),
        ("relay with acks, 1 in flight".to_owned(), "relayack1"),
        ("mediator, idle".to_owned(), "medidle"),
        ("relay, idle".to_owned(), "relayidle"),
    ] {
        if !s.has(&format!("{prefix}.rate")) {
            continue;
        }
        let m = |k: &str| s.median(&format!("{prefix}.{k}"));
        let relay = prefix.starts_with("relay");
        let dash = |text: String| if relay { "—".to_owned() } else { text };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {:.0} % | {} | {:.0} % | {:.0} % | {:.0} % | {:.0} % | {} | {} | {} | {} | {:.0} B |",
            fmt_int(m("rate")),
            dash(fmt_int(m("acked_rate"))),
            dash(format!("{} / {}", fmt_us(m("probe_p50")), fmt_us(m("probe_max")))),
            per_env(m("client_us"), " µs", 1),
            m("client_pct"),
            per_env(m("workerd_us"), " µs", 1),
            m("workerd_pct"),
            m("thread_pct"),
            m("proxy_pct"),
            m("node_pct"),
            fmt_int(m("flushes_s")),
            per_env(m("flushes_env"), "", 2),
            fmt_int(m("max_lag")),
            if prefix == "med" { format!("{:.0} %", m("held_pct")) } else { "—".to_owned() },
            m("frame"),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The machine

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    format!(
        "date: {}\ncommit: {}\nnproc: {}\nCPU: {cpu}\n{}\n",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        std::thread::available_parallelism().map_or(0, usize::from),
        command_output("free", &["-h"]),
    )
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    print!("{}", machine());
    println!("load average at start: {}", loadavg());
    use_release_chat_server()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let started = Instant::now();
    let fx = Fixture::with_wrangler(&[])
        .await
        .unwrap_or_else(|err| panic!("the fixture did not start: {err}"));
    println!(
        "fixture up in {:.1} s (scratch {})",
        started.elapsed().as_secs_f64(),
        fx.scratch().display()
    );
    let Mediator::Wrangler(dev) = &fx.mediator else {
        unreachable!("with_wrangler serves wrangler dev")
    };
    let procs = Procs {
        wrangler_group: dev.process_group().unwrap(),
        proxy_port: dev
            .http_addr()
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap(),
        chat_server: fx.chat.process().pid(),
    };
    let mut names: Vec<String> = group_ticks(procs.wrangler_group, procs.proxy_port)
        .into_values()
        .map(|(name, _)| name)
        .collect();
    names.sort();
    println!(
        "server processes: wrangler dev's group {} ({}), chat server {}",
        procs.wrangler_group,
        names.join(", "),
        procs.chat_server
    );
    let scratch = fx.scratch().to_path_buf();
    let (fsync_p50, fsync_p90) = tokio::task::spawn_blocking(move || fsync_latency(&scratch, 200))
        .await
        .unwrap();
    println!(
        "fsync (64 B append + fdatasync, 200 times, in the Worker's state file system): p50 {}, p90 {}",
        fmt_us(fsync_p50),
        fmt_us(fsync_p90)
    );
    let keys = fx.identity().await.unwrap().keys;
    let pool = Arc::new(relay_pool(&keys, args.body_len));
    println!(
        "bench: {} runs, window {}, {} s per reflect measurement ({} s at 1 in flight) after {} s warm-up, \
         sender at most {} ahead of the slowest sibling, envelope body {} B, drain {}, {} echoes per path; \
         mean relay frame {:.0} B",
        args.runs,
        args.window,
        args.seconds,
        args.latency_seconds,
        args.warmup_seconds,
        args.max_lag,
        args.body_len,
        args.drain,
        args.echoes,
        pool.iter().map(Vec::len).sum::<usize>() as f64 / pool.len() as f64,
    );

    // Warm the JIT and both objects' code paths; not recorded.
    if !args.skip_reflect {
        let warm = Args {
            warmup_seconds: 0.5,
            ..args.clone()
        };
        let w = args.window;
        let m = mediator_reflect(&fx, &warm, Shape::end_to_end(w), 2.0, procs).await;
        settle_traced(args.trace).await;
        let r = relay_reflect(
            &fx,
            &warm,
            &pool,
            Shape::end_to_end(w),
            2.0,
            "warm-up",
            procs,
            RelayAcks::None,
        )
        .await;
        println!(
            "warm-up (not recorded)\n{}\n{}",
            m.line("mediator"),
            r.line("relay")
        );
    }

    let mut series = Series::default();
    let pid = std::process::id();
    let w = args.window;
    for run in 1..=args.runs {
        println!("run {run} (load average {})", loadavg());
        if !args.skip_reflect {
            let shape = Shape::acks(w, args.max_lag);
            let m = mediator_reflect(&fx, &args, shape, args.seconds, procs).await;
            println!("{}", m.line(&format!("mediator ack≤{w}")));
            series.record_reflect("med", &m);
            settle_traced(args.trace).await;
            let shape = Shape::end_to_end(w);
            let room = format!("r{pid}-{run}-w");
            let relays = RelayRun {
                fx: &fx,
                args: &args,
                pool: &pool,
                procs,
            };
            relays
                .both(
                    shape,
                    args.seconds,
                    &room,
                    (&format!("≤{w}"), ""),
                    &mut series,
                )
                .await;
            let m = mediator_reflect(&fx, &args, shape, args.seconds, procs).await;
            println!("{}", m.line(&format!("mediator ≤{w}")));
            series.record_reflect("medw", &m);
            settle_traced(args.trace).await;
        }
        if !args.skip_latency {
            let seconds = args.latency_seconds;
            let shape = Shape::end_to_end(1);
            let m = mediator_reflect(&fx, &args, shape, seconds, procs).await;
            println!("{}", m.line("mediator 1"));
            series.record_reflect("med1", &m);
            settle_traced(args.trace).await;
            let room = format!("r{pid}-{run}-1");
            let relays = RelayRun {
                fx: &fx,
                args: &args,
                pool: &pool,
                procs,
            };
            relays
                .both(shape, seconds, &room, ("1", "1"), &mut series)
                .await;
            let shape = Shape::paced(Duration::from_millis(args.idle_pace_ms));
            let m = mediator_reflect(&fx, &args, shape, seconds, procs).await;
            println!("{}", m.line("mediator idle"));
            series.record_reflect("medidle", &m);
            settle_traced(args.trace).await;
            let room = format!("r{pid}-{run}-idle");
            let r = relay_reflect(
                &fx,
                &args,
                &pool,
                shape,
                seconds,
                &room,
                procs,
                RelayAcks::None,
            )
            .await;
            println!("{}", r.line("relay idle"));
            series.record_reflect("relayidle", &r);
        }
        if !args.skip_drain {
            // The disk's commit latency right now (other processes' writes move it a lot).
            let dir = fx.scratch().to_path_buf();
            let (fsync_p50, _) = tokio::task::spawn_blocking(move || fsync_latency(&dir, 50))
                .await
                .unwrap();
            let d = mediator_drain(&fx, args.drain, args.body_len, procs).await;
            let u = &d.usage;
            println!(
                "  drain            {} envelopes in {:.2} s ({:.0}/s; fsync p50 just before {}; ServerInfo {:.3} s, first {:.3} s, \
                 acks confirmed {:.2} s)   client {:.0} %   workerd {:.0} µs/env ({:.0} %, busiest thread {:.0} %)   \
                 proxy {:.0} %   node {:.0} %   disk flushes {:.0}/s ({:.2}/env)   acks per write {:.1}   \
                 fill {:.0} reflects/s",
                args.drain,
                d.drain_s,
                args.drain as f64 / d.drain_s,
                fmt_us(fsync_p50),
                d.info_s,
                d.first_s,
                d.confirmed_s,
                u.pct(u.client_s),
                u.workerd_s() * 1e6 / args.drain as f64,
                u.pct(u.workerd_s()),
                u.pct(u.busiest_thread_s),
                u.pct(u.proxy_s()),
                u.pct(u.other_s()),
                u.flushes as f64 / u.wall_s,
                u.flushes as f64 / args.drain as f64,
                d.acks_per_write,
                d.fill_rate,
            );
            series.push("drain.s", d.drain_s);
            series.push("drain.fsync_p50", fsync_p50);
            series.push("drain.confirmed_s", d.confirmed_s);
            series.push("drain.workerd_us", u.workerd_s() * 1e6 / args.drain as f64);
            series.push("drain.workerd_pct", u.pct(u.workerd_s()));
            series.push("drain.thread_pct", u.pct(u.busiest_thread_s));
            series.push("drain.proxy_pct", u.pct(u.proxy_s()));
            series.push("drain.client_pct", u.pct(u.client_s));
            series.push("drain.flushes_s", u.flushes as f64 / u.wall_s);
            series.push("drain.flushes_env", u.flushes as f64 / args.drain as f64);
            series.push("drain.acks_per_write", d.acks_per_write);
            series.push("drain.fill_rate", d.fill_rate);
            settle_traced(args.trace).await;
            let push = relay_push(&fx, args.drain, &pool, &format!("r{pid}-{run}-push")).await;
            println!("  relay push       {} frames in {:.3} s", args.drain, push);
            series.push("push.s", push);
        }
        if !args.skip_echo {
            let e = csp_echo(&fx, &args, procs).await;
            println!(
                "  CSP echo         mediator p50 {} p99 {}   direct p50 {} p99 {}   per mediator echo: workerd {:.0} µs, \
                 proxy {:.0} µs   per echo: chat server {:.0} µs, client {:.0} µs",
                fmt_us(e.mediator_p50_us),
                fmt_us(e.mediator_p99_us),
                fmt_us(e.direct_p50_us),
                fmt_us(e.direct_p99_us),
                e.workerd_us,
                e.proxy_us,
                e.chat_us,
                e.client_us,
            );
            series.push("echo.med.p50", e.mediator_p50_us);
            series.push("echo.med.p99", e.mediator_p99_us);
            series.push("echo.direct.p50", e.direct_p50_us);
            series.push("echo.direct.p99", e.direct_p99_us);
            series.push("echo.workerd_us", e.workerd_us);
            series.push("echo.proxy_us", e.proxy_us);
            series.push("echo.chat_us", e.chat_us);
            series.push("echo.client_us", e.client_us);
        }
    }
    let mut logged: Vec<(String, usize)> = Vec::new();
    for line in fx.mediator_crash_lines() {
        let line = strip_ansi(&line);
        match logged.iter_mut().find(|(l, _)| *l == line) {
            Some((_, n)) => *n += 1,
            None => logged.push((line, 1)),
        }
    }
    for (line, n) in &logged {
        println!("Worker log: {n} × {}", line.trim());
    }
    println!(
        "\nmedians over {} runs:\n{}",
        args.runs,
        report(&series, &args)
    );
    println!("{}", resources(&series, &args));
    if series.has("drain.s") {
        println!(
            "drain: fsync p50 just before {}; acks confirmed (a GetDevicesInfo round trip after the last ack) after {:.2} s; workerd {:.0} µs/env, \
             {:.0} % of a core (busiest thread {:.0} %), proxy {:.0} %, client {:.0} %; {:.0} disk flushes/s, {:.2} per \
             envelope; {:.1} acks per client write; filling ran at {:.0} reflects/s",
            fmt_us(series.median("drain.fsync_p50")),
            series.median("drain.confirmed_s"),
            series.median("drain.workerd_us"),
            series.median("drain.workerd_pct"),
            series.median("drain.thread_pct"),
            series.median("drain.proxy_pct"),
            series.median("drain.client_pct"),
            series.median("drain.flushes_s"),
            series.median("drain.flushes_env"),
            series.median("drain.acks_per_write"),
            series.median("drain.fill_rate"),
        );
    }
    if series.has("echo.workerd_us") {
        println!(
            "CSP echo: CPU per mediator echo: workerd {:.0} µs, proxy workerd {:.0} µs; per echo (either path): chat server {:.0} µs, client {:.0} µs",
            series.median("echo.workerd_us"),
            series.median("echo.proxy_us"),
            series.median("echo.chat_us"),
            series.median("echo.client_us"),
        );
    }
    for (name, values) in &series.0 {
        let list: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
        println!("per run {name}: {}", list.join(", "));
    }
    println!("load average at end: {}", loadavg());
}

async fn settle_traced(trace: bool) {
    let took = settle().await;
    if trace {
        eprintln!("    settled after {took:.1?}");
    }
}

/// Drops terminal colour codes (wrangler colours its error lines).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One latency row of the report: the mediator's figure, the baseline's, their ratio and, when
/// the issue sets one, the limit on that ratio with its verdict.
fn latency_row(
    out: &mut String,
    what: &str,
    mediator: f64,
    baseline: f64,
    baseline_label: &str,
    limit: Option<f64>,
) {
    let (target, verdict) = match limit {
        Some(limit) => (
            format!("≤ {limit} ×"),
            verdict_at_most(mediator / baseline, limit),
        ),
        None => ("—".to_owned(), "—".to_owned()),
    };
    let _ = writeln!(
        out,
        "| {what} | {} | {}{baseline_label} | {} | {target} | {verdict} |",
        fmt_us(mediator),
        fmt_us(baseline),
        fmt_ratio(mediator / baseline, 1)
    );
}
