//! Canonical JSON of a JSON text, keeping what the text says exactly.
//!
//! A payload read from JSON text is signed into the ledger for good, so it
//! must say what its author wrote. Going through `serde_json::Value` does
//! not: an integer beyond 64 bits becomes a rounded float, a decimal with
//! more digits than an `f64` holds is rounded, and of two equal keys the
//! last silently wins. [`canonicalize`] instead sorts object keys and drops
//! insignificant white space (as [`crate::model::canonical_json`] does for
//! a `Value`), re-escapes strings the way serde_json writes them, keeps
//! every number literal byte for byte, and rejects duplicate keys.
//! Pure: no I/O.

use serde::de::IgnoredAny;

/// Why a text has no canonical form. `path` is where, as `.key` and `[i]`
/// steps from the top (empty for the top itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}{}", if path.is_empty() { String::new() } else { format!(" at {path}") })]
pub struct JsonError {
    pub path: String,
    pub what: String,
}

/// The canonical form of JSON text `text`: object members sorted by key
/// (bytewise, as UTF-8), no white space between tokens, strings as
/// serde_json escapes them, numbers, `true`, `false` and `null` as written.
/// For text without duplicate keys whose numbers are all integers that fit
/// in 64 bits, this equals `canonical_json` of the parsed value; other
/// number literals stay as written, where serde_json would write `1e2` as
/// `100.0` and `1.50` as `1.5`.
pub fn canonicalize(text: &str) -> Result<Vec<u8>, JsonError> {
    // The syntax is checked first, so the walk below only has to follow
    // the structure of text known to be JSON.
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| JsonError {
        path: String::new(),
        what: e.to_string(),
    })?;
    let mut w = Walk {
        text,
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let mut out = Vec::with_capacity(text.len());
    w.value(&mut out, &mut String::new())?;
    Ok(out)
}

/// Deepest nesting accepted, as serde_json's own parser allows: the walk
/// recurses, and a payload of 100,000 brackets must be an error, not a
/// stack overflow.
pub const MAX_DEPTH: usize = 128;

struct Walk<'a> {
    text: &'a str,
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Walk<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&mut self, path: &str) -> Result<u8, JsonError> {
        self.skip_ws();
        self.s.get(self.i).copied().ok_or_else(|| JsonError {
            path: path.to_owned(),
            what: "unexpected end of JSON".into(),
        })
    }

    fn value(&mut self, out: &mut Vec<u8>, path: &mut String) -> Result<(), JsonError> {
        match self.peek(path)? {
            b'{' | b'[' if self.depth == MAX_DEPTH => Err(JsonError {
                path: path.clone(),
                what: format!("nested more than {MAX_DEPTH} levels deep"),
            }),
            open @ (b'{' | b'[') => {
                self.depth += 1;
                let done = if open == b'{' {
                    self.object(out, path)
                } else {
                    self.array(out, path)
                };
                self.depth -= 1;
                done
            }
            b'"' => {
                let s = self.string(path)?;
                write_string(out, &s);
                Ok(())
            }
            _ => {
                // A number or a literal: copied as written.
                let start = self.i;
                while self.s.get(self.i).is_some_and(|b| {
                    !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                }) {
                    self.i += 1;
                }
                let token = &self.text[start..self.i];
                // Kept as written, but one that no double can hold would be
                // unreadable to most JSON readers (serde_json's `Value`
                // among them), and so to every projection built from it.
                if token.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
                    && token.parse::<f64>().map_or(true, f64::is_infinite)
                {
                    return Err(JsonError {
                        path: path.clone(),
                        // Not quoted: a payload's numbers may be
                        // personal data (a card number), and errors reach logs.
                        what: format!("a number of {} characters is out of range", token.len()),
                    });
                }
                out.extend_from_slice(token.as_bytes());
                Ok(())
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, path: &mut String) -> Result<(), JsonError> {
        self.i += 1; // '{'
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            match self.peek(path)? {
                b'}' => {
                    self.i += 1;
                    break;
                }
                b',' => self.i += 1,
                _ => {
                    let key = self.string(path)?;
                    if self.peek(path)? != b':' {
                        return Err(self.unexpected(path));
                    }
                    self.i += 1;
                    let len = path.len();
                    push_key(path, &key);
                    let mut v = Vec::new();
                    self.value(&mut v, path)?;
                    path.truncate(len);
                    members.push((key, v));
                }
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = members.windows(2).find(|p| p[0].0 == p[1].0) {
            return Err(JsonError {
                path: path.clone(),
                what: format!("duplicate key {:?}", pair[0].0),
            });
        }
        out.push(b'{');
        for (n, (key, v)) in members.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            write_string(out, key);
            out.push(b':');
            out.extend_from_slice(v);
        }
        out.push(b'}');
        Ok(())
    }

    fn array(&mut self, out: &mut Vec<u8>, path: &mut String) -> Result<(), JsonError> {
        self.i += 1; // '['
        out.push(b'[');
        let mut n = 0usize;
        loop {
            match self.peek(path)? {
                b']' => {
                    self.i += 1;
                    break;
                }
                b',' => self.i += 1,
                _ => {
                    if n > 0 {
                        out.push(b',');
                    }
                    let len = path.len();
                    path.push_str(&format!("[{n}]"));
                    self.value(out, path)?;
                    path.truncate(len);
                    n += 1;
                }
            }
        }
        out.push(b']');
        Ok(())
    }

    /// The string token at the cursor, unescaped.
    fn string(&mut self, path: &str) -> Result<String, JsonError> {
        if self.peek(path)? != b'"' {
            return Err(self.unexpected(path));
        }
        let start = self.i;
        self.i += 1;
        loop {
            match self.s.get(self.i) {
                Some(b'\\') => self.i += 2,
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(_) => self.i += 1,
                None => return Err(self.unexpected(path)),
            }
        }
        unescape(&self.text[start..self.i]).map_err(|what| JsonError {
            path: path.to_owned(),
            what,
        })
    }

    fn unexpected(&self, path: &str) -> JsonError {
        JsonError {
            path: path.to_owned(),
            what: format!("unexpected JSON at byte {}", self.i),
        }
    }
}

/// A JSON string token (quotes included) unescaped. The error has no
/// position: serde_json's would be within the token, not the input.
pub fn unescape(token: &str) -> Result<String, String> {
    serde_json::from_str(token).map_err(|e| {
        if let Some(escape) = lone_surrogate(token) {
            // serde_json calls this "unexpected end of hex escape" or
            // "lone leading surrogate", which hides what to fix.
            return format!(
                "{escape} is half of a UTF-16 surrogate pair without its other half, which is not a character"
            );
        }
        let msg = e.to_string();
        let at = format!(" at line {} column {}", e.line(), e.column());
        msg.strip_suffix(&at).unwrap_or(&msg).to_owned()
    })
}

/// The first `\uXXXX` escape of a surrogate (D800–DFFF) that is not a
/// high surrogate followed at once by an escaped low one.
fn lone_surrogate(token: &str) -> Option<&str> {
    let unit = |i: usize| -> Option<u16> {
        let hex = token.get(i..i + 6)?.strip_prefix("\\u")?;
        u16::from_str_radix(hex, 16).ok()
    };
    let bytes = token.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => return token.get(i..i + 6),
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    None
}

/// `.key` for a plain key; `["key"]`, escaped, for any other, so that a
/// path is one line of plain text and `a.b` is not a nested `b`.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push_str(&format!("[{key:?}]"));
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::canonical_json;
    use proptest::prelude::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonicalize(s).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_and_drops_white_space() {
        assert_eq!(
            canon(" { \"b\" : [1, {\"z\":null,\"a\":true}] ,\n\"a\":\"x\" } "),
            r#"{"a":"x","b":[1,{"a":true,"z":null}]}"#
        );
        assert_eq!(canon("[]"), "[]");
        assert_eq!(canon("{}"), "{}");
        assert_eq!(canon(" 7 "), "7");
    }

    #[test]
    fn names_a_lone_surrogate() {
        for (text, escape) in [
            (r#""\ud800""#, r"\ud800"),
            (r#""a\uDC00b""#, r"\uDC00"),
            (r#""\ud83d\ude00\ud83d""#, r"\ud83d"),
            (r#""\ud800\u0041""#, r"\ud800"),
        ] {
            let e = canonicalize(text).unwrap_err().what;
            assert!(
                e.starts_with(escape) && e.contains("surrogate pair without its other half"),
                "{text}: {e}"
            );
        }
        assert_eq!(canon(r#""\ud83d\ude00""#), "\"\u{1F600}\"");
        assert_eq!(unescape(r#""\u00e9\\ud800""#).unwrap(), "\u{e9}\\ud800");
    }

    #[test]
    fn keeps_numbers_as_written() {
        assert_eq!(
            canon(
                r#"{"big":12345678901234567890123,"e":1e2,"pi":3.14159265358979323846264,"neg":-0.0}"#
            ),
            r#"{"big":12345678901234567890123,"e":1e2,"neg":-0.0,"pi":3.14159265358979323846264}"#
        );
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(
            canonicalize(&deep(MAX_DEPTH)).unwrap(),
            deep(MAX_DEPTH).into_bytes()
        );
        for n in [MAX_DEPTH + 1, 100_000] {
            let e = canonicalize(&deep(n)).unwrap_err();
            assert!(e.what.contains("nested more than 128"), "{e}");
        }
        let objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(canonicalize(&objects).is_err());
    }

    #[test]
    fn paths_are_one_plain_line() {
        let e = canonicalize(r#"{"a\nb\u001b[31m":{"a.b":{"c":1e999}}}"#).unwrap_err();
        assert_eq!(e.path, r#"["a\nb\u{1b}[31m"]["a.b"].c"#, "{e}");
        let text = e.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
        let e = canonicalize(r#"{"k":"\ud83d"}"#).unwrap_err();
        assert!(!e.what.contains("line 1"), "{e}");
    }

    #[test]
    fn refuses_numbers_no_double_can_hold() {
        let e = canonicalize(r#"{"a":[1,-1e400]}"#).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.what.as_str()),
            (".a[1]", "a number of 6 characters is out of range")
        );
        assert_eq!(canon("[1e308,-0,1e-400]"), "[1e308,-0,1e-400]");
    }

    #[test]
    fn re_escapes_strings_and_sorts_by_unescaped_key() {
        assert_eq!(
            canon(r#"{"\u0062":"\u0041\/\n","a":"é"}"#),
            "{\"a\":\"é\",\"b\":\"A/\\n\"}"
        );
    }

    #[test]
    fn rejects_duplicate_keys_naming_where() {
        let e = canonicalize(r#"{"a":{"x":[{"dup":1,"dup":2}]}}"#).unwrap_err();
        assert_eq!(e.path, ".a.x[0]");
        assert_eq!(e.what, "duplicate key \"dup\"");
        // Equal after unescaping is equal.
        assert!(canonicalize(r#"{"a":1,"\u0061":2}"#).is_err());
    }

    #[test]
    fn rejects_what_is_not_json() {
        for bad in ["", "{", "{\"a\":}", "[1,]", "01", "nul", "\"\\x\"", "1 2"] {
            assert!(canonicalize(bad).is_err(), "{bad:?}");
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| n.into()),
            any::<u64>().prop_map(|n| n.into()),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Without floats or duplicate keys, the text's canonical form is
        /// the value's, however the text is laid out.
        #[test]
        fn agrees_with_the_value_form(v in arb_json(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            prop_assert_eq!(canonicalize(&text).unwrap(), canonical_json(&v));
        }

        /// Canonical text is its own canonical form.
        #[test]
        fn is_idempotent(v in arb_json()) {
            let once = canonicalize(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
            let twice = canonicalize(std::str::from_utf8(&once).unwrap()).unwrap();
            prop_assert_eq!(once, twice);
        }
    }
}
