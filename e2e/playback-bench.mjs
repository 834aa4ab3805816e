// Requests per hour of continuous playback, in Chromium, with the demo's defaults (the
// position is hot: pushed every 30 s at most while it plays). Not a test: a measurement for
// BENCHMARKS.md. After `cargo xtask demo` and `cargo build --bin sinkron`:
//
//   SINKRON_BIN=target/debug/sinkron node e2e/playback-bench.mjs [minutes, default 5] [hot ms] [--site]
//
// It plays one episode for that long (the real video, muted) and counts the page's pushes at
// the network level. With `--site`, the user signs in by a site's own tokens (the stand-in
// site of `site.mjs`, 10-minute tokens) and the site's token requests are counted too.
import { countRequests, launch, open, openEpisodes, signIn, signUp, withServer } from "./support.mjs";
import { openDemo, withSite } from "./site.mjs";

const args = process.argv.slice(2);
const bySite = args.includes("--site");
const [minutesArg, hotArg] = args.filter((a) => a !== "--site");
const minutes = Number(minutesArg ?? 5);
const hot = hotArg ? `&hot=${hotArg}` : "";

/** Plays in `page` for `minutes`, printing the page's requests to Sinkron (and `site`'s token requests) each minute. */
async function play(page, site) {
  await openEpisodes(page, "s07");
  const pushes = countRequests(page, { where: (url) => url.pathname === "/api/user/me/changes" });
  const all = countRequests(page);
  const tokens = site?.counts.token ?? 0;
  await page.getByTestId("play-s07e01").click();
  const started = Date.now();
  const siteTokens = () => (site ? `, ${site.counts.token - tokens} site token requests` : "");
  for (let m = 1; m <= minutes; m++) {
    await page.waitForTimeout(started + m * 60_000 - Date.now());
    const position = Number(await page.getByTestId("player-position").getAttribute("data-position"));
    console.log(`${m} min: ${pushes.pushes} pushes, ${all.all} requests to Sinkron${siteTokens()}, position ${position} s`);
  }
  const perHour = (n) => Math.round(n / ((Date.now() - started) / 3_600_000));
  console.log(`pushes per hour of playback: ${perHour(pushes.pushes)} (${pushes.pushes} in ${minutes} min)`);
  console.log(`requests to Sinkron per hour of playback: ${perHour(all.all)} (${all.all} in ${minutes} min)`);
  if (site) console.log(`site token requests per hour of playback: ${perHour(site.counts.token - tokens)}`);
}

const browser = await launch();
try {
  if (bySite) {
    await withSite({}, async (site, sinkron) => {
      const page = await openDemo(await browser.newContext(), site, sinkron, { query: hot });
      await signIn(page, "bench");
      await play(page, site);
    });
  } else {
    await withServer(async (server) => {
      const page = await open(await browser.newContext(), server, { query: hot });
      await signUp(page, "bench");
      await play(page, null);
    });
  }
} finally {
  await browser.close();
}
