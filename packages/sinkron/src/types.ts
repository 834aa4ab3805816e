// Public types of the package, and the shapes of what goes into the engine (`Call`, decoded
// by `crates/sinkron-wasm/src/interop.rs`) and comes out of it (`Answer` and `Command`,
// written by `crates/sinkron-wasm/src/convert.rs`). A package test checks them against the
// real engine.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Value = { [key: string]: Json };

export interface User {
  id: string;
  username: string;
}

export interface Session {
  token: string;
  user: User;
}

/** A record of the app's from before Sinkron, to adopt (`adoptLegacy`); `updatedAt` defaults to now. */
export interface LegacyRecord {
  collection: string;
  key: string;
  value: Value | null;
  updatedAt?: number;
}

/** A record as the UI sees it. */
export interface Rec<V = Value> {
  key: string;
  value: V;
  updatedAt: number;
  clientId: string;
}

/**
 * What a server-rendered page starts from: the answer to `GET /api/user/me` (no `lastSync`)
 * that the site's server got with the signed-in user's credentials when it rendered the page.
 */
export interface Snapshot {
  user: User;
  cursor: string;
  changes: Change[];
  more: boolean;
  serverTime: number;
  reset?: boolean;
}

export interface Status {
  signedIn: boolean;
  online: boolean;
  visible: boolean;
  leader: boolean;
  /** This tab's writes not yet acknowledged by the server. */
  pending: number;
  syncing: boolean;
  /** When this tab last received server state (ms since the epoch). */
  lastSyncedAt: number | null;
  /**
   * `unreachable`: this tab's last request failed, or another tab's did since this one last
   * heard the server's state (the device is cut off while the browser may say online).
   */
  error: null | "unreachable" | "unauthorized" | "rejected";
}

export interface Change {
  collection: string;
  key: string;
  value: Value | null;
  updatedAt: number;
  clientId: string;
  version: number;
}

export interface Mutation {
  id: number;
  collection: string;
  key: string;
  value: Value | null;
  updatedAt: number;
  /** The fields the write sets, for a collection the server merges per field; absent: all. */
  fields?: string[];
}

export type TabMessage = { scope: string | null } & (
  | { kind: "wrote"; id: number; collection: string; key: string; value: Value | null; updatedAt: number; clientId: string }
  | { kind: "synced"; from: string | null; to: string; reset: boolean; more?: boolean; changes: Change[]; gone?: { collection: string; key: string }[] }
  | { kind: "acked"; clientId: string; ack: number }
  | { kind: "pullWanted" }
  | { kind: "unreachable" }
  | { kind: "signedIn" }
  | { kind: "signedOut" }
);

/** A call into the engine: an event, an action of the app, a restore, or a question. Every call but `init` carries the time, `now` (ms since the epoch). */
export type Call =
  | { t: "init"; interval?: number; pullOnSignIn?: boolean; pullOnFocus?: boolean; pullOnOnline?: boolean; adoptLegacy?: boolean; pokes?: boolean; hot?: { collection: string; every: number }[]; sticky?: string[]; seedHigh: number; seedLow: number }
  | { t: "clientId"; now: number }
  | { t: "user"; now: number }
  | { t: "status"; now: number }
  | { t: "collection"; now: number; name: string; key?: string }
  | { t: "write"; now: number; collection: string; key: string; value: Value | null; fields?: string[] }
  | { t: "signIn"; now: number; user: string }
  /** `endSession`: the built-in session's token, for the engine to have the server end it; `discard`: drop the writes not yet confirmed. Answers how many writes this tab had queued. */
  | { t: "signOut"; now: number; endSession: string | null; discard: boolean }
  /** A stored outbox that holds writes and whose tab is gone, of the scope an `unpark` command named (one call each; its numbering is not used). */
  | { t: "unpark"; now: number; scope: string | null; clientId: string; next: number; mutations: Mutation[] }
  | { t: "pushNow"; now: number }
  /** `partial`: the stored records were cut since the last whole state (an `evict`). */
  | { t: "restore"; now: number; user: string | null; cursor: string | null; partial: boolean; records: Change[]; ending: string[]; adopted: Array<string | null> }
  /** The app's data of `scope` from before Sinkron, asked for by an `adopt` command. */
  | { t: "adopt"; now: number; scope: string | null; records: LegacyRecord[] }
  /** Storing something of `scope` failed for lack of room; answers whether the engine freed some (then try again). */
  | { t: "storageFull"; now: number; scope: string | null }
  | { t: "adoptionOrder"; now: number; previous: string | null; stored: Array<{ clientId: string; next: number; mutations: Mutation[] }>; ownersKnown: boolean }
  | { t: "restoreOutbox"; now: number; clientId: string; next: number; mutations: Mutation[] }
  | { t: "timeout"; now: number }
  | { t: "visibility"; now: number; visible: boolean }
  | { t: "focus"; now: number }
  | { t: "online"; now: number; online: boolean }
  | { t: "leadership"; now: number; leader: boolean }
  /** The answer to a `send`: `status` 0 for none at all, its `Retry-After` and `Sinkron-Poll-Interval` headers; its body goes beside the call, as text. */
  | { t: "reply"; now: number; id: number; kind: "pull" | "push" | "endSession"; status: number; retryAfter?: string | null; pollInterval?: string | null }
  /** The state the page was rendered from (a `Snapshot`, the body), for user `snapshot`: answers whether it was taken. */
  | { t: "reply"; now: number; snapshot: string; kind: "pull"; status: 200 }
  | { t: "tab"; now: number; message: TabMessage }
  /** A poke's `version`; without one, the poke stream ended unasked, its answer's `status` (0: none). */
  | { t: "poke"; now: number; version?: number; status?: number };

/** The engine's answer to a call: its result, its commands and its next deadline (-1: none); or why it refused the call. */
export type Answer<T> = { r: T; c: Command[]; at: number; e?: undefined } | { e: { code: string; message: string }; r?: undefined };

export type Command =
  | { t: "record"; scope: string | null; change: Change }
  | { t: "clear"; scope: string | null }
  | { t: "cursor"; scope: string | null; cursor: string | null }
  | { t: "outbox"; scope: string | null; clientId: string; next: number; mutations: Mutation[] }
  /** Forget the scope, but with `keepPending` its outboxes (those that hold writes are sent later: parked for the account, or the guest's taken over into the account); without it (a sign-out with `discard`), everything. */
  | { t: "wipe"; scope: string | null; keepPending: boolean }
  /** Forget the outbox `clientId` parked in `scope` at an earlier sign-out (its writes are confirmed, or queued again). */
  | { t: "dropOutbox"; scope: string | null; clientId: string }
  /**
   * Hand the engine (`unpark`) each stored outbox of `scope` that holds writes and whose tab is
   * gone (its tab lock free; without Web Locks, each), with `scope`: after a sign-in here (the
   * account's parked writes, and the guest's scope's: `null`), and as the leader pulls (closed
   * tabs' unsent writes, the guest's scope's too).
   */
  | { t: "unpark"; scope: string | null }
  /** Store the scopes whose data from before Sinkron was adopted (device-wide). */
  | { t: "adopted"; scopes: Array<string | null> }
  /** Ask the app (`adoptLegacy`) for the scope's data from before Sinkron. */
  | { t: "adopt"; scope: string | null }
  /** Store the signed-out sessions the server has not ended yet (device-wide). */
  | { t: "ending"; tokens: string[] }
  /** Drop these stored records (they stay in view) and mark the scope's stored records incomplete until the next `clear`. */
  | { t: "evict"; scope: string | null; keys: Array<{ collection: string; key: string }> }
  | { t: "broadcast"; message: TabMessage }
  | { t: "send"; id: number; freshToken: boolean; kind: "pull"; lastSync: string | null }
  | { t: "send"; id: number; freshToken: boolean; kind: "push"; keepalive: boolean; body: { clientId: string; mutations: Mutation[]; lastSync?: string } }
  /** `POST /api/auth/logout` with a signed-out session's `token` (keepalive). */
  | { t: "send"; id: number; freshToken: boolean; kind: "endSession"; token: string }
  | { t: "leadership"; want: boolean }
  /** Open (`on`) or close the poke stream, `GET /api/user/me/events`. */
  | { t: "pokes"; on: boolean }
  | { t: "notify"; what: "changed"; keys: [collection: string, key: string][] }
  | { t: "notify"; what: "everything" }
  | { t: "notify"; what: "status" };

/** A client id's stored outbox and numbering: the id its next write takes (not a whole number: none, as read from another version's or damaged data). */
export interface StoredOutbox {
  next: number;
  mutations: Mutation[];
}

/** What changed, for subscribers: collection names, or `null` for everything. */
/**
 * What a call changed: the collections whose records changed (`null`: maybe any, e.g. at a
 * sign-in), those records (`[collection, key]`, when `collections` is not null), and whether
 * the status changed.
 */
export type Changed = { collections: string[] | null; keys: [collection: string, key: string][]; status: boolean };
