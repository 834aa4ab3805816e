//! The behaviour every [`Store`] backend must show, as one suite each backend runs against a
//! fresh, empty store (SQLite and PostgreSQL each call [`run`]).
//!
//! It checks the trait's contract only, never SQL or a backend's internals.

use sinkron_core::Mutation;

use super::{PushBatch, Quota, Store, StoreError};

/// A write of `likes/key` (shared with the backends' own store tests).
pub(crate) fn m(id: u64, key: &str, value: Option<&str>, updated_at: u64) -> Mutation {
    Mutation {
        fields: None,
        id,
        collection: "likes".into(),
        key: key.into(),
        value: value.map(str::to_owned),
        updated_at,
    }
}

/// A push of `mutations` by `client_id` with no limits (shared with the backends' own store
/// tests).
pub(crate) fn batch<'a>(
    client_id: &'a str,
    mutations: &'a [Mutation],
    since: Option<u64>,
) -> PushBatch<'a> {
    PushBatch {
        client_id,
        mutations,
        now_ms: 1_000,
        updated_at_max: 61_000,
        since,
        limit: 100.into(),
        quota: Quota::UNLIMITED,
        caps: &[],
        merges: &[],
    }
}

/// A new user `name` holding `writes`, pushed by `client`.
async fn user_holding(
    store: &dyn Store,
    name: &str,
    client: &str,
    writes: &[Mutation],
) -> super::UserId {
    let id = store.create_user(name, "phc", 1).await.expect("create");
    store
        .push(id, batch(client, writes, None))
        .await
        .expect("push");
    id
}

/// Runs every check in order on one fresh store.
pub async fn run(store: &dyn Store) {
    accounts_and_tokens(store).await;
    sessions_record_their_last_use_and_end_unused(store).await;
    a_deleted_accounts_sessions_answer_once_with_nothing(store).await;
    shared_attempt_counts_follow_the_window_rule(store).await;
    site_users_are_made_once_per_subject(store).await;
    versions_acks_and_merge(store).await;
    a_retry_is_not_applied_again_when_its_stamp_was_clamped(store).await;
    writes_of_one_key_clamped_in_one_push_keep_their_order(store).await;
    compaction_raises_the_horizon(store).await;
    a_whole_state_in_pages_ends_though_its_pages_end_below_the_horizon(store).await;
    a_whole_state_begun_before_the_horizon_starts_again(store).await;
    client_ids_compare_bytewise_and_keys_keep_every_character(store).await;
    concurrent_pushes_take_distinct_versions(store).await;
    the_quota_refuses_growth_past_it_whole_and_always_lets_room_be_made(store).await;
    a_capped_collection_keeps_its_newest_records(store).await;
    a_lowered_cap_evicts_the_oldest_by_stamp_then_client_and_key_bytewise(store).await;
    a_collection_merged_per_field_keeps_each_fields_newest_write(store).await;
}

async fn a_collection_merged_per_field_keeps_each_fields_newest_write(store: &dyn Store) {
    let id = store.create_user("fields", "phc", 1).await.expect("create");
    let merges = &[super::FieldMerge {
        collection: "likes".into(),
        policy: sinkron_core::merge::Policy {
            sticky: vec!["completed".into()],
        },
    }];
    let write = |id: u64, key: &str, value: Option<&str>, at: u64, fields: Option<&[&str]>| {
        super::Mutation {
            fields: fields.map(|f| f.iter().map(|s| s.to_string()).collect()),
            ..m(id, key, value, at)
        }
    };
    let push = |client: &'static str, mutations: Vec<super::Mutation>| async move {
        let batch = PushBatch {
            merges,
            ..batch(client, &mutations, None)
        };
        store.push(id, batch).await.expect("push")
    };
    let record = |key: &'static str| async move {
        let page = store.pull(id, None, 100.into()).await.expect("pull");
        let change = page.changes.into_iter().find(|c| c.key == key);
        change.map(|c| (c.value, c.updated_at, c.client_id))
    };
    let value = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("json");
    // The TV writes the whole record; the phone, later, its like over a stale copy; the TV,
    // later still, its position over its own copy: each names what it changed.
    push(
        "tv",
        vec![write(
            1,
            "e1",
            Some(r#"{"position":10,"liked":false}"#),
            10,
            None,
        )],
    )
    .await;
    let like = push(
        "phone",
        vec![write(
            1,
            "e1",
            Some(r#"{"position":10,"liked":true}"#),
            20,
            Some(&["liked"]),
        )],
    )
    .await;
    assert_eq!((like.applied, like.ack), (1, 1));
    push(
        "tv",
        vec![write(
            2,
            "e1",
            Some(r#"{"position":300,"liked":false}"#),
            30,
            Some(&["position"]),
        )],
    )
    .await;
    let (stored, updated_at, client_id) = record("e1").await.expect("stored");
    assert_eq!(
        value(stored.as_deref().expect("live")),
        value(r#"{"position":300,"liked":true}"#)
    );
    assert_eq!(
        (updated_at, client_id.as_str()),
        (30, "tv"),
        "the newest write's stamp"
    );
    // A stale resume (stamped with the older copy's time) changes nothing: taken, not stored.
    let before = store.pull(id, None, 100.into()).await.expect("pull").cursor;
    let resume = push(
        "phone",
        vec![write(
            2,
            "e1",
            Some(r#"{"position":12}"#),
            25,
            Some(&["position"]),
        )],
    )
    .await;
    assert_eq!((resume.applied, resume.ack, resume.version), (0, 2, before));
    // Sticky: once true, an older device's later `false` does not undo it, nor a delete.
    push(
        "tv",
        vec![write(
            3,
            "e1",
            Some(r#"{"completed":true}"#),
            40,
            Some(&["completed"]),
        )],
    )
    .await;
    push(
        "old",
        vec![write(
            1,
            "e1",
            Some(r#"{"position":5,"completed":false}"#),
            50,
            None,
        )],
    )
    .await;
    let (stored, ..) = record("e1").await.expect("stored");
    assert_eq!(
        value(stored.as_deref().expect("live")),
        value(r#"{"position":5,"liked":true,"completed":true}"#)
    );
    push("old", vec![write(2, "e1", None, 60, None)]).await;
    assert_eq!(
        record("e1").await.map(|r| (r.0, r.1)),
        Some((None, 60)),
        "a tombstone"
    );
    push(
        "tv",
        vec![write(4, "e1", Some(r#"{"position":1}"#), 70, None)],
    )
    .await;
    let (stored, ..) = record("e1").await.expect("stored");
    assert_eq!(
        value(stored.as_deref().expect("live")),
        value(r#"{"position":1,"completed":true}"#)
    );
    // A record stored whole before its collection was merged per field: every field keeps
    // the record's stamp.
    store
        .push(
            id,
            batch(
                "tv",
                &[write(5, "e2", Some(r#"{"a":1,"b":2}"#), 80, None)],
                None,
            ),
        )
        .await
        .expect("push");
    push(
        "phone",
        vec![write(3, "e2", Some(r#"{"a":0,"b":3}"#), 75, Some(&["b"]))],
    )
    .await;
    push(
        "phone",
        vec![write(4, "e2", Some(r#"{"a":0,"b":3}"#), 85, Some(&["b"]))],
    )
    .await;
    let (stored, ..) = record("e2").await.expect("stored");
    assert_eq!(
        value(stored.as_deref().expect("live")),
        value(r#"{"a":1,"b":3}"#)
    );
    // Growing past a value's most bytes, merged, is refused: nothing of the batch is taken.
    let big = format!(
        r#"{{"c":"{}"}}"#,
        "x".repeat(sinkron_core::limits::VALUE_BYTES_MAX - 10)
    );
    let refused = store
        .push(
            id,
            PushBatch {
                merges,
                ..batch(
                    "phone",
                    &[write(5, "e2", Some(&big), 90, Some(&["c"]))],
                    None,
                )
            },
        )
        .await;
    assert!(
        matches!(&refused, Err(StoreError::MergedTooLarge { key, .. }) if key == "e2"),
        "{refused:?}"
    );
    let (stored, ..) = record("e2").await.expect("stored");
    assert_eq!(
        value(stored.as_deref().expect("live")),
        value(r#"{"a":1,"b":3}"#)
    );
    // Capped too: an evicted record is a delete at its own stamp, field by field as whole.
    let caps = &[super::Cap {
        collection: "likes".into(),
        max: 2,
    }];
    let capped = |client: &'static str, mutations: Vec<super::Mutation>| async move {
        let batch = PushBatch {
            merges,
            caps,
            ..batch(client, &mutations, None)
        };
        store.push(id, batch).await.expect("push")
    };
    // e1 (70) is the oldest of three live records: evicted.
    capped("tv", vec![write(6, "e3", Some(r#"{"a":1}"#), 100, None)]).await;
    assert_eq!(record("e1").await.map(|r| (r.0, r.1)), Some((None, 70)));
    // A write of a field older than the eviction stays gone; a newer one brings the record
    // back with what it sets (the eviction forgot the rest, its sticky `true` included).
    let b = |id, at, v: &str| vec![write(id, "e1", Some(v), at, Some(&["b"]))];
    capped("phone", b(6, 69, r#"{"b":4}"#)).await;
    assert_eq!(record("e1").await.map(|r| r.0), Some(None));
    capped("phone", b(7, 110, r#"{"b":5}"#)).await;
    let (stored, ..) = record("e1").await.expect("stored");
    assert_eq!(value(stored.as_deref().expect("live")), value(r#"{"b":5}"#));
}

async fn a_lowered_cap_evicts_the_oldest_by_stamp_then_client_and_key_bytewise(store: &dyn Store) {
    let id = store
        .create_user("lowered", "phc", 1)
        .await
        .expect("create");
    let push = |client: &'static str, max: u64, mutations: Vec<super::Mutation>| async move {
        let caps = &[super::Cap {
            collection: "likes".into(),
            max,
        }];
        let batch = PushBatch {
            caps,
            ..batch(client, &mutations, None)
        };
        store.push(id, batch).await.expect("push")
    };
    // Six live records under a cap of 10, four of them stamped alike by two clients ("B" is
    // below "a" bytewise, as "K" is below "k"), and a deleted one.
    push(
        "a",
        10,
        vec![m(1, "k1", Some("{}"), 10), m(2, "K2", Some("{}"), 10)],
    )
    .await;
    push(
        "B",
        10,
        vec![m(1, "z3", Some("{}"), 10), m(2, "old", Some("{}"), 5)],
    )
    .await;
    push(
        "a",
        10,
        vec![
            m(3, "k4", Some("{}"), 10),
            m(4, "gone", Some("{}"), 1),
            m(5, "gone", None, 2),
            m(6, "k5", Some("{}"), 40),
        ],
    )
    .await;
    let live = || live_keys(store, id);
    let since = |version: u64| async move {
        store
            .pull(id, Some(version), 100.into())
            .await
            .expect("pull")
            .changes
            .into_iter()
            .map(|c| (c.key, c.updated_at, c.client_id))
            .collect::<Vec<_>>()
    };
    let as_ = |k: &str, at: u64, c: &str| (k.to_owned(), at, c.to_owned());
    // The cap lowered to 3, then a new record: seven live, four evicted, oldest first, the
    // last of them cutting through the records stamped alike: old (5), z3 (10, "B"), then K2
    // and k1 (10, "a", by key); k4 stays.
    let outcome = push("a", 3, vec![m(7, "new", Some("{}"), 50)]).await;
    assert_eq!(live().await, ["k4", "k5", "new"]);
    assert_eq!(
        since(outcome.version - 4).await,
        [
            as_("old", 5, "B"),
            as_("z3", 10, "B"),
            as_("K2", 10, "a"),
            as_("k1", 10, "a"),
        ],
        "the evictions take the versions after the write, oldest first"
    );
    // A new record and a rewrite of the oldest: the rewritten one is not evicted by its old
    // stamp; the oldest after the writes (k5) is.
    let outcome = push(
        "a",
        3,
        vec![m(8, "new2", Some("{}"), 70), m(9, "k4", Some("{}"), 80)],
    )
    .await;
    assert_eq!(live().await, ["k4", "new", "new2"]);
    assert_eq!(since(outcome.version - 1).await, [as_("k5", 40, "a")]);
}

/// The first half of a backend's own test of a wrong collection count: a user `name` with
/// three `likes` (k1, k2, k3, oldest first); the test then sets the count wrong.
pub(crate) async fn three_likes(store: &dyn Store, name: &str) -> super::UserId {
    let likes = [
        m(1, "k1", Some("{}"), 10),
        m(2, "k2", Some("{}"), 20),
        m(3, "k3", Some("{}"), 30),
    ];
    user_holding(store, name, "c", &likes).await
}

/// User `id`'s collection counts gone wrong (SQL for either backend): not kept by a node
/// older than 0012 (too low), too high and not adding up to the user's records, too high
/// and adding up.
pub(crate) fn miscounts(id: super::UserId) -> [String; 3] {
    let high = format!("UPDATE collection_counts SET live = 50 WHERE user_id = {id}");
    [
        format!("DELETE FROM collection_counts WHERE user_id = {id}"),
        high.clone(),
        format!("{high}; UPDATE users SET records = 50 WHERE id = {id}"),
    ]
}

/// The second half: a new like past a cap of 3 evicts only the oldest, whatever the count
/// said; the test then checks the count is right again.
pub(crate) async fn a_fourth_like_evicts_only_the_oldest(store: &dyn Store, id: super::UserId) {
    let caps = &[super::Cap {
        collection: "likes".into(),
        max: 3,
    }];
    let like = [m(4, "k4", Some("{}"), 40)];
    let batch = PushBatch {
        caps,
        ..batch("c", &like, None)
    };
    store.push(id, batch).await.expect("push");
    assert_eq!(live_keys(store, id).await, ["k2", "k3", "k4"]);
}

/// The keys of the user's records that hold a value, sorted.
async fn live_keys(store: &dyn Store, id: super::UserId) -> Vec<String> {
    let mut keys: Vec<String> = store
        .pull(id, None, 100.into())
        .await
        .expect("pull")
        .changes
        .into_iter()
        .filter(|c| c.value.is_some())
        .map(|c| c.key)
        .collect();
    keys.sort();
    keys
}

async fn a_capped_collection_keeps_its_newest_records(store: &dyn Store) {
    let id = store.create_user("capped", "phc", 1).await.expect("create");
    let caps = &[super::Cap {
        collection: "likes".into(),
        max: 2,
    }];
    let push = |mutations: Vec<super::Mutation>| async move {
        let batch = PushBatch {
            caps,
            ..batch("c", &mutations, None)
        };
        store.push(id, batch).await.expect("push")
    };
    let live = || async {
        let page = store.pull(id, None, 100.into()).await.expect("pull");
        let mut keys: Vec<String> = page
            .changes
            .iter()
            .filter(|c| c.value.is_some())
            .map(|c| c.key.clone())
            .collect();
        keys.sort();
        (keys, page)
    };
    // Three plays, one push: the oldest is evicted at once, as a tombstone with its stamp.
    push(vec![
        m(1, "e1", Some("{}"), 10),
        m(2, "e2", Some("{}"), 20),
        m(3, "e3", Some("{}"), 30),
    ])
    .await;
    let (keys, page) = live().await;
    assert_eq!(keys, ["e2", "e3"]);
    let evicted = page
        .changes
        .iter()
        .find(|c| c.key == "e1")
        .expect("a tombstone");
    assert_eq!((evicted.value.as_deref(), evicted.updated_at), (None, 10));
    assert_eq!(
        page.cursor, 4,
        "every write and the eviction took a version"
    );
    // Played again later, e1 comes back and the oldest left (e2) goes.
    push(vec![m(4, "e1", Some(r#"{"again":true}"#), 40)]).await;
    assert_eq!(live().await.0, ["e1", "e3"]);
    // An old write of a record (stamped before the others) is evicted at once.
    push(vec![m(5, "e0", Some("{}"), 5)]).await;
    assert_eq!(live().await.0, ["e1", "e3"]);
    // Other collections are not capped.
    let other = [super::Mutation {
        fields: None,
        collection: "favorites".into(),
        ..m(6, "f", Some("{}"), 50)
    }];
    store
        .push(
            id,
            PushBatch {
                caps,
                ..batch("c", &other, None)
            },
        )
        .await
        .expect("push");
    assert_eq!(
        store
            .pull(id, Some(8), 100.into())
            .await
            .expect("pull")
            .changes
            .len(),
        1
    );
}

async fn the_quota_refuses_growth_past_it_whole_and_always_lets_room_be_made(store: &dyn Store) {
    let id = store.create_user("quota", "phc", 1).await.expect("create");
    let quota = Quota {
        records: 3,
        bytes: 40,
    };
    let push = |mutations: Vec<super::Mutation>| async move {
        let batch = PushBatch {
            quota,
            ..batch("q", &mutations, None)
        };
        store.push(id, batch).await.map(|o| o.version)
    };
    // Three records of 10 bytes each: 3 records, 30 bytes.
    let ten = Some(r#"{"a":"12"}"#);
    push(vec![
        m(1, "a", ten, 10),
        m(2, "b", ten, 10),
        m(3, "c", ten, 10),
    ])
    .await
    .expect("within the quota");
    // A fourth record is past the records quota: refused whole, the batch's other write too.
    let refused = push(vec![m(4, "a", Some("{}"), 20), m(5, "d", ten, 20)]).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::QuotaExceeded {
                what: "records",
                limit: 3
            })
        ),
        "{refused:?}"
    );
    // Growing a value past the bytes quota is refused; rewriting one the same size is not.
    let big = Some(r#"{"a":"123456789012345678901"}"#);
    assert!(matches!(
        push(vec![m(4, "a", big, 30)]).await,
        Err(StoreError::QuotaExceeded {
            what: "bytes",
            limit: 40
        })
    ));
    let same = Some(r#"{"a":"34"}"#);
    let version = push(vec![m(4, "a", same, 30)]).await.expect("no growth");
    // A tombstone frees a record, and the freed room can be taken again.
    push(vec![m(5, "b", None, 40)]).await.expect("a delete");
    push(vec![m(6, "d", ten, 40)]).await.expect("room again");
    // Nothing of the refused batches was stored.
    let page = store.pull(id, None, 100.into()).await.expect("pull");
    let live: Vec<(&str, Option<&str>)> = page
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.value.as_deref()))
        .collect();
    assert_eq!(
        live,
        [("c", ten), ("a", same), ("b", None), ("d", ten)],
        "after version {version}"
    );
    // Above a lowered quota, deleting still works and growing does not.
    let lowered = Quota {
        records: 1,
        bytes: 40,
    };
    let delete = [m(7, "c", None, 50)];
    store
        .push(
            id,
            PushBatch {
                quota: lowered,
                ..batch("q", &delete, None)
            },
        )
        .await
        .expect("a delete above the quota");
    let grow = [m(8, "e", Some("{}"), 50)];
    assert!(matches!(
        store
            .push(
                id,
                PushBatch {
                    quota: lowered,
                    ..batch("q", &grow, None)
                }
            )
            .await,
        Err(StoreError::QuotaExceeded {
            what: "records",
            ..
        })
    ));
}

async fn site_users_are_made_once_per_subject(store: &dyn Store) {
    let first = store.subject_session("site|42", 5).await.expect("created");
    assert_eq!((&*first.username, first.version), ("site|42", 0));
    let again = store.subject_session("site|42", 6).await.expect("found");
    assert_eq!(again.user_id, first.user_id);
    let other = store.subject_session("site|43", 7).await.expect("created");
    assert_ne!(other.user_id, first.user_id);
    // A push to the site's user raises the version the next lookup reports.
    let mutations = [m(1, "e1", Some("{}"), 10)];
    store
        .push(first.user_id, batch("c", &mutations, None))
        .await
        .expect("push");
    let after = store.subject_session("site|42", 8).await.expect("found");
    assert_eq!(after.version, 1);
    // The built-in username space is untouched: "site|42" can still be registered.
    assert!(store
        .find_user_by_name("site|42")
        .await
        .expect("find")
        .is_none());
}

async fn accounts_and_tokens(store: &dyn Store) {
    let id = store.create_user("ann", "phc", 1).await.expect("create");
    assert!(matches!(
        store.create_user("ann", "phc2", 2).await,
        Err(StoreError::Conflict)
    ));
    let account = store
        .find_user_by_name("ann")
        .await
        .expect("find")
        .expect("exists");
    assert_eq!((account.id, account.password_hash.as_str()), (id, "phc"));
    assert!(store
        .find_user_by_name("nobody")
        .await
        .expect("find")
        .is_none());

    let token = [7u8; 32];
    assert!(store.session(&token).await.expect("session").is_none());
    store.create_token(id, &token, 1).await.expect("token");
    let session = store
        .session(&token)
        .await
        .expect("session")
        .expect("valid");
    assert_eq!(
        (session.user_id, &*session.username, session.version),
        (id, "ann", 0)
    );
    store.revoke_token(&token).await.expect("revoke");
    assert!(store.session(&token).await.expect("session").is_none());
}

async fn sessions_record_their_last_use_and_end_unused(store: &dyn Store) {
    let id = store.create_user("idle", "phc", 1).await.expect("create");
    let (old, used) = ([8u8; 32], [9u8; 32]);
    store.create_token(id, &old, 100).await.expect("token");
    store.create_token(id, &used, 100).await.expect("token");
    let last_used = |s: Option<super::SessionInfo>| s.expect("valid").last_used_ms;
    assert_eq!(last_used(store.session(&used).await.expect("session")), 100);
    store.touch_token(&used, 5_000).await.expect("touch");
    // Read back both through whatever the backend keeps in memory and from storage.
    assert_eq!(
        last_used(store.session(&used).await.expect("session")),
        5_000
    );
    assert_eq!(last_used(store.session(&old).await.expect("session")), 100);
    assert_eq!(store.purge_expired(1_000, 0, 0).await.expect("purge"), 1);
    assert!(store.session(&old).await.expect("session").is_none());
    assert_eq!(
        last_used(store.session(&used).await.expect("session")),
        5_000
    );
    store.revoke_token(&used).await.expect("revoke");
}

async fn a_deleted_accounts_sessions_answer_once_with_nothing(store: &dyn Store) {
    let id = store
        .create_user("leaving", "phc", 1)
        .await
        .expect("create");
    // A write stamped 0 is a write like any other for an account never deleted.
    let zero = [m(1, "z", Some("{}"), 0)];
    let outcome = store.push(id, batch("z", &zero, None)).await.expect("push");
    assert_eq!(outcome.applied, 1);
    let token = [11u8; 32];
    store.create_token(id, &token, 1).await.expect("token");
    let writes = [m(1, "a", Some("{}"), 10), m(2, "b", Some("{}"), 20)];
    store
        .push(id, batch("c", &writes, None))
        .await
        .expect("push");
    let session = |s: Option<super::SessionInfo>| s.expect("a session");
    assert_eq!(
        session(store.session(&token).await.expect("session")).deleted_at,
        0
    );
    store.delete_user(id, 1_000).await.expect("delete");
    let after = session(store.session(&token).await.expect("session"));
    assert_eq!((after.deleted_at, after.version), (1_000, 4));
    assert!(store
        .find_user_by_name("leaving")
        .await
        .expect("find")
        .is_none());
    // The whole state from a device's cursor: no record, one tombstone at the new version.
    let page = store.pull(id, Some(3), 100.into()).await.expect("pull");
    assert!(page.reset);
    let versions: Vec<(u64, bool)> = page
        .changes
        .iter()
        .map(|c| (c.version, c.value.is_some()))
        .collect();
    assert_eq!(versions, [(4, false)]);
    // A write from a device, old or new, is taken and not stored.
    let sent = [m(1, "c", Some("{}"), 500), m(2, "d", Some("{}"), 5_000)];
    let outcome = store.push(id, batch("d", &sent, None)).await.expect("push");
    assert_eq!((outcome.ack, outcome.applied), (2, 0));
    // The sweep removes the account, sessions and all, once its day of answers is over.
    store.purge_expired(0, 0, 1_000).await.expect("purge");
    assert!(
        store.session(&token).await.expect("session").is_some(),
        "not yet"
    );
    store.purge_expired(0, 0, 1_001).await.expect("purge");
    assert!(store.session(&token).await.expect("session").is_none());
    assert!(
        store.pull(id, None, 100.into()).await.is_err(),
        "the emptied account is gone"
    );
}

async fn shared_attempt_counts_follow_the_window_rule(store: &dyn Store) {
    let key = [3u8; 32];
    let Some(first) = store.count_attempt(&key, 1_000, 300).await.expect("count") else {
        return; // One node: the server counts in memory.
    };
    assert_eq!(first, super::Attempts::next(None, 1_000, 300));
    let second = store.count_attempt(&key, 1_299, 300).await.expect("count");
    assert_eq!(second, Some(super::Attempts::next(Some(first), 1_299, 300)));
    let restarted = store.count_attempt(&key, 1_300, 300).await.expect("count");
    assert_eq!(restarted, Some(super::Attempts::next(second, 1_300, 300)));
    store.clear_attempts(&key).await.expect("clear");
    assert_eq!(
        store.count_attempt(&key, 1_301, 300).await.expect("count"),
        Some(super::Attempts::next(None, 1_301, 300))
    );
    store.purge_expired(0, 2_000, 0).await.expect("purge");
    assert_eq!(
        store.count_attempt(&key, 1_302, 300).await.expect("count"),
        Some(super::Attempts::next(None, 1_302, 300))
    );
}

async fn versions_acks_and_merge(store: &dyn Store) {
    let id = store.create_user("ben", "phc", 1).await.expect("create");
    let token = [8u8; 32];
    store.create_token(id, &token, 1).await.expect("token");
    // Prime any session cache, to check that pushes keep it current.
    store.session(&token).await.expect("session");

    let first = [
        m(1, "a", Some("{}"), 10),
        m(2, "b", Some("{}"), 10),
        m(3, "a", None, 11),
    ];
    let out = store
        .push(id, batch("c1", &first, Some(0)))
        .await
        .expect("push");
    assert_eq!((out.ack, out.version, out.applied), (3, 3, 3));
    let page = out.page.expect("page since 0");
    let versions: Vec<u64> = page.changes.iter().map(|c| c.version).collect();
    assert_eq!(
        versions,
        [2, 3],
        "each record once, latest version, ordered"
    );
    assert_eq!(page.cursor, 3);
    let session = store
        .session(&token)
        .await
        .expect("session")
        .expect("valid");
    assert_eq!(session.version, 3, "the session sees the committed version");

    // A retry applies nothing; a losing or equal write bumps nothing but is acknowledged.
    let out = store
        .push(id, batch("c1", &first, None))
        .await
        .expect("retry");
    assert_eq!((out.ack, out.version, out.applied), (3, 3, 0));
    let losing = [
        m(1, "b", Some(r#"{"x":1}"#), 9),
        m(2, "b", Some(r#"{"x":2}"#), 10),
    ];
    let out = store
        .push(id, batch("a0", &losing, None))
        .await
        .expect("losing");
    assert_eq!((out.ack, out.version, out.applied), (2, 3, 0));
    // The same (updatedAt, clientId) again is not newer, whatever the value.
    let same = [m(4, "b", Some(r#"{"x":9}"#), 10)];
    let out = store
        .push(id, batch("c1", &same, None))
        .await
        .expect("same");
    assert_eq!((out.ack, out.version, out.applied), (4, 3, 0));
    // A tie goes to the greater client id; a future stamp is clamped.
    let winning = [
        m(1, "b", Some(r#"{"x":3}"#), 10),
        m(2, "c", Some("{}"), u64::MAX),
    ];
    let out = store
        .push(id, batch("z9", &winning, None))
        .await
        .expect("winning");
    assert_eq!((out.ack, out.version, out.applied), (2, 5, 2));

    let full = store.pull(id, None, 100.into()).await.expect("pull");
    assert!(!full.reset && !full.more);
    assert_eq!(full.cursor, 5);
    // The whole state, in version order, holds the tombstone too.
    let whole: Vec<(&str, Option<&str>, u64)> = full
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.value.as_deref(), c.updated_at))
        .collect();
    assert_eq!(
        whole,
        [
            ("a", None, 11),
            ("b", Some(r#"{"x":3}"#), 10),
            ("c", Some("{}"), 61_000)
        ]
    );

    // Paging: the cursor of a page that has more is its last version.
    let page = store.pull(id, Some(0), 2.into()).await.expect("page");
    assert!(page.more);
    assert_eq!(page.cursor, page.changes[1].version);
    let rest = store
        .pull(id, Some(page.cursor), 2.into())
        .await
        .expect("rest");
    assert!(!rest.more);
    assert_eq!(rest.cursor, 5);
}

async fn a_retry_is_not_applied_again_when_its_stamp_was_clamped(store: &dyn Store) {
    let id = store.create_user("fay", "phc", 1).await.expect("create");
    let future = [m(1, "k", Some("{}"), u64::MAX)];
    let out = store
        .push(id, batch("c1", &future, None))
        .await
        .expect("push");
    assert_eq!((out.ack, out.version, out.applied), (1, 1, 1));
    // A second later the bound is a second higher: applied again, the write would win over
    // its own first, clamped copy.
    let later = PushBatch {
        now_ms: 2_000,
        updated_at_max: 62_000,
        ..batch("c1", &future, None)
    };
    let out = store.push(id, later).await.expect("retry");
    assert_eq!((out.ack, out.version, out.applied), (1, 1, 0));
}

async fn writes_of_one_key_clamped_in_one_push_keep_their_order(store: &dyn Store) {
    let id = store.create_user("gus", "phc", 1).await.expect("create");
    // A client whose stamps run ahead of the bound switches a record off and on again: both
    // writes are clamped, and the later one must still win.
    let toggled = [
        m(1, "k", Some(r#"{"on":1}"#), 100_000),
        m(2, "k", None, 100_001),
        m(3, "j", Some("{}"), 100_002),
        m(4, "k", Some(r#"{"on":2}"#), 100_003),
        m(5, "i", Some("{}"), 61_001),
    ];
    let out = store
        .push(id, batch("c1", &toggled, None))
        .await
        .expect("push");
    assert_eq!(out.ack, 5);
    let state = store.pull(id, None, 100.into()).await.expect("pull");
    let held: Vec<(&str, Option<&str>, u64)> = state
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.value.as_deref(), c.updated_at))
        .collect();
    // Stored at the bound and on, one millisecond per write clamped before it in the push;
    // never later than the write's own stamp.
    assert_eq!(
        held,
        [
            ("j", Some("{}"), 61_002),
            ("k", Some(r#"{"on":2}"#), 61_003),
            ("i", Some("{}"), 61_001),
        ]
    );
}

async fn compaction_raises_the_horizon(store: &dyn Store) {
    let id = store.create_user("cat", "phc", 1).await.expect("create");
    let writes = [
        m(1, "a", Some("{}"), 10),
        m(2, "b", Some("{}"), 10),
        m(3, "a", None, 11),
        m(4, "c", Some("{}"), 12),
    ];
    store
        .push(id, batch("c1", &writes, None))
        .await
        .expect("push");
    // Stored at 1_000: a compaction of what is older than 999 keeps it.
    assert_eq!(store.compact_tombstones(999).await.expect("compact"), 0);
    assert!(
        !store
            .pull(id, Some(0), 100.into())
            .await
            .expect("pull")
            .reset
    );
    assert!(store.compact_tombstones(1_000).await.expect("compact") >= 1);
    let page = store.pull(id, Some(2), 100.into()).await.expect("pull");
    assert!(
        page.reset,
        "a cursor below the deleted tombstone's version resets"
    );
    let keys: Vec<&str> = page.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["b", "c"]);
    let page = store.pull(id, Some(3), 100.into()).await.expect("pull");
    assert!(!page.reset && page.changes.len() == 1);

    // The newest row stays even when it is an old tombstone, so a whole state always ends
    // at its cursor's version.
    store
        .push(id, batch("c1", &[m(5, "c", None, 13)], None))
        .await
        .expect("delete");
    store.compact_tombstones(u64::MAX).await.expect("compact");
    let whole = store.pull(id, None, 100.into()).await.expect("pull");
    assert_eq!(whole.cursor, 5);
    assert_eq!(
        whole.changes.last().map(|c| (c.key.as_str(), c.version)),
        Some(("c", 5))
    );
    assert!(
        !store
            .pull(id, Some(4), 100.into())
            .await
            .expect("pull")
            .reset
    );
}

/// Tombstones compacted above the end of a whole state's first page: each next page goes on
/// from where the last one ended (a cursor below the horizon would start the whole state
/// again, for ever), and the pages together are the whole state.
async fn a_whole_state_in_pages_ends_though_its_pages_end_below_the_horizon(store: &dyn Store) {
    let id = store.create_user("pager", "phc", 1).await.expect("create");
    // Versions 1–4 live, 5 and 6 deleted (tombstones at 7 and 8), 9 live: horizon 8.
    let writes = [
        m(1, "a", Some("{}"), 10),
        m(2, "b", Some("{}"), 10),
        m(3, "c", Some("{}"), 10),
        m(4, "d", Some("{}"), 10),
        m(5, "e", Some("{}"), 10),
        m(6, "f", Some("{}"), 10),
        m(7, "e", None, 11),
        m(8, "f", None, 11),
        m(9, "g", Some("{}"), 12),
    ];
    store
        .push(id, batch("c1", &writes, None))
        .await
        .expect("push");
    assert!(store.compact_tombstones(1_000).await.expect("compact") >= 2);
    for (since, reset) in [(None, false), (Some(1), true)] {
        let mut page = store.pull(id, since, 2.into()).await.expect("pull");
        assert_eq!(page.reset, reset);
        let mut keys: Vec<String> = page.changes.iter().map(|c| c.key.clone()).collect();
        for _ in 0..10 {
            if !page.more {
                break;
            }
            page = store
                .pull(id, Some(page.cursor), 2.into())
                .await
                .expect("next page");
            assert!(!page.reset, "{since:?}: a next page starts nothing again");
            keys.extend(page.changes.iter().map(|c| c.key.clone()));
        }
        assert!(!page.more, "{since:?}: the pages end");
        assert_eq!(page.cursor, 9, "{since:?}");
        assert_eq!(keys, ["a", "b", "c", "d", "g"], "{since:?}");
    }
}

/// A page of a whole state kept from long ago (a cached server-rendered page) goes on only
/// while no tombstone newer than the whole state's start was compacted: the delete of a
/// record its first page held, made since, reaches the client as a tombstone on a later page;
/// once compaction took that tombstone the record would stay on the client for ever, so the
/// whole state starts again.
async fn a_whole_state_begun_before_the_horizon_starts_again(store: &dyn Store) {
    let live = [
        m(1, "a", Some("{}"), 10),
        m(2, "b", Some("{}"), 10),
        m(3, "c", Some("{}"), 10),
        m(4, "d", Some("{}"), 10),
    ];
    let id = user_holding(store, "kept", "c1", &live).await;
    let first = store.pull(id, None, 2.into()).await.expect("first page");
    assert!(first.more);
    // Since the first page: `a` deleted, then `e` written, at 2_000.
    let later = [m(5, "a", None, 20), m(6, "e", Some("{}"), 20)];
    let at_2000 = PushBatch {
        now_ms: 2_000,
        ..batch("c1", &later, None)
    };
    store.push(id, at_2000).await.expect("push");
    let pages = |since| async move {
        let mut page = store.pull(id, Some(since), 2.into()).await.expect("page");
        let reset = page.reset;
        let mut rows: Vec<(String, bool)> = Vec::new();
        loop {
            rows.extend(
                page.changes
                    .iter()
                    .map(|c| (c.key.clone(), c.value.is_some())),
            );
            if !page.more {
                return (reset, rows);
            }
            page = store
                .pull(id, Some(page.cursor), 2.into())
                .await
                .expect("next page");
        }
    };
    let (reset, rows) = pages(first.cursor).await;
    assert!(!reset);
    assert!(
        rows.contains(&("a".into(), false)),
        "the delete comes: {rows:?}"
    );
    // Its tombstone compacted: going on from the first page would never bring the delete.
    assert!(store.compact_tombstones(3_000).await.expect("compact") >= 1);
    let (reset, rows) = pages(first.cursor).await;
    assert!(reset, "the whole state starts again: {rows:?}");
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["b", "c", "d", "e"]);
    // A whole state begun since goes on from its pages as before.
    let first = store.pull(id, None, 2.into()).await.expect("first page");
    let (reset, rows) = pages(first.cursor).await;
    assert!(!reset);
    assert_eq!(rows, [("d".into(), true), ("e".into(), true)]);
}

async fn client_ids_compare_bytewise_and_keys_keep_every_character(store: &dyn Store) {
    let id = store.create_user("dot", "phc", 1).await.expect("create");
    let first = [m(1, "k", Some(r#"{"by":"a"}"#), 10)];
    store.push(id, batch("a", &first, None)).await.expect("a");
    // "Z" (0x5A) is below "a" (0x61) bytewise, though many collations sort it after.
    let out = store
        .push(
            id,
            batch("Z", &[m(1, "k", Some(r#"{"by":"Z"}"#), 10)], None),
        )
        .await
        .expect("Z");
    assert_eq!(
        out.applied, 0,
        "a tie goes to the bytewise greater client id"
    );
    // "é" (0xC3 0xA9) is above "z" bytewise.
    let out = store
        .push(
            id,
            batch("é", &[m(1, "k", Some(r#"{"by":"e"}"#), 10)], None),
        )
        .await
        .expect("é");
    assert_eq!(out.applied, 1);
    let odd_key = "nul\u{0}tab\tsnow\u{2603}";
    store
        .push(id, batch("a", &[m(2, odd_key, Some("{}"), 1)], None))
        .await
        .expect("odd key");
    let page = store.pull(id, Some(0), 100.into()).await.expect("pull");
    let keys: Vec<(&str, &str)> = page
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.client_id.as_str()))
        .collect();
    assert_eq!(keys, [("k", "é"), (odd_key, "a")]);
}

async fn concurrent_pushes_take_distinct_versions(store: &dyn Store) {
    let id = store.create_user("eve", "phc", 1).await.expect("create");
    let writes: Vec<Vec<Mutation>> = (0..4)
        .map(|c| {
            (1..=5)
                .map(|i| m(i, &format!("c{c}-{i}"), Some("{}"), 10))
                .collect()
        })
        .collect();
    let clients = ["c0", "c1", "c2", "c3"];
    let push = |c: usize| store.push(id, batch(clients[c], &writes[c], None));
    let (a, b, c, d) = tokio::join!(push(0), push(1), push(2), push(3));
    for out in [a, b, c, d] {
        assert_eq!(out.expect("push").applied, 5);
    }
    let page = store.pull(id, Some(0), 100.into()).await.expect("pull");
    let versions: Vec<u64> = page.changes.iter().map(|c| c.version).collect();
    assert_eq!(
        versions,
        (1..=20).collect::<Vec<_>>(),
        "no version twice, none skipped"
    );
    assert_eq!(page.cursor, 20);
}

/// The suite's teeth: with one of the store's planted bugs (`sinkron_core::planted`)
/// switched on, the suite fails on every backend, and without it the same run passes. A
/// planted bug holds for the whole process, so each run is a process of its own: this test
/// binary, asked to run [`planted::suite_with_the_planted_bug`] alone.
#[cfg(feature = "planted-bugs")]
mod planted {
    use std::process::Command;

    use sinkron_core::planted::{plant, Bug};

    use crate::store::postgres::tests::TestDatabase;
    use crate::store::postgres::PostgresStore;
    use crate::store::sqlite::SqliteStore;

    /// The bug the run plants (by its command-line name; empty: none).
    const BUG: &str = "SINKRON_TEST_PLANT";
    /// `sqlite` or `postgres`.
    const BACKEND: &str = "SINKRON_TEST_BACKEND";
    const SUITE: &str = "store::conformance::planted::suite_with_the_planted_bug";

    #[tokio::test]
    #[ignore = "run in a process of its own by a_planted_store_bug_fails_the_suite_on_every_backend"]
    async fn suite_with_the_planted_bug() {
        let name = std::env::var(BUG).unwrap_or_default();
        if !name.is_empty() {
            let bug = Bug::ALL
                .into_iter()
                .find(|b| b.name() == name)
                .unwrap_or_else(|| panic!("no planted bug is called {name:?}"));
            plant(bug);
        }
        match std::env::var(BACKEND).as_deref() {
            Ok("sqlite") => {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = SqliteStore::open(&dir.path().join("p.db")).expect("open");
                super::run(&store).await;
            }
            Ok("postgres") => {
                let db = TestDatabase::create().await;
                let store = PostgresStore::open(&db.url, 4).await.expect("open");
                super::run(&store).await;
            }
            other => panic!("{BACKEND} names no backend: {other:?}"),
        }
    }

    /// Runs the suite in a new process with `bug` planted on `backend`; whether it passed.
    fn suite_passes(bug: Option<Bug>, backend: &str) -> bool {
        let exe = std::env::current_exe().expect("the test binary");
        let output = Command::new(exe)
            .args([SUITE, "--exact", "--ignored", "--test-threads=1"])
            .env(BUG, bug.map_or("", Bug::name))
            .env(BACKEND, backend)
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let ran = |outcome: &str| stdout.contains(&format!("test {SUITE} ... {outcome}"));
        assert!(
            ran("ok") || ran("FAILED"),
            "the suite did not run:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.status.success()
    }

    #[test]
    fn a_planted_store_bug_fails_the_suite_on_every_backend() {
        for backend in ["sqlite", "postgres"] {
            assert!(suite_passes(None, backend), "{backend} without a bug");
            for bug in [
                Bug::ArrivalOrder,
                Bug::TimestampCursor,
                Bug::NoDedupe,
                Bug::CapReadsTooFew,
                Bug::ClampKeepsFirst,
            ] {
                assert!(
                    !suite_passes(Some(bug), backend),
                    "{backend} passed the suite with {} planted",
                    bug.name()
                );
            }
        }
    }
}
