// The optional push channel (`--poke sse`, the client's `pokes`) in Debian's Chromium against
// real servers: a write through one node reaches a leader tab held by another at once, a
// stream cut leaves the tab polling as before, and a server without pokes is asked once.
// Requests are counted at the network level (playwright's request events).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  Server, artifacts, countRequests, launch, open, percentile, setVisible, signIn, signUp, streamKillingProxy, until,
  waitPressed, withPostgres, withServer,
} from "./support.mjs";

let browser;
const metrics = {};
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
  writeFileSync(join(artifacts, "pokes-metrics.json"), JSON.stringify(metrics, null, 2) + "\n");
  console.log("metrics:", JSON.stringify(metrics));
});

/** The wall-clock time (ms) the page's last push got its answer, from its resource timing. */
const lastPushAnswered = (page) =>
  page.evaluate(() => {
    const pushes = performance.getEntriesByType("resource").filter((e) => new URL(e.name).pathname === "/api/user/me/changes");
    const last = pushes.at(-1);
    return last ? performance.timeOrigin + last.responseEnd : null;
  });

/**
 * Records in the page when `testId`'s `aria-pressed` next becomes `value` (wall-clock ms);
 * fails after `timeout` ms.
 */
const watchPressed = (page, testId, value, timeout = 10_000) =>
  page.evaluate(
    ([testId, value, timeout]) =>
      new Promise((resolve, reject) => {
        const el = document.querySelector(`[data-testid="${testId}"]`);
        const observer = new MutationObserver(() => {
          if (el.getAttribute("aria-pressed") !== value) return;
          observer.disconnect();
          resolve(performance.timeOrigin + performance.now());
        });
        observer.observe(el, { attributes: true, attributeFilter: ["aria-pressed"] });
        setTimeout(() => reject(new Error(`${testId} did not become ${value} within ${timeout} ms`)), timeout);
      }),
    [testId, value, timeout],
  );

describe("pokes", () => {
  test("a write through one node pokes the leader tab on another, which pulls at once", () =>
    withPostgres(async (database) => {
      // Clients poll every 10 minutes here: only a poke can bring a change within seconds.
      const args = ["--poke", "sse", "--poll-interval", "600", "--poll-interval-max", "600"];
      const nodeA = await Server.start({ database, args });
      const nodeB = await Server.start({ database, args });
      try {
        const watching = await open(await browser.newContext(), nodeA, { interval: 600_000, query: "&pokes=1" });
        const requests = countRequests(watching);
        await signUp(watching, "poked");
        await until(() => requests.events === 1, { what: "the leader's poke stream" });
        const writing = await open(await browser.newContext(), nodeB, { interval: 600_000, query: "&pokes=1" });
        await signIn(writing, "poked");

        const latencies = [];
        const shows = ["s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09", "s10"];
        for (const [i, show] of shows.entries()) {
          const pullsBefore = requests.pulls;
          const seen = watchPressed(watching, `favorite-${show}`, "true");
          await writing.getByTestId(`favorite-${show}`).click();
          const shownAt = await seen;
          await until(async () => (await writing.evaluate(() => performance.getEntriesByType("resource").filter((e) => e.name.endsWith("/api/user/me/changes")).length)) > i, {
            what: "the push's answer",
          });
          latencies.push(shownAt - (await lastPushAnswered(writing)));
          assert.equal(requests.pulls, pullsBefore + 1, `one pull per poke: ${requests.log.join(", ")}`);
        }
        assert.equal(requests.events, 1, "one stream all along");
        metrics.pokeToUi = { samples: latencies.length, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };

        // Hidden, the tab gives up the stream and sends nothing; a guest never holds one.
        const before = requests.all;
        await setVisible(watching, false);
        await writing.getByTestId("favorite-s11").click();
        await new Promise((r) => setTimeout(r, 1500));
        assert.equal(requests.all, before, `a hidden tab made requests: ${requests.log.slice(-3)}`);
        const guest = await open(await browser.newContext(), nodeA, { interval: 1000, query: "&pokes=1" });
        const guestRequests = countRequests(guest);
        await new Promise((r) => setTimeout(r, 2500));
        assert.equal(guestRequests.all, 0, "a guest sends nothing");
        // Shown again: the stream opens again, and the change made meanwhile arrives.
        await setVisible(watching, true);
        await waitPressed(watching, "favorite-s11", "true", 10_000);
        await until(() => requests.events === 2, { what: "the stream opened again" });
      } finally {
        await nodeA.stop();
        await nodeB.stop();
      }
    }));

  test("a cut stream leaves the tab polling, and it is opened again after the next answer", () =>
    withServer(
      async (first) => {
        let server = first;
        const page = await open(await browser.newContext(), server, { interval: 1000, query: "&pokes=1" });
        const requests = countRequests(page);
        await signUp(page, "cut");
        await until(() => requests.events === 1, { what: "the poke stream" });
        // The node dies and comes back on the same port and database: the stream is cut.
        server = await server.restart();
        try {
          const pullsAtCut = requests.pulls;
          await until(() => requests.pulls >= pullsAtCut + 2, { timeout: 10_000, what: "polls after the cut" });
          await until(() => requests.events === 2, { timeout: 10_000, what: "the stream opened again" });
          // Another device's write arrives through the new stream or the next poll.
          const other = await open(await browser.newContext(), server, { interval: 600_000 });
          await signIn(other, "cut");
          await other.getByTestId("favorite-s03").click();
          await waitPressed(page, "favorite-s03", "true", 10_000);
        } finally {
          await server.stop();
        }
      },
      ["--poke", "sse"],
    ));

  test("a stream that died on the way without a word is given up after a minute of silence, and opened again", () =>
    withServer(
      async (server) => {
        const link = await streamKillingProxy(server);
        try {
          // Clients poll every 10 minutes here: only a poke brings a change within seconds.
          const phone = await browser.newContext();
          const watching = await open(phone, link, { interval: 600_000, query: "&pokes=1" });
          await phone.clock.install();
          const requests = countRequests(watching);
          await signUp(watching, "silenced");
          await until(() => requests.events === 1, { what: "the poke stream" });
          const writing = await open(await browser.newContext(), server, { interval: 600_000 });
          await signIn(writing, "silenced");
          await writing.getByTestId("favorite-s01").click();
          await waitPressed(watching, "favorite-s01", "true", 10_000);

          // The stream's connection dies without a word: the server's comments (every 25 s)
          // and pokes no longer arrive, and the browser is told nothing.
          assert.equal(link.silenceStreams(), 1, "one stream to silence");
          await writing.getByTestId("favorite-s02").click();
          await phone.clock.runFor(61_000);
          // Given up: the tab's next answer opens it again (here, its own write's push).
          await watching.getByTestId("favorite-s05").click();
          await until(() => requests.events === 2, { what: () => `the stream opened again: ${requests.log.join(", ")}` });
          await writing.getByTestId("favorite-s03").click();
          await waitPressed(watching, "favorite-s03", "true", 10_000);
          await waitPressed(watching, "favorite-s02", "true", 10_000);
        } finally {
          await link.close();
        }
      },
      ["--poke", "sse", "--poll-interval", "600", "--poll-interval-max", "600"],
    ));

  test("a server without pokes is asked once, and polling goes on", () =>
    withServer(async (server) => {
      const page = await open(await browser.newContext(), server, { interval: 1000, query: "&pokes=1" });
      const requests = countRequests(page);
      await signUp(page, "nopokes");
      const pulls = requests.pulls;
      await until(() => requests.pulls >= pulls + 3, { timeout: 10_000, what: "three polls" });
      assert.equal(requests.events, 1, `asked for a stream more than once: ${requests.log.join(", ")}`);
    }));
});
