// The site's server side of a server-rendered page (built with `vite build --ssr` into
// `dist-ssr`): the page's HTML from the snapshot the server pulled for the signed-in user
// (`GET /api/user/me` with the user's credentials). Nothing here touches `window`.
import { renderToString } from "react-dom/server";
import { createUserSyncStore, type Snapshot } from "sinkron";
import { History } from "./ssr-view";

export function render(snapshot: Snapshot): string {
  // One store per request: a store holds one user's data.
  return renderToString(<History store={createUserSyncStore({ snapshot })} />);
}
