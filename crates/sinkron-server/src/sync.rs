//! The sync routes: pull (`GET /api/user/me`) and push (`POST /api/user/me/changes`).
//!
//! It owns request validation (a push is checked whole before anything is written), cursor
//! parsing, the `ETag`/`304` poll shortcut and the response bodies. It must not merge
//! records or know SQL: the [`Store`](crate::store::Store) does that atomically.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde::Serialize;
use sinkron_core::engine::WriteError;
use sinkron_core::limits::{
    check_write, FieldsError, CLIENT_ID_CHARS_MAX, COLLECTION_CHARS_MAX, FIELDS_MAX,
    FIELD_CHARS_MAX, KEY_CHARS_MAX, MUTATIONS_MAX, VALUE_BYTES_MAX,
};
use sinkron_core::protocol::{PullResponse, PushRequest, PushResponse, User};
use sinkron_core::Mutation;

use crate::authn::AuthUser;
use crate::error::{ApiError, AppJson};
use crate::limits::Admission;
use crate::pace::POLL_INTERVAL_HEADER;
use crate::store::plan::WholeCursor;
use crate::store::{Page, PushBatch, Quota, UserId};
use crate::AppState;

/// Mutation ids are stored as SQLite/PostgreSQL `BIGINT`.
const MUTATION_ID_MAX: u64 = i64::MAX as u64;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/user/me", get(pull))
        .route("/api/user/me/changes", post(push))
}

/// A cursor is the user's version in decimal, or a place inside a whole state sent in pages
/// (at or above [`WHOLE_STATE`](crate::store::plan::WHOLE_STATE), see [`WholeCursor`]). Anything else, or one ahead of the
/// user, was not issued by this server.
fn parse_cursor(text: &str, version: u64) -> Result<u64, ApiError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid_cursor());
    }
    match text.parse::<u64>() {
        Ok(c) if c <= version => Ok(c),
        Ok(c) if WholeCursor::parse(c).is_some_and(|place| place.valid(version)) => Ok(c),
        _ => Err(ApiError::invalid_cursor()),
    }
}

/// The raw `lastSync` of a query string. Cursors are digits, so percent-decoding is moot:
/// an encoded one is rejected as invalid.
fn last_sync(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("lastSync="))
}

/// The versions `If-None-Match` names (tags of digits only); parses instead of formatting.
pub(crate) fn named_versions(headers: &HeaderMap) -> impl Iterator<Item = u64> + '_ {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let t = tag.strip_prefix('"')?.strip_suffix('"')?;
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse::<u64>().ok()
        })
}

/// Whether `If-None-Match` names the current version.
fn etag_matches(headers: &HeaderMap, version: u64) -> bool {
    named_versions(headers).any(|v| v == version)
}

fn etag(cursor: u64) -> HeaderValue {
    HeaderValue::try_from(format!("\"{cursor}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// Bytes of an answer handed to the connection at a time (see [`json_response`]).
const ANSWER_CHUNK: usize = 64 * 1024;
/// Answers up to this size are handed over whole: hyper takes that much into its buffer at
/// once anyway (about 400 KiB), so chunks would hold nothing longer, and cost a write each.
const HELD_ABOVE: usize = 512 * 1024;

/// A 200 answer of `body`. With the request's `admitted` slot, a large answer holds it until
/// the connection has taken all of it but what it buffers (a few hundred kilobytes: the body
/// goes in chunks, each asked for once there is room): so a user's large answers that their
/// client is slow to take, or never takes, count as their requests at once, and what one
/// user's unread answers hold in memory is bounded (for how long: `listen.rs`); all users'
/// together are bounded by the node's budget (`--held-answers-bytes-max`; past it, 503: a
/// push's writes were applied, and its client's retry is answered without applying them
/// again). An answer up to [`HELD_ABOVE`] is handed over whole (its slot freed as it is).
fn json_response<T: Serialize>(
    body: &T,
    cursor: u64,
    admitted: Option<Admission>,
) -> Result<Response, ApiError> {
    let bytes = Bytes::from(serde_json::to_vec(body).map_err(ApiError::internal)?);
    let mut res = match admitted {
        Some(admitted) if bytes.len() > HELD_ABOVE => {
            // Counted against the node's budget of answers not yet taken (all users').
            let held = admitted.hold(bytes.len())?;
            let chunks: Vec<Result<Bytes, Infallible>> = (0..bytes.len())
                .step_by(ANSWER_CHUNK)
                .map(|at| Ok(bytes.slice(at..bytes.len().min(at + ANSWER_CHUNK))))
                .collect();
            let body = futures_util::stream::iter(chunks).map(move |chunk| {
                // Owned by the stream, so dropped with it: once the last chunk is asked for,
                // or the connection is gone.
                let _held = &held;
                chunk
            });
            let length = HeaderValue::from(bytes.len());
            let mut res = (StatusCode::OK, Body::from_stream(body)).into_response();
            // Sent with its length, as a whole body is, not in chunked encoding.
            res.headers_mut().insert(header::CONTENT_LENGTH, length);
            res
        }
        _ => (StatusCode::OK, bytes).into_response(),
    };
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, etag(cursor));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(res)
}

/// `GET /api/user/me[?lastSync=CURSOR]`: the whole state, or the changes since a cursor.
///
/// It takes the request itself rather than `HeaderMap`/`RawQuery` extractors, which copy: an
/// idle client's poll should cost a hash, a map lookup and a compare.
async fn pull(
    State(state): State<AppState>,
    user: AuthUser,
    req: Request,
) -> Result<Response, ApiError> {
    let admitted = state.limits.admit(user.user_id)?;
    let _counted = state.pacer.enter(state.now_ms());
    let headers = req.headers();
    let since = last_sync(req.uri().query())
        .map(|c| parse_cursor(c, user.version))
        .transpose()?;
    // The hot path: nothing changed since the client's copy, so no query and no body.
    if etag_matches(headers, user.version) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, etag(user.version));
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        res.headers_mut()
            .insert(POLL_INTERVAL_HEADER, state.pacer.header().clone());
        return Ok(res);
    }
    let page = state
        .store
        .pull(user.user_id, since, state.config.page_limit())
        .await?;
    let Page {
        changes,
        cursor,
        more,
        reset,
    } = page;
    let body = PullResponse {
        user: User {
            id: user.public_id.to_string(),
            username: user.username.to_string(),
        },
        cursor: cursor.to_string(),
        changes,
        more,
        reset,
        server_time: state.now_ms(),
    };
    let mut res = json_response(&body, cursor, Some(admitted))?;
    res.headers_mut()
        .insert(POLL_INTERVAL_HEADER, state.pacer.header().clone());
    Ok(res)
}

/// Checks a whole batch before anything is written; the first problem rejects all of it.
fn validate_push(req: &PushRequest, collections: &[String]) -> Result<(), ApiError> {
    let client_chars = req.client_id.chars().count();
    if client_chars == 0 || client_chars > CLIENT_ID_CHARS_MAX {
        return Err(ApiError::unprocessable(
            "invalid_client_id",
            format!("clientId must be 1 to {CLIENT_ID_CHARS_MAX} characters"),
        ));
    }
    if req.mutations.len() > MUTATIONS_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_mutations",
            format!("at most {MUTATIONS_MAX} mutations per push"),
        ));
    }
    let mut previous_id = 0;
    for (i, m) in req.mutations.iter().enumerate() {
        validate_mutation(i, m, previous_id, collections)?;
        previous_id = m.id;
    }
    Ok(())
}

/// Checks one mutation (the `i`-th of a push); `sinkron import` checks each line with it.
pub(crate) fn validate_mutation(
    i: usize,
    m: &Mutation,
    previous_id: u64,
    collections: &[String],
) -> Result<(), ApiError> {
    let refused = |field: &str, rule: String| {
        ApiError::unprocessable(
            "invalid_mutation",
            format!("mutations[{i}].{field}: {rule}"),
        )
    };
    // A bad id breaks the push's numbering, not one write: the error names no mutation.
    if m.id == 0 || m.id > MUTATION_ID_MAX {
        return Err(refused(
            "id",
            format!("must be from 1 to {MUTATION_ID_MAX}"),
        ));
    }
    if m.id <= previous_id {
        return Err(refused(
            "id",
            format!("must be greater than the previous id {previous_id}"),
        ));
    }
    // Any other rule refuses this write: the error names it by its id.
    let invalid = |field: &str, rule: String| ApiError {
        mutation: Some(m.id),
        ..refused(field, rule)
    };
    if !collections.contains(&m.collection) {
        return Err(invalid(
            "collection",
            format!(
                "unknown collection; expected one of {}",
                collections.join(", ")
            ),
        ));
    }
    // The engine's own check of a write (sinkron_core::limits), so the two never disagree.
    check_write(&m.collection, &m.key, m.value.as_deref()).map_err(|e| match e {
        WriteError::InvalidCollection => invalid(
            "collection",
            format!("must be 1 to {COLLECTION_CHARS_MAX} characters"),
        ),
        WriteError::InvalidKey => {
            invalid("key", format!("must be 1 to {KEY_CHARS_MAX} characters"))
        }
        WriteError::InvalidValue => invalid("value", "must be a JSON object or null".into()),
        WriteError::ValueTooLarge => invalid(
            "value",
            format!("must be at most {VALUE_BYTES_MAX} bytes of JSON text"),
        ),
        // Not a rule of `check_write` (the fields are checked below).
        WriteError::InvalidFields => invalid("fields", "are not valid".into()),
    })?;
    if let Some(value) = &m.value {
        if serde_json::from_str::<Doubles>(value).is_err() {
            return Err(invalid(
                "value",
                "every number must fit a double (a browser reads 1e400 as Infinity and \
                 writes it back as null)"
                    .into(),
            ));
        }
    }
    if let Some(fields) = &m.fields {
        check_fields(fields, m.value.is_some()).map_err(|rule| invalid("fields", rule))?;
    }
    Ok(())
}

/// The fields a write names (`Mutation::fields`), by the engine's rule
/// ([`sinkron_core::limits::check_fields`]), said in words.
fn check_fields(fields: &[String], has_value: bool) -> Result<(), String> {
    sinkron_core::limits::check_fields(fields, has_value).map_err(|e| match e {
        FieldsError::OnDelete => "a delete (value null) names no fields".into(),
        FieldsError::TooMany => format!("must name at most {FIELDS_MAX} fields"),
        FieldsError::Name(n) => format!("[{n}] must be 1 to {FIELD_CHARS_MAX} characters"),
        FieldsError::Twice(n) => format!("[{n}] names {:?} twice", fields[n]),
    })
}

/// `POST /api/user/me/changes`: apply a batch, answer with the ack and the changes since the
/// client's cursor.
async fn push(
    State(state): State<AppState>,
    user: AuthUser,
    AppJson(req): AppJson<PushRequest>,
) -> Result<Response, ApiError> {
    let admitted = state.limits.admit(user.user_id)?;
    let _counted = state.pacer.enter(state.now_ms());
    push_for(&state, user.user_id, user.version, &req, Some(admitted)).await
}

/// A push for `user_id`, whose version is `version`: validated whole, then applied by the
/// store. A device's push and the site's push on a user's behalf (`admin.rs`) are this one.
pub(crate) async fn push_for(
    state: &AppState,
    user_id: UserId,
    version: u64,
    req: &PushRequest,
    admitted: Option<Admission>,
) -> Result<Response, ApiError> {
    validate_push(req, &state.config.rules.collections)?;
    let since = req
        .last_sync
        .as_deref()
        .map(|c| parse_cursor(c, version))
        .transpose()?;
    let now = state.now_ms();
    let outcome = state
        .store
        .push(
            user_id,
            PushBatch {
                client_id: &req.client_id,
                mutations: &req.mutations,
                now_ms: now,
                updated_at_max: now.saturating_add(state.config.rules.max_future_ms),
                since,
                limit: state.config.page_limit(),
                quota: Quota {
                    records: state.config.user_records_max,
                    bytes: state.config.user_bytes_max,
                },
                caps: &state.caps,
                merges: &state.merges,
            },
        )
        .await?;
    if let Some(pokes) = &state.pokes {
        pokes.poke(user_id, outcome.version);
    }
    let page = outcome.page.unwrap_or(Page {
        cursor: outcome.version,
        ..Page::default()
    });
    let body = PushResponse {
        ack: outcome.ack,
        cursor: page.cursor.to_string(),
        changes: page.changes,
        more: page.more,
        reset: page.reset,
        server_time: now,
    };
    json_response(&body, page.cursor, admitted)
}

/// A JSON value read only to check that every number in it is a finite double, as a
/// JavaScript client will read it: serde_json refuses a number beyond the double range
/// (`1e400`) when it parses one, which skipping a value (`IgnoredAny`, `RawValue`) does not.
/// Nothing is allocated.
struct Doubles;

impl<'de> serde::Deserialize<'de> for Doubles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Doubles)
    }
}

impl<'de> serde::de::Visitor<'de> for Doubles {
    type Value = Doubles;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Doubles, E> {
        Ok(Doubles)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Doubles, E> {
        Ok(Doubles)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Doubles, E> {
        Ok(Doubles)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Doubles, E> {
        if v.is_finite() {
            Ok(Doubles)
        } else {
            Err(E::custom("a number beyond the double range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Doubles, E> {
        Ok(Doubles)
    }
    fn visit_unit<E>(self) -> Result<Doubles, E> {
        Ok(Doubles)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Doubles, A::Error> {
        while seq.next_element::<Doubles>()?.is_some() {}
        Ok(Doubles)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Doubles, A::Error> {
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value::<Doubles>()?;
        }
        Ok(Doubles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_beyond_the_double_range_are_refused() {
        let fits = |text: &str| serde_json::from_str::<Doubles>(text).is_ok();
        assert!(fits(
            r#"{"p":1.5e300,"n":-2,"big":18446744073709551615,"s":"1e400"}"#
        ));
        assert!(fits(r#"{"a":[1,[2,{"b":null,"c":true}]],"1e400":0}"#));
        assert!(!fits(r#"{"p":1e400}"#));
        assert!(!fits(r#"{"a":[0,{"b":-1e999}]}"#));
        assert!(!fits(r#"{"p":1e400"#), "malformed");
    }

    #[test]
    fn cursors_are_decimal_and_not_ahead_of_the_user() {
        assert_eq!(parse_cursor("0", 0).ok(), Some(0));
        assert_eq!(parse_cursor("7", 9).ok(), Some(7));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "abc",
            "10",
            "99999999999999999999999",
        ] {
            assert!(parse_cursor(bad, 9).is_err(), "{bad:?}");
        }
        // Places in a whole state: of either form, and not past the user's version.
        let place = |after, began| WholeCursor { after, began }.encode();
        for (cursor, version, valid) in [
            (place(9, Some(9)), 9, true),
            (place(5, None), 9, true),
            (place(10, Some(9)), 9, false),
            (place(5, Some(10)), 9, false),
            (place(10, None), 9, false),
        ] {
            let text = cursor.to_string();
            assert_eq!(parse_cursor(&text, version).is_ok(), valid, "{text}");
        }
    }

    #[test]
    fn if_none_match_is_compared_without_formatting() {
        let mut h = HeaderMap::new();
        assert!(!etag_matches(&h, 3));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"3\""));
        assert!(etag_matches(&h, 3));
        assert!(!etag_matches(&h, 4));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"1\", \"4\""),
        );
        assert!(etag_matches(&h, 4));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(!etag_matches(&h, 4));
    }

    #[test]
    fn last_sync_is_found_among_other_parameters() {
        assert_eq!(last_sync(Some("a=1&lastSync=5")), Some("5"));
        assert_eq!(last_sync(Some("a=1")), None);
        assert_eq!(last_sync(None), None);
    }
}

#[cfg(test)]
mod props;
