// Where an optimistic write's time goes: three rounds of 200 clicks on one favourite (as
// `sync.test.mjs` makes them), each click split into the engine's calls (`sinkron_call`),
// `localStorage` writes, `BroadcastChannel` posts and the rest (the store, React, the DOM),
// with the round's p50/p99, its means and its six slowest clicks. `--stub-storage` leaves the
// stored outbox unwritten and `--stub-channel` the posts unsent, to see what they cost (the
// page then keeps nothing across a reload: a measurement only). Other arguments are Chromium
// switches.
//   cargo xtask demo
//   SINKRON_BIN=target/debug/sinkron node e2e/click-split.mjs [--stub-storage] [--stub-channel] [switch ...]
import { launch, open, percentile, Server, signUp } from "./support.mjs";

const stubs = { storage: process.argv.includes("--stub-storage"), channel: process.argv.includes("--stub-channel") };
const flags = process.argv.slice(2).filter((a) => !a.startsWith("--stub-"));
const server = await Server.start();
const browser = await launch({ flags });
try {
  const context = await browser.newContext();
  await context.addInitScript((stubs) => {
    const spent = (window.__spent = { wasm: 0, storage: 0, channel: 0 });
    const timed = (target, name, key, skip = () => false) => {
      const original = target[name];
      target[name] = function (...args) {
        if (skip(...args)) return undefined;
        const t0 = performance.now();
        try {
          return original.apply(this, args);
        } finally {
          spent[key] += performance.now() - t0;
        }
      };
    };
    timed(Storage.prototype, "setItem", "storage", (key) => stubs.storage && key.includes(":o:"));
    timed(BroadcastChannel.prototype, "postMessage", "channel", () => stubs.channel);
    const instantiate = WebAssembly.instantiate;
    WebAssembly.instantiate = async function (...args) {
      const instance = await instantiate.apply(this, args);
      const exports = { ...instance.exports };
      timed(exports, "sinkron_call", "wasm");
      Object.defineProperty(instance, "exports", { value: exports });
      return instance;
    };
  }, stubs);
  const page = await open(context, server);
  await signUp(page, "split");
  for (let round = 1; round <= 3; round++) {
    const rows = await page.evaluate(async () => {
      const button = document.querySelector('[data-testid="favorite-s02"]');
      const out = [];
      for (let i = 0; i < 200; i++) {
        const before = button.getAttribute("aria-pressed");
        const from = { ...window.__spent };
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
        const to = window.__spent;
        const row = { total, wasm: to.wasm - from.wasm, storage: to.storage - from.storage, channel: to.channel - from.channel };
        out.push({ ...row, rest: total - row.wasm - row.storage - row.channel });
      }
      return out;
    });
    const totals = rows.map((r) => r.total);
    const mean = (k) => (rows.reduce((s, r) => s + r[k], 0) / rows.length).toFixed(2);
    const parts = (r) => ["wasm", "storage", "channel", "rest"].map((k) => `${k} ${r[k].toFixed(1)}`).join(", ");
    const slowest = rows.map((r, place) => ({ ...r, place })).sort((a, b) => b.total - a.total).slice(0, 6);
    console.log(
      `round ${round}: p50 ${percentile(totals, 50).toFixed(1)} ms, p99 ${percentile(totals, 99).toFixed(1)} ms; ` +
        `means: total ${mean("total")}, wasm ${mean("wasm")}, storage ${mean("storage")}, channel ${mean("channel")}, rest ${mean("rest")}`,
    );
    for (const r of slowest) console.log(`  ${r.total.toFixed(1)}@${r.place}: ${parts(r)}`);
    await page.waitForTimeout(2000);
  }
} finally {
  await browser.close();
  await server.stop();
}
