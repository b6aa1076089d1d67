// Browser-device budgets (BENCHMARKS.md, "Browser device"; docs/client.md, "Benchmarks"):
//
//   1. incoming: `app::bench::IncomingBench::process` — N incoming 1:1 texts through the device
//      path — natively (shared/benches/incoming.rs) and in wasm in headless Chromium,
//      alternately, same seed per pair; medians and wasm speed as a fraction of native.
//   2. open: a database with C contacts and M messages written through the real storage path
//      (`benchPopulate`), the page reloaded, then `TandemClient.open({database})` until it
//      resolves and the conversations and the newest conversation's messages are read.
//
//   node run.mjs [--messages 2000] [--runs 5] [--warmup 1] [--contacts 1000] [--stored 10000]
//                [--open-runs 7] [--skip-build] [--only incoming|open] [--profile]
//                [--profile-incoming] [--variant shipped|o3|z] [--cargo-args '…']
//                [--wasm-opt -O2] [--baseline DIR]
//
// The wasm is built by scripts/build-client.sh itself (profile `wasm-release`, its wasm-opt
// level) with `--features bench` added, so the bench measures the shipped settings; the native
// bench with cargo's bench profile (the workspace release profile: opt-level 3). CARGO_TARGET_DIR
// is honoured. `--profile` / `--profile-incoming` record a CPU profile of the last open / the
// last incoming run through the Chrome DevTools protocol and print the heaviest functions.
// `--baseline DIR` runs another build (DIR/pkg, DIR/incoming) alternately with this one, for
// both the incoming pairs and the opens.

import { spawnSync, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { extname, join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cpus, loadavg } from "node:os";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? Number(args[i + 1]) : def;
};
const flag = (name) => args.includes(name);
const only = (() => {
  const i = args.indexOf("--only");
  return i >= 0 ? args[i + 1] : null;
})();
const MESSAGES = opt("--messages", 2000);
const RUNS = opt("--runs", 5);
const WARMUP = opt("--warmup", 1);
const CONTACTS = opt("--contacts", 1000);
const STORED = opt("--stored", 10000);
const OPEN_RUNS = opt("--open-runs", 7);
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, "target");
const say = (s) => console.error(`==> ${s}`);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (x) => x.toFixed(1);

function run(cmd, argv, env = {}) {
  const r = spawnSync(cmd, argv, { cwd: root, stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, ...env } });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(" ")} failed (${r.status})`);
}

// `--variant` measures what other build settings would change; the budget figures use `shipped`,
// the settings scripts/build-client.sh ships. Each variant is extra cargo arguments on top of
// `[profile.wasm-release]` and a wasm-opt level. `--cargo-args '...'` and `--wasm-opt -O2` set
// them directly instead.
const pkgOpt = (name) => `--config 'profile.wasm-release.package."${name}".opt-level="z"'`;
const VARIANTS = {
  shipped: { cargo: "", wasmOpt: null },
  // Everything at opt-level 3 and wasm-opt -O3 (the speed ceiling of build settings).
  o3: { cargo: `--config 'profile.wasm-release.opt-level=3'`, wasmOpt: "-O3" },
  // Everything at z, as shipped before the per-crate overrides of [profile.wasm-release].
  z: { cargo: ["tandem-crypto", "salsa20", "poly1305", "crypto_secretbox", "sha2", "hmac", "blake2"].map(pkgOpt).join(" "), wasmOpt: "-Oz" },
};
const argOf = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const variantName = argOf("--variant") ?? "shipped";
const variant = VARIANTS[variantName];
if (!variant) throw new Error(`unknown --variant ${variantName}; one of ${Object.keys(VARIANTS).join(", ")}`);
const cargoArgs = argOf("--cargo-args") ?? variant.cargo;
const wasmOpt = argOf("--wasm-opt") ?? variant.wasmOpt;
// `--baseline DIR`: DIR/pkg (a bench build of another commit) and DIR/incoming (its native bench
// executable) run alternately with this tree's, for before/after figures from one run.
const baseline = argOf("--baseline");

function buildWasm() {
  say(`scripts/build-client.sh with --features bench into bench/pkg (variant ${variantName}: cargo ${cargoArgs || "-"}, wasm-opt ${wasmOpt ?? "as shipped"})`);
  const env = { TANDEM_CLIENT_FEATURES: "bench", TANDEM_CLIENT_PKG: join(here, "pkg"), TANDEM_CLIENT_NO_PACK: "1", TANDEM_CLIENT_CARGO_ARGS: cargoArgs };
  if (wasmOpt) env.TANDEM_CLIENT_WASM_OPT = wasmOpt;
  // The script's cargo --config arguments are split on spaces, so quotes are dropped here.
  env.TANDEM_CLIENT_CARGO_ARGS = cargoArgs.replaceAll("'", "");
  run("scripts/build-client.sh", [], env);
}

function nativeBench() {
  say("cargo bench --no-run -p tandem-shared --features bench --bench incoming");
  const out = execFileSync("cargo", ["bench", "--no-run", "--locked", "-p", "tandem-shared", "--features", "bench", "--bench", "incoming", "--message-format=json"], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 1 << 28 });
  const exe = out.split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((m) => m.reason === "compiler-artifact" && m.executable && m.target?.name === "incoming").map((m) => m.executable).pop();
  if (!exe) throw new Error("no native bench executable");
  return exe;
}

function serve() {
  const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };
  const server = createServer(async (req, res) => {
    const rel = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const base = baseline && rel.startsWith("/baseline/") ? resolve(baseline, "pkg") : here;
    const path = join(base, base === here ? rel : rel.slice("/baseline/".length));
    if (!path.startsWith(base)) return res.writeHead(403).end();
    try {
      const body = await readFile(path);
      res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream", "cache-control": "no-store" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

// CPU time (utime + stime, ms) of every Chromium process descending from the browser launched
// with `marker` among its arguments: renderer CPU, comparable to the native bench's thread CPU
// on a machine other work shares (wall time is printed too).
function chromiumCpuMs(marker) {
  const procs = [];
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      procs.push({ pid: Number(pid), ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]), cmd });
    } catch {
      // gone meanwhile
    }
  }
  const root = procs.find((p) => p.cmd.includes(marker) && !p.cmd.includes("--type="));
  if (!root) return NaN;
  const ours = new Set([root.pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of procs) if (!ours.has(p.pid) && ours.has(p.ppid)) ours.add(p.pid), (grew = true);
  }
  return procs.filter((p) => ours.has(p.pid) && p.cmd.includes("--type=renderer")).reduce((a, p) => a + p.ticks * 10, 0);
}

// Self time per function of a CDP CPU profile, heaviest first.
function printProfile(profile, what) {
  console.log(`profile: ${profile.samples?.length ?? 0} samples, ${profile.nodes.length} nodes`);
  const self = new Map();
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const dt = profile.timeDeltas;
  profile.samples.forEach((id, k) => {
    const n = byId.get(id);
    const name = `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").pop()}`;
    self.set(name, (self.get(name) ?? 0) + (dt[k] ?? 0) / 1000);
  });
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 30);
  console.log(`profile of ${what} (self time, ms):`);
  for (const [name, ms] of top) console.log(`  ${fmt(ms).padStart(8)}  ${name}`);
  // Inclusive time: each sample counts once for every distinct function on its stack.
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const incl = new Map();
  profile.samples.forEach((id, k) => {
    const seen = new Set();
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const fn = byId.get(at).callFrame.functionName;
      if (fn && !seen.has(fn)) {
        seen.add(fn);
        incl.set(fn, (incl.get(fn) ?? 0) + (dt[k] ?? 0) / 1000);
      }
    }
  });
  console.log(`profile of ${what} (inclusive time, ms):`);
  for (const [name, ms] of [...incl.entries()].sort((a, b) => b[1] - a[1]).slice(0, 45)) console.log(`  ${fmt(ms).padStart(8)}  ${name}`);
  const out = argOf("--profile-out");
  if (out) writeFileSync(out, JSON.stringify(profile));
}

async function main() {
  if (!flag("--skip-build")) buildWasm();
  const exe = only === "open" ? null : nativeBench();
  const server = await serve();
  const url = `http://127.0.0.1:${server.address().port}/page.html`;
  const marker = `--tandem-bench-marker=${process.pid}`;
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", marker, ...(argOf("--chromium-args") ?? "").split(" ").filter(Boolean)] });
  const page = await browser.newPage();
  const mainPage = page;
  const load = async () => {
    await page.goto(url);
    await page.waitForFunction(() => window.benchReady === true);
  };
  await load();
  let basePage;
  if (baseline) {
    basePage = await browser.newPage();
    await basePage.goto(`${url}?pkg=baseline`);
    await basePage.waitForFunction(() => window.benchReady === true);
    const b = readFileSync(join(baseline, "pkg/tandem_client_bg.wasm"));
    console.log(`baseline wasm (${baseline}): ${b.length} B raw, ${gzipSync(b, { level: 9 }).length} B gzipped`);
  }
  const version = browser.version();
  console.log(`machine: ${cpus().length} × ${cpus()[0].model}; Chromium ${version}; node ${process.version}`);
  const wasmBytes = readFileSync(join(here, "pkg/tandem_client_bg.wasm"));
  console.log(`wasm (variant ${variantName}, bench exports included): ${wasmBytes.length} B raw, ${gzipSync(wasmBytes, { level: 9 }).length} B gzipped`);
  console.log(`load average at start: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);

  if (only !== "open") {
    // One side of a pair: the native executable, then the same seed in a page.
    const incomingRun = async (exe, page, seed) => {
      const n = JSON.parse(execFileSync(exe, ["--messages", String(MESSAGES), "--runs", "1", "--seed", String(seed), "--json"], { encoding: "utf8" }).trim());
      const prep = await page.evaluate(
        ({ messages, seed }) => {
          const t0 = performance.now();
          window.incomingBench = new window.tandem.IncomingBench(messages, seed);
          return { prepareMs: performance.now() - t0, frames: window.incomingBench.frames };
        },
        { messages: MESSAGES, seed },
      );
      let cdp;
      if (flag("--profile-incoming") && page === mainPage && seed === RUNS) {
        cdp = await page.context().newCDPSession(page);
        await cdp.send("Profiler.enable");
        await cdp.send("Profiler.setSamplingInterval", { interval: 100 });
        await cdp.send("Profiler.start");
      }
      // Renderer CPU around an evaluate that only processes (the timed part).
      const cpuBefore = chromiumCpuMs(marker);
      const ms = await page.evaluate(() => {
        const t0 = performance.now();
        window.incomingBench.process();
        return performance.now() - t0;
      });
      const cpuMs = chromiumCpuMs(marker) - cpuBefore;
      if (cdp) printProfile((await cdp.send("Profiler.stop")).profile, "the last incoming run");
      const sent = await page.evaluate(() => {
        const sent = window.incomingBench.verify();
        window.incomingBench.free();
        window.incomingBench = undefined;
        return sent;
      });
      const w = { ms, cpuMs, sent, frames: prep.frames, prepareMs: prep.prepareMs };
      if (w.frames !== n.frames || w.sent !== n.sent) throw new Error(`native and wasm workloads differ: ${JSON.stringify({ n, w })}`);
      return { n, w };
    };
    const sides = [{ name: "this tree", exe, page: mainPage }];
    if (baseline) sides.unshift({ name: "baseline", exe: join(baseline, "incoming"), page: basePage });
    const results = new Map(sides.map((side) => [side.name, { native: [], wasm: [], nativeCpu: [], wasmCpu: [], ratios: [] }]));
    // Untimed warm-up per page: V8 compiles wasm lazily and tiers hot functions up while they run,
    // so a page's first run measures the compiler too; the native side is compiled ahead of time.
    for (const side of sides) {
      for (let i = 0; i < WARMUP; i++) {
        await side.page.evaluate(({ messages, seed }) => {
          const bench = new window.tandem.IncomingBench(messages, seed);
          bench.process();
          bench.verify();
          bench.free();
        }, { messages: MESSAGES, seed: 1000 + i });
      }
    }
    for (let i = 0; i < RUNS; i++) {
      const seed = i + 1;
      // With a baseline the order alternates per pair: in an A/A run (one build against a copy
      // of itself, always in the same order, load ≈ 4) the side that ran second was 0.83 × as
      // fast by medians.
      for (const side of i % 2 === 1 ? [...sides].reverse() : sides) {
        const { n, w } = await incomingRun(side.exe, side.page, seed);
        const r = results.get(side.name);
        r.native.push(n.ms);
        r.wasm.push(w.ms);
        r.nativeCpu.push(n.cpuMs);
        r.wasmCpu.push(w.cpuMs);
        r.ratios.push(n.ms / w.ms);
        console.log(`incoming run ${i + 1} (${side.name}): native ${fmt(n.ms)} ms (CPU ${fmt(n.cpuMs)}), wasm ${fmt(w.ms)} ms (renderer CPU ≈ ${fmt(w.cpuMs)}) (${MESSAGES} messages, ${n.frames} containers in, ${n.sent} out; wasm/native speed ${(n.ms / w.ms).toFixed(3)})`);
      }
    }
    // X25519 alone: since the per-peer key cache, a run makes one agreement (the first message's
    // sender), so this is context, not a share of the incoming time.
    const AGREEMENTS = 4000;
    const xn = [];
    const xw = [];
    const xnc = [];
    const xwc = [];
    for (let i = 0; i < 3; i++) {
      const x = JSON.parse(execFileSync(exe, ["--x25519", String(AGREEMENTS), "--json"], { encoding: "utf8" }).trim());
      xn.push(x.ms);
      xnc.push(x.cpuMs);
      const before = chromiumCpuMs(marker);
      xw.push(await mainPage.evaluate((n) => {
        const t0 = performance.now();
        window.tandem.benchX25519(n, 1);
        return performance.now() - t0;
      }, AGREEMENTS));
      xwc.push(chromiumCpuMs(marker) - before);
    }
    const xnm = median(xn);
    const xwm = median(xw);
    const us = (ms) => fmt((ms * 1000) / AGREEMENTS);
    console.log(`x25519 median: native ${us(xnm)} µs (CPU ${us(median(xnc))}), wasm ${us(xwm)} µs (renderer CPU ≈ ${us(median(xwc))}) per agreement; wasm speed = ${(xnm / xwm).toFixed(3)} × native (by CPU ≈ ${(median(xnc) / median(xwc)).toFixed(3)})`);
    if (baseline) {
      const b = results.get("baseline").wasm;
      const t = results.get("this tree").wasm;
      const rel = b.map((ms, k) => ms / t[k]);
      console.log(`incoming wasm, this tree against the baseline (> 1: this tree faster): ${(median(b) / median(t)).toFixed(3)} × by medians, ${median(rel).toFixed(3)} × by the median of the per-pair ratios (pairs ${Math.min(...rel).toFixed(2)}–${Math.max(...rel).toFixed(2)}), ${(Math.min(...b) / Math.min(...t)).toFixed(3)} × by the fastest runs`);
    }
    for (const [name, r] of results) {
      const nm = median(r.native);
      const wm = median(r.wasm);
      console.log(`incoming median (${name}): native ${fmt(nm)} ms (${fmt((nm * 1000) / MESSAGES)} µs/message), wasm ${fmt(wm)} ms (${fmt((wm * 1000) / MESSAGES)} µs/message); wasm speed = ${(nm / wm).toFixed(3)} × native (budget ≥ 0.8)`);
      const nc = median(r.nativeCpu);
      const wc = median(r.wasmCpu);
      console.log(`incoming median CPU (${name}): native ${fmt(nc)} ms, wasm (renderer) ≈ ${fmt(wc)} ms; wasm speed by CPU ≈ ${(nc / wc).toFixed(3)} × native`);
      console.log(`incoming median of the per-pair ratios (${name}): wasm speed = ${median(r.ratios).toFixed(3)} × native (pairs ${Math.min(...r.ratios).toFixed(2)}–${Math.max(...r.ratios).toFixed(2)})`);
      const nmin = Math.min(...r.native);
      const wmin = Math.min(...r.wasm);
      console.log(`incoming fastest runs (${name}): native ${fmt(nmin)} ms, wasm ${fmt(wmin)} ms; wasm speed = ${(nmin / wmin).toFixed(3)} × native (less disturbed by other load)`);
    }
  }

  if (only !== "incoming") {
    const database = "bench-open";
    // With --baseline each build populates and opens its own copy (Playwright gives each page
    // its own context, so its own IndexedDB), alternately, each page reloaded before its run.
    const openSides = [{ name: "this tree", page: mainPage, url }];
    if (baseline) openSides.unshift({ name: "baseline", page: basePage, url: `${url}?pkg=baseline` });
    for (const side of openSides) {
      say(`populating ${database} (${side.name}): ${CONTACTS} contacts, ${STORED} messages`);
      const populated = await side.page.evaluate(
        async ({ database, contacts, stored }) => {
          await window.tandem.TandemClient.deleteDatabase(database);
          const t0 = performance.now();
          const identity = await window.tandem.benchPopulate(database, contacts, stored, "ws://127.0.0.1:9");
          return { identity, ms: performance.now() - t0 };
        },
        { database, contacts: CONTACTS, stored: STORED },
      );
      console.log(`populated ${populated.identity} (${side.name}) in ${fmt(populated.ms)} ms`);
    }
    const openResults = new Map(openSides.map((side) => [side.name, { times: [], opens: [] }]));
    for (let i = 0; i < OPEN_RUNS; i++) {
      for (const side of i % 2 === 1 ? [...openSides].reverse() : openSides) {
        await side.page.goto(side.url);
        await side.page.waitForFunction(() => window.benchReady === true);
        const profiling = flag("--profile") && i === OPEN_RUNS - 1 && side.page === mainPage;
        let cdp;
        if (profiling) {
          cdp = await side.page.context().newCDPSession(side.page);
          await cdp.send("Profiler.enable");
          await cdp.send("Profiler.setSamplingInterval", { interval: 100 });
          await cdp.send("Profiler.start");
        }
        const r = await side.page.evaluate(async (database) => {
          const t0 = performance.now();
          const client = await window.tandem.TandemClient.open({ database });
          const opened = performance.now();
          const list = client.conversations();
          const newest = client.messages(list[0].id);
          const ms = performance.now() - t0;
          const contacts = client.contacts().length;
          client.close();
          return { ms, openMs: opened - t0, conversations: list.length, newest: newest.length, contacts };
        }, database);
        if (profiling) {
          printProfile((await cdp.send("Profiler.stop")).profile, "the last open");
        }
        if (r.contacts !== CONTACTS) throw new Error(`opened ${r.contacts} contacts`);
        openResults.get(side.name).times.push(r.ms);
        openResults.get(side.name).opens.push(r.openMs);
        console.log(`open run ${i + 1} (${side.name}): ready in ${fmt(r.ms)} ms (open resolved at ${fmt(r.openMs)} ms; ${r.conversations} conversations, ${r.contacts} contacts, ${r.newest} messages in the newest)`);
      }
    }
    if (baseline) {
      const b = openResults.get("baseline").times;
      const t = openResults.get("this tree").times;
      const rel = b.map((ms, k) => ms / t[k]);
      console.log(`open, this tree against the baseline (> 1: this tree faster): ${(median(b) / median(t)).toFixed(3)} × by medians, ${median(rel).toFixed(3)} × by the median of the per-run ratios (${Math.min(...rel).toFixed(2)}–${Math.max(...rel).toFixed(2)})`);
    }
    for (const [name, { times, opens }] of openResults) {
      console.log(`open median (${name}): ${fmt(median(times))} ms until ready (open() alone ${fmt(median(opens))} ms) with ${CONTACTS} contacts and ${STORED} messages (budget ≤ 1500 ms)`);
    }
    for (const side of openSides) {
      await side.page.evaluate((database) => window.tandem.TandemClient.deleteDatabase(database), database);
    }
  }
  console.log(`load average at end: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  await browser.close();
  server.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
