//! Unit tests of the engine's policies, on a fake clock with scripted replies.

use super::*;

const T0: u64 = 1_700_000_000_000;

/// One engine plus the commands it produced, driven by hand.
struct Tab {
    engine: Engine,
    now: u64,
    commands: Vec<Command>,
}

impl Tab {
    /// A fresh engine whose writes (to `history`) are not hot: the policies of bursts.
    fn new(seed: u64) -> Self {
        let config = Config {
            hot: Vec::new(),
            ..Config::default()
        };
        Tab::with(config, seed)
    }

    fn with(config: Config, seed: u64) -> Self {
        Tab {
            engine: Engine::new(config, seed),
            now: T0,
            commands: Vec::new(),
        }
    }

    /// A visible tab signed in as `u1` that holds the leader lock and has answered its
    /// first pull (cursor "1", empty state).
    fn leader() -> Self {
        Tab::leader_with(Tab::new(1))
    }

    /// [`Tab::leader`] from `tab`, fresh.
    fn leader_with(mut tab: Tab) -> Self {
        tab.engine.sign_in(tab.now, "u1");
        tab.drain();
        tab.engine.handle_leadership(tab.now, true);
        let (id, request) = tab.only_send();
        assert_eq!(request, Request::Pull { last_sync: None });
        tab.reply(id, Reply::Pulled(page("1", vec![], false)));
        tab.drain();
        tab
    }

    /// [`Engine::unpark`] of an outbox stored in this tab's own scope.
    fn unpark_own_scope(&mut self, client_id: String, mutations: Vec<Mutation>) {
        let scope = self.engine.user().map(Into::into);
        self.engine.unpark(self.now, scope, client_id, mutations);
    }

    fn drain(&mut self) -> Vec<Command> {
        while let Some(c) = self.engine.poll_command() {
            self.commands.push(c);
        }
        std::mem::take(&mut self.commands)
    }

    fn sends(&mut self) -> Vec<(u64, Request)> {
        self.drain()
            .into_iter()
            .filter_map(|c| match c {
                Command::Send { id, request, .. } => Some((id, request)),
                _ => None,
            })
            .collect()
    }

    fn only_send(&mut self) -> (u64, Request) {
        let mut sends = self.sends();
        assert_eq!(
            sends.len(),
            1,
            "expected exactly one request, got {sends:?}"
        );
        sends.remove(0)
    }

    /// Jumps the fake clock to the engine's next deadline and fires it.
    fn fire(&mut self) -> u64 {
        let deadline = self.engine.poll_timeout().expect("a deadline");
        assert!(
            deadline >= self.now || deadline == 0,
            "deadline {deadline} before now {}",
            self.now
        );
        self.now = self.now.max(deadline);
        self.engine.handle_timeout(self.now);
        self.now
    }

    fn at(&mut self, ms_later: u64) -> u64 {
        self.now += ms_later;
        self.engine.handle_timeout(self.now);
        self.now
    }

    fn write(&mut self, key: &str, value: &str) {
        self.engine
            .write(self.now, "history", key, Some(value.to_owned()))
            .expect("valid write");
    }

    fn reply(&mut self, id: u64, reply: Reply) {
        self.engine.handle_reply(self.now, id, reply);
    }

    /// The record of `history/key` this tab shows.
    fn record(&self, key: &str) -> Record {
        let shown = self.engine.get(&RecordKey::new("history", key));
        shown.cloned().expect("a record shown")
    }

    fn value(&self, key: &str) -> Option<String> {
        self.engine
            .get(&RecordKey::new("history", key))
            .and_then(|r| r.value.clone())
    }

    /// Fires deadlines until the tab sends a push, answering its pulls with 304 meanwhile.
    fn next_push(&mut self) -> (u64, Request) {
        loop {
            self.fire();
            let mut sends = self.sends();
            if let Some(i) = sends
                .iter()
                .position(|(_, r)| matches!(r, Request::Push { .. }))
            {
                return sends.remove(i);
            }
            for (id, _) in sends {
                self.reply(id, Reply::NotModified);
            }
        }
    }

    fn sends_of(commands: &[Command]) -> Vec<(u64, Request)> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Send { id, request, .. } => Some((*id, request.clone())),
                _ => None,
            })
            .collect()
    }

    fn broadcasts(commands: &[Command]) -> Vec<TabMessage> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Broadcast(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}

fn page(cursor: &str, changes: Vec<Change>, more: bool) -> Page {
    Page {
        cursor: cursor.to_owned(),
        changes,
        more,
        reset: false,
        server_time: T0,
    }
}

/// A push's answer: taken up to `ack`, nothing else changed, at `cursor`.
fn taken(ack: u64, cursor: &str) -> Reply {
    Reply::Pushed {
        ack,
        page: page(cursor, vec![], false),
    }
}

fn change(key: &str, value: Option<&str>, updated_at: u64, client: &str, version: u64) -> Change {
    Change {
        collection: "history".into(),
        key: key.into(),
        value: value.map(str::to_owned),
        updated_at,
        client_id: client.into(),
        version,
    }
}

fn pushed(request: &Request) -> &[Mutation] {
    match request {
        Request::Push { mutations, .. } => mutations,
        other => panic!("expected a push, got {other:?}"),
    }
}

#[test]
fn a_write_is_visible_persisted_and_broadcast_at_once() {
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"p":10}"#);
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":10}"#));
    let commands = tab.drain();
    assert!(commands.iter().any(|c| matches!(c,
        Command::Persist(Persist::Outbox { scope: Some(u), mutations, .. })
            if u == "u1" && mutations.len() == 1)));
    let wrote = Tab::broadcasts(&commands);
    assert!(matches!(&wrote[0].body, TabBody::Wrote { id: 1, key, .. } if key.key == "e1"));
    assert!(
        commands.iter().all(|c| !matches!(c, Command::Send { .. })),
        "no request yet: pushes are debounced"
    );
    assert_eq!(tab.engine.status().pending, 1);
}

#[test]
fn playback_positions_coalesce_into_one_mutation() {
    let mut tab = Tab::leader();
    for second in 0..10u64 {
        tab.write("e1", &format!(r#"{{"p":{second}}}"#));
        tab.now += 100;
    }
    tab.drain();
    tab.fire();
    let (_, request) = tab.only_send();
    let mutations = pushed(&request);
    assert_eq!(mutations.len(), 1);
    assert_eq!(mutations[0].value.as_deref(), Some(r#"{"p":9}"#));
}

#[test]
fn a_write_after_its_key_was_sent_gets_a_new_id() {
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"p":1}"#);
    tab.fire();
    let (id, request) = tab.only_send();
    assert_eq!(pushed(&request)[0].id, 1);
    tab.write("e1", r#"{"p":2}"#);
    assert_eq!(
        tab.engine.outbox().iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    tab.reply(id, taken(1, "2"));
    assert_eq!(tab.engine.outbox().len(), 1);
    tab.fire();
    let (_, request) = tab.only_send();
    assert_eq!(pushed(&request)[0].value.as_deref(), Some(r#"{"p":2}"#));
}

#[test]
fn a_steady_stream_of_writes_is_pushed_within_the_wait_bound() {
    let mut tab = Tab::leader();
    let start = tab.now;
    let config = Config::default();
    let mut sent_at = None;
    for i in 0..100u64 {
        tab.write(&format!("e{i}"), "{}");
        if !tab.sends().is_empty() {
            sent_at = Some(tab.now);
            break;
        }
        tab.at(config.push_delay_ms / 2);
        if !tab.sends().is_empty() {
            sent_at = Some(tab.now);
            break;
        }
    }
    let sent_at = sent_at.expect("a push while writes keep coming");
    assert!(
        sent_at - start <= config.push_wait_ms_max,
        "waited {}",
        sent_at - start
    );
    assert!(sent_at - start >= config.push_delay_ms);
}

#[test]
fn big_outboxes_are_pushed_in_capped_batches() {
    let mut tab = Tab::leader();
    for i in 0..250 {
        tab.write(&format!("e{i}"), "{}");
    }
    tab.drain();
    tab.fire();
    let (id, request) = tab.only_send();
    assert_eq!(pushed(&request).len(), 100);
    tab.reply(id, taken(100, "101"));
    let (id, request) = tab.only_send();
    assert_eq!(pushed(&request)[0].id, 101);
    tab.reply(id, taken(200, "201"));
    let (_, request) = tab.only_send();
    assert_eq!(pushed(&request).len(), 50);
}

#[test]
fn failed_pushes_back_off_exponentially_with_full_jitter() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.fire();
    let config = Config::default();
    let mut caps = Vec::new();
    for attempt in 0..8u32 {
        let (id, _) = tab.only_send();
        let failed_at = tab.now;
        tab.reply(id, Reply::Failed(Failure::Network));
        let retry = tab.engine.poll_timeout().expect("a retry is scheduled");
        let cap = (config.backoff_base_ms << attempt).min(config.backoff_ms_max);
        assert!(
            retry - failed_at <= cap,
            "attempt {attempt}: {} > {cap}",
            retry - failed_at
        );
        caps.push(retry - failed_at);
        assert!(tab.sends().is_empty(), "nothing before the retry time");
        tab.fire();
    }
    assert!(
        caps.iter().any(|&d| d > config.backoff_base_ms),
        "delays grow: {caps:?}"
    );
    assert_eq!(tab.engine.status().error, Some(SyncError::Unreachable));
}

#[test]
fn retry_after_is_honoured() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.fire();
    let (id, _) = tab.only_send();
    let failed_at = tab.now;
    tab.reply(
        id,
        Reply::Failed(Failure::Unavailable {
            retry_after_ms: Some(120_000),
        }),
    );
    assert!(tab.engine.poll_timeout().unwrap() >= failed_at + 120_000);
    tab.at(119_000);
    assert!(tab.sends().is_empty());
    tab.at(1_000);
    assert_eq!(pushed(&tab.only_send().1).len(), 1);
}

#[test]
fn hiding_the_page_flushes_at_once_with_keepalive_and_gives_up_leadership() {
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"p":5}"#);
    tab.drain();
    tab.engine.handle_visibility(tab.now, false);
    let commands = tab.drain();
    assert!(commands.contains(&Command::Leadership(false)));
    let push = commands.iter().find_map(|c| match c {
        Command::Send {
            request:
                Request::Push {
                    keepalive,
                    mutations,
                    ..
                },
            ..
        } => Some((*keepalive, mutations.len())),
        _ => None,
    });
    assert_eq!(push, Some((true, 1)));
    assert!(!tab.engine.status().leader);
}

#[test]
fn a_keepalive_flush_stays_under_the_budget_and_the_rest_waits() {
    let mut tab = Tab::leader();
    let value = format!(r#"{{"x":"{}"}}"#, "a".repeat(3000));
    for i in 0..40 {
        tab.write(&format!("e{i}"), &value);
    }
    tab.drain();
    tab.engine.handle_visibility(tab.now, false);
    let (_, request) = tab.only_send();
    let n = pushed(&request).len();
    assert!(
        n < 40 && n * 3000 < 64 * 1024,
        "{n} mutations in a keepalive body"
    );
    assert_eq!(
        tab.engine.status().pending,
        40,
        "the outbox keeps everything until acked"
    );
}

#[test]
fn a_push_carries_what_its_byte_budget_holds_and_the_rest_follows_at_once() {
    // 40 writes of 3 kB (about 120 kB as JSON): a slow uplink could not carry them in one
    // request within its timeout. Each push stays within the budget; the next goes as soon as
    // the last is answered, until the outbox is empty.
    let mut tab = Tab::leader();
    let value = format!(r#"{{"x":"{}"}}"#, "a".repeat(3000));
    for i in 0..40 {
        tab.write(&format!("e{i:02}"), &value);
    }
    tab.drain();
    let budget = Config::default().push_bytes_max;
    let mut sent = Vec::new();
    let (mut id, mut request) = tab.next_push();
    loop {
        let mutations = pushed(&request);
        let body: usize = mutations
            .iter()
            .map(|m| m.value.as_ref().unwrap().len())
            .sum();
        assert!(
            !mutations.is_empty() && body <= budget,
            "a push of {} mutations, {body} bytes of values",
            mutations.len()
        );
        sent.extend(mutations.iter().map(|m| m.key.clone()));
        let last = mutations.last().unwrap().id;
        tab.reply(id, taken(last, &format!("{}", 1 + sent.len())));
        if tab.engine.status().pending == 0 {
            break;
        }
        // The rest goes at once, with the answer, not after another write's delay.
        (id, request) = tab.only_send();
    }
    let expected: Vec<String> = (0..40).map(|i| format!("e{i:02}")).collect();
    assert_eq!(sent, expected, "every write once, oldest first");
    assert!(budget >= 60 * 1024, "typical writes still go 100 to a push");
}

#[test]
fn a_write_larger_than_the_push_budget_still_goes_alone() {
    let config = Config {
        hot: Vec::new(),
        push_bytes_max: 1_000,
        ..Config::default()
    };
    let mut tab = Tab::with(config, 1);
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::Pulled(page("1", vec![], false)));
    let value = format!(r#"{{"x":"{}"}}"#, "a".repeat(3000));
    tab.write("big", &value);
    tab.write("small", r#"{"p":1}"#);
    tab.drain();
    let (id, request) = tab.next_push();
    let keys: Vec<&str> = pushed(&request).iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["big"]);
    tab.reply(id, taken(pushed(&request)[0].id, "2"));
    let (_, request) = tab.only_send();
    let keys: Vec<&str> = pushed(&request).iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["small"]);
}

#[test]
fn the_leader_pulls_every_interval_with_jitter() {
    let mut tab = Tab::leader();
    let config = Config::default();
    for _ in 0..20 {
        let before = tab.now;
        let at = tab.fire();
        let gap = at - before;
        assert!((27_000..=33_000).contains(&gap), "gap {gap}");
        let (id, request) = tab.only_send();
        assert!(matches!(request, Request::Pull { last_sync: Some(_) }));
        tab.reply(id, Reply::NotModified);
    }
    assert_eq!(config.interval_ms, 30_000);
}

#[test]
fn other_tabs_messages_never_move_the_leaders_next_pull() {
    let mut tab = Tab::leader();
    let due = tab
        .engine
        .poll_timeout()
        .expect("the next pull is scheduled");
    // Between two pulls, the other tabs write, push (and share the answer) and get
    // acknowledged: none of it may move the leader's pull.
    let messages = [
        TabBody::Wrote {
            id: 1,
            key: RecordKey::new("history", "e1"),
            record: Record {
                value: Some("{}".into()),
                updated_at: T0 + 1,
                client_id: "other".into(),
            },
        },
        TabBody::Synced {
            from: Some("1".into()),
            to: "2".into(),
            reset: false,
            more: false,
            gone: None,
            changes: vec![change("e1", Some("{}"), T0 + 1, "other", 2)],
        },
        TabBody::Acked {
            client_id: "other".into(),
            ack: 1,
        },
    ];
    for body in messages {
        tab.now += 5_000;
        let message = TabMessage {
            scope: Some("u1".into()),
            body,
        };
        tab.engine.handle_tab_message(tab.now, message);
        assert!(tab.sends().is_empty());
        assert_eq!(tab.engine.poll_timeout(), Some(due));
    }
    // A tab that is focused asks for a pull: it comes at once, and the next one an
    // interval after it.
    tab.now += 5_000;
    let wanted = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::PullWanted,
    };
    tab.engine.handle_tab_message(tab.now, wanted);
    let (id, request) = tab.only_send();
    assert!(matches!(request, Request::Pull { .. }));
    tab.reply(id, Reply::NotModified);
    let pulled = tab.now;
    let next = tab.fire() - pulled;
    assert!(
        (27_000..=33_000).contains(&next),
        "next pull {next} ms later"
    );
    assert!(matches!(tab.only_send().1, Request::Pull { .. }));
}

#[test]
fn only_a_visible_signed_in_leader_pulls() {
    // Not the leader: no pulls however long we wait.
    let mut follower = Tab::new(2);
    follower.engine.sign_in(follower.now, "u1");
    follower.drain();
    assert_eq!(follower.engine.poll_timeout(), None);
    follower.engine.handle_focus(follower.now);
    assert!(follower.sends().is_empty());

    // A hidden leader stops.
    let mut tab = Tab::leader();
    tab.engine.handle_visibility(tab.now, false);
    tab.drain();
    assert_eq!(tab.engine.poll_timeout(), None);
    tab.at(10 * 60_000);
    assert!(tab.sends().is_empty());
}

#[test]
fn a_non_leader_asks_the_leader_to_pull_on_focus() {
    let mut follower = Tab::new(2);
    follower.engine.sign_in(follower.now, "u1");
    follower.drain();
    follower.engine.handle_focus(follower.now);
    let messages = Tab::broadcasts(&follower.drain());
    assert!(messages.iter().any(|m| m.body == TabBody::PullWanted));

    let mut leader = Tab::leader();
    leader.now += 10_000;
    leader.engine.handle_tab_message(
        leader.now,
        TabMessage {
            scope: Some("u1".into()),
            body: TabBody::PullWanted,
        },
    );
    assert!(matches!(leader.only_send().1, Request::Pull { .. }));
}

#[test]
fn focus_and_online_pulls_can_be_switched_off() {
    let config = Config {
        pull_on_focus: false,
        pull_on_online: false,
        ..Config::default()
    };
    let mut tab = Tab::leader();
    tab.engine = Engine::new(config, 1);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine.restore_cursor(Some("1".into()), true);
    // A tab that opens still learns the state.
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::NotModified);
    tab.drain();
    let due = tab.engine.poll_timeout().expect("the next pull");
    tab.now += 10_000;
    tab.engine.handle_focus(tab.now);
    tab.engine.handle_visibility(tab.now, false);
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    // Neither the focus nor the tab showing again pulls; the leadership it regains keeps the
    // cadence of its last pull.
    assert!(tab.sends().is_empty());
    assert!(tab.engine.poll_timeout().is_some_and(|t| t <= due + 3_000));
    let due = tab.engine.poll_timeout().expect("the next pull");
    tab.engine.handle_online(tab.now, false);
    tab.engine.handle_online(tab.now + 1, true);
    tab.engine.handle_focus(tab.now + 2);
    assert!(tab.sends().is_empty(), "no pull on focus or online");
    assert_eq!(
        tab.engine.poll_timeout(),
        Some(due),
        "the interval still holds"
    );
}

#[test]
fn a_focus_pulls_by_default() {
    let mut tab = Tab::leader();
    tab.now += 10_000;
    tab.engine.handle_focus(tab.now);
    assert!(matches!(tab.only_send().1, Request::Pull { .. }));
}

#[test]
fn a_burst_of_focus_events_is_one_request() {
    let mut tab = Tab::leader();
    tab.now += 10_000;
    for _ in 0..5 {
        tab.engine.handle_focus(tab.now);
        tab.engine.handle_visibility(tab.now, true);
        tab.engine.handle_online(tab.now, true);
        tab.now += 100;
    }
    let sends = tab.sends();
    assert_eq!(sends.len(), 1);
    tab.reply(sends[0].0, Reply::NotModified);
    tab.engine.handle_focus(tab.now);
    assert!(
        tab.sends().is_empty(),
        "a focus right after a pull is dropped"
    );
}

#[test]
fn more_is_followed_until_the_last_page() {
    let mut tab = Tab::leader();
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(
        id,
        Reply::Pulled(page("5", vec![change("a", Some("{}"), 1, "c", 5)], true)),
    );
    let (id, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("5".into())
        }
    );
    tab.reply(
        id,
        Reply::Pulled(page("6", vec![change("b", Some("{}"), 1, "c", 6)], false)),
    );
    assert!(tab.sends().is_empty());
    assert!(tab.value("a").is_some() && tab.value("b").is_some());
}

#[test]
fn a_reset_replaces_local_state() {
    let mut tab = Tab::leader();
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(
        id,
        Reply::Pulled(page("3", vec![change("old", Some("{}"), 1, "c", 3)], false)),
    );
    tab.fire();
    let (id, _) = tab.only_send();
    let mut reset = page("9", vec![change("new", Some("{}"), 2, "c", 9)], false);
    reset.reset = true;
    tab.reply(id, Reply::Pulled(reset));
    assert_eq!(tab.value("old"), None);
    assert!(tab.value("new").is_some());
    assert!(tab
        .drain()
        .iter()
        .any(|c| matches!(c, Command::Persist(Persist::ClearRecords { .. }))));
}

#[test]
fn leadership_follows_visibility() {
    let mut tab = Tab::new(3);
    tab.engine.sign_in(tab.now, "u1");
    assert!(tab.drain().contains(&Command::Leadership(true)));
    tab.engine.handle_visibility(tab.now, false);
    assert!(tab.drain().contains(&Command::Leadership(false)));
    // A grant arriving after we gave up is handed straight back.
    tab.engine.handle_leadership(tab.now, true);
    assert!(tab.drain().contains(&Command::Leadership(false)));
    assert!(!tab.engine.status().leader);
    tab.engine.handle_visibility(tab.now, true);
    assert!(tab.drain().contains(&Command::Leadership(true)));
}

#[test]
fn pulled_changes_never_overwrite_a_newer_pending_write() {
    let mut tab = Tab::leader();
    tab.now += 1_000;
    tab.write("e1", r#"{"p":"mine"}"#);
    let mine = tab
        .engine
        .get(&RecordKey::new("history", "e1"))
        .unwrap()
        .updated_at;
    let synced = |to: &str, c: Change| TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some("1".into()),
            to: to.into(),
            reset: false,
            more: false,
            gone: None,
            changes: vec![c],
        },
    };
    // Server state older than the pending write arrives: the pending write stays in view.
    let older = change("e1", Some(r#"{"p":"theirs"}"#), mine - 1, "zzzz", 7);
    tab.engine.handle_tab_message(tab.now, synced("7", older));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":"mine"}"#));
    assert_eq!(tab.engine.status().pending, 1);
    // A newer write from elsewhere does win, and the clock moves past it.
    let newer = change("e1", Some(r#"{"p":"newer"}"#), mine + 50_000, "a", 8);
    tab.engine.handle_tab_message(tab.now, synced("8", newer));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":"newer"}"#));
    tab.write("e1", r#"{"p":"again"}"#);
    assert!(
        tab.engine
            .get(&RecordKey::new("history", "e1"))
            .unwrap()
            .updated_at
            > mine + 50_000
    );
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":"again"}"#));
}

#[test]
fn stale_server_data_never_rolls_back_a_later_version() {
    let mut tab = Tab::leader();
    let msg = |from: &str, to: &str, c: Change| TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some(from.into()),
            to: to.into(),
            reset: false,
            more: false,
            gone: None,
            changes: vec![c],
        },
    };
    tab.engine.handle_tab_message(
        tab.now,
        msg("1", "9", change("e1", Some(r#"{"v":9}"#), 90, "a", 9)),
    );
    tab.engine.handle_tab_message(
        tab.now,
        msg("1", "5", change("e1", Some(r#"{"v":5}"#), 50, "a", 5)),
    );
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"v":9}"#));
    assert_eq!(
        tab.engine.cursor(),
        Some("9"),
        "only a message continuing our cursor moves it"
    );
}

#[test]
fn a_guest_never_sends_a_request() {
    let mut tab = Tab::new(4);
    for i in 0..50u64 {
        tab.write(&format!("e{i}"), "{}");
        tab.engine.handle_focus(tab.now);
        tab.engine.handle_visibility(tab.now, i % 2 == 0);
        tab.engine.handle_online(tab.now, i % 3 != 0);
        tab.engine.handle_leadership(tab.now, true);
        tab.at(60_000);
        let commands = tab.drain();
        assert!(
            commands
                .iter()
                .all(|c| !matches!(c, Command::Send { .. } | Command::Leadership(true))),
            "{commands:?}"
        );
    }
    assert_eq!(tab.engine.poll_timeout(), None);
    assert_eq!(tab.engine.status().pending, 50);
}

#[test]
fn sign_in_pushes_the_guest_writes_then_pulls_the_account() {
    let mut tab = Tab::new(5);
    tab.write("g1", r#"{"guest":true}"#);
    tab.drain();
    let own = tab.engine.client_id().to_owned();
    tab.engine.sign_in(tab.now, "u1");
    let commands = tab.drain();
    // The guest's scope goes, but its outboxes: this tab's own copy goes (it carries its
    // writes over itself), the others' are kept for their tabs, and those of the guest's
    // tabs gone are asked for, to be taken over into the account, as are the writes the
    // account left parked here. Nothing moves from one scope to another.
    let own_copy = Command::Persist(Persist::DropOutbox {
        scope: None,
        client_id: own.clone(),
    });
    let wipe = Command::Persist(Persist::Wipe {
        scope: None,
        keep_pending: true,
    });
    let parked = Command::Unpark {
        scope: Some("u1".into()),
    };
    for asked in [own_copy, wipe, parked, Command::Unpark { scope: None }] {
        assert!(commands.contains(&asked), "{commands:?}");
    }
    assert!(
        commands.iter().all(|c| !matches!(
            c,
            Command::Persist(Persist::Outbox { client_id, .. }) if *client_id != own
        )),
        "{commands:?}"
    );
    assert!(Tab::broadcasts(&commands)
        .iter()
        .any(|m| m.body == TabBody::SignedIn && m.scope.as_deref() == Some("u1")));
    let push = commands.iter().find_map(|c| match c {
        Command::Send {
            id,
            request:
                Request::Push {
                    mutations,
                    last_sync: None,
                    ..
                },
            ..
        } => Some((*id, mutations.clone())),
        _ => None,
    });
    let (id, mutations) = push.expect("the guest's writes are pushed at once");
    assert_eq!(mutations[0].key, "g1");
    tab.engine.handle_leadership(tab.now, true);
    assert!(tab.sends().is_empty(), "one request at a time");
    tab.reply(id, taken(1, "5"));
    assert_eq!(tab.engine.status().pending, 0);
    assert_eq!(
        tab.value("g1").as_deref(),
        Some(r#"{"guest":true}"#),
        "an acknowledged write stays in view"
    );
    let (id, request) = tab.only_send();
    assert_eq!(request, Request::Pull { last_sync: None });
    let account = vec![
        change("acct", Some("{}"), 1, "x", 4),
        change("g1", Some(r#"{"guest":true}"#), T0, "c", 5),
    ];
    tab.reply(id, Reply::Pulled(page("5", account, false)));
    assert!(tab.value("acct").is_some() && tab.value("g1").is_some());
    assert!(
        tab.engine.view.acked.is_empty(),
        "the pull settled the acknowledged write"
    );
}

/// Found in Chromium (`e2e/wander.test.mjs`, seed 506, kept tokens): a guest tab following
/// another's sign-in moved the guest's outboxes too (as the signing-in tab then did), from
/// its view of the storage, which lags behind the signing-in tab's. It wrote the signing-in
/// tab's outbox back into the account with the guest's writes it held before, over the copy
/// that tab had stored since. A tab that follows drops its own guest outbox and keeps the
/// others where they are.
#[test]
fn a_guest_tab_following_a_sign_in_moves_no_outbox_and_drops_its_own() {
    let mut tab = Tab::new(5);
    tab.write("g1", "{}");
    tab.drain();
    let own = tab.engine.client_id().to_owned();
    let signed_in = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::SignedIn,
    };
    tab.engine.handle_tab_message(tab.now, signed_in);
    let persisted: Vec<Persist> = tab
        .drain()
        .into_iter()
        .filter_map(|c| match c {
            Command::Persist(
                p @ (Persist::Outbox { .. } | Persist::Wipe { .. } | Persist::DropOutbox { .. }),
            ) => Some(p),
            _ => None,
        })
        .collect();
    // Its guest copy goes; the guest's other outboxes stay where they are; it carries its
    // writes itself.
    assert!(
        matches!(&persisted[..], [
            Persist::DropOutbox { scope: None, client_id },
            Persist::Wipe { scope: None, keep_pending: true },
            Persist::Outbox { scope: Some(user), client_id: into, mutations, .. },
        ] if *client_id == own && user == "u1" && *into == own
            && mutations.iter().map(|m| m.key.as_str()).eq(["g1"])),
        "{persisted:?}"
    );
}

/// A tab's copy of the storage may lag behind another tab's: an outbox it reads as empty may
/// hold writes stored since (a tab that took over a signed-out tab's writes, say). So a wipe
/// that keeps what waits for the account keeps every outbox; each tab drops its own when it
/// holds nothing, and keeps it when it holds writes.
#[test]
fn a_tab_leaving_its_user_drops_its_own_outbox_only_when_empty() {
    let wiped = |commands: &[Command]| -> Vec<Persist> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Persist(p @ (Persist::Wipe { .. } | Persist::DropOutbox { .. })) => {
                    Some(p.clone())
                }
                _ => None,
            })
            .collect()
    };
    let keep = Persist::Wipe {
        scope: Some("u1".into()),
        keep_pending: true,
    };
    let own_dropped = |tab: &Tab| {
        let client_id = tab.engine.client_id().to_owned();
        let scope = Some("u1".into());
        [Persist::DropOutbox { scope, client_id }, keep.clone()]
    };
    let mut tab = Tab::leader();
    let expected = own_dropped(&tab);
    tab.engine.sign_out(tab.now, false);
    assert_eq!(wiped(&tab.drain()), expected);
    // With a write queued (offline), its outbox stays, parked for the account.
    let mut tab = Tab::leader();
    tab.engine.handle_online(tab.now, false);
    tab.write("e1", "{}");
    tab.drain();
    tab.engine.sign_out(tab.now, false);
    assert_eq!(wiped(&tab.drain()), core::slice::from_ref(&keep));
    // Following another tab's sign-out alike.
    let mut tab = Tab::leader();
    let expected = own_dropped(&tab);
    let signed_out = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::SignedOut,
    };
    tab.engine.handle_tab_message(tab.now, signed_out);
    assert_eq!(wiped(&tab.drain()), expected);
}

#[test]
fn sign_out_wipes_everything_and_ignores_late_replies() {
    let mut tab = Tab::leader();
    tab.fire();
    let (late, _) = tab.only_send();
    let old_client = tab.engine.client_id().to_owned();
    tab.write("e1", "{}");
    assert_eq!(
        tab.engine.sign_out(tab.now, false),
        1,
        "one write was queued"
    );
    let commands = tab.drain();
    assert!(commands.contains(&Command::Persist(Persist::Wipe {
        scope: Some("u1".into()),
        keep_pending: true
    })));
    assert!(
        commands.iter().any(|c| matches!(
            c,
            Command::Send {
                request: Request::Push {
                    keepalive: true,
                    ..
                },
                ..
            }
        )),
        "the outbox is flushed first"
    );
    tab.reply(
        late,
        Reply::Pulled(page(
            "9",
            vec![change("secret", Some("{}"), 1, "a", 9)],
            false,
        )),
    );
    assert_eq!(tab.value("secret"), None);
    assert_eq!(tab.value("e1"), None);
    assert_ne!(tab.engine.client_id(), old_client);
    assert_eq!(tab.engine.user(), None);
    assert_eq!(tab.engine.cursor(), None);
}

#[test]
fn tabs_ignore_messages_of_another_user() {
    let mut tab = Tab::leader();
    tab.engine.handle_tab_message(
        tab.now,
        TabMessage {
            scope: Some("u2".into()),
            body: TabBody::Wrote {
                id: 1,
                key: RecordKey::new("history", "x"),
                record: Record {
                    value: Some("{}".into()),
                    updated_at: 5,
                    client_id: "c".into(),
                },
            },
        },
    );
    tab.engine.handle_tab_message(
        tab.now,
        TabMessage {
            scope: None,
            body: TabBody::Synced {
                from: None,
                to: "3".into(),
                reset: true,
                more: false,
                gone: None,
                changes: vec![change("y", Some("{}"), 1, "c", 3)],
            },
        },
    );
    assert_eq!(tab.value("x"), None);
    assert_eq!(tab.value("y"), None);
    assert_eq!(tab.engine.cursor(), Some("1"));
}

#[test]
fn another_tabs_write_shows_until_its_ack_and_then_the_server_state() {
    let mut tab = Tab::leader();
    let scope = Some("u1".to_owned());
    let record = Record {
        value: Some(r#"{"p":1}"#.into()),
        updated_at: T0 + 10,
        client_id: "other".into(),
    };
    tab.engine.handle_tab_message(
        tab.now,
        TabMessage {
            scope: scope.clone(),
            body: TabBody::Wrote {
                id: 3,
                key: RecordKey::new("history", "e1"),
                record,
            },
        },
    );
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":1}"#));
    // The server clamped it; the clamped version arrives, then the ack.
    tab.engine.handle_tab_message(
        tab.now,
        TabMessage {
            scope: scope.clone(),
            body: TabBody::Synced {
                from: Some("1".into()),
                to: "2".into(),
                reset: false,
                more: false,
                gone: None,
                changes: vec![change("e1", Some(r#"{"p":1}"#), T0 + 5, "other", 2)],
            },
        },
    );
    tab.engine.handle_tab_message(
        tab.now,
        TabMessage {
            scope,
            body: TabBody::Acked {
                client_id: "other".into(),
                ack: 3,
            },
        },
    );
    assert_eq!(
        tab.engine
            .get(&RecordKey::new("history", "e1"))
            .unwrap()
            .updated_at,
        T0 + 5
    );
    assert_eq!(tab.engine.cursor(), Some("2"));
}

#[test]
fn a_401_stops_all_requests_until_signed_in_again() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::Failed(Failure::Unauthorized));
    assert_eq!(tab.engine.status().error, Some(SyncError::Unauthorized));
    tab.at(10 * 60_000);
    tab.engine.handle_focus(tab.now);
    assert!(tab.sends().is_empty());
    assert_eq!(tab.engine.status().pending, 1, "queued writes are kept");
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    assert!(!tab.sends().is_empty());
}

impl Tab {
    /// Hides the page: its one request is the keepalive flush of its queued writes, whose id
    /// this answers.
    fn hide_and_flush(&mut self) -> u64 {
        self.engine.handle_visibility(self.now, false);
        let (id, request) = self.only_send();
        assert!(
            matches!(
                request,
                Request::Push {
                    keepalive: true,
                    ..
                }
            ),
            "{request:?}"
        );
        id
    }
}

#[test]
fn a_401_to_a_keepalive_flush_stops_all_requests_too() {
    // The site ended the session elsewhere; the first request to learn it is the flush as
    // the page is hidden. Ignored like the flush's other failures, the tab would go on
    // sending (each answered 401) until a regular request learnt it again.
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.drain();
    let id = tab.hide_and_flush();
    tab.reply(id, Reply::Failed(Failure::Unauthorized));
    assert_eq!(tab.engine.status().error, Some(SyncError::Unauthorized));
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    tab.at(10 * 60_000);
    tab.engine.handle_visibility(tab.now, false);
    assert!(tab.sends().is_empty());
    assert_eq!(tab.engine.status().pending, 1, "queued writes are kept");
}

#[test]
fn a_401_to_a_keepalive_flush_is_not_hidden_by_a_later_failure() {
    // A regular request still out when the flush learns the session is over fails after it
    // (no network, or the server refuses it): the tab still says it must sign in again.
    for late in [
        Failure::Network,
        Failure::Rejected {
            status: 400,
            mutation: None,
        },
    ] {
        let mut tab = Tab::leader();
        tab.write("e1", "{}");
        tab.fire();
        let (regular, _) = tab.only_send();
        tab.write("e2", "{}");
        let flush = tab.hide_and_flush();
        tab.reply(flush, Reply::Failed(Failure::Unauthorized));
        tab.reply(regular, Reply::Failed(late.clone()));
        assert_eq!(
            tab.engine.status().error,
            Some(SyncError::Unauthorized),
            "after {late:?}"
        );
        assert_eq!(tab.engine.poll_timeout(), None);
    }
}

#[test]
fn a_401_sent_before_signing_in_again_is_the_old_sessions() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.fire();
    let (old, _) = tab.only_send();
    // The site ended the session elsewhere; the user signs in again before the refusal of
    // the push sent meanwhile arrives.
    tab.engine.sign_in(tab.now, "u1");
    assert!(
        tab.sends().is_empty(),
        "a sign-in as the same user sends nothing itself"
    );
    tab.reply(old, Reply::Failed(Failure::Unauthorized));
    assert_ne!(tab.engine.status().error, Some(SyncError::Unauthorized));
    // Sent again at once, with the new session, and taken.
    let (id, request) = tab.only_send();
    assert_eq!(pushed(&request).len(), 1);
    tab.reply(id, taken(1, "2"));
    assert_eq!(tab.engine.status().pending, 0);
    assert_eq!(tab.engine.status().error, None);
}

/// The `fresh_token` flag of every request the tab sent.
fn sends_with_token(commands: Vec<Command>) -> Vec<(u64, Request, bool)> {
    commands
        .into_iter()
        .filter_map(|c| match c {
            Command::Send {
                id,
                request,
                fresh_token,
            } => Some((id, request, fresh_token)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_expired_token_is_refreshed_once_and_the_request_sent_again_at_once() {
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"position":10}"#);
    tab.fire();
    let sent = sends_with_token(tab.drain());
    let [(id, Request::Push { ref mutations, .. }, false)] = sent[..] else {
        panic!("one push with the cached token: {sent:?}");
    };
    assert_eq!(mutations.len(), 1);
    tab.reply(id, Reply::Failed(Failure::TokenExpired));
    // Again at once, the same write, asking the driver for a new token; no error shown.
    let sent = sends_with_token(tab.drain());
    let [(id, Request::Push { ref mutations, .. }, true)] = sent[..] else {
        panic!("the push again with a fresh token: {sent:?}");
    };
    assert_eq!((mutations[0].id, mutations[0].key.as_str()), (1, "e1"));
    assert_eq!(tab.engine.status().error, None);
    assert_eq!(tab.engine.status().pending, 1);
    tab.reply(id, taken(1, "2"));
    assert_eq!(tab.engine.status().pending, 0);

    // A pull refused the same way is asked for again, and the next request after that
    // takes the cached token again.
    tab.at(Config::default().interval_ms * 2);
    let sent = sends_with_token(tab.drain());
    let [(id, Request::Pull { .. }, false)] = sent[..] else {
        panic!("a pull: {sent:?}");
    };
    tab.reply(id, Reply::Failed(Failure::TokenExpired));
    let sent = sends_with_token(tab.drain());
    let [(id, Request::Pull { .. }, true)] = sent[..] else {
        panic!("the pull again with a fresh token: {sent:?}");
    };
    tab.reply(id, Reply::NotModified);
    tab.write("e2", "{}");
    tab.fire();
    let sent = sends_with_token(tab.drain());
    assert!(
        matches!(sent[..], [(_, Request::Push { .. }, false)]),
        "{sent:?}"
    );
}

#[test]
fn a_token_still_expired_after_a_refresh_stops_requests_and_keeps_the_writes() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::Failed(Failure::TokenExpired));
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::Failed(Failure::TokenExpired));
    assert_eq!(tab.engine.status().error, Some(SyncError::Unauthorized));
    assert_eq!(tab.engine.status().pending, 1);
    tab.at(10 * 60_000);
    assert!(tab.sends().is_empty(), "no refresh loop");
    // The site signs the same user in again (a new token): the write goes out.
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    let sent = sends_with_token(tab.drain());
    assert!(
        sent.iter()
            .any(|(_, r, _)| matches!(r, Request::Push { mutations, .. } if mutations.len() == 1)),
        "{sent:?}"
    );
}

#[test]
fn a_write_the_server_names_as_refused_is_set_aside_and_the_others_go_again_at_once() {
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"p":1}"#);
    tab.write("e2", r#"{"p":2}"#);
    tab.write("e3", r#"{"p":3}"#);
    tab.fire();
    let (id, request) = tab.only_send();
    let Request::Push { mutations, .. } = request else {
        panic!("{request:?}")
    };
    let refused = mutations[1].id;
    tab.reply(
        id,
        Reply::Failed(Failure::Rejected {
            status: 422,
            mutation: Some(refused),
        }),
    );
    let commands = tab.drain();
    assert_eq!(tab.value("e2"), None, "the refused write shows no more");
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":1}"#));
    assert_eq!(tab.engine.status().pending, 2);
    assert_eq!(tab.engine.status().error, Some(SyncError::Rejected(422)));
    assert!(commands
        .iter()
        .any(|c| matches!(c, Command::Notify(Notice::Everything))));
    // The other tabs drop their copies of the push's writes, the refused one with them.
    assert!(Tab::broadcasts(&commands)
        .iter()
        .any(|m| matches!(m.body, TabBody::Acked { ack, .. } if ack == mutations[2].id)));
    // The stored outbox holds the other two.
    let stored = commands.iter().rev().find_map(|c| match c {
        Command::Persist(Persist::Outbox { mutations, .. }) => Some(mutations.clone()),
        _ => None,
    });
    let keys = |ms: &[Mutation]| ms.iter().map(|m| m.key.clone()).collect::<Vec<_>>();
    assert_eq!(
        stored.as_deref().map(keys),
        Some(vec!["e1".to_owned(), "e3".to_owned()])
    );
    // Sent again at once, in the same answer, not after a backoff.
    let again = commands.iter().find_map(|c| match c {
        Command::Send {
            request: Request::Push { mutations, .. },
            ..
        } => Some(mutations.clone()),
        _ => None,
    });
    let again = again.expect("pushed again");
    assert_eq!(keys(&again), vec!["e1".to_owned(), "e3".to_owned()]);
    // Numbered anew, above the refused push: the acknowledgement the other tabs heard
    // covers none of them.
    assert!(again.iter().all(|m| m.id > mutations[2].id), "{again:?}");
}

#[test]
fn a_refusal_naming_no_write_of_the_push_drops_the_push() {
    for named in [None, Some(99)] {
        let mut tab = Tab::leader();
        tab.write("e1", "{}");
        tab.write("e2", "{}");
        tab.fire();
        let (id, _) = tab.only_send();
        let rejected = Failure::Rejected {
            status: 422,
            mutation: named,
        };
        tab.reply(id, Reply::Failed(rejected));
        assert_eq!(tab.engine.status().pending, 0, "{named:?}");
        assert_eq!(tab.value("e1"), None, "{named:?}");
        assert!(tab
            .drain()
            .iter()
            .any(|c| matches!(c, Command::Notify(Notice::Everything))));
    }
}

#[test]
fn a_rejected_push_is_dropped_instead_of_retried_forever() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(
        id,
        Reply::Failed(Failure::Rejected {
            status: 422,
            mutation: None,
        }),
    );
    assert_eq!(tab.engine.status().pending, 0);
    assert_eq!(tab.engine.status().error, Some(SyncError::Rejected(422)));
    let acked = Tab::broadcasts(&tab.drain());
    assert!(acked
        .iter()
        .any(|m| matches!(m.body, TabBody::Acked { ack: 1, .. })));
}

#[test]
fn offline_means_no_requests_and_online_syncs_at_once() {
    let mut tab = Tab::leader();
    tab.engine.handle_online(tab.now, false);
    tab.write("e1", "{}");
    tab.at(5 * 60_000);
    assert!(tab.sends().is_empty());
    assert_eq!(tab.engine.poll_timeout(), None);
    tab.engine.handle_online(tab.now, true);
    let sends = tab.sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(pushed(&sends[0].1).len(), 1);
}

#[test]
fn invalid_writes_are_refused_and_change_nothing() {
    let mut tab = Tab::leader();
    let e = &mut tab.engine;
    assert_eq!(
        e.write(0, "history", "", Some("{}".into())),
        Err(WriteError::InvalidKey)
    );
    assert_eq!(
        e.write(0, "history", &"k".repeat(129), Some("{}".into())),
        Err(WriteError::InvalidKey)
    );
    assert_eq!(
        e.write(0, "", "k", Some("{}".into())),
        Err(WriteError::InvalidCollection)
    );
    assert_eq!(
        e.write(0, "history", "k", Some("[1]".into())),
        Err(WriteError::InvalidValue)
    );
    let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(4096));
    assert_eq!(
        e.write(0, "history", "k", Some(big)),
        Err(WriteError::ValueTooLarge)
    );
    // A native engine reads the value whole: braces around something else are no object.
    #[cfg(feature = "serde")]
    for text in ["{oops}", r#"{"a":}"#, r#"{"a":1}}"#] {
        assert_eq!(
            e.write(0, "history", "k", Some(text.into())),
            Err(WriteError::InvalidValue),
            "{text}"
        );
    }
    assert_eq!(e.status().pending, 0);
}

#[test]
fn a_reloaded_tab_resends_its_outbox_under_the_same_ids() {
    let mut first = Tab::leader();
    first.write("e1", "{}");
    first.write("e2", "{}");
    let client = first.engine.client_id().to_owned();
    let outbox = first.engine.outbox();

    let mut reloaded = Tab::new(99);
    reloaded.engine.restore_user(Some("u1".into()));
    reloaded.engine.restore_cursor(Some("1".into()), true);
    reloaded.engine.restore_outbox(client.clone(), 3, outbox);
    // Left-over writes are due at once, before any leadership.
    reloaded.engine.handle_timeout(reloaded.now);
    let sends = reloaded.sends();
    let push = sends.iter().find_map(|(_, r)| match r {
        Request::Push {
            client_id,
            mutations,
            ..
        } => Some((
            client_id.clone(),
            mutations.iter().map(|m| m.id).collect::<Vec<_>>(),
        )),
        _ => None,
    });
    assert_eq!(push, Some((client, vec![1, 2])));
    reloaded.write("e3", "{}");
    // Above every restored id, and one more: taking the outbox over moves its numbering on.
    assert_eq!(reloaded.engine.outbox().last().unwrap().id, 4);
}

/// The numbering the engine last persisted for its outbox.
fn persisted_numbering(commands: &[Command]) -> Option<(String, u64, usize)> {
    commands.iter().rev().find_map(|c| match c {
        Command::Persist(Persist::Outbox {
            client_id,
            next_id,
            mutations,
            ..
        }) => Some((client_id.clone(), *next_id, mutations.len())),
        _ => None,
    })
}

#[test]
fn an_emptied_outbox_is_persisted_with_its_numbering() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.write("e2", "{}");
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(id, taken(2, "3"));
    let client = tab.engine.client_id().to_owned();
    assert_eq!(persisted_numbering(&tab.drain()), Some((client, 3, 0)));
}

#[test]
fn a_reloaded_tab_never_reuses_an_id_the_server_acknowledged() {
    // A tab writes, the server acknowledges, and the outbox is empty again.
    let mut first = Tab::leader();
    first.write("s01", "{}");
    first.fire();
    let (id, _) = first.only_send();
    first.reply(
        id,
        Reply::Pushed {
            ack: 1,
            page: page("2", vec![change("s01", Some("{}"), T0, "x", 2)], false),
        },
    );
    let (client, next_id, pending) = persisted_numbering(&first.drain()).expect("persisted");
    assert_eq!(pending, 0);

    // The page reloads: same client id (sessionStorage), an empty outbox, its numbering.
    let mut reloaded = Tab::new(99);
    reloaded.engine.restore_user(Some("u1".into()));
    reloaded.engine.restore_cursor(Some("2".into()), true);
    reloaded
        .engine
        .restore_outbox(client.clone(), next_id, Vec::new());
    reloaded.write("s02", "{}");
    assert_eq!(reloaded.engine.client_id(), client);
    assert_eq!(
        reloaded
            .engine
            .outbox()
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![3],
        "id 1 was acknowledged for another write: the server would skip s02 as its retry \
         (2 went with taking the outbox over)"
    );
}

/// A page kept in the back/forward cache lets its id go; shown again, it resumes only if
/// what is stored is as it left it. A tab that took the id over meanwhile, even one that
/// wrote nothing under it (but may have sent its writes), must leave a trace there.
#[test]
fn taking_an_outbox_over_moves_its_stored_numbering_on() {
    let mut tab = Tab::new(1);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine.restore_outbox("c1".into(), 4, Vec::new());
    assert_eq!(
        persisted_numbering(&tab.drain()),
        Some(("c1".to_owned(), 5, 0))
    );
}

#[test]
fn a_push_refused_for_reused_ids_is_renumbered_and_sent_again() {
    // A tab whose numbering was lost (storage that could not be written) restarts low: at 2
    // (taking the outbox over skips one).
    let mut tab = Tab::new(3);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine.restore_cursor(Some("7".into()), true);
    tab.engine.restore_outbox("c1".into(), 1, Vec::new());
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::NotModified);
    tab.write("s02", r#"{"a":1}"#);
    tab.write("s03", r#"{"a":2}"#);
    tab.fire();
    let (id, request) = tab.only_send();
    assert_eq!(
        pushed(&request).iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    tab.reply(id, Reply::Failed(Failure::IdsReused { ack: 5 }));

    // Nothing is dropped or reported: the same writes go again at once, above the ack.
    assert_eq!(tab.engine.status().pending, 2);
    assert_eq!(tab.engine.status().error, None);
    assert_eq!(
        tab.value("s02").as_deref(),
        Some(r#"{"a":1}"#),
        "still in view"
    );
    let commands = tab.drain();
    assert_eq!(
        persisted_numbering(&commands),
        Some(("c1".to_owned(), 8, 2)),
        "the new numbering is persisted"
    );
    let sends: Vec<Request> = commands
        .into_iter()
        .filter_map(|c| match c {
            Command::Send { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "sent again at once: {sends:?}");
    let request = &sends[0];
    let resent: Vec<(u64, &str, Option<&str>)> = pushed(request)
        .iter()
        .map(|m| (m.id, m.key.as_str(), m.value.as_deref()))
        .collect();
    assert_eq!(
        resent,
        vec![
            (6, "s02", Some(r#"{"a":1}"#)),
            (7, "s03", Some(r#"{"a":2}"#))
        ]
    );
}

#[test]
fn answers_are_classified_once_for_every_driver() {
    use Failure::*;
    let class = |status, retry, ack| Failure::from_status(status, retry, ack, None, None);
    assert_eq!(class(0, None, None), Network);
    assert_eq!(class(408, None, None), Network);
    assert_eq!(class(401, None, None), Unauthorized);
    assert_eq!(
        Failure::from_status(401, None, None, Some("token_expired"), None),
        TokenExpired
    );
    assert_eq!(
        Failure::from_status(401, None, None, Some("unauthorized"), None),
        Unauthorized
    );
    assert_eq!(class(409, None, Some(4)), IdsReused { ack: 4 });
    let sinkron = |status, code| Failure::from_status(status, None, None, Some(code), None);
    assert_eq!(
        sinkron(409, "username_taken"),
        Rejected {
            status: 409,
            mutation: None
        }
    );
    assert_eq!(
        class(429, Some(3000), None),
        Unavailable {
            retry_after_ms: Some(3000)
        }
    );
    assert_eq!(
        class(503, None, None),
        Unavailable {
            retry_after_ms: None
        }
    );
    assert_eq!(
        sinkron(422, "invalid_mutation"),
        Rejected {
            status: 422,
            mutation: None
        }
    );
    assert_eq!(sinkron(400, "invalid_cursor"), CursorRefused);
    // A 4xx without the server's error code is not the server's answer (a proxy's): it is
    // retried like a 503.
    for status in [400, 403, 404, 409, 413, 422, 302] {
        assert_eq!(
            class(status, Some(2000), None),
            Unavailable {
                retry_after_ms: Some(2000)
            }
        );
    }
    assert_eq!(
        Failure::from_status(422, None, None, Some("invalid_mutation"), Some(7)),
        Rejected {
            status: 422,
            mutation: Some(7)
        }
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut tab = Tab::new(seed);
        tab.engine.sign_in(tab.now, "u1");
        tab.engine.handle_leadership(tab.now, true);
        let mut trace = Vec::new();
        for _ in 0..10 {
            for (id, _) in tab.sends() {
                tab.reply(id, Reply::Failed(Failure::Network));
            }
            trace.push(tab.fire());
        }
        (tab.engine.client_id().to_owned(), trace)
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn a_clock_jumping_backwards_does_not_hold_the_next_pull() {
    let mut tab = Tab::leader();
    let due = tab
        .engine
        .poll_timeout()
        .expect("the next pull is scheduled");
    // The device clock is set back an hour; the driver's timer still fires on time.
    tab.now = due - 3_600_000;
    tab.engine.handle_timeout(tab.now);
    // The engine cannot know how long passed before the jump, but waits at most one more
    // interval, not the hour.
    let next = tab
        .engine
        .poll_timeout()
        .expect("a pull is still scheduled");
    assert!(
        next <= tab.now + Config::default().interval_ms,
        "{next} vs {}",
        tab.now
    );
    tab.fire();
    let (_, request) = tab.only_send();
    assert!(matches!(request, Request::Pull { .. }));
}

#[test]
fn a_write_after_restoring_an_outbox_never_reuses_a_restored_id() {
    let mut tab = Tab::new(5);
    tab.engine.restore_user(Some("u1".into()));
    let restored = Mutation {
        fields: None,
        id: 3,
        collection: "history".into(),
        key: "e1".into(),
        value: Some(r#"{"p":1}"#.into()),
        updated_at: T0 - 10,
    };
    tab.engine.restore_outbox("c1".into(), 1, vec![restored]);
    // Mutation 3 may have reached the server before the tab died: the server would skip a
    // new value under that id as a retry.
    tab.write("e1", r#"{"p":2}"#);
    let ids: Vec<u64> = tab.engine.outbox().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![3, 5]);
}

#[test]
fn a_clamped_write_stops_outranking_newer_writes_once_its_stored_copy_arrives() {
    let mut tab = Tab::leader();
    // Another tab's write, stamped by a clock an hour fast.
    let future = T0 + 3_600_000;
    let wrote = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Wrote {
            id: 1,
            key: RecordKey::new("history", "e1"),
            record: Record {
                value: Some(r#"{"p":1}"#.into()),
                updated_at: future,
                client_id: "other".into(),
            },
        },
    };
    tab.engine.handle_tab_message(tab.now, wrote);
    // The server stored it clamped, then a newer write from another device.
    let synced = |from: &str, to: &str, changes| TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some(from.into()),
            to: to.into(),
            reset: false,
            more: false,
            gone: None,
            changes,
        },
    };
    let stored = change("e1", Some(r#"{"p":1}"#), T0 + 60_000, "other", 2);
    tab.engine
        .handle_tab_message(tab.now, synced("1", "2", vec![stored]));
    let newer = change("e1", Some(r#"{"p":2}"#), T0 + 61_000, "device", 3);
    tab.engine
        .handle_tab_message(tab.now, synced("2", "3", vec![newer]));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":2}"#));
}

#[test]
fn an_older_identical_write_never_stands_in_for_an_acknowledged_one() {
    let mut tab = Tab::leader();
    let me = tab.engine.client_id().to_owned();
    // Another tab's write, then this tab's later delete of the same record.
    let wrote = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Wrote {
            id: 1,
            key: RecordKey::new("history", "e1"),
            record: Record {
                value: Some(r#"{"p":1}"#.into()),
                updated_at: T0 + 10,
                client_id: "other".into(),
            },
        },
    };
    tab.engine.handle_tab_message(tab.now, wrote);
    tab.now += 100;
    tab.engine
        .write(tab.now, "history", "e1", None)
        .expect("valid delete");
    tab.fire();
    let (id, _) = tab.only_send();
    // Acknowledged; the state after it comes in pages.
    tab.reply(
        id,
        Reply::Pushed {
            ack: 1,
            page: page("1", vec![], true),
        },
    );
    // A page brings an earlier delete of the same record by this same tab: identical in
    // writer and value, older. It is not the acknowledged delete.
    let old = change("e1", None, T0 - 1_000, &me, 2);
    let synced = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some("1".into()),
            to: "2".into(),
            reset: false,
            more: false,
            gone: None,
            changes: vec![old],
        },
    };
    tab.engine.handle_tab_message(tab.now, synced);
    let shown = tab.engine.get(&RecordKey::new("history", "e1")).cloned();
    assert!(
        shown
            .as_ref()
            .is_some_and(|r| r.is_tombstone() && r.updated_at > T0 + 10),
        "the tab's own later delete stays in view, not the other tab's older write: {shown:?}"
    );
}

#[test]
fn a_write_acknowledged_without_state_is_followed_by_a_request_for_the_state() {
    let mut tab = Tab::new(9);
    tab.engine.sign_in(tab.now, "u1");
    tab.write("e1", r#"{"p":1}"#);
    tab.drain();
    tab.fire();
    // Not the leader and no cursor yet: the push goes without one and its answer holds no
    // state.
    let (id, request) = tab.only_send();
    assert!(matches!(
        &request,
        Request::Push {
            last_sync: None,
            ..
        }
    ));
    tab.reply(id, taken(1, "5"));
    tab.drain();
    let reset = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: None,
            to: "4".into(),
            reset: true,
            more: false,
            gone: None,
            changes: vec![],
        },
    };
    // Once it has a cursor, it asks for the state at once: an empty push with the cursor.
    tab.engine.handle_tab_message(tab.now, reset);
    let (_, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Push {
            client_id: tab.engine.client_id().to_owned(),
            mutations: vec![],
            last_sync: Some("4".into()),
            keepalive: false,
        }
    );
}

#[test]
fn retries_never_wait_longer_than_the_pull_interval() {
    // Whatever the backoff settings say: the rule is the engine's, not a constructor's.
    let config = Config {
        interval_ms: 5_000,
        backoff_ms_max: 60_000,
        ..Config::default()
    };
    let mut tab = Tab::leader();
    tab.engine = Engine::new(config, 1);
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    for _ in 0..12 {
        let (id, _) = tab.only_send();
        let failed_at = tab.now;
        tab.reply(id, Reply::Failed(Failure::Network));
        let retry = tab.engine.poll_timeout().expect("a retry is scheduled");
        assert!(
            retry - failed_at <= 5_000 + 500,
            "waited {}",
            retry - failed_at
        );
        tab.fire();
    }
}

fn synced(from: Option<&str>, to: &str, reset: bool, changes: Vec<Change>) -> TabMessage {
    TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: from.map(str::to_owned),
            to: to.into(),
            reset,
            more: false,
            gone: None,
            changes,
        },
    }
}

#[test]
fn a_whole_state_older_than_what_the_tab_holds_never_rolls_it_back() {
    let mut tab = Tab::new(10);
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    let (full, request) = tab.only_send();
    assert_eq!(request, Request::Pull { last_sync: None });
    // Before the answer, another tab's newer state arrives.
    let newer = vec![
        change("a", Some(r#"{"v":"old"}"#), 10, "c", 2),
        change("b", Some(r#"{"v":"new"}"#), 30, "c", 7),
        change("c", Some(r#"{"v":"new"}"#), 31, "c", 8),
    ];
    tab.engine
        .handle_tab_message(tab.now, synced(None, "8", true, newer));
    // The answer to the earlier pull is the state at version 5: `b` older, `c` not yet
    // written, and `a` deleted and compacted (absent, though at or below 5).
    let older = vec![change("b", Some(r#"{"v":"old"}"#), 20, "c", 5)];
    tab.drain();
    tab.reply(full, Reply::Pulled(page("5", older, false)));
    assert_eq!(tab.value("a"), None, "gone from the whole state");
    assert_eq!(tab.value("b").as_deref(), Some(r#"{"v":"new"}"#));
    assert_eq!(tab.value("c").as_deref(), Some(r#"{"v":"new"}"#));
    // Storage is cleared and refilled with what stayed.
    let commands = tab.drain();
    let clear = commands
        .iter()
        .position(|c| matches!(c, Command::Persist(Persist::ClearRecords { .. })))
        .expect("records cleared");
    let stored: Vec<&str> = commands[clear..]
        .iter()
        .filter_map(|c| match c {
            Command::Persist(Persist::Record { change, .. }) => Some(change.key.as_str()),
            _ => None,
        })
        .collect();
    assert!(stored.contains(&"b") && stored.contains(&"c"), "{stored:?}");
    assert!(!stored.contains(&"a"), "{stored:?}");
}

#[test]
fn another_tabs_older_whole_state_never_hides_an_acknowledged_write() {
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"p":1}"#);
    tab.fire();
    let (id, request) = tab.only_send();
    let stamp = pushed(&request)[0].updated_at;
    let client = tab.engine.client_id().to_owned();
    tab.reply(
        id,
        Reply::Pushed {
            ack: 1,
            page: page(
                "2",
                vec![change("e1", Some(r#"{"p":1}"#), stamp, &client, 2)],
                false,
            ),
        },
    );
    // Another tab's full pull, answered before this push was applied, arrives late.
    tab.engine
        .handle_tab_message(tab.now, synced(None, "1", true, vec![]));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":1}"#));
}

#[test]
fn an_answer_to_a_request_sent_before_a_stateless_ack_still_asks_for_the_state() {
    let mut tab = Tab::new(11);
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    let (pull, _) = tab.only_send();
    tab.write("e1", r#"{"p":"mine"}"#);
    // Hidden: the write goes with keepalive, without a cursor (there is none yet).
    tab.engine.handle_visibility(tab.now, false);
    let (push, request) = tab.only_send();
    assert!(matches!(
        request,
        Request::Push {
            last_sync: None,
            ..
        }
    ));
    tab.reply(push, taken(1, "3"));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":"mine"}"#));
    // The pull was answered before the push was applied: it does not show the stored write.
    tab.reply(pull, Reply::Pulled(page("2", vec![], false)));
    let (_, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Push {
            client_id: tab.engine.client_id().to_owned(),
            mutations: vec![],
            last_sync: Some("2".into()),
            keepalive: false,
        },
        "the state after the acknowledged write is asked for"
    );
}

#[test]
fn a_not_modified_answer_ends_the_wait_for_the_state() {
    let mut tab = Tab::new(12);
    tab.engine.sign_in(tab.now, "u1");
    tab.write("e1", r#"{"p":1}"#);
    tab.drain();
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(id, taken(1, "5"));
    tab.engine
        .handle_tab_message(tab.now, synced(None, "5", true, vec![]));
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::Failed(Failure::Network));
    tab.engine.handle_leadership(tab.now, true);
    let start = tab.now;
    tab.fire();
    let (id, request) = tab.only_send();
    assert!(matches!(request, Request::Pull { .. }));
    tab.reply(id, Reply::NotModified);
    assert!(tab.sends().is_empty());
    let next = tab.engine.poll_timeout().expect("the next pull");
    assert!(
        next >= start + 27_000,
        "pulls again after {} ms",
        next - start
    );
}

#[test]
fn a_tab_that_does_not_poll_follows_the_pages_of_its_push_answer() {
    let mut tab = Tab::new(13);
    tab.engine.sign_in(tab.now, "u1");
    tab.engine
        .handle_tab_message(tab.now, synced(None, "4", true, vec![]));
    tab.write("e1", r#"{"p":"mine"}"#);
    tab.drain();
    tab.fire();
    let (id, request) = tab.only_send();
    assert!(matches!(request, Request::Push { .. }));
    let first = vec![change("e0", Some("{}"), 1, "c", 5)];
    tab.reply(
        id,
        Reply::Pushed {
            ack: 1,
            page: page("5", first, true),
        },
    );
    // Not the leader: it asks for the next page itself, with an empty push.
    let (id, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Push {
            client_id: tab.engine.client_id().to_owned(),
            mutations: vec![],
            last_sync: Some("5".into()),
            keepalive: false,
        }
    );
    // The write lost to a newer one: once the last page is in, the server's copy shows.
    let rest = vec![change("e1", Some(r#"{"p":"newer"}"#), u64::MAX / 2, "z", 7)];
    tab.reply(
        id,
        Reply::Pushed {
            ack: 1,
            page: page("7", rest, false),
        },
    );
    assert!(tab.sends().is_empty());
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":"newer"}"#));
}

/// What answers a 4xx without Sinkron's error body is not the server refusing the request: a
/// proxy, a firewall or a load balancer's maintenance page. Nothing is dropped, and the
/// request is tried again after a backoff, not at once.
#[test]
fn a_refusal_that_is_not_the_servers_keeps_the_copy_and_the_writes_and_backs_off() {
    let foreign = |status| Reply::Failed(Failure::from_status(status, None, None, None, None));
    let mut tab = Tab::leader();
    tab.fire();
    let (id, _) = tab.only_send();
    let held = change("e1", Some(r#"{"p":1}"#), T0, "a", 50);
    tab.reply(id, Reply::Pulled(page("50", vec![held], false)));
    for status in [400, 403, 404] {
        tab.fire();
        let (id, request) = tab.only_send();
        assert_eq!(
            request,
            Request::Pull {
                last_sync: Some("50".into())
            }
        );
        let asked_at = tab.now;
        tab.reply(id, foreign(status));
        let commands = tab.drain();
        assert!(
            !commands
                .iter()
                .any(|c| matches!(c, Command::Persist(Persist::ClearRecords { .. }))),
            "{status}: {commands:?}"
        );
        assert!(
            Tab::sends_of(&commands).is_empty(),
            "{status}: not again at once"
        );
        assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":1}"#));
        assert_eq!(tab.engine.status().error, Some(SyncError::Unreachable));
        assert!(tab.engine.poll_timeout().is_some_and(|at| at > asked_at));
    }
    // A push refused so (a proxy's body limit, say) keeps its writes for the next try.
    tab.write("e2", r#"{"p":2}"#);
    let (id, request) = tab.next_push();
    let Request::Push { mutations, .. } = request else {
        unreachable!()
    };
    tab.reply(id, foreign(413));
    assert_eq!(tab.engine.status().pending, 1);
    assert_eq!(tab.value("e2").as_deref(), Some(r#"{"p":2}"#));
    assert_eq!(tab.engine.outbox(), mutations);
}

#[test]
fn a_cursor_the_server_does_not_know_drops_everything_and_starts_over() {
    let mut tab = Tab::leader();
    tab.fire();
    let (id, _) = tab.only_send();
    let held = change("e1", Some(r#"{"p":1}"#), T0, "a", 50);
    tab.reply(id, Reply::Pulled(page("50", vec![held], false)));
    assert!(tab.value("e1").is_some());
    // The server's history no longer contains cursor 50 (its database was replaced).
    tab.fire();
    let (id, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("50".into())
        }
    );
    let refused = || Failure::from_status(400, None, None, Some("invalid_cursor"), None);
    tab.reply(id, Reply::Failed(refused()));
    assert_eq!(tab.value("e1"), None, "nothing of the old history survives");
    let commands = tab.drain();
    assert!(commands
        .iter()
        .any(|c| matches!(c, Command::Persist(Persist::ClearRecords { .. }))));
    let full_pull = commands.iter().find_map(|c| match c {
        Command::Send { id, request, .. } => Some((*id, request.clone())),
        _ => None,
    });
    let (id, request) = full_pull.expect("a whole-state pull follows at once");
    assert_eq!(request, Request::Pull { last_sync: None });
    tab.reply(
        id,
        Reply::Pulled(page("2", vec![change("e2", Some("{}"), T0, "b", 2)], false)),
    );
    assert_eq!(tab.value("e1"), None);
    assert!(tab.value("e2").is_some());
    // A push with a cursor the server does not know is refused alike, with nothing applied:
    // its writes stay queued and go again, after the whole state.
    tab.write("e3", r#"{"p":3}"#);
    let (id, request) = tab.next_push();
    let Request::Push {
        mutations,
        last_sync,
        ..
    } = request
    else {
        unreachable!()
    };
    assert_eq!(last_sync.as_deref(), Some("2"));
    tab.reply(id, Reply::Failed(refused()));
    assert_eq!(tab.engine.outbox(), mutations, "the write is kept");
    assert_eq!(tab.value("e2"), None, "the copy is dropped");
    assert_eq!(tab.value("e3").as_deref(), Some(r#"{"p":3}"#));
    let (id, request) = tab.only_send();
    assert_eq!(request, Request::Pull { last_sync: None });
    tab.reply(id, Reply::Pulled(page("1", vec![], false)));
    let (_, request) = tab.only_send();
    assert!(
        matches!(&request, Request::Push { mutations: again, last_sync, .. } if *again == mutations && last_sync.as_deref() == Some("1")),
        "{request:?}"
    );
}

#[test]
fn follower_tabs_learn_from_the_leaders_pulls_that_the_device_is_in_sync() {
    let mut leader = Tab::leader();
    leader.fire();
    let (id, _) = leader.only_send();
    leader.reply(id, Reply::NotModified);
    let synced = Tab::broadcasts(&leader.drain())
        .into_iter()
        .find(|m| matches!(m.body, TabBody::Synced { .. }))
        .expect("a 304 is shared with the other tabs");
    assert_eq!(
        synced.body,
        TabBody::Synced {
            from: Some("1".into()),
            to: "1".into(),
            reset: false,
            more: false,
            gone: None,
            changes: vec![]
        }
    );

    let mut follower = Tab::new(9);
    follower.engine.sign_in(follower.now, "u1");
    follower.drain();
    assert_eq!(follower.engine.status().last_synced_at, None);
    follower.now += 5;
    follower.engine.handle_tab_message(follower.now, synced);
    assert_eq!(follower.engine.status().last_synced_at, Some(follower.now));
    assert!(follower.sends().is_empty(), "without a request of its own");
}

#[test]
fn a_tab_that_opens_visible_asks_the_leader_for_the_state() {
    let mut tab = Tab::new(11);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine.handle_visibility(tab.now, true);
    let asked = Tab::broadcasts(&tab.drain())
        .iter()
        .any(|m| m.body == TabBody::PullWanted);
    assert!(asked, "opening is a trigger, like becoming visible");
    tab.engine.handle_visibility(tab.now + 10, true);
    let again = Tab::broadcasts(&tab.drain())
        .iter()
        .any(|m| m.body == TabBody::PullWanted);
    assert!(!again, "a repeated report is not");
}

#[test]
fn a_leader_that_just_pulled_answers_a_new_tab_with_its_cursor_instead_of_pulling() {
    let mut leader = Tab::leader();
    leader.now += 100;
    let scope = Some("u1".to_owned());
    leader.engine.handle_tab_message(
        leader.now,
        TabMessage {
            scope,
            body: TabBody::PullWanted,
        },
    );
    let commands = leader.drain();
    assert!(
        commands.iter().all(|c| !matches!(c, Command::Send { .. })),
        "no second pull"
    );
    let shared = Tab::broadcasts(&commands);
    assert!(shared.iter().any(|m| m.body
        == TabBody::Synced {
            from: Some("1".into()),
            to: "1".into(),
            reset: false,
            more: false,
            gone: None,
            changes: vec![]
        }));
}

#[test]
fn an_answer_to_a_pull_sent_before_an_ack_arrived_does_not_settle_the_acked_write() {
    let mut tab = Tab::new(12);
    tab.engine.sign_in(tab.now, "u1");
    tab.drain();
    tab.now += 1_000;
    tab.write("e1", r#"{"p":"mine"}"#);
    let mine = tab
        .engine
        .get(&RecordKey::new("history", "e1"))
        .unwrap()
        .updated_at;
    // Hidden: the outbox goes out in a keepalive flush (no cursor yet, so a stateless ack).
    tab.engine.handle_visibility(tab.now, false);
    let (flush, _) = tab.only_send();
    // Visible again, leader: a whole-state pull goes out beside the flush.
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    let (pull, request) = tab.only_send();
    assert_eq!(request, Request::Pull { last_sync: None });
    assert!(pull > flush);
    // The flush is acknowledged first; then the pull answers from a state before the write.
    tab.reply(flush, taken(1, "6"));
    let older = change("e1", Some(r#"{"p":"theirs"}"#), mine - 500, "b", 5);
    tab.reply(pull, Reply::Pulled(page("5", vec![older], false)));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":"mine"}"#));
}

#[test]
fn a_full_storage_gives_up_the_oldest_history_first_and_never_trusts_the_cursor_after() {
    let mut tab = Tab::leader();
    tab.at(30_000);
    let (id, _) = tab.only_send();
    // Eight history records (stamped 8, 7, … 1 in key order) and a like.
    let mut changes: Vec<Change> = (1..=8)
        .map(|i| change(&format!("e{i}"), Some("{}"), 9 - i, "c", i))
        .collect();
    changes.push(Change {
        collection: "likes".into(),
        ..change("l1", Some("{}"), 0, "c", 9)
    });
    tab.reply(id, Reply::Pulled(page("9", changes, false)));
    tab.drain();
    let evicted = |tab: &mut Tab| -> Vec<String> {
        tab.drain()
            .into_iter()
            .flat_map(|c| match c {
                Command::Persist(Persist::Evict { scope, keys }) => {
                    assert_eq!(scope.as_deref(), Some("u1"));
                    keys.into_iter().map(|k| k.key).collect::<Vec<_>>()
                }
                other => panic!("only an eviction, not {other:?}"),
            })
            .collect()
    };
    // Another scope's storage is not this tab's to free.
    assert!(!tab.engine.handle_storage_full(None));
    assert!(evicted(&mut tab).is_empty());
    // A quarter of the history, oldest first; then the next oldest, never the same twice.
    assert!(tab.engine.handle_storage_full(Some("u1")));
    assert_eq!(evicted(&mut tab), ["e8", "e7"]);
    assert!(tab.engine.handle_storage_full(Some("u1")));
    assert_eq!(evicted(&mut tab), ["e6", "e5"]);
    // They stay in view.
    assert_eq!(tab.engine.collection("history").len(), 8);
    for expected in [vec!["e4"], vec!["e3"], vec!["e2"], vec!["e1"]] {
        assert!(tab.engine.handle_storage_full(Some("u1")));
        assert_eq!(evicted(&mut tab), expected);
    }
    // Nothing of the history is left to give up (a like is never evicted); the stored
    // records are marked incomplete all the same (what failed to be stored is missing).
    assert!(!tab.engine.handle_storage_full(Some("u1")));
    assert_eq!(
        tab.drain(),
        [Command::Persist(Persist::Evict {
            scope: Some("u1".into()),
            keys: vec![],
        })]
    );

    // The next whole state, the same records: the storage is written whole again.
    tab.fire();
    let (id, _) = tab.only_send();
    let mut same: Vec<Change> = (1..=8)
        .map(|i| change(&format!("e{i}"), Some("{}"), 9 - i, "c", i))
        .collect();
    same.push(Change {
        collection: "likes".into(),
        ..change("l1", Some("{}"), 0, "c", 9)
    });
    let mut again = page("9", same, false);
    again.reset = true;
    tab.reply(id, Reply::Pulled(again));
    let commands = tab.drain();
    let clear = commands
        .iter()
        .position(|c| matches!(c, Command::Persist(Persist::ClearRecords { .. })))
        .expect("the storage is cleared");
    let rewritten = commands[clear..]
        .iter()
        .filter(|c| matches!(c, Command::Persist(Persist::Record { .. })))
        .count();
    assert_eq!(rewritten, 9, "every record, the evicted ones too");

    // A tab restored from storage so cut pulls the whole state, not from its cursor.
    let mut reloaded = Tab::new(2);
    reloaded.engine.restore_user(Some("u1".into()));
    reloaded.engine.restore_cursor(Some("9".into()), false);
    reloaded.engine.handle_visibility(reloaded.now, true);
    reloaded.engine.handle_leadership(reloaded.now, true);
    let (id, request) = reloaded.only_send();
    assert_eq!(request, Request::Pull { last_sync: None });
    // ... and stores it whole, which makes the storage complete again.
    let state = vec![change("e1", Some("{}"), 8, "c", 1)];
    reloaded.reply(id, Reply::Pulled(page("9", state, false)));
    assert!(reloaded
        .drain()
        .iter()
        .any(|c| matches!(c, Command::Persist(Persist::ClearRecords { .. }))));
}

/// The leader's next background pull after a 304 that carried the server's interval
/// (`hint_ms`, if any): how long after the answer it comes.
fn next_poll_after_hint(hint_ms: Option<u64>) -> u64 {
    let mut tab = Tab::leader();
    tab.at(40_000);
    let (id, _) = tab.only_send();
    if let Some(hint) = hint_ms {
        tab.engine.handle_poll_interval(hint);
    }
    tab.reply(id, Reply::NotModified);
    tab.drain();
    let answered = tab.now;
    let due = tab.engine.poll_timeout().expect("the next poll");
    // Nothing goes out before it.
    tab.at(due - 1 - answered);
    assert!(tab.sends().is_empty());
    tab.fire();
    assert!(matches!(tab.only_send().1, Request::Pull { .. }));
    due - answered
}

#[test]
fn the_server_can_stretch_the_poll_interval_never_shorten_it_and_only_up_to_a_ceiling() {
    // The app's 30 s, ± 10 %.
    assert!((27_000..=33_000).contains(&next_poll_after_hint(None)));
    // A busy server asks for 2 minutes: it gets them (± 10 %).
    assert!((108_000..=132_000).contains(&next_poll_after_hint(Some(120_000))));
    // A server asking for 5 s does not make the device poll faster than its own 30 s.
    assert!((27_000..=33_000).contains(&next_poll_after_hint(Some(5_000))));
    // A day is cut to the ceiling, 10 minutes.
    assert!((540_000..=660_000).contains(&next_poll_after_hint(Some(86_400_000))));
}

#[test]
fn a_retry_never_waits_longer_than_the_interval_the_server_asked_for() {
    let config = Config {
        backoff_ms_max: 3_600_000,
        ..Config::default()
    };
    let mut tab = Tab::leader();
    tab.engine = Engine::new(config, 1);
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    let (id, _) = tab.only_send();
    tab.engine.handle_poll_interval(120_000);
    tab.reply(id, Reply::NotModified);
    tab.fire();
    let mut longest = 0;
    for _ in 0..12 {
        let (id, _) = tab.only_send();
        let failed_at = tab.now;
        tab.reply(id, Reply::Failed(Failure::Network));
        let retry = tab.engine.poll_timeout().expect("a retry is scheduled") - failed_at;
        assert!(retry <= 120_000 + 12_000, "waited {retry}");
        longest = longest.max(retry);
        tab.fire();
    }
    assert!(
        longest > 30_000 + 3_000,
        "the backoff grew past the app's interval: {longest}"
    );
}

/// The sessions a tab's `EndingSessions` persists, from its commands.
fn ending_persisted(commands: &[Command]) -> Option<Vec<String>> {
    commands.iter().rev().find_map(|c| match c {
        Command::Persist(Persist::EndingSessions { tokens }) => Some(tokens.clone()),
        _ => None,
    })
}

fn end_session_sent(commands: &[Command]) -> Option<(u64, String)> {
    commands.iter().find_map(|c| match c {
        Command::Send {
            id,
            request: Request::EndSession { token },
            ..
        } => Some((*id, token.clone())),
        _ => None,
    })
}

#[test]
fn a_signed_out_session_is_ended_on_the_server_until_it_answers() {
    let mut tab = Tab::leader();
    tab.engine.sign_out(tab.now, false);
    tab.engine.end_session(tab.now, "tok-1".into());
    let commands = tab.drain();
    assert_eq!(ending_persisted(&commands), Some(vec!["tok-1".to_owned()]));
    let (id, token) = end_session_sent(&commands).expect("sent at once");
    assert_eq!(token, "tok-1");
    // Unreachable, then the server busy: tried again, each time within one pull interval.
    let mut id = id;
    for reply in [
        Reply::Failed(Failure::Network),
        Reply::Failed(Failure::Unavailable {
            retry_after_ms: Some(5_000),
        }),
        Reply::Failed(Failure::Network),
    ] {
        let failed_at = tab.now;
        tab.reply(id, reply);
        assert!(end_session_sent(&tab.drain()).is_none(), "not at once");
        let retry = tab.engine.poll_timeout().expect("a retry");
        assert!(retry - failed_at <= 30_000, "waited {}", retry - failed_at);
        tab.fire();
        (id, _) = end_session_sent(&tab.drain()).expect("sent again");
    }
    // Done: forgotten, and nothing more is sent.
    tab.reply(id, Reply::Done);
    assert_eq!(ending_persisted(&tab.drain()), Some(vec![]));
    assert_eq!(tab.engine.poll_timeout(), None);
}

#[test]
fn ending_a_session_waits_for_a_connection_and_survives_a_restart() {
    let mut tab = Tab::leader();
    tab.engine.handle_online(tab.now, false);
    tab.engine.sign_out(tab.now, false);
    tab.engine.end_session(tab.now, "tok-1".into());
    let commands = tab.drain();
    assert!(
        end_session_sent(&commands).is_none(),
        "offline: nothing sent"
    );
    assert_eq!(ending_persisted(&commands), Some(vec!["tok-1".to_owned()]));
    // The page closes; another one starts on the same storage, back online.
    let mut next = Tab::new(2);
    next.engine.restore_ending_sessions(vec!["tok-1".into()]);
    next.engine.handle_online(next.now, true);
    let (id, token) = end_session_sent(&next.drain()).expect("the new page ends it");
    assert_eq!(token, "tok-1");
    // A session the server no longer has (401) needs no more attempts.
    next.reply(id, Reply::Failed(Failure::Unauthorized));
    assert_eq!(ending_persisted(&next.drain()), Some(vec![]));
    assert_eq!(next.engine.poll_timeout(), None);
    assert_eq!(
        next.engine.status().error,
        None,
        "the guest's status is not touched"
    );
}

#[test]
fn ending_a_session_waits_for_no_other_request() {
    let mut tab = Tab::leader();
    tab.at(30_000);
    let (pull, _) = tab.only_send();
    // A pull is in flight when another session (signed out elsewhere in this tab's life) is
    // to be ended: it goes out at once all the same.
    tab.engine.end_session(tab.now, "tok-old".into());
    let (id, _) = end_session_sent(&tab.drain()).expect("not held by the pull");
    tab.reply(id, Reply::Done);
    tab.reply(pull, Reply::NotModified);
    tab.drain();
    assert!(tab.engine.status().signed_in);
}

#[test]
fn a_session_still_to_end_is_not_forgotten_by_the_next_sign_in() {
    let mut tab = Tab::leader();
    tab.engine.sign_out(tab.now, false);
    tab.engine.end_session(tab.now, "tok-1".into());
    let (id, _) = end_session_sent(&tab.drain()).expect("sent");
    tab.reply(id, Reply::Failed(Failure::Network));
    tab.drain();
    // Another user signs in before the retry.
    tab.engine.sign_in(tab.now, "u2");
    tab.drain();
    tab.now += 30_000;
    tab.engine.handle_timeout(tab.now);
    let (_, token) = end_session_sent(&tab.drain()).expect("tried again");
    assert_eq!(token, "tok-1");
}

fn adopting() -> Tab {
    let mut tab = Tab::new(1);
    tab.engine = Engine::new(
        Config {
            adopt_legacy: true,
            ..Config::default()
        },
        1,
    );
    tab
}

fn adopt_asked(commands: &[Command]) -> Vec<Option<String>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Adopt { scope } => Some(scope.clone()),
            _ => None,
        })
        .collect()
}

fn legacy(key: &str, value: &str, at: u64) -> (RecordKey, Option<String>, Option<u64>) {
    (RecordKey::new("history", key), Some(value.into()), Some(at))
}

#[test]
fn data_from_before_sinkron_is_asked_for_once_per_scope_and_written_with_its_own_time() {
    let mut tab = adopting();
    tab.engine.restore_adopted(vec![]);
    tab.engine.restore_user(None);
    assert_eq!(adopt_asked(&tab.drain()), [None], "the guest's, at start");
    // A guest write since then is newer than the old copy of the same episode.
    tab.write("e2", r#"{"position":99}"#);
    tab.drain();
    let old = T0 - 86_400_000;
    tab.engine
        .adopt(
            tab.now,
            None,
            vec![
                legacy("e1", r#"{"position":5}"#, old),
                legacy("e2", r#"{"position":1}"#, old),
            ],
        )
        .unwrap();
    let commands = tab.drain();
    assert!(commands.iter().any(|c| matches!(
        c,
        Command::Persist(Persist::Adopted { scopes }) if scopes == &[None]
    )));
    let e1 = tab.engine.get(&RecordKey::new("history", "e1")).unwrap();
    assert_eq!(
        (e1.value.as_deref(), e1.updated_at),
        (Some(r#"{"position":5}"#), old)
    );
    let e2 = tab.engine.get(&RecordKey::new("history", "e2")).unwrap();
    assert_eq!(
        e2.value.as_deref(),
        Some(r#"{"position":99}"#),
        "the newer write stays"
    );
    // Signing in asks for the user's scope, once; signing out again asks nothing for the guest.
    tab.engine.sign_in(tab.now, "u1");
    assert_eq!(adopt_asked(&tab.drain()), [Some("u1".to_owned())]);
    tab.engine.adopt(tab.now, Some("u1"), vec![]).unwrap();
    tab.engine.sign_out(tab.now, false);
    tab.engine.sign_in(tab.now, "u1");
    assert!(adopt_asked(&tab.drain()).is_empty());
    // A later start on this device, with the scopes stored: nothing asked.
    let mut next = adopting();
    next.engine.restore_adopted(vec![None, Some("u1".into())]);
    next.engine.restore_user(Some("u1".into()));
    assert!(adopt_asked(&next.drain()).is_empty());
}

#[test]
fn adopted_data_is_all_or_nothing_and_a_stamp_from_the_future_is_now() {
    let mut tab = adopting();
    tab.engine.restore_user(None);
    tab.drain();
    let bad = (RecordKey::new("history", ""), Some("{}".to_owned()), None);
    assert_eq!(
        tab.engine
            .adopt(tab.now, None, vec![legacy("e1", "{}", T0 - 5), bad]),
        Err(WriteError::InvalidKey)
    );
    assert!(tab.engine.get(&RecordKey::new("history", "e1")).is_none());
    assert!(!tab
        .drain()
        .iter()
        .any(|c| matches!(c, Command::Persist(Persist::Adopted { .. }))));
    // Asked again next time (nothing was marked); a stamp ahead of the clock is now.
    tab.engine
        .adopt(tab.now, None, vec![legacy("e1", "{}", T0 + 3_600_000)])
        .unwrap();
    assert_eq!(
        tab.engine
            .get(&RecordKey::new("history", "e1"))
            .unwrap()
            .updated_at,
        tab.now
    );
    // Without the option the engine never asks.
    let mut plain = Tab::new(3);
    plain.engine.restore_user(None);
    plain.engine.sign_in(plain.now, "u1");
    assert!(adopt_asked(&plain.drain()).is_empty());
}

/// The leader holding `a` (version 3) and `x` (version 2), as a pull from cursor "3"
/// left them.
fn leader_holding_a_and_x() -> Tab {
    let mut tab = Tab::leader();
    tab.fire();
    let (id, _) = tab.only_send();
    let held = vec![
        change("x", Some(r#"{"v":"x"}"#), 1, "c", 2),
        change("a", Some(r#"{"v":"a"}"#), 2, "c", 3),
    ];
    tab.reply(id, Reply::Pulled(page("3", held, false)));
    tab.drain();
    tab
}

/// The leader pulls and the server answers with the first page of a reset (more follow, at
/// the place `WHOLE_STATE + 9`) holding `changes`; returns the id of the pull of its next page.
fn own_reset_begun(tab: &mut Tab, changes: Vec<Change>) -> u64 {
    tab.fire();
    let (id, _) = tab.only_send();
    let mut first = page(&(WHOLE_STATE + 9).to_string(), changes, true);
    first.reset = true;
    tab.reply(id, Reply::Pulled(first));
    tab.only_send().0
}

fn stored_cursors(commands: &[Command]) -> Vec<Option<String>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Persist(Persist::Cursor { cursor, .. }) => Some(cursor.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_whole_state_in_pages_drops_nothing_before_its_last_page() {
    let mut tab = leader_holding_a_and_x();
    tab.fire();
    let (id, _) = tab.only_send();
    // The first page of a reset: `a` has moved on to version 15, on the next page; `x` was
    // deleted and its tombstone compacted.
    let inside = (WHOLE_STATE + 9).to_string();
    let mut first = page(&inside, vec![change("b", Some("{}"), 3, "c", 9)], true);
    first.reset = true;
    tab.reply(id, Reply::Pulled(first));
    assert_eq!(tab.value("a").as_deref(), Some(r#"{"v":"a"}"#), "kept");
    assert!(tab.value("x").is_some(), "not known to be gone yet");
    let commands = tab.drain();
    assert_eq!(stored_cursors(&commands), Vec::<Option<String>>::new());
    assert!(!commands
        .iter()
        .any(|c| matches!(c, Command::Persist(Persist::ClearRecords { .. }))));
    let (id, request) = commands
        .iter()
        .find_map(|c| match c {
            Command::Send { id, request, .. } => Some((*id, request.clone())),
            _ => None,
        })
        .expect("the next page is asked for");
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some(inside.clone())
        }
    );
    tab.reply(
        id,
        Reply::Pulled(page(
            "20",
            vec![change("a", Some(r#"{"v":"a2"}"#), 4, "c", 15)],
            false,
        )),
    );
    assert_eq!(tab.value("a").as_deref(), Some(r#"{"v":"a2"}"#));
    assert_eq!(tab.value("b").as_deref(), Some("{}"));
    assert_eq!(tab.value("x"), None, "in none of its pages: gone");
    let commands = tab.drain();
    assert_eq!(stored_cursors(&commands), vec![Some("20".to_owned())]);
    let gone = Tab::broadcasts(&commands)
        .into_iter()
        .find_map(|m| match m.body {
            TabBody::Synced { gone, .. } => gone,
            _ => None,
        });
    assert_eq!(gone, Some(vec![RecordKey::new("history", "x")]));
}

#[test]
fn a_whole_state_covers_every_version_up_to_its_cursor() {
    let mut tab = leader_holding_a_and_x();
    tab.fire();
    let (id, _) = tab.only_send();
    // Everything was deleted and compacted: the reset holds no record at all, at version 10.
    let mut reset = page("10", vec![], false);
    reset.reset = true;
    tab.reply(id, Reply::Pulled(reset));
    assert_eq!(tab.value("a"), None);
    assert_eq!(tab.value("x"), None);
}

#[test]
fn a_tab_opened_inside_a_whole_state_drops_what_its_end_says_is_gone() {
    let mut tab = Tab::new(3);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine
        .restore_record(change("x", Some("{}"), 1, "c", 2));
    tab.engine
        .restore_record(change("y", Some("{}"), 1, "c", 30));
    tab.engine.restore_cursor(Some("2".into()), true);
    let gone = vec![
        RecordKey::new("history", "x"),
        RecordKey::new("history", "y"),
    ];
    let last = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some((WHOLE_STATE + 9).to_string()),
            to: "20".into(),
            reset: false,
            more: false,
            changes: vec![change("b", Some("{}"), 3, "c", 12)],
            gone: Some(gone),
        },
    };
    tab.engine.handle_tab_message(tab.now, last);
    assert_eq!(tab.value("x"), None);
    assert_eq!(
        tab.value("y").as_deref(),
        Some("{}"),
        "newer than the state"
    );
    assert_eq!(tab.value("b").as_deref(), Some("{}"));
    assert_eq!(stored_cursors(&tab.drain()), vec![Some("20".to_owned())]);
}

#[test]
fn a_stored_cursor_inside_a_whole_state_starts_it_again() {
    let mut tab = Tab::new(4);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine
        .restore_cursor(Some((WHOLE_STATE + 9).to_string()), true);
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    let (_, request) = tab.only_send();
    assert_eq!(request, Request::Pull { last_sync: None });
}

#[test]
fn another_tabs_reset_does_not_cut_short_the_whole_state_this_tab_receives() {
    let mut tab = leader_holding_a_and_x();
    // Its own reset: `x` was deleted and its tombstone compacted.
    let next = own_reset_begun(&mut tab, vec![change("b", Some("{}"), 3, "c", 9)]);
    // Another tab's first page of a reset of its own (it began from an older state, which
    // still held `x`) arrives between this tab's pages.
    let theirs = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some("1".into()),
            to: (WHOLE_STATE + 5).to_string(),
            reset: true,
            more: true,
            changes: vec![change("x", Some(r#"{"v":"x"}"#), 1, "c", 2)],
            gone: None,
        },
    };
    tab.engine.handle_tab_message(tab.now, theirs);
    // This tab's last page ends its own whole state, which never held `x`; the other tab may
    // never end its own (it closes), and no pull from "20" would bring back the delete.
    let last = page(
        "20",
        vec![change("a", Some(r#"{"v":"a2"}"#), 4, "c", 15)],
        false,
    );
    tab.reply(next, Reply::Pulled(last));
    assert_eq!(tab.engine.cursor(), Some("20"));
    assert_eq!(tab.value("x"), None, "in none of its pages: gone");
    assert_eq!(tab.value("b").as_deref(), Some("{}"));
    assert_eq!(tab.value("a").as_deref(), Some(r#"{"v":"a2"}"#));
}

#[test]
fn its_own_answer_from_a_page_another_tab_moved_on_from_does_not_end_the_whole_state() {
    let mut tab = leader_holding_a_and_x();
    // Its own reset: `x` was deleted and its tombstone compacted.
    let next = own_reset_begun(&mut tab, vec![change("b", Some("{}"), 3, "c", 9)]);
    let first = (WHOLE_STATE + 9).to_string();
    // Another tab pushed from the same page's cursor: its answer, the next page (with the
    // push's write), moves this tab on.
    let second = (WHOLE_STATE + 12).to_string();
    let theirs = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some(first),
            to: second.clone(),
            reset: false,
            more: true,
            changes: vec![change("c", Some("{}"), 4, "c2", 12)],
            gone: None,
        },
    };
    tab.engine.handle_tab_message(tab.now, theirs);
    assert_eq!(tab.engine.cursor(), Some(second.as_str()));
    // This tab's own pull from the first page is answered apart: the state's end as it was
    // before that push. Taken as the end, it would leave `x` (on no page) at cursor 11.
    let apart = page(
        "11",
        vec![change("a", Some(r#"{"v":"a2"}"#), 4, "c", 11)],
        false,
    );
    tab.reply(next, Reply::Pulled(apart));
    assert_eq!(tab.value("a").as_deref(), Some(r#"{"v":"a2"}"#));
    assert_eq!(tab.engine.cursor(), Some(second.as_str()));
    assert!(tab.engine.receiving_whole_state());
    // The next pull goes on from the latest page, and its last page ends the whole state.
    tab.fire();
    let (id, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some(second)
        }
    );
    tab.reply(id, Reply::Pulled(page("13", vec![], false)));
    assert_eq!(tab.engine.cursor(), Some("13"));
    assert_eq!(tab.value("x"), None, "in none of its pages: gone");
    assert_eq!(tab.value("c").as_deref(), Some("{}"));
}

#[test]
fn a_whole_state_received_before_a_sign_out_is_not_the_next_users() {
    let mut tab = leader_holding_a_and_x();
    tab.fire();
    let (id, _) = tab.only_send();
    let mut first = page(&(WHOLE_STATE + 9).to_string(), vec![], true);
    first.reset = true;
    tab.reply(id, Reply::Pulled(first));
    tab.engine.sign_out(tab.now, false);
    tab.engine.sign_in(tab.now, "u2");
    tab.drain();
    // The leader's whole state for the user signed in now: this tab follows it.
    let inside = (WHOLE_STATE + 5).to_string();
    let theirs = TabMessage {
        scope: Some("u2".into()),
        body: TabBody::Synced {
            from: None,
            to: inside.clone(),
            reset: true,
            more: true,
            changes: vec![change("b", Some("{}"), 3, "c", 4)],
            gone: None,
        },
    };
    tab.engine.handle_tab_message(tab.now, theirs);
    assert_eq!(tab.engine.cursor(), Some(inside.as_str()));
    assert_eq!(tab.value("b").as_deref(), Some("{}"));
}

#[test]
fn a_late_page_of_a_whole_state_given_up_moves_nothing() {
    let mut tab = leader_holding_a_and_x();
    let next = own_reset_begun(&mut tab, vec![]);
    // Meanwhile another tab ends a whole state of its own: this tab takes it instead.
    let ended = TabMessage {
        scope: Some("u1".into()),
        body: TabBody::Synced {
            from: Some((WHOLE_STATE + 7).to_string()),
            to: "20".into(),
            reset: false,
            more: false,
            changes: vec![],
            gone: Some(vec![]),
        },
    };
    tab.engine.handle_tab_message(tab.now, ended);
    // The answer to this tab's own next page arrives late: a place in the whole state it
    // gave up, which it must not pull on from.
    let late = page(&(WHOLE_STATE + 12).to_string(), vec![], true);
    tab.reply(next, Reply::Pulled(late));
    let (_, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("20".into())
        }
    );
}

/// A visible leader signed in as `u1` with the default policies (`history` is hot), its first
/// pull answered.
fn hot_leader() -> Tab {
    hot_leader_holding(vec![])
}

/// [`hot_leader`] whose first pull brought `changes` (what it knew at its last sync, at
/// server time `T0`).
fn hot_leader_holding(changes: Vec<Change>) -> Tab {
    let mut tab = Tab::with(Config::default(), 21);
    tab.engine.sign_in(tab.now, "u1");
    tab.engine.handle_leadership(tab.now, true);
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::Pulled(page("1", changes, false)));
    tab.drain();
    tab
}

/// Answers every request sent so far at once (pulls: nothing changed); returns how many
/// pushes there were.
fn answer_pushes(tab: &mut Tab) -> usize {
    let mut pushes = 0;
    loop {
        let sends = tab.sends();
        if sends.is_empty() {
            return pushes;
        }
        for (id, request) in sends {
            let answer = match &request {
                Request::Push { mutations, .. } => {
                    pushes += 1;
                    let ack = mutations.last().map_or(0, |m| m.id);
                    taken(ack, "1")
                }
                _ => Reply::NotModified,
            };
            tab.reply(id, answer);
        }
    }
}

/// Plays for `secs` seconds: a position written every second (the clock moving by quarter
/// seconds), each push answered at once. Returns the pushes sent.
fn play(tab: &mut Tab, secs: u64) -> usize {
    let mut pushes = 0;
    for s in 0..secs {
        for _ in 0..4 {
            tab.at(250);
            pushes += answer_pushes(tab);
        }
        tab.write("ep-1", &format!(r#"{{"position":{s}}}"#));
        pushes += answer_pushes(tab);
    }
    pushes
}

#[test]
fn a_playback_position_is_pushed_once_per_hot_interval_while_it_plays() {
    let mut tab = hot_leader();
    // Ten minutes of playback: one push when it starts, then one every 30 s.
    let pushes = play(&mut tab, 600);
    assert!(
        (20..=21).contains(&pushes),
        "{pushes} pushes in ten minutes"
    );
    // Every position reached the view and the other tabs at once all the same.
    assert_eq!(tab.value("ep-1").as_deref(), Some(r#"{"position":599}"#));
}

/// A [`hot_leader`] five seconds into playback: its position went as it started, and the
/// one written since (5) waits for the hot interval.
fn position_waiting() -> Tab {
    let mut tab = hot_leader();
    play(&mut tab, 5);
    tab.at(1_000);
    tab.write("ep-1", r#"{"position":5}"#);
    tab
}

/// The pushes that carry writes among what `tab` sends now.
fn pushes_sent(tab: &mut Tab) -> Vec<Vec<Mutation>> {
    tab.sends()
        .into_iter()
        .filter_map(|(_, request)| match request {
            Request::Push { mutations, .. } if !mutations.is_empty() => Some(mutations),
            _ => None,
        })
        .collect()
}

#[test]
fn shown_again_a_tab_pushes_at_once_what_its_failed_hiding_flush_carried() {
    // The page was hidden with a position queued: the flush carried it and failed, while the
    // page was hidden or after it was shown again.
    for failed_while_hidden in [true, false] {
        let mut tab = position_waiting();
        let flush = tab.hide_and_flush();
        tab.at(2_000);
        if failed_while_hidden {
            tab.reply(flush, Reply::Failed(Failure::Network));
            tab.engine.handle_visibility(tab.now, true);
        } else {
            tab.engine.handle_visibility(tab.now, true);
            tab.at(Config::default().push_delay_ms);
            let pushes = pushes_sent(&mut tab);
            assert!(pushes.is_empty(), "the flush is on its way: {pushes:?}");
            tab.reply(flush, Reply::Failed(Failure::Network));
        }
        // It goes at once, not a hot interval after the flush: the page does not show it
        // pending for half a minute.
        tab.at(Config::default().push_delay_ms);
        let pushes = pushes_sent(&mut tab);
        assert_eq!(pushes.len(), 1, "{pushes:?}");
        assert_eq!(pushes[0][0].value.as_deref(), Some(r#"{"position":5}"#));
    }
}

#[test]
fn shown_again_after_a_confirmed_flush_a_playing_tab_keeps_its_hot_interval() {
    // Played on while hidden (a video heard in a background tab): the flush was confirmed,
    // the positions written since wait for the hot interval, shown again or not.
    let mut tab = position_waiting();
    let ack = tab.engine.outbox().last().expect("queued").id;
    let flush = tab.hide_and_flush();
    tab.reply(flush, taken(ack, "2"));
    assert_eq!(tab.engine.status().pending, 0);
    tab.at(1_000);
    tab.write("ep-1", r#"{"position":6}"#);
    tab.engine.handle_visibility(tab.now, true);
    tab.at(Config::default().push_delay_ms);
    let pushes = pushes_sent(&mut tab);
    assert!(
        pushes.is_empty(),
        "the position waits for the interval: {pushes:?}"
    );
    assert_eq!(tab.engine.status().pending, 1);
}

#[test]
fn another_write_takes_the_waiting_position_with_it_at_once() {
    let mut tab = position_waiting();
    tab.engine
        .write(tab.now, "likes", "ep-1", Some(r#"{"v":1}"#.into()))
        .expect("valid write");
    let due = tab.engine.poll_timeout().expect("a push planned");
    assert!(due <= tab.now + 300, "the like waits only the debounce");
    tab.fire();
    let (_, request) = tab.only_send();
    let keys: Vec<&str> = pushed(&request)
        .iter()
        .map(|m| m.collection.as_str())
        .collect();
    assert_eq!(keys, ["history", "likes"]);
}

#[test]
fn a_closed_tab_s_position_taken_over_goes_at_once_not_an_interval_later() {
    let mut tab = hot_leader();
    // Playing here: its position went a moment ago, the next waits for the interval.
    play(&mut tab, 5);
    tab.at(1_000);
    // The leader takes over what a tab closed offline left: its last position among it.
    let position = Mutation {
        id: 4,
        collection: "history".into(),
        key: "ep-2".into(),
        value: Some(r#"{"position":77}"#.into()),
        updated_at: tab.now - 5_000,
        fields: None,
    };
    tab.unpark_own_scope("closed".into(), vec![position]);
    // A leftover, not part of this tab's stream of positions: sent at once, as a restored
    // outbox is (it waited 25 s more, for the interval).
    let (_, request) = tab.only_send();
    let keys: Vec<&str> = pushed(&request).iter().map(|m| m.key.as_str()).collect();
    assert!(keys.contains(&"ep-2"), "{keys:?}");
}

#[test]
fn a_pause_or_a_seek_pushes_the_position_at_once() {
    let mut tab = hot_leader();
    play(&mut tab, 5);
    tab.at(1_000);
    tab.write("ep-1", r#"{"position":42}"#);
    assert!(tab.sends().is_empty());
    assert!(
        tab.engine.poll_timeout().unwrap() > tab.now + 20_000,
        "waits for its interval"
    );
    // A seek bar dragged: each step asks again, and the drag is one push once let go.
    tab.engine.push_now(tab.now);
    tab.at(200);
    tab.write("ep-1", r#"{"position":43}"#);
    tab.engine.push_now(tab.now);
    assert!(tab.sends().is_empty());
    tab.at(300);
    let (_, request) = tab.only_send();
    assert_eq!(
        pushed(&request)[0].value.as_deref(),
        Some(r#"{"position":43}"#)
    );
}

#[test]
fn coming_back_online_pushes_the_position_at_once() {
    let mut tab = hot_leader();
    play(&mut tab, 5);
    tab.engine.handle_online(tab.now, false);
    tab.at(1_000);
    tab.write("ep-1", r#"{"position":6}"#);
    assert!(tab.sends().is_empty());
    tab.at(1_000);
    tab.engine.handle_online(tab.now, true);
    tab.engine.handle_timeout(tab.now);
    let pushes: Vec<_> = tab
        .sends()
        .into_iter()
        .filter(|(_, r)| matches!(r, Request::Push { .. }))
        .collect();
    assert_eq!(pushes.len(), 1);
}

#[test]
fn offline_a_position_is_stamped_as_of_the_last_sync_so_progress_made_elsewhere_since_wins() {
    // What this device knew at its last sync (server time T0): the TV left ep-7 at 120 s.
    let copy = change("ep-7", Some(r#"{"position":120}"#), T0 - 60_000, "tv", 2);
    let mut tab = hot_leader_holding(vec![copy]);
    // Offline ten minutes later, this device resumes from that copy and plays two seconds.
    tab.engine.handle_online(tab.now, false);
    tab.at(600_000);
    tab.write("ep-7", r#"{"position":121}"#);
    tab.at(1_000);
    tab.write("ep-7", r#"{"position":122}"#);
    // Shown at once, as any write; stamped just after what this device knew (the sync at
    // T0, one millisecond per write), not now: it cannot know what the TV did since.
    let shown = tab.record("ep-7");
    assert_eq!(shown.value.as_deref(), Some(r#"{"position":122}"#));
    assert_eq!(shown.updated_at, T0 + 2);
    // A collection that is not hot is stamped now, offline or not.
    tab.engine
        .write(tab.now, "likes", "ep-7", Some(r#"{"like":1}"#.into()))
        .expect("valid write");
    let like = tab.engine.get(&RecordKey::new("likes", "ep-7")).cloned();
    assert_eq!(like.expect("the like shows").updated_at, tab.now);
    // Back online: the push carries the offline stamp, so the TV's progress made meanwhile
    // (a write at T0 + 5 min) wins on the server; the next second played is stamped now.
    tab.engine.handle_online(tab.now, true);
    tab.engine.handle_timeout(tab.now);
    let push = tab
        .sends()
        .into_iter()
        .find(|(_, r)| matches!(r, Request::Push { .. }))
        .expect("a push");
    let sent = &pushed(&push.1)[0];
    assert_eq!((sent.key.as_str(), sent.updated_at), ("ep-7", T0 + 2));
    assert!(sent.updated_at < T0 + 300_000);
    tab.at(1_000);
    tab.write("ep-7", r#"{"position":123}"#);
    assert_eq!(tab.record("ep-7").updated_at, tab.now);
}

#[test]
fn unreachable_while_the_browser_says_online_a_position_is_stamped_as_of_the_last_sync() {
    // A captive portal or a dead network behind a live link: the browser says online, but
    // this tab's requests fail. It cannot know what other devices did since its last sync
    // any more than offline.
    let copy = change("ep-7", Some(r#"{"position":120}"#), T0 - 60_000, "tv", 2);
    let mut tab = hot_leader_holding(vec![copy]);
    tab.at(600_000);
    tab.engine.handle_focus(tab.now);
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::Failed(Failure::Network));
    tab.at(1_000);
    tab.write("ep-7", r#"{"position":121}"#);
    assert_eq!(tab.record("ep-7").updated_at, T0 + 1);
    // Reached again (the server's clock now this device's): stamped now.
    tab.at(60_000);
    tab.engine.handle_timeout(tab.now);
    let (id, request) = tab.only_send();
    let Request::Push { mutations, .. } = request else {
        panic!("the retry pushes the queued position");
    };
    let mut answer = page("2", vec![], false);
    answer.server_time = tab.now;
    let ack = mutations.last().map_or(0, |m| m.id);
    tab.reply(id, Reply::Pushed { ack, page: answer });
    tab.at(1_000);
    tab.write("ep-7", r#"{"position":122}"#);
    assert_eq!(tab.record("ep-7").updated_at, tab.now);
}

/// Hands the tab messages among `commands` to `to`, at its time; returns the other commands.
fn relay(commands: Vec<Command>, to: &mut Tab) -> Vec<Command> {
    let mut rest = Vec::new();
    for command in commands {
        match command {
            Command::Broadcast(message) => to.engine.handle_tab_message(to.now, message),
            other => rest.push(other),
        }
    }
    rest
}

fn only_request(commands: Vec<Command>) -> (u64, Request) {
    let mut sends: Vec<_> = commands
        .into_iter()
        .filter_map(|c| match c {
            Command::Send { id, request, .. } => Some((id, request)),
            _ => None,
        })
        .collect();
    assert_eq!(
        sends.len(),
        1,
        "expected exactly one request, got {sends:?}"
    );
    sends.remove(0)
}

#[test]
fn a_tab_beside_a_leader_whose_requests_fail_stamps_a_position_as_of_the_last_sync() {
    // Two visible windows of the site: the leader polls, the other plays and has made no
    // request of its own yet. The leader's pull failing tells it the device is cut off.
    let copy = change("ep-7", Some(r#"{"position":120}"#), T0 - 60_000, "tv", 2);
    let mut player = Tab::with(Config::default(), 22);
    player.engine.sign_in(player.now, "u1");
    player.drain();
    let mut leader = Tab::with(Config::default(), 21);
    leader.engine.sign_in(leader.now, "u1");
    leader.engine.handle_leadership(leader.now, true);
    let (id, _) = leader.only_send();
    leader.reply(id, Reply::Pulled(page("1", vec![copy], false)));
    relay(leader.drain(), &mut player);
    assert_eq!(player.engine.last_synced_at(), Some(T0));
    // Ten minutes later the leader's pull fails: the other tab counts itself cut off too, and
    // a position it writes is stamped just after that sync, not now.
    for tab in [&mut leader, &mut player] {
        tab.now += 600_000;
    }
    leader.engine.handle_focus(leader.now);
    let (id, _) = only_request(relay(leader.drain(), &mut player));
    leader.reply(id, Reply::Failed(Failure::Network));
    assert!(!player.engine.cut_off());
    let told = player.engine.status();
    relay(leader.drain(), &mut player);
    assert!(player.engine.cut_off());
    // Its status says so, and the app is told the status changed.
    assert_eq!(told.error, None);
    assert_eq!(player.engine.status().error, Some(SyncError::Unreachable));
    assert!(player
        .drain()
        .iter()
        .any(|c| matches!(c, Command::Notify(Notice::Status))));
    player.write("ep-7", r#"{"position":121}"#);
    assert_eq!(player.record("ep-7").updated_at, T0 + 1);
    // Asked to share what it just pulled, the leader has nothing to share (that pull
    // failed): it pulls again when its backoff allows.
    leader.engine.handle_tab_message(
        leader.now,
        TabMessage {
            scope: Some("u1".into()),
            body: TabBody::PullWanted,
        },
    );
    relay(leader.drain(), &mut player);
    assert!(
        player.engine.cut_off(),
        "told of a sync that did not happen"
    );
    leader.fire();
    let (id, request) = only_request(relay(leader.drain(), &mut player));
    assert!(matches!(request, Request::Pull { .. }), "{request:?}");
    // Reached again: the leader shares the server's state, and the next position is
    // stamped now.
    let mut answer = page("2", vec![], false);
    answer.server_time = leader.now;
    leader.reply(id, Reply::Pulled(answer));
    relay(leader.drain(), &mut player);
    assert!(!player.engine.cut_off());
    assert_eq!(player.engine.status().error, None);
    player.now += 1_000;
    player.write("ep-7", r#"{"position":122}"#);
    assert_eq!(player.record("ep-7").updated_at, player.now);
}

#[test]
fn a_tab_whose_pulls_failed_while_it_led_is_no_longer_cut_off_once_the_next_leader_syncs() {
    // A window led through an outage, then was hidden: another took the lead once the
    // network came back, and syncs. The first one's own failed pulls no longer speak for
    // the device: its status says synced, and a position it writes is stamped now.
    let copy = change("ep-7", Some(r#"{"position":120}"#), T0 - 60_000, "tv", 2);
    let mut former = Tab::with(Config::default(), 21);
    former.engine.sign_in(former.now, "u1");
    former.engine.handle_leadership(former.now, true);
    let (id, _) = former.only_send();
    former.reply(id, Reply::Pulled(page("1", vec![copy], false)));
    former.drain();
    former.now += 600_000;
    former.engine.handle_focus(former.now);
    let (id, _) = former.only_send();
    former.reply(id, Reply::Failed(Failure::Network));
    former.engine.handle_visibility(former.now, false);
    former.engine.handle_leadership(former.now, false);
    former.drain();
    assert_eq!(former.engine.status().error, Some(SyncError::Unreachable));
    assert!(former.engine.cut_off());

    let mut next = Tab::with(Config::default(), 22);
    next.now = former.now + 5_000;
    former.now = next.now;
    next.engine.sign_in(next.now, "u1");
    next.engine.handle_leadership(next.now, true);
    let (id, _) = next.only_send();
    let mut answer = page("2", vec![], false);
    answer.server_time = next.now;
    next.reply(id, Reply::Pulled(answer));
    relay(next.drain(), &mut former);
    assert_eq!(former.engine.status().error, None);
    assert_eq!(former.engine.last_synced_at(), Some(former.now));
    assert!(!former.engine.cut_off());
    former.now += 1_000;
    former.write("ep-7", r#"{"position":121}"#);
    assert_eq!(former.record("ep-7").updated_at, former.now);
}

#[test]
fn a_tab_opened_while_the_leader_is_cut_off_is_told_so_at_once() {
    // The leader synced ten minutes ago; its pull just failed, so it will not pull again
    // before its backoff. A window opened (or reloaded) now restores what the device
    // stored and asks for a pull: the leader tells it the device is cut off at once, so a
    // position it plays is stamped as of what the device knew, not now.
    let copy = change("ep-7", Some(r#"{"position":120}"#), T0 - 60_000, "tv", 2);
    let mut leader = Tab::with(Config::default(), 21);
    leader.engine.sign_in(leader.now, "u1");
    leader.engine.handle_leadership(leader.now, true);
    let (id, _) = leader.only_send();
    leader.reply(id, Reply::Pulled(page("2", vec![copy.clone()], false)));
    leader.drain();
    leader.now += 600_000;
    leader.engine.handle_focus(leader.now);
    let (id, _) = leader.only_send();
    leader.reply(id, Reply::Failed(Failure::Network));
    leader.drain();
    let mut opened = Tab::with(Config::default(), 22);
    opened.now = leader.now;
    opened.engine.restore_user(Some("u1".into()));
    opened.engine.restore_record(copy);
    opened.engine.restore_cursor(Some("2".into()), true);
    opened.engine.handle_visibility(opened.now, true);
    let asked = opened.drain();
    assert!(
        asked.iter().any(|c| matches!(
            c,
            Command::Broadcast(TabMessage {
                body: TabBody::PullWanted,
                ..
            })
        )),
        "{asked:?}"
    );
    assert!(!opened.engine.cut_off());
    for command in asked {
        if let Command::Broadcast(message) = command {
            leader.engine.handle_tab_message(leader.now, message);
        }
    }
    relay(leader.drain(), &mut opened);
    assert!(opened.engine.cut_off(), "not told of the failed pull");
    assert_eq!(opened.engine.status().error, Some(SyncError::Unreachable));
    opened.write("ep-7", r#"{"position":121}"#);
    assert_eq!(opened.record("ep-7").updated_at, T0 - 60_000 + 1);
}

#[test]
fn opened_offline_a_position_is_stamped_as_of_the_newest_record_the_device_holds() {
    // A page opened without a network has not synced: what the device knew is what it
    // stored, the newest of it a minute old (the TV's progress since is not there).
    let mut tab = Tab::with(Config::default(), 21);
    tab.engine.restore_user(Some("u1".into()));
    let copy = change("ep-7", Some(r#"{"position":120}"#), T0 - 3_600_000, "tv", 2);
    tab.engine.restore_record(copy);
    let other = change("ep-8", Some(r#"{"position":5}"#), T0 - 60_000, "phone", 3);
    tab.engine.restore_record(other);
    tab.engine.restore_cursor(Some("3".into()), true);
    tab.engine.handle_online(tab.now, false);
    tab.engine.handle_visibility(tab.now, true);
    tab.write("ep-7", r#"{"position":121}"#);
    let shown = tab.record("ep-7");
    assert_eq!(shown.value.as_deref(), Some(r#"{"position":121}"#));
    assert_eq!(shown.updated_at, T0 - 60_000 + 1);
}

#[test]
fn a_guest_s_position_written_offline_is_stamped_now() {
    // A guest continues nothing of an account's: its position joins the account at sign-in
    // by its time, which "as of the last sync" (never) would make the oldest there is.
    let mut tab = Tab::with(Config::default(), 22);
    tab.engine.handle_online(tab.now, false);
    tab.engine.handle_visibility(tab.now, true);
    tab.write("ep-7", r#"{"position":121}"#);
    assert_eq!(tab.record("ep-7").updated_at, T0);
}

#[test]
fn a_write_after_an_offline_one_is_stamped_above_it() {
    // The copy is stamped a minute ahead of this device's clock (another device's, clamped by
    // the server to its clock + 60 s): the offline write goes just above it.
    let copy = change("ep-7", Some(r#"{"position":120}"#), T0 + 60_000, "tv", 2);
    let mut tab = hot_leader_holding(vec![copy]);
    tab.engine.handle_online(tab.now, false);
    tab.at(1_000);
    tab.write("ep-7", r#"{"position":121}"#);
    let offline = tab.record("ep-7").updated_at;
    assert_eq!(offline, T0 + 60_001);
    // Back online, the next second played is newer than it, as every write of a device is
    // newer than the ones it made before.
    tab.engine.handle_online(tab.now, true);
    tab.at(1_000);
    tab.write("ep-7", r#"{"position":122}"#);
    let next = tab.record("ep-7");
    assert_eq!(next.value.as_deref(), Some(r#"{"position":122}"#));
    assert!(
        next.updated_at > offline,
        "{} after {offline}",
        next.updated_at
    );
}

#[test]
fn a_clock_jumping_backwards_does_not_hold_the_next_position_push() {
    let mut tab = hot_leader();
    play(&mut tab, 3);
    // Paused: the position is sent, nothing waits.
    tab.engine.push_now(tab.now);
    tab.at(300);
    assert_eq!(answer_pushes(&mut tab), 1);
    // The device's clock is set back an hour while the video plays.
    tab.now -= 3_600_000;
    tab.engine.handle_timeout(tab.now);
    answer_pushes(&mut tab);
    tab.at(1_000);
    tab.write("ep-1", r#"{"position":9}"#);
    // Pushed within its interval, as on a clock that keeps time.
    let mut pushes = answer_pushes(&mut tab);
    for _ in 0..31 {
        tab.at(1_000);
        pushes += answer_pushes(&mut tab);
    }
    assert_eq!(pushes, 1);
}

// ----- the poke stream -----

/// A leader like [`Tab::leader`] built with `Config::pokes`, its stream open.
fn poked_leader() -> Tab {
    let config = Config {
        pokes: true,
        hot: Vec::new(),
        ..Config::default()
    };
    let mut tab = Tab::with(config, 1);
    tab.engine.sign_in(tab.now, "u1");
    tab.drain();
    tab.engine.handle_leadership(tab.now, true);
    let commands = tab.drain();
    assert!(commands.contains(&Command::Pokes(true)), "{commands:?}");
    let (id, _, _) = sends_with_token(commands).remove(0);
    tab.reply(id, Reply::Pulled(page("1", vec![], false)));
    tab.drain();
    tab
}

#[test]
fn only_a_visible_signed_in_leader_holds_the_poke_stream() {
    // Off by default: no stream, ever.
    let mut plain = Tab::leader();
    plain.engine.handle_poke(plain.now, 9);
    let commands = plain.drain();
    assert!(!commands.iter().any(|c| matches!(c, Command::Pokes(_))));
    assert!(sends_with_token(commands).is_empty(), "pokes are off");

    let mut tab = poked_leader();
    tab.engine.handle_visibility(tab.now, false);
    assert!(tab.drain().contains(&Command::Pokes(false)));
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    assert!(tab.drain().contains(&Command::Pokes(true)));
    // A sign-out closes it; the stream was the user's.
    tab.engine.sign_out(tab.now, false);
    assert!(tab.drain().contains(&Command::Pokes(false)));
}

#[test]
fn a_poke_above_the_cursor_pulls_at_once_and_one_at_it_does_not() {
    let mut tab = poked_leader();
    // The version this tab already holds (its own push's, say): nothing to do.
    tab.engine.handle_poke(tab.now, 1);
    assert!(tab.sends().is_empty());
    // Another device wrote: pull now, not at the next poll, trigger gap or not.
    tab.engine.handle_poke(tab.now, 2);
    let (id, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("1".into())
        }
    );
    tab.reply(id, Reply::Pulled(page("2", vec![], false)));
    assert!(tab.sends().is_empty(), "the pull answered the poke");
}

#[test]
fn a_poke_during_a_push_waits_for_its_answer() {
    let mut tab = poked_leader();
    tab.write("e1", r#"{"p":1}"#);
    tab.fire();
    let (id, _) = tab.only_send();
    // The push's own version, announced before its answer came back.
    tab.engine.handle_poke(tab.now, 2);
    assert!(tab.sends().is_empty(), "a request is in flight");
    tab.reply(id, taken(1, "2"));
    assert!(
        tab.sends().is_empty(),
        "the answer reached the poked version"
    );
    // A poke that a pull in flight may have missed is pulled after it.
    tab.engine.handle_focus(tab.now + 5_000);
    let (pull, _) = tab.only_send();
    tab.engine.handle_poke(tab.now, 4);
    tab.reply(pull, Reply::Pulled(page("3", vec![], false)));
    let (_, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("3".into())
        }
    );
}

#[test]
fn a_poke_pulls_once_even_if_the_answer_stays_below_it() {
    let mut tab = poked_leader();
    tab.engine.handle_poke(tab.now, 7);
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::NotModified);
    assert!(tab.sends().is_empty(), "no loop of pulls");
    assert!(tab.engine.poll_timeout().unwrap() >= tab.now + 27_000);
}

#[test]
fn an_ended_stream_opens_again_after_the_next_answer_and_a_404_never() {
    let mut tab = poked_leader();
    tab.engine.handle_pokes_ended(tab.now, 0);
    let commands = tab.drain();
    assert!(!commands.contains(&Command::Pokes(true)), "not at once");
    assert!(
        sends_with_token(commands).is_empty(),
        "polling goes on as it was"
    );
    // The next poll is answered: the stream opens again.
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(id, Reply::NotModified);
    assert!(tab.drain().contains(&Command::Pokes(true)));
    // A server without pokes: never asked again.
    tab.engine.handle_pokes_ended(tab.now, 404);
    for _ in 0..3 {
        tab.fire();
        let (id, _) = tab.only_send();
        tab.reply(id, Reply::NotModified);
        assert!(!tab.drain().contains(&Command::Pokes(true)));
    }
    // A poke reported after the stream ended moves nothing.
    tab.engine.handle_poke(tab.now, 99);
    assert!(tab.sends().is_empty());
}

// ----- signing out with writes not yet confirmed -----

/// The keepalive push a sign-out sent, if any: its id and mutations.
fn flushed(commands: &[Command]) -> Option<(u64, Vec<Mutation>)> {
    commands.iter().find_map(|c| match c {
        Command::Send {
            id,
            request:
                Request::Push {
                    keepalive: true,
                    mutations,
                    ..
                },
            ..
        } => Some((*id, mutations.clone())),
        _ => None,
    })
}

/// Whether the commands forget the outbox `client` parked in `scope`.
fn dropped(commands: &[Command], scope: &str, client: &str) -> bool {
    commands.contains(&Command::Persist(Persist::DropOutbox {
        scope: Some(scope.into()),
        client_id: client.into(),
    }))
}

#[test]
fn a_confirmed_sign_out_flush_empties_the_parked_writes() {
    let mut tab = Tab::leader();
    let old_client = tab.engine.client_id().to_owned();
    tab.write("e1", r#"{"p":1}"#);
    tab.write("e2", r#"{"p":2}"#);
    assert_eq!(tab.engine.sign_out(tab.now, false), 2);
    let commands = tab.drain();
    assert!(commands.contains(&Command::Persist(Persist::Wipe {
        scope: Some("u1".into()),
        keep_pending: true
    })));
    let (id, mutations) = flushed(&commands).expect("flushed on the way out");
    assert_eq!(mutations.len(), 2);
    tab.reply(id, taken(mutations[1].id, "7"));
    assert!(dropped(&tab.drain(), "u1", &old_client));
    assert_eq!(tab.value("e2"), None, "the guest never shows them");
}

#[test]
fn a_partly_confirmed_sign_out_flush_leaves_the_writes_parked() {
    let mut tab = Tab::leader();
    let old_client = tab.engine.client_id().to_owned();
    tab.write("e1", "{}");
    tab.write("e2", "{}");
    tab.engine.sign_out(tab.now, false);
    let (id, mutations) = flushed(&tab.drain()).expect("flushed");
    tab.reply(id, taken(mutations[0].id, "7"));
    assert!(!dropped(&tab.drain(), "u1", &old_client));
}

#[test]
fn an_unanswered_sign_out_flush_leaves_the_writes_parked() {
    let mut tab = Tab::leader();
    let old_client = tab.engine.client_id().to_owned();
    tab.write("e1", "{}");
    tab.engine.sign_out(tab.now, false);
    let (id, _) = flushed(&tab.drain()).expect("flushed");
    tab.reply(id, Reply::Failed(Failure::Unauthorized));
    assert!(!dropped(&tab.drain(), "u1", &old_client));
}

#[test]
fn a_guest_signing_out_keeps_its_writes_and_reports_none() {
    let mut tab = Tab::new(3);
    tab.write("g1", "{}");
    tab.drain();
    assert_eq!(tab.engine.sign_out(tab.now, false), 0);
    assert!(tab.drain().is_empty(), "nothing to do");
    assert_eq!(tab.value("g1").as_deref(), Some("{}"));
}

#[test]
fn discarding_at_sign_out_sends_and_keeps_nothing() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    assert_eq!(tab.engine.sign_out(tab.now, true), 1);
    let commands = tab.drain();
    assert_eq!(flushed(&commands), None);
    assert!(commands.contains(&Command::Persist(Persist::Wipe {
        scope: Some("u1".into()),
        keep_pending: false
    })));
}

#[test]
fn writes_parked_offline_are_sent_at_the_next_sign_in_with_their_own_times() {
    let mut tab = Tab::leader();
    tab.engine.handle_online(tab.now, false);
    let old_client = tab.engine.client_id().to_owned();
    tab.write("e1", r#"{"p":1}"#);
    tab.write("e2", r#"{"p":2}"#);
    let parked = tab
        .engine
        .view
        .outbox
        .iter()
        .map(Pending::mutation)
        .collect::<Vec<_>>();
    tab.drain();
    let written_at = parked[0].updated_at;
    tab.engine.sign_out(tab.now, false);
    let commands = tab.drain();
    assert_eq!(flushed(&commands), None, "offline: nothing to send");
    assert!(commands.contains(&Command::Persist(Persist::Wipe {
        scope: Some("u1".into()),
        keep_pending: true
    })));
    // Later, back online, as a guest who writes e2 anew, then signs in again.
    tab.now += 60_000;
    tab.engine.handle_online(tab.now, true);
    tab.write("e2", r#"{"guest":true}"#);
    tab.engine.sign_in(tab.now, "u1");
    let commands = tab.drain();
    assert!(commands.contains(&Command::Unpark {
        scope: Some("u1".into())
    }));
    let guests = commands.iter().find_map(|c| match c {
        Command::Send {
            id,
            request: Request::Push { mutations, .. },
            ..
        } => Some((*id, mutations[0].id)),
        _ => None,
    });
    let (push, guest_write) = guests.expect("the guest's write goes into the account");
    tab.unpark_own_scope(old_client.clone(), parked);
    assert!(dropped(&tab.drain(), "u1", &old_client));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"p":1}"#));
    assert_eq!(
        tab.value("e2").as_deref(),
        Some(r#"{"guest":true}"#),
        "a newer write stays"
    );
    let e1 = tab
        .engine
        .view
        .outbox
        .iter()
        .find(|p| p.key.key == "e1")
        .expect("queued");
    assert_eq!(e1.record.updated_at, written_at, "with its own time");
    // It goes with the next push.
    tab.reply(push, taken(guest_write, "4"));
    let mut sent = Vec::new();
    while sent.is_empty() {
        if tab.engine.poll_timeout().is_some() {
            tab.fire();
        }
        sent = tab
            .sends()
            .into_iter()
            .filter_map(|(_, r)| match r {
                Request::Push { mutations, .. } => Some(mutations),
                _ => None,
            })
            .flatten()
            .collect();
    }
    assert!(sent
        .iter()
        .any(|m| m.key == "e1" && m.updated_at == written_at));
}

#[test]
fn unparking_takes_another_client_ids_outbox_not_the_tabs_own() {
    let mut tab = Tab::leader();
    tab.drain();
    let own_id = tab.engine.client_id().to_owned();
    let good = Mutation {
        fields: None,
        id: 1,
        collection: "history".into(),
        key: "ok".into(),
        value: Some("{}".into()),
        updated_at: T0,
    };
    let mine = Mutation {
        fields: None,
        key: "mine".into(),
        ..good.clone()
    };
    tab.unpark_own_scope(own_id.clone(), vec![mine]);
    tab.unpark_own_scope("other".into(), vec![good]);
    let commands = tab.drain();
    assert!(dropped(&commands, "u1", "other"));
    assert!(!dropped(&commands, "u1", &own_id));
    assert_eq!(tab.engine.view.outbox.len(), 1);
    assert_eq!(tab.value("ok").as_deref(), Some("{}"));
    assert_eq!(
        tab.value("mine"),
        None,
        "the tab's own outbox is its queue already"
    );
}

#[test]
fn another_tab_signed_out_flushes_and_parks_this_tabs_writes() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.drain();
    tab.engine.handle_tab_message(
        tab.now,
        TabMessage {
            scope: Some("u1".into()),
            body: TabBody::SignedOut,
        },
    );
    let commands = tab.drain();
    assert!(flushed(&commands).is_some());
    assert!(commands.contains(&Command::Persist(Persist::Wipe {
        scope: Some("u1".into()),
        keep_pending: true
    })));
    assert_eq!(tab.engine.user(), None);
}

#[test]
fn the_session_ends_only_after_the_sign_out_flush_is_answered() {
    let mut tab = Tab::leader();
    tab.write("e1", "{}");
    tab.engine.sign_out(tab.now, false);
    tab.engine.end_session(tab.now, "tok-1".into());
    let commands = tab.drain();
    let (id, _) = flushed(&commands).expect("flushed");
    assert!(
        end_session_sent(&commands).is_none(),
        "not before the flush is answered: it needs the session"
    );
    tab.reply(id, taken(1, "3"));
    assert!(end_session_sent(&tab.drain()).is_some());
}

/// A write of `history` as a gone tab's stored outbox holds it, for [`Engine::unpark`].
fn stored_write(key: &str, updated_at: u64, value: &str) -> Mutation {
    Mutation {
        fields: None,
        id: 1,
        collection: "history".into(),
        key: key.into(),
        value: Some(value.into()),
        updated_at,
    }
}

#[test]
fn a_write_queued_as_the_guest_stays_over_a_parked_one_whatever_the_times() {
    let mut tab = Tab::new(4);
    // The guest writes, on a clock behind the one that stamped the parked write.
    tab.write("k", r#"{"guest":true}"#);
    tab.engine.sign_in(tab.now, "u1");
    tab.drain();
    let later = tab.now + 3_600_000;
    tab.unpark_own_scope(
        "gone".into(),
        vec![
            stored_write("k", later, r#"{"parked":true}"#),
            stored_write("j", T0, r#"{"old":1}"#),
        ],
    );
    assert_eq!(tab.value("k").as_deref(), Some(r#"{"guest":true}"#));
    // Both go, the parked one stamped just before the guest's: where the server merges per
    // field, its other fields count.
    let k: Vec<_> = (tab.engine.outbox().into_iter())
        .filter(|m| m.key == "k")
        .map(|m| (m.value.unwrap_or_default(), m.updated_at))
        .collect();
    assert_eq!(
        k,
        [
            (r#"{"guest":true}"#.to_owned(), T0),
            (r#"{"parked":true}"#.to_owned(), T0 - 1)
        ]
    );
    // Among parked writes of the same key the newer time wins, in either order.
    tab.unpark_own_scope(
        "other".into(),
        vec![stored_write("j", T0 + 5, r#"{"new":1}"#)],
    );
    tab.unpark_own_scope(
        "third".into(),
        vec![stored_write("j", T0 + 1, r#"{"mid":1}"#)],
    );
    assert_eq!(tab.value("j").as_deref(), Some(r#"{"new":1}"#));
}

#[test]
fn a_gone_guest_tab_s_writes_taken_over_from_the_guest_s_scope_keep_their_times() {
    // Two guest tabs on one clock: the other wrote k after this one, then closed.
    let mut tab = Tab::new(4);
    tab.write("k", r#"{"mine":true}"#);
    tab.engine.sign_in(tab.now, "u1");
    tab.drain();
    // Taken over from the guest's scope: the guest's, not parked.
    tab.engine.unpark(
        tab.now,
        None,
        "gone guest".into(),
        vec![
            stored_write("k", T0 + 5, r#"{"theirs":true}"#),
            stored_write("j", T0 + 2, r#"{"only":1}"#),
        ],
    );
    assert_eq!(tab.value("k").as_deref(), Some(r#"{"theirs":true}"#));
    assert_eq!(tab.value("j").as_deref(), Some(r#"{"only":1}"#));
    let sent: Vec<_> = (tab.engine.outbox().into_iter())
        .map(|m| (m.key, m.updated_at))
        .collect();
    assert_eq!(
        sent,
        [
            ("k".to_owned(), T0),
            ("k".to_owned(), T0 + 5),
            ("j".to_owned(), T0 + 2)
        ]
    );
}

#[test]
fn parked_writes_older_than_what_the_tab_shows_are_sent_all_the_same() {
    // Where the server merges per field, an older write still counts: a like, or a delete
    // that removes the fields set before it, is not undone by a newer write of the position.
    let mut tab = Tab::leader();
    tab.write_fields("k", r#"{"position":9}"#, &["position"]);
    let mine = tab.record("k");
    let parked =
        |id: u64, updated_at: u64, value: Option<&str>, fields: Option<Vec<String>>| Mutation {
            fields,
            id,
            collection: "history".into(),
            key: "k".into(),
            value: value.map(Into::into),
            updated_at,
        };
    let before = mine.updated_at - 1_000;
    tab.unpark_own_scope(
        "gone".into(),
        vec![
            parked(1, before, None, None),
            parked(2, before + 1, Some(r#"{"liked":true}"#), names(&["liked"])),
            parked(
                3,
                before + 2,
                Some(r#"{"position":3}"#),
                names(&["position"]),
            ),
        ],
    );
    // Shown: the newest, this tab's own write.
    assert_eq!(tab.record("k"), mine);
    let sent: Vec<_> = tab.pushed().into_iter().map(|(_, v, f)| (v, f)).collect();
    assert_eq!(
        sent,
        vec![
            (Some(r#"{"position":9}"#.to_owned()), names(&["position"])),
            (None, None),
            (Some(r#"{"liked":true}"#.to_owned()), names(&["liked"])),
            (Some(r#"{"position":3}"#.to_owned()), names(&["position"])),
        ]
    );
}

#[test]
fn the_leader_takes_a_closed_tabs_unsent_writes_at_its_next_pull_though_it_shows_them_as_that_tabs()
{
    let mut tab = Tab::leader();
    // Another tab of the device wrote, could not send it (offline), and was closed: this tab
    // heard its write and shows it as that tab's.
    let unsent = Mutation {
        fields: None,
        id: 1,
        collection: "history".into(),
        key: "k".into(),
        value: Some(r#"{"theirs":true}"#.into()),
        updated_at: tab.now + 10,
    };
    let heard = TabBody::Wrote {
        id: unsent.id,
        key: RecordKey::new("history", "k"),
        record: Record {
            value: unsent.value.clone(),
            updated_at: unsent.updated_at,
            client_id: "closed".into(),
        },
    };
    let scope = Some("u1".into());
    tab.engine
        .handle_tab_message(tab.now, TabMessage { scope, body: heard });
    tab.drain();
    assert_eq!(tab.value("k").as_deref(), Some(r#"{"theirs":true}"#));
    // The next poll asks for the stored outboxes of the tabs that are gone.
    tab.fire();
    let commands = tab.drain();
    let asked = Command::Unpark {
        scope: Some("u1".into()),
    };
    assert!(commands.contains(&asked), "{commands:?}");
    let pull = commands.iter().find_map(|c| match c {
        Command::Send {
            id,
            request: Request::Pull { .. },
            ..
        } => Some(*id),
        _ => None,
    });
    let id = pull.expect("a pull");
    tab.reply(id, Reply::Pulled(page("2", vec![], false)));
    tab.drain();
    // Handed the closed tab's outbox, it queues the write, drops the stored copy and sends
    // it, stamped as it was written.
    tab.unpark_own_scope("closed".into(), vec![unsent.clone()]);
    let commands = tab.drain();
    let dropped = Command::Persist(Persist::DropOutbox {
        scope: Some("u1".into()),
        client_id: "closed".into(),
    });
    assert!(commands.contains(&dropped), "{commands:?}");
    // The other tabs, which show the write as the closed tab's too, are told it is settled
    // there (that tab will never say so).
    let settled = Tab::broadcasts(&commands);
    assert!(
        settled.iter().any(|m| matches!(&m.body,
            TabBody::Acked { client_id, ack } if client_id == "closed" && *ack >= unsent.id)),
        "{settled:?}"
    );
    assert_eq!(tab.record("k").updated_at, unsent.updated_at);
    let push = commands
        .iter()
        .find_map(|c| match c {
            Command::Send {
                request: r @ Request::Push { .. },
                ..
            } => Some(r),
            _ => None,
        })
        .expect("sent at once");
    let sent: Vec<_> = pushed(push)
        .iter()
        .map(|m| (m.key.clone(), m.value.clone()))
        .collect();
    assert_eq!(sent, vec![("k".into(), unsent.value.clone())]);
}

#[test]
fn a_takeover_from_a_copy_that_lacks_a_write_heard_leaves_the_stored_copy_for_the_next_pull() {
    let mut tab = Tab::leader();
    // Another tab wrote twice and closed; this tab heard both writes, but its copy of the
    // storage (behind the other tab's by a few milliseconds) holds the first only.
    let write = |id: u64, key: &str| Mutation {
        fields: None,
        id,
        collection: "history".into(),
        key: key.into(),
        value: Some(format!(r#"{{"n":{id}}}"#)),
        updated_at: T0 + id,
    };
    let (first, last) = (write(1, "a"), write(2, "b"));
    for m in [&first, &last] {
        let heard = TabBody::Wrote {
            id: m.id,
            key: RecordKey::new("history", m.key.as_str()),
            record: Record {
                value: m.value.clone(),
                updated_at: m.updated_at,
                client_id: "closed".into(),
            },
        };
        let scope = Some("u1".into());
        (tab.engine).handle_tab_message(tab.now, TabMessage { scope, body: heard });
    }
    tab.drain();
    let dropped = Command::Persist(Persist::DropOutbox {
        scope: Some("u1".into()),
        client_id: "closed".into(),
    });
    // What it read is taken and sent; the stored copy stays (it holds the second write by
    // now, or soon).
    tab.unpark_own_scope("closed".into(), vec![first.clone()]);
    let commands = tab.drain();
    assert!(!commands.contains(&dropped), "{commands:?}");
    let sent = commands.iter().find_map(|c| match c {
        Command::Send {
            request: r @ Request::Push { .. },
            ..
        } => Some(pushed(r).iter().map(|m| m.key.clone()).collect::<Vec<_>>()),
        _ => None,
    });
    assert_eq!(sent, Some(vec!["a".to_owned()]));
    // The next pull's takeover reads the copy whole: both go (the first again, with its
    // time: the server keeps one), and the copy is dropped.
    tab.unpark_own_scope("closed".into(), vec![first.clone(), last.clone()]);
    let commands = tab.drain();
    assert!(commands.contains(&dropped), "{commands:?}");
    assert_eq!(tab.record("b").updated_at, last.updated_at);
    assert_eq!(tab.value("b"), last.value);
}

#[test]
fn a_write_after_unparking_is_newer_than_what_was_unparked() {
    let mut tab = Tab::leader();
    let ahead = tab.now + 3_600_000;
    let parked = Mutation {
        fields: None,
        id: 1,
        collection: "history".into(),
        key: "k".into(),
        value: Some(r#"{"parked":true}"#.into()),
        updated_at: ahead,
    };
    tab.unpark_own_scope("gone".into(), vec![parked]);
    tab.write("k", r#"{"mine":true}"#);
    assert_eq!(tab.value("k").as_deref(), Some(r#"{"mine":true}"#));
    let queued = tab
        .engine
        .view
        .outbox
        .iter()
        .rfind(|p| p.key.key == "k")
        .unwrap();
    assert!(
        queued.record.updated_at > ahead,
        "stamped above what the tab took"
    );
}

/// A reloaded page of user `u1`: its stored state (a record at version 3, cursor "3").
fn reloaded_page() -> Tab {
    let mut tab = Tab::new(5);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine
        .restore_record(change("old", Some("{}"), T0 - 10, "c", 3));
    tab.engine.restore_cursor(Some("3".into()), true);
    tab
}

/// The reloaded page opens and pulls at once from its stored cursor ("3").
fn pulls_at_once_as_without_a_snapshot(tab: &mut Tab) {
    open(tab);
    let (_, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("3".into())
        }
    );
}

/// The tab opens: online, visible, and granted the leader lock it asks for.
fn open(tab: &mut Tab) {
    tab.engine.handle_online(tab.now, true);
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
}

#[test]
fn a_snapshot_the_page_was_rendered_from_is_its_first_pull() {
    let mut tab = reloaded_page();
    let snapshot = page(
        "9",
        vec![change("ep1", Some(r#"{"p":5}"#), T0 - 5, "tv", 9)],
        false,
    );
    assert!(tab.engine.handle_snapshot(tab.now, "u1", snapshot));
    assert_eq!(tab.value("ep1").as_deref(), Some(r#"{"p":5}"#));
    assert_eq!(tab.value("old"), None, "a whole state drops what it lacks");
    assert_eq!(tab.engine.cursor(), Some("9"));
    open(&mut tab);
    assert_eq!(tab.sends(), vec![], "no pull at once: the snapshot is one");
    // The next pull comes an interval (give or take the jitter) later, from its cursor.
    let at = tab.fire();
    let (_, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("9".into())
        }
    );
    let interval = Config::default().interval_ms;
    assert!(at >= T0 + interval / 2, "pulled {} ms after", at - T0);
}

#[test]
fn a_snapshot_of_another_user_is_not_taken() {
    let mut tab = reloaded_page();
    let snapshot = page("9", vec![change("ep1", Some("{}"), T0 - 5, "tv", 9)], false);
    assert!(!tab.engine.handle_snapshot(tab.now, "u2", snapshot.clone()));
    assert_eq!(tab.value("ep1"), None);
    assert_eq!(tab.value("old").as_deref(), Some("{}"));
    // Nor by a guest: it says nothing of who is signed in.
    let mut guest = Tab::new(6);
    assert!(!guest.engine.handle_snapshot(guest.now, "u1", snapshot));
    assert_eq!(guest.value("ep1"), None);
    pulls_at_once_as_without_a_snapshot(&mut tab);
}

#[test]
fn a_snapshot_older_than_what_is_stored_is_not_taken() {
    let mut tab = reloaded_page();
    // Stored here, at cursor 3: "ep1" at a version above the snapshot's, and deleted "gone" (a
    // tombstone at version 4). Deleted long ago, "purged" left no trace: its tombstone was
    // compacted on the server and dropped here by the whole state that followed. The
    // snapshot (a page from a cache, rendered at version 2) has an older "ep1", and "gone"
    // and "purged" still alive. Taken, nothing could ever correct "purged": every later pull
    // continues from a cursor past its delete.
    tab.engine
        .restore_record(change("ep1", Some(r#"{"p":9}"#), T0 - 1, "c", 12));
    tab.engine
        .restore_record(change("gone", None, T0 - 2, "c", 4));
    let cached = page(
        "2",
        vec![
            change("ep1", Some(r#"{"p":1}"#), T0 - 50, "tv", 1),
            change("gone", Some("{}"), T0 - 50, "tv", 2),
            change("purged", Some("{}"), T0 - 60, "tv", 1),
        ],
        false,
    );
    assert!(!tab.engine.handle_snapshot(tab.now, "u1", cached));
    assert_eq!(
        tab.value("purged"),
        None,
        "a record deleted since stays gone"
    );
    assert_eq!(tab.value("ep1").as_deref(), Some(r#"{"p":9}"#));
    assert_eq!(tab.value("gone"), None, "a delete stays deleted");
    assert_eq!(tab.value("old").as_deref(), Some("{}"));
    assert_eq!(tab.engine.cursor(), Some("3"));
    assert!(
        tab.drain()
            .iter()
            .all(|c| !matches!(c, Command::Broadcast(_))),
        "nor is it told to the other tabs"
    );
    pulls_at_once_as_without_a_snapshot(&mut tab);
}

#[test]
fn a_snapshot_older_than_the_records_stored_is_not_taken_though_no_cursor_is_stored() {
    // No cursor stored (another tab receives a whole state, whose pages are stored as they
    // come, its cursor only at its end), but a record at version 82: the device got that far.
    // A page kept from long ago, rendered at version 3, still holds "purged", deleted since
    // and its tombstone compacted: taken, and ended as a whole state at 3, it would tell the
    // other tabs to keep it, and none of them would ever drop it.
    let mut tab = Tab::new(5);
    tab.engine.restore_user(Some("u1".into()));
    tab.engine
        .restore_record(change("ep1", Some(r#"{"p":9}"#), T0 - 1, "c", 82));
    tab.engine.restore_cursor(None, true);
    let cached = page(
        "3",
        vec![change("purged", Some("{}"), T0 - 60, "tv", 1)],
        false,
    );
    assert!(!tab.engine.handle_snapshot(tab.now, "u1", cached));
    assert_eq!(tab.value("purged"), None);
    assert_eq!(tab.engine.cursor(), None);
    // At or past what is stored, it is taken.
    let newer = page(
        "82",
        vec![change("ep1", Some(r#"{"p":9}"#), T0 - 1, "c", 82)],
        false,
    );
    assert!(tab.engine.handle_snapshot(tab.now, "u1", newer));
    assert_eq!(tab.engine.cursor(), Some("82"));
}

/// A page of a whole state in pages, as the server numbers its cursor (PROTOCOL.md, Paging):
/// the version the whole state began at, and the page's last version.
fn cursor_in_whole(began: u64, after: u64) -> String {
    ((1u64 << 62) + (1 << 61) + (began << 32) + after).to_string()
}

#[test]
fn a_snapshot_in_pages_is_not_taken_over_a_stored_cursor() {
    // The first page of a whole state (the user's state is more than a page), perhaps kept
    // from an older render: begun at version 2, below the stored cursor 3; at 3; or with a
    // cursor that does not say (a server before that form). Its cursor is not a version, so
    // it is not taken where a cursor is stored. "purged" was deleted since version 2 and its
    // tombstone compacted: taken, the page's own answers from cursor 3 would give up the
    // whole state and never drop it.
    for cursor in [
        cursor_in_whole(2, 1),
        cursor_in_whole(3, 1),
        ((1u64 << 62) + 1).to_string(),
    ] {
        let mut tab = reloaded_page();
        let first = page(
            &cursor,
            vec![change("purged", Some("{}"), T0 - 60, "tv", 1)],
            true,
        );
        assert!(
            !tab.engine.handle_snapshot(tab.now, "u1", first),
            "{cursor}"
        );
        assert_eq!(tab.value("purged"), None, "{cursor}");
        assert_eq!(tab.value("old").as_deref(), Some("{}"));
        pulls_at_once_as_without_a_snapshot(&mut tab);
    }
}

#[test]
fn a_snapshot_in_pages_is_taken_where_nothing_is_stored() {
    let mut tab = Tab::new(5);
    tab.engine.restore_user(Some("u1".into()));
    let first = page(
        &cursor_in_whole(3, 1),
        vec![change("ep1", Some("{}"), T0 - 10, "c", 1)],
        true,
    );
    assert!(tab.engine.handle_snapshot(tab.now, "u1", first));
    assert_eq!(tab.value("ep1").as_deref(), Some("{}"));
    assert!(tab.engine.receiving_whole_state());
}

#[test]
fn a_snapshot_at_the_stored_cursor_is_taken() {
    let mut tab = reloaded_page();
    let same = page("3", vec![change("old", Some("{}"), T0 - 10, "c", 3)], false);
    assert!(tab.engine.handle_snapshot(tab.now, "u1", same));
    assert_eq!(tab.value("old").as_deref(), Some("{}"));
    open(&mut tab);
    assert_eq!(tab.sends(), vec![], "no pull at once: the snapshot is one");
}

#[test]
fn a_leader_shown_again_pulls_at_once_even_just_after_its_last_pull() {
    // Another device wrote while the screen was off for a moment: showing the tab again is
    // the user asking for the current state, within the trigger gap or not.
    let mut tab = Tab::leader();
    tab.engine.handle_visibility(tab.now, false);
    tab.drain();
    tab.now += 500;
    tab.engine.handle_visibility(tab.now, true);
    tab.engine.handle_leadership(tab.now, true);
    let (_, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("1".into())
        }
    );
}

// ----- writes of some fields (collections merged per field) -----

fn names(fields: &[&str]) -> Option<Vec<String>> {
    Some(fields.iter().map(|f| f.to_string()).collect())
}

impl Tab {
    fn write_fields(&mut self, key: &str, value: &str, fields: &[&str]) {
        self.engine
            .write_fields(
                self.now,
                "history",
                key,
                Some(value.to_owned()),
                names(fields),
            )
            .expect("valid write");
    }

    /// The next push's values (none a delete) and the fields each sets.
    fn pushed_values(&mut self) -> Vec<(String, Option<Vec<String>>)> {
        let pushed = self.pushed().into_iter();
        pushed.map(|(_, v, f)| (v.expect("a value"), f)).collect()
    }

    /// The next push's mutations as `(key, value, fields)`.
    fn pushed(&mut self) -> Vec<(String, Option<String>, Option<Vec<String>>)> {
        // Writes taken over are sent at once, a write after a short wait.
        if self.engine.poll_timeout().is_some() {
            self.fire();
        }
        let (_, request) = self.only_send();
        pushed(&request)
            .iter()
            .map(|m| (m.key.clone(), m.value.clone(), m.fields.clone()))
            .collect()
    }
}

#[test]
fn a_write_of_some_fields_is_pushed_naming_them_and_shows_its_whole_value() {
    let mut tab = Tab::leader();
    tab.write_fields("e1", r#"{"position":5,"liked":true}"#, &["liked"]);
    // Here the app's value shows whole, at once.
    assert_eq!(
        tab.value("e1").as_deref(),
        Some(r#"{"position":5,"liked":true}"#)
    );
    assert_eq!(
        tab.pushed(),
        vec![(
            "e1".into(),
            Some(r#"{"position":5,"liked":true}"#.into()),
            names(&["liked"])
        )]
    );
    // A write of the whole record names none.
    let mut tab = Tab::leader();
    tab.write("e2", "{}");
    assert_eq!(tab.pushed(), vec![("e2".into(), Some("{}".into()), None)]);
}

#[test]
fn queued_writes_of_the_same_fields_coalesce_and_writes_of_others_go_beside_them() {
    let mut tab = Tab::leader();
    tab.write_fields("e1", r#"{"position":5}"#, &["position"]);
    tab.write_fields("e1", r#"{"position":6}"#, &["position"]);
    tab.write_fields("e1", r#"{"position":6,"liked":true}"#, &["liked"]);
    tab.write_fields("e1", r#"{"position":7,"liked":true}"#, &["position"]);
    tab.write("e1", r#"{"position":7,"liked":false}"#);
    assert_eq!(
        tab.value("e1").as_deref(),
        Some(r#"{"position":7,"liked":false}"#)
    );
    // In the order written, each set of fields once: its last write, after the others (a
    // later one wins each field it names on the server too).
    let pushed = tab.pushed();
    let sent: Vec<_> = pushed
        .iter()
        .map(|(_, v, f)| (v.as_deref().unwrap(), f.clone()))
        .collect();
    assert_eq!(
        sent,
        vec![
            (r#"{"position":6,"liked":true}"#, names(&["liked"])),
            (r#"{"position":7,"liked":true}"#, names(&["position"])),
            (r#"{"position":7,"liked":false}"#, None)
        ]
    );
}

/// A leader whose `history` keeps `completed` `true` once set (the server's
/// `--merge-fields history:completed`), declared to the engine.
fn sticky_leader() -> Tab {
    let config = Config {
        hot: Vec::new(),
        sticky: vec!["completed".into()],
        ..Config::default()
    };
    Tab::leader_with(Tab::with(config, 1))
}

#[test]
fn a_queued_sticky_true_is_not_replaced_by_a_write_that_does_not_set_it() {
    let mut tab = sticky_leader();
    tab.write_fields("e1", r#"{"completed":true}"#, &["completed"]);
    // Un-marked before the push: the un-mark shows, and goes after the `true`, which the
    // server keeps (sticky); without the `true` sent, the server would never hold it.
    tab.write_fields("e1", r#"{"completed":false}"#, &["completed"]);
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"completed":false}"#));
    // Marked and un-marked again: the one `true` and the last write, two writes at most.
    tab.write_fields("e1", r#"{"completed":true}"#, &["completed"]);
    tab.write_fields("e1", r#"{ "completed" : false }"#, &["completed"]);
    let sent = tab.pushed_values();
    assert_eq!(
        sent,
        vec![
            (r#"{"completed":true}"#.to_owned(), names(&["completed"])),
            (
                r#"{ "completed" : false }"#.to_owned(),
                names(&["completed"])
            ),
        ]
    );
}

#[test]
fn a_queued_sticky_true_outlives_a_delete_and_a_whole_record_without_it() {
    let mut tab = sticky_leader();
    // Written whole, then a whole record of other fields over it: both go.
    tab.write("e1", r#"{"position":5,"completed":true}"#);
    tab.write("e1", r#"{"position":6,"completed":false}"#);
    // A field write of other fields, holding the `true` it does not set: it is no sticky
    // write, so a later one of the same field takes its place as ever.
    tab.write_fields("e2", r#"{"position":1,"completed":true}"#, &["position"]);
    tab.write_fields("e2", r#"{"position":2,"completed":true}"#, &["position"]);
    // A `true` set, then the record deleted: the server keeps the `true` past the delete.
    tab.write_fields("e3", r#"{"completed":true}"#, &["completed"]);
    tab.engine
        .write(tab.now, "history", "e3", None)
        .expect("valid delete");
    // Another field is no sticky field.
    tab.write("e4", r#"{"liked":true}"#);
    tab.write("e4", r#"{"liked":false}"#);
    let sent: Vec<_> = tab.pushed().into_iter().map(|(k, v, _)| (k, v)).collect();
    let write = |k: &str, v: &str| (k.to_owned(), Some(v.to_owned()));
    assert_eq!(
        sent,
        vec![
            write("e1", r#"{"position":5,"completed":true}"#),
            write("e1", r#"{"position":6,"completed":false}"#),
            write("e2", r#"{"position":2,"completed":true}"#),
            write("e3", r#"{"completed":true}"#),
            ("e3".to_owned(), None),
            write("e4", r#"{"liked":false}"#),
        ]
    );
}

#[test]
fn a_whole_record_write_takes_a_queued_ones_place_only_when_it_sets_every_field_of_it() {
    // Where the server merges per field, a whole record sets the fields it holds: one that
    // lacks a field of the queued write must go beside it, or that field's write is lost.
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"position":5,"w":1}"#);
    tab.write("e1", r#"{"liked":true,"w":2}"#);
    // It holds every field of the one before (in another order, a string holding braces
    // and quotes, a nested object holding the other's field): it takes its place.
    tab.write(
        "e1",
        r#"{"w":3,"note":"a \"}{\" b","liked":false,"x":{"position":1}}"#,
    );
    // Keys are compared as written: one written another way goes beside, which is safe.
    tab.write("e1", r#"{"\u0077":4,"note":"","liked":true,"x":{}}"#);
    let sent = tab.pushed_values();
    assert_eq!(
        sent,
        vec![
            (r#"{"position":5,"w":1}"#.to_owned(), None),
            (
                r#"{"w":3,"note":"a \"}{\" b","liked":false,"x":{"position":1}}"#.to_owned(),
                None
            ),
            (
                r#"{"\u0077":4,"note":"","liked":true,"x":{}}"#.to_owned(),
                None
            ),
        ]
    );
}

#[test]
fn fields_written_in_turn_while_offline_queue_one_write_per_set_of_fields() {
    let mut tab = Tab::leader();
    tab.engine.handle_online(tab.now, false);
    for i in 0..50 {
        let value = format!(r#"{{"position":{i},"liked":{}}}"#, i % 3 == 0);
        let field = if i % 2 == 0 { "position" } else { "liked" };
        tab.write_fields("e1", &value, &[field]);
        tab.now += 1000;
    }
    assert_eq!(tab.engine.outbox().len(), 2, "{:?}", tab.engine.outbox());
    // Shown as last written.
    assert_eq!(
        tab.value("e1").as_deref(),
        Some(r#"{"position":49,"liked":false}"#)
    );
    tab.engine.handle_online(tab.now, true);
    tab.at(10_000);
    let push = tab
        .sends()
        .into_iter()
        .find(|(_, r)| matches!(r, Request::Push { .. }))
        .expect("a push");
    let sent: Vec<_> = pushed(&push.1)
        .iter()
        .map(|m| (m.value.as_deref().unwrap(), m.fields.clone()))
        .collect();
    assert_eq!(
        sent,
        vec![
            (r#"{"position":48,"liked":true}"#, names(&["position"])),
            (r#"{"position":49,"liked":false}"#, names(&["liked"]))
        ]
    );
}

#[test]
fn fields_that_break_the_rules_are_refused_and_nothing_is_queued() {
    let mut tab = Tab::leader();
    let long = "f".repeat(crate::limits::FIELD_CHARS_MAX + 1);
    let many: Vec<String> = (0..=crate::limits::FIELDS_MAX)
        .map(|n| format!("f{n}"))
        .collect();
    for (value, fields) in [
        (None, names(&["a"])),
        (Some("{}"), names(&[""])),
        (Some("{}"), names(&[&long])),
        (Some("{}"), names(&["a", "b", "a"])),
        (Some("{}"), Some(many)),
    ] {
        let refused = tab.engine.write_fields(
            tab.now,
            "history",
            "e1",
            value.map(str::to_owned),
            fields.clone(),
        );
        assert_eq!(refused, Err(WriteError::InvalidFields), "{fields:?}");
    }
    assert_eq!(tab.engine.outbox(), vec![]);
    assert_eq!(tab.value("e1"), None);
    // The most a write may name is taken.
    let most: Vec<String> = (0..crate::limits::FIELDS_MAX)
        .map(|n| format!("f{n}"))
        .collect();
    let taken = tab
        .engine
        .write_fields(tab.now, "history", "e1", Some("{}".into()), Some(most));
    assert_eq!(taken, Ok(()));
}

#[test]
fn fields_survive_a_reload_and_a_sign_out() {
    // A reloaded tab restores its outbox with the fields of each write.
    let mut tab = Tab::leader();
    tab.write_fields("e1", r#"{"liked":true}"#, &["liked"]);
    let stored = tab.engine.outbox();
    assert_eq!(stored[0].fields, names(&["liked"]));
    let mut reloaded = Tab::leader();
    reloaded
        .engine
        .restore_outbox("c1".into(), stored[0].id + 1, stored.clone());
    assert_eq!(reloaded.pushed()[0].2, names(&["liked"]));
    // Parked by a sign-out and taken back at the next sign-in.
    let mut other = Tab::leader();
    other.unpark_own_scope("gone".into(), stored);
    assert_eq!(other.pushed()[0].2, names(&["liked"]));
}

#[test]
fn a_write_after_a_queued_delete_goes_beside_it_so_the_delete_still_removes_other_fields() {
    let mut tab = Tab::leader();
    tab.write("e1", r#"{"position":5,"liked":true}"#);
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(id, taken(1, "2"));
    tab.drain();
    tab.engine.write(tab.now, "history", "e1", None).unwrap();
    tab.write("e1", r#"{"position":0}"#);
    // A delete after a write replaces it: the delete removes everything anyway.
    tab.write("e2", r#"{"position":1}"#);
    tab.engine.write(tab.now, "history", "e2", None).unwrap();
    let pushed: Vec<_> = tab.pushed().into_iter().map(|(k, v, _)| (k, v)).collect();
    assert_eq!(
        pushed,
        vec![
            ("e1".into(), None),
            ("e1".into(), Some(r#"{"position":0}"#.into())),
            ("e2".into(), None),
        ]
    );
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"position":0}"#));
}

#[test]
fn a_record_toggled_while_its_writes_wait_queues_at_most_a_delete_and_a_write() {
    // A favourite switched on and off while the push waits (or the server is slow): a delete
    // drops every write of the key not yet sent, so the outbox does not grow with each click
    // (each click stores and sends all of it).
    let mut tab = Tab::leader();
    let mut other = Tab::new(2);
    other.engine.sign_in(other.now, "u1");
    other.drain();
    tab.write("e1", r#"{"liked":true}"#);
    tab.fire();
    let (id, _) = tab.only_send();
    tab.reply(id, taken(1, "2"));
    tab.drain();
    for round in 0..50 {
        tab.engine.write(tab.now, "history", "e1", None).unwrap();
        tab.write("e1", r#"{"liked":true}"#);
        tab.write_fields("e1", r#"{"position":7}"#, &["position"]);
        if round == 49 {
            tab.engine.write(tab.now, "history", "e1", None).unwrap();
        }
        for message in Tab::broadcasts(&tab.drain()) {
            other.engine.handle_tab_message(other.now, message);
        }
    }
    // What is left is the last delete alone (the first write was sent and confirmed).
    let queued: Vec<_> = tab.engine.view.outbox.iter().map(|p| p.id).collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(tab.value("e1"), None);
    assert_eq!(other.value("e1"), None);
    let mutations = tab.pushed();
    assert_eq!(mutations, vec![("e1".into(), None, None)]);
}

#[test]
fn push_now_with_nothing_queued_pulls_unless_just_pulled() {
    let mut tab = Tab::leader();
    // Just pulled (the leader's first pull): that state is fresh.
    tab.engine.push_now(tab.now);
    assert_eq!(tab.sends(), vec![]);
    tab.now += tab.engine.config.trigger_gap_ms + 1;
    tab.engine.push_now(tab.now);
    let (id, request) = tab.only_send();
    assert_eq!(
        request,
        Request::Pull {
            last_sync: Some("1".into())
        }
    );
    // The answer is what the app goes on from: another device's position.
    let theirs = change("e1", Some(r#"{"position":600}"#), T0 + 5, "tv", 2);
    tab.reply(id, Reply::Pulled(page("2", vec![theirs], false)));
    assert_eq!(tab.value("e1").as_deref(), Some(r#"{"position":600}"#));

    // A tab that does not lead asks the leader, which pulls for the device.
    let mut other = Tab::new(9);
    other.engine.sign_in(other.now, "u1");
    other.engine.handle_leadership(other.now, false);
    other.drain();
    other.now += other.engine.config.trigger_gap_ms + 1;
    other.engine.push_now(other.now);
    let asked = Tab::broadcasts(&other.drain());
    assert!(
        asked.iter().any(|m| matches!(m.body, TabBody::PullWanted)),
        "{asked:?}"
    );
}

#[test]
fn the_leader_takes_over_the_guest_s_tabs_gone_from_the_guest_s_scope_and_moves_no_outbox() {
    let mut tab = Tab::leader();
    // At each pull: what a guest tab wrote to the guest's scope as the device signed in (its
    // tab closed before it followed, or the signing-in tab's copy of the storage did not show
    // it yet) joins the account, taken over from there. Its copy of the storage may still
    // show a guest outbox a live tab has filled since: moved, the older copy would land over
    // that tab's outbox in the account.
    for _ in 0..2 {
        tab.fire();
        let commands = tab.drain();
        let wipe = Command::Persist(Persist::Wipe {
            scope: None,
            keep_pending: true,
        });
        let guest = Command::Unpark { scope: None };
        let account = Command::Unpark {
            scope: Some("u1".into()),
        };
        for asked in [wipe, guest, account] {
            assert!(commands.contains(&asked), "{commands:?}");
        }
        let (id, _) = Tab::sends_of(&commands).remove(0);
        tab.reply(id, Reply::Pulled(page("1", vec![], false)));
        tab.drain();
    }
    // Handed a gone guest tab's outbox, it takes the writes, as the guest's (they keep their
    // times), and drops the outbox from the guest's scope.
    let written = Mutation {
        fields: None,
        id: 3,
        collection: "history".into(),
        key: "late".into(),
        value: Some(r#"{"on":true}"#.into()),
        updated_at: tab.now - 5,
    };
    tab.engine
        .unpark(tab.now, None, "gone guest".into(), vec![written.clone()]);
    let commands = tab.drain();
    let dropped = Command::Persist(Persist::DropOutbox {
        scope: None,
        client_id: "gone guest".into(),
    });
    assert!(commands.contains(&dropped), "{commands:?}");
    assert_eq!(tab.record("late").updated_at, written.updated_at);
    assert_eq!(tab.value("late").as_deref(), Some(r#"{"on":true}"#));
    // An outbox of another user's scope (signed out since it was asked for) is not taken.
    let theirs = Mutation {
        key: "theirs".into(),
        ..written
    };
    tab.engine
        .unpark(tab.now, Some("u2".into()), "gone".into(), vec![theirs]);
    assert!(tab.drain().is_empty());
    assert_eq!(tab.value("theirs"), None);
}
