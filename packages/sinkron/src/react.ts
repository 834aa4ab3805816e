// React binding: `useUserSync` starts and stops syncing; `useSinkron` reads the store.

import { useEffect, useRef } from "react";
import { useStore } from "zustand";
import type { ClientOptions, TokenProvider } from "./driver.js";
import { userSync, type UserSyncState } from "./store.js";

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
  /** Hot collections and how often at most their writes are pushed (default `{ history: 30000 }`; see `ClientOptions`). */
  hot?: ClientOptions["hot"];
  /** Hold the server's poke stream from the visible leader tab (a server run with `--poke sse`; default false). */
  pokes?: boolean;
}

/** Syncs the user's data while the calling component is mounted. */
export function useUserSync({ interval = 30000, onFocus = true, onLogin = true, crossTab = true, baseUrl, getToken, cookie = false, adoptLegacy, hot, pokes = false }: UseUserSyncOptions = {}) {
  // An inline provider or adopter is a new function each render: syncing restarts only when
  // one is added or removed, and always calls the latest.
  const latest = useRef({ getToken, adoptLegacy });
  latest.current = { getToken, adoptLegacy };
  const tokens = getToken !== undefined;
  const adopts = adoptLegacy !== undefined;
  // An inline object is new each render: syncing restarts only when its content changes.
  const hotKey = JSON.stringify(hot);
  useEffect(() => {
    const current: TokenProvider | undefined = tokens ? (o) => latest.current.getToken!(o) : undefined;
    const adopter: ClientOptions["adoptLegacy"] = adopts ? (scope) => latest.current.adoptLegacy!(scope) : undefined;
    void userSync.getState().start({ interval, onFocus, onLogin, crossTab, baseUrl, getToken: current, cookie, adoptLegacy: adopter, hot, pokes });
    return () => userSync.getState().stop();
    // `hot` by its content (`hotKey`): an equal object is no change.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [interval, onFocus, onLogin, crossTab, baseUrl, tokens, cookie, adopts, hotKey, pokes]);
  return useStore(userSync, (s) => s.status);
}

/** Reads from the user sync store, re-rendering when the selected part changes. */
export function useSinkron<T>(selector: (state: UserSyncState) => T): T {
  return useStore(userSync, selector);
}

export { userSync };
