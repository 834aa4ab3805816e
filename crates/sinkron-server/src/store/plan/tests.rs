//! The push and page rules on their own, without a database: each test hands the planner
//! the rows a backend would have read and looks at the plan.

use super::*;

fn m(id: u64, key: &str, value: Option<&str>, updated_at: u64) -> Mutation {
    Mutation {
        fields: None,
        id,
        collection: "likes".into(),
        key: key.into(),
        value: value.map(str::to_owned),
        updated_at,
    }
}

fn batch<'a>(client_id: &'a str, mutations: &'a [Mutation]) -> PushBatch<'a> {
    PushBatch {
        client_id,
        mutations,
        now_ms: 1_000,
        updated_at_max: 61_000,
        since: None,
        limit: 100.into(),
        quota: Quota::UNLIMITED,
        caps: &[],
        merges: &[],
    }
}

fn stored(updated_at: u64, client_id: &str, bytes: Option<usize>) -> Option<Stored> {
    Some(Stored {
        updated_at,
        client_id: client_id.into(),
        bytes,
        ..Stored::default()
    })
}

fn user(version: u64) -> UserState {
    UserState {
        version,
        ..UserState::default()
    }
}

/// Plans a push of `batch` for a user at `user` whose records hold nothing but `rows`
/// (`(key, stored)`), with no cap to apply.
fn planned<'a>(
    batch: PushBatch<'a>,
    user: UserState,
    mark: ClientMark,
    rows: &[(&str, Option<Stored>)],
) -> Result<Plan<'a>, StoreError> {
    let planner = Planner::new(batch, user, mark)?;
    let found = planner
        .keys()
        .iter()
        .map(|(_, key)| rows.iter().find(|r| r.0 == *key).and_then(|r| r.1.clone()))
        .collect();
    let merge = planner.merge(found)?;
    assert!(merge.caps().is_empty(), "no cap in these tests");
    merge.finish()
}

/// `(key, value, updated_at, client_id, version)` of each row.
fn written<'p>(plan: &'p Plan<'_>) -> Vec<(&'p str, Option<&'p str>, u64, &'p str, u64)> {
    plan.rows
        .iter()
        .map(|r| {
            (
                r.key.as_ref(),
                r.value.as_deref(),
                r.updated_at,
                r.client_id.as_ref(),
                r.version,
            )
        })
        .collect()
}

#[test]
fn ids_at_or_below_the_ack_are_skipped_and_the_ack_rises_to_the_batch() {
    let mutations = [
        m(3, "a", Some("{}"), 10),
        m(4, "b", Some("{}"), 10),
        m(5, "c", None, 10),
    ];
    let mark = ClientMark {
        ack: 4,
        stamp_max: Some(10),
    };
    let planner = Planner::new(batch("c1", &mutations), user(7), mark).expect("planner");
    assert_eq!(
        planner.keys(),
        [("likes", "c")],
        "only what is above the ack is read"
    );
    let plan = planner
        .merge(vec![None])
        .expect("merge")
        .finish()
        .expect("plan");
    assert_eq!(written(&plan), [("c", None, 10, "c1", 8)]);
    assert_eq!((plan.ack, plan.version, plan.applied), (5, 8, 1));
    assert_eq!(
        plan.mark,
        Some(ClientMark {
            ack: 5,
            stamp_max: Some(10)
        })
    );
    // A retry of all of it writes nothing and leaves the mark as it is.
    let again = plan_of_retry(&mutations);
    assert!(again.rows.is_empty());
    assert_eq!((again.ack, again.version, again.applied), (5, 8, 0));
    assert_eq!(again.mark, None);
}

fn plan_of_retry(mutations: &[Mutation]) -> Plan<'_> {
    let mark = ClientMark {
        ack: 5,
        stamp_max: Some(10),
    };
    planned(batch("c1", mutations), user(8), mark, &[]).expect("plan")
}

#[test]
fn a_new_write_under_an_acknowledged_id_refuses_the_batch() {
    let mutations = [m(2, "a", Some("{}"), 11), m(6, "b", Some("{}"), 5)];
    let mark = ClientMark {
        ack: 4,
        stamp_max: Some(10),
    };
    assert!(matches!(
        Planner::new(batch("c1", &mutations), user(0), mark),
        Err(StoreError::IdsReused { ack: 4 })
    ));
    // A client acknowledged before stamps were kept is not checked.
    let old = ClientMark {
        ack: 4,
        stamp_max: None,
    };
    let plan = planned(batch("c1", &mutations), user(0), old, &[]).expect("plan");
    assert_eq!(written(&plan), [("b", Some("{}"), 5, "c1", 1)]);
}

#[test]
fn a_future_stamp_is_clamped_to_the_servers_bound() {
    let mutations = [m(1, "a", Some("{}"), u64::MAX), m(2, "b", None, 61_000)];
    let plan = planned(batch("c1", &mutations), user(0), ClientMark::default(), &[]).expect("plan");
    assert_eq!(
        written(&plan),
        [
            ("a", Some("{}"), 61_000, "c1", 1),
            ("b", None, 61_000, "c1", 2)
        ]
    );
    // The mark keeps the stamps as sent (as stored: at most i64::MAX), not as clamped, so
    // a retry is recognised whatever the clock says then.
    assert_eq!(
        plan.mark,
        Some(ClientMark {
            ack: 2,
            stamp_max: Some(i64::MAX as u64)
        })
    );
}

#[test]
fn newest_wins_by_stamp_then_client_id_and_a_tie_changes_nothing() {
    let rows = [
        ("older", stored(10, "zz", Some(2))),
        ("newer", stored(30, "aa", Some(2))),
        ("tie_lower", stored(20, "c2", Some(2))),
        ("tie_same", stored(20, "c1", Some(2))),
        ("tie_higher", stored(20, "c0", Some(2))),
    ];
    let mutations = [
        m(1, "older", Some("{}"), 20),
        m(2, "newer", Some("{}"), 20),
        m(3, "tie_lower", Some("{}"), 20),
        m(4, "tie_same", Some(r#"{"x":1}"#), 20),
        m(5, "tie_higher", Some("{}"), 20),
    ];
    let plan = planned(
        batch("c1", &mutations),
        user(40),
        ClientMark::default(),
        &rows,
    )
    .expect("plan");
    let keys: Vec<&str> = plan.rows.iter().map(|r| r.key.as_ref()).collect();
    assert_eq!(keys, ["older", "tie_higher"]);
    assert_eq!((plan.applied, plan.version, plan.ack), (2, 42, 5));
    // Client ids compare bytewise: "é" is above "z", "Z" below "a".
    let accented = [m(1, "k", Some("{}"), 20)];
    let won = |client: &str, holder: &str| {
        let rows = [("k", stored(20, holder, Some(2)))];
        planned(
            batch(client, &accented),
            user(1),
            ClientMark::default(),
            &rows,
        )
        .expect("plan")
        .applied
            == 1
    };
    assert!(won("é", "z"));
    assert!(!won("Z", "a"));
}

#[test]
fn every_winner_takes_the_next_version_and_a_record_is_written_once() {
    let mutations = [
        m(1, "a", Some("{}"), 10),
        m(2, "b", Some("{}"), 10),
        m(3, "a", None, 11),
        // Older than the batch's own write of "a": loses to it.
        m(4, "a", Some("{}"), 5),
    ];
    let plan = planned(
        batch("c1", &mutations),
        user(100),
        ClientMark::default(),
        &[],
    )
    .expect("plan");
    assert_eq!(
        written(&plan),
        [("a", None, 11, "c1", 103), ("b", Some("{}"), 10, "c1", 102)],
        "the last winner of a record, with its version"
    );
    assert_eq!((plan.applied, plan.version), (3, 103));
    // "a" was added and deleted again: one record of two bytes remains.
    assert_eq!(
        plan.usage,
        Usage {
            records: 1,
            bytes: 2
        }
    );
}

#[test]
fn usage_follows_what_each_record_held_and_holds() {
    let rows = [
        ("grown", stored(1, "c0", Some(2))),
        ("deleted", stored(1, "c0", Some(10))),
        ("revived", stored(1, "c0", None)),
    ];
    let mutations = [
        m(1, "grown", Some(r#"{"a":1}"#), 5),
        m(2, "deleted", None, 5),
        m(3, "revived", Some("{}"), 5),
        m(4, "new", Some("{}"), 5),
    ];
    let plan = planned(
        batch("c1", &mutations),
        user(9),
        ClientMark::default(),
        &rows,
    )
    .expect("plan");
    assert_eq!(
        plan.usage,
        Usage {
            records: 1,
            bytes: 5 - 10 + 2 + 2
        }
    );
}

#[test]
fn the_quota_refuses_growth_past_it_and_lets_room_be_made() {
    let full = UserState {
        version: 3,
        usage: Usage {
            records: 3,
            bytes: 30,
        },
        writes_after: 0,
    };
    let quota = Quota {
        records: 3,
        bytes: 40,
    };
    let rows = [("a", stored(1, "c0", Some(10)))];
    let push = |mutations: &[Mutation], quota: Quota| {
        let batch = PushBatch {
            quota,
            ..batch("q", mutations)
        };
        planned(batch, full, ClientMark::default(), &rows).map(|p| p.version)
    };
    let one_more = [m(1, "d", Some("{}"), 5)];
    assert!(matches!(
        push(&one_more, quota),
        Err(StoreError::QuotaExceeded {
            what: "records",
            limit: 3
        })
    ));
    let bigger = [m(1, "a", Some(r#"{"a":"123456789012345678901"}"#), 5)];
    assert!(matches!(
        push(&bigger, quota),
        Err(StoreError::QuotaExceeded {
            what: "bytes",
            limit: 40
        })
    ));
    // Above a lowered quota, a delete passes.
    let lowered = Quota {
        records: 1,
        bytes: 1,
    };
    assert_eq!(push(&[m(1, "a", None, 5)], lowered).ok(), Some(4));
}

#[test]
fn writes_made_before_an_erasure_are_taken_and_not_stored() {
    let erased = UserState {
        version: 50,
        usage: Usage::default(),
        writes_after: 1_000,
    };
    let mutations = [m(1, "a", Some("{}"), 1_000), m(2, "b", Some("{}"), 1_001)];
    let plan = planned(batch("c1", &mutations), erased, ClientMark::default(), &[]).expect("plan");
    assert_eq!(written(&plan), [("b", Some("{}"), 1_001, "c1", 51)]);
    assert_eq!(plan.ack, 2, "both are acknowledged");
    // A stamp clamped below the mark counts as made before it.
    let future = [m(3, "c", Some("{}"), u64::MAX)];
    let late = PushBatch {
        updated_at_max: 900,
        ..batch("c1", &future)
    };
    let plan = planned(late, erased, ClientMark::default(), &[]).expect("plan");
    assert!(plan.rows.is_empty());
    assert_eq!((plan.ack, plan.version), (3, 50));
}

/// A cap on `likes`.
fn likes_capped_at(max: u64) -> [Cap; 1] {
    [Cap {
        collection: "likes".into(),
        max,
    }]
}

/// A user at `version` whose live records number `records` and take `bytes`.
fn holding(version: u64, records: i64, bytes: i64) -> UserState {
    UserState {
        version,
        usage: Usage { records, bytes },
        writes_after: 0,
    }
}

/// `mutations` of client `c1` under `caps`, merged with `stored` (the row of each of the
/// batch's records, in order).
fn capped_merge<'a>(
    caps: &'a [Cap],
    user: UserState,
    mutations: &'a [Mutation],
    stored: Vec<Option<Stored>>,
) -> Merge<'a> {
    let batch = PushBatch {
        caps,
        ..batch("c1", mutations)
    };
    Planner::new(batch, user, ClientMark::default())
        .expect("planner")
        .merge(stored)
        .expect("merge")
}

fn held(key: &str, updated_at: u64, bytes: usize) -> Held {
    Held {
        key: key.into(),
        updated_at,
        client_id: "c0".into(),
        bytes,
    }
}

#[test]
fn past_a_cap_the_oldest_records_become_tombstones_with_their_stamps() {
    let caps = likes_capped_at(2);
    let user = holding(10, 2, 4);
    // "old" is stored, "mid" is stored and rewritten by the batch (now the newest), "new" is
    // added: three live records, one too many.
    let mutations = [m(1, "mid", Some("{}"), 40), m(2, "new", Some("{}"), 30)];
    let batch = PushBatch {
        caps: &caps,
        ..batch("c1", &mutations)
    };
    let planner = Planner::new(batch, user, ClientMark::default()).expect("planner");
    let found = planner
        .keys()
        .iter()
        .map(|(_, key)| (*key == "mid").then(|| stored(20, "c0", Some(2))).flatten())
        .collect();
    let mut merge = planner.merge(found).expect("merge");
    let caps_to_apply = merge.caps();
    assert_eq!(caps_to_apply, [&caps[0]]);
    // Two live records stored, one to evict; "mid" may be among the oldest read and is
    // rewritten, so both are read.
    assert_eq!(merge.unread(caps_to_apply[0]), 0);
    merge.evict(
        caps_to_apply[0],
        2,
        vec![held("old", 10, 2), held("mid", 20, 2)],
    );
    let plan = merge.finish().expect("plan");
    assert_eq!(
        written(&plan),
        [
            ("mid", Some("{}"), 40, "c1", 11),
            ("new", Some("{}"), 30, "c1", 12),
            ("old", None, 10, "c0", 13),
        ]
    );
    assert_eq!(
        plan.usage,
        Usage {
            records: 0,
            bytes: 0
        }
    );
    assert_eq!((plan.version, plan.applied), (13, 2));
}

#[test]
fn a_push_counts_what_each_collection_gains_and_loses() {
    let fav = |id, key: &str, value: Option<&str>, at| Mutation {
        collection: "favorites".into(),
        ..m(id, key, value, at)
    };
    let mutations = [
        m(1, "new", Some("{}"), 40),
        m(2, "gone", None, 40),
        m(3, "kept", Some(r#"{"a":1}"#), 40),
        fav(4, "f1", Some("{}"), 50),
        fav(5, "f2", Some("{}"), 50),
        fav(6, "f2", None, 60),
    ];
    let plan = planned(
        batch("c1", &mutations),
        user(5),
        ClientMark::default(),
        &[
            ("gone", stored(1, "c0", Some(2))),
            ("kept", stored(1, "c0", Some(2))),
        ],
    )
    .expect("plan");
    assert_eq!(plan.counts, [("favorites", 1)], "likes: one in, one out");
    assert_eq!(plan.usage.records, 1);
}

#[test]
fn an_old_write_past_a_cap_is_evicted_at_once_in_its_own_row() {
    let caps = likes_capped_at(1);
    let user = holding(5, 1, 2);
    let mutations = [m(1, "old", Some("{}"), 5)];
    let mut merge = capped_merge(&caps, user, &mutations, vec![None]);
    assert_eq!(merge.unread(&caps[0]), 0, "the one live record is read");
    merge.evict(&caps[0], 1, vec![held("kept", 50, 2)]);
    let plan = merge.finish().expect("plan");
    assert_eq!(written(&plan), [("old", None, 5, "c1", 7)]);
    assert_eq!((plan.version, plan.applied), (7, 1));
    assert_eq!(plan.usage, Usage::default());
    assert!(
        plan.counts.is_empty(),
        "written and evicted: {:?}",
        plan.counts
    );
}

#[test]
fn past_a_cap_a_push_reads_only_the_oldest_records_whatever_the_user_keeps() {
    let caps = likes_capped_at(1_000);
    let user = holding(1_000, 1_000, 2_000);
    // A new record and a rewrite of a stored one: 1,001 live, one to evict. Of the 1,000
    // stored, 998 need not be read: the oldest may be the rewritten one, so one more than
    // the one evicted is read.
    let mutations = [
        m(1, "new", Some("{}"), 5_000),
        m(2, "k0", Some("{}"), 5_001),
    ];
    let found = vec![None, stored(100, "c0", Some(2))];
    let mut merge = capped_merge(&caps, user, &mutations, found);
    assert_eq!(merge.unread(&caps[0]), 998);
    merge.evict(
        &caps[0],
        1_000,
        vec![held("k0", 100, 2), held("k1", 101, 2)],
    );
    let plan = merge.finish().expect("plan");
    assert_eq!(
        written(&plan),
        [
            ("new", Some("{}"), 5_000, "c1", 1_001),
            ("k0", Some("{}"), 5_001, "c1", 1_002),
            ("k1", None, 101, "c0", 1_003),
        ]
    );
    assert!(
        plan.counts.is_empty(),
        "one in, one evicted: {:?}",
        plan.counts
    );
}

#[test]
fn handed_fewer_of_the_oldest_records_than_it_needs_a_cap_evicts_none() {
    let caps = likes_capped_at(2);
    let user = holding(10, 2, 4);
    let mutations = [m(1, "new", Some("{}"), 30)];
    let mut merge = capped_merge(&caps, user, &mutations, vec![None]);
    // Two live records, one to evict, and it needs the oldest one: handed none.
    assert_eq!(merge.unread(&caps[0]), 1);
    merge.evict(&caps[0], 2, Vec::new());
    let plan = merge.finish().expect("plan");
    assert_eq!(written(&plan), [("new", Some("{}"), 30, "c1", 11)]);
}

/// A stored record in the property below: key number, `updatedAt`, client, bytes (`None`: a
/// tombstone).
type StoredRecord = (u8, u64, bool, Option<usize>);
/// A pushed write: key number, `updatedAt`, whether it deletes.
type PushedWrite = (u8, u64, bool);

/// Plans a push into a capped collection holding `records`, handing the eviction either every
/// live record (in storage order) or only the oldest [`Merge::unread`] asks for.
fn capped_plan(max: u64, records: &[StoredRecord], writes: &[PushedWrite], all: bool) -> String {
    let caps = [Cap {
        collection: "likes".into(),
        max,
    }];
    let client = |other: bool| if other { "c2" } else { "c0" };
    let live: Vec<Held> = records
        .iter()
        .filter_map(|&(k, at, other, bytes)| {
            Some(Held {
                key: format!("k{k}"),
                updated_at: at,
                client_id: client(other).into(),
                bytes: bytes?,
            })
        })
        .collect();
    let user = UserState {
        version: 100,
        usage: Usage {
            records: i64::try_from(live.len()).expect("few"),
            bytes: 0,
        },
        writes_after: 0,
    };
    let mutations: Vec<Mutation> = writes
        .iter()
        .zip(1..)
        .map(|(&(k, at, delete), id)| m(id, &format!("k{k}"), (!delete).then_some("{}"), at))
        .collect();
    let batch = PushBatch {
        caps: &caps,
        ..batch("c1", &mutations)
    };
    let planner = Planner::new(batch, user, ClientMark::default()).expect("planner");
    let found = planner
        .keys()
        .iter()
        .map(|(_, key)| {
            let r = records.iter().find(|r| format!("k{}", r.0) == *key)?;
            stored(r.1, client(r.2), r.3)
        })
        .collect();
    let mut merge = planner.merge(found).expect("merge");
    for cap in merge.caps() {
        let count = i64::try_from(live.len()).expect("few");
        let oldest = if all {
            live.clone()
        } else {
            let wanted = usize::try_from(count - merge.unread(cap)).unwrap_or(0);
            caps[0].evict(live.clone(), wanted)
        };
        merge.evict(cap, count, oldest);
    }
    let plan = merge.finish().expect("plan");
    let after = records
        .iter()
        .filter(|r| r.3.is_some())
        .map(|r| format!("k{}", r.0))
        .filter(|k| !plan.rows.iter().any(|row| row.key == k.as_str()))
        .count()
        + plan.rows.iter().filter(|r| r.value.is_some()).count();
    assert!(
        u64::try_from(after).expect("few") <= max.max(u64::try_from(live.len()).expect("few")),
        "a push never leaves more live records than the cap or than were there"
    );
    format!("{:?}", written(&plan))
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if std::env::var_os("PROPTEST_CASES").is_some() { 256 } else { 512 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// The eviction given only the oldest records it asks for evicts exactly what it
        /// evicts given every live record.
        #[test]
        fn the_oldest_records_suffice_for_a_cap(
            max in 0u64..8,
            records in proptest::collection::btree_map(
                0u8..16,
                (0u64..20, any::<bool>(), proptest::option::weighted(0.8, 1usize..4)),
                0..14,
            ),
            writes in proptest::collection::vec((0u8..20, 0u64..24, proptest::bool::weighted(0.2)), 1..6),
        ) {
            let records: Vec<StoredRecord> =
                records.into_iter().map(|(k, (at, other, bytes))| (k, at, other, bytes)).collect();
            prop_assert_eq!(
                capped_plan(max, &records, &writes, false),
                capped_plan(max, &records, &writes, true)
            );
        }
    }
}

#[test]
fn a_cap_is_applied_only_where_a_record_was_added_and_the_user_may_be_past_it() {
    let caps = [
        Cap {
            collection: "likes".into(),
            max: 2,
        },
        Cap {
            collection: "history".into(),
            max: 2,
        },
    ];
    let caps_for = |records: i64, mutations: &[Mutation], rows: Vec<Option<Stored>>| {
        let user = UserState {
            version: 1,
            usage: Usage { records, bytes: 0 },
            writes_after: 0,
        };
        let batch = PushBatch {
            caps: &caps,
            ..batch("c1", mutations)
        };
        let planner = Planner::new(batch, user, ClientMark::default()).expect("planner");
        planner
            .merge(rows)
            .expect("merge")
            .caps()
            .iter()
            .map(|c| c.collection.clone())
            .collect::<Vec<_>>()
    };
    let add = [m(1, "k", Some("{}"), 5)];
    assert_eq!(caps_for(2, &add, vec![None]), ["likes"]);
    assert!(caps_for(1, &add, vec![None]).is_empty(), "three in all fit");
    let rewrite = [m(1, "k", Some("{}"), 5)];
    assert!(
        caps_for(9, &rewrite, vec![stored(1, "c0", Some(2))]).is_empty(),
        "a rewrite adds nothing"
    );
    let delete = [m(1, "k", None, 5)];
    assert!(caps_for(9, &delete, vec![None]).is_empty());
}

#[test]
fn a_page_starts_after_a_cursor_within_the_horizon_and_the_version() {
    let start = |since| PageStart::new(since, 10, 20);
    let incremental = |after| PageStart {
        after,
        reset: false,
        whole: false,
        began: None,
    };
    let inside = |after, began| PageStart {
        after,
        reset: false,
        whole: true,
        began,
    };
    let from_start = |reset| PageStart {
        after: 0,
        reset,
        whole: true,
        began: Some(20),
    };
    let place = |after, began| WholeCursor { after, began }.encode();
    assert_eq!(start(None), from_start(false));
    for cursor in [10, 15, 20] {
        assert_eq!(start(Some(cursor)), incremental(cursor));
    }
    for cursor in [0, 9, 21, WHOLE_STATE - 1, WHOLE_STATE + 21, u64::MAX] {
        assert_eq!(start(Some(cursor)), from_start(true), "{cursor}");
    }
    // Inside a whole state, below the horizon too, while the horizon has not passed its
    // start (or its start is unknown: a cursor of an older server).
    for after in [0, 5, 9, 10, 20] {
        assert_eq!(
            start(Some(place(after, None))),
            inside(after, None),
            "{after}"
        );
        for began in [10, 15, 20] {
            let place = place(after, Some(began));
            assert_eq!(
                start(Some(place)),
                inside(after, Some(began)),
                "{after} {began}"
            );
        }
    }
    // Begun before the horizon: tombstones of deletes made since may be gone, so the whole
    // state starts again (a page kept from long ago).
    for began in [0, 5, 9] {
        assert_eq!(
            start(Some(place(5, Some(began)))),
            from_start(true),
            "{began}"
        );
    }
    // Not issued by this server: past the version.
    assert_eq!(start(Some(place(21, Some(15)))), from_start(true));
    assert_eq!(start(Some(place(5, Some(21)))), from_start(true));
}

#[test]
fn a_place_in_a_whole_state_keeps_its_start_while_both_fit() {
    for (after, began) in [
        (0, Some(0)),
        (5, Some(3)),
        (u32::MAX.into(), Some((1 << 29) - 1)),
    ] {
        let place = WholeCursor { after, began };
        let cursor = place.encode();
        assert!((WHOLE_STATE..1 << 63).contains(&cursor), "{cursor}");
        assert_eq!(WholeCursor::parse(cursor), Some(place));
    }
    // Past what the cursor carries, it names the place alone, as older servers did.
    for (after, began) in [(1 << 32, Some(5)), (5, Some(1 << 29)), (7, None)] {
        let cursor = WholeCursor { after, began }.encode();
        assert_eq!(cursor, WHOLE_STATE + after);
        assert_eq!(
            WholeCursor::parse(cursor),
            Some(WholeCursor { after, began: None })
        );
    }
    for cursor in [0, WHOLE_STATE - 1, 1 << 63, u64::MAX] {
        assert_eq!(WholeCursor::parse(cursor), None, "{cursor}");
    }
}

#[test]
fn a_page_ends_at_its_last_row_when_more_follow_else_at_the_version() {
    let change = |version| Change {
        collection: "likes".into(),
        key: format!("k{version}"),
        value: None,
        updated_at: 1,
        client_id: "c".into(),
        version,
    };
    let incremental = PageStart::new(Some(2), 0, 9);
    let page = Page::from_rows(
        vec![change(3), change(5), change(8)],
        2.into(),
        9,
        incremental,
    );
    assert_eq!((page.changes.len(), page.cursor, page.more), (2, 5, true));
    let reset = PageStart::new(Some(1), 2, 9);
    let page = Page::from_rows(vec![change(3), change(5)], 2.into(), 9, reset);
    assert_eq!((page.changes.len(), page.cursor, page.more), (2, 9, false));
    assert!(page.reset);
    // A whole state in pages goes on from its last row, whatever the horizon below the
    // version it began at.
    let page = Page::from_rows(vec![change(3), change(5), change(8)], 2.into(), 9, reset);
    let place = WholeCursor {
        after: 5,
        began: Some(9),
    };
    assert_eq!((page.cursor, page.more), (place.encode(), true));
    assert_eq!(page.version_seen(), 9);
    let next = PageStart::new(Some(page.cursor), 7, 9);
    assert_eq!(
        (next.after, next.reset, next.whole, next.began),
        (5, false, true, Some(9))
    );
    let page = Page::from_rows(vec![change(6), change(7), change(8)], 2.into(), 12, next);
    assert_eq!(
        page.cursor,
        WholeCursor {
            after: 7,
            began: Some(9)
        }
        .encode()
    );
    // The horizon passed its start: the whole state starts again.
    let again = PageStart::new(Some(page.cursor), 10, 12);
    assert_eq!((again.after, again.reset, again.began), (0, true, Some(12)));
    let empty = Page::from_rows(Vec::new(), 2.into(), 9, incremental);
    assert_eq!((empty.cursor, empty.more), (9, false));
}

#[test]
fn a_page_holds_what_its_bytes_allow_and_always_its_first_change() {
    // Values of 1,000 bytes: a change takes 1,000 + 110 + its strings ("likes", "k3", "c").
    let change = |version| Change {
        collection: "likes".into(),
        key: format!("k{version}"),
        value: Some(format!("{{\"v\":\"{}\"}}", "x".repeat(992))),
        updated_at: 1,
        client_id: "c".into(),
        version,
    };
    let each = wire_bytes(&change(3));
    assert_eq!(each, 1000 + 110 + 5 + 2 + 1);
    let rows = || vec![change(3), change(5), change(8)];
    let limit = |bytes| PageLimit { changes: 10, bytes };
    // Two fit exactly; the third goes on the next page, which starts after the second.
    let incremental = PageStart::new(Some(2), 0, 9);
    let page = Page::from_rows(rows(), limit(2 * each), 9, incremental);
    assert_eq!((page.changes.len(), page.cursor, page.more), (2, 5, true));
    let next = Page::from_rows(vec![change(8)], limit(2 * each), 9, incremental);
    assert_eq!((next.changes.len(), next.cursor, next.more), (1, 9, false));
    // One byte short of two: one.
    let page = Page::from_rows(rows(), limit(2 * each - 1), 9, incremental);
    assert_eq!((page.changes.len(), page.cursor, page.more), (1, 3, true));
    // A change larger than the whole budget still goes, alone: every state can be sent.
    let page = Page::from_rows(rows(), limit(10), 9, incremental);
    assert_eq!((page.changes.len(), page.cursor, page.more), (1, 3, true));
    // Everything fits: the last page, ending at the version.
    let page = Page::from_rows(rows(), limit(3 * each), 9, incremental);
    assert_eq!((page.changes.len(), page.cursor, page.more), (3, 9, false));
    // Inside a whole state, a page cut by its bytes goes on from its last row, as one cut by
    // its count does.
    let whole = PageStart::new(None, 0, 9);
    let page = Page::from_rows(rows(), limit(each), 9, whole);
    let place = WholeCursor {
        after: 3,
        began: Some(9),
    };
    assert_eq!((page.changes.len(), page.cursor), (1, place.encode()));
    // The count still bounds it where the bytes would not.
    let page = Page::from_rows(rows(), 2.into(), 9, incremental);
    assert_eq!((page.changes.len(), page.more), (2, true));
}

#[test]
fn a_page_stops_reading_rows_once_its_bytes_are_spent_and_the_next_row_is_in() {
    let change = |version, bytes| Change {
        collection: "likes".into(),
        key: format!("k{version}"),
        value: Some("x".repeat(bytes)),
        updated_at: 1,
        client_id: "c".into(),
        version,
    };
    let each = wire_bytes(&change(3, 1000));
    let limit = PageLimit {
        changes: 10,
        bytes: 2 * each,
    };
    let start = PageStart::new(Some(2), 0, 9);
    // Two fit; the third crosses the budget and is the last row read: it says `more`.
    let mut rows = PageRows::new(limit);
    let taken: Vec<bool> = [3, 5, 8]
        .into_iter()
        .map(|v| rows.take(change(v, 1000)))
        .collect();
    assert_eq!(taken, [true, true, false]);
    let page = rows.page(9, start);
    assert_eq!((page.changes.len(), page.cursor, page.more), (2, 5, true));
    // A first row over the whole budget goes alone, and one more row is read to know that
    // more follow.
    let mut rows = PageRows::new(limit);
    assert!(rows.take(change(3, 5000)));
    assert!(!rows.take(change(5, 10)));
    let page = rows.page(9, start);
    assert_eq!((page.changes.len(), page.cursor, page.more), (1, 3, true));
    // Alone, it is the last page.
    let mut rows = PageRows::new(limit);
    assert!(rows.take(change(3, 5000)));
    let page = rows.page(9, start);
    assert_eq!((page.changes.len(), page.cursor, page.more), (1, 9, false));
}
