// One Chrome DevTools Protocol session with the Worker's isolate behind `wrangler dev`'s
// inspector proxy (start wrangler dev with a fixed port: scripts/worker-dev.sh honours
// TANDEM_INSPECTOR_PORT). Shared by profile.mjs and heap.mjs; uses the `ws` package wrangler
// already depends on.
import { createRequire } from "node:module";
const require = createRequire(new URL("../node_modules/", import.meta.url));
const WebSocket = require("ws");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function targets(port) {
  for (let i = 0; i < 7200; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/json`);
      const list = await res.json();
      if (list.length) return list;
    } catch {}
    await sleep(500);
  }
  throw new Error("no inspector target");
}

/**
 * Waits for the Worker's target on `port` and connects. Returns `{ ws, call }`: `call(method,
 * params)` resolves with the method's result; `onEvent(msg)` sees every event.
 */
export async function connect(port, onEvent = () => {}) {
  const list = await targets(port);
  console.error("targets:", list.map((t) => `${t.title} ${t.webSocketDebuggerUrl}`).join("\n  "));
  const target = list.find((t) => /tandem|core:user/.test(t.title + t.webSocketDebuggerUrl)) ?? list[0];
  const ws = new WebSocket(target.webSocketDebuggerUrl, { maxPayload: 1 << 30 });
  await new Promise((r, j) => { ws.once("open", r); ws.once("error", j); });
  let next = 1;
  const pending = new Map();
  ws.on("message", (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
    } else if (msg.method) {
      onEvent(msg);
    }
  });
  const call = (method, params = {}) =>
    new Promise((resolve, reject) => {
      const id = next++;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ id, method, params }));
    });
  return { ws, call };
}

/**
 * Names the anonymous call frames of wasm-bindgen's import shims (functions in an object literal
 * of the bundled index.js) after the `__wbg_…` key on their line. Needs the debugger: enables it.
 */
export async function nameShims(call, frames) {
  await call("Debugger.enable");
  const sources = new Map();
  for (const f of frames) {
    if (f.functionName || !f.url.endsWith("index.js") || !f.scriptId) continue;
    if (!sources.has(f.scriptId)) {
      const { scriptSource } = await call("Debugger.getScriptSource", { scriptId: f.scriptId });
      sources.set(f.scriptId, scriptSource.split("\n"));
    }
    const line = sources.get(f.scriptId)[f.lineNumber] ?? "";
    const keys = line.match(/__wbg_[A-Za-z0-9_]+|__wbindgen_[A-Za-z0-9_]+/g);
    if (keys) f.functionName = `shim ${keys[keys.length - 1].replace(/_[0-9a-f]{16}$/, "")}`;
  }
}
