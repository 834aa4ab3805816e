// Where a click's main-thread time goes: 200 clicks on a favourite (as the latency test in
// `sync.test.mjs` makes them) under Chrome's sampling profiler (50 µs), then each function's
// inclusive time per click. Build the demo unminified first for readable names:
//   cargo xtask demo && (cd demo && npx vite build --minify false)
//   SINKRON_BIN=target/debug/sinkron node e2e/click-profile.mjs
// It also writes the profile to e2e/artifacts/click.cpuprofile (DevTools opens it).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { artifacts, clickLatencies, launch, open, percentile, Server, signUp } from "./support.mjs";

const CLICKS = 200;
const server = await Server.start();
const browser = await launch();
try {
  const context = await browser.newContext();
  const page = await open(context, server);
  await signUp(page, "profiler");
  const cdp = await context.newCDPSession(page);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 50 });
  await cdp.send("Profiler.start");
  const samples = await clickLatencies(page, '[data-testid="favorite-s02"]', "aria-pressed", CLICKS);
  const { profile } = await cdp.send("Profiler.stop");
  writeFileSync(join(artifacts, "click.cpuprofile"), JSON.stringify(profile));
  console.log(`click → UI: p50 ${percentile(samples, 50).toFixed(2)} ms, p99 ${percentile(samples, 99).toFixed(2)} ms`);

  // Inclusive time: each sample counts once for every distinct function on its stack.
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const child of n.children ?? []) parent.set(child, n.id);
  const name = (n) => `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").pop()}:${n.callFrame.lineNumber}`;
  const inclusive = new Map();
  profile.samples.forEach((id, i) => {
    const seen = new Set();
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const key = name(byId.get(at));
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0));
    }
  });
  for (const [key, us] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, 40)) {
    console.log(`${(us / 1000 / CLICKS).toFixed(3)} ms/click  ${key}`);
  }
} finally {
  await browser.close();
  await server.stop();
}
