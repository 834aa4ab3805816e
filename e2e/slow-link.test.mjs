// A phone on a slow link, in Debian's Chromium against the real server: Chromium's own
// network throttling (the DevTools protocol's `Network.emulateNetworkConditions`) slows every
// byte the page receives and sends, so a request larger than the link carries within the
// request timeout is cut off, and sent again whole.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { launch, open, recordsOf, settled, signUp, syncedState, until, withServer } from "./support.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** Registers `username` through the API and stores `count` likes of about 4 kB each. */
async function accountWithLargeValues(server, username, count) {
  const post = async (path, body, token) => {
    const headers = { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) };
    const r = await fetch(`${server.url}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
    const text = await r.text();
    assert.equal(r.status < 300, true, `${path}: ${r.status} ${text}`);
    return JSON.parse(text);
  };
  const { token } = await post("/api/auth/register", { username, password: "correct horse" });
  const note = "x".repeat(4000);
  const mutations = Array.from({ length: count }, (_, i) => ({
    id: i + 1,
    collection: "likes",
    key: `s01e${String(i + 1).padStart(3, "0")}`,
    value: { note },
    updatedAt: 1_700_000_000_000 + i,
  }));
  await post("/api/user/me/changes", { clientId: "elsewhere", mutations }, token);
}

/** The requests to `path` the page saw fail (cut off by its timeout, say), as they fail. */
function failures(page, path) {
  const failed = [];
  page.on("requestfailed", (r) => new URL(r.url()).pathname === path && failed.push(r.failure()?.errorText));
  return failed;
}

/** Sets the page's link (`Network.emulateNetworkConditions`) now, and again with what it returns. */
async function throttle(context, page, conditions) {
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const set = (c) => cdp.send("Network.emulateNetworkConditions", c);
  await set(conditions);
  return set;
}

describe("a slow link", () => {
  test("a large state reaches a phone whose link carries less than it within the request timeout: page by page", () =>
    // 40 likes of 4 kB (about 165 kB) over 16 kB/s take 10 s, more than the page's 4 s
    // request timeout; pages of 16 kB take 1 s each.
    withServer(async (server) => {
      await accountWithLargeValues(server, "slow", 40);
      const context = await browser.newContext();
      try {
        const page = await open(context, server, { query: "&requestTimeout=4000" });
        const failed = failures(page, "/api/user/me");
        await throttle(context, page, { offline: false, latency: 50, downloadThroughput: 16 * 1024, uploadThroughput: 16 * 1024 });
        await page.getByTestId("login-username").fill("slow");
        await page.getByTestId("login-password").fill("correct horse");
        await page.getByTestId("login-submit").click();
        const stored = () => page.evaluate(() => Object.keys(localStorage).filter((k) => k.includes(":r:likes:")).length);
        await until(async () => (await stored()) === 40, { timeout: 45_000, what: "every like stored on the phone" });
        await syncedState(page);
        assert.deepEqual(failed, [], "no pull was cut off");
      } finally {
        await context.close();
      }
    }, ["--page-bytes", "16384"]));

  test("a large outbox leaves a phone whose uplink carries less than it within the request timeout: push by push", () =>
    // 40 bookmarks with notes of 3.9 kB (about 160 kB) written offline; back online, the
    // uplink carries 16 kB/s, so all of them in one push would take 10 s, more than the page's
    // 8 s request timeout: that push would be cut off and sent again whole, for ever.
    withServer(async (server) => {
      const context = await browser.newContext();
      try {
        const page = await open(context, server, { path: "/custom.html", interval: 1000, query: "&requestTimeout=8000" });
        const token = await signUp(page, "uploader");
        const failed = failures(page, "/api/user/me/changes");
        const link = { latency: 50, downloadThroughput: 64 * 1024, uploadThroughput: 16 * 1024 };
        const setLink = await throttle(context, page, { ...link, offline: true });
        const note = "n".repeat(3900);
        for (let i = 0; i < 40; i++) {
          await page.getByTestId("url").fill(`https://example.org/${i}`);
          await page.getByTestId("note").fill(note);
          await page.getByTestId("add").click();
        }
        await page.locator('[data-testid="sync-status"][data-pending="40"]').waitFor();
        failed.length = 0;
        await setLink({ ...link, offline: false });
        const onServer = async () => Object.keys(recordsOf(await server.state(token), "bookmarks")).length;
        await until(async () => (await onServer()) === 40, { timeout: 45_000, what: "every bookmark on the server" });
        await settled(page);
        assert.deepEqual(failed, [], "no push was cut off");
      } finally {
        await context.close();
      }
    }, ["--collections", "history,favorites,likes,settings,bookmarks"]));
});
