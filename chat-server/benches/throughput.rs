//! Chat server benchmark (not a timed test; results go to BENCHMARKS.md).
//!
//! Per run, side by side:
//! 1. `chat/<sync>`: N identities, one live receiving session each; identity i sends to i+1
//!    with at most `--window` messages awaiting their message-ack; receivers ack everything.
//!    Counted: messages delivered to the receiver (send → durable → deliver → ack) per second
//!    in the measuring window, and the send→receive latency.
//! 2. `echo`: a bare tokio TCP echo server (its own 2-worker runtime) and N connections sending
//!    frames of the same size with the same window; latency is the round trip.
//!
//! 3. With `--postgres`: `pg/1node` (the same load on one node with `--database`, a real
//!    PostgreSQL started by the bench with `fsync` and `synchronous_commit` on, the durability
//!    of `--sync full`) and `pg/2nodes` (two nodes of one server group; identity i logs in on
//!    node i mod 2 and sends to i + 1, so with an even count every message crosses nodes).
//!    CPU per delivered message is reported per node and for PostgreSQL (the postmaster and
//!    every backend). `--pg-local` adds `pg/2nodes-local`: two nodes, identity i sending to
//!    i + 2, which is on its own node, so no message crosses nodes (what a second node costs
//!    without cross-node delivery). `TANDEM_PG_STATEMENTS=1` prints what PostgreSQL ran per
//!    stored message (`pg_stat_statements`); `CHAT_BENCH_PG2_ARGS="--storage-connections 1"`
//!    (`PG1` for one node) passes more arguments to the nodes of that setup.
//!
//! Then the resident memory of the server process with `--idle-sessions` authenticated,
//! unblocked, idle sessions (one identity each).
//!
//! `cargo bench -p tandem-chat-server --bench throughput -- [--identities N] [--seconds S]
//! [--runs R] [--window W] [--idle-sessions M] [--sync full|normal|both] [--skip-idle]
//! [--postgres] [--pg-local]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations,
    unreachable_pub
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Account, Client, ServerProcess};
use tandem_shared::csp::{
    ClientEvent, CspPayload, MessageAck, MessageFlags, MessagePayloadVersion,
    MessageWithMetadataBox,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
struct Args {
    identities: usize,
    seconds: u64,
    runs: usize,
    window: usize,
    idle_sessions: usize,
    syncs: Vec<&'static str>,
    skip_idle: bool,
    box_len: usize,
    postgres: bool,
    /// Also two nodes where every message stays on its node (`pg/2nodes-local`).
    pg_local: bool,
}

fn args() -> Args {
    let mut a = Args {
        identities: 50,
        seconds: 10,
        runs: 3,
        window: 32,
        idle_sessions: 10_000,
        syncs: vec!["full", "normal"],
        skip_idle: false,
        box_len: 128,
        postgres: false,
        pg_local: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("flag value");
        match flag.as_str() {
            "--identities" => a.identities = value().parse().unwrap(),
            "--seconds" => a.seconds = value().parse().unwrap(),
            "--runs" => a.runs = value().parse().unwrap(),
            "--window" => a.window = value().parse().unwrap(),
            "--idle-sessions" => a.idle_sessions = value().parse().unwrap(),
            "--box-len" => a.box_len = value().parse().unwrap(),
            "--sync" => {
                a.syncs = match value().as_str() {
                    "full" => vec!["full"],
                    "normal" => vec!["normal"],
                    _ => vec!["full", "normal"],
                }
            }
            "--skip-idle" => a.skip_idle = true,
            "--postgres" => a.postgres = true,
            "--pg-local" => a.pg_local = true,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// What one measurement produced.
#[derive(Debug, Clone)]
struct Measured {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU µs per delivered message, per process (server nodes, PostgreSQL, load generator).
    cpu_us: Vec<(String, f64)>,
}

struct Shared {
    base: Instant,
    measuring: AtomicBool,
    running: AtomicBool,
    delivered: AtomicU64,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            measuring: AtomicBool::new(false),
            running: AtomicBool::new(true),
            delivered: AtomicU64::new(0),
            stop: tokio::sync::watch::channel(false).0,
        })
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i])
}

fn summarize(delivered: u64, seconds: u64, mut latencies: Vec<u32>) -> Measured {
    latencies.sort_unstable();
    Measured {
        per_second: delivered as f64 / seconds as f64,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        cpu_us: Vec::new(),
    }
}

/// CPU time (user + system) of a process so far, in seconds (clock ticks of 100 Hz).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time of a process and all its children (PostgreSQL's postmaster and its backends).
fn tree_cpu_seconds(root: u32) -> f64 {
    let mut total = cpu_seconds(root);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root) {
            total += cpu_seconds(pid);
        }
    }
    total
}

/// Where CPU is counted: one process, or a process with its children.
#[derive(Clone, Copy)]
enum Probe {
    Process(u32),
    Tree(u32),
}

impl Probe {
    fn seconds(self) -> f64 {
        match self {
            Self::Process(pid) => cpu_seconds(pid),
            Self::Tree(pid) => tree_cpu_seconds(pid),
        }
    }
}

/// Runs the clock: warm-up, measuring window, stop. Returns the CPU seconds each probe used
/// during the measuring window.
async fn clock(shared: &Shared, seconds: u64, probes: &[Probe]) -> Vec<f64> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<f64> = probes.iter().map(|p| p.seconds()).collect();
    shared.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    shared.measuring.store(false, Ordering::SeqCst);
    let after: Vec<f64> = probes.iter().map(|p| p.seconds()).collect();
    shared.running.store(false, Ordering::SeqCst);
    shared.stop.send_replace(true);
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

// ---------------------------------------------------------------------------------------------
// Chat server

/// Which server setup a chat run measures.
#[derive(Clone, Copy)]
enum Setup {
    /// One node on SQLite with this `--sync`.
    Sqlite(&'static str),
    /// This many nodes on the bench's PostgreSQL.
    Postgres(usize),
    /// Two nodes on the bench's PostgreSQL, identity i sending to i + 2 (on its own node).
    PostgresLocal,
}

impl Setup {
    fn name(self) -> String {
        match self {
            Self::Sqlite(sync) => format!("chat/{sync}"),
            Self::Postgres(1) => "pg/1node".into(),
            Self::Postgres(n) => format!("pg/{n}nodes"),
            Self::PostgresLocal => "pg/2nodes-local".into(),
        }
    }
}

async fn chat_run(args: &Args, setup: Setup) -> Measured {
    let dirs: Vec<tempfile::TempDir> = (0..match setup {
        Setup::Sqlite(_) => 1,
        Setup::Postgres(n) => n,
        Setup::PostgresLocal => 2,
    })
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let log_level = std::env::var("CHAT_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let mut common = vec![
        "--log-level".to_owned(),
        log_level,
        "--max-queue".to_owned(),
        "1000000".to_owned(),
    ];
    let mut postgres = None;
    match setup {
        Setup::Sqlite(sync) => common.extend(["--sync".to_owned(), sync.to_owned()]),
        Setup::Postgres(_) | Setup::PostgresLocal => {
            let server = support::pg::shared();
            let name = support::pg::database_for(dirs[0].path());
            server.ensure_database(&name);
            common.extend(["--database".to_owned(), server.url(&name)]);
            if let Ok(extra) = std::env::var(format!("CHAT_BENCH_PG{}_ARGS", dirs.len())) {
                common.extend(extra.split_whitespace().map(str::to_owned));
            }
            postgres = Some(server.pid());
        }
    }
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let mut servers: Vec<ServerProcess> = Vec::new();
    for dir in &dirs {
        if let Some(first) = servers.first() {
            std::fs::copy(
                first.data_dir.join("server.key"),
                dir.path().join("server.key"),
            )
            .unwrap();
        }
        servers.push(ServerProcess::start(dir.path(), &common));
    }
    let accounts = create_accounts(servers[0].http, args.identities).await;
    let accounts = Arc::new(accounts);
    let shared = Shared::new();
    let mut clients = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let server = &servers[i % servers.len()];
        let mut c = Client::connect(server.csp, account.config(&server.public_key, 1))
            .await
            .unwrap();
        c.send(&CspPayload::UnblockIncomingMessages).await;
        assert_eq!(c.expect().await, CspPayload::QueueSendComplete);
        clients.push(c);
    }
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let accounts = Arc::clone(&accounts);
        let shared = Arc::clone(&shared);
        let window = args.window;
        let box_len = args.box_len;
        // i + 2 is on i's own node (nodes take identities in turn).
        let stride = if matches!(setup, Setup::PostgresLocal) {
            2
        } else {
            1
        };
        tasks.push(tokio::spawn(async move {
            let me = &accounts[i];
            let to = &accounts[(i + stride) % accounts.len()];
            chat_session(client, me.identity, to.identity, window, box_len, &shared).await
        }));
    }
    let mut probes: Vec<(String, Probe)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = if servers.len() == 1 {
                "server".to_owned()
            } else {
                format!("node {}", i + 1)
            };
            (name, Probe::Process(s.pid()))
        })
        .collect();
    if let Some(pid) = postgres {
        probes.push(("PostgreSQL".into(), Probe::Tree(pid)));
    }
    probes.push(("load generator".into(), Probe::Process(std::process::id())));
    let pids: Vec<Probe> = probes.iter().map(|(_, p)| *p).collect();
    let statements = postgres.and(std::env::var_os("TANDEM_PG_STATEMENTS"));
    if statements.is_some() {
        let server = support::pg::shared();
        let db = support::pg::database_for(dirs[0].path());
        server.psql(&db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
        server.psql(&db, "SELECT pg_stat_statements_reset()");
    }
    let cpu = clock(&shared, args.seconds, &pids).await;
    if statements.is_some() {
        print_statements(&support::pg::database_for(dirs[0].path()));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let delivered = shared.delivered.load(Ordering::SeqCst);
    let mut measured = summarize(delivered, args.seconds, latencies);
    let per_message = |s: f64| s * 1e6 / delivered.max(1) as f64;
    measured.cpu_us = probes
        .iter()
        .zip(cpu)
        .map(|((name, _), seconds)| (name.clone(), per_message(seconds)))
        .collect();
    measured
}

/// What PostgreSQL ran since the reset, per stored message (`TANDEM_PG_STATEMENTS=1`).
fn print_statements(db: &str) {
    let out = support::pg::shared().psql(
        db,
        "WITH s AS (SELECT * FROM pg_stat_statements \
           WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())), \
         m AS (SELECT GREATEST(SUM(rows), 1) AS n FROM s WHERE query LIKE '%tandem_enqueue%') \
         SELECT format('%8s calls/msg %8s ms/1000 msg %s', round(calls / m.n, 4), \
                round((total_exec_time / m.n * 1000)::numeric, 2), \
                left(regexp_replace(query, '\\s+', ' ', 'g'), 90)) \
         FROM s, m ORDER BY total_exec_time DESC LIMIT 20",
    );
    for line in out.lines() {
        println!("    {line}");
    }
}

async fn create_accounts(http: SocketAddr, n: usize) -> Vec<Account> {
    let mut out = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for _ in 0..n {
        pending.push(tokio::spawn(Account::create(http)));
        if pending.len() == 32 {
            for p in pending.drain(..) {
                out.push(p.await.unwrap());
            }
        }
    }
    for p in pending {
        out.push(p.await.unwrap());
    }
    out
}

fn message_template(from: [u8; 8], to: [u8; 8], box_len: usize) -> MessageWithMetadataBox {
    MessageWithMetadataBox {
        sender: from,
        receiver: to,
        message_id: 0,
        created_at: 0,
        flags: MessageFlags::NONE,
        legacy_nickname: [0; 32],
        metadata: Vec::new(),
        nonce: [7; 24],
        message_box: vec![0x42; box_len],
    }
}

/// One identity's session: keeps `window` messages in flight to `to`, acks what it receives.
async fn chat_session(
    mut client: Client,
    me: [u8; 8],
    to: [u8; 8],
    window: usize,
    box_len: usize,
    shared: &Shared,
) -> Vec<u32> {
    let mut stop = shared.stop.subscribe();
    let mut template = message_template(me, to, box_len);
    let mut next_id = 1_u64;
    let mut outstanding = 0_usize;
    let mut latencies = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    while shared.running.load(Ordering::Relaxed) {
        while outstanding < window {
            template.message_id = next_id;
            next_id += 1;
            let stamp = shared.base.elapsed().as_nanos() as u64;
            template.message_box[..8].copy_from_slice(&stamp.to_le_bytes());
            let payload = CspPayload::OutgoingMessage(template.clone())
                .encode()
                .unwrap();
            client.csp.send(&payload).unwrap();
            outstanding += 1;
        }
        while let Some(unit) = client.csp.poll_transmit() {
            out.extend_from_slice(&unit);
        }
        if !out.is_empty() {
            client.stream.write_all(&out).await.unwrap();
            out.clear();
        }
        let n = tokio::select! {
            r = client.stream.read(&mut buf) => match r {
                Ok(n) if n > 0 => n,
                _ => panic!("server closed"),
            },
            _ = stop.changed() => break,
        };
        client.csp.receive(&buf[..n]).unwrap();
        while let Some(event) = client.csp.poll_event() {
            let ClientEvent::Payload(bytes) = event else {
                continue;
            };
            match CspPayload::decode(&bytes, MessagePayloadVersion::WithMetadataBox).unwrap() {
                CspPayload::OutgoingMessageAck(_) => outstanding -= 1,
                CspPayload::IncomingMessage(m) => {
                    if shared.measuring.load(Ordering::Relaxed) {
                        let sent = u64::from_le_bytes(m.message_box[..8].try_into().unwrap());
                        let now = shared.base.elapsed().as_nanos() as u64;
                        latencies.push(((now - sent) / 1000) as u32);
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    let ack = CspPayload::IncomingMessageAck(MessageAck {
                        identity: m.sender,
                        message_id: m.message_id,
                    });
                    client.csp.send(&ack.encode().unwrap()).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    latencies
}

fn chat_frame_len(box_len: usize) -> usize {
    let payload = CspPayload::OutgoingMessage(message_template([b'A'; 8], [b'B'; 8], box_len))
        .encode()
        .unwrap();
    2 + 16 + payload.len()
}

// ---------------------------------------------------------------------------------------------
// Bare TCP echo

async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        stream.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0_u8; 64 * 1024];
            let mut pending = Vec::new();
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                // Echo whole frames only, like a server that parses its framing.
                let mut whole = 0;
                while pending.len() >= whole + 2 {
                    let len = usize::from(u16::from_le_bytes([pending[whole], pending[whole + 1]]));
                    if pending.len() < whole + 2 + len {
                        break;
                    }
                    whole += 2 + len;
                }
                if whole > 0 {
                    if stream.write_all(&pending[..whole]).await.is_err() {
                        return;
                    }
                    pending.drain(..whole);
                }
            }
        });
    }
}

async fn echo_run(args: &Args, frame_len: usize) -> Measured {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            tokio::select! {
                () = echo_server(listener) => {}
                () = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
        });
        rt.shutdown_background();
    });
    let shared = Shared::new();
    let mut tasks = Vec::new();
    for _ in 0..args.identities {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let shared = Arc::clone(&shared);
        let window = args.window;
        tasks.push(tokio::spawn(async move {
            echo_client(stream, frame_len, window, &shared).await
        }));
    }
    clock(&shared, args.seconds, &[]).await;
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    drop(server_thread);
    summarize(
        shared.delivered.load(Ordering::SeqCst),
        args.seconds,
        latencies,
    )
}

async fn echo_client(
    mut stream: TcpStream,
    frame_len: usize,
    window: usize,
    shared: &Shared,
) -> Vec<u32> {
    let mut stop = shared.stop.subscribe();
    let mut frame = vec![0x42_u8; frame_len];
    frame[..2].copy_from_slice(&u16::try_from(frame_len - 2).unwrap().to_le_bytes());
    let mut outstanding = 0;
    let mut latencies = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    let mut pending = Vec::new();
    let mut out = Vec::new();
    while shared.running.load(Ordering::Relaxed) {
        while outstanding < window {
            let stamp = shared.base.elapsed().as_nanos() as u64;
            frame[2..10].copy_from_slice(&stamp.to_le_bytes());
            out.extend_from_slice(&frame);
            outstanding += 1;
        }
        stream.write_all(&out).await.unwrap();
        out.clear();
        let n = tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(n) if n > 0 => n,
                _ => panic!("echo server closed"),
            },
            _ = stop.changed() => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while pending.len() >= at + frame_len {
            if shared.measuring.load(Ordering::Relaxed) {
                let sent = u64::from_le_bytes(pending[at + 2..at + 10].try_into().unwrap());
                let now = shared.base.elapsed().as_nanos() as u64;
                latencies.push(((now - sent) / 1000) as u32);
                shared.delivered.fetch_add(1, Ordering::Relaxed);
            }
            outstanding -= 1;
            at += frame_len;
        }
        pending.drain(..at);
    }
    latencies
}

// ---------------------------------------------------------------------------------------------
// Idle sessions

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn idle_run(args: &Args) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--log-level", "warn"]);
    let (before, _) = rss_kib(server.pid());
    let started = Instant::now();
    let accounts = create_accounts(server.http, args.idle_sessions).await;
    println!(
        "idle: created {} identities in {:.1} s",
        accounts.len(),
        started.elapsed().as_secs_f64()
    );
    let (after_identities, _) = rss_kib(server.pid());
    let started = Instant::now();
    let mut clients = Vec::with_capacity(accounts.len());
    let accounts = Arc::new(accounts);
    for chunk in (0..accounts.len()).collect::<Vec<_>>().chunks(64) {
        let mut pending = Vec::new();
        for &i in chunk {
            let accounts = Arc::clone(&accounts);
            let addr = server.csp;
            let key = server.public_key;
            pending.push(tokio::spawn(async move {
                let mut c = Client::connect(addr, accounts[i].config(&key, 1))
                    .await
                    .unwrap();
                c.send(&CspPayload::UnblockIncomingMessages).await;
                assert_eq!(c.expect().await, CspPayload::QueueSendComplete);
                c
            }));
        }
        for p in pending {
            clients.push(p.await.unwrap());
        }
    }
    println!(
        "idle: {} sessions authenticated and unblocked in {:.1} s",
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    // Let the server settle (allocator, timers) before reading its memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = rss_kib(server.pid());
    println!(
        "idle: server VmRSS {:.1} MiB with {} idle sessions (empty server {:.1} MiB, after creating the identities {:.1} MiB, peak {:.1} MiB); {:.1} KiB per session",
        rss as f64 / 1024.0,
        clients.len(),
        before as f64 / 1024.0,
        after_identities as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (rss.saturating_sub(after_identities)) as f64 / clients.len() as f64
    );
    drop(clients);
}

/// "   CPU/msg: server 19.4 µs, load generator 9.5 µs" (nothing without figures).
fn cpu_text<'a>(figures: impl Iterator<Item = (&'a str, f64)>) -> String {
    let parts: Vec<String> = figures.map(|(n, v)| format!("{n} {v:.1} µs")).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("   CPU/msg: {}", parts.join(", "))
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let frame_len = chat_frame_len(args.box_len);
        println!(
            "bench: {} identities, window {}, {} s per measurement, {} runs, frame {} bytes (box {} bytes)",
            args.identities, args.window, args.seconds, args.runs, frame_len, args.box_len
        );
        let mut results: Vec<(String, Vec<Measured>)> = Vec::new();
        let mut push = |name: String, m: Measured| {
            let cpu = cpu_text(m.cpu_us.iter().map(|(n, v)| (n.as_str(), *v)));
            println!(
                "  {name:<12} {:>9.0} msg/s   p50 {:>8.0} µs   p99 {:>8.0} µs{cpu}",
                m.per_second, m.p50_us, m.p99_us
            );
            match results.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(m),
                None => results.push((name, vec![m])),
            }
        };
        for run in 1..=args.runs {
            println!("run {run}");
            let mut setups: Vec<Setup> = args.syncs.iter().map(|s| Setup::Sqlite(s)).collect();
            if args.postgres {
                setups.extend([Setup::Postgres(1), Setup::Postgres(2)]);
                if args.pg_local {
                    setups.push(Setup::PostgresLocal);
                }
            }
            for setup in setups {
                push(setup.name(), chat_run(&args, setup).await);
            }
            push("echo".into(), echo_run(&args, frame_len).await);
        }
        println!("medians over {} runs:", args.runs);
        let echo = results
            .iter()
            .find(|(n, _)| n == "echo")
            .map(|(_, v)| median(&mut v.iter().map(|m| m.per_second).collect::<Vec<_>>()))
            .unwrap_or(f64::NAN);
        for (name, ms) in &results {
            let rate = median(&mut ms.iter().map(|m| m.per_second).collect::<Vec<_>>());
            let p50 = median(&mut ms.iter().map(|m| m.p50_us).collect::<Vec<_>>());
            let p99 = median(&mut ms.iter().map(|m| m.p99_us).collect::<Vec<_>>());
            let labels: Vec<String> = ms[0].cpu_us.iter().map(|(n, _)| n.clone()).collect();
            let medians: Vec<(String, f64)> = labels
                .into_iter()
                .map(|label| {
                    let mut values: Vec<f64> = ms
                        .iter()
                        .filter_map(|m| m.cpu_us.iter().find(|(n, _)| *n == label).map(|c| c.1))
                        .collect();
                    let value = median(&mut values);
                    (label, value)
                })
                .collect();
            let cpu = cpu_text(medians.iter().map(|(n, v)| (n.as_str(), *v)));
            println!(
                "  {name:<12} {rate:>9.0} msg/s   p50 {p50:>8.0} µs   p99 {p99:>8.0} µs   {:.3} × echo{cpu}",
                rate / echo
            );
        }
        if !args.skip_idle {
            idle_run(&args).await;
        }
    });
}
