// Test support: the real `sinkron` server on loopback and Debian's Chromium via playwright-core.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { createServer } from "node:http";
import { connect, createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = new URL("..", import.meta.url).pathname;
export const artifacts = join(root, "e2e/artifacts");
mkdirSync(artifacts, { recursive: true });

const BIN = process.env.SINKRON_BIN ?? join(root, "target/debug/sinkron");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

// Servers still running as this process ends (a script that throws, a run stopped with
// Ctrl-C or `kill`) are killed with it: none outlives the script that started it.
const running = new Set();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});
for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]]) process.once(signal, () => process.exit(code));

/**
 * A `sinkron serve` process with the demo, on its own SQLite file (or on `database`, a
 * PostgreSQL URL other nodes may share). It asks clients to poll every second
 * (`--poll-interval 1`, unless `args` say otherwise), so that pages opened with a short
 * interval keep it down to a second.
 */
export class Server {
  static async start({ dir = mkdtempSync(join(tmpdir(), "sinkron-e2e-")), addr = "127.0.0.1:0", args = [], database = join(dir, "e2e.db") } = {}) {
    const pace = args.includes("--poll-interval") ? [] : ["--poll-interval", "1"];
    const child = spawn(BIN, ["serve", "--addr", addr, "--database", database, "--static-dir", join(root, "demo/dist"), ...pace, ...args], {
      env: { ...process.env, SINKRON_LOG: "warn" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    running.add(child);
    child.once("exit", () => running.delete(child));
    const line = await new Promise((resolve, reject) => {
      const lines = createInterface({ input: child.stdout });
      lines.once("line", resolve);
      child.once("exit", (code) => reject(new Error(`sinkron exited with ${code} before listening`)));
    });
    const url = String(line).replace("listening on ", "").trim();
    return new Server(child, url, dir, args, database);
  }

  constructor(child, url, dir, args, database) {
    this.child = child;
    this.url = url;
    this.dir = dir;
    this.args = args;
    this.database = database;
    /** When `state` last read (ms). */
    this.lastRead = 0;
  }

  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGKILL");
    await exited;
  }

  /** Starts again on the same port and database file. */
  async restart() {
    await this.stop();
    return Server.start({ dir: this.dir, addr: this.url.replace("http://", ""), args: this.args, database: this.database });
  }

  /** A session of the user's own (its token), to read the server's state beside the pages'. */
  async login(username, password = "correct horse") {
    const response = await fetch(`${this.url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username, password }) });
    if (!response.ok) throw new Error(`login failed: ${response.status}`);
    return (await response.json()).token;
  }

  /**
   * The user's state as the server holds it, read with the user's token. These reads count
   * against the user's request limit (10 a second, bursts of 120) beside the pages' own, and
   * tests poll them (`until`): at most 4 a second, so neither they nor the pages are
   * answered 429; one that is anyway waits its `Retry-After` and reads again.
   */
  async state(token) {
    for (let attempt = 0; ; attempt++) {
      const wait = this.lastRead + 250 - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      this.lastRead = Date.now();
      const res = await fetch(`${this.url}/api/user/me`, { headers: { authorization: `Bearer ${token}` } });
      if (res.status === 429 && attempt < 3) {
        await new Promise((r) => setTimeout(r, Number(res.headers.get("retry-after") ?? 1) * 1000));
        continue;
      }
      if (!res.ok) throw new Error(`pull failed: ${res.status}`);
      return res.json();
    }
  }
}

/**
 * Debian's Chromium, headless. Playwright turns the back/forward cache off by default;
 * `backForwardCache` leaves it on, as a user's browser has it. `flags` are more switches (the
 * measurement scripts pass V8's, for comparisons).
 */
export async function launch({ backForwardCache = false, flags = [] } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    ignoreDefaultArgs: backForwardCache ? ["--disable-back-forward-cache"] : [],
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", ...flags],
  });
}

/**
 * Another site on loopback (one plain page, no Sinkron on it), for a tab to leave for and
 * come back from with Back: its `url`, and `close()`.
 */
export async function anotherSite() {
  const server = createServer((_, res) => res.end("<!doctype html><title>elsewhere</title><p>elsewhere</p>"));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => server.close() };
}

/** Counts the API requests of a page (at the network level), by kind; `where` picks servers. */
export function countRequests(page, { where = () => true } = {}) {
  const counts = { pulls: 0, pushes: 0, events: 0, other: 0, all: 0, log: [] };
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (!url.pathname.startsWith("/api/") || !where(url)) return;
    counts.all++;
    if (url.pathname === "/api/user/me" && r.method() === "GET") counts.pulls++;
    else if (url.pathname === "/api/user/me/changes") counts.pushes++;
    else if (url.pathname === "/api/user/me/events") counts.events++;
    else counts.other++;
    counts.log.push(`${r.method()} ${url.pathname}${url.search}`);
  });
  return counts;
}

/**
 * Resolves once `predicate()` (sync or async) holds; checks every 20 ms, fails after `timeout`
 * saying `what` it waited for (a function is asked when it fails: what things were by then).
 */
export async function until(predicate, { timeout = 15000, what = "condition" } = {}) {
  const started = Date.now();
  for (;;) {
    if (await predicate()) return;
    if (Date.now() - started > timeout) throw new Error(`timed out waiting for ${typeof what === "function" ? await what() : what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A TCP proxy in front of `server` whose poke streams can die on the way as on a mobile link or
 * behind a NAT that dropped them: `silenceStreams()` stops carrying bytes, both ways, on every
 * connection that carried `GET /api/user/me/events` so far, without closing it (no FIN, no
 * RST: neither end hears anything). Other connections, and those made later, are carried as usual.
 */
export async function streamKillingProxy(server) {
  const target = new URL(server.url);
  const all = new Set();
  const proxy = createTcpServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    const pair = { client, upstream, stream: false };
    all.add(pair);
    client.on("data", (chunk) => {
      if (chunk.includes("GET /api/user/me/events")) pair.stream = true;
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      all.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) socket.on("error", drop).on("close", drop);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${proxy.address().port}/`,
    silenceStreams() {
      let silenced = 0;
      for (const pair of all) {
        if (!pair.stream || pair.silent) continue;
        pair.silent = true;
        silenced++;
        pair.client.unpipe(pair.upstream);
        pair.upstream.unpipe(pair.client);
        pair.client.pause();
        pair.upstream.pause();
      }
      return silenced;
    },
    close() {
      for (const { client, upstream } of all) {
        client.destroy();
        upstream.destroy();
      }
      return new Promise((resolve) => proxy.close(resolve));
    },
  };
}

export async function open(context, server, { interval = 30000, path = "/", query = "" } = {}) {
  const page = await context.newPage();
  await page.goto(`${server.url}${path}?interval=${interval}${query}`);
  await page.getByTestId("sync-status").waitFor();
  return page;
}

export async function signUp(page, username, password = "correct horse") {
  await page.getByTestId("login-username").fill(username);
  await page.getByTestId("login-password").fill(password);
  await page.getByTestId("signup-submit").click();
  await page.getByTestId("logout").waitFor();
  await syncedState(page);
  return token(page);
}

export async function signIn(page, username, password = "correct horse") {
  await page.getByTestId("login-username").fill(username);
  await page.getByTestId("login-password").fill(password);
  await page.getByTestId("login-submit").click();
  await page.getByTestId("logout").waitFor();
  await syncedState(page);
  return token(page);
}

export const syncedState = (page, timeout = 15000) =>
  page.locator('[data-testid="sync-status"][data-state="synced"]').waitFor({ timeout });

/** Resolves once the page is synced with nothing pending (every write confirmed). */
export const settled = (page, timeout = 15000) =>
  page.locator('[data-testid="sync-status"][data-state="synced"][data-pending="0"]').waitFor({ timeout });

export const token = (page) => page.evaluate(() => JSON.parse(localStorage.getItem("sinkron:v1:session") ?? "null")?.token ?? null);

export const pressed = (page, testId) => page.getByTestId(testId).getAttribute("aria-pressed");

export async function waitPressed(page, testId, value = "true", timeout = 15000) {
  await page.locator(`[data-testid="${testId}"][aria-pressed="${value}"]`).waitFor({ timeout });
}

/** Makes the page hidden or visible as the browser would (visibilitychange). */
export async function setVisible(page, visible) {
  await page.evaluate((v) => {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (v ? "visible" : "hidden") });
    Object.defineProperty(document, "hidden", { configurable: true, get: () => !v });
    document.dispatchEvent(new Event("visibilitychange"));
  }, visible);
}

/**
 * Chromium copies `localStorage` between a site's tabs later than `BroadcastChannel`
 * delivers, often after it: here made certain, what another tab writes at `key` (and its
 * `storage` event) reaching this page `ms` after the tab that wrote it, while its own writes
 * show at once.
 */
export const storageArrivesLate = (page, key, ms) =>
  page.evaluate(
    ({ KEY, ms }) => {
      const { getItem, setItem, removeItem } = Storage.prototype;
      let shown = getItem.call(localStorage, KEY);
      Storage.prototype.getItem = function (key) {
        return this === localStorage && key === KEY ? shown : getItem.call(this, key);
      };
      Storage.prototype.setItem = function (key, value) {
        setItem.call(this, key, value);
        if (this === localStorage && key === KEY) shown = String(value);
      };
      Storage.prototype.removeItem = function (key) {
        removeItem.call(this, key);
        if (this === localStorage && key === KEY) shown = null;
      };
      addEventListener(
        "storage",
        (e) => {
          if (e.key !== KEY || !e.isTrusted) return;
          e.stopImmediatePropagation();
          const { newValue, oldValue, url } = e;
          setTimeout(() => {
            shown = getItem.call(localStorage, KEY);
            dispatchEvent(new StorageEvent("storage", { key: KEY, newValue, oldValue, url, storageArea: localStorage }));
          }, ms);
        },
        true,
      );
    },
    { KEY: key, ms },
  );

export async function openEpisodes(page, showId) {
  const toggle = page.getByTestId(`episodes-${showId}`);
  if ((await toggle.getAttribute("aria-expanded")) !== "true") await toggle.click();
}

/**
 * Clicks `selector` in `page` `count` times, one after another; each sample is the time (ms,
 * measured in the page) from the click until the element's `attribute` changed.
 */
export function clickLatencies(page, selector, attribute, count) {
  return page.evaluate(
    async ({ selector, attribute, count }) => {
      const button = document.querySelector(selector);
      const out = [];
      for (let i = 0; i < count; i++) {
        const before = button.getAttribute(attribute);
        const t0 = performance.now();
        const changed = new Promise((resolve) => {
          const observer = new MutationObserver(() => {
            if (button.getAttribute(attribute) === before) return;
            observer.disconnect();
            resolve(performance.now());
          });
          observer.observe(button, { attributes: true });
        });
        button.click();
        out.push((await changed) - t0);
      }
      return out;
    },
    { selector, attribute, count },
  );
}

export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Runs `fn` with a server and database of its own, stopped afterwards whatever happens. */
export async function withServer(fn, args = []) {
  const server = await Server.start({ args });
  try {
    await fn(server);
  } finally {
    await server.stop();
  }
}

/** The local PostgreSQL (trust auth), as the server tests use it; `SINKRON_TEST_POSTGRES_URL` overrides. */
const PG_ADMIN = process.env.SINKRON_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** Runs `fn` with the URL of a fresh PostgreSQL database, dropped afterwards. */
export async function withPostgres(fn) {
  const name = `sinkron_e2e_${process.pid}_${Date.now()}`;
  const psql = (sql) => execFileSync("psql", [PG_ADMIN, "-qc", sql], { stdio: ["ignore", "ignore", "inherit"] });
  psql(`CREATE DATABASE ${name}`);
  try {
    await fn(PG_ADMIN.replace(/\/[^/]*$/, `/${name}`));
  } finally {
    psql(`DROP DATABASE ${name} WITH (FORCE)`);
  }
}

/** The live records of one collection in a pulled state, by key. */
export const recordsOf = (state, collection) =>
  Object.fromEntries(state.changes.filter((c) => c.collection === collection && c.value !== null).map((c) => [c.key, c.value]));
