// Push requests per hour of continuous playback, in Chromium, with the demo's defaults (the
// position is hot: pushed every 30 s at most while it plays). Not a test: a measurement for
// BENCHMARKS.md. After `cargo xtask demo` and `cargo build --bin sinkron`:
//
//   SINKRON_BIN=target/debug/sinkron node e2e/playback-bench.mjs [minutes, default 5] [hot ms]
//
// It plays one episode for that long (the real video, muted) and counts the page's pushes at
// the network level.
import { countRequests, launch, open, openEpisodes, signUp, withServer } from "./support.mjs";

const minutes = Number(process.argv[2] ?? 5);
const hot = process.argv[3] ? `&hot=${process.argv[3]}` : "";
await withServer(async (server) => {
  const browser = await launch();
  try {
    const page = await open(await browser.newContext(), server, { query: hot });
    await signUp(page, "bench");
    await openEpisodes(page, "s07");
    const counts = countRequests(page, { where: (url) => url.pathname === "/api/user/me/changes" });
    await page.getByTestId("play-s07e01").click();
    const started = Date.now();
    for (let m = 1; m <= minutes; m++) {
      await page.waitForTimeout(started + m * 60_000 - Date.now());
      const position = Number(await page.getByTestId("player-position").getAttribute("data-position"));
      console.log(`${m} min: ${counts.pushes} pushes, position ${position} s`);
    }
    const hours = (Date.now() - started) / 3_600_000;
    console.log(`pushes per hour of playback: ${Math.round(counts.pushes / hours)} (${counts.pushes} in ${minutes} min)`);
  } finally {
    await browser.close();
  }
});
