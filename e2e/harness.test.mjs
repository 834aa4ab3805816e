// The test harness itself: a server it starts never outlives the script that started it, so
// a measurement script that crashes or is stopped leaves nothing listening on loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { until } from "./support.mjs";

const support = new URL("./support.mjs", import.meta.url).href;

/** Runs `body` in a node process of its own after starting a server; answers its URL and the process. */
async function scriptWithServer(body) {
  const source = `import { Server } from ${JSON.stringify(support)};
const server = await Server.start();
console.log(server.url);
${body}`;
  const script = spawn(process.execPath, ["--input-type=module", "-e", source], { stdio: ["ignore", "pipe", "pipe"] });
  const url = await new Promise((resolve, reject) => {
    createInterface({ input: script.stdout }).once("line", resolve);
    script.once("exit", (code) => reject(new Error(`the script exited with ${code} before its server listened`)));
  });
  return { url, script };
}

const listening = (url) => fetch(`${url}/healthz`).then(() => true, () => false);

async function assertStopsWith(script, url) {
  const exited = new Promise((resolve) => script.once("exit", (code, signal) => resolve(code ?? signal)));
  assert.notEqual(await exited, 0, "the script failed");
  await until(async () => !(await listening(url)), { timeout: 5000, what: `the server at ${url} to stop with its script` });
}

test("a script that throws takes its server with it", async () => {
  const { url, script } = await scriptWithServer(`setTimeout(() => { throw new Error("a measurement script crashes"); }, 50);`);
  assert.equal(await listening(url), true, "the server answered while its script ran");
  await assertStopsWith(script, url);
});

test("a script stopped with SIGTERM or SIGINT takes its server with it", async () => {
  for (const signal of ["SIGTERM", "SIGINT"]) {
    const { url, script } = await scriptWithServer(`setInterval(() => {}, 1000);`);
    assert.equal(await listening(url), true);
    script.kill(signal);
    await assertStopsWith(script, url);
  }
});
