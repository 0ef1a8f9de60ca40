// Helpers of the tests that run against a real hub (started by the Go test
// TestClientJS, clientscript_test.go, which sets the environment).
import { Chart } from "../chart.js";

export const URL = process.env.CHART_URL;
export const CONTROL = process.env.CHART_CONTROL;
export const DEAD = process.env.CHART_DEAD_URL;
export const SILENT = process.env.CHART_SILENT_URL;
if (!URL || !CONTROL || !DEAD || !SILENT) {
  throw new Error("run by go test -run TestClientJS (needs CHART_URL, CHART_CONTROL, CHART_DEAD_URL, CHART_SILENT_URL)");
}

export const fast = { minDelay: 20, maxDelay: 200, ackDelay: 20 };

// ctl calls the test's control server (publish, cut, freeze, close, ...).
export async function ctl(path) {
  const res = await fetch(CONTROL + path);
  const body = await res.text();
  if (!res.ok) throw new Error(`${path}: ${res.status} ${body}`);
  return body;
}

// waitFor polls cond until it holds, for at most ms.
export async function waitFor(what, cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const range = (prefix, n, from = 0) => Array.from({ length: n }, (_, i) => prefix + (from + i));

// client opens a Chart for uid and records what it sees, with the time of
// each state. Its WebSocket records every socket: when it was created,
// opened, last received a frame, closed, and with which code.
export function client(uid, opts = {}) {
  const sockets = [];
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      const s = { url, created: Date.now(), opened: 0, lastFrame: 0, closed: 0, code: 0 };
      sockets.push(s);
      // Registered before the client's own handlers: these run first.
      this.addEventListener("open", () => (s.opened = Date.now()));
      this.addEventListener("message", () => (s.lastFrame = Date.now()));
      this.addEventListener("close", (ev) => ((s.closed = Date.now()), (s.code = ev.code)));
    }
  }
  const c = new Chart(opts.url || URL + uid, { ...fast, WebSocket: RecordingWebSocket, ...opts });
  const seen = { messages: [], errors: [], states: [], stateTimes: [], recovered: [] };
  c.on("message", (m) => seen.messages.push(m));
  c.on("error", (e) => seen.errors.push(e));
  c.on("state", (s) => (seen.states.push(s), seen.stateTimes.push(Date.now())));
  c.on("recovered", (r) => seen.recovered.push(r));
  return { c, seen, sockets, contents: (ch) => seen.messages.filter((m) => m.channel_id === ch).map((m) => m.content) };
}

// withRandom runs fn with Math.random returning r: the client's backoff
// jitter pinned, so that a delay can be asserted exactly.
export async function withRandom(r, fn) {
  const random = Math.random;
  Math.random = () => r;
  try {
    return await fn();
  } finally {
    Math.random = random;
  }
}
