// chart.js's join, leave and presence events against the demo server (its
// JoinServer, LeaveServer and PresenceChannels), over real sockets. Run by
// the Go test TestChartJSAgainstDemo (chartjs_test.go), which starts the
// demo and sets CHART_DEMO: {"url": "ws://…/ws", "users": [{"uid", "cookie"}]}.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Chart } from "../../../client/chart.js";

const demo = JSON.parse(process.env.CHART_DEMO || "null");
if (!demo) throw new Error("run by go test -run TestChartJSAgainstDemo (needs CHART_DEMO)");
const [ann, cleo, dan, eve] = demo.users;

// open connects as user u: its WebSocket sends the session cookie, as a
// browser would. Everything it sees is recorded in order.
function open(u) {
  class WithCookie extends WebSocket {
    constructor(url, protocols) {
      super(url, { protocols, headers: { Cookie: u.cookie } });
    }
  }
  const c = new Chart(demo.url, { WebSocket: WithCookie, minDelay: 20, maxDelay: 200, ackDelay: 20 });
  const seen = { presence: [], errors: [], messages: [] };
  c.on("presence", (p) => seen.presence.push(p));
  c.on("error", (e) => seen.errors.push(e));
  c.on("message", (m) => seen.messages.push(m));
  return { c, seen };
}

async function waitFor(what, cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("join and leave: granted requests resolve with the answer, refused ones reject with JoinServer's code", async () => {
  const { c, seen } = open(ann);
  try {
    const joined = await c.join("go");
    assert.equal(joined.joined, "go");
    assert.equal(typeof joined.id, "string");
    const ack = await c.send({ channel_id: "go", content: "in go", type: 3 });
    assert.ok(ack.offset >= 1);
    const refused = [["join", "presence"], ["leave", "presence"], ["join", " spaced"], ["join", "x".repeat(65)]];
    for (const [op, ch] of refused) {
      await assert.rejects(c[op](ch), (err) => err.code === "invalid_channel", `${op} ${JSON.stringify(ch)}`);
    }
    assert.deepEqual(seen.errors.map((e) => e.error), refused.map(() => "invalid_channel"));
    const left = await c.leave("go");
    assert.equal(left.left, "go");
    await assert.rejects(c.send({ channel_id: "go", content: "gone", type: 3 }), { code: "not_joined" });
    assert.deepEqual(seen.messages.filter((m) => m.channel_id === "go").map((m) => m.content), ["in go"]);
  } finally {
    c.close();
  }
});

test("at most 32 channels: the next join rejects with too_many_channels", async () => {
  const { c } = open(cleo);
  try {
    // Cleo starts in the lobby (and presence, which does not count).
    await Promise.all(Array.from({ length: 31 }, (_, i) => c.join("room " + i)));
    await assert.rejects(c.join("one too many"), { code: "too_many_channels" });
    await c.leave("room 0");
    assert.equal((await c.join("one too many")).joined, "one too many");
  } finally {
    c.close();
  }
});

test("the online list: the presence channel's members, then who comes and goes, each once and in order", async () => {
  // Dan and Eve are in no other test; users of the others may still be
  // logging out when this one starts: Dan's list is awaited down to himself.
  const a = open(dan);
  let b;
  try {
    await waitFor("Dan alone in his list", () => same(a.c.members("presence"), [dan.uid]));
    assert.equal(a.seen.presence[0].presence, "members", "the list comes first");
    const from = a.seen.presence.length;
    b = open(eve);
    await waitFor("Eve in Dan's list", () => a.c.members("presence").includes(eve.uid));
    await waitFor("Eve's list", () => same(b.c.members("presence"), sorted([dan.uid, eve.uid])));
    b.c.close();
    await waitFor("Eve gone from Dan's list", () => !a.c.members("presence").includes(eve.uid));
    assert.deepEqual(a.seen.presence.slice(from), [
      { presence: "join", channel_id: "presence", joined: [eve.uid], left: [], members: sorted([dan.uid, eve.uid]) },
      { presence: "leave", channel_id: "presence", joined: [], left: [eve.uid], members: [dan.uid] },
    ]);
    assert.equal(a.c.members("lobby"), null, "the lobby has no presence events");
  } finally {
    a.c.close();
    b?.c.close();
  }
});

const sorted = (ids) => [...ids].sort((x, y) => x - y);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
