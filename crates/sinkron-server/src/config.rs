//! The server's configuration: one struct, every field a flag with an environment variable.
//!
//! It owns parsing and defaults only; it must not open anything or hold secrets in `Debug`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use sinkron_core::merge::Policy;
use sinkron_core::protocol::DEFAULT_COLLECTIONS;

use crate::store::{FieldMerge, PageLimit};

/// The default cap of the `history` collection: entries a user keeps.
pub const HISTORY_CAP: u64 = 1_000;

/// Longest `--jwks-refresh-secs`: a day.
pub const JWKS_REFRESH_SECS_MAX: u64 = 86_400;

/// What a write must satisfy and how it is kept: the flags `sinkron serve` and `sinkron import`
/// share, so that an imported record meets the rules a device's push does.
#[derive(Clone, Debug, clap::Args)]
pub struct WriteRules {
    /// Collections clients may write to, comma separated.
    #[arg(
        long,
        env = "SINKRON_COLLECTIONS",
        value_name = "NAMES",
        value_delimiter = ',',
        default_values_t = DEFAULT_COLLECTIONS.map(String::from)
    )]
    pub collections: Vec<String>,

    /// How far ahead of the server clock a write's `updatedAt` may be, in milliseconds; later
    /// ones are clamped to it so a device with a fast clock cannot win forever.
    #[arg(
        long,
        env = "SINKRON_MAX_FUTURE_MS",
        value_name = "MS",
        default_value_t = 60_000
    )]
    pub max_future_ms: u64,

    /// Most records holding a value one user keeps in a collection, as `NAME=N`, comma
    /// separated: past it a push evicts the oldest (as deletions, so devices follow) rather
    /// than refusing a play. `NAME=0` lifts the cap. Default: `history=1000` when `history`
    /// is one of the collections.
    #[arg(
        long,
        env = "SINKRON_COLLECTION_CAPS",
        value_name = "NAME=N",
        value_delimiter = ','
    )]
    pub collection_caps: Option<Vec<String>>,

    /// Collections whose records are merged field by field instead of whole, as
    /// `NAME[:STICKY[+STICKY…]]`, comma separated: of two writes of a top-level field the newer
    /// wins (a like on one device and a position on another both survive), and a sticky field
    /// keeps `true` once set (e.g. `history:completed`). See PROTOCOL.md, "Per-field merge".
    #[arg(
        long,
        env = "SINKRON_MERGE_FIELDS",
        value_name = "NAME[:STICKY]",
        value_delimiter = ','
    )]
    pub merge_fields: Vec<String>,
}

impl Default for WriteRules {
    fn default() -> Self {
        Self {
            collections: DEFAULT_COLLECTIONS.map(String::from).to_vec(),
            max_future_ms: 60_000,
            collection_caps: None,
            merge_fields: Vec::new(),
        }
    }
}

impl WriteRules {
    /// Every flag of these rules checked: the collections, the caps and the merges.
    pub fn check(&self) -> Result<(), String> {
        if self.collections.is_empty() {
            return Err("--collections names no collection".to_owned());
        }
        for (i, name) in self.collections.iter().enumerate() {
            let chars = name.chars().count();
            if chars == 0 || chars > sinkron_core::limits::COLLECTION_CHARS_MAX {
                return Err(format!(
                    "--collections: {name:?} is not a collection name of 1 to {} characters",
                    sinkron_core::limits::COLLECTION_CHARS_MAX
                ));
            }
            if self.collections[..i].contains(name) {
                return Err(format!("--collections names {name:?} twice"));
            }
        }
        self.caps()?;
        self.merges()?;
        Ok(())
    }

    /// The `--collection-caps`, checked: each names a collection clients may write to and a
    /// count (0: no cap).
    pub fn caps(&self) -> Result<Vec<(String, u64)>, String> {
        let Some(given) = &self.collection_caps else {
            let history = self.collections.iter().any(|c| c == "history");
            return Ok(history
                .then(|| (String::from("history"), HISTORY_CAP))
                .into_iter()
                .collect());
        };
        let mut caps = Vec::new();
        for cap in given {
            let bad = || format!("--collection-caps {cap:?} is not NAME=COUNT, e.g. history=1000");
            let (name, max) = cap.split_once('=').ok_or_else(bad)?;
            let max: u64 = max.trim().parse().map_err(|_| bad())?;
            let name = name.trim();
            if !self.collections.iter().any(|c| c == name) {
                return Err(format!(
                    "--collection-caps names {name:?}, which is not one of --collections"
                ));
            }
            if max > 0 {
                caps.push((name.to_owned(), max));
            }
        }
        Ok(caps)
    }

    /// The `--merge-fields`, checked: each names a collection clients may write to, once,
    /// and sticky field names of at most [`sinkron_core::limits::FIELD_CHARS_MAX`].
    pub fn merges(&self) -> Result<Vec<FieldMerge>, String> {
        let mut merges: Vec<FieldMerge> = Vec::new();
        for given in &self.merge_fields {
            let (name, sticky) = given.split_once(':').unwrap_or((given, ""));
            let name = name.trim();
            if !self.collections.iter().any(|c| c == name) {
                return Err(format!(
                    "--merge-fields names {name:?}, which is not one of --collections"
                ));
            }
            if merges.iter().any(|m| m.collection == name) {
                return Err(format!("--merge-fields names {name:?} twice"));
            }
            let sticky: Vec<String> = sticky
                .split('+')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if let Some(bad) = sticky
                .iter()
                .find(|s| s.chars().count() > sinkron_core::limits::FIELD_CHARS_MAX)
            {
                return Err(format!(
                    "--merge-fields: the field name {bad:?} is too long"
                ));
            }
            merges.push(FieldMerge {
                collection: name.to_owned(),
                policy: Policy { sticky },
            });
        }
        Ok(merges)
    }
}

/// Settings of `sinkron serve`.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the chosen one is printed).
    #[arg(
        long,
        env = "SINKRON_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,

    /// Database: `sqlite://PATH` (relative), `sqlite:///ABS/PATH` or a plain file path (the file
    /// is created if missing; one server per file), or `postgres://USER[:PASS]@HOST[:PORT]/DB`
    /// (also `postgresql://`; any number of servers on one database).
    #[arg(
        long,
        env = "SINKRON_DATABASE_URL",
        value_name = "URL",
        default_value = "sinkron.db"
    )]
    pub database: String,

    /// Most PostgreSQL connections this server holds at once (SQLite ignores it). A quarter of
    /// them (at most one per core) are shared by all polls; other requests beyond the rest
    /// wait up to 5 s for a free one, then get 503.
    #[arg(
        long,
        env = "SINKRON_DB_POOL_SIZE",
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub db_pool_size: u32,

    /// What a write must satisfy and how it is kept.
    #[command(flatten)]
    pub rules: WriteRules,

    /// Most changes in one pull page (and in the changes of one push answer).
    #[arg(
        long,
        env = "SINKRON_PAGE_SIZE",
        value_name = "N",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub page_size: u32,

    /// About the most bytes of changes in one page, as JSON (256 KiB by default); a page
    /// holds its first change whatever its size. It bounds how long a slow link takes to
    /// read a page: a client that cannot take a page within its request timeout (45 s in the
    /// browser), or within `--request-timeout-secs` once its socket stalls, is cut off and
    /// asks for the page again whole.
    #[arg(
        long,
        env = "SINKRON_PAGE_BYTES",
        value_name = "BYTES",
        default_value_t = 256 << 10,
        value_parser = clap::value_parser!(u32).range(1024..)
    )]
    pub page_bytes: u32,

    /// Tombstones older than this many seconds are deleted (at start, then hourly); clients
    /// whose cursor is older get a full reset.
    #[arg(
        long,
        env = "SINKRON_TOMBSTONE_TTL_SECS",
        value_name = "SECS",
        default_value_t = 30 * 24 * 3600
    )]
    pub tombstone_ttl_secs: u64,

    /// A session of Sinkron's own accounts that no request has used for this many seconds
    /// ends: its token is refused with `token_expired` (the user signs in again) and deleted.
    /// Each use extends it. At least 60.
    #[arg(
        long,
        env = "SINKRON_SESSION_IDLE_SECS",
        value_name = "SECS",
        default_value_t = 30 * 24 * 3600,
        value_parser = clap::value_parser!(u64).range(60..)
    )]
    pub session_idle_secs: u64,

    /// Sync requests (pulls and pushes) one user may make a minute on one node, in bursts of
    /// a fifth of it; past it the user's devices are answered 429 with `Retry-After`. 0: no
    /// limit. A user's devices poll about twice a minute each and push at most every few
    /// hundred milliseconds while clicked.
    #[arg(
        long,
        env = "SINKRON_USER_REQUESTS_PER_MINUTE",
        value_name = "N",
        default_value_t = 600
    )]
    pub user_requests_per_minute: u32,

    /// Sync requests of one user in progress at once on one node; past it, 429. Each holds
    /// a database connection on PostgreSQL, so this bounds what one account can take from
    /// the others.
    #[arg(
        long,
        env = "SINKRON_USER_CONCURRENCY",
        value_name = "N",
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub user_concurrency: u32,

    /// Most bytes of large answers (above 512 KiB) this node holds for clients that have not
    /// taken them yet, all users together (128 MiB by default). Past it a pull or push whose
    /// answer would be one more is answered 503 `unavailable` with `Retry-After`, and retried
    /// by its client; one answer is let through whatever its size when nothing else is held.
    #[arg(
        long,
        env = "SINKRON_HELD_ANSWERS_BYTES_MAX",
        value_name = "BYTES",
        default_value_t = 128 << 20,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub held_answers_bytes_max: u64,

    /// The poll interval this node asks clients for while calm (seconds), in the
    /// `Sinkron-Poll-Interval` header of every pull answer. A client never polls faster than
    /// its own interval, whatever the server says.
    #[arg(
        long,
        env = "SINKRON_POLL_INTERVAL",
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=86_400)
    )]
    pub poll_interval: u32,

    /// The longest poll interval this node asks for when busy (seconds).
    #[arg(
        long,
        env = "SINKRON_POLL_INTERVAL_MAX",
        value_name = "SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u32).range(1..=86_400)
    )]
    pub poll_interval_max: u32,

    /// Sync requests in flight at once on this node at which it is busy: the poll interval
    /// it asks for doubles each busy second, and halves after ten calm ones.
    #[arg(
        long,
        env = "SINKRON_POLL_BUSY_REQUESTS",
        value_name = "N",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub poll_busy_requests: u32,

    /// The push channel: `sse` serves `GET /api/user/me/events`, a stream that pokes a
    /// browser to pull when its user's data changed (on any node); `off` answers it 404.
    #[arg(
        long,
        env = "SINKRON_POKE",
        value_name = "CHANNEL",
        default_value = "off"
    )]
    pub poke: Poke,

    /// Most open poke streams on this node (each holds a connection); past it, 429.
    #[arg(
        long,
        env = "SINKRON_POKE_STREAMS_MAX",
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub poke_streams_max: u32,

    /// Most records holding a value that one user may store; a push that would store more is
    /// refused whole with 413 `quota_exceeded` (deletes always pass).
    #[arg(
        long,
        env = "SINKRON_USER_RECORDS_MAX",
        value_name = "N",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub user_records_max: u64,

    /// Most bytes of values one user may store (64 MiB by default); past it, as with
    /// `--user-records-max`.
    #[arg(
        long,
        env = "SINKRON_USER_BYTES_MAX",
        value_name = "BYTES",
        default_value_t = 64 << 20,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub user_bytes_max: u64,

    /// A file holding the key of the site's backend API (`/api/admin/…`), at least 32
    /// characters (e.g. `openssl rand -hex 32`). Without it those routes answer 404.
    #[arg(long, env = "SINKRON_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// A request taking longer than this many seconds is cut off.
    #[arg(
        long,
        env = "SINKRON_REQUEST_TIMEOUT_SECS",
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub request_timeout_secs: u64,

    /// A connection that sends no complete request head for this many seconds is closed:
    /// the slow start of a request (a half-sent header), and the idle time between two
    /// requests of a kept-alive connection.
    #[arg(
        long,
        env = "SINKRON_IDLE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value_t = 75,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout_secs: u64,

    /// Most client connections open at once; past it new ones wait in the kernel's queue
    /// until one closes. Default: the process's open-file limit less 64 (for the database
    /// and logs), so a flood of idle sockets never leaves the server without file handles.
    #[arg(
        long,
        env = "SINKRON_MAX_CONNECTIONS",
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: Option<u32>,

    /// On SIGTERM or Ctrl-C, how many seconds open requests get to finish before the server
    /// exits anyway (new connections are refused at once).
    #[arg(
        long,
        env = "SINKRON_SHUTDOWN_GRACE_SECS",
        value_name = "SECS",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,

    /// Serve this directory (a built web app, e.g. the demo's `demo/dist`) at `/`, with its
    /// `index.html` for paths it does not have. API paths are never shadowed by it.
    #[arg(long, env = "SINKRON_STATIC_DIR", value_name = "DIR")]
    pub static_dir: Option<std::path::PathBuf>,

    /// How clients sign in, comma separated: `builtin` (Sinkron's own accounts:
    /// register/login), `jwt` (tokens the site issues), or both. Default: `jwt` when a JWT
    /// key is configured, else `builtin`. Without `builtin` the register and login routes
    /// answer 404.
    #[arg(
        long,
        env = "SINKRON_AUTH",
        value_name = "MODES",
        value_delimiter = ','
    )]
    pub auth: Vec<AuthMode>,

    /// JWT mode: a file holding the HS256 secret the site signs its tokens with (at least 32
    /// bytes; a trailing newline is ignored).
    #[arg(
        long,
        env = "SINKRON_JWT_HS256_SECRET_FILE",
        value_name = "PATH",
        conflicts_with_all = ["jwt_public_key_file", "jwks_file", "jwks_url"]
    )]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// JWT mode: a PEM public key of the site (RSA for RS256, EC for ES256/ES384, Ed25519
    /// for EdDSA); the algorithm is pinned by the key's kind.
    #[arg(
        long,
        env = "SINKRON_JWT_PUBLIC_KEY_FILE",
        value_name = "PATH",
        conflicts_with_all = ["jwks_file", "jwks_url"]
    )]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWT mode: a JWKS document of the site's public keys, chosen by each token's `kid`.
    /// Read at start, then again every `--jwks-refresh-secs` and when a token names a `kid`
    /// it does not hold, so a rotated file is picked up without a restart.
    #[arg(
        long,
        env = "SINKRON_JWKS_FILE",
        value_name = "PATH",
        conflicts_with = "jwks_url"
    )]
    pub jwks_file: Option<PathBuf>,

    /// JWT mode: the `http://` or `https://` URL of the site's JWKS document, fetched at start
    /// (the server does not start without it), then again like `--jwks-file`. A failed
    /// fetch after start keeps the keys of the last good one.
    #[arg(long, env = "SINKRON_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,

    /// JWT mode: how often the JWKS (`--jwks-file` or `--jwks-url`) is read again, in seconds
    /// (at most a day).
    #[arg(
        long,
        env = "SINKRON_JWKS_REFRESH_SECS",
        value_name = "SECS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=JWKS_REFRESH_SECS_MAX)
    )]
    pub jwks_refresh_secs: u64,

    /// JWT mode: the `iss` every token must carry.
    #[arg(long, env = "SINKRON_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// JWT mode: the `aud` every token must carry (unchecked when not set).
    #[arg(long, env = "SINKRON_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// JWT mode: also take the site's token from this cookie (HttpOnly, set by the site on
    /// its own domain, so the token stays out of JavaScript). A state-changing request that
    /// signs in with it must come from this server's own origin or a `--cors-origin`, by its
    /// `Origin` / `Sec-Fetch-Site` headers, or it is refused with 403 (CSRF).
    #[arg(long, env = "SINKRON_JWT_COOKIE", value_name = "NAME")]
    pub jwt_cookie: Option<String>,

    /// An origin (`https://host[:port]`) whose pages may call the API: CORS answers for it
    /// (preflight cached an hour; `ETag` and `Retry-After` readable). Repeatable; comma
    /// separated in the environment. Other origins get no CORS headers.
    #[arg(
        long = "cors-origin",
        env = "SINKRON_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// A proxy or load balancer in front of this server, by its address (`10.0.0.7`) or its
    /// network (`10.0.0.0/8`, `fd00::/8`): for a request from it the client's address is
    /// taken from `X-Forwarded-For` (the nearest address that is not a trusted proxy), so
    /// per-client limits count clients, not the proxy. Repeatable; comma separated in the
    /// environment. Without it `X-Forwarded-For` is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "SINKRON_TRUSTED_PROXIES",
        value_name = "IP[/BITS]",
        value_delimiter = ',',
        value_parser = trusted_proxy
    )]
    pub trusted_proxies: Vec<IpNet>,
}

/// A `--trusted-proxy`: an address (the network of it alone) or a network. An address written
/// inside a network's bits (`10.0.0.7/8`) names that network. A network of every address
/// (`/0`) is refused: every client could then name its own address.
pub fn trusted_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net = match text.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip.to_canonical()),
        Err(_) => text.parse::<IpNet>().map_err(|_| {
            format!("`{text}` is neither an address (10.0.0.7) nor a network (10.0.0.0/8)")
        })?,
    };
    if net.prefix_len() == 0 {
        return Err(format!(
            "`{text}` trusts every address: any client could choose its own; name the \
             proxies' addresses or their network"
        ));
    }
    Ok(net.trunc())
}

/// The push channel (`--poke`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Poke {
    /// None: clients poll.
    #[default]
    Off,
    /// Server-Sent Events on `GET /api/user/me/events`.
    Sse,
}

/// A way of signing in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Sinkron's own accounts and tokens.
    Builtin,
    /// JSON Web Tokens issued by the site.
    Jwt,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: "sinkron.db".into(),
            db_pool_size: 16,
            rules: WriteRules::default(),
            page_size: 1000,
            page_bytes: 256 << 10,
            tombstone_ttl_secs: 30 * 24 * 3600,
            session_idle_secs: 30 * 24 * 3600,
            user_requests_per_minute: 600,
            user_concurrency: 4,
            held_answers_bytes_max: 128 << 20,
            poll_interval: 30,
            poll_interval_max: 300,
            poll_busy_requests: 256,
            poke: Poke::Off,
            poke_streams_max: 10_000,
            user_records_max: 100_000,
            admin_token_file: None,
            user_bytes_max: 64 << 20,
            request_timeout_secs: 30,
            idle_timeout_secs: 75,
            max_connections: None,
            shutdown_grace_secs: 10,
            static_dir: None,
            auth: Vec::new(),
            jwt_hs256_secret_file: None,
            jwt_public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 600,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_cookie: None,
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Config {
    /// What one page (of a pull, or of a push's answer) may hold.
    pub fn page_limit(&self) -> PageLimit {
        let size = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        PageLimit {
            changes: size(self.page_size),
            bytes: size(self.page_bytes),
        }
    }

    /// Whether a JWT key is configured.
    pub fn has_jwt_key(&self) -> bool {
        self.jwt_hs256_secret_file.is_some()
            || self.jwt_public_key_file.is_some()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }

    /// Whether `mode` is on: as `--auth` says, else `jwt` with a key and `builtin` without.
    pub fn auth_enabled(&self, mode: AuthMode) -> bool {
        if self.auth.is_empty() {
            return (mode == AuthMode::Jwt) == self.has_jwt_key();
        }
        self.auth.contains(&mode)
    }

    /// The `--cors-origin`s as header values, each checked to be an origin: `http` or
    /// `https`, a host, an optional port, nothing else (no path, no trailing slash).
    pub fn cors_origins(&self) -> Result<Vec<axum::http::HeaderValue>, String> {
        self.cors_origins
            .iter()
            .map(|origin| {
                let bad = || {
                    format!(
                        "--cors-origin {origin:?} is not an origin like https://tv.example or \
                         http://localhost:5173"
                    )
                };
                let uri: axum::http::Uri = origin.parse().map_err(|_| bad())?;
                let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https");
                let (Some(scheme), Some(authority)) = (scheme, uri.authority()) else {
                    return Err(bad());
                };
                if format!("{scheme}://{authority}") != *origin {
                    return Err(bad());
                }
                axum::http::HeaderValue::from_str(origin).map_err(|_| bad())
            })
            .collect()
    }

    pub fn connect_options(&self) -> crate::store::ConnectOptions {
        crate::store::ConnectOptions {
            pool_size: usize::try_from(self.db_pool_size).unwrap_or(usize::MAX),
            serves: true,
        }
    }
}

/// A URL without the credentials it may carry (`scheme://<redacted>` when it has any): a
/// user and password before the host, or a `password=` parameter (libpq's form).
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest))
            if rest.contains('@') || rest.to_ascii_lowercase().contains("password=") =>
        {
            format!("{scheme}://<redacted>")
        }
        _ => url.to_owned(),
    }
}

/// Leaves out the credentials of the database URL (PostgreSQL URLs will carry a password) and
/// of the JWKS URL.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let database = redacted(&self.database);
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database", &database)
            .field("db_pool_size", &self.db_pool_size)
            .field("rules", &self.rules)
            .field("page_size", &self.page_size)
            .field("page_bytes", &self.page_bytes)
            .field("tombstone_ttl_secs", &self.tombstone_ttl_secs)
            .field("session_idle_secs", &self.session_idle_secs)
            .field("user_requests_per_minute", &self.user_requests_per_minute)
            .field("user_concurrency", &self.user_concurrency)
            .field("poll_interval", &self.poll_interval)
            .field("poll_interval_max", &self.poll_interval_max)
            .field("poll_busy_requests", &self.poll_busy_requests)
            .field("poke", &self.poke)
            .field("poke_streams_max", &self.poke_streams_max)
            .field("user_records_max", &self.user_records_max)
            .field("admin_token_file", &self.admin_token_file)
            .field("user_bytes_max", &self.user_bytes_max)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("max_connections", &self.max_connections)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("auth", &self.auth)
            .field("jwt_hs256_secret_file", &self.jwt_hs256_secret_file)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url.as_deref().map(redacted))
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_cookie", &self.jwt_cookie)
            .field("cors_origins", &self.cors_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_default_to_history_when_there_is_one_and_are_checked() {
        let with = |caps: Option<&[&str]>, collections: &[&str]| WriteRules {
            collection_caps: caps.map(|c| c.iter().map(|s| s.to_string()).collect()),
            collections: collections.iter().map(|s| s.to_string()).collect(),
            ..WriteRules::default()
        };
        let history = vec![("history".to_owned(), HISTORY_CAP)];
        assert_eq!(with(None, &["history", "likes"]).caps(), Ok(history));
        assert_eq!(with(None, &["notes"]).caps(), Ok(vec![]));
        let given = with(Some(&["likes=5", "history=0"]), &["history", "likes"]);
        assert_eq!(given.caps(), Ok(vec![("likes".to_owned(), 5)]));
        assert!(with(Some(&["notes=5"]), &["likes"]).caps().is_err());
        assert!(with(Some(&["likes"]), &["likes"]).caps().is_err());
        assert!(with(Some(&["likes=-1"]), &["likes"]).caps().is_err());
    }

    #[test]
    fn collections_are_named_once_each() {
        let with = |collections: &[&str]| WriteRules {
            collections: collections.iter().map(|s| s.to_string()).collect(),
            ..WriteRules::default()
        };
        assert_eq!(with(&["history", "likes"]).check(), Ok(()));
        for (bad, why) in [
            (&[][..], "no collection"),
            (&["a", "", "b"][..], "1 to 64"),
            (&["likes", "likes"][..], "twice"),
        ] {
            let refused = with(bad).check().unwrap_err();
            assert!(refused.contains(why), "{bad:?}: {refused}");
        }
    }

    #[test]
    fn merge_fields_name_known_collections_once_with_their_sticky_fields() {
        let with = |merges: &[&str]| WriteRules {
            merge_fields: merges.iter().map(|s| s.to_string()).collect(),
            ..WriteRules::default()
        };
        assert_eq!(with(&[]).merges(), Ok(vec![]));
        let merge = |collection: &str, sticky: &[&str]| FieldMerge {
            collection: collection.into(),
            policy: Policy {
                sticky: sticky.iter().map(|s| s.to_string()).collect(),
            },
        };
        assert_eq!(
            with(&["history:completed+seen", "settings"]).merges(),
            Ok(vec![
                merge("history", &["completed", "seen"]),
                merge("settings", &[])
            ])
        );
        let unknown = with(&["notes"]).merges().unwrap_err();
        assert!(unknown.contains("not one of --collections"), "{unknown}");
        let twice = with(&["likes", "likes:x"]).merges().unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        let long = with(&[&format!("likes:{}", "f".repeat(65))])
            .merges()
            .unwrap_err();
        assert!(long.contains("too long"), "{long}");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks_never_every_address() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        for (given, taken) in [
            ("10.0.0.7", "10.0.0.7/32"),
            (" 10.0.0.0/8 ", "10.0.0.0/8"),
            // An address inside a network's bits names that network.
            ("10.1.2.3/16", "10.1.0.0/16"),
            ("fd00::1/8", "fd00::/8"),
            ("2001:db8::7", "2001:db8::7/128"),
            // An IPv4 address written as IPv6 is the IPv4 address, as a peer is taken.
            ("::ffff:10.0.0.7", "10.0.0.7/32"),
        ] {
            assert_eq!(trusted_proxy(given), Ok(net(taken)), "{given}");
        }
        for (given, why) in [
            ("", "neither an address"),
            ("proxy.example", "neither an address"),
            ("10.0.0.0/33", "neither an address"),
            ("10.0.0.0/", "neither an address"),
            ("0.0.0.0/0", "trusts every address"),
            ("::/0", "trusts every address"),
        ] {
            let refused = trusted_proxy(given).unwrap_err();
            assert!(refused.contains(why), "{given}: {refused}");
        }
    }

    #[test]
    fn logged_urls_carry_no_credentials() {
        let config = Config {
            database: "postgres://sinkron:s3cret@db/sinkron".into(),
            jwks_url: Some("https://id.example/keys?password=hunter2".into()),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        for url in [
            "postgres://db/sinkron?user=sinkron&password=s3cret",
            "postgres://db/sinkron?PASSWORD=s3cret",
        ] {
            assert_eq!(redacted(url), "postgres://<redacted>");
        }
        assert_eq!(
            redacted("sqlite://data/sinkron.db"),
            "sqlite://data/sinkron.db"
        );
        assert_eq!(redacted("sinkron.db"), "sinkron.db");
    }
}
