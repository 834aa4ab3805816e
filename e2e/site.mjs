// A stand-in for the streaming site that adopts Sinkron: its own users, its own sign-in
// (a session cookie), and the JSON Web Tokens it issues for Sinkron — HS256 with a shared
// secret, or RS256 with its public keys published as a JWKS document that it can rotate. It
// also serves the demo's pages, so the demo runs on the site's origin and calls Sinkron on
// another (or, in cookie mode, sends the site's HttpOnly token cookie along).
//
//   POST /site/login  {username, password}  → {user: {id}} and the session cookie
//   GET  /site/token[?refresh=1]            → {token} (null for a guest); refresh issues a new one
//   POST /site/logout                       → ends the session
//   GET  /.well-known/jwks.json             → the public keys (RS256)
//
// Every user's password is "correct horse"; a username's id at the site is `site-<username>`.
// `withSite` runs a test with a site and a Sinkron server that trusts it; `openDemo` opens the
// demo from the site's origin.
import { createHmac, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { Server } from "./support.mjs";

const root = new URL("..", import.meta.url).pathname;
const DIST = join(root, "demo/dist");
const PASSWORD = "correct horse";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".svg": "image/svg+xml", ".webm": "video/webm" };

const b64url = (data) => Buffer.from(data).toString("base64url");

export class Site {
  /**
   * `alg`: "HS256" (a shared secret, written to `secretFile` for Sinkron) or "RS256" (keys
   * published at `jwksUrl`). `cookie`: the name of the token cookie set at sign-in, if any.
   * `ttl`: how long its tokens last, in seconds.
   */
  static async start({ alg = "HS256", cookie = null, ttl = 600, dir } = {}) {
    const site = new Site(alg, cookie);
    site.ttl = ttl;
    if (alg === "HS256") {
      site.secret = randomBytes(32).toString("hex");
      site.secretFile = join(dir, "site-hs256.secret");
      await writeFile(site.secretFile, site.secret);
    } else {
      site.rotate();
    }
    await new Promise((resolve) => site.server.listen(0, "127.0.0.1", resolve));
    site.url = `http://127.0.0.1:${site.server.address().port}`;
    site.jwksUrl = `${site.url}/.well-known/jwks.json`;
    return site;
  }

  constructor(alg, cookie) {
    this.alg = alg;
    this.cookie = cookie;
    /** session id → {user, token} */
    this.sessions = new Map();
    /** RS256 keys, newest last: {kid, privateKey, jwk} */
    this.keys = [];
    this.counts = { jwks: 0, token: 0, refresh: 0 };
    this.server = createServer((req, res) => void this.handle(req, res).catch((e) => this.reply(res, 500, { error: String(e) })));
  }

  stop() {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(resolve));
  }

  /** Whether the site's session that `context` (a browser context) holds is still open. */
  async signedIn(context) {
    const sid = (await context.cookies(this.url)).find((c) => c.name === "site_session")?.value;
    return sid !== undefined && this.sessions.has(sid);
  }

  /** The site's id of a username. */
  userId(username) {
    return `site-${username}`;
  }

  /** A token for `userId`, valid for `ttl` seconds (negative: already expired). */
  token(userId, ttl = this.ttl) {
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: userId, iat: now, exp: now + ttl };
    if (this.alg === "HS256") {
      const signing = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
      return `${signing}.${createHmac("sha256", this.secret).update(signing).digest("base64url")}`;
    }
    const key = this.keys.at(-1);
    const signing = `${b64url(JSON.stringify({ alg: "RS256", typ: "JWT", kid: key.kid }))}.${b64url(JSON.stringify(claims))}`;
    return `${signing}.${sign("sha256", Buffer.from(signing), key.privateKey).toString("base64url")}`;
  }

  /** A new signing key: new tokens name it, and the JWKS document lists it beside the old ones. */
  rotate() {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const kid = `key-${this.keys.length + 1}`;
    this.keys.push({ kid, privateKey, jwk: { ...publicKey.export({ format: "jwk" }), kid, alg: "RS256", use: "sig" } });
    // The site re-issues its sessions' tokens with the new key.
    for (const session of this.sessions.values()) session.token = this.token(session.user.id);
    return kid;
  }

  /** Lets time pass for `userId`'s sessions: their current token is now expired. */
  expire(userId) {
    for (const session of this.sessions.values()) {
      if (session.user.id === userId) session.token = this.token(userId, -3600);
    }
  }

  reply(res, status, body, headers = {}) {
    res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store", ...headers });
    res.end(JSON.stringify(body));
  }

  session(req) {
    const sid = /(?:^|;\s*)site_session=([^;]+)/.exec(req.headers.cookie ?? "")?.[1];
    return sid ? this.sessions.get(sid) : undefined;
  }

  tokenCookie(token, maxAge = 3600) {
    return `${this.cookie}=${token}; HttpOnly; SameSite=Lax; Path=/; Max-Age=${maxAge}`;
  }

  async handle(req, res) {
    const url = new URL(req.url, "http://site");
    if (req.method === "POST" && url.pathname === "/site/login") {
      let body = "";
      for await (const chunk of req) body += chunk;
      const { username, password } = JSON.parse(body || "{}");
      if (typeof username !== "string" || !username || password !== PASSWORD) {
        return this.reply(res, 401, { error: "wrong username or password" });
      }
      const sid = randomBytes(16).toString("hex");
      const user = { id: this.userId(username) };
      const session = { user, token: this.token(user.id) };
      this.sessions.set(sid, session);
      const cookies = [`site_session=${sid}; HttpOnly; SameSite=Lax; Path=/`];
      if (this.cookie) cookies.push(this.tokenCookie(session.token));
      return this.reply(res, 200, { user }, { "set-cookie": cookies });
    }
    if (req.method === "GET" && url.pathname === "/site/token") {
      this.counts.token++;
      const session = this.session(req);
      if (!session) return this.reply(res, 200, { token: null });
      if (url.searchParams.get("refresh") === "1") {
        this.counts.refresh++;
        session.token = this.token(session.user.id);
      }
      const headers = this.cookie ? { "set-cookie": this.tokenCookie(session.token) } : {};
      return this.reply(res, 200, { token: session.token }, headers);
    }
    if (req.method === "POST" && url.pathname === "/site/logout") {
      const sid = /(?:^|;\s*)site_session=([^;]+)/.exec(req.headers.cookie ?? "")?.[1];
      if (sid) this.sessions.delete(sid);
      const cookies = ["site_session=; Path=/; Max-Age=0"];
      if (this.cookie) cookies.push(this.tokenCookie("", 0));
      return this.reply(res, 200, {}, { "set-cookie": cookies });
    }
    if (req.method === "GET" && url.pathname === "/.well-known/jwks.json") {
      this.counts.jwks++;
      return this.reply(res, 200, { keys: this.keys.map((k) => k.jwk) });
    }
    if (req.method === "GET") return this.file(res, url.pathname);
    return this.reply(res, 404, { error: "not found" });
  }

  async file(res, pathname) {
    const path = normalize(join(DIST, pathname === "/" ? "index.html" : pathname));
    if (!path.startsWith(DIST)) return this.reply(res, 404, { error: "not found" });
    try {
      const data = await readFile(path);
      res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
      res.end(data);
    } catch {
      this.reply(res, 404, { error: "not found" });
    }
  }
}

/** A site and a Sinkron server in JWT mode that trusts it and allows its origin. */
export async function withSite({ alg = "HS256", cookie = null, admin = false, ttl } = {}, fn) {
  const dir = mkdtempSync(join(tmpdir(), "sinkron-site-"));
  const site = await Site.start({ alg, cookie, ttl, dir });
  const keys = alg === "HS256" ? ["--jwt-hs256-secret-file", site.secretFile] : ["--jwks-url", site.jwksUrl];
  const args = ["--auth", "jwt", ...keys, "--cors-origin", site.url];
  if (cookie) args.push("--jwt-cookie", cookie);
  if (admin) {
    // The site's backend key, for the admin API.
    site.adminKey = randomBytes(24).toString("hex");
    const keyFile = join(dir, "admin.key");
    writeFileSync(keyFile, site.adminKey);
    args.push("--admin-token-file", keyFile);
  }
  const sinkron = await Server.start({ dir, args });
  try {
    await fn(site, sinkron);
  } finally {
    await sinkron.stop();
    await site.stop();
  }
}

/** The demo, from the site's origin, syncing with Sinkron's; `query`: more of its options (`&keep=local`). */
export async function openDemo(context, site, sinkron, { auth = "token", interval = 30000, query = "" } = {}) {
  const page = await context.newPage();
  await page.goto(`${site.url}/?interval=${interval}&auth=${auth}&api=${encodeURIComponent(sinkron.url)}${query}`);
  await page.getByTestId("sync-status").waitFor();
  return page;
}
