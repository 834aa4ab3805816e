// The demo shows it, in Chromium: a real video drives the episode's synced position, the
// catalogue's 20 shows are distinct, and the sync panel counts what the network saw.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { countRequests, launch, open, openEpisodes, recordsOf, setVisible, settled, signIn, signUp, syncedState, until, withServer } from "./support.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});


/** The position the player shows (the store's, as `data-position`). */
const shown = async (page) => Number(await page.getByTestId("player-position").getAttribute("data-position"));

/** Resolves once the player shows exactly `position`. */
const showing = (page, position, timeout = 15000) =>
  page.locator(`[data-testid="player-position"][data-position="${position}"]`).waitFor({ timeout });

/** The positions of `key` that `page` pushes from now on, as they are sent. */
function pushedPositions(page, key) {
  const sent = [];
  page.on("request", (r) => {
    if (new URL(r.url()).pathname !== "/api/user/me/changes") return;
    for (const m of r.postDataJSON().mutations) if (m.key === key) sent.push(m.value?.position);
  });
  return sent;
}

/** The clip's state in the page. */
const clip = (page) =>
  page.getByTestId("player-video").evaluate((v) => ({ paused: v.paused, time: v.currentTime, duration: v.duration, src: v.currentSrc }));

/** Plays the first episode of `show` from its start for a second, pauses, and waits until it is sent. */
async function playOneSecond(page, show) {
  await openEpisodes(page, show);
  await page.getByTestId(`play-${show}e01`).click();
  await showing(page, 1);
  await page.getByTestId("pause").click();
  await settled(page);
}

/**
 * The TV plays a second of `show`'s first episode; the phone goes on from there for a second,
 * pauses and syncs, then is cut off (`cut`, with the phone's context and page); the TV seeks
 * far ahead meanwhile, which the phone cannot know. The phone plays on from its copy; once
 * reconnected (`reconnect`) its writes go (it loses nothing silently) but lose to the TV's
 * later progress: they carry the time of what the phone knew, not the time they were made,
 * and the phone then shows the TV's position. With `beside`, the phone plays in a second
 * window beside the one that leads (and polls), and `cut` gets that one too. With `reload`,
 * the phone's window is reloaded once cut off, and plays the episode again from its stored copy.
 */
async function staleResume(server, { user, show, interval, cut, reconnect, beside = false, reload = false }) {
  const episode = `${show}e01`;
  const tv = await browser.newContext();
  const a = await open(tv, server);
  const auth = await signUp(a, user);
  await playOneSecond(a, show);

  const phone = await browser.newContext();
  const lead = beside ? await open(phone, server, { interval }) : null;
  if (lead) await signIn(lead, user);
  const b = await open(phone, server, { interval });
  if (!lead) await signIn(b, user);
  await openEpisodes(b, show);
  await b.getByTestId(`play-${episode}`).click();
  await showing(b, 2);
  await b.getByTestId("pause").click();
  await settled(b);
  const before = await shown(b);
  assert.equal(recordsOf(await server.state(auth), "history")[episode].position, before);
  await cut(phone, b, lead);

  for (let i = 0; i < 3; i++) await a.getByTestId("seek-forward").click();
  await settled(a);
  const ahead = await shown(a);
  assert.ok(ahead >= 30, `the TV is at ${ahead} s`);

  // Cut off, the phone plays on from its copy (the player stays open: its clip is loaded);
  // its positions show at once there.
  const sent = pushedPositions(b, episode);
  if (reload) {
    await b.reload();
    await openEpisodes(b, show);
    await b.getByTestId(`play-${episode}`).click();
  } else {
    await b.getByTestId("resume").click();
  }
  await showing(b, before + 2);
  await b.getByTestId("pause").click();
  const played = await shown(b);
  assert.ok(played < ahead, `the phone played to ${played} s`);

  await reconnect(phone, b);
  await showing(b, ahead);
  await settled(b);
  assert.ok(sent.includes(played), `the phone pushed ${sent}`);
  assert.equal(recordsOf(await server.state(auth), "history")[episode].position, ahead);
  await tv.close();
  await phone.close();
}

/** Resolves after `n` more pull answers: about `n` poll intervals of the page's own time. */
async function pulls(page, n) {
  for (let i = 0; i < n; i++) {
    await page.waitForResponse((r) => new URL(r.url()).pathname === "/api/user/me" && r.request().method() === "GET");
  }
}

describe("player", () => {
  test("the video's playback advances the episode's position; pause stops it, a seek sets it, a reload resumes it", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      // A poll a second: the pulls below mark the passing of the page's time.
      const page = await open(context, server, { interval: 1000 });
      const auth = await signUp(page, "viewer");
      await openEpisodes(page, "s05");
      await page.getByTestId("play-s05e01").click();

      // The clip plays (muted, looping) and the position follows it, past the end of the
      // 6-second clip: it is the episode's position, not the clip's time.
      await page.waitForFunction(() => {
        const v = document.querySelector('[data-testid="player-video"]');
        return v && !v.paused && v.currentTime > 0;
      });
      const playing = await clip(page);
      assert.match(playing.src, /\/assets\/clip-[\w-]+\.webm$/);
      assert.ok(Math.abs(playing.duration - 6) < 0.1, `the clip lasts 6 s: ${playing.duration}`);
      await showing(page, 2);
      const [from, fromAt] = [await shown(page), await page.evaluate(() => performance.now())];
      await showing(page, 8);
      const [to, toAt] = [await shown(page), await page.evaluate(() => performance.now())];
      const seconds = (toAt - fromAt) / 1000;
      // About a second of position a second: not more (the video cannot play faster), and
      // not much less (a busy machine may stall the video, and with it the position).
      const rate = (to - from) / seconds;
      assert.ok(rate > 0.5 && rate < 1.3, `${to - from} s of position in ${seconds.toFixed(2)} s of playback`);
      assert.ok((await clip(page)).time < 6);
      // At twice the speed, two seconds of position a second: the video's time drives it,
      // not the page's clock.
      await page.getByTestId("player-video").evaluate((v) => (v.playbackRate = 2));
      const [fast, fastAt] = [await shown(page), await page.evaluate(() => performance.now())];
      await showing(page, fast + 8);
      const fastSeconds = (await page.evaluate(() => performance.now()) - fastAt) / 1000;
      assert.ok(8 / fastSeconds > 1.3, `8 s of position in ${fastSeconds.toFixed(2)} s at twice the speed`);
      await page.getByTestId("player-video").evaluate((v) => (v.playbackRate = 1));

      // Pause: the video stops, and so does the position, while the page's time goes on.
      await page.getByTestId("pause").click();
      await page.getByTestId("resume").waitFor();
      assert.equal((await clip(page)).paused, true, "the video is paused");
      const held = await shown(page);
      await pulls(page, 3);
      assert.equal(await shown(page), held, "the position held while paused");
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      assert.equal(recordsOf(await server.state(auth), "history").s05e01.position, held);

      // Seek: the buttons move it by 10 s, the range input sets it; the server gets it.
      await page.getByTestId("seek-forward").click();
      await showing(page, held + 10);
      await page.getByTestId("seek-forward").click();
      await showing(page, held + 20);
      await page.getByTestId("seek-back").click();
      await showing(page, held + 10);
      await page.getByTestId("player-seek").fill("600");
      await showing(page, 600);
      await until(async () => recordsOf(await server.state(auth), "history").s05e01.position === 600, { what: "position 600 on the server" });

      // Play again: the position goes on from the seek.
      await page.getByTestId("resume").click();
      await showing(page, 601);
      await showing(page, 602);
      await page.getByTestId("pause").click();
      const stored = await shown(page);
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();

      // A reload: the episode resumes at the stored position, and plays on from there.
      await page.reload();
      await syncedState(page);
      await page.getByTestId(`continue-s05e01`).click();
      await page.getByTestId("pause").waitFor();
      await showing(page, stored + 1);
      await showing(page, stored + 2);
      assert.equal((await clip(page)).paused, false);
      await context.close();
    }));
});

describe("playback costs almost nothing", () => {
  test("while a video plays its position is pushed once per hot interval, a pause sends it at once, and another device follows", () =>
    withServer(async (server) => {
      // The position is pushed every 5 s at most here (30 s by default), so 20 s of playback
      // show the rule: one push per second played without it.
      const HOT = 5;
      const deviceA = await browser.newContext();
      const a = await open(deviceA, server, { query: `&hot=${HOT * 1000}` });
      const auth = await signUp(a, "watcher");
      const deviceB = await browser.newContext();
      // The other device polls every second: its pulls are this test's clock.
      const b = await open(deviceB, server, { interval: 1000 });
      await signIn(b, "watcher");
      // B shows the history page, with each entry's position.
      await b.evaluate(() => (location.hash = "#/history"));
      await b.getByTestId("history").waitFor();
      await openEpisodes(a, "s07");
      const counts = countRequests(a, { where: (url) => url.pathname === "/api/user/me/changes" });
      await a.getByTestId("play-s07e01").click();
      await showing(a, 1);

      // At each of B's pulls: how far B's copy of the position is behind A's.
      const onB = () => b.locator('[data-testid="history-s07e01"]').evaluateAll((els) => Number(els[0]?.dataset.position ?? 0));
      let worst = 0;
      let played = 0;
      while (played < 20) {
        await pulls(b, 1);
        played = await shown(a);
        worst = Math.max(worst, played - (await onB()));
      }
      const pushes = counts.pushes;
      played = await shown(a);
      // One push as it starts, then one per 5 s of playback (and one spare for a slow start).
      assert.ok(pushes <= Math.floor(played / HOT) + 2, `${pushes} pushes in ${played} s of playback: ${counts.log.join(", ")}`);
      assert.ok(pushes >= 2, `${pushes} pushes in ${played} s of playback`);
      // Never more than the hot interval and one poll behind, with a second to spare.
      assert.ok(worst <= HOT + 2, `device B was ${worst} s behind`);

      // A pause sends the position at once: B has it exactly, by its next pulls.
      await a.getByTestId("pause").click();
      await a.getByTestId("resume").waitFor();
      const held = await shown(a);
      await b.locator(`[data-testid="history-s07e01"][data-position="${held}"]`).waitFor({ timeout: 5000 });
      assert.equal(recordsOf(await server.state(auth), "history").s07e01.position, held);
      await deviceA.close();
      await deviceB.close();
    }));
});

/**
 * Plays `show`'s first episode, its position pushed every ten minutes at most (only a rule can
 * push it sooner), hides the page while `flush` handles the flush that sends (once), shows the
 * page again and waits `within` ms for the server to hold the position shown as it hid.
 */
async function flushedOnHide(server, { user, show, query = "", flush, within }) {
  const context = await browser.newContext();
  const page = await open(context, server, { query: `&hot=600000${query}` });
  const auth = await signUp(page, user);
  await openEpisodes(page, show);
  await page.getByTestId(`play-${show}e01`).click();
  // The first position went at once; the next ones wait for the interval.
  await showing(page, 2);
  const stored = async () => recordsOf(await server.state(auth), "history")[`${show}e01`]?.position ?? 0;
  let handled = 0;
  await page.route("**/api/user/me/changes", (route) => (handled++, flush(route)), { times: 1 });
  await setVisible(page, false);
  await until(() => handled === 1, { what: "the flush as the page was hidden" });
  const hidden = await shown(page);
  assert.ok((await stored()) < hidden, "the flush did not reach the server");
  await setVisible(page, true);
  await until(async () => (await stored()) >= hidden, { timeout: within, what: async () => `the server to hold ${hidden}, not ${await stored()}` });
  await context.close();
}

describe("a flush that failed as the page was hidden", () => {
  test("the position it carried goes as soon as the page is shown again, not a hot interval later", () =>
    withServer((server) =>
      // The server cannot be reached for the flush; shown again, the page pushes at once (ten
      // minutes early), with every position written since.
      flushedOnHide(server, { user: "blinker", show: "s08", flush: (route) => route.abort("connectionfailed"), within: 5000 }),
    ));

  test("a flush never answered (a connection gone dead) is given up after the request timeout, and the position goes then", () =>
    withServer((server) =>
      // Neither an answer nor a failure: given up after 1.5 s, not left to the interval.
      flushedOnHide(server, { user: "stranded", show: "s09", query: "&requestTimeout=1500", flush: () => undefined, within: 8000 }),
    ));
});

describe("resuming on another device", () => {
  test("opening the player pulls first: a stale copy resumes from the other device's further progress and never writes over it", () =>
    withServer(async (server) => {
      const tv = await browser.newContext();
      const a = await open(tv, server);
      const auth = await signUp(a, "resumer");
      await openEpisodes(a, "s06");
      await a.getByTestId("play-s06e01").click();
      await showing(a, 1);
      await a.getByTestId("pause").click();
      const synced = (page) => page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      await synced(a);

      // The phone signs in and holds the episode; it polls only every 10 minutes.
      const phone = await browser.newContext();
      const b = await open(phone, server, { interval: 600_000 });
      await phone.clock.install();
      await signIn(b, "resumer");
      const copy = await b.evaluate(() => Object.keys(localStorage).find((k) => k.endsWith(":r:history:s06e01")));
      assert.ok(copy, "the phone holds a copy of the episode");

      // The TV seeks far ahead: the server has it, the phone's copy is stale.
      for (let i = 0; i < 3; i++) await a.getByTestId("seek-forward").click();
      await synced(a);
      const ahead = await shown(a);
      assert.ok(ahead >= 30, `the TV is at ${ahead} s`);
      assert.equal(recordsOf(await server.state(auth), "history").s06e01.position, ahead);
      // Past the few seconds in which a state just pulled counts as fresh.
      await phone.clock.runFor(5_000);

      const sent = pushedPositions(b, "s06e01");
      await openEpisodes(b, "s06");
      await b.getByTestId("play-s06e01").click();
      // It goes on from the TV's position, not from its own copy's.
      await showing(b, ahead + 1);
      await b.getByTestId("pause").click();
      await synced(b);
      assert.ok(sent.length > 0 && sent.every((p) => p > ahead), `the phone pushed positions ${sent}, the TV was at ${ahead}`);
      assert.ok(recordsOf(await server.state(auth), "history").s06e01.position > ahead);
      await tv.close();
      await phone.close();
    }));

  test("opening an episode this device never saw writes nothing before the pull: the other device's progress on it survives", () =>
    withServer(async (server) => {
      // The phone signs in first, while the account has no history at all.
      const phone = await browser.newContext();
      const b = await open(phone, server, { interval: 600_000 });
      await phone.clock.install();
      const auth = await signUp(b, "newcomer");
      await settled(b);

      // The TV then watches an episode and seeks ahead: the phone has no copy of it.
      const tv = await browser.newContext();
      const a = await open(tv, server);
      await signIn(a, "newcomer");
      await openEpisodes(a, "s07");
      await a.getByTestId("play-s07e01").click();
      await showing(a, 1);
      for (let i = 0; i < 3; i++) await a.getByTestId("seek-forward").click();
      await a.getByTestId("pause").click();
      await settled(a);
      const ahead = await shown(a);
      assert.ok(ahead >= 30, `the TV is at ${ahead} s`);
      assert.equal(recordsOf(await server.state(auth), "history").s07e01.position, ahead);
      await phone.clock.runFor(5_000);
      assert.equal(
        await b.evaluate(() => Object.keys(localStorage).some((k) => k.endsWith(":r:history:s07e01"))),
        false,
        "the phone has no copy of the episode",
      );

      const sent = pushedPositions(b, "s07e01");
      await openEpisodes(b, "s07");
      await b.getByTestId("play-s07e01").click();
      await showing(b, ahead + 1);
      await b.getByTestId("pause").click();
      await settled(b);
      assert.ok(sent.length > 0 && sent.every((p) => p > ahead), `the phone pushed positions ${sent}, the TV was at ${ahead}`);
      const stored = recordsOf(await server.state(auth), "history").s07e01;
      assert.ok(stored.position > ahead, `the server holds ${stored.position}`);
      // The entry the phone's playback wrote is whole: its show and duration, not only a position.
      assert.equal(stored.showId, "s07");
      assert.equal(typeof stored.duration, "number");
      await tv.close();
      await phone.close();
    }));

  test("offline, playback from a stale copy cannot undo the other device's progress made since", () =>
    withServer((server) =>
      staleResume(server, {
        user: "traveller",
        show: "s08",
        interval: 600_000,
        cut: (phone) => phone.setOffline(true),
        reconnect: (phone) => phone.setOffline(false),
      }),
    ));

  test("cut off while the browser says online (requests failing), playback from a stale copy still cannot undo the other device's progress", () =>
    withServer((server) =>
      staleResume(server, {
        user: "portal",
        show: "s10",
        // Polling every 3 s, so it retries as often once reached again.
        interval: 3000,
        // Its requests fail, as behind a captive portal, while the browser still says online.
        // It knows once a request has failed (its status says offline).
        cut: async (phone, b) => {
          await b.route("**/api/**", (route) => route.abort("internetdisconnected"));
          await b.locator('[data-testid="sync-status"][data-state="offline"]').waitFor();
          assert.equal(await b.evaluate(() => navigator.onLine), true);
        },
        reconnect: (phone, b) => b.unroute("**/api/**"),
      }),
    ));

  test("cut off while the browser says online, a window playing beside the one that leads, having made no request itself, still cannot undo the other device's progress", () =>
    withServer((server) =>
      staleResume(server, {
        user: "sidebyside",
        show: "s11",
        interval: 3000,
        beside: true,
        // Every request of the phone fails; the window that leads learns it at its next poll,
        // and tells the one playing, which has sent nothing since: both say offline.
        cut: async (phone, b, lead) => {
          const sent = [];
          b.on("request", (r) => r.url().includes("/api/") && sent.push(r.url()));
          await phone.route("**/api/**", (route) => route.abort("internetdisconnected"));
          await lead.locator('[data-testid="sync-status"][data-state="offline"]').waitFor();
          await b.locator('[data-testid="sync-status"][data-state="offline"]').waitFor();
          assert.deepEqual(sent, [], "the window playing made no request");
        },
        reconnect: (phone) => phone.unroute("**/api/**"),
      }),
    ));

  test("cut off while the browser says online, a window reloaded beside the one that leads is told at once, and its playback still cannot undo the other device's progress", () =>
    withServer((server) =>
      staleResume(server, {
        user: "reloader",
        show: "s12",
        interval: 3000,
        beside: true,
        reload: true,
        cut: async (phone, b, lead) => {
          await phone.route("**/api/**", (route) => route.abort("internetdisconnected"));
          await lead.locator('[data-testid="sync-status"][data-state="offline"]').waitFor();
        },
        reconnect: (phone) => phone.unroute("**/api/**"),
      }),
    ));

  test("a page reloaded without the server, then offline, plays from its stored copy and still loses to the other device's later progress", () =>
    withServer(async (server) => {
      const tv = await browser.newContext();
      const a = await open(tv, server);
      const auth = await signUp(a, "commuter");
      await playOneSecond(a, "s09");

      // The phone syncs the episode, then the TV seeks far ahead.
      const phone = await browser.newContext();
      const b = await open(phone, server, { interval: 600_000 });
      await signIn(b, "commuter");
      await settled(b);
      for (let i = 0; i < 3; i++) await a.getByTestId("seek-forward").click();
      await settled(a);
      const ahead = await shown(a);
      assert.ok(ahead >= 30, `the TV is at ${ahead} s`);

      // The phone's page is reloaded where the server cannot be reached: it starts from
      // what it stored (the episode at 1 s) and never syncs. Its clip loads, paused at
      // once, and then the device goes offline.
      await b.route("**/api/**", (route) => route.abort());
      await b.reload();
      await b.getByTestId("sync-status").waitFor();
      await openEpisodes(b, "s09");
      await b.getByTestId("play-s09e01").click();
      await b.getByTestId("pause").click();
      await b.getByTestId("player-video").evaluate((v) => (v.readyState >= 3 ? null : new Promise((r) => v.addEventListener("canplay", r, { once: true }))));
      assert.equal(await shown(b), 1, "the phone starts from its stored copy");
      await phone.setOffline(true);
      const sent = pushedPositions(b, "s09e01");
      await b.getByTestId("resume").click();
      await showing(b, 3);
      await b.getByTestId("pause").click();

      // Back online, its writes go but lose to the TV's: they carry the time of what the
      // phone stored, not the time they were made.
      await b.unroute("**/api/**");
      await phone.setOffline(false);
      await showing(b, ahead);
      await settled(b);
      assert.ok(sent.length > 0 && sent.every((p) => p < ahead), `the phone pushed ${sent}`);
      assert.equal(recordsOf(await server.state(auth), "history").s09e01.position, ahead);
      await tv.close();
      await phone.close();
    }));
});

describe("a refused autoplay", () => {
  test("the browser refusing to start the clip writes nothing: an episode opened and never played is not in the history", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      // As a browser that refuses autoplay does: play() is refused until the user's gesture
      // (`refuseAutoplay` set to false below).
      await context.addInitScript(() => {
        const play = HTMLMediaElement.prototype.play;
        HTMLMediaElement.prototype.play = function () {
          if (window.refuseAutoplay === false) return play.call(this);
          return Promise.reject(new DOMException("autoplay refused", "NotAllowedError"));
        };
      });
      const page = await open(context, server);
      const auth = await signUp(page, "refused");
      await openEpisodes(page, "s08");
      await page.getByTestId("play-s08e01").click();
      // The player shows itself paused, as the clip is.
      await page.getByTestId("resume").waitFor();
      await settled(page);
      const queued = await page.evaluate(() => Object.entries(localStorage).filter(([k, v]) => k.includes(":o:") && v.includes("s08e01")).length);
      assert.equal(queued, 0, "nothing queued for the episode");
      assert.equal(recordsOf(await server.state(auth), "history").s08e01, undefined);
      // Played by the user and paused: now it is in the history.
      await page.evaluate(() => (window.refuseAutoplay = false));
      await page.getByTestId("resume").click();
      await page.getByTestId("pause").click();
      await settled(page);
      assert.equal(recordsOf(await server.state(auth), "history").s08e01?.showId, "s08");
      await context.close();
    }));
});

describe("catalogue", () => {
  test("the 20 shows have 20 distinct titles", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await open(context, server);
      const titles = await page.locator('[data-testid^="title-s"]').allTextContents();
      assert.equal(titles.length, 20);
      assert.equal(new Set(titles).size, 20, `repeated: ${titles.filter((t, i) => titles.indexOf(t) !== i)}`);
      await context.close();
    }));
});

describe("sync panel", () => {
  test("the panel counts the pushes, pulls and 304s the network saw", () =>
    withServer(async (server) => {
      const context = await browser.newContext();
      const page = await context.newPage();
      // From before the page loads, as the panel counts.
      const counts = countRequests(page);
      const answered = { pulls: 0, notModified: 0, pushes: 0 };
      page.on("response", (r) => {
        const path = new URL(r.url()).pathname;
        if (path === "/api/user/me" && r.request().method() === "GET") {
          answered.pulls++;
          if (r.status() === 304) answered.notModified++;
        } else if (path === "/api/user/me/changes") answered.pushes++;
      });
      const seen = () => ({ pushes: counts.pushes, pulls: counts.pulls, notModified: answered.notModified });
      await page.goto(`${server.url}/?interval=1000`);
      await page.getByTestId("sync-status").waitFor();
      await signUp(page, "counter");
      await page.getByTestId("favorite-s03").click();
      await openEpisodes(page, "s03");
      await page.getByTestId("play-s03e01").click();
      await page.locator('[data-testid="player-position"][data-position="2"]').waitFor();
      await page.getByTestId("pause").click();
      await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
      await until(() => seen().notModified >= 3, { what: "three 304s" });

      // The page keeps polling, so compare at a moment when every answer seen has arrived.
      const panel = () =>
        page.getByTestId("sync-panel").evaluate((p) => ({
          pushes: Number(p.dataset.pushes),
          pulls: Number(p.dataset.pulls),
          notModified: Number(p.dataset.notModified),
        }));
      let last;
      await until(
        async () => {
          last = { panel: await panel(), seen: seen(), inFlight: counts.pulls + counts.pushes - answered.pulls - answered.pushes };
          return last.inFlight === 0 && JSON.stringify(last.panel) === JSON.stringify(last.seen);
        },
        { what: "the panel to match the network", timeout: 10000 },
      ).catch((e) => assert.fail(`${e.message}: ${JSON.stringify(last)}`));
      assert.ok(last.seen.pushes >= 1 && last.seen.pulls > last.seen.notModified, JSON.stringify(last.seen));
      assert.match(await page.getByTestId("sync-panel").textContent(), /only the leader tab polls/);
      await context.close();
    }));
});
