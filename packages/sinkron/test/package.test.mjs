// Unit tests of the browser package against fakes of the browser (see fakes.mjs) and the real
// engine (the wasm build): the store's start/stop race, the driver executing the engine's
// commands (storage, channel, fetch with each kind of sign-in), and storage migration and
// eviction.
import { beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { DeviceStorage } from "../dist/storage.js";
import { SinkronClient } from "../dist/driver.js";
import { collection, createSyncStore, createUserSyncStore, defineCollections } from "../dist/store.js";
import { MemoryStorage, emptyPage, fakeToken, installBrowser, settle, wasm } from "./fakes.mjs";

let browser;
beforeEach(() => {
  browser = installBrowser();
});

const options = (extra = {}) => ({ wasm, crossTab: false, interval: 30000, ...extra });
const stored = (prefix) => [...localStorage.map.keys()].filter((k) => k.startsWith(prefix));
/** The claims of the token a request carried (none: `{}`). */
const claimsOf = (request) => {
  const token = request.headers.authorization?.split(" ")[1];
  return token ? JSON.parse(Buffer.from(token.split(".")[1], "base64url")) : {};
};
/** A token for `sub` 10 s from expiry (none for `null`): the driver asks the provider for a new one before each request. */
const nearExpiry = (sub) => (sub ? fakeToken(sub, "", Date.now() / 1000 + 10) : null);
const session = (id) => localStorage.setItem("sinkron:v1:session", JSON.stringify({ token: "a".repeat(64), user: { id, username: id } }));

test("a stop() before start() resolves leaves no client running", async () => {
  session("7");
  browser.answer(() => emptyPage());
  const store = createUserSyncStore();
  const starting = store.getState().start(options());
  store.getState().stop();
  await starting;
  // A client left running would mark the store ready and poll with the stored session.
  await new Promise((r) => setImmediate(r));
  assert.equal(store.getState().ready, false);
  assert.deepEqual(browser.requests, []);
  // Starting again works, and runs exactly one client.
  await store.getState().start(options());
  assert.equal(store.getState().ready, true);
  await settle(() => browser.requests.length === 1, { what: "one pull" });
  store.getState().stop();
});

/** Node's fake `setTimeout` and `Date` for the test: the engine's push delay passes on `tick`. */
const fakeClock = (t) => t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_800_000_000_000 });

test("the driver stores, broadcasts and pushes a write, then stores the acknowledgement", async (t) => {
  fakeClock(t);
  session("7");
  browser.answer(({ url, method }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: 1, cursor: "2" } } : emptyPage()));
  const other = new BroadcastChannel("sinkron");
  const heard = [];
  other.onmessage = (m) => heard.push(m.data);
  const client = await SinkronClient.start(options({ crossTab: true }));
  try {
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    client.write("favorites", "s01", {});
    assert.deepEqual(client.collection("favorites").map((r) => r.key), ["s01"], "in view at once");
    const [outboxKey] = stored("sinkron:v1:7:o:");
    assert.equal(JSON.parse(localStorage.getItem(outboxKey)).m.length, 1, "the outbox is stored at once");
    await settle(() => heard.some((m) => m.kind === "wrote" && m.key === "s01"), { what: "the write broadcast" });
    t.mock.timers.tick(1000);
    await settle(() => client.status().pending === 0, { what: "the push acknowledged" });
    const push = browser.requests.find((r) => r.method === "POST");
    assert.equal(push.headers.authorization, `Bearer ${"a".repeat(64)}`);
    assert.deepEqual(push.body.mutations.map((m) => [m.id, m.collection, m.key]), [[1, "favorites", "s01"]]);
    const outbox = JSON.parse(localStorage.getItem(outboxKey));
    assert.deepEqual([outbox.n, outbox.m.length], [2, 0], "kept, empty, with its numbering");
  } finally {
    client.stop();
    other.close();
  }
});

test("a write from the app's own pagehide handler, after the page let its channel go for the back/forward cache, is stored and does not throw", async () => {
  session("7");
  browser.answer(() => emptyPage());
  const client = await SinkronClient.start(options({ crossTab: true }));
  try {
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    // The app's listener runs after the driver's (added later), as a player saving its
    // position as the page goes would.
    let written = null;
    window.addEventListener("pagehide", () => {
      try {
        client.write("history", "e01", { showId: "s01", position: 42 });
        written = "stored";
      } catch (e) {
        written = `${e.name}: ${e.message}`;
      }
    });
    window.dispatchEvent(Object.assign(new Event("pagehide"), { persisted: true }));
    assert.equal(written, "stored");
    const [outboxKey] = stored("sinkron:v1:7:o:");
    assert.deepEqual(JSON.parse(localStorage.getItem(outboxKey)).m.map((m) => [m.key, m.value.position]), [["e01", 42]]);
  } finally {
    client.stop();
  }
});

test("a store of the app's declared collections: records by key at once, and a hot collection's writes held until syncNow()", async (t) => {
  fakeClock(t);
  session("7");
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "9" } } : emptyPage()));
  const store = createSyncStore(defineCollections({ bookmarks: collection(), progress: collection({ hot: 60_000 }) }));
  assert.deepEqual(store.getState().records, { bookmarks: {}, progress: {} });
  await store.getState().start(options());
  try {
    await settle(() => store.getState().status.lastSyncedAt !== null, { what: "the first pull" });
    const posts = () => browser.requests.filter((r) => r.method === "POST").map((r) => r.body.mutations.map((m) => `${m.collection}/${m.key}/${m.value?.position}`));
    store.getState().put("progress", "e1", { position: 5 });
    assert.deepEqual(store.getState().records.progress.e1.value, { position: 5 }, "in the state at once");
    t.mock.timers.tick(1000);
    await settle(() => posts().length === 1, { what: "the first position's push" });
    store.getState().put("progress", "e1", { position: 6 });
    store.getState().put("progress", "e1", { position: 7 });
    assert.deepEqual(store.getState().records.progress.e1.value, { position: 7 });
    // Well past an ordinary write's debounce (at most 3 s), within the declared 60 s: held.
    t.mock.timers.tick(10_000);
    await settle(() => true);
    assert.deepEqual(posts(), [["progress/e1/5"]]);
    assert.equal(store.getState().status.state, "pending");
    // A pause: pushed after the usual short wait (one push for the steps of a seek).
    store.getState().syncNow();
    t.mock.timers.tick(1000);
    await settle(() => store.getState().status.pending === 0, { what: "the position pushed at syncNow()" });
    assert.deepEqual(posts(), [["progress/e1/5"], ["progress/e1/7"]]);
    // A status change alone (the page hidden) leaves the records as they were: a selector of
    // them does not re-render.
    const records = store.getState().records;
    document.visibilityState = "hidden";
    document.dispatchEvent(new Event("visibilitychange"));
    await settle(() => store.getState().status.visible === false, { what: "the status hidden" });
    assert.equal(store.getState().records, records);
    document.visibilityState = "visible";
    document.dispatchEvent(new Event("visibilitychange"));
    store.getState().put("bookmarks", "a", { url: "https://example.org" });
    assert.deepEqual(Object.keys(store.getState().records.bookmarks), ["a"]);
    store.getState().remove("bookmarks", "a");
    assert.deepEqual(store.getState().records.bookmarks, {}, "removed at once");
  } finally {
    store.getState().stop();
  }
});

test("a collection's declared sticky field: a queued true is pushed before the un-mark queued over it", async (t) => {
  fakeClock(t);
  session("7");
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "9" } } : emptyPage()));
  // `done` as the server's `--merge-fields tasks:done` keeps it: true once set.
  const store = createSyncStore(defineCollections({ tasks: collection({ sticky: ["done"] }), notes: collection() }));
  await store.getState().start(options());
  try {
    await settle(() => store.getState().status.lastSyncedAt !== null, { what: "the first pull" });
    const posts = () => browser.requests.filter((r) => r.method === "POST").map((r) => r.body.mutations.map((m) => `${m.collection}/${m.key}/${JSON.stringify(m.value)}`));
    // Marked done, then un-marked before the push: the un-mark shows at once, and both go.
    store.getState().put("tasks", "t1", { done: true }, ["done"]);
    store.getState().put("tasks", "t1", { done: false }, ["done"]);
    assert.deepEqual(store.getState().records.tasks.t1.value, { done: false });
    // A field not declared sticky: the later write takes the queued one's place.
    store.getState().put("notes", "n1", { pinned: true }, ["pinned"]);
    store.getState().put("notes", "n1", { pinned: false }, ["pinned"]);
    t.mock.timers.tick(5000);
    await settle(() => store.getState().status.pending === 0, { what: "the push" });
    assert.deepEqual(posts(), [['tasks/t1/{"done":true}', 'tasks/t1/{"done":false}', 'notes/n1/{"pinned":false}']]);
  } finally {
    store.getState().stop();
  }
});

const snapshotOf = (user, cursor, changes) => ({ user: { id: user, username: user }, cursor, changes, more: false, serverTime: Date.now() });
const historyChange = (key, position, version) => ({ collection: "history", key, value: { showId: "s1", position }, updatedAt: 1_799_999_990_000 + version, clientId: "tv", version });

test("a write re-reads its own record only: the collection's other records keep their objects", async (t) => {
  fakeClock(t);
  session("7");
  const pulled = emptyPage({ changes: [historyChange("e1", 1, 1), historyChange("e2", 2, 2)] });
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "9" } } : pulled));
  const store = createUserSyncStore();
  await store.getState().start(options());
  try {
    await settle(() => Object.keys(store.getState().records.history).length === 2, { what: "the first pull" });
    const before = store.getState().records.history;
    store.getState().updateProgress("e1", 5);
    const after = store.getState().records.history;
    assert.notEqual(after, before, "the collection is a new object");
    assert.equal(after.e1.value.position, 5);
    assert.equal(after.e2, before.e2, "the record the write did not touch is the same object");
    store.getState().removeHistory("e2");
    assert.deepEqual(Object.keys(store.getState().records.history), ["e1"], "a delete read alone removes it");
  } finally {
    store.getState().stop();
  }
});

test("a server-rendered page starts from its snapshot: in the store before start(), and start() makes no first pull", async (t) => {
  fakeClock(t);
  session("7");
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "6" } } : emptyPage({ cursor: "5" })));
  const snapshot = snapshotOf("7", "5", [historyChange("ep1", 42, 5), { ...historyChange("ep2", 0, 4), value: null }]);
  const store = createUserSyncStore({ snapshot });
  // What a server renders, and the browser's first render (hydration) alike.
  const shown = () => store.getState().history.map((h) => [h.episodeId, h.position]);
  assert.deepEqual(shown(), [["ep1", 42]]);
  assert.equal(store.getState().user.id, "7");
  assert.equal(store.getState().status.state, "syncing");
  const fromSnapshot = store.getState().records.history.ep1;
  await store.getState().start(options());
  try {
    assert.deepEqual(shown(), [["ep1", 42]], "the engine took it");
    assert.deepEqual(store.getState().records.history.ep1, fromSnapshot, "a record of the same shape");
    // A write, pushed after its short wait: the only request, sent from the snapshot's cursor.
    store.getState().toggleFavorite("s9");
    t.mock.timers.tick(1000);
    await settle(() => store.getState().status.pending === 0, { what: "the write pushed" });
    assert.deepEqual(browser.requests.map((r) => [r.method, r.body?.lastSync ?? null]), [["POST", "5"]]);
    assert.equal(new DeviceStorage().cursor("7"), "6", "the push's answer moved the cursor on from the snapshot's");
  } finally {
    store.getState().stop();
  }
});

test("a snapshot of another user than the one signed in is not taken: the page pulls at once", async () => {
  session("7");
  browser.answer(() => emptyPage({ cursor: "3", changes: [{ ...historyChange("mine", 1, 3) }] }));
  const store = createUserSyncStore({ snapshot: snapshotOf("8", "5", [historyChange("theirs", 42, 5)]) });
  await store.getState().start(options());
  try {
    await settle(() => store.getState().history.length === 1 && store.getState().history[0].episodeId === "mine", { what: "the pull's state" });
    assert.equal(store.getState().user.id, "7");
    assert.deepEqual(browser.requests.map((r) => r.method), ["GET"]);
  } finally {
    store.getState().stop();
  }
});

test("with a token provider: the user is the token's sub, and token_expired is retried with a refreshed token", async (t) => {
  fakeClock(t);
  const calls = [];
  let current = fakeToken("site-ana", "old");
  const getToken = async ({ refresh }) => {
    calls.push(refresh);
    if (refresh) current = fakeToken("site-ana", "new");
    return current;
  };
  browser.answer(({ method, headers }) => {
    if (headers.authorization === `Bearer ${fakeToken("site-ana", "old")}` && method === "POST") {
      return { status: 401, body: { error: { code: "token_expired", message: "expired" } } };
    }
    return method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: 1 } } : emptyPage();
  });
  const client = await SinkronClient.start(options({ getToken }));
  try {
    client.write("likes", "e1", { like: 1 });
    const user = await client.signedIn();
    assert.deepEqual(user, { id: "site-ana", username: "site-ana" });
    assert.equal(client.user()?.id, "site-ana");
    const through = () => client.status().pending === 0 && client.status().lastSyncedAt !== null;
    await settle(() => (t.mock.timers.tick(100), through()), { what: "the write through" });
    const pushes = browser.requests.filter((r) => r.method === "POST");
    assert.deepEqual(
      pushes.map((p) => [p.headers.authorization.includes(fakeToken("site-ana", "new").split(".")[1]), p.body.mutations.map((m) => m.key)]),
      [
        [false, ["e1"]],
        [true, ["e1"]],
      ],
      "the same write, again, with the new token",
    );
    assert.ok(calls.includes(true), "the provider was asked to refresh");
    assert.equal(client.status().error, null);
    // The guest's write joined the account: stored under the site's user.
    assert.equal(stored("sinkron:v1:guest:").filter((k) => k.includes(":r:")).length, 0);
  } finally {
    client.stop();
  }
});

test("the provider's token is sent again while it has more than 30 s left; then the provider is asked for a new one", async (t) => {
  fakeClock(t);
  let asked = 0;
  const refreshes = [];
  // The site's tokens last two minutes.
  const getToken = async ({ refresh }) => (asked++, refreshes.push(refresh), fakeToken("site-ana", String(asked), Math.floor(Date.now() / 1000) + 120));
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "2" } } : emptyPage()));
  const client = await SinkronClient.start(options({ getToken }));
  const tags = () => browser.requests.map((r) => claimsOf(r).tag);
  try {
    // The site had signed ana in: the token asked for at start signs her in here.
    await settle(() => client.user()?.id === "site-ana", { what: "ana signed in at start" });
    assert.equal(asked, 1, "the provider was asked once at start");
    await client.signedIn();
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    const askedAtSignIn = asked;
    for (const key of ["s01", "s02", "s03"]) {
      client.write("favorites", key, {});
      t.mock.timers.tick(1000);
      await settle(() => client.status().pending === 0, { what: `${key} pushed` });
    }
    assert.equal(browser.requests.length, 4, `a pull and three pushes: ${browser.requests.map((r) => r.method + " " + claimsOf(r).tag)}`);
    assert.equal(asked, askedAtSignIn, "the provider was not asked for them");
    assert.deepEqual(new Set(tags()).size, 1, "all with the token signedIn() was given");
    assert.ok(refreshes.every((r) => r === false), `asked at start and sign-in without refresh: ${refreshes}`);
    // 30 s before it expires, the next request asks the provider for a new token (a provider
    // that caches its token would otherwise answer the same one), and carries it.
    t.mock.timers.tick(90_000);
    client.write("favorites", "s04", {});
    t.mock.timers.tick(1000);
    await settle(() => client.status().pending === 0, { what: "s04 pushed" });
    assert.equal(asked, askedAtSignIn + 1, "the provider was asked once");
    assert.equal(refreshes.at(-1), true, "for a new token");
    assert.equal(tags().at(-1), String(asked), "with the provider's newest token");
    assert.equal(client.status().error, null);
  } finally {
    client.stop();
  }
});

test("a token for another user is never sent for this user's data", async (t) => {
  fakeClock(t);
  let sub = "site-ana";
  let asked = 0;
  const client = await SinkronClient.start(options({ getToken: async () => (asked++, nearExpiry(sub)) }));
  browser.answer(() => emptyPage());
  try {
    await client.signedIn();
    await settle(() => browser.requests.length >= 1, { what: "the first pull" });
    sub = "site-bo"; // the site switched users in another page
    const before = browser.requests.length;
    const askedBefore = asked;
    client.write("favorites", "s02", {});
    t.mock.timers.tick(1000);
    await settle(() => asked === askedBefore + 1, { what: "the provider asked" });
    // Asked again as the site's storage changes, for a second: still bo's.
    await settle(() => window.dispatchEvent(new Event("storage")) && asked === askedBefore + 2, { what: "the provider asked again at a storage event" });
    t.mock.timers.tick(1000);
    await settle(() => client.status().error === "unauthorized", { what: "unauthorized" });
    assert.equal(browser.requests.length, before, "nothing sent with bo's token");
    assert.equal(client.status().pending, 1, "the write is kept");
  } finally {
    client.stop();
  }
});

test("a page that finds another user signed in at the site never sends the previous user's writes with the new user's token", async (t) => {
  fakeClock(t);
  let sub = "site-ana";
  const getToken = async () => fakeToken(sub);
  // The server is down while ana writes: her write stays queued, stored on the device.
  browser.answer(() => ({ status: 503, body: { error: { code: "unavailable", message: "down" } } }));
  const before = await SinkronClient.start(options({ getToken }));
  await settle(() => before.user()?.id === "site-ana", { what: "ana signed in" });
  before.write("favorites", "ana-only", {});
  before.stop();
  // The page is opened again after the site signed bo in (a shared device).
  sub = "site-bo";
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id } } : emptyPage()));
  const client = await SinkronClient.start(options({ getToken }));
  try {
    await settle(() => (t.mock.timers.tick(1000), client.user()?.id === "site-bo" && client.status().lastSyncedAt !== null), { what: "bo signed in and synced" });
    const carried = browser.requests.filter((r) => r.body?.mutations?.some((m) => m.key === "ana-only"));
    assert.deepEqual(carried.map((r) => claimsOf(r).sub), [], "ana's write went with bo's token");
    // Kept for ana (this page never had her token): sent at her next sign-in here.
    assert.equal(stored("sinkron:v1:site-ana:o:").length, 1, `ana's write kept: ${stored("sinkron:v1:")}`);
  } finally {
    client.stop();
  }
  // Ana signs in at the site again: her write goes, with her token.
  sub = "site-ana";
  const again = await SinkronClient.start(options({ getToken }));
  try {
    const sent = () => browser.requests.filter((r) => r.body?.mutations?.some((m) => m.key === "ana-only"));
    await settle(() => (t.mock.timers.tick(1000), sent().length > 0), { what: "ana's write sent" });
    assert.deepEqual([...new Set(sent().map((r) => claimsOf(r).sub))], ["site-ana"]);
  } finally {
    again.stop();
  }
});

test("signing in with a guest's writes asks the provider once: the writes joining the account take its token", async (t) => {
  fakeClock(t);
  let sub = null;
  let asked = 0;
  const getToken = async () => (asked++, sub && fakeToken(sub));
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id } } : emptyPage()));
  const client = await SinkronClient.start(options({ getToken }));
  try {
    await settle(() => asked === 1, { what: "the provider asked at start" });
    client.write("favorites", "g1", {});
    sub = "site-ana";
    await client.signedIn();
    await settle(() => (t.mock.timers.tick(1000), client.status().pending === 0 && client.status().lastSyncedAt !== null), { what: "synced" });
    assert.equal(asked, 2, "once at start, once at sign-in");
    const joined = browser.requests.filter((r) => r.body?.mutations?.some((m) => m.key === "g1"));
    assert.deepEqual([...new Set(joined.map((r) => claimsOf(r).sub))], ["site-ana"]);
  } finally {
    client.stop();
  }
});

test("without the user's token nothing goes out, the poke stream included", async (t) => {
  fakeClock(t);
  let sub = "site-ana";
  const client = await SinkronClient.start(options({ pokes: true, getToken: async () => nearExpiry(sub) }));
  browser.answer(() => emptyPage());
  try {
    const signingIn = client.signedIn();
    sub = "site-bo"; // the site switched users in another page as this one signed ana in
    await signingIn;
    await settle(() => (t.mock.timers.tick(1000), client.status().error === "unauthorized"), { what: "unauthorized" });
    assert.deepEqual(browser.requests.map((r) => r.url), [], "no pull, no poke stream");
    // The site signs ana in again: the pull and the stream carry her token.
    sub = "site-ana";
    await client.signedIn();
    await settle(() => browser.requests.some((r) => r.url.endsWith("/events")), { what: "the poke stream" });
    assert.deepEqual(new Set(browser.requests.map((r) => claimsOf(r).sub)), new Set(["site-ana"]));
  } finally {
    client.stop();
  }
});

test("a provider answering for nobody is asked again at the site's storage events: once it gives the user's token, the request goes", async (t) => {
  fakeClock(t);
  // The site's session as this tab's storage shows it (a tab that follows another tab's
  // sign-in can hear of it before the browser has copied the site's session here).
  let sub = "site-ana";
  let asked = 0;
  const client = await SinkronClient.start(options({ getToken: async () => (asked++, nearExpiry(sub)) }));
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "2" } } : emptyPage()));
  const pushed = () => browser.requests.filter((r) => r.method === "POST" && claimsOf(r).sub === "site-ana");
  try {
    await client.signedIn();
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    sub = null;
    const askedBefore = asked;
    client.write("favorites", "s03", {});
    t.mock.timers.tick(1000);
    await settle(() => asked > askedBefore, { what: "the provider asked" });
    sub = "site-ana"; // the site's session arrives, with its storage event
    await settle(() => window.dispatchEvent(new Event("storage")) && pushed().length === 1, { what: "the push with ana's token" });
    await settle(() => client.status().pending === 0, { what: "the write confirmed" });
    assert.equal(client.status().error, null);
  } finally {
    client.stop();
  }
});

test("signing out keeps unconfirmed writes for the account: the flush carries the user's last token, and they go at its next sign-in only", async (t) => {
  fakeClock(t);
  let sub = "site-ana";
  let down = true;
  browser.answer(({ method, body }) => {
    if (method === "POST" && down) throw new TypeError("Failed to fetch");
    const ack = body?.mutations.at(-1)?.id ?? 0;
    return method === "POST" ? { status: 200, body: { ...emptyPage().body, ack, cursor: "2" } } : emptyPage();
  });
  const client = await SinkronClient.start(options({ getToken: async () => (sub ? fakeToken(sub) : null) }));
  const pushes = (who, key) => browser.requests.filter((r) => r.method === "POST" && r.headers.authorization === `Bearer ${fakeToken(who)}` && r.body.mutations.some((m) => m.key === key));
  const parked = () => stored("sinkron:v1:site-ana:o:").map((k) => JSON.parse(localStorage.getItem(k)).m.length);
  try {
    await client.signedIn();
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    client.write("favorites", "s07", {});
    t.mock.timers.tick(1000);
    await settle(() => pushes("site-ana", "s07").length === 1, { what: "a push that fails" });
    sub = null; // the site has signed the user out: its provider gives no token any more
    assert.deepEqual(await client.signOut(), { pending: 1 });
    await settle(() => pushes("site-ana", "s07").length === 2, { what: "the flush, with ana's last token" });
    assert.equal(pushes("site-ana", "s07")[1].init.keepalive, true);
    await settle(() => client.status().pending === 0, { what: "a guest" });
    assert.deepEqual(parked(), [1], "kept for ana");
    assert.deepEqual(client.collection("favorites"), [], "the guest does not see it");

    // Back up; bo signs in on this device: ana's write is not bo's.
    down = false;
    sub = "site-bo";
    await client.signedIn();
    t.mock.timers.tick(1000);
    await settle(() => client.status().lastSyncedAt !== null && client.user()?.id === "site-bo", { what: "bo synced" });
    assert.equal(pushes("site-bo", "s07").length, 0);
    assert.deepEqual(parked(), [1], "still kept for ana");

    // Ana signs in again: it goes, and the device keeps no copy.
    sub = "site-ana";
    await client.signedIn();
    t.mock.timers.tick(1000);
    await settle(() => pushes("site-ana", "s07").length === 3, { what: "the parked write sent" });
    await settle(() => client.status().pending === 0, { what: "acknowledged" });
    assert.deepEqual(parked().filter((n) => n > 0), []);
  } finally {
    client.stop();
  }
});

test("signOut({ discard: true }) sends and keeps nothing of what was queued", async () => {
  session("7");
  browser.answer(() => emptyPage());
  const client = await SinkronClient.start(options());
  try {
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    client.write("favorites", "s09", {});
    assert.deepEqual(await client.signOut({ discard: true }), { pending: 1 });
    await new Promise((r) => setImmediate(r));
    assert.equal(browser.requests.filter((r) => r.url.endsWith("/changes")).length, 0, "no flush");
    assert.deepEqual(stored("sinkron:v1:7:"), [], "nothing of user 7 is left");
  } finally {
    client.stop();
  }
});

test("cookie mode sends credentials and no Authorization header", async () => {
  browser.answer(() => emptyPage());
  const client = await SinkronClient.start(options({ cookie: true, baseUrl: "https://sync.example" }));
  try {
    await assert.rejects(client.signedIn(), /needs the site's user id/);
    await client.signedIn("site-cy");
    await settle(() => browser.requests.length >= 1, { what: "a pull" });
    const [pull] = browser.requests;
    assert.equal(pull.url, "https://sync.example/api/user/me");
    assert.equal(pull.init.credentials, "include");
    assert.equal(pull.headers.authorization, undefined);
  } finally {
    client.stop();
  }
});

test("cookie mode: the site signing another user in never sends the previous user's writes with the new user's cookie", async (t) => {
  fakeClock(t);
  const client = await SinkronClient.start(options({ cookie: true }));
  try {
    browser.answer(() => ({ status: 503, body: { error: { code: "unavailable", message: "down" } } }));
    await client.signedIn("site-cy");
    client.write("favorites", "cy-only", {});
    // The server answers again, and the site's cookie is now dee's.
    browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id } } : emptyPage()));
    const before = browser.requests.length;
    await client.signedIn("site-dee");
    await settle(() => (t.mock.timers.tick(1000), client.status().lastSyncedAt !== null), { what: "dee synced" });
    const carried = browser.requests.slice(before).filter((r) => r.body?.mutations?.some((m) => m.key === "cy-only"));
    assert.deepEqual(carried.length, 0, "cy's write went with dee's cookie");
    assert.equal(stored("sinkron:v1:site-cy:o:").length, 1, `kept for cy: ${stored("sinkron:v1:")}`);
  } finally {
    client.stop();
  }
});

test("stored data the engine cannot read (another version's, or damaged) is left out: the page starts and syncs the rest", async () => {
  session("7");
  localStorage.setItem("sinkron:schema", "2");
  const record = (value, n) => JSON.stringify({ v: value, u: 1000, c: "old", n });
  localStorage.setItem("sinkron:v1:7:r:likes:good", record({ like: 1 }, 1));
  localStorage.setItem("sinkron:v1:7:r:likes:odd", record(5, 2));
  const m = (id, key, value, updatedAt = 1000 + id) => ({ id, collection: "likes", key, value, updatedAt });
  // This tab's own outbox (a reload) and another tab's, each with a write it cannot read.
  sessionStorage.setItem("sinkron:v1:tab", "mine");
  localStorage.setItem("sinkron:v1:7:o:mine", JSON.stringify({ n: 3, m: [m(1, "a", { like: 1 }, -5), m(2, "b", { like: 1 })] }));
  localStorage.setItem("sinkron:v1:7:o:other", JSON.stringify({ n: 3, m: [m(1, "c", [1]), m(2, "d", { like: -1 })] }));
  browser.answer(() => emptyPage());
  const client = await SinkronClient.start(options());
  try {
    assert.deepEqual(client.collection("likes").map((r) => r.key).sort(), ["b", "d", "good"]);
    assert.equal(client.status().pending, 1, "this tab's readable write is queued");
  } finally {
    client.stop();
  }
});

/**
 * Starts a signed-in client whose storage holds this tab's own outbox from before a reload
 * (`mine`) and a closed tab's (`other`), each built by `outboxes(m)`, `m(id, key)` a
 * favourite; pushes are acknowledged. Returns the client after its first pull and the keys
 * its pushes carried once nothing is pending.
 */
async function startWithOutboxes(t, outboxes) {
  fakeClock(t);
  session("7");
  localStorage.setItem("sinkron:schema", "2");
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "2" } } : emptyPage()));
  const m = (id, key) => ({ id, collection: "favorites", key, value: {}, updatedAt: 1000 + id });
  const { mine, other } = outboxes(m);
  sessionStorage.setItem("sinkron:v1:tab", "mine");
  localStorage.setItem("sinkron:v1:7:o:mine", JSON.stringify(mine));
  localStorage.setItem("sinkron:v1:7:o:other", JSON.stringify(other));
  const client = await SinkronClient.start(options());
  const shown = client.collection("favorites").map((r) => r.key).sort();
  const pushed = async () => {
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    // The leader takes a closed tab's writes over at its pull; pushed after the usual short wait.
    t.mock.timers.tick(1000);
    await settle(() => client.status().pending === 0, { what: "the writes pushed" });
    return browser.requests.filter((r) => r.method === "POST").flatMap((r) => r.body.mutations.map((x) => x.key)).sort();
  };
  return { client, shown, pushed };
}

test("an outbox holding a write of a shape this version cannot read keeps its other writes, which are sent", async (t) => {
  // Each with one write of another shape (another version's, or damaged): no id, no key.
  const { id: _, ...noId } = { id: 1, collection: "favorites", key: "s00", value: {}, updatedAt: 1001 };
  const { client, shown, pushed } = await startWithOutboxes(t, (m) => ({
    mine: { n: 3, m: [noId, m(2, "s01")] },
    other: { n: 3, m: [m(1, "s02"), { id: 2, collection: "favorites" }] },
  }));
  try {
    assert.deepEqual(shown, ["s01", "s02"]);
    assert.deepEqual(await pushed(), ["s01", "s02"]);
  } finally {
    client.stop();
  }
});

test("an outbox whose numbering cannot be read keeps its writes: the tab takes a fresh id and sends them as a closed tab's", async (t) => {
  // Each numbered by another version (or damaged): a fraction, and no number at all.
  const { client, shown, pushed } = await startWithOutboxes(t, (m) => ({
    mine: { n: 2.5, m: [m(1, "s01")] },
    other: { n: "3", m: [m(2, "s02")] },
  }));
  try {
    assert.ok(!["mine", "other"].includes(client.clientId()), `a fresh id, not ${client.clientId()}`);
    assert.deepEqual(shown, ["s01", "s02"]);
    assert.deepEqual(await pushed(), ["s01", "s02"]);
    assert.deepEqual(stored("sinkron:v1:7:o:"), [`sinkron:v1:7:o:${client.clientId()}`], "the taken outboxes are gone");
  } finally {
    client.stop();
  }
});

test("schema 1 is migrated, not wiped: an outbox stored before numbering was kept gets it; corrupt data is dropped with a warning", () => {
  const store = new MemoryStorage();
  store.setItem("sinkron:schema", "1");
  const m = (id) => ({ id, collection: "history", key: `e${id}`, value: { position: id }, updatedAt: 1000 + id });
  store.setItem("sinkron:v1:7:o:old", JSON.stringify([m(4), m(5)]));
  store.setItem("sinkron:v1:7:o:new", JSON.stringify({ n: 3, m: [m(2)] }));
  store.setItem("sinkron:v1:7:o:bad", "{not json");
  store.setItem("sinkron:v1:7:c", "12");
  store.setItem("sinkron:v1:7:r:history:e1", JSON.stringify({ v: { position: 1 }, u: 1001, c: "c", n: 12 }));
  store.setItem("sinkron:v1:7:r:history:x", JSON.stringify({ v: {}, u: "yesterday" }));
  const storage = new DeviceStorage(store);
  assert.equal(store.getItem("sinkron:schema"), "2");
  assert.deepEqual(JSON.parse(store.getItem("sinkron:v1:7:o:old")), { n: 6, m: [m(4), m(5)] }, "rewritten with its numbering");
  assert.deepEqual(storage.outbox("7", "old"), { next: 6, mutations: [m(4), m(5)] });
  assert.deepEqual(storage.outbox("7", "new"), { next: 3, mutations: [m(2)] });
  assert.equal(storage.cursor("7"), "12");
  const warn = console.warn;
  const warnings = [];
  console.warn = (msg) => warnings.push(msg);
  try {
    assert.equal(storage.outbox("7", "bad"), null);
    assert.deepEqual(storage.records("7").map((r) => r.key), ["e1"]);
  } finally {
    console.warn = warn;
  }
  assert.equal(warnings.length, 2);
  assert.equal(store.getItem("sinkron:v1:7:o:bad"), null);
  assert.equal(store.getItem("sinkron:v1:7:r:history:x"), null);
});

test("the leader takes over the guest outboxes of tabs gone, from the guest's scope, and moves none of a live tab's into the account", async (t) => {
  fakeClock(t);
  session("7");
  localStorage.setItem("sinkron:schema", "2");
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "2" } } : emptyPage()));
  const m = (id, key) => ({ id, collection: "favorites", key, value: { on: true }, updatedAt: 1000 + id });
  // A guest tab gone, whose last write reached the guest's scope after the sign-in; and one
  // this tab still reads there that a live tab (holding its tab lock) has carried into the
  // account itself since, and writes to there.
  localStorage.setItem("sinkron:v1:guest:o:gone", JSON.stringify({ n: 3, m: [m(2, "late")] }));
  localStorage.setItem("sinkron:v1:guest:o:live", JSON.stringify({ n: 2, m: [m(1, "stale")] }));
  const live = JSON.stringify({ n: 3, m: [m(1, "stale"), m(2, "newer")] });
  localStorage.setItem("sinkron:v1:7:o:live", live);
  const ownsLive = new Promise((held) => navigator.locks.request("sinkron:tab:live", {}, () => new Promise(() => held())));
  await ownsLive;
  const client = await SinkronClient.start(options());
  try {
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    t.mock.timers.tick(1000);
    await settle(() => client.status().pending === 0 && browser.requests.some((r) => r.method === "POST"), { what: "the gone tab's write pushed" });
    const pushed = browser.requests.filter((r) => r.method === "POST").flatMap((r) => r.body.mutations.map((x) => x.key));
    assert.deepEqual(pushed, ["late"]);
    assert.equal(localStorage.getItem("sinkron:v1:guest:o:gone"), null, "taken, and dropped from the guest's scope");
    assert.equal(localStorage.getItem("sinkron:v1:7:o:live"), live, "the live tab's outbox in the account, untouched");
    assert.equal(localStorage.getItem("sinkron:v1:7:o:gone"), null, "nothing moved into the account");
  } finally {
    client.stop();
  }
});

test("signing in takes over the guest outboxes of tabs gone, from the guest's scope, and moves none: a live guest tab's stays for it", async (t) => {
  fakeClock(t);
  let sub = null;
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: "2" } } : emptyPage()));
  const m = (id, key) => ({ id, collection: "favorites", key, value: { on: true }, updatedAt: 1000 + id });
  const gone = JSON.stringify({ n: 3, m: [m(2, "gone1")] });
  const live = JSON.stringify({ n: 2, m: [m(1, "live1")] });
  localStorage.setItem("sinkron:schema", "2");
  localStorage.setItem("sinkron:v1:guest:o:live", live);
  const ownsLive = new Promise((held) => navigator.locks.request("sinkron:tab:live", {}, () => new Promise(() => held())));
  await ownsLive;
  const client = await SinkronClient.start(options({ getToken: async () => sub && fakeToken(sub) }));
  try {
    client.write("favorites", "mine", {});
    // A guest tab that closed since this one started (a starting tab may take such an outbox
    // as its own).
    localStorage.setItem("sinkron:v1:guest:o:gone", gone);
    sub = "site-ana";
    await client.signedIn();
    await settle(() => (t.mock.timers.tick(1000), client.status().pending === 0 && browser.requests.some((r) => r.method === "POST")), { what: "the guest's writes pushed" });
    const pushed = browser.requests.filter((r) => r.method === "POST").flatMap((r) => r.body.mutations.map((x) => x.key));
    assert.deepEqual(pushed.sort(), ["gone1", "mine"], "this tab's and the gone tab's, not the live tab's");
    assert.equal(localStorage.getItem("sinkron:v1:guest:o:gone"), null, "taken, and dropped from the guest's scope");
    assert.equal(localStorage.getItem("sinkron:v1:guest:o:live"), live, "the live tab's, left for it to carry over as it follows");
    assert.deepEqual(stored("sinkron:v1:").filter((k) => /:o:(gone|live)$/.test(k) && !k.startsWith("sinkron:v1:guest:")), [], "nothing moved into the account");
  } finally {
    client.stop();
  }
});

test("a sign-out keeps every outbox of the user (one this tab reads as empty may hold another tab's writes stored since) and drops the tab's own when it holds nothing", async (t) => {
  // The wipe itself: every outbox stays, the rest of the scope goes.
  const store = new MemoryStorage();
  const storage = new DeviceStorage(store);
  const m = { id: 1, collection: "favorites", key: "s1", value: { on: true }, updatedAt: 1000 };
  storage.setOutbox("7", "other-empty", 3, []);
  storage.setOutbox("7", "other-writes", 2, [m]);
  storage.setCursor("7", "12");
  storage.wipe("7", true);
  assert.deepEqual(storage.outboxes("7").map(([id, o]) => [id, o.mutations.length]).sort(), [["other-empty", 0], ["other-writes", 1]]);
  assert.equal(storage.cursor("7"), null);
  // Discarding, nothing stays.
  storage.wipe("7", false);
  assert.deepEqual(storage.outboxes("7"), []);

  // A tab signing out with nothing queued drops its own outbox; another tab's stays.
  fakeClock(t);
  session("7");
  browser.answer(({ method, body }) => (method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body?.mutations?.at(-1)?.id ?? 0, cursor: "2" } } : emptyPage()));
  const client = await SinkronClient.start(options());
  try {
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    client.write("favorites", "s01", {});
    t.mock.timers.tick(1000);
    await settle(() => client.status().pending === 0, { what: "the push acknowledged" });
    const own = client.clientId();
    localStorage.setItem("sinkron:v1:7:o:other", JSON.stringify({ n: 2, m: [] }));
    assert.deepEqual(stored("sinkron:v1:7:o:").sort(), [`sinkron:v1:7:o:${own}`, "sinkron:v1:7:o:other"].sort(), "its own, kept when empty");
    assert.deepEqual(await client.signOut(), { pending: 0 });
    assert.deepEqual(stored("sinkron:v1:7:o:"), ["sinkron:v1:7:o:other"]);
  } finally {
    client.stop();
  }
});

test("stored data of a schema this version does not know is reset, not misread", () => {
  const store = new MemoryStorage();
  store.setItem("sinkron:schema", "0");
  store.setItem("sinkron:v1:7:c", "12");
  const warn = console.warn;
  console.warn = () => {};
  try {
    new DeviceStorage(store);
  } finally {
    console.warn = warn;
  }
  assert.equal(store.getItem("sinkron:v1:7:c"), null);
  assert.equal(store.getItem("sinkron:schema"), "2");
});

test("data of a newer schema (the app rolled back) keeps its session and unsent writes; the cache of records is pulled again", () => {
  const store = new MemoryStorage();
  store.setItem("sinkron:schema", "3");
  const session = { token: "t", user: { id: "7", username: "ann" } };
  const m = { id: 4, collection: "history", key: "e4", value: { position: 4 }, updatedAt: 1004 };
  store.setItem("sinkron:v1:session", JSON.stringify(session));
  store.setItem("sinkron:v1:ending", JSON.stringify(["old"]));
  store.setItem("sinkron:v1:adopted", JSON.stringify([null]));
  store.setItem("sinkron:v1:7:o:tab", JSON.stringify({ n: 5, m: [m] }));
  store.setItem("sinkron:v1:guest:o:g", JSON.stringify({ n: 1, m: [] }));
  store.setItem("sinkron:v1:7:c", "12");
  store.setItem("sinkron:v1:7:partial", "1");
  store.setItem("sinkron:v1:7:r:history:e1", JSON.stringify({ v: { position: 1 }, u: 1001, c: "c", n: 12, s: { newer: "stamps" } }));
  // A record whose key looks like an outbox's: a record all the same.
  store.setItem("sinkron:v1:7:r:history:ep:o:x", JSON.stringify({ v: { position: 2 }, u: 1002, c: "c", n: 12 }));
  const warn = console.warn;
  const warnings = [];
  console.warn = (msg) => warnings.push(msg);
  let storage;
  try {
    storage = new DeviceStorage(store);
  } finally {
    console.warn = warn;
  }
  assert.equal(store.getItem("sinkron:schema"), "2");
  assert.deepEqual(storage.session(), session, "still signed in");
  assert.deepEqual(storage.outbox("7", "tab"), { next: 5, mutations: [m] }, "the unsent write is kept");
  assert.deepEqual(storage.outboxes(null).map(([id]) => id), ["g"]);
  assert.deepEqual(storage.ending(), ["old"]);
  assert.deepEqual(storage.adopted(), [null]);
  assert.equal(storage.cursor("7"), null, "pulled again from the start");
  assert.equal(storage.partial("7"), false);
  assert.deepEqual(storage.records("7"), []);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /schema 3, newer than 2/);
});

test("a full store gives up the oldest history, by the engine's rule, and the next start pulls everything", async () => {
  globalThis.localStorage = new MemoryStorage(2400);
  session("7");
  const change = (i) => ({ collection: "history", key: `e${String(i).padStart(2, "0")}`, value: { position: 1 }, updatedAt: 1000 + i, clientId: "c", version: i });
  const whole = { status: 200, body: { cursor: "40", changes: Array.from({ length: 40 }, (_, i) => change(i + 1)), more: false, serverTime: Date.now() } };
  browser.answer(() => whole);
  const warn = console.warn;
  console.warn = () => {};
  const client = await SinkronClient.start(options());
  try {
    await settle(() => client.status().lastSyncedAt !== null, { what: "the first pull" });
    assert.equal(client.collection("history").length, 40, "all of it stays in view");
  } finally {
    client.stop();
    console.warn = warn;
  }
  const storage = new DeviceStorage(localStorage);
  const keys = storage.records("7").map((r) => r.key);
  assert.ok(keys.includes("e40"), "the newest is kept");
  assert.ok(!keys.includes("e01"), "the oldest was evicted");
  assert.equal(storage.partial("7"), true);
  // The next start does not trust the stored cursor: it asks for the whole state.
  const requests = browser.requests.length;
  const again = await SinkronClient.start(options());
  try {
    await settle(() => browser.requests.length > requests, { what: "the next start's pull" });
    assert.equal(new URL(browser.requests[requests].url, "http://x").searchParams.get("lastSync"), null);
  } finally {
    again.stop();
  }
});

test("a starting tab takes over a closed tab's unsent writes; a reloaded one its own outbox when that holds writes", async () => {
  session("7");
  browser.answer(() => emptyPage());
  const m = { id: 4, collection: "favorites", key: "s09", value: {}, updatedAt: 1000 };
  localStorage.setItem("sinkron:v1:7:o:empty1", JSON.stringify({ n: 3, m: [] }));
  localStorage.setItem("sinkron:v1:7:o:unsent", JSON.stringify({ n: 5, m: [m] }));
  const fresh = await SinkronClient.start(options());
  try {
    assert.equal(fresh.clientId(), "unsent", "unsent writes first");
    assert.equal(fresh.status().pending, 1);
  } finally {
    fresh.stop();
  }
  // A reload of the tab that had `empty1`, which holds no writes: the closed tab's unsent
  // writes first (a user who only reloads must still send them).
  sessionStorage.setItem("sinkron:v1:tab", "empty1");
  const reloaded = await SinkronClient.start(options());
  try {
    assert.equal(reloaded.clientId(), "unsent", "a closed tab's unsent writes first");
    assert.equal(reloaded.status().pending, 1);
  } finally {
    reloaded.stop();
  }
  // A reload of a tab whose own outbox holds writes: its own, though another holds writes too.
  localStorage.setItem("sinkron:v1:7:o:own", JSON.stringify({ n: 2, m: [{ ...m, id: 1, key: "s11" }] }));
  sessionStorage.setItem("sinkron:v1:tab", "own");
  const again = await SinkronClient.start(options());
  try {
    assert.equal(again.clientId(), "own");
    assert.equal(again.status().pending, 1);
    again.write("favorites", "s10", {});
    const stored = JSON.parse(localStorage.getItem("sinkron:v1:7:o:own"));
    assert.deepEqual(stored.m.map((x) => x.id), [1, 3], "numbering resumed past the stored next id (taken over: one more)");
  } finally {
    again.stop();
  }
});

test("outside React: the store's plain subscribe API, and a Svelte store in one line", async () => {
  browser.answer(() => emptyPage());
  const store = createUserSyncStore();
  // The Svelte store contract: `subscribe(run)` calls `run` at once and on every change.
  const svelte = { subscribe: (run) => (run(store.getState()), store.subscribe(run)) };
  const seen = [];
  const unsubscribe = svelte.subscribe((s) => seen.push(s.history.map((h) => h.episodeId)));
  assert.deepEqual(seen, [[]], "called at once with the current state");
  await store.getState().start(options());
  try {
    store.getState().addHistory({ episodeId: "e1", showId: "s1", position: 5 });
    assert.deepEqual(seen.at(-1), ["e1"], "told of the write at once");
    unsubscribe();
    const count = seen.length;
    store.getState().addHistory({ episodeId: "e2", showId: "s1" });
    assert.equal(seen.length, count, "not told after unsubscribing");
    assert.deepEqual(store.getState().history.map((h) => h.episodeId).sort(), ["e1", "e2"]);
  } finally {
    store.getState().stop();
  }
});

test("adoptLegacy: the app's old data is adopted once per scope; a throwing or malformed adopter is reported and asked again", async (t) => {
  browser.answer(() => emptyPage());
  const errors = [];
  t.mock.method(console, "error", (...args) => errors.push(args.join(" ")));
  const old = [{ collection: "history", key: "s01e01", value: { showId: "s01", position: 42 }, updatedAt: 1_700_000_000_000 }];
  const scopes = [];
  const run = async (adoptLegacy) => {
    const client = await SinkronClient.start(options({ adoptLegacy }));
    const history = client.collection("history");
    client.stop();
    return history;
  };
  // Throws: reported, nothing adopted, not marked.
  assert.deepEqual(await run(() => { throw new Error("old format"); }), []);
  assert.match(errors.at(-1), /adoptLegacy failed.*old format/);
  // Malformed (a value that is not an object): reported the same way.
  assert.deepEqual(await run(() => [{ collection: "history", key: "x", value: 5 }]), []);
  assert.match(errors.at(-1), /adoptLegacy failed.*value: expected an object/);
  // Not a list at all: the same.
  assert.deepEqual(await run(() => ({ s01e01: old[0] })), []);
  assert.match(errors.at(-1), /adoptLegacy failed.*records: expected an array/);
  assert.equal(localStorage.getItem("sinkron:v1:adopted"), null);
  // Works: written with its own time, and the scope is marked.
  const adopted = await run((scope) => (scopes.push(scope), old));
  assert.deepEqual(
    adopted.map((r) => [r.key, r.value, r.updatedAt]),
    [["s01e01", { showId: "s01", position: 42 }, 1_700_000_000_000]],
  );
  assert.deepEqual(JSON.parse(localStorage.getItem("sinkron:v1:adopted")), [null]);
  // Never asked again for that scope on this device.
  await run((scope) => (scopes.push(scope), old));
  assert.deepEqual(scopes, [null]);
});
