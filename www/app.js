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
let pendingAdd = null; // the Tandem ID being looked up for "Add contact"
let syncTimer = null; // shows "Updating…" only when a sync takes longer than a second
let connTick = null; // repaints the retry countdown
let startedAt = 0; // when this tab opened the device (Date.now()); the newer tab keeps it
// One device can be open in one tab at a time (the mediator closes the older connection with
// 4112). The tab that opens it says so here, and the others step aside (docs/web-app.md).
const tabs = 'BroadcastChannel' in window ? new BroadcastChannel(`tandem-tab-${database}`) : null;
// Lines the app shows in a chat for what happened to a group (renamed, someone left): the
// client keeps no such messages, so the app notes what it saw, in this browser only.
const NOTES_KEY = `tandem-notes-${database}`;
let notes = {};
try { notes = JSON.parse(localStorage.getItem(NOTES_KEY) || '{}') || {}; } catch { notes = {}; }
// This device's own preferences (not synced): desktop notifications.
const PREFS_KEY = `tandem-prefs-${database}`;
let prefs = {};
try { prefs = JSON.parse(localStorage.getItem(PREFS_KEY) || '{}') || {}; } catch { prefs = {}; }
function savePrefs() {
  try { localStorage.setItem(PREFS_KEY, JSON.stringify(prefs)); } catch { /* storage full: kept for this tab */ }
}
let searchText = '';
let openActions = null; // key of the message whose actions are shown
let compose = null; // { kind: 'reply' | 'edit', key } while the composer replies to or edits a message
const CHANGE_WINDOW_MS = 6 * 60 * 60 * 1000; // edits and deletes for everyone (Threema's 6 hours)
// The reactions offered in a message's actions (any emoji that others put shows too).
const QUICK_REACTIONS = ['👍', '❤️', '😂', '😮', '😢', '🙏']; // what "search in this conversation" looks for ('' = show everything)
let wiping = false;
// The desktop notification shown for each conversation, and for which message.
const notified = new Map(); // conversation id -> { notification, key } // this device is being wiped: its own removal (4113) is expected
const groupSeen = new Map(); // group id -> { name, members, userState } as last shown
const removedHere = new Set(); // "group id/identity" this tab removed from a group

function toast(text, error = false) {
  const el = document.createElement('div');
  el.className = error ? 'toast error' : 'toast';
  el.textContent = text;
  $('toasts').append(el);
  setTimeout(() => el.remove(), error ? 8000 : 4000);
}

// The package's error messages, in the words of this app (no IDs of internal objects, no API
// names); anything not listed keeps its text, without the internal parts.
const SENTENCES = [
  [/^identity (\S+) not found in the directory/, (id) => `No Tandem ID ${id} exists.`],
  [/^invalid identity/, () => 'A Tandem ID has 8 characters: letters A–Z and digits.'],
  [/^cannot message the own identity/, () => 'That is your own Tandem ID.'],
  [/^unknown contact (\S+)/, (id) => `${id} is not one of your contacts yet: add it with "Add contact" first.`],
  [/^only the creator may change group/, () => 'Only the person who created this group can change its name or members.'],
  [/^not a member of group/, () => 'You are no longer in this group.'],
  [/^unknown group/, () => 'This group is not on this device.'],
  [/^no members/, () => 'A group needs at least one other member.'],
  [/^text of \d+ bytes exceeds/, () => 'This text is too long for one message.'],
  [/^empty text/, () => 'Type a message first.'],
  [/^not connected/, () => 'Not connected right now. Try again when the device is online.'],
  [/^the directory could not be reached to look up (\S+)/, (id) => `Could not look up ${id}: the Tandem directory did not answer. Check the connection and try again.`],
  [/^directory at /, () => 'The Tandem directory did not answer. Check the connection and try again.'],
  [/^storage: /, () => 'This browser refused to store Tandem\'s data (private window, or the disk is full?).'],
  [/^database .* already holds identity/, () => 'This browser already holds this device\'s identity. Reload the page.'],
  [/^wrong backup password/, () => 'Wrong backup password (or a mistyped backup).'],
  [/^this client was closed/, () => 'This tab no longer runs Tandem. Reload the page.'],
  [/^unknown message/, () => 'This message is no longer there.'],
  [/^only the sender may change a message/, () => 'Only the sender can edit a message or delete it for everyone.'],
  [/^message not sent yet/, () => 'This message is still being sent. Try again in a moment.'],
  [/^invalid reaction/, () => 'A reaction is one emoji.'],
  [/^message too old to change/, () => 'A message can be edited or deleted for everyone for 6 hours after it was written.'],
  [/^disconnected before the device list came/, () => 'The connection dropped before the list of devices arrived. Open Settings again when online.'],
];
function sentence(message) {
  const text = String(message);
  for (const [pattern, say] of SENTENCES) {
    const m = pattern.exec(text);
    if (m) return say(m[1]);
  }
  const plain = text.replace(/GroupId \{.*\}/, 'this group').replace(/;? ?call retryNow\(\)[^.]*/, '');
  return plain.charAt(0).toUpperCase() + plain.slice(1);
}

// Runs a client call; a thrown Error becomes a toast, in the app's words.
function attempt(fn) {
  try {
    return fn();
  } catch (e) {
    toast(sentence(e.message || e), true);
    return undefined;
  }
}

const shortTime = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
const STATE_MARK = { pending: '…', sent: '✓', delivered: '✓✓', received: '', read: '✓✓ read' };
// What a screen reader says instead of the marks ("check mark check mark" otherwise).
const STATE_WORDS = { pending: 'sending', sent: 'sent', delivered: 'delivered', received: '', read: 'read' };

// Replies use Threema's quote format (version 2): the text starts with "> quote #" and the
// quoted message's id as 16 hex digits of its 8 bytes in wire order (little-endian), then an
// empty line, then the reply (docs/protocol.md "Replies"). The client's message keys carry the
// id as a number in hex (SENDER/HEXID), so the byte order is turned around here.
const QUOTE = /^> quote #([0-9a-f]{16})\r?\n\r?\n([\s\S]*)$/;
const flipHex = (hex) => hex.match(/../g).reverse().join('');
/** {id, reply} of a reply (id as in the message keys), or null. */
function parseQuote(text) {
  const m = QUOTE.exec(text);
  return m ? { id: flipHex(m[1]), written: m[1], reply: m[2] } : null;
}
const quoteHeader = (key) => `> quote #${flipHex(key.slice(key.indexOf('/') + 1))}\n\n`;
/** What a message says, as the lists and notices show it. */
function shownText(m) {
  if (!m) return '';
  if (m.deletedAt) return 'This message was deleted.';
  return parseQuote(m.text)?.reply ?? m.text;
}
/** Whether the user may still edit or delete an own message for everyone. */
const changeable = (m) => m.outgoing && !m.deletedAt && m.state !== 'pending' && Date.now() - m.createdAt < CHANGE_WINDOW_MS;

function conversationName(id) {
  const [kind, rest] = [id.slice(0, id.indexOf('/')), id.slice(id.indexOf('/') + 1)];
  if (kind === 'contact') {
    const c = client.contacts().find((c) => c.identity === rest);
    return c ? c.displayName || c.identity : rest;
  }
  if (kind === 'group') {
    const g = client.groups().find((g) => g.id === rest);
    return g ? `${g.name || 'Unnamed group'} (${groupPeople(g).count})` : 'Group';
  }
  const l = client.distributionLists().find((l) => l.id === rest);
  return l ? `${l.name} (list)` : 'Distribution list';
}

/** A contact's name where one is known, else the ID. */
function nameOf(identity) {
  const c = client.contacts().find((c) => c.identity === identity);
  return c?.displayName || identity;
}

/**
 * Who is in a group as this device knows it. The client's `members` leave out both the creator
 * and this user (so a member saw "(1)" and an empty list); the creator is `creator`, and this
 * user counts while `userState` is "member".
 */
function groupPeople(g) {
  const me = client.identity;
  const others = [...new Set([g.creator, ...g.members])].filter((id) => id !== me);
  const inIt = g.userState === 'member';
  return { others, inIt, count: others.length + (inIt ? 1 : 0) };
}

const groupOf = (conversationId) => client.groups().find((g) => g.conversation === conversationId);

/** A line in a chat for something that happened (not a message); kept in this browser. */
function addNote(conversationId, text) {
  const list = (notes[conversationId] ??= []);
  list.push({ at: Date.now(), text });
  if (list.length > 100) list.splice(0, list.length - 100);
  try { localStorage.setItem(NOTES_KEY, JSON.stringify(notes)); } catch { /* storage full: shown, not kept */ }
  if (conversationId === current) renderMessages();
}

const groupShape = (g) => ({ name: g.name, members: [...g.members], userState: g.userState });

/** Notes what changed in a group since it was last seen (the `group` event carries the result). */
function noteGroupChange(id, g) {
  const before = groupSeen.get(id);
  if (!g) { groupSeen.delete(id); return; }
  groupSeen.set(id, groupShape(g));
  if (!before) return;
  const me = client.identity;
  const conv = g.conversation;
  const mine = g.creator === me;
  if (g.name !== before.name) {
    const who = mine ? 'You' : nameOf(g.creator);
    addNote(conv, g.name ? `${who} renamed the group to “${g.name}”.` : `${who} removed the group's name.`);
  }
  if (before.userState === 'member' && g.userState === 'left') addNote(conv, 'You left the group.');
  if (before.userState === 'member' && g.userState === 'kicked') addNote(conv, 'You were removed from the group, or its creator ended it.');
  if (before.userState !== 'member' && g.userState === 'member') addNote(conv, `${nameOf(g.creator)} added you to the group again.`);
  if (g.userState !== 'member' || before.userState !== 'member') return;
  for (const id2 of before.members.filter((m) => !g.members.includes(m))) {
    const here = removedHere.delete(`${id}/${id2}`);
    // A member who leaves is removed by the client as well; only a removal this tab made is
    // known as one (docs/web-app.md).
    addNote(conv, here ? `You removed ${nameOf(id2)}.` : mine ? `${nameOf(id2)} left the group.` : `${nameOf(id2)} is no longer in the group.`);
  }
  for (const id2 of g.members.filter((m) => !before.members.includes(m))) {
    addNote(conv, `${mine ? 'You' : nameOf(g.creator)} added ${nameOf(id2)}.`);
  }
}

function renderConversations() {
  const ul = $('conversations');
  // The list is rebuilt on every change (a message, a read receipt): keyboard focus on one of
  // its conversations moves to the new button of the same conversation instead of being lost.
  const focused = document.activeElement?.closest('#conversations li')?.dataset.id;
  ul.replaceChildren();
  // A group shows as soon as one is in it, before its first message (the client lists
  // conversations that have messages).
  const list = client.conversations();
  const listed = new Set(list.map((c) => c.id));
  for (const g of client.groups()) {
    if (g.userState === 'member' && !listed.has(g.conversation)) list.push({ id: g.conversation, unread: 0, lastMessage: null });
  }
  // The tab's title carries the number of unread messages ("(3) Tandem").
  const unread = list.reduce((n, c) => n + (c.unread > 0 ? c.unread : 0), 0);
  document.title = unread > 0 ? `(${unread}) Tandem` : 'Tandem';
  for (const conv of list) {
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
    last.textContent = shownText(conv.lastMessage);
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
    if (conv.id === focused) open.focus();
  }
}

function renderMessages() {
  if (!current) return;
  const ol = $('messages');
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  // The list is rebuilt on every change: keyboard focus on a message's actions comes back.
  const focusKey = document.activeElement?.closest('#messages li')?.dataset.key;
  const focusAction = document.activeElement?.dataset.action;
  ol.replaceChildren();
  const isGroup = current.startsWith('group/');
  // Group senders by name where one is known (one contacts() call per render, not per message).
  const names = new Map(isGroup ? client.contacts().map((c) => [c.identity, c.displayName || c.identity]) : []);
  // The app's own notes (group renamed, someone left) go between the messages by time.
  // While searching, only the messages that contain the text (and no notes).
  const needle = searchText.toLocaleLowerCase();
  const pending = needle ? [] : [...(notes[current] ?? [])];
  // A line before the first message (or note) of each day: "Today", "Yesterday", a date.
  let lastDay = null;
  const dayLine = (at) => {
    const day = new Date(at).toDateString();
    if (day === lastDay) return;
    lastDay = day;
    const li = document.createElement('li');
    li.className = 'day';
    li.textContent = dayName(at);
    ol.append(li);
  };
  const noteUntil = (at) => {
    while (pending.length > 0 && pending[0].at <= at) {
      const note = pending.shift();
      dayLine(note.at);
      const li = document.createElement('li');
      li.className = 'note';
      li.textContent = note.text;
      ol.append(li);
    }
  };
  let found = 0;
  const all = attempt(() => client.messages(current)) || [];
  const byId = new Map(all.map((m) => [m.key.slice(m.key.indexOf('/') + 1), m]));
  for (const m of all) {
    if (needle && (m.deletedAt || !shownText(m).toLocaleLowerCase().includes(needle))) continue;
    found += 1;
    noteUntil(m.createdAt);
    dayLine(m.createdAt);
    const li = document.createElement('li');
    li.className = m.outgoing ? 'mine' : '';
    li.dataset.key = m.key;
    const quote = m.deletedAt ? null : parseQuote(m.text);
    if (m.deletedAt) {
      li.classList.add('deleted');
      li.append(m.outgoing ? 'You deleted this message.' : 'This message was deleted.');
    } else {
      if (isGroup && !m.outgoing) li.append(`${names.get(m.sender) ?? m.sender}: `);
      li.append(...highlighted(quote ? quote.reply : m.text, needle));
    }
    if (quote) {
      li.prepend(quoteBlock(byId.get(quote.id), names));
      li.dataset.quotes = quote.written;
    }
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = shortTime(m.createdAt) + (m.editedAt && !m.deletedAt ? ' · edited' : '');
    if (m.outgoing) {
      const mark = document.createElement('span');
      mark.textContent = ` ${STATE_MARK[m.state] ?? m.state}`;
      mark.setAttribute('aria-hidden', 'true');
      const words = document.createElement('span');
      words.className = 'visually-hidden';
      words.textContent = `, ${STATE_WORDS[m.state] ?? m.state}`;
      meta.append(mark, words);
    }
    if (!m.deletedAt && m.reactions.length > 0) li.append(reactionsRow(m));
    li.append(meta);
    addActions(li, m);
    ol.append(li);
    if (m.key === focusKey) li.querySelector(`[data-action="${focusAction}"]`)?.focus();
  }
  noteUntil(Infinity);
  if (needle) $('search-count').textContent = found === 0 ? 'No messages found' : found === 1 ? '1 message found' : `${found} messages found`;
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

/** Whether this user has put `emoji` on message `m`. */
const reacted = (m, emoji) => m.reactions.some((r) => r.identity === client.identity && r.emoji === emoji);

/** Puts this user's `emoji` on `m`, or takes it off when it is there (Threema's reactions). */
function toggleReaction(m, emoji) {
  attempt(() => client.react(m.key, emoji, !reacted(m, emoji)));
  renderMessages();
}

/** The reactions under a message: one button per emoji with its count; pressed when one of
 * them is this user's, and pressing it takes it back (or adds it). */
function reactionsRow(m) {
  const row = document.createElement('div');
  row.className = 'reactions';
  const counts = new Map();
  for (const r of m.reactions) counts.set(r.emoji, (counts.get(r.emoji) ?? 0) + 1);
  const canSend = !$('composer').hidden;
  for (const [emoji, count] of counts) {
    const mine = reacted(m, emoji);
    const chip = document.createElement('button');
    chip.type = 'button';
    chip.className = 'reaction';
    chip.dataset.action = `react ${emoji}`;
    chip.textContent = `${emoji} ${count}`;
    chip.setAttribute('aria-label', `${emoji} ${count}${mine ? ', yours among them' : ''}`);
    chip.setAttribute('aria-pressed', String(mine));
    chip.disabled = !canSend;
    chip.addEventListener('click', () => toggleReaction(m, emoji));
    row.append(chip);
  }
  return row;
}

/** The quoted message above a reply: its sender and text (or that it is gone). */
function quoteBlock(quoted, names) {
  const block = document.createElement('blockquote');
  block.className = 'quote';
  if (!quoted) {
    block.textContent = 'The quoted message is not on this device.';
    return block;
  }
  const who = document.createElement('strong');
  who.textContent = quoted.outgoing ? 'You' : (names.get(quoted.sender) ?? nameOf(quoted.sender));
  block.append(who, document.createElement('br'), shownText(quoted));
  return block;
}

/**
 * The "⋯" button of a message and, while open, its actions: reply, edit (own, for 6 hours),
 * delete for me, delete for everyone (own, for 6 hours).
 */
function addActions(li, m) {
  const more = document.createElement('button');
  more.type = 'button';
  more.className = 'link more';
  more.dataset.action = 'more';
  more.textContent = '⋯';
  more.setAttribute('aria-label', `Actions for ${m.outgoing ? 'your' : 'this'} message from ${shortTime(m.createdAt)}`);
  more.setAttribute('aria-expanded', String(openActions === m.key));
  more.addEventListener('click', () => {
    openActions = openActions === m.key ? null : m.key;
    renderMessages();
    // The focus goes to "Reply" (the action most used), else to the first one.
    const bar = $('messages').querySelector(`li[data-key="${m.key}"] .actions`);
    if (openActions) (bar?.querySelector('[data-action=reply]') ?? bar?.querySelector('button'))?.focus();
  });
  li.querySelector('.meta').append(more); // at the end of the time line
  if (openActions !== m.key) return;
  const bar = document.createElement('div');
  bar.className = 'actions';
  bar.setAttribute('role', 'group');
  bar.setAttribute('aria-label', 'Message actions');
  const button = (action, text, run, danger = false) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = danger ? 'link danger-link' : 'link';
    b.dataset.action = action;
    b.textContent = text;
    b.addEventListener('click', run);
    bar.append(b);
  };
  const canSend = !$('composer').hidden;
  if (!m.deletedAt && canSend) {
    for (const emoji of QUICK_REACTIONS) {
      button(`quick ${emoji}`, emoji, () => toggleReaction(m, emoji));
      const b = bar.lastChild;
      b.classList.add('quick');
      b.setAttribute('aria-label', reacted(m, emoji) ? `Take back ${emoji}` : `React with ${emoji}`);
      b.setAttribute('aria-pressed', String(reacted(m, emoji)));
    }
    button('reply', 'Reply', () => startCompose('reply', m));
  }
  if (changeable(m) && canSend) button('edit', 'Edit', () => startCompose('edit', m));
  const remove = (forEveryone, question) => () => {
    if (!confirm(question)) return;
    openActions = null;
    attempt(() => client.deleteMessage(m.key, forEveryone));
    renderMessages();
  };
  button('delete-here', 'Delete for me', remove(false, 'Delete this message on this device? Your other devices and the other people keep it.'), true);
  if (changeable(m) && canSend) {
    button('delete-all', 'Delete for everyone', remove(true, 'Delete this message for everyone? It is removed on your devices and for the people in this chat.'), true);
  }
  li.append(bar);
}

/** The composer replies to or edits a message until sent or cancelled. */
function startCompose(kind, m) {
  compose = { kind, key: m.key };
  openActions = null;
  const text = shownText(m);
  const excerpt = text.length > 60 ? `${text.slice(0, 60)}…` : text;
  $('compose-what').textContent = kind === 'edit' ? 'Editing your message' : `Replying to ${m.outgoing ? 'yourself' : nameOf(m.sender)}: “${excerpt}”`;
  $('compose-bar').hidden = false;
  if (kind === 'edit') $('composer-text').value = text;
  fitComposer();
  renderMessages();
  $('composer-text').focus();
}

function endCompose() {
  compose = null;
  $('compose-bar').hidden = true;
}

/** "Today", "Yesterday", or the date (with the weekday within a week). */
function dayName(at) {
  const day = new Date(at);
  day.setHours(0, 0, 0, 0);
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  const days = Math.round((today - day) / 86_400_000);
  if (days === 0) return 'Today';
  if (days === 1) return 'Yesterday';
  if (days > 1 && days < 7) return day.toLocaleDateString([], { weekday: 'long' });
  return day.toLocaleDateString([], { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
}

/** A text as nodes, with every place that matches `needle` (lower case) in a <mark>. */
function highlighted(text, needle) {
  if (!needle) return [text];
  const lower = text.toLocaleLowerCase();
  const out = [];
  let at = 0;
  for (let i = lower.indexOf(needle); i >= 0; i = lower.indexOf(needle, i + needle.length)) {
    if (i > at) out.push(text.slice(at, i));
    const mark = document.createElement('mark');
    mark.textContent = text.slice(i, i + needle.length);
    out.push(mark);
    at = i + needle.length;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

/** Opens or closes "search in this conversation". */
function setSearch(open) {
  $('search').hidden = !open;
  $('chat-search').setAttribute('aria-expanded', String(open));
  if (!open) {
    searchText = '';
    $('search-text').value = '';
    $('search-count').textContent = '';
  }
  if (current) renderMessages();
  if (open) $('search-text').focus();
}

function renderChatHead() {
  $('chat-title').textContent = conversationName(current);
  const isGroup = current.startsWith('group/');
  const g = isGroup ? groupOf(current) : null;
  const people = g ? groupPeople(g) : null;
  // Only the creator may rename a group or change its members: nobody else gets the buttons.
  const canChange = Boolean(g && g.creator === client.identity && people.inIt);
  $('chat-rename').hidden = isGroup && !canChange;
  $('chat-members').hidden = !canChange;
  $('chat-leave').hidden = !(people?.inIt);
  $('chat-sub').hidden = !g;
  if (g) {
    const who = people.others.map((id) => (id === g.creator ? `${nameOf(id)} (created the group)` : nameOf(id)));
    $('chat-sub').textContent = (people.inIt ? ['You', ...who] : who).join(', ');
  }
  // After leaving (or being removed) nothing can be sent: say so instead of a composer.
  const closed = Boolean(g && !people.inIt);
  $('composer').hidden = closed;
  $('chat-closed').hidden = !closed;
  $('chat-closed').textContent = g?.userState === 'left' ? 'You left this group.' : 'You are no longer in this group.';
  const peer = current.startsWith('contact/') ? current.slice(8) : null;
  $('chat-typing').textContent = peer && typingPeers.has(peer) ? 'typing…' : '';
}

function markReadIfVisible() {
  if (current && document.visibilityState === 'visible') attempt(() => client.markRead(current));
}

function show(id) {
  stopTyping();
  if (id !== current) {
    setSearch(false);
    endCompose();
    openActions = null;
  }
  current = id;
  $('main').classList.add('in-chat'); // at phone width, the chat replaces the list
  $('chat-empty').hidden = true;
  $('chat').hidden = false;
  renderChatHead();
  renderMessages();
  const ol = $('messages');
  ol.scrollTop = ol.scrollHeight;
  markReadIfVisible();
  if (document.visibilityState === 'visible') withdrawNotification(id);
  renderConversations();
  $('composer-text').focus();
}

/** Back to the conversation list (the only way back at phone width, where the chat covers it). */
function closeChat() {
  stopTyping();
  const was = current;
  setSearch(false);
  endCompose();
  openActions = null;
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
  $('leader-note').hidden = !client.isLeader;
}

const CONNECTION_WORDS = { connecting: 'Connecting…', connected: 'Connecting…', online: 'Online' };
let retryAction = () => attempt(() => client.retryNow());

function setConnection(event) {
  const conn = $('conn');
  clearInterval(connTick);
  connTick = null;
  conn.classList.toggle('online', event.state === 'online');
  if (event.state !== 'connected') hideSync();
  $('retry').hidden = event.state !== 'disconnected';
  $('retry').textContent = 'Retry now';
  retryAction = () => attempt(() => client.retryNow());
  if (event.state !== 'disconnected') {
    conn.textContent = CONNECTION_WORDS[event.state] ?? event.state;
    return;
  }
  if (event.stopped) {
    stopped(event);
    return;
  }
  // Offline for a reason that passes by itself (network, server restart): retried on a timer.
  const paint = () => {
    const wait = event.retryAt ? Math.round((event.retryAt - Date.now()) / 1000) : 0;
    conn.textContent = wait > 0 ? `Offline · retrying in ${wait} s` : 'Offline · retrying…';
  };
  paint();
  if (event.retryAt) connTick = setInterval(paint, 1000);
}

/**
 * The connection stopped and does not come back by itself (spec §3.5: 41xx close codes, or the
 * chat server refused the login). Each reason becomes a sentence and the one action that helps.
 */
function stopped({ code }) {
  $('conn').textContent = 'Not connected';
  if (wiping) return undefined; // this device removed itself (wipeDevice)
  if (code === 4112) return otherTab();
  if (code === 4113 || code === 4115) {
    return removed('Another of your devices removed this one from your identity. Its messages and keys are still '
      + 'stored in this browser: wipe them, then link this device again or start a new identity.');
  }
  if (code === 4114) {
    return removed('This device was offline for too long: the server dropped what it kept for it, so it can no '
      + 'longer catch up. Wipe it, then link it again from another of your devices.');
  }
  if (code === 4110) {
    toast('This version of the app is too old for the server. Reload the page to get the current one.', true);
    $('retry').textContent = 'Reload';
    retryAction = () => location.reload();
  } else if (code === 4111) {
    toast('Your identity already has as many devices as the server allows. Remove one in Settings on another '
      + 'device, then try again.', true);
    $('retry').textContent = 'Try again';
  } else {
    toast('The server refused this device\'s login. Try again in a while.', true);
    $('retry').textContent = 'Try again';
  }
}

/** Replaces the app with a screen that has one way on. */
function halt(title, text, action, onAction, danger = false) {
  clearInterval(connTick);
  hideSync();
  if ($('settings').open) $('settings').close();
  $('main').hidden = true;
  $('setup').hidden = true;
  $('loading').hidden = true;
  $('halt').hidden = false;
  document.title = 'Tandem';
  $('halt-title').textContent = title;
  $('halt-text').textContent = text;
  const button = $('halt-action');
  button.textContent = action;
  button.classList.toggle('danger', danger);
  button.disabled = false;
  button.onclick = onAction;
  button.focus();
}

/** Stops this tab's client (its socket and database connection) so that another tab can run. */
function closeClient() {
  if (!client) return;
  try { client.close(); } catch { /* already closed */ }
  client = null;
  // Nothing may call the closed client later (Escape, a typing timer, the tab becoming visible).
  clearTimeout(typingTimer);
  typingSent = false;
  current = null;
}

/**
 * Another tab runs this device now. This tab closes its client (two tabs on one database would
 * each keep their own picture of it) and offers to take over: "Use here" reloads, which opens
 * the device from the database as the other tab left it; that tab then steps aside.
 */
function otherTab() {
  closeClient();
  halt('Tandem is open in another tab', 'This device can be used in one tab at a time. Close the other tab, or '
    + 'use Tandem here instead: the other tab then stops.', 'Use here', () => location.reload());
}

/** The device was removed from the identity: wiping it is the way back to the setup screen. */
function removed(text) {
  closeClient();
  halt('This device was removed from your identity', text, 'Wipe this device', async () => {
    $('halt-action').disabled = true;
    tabs?.postMessage({ type: 'wipe' });
    // The browser deletes the database once no tab holds it open (the others were told above).
    const slow = setTimeout(() => toast('Still wiping: close the other tabs that have Tandem open.'), 3000);
    try {
      await TandemClient.deleteDatabase(database);
      forgetLocal();
      location.reload();
    } catch (e) {
      clearTimeout(slow);
      $('halt-action').disabled = false;
      toast(`Could not wipe this device: ${sentence(e.message || e)} Close its other tabs and try again.`, true);
    }
  }, true);
}

/** What the app itself keeps in this browser for the device (notes, preferences). */
function forgetLocal() {
  localStorage.removeItem(NOTES_KEY);
  localStorage.removeItem(PREFS_KEY);
}

/**
 * "Wipe this device" in Settings, for a device that was not removed: after a confirm, it removes
 * itself from the identity (the mediator drops its slot and closes with 4113, so the other
 * devices no longer list it), then deletes its database and the app's own keys, and reloads to
 * the setup screen.
 */
async function wipeDevice() {
  const devices = $('devices').children.length;
  const only = devices <= 1;
  const question = only
    ? 'This is your only device. Without an ID backup, your identity, contacts and messages are gone for good. Wipe this device?'
    : 'Sign this device out of your identity and delete its messages and keys from this browser? Your other devices keep everything.';
  if (!confirm(question)) return;
  wiping = true;
  $('wipe-device').disabled = true;
  tabs?.postMessage({ type: 'wipe' });
  if (client.isOnline) {
    // The mediator acks and closes this connection with 4113; waited for at most 5 s (offline,
    // the slot stays listed on the other devices until one of them removes it).
    const gone = new Promise((resolve) => {
      client.on('connection', (e) => { if (e.state === 'disconnected') resolve(); });
      setTimeout(resolve, 5000);
    });
    if (attempt(() => { client.dropDevice(client.deviceId); return true; })) await gone;
  }
  closeClient();
  try {
    await TandemClient.deleteDatabase(database);
    forgetLocal();
    location.reload();
  } catch (e) {
    wiping = false;
    $('wipe-device').disabled = false;
    toast(`Could not wipe this device: ${sentence(e.message || e)} Close its other tabs and try again.`, true);
  }
}

/** A desktop notification for an incoming message, when asked for and the tab is hidden. */
function notify(conversation, message) {
  if (!prefs.notify || !('Notification' in window) || Notification.permission !== 'granted') return;
  if (document.visibilityState !== 'hidden') return;
  const from = conversation.startsWith('group/') ? `${nameOf(message.sender)} in ${conversationName(conversation)}` : conversationName(conversation);
  try {
    const n = new Notification(from, { body: prefs.notifyText ? shownText(message) : 'New message', tag: conversation });
    n.onclick = () => { window.focus(); if (client) show(conversation); n.close(); };
    notified.set(conversation, { notification: n, key: message.key });
  } catch { /* a browser that allows notifications only from a service worker: none shown */ }
}

/** Takes back the notification of a conversation (opened here), or of one message (deleted). */
function withdrawNotification(conversation, key = null) {
  const shown = notified.get(conversation);
  if (!shown || (key && shown.key !== key)) return;
  notified.delete(conversation);
  shown.notification.close();
}

/** The notification settings as they are now; `asked` says what the browser answered. */
function showNotifyState() {
  const supported = 'Notification' in window;
  $('notify-section').hidden = !supported;
  if (!supported) return;
  const denied = Notification.permission === 'denied';
  $('set-notify').checked = Boolean(prefs.notify) && Notification.permission === 'granted';
  $('set-notify-text').checked = Boolean(prefs.notifyText);
  $('set-notify-text').disabled = !$('set-notify').checked;
  $('notify-state').textContent = denied
    ? 'This browser blocks notifications from Tandem: allow them in the browser\'s settings for this site.'
    : '';
}

function hideSync() {
  clearTimeout(syncTimer);
  syncTimer = null;
  $('sync').hidden = true;
}

/**
 * Asks the mediator for the group's devices once; the answer comes back as a `devices` event,
 * which only renders. (Rendering must never ask again: a `devices` handler that called
 * `listDevices` sent GetDevicesInfo in a loop, ≈ 1 000 frames a second with Settings open.)
 */
function refreshDevices() {
  client.listDevices().catch((e) => toast(sentence(e.message), true));
}

function showDevices(devices) {
  const ul = $('devices');
  // Rebuilt on every `devices` event: focus on a "remove" button stays on that device's.
  const focused = ul.contains(document.activeElement) ? document.activeElement.getAttribute('aria-label') : null;
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
        if (confirm(`Remove device "${d.label || d.id}"? It is signed out of your identity and has to be linked again to be used.`)) {
          attempt(() => client.dropDevice(d.id));
          setTimeout(refreshDevices, 500);
        }
      });
      li.append(drop);
    }
    ul.append(li);
    const remove = li.querySelector('button');
    if (focused && remove?.getAttribute('aria-label') === focused) remove.focus();
  }
}

function wire() {
  // A handler runs only while this tab's client is open: events already queued when the tab
  // stepped aside (closeClient) are not shown.
  const on = (name, handler) => client.on(name, (payload) => { if (client) handler(payload); });
  on('connection', setConnection);
  on('leader', renderHeader);
  on('profile', renderHeader);
  // Catching up after a connect usually takes milliseconds: "Updating…" only shows when it takes
  // longer than a second (the counts are sync items, not messages, so they are not shown).
  on('syncProgress', ({ received, total }) => {
    if (received >= total) hideSync();
    else if (!syncTimer && $('sync').hidden) syncTimer = setTimeout(() => { syncTimer = null; $('sync').hidden = false; }, 1000);
  });
  on('conversations', renderConversations);
  on('message', ({ conversation, message }) => {
    if (message && !message.outgoing) {
      $('announce').textContent = `New message from ${conversationName(conversation)}: ${shownText(message)}`;
      notify(conversation, message);
    }
    if (conversation === current) {
      renderMessages();
      markReadIfVisible();
    }
  });
  on('messageState', ({ conversation }) => { if (conversation === current) renderMessages(); });
  on('messageChanged', ({ conversation, key, message }) => {
    // Threema: a deleted message's notification should go too.
    if (message?.deletedAt) withdrawNotification(conversation, key);
    if (compose?.key === key && (!message || message.deletedAt)) {
      // The message being edited or answered is gone (deleted on another device, or by its sender).
      if (compose.kind === 'edit') $('composer-text').value = '';
      endCompose();
      fitComposer();
    }
    if (conversation === current) renderMessages();
  });
  on('group', ({ id, group }) => noteGroupChange(id, group));
  for (const name of ['contact', 'group', 'distributionList']) {
    on(name, () => { renderConversations(); if (current) renderChatHead(); });
  }
  // "Add contact" opens the chat once the directory knows the ID, and says so when it does not
  // (no chat is opened for an ID that does not exist).
  on('contact', ({ identity, contact }) => {
    if (identity !== pendingAdd || !contact) return;
    pendingAdd = null;
    addStatus('');
    $('new-chat-id').value = '';
    show(`contact/${identity}`);
  });
  on('contactNotFound', ({ identity, message }) => {
    if (identity === pendingAdd) {
      pendingAdd = null;
      addStatus(`No Tandem ID ${identity} exists. Check the ID and try again.`, true);
    } else {
      toast(sentence(message), true);
    }
  });
  on('typing', ({ identity, typing }) => {
    clearTimeout(typingPeers.get(identity));
    if (typing) typingPeers.set(identity, setTimeout(() => { typingPeers.delete(identity); if (current) renderChatHead(); }, 15000));
    else typingPeers.delete(identity);
    if (current) renderChatHead();
  });
  on('devices', (devices) => { if ($('settings').open) showDevices(devices); });
  on('newDeviceSync', ({ messages }) => toast(`Sent your data and ${messages} recent messages to a new device.`));
  on('syncFailed', ({ scope }) => toast(scope === 'NEW_DEVICE_SYNC'
    ? 'Could not send everything to your new device; it keeps what arrived.'
    : 'A change could not be synced to your devices and was not applied. Please try again.'));
  on('alert', ({ text }) => toast(text));
  on('clockOffset', ({ offsetMs }) => {
    const minutes = Math.round(Math.abs(offsetMs) / 60000);
    toast(`This device's clock is ${minutes} minutes ${offsetMs > 0 ? 'ahead of' : 'behind'} the server's. `
      + 'Please set the correct time, or message times will be off.', true);
  });
  // Something from the network was skipped (docs/protocol.md). Message types this app does not
  // show (edits, deletions, reactions, calls of current Threema clients) are expected: logged
  // only, the conversation stays as it was. The rest is told as what it is.
  // Replays, messages not for this identity and blocked senders are dropped on purpose:
  // logged only. A damaged message is told, without the internal reason.
  on('dropped', ({ reason }) => {
    if (['undecryptable', 'undecryptableEnvelope', 'badBody', 'invalidEnvelope', 'other'].includes(reason)) {
      toast('A message arrived damaged and could not be shown.', true);
    } else if (reason === 'unknownSender') {
      toast('A message from an ID the Tandem directory does not know was not shown.', true);
    } else {
      console.info(`tandem: skipped a message (${reason})`);
    }
  });
  on('error', ({ message }) => {
    if (pendingAdd && message.includes(pendingAdd)) {
      pendingAdd = null;
      addStatus(sentence(message), true);
    } else {
      toast(sentence(message), true);
    }
  });
  document.addEventListener('visibilitychange', markReadIfVisible);

  $('retry').addEventListener('click', () => retryAction());
  $('chat-back').addEventListener('click', closeChat);
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || !current || $('settings').open) return;
    if (openActions) {
      // Escape closes a message's actions first, back on its "⋯".
      const key = openActions;
      openActions = null;
      renderMessages();
      $('messages').querySelector(`li[data-key="${key}"] .more`)?.focus();
      return;
    }
    closeChat();
  });
  $('copy-id').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(client.identity);
      toast(`Your ID ${client.identity} was copied.`);
    } catch {
      toast(`Could not copy. Your ID is ${client.identity}.`, true);
    }
  });
  $('chat-search').addEventListener('click', () => setSearch($('search').hidden));
  $('search-close').addEventListener('click', () => { setSearch(false); $('chat-search').focus(); });
  $('search').addEventListener('submit', (e) => e.preventDefault());
  $('search-text').addEventListener('input', () => {
    searchText = $('search-text').value.trim();
    if (!searchText) $('search-count').textContent = '';
    renderMessages();
  });
  $('search-text').addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    // Escape leaves the search (the next one leaves the chat).
    e.preventDefault();
    e.stopPropagation();
    setSearch(false);
    $('chat-search').focus();
  });
  $('new-chat').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('new-chat-id').value.trim().toUpperCase();
    // A known contact: just open the chat.
    if (client.contacts().some((c) => c.identity === id)) {
      addStatus('');
      $('new-chat-id').value = '';
      show(`contact/${id}`);
      return;
    }
    try {
      client.addContact(id);
      pendingAdd = id;
      addStatus(`Looking up ${id}…`);
    } catch (err) {
      addStatus(sentence(err.message || err), true);
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
    if (compose?.kind === 'edit') {
      const m = (client.messages(current) || []).find((x) => x.key === compose.key);
      const quote = m ? parseQuote(m.text) : null;
      // A reply keeps what it quotes.
      const full = quote ? `${m.text.slice(0, m.text.length - quote.reply.length)}${text}` : text;
      if (attempt(() => { client.editMessage(compose.key, full); return true; })) {
        endCompose();
        $('composer-text').value = '';
        fitComposer();
        renderMessages();
      }
      return;
    }
    if (compose?.kind === 'reply') {
      const header = quoteHeader(compose.key);
      const max = client.maxTextBytes - new TextEncoder().encode(header).length;
      const parts = splitText(text, max);
      if (parts.length > 1 && !confirm(`This text (${text.length} characters) is too long for one message. `
        + `Send it as ${parts.length} messages?`)) return;
      stopTyping();
      let sent = 0;
      while (sent < parts.length && attempt(() => client.sendText(current, sent === 0 ? header + parts[0] : parts[sent])) !== undefined) sent += 1;
      if (sent > 0) endCompose();
      $('composer-text').value = sent === 0 ? text : parts.slice(sent).join('');
      fitComposer();
      renderMessages();
      $('messages').scrollTop = $('messages').scrollHeight;
      return;
    }
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
  $('compose-cancel').addEventListener('click', () => {
    if (compose?.kind === 'edit') $('composer-text').value = '';
    endCompose();
    fitComposer();
    $('composer-text').focus();
  });
  $('composer-text').addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && compose) {
      // Escape leaves the reply or the edit first (the next one leaves the chat).
      e.preventDefault();
      e.stopPropagation();
      $('compose-cancel').click();
      return;
    }
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
    if (value === null || !g) return;
    const members = value.split(',').map((s) => s.trim().toUpperCase()).filter(Boolean);
    for (const m of g.members.filter((m) => !members.includes(m))) removedHere.add(`${g.id}/${m}`);
    attempt(() => client.setGroupMembers(g.id, members));
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
    $('backup-download').hidden = true;
    showNotifyState();
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
      toast(sentence(e.message), true);
    }
  });
  $('export-backup').addEventListener('click', () => {
    const backup = attempt(() => client.exportBackup($('backup-password').value));
    if (backup) {
      $('backup-out').value = backup;
      $('backup-out').hidden = false;
      $('backup-download').hidden = false;
      $('backup-password').value = '';
    }
  });
  // The backup as a text file (the setup screen of another device opens it).
  $('backup-download').addEventListener('click', () => {
    const blob = new Blob([`${$('backup-out').value}\n`], { type: 'text/plain' });
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = `tandem-id-backup-${client.identity}.txt`;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  });
  $('set-notify').addEventListener('change', async () => {
    if (!$('set-notify').checked) {
      prefs.notify = false;
    } else {
      const answer = Notification.permission === 'granted' ? 'granted' : await Notification.requestPermission();
      prefs.notify = answer === 'granted';
    }
    savePrefs();
    showNotifyState();
  });
  $('set-notify-text').addEventListener('change', () => {
    prefs.notifyText = $('set-notify-text').checked;
    savePrefs();
  });
  $('wipe-device').addEventListener('click', wipeDevice);
}

/** The line under "Add contact": what happens with the ID typed there. */
function addStatus(text, error = false) {
  $('new-chat-status').textContent = text;
  $('new-chat-status').classList.toggle('error', error);
}

function start(c) {
  client = c;
  // This tab runs the device now: another tab with it open steps aside (see otherTab).
  startedAt = Date.now();
  tabs?.postMessage({ type: 'here', at: startedAt });
  for (const g of client.groups()) groupSeen.set(g.id, groupShape(g));
  $('setup').hidden = true;
  $('loading').hidden = true;
  $('main').hidden = false;
  renderHeader();
  renderConversations();
  wire();
}

if (tabs) {
  tabs.onmessage = ({ data }) => {
    // Another tab opened this device (later than this one: two tabs opening at once must not
    // both step aside), or wiped it: stop here (the setup screen stays as it is).
    if (client && (data?.type === 'wipe' || (data?.type === 'here' && data.at >= startedAt))) otherTab();
  };
}

async function setup() {
  if (deviceName !== 'default') $('setup-where').textContent = ` This page is the device “${deviceName}” of this browser (several can live side by side).`;
  $('loading').hidden = true;
  $('setup').hidden = false;
  $('setup-label').value = deviceName === 'default' ? 'Web browser' : `Web browser (${deviceName})`;
  const busy = (on) => { for (const b of document.querySelectorAll('#setup button')) b.disabled = on; };
  const run = async (make) => {
    busy(true);
    $('setup-error').textContent = '';
    try {
      start(await make());
    } catch (e) {
      $('setup-error').textContent = sentence(e.message || e);
    } finally {
      busy(false);
    }
  };
  $('create-form').addEventListener('submit', (e) => {
    e.preventDefault();
    run(() => TandemClient.create({ mediatorUrl, database, deviceLabel: $('setup-label').value.trim() || undefined }));
  });
  // A backup file (downloaded in another device's Settings) fills the field.
  $('import-file').addEventListener('change', async () => {
    const file = $('import-file').files?.[0];
    if (!file) return;
    const text = file.size > 10_000 ? '' : (await file.text()).trim();
    if (/^[A-Z2-7]{4}(-[A-Z2-7]{4}){19}$/.test(text)) {
      $('import-backup').value = text;
      $('setup-error').textContent = '';
      $('import-password').focus();
    } else {
      $('setup-error').textContent = 'This file holds no ID backup. Pick the file downloaded from another device\'s Settings.';
    }
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

/** Instead of the app: why it cannot start, and a reload. */
function fatal(title, text) {
  halt(title, text, 'Reload', () => location.reload());
}

let ready = false;
try {
  await init();
  ready = true;
} catch (e) {
  console.error('tandem: the WebAssembly module did not start:', e);
  fatal('Tandem cannot run in this browser', 'Tandem needs WebAssembly (with SIMD), which this browser does not '
    + 'offer or has turned off. Use a current Chrome, Edge, Firefox or Safari.');
}
if (ready) {
  try {
    // `hasIdentity` only reads IndexedDB: a first visit leaves no empty database behind.
    if (await TandemClient.hasIdentity(database)) start(await TandemClient.open({ database, mediatorUrl }));
    else await setup();
  } catch (e) {
    if (/holds no identity/.test(e.message)) {
      await setup();
    } else {
      fatal('Tandem could not open this device', sentence(e.message || e));
    }
  }
}
