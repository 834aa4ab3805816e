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
//! To add an actor, action or fault: see ARCHITECTURE.md, "sinkron-sim".

use std::collections::{BTreeMap, HashMap, VecDeque};

use sinkron_core::adopt::adoption_order;
use sinkron_core::engine::{Failure, TabMessage};
use sinkron_core::{
    Change, Command, Config, Engine, Mutation, Persist, Record, RecordKey, Reply, Request,
};

use crate::params::Params;
use crate::rng::Rng;
use crate::server::{show, Key, Server};
use crate::trace::Trace;
use crate::{Outcome, Violation};

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
    Reply { tab: TabId, id: u64, reply: Reply },
    /// A `BroadcastChannel` message reaches a tab.
    Message { tab: TabId, message: TabMessage },
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
}

/// Which scope a record may be in: a user's account, or one device's guest data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScopeTag {
    User(usize),
    Guest(usize),
}

struct Tab {
    id: TabId,
    engine: Engine,
    visible: bool,
    /// Read-your-writes: this tab's latest own write per key (lowered when the server clamps
    /// it). The view must never show anything older.
    floors: HashMap<RecordKey, Record>,
    /// The client id the floors belong to; a new client id (sign-out) drops them.
    floors_client: String,
    spin_at: u64,
    spins: u32,
    /// The driver's timer (`setTimeout`), armed after every input for the engine's deadline:
    /// it runs on true time, so a device clock jumping later does not move it.
    wake_at: Option<u64>,
}

/// A device's Web Lock: one holder, the others queue.
#[derive(Default)]
struct Lock {
    holder: Option<(TabId, u64)>,
    waiting: VecDeque<TabId>,
    grants: u64,
}

/// One scope of a device's `localStorage`.
#[derive(Default, Debug)]
struct Scope {
    records: BTreeMap<Key, Change>,
    cursor: Option<String>,
    /// Each client id's outbox with its numbering (the next id), kept when empty.
    outboxes: BTreeMap<String, (u64, Vec<Mutation>)>,
}

struct Device {
    owner: usize,
    skew_ms: i64,
    online: bool,
    partitioned: bool,
    /// The signed-in user the app keeps in `localStorage` (restored by new tabs).
    session: Option<usize>,
    tabs: Vec<Tab>,
    storage: BTreeMap<Option<String>, Scope>,
    lock: Lock,
    /// The episode this device is playing (its hot key).
    playing: u64,
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
    writes: u64,
    keys: Vec<RecordKey>,
    /// Every clamp the server made: (client, key, stamped) → stored `updatedAt`.
    clamps: HashMap<(String, Key, u64), u64>,
    /// Every mutation ever sent, by (client id, mutation id): an id, once sent, must always
    /// carry the same write, or the server would skip a new write as a retry of the old.
    sent: HashMap<(String, u64), Mutation>,
}

impl World {
    /// Runs one seed to the end: safety phase, then liveness phase.
    pub fn run(seed: u64, params: Params) -> Outcome {
        let mut rng = Rng::new(seed);
        let mut trace = Trace::new(params.trace_tail);
        let server = match Server::start(params.users, params.page_size, T0, &mut rng) {
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
            writes: 0,
            keys,
            clamps: HashMap::new(),
            sent: HashMap::new(),
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
                return Ok(());
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
                    self.schedule(
                        at,
                        Event::Reply {
                            tab,
                            id,
                            reply: Reply::Failed(Failure::Network),
                        },
                    );
                    return Ok(());
                };
                for clamp in &served.clamps {
                    self.clamps.insert(
                        (clamp.client_id.clone(), clamp.key.clone(), clamp.from),
                        clamp.to,
                    );
                    for device in &mut self.devices {
                        for t in &mut device.tabs {
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
                let (at, reply) = if lost {
                    (
                        self.now + self.params.request_timeout_ms,
                        Reply::Failed(Failure::Network),
                    )
                } else {
                    (self.now + self.latency(), served.reply)
                };
                self.schedule(at, Event::Reply { tab, id, reply });
                Ok(())
            }
            Event::Reply { tab, id, reply } => {
                let Some((d, t)) = self.find(tab) else {
                    return Ok(());
                };
                self.trace(format_args!(
                    "d{d} t{tab} #{id} reply {}",
                    reply_summary(&reply)
                ));
                self.input(d, t, |e, now| e.handle_reply(now, id, reply))
            }
            Event::Message { tab, message } => {
                let Some((d, t)) = self.find(tab) else {
                    return Ok(());
                };
                self.trace(format_args!(
                    "d{d} t{tab} message {}",
                    message_summary(&message)
                ));
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
        }
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

    fn scope_tag(&self, d: usize, scope: Option<&str>) -> Result<ScopeTag, Violation> {
        match scope {
            None => Ok(ScopeTag::Guest(d)),
            Some(u) => self
                .server
                .user_index(u)
                .map(ScopeTag::User)
                .ok_or_else(|| Violation::new("5 isolation", format!("unknown user id {u}"))),
        }
    }

    fn allowed(&self, client_id: &str, tag: ScopeTag) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|tags| tags.contains(&tag))
    }

    /// Carries out a tab's commands in order. `before` is the user the tab had before the
    /// input: requests belong to it until the tab wipes its scope, then to its new user.
    fn drain(&mut self, d: usize, t: usize, before: Option<String>) -> Result<(), Violation> {
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

    /// Invariant 5 on the tab's view, and read-your-writes.
    fn check_view(&mut self, d: usize, t: usize) -> Result<(), Violation> {
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

    fn persist(&mut self, d: usize, tab: TabId, p: Persist) -> Result<(), Violation> {
        let (scope, client) = match &p {
            Persist::Record { scope, change } => (scope.clone(), Some(change.client_id.clone())),
            // An empty outbox holds nothing of anyone's.
            Persist::Outbox {
                scope,
                client_id,
                mutations,
                ..
            } if !mutations.is_empty() => (scope.clone(), Some(client_id.clone())),
            Persist::Outbox { scope, .. } => (scope.clone(), None),
            Persist::ClearRecords { scope }
            | Persist::Cursor { scope, .. }
            | Persist::Wipe { scope } => (scope.clone(), None),
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
        let storage = &mut self.devices[d].storage;
        match p {
            Persist::Record { scope, change } => {
                storage
                    .entry(scope)
                    .or_default()
                    .records
                    .insert((change.collection.clone(), change.key.clone()), change);
            }
            Persist::ClearRecords { scope } => {
                storage.entry(scope).or_default().records.clear();
            }
            Persist::Cursor { scope, cursor } => storage.entry(scope).or_default().cursor = cursor,
            Persist::Outbox {
                scope,
                client_id,
                next_id,
                mutations,
            } => {
                let outboxes = &mut storage.entry(scope).or_default().outboxes;
                outboxes.insert(client_id, (next_id, mutations));
            }
            Persist::Wipe { scope } => {
                storage.remove(&scope);
            }
        }
        Ok(())
    }

    fn broadcast(&mut self, d: usize, from: TabId, message: TabMessage) {
        let receivers: Vec<TabId> = self.devices[d]
            .tabs
            .iter()
            .map(|t| t.id)
            .filter(|&id| id != from)
            .collect();
        for to in receivers {
            let jitter = self.rng.range(0, 3);
            let last = self.channel_last.get(&(from, to)).copied().unwrap_or(0);
            let at = (self.now + jitter).max(last);
            self.channel_last.insert((from, to), at);
            self.schedule(
                at,
                Event::Message {
                    tab: to,
                    message: message.clone(),
                },
            );
        }
    }

    /// Invariant 6, then the network: loss, duplication, latency.
    fn send(
        &mut self,
        d: usize,
        t: usize,
        id: u64,
        request: Request,
        fresh_token: bool,
        scope: Option<&str>,
    ) -> Result<(), Violation> {
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
        let reply = Reply::Failed(failure);
        self.schedule(at, Event::Reply { tab, id, reply });
    }

    /// Invariant 7: a mutation id, once sent under a client id, always carries the same
    /// write. A client that reused one (a reloaded tab that forgot its numbering) would have
    /// its new write skipped by the server as a retry of the old one: lost without a trace.
    fn check_ids_not_reused(
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

    fn lock_request(&mut self, d: usize, tab: TabId) {
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

    fn lock_release(&mut self, d: usize, tab: TabId) {
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

    fn grant(&mut self, d: usize, tab: TabId) {
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
    /// records and an outbox with its numbering — the one of `previous` (the client id a
    /// reloaded or restored tab keeps in `sessionStorage`), else one no live tab owns (a
    /// closed or crashed tab's), as the browser driver does. Nothing stored for the id: the
    /// tab keeps its fresh client id.
    fn open_tab(
        &mut self,
        d: usize,
        visible: bool,
        previous: Option<String>,
    ) -> Result<(), Violation> {
        let seed = self.rng.fork();
        let mut engine = Engine::new(Config::default(), seed);
        let user = self.devices[d].session.map(|u| self.server.user_id(u));
        engine.restore_user(user.clone());
        let live: Vec<String> = self.devices[d]
            .tabs
            .iter()
            .map(|t| t.engine.client_id().to_owned())
            .collect();
        let mut floors = HashMap::new();
        if let Some(scope) = self.devices[d].storage.get(&user) {
            engine.restore_cursor(scope.cursor.clone());
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
                    // A write the server took (clamped) before the tab that wrote it died.
                    let clamped = self.clamps.get(&(
                        client_id.clone(),
                        (m.collection.clone(), m.key.clone()),
                        m.updated_at,
                    ));
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
        }
        let id = self.next_tab;
        self.next_tab += 1;
        let floors_client = engine.client_id().to_owned();
        self.trace(format_args!(
            "d{d} t{id} opens (user {user:?}, client {floors_client}, {} restored writes)",
            floors.len()
        ));
        self.devices[d].tabs.push(Tab {
            id,
            engine,
            visible,
            floors,
            floors_client,
            spin_at: 0,
            spins: 0,
            wake_at: None,
        });
        let t = self.devices[d].tabs.len() - 1;
        let online = self.devices[d].online;
        self.input(d, t, |e, now| {
            e.handle_online(now, online);
            e.handle_visibility(now, visible);
        })
    }

    /// Closes a tab the way a browser does: it is hidden first (which flushes its outbox
    /// with a keepalive request), then it is gone and its lock is released.
    fn close_tab(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let id = self.devices[d].tabs[t].id;
        self.trace(format_args!("d{d} t{id} closes"));
        self.devices[d].tabs[t].visible = false;
        self.input(d, t, |e, now| e.handle_visibility(now, false))?;
        self.devices[d].tabs.remove(t);
        self.lock_release(d, id);
        Ok(())
    }

    /// A tab dies: its memory is lost, the device's storage is not. Sometimes the browser
    /// restores it at once, with its `sessionStorage` (its client id).
    fn crash_tab(&mut self, d: usize, t: usize) -> Result<(), Violation> {
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

    /// The user reloads a tab: the page is hidden (which flushes its outbox with a
    /// keepalive request) and unloaded, and the new page keeps the old one's client id
    /// (`sessionStorage` survives a reload) and restores the device's storage.
    fn reload_tab(&mut self, d: usize, t: usize) -> Result<(), Violation> {
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

    // ----- actions and faults (safety phase) -----

    fn action(&mut self) -> Result<(), Violation> {
        if self.rng.chance(self.params.fault_per_mille) {
            return self.fault();
        }
        let d = self.rng.index(self.devices.len());
        let tabs = self.devices[d].tabs.len();
        if tabs == 0 {
            let visible = self.rng.chance(800);
            return self.open_tab(d, visible, None);
        }
        let t = self.rng.index(tabs);
        let roll = self.rng.range(0, 999);
        match roll {
            0..=549 => {
                // Users act in the tab they look at, if there is one.
                let t = self.devices[d]
                    .tabs
                    .iter()
                    .position(|tab| tab.visible)
                    .unwrap_or(t);
                self.user_write(d, t)
            }
            550..=589 if tabs < self.params.tabs_max => {
                let visible = self.rng.chance(700);
                self.open_tab(d, visible, None)
            }
            590..=609 => self.close_tab(d, t),
            610..=619 => self.crash_tab(d, t),
            620..=639 => self.reload_tab(d, t),
            640..=719 => {
                let visible = !self.devices[d].tabs[t].visible;
                self.set_visible(d, t, visible)
            }
            720..=759 => {
                // The whole device is hidden (screen off) or shown again.
                let visible = self.devices[d].tabs.iter().all(|tab| !tab.visible);
                self.trace(format_args!("d{d} all tabs visible={visible}"));
                for t in 0..self.devices[d].tabs.len() {
                    self.set_visible(d, t, visible)?;
                }
                Ok(())
            }
            760..=809 => {
                let id = self.devices[d].tabs[t].id;
                self.trace(format_args!("d{d} t{id} focus"));
                self.set_visible(d, t, true)?;
                self.input(d, t, |e, now| e.handle_focus(now))
            }
            810..=849 => {
                let online = !self.devices[d].online;
                self.set_online(d, online)
            }
            850..=899 => self.sign_in(d, t),
            900..=924 => {
                if self.devices[d].tabs[t].engine.user().is_none() {
                    return Ok(());
                }
                let id = self.devices[d].tabs[t].id;
                self.trace(format_args!("d{d} t{id} signs out"));
                self.devices[d].session = None;
                self.input(d, t, |e, now| e.sign_out(now))
            }
            _ => self.user_write(d, t),
        }
    }

    fn set_visible(&mut self, d: usize, t: usize, visible: bool) -> Result<(), Violation> {
        let tab = &mut self.devices[d].tabs[t];
        if tab.visible == visible {
            return Ok(());
        }
        tab.visible = visible;
        let id = tab.id;
        self.trace(format_args!("d{d} t{id} visible={visible}"));
        self.input(d, t, |e, now| e.handle_visibility(now, visible))
    }

    fn set_online(&mut self, d: usize, online: bool) -> Result<(), Violation> {
        self.devices[d].online = online;
        self.trace(format_args!("d{d} online={online}"));
        for t in 0..self.devices[d].tabs.len() {
            self.input(d, t, |e, now| e.handle_online(now, online))?;
        }
        Ok(())
    }

    fn sign_in(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let device = &self.devices[d];
        let user = if self.rng.chance(self.params.shared_sign_in_per_mille) {
            self.rng.index(self.params.users)
        } else {
            device.owner
        };
        if device.session == Some(user)
            && device.tabs[t].engine.user() == Some(self.server.user_id(user).as_str())
        {
            return Ok(());
        }
        let id = device.tabs[t].id;
        let user_id = self.server.user_id(user);
        self.trace(format_args!(
            "d{d} t{id} signs in as user {user} (id {user_id})"
        ));
        self.devices[d].session = Some(user);
        self.input(d, t, |e, now| e.sign_in(now, &user_id))
    }

    /// A user action: a write of the kinds the product has.
    fn user_write(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let kind = self.rng.range(0, 99);
        let e = self.rng.range(0, 7);
        let writes: Vec<(String, String, Option<String>)> = match kind {
            0..=44 => {
                if self.rng.chance(50) {
                    self.devices[d].playing = e;
                }
                let playing = self.devices[d].playing;
                let position = self.rng.range(0, 3_600);
                vec![(
                    "history".into(),
                    format!("ep-{playing}"),
                    Some(format!(r#"{{"position":{position}}}"#)),
                )]
            }
            45..=51 => vec![("history".into(), format!("ep-{e}"), None)],
            52..=54 => {
                let engine = &self.devices[d].tabs[t].engine;
                engine
                    .collection("history")
                    .into_iter()
                    .map(|(k, _)| ("history".to_owned(), k.to_owned(), None))
                    .collect()
            }
            55..=74 => {
                let key = format!("show-{}", e % 5);
                let on = self.devices[d].tabs[t]
                    .engine
                    .get(&RecordKey::new("favorites", key.as_str()))
                    .is_some_and(|r| r.value.is_some());
                let value = (!on).then(|| r#"{"on":true}"#.to_owned());
                vec![("favorites".into(), key, value)]
            }
            75..=89 => {
                let v = if self.rng.chance(500) { 1 } else { -1 };
                vec![(
                    "likes".into(),
                    format!("ep-{e}"),
                    Some(format!(r#"{{"v":{v}}}"#)),
                )]
            }
            _ => {
                let setting = ["quality", "autoplay", "subtitles"][(e % 3) as usize];
                let value = self.rng.range(0, 4);
                vec![(
                    "settings".into(),
                    setting.to_owned(),
                    Some(format!(r#"{{"value":{value}}}"#)),
                )]
            }
        };
        for (collection, key, value) in writes {
            self.writes += 1;
            // Every value is unique, so a report can tell versions apart.
            let value = value.map(|v| format!(r#"{{"w":{},{}"#, self.writes, &v[1..]));
            let id = self.devices[d].tabs[t].id;
            self.trace(format_args!(
                "d{d} t{id} write {collection}/{key} = {}",
                value.as_deref().unwrap_or("null")
            ));
            let local = self.local(d);
            let tab = &mut self.devices[d].tabs[t];
            let before = tab.engine.user().map(str::to_owned);
            tab.engine
                .write(local, &collection, &key, value)
                .map_err(|e| Violation::new("sim", format!("write refused: {}", e.code())))?;
            let record_key = RecordKey::new(collection, key);
            if let Some(own) = tab.engine.get(&record_key).cloned() {
                if tab.floors_client != tab.engine.client_id() {
                    tab.floors.clear();
                    tab.floors_client = tab.engine.client_id().to_owned();
                }
                tab.floors.insert(record_key, own);
            }
            self.drain(d, t, before)?;
        }
        Ok(())
    }

    fn fault(&mut self) -> Result<(), Violation> {
        let d = self.rng.index(self.devices.len());
        match self.rng.range(0, 9) {
            0..=3 => {
                if self.devices[d].partitioned {
                    return Ok(());
                }
                let until = self.now + self.rng.range(5_000, 60_000);
                self.devices[d].partitioned = true;
                self.trace(format_args!(
                    "FAULT d{d} partitioned for {} s",
                    (until - self.now) / 1000
                ));
                self.schedule(until, Event::Heal { device: d });
                Ok(())
            }
            4..=5 => {
                if !self.server.is_up() {
                    return Ok(());
                }
                let until = self.now + self.rng.range(500, 20_000);
                self.trace(format_args!(
                    "FAULT server crashes, down {} ms",
                    until - self.now
                ));
                self.server.crash();
                self.schedule(until, Event::Restart);
                Ok(())
            }
            _ => {
                let skew = self.devices[d].skew_ms;
                let hour = 3_600_000;
                let new = if self.rng.chance(750) {
                    self.rng.range_i64(-hour, skew)
                } else {
                    self.rng.range_i64(skew, hour)
                };
                self.devices[d].skew_ms = new;
                self.trace(format_args!("FAULT d{d} clock jumps {} ms", new - skew));
                Ok(())
            }
        }
    }

    // ----- liveness -----

    /// Ends the safety phase: no more writes or faults, the server up, every device online,
    /// connected and visible, and a tab open wherever the device holds a session or writes no
    /// live tab owns.
    fn heal(&mut self) -> Result<(), Violation> {
        self.active = false;
        self.trace(format_args!(
            "HEAL: faults off, writes off, everyone online and visible"
        ));
        if !self.server.is_up() {
            self.server
                .restart()
                .map_err(|e| Violation::new("sim", e))?;
            self.server.check_all()?;
        }
        for d in 0..self.devices.len() {
            self.devices[d].partitioned = false;
            if !self.devices[d].online {
                self.set_online(d, true)?;
            }
            for t in 0..self.devices[d].tabs.len() {
                self.set_visible(d, t, true)?;
            }
            if self.devices[d].session.is_some() && self.devices[d].tabs.is_empty() {
                self.open_tab(d, true, None)?;
            }
            for _ in 0..self.params.tabs_max {
                let scope = self.devices[d].session.map(|u| self.server.user_id(u));
                let live: Vec<String> = self.devices[d]
                    .tabs
                    .iter()
                    .map(|t| t.engine.client_id().to_owned())
                    .collect();
                let orphan = self.devices[d].storage.get(&scope).is_some_and(|s| {
                    s.outboxes
                        .iter()
                        .any(|(c, (_, m))| !m.is_empty() && !live.contains(c))
                });
                if scope.is_none() || !orphan {
                    break;
                }
                self.open_tab(d, true, None)?;
            }
        }
        Ok(())
    }

    /// `Some(())` once nothing is in flight, nothing is pending, and every signed-in tab and
    /// device shows exactly the server's state of its user.
    fn converged(&mut self) -> Result<Option<()>, Violation> {
        let quiet = self
            .events
            .values()
            .all(|e| matches!(e, Event::Heal { .. } | Event::Restart));
        if !quiet {
            return Ok(None);
        }
        for device in &self.devices {
            for tab in &device.tabs {
                let status = tab.engine.status();
                if status.signed_in && (status.pending > 0 || status.syncing) {
                    return Ok(None);
                }
            }
        }
        Ok(self.divergence_detail()?.is_none().then_some(()))
    }

    fn divergence(&mut self) -> Result<String, Violation> {
        let busy: Vec<String> = self
            .devices
            .iter()
            .enumerate()
            .flat_map(|(d, device)| {
                device.tabs.iter().filter_map(move |tab| {
                    let s = tab.engine.status();
                    (s.signed_in && (s.pending > 0 || s.syncing)).then(|| {
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
    fn divergence_detail(&mut self) -> Result<Option<String>, Violation> {
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
}

fn request_summary(request: &Request) -> String {
    match request {
        Request::Pull { last_sync } => format!("pull lastSync={last_sync:?}"),
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
            changes,
        } => format!(
            "synced {from:?}->{to}{} changes={}",
            if *reset { " reset" } else { "" },
            changes.len()
        ),
        TabBody::Acked { client_id, ack } => format!("acked {client_id} {ack}"),
        TabBody::PullWanted => "pull wanted".into(),
        TabBody::SignedIn => "signed in".into(),
        TabBody::SignedOut => "signed out".into(),
    };
    format!("[{:?}] {body}", message.scope)
}
