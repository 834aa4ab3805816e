// React binding: `useUserSync` starts and stops syncing; `useSinkron` reads the store.

import { useEffect, useRef } from "react";
import { useStore } from "zustand";
import type { TokenProvider } from "./driver.js";
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
}

/** Syncs the user's data while the calling component is mounted. */
export function useUserSync({ interval = 30000, onFocus = true, onLogin = true, crossTab = true, baseUrl, getToken, cookie = false }: UseUserSyncOptions = {}) {
  // An inline provider is a new function each render: syncing restarts only when one is
  // added or removed, and always calls the latest.
  const provider = useRef(getToken);
  provider.current = getToken;
  const tokens = getToken !== undefined;
  useEffect(() => {
    const current: TokenProvider | undefined = tokens ? (o) => provider.current!(o) : undefined;
    void userSync.getState().start({ interval, onFocus, onLogin, crossTab, baseUrl, getToken: current, cookie });
    return () => userSync.getState().stop();
  }, [interval, onFocus, onLogin, crossTab, baseUrl, tokens, cookie]);
  return useStore(userSync, (s) => s.status);
}

/** Reads from the user sync store, re-rendering when the selected part changes. */
export function useSinkron<T>(selector: (state: UserSyncState) => T): T {
  return useStore(userSync, selector);
}

export { userSync };
