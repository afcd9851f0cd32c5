// A node drained (SIGTERM -> 1012) or killed (SIGKILL) in the middle of a stream: the clients
// move to the other node and resume; the receiver ends with every message once, in order.
// Real wsctl nodes with --history on a real redis-server.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import { startRedis, startNode, client, once, collect, reliably, range, cleanup } from "../testlib/harness.js";

const TOTAL = 200;
const FAULT_AT = 60; // received messages before the fault

/**
 * Stream seq 1..TOTAL from `sender` to `to`, one request at a time, paced by the client's own
 * token bucket; every message keeps its idem key across retries. Returns {unacked()}: requests
 * sent and not yet answered, at any moment; `retried`: the app-level retries ("seq:code").
 */
function stream(sender, to) {
  let inFlight = 0;
  const retried = [];
  const done = (async () => {
    for (const seq of range(TOTAL)) {
      const idem = randomUUID();
      inFlight++;
      try {
        await reliably(() => sender.send(to, { seq }, { idem, timeout: 5000 }), (e) => retried.push(`${seq}:${e.code}`));
      } finally {
        inFlight--;
      }
    }
  })();
  return { done, retried, unacked: () => inFlight };
}

const streamingClient = (opts) => client({ rate: 40, burst: 5, ...opts });

describe("failover", { timeout: 120000 }, () => {
  let redis;
  before(async () => { redis = await startRedis(); });
  after(cleanup);

  const pair = () => Promise.all([
    startNode({ redis, history: true, args: ["--drain-timeout", "5s"] }),
    startNode({ redis, history: true, args: ["--drain-timeout", "5s"] }),
  ]);

  it("drain (SIGTERM, 1012) mid-stream: both clients move to the other node, 0 lost, 0 duplicated, in order", { timeout: 40000 }, async (t) => {
    const [n1, n2] = await pair();
    const alice = streamingClient({ urls: [n1.url, n2.url], userId: "d-alice" });
    const bob = client({ urls: [n1.url, n2.url], userId: "d-bob", resume: true });
    const got = collect(bob);
    const recoveries = [];
    bob.on("recovery", (r) => recoveries.push(r));
    await Promise.all([alice.connect(), bob.connect(), once(bob, "recovery")]);

    const s = stream(alice, "d-bob");
    await got.until(FAULT_AT);
    const bobMoved = once(bob, "state", (st) => st === "disconnected");
    const aliceMoved = once(alice, "state", (st) => st === "disconnected");
    const exit = n1.stop("SIGTERM");
    await Promise.all([bobMoved, aliceMoved]);
    assert.equal(bob.lastClose.code, 1012);
    assert.equal(alice.lastClose.code, 1012);
    await s.done;
    t.diagnostic(`app-level retries: ${s.retried.length ? s.retried.join(", ") : "none"}`);
    await got.until(TOTAL);
    assert.equal((await exit).code, 0, "a drained node exits 0");
    assert.deepEqual(got.seqs, range(TOTAL));
    assert.equal(bob.url, n2.url);
    assert.equal(alice.url, n2.url);
    assert.equal(recoveries.length, 2);
    assert.ok(recoveries.every((r) => r.complete), JSON.stringify(recoveries));
    await n2.stop();
  });

  it("SIGKILL of the receiver's node mid-stream: it resumes elsewhere, 0 lost, 0 duplicated, in order", { timeout: 40000 }, async (t) => {
    const [n1, n2] = await pair();
    const alice = streamingClient({ urls: [n1.url], userId: "k-alice" });
    const bob = client({ urls: [n2.url, n1.url], userId: "k-bob", resume: true });
    const got = collect(bob);
    await Promise.all([alice.connect(), bob.connect(), once(bob, "recovery")]);

    const s = stream(alice, "k-bob");
    await got.until(FAULT_AT);
    const resumed = once(bob, "recovery");
    await n2.stop("SIGKILL");
    const r = await resumed;
    assert.equal(r.complete, true);
    assert.equal(bob.url, n1.url);
    await s.done;
    t.diagnostic(`app-level retries: ${s.retried.length ? s.retried.join(", ") : "none"}`);
    await got.until(TOTAL);
    assert.deepEqual(got.seqs, range(TOTAL));
    await n1.stop();
  });

  it("SIGKILL of the sender's node mid-stream: its unacked sends are resent with their idem keys, 0 lost, in order", { timeout: 40000 }, async (t) => {
    const [n1, n2] = await pair();
    // Record what alice writes, to see the resends and their idem keys.
    const written = new Map(); // idem -> times written
    let acked = 0;
    let onWrite = () => {};
    class RecordingWebSocket extends WebSocket {
      send(data, ...rest) {
        const f = JSON.parse(data);
        if (f.type === "chat_message") written.set(f.idem, (written.get(f.idem) ?? 0) + 1);
        onWrite();
        return super.send(data, ...rest);
      }
    }
    const alice = streamingClient({ urls: [n1.url, n2.url], userId: "ks-alice", WebSocket: RecordingWebSocket });
    const bob = client({ urls: [n2.url], userId: "ks-bob", resume: true });
    const got = collect(bob);
    await Promise.all([alice.connect(), bob.connect(), once(bob, "recovery")]);

    // Pipelined: every send is issued at once; the client paces, orders and resends them.
    const retried = [];
    const sends = range(TOTAL).map((seq) => {
      const idem = randomUUID();
      return reliably(() => alice.send("ks-bob", { seq }, { idem, timeout: 30000 }), (e) => retried.push(`${seq}:${e.code}`))
        .then(() => { acked++; });
    });
    await got.until(FAULT_AT);
    // The node hangs (SIGSTOP) until 10 sends are written and unanswered, then dies (SIGKILL):
    // those 10 were never read, so they must be resent, with the same idem keys, on n2.
    const UNACKED = 10;
    const stalled = new Promise((resolve) => { onWrite = () => written.size - acked >= UNACKED && resolve(); });
    n1.proc.kill("SIGSTOP");
    await stalled;
    const unackedAtKill = written.size - acked;
    const moved = once(alice, "state", (st) => st === "connected");
    await n1.stop("SIGKILL");
    await moved;
    assert.equal(alice.url, n2.url);
    await Promise.all(sends);
    t.diagnostic(`app-level retries: ${retried.length ? retried.join(", ") : "none"}`);
    await got.until(TOTAL);

    const resent = [...written.values()].filter((n) => n > 1).length;
    assert.equal(written.size, TOTAL, "one idem key per message, kept across resends");
    assert.ok(resent >= unackedAtKill, `${resent} resent, ${unackedAtKill} unacked at the kill`);
    const distinct = got.seqs.filter((seq, i) => seq !== got.seqs[i - 1]);
    assert.deepEqual(distinct, range(TOTAL), "every message, in order");
    // Frames the node read, stored and routed in its last instant, before its ack went out, come
    // twice until the server drops repeated idem keys: at most the one in that instant.
    const dups = got.seqs.length - TOTAL;
    t.diagnostic(`${unackedAtKill} unacked at the kill, ${resent} resent, ${dups} duplicated`);
    assert.ok(dups <= 1, `${dups} duplicates`);
    await n2.stop();
  });
});
