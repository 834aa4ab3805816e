//! The push rule and the page rule, written once for every backend.
//!
//! A backend reads what a push needs and hands it to a [`Planner`], which decides everything
//! else: which mutations are retries (at or below the client's ack) and which reuse an id,
//! the clamp of future stamps, writes made before an erasure, newest-wins, the versions, the
//! collection caps' evictions, the storage quota and the client's new mark. The backend then
//! writes the resulting [`Plan`] in its transaction. The steps, each fed by one kind of read:
//!
//! 1. [`Planner::new`] with the user's row ([`UserState`]) and the client's [`ClientMark`];
//! 2. [`Planner::merge`] with the stored rows of the records [`Planner::keys`] names;
//! 3. [`Merge::evict`] with the live records of each collection [`Merge::caps`] names, as
//!    stored before the push;
//! 4. [`Merge::finish`]: the [`Plan`], or the error that refuses the whole batch.
//!
//! A pull asks [`PageStart::new`] where its page starts and cuts its rows with
//! [`Page::from_rows`].
//!
//! It must not do I/O or know SQL: it is tested without a database. The store's planted bugs
//! (`sinkron_core::planted`, feature `planted-bugs`) are planted here, so they hit every
//! backend.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use sinkron_core::merge::{self, Merged, Policy, Stamp};
use sinkron_core::{Change, Mutation, Record};

#[cfg(feature = "planted-bugs")]
use sinkron_core::planted::{planted, Bug};

use super::{Page, PushBatch, PushOutcome, StoreError};

/// What a user's live records take: how many hold a value, and those values' bytes.
/// Tombstones take nothing (they are compacted away).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub records: i64,
    pub bytes: i64,
}

impl Usage {
    /// What a record takes when it holds `value` (`None`: absent, or a tombstone).
    pub fn of(value: Option<usize>) -> Usage {
        match value {
            Some(bytes) => Usage {
                records: 1,
                bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            },
            None => Usage::default(),
        }
    }

    /// The change when a record that held `before` comes to hold `after`.
    pub fn change(before: Option<usize>, after: Option<usize>) -> Usage {
        let (b, a) = (Usage::of(before), Usage::of(after));
        Usage {
            records: a.records - b.records,
            bytes: a.bytes - b.bytes,
        }
    }

    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            records: self.records.saturating_add(other.records),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// The most a user may store. Every backend applies this one rule to a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub records: u64,
    pub bytes: u64,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota {
        records: u64::MAX,
        bytes: u64::MAX,
    };

    /// Refuses a batch that takes the user from `before` by `change` past the quota in a
    /// measure that the batch grows. A batch that grows nothing (deletes, smaller values)
    /// passes even above the quota, so a user over it (after the quota was lowered) can
    /// always make room.
    pub fn check(&self, before: Usage, change: Usage) -> Result<(), StoreError> {
        let after = before.plus(change);
        let past = |now: i64, limit: u64| u64::try_from(now).is_ok_and(|n| n > limit);
        if change.records > 0 && past(after.records, self.records) {
            return Err(StoreError::QuotaExceeded {
                what: "records",
                limit: self.records,
            });
        }
        if change.bytes > 0 && past(after.bytes, self.bytes) {
            return Err(StoreError::QuotaExceeded {
                what: "bytes",
                limit: self.bytes,
            });
        }
        Ok(())
    }
}

/// A live record of a capped collection, as the cap orders them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    pub updated_at: u64,
    pub client_id: String,
    /// The value's bytes.
    pub bytes: usize,
}

/// Most records holding a value that a user keeps in one collection (history grows with
/// every episode played). Every backend applies this one rule after a push's writes: past
/// the cap, the oldest records (by `updatedAt`, then client id and key) become tombstones
/// with the same `updatedAt` and client id — so devices drop them at their next pull, and a
/// newer write of the same record (played again) wins over the tombstone as over any older
/// write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cap {
    pub collection: String,
    pub max: u64,
}

impl Cap {
    /// Whether a user with `records` live records in all can be past this cap: a push
    /// reads a capped collection only then.
    pub fn may_pass(&self, records: i64) -> bool {
        u64::try_from(records).is_ok_and(|n| n > self.max)
    }

    /// Which of `live` to evict, `excess` of them: the oldest by `updatedAt`, then client id
    /// and key. `live` holds at least the `excess` oldest live records of the collection
    /// after the push (it may hold more, in any order).
    pub fn evict(&self, mut live: Vec<Held>, excess: usize) -> Vec<Held> {
        live.sort_by(|a, b| {
            (a.updated_at, a.client_id.as_bytes(), a.key.as_bytes()).cmp(&(
                b.updated_at,
                b.client_id.as_bytes(),
                b.key.as_bytes(),
            ))
        });
        live.truncate(excess);
        live
    }
}

/// A collection whose records are merged field by field ([`sinkron_core::merge`]), with its
/// sticky fields. Every backend applies this one rule to a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMerge {
    pub collection: String,
    pub policy: Policy,
}

/// What the server remembers of a client id: the highest mutation id it took (the ack)
/// and the highest `updatedAt`, as sent, of every mutation it took under that id (`None`
/// for a client acknowledged before this was kept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientMark {
    pub ack: u64,
    pub stamp_max: Option<u64>,
}

/// `updatedAt` as stored in a 64-bit signed column.
fn stamp(m: &Mutation) -> u64 {
    m.updated_at.min(i64::MAX as u64)
}

/// How many records holding a value a push adds to each collection it writes (may be
/// negative).
#[derive(Clone, Debug, Default)]
struct Counts<'a>(Vec<(&'a str, i64)>);

impl<'a> Counts<'a> {
    fn add(&mut self, collection: &'a str, n: i64) {
        match self.0.iter_mut().find(|c| c.0 == collection) {
            Some(c) => c.1 += n,
            None => self.0.push((collection, n)),
        }
    }
}

/// Of the records of one collection a push touches: how many held a value before it, how many
/// hold one after its writes, and how many it writes over a stored value.
#[derive(Clone, Copy, Debug, Default)]
struct Touched {
    before: i64,
    after: i64,
    rewritten: i64,
}

impl Touched {
    /// [`Merge::unread`] for these records.
    fn unread(self, cap: &Cap) -> i64 {
        // The excess is `live - before + after - max`; each record written over a stored
        // value may be one of the oldest read and then replaced by its write, so that many
        // more are read.
        #[allow(unused_mut)]
        let mut rewritten = self.rewritten;
        #[cfg(feature = "planted-bugs")]
        if planted(Bug::CapReadsTooFew) {
            rewritten = 0;
        }
        i64::try_from(cap.max).unwrap_or(i64::MAX) + self.before - self.after - rewritten
    }

    /// [`Merge::needed`] for these records.
    fn needed(self, cap: &Cap, live: i64) -> i64 {
        (live - self.unread(cap)).clamp(0, live.max(0))
    }
}

impl PushBatch<'_> {
    /// Refuses a batch whose ids at or below the client's ack carry writes the server never
    /// took under them. Every retry of a mutation the server took carries its original
    /// `updatedAt`, at most the client's `stamp_max`; a mutation stamped later is a new write
    /// under a reused id (a client that lost its numbering), which skipping as a retry would
    /// lose without a trace. The client renumbers it and pushes again.
    pub fn check_retries(&self, mark: ClientMark) -> Result<(), StoreError> {
        let Some(stamp_max) = mark.stamp_max else {
            return Ok(());
        };
        let reused = self
            .mutations
            .iter()
            .any(|m| m.id <= mark.ack && stamp(m) > stamp_max);
        if reused {
            return Err(StoreError::IdsReused { ack: mark.ack });
        }
        Ok(())
    }

    /// The client's mark once this batch is taken.
    pub fn mark_after(&self, before: ClientMark) -> ClientMark {
        let highest = self.mutations.iter().map(|m| m.id).max().unwrap_or(0);
        let stamps = self.mutations.iter().map(stamp).max();
        ClientMark {
            ack: before.ack.max(highest),
            stamp_max: before.stamp_max.max(stamps),
        }
    }
}

/// What a push reads of its user first (on PostgreSQL, locking the row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserState {
    /// The user's version: the last one handed out.
    pub version: u64,
    /// What the user's live records take now.
    pub usage: Usage,
    /// After an erasure of the user's subject: writes stamped at or before this are taken and
    /// not stored (0: none).
    pub writes_after: u64,
}

/// A stored record as the merge sees it: its newest-wins order key and its value's size; for
/// a collection merged per field ([`PushBatch::merge_policy`]) also its value and stamps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub updated_at: u64,
    pub client_id: String,
    /// The value's bytes; `None` for a tombstone.
    pub bytes: Option<usize>,
    /// The value (per-field collections only).
    pub value: Option<String>,
    /// The stamps column (per-field collections only; `None` for a record stored whole).
    pub stamps: Option<String>,
}

impl Stored {
    /// The record as the per-field merge holds it ([`Merged::from_stored`]).
    fn merged(&self) -> Result<Merged, StoreError> {
        let own = Stamp(self.updated_at, self.client_id.clone());
        Merged::from_stored(self.value.as_deref(), self.stamps.as_deref(), own)
            .map_err(|e| StoreError::Other(format!("a stored record: {e}")))
    }
}

/// A record a push writes, replacing what is stored under its collection and key (an
/// upsert). A plan writes each record at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row<'a> {
    pub collection: &'a str,
    pub key: Cow<'a, str>,
    /// `None`: a tombstone.
    pub value: Option<Cow<'a, str>>,
    pub updated_at: u64,
    pub client_id: Cow<'a, str>,
    pub version: u64,
    /// The per-field stamps ([`Stamps`] as JSON) of a collection merged per field; `None`
    /// for a record stored whole.
    pub stamps: Option<String>,
}

/// What a push writes and answers, decided by [`Planner`] and [`Merge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    /// The records to write, each once: the last winning write of each record of the batch,
    /// and the tombstones of the caps' evictions.
    pub rows: Vec<Row<'a>>,
    /// The user's version after the push (the user's row is written when `rows` is not
    /// empty).
    pub version: u64,
    /// What the push adds to the user's usage (may be negative).
    pub usage: Usage,
    /// What it adds to the number of records holding a value in each collection, where that
    /// changes (`collection_counts`, which a cap reads).
    pub counts: Vec<(&'a str, i64)>,
    /// The client's new mark, when it changed.
    pub mark: Option<ClientMark>,
    /// The highest mutation id taken for this client, now or before.
    pub ack: u64,
    /// How many mutations won.
    pub applied: usize,
}

impl Plan<'_> {
    /// The push's outcome, with the page read after the plan was written.
    pub fn outcome(&self, page: Option<Page>) -> PushOutcome {
        PushOutcome {
            ack: self.ack,
            version: self.version,
            applied: self.applied,
            page,
        }
    }
}

/// The first step of a push: the batch, the user and the client's mark are known; the
/// stored rows of [`Planner::keys`] are to be read.
#[derive(Debug)]
pub struct Planner<'a> {
    batch: PushBatch<'a>,
    user: UserState,
    mark: ClientMark,
    /// The records the batch may write, each once, in the batch's order.
    keys: Vec<(&'a str, &'a str)>,
    /// Each record's place in `keys`.
    index: HashMap<(&'a str, &'a str), usize>,
    /// The mutations to merge, with their record's place in `keys`.
    pending: Vec<(&'a Mutation, usize)>,
}

impl<'a> Planner<'a> {
    /// Refuses a batch that reuses ids ([`PushBatch::check_retries`]); keeps the mutations
    /// above the client's ack that were not made before an erasure of the user.
    pub fn new(
        batch: PushBatch<'a>,
        user: UserState,
        mark: ClientMark,
    ) -> Result<Self, StoreError> {
        batch.check_retries(mark)?;
        let ack = mark.ack;
        #[cfg(feature = "planted-bugs")]
        let ack = if planted(Bug::NoDedupe) { 0 } else { ack };
        let mutations = batch.mutations;
        let mut keys = Vec::with_capacity(mutations.len());
        let mut index = HashMap::with_capacity(mutations.len());
        let mut pending = Vec::with_capacity(mutations.len());
        for m in mutations.iter().filter(|m| m.id > ack) {
            // Made before the user was erased: taken, not stored.
            if user.writes_after > 0 && batch.clamp(m) <= user.writes_after {
                continue;
            }
            let id = (m.collection.as_str(), m.key.as_str());
            let place = *index.entry(id).or_insert_with(|| {
                keys.push(id);
                keys.len() - 1
            });
            pending.push((m, place));
        }
        Ok(Self {
            batch,
            user,
            mark,
            keys,
            index,
            pending,
        })
    }

    /// The records whose stored rows [`Planner::merge`] needs, as `(collection, key)`.
    pub fn keys(&self) -> &[(&'a str, &'a str)] {
        &self.keys
    }

    /// Merges the batch newest-wins with what is stored: `stored[i]` is the row of
    /// `keys()[i]`, `None` when there is none. Each winner takes the user's next version. A
    /// collection merged per field merges each write into the record field by field
    /// ([`sinkron_core::merge`]); a write that changes nothing there is taken and not stored.
    /// Refuses the batch when a merged record would grow past a value's most bytes.
    pub fn merge(self, mut stored: Vec<Option<Stored>>) -> Result<Merge<'a>, StoreError> {
        debug_assert_eq!(stored.len(), self.keys.len(), "one answer per key");
        stored.resize(self.keys.len(), None);
        let batch = self.batch;
        let mut slots = Vec::with_capacity(self.keys.len());
        for (s, (collection, _)) in stored.into_iter().zip(&self.keys) {
            let per_field = batch.merge_policy(collection).is_some();
            slots.push(match s {
                Some(s) => Slot {
                    held: s.bytes,
                    was_held: s.bytes.is_some(),
                    merged: per_field.then(|| s.merged()).transpose()?,
                    current: Some(Record {
                        value: None,
                        updated_at: s.updated_at,
                        client_id: s.client_id,
                    }),
                    row: None,
                },
                None => Slot {
                    merged: per_field.then(Merged::default),
                    ..Slot::default()
                },
            });
        }
        let mut version = self.user.version;
        let mut applied = 0;
        let mut change = Usage::default();
        let mut rows: Vec<Row<'a>> = Vec::with_capacity(self.keys.len());
        // The collections this push adds a record to.
        let mut grew: Vec<&'a str> = Vec::new();
        let mut counts = Counts::default();
        let mut clamped = 0;
        for &(m, place) in &self.pending {
            let slot = &mut slots[place];
            let incoming = Record {
                value: None,
                updated_at: batch.clamp_in_order(m, &mut clamped),
                client_id: batch.client_id.to_owned(),
            };
            let (value, stamps, updated_at, client_id) = match &mut slot.merged {
                Some(merged) => {
                    let policy = batch.merge_policy(&m.collection).unwrap_or(&NO_POLICY);
                    match merge_write(merged, m, &incoming, policy)? {
                        Some(written) => written,
                        None => continue,
                    }
                }
                None => {
                    let current = slot.current.as_ref();
                    #[cfg(feature = "planted-bugs")]
                    let current = current.filter(|_| !planted(Bug::ArrivalOrder));
                    if current.is_some_and(|c| !incoming.wins_over(c)) {
                        continue;
                    }
                    let value = m.value.as_deref().map(Cow::Borrowed);
                    let client_id = Cow::Borrowed(batch.client_id);
                    (value, None, incoming.updated_at, client_id)
                }
            };
            version += 1;
            applied += 1;
            #[allow(unused_mut)]
            let mut row_version = version;
            #[cfg(feature = "planted-bugs")]
            if planted(Bug::TimestampCursor) {
                row_version = incoming.updated_at;
                version = (version - 1).max(row_version);
            }
            let size = value.as_ref().map(|v| v.len());
            slot.current = Some(Record {
                value: None,
                updated_at,
                client_id: client_id.to_string(),
            });
            let row = Row {
                collection: &m.collection,
                key: Cow::Borrowed(&m.key),
                value,
                updated_at,
                client_id,
                version: row_version,
                stamps,
            };
            // A later winner in the same batch replaces the earlier one: only the last write
            // of a record is stored, with its (higher) version, as applying them one by one
            // would.
            match slot.row {
                Some(i) => rows[i] = row,
                None => {
                    slot.row = Some(rows.len());
                    rows.push(row);
                }
            }
            let delta = Usage::change(slot.held, size);
            change = change.plus(delta);
            counts.add(&m.collection, delta.records);
            if slot.held.is_none() && size.is_some() && !grew.contains(&m.collection.as_str()) {
                grew.push(&m.collection);
            }
            slot.held = size;
        }
        // Only a collection that gained a record can have passed its cap, and only if the
        // user holds more records than the cap in all.
        let records = self.user.usage.plus(change).records;
        let caps = batch
            .caps
            .iter()
            .filter(|cap| grew.contains(&cap.collection.as_str()) && cap.may_pass(records))
            .collect();
        Ok(Merge {
            batch,
            user: self.user,
            mark: self.mark,
            index: self.index,
            slots,
            rows,
            version,
            applied,
            change,
            counts,
            caps,
        })
    }
}

static NO_POLICY: Policy = Policy { sticky: Vec::new() };

/// What a write of a record stored with its per-field stamps leaves to store: its value, its
/// stamps and its own newest-wins key; `None` when it changes nothing.
type MergedRow<'a> = (Option<Cow<'a, str>>, Option<String>, u64, Cow<'a, str>);

/// Merges `m` into `merged` field by field.
fn merge_write<'a>(
    merged: &mut Merged,
    m: &Mutation,
    incoming: &Record,
    policy: &Policy,
) -> Result<Option<MergedRow<'a>>, StoreError> {
    let invalid = |e: serde_json::Error| StoreError::Other(format!("a pushed value: {e}"));
    let value: Option<serde_json::Map<String, serde_json::Value>> = m
        .value
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(invalid)?;
    let stamp = Stamp(incoming.updated_at, incoming.client_id.clone());
    let write = merge::Write {
        value: value.as_ref(),
        fields: m.fields.as_deref(),
        stamp: &stamp,
    };
    if !merged.apply(write, policy) {
        return Ok(None);
    }
    let (text, stamps) = merged.to_stored().map_err(invalid)?;
    if let Some(bytes) = text.as_ref().map(String::len) {
        if bytes > sinkron_core::limits::VALUE_BYTES_MAX {
            return Err(StoreError::MergedTooLarge {
                mutation: m.id,
                collection: m.collection.clone(),
                key: m.key.clone(),
                bytes,
            });
        }
    }
    let Stamp(updated_at, client_id) = merged.stamps.newest().cloned().unwrap_or(stamp);
    Ok(Some((
        text.map(Cow::Owned),
        Some(stamps),
        updated_at,
        Cow::Owned(client_id),
    )))
}

/// What the merge knows of one record of the batch.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// Its newest-wins order key, as stored or as written by this batch.
    current: Option<Record>,
    /// Its fields and stamps, in a collection merged per field.
    merged: Option<Merged>,
    /// Its value's bytes (`None`: absent, or a tombstone).
    held: Option<usize>,
    /// Whether it held a value as stored before this push.
    was_held: bool,
    /// Its place in the plan's rows, once written.
    row: Option<usize>,
}

/// The second step of a push: the batch is merged; the caps of [`Merge::caps`] are to be
/// applied.
#[derive(Debug)]
pub struct Merge<'a> {
    batch: PushBatch<'a>,
    user: UserState,
    mark: ClientMark,
    index: HashMap<(&'a str, &'a str), usize>,
    slots: Vec<Slot>,
    rows: Vec<Row<'a>>,
    version: u64,
    applied: usize,
    change: Usage,
    counts: Counts<'a>,
    caps: Vec<&'a Cap>,
}

impl<'a> Merge<'a> {
    /// The caps to apply, each with [`Merge::unread`] and [`Merge::evict`].
    pub fn caps(&self) -> Vec<&'a Cap> {
        self.caps.clone()
    }

    /// How many records hold a value in all the user's collections before this push
    /// (`users.records`): what their counts must add up to.
    pub fn records_before(&self) -> i64 {
        self.user.usage.records
    }

    /// How many of the live records of `cap`'s collection, as stored before this push,
    /// [`Merge::evict`] needs not see: given `live` of them, it needs the oldest
    /// `live - unread` (none when that is not positive), in the cap's order. A push reads
    /// only those, so its work does not grow with what the user keeps.
    pub fn unread(&self, cap: &Cap) -> i64 {
        self.held_in(&cap.collection).unread(cap)
    }

    /// How many of the oldest live records of `cap`'s collection [`Merge::evict`] needs, given
    /// `live` of them as stored: `live - unread`, from none to `live`. (A push whose own new
    /// records pass the cap needs no more stored ones than there are.)
    pub fn needed(&self, cap: &Cap, live: i64) -> i64 {
        self.held_in(&cap.collection).needed(cap, live)
    }

    /// Applies `cap` given `live`, how many records of its collection held a value as stored
    /// before this push, and `oldest`, at least the oldest `live - unread` of them
    /// ([`Merge::unread`]) in any order: the oldest past the cap, once this push's writes
    /// are in, become tombstones, each taking the user's next version.
    pub fn evict(&mut self, cap: &'a Cap, live: i64, mut oldest: Vec<Held>) {
        let collection = cap.collection.as_str();
        let held = self.held_in(collection);
        // Fewer than it needs: an older record than those handed may be missing, and evicting
        // from them could take a newer one. Evict nothing; the cap is applied again at the
        // next push that adds a record.
        let needed = held.needed(cap, live);
        if i64::try_from(oldest.len()).unwrap_or(i64::MAX) < needed {
            return;
        }
        let max = i64::try_from(cap.max).unwrap_or(i64::MAX);
        let excess = usize::try_from(live - held.before + held.after - max).unwrap_or(0);
        if excess == 0 {
            return;
        }
        let written: HashSet<&str> = self
            .written_in(collection)
            .map(|r| r.key.as_ref())
            .collect();
        if !written.is_empty() {
            oldest.retain(|h| !written.contains(h.key.as_str()));
            oldest.extend(self.written_in(collection).filter_map(|r| {
                Some(Held {
                    key: r.key.to_string(),
                    updated_at: r.updated_at,
                    client_id: r.client_id.to_string(),
                    bytes: r.value.as_ref()?.len(),
                })
            }));
        }
        for h in cap.evict(oldest, excess) {
            self.version += 1;
            self.change = self.change.plus(Usage::change(Some(h.bytes), None));
            self.counts.add(collection, -1);
            let place = self.index.get(&(collection, h.key.as_str())).copied();
            let tombstone = Row {
                collection,
                key: Cow::Owned(h.key),
                value: None,
                updated_at: h.updated_at,
                client_id: Cow::Owned(h.client_id),
                version: self.version,
                // A tombstone without stamps reads, per field, as a delete at its own stamp.
                stamps: None,
            };
            match place.and_then(|p| self.slots[p].row) {
                Some(i) => self.rows[i] = tombstone,
                None => self.rows.push(tombstone),
            }
        }
    }

    /// What the records of `collection` this push touches hold, before and after it.
    fn held_in(&self, collection: &str) -> Touched {
        let slots = self
            .index
            .iter()
            .filter(|((c, _), _)| *c == collection)
            .map(|(_, &place)| &self.slots[place]);
        slots.fold(Touched::default(), |n, slot| Touched {
            before: n.before + i64::from(slot.was_held),
            after: n.after + i64::from(slot.held.is_some()),
            rewritten: n.rewritten + i64::from(slot.was_held && slot.row.is_some()),
        })
    }

    /// The rows this push writes in `collection`.
    fn written_in<'s>(&'s self, collection: &'s str) -> impl Iterator<Item = &'s Row<'a>> + 's {
        self.rows.iter().filter(move |r| r.collection == collection)
    }

    /// The plan, unless the batch takes the user past the quota ([`Quota::check`]).
    pub fn finish(self) -> Result<Plan<'a>, StoreError> {
        self.batch.quota.check(self.user.usage, self.change)?;
        let after = self.batch.mark_after(self.mark);
        Ok(Plan {
            rows: self.rows,
            version: self.version,
            usage: self.change,
            counts: self.counts.0.into_iter().filter(|c| c.1 != 0).collect(),
            mark: (after != self.mark).then_some(after),
            ack: after.ack,
            applied: self.applied,
        })
    }
}

impl PushBatch<'_> {
    /// How `collection` is merged per field, if it is.
    pub fn merge_policy(&self, collection: &str) -> Option<&Policy> {
        self.merges
            .iter()
            .find(|f| f.collection == collection)
            .map(|f| &f.policy)
    }

    /// A mutation's `updatedAt` clamped to the server's bound (to tell whether it was made
    /// before an erasure).
    pub fn clamp(&self, m: &Mutation) -> u64 {
        m.updated_at.min(self.updated_at_max)
    }

    /// A mutation's `updatedAt` as stored, `clamped` being how many writes of the batch
    /// before it were stamped past the bound: its own, up to the bound; past it, the bound
    /// plus `clamped` milliseconds (never more than its own). So a client's writes keep their
    /// order when clamped: a record switched off and on again in one push ends on, where two
    /// equal stamps would keep the first.
    pub fn clamp_in_order(&self, m: &Mutation, clamped: &mut u64) -> u64 {
        if m.updated_at <= self.updated_at_max {
            return m.updated_at;
        }
        #[cfg(feature = "planted-bugs")]
        if planted(Bug::ClampKeepsFirst) {
            return self.updated_at_max;
        }
        let at = self.updated_at_max.saturating_add(*clamped);
        *clamped += 1;
        at.min(m.updated_at)
    }
}

/// How much one page (of a pull, or of a push's answer) may hold: at most `changes` changes,
/// and about `bytes` bytes of them as JSON ([`wire_bytes`]) — but always the first change,
/// whatever its size, so every state can be sent. Bytes bound how long a slow link takes to
/// read a page: answers a client reads too slowly are cut (by the client's own request
/// timeout, or the node's deadline on what it writes) and asked for again whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit {
    pub changes: usize,
    pub bytes: usize,
}

impl From<usize> for PageLimit {
    /// At most `changes` changes, whatever their bytes.
    fn from(changes: usize) -> Self {
        PageLimit {
            changes,
            bytes: usize::MAX,
        }
    }
}

/// The rows of a page query as they are read (ordered by version, at most `limit.changes + 1`
/// of them): enough once the page's bytes are spent and the row after the cut is in, which
/// says `more`. So a pull of large values reads about a page's bytes, not all of its rows.
pub struct PageRows {
    limit: PageLimit,
    bytes: usize,
    changes: Vec<Change>,
}

impl PageRows {
    pub fn new(limit: PageLimit) -> Self {
        PageRows {
            limit,
            bytes: 0,
            changes: Vec::new(),
        }
    }

    /// Takes the next row; `false` once no more are needed.
    pub fn take(&mut self, change: Change) -> bool {
        self.bytes = self.bytes.saturating_add(wire_bytes(&change));
        self.changes.push(change);
        // (The first row goes whatever its size: the one after it says whether more follow.)
        !(self.bytes > self.limit.bytes && self.changes.len() > 1)
    }

    /// The page ([`Page::from_rows`]).
    pub fn page(self, version: u64, start: PageStart) -> Page {
        Page::from_rows(self.changes, self.limit, version, start)
    }
}

/// About what a change takes in an answer's JSON: its strings and value as stored, and what
/// surrounds them (the field names, two numbers and punctuation, about 110 bytes); escapes,
/// rare in keys and ids, are not counted.
pub fn wire_bytes(change: &Change) -> usize {
    const AROUND: usize = 110;
    let value = change.value.as_ref().map_or(4, String::len);
    AROUND + change.collection.len() + change.key.len() + change.client_id.len() + value
}

/// Where a page starts: after the client's cursor when it lies between the user's horizon
/// and version; inside a whole state, after the place its cursor names while no tombstone
/// newer than the whole state's start was compacted; otherwise from the start, as the whole
/// state (every stored record, tombstones included), which is a reset when a cursor was given.
/// A cursor ahead of the version cannot come from this server (callers reject it); it is
/// treated like one behind the horizon rather than answered with nothing forever. Every
/// backend pages by this rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageStart {
    /// The page holds the rows above this version.
    pub after: u64,
    /// The page is the whole state and the client must drop what it holds.
    pub reset: bool,
    /// The page is (part of) the whole state: a cursor into it is a [`WHOLE_STATE`] cursor.
    pub whole: bool,
    /// The user's version when the whole state began (its first page), when known: carried
    /// in its cursors (see [`WholeCursor`]).
    pub began: Option<u64>,
}

/// Cursors at or above this name a place inside a whole state being sent in pages: the rows
/// above a version, whatever the compaction horizon below it. Without them a whole state
/// whose page ended below the horizon would be started again at each next page, for ever
/// (the cursor of a page is its last row's version, which may lie below the horizon when
/// tombstones above it were compacted).
pub use sinkron_core::protocol::WHOLE_STATE;

/// A place in a whole state, as its cursor names it: the rows above `after`, of a whole state
/// that began at the user's version `began`. The cursor is `2^62 + 2^61 + began · 2^32 + after`
/// when `began` is below 2^29 and `after` below 2^32 (every user short of half a billion
/// versions); else, like the cursors of servers before it, `2^62 + after`, whose start is
/// unknown. The start is what makes a page from long ago safe to go on from: the deletes
/// since it began are on later pages as tombstones, unless compaction took them (the
/// horizon passed `began`), and then the whole state starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WholeCursor {
    pub after: u64,
    pub began: Option<u64>,
}

const WITH_START: u64 = WHOLE_STATE | 1 << 61;
const AFTER_BITS: u32 = 32;
const BEGAN_MAX: u64 = (1 << 29) - 1;
const AFTER_MAX: u64 = (1 << AFTER_BITS) - 1;

impl WholeCursor {
    /// The place a cursor names, if it is a whole state's.
    pub fn parse(cursor: u64) -> Option<WholeCursor> {
        if (WITH_START..1 << 63).contains(&cursor) {
            Some(WholeCursor {
                after: cursor & AFTER_MAX,
                began: Some((cursor >> AFTER_BITS) & BEGAN_MAX),
            })
        } else if (WHOLE_STATE..WITH_START).contains(&cursor) {
            Some(WholeCursor {
                after: cursor - WHOLE_STATE,
                began: None,
            })
        } else {
            None
        }
    }

    pub fn encode(self) -> u64 {
        match self.began {
            Some(began) if began <= BEGAN_MAX && self.after <= AFTER_MAX => {
                WITH_START | began << AFTER_BITS | self.after
            }
            _ => WHOLE_STATE + self.after,
        }
    }

    /// Whether this server could have issued it to a user at `version`.
    pub fn valid(self, version: u64) -> bool {
        self.after <= version && self.began.is_none_or(|b| b <= version)
    }
}

impl PageStart {
    pub fn new(since: Option<u64>, horizon: u64, version: u64) -> PageStart {
        let from_start = |reset| PageStart {
            after: 0,
            reset,
            whole: true,
            began: Some(version),
        };
        match since {
            Some(cursor) if cursor >= WHOLE_STATE => match WholeCursor::parse(cursor) {
                Some(place) if place.valid(version) && place.began.is_none_or(|b| b >= horizon) => {
                    PageStart {
                        after: place.after,
                        reset: false,
                        whole: true,
                        began: place.began,
                    }
                }
                _ => from_start(true),
            },
            Some(cursor) if (horizon..=version).contains(&cursor) => PageStart {
                after: cursor,
                reset: false,
                whole: false,
                began: None,
            },
            Some(_) => from_start(true),
            None => from_start(false),
        }
    }
}

impl Page {
    /// A version the user is known to have reached: the cursor, or the version inside a
    /// [`WHOLE_STATE`] cursor (which is no version itself).
    pub fn version_seen(&self) -> u64 {
        match WholeCursor::parse(self.cursor) {
            Some(place) => place.after.max(place.began.unwrap_or(0)),
            None => self.cursor,
        }
    }

    /// Cuts the rows of a page query (ordered by version, at most `limit.changes + 1` of them)
    /// into a page: as many rows as `limit` allows, in order (the first one whatever its size),
    /// `more` when any row was left out, and the cursor where the next pull starts — the last
    /// returned row's version when more follow (a [`WHOLE_STATE`] cursor inside a whole
    /// state), else the user's `version`.
    pub fn from_rows(
        mut changes: Vec<Change>,
        limit: PageLimit,
        version: u64,
        start: PageStart,
    ) -> Page {
        let mut bytes = 0usize;
        let fits = changes
            .iter()
            .take(limit.changes)
            .position(|change| {
                bytes = bytes.saturating_add(wire_bytes(change));
                bytes > limit.bytes
            })
            .map_or(limit.changes, |at| at.max(1));
        let more = changes.len() > fits;
        changes.truncate(fits);
        let cursor = match changes.last() {
            Some(last) if more && start.whole => WholeCursor {
                after: last.version,
                began: start.began,
            }
            .encode(),
            Some(last) if more => last.version,
            _ => version,
        };
        Page {
            changes,
            cursor,
            more,
            reset: start.reset,
        }
    }
}

#[cfg(test)]
mod tests;
