// The site's own sign-in in Chromium: a stand-in site with its own users issues the tokens
// (HS256; RS256 through a JWKS document it rotates; an HttpOnly cookie), serves the demo,
// and Sinkron, on another origin, trusts them.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { countRequests, launch, settled as settledPage, storageArrivesLate, syncedState, until, waitPressed } from "./support.mjs";
import { openDemo, withSite } from "./site.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** Signs in through the site's own login form. */
async function siteSignIn(page, username) {
  await page.getByTestId("login-username").fill(username);
  await page.getByTestId("login-password").fill("correct horse");
  await page.getByTestId("login-submit").click();
  await page.getByTestId("logout").waitFor();
  await syncedState(page);
}

const favoritesOf = (state) =>
  state.changes.filter((c) => c.collection === "favorites" && c.value !== null).map((c) => c.key).sort();

/** Statuses of the page's answers from Sinkron, in order. */
function answers(page, sinkron) {
  const statuses = [];
  page.on("response", (r) => {
    if (r.url().startsWith(`${sinkron.url}/api/`)) statuses.push(r.status());
  });
  return statuses;
}

describe("the site's own sign-in", () => {
  test("HS256: a guest's write joins the account, a second device converges, an expired token is refreshed", () =>
    withSite({ alg: "HS256" }, async (site, sinkron) => {
      const phone = await browser.newContext();
      const a = await openDemo(phone, site, sinkron);
      const statuses = answers(a, sinkron);
      // As a guest: nothing goes to Sinkron.
      const counts = countRequests(a);
      await a.getByTestId("favorite-s11").click();
      assert.equal(counts.all, 0, `a guest called the API: ${counts.log}`);

      await siteSignIn(a, "ana");
      const user = site.userId("ana");
      assert.equal(await a.getByTestId("username").textContent(), user);
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(user))), ["s11"], "the guest's write joined the account");

      // A second device of the same user converges.
      const tv = await browser.newContext();
      const b = await openDemo(tv, site, sinkron, { interval: 300 });
      await siteSignIn(b, "ana");
      await waitPressed(b, "favorite-s11");

      // The site's token expires while the page is away, and the phone's clock is two hours
      // behind, so the page takes the token it is given on reload for one with an hour left:
      // the server refuses it with token_expired, the provider is asked for a new token, and
      // the request goes through again; so does the write.
      const refreshes = [];
      a.on("request", (r) => r.url().endsWith("/site/token?refresh=1") && refreshes.push(r.url()));
      await phone.addInitScript(() => {
        const now = Date.now;
        Date.now = () => now() - 2 * 3600 * 1000;
      });
      site.expire(user);
      await a.reload();
      await a.getByTestId("favorite-s12").click();
      await a.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.equal(refreshes.length, 1, "one refresh");
      assert.ok(statuses.includes(401), `a 401 token_expired came first: ${statuses}`);
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(user))), ["s11", "s12"]);
      await waitPressed(b, "favorite-s12");

      // Signing out at the site wipes the user's data from the device.
      await a.getByTestId("logout").click();
      await a.getByTestId("login-submit").waitFor();
      await waitPressed(a, "favorite-s11", "false");
      await phone.close();
      await tv.close();
    }));

  test("the site's token is asked for at start and sign-in, then sent again while it lasts: not one site request per Sinkron request", () =>
    withSite({}, async (site, sinkron) => {
      const context = await browser.newContext();
      const page = await openDemo(context, site, sinkron, { interval: 300 });
      await siteSignIn(page, "lia");
      const asked = site.counts.token;
      const counts = countRequests(page);
      for (const show of ["s05", "s06", "s07"]) {
        await page.getByTestId(`favorite-${show}`).click();
        await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      }
      await until(() => counts.pulls >= 3, { what: () => `pulls: ${counts.log}` });
      assert.ok(counts.pushes >= 3, `three pushes: ${counts.log}`);
      assert.equal(site.counts.token, asked, `the site was not asked again for ${counts.all} requests to Sinkron`);
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(site.userId("lia")))), ["s05", "s06", "s07"]);
      await context.close();
    }));

  test("a token endpoint slower than the request timeout holds nothing back: the request is timed once it is sent", () =>
    withSite({}, async (site, sinkron) => {
      const context = await browser.newContext();
      const query = "&requestTimeout=1500";
      const page = await openDemo(context, site, sinkron, { query });
      await siteSignIn(page, "ivo");
      // Every state the sync status shows from the next page load on.
      await context.addInitScript(() => {
        window.seenStates = [];
        new MutationObserver((records) => {
          for (const r of records) if (r.target.dataset?.testid === "sync-status") window.seenStates.push(r.target.dataset.state);
        }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
      });
      // The site's token endpoint now answers after 2.5 s, longer than Sinkron's requests may
      // take; the reloaded page asks it before its first pull.
      const slowAnswers = [];
      await context.route("**/site/token*", async (route) => {
        const response = await route.fetch();
        await new Promise((resolve) => setTimeout(resolve, 2500));
        slowAnswers.push(route.request().url());
        await route.fulfill({ response });
      });
      const counts = countRequests(page);
      await page.reload();
      await page.getByTestId("favorite-s09").click();
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.ok(slowAnswers.length >= 1, "the provider was asked, slowly");
      const seen = await page.evaluate(() => window.seenStates);
      assert.ok(!seen.includes("offline"), `a request counted as unanswered while the provider was asked: ${seen} (${counts.log})`);
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(site.userId("ivo")))), ["s09"]);
      await context.close();
    }));

  test("a token endpoint that never answers holds syncing back half a minute, not for ever", () =>
    withSite({}, async (site, sinkron) => {
      const context = await browser.newContext();
      const page = await openDemo(context, site, sinkron);
      await siteSignIn(page, "una");
      // The site's token endpoint stops answering (a request that hangs on a mobile link);
      // later, once the page has given up on it, it answers again.
      let hanging = true;
      const hung = [];
      await context.route("**/site/token*", async (route) => {
        if (hanging) return void hung.push(route);
        await route.continue();
      });
      await context.clock.install();
      await page.reload();
      await page.getByTestId("favorite-s10").click();
      await until(() => hung.length >= 1, { what: "the provider asked" });
      hanging = false;
      // Half a minute on, the request that waited for a token goes as unanswered, and the
      // retry asks the provider again.
      await page.clock.runFor(31_000);
      await until(
        async () => {
          await page.clock.runFor(1_000);
          return favoritesOf(await sinkron.state(site.token(site.userId("una")))).includes("s10");
        },
        { timeout: 20_000, what: "the favourite on the server" },
      );
      await context.close();
    }));

  test("the site erases a user: every signed-in device drops the user's data and sends none of it back", () =>
    withSite({ alg: "HS256", admin: true }, async (site, sinkron) => {
      const phone = await browser.newContext();
      const tv = await browser.newContext();
      const a = await openDemo(phone, site, sinkron, { interval: 300 });
      const b = await openDemo(tv, site, sinkron, { interval: 300 });
      await siteSignIn(a, "eve");
      await siteSignIn(b, "eve");
      const user = site.userId("eve");
      await a.getByTestId("favorite-s07").click();
      await waitPressed(b, "favorite-s07");

      // The TV is offline with a write it has not sent when the site erases the user.
      await tv.setOffline(true);
      await b.getByTestId("favorite-s08").click();
      const erased = await fetch(`${sinkron.url}/api/admin/users/${encodeURIComponent(user)}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${site.adminKey}` },
      });
      assert.equal(erased.status, 204);

      // The phone's next poll is answered with a reset of nothing: its copy goes.
      await waitPressed(a, "favorite-s07", "false");
      // Back online, the TV sends its old write (taken, not stored) and drops its copy too.
      await tv.setOffline(false);
      await b.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      await waitPressed(b, "favorite-s07", "false");
      await waitPressed(b, "favorite-s08", "false");
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(user))), [], "nothing came back");
      await waitPressed(a, "favorite-s08", "false");
      await phone.close();
      await tv.close();
    }));

  test("a tab follows another tab's sign-in and sends its guest writes, though the token the site keeps in localStorage reaches it after the message", () =>
    withSite({}, async (site, sinkron) => {
      const context = await browser.newContext();
      const a = await openDemo(context, site, sinkron, { query: "&keep=local" });
      const b = await openDemo(context, site, sinkron, { query: "&keep=local" });
      await storageArrivesLate(b, "site:token", 300);
      await b.getByTestId("favorite-s14").click();
      await siteSignIn(a, "kim");
      // B follows, and pushes its guest write into the account at once: with the account's
      // token, which its provider gives once the site's storage reaches it, not with none
      // (which would end the session here).
      await b.getByTestId("logout").waitFor();
      const user = site.userId("kim");
      await until(async () => favoritesOf(await sinkron.state(site.token(user))).includes("s14"), { what: "B's guest write on the server" });
      await b.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.equal(await b.getByTestId("sync-status").getAttribute("data-error"), "");
      await context.close();
    }));

  // Tokens that last 20 s: each has 30 s or less left, so the page asks the site for a new
  // one before each request, and the newest key signs the token sent.
  test("RS256 through the site's JWKS: a key rotation is picked up without restarting Sinkron; a token near expiry is renewed before it is sent", () =>
    withSite({ alg: "RS256", ttl: 20 }, async (site, sinkron) => {
      const context = await browser.newContext();
      const page = await openDemo(context, site, sinkron);
      const statuses = answers(page, sinkron);
      await siteSignIn(page, "rui");
      await page.getByTestId("favorite-s03").click();
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      const fetched = site.counts.jwks;
      const renewed = site.counts.refresh;

      // The site rotates its key: its tokens now name a key Sinkron has not seen.
      site.rotate();
      await page.getByTestId("favorite-s04").click();
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.ok(site.counts.jwks > fetched, "Sinkron fetched the key set again");
      assert.ok(site.counts.refresh > renewed, "the page asked the site to renew its token");
      assert.ok(!statuses.includes(401), `no request was refused: ${statuses}`);
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(site.userId("rui")))), ["s03", "s04"]);
      await context.close();
    }));

  test("a shared device: the site signs another user in while one's write waits; it never reaches the other's account, and reaches its own at her next sign-in", () =>
    withSite({}, async (site, sinkron) => {
      const context = await browser.newContext();
      let page = await openDemo(context, site, sinkron, { interval: 300 });
      await siteSignIn(page, "ana");
      // Sinkron cannot be reached: ana's write waits on the device as she closes the page.
      await context.route(`${sinkron.url}/**`, (route) => route.abort("connectionrefused"));
      await page.getByTestId("favorite-s05").click();
      await page.locator('[data-testid="sync-status"][data-pending="1"]').waitFor();
      await page.close();
      await context.unroute(`${sinkron.url}/**`);
      // Bo signs in at the site (its own login page, not this one), and opens the page.
      const login = await context.request.post(`${site.url}/site/login`, { data: { username: "bo", password: "correct horse" } });
      assert.equal(login.status(), 200);
      page = await openDemo(context, site, sinkron, { interval: 300 });
      const bo = site.userId("bo");
      await until(async () => (await page.getByTestId("username").textContent()) === bo, { what: "bo signed in" });
      await settledPage(page);
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(bo))), [], "ana's write went into bo's account");
      // Ana signs in here again: her write goes to her account, and to hers only.
      await page.getByTestId("logout").click();
      await page.getByTestId("login-submit").waitFor();
      await siteSignIn(page, "ana");
      const ana = site.userId("ana");
      await until(async () => favoritesOf(await sinkron.state(site.token(ana))).includes("s05"), { what: "ana's write in her account" });
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(bo))), []);
      await context.close();
    }));

  test("cookie mode: the site's HttpOnly cookie signs in; a push from another site's page is refused", () =>
    withSite({ cookie: "site_token" }, async (site, sinkron) => {
      const context = await browser.newContext();
      const page = await openDemo(context, site, sinkron, { auth: "cookie" });
      await page.getByTestId("favorite-s05").click();
      await siteSignIn(page, "cy");
      const user = site.userId("cy");
      assert.equal(await page.evaluate(() => document.cookie.includes("site_token")), false, "the token stays out of JavaScript");
      await page.getByTestId("favorite-s06").click();
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(user))), ["s05", "s06"]);

      // Another page in the same browser, on an origin Sinkron does not allow, tries a push
      // that the browser sends with the cookie.
      const evil = createServer((_, res) => {
        res.writeHead(200, { "content-type": "text/html" });
        res.end("<!doctype html><title>elsewhere</title>");
      });
      await new Promise((resolve) => evil.listen(0, "127.0.0.1", resolve));
      try {
        const other = await context.newPage();
        await other.goto(`http://127.0.0.1:${evil.address().port}/`);
        const refused = other.waitForResponse((r) => r.url().startsWith(`${sinkron.url}/api/user/me/changes`));
        await other.evaluate(async (api) => {
          const body = JSON.stringify({ clientId: "evil", mutations: [{ id: 1, collection: "favorites", key: "s99", value: {}, updatedAt: Date.now() }] });
          await fetch(`${api}/api/user/me/changes`, { method: "POST", mode: "no-cors", credentials: "include", body }).catch(() => undefined);
        }, sinkron.url);
        const response = await refused;
        // 403 forbidden_origin: the browser sent the cookie (without it the answer is 401).
        assert.equal(response.status(), 403);
      } finally {
        evil.closeAllConnections();
        await new Promise((resolve) => evil.close(resolve));
      }
      assert.deepEqual(favoritesOf(await sinkron.state(site.token(user))), ["s05", "s06"], "nothing written");
      await context.close();
    }));
});
