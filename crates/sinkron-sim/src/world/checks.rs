//! The invariants the world checks as it runs (`DESIGN.md`): isolation of scopes (5) on every
//! view and every stored record, read-your-writes per tab, who may send and pull (6), mutation
//! ids never reused (7), an offline position continuing what its device knew (after every
//! push), a page opening from no older state than its device stored; and, after healing,
//! convergence (1): every signed-in tab and device shows exactly the server's state. The
//! server's own invariants (2, 3, 4) are checked in `server.rs`.

use std::collections::{BTreeMap, HashMap};

use sinkron_core::engine::{Status, SyncError};
use sinkron_core::merge::Stamp;
use sinkron_core::protocol::WHOLE_STATE;
use sinkron_core::{Persist, Record, Request};

use super::{Event, TabId, World, Written};
use crate::server::{sets_sticky_true, show, Key, MERGED};
use crate::Violation;

/// Which scope a record may be in: a user's account, or one device's guest data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ScopeTag {
    User(usize),
    Guest(usize),
}

impl World {
    pub(super) fn scope_tag(&self, d: usize, scope: Option<&str>) -> Result<ScopeTag, Violation> {
        match scope {
            None => Ok(ScopeTag::Guest(d)),
            Some(u) => self
                .server
                .user_index(u)
                .map(ScopeTag::User)
                .ok_or_else(|| Violation::new("5 isolation", format!("unknown user id {u}"))),
        }
    }

    pub(super) fn allowed(&self, client_id: &str, tag: ScopeTag) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|tags| tags.contains(&tag))
    }

    /// Invariant 5 on the tab's view, read-your-writes, and the state at the cursor.
    pub(super) fn check_view(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        self.check_cursor(d, t)?;
        let tab = &self.devices[d].tabs[t];
        let tag = self.scope_tag(d, tab.engine.user())?;
        for key in &self.keys {
            if let Some(record) = tab.engine.get(key) {
                if !self.allowed(&record.client_id, tag) {
                    return Err(Violation::new(
                        "5 isolation",
                        format!(
                            "tab {} of device {d} in scope {tag:?} shows {}/{} = {} written in \
                             another scope ({:?})",
                            tab.id,
                            key.collection,
                            key.key,
                            show(Some(record)),
                            self.clients.get(&record.client_id)
                        ),
                    ));
                }
            }
        }
        let tab = &mut self.devices[d].tabs[t];
        if tab.floors_client != tab.engine.client_id() {
            tab.floors.clear();
            tab.floors_client = tab.engine.client_id().to_owned();
        }
        for (key, floor) in &tab.floors {
            let view = tab.engine.get(key);
            // A delete reads back as nothing there, which any delete or nothing shows (a copy
            // of an earlier delete of the same key may stand in for it until the next answer).
            // Anything else must be a version at least as new as the write, deletes included:
            // every answer carries them, so a live record older than the delete is caught.
            let deleted = floor.is_tombstone() && view.is_none_or(Record::is_tombstone);
            if !deleted && view.is_none_or(|v| floor.wins_over(v)) {
                return Err(Violation::new(
                    "read your writes",
                    format!(
                        "tab {} of device {d} wrote {}/{} = {} but shows {}",
                        tab.id,
                        key.collection,
                        key.key,
                        show(Some(floor)),
                        show(view)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A page that opens from a server-rendered snapshot older than what its device stored
    /// (`stored`: the cursor the tab restored, and how far the device's state goes, that
    /// cursor's version or a stored record's above it: a page the browser kept from an
    /// earlier render) does not take it: the tab would show, store and pull from an older
    /// state than it had, and a record deleted since could come back. A snapshot whose cursor
    /// is a place inside a whole state counts as older than any stored version.
    pub(super) fn check_opened_from(
        &self,
        d: usize,
        t: usize,
        stored: (Option<String>, u64),
    ) -> Result<(), Violation> {
        let tab = &self.devices[d].tabs[t];
        let now = tab.engine.cursor();
        let (restored, version) = stored;
        let taken = now != restored.as_deref();
        if !taken || version == 0 || cursor_version(now) >= version {
            return Ok(());
        }
        Err(Violation::new(
            "a page opens from no older state than its device stored",
            format!(
                "tab {} of device {d} opened at cursor {} over the stored version {version}",
                tab.id,
                now.unwrap_or("none")
            ),
        ))
    }

    /// What a tab holds from the server is, for every record last changed at or below its
    /// cursor, that change ([`crate::server::Server::at_cursor`]): otherwise no later pull
    /// corrects it. Not while the tab receives a whole state: its pages hold records until
    /// its end says which are gone. Every other tab of the device is checked meanwhile, the
    /// ones that hear those pages included.
    fn check_cursor(&self, d: usize, t: usize) -> Result<(), Violation> {
        let tab = &self.devices[d].tabs[t];
        if tab.engine.receiving_whole_state() {
            return Ok(());
        }
        let (Ok(ScopeTag::User(u)), Some(cursor)) =
            (self.scope_tag(d, tab.engine.user()), tab.engine.cursor())
        else {
            return Ok(());
        };
        for key in &self.keys {
            let model_key = (key.collection.clone(), key.key.clone());
            let Some(server) = self.server.at_cursor(u, cursor, &model_key) else {
                continue;
            };
            let held = tab.engine.confirmed(key);
            let same = match server {
                Some(record) => held == Some(record),
                None => held.is_none_or(Record::is_tombstone),
            };
            if !same {
                return Err(Violation::new(
                    "4 incremental pull misses nothing",
                    format!(
                        "tab {} of device {d} at cursor {cursor} holds {}/{} = {}; the server \
                         changed it last at or before that cursor, to {}",
                        tab.id,
                        key.collection,
                        key.key,
                        show(held),
                        server.map_or("a compacted tombstone".into(), |r| show(Some(r)))
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Invariant 5 on what a tab stores: a write of a client only in the scopes that client
    /// has been in.
    pub(super) fn check_persist(&self, d: usize, tab: TabId, p: &Persist) -> Result<(), Violation> {
        let (scope, client) = match p {
            // Device-wide, and never made here (see `persist`).
            Persist::EndingSessions { .. } | Persist::Adopted { .. } => return Ok(()),
            Persist::Record { scope, change } => (scope.clone(), Some(change.client_id.clone())),
            // An empty outbox holds nothing of anyone's.
            Persist::Outbox {
                scope,
                client_id,
                mutations,
                ..
            } if !mutations.is_empty() => (scope.clone(), Some(client_id.clone())),
            Persist::Outbox { scope, .. } => (scope.clone(), None),
            Persist::DropOutbox { scope, .. } => (scope.clone(), None),
            Persist::ClearRecords { scope }
            | Persist::Cursor { scope, .. }
            | Persist::Evict { scope, .. }
            | Persist::Wipe { scope, .. } => (scope.clone(), None),
        };
        if let Some(client) = client {
            let tag = self.scope_tag(d, scope.as_deref())?;
            if !self.allowed(&client, tag) {
                return Err(Violation::new(
                    "5 isolation",
                    format!(
                        "tab {tab} of device {d} persists data of client {client} ({:?}) in \
                         scope {tag:?}",
                        self.clients.get(&client)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Nothing lost at sign-out: once a tab signed in has taken over the outboxes of `scope`
    /// (its user's: what an earlier sign-out left parked, writes not yet confirmed, and what
    /// its tabs gone left; or the guest's: what the guest's tabs gone left), the device
    /// stores none that holds writes there but those of its tabs signed in as that user or
    /// still the guest (they follow with theirs): as far as that tab (`t`) can see them
    /// (another tab's writes reach its copy of the storage a little later; the leader takes
    /// those over as it pulls). One may stay whose every key the tab now queues a write of
    /// (taken, and coalesced with what it queued): where its copy may lag behind a write it
    /// heard the gone tab make, the stored copy is left for the next pull to take again, whole
    /// (`Engine::unpark`; simulation seed 132,258). "No write lost" checks what comes of them.
    pub(super) fn check_unparked(
        &self,
        d: usize,
        t: usize,
        scope: &Option<String>,
    ) -> Result<(), Violation> {
        let device = &self.devices[d];
        let Some(user) = device.tabs[t].engine.user() else {
            return Ok(());
        };
        if scope.as_deref().is_some_and(|s| s != user) {
            return Ok(());
        }
        let Some(stored) = device.tabs[t].view.get(scope) else {
            return Ok(());
        };
        let live = |client: &str| {
            device.tabs.iter().any(|t| {
                t.engine.user().is_none_or(|u| u == user) && t.engine.client_id() == client
            })
        };
        let queued = device.tabs[t].engine.outbox();
        let taken = |m: &sinkron_core::Mutation| {
            (queued.iter()).any(|q| (&q.collection, &q.key) == (&m.collection, &m.key))
        };
        for (client, (_, mutations)) in &stored.outboxes {
            if !mutations.is_empty() && !live(client) && !mutations.iter().all(taken) {
                return Err(Violation::new(
                    "nothing lost at sign-out",
                    format!(
                        "tab {} of device {d} (user {user}) took over the outboxes of scope \
                         {scope:?}, but {} writes of client {client} stay there",
                        device.tabs[t].id,
                        mutations.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Invariant 6: only a signed-in tab sends (its request belongs to `scope`, the user it
    /// had when it sent), and only the visible holder of its device's lock pulls. Returns the
    /// sender's user id.
    pub(super) fn check_request<'a>(
        &self,
        d: usize,
        t: usize,
        request: &Request,
        scope: Option<&'a str>,
    ) -> Result<&'a str, Violation> {
        let tab = &self.devices[d].tabs[t];
        let tab_id = tab.id;
        let Some(user_id) = scope else {
            return Err(Violation::new(
                "6 guests make no requests",
                format!("guest tab {tab_id} of device {d} sent {request:?}"),
            ));
        };
        if let Request::Pull { .. } = request {
            if !tab.visible {
                return Err(Violation::new(
                    "6 hidden tabs do not poll",
                    format!("hidden tab {tab_id} of device {d} pulled"),
                ));
            }
            let holder = self.devices[d].lock.holder.map(|h| h.0);
            if holder != Some(tab_id) {
                return Err(Violation::new(
                    "6 one poller per device",
                    format!("tab {tab_id} of device {d} pulled; the lock holder is {holder:?}"),
                ));
            }
        }
        Ok(user_id)
    }

    /// Invariant 7: a mutation id, once sent under a client id, always carries the same
    /// write. A client that reused one (a reloaded tab that forgot its numbering) would have
    /// its new write skipped by the server as a retry of the old one: lost without a trace.
    pub(super) fn check_ids_not_reused(
        &mut self,
        d: usize,
        tab: TabId,
        request: &Request,
    ) -> Result<(), Violation> {
        let Request::Push {
            client_id,
            mutations,
            ..
        } = request
        else {
            return Ok(());
        };
        for m in mutations {
            match self.sent.get(&(client_id.clone(), m.id)) {
                Some(earlier) if earlier != m => {
                    return Err(Violation::new(
                        "7 mutation ids are never reused",
                        format!(
                            "tab {tab} of device {d} sent mutation {} of client {client_id} as \
                             {}/{} = {} at {}, but it was sent before as {}/{} = {} at {}",
                            m.id,
                            m.collection,
                            m.key,
                            m.value.as_deref().unwrap_or("null"),
                            m.updated_at,
                            earlier.collection,
                            earlier.key,
                            earlier.value.as_deref().unwrap_or("null"),
                            earlier.updated_at
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.sent.insert((client_id.clone(), m.id), m.clone());
                }
            }
        }
        Ok(())
    }

    // ----- liveness -----

    /// `Some(())` once nothing is in flight, nothing is pending, and every signed-in tab and
    /// device shows exactly the server's state of its user.
    pub(super) fn converged(&mut self) -> Result<Option<()>, Violation> {
        let quiet = self
            .events
            .values()
            .all(|e| matches!(e, Event::Heal { .. } | Event::Restart));
        if !quiet {
            return Ok(None);
        }
        for device in &self.devices {
            for tab in &device.tabs {
                if busy(&tab.engine.status()) {
                    return Ok(None);
                }
            }
        }
        Ok(self.divergence_detail()?.is_none().then_some(()))
    }

    pub(super) fn divergence(&mut self) -> Result<String, Violation> {
        let busy: Vec<String> = self
            .devices
            .iter()
            .enumerate()
            .flat_map(|(d, device)| {
                device.tabs.iter().filter_map(move |tab| {
                    let s = tab.engine.status();
                    busy(&s).then(|| {
                        format!(
                            "d{d} t{}: {} pending, syncing={} ({:?})",
                            tab.id, s.pending, s.syncing, s.error
                        )
                    })
                })
            })
            .collect();
        let detail = self.divergence_detail()?;
        Ok(match (detail, busy.is_empty()) {
            (Some(d), true) => d,
            (Some(d), false) => format!("{d}; busy: {}", busy.join("; ")),
            (None, false) => format!("busy: {}", busy.join("; ")),
            (None, true) => "messages still in flight".to_owned(),
        })
    }

    /// The first difference between a signed-in tab (or its device's storage) and the server.
    pub(super) fn divergence_detail(&mut self) -> Result<Option<String>, Violation> {
        let mut states: HashMap<usize, BTreeMap<Key, Record>> = HashMap::new();
        let live = |r: Option<&Record>| r.filter(|r| r.value.is_some()).cloned();
        for (d, device) in self.devices.iter().enumerate() {
            for tab in &device.tabs {
                let Some(user_id) = tab.engine.user() else {
                    continue;
                };
                let user = self
                    .server
                    .user_index(user_id)
                    .ok_or_else(|| Violation::new("sim", "unknown user"))?;
                if let std::collections::hash_map::Entry::Vacant(e) = states.entry(user) {
                    e.insert(self.server.stored(user)?);
                }
                let server = &states[&user];
                for key in &self.keys {
                    let k = (key.collection.clone(), key.key.clone());
                    let want = live(server.get(&k));
                    let got = live(tab.engine.get(key));
                    if want != got {
                        return Ok(Some(format!(
                            "tab {} of device {d} (user {user}) shows {}/{} = {}, server has {}",
                            tab.id,
                            key.collection,
                            key.key,
                            show(got.as_ref()),
                            show(want.as_ref())
                        )));
                    }
                }
                let stored = device
                    .storage
                    .get(&Some(user_id.to_owned()))
                    .map(|s| &s.records);
                for key in &self.keys {
                    let k = (key.collection.clone(), key.key.clone());
                    let want = live(server.get(&k));
                    let got = stored
                        .and_then(|r| r.get(&k))
                        .map(|c| Record {
                            value: c.value.clone(),
                            updated_at: c.updated_at,
                            client_id: c.client_id.clone(),
                        })
                        .filter(|r| r.value.is_some());
                    if want != got {
                        return Ok(Some(format!(
                            "storage of device {d} (user {user}) holds {}/{} = {}, server has {}",
                            key.collection,
                            key.key,
                            show(got.as_ref()),
                            show(want.as_ref())
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    /// An offline position continues what its device knew: a playback position written cut
    /// off (offline, or with the tab's requests failing while the browser says online), from
    /// the copy its tab last synced, never holds the field over one written on another device
    /// (not cut off) and stamped after that sync and that copy, which the tab could not have
    /// seen. (Stamped "after the sync" allowing for how far ahead of true time the tab's
    /// corrected clock could be, see `Device::lowest_skew_ms`.) Checked on the record a push
    /// wrote, as the server took it.
    pub(super) fn check_offline_position(&self, user: usize, key: &Key) -> Result<(), Violation> {
        let Some((holder, taken)) = self.server.field_writes(user, key, "position") else {
            return Ok(());
        };
        let held = self
            .positions
            .iter()
            .find(|w| w.user == user && w.key == *key && w.stamp == holder);
        let Some((held, as_of)) = held.and_then(|w| Some((w, w.as_of?))) else {
            return Ok(());
        };
        let later = self.positions.iter().find(|other| {
            other.user == user
                && other.key == *key
                && other.device != held.device
                && other.connected
                && other.stamp.0 > as_of + 1
                && taken.contains(&other.stamp)
        });
        match later {
            Some(other) => Err(Violation::new(
                "offline writes continue what the device knew",
                format!(
                    "{}/{}: the position device {} wrote cut off at {} (stamp {}, as of {}) \
                     holds over device {}'s written at {} (stamp {})",
                    key.0,
                    key.1,
                    held.device,
                    held.at,
                    held.stamp.0,
                    as_of,
                    other.device,
                    other.at,
                    other.stamp.0
                ),
            )),
            None => Ok(()),
        }
    }

    /// No write lost: once every device has converged, the server took every write the app
    /// made in an account, unless a newer one of the same tab replaced it before it was sent
    /// (for a collection merged per field: each field's newest write, or a delete after it).
    /// Checked on the newest write of each key (of each field): the server must have taken
    /// one at least as new, as stamped (before any clamp), or, where the guest rule stamped
    /// it earlier at a sign-in, the write itself, a later delete, or a later guest write of it
    /// (`Server::took`, `World::superseded_as_guest`). A write
    /// it did not take is lost unless a device still keeps it for the account (parked by a
    /// sign-out, for the user's next sign-in there). Floors only check what a tab still open shows: a write dropped
    /// by a tab that took over a closed one's, or at a sign-out, shows nowhere, and only this
    /// finds it.
    pub(super) fn check_none_lost(&self) -> Result<(), Violation> {
        // The newest write of each (user, key, field); a whole record's field is "".
        let mut newest: BTreeMap<(usize, &Key, &str), &Written> = BTreeMap::new();
        // A guest's writes count once the device signs in (`World::sign_in`).
        for w in &self.written {
            let Some(user) = w.user else { continue };
            let fields: Vec<&str> = match (&w.fields, w.key.0 == MERGED) {
                (Some(names), true) => names.iter().map(String::as_str).collect(),
                // A delete of a record merged per field: the record's own place, "*".
                (None, true) => vec!["*"],
                (_, false) => vec![""],
            };
            for field in fields {
                let slot = newest.entry((user, &w.key, field)).or_insert(w);
                if w.stamp > slot.stamp {
                    *slot = w;
                }
            }
        }
        for (&(user, key, field), w) in &newest {
            let at = w.stamp.0;
            // A tab that takes a gone tab's writes over sends them under its own client id,
            // with their times: a write is found by its time.
            let write = (at, w.value.as_deref(), w.at);
            if self.server.took(user, key, field, write)
                || self.kept(user, key, write)
                || self.deleted_after(user, key, w)
                || self.superseded_as_guest(user, key, field, w)
            {
                continue;
            }
            let held = (self.server.stored(user)?.get(key))
                .map(|r| Stamp(r.updated_at, r.client_id.clone()));
            let what = match field {
                "" => String::new(),
                "*" => " (a delete)".to_owned(),
                f => format!(" (field {f})"),
            };
            return Err(Violation::new(
                "no write lost",
                format!(
                    "user {user} {}/{}: device {} wrote at {} as {}{what}, which the server \
                     never took: it holds {}, and no device keeps the write",
                    key.0,
                    key.1,
                    w.device,
                    w.stamp.0,
                    w.stamp.1,
                    held.map_or("nothing".to_owned(), |h| format!("{} as {}", h.0, h.1)),
                ),
            ));
        }
        Ok(())
    }

    /// A sticky field keeps `true` once any write set it (`--merge-fields history:completed`),
    /// whatever came after: every write in an account that set it (but those the user
    /// discarded at a sign-out) reached the server, or a device keeps it for the account's
    /// next sign-in there. "No write lost" asks for each field's newest write only; a later
    /// write of the field (an un-mark, a delete) that took the `true`'s place unsent, and was
    /// sent instead, passes it, and only this finds that the server never kept the `true`.
    pub(super) fn check_sticky_kept(&self) -> Result<(), Violation> {
        for w in &self.written {
            let Some(user) = w.user else { continue };
            if w.key.0 != MERGED || !sets_sticky_true(w.fields.as_deref(), w.value.as_deref()) {
                continue;
            }
            let scope = Some(self.server.user_id(user));
            let kept = self.devices.iter().any(|device| {
                device.storage.get(&scope).is_some_and(|stored| {
                    stored.outboxes.values().flat_map(|(_, m)| m).any(|m| {
                        (&m.collection, &m.key) == (&w.key.0, &w.key.1)
                            && sets_sticky_true(m.fields.as_deref(), m.value.as_deref())
                    })
                })
            });
            if self.server.took_sticky_true(user, &w.key) || kept {
                continue;
            }
            return Err(Violation::new(
                "sticky true kept",
                format!(
                    "user {user} {}/{}: device {} set {} at {} as {}, which the server never \
                     took (nor anything else setting it), and no device keeps it",
                    w.key.0,
                    w.key.1,
                    w.device,
                    crate::server::STICKY,
                    w.stamp.0,
                    w.stamp.1,
                ),
            ));
        }
        Ok(())
    }

    /// Whether the device that made `w` deleted its record later, and the server took that
    /// delete or a device keeps it (found as a delete itself is, by its time of writing): a
    /// delete takes the place of the writes of its key still queued (`Engine::write`), so `w`
    /// may never go. The delete's own stamp covers it, but for one stamped earlier since, by
    /// the guest rule at a sign-in (a parked write of a key the guest wrote goes just before
    /// the guest's write).
    fn deleted_after(&self, user: usize, key: &Key, w: &Written) -> bool {
        self.written.iter().any(|d| {
            d.user == Some(user)
                && d.device == w.device
                && d.key == *key
                && d.value.is_none()
                && d.at > w.at
                && {
                    let delete = (d.stamp.0, None, d.at);
                    self.server.took(user, key, "*", delete) || self.kept(user, key, delete)
                }
        })
    }

    /// Whether `w`, written signed in, was superseded by a guest's write of the same field
    /// on its device, made after it (so after the sign-out that parked it) and joined to its
    /// account, which the server took (or a device keeps, or a later delete covers): the guest
    /// rule at a sign-in puts a parked write just before the guest's writes of its key,
    /// whatever the clocks say (`Engine::unpark`), so a later guest write may take its place
    /// before either is sent (simulation seed 104,716, where the device's clock had jumped
    /// back between the two).
    fn superseded_as_guest(&self, user: usize, key: &Key, field: &str, w: &Written) -> bool {
        !w.guest
            && self.written.iter().any(|g| {
                let sets = match field {
                    "" => true,
                    "*" => g.value.is_none(),
                    f => g.fields.as_ref().is_some_and(|n| n.iter().any(|n| n == f)),
                };
                let write = (g.stamp.0, g.value.as_deref(), g.at);
                g.guest
                    && g.user == Some(user)
                    && g.device == w.device
                    && g.key == *key
                    && g.at > w.at
                    && sets
                    && (self.server.took(user, key, field, write)
                        || self.kept(user, key, write)
                        || self.deleted_after(user, key, g))
            })
    }

    /// Whether a device keeps, stored for `user`'s next sign-in on it, a write of `key` made
    /// at `at` or later, or the write itself (stamped earlier by the guest rule at a sign-in
    /// since, then parked again by a sign-out).
    fn kept(&self, user: usize, key: &Key, (at, value, _): (u64, Option<&str>, u64)) -> bool {
        let scope = Some(self.server.user_id(user));
        self.devices.iter().any(|device| {
            device.storage.get(&scope).is_some_and(|stored| {
                stored.outboxes.values().flat_map(|(_, m)| m).any(|m| {
                    m.collection == key.0
                        && m.key == key.1
                        && (m.updated_at >= at || m.value.as_deref() == value)
                })
            })
        })
    }
}

/// A cursor as the version it names: 0 for none, or for a place inside a whole state sent in
/// pages (`PROTOCOL.md`).
pub(super) fn cursor_version(cursor: Option<&str>) -> u64 {
    cursor
        .and_then(|c| c.parse::<u64>().ok())
        .filter(|&n| n < WHOLE_STATE)
        .unwrap_or(0)
}

/// A signed-in tab not done yet: writes to send, a request out, or a status that still says
/// the server cannot be reached (once healed, the device's leader reaches it at its next
/// poll, and every tab hears so).
fn busy(s: &Status) -> bool {
    s.signed_in && (s.pending > 0 || s.syncing || s.error == Some(SyncError::Unreachable))
}
