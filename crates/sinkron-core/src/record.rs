//! Records and the newest-wins order.
//!
//! A record is the state of one `(collection, key)`: a JSON value kept as opaque text, or a
//! tombstone (`None`) so that deletes reach other devices. Of two versions of a record the
//! newer one wins, ordered by `(updated_at, client_id)`: the timestamp first, the writer's
//! client id breaking ties so every replica picks the same winner.

use alloc::string::String;
#[cfg(test)]
use alloc::vec::Vec;
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

/// Whether the record value `new` holds every top-level field `old` holds (both JSON object
/// texts): where the server merges per field, a whole-record write sets the fields its value
/// holds, so `new` may take the place of `old`, unsent, only then. Fields are compared as
/// written (a name escaped another way counts as another field), and a text it cannot
/// follow holds nothing past the break, nor is one held: a doubt keeps both writes, which
/// is always safe. The engine parses no JSON otherwise; this reads no further than it must.
pub(crate) fn holds_fields_of(new: &str, old: &str) -> bool {
    let mut olds = TopFields::new(old);
    while let Some(field) = olds.next_field() {
        let mut news = TopFields::new(new);
        loop {
            match news.next_field() {
                Some(f) if f == field => break,
                Some(_) => {}
                None => return false,
            }
        }
    }
    !olds.broken
}

/// Whether the record value `value` (a JSON object text) holds the field `field` `true`,
/// written as `JSON.stringify` writes it (`"field":true`): a sticky field's `true` must reach
/// the server (see [`crate::Config::sticky`]). Read without following the text, so a nested
/// object's field counts too (which keeps a write that could have gone: safe), and one
/// written with spaces or escapes does not.
pub(crate) fn sets_true(value: &str, field: &str) -> bool {
    let value = value.as_bytes();
    (0..value.len()).any(|i| {
        value.get(i..).is_some_and(|v| {
            v.starts_with(b"\"")
                && v.get(1..).is_some_and(|v| v.starts_with(field.as_bytes()))
                && (v.get(field.len() + 1..)).is_some_and(|v| v.starts_with(b"\":true"))
        })
    })
}

/// The top-level field names of a JSON object text, quotes and escapes included, as written.
struct TopFields<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    /// A string that does not end: nothing after it is read.
    broken: bool,
}

impl<'a> TopFields<'a> {
    fn new(value: &'a str) -> Self {
        TopFields {
            bytes: value.as_bytes(),
            at: 0,
            depth: 0,
            broken: false,
        }
    }

    fn next_field(&mut self) -> Option<&'a [u8]> {
        // At the top level, the next string is a name: after `{` or `,`.
        let mut name = false;
        while let Some(&b) = self.bytes.get(self.at) {
            let start = self.at;
            self.at += 1;
            match b {
                b'"' => {
                    loop {
                        match self.bytes.get(self.at) {
                            Some(b'"') => break,
                            Some(b'\\') => self.at += 2,
                            Some(_) => self.at += 1,
                            None => {
                                self.broken = true;
                                return None;
                            }
                        }
                    }
                    self.at += 1;
                    if name && self.depth == 1 {
                        return self.bytes.get(start..self.at);
                    }
                    name = false;
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    name = self.depth == 1;
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' => name = self.depth == 1,
                _ => {}
            }
        }
        None
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

    fn fields(value: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut fields = TopFields::new(value);
        while let Some(f) = fields.next_field() {
            names.push(String::from_utf8_lossy(f).into_owned());
        }
        names
    }

    #[test]
    fn a_value_s_top_level_fields_are_read_as_written() {
        assert_eq!(fields("{}"), Vec::<String>::new());
        assert_eq!(
            fields(r#" { "a" : 1 , "b":{"c":[{"d":2}],"e":"}"}, "f\"g":[1,{"h":3}], "i":"," } "#),
            [r#""a""#, r#""b""#, r#""f\"g""#, r#""i""#]
        );
        // A text it cannot follow: what came before the break.
        assert_eq!(fields(r#"{"a":1,"b"#), [r#""a""#]);
        assert_eq!(fields(r#"{"a":"\"#), [r#""a""#]);
    }

    #[test]
    fn a_value_holds_a_field_true_as_json_stringify_writes_it() {
        assert!(sets_true(r#"{"a":1,"done":true}"#, "done"));
        assert!(!sets_true(r#"{"done":false}"#, "done"));
        assert!(!sets_true(r#"{"done":"true"}"#, "done"));
        assert!(!sets_true(r#"{"undone":true}"#, "done"));
        assert!(!sets_true(r#"{"done2":true}"#, "done"));
        assert!(!sets_true(r#"{"note":"\"done\":true"}"#, "done"));
        assert!(!sets_true("{}", "done"));
        // Not followed: a nested field counts too (a write kept that could have gone: safe).
        assert!(sets_true(r#"{"x":{"done":true}}"#, "done"));
        // Written with spaces or escapes, it is not found.
        assert!(!sets_true(r#"{"done" : true}"#, "done"));
        assert!(!sets_true(r#"{"d\u006fne":true}"#, "done"));
    }

    #[test]
    fn a_value_holds_another_s_fields_when_it_has_each_of_them_at_the_top() {
        assert!(holds_fields_of(r#"{"b":2,"a":1}"#, r#"{"a":0,"b":0}"#));
        assert!(holds_fields_of(r#"{"a":1}"#, "{}"));
        assert!(!holds_fields_of(r#"{"a":1}"#, r#"{"a":1,"b":2}"#));
        // Nested or inside a string is not at the top.
        assert!(!holds_fields_of(
            r#"{"x":{"b":1},"a":1}"#,
            r#"{"a":1,"b":2}"#
        ));
        assert!(!holds_fields_of(r#"{"a":"\"b\":1"}"#, r#"{"a":1,"b":2}"#));
        // An unreadable text holds nothing beyond where it broke, and one whose fields
        // cannot all be read is held by none.
        assert!(!holds_fields_of(r#"{"a":1,"b"#, r#"{"a":1,"b":2}"#));
        assert!(!holds_fields_of(r#"{"a":1,"b":2}"#, r#"{"a":1,"b"#));
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
