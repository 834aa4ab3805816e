// A server-rendered page (`demo/ssr.html`), in Debian's Chromium against the real server: the
// site's server (this test) pulls the user's state with the user's token, renders the page
// from it with the package on Node (`demo/dist-ssr`, built by `vite build --ssr`) and embeds
// the snapshot; the browser hydrates from the same snapshot without a mismatch and makes no
// first pull.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { countRequests, launch, open, signIn, signUp, waitPressed, withServer } from "./support.mjs";

const root = new URL("..", import.meta.url).pathname;

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** The page as the site's server sends it: the rendered HTML and the snapshot. */
async function renderPage(snapshot) {
  const { render } = await import(`${root}/demo/dist-ssr/ssr-render.js`);
  // Inside a <script>, `<` would let a value close it.
  const json = JSON.stringify(snapshot).replace(/</g, "\\u003c");
  return readFileSync(`${root}/demo/dist/ssr.html`, "utf8")
    .replace("<!--ssr-->", render(snapshot))
    .replace("<!--snapshot-->", `<script>window.__SINKRON_SNAPSHOT__ = ${json};</script>`);
}

/** Another device's write of one record, pushed as that device (`tv-1`). */
async function pushFromTv(server, token, id, collection, key, value) {
  const body = { clientId: "tv-1", lastSync: null, mutations: [{ id, collection, key, value, updatedAt: Date.now() }] };
  const pushed = await fetch(`${server.url}/api/user/me/changes`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(pushed.status, 200);
}

describe("a server-rendered page", () => {
  test("hydrates from the snapshot it was rendered from, without a mismatch and without a first pull", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      // A returning user: signed in on this browser before.
      const demo = await open(context, server);
      const token = await signUp(demo, "rendered");
      await demo.close();
      // Another device wrote since: only the snapshot brings it before a pull would.
      const tv = { clientId: "tv-1", lastSync: null, mutations: [{ id: 1, collection: "history", key: "ep-7", value: { showId: "s01", position: 132 }, updatedAt: Date.now() }] };
      const pushed = await fetch(`${server.url}/api/user/me/changes`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify(tv),
      });
      assert.equal(pushed.status, 200);
      const snapshot = await server.state(token);
      const html = await renderPage(snapshot);
      assert.match(html, /data-episode="ep-7" data-position="132"/, "rendered on the server");

      await context.route(`${server.url}/ssr.html`, (route) => route.fulfill({ contentType: "text/html", body: html }));
      const page = await context.newPage();
      const requests = countRequests(page);
      const errors = [];
      page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
      await page.goto(`${server.url}/ssr.html`);
      await page.locator('[data-testid="sync-status"][data-ready="true"]').waitFor();
      assert.deepEqual(await page.evaluate(() => window.hydrationErrors), []);
      assert.deepEqual(errors, []);
      const shown = () => page.getByTestId("entry").evaluateAll((items) => items.map((li) => [li.dataset.episode, li.dataset.position]));
      assert.deepEqual(await shown(), [["ep-7", "132"]]);
      // A write is pushed from the snapshot's cursor; until then, nothing was asked of the server.
      await page.getByTestId("favorite").click();
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.deepEqual(requests.log, ["POST /api/user/me/changes"]);
      assert.deepEqual(await shown(), [["ep-7", "132"]]);
      await context.close();
    }));

  test("one kept from long ago does not bring back what was deleted since, in its tab or the others", () =>
    withServer((first) => keptFromLongAgo(first, []), ["--tombstone-ttl-secs", "0"]));

  test("one kept from long ago whose snapshot was the first of several pages is not taken either", () =>
    // With two records to a page, the kept page's snapshot names a place inside a whole state,
    // not a version: it is taken only where nothing is stored.
    withServer(
      (first) =>
        keptFromLongAgo(first, [
          ["favorites", "s02"],
          ["favorites", "s03"],
        ]),
      ["--tombstone-ttl-secs", "0", "--page-size", "2"],
    ));
});

/**
 * A page rendered while the TV had watched an episode (and written `more` records after it),
 * kept, and opened again after the episode was removed and its tombstone compacted, in a
 * browser signed in since: neither its tab nor the others show the episode again.
 */
async function keptFromLongAgo(first, more) {
  const registered = await fetch(`${first.url}/api/auth/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "kept", password: "correct horse" }),
  });
  assert.equal(registered.status, 201);
  const { token } = await registered.json();
  // Watched on the TV; a page rendered then, and kept (a cache, a back button)...
  let id = 1;
  await pushFromTv(first, token, id++, "history", "s01e02", { showId: "s01", position: 132 });
  for (const [collection, key] of more) await pushFromTv(first, token, id++, collection, key, {});
  const snapshot = await first.state(token);
  assert.equal(snapshot.more ?? false, more.length > 0, "the snapshot is a first page exactly when records follow");
  const kept = await renderPage(snapshot);
  assert.match(kept, /data-episode="s01e02"/);
  // ...and removed from the history since, so long ago that the server compacted its
  // tombstone (its sweep runs at start, the TTL is 0 here, and the user's newest row is
  // always kept: a favourite comes after). This browser signs in after: its whole state
  // has no trace of the episode.
  await pushFromTv(first, token, id++, "history", "s01e02", null);
  await pushFromTv(first, token, id++, "favorites", "s05", {});
  const server = await first.restart();
  const context = await browser.newContext();
  try {
    const demo = await open(context, server);
    await signIn(demo, "kept");
    assert.equal(await demo.evaluate(() => localStorage.getItem("sinkron:v1:1:r:history:s01e02")), null, "no tombstone here");
    const cursor = await demo.evaluate(() => localStorage.getItem("sinkron:v1:1:c"));
    assert.equal(cursor, String(id - 1), "signed in at the server's version");

    await context.route(`${server.url}/ssr.html`, (route) => route.fulfill({ contentType: "text/html", body: kept }));
    const page = await context.newPage();
    await page.goto(`${server.url}/ssr.html`);
    await page.locator('[data-testid="sync-status"][data-ready="true"]').waitFor();
    assert.deepEqual(await page.evaluate(() => window.hydrationErrors), [], "hydrated from what it was rendered from");
    const shown = await page.getByTestId("entry").evaluateAll((items) => items.map((li) => li.dataset.episode));
    assert.deepEqual(shown, [], "the device's newer state, not the kept page's");
    assert.equal(await page.evaluate(() => localStorage.getItem("sinkron:v1:1:c")), cursor, "nor does the stored cursor go back");
    // Nor the other tab (a guard: the kept page's tab opens its channel only after taking
    // or refusing the snapshot, so the others hear its write, not the snapshot).
    await page.getByTestId("favorite").click();
    await waitPressed(demo, "favorite-s01");
    assert.equal(await demo.getByTestId("continue-s01e02").count(), 0, "nor does the other tab show it again");
    // What the page shows once synced is the server's state, which lacks the episode.
    await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
    assert.deepEqual(await page.getByTestId("entry").evaluateAll((items) => items.map((li) => li.dataset.episode)), []);
  } finally {
    await context.close();
    await server.stop();
  }
}
