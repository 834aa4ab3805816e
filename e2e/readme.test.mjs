// The README's "Try it" lines, pasted in order into bash against the real server: each
// command's answer must match the `# …` line shown under it (`…` stands for anything).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { Server } from "./support.mjs";

const root = new URL("..", import.meta.url).pathname;

/** The README's curl session: commands (continuation lines joined) and the answer shown after each. */
function session() {
  const readme = readFileSync(`${root}README.md`, "utf8");
  const block = /Try it[^\n]*\n+```sh\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(block, "the README has a Try it block");
  const steps = [];
  for (const line of block.split("\n")) {
    const last = steps.at(-1);
    if (last?.command.endsWith("\\")) last.command += "\n" + line;
    else if (line.startsWith("# {") || line.startsWith("# HTTP")) last.shown = line.slice(2);
    else if (!line.startsWith("#") && line.trim() !== "") steps.push({ command: line, shown: null });
  }
  return steps;
}

test("the README's curl examples work when pasted in order", async () => {
  const server = await Server.start();
  try {
    const steps = session();
    assert.ok(steps.some((s) => s.command.includes("api/user/me/changes") && s.shown), "the push's answer is shown");
    const marker = "@@sinkron-readme@@";
    const script = steps.map((s) => `${s.command.replaceAll("localhost:8080", server.url.replace("http://", ""))}\necho; echo ${marker}`).join("\n");
    const outputs = execFileSync("bash", ["-euo", "pipefail", "-c", script], { encoding: "utf8" }).split(`${marker}\n`);
    steps.forEach((step, i) => {
      if (!step.shown) return;
      const pattern = new RegExp("^" + step.shown.split("…").map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".*"));
      const answer = outputs[i].trim().split(/\r?\n/)[0];
      assert.match(answer, pattern, `answer of: ${step.command}`);
    });
  } finally {
    await server.stop();
  }
});
