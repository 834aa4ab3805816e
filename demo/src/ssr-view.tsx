// A server-rendered page of the user's history: the same component renders on the site's
// server (`ssr-render.tsx`, from the snapshot it pulled for the user) and hydrates in the
// browser (`ssr.tsx`, from the same snapshot, embedded in the page).
import type { StoreApi } from "zustand";
import { useStore } from "zustand";
import type { UserSyncState } from "sinkron";
import { useSyncStore } from "sinkron/react";

export function History({ store }: { store: StoreApi<UserSyncState> }) {
  const status = useSyncStore(store);
  const user = useStore(store, (s) => s.user);
  const history = useStore(store, (s) => s.history);
  const ready = useStore(store, (s) => s.ready);
  return (
    <main className="custom">
      <h1>Continue watching</h1>
      <p data-testid="sync-status" data-state={status.state} data-pending={status.pending} data-ready={ready}>
        {user ? `${user.username}: ${status.state}` : "guest"}
      </p>
      <ul>
        {history.map((h) => (
          <li key={h.episodeId} data-testid="entry" data-episode={h.episodeId} data-position={h.position}>
            {h.episodeId} at {h.position} s
          </li>
        ))}
      </ul>
      <button data-testid="favorite" onClick={() => store.getState().toggleFavorite("s01")}>
        Favourite s01
      </button>
    </main>
  );
}
