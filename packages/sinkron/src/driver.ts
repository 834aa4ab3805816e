// The browser driver: runs the Rust engine (WebAssembly) and executes its commands.
//
// Every sync decision — what to persist, broadcast, push or pull, when, and what wins — is
// the engine's. This file only carries out its commands with browser APIs (`localStorage`,
// `BroadcastChannel`, Web Locks, `fetch`, timers) and feeds browser
// events back in (visibility, focus, online, lock grants, replies, other tabs' messages).
// Every input is one `call` into the engine (a JSON object, the `Call` type); its answer
// carries the result, the engine's commands and its next deadline, which arms one timer.

import { decoder, Engine, type WasmSource } from "./engine.js";
import { DeviceStorage } from "./storage.js";
import type { Answer, Call, Changed, Command, LegacyRecord, Rec, Session, Snapshot, Status, TabMessage, Value } from "./types.js";

/**
 * The site's token provider: its current token for this user, or `null` for a guest. Called
 * at start, at `signedIn()` and when a request needs a token: the last token it gave for the
 * signed-in user is sent again without asking while its `exp` is more than 30 s away. Called
 * with `refresh: true` when a new token is needed: the last one it gave has 30 s or less
 * left, or the server answered `token_expired` and the request is to be retried. Throwing, or
 * not answering within 30 s, counts as the server being unreachable: the request is retried
 * later.
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
  /** Pull when the browser comes back online; default true. */
  onOnline?: boolean;
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
  /**
   * The app's data from before Sinkron (its old `localStorage` keys, say), for a user scope
   * (the user id, or `null` for the guest): asked once per device and scope. The records
   * returned (`null`: none) are written as this device's writes with their own `updatedAt`,
   * so they sync and the newest write wins against what the server already holds. A throw,
   * or records Sinkron refuses, is reported and nothing is adopted: it is asked again at the
   * next start. Leave the old keys in place; they are never read again.
   */
  adoptLegacy?: (scope: string | null) => LegacyRecord[] | null;
  /**
   * Hot collections: collection → how often at most (ms) a push carries their writes while
   * they keep coming; default `{ history: 30000 }` (the playback position). Every write still
   * shows at once here and in other tabs; `pushNow()` sends them at once. Offline (or with
   * requests failing while the browser says online), they are stamped as of the last sync, so playback from a stale copy loses to progress another
   * device made since (docs/PROTOCOL.md, "Clock").
   */
  hot?: Record<string, number>;
  /**
   * Sticky field names: those the server keeps `true` once any write set them (its
   * `--merge-fields history:completed`: `["completed"]`). A write queued here whose value holds
   * one `true` is never replaced or undone before it is sent by a later write whose value does
   * not (an un-mark, a delete): the server keeps the `true` as it would had it been sent on its
   * own. Default none.
   */
  sticky?: string[];
  /**
   * The server's poke stream (a server run with `--poke sse`): the visible leader tab holds
   * one stream and pulls as soon as another device writes. Polling goes on as without it;
   * default false.
   */
  pokes?: boolean;
  /**
   * The state a server-rendered page was rendered from (see `Snapshot`): if it is the
   * signed-in user's, it is this page's first pull (none is made), what this device stores
   * and is newer kept. With the site's sign-in (`getToken`, `cookie`) its user is signed in
   * here first, as by `signedIn`.
   */
  snapshot?: Snapshot;
  /**
   * How long a request may take, its answer's body included, before it counts as no answer
   * (ms; default 45000, above the server's own 30 s): a connection gone dead on the way
   * answers nothing and fails only when the operating system gives up, many minutes later,
   * and nothing else is sent meanwhile. The largest answer (a page of about 256 KiB, the
   * server's `--page-bytes`) and the largest push (about 60 KiB of writes) fit within it on a
   * link of 10 KB/s; raise it where requests may go slower. It
   * counts from when the request is sent: the time `getToken` takes is not in it (that has
   * 30 s of its own, see `TokenProvider`). The
   * server's event stream (`pokes`) is not timed, but given up after a minute of silence.
   */
  requestTimeout?: number;
  /** Aborting it before `start` resolves stops the client before it sends anything. */
  signal?: AbortSignal;
  /** The wasm module (URL, Response or bytes); default: next to this file. */
  wasm?: WasmSource;
}

const LEADER_LOCK = "sinkron:leader";
const TAB_LOCK = "sinkron:tab:";
const TAB_ID_KEY = "sinkron:v1:tab";
/** A call as the driver makes it: `#call` adds the time (`now`), to every call alike. */
type Input = Call extends infer C ? (C extends unknown ? Omit<C, "now"> : never) : never;
/** The most a deadline waits for an idle period. */
const IDLE_SLACK_MS = 50;

export class SinkronClient {
  // Private members are ES `#` names: a minifier shortens them, while TypeScript's `private`
  // names ship whole (0.15 kB gzip of the bundle). They also stay out of the declarations.
  readonly #storage = new DeviceStorage();
  readonly #baseUrl: string;
  /** Tabs share one leader over a `BroadcastChannel`. */
  readonly #shared: boolean;
  readonly #listeners = new Set<(changed: Changed) => void>();
  readonly #cleanups: Array<() => void> = [];
  #channel: BroadcastChannel | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** The deadline the timer is armed for (-1: none). */
  #armedAt = -1;
  #leaderRequest: AbortController | null = null;
  /** The open poke stream's. */
  #pokes: AbortController | null = null;
  #leaderRelease: (() => void) | null = null;
  #tabLockRelease: (() => void) | null = null;
  #tabId = "";
  #stopped = false;
  /** The last token sent for the engine's user: what a keepalive flush sends. */
  #lastToken: string | null = null;
  /**
   * Set while a switch of users in cookie mode signs the previous user out: the site's
   * cookie is already the next user's, so nothing goes with it then (their writes stay kept
   * for them, sent at their next sign-in here).
   */
  #withoutCredentials = false;

  readonly #engine: Engine;
  readonly #options: ClientOptions;

  private constructor(engine: Engine, options: ClientOptions) {
    this.#engine = engine;
    this.#options = options;
    this.#baseUrl = (options.baseUrl ?? "").replace(/\/$/, "");
    // Without `BroadcastChannel` (Safari before 15.4) each tab leads and syncs on its own, as
    // with `crossTab: false` (see `#askLeadership`).
    this.#shared = options.crossTab !== false && typeof BroadcastChannel === "function";
  }

  /** Loads the engine and this device's stored state, and starts syncing. */
  static async start(options: ClientOptions = {}): Promise<SinkronClient> {
    // Importing is safe anywhere; syncing needs a browser's storage.
    if (typeof localStorage === "undefined") {
      throw new SinkronError("no_browser", "sinkron: start() needs a browser (localStorage); on a server, render without it");
    }
    const engine = await Engine.create(options.wasm);
    const seed = new Uint32Array(2);
    crypto.getRandomValues(seed);
    const client = new SinkronClient(engine, options);
    // The switches left out take the engine's defaults.
    client.#call({
      t: "init",
      interval: options.interval,
      pullOnSignIn: options.onLogin,
      pullOnFocus: options.onFocus,
      pullOnOnline: options.onOnline,
      adoptLegacy: options.adoptLegacy !== undefined,
      pokes: options.pokes,
      hot: options.hot && Object.entries(options.hot).map(([collection, every]) => ({ collection, every })),
      sticky: options.sticky,
      seedHigh: seed[0],
      seedLow: seed[1],
    });
    await client.#restore();
    const snapshot = options.snapshot;
    if (snapshot) {
      const id = snapshot.user.id;
      // The site's sign-in signs its user in here first (Sinkron's own accounts refuse).
      if (client.user()?.id !== id) await client.signedIn(id).catch(() => undefined);
      client.#call({ t: "reply", snapshot: id, kind: "pull", status: 200 }, JSON.stringify(snapshot));
    }
    if (options.signal?.aborted) {
      client.stop();
      return client;
    }
    client.#wire();
    if (options.getToken) void client.#followSite().catch(() => undefined);
    return client;
  }

  // ----- what the UI reads -----

  /** The live records of a collection; with `key`, that one's alone (if live). */
  collection<V = Value>(name: string, key?: string): Rec<V>[] {
    return this.#call<Rec<V>[]>({ t: "collection", name, key });
  }

  status(): Status {
    return this.#call<Status>({ t: "status" });
  }

  user(): Session["user"] | null {
    const id = this.#call<string | null>({ t: "user" });
    if (id === null) return null;
    const session = this.#storage.session();
    return session && session.user.id === id ? session.user : { id, username: "" };
  }

  clientId(): string {
    return this.#call<string>({ t: "clientId" });
  }

  subscribe(listener: (changed: Changed) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  // ----- what the UI does -----

  /**
   * Writes a record at once (locally and to other tabs); pushed in the background. With
   * `fields`, the write sets only those fields of the record (the others keep what other
   * devices wrote) where the server merges the collection per field (`--merge-fields`).
   */
  write(collection: string, key: string, value: Value | null, fields?: string[]) {
    this.#call({ t: "write", collection, key, value, fields });
  }

  /**
   * Pushes what is queued now, hot writes included (see `hot`): at a pause, a seek, the end of
   * an episode. With nothing queued it pulls (unless just pulled): call it as playback opens,
   * so it resumes from another device's further progress, not over it.
   */
  pushNow() {
    this.#call({ t: "pushNow" });
  }

  /** Signs in (or up, with `create`), merging this device's guest data into the account. */
  async signIn(username: string, password: string, create = false): Promise<Session["user"]> {
    const session = await (await import("./accounts.js")).requestSession(this.#baseUrl, username, password, create, this.#timeout());
    // Another user signed in here signs out first: the flush of their writes carries their token.
    const current = this.user();
    if (current && current.id !== session.user.id) await this.signOut();
    this.#storage.setSession(session);
    // A flush takes the new session's token, not one of this user's earlier sessions.
    this.#lastToken = null;
    this.#call({ t: "signIn", user: session.user.id });
    return session.user;
  }

  /**
   * The site signed a user in (token or cookie mode): this device's guest data joins the
   * account, and syncing starts. In token mode the user is the current token's `sub` (and
   * `userId`, when given, must match it); in cookie mode `userId` is required. Signing the
   * same user in again resumes syncing after an `unauthorized` error.
   */
  async signedIn(userId?: string): Promise<Session["user"]> {
    return this.#signedIn(userId, this.#options.getToken ? await this.#options.getToken({ refresh: false }) : null);
  }

  /** `signedIn()`, with the provider's token already asked for (`null` in cookie mode). */
  #signedIn(userId: string | undefined, token: string | null): Session["user"] {
    let id = userId;
    if (this.#options.getToken) {
      if (token === null) throw new SinkronError("signed_out", "sinkron: the token provider returned no token");
      id = subject(token);
      if (userId !== undefined && userId !== id) {
        throw new SinkronError("wrong_user", `sinkron: the token is for ${id}, not ${userId}`);
      }
    } else if (!this.#options.cookie) {
      throw new SinkronError("builtin_accounts", "sinkron: signedIn() is for the site's sign-in (getToken or cookie); use signIn()");
    }
    if (!id) throw new SinkronError("invalid_user", "sinkron: signedIn() needs the site's user id");
    // Another user signed in here signs out first: the flush of their writes carries their
    // last token, or none (they stay kept for them, sent at their next sign-in here), never
    // this user's, which would put them in this user's account.
    const current = this.user();
    if (current && current.id !== id) {
      this.#withoutCredentials = !!this.#options.cookie && !this.#options.getToken;
      try {
        this.#signOut(false);
      } finally {
        this.#withoutCredentials = false;
      }
    }
    const user = { id, username: id };
    this.#storage.setSession({ token: "", user });
    // Taken by the requests the sign-in sends at once (a guest's writes joining the account).
    this.#lastToken = token;
    this.#call({ t: "signIn", user: id });
    return user;
  }

  /**
   * Signs out: wipes the user's data here and in other tabs. Writes not yet confirmed are
   * never lost silently: they are flushed, and until the server confirms them they stay on
   * this device for the account, sent at its next sign-in here; with `discard` they are
   * dropped. Resolves with how many writes this tab had queued. With Sinkron's own accounts
   * it also ends the session on the server (after the flush); with the site's sign-in, call
   * it before the site ends its session, so the flush still carries it.
   */
  async signOut(options: { discard?: boolean } = {}): Promise<{ pending: number }> {
    return { pending: this.#signOut(!!options.discard) };
  }

  /** `signOut()`: how many writes this tab had queued. */
  #signOut(discard: boolean): number {
    // The built-in session's token: the engine has the server end it, until it answers.
    const endSession = this.#storage.session()?.token || null;
    const pending = this.#call<number>({ t: "signOut", endSession, discard });
    this.#storage.setSession(null);
    this.#lastToken = null;
    return pending;
  }

  /** Stops syncing in this tab (listeners, timers, locks). */
  stop() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    for (const cleanup of this.#cleanups.splice(0)) cleanup();
    this.#leaderRequest?.abort();
    this.#pokes?.abort();
    this.#leaderRelease?.();
    this.#tabLockRelease?.();
    this.#channel?.close();
  }

  // ----- start-up -----

  /** Token mode: makes this device follow whoever the site's token says is signed in. */
  async #followSite() {
    const token = await this.#options.getToken!({ refresh: false });
    if (this.#stopped) return;
    const signed = this.#storage.session()?.user.id ?? null;
    if (token === null) {
      if (signed !== null) await this.signOut();
    } else if (subject(token) !== signed) {
      this.#signedIn(undefined, token);
    } else {
      this.#lastToken = token;
    }
  }

  async #restore() {
    const user = this.#storage.session()?.user.id ?? null;
    const storage = this.#storage;
    storage.onFull = (scope) => this.#call<boolean>({ t: "storageFull", scope });
    this.#call({
      t: "restore",
      user,
      cursor: storage.cursor(user),
      partial: storage.partial(user),
      records: storage.records(user),
      ending: storage.ending(),
      adopted: storage.adopted(),
    });
    // Which stored outbox to take over is the core's rule (`adopt.rs`): a reloaded tab keeps
    // its client id (sessionStorage survives a reload) when its outbox holds writes; else it
    // tries closed tabs' unsent writes first, as a new tab does (then empty outboxes).
    // "Closed" is what this driver can tell: the tab lock named after the client id is free
    // (a duplicated tab's original is alive and holds it, so the copy gets a new id). The
    // other outboxes' writes (of live tabs, or closed ones not taken over yet) show in this
    // tab, as their tabs' messages about them would have, until they are sent.
    const outboxes = new Map(storage.outboxes(user));
    const order = this.#call<string[]>({
      t: "adoptionOrder",
      previous: sessionStorage.getItem(TAB_ID_KEY),
      stored: [...outboxes].map(([clientId, o]) => ({ clientId, ...o })),
      ownersKnown: !!navigator.locks,
    });
    let taken = false;
    for (const clientId of order)
      if ((taken = await this.#claimTabId(clientId))) {
        this.#call({ t: "restoreOutbox", clientId, ...outboxes.get(clientId)! });
        break;
      }
    if (!taken) await this.#claimTabId(this.clientId());
    for (const [clientId, o] of outboxes)
      if (clientId !== this.#tabId)
        for (const m of o.mutations) {
          this.#call({ t: "tab", message: { kind: "wrote", scope: user, clientId, ...m } });
        }
  }

  /** Holds a lock named after the tab's client id for the tab's life; false if taken. */
  async #claimTabId(id: string): Promise<boolean> {
    this.#tabLockRelease?.();
    this.#tabLockRelease = null;
    this.#tabId = id;
    sessionStorage.setItem(TAB_ID_KEY, id);
    if (!navigator.locks) return true;
    return new Promise<boolean>((claimed) => {
      navigator.locks
        .request(TAB_LOCK + id, { ifAvailable: true }, (lock) => {
          claimed(lock !== null);
          if (!lock) return undefined;
          return new Promise<void>((release) => (this.#tabLockRelease = release));
        })
        .catch(() => claimed(true));
    });
  }

  #wire() {
    const on = (target: EventTarget, type: string, handler: (e: Event) => void) => {
      target.addEventListener(type, handler);
      this.#cleanups.push(() => target.removeEventListener(type, handler));
    };
    const listen = () => {
      if (this.#shared) {
        this.#channel = new BroadcastChannel(this.#options.channelName ?? "sinkron");
        this.#channel.onmessage = (m) => this.#call({ t: "tab", message: m.data as TabMessage });
      }
    };
    listen();
    const online = (online: boolean) => () => this.#call({ t: "online", online });
    // The back/forward cache keeps a page only while it holds no Web Lock (Chromium evicts it
    // when any page of the site asks for one) and hears no tab message. So a page that may be
    // kept lets its tab lock and channel go, and leaves the page loaded next in the tab an
    // empty `previous` (naming no outbox, so that page takes an id of its own). Shown again,
    // it takes them back if nothing Sinkron stores changed meanwhile; else (it missed what
    // the tabs said: a sign-out, a sync, a write, its id taken over and written under) or if
    // another tab holds its id, it reloads and starts from what is stored.
    // While kept (from a `pagehide` that may keep the page to its `pageshow`), the page stays
    // hidden to the engine: Chromium reports it visible before `pageshow`, when the channel
    // is still closed and the tab lock not taken back.
    let kept: string | null = null;
    const stored = () => this.#storage.keys().map((k) => k + localStorage.getItem(k)).join();
    const visibility = () => kept ?? this.#call({ t: "visibility", visible: document.visibilityState === "visible" });
    on(document, "visibilitychange", visibility);
    on(window, "pagehide", (e) => {
      // Hidden for good, whatever visibility says yet: the outbox is flushed (keepalive)
      // and leadership given up.
      this.#call({ t: "visibility", visible: false });
      if ((e as PageTransitionEvent).persisted) {
        kept = stored();
        this.#tabLockRelease?.();
        // No channel until shown again: a broadcast on a closed one throws, which would stop
        // the engine's answer halfway (the app may still write from its own `pagehide`
        // handler: stored, the write makes the page reload when shown, and a page that is
        // never shown leaves it to the tab that leads).
        this.#channel?.close();
        this.#channel = null;
        // Unless the page shown next in this tab, kept itself, took its id back first.
        if (sessionStorage.getItem(TAB_ID_KEY) === this.#tabId) sessionStorage.setItem(TAB_ID_KEY, "");
      }
    });
    on(window, "pageshow", async (e) => {
      if (!(e as PageTransitionEvent).persisted) return;
      listen();
      // Compared before anything runs here: this page's own answers that waited, once
      // handled, change what is stored.
      if (stored() !== kept || !(await this.#claimTabId(this.#tabId))) location.reload();
      // Shown: whether or not the browser reports it (the hiding above was ours).
      else (kept = null), visibility();
    });
    on(window, "focus", () => this.#call({ t: "focus" }));
    on(window, "online", online(true));
    on(window, "offline", online(false));
    online(navigator.onLine)();
    visibility();
  }

  // ----- the command loop -----

  /**
   * One call into the engine: runs what it asks for, tells the subscribers what changed and
   * arms the timer for its next deadline. A call the engine refuses (a write it does not
   * take, a malformed input) throws, and nothing happened.
   */
  #call<T = null>(input: Input, body = ""): T {
    const answer = JSON.parse(this.#engine.call(JSON.stringify({ ...input, now: Date.now() }), body)) as Answer<T>;
    if (answer.e) throw new SinkronError(answer.e.code, `sinkron: ${answer.e.message}`);
    if (this.#stopped) return answer.r;
    const changed: Changed = { collections: [], keys: [], status: false };
    for (const command of answer.c) this.#execute(command, changed);
    this.#arm(answer.at);
    // Everything (`null`), some records or the status changed.
    if (changed.collections?.length !== 0 || changed.status) {
      for (const listener of this.#listeners) listener(changed);
    }
    return answer.r;
  }

  #execute(c: Command, changed: Changed) {
    const s = this.#storage;
    switch (c.t) {
      case "record":
        return s.putRecord(c.scope, c.change);
      case "clear":
        return s.clearRecords(c.scope);
      case "cursor":
        return s.setCursor(c.scope, c.cursor);
      case "outbox":
        if (c.clientId !== this.#tabId) void this.#claimTabId(c.clientId);
        return s.setOutbox(c.scope, c.clientId, c.next, c.mutations);
      case "wipe":
        // The user changes: the last token, unless the site's for the user now signed in, was
        // the previous user's (a flush before took it).
        if (subjectOrNull(this.#lastToken ?? "") !== this.#call({ t: "user" })) this.#lastToken = null;
        return s.wipe(c.scope, c.keepPending);
      case "dropOutbox":
        return s.dropOutbox(c.scope, c.clientId);
      case "unpark":
        // Each outbox whose tab is gone (its tab lock free; without Web Locks, each), read
        // again once the lock is held, as it is then (the engine takes none of a user signed
        // out meanwhile).
        for (const [clientId] of s.outboxes(c.scope)) {
          const take = () => {
            const stored = s.outbox(c.scope, clientId);
            if (stored?.mutations.length) this.#call({ t: "unpark", scope: c.scope, clientId, ...stored });
          };
          navigator.locks?.request(TAB_LOCK + clientId, { ifAvailable: true }, (lock) => lock && take()) ?? take();
        }
        return;
      case "evict":
        return s.evict(c.scope, c.keys);
      case "ending":
        return s.setEnding(c.tokens);
      case "adopted":
        return s.setAdopted(c.scopes);
      case "adopt":
        return this.#adopt(c.scope);
      case "broadcast":
        return this.#broadcast(c.message);
      case "send":
        return void this.#send(c);
      case "leadership":
        return c.want ? this.#askLeadership() : this.#dropLeadership();
      case "pokes":
        this.#pokes?.abort();
        this.#pokes = null;
        return void (c.on && this.#listen());
      case "notify":
        if (c.what === "status") changed.status = true;
        else if (c.what === "everything") changed.collections = null;
        // The records that changed, and each collection once.
        else if (changed.collections)
          for (const key of c.keys) {
            changed.keys.push(key);
            if (!changed.collections.includes(key[0])) changed.collections.push(key[0]);
          }
        return;
    }
  }

  /**
   * One timer, at the engine's next deadline (`at`, -1 for none); run in an idle period if
   * one comes within IDLE_SLACK_MS. Idle periods can be late by far more (a busy or
   * background renderer gave none for ~500 ms, which halved a short poll interval), so the
   * wait for one is bounded.
   */
  #arm(at: number) {
    if (at === this.#armedAt) return;
    clearTimeout(this.#timer);
    this.#armedAt = at;
    if (at < 0) return;
    const fire = () => {
      this.#armedAt = -1;
      if (!this.#stopped) this.#call({ t: "timeout" });
    };
    // A deadline already past runs at once (a negative delay is none); without idle periods
    // (Safari), at the deadline.
    this.#timer = setTimeout(() => window.requestIdleCallback?.(fire, { timeout: IDLE_SLACK_MS }) ?? fire(), at - Date.now());
  }

  /** Hands the app's data from before Sinkron to the engine (see `adoptLegacy`). */
  #adopt(scope: string | null) {
    try {
      // What is not a list of records the engine refuses, saying which field was wrong.
      this.#call({ t: "adopt", scope, records: this.#options.adoptLegacy?.(scope) ?? [] });
    } catch (e) {
      console.error("sinkron: adoptLegacy failed; nothing adopted, asked again at the next start", e);
    }
  }

  #broadcast(message: TabMessage) {
    this.#channel?.postMessage(message);
  }

  #askLeadership() {
    if (!this.#shared || !navigator.locks) {
      // Alone, or no Web Locks or no channel to hear a leader by: this tab leads (the safe
      // side: it still pulls).
      queueMicrotask(() => {
        if (!this.#stopped) this.#call({ t: "leadership", leader: true });
      });
      return;
    }
    if (this.#leaderRequest || this.#leaderRelease) return;
    const request = new AbortController();
    this.#leaderRequest = request;
    navigator.locks
      .request(LEADER_LOCK, { signal: request.signal }, () => {
        // Held until released; the release exists before the engine hears of the grant, so
        // a grant it no longer wants (handed straight back while draining) is let go.
        const held = new Promise<void>((release) => (this.#leaderRelease = release));
        this.#leaderRequest = null;
        if (this.#stopped) this.#dropLeadership();
        else this.#call({ t: "leadership", leader: true });
        return held;
      })
      .catch(() => {
        // Aborted because we stopped wanting it: nothing to do.
      });
  }

  #dropLeadership() {
    this.#leaderRequest?.abort();
    this.#leaderRequest = null;
    const release = this.#leaderRelease;
    this.#leaderRelease = null;
    release?.();
  }

  // ----- HTTP -----

  /**
   * The `Authorization` header for a request: the built-in session's token, or the site's
   * token for the signed-in user; `null` when there is none to send (answered as a 401);
   * `undefined` in cookie mode, where the browser sends the site's cookie itself.
   */
  async #authorization(c: { freshToken: boolean; keepalive?: boolean }): Promise<string | null | undefined> {
    const getToken = this.#options.getToken;
    if (this.#withoutCredentials) return null;
    if (this.#options.cookie && !getToken) return undefined;
    // A flush on page hide or sign-out cannot wait for the provider: the page may be gone,
    // the user signed out. The last token is the user's whose writes it carries.
    let token = c.keepalive && !c.freshToken ? this.#lastToken : null;
    if (!token) {
      const user = this.#call<string | null>({ t: "user" });
      let refresh = c.freshToken;
      // The engine's user's token, the built-in session's or the provider's: never one of
      // someone else (a sign-in or out elsewhere this tab has not heard of yet), which would
      // carry this user's writes into their account; `followSite` or `signedIn` switches over.
      const read = async () => {
        const session = this.#storage.session();
        // The provider's last token for this user is sent again while it has half a minute
        // left: asking before each request would cost the site a request for each of ours.
        // Then the provider is asked for a new one, not the same one again.
        const last = this.#lastToken && claims(this.#lastToken);
        if (getToken && last && last.sub === user && typeof last.exp === "number") {
          if (!refresh && last.exp * 1000 > Date.now() + 30_000) return this.#lastToken;
          refresh = true;
        }
        // A provider that has not answered in half a minute (a request of the site's that
        // hangs on a mobile link) failed: the request goes as unanswered, retried later.
        const t = getToken
          ? await Promise.race([getToken({ refresh }), new Promise<never>((_, fail) => setTimeout(fail, 30_000))])
          : session?.user.id === user ? session.token : null;
        refresh = false;
        return t && (!getToken || subjectOrNull(t) === user) ? t : null;
      };
      token = c.keepalive ? await read() : await this.#tokenFor(user, read);
      if (token) this.#lastToken = token;
    }
    return token ? `Bearer ${token}` : null;
  }

  /**
   * `user`'s token, as `read` gives it. Another tab's sign-in reaches this one over the
   * channel before what it stored through `localStorage` does (the built-in session, or the
   * site's own, which a provider may read): Chromium copies storage between a site's tabs
   * later, often after the channel's message. So `read` is asked again at each `storage`
   * event, for a second at most, rather than the request go without and end the session here.
   */
  async #tokenFor(user: string | null, read: () => Promise<string | null>): Promise<string | null> {
    const token = await read();
    if (token || user === null) return token;
    return new Promise((resolve, reject) => {
      let asking = false;
      const done = (t: string | null) => {
        window.removeEventListener("storage", arrived);
        clearTimeout(timer);
        resolve(t);
      };
      // (A provider that fails here is asked again; the last ask says.)
      const arrived = () => {
        if (asking) return;
        asking = true;
        read().then(
          (t) => ((asking = false), t && done(t)),
          () => (asking = false),
        );
      };
      const timer = setTimeout(() => {
        window.removeEventListener("storage", arrived);
        read().then(resolve, reject);
      }, 1000);
      window.addEventListener("storage", arrived);
    });
  }

  /**
   * Holds the poke stream open: each `data:` line is a version for the engine. A stream that
   * ends by itself, or stays silent for a minute, is reported with its status; one the engine
   * closed is not.
   */
  async #listen() {
    const stream = new AbortController();
    this.#pokes = stream;
    const poke = (fields: { version?: number; status?: number }) => {
      if (this.#pokes === stream && !this.#stopped) this.#call({ t: "poke", ...fields });
    };
    let status = 0;
    try {
      const authorization = await this.#authorization({ freshToken: false });
      // No token to send: answered as the server would, as `#send` does.
      status =
        authorization === null
          ? 401
          : await (await import("./pokes.js")).readPokes(`${this.#baseUrl}/api/user/me/events`, authorization, this.#options.cookie, stream, poke);
    } catch {
      // The token provider failed, or the reader could not be loaded: no answer.
    }
    poke({ status });
    if (this.#pokes === stream) this.#pokes = null;
  }

  /** Aborts a request (its body included) not answered within `requestTimeout`. */
  #timeout() {
    return AbortSignal.timeout?.(this.#options.requestTimeout ?? 45_000);
  }

  /**
   * Runs a request and hands the engine the answer as it came: status, `Retry-After`, body.
   * One not answered in time is no answer (status 0), as a network failure.
   */
  async #send(c: Extract<Command, { t: "send" }>) {
    const reply = (status: number, headers?: Headers, body = "") => {
      // An absent header is left out of the call (as `null`, which the engine takes alike).
      const header = (name: string) => headers?.get(name);
      if (!this.#stopped) {
        this.#call(
          { t: "reply", id: c.id, kind: c.kind, status, retryAfter: header("retry-after"), pollInterval: header("sinkron-poll-interval") },
          body,
        );
      }
    };
    const headers: Record<string, string> = {};
    let response: Response;
    try {
      if (c.kind === "endSession") {
        const init = { method: "POST", headers: { authorization: `Bearer ${c.token}` }, keepalive: true, signal: this.#timeout() };
        response = await fetch(`${this.#baseUrl}/api/auth/logout`, init);
        return reply(response.status, response.headers);
      }
      const authorization = await this.#authorization(c);
      // No token to send: answered as the server would.
      if (authorization === null) return reply(401);
      if (authorization !== undefined) headers.authorization = authorization;
      const credentials: RequestCredentials = this.#options.cookie ? "include" : "same-origin";
      // Timed from here: the site's token provider may take its time (its answer is kept).
      const signal = this.#timeout();
      if (c.kind === "pull") {
        let url = `${this.#baseUrl}/api/user/me`;
        if (c.lastSync !== null) {
          url += `?lastSync=${encodeURIComponent(c.lastSync)}`;
          headers["if-none-match"] = `"${c.lastSync}"`;
        }
        response = await fetch(url, { headers, cache: "no-store", credentials, signal });
      } else {
        headers["content-type"] = "application/json";
        response = await fetch(`${this.#baseUrl}/api/user/me/changes`, {
          method: "POST",
          headers,
          body: JSON.stringify(c.body),
          keepalive: c.keepalive,
          credentials,
          signal,
        });
      }
    } catch {
      return reply(0);
    }
    // A body cut off on the way is an unreadable answer; the engine tells what that means.
    const body = await response.text().catch(() => "");
    reply(response.status, response.headers, body);
  }
}

/** A JSON Web Token's claims, decoded, not verified (the server does); `null` if it is none. */
function claims(token: string): { sub?: unknown; exp?: unknown } | null {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decoder.decode(Uint8Array.from(atob(payload), (ch) => ch.charCodeAt(0))));
  } catch {
    return null;
  }
}

/** The `sub` claim of a JSON Web Token, or `null`. */
function subjectOrNull(token: string): string | null {
  const sub = claims(token)?.sub;
  return typeof sub === "string" && sub !== "" ? sub : null;
}

/** The `sub` claim of a JSON Web Token: the site's user id. Not verified here (the server does). */
export function subject(token: string): string {
  const sub = subjectOrNull(token);
  if (sub === null) throw new SinkronError("invalid_token", "sinkron: the token provider's token is not a JWT with a `sub`");
  return sub;
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
