// Test harness: real redis-server and real `wsctl serve` processes on free loopback ports,
// a small TCP proxy (to cut, refuse or blackhole connections, and count handshakes),
// and event helpers. Every process started here is killed by `cleanup()` (call it in `after`).
import { spawn, execFile } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import { Client } from "../src/index.js";

export const JS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** The server binary: $WSCTL_BIN (relative to the working directory), else the repo's debug build. */
export const WSCTL_BIN = process.env.WSCTL_BIN
  ? path.resolve(process.env.WSCTL_BIN)
  : path.resolve(JS_DIR, "../../target/debug/wsctl");
export const JWT_SECRET = "wsctl-client-tests-0123456789abcdef0123456789";
/** Upper bound for any one wait on an event in these tests. */
export const WAIT = 20000;

const procs = new Set();
const servers = new Set();
const clients = new Set();

function requireBinary() {
  if (!existsSync(WSCTL_BIN)) {
    throw new Error(`wsctl binary not found at ${WSCTL_BIN}: build it (cargo build) or set WSCTL_BIN`);
  }
}

/** A TCP port free on 127.0.0.1 right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Spawn a process and resolve once a line of its output contains `ready`. */
function spawnUntil(cmd, args, { env, ready, name }) {
  const proc = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  procs.add(proc);
  proc.log = "";
  proc.exited = new Promise((resolve) => proc.on("exit", (code, signal) => {
    procs.delete(proc);
    resolve({ code, signal });
  }));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready in ${WAIT} ms:\n${proc.log}`)), WAIT);
    const onData = (d) => {
      proc.log += d;
      if (proc.log.includes(ready)) {
        clearTimeout(timer);
        resolve(proc);
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.on("error", (e) => { clearTimeout(timer); reject(e); });
    proc.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${proc.log}`));
    });
  });
}

/** A throwaway redis-server on a free loopback port. */
export async function startRedis() {
  const port = await freePort();
  const proc = await spawnUntil("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    ready: "Ready to accept connections", name: "redis-server",
  });
  return { port, uri: `redis://127.0.0.1:${port}`, proc, stop: () => stop(proc) };
}

/**
 * A `wsctl serve` node. opts: {redis, id, history, jwt, args, env}.
 * Returns {port, url, id, proc, stop(signal), metrics()}.
 */
export async function startNode(opts = {}) {
  requireBinary();
  const port = opts.port ?? (await freePort());
  const id = opts.id ?? `node-${randomUUID().slice(0, 8)}`;
  const args = ["serve", "--bind", "127.0.0.1", "--port", String(port), "--server-id", id, ...(opts.args ?? [])];
  if (opts.history) args.push("--history");
  const env = { RUST_LOG: "wsctl=info", ...opts.env };
  if (opts.redis) env.REDIS_URI = opts.redis.uri;
  if (opts.jwt) env.JWT_SECRET = JWT_SECRET;
  const proc = await spawnUntil(WSCTL_BIN, args, { env, ready: "listening on", name: `wsctl serve ${id}` });
  return {
    port, id, proc,
    url: `ws://127.0.0.1:${port}/ws`,
    stop: (signal) => stop(proc, signal),
    metrics: async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text(),
  };
}

/** Send `signal` (SIGKILL by default) and wait for the exit. */
export async function stop(proc, signal = "SIGKILL") {
  if (proc.exitCode !== null || proc.signalCode !== null) return proc.exited;
  proc.kill(signal);
  return proc.exited;
}

/** A JWT for `user` from `wsctl token` (JWT_SECRET above); `extra`: more flags (`--rooms`, `--room`). */
export function mintToken(user, ttl = "1h", extra = []) {
  requireBinary();
  return new Promise((resolve, reject) => {
    execFile(WSCTL_BIN, ["token", "--user", user, "--ttl", ttl, ...extra], { env: { ...process.env, JWT_SECRET } }, (err, out) =>
      err ? reject(err) : resolve(out.trim()));
  });
}

/**
 * A TCP proxy on a free port in front of `targetPort`. It counts accepted connections and can
 * cut every open one (`cut()`), refuse new ones (`refuse(true)`), or stop forwarding bytes
 * while keeping sockets open (`blackhole(true)`).
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  const state = { refusing: false, blackholed: false, connections: 0 };
  const server = net.createServer((down) => {
    state.connections++;
    if (state.refusing) return down.destroy();
    const up = net.connect(targetPort, "127.0.0.1");
    const pair = { down, up };
    pairs.add(pair);
    const end = () => { down.destroy(); up.destroy(); pairs.delete(pair); };
    down.on("data", (d) => state.blackholed || up.write(d));
    up.on("data", (d) => state.blackholed || down.write(d));
    for (const s of [down, up]) { s.on("error", end); s.on("close", end); }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return track({
    port, state,
    url: `ws://127.0.0.1:${port}/ws`,
    cut() { for (const p of pairs) { p.down.destroy(); p.up.destroy(); } pairs.clear(); },
    refuse(on) { state.refusing = on; },
    blackhole(on) { state.blackholed = on; },
    close: () => new Promise((resolve) => { for (const p of pairs) { p.down.destroy(); p.up.destroy(); } server.close(resolve); }),
  });
}

/** Register anything with a `close()` returning a promise, for `cleanup()`. */
export function track(closable) {
  servers.add(closable);
  return closable;
}

/** A Client using the ws package; closed by `cleanup()`. */
export function client(options) {
  const c = new Client({ WebSocket, ...options });
  clients.add(c);
  return c;
}

/** Resolve with the first `event` from `c` whose value passes `pred`; reject after `ms`. */
export function once(c, event, pred = () => true, ms = WAIT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { c.off(event, fn); reject(new Error(`no "${event}" event in ${ms} ms`)); }, ms);
    const fn = (v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      c.off(event, fn);
      resolve(v);
    };
    c.on(event, fn);
  });
}

/**
 * Collect the `payload.seq` of every "message" (or "room") event of `c`.
 * `until(n)` resolves once n distinct sequence numbers are in.
 */
export function collect(c, event = "message", filter = () => true) {
  const seqs = [];
  let waiter = null;
  const distinct = () => new Set(seqs).size;
  c.on(event, (m) => {
    if (!filter(m) || typeof m.payload?.seq !== "number") return;
    seqs.push(m.payload.seq);
    if (waiter && distinct() >= waiter.n) waiter.resolve();
  });
  return {
    seqs,
    distinct,
    until(n, ms = WAIT) {
      if (distinct() >= n) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${distinct()} of ${n} messages in ${ms} ms (last ${seqs.slice(-5)})`)), ms);
        waiter = { n, resolve: () => { clearTimeout(timer); waiter = null; resolve(); } };
      });
    },
  };
}

/** Retry a request on a retryable error code, keeping its idem key (the caller passes it in). */
export async function reliably(fn, onRetry = () => {}, retryable = ["timeout", "unavailable", "overloaded", "disconnected"]) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!retryable.includes(e.code) || attempt >= 20) throw e;
      onRetry(e);
    }
  }
}

/** 1..n */
export const range = (n) => Array.from({ length: n }, (_, i) => i + 1);

/** Close every client, proxy and process started here. */
export async function cleanup() {
  for (const c of clients) c.close();
  clients.clear();
  await Promise.all([...servers].map((s) => s.close()));
  servers.clear();
  await Promise.all([...procs].map((p) => stop(p)));
}

process.on("exit", () => { for (const p of procs) p.kill("SIGKILL"); });
