//! The limits of protocol v1 and the one check of a record write against them.
//!
//! The engine refuses a write with [`check_write`] before it queues it, and the server
//! refuses a pushed mutation (or an imported line) with the same function, so a write the
//! engine takes is never refused by the server for its shape, and the two cannot drift apart.
//!
//! It must not parse JSON or format text: it runs in the browser build, which carries neither.
//! What needs a parser (every number of a value fitting a double) or the server's
//! configuration (which collections exist) is the server's to check on top.

use crate::engine::WriteError;
use alloc::string::String;

/// Most mutations in one push.
pub const MUTATIONS_MAX: usize = 500;
/// Largest request body the server reads.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Largest record value, as JSON text.
pub const VALUE_BYTES_MAX: usize = 4 * 1024;
/// Longest key, in characters.
pub const KEY_CHARS_MAX: usize = 128;
/// Longest client id, in characters.
pub const CLIENT_ID_CHARS_MAX: usize = 64;
/// Longest collection name, in characters.
pub const COLLECTION_CHARS_MAX: usize = 64;
/// Longest field name a write names (`Mutation::fields`), in characters.
pub const FIELD_CHARS_MAX: usize = 64;
/// Most fields one write names.
pub const FIELDS_MAX: usize = 64;

/// Checks one write of `value` (JSON text, or `None` to delete) to `key` in `collection`:
/// a collection name and a key of 1 to their most characters, a value that is a JSON object
/// of at most [`VALUE_BYTES_MAX`] bytes. The first broken rule is the answer, in that order.
pub fn check_write(collection: &str, key: &str, value: Option<&str>) -> Result<(), WriteError> {
    if collection.is_empty() || chars(collection) > COLLECTION_CHARS_MAX {
        return Err(WriteError::InvalidCollection);
    }
    if key.is_empty() || chars(key) > KEY_CHARS_MAX {
        return Err(WriteError::InvalidKey);
    }
    if let Some(text) = value {
        // Values come from a JSON encoder (the server's arrive parsed); checking the braces
        // is enough to refuse arrays, strings and numbers without carrying a JSON parser into
        // the browser build.
        let trimmed = text.trim_ascii();
        if !trimmed.starts_with('{') || !trimmed.ends_with('}') {
            return Err(WriteError::InvalidValue);
        }
        if text.len() > VALUE_BYTES_MAX {
            return Err(WriteError::ValueTooLarge);
        }
    }
    Ok(())
}

/// Why the fields a write names were refused: the index of the name at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldsError {
    /// A delete names no fields: it removes the whole record.
    OnDelete,
    TooMany,
    /// A name of no characters or more than [`FIELD_CHARS_MAX`].
    Name(usize),
    /// A name given twice.
    Twice(usize),
}

/// Checks the fields a write names ([`crate::Mutation::fields`]): only beside a value, at
/// most [`FIELDS_MAX`], each named once, by 1 to [`FIELD_CHARS_MAX`] characters.
pub fn check_fields(fields: &[String], has_value: bool) -> Result<(), FieldsError> {
    if !has_value {
        return Err(FieldsError::OnDelete);
    }
    if fields.len() > FIELDS_MAX {
        return Err(FieldsError::TooMany);
    }
    for (n, name) in fields.iter().enumerate() {
        if name.is_empty() || chars(name) > FIELD_CHARS_MAX {
            return Err(FieldsError::Name(n));
        }
        // By `take`, not slicing: no bounds-check panic in the browser build.
        for earlier in fields.iter().take(n) {
            if earlier == name {
                return Err(FieldsError::Twice(n));
            }
        }
    }
    Ok(())
}

/// Characters in a UTF-8 string: the bytes that do not continue a character.
fn chars(s: &str) -> usize {
    let mut n = 0;
    for b in s.bytes() {
        n += usize::from(b & 0xC0 != 0x80);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_counted_in_characters() {
        let snow = "\u{2603}".repeat(KEY_CHARS_MAX);
        assert_eq!(check_write("likes", &snow, None), Ok(()));
        let over = "\u{2603}".repeat(KEY_CHARS_MAX + 1);
        assert_eq!(
            check_write("likes", &over, None),
            Err(WriteError::InvalidKey)
        );
        assert_eq!(check_write("likes", "", None), Err(WriteError::InvalidKey));
        let name = "c".repeat(COLLECTION_CHARS_MAX + 1);
        assert_eq!(
            check_write(&name, "k", None),
            Err(WriteError::InvalidCollection)
        );
        assert_eq!(
            check_write("", "k", None),
            Err(WriteError::InvalidCollection)
        );
    }

    #[test]
    fn values_are_objects_within_the_size() {
        assert_eq!(check_write("likes", "k", Some(" {\"a\":1} \n")), Ok(()));
        for shape in ["[1]", "\"{}\"", "1", "{", "}", ""] {
            assert_eq!(
                check_write("likes", "k", Some(shape)),
                Err(WriteError::InvalidValue),
                "{shape:?}"
            );
        }
        let fits = format!(r#"{{"x":"{}"}}"#, "a".repeat(VALUE_BYTES_MAX - 8));
        assert_eq!(fits.len(), VALUE_BYTES_MAX);
        assert_eq!(check_write("likes", "k", Some(&fits)), Ok(()));
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(VALUE_BYTES_MAX));
        assert_eq!(
            check_write("likes", "k", Some(&big)),
            Err(WriteError::ValueTooLarge)
        );
        // The shape is checked first: a large array is not an object.
        let array = format!("[{}]", "1,".repeat(VALUE_BYTES_MAX));
        assert_eq!(
            check_write("likes", "k", Some(&array)),
            Err(WriteError::InvalidValue)
        );
    }

    #[test]
    fn fields_are_named_once_within_their_limits_and_only_beside_a_value() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        assert_eq!(check_fields(&names(&["liked", "\u{2603}"]), true), Ok(()));
        assert_eq!(check_fields(&[], true), Ok(()));
        assert_eq!(
            check_fields(&names(&["a"]), false),
            Err(FieldsError::OnDelete)
        );
        assert_eq!(
            check_fields(&names(&["a", ""]), true),
            Err(FieldsError::Name(1))
        );
        let snow = "\u{2603}".repeat(FIELD_CHARS_MAX);
        assert_eq!(check_fields(&names(&[&snow]), true), Ok(()));
        let over = "\u{2603}".repeat(FIELD_CHARS_MAX + 1);
        assert_eq!(
            check_fields(&names(&[&over]), true),
            Err(FieldsError::Name(0))
        );
        assert_eq!(
            check_fields(&names(&["a", "b", "a"]), true),
            Err(FieldsError::Twice(2))
        );
        let many: Vec<String> = (0..=FIELDS_MAX).map(|n| format!("f{n}")).collect();
        assert_eq!(check_fields(&many, true), Err(FieldsError::TooMany));
        assert_eq!(check_fields(&many[1..], true), Ok(()));
    }
}
