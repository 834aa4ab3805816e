// A page's first start, in a process of its own: the engine's module is compiled once per
// page, so a failure to load it can only be seen before any start succeeded.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createUserSyncStore } from "../dist/store.js";
import { emptyPage, installBrowser, wasm } from "./fakes.mjs";

test("a start() that fails (the engine's module not loaded) can be tried again", async () => {
  const browser = installBrowser();
  localStorage.setItem("sinkron:v1:session", JSON.stringify({ token: "a".repeat(64), user: { id: "7", username: "7" } }));
  browser.answer(() => emptyPage());
  const store = createUserSyncStore();
  const options = { crossTab: false, interval: 30000 };
  // A flaky network: the module's fetch answered 503.
  const failed = new Response("", { status: 503 });
  await assert.rejects(store.getState().start({ ...options, wasm: failed }), /could not be loaded \(HTTP 503\)/);
  assert.equal(store.getState().ready, false);
  // The next try loads it and starts.
  await store.getState().start({ ...options, wasm });
  assert.equal(store.getState().ready, true);
  store.getState().stop();
});
