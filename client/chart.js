// chart.js: the JavaScript client of github.com/wuyan94zl/chart (protocol
// chart.v1). One ES module, no dependencies; runs in browsers and in Node
// (20 with --experimental-websocket, 22+), or with any WebSocket class
// passed as an option.
//
//   import { Chart } from "/chart.js";
//   const c = new Chart("wss://example.com/ws", { storage: localStorage });
//   c.on("message", (m) => show(m));
//   const ack = await c.send({ channel_id: "lobby", content: "hi", type: 3 });
//
// What it does for you: reconnects (exponential backoff with full jitter,
// following the server's close codes), resumes every stream from the last
// position it delivered (hello), drops duplicates, acknowledges what it
// delivered (batched), and keeps unacknowledged sends (in storage, with
// their ids) until the server acknowledges or refuses them.

export const PROTOCOL = "chart.v1";

// Close codes of the server (README "Wire format").
export const CloseCodes = Object.freeze({
  GOING_AWAY: 1001,
  TOO_LARGE: 1009,
  DISCONNECTED: 4001,
  EXPIRED: 4002,
  REFUSED: 4003,
  SLOW_CONSUMER: 4008,
  REPLACED: 4009,
  RATE_LIMITED: 4029,
});

// Codes after which the client stops: the application (or another
// connection of the user) decided so.
const STOP_CODES = new Set([CloseCodes.DISCONNECTED, CloseCodes.REFUSED, CloseCodes.REPLACED]);

// Error codes that refuse a try, not the message: it stays queued and is
// sent again later with the same id.
const RETRY_ERRORS = new Set(["rate_limited", "hub_closed", "broker_failed", "overloaded"]);

const DEFAULTS = {
  storageKey: "chart",
  minDelay: 500, // ms: the first backoff's cap
  maxDelay: 30000, // ms: the backoff's cap
  connectTimeout: 10000, // ms from creating the socket to the welcome
  ackDelay: 100, // ms an acknowledgement may wait to be batched
  ackBatch: 50, // messages that send an acknowledgement at once
  resendAfter: 10000, // ms an unanswered send waits before it is tried again on the same connection
  heartbeat: 10000, // ms between {"ping":n} frames, answered {"pong":n}; 0: off
  heartbeatTimeout: 10000, // ms of silence after a ping that count as a dead connection
};

// memoryStorage is the default storage: it lasts as long as the page.
function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => void m.set(k, String(v)),
  };
}

// ChartError is what send rejects with: code is the server's error code
// ("not_joined", "refused", the application's own...) or one of the
// client's ("closed", "too_large").
export class ChartError extends Error {
  constructor(code, message, frame) {
    super(message || code);
    this.name = "ChartError";
    this.code = code;
    this.frame = frame;
  }
}

export class Chart {
  // url: a string, or a function (may be async) returning one, called
  // before every connect (fresh credentials after a 4002).
  // options: see DEFAULTS and chart.d.ts.
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this._url = url;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this._WebSocket) throw new Error("chart: no WebSocket: pass one as options.WebSocket");
    this._storage = options.storage || memoryStorage();
    this._listeners = new Map();
    this.state = "closed";
    this._stopped = false;
    this._ws = null;
    this._attempt = 0; // failed connects since the last welcome
    this._timer = null; // the reconnect timer
    this._ackTimer = null;
    this._unacked = 0; // messages delivered since the last acknowledgement
    this._dirty = new Set(); // streams to acknowledge: "inbox" or "c:<channel>"
    this._pending = new Map(); // send id -> {resolve, reject}
    this._idPrefix = randomId();
    this._seq = 0;
    this._load();
    // Connect after the caller subscribed (it sees "connecting").
    queueMicrotask(() => this._connect());
  }

  // on subscribes fn to an event: "message", "error", "state", "recovered".
  // It returns a function that unsubscribes.
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  // send queues a message ({channel_id, content, type} or {to_user_id,
  // content, type}, optionally transient) and resolves with the server's
  // acknowledgement ({id, offset, epoch}; no position for a transient
  // message), or rejects with a ChartError whose code is the server's.
  // The message is kept in storage and sent again, with the same id, after
  // every reconnect until it is answered.
  send(msg) {
    if (this._stopped) return Promise.reject(new ChartError("closed", "chart: the client is closed"));
    const id = `${this._idPrefix}-${++this._seq}`;
    const entry = { id, msg: { ...msg, id }, sentAt: 0 };
    this._outbox.push(entry);
    this._saveOutbox();
    const p = new Promise((resolve, reject) => this._pending.set(id, { resolve, reject }));
    if (this.state === "open" || this._helloSent) this._transmit(entry);
    return p;
  }

  // close closes the connection and stops reconnecting. Pending sends
  // reject with code "closed"; they stay in storage, and a new Chart on
  // the same storage sends them.
  close() {
    if (this._stopped) return;
    this._stop();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._flushAcks(ws);
      try {
        ws.close(1000);
      } catch {}
    }
  }

  // --- connection ---

  async _connect() {
    if (this._stopped) return;
    this._setState("connecting");
    let url, protocols;
    try {
      url = typeof this._url === "function" ? await this._url() : this._url;
      const p = this.options.protocols;
      protocols = (typeof p === "function" ? await p() : p) || [];
    } catch (err) {
      this._emit("error", { error: "connect_failed", message: String(err?.message || err) });
      return this._reconnect();
    }
    if (this._stopped) return;
    let ws;
    try {
      ws = new this._WebSocket(url, [PROTOCOL, ...protocols]);
    } catch (err) {
      this._emit("error", { error: "connect_failed", message: String(err?.message || err) });
      return this._reconnect();
    }
    this._ws = ws;
    this._helloSent = false;
    let done = false;
    // Node 20 fires error without close on a refused connection; browsers
    // fire both. Whichever comes first ends this socket, once.
    const end = (code, reason) => {
      if (done) return;
      done = true;
      clearTimeout(connectTimer);
      this._stopHeartbeat();
      if (this._ws === ws) this._ws = null;
      this._closed(code, reason);
    };
    const connectTimer = setTimeout(() => {
      try {
        ws.close();
      } catch {}
      end(1006, "connect timeout");
    }, this.options.connectTimeout);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      if (ws.protocol !== PROTOCOL) {
        this._emit("error", { error: "protocol", message: `chart: the server did not accept ${PROTOCOL} (got "${ws.protocol}")` });
        this._stop();
        ws.close(1000);
        return;
      }
      ws.send(JSON.stringify({ hello: this._helloPositions() }));
      this._helloSent = true;
      for (const e of this._outbox) this._transmit(e);
      this._startHeartbeat(ws);
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._alive = Date.now();
      if (typeof ev.data !== "string") return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (f.welcome) {
        clearTimeout(connectTimer);
        this._welcome(f.welcome);
      } else this._frame(f);
    };
    ws.onerror = () => end(1006, "error");
    ws.onclose = (ev) => end(ev.code, ev.reason);
  }

  _closed(code, reason) {
    this._helloSent = false;
    if (this._stopped) return;
    if (STOP_CODES.has(code)) {
      this._emit("error", { error: "closed", code, message: reason || `chart: closed with ${code}` });
      this._stop();
      return;
    }
    if (code === CloseCodes.TOO_LARGE) this._dropLargest();
    if (code === CloseCodes.EXPIRED) {
      // Fresh credentials: the url (and protocols) functions are called again.
      this._attempt = 0;
      this._timer = setTimeout(() => this._connect(), 0);
      this._setState("connecting");
      return;
    }
    this._reconnect();
  }

  // _reconnect waits a random time below min(maxDelay, minDelay * 2^attempt)
  // (full jitter), then connects.
  _reconnect() {
    if (this._stopped) return;
    this._setState("connecting");
    const cap = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), Math.random() * cap);
  }

  _stop() {
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._ackTimer);
    clearTimeout(this._resendTimer);
    this._resendTimer = null;
    this._stopHeartbeat();
    this._setState("closed");
    for (const [id, p] of this._pending) p.reject(new ChartError("closed", "chart: the client is closed; the message stays queued in storage"));
    this._pending.clear();
  }

  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this._emit("state", s);
  }

  _emit(event, value) {
    for (const fn of this._listeners.get(event) || []) {
      try {
        fn(value);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  // --- frames ---

  _welcome(w) {
    this._attempt = 0;
    const recovered = { channels: {}, inbox: w.inbox?.recovered ?? true };
    if (w.inbox) this._adopt("inbox", w.inbox);
    for (const [id, p] of Object.entries(w.channels || {})) {
      recovered.channels[id] = !!p.recovered;
      this._adopt("c:" + id, p);
    }
    this._savePositions();
    this._setState("open");
    this._emit("recovered", recovered);
  }

  // _adopt takes the welcome's position of a stream when it was not
  // recovered or unknown (the client goes on from there; the application
  // fills the gap from its store). It is not acknowledged: only received
  // messages are.
  _adopt(key, p) {
    if (!p.epoch) return;
    const cur = this._positions[key];
    if (!p.recovered || !cur || cur.epoch !== p.epoch) this._positions[key] = { epoch: p.epoch, offset: p.offset };
  }

  _frame(f) {
    if (f.pong !== undefined) return;
    if (f.ack) return this._answer(f.ack.id, null, f.ack);
    if (f.error) {
      if (f.id && !RETRY_ERRORS.has(f.error)) this._answer(f.id, f, null);
      else if (f.id) this._retryLater(f.id);
      this._emit("error", f);
      return;
    }
    if (f.content === undefined && f.user_id === undefined) return; // a frame of a later version
    this._message(f);
  }

  _message(m) {
    if (m.offset !== undefined && m.epoch) {
      const key = m.channel_id ? "c:" + m.channel_id : "inbox";
      const cur = this._positions[key];
      if (cur && cur.epoch === m.epoch && m.offset <= cur.offset) return; // a duplicate
      this._positions[key] = { epoch: m.epoch, offset: m.offset };
      this._savePositions();
      this._dirty.add(key);
      this._scheduleAck();
    }
    this._emit("message", m);
  }

  // --- acknowledgements of received messages ---

  _scheduleAck() {
    if (++this._unacked >= this.options.ackBatch) return this._flushAcks(this._ws);
    if (!this._ackTimer) this._ackTimer = setTimeout(() => this._flushAcks(this._ws), this.options.ackDelay);
  }

  _flushAcks(ws) {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    this._unacked = 0;
    if (!ws || ws.readyState !== 1 || this._dirty.size === 0) return;
    const ack = {};
    for (const key of this._dirty) {
      const p = this._positions[key];
      if (key === "inbox") ack.inbox = p;
      else (ack.channels ||= {})[key.slice(2)] = p;
    }
    this._dirty.clear();
    ws.send(JSON.stringify({ ack }));
  }

  // --- sends ---

  _transmit(entry) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return;
    entry.sentAt = Date.now();
    ws.send(JSON.stringify(entry.msg));
    this._armResend();
  }

  // _armResend tries again, on the same connection, the sends that got no
  // answer (a retry while the first try was in flight, an "overloaded"
  // refusal that names no id).
  _armResend() {
    if (this._resendTimer) return;
    this._resendTimer = setTimeout(() => {
      this._resendTimer = null;
      const old = Date.now() - this.options.resendAfter;
      for (const e of this._outbox) if (e.sentAt && e.sentAt <= old) this._transmit(e);
      if (this._outbox.length && !this._stopped) this._armResend();
    }, this.options.resendAfter);
  }

  _retryLater(id) {
    const e = this._outbox.find((e) => e.id === id);
    if (e) e.sentAt = Date.now();
  }

  _answer(id, errFrame, ack) {
    const i = this._outbox.findIndex((e) => e.id === id);
    if (i < 0) return;
    this._outbox.splice(i, 1);
    this._saveOutbox();
    const p = this._pending.get(id);
    this._pending.delete(id);
    if (!p) return; // sent before a reload: nobody waits for it
    if (errFrame) p.reject(new ChartError(errFrame.error, errFrame.message, errFrame));
    else p.resolve(ack);
  }

  // A 1009 close: the server refused a message too large; it is one of the
  // sends in flight, the largest is dropped so that it is not sent again.
  _dropLargest() {
    let big = null;
    for (const e of this._outbox) if (e.sentAt && (!big || JSON.stringify(e.msg).length > JSON.stringify(big.msg).length)) big = e;
    if (big) this._answer(big.id, { error: "too_large", message: "chart: the server closed the connection with 1009 (message too large)" }, null);
  }

  // --- heartbeat: a silently dead connection is closed within
  // 2 * heartbeat + heartbeatTimeout (30 s by default) ---

  _startHeartbeat(ws) {
    const every = this.options.heartbeat;
    if (!every) return;
    let n = 0;
    this._alive = Date.now();
    this._hbTimer = setInterval(() => {
      if (Date.now() - this._alive > every + this.options.heartbeatTimeout) {
        try {
          ws.close(4000, "heartbeat timeout");
        } catch {}
        ws.onclose?.({ code: 1006, reason: "heartbeat timeout" });
        return;
      }
      if (ws.readyState === 1) ws.send(JSON.stringify({ ping: ++n }));
    }, every);
  }

  _stopHeartbeat() {
    clearInterval(this._hbTimer);
    this._hbTimer = null;
  }

  // --- storage ---

  _helloPositions() {
    const hello = {};
    for (const [key, p] of Object.entries(this._positions)) {
      if (key === "inbox") hello.inbox = p;
      else (hello.channels ||= {})[key.slice(2)] = p;
    }
    return hello;
  }

  _load() {
    const k = this.options.storageKey;
    this._positions = parse(this._storage.getItem(k + ".positions")) || {};
    this._outbox = (parse(this._storage.getItem(k + ".outbox")) || []).map((e) => ({ ...e, sentAt: 0 }));
  }

  _savePositions() {
    this._storage.setItem(this.options.storageKey + ".positions", JSON.stringify(this._positions));
  }

  _saveOutbox() {
    this._storage.setItem(this.options.storageKey + ".outbox", JSON.stringify(this._outbox.map(({ id, msg }) => ({ id, msg }))));
  }
}

function parse(s) {
  if (!s) return null;
  try {
    return JSON.parse(s);
  } catch {
    return null;
  }
}

// randomId is unique enough for send ids (the server keeps them 2 minutes,
// per user): 12 random characters.
function randomId() {
  const c = globalThis.crypto;
  if (c?.getRandomValues) {
    const b = c.getRandomValues(new Uint8Array(9));
    return btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_");
  }
  return Math.random().toString(36).slice(2, 14);
}
