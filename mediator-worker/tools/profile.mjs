// Samples the Worker's isolate under `wrangler dev` through the V8 inspector (Chrome DevTools
// Protocol) and prints self and inclusive time per function, wasm functions by name.
//
//   node mediator-worker/tools/profile.mjs INSPECTOR_PORT [DELAY_S] [DURATION_S] [OUT.cpuprofile]
//
// Start wrangler dev with a fixed inspector port (scripts/worker-dev.sh honours
// TANDEM_INSPECTOR_PORT), put it under load, then run this: it waits DELAY_S (default 8), samples
// for DURATION_S (default 10) at 50 µs intervals and prints the top functions. The names of wasm
// functions come from the module's name section, which worker-build keeps (release profile
// `debug = 1`).
import { writeFileSync } from "node:fs";
import { connect, nameShims, sleep } from "./inspector.mjs";

const [port, delayS = "8", durationS = "10", out] = process.argv.slice(2);
if (!port) {
  console.error("usage: profile.mjs INSPECTOR_PORT [DELAY_S] [DURATION_S] [OUT.cpuprofile]");
  process.exit(2);
}
const { ws, call } = await connect(port);

await sleep(Number(delayS) * 1000);
await call("Profiler.enable");
if (process.env.COUNT) {
  // Call counts of every JS function (no sampling): the wasm-bindgen import shims in index.js
  // are the wasm → JS crossings, `__wbg_exec_*` the SQL statements.
  await call("Profiler.startPreciseCoverage", { callCount: true, detailed: false });
  console.error(`counting calls for ${durationS} s`);
  await sleep(Number(durationS) * 1000);
  const { result } = await call("Profiler.takePreciseCoverage");
  await call("Profiler.stopPreciseCoverage");
  ws.close();
  const counts = new Map();
  for (const script of result) {
    for (const fn of script.functions) {
      const n = fn.ranges[0]?.count ?? 0;
      if (n > 0 && fn.functionName) {
        counts.set(fn.functionName, (counts.get(fn.functionName) ?? 0) + n);
      }
    }
  }
  const crossings = [...counts].filter(([n]) => n.startsWith("__wbg_") || n.startsWith("__wbindgen_"));
  console.log(`wasm → JS crossings (import shim calls): ${crossings.reduce((a, [, n]) => a + n, 0)}`);
  for (const [n, c] of [...counts].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.TOP ?? 40))) {
    console.log(`${String(c).padStart(10)}  ${n}`);
  }
  process.exit(0);
}
await call("Profiler.setSamplingInterval", { interval: 50 });
await call("Profiler.start");
console.error(`sampling ${durationS} s`);
await sleep(Number(durationS) * 1000);
const { profile } = await call("Profiler.stop");
// wasm-bindgen's import shims are anonymous functions in an object literal: name them after the
// `__wbg_…` key on their line of the bundled index.js.
await nameShims(call, profile.nodes.map((n) => n.callFrame));
ws.close();
if (out) writeFileSync(out, JSON.stringify(profile));

// Self time per node from the samples; inclusive time by walking up the tree.
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const dt = new Map();
const deltas = profile.timeDeltas;
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i];
  const d = deltas[i + 1] ?? 0;
  dt.set(id, (dt.get(id) ?? 0) + d);
}
const name = (n) => {
  const f = n.callFrame;
  const file = f.url ? f.url.split("/").pop() : "";
  return `${f.functionName || "(anonymous)"} ${file}`.trim();
};
const self = new Map();
const incl = new Map();
let total = 0;
for (const [id, d] of dt) {
  total += d;
  const n = byId.get(id);
  self.set(name(n), (self.get(name(n)) ?? 0) + d);
  const seen = new Set();
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const nm = name(byId.get(cur));
    if (seen.has(nm)) continue;
    seen.add(nm);
    incl.set(nm, (incl.get(nm) ?? 0) + d);
  }
}
const idle = (self.get("(idle)") ?? 0) + (self.get("(program)") ?? 0);
console.log(`total sampled ${(total / 1e3).toFixed(0)} ms; (idle) ${((self.get("(idle)") ?? 0) / 1e3).toFixed(0)} ms, (program) ${((self.get("(program)") ?? 0) / 1e3).toFixed(0)} ms, (garbage collector) ${((self.get("(garbage collector)") ?? 0) / 1e3).toFixed(0)} ms`);
const top = (m, k) =>
  [...m].sort((a, b) => b[1] - a[1]).slice(0, k)
    .map(([n, d]) => `${(d / 1e3).toFixed(1).padStart(9)} ms ${((100 * d) / total).toFixed(1).padStart(5)} %  ${n}`)
    .join("\n");
console.log("== self ==\n" + top(self, Number(process.env.TOP ?? 45)));
console.log("== inclusive ==\n" + top(incl, Number(process.env.TOP ?? 60)));
