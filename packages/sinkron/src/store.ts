// The Zustand store: the user's personal data as plain state, plus the actions that write it.
//
// State is re-read from the engine whenever it says something changed; actions call the
// engine, which applies them at once (optimistic) and syncs them in the background. Nothing
// here decides how or when to sync.

import { createStore, type StoreApi } from "zustand/vanilla";
import { SinkronClient, type ClientOptions } from "./driver.js";
import type { Changed, Json, Rec, Status, User } from "./types.js";

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

/** What the sync status UI shows. */
export type SyncState = "guest" | "synced" | "syncing" | "pending" | "offline";

export interface UserSyncState {
  /** The engine is loaded and this device's stored data restored. */
  ready: boolean;
  user: User | null;
  /** Newest first. */
  history: HistoryEntry[];
  /** Favourite show ids, with when they were added. */
  favorites: Record<string, number>;
  /** Episode id → 1 (like) or -1 (dislike). */
  likes: Record<string, 1 | -1>;
  settings: Record<string, Json>;
  status: Status & { state: SyncState };

  addHistory(item: { episodeId: string; showId: string; position?: number; duration?: number }): void;
  updateProgress(episodeId: string, position: number): void;
  removeHistory(episodeId: string): void;
  clearHistory(): void;
  toggleFavorite(showId: string): void;
  /** 1 like, -1 dislike, 0 neither. */
  setLike(episodeId: string, value: 1 | -1 | 0): void;
  setSetting(name: string, value: Json): void;
  /**
   * Pushes what is queued now: call it at a pause, a seek or the end of an episode. While a
   * video plays, its position (`updateProgress`) is pushed at most every 30 s.
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

  /** Starts syncing in this tab (the React hook calls it); resolves when ready. */
  start(options?: ClientOptions): Promise<void>;
  /** Stops syncing in this tab. */
  stop(): void;
}

const GUEST_STATUS: UserSyncState["status"] = {
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

export function createUserSyncStore(): StoreApi<UserSyncState> {
  let client: SinkronClient | null = null;
  let starting: Promise<void> | null = null;
  let cancel: AbortController | null = null;
  let unsubscribe: (() => void) | null = null;

  return createStore<UserSyncState>()((set, get) => {
    const engine = () => {
      if (!client) throw new Error("sinkron: call start() (or mount useUserSync) first");
      return client;
    };

    const read = (changed: Changed) => {
      const c = engine();
      const next: Partial<UserSyncState> = {};
      const all = changed.collections === null;
      const has = (name: string) => all || changed.collections!.includes(name);
      if (has("history")) {
        next.history = c
          .collection<{ showId?: string; position?: number; duration?: number }>("history")
          .map((r) => ({
            episodeId: r.key,
            showId: String(r.value.showId ?? ""),
            position: Number(r.value.position ?? 0),
            duration: typeof r.value.duration === "number" ? r.value.duration : undefined,
            updatedAt: r.updatedAt,
          }))
          .sort((a, b) => b.updatedAt - a.updatedAt);
      }
      if (has("favorites")) next.favorites = index(c.collection("favorites"), (r) => r.updatedAt);
      if (has("likes")) next.likes = index(c.collection<{ like?: number }>("likes"), (r) => (r.value.like === -1 ? -1 : 1));
      if (has("settings")) next.settings = index(c.collection<{ value?: Json }>("settings"), (r) => r.value.value ?? null);
      if (changed.status || all) {
        const status = c.status();
        next.status = { ...status, state: syncState(status) };
      }
      // The user changes only at sign-in and sign-out, which the engine reports as
      // "everything": a write (a status change) does not re-read the stored session.
      if (all) next.user = c.user();
      set(next);
    };

    return {
      ready: false,
      user: null,
      history: [],
      favorites: {},
      likes: {},
      settings: {},
      status: GUEST_STATUS,

      addHistory({ episodeId, showId, position = 0, duration }) {
        const value: Record<string, Json> = { showId, position };
        if (duration !== undefined) value.duration = duration;
        engine().write("history", episodeId, value);
      },
      updateProgress(episodeId, position) {
        const entry = get().history.find((h) => h.episodeId === episodeId);
        const value: Record<string, Json> = { showId: entry?.showId ?? "", position };
        if (entry?.duration !== undefined) value.duration = entry.duration;
        engine().write("history", episodeId, value);
      },
      removeHistory(episodeId) {
        engine().write("history", episodeId, null);
      },
      clearHistory() {
        for (const h of get().history) engine().write("history", h.episodeId, null);
      },
      toggleFavorite(showId) {
        engine().write("favorites", showId, showId in get().favorites ? null : {});
      },
      setLike(episodeId, value) {
        engine().write("likes", episodeId, value === 0 ? null : { like: value });
      },
      setSetting(name, value) {
        engine().write("settings", name, { value });
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
        const attempt: Promise<void> = SinkronClient.start({ ...options, signal: abort.signal }).then((c) => {
          // stop() (or another start) came first: this client never runs.
          if (abort.signal.aborted) return c.stop();
          client = c;
          unsubscribe = c.subscribe(read);
          read({ collections: null, status: true });
          set({ ready: true });
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
        set({ ready: false });
      },
    };
  });
}

function index<V, T>(records: Rec<V>[], pick: (r: Rec<V>) => T): Record<string, T> {
  const out: Record<string, T> = {};
  for (const r of records) out[r.key] = pick(r);
  return out;
}

/** The store most apps need: one per page. */
export const userSync = createUserSyncStore();
