//! End-to-end sync: native `Device`s (the core engine over real HTTP) against the real
//! `sinkron` binary on loopback, on a real SQLite file and on a real PostgreSQL database.
//!
//! Devices pull on a short interval here so a test waits for a state in milliseconds; every
//! wait is for a state (`Device::wait_for`), never for a time.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sinkron_client::{Device, Options, Snapshot, Storage};
use sinkron_core::Config;
use support::{Backend, Data};

const WAIT: Duration = Duration::from_secs(15);

/// A `sinkron serve` process on a loopback port.
struct Server {
    child: Child,
    url: String,
    addr: String,
    database: String,
}

impl Server {
    fn start(database: &str, addr: &str) -> Server {
        Server::start_with(database, addr, &[])
    }

    fn start_with(database: &str, addr: &str, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sinkron"))
            // The devices here poll every 150 ms; the server's own default asks for 30 s.
            .args(["serve", "--addr", addr, "--database", database])
            .args(["--poll-interval", "1"])
            .args(args)
            .env("SINKRON_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the sinkron binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server prints its address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let addr = url.trim_start_matches("http://").to_owned();
        Server {
            child,
            url,
            addr,
            database: database.to_owned(),
        }
    }

    /// Stops the process (SIGKILL: nothing unacknowledged may matter) and waits for it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port and database file.
    fn restart(&mut self) {
        self.kill();
        let addr = self.addr.clone();
        *self = Server::start(&self.database.clone(), &addr);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn options(seed: u64) -> Options {
    Options {
        config: Config {
            interval_ms: 150,
            trigger_gap_ms: 0,
            push_delay_ms: 5,
            push_wait_ms_max: 50,
            backoff_base_ms: 20,
            backoff_ms_max: 200,
            // The devices write `history` as fast as they can: no playback-paced pushes
            // (which would hold a write that missed the first push for 30 s).
            hot: Vec::new(),
            ..Config::default()
        },
        seed,
        ..Options::default()
    }
}

/// A server on new, empty data; the data goes when the returned handle does.
fn fresh(backend: Backend) -> (Data, Server) {
    let data = Data::new(backend);
    let server = Server::start(&data.url(), "127.0.0.1:0");
    (data, server)
}

fn synced(s: &Snapshot) -> bool {
    s.pending() == 0
        && s.status
            .as_ref()
            .is_some_and(|st| st.last_synced_at.is_some())
}

fn same_records(a: &Snapshot, b: &Snapshot) -> bool {
    a.records.iter().all(|(c, recs)| {
        let other = &b.records[c];
        recs.len() == other.len()
            && recs
                .iter()
                .all(|(k, r)| other.get(k).is_some_and(|o| o.value == r.value))
    })
}

async fn two_devices_of_one_user_converge(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let a = Device::start(&server.url, options(1));
    let b = Device::start(&server.url, options(2));
    a.register("alice", "correct horse").await.unwrap();
    b.login("alice", "correct horse").await.unwrap();

    a.write("favorites", "show-1", Some(json!({"on": true})))
        .await
        .unwrap();
    a.write("history", "ep-1", Some(json!({"position": 42})))
        .await
        .unwrap();
    b.write("likes", "ep-9", Some(json!({"like": 1})))
        .await
        .unwrap();

    let on_b = b
        .wait_for(WAIT, |s| {
            s.value("history", "ep-1") == Some(json!({"position": 42}))
        })
        .await
        .unwrap();
    assert_eq!(on_b.value("favorites", "show-1"), Some(json!({"on": true})));
    let on_a = a
        .wait_for(WAIT, |s| s.value("likes", "ep-9").is_some() && synced(s))
        .await
        .unwrap();
    let on_b = b.wait_for(WAIT, synced).await.unwrap();
    assert!(same_records(&on_a, &on_b) && same_records(&on_b, &on_a));

    // A delete reaches the other device as a tombstone.
    b.write("favorites", "show-1", None).await.unwrap();
    a.wait_for(WAIT, |s| s.value("favorites", "show-1").is_none())
        .await
        .unwrap();
}

async fn the_newest_write_wins_on_every_device(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let a = Device::start(&server.url, options(3));
    let b = Device::start(&server.url, options(4));
    a.register("bob_", "password1").await.unwrap();
    b.login("bob_", "password1").await.unwrap();
    a.wait_for(WAIT, synced).await.unwrap();
    b.wait_for(WAIT, synced).await.unwrap();

    a.write("settings", "quality", Some(json!({"v": "hd"})))
        .await
        .unwrap();
    a.wait_for(WAIT, |s| s.pending() == 0).await.unwrap();
    b.wait_for(WAIT, |s| s.value("settings", "quality").is_some())
        .await
        .unwrap();
    // B has seen A's write, so B's later write is newer, whatever the clocks say.
    b.write("settings", "quality", Some(json!({"v": "sd"})))
        .await
        .unwrap();
    for device in [&a, &b] {
        device
            .wait_for(WAIT, |s| {
                s.value("settings", "quality") == Some(json!({"v": "sd"}))
            })
            .await
            .unwrap();
    }
}

async fn a_device_with_a_clock_an_hour_fast_does_not_win_over_later_writes(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let fast = Device::start(
        &server.url,
        Options {
            clock_offset_ms: 3_600_000,
            ..options(5)
        },
    );
    let honest = Device::start(&server.url, options(6));
    fast.register("carol", "password1").await.unwrap();
    honest.login("carol", "password1").await.unwrap();
    fast.wait_for(WAIT, synced).await.unwrap();
    honest.wait_for(WAIT, synced).await.unwrap();

    // The honest device does not see the fast one's write before making its own, later one:
    // only the fast device's clock correction can let the later write win.
    honest.set_online(false);
    fast.write("history", "ep-1", Some(json!({"position": 1})))
        .await
        .unwrap();
    fast.wait_for(WAIT, |s| s.pending() == 0).await.unwrap();
    honest
        .write("history", "ep-1", Some(json!({"position": 2})))
        .await
        .unwrap();
    honest.set_online(true);
    for device in [&fast, &honest] {
        device
            .wait_for(WAIT, |s| {
                s.value("history", "ep-1") == Some(json!({"position": 2})) && synced(s)
            })
            .await
            .unwrap();
    }
}

async fn an_offline_device_catches_up_when_back_online(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let a = Device::start(&server.url, options(7));
    let b = Device::start(&server.url, options(8));
    a.register("dave", "password1").await.unwrap();
    b.login("dave", "password1").await.unwrap();
    b.wait_for(WAIT, synced).await.unwrap();
    b.set_online(false);
    b.wait_for(WAIT, |s| s.status.as_ref().is_some_and(|st| !st.online))
        .await
        .unwrap();
    let pulls_while_offline = b.snapshot().pulls_sent;

    for i in 0..5 {
        a.write("history", &format!("ep-{i}"), Some(json!({"position": i})))
            .await
            .unwrap();
    }
    b.write("likes", "ep-0", Some(json!({"like": 1})))
        .await
        .unwrap();
    a.wait_for(WAIT, |s| s.pending() == 0).await.unwrap();
    assert_eq!(
        b.snapshot().pulls_sent,
        pulls_while_offline,
        "offline means no requests"
    );
    assert_eq!(b.snapshot().pending(), 1);

    b.set_online(true);
    b.wait_for(WAIT, |s| {
        s.records["history"].len() == 5 && s.pending() == 0
    })
    .await
    .unwrap();
    a.wait_for(WAIT, |s| s.value("likes", "ep-0").is_some())
        .await
        .unwrap();
}

async fn fields_set_on_two_devices_both_survive_where_history_merges_per_field(backend: Backend) {
    let data = Data::new(backend);
    let server = Server::start_with(
        &data.url(),
        "127.0.0.1:0",
        &["--merge-fields", "history:completed"],
    );
    let a = Device::start(&server.url, options(40));
    let b = Device::start(&server.url, options(41));
    a.register("fiona", "password1").await.unwrap();
    b.login("fiona", "password1").await.unwrap();
    a.write(
        "history",
        "ep-1",
        Some(json!({"position": 10, "liked": false})),
    )
    .await
    .unwrap();
    b.wait_for(WAIT, |s| s.value("history", "ep-1").is_some() && synced(s))
        .await
        .unwrap();

    // The phone, offline, likes the episode; meanwhile the TV plays on.
    a.set_online(false);
    a.wait_for(WAIT, |s| s.status.as_ref().is_some_and(|st| !st.online))
        .await
        .unwrap();
    a.write_fields(
        "history",
        "ep-1",
        json!({"position": 10, "liked": true}),
        &["liked"],
    )
    .await
    .unwrap();
    b.write_fields(
        "history",
        "ep-1",
        json!({"position": 95, "liked": false}),
        &["position"],
    )
    .await
    .unwrap();
    b.wait_for(WAIT, |s| s.pending() == 0).await.unwrap();
    a.set_online(true);

    // The phone's write is the newer, yet the TV's position stays: each set its own field.
    let merged = json!({"position": 95, "liked": true});
    a.wait_for(WAIT, |s| {
        s.value("history", "ep-1") == Some(merged.clone()) && synced(s)
    })
    .await
    .unwrap();
    b.wait_for(WAIT, |s| s.value("history", "ep-1") == Some(merged.clone()))
        .await
        .unwrap();
    // A field the server refuses to take is refused here first, and nothing is queued.
    assert!(a
        .write_fields("history", "ep-1", json!({}), &["liked", "liked"])
        .await
        .is_err());
    assert_eq!(a.snapshot().pending(), 0);
}

async fn writes_made_while_the_server_was_down_are_delivered_once(backend: Backend) {
    let (_dir, mut server) = fresh(backend);
    let a = Device::start(&server.url, options(9));
    let session = a.register("erin", "password1").await.unwrap();
    a.wait_for(WAIT, synced).await.unwrap();

    server.kill();
    for i in 0..3 {
        a.write("favorites", &format!("show-{i}"), Some(json!({"on": true})))
            .await
            .unwrap();
    }
    a.wait_for(WAIT, |s| s.pushes_sent >= 2 && s.pending() == 3)
        .await
        .expect("the device keeps retrying while the server is down");

    server.restart();
    a.wait_for(WAIT, |s| s.pending() == 0).await.unwrap();

    // Exactly three changes were applied: the user's version is 3.
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/user/me", server.url))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["cursor"], json!("3"), "{body}");
    assert_eq!(body["changes"].as_array().unwrap().len(), 3);
}

async fn a_guest_makes_no_requests_and_its_data_joins_the_account_at_sign_in(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let guest = Device::start(&server.url, options(10));
    guest
        .write("favorites", "show-7", Some(json!({"on": true})))
        .await
        .unwrap();
    guest.focus();
    guest.set_visible(false);
    guest.set_visible(true);
    let snapshot = guest
        .wait_for(WAIT, |s| s.value("favorites", "show-7").is_some())
        .await
        .unwrap();
    assert_eq!(snapshot.pulls_sent + snapshot.pushes_sent, 0);

    guest.register("frank", "password1").await.unwrap();
    let other = Device::start(&server.url, options(11));
    other.login("frank", "password1").await.unwrap();
    other
        .wait_for(WAIT, |s| {
            s.value("favorites", "show-7") == Some(json!({"on": true}))
        })
        .await
        .unwrap();
}

async fn sign_out_wipes_the_device_and_the_next_user_sees_nothing(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let device = Device::start(&server.url, options(12));
    device.register("grace", "password1").await.unwrap();
    device
        .write("history", "secret-ep", Some(json!({"position": 9})))
        .await
        .unwrap();
    device.wait_for(WAIT, |s| s.pending() == 0).await.unwrap();
    device.sign_out();
    let wiped = device.wait_for(WAIT, |s| s.user.is_none()).await.unwrap();
    assert!(wiped.records.values().all(|r| r.is_empty()));

    device.register("heidi", "password1").await.unwrap();
    let next = device.wait_for(WAIT, synced).await.unwrap();
    assert!(next.records.values().all(|r| r.is_empty()), "{next:?}");
}

async fn a_sign_out_while_the_server_is_down_ends_the_session_once_it_is_back(backend: Backend) {
    let (_dir, mut server) = fresh(backend);
    let device = Device::start(&server.url, options(13));
    let session = device.register("ivan", "password1").await.unwrap();
    device.wait_for(WAIT, synced).await.unwrap();
    let status = |token: String, url: String| async move {
        reqwest::Client::new()
            .get(format!("{url}/api/user/me"))
            .bearer_auth(token)
            .send()
            .await
            .map(|r| r.status().as_u16())
    };

    server.kill();
    device.sign_out();
    let waiting = device
        .wait_for(WAIT, |s| s.user.is_none() && s.sessions_to_end == 1)
        .await
        .expect("signed out here, the session kept to end");
    assert!(waiting.records.values().all(|r| r.is_empty()));

    server.restart();
    device
        .wait_for(WAIT, |s| s.sessions_to_end == 0)
        .await
        .expect("ended once the server is back");
    assert_eq!(
        status(session.token.clone(), server.url.clone())
            .await
            .unwrap(),
        401,
        "the session's token no longer works"
    );
}

async fn writes_unsent_at_sign_out_go_at_the_next_sign_in_to_that_account_only(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let storage = Storage::default();
    let device = Device::start(
        &server.url,
        Options {
            storage: storage.clone(),
            ..options(14)
        },
    );
    let judy = device.register("judy", "correct horse").await.unwrap();
    device.wait_for(WAIT, synced).await.unwrap();
    let parked = || {
        let stored = storage.lock();
        let scope = stored.scopes.get(&Some(judy.user.id.clone()));
        scope.map_or(0, |s| {
            s.outboxes.values().map(|(_, m)| m.len()).sum::<usize>()
        })
    };
    device.set_online(false);
    favorite_offline(&device, "s21").await;
    device.sign_out();
    device.wait_for(WAIT, |s| s.user.is_none()).await.unwrap();
    assert_eq!(parked(), 1, "kept for judy");

    // Back online, another user on this device: judy's write is not theirs.
    device.set_online(true);
    device.register("kim", "correct horse").await.unwrap();
    device.wait_for(WAIT, synced).await.unwrap();
    assert_eq!(server_favorites(&server, "kim").await, Vec::<String>::new());
    assert_eq!(parked(), 1, "still kept for judy");

    // Judy signs in again (kim is signed out first): her write arrives, and no copy stays.
    device.login("judy", "correct horse").await.unwrap();
    device
        .wait_for(WAIT, |s| synced(s) && s.value("favorites", "s21").is_some())
        .await
        .unwrap();
    assert_eq!(server_favorites(&server, "judy").await, ["s21"]);
    assert_eq!(parked(), 0);
}

/// A write made while the device is offline, so it stays queued.
async fn favorite_offline(device: &Device, key: &str) {
    device
        .write("favorites", key, Some(json!({})))
        .await
        .unwrap();
    device.wait_for(WAIT, |s| s.pending() == 1).await.unwrap();
}

async fn eight_devices_push_concurrently_while_a_ninth_follows(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let reader = Device::start(&server.url, options(100));
    let session = reader.register("ivan", "password1").await.unwrap();
    let writers: Vec<Device> = (0..8)
        .map(|i| {
            let d = Device::start(&server.url, options(200 + i));
            d.sign_in(&session);
            d
        })
        .collect();
    let per_writer = 40;
    let mut tasks = Vec::new();
    for (w, device) in writers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                device
                    .write(
                        "history",
                        &format!("w{w}-e{i}"),
                        Some(json!({"position": i})),
                    )
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            device.wait_for(WAIT, |s| s.pending() == 0).await.unwrap();
            device
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = reader
        .wait_for(WAIT, |s| s.records["history"].len() == 8 * per_writer)
        .await
        .unwrap();
    for w in 0..8 {
        for i in 0..per_writer {
            assert_eq!(
                seen.value("history", &format!("w{w}-e{i}")),
                Some(json!({"position": i}))
            );
        }
    }
}

/// The server's favourites of a user, read with a fresh device's pull.
async fn server_favorites(server: &Server, username: &str) -> Vec<String> {
    let reader = Device::start(&server.url, options(90));
    reader.login(username, "correct horse").await.unwrap();
    let state = reader.wait_for(WAIT, synced).await.unwrap();
    reader.stop();
    let mut keys: Vec<String> = state.records["favorites"].keys().cloned().collect();
    keys.sort();
    keys
}

/// A device that writes `key` and waits until the server has acknowledged it.
async fn favorite(device: &Device, key: &str) {
    device
        .write("favorites", key, Some(json!({})))
        .await
        .unwrap();
    device
        .wait_for(WAIT, |s| {
            s.pending() == 0 && s.value("favorites", key).is_some()
        })
        .await
        .unwrap();
}

/// A device on `storage` that signs up as `username`, has two favourites acknowledged and is
/// stopped (the app is killed); returns its client id.
async fn two_acknowledged_then_killed(
    server: &Server,
    storage: &Storage,
    seed: u64,
    username: &str,
) -> String {
    let first = Device::start(
        &server.url,
        Options {
            storage: storage.clone(),
            ..options(seed)
        },
    );
    first.register(username, "correct horse").await.unwrap();
    favorite(&first, "s01").await;
    favorite(&first, "s02").await;
    let client = first.snapshot().client_id;
    first.stop();
    client
}

async fn a_restarted_device_keeps_its_client_id_and_numbering(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let storage = Storage::default();
    let client = two_acknowledged_then_killed(&server, &storage, 30, "dana").await;

    // The app is opened again on its storage: signed in, same client id, ids above 2.
    let again = Device::start(
        &server.url,
        Options {
            storage: storage.clone(),
            ..options(31)
        },
    );
    favorite(&again, "s03").await;
    assert_eq!(again.snapshot().client_id, client);
    assert_eq!(again.snapshot().pushes_sent, 1, "no refused push");
    assert_eq!(
        server_favorites(&server, "dana").await,
        ["s01", "s02", "s03"]
    );
}

async fn a_device_that_lost_its_numbering_still_delivers_every_write(backend: Backend) {
    let (_dir, server) = fresh(backend);
    let storage = Storage::default();
    two_acknowledged_then_killed(&server, &storage, 32, "erin").await;
    // The numbering did not reach the disk: the next run starts again at id 1.
    for scope in storage.lock().scopes.values_mut() {
        for (next_id, _) in scope.outboxes.values_mut() {
            *next_id = 1;
        }
    }

    let again = Device::start(
        &server.url,
        Options {
            storage,
            ..options(33)
        },
    );
    // Id 1 and 2 are taken on the server: the push is refused as reusing them, the engine
    // renumbers, and the writes arrive instead of being skipped as retries.
    again
        .write("favorites", "s03", Some(json!({})))
        .await
        .unwrap();
    again
        .write("favorites", "s04", Some(json!({})))
        .await
        .unwrap();
    let done = again.wait_for(WAIT, synced).await.unwrap();
    assert!(done.pushes_sent >= 2, "refused once, then sent again");
    assert_eq!(
        server_favorites(&server, "erin").await,
        ["s01", "s02", "s03", "s04"]
    );
}

on_every_backend!(
    a_restarted_device_keeps_its_client_id_and_numbering,
    a_device_that_lost_its_numbering_still_delivers_every_write,
    two_devices_of_one_user_converge,
    the_newest_write_wins_on_every_device,
    a_device_with_a_clock_an_hour_fast_does_not_win_over_later_writes,
    an_offline_device_catches_up_when_back_online,
    writes_made_while_the_server_was_down_are_delivered_once,
    a_guest_makes_no_requests_and_its_data_joins_the_account_at_sign_in,
    sign_out_wipes_the_device_and_the_next_user_sees_nothing,
    a_sign_out_while_the_server_is_down_ends_the_session_once_it_is_back,
    writes_unsent_at_sign_out_go_at_the_next_sign_in_to_that_account_only,
    eight_devices_push_concurrently_while_a_ninth_follows,
    fields_set_on_two_devices_both_survive_where_history_merges_per_field,
);
