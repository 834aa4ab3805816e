// Sinkron TV: a small streaming site whose personal data (history with playback position,
// favourites, likes) syncs across tabs and devices with Sinkron.

import { memo, useEffect, useRef, useState, useSyncExternalStore, type FormEvent } from "react";
import { useSinkron, useUserSync } from "sinkron/react";
import type { HistoryEntry, LegacyRecord } from "sinkron";
import { EPISODE_BY_ID, SHOWS, SHOW_BY_ID, type Episode, type Show } from "./catalog";
import clip from "./clip.webm";
import * as traffic from "./traffic";

const params = new URLSearchParams(location.search);
/** `?interval=MS` overrides the pull interval (for demos and tests). */
const interval = Number(params.get("interval")) || 30000;
/** `?hot=MS` overrides how often at most the playing position is pushed (default 30 s). */
const hotEvery = Number(params.get("hot"));
const hot = hotEvery > 0 ? { history: hotEvery } : undefined;
/** `?requestTimeout=MS` overrides how long a request may take (default 45 s). */
const requestTimeout = Number(params.get("requestTimeout")) || undefined;
/** `?pokes=1`: hold the server's poke stream (a server run with `--poke sse`). */
const pokes = params.get("pokes") === "1";
/** `?api=ORIGIN`: the Sinkron server when it is not this page's origin (it must allow ours). */
const baseUrl = params.get("api") ?? undefined;
/** `?onFocus=0`: no pull when the window gets focus or the tab is shown again. */
const onFocus = params.get("onFocus") !== "0";
/**
 * `?auth=token` or `?auth=cookie`: sign in through the site that serves this page (its own
 * users, at `/site/login`) instead of Sinkron's accounts. With `token` Sinkron gets the site's
 * token from `/site/token`; with `cookie` the site's HttpOnly cookie carries it.
 */
const siteAuth = params.get("auth") === "token" || params.get("auth") === "cookie" ? params.get("auth") : null;

/**
 * `?keep=local` (with `auth=token`): the site keeps its session's token in `localStorage`, as
 * many sign-in libraries do (written at sign-in, renewed on `refresh`, removed at sign-out),
 * and its provider reads it there. Otherwise the provider asks the site's token endpoint.
 */
const keepsToken = siteAuth === "token" && params.get("keep") === "local";
const TOKEN_KEY = "site:token";

/** The site's token endpoint: the session's current token, `refresh` renews it. */
async function fetchToken(refresh: boolean): Promise<string | null> {
  const response = await fetch(`/site/token${refresh ? "?refresh=1" : ""}`, { cache: "no-store" });
  if (!response.ok) throw new Error(`the site's token endpoint answered ${response.status}`);
  return ((await response.json()) as { token: string | null }).token;
}

/** With `keep=local`: the site's session token fetched and kept (none: removed). */
async function keepToken(refresh: boolean): Promise<void> {
  const token = await fetchToken(refresh);
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** The site's token provider. */
async function getToken({ refresh }: { refresh: boolean }): Promise<string | null> {
  if (!keepsToken) return fetchToken(refresh);
  if (refresh) await keepToken(true);
  return localStorage.getItem(TOKEN_KEY);
}

/**
 * What this site kept before Sinkron: a `rabastrin_history` array of `{episodeId, position,
 * watchedAt}` in `localStorage`, the guest's watch history. Adopted once into the guest's
 * data (which joins the account at sign-in); left in place, it is never read again.
 */
function adoptLegacy(scope: string | null): LegacyRecord[] | null {
  const text = scope === null ? localStorage.getItem("rabastrin_history") : null;
  if (text === null) return null;
  const old = JSON.parse(text) as Array<{ episodeId: string; position: number; watchedAt: number }>;
  return old
    .filter((h) => EPISODE_BY_ID.has(h.episodeId))
    .map((h) => ({
      collection: "history",
      key: h.episodeId,
      value: { showId: EPISODE_BY_ID.get(h.episodeId)!.showId, position: h.position },
      updatedAt: h.watchedAt,
    }));
}

function useRoute(): string {
  const [route, setRoute] = useState(location.hash || "#/");
  useEffect(() => {
    const onHash = () => setRoute(location.hash || "#/");
    addEventListener("hashchange", onHash);
    return () => removeEventListener("hashchange", onHash);
  }, []);
  return route;
}

export function App() {
  const ready = useSinkron((s) => s.ready);
  const route = useRoute();
  const [playing, setPlaying] = useState<string | null>(null);
  return (
    <>
      <Sync />
      {ready ? (
        <>
          <Header />
          <main>
            {playing && <Player episodeId={playing} onClose={() => setPlaying(null)} />}
            <SyncPanel />
            {route === "#/history" ? <HistoryPage onPlay={setPlaying} /> : <Home onPlay={setPlaying} />}
          </main>
        </>
      ) : (
        <div className="loading">Loading…</div>
      )}
    </>
  );
}

/**
 * Syncs while the app is mounted. A component of its own that draws nothing: the hook answers
 * the sync status, so the component calling it renders again at each change of the status
 * (a write's pending count, a push, a poll); here that is this one alone, not the whole app.
 */
function Sync() {
  useUserSync({
    interval,
    onFocus,
    onLogin: true,
    crossTab: true,
    baseUrl,
    getToken: siteAuth === "token" ? getToken : undefined,
    cookie: siteAuth === "cookie",
    adoptLegacy,
    hot,
    pokes,
    requestTimeout,
  });
  return null;
}

function Header() {
  return (
    <header className="top">
      <a className="logo" href="#/">
        Sinkron<span>TV</span>
      </a>
      <nav>
        <a href="#/">Home</a>
        <a href="#/history">History</a>
      </nav>
      <SyncStatus />
      <Account />
    </header>
  );
}

function SyncStatus() {
  const status = useSinkron((s) => s.status);
  const [, tick] = useState(0);
  useEffect(() => {
    const t = setInterval(() => tick((n) => n + 1), 1000);
    return () => clearInterval(t);
  }, []);
  let text: string;
  switch (status.state) {
    case "guest":
      text = "Guest · saved on this device";
      break;
    case "offline":
      text = status.pending > 0 ? `Offline · ${status.pending} pending` : "Offline";
      break;
    case "pending":
      text = `Pending ${status.pending}`;
      break;
    case "syncing":
      text = "Syncing…";
      break;
    default: {
      const ago = status.lastSyncedAt ? Math.max(0, Math.round((Date.now() - status.lastSyncedAt) / 1000)) : null;
      text = ago === null ? "Synced" : `Synced ${ago} s ago`;
    }
  }
  return (
    <div className={`sync sync-${status.state}`} data-testid="sync-status" data-state={status.state} data-pending={status.pending} data-error={status.error ?? ""}>
      <i aria-hidden="true" />
      {text}
    </div>
  );
}

/**
 * What this tab sent to the sync API since the page loaded, and at what rate per hour: the
 * cost of keeping in step. Only the leader tab polls, so another tab of this browser shows
 * its own pushes and few or no pulls.
 */
function SyncPanel() {
  const { pulls, notModified, pushes } = useSyncExternalStore(traffic.subscribe, traffic.snapshot);
  const [, tick] = useState(0);
  useEffect(() => {
    const t = setInterval(() => tick((n) => n + 1), 1000);
    return () => clearInterval(t);
  }, []);
  // performance.now() counts from the page's load. In the first minute the sign-in's
  // requests would read as thousands an hour: the rate waits for a minute's worth.
  const ms = performance.now();
  const rate = (n: number) => (ms < 60_000 ? "–/h" : `${Math.round((n * 3_600_000) / ms)}/h`);
  const rows: Array<[string, string, number]> = [
    ["pushes", "Pushes", pushes],
    ["pulls", "Pulls", pulls],
    ["not-modified", "304 (unchanged)", notModified],
  ];
  return (
    <section className="traffic" data-testid="sync-panel" data-pushes={pushes} data-pulls={pulls} data-not-modified={notModified}>
      <h2>
        Sent by this tab <span className="meta">since it loaded; only the leader tab polls, for every tab of this browser</span>
      </h2>
      <dl>
        {rows.map(([id, label, n]) => (
          <div key={id} data-testid={`sync-${id}`}>
            <dt>{label}</dt>
            <dd>{n}</dd>
            <dd className="meta" title="per hour since the page loaded">
              {rate(n)}
            </dd>
          </div>
        ))}
      </dl>
    </section>
  );
}

function Account() {
  const user = useSinkron((s) => s.user);
  const signIn = useSinkron((s) => s.signIn);
  const signedIn = useSinkron((s) => s.signedIn);
  const signOut = useSinkron((s) => s.signOut);
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  if (user) {
    return (
      <div className="account">
        <span data-testid="username">{user.username || "signed in"}</span>
        <button
          data-testid="logout"
          onClick={() => {
            // Sinkron first: its flush of what is not yet sent still carries the site's session.
            void signOut().then(() => {
              if (keepsToken) localStorage.removeItem(TOKEN_KEY);
              // `keepalive`: it reaches the site though the page goes away at once (a page
              // back from the back/forward cache that reloads itself, say): else the site's
              // session would stay, and the next page follow it and sign in again.
              if (siteAuth) void fetch("/site/logout", { method: "POST", keepalive: true });
            });
          }}
        >
          Sign out
        </button>
      </div>
    );
  }
  const submit = async (create: boolean, e?: FormEvent) => {
    e?.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (siteAuth) {
        // The site's own sign-in; Sinkron follows it.
        const response = await fetch("/site/login", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ username, password }),
        });
        if (!response.ok) throw new Error("wrong username or password");
        const { user } = (await response.json()) as { user: { id: string } };
        if (keepsToken) await keepToken(false);
        await signedIn(siteAuth === "cookie" ? user.id : undefined);
      } else {
        await signIn(username, password, { create });
      }
      setPassword("");
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="account" onSubmit={(e) => void submit(false, e)}>
      <input data-testid="login-username" placeholder="username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} />
      <input data-testid="login-password" placeholder="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} />
      <button data-testid="login-submit" type="submit" disabled={busy}>
        Sign in
      </button>
      <button data-testid="signup-submit" type="button" disabled={busy} onClick={() => void submit(true)}>
        Sign up
      </button>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

function Artwork({ show, small }: { show: Show; small?: boolean }) {
  return (
    <div className={small ? "art small" : "art"} style={{ background: `linear-gradient(135deg, ${show.colors[0]}, ${show.colors[1]})` }}>
      <span>{show.title.split(" ").map((w) => w[0]).join("")}</span>
    </div>
  );
}

const clock = (seconds: number) => `${Math.floor(seconds / 60)}:${String(Math.floor(seconds % 60)).padStart(2, "0")}`;

function Home({ onPlay }: { onPlay: (id: string) => void }) {
  const history = useSinkron((s) => s.history);
  const continuing = history.filter((h) => {
    const ep = EPISODE_BY_ID.get(h.episodeId);
    return ep && h.position > 0 && h.position < ep.duration - 10;
  });
  return (
    <>
      <section>
        <h2>Continue watching</h2>
        <div className="row" data-testid="continue-watching">
          {continuing.length === 0 && <p className="empty">Nothing in progress.</p>}
          {continuing.map((h) => (
            <ContinueCard key={h.episodeId} entry={h} onPlay={onPlay} />
          ))}
        </div>
      </section>
      <MyList />
      <section>
        <h2>Catalogue</h2>
        <div className="grid">
          {SHOWS.map((s) => (
            <ShowCard key={s.id} show={s} onPlay={onPlay} />
          ))}
        </div>
      </section>
    </>
  );
}

/** The favourite shows: a component of its own, so a favourite renders it and one card only. */
function MyList() {
  const favorites = useSinkron((s) => s.favorites);
  const shows = SHOWS.filter((s) => s.id in favorites);
  if (shows.length === 0) return null;
  return (
    <section>
      <h2>My list</h2>
      <div className="row" data-testid="favorites">
        {shows.map((s) => (
          <a key={s.id} className="mini" href={`#/show/${s.id}`} data-testid={`my-list-${s.id}`}>
            <Artwork show={s} small />
            {s.title}
          </a>
        ))}
      </div>
    </section>
  );
}

function ContinueCard({ entry, onPlay }: { entry: HistoryEntry; onPlay: (id: string) => void }) {
  const ep = EPISODE_BY_ID.get(entry.episodeId)!;
  const show = SHOW_BY_ID.get(ep.showId)!;
  return (
    <button className="mini" onClick={() => onPlay(ep.id)} data-testid={`continue-${ep.id}`}>
      <Artwork show={show} small />
      <span>
        {show.title} · E{ep.number}
      </span>
      <progress max={ep.duration} value={entry.position} />
    </button>
  );
}

// Memoised: a change of one show's favourite renders that card only (each reads its own), not
// the whole catalogue.
const ShowCard = memo(function ShowCard({ show, onPlay }: { show: Show; onPlay: (id: string) => void }) {
  const favorite = useSinkron((s) => show.id in s.favorites);
  const toggleFavorite = useSinkron((s) => s.toggleFavorite);
  const [open, setOpen] = useState(false);
  return (
    <article className="card" id={`show-${show.id}`}>
      <Artwork show={show} />
      <div className="card-body">
        <h3 data-testid={`title-${show.id}`}>{show.title}</h3>
        <p className="meta">
          {show.genre} · {show.year} · {show.episodes.length} episodes
        </p>
        <div className="actions">
          <button data-testid={`favorite-${show.id}`} aria-pressed={favorite} className={favorite ? "on" : ""} onClick={() => toggleFavorite(show.id)}>
            {favorite ? "★ In my list" : "☆ My list"}
          </button>
          <button data-testid={`episodes-${show.id}`} onClick={() => setOpen(!open)} aria-expanded={open}>
            Episodes
          </button>
        </div>
        {open && (
          <ol className="episodes">
            {show.episodes.map((e) => (
              <EpisodeRow key={e.id} episode={e} onPlay={onPlay} />
            ))}
          </ol>
        )}
      </div>
    </article>
  );
});

function EpisodeRow({ episode, onPlay }: { episode: Episode; onPlay: (id: string) => void }) {
  const like = useSinkron((s) => s.likes[episode.id] ?? 0);
  const setLike = useSinkron((s) => s.setLike);
  return (
    <li>
      <button data-testid={`play-${episode.id}`} onClick={() => onPlay(episode.id)}>
        ▶ {episode.number}. {episode.title}
      </button>
      <button data-testid={`like-${episode.id}`} aria-pressed={like === 1} className={like === 1 ? "on" : ""} onClick={() => setLike(episode.id, like === 1 ? 0 : 1)}>
        {like === 1 ? "♥" : "♡"}
      </button>
    </li>
  );
}

/** Seconds a seek button moves the episode. */
const SEEK_STEP = 10;

/**
 * The player: a short clip (`clip.webm`, 6 s) loops for an episode that lasts minutes. The
 * position is the episode's, held by the store: the clip's playing time advances it, one
 * write per second played (`updateProgress`; the episode's first, `addHistory`, also writes
 * its entry, as does a pause before it: opening writes nothing, it pulls first). Each shows at
 * once, here and in other tabs, and is pushed every 30 s at most while it plays, so a paused
 * or stalled video writes nothing. A pause, a seek and closing the player push it at once (`syncNow`). Seeking sets
 * the episode's position, not the clip's.
 */
function Player({ episodeId, onClose }: { episodeId: string; onClose: () => void }) {
  const episode = EPISODE_BY_ID.get(episodeId)!;
  const show = SHOW_BY_ID.get(episode.showId)!;
  const entry = useSinkron((s) => s.history.find((h) => h.episodeId === episodeId));
  const addHistory = useSinkron((s) => s.addHistory);
  const updateProgress = useSinkron((s) => s.updateProgress);
  const syncNow = useSinkron((s) => s.syncNow);
  const [paused, setPaused] = useState(false);
  const position = entry?.position ?? 0;
  const video = useRef<HTMLVideoElement>(null);
  // The clip time last seen, and the seconds played since the last write.
  const played = useRef({ at: 0, seconds: 0 });
  // The timeupdate handler reads the latest position, not the one of its render.
  const latest = useRef(position);
  latest.current = position;
  // The browser refused to start the clip (a pause that is not the user's).
  const refused = useRef(false);

  // The episode's position as the player moves it: the first one also writes the history
  // entry (its show and duration).
  const setPosition = (next: number) => {
    if (entry) updateProgress(episodeId, next);
    else addHistory({ episodeId, showId: episode.showId, position: next, duration: episode.duration });
  };

  useEffect(() => {
    // Before the first position is written (a second in, not on opening, even for an episode
    // this device has no entry for): the server's state, so another device's further progress
    // is where this one resumes, not what it overwrites.
    syncNow();
    played.current = { at: video.current?.currentTime ?? 0, seconds: 0 };
    refused.current = false;
    setPaused(false);
    // Only when the episode changes: resuming keeps the stored position.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [episodeId]);

  useEffect(() => {
    const v = video.current;
    if (!v) return;
    if (paused) {
      v.pause();
      // Paused before its first second played: the episode is started all the same.
      // (A refused autoplay is no one's pause: it writes nothing.)
      if (!entry && !refused.current) setPosition(latest.current);
      refused.current = false;
      // While it plays, the position is pushed every 30 s at most; a pause sends it now.
      syncNow();
    }
    // Refused without a user's gesture in some browsers (the clip is muted, so rarely).
    else
      v.play().catch((e: unknown) => {
        // Not a pause of the user's (an interrupted play() is: AbortError).
        refused.current = e instanceof DOMException && e.name === "NotAllowedError";
        setPaused(true);
      });
    // On pauses only (`entry` and `setPosition` are this render's, as the pause's).
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [paused, episodeId, syncNow]);

  // Closing the player sends the position now too.
  useEffect(() => () => syncNow(), [syncNow]);

  const onTimeUpdate = () => {
    const v = video.current!;
    let delta = v.currentTime - played.current.at;
    played.current.at = v.currentTime;
    // The clip looped: the time to its end, then from its start.
    if (delta < 0 && Number.isFinite(v.duration)) delta += v.duration;
    // Playback advances by a quarter second per event at most; anything else is a jump.
    if (v.paused || !(delta > 0 && delta < 2)) return;
    played.current.seconds += delta;
    const whole = Math.floor(played.current.seconds);
    if (whole < 1) return;
    played.current.seconds -= whole;
    const next = Math.min(episode.duration, latest.current + whole);
    setPosition(next);
    if (next >= episode.duration) setPaused(true);
  };

  const seek = (to: number) => {
    played.current.seconds = 0;
    setPosition(Math.max(0, Math.min(episode.duration, Math.round(to))));
    // Sent at once (the steps of a drag along the bar as one push).
    syncNow();
  };

  return (
    <section className="player" data-testid="player">
      <div className="screen">
        <video
          ref={video}
          data-testid="player-video"
          src={clip}
          muted
          loop
          playsInline
          onTimeUpdate={onTimeUpdate}
          onPlay={() => setPaused(false)}
          onPause={() => setPaused(true)}
        />
        <span>{show.title}</span>
      </div>
      <div>
        <h2>
          {show.title} · E{episode.number} {episode.title}
        </h2>
        <input
          type="range"
          data-testid="player-seek"
          aria-label="Position in the episode"
          min={0}
          max={episode.duration}
          step={1}
          value={position}
          onChange={(e) => seek(Number(e.target.value))}
        />
        <p className="meta" data-testid="player-position" data-position={position}>
          {clock(position)} / {clock(episode.duration)}
        </p>
        <div className="actions">
          <button data-testid="seek-back" aria-label={`Back ${SEEK_STEP} seconds`} onClick={() => seek(position - SEEK_STEP)}>
            −{SEEK_STEP} s
          </button>
          {paused ? (
            <button data-testid="resume" onClick={() => setPaused(false)}>
              ▶ Play
            </button>
          ) : (
            <button data-testid="pause" onClick={() => setPaused(true)}>
              ❚❚ Pause
            </button>
          )}
          <button data-testid="seek-forward" aria-label={`Forward ${SEEK_STEP} seconds`} onClick={() => seek(position + SEEK_STEP)}>
            +{SEEK_STEP} s
          </button>
          <button onClick={onClose}>Close</button>
        </div>
      </div>
    </section>
  );
}

function HistoryPage({ onPlay }: { onPlay: (id: string) => void }) {
  const history = useSinkron((s) => s.history);
  const removeHistory = useSinkron((s) => s.removeHistory);
  const clearHistory = useSinkron((s) => s.clearHistory);
  return (
    <section>
      <h2>
        History{" "}
        {history.length > 0 && (
          <button data-testid="clear-history" onClick={clearHistory}>
            Clear
          </button>
        )}
      </h2>
      <ul className="history" data-testid="history">
        {history.length === 0 && <li className="empty">Nothing watched yet.</li>}
        {history.map((h) => {
          const ep = EPISODE_BY_ID.get(h.episodeId);
          const show = ep && SHOW_BY_ID.get(ep.showId);
          return (
            <li key={h.episodeId} data-testid={`history-${h.episodeId}`} data-position={h.position}>
              {show && <Artwork show={show} small />}
              <button className="link" onClick={() => onPlay(h.episodeId)}>
                {show ? `${show.title} · E${ep!.number} ${ep!.title}` : h.episodeId}
              </button>
              <span className="meta">
                at {clock(h.position)} · {new Date(h.updatedAt).toLocaleString()}
              </span>
              <button aria-label="Remove" onClick={() => removeHistory(h.episodeId)}>
                ✕
              </button>
            </li>
          );
        })}
      </ul>
    </section>
  );
}
