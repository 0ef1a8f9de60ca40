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
// their ids) until the server acknowledges or refuses them, sending at most
// maxInFlight at once, in order, pausing after a rate_limited refusal.
// Events: "message", "state", "recovered", "presence" (the member lists of
// channels with presence events, kept by the client: members(channelId)),
// and "error": the server's error frames (not the refusals the client
// retries itself) and the client's own errors ({error: "closed", code},
// "storage", "connect_failed", "protocol").
// join(channelId) and leave(channelId) ask the server (the application's
// JoinHandler decides) and resolve with its answer.
// A storage that throws (full, private mode) costs only persistence: the
// client goes on in memory.

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

// Codes by which the server asks for less (slow consumer, rate limited):
// the reconnect waits at least half its backoff.
const SLOW_DOWN_CODES = new Set([CloseCodes.SLOW_CONSUMER, CloseCodes.RATE_LIMITED]);

// Error codes that refuse a try, not the message: it stays queued and is
// sent again later with the same id.
const RETRY_ERRORS = new Set(["rate_limited", "hub_closed", "broker_failed", "overloaded"]);

// The hello carries at most this many bytes (the server's MaxMessageSize is
// 64 KiB by default): channel positions beyond it are left out, and those
// channels start live (recovered: false).
const HELLO_LIMIT = 48 << 10;

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
  maxInFlight: 16, // sends awaiting their answer at once, in outbox order
  retryDelay: 1000, // ms: the first pause after a rate_limited refusal (doubles, up to maxDelay)
  requestTimeout: 10000, // ms a join or leave request waits for its answer
};

// memoryStorage is the default storage: it lasts as long as the page.
function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => void m.set(k, String(v)),
  };
}

// ChartError is what send, join and leave reject with: code is the
// server's error code ("not_joined", "refused", the application's own...)
// or one of the client's ("closed", "too_large"; for join and leave
// "timeout", "disconnected", "invalid_channel").
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
    this.state = "connecting"; // from the start: it connects in a microtask
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
    this._left = new Map(); // stream key -> Set of epochs it left
    this._unplaced = []; // JSON of messages received without a position (see _placed)
    this._unplacedChars = 0; // their length
    this._helloLimit = HELLO_LIMIT;
    this._helloBytes = 0; // the size of the last hello
    this._pauseUntil = 0; // no sends before (after a rate_limited refusal)
    this._pauseTimer = null;
    this._retries = 0; // rate_limited refusals since the last acknowledgement
    this._storageFailed = false;
    this._saveTimer = null;
    this._unsaved = new Set(); // "positions", "outbox"
    this._requests = new Map(); // join/leave id -> {frame, ws, resolve, reject, timer}
    // channel -> {members: Set, known: a whole list came, fresh: on this
    // socket, filling: the pages of a list coming (Set) or null}
    this._rosters = new Map();
    this._load();
    // Connect after the caller subscribed (it sees "connecting").
    queueMicrotask(() => {
      if (this._stopped) return;
      this._emit("state", "connecting");
      this._connect();
    });
  }

  // on subscribes fn to an event: "message", "error" (error frames and the
  // client's errors: "closed", "storage", "connect_failed", "protocol"),
  // "state", "recovered", "presence" ({presence, channel_id, joined, left,
  // members}, see _presence).
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
    const p = new Promise((resolve, reject) => this._pending.set(id, { resolve, reject }));
    this._outbox.push(entry);
    this._persist("outbox", true);
    this._pump();
    return p;
  }

  // join asks the server to join the user (all its connections) to a
  // channel; the application's JoinHandler decides. It resolves with the
  // answer ({joined, id}) or rejects with a ChartError: the server's code
  // (its error frame also reaches the "error" listeners, with the request's
  // id), "timeout" (no answer within requestTimeout ms, or options.timeout),
  // "disconnected" (the connection dropped before the answer: whether the
  // server did it is unknown; the welcome of the next connection lists the
  // user's channels), "closed". A request made while disconnected goes out
  // once connected, within its timeout. Not retried: the caller decides.
  join(channelId, options = {}) {
    return this._request("join", channelId, options);
  }

  // leave asks the server to take the user out of a channel (LeaveHandler
  // decides); as join, resolving with {left, id}.
  leave(channelId, options = {}) {
    return this._request("leave", channelId, options);
  }

  // members returns the member list (uids, sorted) the client keeps of a
  // channel with presence events, or null: not such a channel, not joined,
  // or its list not received yet. After a reconnect it is the last list
  // until the server's new one replaces it.
  members(channelId) {
    const r = this._rosters.get(channelId);
    return r && r.known ? sortedIds(r.members) : null;
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
    let welcomed = false; // only the first welcome of a socket counts
    // Node 20 fires error without close on a refused connection; browsers
    // fire both. Whichever comes first ends this socket, once.
    const end = (code, reason) => {
      if (done) return;
      done = true;
      clearTimeout(connectTimer);
      this._stopHeartbeat();
      if (this._ws === ws) this._ws = null;
      this._dropped(ws);
      this._closed(code, reason, welcomed);
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
      const hello = JSON.stringify({ hello: this._helloPositions() });
      this._helloBytes = hello.length;
      ws.send(hello);
      this._helloSent = true;
      for (const e of this._outbox) e.sentAt = 0; // nothing is in flight on a new socket
      this._pump();
      this._flushRequests(ws);
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
      if (!isObject(f)) return;
      if (f.welcome !== undefined) {
        if (welcomed || !isObject(f.welcome)) return;
        welcomed = true;
        clearTimeout(connectTimer);
        this._welcome(f.welcome);
      } else this._frame(f);
    };
    ws.onerror = () => end(1006, "error");
    ws.onclose = (ev) => end(ev.code, ev.reason);
  }

  // _closed follows the close code of a socket; welcomed: it had its welcome.
  _closed(code, reason, welcomed) {
    this._helloSent = false;
    if (this._stopped) return;
    if (STOP_CODES.has(code)) {
      this._emit("error", { error: "closed", code, message: reason || `chart: closed with ${code}` });
      this._stop();
      return;
    }
    if (code === CloseCodes.TOO_LARGE) this._dropLargest();
    if (code === CloseCodes.EXPIRED && welcomed) {
      // Fresh credentials, at once: the url (and protocols) functions are
      // called again. A 4002 before the welcome (the fresh credentials had
      // expired too) backs off as any failure does, or it would loop.
      clearTimeout(this._timer);
      this._timer = setTimeout(() => this._connect(), 0);
      this._setState("connecting");
      return;
    }
    this._reconnect(SLOW_DOWN_CODES.has(code));
  }

  // _reconnect waits a random time below cap = min(maxDelay, minDelay *
  // 2^attempt) (full jitter), then connects; slowDown (the server asked
  // for less): at least half of cap.
  _reconnect(slowDown = false) {
    if (this._stopped) return;
    this._setState("connecting");
    const cap = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    const floor = slowDown ? cap / 2 : 0;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), floor + Math.random() * (cap - floor));
  }

  _stop() {
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._ackTimer);
    clearTimeout(this._resendTimer);
    this._resendTimer = null;
    clearTimeout(this._pauseTimer);
    this._pauseTimer = null;
    this._stopHeartbeat();
    this._flushStorage();
    this._setState("closed");
    for (const [id, p] of this._pending) p.reject(new ChartError("closed", "chart: the client is closed; the message stays queued in storage"));
    this._pending.clear();
    for (const id of [...this._requests.keys()]) this._settle(id, new ChartError("closed", "chart: the client is closed"), null);
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
    const inbox = isObject(w.inbox) ? w.inbox : null;
    const recovered = { channels: Object.create(null), inbox: inbox ? !!inbox.recovered : true };
    if (inbox) this._adopt("inbox", inbox);
    const channels = isObject(w.channels) ? w.channels : {};
    for (const [id, p] of Object.entries(channels)) {
      if (!isObject(p)) continue;
      recovered.channels[id] = !!p.recovered;
      this._adopt("c:" + id, p);
    }
    // The welcome lists every channel of the user: the others were left,
    // their positions would only make the hello grow.
    for (const key of Object.keys(this._positions)) {
      if (key.startsWith("c:") && !Object.hasOwn(channels, key.slice(2))) {
        delete this._positions[key];
        this._left.delete(key);
      }
    }
    this._persist("positions", true);
    // Member lists of channels the user is no longer in end (left while
    // the connection was down); the others are replaced by their members.
    for (const [id, r] of [...this._rosters]) if (!r.fresh && !Object.hasOwn(channels, id)) this._endRoster(id);
    this._setState("open");
    this._emit("recovered", recovered);
  }

  // _adopt takes the welcome's position of a stream when it was not
  // recovered or unknown (the client goes on from there; the application
  // fills the gap from its store). It is not acknowledged: only received
  // messages are.
  _adopt(key, p) {
    if (!validPosition(p)) return;
    if (!p.epoch) {
      // An empty stream: kept only as that, so that a reconnect recovers
      // what it gets meanwhile from its start.
      if (p.offset === 0 && !this._positions[key]) this._positions[key] = { epoch: "", offset: 0 };
      return;
    }
    const cur = this._positions[key];
    if (!p.recovered || !cur || cur.epoch !== p.epoch) {
      if (cur && cur.epoch !== p.epoch) this._leave(key, cur.epoch);
      this._left.get(key)?.delete(p.epoch); // the server's word
      this._positions[key] = { epoch: p.epoch, offset: p.offset };
    }
  }

  _leave(key, epoch) {
    if (!this._left.has(key)) this._left.set(key, new Set());
    this._left.get(key).add(epoch);
  }

  _frame(f) {
    if (f.pong !== undefined) return;
    if (typeof f.presence === "string") return this._presence(f);
    if (typeof f.joined === "string" || typeof f.left === "string") {
      if (typeof f.id === "string") this._settle(f.id, null, f);
      return;
    }
    if (f.error && typeof f.id === "string" && this._requests.has(f.id)) {
      if (f.error === "rate_limited") this._pause(); // the uid's limit: sends wait too
      this._settle(f.id, new ChartError(f.error, f.message, f), null);
      this._emit("error", f);
      return;
    }
    if (isObject(f.ack)) {
      this._retries = 0;
      return this._answer(f.ack.id, null, f.ack);
    }
    if (f.error) {
      if (RETRY_ERRORS.has(f.error)) {
        // A refused try: the client sends it again itself, no error event.
        if (f.error === "rate_limited") this._pause();
        if (f.id && this._retryLater(f.id)) return;
        if (!f.id && f.error !== "hub_closed") return;
      } else if (f.id) this._answer(f.id, f, null);
      this._emit("error", f);
      return;
    }
    if (f.content === undefined && f.user_id === undefined) return; // a frame of a later version
    this._message(f);
  }

  _message(m) {
    // Only a valid position counts; a message without one is delivered as
    // it is (transient, or sent on this node while its broker failed).
    if (validPosition(m) && m.epoch && (m.channel_id === undefined || typeof m.channel_id === "string")) {
      const key = m.channel_id ? "c:" + m.channel_id : "inbox";
      const cur = this._positions[key];
      if (cur && cur.epoch === m.epoch && m.offset <= cur.offset) return; // a duplicate
      if (cur && cur.epoch !== m.epoch) {
        if (this._left.get(key)?.has(m.epoch)) return; // of an epoch the stream left: old
        this._leave(key, cur.epoch);
      }
      this._positions[key] = { epoch: m.epoch, offset: m.offset };
      // Received before without a position: the server appended it once
      // its broker answered again, and this is it, replayed with one.
      const seen = this._unplaced.length > 0 && this._placed(m);
      if (!seen) this._emit("message", m);
      this._persist("positions", true);
      this._dirty.add(key);
      this._scheduleAck();
      return;
    }
    // Remembered only for a stream the server keeps (it has a position):
    // a hub without history sends every message without one.
    const stream = typeof m.channel_id === "string" && m.channel_id ? "c:" + m.channel_id : "inbox";
    if (!m.transient && this._positions[stream]?.epoch) {
      const k = unplacedKey(m);
      this._unplaced.push(k);
      this._unplacedChars += k.length;
      while (this._unplaced.length > MAX_UNPLACED || this._unplacedChars > MAX_UNPLACED_CHARS) {
        this._unplacedChars -= this._unplaced.shift().length;
      }
    }
    this._emit("message", m);
  }

  // _placed reports whether m is a message received before without a
  // position, and forgets it.
  _placed(m) {
    const i = this._unplaced.indexOf(unplacedKey(m));
    if (i < 0) return false;
    this._unplacedChars -= this._unplaced[i].length;
    this._unplaced.splice(i, 1);
    return true;
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
      if (!p) continue; // pruned meanwhile
      if (key === "inbox") ack.inbox = p;
      else (ack.channels ||= Object.create(null))[key.slice(2)] = p;
    }
    this._dirty.clear();
    ws.send(JSON.stringify({ ack }));
  }

  // --- sends ---

  _transmit(entry) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    entry.sentAt = Date.now();
    ws.send(JSON.stringify(entry.msg));
    this._armResend();
    return true;
  }

  // _pump sends the outbox in order, at most maxInFlight unanswered at
  // once, none while paused after a rate_limited refusal.
  _pump() {
    if (this._stopped || !this._helloSent || !this._ws || this._ws.readyState !== 1) return;
    const wait = this._pauseUntil - Date.now();
    if (wait > 0) {
      if (!this._pauseTimer) this._pauseTimer = setTimeout(() => ((this._pauseTimer = null), this._pump()), wait);
      return;
    }
    let inFlight = 0;
    for (const e of this._outbox) if (e.sentAt) inFlight++;
    for (const e of this._outbox) {
      if (inFlight >= this.options.maxInFlight) break;
      if (e.sentAt) continue;
      if (!this._transmit(e)) break;
      inFlight++;
    }
  }

  // _pause stops sending after a rate_limited refusal: a random time below
  // min(maxDelay, retryDelay * 2^n), at least half of it. The refusals of
  // the sends in flight together (the window) make one pause, not one step
  // each: while paused, a refusal does not escalate.
  _pause() {
    if (Date.now() < this._pauseUntil) return;
    const cap = Math.min(this.options.maxDelay, this.options.retryDelay * 2 ** this._retries);
    this._retries = Math.min(this._retries + 1, 30);
    const until = Date.now() + cap * (0.5 + Math.random() / 2);
    if (until > this._pauseUntil) this._pauseUntil = until;
  }

  // _armResend tries again, on the same connection, the sends that got no
  // answer (a retry while the first try was in flight, an "overloaded"
  // refusal that names no id).
  _armResend() {
    if (this._resendTimer) return;
    this._resendTimer = setTimeout(() => {
      this._resendTimer = null;
      const old = Date.now() - this.options.resendAfter;
      if (Date.now() >= this._pauseUntil) for (const e of this._outbox) if (e.sentAt && e.sentAt <= old) this._transmit(e);
      if (this._outbox.length && !this._stopped) this._armResend();
    }, this.options.resendAfter);
  }

  // _retryLater puts a refused try back in the queue; false: not ours.
  _retryLater(id) {
    const e = this._outbox.find((e) => e.id === id);
    if (!e) return false;
    e.sentAt = 0;
    this._pump();
    return true;
  }

  _answer(id, errFrame, ack) {
    const i = this._outbox.findIndex((e) => e.id === id);
    if (i < 0) return;
    this._outbox.splice(i, 1);
    this._persist("outbox", false);
    this._pump();
    const p = this._pending.get(id);
    this._pending.delete(id);
    if (!p) return; // sent before a reload: nobody waits for it
    if (errFrame) p.reject(new ChartError(errFrame.error, errFrame.message, errFrame));
    else p.resolve(ack);
  }

  // A 1009 close: the server refused a message too large; it is one of the
  // sends in flight, the largest is dropped so that it is not sent again.
  // When the hello was the largest frame, it is the one: the next hellos
  // are kept smaller instead.
  _dropLargest() {
    let big = null;
    let size = 0;
    for (const e of this._outbox) {
      if (!e.sentAt) continue;
      const n = JSON.stringify(e.msg).length;
      if (n > size) (big = e), (size = n);
    }
    if (big && size >= this._helloBytes) {
      this._answer(big.id, { error: "too_large", message: "chart: the server closed the connection with 1009 (message too large)" }, null);
    } else if (this._helloBytes > 1024) {
      this._helloLimit = Math.max(1024, Math.floor(Math.min(this._helloLimit, this._helloBytes) / 2));
    }
  }

  // --- join and leave requests ---

  _request(kind, channelId, options) {
    if (this._stopped) return Promise.reject(new ChartError("closed", "chart: the client is closed"));
    if (typeof channelId !== "string" || channelId === "") {
      return Promise.reject(new ChartError("invalid_channel", "chart: " + kind + " needs a channel id (a non-empty string)"));
    }
    const id = `${this._idPrefix}-${++this._seq}`;
    const ms = options.timeout ?? this.options.requestTimeout;
    return new Promise((resolve, reject) => {
      const req = { frame: JSON.stringify({ [kind]: channelId, id }), ws: null, resolve, reject, timer: null };
      req.timer = setTimeout(() => this._settle(id, new ChartError("timeout", `chart: no answer to ${kind} "${channelId}" within ${ms} ms`), null), ms);
      this._requests.set(id, req);
      this._flushRequests(this._ws);
    });
  }

  // _flushRequests sends the requests not sent yet, once the hello is out.
  _flushRequests(ws) {
    if (this._stopped || !ws || ws !== this._ws || !this._helloSent || ws.readyState !== 1) return;
    for (const req of this._requests.values()) {
      if (req.ws) continue;
      req.ws = ws;
      ws.send(req.frame);
    }
  }

  _settle(id, err, answer) {
    const req = this._requests.get(id);
    if (!req) return; // not ours, or settled already (timed out)
    this._requests.delete(id);
    clearTimeout(req.timer);
    if (err) req.reject(err);
    else req.resolve(answer);
  }

  // _dropped: a socket ended. The requests sent on it reject (their answer
  // is lost); the member lists become stale, kept until the next
  // connection's lists replace them.
  _dropped(ws) {
    for (const [id, req] of [...this._requests]) {
      if (req.ws === ws) this._settle(id, new ChartError("disconnected", "chart: the connection dropped before the answer"), null);
    }
    for (const r of this._rosters.values()) (r.fresh = false), (r.filling = null);
  }

  // --- presence: one member list per channel with presence events ---

  // _presence applies a presence frame: "members" (pages: every one but
  // the last has more: true) replaces the list, "join" and "leave" change
  // it, "end" drops it. Listeners of "presence" get {presence, channel_id,
  // joined, left, members}: what changed and the whole list (sorted uids);
  // after "members", joined and left are the difference from the list the
  // client had (none: all joined). A "join" or "leave" that changes
  // nothing, or comes before the connection's list, is not told.
  _presence(f) {
    const id = f.channel_id;
    if (typeof id !== "string") return;
    const uids = Array.isArray(f.user_ids) ? f.user_ids.filter((u) => Number.isSafeInteger(u) && u > 0) : [];
    let r = this._rosters.get(id);
    switch (f.presence) {
      case "members": {
        if (!r) this._rosters.set(id, (r = { members: new Set(), known: false, fresh: false, filling: null }));
        if (!r.filling) r.filling = new Set();
        for (const u of uids) r.filling.add(u);
        if (f.more === true) return;
        const next = r.filling;
        const joined = [...next].filter((u) => !r.members.has(u));
        const left = [...r.members].filter((u) => !next.has(u));
        r.members = next;
        r.filling = null;
        r.fresh = r.known = true;
        return this._emitPresence("members", id, joined, left, r);
      }
      case "join":
      case "leave": {
        if (!r || !r.fresh || r.filling) return; // before this connection's list: in it
        const join = f.presence === "join";
        const changed = uids.filter((u) => r.members.has(u) !== join);
        if (changed.length === 0) return;
        for (const u of changed) join ? r.members.add(u) : r.members.delete(u);
        return this._emitPresence(f.presence, id, join ? changed : [], join ? [] : changed, r);
      }
      case "end":
        if (r) this._endRoster(id);
        return;
    }
  }

  _endRoster(id) {
    const r = this._rosters.get(id);
    this._rosters.delete(id);
    this._emitPresence("end", id, [], [...r.members], { members: new Set() });
  }

  _emitPresence(kind, id, joined, left, r) {
    this._emit("presence", { presence: kind, channel_id: id, joined: joined.sort((a, b) => a - b), left: left.sort((a, b) => a - b), members: sortedIds(r.members) });
  }

  // --- heartbeat: a silently dead connection is closed between
  // heartbeat + heartbeatTimeout and 2 * heartbeat + heartbeatTimeout
  // after the last frame it received (30 s at most by default) ---

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

  // _helloPositions: the inbox, then channel positions while the hello
  // stays under its limit (the channels left out start live).
  _helloPositions() {
    const hello = {};
    let size = 64;
    if (this._positions.inbox) {
      hello.inbox = this._positions.inbox;
      size += JSON.stringify(hello.inbox).length;
    }
    for (const [key, p] of Object.entries(this._positions)) {
      if (!key.startsWith("c:")) continue;
      const n = JSON.stringify(key.slice(2)).length + JSON.stringify(p).length + 2;
      if (size + n > this._helloLimit) continue;
      size += n;
      (hello.channels ||= Object.create(null))[key.slice(2)] = p;
    }
    return hello;
  }

  _load() {
    const k = this.options.storageKey;
    let positions = null;
    let outbox = null;
    try {
      positions = parse(this._storage.getItem(k + ".positions"));
      outbox = parse(this._storage.getItem(k + ".outbox"));
    } catch (err) {
      queueMicrotask(() => this._storageError("read", err));
    }
    this._positions = Object.create(null);
    if (isObject(positions)) for (const [key, p] of Object.entries(positions)) if (validPosition(p) && typeof p.epoch === "string") this._positions[key] = { epoch: p.epoch, offset: p.offset };
    this._outbox = (Array.isArray(outbox) ? outbox : [])
      .filter((e) => isObject(e) && typeof e.id === "string" && isObject(e.msg))
      .map(({ id, msg }) => ({ id, msg, sentAt: 0 }));
  }

  // _persist writes positions or the outbox to storage once per tick:
  // soon, in a microtask; else (an answered send leaving the outbox: a
  // resend carries the same id) within ackDelay.
  _persist(what, soon) {
    this._unsaved.add(what);
    if (soon) {
      if (this._saveSoon) return;
      this._saveSoon = true;
      queueMicrotask(() => {
        this._saveSoon = false;
        this._flushStorage();
      });
    } else if (!this._saveTimer) {
      this._saveTimer = setTimeout(() => this._flushStorage(), this.options.ackDelay);
    }
  }

  _flushStorage() {
    clearTimeout(this._saveTimer);
    this._saveTimer = null;
    const k = this.options.storageKey;
    for (const what of this._unsaved) {
      const value = what === "positions" ? JSON.stringify(this._positions) : JSON.stringify(this._outbox.map(({ id, msg }) => ({ id, msg })));
      try {
        this._storage.setItem(k + "." + what, value);
        this._storageFailed = false;
      } catch (err) {
        this._storageError(what, err);
      }
    }
    this._unsaved.clear();
  }

  // _storageError emits {error: "storage"} once until a write succeeds
  // again: the client goes on in memory.
  _storageError(what, err) {
    if (this._storageFailed) return;
    this._storageFailed = true;
    this._emit("error", { error: "storage", message: `chart: storage (${what}): ${err?.message || err}` });
  }
}

function sortedIds(set) {
  return [...set].sort((a, b) => a - b);
}

function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// MAX_UNPLACED and MAX_UNPLACED_CHARS bound the messages without a
// position a client remembers (in memory) to drop their replay with one.
const MAX_UNPLACED = 1024;
const MAX_UNPLACED_CHARS = 1 << 20;

// unplacedKey is a message's JSON without its position: the same for the
// message received without one and replayed with one.
function unplacedKey(m) {
  const { offset, epoch, ...rest } = m;
  return JSON.stringify(rest);
}

// validPosition: an offset (a safe integer, 0 or more) and an epoch string.
function validPosition(p) {
  return isObject(p) && Number.isSafeInteger(p.offset) && p.offset >= 0 && typeof p.epoch === "string";
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
