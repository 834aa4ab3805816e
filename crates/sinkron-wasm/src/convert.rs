//! Every conversion from the engine's values to the JSON text the TypeScript driver reads
//! (the `Command` type of `packages/sinkron/src/types.ts`).
//!
//! A small hand-written encoder: `serde_json` and `core::fmt` would cost more of the wasm
//! budget than the whole engine. Record values are JSON text already and are embedded raw.
//! Field names follow the wire protocol (camelCase).

use alloc::string::String;
use sinkron_core::engine::{Persist, Request, Status, SyncError, TabBody, TabMessage};
use sinkron_core::{Change, Command, Mutation, Notice, Record, RecordKey};

/// A JSON text under construction.
pub(crate) struct Json(String);

impl Json {
    pub(crate) fn new() -> Self {
        Json(String::with_capacity(128))
    }

    pub(crate) fn raw(&mut self, text: &str) -> &mut Self {
        self.0.push_str(text);
        self
    }

    /// A comma, unless right after an opening brace or bracket: before a field or an item.
    pub(crate) fn comma(&mut self) -> &mut Self {
        if !matches!(self.0.as_bytes().last(), Some(b'{') | Some(b'[') | None) {
            self.0.push(',');
        }
        self
    }

    /// `"name":` (a comma first unless right after an opening brace or bracket).
    pub(crate) fn field(&mut self, name: &str) -> &mut Self {
        self.comma().string(name);
        self.0.push(':');
        self
    }

    pub(crate) fn string(&mut self, text: &str) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.0.push('"');
        for c in text.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    self.0.push_str("\\u00");
                    self.0.push(HEX[(c as usize) >> 4] as char);
                    self.0.push(HEX[(c as usize) & 0xf] as char);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
        self
    }

    pub(crate) fn opt_string(&mut self, text: Option<&str>) -> &mut Self {
        match text {
            Some(t) => self.string(t),
            None => self.raw("null"),
        }
    }

    /// A record value: JSON text embedded as is, or `null` for a tombstone.
    fn value(&mut self, value: Option<&str>) -> &mut Self {
        self.raw(value.unwrap_or("null"))
    }

    pub(crate) fn number(&mut self, n: u64) -> &mut Self {
        // The leading digits first, by recursion (at most 20 deep): a digit buffer's
        // indexing would link a bounds-check panic and its message into the module.
        if n >= 10 {
            self.number(n / 10);
        }
        self.0.push(char::from(b'0' + (n % 10) as u8));
        self
    }

    pub(crate) fn boolean(&mut self, b: bool) -> &mut Self {
        self.raw(if b { "true" } else { "false" })
    }

    /// The bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn finish(self) -> String {
        self.0
    }
}

pub(crate) fn command(j: &mut Json, command: &Command) {
    j.raw("{");
    match command {
        Command::Persist(p) => persist(j, p),
        Command::Broadcast(message) => {
            j.field("t").string("broadcast").field("message");
            tab_message(j, message);
        }
        Command::Send {
            id,
            request,
            fresh_token,
        } => {
            j.field("t").string("send").field("id").number(*id);
            j.field("freshToken").boolean(*fresh_token);
            match request {
                Request::Pull { last_sync } => {
                    j.field("kind").string("pull");
                    j.field("lastSync").opt_string(last_sync.as_deref());
                }
                Request::Push {
                    client_id,
                    mutations,
                    last_sync,
                    keepalive,
                } => {
                    j.field("kind").string("push");
                    j.field("keepalive").boolean(*keepalive);
                    j.field("body").raw("{");
                    j.field("clientId").string(client_id);
                    j.field("mutations");
                    mutation_list(j, mutations);
                    if let Some(cursor) = last_sync {
                        j.field("lastSync").string(cursor);
                    }
                    j.raw("}");
                }
                Request::EndSession { token } => {
                    j.field("kind").string("endSession");
                    j.field("token").string(token);
                }
            }
        }
        Command::Adopt { scope } => {
            j.field("t").string("adopt");
            j.field("scope").opt_string(scope.as_deref());
        }
        Command::Unpark { scope } => {
            j.field("t").string("unpark");
            j.field("scope").opt_string(scope.as_deref());
        }
        Command::Leadership(want) => {
            j.field("t")
                .string("leadership")
                .field("want")
                .boolean(*want);
        }
        Command::Pokes(on) => {
            j.field("t").string("pokes").field("on").boolean(*on);
        }
        Command::Notify(notice) => {
            j.field("t").string("notify").field("what");
            match notice {
                Notice::Changed(keys) => {
                    j.string("changed").field("keys").raw("[");
                    for key in keys.iter() {
                        j.comma();
                        j.raw("[").string(&key.collection).raw(",").string(&key.key);
                        j.raw("]");
                    }
                    j.raw("]");
                }
                Notice::Everything => {
                    j.string("everything");
                }
                Notice::Status => {
                    j.string("status");
                }
            }
        }
    }
    j.raw("}");
}

fn persist(j: &mut Json, p: &Persist) {
    match p {
        Persist::Record { scope, change } => {
            j.field("t").string("record");
            j.field("scope").opt_string(scope.as_deref());
            j.field("change");
            change_object(j, change);
        }
        Persist::ClearRecords { scope } => {
            j.field("t").string("clear");
            j.field("scope").opt_string(scope.as_deref());
        }
        Persist::Cursor { scope, cursor } => {
            j.field("t").string("cursor");
            j.field("scope").opt_string(scope.as_deref());
            j.field("cursor").opt_string(cursor.as_deref());
        }
        Persist::Outbox {
            scope,
            client_id,
            next_id,
            mutations,
        } => {
            j.field("t").string("outbox");
            j.field("scope").opt_string(scope.as_deref());
            j.field("clientId").string(client_id);
            j.field("next").number(*next_id);
            j.field("mutations");
            mutation_list(j, mutations);
        }
        Persist::DropOutbox { scope, client_id } => {
            j.field("t")
                .string("dropOutbox")
                .field("scope")
                .opt_string(scope.as_deref());
            j.field("clientId").string(client_id);
        }
        Persist::Wipe {
            scope,
            keep_pending,
        } => {
            j.field("t").string("wipe");
            j.field("scope").opt_string(scope.as_deref());
            j.field("keepPending").boolean(*keep_pending);
        }
        Persist::Adopted { scopes } => {
            j.field("t").string("adopted").field("scopes").raw("[");
            for scope in scopes.iter() {
                j.comma();
                j.opt_string(scope.as_deref());
            }
            j.raw("]");
        }
        Persist::EndingSessions { tokens } => {
            j.field("t").string("ending").field("tokens");
            string_list(j, tokens);
        }
        Persist::Evict { scope, keys } => {
            j.field("t").string("evict");
            j.field("scope").opt_string(scope.as_deref());
            j.field("keys");
            key_list(j, keys);
        }
    }
}

/// `["…", …]`.
fn string_list(j: &mut Json, items: &[String]) {
    j.raw("[");
    for item in items.iter() {
        j.comma();
        j.string(item);
    }
    j.raw("]");
}

/// `[{"collection", "key"}, …]`.
fn key_list(j: &mut Json, keys: &[RecordKey]) {
    j.raw("[");
    for key in keys.iter() {
        j.comma();
        j.raw("{").field("collection").string(&key.collection);
        j.field("key").string(&key.key).raw("}");
    }
    j.raw("]");
}

fn tab_message(j: &mut Json, message: &TabMessage) {
    j.raw("{");
    j.field("scope").opt_string(message.scope.as_deref());
    j.field("kind");
    match &message.body {
        TabBody::Wrote { id, key, record } => {
            j.string("wrote").field("id").number(*id);
            j.field("collection").string(&key.collection);
            j.field("key").string(&key.key);
            record_fields(j, record);
        }
        TabBody::Synced {
            from,
            to,
            reset,
            more,
            changes,
            gone,
        } => {
            j.string("synced");
            j.field("from").opt_string(from.as_deref());
            j.field("to").string(to);
            j.field("reset").boolean(*reset);
            j.field("more").boolean(*more);
            j.field("changes").raw("[");
            for change in changes.iter() {
                j.comma();
                change_object(j, change);
            }
            j.raw("]");
            if let Some(gone) = gone {
                j.field("gone");
                key_list(j, gone);
            }
        }
        TabBody::Acked { client_id, ack } => {
            j.string("acked");
            j.field("clientId").string(client_id);
            j.field("ack").number(*ack);
        }
        TabBody::PullWanted => {
            j.string("pullWanted");
        }
        TabBody::Unreachable => {
            j.string("unreachable");
        }
        TabBody::SignedIn => {
            j.string("signedIn");
        }
        TabBody::SignedOut => {
            j.string("signedOut");
        }
    }
    j.raw("}");
}

fn record_fields(j: &mut Json, record: &Record) {
    j.field("value").value(record.value.as_deref());
    j.field("updatedAt").number(record.updated_at);
    j.field("clientId").string(&record.client_id);
}

fn change_object(j: &mut Json, change: &Change) {
    j.raw("{");
    j.field("collection").string(&change.collection);
    j.field("key").string(&change.key);
    j.field("value").value(change.value.as_deref());
    j.field("updatedAt").number(change.updated_at);
    j.field("clientId").string(&change.client_id);
    j.field("version").number(change.version);
    j.raw("}");
}

fn mutation_list(j: &mut Json, mutations: &[Mutation]) {
    j.raw("[");
    for m in mutations.iter() {
        j.comma();
        j.raw("{");
        j.field("id").number(m.id);
        j.field("collection").string(&m.collection);
        j.field("key").string(&m.key);
        j.field("value").value(m.value.as_deref());
        j.field("updatedAt").number(m.updated_at);
        if let Some(fields) = &m.fields {
            j.field("fields");
            string_list(j, fields);
        }
        j.raw("}");
    }
    j.raw("]");
}

pub(crate) fn status(j: &mut Json, status: &Status) {
    j.raw("{");
    j.field("signedIn").boolean(status.signed_in);
    j.field("online").boolean(status.online);
    j.field("visible").boolean(status.visible);
    j.field("leader").boolean(status.leader);
    j.field("pending").number(status.pending as u64);
    j.field("syncing").boolean(status.syncing);
    j.field("lastSyncedAt");
    match status.last_synced_at {
        Some(t) => j.number(t),
        None => j.raw("null"),
    };
    j.field("error")
        .opt_string(status.error.as_ref().map(|e| match e {
            SyncError::Unreachable => "unreachable",
            SyncError::Unauthorized => "unauthorized",
            SyncError::Rejected(_) => "rejected",
        }));
    j.raw("}");
}

pub(crate) fn records(j: &mut Json, records: &[(&str, &Record)]) {
    j.raw("[");
    for (key, record) in records.iter() {
        j.comma();
        j.raw("{");
        j.field("key").string(key);
        record_fields(j, record);
        j.raw("}");
    }
    j.raw("]");
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinkron_core::RecordKey;

    fn text(c: &Command) -> String {
        let mut j = Json::new();
        command(&mut j, c);
        j.finish()
    }

    #[test]
    fn strings_are_escaped_and_values_embedded_raw() {
        let push = Command::Send {
            id: 7,
            request: Request::Push {
                client_id: "c\"1\\\n\u{1}".into(),
                mutations: vec![Mutation::new(
                    18_446_744_073_709_551_615,
                    "history".into(),
                    "é/😀".into(),
                    Some(r#"{"p":1.5}"#.into()),
                    0,
                )],
                last_sync: None,
                keepalive: true,
            },
            fresh_token: false,
        };
        assert_eq!(
            text(&push),
            r#"{"t":"send","id":7,"freshToken":false,"kind":"push","keepalive":true,"body":{"clientId":"c\"1\\\n\u0001","mutations":[{"id":18446744073709551615,"collection":"history","key":"é/😀","value":{"p":1.5},"updatedAt":0}]}}"#
        );
    }

    #[test]
    fn every_command_is_valid_json_shape() {
        let change = Change {
            collection: "likes".into(),
            key: "e1".into(),
            value: None,
            updated_at: 5,
            client_id: "c".into(),
            version: 3,
        };
        let commands = [
            Command::Persist(Persist::Record {
                scope: Some("1".into()),
                change: change.clone(),
            }),
            Command::Persist(Persist::Cursor {
                scope: None,
                cursor: None,
            }),
            Command::Broadcast(TabMessage {
                scope: Some("1".into()),
                body: TabBody::Synced {
                    from: None,
                    to: "3".into(),
                    reset: true,
                    more: false,
                    changes: vec![change.clone(), change],
                    gone: Some(vec![RecordKey::new("likes", "x")]),
                },
            }),
            Command::Notify(Notice::Changed(vec![
                RecordKey::new("likes", "a"),
                RecordKey::new("likes", "b"),
                RecordKey::new("history", "c"),
            ])),
            Command::Leadership(false),
        ];
        let texts: Vec<String> = commands.iter().map(text).collect();
        assert_eq!(
            texts[0],
            r#"{"t":"record","scope":"1","change":{"collection":"likes","key":"e1","value":null,"updatedAt":5,"clientId":"c","version":3}}"#
        );
        assert_eq!(texts[1], r#"{"t":"cursor","scope":null,"cursor":null}"#);
        assert!(texts[2].starts_with(r#"{"t":"broadcast","message":{"scope":"1","kind":"synced","from":null,"to":"3","reset":true,"more":false,"changes":[{"#));
        assert!(texts[2].ends_with(r#"],"gone":[{"collection":"likes","key":"x"}]}}"#));
        assert_eq!(
            texts[3],
            r#"{"t":"notify","what":"changed","keys":[["likes","a"],["likes","b"],["history","c"]]}"#
        );
        assert_eq!(texts[4], r#"{"t":"leadership","want":false}"#);
    }
}
