// Compiled against the built package (`dist`, through the package's `exports`), the way an
// app imports it: the public types must be complete and usable.
import {
  collection,
  createSyncStore,
  createUserSyncStore,
  defineCollections,
  presetCollections,
  SinkronClient,
  SinkronError,
  syncState,
  userSync,
  type Collections,
  type HistoryEntry,
  type Status,
  type SyncState,
  type SyncStore,
  type UserSyncState,
  type ValueOf,
} from "sinkron";
import { useSinkron, useSyncStore, useUserSync } from "sinkron/react";
import { useStore } from "zustand";

export function Watching() {
  const status: Status & { state: SyncState } = useUserSync({ interval: 30000, onFocus: true, onLogin: true, crossTab: true });
  const history: HistoryEntry[] = useSinkron((s) => s.history);
  const favorite: boolean = useSinkron((s) => "s01" in s.favorites);
  const toggle = useSinkron((s) => s.toggleFavorite);
  if (status.state === "offline") return null;
  return (
    <button aria-pressed={favorite} onClick={() => toggle("s01")}>
      {history.length} watched, {status.pending} pending
    </button>
  );
}

export async function outsideReact(): Promise<void> {
  const store = createUserSyncStore();
  await store.getState().start({ interval: 10_000, baseUrl: "https://example.test", crossTab: false });
  const state: UserSyncState = store.getState();
  state.addHistory({ episodeId: "s01e01", showId: "s01", duration: 1800 });
  state.updateProgress("s01e01", 42);
  state.setLike("s01e01", -1);
  state.setSetting("quality", { max: "1080p" });
  try {
    await state.signIn("alice", "correct horse", { create: true });
  } catch (e) {
    if (e instanceof SinkronError) console.log(e.code);
  }
  const client: SinkronClient = await SinkronClient.start();
  client.write("history", "s01e02", { showId: "s01", position: 3 });
  const unsubscribe = client.subscribe((changed) => console.log(changed.collections, changed.status));
  unsubscribe();
  console.log(syncState(client.status()), userSync.getState().ready);
}

// An app's own collections: the store's records and writes are typed from the declaration.
const collections = defineCollections({
  bookmarks: collection<{ url: string; note: string }>(),
  progress: collection<{ position: number }>({ hot: 30_000 }),
});
const bookmarks = createSyncStore(collections);

export function Bookmarks() {
  const status = useSyncStore(bookmarks, { interval: 30000 });
  const urls: string[] = useStore(bookmarks, (s) => Object.values(s.records.bookmarks).map((r) => r.value.url));
  const position: number | undefined = useStore(bookmarks, (s) => s.records.progress["s01e01"]?.value.position);
  const { put, remove } = bookmarks.getState();
  put("bookmarks", "a", { url: "https://example.org", note: "later" });
  put("progress", "s01e01", { position: 42 });
  // Only the note: its fields are the value type's.
  put("bookmarks", "a", { url: "https://example.org", note: "now" }, ["note"]);
  // @ts-expect-error: a bookmark has no field "position"
  put("bookmarks", "a", { url: "https://example.org", note: "now" }, ["position"]);
  remove("bookmarks", "a");
  // @ts-expect-error: a bookmark has a url and a note
  put("bookmarks", "b", { position: 1 });
  // @ts-expect-error: not a declared collection
  put("notes", "c", { text: "x" });
  // @ts-expect-error: a position is a number
  const wrong: string | undefined = useStore(bookmarks, (s) => s.records.progress["x"]?.value.position);
  const preset: UserSyncState["records"]["history"] = userSync.getState().records.history;
  const hot: number | undefined = presetCollections.history.hot;
  const declared: Collections = collections;
  const value: ValueOf<(typeof collections)["progress"]> = { position: 1 };
  const store: SyncStore<typeof collections> = bookmarks.getState();
  console.log(wrong, preset, hot, declared, value, store.ready);
  return (
    <p>
      {status.state}: {urls.join(", ")} at {position}
    </p>
  );
}
