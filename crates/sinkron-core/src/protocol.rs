//! Protocol v1: the values that cross the wire, and its limits (kept in [`crate::limits`]).
//!
//! `Change` and `Mutation` are plain structs the engine uses directly; with the `serde`
//! feature they and the request and response bodies also (de)serialize to the exact JSON of
//! `docs/PROTOCOL.md`. Record values stay JSON text end to end: they are embedded raw, never
//! re-encoded.

use alloc::string::String;
use alloc::vec::Vec;

/// The collections a server accepts unless configured otherwise.
pub const DEFAULT_COLLECTIONS: [&str; 4] = ["history", "favorites", "likes", "settings"];

// The limits are part of protocol v1; they live beside the one check of a write against them.
pub use crate::limits::{
    BODY_BYTES_MAX, CLIENT_ID_CHARS_MAX, COLLECTION_CHARS_MAX, KEY_CHARS_MAX, MUTATIONS_MAX,
    VALUE_BYTES_MAX,
};
/// The header of a pull answer with the poll interval the server wants, in whole seconds
/// ([`crate::Engine::handle_poll_interval`]).
pub const POLL_INTERVAL_HEADER: &str = "sinkron-poll-interval";

/// Cursors at or above this name a place inside a whole state sent in pages (the version of
/// the page's last row and the one the whole state began at, encoded by the server's
/// `plan::WholeCursor`), not a version: versions stay below 2^53. Only the last
/// page's cursor of a whole state is the user's version, which tells a client what the whole
/// state covers.
pub const WHOLE_STATE: u64 = 1 << 62;

/// A record as the server stores it, sent in pulls and push answers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct Change {
    pub collection: String,
    pub key: String,
    /// JSON object text, or `None` (`null`) for a tombstone.
    #[cfg_attr(feature = "serde", serde(with = "raw_json"))]
    pub value: Option<String>,
    pub updated_at: u64,
    /// The client whose write this is; the tie-breaker of newest-wins.
    pub client_id: String,
    /// The per-user sequence number at which the server stored this version. Only ever
    /// compared with other versions of the same user's records: higher is later.
    pub version: u64,
}

/// One write a client pushes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct Mutation {
    /// Increasing per client id; the server ignores ids at or below its ack.
    pub id: u64,
    pub collection: String,
    pub key: String,
    #[cfg_attr(feature = "serde", serde(with = "raw_json"))]
    pub value: Option<String>,
    pub updated_at: u64,
    /// The top-level fields this write sets, for a collection merged per field
    /// ([`crate::merge`]): each takes its value from `value`, or is removed when `value`
    /// lacks it. `None` (the whole-record format): every field `value` holds. Checked by
    /// [`crate::limits::check_fields`].
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub fields: Option<Vec<String>>,
}

impl Mutation {
    /// A write of the whole-record format.
    pub fn new(
        id: u64,
        collection: String,
        key: String,
        value: Option<String>,
        updated_at: u64,
    ) -> Self {
        Mutation {
            id,
            collection,
            key,
            value,
            updated_at,
            fields: None,
        }
    }
}

#[cfg(feature = "serde")]
pub use wire::*;

#[cfg(feature = "serde")]
mod wire {
    use super::{Change, Mutation};
    use alloc::string::String;
    use alloc::vec::Vec;
    use serde::{Deserialize, Serialize};

    /// `{"id","username"}`
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct User {
        pub id: String,
        pub username: String,
    }

    /// Body of `POST /api/auth/register` and `POST /api/auth/login`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct Credentials {
        pub username: String,
        pub password: String,
    }

    /// Answer to a successful register or login.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct Session {
        pub token: String,
        pub user: User,
    }

    /// Answer to `GET /api/user/me`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PullResponse {
        pub user: User,
        pub cursor: String,
        pub changes: Vec<Change>,
        pub more: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        pub reset: bool,
        pub server_time: u64,
    }

    /// Body of `POST /api/user/me/changes`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PushRequest {
        pub client_id: String,
        pub mutations: Vec<Mutation>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_sync: Option<String>,
    }

    /// Answer to `POST /api/user/me/changes`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PushResponse {
        pub ack: u64,
        pub cursor: String,
        pub changes: Vec<Change>,
        pub more: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        pub reset: bool,
        pub server_time: u64,
    }

    /// `{"error":{"code","message"}}`
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct ErrorBody {
        pub error: ErrorDetail,
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct ErrorDetail {
        pub code: String,
        pub message: String,
        /// With `mutation_id_reused` only: the server's ack for the push's client id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ack: Option<u64>,
        /// With `invalid_mutation` from a push's checks: the `id` of the first mutation
        /// refused, so a client can set that write aside and push the others again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mutation: Option<u64>,
    }

    fn is_false(b: &bool) -> bool {
        !*b
    }

    impl From<PullResponse> for crate::engine::Page {
        fn from(body: PullResponse) -> Self {
            crate::engine::Page {
                cursor: body.cursor,
                changes: body.changes,
                more: body.more,
                reset: body.reset,
                server_time: body.server_time,
            }
        }
    }

    impl From<PushResponse> for crate::engine::Page {
        /// The page of a push answer (its `ack` is read apart).
        fn from(body: PushResponse) -> Self {
            crate::engine::Page {
                cursor: body.cursor,
                changes: body.changes,
                more: body.more,
                reset: body.reset,
                server_time: body.server_time,
            }
        }
    }
}

/// Record values are JSON text inside the core; on the wire they are embedded as raw JSON.
#[cfg(feature = "serde")]
mod raw_json {
    use alloc::boxed::Box;
    use alloc::string::String;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(text) => {
                let raw: &RawValue =
                    serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let raw: Option<Box<RawValue>> = Option::deserialize(d)?;
        Ok(raw.map(|r| String::from(Box::<str>::from(r))))
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_as_raw_json() {
        let text = r#"{"clientId":"c1","mutations":[{"id":1,"collection":"likes","key":"e1","value":{"v":1},"updatedAt":5},{"id":2,"collection":"likes","key":"e2","value":null,"updatedAt":6}]}"#;
        let req: PushRequest = serde_json::from_str(text).unwrap();
        assert_eq!(req.mutations[0].value.as_deref(), Some(r#"{"v":1}"#));
        assert_eq!(req.mutations[1].value, None);
        assert_eq!(serde_json::to_string(&req).unwrap(), text);
    }
}
