//! `sinkron-bench`: the server benchmark. Run it through `cargo xtask bench`, which builds
//! it and the `sinkron` binary in release mode next to each other.
//!
//! In one run, on one machine, with one load generator ([`load`]), it measures:
//!
//! * the baseline: an axum hello-world route in a process of its own (`sinkron-bench hello`),
//!   served by the same axum/hyper/tokio stack as `sinkron`;
//! * for SQLite and for PostgreSQL, the real `sinkron serve` on loopback with 10,000 users
//!   signed in (created directly in the database, not through argon2): the no-change poll
//!   (`304`) with Sinkron's own tokens and with a site's JSON Web Tokens (JWT mode, HS256,
//!   10,000 more users), pushes of 1, 10 and 100 mutations, pulls of a 100- and a
//!   1,000-change delta, and the server's resident memory.
//!
//! The baseline and the polls take turns (three rounds, best of each), so that outside work
//! on a shared machine hurts one round of each rather than one column. It prints a Markdown
//! table for `BENCHMARKS.md`. Every load is bounded in time and goes to
//! 127.0.0.1 only. It must not be run by the test suite: it needs a quiet machine.

mod load;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, IF_NONE_MATCH};
use hyper::{Method, Request, StatusCode};
use load::{MakeRequest, Outcome};
use sha2::{Digest, Sha256};

const USERS: usize = 10_000;
/// Keep-alive connections of the throughput measurements, unless `--connections` says.
const CONNECTIONS: usize = 32;
/// Connections of the pull-latency measurements.
const PULL_CONNECTIONS: usize = 4;
const WARMUP: Duration = Duration::from_secs(1);
/// Turns of the baseline and the polls; each keeps its best.
const POLL_ROUNDS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

struct Settings {
    secs: Duration,
    backends: Vec<Backend>,
    /// The servers' `SINKRON_LOG`: `warn` (no line per request) unless measuring the log.
    server_log: String,
    /// Keep-alive connections of the polls, the baseline and the pushes. A closed loop: with
    /// few, a request that waits (a PostgreSQL node's confirmation round trip) idles the CPU.
    connections: usize,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hello") {
        return hello();
    }
    let mut settings = Settings {
        secs: Duration::from_secs(5),
        backends: vec![Backend::Sqlite, Backend::Postgres],
        server_log: "warn".into(),
        connections: CONNECTIONS,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--secs", Some(n)) => match n.parse::<u64>() {
                Ok(n) if (1..=60).contains(&n) => settings.secs = Duration::from_secs(n),
                _ => return usage(&format!("--secs takes 1 to 60, not {n:?}")),
            },
            ("--backends", Some(list)) => {
                settings.backends = Vec::new();
                for b in list.split(',') {
                    match b {
                        "sqlite" => settings.backends.push(Backend::Sqlite),
                        "postgres" => settings.backends.push(Backend::Postgres),
                        other => return usage(&format!("unknown backend {other:?}")),
                    }
                }
            }
            ("--server-log", Some(level)) => settings.server_log = level.clone(),
            ("--connections", Some(n)) => match n.parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => settings.connections = n,
                _ => return usage(&format!("--connections takes 1 to 1024, not {n:?}")),
            },
            (other, _) => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "error: {problem}\nusage: sinkron-bench [--secs N] [--backends sqlite,postgres] [--connections N] [--server-log LEVEL]\n       sinkron-bench hello   (the baseline server)"
    );
    ExitCode::from(2)
}

/// The baseline: the smallest axum service, on the same runtime setup as `sinkron serve`.
fn hello() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return ExitCode::FAILURE,
    };
    runtime.block_on(async {
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            return ExitCode::FAILURE;
        };
        let Ok(addr) = listener.local_addr() else {
            return ExitCode::FAILURE;
        };
        println!("listening on http://{addr}");
        let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
        match axum::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }
    })
}

/// A child server process, stopped (SIGTERM, then waited for) on drop.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    fn spawn(mut command: Command) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?} from {command:?}"))?;
        Ok(Self { child, addr })
    }

    /// Resident memory in MiB, from `/proc`.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // std cannot send SIGTERM; the `kill` command can, and a server stops cleanly on it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (cargo xtask bench does)",
            path.display()
        ))
    }
}

fn admin_url() -> String {
    std::env::var("SINKRON_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// tokio-postgres keeps the useful part of an error in its source.
fn pg_reason(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", pg_reason(&e)))?;
    tokio::spawn(conn);
    Ok(client)
}

/// A throwaway PostgreSQL database for one run.
struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> Result<Self, String> {
        let name = format!("sinkron_bench_{}", std::process::id());
        let admin = pg_connect(&admin_url()).await?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{sql}: {}", pg_reason(&e)))?;
        }
        let base = admin_url();
        let (head, _) = base
            .rsplit_once('/')
            .ok_or("admin URL without a database")?;
        Ok(Self {
            url: format!("{head}/{name}"),
            name,
        })
    }

    async fn drop_now(self) {
        if let Ok(admin) = pg_connect(&admin_url()).await {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

/// The bearer token of user `id`: 64 lowercase hex digits, as the server issues them.
fn token_of(id: i64) -> String {
    format!("{id:064x}")
}

fn hash_of(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates `USERS` accounts with one token each, straight into SQLite; returns the tokens.
fn sqlite_users(path: &std::path::Path) -> Result<Vec<String>, String> {
    let mut conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let mut tokens = Vec::with_capacity(USERS);
    for i in 0..USERS {
        tx.execute(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?1, 'x', 0)",
            [format!("bench{i}")],
        )
        .map_err(|e| e.to_string())?;
        let id = tx.last_insert_rowid();
        let token = token_of(id);
        tx.execute(
            "INSERT INTO tokens (token_hash, user_id, created_at, last_used_at)
             VALUES (?1, ?2, ?3, ?3)",
            rusqlite::params![hash_of(&token), id, now_ms()],
        )
        .map_err(|e| e.to_string())?;
        tokens.push(token);
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(tokens)
}

/// The same in PostgreSQL, in two statements.
async fn postgres_users(url: &str) -> Result<Vec<String>, String> {
    let client = pg_connect(url).await?;
    let n = i64::try_from(USERS).map_err(|e| e.to_string())?;
    let ids: Vec<i64> = client
        .query(
            "INSERT INTO users (username, password_hash, created_at)
             SELECT 'bench' || g, 'x', 0 FROM generate_series(1, $1::int8) g RETURNING id",
            &[&n],
        )
        .await
        .map_err(|e| pg_reason(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tokens: Vec<String> = ids.iter().map(|&id| token_of(id)).collect();
    let hashes: Vec<Vec<u8>> = tokens.iter().map(|t| hash_of(t)).collect();
    client
        .execute(
            "INSERT INTO tokens (token_hash, user_id, created_at, last_used_at)
             SELECT h, id, $3, $3 FROM unnest($1::bytea[], $2::int8[]) AS t(h, id)",
            &[&hashes, &ids, &now_ms()],
        )
        .await
        .map_err(|e| e.to_string())?;
    // Fresh tables: let the planner know their size, as autovacuum soon would.
    client
        .batch_execute("ANALYZE users; ANALYZE tokens")
        .await
        .map_err(|e| e.to_string())?;
    Ok(tokens)
}

/// The site's users of JWT mode (`site-0` …), straight into SQLite.
fn sqlite_site_users(path: &std::path::Path) -> Result<(), String> {
    let mut conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    for i in 0..USERS {
        tx.execute(
            "INSERT INTO users (username, password_hash, created_at, subject)
             VALUES ('jwt:' || ?1, '', 0, ?1)",
            [format!("site-{i}")],
        )
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// The same in PostgreSQL.
async fn postgres_site_users(url: &str) -> Result<(), String> {
    let client = pg_connect(url).await?;
    let n = i64::try_from(USERS).map_err(|e| e.to_string())?;
    client
        .execute(
            "INSERT INTO users (username, password_hash, created_at, subject)
             SELECT 'jwt:site-' || g, '', 0, 'site-' || g
             FROM generate_series(0, $1::int8 - 1) g",
            &[&n],
        )
        .await
        .map_err(|e| pg_reason(&e))?;
    client
        .batch_execute("ANALYZE users")
        .await
        .map_err(|e| e.to_string())
}

/// HS256 tokens of the site's users, valid for a day, signed with `secret`.
fn site_tokens(secret: &[u8]) -> Result<Vec<String>, String> {
    use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
    let key = EncodingKey::from_secret(secret).map_err(|e| e.to_string())?;
    let exp = get_current_timestamp() + 24 * 3600;
    (0..USERS)
        .map(|i| {
            let claims = serde_json::json!({"sub": format!("site-{i}"), "exp": exp});
            encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())
        })
        .collect()
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::try_from(format!("Bearer {token}")).unwrap_or(HeaderValue::from_static(""))
}

/// What one backend measured.
struct Results {
    poll: Outcome,
    /// The same poll with the site's JWTs.
    site_poll: Outcome,
    push: Pushes,
    pull: Pulls,
    rss_mib: f64,
}

/// By batch size.
type Pushes = Vec<(usize, Outcome)>;
/// By delta size.
type Pulls = Vec<(usize, Outcome)>;

/// One backend under test: a running `sinkron serve` with its users.
struct Deployment {
    backend: Backend,
    server: Process,
    auth: Arc<Vec<HeaderValue>>,
    /// `Authorization` headers with the site's JWTs, one per site user.
    site_auth: Arc<Vec<HeaderValue>>,
    pg: Option<PgDatabase>,
    dir: PathBuf,
}

impl Deployment {
    async fn start(backend: Backend, sinkron: &std::path::Path, log: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "sinkron-bench-{}-{}",
            std::process::id(),
            backend.name()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let pg = match backend {
            Backend::Postgres => Some(PgDatabase::create().await?),
            Backend::Sqlite => None,
        };
        let db_path = dir.join("bench.db");
        let url = match &pg {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", db_path.display()),
        };
        // Both kinds of sign-in: Sinkron's accounts, and a site's HS256 tokens.
        let secret = b"sinkron-bench: a shared secret of the site, 48 bytes".to_vec();
        let secret_file = dir.join("jwt.secret");
        std::fs::write(&secret_file, &secret).map_err(|e| e.to_string())?;
        let secret_arg = secret_file.display().to_string();
        let mut command = Command::new(sinkron);
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--database", &url])
            .args([
                "--auth",
                "builtin,jwt",
                "--jwt-hs256-secret-file",
                &secret_arg,
                // Each push connection is one user pushing as fast as it can: the per-user
                // limits are set out of reach, so they are checked (and cost what they
                // cost) without refusing anything.
                "--user-requests-per-minute",
                "1000000000",
                "--user-concurrency",
                "1000000",
            ])
            .env("SINKRON_LOG", log);
        let server = Process::spawn(command)?;
        eprintln!("    {}: creating {USERS} users", backend.name());
        let tokens = match backend {
            Backend::Sqlite => sqlite_users(&db_path)?,
            Backend::Postgres => postgres_users(&url).await?,
        };
        let auth = Arc::new(tokens.iter().map(|t| bearer(t)).collect());
        match backend {
            Backend::Sqlite => sqlite_site_users(&db_path)?,
            Backend::Postgres => postgres_site_users(&url).await?,
        }
        let site_auth = Arc::new(site_tokens(&secret)?.iter().map(|t| bearer(t)).collect());
        Ok(Self {
            backend,
            server,
            auth,
            site_auth,
            pg,
            dir,
        })
    }

    async fn finish(self) {
        drop(self.server);
        if let Some(db) = self.pg {
            db.drop_now().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The idle client's poll: every user in turn, each up to date at version 0.
async fn poll(
    addr: SocketAddr,
    auth: Arc<Vec<HeaderValue>>,
    secs: Duration,
    connections: usize,
) -> Result<Outcome, String> {
    let host = HeaderValue::try_from(addr.to_string()).map_err(|e| e.to_string())?;
    let make: Arc<MakeRequest> = Arc::new(move |conn, seq| {
        let user = (conn + seq as usize * connections) % USERS;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = hyper::Uri::from_static("/api/user/me?lastSync=0");
        let h = req.headers_mut();
        h.insert(hyper::header::HOST, host.clone());
        h.insert(AUTHORIZATION, auth[user].clone());
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"0\""));
        req
    });
    load::run(
        addr,
        connections,
        WARMUP,
        secs,
        StatusCode::NOT_MODIFIED,
        make,
    )
    .await
}

/// The baseline's one route, loaded like a poll.
async fn hello_load(
    addr: SocketAddr,
    secs: Duration,
    connections: usize,
) -> Result<Outcome, String> {
    let host = HeaderValue::try_from(addr.to_string()).map_err(|e| e.to_string())?;
    let make: Arc<MakeRequest> = Arc::new(move |_, _| {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = hyper::Uri::from_static("/hello");
        req.headers_mut().insert(hyper::header::HOST, host.clone());
        req
    });
    load::run(addr, connections, WARMUP, secs, StatusCode::OK, make).await
}

/// Keeps the better of two measurements of the same thing, adding up their errors.
fn best(kept: Option<Outcome>, new: Outcome) -> Outcome {
    match kept {
        Some(old) if old.per_sec() >= new.per_sec() => Outcome {
            errors: old.errors + new.errors,
            ..old
        },
        Some(old) => Outcome {
            errors: old.errors + new.errors,
            ..new
        },
        None => new,
    }
}

/// Pushes and pulls against one deployment, after the polls.
async fn push_and_pull(
    backend: Backend,
    settings: &Settings,
    server: &Process,
    auth: Arc<Vec<HeaderValue>>,
) -> Result<(Pushes, Pulls), String> {
    let addr = server.addr;
    let host = HeaderValue::try_from(addr.to_string()).map_err(|e| e.to_string())?;

    // 2. Pushes: each connection writes as its own user and client, new keys every time,
    //    so every mutation wins and takes a version.
    let mut push = Vec::new();
    for size in [1usize, 10, 100] {
        eprintln!("    {}: push, batches of {size}", backend.name());
        let (auth, host) = (auth.clone(), host.clone());
        let make: Arc<MakeRequest> = Arc::new(move |conn, seq| {
            let first = seq * size as u64;
            let mutations: Vec<serde_json::Value> = (0..size as u64)
                .map(|i| {
                    serde_json::json!({
                        "id": first + i + 1,
                        "collection": "history",
                        "key": format!("ep-{size}-{}", first + i),
                        "value": {"position": i, "showId": "s1"},
                        "updatedAt": 1_700_000_000_000u64 + first + i,
                    })
                })
                .collect();
            let body = serde_json::json!({
                "clientId": format!("bench-{size}-{conn}"),
                "mutations": mutations,
            });
            let mut req = Request::new(Full::new(Bytes::from(body.to_string())));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = hyper::Uri::from_static("/api/user/me/changes");
            let h = req.headers_mut();
            h.insert(hyper::header::HOST, host.clone());
            h.insert(AUTHORIZATION, auth[conn % USERS].clone());
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            req
        });
        let out = load::run(
            addr,
            settings.connections,
            WARMUP,
            settings.secs,
            StatusCode::OK,
            make,
        )
        .await?;
        push.push((size, out));
    }

    // 3. Pulls of a delta: one user (untouched so far) gets 1,000 changes, then clients
    //    pull from 100 and from 1,000 changes behind.
    let delta_user = USERS - 1;
    for chunk in 0..2u64 {
        let mutations: Vec<serde_json::Value> = (0..500u64)
            .map(|i| {
                let n = chunk * 500 + i;
                serde_json::json!({"id": n + 1, "collection": "history", "key": format!("ep-{n}"),
                    "value": {"position": n, "showId": "s1"}, "updatedAt": 1_700_000_000_000u64 + n})
            })
            .collect();
        let body = serde_json::json!({"clientId": "delta", "mutations": mutations}).to_string();
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = hyper::Uri::from_static("/api/user/me/changes");
        req.headers_mut().insert(hyper::header::HOST, host.clone());
        req.headers_mut()
            .insert(AUTHORIZATION, auth[delta_user].clone());
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let (status, body) = load::send_one(addr, req).await?;
        if status != StatusCode::OK {
            return Err(format!(
                "seeding the pull delta: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    let mut pull = Vec::new();
    for delta in [100usize, 1000] {
        eprintln!("    {}: pull of {delta} changes", backend.name());
        let uri = hyper::Uri::try_from(format!("/api/user/me?lastSync={}", 1000 - delta))
            .map_err(|e| e.to_string())?;
        let (auth, host) = (auth.clone(), host.clone());
        let make: Arc<MakeRequest> = Arc::new(move |_, _| {
            let mut req = Request::new(Full::new(Bytes::new()));
            *req.uri_mut() = uri.clone();
            req.headers_mut().insert(hyper::header::HOST, host.clone());
            req.headers_mut()
                .insert(AUTHORIZATION, auth[delta_user].clone());
            req
        });
        let out = load::run(
            addr,
            PULL_CONNECTIONS,
            WARMUP,
            settings.secs,
            StatusCode::OK,
            make,
        )
        .await?;
        pull.push((delta, out));
    }
    Ok((push, pull))
}

async fn bench(settings: Settings) -> Result<(), String> {
    let sinkron = sibling("sinkron")?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = Command::new(&me);
    command.arg("hello");
    let hello_server = Process::spawn(command)?;
    let mut deployments = Vec::new();
    for &backend in &settings.backends {
        eprintln!("==> {}: starting", backend.name());
        deployments.push(Deployment::start(backend, &sinkron, &settings.server_log).await?);
    }

    // Polls and the baseline take turns, and each keeps its best round: on a shared machine
    // a burst of outside work then hurts a round of each, not a whole column.
    let mut hello: Option<Outcome> = None;
    let mut polls: Vec<Option<Outcome>> = deployments.iter().map(|_| None).collect();
    let mut site_polls: Vec<Option<Outcome>> = deployments.iter().map(|_| None).collect();
    for round in 1..=POLL_ROUNDS {
        eprintln!(
            "==> round {round} of {POLL_ROUNDS}: hello-world, then each backend's no-change poll"
        );
        hello = Some(best(
            hello,
            hello_load(hello_server.addr, settings.secs, settings.connections).await?,
        ));
        for ((d, kept), site_kept) in deployments
            .iter()
            .zip(polls.iter_mut())
            .zip(site_polls.iter_mut())
        {
            let out = poll(
                d.server.addr,
                d.auth.clone(),
                settings.secs,
                settings.connections,
            )
            .await?;
            *kept = Some(best(kept.take(), out));
            let out = poll(
                d.server.addr,
                d.site_auth.clone(),
                settings.secs,
                settings.connections,
            )
            .await?;
            *site_kept = Some(best(site_kept.take(), out));
        }
    }
    drop(hello_server);
    let hello = hello.ok_or("no baseline measured")?;

    let mut results = Vec::new();
    for ((d, poll), site_poll) in deployments.into_iter().zip(polls).zip(site_polls) {
        let rss_mib = d.server.rss_mib();
        eprintln!("==> {}: pushes and pulls", d.backend.name());
        let measured = push_and_pull(d.backend, &settings, &d.server, d.auth.clone()).await;
        let backend = d.backend;
        d.finish().await;
        let (push, pull) = measured?;
        results.push((
            backend,
            Results {
                poll: poll.ok_or("no poll measured")?,
                site_poll: site_poll.ok_or("no poll measured")?,
                push,
                pull,
                rss_mib,
            },
        ));
    }
    print_table(&settings, &hello, &results);
    let errors: u64 = hello.errors
        + results
            .iter()
            .map(|(_, r)| {
                r.poll.errors
                    + r.site_poll.errors
                    + r.push.iter().map(|(_, o)| o.errors).sum::<u64>()
                    + r.pull.iter().map(|(_, o)| o.errors).sum::<u64>()
            })
            .sum::<u64>();
    if errors > 0 {
        return Err(format!(
            "{errors} requests failed or got an unexpected status"
        ));
    }
    Ok(())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    format!("{cores} cores ({model}), commit {commit}")
}

fn print_table(settings: &Settings, hello: &Outcome, results: &[(Backend, Results)]) {
    let ms = |o: &Outcome| format!("{:.2} / {:.2}", o.percentile_ms(50), o.percentile_ms(99));
    println!(
        "\n{} s per measurement after 1 s of warm-up (polls and hello-world: the best of \
         {POLL_ROUNDS} turns taken in alternation); {} keep-alive connections \
         ({PULL_CONNECTIONS} for pulls); {USERS} users signed in; {}.\n",
        settings.secs.as_secs(),
        settings.connections,
        machine()
    );
    let mut header = "| measurement | hello-world |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for (b, _) in results {
        header.push_str(&format!(" {} |", b.name()));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    let row = |name: &str, base: String, cell: &dyn Fn(&Results) -> String| {
        let mut line = format!("| {name} | {base} |");
        for (_, r) in results {
            line.push_str(&format!(" {} |", cell(r)));
        }
        println!("{line}");
    };
    row(
        "no-change poll (304), requests/s",
        format!("{:.0}", hello.per_sec()),
        &|r| {
            format!(
                "{:.0} ({:.2} × hello)",
                r.poll.per_sec(),
                r.poll.per_sec() / hello.per_sec()
            )
        },
    );
    row("poll latency p50 / p99, ms", ms(hello), &|r| ms(&r.poll));
    row(
        "the same poll with a site's JWT (HS256), requests/s",
        "–".into(),
        &|r| {
            format!(
                "{:.0} ({:.2} × hello, {:.2} × built-in token)",
                r.site_poll.per_sec(),
                r.site_poll.per_sec() / hello.per_sec(),
                r.site_poll.per_sec() / r.poll.per_sec()
            )
        },
    );
    row("JWT poll latency p50 / p99, ms", "–".into(), &|r| {
        ms(&r.site_poll)
    });
    for i in 0..3 {
        let size = [1, 10, 100][i];
        row(
            &format!("push, batch of {size}: mutations/s"),
            "–".into(),
            &|r| format!("{:.0}", r.push[i].1.per_sec() * r.push[i].0 as f64),
        );
        row(
            &format!("push, batch of {size}: p50 / p99, ms"),
            "–".into(),
            &|r| ms(&r.push[i].1),
        );
    }
    for i in 0..2 {
        let delta = [100, 1000][i];
        row(
            &format!("pull of {delta} changes: p50 / p99, ms"),
            "–".into(),
            &|r| ms(&r.pull[i].1),
        );
    }
    row(
        "server RSS after polling all users, MiB",
        "–".into(),
        &|r| format!("{:.1}", r.rss_mib),
    );
}

/// Now, in milliseconds since the Unix epoch: when the benchmark's sessions were last used.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
