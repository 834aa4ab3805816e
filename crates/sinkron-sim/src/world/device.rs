//! The device model: what a browser gives the tabs of one device. Each device has a
//! `localStorage` (one [`Scope`] per signed-in user or guest, written by `Command::Persist`,
//! read by every tab that opens; each live tab reads its own copy, which other tabs' writes
//! reach a little later, see [`Op`]), a `BroadcastChannel` (each sender's messages in order, with
//! a little jitter) and a Web Lock (one holder, a queue, released on `Leadership(false)`,
//! close or crash). Tabs open restoring what the device stored, close hidden first (a
//! keepalive flush), crash losing their memory but not the storage, and reload under the
//! same client id, as the browser driver does.

use std::collections::{BTreeMap, HashMap, VecDeque};

use sinkron_core::adopt::{adoption_order, kept_by_wipe};
use sinkron_core::engine::{Page, Reply, Request, TabBody, TabMessage};
use sinkron_core::{Change, Config, Engine, Mutation, Persist, Record, RecordKey};

use super::checks::cursor_version;
use super::{Event, TabId, World};
use crate::server::{Key, STICKY, UNKNOWN};
use crate::Violation;

pub(super) struct Tab {
    pub(super) id: TabId,
    pub(super) engine: Engine,
    pub(super) visible: bool,
    /// Read-your-writes: this tab's latest own write per key (lowered when the server clamps
    /// it). The view must never show anything older.
    pub(super) floors: HashMap<RecordKey, Record>,
    /// The client id the floors belong to; a new client id (sign-out) drops them.
    pub(super) floors_client: String,
    pub(super) spin_at: u64,
    pub(super) spins: u32,
    /// The driver's timer (`setTimeout`), armed after every input for the engine's deadline:
    /// it runs on true time, so a device clock jumping later does not move it.
    pub(super) wake_at: Option<u64>,
    /// The engine's last sync: its local time as the engine holds it, the true time when it
    /// happened, and how far ahead of true time the tab's corrected clock could be then.
    pub(super) synced: Option<(u64, u64, i64)>,
    /// The local time of the tab's last input, as its engine saw it: a later input at an
    /// earlier local time (the device's clock set back) moves the engine's times back.
    pub(super) local_seen: u64,
    /// When the tab last heard the server's state, in true time, as far as the world can
    /// tell: an answer to one of its requests other than no answer at all, or another tab's
    /// `synced` message. (For [`Device::cut_at`] and `asked`.)
    pub(super) heard_at: u64,
    /// When the tab joined the scope it is in (opened, signed in or out, back from the
    /// back/forward cache), in true time.
    pub(super) since: u64,
    /// When a leader that counted itself cut off got this tab's request for a pull (which
    /// it must answer by telling it so), in true time, and the scope the request was of.
    pub(super) asked: Option<(u64, Option<String>)>,
    /// The device's `localStorage` as this tab reads it: its own writes at once, other
    /// tabs' a little later (see [`Op`]).
    pub(super) view: Storage,
    /// The number of this tab's last write of each key: another tab's older write of the key,
    /// arriving later, does not replace it (as the browser orders them).
    pub(super) wrote: HashMap<Slot, u64>,
}

/// A page the back/forward cache keeps, as the browser driver leaves it: hidden, frozen,
/// holding no lock and no channel (so its id is free for a tab that starts to take over);
/// answers that arrive meanwhile wait for it.
pub(super) struct Kept {
    pub(super) tab: Tab,
    /// The page loaded next in its browser tab (with an empty `previous`), while open.
    pub(super) next_page: Option<TabId>,
    /// What the page compares when shown again: the device's session and everything stored.
    pub(super) session: Option<usize>,
    pub(super) stored: String,
    /// Answers (request id, answer, poll interval) that came while it was away.
    pub(super) replies: Vec<(u64, Reply, Option<u64>)>,
}

/// A device's Web Lock: one holder, the others queue.
#[derive(Default)]
pub(super) struct Lock {
    pub(super) holder: Option<(TabId, u64)>,
    pub(super) waiting: VecDeque<TabId>,
    pub(super) grants: u64,
}

/// A device's `localStorage`, by scope: as the browser holds it ([`Device::storage`], what a
/// tab that opens reads), or as one tab reads it ([`Tab::view`]).
pub(super) type Storage = BTreeMap<Option<String>, Scope>;

/// One key of `localStorage` written, or removed (`None`), as the browser driver lays them
/// out (`packages/sinkron/src/storage.ts`). A tab's `Command::Persist` becomes these, worked
/// out against what that tab reads (a wipe removes the keys it sees); they reach the browser's
/// storage and the tab's own copy at once, and each other tab's copy after up to
/// `Params::storage_lag_ms_max`, each writer's in order. So a tab may hear another tab's
/// `BroadcastChannel` message before that tab's writes, as in Chromium.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Record(Option<String>, Key, Option<Change>),
    Cursor(Option<String>, Option<String>),
    Partial(Option<String>, bool),
    Outbox(Option<String>, String, Option<(u64, Vec<Mutation>)>),
}

/// Which key an [`Op`] writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Slot {
    Record(Option<String>, Key),
    Cursor(Option<String>),
    Partial(Option<String>),
    Outbox(Option<String>, String),
}

impl Op {
    pub(super) fn slot(&self) -> Slot {
        match self {
            Op::Record(scope, key, _) => Slot::Record(scope.clone(), key.clone()),
            Op::Cursor(scope, _) => Slot::Cursor(scope.clone()),
            Op::Partial(scope, _) => Slot::Partial(scope.clone()),
            Op::Outbox(scope, client, _) => Slot::Outbox(scope.clone(), client.clone()),
        }
    }

    /// Writes the key into `storage`; a scope left without keys is gone.
    pub(super) fn apply(&self, storage: &mut Storage) {
        let (Op::Record(name, ..)
        | Op::Cursor(name, _)
        | Op::Partial(name, _)
        | Op::Outbox(name, ..)) = self;
        let scope = storage.entry(name.clone()).or_default();
        match self {
            Op::Record(_, key, Some(change)) => {
                scope.records.insert(key.clone(), change.clone());
            }
            Op::Record(_, key, None) => {
                scope.records.remove(key);
            }
            Op::Cursor(_, cursor) => scope.cursor = cursor.clone(),
            Op::Partial(_, partial) => scope.partial = *partial,
            Op::Outbox(_, client, Some(outbox)) => {
                scope.outboxes.insert(client.clone(), outbox.clone());
            }
            Op::Outbox(_, client, None) => {
                scope.outboxes.remove(client);
            }
        }
        if scope.records.is_empty()
            && scope.cursor.is_none()
            && scope.outboxes.is_empty()
            && !scope.partial
        {
            storage.remove(name);
        }
    }
}

/// One scope of a device's `localStorage`.
#[derive(Default, Debug, Clone)]
pub(super) struct Scope {
    pub(super) records: BTreeMap<Key, Change>,
    pub(super) cursor: Option<String>,
    /// Each client id's outbox with its numbering (the next id), kept when empty.
    pub(super) outboxes: BTreeMap<String, (u64, Vec<Mutation>)>,
    /// Records were evicted since the last whole state (`Persist::Evict`).
    pub(super) partial: bool,
}

pub(super) struct Device {
    pub(super) owner: usize,
    pub(super) skew_ms: i64,
    pub(super) online: bool,
    pub(super) partitioned: bool,
    /// The signed-in user the app keeps in `localStorage` (restored by new tabs).
    pub(super) session: Option<usize>,
    pub(super) tabs: Vec<Tab>,
    pub(super) storage: BTreeMap<Option<String>, Scope>,
    pub(super) lock: Lock,
    /// The episode this device is playing (its hot key).
    pub(super) playing: u64,
    /// When a tab of this device began receiving a whole state that no tab has ended yet.
    pub(super) whole_since: Option<u64>,
    /// The site ended this device's session elsewhere: its requests are refused (401) until
    /// the user signs in again here; how many each tab sent since.
    pub(super) revoked: Option<HashMap<TabId, u32>>,
    /// The last page the site's server rendered for this device (see `open_tab`): the user
    /// it was rendered for and the state it pulled then.
    pub(super) rendered: Option<(String, Page)>,
    /// The client ids of the tabs the user closed, the last closed last (at most
    /// [`CLOSED_KEPT`]): the browser can reopen one with its `sessionStorage` (a closed tab
    /// restored, or the last session after the browser was closed).
    pub(super) closed: Vec<String>,
    /// A page left for another page of the site and kept by the back/forward cache.
    pub(super) kept: Option<Kept>,
    /// The lowest clock error the device has had (0 at most): a tab corrects its clock by
    /// the server's time as it last heard it, perhaps before a jump forward, or never (no
    /// correction), so its corrected clock is ahead of true time by at most `skew_ms` less
    /// this.
    pub(super) lowest_skew_ms: i64,
    /// The world's own account of the device being cut off while the browser says online:
    /// when (true time) a tab's request failed with its tab counting itself connected
    /// before, and the scope it was in. Every tab already in that scope then, that has not
    /// heard the server's state since, must count itself cut off once the channel could
    /// have told it (see `World::told_cut_off`): the simulation does not take the engine's
    /// own word for a tab beside the one whose request failed.
    pub(super) cut_at: Option<(u64, Option<String>)>,
    /// When the device last came back online, in true time.
    pub(super) online_since: u64,
}

/// The longest a channel message takes (its jitter is at most this, and a sender's earlier
/// message, which it waits behind, was sent no later).
pub(super) const CHANNEL_MS_MAX: u64 = 3;

/// How long after a `Command::Unpark` the browser answers the tab locks it asks for
/// (`ifAvailable`): after the tab's current task, in the next instant of the simulation.
pub(super) const LOCK_ANSWER_MS: u64 = 1;

/// How many closed tabs a device can reopen.
const CLOSED_KEPT: usize = 4;

impl World {
    /// Carries out `Command::Persist` of tab `tab`, after invariant 5: as the keys the browser
    /// driver writes, worked out against what the tab reads.
    pub(super) fn persist(&mut self, d: usize, tab: TabId, p: Persist) -> Result<(), Violation> {
        self.check_persist(d, tab, &p)?;
        let Some(t) = self.devices[d].tabs.iter().position(|x| x.id == tab) else {
            return Err(Violation::new(
                "sim",
                "a tab that is not open stored something: its writes would be lost unseen",
            ));
        };
        let view = &self.devices[d].tabs[t].view;
        let mut ops = Vec::new();
        match p {
            Persist::Record { scope, change } => {
                let key = (change.collection.clone(), change.key.clone());
                ops.push(Op::Record(scope, key, Some(change)));
            }
            Persist::ClearRecords { scope } => {
                if let Some(stored) = view.get(&scope) {
                    for key in stored.records.keys() {
                        ops.push(Op::Record(scope.clone(), key.clone(), None));
                    }
                }
                ops.push(Op::Partial(scope, false));
            }
            Persist::Adopted { .. } => {
                return Err(Violation::new(
                    "sim",
                    "data from before Sinkron adopted: the simulation's engines adopt none",
                ));
            }
            Persist::EndingSessions { .. } => {
                return Err(Violation::new(
                    "sim",
                    "a session to end: the simulation signs in with the site's tokens, which \
                     Sinkron does not end",
                ));
            }
            Persist::Evict { scope, keys } => {
                for key in keys {
                    ops.push(Op::Record(scope.clone(), (key.collection, key.key), None));
                }
                ops.push(Op::Partial(scope, true));
            }
            Persist::Cursor { scope, cursor } => ops.push(Op::Cursor(scope, cursor)),
            Persist::Outbox {
                scope,
                client_id,
                next_id,
                mutations,
            } => ops.push(Op::Outbox(scope, client_id, Some((next_id, mutations)))),
            Persist::DropOutbox { scope, client_id } => {
                ops.push(Op::Outbox(scope, client_id, None));
            }
            Persist::Wipe {
                scope,
                keep_pending,
            } => {
                // The outboxes outlive a change of user (those that hold writes are sent from
                // another scope later; each tab drops its own). Every other key of the scope
                // the tab sees goes.
                if let Some(gone) = view.get(&scope) {
                    for key in gone.records.keys() {
                        ops.push(Op::Record(scope.clone(), key.clone(), None));
                    }
                    ops.push(Op::Cursor(scope.clone(), None));
                    ops.push(Op::Partial(scope.clone(), false));
                    let kept = kept_by_wipe(gone.outboxes.clone(), keep_pending);
                    for client in gone.outboxes.keys() {
                        if !kept.contains_key(client) {
                            ops.push(Op::Outbox(scope.clone(), client.clone(), None));
                        }
                    }
                }
            }
        }
        for op in ops {
            self.store(d, t, op);
        }
        Ok(())
    }

    /// One key written by tab `t`: in the browser's storage and the tab's copy at once, in the
    /// other tabs' copies after up to `storage_lag_ms_max`, each writer's in order.
    fn store(&mut self, d: usize, t: usize, op: Op) {
        self.stored_seq += 1;
        let seq = self.stored_seq;
        let lag = self.params.storage_lag_ms_max;
        let device = &mut self.devices[d];
        op.apply(&mut device.storage);
        let from = device.tabs[t].id;
        device.tabs[t].wrote.insert(op.slot(), seq);
        op.apply(&mut device.tabs[t].view);
        for to in self.others(d, from) {
            if lag == 0 {
                let tab = self.devices[d].tabs.iter_mut().find(|x| x.id == to);
                if let Some(tab) = tab {
                    op.apply(&mut tab.view);
                }
                continue;
            }
            let at = (self.now + self.rng.range(0, lag))
                .max(self.storage_last.get(&(from, to)).copied().unwrap_or(0));
            self.storage_last.insert((from, to), at);
            let op = op.clone();
            self.schedule(at, Event::Stored { tab: to, seq, op });
        }
    }

    /// The live tabs of device `d` but `from`.
    fn others(&self, d: usize, from: TabId) -> Vec<TabId> {
        let tabs = self.devices[d].tabs.iter().map(|t| t.id);
        tabs.filter(|&id| id != from).collect()
    }

    /// Another tab's write reaches tab `tab`'s copy of the storage, unless the tab wrote the key
    /// since (the browser keeps the later write).
    pub(super) fn stored(&mut self, tab: TabId, seq: u64, op: Op) {
        let Some((d, t)) = self.find(tab) else {
            return;
        };
        let tab = &mut self.devices[d].tabs[t];
        if tab.wrote.get(&op.slot()).is_none_or(|&own| own < seq) {
            op.apply(&mut tab.view);
        }
    }

    pub(super) fn broadcast(&mut self, d: usize, from: TabId, message: TabMessage) {
        if let TabBody::Synced { reset, gone, .. } = &message.body {
            let device = &mut self.devices[d];
            if gone.is_some() {
                device.whole_since = None;
            } else if *reset {
                device.whole_since.get_or_insert(self.now);
            }
        }
        for to in self.others(d, from) {
            let jitter = self.rng.range(0, CHANNEL_MS_MAX);
            let last = self.channel_last.get(&(from, to)).copied().unwrap_or(0);
            let at = (self.now + jitter).max(last);
            self.channel_last.insert((from, to), at);
            self.schedule(
                at,
                Event::Message {
                    tab: to,
                    from,
                    message: message.clone(),
                },
            );
        }
    }

    pub(super) fn lock_request(&mut self, d: usize, tab: TabId) {
        let lock = &mut self.devices[d].lock;
        match lock.holder {
            None => self.grant(d, tab),
            Some((holder, _)) if holder == tab => {}
            Some(_) => {
                if !lock.waiting.contains(&tab) {
                    lock.waiting.push_back(tab);
                }
            }
        }
    }

    pub(super) fn lock_release(&mut self, d: usize, tab: TabId) {
        let lock = &mut self.devices[d].lock;
        if lock.holder.is_some_and(|h| h.0 == tab) {
            lock.holder = None;
            if let Some(next) = lock.waiting.pop_front() {
                self.grant(d, next);
            }
        } else {
            lock.waiting.retain(|&w| w != tab);
        }
    }

    pub(super) fn grant(&mut self, d: usize, tab: TabId) {
        let lock = &mut self.devices[d].lock;
        lock.grants += 1;
        let grant = lock.grants;
        lock.holder = Some((tab, grant));
        let at = self.now + self.rng.range(0, 3);
        self.schedule(
            at,
            Event::Grant {
                device: d,
                tab,
                grant,
            },
        );
    }

    // ----- tabs -----

    /// Opens a tab that restores what the device stored: the session, the cursor, the
    /// records and an outbox with its numbering, the first in the core's order
    /// (`adoption_order`: the one of `previous`, the client id a reloaded or restored tab
    /// keeps in `sessionStorage`, when it holds writes; else a closed or crashed tab's with
    /// writes, then its own) that no live tab owns, as the browser driver does. Nothing
    /// taken: the tab keeps its fresh client id. The other outboxes' writes it hears as
    /// their tabs' messages.
    pub(super) fn open_tab(
        &mut self,
        d: usize,
        visible: bool,
        previous: Option<String>,
    ) -> Result<(), Violation> {
        let seed = self.rng.fork();
        let config = Config {
            push_bytes_max: self.params.push_bytes as usize,
            sticky: vec![STICKY.into()],
            ..Config::default()
        };
        let mut engine = Engine::new(config, seed);
        let user = self.devices[d].session.map(|u| self.server.user_id(u));
        engine.restore_user(user.clone());
        let live: Vec<String> = self.devices[d]
            .tabs
            .iter()
            .map(|t| t.engine.client_id().to_owned())
            .collect();
        let mut floors = HashMap::new();
        // The other stored outboxes' writes, which the tab shows as their tabs' messages
        // about them would have (as the driver does).
        let mut foreign = Vec::new();
        if let Some(scope) = self.devices[d].storage.get(&user) {
            engine.restore_cursor(scope.cursor.clone(), !scope.partial);
            for change in scope.records.values() {
                engine.restore_record(change.clone());
            }
            // The core's rule picks the order; the first whose tab is gone is taken (the
            // browser's tab lock), as the driver does.
            let listed: Vec<(String, usize)> = scope
                .outboxes
                .iter()
                .map(|(c, (_, m))| (c.clone(), m.len()))
                .collect();
            let stored = adoption_order(previous.as_deref(), &listed, true)
                .into_iter()
                .map(|i| &listed[i].0)
                .find(|c| !live.contains(c))
                .and_then(|c| scope.outboxes.get_key_value(c));
            if let Some((client_id, (next_id, mutations))) = stored {
                for m in mutations {
                    let write = (
                        client_id.clone(),
                        (m.collection.clone(), m.key.clone()),
                        m.updated_at,
                    );
                    if self.unfloored.contains(&write) || m.collection == UNKNOWN {
                        continue;
                    }
                    // A write the server took (clamped) before the tab that wrote it died.
                    let clamped = self.clamps.get(&write);
                    floors.insert(
                        RecordKey::new(&m.collection, &m.key),
                        Record {
                            value: m.value.clone(),
                            updated_at: clamped.copied().unwrap_or(m.updated_at),
                            client_id: client_id.clone(),
                        },
                    );
                }
                engine.restore_outbox(client_id.clone(), *next_id, mutations.clone());
            }
            let own = engine.client_id().to_owned();
            for (client_id, (_, mutations)) in &scope.outboxes {
                if *client_id != own {
                    foreign.extend(mutations.iter().map(|m| (client_id.clone(), m.clone())));
                }
            }
        }
        let id = self.next_tab;
        self.next_tab += 1;
        let floors_client = engine.client_id().to_owned();
        self.trace(format_args!(
            "d{d} t{id} opens (user {user:?}, client {floors_client}, {} restored writes)",
            floors.len()
        ));
        let view = self.devices[d].storage.clone();
        self.devices[d].tabs.push(Tab {
            id,
            engine,
            visible,
            floors,
            floors_client,
            spin_at: 0,
            spins: 0,
            wake_at: None,
            synced: None,
            local_seen: 0,
            heard_at: 0,
            since: self.now,
            asked: None,
            // A page that starts reads the storage as the browser holds it.
            view,
            wrote: HashMap::new(),
        });
        let t = self.devices[d].tabs.len() - 1;
        // How far what the device stores goes: its cursor, or where none is stored (while a
        // tab receives a whole state, whose pages are stored as they come), its records.
        let restored = self.devices[d].tabs[t].engine.cursor().map(str::to_owned);
        let records_top = self.devices[d]
            .storage
            .get(&user)
            .and_then(|scope| scope.records.values().map(|c| c.version).max())
            .unwrap_or(0);
        let version = cursor_version(restored.as_deref()).max(records_top);
        let stored = (restored, version);
        let online = self.devices[d].online;
        let snapshot = match (previous.is_some(), self.devices[d].session) {
            (true, Some(u)) => self.rendered(d, u)?,
            _ => None,
        };
        self.input(d, t, |e, now| {
            for (client_id, m) in foreign {
                let body = TabBody::Wrote {
                    id: m.id,
                    key: RecordKey::new(m.collection, m.key),
                    record: Record {
                        value: m.value,
                        updated_at: m.updated_at,
                        client_id,
                    },
                };
                let scope = user.clone();
                e.handle_tab_message(now, TabMessage { scope, body });
            }
            if let Some((user, page)) = snapshot {
                e.handle_snapshot(now, &user, page);
            }
            e.handle_online(now, online);
            e.handle_visibility(now, visible);
        })?;
        if self.devices[d].tabs[t].engine.user() == user.as_deref() {
            self.check_opened_from(d, t, stored)?;
        }
        Ok(())
    }

    /// Whether a reloaded or restored page of user `u` on device `d` is server-rendered (in
    /// one case out of four): the state the site's server pulled for the user when it
    /// rendered the page (a whole state, checked against the model like any pull), or, in one
    /// such case out of three, a page the browser kept from an earlier render (older, and
    /// perhaps another user's).
    fn rendered(&mut self, d: usize, u: usize) -> Result<Option<(String, Page)>, Violation> {
        if !self.rng.chance(250) {
            return Ok(None);
        }
        if self.rng.chance(333) && self.devices[d].rendered.is_some() {
            self.trace(format_args!("d{d} renders a page it kept"));
            return Ok(self.devices[d].rendered.clone());
        }
        let pull = Request::Pull { last_sync: None };
        let Some(served) = self.server.serve(self.now, u, &pull)? else {
            return Ok(None);
        };
        let Reply::Pulled(page) = served.reply else {
            return Ok(None);
        };
        self.trace(format_args!(
            "d{d} renders a page for u{u} at cursor {}",
            page.cursor
        ));
        let rendered = (self.server.user_id(u), page);
        // The browser keeps the newest render, or half the time an older one (a page further
        // back in the tab's history).
        if self.devices[d].rendered.is_none() || self.rng.chance(500) {
            self.devices[d].rendered = Some(rendered.clone());
        }
        Ok(Some(rendered))
    }

    /// Closes a tab the way a browser does: it is hidden first (which flushes its outbox
    /// with a keepalive request), then it is gone and its lock is released.
    pub(super) fn close_tab(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let id = self.devices[d].tabs[t].id;
        self.trace(format_args!("d{d} t{id} closes"));
        self.devices[d].tabs[t].visible = false;
        self.input(d, t, |e, now| e.handle_visibility(now, false))?;
        let tab = self.devices[d].tabs.remove(t);
        self.lock_release(d, id);
        let closed = &mut self.devices[d].closed;
        if closed.len() == CLOSED_KEPT {
            closed.remove(0);
        }
        closed.push(tab.engine.client_id().to_owned());
        Ok(())
    }

    /// The browser reopens the tab closed last, with its `sessionStorage` (its client id): it
    /// starts as a reload does, from the device's storage as it is now (another tab may have
    /// taken over the closed tab's outbox and client id meanwhile).
    pub(super) fn reopen_tab(&mut self, d: usize, visible: bool) -> Result<(), Violation> {
        let Some(client) = self.devices[d].closed.pop() else {
            return self.open_tab(d, visible, None);
        };
        self.trace(format_args!("d{d} the browser reopens the tab of {client}"));
        self.open_tab(d, visible, Some(client))
    }

    /// A tab dies: its memory is lost, the device's storage is not. Sometimes the browser
    /// restores it at once, with its `sessionStorage` (its client id).
    pub(super) fn crash_tab(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let tab = &self.devices[d].tabs[t];
        let (id, visible) = (tab.id, tab.visible);
        let client = tab.engine.client_id().to_owned();
        self.trace(format_args!("d{d} t{id} crashes"));
        self.devices[d].tabs.remove(t);
        self.lock_release(d, id);
        if self.rng.chance(500) {
            self.trace(format_args!("d{d} the browser restores tab {id}"));
            return self.open_tab(d, visible, Some(client));
        }
        Ok(())
    }

    /// The user leaves a tab's page for another page of the site, and later comes back with
    /// Back: the back/forward cache keeps it meanwhile (one page per device). See
    /// [`Kept`] and `packages/sinkron/src/driver.ts` (`#wire`).
    pub(super) fn away_and_back(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        if self.devices[d].kept.is_some() {
            return self.back(d);
        }
        let tab = &self.devices[d].tabs[t];
        let id = tab.id;
        self.trace(format_args!(
            "d{d} t{id} leaves for another page of the site"
        ));
        // `pagehide`: hidden for good (a keepalive flush; the leader lock let go), then the
        // tab lock and the channel.
        self.devices[d].tabs[t].visible = false;
        self.input(d, t, |e, now| e.handle_visibility(now, false))?;
        let tab = self.devices[d].tabs.remove(t);
        self.lock_release(d, id);
        let device = &self.devices[d];
        let stored = format!("{:?}", device.storage);
        let session = device.session;
        // Mostly the next page syncs too: it starts with an empty `previous`, which names no
        // outbox.
        let next_page = if self.rng.chance(700) {
            self.open_tab(d, true, Some(String::new()))?;
            self.devices[d].tabs.last().map(|t| t.id)
        } else {
            None
        };
        self.devices[d].kept = Some(Kept {
            tab,
            next_page,
            session,
            stored,
            replies: Vec::new(),
        });
        Ok(())
    }

    /// Back to the kept page: the page shown in its browser tab meanwhile is left (closed,
    /// here), and the kept one is shown again. It takes its tab lock back and goes on, unless
    /// anything stored changed meanwhile (it missed what the tabs said) or a live tab holds
    /// its id: then it reloads.
    pub(super) fn back(&mut self, d: usize) -> Result<(), Violation> {
        let Some(kept) = self.devices[d].kept.take() else {
            return Ok(());
        };
        if let Some(t) = kept
            .next_page
            .and_then(|id| self.devices[d].tabs.iter().position(|t| t.id == id))
        {
            self.close_tab(d, t)?;
        }
        let client = kept.tab.engine.client_id().to_owned();
        let device = &self.devices[d];
        let taken = device.tabs.iter().any(|t| t.engine.client_id() == client);
        let changed =
            device.session != kept.session || format!("{:?}", device.storage) != kept.stored;
        let id = kept.tab.id;
        if taken || changed {
            self.trace(format_args!(
                "d{d} t{id} back: reloads (id taken {taken}, stored state changed {changed})"
            ));
            return self.open_tab(d, true, Some(client));
        }
        self.trace(format_args!("d{d} t{id} back from the back/forward cache"));
        self.devices[d].tabs.push(kept.tab);
        let t = self.devices[d].tabs.len() - 1;
        self.devices[d].tabs[t].visible = true;
        // Nothing stored changed while it was away, as far as the page can tell: it reads on
        // from the browser's storage.
        self.devices[d].tabs[t].view = self.devices[d].storage.clone();
        // What it was told before it was frozen is not what the world holds it to.
        self.devices[d].tabs[t].since = self.now;
        for (request, reply, poll_interval_ms) in kept.replies {
            self.schedule(
                self.now,
                Event::Reply {
                    tab: id,
                    id: request,
                    reply,
                    poll_interval_ms,
                },
            );
        }
        // Shown again, the page hears the network as it is now (Chromium delivers the
        // `online`/`offline` event it held while the page was frozen; `restore.test.mjs`).
        let online = self.devices[d].online;
        self.input(d, t, |e, now| {
            e.handle_online(now, online);
            e.handle_visibility(now, true);
        })
    }

    /// The user duplicates a tab: the browser opens a copy with the tab's `sessionStorage`
    /// (its client id) while the original lives and holds that id, so the copy must take an
    /// id of its own (the tab lock, modelled in `open_tab` by skipping live tabs' ids).
    pub(super) fn duplicate_tab(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let tab = &self.devices[d].tabs[t];
        let (id, client) = (tab.id, tab.engine.client_id().to_owned());
        let visible = self.rng.chance(700);
        self.trace(format_args!("d{d} t{id} is duplicated"));
        self.open_tab(d, visible, Some(client))
    }

    /// The user reloads a tab: the page is hidden (which flushes its outbox with a
    /// keepalive request) and unloaded, and the new page keeps the old one's client id
    /// (`sessionStorage` survives a reload) and restores the device's storage.
    pub(super) fn reload_tab(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let tab = &self.devices[d].tabs[t];
        let (id, visible) = (tab.id, tab.visible);
        let client = tab.engine.client_id().to_owned();
        self.trace(format_args!("d{d} t{id} reloads"));
        if visible {
            self.devices[d].tabs[t].visible = false;
            self.input(d, t, |e, now| e.handle_visibility(now, false))?;
        }
        self.devices[d].tabs.remove(t);
        self.lock_release(d, id);
        self.open_tab(d, visible, Some(client))
    }
}
