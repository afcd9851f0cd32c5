// wsctl-client: the reference client of wsctl (docs/clients.md). One dependency-free ES module
// for browsers and Node 20+. Every queue is bounded; every limit is a named constant below.

/** Requests (sends, joins, leaves, presence) waiting for their answer, queued or in flight. */
export const QUEUE_LIMIT = 1000;
/** Reconnect backoff: full jitter, random(0, min(MAX_DELAY, MIN_DELAY * 2^attempt)) ms. */
export const MIN_DELAY = 100;
export const MAX_DELAY = 10000;
/** Least wait after a 4029 close or a 429 handshake answer (the server's Retry-After). */
export const RATE_LIMITED_WAIT = 5000;
/** A connection open this long resets the backoff. */
export const STABLE_AFTER = 5000;
/** Heartbeat period, and silence after which a connection counts as broken (the node's default). */
export const HEARTBEAT_INTERVAL = 20000;
export const IDLE_TIMEOUT = 75000;
/** Time a handshake may take before the attempt counts as failed. */
export const CONNECT_TIMEOUT = 10000;
/** Default time a request may take, from the call to its answer. */
export const SEND_TIMEOUT = 10000;
/** Client-side pacing, frames/s and burst, under the node's default --rate-limit 50/--rate-burst 100. */
export const RATE = 40;
export const BURST = 80;
/** A JWT from `token()` is replaced this long before its `exp`, ready for the node's 1008. */
export const TOKEN_REFRESH_AHEAD = 30000;
/** Offsets received past a gap, remembered until the gap fills (Cluster reorder). */
export const MAX_AHEAD = 1024;

/** Close codes a node uses (docs/protocol.md). */
export const CLOSE = { NORMAL: 1000, POLICY: 1008, DRAINING: 1012, SLOW: 4008, LAGGED: 4009, RATE_LIMITED: 4029 };
const CLIENT_GONE = 4000; // our own code when we drop a connection (broken, or resuming again)
const ROOM_TYPES = new Set(["room_message", "member_joined", "member_left"]);

/** An error from the server (its `code`) or from the client (`timeout`, `disconnected`, ...). */
export class WsctlError extends Error {
  /** @param {string} code @param {string} [message] @param {object} [extra] */
  constructor(code, message, extra) {
    super(message || code);
    this.name = "WsctlError";
    this.code = code;
    Object.assign(this, extra);
  }
}

const newPosition = () => ({ epoch: null, offset: 0, ahead: new Set(), joined: false });

function randomKey() {
  const b = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(b);
  else for (let i = 0; i < b.length; i++) b[i] = Math.floor(Math.random() * 256);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** A JWT's `exp` in ms since the epoch, or 0 (not a JWT, or no exp). The signature is the node's business. */
function jwtExpiry(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return Number.isFinite(claims.exp) ? claims.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

/** Strip the frame's type and id from an ack: what the caller gets. */
function ackResult(m) {
  const { type, id, ...rest } = m;
  return rest;
}

/**
 * A connection to a wsctl fleet that survives reconnects: see docs/clients.md.
 */
export class Client {
  /** @param {import("../index.js").ClientOptions} options */
  constructor(options = {}) {
    const urls = options.urls ?? (options.url ? [options.url] : []);
    if (!urls.length) throw new TypeError("wsctl-client: give `urls` (at least one ws:// or wss:// URL)");
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (!WS) throw new TypeError("wsctl-client: no WebSocket here; pass one (e.g. the ws package) as `WebSocket`");
    this._o = {
      minDelay: MIN_DELAY, maxDelay: MAX_DELAY, queueLimit: QUEUE_LIMIT, sendTimeout: SEND_TIMEOUT,
      heartbeatInterval: HEARTBEAT_INTERVAL, idleTimeout: IDLE_TIMEOUT, connectTimeout: CONNECT_TIMEOUT,
      rate: RATE, burst: BURST,
      ...options, urls: [...urls], WebSocket: WS,
    };
    this._listeners = new Map();
    this._out = new Map(); // id -> request, in send order
    this._internal = new Map(); // id -> handler, for this connection's heartbeats and rejoins
    this._rooms = new Map(); // room -> position
    this._user = this._o.resume ? newPosition() : null;
    if (this._user && options.epoch) Object.assign(this._user, { epoch: options.epoch, offset: options.since ?? 0 });
    this._seq = 0;
    this._urlIndex = -1;
    this._attempt = 0;
    this._state = "disconnected";
    this._ws = null;
    this._tokens = this._o.burst;
    this._refilled = Date.now();
  }

  /** Current state: "connecting" | "connected" | "disconnected" | "closed". */
  get state() { return this._state; }

  /** Where a resume would start: {epoch, offset} (null without `resume`). Persist it to resume later. */
  get position() { return this._user && { epoch: this._user.epoch, offset: this._user.offset }; }

  /** The URL of the current (or last) connection attempt. */
  get url() { return this._o.urls[Math.max(this._urlIndex, 0)]; }

  /** How the last connection ended: {code, reason, status} (status: HTTP answer, Node's ws only). */
  get lastClose() { return this._lastClose ?? null; }

  /** Subscribe to "message" | "room" | "state" | "recovery" | "error". */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  /** Unsubscribe a listener given to `on`. */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  _emit(event, value) {
    for (const fn of this._listeners.get(event) ?? []) {
      try { fn(value); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  _setState(s) {
    if (this._state === s) return;
    this._state = s;
    this._emit("state", s);
  }

  /**
   * Open the connection (and keep reopening it). Resolves once a connection is open; rejects
   * when the client stops for good (401/403 handshake, or `close()`).
   * @returns {Promise<void>}
   */
  connect() {
    if (!this._ready) {
      this._ready = {};
      this._ready.promise = new Promise((res, rej) => Object.assign(this._ready, { res, rej }));
      if (this._state === "closed") this._ready.rej(new WsctlError("disconnected", "client closed"));
      else this._open();
    }
    return this._ready.promise;
  }

  /** Close for good (code 1000): pending requests reject `disconnected`; no reconnect. */
  close() {
    this._stop(new WsctlError("disconnected", "client closed"));
  }

  /**
   * Send a chat_message to a user. Resolves with the ack: {online, stored?, offset?}.
   * @param {string} to @param {*} payload @param {{timeout?: number, idem?: string}} [opts]
   */
  send(to, payload, opts = {}) {
    return this._request({ type: "chat_message", receiverID: to, payload, idem: opts.idem ?? randomKey() }, opts);
  }

  /**
   * Join a room; resolves on the ack. The room is rejoined (and resumed) after every reconnect.
   * `token`: a room token (or a function returning one) for rooms the connection's JWT grants
   * no access to; asked again at each rejoin.
   * @param {string} room @param {{timeout?: number, token?: string | (() => string | Promise<string>)}} [opts]
   */
  async join(room, opts = {}) {
    if (!this._rooms.has(room)) this._rooms.set(room, newPosition());
    if (opts.token) this._rooms.get(room).token = opts.token;
    const frame = { type: "join", room };
    const token = this._rooms.get(room).token;
    if (token) frame.token = typeof token === "function" ? await token() : token;
    return this._request(frame, opts).then(
      (ack) => { const p = this._rooms.get(room); if (p) p.joined = true; return ack; },
      (err) => {
        // `unavailable`: the node keeps the join and retries its subscription; so do we.
        if (err.code === "unavailable" && this._rooms.has(room)) this._rooms.get(room).joined = true;
        else this._rooms.delete(room);
        throw err;
      },
    );
  }

  /**
   * Leave a room; resolves on the ack (also when the server says the connection was not a member).
   * @param {string} room @param {{timeout?: number}} [opts]
   */
  leave(room, opts = {}) {
    this._rooms.delete(room);
    return this._request({ type: "leave", room }, opts).catch((err) => {
      if (err.code === "not_member") return {};
      throw err;
    });
  }

  /**
   * Send a room_message to a joined room. Resolves with the ack: {members, nodes, offset?}.
   * @param {string} room @param {*} payload @param {{timeout?: number, idem?: string}} [opts]
   */
  roomSend(room, payload, opts = {}) {
    return this._request({ type: "room_message", room, payload, idem: opts.idem ?? randomKey() }, opts);
  }

  /**
   * Ask a node for a room's presence. Rejects with the server's WsctlError (e.g. `unknown_type`)
   * when the node has no presence.
   * @param {string} room @param {{timeout?: number}} [opts]
   */
  presence(room, opts = {}) {
    return this._request({ type: "presence", room }, opts);
  }

  // ---- requests -------------------------------------------------------------------------------

  _request(frame, opts) {
    if (this._state === "closed") return Promise.reject(new WsctlError("disconnected", "client closed"));
    if (this._out.size >= this._o.queueLimit) {
      return Promise.reject(new WsctlError("overloaded", `client queue full (${this._o.queueLimit} requests)`));
    }
    return new Promise((resolve, reject) => {
      const id = ++this._seq;
      const ms = opts.timeout ?? this._o.sendTimeout;
      const timer = setTimeout(() => this._finish(id, new WsctlError("timeout", `no answer in ${ms} ms`)), ms);
      this._out.set(id, { frame, resolve, reject, timer, sent: false });
      this._flush();
    });
  }

  _finish(id, err, ack) {
    const r = this._out.get(id);
    if (!r) return false;
    this._out.delete(id);
    clearTimeout(r.timer);
    if (err) r.reject(err);
    else r.resolve(ack);
    return true;
  }

  /** Write every request not yet sent on this connection, in order, paced by the token bucket. */
  _flush() {
    if (!this._isOpen()) return;
    for (const [id, r] of this._out) {
      if (r.sent) continue;
      if (!this._takeToken()) return this._flushLater();
      r.sent = this._write({ ...r.frame, id });
    }
  }

  _takeToken() {
    const { rate, burst } = this._o;
    if (!rate) return true;
    const now = Date.now();
    this._tokens = Math.min(burst, this._tokens + ((now - this._refilled) * rate) / 1000);
    this._refilled = now;
    if (this._tokens < 1) return false;
    this._tokens -= 1;
    return true;
  }

  _flushLater() {
    if (this._flushTimer) return;
    const wait = Math.ceil(((1 - this._tokens) * 1000) / this._o.rate);
    this._flushTimer = setTimeout(() => { this._flushTimer = null; this._flush(); }, wait);
  }

  _isOpen() {
    return this._ws !== null && this._state === "connected";
  }

  _write(obj) {
    try {
      this._ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false; // a socket going away: resent after the reconnect
    }
  }

  /** A frame of our own on this connection (heartbeat, rejoin), answered to `handler`. */
  _writeInternal(frame, handler) {
    const id = ++this._seq;
    this._internal.set(id, handler);
    this._write({ ...frame, id });
  }

  // ---- connection -----------------------------------------------------------------------------

  _url() {
    this._urlIndex = (this._urlIndex + 1) % this._o.urls.length;
    const url = new URL(this._o.urls[this._urlIndex]);
    if (this._o.userId) url.searchParams.set("userId", this._o.userId);
    if (this._user) {
      url.searchParams.set("since", String(this._user.offset));
      if (this._user.epoch) url.searchParams.set("epoch", this._user.epoch);
    }
    return url.toString();
  }

  async _open() {
    this._timer = null;
    this._setState("connecting");
    const url = this._url();
    let token;
    try {
      token = await this._token();
    } catch (e) {
      this._emit("error", new WsctlError("token", `token() failed: ${e?.message ?? e}`));
      return this._retry(this._backoff());
    }
    if (this._state === "closed") return;
    let ws;
    try {
      ws = new this._o.WebSocket(url, token ? ["wsctl.bearer", token] : undefined);
    } catch (e) {
      this._emit("error", new WsctlError("bad_url", String(e?.message ?? e)));
      return this._retry(this._backoff());
    }
    this._ws = ws;
    this._openedAt = 0;
    this._tokenUsed = token;
    let status = 0;
    ws.binaryType = "arraybuffer";
    // Node's ws package tells the HTTP status of a refused handshake; a browser cannot.
    ws.on?.("unexpected-response", (req, res) => { status = res.statusCode; ws.close(); });
    ws.onopen = () => ws === this._ws && this._opened();
    ws.onmessage = (ev) => ws === this._ws && this._frame(ev.data);
    ws.onclose = (ev) => ws === this._ws && this._closed(ev.code, ev.reason, status);
    ws.onerror = () => {}; // a close event follows
    const ms = this._o.connectTimeout;
    this._connectTimer = setTimeout(() => ws === this._ws && this._drop(`no open in ${ms} ms`, this._backoff()), ms);
  }

  _opened() {
    clearTimeout(this._connectTimer);
    this._openedAt = this._lastRx = Date.now();
    this._setState("connected");
    this._heartbeat = setInterval(() => this._beat(), this._o.heartbeatInterval);
    this._scheduleRefresh();
    this._rejoin();
    this._flush();
    this._ready?.res();
  }

  /** The token for the next handshake: the one fetched ahead of expiry, else a fresh one. */
  async _token() {
    const t = this._o.token;
    const ahead = this._nextToken;
    this._nextToken = null;
    if (typeof t !== "function") return t;
    const token = ahead && (await ahead.catch(() => null));
    const exp = token ? jwtExpiry(token) : 0;
    return token && (!exp || exp > Date.now()) ? token : t();
  }

  /** Before the connection's JWT expires, fetch the next one, so the reconnect after 1008 is quick. */
  _scheduleRefresh() {
    const exp = typeof this._o.token === "function" && this._tokenUsed ? jwtExpiry(this._tokenUsed) : 0;
    const delay = Math.max(0, exp - Date.now() - TOKEN_REFRESH_AHEAD);
    if (!exp || delay > 0x7fffffff) return; // no exp, or beyond what a timer can wait: 1008 will tell
    this._refreshTimer = setTimeout(() => {
      this._nextToken = Promise.resolve().then(this._o.token);
      this._nextToken.catch((e) => this._emit("error", new WsctlError("token", `token() failed: ${e?.message ?? e}`)));
    }, delay);
  }

  _rejoin() {
    const pendingJoins = new Set();
    for (const r of this._out.values()) if (r.frame.type === "join") pendingJoins.add(r.frame.room);
    for (const [room, p] of this._rooms) {
      if (!p.joined || pendingJoins.has(room)) continue;
      const frame = { type: "join", room };
      if (p.epoch) Object.assign(frame, { since: p.offset, epoch: p.epoch });
      const send = (t) => {
        if (t) frame.token = t;
        this._writeInternal(frame, (m) => {
          if (m.type === "error") this._emit("error", new WsctlError(m.code, `rejoin ${room}: ${m.message}`, { room }));
          // No offsets seen in this room: the node keeps no room history, so what the room said
          // while we were away is gone. Say so, as the node does for a user (`history_off`).
          else if (!frame.epoch) this._emit("recovery", { room, complete: false, count: 0, reason: "history_off" });
        });
      };
      // Written now, before the queued sends go out, unless a room token must be fetched first.
      if (typeof p.token !== "function") send(p.token);
      else Promise.resolve().then(p.token).then(send, (e) => this._emit("error", new WsctlError("token", `rejoin ${room}: token() failed: ${e?.message ?? e}`, { room })));
    }
  }

  _beat() {
    if (Date.now() - this._lastRx > this._o.idleTimeout) {
      return this._drop(`no frame for ${this._o.idleTimeout} ms`, this._backoff());
    }
    this._writeInternal({ type: "heartbeat" }, () => {});
  }

  /** Give up on the current connection ourselves (broken link, or to resume again). */
  _drop(reason, delay) {
    const ws = this._ws;
    this._lastClose = { code: CLIENT_GONE, reason, status: 0 };
    this._detach();
    try { ws.terminate ? ws.terminate() : ws.close(CLIENT_GONE, reason); } catch { /* already gone */ }
    this._setState("disconnected");
    this._retry(delay);
  }

  _detach() {
    clearTimeout(this._connectTimer);
    clearTimeout(this._refreshTimer);
    clearInterval(this._heartbeat);
    clearTimeout(this._flushTimer);
    this._flushTimer = null;
    this._internal.clear();
    this._ws = null;
    for (const r of this._out.values()) r.sent = false; // resent, same idem, after the reconnect
  }

  _closed(code, reason, status) {
    this._lastClose = { code, reason, status };
    const wasOpen = this._openedAt > 0;
    if (wasOpen && Date.now() - this._openedAt >= STABLE_AFTER) this._attempt = 0;
    this._detach();
    if (!wasOpen && (status === 401 || status === 403)) {
      const code = status === 401 ? "unauthorized" : "forbidden";
      return this._stop(new WsctlError(code, `handshake refused: HTTP ${status}`, { status }));
    }
    this._setState("disconnected");
    let delay = this._backoff();
    if (code === CLOSE.DRAINING || code === CLOSE.POLICY) delay = 0; // next node now; fresh token
    if (code === CLOSE.RATE_LIMITED || status === 429) delay = Math.max(delay, RATE_LIMITED_WAIT);
    this._retry(delay);
  }

  _backoff() {
    const cap = Math.min(this._o.maxDelay, this._o.minDelay * 2 ** Math.min(this._attempt, 30));
    this._attempt++;
    return Math.random() * cap;
  }

  _retry(delay) {
    if (this._state === "closed") return;
    this._setState("disconnected");
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }

  _stop(err) {
    if (this._state === "closed") return;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._detach();
    try { ws?.close(CLOSE.NORMAL); } catch { /* already gone */ }
    for (const id of [...this._out.keys()]) this._finish(id, err);
    this._setState("closed");
    if (err.code !== "disconnected") this._emit("error", err);
    this._ready?.rej(err);
    this._ready?.promise.catch(() => {}); // nobody awaiting connect() is not an error
  }

  // ---- frames from the server -----------------------------------------------------------------

  _frame(data) {
    let m;
    try {
      m = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      return this._emit("error", new WsctlError("bad_frame", "the server sent a frame that is not JSON"));
    }
    if (!m || typeof m !== "object") return;
    this._lastRx = Date.now();
    if (m.type === "ack" || m.type === "error") return this._answer(m);
    if (m.type === "recovery") return this._recovery(m);
    if (ROOM_TYPES.has(m.type)) {
      if (this._accept(this._rooms.get(m.room), m)) this._emit("room", m);
      return;
    }
    if (this._accept(this._user, m)) this._emit("message", m);
  }

  _answer(m) {
    const err = m.type === "error" ? new WsctlError(m.code, m.message) : null;
    const internal = this._internal.get(m.id);
    if (internal) {
      this._internal.delete(m.id);
      return internal(m);
    }
    if (m.id !== undefined && this._finish(m.id, err, err ? undefined : ackResult(m))) return;
    if (err && m.id === undefined) this._emit("error", err); // e.g. rate_limited
  }

  _recovery(m) {
    const p = m.room !== undefined ? this._rooms.get(m.room) : this._user;
    if (p && typeof m.epoch === "string" && m.epoch && Number.isInteger(m.offset)) {
      p.epoch = m.epoch;
      p.offset = m.offset;
      for (const o of p.ahead) if (o <= m.offset) p.ahead.delete(o);
    }
    const r = { complete: m.complete === true, count: m.count ?? 0 };
    if (m.room !== undefined) r.room = m.room;
    if (m.reason !== undefined) r.reason = m.reason;
    if (m.epoch) Object.assign(r, { epoch: m.epoch, offset: m.offset });
    this._emit("recovery", r);
    if (m.reason === "unavailable") this._drop("resume again", this._backoff());
  }

  /** Offset bookkeeping: false for a message already delivered (its offset is one we have). */
  _accept(p, m) {
    if (!p || !Number.isInteger(m.offset) || typeof m.epoch !== "string") return true;
    if (m.epoch !== p.epoch) {
      Object.assign(p, { epoch: m.epoch, offset: m.offset });
      p.ahead.clear();
      return true;
    }
    if (m.offset <= p.offset || p.ahead.has(m.offset)) return false;
    if (m.offset === p.offset + 1) {
      p.offset++;
      while (p.ahead.delete(p.offset + 1)) p.offset++;
    } else {
      p.ahead.add(m.offset);
      if (p.ahead.size > MAX_AHEAD) {
        p.offset = Math.max(...p.ahead);
        p.ahead.clear();
      }
    }
    return true;
  }
}
