// Watches the Worker isolate's V8 heap under `wrangler dev` through the V8 inspector (Chrome
// DevTools Protocol): what the heap holds, what a full collection frees, and (optionally) which
// constructors hold it.
//
//   node mediator-worker/tools/heap.mjs INSPECTOR_PORT [EVERY_S] [TIMES] [gc] [snapshot] [alloc|promoted]
//
// Start wrangler dev with a fixed inspector port (scripts/worker-dev.sh honours
// TANDEM_INSPECTOR_PORT). Every EVERY_S seconds (default 30), TIMES times (default 10), prints
// one JSON line: `Runtime.getHeapUsage` (V8's used and total heap, the embedder's heap and the
// ArrayBuffer backing stores), the resident memory of every workerd process in WORKERD_PGID's
// process group when that variable is set, and with `gc` the same after
// `HeapProfiler.collectGarbage` (a full, compacting collection). With `snapshot` it also takes a
// heap snapshot at each sample (after the collection) and prints the constructors whose count
// or size changed most since the previous one. With `alloc` it samples every allocation over
// each interval, garbage included (`HeapProfiler.startSampling` keeping objects collected by
// minor and major GCs), and prints the functions that allocated most: what each frame leaves
// for the collector. `promoted` is `alloc` without what the young generation's collections
// freed: what outlived a scavenge, reached the old generation and waits there for a full one.
import { readFileSync, readdirSync } from "node:fs";
import { connect, nameShims, sleep } from "./inspector.mjs";

const args = process.argv.slice(2);
const [port, everyS = "30", times = "10"] = args;
const gc = args.includes("gc");
const snapshot = args.includes("snapshot");
const promoted = args.includes("promoted");
const alloc = args.includes("alloc") || promoted;
if (!port) {
  console.error("usage: heap.mjs INSPECTOR_PORT [EVERY_S] [TIMES] [gc] [snapshot] [alloc|promoted]");
  process.exit(2);
}

/** KiB resident in every workerd process of process group `pgid`. */
function workerdRssKib(pgid) {
  let total = 0;
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      const comm = stat.slice(stat.indexOf("(") + 1, close);
      const group = stat.slice(close + 2).split(" ")[2];
      if (comm !== "workerd" || group !== pgid) continue;
      const rss = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/);
      total += rss ? Number(rss[1]) : 0;
    } catch {}
  }
  return total;
}

let chunks = [];
const { ws, call } = await connect(port, (msg) => {
  if (msg.method === "HeapProfiler.addHeapSnapshotChunk") chunks.push(msg.params.chunk);
});

const mib = (bytes) => Math.round((bytes / 1048576) * 100) / 100;
const usage = async () => {
  const u = await call("Runtime.getHeapUsage");
  return {
    usedMiB: mib(u.usedSize),
    totalMiB: mib(u.totalSize),
    embedderMiB: mib(u.embedderHeapUsedSize ?? 0),
    backingMiB: mib(u.backingStorageSize ?? 0),
  };
};

/** Count and self size per "type:name" in a heap snapshot. */
async function census() {
  chunks = [];
  await call("HeapProfiler.takeHeapSnapshot", { reportProgress: false });
  const snap = JSON.parse(chunks.join(""));
  chunks = [];
  const meta = snap.snapshot.meta;
  const width = meta.node_fields.length;
  const typeAt = meta.node_fields.indexOf("type");
  const nameAt = meta.node_fields.indexOf("name");
  const sizeAt = meta.node_fields.indexOf("self_size");
  const types = meta.node_types[typeAt];
  const byKey = new Map();
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt]];
    const name = type === "string" || type === "concatenated string" || type === "sliced string"
      ? "(string)"
      : String(snap.strings[snap.nodes[i + nameAt]]).slice(0, 60);
    const key = `${type}:${name}`;
    const entry = byKey.get(key) ?? { count: 0, size: 0 };
    entry.count += 1;
    entry.size += snap.nodes[i + sizeAt];
    byKey.set(key, entry);
  }
  return byKey;
}

/** Bytes allocated per function (self) in a sampling heap profile's tree. */
async function allocators(profile) {
  const frames = [];
  const collect = (node) => {
    frames.push(node.callFrame);
    for (const child of node.children) collect(child);
  };
  collect(profile.head);
  await nameShims(call, frames);
  const bytes = new Map();
  const walk = (node) => {
    const f = node.callFrame;
    const name = `${f.functionName || "(anonymous)"} ${f.url.split("/").pop()}:${f.lineNumber}`;
    bytes.set(name, (bytes.get(name) ?? 0) + node.selfSize);
    for (const child of node.children) walk(child);
  };
  walk(profile.head);
  return [...bytes].sort((a, b) => b[1] - a[1]);
}

const started = Date.now();
const pgid = process.env.WORKERD_PGID;
let previous = null;
for (let n = 0; n < Number(times); n++) {
  if (alloc) {
    await call("HeapProfiler.enable");
    await call("HeapProfiler.startSampling", {
      samplingInterval: 1024,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: !promoted,
    });
  }
  await sleep(Number(everyS) * 1000);
  if (alloc) {
    const { profile } = await call("HeapProfiler.stopSampling");
    const rows = await allocators(profile);
    const total = rows.reduce((sum, [, b]) => sum + b, 0);
    console.log(`allocated over ${everyS} s (sampled): ${mib(total)} MiB`);
    for (const [name, b] of rows.slice(0, 20)) console.log(`  ${mib(b)} MiB\t${name}`);
  }
  const line = { s: Math.round((Date.now() - started) / 1000), heap: await usage() };
  if (pgid) line.workerdRssKiB = workerdRssKib(pgid);
  if (gc) {
    await call("HeapProfiler.collectGarbage");
    line.afterGc = await usage();
    if (pgid) line.afterGc.workerdRssKiB = workerdRssKib(pgid);
  }
  console.log(JSON.stringify(line));
  if (snapshot) {
    const now = await census();
    if (previous) {
      const rows = [];
      for (const [key, e] of now) {
        const p = previous.get(key) ?? { count: 0, size: 0 };
        rows.push({ key, dCount: e.count - p.count, dSize: e.size - p.size, count: e.count, size: e.size });
      }
      rows.sort((a, b) => Math.abs(b.dSize) - Math.abs(a.dSize));
      for (const r of rows.slice(0, 15)) console.log(`  Δsize ${r.dSize}\tΔcount ${r.dCount}\t${r.key} (now ${r.count}, ${r.size} B)`);
    } else {
      const rows = [...now].sort((a, b) => b[1].size - a[1].size).slice(0, 15);
      for (const [key, e] of rows) console.log(`  ${e.size} B\t${e.count}\t${key}`);
    }
    previous = now;
  }
}
ws.close();
process.exit(0);
