// join and leave against a real hub (run by the Go test TestClientJS,
// clientscript_test.go). Its Handler has no JoinHandler, so the server
// refuses every request: what is tested here is the refusal, the timeout
// and a connection dropped before the answer, over real sockets. Granted
// requests and presence events against a server that has them (the demo's
// JoinHandler and PresenceChannels): examples/chat's TestChartJSAgainstDemo
// runs examples/chat/testdata/chartjs.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChartError } from "../chart.js";
import { ctl, waitFor, client } from "./helpers.mjs";

test("without a JoinHandler, join and leave reject with refused, each an error event with its id; the connection stays", async () => {
  const { c, seen, contents } = client(121);
  try {
    await assert.rejects(c.join("elsewhere"), (err) => err instanceof ChartError && err.code === "refused" && typeof err.frame.id === "string");
    await assert.rejects(c.leave("lobby"), { code: "refused" });
    assert.deepEqual(seen.errors.map((e) => e.error), ["refused", "refused"]);
    assert.ok(seen.errors.every((e) => typeof e.id === "string"));
    await c.send({ channel_id: "u121", content: "still here", type: 3 });
    await waitFor("the echo", () => contents("u121").length === 1);
    assert.equal(seen.states.filter((s) => s === "open").length, 1);
  } finally {
    c.close();
  }
});

test("a request on a silent connection times out; one whose connection drops before the answer rejects disconnected", async () => {
  const { c } = client(122, { heartbeat: 0 });
  try {
    await waitFor("open", () => c.state === "open");
    assert.equal(await ctl("/freeze?uid=122"), "1");
    await assert.rejects(c.join("room", { timeout: 200 }), { code: "timeout" });
    // Its rejection is awaited from the start: it may come before /cut answers.
    const lost = assert.rejects(c.join("room", { timeout: 10000 }), { code: "disconnected" });
    assert.equal(await ctl("/cut?uid=122"), "1");
    await lost;
    await waitFor("open again", () => c.state === "open");
    await assert.rejects(c.join("room"), { code: "refused" }); // answered on the new connection
  } finally {
    c.close();
  }
});
