//! A small JSON reader for what the driver hands the engine: its calls (written by
//! `JSON.stringify`) and the server's answers (written by the server).
//!
//! It parses a whole text into a tree of [`Node`]s that keep their source text, so a record
//! value is taken over as the exact JSON text it arrived as. Reading a field checks its type
//! and says which field was wrong; numbers are whole milliseconds, ids and versions, so only
//! non-negative integers below 2^53 (exact in a JavaScript number) are read, and `NaN`,
//! negative or fractional numbers are refused, never coerced. `serde_json` would cost more of
//! the wasm budget than the whole engine.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

/// The largest integer a JavaScript number holds exactly.
const SAFE_INTEGER_MAX: u64 = (1 << 53) - 1;
/// Nesting deeper than this is refused (the server refuses deeper values too).
const DEPTH_MAX: usize = 64;

/// Why an input could not be read: the field (or `json` for the text itself) and what it
/// should have been.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Error {
    pub field: &'static str,
    pub expected: &'static str,
}

/// An input could not be read; [`last_error`] says why. Made only by [`check`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid(());

/// Notes that an input could not be read (the first such note of a call is the one kept).
/// The typed reads below note it and go on with a placeholder instead of returning a
/// `Result`: a call is read whole and then [`check`]ed once, before anything acts on it, which
/// spares the decoder a branch (and the drops of what was read so far) at every field.
#[inline(never)]
pub(crate) fn invalid(field: &'static str, expected: &'static str) {
    LAST.with(|last| {
        if last.get().field.is_empty() {
            last.set(Error { field, expected });
        }
    });
}

/// [`invalid`], as the reason a read is refused.
pub(crate) fn refuse(field: &'static str, expected: &'static str) -> Invalid {
    invalid(field, expected);
    Invalid(())
}

/// Whether everything read since the last [`reset`] was as expected.
pub(crate) fn check() -> Result<(), Invalid> {
    match last_error().field {
        "" => Ok(()),
        _ => Err(Invalid(())),
    }
}

/// Forgets the notes of earlier reads (each call starts afresh).
pub(crate) fn reset() {
    LAST.with(|last| last.set(NO_ERROR));
}

/// Why the first read since the last [`reset`] failed.
pub(crate) fn last_error() -> Error {
    LAST.with(Cell::get)
}

const NO_ERROR: Error = Error {
    field: "",
    expected: "",
};

// The browser's module runs on one thread (its allocator assumes so too); tests run on many.
#[cfg(target_arch = "wasm32")]
struct Last(Cell<Error>);

// SAFETY: WebAssembly in a page without threads runs this module on one thread only.
#[cfg(target_arch = "wasm32")]
unsafe impl Sync for Last {}

#[cfg(target_arch = "wasm32")]
impl Last {
    fn with<R>(&self, f: impl FnOnce(&Cell<Error>) -> R) -> R {
        f(&self.0)
    }
}

#[cfg(target_arch = "wasm32")]
static LAST: Last = Last(Cell::new(NO_ERROR));

#[cfg(not(target_arch = "wasm32"))]
std::thread_local! {
    static LAST: Cell<Error> = const { Cell::new(NO_ERROR) };
}

/// `text` as a whole number from 0 to 2^53-1 in decimal digits only (no sign, fraction or
/// exponent), if it is one.
pub(crate) fn whole_number(text: &str) -> Option<u64> {
    let mut n = 0u64;
    for digit in text.bytes() {
        if !digit.is_ascii_digit() || n > SAFE_INTEGER_MAX {
            return None;
        }
        n = n * 10 + u64::from(digit - b'0');
    }
    (!text.is_empty() && n <= SAFE_INTEGER_MAX).then_some(n)
}

/// A parsed JSON value with its source text.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    pub raw: &'a str,
    kind: Kind<'a>,
}

#[derive(Debug)]
enum Kind<'a> {
    Null,
    Bool(bool),
    Number,
    String(String),
    Array(Vec<Node<'a>>),
    Object(Vec<(String, Node<'a>)>),
}

/// Parses a whole JSON text.
pub(crate) fn parse(text: &str) -> Result<Node<'_>, Invalid> {
    let mut parser = Parser { text, at: 0 };
    let node = parser.value(0);
    parser.space();
    match node {
        Some(node) if parser.at == text.len() => Ok(node),
        _ => Err(refuse("json", "a JSON text")),
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.space();
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    /// What is left to read. (Slicing with `get`: a panicking slice would carry `core::fmt`
    /// into the module.)
    fn rest(&self) -> &'a str {
        self.text.get(self.at..).unwrap_or_default()
    }

    fn word(&mut self, word: &str) -> Option<()> {
        self.rest().starts_with(word).then(|| {
            self.at += word.len();
        })
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > DEPTH_MAX {
            return None;
        }
        self.space();
        let start = self.at;
        let kind = match self.peek()? {
            b'n' => self.word("null").map(|_| Kind::Null)?,
            b't' => self.word("true").map(|_| Kind::Bool(true))?,
            b'f' => self.word("false").map(|_| Kind::Bool(false))?,
            b'"' => Kind::String(self.string()?),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value(depth + 1)?);
                        if self.eat(b']') {
                            break;
                        }
                        self.eat(b',').then_some(())?;
                    }
                }
                Kind::Array(items)
            }
            b'{' => {
                self.at += 1;
                let mut fields = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.space();
                        let name = self.string()?;
                        self.eat(b':').then_some(())?;
                        fields.push((name, self.value(depth + 1)?));
                        if self.eat(b'}') {
                            break;
                        }
                        self.eat(b',').then_some(())?;
                    }
                }
                Kind::Object(fields)
            }
            _ => {
                self.number()?;
                Kind::Number
            }
        };
        Some(Node {
            raw: self.text.get(start..self.at)?,
            kind,
        })
    }

    /// `-? int frac? exp?` as JSON has it.
    fn number(&mut self) -> Option<()> {
        self.at += usize::from(self.peek() == Some(b'-'));
        let digits = |p: &mut Self| {
            let start = p.at;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.at += 1;
            }
            (p.at > start).then_some(())
        };
        if self.peek() == Some(b'0') {
            self.at += 1;
        } else {
            digits(self)?;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            digits(self)?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            self.at += usize::from(matches!(self.peek(), Some(b'+' | b'-')));
            digits(self)?;
        }
        Some(())
    }

    fn string(&mut self) -> Option<String> {
        (self.peek() == Some(b'"')).then_some(())?;
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let byte = self.peek()?;
            self.at += 1;
            let escaped = match byte {
                // SAFETY: `out` holds whole UTF-8 sequences of the `&str` input (it is only
                // split at ASCII bytes) and whole encoded chars.
                b'"' => return Some(unsafe { String::from_utf8_unchecked(out) }),
                b'\\' => self.peek()?,
                0..=0x1f => return None,
                _ => {
                    out.push(byte);
                    continue;
                }
            };
            self.at += 1;
            let c = match escaped {
                b'"' | b'\\' | b'/' => escaped as char,
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let high = self.hex4()?;
                    let code = if (0xD800..0xDC00).contains(&high) {
                        self.word("\\u")?;
                        let low = self.hex4()?;
                        (0xDC00..0xE000).contains(&low).then_some(())?;
                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                    } else {
                        high
                    };
                    char::from_u32(code)?
                }
                _ => return None,
            };
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.as_bytes().get(self.at..self.at + 4)?;
        self.at += 4;
        digits
            .iter()
            .try_fold(0, |n, &b| Some(n * 16 + char::from(b).to_digit(16)?))
    }
}

// The typed reads of a field, kept out of line: there is one call per field read, and
// inlining them all would grow the module by kilobytes. A read that fails notes why
// ([`invalid`]) and returns a placeholder (0, "", empty, `None`): see [`check`].
impl<'a> Node<'a> {
    /// The field `name` of an object; absent and `null` are both `None`.
    pub fn get(&self, name: &str) -> Option<&Node<'a>> {
        match &self.kind {
            Kind::Object(fields) => fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, node)| node)
                .filter(|node| !matches!(node.kind, Kind::Null)),
            _ => None,
        }
    }

    /// The field `name`, which must be there (`null` when it is not).
    #[inline(never)]
    pub fn field(&self, name: &'static str) -> &Node<'a> {
        self.get(name).unwrap_or_else(|| {
            invalid(name, "a value");
            &NULL
        })
    }

    #[inline(never)]
    pub fn opt_u64(&self, name: &'static str) -> Option<u64> {
        let node = self.get(name)?;
        let n = whole_number(node.raw).filter(|_| matches!(node.kind, Kind::Number));
        if n.is_none() {
            invalid(name, "a whole number from 0 to 2^53-1");
        }
        n
    }

    /// A whole number from 0 to 2^53-1 (milliseconds, ids, versions).
    #[inline(never)]
    pub fn u64(&self, name: &'static str) -> u64 {
        self.opt_u64(name).unwrap_or_else(|| {
            invalid(name, "a value");
            0
        })
    }

    #[inline(never)]
    pub fn opt_bool(&self, name: &'static str) -> Option<bool> {
        match self.get(name)?.kind {
            Kind::Bool(b) => Some(b),
            _ => {
                invalid(name, "true or false");
                None
            }
        }
    }

    #[inline(never)]
    pub fn bool(&self, name: &'static str) -> bool {
        self.opt_bool(name).unwrap_or_else(|| {
            invalid(name, "a value");
            false
        })
    }

    #[inline(never)]
    pub fn opt_str(&self, name: &'static str) -> Option<&str> {
        match &self.get(name)?.kind {
            Kind::String(s) => Some(s),
            _ => {
                invalid(name, "a string");
                None
            }
        }
    }

    #[inline(never)]
    pub fn str(&self, name: &'static str) -> &str {
        self.opt_str(name).unwrap_or_else(|| {
            invalid(name, "a value");
            ""
        })
    }

    /// This node as a string (an item of the array field `name`).
    #[inline(never)]
    pub fn string_value(&self, name: &'static str) -> String {
        match &self.kind {
            Kind::String(s) => s.clone(),
            _ => {
                invalid(name, "a string");
                String::new()
            }
        }
    }

    /// This node as a string or `null` (an item of the array field `name`).
    #[inline(never)]
    pub fn opt_string_value(&self, name: &'static str) -> Option<String> {
        match &self.kind {
            Kind::Null => None,
            _ => Some(self.string_value(name)),
        }
    }

    /// An owned copy of the string field `name`.
    #[inline(never)]
    pub fn string(&self, name: &'static str) -> String {
        self.str(name).into()
    }

    /// The array field `name` of strings; `None` when absent or `null`.
    #[inline(never)]
    pub fn opt_strings(&self, name: &'static str) -> Option<Vec<String>> {
        self.get(name)?;
        let mut out = Vec::new();
        for item in self.items(name) {
            out.push(item.string_value(name));
        }
        Some(out)
    }

    /// The array field `name` (absent or `null` is empty).
    #[inline(never)]
    pub fn items(&self, name: &'static str) -> &[Node<'a>] {
        match self.get(name).map(|n| &n.kind) {
            None => &[],
            Some(Kind::Array(items)) => items,
            Some(_) => {
                invalid(name, "an array");
                &[]
            }
        }
    }

    /// A record value: an object's JSON text as it arrived, or `None` for `null` (a
    /// tombstone).
    #[inline(never)]
    pub fn value(&self, name: &'static str) -> Option<String> {
        let node = self.get(name)?;
        if !matches!(node.kind, Kind::Object(_)) {
            invalid(name, "an object or null");
        }
        Some(node.raw.into())
    }
}

/// What [`Node::field`] reads when the field is not there.
static NULL: Node<'static> = Node {
    raw: "null",
    kind: Kind::Null,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A read's outcome, checked: the value read, or the reason it was refused.
    fn why<T>(read: impl FnOnce() -> T) -> Result<T, Error> {
        reset();
        let value = read();
        check().map(|()| value).map_err(|_| last_error())
    }

    impl Error {
        fn new(field: &'static str, expected: &'static str) -> Error {
            Error { field, expected }
        }
    }

    #[test]
    fn whole_numbers_are_plain_digits_up_to_2_pow_53_minus_1() {
        assert_eq!(whole_number("0"), Some(0));
        assert_eq!(whole_number("007"), Some(7));
        assert_eq!(whole_number("9007199254740991"), Some(SAFE_INTEGER_MAX));
        for not in [
            "",
            "-1",
            "1.5",
            "1e3",
            " 1",
            "+1",
            "9007199254740992",
            "99999999999999999999999",
        ] {
            assert_eq!(whole_number(not), None, "{not:?}");
        }
    }

    #[test]
    fn values_keep_their_text_and_strings_are_unescaped() {
        let node = parse(
            r#" {"a": {"x": [1, 2.5e-3, true]}, "s": "q\"\\\/\n\u00e9\ud83d\ude00", "n": null} "#,
        )
        .unwrap();
        assert_eq!(
            why(|| node.value("a")),
            Ok(Some(r#"{"x": [1, 2.5e-3, true]}"#.into()))
        );
        assert_eq!(why(|| node.str("s")), Ok("q\"\\/\né😀"));
        assert_eq!(why(|| node.value("n")), Ok(None));
        assert_eq!(why(|| node.opt_str("missing")), Ok(None));
        assert_eq!(why(|| node.str("n")), Err(Error::new("n", "a value")));
        assert_eq!(
            why(|| node.value("s")),
            Err(Error::new("s", "an object or null"))
        );
        assert_eq!(why(|| node.items("missing").len()), Ok(0));
        assert_eq!(
            why(|| node.items("s").len()),
            Err(Error::new("s", "an array"))
        );
    }

    #[test]
    fn only_safe_whole_numbers_are_read() {
        let node = parse(
            r#"{"ok":9007199254740991,"big":9007199254740992,"neg":-1,"frac":1.5,"exp":1e3,"s":"1","b":true}"#,
        )
        .unwrap();
        assert_eq!(why(|| node.u64("ok")), Ok(9_007_199_254_740_991));
        for name in ["big", "neg", "frac", "exp", "s", "b"] {
            assert_eq!(
                why(|| node.u64(name)),
                Err(Error::new(name, "a whole number from 0 to 2^53-1"))
            );
        }
        assert_eq!(why(|| node.bool("b")), Ok(true));
        assert_eq!(
            why(|| node.bool("ok")),
            Err(Error::new("ok", "true or false"))
        );
    }

    #[test]
    fn the_first_refused_read_of_a_call_is_the_reason_given() {
        let node = parse(r#"{"a":"x","b":1}"#).unwrap();
        let first = why(|| (node.u64("a"), node.str("b"), node.u64("missing")));
        assert_eq!(
            first,
            Err(Error::new("a", "a whole number from 0 to 2^53-1"))
        );
        // Reset, the next reads start afresh.
        assert_eq!(why(|| node.u64("b")), Ok(1));
    }

    #[test]
    fn malformed_texts_are_refused() {
        for text in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "\"\u{1}\"",
            "nul",
            "\"\\x\"",
            "\"\\ud800\"",
            "{} {}",
            "[1 2]",
            "{\"a\" 1}",
            "\"é",
            "\"\\u12",
        ] {
            assert!(parse(text).is_err(), "{text:?} was read");
        }
        let deep = "[".repeat(DEPTH_MAX + 2) + &"]".repeat(DEPTH_MAX + 2);
        assert!(parse(&deep).is_err());
        let fine = "[".repeat(DEPTH_MAX) + &"]".repeat(DEPTH_MAX);
        assert!(parse(&fine).is_ok());
    }
}
