// What real users do to pages, at random: two devices of one account, each with a few tabs,
// favourite shows and play, pause and seek episodes while their tabs reload, close, open,
// hide, go to another site and come back with Back (the back/forward cache on), go offline,
// lose the API, have its requests go unanswered or answered late, the browser restarts, the server crashes and comes back,
// and users sign out and in again (now and then as a second account, as on a shared
// computer), and choose shows as guests, whose choices join the account they sign in to next.
// Each seed runs once in each setup: Sinkron's own accounts on one server with
// SQLite (`builtin`), or with each device on its own node of two sharing PostgreSQL, pokes on
// (`nodes`); and the site's own sign-in (a stand-in site with its own users, serving the demo
// on its origin) by the tokens it issues, asked of the site each time (`token`) or kept in
// `localStorage` (`kept`), or by its HttpOnly cookie (`cookie`). Whatever happened, once every
// device is back online and has signed in again as each account it had, every tab and the
// server hold each account's newest choice for each show and the same position for each
// episode, and no write is left behind in any stored outbox.
//
// The actions come from a seed (`SINKRON_E2E_SEEDS="1 2 3"` to pick them, `SINKRON_E2E_STEPS`
// for how many per seed, `SINKRON_E2E_SETUPS="builtin nodes token kept cookie"` for the
// setups); a failure prints the seed, the steps taken, and what the tab it waited for shows,
// stores and last requested.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Server, anotherSite, launch, open, openEpisodes, pressed, recordsOf, setVisible, signIn, signUp, until, withPostgres, withServer } from "./support.mjs";
import { openDemo, withSite } from "./site.mjs";

const SEEDS = (process.env.SINKRON_E2E_SEEDS ?? "1 2 3").split(/[\s,]+/).filter(Boolean).map(Number);
const STEPS = Number(process.env.SINKRON_E2E_STEPS ?? 40);
const SETUPS = (process.env.SINKRON_E2E_SETUPS ?? "builtin nodes token kept cookie").split(/[\s,]+/).filter(Boolean);
const SHOWS = ["s01", "s02", "s03", "s04", "s05"];
const PASSWORD = "correct horse";
/** The accounts signed in on the devices: mostly the first, now and then the second (a shared computer). */
const ACCOUNTS = ["wanderer", "wanderer", "sharer"];
/** How late an answer reaches the page on a `slow` network (under the pages' 2 s request timeout). */
const SLOW_MS = 1000;

/** A route's request sent at once, its answer handed to the page `SLOW_MS` later. */
async function slowly(route) {
  if (new URL(route.request().url()).pathname.endsWith("/events")) return route.continue().catch(() => undefined);
  try {
    const response = await route.fetch();
    await new Promise((resolve) => setTimeout(resolve, SLOW_MS));
    await route.fulfill({ response });
  } catch {
    // The page, or its browser, is gone.
  }
}
/** The most tabs one device holds open at once. */
const TABS_MAX = 3;
/**
 * Two choices of one show in different tabs are made at least this far apart. A tab stamps a
 * write by its clock corrected to the server's as its last answer showed it (off by how long
 * that answer took to be handled: milliseconds, more on a busy machine), and above every stamp
 * it has seen: writes this far apart are ordered by time in every tab alike, whether or not the
 * later tab has heard of the earlier one.
 */
const GAP_MS = 1000;

let browser;
/** Another site, for tabs to go to and come back from. */
let plain;
let elsewhere;
before(async () => {
  // The back/forward cache on, as a user's browser has it.
  browser = await launch({ backForwardCache: true });
  plain = await anotherSite();
  elsewhere = plain.url;
});
after(async () => {
  await browser?.close();
  plain?.close();
});

/** xorshift32: the same steps for the same seed. */
function rng(seed) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
  return { below: (n) => Math.floor(next() * n), pick: (items) => items[Math.floor(next() * items.length)] };
}

const status = (page) => page.getByTestId("sync-status");
/** The stored outboxes holding writes: of the user signed in (`own`), or of anyone. */
const withWrites = (page, own) =>
  page.evaluate((own) => {
    const user = JSON.parse(localStorage.getItem("sinkron:v1:session") ?? "null")?.user.id;
    const prefix = own ? `sinkron:v1:${user}:o:` : "";
    return Object.keys(localStorage).filter((k) => k.startsWith(prefix) && k.includes(":o:") && JSON.parse(localStorage.getItem(k)).m?.length > 0);
  }, own);
/** What the device stores of Sinkron's: outboxes whole, other values by length (for a failure's message). */
const stored = (page) =>
  page.evaluate(() =>
    JSON.stringify(
      Object.fromEntries(
        Object.keys(localStorage)
          .filter((k) => k.startsWith("sinkron:"))
          .sort()
          .map((k) => [k, k.includes(":o:") ? localStorage.getItem(k) : localStorage.getItem(k).length]),
      ),
    ),
  );

class Device {
  /** `opens(context)`: a new tab of the demo in that browser context, as this run serves it. */
  constructor(name, context, opens) {
    this.name = name;
    this.context = context;
    this.opens = opens;
    this.pages = [];
    /** Tabs made hidden (a reload shows a tab again). */
    this.hidden = new Set();
    /** Tabs gone to another site, to come back with Back (from the back/forward cache). */
    this.away = new Set();
    /**
     * `offline`: the browser says so and nothing gets out; `cut`: the API fails while the
     * browser says online; `stalled`: the API answers nothing, nor fails (a connection gone
     * dead on the way): each request waits until the page gives it up (`requestTimeout`);
     * `slow`: each answer reaches the page a second late (a poor mobile link), so what the
     * user does next lands while it is on its way. The request itself goes at once, with the
     * cookies of that moment, as on a real link (held before it is sent, it would go out with
     * the cookie of a sign-in made meanwhile); the poke stream is not held.
     */
    this.network = "online";
    /** Who is signed in (null: a guest), and who ever was here. */
    this.account = null;
    this.used = new Set();
    /** The guest's newest choice per show since the device's last sign-in or sign-out. */
    this.guest = new Map();
    this.errors = [];
    /** Each tab's last API requests and how they ended, and its warnings (for a failure's message). */
    this.requests = new Map();
  }

  async open() {
    const page = await this.opens(this.context);
    page.on("pageerror", (e) => this.errors.push(`${this.name}: ${e.message}`));
    const requests = [];
    this.requests.set(page, requests);
    const note = (request, outcome) => {
      const url = new URL(request.url());
      if (!url.pathname.startsWith("/api/") && !url.pathname.startsWith("/site/")) return;
      requests.push(`${new Date().toISOString().slice(17, 23)} ${request.method()} ${url.pathname}${url.search} ${outcome}`);
      if (requests.length > 20) requests.shift();
    };
    page.on("request", (request) => note(request, "sent"));
    page.on("console", (m) => ["warning", "error"].includes(m.type()) && requests.push(`${m.type()}: ${m.text()}`));
    // (Its response may be gone with the page.)
    page.on("requestfinished", (request) => request.response().then((r) => note(request, r?.status()), () => undefined));
    page.on("requestfailed", (request) => note(request, request.failure()?.errorText));
    this.pages.push(page);
    if (this.account) await page.getByTestId("logout").waitFor();
    return page;
  }

  /** The tabs showing the demo (not away on another site). */
  here() {
    return this.pages.filter((p) => !this.away.has(p));
  }

  visible() {
    return this.here().filter((p) => !this.hidden.has(p));
  }

  /** Waits until each tab here shows the account signed in, or the sign-in form. */
  async follow() {
    for (const page of this.here()) await page.getByTestId(this.account ? "logout" : "login-submit").waitFor();
  }

  async setNetwork(network) {
    if (network === this.network) return;
    if (this.network !== "online") await this.context.unroute("**/api/**");
    if (this.network === "offline") await this.context.setOffline(false);
    if (network === "stalled") await this.context.route("**/api/**", () => undefined);
    else if (network === "slow") await this.context.route("**/api/**", slowly);
    else if (network !== "online") await this.context.route("**/api/**", (route) => route.abort("internetdisconnected"));
    if (network === "offline") await this.context.setOffline(true);
    this.network = network;
  }
}

/**
 * One run: `auth` is how users sign in ("builtin": Sinkron's accounts; "token" or "cookie":
 * the `site`'s own sign-in, the demo served from the site's origin); `nodes`, the server each
 * device talks to (the same one twice, or two nodes); `query`, more of the demo's options.
 */
async function wander(seed, { auth, nodes, site, query = "" }, t) {
  const r = rng(seed);
  /**
   * The server node each device talks to, as it runs now (a restart is another process on the
   * same port and database): one for both, or one each on a shared database.
   */
  const servers = [...nodes];
  const server = () => servers[0];
  // A request never answered (`stalled`) is given up after 2 s.
  query += "&requestTimeout=2000";
  const opener = (i) => (context) =>
    site ? openDemo(context, site, servers[i], { auth, interval: 1000, query }) : open(context, servers[i], { interval: 1000, query });
  /** A token of the account's, to read what the server holds for it. */
  const tokenOf = (account) => (site ? site.token(site.userId(account)) : server().login(account, PASSWORD));
  const log = [];
  const devices = [];
  for (const [i, name] of ["A", "B"].entries()) devices.push(new Device(name, await browser.newContext(), opener(i)));
  const [a, b] = devices;
  const first = await a.open();
  if (site) {
    // The site knows every username (each with the same password).
    await signIn(first, "wanderer");
  } else {
    await signUp(first, "wanderer");
    await fetch(`${server().url}/api/auth/register`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "sharer", password: PASSWORD }) });
  }
  const firstOfB = await b.open();
  await signIn(firstOfB, "wanderer");
  for (const device of devices) {
    device.account = "wanderer";
    device.used.add("wanderer");
  }

  /** Each account's newest choice per show: whether it is a favourite, in which tab, when. */
  const chosen = new Map(ACCOUNTS.map((account) => [account, new Map()]));
  /** The last choice of each show, by anyone (a guest's may join any account). */
  const lastChoice = new Map();
  const actions = {
    async choose(device) {
      const page = r.pick(device.visible());
      const show = r.pick(SHOWS);
      const choices = device.account ? chosen.get(device.account) : device.guest;
      const last = lastChoice.get(show);
      const wait = last && last.page !== page ? last.at + GAP_MS - Date.now() : 0;
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      // What the click chose is what the page shows once it has drawn it: an answer arriving
      // meanwhile could change what the click toggles, not what it shows after (the write is
      // the newest the page knows of, and nothing newer is made until the next step).
      const now = await page.evaluate(async (id) => {
        const button = document.querySelector(`[data-testid="${id}"]`);
        button.click();
        await new Promise((resolve) => setTimeout(resolve, 0));
        return button.getAttribute("aria-pressed");
      }, `favorite-${show}`);
      if (!device.account) counts.asGuest = (counts.asGuest ?? 0) + 1;
      const choice = { favourite: now === "true", page, at: Date.now() };
      choices.set(show, choice);
      lastChoice.set(show, choice);
      return `${show} ${now === "true" ? "on" : "off"} in tab ${device.pages.indexOf(page)} as ${device.account ?? "the guest"}`;
    },
    async play(device) {
      const page = r.pick(device.visible());
      const show = r.pick(SHOWS);
      const episode = `${show}e0${1 + r.below(2)}`;
      await openEpisodes(page, show);
      await page.getByTestId(`play-${episode}`).click();
      await page.getByTestId("player").waitFor();
      return `${episode} in tab ${device.pages.indexOf(page)}`;
    },
    async pause(device) {
      // A player may have stopped by itself since (a refused play, say).
      const page = r.pick(await playing(device));
      if (!page) return "(nothing plays now)";
      await page.getByTestId("pause").click();
      return `tab ${device.pages.indexOf(page)}`;
    },
    async seek(device) {
      const page = r.pick(await playing(device));
      if (!page) return "(nothing plays now)";
      await page.getByTestId(r.pick(["seek-forward", "seek-back"])).click();
      return `tab ${device.pages.indexOf(page)}`;
    },
    async reload(device) {
      const page = r.pick(device.here());
      device.hidden.delete(page);
      await page.reload();
      await status(page).waitFor();
      return `tab ${device.pages.indexOf(page)}`;
    },
    async close(device) {
      const page = r.pick(device.pages);
      const i = device.pages.indexOf(page);
      device.pages.splice(i, 1);
      device.hidden.delete(page);
      device.away.delete(page);
      device.requests.delete(page);
      await page.close();
      return `tab ${i}`;
    },
    async open(device) {
      await device.open();
      return `tab ${device.pages.length - 1}`;
    },
    /** The browser quits and starts again (no session restore): what its storage holds stays. */
    async restart(device) {
      const storageState = await device.context.storageState();
      await device.context.close();
      const network = device.network;
      device.context = await browser.newContext({ storageState });
      device.pages = [];
      device.hidden.clear();
      device.away.clear();
      device.requests.clear();
      device.network = "online";
      await device.setNetwork(network);
      if (network !== "offline") await device.open();
      return "";
    },
    /**
     * A visible tab goes to another site and stays there (its page frozen in the
     * back/forward cache) while the user goes on in the others, until `back`.
     */
    async away(device) {
      const page = r.pick(device.visible());
      device.away.add(page);
      await page.evaluate(() => addEventListener("pageshow", (e) => (window.restoredFromCache = e.persisted)));
      await page.goto(elsewhere);
      return `tab ${device.pages.indexOf(page)}`;
    },
    /** Back in such a tab: the page, restored, follows whatever happened meanwhile. */
    async back(device) {
      const page = r.pick([...device.away]);
      // A page restored from the cache fires no load event.
      await page.goBack({ waitUntil: "commit" });
      // One that missed what the tabs said while away reloads itself at once: the user acts
      // on what it shows then (a person takes a few hundred milliseconds to).
      await page
        .waitForEvent("framenavigated", { predicate: (frame) => frame === page.mainFrame(), timeout: 500 })
        .catch(() => undefined);
      await status(page).waitFor();
      device.away.delete(page);
      await device.follow();
      // Restored as it was, or loaded again (by the browser, or by the page itself when
      // what Sinkron stores changed meanwhile).
      const kept = await page.evaluate(() => window.restoredFromCache === true);
      if (kept) counts.backKept = (counts.backKept ?? 0) + 1;
      return `tab ${device.pages.indexOf(page)}${kept ? " (kept)" : " (loaded again)"}`;
    },
    async hide(device) {
      const page = r.pick(device.here());
      const hide = !device.hidden.has(page);
      if (hide) device.hidden.add(page);
      else device.hidden.delete(page);
      await setVisible(page, !hide);
      return `tab ${device.pages.indexOf(page)} ${hide ? "hidden" : "shown"}`;
    },
    async network(device) {
      const network = r.pick(["online", "offline", "cut", "stalled", "slow"].filter((n) => n !== device.network));
      await device.setNetwork(network);
      return network;
    },
    async signOut(device) {
      const page = r.pick(device.visible());
      await page.getByTestId("logout").click();
      // The site's session ends at the site once Sinkron has signed out (the demo then posts
      // its logout): until then a tab loading would follow the site and sign in again.
      if (site) await until(async () => !(await site.signedIn(device.context)), { what: `the site's session on ${device.name} to end` });
      device.account = null;
      // The guest starts empty: what it chose before the sign-in went to that account.
      device.guest = new Map();
      await device.follow();
      return "";
    },
    async signIn(device, account = r.pick(ACCOUNTS)) {
      const page = r.pick(device.visible());
      await page.getByTestId("login-username").fill(account);
      await page.getByTestId("login-password").fill(PASSWORD);
      await page.getByTestId("login-submit").click();
      device.account = account;
      device.used.add(account);
      // What the guest chose joins the account: the newer of its choice and the account's.
      const choices = chosen.get(account);
      for (const [show, choice] of device.guest) if (!(choices.get(show)?.at > choice.at)) choices.set(show, choice);
      device.guest = new Map();
      await device.follow();
      return `as ${account} in tab ${device.pages.indexOf(page)}`;
    },
  };
  /** The device's visible tabs whose player plays. */
  const playing = async (device) => {
    const out = [];
    for (const page of device.visible()) if (await page.getByTestId("pause").isVisible()) out.push(page);
    return out;
  };
  /**
   * What a user could do on this device now, each as often as it is listed (a page loads only
   * with a network; choices and playback need a signed-in, visible tab).
   */
  const possible = async (device) => {
    const loads = device.network !== "offline";
    const shown = device.visible().length > 0;
    const out = ["network"];
    if (device.account && shown) out.push(...Array(6).fill("choose"), "play", "play");
    // A guest chooses too (kept on the device, offline as well).
    if (!device.account && shown) out.push("choose", "choose");
    // The site's sign-out needs the site (Sinkron's keeps what it could not send, offline too).
    if (device.account && shown && (!site || device.network !== "offline")) out.push("signOut");
    if (device.account && (await playing(device)).length > 0) out.push("pause", "seek");
    if (!device.account && shown && ["online", "slow"].includes(device.network)) out.push("signIn", "signIn", "signIn");
    if (loads && device.here().length > 0) out.push("reload", "reload");
    if (loads && shown) out.push("away");
    if (loads && device.away.size > 0) out.push("back", "back");
    if (device.pages.length > 1 || (loads && device.pages.length === 1)) out.push("close");
    if (loads && device.pages.length < TABS_MAX) out.push("open");
    if (device.here().length > 0) out.push("hide");
    if (loads) out.push("restart");
    return out;
  };

  const counts = {};
  try {
    for (let step = 0; step < STEPS; step++) {
      // Now and then the server crashes and comes back (killed, its requests cut off).
      if (r.below(25) === 0) {
        // (A node of two at random.)
        const old = servers[0] === servers[1] ? servers[0] : r.pick(servers);
        const restarted = await old.restart();
        for (const i of servers.keys()) if (servers[i] === old) servers[i] = restarted;
        log.push(`${step}: server restart${servers[0] === servers[1] ? "" : ` (the node of ${devices[servers.indexOf(restarted)].name})`}`);
        counts.serverRestart = (counts.serverRestart ?? 0) + 1;
        continue;
      }
      const device = r.pick(devices);
      const action = r.pick(await possible(device));
      const what = await actions[action](device);
      log.push(`${step}: ${device.name} ${action} ${what}`);
      counts[action] = (counts[action] ?? 0) + 1;
    }
    const shared = devices.filter((d) => d.used.has("sharer")).map((d) => d.name);
    t.diagnostic(`steps: ${Object.entries(counts).map(([action, n]) => `${action} ${n}`).join(", ")}; the second account on: ${shared.join(", ") || "none"}`);

    // Back to normal: every device online with its tabs visible and nothing playing, and
    // signed in as each account it ever had (so that what a sign-out kept for the account
    // goes), the first last.
    log.push("settle");
    const synced = async (device) => {
      for (const page of await playing(device)) await page.getByTestId("pause").click();
      const state = (page) =>
        page.evaluate(() => {
          const s = document.querySelector('[data-testid="sync-status"]');
          return `${s.dataset.state} with ${s.dataset.pending} pending${s.dataset.error ? `, error ${s.dataset.error}` : ""}: ${s.textContent}`;
        });
      for (const page of device.pages) {
        // A hot write (the playing position) not paused here goes within the hot interval
        // (30 s) of the last push that carried one: a page's keepalive flush as it went into
        // the back/forward cache counts, though its answer may never reach the frozen page
        // (seed 738, kept tokens: played, away, shown again at the settle).
        await until(async () => (await state(page)).startsWith("synced with 0 pending"), {
          timeout: 45000,
          what: async () => {
            const tabs = [];
            for (const [i, p] of device.pages.entries()) tabs.push(`tab ${i} is ${await state(p)}; its last requests: ${device.requests.get(p).join(", ")}`);
            return `${device.name} tab ${device.pages.indexOf(page)} as ${device.account} to be synced with nothing pending (stored: ${await stored(page)}; ${tabs.join("; ")})`;
          },
        });
      }
      // Closed tabs' writes too: the tab that leads takes them over at its pulls.
      await until(async () => (await withWrites(device.pages[0], true)).length === 0, {
        timeout: 20000,
        what: async () => `the stored outboxes of ${device.account} on ${device.name} to be empty (stored: ${await stored(device.pages[0])})`,
      });
    };
    for (const device of devices) {
      await device.setNetwork("online");
      while (device.away.size > 0) log.push(`settle: ${device.name} back ${await actions.back(device)}`);
      if (device.pages.length === 0) await device.open();
      for (const page of device.hidden) await setVisible(page, true);
      device.hidden.clear();
      for (const account of ["sharer", "wanderer"].filter((a) => device.used.has(a) || a === "wanderer")) {
        if (device.account !== account) {
          if (device.account) await actions.signOut(device);
          await actions.signIn(device, account);
        }
        await synced(device);
      }
    }

    const expected = (account) => SHOWS.filter((s) => chosen.get(account).get(s)?.favourite).sort();
    const shown = async (page) => {
      const out = [];
      for (const show of SHOWS) if ((await pressed(page, `favorite-${show}`)) === "true") out.push(show);
      return out;
    };
    for (const device of devices) {
      for (const page of device.pages) {
        await until(async () => JSON.stringify(await shown(page)) === JSON.stringify(expected("wanderer")), {
          timeout: 20000,
          what: async () => `${device.name} tab ${device.pages.indexOf(page)} to show ${expected("wanderer")} (it shows ${await shown(page)})`,
        });
      }
    }
    let state;
    for (const account of ["sharer", "wanderer"]) {
      state = await server().state(await tokenOf(account));
      const onServer = state.changes.filter((c) => c.collection === "favorites" && c.value !== null).map((c) => c.key).sort();
      assert.deepEqual(onServer, expected(account), `the server holds ${account}'s newest choice for each show`);
    }
    // Every tab shows the positions the server holds for the account (those under way: past the start).
    const sorted = (entries) => JSON.stringify(entries.sort(([a], [b]) => (a < b ? -1 : 1)));
    const positions = sorted(Object.entries(recordsOf(state, "history")).filter(([, v]) => v.position > 0).map(([k, v]) => [k, v.position]));
    for (const device of devices) {
      for (const page of device.pages) {
        const shows = () =>
          page
            .evaluate(() => [...document.querySelectorAll('[data-testid^="continue-s"]')].map((b) => [b.dataset.testid.slice(9), b.querySelector("progress").value]))
            .then(sorted);
        await until(async () => (await shows()) === positions, {
          timeout: 20000,
          what: async () => `${device.name} tab ${device.pages.indexOf(page)} to show the positions ${positions} (it shows ${await shows()})`,
        });
      }
    }
    // No write waits in any stored outbox (a closed tab's included): everything was sent.
    for (const device of devices) {
      assert.deepEqual(await withWrites(device.pages[0], false), [], `no stored outbox of ${device.name} holds a write`);
    }
    assert.deepEqual(devices.flatMap((d) => d.errors), [], "no page threw");
  } catch (e) {
    e.message = `seed ${seed}, steps:\n  ${log.join("\n  ")}\n${e.message}`;
    throw e;
  } finally {
    for (const device of devices) await device.context.close();
    for (const node of new Set(servers)) if (!nodes.includes(node)) await node.stop();
  }
}

/** The setups, by `SINKRON_E2E_SETUPS`'s names: how users sign in, and the server. */
const RUNS = {
  builtin: { what: "Sinkron's accounts", start: (fn) => withServer((server) => fn({ auth: "builtin", nodes: [server, server] })) },
  // Each device on its own node of two sharing a PostgreSQL database, a leader's poke stream on.
  nodes: {
    what: "Sinkron's accounts on two server nodes (PostgreSQL)",
    start: (fn) =>
      withPostgres(async (database) => {
        const args = ["--poke", "sse"];
        const nodes = [await Server.start({ database, args }), await Server.start({ database, args })];
        try {
          await fn({ auth: "builtin", nodes, query: "&pokes=1" });
        } finally {
          for (const node of nodes) await node.stop();
        }
      }),
  },
  token: { what: "the site's tokens", start: (fn) => withSite({}, (site, server) => fn({ auth: "token", nodes: [server, server], site })) },
  // The site keeps its token in `localStorage` and its provider reads it there.
  kept: {
    what: "the site's tokens kept in localStorage",
    start: (fn) => withSite({}, (site, server) => fn({ auth: "token", nodes: [server, server], site, query: "&keep=local" })),
  },
  cookie: { what: "the site's cookie", start: (fn) => withSite({ cookie: "site_token" }, (site, server) => fn({ auth: "cookie", nodes: [server, server], site })) },
};

for (const setup of SETUPS) {
  const run = RUNS[setup];
  if (!run) throw new Error(`SINKRON_E2E_SETUPS: no setup "${setup}" (${Object.keys(RUNS).join(", ")})`);
  for (const seed of SEEDS) {
    test(`two devices used at random, signed in by ${run.what} (seed ${seed}): every tab and the server end with the newest choices and the same positions, and no write is left behind`, (t) =>
      run.start((how) => wander(seed, how, t)));
  }
}
