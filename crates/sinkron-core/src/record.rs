//! Records and the newest-wins order.
//!
//! A record is the state of one `(collection, key)`: a JSON value kept as opaque text, or a
//! tombstone (`None`) so that deletes reach other devices. Of two versions of a record the
//! newer one wins, ordered by `(updated_at, client_id)`: the timestamp first, the writer's
//! client id breaking ties so every replica picks the same winner.

use alloc::string::String;
use core::cmp::Ordering;

/// Where a record lives: its collection (`history`, `favorites`, ...) and its key within it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub collection: String,
    pub key: String,
}

impl RecordKey {
    pub fn new(collection: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            collection: collection.into(),
            key: key.into(),
        }
    }
}

/// One version of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The value as JSON text (always an object on the wire), or `None` for a tombstone.
    pub value: Option<String>,
    /// Milliseconds since the Unix epoch, as stamped by the writer (and clamped by the server).
    pub updated_at: u64,
    /// The client that wrote this version; breaks ties between equal timestamps.
    pub client_id: String,
}

impl Record {
    /// The newest-wins order: `(updated_at, client_id)`.
    pub fn order(&self, other: &Record) -> Ordering {
        self.updated_at
            .cmp(&other.updated_at)
            .then_with(|| self.client_id.as_str().cmp(other.client_id.as_str()))
    }

    /// Whether `self` wins over `other`. Equal versions do not win: applying the same
    /// write twice changes nothing.
    pub fn wins_over(&self, other: &Record) -> bool {
        self.order(other) == Ordering::Greater
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: Option<&str>, updated_at: u64, client_id: &str) -> Record {
        Record {
            value: value.map(str::to_owned),
            updated_at,
            client_id: client_id.to_owned(),
        }
    }

    #[test]
    fn later_timestamp_wins_whatever_the_client() {
        assert!(rec(Some("{}"), 2, "a").wins_over(&rec(Some("{}"), 1, "z")));
        assert!(!rec(Some("{}"), 1, "z").wins_over(&rec(Some("{}"), 2, "a")));
    }

    #[test]
    fn equal_timestamps_break_ties_by_client_id() {
        assert!(rec(None, 5, "b").wins_over(&rec(Some("{}"), 5, "a")));
        assert!(!rec(Some("{}"), 5, "a").wins_over(&rec(None, 5, "b")));
    }

    /// Keeps the winner of the slot and `incoming`, as every replica does; whether it changed.
    fn merge(slot: &mut Option<Record>, incoming: Record) -> bool {
        let wins = slot
            .as_ref()
            .is_none_or(|current| incoming.wins_over(current));
        if wins {
            *slot = Some(incoming);
        }
        wins
    }

    #[test]
    fn the_same_version_twice_changes_nothing() {
        let mut slot = Some(rec(Some(r#"{"p":1}"#), 7, "a"));
        assert!(!merge(&mut slot, rec(Some(r#"{"p":1}"#), 7, "a")));
        assert!(merge(&mut slot, rec(None, 8, "a")));
        assert_eq!(slot, Some(rec(None, 8, "a")));
    }

    #[test]
    fn newest_wins_is_order_independent() {
        let versions = [
            rec(Some("1"), 3, "b"),
            rec(Some("2"), 3, "a"),
            rec(None, 2, "z"),
            rec(Some("4"), 1, "c"),
        ];
        let mut forward = None;
        let mut backward = None;
        for v in versions.iter().cloned() {
            merge(&mut forward, v);
        }
        for v in versions.iter().rev().cloned() {
            merge(&mut backward, v);
        }
        assert_eq!(forward, backward);
        assert_eq!(forward, Some(rec(Some("1"), 3, "b")));
    }
}
