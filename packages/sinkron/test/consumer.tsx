// Compiled against the built package (`dist`, through the package's `exports`), the way an
// app imports it: the public types must be complete and usable.
import { createUserSyncStore, SinkronClient, SinkronError, syncState, userSync, type HistoryEntry, type Status, type SyncState, type UserSyncState } from "sinkron";
import { useSinkron, useUserSync } from "sinkron/react";

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
