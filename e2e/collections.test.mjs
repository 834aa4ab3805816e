// An app with collections of its own (`demo/custom.html`: bookmarks, declared with
// `defineCollections`), in Debian's Chromium against the real server.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { launch, open, openEpisodes, recordsOf, signIn, signUp, waitPressed, withServer } from "./support.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

describe("an app's own collections", () => {
  const BOOKMARKS = ["--collections", "history,favorites,likes,settings,bookmarks"];
  const add = async (page, url, note) => {
    await page.getByTestId("url").fill(url);
    await page.getByTestId("note").fill(note);
    await page.getByTestId("add").click();
  };
  const shown = (page) => page.getByTestId("bookmark").evaluateAll((items) => items.map((li) => li.dataset.url));

  test("a collection declared with defineCollections syncs to another device, and the server holds it", () =>
    withServer(async (server) => {
      const phone = await browser.newContext();
      const laptop = await browser.newContext();
      const a = await open(phone, server, { path: "/custom.html", interval: 1000 });
      const token = await signUp(a, "collector");
      await add(a, "https://example.org/a", "read later");
      // Optimistic: on the page before the server answers.
      await a.locator('[data-testid="bookmark"][data-url="https://example.org/a"]').waitFor();
      await a.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      const b = await open(laptop, server, { path: "/custom.html", interval: 1000 });
      await signIn(b, "collector");
      await b.locator('[data-testid="bookmark"][data-url="https://example.org/a"]').waitFor();
      await add(b, "https://example.org/b", "from the laptop");
      await a.locator('[data-testid="bookmark"][data-url="https://example.org/b"]').waitFor({ timeout: 15000 });
      assert.deepEqual(await shown(a), ["https://example.org/b", "https://example.org/a"]);
      const state = await server.state(token);
      assert.deepEqual(recordsOf(state, "bookmarks"), {
        "https://example.org/a": { url: "https://example.org/a", note: "read later" },
        "https://example.org/b": { url: "https://example.org/b", note: "from the laptop" },
      });
      await phone.close();
      await laptop.close();
    }, BOOKMARKS));

  test("merged per field, a note edited on one device and read marked offline on another both survive", () =>
    withServer(async (server) => {
      const phone = await browser.newContext();
      const laptop = await browser.newContext();
      const a = await open(phone, server, { path: "/custom.html", interval: 1000 });
      const token = await signUp(a, "merger");
      const url = "https://example.org/m";
      const item = (page, attrs) => page.locator(`[data-testid="bookmark"][data-url="${url}"]${attrs}`);
      const synced = (page) => page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor({ timeout: 15000 });
      await add(a, url, "first");
      await synced(a);
      const b = await open(laptop, server, { path: "/custom.html", interval: 1000 });
      await signIn(b, "merger");
      await item(b, '[data-note="first"]').waitFor();
      const pushes = [];
      a.on("request", (r) => {
        if (r.method() === "POST" && new URL(r.url()).pathname === "/api/user/me/changes") pushes.push(r.postDataJSON());
      });
      // The phone, offline, marks it read; meanwhile the laptop edits its note.
      await phone.setOffline(true);
      await item(a, "").getByTestId("read").click();
      await item(a, '[data-read="true"][data-note="first"]').waitFor();
      await add(b, url, "edited on the laptop");
      await synced(b);
      await phone.setOffline(false);
      // The phone's write is newer, but sets only `read`: the laptop's note stays.
      await item(a, '[data-read="true"][data-note="edited on the laptop"]').waitFor({ timeout: 15000 });
      await item(b, '[data-read="true"][data-note="edited on the laptop"]').waitFor({ timeout: 15000 });
      assert.deepEqual(recordsOf(await server.state(token), "bookmarks"), { [url]: { url, note: "edited on the laptop", read: true } });
      assert.deepEqual(
        pushes.flatMap((p) => p.mutations.map((m) => m.fields)),
        [["read"]],
      );
      await phone.close();
      await laptop.close();
    }, [...BOOKMARKS, "--merge-fields", "bookmarks"]));

  test("merged per field, a crashed tab's unsent write older than what the leader shows still reaches the server", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      // B leads (first to sign in) and polls every second; A only writes.
      const b = await open(context, server, { path: "/custom.html", interval: 1000 });
      const token = await signUp(b, "taker");
      const a = await open(context, server, { path: "/custom.html" });
      const url = "https://example.org/t";
      const item = (page, attrs) => page.locator(`[data-testid="bookmark"][data-url="${url}"]${attrs}`);
      const synced = (page) => page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor({ timeout: 15000 });
      await add(a, url, "first");
      await synced(a);
      await item(b, '[data-note="first"]').waitFor();
      // Pushes fail: A marks it read, then B edits the note, a newer write of another field;
      // A's renderer dies (no pagehide, no flush), its write left stored.
      let down = true;
      await context.route("**/api/user/me/changes", (route) => (down && route.request().method() === "POST" ? route.abort() : route.continue()));
      await item(a, "").getByTestId("read").click();
      await item(b, '[data-read="true"]').waitFor();
      await add(b, url, "edited");
      await item(b, '[data-note="edited"]').waitFor();
      const crashed = new Promise((resolve) => a.once("crash", resolve));
      void (await context.newCDPSession(a)).send("Page.crash").catch(() => undefined);
      await crashed;
      // Back up: B's next pull takes the gone tab's write over. Older than what B shows, it
      // still counts: the server merges the bookmark per field.
      down = false;
      await synced(b);
      await item(b, '[data-read="true"][data-note="edited"]').waitFor({ timeout: 15000 });
      assert.deepEqual(recordsOf(await server.state(token), "bookmarks"), { [url]: { url, note: "edited", read: true } });
      await context.close();
    }, [...BOOKMARKS, "--merge-fields", "bookmarks"]));

  test("a sticky field marked offline and un-marked before the push still reaches the server, which keeps it", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server, { path: "/custom.html", interval: 1000 });
      const token = await signUp(page, "sticky");
      const url = "https://example.org/s";
      const item = (attrs) => page.locator(`[data-testid="bookmark"][data-url="${url}"]${attrs}`);
      await add(page, url, "to read");
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      const pushes = [];
      page.on("request", (r) => {
        if (r.method() === "POST" && new URL(r.url()).pathname === "/api/user/me/changes") pushes.push(r.postDataJSON());
      });
      // Offline: read, then un-read by mistake. The page shows the un-mark at once.
      await context.setOffline(true);
      await item("").getByTestId("read").click();
      await item('[data-read="true"]').waitFor();
      await item("").getByTestId("read").click();
      await item('[data-read="false"]').waitFor();
      await context.setOffline(false);
      // Both writes go, in order; the server keeps `read` (sticky), and the page shows what
      // the server holds once the push is answered.
      await item('[data-read="true"]').waitFor({ timeout: 15000 });
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.deepEqual(recordsOf(await server.state(token), "bookmarks"), { [url]: { url, note: "to read", read: true } });
      assert.deepEqual(
        pushes.flatMap((p) => p.mutations.map((m) => [m.fields, m.value.read])),
        [
          [["read"], true],
          [["read"], false],
        ],
      );
      await context.close();
    }, [...BOOKMARKS, "--merge-fields", "bookmarks:read"]));

  test("a server that does not know the collection refuses it, and the page shows the refusal", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server, { path: "/custom.html", interval: 1000 });
      const token = await signUp(page, "unknown");
      await add(page, "https://example.org/c", "refused");
      await page.locator('[data-testid="sync-status"][data-error="rejected"]').waitFor();
      assert.deepEqual(recordsOf(await server.state(token), "bookmarks"), {});
      await context.close();
    }));

  test("a write the server refuses is set aside, and the other writes of its push still sync", () =>
    withServer(
      async (server) => {
        const context = await browser.newContext();
        const page = await open(context, server);
        const token = await signUp(page, "partly");
        await openEpisodes(page, "s04");
        const pushes = [];
        page.on("request", (r) => {
          if (r.method() === "POST" && new URL(r.url()).pathname === "/api/user/me/changes") pushes.push(r.postDataJSON());
        });
        // Offline, the three writes wait for one push: a like (a collection this server
        // does not know) between two favourites.
        await context.setOffline(true);
        await page.getByTestId("favorite-s03").click();
        await page.getByTestId("like-s04e01").click();
        await page.getByTestId("favorite-s04").click();
        await waitPressed(page, "like-s04e01");
        await context.setOffline(false);
        await page.locator('[data-testid="sync-status"][data-error="rejected"][data-pending="0"]').waitFor();
        // The like shows no more; the favourites stay, and the server holds them.
        await waitPressed(page, "like-s04e01", "false");
        await waitPressed(page, "favorite-s03");
        const state = await server.state(token);
        assert.deepEqual(Object.keys(recordsOf(state, "favorites")).sort(), ["s03", "s04"]);
        assert.deepEqual(recordsOf(state, "likes"), {});
        // One push with all three, refused for the like; then the two favourites at once.
        const sent = pushes.map((p) => p.mutations.map((m) => `${m.collection}/${m.key}`));
        assert.deepEqual(sent, [["favorites/s03", "likes/s04e01", "favorites/s04"], ["favorites/s03", "favorites/s04"]]);
        await context.close();
      },
      ["--collections", "history,favorites,settings"],
    ));
});
