// Tokens: a fresh token() on the node's 1008 at expiry, and no reconnect storm on a 401.
// A real wsctl node with JWT_SECRET set, on a real redis-server, tokens from `wsctl token`.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { WsctlError } from "../src/index.js";
import { startRedis, startNode, startProxy, client, once, collect, mintToken, cleanup } from "../testlib/harness.js";

/** Refused handshakes counted by the node, by reason label. */
async function refused(node, reason) {
  const line = (await node.metrics()).split("\n").find((l) => l.startsWith(`wss_connections_refused_total{reason="${reason}"}`));
  return line ? Number(line.split(" ").pop()) : 0;
}

describe("auth", { timeout: 60000 }, () => {
  let node;
  before(async () => {
    const redis = await startRedis();
    node = await startNode({ redis, history: true, jwt: true });
  });
  after(cleanup);

  it("token() is called again before expiry; on the 1008 the client reconnects with that token, nothing lost", { timeout: 30000 }, async () => {
    let calls = 0;
    const refreshed = {};
    refreshed.promise = new Promise((r) => { refreshed.resolve = r; });
    // The first token lives 1 s (closed at exp + 5 s leeway); the next ones an hour.
    const token = () => {
      if (++calls === 2) refreshed.resolve();
      return mintToken("tk-alice", calls === 1 ? "1s" : "1h");
    };
    const alice = client({ urls: [node.url], token, resume: true });
    const bob = client({ urls: [node.url], token: () => mintToken("tk-bob") });
    const got = collect(alice);
    await Promise.all([alice.connect(), bob.connect(), once(alice, "recovery")]);
    await bob.send("tk-alice", { seq: 1 });
    await got.until(1);

    // Less than TOKEN_REFRESH_AHEAD is left on the first token: the next one is fetched at once.
    await refreshed.promise;
    assert.equal(alice.state, "connected");
    await once(alice, "state", (s) => s === "disconnected", 15000);
    assert.equal(alice.lastClose.code, 1008);
    const sentAway = bob.send("tk-alice", { seq: 2 }); // live or replayed: either way once
    await once(alice, "state", (s) => s === "connected");
    assert.equal(calls, 2, "the reconnect used the token fetched before expiry");
    await sentAway;
    await bob.send("tk-alice", { seq: 3 });
    await got.until(3);
    assert.deepEqual(got.seqs, [1, 2, 3]);
  });

  it("a 401 handshake stops the client with an error event: one attempt, no retry storm", { timeout: 15000 }, async () => {
    const proxy = await startProxy(node.port);
    const before = await refused(node, "invalid_token");
    let tokenCalls = 0;
    const c = client({ urls: [proxy.url, proxy.url], token: () => { tokenCalls++; return "not-a-jwt"; } });
    const errors = [];
    c.on("error", (e) => errors.push(e));
    await assert.rejects(c.connect(), (e) => e instanceof WsctlError && e.code === "unauthorized" && e.status === 401);
    assert.equal(c.state, "closed");
    assert.deepEqual(errors.map((e) => e.code), ["unauthorized"]);
    await assert.rejects(c.send("x", 1), (e) => e.code === "disconnected");
    // Nothing is scheduled after a stop; give a storm time to show (10 backoff steps at 100 ms).
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(proxy.state.connections, 1);
    assert.equal(tokenCalls, 1);
    assert.equal((await refused(node, "invalid_token")) - before, 1);
  });

  it("where the HTTP status is hidden (as in a browser), refused handshakes back off: a handful, not dozens", { timeout: 15000 }, async (t) => {
    // The ws package behind the browser's surface only (no `on`, so no `unexpected-response`):
    // a refused handshake is then a bare 1006, as a browser reports it.
    class BrowserLikeWebSocket {
      constructor(url, protocols) {
        const ws = new WebSocket(url, protocols);
        ws.onopen = (ev) => this.onopen?.(ev);
        ws.onmessage = (ev) => this.onmessage?.(ev);
        ws.onerror = (ev) => this.onerror?.(ev);
        ws.onclose = (ev) => this.onclose?.(ev);
        this.send = (d) => ws.send(d);
        this.close = (code, reason) => ws.close(code, reason);
      }
    }
    const proxy = await startProxy(node.port);
    const c = client({ urls: [proxy.url], token: "not-a-jwt", WebSocket: BrowserLikeWebSocket });
    c.connect();
    await new Promise((r) => setTimeout(r, 3000));
    const attempts = proxy.state.connections;
    c.close();
    t.diagnostic(`${attempts} handshakes in 3 s`);
    assert.ok(attempts >= 2 && attempts <= 15, `${attempts} handshakes in 3 s`);
  });

  it("rooms: a claim admits, a join without a grant rejects forbidden, a room token from join({token}) admits and rejoins", { timeout: 30000 }, async () => {
    const carol = client({ urls: [node.url], token: () => mintToken("rm-carol", "1h", ["--rooms", "team:*", "--rooms", "stage"]) });
    const dave = client({ urls: [node.url], token: () => mintToken("rm-dave") });
    await Promise.all([carol.connect(), dave.connect()]);
    await carol.join("team:1");
    await carol.join("stage");
    await assert.rejects(dave.join("stage"), (e) => e instanceof WsctlError && e.code === "forbidden");
    let tokens = 0;
    await dave.join("stage", { token: () => { tokens++; return mintToken("rm-dave", "1h", ["--room", "stage"]); } });
    const heard = collect(dave, "room");
    await carol.roomSend("stage", { seq: 1 });
    await heard.until(1);
    assert.equal(tokens, 1);
  });
});
