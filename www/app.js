// Tandem's web app: a chat UI over the `tandem-client` package. Everything protocol-related
// (keys, the mediator session, storage) lives in the package; this file only renders state
// and turns clicks into calls. Served by the mediator Worker itself (DESIGN §2.6), so the
// mediator is this page's origin and the directory is at /directory/ on it.
import init, { TandemClient } from './pkg/tandem_client.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// One IndexedDB database per device: ?device=laptop and ?device=phone are two devices in one
// browser profile (for trying multi-device on one machine).
const deviceName = params.get('device') || 'default';
const database = `tandem-${deviceName}`;
const mediatorUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;

let client = null;
let current = null; // conversation id shown
let typingSent = false;
let typingTimer = null;
const typingPeers = new Map(); // identity -> timeout

function toast(text, error = false) {
  const el = document.createElement('div');
  el.className = error ? 'toast error' : 'toast';
  el.textContent = text;
  $('toasts').append(el);
  setTimeout(() => el.remove(), error ? 8000 : 4000);
}

// Runs a client call; a thrown Error (the package's messages are meant for people) becomes a toast.
function attempt(fn) {
  try {
    return fn();
  } catch (e) {
    toast(e.message || String(e), true);
    return undefined;
  }
}

const shortTime = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
const STATE_MARK = { pending: '…', sent: '✓', delivered: '✓✓', received: '', read: '✓✓ read' };
// What a screen reader says instead of the marks ("check mark check mark" otherwise).
const STATE_WORDS = { pending: 'sending', sent: 'sent', delivered: 'delivered', received: '', read: 'read' };

function conversationName(id) {
  const [kind, rest] = [id.slice(0, id.indexOf('/')), id.slice(id.indexOf('/') + 1)];
  if (kind === 'contact') {
    const c = client.contacts().find((c) => c.identity === rest);
    return c ? c.displayName || c.identity : rest;
  }
  if (kind === 'group') {
    const g = client.groups().find((g) => g.id === rest);
    return g ? `${g.name || 'Unnamed group'} (${g.members.length + 1})` : 'Group';
  }
  const l = client.distributionLists().find((l) => l.id === rest);
  return l ? `${l.name} (list)` : 'Distribution list';
}

function renderConversations() {
  const ul = $('conversations');
  ul.replaceChildren();
  for (const conv of client.conversations()) {
    const li = document.createElement('li');
    li.dataset.id = conv.id;
    li.classList.toggle('active', conv.id === current);
    // A button, so Tab reaches every conversation and Enter or Space opens it.
    const open = document.createElement('button');
    open.type = 'button';
    if (conv.id === current) open.setAttribute('aria-current', 'true');
    const text = document.createElement('span');
    text.className = 'text';
    const name = document.createElement('strong');
    name.textContent = conversationName(conv.id);
    const last = document.createElement('span');
    last.className = 'last muted';
    last.style.display = 'block';
    last.textContent = conv.lastMessage ? conv.lastMessage.text : '';
    text.append(name, last);
    open.append(text);
    if (conv.unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = String(conv.unread);
      badge.setAttribute('aria-label', `${conv.unread} unread`);
      open.append(badge);
    }
    open.addEventListener('click', () => show(conv.id));
    li.append(open);
    ul.append(li);
  }
}

function renderMessages() {
  if (!current) return;
  const ol = $('messages');
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  ol.replaceChildren();
  const isGroup = current.startsWith('group/');
  // Group senders by name where one is known (one contacts() call per render, not per message).
  const names = new Map(isGroup ? client.contacts().map((c) => [c.identity, c.displayName || c.identity]) : []);
  for (const m of attempt(() => client.messages(current)) || []) {
    const li = document.createElement('li');
    li.className = m.outgoing ? 'mine' : '';
    li.dataset.key = m.key;
    li.textContent = isGroup && !m.outgoing ? `${names.get(m.sender) ?? m.sender}: ${m.text}` : m.text;
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = shortTime(m.createdAt);
    if (m.outgoing) {
      const mark = document.createElement('span');
      mark.textContent = ` ${STATE_MARK[m.state] ?? m.state}`;
      mark.setAttribute('aria-hidden', 'true');
      const words = document.createElement('span');
      words.className = 'visually-hidden';
      words.textContent = `, ${STATE_WORDS[m.state] ?? m.state}`;
      meta.append(mark, words);
    }
    li.append(meta);
    ol.append(li);
  }
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

function renderChatHead() {
  $('chat-title').textContent = conversationName(current);
  const isGroup = current.startsWith('group/');
  $('chat-members').hidden = !isGroup;
  $('chat-leave').hidden = !isGroup;
  const peer = current.startsWith('contact/') ? current.slice(8) : null;
  $('chat-typing').textContent = peer && typingPeers.has(peer) ? 'typing…' : '';
}

function markReadIfVisible() {
  if (current && document.visibilityState === 'visible') attempt(() => client.markRead(current));
}

function show(id) {
  stopTyping();
  current = id;
  $('main').classList.add('in-chat'); // at phone width, the chat replaces the list
  $('chat-empty').hidden = true;
  $('chat').hidden = false;
  renderChatHead();
  renderMessages();
  const ol = $('messages');
  ol.scrollTop = ol.scrollHeight;
  markReadIfVisible();
  renderConversations();
  $('composer-text').focus();
}

/** Back to the conversation list (the only way back at phone width, where the chat covers it). */
function closeChat() {
  stopTyping();
  const was = current;
  current = null;
  $('main').classList.remove('in-chat');
  $('chat').hidden = true;
  $('chat-empty').hidden = false;
  renderConversations();
  const li = [...$('conversations').children].find((el) => el.dataset.id === was);
  (li?.querySelector('button') ?? $('new-chat-id')).focus();
}

/**
 * Splits a text longer than one message may be into parts of at most `max` UTF-8 bytes, at a
 * line break or a space in the second half of a part where there is one, else between
 * characters (never inside one).
 */
function splitText(text, max) {
  const encoder = new TextEncoder();
  const parts = [];
  let rest = text;
  while (encoder.encode(rest).length > max) {
    let bytes = 0;
    let end = 0;
    for (const ch of rest) {
      const n = encoder.encode(ch).length;
      if (bytes + n > max) break;
      bytes += n;
      end += ch.length;
    }
    const space = Math.max(rest.lastIndexOf('\n', end - 1), rest.lastIndexOf(' ', end - 1));
    const cut = space >= end / 2 ? space + 1 : end;
    parts.push(rest.slice(0, cut));
    rest = rest.slice(cut);
  }
  parts.push(rest);
  return parts.filter((p) => p.trim());
}

/** Grows the composer with its text, up to its CSS max-height. */
function fitComposer() {
  const box = $('composer-text');
  box.style.height = 'auto';
  box.style.height = `${box.scrollHeight + 2}px`;
}

function stopTyping() {
  clearTimeout(typingTimer);
  if (typingSent && current?.startsWith('contact/')) {
    attempt(() => client.sendTyping(current.slice(8), false));
  }
  typingSent = false;
}

function renderHeader() {
  $('me-identity').textContent = client.identity;
  const nick = client.nickname();
  $('me-nickname').textContent = nick ? `(${nick})` : '';
  $('leader').hidden = !client.isLeader;
}

function setConnection(event) {
  const conn = $('conn');
  conn.classList.toggle('online', event.state === 'online');
  // retryNow() works in both cases: after a stop, and to skip a pending retry's wait.
  $('retry').hidden = event.state !== 'disconnected';
  if (event.state === 'disconnected') {
    if (event.stopped) {
      conn.textContent = 'stopped';
      toast(`Disconnected for good: ${event.stopped}`, true);
    } else {
      const wait = event.retryAt ? Math.max(0, Math.round((event.retryAt - Date.now()) / 1000)) : null;
      conn.textContent = wait === null ? 'offline' : `offline, retry in ${wait} s`;
    }
  } else {
    conn.textContent = event.state;
  }
}

/**
 * Asks the mediator for the group's devices once; the answer comes back as a `devices` event,
 * which only renders. (Rendering must never ask again: a `devices` handler that called
 * `listDevices` sent GetDevicesInfo in a loop, ≈ 1 000 frames a second with Settings open.)
 */
function refreshDevices() {
  client.listDevices().catch((e) => toast(e.message, true));
}

function showDevices(devices) {
  const ul = $('devices');
  ul.replaceChildren();
  for (const d of devices) {
    const li = document.createElement('li');
    const what = document.createElement('span');
    const state = d.online === null ? '' : d.online ? ' · online' : ' · offline';
    what.textContent = `${d.label || d.id}${d.thisDevice ? ' (this device)' : ''}${state}`;
    li.append(what);
    if (!d.thisDevice) {
      const drop = document.createElement('button');
      drop.type = 'button';
      drop.className = 'link';
      drop.textContent = 'remove';
      drop.setAttribute('aria-label', `Remove device ${d.label || d.id}`);
      drop.addEventListener('click', () => {
        if (confirm(`Remove device "${d.label || d.id}"? It loses access and its queue.`)) {
          attempt(() => client.dropDevice(d.id));
          setTimeout(refreshDevices, 500);
        }
      });
      li.append(drop);
    }
    ul.append(li);
  }
}

function wire() {
  client.on('connection', setConnection);
  client.on('leader', renderHeader);
  client.on('profile', renderHeader);
  client.on('syncProgress', ({ received, total }) => {
    $('sync').hidden = received >= total;
    $('sync').textContent = `syncing ${received}/${total}`;
  });
  client.on('conversations', renderConversations);
  client.on('message', ({ conversation, message }) => {
    if (message && !message.outgoing) {
      $('announce').textContent = `New message from ${conversationName(conversation)}: ${message.text}`;
    }
    if (conversation === current) {
      renderMessages();
      markReadIfVisible();
    }
  });
  client.on('messageState', ({ conversation }) => { if (conversation === current) renderMessages(); });
  for (const name of ['contact', 'group', 'distributionList']) {
    client.on(name, () => { renderConversations(); if (current) renderChatHead(); });
  }
  client.on('contactNotFound', ({ message }) => toast(message, true));
  client.on('typing', ({ identity, typing }) => {
    clearTimeout(typingPeers.get(identity));
    if (typing) typingPeers.set(identity, setTimeout(() => { typingPeers.delete(identity); if (current) renderChatHead(); }, 15000));
    else typingPeers.delete(identity);
    if (current) renderChatHead();
  });
  client.on('devices', (devices) => { if ($('settings').open) showDevices(devices); });
  client.on('newDeviceSync', ({ messages }) => toast(`Sent your data and ${messages} recent messages to a new device.`));
  client.on('syncFailed', ({ scope }) => toast(scope === 'NEW_DEVICE_SYNC'
    ? 'Could not send everything to your new device; it keeps what arrived.'
    : 'A change could not be synced to your devices and was not applied. Please try again.'));
  client.on('alert', ({ text }) => toast(text));
  client.on('clockOffset', ({ offsetMs }) => {
    const minutes = Math.round(Math.abs(offsetMs) / 60000);
    toast(`This device's clock is ${minutes} minutes ${offsetMs > 0 ? 'ahead of' : 'behind'} the server's. `
      + 'Please set the correct time, or message times will be off.', true);
  });
  // Something from the network was skipped (docs/protocol.md). Message types this app does not
  // show (edits, deletions, reactions, calls of current Threema clients) are expected: logged
  // only, the conversation stays as it was. The rest is told as what it is.
  client.on('dropped', ({ reason }) => {
    if (reason === 'unsupported') {
      console.info('tandem: skipped a message of a type this app does not show');
      return;
    }
    toast(`A message could not be shown (${reason}).`, true);
  });
  client.on('error', ({ message }) => toast(message, true));
  document.addEventListener('visibilitychange', markReadIfVisible);

  $('retry').addEventListener('click', () => attempt(() => client.retryNow()));
  $('chat-back').addEventListener('click', closeChat);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && current && !$('settings').open) closeChat();
  });
  $('new-chat').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('new-chat-id').value.trim().toUpperCase();
    if (attempt(() => { client.addContact(id); return true; })) {
      $('new-chat-id').value = '';
      show(`contact/${id}`);
    }
  });
  $('new-group').addEventListener('submit', (e) => {
    e.preventDefault();
    const members = $('new-group-members').value.split(',').map((s) => s.trim().toUpperCase()).filter(Boolean);
    const id = attempt(() => client.createGroup($('new-group-name').value.trim(), members));
    if (id) {
      $('new-group-name').value = '';
      $('new-group-members').value = '';
      show(`group/${id}`);
    }
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('composer-text').value;
    if (!text.trim() || !current) return;
    // Never cut a long paste short without a word: offer to send it in parts.
    const parts = splitText(text, client.maxTextBytes);
    if (parts.length > 1 && !confirm(`This text (${text.length} characters) is too long for one message. `
      + `Send it as ${parts.length} messages?`)) return;
    stopTyping();
    let sent = 0;
    while (sent < parts.length && attempt(() => client.sendText(current, parts[sent])) !== undefined) sent += 1;
    // What was not sent stays in the composer.
    $('composer-text').value = sent === 0 ? text : parts.slice(sent).join('');
    fitComposer();
    renderMessages();
    $('messages').scrollTop = $('messages').scrollHeight;
  });
  $('composer-text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('composer-text').addEventListener('input', () => {
    fitComposer();
    if (!current?.startsWith('contact/') || !client.settings().typingIndicators) return;
    if (!typingSent) {
      typingSent = Boolean(attempt(() => { client.sendTyping(current.slice(8), true); return true; }));
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, 5000);
  });
  $('chat-rename').addEventListener('click', () => {
    if (current.startsWith('contact/')) {
      const c = client.contacts().find((c) => c.identity === current.slice(8));
      const first = prompt('First name', c?.firstName ?? '');
      if (first === null) return;
      const last = prompt('Last name', c?.lastName ?? '');
      if (last === null) return;
      attempt(() => client.renameContact(current.slice(8), first, last));
    } else if (current.startsWith('group/')) {
      const name = prompt('Group name', client.groups().find((g) => g.id === current.slice(6))?.name ?? '');
      if (name !== null) attempt(() => client.renameGroup(current.slice(6), name));
    } else {
      const name = prompt('List name');
      if (name !== null) attempt(() => client.updateDistributionList(current.slice(5), name, undefined));
    }
  });
  $('chat-members').addEventListener('click', () => {
    const g = client.groups().find((g) => g.id === current.slice(6));
    const value = prompt('Members (Tandem IDs, comma separated)', g?.members.join(', ') ?? '');
    if (value === null) return;
    attempt(() => client.setGroupMembers(current.slice(6), value.split(',').map((s) => s.trim().toUpperCase()).filter(Boolean)));
  });
  $('chat-leave').addEventListener('click', () => {
    if (confirm('Leave this group?')) attempt(() => client.leaveGroup(current.slice(6)));
  });

  $('open-settings').addEventListener('click', () => {
    const s = client.settings();
    $('set-nickname').value = client.nickname();
    $('set-receipts').checked = s.readReceipts;
    $('set-typing').checked = s.typingIndicators;
    $('set-block-unknown').checked = s.blockUnknown;
    $('backup-out').hidden = true;
    $('backup-out').value = '';
    $('settings').showModal();
    refreshDevices();
  });
  $('save-settings').addEventListener('click', () => {
    const nickname = $('set-nickname').value.trim();
    if (nickname !== client.nickname()) attempt(() => client.setNickname(nickname));
    attempt(() => client.updateSettings({
      readReceipts: $('set-receipts').checked,
      typingIndicators: $('set-typing').checked,
      blockUnknown: $('set-block-unknown').checked,
    }));
  });
  $('rename-device').addEventListener('click', async () => {
    const label = $('device-label').value.trim();
    if (!label) return;
    try {
      await client.renameDevice(label);
      toast('Device renamed.');
      refreshDevices();
    } catch (e) {
      toast(e.message, true);
    }
  });
  $('export-backup').addEventListener('click', () => {
    const backup = attempt(() => client.exportBackup($('backup-password').value));
    if (backup) {
      $('backup-out').value = backup;
      $('backup-out').hidden = false;
      $('backup-password').value = '';
    }
  });
}

function start(c) {
  client = c;
  $('setup').hidden = true;
  $('main').hidden = false;
  renderHeader();
  renderConversations();
  wire();
}

async function setup() {
  $('setup-db').textContent = database;
  $('setup').hidden = false;
  $('setup-label').value = deviceName === 'default' ? 'Web browser' : `Web browser (${deviceName})`;
  const busy = (on) => { for (const b of document.querySelectorAll('#setup button')) b.disabled = on; };
  const run = async (make) => {
    busy(true);
    $('setup-error').textContent = '';
    try {
      start(await make());
    } catch (e) {
      $('setup-error').textContent = e.message || String(e);
    } finally {
      busy(false);
    }
  };
  $('create-form').addEventListener('submit', (e) => {
    e.preventDefault();
    run(() => TandemClient.create({ mediatorUrl, database, deviceLabel: $('setup-label').value.trim() || undefined }));
  });
  $('import-form').addEventListener('submit', (e) => {
    e.preventDefault();
    run(() => TandemClient.importBackup({
      backup: $('import-backup').value.trim(),
      password: $('import-password').value,
      mediatorUrl,
      database,
      deviceLabel: $('setup-label').value.trim() || undefined,
    }));
  });
}

await init();
try {
  start(await TandemClient.open({ database, mediatorUrl }));
} catch (e) {
  if (/holds no identity/.test(e.message)) {
    await setup();
  } else {
    document.body.textContent = `Tandem could not open this device: ${e.message}`;
  }
}
