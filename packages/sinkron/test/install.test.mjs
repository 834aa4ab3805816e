// The package as an app gets it: `npm pack`'s tarball, unpacked into a fresh project's
// node_modules (its peers linked from this workspace, so nothing is downloaded), imported by
// its public entry points in a plain Node process — a server, with no `window`, no
// `localStorage`, no `document`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const here = new URL("..", import.meta.url).pathname;
const workspace = join(here, "../..");

test("npm pack makes a tarball that installs and imports on a server, where start() says it needs a browser", () => {
  const app = mkdtempSync(join(tmpdir(), "sinkron-app-"));
  const packed = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", app], { cwd: here, encoding: "utf8" }));
  const files = packed[0].files.map((f) => f.path);
  for (const needed of ["dist/index.js", "dist/index.d.ts", "dist/react.js", "dist/react.d.ts", "dist/engine.js", "dist/wasm/sinkron.wasm", "package.json"]) {
    assert.ok(files.includes(needed), `${needed} is in the tarball: ${files}`);
  }
  assert.deepEqual(files.filter((f) => f.startsWith("src/") || f.startsWith("test/")), [], "sources and tests stay out");

  const modules = join(app, "node_modules");
  mkdirSync(join(modules, "sinkron"), { recursive: true });
  execFileSync("tar", ["-xzf", join(app, packed[0].filename), "-C", join(modules, "sinkron"), "--strip-components=1"]);
  for (const peer of ["zustand", "react"]) symlinkSync(join(workspace, "node_modules", peer), join(modules, peer));
  writeFileSync(
    join(app, "server.mjs"),
    `
import { createUserSyncStore, userSync, SinkronClient } from "sinkron";
import { useUserSync } from "sinkron/react";
const out = { window: typeof window, hook: typeof useUserSync, history: userSync.getState().history, ready: createUserSyncStore().getState().ready };
try {
  await SinkronClient.start();
} catch (e) {
  out.start = [e.name, e.code, e.message];
}
console.log(JSON.stringify(out));
`,
  );
  const result = JSON.parse(execFileSync("node", ["server.mjs"], { cwd: app, encoding: "utf8" }));
  assert.deepEqual(result, {
    window: "undefined",
    hook: "function",
    history: [],
    ready: false,
    start: ["SinkronError", "no_browser", "sinkron: start() needs a browser (localStorage); on a server, render without it"],
  });
});
