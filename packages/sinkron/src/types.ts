// Public types of the package and the shapes of the engine's JSON commands.

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

/** A record as the UI sees it. */
export interface Rec<V = Value> {
  key: string;
  value: V;
  updatedAt: number;
  clientId: string;
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
}

export type TabMessage = { scope: string | null } & (
  | { kind: "wrote"; id: number; collection: string; key: string; value: Value | null; updatedAt: number; clientId: string }
  | { kind: "synced"; from: string | null; to: string; reset: boolean; changes: Change[] }
  | { kind: "acked"; clientId: string; ack: number }
  | { kind: "pullWanted" }
  | { kind: "signedIn" }
  | { kind: "signedOut" }
);

export type Command =
  | { t: "record"; scope: string | null; change: Change }
  | { t: "clear"; scope: string | null }
  | { t: "cursor"; scope: string | null; cursor: string | null }
  | { t: "outbox"; scope: string | null; clientId: string; next: number; mutations: Mutation[] }
  | { t: "wipe"; scope: string | null }
  | { t: "broadcast"; message: TabMessage }
  | { t: "send"; id: number; freshToken: boolean; kind: "pull"; lastSync: string | null }
  | { t: "send"; id: number; freshToken: boolean; kind: "push"; keepalive: boolean; body: { clientId: string; mutations: Mutation[]; lastSync?: string } }
  | { t: "leadership"; want: boolean }
  | { t: "notify"; what: "changed"; collections: string[] }
  | { t: "notify"; what: "everything" }
  | { t: "notify"; what: "status" };

/** A client id's stored outbox and numbering: the id its next write takes. */
export interface StoredOutbox {
  next: number;
  mutations: Mutation[];
}

/** What changed, for subscribers: collection names, or `null` for everything. */
export type Changed = { collections: string[] | null; status: boolean };
