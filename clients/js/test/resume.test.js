// Resume after a forced disconnect, a dead link found by heartbeats, rooms rejoined: real
// wsctl nodes with --history on a real redis-server, reached through a TCP proxy that cuts,
// refuses or blackholes connections.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { startRedis, startNode, startProxy, client, once, collect, range, cleanup, WAIT } from "../testlib/harness.js";

describe("resume", { timeout: 60000 }, () => {
  let n1, n2;
  before(async () => {
    const redis = await startRedis();
    [n1, n2] = await Promise.all([startNode({ redis, history: true }), startNode({ redis, history: true })]);
  });
  after(cleanup);

  it("messages sent while the client was cut off arrive after its reconnect, none twice", { timeout: WAIT }, async () => {
    const proxy = await startProxy(n1.port);
    const bob = client({ urls: [proxy.url], userId: "rs-bob", resume: true });
    const alice = client({ urls: [n2.url], userId: "rs-alice" });
    const got = collect(bob);
    const recoveries = [];
    bob.on("recovery", (r) => recoveries.push(r));
    await Promise.all([bob.connect(), alice.connect(), once(bob, "recovery")]);
    for (const seq of range(5)) await alice.send("rs-bob", { seq });
    await got.until(5);

    proxy.refuse(true);
    const away = once(bob, "state", (s) => s === "disconnected");
    proxy.cut();
    await away;
    for (const seq of range(25).slice(5)) {
      const ack = await alice.send("rs-bob", { seq });
      assert.equal(ack.stored, true);
    }
    const back = once(bob, "recovery");
    proxy.refuse(false);
    const r = await back;
    assert.deepEqual([r.complete, r.count], [true, 20]);
    await got.until(25);
    for (const seq of range(30).slice(25)) await alice.send("rs-bob", { seq });
    await got.until(30);
    assert.deepEqual(got.seqs, range(30));
    assert.equal(recoveries.length, 2);
    assert.equal(bob.position.offset, 30);
  });

  it("a blackholed link is found by heartbeats and the client resumes on the next URL", { timeout: WAIT }, async () => {
    const proxy = await startProxy(n1.port);
    const bob = client({
      urls: [proxy.url, n2.url], userId: "hb-bob", resume: true, heartbeatInterval: 100, idleTimeout: 600,
    });
    const alice = client({ urls: [n2.url], userId: "hb-alice" });
    const got = collect(bob);
    await Promise.all([bob.connect(), alice.connect(), once(bob, "recovery")]);
    await alice.send("hb-bob", { seq: 1 });
    await got.until(1);

    proxy.blackhole(true); // bytes stop, sockets stay open: only the missing heartbeat acks tell
    const t0 = Date.now();
    const down = once(bob, "state", (s) => s === "disconnected");
    for (const seq of range(10).slice(1)) await alice.send("hb-bob", { seq });
    await down;
    const took = Date.now() - t0;
    assert.ok(took >= 500 && took < 3000, `dead link found after ${took} ms (idleTimeout 600)`);
    assert.equal(bob.lastClose.code, 4000);
    const r = await once(bob, "recovery");
    assert.equal(r.complete, true);
    assert.equal(bob.url, n2.url);
    await got.until(10);
    assert.deepEqual(got.seqs, range(10));
  });

  it("rooms are rejoined after a reconnect", { timeout: WAIT }, async () => {
    const proxy = await startProxy(n1.port);
    const bob = client({ urls: [proxy.url], userId: "rj-bob" });
    const alice = client({ urls: [n2.url], userId: "rj-alice" });
    await Promise.all([bob.connect(), alice.connect()]);
    await Promise.all([bob.join("rj-room"), alice.join("rj-room")]);
    const first = once(bob, "room");
    await alice.roomSend("rj-room", "one");
    await first;

    const rejoined = once(bob, "recovery", (r) => r.room === "rj-room");
    proxy.cut();
    // The node keeps no room history: the rejoin's ack comes with a recovery event that says so.
    assert.deepEqual(await rejoined, { room: "rj-room", complete: false, count: 0, reason: "history_off" });
    const atAlice = once(alice, "room", (m) => m.payload === "bob is back");
    const ack = await bob.roomSend("rj-room", "bob is back");
    assert.equal(ack.nodes, 1); // n1 is subscribed again, and n2 (alice's)
    await atAlice;
    const second = once(bob, "room", (m) => m.payload === "two");
    await alice.roomSend("rj-room", "two");
    await second;
  });
});
