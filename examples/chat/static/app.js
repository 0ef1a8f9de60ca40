// The chat demo's page: an ES module on chart.js, the library's JavaScript
// client (served by the demo at /chart.js), no build step.
//
// Data flow:
//   - signing in posts a display name to /api/signin; the server answers
//     with the uid it chose and sets a session cookie (HttpOnly: this page
//     never sees it). The socket and every API call are authenticated by
//     that cookie alone: the page never sends its uid, and the server would
//     not believe it.
//   - chat messages go through chart.js over one WebSocket (/ws, protocol
//     chart.v1): the page sends {"channel_id","content","type":3} or
//     {"to_user_id","content","type":3} with `await chart.send(...)`, which
//     resolves when the server has acknowledged the message and rejects
//     with the server's error code when it refused it. chart.js reconnects
//     by itself (backoff), resumes every stream where the page left it, so
//     that a cut or a reload loses and doubles nothing, and keeps unsent
//     messages until they are acknowledged. Before each connect the page
//     asks /api/session who it is: signed out (elsewhere, or the session
//     expired) shows the sign-in form; signed in as someone else reloads.
//   - joining and leaving channels are requests over the socket too:
//     `await chart.join(name)` / `chart.leave(name)` resolve when the server
//     (the demo's JoinServer) granted them, and reject with its error code.
//     After each connect the channel list is the welcome's (chart.js's
//     "recovered" event lists the user's channels).
//   - who is online is the member list of the "presence" channel, which the
//     library sends (presence events) and chart.js keeps: its "presence"
//     event gives what changed and the whole list, and applyPresenceDelta
//     applies it. The events carry uids: the page asks /api/names for the
//     names it does not know yet.
//   - chart.js's timing (heartbeat, backoff) comes from /api/config, which
//     the server's flags set; nothing is read from the page's own URL.
//
// What a tab keeps in its sessionStorage (per tab, so two tabs never share
// an outbox; it survives a reload): chart.js's positions and unsent
// messages, and the conversation shown. A reload thus shows the same
// conversation, then what arrived meanwhile, each message once. Signing out
// forgets all of it.
//
// What it keeps is bounded, so that a flood (thousands of direct messages
// from many senders) cannot freeze the tab: MAX_KEPT messages per
// conversation, MAX_SHOWN in the page at once (the oldest go first),
// MAX_ONLINE_SHOWN people in the online list, MAX_NAMES display names.
//
// The connection's state is always shown in #connection (data-testid
// "connection"): its text and data-state are chart.js's state, "connecting",
// "open" or "closed". #app's data-ready is "true" once the socket is open
// and the channel list synchronised.
//
// Every piece of user-supplied text is rendered with textContent.
import { Chart } from '/chart.js';

const PRESENCE_CHANNEL = 'presence';
const TEXT_TYPE = 3;
const MAX_KEPT = 300; // messages kept per conversation
const MAX_SHOWN = 300; // message elements in the page at once
const MAX_SAVED = 200; // messages per conversation kept across a reload
const MAX_ONLINE_SHOWN = 200; // people listed; the rest are counted
const MAX_NAMES = 2000; // display names remembered
const NAMES_PER_CALL = 100; // uids of one /api/names call
const LOGIN_KEY = 'chart-demo-login'; // localStorage: prefills the sign-in form's name

const byId = (id) => document.getElementById(id);
const el = {
  loginScreen: byId('login-screen'),
  loginForm: byId('login-form'),
  loginName: byId('login-name'),
  loginError: byId('login-error'),
  loginSubmit: byId('login-submit'),
  app: byId('app'),
  menu: byId('menu'),
  scrim: byId('scrim'),
  convTitle: byId('conv-title'),
  connection: byId('connection'),
  connDetail: byId('conn-detail'),
  retryNow: byId('retry-now'),
  meAvatar: byId('me-avatar'),
  meName: byId('me-name'),
  meUid: byId('me-uid'),
  logout: byId('logout'),
  channelForm: byId('channel-form'),
  channelInput: byId('channel-input'),
  leave: byId('leave'),
  channels: byId('channels'),
  online: byId('online'),
  onlineCount: byId('online-count'),
  errors: byId('errors'),
  messages: byId('messages'),
  pending: byId('pending'),
  empty: byId('empty'),
  emptyText: byId('empty-text'),
  composer: byId('composer'),
  dmUid: byId('dm-uid'),
  dmClear: byId('dm-clear'),
  messageInput: byId('message-input'),
  send: byId('send'),
};

// The tab's storage, or none when the browser refuses it (chart.js then
// keeps its positions in memory).
const tabStorage = (() => {
  try {
    const s = window.sessionStorage;
    s.getItem(LOGIN_KEY);
    return s;
  } catch (_) {
    return null;
  }
})();

// chart.js's timing, as the server's flags set it. A page that cannot get
// it uses chart.js's defaults.
const configLoaded = api('GET', '/api/config').catch(() => ({}));

const state = {
  uid: 0,
  name: '',
  chart: null, // the Chart of the signed-in user
  wanted: false, // signed in
  everOpen: false, // open at least once since signing in: "connecting" is a reconnect
  welcomed: false, // recovered at least once, or the tab kept a conversation
  stopReason: '', // why the server stopped the client, shown next to "closed"
  syncGen: 0, // bumped on every welcome: an older synchronisation gives up
  restoreChannels: false, // after a reconnect, rejoin what we had
  channels: [], // joined channels, sorted, presence excluded
  selected: null,
  history: new Map(), // channel -> [entry]
  direct: [], // direct messages, shown in every conversation
  unread: new Map(),
  names: new Map(), // uid -> display name, from presence; at most MAX_NAMES
  online: new Set(), // uids online
  wantNames: new Set(), // uids online whose names are to be asked for
  namesLoading: false, // a /api/names request is on its way
  onlineRenderQueued: false,
  namesChanged: false,
  signingOut: null, // the sign-out request on its way, if any
  seq: 0, // orders entries by arrival
  sending: 0, // sends awaiting the server's answer
  saveQueued: false,
  saveFailed: false,
};

// Error frames that answered one of this page's sends: the send's rejection
// shows them, the error event must not show them again.
const answered = new Set();

// ---- small helpers -------------------------------------------------

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A stable colour per user, from a palette of hues that read well.
const HUES = [250, 205, 160, 15, 330, 275, 185, 35, 300, 225];

function hue(uid) {
  return HUES[Number(uid) % HUES.length];
}

function avatar(uid, size) {
  const a = make('span', 'avatar' + (size ? ' avatar-' + size : ''));
  a.style.setProperty('--hue', String(hue(uid)));
  a.textContent = initial(displayName(uid));
  a.setAttribute('aria-hidden', 'true');
  return a;
}

function initial(name) {
  const ch = Array.from(name.replace(/^user\s+/, ''))[0] || '?';
  return ch.toUpperCase();
}

function displayName(uid) {
  const n = state.names.get(Number(uid));
  return n ? n : 'user ' + uid;
}

function shortTime(sendTime) {
  // send_time is "2006-01-02 15:04:05" in the server's zone.
  const m = /(\d{2}):(\d{2})(?::\d{2})?$/.exec(sendTime || '');
  return m ? m[1] + ':' + m[2] : '';
}

function isPositiveInt(s) {
  return /^\d+$/.test(s) && Number(s) > 0 && Number.isSafeInteger(Number(s));
}

function preview(text) {
  const chars = Array.from(text);
  return chars.length > 40 ? chars.slice(0, 40).join('') + '\u2026' : text;
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// api calls the demo's JSON API, with the session cookie (same origin). It
// rejects with an Error carrying the HTTP status and the API's error code
// (status 0: no answer).
async function api(method, path, body, timeout = 10000) {
  // A request through a dead connection must not hang for ever.
  const opts = { method, headers: {}, credentials: 'same-origin', signal: AbortSignal.timeout(timeout) };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch (err) {
    throw Object.assign(new Error('the server did not answer'), { status: 0, code: 'unreachable' });
  }
  let data = null;
  try {
    data = await res.json();
  } catch (_) {
    // not JSON: fall through to the status check
  }
  if (!res.ok) {
    throw Object.assign(new Error((data && data.message) || 'request failed (' + res.status + ')'),
      { status: res.status, code: (data && data.error) || '' });
  }
  return data;
}

function storageGet(key) {
  try {
    return tabStorage ? tabStorage.getItem(key) : null;
  } catch (_) {
    return null;
  }
}

function storageSet(key, value) {
  if (!tabStorage) return false;
  try {
    tabStorage.setItem(key, value);
    return true;
  } catch (_) {
    return false;
  }
}

function storageRemove(key) {
  try {
    if (tabStorage) tabStorage.removeItem(key);
  } catch (_) {
    // nothing to forget
  }
}

// ---- errors ----------------------------------------------------------

const ERROR_TITLES = {
  not_joined: 'Not in that channel',
  rate_limited: 'Slow down',
  too_large: 'Message too large',
  user_offline: 'User offline',
  bad_message: 'Message rejected',
  invalid_channel: 'Invalid channel',
  too_many_channels: 'Too many channels',
  timeout: 'No answer',
  disconnected: 'No answer',
  read_only: 'Read-only channel',
  refused: 'Refused',
  overloaded: 'Server busy',
  hub_closed: 'Server stopping',
  closed: 'Disconnected',
  storage: 'Not saved',
  protocol: 'Cannot connect',
  connect_failed: 'Cannot connect',
  sync: 'Out of sync',
  signed_out: 'Signed out',
};

// showError shows a toast; code, when given, is shown too (and kept in
// data-code, which tests read).
function showError(text, code) {
  const box = make('div', 'toast');
  box.dataset.testid = 'error';
  box.setAttribute('role', 'alert');
  if (code) box.dataset.code = code;
  const title = make('strong', '', ERROR_TITLES[code] || 'Error');
  const body = make('span', '', text);
  if (code) {
    body.append(' ');
    body.append(make('code', 'toast-code', code));
  }
  const close = make('button', 'toast-close', '\u00d7');
  close.type = 'button';
  close.setAttribute('aria-label', 'Dismiss');
  close.addEventListener('click', () => box.remove());
  box.append(title, body, close);
  el.errors.append(box);
  while (el.errors.children.length > 3) el.errors.firstChild.remove();
  setTimeout(() => box.remove(), 8000);
}

// ---- connection ----------------------------------------------------

// setConnection shows chart.js's state: "connecting", "open" or "closed".
function setConnection(s) {
  el.connection.textContent = s; // exactly one word: automation reads it
  el.connection.dataset.state = s;
  el.app.dataset.connection = s;
  let detail = '';
  if (s === 'connecting' && state.everOpen) detail = 'reconnecting\u2026';
  else if (s === 'closed') detail = state.wanted ? state.stopReason : 'signed out';
  el.connDetail.textContent = detail;
  el.retryNow.hidden = !state.wanted || s === 'open';
  el.retryNow.textContent = s === 'closed' ? 'Reconnect' : 'Retry now';
}

function setReady(ready) {
  // data-ready: open and channels synchronised. Tests wait on it.
  el.app.dataset.ready = ready ? 'true' : 'false';
  if (ready) settleReady(true);
}

let readyWaiters = [];

// whenReady resolves true once the page is ready again, false if the user
// signs out first.
function whenReady() {
  return new Promise((resolve) => readyWaiters.push(resolve));
}

function settleReady(ok) {
  const waiters = readyWaiters;
  readyWaiters = [];
  for (const resolve of waiters) resolve(ok);
}

// startChart connects the signed-in user. Each Chart's events are ignored
// once another one replaced it (Retry now, sign out).
async function startChart() {
  const uid = state.uid;
  const config = await configLoaded;
  if (!state.wanted || state.uid !== uid || state.chart) return;
  const options = { storage: tabStorage || undefined, storageKey: chartKey(uid) };
  for (const k of ['heartbeat', 'heartbeatTimeout', 'maxDelay']) {
    if (config && Number.isSafeInteger(config[k]) && config[k] >= 0) options[k] = config[k];
  }
  // The socket's URL carries nothing: the session cookie says who it is.
  // Before each connect the page checks that the session is still its own.
  const url = async () => {
    await checkSession(uid);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + location.host + '/ws';
  };
  const c = new Chart(url, options);
  state.chart = c;
  const mine = (fn) => (v) => {
    if (state.chart === c) fn(c, v);
  };
  c.on('state', mine(onState));
  c.on('message', mine(onMessage));
  c.on('error', mine(onError));
  c.on('recovered', mine(onRecovered));
  c.on('presence', mine((c, p) => {
    if (p.channel_id === PRESENCE_CHANNEL) applyPresenceDelta(p);
  }));
}

// checkSession asks the server who this browser is signed in as, before
// chart.js connects. Signed out (in another tab, or the session expired):
// back to the sign-in form. Signed in as someone else (in another tab):
// reload, to show that user. Either way it throws, so that this client does
// not connect. No answer: connect anyway; the socket needs the session too.
async function checkSession(uid) {
  let s;
  try {
    s = await api('GET', '/api/session', undefined, 3000);
  } catch (err) {
    if (err.status !== 401 || state.uid !== uid) return;
    sessionEnded('Your session has ended. Sign in again to carry on.');
    throw new Error('signed out');
  }
  if (s && s.uid !== uid && state.uid === uid) {
    switchedUser();
    throw new Error('signed in as someone else');
  }
}

function onState(c, s) {
  if (s === 'open') state.everOpen = true;
  if (s === 'connecting') state.stopReason = '';
  if (s !== 'open') setReady(false);
  setConnection(s);
}

// retryNow replaces the client by a new one on the same storage, which
// connects at once and sends what the old one had not sent yet.
function retryNow() {
  if (!state.wanted) return;
  const old = state.chart;
  state.chart = null;
  if (old) old.close(); // its pending sends reject with "closed": ignored below
  startChart();
}

function onError(c, e) {
  if (e.id) {
    // An answer to a send: its promise rejects first and shows it, unless
    // it was sent before a reload (nobody waits for it then).
    setTimeout(() => {
      if (!answered.delete(e.id)) showError('A message you sent earlier was not delivered.', e.error);
    }, 0);
    return;
  }
  switch (e.error) {
    case 'closed':
      state.stopReason = 'closed by the server (' + e.code + ')';
      if (e.code === 4001) {
        // Signed out, or signed in as someone else, in another tab? Then
        // follow it; else the server closed it for a reason of its own.
        followSession(c, e);
        return;
      }
      showError('The server closed the connection (' + e.code + '): ' + (e.message || '') + '. Reconnect when you are ready.', 'closed');
      return;
    case 'storage':
      showError('This tab cannot save the conversation: a reload will lose it.', 'storage');
      return;
    default:
      showError(e.message || e.error, e.error);
  }
}

// followSession handles a connection the server closed with 4001: the page
// follows a sign-out or a sign-in made in another tab of this browser.
async function followSession(c, e) {
  const uid = state.uid;
  let s = null;
  try {
    s = await api('GET', '/api/session');
  } catch (err) {
    if (err.status === 401 && state.chart === c) {
      sessionEnded('You signed out in another tab.');
      return;
    }
  }
  if (state.chart !== c) return;
  if (s && s.uid !== uid) {
    switchedUser();
    return;
  }
  showError('The server closed the connection (' + e.code + '): ' + (e.message || '') + '. Reconnect when you are ready.', 'closed');
}

// onRecovered runs after each welcome: it marks what could not be
// recovered, then restores the channel list (after a server restart the
// server has forgotten it). The welcome lists the user's channels.
function onRecovered(c, r) {
  markGaps(r);
  synchronise(c, ++state.syncGen, Object.keys(r.channels));
}

// markGaps puts a divider in each conversation of a reconnect that was not
// recovered in full: the hub no longer had what it missed (the demo has no
// store to reload it from), or chart.js had no position in it to ask from
// (a channel where no message had arrived yet). On the first connect after
// signing in there is nothing to miss, unless the tab kept a conversation.
function markGaps(r) {
  const reconnect = state.welcomed;
  state.welcomed = true;
  const gap = (list) => {
    if (list.length === 0 ? !reconnect : list[list.length - 1].gap) return false;
    keep(list, { seq: ++state.seq, gap: true });
    return true;
  };
  let shown = false;
  for (const ch of state.channels) {
    if (r.channels[ch] === true) continue;
    if (!state.history.has(ch)) state.history.set(ch, []);
    if (gap(state.history.get(ch))) shown = shown || ch === state.selected;
  }
  if (!r.inbox && gap(state.direct)) shown = true;
  if (shown) renderView();
  scheduleSave();
}

// synchronise makes the page's channel list the server's (have, from the
// welcome). After a reconnect it first asks to join those the page had and
// the server forgot (a restart), and to leave those the page had left
// (the server remembers a user's channels for a while). A request the server refuses leaves that channel as the server
// has it; a connection that drops meanwhile brings a new welcome, and a new
// synchronisation replaces this one.
async function synchronise(c, gen, have) {
  const current = () => state.chart === c && state.syncGen === gen && c.state === 'open';
  let channels = have.filter((ch) => ch !== PRESENCE_CHANNEL);
  if (state.restoreChannels) {
    const want = state.channels;
    const ask = (op, list) => Promise.allSettled(list.map((ch) => c[op](ch).then(() => ch, (err) => {
      if (err.frame && err.frame.id) answered.add(err.frame.id); // shown once, below
      throw err;
    })));
    const joined = await ask('join', want.filter((ch) => !channels.includes(ch)));
    const left = await ask('leave', channels.filter((ch) => !want.includes(ch)));
    if (!current()) return;
    const gone = new Set(left.filter((r) => r.status === 'fulfilled').map((r) => r.value));
    channels = channels.filter((ch) => !gone.has(ch))
      .concat(joined.filter((r) => r.status === 'fulfilled').map((r) => r.value));
    if (joined.concat(left).some((r) => r.status === 'rejected')) showError('Some of your channels could not be restored.', 'sync');
  }
  if (!current()) return;
  state.restoreChannels = true;
  setChannels(channels);
  setReady(true);
}

// ---- incoming messages -----------------------------------------------

function onMessage(c, m) {
  // The presence channel carries no messages (the server refuses clients'
  // messages to it); were one to come, it is not shown.
  if (m.channel_id === PRESENCE_CHANNEL) return;
  const entry = { seq: ++state.seq, m: slim(m) };
  if (entry.m.to_user_id) {
    keep(state.direct, entry);
    appendToView(entry);
  } else {
    const ch = entry.m.channel_id;
    if (!state.history.has(ch)) state.history.set(ch, []);
    keep(state.history.get(ch), entry);
    if (ch === state.selected) {
      appendToView(entry);
    } else {
      state.unread.set(ch, (state.unread.get(ch) || 0) + 1);
      renderChannels();
    }
  }
  scheduleSave();
}

// slim keeps what the page shows of a message.
function slim(m) {
  return {
    channel_id: String(m.channel_id || ''),
    user_id: Number(m.user_id) || 0,
    to_user_id: Number(m.to_user_id) || 0,
    content: String(m.content ?? ''),
    send_time: String(m.send_time || ''),
  };
}

function keep(list, entry) {
  list.push(entry);
  if (list.length > MAX_KEPT) list.splice(0, list.length - MAX_KEPT);
}

// ---- presence ---------------------------------------------------------
//
// The online list is the member list of the "presence" channel, which
// every online user is in: the library sends it (presence events, uids
// only) and chart.js keeps it, and its "presence" event gives each change
// with the whole list after it (startChart). applyPresenceDelta is the only
// function that applies one. Names come from /api/names, asked for the uids
// the page does not know yet (one request at a time, NAMES_PER_CALL uids
// each), so a login costs each page one small request at most, never the
// whole list.

// applyPresenceDelta applies a chart.js presence event of the presence
// channel: "join" and "leave" change the list; "members" (the server's
// list, on each connect) and "end" (signed out) replace it.
function applyPresenceDelta(p) {
  if (!p || typeof p !== 'object' || !Array.isArray(p.members)) return;
  const ok = (uid) => Number.isSafeInteger(uid) && uid > 0;
  if (p.presence === 'join' || p.presence === 'leave') {
    for (const uid of p.joined || []) if (ok(uid)) state.online.add(uid);
    for (const uid of p.left || []) state.online.delete(uid);
  } else {
    state.online = new Set(p.members.filter(ok));
  }
  for (const uid of state.online) {
    if (!state.names.has(uid) && state.wantNames.size < MAX_NAMES) state.wantNames.add(uid);
  }
  loadNames();
  scheduleOnlineRender();
}

// loadNames asks /api/names for the names of online uids the page does
// not know yet, NAMES_PER_CALL at a time, one request at a time.
async function loadNames() {
  if (state.namesLoading) return;
  state.namesLoading = true;
  try {
    while (state.wantNames.size > 0 && state.wanted) {
      const batch = [];
      for (const uid of state.wantNames) {
        state.wantNames.delete(uid);
        if (state.online.has(uid) && !state.names.has(uid)) batch.push(uid);
        if (batch.length === NAMES_PER_CALL) break;
      }
      if (batch.length === 0) break;
      let res;
      try {
        res = await api('GET', '/api/names?uids=' + batch.join(','));
      } catch (_) {
        break; // the next change asks again
      }
      const names = res && typeof res.names === 'object' && res.names ? res.names : {};
      for (const uid of batch) rememberName(uid, names[String(uid)]);
      scheduleOnlineRender();
    }
  } finally {
    state.namesLoading = false;
  }
}

// rememberName keeps a display name for showing messages and the online
// list; at most MAX_NAMES, the oldest of people offline going first.
function rememberName(uid, name) {
  if (typeof name !== 'string' || name === '' || state.names.get(uid) === name) return;
  state.names.delete(uid);
  state.names.set(uid, name.slice(0, 64));
  state.namesChanged = true; // messages shown as "user <uid>" get the name
  if (state.names.size <= MAX_NAMES) return;
  for (const id of state.names.keys()) {
    if (state.names.size <= MAX_NAMES) break;
    if (!state.online.has(id) && id !== state.uid) state.names.delete(id);
  }
}

// scheduleOnlineRender redraws the online list once for all the deltas of
// the next moment: a burst of logins costs one redraw, not one each.
function scheduleOnlineRender() {
  if (state.onlineRenderQueued) return;
  state.onlineRenderQueued = true;
  setTimeout(() => {
    state.onlineRenderQueued = false;
    renderOnline();
    if (state.namesChanged) {
      state.namesChanged = false;
      renderView();
    }
  }, 50);
}

// ---- the conversation across reloads -----------------------------------

function chartKey(uid) {
  return 'chart-demo.' + uid; // chart.js adds ".positions" and ".outbox"
}

function viewKey(uid) {
  return chartKey(uid) + '.view';
}

// scheduleSave writes the conversation once the current task is done, as
// chart.js writes its positions: a reload, which comes between tasks,
// finds both in step.
function scheduleSave() {
  if (state.saveQueued || !state.wanted) return;
  state.saveQueued = true;
  queueMicrotask(() => {
    state.saveQueued = false;
    if (state.wanted) saveView();
  });
}

function saveView() {
  const view = {
    channels: state.channels,
    selected: state.selected,
    seq: state.seq,
    // Pairs, not objects: channel names are user input ("__proto__").
    history: Array.from(state.history, ([ch, list]) => [ch, list.slice(-MAX_SAVED)]),
    direct: state.direct.slice(-MAX_SAVED),
    unread: Array.from(state.unread),
    names: Array.from(state.names),
  };
  if (storageSet(viewKey(state.uid), JSON.stringify(view))) {
    state.saveFailed = false;
  } else if (tabStorage && !state.saveFailed) {
    state.saveFailed = true;
    showError('This tab could not save the conversation: a reload will show it from now on only.', 'storage');
  }
}

// restoreView loads the conversation this tab showed before a reload.
function restoreView(uid) {
  let v;
  try {
    v = JSON.parse(storageGet(viewKey(uid)) || 'null');
  } catch (_) {
    return;
  }
  if (!v || typeof v !== 'object') return;
  const isEntry = (e) => e && Number.isSafeInteger(e.seq) &&
    (e.gap === true || (e.m && typeof e.m === 'object' && typeof e.m.content === 'string'));
  const entries = (list) => (Array.isArray(list) ? list.slice(-MAX_KEPT).filter(isEntry).map((e) => (e.gap ? { seq: e.seq, gap: true } : { seq: e.seq, m: slim(e.m) })) : []);
  const strings = (list) => (Array.isArray(list) ? list.filter((s) => typeof s === 'string') : []);
  const pairs = (list) => (Array.isArray(list) ? list.filter((p) => Array.isArray(p) && p.length === 2) : []);
  state.channels = strings(v.channels).filter((c) => c !== PRESENCE_CHANNEL).sort();
  state.selected = typeof v.selected === 'string' && state.channels.includes(v.selected) ? v.selected : null;
  state.seq = Number.isSafeInteger(v.seq) ? v.seq : 0;
  for (const [ch, list] of pairs(v.history)) if (typeof ch === 'string') state.history.set(ch, entries(list));
  state.direct = entries(v.direct);
  for (const [ch, n] of pairs(v.unread)) if (typeof ch === 'string' && Number.isSafeInteger(n) && n > 0) state.unread.set(ch, n);
  for (const [uid, name] of pairs(v.names).slice(-MAX_NAMES)) if (Number.isSafeInteger(uid) && typeof name === 'string') state.names.set(uid, name);
  for (const list of [state.direct, ...state.history.values()]) {
    for (const e of list) state.seq = Math.max(state.seq, e.seq);
  }
  // The page rejoins these after connecting, should the server have
  // forgotten them (a restart).
  state.restoreChannels = state.channels.length > 0;
  state.welcomed = true;
}

// ---- rendering -------------------------------------------------------

function renderChannels() {
  el.channels.replaceChildren();
  for (const ch of state.channels) {
    const li = make('li');
    const item = make('button', 'nav-item channel');
    item.type = 'button';
    item.dataset.testid = 'channel';
    item.dataset.channel = ch;
    if (ch === state.selected) {
      item.classList.add('active');
      item.setAttribute('aria-current', 'true');
    }
    item.append(make('span', 'hash', '#'), make('span', 'channel-name', ch));
    const n = state.unread.get(ch) || 0;
    if (n > 0) item.append(make('span', 'badge', n > 99 ? '99+' : String(n)));
    item.addEventListener('click', () => {
      select(ch);
      closeDrawer();
    });
    li.append(item);
    el.channels.append(li);
  }
  if (state.channels.length === 0) {
    el.channels.append(make('li', 'muted small pad', 'No channels yet. Type a name above and join one.'));
  }
}

// renderOnline lists who is online: you first, then by name; at most
// MAX_ONLINE_SHOWN of them, and how many more.
function renderOnline() {
  el.online.replaceChildren();
  el.onlineCount.textContent = String(state.online.size);
  const uids = Array.from(state.online).sort((a, b) =>
    (b === state.uid) - (a === state.uid) || displayName(a).localeCompare(displayName(b)) || a - b);
  for (const uid of uids.slice(0, MAX_ONLINE_SHOWN)) {
    const li = make('li');
    const item = make('button', 'nav-item person');
    item.type = 'button';
    item.dataset.testid = 'online';
    item.dataset.uid = String(uid);
    const who = make('span', 'person-text');
    who.append(make('span', 'person-name', displayName(uid)), make('span', 'uid', '#' + uid));
    const wrap = make('span', 'presence-wrap');
    wrap.append(avatar(uid, 'sm'), make('span', 'dot'));
    item.append(wrap, who);
    if (uid === state.uid) {
      item.append(make('span', 'you-tag', 'you'));
      item.disabled = true;
    } else {
      item.title = 'Send ' + displayName(uid) + ' a direct message';
      item.addEventListener('click', () => {
        setDirect(String(uid));
        closeDrawer();
        el.messageInput.focus();
      });
    }
    li.append(item);
    el.online.append(li);
  }
  if (uids.length > MAX_ONLINE_SHOWN) {
    el.online.append(make('li', 'muted small pad', 'and ' + (uids.length - MAX_ONLINE_SHOWN) + ' more'));
  }
}

// viewEntries is what the selected conversation shows: its channel's
// messages and the direct messages, in arrival order, the last MAX_SHOWN.
function viewEntries() {
  const channel = state.selected ? state.history.get(state.selected) || [] : [];
  return channel.concat(state.direct).sort((a, b) => a.seq - b.seq).slice(-MAX_SHOWN);
}

function renderView() {
  el.messages.replaceChildren();
  let prev = null;
  for (const e of viewEntries()) {
    if (e.gap) {
      // The channel's and the direct messages' gaps of one reconnect are one.
      const last = el.messages.lastElementChild;
      if (!last || last.dataset.testid !== 'gap') el.messages.append(renderGap());
      prev = null;
      continue;
    }
    el.messages.append(renderMessage(e.m, prev));
    prev = e.m;
  }
  el.convTitle.textContent = state.selected ? '# ' + state.selected : 'Direct messages';
  updateEmpty();
  scrollToEnd(true);
}

function appendToView(entry) {
  const nearEnd = el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80;
  const last = el.messages.lastElementChild;
  el.messages.append(renderMessage(entry.m, last ? last._msg : null));
  // At most MAX_SHOWN elements: the oldest go.
  while (el.messages.children.length > MAX_SHOWN) el.messages.firstElementChild.remove();
  updateEmpty();
  const mine = entry.m.user_id === state.uid;
  if (nearEnd || mine) scrollToEnd(false);
}

function updateEmpty() {
  const none = el.messages.children.length === 0;
  el.empty.hidden = !none;
  el.emptyText.textContent = state.selected
    ? 'No messages in #' + state.selected + ' yet. Say hello!'
    : 'Join a channel to start chatting.';
}

function scrollToEnd(instant) {
  el.messages.scrollTo({ top: el.messages.scrollHeight, behavior: instant ? 'auto' : 'smooth' });
}

function renderGap() {
  const li = make('li', 'gap', 'Messages sent while you were away may be missing here: the server no longer had them.');
  li.dataset.testid = 'gap';
  return li;
}

function renderMessage(m, prev) {
  const from = m.user_id;
  const to = m.to_user_id;
  const mine = from === state.uid;
  const direct = to !== 0;
  const li = make('li', 'msg');
  li._msg = m;
  li.dataset.testid = 'message';
  li.dataset.mine = String(mine);
  li.dataset.direct = String(direct);
  li.dataset.from = String(from);
  li.style.setProperty('--hue', String(hue(from)));
  if (mine) li.classList.add('mine');
  if (direct) li.classList.add('direct');
  // Consecutive messages from one sender, same kind, form a group.
  if (prev && prev.user_id === from && prev.to_user_id === to) {
    li.classList.add('cont');
  }

  const bubble = make('div', 'bubble');
  const meta = make('div', 'meta');
  const sender = make('span', 'sender', mine ? 'You' : displayName(from));
  meta.append(sender);
  if (direct) {
    const peer = mine ? to : from;
    const tag = make('span', 'dm-tag', mine ? 'to ' + displayName(peer) : 'direct to you');
    meta.append(tag);
  }
  const content = make('div', 'content', m.content);
  content.dataset.part = 'content';
  const time = make('time', 'time', shortTime(m.send_time));
  time.dateTime = m.send_time.replace(' ', 'T');
  time.title = m.send_time;
  bubble.append(meta, content, time);

  if (!mine) li.append(avatar(from));
  li.append(bubble);
  return li;
}

function setSending(delta) {
  state.sending += delta;
  el.pending.hidden = state.sending === 0;
  el.pending.textContent = state.sending === 1 ? 'Sending 1 message\u2026' : 'Sending ' + state.sending + ' messages\u2026';
}

// ---- actions ---------------------------------------------------------

function setChannels(list) {
  state.channels = list.filter((c) => c !== PRESENCE_CHANNEL).sort();
  for (const ch of Array.from(state.history.keys())) {
    if (!state.channels.includes(ch)) state.history.delete(ch);
  }
  for (const ch of Array.from(state.unread.keys())) {
    if (!state.channels.includes(ch)) state.unread.delete(ch);
  }
  scheduleSave();
  if (!state.channels.includes(state.selected)) {
    const next = state.channels.includes('lobby') ? 'lobby' : state.channels[0] || null;
    select(next);
    return;
  }
  renderChannels();
}

function select(ch) {
  state.selected = ch;
  if (ch) state.unread.delete(ch);
  renderChannels();
  renderView();
  updateComposer();
  scheduleSave();
}

function setDirect(uid) {
  el.dmUid.value = uid;
  updateComposer();
}

function updateComposer() {
  const dm = el.dmUid.value.trim();
  const direct = dm !== '';
  el.composer.classList.toggle('is-direct', direct);
  el.dmClear.hidden = !direct;
  if (direct) {
    el.messageInput.placeholder = isPositiveInt(dm)
      ? 'Direct message to ' + displayName(dm)
      : 'Enter a user id on the left';
  } else {
    el.messageInput.placeholder = state.selected ? 'Message #' + state.selected : 'Join a channel first';
  }
}

function channelFromInput() {
  return el.channelInput.value.trim();
}

async function join() {
  const ch = channelFromInput();
  if (!ch) {
    showError('Type a channel name first.', 'invalid_channel');
    return;
  }
  const c = state.chart;
  if (!c) return;
  try {
    await c.join(ch);
    if (state.chart !== c) return;
    if (!state.channels.includes(ch)) setChannels(state.channels.concat(ch));
    select(ch);
    el.channelInput.value = '';
    updateComposer();
    closeDrawer();
  } catch (err) {
    if (err.frame && err.frame.id) answered.add(err.frame.id);
    if (state.chart === c) showError(requestError('join', ch, err), err.code || 'refused');
  }
}

async function leave() {
  const ch = channelFromInput() || state.selected;
  if (!ch) {
    showError('Type the name of a channel to leave.', 'invalid_channel');
    return;
  }
  const c = state.chart;
  if (!c) return;
  try {
    await c.leave(ch);
    if (state.chart !== c) return;
    state.unread.delete(ch);
    setChannels(state.channels.filter((x) => x !== ch));
    el.channelInput.value = '';
    updateComposer();
  } catch (err) {
    if (err.frame && err.frame.id) answered.add(err.frame.id);
    if (state.chart === c) showError(requestError('leave', ch, err), err.code || 'refused');
  }
}

// requestError says why a join or leave did not happen.
function requestError(op, ch, err) {
  switch (err.code) {
    case 'timeout':
    case 'disconnected':
      return 'No answer from the server to ' + op + ' #' + preview(ch) + ': try again when connected.';
    default:
      return 'Could not ' + op + ' #' + preview(ch) + ': ' + err.message;
  }
}

// send hands the message to chart.js, which sends it now or, while
// disconnected, once connected again (a reload included), and waits for the
// server's answer: the message shows when the server delivers it back; a
// refusal shows its error code.
async function send() {
  const content = el.messageInput.value;
  if (content.trim() === '') return;
  const c = state.chart;
  if (!c) return;
  const dm = el.dmUid.value.trim();
  let msg;
  if (dm !== '') {
    if (!isPositiveInt(dm)) {
      showError('A direct message needs a numeric user id.', 'bad_message');
      return;
    }
    msg = { to_user_id: Number(dm), content, type: TEXT_TYPE };
  } else if (state.selected) {
    msg = { channel_id: state.selected, content, type: TEXT_TYPE };
  } else {
    showError('Join a channel or fill in a user id to send a direct message.', 'not_joined');
    return;
  }
  el.messageInput.value = '';
  el.messageInput.focus();
  setSending(1);
  let sender = c; // the client of the last try
  try {
    try {
      await c.send(msg);
    } catch (err) {
      if (err.frame && err.frame.id) answered.add(err.frame.id);
      // A message chart.js kept while the server restarted goes out right
      // after the hello, before the page has rejoined its channel (the
      // server forgot it): refused not_joined. Once rejoined, send it again.
      if (err.code !== 'not_joined' || !msg.channel_id || el.app.dataset.ready === 'true') throw err;
      if (!(await whenReady()) || !state.chart || !state.channels.includes(msg.channel_id)) throw err;
      sender = state.chart;
      await sender.send(msg);
    }
  } catch (err) {
    if (err.frame && err.frame.id) answered.add(err.frame.id);
    // Replaced (Retry now): the new client sends it. Signed out: dropped.
    if (state.chart !== sender) return;
    if (err.code === 'closed') {
      // Stopped by the server: chart.js keeps it for Reconnect.
      showError('"' + preview(content) + '" is not sent yet: it will be when you reconnect.', 'closed');
    } else {
      showError('"' + preview(content) + '" was not delivered.', err.code || 'refused');
    }
  } finally {
    setSending(-1);
  }
}

// login signs in with the form's display name: the server chooses the uid
// and keeps it in the session cookie.
async function login(ev) {
  ev.preventDefault();
  const name = el.loginName.value.trim().replace(/\s+/g, ' ');
  if (name === '') {
    showLoginError('Pick a display name first.');
    return;
  }
  el.loginError.hidden = true;
  el.loginSubmit.disabled = true;
  let s;
  try {
    await state.signingOut; // its answer clears the cookie: it must come first
    s = await api('POST', '/api/signin', { name });
  } catch (err) {
    showLoginError(err.message);
    return;
  } finally {
    el.loginSubmit.disabled = false;
  }
  try {
    localStorage.setItem(LOGIN_KEY, JSON.stringify({ name: s.name }));
  } catch (_) {
    // storage may be disabled; the form just will not be prefilled
  }
  startSession(s.uid, s.name);
  el.messageInput.focus();
}

function showLoginError(text) {
  el.loginError.textContent = text;
  el.loginError.hidden = false;
}

// startSession shows the chat for the signed-in uid: after the form, or
// after a reload, with what the tab kept.
function startSession(uid, name) {
  state.uid = uid;
  state.name = name;
  restoreView(uid);
  rememberName(uid, name);
  el.meName.textContent = name;
  el.meUid.textContent = '#' + uid;
  el.meAvatar.replaceWith(Object.assign(avatar(uid, 'sm'), { id: 'me-avatar' }));
  el.meAvatar = byId('me-avatar');
  el.loginScreen.hidden = true;
  el.app.hidden = false;
  state.wanted = true;
  renderChannels();
  renderOnline();
  renderView();
  updateComposer();
  setConnection('connecting'); // chart.js says so too, once it has its options
  startChart();
}

// logout signs out: this tab stops at once, then the server clears the
// cookie and closes the user's other connections (other tabs follow).
function logout() {
  endSession();
  showLogin('');
  state.signingOut = api('POST', '/api/signout', {}).catch(() => {
    showLoginError('The server did not answer: you may still be signed in there. Try again.');
  });
}

// sessionEnded shows the sign-in form after the server said the session
// is over (signed out elsewhere, expired).
function sessionEnded(why) {
  endSession();
  showLogin(why);
}

// switchedUser follows a sign-in as someone else in another tab: the page
// starts again as that user.
function switchedUser() {
  endSession();
  location.reload();
}

// endSession stops this tab's client and forgets what the tab kept.
function endSession() {
  const uid = state.uid;
  state.wanted = false;
  const c = state.chart;
  state.chart = null;
  if (c) c.close(); // writes its storage a last time: forget it after
  for (const key of [viewKey(uid), chartKey(uid) + '.positions', chartKey(uid) + '.outbox']) {
    storageRemove(key);
  }
  settleReady(false);
  Object.assign(state, {
    uid: 0, name: '', everOpen: false, welcomed: false, stopReason: '', restoreChannels: false, channels: [], selected: null,
    direct: [], online: new Set(), seq: 0,
  });
  state.wantNames.clear();
  state.history.clear();
  state.unread.clear();
  state.names.clear();
  setConnection('closed');
  setReady(false);
}

function showLogin(why) {
  el.app.hidden = true;
  el.loginScreen.hidden = false;
  el.loginError.hidden = !why;
  el.loginError.textContent = why;
  el.loginName.focus();
}

function openDrawer() {
  document.body.classList.add('drawer-open');
  el.scrim.hidden = false;
  el.menu.setAttribute('aria-expanded', 'true');
}

function closeDrawer() {
  document.body.classList.remove('drawer-open');
  el.scrim.hidden = true;
  el.menu.setAttribute('aria-expanded', 'false');
}

// ---- wiring ----------------------------------------------------------

el.loginForm.addEventListener('submit', login);
el.logout.addEventListener('click', logout);
el.channelForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  join();
});
el.leave.addEventListener('click', leave);
el.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  send();
});
el.dmUid.addEventListener('input', updateComposer);
el.dmClear.addEventListener('click', () => {
  setDirect('');
  el.messageInput.focus();
});
el.retryNow.addEventListener('click', retryNow);
window.addEventListener('online', () => {
  // The network is back: do not wait for the backoff.
  if (state.wanted && state.chart && state.chart.state === 'connecting') retryNow();
});
el.menu.addEventListener('click', () => {
  if (document.body.classList.contains('drawer-open')) closeDrawer();
  else openDrawer();
});
el.scrim.addEventListener('click', closeDrawer);

setConnection('closed');
setReady(false);
boot();

// boot shows the chat when the browser is signed in (a reload, another
// tab), else the sign-in form.
async function boot() {
  let s = null;
  let why = '';
  try {
    s = await api('GET', '/api/session');
  } catch (err) {
    if (err.status !== 401) why = 'The server did not answer (' + err.message + '). Reload to try again.';
  }
  if (s && Number.isSafeInteger(s.uid) && s.uid > 0) {
    startSession(s.uid, String(s.name || ''));
    return;
  }
  try {
    const saved = JSON.parse(localStorage.getItem(LOGIN_KEY) || 'null');
    if (saved && typeof saved.name === 'string') el.loginName.value = saved.name;
  } catch (_) {
    // nothing saved
  }
  showLogin(why);
}
