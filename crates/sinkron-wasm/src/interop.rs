//! The one door between the TypeScript driver and the engine.
//!
//! Every call is a JSON object `{"t": name, …}` (the `Call` type in
//! `packages/sinkron/src/types.ts`), plus, for a `reply`, the server's answer as the raw
//! body text. Each call is decoded here in full, with a typed error naming the bad field,
//! before the engine sees any of it (what the device stored, and other tabs' messages, are
//! read leniently instead: an item the engine cannot read is left out, see [`stored`]); then
//! the engine acts, and everything it asks for comes back in the one answer:
//!
//! `{"r": result, "c": [command, …], "at": next deadline in ms or -1}`, or
//! `{"e": {"code", "message"}}` when the call was refused (nothing happened then).
//!
//! The answer is one JSON text the driver parses once; record values pass through as the
//! JSON text they arrived as. Decisions stay in the core: this file only reads and writes.

use crate::convert::{self, Json};
use crate::json::{self, check, invalid, refuse, Invalid, Node};
use alloc::string::String;
use alloc::vec::Vec;
use sinkron_core::adopt::adoption_order;
use sinkron_core::engine::{Failure, Page, Reply, TabBody, TabMessage, WriteError};
use sinkron_core::{Change, Config, Engine, Mutation, Record, RecordKey};

/// Runs one call on the engine in `slot` (created by the `init` call).
pub(crate) fn call(slot: &mut Option<Engine>, input: &str, body: &str) -> String {
    json::reset();
    let mut j = Json::new();
    j.raw("{\"r\":");
    let start = j.len();
    let outcome = json::parse(input).map_err(Refusal::from);
    match outcome.and_then(|call| run(slot, &call, body, &mut j)) {
        // A call without a result (most have none) writes nothing: its `null` is written
        // here once rather than in every such call (smaller module).
        Ok(()) if j.len() == start => {
            j.raw("null");
        }
        Ok(()) => {}
        Err(Refusal::Invalid) => {
            let e = json::last_error();
            return refusal("invalid_call", &[e.field, ": expected ", e.expected]);
        }
        Err(Refusal::Write(code)) => return refusal(code, &["the write was refused: ", code]),
        Err(Refusal::NotStarted) => return refusal("not_started", &["no init call yet"]),
    }
    j.raw(",\"c\":[");
    if let Some(engine) = slot {
        while let Some(command) = engine.poll_command() {
            convert::command(j.comma(), &command);
        }
        j.raw("],\"at\":");
        match engine.poll_timeout() {
            Some(at) => j.number(at),
            None => j.raw("-1"),
        };
    } else {
        j.raw("],\"at\":-1");
    }
    j.raw("}");
    j.finish()
}

enum Refusal {
    /// The call could not be read: [`json::last_error`] says why.
    Invalid,
    Write(&'static str),
    NotStarted,
}

impl From<Invalid> for Refusal {
    fn from(_: Invalid) -> Self {
        Refusal::Invalid
    }
}

/// `{"e":{"code","message"}}`: the parts of the message are field names and plain words,
/// which need no escaping.
fn refusal(code: &str, message: &[&str]) -> String {
    let mut j = Json::new();
    j.raw("{\"e\":{\"code\":\"")
        .raw(code)
        .raw("\",\"message\":\"");
    for part in message {
        j.raw(part);
    }
    j.raw("\"}}");
    j.finish()
}

/// Decodes and runs one call; writes its result to `j`, nothing when it has none. Each call
/// is read whole and [`check`]ed before the engine sees any of it.
fn run(
    slot: &mut Option<Engine>,
    call: &Node<'_>,
    body: &str,
    j: &mut Json,
) -> Result<(), Refusal> {
    let name = call.str("t");
    if name == "init" {
        // Once: an engine is never replaced (nor dropped, see `lib.rs`).
        if slot.is_some() {
            return Err(refuse("t", "one init call").into());
        }
        *slot = Some(init(call)?);
        return Ok(());
    }
    // Every call but `init` carries the time (the driver adds it to each alike).
    let now = call.u64("now");
    check()?;
    let engine = slot.as_mut().ok_or(Refusal::NotStarted)?;
    match name {
        // ----- what the UI reads -----
        "clientId" => {
            j.string(engine.client_id());
        }
        "user" => {
            j.opt_string(engine.user());
        }
        "status" => convert::status(j, &engine.status()),
        "collection" => {
            // With `key`, that record alone (the one a change notice named).
            let name = call.str("name");
            let key = call.opt_str("key");
            check()?;
            convert::records(j, &engine.records(name, key));
        }
        // ----- what the app does -----
        "write" => {
            let collection = call.str("collection");
            let key = call.str("key");
            check()?;
            // Only an object (or null, a delete) is a record value.
            let value = call.value("value");
            check().map_err(|_| Refusal::Write(WriteError::InvalidValue.code()))?;
            // The fields it sets, for a collection merged per field (absent: all of them).
            let fields = call.opt_strings("fields");
            check().map_err(|_| Refusal::Write(WriteError::InvalidFields.code()))?;
            engine
                .write_fields(now, collection, key, value, fields)
                .map_err(|e| Refusal::Write(e.code()))?;
        }
        "signIn" => {
            let user = call.str("user");
            check()?;
            engine.sign_in(now, user);
        }
        "signOut" => {
            // A session of Sinkron's own accounts, which the server is to end too.
            let end = call.opt_str("endSession");
            let discard = call.bool("discard");
            check()?;
            // How many writes were queued: flushed, and parked unless discarded.
            let queued = engine.sign_out(now, discard);
            if let Some(token) = end {
                engine.end_session(now, token.into());
            }
            j.number(queued as u64);
        }
        "pushNow" => {
            engine.push_now(now);
        }
        // ----- restoring a device's stored state, before any event -----
        "restore" => {
            let user = call.opt_str("user");
            let cursor = call.opt_str("cursor");
            let partial = call.bool("partial");
            let ending = call.opt_strings("ending").unwrap_or_default();
            let adopted = list(call, "adopted", |n| n.opt_string_value("adopted"));
            check()?;
            let records = stored(call, "records", change)?;
            engine.restore_adopted(adopted);
            engine.restore_user(user.map(Into::into));
            for record in records {
                engine.restore_record(record);
            }
            engine.restore_cursor(cursor.map(Into::into), !partial);
            engine.restore_ending_sessions(ending);
        }
        "adoptionOrder" => {
            let previous = call.opt_str("previous");
            // An outbox whose numbering cannot be read (another version's, or damaged) has
            // none, and without it a tab must keep its fresh id (it could reuse ids the
            // server acknowledged): it is not a candidate. Its writes are a closed tab's,
            // taken over by the leader (`unpark`, which needs no numbering).
            let mut stored = Vec::new();
            for n in call.items("stored") {
                if n.get("next")
                    .and_then(|next| json::whole_number(next.raw))
                    .is_some()
                {
                    stored.push((n.string("clientId"), n.items("mutations").len()));
                }
            }
            let owners_known = call.bool("ownersKnown");
            check()?;
            j.raw("[");
            let order = adoption_order(previous, &stored, owners_known);
            for (id, _) in order.iter().filter_map(|&i| stored.get(i)) {
                j.comma().string(id);
            }
            j.raw("]");
        }
        // A stored outbox: this tab's own after a reload, or one parked by a sign-out.
        "restoreOutbox" | "unpark" => {
            let client_id = call.string("clientId");
            let unpark = name == "unpark";
            // Taken over as a closed tab's writes, an outbox's numbering is not used.
            let next = if unpark { 0 } else { call.u64("next") };
            // The scope it was stored in (null: the guest's).
            let scope = call.opt_str("scope");
            check()?;
            let mutations = stored(call, "mutations", mutation)?;
            if unpark {
                engine.unpark(now, scope.map(Into::into), client_id, mutations);
            } else {
                engine.restore_outbox(client_id, next, mutations);
            }
        }
        "adopt" => {
            let scope = call.opt_str("scope");
            let records = list(call, "records", |n| {
                (record_key(n), n.value("value"), n.opt_u64("updatedAt"))
            });
            check()?;
            engine
                .adopt(now, scope, records)
                .map_err(|e| Refusal::Write(e.code()))?;
        }
        "storageFull" => {
            let scope = call.opt_str("scope");
            check()?;
            j.boolean(engine.handle_storage_full(scope));
        }
        // ----- events -----
        "timeout" => {
            engine.handle_timeout(now);
        }
        "visibility" => {
            let visible = call.bool("visible");
            check()?;
            engine.handle_visibility(now, visible);
        }
        "focus" => {
            engine.handle_focus(now);
        }
        "online" => {
            let online = call.bool("online");
            check()?;
            engine.handle_online(now, online);
        }
        "leadership" => {
            let leader = call.bool("leader");
            check()?;
            engine.handle_leadership(now, leader);
        }
        // The answer to a request; or, with `snapshot` (a user id) in place of `id`, the
        // state the page was rendered from: the answer to a pull without a cursor that the
        // site's server got for that user (`kind` "pull", `status` 200), taken as this tab's
        // own pull if it is the signed-in user's (the result says whether). A snapshot that
        // cannot be read is not taken.
        "reply" => {
            let user = call.opt_str("snapshot");
            let id = if user.is_some() { 0 } else { call.u64("id") };
            // `Sinkron-Poll-Interval`, whole seconds; anything else is not a hint.
            let interval = seconds_ms(call.opt_str("pollInterval"));
            let reply = reply(call, body)?;
            if let Some(user) = user {
                let taken = match reply {
                    Reply::Pulled(page) => engine.handle_snapshot(now, user, page),
                    _ => false,
                };
                j.boolean(taken);
                return Ok(());
            }
            if let Some(ms) = interval {
                engine.handle_poll_interval(ms);
            }
            engine.handle_reply(now, id, reply);
        }
        // A poke's `version`, or, without one, the stream's end with its answer's `status`.
        "poke" => {
            let version = call.opt_u64("version");
            let status = if version.is_none() {
                call.u64("status")
            } else {
                0
            };
            check()?;
            match version {
                Some(version) => engine.handle_poke(now, version),
                None => engine.handle_pokes_ended(now, status as u16),
            }
        }
        // A message this tab cannot read (another version's, say) is not for it: ignored.
        "tab" => {
            let message = tab_message(call.field("message"));
            if check().is_ok() {
                engine.handle_tab_message(now, message);
            }
        }
        _ => return Err(refuse("t", "a call name").into()),
    }
    Ok(())
}

fn init(call: &Node<'_>) -> Result<Engine, Invalid> {
    let mut config = Config::default();
    if let Some(interval) = call.opt_u64("interval").filter(|&ms| ms > 0) {
        config.interval_ms = interval;
    }
    let switch = |name, default: bool| call.opt_bool(name).unwrap_or(default);
    config.adopt_legacy = switch("adoptLegacy", false);
    config.pull_on_sign_in = switch("pullOnSignIn", config.pull_on_sign_in);
    config.pull_on_focus = switch("pullOnFocus", config.pull_on_focus);
    config.pull_on_online = switch("pullOnOnline", config.pull_on_online);
    config.pokes = switch("pokes", false);
    // The app's hot collections replace the preset (`[]`: none).
    if call.get("hot").is_some() {
        config.hot = list(call, "hot", |n| (n.string("collection"), n.u64("every")));
    }
    if let Some(sticky) = call.opt_strings("sticky") {
        config.sticky = sticky;
    }
    // Two 32-bit halves from `crypto.getRandomValues`.
    let seed = call.u64("seedHigh") << 32 | call.u64("seedLow");
    check()?;
    Ok(Engine::new(config, seed))
}

/// The server's answer to a request: `status` 0 for no answer at all, 304, a 2xx with the
/// page in `body`, or an error with the protocol's error body. What the body holds is the
/// server's, not the call's: a body that cannot be read is no answer, never a refused call.
fn reply(call: &Node<'_>, body: &str) -> Result<Reply, Invalid> {
    let status = call.u64("status");
    let kind = call.str("kind");
    // `Retry-After` in whole seconds (an HTTP date is not used by the server).
    let retry_after_ms = seconds_ms(call.opt_str("retryAfter")).filter(|&ms| ms > 0);
    check()?;
    let push = match kind {
        "push" | "endSession" => true,
        "pull" => false,
        _ => return Err(refuse("kind", "pull, push or endSession")),
    };
    let status = u16::try_from(status).map_err(|_| refuse("status", "an HTTP status"))?;
    if status == 304 {
        return Ok(Reply::NotModified);
    }
    if kind == "endSession" && (200..300).contains(&status) {
        return Ok(Reply::Done);
    }
    let parsed = json::parse(body).ok();
    let answer = if (200..300).contains(&status) {
        // An answer that cannot be read is no answer: retried like a network failure.
        match parsed.as_ref().map(|b| page(b, push)) {
            Some(reply) if check().is_ok() => reply,
            _ => Reply::Failed(Failure::Network),
        }
    } else {
        let error = parsed.as_ref().and_then(|b| b.get("error"));
        let code = error.and_then(|e| e.opt_str("code"));
        let ack = error.and_then(|e| e.opt_u64("ack"));
        // The write a push's 422 names as refused: set aside, the others pushed again.
        let mutation = error.and_then(|e| e.opt_u64("mutation"));
        Reply::Failed(Failure::from_status(
            status,
            retry_after_ms,
            ack,
            code,
            mutation,
        ))
    };
    json::reset();
    Ok(answer)
}

/// A header of whole seconds (`fetch` hands it trimmed), in ms; `None` for anything else.
fn seconds_ms(header: Option<&str>) -> Option<u64> {
    // At most 2^53-1 s, so the product fits.
    json::whole_number(header?).map(|s| s * 1000)
}

fn page(body: &Node<'_>, push: bool) -> Reply {
    let page = Page {
        cursor: body.string("cursor"),
        changes: list(body, "changes", change),
        more: body.bool("more"),
        reset: body.opt_bool("reset").unwrap_or(false),
        server_time: body.u64("serverTime"),
    };
    if push {
        let ack = body.opt_u64("ack").unwrap_or(0);
        Reply::Pushed { ack, page }
    } else {
        Reply::Pulled(page)
    }
}

fn tab_message(m: &Node<'_>) -> TabMessage {
    let scope = m.opt_str("scope").map(Into::into);
    let body = match m.str("kind") {
        "wrote" => TabBody::Wrote {
            id: m.u64("id"),
            key: record_key(m),
            record: Record {
                value: m.value("value"),
                updated_at: m.u64("updatedAt"),
                client_id: m.string("clientId"),
            },
        },
        "synced" => TabBody::Synced {
            from: m.opt_str("from").map(Into::into),
            to: m.string("to"),
            reset: m.bool("reset"),
            // Absent from a tab of an older version: its pages were applied as they came.
            more: m.opt_bool("more").unwrap_or(false),
            changes: list(m, "changes", change),
            gone: m.get("gone").map(|_| list(m, "gone", record_key)),
        },
        "acked" => TabBody::Acked {
            client_id: m.string("clientId"),
            ack: m.u64("ack"),
        },
        "pullWanted" => TabBody::PullWanted,
        "unreachable" => TabBody::Unreachable,
        "signedIn" => TabBody::SignedIn,
        "signedOut" => TabBody::SignedOut,
        _ => {
            invalid("kind", "a tab message kind");
            TabBody::PullWanted
        }
    };
    TabMessage { scope, body }
}

fn change(n: &Node<'_>) -> Change {
    Change {
        collection: n.string("collection"),
        key: n.string("key"),
        value: n.value("value"),
        updated_at: n.u64("updatedAt"),
        client_id: n.string("clientId"),
        version: n.u64("version"),
    }
}

fn mutation(n: &Node<'_>) -> Mutation {
    Mutation {
        id: n.u64("id"),
        collection: n.string("collection"),
        key: n.string("key"),
        value: n.value("value"),
        updated_at: n.u64("updatedAt"),
        fields: n.opt_strings("fields"),
    }
}

fn record_key(n: &Node<'_>) -> RecordKey {
    RecordKey::new(n.str("collection"), n.str("key"))
}

/// The array field `name` of what the device stores (its records, an outbox), each item read
/// by `read` once everything before is checked: an item that cannot be read (stored by
/// another version of the app, or damaged) is left out rather than the call refused, so a
/// page starts whatever its storage holds; it goes from storage when what holds it is next
/// stored (the outbox, the record's key) or cleared. (Out of
/// line: inlined, it tipped the inlining of the whole decoder, +0.3 kB gzip.)
#[inline(never)]
fn stored<T>(
    node: &Node<'_>,
    name: &'static str,
    read: fn(&Node<'_>) -> T,
) -> Result<Vec<T>, Invalid> {
    let mut out = Vec::new();
    for item in node.items(name) {
        let value = read(item);
        if check().is_ok() {
            out.push(value);
        }
        json::reset();
    }
    // Not an array at all: the call itself is wrong.
    check()?;
    Ok(out)
}

/// The array field `name`, each item read by `read`.
fn list<T>(node: &Node<'_>, name: &'static str, read: fn(&Node<'_>) -> T) -> Vec<T> {
    // A loop, not `collect`: that is a copy of `Vec`'s extension code per item type.
    let mut out = Vec::new();
    for item in node.items(name) {
        out.push(read(item));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    const NOW: u64 = 1_800_000_000_000;

    fn started() -> Option<Engine> {
        let mut slot = None;
        let answer = call(
            &mut slot,
            r#"{"t":"init","interval":30000,"seedHigh":4294967295,"seedLow":7}"#,
            "",
        );
        assert_eq!(answer, r#"{"r":null,"c":[],"at":-1}"#);
        slot
    }

    /// Runs a call and returns its answer's commands as `(t, the command's JSON)`, failing
    /// on a refusal.
    fn run_ok(slot: &mut Option<Engine>, input: &str, body: &str) -> Vec<(String, String)> {
        let answer = call(slot, input, body);
        let node = json::parse(&answer).unwrap();
        assert!(node.get("e").is_none(), "{input} was refused: {answer}");
        node.items("c")
            .iter()
            .map(|c| (c.string("t"), c.raw.into()))
            .collect()
    }

    /// The `reply` call of an answer to request `id` without headers.
    fn reply_call(id: u64, kind: &str, status: u16) -> String {
        format!(
            r#"{{"t":"reply","now":{NOW},"id":{id},"kind":"{kind}","status":{status},"retryAfter":null}}"#
        )
    }

    /// The first `send` among the commands: its id and JSON.
    fn sent(commands: &[(String, String)]) -> (u64, String) {
        let (_, text) = commands.iter().find(|(t, _)| t == "send").expect("a send");
        (json::parse(text).unwrap().u64("id"), text.clone())
    }

    fn status(slot: &mut Option<Engine>) -> String {
        let answer = call(slot, r#"{"t":"status","now":1}"#, "");
        json::parse(&answer).unwrap().field("r").raw.into()
    }

    /// A signed-in engine that has its first pull in flight: the pull's id.
    fn pulling(slot: &mut Option<Engine>) -> u64 {
        run_ok(
            slot,
            &format!(r#"{{"t":"online","now":{NOW},"online":true}}"#),
            "",
        );
        run_ok(
            slot,
            &format!(r#"{{"t":"visibility","now":{NOW},"visible":true}}"#),
            "",
        );
        let commands = run_ok(
            slot,
            &format!(r#"{{"t":"signIn","now":{NOW},"user":"7"}}"#),
            "",
        );
        if let Some((_, leadership)) = commands.iter().find(|(t, _)| t == "leadership") {
            assert!(leadership.contains("true"));
            let commands = run_ok(
                slot,
                &format!(r#"{{"t":"leadership","now":{NOW},"leader":true}}"#),
                "",
            );
            return sent(&commands).0;
        }
        sent(&commands).0
    }

    #[test]
    fn a_bad_number_is_refused_and_nothing_happens() {
        let mut slot = started();
        let before = status(&mut slot);
        // What `JSON.stringify` makes of NaN (null), a negative and a fraction.
        for now in ["null", "-1", "1.5", "1e3", "9007199254740992", "\"5\""] {
            let input = format!(
                r#"{{"t":"write","now":{now},"collection":"likes","key":"a","value":{{}}}}"#
            );
            let answer = call(&mut slot, &input, "");
            let expected = if now == "null" {
                "now: expected a value"
            } else {
                "now: expected a whole number from 0 to 2^53-1"
            };
            assert_eq!(
                answer,
                format!(r#"{{"e":{{"code":"invalid_call","message":"{expected}"}}}}"#)
            );
        }
        assert_eq!(status(&mut slot), before, "no write was taken");
    }

    #[test]
    fn malformed_and_unknown_calls_are_refused_with_what_was_wrong() {
        let mut slot = None;
        assert_eq!(
            call(&mut slot, r#"{"t":"status","now":1}"#, ""),
            r#"{"e":{"code":"not_started","message":"no init call yet"}}"#
        );
        let mut slot = started();
        for (input, message) in [
            ("{", "json: expected a JSON text"),
            (r#"{"t":"fly","now":1}"#, "t: expected a call name"),
            (r#"{"now":1}"#, "t: expected a value"),
            // Every call but init carries the time.
            (r#"{"t":"status"}"#, "now: expected a value"),
            (
                r#"{"t":"online","now":1,"online":"yes"}"#,
                "online: expected true or false",
            ),
            (
                r#"{"t":"restore","now":1,"records":[]}"#,
                "partial: expected a value",
            ),
            (
                r#"{"t":"restore","now":1,"partial":false,"records":{}}"#,
                "records: expected an array",
            ),
            (
                r#"{"t":"restoreOutbox","now":1,"clientId":"c","next":1,"mutations":5}"#,
                "mutations: expected an array",
            ),
            (
                r#"{"t":"reply","now":1,"id":1,"kind":"poll","status":200}"#,
                "kind: expected pull, push or endSession",
            ),
            // The engine is never replaced: a client instantiates the module anew.
            (
                r#"{"t":"init","seedHigh":1,"seedLow":2}"#,
                "t: expected one init call",
            ),
        ] {
            let answer = call(&mut slot, input, "");
            assert_eq!(
                answer,
                format!(r#"{{"e":{{"code":"invalid_call","message":"{message}"}}}}"#),
                "{input}"
            );
        }
    }

    #[test]
    fn stored_items_that_cannot_be_read_are_left_out_and_the_rest_restored() {
        let mut slot = started();
        // A record without its version and one whose value is no object, beside one that is
        // fine: the page starts with the one it can read.
        let restore = r#"{"t":"restore","now":1,"user":"7","cursor":"4","partial":false,"records":[
            {"collection":"likes","key":"a","value":{"like":1},"updatedAt":1,"clientId":"c"},
            {"collection":"likes","key":"b","value":{"like":1},"updatedAt":1,"clientId":"c","version":2},
            {"collection":"likes","key":"c","value":5,"updatedAt":1,"clientId":"c","version":3}]}"#;
        run_ok(&mut slot, restore, "");
        let answer = call(
            &mut slot,
            r#"{"t":"collection","now":1,"name":"likes"}"#,
            "",
        );
        assert!(answer.contains(r#""key":"b""#), "{answer}");
        assert!(
            !answer.contains(r#""key":"a""#) && !answer.contains(r#""key":"c""#),
            "{answer}"
        );
        // An outbox with a write of a negative time: the others are still queued.
        let outbox = r#"{"t":"restoreOutbox","now":1,"clientId":"c1","next":4,"mutations":[
            {"id":1,"collection":"likes","key":"d","value":{"like":1},"updatedAt":-5},
            {"id":2,"collection":"likes","key":"e","value":{"like":1},"updatedAt":5},
            {"id":3,"collection":"likes","key":"f","value":[1],"updatedAt":5}]}"#;
        run_ok(&mut slot, outbox, "");
        assert!(
            status(&mut slot).contains(r#""pending":1"#),
            "{}",
            status(&mut slot)
        );
        // A tab message it cannot read (another version's) is ignored, not refused.
        let answer = call(
            &mut slot,
            r#"{"t":"tab","now":1,"message":{"scope":"7","kind":"shout"}}"#,
            "",
        );
        assert!(answer.starts_with(r#"{"r":null,"c":[]"#), "{answer}");
    }

    #[test]
    fn an_outbox_whose_numbering_cannot_be_read_is_never_taken_as_a_tabs_own_but_its_writes_are_taken_over(
    ) {
        let mut slot = started();
        run_ok(
            &mut slot,
            r#"{"t":"restore","now":1,"user":"7","cursor":null,"partial":false,"records":[]}"#,
            "",
        );
        // The tab's own previous outbox, holding a write, but numbered by another version
        // (or damaged): not a candidate, so the tab keeps a fresh id; a sound one is.
        let write = r#"[{"id":1,"collection":"likes","key":"a","value":{"like":1},"updatedAt":5}]"#;
        let mut probe = started();
        let mut order = |next: &str| {
            let input = format!(
                r#"{{"t":"adoptionOrder","now":1,"previous":"mine","ownersKnown":true,"stored":[
                    {{"clientId":"mine","next":{next},"mutations":{write}}}]}}"#
            );
            call(&mut probe, &input, "")
        };
        for next in ["2.5", "-1", "\"7\"", "null", "9007199254740993"] {
            let answer = order(next);
            assert!(answer.starts_with(r#"{"r":[],"#), "{next}: {answer}");
        }
        let answer = order("2");
        assert!(answer.starts_with(r#"{"r":["mine"],"#), "{answer}");
        // Taken over as a closed tab's: its writes are queued, whatever its numbering says.
        let unpark = format!(
            r#"{{"t":"unpark","now":{NOW},"clientId":"mine","next":2.5,"mutations":{write}}}"#
        );
        run_ok(&mut slot, &unpark, "");
        assert!(
            status(&mut slot).contains(r#""pending":1"#),
            "{}",
            status(&mut slot)
        );
    }

    #[test]
    fn a_write_the_engine_refuses_says_why() {
        let mut slot = started();
        for (value, code) in [
            ("[1]", "invalid_value"),
            ("\"x\"", "invalid_value"),
            ("{}", ""),
        ] {
            let input = format!(
                r#"{{"t":"write","now":{NOW},"collection":"likes","key":"a","value":{value}}}"#
            );
            let answer = call(&mut slot, &input, "");
            if code.is_empty() {
                assert!(answer.starts_with(r#"{"r":null,"c":[{"#), "{answer}");
            } else {
                assert_eq!(
                    answer,
                    format!(
                        r#"{{"e":{{"code":"{code}","message":"the write was refused: {code}"}}}}"#
                    )
                );
            }
        }
        let input =
            format!(r#"{{"t":"write","now":{NOW},"collection":"","key":"a","value":null}}"#);
        assert!(call(&mut slot, &input, "").contains(r#""code":"invalid_collection""#));
    }

    #[test]
    fn the_fields_a_write_sets_are_pushed_stored_and_restored() {
        let mut slot = started();
        let id = pulling(&mut slot);
        let body = r#"{"cursor":"1","changes":[],"more":false,"serverTime":1}"#;
        run_ok(&mut slot, &reply_call(id, "pull", 200), body);
        let write = format!(
            r#"{{"t":"write","now":{NOW},"collection":"likes","key":"a","value":{{"on":true,"n":1}},"fields":["on"]}}"#
        );
        let commands = run_ok(&mut slot, &write, "");
        let (_, outbox) = commands.iter().find(|(t, _)| t == "outbox").unwrap();
        assert!(
            outbox.contains(r#""updatedAt":"#) && outbox.contains(r#","fields":["on"]}"#),
            "{outbox}"
        );
        let due = format!(r#"{{"t":"timeout","now":{}}}"#, NOW + 10_000);
        let (_, push) = sent(&run_ok(&mut slot, &due, ""));
        assert!(push.contains(r#""fields":["on"]"#), "{push}");

        // A reloaded tab's outbox keeps them.
        let mut slot = started();
        let id = pulling(&mut slot);
        run_ok(&mut slot, &reply_call(id, "pull", 200), body);
        let restore = format!(
            r#"{{"t":"restoreOutbox","now":{NOW},"clientId":"c1","next":3,"mutations":[{{"id":2,"collection":"likes","key":"a","value":{{"on":true}},"updatedAt":5,"fields":["on"]}}]}}"#
        );
        let mut commands = run_ok(&mut slot, &restore, "");
        commands.extend(run_ok(&mut slot, &due, ""));
        let (_, push) = sent(&commands);
        assert!(push.contains(r#""fields":["on"]"#), "{push}");

        // Fields that are not a list of names are refused as such.
        for fields in [r#""on""#, "[1]", r#"["on","on"]"#] {
            let write = format!(
                r#"{{"t":"write","now":{NOW},"collection":"likes","key":"b","value":{{}},"fields":{fields}}}"#
            );
            assert_eq!(
                call(&mut slot, &write, ""),
                r#"{"e":{"code":"invalid_fields","message":"the write was refused: invalid_fields"}}"#,
                "{fields}"
            );
        }
    }

    #[test]
    fn an_answer_is_read_from_its_status_headers_and_body() {
        // token_expired in the error body: sent again at once with a fresh token.
        let mut slot = started();
        let id = pulling(&mut slot);
        let reply = reply_call(id, "pull", 401);
        let body = r#"{"error":{"code":"token_expired","message":"expired"}}"#;
        let (_, again) = sent(&run_ok(&mut slot, &reply, body));
        assert!(again.contains(r#""freshToken":true"#), "{again}");

        // A 200 whose body cannot be read is no answer: the device is unreachable for now.
        let mut slot = started();
        let id = pulling(&mut slot);
        let reply = reply_call(id, "pull", 200);
        run_ok(&mut slot, &reply, r#"{"cursor":"5","changes":[],"mo"#);
        assert!(status(&mut slot).contains(r#""error":"unreachable""#));

        // A 503 with Retry-After: not asked again before it.
        let mut slot = started();
        let id = pulling(&mut slot);
        let reply = format!(
            r#"{{"t":"reply","now":{NOW},"id":{id},"kind":"pull","status":503,"retryAfter":"20"}}"#
        );
        let answer = call(&mut slot, &reply, "");
        let at = json::parse(&answer).unwrap().u64("at");
        assert!(
            at >= NOW + 20_000,
            "retried at {at}, before the server's 20 s"
        );

        // A 304 with the server's poll interval: the next poll waits for it.
        let mut slot = started();
        let id = pulling(&mut slot);
        let reply = format!(
            r#"{{"t":"reply","now":{NOW},"id":{id},"kind":"pull","status":304,"retryAfter":null,"pollInterval":"120"}}"#
        );
        let answer = call(&mut slot, &reply, "");
        let at = json::parse(&answer).unwrap().u64("at");
        assert!(
            at >= NOW + 108_000,
            "polls again at {at}, before the server's 120 s"
        );

        // A 200 page: stored, and its records readable.
        let mut slot = started();
        let id = pulling(&mut slot);
        let reply = reply_call(id, "pull", 200);
        let body = r#"{"cursor":"9","changes":[{"collection":"likes","key":"e\u00e9","value":{"on": true},"updatedAt":5,"clientId":"d","version":9}],"more":false,"serverTime":1800000000000}"#;
        let commands = run_ok(&mut slot, &reply, body);
        assert!(commands
            .iter()
            .any(|(t, c)| t == "cursor" && c.contains(r#""cursor":"9""#)));
        let answer = call(
            &mut slot,
            r#"{"t":"collection","now":1,"name":"likes"}"#,
            "",
        );
        assert_eq!(
            json::parse(&answer).unwrap().field("r").raw,
            r#"[{"key":"eé","value":{"on": true},"updatedAt":5,"clientId":"d"}]"#
        );
    }

    #[test]
    fn a_push_refused_for_one_named_write_goes_again_without_it() {
        let mut slot = started();
        let id = pulling(&mut slot);
        let reply = reply_call(id, "pull", 200);
        run_ok(
            &mut slot,
            &reply,
            r#"{"cursor":"1","changes":[],"more":false,"serverTime":1}"#,
        );
        for key in ["a", "b"] {
            let write = format!(
                r#"{{"t":"write","now":{NOW},"collection":"likes","key":"{key}","value":{{}}}}"#
            );
            run_ok(&mut slot, &write, "");
        }
        let due = format!(r#"{{"t":"timeout","now":{}}}"#, NOW + 10_000);
        let (id, push) = sent(&run_ok(&mut slot, &due, ""));
        let ids: Vec<u64> = json::parse(&push)
            .unwrap()
            .field("body")
            .items("mutations")
            .iter()
            .map(|m| m.u64("id"))
            .collect();
        assert_eq!(ids.len(), 2, "{push}");
        let reply = reply_call(id, "push", 422);
        let body = format!(
            r#"{{"error":{{"code":"invalid_mutation","message":"no","mutation":{}}}}}"#,
            ids[0]
        );
        let (_, again) = sent(&run_ok(&mut slot, &reply, &body));
        assert!(again.contains(r#""key":"b""#), "{again}");
        assert!(!again.contains(r#""key":"a""#), "{again}");
        assert!(status(&mut slot).contains(r#""error":"rejected""#));
    }

    #[test]
    fn the_poke_stream_is_asked_for_and_its_pokes_and_end_are_read() {
        let mut slot = None;
        let init = r#"{"t":"init","pokes":true,"seedHigh":1,"seedLow":7}"#;
        run_ok(&mut slot, init, "");
        for input in [
            format!(r#"{{"t":"online","now":{NOW},"online":true}}"#),
            format!(r#"{{"t":"visibility","now":{NOW},"visible":true}}"#),
            format!(r#"{{"t":"signIn","now":{NOW},"user":"7"}}"#),
        ] {
            run_ok(&mut slot, &input, "");
        }
        // Leading, the tab holds the stream.
        let leader = format!(r#"{{"t":"leadership","now":{NOW},"leader":true}}"#);
        let commands = run_ok(&mut slot, &leader, "");
        assert!(
            commands
                .iter()
                .any(|(_, c)| c == r#"{"t":"pokes","on":true}"#),
            "{commands:?}"
        );
        let (id, _) = sent(&commands);
        let reply = reply_call(id, "pull", 200);
        let body = r#"{"cursor":"3","changes":[],"more":false,"serverTime":1}"#;
        run_ok(&mut slot, &reply, body);
        // A version above the cursor: a pull at once.
        let poke = format!(r#"{{"t":"poke","now":{NOW},"version":4}}"#);
        let (_, pull) = sent(&run_ok(&mut slot, &poke, ""));
        assert!(pull.contains(r#""lastSync":"3""#), "{pull}");
        // The end, with its status; without either, refused.
        run_ok(
            &mut slot,
            &format!(r#"{{"t":"poke","now":{NOW},"status":404}}"#),
            "",
        );
        let bare = format!(r#"{{"t":"poke","now":{NOW}}}"#);
        assert!(call(&mut slot, &bare, "").contains("status: expected a value"));
    }
}
