// One device in one page, as an app would use the package: `init()` loads the wasm next to the
// module, `TandemClient` is the API. The driver calls `window.device.*` through
// `page.evaluate` and reads the event log.
import init, { TandemClient } from 'tandem-client';

const EVENTS = [
  'connection', 'syncProgress', 'leader', 'message', 'messageState', 'conversations', 'contact',
  'contactNotFound', 'group', 'distributionList', 'settings', 'profile', 'typing', 'devices',
  'newDeviceSync', 'alert', 'dropped', 'error', 'messageChanged',
];

const device = {
  client: null,
  /** Every event since the client was made, in order: {name, payload, at}. */
  log: [],
  online: false,

  attach(client) {
    this.client = client;
    for (const name of EVENTS) {
      client.on(name, (payload) => {
        if (name === 'connection') {
          if (payload.state === 'online') this.online = true;
          if (payload.state === 'disconnected') this.online = false;
        }
        // `conversations` is the whole list each time: keep only its length.
        const kept = name === 'conversations' ? { count: payload.length } : payload;
        this.log.push({ name, payload: kept, at: Date.now() });
        if (name === 'error' || name === 'dropped' || name === 'connection') {
          console.log(`[event ${name}] ${JSON.stringify(payload)}`);
        }
      });
    }
    return { identity: client.identity, deviceId: client.deviceId };
  },
  async create(options) { return this.attach(await TandemClient.create(options)); },
  async open(options) { return this.attach(await TandemClient.open(options)); },
  async importBackup(options) { return this.attach(await TandemClient.importBackup(options)); },
  /** A failing call's `Error`, as {name, message, isError} (null when it did not fail). */
  async failure(fn) {
    try { await fn(); return null; } catch (e) {
      return { isError: e instanceof Error, name: e?.name ?? null, message: String(e?.message ?? e) };
    }
  },
  events(name) { return this.log.filter((e) => e.name === name).map((e) => e.payload); },
};

await init();
window.TandemClient = TandemClient;
window.device = device;
window.deviceReady = true;
