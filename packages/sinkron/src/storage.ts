// The device's durable storage: `localStorage`, namespaced per user, with a schema version.
// Data of an older schema is migrated step by step (`MIGRATIONS`), never wiped. Of a newer
// schema (the app was rolled back) the session and the outboxes are kept, the rest (a cache
// of the server's records) is pulled again; foreign data is reset.
//
// Layout (all keys start with `sinkron:v1:`):
//   session                      the signed-in session {token, user}
//   ending                       signed-out sessions' tokens the server has not ended yet
//   adopted                      the scopes whose data from before Sinkron was adopted
//   <scope>:c                    the pull cursor
//   <scope>:r:<collection>:<key> a confirmed record {v, u, c, n} (value, updatedAt, clientId, version)
//   <scope>:o:<clientId>         a client id's outbox and numbering {n, m} (next id, mutations),
//                                kept when empty so a reloaded tab never reuses an id; written
//                                and removed by its own tab only (or, once that tab is gone, by
//                                the tab that takes it over): a sign-out keeps the others, as one
//                                read as empty may hold writes stored since; one that holds
//                                writes outlives a sign-out (parked for the account) and a
//                                sign-in (the guest's: taken over into the account)
//   <scope>:partial              set by an eviction, cleared with the records (the engine then
//                                restores without the cursor)
// where <scope> is the user id, or `guest`.
//
// This module only reads and writes what the engine tells it to; it decides nothing.

import type { Change, Mutation, Session, StoredOutbox } from "./types.js";

const ROOT = "sinkron:v1:";
const SCHEMA_KEY = "sinkron:schema";
const SCHEMA = 2;

/** `MIGRATIONS[n]` turns one key's data of schema `n` into schema `n + 1`, in place. */
const MIGRATIONS: Array<((store: Storage, key: string) => void) | undefined> = [
  undefined,
  // 1 → 2: an outbox stored as a bare list of mutations (before its numbering was kept) gets
  // its numbering: the id above its last, the highest (every id up to it may have been
  // acknowledged).
  (store, key) => {
    try {
      const m = JSON.parse(store.getItem(key)!);
      if (key.includes(":o:") && Array.isArray(m)) store.setItem(key, JSON.stringify({ n: (m.at(-1)?.id ?? 0) + 1, m }));
    } catch {
      // Corrupt: dropped with a warning when read.
    }
  },
];

export const scopeName = (scope: string | null): string => scope ?? "guest";

const recordPrefix = (scope: string | null) => `${ROOT}${scopeName(scope)}:r:`;

export class DeviceStorage {
  /**
   * Asked when storing something of a scope fails for lack of room: whether room was freed
   * (the engine decides what goes, see `evict`); the write is then tried again.
   */
  onFull: (scope: string | null) => boolean = () => false;

  // Private members are ES `#` names, which a minifier shortens.
  readonly #store: Storage;

  constructor(store: Storage = localStorage) {
    this.#store = store;
    this.#checkSchema();
  }

  /** Older data is migrated; foreign or corrupt data is reset with a warning, never a crash. */
  #checkSchema() {
    try {
      const stored = this.#store.getItem(SCHEMA_KEY);
      // Data stored before the schema was recorded is of the first one.
      let schema = Number(stored ?? 1);
      for (let step; (step = MIGRATIONS[schema]); schema++) for (const k of this.keys()) step(this.#store, k);
      if (schema !== SCHEMA) {
        // A newer schema: the app was rolled back. Its records and cursors are a cache,
        // pulled again; the session and the outboxes (unsent writes, checked as read) stay.
        const newer = schema > SCHEMA;
        console.warn(`sinkron: stored data has schema ${stored}, ${newer ? "newer than" : "expected"} ${SCHEMA}; resetting ${newer ? "its cached records" : "it"}`);
        this.#removeWhere((k) => !(newer && /^sinkron:v1:(session|ending|adopted)$|:o:[^:]*$/.test(k) && !k.includes(":r:")));
      }
      this.#store.setItem(SCHEMA_KEY, `${SCHEMA}`);
    } catch (e) {
      console.warn("sinkron: localStorage is unavailable; data will not survive a reload", e);
    }
  }

  session(): Session | null {
    const s = this.#readJson<Session>(`${ROOT}session`);
    if (s && typeof s.token === "string" && s.user && typeof s.user.id === "string") return s;
    if (s) this.#store.removeItem(`${ROOT}session`);
    return null;
  }

  setSession(session: Session | null) {
    this.#write(`${ROOT}session`, session && JSON.stringify(session));
  }

  /** Signed-out sessions' tokens the server has not ended yet. */
  ending(): string[] {
    const tokens = this.#readJson<unknown>(`${ROOT}ending`);
    return Array.isArray(tokens) ? tokens.filter((t): t is string => typeof t === "string") : [];
  }

  setEnding(tokens: string[]) {
    this.#write(`${ROOT}ending`, tokens.length > 0 ? JSON.stringify(tokens) : null);
  }

  /** The scopes whose data from before Sinkron was adopted on this device. */
  adopted(): Array<string | null> {
    const scopes = this.#readJson<unknown>(`${ROOT}adopted`);
    return Array.isArray(scopes) ? scopes.filter((s): s is string | null => s === null || typeof s === "string") : [];
  }

  setAdopted(scopes: Array<string | null>) {
    this.#write(`${ROOT}adopted`, JSON.stringify(scopes));
  }

  cursor(scope: string | null): string | null {
    return this.#store.getItem(`${ROOT}${scopeName(scope)}:c`);
  }

  /** Whether records of the scope were evicted since the last whole state was stored. */
  partial(scope: string | null): boolean {
    return this.#store.getItem(`${ROOT}${scopeName(scope)}:partial`) !== null;
  }

  setCursor(scope: string | null, cursor: string | null) {
    this.#write(`${ROOT}${scopeName(scope)}:c`, cursor);
  }

  records(scope: string | null): Change[] {
    const prefix = recordPrefix(scope);
    const out: Change[] = [];
    for (const key of this.keys()) {
      if (!key.startsWith(prefix)) continue;
      const rest = key.slice(prefix.length);
      const split = rest.indexOf(":");
      const r = this.#readJson<{ v: unknown; u: number; c: string; n: number }>(key);
      if (split < 0 || !r || typeof r.u !== "number" || typeof r.c !== "string" || typeof r.n !== "number") {
        this.#drop(key);
        continue;
      }
      out.push({
        collection: rest.slice(0, split),
        key: rest.slice(split + 1),
        value: (r.v ?? null) as Change["value"],
        updatedAt: r.u,
        clientId: r.c,
        version: r.n,
      });
    }
    return out;
  }

  putRecord(scope: string | null, change: Change) {
    const key = `${recordPrefix(scope)}${change.collection}:${change.key}`;
    const text = JSON.stringify({ v: change.value, u: change.updatedAt, c: change.clientId, n: change.version });
    this.#write(key, text, scope);
  }

  /** Drops stored records (the engine keeps them in view) and marks the scope partial. */
  evict(scope: string | null, keys: Array<{ collection: string; key: string }>) {
    for (const k of keys) this.#store.removeItem(`${recordPrefix(scope)}${k.collection}:${k.key}`);
    try {
      this.#store.setItem(`${ROOT}${scopeName(scope)}:partial`, "1");
    } catch {
      // No room even for the mark: drop the cursor instead, which the engine then lacks too.
      this.#store.removeItem(`${ROOT}${scopeName(scope)}:c`);
    }
    console.warn(`sinkron: storage full; evicted ${keys.length} stored records`);
  }

  clearRecords(scope: string | null) {
    const prefix = recordPrefix(scope);
    this.#removeWhere((k) => k.startsWith(prefix));
    this.#store.removeItem(`${ROOT}${scopeName(scope)}:partial`);
  }

  /** A client id's outbox and numbering, or null when nothing is stored for it. */
  outbox(scope: string | null, clientId: string): StoredOutbox | null {
    const key = `${ROOT}${scopeName(scope)}:o:${clientId}`;
    const stored = this.#readJson<{ n?: unknown; m?: unknown }>(key);
    if (stored === null) return null;
    const { m: mutations, n: next } = stored;
    // A write of a shape the engine cannot read is left out by the engine alone, never the
    // outbox's other writes with it.
    if (!Array.isArray(mutations)) return this.#drop(key);
    // A numbering below the ids it holds the engine raises past them. One that is no whole
    // number (another version's, or damaged; -1 here when not a number at all) is none: the
    // engine then takes the writes over as a closed tab's, never the id.
    return { next: typeof next === "number" ? next : -1, mutations };
  }

  /** The outboxes stored in the scope, by client id (one that is no list is dropped with a warning). */
  outboxes(scope: string | null): Array<[string, StoredOutbox]> {
    const prefix = `${ROOT}${scopeName(scope)}:o:`;
    const found: Array<[string, StoredOutbox]> = [];
    for (const k of this.keys()) {
      const id = k.slice(prefix.length);
      const outbox = k.startsWith(prefix) && this.outbox(scope, id);
      if (outbox) found.push([id, outbox]);
    }
    return found;
  }

  setOutbox(scope: string | null, clientId: string, next: number, mutations: Mutation[]) {
    this.#write(`${ROOT}${scopeName(scope)}:o:${clientId}`, JSON.stringify({ n: next, m: mutations }), scope);
  }

  /** Forgets an outbox parked by a sign-out (its client id is no tab's). */
  dropOutbox(scope: string | null, clientId: string) {
    this.#store.removeItem(`${ROOT}${scopeName(scope)}:o:${clientId}`);
  }

  /**
   * Forgets the scope; with `keepPending`, but for its outboxes (each tab drops its own, an
   * outbox this tab reads as empty may hold writes another tab stored since).
   */
  wipe(scope: string | null, keepPending?: boolean) {
    const prefix = `${ROOT}${scopeName(scope)}:`;
    this.#removeWhere((k) => k.startsWith(prefix) && !(keepPending && k.startsWith(`${prefix}o:`)));
  }

  /** Every key this library owns, for tests and debugging. */
  keys(): string[] {
    const keys: string[] = [];
    for (let i = 0; i < this.#store.length; i++) {
      const k = this.#store.key(i);
      if (k !== null && k.startsWith(ROOT)) keys.push(k);
    }
    return keys;
  }

  #readJson<T>(key: string): T | null {
    const text = this.#store.getItem(key);
    if (text === null) return null;
    try {
      return JSON.parse(text) as T;
    } catch {
      return this.#drop(key);
    }
  }

  /** Drops what is stored at `key`, unreadable or not of its shape, with a warning. */
  #drop(key: string): null {
    console.warn(`sinkron: dropping corrupt stored data at ${key}`);
    this.#store.removeItem(key);
    return null;
  }

  /** Writes (`null`: removes); when the quota is full, asks `onFull` to free room and tries again. */
  #write(key: string, text: string | null, scope: string | null = null) {
    if (text === null) return this.#store.removeItem(key);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        this.#store.setItem(key, text);
        return;
      } catch (e) {
        if (!isQuotaError(e) || !this.onFull(scope)) break;
      }
    }
    console.warn(`sinkron: could not store ${key}; it lives in memory only`);
  }

  #removeWhere(test: (key: string) => boolean) {
    for (const k of this.keys()) if (test(k)) this.#store.removeItem(k);
  }
}

const isQuotaError = (e: unknown): boolean => e instanceof DOMException && (e.name === "QuotaExceededError" || e.code === 22);

