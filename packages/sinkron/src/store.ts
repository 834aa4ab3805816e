// The Zustand stores: the user's personal data as plain state, plus the actions that write it.
//
// An app declares its collections (`defineCollections`) and gets a store typed from them
// (`createSyncStore`): each collection's records by key, `put` and `remove`. The seed's four
// collections are the ready-made preset (`presetCollections`), whose store (`userSync`, the
// one `useUserSync` runs) adds the shapes a streaming site shows: history newest first,
// favourites, likes, settings.
//
// State is re-read from the engine whenever it says something changed (a write's record
// alone, the collection's other records keeping their objects); actions call the
// engine, which applies them at once (optimistic) and syncs them in the background. Nothing
// here decides how or when to sync.

import { createStore, type StoreApi } from "zustand/vanilla";
import { SinkronClient, type ClientOptions } from "./driver.js";
import type { Changed, Json, Rec, Snapshot, Status, User, Value } from "./types.js";

/** A collection's declaration: its value type (`collection<V>()`) and how its writes are pushed. */
export interface Collection<V extends Value = Value> {
  /**
   * A hot collection (a playback position): its writes are pushed at most every `hot` ms
   * while they keep coming, and at once by `syncNow()`; they show at once everywhere else.
   */
  hot?: number;
  /**
   * Fields the server keeps `true` once any write set them (its `--merge-fields`, e.g.
   * `history:completed`): a queued `true` is never replaced or undone unsent by a later write
   * that does not set it (see `ClientOptions.sticky`). The engine keeps a queued `true` of a
   * field of that name in any collection: elsewhere it costs one more write, never a lost one.
   */
  sticky?: string[];
  /** The value type, for the compiler only: never set. */
  readonly type?: V;
}

/** Collections by name, as the server knows them (`--collections`). */
export type Collections = Record<string, Collection<any>>;

/** The value type a collection was declared with. */
export type ValueOf<C> = C extends Collection<infer V> ? V : never;

/** Declares a collection whose records hold values of type `V`. */
export const collection = <V extends Value = Value>(options: { hot?: number; sticky?: Array<keyof V & string> } = {}): Collection<V> => options;

/** Declares the app's collections; the store's state and actions are typed from them. */
export const defineCollections = <C extends Collections>(collections: C): C => collections;

/** The seed's four collections: what `useUserSync` syncs by default. */
export const presetCollections = defineCollections({
  /** Keyed by episode id; `position` and `duration` in seconds. Hot: the playback position. */
  history: collection<{ showId: string; position: number; duration?: number }>({ hot: 30000 }),
  /** Keyed by show id. */
  favorites: collection<Record<string, never>>(),
  /** Keyed by episode id: 1 like, -1 dislike. */
  likes: collection<{ like: 1 | -1 }>(),
  /** Keyed by setting name. */
  settings: collection<{ value: Json }>(),
});

/** What the sync status UI shows. */
export type SyncState = "guest" | "synced" | "syncing" | "pending" | "offline";

/** The state and actions of a store of the collections `C`. */
export interface SyncStore<C extends Collections> {
  /** The engine is loaded and this device's stored data restored. */
  ready: boolean;
  user: User | null;
  status: Status & { state: SyncState };
  /** Each collection's records, by key. */
  records: { [K in keyof C]: Record<string, Rec<ValueOf<C[K]>>> };

  /**
   * Writes a record (optimistic: in the state at once, synced in the background). With
   * `fields`, it sets only those fields (a like toggled here, a position advanced on another
   * device: both survive) where the server merges the collection per field.
   */
  put<K extends keyof C & string>(collection: K, key: string, value: ValueOf<C[K]>, fields?: Array<keyof ValueOf<C[K]> & string>): void;
  /** Deletes a record. */
  remove<K extends keyof C & string>(collection: K, key: string): void;
  /**
   * Pushes what is queued now, hot writes included: call it at a pause, a seek or the end
   * of an episode. With nothing queued it pulls (unless just pulled): call it as the player
   * opens, so playback resumes from another device's further progress, not over it.
   */
  syncNow(): void;
  /** Signs in with Sinkron's own accounts (or creates one, with `create`). */
  signIn(username: string, password: string, options?: { create?: boolean }): Promise<User>;
  /**
   * The site signed a user in (its own sign-in: `getToken` or `cookie`): guest data joins
   * the account. With `getToken` the user is the token's `sub`; with `cookie`, `userId`.
   */
  signedIn(userId?: string): Promise<User>;
  /**
   * Signs out (either kind of sign-in): this device's copy of the user's data is wiped, but
   * writes not yet confirmed are flushed and, until confirmed, kept for the account (sent at
   * its next sign-in here); `discard` drops them. Resolves with how many were queued here.
   */
  signOut(options?: { discard?: boolean }): Promise<{ pending: number }>;

  /**
   * Starts syncing in this tab (the React hooks call it); resolves when ready. `hot`
   * and `sticky` default to the collections' declarations.
   */
  start(options?: ClientOptions): Promise<void>;
  /** Stops syncing in this tab. */
  stop(): void;
}

/** One watched episode: where the user stopped. Keyed by episode id. */
export interface HistoryEntry {
  episodeId: string;
  showId: string;
  /** Seconds into the episode. */
  position: number;
  /** Length of the episode in seconds, when known. */
  duration?: number;
  /** When it was last watched (the record's `updatedAt`). */
  updatedAt: number;
}

/** The preset's store: its records, and the shapes and actions of a streaming site. */
export interface UserSyncState extends SyncStore<typeof presetCollections> {
  /** Newest first. */
  history: HistoryEntry[];
  /** Favourite show ids, with when they were added. */
  favorites: Record<string, number>;
  /** Episode id → 1 (like) or -1 (dislike). */
  likes: Record<string, 1 | -1>;
  settings: Record<string, Json>;

  addHistory(item: { episodeId: string; showId: string; position?: number; duration?: number }): void;
  updateProgress(episodeId: string, position: number): void;
  removeHistory(episodeId: string): void;
  clearHistory(): void;
  toggleFavorite(showId: string): void;
  /** 1 like, -1 dislike, 0 neither. */
  setLike(episodeId: string, value: 1 | -1 | 0): void;
  setSetting(name: string, value: Json): void;
}

const GUEST_STATUS: SyncStore<Collections>["status"] = {
  signedIn: false,
  online: true,
  visible: true,
  leader: false,
  pending: 0,
  syncing: false,
  lastSyncedAt: null,
  error: null,
  state: "guest",
};

export function syncState(s: Status): SyncState {
  if (!s.signedIn) return "guest";
  if (!s.online || s.error === "unreachable") return "offline";
  if (s.pending > 0) return "pending";
  // Not "synced" before this tab has seen the server's state at least once.
  if (s.syncing || s.lastSyncedAt === null) return "syncing";
  return "synced";
}

type Set<S> = StoreApi<S>["setState"];

/** How a store starts. */
export interface StoreOptions {
  /**
   * A server-rendered page's state (see `Snapshot`): the store holds it from the start, on
   * the server and in the browser alike, so the page hydrates without a mismatch, and its
   * first `start()` takes it as the first pull (see `ClientOptions.snapshot`).
   */
  snapshot?: Snapshot;
}

/**
 * A store of the collections `C`. `extend` adds state derived from the records (called with
 * the records after every change, and the names of the collections that changed) and actions
 * of the app's own; the preset's store is built this way.
 */
export function createSyncStore<C extends Collections, X extends object = {}>(
  collections: C,
  extend?: (set: Set<SyncStore<C> & X>, get: () => SyncStore<C> & X) => Partial<X> & { derive?(records: SyncStore<C>["records"], changed: string[]): Partial<X> },
  { snapshot }: StoreOptions = {},
): StoreApi<SyncStore<C> & X> {
  type S = SyncStore<C> & X;
  let client: SinkronClient | null = null;
  let starting: Promise<void> | null = null;
  let cancel: AbortController | null = null;
  let unsubscribe: (() => void) | null = null;
  const names = Object.keys(collections);
  const hot: Record<string, number> = {};
  const sticky: string[] = [];
  for (const name of names) {
    if (collections[name].hot) hot[name] = collections[name].hot!;
    sticky.push(...(collections[name].sticky ?? []));
  }

  return createStore<S>()((set, get) => {
    const engine = () => {
      if (!client) throw new Error("sinkron: call start() (or mount a sync hook) first");
      return client;
    };
    const own = extend?.(set, get);

    const read = (changed: Changed) => {
      const c = engine();
      const which = changed.collections ?? names;
      const records = { ...get().records };
      // A status change alone leaves `records` as it was (its selectors do not re-render).
      const next: Partial<SyncStore<C>> = which.length ? { records } : {};
      // One record changed (a write, a second played): that record is read alone.
      const one = changed.collections && changed.keys.length === 1 ? changed.keys[0][1] : undefined;
      for (const name of which) {
        if (!(name in collections)) continue;
        const byKey: Record<string, Rec> = one ? { ...records[name] } : {};
        if (one) delete byKey[one];
        for (const r of c.collection(name, one)) byKey[r.key] = r;
        records[name as keyof C] = byKey as never;
      }
      if (changed.status || !changed.collections) {
        const status = c.status();
        next.status = { ...status, state: syncState(status) };
      }
      // The user changes only at sign-in and sign-out, which the engine reports as
      // "everything": a write (a status change) does not re-read the stored session.
      if (!changed.collections) next.user = c.user();
      set({ ...next, ...own?.derive?.(records, which) } as Partial<S>);
    };

    const initial = {} as Record<string, Record<string, Rec>>;
    for (const name of names) initial[name] = {};
    // Each change as the record the engine shows for it later.
    for (const { collection, key, value, updatedAt, clientId } of snapshot?.changes ?? []) {
      if (value && initial[collection]) initial[collection][key] = { key, value, updatedAt, clientId };
    }
    const records = initial as SyncStore<C>["records"];
    const { derive: _, ...actions } = own ?? {};
    return {
      ready: false,
      user: snapshot?.user ?? null,
      status: snapshot ? { ...GUEST_STATUS, signedIn: true, state: "syncing" } : GUEST_STATUS,
      records,
      ...own?.derive?.(records, names),
      ...actions,

      put(collection, key, value, fields) {
        engine().write(collection, key, value, fields);
      },
      remove(collection, key) {
        engine().write(collection, key, null);
      },
      syncNow() {
        // Also from a component's cleanup, after a stop: nothing then.
        client?.pushNow();
      },
      async signIn(username, password, options) {
        return engine().signIn(username, password, options?.create === true);
      },
      async signedIn(userId) {
        return engine().signedIn(userId);
      },
      async signOut(options) {
        return engine().signOut(options);
      },

      start(options) {
        if (starting) return starting;
        const abort = new AbortController();
        cancel = abort;
        // The snapshot is the first start's only: a later one has newer state stored.
        const attempt: Promise<void> = SinkronClient.start({ snapshot, ...options, hot: options?.hot ?? hot, sticky: options?.sticky ?? sticky, signal: abort.signal }).then((c) => {
          snapshot = undefined;
          // stop() (or another start) came first: this client never runs.
          if (abort.signal.aborted) return c.stop();
          client = c;
          unsubscribe = c.subscribe(read);
          read({ collections: null, keys: [], status: true });
          set({ ready: true } as Partial<S>);
        }, (e: unknown) => {
          // Not loaded (a flaky network, say): the next start() tries again.
          if (starting === attempt) starting = null;
          throw e;
        });
        starting = attempt;
        return attempt;
      },
      stop() {
        cancel?.abort();
        cancel = null;
        unsubscribe?.();
        client?.stop();
        client = null;
        starting = null;
        unsubscribe = null;
        set({ ready: false } as Partial<S>);
      },
    } as S;
  });
}

type Preset = typeof presetCollections;
type PresetExtra = Omit<UserSyncState, keyof SyncStore<Preset>>;

/** The preset's store: the seed's four collections in the shapes a streaming site shows. */
export function createUserSyncStore(options?: StoreOptions): StoreApi<UserSyncState> {
  return createSyncStore<Preset, PresetExtra>(presetCollections, (_set, get) => ({
    derive(records, changed) {
      const next: Partial<PresetExtra> = {};
      if (changed.includes("history")) {
        next.history = Object.values(records.history)
          .map((r) => ({
            episodeId: r.key,
            showId: String(r.value.showId ?? ""),
            position: Number(r.value.position ?? 0),
            duration: typeof r.value.duration === "number" ? r.value.duration : undefined,
            updatedAt: r.updatedAt,
          }))
          .sort((a, b) => b.updatedAt - a.updatedAt);
      }
      if (changed.includes("favorites")) next.favorites = index(records.favorites, (r) => r.updatedAt);
      if (changed.includes("likes")) next.likes = index(records.likes, (r) => (r.value.like === -1 ? -1 : 1));
      if (changed.includes("settings")) next.settings = index(records.settings, (r) => r.value.value ?? null);
      return next;
    },
    addHistory({ episodeId, showId, position = 0, duration }) {
      // An unknown duration is left out (a write is sent as JSON).
      get().put("history", episodeId, { showId, position, duration });
    },
    updateProgress(episodeId, position) {
      const entry = get().records.history[episodeId]?.value;
      // An unknown duration is left out (a write is sent as JSON).
      get().put("history", episodeId, { showId: entry?.showId ?? "", position, duration: entry?.duration });
    },
    removeHistory(episodeId) {
      get().remove("history", episodeId);
    },
    clearHistory() {
      for (const h of get().history) get().remove("history", h.episodeId);
    },
    toggleFavorite(showId) {
      if (showId in get().favorites) get().remove("favorites", showId);
      else get().put("favorites", showId, {});
    },
    setLike(episodeId, value) {
      if (value === 0) get().remove("likes", episodeId);
      else get().put("likes", episodeId, { like: value });
    },
    setSetting(name, value) {
      get().put("settings", name, { value });
    },
  }), options);
}

function index<V, T>(records: Record<string, Rec<V>>, pick: (r: Rec<V>) => T): Record<string, T> {
  const out: Record<string, T> = {};
  for (const key in records) out[key] = pick(records[key]);
  return out;
}

/** The store most apps need: one per page. */
export const userSync = createUserSyncStore();
