// The TypeScript types of what crosses into and out of the engine (`Call`, `Answer`,
// `Command`, `TabMessage` in src/types.ts) checked against the real engine: a scenario
// drives the wasm build through every kind of call, and everything that went in and came
// out is written into a TypeScript file that the compiler checks against the types. Each
// type's every variant must have been seen (a mapped type over its tags), and each sample
// must match its variant exactly (no missing or extra fields).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Engine } from "../dist/engine.js";
import { wasm } from "./fakes.mjs";

const NOW = 1_800_000_000_000;
const here = new URL("..", import.meta.url).pathname;

/** Runs a scenario on a fresh engine; returns every call, answer and command. */
async function scenario() {
  const engine = await Engine.create(wasm);
  const calls = [];
  const answers = [];
  const inFlight = [];
  const run = (call, body = "") => {
    calls.push(call);
    const answer = JSON.parse(engine.call(JSON.stringify(call), body));
    assert.equal(answer.e, undefined, `${call.t} was refused: ${answer.e?.message}`);
    answers.push(answer);
    inFlight.push(...answer.c.filter((c) => c.t === "send"));
    return answer;
  };
  /** Answers the oldest request of `kind` in flight. */
  const reply = (kind, status, page, retryAfter = null) => {
    const sent = inFlight.splice(inFlight.findIndex((c) => c.kind === kind), 1)[0];
    assert.ok(sent, `a ${kind} in flight`);
    const pollInterval = status === 200 || status === 304 ? "30" : null;
    return run({ t: "reply", now: NOW, id: sent.id, kind, status, retryAfter, pollInterval }, page ? JSON.stringify(page) : "");
  };
  const change = (key, version) => ({ collection: "likes", key, value: { on: true }, updatedAt: NOW - 10, clientId: "other", version });

  run({ t: "init", interval: 30000, pullOnSignIn: true, pullOnFocus: true, pullOnOnline: true, adoptLegacy: true, pokes: true, hot: [{ collection: "history", every: 30000 }], seedHigh: 1, seedLow: 2 });
  run({ t: "restore", now: NOW, user: null, cursor: null, partial: false, records: [change("old", 1)], ending: [], adopted: [] });
  // The app's data from before: asked for at start, handed over.
  assert.ok(answers.at(-1).c.some((c) => c.t === "adopt"));
  run({ t: "adopt", now: NOW, scope: null, records: [{ collection: "history", key: "h0", value: { position: 3 }, updatedAt: NOW - 1000 }] });
  const closed = { next: 3, mutations: [{ id: 2, collection: "likes", key: "queued", value: null, updatedAt: NOW - 5 }] };
  const order = run({ t: "adoptionOrder", now: NOW, previous: null, stored: [{ clientId: "closed", ...closed }], ownersKnown: true }).r;
  assert.deepEqual(order, ["closed"]);
  // Taken over, its numbering moves on: the next write is 4.
  run({ t: "restoreOutbox", now: NOW, clientId: "closed", ...closed });
  run({ t: "online", now: NOW, online: true });
  run({ t: "visibility", now: NOW, visible: true });
  run({ t: "focus", now: NOW });
  run({ t: "write", now: NOW, collection: "likes", key: "e1", value: { on: true } });
  run({ t: "signIn", now: NOW, user: "7" });
  run({ t: "leadership", now: NOW, leader: true });
  reply("push", 200, { ack: 4, cursor: "4", changes: [], more: false, serverTime: NOW });
  reply("pull", 200, { cursor: "5", changes: [change("e2", 5), { ...change("h1", 5), collection: "history" }], more: false, reset: true, serverTime: NOW });
  // The storage is full: the engine frees room (its oldest history).
  assert.equal(run({ t: "storageFull", now: NOW, scope: "7" }).r, true);
  const { at } = run({ t: "write", now: NOW + 1, collection: "likes", key: "e3", value: { on: false } });
  run({ t: "timeout", now: at });
  reply("push", 200, { ack: 5, cursor: "6", changes: [], more: false, serverTime: NOW + 2 });
  run({ t: "write", now: NOW + 3, collection: "likes", key: "e4", value: { on: false } });
  run({ t: "pushNow", now: NOW + 3 });
  // The page is hidden (or left): what is queued goes with keepalive.
  run({ t: "visibility", now: NOW + 3, visible: false });
  run({ t: "visibility", now: NOW + 3, visible: true });
  run({ t: "leadership", now: NOW + 3, leader: true });
  reply("push", 200, { ack: 6, cursor: "7", changes: [], more: false, serverTime: NOW + 3 });
  run({ t: "focus", now: NOW + 60_000 });
  reply("pull", 304);
  run({ t: "focus", now: NOW + 120_000 });
  reply("pull", 503, null, "10");
  // The poke stream (opened when this tab began to lead): a poke, then its end.
  assert.ok(commands(answers).some((c) => c.t === "pokes" && c.on));
  run({ t: "poke", now: NOW + 121_000, version: 9 });
  run({ t: "poke", now: NOW + 122_000, status: 0 });
  for (const message of [
    { scope: "7", kind: "wrote", id: 1, collection: "likes", key: "t1", value: { on: true }, updatedAt: NOW, clientId: "tab2" },
    // Another tab's whole state, which lacks what this tab holds: dropped (a "clear").
    { scope: "7", kind: "synced", from: "6", to: "8", reset: true, more: false, changes: [change("t2", 8)] },
    { scope: "7", kind: "acked", clientId: "tab2", ack: 1 },
    { scope: "7", kind: "pullWanted" },
    { scope: "7", kind: "signedIn" },
  ]) {
    run({ t: "tab", now: NOW + 130_000, message });
  }
  for (const t of ["clientId", "user", "status"]) run({ t, now: NOW + 130_000 });
  run({ t: "collection", now: NOW + 130_000, name: "likes" });
  // A tab that does not lead asks the leader to pull.
  run({ t: "leadership", now: NOW + 135_000, leader: false });
  run({ t: "focus", now: NOW + 136_000 });
  // Signing out with a write queued: flushed, and once confirmed no longer parked.
  run({ t: "write", now: NOW + 139_000, collection: "likes", key: "e5", value: { on: true } });
  assert.equal(run({ t: "signOut", now: NOW + 140_000, endSession: "a".repeat(64), discard: false }).r, 1);
  const flush = inFlight.findLast((c) => c.kind === "push");
  assert.equal(flush.keepalive, true);
  inFlight.splice(inFlight.indexOf(flush), 1);
  const confirmed = { ack: flush.body.mutations.at(-1).id, cursor: "9", changes: [], more: false, serverTime: NOW + 140_000 };
  run({ t: "reply", now: NOW + 140_000, id: flush.id, kind: "push", status: 200, retryAfter: null, pollInterval: null }, JSON.stringify(confirmed));
  assert.ok(answers.at(-1).c.some((c) => c.t === "dropOutbox" && c.scope === "7"));
  reply("endSession", 204);
  run({ t: "tab", now: NOW + 140_000, message: { scope: null, kind: "signedOut" } });
  // Signing in again asks for what is parked, and takes it.
  run({ t: "signIn", now: NOW + 150_000, user: "7" });
  assert.ok(answers.at(-1).c.some((c) => c.t === "unpark" && c.scope === "7"));
  run({ t: "unpark", now: NOW + 150_000, scope: "7", clientId: "gone", next: 2, mutations: [{ id: 1, collection: "likes", key: "e6", value: { on: true }, updatedAt: NOW + 100 }] });
  assert.ok(answers.at(-1).c.some((c) => c.t === "dropOutbox" && c.clientId === "gone"));
  run({ t: "signOut", now: NOW + 160_000, endSession: null, discard: true });
  return { calls, answers, commands: commands(answers) };
}

const commands = (answers) => answers.flatMap((a) => a.c);

/** `{tag: [samples]}` of a list, by the field `tag`. */
const byTag = (list, tag) => {
  const out = {};
  for (const item of list) (out[item[tag]] ??= []).push(item);
  return out;
};

test("the TypeScript types match what the engine reads and writes", async () => {
  const { calls, answers, commands } = await scenario();
  const messages = commands.filter((c) => c.t === "broadcast").map((c) => c.message);
  const source = `
import type { Answer, Call, Command, TabMessage } from ${JSON.stringify(join(here, "src/types.js"))};
type Every<U, K extends keyof U> = { [V in U[K] & string]: Array<Extract<U, { [k in K]: V }>> };
export const calls: Every<Call, "t"> = ${JSON.stringify(byTag(calls, "t"))};
export const commands: Every<Command, "t"> = ${JSON.stringify(byTag(commands, "t"))};
export const sends: Every<Extract<Command, { t: "send" }>, "kind"> = ${JSON.stringify(byTag(commands.filter((c) => c.t === "send"), "kind"))};
export const notices: Every<Extract<Command, { t: "notify" }>, "what"> = ${JSON.stringify(byTag(commands.filter((c) => c.t === "notify"), "what"))};
export const messages: Every<TabMessage, "kind"> = ${JSON.stringify(byTag(messages, "kind"))};
export const answers: Answer<unknown>[] = ${JSON.stringify(answers)};
`;
  const dir = mkdtempSync(join(tmpdir(), "sinkron-types-"));
  const file = join(dir, "samples.ts");
  writeFileSync(file, source);
  const tsc = join(here, "../../node_modules/.bin/tsc");
  const args = ["--noEmit", "--strict", "--target", "ES2022", "--module", "ES2022", "--moduleResolution", "Bundler", "--lib", "ES2022,DOM", "--skipLibCheck", file];
  try {
    execFileSync(tsc, args, { encoding: "utf8" });
  } catch (e) {
    assert.fail(`the engine's texts do not match the TypeScript types (${file}):\n${e.stdout}`);
  }
});
