//! The merged view: what one tab shows, the newest (by `(updatedAt, clientId)`) of its layers.
//!
//! * `confirmed`: what the server holds, each record tagged with the server's per-user
//!   `version`; server data replaces it only with a higher version, so a stale reply or a late
//!   message from another tab can never roll it back;
//! * `outbox`: this tab's writes not yet acknowledged, coalesced per key;
//! * `acked`: this tab's acknowledged writes, kept until an answer shows the server state
//!   after them, so they never flicker out of view;
//! * `foreign`: other tabs' writes not yet acknowledged, learned from their broadcasts.
//!
//! The view decides what each layer holds and what a reader sees; it emits nothing. The
//! engine decides when to send, persist and notify.

use alloc::string::String;
use alloc::vec::Vec;

use crate::protocol::{Change, Mutation};
use crate::record::{Record, RecordKey};

/// Records by key, in a list sorted by key: found by binary search, iterated in key order
/// (the same on every run and platform, which keeps simulations reproducible), and a
/// fraction of a hash table's size in WebAssembly. A user's records number in the
/// thousands at most; an insert moves at most that many entries.
#[derive(Debug)]
struct Map<V> {
    entries: Vec<(RecordKey, V)>,
}

impl<V> Default for Map<V> {
    fn default() -> Self {
        Map {
            entries: Vec::new(),
        }
    }
}

impl<V> Map<V> {
    fn find(&self, key: &RecordKey) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    fn get(&self, key: &RecordKey) -> Option<&V> {
        let i = self.find(key).ok()?;
        self.entries.get(i).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &RecordKey) -> Option<&mut V> {
        let i = self.find(key).ok()?;
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    fn insert(&mut self, key: RecordKey, value: V) {
        match self.find(&key) {
            Ok(i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = value;
                }
            }
            Err(i) => self.entries.insert(i, (key, value)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&RecordKey, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&RecordKey, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    fn retain(&mut self, mut keep: impl FnMut(&RecordKey, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

/// A record the server holds, with the version it holds it at.
#[derive(Clone, Debug)]
struct Confirmed {
    record: Record,
    version: u64,
    /// Dropped from the device's storage when it was full (it stays in view); never picked
    /// again until stored again.
    evicted: bool,
    /// A page of the whole state being received holds the key ([`View::begin_whole`]).
    whole: bool,
}

/// A write not yet acknowledged: this tab's, or another tab's.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) key: RecordKey,
    pub(super) record: Record,
    /// The fields the write sets ([`Mutation::fields`]); `None`: the whole record. Only this
    /// tab's writes have them: another tab's are only shown here.
    pub(super) fields: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub(super) struct Acked {
    /// The request whose answer acknowledged the write.
    pub(super) by: u64,
    /// The first request id sent after the acknowledgement arrived. Ids order sends, not
    /// answers: a request sent earlier (a pull beside a keepalive flush, say) may have been
    /// answered from a state before the write.
    pub(super) after: u64,
    pub(super) pending: Pending,
}

/// The layers of one tab's records. See the module documentation.
#[derive(Debug, Default)]
pub(super) struct View {
    confirmed: Map<Confirmed>,
    pub(super) outbox: Vec<Pending>,
    /// A few entries at most (one per key other tabs are writing right now): a list is
    /// smaller than another map in the browser build.
    pub(super) foreign: Vec<Pending>,
    /// This tab's acknowledged writes, kept in view until an answer shows the server state
    /// after them (so they never flicker out of view): the acknowledging push's own answer,
    /// or the answer to a request sent after the acknowledgement arrived.
    pub(super) acked: Vec<Acked>,
}

impl View {
    /// The confirmed copy of a record (tombstones included).
    pub(super) fn confirmed(&self, key: &RecordKey) -> Option<&Record> {
        self.confirmed.get(key).map(|s| &s.record)
    }

    /// The newest version of a record this tab knows of, tombstones included. (Of this
    /// tab's writes of it, queued or acknowledged, the newest, not the last: a gone tab's
    /// taken over may be older than one queued before them.)
    pub(super) fn get(&self, key: &RecordKey) -> Option<&Record> {
        let mut best = self.confirmed.get(key).map(|s| &s.record);
        // Plain loops: iterator chains cost the browser build more.
        for p in &self.outbox {
            newer(&mut best, p, key);
        }
        for a in &self.acked {
            newer(&mut best, &a.pending, key);
        }
        for f in &self.foreign {
            newer(&mut best, f, key);
        }
        best
    }

    /// The live records of a collection (tombstones left out), in no particular order; with
    /// `only`, that key's alone (if live).
    pub(super) fn collection(&self, collection: &str, only: Option<&str>) -> Vec<(&str, &Record)> {
        let mut out: Vec<(&str, &Record)> = Vec::new();
        // Each key once: confirmed keys first, then unconfirmed ones not seen before. Plain
        // loops: iterator chains cost the browser build more.
        let mut keys: Vec<&RecordKey> = Vec::new();
        for (key, _) in &self.confirmed.entries {
            if key.collection == collection {
                keys.push(key);
            }
        }
        let mut unconfirmed: Vec<&Pending> = Vec::new();
        for p in &self.outbox {
            unconfirmed.push(p);
        }
        for a in &self.acked {
            unconfirmed.push(&a.pending);
        }
        for p in &self.foreign {
            unconfirmed.push(p);
        }
        for p in unconfirmed {
            let key = &p.key;
            // (`keys` holds the collection's confirmed keys already.)
            if key.collection == collection && !keys.contains(&key) {
                keys.push(key);
            }
        }
        for key in keys {
            if only.is_some_and(|k| k != key.key) {
                continue;
            }
            if let Some(record) = self.get(key).filter(|r| !r.is_tombstone()) {
                out.push((key.key.as_str(), record));
            }
        }
        out
    }

    /// This tab's oldest unacknowledged mutations: at most `n`, and no more than a body of
    /// about `bytes_max` holds (each counted by [`Pending::approximate_bytes`]), the first
    /// whatever its size. (One loop for every use: each iterator chain would be another copy
    /// in the browser build.)
    pub(super) fn outbox(&self, n: usize, bytes_max: usize) -> Vec<Mutation> {
        let mut bytes = 0;
        let mut out = Vec::new();
        for p in self.outbox.iter().take(n) {
            bytes += p.approximate_bytes();
            if bytes > bytes_max && !out.is_empty() {
                break;
            }
            out.push(p.mutation());
        }
        out
    }

    /// The highest version among the confirmed records (0 for none): the device holds the
    /// server's state at least that far, with or without a cursor stored (none is while a
    /// whole state arrives, whose pages are stored as they come).
    pub(super) fn top_version(&self) -> u64 {
        let mut top = 0;
        for (_, stored) in self.confirmed.iter() {
            top = top.max(stored.version);
        }
        top
    }

    /// Every confirmed record, as the change that stores it.
    pub(super) fn confirmed_changes(&self) -> impl Iterator<Item = Change> + '_ {
        self.confirmed.iter().map(|(key, stored)| Change {
            collection: key.collection.clone(),
            key: key.key.clone(),
            value: stored.record.value.clone(),
            updated_at: stored.record.updated_at,
            client_id: stored.record.client_id.clone(),
            version: stored.version,
        })
    }

    /// Forgets what the server holds (a cursor it refused: none of it can be trusted).
    pub(super) fn clear_confirmed(&mut self) {
        self.confirmed.clear();
    }

    /// Forgets every layer but this tab's own unsent writes.
    pub(super) fn clear_all_but_outbox(&mut self) {
        self.confirmed.clear();
        self.foreign.clear();
        self.acked.clear();
    }

    /// What to drop from a full storage: the oldest quarter (by `updatedAt`, at least one) of
    /// the confirmed records of `collection` still stored. They are marked evicted.
    pub(super) fn evict_oldest(&mut self, collection: &str) -> Vec<RecordKey> {
        let candidate = |(k, s): &(RecordKey, Confirmed)| k.collection == collection && !s.evicted;
        let mut stored = 0;
        for entry in &self.confirmed.entries {
            stored += usize::from(candidate(entry));
        }
        // Picked one by one rather than sorted: a sort would cost the browser build more
        // than this rare moment costs in time.
        let mut keys = Vec::new();
        for _ in 0..stored.div_ceil(4) {
            let mut oldest: Option<&mut (RecordKey, Confirmed)> = None;
            for entry in self.confirmed.entries.iter_mut() {
                if candidate(entry)
                    && oldest
                        .as_ref()
                        .is_none_or(|o| entry.1.record.updated_at < o.1.record.updated_at)
                {
                    oldest = Some(entry);
                }
            }
            if let Some((key, confirmed)) = oldest {
                confirmed.evicted = true;
                keys.push(key.clone());
            }
        }
        keys
    }

    /// Stores a server change unless a later version is already confirmed; returns whether
    /// it was stored. Writes it shows the server holds leave the other layers.
    pub(super) fn store(&mut self, change: Change) -> bool {
        let key = RecordKey::new(change.collection, change.key);
        if self
            .confirmed
            .get(&key)
            .is_some_and(|s| s.version >= change.version)
        {
            return false;
        }
        let record = Record {
            value: change.value,
            updated_at: change.updated_at,
            client_id: change.client_id,
        };
        #[cfg(feature = "planted-bugs")]
        if crate::planted::planted(crate::planted::Bug::PullOverwritesPending) {
            self.outbox.retain(|p| p.key != key);
        }
        // Another tab's write is settled once the server holds it or something newer. The
        // server may hold it with an earlier `updatedAt` (clamped: it was stamped by a clock
        // running ahead), so "holds it" is the same writer and value, whatever the stamp:
        // otherwise the unclamped copy would outrank newer writes in this view forever.
        if self
            .foreign_get(&key)
            .is_some_and(|f| !f.record.wins_over(&record) || same_write(&f.record, &record))
        {
            self.forget_foreign(&key);
        }
        // This tab's acknowledged writes, once their exact stored copy arrives. Not by
        // `same_write`: an earlier write of this tab with the same value (a delete, a `{}`)
        // matches that too, and would hide the later one. A clamped copy is settled instead
        // by the answer that shows the state after the push (`settle_acked`).
        self.acked
            .retain(|a| !(a.pending.key == key && a.pending.record == record));
        self.confirmed.insert(
            key,
            Confirmed {
                record,
                version: change.version,
                evicted: false,
                whole: false,
            },
        );
        true
    }

    /// A whole state starts arriving (in pages): no key is known to be in it yet.
    pub(super) fn begin_whole(&mut self) {
        for stored in self.confirmed.values_mut() {
            stored.whole = false;
        }
    }

    /// A page of the whole state holds the key: it is in the server state, at this version or
    /// at the newer one we hold.
    pub(super) fn seen_in_whole(&mut self, key: &RecordKey) {
        if let Some(stored) = self.confirmed.get_mut(key) {
            stored.whole = true;
        }
    }

    /// The whole state has arrived, up to the server's version `covered`: drops every record
    /// none of its pages held, unless held above `covered` (it came from a newer answer).
    /// Returns the keys dropped. The storage is rewritten whole after it (see
    /// `Engine::apply_changes`), or had nothing evicted.
    pub(super) fn end_whole(&mut self, covered: u64) -> Vec<RecordKey> {
        let mut gone = Vec::new();
        self.confirmed.retain(|key, s| {
            let keep = s.whole || s.version > covered;
            if !keep {
                gone.push(key.clone());
            }
            s.evicted = false;
            keep
        });
        gone
    }

    /// Another tab received the last page of a whole state: drops what it found gone, unless
    /// held above `covered`.
    pub(super) fn drop_gone(&mut self, gone: &[RecordKey], covered: u64) {
        for (key, stored) in self.confirmed.iter_mut() {
            stored.whole = !gone.contains(key);
        }
        self.end_whole(covered);
    }

    /// Another tab wrote a record; returns whether it replaced the other tabs' write held
    /// for the key (it is newer, or there was none).
    pub(super) fn hear_write(&mut self, id: u64, key: &RecordKey, record: Record) -> bool {
        let newer = self
            .foreign_get(key)
            .is_none_or(|f| record.wins_over(&f.record));
        if newer {
            self.forget_foreign(key);
            self.foreign.push(Pending {
                id,
                key: key.clone(),
                record,
                fields: None,
            });
        }
        newer
    }

    /// Another tab's writes up to `ack` were acknowledged; returns the keys they held.
    pub(super) fn hear_ack(&mut self, client_id: &str, ack: u64) -> Vec<RecordKey> {
        let mut keys = Vec::new();
        self.foreign.retain(|f| {
            let keep = !(f.record.client_id == client_id && f.id <= ack);
            if !keep {
                keys.push(f.key.clone());
            }
            keep
        });
        keys
    }

    /// Drops this tab's writes up to `ack`; returns whether any were dropped. Writes the
    /// server took (`by`: the acknowledging request, and the next request id) stay in view
    /// until its state is known.
    pub(super) fn acknowledge(&mut self, ack: u64, by: Option<(u64, u64)>) -> bool {
        let before = self.outbox.len();
        let mut kept = Vec::with_capacity(self.outbox.len());
        for p in core::mem::take(&mut self.outbox) {
            if p.id > ack {
                kept.push(p);
            } else if let Some((request, after)) = by {
                self.acked.push(Acked {
                    by: request,
                    after,
                    pending: p,
                });
            }
        }
        self.outbox = kept;
        self.outbox.len() != before
    }

    /// Forgets the acknowledged writes an answer to request `sent` shows the server state
    /// after (acknowledged by it, `by`, or before it was sent); returns their keys. Numbers,
    /// not a closure: each closure would be another copy of this in the browser build.
    pub(super) fn settle_acked(&mut self, by: Option<u64>, sent: u64) -> Vec<RecordKey> {
        let mut keys = Vec::new();
        self.acked.retain(|a| {
            let keep = !(by == Some(a.by) || sent >= a.after);
            if !keep {
                keys.push(a.pending.key.clone());
            }
            keep
        });
        keys
    }

    fn forget_foreign(&mut self, key: &RecordKey) {
        self.foreign.retain(|f| &f.key != key);
    }

    /// Another tab's unacknowledged write to `key`, if any.
    fn foreign_get(&self, key: &RecordKey) -> Option<&Pending> {
        self.foreign.iter().find(|f| &f.key == key)
    }
}

/// Takes `p`'s record as `best` if it is of `key` and newer.
fn newer<'a>(best: &mut Option<&'a Record>, p: &'a Pending, key: &RecordKey) {
    if &p.key == key && best.is_none_or(|b| p.record.wins_over(b)) {
        *best = Some(&p.record);
    }
}

impl Pending {
    pub(super) fn mutation(&self) -> Mutation {
        Mutation {
            id: self.id,
            collection: self.key.collection.clone(),
            key: self.key.key.clone(),
            value: self.record.value.clone(),
            updated_at: self.record.updated_at,
            fields: self.fields.clone(),
        }
    }

    /// The size of this mutation in a JSON body, roughly but never below the real size.
    pub(super) fn approximate_bytes(&self) -> usize {
        let mut bytes = 96
            + self.key.collection.len()
            + self.key.key.len() * 6
            + self.record.value.as_ref().map_or(4, String::len);
        // `"fields":[…]`, each name quoted and escaped at worst.
        if let Some(fields) = &self.fields {
            for name in fields {
                bytes += 12 + name.len() * 6;
            }
        }
        bytes
    }
}

/// Whether `stored` is `written` as the server keeps it: the same writer and value; the
/// server may have clamped the timestamp.
fn same_write(written: &Record, stored: &Record) -> bool {
    written.client_id == stored.client_id
        && written.value == stored.value
        && stored.updated_at <= written.updated_at
}
