//! What happens to the world in the safety phase, drawn only from the run's `rng` and traced:
//! user actions (writes of the kinds the product has, tabs opened, closed, reopened, crashed,
//! reloaded, duplicated, shown and hidden, focus, sign-in and sign-out, going offline) and
//! faults (a partition, a server crash, a device clock jump). Faults on the wire are decided where they
//! happen, in `World::send` and `World::deliver`. `heal` ends the phase.

use sinkron_core::merge::Stamp;
use sinkron_core::RecordKey;

use super::device::CHANNEL_MS_MAX;
use super::{Event, PositionWrite, World, Written};
use crate::server::{MERGED, UNKNOWN};
use crate::Violation;

/// Whether the server knows the key's collection (else it refuses every write of it).
fn collection_known(key: &RecordKey) -> bool {
    key.collection != UNKNOWN
}

impl World {
    pub(super) fn action(&mut self) -> Result<(), Violation> {
        if self.rng.chance(self.params.fault_per_mille) {
            return self.fault();
        }
        let d = self.rng.index(self.devices.len());
        let tabs = self.devices[d].tabs.len();
        if tabs == 0 {
            let visible = self.rng.chance(800);
            // The browser opened again with its last session's tabs, or a new one.
            if self.rng.chance(500) {
                return self.reopen_tab(d, visible);
            }
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
                // Now and then a closed tab comes back (the browser's "reopen closed tab").
                if self.rng.chance(250) {
                    return self.reopen_tab(d, visible);
                }
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
            925..=944 => self.away_and_back(d, t),
            900..=924 => {
                if self.devices[d].tabs[t].engine.user().is_none() {
                    return Ok(());
                }
                let id = self.devices[d].tabs[t].id;
                // Now and then the user drops what is not yet sent, on purpose.
                let discard = self.rng.chance(100);
                self.trace(format_args!("d{d} t{id} signs out (discard={discard})"));
                if discard {
                    // What the device had not sent goes on purpose: its writes in the account
                    // are no longer the server's to hold (those it did send it still holds,
                    // newer ones made elsewhere included).
                    let user = self.devices[d].tabs[t].engine.user();
                    let user = user.and_then(|u| self.server.user_index(u));
                    self.written.retain(|w| w.user != user || w.device != d);
                }
                self.devices[d].session = None;
                self.input(d, t, |e, now| {
                    e.sign_out(now, discard);
                })
            }
            945..=954 if tabs < self.params.tabs_max => self.duplicate_tab(d, t),
            _ => self.user_write(d, t),
        }
    }

    pub(super) fn set_visible(
        &mut self,
        d: usize,
        t: usize,
        visible: bool,
    ) -> Result<(), Violation> {
        let tab = &mut self.devices[d].tabs[t];
        if tab.visible == visible {
            return Ok(());
        }
        tab.visible = visible;
        let id = tab.id;
        self.trace(format_args!("d{d} t{id} visible={visible}"));
        self.input(d, t, |e, now| e.handle_visibility(now, visible))
    }

    /// Whether the tab must count itself cut off by the world's account, whatever its
    /// engine says: another tab of the device, in the tab's scope, had a request fail while
    /// the browser said online ([`Device::cut_at`]), or a leader cut off got the tab's request
    /// for a pull of that scope (a tab opened during the outage, `Tab::asked`), after the tab
    /// joined that scope and last heard the server's state; the device has not come back
    /// online since, and the channel has had time to tell it (its messages take at most a
    /// few ms).
    pub(super) fn told_cut_off(&self, d: usize, t: usize) -> bool {
        let device = &self.devices[d];
        let tab = &device.tabs[t];
        let told = |cut: &Option<(u64, Option<String>)>| {
            cut.as_ref().is_some_and(|(at, scope)| {
                scope.as_deref() == tab.engine.user()
                    && tab.since < *at
                    && tab.heard_at < *at
                    && device.online_since < *at
                    && device.online
                    && self.now >= at + CHANNEL_MS_MAX
            })
        };
        told(&device.cut_at) || told(&tab.asked)
    }

    pub(super) fn set_online(&mut self, d: usize, online: bool) -> Result<(), Violation> {
        self.devices[d].online = online;
        if online {
            self.devices[d].online_since = self.now;
        }
        self.trace(format_args!("d{d} online={online}"));
        for t in 0..self.devices[d].tabs.len() {
            self.input(d, t, |e, now| e.handle_online(now, online))?;
        }
        Ok(())
    }

    pub(super) fn sign_in(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let device = &self.devices[d];
        let user = if self.rng.chance(self.params.shared_sign_in_per_mille) {
            self.rng.index(self.params.users)
        } else {
            device.owner
        };
        if device.session == Some(user)
            && device.revoked.is_none()
            && device.tabs[t].engine.user() == Some(self.server.user_id(user).as_str())
        {
            return Ok(());
        }
        if device.revoked.is_some() {
            // Signing in again on this device: every tab resumes, with its writes.
            return self.sign_in_again(d);
        }
        let user_id = self.server.user_id(user);
        if device.tabs[t].engine.user() == Some(user_id.as_str()) {
            // The tab has not yet heard of a sign-out in another tab a moment ago: it shows
            // the user signed in, so there is no sign-in to make in it.
            return Ok(());
        }
        let id = device.tabs[t].id;
        self.trace(format_args!(
            "d{d} t{id} signs in as user {user} (id {user_id})"
        ));
        self.devices[d].session = Some(user);
        // The guest's writes on the device join the account.
        for w in &mut self.written {
            if w.device == d && w.user.is_none() {
                w.user = Some(user);
            }
        }
        // What is left parked, and what the guest's tabs gone left, is taken over as the
        // tab locks are answered (`World::unpark`, which checks it).
        self.input(d, t, |e, now| e.sign_in(now, &user_id))
    }

    /// The user signs in again on a device whose session the site ended: each tab resumes.
    fn sign_in_again(&mut self, d: usize) -> Result<(), Violation> {
        self.devices[d].revoked = None;
        let Some(user) = self.devices[d].session else {
            return Ok(());
        };
        let user_id = self.server.user_id(user);
        self.trace(format_args!("d{d} signs in again as user {user}"));
        for t in 0..self.devices[d].tabs.len() {
            if self.devices[d].tabs[t].engine.user() == Some(user_id.as_str()) {
                self.input(d, t, |e, now| e.sign_in(now, &user_id))?;
            }
        }
        Ok(())
    }

    /// The site ends a signed-in device's session elsewhere.
    fn revoke(&mut self) -> Result<(), Violation> {
        let d = self.rng.index(self.devices.len());
        if self.devices[d].session.is_none() || self.devices[d].revoked.is_some() {
            return Ok(());
        }
        self.trace(format_args!("FAULT the site ends d{d}'s session elsewhere"));
        self.devices[d].revoked = Some(std::collections::HashMap::new());
        Ok(())
    }

    /// A user action: a write of the kinds the product has.
    pub(super) fn user_write(&mut self, d: usize, t: usize) -> Result<(), Violation> {
        let kind = self.rng.range(0, 99);
        let e = self.rng.range(0, 7);
        // `Some(names)`: a write of those fields only, its value the record as the tab shows
        // it with them set (an app's `put(…, fields)`).
        type Write = (String, String, Option<String>, Option<Vec<String>>);
        let writes: Vec<Write> = match kind {
            0..=44 => {
                if self.rng.chance(50) {
                    self.devices[d].playing = e;
                }
                let playing = self.devices[d].playing;
                // History is merged field by field (`server::MERGED`): the position while
                // playing, now and then a like or `completed` (sticky), each its own field;
                // half of them written as the whole record holding just that field, half
                // naming it (and the write's marker `w`) over what the tab shows.
                let (name, field) = match self.rng.range(0, 10) {
                    0..=6 => ("position", format!("{}", self.rng.range(0, 3_600))),
                    7 | 8 => ("liked", format!("{}", self.rng.chance(500))),
                    _ => ("completed", format!("{}", self.rng.chance(700))),
                };
                let fields = self
                    .rng
                    .chance(500)
                    .then(|| vec![name.to_owned(), "w".to_owned()]);
                vec![(
                    "history".into(),
                    format!("ep-{playing}"),
                    Some(format!(r#"{{"{name}":{field}}}"#)),
                    fields,
                )]
            }
            45..=51 => vec![("history".into(), format!("ep-{e}"), None, None)],
            52..=54 => {
                let engine = &self.devices[d].tabs[t].engine;
                engine
                    .collection("history")
                    .into_iter()
                    .map(|(k, _)| ("history".to_owned(), k.to_owned(), None, None))
                    .collect()
            }
            55..=74 => {
                let key = format!("show-{}", e % 5);
                let on = self.devices[d].tabs[t]
                    .engine
                    .get(&RecordKey::new("favorites", key.as_str()))
                    .is_some_and(|r| r.value.is_some());
                let value = (!on).then(|| r#"{"on":true}"#.to_owned());
                vec![("favorites".into(), key, value, None)]
            }
            75..=89 => {
                let v = if self.rng.chance(500) { 1 } else { -1 };
                vec![(
                    "likes".into(),
                    format!("ep-{e}"),
                    Some(format!(r#"{{"v":{v}}}"#)),
                    None,
                )]
            }
            // An app version ahead of its server: a write the server refuses, between others.
            98 | 99 => vec![(
                UNKNOWN.into(),
                format!("bm-{}", e % 4),
                Some(r#"{"note":"later"}"#.into()),
                None,
            )],
            _ => {
                let setting = ["quality", "autoplay", "subtitles"][(e % 3) as usize];
                let value = self.rng.range(0, 4);
                vec![(
                    "settings".into(),
                    setting.to_owned(),
                    Some(format!(r#"{{"value":{value}}}"#)),
                    None,
                )]
            }
        };
        for (collection, key, value, fields) in writes {
            self.writes += 1;
            // Every value is unique, so a report can tell versions apart.
            let mut value = value.map(|v| format!(r#"{{"w":{},{}"#, self.writes, &v[1..]));
            if let (Some(set), Some(_)) = (&value, &fields) {
                // The fields set over the record as this tab shows it.
                let shown = self.devices[d].tabs[t]
                    .engine
                    .get(&RecordKey::new(collection.as_str(), key.as_str()))
                    .and_then(|r| r.value.as_deref())
                    .map(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>)
                    .transpose()
                    .map_err(|e| Violation::new("sim", format!("unreadable value: {e}")))?;
                let mut whole = shown.unwrap_or_default();
                let set: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(set).expect("a value the simulation wrote");
                whole.extend(set);
                value = Some(serde_json::Value::Object(whole).to_string());
            }
            let id = self.devices[d].tabs[t].id;
            let named = fields
                .as_ref()
                .map_or(String::new(), |f| format!(" (fields {})", f.join(",")));
            self.trace(format_args!(
                "d{d} t{id} write {collection}/{key} = {}{named}",
                value.as_deref().unwrap_or("null")
            ));
            let local = self.local(d);
            let position = collection == MERGED
                && match (&fields, &value) {
                    (Some(names), _) => names.iter().any(|n| n == "position"),
                    (None, Some(v)) => v.contains(r#""position":"#),
                    (None, None) => false,
                };
            // Offline, or its requests failing while the browser says online: as the tab
            // itself counts it when it stamps the write, which must include what the world
            // knows another tab of the device told it.
            let told = self.told_cut_off(d, t);
            let failed = self.devices[d].cut_at.as_ref().map(|&(at, _)| at);
            let tab = &mut self.devices[d].tabs[t];
            if told && !tab.engine.cut_off() {
                return Err(Violation::new(
                    "a tab beside one cut off counts itself cut off",
                    format!(
                        "d{d} t{} writes {collection}/{key} counting itself connected, though \
                         its device is cut off (a request failed at {failed:?}; a leader cut \
                         off got its request for a pull at {:?}) and it has not heard the \
                         server since",
                        tab.id,
                        tab.asked.as_ref().map(|(at, _)| at)
                    ),
                ));
            }
            let cut_off = tab.engine.cut_off();
            let before = tab.engine.user().map(str::to_owned);
            let copy = tab
                .engine
                .get(&RecordKey::new(collection.as_str(), key.as_str()))
                .map_or(0, |r| r.updated_at);
            // What a write made cut off continues: its tab's last sync and the copy it replaces.
            let as_of = tab
                .synced
                .filter(|_| cut_off)
                .map(|(_, at, ahead)| at.saturating_add_signed(ahead).max(copy));
            let written = value.clone();
            // The fields the write sets, as the server's merge reads it.
            let sets = match (&value, &fields) {
                (None, _) => None,
                (Some(_), Some(names)) => Some(names.clone()),
                (Some(v), None) => Some(
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(v)
                        .map_err(|e| Violation::new("sim", format!("unreadable value: {e}")))?
                        .keys()
                        .cloned()
                        .collect(),
                ),
            };
            tab.engine
                .write_fields(local, &collection, &key, value, fields)
                .map_err(|e| Violation::new("sim", format!("write refused: {}", e.code())))?;
            let user = before.as_deref().and_then(|u| self.server.user_index(u));
            let stamped = tab
                .engine
                .outbox()
                .into_iter()
                .rev()
                .find(|m| m.collection == collection && m.key == key)
                .map(|m| Stamp(m.updated_at, tab.engine.client_id().to_owned()));
            if let Some(stamp) = stamped {
                if let (Some(user), true) = (user, position) {
                    self.positions.push(PositionWrite {
                        user,
                        device: d,
                        key: (collection.clone(), key.clone()),
                        stamp: stamp.clone(),
                        at: self.now,
                        connected: !cut_off,
                        as_of,
                    });
                }
                // A guest tab that has not yet heard of its device's sign-in writes into the
                // account it follows into.
                let account = user.or(self.devices[d].session.filter(|_| before.is_none()));
                // A write the server refuses (a collection it does not know) is no write to
                // find there.
                if collection != UNKNOWN {
                    self.written.push(Written {
                        user: account,
                        device: d,
                        key: (collection.clone(), key.clone()),
                        stamp,
                        fields: sets,
                        value: written,
                        at: self.now,
                        guest: user.is_none(),
                    });
                }
            }
            let tab = &mut self.devices[d].tabs[t];
            let record_key = RecordKey::new(collection, key);
            // A write the server refuses is not one to read back once refused.
            let own = tab
                .engine
                .get(&record_key)
                .filter(|_| collection_known(&record_key));
            if let Some(own) = own.cloned() {
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

    pub(super) fn fault(&mut self) -> Result<(), Violation> {
        if self.params.compaction && self.rng.chance(100) {
            return self.compact();
        }
        if self.params.revocation && self.rng.chance(100) {
            return self.revoke();
        }
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
                self.devices[d].lowest_skew_ms = self.devices[d].lowest_skew_ms.min(new);
                self.trace(format_args!("FAULT d{d} clock jumps {} ms", new - skew));
                Ok(())
            }
        }
    }

    /// The server's sweep, with a short retention: tombstones of the last seconds go too, so
    /// devices behind them get a reset.
    fn compact(&mut self) -> Result<(), Violation> {
        if !self.server.is_up() {
            return Ok(());
        }
        // A real server keeps tombstones for days, far longer than any whole state takes to
        // arrive: none deleted since a device began receiving one goes (the engine relies on
        // it: see `Engine::apply_changes`).
        let receiving = self.devices.iter().filter_map(|d| d.whole_since).min();
        let before = self
            .now
            .saturating_sub(self.rng.range(0, 30_000))
            .min(receiving.unwrap_or(u64::MAX));
        let (gone, forgotten) = self.server.compact(before)?;
        self.trace(format_args!(
            "FAULT server compacts tombstones stored before {before}: {gone} gone"
        ));
        // A write's read-back rests on the tombstones newer than it: once one of them is
        // compacted, nothing there, or an older write that came after, is right.
        for (user, (collection, key)) in forgotten {
            // So do the writes of that key waiting in storage, for a tab that restores them.
            let user_id = self.server.user_id(user);
            for device in &self.devices {
                for (scope, stored) in &device.storage {
                    if scope.as_ref().is_some_and(|s| *s != user_id) {
                        continue;
                    }
                    for (client_id, (_, mutations)) in &stored.outboxes {
                        for m in mutations {
                            if m.collection == collection && m.key == key {
                                self.unfloored.insert((
                                    client_id.clone(),
                                    (collection.clone(), key.clone()),
                                    m.updated_at,
                                ));
                            }
                        }
                    }
                }
            }
            // Its writes made before are no longer to be found there either.
            self.written
                .retain(|w| w.user != Some(user) || w.key.0 != collection || w.key.1 != key);
            let record_key = RecordKey::new(collection, key);
            for device in &mut self.devices {
                // A page in the back/forward cache too: back, it may get a whole state that
                // no longer holds the delete.
                let kept = device.kept.as_mut().map(|k| &mut k.tab);
                for tab in device.tabs.iter_mut().chain(kept) {
                    let of_user =
                        tab.engine.user().and_then(|id| self.server.user_index(id)) == Some(user);
                    if of_user {
                        tab.floors.remove(&record_key);
                    }
                }
            }
        }
        Ok(())
    }

    // ----- liveness -----

    /// Ends the safety phase: no more writes or faults, the server up, every device online,
    /// connected and visible, and a tab open wherever the device holds a session or writes no
    /// live tab owns.
    pub(super) fn heal(&mut self) -> Result<(), Violation> {
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
            // A page still in the back/forward cache is evicted: gone, as if closed (what it
            // did not send, a tab opened below takes over).
            if let Some(kept) = self.devices[d].kept.take() {
                self.trace(format_args!("d{d} t{} evicted from the cache", kept.tab.id));
            }
            if self.devices[d].revoked.is_some() {
                self.sign_in_again(d)?;
            }
            if !self.devices[d].online {
                self.set_online(d, true)?;
            }
            for t in 0..self.devices[d].tabs.len() {
                self.set_visible(d, t, true)?;
            }
            // A device signed in has a tab open: its leader sends, as it pulls, what closed
            // tabs left unsent (no tab needs to start to take their outboxes over).
            if self.devices[d].session.is_some() && self.devices[d].tabs.is_empty() {
                self.open_tab(d, true, None)?;
            }
        }
        Ok(())
    }
}
