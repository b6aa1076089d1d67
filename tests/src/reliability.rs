//! The fault matrix and the soak on real processes (RELIABILITY.md): app-core devices
//! ([`AppDevice`]) of two identities, two devices each, chat through `wrangler dev` and the
//! real chat server, with a [`FaultProxy`] between them, while one fault strikes in the middle
//! of the flow. After the fault heals, every device must show every message exactly once.
//!
//! `cargo bench -p tandem-tests --bench reliability -- --runs N` runs the matrix N times per
//! row and a soak (`--soak-secs`, `--groups`); `tests/tests/reliability.rs` runs it once per row
//! and a 60-second soak in CI.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::OsRng;
use rand::Rng;
use tandem_shared::app::{ConversationId, Direction, Identity as AppIdentity};

use crate::harness::inspector::{self, HeapUsage};
use crate::harness::{AppDevice, FaultProxy, Fixture, HarnessError, Identity, ProxyMode};

/// One fault, struck while messages flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing goes wrong (the baseline row).
    None,
    /// Every mediator ↔ chat server link is cut at once.
    ProxyCut,
    /// Every chunk between mediator and chat server waits 300 ms, for 3 s.
    ProxyDelay,
    /// A link is cut in the middle of a frame from the chat server.
    ProxyCutMidFrame,
    /// The path swallows every byte for 5 s without closing, then the links are cut (as TCP
    /// eventually does).
    ProxyHalfOpen,
    /// The open links go half-open for good (they swallow everything and never close); only the
    /// devices' echo timeout can notice.
    ProxyHalfOpenForGood,
    /// The chat server is SIGKILLed and started again on its data.
    ChatServerKill,
    /// `wrangler dev` is stopped (SIGTERM) and started again on its state.
    WranglerRestart,
    /// `wrangler dev` is SIGKILLed and started again on its state.
    WranglerKill,
    /// The leader's process dies in the middle of the flow and comes back from its store.
    LeaderKilled,
    /// A device dies in the middle of its own transaction (a contact rename) and comes back.
    KilledMidTransaction,
}

impl Fault {
    /// Every row of the matrix, in order.
    pub const ALL: [Self; 11] = [
        Self::None,
        Self::ProxyCut,
        Self::ProxyDelay,
        Self::ProxyCutMidFrame,
        Self::ProxyHalfOpen,
        Self::ProxyHalfOpenForGood,
        Self::ChatServerKill,
        Self::WranglerRestart,
        Self::WranglerKill,
        Self::LeaderKilled,
        Self::KilledMidTransaction,
    ];

    /// The row's name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "no fault",
            Self::ProxyCut => "mediator-chat links cut",
            Self::ProxyDelay => "mediator-chat path 300 ms slow for 3 s",
            Self::ProxyCutMidFrame => "link cut mid-frame",
            Self::ProxyHalfOpen => "half-open path 5 s, then cut",
            Self::ProxyHalfOpenForGood => "half-open path, never closed",
            Self::ChatServerKill => "chat server SIGKILL + restart",
            Self::WranglerRestart => "wrangler dev restart",
            Self::WranglerKill => "wrangler dev SIGKILL + restart",
            Self::LeaderKilled => "leader device killed mid-flow",
            Self::KilledMidTransaction => "device killed mid-transaction",
        }
    }
}

/// What one row counted over its runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Runs made.
    pub runs: u32,
    /// Messages the users sent.
    pub sent: u64,
    /// (message, device) pairs expected: each message on its sender's and receiver's devices.
    pub expected: u64,
    /// Of those, present once.
    pub delivered: u64,
    /// Messages shown more than once on a device (each extra copy counts).
    pub duplicates: u64,
    /// (message, device) pairs missing when the run's deadline passed.
    pub lost: u64,
    /// Longest time from healing the fault until every device showed everything.
    pub worst_settle: Duration,
}

/// What one device shows: each text and how many times.
type Texts = BTreeMap<String, u64>;

fn texts_shown(device: &AppDevice) -> Texts {
    let mut m = Texts::new();
    for message in device.messages() {
        *m.entry(message.text).or_insert(0) += 1;
    }
    m
}

impl Tally {
    /// Counts `text` on one device that should show it once.
    fn count(&mut self, shown: &Texts, text: &str) {
        self.expected += 1;
        match shown.get(text).copied().unwrap_or(0) {
            0 => self.lost += 1,
            n => {
                self.delivered += 1;
                self.duplicates += n - 1;
            }
        }
    }

    /// Whether nothing was lost or shown twice.
    #[must_use]
    pub const fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.delivered == self.expected
    }
}

/// The world of one matrix: the processes, the proxy and four devices.
#[derive(Debug)]
pub struct Matrix {
    /// Chat server and `wrangler dev`.
    pub fx: Fixture,
    /// Between the mediator and the chat server.
    pub proxy: FaultProxy,
    x: AppIdentity,
    y: AppIdentity,
    /// X1, X2, Y1, Y2.
    devices: Vec<AppDevice>,
    /// Time a run waits for every device to show everything.
    pub settle_limit: Duration,
}

/// How long a device may take to come online.
const ONLINE_WAIT: Duration = Duration::from_secs(60);

fn app_id(identity: &Identity) -> Result<AppIdentity, HarnessError> {
    AppIdentity::new(identity.identity).map_err(|err| HarnessError::Http {
        request: "identity".into(),
        detail: err.to_string(),
    })
}

impl Matrix {
    /// Starts the processes and four devices that know each other.
    pub async fn start() -> Result<Self, HarnessError> {
        let (fx, proxy) = Fixture::with_wrangler_behind_proxy(&[]).await?;
        let xi = fx.identity().await?;
        let yi = fx.identity().await?;
        let ws = fx.ws_base();
        let dir = fx.chat.directory();
        let mut devices = Vec::new();
        for (name, identity) in [("X1", &xi), ("X2", &xi), ("Y1", &yi), ("Y2", &yi)] {
            let device = AppDevice::start(name, identity, &ws, &dir)?;
            device
                .wait_until("online", ONLINE_WAIT, AppDevice::is_online)
                .await?;
            devices.push(device);
        }
        let (x, y) = (app_id(&xi)?, app_id(&yi)?);
        let matrix = Self {
            fx,
            proxy,
            x,
            y,
            devices,
            settle_limit: Duration::from_secs(90),
        };
        for (i, peer) in [(0, y), (2, x)] {
            if let Some(d) = matrix.devices.get(i) {
                d.with(|app| app.add_contact(peer));
            }
        }
        for (d, peer) in matrix.devices.iter().zip([y, y, x, x]) {
            d.wait_until("knowing its peer", ONLINE_WAIT, |d| {
                d.read(|a| a.state().contact(&peer).is_some())
                    .unwrap_or(false)
            })
            .await?;
        }
        Ok(matrix)
    }

    fn peer_of(&self, i: usize) -> AppIdentity {
        if i < 2 {
            self.y
        } else {
            self.x
        }
    }

    /// Sends `text` from device `i`; `false` if the device refused (killed).
    fn send(&self, i: usize, text: &str) -> bool {
        let peer = ConversationId::Contact(self.peer_of(i));
        self.devices
            .get(i)
            .and_then(|d| {
                d.with(|app| {
                    app.send_text(peer, text, crate::harness::unix_ms(), &mut OsRng)
                        .is_ok()
                })
            })
            .unwrap_or(false)
    }

    /// The leader among the online devices of X (0 or 1).
    fn x_leader(&self) -> usize {
        usize::from(
            self.devices
                .get(1)
                .and_then(|d| d.read(tandem_shared::app::App::is_leader))
                .unwrap_or(false),
        )
    }

    /// One run: `per_side` messages from each identity's devices, the fault struck halfway,
    /// healed, then counted.
    pub async fn run(
        &mut self,
        fault: Fault,
        run: u32,
        per_side: usize,
    ) -> Result<Tally, HarnessError> {
        let mut texts: Vec<(usize, String)> = Vec::new();
        let mut tally = Tally {
            runs: 1,
            ..Tally::default()
        };
        let half = per_side / 2;
        for i in 0..per_side {
            if i == half {
                self.strike(fault).await?;
            }
            for side in [0, 2] {
                let device = side + OsRng.gen_range(0..2);
                let text = format!("{}-r{run}-{device}-{i}", fault_tag(fault));
                if self.send(device, &text) {
                    texts.push((device, text));
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let healed = Instant::now();
        self.heal(fault).await?;
        tally.sent = u64::try_from(texts.len()).unwrap_or(u64::MAX);
        let deadline = healed + self.settle_limit;
        loop {
            let (complete, counted) = self.count(&texts);
            if complete || Instant::now() >= deadline {
                tally.expected = counted.expected;
                tally.delivered = counted.delivered;
                tally.duplicates = counted.duplicates;
                tally.lost = counted.lost;
                tally.worst_settle = healed.elapsed();
                return Ok(tally);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Counts, for each sent text, on how many of the four devices it shows, and how often.
    fn count(&self, texts: &[(usize, String)]) -> (bool, Tally) {
        let mut t = Tally::default();
        let shown: Vec<Texts> = self.devices.iter().map(texts_shown).collect();
        for (_, text) in texts {
            for copies in &shown {
                t.count(copies, text);
            }
        }
        (t.lost == 0, t)
    }

    async fn strike(&mut self, fault: Fault) -> Result<(), HarnessError> {
        match fault {
            Fault::None => {}
            Fault::ProxyCut => self.proxy.cut_all(),
            Fault::ProxyDelay => self
                .proxy
                .set_mode(ProxyMode::Delay(Duration::from_millis(300))),
            Fault::ProxyCutMidFrame => self.proxy.cut_next_frame(),
            Fault::ProxyHalfOpen => self.proxy.set_mode(ProxyMode::Blackhole),
            Fault::ProxyHalfOpenForGood => self.proxy.half_open_existing(),
            Fault::ChatServerKill => {
                self.fx.restart_chat_server(true).await?;
                self.proxy.retarget(self.fx.chat.csp_addr);
            }
            Fault::WranglerRestart => {
                self.fx.restart_mediator(false).await?;
            }
            Fault::WranglerKill => {
                self.fx.restart_mediator(true).await?;
            }
            Fault::LeaderKilled => {
                let leader = self.x_leader();
                if let Some(d) = self.devices.get_mut(leader) {
                    d.kill();
                }
            }
            Fault::KilledMidTransaction => {
                let y = self.y;
                if let Some(d) = self.devices.get_mut(1) {
                    d.with(|app| {
                        app.rename_contact(
                            y,
                            Some("Yvonne"),
                            None,
                            crate::harness::unix_ms(),
                            &mut OsRng,
                        )
                    });
                    // Long enough for BeginTransaction to leave, short of the commit.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    d.kill();
                }
            }
        }
        Ok(())
    }

    async fn heal(&mut self, fault: Fault) -> Result<(), HarnessError> {
        match fault {
            Fault::ProxyDelay => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.proxy.set_mode(ProxyMode::Pass);
            }
            Fault::ProxyHalfOpen => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.proxy.set_mode(ProxyMode::Pass);
                self.proxy.cut_all();
            }
            Fault::LeaderKilled | Fault::KilledMidTransaction => {
                for d in &mut self.devices {
                    if d.read(|_| ()).is_none() {
                        d.restart()?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Messages each device shows: (outgoing, incoming).
    #[must_use]
    pub fn shown(&self) -> Vec<(String, usize, usize)> {
        self.devices
            .iter()
            .map(|d| {
                let m = d.messages();
                let out = m
                    .iter()
                    .filter(|m| m.direction == Direction::Outgoing)
                    .count();
                (d.name().to_owned(), out, m.len() - out)
            })
            .collect()
    }
}

/// A tag unique to the row, so that texts of different rows never coincide.
fn fault_tag(fault: Fault) -> String {
    let row = Fault::ALL
        .iter()
        .position(|f| *f == fault)
        .unwrap_or(usize::MAX);
    format!("row{row}")
}

/// The matrix as a Markdown table.
#[must_use]
pub fn table(rows: &[(Fault, Tally)]) -> String {
    let mut out = String::from(
        "| fault | runs | sent | delivered (msg × device) | duplicates shown | lost | worst settle |\n|---|---|---|---|---|---|---|\n",
    );
    for (fault, t) in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} | {} | {:.1} s |",
            fault.name(),
            t.runs,
            t.sent,
            t.delivered,
            t.expected,
            t.duplicates,
            t.lost,
            t.worst_settle.as_secs_f64()
        );
    }
    out
}

/// Runs every row `runs` times with `per_side` messages from each side per run.
pub async fn run_matrix(
    matrix: &mut Matrix,
    runs: u32,
    per_side: usize,
) -> Result<Vec<(Fault, Tally)>, HarnessError> {
    let mut rows = Vec::new();
    for fault in Fault::ALL {
        let mut total = Tally::default();
        for run in 0..runs {
            let t = matrix.run(fault, run, per_side).await?;
            total.runs += t.runs;
            total.sent += t.sent;
            total.expected += t.expected;
            total.delivered += t.delivered;
            total.duplicates += t.duplicates;
            total.lost += t.lost;
            total.worst_settle = total.worst_settle.max(t.worst_settle);
        }
        eprintln!("{}: {:?}", fault.name(), total);
        rows.push((fault, total));
    }
    Ok(rows)
}

/// What a soak measured.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Groups × devices.
    pub groups: usize,
    /// Devices per group.
    pub devices_per_group: usize,
    /// Seconds of messaging.
    pub secs: u64,
    /// Messages sent.
    pub sent: u64,
    /// (message, device) pairs expected, delivered once, shown twice, missing.
    pub counts: Tally,
    /// Resident memory (KiB) of workerd and the chat server after the first tenth of the run
    /// (at least one minute when the run is ten minutes or longer) and after the run.
    pub rss_early_kib: (u64, u64),
    /// As above, after the run.
    pub rss_end_kib: (u64, u64),
    /// (seconds into the run, workerd KiB, chat server KiB) once a minute (every tenth of a
    /// shorter run), to tell growth that levels off from a leak.
    pub rss_samples: Vec<(u64, u64, u64)>,
    /// (seconds into the run, bytes) of the Worker's wasm linear memory, with each RSS sample
    /// (from the first group's development stats; it is the isolate's, shared by every object).
    pub wasm_samples: Vec<(u64, u64)>,
    /// (seconds into the run, V8 heap) of the Worker's isolate with each RSS sample, as it is
    /// (no collection forced).
    pub heap_samples: Vec<(u64, HeapUsage)>,
    /// Memory around a forced full collection of the Worker's isolate, right after
    /// `rss_early_kib` was read, and after the run (after `rss_end_kib` was read).
    pub gc_early: Option<AfterGc>,
    /// As above, after the run.
    pub gc_end: Option<AfterGc>,
    /// Close codes the devices' connections ended with during the soak, and how often (a
    /// restarted isolate or `wrangler dev` shows here).
    pub closes: BTreeMap<u16, u64>,
}

/// Memory just before and after `HeapProfiler.collectGarbage` on the Worker's isolate: what
/// workerd keeps once V8 has collected its garbage.
#[derive(Debug, Clone, Copy, Default)]
pub struct AfterGc {
    /// workerd's resident memory (KiB, every process of wrangler's group) before the collection.
    pub workerd_before_kib: u64,
    /// The same half a second after it.
    pub workerd_after_kib: u64,
    /// The isolate's V8 heap before the collection.
    pub heap_before: HeapUsage,
    /// And after it.
    pub heap_after: HeapUsage,
}

/// Resident set size of `pid` in KiB, from `/proc`.
#[must_use]
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The `workerd` processes in process group `group`.
fn workerd_pids(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid pgrp …`: comm may hold spaces, so split after the `)`.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let pgrp = rest
                .split_whitespace()
                .nth(2)
                .and_then(|g| g.parse::<u32>().ok());
            head.ends_with("(workerd") && pgrp == Some(group)
        })
        .collect()
}

/// Resident memory (KiB) of `wrangler dev`'s workerd processes and of the chat server.
#[must_use]
pub fn rss_pair(fx: &Fixture) -> (u64, u64) {
    let workerd = match &fx.mediator {
        crate::harness::Mediator::Wrangler(dev) => dev
            .process_group()
            .map(workerd_pids)
            .unwrap_or_default()
            .into_iter()
            .filter_map(rss_kib)
            .sum(),
        crate::harness::Mediator::Local(_) => 0,
    };
    (workerd, rss_kib(fx.chat.process().pid()).unwrap_or(0))
}

/// wrangler's inspector port, under `wrangler dev`.
const fn inspector_port(fx: &Fixture) -> Option<u16> {
    match &fx.mediator {
        crate::harness::Mediator::Wrangler(dev) => Some(dev.inspector_port()),
        crate::harness::Mediator::Local(_) => None,
    }
}

/// Forces a full collection of the Worker's isolate and reads workerd's memory around it;
/// `None` without `wrangler dev` or when the inspector does not answer (said on stderr).
pub async fn after_gc(fx: &Fixture) -> Option<AfterGc> {
    let port = inspector_port(fx)?;
    let workerd_before_kib = rss_pair(fx).0;
    match inspector::collect_garbage(port).await {
        Ok((heap_before, heap_after)) => {
            // Wrappers' native memory is released as V8 finalizes them; give it a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(AfterGc {
                workerd_before_kib,
                workerd_after_kib: rss_pair(fx).0,
                heap_before,
                heap_after,
            })
        }
        Err(err) => {
            eprintln!("soak: no forced collection: {err}");
            None
        }
    }
}

/// The Worker isolate's wasm memory, from the first group's development stats.
async fn wasm_memory(fx: &Fixture, identities: &[crate::harness::Identity]) -> Option<u64> {
    let stats = fx.group_stats(identities.first()?).await.ok()??;
    stats.get("wasmMemoryBytes")?.as_u64()
}

/// `groups` identities with `per_group` devices each, in a ring: every identity writes to the
/// next one. Each `interval` one random device sends; after `secs` the run waits for every
/// device to show everything and counts.
pub async fn soak(
    fx: &Fixture,
    groups: usize,
    per_group: usize,
    secs: u64,
    interval: Duration,
) -> Result<SoakReport, HarnessError> {
    let ws = fx.ws_base();
    let dir = fx.chat.directory();
    let mut identities = Vec::new();
    for _ in 0..groups {
        identities.push(fx.identity().await?);
    }
    let ids: Vec<AppIdentity> = identities.iter().map(app_id).collect::<Result<_, _>>()?;
    let mut devices: Vec<Vec<AppDevice>> = Vec::new();
    for (g, identity) in identities.iter().enumerate() {
        let mut group = Vec::new();
        for d in 0..per_group {
            group.push(AppDevice::start(&format!("G{g}D{d}"), identity, &ws, &dir)?);
        }
        devices.push(group);
    }
    let next = |g: usize| ids.get((g + 1) % groups).copied();
    let prev = |g: usize| ids.get((g + groups - 1) % groups).copied();
    for (g, group) in devices.iter().enumerate() {
        for d in group {
            d.wait_until("online", ONLINE_WAIT, AppDevice::is_online)
                .await?;
        }
        if let Some(first) = group.first() {
            for peer in [next(g), prev(g)].into_iter().flatten() {
                first.with(|app| app.add_contact(peer));
            }
        }
    }
    for (g, group) in devices.iter().enumerate() {
        for d in group {
            for peer in [next(g), prev(g)].into_iter().flatten() {
                d.wait_until("knowing its peers", ONLINE_WAIT, |d| {
                    d.read(|a| a.state().contact(&peer).is_some())
                        .unwrap_or(false)
                })
                .await?;
            }
        }
    }
    let mut report = SoakReport {
        groups,
        devices_per_group: per_group,
        secs,
        ..SoakReport::default()
    };
    let started = Instant::now();
    let early_at = Duration::from_secs((secs / 10).min(60));
    let mut texts: Vec<(usize, String)> = Vec::new();
    let mut tick = 0_u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let g = OsRng.gen_range(0..groups);
        let d = OsRng.gen_range(0..per_group);
        if let (Some(device), Some(peer)) = (devices.get(g).and_then(|v| v.get(d)), next(g)) {
            let text = format!("soak-{tick}-G{g}D{d}");
            let sent = device.with(|app| {
                app.send_text(
                    ConversationId::Contact(peer),
                    &text,
                    crate::harness::unix_ms(),
                    &mut OsRng,
                )
                .is_ok()
            });
            if sent == Some(true) {
                texts.push((g, text));
            }
        }
        tick += 1;
        if report.rss_early_kib == (0, 0) && started.elapsed() >= early_at {
            report.rss_early_kib = rss_pair(fx);
            report.gc_early = after_gc(fx).await;
        }
        let sample_every = (secs / 10).clamp(1, 60);
        let at = started.elapsed().as_secs();
        if at / sample_every > report.rss_samples.last().map_or(0, |s| s.0 / sample_every) {
            let (workerd, chat) = rss_pair(fx);
            report.rss_samples.push((at, workerd, chat));
            if let Some(bytes) = wasm_memory(fx, &identities).await {
                report.wasm_samples.push((at, bytes));
            }
            if let Some(port) = inspector_port(fx) {
                if let Ok(heap) = inspector::heap_usage(port).await {
                    report.heap_samples.push((at, heap));
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
    report.sent = u64::try_from(texts.len()).unwrap_or(u64::MAX);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut t = Tally::default();
        let shown: Vec<Vec<Texts>> = devices
            .iter()
            .map(|group| group.iter().map(texts_shown).collect())
            .collect();
        for (g, text) in &texts {
            for group in [*g, (*g + 1) % groups] {
                for copies in shown.get(group).into_iter().flatten() {
                    t.count(copies, text);
                }
            }
        }
        if t.lost == 0 || Instant::now() >= deadline {
            t.runs = 1;
            report.counts = t;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.rss_end_kib = rss_pair(fx);
    report.gc_end = after_gc(fx).await;
    for device in devices.iter().flatten() {
        for code in device.closes() {
            *report.closes.entry(code).or_insert(0) += 1;
        }
    }
    Ok(report)
}
