// A page left and come back to with the browser's Back button: restored from the back/forward
// cache (frozen while away, not reloaded), or reloaded when the browser evicted it or when the
// page itself cannot go on (what it missed while frozen changed what is stored). Either way
// it shows what happened meanwhile and keeps syncing. Playwright turns the cache off by
// default; these pages have it on, as a user's browser does.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { anotherSite, launch, open, pressed, recordsOf, settled, signIn, signUp, until, waitPressed, withServer } from "./support.mjs";

/** The client id a page's tab holds (the driver keeps it in `sessionStorage`). */
const tabId = (page) => page.evaluate(() => sessionStorage.getItem("sinkron:v1:tab"));

let browser;
let elsewhere;
let plain;
before(async () => {
  browser = await launch({ backForwardCache: true });
  // Another site the user visits in between.
  plain = await anotherSite();
  elsewhere = plain.url;
});
after(async () => {
  await browser?.close();
  plain?.close();
});

/**
 * Runs `before` on `page`, leaves it at once for another site (or `to`), runs `meanwhile`, and
 * returns with Back; whether the page came from the cache.
 */
async function awayAndBack(page, { before = async () => {}, to = elsewhere, meanwhile = async () => {} } = {}) {
  await page.evaluate(() => addEventListener("pageshow", (e) => (window.restoredFromCache = e.persisted)));
  await before();
  await page.goto(to);
  await meanwhile();
  // A page restored from the cache fires no load event.
  await page.goBack({ waitUntil: "commit" });
  await page.getByTestId("sync-status").waitFor();
  return page.evaluate(() => window.restoredFromCache === true);
}

describe("back/forward cache", () => {
  test("a page restored from the cache pulls at once and shows what another device wrote while it was away", () =>
    withServer(async (server) => {
      const phone = await browser.newContext();
      const a = await open(phone, server);
      await signUp(a, "returner");
      const laptop = await browser.newContext();
      const b = await open(laptop, server);
      await signIn(b, "returner");
      // Away for longer than the few seconds in which a pull counts as fresh (the page's
      // clock moved on), so coming back is a reason to pull: Chromium shows the page (a
      // `visibilitychange`) before its `pageshow`, while the page's tab channel is still
      // closed.
      await phone.clock.install();
      await phone.clock.fastForward(5000);

      const pulls = [];
      a.on("request", (r) => new URL(r.url()).pathname === "/api/user/me" && r.method() === "GET" && pulls.push(r.url()));
      const restored = await awayAndBack(a, {
        meanwhile: async () => {
          await b.getByTestId("favorite-s04").click();
          await settled(b);
        },
      });
      assert.equal(restored, true, "the page came back from the back/forward cache");
      // At once: its poll interval (30 s) is far from due.
      await waitPressed(a, "favorite-s04", "true", 5000);
      assert.equal(pulls.length, 1, `pulls after the restore: ${pulls}`);
      await phone.close();
      await laptop.close();
    }));

  test("restored beside another tab of the site, the page has that tab pull at once and shows what another device wrote", () =>
    withServer(async (server) => {
      const phone = await browser.newContext();
      const a = await open(phone, server);
      await signUp(a, "neighbour");
      // The device's other tab, which leads while the page is away.
      const beside = await open(phone, server);
      await settled(beside);
      const pulls = [];
      beside.on("request", (r) => new URL(r.url()).pathname === "/api/user/me" && r.method() === "GET" && pulls.push(r.url()));
      const laptop = await browser.newContext();
      const b = await open(laptop, server);
      await signIn(b, "neighbour");
      // Past the few seconds in which a pull counts as fresh.
      await phone.clock.install();
      await phone.clock.fastForward(5000);

      let before;
      const restored = await awayAndBack(a, {
        meanwhile: async () => {
          await b.getByTestId("favorite-s09").click();
          await settled(b);
          // The other tab took the lead, and pulled, as the page left: that pull too is
          // some seconds old when the page comes back.
          await phone.clock.fastForward(5000);
          before = pulls.length;
        },
      });
      assert.equal(restored, true, "the page came back from the back/forward cache");
      // At once, though the leader's poll interval (30 s) is far from due: the page shown
      // again asked the leader for the state.
      await waitPressed(a, "favorite-s09", "true", 5000);
      assert.equal(pulls.length - before, 1, `the leader's pulls: ${pulls}`);
      await phone.close();
      await laptop.close();
    }));

  test("a write made as the page is left reaches the server, and the restored page goes on syncing", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      const auth = await signUp(page, "leaver");
      await settled(page);
      // The click and then leaving at once, before the push's short wait is over: the flush
      // as the page is hidden sends it, and its answer waits in the frozen page.
      const restored = await awayAndBack(page, {
        before: () => page.getByTestId("favorite-s05").click(),
        meanwhile: () => until(async () => "s05" in recordsOf(await server.state(auth), "favorites"), { what: "the write to reach the server" }),
      });
      assert.equal(restored, true, "the page came back from the back/forward cache");
      assert.equal(await pressed(page, "favorite-s05"), "true");
      await settled(page);
      await page.getByTestId("favorite-s06").click();
      await settled(page);
      assert.deepEqual(recordsOf(await server.state(auth), "favorites"), { s05: {}, s06: {} });
      await context.close();
    }));

  test("a write the app makes from its own pagehide handler is stored without an error, and the page sends it when back", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      const auth = await signUp(page, "lastword");
      await settled(page);
      const errors = [];
      page.on("pageerror", (e) => errors.push(e.message));
      // The app's listener, added after the driver's: a click as the page goes (as a player
      // saving its position would write), when the driver has let its tab channel go. Once:
      // the page's reload when back (below) is a `pagehide` too.
      await page.evaluate(() => addEventListener("pagehide", () => document.querySelector("[data-testid=favorite-s08]").click(), { once: true }));
      // Back from the cache, the page finds what it stores changed (this write) and reloads.
      await awayAndBack(page);
      await waitPressed(page, "favorite-s08", "true", 5000);
      await settled(page);
      assert.deepEqual(recordsOf(await server.state(auth), "favorites"), { s08: {} });
      assert.deepEqual(errors, [], "no error as the page went");
      await context.close();
    }));

  test("signed out in another tab while the page was away: back, it shows none of the user's data", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      await signUp(page, "sharer");
      await page.getByTestId("favorite-s07").click();
      await settled(page);
      await awayAndBack(page, {
        meanwhile: async () => {
          const other = await open(context, server);
          await other.getByTestId("logout").click();
          await other.getByTestId("login-username").waitFor();
          await other.close();
        },
      });
      // Restored and told, or reloaded from the signed-out storage: signed out either way.
      await page.getByTestId("login-username").waitFor();
      assert.equal(await pressed(page, "favorite-s07"), "false");
      const left = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.includes(":r:") || k.endsWith(":session")));
      assert.deepEqual(left, []);
      await context.close();
    }));

  test("left for another page of the same site and back: restored from the cache, each page under its own id, every write kept", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      const auth = await signUp(page, "pager");
      await page.getByTestId("favorite-s01").click();
      await settled(page);
      const first = await tabId(page);
      let second;
      // A site of many pages: the next one syncs too (the Web Locks and the channel it asks
      // for evicted the first page from the cache, as long as that page held them), and the
      // user only looks at it.
      const restored = await awayAndBack(page, {
        to: `${server.url}/?interval=30000&page=2`,
        meanwhile: async () => {
          await settled(page);
          assert.equal(await pressed(page, "favorite-s01"), "true");
          second = await tabId(page);
        },
      });
      assert.equal(restored, true, "the page came back from the back/forward cache");
      assert.notEqual(second, first, "the next page took an id of its own");
      assert.equal(await tabId(page), first, "the first page holds its id again");
      await page.getByTestId("favorite-s02").click();
      await settled(page);
      assert.deepEqual(recordsOf(await server.state(auth), "favorites"), { s01: {}, s02: {} });

      // Had the next page synced something new (a write of its own), this one reloads on the
      // way back: it did not hear what the tabs said meanwhile.
      const again = await awayAndBack(page, {
        to: `${server.url}/?interval=30000&page=3`,
        meanwhile: async () => {
          await settled(page);
          await page.getByTestId("favorite-s03").click();
          await settled(page);
        },
      });
      assert.equal(again, false, "the page reloaded");
      await waitPressed(page, "favorite-s03", "true", 5000);
      assert.deepEqual(recordsOf(await server.state(auth), "favorites"), { s01: {}, s02: {}, s03: {} });
      await context.close();
    }));

  test("its id taken over by another tab while it was away: back, the page reloads rather than reuse the id's numbering", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      const auth = await signUp(page, "lender");
      await page.getByTestId("favorite-s01").click();
      await settled(page);
      const first = await tabId(page);
      const restored = await awayAndBack(page, {
        meanwhile: async () => {
          // A new tab takes over the outbox of the page away (its tab lock is free) and
          // writes under its id; then it is closed.
          const other = await open(context, server);
          await settled(other);
          assert.equal(await tabId(other), first, "the new tab took over the id of the page away");
          await other.getByTestId("favorite-s02").click();
          await settled(other);
          await other.close();
        },
      });
      // Reloaded, it goes on with the id's numbering as the other tab left it (kept, its next
      // write would reuse an id the server has seen, to be refused and sent again renumbered).
      assert.equal(restored, false, "the page reloaded");
      await settled(page);
      await page.getByTestId("favorite-s03").click();
      await settled(page);
      assert.deepEqual(recordsOf(await server.state(auth), "favorites"), { s01: {}, s02: {}, s03: {} });
      await context.close();
    }));

  test("its unsent write sent under its id by another tab while it was away (the answer lost): back, the page reloads, and a later undo of the write is not lost", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      const auth = await signUp(page, "courier");
      await settled(page);
      const first = await tabId(page);
      // The page's pushes fail (cut off): its write stays unsent.
      await page.route("**/api/user/me/changes", (route) => route.abort("internetdisconnected"));
      await page.getByTestId("favorite-s04").click();
      await page.locator('[data-testid="sync-status"][data-state="offline"]').waitFor();
      const restored = await awayAndBack(page, {
        meanwhile: async () => {
          // A new tab takes over the outbox of the page away (its tab lock is free) and sends
          // its write under the page's id and numbering; the server takes it, but the answer
          // never arrives (nor any other answer: nothing else it stores changes).
          const other = await context.newPage();
          await other.route("**/api/**", async (route) => {
            if (route.request().url().endsWith("/changes")) await route.fetch().catch(() => undefined);
            await route.abort("connectionreset").catch(() => undefined);
          });
          await other.goto(`${server.url}/?interval=30000`);
          await until(async () => (await tabId(other)) === first, { what: "the new tab to take over the id of the page away" });
          await until(async () => "s04" in recordsOf(await server.state(auth), "favorites"), { what: "the write on the server" });
          await other.close();
        },
      });
      assert.equal(restored, false, "the page reloaded");
      await page.unroute("**/api/user/me/changes");
      await settled(page);
      // Undone: were the page to go on with its old view of what it sent, the undo would take
      // the id the other tab sent and be skipped by the server as its retry.
      await page.getByTestId("favorite-s04").click();
      await settled(page);
      assert.deepEqual(recordsOf(await server.state(auth), "favorites"), {});
      await context.close();
    }));

  test("offline when it was left and online again meanwhile: back from the cache, the page knows and syncs", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      await signUp(page, "wanderer");
      await settled(page);
      await context.setOffline(true);
      await page.locator('[data-testid="sync-status"][data-state="offline"]').waitFor();
      // Left for a page that needs no network, and the network is back before Back: no
      // `online` event reaches a page in the cache.
      const restored = await awayAndBack(page, {
        to: "data:text/html,<title>away</title><p>away</p>",
        meanwhile: () => context.setOffline(false),
      });
      assert.equal(restored, true, "the page came back from the back/forward cache");
      await page.locator('[data-testid="sync-status"][data-state="synced"]').waitFor({ timeout: 5000 });
      await page.getByTestId("favorite-s08").click();
      await settled(page);
      await context.close();
    }));
});
