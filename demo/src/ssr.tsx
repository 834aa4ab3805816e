// The browser side of a server-rendered page: the store starts from the snapshot the page
// was rendered from (embedded by the server as `window.__SINKRON_SNAPSHOT__`), so hydration
// matches the server's HTML and the page makes no first pull.
import { hydrateRoot } from "react-dom/client";
import { createUserSyncStore, type Snapshot } from "sinkron";
import { History } from "./ssr-view";
import "./styles.css";

declare global {
  interface Window {
    __SINKRON_SNAPSHOT__?: Snapshot;
    /** Hydration errors React recovered from, for the browser tests. */
    hydrationErrors: string[];
  }
}

window.hydrationErrors = [];
const store = createUserSyncStore({ snapshot: window.__SINKRON_SNAPSHOT__ });
hydrateRoot(document.getElementById("root")!, <History store={store} />, {
  onRecoverableError: (error) => window.hydrationErrors.push(String(error)),
});
