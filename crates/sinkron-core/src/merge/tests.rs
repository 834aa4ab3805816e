use super::*;
use proptest::prelude::*;
use serde_json::json;

fn stamp(at: u64, client: &str) -> Stamp {
    Stamp(at, client.into())
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A write as the tests give it: a value (`None`: a delete), the fields it names, a stamp.
#[derive(Clone, Debug)]
struct W {
    value: Option<Map<String, Value>>,
    fields: Option<Vec<String>>,
    stamp: Stamp,
}

fn w(value: Value, fields: Option<&[&str]>, at: u64, client: &str) -> W {
    W {
        value: (!value.is_null()).then(|| object(value)),
        fields: fields.map(|f| f.iter().map(|s| s.to_string()).collect()),
        stamp: stamp(at, client),
    }
}

fn apply(m: &mut Merged, write: &W, policy: &Policy) -> bool {
    m.apply(
        Write {
            value: write.value.as_ref(),
            fields: write.fields.as_deref(),
            stamp: &write.stamp,
        },
        policy,
    )
}

fn merged(writes: &[W], policy: &Policy) -> Merged {
    let mut m = Merged::default();
    for write in writes {
        apply(&mut m, write, policy);
    }
    m
}

fn completed() -> Policy {
    Policy {
        sticky: vec!["completed".into()],
    }
}

#[test]
fn a_like_on_the_phone_and_a_position_on_the_tv_both_survive() {
    let start = w(json!({"position": 10, "liked": false}), None, 1, "tv");
    // The phone's copy is stale (position 10) but it names only what it changed.
    let like = w(
        json!({"position": 10, "liked": true}),
        Some(&["liked"]),
        5,
        "phone",
    );
    let progress = w(
        json!({"position": 300, "liked": false}),
        Some(&["position"]),
        9,
        "tv",
    );
    let m = merged(&[start, like, progress], &Policy::default());
    assert_eq!(
        m.value(),
        Some(&object(json!({"position": 300, "liked": true})))
    );
    assert_eq!(m.stamps.newest(), Some(&stamp(9, "tv")));
}

#[test]
fn the_whole_record_format_sets_every_field_it_holds_and_keeps_the_others() {
    let newer = w(json!({"position": 300, "rating": 4}), None, 5, "new");
    // An older device that knows nothing of `rating`, writing later.
    let old = w(json!({"position": 320}), None, 7, "old");
    let m = merged(&[newer, old], &Policy::default());
    assert_eq!(
        m.value(),
        Some(&object(json!({"position": 320, "rating": 4})))
    );
}

#[test]
fn a_named_field_the_value_lacks_is_removed_and_stays_removed_against_older_writes() {
    let set = w(json!({"note": "x", "position": 1}), None, 1, "a");
    let unset = w(json!({}), Some(&["note"]), 5, "a");
    let late = w(json!({"note": "y"}), Some(&["note"]), 3, "b");
    let m = merged(&[set, unset, late], &Policy::default());
    assert_eq!(m.value(), Some(&object(json!({"position": 1}))));
}

#[test]
fn a_stale_resume_does_not_undo_progress_made_elsewhere() {
    let progress = w(json!({"position": 900}), Some(&["position"]), 20, "tv");
    // The phone resumes from its local copy and stamps the resume with that copy's time.
    let resume = w(json!({"position": 120}), Some(&["position"]), 10, "phone");
    let m = merged(&[progress, resume], &Policy::default());
    assert_eq!(m.value(), Some(&object(json!({"position": 900}))));
}

#[test]
fn completed_stays_true_once_set_whatever_the_times_and_through_a_delete() {
    let policy = completed();
    let done = w(json!({"completed": true}), Some(&["completed"]), 5, "tv");
    let stale = w(json!({"completed": false, "position": 3}), None, 9, "phone");
    let m = merged(&[done.clone(), stale.clone()], &policy);
    assert_eq!(
        m.value(),
        Some(&object(json!({"completed": true, "position": 3})))
    );
    let delete = w(Value::Null, None, 12, "phone");
    let again = w(json!({"position": 1}), None, 15, "phone");
    let m = merged(&[done, stale, delete, again], &policy);
    assert_eq!(
        m.value(),
        Some(&object(json!({"completed": true, "position": 1})))
    );
    // Without the policy, the newer `false` wins as any field would.
    let plain = merged(
        &[
            w(json!({"completed": true}), None, 5, "tv"),
            w(json!({"completed": false}), None, 9, "phone"),
        ],
        &Policy::default(),
    );
    assert_eq!(plain.value(), Some(&object(json!({"completed": false}))));
}

#[test]
fn a_delete_removes_what_was_set_before_it_and_a_later_write_brings_the_record_back() {
    let policy = Policy::default();
    let before = w(json!({"a": 1, "b": 2}), None, 1, "x");
    let delete = w(Value::Null, None, 5, "y");
    let m = merged(&[before.clone(), delete.clone()], &policy);
    assert_eq!(m.value(), None);
    assert_eq!(m.stamps.newest(), Some(&stamp(5, "y")));
    let after = w(json!({"b": 3}), Some(&["b"]), 7, "x");
    let m = merged(&[before, delete, after], &policy);
    assert_eq!(m.value(), Some(&object(json!({"b": 3}))));
    // An empty object is a record too (a favourite holds `{}`).
    let m = merged(&[w(json!({}), None, 2, "x")], &policy);
    assert_eq!(m.value(), Some(&Map::new()));
}

#[test]
fn applying_tells_whether_anything_changed() {
    let policy = Policy::default();
    let write = w(json!({"a": 1}), None, 3, "x");
    let mut m = Merged::default();
    assert!(apply(&mut m, &write, &policy));
    assert!(!apply(&mut m, &write, &policy), "the same write again");
    assert!(!apply(&mut m, &w(json!({"a": 0}), None, 2, "x"), &policy));
    assert!(
        apply(&mut m, &w(json!({"a": 0}), None, 3, "y"), &policy),
        "ties go by client id"
    );
}

#[test]
fn stamps_round_trip_compactly() {
    let m = merged(
        &[
            w(json!({"position": 3}), None, 7, "c1"),
            w(Value::Null, None, 2, "c2"),
        ],
        &Policy::default(),
    );
    let text = serde_json::to_string(&m.stamps).unwrap();
    assert_eq!(
        text,
        r#"{"w":[7,"c1"],"d":[2,"c2"],"f":{"position":[7,"c1"]}}"#
    );
    assert_eq!(serde_json::from_str::<Stamps>(&text).unwrap(), m.stamps);
    assert_eq!(
        serde_json::from_str::<Stamps>("{}").unwrap(),
        Stamps::default()
    );
}

fn arb_write() -> impl Strategy<Value = W> {
    let names = ["a", "b", "completed"];
    let value = prop_oneof![
        Just(Value::Bool(true)),
        Just(Value::Bool(false)),
        (0..3u8).prop_map(|n| json!(n)),
    ];
    let fields = proptest::collection::btree_map(prop::sample::select(names.to_vec()), value, 0..3);
    let named = proptest::option::of(proptest::collection::vec(
        prop::sample::select(names.to_vec()),
        0..3,
    ));
    (
        proptest::bool::weighted(0.15),
        fields,
        named,
        0..6u64,
        prop::sample::select(vec!["p", "q"]),
    )
        .prop_map(|(delete, fields, named, at, client)| W {
            value: (!delete).then(|| {
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            }),
            fields: named.filter(|_| !delete).map(|n| {
                let mut n: Vec<String> = n.into_iter().map(String::from).collect();
                n.dedup();
                n
            }),
            stamp: stamp(at, client),
        })
}

/// Writes with distinct stamps: a client's stamps strictly increase (`Clock::stamp`), so one
/// stamp is one write.
fn arb_writes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<W>> {
    proptest::collection::vec(arb_write(), len).prop_map(|mut writes| {
        let mut seen = std::collections::HashSet::new();
        writes.retain(|w| seen.insert(w.stamp.clone()));
        writes
    })
}

fn policies() -> impl Strategy<Value = Policy> {
    prop_oneof![Just(Policy::default()), Just(completed())]
}

proptest! {
    /// Commutative: any order of the same writes gives one state.
    #[test]
    fn any_order_gives_one_state(
        writes in arb_writes(0..8),
        policy in policies(),
        seed in any::<u64>(),
    ) {
        let mut shuffled = writes.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(merged(&writes, &policy), merged(&shuffled, &policy));
    }

    /// Idempotent: a write applied again (a retry, a copy from another tab) changes nothing.
    #[test]
    fn a_write_again_changes_nothing(
        writes in arb_writes(1..8),
        policy in policies(),
        again in any::<prop::sample::Index>(),
    ) {
        let mut m = merged(&writes, &policy);
        let before = m.clone();
        prop_assert!(!apply(&mut m, again.get(&writes), &policy));
        prop_assert_eq!(m, before);
    }

    /// Replicas that took different writes converge when they exchange states (the join),
    /// to the state of taking all the writes.
    #[test]
    fn joined_replicas_hold_every_write(
        writes in arb_writes(0..12),
        split in any::<prop::sample::Index>(),
        policy in policies(),
    ) {
        // Two replicas took some writes each, perhaps some of the same.
        let cut = split.index(writes.len() + 1);
        let left = &writes[..cut];
        let right = &writes[cut.saturating_sub(2)..];
        let mut a = merged(left, &policy);
        let mut b = merged(right, &policy);
        let expected = merged(&writes, &policy);
        let b_before = b.clone();
        b.join(&a, &policy);
        a.join(&b_before, &policy);
        prop_assert_eq!(&a, &expected);
        prop_assert_eq!(&b, &expected);
    }

    /// Per-field newest-wins: each live non-sticky field holds the value of the newest write
    /// that named it, if that write is newer than every delete.
    #[test]
    fn each_field_holds_its_newest_write(
        writes in arb_writes(0..8),
    ) {
        let policy = Policy::default();
        let m = merged(&writes, &policy);
        let deleted = writes.iter().filter(|w| w.value.is_none()).map(|w| &w.stamp).max();
        for name in ["a", "b", "completed"] {
            let newest = writes
                .iter()
                .filter(|w| w.value.is_some())
                .filter(|w| match &w.fields {
                    Some(f) => f.iter().any(|n| n == name),
                    None => w.value.as_ref().is_some_and(|v| v.contains_key(name)),
                })
                .max_by(|x, y| x.stamp.cmp(&y.stamp))
                .filter(|w| Some(&w.stamp) > deleted);
            let expected = newest.and_then(|w| w.value.as_ref().and_then(|v| v.get(name)));
            prop_assert_eq!(m.fields.get(name), expected, "field {}", name);
        }
    }
}

#[test]
fn a_stored_record_reads_back_as_it_was_a_deleted_ones_sticky_true_included() {
    let policy = completed();
    let cases = [
        merged(
            &[w(json!({"completed": true, "p": 1}), None, 1, "a")],
            &policy,
        ),
        merged(
            &[
                w(json!({"completed": true, "p": 1}), None, 1, "a"),
                w(Value::Null, None, 2, "b"),
            ],
            &policy,
        ),
        merged(&[w(Value::Null, None, 2, "b")], &policy),
    ];
    for m in cases {
        let (value, stamps) = m.to_stored().unwrap();
        let back = Merged::from_stored(value.as_deref(), Some(&stamps), stamp(0, "")).unwrap();
        assert_eq!(back, m, "{value:?} {stamps}");
    }
    // A deleted record holds its sticky `true` in its stamps, not in its value.
    let deleted = merged(
        &[
            w(json!({"completed": true}), None, 1, "a"),
            w(Value::Null, None, 2, "b"),
        ],
        &policy,
    );
    let (value, stamps) = deleted.to_stored().unwrap();
    assert_eq!(value, None);
    assert!(stamps.contains(r#""h":{"completed":true}"#), "{stamps}");
}

#[test]
fn a_record_stored_whole_reads_as_every_field_stamped_with_its_own_stamp() {
    let own = stamp(7, "old");
    let m = Merged::from_stored(Some(r#"{"a":1,"b":2}"#), None, own.clone()).unwrap();
    assert_eq!(m.stamps.fields.get("a"), Some(&own));
    assert_eq!(m.stamps.fields.get("b"), Some(&own));
    assert_eq!(m.stamps.written, Some(own.clone()));
    let gone = Merged::from_stored(None, None, own.clone()).unwrap();
    assert_eq!(gone.value(), None);
    assert_eq!(gone.stamps.deleted, Some(own));
}
