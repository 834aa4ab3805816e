//! Per-field merge: the rule of a collection whose records are merged field by field instead
//! of whole (newest-wins per field), for the server and every replica that applies writes.
//!
//! A record of such a collection is a JSON object whose top-level fields are registers of
//! their own. Each write names the fields it sets ([`crate::Mutation::fields`]; a write of
//! the whole-record format, without the list, sets every field its value holds); of two
//! writes of one field the newer wins, ordered by `(updatedAt, clientId)` as whole records
//! are. So a like toggled on the phone and a position advanced on the TV both survive. A
//! *sticky* field (`completed`) keeps `true` once any write set it, whatever the times. A
//! field a write names but its value lacks is removed (and stays removed against older
//! writes). A delete removes the record: every field set at or before it goes; a later write
//! brings the record back with what that write (and later ones) set.
//!
//! The merged state is a join-semilattice (a product of max-registers), so applying the same
//! writes in any order, any number of times, gives one state: every replica converges. What
//! a record stores beside its visible value is its [`Stamps`]: each field's newest stamp, the
//! newest write's and the newest delete's.
//!
//! It parses values, so it lives behind the `serde` feature: the server and the simulation
//! apply it; the browser's engine shows its own pending writes over the server's record.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[cfg(feature = "planted-bugs")]
use crate::planted::{planted, Bug};

/// A write's place in the newest-wins order: `(updatedAt, clientId)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp(pub u64, pub String);

/// What a record merged per field keeps beside its visible value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamps {
    /// The newest write that was not a delete.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Stamp>,
    /// The newest delete: fields set at or before it are gone (but a sticky `true`).
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Stamp>,
    /// Each field's newest write, removed fields included (absent from the value).
    #[serde(rename = "f", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Stamp>,
    /// In storage only: the fields a deleted record still holds (its sticky `true`s), which
    /// its value (`null`) cannot. Empty in a [`Merged`].
    #[serde(rename = "h", default, skip_serializing_if = "Map::is_empty")]
    pub held: Map<String, Value>,
}

impl Stamps {
    /// The record's own place in the newest-wins order: its newest write or delete.
    pub fn newest(&self) -> Option<&Stamp> {
        self.written.as_ref().max(self.deleted.as_ref())
    }

    /// Whether the record holds a value (a write newer than every delete).
    pub fn live(&self) -> bool {
        self.written.as_ref() > self.deleted.as_ref()
    }
}

/// A record of a per-field collection: its fields (the visible value's, live or not) and
/// their stamps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merged {
    pub fields: Map<String, Value>,
    pub stamps: Stamps,
}

/// One write to merge: its value (`None`: a delete), the fields it sets (`None`: every field
/// of its value, the whole-record format) and its stamp.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    pub value: Option<&'a Map<String, Value>>,
    pub fields: Option<&'a [String]>,
    pub stamp: &'a Stamp,
}

/// How a collection is merged per field: which fields are sticky (`true` once set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub sticky: Vec<String>,
}

impl Merged {
    /// A record as stored: its value (`None`: a tombstone) and stamps column (`None`: stored
    /// whole, so every field takes the record's own stamp, `own`).
    pub fn from_stored(
        value: Option<&str>,
        stamps: Option<&str>,
        own: Stamp,
    ) -> Result<Merged, serde_json::Error> {
        let fields: Map<String, Value> = match value {
            Some(text) => serde_json::from_str(text)?,
            None => Map::new(),
        };
        let stamps = match stamps {
            Some(text) => serde_json::from_str(text)?,
            None if value.is_some() => Stamps {
                fields: fields.keys().map(|k| (k.clone(), own.clone())).collect(),
                written: Some(own),
                ..Stamps::default()
            },
            None => Stamps {
                deleted: Some(own),
                ..Stamps::default()
            },
        };
        let mut merged = Merged { fields, stamps };
        if value.is_none() {
            merged.fields = core::mem::take(&mut merged.stamps.held);
        }
        merged.stamps.held.clear();
        Ok(merged)
    }

    /// The record to store: its value (`None`: a tombstone) and stamps column.
    pub fn to_stored(&self) -> Result<(Option<String>, String), serde_json::Error> {
        let value = self.value().map(serde_json::to_string).transpose()?;
        let stamps = if value.is_none() && !self.fields.is_empty() {
            let mut stamps = self.stamps.clone();
            stamps.held = self.fields.clone();
            serde_json::to_string(&stamps)?
        } else {
            serde_json::to_string(&self.stamps)?
        };
        Ok((value, stamps))
    }

    /// The value to show and send: the fields as an object while the record is live, else
    /// `None` (a tombstone).
    pub fn value(&self) -> Option<&Map<String, Value>> {
        self.stamps.live().then_some(&self.fields)
    }

    /// Applies one write; whether anything changed.
    pub fn apply(&mut self, write: Write<'_>, policy: &Policy) -> bool {
        let before = (self.stamps.clone(), self.fields.clone());
        let stamp = write.stamp;
        match write.value {
            None => {
                if self.stamps.deleted.as_ref() < Some(stamp) {
                    self.stamps.deleted = Some(stamp.clone());
                    self.forget_deleted(policy);
                }
            }
            Some(value) => {
                if self.stamps.written.as_ref() < Some(stamp) {
                    self.stamps.written = Some(stamp.clone());
                }
                let all: Vec<String>;
                let names = match write.fields {
                    Some(names) => names,
                    None => {
                        all = value.keys().cloned().collect();
                        &all
                    }
                };
                for name in names {
                    self.set(name, value.get(name), stamp, policy);
                }
            }
        }
        (self.stamps.clone(), self.fields.clone()) != before
    }

    /// Merges another replica's state into this one (the join of the two).
    pub fn join(&mut self, other: &Merged, policy: &Policy) {
        if self.stamps.written < other.stamps.written {
            self.stamps.written.clone_from(&other.stamps.written);
        }
        if self.stamps.deleted < other.stamps.deleted {
            self.stamps.deleted.clone_from(&other.stamps.deleted);
        }
        for (name, stamp) in &other.stamps.fields {
            self.set(name, other.fields.get(name), stamp, policy);
        }
        self.forget_deleted(policy);
    }

    /// Sets field `name` to `value` (`None`: removed) at `stamp`, if that wins its register.
    fn set(&mut self, name: &str, value: Option<&Value>, stamp: &Stamp, policy: &Policy) {
        let held = self.stamps.fields.get(name);
        #[cfg(feature = "planted-bugs")]
        if planted(Bug::MergeTwice) && held == Some(stamp) {
            self.fields.remove(name);
            return;
        }
        #[cfg(feature = "planted-bugs")]
        let held = held.filter(|_| !planted(Bug::MergeArrival));
        #[cfg(feature = "planted-bugs")]
        let deleted = self
            .stamps
            .deleted
            .as_ref()
            .filter(|_| !planted(Bug::MergeOrder));
        #[cfg(not(feature = "planted-bugs"))]
        let deleted = self.stamps.deleted.as_ref();
        let sticky = policy.is_sticky(name);
        // A sticky field's `true` outranks its other values, and outlives deletes.
        let wins = if sticky && is_true(value) {
            (true, Some(stamp)) > (is_true(self.fields.get(name)), held)
        } else {
            Some(stamp) > deleted
                && Some(stamp) > held
                && !(sticky && is_true(self.fields.get(name)))
        };
        if !wins {
            return;
        }
        self.stamps.fields.insert(name.into(), stamp.clone());
        match value {
            Some(v) => {
                self.fields.insert(name.into(), v.clone());
            }
            None => {
                self.fields.remove(name);
            }
        }
    }

    /// Drops the fields set at or before the newest delete, but a sticky `true`.
    fn forget_deleted(&mut self, policy: &Policy) {
        let Some(deleted) = self.stamps.deleted.clone() else {
            return;
        };
        let fields = &mut self.fields;
        self.stamps.fields.retain(|name, stamp| {
            let keep = *stamp > deleted || (policy.is_sticky(name) && is_true(fields.get(name)));
            if !keep {
                fields.remove(name);
            }
            keep
        });
    }
}

fn is_true(value: Option<&Value>) -> bool {
    value == Some(&Value::Bool(true))
}

impl Policy {
    fn is_sticky(&self, name: &str) -> bool {
        self.sticky.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod tests;
