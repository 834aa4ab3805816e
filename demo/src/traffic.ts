// What this tab sent to the sync API since the page loaded, read from the browser's own
// record of its requests (Resource Timing), so the package needs no hook for it. Pulls are
// `GET /api/user/me`, pushes `POST /api/user/me/changes` (docs/PROTOCOL.md): each path has
// one method, so the path tells them apart. A pull answered `304 Not Modified` is known by
// its `responseStatus`; the API's origin does not matter (`?api=` may name another one).

export interface Traffic {
  pulls: number;
  /** Pulls answered 304: nothing changed, no body. */
  notModified: number;
  pushes: number;
}

const PULL = "/api/user/me";
const PUSH = "/api/user/me/changes";

let traffic: Traffic = { pulls: 0, notModified: 0, pushes: 0 };
const listeners = new Set<() => void>();

function record(entries: PerformanceEntryList) {
  const next = { ...traffic };
  for (const entry of entries as PerformanceResourceTiming[]) {
    const path = new URL(entry.name).pathname;
    if (path === PULL) {
      next.pulls++;
      if (entry.responseStatus === 304) next.notModified++;
    } else if (path === PUSH) {
      next.pushes++;
    }
  }
  if (next.pulls === traffic.pulls && next.pushes === traffic.pushes) return;
  traffic = next;
  for (const listener of listeners) listener();
}

// From the module's load; `buffered` adds the requests made before it (the timing buffer
// holds the page's first 250; the observer gets every one after).
if (typeof PerformanceObserver !== "undefined") {
  new PerformanceObserver((list) => record(list.getEntries())).observe({ type: "resource", buffered: true });
}

/** For `useSyncExternalStore`. */
export function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export const snapshot = (): Traffic => traffic;
