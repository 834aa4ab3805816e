// What a playback position write costs the page as the history grows: the preset store (the
// kind `userSync` is) over the real engine (the wasm build in `dist`) and the package tests'
// fakes of the browser, its first pull holding ENTRIES history entries; then WRITES positions
// of one episode (`updateProgress`, as the demo's player writes each second played), each
// timed from the call until the store holds it (synchronous). One entry is the baseline, in
// the same run.
//   npm run build -w sinkron && node packages/sinkron/scripts/watch-bench.mjs
import { createUserSyncStore } from "../dist/store.js";
import { MemoryStorage, emptyPage, installBrowser, settle, wasm } from "../test/fakes.mjs";

const WRITES = 400;
const WARMUP = 100;

/** The fakes' storage without its quota scan (which costs O(entries) per write). */
class Plain extends MemoryStorage {
  setItem(k, v) {
    this.map.set(k, String(v));
  }
}

async function run(entries) {
  const browser = installBrowser();
  globalThis.localStorage = new Plain();
  localStorage.setItem("sinkron:v1:session", JSON.stringify({ token: "a".repeat(64), user: { id: "7", username: "7" } }));
  const changes = Array.from({ length: entries }, (_, i) => ({
    collection: "history",
    key: `ep-${i}`,
    value: { showId: `s${i % 20}`, position: i, duration: 1500 },
    updatedAt: 1_700_000_000_000 + i,
    clientId: "tv",
    version: i + 1,
  }));
  browser.answer(({ method, body }) =>
    method === "POST" ? { status: 200, body: { ...emptyPage().body, ack: body.mutations.at(-1).id, cursor: String(entries) } } : emptyPage({ cursor: String(entries), changes }),
  );
  const store = createUserSyncStore();
  await store.getState().start({ wasm, crossTab: false, interval: 600_000 });
  try {
    await settle(() => Object.keys(store.getState().records.history).length === entries, { what: "the first pull" });
    const times = [];
    for (let i = 0; i < WARMUP + WRITES; i++) {
      const t0 = performance.now();
      store.getState().updateProgress("ep-0", 10_000 + i);
      const dt = performance.now() - t0;
      if (store.getState().records.history["ep-0"].value.position !== 10_000 + i) throw new Error("the write is not in the store");
      if (i >= WARMUP) times.push(dt);
    }
    times.sort((a, b) => a - b);
    return { entries, p50: times[Math.floor(times.length / 2)], mean: times.reduce((a, b) => a + b, 0) / times.length };
  } finally {
    store.getState().stop();
  }
}

const results = [];
for (const entries of [1, 100, 1000]) results.push(await run(entries));
const base = results[0];
for (const r of results) {
  console.log(`${String(r.entries).padStart(5)} entries: a position write ${r.p50.toFixed(3)} ms p50, ${r.mean.toFixed(3)} ms mean (${(r.mean / base.mean).toFixed(1)} x one entry's)`);
}
