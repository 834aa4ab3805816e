//! The server side of a run: the real axum service ([`sinkron_server::app`]) over the real
//! SQLite store, in a temporary directory, on the run's virtual clock; and beside it a model of
//! what protocol v1 says the server must hold, which every answer is checked against.
//!
//! A crash drops the service and the store (and with them every cache); a restart reopens the
//! same file. The model is what was acknowledged durably, so it survives both.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request as HttpRequest, StatusCode};
use axum::Router;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sinkron_core::engine::Failure;
use sinkron_core::merge::{self, Merged, Policy, Stamp};
use sinkron_core::protocol::{ErrorBody, PullResponse, PushRequest, PushResponse};
use sinkron_core::{Mutation, Page, Record, Reply, Request};
use sinkron_server::pace::POLL_INTERVAL_HEADER;
use sinkron_server::store::sqlite::SqliteStore;
use sinkron_server::store::{Store, UserId};
use sinkron_server::{app, AppState, Config};
use tower::ServiceExt;

use crate::rng::Rng;
use crate::Violation;

/// `(collection, key)`, ordered so reports list keys in a stable order.
pub type Key = (String, String);

/// How far ahead of its clock the server lets an `updatedAt` be (its default).
const MAX_FUTURE_MS: u64 = 60_000;

/// The collection the server merges field by field (`--merge-fields`), with its sticky field.
pub const MERGED: &str = "history";
const MERGE_FIELDS: &str = "history:completed";
/// Its sticky field, which the tabs declare too (`Config::sticky`).
pub const STICKY: &str = "completed";
/// A capped collection and its cap: devices like more episodes than it keeps, so pushes evict
/// (and read the collection's count and oldest records to do it).
pub const CAPPED: &str = "likes";
const CAP: usize = 5;
/// A collection the server does not know (not among its `--collections`): every push holding
/// a write of it is refused with 422 `invalid_mutation` naming that write, and applies nothing.
pub const UNKNOWN: &str = "bookmarks";

/// What a per-field write is to the model: its stamp, value and the fields it names.
type FieldWrite = (Stamp, Option<Map<String, Value>>, Option<Vec<String>>);

/// Whether a write of `value` that sets `fields` (`None`: those its value holds) sets
/// [`STICKY`] `true`.
pub fn sets_sticky_true(fields: Option<&[String]>, value: Option<&str>) -> bool {
    fields.is_none_or(|f| f.iter().any(|n| n == STICKY))
        && value
            .and_then(|v| serde_json::from_str::<Map<String, Value>>(v).ok())
            .is_some_and(|v| v.get(STICKY) == Some(&Value::Bool(true)))
}

/// The policy of [`MERGED`] as the server reads it from [`MERGE_FIELDS`].
fn policy() -> Policy {
    Policy {
        sticky: vec![STICKY.into()],
    }
}

/// The record the laws say a per-field collection holds after `writes` (in arrival order):
/// they are folded in newest-wins order, whatever order they came in (commutative), and each
/// twice (idempotent); each field then holds its newest write's value (per-field newest-wins,
/// which `sinkron_core::merge` implements).
fn merged_record(writes: &[FieldWrite]) -> Record {
    let mut sorted: Vec<&FieldWrite> = writes.iter().collect();
    // Stable: two writes of one stamp keep their order, as on the server.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let policy = policy();
    let mut merged = Merged::default();
    for (stamp, value, fields) in sorted.iter().chain(sorted.iter()) {
        let write = merge::Write {
            value: value.as_ref(),
            fields: fields.as_deref(),
            stamp,
        };
        merged.apply(write, &policy);
    }
    let newest = merged
        .stamps
        .newest()
        .cloned()
        .unwrap_or(Stamp(0, String::new()));
    Record {
        value: merged.value().map(|v| Value::Object(v.clone()).to_string()),
        updated_at: newest.0,
        client_id: newest.1,
    }
}

/// The server's state of one user, as protocol v1 defines it.
#[derive(Debug, Default)]
struct UserModel {
    /// Each record with the model's own version of its last change.
    records: BTreeMap<Key, (Record, u64)>,
    version: u64,
    acks: HashMap<String, u64>,
    /// Cursors the server issued on complete answers, with the model's version at the time:
    /// a cursor names one state.
    cursors: HashMap<String, u64>,
    /// Each record of [`MERGED`]: merged as writes arrive (which tells when the server takes
    /// a version), and every write taken, from which the laws give what it must hold.
    merged: BTreeMap<Key, (Merged, Vec<FieldWrite>)>,
    /// Records whose tombstone compaction removed, with the model's version of the delete.
    compacted: BTreeMap<Key, u64>,
    /// Every write taken (above its client's ack).
    taken: Vec<Taken>,
}

/// A write the server took.
#[derive(Debug)]
struct Taken {
    key: Key,
    /// Its `updatedAt` as its client stamped it.
    stamped: u64,
    /// The fields it sets: those it names, else its value's; `None` for a delete.
    sets: Option<Vec<String>>,
    value: Option<String>,
    /// When the server took it.
    at: u64,
}

/// A mutation the server stored with an earlier `updatedAt` than the client stamped.
#[derive(Debug)]
pub struct Clamp {
    pub client_id: String,
    pub key: Key,
    pub from: u64,
    pub to: u64,
}

/// What serving one request did.
#[derive(Debug)]
pub struct Served {
    pub reply: Reply,
    /// The server's `Sinkron-Poll-Interval`, in ms, when the answer carried it.
    pub poll_interval_ms: Option<u64>,
    pub clamps: Vec<Clamp>,
    /// A short description for the trace.
    pub summary: String,
}

struct Live {
    store: Arc<dyn Store>,
    service: Router,
}

pub struct Server {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    path: PathBuf,
    clock: Arc<AtomicU64>,
    live: Option<Live>,
    user_ids: Vec<UserId>,
    tokens: Vec<String>,
    models: Vec<UserModel>,
    page_size: u32,
    page_bytes: u32,
    poll_interval_secs: u32,
}

impl Server {
    /// A fresh database with `users` accounts and one token each, created through the store
    /// (password hashing is the slow part of sign-up and is not what is under test).
    pub fn start(
        users: usize,
        page_size: u32,
        page_bytes: u32,
        poll_interval_secs: u32,
        now: u64,
        rng: &mut Rng,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let dir = temp_dir()?;
        let path = dir.path().join("sim.db");
        let mut server = Server {
            runtime,
            _dir: dir,
            path,
            clock: Arc::new(AtomicU64::new(now)),
            live: None,
            user_ids: Vec::new(),
            tokens: Vec::new(),
            models: (0..users).map(|_| UserModel::default()).collect(),
            page_size,
            page_bytes,
            poll_interval_secs,
        };
        server.restart()?;
        let store = server.store()?;
        for i in 0..users {
            let token: String = (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect();
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let id = server
                .runtime
                .block_on(async {
                    let id = store.create_user(&format!("user{i}"), "-", now).await?;
                    store.create_token(id, &hash, now).await?;
                    Ok::<_, sinkron_server::store::StoreError>(id)
                })
                .map_err(|e| format!("create user: {e}"))?;
            server.user_ids.push(id);
            server.tokens.push(token);
        }
        Ok(server)
    }

    fn store(&self) -> Result<Arc<dyn Store>, String> {
        self.live
            .as_ref()
            .map(|l| l.store.clone())
            .ok_or_else(|| "server is down".to_owned())
    }

    /// The id the engine knows a user by (the server's user id, as on the wire).
    pub fn user_id(&self, user: usize) -> String {
        self.user_ids[user].to_string()
    }

    /// The user index of a wire user id.
    pub fn user_index(&self, id: &str) -> Option<usize> {
        self.user_ids.iter().position(|u| u.to_string() == id)
    }

    pub fn is_up(&self) -> bool {
        self.live.is_some()
    }

    pub fn set_time(&self, now: u64) {
        self.clock.store(now, Ordering::Relaxed);
    }

    /// The process dies: the service, the store and its caches are gone; the file stays.
    pub fn crash(&mut self) {
        self.live = None;
    }

    /// Compacts the tombstones stored before `before_ms`, as the server's hourly sweep does;
    /// returns how many went. A device whose cursor is behind the new horizon gets a reset.
    /// The model forgets the tombstones the store no longer holds (after that, an older
    /// write to such a key wins again, on both); a live record gone is a violation. Returns
    /// how many went, and each user's keys whose tombstone went.
    pub fn compact(&mut self, before_ms: u64) -> Result<(u64, Vec<(usize, Key)>), Violation> {
        let store = self.store().map_err(|e| Violation::new("sim", e))?;
        let gone = self
            .runtime
            .block_on(store.compact_tombstones(before_ms))
            .map_err(|e| Violation::new("sim", format!("compaction: {e}")))?;
        let mut forgotten = Vec::new();
        for user in 0..self.models.len() {
            let stored = self.stored(user)?;
            let model = &mut self.models[user];
            let newest = model.version;
            for (key, (record, version)) in &model.records {
                if stored.contains_key(key) {
                    continue;
                }
                if record.value.is_some() || *version >= newest {
                    return Err(Violation::new(
                        "2 newest write wins, nothing lost",
                        format!(
                            "compaction removed {}/{} ({}, version {version} of {newest})",
                            key.0,
                            key.1,
                            show(Some(record))
                        ),
                    ));
                }
            }
            let compacted = &mut model.compacted;
            model.records.retain(|key, (_, version)| {
                let kept = stored.contains_key(key);
                if !kept {
                    forgotten.push((user, key.clone()));
                    compacted.insert(key.clone(), *version);
                }
                kept
            });
            // A compacted tombstone took its stamps with it, on the server as here.
            let records = &model.records;
            model.merged.retain(|key, _| records.contains_key(key));
        }
        Ok((gone, forgotten))
    }

    /// Opens the database file again (the lock of the dead process is released by then).
    pub fn restart(&mut self) -> Result<(), String> {
        self.live = None;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&self.path).map_err(|e| format!("open store: {e}"))?);
        let clock = self.clock.clone();
        let config = Config {
            page_size: self.page_size,
            page_bytes: self.page_bytes,
            poll_interval: self.poll_interval_secs,
            // The per-user rate limit counts by the real clock, which would make a run depend
            // on how fast the machine is; the simulation's 429s come from its faults.
            user_requests_per_minute: 0,
            // So does the request timeout: a run paused or starved past it (a `SIGSTOP`, a
            // busy machine) would answer 408 to a push the store then commits on its
            // blocking thread, a lost answer the run never chose (seed 6068 once failed so,
            // in a batch paused during a browser run, and passed alone).
            request_timeout_secs: 365 * 24 * 3600,
            rules: sinkron_server::config::WriteRules {
                merge_fields: vec![MERGE_FIELDS.into()],
                collection_caps: Some(vec![format!("{CAPPED}={CAP}")]),
                ..Default::default()
            },
            ..Config::default()
        };
        let state = AppState::new(store.clone(), config)
            .with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
        self.live = Some(Live {
            store,
            service: app(state),
        });
        Ok(())
    }

    /// Serves one request of `user`'s tab over the real service, then checks the answer and
    /// the stored state against the model. `Ok(None)`: the server is down.
    pub fn serve(
        &mut self,
        now: u64,
        user: usize,
        request: &Request,
    ) -> Result<Option<Served>, Violation> {
        let Some(live) = self.live.as_ref() else {
            return Ok(None);
        };
        self.set_time(now);
        let token = &self.tokens[user];
        let http = build_request(token, request)
            .map_err(|e| Violation::new("sim", format!("cannot encode request: {e}")))?;
        let service = live.service.clone();
        let (status, retry_after, poll_interval_ms, body) = self
            .runtime
            .block_on(async move {
                let response = service.oneshot(http).await?;
                let status = response.status();
                let seconds = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                let retry_after = seconds(header::RETRY_AFTER.as_str());
                let poll_interval_ms = seconds(POLL_INTERVAL_HEADER).map(|s| s * 1000);
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok::<_, Box<dyn std::error::Error>>((status, retry_after, poll_interval_ms, body))
            })
            .map_err(|e| Violation::new("sim", format!("service failed: {e}")))?;
        if status.is_server_error() {
            return Err(Violation::new(
                "server answers no 5xx",
                format!("{status}: {}", String::from_utf8_lossy(&body)),
            ));
        }
        let failure = |status: StatusCode| {
            let error = serde_json::from_slice::<ErrorBody>(&body).ok();
            let ack = error.as_ref().and_then(|b| b.error.ack);
            let code = error.as_ref().map(|b| b.error.code.as_str());
            let retry_after_ms = retry_after.map(|s| s * 1000);
            let mutation = error.as_ref().and_then(|b| b.error.mutation);
            Failure::from_status(status.as_u16(), retry_after_ms, ack, code, mutation)
        };
        let mut clamps = Vec::new();
        let (reply, summary) = match request {
            Request::EndSession { .. } => {
                return Err(Violation::new(
                    "sim",
                    "a session ended: the simulation signs in with the site's tokens",
                ));
            }
            Request::Pull { last_sync } => {
                if status == StatusCode::NOT_MODIFIED {
                    self.check_not_modified(user, last_sync.as_deref())?;
                    (Reply::NotModified, "304".to_owned())
                } else if status == StatusCode::OK {
                    let body: PullResponse = serde_json::from_slice(&body)
                        .map_err(|e| Violation::new("protocol", format!("pull body: {e}")))?;
                    let page = Page::from(body);
                    self.check_page(user, last_sync.as_deref(), &page)?;
                    let summary = format!(
                        "200 cursor={} changes={}{}",
                        page.cursor,
                        page.changes.len(),
                        if page.reset { " reset" } else { "" }
                    );
                    (Reply::Pulled(page), summary)
                } else {
                    (
                        Reply::Failed(failure(status)),
                        format!("{status} {}", String::from_utf8_lossy(&body)),
                    )
                }
            }
            Request::Push {
                client_id,
                mutations,
                last_sync,
                ..
            } => {
                if status == StatusCode::OK {
                    let body: PushResponse = serde_json::from_slice(&body)
                        .map_err(|e| Violation::new("protocol", format!("push body: {e}")))?;
                    let ack_before = self.models[user].acks.get(client_id).copied();
                    clamps = self.apply_to_model(user, client_id, mutations, now);
                    self.check_push(user, client_id, mutations, ack_before, body.ack)?;
                    let ack = body.ack;
                    let page = Page::from(body);
                    if last_sync.is_some() {
                        self.check_page(user, last_sync.as_deref(), &page)?;
                    }
                    let summary = format!(
                        "200 ack={ack} cursor={} changes={}",
                        page.cursor,
                        page.changes.len()
                    );
                    (Reply::Pushed { ack, page }, summary)
                } else {
                    // A refused batch applies nothing: the stored state must still match.
                    self.check_state(user, None)?;
                    if let Failure::IdsReused { ack } = failure(status) {
                        return Err(Violation::new(
                            "7 mutation ids are never reused",
                            format!(
                                "the server refused a push of {client_id} as reusing ids at \
                                 or below its ack {ack}: {}",
                                String::from_utf8_lossy(&body)
                            ),
                        ));
                    }
                    (
                        Reply::Failed(failure(status)),
                        format!("{status} {}", String::from_utf8_lossy(&body)),
                    )
                }
            }
        };
        Ok(Some(Served {
            reply,
            poll_interval_ms,
            clamps,
            summary,
        }))
    }

    /// Protocol v1's push, on the model: skip ids at or below the ack, clamp, newest wins.
    fn apply_to_model(
        &mut self,
        user: usize,
        client_id: &str,
        mutations: &[Mutation],
        now: u64,
    ) -> Vec<Clamp> {
        let model = &mut self.models[user];
        let ack = model.acks.get(client_id).copied().unwrap_or(0);
        let mut clamps = Vec::new();
        // Past the bound, a write is stamped the bound plus one millisecond per write clamped
        // before it in the push (never later than its own stamp): a client's writes keep
        // their order.
        let bound = now + MAX_FUTURE_MS;
        let mut clamped = 0;
        for m in mutations.iter().filter(|m| m.id > ack) {
            let key = (m.collection.clone(), m.key.clone());
            let sets = m.value.as_deref().map(|v| match &m.fields {
                Some(names) => names.clone(),
                None => serde_json::from_str::<Map<String, Value>>(v)
                    .map(|value| value.keys().cloned().collect())
                    .unwrap_or_default(),
            });
            model.taken.push(Taken {
                key: key.clone(),
                stamped: m.updated_at,
                sets,
                value: m.value.clone(),
                at: now,
            });
            let updated_at = if m.updated_at > bound {
                clamped += 1;
                m.updated_at.min(bound + clamped - 1)
            } else {
                m.updated_at
            };
            if updated_at != m.updated_at {
                clamps.push(Clamp {
                    client_id: client_id.to_owned(),
                    key: key.clone(),
                    from: m.updated_at,
                    to: updated_at,
                });
            }
            if m.collection == MERGED {
                let value = m
                    .value
                    .as_deref()
                    .map(|v| serde_json::from_str::<Map<String, Value>>(v).unwrap_or_default());
                let stamp = Stamp(updated_at, client_id.to_owned());
                let (merged, writes) = model.merged.entry(key.clone()).or_default();
                let write = merge::Write {
                    value: value.as_ref(),
                    fields: m.fields.as_deref(),
                    stamp: &stamp,
                };
                let changed = merged.apply(write, &policy());
                writes.push((stamp, value, m.fields.clone()));
                if changed {
                    model.version += 1;
                    let record = merged_record(writes);
                    model.records.insert(key, (record, model.version));
                }
                continue;
            }
            let incoming = Record {
                value: m.value.clone(),
                updated_at,
                client_id: client_id.to_owned(),
            };
            let wins = model
                .records
                .get(&key)
                .is_none_or(|(current, _)| incoming.wins_over(current));
            if wins {
                model.version += 1;
                model.records.insert(key, (incoming, model.version));
            }
        }
        // Past the cap, once the push's writes are in, the oldest live records (by
        // `updatedAt`, then client id and key, bytewise) become tombstones with their own
        // stamps, each taking a version (PROTOCOL.md, the collection caps).
        let mut live: Vec<(&Key, &Record)> = model
            .records
            .iter()
            .filter(|(key, (record, _))| key.0 == CAPPED && record.value.is_some())
            .map(|(key, (record, _))| (key, record))
            .collect();
        live.sort_by(|a, b| {
            (a.1.updated_at, a.1.client_id.as_bytes(), a.0 .1.as_bytes()).cmp(&(
                b.1.updated_at,
                b.1.client_id.as_bytes(),
                b.0 .1.as_bytes(),
            ))
        });
        let excess = live.len().saturating_sub(CAP);
        let evicted: Vec<(Key, Record)> = live[..excess]
            .iter()
            .map(|(key, record)| {
                let tombstone = Record {
                    value: None,
                    ..(*record).clone()
                };
                ((*key).clone(), tombstone)
            })
            .collect();
        for (key, tombstone) in evicted {
            model.version += 1;
            model.records.insert(key, (tombstone, model.version));
        }
        let highest = mutations.iter().map(|m| m.id).max().unwrap_or(0);
        model.acks.insert(client_id.to_owned(), ack.max(highest));
        clamps
    }

    /// Invariants 2 and 3 after a push: the ack is the model's, and the stored records are
    /// exactly what newest-wins over every acknowledged mutation gives.
    fn check_push(
        &mut self,
        user: usize,
        client_id: &str,
        mutations: &[Mutation],
        ack_before: Option<u64>,
        ack: u64,
    ) -> Result<(), Violation> {
        let expected = self.models[user].acks.get(client_id).copied().unwrap_or(0);
        if ack != expected {
            return Err(Violation::new(
                "3 retries apply once",
                format!("push of {client_id} answered ack {ack}, protocol says {expected}"),
            ));
        }
        let retried: Vec<&Mutation> = mutations
            .iter()
            .filter(|m| ack_before.is_some_and(|a| m.id <= a))
            .collect();
        self.check_state(user, Some((client_id, &retried)))
    }

    /// Compares every stored record of `user` (tombstones included) with the model.
    pub fn check_state(
        &mut self,
        user: usize,
        push: Option<(&str, &[&Mutation])>,
    ) -> Result<(), Violation> {
        let stored = self.stored(user)?;
        let model = &self.models[user];
        let keys: std::collections::BTreeSet<&Key> =
            stored.keys().chain(model.records.keys()).collect();
        for key in keys {
            let real = stored.get(key);
            let want = model.records.get(key).map(|(r, _)| r);
            if real == want {
                continue;
            }
            let detail = format!(
                "user {user} {}/{}: server holds {}, protocol says {}",
                key.0,
                key.1,
                show(real),
                show(want)
            );
            if let Some((client_id, retried)) = push {
                if let Some(m) = retried
                    .iter()
                    .find(|m| m.collection == key.0 && m.key == key.1)
                {
                    return Err(Violation::new(
                        "3 retries apply once",
                        format!(
                            "mutation {} of {client_id} at or below its ack was applied again; {detail}",
                            m.id
                        ),
                    ));
                }
            }
            if key.0 == MERGED {
                return Err(Violation::new(
                    "2 per-field merge: in any order, once, each field its newest write",
                    detail,
                ));
            }
            return Err(Violation::new("2 newest write wins, nothing lost", detail));
        }
        Ok(())
    }

    /// For one record of [`MERGED`]: the stamp of the write its field `field` holds now, and
    /// the stamps of every write of that field the server took (a write names a field when
    /// its list does, or, in the whole-record format, when its value holds it).
    pub fn field_writes(&self, user: usize, key: &Key, field: &str) -> Option<(Stamp, Vec<Stamp>)> {
        let (merged, writes) = self.models[user].merged.get(key)?;
        let holder = merged.stamps.fields.get(field)?.clone();
        let taken = writes
            .iter()
            .filter(|(_, value, fields)| match fields {
                Some(names) => names.iter().any(|n| n == field),
                None => value.as_ref().is_some_and(|v| v.contains_key(field)),
            })
            .map(|(stamp, _, _)| stamp.clone())
            .collect();
        Some((holder, taken))
    }

    /// Whether the server took a write of `key` for `user` that sets `field`, stamped `at` or
    /// later (as its client stamped it, before any clamp): any write or delete of the key for
    /// `""`, a delete for `"*"`, else a write naming the field (or holding it, in the
    /// whole-record format) or a delete. Or, stamped earlier, the write itself (`value`), or a
    /// delete of the key taken after it was `written` (true time), which that delete may have
    /// replaced before it was sent: a gone tab's writes that a tab taking them over at its
    /// sign-in stamps before a write it queued as the guest.
    pub fn took(
        &self,
        user: usize,
        key: &Key,
        field: &str,
        (at, value, written): (u64, Option<&str>, u64),
    ) -> bool {
        self.models[user].taken.iter().any(|t| {
            let sets = match (field, &t.sets) {
                ("", _) | (_, None) => true,
                ("*", Some(_)) => false,
                (f, Some(names)) => names.iter().any(|n| n == f),
            };
            let itself = match (value, &t.value) {
                (Some(v), Some(taken)) => v == taken,
                (_, None) => t.at >= written,
                (None, Some(_)) => false,
            };
            t.key == *key && (sets && t.stamped >= at || itself)
        })
    }

    /// Whether the server took a write of `key` setting the sticky field `true` (its `true`
    /// then stays, `check_sticky_kept`).
    pub fn took_sticky_true(&self, user: usize, key: &Key) -> bool {
        self.models[user]
            .taken
            .iter()
            .any(|t| t.key == *key && sets_sticky_true(t.sets.as_deref(), t.value.as_deref()))
    }

    /// Checks every user's stored state (after a restart).
    pub fn check_all(&mut self) -> Result<(), Violation> {
        for user in 0..self.models.len() {
            self.check_state(user, None)?;
        }
        Ok(())
    }

    /// The stored records of `user`, tombstones included, read from the store directly.
    pub fn stored(&self, user: usize) -> Result<BTreeMap<Key, Record>, Violation> {
        let store = self
            .store()
            .map_err(|e| Violation::new("sim", e.to_string()))?;
        let id = self.user_ids[user];
        let page = self
            .runtime
            .block_on(store.pull(id, Some(0), 1_000_000.into()))
            .map_err(|e| Violation::new("sim", format!("read store: {e}")))?;
        Ok(page
            .changes
            .into_iter()
            .map(|c| {
                (
                    (c.collection, c.key),
                    Record {
                        value: c.value,
                        updated_at: c.updated_at,
                        client_id: c.client_id,
                    },
                )
            })
            .collect())
    }

    /// What a client at `cursor` (one the server issued to `user` on a complete answer) must
    /// hold of `key` from the server, when its last change is at or below the cursor: the
    /// record (`Some(Some)`), or, for one whose tombstone was compacted, nothing or a
    /// tombstone (`Some(None)`). Every later pull continues from the cursor: a `304` says
    /// nothing changed, so what a client holds otherwise is never corrected. `None` when the
    /// cursor says nothing of the key (a change after it, or a cursor unknown here).
    pub fn at_cursor(&self, user: usize, cursor: &str, key: &Key) -> Option<Option<&Record>> {
        let model = &self.models[user];
        let at = *model.cursors.get(cursor)?;
        match model.records.get(key) {
            Some((record, version)) => (*version <= at).then_some(Some(record)),
            None => model.compacted.get(key).filter(|v| **v <= at).map(|_| None),
        }
    }

    /// Invariant 4 for a `304`: nothing changed after the cursor.
    fn check_not_modified(&self, user: usize, since: Option<&str>) -> Result<(), Violation> {
        let model = &self.models[user];
        let Some(at) = since.and_then(|c| model.cursors.get(c)) else {
            return Ok(());
        };
        if let Some((key, (record, _))) = model.records.iter().find(|(_, (_, v))| v > at) {
            return Err(Violation::new(
                "4 incremental pull misses nothing",
                format!(
                    "pull from cursor {} answered 304, but {}/{} changed after it (now {})",
                    since.unwrap_or("-"),
                    key.0,
                    key.1,
                    show(Some(record))
                ),
            ));
        }
        Ok(())
    }

    /// Invariant 4 for a page: an incremental page holds every change after its cursor; a
    /// full page is the whole state, tombstones included; a cursor names one state.
    fn check_page(
        &mut self,
        user: usize,
        since: Option<&str>,
        page: &Page,
    ) -> Result<(), Violation> {
        let model = &mut self.models[user];
        let got: HashMap<(&str, &str), &sinkron_core::Change> = page
            .changes
            .iter()
            .map(|c| ((c.collection.as_str(), c.key.as_str()), c))
            .collect();
        let as_record = |c: &sinkron_core::Change| Record {
            value: c.value.clone(),
            updated_at: c.updated_at,
            client_id: c.client_id.clone(),
        };
        if since.is_none() || page.reset {
            if !page.more {
                for (key, (record, _)) in &model.records {
                    let real = got
                        .get(&(key.0.as_str(), key.1.as_str()))
                        .map(|c| as_record(c));
                    if real.as_ref() != Some(record) {
                        return Err(Violation::new(
                            "4 incremental pull misses nothing",
                            format!(
                                "full page (cursor {}) has {}/{} as {}, state is {}",
                                page.cursor,
                                key.0,
                                key.1,
                                show(real.as_ref()),
                                show(Some(record))
                            ),
                        ));
                    }
                }
            }
        } else if let Some(&at) = since.and_then(|c| model.cursors.get(c)) {
            for (key, (record, version)) in &model.records {
                if *version <= at {
                    continue;
                }
                let real = got
                    .get(&(key.0.as_str(), key.1.as_str()))
                    .map(|c| as_record(c));
                if real.is_none() && page.more {
                    continue;
                }
                if real.as_ref() != Some(record) && !page.more {
                    return Err(Violation::new(
                        "4 incremental pull misses nothing",
                        format!(
                            "page after cursor {} (to {}) has {}/{} as {}, but it changed after \
                             the cursor to {}",
                            since.unwrap_or("-"),
                            page.cursor,
                            key.0,
                            key.1,
                            show(real.as_ref()),
                            show(Some(record))
                        ),
                    ));
                }
            }
        }
        if !page.more {
            let version = model.version;
            if let Some(&named) = model.cursors.get(&page.cursor) {
                if named != version {
                    return Err(Violation::new(
                        "4 incremental pull misses nothing",
                        format!(
                            "cursor {} was issued again after changes committed since it was \
                             first issued: a client at it misses them",
                            page.cursor
                        ),
                    ));
                }
            } else {
                model.cursors.insert(page.cursor.clone(), version);
            }
        }
        Ok(())
    }
}

pub fn show(record: Option<&Record>) -> String {
    match record {
        None => "nothing".into(),
        Some(r) => format!(
            "{}@{}/{}",
            r.value.as_deref().unwrap_or("null"),
            r.updated_at,
            r.client_id
        ),
    }
}

fn build_request(token: &str, request: &Request) -> Result<HttpRequest<Body>, String> {
    let bearer = format!("Bearer {token}");
    let http = match request {
        Request::Pull { last_sync } => {
            let mut builder = HttpRequest::get(match last_sync {
                Some(c) => format!("/api/user/me?lastSync={c}"),
                None => "/api/user/me".to_owned(),
            })
            .header(header::AUTHORIZATION, bearer);
            if let Some(c) = last_sync {
                builder = builder.header(header::IF_NONE_MATCH, format!("\"{c}\""));
            }
            builder.body(Body::empty())
        }
        Request::Push {
            client_id,
            mutations,
            last_sync,
            ..
        } => {
            let body = PushRequest {
                client_id: client_id.clone(),
                mutations: mutations.clone(),
                last_sync: last_sync.clone(),
            };
            let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            HttpRequest::post("/api/user/me/changes")
                .header(header::AUTHORIZATION, bearer)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(bytes))
        }
        Request::EndSession { token } => HttpRequest::post("/api/auth/logout")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty()),
    };
    http.map_err(|e| e.to_string())
}

/// A directory for the run's database: in memory (`/dev/shm`) where there is one, since the
/// store syncs every commit to disk; `SINKRON_SIM_DIR` overrides.
fn temp_dir() -> Result<tempfile::TempDir, String> {
    let base = std::env::var_os("SINKRON_SIM_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            shm.is_dir().then_some(shm)
        })
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("sinkron-sim-")
        .tempdir_in(&base)
        .map_err(|e| format!("temp dir in {}: {e}", base.display()))
}
