// Types of wsctl-client (src/index.js). Docs: docs/clients.md in the wsctl repository.

/** Requests (sends, joins, leaves, presence) waiting for an answer, queued or in flight. */
export const QUEUE_LIMIT: 1000;
export const MIN_DELAY: 100;
export const MAX_DELAY: 10000;
/** Least wait after a 4029 close or a 429 handshake answer. */
export const RATE_LIMITED_WAIT: 5000;
/** A connection open this long resets the backoff. */
export const STABLE_AFTER: 5000;
export const HEARTBEAT_INTERVAL: 20000;
export const IDLE_TIMEOUT: 75000;
export const CONNECT_TIMEOUT: 10000;
export const SEND_TIMEOUT: 10000;
/** Client-side pacing (frames/s, burst), under the node's default --rate-limit 50 / --rate-burst 100. */
export const RATE: 40;
export const BURST: 80;
/** A JWT from `token()` is fetched again this long before its `exp`. */
export const TOKEN_REFRESH_AHEAD: 30000;
/** Offsets past a gap remembered until it fills. */
export const MAX_AHEAD: 1024;
export const CLOSE: {
  readonly NORMAL: 1000;
  readonly POLICY: 1008;
  readonly DRAINING: 1012;
  readonly SLOW: 4008;
  readonly LAGGED: 4009;
  readonly RATE_LIMITED: 4029;
};

/** Server codes (bad_json, unknown_type, unavailable, overloaded, rate_limited, not_member, ...) or client codes. */
export type ErrorCode =
  | "timeout" | "disconnected" | "overloaded" | "unauthorized" | "forbidden" | "token" | "bad_url" | "bad_frame"
  | "unavailable" | "rate_limited" | "unknown_type" | "not_member" | "bad_room" | "too_many_rooms" | "room_full"
  | (string & {});

/** A rejected request, a refused handshake or an error frame from the node. */
export class WsctlError extends Error {
  constructor(code: ErrorCode, message?: string, extra?: object);
  readonly code: ErrorCode;
  /** HTTP status of a refused handshake (401, 403), where the WebSocket implementation tells it. */
  readonly status?: number;
  /** The room of a failed rejoin. */
  readonly room?: string;
}

/** The minimum of the WebSocket API the client uses: browsers' WebSocket, the ws package, undici. */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** Node URLs (ws:// or wss://, path /ws), rotated on every reconnect. */
  urls?: string[];
  /** One URL, when there is only one. */
  url?: string;
  /** The user, for nodes without auth (sent as ?userId=). */
  userId?: string;
  /** A JWT, or a function giving one; called before every connection attempt and TOKEN_REFRESH_AHEAD before a JWT's exp. */
  token?: string | (() => string | Promise<string>);
  /** Track offset/epoch and resume after every reconnect (nodes with --history). Default false. */
  resume?: boolean;
  /** Resume from a saved position (`client.position`) on the first connection. */
  since?: number;
  epoch?: string;
  /** A WebSocket implementation (e.g. the ws package on Node 20). Default: globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Backoff bounds, ms (full jitter). Defaults 100 and 10,000. */
  minDelay?: number;
  maxDelay?: number;
  /** Requests waiting for an answer before new ones reject `overloaded`. Default 1,000. */
  queueLimit?: number;
  /** Default request timeout, ms. Default 10,000. */
  sendTimeout?: number;
  /** Heartbeat period, ms. Default 20,000. */
  heartbeatInterval?: number;
  /** No frame for this long (ms) means a broken connection. Default 75,000. */
  idleTimeout?: number;
  /** A handshake not open after this long (ms) is abandoned. Default 10,000. */
  connectTimeout?: number;
  /** Client-side pacing of requests, frames/s (0: off) and burst. Defaults 40 and 80. */
  rate?: number;
  burst?: number;
}

export interface RequestOptions {
  /** ms from the call to the answer; default `sendTimeout`. */
  timeout?: number;
}
export interface JoinOptions extends RequestOptions {
  /** A room token (from your backend) for a room the connection's JWT grants no access to;
   *  a function is called again at each rejoin. */
  token?: string | (() => string | Promise<string>);
}
export interface SendOptions extends RequestOptions {
  /** Idempotency key; give the same one to retry a send. Default: a random key. */
  idem?: string;
}

export interface SendAck { online: boolean; stored?: boolean; offset?: number; [k: string]: unknown }
export interface RoomAck { members: number; nodes: number; offset?: number; [k: string]: unknown }

/** A message to this user: chat_message, or any type a backend published. */
export interface Message {
  type: string;
  payload?: unknown;
  receiverID?: string;
  senderId?: string;
  timestamp?: string;
  offset?: number;
  epoch?: string;
  [k: string]: unknown;
}
/** room_message, member_joined, member_left. */
export interface RoomEvent extends Message {
  type: "room_message" | "member_joined" | "member_left";
  room: string;
}
export interface Recovery {
  room?: string;
  complete: boolean;
  count: number;
  /** trimmed | epoch_changed | too_far_behind | offset_ahead | unavailable | history_off */
  reason?: string;
  epoch?: string;
  offset?: number;
}
export type State = "connecting" | "connected" | "disconnected" | "closed";

export interface ClientEvents {
  message: Message;
  room: RoomEvent;
  state: State;
  recovery: Recovery;
  error: WsctlError;
}

export class Client {
  constructor(options: ClientOptions);
  readonly state: State;
  /** Where a resume starts: save it to resume in a later session. Null without `resume`. */
  readonly position: { epoch: string | null; offset: number } | null;
  /** The URL of the current (or last) connection attempt. */
  readonly url: string;
  /** How the last connection ended (status: HTTP answer of a refused handshake, Node's ws only). */
  readonly lastClose: { code: number; reason: string; status: number } | null;
  on<E extends keyof ClientEvents>(event: E, fn: (value: ClientEvents[E]) => void): this;
  off<E extends keyof ClientEvents>(event: E, fn: (value: ClientEvents[E]) => void): this;
  /** Resolves once a connection is open; rejects when the client stops (401/403, close()). */
  connect(): Promise<void>;
  /** Close for good: pending requests reject `disconnected`. */
  close(): void;
  send(to: string, payload: unknown, options?: SendOptions): Promise<SendAck>;
  join(room: string, options?: JoinOptions): Promise<Record<string, unknown>>;
  leave(room: string, options?: RequestOptions): Promise<Record<string, unknown>>;
  roomSend(room: string, payload: unknown, options?: SendOptions): Promise<RoomAck>;
  /** Rejects with the node's WsctlError (`unknown_type`) where it has no presence. */
  presence(room: string, options?: RequestOptions): Promise<Record<string, unknown>>;
}
