//! Sinkron's native client: one "device" running the core [`Engine`] over real HTTP.
//!
//! A [`Device`] owns a tokio task that owns the engine (one owner, no locks around it). The
//! task feeds the engine inputs — app calls, HTTP replies, timer deadlines — and executes the
//! commands it drains: requests go out with reqwest, leadership is granted at once (a native
//! device is its own only tab), broadcasts have no one to reach, and persistence goes to a
//! [`Storage`] that outlives the device: a device started again on it restores the session,
//! the records, the cursor and the outbox with its numbering, as a reloaded tab does. After
//! every step the task publishes a [`Snapshot`] of the view on a watch channel,
//! which is what [`Device::wait_for`] waits on: tests wait for a state, never for a time.
//!
//! This crate decides nothing about syncing; every policy is the core's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{AUTHORIZATION, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::StatusCode;
use sinkron_core::adopt::{kept_by_wipe, parked};
use sinkron_core::engine::{Failure, Page, Reply, Request, Status, WriteError};
use sinkron_core::protocol::{
    Credentials, ErrorBody, PullResponse, PushRequest, PushResponse, Session, DEFAULT_COLLECTIONS,
    POLL_INTERVAL_HEADER,
};
use sinkron_core::{Change, Command, Config, Engine, Mutation, Persist, Record};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// How a device is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// The engine's policies (interval, backoff, ...).
    pub config: Config,
    /// Seeds the engine's client id and jitter; must differ between devices.
    pub seed: u64,
    /// Added to the real clock: a device whose clock is wrong.
    pub clock_offset_ms: i64,
    /// The collections the snapshot shows.
    pub collections: Vec<String>,
    /// Where the device keeps what must survive a restart; a new, empty one by default.
    pub storage: Storage,
}

/// A device's durable storage (kept in memory here; an app would back it with a file): what
/// the engine persists, and the session. Cloning shares it, so a test can stop a device and
/// start another on the same storage, like an app that is killed and opened again.
#[derive(Clone, Debug, Default)]
pub struct Storage(Arc<Mutex<Stored>>);

/// What a [`Storage`] holds.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub session: Option<Session>,
    /// Signed-out sessions the server has not ended yet (`Persist::EndingSessions`).
    pub ending: Vec<String>,
    /// Scopes whose data from before Sinkron was adopted (`Persist::Adopted`).
    pub adopted: Vec<Option<String>>,
    /// Per scope (the user id, or `None` for the guest).
    pub scopes: HashMap<Option<String>, StoredScope>,
}

#[derive(Clone, Debug, Default)]
pub struct StoredScope {
    pub records: BTreeMap<(String, String), Change>,
    pub cursor: Option<String>,
    /// The outbox of each client id, with its numbering (the id its next write takes).
    pub outboxes: BTreeMap<String, (u64, Vec<Mutation>)>,
    /// Records were evicted since the last whole state (`Persist::Evict`).
    pub partial: bool,
}

impl Storage {
    /// The stored state, to read or change (a test can damage it on purpose).
    pub fn lock(&self) -> MutexGuard<'_, Stored> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Carries out a `Command::Persist`.
    fn persist(&self, p: Persist) {
        let mut stored = self.lock();
        match p {
            Persist::EndingSessions { tokens } => stored.ending = tokens,
            Persist::Adopted { scopes } => stored.adopted = scopes,
            Persist::Record { scope, change } => {
                let key = (change.collection.clone(), change.key.clone());
                stored
                    .scopes
                    .entry(scope)
                    .or_default()
                    .records
                    .insert(key, change);
            }
            Persist::ClearRecords { scope } => {
                let scope = stored.scopes.entry(scope).or_default();
                scope.records.clear();
                scope.partial = false;
            }
            Persist::Evict { scope, keys } => {
                let scope = stored.scopes.entry(scope).or_default();
                for key in keys {
                    scope.records.remove(&(key.collection, key.key));
                }
                scope.partial = true;
            }
            Persist::Cursor { scope, cursor } => {
                stored.scopes.entry(scope).or_default().cursor = cursor;
            }
            Persist::Outbox {
                scope,
                client_id,
                next_id,
                mutations,
            } => {
                let outboxes = &mut stored.scopes.entry(scope).or_default().outboxes;
                outboxes.insert(client_id, (next_id, mutations));
            }
            Persist::DropOutbox { scope, client_id } => {
                if let Some(scope) = stored.scopes.get_mut(&scope) {
                    scope.outboxes.remove(&client_id);
                }
            }
            Persist::Wipe {
                scope,
                keep_pending,
            } => {
                let Some(gone) = stored.scopes.remove(&scope) else {
                    return;
                };
                let kept = kept_by_wipe(gone.outboxes, keep_pending);
                if !kept.is_empty() {
                    stored.scopes.entry(scope).or_default().outboxes = kept;
                }
            }
        }
    }

    /// Loads what a previous run stored into a new engine; returns the session's token.
    fn restore(&self, engine: &mut Engine) -> Option<String> {
        let stored = self.lock();
        let session = stored.session.clone();
        let user = session.as_ref().map(|s| s.user.id.clone());
        engine.restore_adopted(stored.adopted.clone());
        engine.restore_user(user.clone());
        if let Some(scope) = stored.scopes.get(&user) {
            engine.restore_cursor(scope.cursor.clone(), !scope.partial);
            for change in scope.records.values() {
                engine.restore_record(change.clone());
            }
            // A device is one tab: it takes over the one outbox it stored.
            if let Some((client_id, (next_id, mutations))) = scope.outboxes.iter().next() {
                engine.restore_outbox(client_id.clone(), *next_id, mutations.clone());
            }
        }
        engine.restore_ending_sessions(stored.ending.clone());
        session.map(|s| s.token)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Config::default(),
            seed: seed_from_os(),
            clock_offset_ms: 0,
            collections: DEFAULT_COLLECTIONS.iter().map(|c| c.to_string()).collect(),
            storage: Storage::default(),
        }
    }
}

/// What a device shows: its status and the live records of each collection.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub status: Option<Status>,
    pub user: Option<String>,
    pub client_id: String,
    pub records: HashMap<String, HashMap<String, Record>>,
    /// Requests this device sent so far, by kind.
    pub pulls_sent: u64,
    pub pushes_sent: u64,
    /// Signed-out sessions the server has not ended yet.
    pub sessions_to_end: usize,
}

impl Snapshot {
    /// The value of a record as JSON, if it is live.
    pub fn value(&self, collection: &str, key: &str) -> Option<serde_json::Value> {
        let record = self.records.get(collection)?.get(key)?;
        serde_json::from_str(record.value.as_deref()?).ok()
    }

    pub fn pending(&self) -> usize {
        self.status.as_ref().map_or(0, |s| s.pending)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the server answered {status}: {body}")]
    Http { status: u16, body: String },
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("write refused: {}", .0.code())]
    Write(WriteError),
    #[error("timed out waiting for the device's state")]
    Timeout,
    #[error("the device has stopped")]
    Stopped,
}

enum Input {
    Write {
        collection: String,
        key: String,
        value: Option<String>,
        /// The fields it sets (`None`: the whole record).
        fields: Option<Vec<String>>,
        done: oneshot::Sender<Result<(), WriteError>>,
    },
    SignIn {
        session: Session,
    },
    SignOut,
    Focus,
    Online(bool),
    Visible(bool),
}

/// One device of one user (or a guest), syncing in the background.
pub struct Device {
    base_url: String,
    http: reqwest::Client,
    inputs: mpsc::UnboundedSender<Input>,
    snapshots: watch::Receiver<Snapshot>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Starts a device talking to the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn start(base_url: &str, options: Options) -> Device {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client with default TLS-less settings builds");
        let (inputs, input_rx) = mpsc::unbounded_channel();
        let (snapshot_tx, snapshots) = watch::channel(Snapshot::default());
        let mut engine = Engine::new(options.config.clone(), options.seed);
        let token = options.storage.restore(&mut engine);
        let driver = Driver {
            engine,
            options,
            base_url: base_url.clone(),
            http: http.clone(),
            token,
            snapshots: snapshot_tx,
            pulls_sent: 0,
            pushes_sent: 0,
        };
        let task = tokio::spawn(driver.run(input_rx));
        Device {
            base_url,
            http,
            inputs,
            snapshots,
            task,
        }
    }

    /// Creates an account and signs this device in to it.
    pub async fn register(&self, username: &str, password: &str) -> Result<Session, Error> {
        let session = self.auth("register", username, password).await?;
        self.sign_in(&session);
        Ok(session)
    }

    /// Signs in to an existing account.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session, Error> {
        let session = self.auth("login", username, password).await?;
        self.sign_in(&session);
        Ok(session)
    }

    /// Signs the device in with a session obtained elsewhere.
    pub fn sign_in(&self, session: &Session) {
        self.send(Input::SignIn {
            session: session.clone(),
        });
    }

    /// Signs out: flushes what is queued, wipes the user's data, becomes a guest; the
    /// server ends the session (again later until it answers, if it cannot now). Writes the
    /// server has not confirmed stay stored for the account, sent at its next sign-in here.
    pub fn sign_out(&self) {
        self.send(Input::SignOut);
    }

    /// Writes a record (`None` deletes it).
    pub async fn write(
        &self,
        collection: &str,
        key: &str,
        value: Option<serde_json::Value>,
    ) -> Result<(), Error> {
        self.write_input(collection, key, value.map(|v| v.to_string()), None)
            .await
    }

    /// Writes only `fields` of a record, `value` being the whole record as this device
    /// shows it with them set: where the server merges the collection field by field
    /// (`--merge-fields`), the other fields keep what other devices wrote.
    pub async fn write_fields(
        &self,
        collection: &str,
        key: &str,
        value: serde_json::Value,
        fields: &[&str],
    ) -> Result<(), Error> {
        let fields = fields.iter().map(|f| (*f).to_owned()).collect();
        self.write_input(collection, key, Some(value.to_string()), Some(fields))
            .await
    }

    async fn write_input(
        &self,
        collection: &str,
        key: &str,
        value: Option<String>,
        fields: Option<Vec<String>>,
    ) -> Result<(), Error> {
        let (done, result) = oneshot::channel();
        self.send(Input::Write {
            collection: collection.to_owned(),
            key: key.to_owned(),
            value,
            fields,
            done,
        });
        result
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(Error::Write)
    }

    pub fn focus(&self) {
        self.send(Input::Focus);
    }

    pub fn set_online(&self, online: bool) {
        self.send(Input::Online(online));
    }

    pub fn set_visible(&self, visible: bool) {
        self.send(Input::Visible(visible));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshots.borrow().clone()
    }

    /// Waits until the device's state satisfies `condition`, for at most `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        condition: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot, Error> {
        let mut rx = self.snapshots.clone();
        let waited = tokio::time::timeout(limit, rx.wait_for(|s| condition(s))).await;
        match waited {
            Ok(Ok(snapshot)) => Ok(snapshot.clone()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Stops the device's task; what it had queued is lost with it, like a killed app.
    pub fn stop(self) {
        self.task.abort();
    }

    fn send(&self, input: Input) {
        // The task only ends when the device is stopped, which consumes `self`.
        let _ = self.inputs.send(input);
    }

    async fn auth(&self, action: &str, username: &str, password: &str) -> Result<Session, Error> {
        let response = self
            .http
            .post(format!("{}/api/auth/{action}", self.base_url))
            .json(&Credentials {
                username: username.to_owned(),
                password: password.to_owned(),
            })
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Error::Http {
                status: status.as_u16(),
                body,
            });
        }
        Ok(response.json().await?)
    }
}

/// Where the answers to the requests a driver sends come back: id, reply, poll interval.
type Replies = mpsc::UnboundedSender<(u64, Reply, Option<u64>)>;

/// The task that owns the engine.
struct Driver {
    engine: Engine,
    options: Options,
    base_url: String,
    http: reqwest::Client,
    token: Option<String>,
    snapshots: watch::Sender<Snapshot>,
    pulls_sent: u64,
    pushes_sent: u64,
}

impl Driver {
    async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<Input>) {
        let (reply_tx, mut replies) = mpsc::unbounded_channel::<(u64, Reply, Option<u64>)>();
        // An app that opens is in the foreground: a restored session syncs at once.
        let now = self.now();
        self.engine.handle_visibility(now, true);
        self.execute(&reply_tx);
        loop {
            let deadline = self.engine.poll_timeout().map(|at| self.instant_of(at));
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.handle_input(input, &reply_tx),
                    None => return,
                },
                Some((id, reply, poll_interval_ms)) = replies.recv() => {
                    let now = self.now();
                    if let Some(ms) = poll_interval_ms {
                        self.engine.handle_poll_interval(ms);
                    }
                    self.engine.handle_reply(now, id, reply);
                }
                () = sleep => {
                    let now = self.now();
                    self.engine.handle_timeout(now);
                }
            }
            self.execute(&reply_tx);
        }
    }

    fn handle_input(&mut self, input: Input, replies: &Replies) {
        let now = self.now();
        match input {
            Input::Write {
                collection,
                key,
                value,
                fields,
                done,
            } => {
                let written = self
                    .engine
                    .write_fields(now, &collection, &key, value, fields);
                let _ = done.send(written);
            }
            Input::SignIn { session } => {
                // Another user signed in here signs out first, with their own token.
                if self
                    .engine
                    .user()
                    .is_some_and(|user| user != session.user.id)
                {
                    self.sign_out(now, replies);
                }
                self.token = Some(session.token.clone());
                self.engine.sign_in(now, &session.user.id);
                self.options.storage.lock().session = Some(session);
            }
            Input::SignOut => self.sign_out(now, replies),
            Input::Focus => self.engine.handle_focus(now),
            Input::Online(online) => self.engine.handle_online(now, online),
            Input::Visible(visible) => self.engine.handle_visibility(now, visible),
        }
    }

    fn sign_out(&mut self, now: u64, replies: &Replies) {
        self.engine.sign_out(now, false);
        // The flush of what was queued goes with the session's token, before it is dropped.
        self.execute(replies);
        if let Some(token) = self.token.take() {
            self.engine.end_session(now, token);
        }
        self.options.storage.lock().session = None;
    }

    /// Drains the engine's commands and carries them out.
    fn execute(&mut self, replies: &Replies) {
        let mut changed = false;
        while let Some(command) = self.engine.poll_command() {
            match command {
                Command::Send { id, request, .. } => {
                    match request {
                        Request::Pull { .. } => self.pulls_sent += 1,
                        Request::Push { .. } => self.pushes_sent += 1,
                        Request::EndSession { .. } => {}
                    }
                    let call = HttpCall {
                        http: self.http.clone(),
                        base_url: self.base_url.clone(),
                        token: self.token.clone(),
                    };
                    let replies = replies.clone();
                    tokio::spawn(async move {
                        let (reply, poll_interval_ms) = call.run(request).await;
                        let _ = replies.send((id, reply, poll_interval_ms));
                    });
                    changed = true;
                }
                // A native device is the only tab it has: it leads whenever it asks to.
                Command::Leadership(true) => {
                    let now = self.now();
                    self.engine.handle_leadership(now, true);
                }
                Command::Leadership(false) => {}
                // The native client polls: its engines are built without `Config::pokes`.
                Command::Pokes(_) => {}
                Command::Persist(p) => {
                    // The snapshot counts the sessions still to end.
                    changed |= matches!(p, Persist::EndingSessions { .. });
                    self.options.storage.persist(p);
                }
                Command::Broadcast(_) => {}
                Command::Notify(_) => changed = true,
                // A native app brings its earlier data in with `write`; there is none to
                // hand over here.
                Command::Adopt { scope } => {
                    let now = self.now();
                    let _ = self.engine.adopt(now, scope.as_deref(), Vec::new());
                }
                // Alone on its storage: every other outbox is a gone one's (a previous run's,
                // parked by a sign-out).
                Command::Unpark { scope } => {
                    let stored = self.options.storage.lock();
                    let parked = stored.scopes.get(&scope).map(|s| parked(&s.outboxes));
                    drop(stored);
                    for (client_id, mutations) in parked.unwrap_or_default() {
                        let now = self.now();
                        let scope = scope.clone();
                        self.engine.unpark(now, scope, client_id, mutations);
                    }
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    fn publish(&self) {
        let mut records = HashMap::new();
        for collection in &self.options.collections {
            let live: HashMap<String, Record> = self
                .engine
                .collection(collection)
                .into_iter()
                .map(|(k, r)| (k.to_owned(), r.clone()))
                .collect();
            records.insert(collection.clone(), live);
        }
        let snapshot = Snapshot {
            status: Some(self.engine.status()),
            user: self.engine.user().map(str::to_owned),
            client_id: self.engine.client_id().to_owned(),
            records,
            pulls_sent: self.pulls_sent,
            pushes_sent: self.pushes_sent,
            sessions_to_end: self.options.storage.lock().ending.len(),
        };
        self.snapshots.send_replace(snapshot);
    }

    /// The device's clock: real time plus its configured error.
    fn now(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        real.saturating_add_signed(self.options.clock_offset_ms)
    }

    fn instant_of(&self, at_ms: u64) -> Instant {
        let now = self.now();
        Instant::now() + Duration::from_millis(at_ms.saturating_sub(now))
    }
}

/// One HTTP exchange, turned into the engine's [`Reply`].
struct HttpCall {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl HttpCall {
    /// The answer, with the server's `Sinkron-Poll-Interval` (in ms) when a pull's carried it.
    async fn run(self, request: Request) -> (Reply, Option<u64>) {
        if let Request::EndSession { token } = &request {
            return (self.end_session(token).await, None);
        }
        let Some(token) = self.token.as_deref() else {
            return (Reply::Failed(Failure::Unauthorized), None);
        };
        match request {
            Request::Pull { last_sync } => self.pull(token, last_sync).await,
            push => (self.push(token, push).await, None),
        }
    }

    /// `POST /api/auth/logout` with a signed-out session's token.
    async fn end_session(&self, token: &str) -> Reply {
        let sent = self
            .http
            .post(format!("{}/api/auth/logout", self.base_url))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await;
        match sent {
            Err(_) => Reply::Failed(Failure::Network),
            Ok(response) => match succeeded(response).await {
                Ok(_) => Reply::Done,
                Err(failure) => Reply::Failed(failure),
            },
        }
    }

    async fn pull(&self, token: &str, last_sync: Option<String>) -> (Reply, Option<u64>) {
        let mut builder = self
            .http
            .get(format!("{}/api/user/me", self.base_url))
            .header(AUTHORIZATION, format!("Bearer {token}"));
        if let Some(cursor) = &last_sync {
            builder = builder
                .query(&[("lastSync", cursor)])
                .header(IF_NONE_MATCH, format!("\"{cursor}\""));
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(_) => return (Reply::Failed(Failure::Network), None),
        };
        let poll_interval_ms = response
            .headers()
            .get(POLL_INTERVAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s.saturating_mul(1000));
        if response.status() == StatusCode::NOT_MODIFIED {
            return (Reply::NotModified, poll_interval_ms);
        }
        let response = match succeeded(response).await {
            Ok(r) => r,
            Err(failure) => return (Reply::Failed(failure), poll_interval_ms),
        };
        let reply = match response.json::<PullResponse>().await {
            Ok(body) => Reply::Pulled(Page::from(body)),
            Err(_) => Reply::Failed(Failure::Network),
        };
        (reply, poll_interval_ms)
    }

    async fn push(&self, token: &str, request: Request) -> Reply {
        let Request::Push {
            client_id,
            mutations,
            last_sync,
            keepalive: _,
        } = request
        else {
            return Reply::Failed(Failure::Network);
        };
        let body = PushRequest {
            client_id,
            mutations,
            last_sync,
        };
        let response = match self
            .http
            .post(format!("{}/api/user/me/changes", self.base_url))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => return Reply::Failed(Failure::Network),
        };
        let response = match succeeded(response).await {
            Ok(r) => r,
            Err(failure) => return Reply::Failed(failure),
        };
        match response.json::<PushResponse>().await {
            Ok(body) => Reply::Pushed {
                ack: body.ack,
                page: Page::from(body),
            },
            Err(_) => Reply::Failed(Failure::Network),
        }
    }
}

/// The response if it succeeded; else what its failure means to the engine (the core's one
/// classification).
async fn succeeded(response: reqwest::Response) -> Result<reqwest::Response, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after_ms = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000));
    let error = response.json::<ErrorBody>().await.ok().map(|b| b.error);
    let ack = error.as_ref().and_then(|e| e.ack);
    let code = error.as_ref().map(|e| e.code.as_str());
    let mutation = error.as_ref().and_then(|e| e.mutation);
    Err(Failure::from_status(
        status.as_u16(),
        retry_after_ms,
        ack,
        code,
        mutation,
    ))
}

/// A seed for a device's engine when the caller gives none.
fn seed_from_os() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(SystemTime::now())
}
