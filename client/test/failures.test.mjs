// Close codes and dead connections, against a real hub (run by the Go test
// TestClientJS, clientscript_test.go): what the client does after each of
// the server's close codes, on a connection that goes silent, and on a
// server that never answers the handshake. Delays are measured with the
// timestamps the recording WebSocket of helpers.mjs keeps; where a delay
// is random (backoff jitter) the test pins Math.random, so that the delay
// is known (0: the shortest the jitter allows).
import { test } from "node:test";
import assert from "node:assert/strict";
import { URL, SILENT, ctl, waitFor, range, client, withRandom } from "./helpers.mjs";

// slack is what a timer may run late on a busy machine (2 cores, -race).
const slack = 1500;

// expectRecovered checks that channel u<uid> got exactly the messages
// published (in order, each once) and the send made while away (once).
function expectRecovered(contents, seen, uid, published, sent) {
  const got = contents("u" + uid);
  assert.deepEqual(got.filter((s) => s !== sent), published, "each published message once, in order");
  assert.equal(got.filter((s) => s === sent).length, 1, sent + " once: " + got);
  const offs = seen.messages.filter((m) => m.channel_id === "u" + uid).map((m) => m.offset);
  assert.deepEqual(offs, [...offs].sort((a, b) => a - b), "in offset order");
  assert.equal(seen.recovered.at(-1).channels["u" + uid], true, "recovered: " + JSON.stringify(seen.recovered.at(-1)));
}

test("4002 (credentials expired): the url and protocols functions are called again, the new connection carries the fresh credentials at once, nothing lost or doubled", async () => {
  let urls = 0;
  let protocols = 0;
  const uid = 201;
  const { c, seen, sockets, contents } = client(uid, {
    url: async () => URL + uid + "&token=t" + ++urls,
    protocols: async () => ["tok-" + ++protocols],
    // A backoff would take seconds (Math.random pinned near 1): 4002 must not wait for one.
    minDelay: 4000,
    maxDelay: 4000,
  });
  try {
    await withRandom(0.999, async () => {
      await waitFor("open", () => c.state === "open");
      await ctl(`/publish?channel=u${uid}&prefix=a&n=5`);
      await waitFor("5 messages", () => contents("u" + uid).length === 5);
      await ctl(`/close?uid=${uid}&code=4002`);
      await ctl(`/publish?channel=u${uid}&prefix=a&n=10&from=5`); // live or recovered, as it happens
      const sent = c.send({ channel_id: "u" + uid, content: "after expiry", type: 3 });
      await waitFor("16 messages", () => contents("u" + uid).length >= 16);
      assert.ok((await sent).offset > 0);
    });
    await waitFor("a second welcome", () => seen.recovered.length === 2);
    expectRecovered(contents, seen, uid, range("a", 15), "after expiry");
    assert.equal(sockets[0].code, 4002);
    assert.equal(sockets.length, 2, "one reconnect");
    assert.ok(sockets[1].created - sockets[0].closed < 1000, `reconnected at once: after ${sockets[1].created - sockets[0].closed} ms`);
    assert.equal(urls, 2, "url called again");
    assert.equal(protocols, 2, "protocols called again");
    const creds = JSON.parse(await ctl(`/conns?uid=${uid}`));
    assert.deepEqual(creds, [
      { token: "t1", protocols: ["chart.v1", "tok-1"] },
      { token: "t2", protocols: ["chart.v1", "tok-2"] },
    ]);
    assert.deepEqual(seen.errors, [], "4002 is no error");
    assert.deepEqual(seen.states, ["connecting", "open", "connecting", "open"]);
  } finally {
    c.close();
  }
});

test("4002 at connect (the fresh credentials have expired too) backs off, growing, instead of reconnecting in a loop", async () => {
  const uid = 202;
  const expired = 4; // the first 4 connects are refused with 4002
  let urls = 0;
  const opts = { minDelay: 100, maxDelay: 2000 };
  const { c, seen, sockets } = client(uid, { ...opts, url: () => URL + uid + (++urls <= expired ? "&expired=1" : "") });
  try {
    // Math.random pinned to ½: each delay is half its cap, min(maxDelay, minDelay·2ⁿ).
    await withRandom(0.5, () => waitFor("open", () => c.state === "open", 10000));
    assert.equal(sockets.length, expired + 1);
    for (let i = 0; i < expired; i++) {
      assert.equal(sockets[i].code, 4002, `socket ${i} closed with ${sockets[i].code}`);
      const delay = sockets[i + 1].created - sockets[i].closed;
      const want = Math.min(opts.maxDelay, opts.minDelay * 2 ** i) / 2;
      assert.ok(delay >= want - 10 && delay <= want + slack, `reconnect ${i + 1} after ${delay} ms, want ${want}`);
    }
    assert.deepEqual(seen.errors, []);
  } finally {
    c.close();
  }
});

for (const [code, uid] of [
  [4008, 203],
  [4029, 204],
]) {
  test(`${code} (${code === 4008 ? "slow consumer" : "rate limited"}): the client backs off at least half the backoff cap, reconnects and recovers`, async () => {
    const opts = { minDelay: 400, maxDelay: 5000 };
    const { c, seen, sockets, contents } = client(uid, opts);
    try {
      // Math.random pinned to 0: the shortest delay the jitter allows.
      await withRandom(0, async () => {
        await waitFor("open", () => c.state === "open");
        await ctl(`/publish?channel=u${uid}&prefix=b&n=3`);
        await waitFor("3 messages", () => contents("u" + uid).length === 3);
        await ctl(`/close?uid=${uid}&code=${code}`);
        await waitFor("connecting", () => seen.states.length >= 3);
        await ctl(`/publish?channel=u${uid}&prefix=b&n=5&from=3`); // while it waits
        const sent = c.send({ channel_id: "u" + uid, content: "while away", type: 3 });
        await waitFor("open again", () => seen.states.length === 4, opts.minDelay + slack);
        await waitFor("9 messages", () => contents("u" + uid).length >= 9);
        assert.ok((await sent).offset > 0);
      });
      assert.equal(sockets[0].code, code);
      const delay = sockets[1].created - sockets[0].closed;
      // The welcome reset the backoff: its cap is minDelay, the floor half of it.
      assert.ok(delay >= opts.minDelay / 2 - 10, `reconnected after ${delay} ms: under the floor of ${opts.minDelay / 2}`);
      assert.ok(delay <= opts.minDelay + slack, `reconnected after ${delay} ms`);
      expectRecovered(contents, seen, uid, range("b", 8), "while away");
      assert.deepEqual(seen.states, ["connecting", "open", "connecting", "open"]);
      assert.deepEqual(seen.errors, []);
    } finally {
      c.close();
    }
  });
}

for (const [code, uid, how] of [
  [4001, 205, "Conn.Close"],
  [4003, 206, "ConnectServer refuses"],
  [4009, 207, "replaced"],
]) {
  test(`${code} (${how}) stops the client: state "closed", an error event with the code, sends rejected, no reconnect`, async () => {
    let urls = 0;
    const refuse = code === 4003 ? "&refuse=1" : "";
    const { c, seen, sockets } = client(uid, { url: () => (urls++, URL + uid + refuse) });
    try {
      // 4003 comes at connect (a send with the hello: the next test).
      let pending = null;
      if (code !== 4003) {
        await waitFor("open", () => c.state === "open");
        await ctl(`/close?uid=${uid}&code=${code}`);
        // Pending when the close arrives (or refused at once if it came first).
        pending = assert.rejects(c.send({ channel_id: "u" + uid, content: "never", type: 3 }), { code: "closed" });
      }
      await waitFor("closed", () => c.state === "closed");
      await pending;
      await assert.rejects(c.send({ channel_id: "u" + uid, content: "late", type: 3 }), { code: "closed" });
      assert.deepEqual(seen.errors.map((e) => [e.error, e.code]), [["closed", code]]);
      // A reconnect would come within minDelay (20 ms) of the close: watch
      // fifteen times as long.
      await new Promise((r) => setTimeout(r, 15 * c.options.minDelay));
      assert.equal(urls, 1, "url called once");
      assert.equal(sockets.length, 1, "one socket");
      assert.equal(sockets[0].code, code);
      assert.equal(c.state, "closed");
      assert.deepEqual(seen.states, code === 4003 ? ["connecting", "closed"] : ["connecting", "open", "closed"]);
    } finally {
      c.close();
    }
    await waitFor("offline", async () => (await ctl(`/online?uid=${uid}`)) === "false");
  });
}

test("4003 reaches a client whose send went out with its hello: the hub drains what the client sent before it closes (no reset, no 1006), 30 times", async () => {
  const uid = 209;
  for (let i = 0; i < 30; i++) {
    const { c, sockets } = client(uid, { url: () => URL + uid + "&refuse=1" });
    try {
      const pending = c.send({ channel_id: "u" + uid, content: "with the hello", type: 3 }).catch((e) => e);
      await waitFor("closed", () => c.state === "closed");
      assert.equal((await pending).code, "closed");
      assert.equal(sockets[0].code, 4003, `attempt ${i}: close code ${sockets[0].code}`);
    } finally {
      c.close();
    }
  }
});

test("heartbeat: a connection gone silent (no byte, no FIN, no RST) is closed within heartbeat + heartbeatTimeout … 2·heartbeat + heartbeatTimeout, and the client reconnects and recovers", async () => {
  const uid = 208;
  const opts = { heartbeat: 150, heartbeatTimeout: 300 };
  const { c, seen, sockets, contents } = client(uid, opts);
  try {
    await waitFor("open", () => c.state === "open");
    await ctl(`/publish?channel=u${uid}&prefix=h&n=3`);
    await waitFor("3 messages", () => contents("u" + uid).length === 3);
    await waitFor("a pong", () => sockets[0].lastFrame > sockets[0].opened + opts.heartbeat);
    assert.equal(await ctl(`/freeze?uid=${uid}`), "1");
    await ctl(`/publish?channel=u${uid}&prefix=h&n=5&from=3`); // lost on the frozen path
    const sent = c.send({ channel_id: "u" + uid, content: "while frozen", type: 3 });
    const bound = 2 * opts.heartbeat + opts.heartbeatTimeout;
    await waitFor("connecting", () => seen.states.length >= 3, bound + slack);
    assert.equal(seen.states[2], "connecting");
    const dead = seen.stateTimes[2] - sockets[0].lastFrame;
    assert.ok(dead >= opts.heartbeat + opts.heartbeatTimeout - 10, `closed ${dead} ms after the last frame: too early`);
    assert.ok(dead <= bound + slack, `closed ${dead} ms after the last frame`);
    await waitFor("open again", () => c.state === "open", slack);
    await waitFor("9 messages", () => contents("u" + uid).length >= 9);
    assert.ok((await sent).offset > 0);
    expectRecovered(contents, seen, uid, range("h", 8), "while frozen");
    assert.deepEqual(seen.states, ["connecting", "open", "connecting", "open"]);
    assert.deepEqual(seen.errors, []);
  } finally {
    c.close();
    await ctl(`/cut?uid=${uid}`); // the frozen connection, still open on the server
  }
});

test("a connect attempt that is never answered is abandoned after connectTimeout, its socket closed, and retried", async () => {
  const uid = 209;
  let urls = 0;
  const opts = { connectTimeout: 400 };
  const { c, seen, sockets } = client(uid, { ...opts, url: () => (++urls === 1 ? SILENT : URL) + uid });
  try {
    await waitFor("open", () => c.state === "open", opts.connectTimeout + slack);
    assert.equal(sockets.length, 2);
    assert.equal(sockets[0].opened, 0, "the silent server never opened");
    const gave_up = sockets[1].created - sockets[0].created; // the timeout, then a backoff of at most minDelay
    assert.ok(gave_up >= opts.connectTimeout - 10, `retried after ${gave_up} ms: before connectTimeout`);
    assert.ok(gave_up <= opts.connectTimeout + c.options.minDelay + slack, `retried after ${gave_up} ms`);
    await waitFor("the silent server's connection closed by the client", async () => JSON.parse(await ctl("/silent")).open === 0);
    assert.equal(JSON.parse(await ctl("/silent")).handshakes, 1);
    const ack = await c.send({ channel_id: "u" + uid, content: "hi", type: 3 });
    assert.ok(ack.offset > 0);
    assert.deepEqual(seen.states, ["connecting", "open"]);
    assert.deepEqual(seen.errors, []);
  } finally {
    c.close();
    await ctl("/silent?close=1"); // if the client left one open
  }
});
