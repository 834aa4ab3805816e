//! Property tests of what the sync routes parse: cursors, `If-None-Match`, the query string,
//! and push bodies (decoding, validation, and the refusal of numbers beyond the double range).
//!
//! Case counts keep the module to a few seconds in debug builds; `PROPTEST_CASES` runs it
//! longer. A failure found here is kept as a plain `#[test]` with its input; proptest keeps no
//! record of failing seeds in the source tree.

use super::*;

/// Versions stay below 2^53 (exact in a JavaScript number).
const VERSION_END: u64 = 1 << 53;
use axum::body::Body;
use axum::extract::FromRequest;
use proptest::prelude::*;

/// `cases` runs per property, unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        failure_persistence: None,
        ..base
    }
}

/// A number as a JSON text may spell it: short and long integers, decimals, exponents up to
/// far beyond the double range, and the spellings around the largest double.
fn number_token() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?(0|[1-9][0-9]{0,24})",
        "-?[1-9][0-9]{300,320}",
        "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,20})?[eE][+-]?[0-9]{1,4}",
        "-?(0|[1-9])(\\.[0-9]{1,3})?[eE][+-]?[0-9]{18,24}",
        // Around the largest double, 1.7976931348623157e308, where rounding decides.
        "-?1\\.797693134862315[0-9]{0,25}e308",
        "-?17976931348623157[0-9]{292}",
        prop::sample::select(vec![
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1.79769313486231580793e308",
            "1.7976931348623159e308",
            "-1.7976931348623159e308",
            "2e308",
            "4.9e-324",
            "2.4703282292062327e-324",
            "1e-400",
            "0e400",
            "-0.0e-0",
        ])
        .prop_map(str::to_owned),
    ]
}

/// What a browser reads the number as (`JSON.parse` rounds correctly, as Rust's parser does).
fn double(token: &str) -> f64 {
    token.parse::<f64>().expect("a JSON number")
}

/// A JSON object whose numbers are the given tokens, some nested, some beside strings and
/// keys that only look like numbers.
fn object_with(tokens: &[String], nest: &[u8]) -> String {
    let mut text = String::from(r#"{"s":"1e400","#);
    for (i, token) in tokens.iter().enumerate() {
        let value = match nest.get(i).copied().unwrap_or(0) % 4 {
            0 => token.clone(),
            1 => format!("[true,{token},null]"),
            2 => format!(r#"{{"1e400":{token},"x":[]}}"#),
            _ => format!(r#"[[{{"a":"{token}"}}],{token}]"#),
        };
        text.push_str(&format!(r#""k{i}":{value},"#));
    }
    text.push_str(r#""end":{}}"#);
    text
}

fn numbers() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
    (
        prop::collection::vec(number_token(), 0..5),
        prop::collection::vec(any::<u8>(), 5),
    )
}

/// A push that passes validation, with `value` as its one record value.
fn push_with(value: Option<String>) -> PushRequest {
    PushRequest {
        client_id: "c1".into(),
        mutations: vec![Mutation {
            fields: None,
            id: 1,
            collection: "likes".into(),
            key: "e1".into(),
            value,
            updated_at: 5,
        }],
        last_sync: None,
    }
}

fn collections() -> Vec<String> {
    sinkron_core::protocol::DEFAULT_COLLECTIONS
        .iter()
        .map(|c| (*c).to_owned())
        .collect()
}

/// A push body as a client might send it, then damaged or not.
fn push_body() -> impl Strategy<Value = Vec<u8>> {
    let mutation = (
        prop_oneof![any::<u64>(), 0u64..4],
        prop_oneof![prop::sample::select(vec!["likes", "history", "nope", ""]).prop_map(str::to_owned), ".{0,4}"],
        ".{0,6}",
        prop_oneof![
            Just("null".to_owned()),
            numbers().prop_map(|(t, n)| object_with(&t, &n)),
            ".{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            "[0-9e.+-]{1,8}",
        ],
        prop_oneof![any::<u64>().prop_map(|n| n.to_string()), number_token()],
    )
        .prop_map(|(id, collection, key, value, updated_at)| {
            format!(
                r#"{{"id":{id},"collection":{},"key":{},"value":{value},"updatedAt":{updated_at}}}"#,
                serde_json::to_string(&collection).unwrap(),
                serde_json::to_string(&key).unwrap(),
            )
        });
    (
        ".{0,4}",
        prop::collection::vec(mutation, 0..4),
        prop::option::of("[0-9a-z]{0,4}"),
        0u8..4,
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|(client_id, mutations, last_sync, damage, at, byte)| {
            let last_sync = last_sync
                .map(|c| format!(r#","lastSync":"{c}""#))
                .unwrap_or_default();
            let mut body = format!(
                r#"{{"clientId":{},"mutations":[{}]{last_sync}}}"#,
                serde_json::to_string(&client_id).unwrap(),
                mutations.join(",")
            )
            .into_bytes();
            let i = at.index(body.len() + 1);
            match damage {
                1 => body.truncate(i),
                2 if i < body.len() => body[i] = byte,
                3 => body.insert(i, byte),
                _ => {}
            }
            body
        })
}

/// Decodes a body as the push route does, then validates it.
fn decode_push(body: Vec<u8>) -> Result<PushRequest, ApiError> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    });
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/api/user/me/changes")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a request");
    let AppJson(push) = runtime.block_on(AppJson::<PushRequest>::from_request(request, &()))?;
    validate_push(&push, &collections())?;
    Ok(push)
}

proptest! {
    #![proptest_config(config(1024))]

    /// Versions stay below [`WHOLE_STATE`] (2^62): a cursor is a decimal version up to the
    /// user's, or a place inside a whole state (2^62 + a version up to the user's).
    #[test]
    fn cursors_are_exactly_the_decimal_versions_up_to_the_users(
        text in prop_oneof![
            ".{0,24}",
            "[+-]?[0-9]{1,22}",
            "[0-9 ]{0,4}",
            "461168601842738[0-9]{4}",
            "6917529027641[0-9]{6}",
        ],
        version in prop_oneof![0..VERSION_END, 0u64..100],
    ) {
        let expected = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
            .filter(|c| {
                *c <= version || WholeCursor::parse(*c).is_some_and(|p| p.valid(version))
            });
        prop_assert_eq!(parse_cursor(&text, version).ok(), expected);
    }

    #[test]
    fn issued_cursors_parse_back(cursor in 0..VERSION_END, ahead in 1u64..10) {
        // The server issues cursors up to the user's version, as `u64::to_string`, and inside
        // a whole state places of the rows after a version up to the user's (with the
        // version it began at, up to the user's too, when both fit the cursor).
        prop_assert_eq!(parse_cursor(&cursor.to_string(), cursor).ok(), Some(cursor));
        prop_assert_eq!(parse_cursor(&cursor.to_string(), VERSION_END - 1).ok(), Some(cursor));
        let place = |after, began| WholeCursor { after, began }.encode();
        for began in [None, Some(cursor), Some(cursor / 2)] {
            let inside = place(cursor, began);
            prop_assert_eq!(parse_cursor(&inside.to_string(), cursor).ok(), Some(inside));
        }
        let past = cursor + ahead;
        prop_assert!(parse_cursor(&past.to_string(), cursor).is_err());
        prop_assert!(parse_cursor(&place(past, None).to_string(), cursor).is_err());
        // Begun past the user's version (when the cursor can carry that start at all).
        let begun_past = place(cursor, Some(past));
        if begun_past != place(cursor, None) {
            prop_assert!(parse_cursor(&begun_past.to_string(), cursor).is_err());
        }
    }

    #[test]
    fn if_none_match_never_panics(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..3),
        version in any::<u64>(),
    ) {
        let mut headers = HeaderMap::new();
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(header::IF_NONE_MATCH, value);
            }
        }
        let _ = etag_matches(&headers, version);
    }

    /// The tag the server sends matches its version when it comes back, alone or in a list,
    /// weak or strong, and nothing else does.
    #[test]
    fn if_none_match_matches_exactly_the_tags_of_the_version(
        tags in prop::collection::vec(
            prop_oneof![
                (any::<bool>(), prop_oneof![any::<u64>(), 0u64..3]).prop_map(|(weak, v)| (Some(v), weak)),
                "[A-Za-z*/ -]{0,6}".prop_map(|junk| (None, junk.len() % 2 == 0)),
            ],
            0..4,
        ),
        version in prop_oneof![any::<u64>(), 0u64..3],
        split in any::<bool>(),
    ) {
        let texts: Vec<String> = tags
            .iter()
            .enumerate()
            .map(|(i, (v, weak))| match v {
                Some(v) if *weak => format!("W/\"{v}\""),
                Some(v) => etag(*v).to_str().unwrap().to_owned(),
                None => format!("junk{i}"),
            })
            .collect();
        let mut headers = HeaderMap::new();
        if split {
            for text in &texts {
                headers.append(header::IF_NONE_MATCH, HeaderValue::from_str(text).unwrap());
            }
        } else if !texts.is_empty() {
            let list = texts.join(" , ");
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&list).unwrap());
        }
        let named = tags.iter().any(|(v, _)| *v == Some(version));
        prop_assert_eq!(etag_matches(&headers, version), named);
    }

    #[test]
    fn last_sync_is_the_first_such_parameter(
        pairs in prop::collection::vec(
            prop_oneof![
                "[a-zA-Z]{1,8}=[^&]{0,6}",
                "lastSync=[^&]{0,6}",
                "[^&]{0,8}",
            ],
            0..5,
        ),
    ) {
        let query = pairs.join("&");
        let expected = query.split('&').find_map(|p| p.strip_prefix("lastSync="));
        prop_assert_eq!(last_sync(Some(&query)), expected);
        let first = pairs
            .iter()
            .find(|p| p.starts_with("lastSync="))
            .map(|p| &p["lastSync=".len()..]);
        if !pairs.iter().any(|p| p.contains('&')) {
            prop_assert_eq!(last_sync(Some(&query)), first);
        }
    }

    /// A record value is refused exactly when one of its numbers is not a finite double (a
    /// browser would write it back as `null`), right up to the edge of the range.
    #[test]
    fn record_values_are_refused_exactly_for_non_finite_numbers((tokens, nest) in numbers()) {
        let text = object_with(&tokens, &nest);
        let fits = tokens.iter().all(|t| double(t).is_finite());
        let doubles = serde_json::from_str::<Doubles>(&text).is_ok();
        let validated = validate_push(&push_with(Some(text.clone())), &collections());
        prop_assert_eq!(doubles, fits, "{}", text);
        prop_assert_eq!(validated.is_ok(), fits, "{}", text);
        if let Err(e) = validated {
            prop_assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    /// On any text the check agrees with a full parse of the JSON into doubles.
    #[test]
    fn the_double_check_accepts_what_a_full_parse_accepts(
        text in prop_oneof![
            ".{0,16}",
            numbers().prop_map(|(t, n)| object_with(&t, &n)),
            (numbers(), any::<prop::sample::Index>()).prop_map(|((t, n), at)| {
                let text = object_with(&t, &n);
                text[..at.index(text.len())].to_owned()
            }),
        ],
    ) {
        prop_assert_eq!(
            serde_json::from_str::<Doubles>(&text).is_ok(),
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{}", text
        );
    }

    /// Any body, well formed or not, decodes and validates to a push or a 4xx, never a panic
    /// or a 5xx; what passes holds only finite numbers.
    #[test]
    fn push_bodies_decode_and_validate_or_answer_4xx(
        body in prop_oneof![push_body(), prop::collection::vec(any::<u8>(), 0..48)],
    ) {
        match decode_push(body) {
            Ok(push) => {
                for m in &push.mutations {
                    if let Some(value) = &m.value {
                        let parsed: serde_json::Value = serde_json::from_str(value).unwrap();
                        prop_assert!(parsed.is_object());
                    }
                }
            }
            Err(e) => prop_assert!(e.status.is_client_error(), "{e:?}"),
        }
    }
}

/// Found by `record_values_are_refused_exactly_for_non_finite_numbers`: a browser reads
/// `1.7976931348623158e308` as the largest double (it is below the midpoint to the next power
/// of two); serde_json's default float parsing rounded it up and refused the push with 422.
/// With `float_roundtrip` every spelling of it is accepted, as the shortest one is.
#[test]
fn every_spelling_of_the_largest_double_is_accepted() {
    assert_eq!(double("1.7976931348623158e308"), f64::MAX);
    assert!(serde_json::from_str::<Doubles>(r#"{"n":1.7976931348623157e308}"#).is_ok());
    let text = r#"{"n":1.7976931348623158e308}"#;
    assert!(validate_push(&push_with(Some(text.into())), &collections()).is_ok());
}

/// Found by `record_values_are_refused_exactly_for_non_finite_numbers`, the other way round: a
/// browser reads `1.79769313486231581e308` as `Infinity` (it is above the midpoint between the
/// largest double and the next power of two) and writes it back as `null`; serde_json's
/// default float parsing rounded it down to the largest double and let it through.
#[test]
fn a_number_a_browser_reads_as_infinity_is_refused() {
    assert_eq!(double("1.79769313486231581e308"), f64::INFINITY);
    let text = r#"{"n":1.79769313486231581e308}"#;
    assert!(validate_push(&push_with(Some(text.into())), &collections()).is_err());
}
