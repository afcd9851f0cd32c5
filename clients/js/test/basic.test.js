// Sends and acks, rooms, presence, the bounded queue, timeouts and close(), against two real
// wsctl nodes (with --history) on a real redis-server.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { WsctlError, QUEUE_LIMIT } from "../src/index.js";
import { startRedis, startNode, client, once, cleanup, WAIT } from "../testlib/harness.js";

describe("basics", { timeout: 60000 }, () => {
  let n1, n2;
  before(async () => {
    const redis = await startRedis();
    [n1, n2] = await Promise.all([startNode({ redis, history: true }), startNode({ redis, history: true })]);
  });
  after(cleanup);

  it("send is acked online and stored, and the receiver on the other node gets it", { timeout: WAIT }, async () => {
    const alice = client({ urls: [n1.url], userId: "b-alice" });
    const bob = client({ urls: [n2.url], userId: "b-bob", resume: true });
    const states = [];
    bob.on("state", (s) => states.push(s));
    await Promise.all([alice.connect(), bob.connect()]);
    assert.deepEqual(states, ["connecting", "connected"]);
    const got = once(bob, "message");
    const ack = await alice.send("b-bob", { text: "hi" }, { timeout: 5000 });
    assert.equal(ack.online, true);
    assert.equal(ack.stored, true);
    const m = await got;
    assert.equal(m.type, "chat_message");
    assert.deepEqual(m.payload, { text: "hi" });
    assert.equal(m.senderId, "b-alice");
    assert.equal(typeof m.offset, "number");
    assert.equal(bob.position.offset, m.offset);
    assert.equal(bob.position.epoch, m.epoch);
    const offline = await alice.send("b-nobody", 1);
    assert.equal(offline.online, false);
  });

  it("rooms: join, roomSend, receive on both nodes, leave", { timeout: WAIT }, async () => {
    const alice = client({ urls: [n1.url], userId: "r-alice" });
    const bob = client({ urls: [n2.url], userId: "r-bob" });
    const carol = client({ urls: [n1.url], userId: "r-carol" });
    await Promise.all([alice.connect(), bob.connect(), carol.connect()]);
    await Promise.all([alice.join("lobby"), bob.join("lobby"), carol.join("lobby")]);

    const atBob = once(bob, "room");
    const atCarol = once(carol, "room");
    const ack = await alice.roomSend("lobby", { text: "hello room" });
    assert.equal(typeof ack.members, "number"); // carol on n1 (0 when local members get it through Redis)
    assert.equal(ack.nodes, 1); // n2, subscribed for bob
    for (const m of await Promise.all([atBob, atCarol])) {
      assert.equal(m.type, "room_message");
      assert.equal(m.room, "lobby");
      assert.equal(m.senderId, "r-alice");
      assert.deepEqual(m.payload, { text: "hello room" });
    }

    await bob.leave("lobby");
    const bobGot = [];
    bob.on("room", (m) => bobGot.push(m));
    const later = once(carol, "room", (m) => m.payload === "after bob left");
    await alice.roomSend("lobby", "after bob left");
    await later; // carol has it, so bob would have had it by now too (same publish)
    assert.deepEqual(bobGot, []);
    await assert.rejects(bob.roomSend("lobby", "not a member"), (e) => e instanceof WsctlError && e.code === "not_member");
  });

  it("presence: the node's answer, or its error as a WsctlError", { timeout: WAIT }, async () => {
    const alice = client({ urls: [n1.url], userId: "p-alice" });
    await alice.connect();
    await alice.join("p-room");
    try {
      const p = await alice.presence("p-room");
      assert.equal(typeof p, "object");
    } catch (e) {
      assert.ok(e instanceof WsctlError, `not a WsctlError: ${e}`);
      assert.equal(e.code, "unknown_type");
    }
  });

  it("sends before connect() wait in a bounded queue, then go out in order", { timeout: WAIT }, async () => {
    assert.equal(QUEUE_LIMIT, 1000);
    const bob = client({ urls: [n2.url], userId: "q-bob" });
    await bob.connect();
    const seen = [];
    bob.on("message", (m) => seen.push(m.payload));
    const alice = client({ urls: [n1.url], userId: "q-alice", queueLimit: 3 });
    const sends = [1, 2, 3].map((n) => alice.send("q-bob", n));
    await assert.rejects(alice.send("q-bob", 4), (e) => e instanceof WsctlError && e.code === "overloaded");
    const third = once(bob, "message", (m) => m.payload === 3);
    await alice.connect();
    for (const ack of await Promise.all(sends)) assert.equal(ack.online, true);
    await third;
    assert.deepEqual(seen, [1, 2, 3]);
  });

  it("a request with no answer in time rejects `timeout`; close() rejects the rest `disconnected`", { timeout: WAIT }, async () => {
    const c = client({ urls: [n1.url], userId: "t-alice" });
    await assert.rejects(c.send("x", 1, { timeout: 20 }), (e) => e instanceof WsctlError && e.code === "timeout");
    const pending = c.send("x", 2);
    const states = [];
    c.on("state", (s) => states.push(s));
    c.close();
    await assert.rejects(pending, (e) => e.code === "disconnected");
    await assert.rejects(c.send("x", 3), (e) => e.code === "disconnected");
    await assert.rejects(c.connect(), (e) => e.code === "disconnected");
    assert.deepEqual(states, ["closed"]);
  });

  it("close() of a connected client is final: no reconnect", { timeout: WAIT }, async () => {
    const c = client({ urls: [n1.url], userId: "c-alice" });
    await c.connect();
    const states = [];
    c.on("state", (s) => states.push(s));
    c.close();
    assert.equal(c.state, "closed");
    // the socket's close event arrives after close(); nothing may follow it
    const watcher = client({ urls: [n1.url], userId: "c-watch" });
    await watcher.connect();
    const ack = await watcher.send("c-alice", "anyone?");
    assert.equal(ack.online, false);
    assert.deepEqual(states, ["closed"]);
  });
});
