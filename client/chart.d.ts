// Types of chart.js, the JavaScript client of github.com/wuyan94zl/chart (chart.v1).

export declare const PROTOCOL: "chart.v1";

export declare const CloseCodes: Readonly<{
  GOING_AWAY: 1001;
  TOO_LARGE: 1009;
  DISCONNECTED: 4001;
  EXPIRED: 4002;
  REFUSED: 4003;
  SLOW_CONSUMER: 4008;
  REPLACED: 4009;
  RATE_LIMITED: 4029;
}>;

/** A message as the server sends it. */
export interface Message {
  channel_id: string; // "" for a direct message
  user_id: number; // the sender, set by the server; 0 for system messages
  to_user_id?: number; // a direct message's recipient
  type: number;
  content: string;
  send_time: string; // "2006-01-02 15:04:05", the server's local time
  transient?: boolean; // no position, kept in no history
  offset?: number; // place in its stream: the channel, or for a direct message this user's inbox
  epoch?: string;
}

/** What send takes: a channel message or a direct message. */
export type Outgoing =
  | { channel_id: string; content: string; type?: number; transient?: boolean }
  | { to_user_id: number | string; content: string; type?: number; transient?: boolean };

/** The server's acknowledgement of a send (no position for a transient message). */
export interface SendAck {
  id: string;
  offset?: number;
  epoch?: string;
}

/**
 * An error frame of the server (refusals the client retries itself, such as
 * rate_limited, are not reported), or an error of the client: "closed" (a
 * close code stopped it), "storage" (storage failed: once until a write
 * succeeds again; the client goes on in memory), "connect_failed" (the url
 * or protocols function threw, or the WebSocket could not be created),
 * "protocol" (the server did not accept chart.v1).
 */
export interface ErrorFrame {
  error: string;
  message?: string;
  channel_id?: string;
  to_user_id?: number;
  id?: string;
  code?: number; // "closed": the close code that stopped the client
}

/** After each (re)connect: whether each stream was recovered in full; false: reload it from your store. */
export interface Recovered {
  inbox: boolean;
  channels: Record<string, boolean>;
}

/** The answer to a granted join or leave request. */
export interface JoinAnswer {
  joined?: string; // join: the channel
  left?: string; // leave: the channel
  id: string;
}

/**
 * A change of a member list the client keeps (channels with presence events,
 * Config.PresenceChannels). presence: the frame that made it: "members" (the
 * server's list, replacing the client's: joined and left are the difference,
 * all joined the first time), "join", "leave", or "end" (the user left the
 * channel, or was no longer in it after a reconnect: the list is dropped, all
 * left). members: the whole list after it, uids sorted.
 */
export interface PresenceEvent {
  presence: "members" | "join" | "leave" | "end";
  channel_id: string;
  joined: number[];
  left: number[];
  members: number[];
}

export type State = "connecting" | "open" | "closed";

export interface Storage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface ChartOptions {
  /** A WebSocket class; default globalThis.WebSocket. */
  WebSocket?: typeof WebSocket | any;
  /** The application's subprotocols, offered after "chart.v1"; a function is called before every connect. */
  protocols?: string[] | (() => string[] | Promise<string[]>);
  /** Keeps positions and unsent messages across reloads (localStorage); default in memory. */
  storage?: Storage;
  /** Prefix of the storage keys (one per user sharing a storage); default "chart". */
  storageKey?: string;
  /**
   * Backoff: the first delay's cap and the cap of all, in ms; default 500 and 30000. A reconnect
   * waits a random time in [0, min(maxDelay, minDelay·2ⁿ)] (full jitter), n the failures since the
   * last welcome; after 4008 or 4029 at least half of that. A 4002 on a welcomed connection
   * reconnects at once (fresh credentials); one before the welcome backs off.
   */
  minDelay?: number;
  maxDelay?: number;
  /** ms from creating the socket to the welcome before the attempt counts as failed; default 10000. */
  connectTimeout?: number;
  /** Acknowledgements are batched: sent after ackDelay ms (100) or ackBatch messages (50). */
  ackDelay?: number;
  ackBatch?: number;
  /** ms an unanswered send waits before it is sent again on the same connection; default 10000. */
  resendAfter?: number;
  /**
   * ms between {"ping":n} frames, which the server answers {"pong":n}; default 10000; 0: off.
   * A silently dead connection is closed between heartbeat + heartbeatTimeout and
   * 2·heartbeat + heartbeatTimeout after the last frame received (30 s at most by default).
   */
  heartbeat?: number;
  /** ms of silence beyond the heartbeat interval that close the connection as dead; default 10000. */
  heartbeatTimeout?: number;
  /** Sends awaiting their answer at once, sent in outbox order; default 16. */
  maxInFlight?: number;
  /** ms of the first pause after a rate_limited refusal (random in [½, 1] of it, doubling up to maxDelay, reset by an ack); default 1000. */
  retryDelay?: number;
  /** ms a join or leave request waits for its answer before it rejects with "timeout"; default 10000. */
  requestTimeout?: number;
}

export declare class ChartError extends Error {
  /**
   * The server's error code ("not_joined", "refused", "too_many_channels", the application's own...),
   * or the client's: "closed", "too_large" (send); "timeout", "disconnected", "invalid_channel" (join, leave).
   */
  code: string;
  frame?: ErrorFrame;
}

export declare class Chart {
  /** url, or a function (may be async) called before every connect (fresh credentials after a 4002). */
  constructor(url: string | (() => string | Promise<string>), options?: ChartOptions);
  /** "connecting" from the constructor on (its first "state" event says so too), "open" after each welcome, "closed" once stopped. */
  readonly state: State;
  on(event: "message", fn: (m: Message) => void): () => void;
  on(event: "error", fn: (e: ErrorFrame) => void): () => void;
  on(event: "state", fn: (s: State) => void): () => void;
  on(event: "recovered", fn: (r: Recovered) => void): () => void;
  on(event: "presence", fn: (p: PresenceEvent) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
  /** Resolves with the server's ack; rejects with a ChartError. Never throws. Kept and resent (same id) across reconnects. */
  send(msg: Outgoing): Promise<SendAck>;
  /**
   * Asks the server to join the user (all its connections) to a channel; the application's JoinHandler
   * decides. Resolves with the answer; rejects with a ChartError: the server's code (its error frame also
   * reaches the "error" listeners), "timeout" (requestTimeout, or options.timeout), "disconnected" (the
   * connection dropped before the answer), "closed". Made while disconnected, it goes out once connected.
   * Not retried.
   */
  join(channelId: string, options?: { timeout?: number }): Promise<JoinAnswer>;
  /** Asks the server to take the user out of a channel (LeaveHandler decides); as join. */
  leave(channelId: string, options?: { timeout?: number }): Promise<JoinAnswer>;
  /** The member list (uids, sorted) kept of a channel with presence events, or null (none received, or not a member). */
  members(channelId: string): number[] | null;
  /** Closes and stops reconnecting; pending sends reject with "closed" but stay queued in storage. */
  close(): void;
}
