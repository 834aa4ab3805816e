// A server-rendered page (`demo/ssr.html`), in Debian's Chromium against the real server: the
// site's server (this test) pulls the user's state with the user's token, renders the page
// from it with the package on Node (`demo/dist-ssr`, built by `vite build --ssr`) and embeds
// the snapshot; the browser hydrates from the same snapshot without a mismatch and makes no
// first pull.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { countRequests, launch, open, signUp, withServer } from "./support.mjs";

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
});
