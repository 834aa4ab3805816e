// How the optimistic write's latency settles as the page's code warms up: three rounds of
// 200 clicks on one favourite, two seconds apart on one page, each with its p50 and p99, its
// mean per 20 clicks, its six slowest clicks (ms@place) and the unsent writes left in the
// outbox. The latency test measures the first round only (there in turns with a plain React
// toggle, ten clicks of each at a time).
// * `--split`: each click split into the engine's calls (`sinkron_call`), `localStorage`
//   writes, `BroadcastChannel` posts and the rest (the store, React, the DOM), as the round's
//   means and for its slowest clicks. `--stub-storage` leaves the stored outbox unwritten and
//   `--stub-channel` the posts unsent, to see what they cost (the page then keeps nothing
//   across a reload: a measurement only).
// * `--trace`: the first round runs under Chromium's tracing, and each of its slowest clicks
//   is split into the main thread's longest pieces (the click's handler, React's render after
//   it, a garbage collection).
// Other arguments are Chromium switches to compare, e.g. V8 compiling the engine's module with
// its optimizing tier up front (`--js-flags=--no-wasm-dynamic-tiering`):
//   cargo xtask demo
//   SINKRON_BIN=target/debug/sinkron node e2e/click-rounds.mjs [--split [--stub-storage] [--stub-channel]] [--trace] [switch ...]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { artifacts, launch, open, percentile, Server, signUp } from "./support.mjs";

const CLICKS = 200;
const options = ["--trace", "--split", "--stub-storage", "--stub-channel"];
const [trace, splitClicks, stubStorage, stubChannel] = options.map((o) => process.argv.includes(o));
const server = await Server.start();
const browser = await launch({ flags: process.argv.slice(2).filter((a) => !options.includes(a)) });
try {
  const context = await browser.newContext();
  if (splitClicks) await context.addInitScript(timeParts, { storage: stubStorage, channel: stubChannel });
  const page = await open(context, server);
  await signUp(page, "rounds");
  for (let round = 1; round <= 3; round++) {
    const path = join(artifacts, "click-rounds.trace.json");
    const traced = trace && round === 1;
    if (traced) await browser.startTracing(page, { path, categories: ["devtools.timeline", "blink.user_timing", "disabled-by-default-v8.gc"] });
    const clicks = await page.evaluate(
      async ({ count }) => {
        const button = document.querySelector('[data-testid="favorite-s02"]');
        const out = [];
        for (let i = 0; i < count; i++) {
          const before = button.getAttribute("aria-pressed");
          const from = { ...window.__spent };
          performance.mark(`click ${i}`);
          const t0 = performance.now();
          const changed = new Promise((resolve) => {
            const observer = new MutationObserver(() => {
              if (button.getAttribute("aria-pressed") === before) return;
              observer.disconnect();
              resolve(performance.now());
            });
            observer.observe(button, { attributes: true });
          });
          button.click();
          const total = (await changed) - t0;
          performance.mark(`shown ${i}`);
          const to = window.__spent ?? {};
          const parts = Object.fromEntries(Object.keys(to).map((k) => [k, to[k] - from[k]]));
          out.push({ total, parts });
        }
        return out;
      },
      { count: CLICKS },
    );
    if (traced) await browser.stopTracing();
    const samples = clicks.map((c) => c.total);
    const means = [];
    for (let at = 0; at < CLICKS; at += 20) {
      const part = samples.slice(at, at + 20);
      means.push((part.reduce((a, b) => a + b, 0) / part.length).toFixed(2));
    }
    const slowest = samples
      .map((ms, place) => [ms, place])
      .sort((a, b) => b[0] - a[0])
      .slice(0, 6);
    const unsent = await page.evaluate(() =>
      Object.keys(localStorage)
        .filter((k) => k.includes(":o:"))
        .reduce((n, k) => n + JSON.parse(localStorage.getItem(k)).m.length, 0),
    );
    console.log(
      `round ${round}: p50 ${percentile(samples, 50).toFixed(1)} ms, p99 ${percentile(samples, 99).toFixed(1)} ms; ` +
        `mean per 20 clicks ${means.join(" ")}; slowest ${slowest.map(([ms, place]) => `${ms.toFixed(1)}@${place}`).join(" ")}; ` +
        `unsent writes ${unsent}`,
    );
    if (splitClicks) split(clicks, slowest);
    if (traced) splitTrace(JSON.parse(readFileSync(path, "utf8")).traceEvents, slowest);
    await page.waitForTimeout(2000);
  }
} finally {
  await browser.close();
  await server.stop();
}

/**
 * In the page, before its code: the time spent in the engine's calls, `localStorage` writes
 * and `BroadcastChannel` posts, summed in `window.__spent`; `stubs` leave the stored outbox
 * or the posts out.
 */
function timeParts(stubs) {
  const spent = (window.__spent = { engine: 0, storage: 0, channel: 0 });
  const timed = (target, name, part, skip = () => false) => {
    const original = target[name];
    target[name] = function (...args) {
      if (skip(...args)) return undefined;
      const t0 = performance.now();
      try {
        return original.apply(this, args);
      } finally {
        spent[part] += performance.now() - t0;
      }
    };
  };
  timed(Storage.prototype, "setItem", "storage", (key) => stubs.storage && key.includes(":o:"));
  timed(BroadcastChannel.prototype, "postMessage", "channel", () => stubs.channel);
  const instantiate = WebAssembly.instantiate;
  WebAssembly.instantiate = async function (...args) {
    const instance = await instantiate.apply(this, args);
    const exports = { ...instance.exports };
    timed(exports, "sinkron_call", "engine");
    Object.defineProperty(instance, "exports", { value: exports });
    return instance;
  };
}

/** The round's mean per part and each slow click's parts (ms); the rest is the store, React and the DOM. */
function split(clicks, slowest) {
  const rest = (c) => c.total - Object.values(c.parts).reduce((a, b) => a + b, 0);
  const names = Object.keys(clicks[0].parts);
  const mean = (f) => (clicks.reduce((s, c) => s + f(c), 0) / clicks.length).toFixed(2);
  console.log(`  means: ${names.map((n) => `${n} ${mean((c) => c.parts[n])}`).join(", ")}, rest ${mean(rest)}`);
  for (const [ms, place] of slowest) {
    const c = clicks[place];
    console.log(`  ${ms.toFixed(1)}@${place}: ${names.map((n) => `${n} ${c.parts[n].toFixed(1)}`).join(", ")}, rest ${rest(c).toFixed(1)}`);
  }
}

/** Each slow click's longest pieces of main-thread work (ms), from its two marks. */
function splitTrace(events, slowest) {
  const marks = new Map(events.filter((e) => e.cat?.includes("user_timing")).map((e) => [e.name, e]));
  const pieces = new Set(["EventDispatch", "FunctionCall", "MinorGC", "MajorGC"]);
  for (const [ms, place] of slowest) {
    const from = marks.get(`click ${place}`);
    const to = marks.get(`shown ${place}`);
    if (!from || !to) continue;
    const inside = events.filter((e) => e.tid === from.tid && pieces.has(e.name) && e.ts >= from.ts && e.ts <= to.ts && e.dur >= 100);
    console.log(`  ${ms.toFixed(1)}@${place}: ${inside.map((e) => `${e.name} ${(e.dur / 1000).toFixed(2)}`).join(", ")}`);
  }
}
