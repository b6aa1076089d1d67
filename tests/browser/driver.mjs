// The browser end-to-end scenarios (docs/testing.md, "Browser end-to-end"): every device is its
// own Chromium context (so its own IndexedDB) with one page importing `tandem-client` from this
// project's node_modules. Identity X has devices X1, X2 (later X3), identity Y has Y1; all talk to
// the real `wrangler dev` and chat server whose URLs come from the environment.
//
//   TANDEM_WORKER_HTTP  http://host:port of the Worker; the pages' own origin (server.mjs)
//                       forwards the mediator WebSockets and `/directory/*` to it, the tamper
//                       hook is called on it directly
//   TANDEM_SCENARIO     comma-separated scenario names (default: all, in order)
//   TANDEM_E2E_LOGS     directory for each device's console log (default: ./logs)
//   CHROMIUM            the browser (default /usr/bin/chromium; never downloaded)
//
// Prints one line per scenario and, on a failure, what was expected, what was seen and the
// pages' console; exits 1 if a scenario failed.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';

const WORKER_HTTP = need('TANDEM_WORKER_HTTP');
const LOGS = process.env.TANDEM_E2E_LOGS ?? path.join(process.cwd(), 'logs');
// Screenshots of the web app's screens, at desktop and phone width.
const SHOTS = process.env.TANDEM_E2E_SHOTS ?? LOGS;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PASSWORD = 'correct horse battery staple';
const WAIT = 30_000;

function need(name) {
  const v = process.env[name];
  if (!v) { console.error(`${name} is not set (see the header of driver.mjs)`); process.exit(2); }
  return v;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const short = (v, n = 1500) => { const s = JSON.stringify(v); return s && s.length > n ? `${s.slice(0, n)}…(${s.length} chars)` : s; };

/** A scenario failure: what was expected and what was seen. */
class Failure extends Error {
  constructor(expected, seen) { super(`expected: ${expected}\n  seen: ${seen}`); }
}
function check(ok, expected, seen) { if (!ok) throw new Failure(expected, short(seen)); }

/** One device: a browser context (its own IndexedDB) and the page currently showing it. */
class Device {
  constructor(name, context) {
    this.name = name; this.context = context; this.page = null; this.database = 'tandem';
    this.console = []; this.wsUrls = [];
  }
  static async start(browser, name) {
    const d = new Device(name, await browser.newContext());
    await d.newPage();
    return d;
  }
  /** Opens (again) the device page in this context: the same IndexedDB, a fresh JS world. */
  async newPage() {
    const page = await this.context.newPage();
    this.page = page;
    page.on('console', (m) => this.note(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => this.note(`pageerror: ${e.message}`));
    page.on('websocket', (ws) => {
      this.wsUrls.push(ws.url());
      this.note(`websocket open ${ws.url().slice(0, 60)}…`);
      ws.on('close', () => this.note('websocket closed'));
    });
    await page.goto(`${SERVER}/device.html`);
    await page.waitForFunction(() => window.deviceReady === true, null, { timeout: WAIT });
  }
  async reload() {
    this.note('--- reload ---');
    await this.page.reload();
    await this.page.waitForFunction(() => window.deviceReady === true, null, { timeout: WAIT });
  }
  async closePage() { this.note('--- page closed ---'); await this.page.close(); this.page = null; }
  note(line) { this.console.push(`${new Date().toISOString().slice(11, 23)} [${this.name}] ${line}`); }

  eval(fn, arg) { return this.page.evaluate(fn, arg); }
  /** `client[method](...args)`, awaited in the page. */
  call(method, ...args) {
    return this.page.evaluate(([m, a]) => window.device.client[m](...a), [method, args]);
  }
  /** The app's options: the mediator on the page's own origin, the directory by default there too. */
  options(extra) { return { mediatorUrl: SERVER.replace(/^http/, 'ws'), database: this.database, deviceLabel: this.name, ...extra }; }
  async create() { return this.eval((o) => window.device.create(o), this.options()); }
  async open() { return this.eval((o) => window.device.open(o), { database: this.database }); }
  async importBackup(backup, password) {
    return this.eval((o) => window.device.importBackup(o), this.options({ backup, password }));
  }
  /** Polls `probe` (run in the page) until `ok` accepts its value; fails with the last value. */
  async until(what, probe, arg, ok, timeout = WAIT) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const value = await this.page.evaluate(probe, arg);
      if (ok(value)) return value;
      if (Date.now() > deadline) throw new Failure(`${this.name}: ${what} within ${timeout} ms`, short(value));
      await sleep(100);
    }
  }
  online() { return this.until('online', () => ({ online: window.device.online, last: window.device.events('connection').slice(-3) }), null, (v) => v.online); }
  messages(conversation) { return this.eval((c) => window.device.client.messages(c), conversation); }
  events(name) { return this.eval((n) => window.device.events(n), name); }
  /** hex(DGPK.public) from the mediator URL this device last opened (`/{prefix}/{hex(ClientUrlInfo)}`). */
  groupHex() {
    const url = this.wsUrls.at(-1) ?? '';
    const info = new URL(url).pathname.split('/')[2] ?? '';
    check(info.startsWith('0a20'), 'a ClientUrlInfo starting with field 1 (32 bytes)', url);
    return info.slice(4, 68);
  }
}

/** What must be equal between two devices' views of a conversation. */
const view = (list) => list.map((m) => ({ key: m.key, text: m.text, outgoing: m.outgoing, state: m.state }));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
/** Devices, contacts, groups in a comparable form. */
const contactView = (cs) => cs.map(({ identity, firstName, lastName, nickname, publicKey }) => ({ identity, firstName, lastName, nickname, publicKey }));
const groupView = (gs) => gs.map(({ id, name, members, userState, creator }) => ({ id, name, members: [...members].sort(), userState, creator }));
function snapshot(d) {
  return d.eval(() => {
    const c = window.device.client;
    return { contacts: c.contacts(), groups: c.groups(), settings: c.settings(), nickname: c.nickname() };
  }).then((s) => ({ contacts: contactView(s.contacts), groups: groupView(s.groups), settings: s.settings, nickname: s.nickname }));
}

/** Where two values differ: for lists, the lengths and the first differing entries. */
function difference(na, va, nb, vb) {
  if (!Array.isArray(va) || !Array.isArray(vb)) return `${na}: ${short(va, 1200)}\n  ${nb}: ${short(vb, 1200)}`;
  let i = 0;
  while (i < va.length && i < vb.length && same(va[i], vb[i])) i++;
  return `${na} has ${va.length} entries, ${nb} ${vb.length}; the first difference is at index ${i}:\n` +
    `  ${na}[${i}..]: ${short(va.slice(i, i + 3), 800)}\n  ${nb}[${i}..]: ${short(vb.slice(i, i + 3), 800)}`;
}

/** Waits until two devices show the same value of `read` (read on both at each poll). */
async function converge(what, a, b, read, ok = () => true, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const [va, vb] = await Promise.all([read(a), read(b)]);
    if (same(va, vb) && ok(va)) return va;
    if (Date.now() > deadline) {
      throw new Failure(`${what}: ${a.name} and ${b.name} equal within ${timeout} ms`, difference(a.name, va, b.name, vb));
    }
    await sleep(150);
  }
}

// ---------------------------------------------------------------------------------------------

const world = {};
let SERVER;
let server;

async function setup(browser) {
  const X1 = world.X1 = await Device.start(browser, 'X1');
  const Y1 = world.Y1 = await Device.start(browser, 'Y1');
  world.X = (await X1.create()).identity;
  world.Y = (await Y1.create()).identity;
  check(/^[0-9A-Z*]{8}$/.test(world.X) && world.X !== world.Y, 'two new 8-character identities', [world.X, world.Y]);
  await X1.online();
  await Y1.online();
  const backup = await X1.call('exportBackup', PASSWORD);
  world.backup = backup;
  const X2 = world.X2 = await Device.start(browser, 'X2');
  const x2 = await X2.importBackup(backup, PASSWORD);
  check(x2.identity === world.X, `X2 is identity ${world.X}`, x2);
  await X2.online();
  await X1.call('addContact', world.Y);
  const hasY = (cs) => cs.some((c) => c.identity === world.Y);
  await X1.until(`contact ${world.Y} (directory lookup)`, () => window.device.client.contacts(), null, hasY);
  await X2.until(`contact ${world.Y} reflected from X1`, () => window.device.client.contacts(), null, hasY);
}

const SCENARIOS = {
  /** X1 → Y: X2 shows it sent, Y1 receives it, Y1 reads it, both X devices show "read". */
  async send_receive_read() {
    const { X1, X2, Y1, X, Y } = world;
    const key = await X1.call('sendText', `contact/${Y}`, 'hello from X1');
    world.firstKey = key;
    check(key.startsWith(`${X}/`), `a message key ${X}/HEXID`, key);
    const find = ([c, k]) => (window.device.client.messages(c).find((m) => m.key === k) ?? null);
    const got = await Y1.until(`message ${key} from ${X}`, find, [`contact/${X}`, key], (m) => m !== null);
    check(got.text === 'hello from X1' && !got.outgoing && got.sender === X, 'the text, incoming, from X', got);
    const sent = ['sent', 'delivered', 'read'];
    const onX2 = await X2.until(`outgoing ${key} as sent`, find, [`contact/${Y}`, key], (m) => m && sent.includes(m.state));
    check(onX2.outgoing && onX2.text === 'hello from X1', 'the same outgoing message on X2', onX2);
    await X1.until(`${key} sent`, find, [`contact/${Y}`, key], (m) => m && sent.includes(m.state));
    const marked = await Y1.call('markRead', `contact/${X}`);
    check(marked >= 1, 'markRead marks at least the one message', marked);
    for (const d of [X1, X2]) await d.until(`${key} read`, find, [`contact/${Y}`, key], (m) => m?.state === 'read');
    for (const d of [X1, X2]) {
      const states = await d.events('messageState');
      check(states.some((s) => s.key === key && s.state === 'read' && s.conversation === `contact/${Y}`),
        `a messageState event (read) for ${key} on ${d.name}`, states);
    }
  },

  /** A reload keeps the state and reconnects as the same slot. */
  async reload() {
    const { X1, Y } = world;
    const before = await X1.eval(() => ({ id: window.device.client.deviceId }));
    const messagesBefore = view(await X1.messages(`contact/${Y}`));
    const devicesBefore = await X1.call('listDevices');
    await X1.reload();
    const opened = await X1.open();
    check(opened.deviceId === before.id && opened.identity === world.X, `the same device ${before.id}`, opened);
    check(same(view(await X1.messages(`contact/${Y}`)), messagesBefore), 'the same conversation after the reload',
      await X1.messages(`contact/${Y}`));
    await X1.online();
    const devices = await X1.call('listDevices');
    const ids = (ds) => ds.map((d) => d.id).sort();
    check(same(ids(devices), ids(devicesBefore)), `the same slots as before (${ids(devicesBefore)})`, devices);
    check(devices.filter((d) => d.thisDevice).map((d) => d.id).join() === before.id, 'this device is the old slot', devices);
  },

  /** X2 offline while X1 and Y1 exchange 200 messages; X2 catches up exactly. */
  async offline_catch_up() {
    const { X1, X2, Y1, X, Y } = world;
    await X2.closePage();
    for (let i = 0; i < 100; i++) {
      await X1.call('sendText', `contact/${Y}`, `x${i}`);
      await Y1.call('sendText', `contact/${X}`, `y${i}`);
    }
    const texts = (list) => new Set(list.map((m) => m.text));
    const all = (list) => { const t = texts(list); for (let i = 0; i < 100; i++) if (!t.has(`x${i}`) || !t.has(`y${i}`)) return false; return true; };
    await X1.until('all 200 messages on X1', (c) => window.device.client.messages(c), `contact/${Y}`, all, 60_000);
    await Y1.until('all 200 messages on Y1', (c) => window.device.client.messages(c), `contact/${X}`, all, 60_000);
    await X2.newPage();
    await X2.open();
    await X2.online();
    const progress = await X2.events('syncProgress');
    check(progress.length > 0 && Math.max(...progress.map((p) => p.total)) >= 200,
      'syncProgress events while X2 drains a queue of at least 200 reflections', progress);
    const last = progress.at(-1);
    check(last.received === last.total, 'the last syncProgress reports the whole queue', progress.slice(-3));
    await converge('the conversation (order, ids, states)', X1, X2, (d) => d.messages(`contact/${Y}`).then(view),
      (v) => v.length >= 201, 60_000);
  },

  /** Contact, group, settings and profile changes on X1 reach X2; concurrent edits converge. */
  async sync_changes() {
    const { X1, X2, Y1, Y } = world;
    await X1.call('renameContact', Y, 'Yolanda', 'Tester');
    await X2.until('contact renamed to Yolanda Tester', (y) => window.device.client.contacts().find((c) => c.identity === y), Y,
      (c) => c?.firstName === 'Yolanda' && c?.lastName === 'Tester');
    const gid = await X1.call('createGroup', 'Team', [Y]);
    world.groupId = gid;
    const findGroup = (g) => window.device.client.groups().find((x) => x.id === g) ?? null;
    const g2 = await X2.until(`group ${gid} on X2`, findGroup, gid, (g) => g !== null);
    check(g2.name === 'Team' && g2.members.includes(Y), 'group Team with member Y on X2', g2);
    await Y1.until(`group ${gid} on Y1 (member)`, findGroup, gid, (g) => g !== null && g.name === 'Team');
    const settings = await X1.eval(() => window.device.client.settings());
    await X1.call('updateSettings', { typingIndicators: !settings.typingIndicators });
    await X2.until('typingIndicators flipped', () => window.device.client.settings(), null,
      (s) => s.typingIndicators === !settings.typingIndicators);
    await X1.call('setNickname', 'Xavier');
    await X2.until('nickname Xavier', () => window.device.client.nickname(), null, (n) => n === 'Xavier');
    // Both devices change the same contact at once.
    await Promise.all([X1.call('renameContact', Y, 'One', 'Same'), X2.call('renameContact', Y, 'Two', 'Same')]);
    const read = (d) => d.eval((y) => window.device.client.contacts().find((c) => c.identity === y), Y)
      .then((c) => c && { firstName: c.firstName, lastName: c.lastName });
    await converge('the concurrently renamed contact', X1, X2, read, (c) => ['One', 'Two'].includes(c?.firstName));
    await sleep(2000);
    await converge('the concurrently renamed contact, 2 s later', X1, X2, read, (c) => ['One', 'Two'].includes(c?.firstName), 1000);
    await converge('contacts, groups, settings, nickname', X1, X2, snapshot);
  },

  /** X3 joins from the ID backup and gets the state and recent history from a sibling. */
  async join_from_backup(browser) {
    const { X1, X2, Y } = world;
    const X3 = world.X3 = await Device.start(browser, 'X3');
    const backup = await X1.call('exportBackup', PASSWORD);
    const wrong = await X3.eval((o) => window.device.failure(() => window.TandemClient.importBackup(o)),
      X3.options({ backup, password: 'not the password' }));
    check(wrong?.isError && /wrong backup password/.test(wrong.message), 'an Error saying "wrong backup password"', wrong);
    const x3 = await X3.importBackup(backup, PASSWORD);
    check(x3.identity === world.X, `X3 is ${world.X}`, x3);
    world.x3Id = x3.deviceId;
    await X3.online();
    await converge('contacts, groups, settings, nickname', X1, X3, snapshot);
    // The sibling that answered reports how many messages it sent; X3 then shows exactly the
    // newest that many of X1's conversation (ids, texts, directions, states, order).
    const deadline = Date.now() + WAIT;
    let answered = null;
    let reports = [];
    while (answered === null && Date.now() < deadline) {
      reports = [...await X1.events('newDeviceSync'), ...await X2.events('newDeviceSync')];
      answered = reports.find((s) => s.deviceId === x3.deviceId) ?? null;
      if (answered === null) await sleep(100);
    }
    check(answered !== null && answered.messages > 0,
      `a sibling reports newDeviceSync for ${x3.deviceId} with messages within ${WAIT} ms`, reports);
    const n = answered.messages;
    await converge(`the newest ${n} messages`, X1, X3, async (d) => {
      const all = view(await d.messages(`contact/${Y}`));
      return d === X3 ? all : all.slice(-n);
    }, (v) => v.length > 0);
  },

  /** A reflected envelope damaged by the mediator is rejected, acked away, and nothing breaks. */
  async tampered_reflection() {
    const { X1, X2, Y1, X, Y } = world;
    // Only X2 may receive X1's next reflection: the one-shot flip hits the first copy sent.
    if (world.X3?.page) {
      await world.X3.closePage();
      await X1.until(`X3 (${world.x3Id}) shown offline`, () => window.device.client.listDevices(), null,
        (ds) => ds.every((d) => d.id !== world.x3Id || d.online === false));
    }
    const hex = X1.groupHex();
    const armed = await fetch(`${WORKER_HTTP}/_dev/group/${hex}/tamper-next`, { method: 'POST' });
    check(armed.status === 200, 'the tamper hook answers 200 (TANDEM_DEV_ROUTES on)', `${armed.status} ${await armed.text()}`);
    const bad = await X1.call('sendText', `contact/${Y}`, 'tampered');
    world.tamperedKey = bad;
    await X2.until('a dropped event: undecryptableEnvelope', () => window.device.events('dropped'), null,
      (l) => l.some((e) => e.reason === 'undecryptableEnvelope'));
    const find = ([c, k]) => (window.device.client.messages(c).find((m) => m.key === k) ?? null);
    await Y1.until('the message itself still reaches Y1', find, [`contact/${X}`, bad], (m) => m !== null);
    const good = await X1.call('sendText', `contact/${Y}`, 'after the tampering');
    await X2.until(`${good} on X2`, find, [`contact/${Y}`, good], (m) => m !== null);
    const without = (d) => d.messages(`contact/${Y}`).then((l) => view(l.filter((m) => m.key !== bad)));
    await converge('the conversation apart from the tampered message', X1, X2, without);
    check((await X2.messages(`contact/${Y}`)).every((m) => m.key !== bad), `X2 does not show ${bad}`, await X2.messages(`contact/${Y}`));
    // Reconnect: the rejected envelope was acked, so it does not come again.
    await X2.closePage();
    await X2.newPage();
    await X2.open();
    await X2.online();
    await sleep(1500);
    const after = await X2.messages(`contact/${Y}`);
    check(after.every((m) => m.key !== bad), `${bad} not delivered again after reconnecting`, after.slice(-3));
    check(after.some((m) => m.key === good), `${good} still there`, after.slice(-3));
    await converge('contacts, groups, settings, nickname', X1, X2, snapshot);
    const errors = await X2.events('error');
    check(errors.length === 0, 'no error events on X2', errors);
  },

  /** Every connection cut without a close frame: the devices report it, reconnect on their
   * timers (no reload, no call) and messages flow again both ways. */
  async connection_lost() {
    const { X1, X2, Y1, X, Y } = world;
    const open = [X1, X2, Y1];
    const before = await Promise.all(open.map((d) => d.events('connection').then((l) => l.length)));
    const cut = server.cutWebSockets();
    check(cut >= open.length, `at least ${open.length} forwarded WebSockets cut`, cut);
    for (const [i, d] of open.entries()) {
      const seen = await d.until('a disconnect with retryAt, then online again', (n) => window.device.events('connection').slice(n), before[i],
        (l) => { const k = l.findIndex((e) => e.state === 'disconnected'); return k >= 0 && l.slice(k + 1).some((e) => e.state === 'online'); });
      const down = seen.find((e) => e.state === 'disconnected');
      check(typeof down.retryAt === 'number' && down.stopped === undefined, 'the disconnect says when it retries', down);
    }
    const find = ([c, k]) => (window.device.client.messages(c).find((m) => m.key === k) ?? null);
    const fromX = await X1.call('sendText', `contact/${Y}`, 'after the cut (X1)');
    await Y1.until(`${fromX} on Y1`, find, [`contact/${X}`, fromX], (m) => m !== null);
    const fromY = await Y1.call('sendText', `contact/${X}`, 'after the cut (Y1)');
    await Y1.until(`${fromX} on Y1`, find, [`contact/${X}`, fromX], (m) => m !== null);
    for (const d of [X1, X2]) await d.until(`${fromY} on ${d.name}`, find, [`contact/${Y}`, fromY], (m) => m !== null);
    // X2 never shows the message whose reflection was tampered with (if that scenario ran).
    await converge('the conversation', X1, X2,
      (d) => d.messages(`contact/${Y}`).then((l) => view(l.filter((m) => m.key !== world.tamperedKey))));
  },

  /**
   * The leader's tab closes in the middle of the flow (Y1 writing to X, X's other device writing
   * to Y) and opens again: every text shows on X1, X2 and Y1, each exactly once. Counted like a
   * row of RELIABILITY.md's fault matrix (one `reliability-row` line per run);
   * `TANDEM_LEADER_CLOSE_RUNS=N` repeats it N times (default 1).
   */
  async leader_closed_mid_flow() {
    const { X1, X2, Y1, X, Y } = world;
    const runs = Number(process.env.TANDEM_LEADER_CLOSE_RUNS ?? 1);
    const leads = async (d) => (await d.events('leader')).at(-1)?.leader === true;
    for (let run = 0; run < runs; run++) {
      // The leader of this run: the one whose last leader event says so (after a reopen the
      // role may have moved).
      let leader = null;
      for (let tries = 0; tries < 100 && leader === null; tries++) {
        for (const d of [X1, X2]) if (leader === null && await leads(d)) leader = d;
        if (leader === null) await sleep(100);
      }
      check(leader !== null, 'X1 or X2 leads (its last leader event)', [await X1.events('leader'), await X2.events('leader')]);
      const other = leader === X1 ? X2 : X1;
      const texts = [];
      for (let i = 0; i < 30; i++) {
        if (i === 15) await leader.closePage();
        for (const [d, to, t] of [[Y1, `contact/${X}`, `mid${run}-y${i}`], [other, `contact/${Y}`, `mid${run}-x${i}`]]) {
          await d.call('sendText', to, t);
          texts.push(t);
        }
        await sleep(30);
      }
      await leader.newPage();
      await leader.open();
      await leader.online();
      const healed = Date.now();
      let delivered = 0; let duplicates = 0; let lost = 0; let settle = 0;
      for (const [d, conv] of [[X1, `contact/${Y}`], [X2, `contact/${Y}`], [Y1, `contact/${X}`]]) {
        const probe = (c) => window.device.client.messages(c).map((m) => m.text);
        let shown;
        try {
          shown = await d.until(`all ${texts.length} texts on ${d.name}`, probe, conv,
            (ts) => { const k = new Set(ts); return texts.every((t) => k.has(t)); }, 60_000);
        } catch (err) {
          if (!(err instanceof Failure)) throw err;
          shown = await d.eval(probe, conv);
        }
        settle = Math.max(settle, Date.now() - healed);
        for (const t of texts) {
          const n = shown.filter((u) => u === t).length;
          if (n === 0) lost++; else delivered++;
          if (n > 1) duplicates += n - 1;
        }
      }
      const row = { row: 'leader tab closed mid-flow (browser)', run, leader: leader.name, sent: texts.length, delivered, duplicates, lost, settle_ms: settle };
      console.log(`reliability-row ${JSON.stringify(row)}`);
      check(lost === 0 && duplicates === 0, 'every text on X1, X2 and Y1, none twice', row);
    }
  },

  /** The device list names every sibling with its label; a dropped device is gone from it and,
   * opened again, is refused by the mediator and stops (it does not retry). */
  async devices() {
    const { X1, X2 } = world;
    const own = await X1.eval(() => window.device.client.deviceId);
    const x2 = await X2.eval(() => window.device.client.deviceId);
    const list = await X1.call('listDevices');
    const byId = Object.fromEntries(list.map((d) => [d.id, d]));
    check(byId[own]?.thisDevice && byId[own]?.label === 'X1' && byId[x2]?.label === 'X2' && byId[x2]?.online === true,
      'X1 (this device) and X2 (online) with their labels', list);
    if (!world.x3Id) return;
    check(byId[world.x3Id]?.label === 'X3', 'X3 with its label', list);
    await X1.call('dropDevice', world.x3Id);
    await X1.until(`${world.x3Id} gone from the device list`, () => window.device.client.listDevices(), null,
      (ds) => ds.every((d) => d.id !== world.x3Id));
    const X3 = world.X3;
    if (!X3.page) await X3.newPage();
    await X3.open();
    const stopped = await X3.until('a disconnect that stops (4115, no retry)', () => window.device.events('connection'), null,
      (l) => l.some((e) => e.state === 'disconnected' && e.stopped));
    const last = stopped.find((e) => e.state === 'disconnected' && e.stopped);
    check(last.code === 4115 && last.retryAt === undefined, 'close code 4115 and no retryAt', last);
    await X3.closePage();
    const after = await X1.call('listDevices');
    check(after.every((d) => d.id !== world.x3Id), 'the dropped slot did not come back', after);
  },

  /** `renameDevice` reconnects at once (d2m changes a label only with a new ClientHello): when
   * its promise resolves, a sibling's `listDevices` already names the new label; the renamed
   * device closed with 1000, is online again and still sends; a reload keeps the label. */
  async rename_device() {
    const { X1, X2, Y } = world;
    await X2.online();
    const x2 = await X2.eval(() => window.device.client.deviceId);
    const before = (await X2.events('connection')).length;
    await X2.call('renameDevice', 'X2 renamed');
    const list = await X1.call('listDevices');
    check(list.find((d) => d.id === x2)?.label === 'X2 renamed', 'the new label on X1 right after the promise', list);
    const events = (await X2.events('connection')).slice(before);
    check(events.some((e) => e.state === 'disconnected' && e.code === 1000) && events.some((e) => e.state === 'connected'),
      'X2 closed with 1000 and connected again before the promise resolved', events);
    await X2.online();
    const key = await X2.call('sendText', `contact/${Y}`, 'after the rename');
    const find = ([c, k]) => (window.device.client.messages(c).find((m) => m.key === k) ?? null);
    await X1.until(`${key} on X1`, find, [`contact/${Y}`, key], (m) => m !== null);
    await X2.reload();
    await X2.open();
    await X2.online();
    const again = await X1.call('listDevices');
    check(again.find((d) => d.id === x2)?.label === 'X2 renamed', 'the label survives a reload', again);
    // close() while renameDevice and listDevices wait: both promises settle (reject), none hangs.
    const settled = await X2.eval(async () => {
      const c = window.device.client;
      const outcome = (p) => p.then(() => 'resolved', (e) => `rejected: ${e.message}`);
      const waiting = Promise.all([outcome(c.renameDevice('X2 closing')), outcome(c.listDevices())]);
      c.close();
      return Promise.race([waiting, new Promise((r) => setTimeout(() => r('still pending after 5 s'), 5000))]);
    });
    check(Array.isArray(settled) && settled.every((o) => o.startsWith('rejected')),
      'renameDevice and listDevices reject when the client is closed', settled);
    await X2.reload();
    await X2.open();
    await X2.online();
  },

  /** Two identities in one browser context (two databases, one origin): each opens its own. */
  async two_in_one_browser() {
    const { Y1, Y } = world;
    const Z1 = world.Z1 = new Device('Z1', Y1.context);
    Z1.database = 'tandem-z';
    await Z1.newPage();
    const z = await Z1.create();
    check(z.identity !== Y, 'a different identity in the same context', z);
    await Z1.online();
    await Z1.call('addContact', Y);
    await Z1.until(`contact ${Y}`, () => window.device.client.contacts(), null, (cs) => cs.length === 1);
    const key = await Z1.call('sendText', `contact/${Y}`, 'from the same browser');
    const find = ([c, k]) => (window.device.client.messages(c).find((m) => m.key === k) ?? null);
    await Y1.until(`${key} from ${z.identity}`, find, [`contact/${z.identity}`, key], (m) => m !== null);
    // Reloading one page opens its own database, not the other's.
    await Z1.reload();
    const again = await Z1.open();
    check(again.identity === z.identity && again.deviceId === z.deviceId, `Z1 opens as ${z.identity}`, again);
    check((await Z1.messages(`contact/${Y}`)).some((m) => m.key === key), 'Z1 kept its message', await Z1.messages(`contact/${Y}`));
    check(await Y1.eval(() => window.device.client.identity) === Y, 'Y1 is still Y', null);
    const taken = await Z1.eval((o) => window.device.failure(() => window.TandemClient.create(o)), Z1.options({ database: 'tandem' }));
    check(taken?.isError && /already holds identity/.test(taken.message), 'creating into a database that holds Y is refused', taken);
  },

  /** One device in two tabs (one database, so one device id): the mediator closes the older
   * connection with 4112 and the close code reaches the core, which stops that page (41xx: no
   * retry, so the two tabs do not take the slot from each other in turns) while the newer page
   * stays online; closing the newer one and reloading the older makes it the device again. */
  async device_id_reused() {
    const { X1, X, Y } = world;
    await X1.online();
    const before = (await X1.events('connection')).length;
    const X1b = world.X1b = new Device('X1b', X1.context);
    await X1b.newPage();
    const opened = await X1b.open();
    await X1b.online();
    const events = await X1.until('X1 stopped by the newer tab (4112)', () => window.device.events('connection'), null,
      (l) => l.slice(before).some((e) => e.state === 'disconnected'));
    const down = events.slice(before).find((e) => e.state === 'disconnected');
    check(down.code === 4112 && down.retryAt === undefined && typeof down.stopped === 'string',
      'X1 disconnected with 4112, stopped, no retryAt', down);
    await sleep(2000);
    const later = (await X1.events('connection')).slice(before);
    check(later.filter((e) => e.state === 'connecting').length === 0, 'the stopped page does not reconnect by itself', later);
    check(await X1b.eval(() => window.device.online), 'the newer page is still online', opened);
    await X1b.closePage();
    await X1.reload();
    await X1.open();
    await X1.online();
    const key = await X1.call('sendText', `contact/${Y}`, 'after the other tab');
    const find = ([c, k]) => (window.device.client.messages(c).find((m) => m.key === k) ?? null);
    await world.Y1.until(`${key} on Y1`, find, [`contact/${X}`, key], (m) => m !== null);
  },

  /** The web app (www/, served by the Worker itself: page, mediator and directory on one origin)
   * used as a person would, through its UI: two identities are created, a text goes from one to
   * the other and comes back read; a second device of the first identity is linked from the ID
   * backup (a wrong password is shown as such) and receives the history. Needs
   * `scripts/build-www.sh` to have run (the Rust test does). */
  async web_app(browser) {
    const { open, visible, consoles, close, framesSent } = webApp(browser);
    fs.mkdirSync(SHOTS, { recursive: true });
    const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, `web-app-${name}.png`) });
    const bothWidths = async (page, name) => {
      await shot(page, `${name}-1280`);
      await page.setViewportSize({ width: 390, height: 844 });
      await shot(page, `${name}-390`);
      await page.setViewportSize({ width: 1280, height: 800 });
    };
    try {
      const a = await open('a');
      const b = await open('b');
      // The page that holds the secret key cannot be framed (a header: `www/_headers`).
      const served = (await a.request.get(`${WORKER_HTTP}/`)).headers();
      check(/frame-ancestors 'none'/.test(served['content-security-policy'] ?? '') && served['x-content-type-options'] === 'nosniff',
        'the app served with a Content-Security-Policy header (frame-ancestors \'none\') and nosniff', served);
      await visible(a, '#setup:not([hidden])', 'the setup screen on a fresh device a');
      await bothWidths(a, 'setup');
      const [idA, idB] = await createTwo(a, b, visible);
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      await a.fill('#composer-text', 'hello through the web app');
      await a.click('#composer button');
      await visible(b, '#conversations li', 'the new conversation on b');
      await b.click('#conversations li');
      await visible(b, '#messages li:has-text("hello through the web app")', 'the text on b');
      await visible(a, '#messages li.mine .meta:has-text("read")', 'the read mark on a (b showed the chat)');

      await a.click('#open-settings');
      // Settings open and idle: the device list is asked for once, not in a loop.
      await visible(a, '#devices li:has-text("this device")', 'this device in the settings\' device list');
      const before = framesSent.get(a);
      await a.waitForTimeout(10_000);
      const idle = framesSent.get(a) - before;
      check(idle <= 5, 'at most a handful of frames sent in 10 s with Settings open and idle', idle);
      await bothWidths(a, 'settings');
      await a.fill('#backup-password', PASSWORD);
      await a.click('#export-backup');
      const backup = await a.inputValue('#backup-out');
      check(backup.length === 80 + 19, 'an 80-character backup in groups of 4', backup);
      await a.click('dialog button[value=close]');
      const a2 = await open('a2');
      await visible(a2, '#setup:not([hidden])', 'the setup screen on the new device');
      await a2.fill('#import-backup', backup);
      await a2.fill('#import-password', 'not the password');
      await a2.click('#import-form button');
      await visible(a2, '#setup-error:has-text("wrong backup password")', 'the wrong-password message');
      await a2.fill('#import-password', PASSWORD);
      await a2.click('#import-form button');
      await visible(a2, '#main:not([hidden])', 'the linked device');
      check(await a2.textContent('#me-identity') === idA, `the linked device is ${idA}`, await a2.textContent('#me-identity'));
      await visible(a2, '#conversations li', 'the conversation synced to the linked device');
      await a2.click('#conversations li');
      await visible(a2, '#messages li:has-text("hello through the web app")', 'the history on the linked device');
      const syncShown = await a2.evaluate(() => window.__syncShown);
      check(syncShown.length === 0, 'no sync line flashing while the linked device catches up (under a second)', syncShown);
      await a2.fill('#composer-text', 'from the linked device');
      await a2.click('#composer button');
      await visible(a, '#messages li:has-text("from the linked device")', 'the linked device\'s text reflected to a');
      await visible(b, '#messages li:has-text("from the linked device")', 'the linked device\'s text on b');

      // A 10 000-character paste: offered as several messages, nothing cut off.
      const long = `BEGIN ${'lorem ipsum dolor sit amet '.repeat(370)}END!`; // 10 000 characters
      let asked = null;
      a.once('dialog', (d) => { asked = d.message(); d.accept(); });
      await a.fill('#composer-text', long);
      await a.click('#composer button');
      await visible(b, '#messages li:has-text("dolor sit amet END!")', 'the end of the long paste on b');
      check(/too long for one message.*as 2 messages/.test(asked ?? ''), 'asked before sending a long paste in parts', asked);
      const texts = await b.evaluate(() => [...document.querySelectorAll('#messages li')].map((li) => li.firstChild.textContent));
      const from = texts.findIndex((t) => t.startsWith('BEGIN '));
      check(from >= 0 && texts.slice(from).join('') === long, 'the long paste whole on b, in order, in 2 messages', texts.slice(from).map((t) => t.length));
      check(await a.inputValue('#composer-text') === '', 'the composer empty after sending every part', await a.inputValue('#composer-text'));

      // Phone width (390 × 844): the list and the chat are two screens; by keyboard too.
      await shot(b, 'chat-1280');
      await b.setViewportSize({ width: 390, height: 844 });
      await shot(b, 'chat-390');
      const send = await b.locator('#composer button').boundingBox();
      check(send !== null && send.x >= 0 && send.x + send.width <= 390, 'Send inside a 390 px wide screen', send);
      const pane = await b.locator('#messages').boundingBox();
      check(pane !== null && pane.width >= 350, 'the messages use the screen\'s width at 390 px', pane);
      check(!(await b.isVisible('#conversations')), 'the conversation list hidden while a chat is open at 390 px', true);
      await b.click('#chat-back');
      await visible(b, '#conversations li', 'the conversation list after "back" at 390 px');
      check(!(await b.isVisible('#messages')), 'the chat hidden on the list screen at 390 px', true);
      await shot(b, 'list-390');
      const focused = await b.evaluate(() => document.activeElement?.closest('#conversations li') !== null);
      check(focused, 'focus back on the conversation after "back"', focused);
      await b.keyboard.press('Enter');
      await visible(b, '#messages li:has-text("from the linked device")', 'the chat opened with Enter at 390 px');
      await b.keyboard.press('Escape');
      await visible(b, '#conversations li', 'the list again after Escape');
      await b.setViewportSize({ width: 1280, height: 800 });
      const errors = consoles.filter((l) => /pageerror|\] error:/.test(l));
      check(errors.length === 0, 'no page errors or console errors', errors);
    } finally {
      await close();
    }
  },

  /** The clock notice of protocol version 23 (docs/protocol.md): the web app's device a runs with
   * `Date` 30 minutes ahead (Playwright init script), b with the true time; both log in to the
   * chat server, whose login-ack carries its time. a shows the notice in the toasts' live region
   * with its user-facing text; b never shows one, although its CSP login is proven by receiving
   * a's text. Every toast either page shows is recorded from the moment it is added (they go away
   * after a few seconds). */
  async clock_notice(browser) {
    const shiftMinutes = 30;
    const { open, visible, consoles, close } = webApp(browser);
    try {
      const a = await open('clock-a', shiftMinutes * 60_000);
      const b = await open('clock-b');
      check(await a.evaluate(() => Date.now() - performance.timeOrigin - performance.now()) > 29 * 60_000,
        'device a\'s Date runs 30 minutes ahead', await a.evaluate(() => new Date().toISOString()));
      const [, idB] = await createTwo(a, b, visible);
      const notice = `This device's clock is ${shiftMinutes} minutes ahead of the server's. `
        + 'Please set the correct time, or message times will be off.';
      await visible(a, `#toasts[aria-live] .toast.error:has-text("clock is ${shiftMinutes} minutes ahead")`, 'the clock notice on a');
      const onA = await toastsOf(a);
      const clockA = onA.filter((t) => t.text.includes('clock'));
      check(clockA.length >= 1 && clockA.every((t) => t.text === notice && t.live === 'polite' && t.error),
        `a's clock notice reads "${notice}", shown as an error in the polite live region`, onA);

      // b's CSP login is done once it has received a message from the chat server.
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      await a.fill('#composer-text', 'the time on b is right');
      await a.click('#composer button');
      await visible(b, '#conversations li', 'a\'s conversation on b (b is logged in to the chat server)');
      const onB = await toastsOf(b);
      check(!onB.some((t) => /clock/i.test(t.text)), 'no clock notice on b, whose clock is right', onB);
      const errors = consoles.filter((l) => /pageerror|\] error:/.test(l));
      check(errors.length === 0, 'no page errors or console errors', errors);
    } finally {
      await close();
    }
  },

  /** Issue 15's words trap: the setup screen, the main screen and Settings of the web app show no
   * developer words (database names, "leader", sync counters, API names, close codes), and a
   * linked device that comes back to three queued changes catches up without flashing a sync
   * line. */
  async web_app_words(browser) {
    await withWebApp(browser, async ({ open, tab, visible }) => {
      const a = await open('words-a');
      await visible(a, '#setup:not([hidden])', 'the setup screen');
      await noDevWords(a, 'the setup screen');
      await a.click('#create-form button');
      await visible(a, '#conn.online', 'device online');
      check(await a.textContent('#conn') === 'Online', 'the connection state in words ("Online")', await a.textContent('#conn'));
      await noDevWords(a, 'the main screen');
      await a.click('#open-settings');
      await visible(a, '#devices li:has-text("this device")', 'this device in Settings');
      await noDevWords(a, 'Settings');
      // The Content-Security-Policy applies: an inline script added to the page does not run.
      const blocked = await a.evaluate(() => new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', (e) => resolve(e.violatedDirective), { once: true });
        const script = document.createElement('script');
        script.textContent = 'window.__inlineRan = true;';
        document.body.append(script);
        setTimeout(() => resolve(window.__inlineRan ? 'ran' : 'no violation reported'), 1000);
      }));
      check(blocked.startsWith('script-src'), 'an inline script refused by the page\'s Content-Security-Policy', blocked);
      await a.click('dialog button[value=close]');
      // A device that comes back to a queue of changes catches up without flashing a counter.
      const a2 = await linkSecond(a, open, visible, 'words-a2');
      await a2.close();
      for (const nickname of ['One', 'Two', 'Three']) {
        await a.click('#open-settings');
        await a.fill('#set-nickname', nickname);
        await a.click('#save-settings');
        await visible(a, `#me-nickname:has-text("${nickname}")`, `nickname ${nickname} on a`);
      }
      const again = await tab(a2, 'words-a2');
      await visible(again, '#me-nickname:has-text("Three")', 'the queued changes on a2 after it comes back');
      const syncShown = await again.evaluate(() => window.__syncShown);
      check(syncShown.length === 0, 'no sync counter flashing while a2 catches up (under a second)', syncShown);
      await noDevWords(again, 'the main screen after catching up');
      // The one CSP violation expected is the test's own inline script.
      return (l) => !l.includes('Executing inline script violates');
    });
  },

  /** Issue 15's contact traps: "Add contact" with an ID the directory does not know says so
   * next to the field and opens no chat; the ID of an existing contact opens its chat. */
  async web_app_add_contact(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('add-a');
      const b = await open('add-b');
      const [, idB] = await createTwo(a, b, visible);
      await a.fill('#new-chat-id', 'ZZZZZZZZ');
      await a.click('#new-chat button');
      await visible(a, '#new-chat-status:has-text("No Tandem ID ZZZZZZZZ exists")', 'the sentence for an ID that does not exist', 10_000);
      check(!(await a.isVisible('#chat')), 'no chat opened for an ID that does not exist', await a.textContent('#chat-title'));
      check(await a.locator('#conversations li').count() === 0, 'no conversation for it in the list', await a.textContent('#conversations'));
      await bothWidths(a, 'unknown-id');
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      await visible(a, `#chat:not([hidden]) #chat-title:has-text("${idB}")`, 'the chat with b after adding b');
      await a.fill('#composer-text', 'hi b');
      await a.click('#composer button');
      await a.keyboard.press('Escape');
      await visible(a, '#chat-empty', 'the list again');
      // b's ID typed again (lower case): its chat opens, no "already exists".
      await a.fill('#new-chat-id', idB.toLowerCase());
      await a.click('#new-chat button');
      await visible(a, `#chat:not([hidden]) #chat-title:has-text("${idB}")`, 'the existing chat opened by typing its ID', 10_000);
      const toasts = await toastsOf(a);
      check(!toasts.some((t) => /already exists/i.test(t.text)), 'no "already exists" for a known contact', toasts);
      await noDevWords(a, 'the chat after adding contacts');
      // The directory's 404 for ZZZZZZZZ is logged by Chromium itself.
      return (l) => !/status of 404/.test(l);
    });
  },

  /** Issue 15's group traps: a member (not the creator) sees the right member count and list and
   * gets no rename/members buttons; a rename shows as a line in both chats; after leaving, the
   * member's composer gives way to "You left this group" and the creator sees who left. */
  async web_app_groups(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('group-a');
      const b = await open('group-b');
      const [idA, idB] = await createTwo(a, b, visible);
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      await visible(a, `#chat:not([hidden]) #chat-title:has-text("${idB}")`, 'the chat with b');
      await a.fill('#new-group-name', 'Trip');
      await a.fill('#new-group-members', idB);
      await a.click('#new-group button');
      await visible(a, '#chat-title:has-text("Trip (2)")', 'the new group on a, 2 people');
      await visible(b, '#conversations li:has-text("Trip")', 'the group on b');
      await b.click('#conversations li:has-text("Trip")');
      await visible(b, '#chat-title:has-text("Trip (2)")', 'the group on b (a member) as 2 people', 10_000);
      const sub = await b.textContent('#chat-sub');
      check(sub.includes('You') && sub.includes(idA), `b's member list names b ("You") and the creator ${idA}`, sub);
      check(!(await b.isVisible('#chat-rename')) && !(await b.isVisible('#chat-members')),
        'no rename/members buttons for a member who did not create the group', await b.textContent('.chat-head'));
      check(await b.isVisible('#chat-leave'), 'a member can leave', await b.textContent('.chat-head'));
      await b.fill('#composer-text', 'hello group');
      await b.click('#composer button');
      await visible(a, '#messages li:has-text("hello group")', 'b\'s group text on a');

      a.once('dialog', (d) => d.accept('Trip 2'));
      await a.click('#chat-rename');
      await visible(a, '#messages li.note:has-text("You renamed the group to “Trip 2”")', 'the rename line on a');
      await visible(b, `#messages li.note:has-text("${idA} renamed the group to “Trip 2”")`, 'the rename line on b');
      await visible(b, '#chat-title:has-text("Trip 2 (2)")', 'the new name on b');

      b.once('dialog', (d) => d.accept());
      await b.click('#chat-leave');
      await visible(b, '#chat-closed:not([hidden]):has-text("You left this group")', 'the note instead of the composer on b');
      check(!(await b.isVisible('#composer-text')), 'no composer after leaving', true);
      await visible(b, '#messages li.note:has-text("You left the group")', 'the leave line on b');
      await visible(a, `#messages li.note:has-text("${idB} left the group")`, 'the leave line on a');
      await visible(a, '#chat-title:has-text("Trip 2 (1)")', 'a\'s group with 1 person left');
      await bothWidths(b, 'group-left');
      await noDevWords(a, 'the creator\'s group chat');
      await noDevWords(b, 'the member\'s group chat');
    });
  },

  /** Issue 15's removed-device trap: a device removed in another device's Settings shows "This
   * device was removed from your identity" (4113), again after a reload (4115), and "Wipe this
   * device" deletes its database and shows the setup screen. */
  async web_app_removed_device(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('rm-a');
      await createOne(a, visible);
      const a2 = await linkSecond(a, open, visible, 'rm-a2');
      await a.click('#open-settings');
      a.once('dialog', (d) => d.accept());
      await a.click('#devices button[aria-label*="rm-a2"]');
      const title = '#halt:not([hidden]) h1:has-text("This device was removed from your identity")';
      await visible(a2, title, 'the removed-device screen on a2', 10_000);
      await bothWidths(a2, 'removed');
      await noDevWords(a2, 'the removed-device screen');
      await a2.reload();
      await visible(a2, title, 'the removed-device screen after a reload (the slot is gone: 4115)', 10_000);
      check(await a2.textContent('#halt-action') === 'Wipe this device', 'the one action: "Wipe this device"', await a2.textContent('#halt-action'));
      await a2.click('#halt-action');
      await visible(a2, '#setup:not([hidden])', 'the setup screen after wiping', 10_000);
      check(!(await a2.isVisible('#main')), 'nothing of the old identity shown', await a2.textContent('body'));
      await noDevWords(a2, 'the setup screen after wiping');
    });
  },

  /** Issue 15's second-tab trap: the same device opened in a second tab of one browser profile
   * (one IndexedDB): the first tab shows "Tandem is open in another tab" with "Use here" and
   * sends nothing more; "Use here" takes the device back, and the second tab steps aside. */
  async web_app_other_tab(browser) {
    await withWebApp(browser, async ({ open, tab, visible, framesSent }) => {
      const a = await open('tab-a');
      await createOne(a, visible);
      const id = await a.textContent('#me-identity');
      const a2 = await tab(a, 'tab-a');
      await visible(a2, '#conn.online', 'the second tab online');
      check(await a2.textContent('#me-identity') === id, `the second tab is the same device (${id})`, await a2.textContent('#me-identity'));
      const screen = '#halt:not([hidden]) h1:has-text("Tandem is open in another tab")';
      await visible(a, screen, 'the first tab steps aside', 10_000);
      check(await a.textContent('#halt-action') === 'Use here', 'the one action: "Use here"', await a.textContent('#halt-action'));
      await bothWidths(a, 'other-tab');
      await noDevWords(a, 'the other-tab screen');
      const frames = framesSent.get(a);
      await a.waitForTimeout(2000);
      check(framesSent.get(a) === frames, 'the tab that stepped aside sends nothing', framesSent.get(a) - frames);
      check(await a2.isVisible('#conn.online'), 'the second tab still online', await a2.textContent('#conn'));
      await a.click('#halt-action');
      await visible(a, '#conn.online', 'the first tab online again after "Use here"');
      await visible(a2, screen, 'the second tab steps aside', 10_000);
      check(await a.textContent('#me-identity') === id, 'the same device', await a.textContent('#me-identity'));

      // Without BroadcastChannel the mediator's 4112 leads to the same screen.
      const b = await open('tab-b', 0, () => { delete window.BroadcastChannel; });
      await createOne(b, visible);
      const b2 = await tab(b, 'tab-b');
      await visible(b2, '#conn.online', 'the second tab online (no BroadcastChannel)');
      await visible(b, screen, 'the first tab steps aside on 4112 (no BroadcastChannel)', 10_000);
      check(await b.evaluate(() => !('BroadcastChannel' in window)), 'no BroadcastChannel in this context', true);
      await noDevWords(b, 'the other-tab screen after 4112');
    });
  },

  /** Issue 15: axe-core (WCAG 2.0/2.1 A and AA rules) over every screen of the web app at
   * 1280 × 800 and 390 × 844 — setup, the conversation list, a chat, Settings open, the
   * removed-device screen and the other-tab screen. Every violation of every screen is collected
   * and printed (rule, impact, the nodes) before the scenario fails. */
  async web_app_axe(browser) {
    await withWebApp(browser, async ({ open, tab, visible }) => {
      const found = [];
      const screen = async (page, name) => { for (const v of await axeBothWidths(page, name)) found.push(v); };
      const a = await open('axe-a');
      const b = await open('axe-b');
      await visible(a, '#setup:not([hidden])', 'the setup screen');
      await screen(a, 'setup');
      const [, idB] = await createTwo(a, b, visible);
      await screen(a, 'main (empty list)');
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      await visible(a, `#chat:not([hidden]) #chat-title:has-text("${idB}")`, 'the chat with b');
      await a.fill('#composer-text', 'hello axe');
      await a.click('#composer button');
      await visible(b, '#conversations li', 'the conversation on b');
      await b.click('#conversations li');
      await visible(b, '#messages li:has-text("hello axe")', 'the text on b');
      await b.fill('#composer-text', 'hello back');
      await b.click('#composer button');
      await visible(a, '#messages li:has-text("hello back")', 'b\'s answer on a');
      await visible(a, '#messages li.mine .meta:has-text("read")', 'the read mark on a');
      await screen(a, 'chat');
      await a.click('#chat-search');
      await a.keyboard.type('hello');
      await visible(a, '#search-count:has-text("2 messages found")', 'the search on a');
      await screen(a, 'chat (search)');
      await a.keyboard.press('Escape');
      await b.keyboard.press('Escape');
      await visible(b, '#chat-empty', 'the list on b');
      await screen(b, 'main (list)');
      await a.click('#open-settings');
      await visible(a, '#devices li:has-text("this device")', 'this device in Settings');
      await a.fill('#backup-password', PASSWORD);
      await a.click('#export-backup');
      await screen(a, 'settings');
      await a.click('dialog button[value=close]');
      const a2 = await linkSecond(a, open, visible, 'axe-a2');
      await a.click('#open-settings');
      await visible(a, '#devices button[aria-label*="axe-a2"]', 'the linked device in Settings');
      await screen(a, 'settings (two devices)');
      a.once('dialog', (d) => d.accept());
      await a.click('#devices button[aria-label*="axe-a2"]');
      await visible(a2, '#halt:not([hidden]) h1:has-text("This device was removed")', 'the removed-device screen', 10_000);
      await screen(a2, 'removed device');
      await a.click('dialog button[value=close]');
      await tab(a, 'axe-a');
      await visible(a, '#halt:not([hidden]) h1:has-text("Tandem is open in another tab")', 'the other-tab screen', 10_000);
      await screen(a, 'other tab');
      check(found.length === 0, 'no WCAG 2.0/2.1 A or AA violations (axe-core) on any screen at either width',
        `\n${found.map(formatViolation).join('\n')}`);
    });
  },

  /** Issue 15: the main flow by keyboard alone, on a device that never gets a mouse event
   * (`tabTo` presses Tab until the wanted control has focus, and checks its focus ring): create an
   * identity, add a contact by ID, write in the chat, open Settings, export a backup, link a
   * second device (through that device's own page), remove it in Settings, close Settings. */
  async web_app_keyboard(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const k = await open('kbd-k', 0, () => {
        window.__pointer = [];
        for (const type of ['mousedown', 'mouseup', 'pointerdown', 'pointerup']) {
          document.addEventListener(type, (e) => window.__pointer.push(`${type} on ${e.target.id || e.target.tagName}`), true);
        }
      });
      const b = await open('kbd-b');
      await visible(k, '#setup:not([hidden])', 'the setup screen');
      await tabTo(k, '#create-form button');
      await k.keyboard.press('Enter');
      await visible(k, '#conn.online', 'the identity created by keyboard, online');
      await createOne(b, visible);
      const idB = await b.textContent('#me-identity');
      await tabTo(k, '#new-chat-id');
      await k.keyboard.type(idB.toLowerCase());
      await k.keyboard.press('Enter');
      await visible(k, `#chat:not([hidden]) #chat-title:has-text("${idB}")`, 'the chat opened after adding the contact by keyboard');
      await tabTo(k, '#composer-text');
      await k.keyboard.type('typed, not clicked');
      await k.keyboard.press('Enter');
      await visible(b, '#conversations li', 'the conversation on b');
      await b.click('#conversations li');
      await visible(b, '#messages li:has-text("typed, not clicked")', 'the keyboard-sent text on b');
      await k.keyboard.press('Escape');
      await visible(k, '#chat-empty', 'the list after Escape');
      await tabTo(k, '#conversations li button');
      // A message from b rebuilds the list: the keyboard focus must stay on the conversation.
      await b.fill('#composer-text', 'while you tab');
      await b.click('#composer button');
      await visible(k, '#conversations li:has-text("while you tab")', 'b\'s new text in the list');
      const still = await k.evaluate(() => document.activeElement?.closest('#conversations li')?.textContent ?? document.activeElement?.tagName);
      check(still.includes('while you tab'), 'the focus still on the conversation after the list was rebuilt', still);
      await k.keyboard.press('Enter');
      await visible(k, '#chat:not([hidden]) #messages li:has-text("typed, not clicked")', 'the chat opened again with Enter');
      // A reply by keyboard: Tab to b's message's "⋯", Enter opens its actions with the focus on
      // "Reply"; Escape closes them (focus back on "⋯"); Enter again, Enter on "Reply", type, Enter.
      const theirs = await k.evaluate(() => [...document.querySelectorAll('#messages li')]
        .find((li) => li.firstChild?.textContent === 'while you tab')?.dataset.key);
      const more = `#messages li[data-key="${theirs}"] button.more`;
      await tabTo(k, more);
      await k.keyboard.press('Enter');
      await visible(k, `#messages li[data-key="${theirs}"] .actions`, 'the message\'s actions opened by keyboard');
      check(await k.evaluate(() => document.activeElement?.dataset.action) === 'reply', 'the focus on "Reply"', await k.evaluate(() => document.activeElement?.outerHTML));
      await k.keyboard.press('Escape');
      await k.waitForFunction((sel) => document.activeElement === document.querySelector(sel), more, { timeout: 5_000 })
        .catch(async () => { throw new Failure('Escape closes the actions, focus back on "⋯"', await k.evaluate(() => document.activeElement?.outerHTML)); });
      check(await k.isVisible('#chat'), 'the chat still open after Escape on the actions', true);
      await k.keyboard.press('Enter');
      await visible(k, `#messages li[data-key="${theirs}"] .actions`, 'the actions again');
      await k.keyboard.press('Enter');
      await visible(k, '#compose-bar:not([hidden]):has-text("Replying to")', 'the reply bar by keyboard');
      await k.keyboard.type('replied by keyboard');
      await k.keyboard.press('Enter');
      await visible(b, '#messages li:has(blockquote.quote:has-text("while you tab")):has-text("replied by keyboard")', 'the keyboard reply with its quote on b');

      // Settings: export a backup by keyboard, link a second device with it (on its own page).
      await tabTo(k, '#open-settings');
      await k.keyboard.press('Enter');
      await visible(k, '#settings[open] #devices li:has-text("this device")', 'Settings open with this device');
      await tabTo(k, '#backup-password');
      await k.keyboard.type(PASSWORD);
      await tabTo(k, '#export-backup');
      await k.keyboard.press('Space');
      await visible(k, '#backup-out:not([hidden])', 'the exported backup');
      const backup = await k.inputValue('#backup-out');
      check(backup.length === 80 + 19, 'an 80-character backup in groups of 4', backup);
      await k.keyboard.press('Escape');
      await closed(k, '#settings', 'Settings closed with Escape');
      const k2 = await open('kbd-k2');
      await visible(k2, '#setup:not([hidden])', 'the setup screen on the second device');
      await k2.fill('#import-backup', backup);
      await k2.fill('#import-password', PASSWORD);
      await k2.click('#import-form button');
      await visible(k2, '#conn.online', 'the second device online');

      // Remove it, by keyboard.
      await tabTo(k, '#open-settings');
      await k.keyboard.press('Enter');
      await visible(k, '#devices button[aria-label*="kbd-k2"]', 'the second device in Settings');
      k.once('dialog', (d) => d.accept());
      await tabTo(k, '#devices button[aria-label*="kbd-k2"]');
      await k.keyboard.press('Enter');
      await visible(k2, '#halt:not([hidden]) h1:has-text("This device was removed")', 'the second device removed', 10_000);
      await k.waitForFunction(() => !document.querySelector('#devices button[aria-label*="kbd-k2"]'), null, { timeout: 10_000 });
      await k.keyboard.press('Escape');
      await closed(k, '#settings', 'Settings closed with Escape');
      const pointer = await k.evaluate(() => window.__pointer);
      check(pointer.length === 0, 'no mouse or pointer event on the keyboard-only device', pointer);
    });
  },

  /** Issue 15's everyday features in a chat: a line for each day ("Yesterday", "Today"), the
   * unread count in the tab's title, search in a conversation (only the messages that contain
   * the text, the text marked, a count; Escape leaves the search, then the chat) and "copy ID".
   * a's clock runs exactly one day behind (Playwright init script), so its texts are dated
   * yesterday on b; b's own reply is dated today. */
  async web_app_chat_tools(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('tools-a', -86_400_000);
      const b = await open('tools-b');
      await b.context().grantPermissions(['clipboard-read', 'clipboard-write']);
      const [, idB] = await createTwo(a, b, visible);
      await b.click('#copy-id');
      const copied = await b.evaluate(() => navigator.clipboard.readText());
      check(copied === idB, `"copy ID" puts b's ID ${idB} on the clipboard`, copied);
      await visible(b, `#toasts .toast:has-text("${idB} was copied")`, 'the copied notice');
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      for (const text of ['first needle', 'second hay', 'third NEEDLE']) {
        await a.fill('#composer-text', text);
        await a.click('#composer button');
      }
      await visible(b, '#conversations li .unread:has-text("3")', 'three unread on b\'s conversation');
      check(await b.title() === '(3) Tandem', 'b\'s tab title carries the 3 unread messages', await b.title());
      await b.click('#conversations li');
      await visible(b, '#messages li:has-text("third NEEDLE")', 'a\'s texts on b');
      await b.waitForFunction(() => document.title === 'Tandem', null, { timeout: 5_000 })
        .catch(async () => { throw new Failure('the title back to "Tandem" once the chat was read', await b.title()); });
      await b.fill('#composer-text', 'no match here');
      await b.click('#composer button');
      await visible(b, '#messages li.mine:has-text("no match here")', 'b\'s reply');
      const lines = () => b.evaluate(() => [...document.querySelectorAll('#messages li')]
        .map((li) => (li.classList.contains('day') ? `[${li.textContent}]` : li.firstChild.textContent)));
      const all = await lines();
      check(same(all, ['[Yesterday]', 'first needle', 'second hay', 'third NEEDLE', '[Today]', 'no match here']),
        'a line "Yesterday" before a\'s texts (a\'s clock is a day behind) and "Today" before b\'s reply', all);
      await bothWidths(b, 'days');

      // Search in this conversation.
      await b.click('#chat-search');
      await b.keyboard.type('needle');
      await visible(b, '#search-count:has-text("2 messages found")', 'the count of messages found');
      const found = await lines();
      check(same(found, ['[Yesterday]', 'first ', 'third ']), 'only the two messages with "needle" (any case), under their day', found);
      const marks = await b.evaluate(() => [...document.querySelectorAll('#messages mark')].map((m) => m.textContent));
      check(same(marks, ['needle', 'NEEDLE']), 'the text found marked in each message', marks);
      await bothWidths(b, 'search');
      await b.fill('#search-text', 'nothing like it');
      await visible(b, '#search-count:has-text("No messages found")', '"No messages found"');
      check(await b.locator('#messages li').count() === 0, 'no message shown for a text nowhere', await lines());
      await b.keyboard.press('Escape');
      check(await b.isHidden('#search') && await b.isVisible('#chat'), 'Escape leaves the search, not the chat', await b.isVisible('#chat'));
      check(same(await lines(), all), 'every message back after the search', await lines());
      check(await b.evaluate(() => document.activeElement?.id) === 'chat-search', 'the focus back on "search"', await b.evaluate(() => document.activeElement?.id));
      await b.keyboard.press('Escape');
      await visible(b, '#chat-empty', 'the list after a second Escape');
      await noDevWords(b, 'the chat tools');
    });
  },

  /** Issue 15: desktop notifications, asked for in Settings and shown only while the tab is in
   * the background, without the text unless the person chose to see it. The browser's
   * `Notification` is kept but each one shown is recorded (an init script subclasses it), and the
   * page's visibility is switched by the test (headless pages are always "visible"). */
  async web_app_notifications(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const record = () => {
        window.__shown = [];
        window.__closed = [];
        const Real = window.Notification;
        window.Notification = class extends Real {
          constructor(title, options) { super(title, options); window.__shown.push({ title, body: options?.body ?? '' }); }
          close() { window.__closed.push(this.body); super.close(); }
        };
        window.__hidden = false;
        Object.defineProperty(document, 'visibilityState', { get: () => (window.__hidden ? 'hidden' : 'visible') });
        window.__setHidden = (hidden) => { window.__hidden = hidden; document.dispatchEvent(new Event('visibilitychange')); };
      };
      const a = await open('notify-a');
      const b = await open('notify-b', 0, record);
      await b.context().grantPermissions(['notifications']);
      const [idA, idB] = await createTwo(a, b, visible);
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      const say = async (text) => {
        await a.fill('#composer-text', text);
        await a.click('#composer button');
        await visible(b, `#conversations li:has-text("${text}")`, `"${text}" on b`);
      };
      const shown = () => b.evaluate(() => window.__shown);
      /** a's text arrives while b's tab is hidden; what b has shown then. */
      const sayWhileHidden = async (text) => {
        const before = (await shown()).length;
        await b.evaluate(() => window.__setHidden(true));
        await say(text);
        await b.waitForFunction((n) => window.__shown.length > n, before, { timeout: 5_000 }).catch(() => {});
        return shown();
      };
      // Off by default: nothing while hidden.
      await b.evaluate(() => window.__setHidden(true));
      await say('before asking');
      check((await shown()).length === 0, 'no notification before they are turned on', await shown());
      await b.evaluate(() => window.__setHidden(false));
      await b.click('#open-settings');
      check(await b.isDisabled('#set-notify-text'), '"Show the message text" waits for notifications to be on', true);
      await b.check('#set-notify');
      await visible(b, '#set-notify-text:not([disabled])', 'the text choice once notifications are on');
      check(await b.isChecked('#set-notify'), 'notifications on (the browser allowed them)', false);
      await bothWidths(b, 'notifications-settings');
      await b.click('dialog button[value=close]');
      const first = await sayWhileHidden('the secret plans');
      check(same(first, [{ title: idA, body: 'New message' }]), 'one notification, from a, without the text', first);
      await b.evaluate(() => window.__setHidden(false));
      await say('while looking');
      check((await shown()).length === 1, 'no notification while the tab is in front', await shown());
      // With the text, chosen in Settings; kept in this browser after a reload.
      await b.click('#open-settings');
      await b.check('#set-notify-text');
      await b.click('dialog button[value=close]');
      await b.reload();
      await visible(b, '#conn.online', 'b online after a reload');
      await b.click('#open-settings');
      check(await b.isChecked('#set-notify') && await b.isChecked('#set-notify-text'), 'both choices kept after a reload', false);
      await b.click('dialog button[value=close]');
      const second = await sayWhileHidden('now with text');
      check(same(second, [{ title: idA, body: 'now with text' }]), 'a notification with the text, as chosen', second);
      check(await b.title() === '(4) Tandem', 'the unread count in the hidden tab\'s title', await b.title());
      // Opening the chat takes the notification back.
      await b.evaluate(() => window.__setHidden(false));
      await b.click('#conversations li');
      await b.waitForFunction(() => window.__closed.includes('now with text'), null, { timeout: 5_000 })
        .catch(async () => { throw new Failure('the notification withdrawn once the chat is open', await b.evaluate(() => window.__closed)); });
      // A message deleted by its sender takes its notification with it.
      await b.keyboard.press('Escape');
      const oops = await sayWhileHidden('oops, wrong chat');
      check(oops.at(-1)?.body === 'oops, wrong chat', 'a notification for the next text', oops);
      await a.click('#messages li.mine:has-text("oops, wrong chat") button.more');
      a.once('dialog', (d) => d.accept());
      await a.click('#messages .actions button[data-action=delete-all]');
      await b.waitForFunction(() => window.__closed.includes('oops, wrong chat'), null, { timeout: 10_000 })
        .catch(async () => { throw new Failure('the deleted message\'s notification withdrawn', await b.evaluate(() => window.__closed)); });
    });
  },

  /** Issue 15: the ID backup downloaded as a file from Settings, and a new device linked by
   * opening that file on its setup screen (a file without a backup is refused in words). */
  async web_app_backup_file(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('file-a');
      await createOne(a, visible);
      const idA = await a.textContent('#me-identity');
      await a.click('#open-settings');
      await a.fill('#backup-password', PASSWORD);
      await a.click('#export-backup');
      const backup = await a.inputValue('#backup-out');
      const [download] = await Promise.all([a.waitForEvent('download'), a.click('#backup-download')]);
      check(download.suggestedFilename() === `tandem-id-backup-${idA}.txt`, 'the file named after the ID', download.suggestedFilename());
      const file = path.join(LOGS, download.suggestedFilename());
      await download.saveAs(file);
      const content = fs.readFileSync(file, 'utf8');
      check(content === `${backup}\n` && backup.length === 99, 'the file holds the exported backup', content);
      await a.click('dialog button[value=close]');
      const a2 = await open('file-a2');
      await visible(a2, '#setup:not([hidden])', 'the setup screen on the new device');
      const junk = path.join(LOGS, 'not-a-backup.txt');
      fs.writeFileSync(junk, 'hello, this is no backup\n');
      await a2.setInputFiles('#import-file', junk);
      await visible(a2, '#setup-error:has-text("This file holds no ID backup")', 'a file without a backup refused in words');
      await a2.setInputFiles('#import-file', file);
      await a2.waitForFunction((want) => document.querySelector('#import-backup').value === want, backup, { timeout: 5_000 });
      await a2.fill('#import-password', PASSWORD);
      await a2.click('#import-form button');
      await visible(a2, '#conn.online', 'the device linked from the file');
      check(await a2.textContent('#me-identity') === idA, `the linked device is ${idA}`, await a2.textContent('#me-identity'));
    });
  },

  /** Issue 15: "Wipe this device" in Settings for a device that was not removed: the only device
   * is asked with a warning (and stays when the person says no); a linked device, once
   * confirmed, removes itself from the identity (its sibling no longer lists it), deletes its
   * database and the app's own keys in this browser, and shows the setup screen. */
  async web_app_wipe(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('wipe-a');
      await createOne(a, visible);
      await a.click('#open-settings');
      await visible(a, '#devices li:has-text("this device")', 'this device in Settings');
      let asked = null;
      a.once('dialog', (d) => { asked = d.message(); d.dismiss(); });
      await a.click('#wipe-device');
      check(/only device.*gone for good/.test(asked ?? ''), 'the only device is warned that the identity would be gone', asked);
      await a.waitForTimeout(500);
      check(await a.isVisible('#settings[open]') && await a.isVisible('#conn.online'), 'nothing wiped after "no"', await a.textContent('#conn'));
      await bothWidths(a, 'wipe-settings');
      await a.click('dialog button[value=close]');
      const a2 = await linkSecond(a, open, visible, 'wipe-a2');
      await a2.click('#open-settings');
      await visible(a2, '#devices li:has-text("wipe-a2")', 'both devices in a2\'s Settings');
      asked = null;
      a2.once('dialog', (d) => { asked = d.message(); d.accept(); });
      await a2.click('#wipe-device');
      await visible(a2, '#setup:not([hidden])', 'the setup screen after wiping', 15_000);
      check(/other devices keep everything/.test(asked ?? ''), 'the confirm says the other devices keep everything', asked);
      const left = await a2.evaluate(async () => ({
        databases: (await indexedDB.databases()).map((d) => d.name),
        keys: Object.keys(localStorage).filter((k) => k.includes('wipe-a2')),
      }));
      check(!left.databases.includes('tandem-wipe-a2') && left.keys.length === 0, 'no database and no keys of the device left in the browser', left);
      await a.click('#open-settings');
      await a.waitForFunction(() => {
        const items = [...document.querySelectorAll('#devices li')].map((li) => li.textContent);
        return items.length === 1 && items[0].includes('this device');
      }, null, { timeout: 10_000 }).catch(async () => {
        throw new Failure('the wiped device gone from a\'s device list', await a.textContent('#devices'));
      });
      await noDevWords(a2, 'the setup screen after wiping');
    });
  },

  /** Issue 15: never a blank page. Without JavaScript the page says that Tandem needs it (and no
   * "Opening Tandem…" that would never go); while the app loads it says so; a browser without
   * WebAssembly gets a sentence and a reload instead of a blank page. */
  async web_app_loading(browser) {
    const noJs = await browser.newContext({ javaScriptEnabled: false });
    try {
      const p = await noJs.newPage();
      await p.goto(`${WORKER_HTTP}/?device=nojs`);
      const seen = await p.evaluate(() => document.body.innerText).catch(() => null) ?? await p.locator('body').innerText();
      check(/Tandem needs JavaScript/.test(seen) && !/Opening Tandem/.test(seen), 'without JavaScript: "Tandem needs JavaScript", no loading line', seen);
      fs.mkdirSync(SHOTS, { recursive: true });
      await p.screenshot({ path: path.join(SHOTS, 'web-app-nojs-1280.png') });
    } finally {
      await noJs.close();
    }
    await withWebApp(browser, async ({ open, visible }) => {
      const slow = await open('loading-slow', 0, null, async (page) => {
        await page.route('**/pkg/tandem_client_bg.wasm', async (route) => { await sleep(2_000); await route.continue(); });
      });
      await visible(slow, '#loading:has-text("Opening Tandem…")', 'the loading line while the app starts');
      check(await slow.isVisible('#loading'), 'the loading line visible', await slow.textContent('body'));
      await bothWidths(slow, 'loading');
      await visible(slow, '#setup:not([hidden])', 'the setup screen once loaded');
      check(await slow.isHidden('#loading'), 'the loading line gone', true);
      const old = await open('loading-nowasm', 0, () => { delete window.WebAssembly; });
      await visible(old, '#halt:not([hidden]) h1:has-text("Tandem cannot run in this browser")', 'the sentence for a browser without WebAssembly');
      check(await old.isHidden('#loading') && await old.textContent('#halt-action') === 'Reload', 'no loading line; the one action "Reload"', await old.textContent('body'));
      await bothWidths(old, 'no-wasm');
      return (l) => !l.includes('WebAssembly module did not start');
    });
  },

  /** Edits and deletes through the package (Threema's EditMessage 0x91 and DeleteMessage 0x92;
   * docs/protocol.md "Message updates"): X1 edits a text it sent Y: the new text with `editedAt`
   * on X1, X2 and Y1 and a `messageChanged` event on Y1; Y1 may not edit X's text; X2 (the
   * sibling) deletes it for everyone: empty text and `deletedAt` everywhere; Y1 deletes
   * another of X's texts on Y1 only: gone from Y1's conversation (and after a reload), still
   * on X1. */
  async edit_delete() {
    const { X1, X2, Y1, X, Y } = world;
    for (const d of [X1, X2, Y1]) await d.online();
    const toY = `contact/${Y}`;
    const toX = `contact/${X}`;
    const find = ([c, k]) => window.device.client.messages(c).find((m) => m.key === k) ?? null;
    const key = await X1.call('sendText', toY, 'to be edited');
    const other = await X1.call('sendText', toY, 'to be deleted on Y1');
    await Y1.until('both texts on Y1', find, [toX, other], (m) => m !== null);
    await X1.until('sent', find, [toY, key], (m) => m !== null && m.state !== 'pending');
    await X1.call('editMessage', key, 'edited text');
    for (const [d, c] of [[X1, toY], [X2, toY], [Y1, toX]]) {
      await d.until(`the edit on ${d.name}`, find, [c, key], (m) => m?.text === 'edited text' && typeof m.editedAt === 'number' && m.deletedAt === null);
    }
    const changed = await Y1.events('messageChanged');
    check(changed.some((e) => e.key === key && e.message?.text === 'edited text'), 'a messageChanged event for the edit on Y1', changed);
    const refused = await Y1.eval(([k]) => window.device.failure(() => window.device.client.editMessage(k, 'not mine')), [key]);
    check(refused?.isError && /only the sender may change a message/.test(refused.message), 'Y1 may not edit X\'s text', refused);
    await X2.until('sent on X2', find, [toY, key], (m) => m !== null && m.state !== 'pending');
    await X2.call('deleteMessage', key, true);
    for (const [d, c] of [[X1, toY], [X2, toY], [Y1, toX]]) {
      await d.until(`the delete on ${d.name}`, find, [c, key], (m) => m?.text === '' && typeof m.deletedAt === 'number');
    }
    await Y1.call('deleteMessage', other, false);
    check(await Y1.eval(find, [toX, other]) === null, 'deleted on Y1 only: gone there', await Y1.eval(find, [toX, other]));
    await Y1.reload();
    await Y1.open();
    await Y1.online();
    check(await Y1.eval(find, [toX, other]) === null, 'still gone on Y1 after a reload', await Y1.eval(find, [toX, other]));
    const onX1 = await X1.eval(find, [toY, other]);
    check(onX1?.text === 'to be deleted on Y1', 'still on X1', onX1);
  },

  /** Issue 15: replies, edits and deletes in the web app, on Threema's wire formats: b replies
   * to a's text (the text on the wire is Threema's quote format: "> quote #<id, 8 bytes
   * little-endian in hex>", an empty line, the reply) and a sees the quote; a edits its text
   * (b sees the new text marked "edited", also inside the quote); a deletes it for everyone
   * (b sees "This message was deleted.", the quote too); b deletes another text for itself only
   * (gone on b, still on a); b gets no "Edit" or "Delete for everyone" on a's messages. axe over
   * the chat with a message's actions open, a reply, an edited and a deleted message. */
  async web_app_edit_delete(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('edit-a');
      const b = await open('edit-b');
      const [, idB] = await createTwo(a, b, visible);
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      for (const text of ['original text', 'second text']) {
        await a.fill('#composer-text', text);
        await a.click('#composer button');
      }
      await visible(b, '#conversations li', 'the conversation on b');
      await b.click('#conversations li');
      await visible(b, '#messages li:has-text("second text")', 'a\'s texts on b');
      const keyOf = (page, text) => page.evaluate((t) => [...document.querySelectorAll('#messages li')]
        .find((li) => li.firstChild?.textContent === t)?.dataset.key ?? null, text);
      const original = await keyOf(b, 'original text');
      check(original !== null, 'a\'s text on b has its key', original);
      const actions = async (page, text) => {
        await page.click(`#messages li:has-text("${text}") button.more`);
        await visible(page, `#messages li:has-text("${text}") .actions`, `the actions of "${text}"`);
      };
      // Reply (b to a).
      await actions(b, 'original text');
      const offered = await b.locator('#messages li:has-text("original text") .actions button:not(.quick)').allTextContents();
      check(same(offered, ['Reply', 'Delete for me']), 'on someone else\'s message: reply and delete for me only (besides reactions)', offered);
      await bothWidths(b, 'message-actions');
      await b.click('#messages .actions button[data-action=reply]');
      await visible(b, '#compose-bar:not([hidden]):has-text("Replying to")', 'the reply bar');
      await bothWidths(b, 'replying');
      await b.keyboard.type('my reply');
      await b.keyboard.press('Enter');
      await visible(a, '#messages li:has(blockquote.quote:has-text("original text")):has-text("my reply")', 'the reply with its quote on a');
      check(await b.isHidden('#compose-bar'), 'the reply bar gone once sent', true);
      // The quote as written in the text, Threema's way: the id's 8 bytes little-endian, in hex
      // (the key's hex is the id as a number; `data-quotes` is the text's own digits).
      const littleEndian = original.split('/')[1].match(/../g).reverse().join('');
      const written = await a.getAttribute('#messages li:has(blockquote.quote)', 'data-quotes');
      check(written === littleEndian, `the reply's text quotes "#${littleEndian}" (the id little-endian)`, written);

      // Edit (a).
      await actions(a, 'original text');
      await a.click('#messages .actions button[data-action=edit]');
      check(await a.inputValue('#composer-text') === 'original text', 'the text to edit in the composer', await a.inputValue('#composer-text'));
      await a.fill('#composer-text', 'fixed text');
      await a.keyboard.press('Enter');
      await visible(b, '#messages li:has-text("fixed text") .meta:has-text("edited")', 'the edit on b, marked "edited"');
      await visible(b, '#messages blockquote.quote:has-text("fixed text")', 'the quote shows the edited text');
      await visible(a, '#messages li.mine:has-text("fixed text") .meta:has-text("edited")', 'the edit on a');

      // Delete for everyone (a), while b is answering it: b's reply bar goes with the message.
      await actions(b, 'fixed text');
      await b.click('#messages .actions button[data-action=reply]');
      await visible(b, '#compose-bar:not([hidden]):has-text("fixed text")', 'b replying to the edited text');
      await actions(a, 'fixed text');
      a.once('dialog', (d) => d.accept());
      await a.click('#messages .actions button[data-action=delete-all]');
      await visible(b, '#messages li.deleted:has-text("This message was deleted.")', 'the delete on b');
      await visible(b, '#messages blockquote.quote:has-text("This message was deleted.")', 'the quote of a deleted message says so');
      await visible(a, '#messages li.deleted:has-text("You deleted this message.")', 'the delete on a');
      await b.waitForSelector('#compose-bar', { state: 'hidden', timeout: 5_000 })
        .catch(() => { throw new Failure('b\'s reply bar gone once the message was deleted', 'still shown'); });
      check(!(await b.locator('#messages li').allTextContents()).some((t) => t.includes('fixed text')), 'the text gone on b', await b.locator('#messages li').allTextContents());

      // Delete for me (b).
      await actions(b, 'second text');
      b.once('dialog', (d) => d.accept());
      await b.click('#messages .actions button[data-action=delete-here]');
      await b.waitForFunction(() => ![...document.querySelectorAll('#messages li')].some((li) => li.textContent.includes('second text')), null, { timeout: 5_000 })
        .catch(() => { throw new Failure('"second text" gone on b', 'still shown'); });
      await b.reload();
      await visible(b, '#conn.online', 'b online after a reload');
      await b.click('#conversations li');
      await visible(b, '#messages li:has-text("my reply")', 'b\'s chat after a reload');
      check(!(await b.locator('#messages li').allTextContents()).some((t) => t.includes('second text')), 'still gone on b after a reload', await b.locator('#messages li').allTextContents());
      await visible(a, '#messages li:has-text("second text")', 'still on a');
      await bothWidths(b, 'edited-deleted');
      await actions(a, 'second text');
      const found = await axeBothWidths(a, 'chat with actions, a reply, an edit and a delete');
      check(found.length === 0, 'no WCAG 2.0/2.1 A or AA violations', `\n${found.map(formatViolation).join('\n')}`);
    });
  },

  /** Issue 15: reactions in the web app, on Threema's `Reaction` (0x82): b puts 👍 on a's text
   * from its actions (the button then says "Take back 👍"); a sees "👍 1" under it; a puts ❤️ on
   * its own text; b takes its 👍 back by pressing its chip, and a's text keeps only "❤️ 1" on
   * both sides (and after a reload of b). axe over the chat with reactions and the actions open. */
  async web_app_reactions(browser) {
    await withWebApp(browser, async ({ open, visible }) => {
      const a = await open('react-a');
      const b = await open('react-b');
      const [, idB] = await createTwo(a, b, visible);
      await a.fill('#new-chat-id', idB);
      await a.click('#new-chat button');
      await a.fill('#composer-text', 'react to me');
      await a.click('#composer button');
      await visible(b, '#conversations li', 'the conversation on b');
      await b.click('#conversations li');
      const li = '#messages li:has-text("react to me")';
      await visible(b, li, 'a\'s text on b');
      await b.click(`${li} button.more`);
      await b.click(`${li} .actions button[aria-label="React with 👍"]`);
      await visible(b, `${li} .actions button[aria-label="Take back 👍"][aria-pressed=true]`, 'b\'s 👍 marked in its actions');
      await visible(a, `${li} .reactions button.reaction:has-text("👍 1")`, 'b\'s 👍 under a\'s text on a');
      check(await a.getAttribute(`${li} .reactions button.reaction`, 'aria-pressed') === 'false', 'not a\'s own 👍', true);
      await a.click(`${li} button.more`);
      await a.click(`${li} .actions button[aria-label="React with ❤️"]`);
      await visible(b, `${li} .reactions button.reaction:has-text("❤️ 1")`, 'a\'s ❤️ on b');
      await bothWidths(b, 'reactions');
      await b.click(`${li} .reactions button.reaction[aria-pressed=true]`);
      const only = async (page, where) => page.waitForFunction((sel) => {
        const chips = [...document.querySelectorAll(`${sel} .reactions button.reaction`)].map((c) => c.textContent);
        return chips.length === 1 && chips[0] === '❤️ 1';
      }, '#messages li[data-key]', { timeout: 10_000 }).catch(async () => {
        throw new Failure(`only "❤️ 1" left on ${where}`, await page.locator('#messages .reactions').allTextContents());
      });
      await only(a, 'a');
      await only(b, 'b');
      await b.reload();
      await visible(b, '#conn.online', 'b online after a reload');
      await b.click('#conversations li');
      await visible(b, `${li} .reactions button.reaction:has-text("❤️ 1")`, 'the reaction kept on b after a reload');
      await b.click(`${li} button.more`);
      const found = await axeBothWidths(b, 'chat with reactions');
      check(found.length === 0, 'no WCAG 2.0/2.1 A or AA violations', `\n${found.map(formatViolation).join('\n')}`);
    });
  },

  /** `TandemClient.hasIdentity(database)`: true for a database that holds a device (also while
   * that device is open and online in the page), false for one that does not exist — which it
   * does not create — and for one that exists without an identity (made by a failed `open`). */
  async has_identity() {
    const { Y1 } = world;
    await Y1.online();
    const seen = await Y1.eval(async (db) => {
      const has = (name) => window.TandemClient.hasIdentity(name);
      const names = async () => (await indexedDB.databases()).map((d) => d.name);
      const result = { own: await has(db), missing: await has('tandem-never-made') };
      result.missingCreated = (await names()).includes('tandem-never-made');
      result.openEmpty = await window.device.failure(() => window.TandemClient.open({ database: 'tandem-empty' }));
      result.empty = await has('tandem-empty');
      await new Promise((resolve, reject) => {
        const req = indexedDB.open('not-tandem', 3);
        req.onupgradeneeded = () => req.result.createObjectStore('other');
        req.onsuccess = () => { req.result.close(); resolve(); };
        req.onerror = () => reject(req.error);
      });
      result.other = await has('not-tandem');
      result.otherVersion = await new Promise((resolve) => {
        const req = indexedDB.open('not-tandem');
        req.onsuccess = () => { resolve(req.result.version); req.result.close(); };
      });
      return result;
    }, Y1.database);
    check(seen.own === true, `hasIdentity("${Y1.database}") true for Y1's open device`, seen);
    check(seen.missing === false && seen.missingCreated === false, 'false for a database that does not exist, and not created by asking', seen);
    check(/holds no identity/.test(seen.openEmpty?.message ?? '') && seen.empty === false, 'false for a database a failed open left without an identity', seen);
    check(seen.other === false && seen.otherVersion === 3, 'false for another app\'s database, left at its version', seen);
    await Y1.online();
  },

  /** The package README's example (`readme-example.ts`, which must equal the README's code: see
   * readme-check.mjs) bundled with esbuild and run in a fresh context as written, with only the
   * mediator URL, the database and the friend's ID (Y) replaced: it creates an identity, adds Y,
   * waits for the contact and sends "hello", which Y1 receives. The `.wasm` is found beside the
   * bundle (copied there, as the README says). A second bundle proves the other README way:
   * esbuild's `file` loader copies the `.wasm` and its URL goes to `init({ module_or_path })`. */
  async readme_example(browser) {
    const { Y1 } = world;
    const esbuild = await import(new URL('../../mediator-worker/node_modules/esbuild/lib/main.js', import.meta.url).href)
      .catch((e) => { throw new Failure('esbuild in mediator-worker/node_modules (scripts/install-worker-toolchain.sh)', e.message); });
    const here = path.dirname(new URL(import.meta.url).pathname);
    const outRoot = path.join(here, 'pages', 'bundled');
    fs.rmSync(outRoot, { recursive: true, force: true });
    let source = fs.readFileSync(path.join(here, 'readme-example.ts'), 'utf8');
    for (const [from, to] of [['"wss://chat.example.org"', JSON.stringify(SERVER.replace(/^http/, 'ws'))],
      ['"tandem-main"', '"tandem-readme"'], ['"ECHOECHO"', JSON.stringify(world.Y)]]) {
      check(source.includes(from), `the README example contains ${from}`, source.slice(0, 400));
      source = source.replace(from, to);
    }
    const page = (dir, title) => fs.writeFileSync(path.join(dir, 'index.html'),
      `<!doctype html><meta charset="utf-8"><title>${title}</title><script type="module" src="app.js"></script>\n`);
    const copyDir = path.join(outRoot, 'readme');
    await esbuild.build({
      stdin: { contents: source, resolveDir: here, loader: 'ts', sourcefile: 'readme-example.ts' },
      bundle: true, format: 'esm', target: 'es2022', outfile: path.join(copyDir, 'app.js'), logLevel: 'silent',
    });
    fs.copyFileSync(path.join(here, 'node_modules/tandem-client/tandem_client_bg.wasm'), path.join(copyDir, 'tandem_client_bg.wasm'));
    page(copyDir, 'README example');
    const loaderDir = path.join(outRoot, 'loader');
    await esbuild.build({
      stdin: {
        contents: 'import wasmUrl from "tandem-client/tandem_client_bg.wasm";\n'
          + 'import init, { TandemClient } from "tandem-client";\n'
          + 'await init({ module_or_path: wasmUrl });\n'
          + 'window.bundled = { wasmUrl, has: await TandemClient.hasIdentity("tandem-none") };\n',
        resolveDir: here, loader: 'js',
      },
      bundle: true, format: 'esm', target: 'es2022', outfile: path.join(loaderDir, 'app.js'),
      loader: { '.wasm': 'file' }, publicPath: '/bundled/loader/', logLevel: 'silent',
    });
    page(loaderDir, 'esbuild file loader');

    // The same example built by Vite (its own `new URL(…, import.meta.url)` handling: the .wasm
    // becomes a hashed asset) and by webpack 5 (the same, as `asset/resource`), each with its
    // defaults and only the public path set; the TypeScript goes through Vite itself and, for
    // webpack, through TypeScript's `transpileModule` (webpack has no TypeScript of its own).
    const viteRoot = path.join(outRoot, 'vite-src');
    fs.mkdirSync(viteRoot, { recursive: true });
    fs.writeFileSync(path.join(viteRoot, 'main.ts'), source);
    fs.writeFileSync(path.join(viteRoot, 'index.html'),
      '<!doctype html><meta charset="utf-8"><title>Vite</title><script type="module" src="./main.ts"></script>\n');
    const vite = await import('vite');
    await vite.build({
      root: viteRoot, base: '/bundled/vite/', logLevel: 'silent', configFile: false,
      build: { outDir: path.join(outRoot, 'vite'), emptyOutDir: true, target: 'es2022' },
    });
    const ts = (await import('typescript')).default;
    const webpackDir = path.join(outRoot, 'webpack');
    fs.mkdirSync(webpackDir, { recursive: true });
    const entry = path.join(here, 'pages', 'bundled', 'webpack-entry.mjs');
    fs.writeFileSync(entry, ts.transpileModule(source, { compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ES2022 } }).outputText);
    const webpack = (await import('webpack')).default;
    const stats = await new Promise((resolve, reject) => webpack({
      mode: 'production', entry, context: here, devtool: false,
      output: { path: webpackDir, filename: 'app.js', publicPath: '/bundled/webpack/' },
    }, (err, result) => (err ? reject(err) : resolve(result))));
    check(!stats.hasErrors(), 'webpack built the README example', stats.toString('errors-only'));
    fs.writeFileSync(path.join(webpackDir, 'index.html'),
      '<!doctype html><meta charset="utf-8"><title>webpack</title><script src="app.js"></script>\n');
    const emitted = (dir) => fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith('.wasm'));
    for (const [dir, name] of [[path.join(outRoot, 'vite'), 'Vite'], [webpackDir, 'webpack']]) {
      const wasm = emitted(dir);
      check(wasm.length === 1 && wasm[0] !== 'tandem_client_bg.wasm', `${name} emitted the .wasm itself (one, with a hashed name)`, wasm);
    }

    const context = await browser.newContext();
    try {
      for (const [url, name] of [['/bundled/readme/index.html', 'esbuild'], ['/bundled/vite/index.html', 'Vite'],
        ['/bundled/webpack/index.html', 'webpack']]) {
        // Each build is a new device of its own (one database per browser context).
        const own = name === 'esbuild' ? context : await browser.newContext();
        try {
          await runReadmeExample(own, url, name, Y1);
        } finally {
          if (own !== context) await own.close();
        }
      }

      const q = await context.newPage();
      await q.goto(`${SERVER}/bundled/loader/index.html`);
      await q.waitForFunction(() => window.bundled !== undefined, null, { timeout: WAIT });
      const bundled = await q.evaluate(() => window.bundled);
      check(/^\/bundled\/loader\/tandem_client_bg-[A-Z0-9]+\.wasm$/.test(bundled.wasmUrl) && bundled.has === false,
        'esbuild\'s file loader: the .wasm copied with a hashed name, its URL given to init()', bundled);
    } finally {
      await context.close();
    }
  },
};

/** Opens a bundled README example at `url` in `context`: it prints its new Tandem ID and Y1
 * receives its "hello"; no errors in its page. */
async function runReadmeExample(context, url, name, Y1) {
  const logs = [];
  const p = await context.newPage();
  p.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  p.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await p.goto(`${SERVER}${url}`);
  const deadline = Date.now() + WAIT;
  let id = null;
  while (!id && Date.now() < deadline) {
    id = logs.map((l) => /my Tandem ID: ([0-9A-Z]{8})/.exec(l)?.[1]).find(Boolean) ?? null;
    if (!id) await sleep(100);
  }
  check(id !== null, `the README example built by ${name} printed its new Tandem ID`, logs);
  try {
    await Y1.until(`the README example's "hello" from ${id} (${name})`, (c) => window.device.client.messages(c).map((m) => m.text), `contact/${id}`,
      (texts) => texts.includes('hello'), 15_000);
  } catch (e) {
    throw new Failure(`Y1 receives the ${name} build's "hello" from ${id}`, `${e.message}\n  the example's page:\n${logs.join('\n')}`);
  }
  const errors = logs.filter((l) => /^(error|pageerror)/.test(l));
  check(errors.length === 0, `no errors in the ${name} build's page`, errors);
}

/** Web app pages (www/ at the Worker's own origin), each in its own browser context; every toast
 * a page adds is recorded in `window.__toasts` (text, error, the region's aria-live). `open(name,
 * shiftMs, init, before)` moves the page's `Date` (and `Date.now`) by `shiftMs`, runs `init` (a
 * function) in every page of the context before the app, and `before(page)` in the test before
 * the page is first loaded (to route its requests). */
function webApp(browser) {
  const consoles = [];
  const contexts = [];
  // WebSocket frames each page has sent (every one is a billed request on Cloudflare).
  const framesSent = new Map();
  const open = async (device, shiftMs = 0, init = null, before = null) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    contexts.push(context);
    if (init) await context.addInitScript(init);
    if (shiftMs !== 0) {
      await context.addInitScript((shift) => {
        const RealDate = Date;
        const realNow = () => RealDate.now();
        class ShiftedDate extends RealDate {
          constructor(...args) { if (args.length === 0) super(realNow() + shift); else super(...args); }
          static now() { return realNow() + shift; }
        }
        globalThis.Date = ShiftedDate;
      }, shiftMs);
    }
    await context.addInitScript(() => {
      window.__toasts = [];
      new MutationObserver((records) => {
        for (const r of records) {
          for (const n of r.addedNodes) {
            if (n.nodeType === 1 && n.parentElement && n.parentElement.id === 'toasts') {
              window.__toasts.push({ text: n.textContent, error: n.classList.contains('error'), live: n.parentElement.getAttribute('aria-live') });
            }
          }
        }
      }).observe(document, { childList: true, subtree: true });
      // Every time the "Updating…" line appears (it must not flash for a quick catch-up).
      window.__syncShown = [];
      new MutationObserver((records) => {
        for (const r of records) {
          if (r.target.id === 'sync' && !r.target.hidden) window.__syncShown.push(r.target.textContent);
        }
      }).observe(document, { attributes: true, attributeFilter: ['hidden'], subtree: true });
    });
    return openIn(context, device, before);
  };
  const openIn = async (context, device, before = null) => {
    const page = await context.newPage();
    if (before) await before(page);
    framesSent.set(page, 0);
    page.on('websocket', (ws) => ws.on('framesent', () => framesSent.set(page, framesSent.get(page) + 1)));
    page.on('console', (m) => consoles.push(`[web ${device}] ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoles.push(`[web ${device}] pageerror: ${e.message}`));
    await page.goto(`${WORKER_HTTP}/?device=${device}`);
    return page;
  };
  /** A second tab of the same device: a new page in `page`'s context (one IndexedDB). */
  const tab = (page, device) => openIn(page.context(), device);
  const visible = async (page, selector, what, timeout = WAIT) => {
    try {
      await page.waitForSelector(selector, { timeout });
    } catch {
      throw new Failure(`web app: ${what} (${selector})`, `not within ${timeout} ms; console:\n${consoles.slice(-15).join('\n')}`);
    }
  };
  const close = async () => { for (const c of contexts) await c.close(); };
  return { open, tab, visible, consoles, close, framesSent };
}

/** Words meant for developers that the web app must not show a person (issue 15): database
 * names, protocol roles, sync counters, API names, internal object dumps, close codes. */
const DEV_WORDS = /\b(database|leader|syncing|retryNow|GroupId|Identity\(|mediator|4[01]\d\d)\b/i;
/** Fails if the page's visible text or any toast it showed contains a developer word. */
async function noDevWords(page, where) {
  const text = await page.evaluate(() => `${document.body.innerText}\n${window.__toasts.map((t) => t.text).join('\n')}`);
  const m = DEV_WORDS.exec(text);
  check(!m, `no developer words on ${where}`, m && `"${m[0]}" in …${text.slice(Math.max(0, m.index - 100), m.index + 100)}…`);
}

/** Screenshots of a web app page at 1280 and 390 px wide, light and dark
 * (target/browser-screenshots: `web-app-<name>-<width>.png`, `web-app-<name>-dark-<width>.png`). */
async function bothWidths(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const shot = (n) => page.screenshot({ path: path.join(SHOTS, `web-app-${n}.png`) });
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    const suffix = scheme === 'dark' ? '-dark' : '';
    await shot(`${name}${suffix}-1280`);
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(`${name}${suffix}-390`);
    await page.setViewportSize({ width: 1280, height: 800 });
  }
  await page.emulateMedia({ colorScheme: 'light' });
}

/** Runs `run` with `webApp(browser)`'s helpers, then checks that no page logged an error (unless
 * `run` returns a filter for the console lines to check); closes the pages either way. */
async function withWebApp(browser, run) {
  const app = webApp(browser);
  try {
    const keep = await run(app);
    noErrors(typeof keep === 'function' ? app.consoles.filter(keep) : app.consoles);
  } finally {
    await app.close();
  }
}

/** No page errors and no console errors among a web app run's console lines. */
function noErrors(consoles) {
  const errors = consoles.filter((l) => /pageerror|\] error:/.test(l));
  check(errors.length === 0, 'no page errors or console errors', errors);
}

/** axe-core's source, evaluated in a page through the DevTools protocol (`page.evaluate`): the
 * app's Content-Security-Policy refuses an inline `<script>`, not the test's own evaluation. */
const AXE_SOURCE = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
/** The rules axe runs: WCAG 2.0 and 2.1, levels A and AA. */
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];

/** axe-core's violations on `page` as it is now, each with the screen's name. */
async function axeViolations(page, where) {
  if (!(await page.evaluate(() => 'axe' in window))) await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate((tags) => window.axe.run(document, { runOnly: { type: 'tag', values: tags } })
    .then((r) => r.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary })),
    }))), AXE_TAGS);
  return violations.map((v) => ({ where, ...v }));
}

/** axe at 1280 × 800 and 390 × 844, in the light and the dark colour scheme (and a screenshot
 * of each, `web-app-axe-…[-dark]-<width>.png`). Checks that the dark scheme applies (the page's
 * background is dark). */
async function axeBothWidths(page, name) {
  const found = [];
  fs.mkdirSync(SHOTS, { recursive: true });
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const dark = background === 'rgb(20, 21, 23)';
    check(dark === (scheme === 'dark'), `the ${scheme} colour scheme applied on ${name}`, background);
    for (const [width, height] of [[1280, 800], [390, 844]]) {
      await page.setViewportSize({ width, height });
      const file = `web-app-axe-${name.replace(/\W+/g, '-')}${scheme === 'dark' ? '-dark' : ''}-${width}.png`;
      await page.screenshot({ path: path.join(SHOTS, file) });
      found.push(...await axeViolations(page, `${name} at ${width} px, ${scheme}`));
    }
  }
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 1280, height: 800 });
  return found;
}

const formatViolation = (v) => `  [${v.where}] ${v.id} (${v.impact}): ${v.help}\n`
  + v.nodes.map((n) => `      ${n.target}\n        ${(n.summary ?? '').replace(/\n/g, '\n        ')}`).join('\n');

/** Waits until the dialog `selector` is closed (a closed dialog is not visible, so `visible` cannot). */
async function closed(page, selector, what, timeout = 5_000) {
  try {
    await page.waitForFunction((sel) => !document.querySelector(sel).open, selector, { timeout });
  } catch {
    throw new Failure(`web app: ${what}`, `still open after ${timeout} ms; focus on ${await page.evaluate(() => document.activeElement?.outerHTML.slice(0, 120))}`);
  }
}

/** Presses Tab until the focused element matches `selector` (up to `max` times), then checks it
 * shows a focus ring (a computed outline); fails with every element Tab visited otherwise. */
async function tabTo(page, selector, max = 60) {
  const visited = [];
  for (let i = 0; i <= max; i++) {
    const at = await page.evaluate((sel) => {
      const el = document.activeElement;
      if (!el || el === document.body) return { matches: false, name: 'body' };
      const name = `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}${el.getAttribute('aria-label') ? `[${el.getAttribute('aria-label')}]` : ''}`
        + (el.textContent && el.children.length === 0 ? ` "${el.textContent.trim().slice(0, 30)}"` : '');
      const style = getComputedStyle(el);
      return { matches: el.matches(sel), name, outline: `${style.outlineStyle} ${style.outlineWidth}` };
    }, selector);
    if (at.matches) {
      check(!at.outline.startsWith('none') && !at.outline.endsWith(' 0px'), `a visible focus ring on ${selector}`, at.outline);
      return;
    }
    visited.push(at.name);
    if (i < max) await page.keyboard.press('Tab');
  }
  throw new Failure(`${selector} reached with Tab within ${max} presses`, visited.join(' → '));
}

/** Exports an ID backup through a web app page's Settings; the 80 characters in groups. */
async function exportBackup(page) {
  await page.click('#open-settings');
  await page.fill('#backup-password', PASSWORD);
  await page.click('#export-backup');
  const backup = await page.inputValue('#backup-out');
  check(backup.length === 80 + 19, 'an 80-character backup in groups of 4', backup);
  await page.click('dialog button[value=close]');
  return backup;
}

/** Every toast a web app page has shown so far (see `webApp`). */
const toastsOf = (page) => page.evaluate(() => window.__toasts);

/** Creates a new identity on a fresh web app page and waits until it is online. */
async function createOne(page, visible) {
  await visible(page, '#setup:not([hidden])', 'the setup screen');
  await page.click('#create-form button');
  await visible(page, '#conn.online', 'the new device online');
}

/** Links a new web app device (page `name`) to `first`'s identity through the ID backup, as a
 * person would; waits until it is online. */
async function linkSecond(first, open, visible, name) {
  const backup = await exportBackup(first);
  const page = await open(name);
  await visible(page, '#setup:not([hidden])', `the setup screen on ${name}`);
  await page.fill('#import-backup', backup);
  await page.fill('#import-password', PASSWORD);
  await page.click('#import-form button');
  await visible(page, '#conn.online', `the linked device ${name} online`);
  return page;
}

/** Creates a new identity on each of two fresh web app pages and waits until both are online;
 * their IDs. */
async function createTwo(a, b, visible) {
  for (const [page, name] of [[a, 'a'], [b, 'b']]) {
    await visible(page, '#setup:not([hidden])', `the setup screen on a fresh device ${name}`);
    await page.click('#create-form button');
    await visible(page, '#main:not([hidden])', `device ${name} created`);
    await visible(page, '#conn.online', `device ${name} online`);
  }
  const ids = [await a.textContent('#me-identity'), await b.textContent('#me-identity')];
  check(ids.every((id) => /^[0-9A-Z]{8}$/.test(id)) && ids[0] !== ids[1], 'two new 8-character IDs', ids);
  return ids;
}

// ---------------------------------------------------------------------------------------------

const wanted = (process.env.TANDEM_SCENARIO ?? '').split(',').map((s) => s.trim()).filter(Boolean);
for (const w of wanted) if (!(w in SCENARIOS)) { console.error(`unknown scenario ${w}; known: ${Object.keys(SCENARIOS).join(', ')}`); process.exit(2); }
const order = Object.keys(SCENARIOS).filter((n) => wanted.length === 0 || wanted.includes(n));

fs.mkdirSync(LOGS, { recursive: true });
if (!fs.existsSync(CHROMIUM)) { console.error(`${CHROMIUM} is missing: run scripts/bootstrap.sh (installs Debian's chromium)`); process.exit(2); }
server = await startServer({ workerHttp: WORKER_HTTP });
SERVER = server.base;
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--headless=new', '--no-sandbox'] });
let passed = 0; let failed = 0;
const devices = () => ['X1', 'X1b', 'X2', 'X3', 'Y1', 'Z1'].map((n) => world[n]).filter(Boolean);
async function step(name, fn) {
  const started = Date.now();
  try {
    await fn(browser);
    console.log(`scenario ${name} ... ok (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    return true;
  } catch (err) {
    console.log(`scenario ${name} ... FAILED (${((Date.now() - started) / 1000).toFixed(1)} s)\n  ${err instanceof Failure ? err.message : err.stack}`);
    for (const d of devices()) {
      const file = path.join(LOGS, `console-${d.name}.log`);
      fs.writeFileSync(file, d.console.join('\n') + '\n');
      console.log(`--- ${d.name} console (last 25 lines; all in ${file}) ---\n${d.console.slice(-25).join('\n')}`);
    }
    return false;
  }
}
try {
  if (await step('setup', setup)) {
    for (const name of order) {
      if (await step(name, SCENARIOS[name])) passed++; else { failed++; break; }
    }
  } else failed++;
  for (const d of devices()) fs.writeFileSync(path.join(LOGS, `console-${d.name}.log`), d.console.join('\n') + '\n');
} finally {
  await browser.close();
  server.close();
}
const notRun = order.length - passed - failed;
console.log(`browser e2e: ${passed} passed, ${failed} failed${notRun > 0 ? `, ${notRun} not run` : ''}`);
process.exit(failed > 0 ? 1 : 0);
