// The browser driver: runs the Rust engine (WebAssembly) and executes its commands.
//
// Every sync decision — what to persist, broadcast, push or pull, when, and what wins — is
// the engine's. This file only carries out its commands with browser APIs (`localStorage`,
// `BroadcastChannel` or the `storage` event, Web Locks, `fetch`, timers) and feeds browser
// events back in (visibility, focus, online, lock grants, replies, other tabs' messages).
// After each input it drains the engine's commands, then arms one timer for its deadline.

import init, { Sinkron } from "./wasm/sinkron_wasm.js";
import { DeviceStorage, MESSAGE_KEY } from "./storage.js";
import type { Changed, Command, Rec, Session, Status, StoredOutbox, TabMessage, Value } from "./types.js";

/**
 * The site's token provider: its current token for this user, or `null` for a guest. Called
 * before each request (answer from memory when you can); with `refresh: true` after the
 * server answered `token_expired`, when a new token is needed before the request is retried.
 * Throwing counts as the server being unreachable: the request is retried later.
 */
export type TokenProvider = (options: { refresh: boolean }) => Promise<string | null>;

export interface ClientOptions {
  /** Where the Sinkron server is; default: this page's origin. */
  baseUrl?: string;
  /** Pull interval of the leader tab in ms; default 30000. */
  interval?: number;
  /** BroadcastChannel name; default `sinkron`. */
  channelName?: string;
  /** Share changes and leadership with other tabs; default true. */
  crossTab?: boolean;
  /** Pull when the window gets focus or the tab becomes visible; default true. */
  onFocus?: boolean;
  /** Pull the account's state right after sign-in; default true. */
  onLogin?: boolean;
  /**
   * Sign in by the site's own tokens (JWT mode): the user is the token's `sub`. Without it
   * (and without `cookie`), Sinkron's own accounts (`signIn`).
   */
  getToken?: TokenProvider;
  /**
   * Sign in by the site's HttpOnly cookie (JWT mode with `--jwt-cookie`): requests carry
   * credentials and the app says who is signed in with `signedIn(userId)`.
   */
  cookie?: boolean;
  /** Aborting it before `start` resolves stops the client before it sends anything. */
  signal?: AbortSignal;
  /** The wasm module (URL, Response or bytes); default: next to this file. */
  wasm?: string | URL | Request | Response | BufferSource | WebAssembly.Module;
}

const LEADER_LOCK = "sinkron:leader";
const TAB_LOCK = "sinkron:tab:";
const TAB_ID_KEY = "sinkron:v1:tab";
/** The most a deadline waits for an idle period. */
const IDLE_SLACK_MS = 50;

let wasmReady: Promise<unknown> | null = null;

export class SinkronClient {
  private readonly storage = new DeviceStorage();
  private readonly baseUrl: string;
  private readonly listeners = new Set<(changed: Changed) => void>();
  private readonly cleanups: Array<() => void> = [];
  private channel: BroadcastChannel | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private leaderRequest: AbortController | null = null;
  private leaderRelease: (() => void) | null = null;
  private tabLockRelease: (() => void) | null = null;
  private tabId = "";
  private stopped = false;
  /** The site's last token (token mode): what a keepalive flush on page hide sends. */
  private lastToken: string | null = null;

  // An ES private field: the wasm binding's types stay out of the published declarations.
  readonly #engine: Sinkron;

  private constructor(
    engine: Sinkron,
    private readonly options: ClientOptions,
  ) {
    this.#engine = engine;
    this.baseUrl = (options.baseUrl ?? "").replace(/\/$/, "");
  }

  /** Loads the engine and this device's stored state, and starts syncing. */
  static async start(options: ClientOptions = {}): Promise<SinkronClient> {
    wasmReady ??= init(options.wasm ? { module_or_path: options.wasm } : undefined);
    await wasmReady;
    const seed = new Uint32Array(2);
    crypto.getRandomValues(seed);
    const engine = new Sinkron(options.interval ?? 0, options.onLogin !== false, options.onFocus !== false, seed[0], seed[1]);
    const client = new SinkronClient(engine, options);
    await client.restore();
    if (options.signal?.aborted) {
      client.stop();
      return client;
    }
    client.wire();
    if (options.getToken) void client.followSite().catch(() => undefined);
    return client;
  }

  // ----- what the UI reads -----

  collection<V = Value>(name: string): Rec<V>[] {
    return JSON.parse(this.#engine.collection(name)) as Rec<V>[];
  }

  status(): Status {
    return JSON.parse(this.#engine.status()) as Status;
  }

  user(): Session["user"] | null {
    const id = this.#engine.user();
    if (id === undefined) return null;
    const session = this.storage.session();
    return session && session.user.id === id ? session.user : { id, username: "" };
  }

  clientId(): string {
    return this.#engine.clientId();
  }

  subscribe(listener: (changed: Changed) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ----- what the UI does -----

  /** Writes a record at once (locally and to other tabs); pushed in the background. */
  write(collection: string, key: string, value: Value | null) {
    const error = this.#engine.write(Date.now(), collection, key, value === null ? undefined : JSON.stringify(value));
    this.drain();
    if (error) throw new SinkronError(error, `write to ${collection}/${key} refused: ${error}`);
  }

  /** Signs in (or up, with `create`), merging this device's guest data into the account. */
  async signIn(username: string, password: string, create = false): Promise<Session["user"]> {
    const response = await fetch(`${this.baseUrl}/api/auth/${create ? "register" : "login"}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username, password }),
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = body?.error ?? { code: "http_" + response.status, message: response.statusText };
      throw new SinkronError(error.code, error.message);
    }
    const session = body as Session;
    this.storage.setSession(session);
    this.#engine.signIn(Date.now(), session.user.id);
    this.drain();
    return session.user;
  }

  /**
   * The site signed a user in (token or cookie mode): this device's guest data joins the
   * account, and syncing starts. In token mode the user is the current token's `sub` (and
   * `userId`, when given, must match it); in cookie mode `userId` is required. Signing the
   * same user in again resumes syncing after an `unauthorized` error.
   */
  async signedIn(userId?: string): Promise<Session["user"]> {
    let id = userId;
    if (this.options.getToken) {
      const token = await this.options.getToken({ refresh: false });
      if (token === null) throw new SinkronError("signed_out", "sinkron: the token provider returned no token");
      id = subject(token);
      if (userId !== undefined && userId !== id) {
        throw new SinkronError("wrong_user", `sinkron: the token is for ${id}, not ${userId}`);
      }
      this.lastToken = token;
    } else if (!this.options.cookie) {
      throw new SinkronError("builtin_accounts", "sinkron: signedIn() is for the site's sign-in (getToken or cookie); use signIn()");
    }
    if (!id) throw new SinkronError("invalid_user", "sinkron: signedIn() needs the site's user id");
    const user = { id, username: id };
    this.storage.setSession({ token: "", user });
    this.#engine.signIn(Date.now(), id);
    this.drain();
    return user;
  }

  /**
   * Signs out: flushes what is queued, wipes the user's data here and in other tabs. With
   * Sinkron's own accounts it also ends the session on the server; with the site's sign-in,
   * the site ends its own.
   */
  async signOut(): Promise<void> {
    const token = this.storage.session()?.token;
    this.#engine.signOut(Date.now());
    this.drain();
    this.storage.setSession(null);
    this.lastToken = null;
    if (token) {
      await fetch(`${this.baseUrl}/api/auth/logout`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
        keepalive: true,
      }).catch(() => undefined);
    }
  }

  /** Stops syncing in this tab (listeners, timers, locks). */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const cleanup of this.cleanups.splice(0)) cleanup();
    this.leaderRequest?.abort();
    this.leaderRelease?.();
    this.tabLockRelease?.();
    this.channel?.close();
  }

  // ----- start-up -----

  /** Token mode: makes this device follow whoever the site's token says is signed in. */
  private async followSite() {
    const token = await this.options.getToken!({ refresh: false });
    if (this.stopped) return;
    const signed = this.storage.session()?.user.id ?? null;
    if (token === null) {
      if (signed !== null) await this.signOut();
    } else if (subject(token) !== signed) {
      await this.signedIn();
    } else {
      this.lastToken = token;
    }
  }

  private async restore() {
    const e = this.#engine;
    const user = this.storage.session()?.user.id ?? null;
    e.restoreUser(user ?? undefined);
    for (const r of this.storage.records(user)) {
      e.stageChange(r.collection, r.key, r.value === null ? undefined : JSON.stringify(r.value), r.updatedAt, r.clientId, r.version);
    }
    e.restoreRecords();
    e.restoreCursor(this.storage.cursor(user) ?? undefined);
    // Which stored outbox to take over is the core's rule (`adopt.rs`): a reloaded tab keeps
    // its client id (sessionStorage survives a reload) and only ever resumes its own; a new
    // tab tries closed tabs' outboxes, unsent writes first. "Closed" is what this driver can
    // tell: the tab lock named after the client id is free (a duplicated tab's original is
    // alive and holds it, so the copy gets a new id).
    const previous = sessionStorage.getItem(TAB_ID_KEY);
    const candidates: Array<{ id: string; stored: StoredOutbox; rank: number }> = [];
    for (const id of this.storage.outboxIds(user)) {
      const stored = this.storage.outbox(user, id);
      const rank = stored ? Sinkron.adoptionRank(id === previous, stored.mutations.length, previous !== null, !!navigator.locks) : -1;
      if (stored && rank >= 0) candidates.push({ id, stored, rank });
    }
    // Lower rank first; `sort` is stable, so ties keep the order they were found in.
    for (const { id, stored } of candidates.sort((a, b) => a.rank - b.rank)) {
      if (!(await this.claimTabId(id))) continue;
      for (const m of stored.mutations) {
        e.stageMutation(m.id, m.collection, m.key, m.value === null ? undefined : JSON.stringify(m.value), m.updatedAt);
      }
      e.restoreOutbox(id, stored.next);
      return;
    }
    await this.claimTabId(e.clientId());
  }

  /** Holds a lock named after the tab's client id for the tab's life; false if taken. */
  private async claimTabId(id: string): Promise<boolean> {
    this.tabLockRelease?.();
    this.tabLockRelease = null;
    this.tabId = id;
    sessionStorage.setItem(TAB_ID_KEY, id);
    if (!navigator.locks) return true;
    return new Promise<boolean>((claimed) => {
      navigator.locks
        .request(TAB_LOCK + id, { ifAvailable: true }, (lock) => {
          claimed(lock !== null);
          if (!lock) return undefined;
          return new Promise<void>((release) => (this.tabLockRelease = release));
        })
        .catch(() => claimed(true));
    });
  }

  private wire() {
    const on = (target: EventTarget, type: string, handler: () => void) => {
      target.addEventListener(type, handler);
      this.cleanups.push(() => target.removeEventListener(type, handler));
    };
    const e = this.#engine;
    if (this.options.crossTab !== false) {
      if (typeof BroadcastChannel === "function") {
        this.channel = new BroadcastChannel(this.options.channelName ?? "sinkron");
        this.channel.onmessage = (m) => this.receive(m.data as TabMessage);
      } else {
        const onStorage = (ev: Event) => {
          const s = ev as StorageEvent;
          if (s.key === MESSAGE_KEY && s.newValue) this.receive(JSON.parse(s.newValue).message as TabMessage);
        };
        on(window, "storage", onStorage as () => void);
      }
    }
    const visibility = () => {
      e.handleVisibility(Date.now(), document.visibilityState === "visible");
      this.drain();
    };
    on(document, "visibilitychange", visibility);
    on(window, "pagehide", () => {
      e.flush(Date.now());
      this.drain();
    });
    on(window, "focus", () => {
      e.handleFocus(Date.now());
      this.drain();
    });
    on(window, "online", () => {
      e.handleOnline(Date.now(), true);
      this.drain();
    });
    on(window, "offline", () => {
      e.handleOnline(Date.now(), false);
      this.drain();
    });
    e.handleOnline(Date.now(), navigator.onLine);
    visibility();
  }

  // ----- the command loop -----

  private drain() {
    if (this.stopped) return;
    let text: string | undefined;
    const changed: Changed = { collections: [], status: false };
    while ((text = this.#engine.pollCommand()) !== undefined) {
      this.execute(JSON.parse(text) as Command, changed);
    }
    if (changed.collections === null || changed.collections.length > 0 || changed.status) {
      for (const listener of this.listeners) listener(changed);
    }
    this.arm();
  }

  private execute(c: Command, changed: Changed) {
    const s = this.storage;
    switch (c.t) {
      case "record":
        return s.putRecord(c.scope, c.change);
      case "clear":
        return s.clearRecords(c.scope);
      case "cursor":
        return s.setCursor(c.scope, c.cursor);
      case "outbox":
        if (c.clientId !== this.tabId) void this.claimTabId(c.clientId);
        return s.setOutbox(c.scope, c.clientId, c.next, c.mutations);
      case "wipe":
        return s.wipe(c.scope);
      case "broadcast":
        return this.broadcast(c.message);
      case "send":
        return void this.send(c);
      case "leadership":
        return c.want ? this.askLeadership() : this.dropLeadership();
      case "notify":
        if (c.what === "status") changed.status = true;
        else if (c.what === "everything") changed.collections = null;
        else if (c.what === "changed" && changed.collections) changed.collections.push(...c.collections);
        return;
    }
  }

  /**
   * One timer, at the engine's next deadline; run in an idle period if one comes within
   * IDLE_SLACK_MS. Idle periods can be late by far more (a busy or background renderer gave
   * none for ~500 ms, which halved a short poll interval), so the wait for one is bounded.
   */
  private arm() {
    clearTimeout(this.timer);
    const at = this.#engine.pollTimeout();
    if (at < 0 || this.stopped) return;
    const fire = () => {
      this.#engine.handleTimeout(Date.now());
      this.drain();
    };
    this.timer = setTimeout(() => {
      if (typeof requestIdleCallback === "function") requestIdleCallback(fire, { timeout: IDLE_SLACK_MS });
      else fire();
    }, Math.max(0, at - Date.now()));
  }

  private broadcast(message: TabMessage) {
    if (this.options.crossTab === false) return;
    if (this.channel) {
      this.channel.postMessage(message);
    } else {
      // The `storage` event fires in the other tabs only; a nonce makes every write an event.
      localStorage.setItem(MESSAGE_KEY, JSON.stringify({ message, nonce: Math.random() }));
      localStorage.removeItem(MESSAGE_KEY);
    }
  }

  private receive(m: TabMessage) {
    const e = this.#engine;
    const now = Date.now();
    const scope = m.scope ?? undefined;
    const text = (v: Value | null) => (v === null ? undefined : JSON.stringify(v));
    switch (m.kind) {
      case "wrote":
        e.tabWrote(now, scope, m.id, m.collection, m.key, text(m.value), m.updatedAt, m.clientId);
        break;
      case "synced":
        for (const c of m.changes) e.stageChange(c.collection, c.key, text(c.value), c.updatedAt, c.clientId, c.version);
        e.tabSynced(now, scope, m.from ?? undefined, m.to, m.reset);
        break;
      case "acked":
        e.tabAcked(now, scope, m.clientId, m.ack);
        break;
      case "pullWanted":
        e.tabPullWanted(now, scope);
        break;
      case "signedIn":
        e.tabSignedIn(now, scope);
        break;
      case "signedOut":
        e.tabSignedOut(now, scope);
        break;
    }
    this.drain();
  }

  private askLeadership() {
    if (this.options.crossTab === false || !navigator.locks) {
      // Alone, or no Web Locks: this tab leads (the safe side: it still pulls).
      queueMicrotask(() => {
        this.#engine.handleLeadership(Date.now(), true);
        this.drain();
      });
      return;
    }
    if (this.leaderRequest || this.leaderRelease) return;
    const request = new AbortController();
    this.leaderRequest = request;
    navigator.locks
      .request(LEADER_LOCK, { signal: request.signal }, () => {
        // Held until released; the release exists before the engine hears of the grant, so
        // a grant it no longer wants (handed straight back while draining) is let go.
        const held = new Promise<void>((release) => (this.leaderRelease = release));
        this.leaderRequest = null;
        if (this.stopped) this.dropLeadership();
        else {
          this.#engine.handleLeadership(Date.now(), true);
          this.drain();
        }
        return held;
      })
      .catch(() => {
        // Aborted because we stopped wanting it: nothing to do.
      });
  }

  private dropLeadership() {
    this.leaderRequest?.abort();
    this.leaderRequest = null;
    const release = this.leaderRelease;
    this.leaderRelease = null;
    release?.();
  }

  // ----- HTTP -----

  /**
   * The `Authorization` header for a request: the built-in session's token, or the site's
   * token for the signed-in user; `null` when there is none to send (answered as a 401);
   * `undefined` in cookie mode, where the browser sends the site's cookie itself.
   */
  private async authorization(c: Extract<Command, { t: "send" }>): Promise<string | null | undefined> {
    const getToken = this.options.getToken;
    if (this.options.cookie && !getToken) return undefined;
    if (!getToken) {
      const token = this.storage.session()?.token;
      return token ? `Bearer ${token}` : null;
    }
    // A flush on page hide cannot wait for the provider: the page may be gone by then.
    let token = c.kind === "push" && c.keepalive && !c.freshToken ? this.lastToken : null;
    token ??= await getToken({ refresh: c.freshToken });
    // A token for someone else (the site switched users in another page) is never used for
    // this user's data; `followSite` or the app's `signedIn` switches over.
    if (token === null || subjectOrNull(token) !== this.#engine.user()) return null;
    this.lastToken = token;
    return `Bearer ${token}`;
  }

  private async send(c: Extract<Command, { t: "send" }>) {
    const e = this.#engine;
    const done = (reply: () => void) => {
      if (this.stopped) return;
      reply();
      this.drain();
    };
    const headers: Record<string, string> = {};
    let response: Response;
    try {
      const authorization = await this.authorization(c);
      if (authorization === null) return done(() => e.replyFailed(Date.now(), c.id, 401, -1, -1, undefined));
      if (authorization !== undefined) headers.authorization = authorization;
      const credentials: RequestCredentials = this.options.cookie ? "include" : "same-origin";
      if (c.kind === "pull") {
        let url = `${this.baseUrl}/api/user/me`;
        if (c.lastSync !== null) {
          url += `?lastSync=${encodeURIComponent(c.lastSync)}`;
          headers["if-none-match"] = `"${c.lastSync}"`;
        }
        response = await fetch(url, { headers, cache: "no-store", credentials });
      } else {
        headers["content-type"] = "application/json";
        response = await fetch(`${this.baseUrl}/api/user/me/changes`, {
          method: "POST",
          headers,
          body: JSON.stringify(c.body),
          keepalive: c.keepalive,
          credentials,
        });
      }
    } catch {
      return done(() => e.replyFailed(Date.now(), c.id, 0, -1, -1, undefined));
    }
    if (response.status === 304) return done(() => e.replyNotModified(Date.now(), c.id));
    if (!response.ok) {
      const retryAfter = Number(response.headers.get("retry-after"));
      const retryMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : -1;
      // The error body's `code` and `ack` (a 409 mutation_id_reused) go to the engine with
      // the status: it tells `token_expired` from other 401s.
      const error = (await response.json().catch(() => null))?.error;
      const ack = typeof error?.ack === "number" ? error.ack : -1;
      const code = typeof error?.code === "string" ? error.code : undefined;
      return done(() => e.replyFailed(Date.now(), c.id, response.status, retryMs, ack, code));
    }
    let body: {
      ack?: number;
      cursor: string;
      changes: Array<{ collection: string; key: string; value: Value | null; updatedAt: number; clientId: string; version: number }>;
      more: boolean;
      reset?: boolean;
      serverTime: number;
    };
    try {
      body = await response.json();
    } catch {
      return done(() => e.replyFailed(Date.now(), c.id, 0, -1, -1, undefined));
    }
    done(() => {
      for (const ch of body.changes) {
        e.stageChange(ch.collection, ch.key, ch.value === null ? undefined : JSON.stringify(ch.value), ch.updatedAt, ch.clientId, ch.version);
      }
      const now = Date.now();
      if (c.kind === "pull") e.replyPulled(now, c.id, body.cursor, body.more, body.reset === true, body.serverTime);
      else e.replyPushed(now, c.id, body.ack ?? 0, body.cursor, body.more, body.reset === true, body.serverTime);
    });
  }
}

/** The `sub` claim of a JSON Web Token: the site's user id. Not verified here (the server does). */
export function subject(token: string): string {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(payload), (ch) => ch.charCodeAt(0)));
    const sub = JSON.parse(json).sub;
    if (typeof sub === "string" && sub !== "") return sub;
  } catch {
    // Reported below.
  }
  throw new SinkronError("invalid_token", "sinkron: the token provider returned something that is not a JWT with a `sub`");
}

function subjectOrNull(token: string): string | null {
  try {
    return subject(token);
  } catch {
    return null;
  }
}

/** An error with Sinkron's (or the server's) machine-readable code. */
export class SinkronError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SinkronError";
  }
}
