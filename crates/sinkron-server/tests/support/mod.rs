//! Runs the real `sinkron` binary for integration tests and talks to it over HTTP.
//!
//! A [`Server`] owns a child process bound to `127.0.0.1:0` on a [`Data`]: a SQLite file in a
//! temporary directory, or a freshly created PostgreSQL database that is dropped when the
//! last handle goes ([`Backend`]). It is ready once it prints its `listening on` line.
//! Stopping (SIGTERM) or killing (SIGKILL) it hands back the [`Data`] so a test can start
//! again on the same data, and any number of servers may share PostgreSQL data (nodes).
//! [`on_every_backend!`] runs a test once per backend. Nothing here sleeps: every wait is on
//! the process or its output, bounded by a timeout.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The longest a start or a stop may take before the test fails.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

pub const BIN: &str = env!("CARGO_BIN_EXE_sinkron");

/// Where a test server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each listed `async fn NAME(backend: Backend)` once per backend, as the tests
/// `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The PostgreSQL the tests use: `SINKRON_TEST_POSTGRES_URL`, else the local server with
/// trust authentication (`cargo xtask test` starts it when it is not running).
pub fn postgres_admin_url() -> String {
    std::env::var("SINKRON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs `sql` on the admin database, from a thread of its own (callers may be inside a
/// runtime, which cannot block on another).
fn postgres_admin(sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) =
                tokio_postgres::connect(&postgres_admin_url(), tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
            let task = tokio::spawn(conn);
            let result = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = task.await;
            result
        })
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_owned())?
}

/// The site's HS256 secret of the JWT tests (`--jwt-hs256-secret-file`).
pub fn hs256_secret_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/hs256.secret")
}

/// A token of the site for `sub`, valid for ten minutes, signed with that secret.
pub fn site_token(sub: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let secret = std::fs::read_to_string(hs256_secret_path()).expect("secret");
    let now = jsonwebtoken::get_current_timestamp();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now + 600}),
        &EncodingKey::from_secret(secret.trim_end().as_bytes()).expect("key"),
    )
    .expect("a site token")
}

/// Flags that lift the per-user limits, for tests that load one user on purpose (storage
/// under concurrency), not the limits.
pub const UNLIMITED: [&str; 4] = [
    "--user-requests-per-minute",
    "0",
    "--user-concurrency",
    "10000",
];

/// A uniquely named PostgreSQL database, dropped (with any connection left) on drop.
pub struct PostgresDatabase {
    name: String,
    pub url: String,
}

impl PostgresDatabase {
    pub fn create() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "sinkron_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        postgres_admin(format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "cannot create a test database on {}: {e}",
                postgres_admin_url()
            )
        });
        let admin = postgres_admin_url();
        let url = match admin.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => panic!("SINKRON_TEST_POSTGRES_URL names no database: {admin}"),
        };
        Self { name, url }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let _ = postgres_admin(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Storage that outlives server processes: a SQLite file or a PostgreSQL database.
#[derive(Clone)]
pub struct Data {
    dir: Arc<tempfile::TempDir>,
    postgres: Option<Arc<PostgresDatabase>>,
}

impl Data {
    pub fn new(backend: Backend) -> Self {
        Self {
            dir: Arc::new(tempfile::tempdir().expect("a temporary directory")),
            postgres: (backend == Backend::Postgres).then(|| Arc::new(PostgresDatabase::create())),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.postgres {
            Some(_) => Backend::Postgres,
            None => Backend::Sqlite,
        }
    }

    /// The `--database` URL.
    pub fn url(&self) -> String {
        match &self.postgres {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", self.db_path().display()),
        }
    }

    /// The PostgreSQL database's name.
    pub fn postgres_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|db| db.name.as_str())
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("sinkron.db")
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Starts `sinkron serve` on this data with `args`. Unless they say otherwise, the server
    /// asks clients to poll every second (`--poll-interval 1`), so that the test devices'
    /// short intervals stay short.
    pub async fn start(&self, args: &[&str]) -> Server {
        let url = self.url();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--database", &url]);
        if !args.contains(&"--poll-interval") {
            command.args(["--poll-interval", "1"]);
        }
        command.args(args);
        self.spawn(command).await
    }

    /// Starts with the address and database given only through the environment.
    pub async fn start_by_env(&self, env: &[(&str, &str)]) -> Server {
        let url = self.url();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env("SINKRON_ADDR", "127.0.0.1:0")
            .env("SINKRON_DATABASE_URL", &url)
            .envs(env.iter().copied());
        self.spawn(command).await
    }

    async fn spawn(&self, mut command: Command) -> Server {
        let mut child = command
            .env("SINKRON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the sinkron binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(PROCESS_TIMEOUT, lines.next_line())
            .await
            .expect("the server prints its address in time")
            .expect("stdout is readable")
            .expect("the server prints a line before exiting");
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            child,
            base,
            data: self.clone(),
            http: reqwest::Client::new(),
        }
    }
}

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub data: Data,
    pub http: reqwest::Client,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text))
    }

    /// The error code of a `{"error":{"code","message"}}` body, checking its shape.
    pub fn error_code(&self) -> String {
        let body = self.json();
        assert!(
            body["error"]["message"].is_string(),
            "error body without message: {body}"
        );
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "error without JSON content type"
        );
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error body without code: {body}"))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct Account {
    pub token: String,
    pub id: String,
    pub username: String,
}

impl Server {
    pub async fn start(backend: Backend) -> Self {
        Data::new(backend).start(&[]).await
    }

    pub async fn start_with(backend: Backend, args: &[&str]) -> Self {
        Data::new(backend).start(args).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server process's id (for `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// Stops with SIGTERM and waits for a clean exit.
    pub async fn stop(mut self) -> Data {
        let pid = self.child.id().expect("the server is running");
        // SAFETY: plain FFI call with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM sent");
        let status = self.wait().await;
        assert!(
            status.success(),
            "server exits cleanly on SIGTERM: {status}"
        );
        self.data
    }

    /// Kills with SIGKILL: no shutdown code runs.
    pub async fn kill(mut self) -> Data {
        self.child.start_kill().expect("SIGKILL sent");
        self.wait().await;
        self.data
    }

    /// Sends SIGTERM; the exit status and how long the server took to exit.
    pub async fn terminate(mut self) -> (ExitStatus, std::time::Duration) {
        let started = std::time::Instant::now();
        // SAFETY: plain FFI call with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM sent");
        let status = self.wait().await;
        (status, started.elapsed())
    }

    async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .expect("the server exits in time")
            .expect("wait on the server")
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        reply(req).await
    }

    pub async fn register(&self, username: &str) -> Account {
        let r = self
            .send(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": username, "password": "correct horse"}).to_string()),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "register {username}: {}",
            r.text
        );
        let body = r.json();
        Account {
            token: body["token"].as_str().expect("token").to_owned(),
            id: body["user"]["id"].as_str().expect("user id").to_owned(),
            username: body["user"]["username"]
                .as_str()
                .expect("username")
                .to_owned(),
        }
    }

    /// `GET /api/user/me[?lastSync=cursor]`.
    pub async fn pull(&self, token: &str, cursor: Option<&str>) -> Reply {
        let path = match cursor {
            Some(c) => format!("/api/user/me?lastSync={c}"),
            None => "/api/user/me".to_owned(),
        };
        self.send(Method::GET, &path, Some(token), None).await
    }

    /// A pull that must succeed; returns its body.
    pub async fn pull_ok(&self, token: &str, cursor: Option<&str>) -> Value {
        let r = self.pull(token, cursor).await;
        assert_eq!(r.status, StatusCode::OK, "pull: {}", r.text);
        r.json()
    }

    /// The whole live state as `(collection, key) -> change`, following pages.
    pub async fn state(&self, token: &str) -> std::collections::BTreeMap<(String, String), Value> {
        let mut state = std::collections::BTreeMap::new();
        let mut body = self.pull_ok(token, None).await;
        loop {
            for c in body["changes"].as_array().expect("changes") {
                let k = (
                    c["collection"].as_str().expect("collection").to_owned(),
                    c["key"].as_str().expect("key").to_owned(),
                );
                if c["value"].is_null() {
                    state.remove(&k);
                } else {
                    state.insert(k, c.clone());
                }
            }
            if body["more"] != json!(true) {
                return state;
            }
            let cursor = body["cursor"].as_str().expect("cursor").to_owned();
            body = self.pull_ok(token, Some(&cursor)).await;
        }
    }

    /// `POST /api/user/me/changes` with a JSON body.
    pub async fn push(&self, token: &str, body: &Value) -> Reply {
        self.send(
            Method::POST,
            "/api/user/me/changes",
            Some(token),
            Some(body.to_string()),
        )
        .await
    }

    /// A push that must succeed; returns its body.
    pub async fn push_ok(&self, token: &str, body: &Value) -> Value {
        let r = self.push(token, body).await;
        assert_eq!(r.status, StatusCode::OK, "push: {}", r.text);
        r.json()
    }
}

pub async fn reply(req: reqwest::RequestBuilder) -> Reply {
    try_reply(req).await.expect("the server answers")
}

/// A response, or the transport error that kept it from arriving.
pub async fn try_reply(req: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
    let res = req.send().await?;
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await?;
    Ok(Reply {
        status,
        headers,
        text,
    })
}

/// A mutation as JSON.
pub fn mutation(id: u64, collection: &str, key: &str, value: Value, updated_at: u64) -> Value {
    json!({"id": id, "collection": collection, "key": key, "value": value, "updatedAt": updated_at})
}

/// A push body.
pub fn batch(client_id: &str, mutations: Vec<Value>, last_sync: Option<&str>) -> Value {
    let mut body = json!({"clientId": client_id, "mutations": mutations});
    if let Some(c) = last_sync {
        body["lastSync"] = json!(c);
    }
    body
}

/// Runs the binary to completion with the given arguments.
pub async fn run(args: &[&str]) -> std::process::Output {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("SINKRON_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the sinkron binary starts");
    tokio::time::timeout(PROCESS_TIMEOUT, child.wait_with_output())
        .await
        .expect("the binary exits in time")
        .expect("its output is readable")
}

/// A pull of `token`'s whole state from the server at `base` on a socket that reads nothing
/// past the status line, its receive buffer small: the answer waits on the server's side.
/// Returns once it has begun.
pub async fn unread_pull(base: &str, token: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address");
    let request =
        format!("GET /api/user/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("the request");
    let mut status = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut status)
        .await
        .expect("the answer's status line");
    assert_eq!(&status, b"HTTP/1.1 200");
    stream
}
