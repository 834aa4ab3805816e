// React bindings: `useSyncStore` starts and stops a store's syncing while a component is
// mounted; `useUserSync` does it for the preset store, and `useSinkron` reads that store.
// Any store is read with Zustand's `useStore(store, selector)`; the package reads its own
// through React's `useSyncExternalStore`, as that does (a page that reads nothing else with
// Zustand's hook is spared it).

import { useEffect, useRef, useSyncExternalStore } from "react";
import type { StoreApi } from "zustand";
import type { ClientOptions, TokenProvider } from "./driver.js";
import { userSync, type Collections, type SyncStore, type UserSyncState } from "./store.js";

export interface UseUserSyncOptions {
  /** Pull interval in ms for the leader tab (default 30000). */
  interval?: number;
  /** Pull when the window gets focus or the tab becomes visible (default true). */
  onFocus?: boolean;
  /** Pull the account's state right after sign-in (default true); guest data is pushed either way. */
  onLogin?: boolean;
  /** Share changes and leadership with the other tabs (default true). */
  crossTab?: boolean;
  /** Where the Sinkron server is (default: this page's origin). */
  baseUrl?: string;
  /** The site's token provider (its own sign-in, JWT mode); the latest one is always used. */
  getToken?: TokenProvider;
  /** The site's sign-in by an HttpOnly cookie; tell the store who is signed in with `signedIn`. */
  cookie?: boolean;
  /** The app's data from before Sinkron, asked once per device and user scope (see `ClientOptions`). */
  adoptLegacy?: ClientOptions["adoptLegacy"];
  /** Hot collections and how often at most their writes are pushed (default: the collections' declarations, `{ history: 30000 }` for the preset; see `ClientOptions`). */
  hot?: ClientOptions["hot"];
  /** How long a request may take before it counts as no answer, in ms (default 45000; see `ClientOptions`). */
  requestTimeout?: number;
  /** Hold the server's poke stream from the visible leader tab (a server run with `--poke sse`; default false). */
  pokes?: boolean;
}

/** Syncs `store` while the calling component is mounted; answers its status. */
export function useSyncStore<S extends Pick<SyncStore<Collections>, "start" | "stop" | "status">>(store: StoreApi<S>, options: UseUserSyncOptions = {}) {
  // Options left out take the client's defaults. An inline provider or adopter is a new
  // function each render, and an inline `hot` a new object: syncing restarts only when an
  // option's content changes or a function is added or removed, and always calls the latest.
  const latest = useRef(options);
  latest.current = options;
  const { getToken, adoptLegacy } = options;
  const key = JSON.stringify({ ...options, getToken: getToken !== undefined, adoptLegacy: adoptLegacy !== undefined });
  useEffect(() => {
    const current: TokenProvider | undefined = getToken && ((o) => latest.current.getToken!(o));
    const adopter: ClientOptions["adoptLegacy"] = adoptLegacy && ((scope) => latest.current.adoptLegacy!(scope));
    void store.getState().start({ ...options, getToken: current, adoptLegacy: adopter });
    return () => store.getState().stop();
    // By `key`: the options' content, not their identity.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [store, key]);
  return read(store, (s) => s.status);
}

/** Syncs the preset store (the seed's four collections) while the calling component is mounted. */
export function useUserSync(options?: UseUserSyncOptions) {
  return useSyncStore(userSync, options);
}

/** Reads from the preset store, re-rendering when the selected part changes. */
export function useSinkron<T>(selector: (state: UserSyncState) => T): T {
  return read(userSync, selector);
}

export { userSync };

/** A store's selected part, re-rendering when it changes (`Object.is`). */
function read<S, T>(store: StoreApi<S>, selector: (state: S) => T): T {
  return useSyncExternalStore(store.subscribe, () => selector(store.getState()), () => selector(store.getInitialState()));
}
