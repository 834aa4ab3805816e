//! Property tests of the door into the engine: no input makes it panic (a panic traps the
//! whole tab's engine), every answer is JSON, and what the encoder writes the reader reads
//! back exactly (tab messages make that round trip through another tab).
//!
//! Case counts are small so the file runs in well under a second in debug builds; set
//! `PROPTEST_CASES` to run longer.

extern crate std;

use crate::convert::Json;
use crate::{interop, json};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        // A failure is kept as a plain test with its input, never in the source tree.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..base
    }
}

/// Texts that look like JSON often enough to get past the first byte: pieces of calls.
fn jsonish() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"t\"",
        "\"write\"",
        "\"now\"",
        "\"reply\"",
        "\"tab\"",
        "\"message\"",
        "\"kind\"",
        "\"value\"",
        "null",
        "true",
        "1",
        "-1",
        "1.5e3",
        "0",
        "9007199254740993",
        "\"\\u12\"",
        "\"\\ud800\"",
        "\"é\"",
        " ",
    ]);
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// Strings heavy in what needs escaping (controls, quotes, backslashes) and in characters
/// beyond ASCII and the BMP, or anything at all.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\\x00-\\x20\"\\\\/a-zé\u{7f}\u{2028}\u{1F600}]{0,12}",
        any::<String>(),
    ]
}

fn started() -> Option<sinkron_core::Engine> {
    let mut slot = None;
    interop::call(&mut slot, r#"{"t":"init","seedHigh":1,"seedLow":2}"#, "");
    slot
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn reading_any_text_never_panics(text in any::<String>(), more in jsonish()) {
        let _ = json::parse(&text);
        let _ = json::parse(&more);
    }

    #[test]
    fn any_call_is_answered_with_json(input in jsonish(), body in jsonish(), name in prop::sample::select(vec!["write", "reply", "tab", "restore", "restoreOutbox", "signIn"])) {
        let mut slot = started();
        for text in [input.clone(), format!(r#"{{"t":"{name}",{}"#, input.trim_start_matches('{'))] {
            let answer = interop::call(&mut slot, &text, &body);
            prop_assert!(json::parse(&answer).is_ok(), "{text} answered {answer}");
        }
        // A reply whose body is anything: still an answer, never a panic.
        let reply = r#"{"t":"reply","now":5,"id":1,"kind":"pull","status":200,"retryAfter":null}"#;
        let answer = interop::call(&mut slot, reply, &body);
        prop_assert!(json::parse(&answer).is_ok(), "{answer}");
    }

    #[test]
    fn what_the_encoder_writes_the_reader_reads(strings in prop::collection::vec(tricky_string(), 1..6), n in 0u64..(1 << 53)) {
        let mut j = Json::new();
        j.raw("{");
        j.field("n").number(n);
        let names: Vec<&'static str> = ["a", "b", "c", "d", "e", "f"].into_iter().take(strings.len()).collect();
        for (name, s) in names.iter().zip(&strings) {
            j.field(name).string(s);
        }
        j.raw("}");
        let text = j.finish();
        json::reset();
        let node = json::parse(&text).unwrap();
        prop_assert_eq!(node.u64("n"), n);
        for (name, s) in names.iter().zip(&strings) {
            prop_assert_eq!(node.str(name), s.as_str());
        }
        prop_assert!(json::check().is_ok(), "{:?}", json::last_error());
    }
}
