// Fakes of the browser APIs the driver executes commands with, for node's test runner:
// `localStorage`/`sessionStorage` (with an optional quota), Web Locks, `fetch` with scripted
// answers, and the `window`/`document` event targets. `BroadcastChannel` and `crypto` are
// node's own.
import { readFileSync } from "node:fs";
// The modules the driver imports on demand (the poke stream's reader, the built-in accounts),
// loaded up front: a page fetches them once, which the fake timers' turns in `settle` do not
// wait for.
import "../dist/pokes.js";
import "../dist/accounts.js";

export const wasm = readFileSync(new URL("../dist/wasm/sinkron.wasm", import.meta.url));

/** A `Storage` over a Map; `quota` (in characters of keys and values) makes `setItem` throw like a full browser store. */
export class MemoryStorage {
  constructor(quota = Infinity) {
    this.map = new Map();
    this.quota = quota;
  }
  get length() {
    return this.map.size;
  }
  key(i) {
    return [...this.map.keys()][i] ?? null;
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    const used = [...this.map].reduce((n, [key, value]) => n + (key === k ? 0 : key.length + value.length), 0);
    if (used + k.length + String(v).length > this.quota) throw new DOMException("full", "QuotaExceededError");
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
  clear() {
    this.map.clear();
  }
}

/** Web Locks with exclusive locks, a queue, `ifAvailable` and `signal`. */
class Locks {
  constructor() {
    this.held = new Map();
  }
  request(name, options, callback) {
    const run = async () => {
      while (this.held.has(name)) {
        if (options.ifAvailable) return callback(null);
        await this.held.get(name);
        if (options.signal?.aborted) throw new DOMException("aborted", "AbortError");
      }
      let release;
      this.held.set(name, new Promise((r) => (release = r)));
      try {
        return await callback({ name });
      } finally {
        this.held.delete(name);
        release();
      }
    };
    return run();
  }
}

/**
 * Installs fresh fakes as the globals the driver uses; returns the fetch log and a way to
 * script answers: `answer(fn)` with `fn(url, init)` returning `{status, body}` (or a Response).
 */
export function installBrowser() {
  globalThis.localStorage = new MemoryStorage();
  globalThis.sessionStorage = new MemoryStorage();
  globalThis.window = new EventTarget();
  globalThis.document = Object.assign(new EventTarget(), { visibilityState: "visible" });
  Object.defineProperty(globalThis, "navigator", { configurable: true, value: { onLine: true, locks: new Locks() } });
  const requests = [];
  let script = () => ({ status: 503, body: { error: { code: "unavailable", message: "no answer scripted" } } });
  globalThis.fetch = async (url, init = {}) => {
    const request = { url: String(url), method: init.method ?? "GET", headers: { ...(init.headers ?? {}) }, body: init.body ? JSON.parse(init.body) : null, init };
    requests.push(request);
    const answer = await script(request);
    if (answer instanceof Response) return answer;
    const body = answer.status === 304 ? null : JSON.stringify(answer.body ?? {});
    return new Response(body, { status: answer.status, headers: { "content-type": "application/json", ...(answer.headers ?? {}) } });
  };
  return {
    requests,
    answer(fn) {
      script = fn;
    },
  };
}

/** Resolves once `predicate()` holds, checking after each macrotask; fails after `turns`. */
export async function settle(predicate, { turns = 500, what = "condition" } = {}) {
  for (let i = 0; i < turns; i++) {
    if (predicate()) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error(`never happened: ${what}`);
}

/**
 * A JWT-shaped token for `sub` (the driver reads `sub` and `exp`; the server would verify it),
 * expiring at `exp` (seconds).
 */
export function fakeToken(sub, tag = "", exp = 9999999999) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part({ sub, exp, tag })}.sig`;
}

/** A pull or push answer with nothing in it. */
export const emptyPage = (extra = {}) => ({ status: 200, body: { cursor: "1", changes: [], more: false, serverTime: Date.now(), ...extra } });
