// Tests of client/chart.js against a scripted server (a fake WebSocket):
// storage failures, malformed frames, positions, the send window. They
// need no hub, but run with the others by the Go test TestClientJS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Chart } from "../chart.js";

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

// FakeWS records what the client sends; the test plays the server.
class FakeWS {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.protocol = "";
    this.sent = [];
    FakeWS.all.push(this);
  }
  send(s) {
    this.sent.push(s);
  }
  close(code = 1005) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason: "" }));
  }
  open() {
    this.readyState = 1;
    this.protocol = "chart.v1";
    this.onopen?.();
  }
  recv(x) {
    this.onmessage?.({ data: typeof x === "string" ? x : JSON.stringify(x) });
  }
  drop(code) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
  frames() {
    return this.sent.map((s) => JSON.parse(s));
  }
  sends() {
    return this.frames().filter((f) => f.id && f.content !== undefined);
  }
}

function memStore(init = {}) {
  const m = new Map(Object.entries(init));
  const s = { m, writes: 0, fail: false, getItem: (k) => m.get(k) ?? null };
  s.setItem = (k, v) => {
    s.writes++;
    if (s.fail) throw new Error("QuotaExceededError");
    m.set(k, v);
  };
  return s;
}

// start opens a Chart on a FakeWS and returns it with the socket, open.
async function start(opts = {}, welcome = { channels: {}, inbox: { epoch: "i", offset: 0, recovered: true } }) {
  FakeWS.all = [];
  const c = new Chart("ws://fake/", { WebSocket: FakeWS, heartbeat: 0, minDelay: 1, maxDelay: 5, ackDelay: 5, ...opts });
  const seen = { messages: [], errors: [], recovered: [], states: [] };
  c.on("message", (m) => seen.messages.push(m));
  c.on("error", (e) => seen.errors.push(e));
  c.on("recovered", (r) => seen.recovered.push(r));
  c.on("state", (s) => seen.states.push(s));
  await tick();
  const ws = FakeWS.all.at(-1);
  ws.open();
  if (welcome) ws.recv({ welcome });
  return { c, ws, seen };
}

async function nextSocket(ws) {
  for (let i = 0; i < 100 && FakeWS.all.at(-1) === ws; i++) await tick(2);
  const n = FakeWS.all.at(-1);
  assert.notEqual(n, ws, "no reconnect");
  return n;
}

const msg = (ch, offset, epoch = "e", content = "m" + offset) => ({ channel_id: ch, user_id: 1, type: 3, content, offset, epoch });

test("a new client is connecting from the start and says so once; closed before it started, it opens no socket", async () => {
  FakeWS.all = [];
  const c = new Chart("ws://fake/", { WebSocket: FakeWS, heartbeat: 0 });
  const states = [];
  c.on("state", (s) => states.push(s));
  assert.equal(c.state, "connecting");
  await tick();
  assert.equal(FakeWS.all.length, 1);
  assert.deepEqual(states, ["connecting"]);
  c.close();
  assert.deepEqual(states, ["connecting", "closed"]);

  const d = new Chart("ws://fake/", { WebSocket: FakeWS, heartbeat: 0 });
  const dStates = [];
  d.on("state", (s) => dStates.push(s));
  d.close();
  await tick();
  assert.equal(d.state, "closed");
  assert.deepEqual(dStates, ["closed"]);
  assert.equal(FakeWS.all.length, 1, "no socket for a client closed at once");
});

test("a failing storage loses no message, and send still returns a promise", async () => {
  const store = memStore();
  const { c, ws, seen } = await start({ storage: store });
  try {
    store.fail = true;
    ws.recv(msg("a", 1));
    ws.recv(msg("a", 2));
    assert.deepEqual(seen.messages.map((m) => m.content), ["m1", "m2"]);
    let p;
    assert.doesNotThrow(() => (p = c.send({ channel_id: "a", content: "x" })));
    assert.ok(p instanceof Promise);
    await tick();
    assert.equal(seen.errors.filter((e) => e.error === "storage").length, 1, JSON.stringify(seen.errors));
    const id = ws.sends()[0].id;
    ws.recv({ ack: { id, offset: 3, epoch: "e" } });
    assert.equal((await p).offset, 3);
    ws.recv(msg("a", 2)); // still a duplicate: the position lives in memory
    assert.equal(seen.messages.length, 2);
    store.fail = false;
    ws.recv(msg("a", 3));
    await tick();
    assert.equal(JSON.parse(store.m.get("chart.positions"))["c:a"].offset, 3);
  } finally {
    c.close();
  }
});

test("the welcome prunes positions of channels left; the hello is capped and does not get an innocent send dropped", async () => {
  const positions = { inbox: { epoch: "i", offset: 4 } };
  for (let i = 0; i < 1500; i++) positions["c:stale-channel-number-" + i] = { epoch: "epoch-abcdefgh", offset: 100000 + i };
  positions["c:keep"] = { epoch: "k", offset: 7 };
  const store = memStore({ "chart.positions": JSON.stringify(positions) });
  const { c, ws, seen } = await start({ storage: store }, null);
  try {
    const hello = ws.sent[0];
    assert.ok(hello.length <= 48 << 10, "hello of " + hello.length + " bytes");
    assert.equal(JSON.parse(hello).hello.inbox.offset, 4);
    const p = c.send({ channel_id: "keep", content: "small" });
    // The server refuses the (big) hello with 1009: the small send is not blamed.
    ws.drop(1009);
    const ws2 = await nextSocket(ws);
    ws2.open();
    assert.ok(ws2.sent[0].length < hello.length / 1.5, "a smaller hello after a 1009: " + ws2.sent[0].length);
    ws2.recv({ welcome: { channels: { keep: { epoch: "k", offset: 7, recovered: true } }, inbox: { epoch: "i", offset: 4, recovered: true } } });
    const sent = ws2.sends();
    assert.equal(sent.length, 1);
    ws2.recv({ ack: { id: sent[0].id, offset: 8, epoch: "k" } });
    assert.equal((await p).offset, 8);
    await tick();
    assert.deepEqual(Object.keys(JSON.parse(store.m.get("chart.positions"))).sort(), ["c:keep", "inbox"]);
    assert.equal(seen.recovered.length, 1);
  } finally {
    c.close();
  }
  // The next client says hello with what is left.
  const two = await start({ storage: store }, null);
  try {
    assert.deepEqual(JSON.parse(two.ws.sent[0]).hello, { inbox: { epoch: "i", offset: 4 }, channels: { keep: { epoch: "k", offset: 7 } } });
  } finally {
    two.c.close();
  }
});

test("a 1009 with a large send in flight rejects that send with too_large", async () => {
  const { c, ws } = await start();
  const p = c.send({ channel_id: "a", content: "x".repeat(70000) });
  ws.drop(1009);
  await assert.rejects(p, { code: "too_large" });
  c.close();
});

test("malformed frames are ignored, and only the first welcome of a socket counts", async () => {
  const { c, ws, seen } = await start({}, null);
  try {
    for (const f of ["null", "5", '"x"', "[]", "true", '{"ack":null}', '{"ack":5}', '{"welcome":null}', '{"welcome":[1]}']) ws.recv(f);
    assert.equal(c.state, "connecting");
    ws.recv('{"welcome":{"channels":{"x":null,"y":5,"z":{"epoch":"z","offset":1,"recovered":true}},"inbox":null}}');
    assert.equal(c.state, "open");
    assert.equal(seen.recovered.length, 1);
    assert.equal(seen.recovered[0].channels.z, true);
    ws.recv({ welcome: { channels: { z: { epoch: "other", offset: 99, recovered: false } } } });
    assert.equal(seen.recovered.length, 1, "a second welcome is ignored");
    ws.recv(msg("z", 1, "z"));
    ws.recv(msg("z", 2, "z"));
    assert.deepEqual(seen.messages.map((m) => m.content), ["m2"], "z stays at epoch z, offset 1");
  } finally {
    c.close();
  }
});

test("only valid positions count, and a stream does not go back to an epoch it left", async () => {
  const store = memStore();
  const { c, ws, seen } = await start({ storage: store }, { channels: { a: { epoch: "e1", offset: 5, recovered: true } } });
  try {
    ws.recv({ ...msg("a", "9", "e1"), content: "string offset" });
    ws.recv({ ...msg("a", -1, "e1"), content: "negative" });
    ws.recv({ ...msg("a", 1.5, "e1"), content: "fraction" });
    ws.recv({ ...msg("a", 2 ** 60, "e1"), content: "unsafe" });
    ws.recv({ ...msg("a", 9, 7), content: "numeric epoch" });
    await tick();
    assert.deepEqual(seen.messages.map((m) => m.content), ["string offset", "negative", "fraction", "unsafe", "numeric epoch"], "delivered, as without a position");
    assert.equal(JSON.parse(store.m.get("chart.positions"))["c:a"].offset, 5, "position unchanged");
    ws.recv(msg("a", 6, "e1", "e1-6"));
    ws.recv(msg("a", 1, "e2", "e2-1")); // the stream moved to a new epoch
    ws.recv(msg("a", 7, "e1", "e1-7")); // old: dropped
    ws.recv(msg("a", 2, "e2", "e2-2"));
    ws.recv(msg("a", 2, "e2", "e2-2"));
    assert.deepEqual(
      seen.messages.map((m) => m.content).slice(-3),
      ["e1-6", "e2-1", "e2-2"],
    );
  } finally {
    c.close();
  }
});

test("a channel named __proto__ keeps its position and its recovered flag", async () => {
  const store = memStore();
  const { c, ws, seen } = await start({ storage: store }, null);
  try {
    ws.recv('{"welcome":{"channels":{"__proto__":{"epoch":"p","offset":3,"recovered":true}}}}');
    assert.ok(Object.hasOwn(seen.recovered[0].channels, "__proto__"));
    assert.equal(seen.recovered[0].channels["__proto__"], true);
    ws.recv(msg("__proto__", 4, "p"));
    assert.equal(seen.messages.length, 1);
    ws.drop(1006);
    const ws2 = await nextSocket(ws);
    ws2.open();
    const hello = JSON.parse(ws2.sent[0]).hello;
    assert.ok(Object.hasOwn(hello.channels, "__proto__"), ws2.sent[0]);
    assert.equal(hello.channels["__proto__"].offset, 4);
    await tick(10);
    const ack = ws2.frames().find((f) => f.ack)?.ack ?? ws.frames().find((f) => f.ack)?.ack;
    assert.ok(ack && Object.hasOwn(ack.channels, "__proto__"), "acknowledged: " + JSON.stringify(ack));
  } finally {
    c.close();
  }
});

test("sends go out in a window, in order; rate_limited pauses them without error events; storage writes are batched", async () => {
  const store = memStore();
  const { c, ws, seen } = await start({ storage: store, retryDelay: 30, maxInFlight: 16 });
  try {
    const writes = store.writes;
    const ps = Array.from({ length: 100 }, (_, i) => c.send({ channel_id: "a", content: "s" + i }));
    await tick();
    assert.ok(store.writes - writes <= 2, "storage writes for 100 sends: " + (store.writes - writes));
    assert.equal(JSON.parse(store.m.get("chart.outbox")).length, 100);
    let sent = ws.sends();
    assert.equal(sent.length, 16);
    assert.deepEqual(sent.map((f) => f.content), Array.from({ length: 16 }, (_, i) => "s" + i));
    // The server refuses the 1st: the client pauses, sends nothing more, reports nothing.
    ws.recv({ error: "rate_limited", message: "slow down", id: sent[0].id });
    ws.recv({ ack: { id: sent[1].id, offset: 2, epoch: "e" } }); // resets the pause's growth, not the pause
    ws.recv({ error: "rate_limited", id: sent[2].id });
    assert.equal(ws.sends().length, 16, "paused");
    assert.deepEqual(seen.errors, []);
    await tick(60);
    sent = ws.sends();
    assert.deepEqual(sent.slice(16, 18).map((f) => f.content), ["s0", "s2"], "the refused ones first, in order");
    // Answer everything as it comes, in order.
    let answered = new Set([sent[1].id]);
    for (let round = 0; round < 50 && answered.size < 100; round++) {
      for (const f of ws.sends()) if (!answered.has(f.id)) answered.add(f.id), ws.recv({ ack: { id: f.id, offset: 1, epoch: "e" } });
      await tick();
    }
    assert.equal(answered.size, 100);
    await Promise.all(ps);
    const contents = ws.sends().map((f) => f.content).filter((s, i, a) => a.indexOf(s) === i);
    assert.deepEqual(contents.filter((s) => s !== "s0" && s !== "s2"), Array.from({ length: 100 }, (_, i) => "s" + i).filter((s) => s !== "s0" && s !== "s2"));
    await tick(20);
    assert.equal(JSON.parse(store.m.get("chart.outbox")).length, 0);
    assert.ok(store.writes - writes < 60, "storage writes: " + (store.writes - writes));
    assert.deepEqual(seen.errors, []);
  } finally {
    c.close();
  }
});

test("an empty channel in the welcome is kept as an empty stream and said in the next hello, until its first message", async () => {
  const { c, ws } = await start({}, { channels: { quiet: { epoch: "", offset: 0, recovered: false } }, inbox: { epoch: "i", offset: 0, recovered: true } });
  try {
    ws.drop(1006);
    const ws2 = await nextSocket(ws);
    ws2.open();
    assert.deepEqual(JSON.parse(ws2.sent[0]).hello.channels, { quiet: { epoch: "", offset: 0 } });
    ws2.recv({ welcome: { channels: { quiet: { epoch: "q", offset: 2, recovered: true } } } });
    ws2.recv(msg("quiet", 1, "q"));
    ws2.recv(msg("quiet", 2, "q"));
    ws2.drop(1006);
    const ws3 = await nextSocket(ws2);
    ws3.open();
    assert.deepEqual(JSON.parse(ws3.sent[0]).hello.channels, { quiet: { epoch: "q", offset: 2 } });
  } finally {
    c.close();
  }
});

test("the refusals of a window's sends make one rate_limited pause, not one doubling each", async () => {
  const { c, ws } = await start({ retryDelay: 40, maxDelay: 100000, maxInFlight: 16 });
  try {
    const ps = Array.from({ length: 16 }, (_, i) => c.send({ channel_id: "a", content: "s" + i }));
    const sent = ws.sends();
    assert.equal(sent.length, 16);
    const t0 = Date.now();
    for (const f of sent) ws.recv({ error: "rate_limited", id: f.id });
    // One pause of at most retryDelay (40 ms), not 40·2^15 ms.
    for (let i = 0; i < 200 && ws.sends().length === 16; i++) await tick(5);
    assert.ok(ws.sends().length > 16, "sending again");
    assert.ok(Date.now() - t0 < 1000, `paused ${Date.now() - t0} ms`);
    for (const f of ws.sends().slice(16)) ws.recv({ ack: { id: f.id, offset: 1, epoch: "e" } });
    await Promise.all(ps);
  } finally {
    c.close();
  }
});

// --- join, leave and presence (a scripted server; against a real one:
// requests.test.mjs and examples/chat's TestChartJSAgainstDemo) ---

test("join and leave resolve with their answers, reject with the error frame's code (also an error event), and go out after the hello", async () => {
  FakeWS.all = [];
  const c = new Chart("ws://fake/", { WebSocket: FakeWS, heartbeat: 0, minDelay: 1, maxDelay: 5 });
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const joined = c.join("room"); // before the socket: waits for it
  await tick();
  const ws = FakeWS.all.at(-1);
  assert.deepEqual(ws.frames(), []);
  ws.open();
  const [hello, req] = ws.frames();
  assert.ok(hello.hello, "the hello first");
  assert.equal(req.join, "room");
  ws.recv({ joined: "room", id: req.id });
  assert.deepEqual(await joined, { joined: "room", id: req.id });

  const refused = c.join("vip");
  const r2 = ws.frames().at(-1);
  ws.recv({ error: "forbidden", message: "not your room", id: r2.id, channel_id: "vip" });
  await assert.rejects(refused, (err) => err.code === "forbidden" && err.message === "not your room" && err.frame.channel_id === "vip");
  assert.deepEqual(errors.map((e) => [e.error, e.id]), [["forbidden", r2.id]]);

  const left = c.leave("room");
  const r3 = ws.frames().at(-1);
  assert.equal(r3.leave, "room");
  ws.recv({ left: "room", id: "someone-else" }); // not ours: ignored
  ws.recv({ left: "room", id: r3.id });
  assert.deepEqual(await left, { left: "room", id: r3.id });
  await assert.rejects(c.join(""), { code: "invalid_channel" });
  await assert.rejects(c.join(5), { code: "invalid_channel" });
  assert.equal(ws.frames().length, 4, "invalid ids are not sent");
  c.close();
  await assert.rejects(c.join("late"), { code: "closed" });
});

test("a request times out, one in flight rejects when its connection drops, one pending at close rejects closed", async () => {
  const { c, ws } = await start({ requestTimeout: 50 });
  const t0 = Date.now();
  await assert.rejects(c.join("slow"), { code: "timeout" });
  assert.ok(Date.now() - t0 >= 45, "after requestTimeout");
  const quick = c.join("x", { timeout: 10 });
  await assert.rejects(quick, { code: "timeout" });
  const lost = c.join("room", { timeout: 5000 });
  ws.drop(1006);
  await assert.rejects(lost, { code: "disconnected" });
  // The late answer of a request that timed out is ignored.
  const ws2 = await nextSocket(ws);
  ws2.open();
  const pending = c.leave("room", { timeout: 5000 });
  c.close();
  await assert.rejects(pending, { code: "closed" });
});

test("rate_limited on a request rejects it and pauses sends", async () => {
  const { c, ws } = await start({ retryDelay: 10000, maxDelay: 10000 });
  const p = c.join("room");
  ws.recv({ error: "rate_limited", id: ws.frames().at(-1).id });
  await assert.rejects(p, { code: "rate_limited" });
  const sent = c.send({ channel_id: "room", content: "waits", type: 3 });
  await tick(5);
  assert.equal(ws.sends().length, 0, "paused after the refusal");
  c.close();
  await assert.rejects(sent, { code: "closed" });
});

test("presence: pages make one list, join/leave change it, end drops it; listeners get joined, left and the whole list", async () => {
  const { c, ws } = await start();
  const events = [];
  c.on("presence", (p) => events.push(p));
  ws.recv({ presence: "join", channel_id: "room", user_ids: [9] }); // before the list: in it
  assert.equal(c.members("room"), null);
  ws.recv({ presence: "members", channel_id: "room", user_ids: [3, 1], more: true });
  assert.equal(events.length, 0, "a page is not a list");
  assert.equal(c.members("room"), null);
  ws.recv({ presence: "members", channel_id: "room", user_ids: [7] });
  assert.deepEqual(c.members("room"), [1, 3, 7]);
  ws.recv({ presence: "join", channel_id: "room", user_ids: [12, 3] }); // 3 is in already
  ws.recv({ presence: "leave", channel_id: "room", user_ids: [1, 99] });
  ws.recv({ presence: "leave", channel_id: "room", user_ids: [99] }); // no change: not told
  ws.recv({ presence: "members", channel_id: "other", user_ids: [] });
  ws.recv({ presence: "end", channel_id: "room" });
  ws.recv({ presence: "join", channel_id: "room", user_ids: [5] }); // after the end: no list
  assert.deepEqual(events, [
    { presence: "members", channel_id: "room", joined: [1, 3, 7], left: [], members: [1, 3, 7] },
    { presence: "join", channel_id: "room", joined: [12], left: [], members: [1, 3, 7, 12] },
    { presence: "leave", channel_id: "room", joined: [], left: [1], members: [3, 7, 12] },
    { presence: "members", channel_id: "other", joined: [], left: [], members: [] },
    { presence: "end", channel_id: "room", joined: [], left: [3, 7, 12], members: [] },
  ]);
  assert.equal(c.members("room"), null);
  assert.deepEqual(c.members("other"), []);
  c.close();
});

test("presence across a reconnect: the old list stays until the new one replaces it (told as a difference); a channel missing from the welcome ends", async () => {
  const { c, ws } = await start(undefined, { channels: { a: { epoch: "", offset: 0 }, b: { epoch: "", offset: 0 } } });
  const events = [];
  c.on("presence", (p) => events.push(p));
  ws.recv({ presence: "members", channel_id: "a", user_ids: [1, 2] });
  ws.recv({ presence: "members", channel_id: "b", user_ids: [1, 4] });
  ws.recv({ presence: "members", channel_id: "a", user_ids: [5], more: true }); // cut mid-list
  ws.drop(1006);
  const ws2 = await nextSocket(ws);
  assert.deepEqual(c.members("a"), [1, 2], "kept while reconnecting");
  ws2.open();
  ws2.recv({ presence: "leave", channel_id: "a", user_ids: [1] }); // before this socket's list: ignored
  ws2.recv({ presence: "members", channel_id: "a", user_ids: [2, 3] });
  ws2.recv({ welcome: { channels: { a: { epoch: "", offset: 0 } } } }); // b was left meanwhile
  ws2.recv({ presence: "join", channel_id: "a", user_ids: [1] });
  assert.deepEqual(events.slice(2), [
    { presence: "members", channel_id: "a", joined: [3], left: [1], members: [2, 3] },
    { presence: "end", channel_id: "b", joined: [], left: [1, 4], members: [] },
    { presence: "join", channel_id: "a", joined: [1], left: [], members: [1, 2, 3] },
  ]);
  assert.equal(c.members("b"), null);
  c.close();
});

test("a message received without a position and replayed later with one is delivered once", async () => {
  const { c, ws, seen } = await start({});
  try {
    ws.recv(msg("a", 1));
    const outage = { channel_id: "a", user_id: 2, type: 3, content: "sent during an outage", send_time: "2026-11-28 14:00:00" };
    ws.recv(outage); // no position: its node's broker failed
    ws.recv({ channel_id: "a", user_id: 3, type: 3, content: "transient", transient: true });
    ws.recv(msg("a", 2));
    ws.recv({ ...outage, offset: 3, epoch: "e" }); // appended once the broker answered
    ws.recv({ ...outage, content: "another", offset: 4, epoch: "e" });
    assert.deepEqual(seen.messages.map((m) => m.content), ["m1", "sent during an outage", "transient", "m2", "another"]);
    ws.recv({ ...outage, offset: 5, epoch: "e" }); // the same content again: a new message
    assert.equal(seen.messages.length, 6);
  } finally {
    c.close();
  }
});

test("messages without a position are remembered only for kept streams, and within bounds", async () => {
  const { c, ws, seen } = await start({});
  try {
    const big = "x".repeat(60000);
    for (let i = 0; i < 40; i++) ws.recv({ channel_id: "nohistory", user_id: 1, type: 3, content: big + i });
    assert.equal(c._unplaced.length, 0, "a stream without a position: nothing kept");
    ws.recv(msg("a", 1));
    for (let i = 0; i < 40; i++) ws.recv({ channel_id: "a", user_id: 1, type: 3, content: big + i });
    assert.ok(c._unplacedChars <= 1 << 20 && c._unplaced.length > 0, `${c._unplaced.length} kept, ${c._unplacedChars} chars`);
    assert.equal(seen.messages.length, 81);
  } finally {
    c.close();
  }
});
