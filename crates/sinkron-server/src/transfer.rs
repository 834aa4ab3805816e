//! `sinkron import` and `sinkron export`: a site's records as JSON Lines, in and out.
//!
//! One line is one record of one site's user (JWT mode):
//! `{"user":"42","collection":"history","key":"e1","value":{…},"updatedAt":1733000000000}`,
//! a `null` value being a delete. Export writes users in subject order, each user's records
//! in `(collection, key)` order (bytewise), so an export of the same data is the same bytes.
//!
//! Import is a push: each line is checked by the rule a push's mutation is checked by
//! ([`crate::sync::validate_mutation`]), and the records go in through [`Store::push`] under
//! the client id [`IMPORT_CLIENT_ID`], so they are merged newest-wins, take versions and
//! reach devices exactly like a device's writes, on any backend, while servers run. The
//! collection caps apply as to a push; the storage quota does not (the site's own data), but
//! imported records count toward the user's usage. Mutation ids are numbered above the import client's ack, read with an
//! empty push when a user is first met; a push's answer carries the next.
//!
//! It must not know SQL or merge anything itself.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use sinkron_core::protocol::{Change, MUTATIONS_MAX};
use sinkron_core::Mutation;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::jwt::SUBJECT_BYTES_MAX;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Cap, DatabaseUrl, FieldMerge, PushBatch, Quota, Store, StoreError, UserId};

/// The client id imported records are written under: ties of `updatedAt` with a device's
/// write are broken by it, as between any two clients.
pub const IMPORT_CLIENT_ID: &str = "sinkron-import";

/// Lines read before what they hold is written: one round of pushes, one per user.
const ROUND_LINES: usize = 100_000;
/// Users written at once on SQLite: their pushes are committed together, in groups.
const SQLITE_USERS_AT_ONCE: usize = 32;
/// Users written at once on PostgreSQL, each on a connection of its own.
const POSTGRES_USERS_AT_ONCE: usize = 8;
/// PostgreSQL connections the import or export holds: a connection for each user written at
/// once, beside the few the store keeps for polls.
const POOL_SIZE: usize = 12;
/// How often a progress line is written when standard error is not a terminal.
const PLAIN_PROGRESS_PERIOD: Duration = Duration::from_secs(5);
/// Records read per pull while exporting.
const EXPORT_PAGE: usize = 10_000;
/// How often a write refused as busy (SQLite's lock held past its timeout by a server, or
/// no PostgreSQL connection free in time) is tried again, and after how long.
const BUSY_RETRIES: u32 = 5;
const BUSY_PAUSE: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The database, as for `serve` (a server may be running on it).
    #[arg(long, env = "SINKRON_DATABASE_URL", value_name = "URL")]
    pub database: String,

    /// The collections, caps and clock bound of `serve`: an import meets a push's rules.
    #[command(flatten)]
    pub rules: crate::config::WriteRules,

    /// Stop at the first invalid line: the lines before it are imported, none after it.
    #[arg(long)]
    pub strict: bool,

    /// The JSON Lines to import; `-` or none: standard input.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The database, as for `serve` (a server may be running on it).
    #[arg(long, env = "SINKRON_DATABASE_URL", value_name = "URL")]
    pub database: String,

    /// Only this site's user (the `sub` of its tokens); every site's user without it.
    #[arg(long, value_name = "ID")]
    pub user: Option<String>,

    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// What an import did, by line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records that won and were stored.
    pub imported: u64,
    /// Records not newer than the one stored (an import run again, or a device's later
    /// write): left as they were.
    pub older: u64,
    /// Lines that are not a valid record: reported and skipped.
    pub invalid: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported {}, older than stored {}, invalid {}",
            self.imported, self.older, self.invalid
        )
    }
}

/// One line as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Line {
    user: String,
    collection: String,
    key: String,
    #[serde(deserialize_with = "raw_json")]
    value: Option<String>,
    updated_at: u64,
}

/// A value as its JSON text (a required field: `null` is a delete, absence an error).
fn raw_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw: Option<Box<serde_json::value::RawValue>> = Option::deserialize(d)?;
    Ok(raw.map(|r| String::from(Box::<str>::from(r))))
}

/// Reads and checks one line: the user, and the record as a mutation (its id still to be
/// given). The reason of a refusal is for people, without the line's number.
pub fn parse_line(text: &str, collections: &[String]) -> Result<(String, Mutation), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let reason = match message.split_once(" at line ") {
            Some((reason, _)) => reason.to_owned(),
            None => message,
        };
        match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("not JSON ({reason})")
            }
            _ => reason,
        }
    })?;
    if line.user.is_empty() || line.user.len() > SUBJECT_BYTES_MAX {
        return Err(format!("user: must be 1 to {SUBJECT_BYTES_MAX} bytes"));
    }
    let mutation = Mutation {
        fields: None,
        id: 1,
        collection: line.collection,
        key: line.key,
        value: line.value,
        updated_at: line.updated_at,
    };
    crate::sync::validate_mutation(0, &mutation, 0, collections).map_err(|e| {
        e.message
            .strip_prefix("mutations[0].")
            .unwrap_or(&e.message)
            .to_owned()
    })?;
    Ok((line.user, mutation))
}

/// Opens the database for an import or export: beside a running server, which SQLite's
/// [`SqliteStore::open`] would refuse. Also says how many users to write at once.
async fn open(url: &str) -> Result<(Arc<dyn Store>, usize), String> {
    match DatabaseUrl::parse(url).map_err(|e| e.to_string())? {
        DatabaseUrl::Sqlite(path) => Ok((
            Arc::new(SqliteStore::open_beside_server(&path).map_err(|e| e.to_string())?),
            SQLITE_USERS_AT_ONCE,
        )),
        DatabaseUrl::Postgres(url) => Ok((
            Arc::new(
                PostgresStore::open_for_command(&url, POOL_SIZE)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            POSTGRES_USERS_AT_ONCE,
        )),
    }
}

/// One import at a time per SQLite file: two would write under one client id at once, and
/// one's ids could fall below the other's ack. Held until dropped.
fn lock_sqlite_import(url: &str) -> Result<Option<File>, String> {
    let Ok(DatabaseUrl::Sqlite(path)) = DatabaseUrl::parse(url) else {
        return Ok(None);
    };
    let mut lock_path = path.into_os_string();
    lock_path.push(".import-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", Path::new(&lock_path).display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another import is running on this database (lock file {})",
            Path::new(&lock_path).display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock: {e}")),
    }
}

/// What the import knows of a user once met.
#[derive(Clone, Copy, Debug)]
struct UserState {
    id: UserId,
    /// The next mutation id: above the import client's ack.
    next_id: u64,
}

/// The fixed parts of every push of an import.
#[derive(Clone)]
struct Rules {
    now_ms: u64,
    max_future_ms: u64,
    /// The `--collection-caps`, applied as to a device's push.
    caps: Arc<[Cap]>,
    merges: Arc<[FieldMerge]>,
}

impl Rules {
    fn batch<'a>(&'a self, mutations: &'a [Mutation]) -> PushBatch<'a> {
        PushBatch {
            client_id: IMPORT_CLIENT_ID,
            mutations,
            now_ms: self.now_ms,
            updated_at_max: self.now_ms.saturating_add(self.max_future_ms),
            since: None,
            limit: 1.into(),
            // The site's own data: imported whatever the quota. Usage still counts it.
            quota: Quota::UNLIMITED,
            caps: &self.caps,
            merges: &self.merges,
        }
    }
}

/// Runs `call` again while storage answers that it is busy, [`BUSY_RETRIES`] times at most.
/// A push tried again under the same ids is a client's retry: what landed is not applied
/// twice.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(StoreError::Unavailable(_)) if tries < BUSY_RETRIES => {
                tries += 1;
                tokio::time::sleep(BUSY_PAUSE).await;
            }
            done => return done,
        }
    }
}

/// Writes one user's records of a round, in their order, a push of at most
/// [`MUTATIONS_MAX`] at a time. Returns the user's state after and how many were stored.
async fn import_user(
    store: &dyn Store,
    subject: &str,
    state: Option<UserState>,
    records: Vec<Mutation>,
    rules: &Rules,
) -> Result<(UserState, u64), StoreError> {
    let mut state = match state {
        Some(state) => state,
        None => {
            let id = patiently(|| store.subject_session(subject, rules.now_ms))
                .await?
                .user_id;
            // An empty push changes nothing and answers with the ack.
            let ack = patiently(|| store.push(id, rules.batch(&[]))).await?.ack;
            UserState {
                id,
                next_id: ack.saturating_add(1),
            }
        }
    };
    let mut imported = 0u64;
    for chunk in records.chunks(MUTATIONS_MAX) {
        loop {
            let numbered: Vec<Mutation> = chunk
                .iter()
                .zip(state.next_id..)
                .map(|(m, id)| Mutation { id, ..m.clone() })
                .collect();
            let highest = numbered.last().map_or(state.next_id, |m| m.id);
            let (id, numbered) = (state.id, &numbered);
            match patiently(|| store.push(id, rules.batch(numbered))).await {
                Ok(outcome) => {
                    imported += outcome.applied as u64;
                    if outcome.ack == highest {
                        state.next_id = highest.saturating_add(1);
                        break;
                    }
                    // Something else wrote under the import's client id and its ack passed
                    // these ids, which were then taken as retries: send them again above it
                    // (what did land is not newer the second time).
                    state.next_id = outcome.ack.saturating_add(1);
                }
                Err(StoreError::IdsReused { ack }) => state.next_id = ack.saturating_add(1),
                Err(e) => return Err(e),
            }
        }
    }
    Ok((state, imported))
}

/// Progress on standard error: a bar with rate and ETA on a terminal, else a line every
/// [`PLAIN_PROGRESS_PERIOD`].
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    total_bytes: Option<u64>,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total_bytes {
                Some(total) => (
                    ProgressBar::new(total),
                    "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} {bytes} {bytes_per_sec} {elapsed} {msg}",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            started: now,
            last_line: now,
            total_bytes,
        }
    }

    /// Whether a plain progress line is due: its period has passed since the last.
    fn due(&self) -> bool {
        self.bar.is_none() && self.last_line.elapsed() >= PLAIN_PROGRESS_PERIOD
    }

    fn update(&mut self, bytes: u64, lines: u64, counts: Counts) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(counts.to_string());
            return;
        }
        if !self.due() {
            return;
        }
        self.last_line = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = lines as f64 / secs;
        let share = match self.total_bytes {
            Some(total) if total > 0 => {
                let done = bytes as f64 / total as f64;
                let eta = if done > 0.0 {
                    secs * (1.0 - done) / done
                } else {
                    0.0
                };
                format!(" ({:.0}%, about {eta:.0} s left)", done * 100.0)
            }
            _ => String::new(),
        };
        eprintln!("read {lines} lines{share} at {rate:.0} lines/s: {counts}");
    }

    fn say(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{message}")),
            None => eprintln!("{message}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The lines of a round, by user, in the order read.
struct Importer {
    store: Arc<dyn Store>,
    users_at_once: usize,
    rules: Arc<Rules>,
    users: HashMap<String, UserState>,
    round: HashMap<String, Vec<Mutation>>,
    round_lines: usize,
    counts: Counts,
}

impl Importer {
    fn add(&mut self, user: String, mutation: Mutation) {
        self.round.entry(user).or_default().push(mutation);
        self.round_lines += 1;
    }

    /// Writes the round: each user's records in order, `users_at_once` users at once.
    async fn flush(&mut self) -> Result<(), String> {
        let round = std::mem::take(&mut self.round);
        self.round_lines = 0;
        let slots = Arc::new(Semaphore::new(self.users_at_once));
        let mut tasks = JoinSet::new();
        for (subject, records) in round {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let (store, rules) = (self.store.clone(), self.rules.clone());
            let state = self.users.get(&subject).copied();
            tasks.spawn(async move {
                let sent = records.len() as u64;
                let done = import_user(store.as_ref(), &subject, state, records, &rules).await;
                drop(slot);
                (subject, sent, done)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (subject, sent, done) =
                joined.map_err(|e| format!("an import task failed: {e}"))?;
            let (state, imported) =
                done.map_err(|e| format!("cannot import the records of user {subject:?}: {e}"))?;
            self.users.insert(subject, state);
            self.counts.imported += imported;
            self.counts.older += sent.saturating_sub(imported);
        }
        Ok(())
    }
}

/// `sinkron import`: prints the counts on standard output; invalid lines go to standard
/// error as `line N: reason`.
pub async fn import(args: ImportArgs) -> Result<(), String> {
    let input: Option<&Path> = args.file.as_deref().filter(|p| *p != Path::new("-"));
    let (mut reader, total_bytes): (Box<dyn BufRead>, Option<u64>) = match input {
        Some(path) => {
            let file =
                File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let len = file.metadata().ok().map(|m| m.len());
            (Box::new(BufReader::with_capacity(1 << 16, file)), len)
        }
        None => (Box::new(BufReader::new(std::io::stdin())), None),
    };
    // The rules as `serve` checks and reads them.
    args.rules.check()?;
    let caps: Arc<[Cap]> = args
        .rules
        .caps()?
        .into_iter()
        .map(|(collection, max)| Cap { collection, max })
        .collect();
    let _lock = lock_sqlite_import(&args.database)?;
    let (store, users_at_once) = open(&args.database).await?;
    let mut importer = Importer {
        store,
        users_at_once,
        rules: Arc::new(Rules {
            now_ms: crate::now_ms(),
            max_future_ms: args.rules.max_future_ms,
            caps,
            merges: args.rules.merges()?.into(),
        }),
        users: HashMap::new(),
        round: HashMap::new(),
        round_lines: 0,
        counts: Counts::default(),
    };
    let mut progress = Progress::new(total_bytes);
    let (mut line_no, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    let mut stopped_at = None;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("cannot read line {}: {e}", line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        bytes += n as u64;
        let parsed = match std::str::from_utf8(&buf) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => parse_line(text.trim_end_matches(['\n', '\r']), &args.rules.collections),
            Err(_) => Err("not UTF-8".to_owned()),
        };
        match parsed {
            Ok((user, mutation)) => importer.add(user, mutation),
            Err(reason) => {
                importer.counts.invalid += 1;
                progress.say(&format!("line {line_no}: {reason}"));
                if args.strict {
                    stopped_at = Some(line_no);
                    break;
                }
            }
        }
        if importer.round_lines >= ROUND_LINES {
            importer.flush().await?;
        }
        // The bar every 1,024 lines; a plain line when its period has passed, whatever the
        // count (a round's writes take seconds; lines may trickle in on standard input).
        if line_no % 1024 == 0 || progress.due() {
            progress.update(bytes, line_no, importer.counts);
        }
    }
    importer.flush().await?;
    progress.finish();
    println!("{}", importer.counts);
    match stopped_at {
        Some(line) => Err(format!(
            "stopped at the invalid line {line} (--strict): the lines before it are imported, \
             none after it"
        )),
        None => Ok(()),
    }
}

/// Every stored record of a user (tombstones too), by `(collection, key)`, each in its latest
/// state.
async fn user_records(
    store: &dyn Store,
    user_id: UserId,
) -> Result<BTreeMap<(String, String), Change>, StoreError> {
    let mut records: BTreeMap<(String, String), Change> = BTreeMap::new();
    let mut since = None;
    loop {
        let page = store.pull(user_id, since, EXPORT_PAGE.into()).await?;
        if page.reset {
            // Compaction ran between two pages: this page is the whole state again.
            records.clear();
        }
        for change in page.changes {
            let id = (change.collection.clone(), change.key.clone());
            match records.get(&id) {
                Some(held) if held.version >= change.version => {}
                _ => {
                    records.insert(id, change);
                }
            }
        }
        if !page.more {
            return Ok(records);
        }
        since = Some(page.cursor);
    }
}

/// One record as a line. A value is written as stored; a line break in it (whitespace
/// between tokens, as JSON text cannot hold one elsewhere) is written as a space, so the
/// line stays one line.
fn write_line(
    out: &mut impl Write,
    user: &str,
    collection: &str,
    key: &str,
    value: Option<&str>,
    updated_at: u64,
) -> std::io::Result<()> {
    out.write_all(b"{\"user\":")?;
    serde_json::to_writer(&mut *out, user)?;
    out.write_all(b",\"collection\":")?;
    serde_json::to_writer(&mut *out, collection)?;
    out.write_all(b",\"key\":")?;
    serde_json::to_writer(&mut *out, key)?;
    out.write_all(b",\"value\":")?;
    match value {
        None => out.write_all(b"null")?,
        Some(text) if text.contains(['\n', '\r']) => {
            out.write_all(text.replace(['\n', '\r'], " ").as_bytes())?;
        }
        Some(text) => out.write_all(text.as_bytes())?,
    }
    writeln!(out, ",\"updatedAt\":{updated_at}}}")
}

/// `sinkron export`: every site's user (or one), in subject order, to standard output or a
/// file; a count of what was written on standard error.
pub async fn export(args: ExportArgs) -> Result<(), String> {
    crate::store::existing(&args.database).map_err(|e| e.to_string())?;
    let (store, _) = open(&args.database).await?;
    let mut users = match &args.user {
        Some(_) => Vec::new(),
        None => store
            .site_users()
            .await
            .map_err(|e| format!("cannot list the users: {e}"))?,
    };
    if let Some(only) = &args.user {
        let found = store
            .find_subject(only)
            .await
            .map_err(|e| format!("cannot look the user up: {e}"))?;
        let Some(id) = found else {
            return Err(format!("no site's user {only:?} in the database"));
        };
        users = vec![(id, only.clone())];
    }
    // `str`'s order is bytewise.
    users.sort_by(|a, b| a.1.cmp(&b.1));
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 16, sink);
    let written = |e: std::io::Error| format!("cannot write the export: {e}");
    let mut count = 0u64;
    for (user_id, subject) in &users {
        let records = user_records(store.as_ref(), *user_id)
            .await
            .map_err(|e| format!("cannot read the records of user {subject:?}: {e}"))?;
        for ((collection, key), change) in &records {
            write_line(
                &mut out,
                subject,
                collection,
                key,
                change.value.as_deref(),
                change.updated_at,
            )
            .map_err(written)?;
            count += 1;
        }
    }
    out.flush().map_err(written)?;
    drop(out);
    eprintln!("exported {count} records of {} users", users.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off a terminal, a progress line is due once its period has passed, whatever the count
    /// of lines read: the import asks after every line, not every 1,024.
    #[test]
    fn a_plain_progress_line_is_due_by_time() {
        let mut progress = Progress {
            bar: None,
            started: Instant::now(),
            last_line: Instant::now(),
            total_bytes: None,
        };
        assert!(!progress.due());
        progress.last_line -= PLAIN_PROGRESS_PERIOD;
        assert!(progress.due());
        progress.update(10, 3, Counts::default());
        assert!(
            !progress.due(),
            "a line was written: the next is a period away"
        );
    }

    fn collections() -> Vec<String> {
        sinkron_core::protocol::DEFAULT_COLLECTIONS
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_line_is_checked_like_a_pushed_mutation() {
        let ok = parse_line(
            r#"{"user":"u1","collection":"history","key":"e1","value":{"p":1.5},"updatedAt":7}"#,
            &collections(),
        )
        .expect("valid");
        assert_eq!(ok.0, "u1");
        assert_eq!(ok.1.value.as_deref(), Some(r#"{"p":1.5}"#));
        assert_eq!(ok.1.updated_at, 7);
        let delete = parse_line(
            r#"{"user":"u1","collection":"likes","key":"e1","value":null,"updatedAt":0}"#,
            &collections(),
        )
        .expect("a delete");
        assert_eq!(delete.1.value, None);

        let refused = |line: &str| parse_line(line, &collections()).expect_err(line);
        let base = r#""collection":"likes","key":"k","value":{},"updatedAt":1"#;
        assert!(refused(&format!(r#"{{"user":"",{base}}}"#)).starts_with("user:"));
        let long = "u".repeat(SUBJECT_BYTES_MAX + 1);
        assert!(refused(&format!(r#"{{"user":"{long}",{base}}}"#)).starts_with("user:"));
        let r = refused(r#"{"user":"u","collection":"nope","key":"k","value":{},"updatedAt":1}"#);
        assert!(r.starts_with("collection: unknown collection"), "{r}");
        let r = refused(r#"{"user":"u","collection":"likes","key":"","value":{},"updatedAt":1}"#);
        assert!(r.starts_with("key: must be 1 to 128"), "{r}");
        let r = refused(r#"{"user":"u","collection":"likes","key":"k","value":[1],"updatedAt":1}"#);
        assert!(r.starts_with("value: must be a JSON object"), "{r}");
        let r = refused(
            r#"{"user":"u","collection":"likes","key":"k","value":{"a":1e400},"updatedAt":1}"#,
        );
        assert!(
            r.starts_with("value: every number must fit a double"),
            "{r}"
        );
        let r = refused(r#"{"user":"u","collection":"likes","key":"k","value":{},"updatedAt":-1}"#);
        assert!(r.contains("invalid value"), "{r}");
        let r =
            refused(r#"{"user":"u","collection":"likes","key":"k","value":{},"updatedAt":1.5}"#);
        assert!(r.contains("floating point"), "{r}");
        let r = refused(r#"{"user":"u","collection":"likes","key":"k","updatedAt":1}"#);
        assert!(r.contains("missing field `value`"), "{r}");
        assert!(!r.contains("at line"), "{r}");
        let r = refused(
            r#"{"user":"u","collection":"likes","key":"k","value":{},"updatedAt":1,"x":1}"#,
        );
        assert!(r.contains("unknown field `x`"), "{r}");
        assert!(refused("{not json").starts_with("not JSON (key must be a string"));
    }

    #[test]
    fn a_line_written_reads_back_the_same() {
        let mut out = Vec::new();
        write_line(
            &mut out,
            "ü\"1",
            "history",
            "k\n1",
            Some(r#"{"a":[1,"x"]}"#),
            9,
        )
        .expect("write");
        write_line(&mut out, "u", "likes", "k", None, 0).expect("write");
        write_line(&mut out, "u", "likes", "k", Some("{\n\"a\":1\r\n}"), 1).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let (user, m) = parse_line(lines[0], &collections()).expect("valid");
        assert_eq!((user.as_str(), m.key.as_str()), ("ü\"1", "k\n1"));
        assert_eq!(m.value.as_deref(), Some(r#"{"a":[1,"x"]}"#));
        assert_eq!(m.updated_at, 9);
        assert_eq!(
            parse_line(lines[1], &collections()).expect("valid").1.value,
            None
        );
        let spaced = parse_line(lines[2], &collections()).expect("valid").1;
        assert_eq!(spaced.value.as_deref(), Some("{ \"a\":1  }"));
    }
}
