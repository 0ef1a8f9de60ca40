// The chat demo's page. Plain JavaScript, no build step.
//
// Data flow:
//   - chat messages go over one WebSocket (/ws?id=UID&name=NAME) in chart's
//     wire format: we send {"channel_id","content","type":3} or
//     {"to_user_id","content","type":3}; the server sends Message objects and
//     error frames ({"error": code, "message": text, ...}).
//   - joining and leaving channels uses the JSON API (/api/join, /api/leave).
//   - presence is pushed: the server publishes the full online list, with a
//     version number, to the "presence" channel on every login and logout.
//     /api/online is fetched once per connection; older versions are ignored.
//
// Every piece of user-supplied text is rendered with textContent.
'use strict';

(() => {
  const PRESENCE_CHANNEL = 'presence';
  const PRESENCE_TYPE = 1;
  const TEXT_TYPE = 3;
  const MAX_KEPT = 500; // messages kept per conversation
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;

  const byId = (id) => document.getElementById(id);
  const el = {
    loginScreen: byId('login-screen'),
    loginForm: byId('login-form'),
    loginUid: byId('login-uid'),
    loginName: byId('login-name'),
    loginError: byId('login-error'),
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
    empty: byId('empty'),
    emptyText: byId('empty-text'),
    composer: byId('composer'),
    dmUid: byId('dm-uid'),
    dmClear: byId('dm-clear'),
    messageInput: byId('message-input'),
    send: byId('send'),
  };

  const state = {
    uid: 0,
    name: '',
    ws: null,
    wanted: false, // the user is signed in, so keep reconnecting
    attempt: 0, // failed connection attempts in a row
    retryAt: 0,
    retryTimer: 0,
    countdownTimer: 0,
    everConnected: false,
    restoreChannels: false, // after a reconnect, rejoin what we had
    channels: [], // joined channels, sorted, presence excluded
    selected: null,
    history: new Map(), // channel -> [entry]
    direct: [], // direct messages, shown in every conversation
    unread: new Map(),
    names: new Map(), // uid -> display name, from presence
    online: [],
    presenceVersion: -1,
    seq: 0,
  };

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

  async function api(method, path, body) {
    const opts = { method, headers: {} };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      // not JSON: fall through to the status check
    }
    if (!res.ok) {
      throw new Error((data && data.message) || 'request failed (' + res.status + ')');
    }
    return data;
  }

  // ---- errors ----------------------------------------------------------

  const ERROR_TITLES = {
    not_joined: 'Not in that channel',
    rate_limited: 'Slow down',
    too_large: 'Message too large',
    user_offline: 'User offline',
    bad_message: 'Message rejected',
    invalid_channel: 'Invalid channel',
  };

  function showError(text, code) {
    const box = make('div', 'toast');
    box.dataset.testid = 'error';
    box.setAttribute('role', 'alert');
    if (code) box.dataset.code = code;
    const title = make('strong', '', ERROR_TITLES[code] || 'Error');
    const body = make('span', '', text);
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

  function setConnection(word, detail) {
    el.connection.textContent = word; // exactly one word: automation reads it
    el.connection.dataset.state = word;
    el.connDetail.textContent = detail || '';
    el.retryNow.hidden = word !== 'reconnecting';
    el.send.disabled = word !== 'connected';
    el.app.dataset.connection = word;
  }

  function setReady(ready) {
    // data-ready: connected and channels restored. Tests wait on it.
    el.app.dataset.ready = ready ? 'true' : 'false';
  }

  function connect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    if (!state.wanted) return;
    setConnection(state.everConnected ? 'reconnecting' : 'connecting',
      state.everConnected ? 'connecting\u2026' : '');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = scheme + '//' + location.host + '/ws?id=' + state.uid +
      '&name=' + encodeURIComponent(state.name);
    const ws = new WebSocket(url);
    state.ws = ws;
    state.presenceVersion = -1; // a restarted server counts from zero again

    ws.addEventListener('open', () => {
      if (state.ws !== ws) return;
      state.attempt = 0;
      state.everConnected = true;
      setConnection('connected');
      synchronise(ws);
    });
    ws.addEventListener('message', (ev) => {
      if (state.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      handleFrame(frame);
    });
    ws.addEventListener('close', (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      setReady(false);
      if (ev.code === 1009) {
        showError('The server closed the connection: a message was over its size limit.', 'too_large');
      }
      if (!state.wanted) {
        setConnection('disconnected');
        return;
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    // Exponential backoff with jitter: 0.5s, 1s, 2s, ... capped at 10s.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    state.attempt++;
    state.retryAt = Date.now() + delay;
    const tick = () => {
      const s = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      setConnection('reconnecting', 'retrying in ' + s + 's');
    };
    tick();
    state.countdownTimer = setInterval(tick, 500);
    state.retryTimer = setTimeout(connect, delay);
  }

  // synchronise runs on every open socket: it restores the channel list
  // (the server forgets memberships when a user's last connection closes)
  // and fetches the online list.
  async function synchronise(ws) {
    try {
      let res = await api('GET', '/api/channels?uid=' + state.uid);
      if (state.restoreChannels) {
        const want = state.channels;
        const missing = want.filter((c) => !res.channels.includes(c));
        if (missing.length) {
          res = await api('POST', '/api/join', { uid: state.uid, channels: missing });
        }
        const extra = res.channels.filter((c) => !want.includes(c));
        if (extra.length) {
          res = await api('POST', '/api/leave', { uid: state.uid, channels: extra });
        }
      }
      if (state.ws !== ws) return;
      state.restoreChannels = true;
      setChannels(res.channels);
      const p = await api('GET', '/api/online');
      if (state.ws !== ws) return;
      applyPresence(p);
      setReady(true);
    } catch (err) {
      if (state.ws === ws) showError(err.message);
    }
  }

  // ---- incoming frames -------------------------------------------------

  function handleFrame(f) {
    if (Object.prototype.hasOwnProperty.call(f, 'error')) {
      let text = f.message || f.error;
      showError(text, f.error);
      return;
    }
    if (f.channel_id === PRESENCE_CHANNEL) {
      // Only the server (user 0) publishes presence; ignore anything else.
      if (Number(f.user_id) === 0 && Number(f.type) === PRESENCE_TYPE) {
        try {
          applyPresence(JSON.parse(f.content));
        } catch (_) {
          // malformed push: the next one carries the whole list again
        }
      }
      return;
    }
    const entry = { seq: ++state.seq, m: f };
    if (f.to_user_id) {
      keep(state.direct, entry);
      appendToView(entry);
      return;
    }
    const ch = f.channel_id;
    if (!state.history.has(ch)) state.history.set(ch, []);
    keep(state.history.get(ch), entry);
    if (ch === state.selected) {
      appendToView(entry);
    } else {
      state.unread.set(ch, (state.unread.get(ch) || 0) + 1);
      renderChannels();
    }
  }

  function keep(list, entry) {
    list.push(entry);
    if (list.length > MAX_KEPT) list.splice(0, list.length - MAX_KEPT);
  }

  function applyPresence(p) {
    if (!p || !Array.isArray(p.users) || p.version < state.presenceVersion) return;
    state.presenceVersion = p.version;
    let renamed = false;
    for (const u of p.users) {
      const uid = Number(u.uid);
      if (u.name && state.names.get(uid) !== u.name) {
        state.names.set(uid, u.name);
        renamed = true;
      }
    }
    state.online = p.users.map((u) => Number(u.uid));
    renderOnline();
    if (renamed) renderView();
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

  function renderOnline() {
    el.online.replaceChildren();
    el.onlineCount.textContent = String(state.online.length);
    for (const uid of state.online) {
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
  }

  function viewEntries() {
    const channel = state.selected ? state.history.get(state.selected) || [] : [];
    return channel.concat(state.direct).sort((a, b) => a.seq - b.seq);
  }

  function renderView() {
    el.messages.replaceChildren();
    let prev = null;
    for (const e of viewEntries()) {
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
    updateEmpty();
    const mine = Number(entry.m.user_id) === state.uid;
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

  function renderMessage(m, prev) {
    const from = Number(m.user_id);
    const to = Number(m.to_user_id || 0);
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
    if (prev && Number(prev.user_id) === from && Number(prev.to_user_id || 0) === to) {
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
    time.dateTime = String(m.send_time || '').replace(' ', 'T');
    time.title = m.send_time || '';
    bubble.append(meta, content, time);

    if (!mine) li.append(avatar(from));
    li.append(bubble);
    return li;
  }

  // ---- actions ---------------------------------------------------------

  function setChannels(list) {
    state.channels = list.filter((c) => c !== PRESENCE_CHANNEL).sort();
    for (const ch of Array.from(state.history.keys())) {
      if (!state.channels.includes(ch)) state.history.delete(ch);
    }
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
    try {
      const res = await api('POST', '/api/join', { uid: state.uid, channels: [ch] });
      setChannels(res.channels);
      select(ch);
      el.channelInput.value = '';
      updateComposer();
      closeDrawer();
    } catch (err) {
      showError(err.message, 'invalid_channel');
    }
  }

  async function leave() {
    const ch = channelFromInput() || state.selected;
    if (!ch) {
      showError('Type the name of a channel to leave.', 'invalid_channel');
      return;
    }
    try {
      const res = await api('POST', '/api/leave', { uid: state.uid, channels: [ch] });
      state.unread.delete(ch);
      setChannels(res.channels);
      el.channelInput.value = '';
      updateComposer();
    } catch (err) {
      showError(err.message, 'invalid_channel');
    }
  }

  function send() {
    const content = el.messageInput.value;
    if (content.trim() === '') return;
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      showError('Not connected. Your message is still in the box; send it again once connected.');
      return;
    }
    const dm = el.dmUid.value.trim();
    let frame;
    if (dm !== '') {
      if (!isPositiveInt(dm)) {
        showError('A direct message needs a numeric user id.', 'bad_message');
        return;
      }
      frame = { to_user_id: Number(dm), content, type: TEXT_TYPE };
    } else if (state.selected) {
      frame = { channel_id: state.selected, content, type: TEXT_TYPE };
    } else {
      showError('Join a channel or fill in a user id to send a direct message.', 'not_joined');
      return;
    }
    state.ws.send(JSON.stringify(frame));
    el.messageInput.value = '';
    el.messageInput.focus();
  }

  function login(ev) {
    ev.preventDefault();
    const uid = el.loginUid.value.trim();
    if (!isPositiveInt(uid)) {
      el.loginError.textContent = 'The user id is a whole number above zero.';
      el.loginError.hidden = false;
      return;
    }
    el.loginError.hidden = true;
    state.uid = Number(uid);
    state.name = el.loginName.value.trim();
    if (state.name) state.names.set(state.uid, state.name);
    try {
      localStorage.setItem('chart-demo-login', JSON.stringify({ uid: state.uid, name: state.name }));
    } catch (_) {
      // storage may be disabled; the form just will not be prefilled
    }
    el.meName.textContent = state.name || 'user ' + state.uid;
    el.meUid.textContent = '#' + state.uid;
    el.meAvatar.replaceWith(Object.assign(avatar(state.uid, 'sm'), { id: 'me-avatar' }));
    el.meAvatar = byId('me-avatar');
    el.loginScreen.hidden = true;
    el.app.hidden = false;
    state.wanted = true;
    renderChannels();
    renderOnline();
    renderView();
    updateComposer();
    connect();
    el.messageInput.focus();
  }

  function logout() {
    state.wanted = false;
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, 'signed out');
    setConnection('disconnected');
    setReady(false);
    Object.assign(state, {
      everConnected: false, restoreChannels: false, channels: [], selected: null,
      direct: [], online: [], presenceVersion: -1, attempt: 0,
    });
    state.history.clear();
    state.unread.clear();
    el.app.hidden = true;
    el.loginScreen.hidden = false;
    el.loginUid.focus();
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
  el.retryNow.addEventListener('click', () => {
    state.attempt = 0;
    connect();
  });
  window.addEventListener('online', () => {
    if (state.wanted && !state.ws) connect();
  });
  el.menu.addEventListener('click', () => {
    if (document.body.classList.contains('drawer-open')) closeDrawer();
    else openDrawer();
  });
  el.scrim.addEventListener('click', closeDrawer);

  try {
    const saved = JSON.parse(localStorage.getItem('chart-demo-login') || 'null');
    if (saved && saved.uid) {
      el.loginUid.value = String(saved.uid);
      el.loginName.value = saved.name || '';
    }
  } catch (_) {
    // nothing saved
  }
  setConnection('disconnected');
  setReady(false);
  el.loginUid.focus();
})();
