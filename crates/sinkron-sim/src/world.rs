//! The simulated world of one run and its step loop.
//!
//! A [`World`] holds the devices (each with its tabs, its `localStorage`, its
//! `BroadcastChannel` and its Web Lock), the network (every packet in flight is an [`Event`]
//! with a delivery time), the server and a virtual clock. Each step takes the earliest of:
//! the next event in flight, the next engine deadline, the next user action or fault; carries
//! it out; drains the commands it caused; and checks the invariants it could have broken.
//!
//! Faults are decided where they happen: a request is lost or duplicated when it is sent, a
//! response is lost when the server answers (after it applied the request), a partitioned
//! device loses both ways, a crashed server refuses connections until it restarts, a crashed
//! tab loses its memory but not its device's storage. Device clocks carry an error (`skew`)
//! that can jump; engines only ever see their device's clock.
//!
//! This file holds the world, its queue of events and its step loop, and drives one engine
//! (an input, then its commands, then its next deadline). The rest is split by concern:
//! `device` (what a browser gives a device's tabs: storage, channel, lock, tabs opening,
//! closing, crashing, reloading), `actions` (user actions and faults of the safety phase, and
//! the healing that ends it) and `checks` (the invariants).
//!
//! To add an actor, action or fault: see ARCHITECTURE.md, "sinkron-sim".

mod actions;
mod checks;
mod device;

use std::collections::{BTreeMap, HashMap, HashSet};

use sinkron_core::adopt::parked;
use sinkron_core::engine::{Failure, TabBody, TabMessage};
use sinkron_core::merge::Stamp;
use sinkron_core::{Command, Engine, Mutation, Persist, Record, RecordKey, Reply, Request};

use crate::params::Params;
use crate::rng::Rng;
use crate::server::{Key, Server, MERGED, UNKNOWN};
use crate::trace::Trace;
use crate::{Outcome, Violation};
use checks::ScopeTag;
use device::{Device, Lock, LOCK_ANSWER_MS};

/// Virtual time at the start of every run (ms since the epoch): late 2025.
const T0: u64 = 1_764_000_000_000;
/// An engine asking to be woken in the past this many times at one instant is spinning.
const SPIN_MAX: u32 = 50;

type TabId = u64;

/// Something in flight, delivered at its time.
#[derive(Debug)]
enum Event {
    /// A request reaches the server.
    Request {
        device: usize,
        tab: TabId,
        id: u64,
        user: usize,
        request: Request,
        /// The answer is lost on the way back (after the server applied the request).
        drop_response: bool,
    },
    /// An answer, or the failure a client sees instead, reaches a tab.
    /// An answer reaches a tab, with the server's poll interval if it carried one.
    Reply {
        tab: TabId,
        id: u64,
        reply: Reply,
        poll_interval_ms: Option<u64>,
    },
    /// A `BroadcastChannel` message reaches a tab.
    Message {
        tab: TabId,
        from: TabId,
        message: TabMessage,
    },
    /// The device's Web Lock is granted (grant number `grant`).
    Grant {
        device: usize,
        tab: TabId,
        grant: u64,
    },
    /// The crashed server process is started again.
    Restart,
    /// A device's partition heals.
    Heal { device: usize },
    /// The tab locks a `Command::Unpark` asked for are granted (or found held): the tab
    /// takes over the outboxes of `scope` whose tabs are gone, as its copy of the storage
    /// shows them then.
    Unpark { tab: TabId, scope: Option<String> },
    /// Another tab's write to `localStorage` (number `seq`) reaches a tab's copy of it.
    Stored {
        tab: TabId,
        seq: u64,
        op: device::Op,
    },
}

pub struct World {
    params: Params,
    rng: Rng,
    now: u64,
    server: Server,
    devices: Vec<Device>,
    events: BTreeMap<(u64, u64), Event>,
    seq: u64,
    next_tab: TabId,
    trace: Trace,
    steps: u64,
    requests: u64,
    next_action_at: u64,
    /// Safety phase: user actions and faults happen.
    active: bool,
    /// The scopes each client id has been in: a record written by a client may only be seen
    /// in those scopes.
    clients: HashMap<String, Vec<ScopeTag>>,
    /// Last delivery time per (sender, receiver) tab pair: a channel keeps each sender's order.
    channel_last: HashMap<(TabId, TabId), u64>,
    /// The same for writes to `localStorage`, which reach other tabs' copies in order.
    storage_last: HashMap<(TabId, TabId), u64>,
    /// Writes to `localStorage` so far, which number them.
    stored_seq: u64,
    writes: u64,
    keys: Vec<RecordKey>,
    /// Every clamp the server made: (client, key, stamped) → stored `updatedAt`.
    clamps: HashMap<(String, Key, u64), u64>,
    /// Writes kept in a device's storage (an outbox) when a tombstone of their key was
    /// compacted, by (client, key, stamped): a tab that restores one has no read-back floor
    /// for it (see `World::compact`).
    unfloored: HashSet<(String, Key, u64)>,
    /// Every mutation ever sent, by (client id, mutation id): an id, once sent, must always
    /// carry the same write, or the server would skip a new write as a retry of the old.
    sent: HashMap<(String, u64), Mutation>,
    /// Every write of a playback position (`MERGED`'s hot field), for the law that one made
    /// cut off never undoes progress made elsewhere since (`World::check_offline_position`).
    positions: Vec<PositionWrite>,
    /// Every write the app made, for the law that none is lost (`World::check_none_lost`).
    /// A sign-out that discards on purpose takes its device's out; a compacted tombstone, the
    /// older writes of its key.
    written: Vec<Written>,
}

/// A write the app made, as its tab stamped and queued it.
#[derive(Debug)]
struct Written {
    /// The account it is in; `None` for a guest's until its device signs in, when it joins
    /// that account (`World::sign_in`).
    user: Option<usize>,
    device: usize,
    key: Key,
    stamp: Stamp,
    /// The fields it sets: those it names, or (the whole-record format) those its value
    /// holds; `None` for a delete.
    fields: Option<Vec<String>>,
    value: Option<String>,
    /// True time of the write.
    at: u64,
    /// Made by a tab signed in as nobody (a guest's, joined to an account later or never).
    guest: bool,
}

/// A write of a playback position as a tab made it.
#[derive(Debug)]
struct PositionWrite {
    user: usize,
    device: usize,
    key: Key,
    stamp: Stamp,
    /// True time of the write.
    at: u64,
    /// Made while its tab did not count itself cut off (`Engine::cut_off`): stamped now.
    connected: bool,
    /// Made cut off (offline, or with its requests failing) by a tab that had synced: the
    /// newest stamp the law lets it hold over, the later of its last sync (in true time, plus
    /// how far ahead its corrected clock could be) and the stamp of the copy it replaced.
    as_of: Option<u64>,
}

impl World {
    /// Runs one seed to the end: safety phase, then liveness phase.
    pub fn run(seed: u64, params: Params) -> Outcome {
        let mut rng = Rng::new(seed);
        let mut trace = Trace::new(params.trace_tail);
        let server = match Server::start(
            params.users,
            params.page_size,
            params.page_bytes,
            params.poll_interval_secs,
            T0,
            &mut rng,
        ) {
            Ok(s) => s,
            Err(e) => {
                return Outcome {
                    seed,
                    params,
                    steps: 0,
                    elapsed_ms: 0,
                    trace_hash: 0,
                    violation: Some(Violation::new("sim", e)),
                    trace_tail: Vec::new(),
                    requests: 0,
                }
            }
        };
        trace.event(0, format_args!("seed {seed}: {params}"));
        let mut keys = Vec::new();
        for e in 0..8 {
            keys.push(RecordKey::new("history", format!("ep-{e}")));
            keys.push(RecordKey::new("likes", format!("ep-{e}")));
        }
        for s in 0..5 {
            keys.push(RecordKey::new("favorites", format!("show-{s}")));
        }
        for s in ["quality", "autoplay", "subtitles"] {
            keys.push(RecordKey::new("settings", s));
        }
        // Never on the server, so, in the end, on no device either.
        for b in 0..4 {
            keys.push(RecordKey::new(UNKNOWN, format!("bm-{b}")));
        }
        let mut world = World {
            rng,
            now: T0,
            server,
            devices: Vec::new(),
            events: BTreeMap::new(),
            seq: 0,
            next_tab: 1,
            trace,
            steps: 0,
            requests: 0,
            next_action_at: T0,
            active: true,
            clients: HashMap::new(),
            channel_last: HashMap::new(),
            storage_last: HashMap::new(),
            stored_seq: 0,
            writes: 0,
            keys,
            clamps: HashMap::new(),
            unfloored: HashSet::new(),
            sent: HashMap::new(),
            positions: Vec::new(),
            written: Vec::new(),
            params,
        };
        let result = world.play();
        Outcome {
            seed,
            steps: world.steps,
            elapsed_ms: world.now - T0,
            trace_hash: world.trace.hash(),
            violation: result.err(),
            trace_tail: world.trace.tail().map(str::to_owned).collect(),
            requests: world.requests,
            params: world.params,
        }
    }

    fn play(&mut self) -> Result<(), Violation> {
        self.build()?;
        let safety_end = T0 + self.params.safety_ms;
        while self.now < safety_end {
            self.step()?;
        }
        self.heal()?;
        let steps_max = self.steps + self.params.liveness_steps_max;
        let deadline = self.now + self.params.liveness_ms_max;
        loop {
            if let Some(()) = self.converged()? {
                self.trace(format_args!("converged"));
                self.check_none_lost()?;
                return self.check_sticky_kept();
            }
            if self.steps >= steps_max || self.now >= deadline {
                let why = self.divergence()?;
                return Err(Violation::new(
                    "1 convergence",
                    format!(
                        "not converged {} s after healing ({} steps): {why}",
                        (self.now + self.params.liveness_ms_max - deadline) / 1000,
                        self.steps
                    ),
                ));
            }
            self.step()?;
        }
    }

    fn build(&mut self) -> Result<(), Violation> {
        let mut d = 0;
        for user in 0..self.params.users {
            for _ in 0..self.params.devices_per_user[user] {
                let guest = self.rng.chance(self.params.guest_per_mille);
                let playing = self.rng.range(0, 7);
                self.devices.push(Device {
                    owner: user,
                    skew_ms: self.params.skews_ms[d],
                    online: true,
                    partitioned: false,
                    session: (!guest).then_some(user),
                    tabs: Vec::new(),
                    storage: BTreeMap::new(),
                    lock: Lock::default(),
                    playing,
                    whole_since: None,
                    revoked: None,
                    rendered: None,
                    closed: Vec::new(),
                    lowest_skew_ms: self.params.skews_ms[d].min(0),
                    kept: None,
                    cut_at: None,
                    online_since: T0,
                });
                for t in 0..self.params.tabs_initial[d] {
                    let visible = t == 0 || self.rng.chance(500);
                    self.open_tab(d, visible, None)?;
                }
                d += 1;
            }
        }
        Ok(())
    }

    // ----- time and events -----

    fn local(&self, device: usize) -> u64 {
        self.now.saturating_add_signed(self.devices[device].skew_ms)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at.max(self.now), self.seq), event);
    }

    fn latency(&mut self) -> u64 {
        self.rng
            .range(self.params.latency_ms_min, self.params.latency_ms_max)
    }

    fn trace(&mut self, what: std::fmt::Arguments<'_>) {
        self.trace.event(self.now - T0, what);
    }

    /// The earliest engine deadline, in true time, with its tab.
    fn next_timer(&self) -> Option<(u64, usize, usize)> {
        let mut best: Option<(u64, usize, usize)> = None;
        for (d, device) in self.devices.iter().enumerate() {
            for (t, tab) in device.tabs.iter().enumerate() {
                if let Some(at) = tab.wake_at {
                    let at = at.max(self.now);
                    if best.is_none_or(|b| at < b.0) {
                        best = Some((at, d, t));
                    }
                }
            }
        }
        best
    }

    /// One step: the earliest of the next event, engine deadline and action.
    fn step(&mut self) -> Result<(), Violation> {
        self.steps += 1;
        let event_at = self.events.first_key_value().map(|(k, _)| k.0);
        let timer = self.next_timer();
        let action_at = self.active.then_some(self.next_action_at);
        let earliest = [event_at, timer.map(|t| t.0), action_at]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = earliest else {
            // Nothing will ever happen again; let time pass so the caller's budget runs out.
            self.now += 1_000;
            return Ok(());
        };
        self.now = self.now.max(at);
        self.server.set_time(self.now);
        if event_at == Some(at) {
            let (_, event) = self.events.pop_first().expect("an event is due");
            self.deliver(event)
        } else if let Some((t_at, d, t)) = timer.filter(|t| t.0 == at) {
            let _ = t_at;
            self.fire(d, t)
        } else {
            self.next_action_at = self.now + self.rng.range(0, 2 * self.params.action_gap_ms_mean);
            self.action()
        }
    }

    fn fire(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let local = self.local(d);
        let now = self.now;
        let tab = &mut self.devices[d].tabs[t];
        if tab.spin_at == now {
            tab.spins += 1;
            if tab.spins > SPIN_MAX {
                return Err(Violation::new(
                    "engine",
                    format!(
                        "tab {} keeps asking to be woken at {:?} (local {local}) but does nothing",
                        tab.id,
                        tab.engine.poll_timeout()
                    ),
                ));
            }
        } else {
            tab.spin_at = now;
            tab.spins = 0;
        }
        let id = tab.id;
        self.trace(format_args!("d{d} t{id} timer"));
        self.input(d, t, |e, now| e.handle_timeout(now))
    }

    fn deliver(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Request {
                device,
                tab,
                id,
                user,
                request,
                drop_response,
            } => {
                self.requests += 1;
                let served = self.server.serve(self.now, user, &request)?;
                let Some(served) = served else {
                    self.trace(format_args!("d{device} t{tab} #{id} -> server down"));
                    let at = self.now + self.latency();
                    self.fail_at(at, tab, id, Failure::Network);
                    return Ok(());
                };
                if let Request::Push { mutations, .. } = &request {
                    for m in mutations.iter().filter(|m| m.collection == MERGED) {
                        self.check_offline_position(user, &(m.collection.clone(), m.key.clone()))?;
                    }
                }
                for clamp in &served.clamps {
                    self.clamps.insert(
                        (clamp.client_id.clone(), clamp.key.clone(), clamp.from),
                        clamp.to,
                    );
                    for device in &mut self.devices {
                        // A page in the back/forward cache too: its floors go with it.
                        let kept = device.kept.as_mut().map(|k| &mut k.tab);
                        for t in device.tabs.iter_mut().chain(kept) {
                            if t.floors_client != clamp.client_id {
                                continue;
                            }
                            let key = RecordKey::new(&clamp.key.0, &clamp.key.1);
                            if let Some(floor) = t.floors.get_mut(&key) {
                                if floor.updated_at == clamp.from {
                                    floor.updated_at = clamp.to;
                                }
                            }
                        }
                    }
                }
                let lost = drop_response || (self.active && self.devices[device].partitioned);
                self.trace(format_args!(
                    "d{device} t{tab} #{id} server: {}{}",
                    served.summary,
                    if lost { " (answer lost)" } else { "" }
                ));
                let (at, reply, poll_interval_ms) = if lost {
                    (
                        self.now + self.params.request_timeout_ms,
                        Reply::Failed(Failure::Network),
                        None,
                    )
                } else {
                    (
                        self.now + self.latency(),
                        served.reply,
                        served.poll_interval_ms,
                    )
                };
                self.reply_at(at, tab, id, reply, poll_interval_ms);
                Ok(())
            }
            Event::Reply {
                tab,
                id,
                reply,
                poll_interval_ms,
            } => {
                let Some((d, t)) = self.find(tab) else {
                    // A page in the back/forward cache gets its answers when shown again.
                    let kept = self
                        .devices
                        .iter_mut()
                        .filter_map(|d| d.kept.as_mut())
                        .find(|k| k.tab.id == tab);
                    if let Some(kept) = kept {
                        kept.replies.push((id, reply, poll_interval_ms));
                    }
                    return Ok(());
                };
                self.trace(format_args!(
                    "d{d} t{tab} #{id} reply {}",
                    reply_summary(&reply)
                ));
                let now = self.now;
                let answered = !matches!(reply, Reply::Failed(Failure::Network));
                let connected = !self.devices[d].tabs[t].engine.cut_off();
                self.input(d, t, |e, now| {
                    if let Some(ms) = poll_interval_ms {
                        e.handle_poll_interval(ms);
                    }
                    e.handle_reply(now, id, reply)
                })?;
                let device = &mut self.devices[d];
                let tab = &mut device.tabs[t];
                if answered {
                    tab.heard_at = now;
                }
                // This tab's own request failing cut it off: the device is cut off.
                if connected && tab.engine.cut_off() && device.online {
                    device.cut_at = Some((now, tab.engine.user().map(str::to_owned)));
                }
                Ok(())
            }
            Event::Message { tab, from, message } => {
                let Some((d, t)) = self.find(tab) else {
                    return Ok(());
                };
                // A tab asking the leader for a pull while the leader counts itself cut off
                // must be told so (the leader's own account of itself is its own rule).
                let receiver = &self.devices[d].tabs[t].engine;
                if matches!(message.body, TabBody::PullWanted)
                    && receiver.status().leader
                    && receiver.cut_off()
                    && message.scope.as_deref() == receiver.user()
                {
                    let asked = Some((self.now, message.scope.clone()));
                    if let Some(asker) = self.devices[d].tabs.iter_mut().find(|t| t.id == from) {
                        asker.asked = asked;
                    }
                }
                self.trace(format_args!(
                    "d{d} t{tab} message {}",
                    message_summary(&message)
                ));
                if matches!(message.body, TabBody::Synced { .. }) {
                    self.devices[d].tabs[t].heard_at = self.now;
                }
                self.input(d, t, |e, now| e.handle_tab_message(now, message))
            }
            Event::Grant { device, tab, grant } => {
                if self.devices[device].lock.holder != Some((tab, grant)) {
                    return Ok(());
                }
                let Some((d, t)) = self.find(tab) else {
                    return Ok(());
                };
                self.trace(format_args!("d{d} t{tab} lock granted"));
                self.input(d, t, |e, now| e.handle_leadership(now, true))
            }
            Event::Restart => {
                if !self.server.is_up() {
                    self.trace(format_args!("server restarts"));
                    self.server
                        .restart()
                        .map_err(|e| Violation::new("sim", e))?;
                    // Nothing acknowledged may be missing after a restart.
                    self.server.check_all()?;
                }
                Ok(())
            }
            Event::Heal { device } => {
                if self.devices[device].partitioned {
                    self.devices[device].partitioned = false;
                    self.trace(format_args!("d{device} partition heals"));
                }
                Ok(())
            }
            Event::Unpark { tab, scope } => self.unpark(tab, scope),
            Event::Stored { tab, seq, op } => {
                self.stored(tab, seq, op);
                Ok(())
            }
        }
    }

    /// `Event::Unpark`, as the browser driver's lock callbacks: the outboxes of `scope` that
    /// hold writes and whose tab is gone (no live tab holds the id's lock: closed, crashed,
    /// or the page kept by the back/forward cache), as the tab's copy of the storage shows
    /// them now, each handed to `Engine::unpark`.
    fn unpark(&mut self, tab_id: TabId, scope: Option<String>) -> Result<(), Violation> {
        let Some((d, t)) = self.find(tab_id) else {
            return Ok(());
        };
        let device = &self.devices[d];
        let live = |c: &str| device.tabs.iter().any(|t| t.engine.client_id() == c);
        let stored = device.tabs[t].view.get(&scope);
        let mut gone = stored.map(|s| parked(&s.outboxes)).unwrap_or_default();
        gone.retain(|(c, ..)| !live(c));
        for (client_id, mutations) in gone {
            self.trace(format_args!(
                "d{d} t{tab_id} takes the outbox of {client_id} ({} writes: {})",
                mutations.len(),
                mutations
                    .iter()
                    .map(|m| format!("{}/{}@{}", m.collection, m.key, m.updated_at))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            let taken: Vec<RecordKey> = mutations
                .iter()
                .filter(|m| m.collection != UNKNOWN)
                .map(|m| RecordKey::new(&m.collection, &m.key))
                .collect();
            let scope = scope.clone();
            self.input(d, t, |e, now| e.unpark(now, scope, client_id, mutations))?;
            // The writes taken are the tab's own now: it reads them back as it does its own
            // (the newest it queued of the key replaces the floor of its own older write,
            // shown or not: it may have taken that write's place; one that did not win
            // leaves that floor).
            let tab = &mut self.devices[d].tabs[t];
            let own = tab.engine.client_id().to_owned();
            if tab.floors_client != own {
                tab.floors.clear();
                tab.floors_client = own.clone();
            }
            let outbox = tab.engine.outbox();
            for key in taken {
                let queued = outbox
                    .iter()
                    .filter(|m| m.collection == key.collection && m.key == key.key)
                    .map(|m| Record {
                        value: m.value.clone(),
                        updated_at: m.updated_at,
                        client_id: own.clone(),
                    })
                    .max_by(|a, b| a.order(b));
                if let Some(mut shown) = queued {
                    let stamp = shown.updated_at;
                    // With stamps pinned ahead, the tab's own write of the key may carry the
                    // same stamp, sent and clamped already: read back as the server stored it.
                    let sent = (
                        own.clone(),
                        (key.collection.clone(), key.key.clone()),
                        stamp,
                    );
                    if let Some(&to) = self.clamps.get(&sent) {
                        shown.updated_at = to;
                    }
                    if tab.floors.get(&key).is_none_or(|f| shown.wins_over(f)) {
                        tab.floors.insert(key, shown);
                    }
                }
            }
        }
        self.check_unparked(d, t, &scope)
    }

    fn find(&self, tab: TabId) -> Option<(usize, usize)> {
        self.devices
            .iter()
            .enumerate()
            .find_map(|(d, device)| device.tabs.iter().position(|t| t.id == tab).map(|t| (d, t)))
    }

    // ----- driving one engine -----

    /// Feeds one input to a tab's engine, then carries out what it asks for and checks it.
    fn input(
        &mut self,
        d: usize,
        t: usize,
        f: impl FnOnce(&mut Engine, u64),
    ) -> Result<(), Violation> {
        let local = self.local(d);
        let engine = &mut self.devices[d].tabs[t].engine;
        let before = engine.user().map(str::to_owned);
        f(engine, local);
        self.drain(d, t, before)
    }

    /// Carries out a tab's commands in order. `before` is the user the tab had before the
    /// input: requests belong to it until the tab wipes its scope, then to its new user.
    fn drain(&mut self, d: usize, t: usize, before: Option<String>) -> Result<(), Violation> {
        let ahead = self.devices[d].skew_ms - self.devices[d].lowest_skew_ms;
        let local = self.local(d);
        let tab = &mut self.devices[d].tabs[t];
        // When the engine last synced, in true time: a new sync is a later local time; a
        // clock set back moves the engine's times back with it (the sync's local time too,
        // as the engine shifts its own), not the sync.
        if let Some((known, _, _)) = tab.synced.as_mut() {
            *known = known.saturating_sub(tab.local_seen.saturating_sub(local));
        }
        tab.local_seen = local;
        tab.synced = match (tab.engine.last_synced_at(), tab.synced) {
            (Some(local), Some((known, at, ahead))) if local <= known => Some((local, at, ahead)),
            (local, _) => local.map(|local| (local, self.now, ahead)),
        };
        if tab.engine.user() != before.as_deref() {
            tab.since = self.now;
        }
        let tab = &self.devices[d].tabs[t];
        let (tab_id, client_id) = (tab.id, tab.engine.client_id().to_owned());
        let after = tab.engine.user().map(str::to_owned);
        let tag = self.scope_tag(d, after.as_deref())?;
        let tags = self.clients.entry(client_id).or_default();
        if !tags.contains(&tag) {
            tags.push(tag);
        }
        let mut scope = before;
        while let Some(command) = self.devices[d].tabs[t].engine.poll_command() {
            match command {
                Command::Persist(p) => {
                    if matches!(p, Persist::Wipe { .. }) {
                        scope = after.clone();
                    }
                    self.persist(d, tab_id, p)?;
                }
                Command::Broadcast(message) => self.broadcast(d, tab_id, message),
                Command::Send {
                    id,
                    request,
                    fresh_token,
                } => self.send(d, t, id, request, fresh_token, scope.as_deref())?,
                Command::Leadership(true) => self.lock_request(d, tab_id),
                Command::Leadership(false) => self.lock_release(d, tab_id),
                Command::Notify(_) => {}
                Command::Pokes(_) => {
                    return Err(Violation::new(
                        "sim",
                        "opened a poke stream: the simulation's engines are built without pokes",
                    ));
                }
                Command::Adopt { .. } => {
                    return Err(Violation::new(
                        "sim",
                        "asked for data from before Sinkron: the simulation's engines adopt none",
                    ));
                }
                // As the browser driver: each tab lock asked for `ifAvailable`, answered once
                // the tab's current task is done.
                Command::Unpark { scope } => {
                    let event = Event::Unpark { tab: tab_id, scope };
                    self.schedule(self.now + LOCK_ANSWER_MS, event);
                }
            }
        }
        let local = self.local(d);
        let tab = &mut self.devices[d].tabs[t];
        tab.wake_at = tab
            .engine
            .poll_timeout()
            .map(|deadline| self.now + deadline.saturating_sub(local));
        self.check_view(d, t)
    }

    /// Invariant 6 (`check_request`), then the network: loss, duplication, latency.
    fn send(
        &mut self,
        d: usize,
        t: usize,
        id: u64,
        request: Request,
        fresh_token: bool,
        scope: Option<&str>,
    ) -> Result<(), Violation> {
        let tab_id = self.devices[d].tabs[t].id;
        let user_id = self.check_request(d, t, &request, scope)?;
        let user = self
            .server
            .user_index(user_id)
            .ok_or_else(|| Violation::new("5 isolation", format!("unknown user {user_id}")))?;
        self.trace(format_args!(
            "d{d} t{tab_id} #{id} send {}",
            request_summary(&request)
        ));
        self.check_ids_not_reused(d, tab_id, &request)?;
        let device = &self.devices[d];
        if !device.online {
            // fetch fails at once while the browser is offline.
            self.fail_at(self.now + 1, tab_id, id, Failure::Network);
            return Ok(());
        }
        // A session ended elsewhere: refused until the user signs in again. A 401 stops the
        // tab's requests (it keeps its writes), so each tab sends only what it had started.
        if let Some(sent) = self.devices[d].revoked.as_mut() {
            let count = sent.entry(tab_id).or_insert(0);
            *count += 1;
            if *count > 3 {
                return Err(Violation::new(
                    "8 a 401 stops requests",
                    format!("d{d} t{tab_id} sent {count} requests after its session ended"),
                ));
            }
            self.trace(format_args!("d{d} t{tab_id} #{id} 401: session ended"));
            let at = self.now + self.latency();
            self.fail_at(at, tab_id, id, Failure::Unauthorized);
            return Ok(());
        }
        // The tab's token has expired; the site's provider hands out a fresh one on request.
        // (No draw when the seed has no expiries: the other faults stay what they were.)
        let expired = self.active
            && !fresh_token
            && self.params.token_expired_per_mille > 0
            && self.rng.chance(self.params.token_expired_per_mille);
        if expired {
            self.trace(format_args!("d{d} t{tab_id} #{id} token expired"));
            let at = self.now + self.latency() * 2;
            self.fail_at(at, tab_id, id, Failure::TokenExpired);
            return Ok(());
        }
        // A proxy in front of the server answers with an error page of its own. (No draw when
        // the seed has none: the other faults stay what they were.)
        let proxied = self.active
            && self.params.proxy_error_per_mille > 0
            && self.rng.chance(self.params.proxy_error_per_mille);
        if proxied {
            let status = [400, 403, 404, 413][self.rng.range(0, 3) as usize];
            self.trace(format_args!("d{d} t{tab_id} #{id} a proxy's {status} page"));
            let at = self.now + self.latency() * 2;
            let failure = Failure::from_status(status, None, None, None, None);
            self.fail_at(at, tab_id, id, failure);
            return Ok(());
        }
        let device = &self.devices[d];
        let lost = self.active
            && (device.partitioned || self.rng.chance(self.params.drop_request_per_mille));
        if lost {
            self.trace(format_args!("d{d} t{tab_id} #{id} request lost"));
            self.fail_at(
                self.now + self.params.request_timeout_ms,
                tab_id,
                id,
                Failure::Network,
            );
            return Ok(());
        }
        let copies = if self.active && self.rng.chance(self.params.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.latency();
            let drop_response = self.active && self.rng.chance(self.params.drop_response_per_mille);
            self.schedule(
                at,
                Event::Request {
                    device: d,
                    tab: tab_id,
                    id,
                    user,
                    request: request.clone(),
                    drop_response,
                },
            );
        }
        Ok(())
    }

    /// The request `id` of `tab` fails at `at` without reaching the server.
    fn fail_at(&mut self, at: u64, tab: TabId, id: u64, failure: Failure) {
        self.reply_at(at, tab, id, Reply::Failed(failure), None);
    }

    /// The answer to request `id` of `tab` arrives at `at`, with the server's poll interval
    /// if it carried one.
    fn reply_at(
        &mut self,
        at: u64,
        tab: TabId,
        id: u64,
        reply: Reply,
        poll_interval_ms: Option<u64>,
    ) {
        let reply = Event::Reply {
            tab,
            id,
            reply,
            poll_interval_ms,
        };
        self.schedule(at, reply);
    }
}

fn request_summary(request: &Request) -> String {
    match request {
        Request::Pull { last_sync } => format!("pull lastSync={last_sync:?}"),
        Request::EndSession { .. } => "end session".into(),
        Request::Push {
            client_id,
            mutations,
            last_sync,
            keepalive,
        } => {
            let ids: Vec<String> = mutations
                .iter()
                .map(|m| format!("{}:{}/{}@{}", m.id, m.collection, m.key, m.updated_at))
                .collect();
            format!(
                "push{} {client_id} lastSync={last_sync:?} [{}]",
                if *keepalive { " keepalive" } else { "" },
                ids.join(" ")
            )
        }
    }
}

fn reply_summary(reply: &Reply) -> String {
    match reply {
        Reply::Pulled(page) => format!(
            "pulled cursor={} changes={}{}",
            page.cursor,
            page.changes.len(),
            if page.more { " more" } else { "" }
        ),
        Reply::Pushed { ack, page } => {
            format!(
                "pushed ack={ack} cursor={} changes={}",
                page.cursor,
                page.changes.len()
            )
        }
        Reply::NotModified => "304".into(),
        Reply::Done => "done".into(),
        Reply::Failed(f) => format!("failed {f:?}"),
    }
}

fn message_summary(message: &TabMessage) -> String {
    use sinkron_core::engine::TabBody;
    let body = match &message.body {
        TabBody::Wrote { id, key, record } => {
            format!(
                "wrote #{id} {}/{} @{}",
                key.collection, key.key, record.updated_at
            )
        }
        TabBody::Synced {
            from,
            to,
            reset,
            more,
            changes,
            gone,
        } => format!(
            "synced {from:?}->{to}{}{} changes={}{}",
            if *reset { " reset" } else { "" },
            if *more { " more" } else { "" },
            changes.len(),
            gone.as_ref()
                .map(|g| format!(" gone={}", g.len()))
                .unwrap_or_default()
        ),
        TabBody::Acked { client_id, ack } => format!("acked {client_id} {ack}"),
        TabBody::PullWanted => "pull wanted".into(),
        TabBody::Unreachable => "unreachable".into(),
        TabBody::SignedIn => "signed in".into(),
        TabBody::SignedOut => "signed out".into(),
    };
    format!("[{:?}] {body}", message.scope)
}
