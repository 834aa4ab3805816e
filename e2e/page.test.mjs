// The demo page under the server's security headers, in Chromium: it works whole under its
// Content Security Policy (WebAssembly, storage, sync) with no violation reported.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Server, launch, open, openEpisodes, signUp, waitPressed } from "./support.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test("the demo runs under its Content Security Policy without a violation", async () => {
  const server = await Server.start();
  try {
    const context = await browser.newContext();
    // Recorded from the start of every document, before the app's scripts run.
    await context.addInitScript(() => {
      window.__violations = [];
      document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
    const page = await context.newPage();
    const response = await page.goto(`${server.url}/?interval=30000`);
    assert.match(response.headers()["content-security-policy"] ?? "", /script-src 'self' 'wasm-unsafe-eval'/);
    await page.getByTestId("sync-status").waitFor();
    await signUp(page, "underpolicy");
    await page.getByTestId("favorite-s02").click();
    await openEpisodes(page, "s02");
    await page.getByTestId("play-s02e01").click();
    await page.getByTestId("pause").click();
    await page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor();
    await page.reload();
    await waitPressed(page, "favorite-s02");
    assert.deepEqual(await page.evaluate(() => window.__violations), []);
    // The policy is enforced: an inline script is refused (and reported).
    await page.evaluate(() => {
      const s = document.createElement("script");
      s.textContent = "window.__inline = true";
      document.head.append(s);
    });
    assert.equal(await page.evaluate(() => window.__inline === true), false);
    await context.close();
  } finally {
    await server.stop();
  }
});
