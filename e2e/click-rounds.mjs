// How the optimistic write's latency settles as the page's code warms up: three rounds of
// 200 clicks on one favourite (as `sync.test.mjs` makes them), two seconds apart on one page,
// each with its p50 and p99, its mean per 20 clicks, its six slowest clicks (ms@place) and the
// unsent writes left in the outbox. The latency test measures the first round only. With
// `--trace`, the first round runs under Chromium's tracing, and each of its slowest clicks is
// split into the main thread's longest pieces (the click's handler, React's render after it,
// a garbage collection). Other arguments are Chromium switches to compare, e.g. V8 compiling
// the engine's module with its optimizing tier up front (`--js-flags=--no-wasm-dynamic-tiering`):
//   cargo xtask demo
//   SINKRON_BIN=target/debug/sinkron node e2e/click-rounds.mjs [--trace] [chromium switch ...]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { artifacts, launch, open, percentile, Server, signUp } from "./support.mjs";

const CLICKS = 200;
const trace = process.argv.includes("--trace");
const server = await Server.start();
const browser = await launch({ flags: process.argv.slice(2).filter((a) => a !== "--trace") });
try {
  const page = await open(await browser.newContext(), server);
  await signUp(page, "rounds");
  for (let round = 1; round <= 3; round++) {
    const path = join(artifacts, "click-rounds.trace.json");
    const traced = trace && round === 1;
    if (traced) await browser.startTracing(page, { path, categories: ["devtools.timeline", "blink.user_timing", "disabled-by-default-v8.gc"] });
    const samples = await page.evaluate(
      async ({ count }) => {
        const button = document.querySelector('[data-testid="favorite-s02"]');
        const out = [];
        for (let i = 0; i < count; i++) {
          const before = button.getAttribute("aria-pressed");
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
          out.push((await changed) - t0);
          performance.mark(`shown ${i}`);
        }
        return out;
      },
      { count: CLICKS },
    );
    if (traced) await browser.stopTracing();
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
    if (traced) split(JSON.parse(readFileSync(path, "utf8")).traceEvents, slowest);
    await page.waitForTimeout(2000);
  }
} finally {
  await browser.close();
  await server.stop();
}

/** Each slow click's longest pieces of main-thread work (ms), from its two marks. */
function split(events, slowest) {
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
