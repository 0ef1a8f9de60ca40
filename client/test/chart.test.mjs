// Tests of client/chart.js against a real hub. Run by the Go test
// TestClientJS (clientscript_test.go), which starts the hub and sets
// CHART_URL, CHART_CONTROL, CHART_DEAD_URL and CHART_SILENT_URL
// (helpers.mjs). Close codes and dead connections: failures.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChartError } from "../chart.js";
import { URL, DEAD, ctl, waitFor, range, client } from "./helpers.mjs";

test("send resolves with the server's ack, and the message comes back once", async () => {
  const { c, contents } = client(101);
  try {
    const ack = await c.send({ channel_id: "u101", content: "hi", type: 3 });
    assert.equal(typeof ack.id, "string");
    assert.ok(ack.offset >= 1, "ack has an offset: " + JSON.stringify(ack));
    assert.ok(ack.epoch, "ack has an epoch");
    await waitFor("the echo", () => contents("u101").length === 1);
    assert.equal(c.state, "open");
  } finally {
    c.close();
  }
});

test("a refusal rejects with the server's code, and is an error event", async () => {
  const { c, seen } = client(102);
  try {
    await assert.rejects(c.send({ channel_id: "not-mine", content: "x", type: 3 }), (err) => {
      assert.ok(err instanceof ChartError);
      assert.equal(err.code, "not_joined");
      return true;
    });
    assert.equal(seen.errors[0].error, "not_joined");
    // The connection stays: the next send works.
    const ack = await c.send({ channel_id: "u102", content: "ok", type: 3 });
    assert.ok(ack.offset >= 1);
  } finally {
    c.close();
  }
});

test("messages are delivered once, in order, and acknowledged", async () => {
  const { c, seen, contents } = client(103);
  try {
    await waitFor("open", () => c.state === "open");
    await ctl("/publish?channel=u103&prefix=m&n=30");
    await waitFor("30 messages", () => contents("u103").length >= 30);
    assert.deepEqual(contents("u103"), range("m", 30));
    const last = seen.messages.at(-1).offset;
    await waitFor("the ack", async () => Number(await ctl("/acked?uid=103&channel=u103")) === last);
  } finally {
    c.close();
  }
});

test("a direct message reaches the recipient once", async () => {
  const a = client(104);
  const b = client(105);
  try {
    await waitFor("b open", () => b.c.state === "open");
    const ack = await a.c.send({ to_user_id: 105, content: "psst", type: 3 });
    assert.ok(ack.offset >= 1);
    await waitFor("the dm", () => b.seen.messages.some((m) => m.content === "psst"));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(b.seen.messages.filter((m) => m.content === "psst").length, 1);
    assert.equal(b.seen.messages.find((m) => m.content === "psst").to_user_id, 105);
  } finally {
    a.c.close();
    b.c.close();
  }
});

test("after a cut connection it reconnects and recovers what was published meanwhile, without duplicates", async () => {
  const { c, seen, contents } = client(106);
  try {
    await waitFor("open", () => c.state === "open");
    await ctl("/publish?channel=u106&prefix=r&n=5");
    await waitFor("5 messages", () => contents("u106").length === 5);
    await ctl("/cut?uid=106");
    await ctl("/publish?channel=u106&prefix=r&n=10&from=5"); // published while it is away
    const sent = c.send({ channel_id: "u106", content: "while away", type: 3 });
    await waitFor("15 messages", () => contents("u106").length >= 16, 8000);
    const ack = await sent;
    assert.ok(ack.offset > 0);
    const got = contents("u106");
    assert.deepEqual(got.filter((s) => s !== "while away"), range("r", 15));
    assert.equal(got.filter((s) => s === "while away").length, 1);
    assert.ok(seen.recovered.length >= 2, "a welcome per connection");
    assert.equal(seen.recovered.at(-1).channels.u106, true, "recovered: " + JSON.stringify(seen.recovered.at(-1)));
    assert.ok(seen.states.filter((s) => s === "open").length >= 2, "states: " + seen.states);
    const offs = seen.messages.filter((m) => m.channel_id === "u106").map((m) => m.offset);
    assert.deepEqual(offs, [...offs].sort((a, b) => a - b), "in order");
  } finally {
    c.close();
  }
});

test("a refused connection (server down) is retried without an unhandled error", async () => {
  let calls = 0;
  const url = async () => (++calls <= 3 ? DEAD + 107 : URL + 107);
  const { c, seen } = client(107, { url });
  try {
    await waitFor("open", () => c.state === "open");
    assert.ok(calls >= 4, "calls " + calls);
    assert.deepEqual(seen.states.slice(0, 1), ["connecting"]);
  } finally {
    c.close();
  }
});

test("close() stops reconnecting and rejects pending sends", async () => {
  let calls = 0;
  const { c, seen } = client(108, { url: () => (calls++, URL + 108) });
  await waitFor("open", () => c.state === "open");
  c.close();
  assert.equal(c.state, "closed");
  await assert.rejects(c.send({ channel_id: "u108", content: "late", type: 3 }), { code: "closed" });
  await waitFor("offline", async () => (await ctl("/online?uid=108")) === "false");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(calls, 1);
  assert.equal(seen.states.at(-1), "closed");
});

test("4001 (Disconnect) stops the client", async () => {
  let calls = 0;
  const { c, seen } = client(109, { url: () => (calls++, URL + 109) });
  await waitFor("open", () => c.state === "open");
  await ctl("/disconnect?uid=109");
  await waitFor("closed", () => c.state === "closed");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(calls, 1);
  assert.equal(seen.errors.at(-1).code, 4001);
});

test("positions in storage resume a new client where the last one stopped", async () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const one = client(110, { storage });
  await waitFor("open", () => one.c.state === "open");
  await ctl("/publish?channel=u110&prefix=a&n=3");
  await waitFor("3", () => one.contents("u110").length === 3);
  one.c.close();
  await waitFor("offline", async () => (await ctl("/online?uid=110")) === "false");
  await ctl("/publish?channel=u110&prefix=b&n=4");
  const two = client(110, { storage });
  try {
    await waitFor("4", () => two.contents("u110").length >= 4);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(two.contents("u110"), range("b", 4));
  } finally {
    two.c.close();
  }
});

test("a send queued in storage is sent by the next client, once", async () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const one = client(111, { storage, url: DEAD + 111 }); // never connects
  const p = one.c.send({ channel_id: "u111", content: "queued", type: 3 });
  one.c.close();
  await assert.rejects(p, { code: "closed" });
  const two = client(111, { storage });
  try {
    await waitFor("the queued message", () => two.contents("u111").includes("queued"));
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(two.contents("u111"), ["queued"]);
    assert.equal(JSON.parse(store.get("chart.outbox")).length, 0, "acknowledged: out of storage");
  } finally {
    two.c.close();
  }
});

test("250 quick sends stay under the rate limit: all acknowledged, in order within the window, no errors, one connection", async () => {
  const { c, seen, contents } = client(112, { retryDelay: 200 });
  try {
    await waitFor("open", () => c.state === "open");
    const acks = await Promise.all(Array.from({ length: 250 }, (_, i) => c.send({ channel_id: "u112", content: "q" + i, type: 3 })));
    assert.equal(acks.length, 250);
    await waitFor("the echoes", () => contents("u112").length >= 250, 10000);
    // Each once; order holds but for a refusal overtaken within the window (16).
    const got = contents("u112");
    assert.deepEqual([...got].sort(), range("q", 250).sort());
    got.forEach((s, i) => assert.ok(Math.abs(Number(s.slice(1)) - i) < 16, `${s} at ${i}`));
    assert.deepEqual(seen.errors, []);
    assert.equal(seen.states.filter((s) => s === "open").length, 1, "states: " + seen.states);
  } finally {
    c.close();
  }
});
