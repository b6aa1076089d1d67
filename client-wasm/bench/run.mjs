// Browser-device budgets (BENCHMARKS.md, "Browser device"; docs/client.md, "Benchmarks"):
//
//   1. incoming: `app::bench::IncomingBench::process` — N incoming 1:1 texts through the device
//      path — natively (shared/benches/incoming.rs) and in wasm in headless Chromium,
//      alternately, same seed per pair; medians and wasm speed as a fraction of native.
//   2. open: a database with C contacts and M messages written through the real storage path
//      (`benchPopulate`), the page reloaded, then `TandemClient.open({database})` until it
//      resolves and the conversations and the newest conversation's messages are read.
//
//   node run.mjs [--messages 2000] [--runs 5] [--contacts 1000] [--stored 10000]
//                [--open-runs 7] [--skip-build] [--only incoming|open] [--profile]
//                [--variant shipped|dalek64|o3|dalek64-o3]
//
// The wasm is built like scripts/build-client.sh builds the package (release, opt-level z, fat
// LTO, one codegen unit, panic abort, wasm-opt -Oz), plus `--features bench`; the native bench
// with cargo's bench profile (the workspace release profile: opt-level 3). CARGO_TARGET_DIR is
// honoured. `--profile` records a CPU profile of one open through the Chrome DevTools protocol
// and prints the heaviest functions.

import { spawnSync, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { readFileSync, readdirSync } from "node:fs";
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

// `--variant` measures what a build setting would change; the budget figure is `shipped`.
const VARIANTS = {
  shipped: { opt: "z", rustflags: "" },
  // curve25519-dalek picks its 32-bit field arithmetic on wasm32; wasm has 64-bit integers.
  dalek64: { opt: "z", rustflags: '--cfg curve25519_dalek_bits="64"' },
  o3: { opt: "3", rustflags: "" },
  "dalek64-o3": { opt: "3", rustflags: '--cfg curve25519_dalek_bits="64"' },
};
const variantName = (() => {
  const i = args.indexOf("--variant");
  return i >= 0 ? args[i + 1] : "shipped";
})();
const variant = VARIANTS[variantName];
if (!variant) throw new Error(`unknown --variant ${variantName}; one of ${Object.keys(VARIANTS).join(", ")}`);

function buildWasm() {
  say(`cargo build -p tandem-client --features bench (wasm32, release, build-client.sh's settings; variant ${variantName})`);
  run("cargo", ["build", "-p", "tandem-client", "--features", "bench", "--target", "wasm32-unknown-unknown", "--release", "--locked"], {
    CARGO_PROFILE_RELEASE_OPT_LEVEL: variant.opt,
    CARGO_PROFILE_RELEASE_LTO: "true",
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS: "1",
    CARGO_PROFILE_RELEASE_DEBUG: "0",
    CARGO_PROFILE_RELEASE_PANIC: "abort",
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS: variant.rustflags,
  });
  const pkg = join(here, "pkg");
  const bindgen = join(process.env.CARGO_HOME ?? join(process.env.HOME, ".cargo"), "bin", "wasm-bindgen");
  run(bindgen, ["--target", "web", "--out-dir", pkg, "--out-name", "tandem_client", join(targetDir, "wasm32-unknown-unknown/release/tandem_client.wasm")]);
  say("wasm-opt -Oz");
  const wasm = join(pkg, "tandem_client_bg.wasm");
  run(join(here, "node_modules/.bin/wasm-opt"), [variant.opt === "z" ? "-Oz" : "-O3", "--enable-bulk-memory", "--enable-nontrapping-float-to-int", "--enable-sign-ext", "--enable-mutable-globals", "--enable-reference-types", "--enable-multivalue", wasm, "-o", wasm]);
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
    const path = join(here, decodeURIComponent(new URL(req.url, "http://x").pathname));
    if (!path.startsWith(here)) return res.writeHead(403).end();
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

async function main() {
  if (!flag("--skip-build")) buildWasm();
  const exe = only === "open" ? null : nativeBench();
  const server = await serve();
  const url = `http://127.0.0.1:${server.address().port}/page.html`;
  const marker = `--tandem-bench-marker=${process.pid}`;
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", marker] });
  const page = await browser.newPage();
  const load = async () => {
    await page.goto(url);
    await page.waitForFunction(() => window.benchReady === true);
  };
  await load();
  const version = browser.version();
  console.log(`machine: ${cpus().length} × ${cpus()[0].model}; Chromium ${version}; node ${process.version}`);
  const wasmBytes = readFileSync(join(here, "pkg/tandem_client_bg.wasm"));
  console.log(`wasm (variant ${variantName}, bench exports included): ${wasmBytes.length} B raw, ${gzipSync(wasmBytes, { level: 9 }).length} B gzipped`);
  console.log(`load average at start: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);

  if (only !== "open") {
    const native = [];
    const wasm = [];
    const nativeCpu = [];
    const wasmCpu = [];
    for (let i = 0; i < RUNS; i++) {
      const seed = i + 1;
      const n = JSON.parse(execFileSync(exe, ["--messages", String(MESSAGES), "--runs", "1", "--seed", String(seed), "--json"], { encoding: "utf8" }).trim());
      const prep = await page.evaluate(
        ({ messages, seed }) => {
          const t0 = performance.now();
          window.incomingBench = new window.tandem.IncomingBench(messages, seed);
          return { prepareMs: performance.now() - t0, frames: window.incomingBench.frames };
        },
        { messages: MESSAGES, seed },
      );
      // Renderer CPU around an evaluate that only processes (the timed part).
      const cpuBefore = chromiumCpuMs(marker);
      const ms = await page.evaluate(() => {
        const t0 = performance.now();
        window.incomingBench.process();
        return performance.now() - t0;
      });
      const cpuMs = chromiumCpuMs(marker) - cpuBefore;
      const sent = await page.evaluate(() => {
        const sent = window.incomingBench.verify();
        window.incomingBench.free();
        window.incomingBench = undefined;
        return sent;
      });
      const w = { ms, cpuMs, sent, frames: prep.frames, prepareMs: prep.prepareMs };
      if (w.frames !== n.frames || w.sent !== n.sent) throw new Error(`native and wasm workloads differ: ${JSON.stringify({ n, w })}`);
      native.push(n.ms);
      wasm.push(w.ms);
      nativeCpu.push(n.cpuMs);
      wasmCpu.push(w.cpuMs);
      console.log(`incoming run ${i + 1}: native ${fmt(n.ms)} ms (CPU ${fmt(n.cpuMs)}), wasm ${fmt(w.ms)} ms (renderer CPU ≈ ${fmt(w.cpuMs)}) (${MESSAGES} messages, ${n.frames} containers in, ${n.sent} out; wasm/native speed ${(n.ms / w.ms).toFixed(3)})`);
    }
    // Breakdown: the X25519 key agreements (four per message: open + seal the receipt).
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
      xw.push(await page.evaluate((n) => {
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
    const nm = median(native);
    const wm = median(wasm);
    const share = (ms, x) => `${((100 * 4 * MESSAGES * x) / AGREEMENTS / ms).toFixed(0)} %`;
    console.log(`x25519 share of incoming by CPU (4 agreements per message): native ${share(median(nativeCpu), median(xnc))}, wasm ≈ ${share(median(wasmCpu), median(xwc))}`);
    console.log(`incoming median: native ${fmt(nm)} ms (${fmt((nm * 1000) / MESSAGES)} µs/message), wasm ${fmt(wm)} ms (${fmt((wm * 1000) / MESSAGES)} µs/message); wasm speed = ${(nm / wm).toFixed(3)} × native (budget ≥ 0.8)`);
    const nc = median(nativeCpu);
    const wc = median(wasmCpu);
    console.log(`incoming median CPU: native ${fmt(nc)} ms, wasm (renderer) ≈ ${fmt(wc)} ms; wasm speed by CPU ≈ ${(nc / wc).toFixed(3)} × native`);
    const nmin = Math.min(...native);
    const wmin = Math.min(...wasm);
    console.log(`incoming fastest runs: native ${fmt(nmin)} ms, wasm ${fmt(wmin)} ms; wasm speed = ${(nmin / wmin).toFixed(3)} × native (less disturbed by other load)`);
  }

  if (only !== "incoming") {
    const database = "bench-open";
    say(`populating ${database}: ${CONTACTS} contacts, ${STORED} messages`);
    const populated = await page.evaluate(
      async ({ database, contacts, stored }) => {
        await window.tandem.TandemClient.deleteDatabase(database);
        const t0 = performance.now();
        const identity = await window.tandem.benchPopulate(database, contacts, stored, "ws://127.0.0.1:9");
        return { identity, ms: performance.now() - t0 };
      },
      { database, contacts: CONTACTS, stored: STORED },
    );
    console.log(`populated ${populated.identity} in ${fmt(populated.ms)} ms`);
    const times = [];
    const opens = [];
    for (let i = 0; i < OPEN_RUNS; i++) {
      await load();
      const profiling = flag("--profile") && i === OPEN_RUNS - 1;
      let cdp;
      if (profiling) {
        cdp = await page.context().newCDPSession(page);
        await cdp.send("Profiler.enable");
        await cdp.send("Profiler.setSamplingInterval", { interval: 100 });
        await cdp.send("Profiler.start");
      }
      const r = await page.evaluate(async (database) => {
        const t0 = performance.now();
        const client = await window.tandem.TandemClient.open({ database });
        const opened = performance.now();
        const list = client.conversations();
        const newest = client.messages(list[0].id);
        const ms = performance.now() - t0;
        const contacts = client.contacts().length;
        let total = 0;
        for (const c of list) total += c.unread >= 0 ? 1 : 0;
        client.close();
        return { ms, openMs: opened - t0, conversations: list.length, newest: newest.length, contacts, total };
      }, database);
      if (profiling) {
        const { profile } = await cdp.send("Profiler.stop");
        console.log(`profile: ${profile.samples?.length ?? 0} samples, ${profile.nodes.length} nodes`);
        const self = new Map();
        const byId = new Map(profile.nodes.map((n) => [n.id, n]));
        const dt = profile.timeDeltas;
        profile.samples.forEach((id, k) => {
          const n = byId.get(id);
          const name = `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").pop()}`;
          self.set(name, (self.get(name) ?? 0) + (dt[k] ?? 0) / 1000);
        });
        const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
        console.log("profile of the last open (self time, ms):");
        for (const [name, ms] of top) console.log(`  ${fmt(ms).padStart(8)}  ${name}`);
      }
      if (r.contacts !== CONTACTS) throw new Error(`opened ${r.contacts} contacts`);
      times.push(r.ms);
      opens.push(r.openMs);
      console.log(`open run ${i + 1}: ready in ${fmt(r.ms)} ms (open resolved at ${fmt(r.openMs)} ms; ${r.conversations} conversations, ${r.contacts} contacts, ${r.newest} messages in the newest)`);
    }
    console.log(`open median: ${fmt(median(times))} ms until ready (open() alone ${fmt(median(opens))} ms) with ${CONTACTS} contacts and ${STORED} messages (budget ≤ 1500 ms)`);
    await page.evaluate((database) => window.tandem.TandemClient.deleteDatabase(database), database);
  }
  console.log(`load average at end: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  await browser.close();
  server.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
