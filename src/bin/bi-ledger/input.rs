//! Parsing `append` input: one JSON object per line.

use std::collections::BTreeMap;
use std::io::BufRead;

use rayon::prelude::*;

use anyhow::{bail, Result};
use bi_ledger::{ExpectedVersion, NewEvent};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    /// This and the other fields raw, so that an error names its field
    /// (serde's names only the column) and quotes the value as written.
    #[serde(borrow)]
    stream: &'a RawValue,
    #[serde(rename = "type", borrow)]
    event_type: &'a RawValue,
    /// As written: it is canonicalized from its text (`bi_ledger::json`),
    /// never through a parsed value that could round its numbers.
    #[serde(borrow)]
    payload: &'a RawValue,
    /// Raw too: a map would keep the last of two equal keys silently.
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    /// `null` included (`Option` would take it for a missing field).
    #[serde(default, borrow, deserialize_with = "present")]
    schema_version: Option<&'a RawValue>,
    /// `null` included: a client that writes back a stream's version as
    /// it read it would send `null` for a stream that does not exist, and
    /// taking that for "any" would drop the check it asked for.
    #[serde(default, borrow, deserialize_with = "present")]
    expected_version: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The events of `append` input, one line at a time, so that an input of
/// any size is read in constant memory. Blank lines are skipped, and so is
/// a UTF-8 byte order mark at the start of the input.
pub struct Events<R> {
    input: R,
    line: Vec<u8>,
    n: usize,
    bytes: u64,
    parallel: bool,
    /// The largest batch: an event that cannot fit one is refused at its
    /// line, in line order with every other error of the input.
    max_batch: Option<usize>,
}

/// How many input bytes a stored byte may take, escaped: `\u0041` is six
/// bytes for one. A line longer than this many batches holds an event that
/// fits one only if it is padded with white space between tokens, which
/// no writer of JSON lines does; it is refused once that much of it is
/// read, so that one huge line (a whole file without a line break) never
/// sits in memory whole.
const INPUT_BYTES_PER_STORED: usize = 6;

impl<R: BufRead> Events<R> {
    pub fn new(input: R) -> Self {
        Events {
            input,
            line: Vec::new(),
            n: 0,
            bytes: 0,
            parallel: false,
            max_batch: None,
        }
    }

    /// Refuses an event that takes more than `max_batch` bytes in a batch
    /// of its own, and a line too long to hold any that fits.
    pub fn fitting(mut self, max_batch: usize) -> Self {
        self.max_batch = Some(max_batch);
        self
    }

    fn max_line(&self) -> Option<u64> {
        self.max_batch
            .map(|m| (m.saturating_mul(INPUT_BYTES_PER_STORED) as u64).saturating_add(64 << 10))
    }

    /// Parses on every core (rayon's global pool), for when nothing else
    /// needs them.
    pub fn parallel(mut self) -> Self {
        self.parallel = true;
        self
    }

    /// The events of the next `lines` lines, with their line numbers (from
    /// 1); `None` at the end of the input (a chunk of blank lines is
    /// empty). An error names the first bad line.
    pub fn next_chunk(&mut self, lines: usize) -> Result<Option<Vec<(usize, NewEvent)>>> {
        let mut raw = Vec::with_capacity(lines);
        let mut unreadable = None;
        while raw.len() < lines {
            match self.next_line() {
                Ok(Some(line)) => raw.push(line),
                Ok(None) => break,
                Err(e) => {
                    unreadable = Some(e);
                    break;
                }
            }
        }
        if raw.is_empty() && unreadable.is_none() {
            return Ok(None);
        }
        let max_batch = self.max_batch;
        let parse = |(n, text): (usize, String)| {
            let event = parse_line(n, &text)?;
            if let (Some(e), Some(max)) = (&event, max_batch) {
                let len = e.stored_len_bound();
                let overhead = bi_ledger::ledger::BATCH_OVERHEAD;
                if overhead + len > max {
                    bail!(
                        "line {n}: the event takes up to {len} bytes in a batch, which with the batch's own {overhead} bytes is more than the {max} a batch holds (store a payload this large elsewhere and append a reference)"
                    );
                }
            }
            Ok(event.map(|e| (n, e)))
        };
        let parsed: Vec<Result<Option<(usize, NewEvent)>>> = if self.parallel {
            raw.into_par_iter().map(parse).collect()
        } else {
            raw.into_iter().map(parse).collect()
        };
        let mut out = Vec::with_capacity(parsed.len());
        for p in parsed {
            out.extend(p?);
        }
        match unreadable {
            Some(e) => Err(e),
            None => Ok(Some(out)),
        }
    }

    /// The bytes read so far (whole lines, line endings included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The next line and its number, without its line ending.
    fn next_line(&mut self) -> Result<Option<(usize, String)>> {
        self.line.clear();
        let cap = self.max_line().unwrap_or(u64::MAX - 1);
        // One byte more than the longest line, for its line ending.
        let len =
            std::io::Read::take(&mut self.input, cap + 1).read_until(b'\n', &mut self.line)?;
        if len == 0 {
            return Ok(None);
        }
        if len as u64 > cap && self.line.last() != Some(&b'\n') {
            bail!(
                "line {}: longer than {cap} bytes, the most an input line may be (six times the {}-byte batch limit, plus 64 KiB; store a payload this large elsewhere and append a reference)",
                self.n + 1,
                self.max_batch.unwrap_or(0)
            );
        }
        self.bytes += len as u64;
        self.n += 1;
        let mut raw = self.line.as_slice();
        let mut skipped = 0;
        if self.n == 1 {
            if let Some(r) = raw.strip_prefix(b"\xef\xbb\xbf") {
                (raw, skipped) = (r, 3);
            }
        }
        if let Some(r) = raw.strip_suffix(b"\n") {
            raw = r.strip_suffix(b"\r").unwrap_or(r);
        }
        match std::str::from_utf8(raw) {
            Ok(text) => Ok(Some((self.n, text.to_owned()))),
            Err(e) => bail!(
                "line {}, byte {}: not UTF-8 text",
                self.n,
                skipped + e.valid_up_to() + 1
            ),
        }
    }
}

/// Every event of `text` (see [`Events`]).
#[cfg(test)]
pub fn parse_events(text: &str) -> Result<Vec<(usize, NewEvent)>> {
    let mut events = Events::new(text.as_bytes());
    let mut out = Vec::new();
    while let Some(chunk) = events.next_chunk(2)? {
        out.extend(chunk);
    }
    Ok(out)
}

/// Input quoted in an error: its control characters escaped (a carriage
/// return must not rewrite the terminal's line), and only its start if it
/// is long.
/// What kind of JSON value `raw` (valid JSON) is, for an error that must
/// not quote it.
fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn excerpt(raw: &str) -> String {
    const SHOWN: usize = 64;
    let mut out = String::new();
    for c in raw.chars().take(SHOWN) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if raw.chars().nth(SHOWN).is_some() {
        out.push_str(&format!("… ({} bytes)", raw.len()));
    }
    out
}

/// Line `n`'s event; `None` for a blank line.
fn parse_line(n: usize, raw: &str) -> Result<Option<NewEvent>> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    // serde would also take an array of the fields in order.
    if !raw.trim_start().starts_with('{') {
        bail!(
            "line {n}: expected a JSON object {{\"stream\": ..., \"type\": ..., \"payload\": ...}}"
        );
    }
    let line: Line = match serde_json::from_str(raw) {
        Ok(l) => l,
        Err(e) => bail!("line {n}, column {}: {}", e.column(), without_position(&e)),
    };
    let text = |field: &str, raw: &RawValue| -> Result<String> {
        let raw = raw.get();
        if !raw.starts_with('"') {
            // Its kind, not its value: a misplaced payload may hold
            // personal data, and errors reach logs.
            bail!(
                "line {n}: field `{field}`: expected a string, found {}",
                json_kind(raw)
            );
        }
        bi_ledger::json::unescape(raw)
            .map_err(|e| anyhow::anyhow!("line {n}: field `{field}`: {e}"))
    };
    let stream = text("stream", line.stream)?;
    let event_type = text("type", line.event_type)?;
    let schema_version = match line.schema_version.map(RawValue::get) {
        None => 1,
        Some(raw) => serde_json::from_str::<u32>(raw).map_err(|_| {
            anyhow::anyhow!(
                "line {n}: field `schema_version`: expected a whole number from 0 to {}, found {}",
                u32::MAX,
                excerpt(raw)
            )
        })?,
    };
    let expected = match line.expected_version.map(RawValue::get) {
        None => ExpectedVersion::Any,
        Some(raw) => match (
            serde_json::from_str::<u64>(raw),
            serde_json::from_str::<&str>(raw),
        ) {
            (Ok(v), _) => ExpectedVersion::Exact(v),
            (_, Ok("any")) => ExpectedVersion::Any,
            (_, Ok("no_stream")) => ExpectedVersion::NoStream,
            _ if raw == "null" => bail!("line {n}: field `expected_version`: null could mean any version or no stream: write \"any\" or \"no_stream\" (or leave the field out for any)"),
            _ => bail!("line {n}: field `expected_version`: expected a version number (0 or more), \"any\" or \"no_stream\", found {}", excerpt(raw)),
        },
    };
    let metadata = match line.metadata.map(RawValue::get) {
        None | Some("null") => BTreeMap::new(),
        Some(raw) => {
            bi_ledger::json::canonicalize(raw)
                .map_err(|e| anyhow::anyhow!("line {n}: field `metadata`: {e}"))?;
            // Values raw, so that a wrong one is named by its key; keys
            // owned, as they may be escaped. No key is there twice: that
            // was refused just above.
            let entries: BTreeMap<String, &RawValue> = serde_json::from_str(raw).map_err(|_| {
                anyhow::anyhow!(
                    "line {n}: field `metadata`: expected an object of strings, found {}",
                    json_kind(raw)
                )
            })?;
            let mut metadata = BTreeMap::new();
            for (key, value) in entries {
                let value = text(&format!("metadata.{}", excerpt(&key)), value)?;
                metadata.insert(key, value);
            }
            metadata
        }
    };
    let payload = bi_ledger::json::canonicalize(line.payload.get())
        .map_err(|e| anyhow::anyhow!("line {n}: field `payload`: {e}"))?;
    let event = NewEvent {
        stream,
        event_type: event_type.into(),
        schema_version,
        content_type: "application/json".into(),
        metadata,
        payload,
        expected_version: expected,
    };
    if let Err((field, reason)) = event.validate() {
        bail!("line {n}: field `{field}` {reason}");
    }
    Ok(Some(event))
}

/// serde_json's message without its " at line L column C": the input line
/// is named already, and its "line 1" would contradict it.
fn without_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    msg.strip_suffix(&suffix).unwrap_or(&msg).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_line_and_field() {
        let e = parse_events("{\"stream\":\"a\",\"type\":\"t\",\"payload\":1}\n{\"stream\":\"\",\"type\":\"t\",\"payload\":1}\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2: field `stream`"), "{e}");
        let e = parse_events("\n{\"stream\":\"a\",\"type\":\"t\"}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 2, column ") && e.ends_with(": missing field `payload`"),
            "{e}"
        );
        let e = parse_events(
            "{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"expected_version\":\"latest\"}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("expected_version"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_named_by_its_field() {
        let cases = [
            (
                r#""stream":1,"type":"t""#,
                "field `stream`: expected a string, found a number",
            ),
            (
                r#""stream":"s","type":null"#,
                "field `type`: expected a string, found null",
            ),
            (
                r#""stream":"s\ud800","type":"t""#,
                r"field `stream`: \ud800 is half of a UTF-16 surrogate pair",
            ),
            (
                r#""stream":"s","type":"t","schema_version":-1"#,
                "field `schema_version`: expected a whole number from 0 to 4294967295, found -1",
            ),
            (
                r#""stream":"s","type":"t","schema_version":"1""#,
                r#"field `schema_version`: expected a whole number from 0 to 4294967295, found "1""#,
            ),
            (
                r#""stream":"s","type":"t","schema_version":99999999999999999999"#,
                "found 99999999999999999999",
            ),
            (
                r#""stream":"s","type":"t","schema_version":null"#,
                "field `schema_version`: expected a whole number from 0 to 4294967295, found null",
            ),
        ];
        for (fields, want) in cases {
            let line = format!("{{{fields},\"payload\":1}}");
            let e = parse_events(&line).unwrap_err().to_string();
            assert!(e.starts_with("line 1: ") && e.contains(want), "{line}: {e}");
        }
        let evs =
            parse_events(r#"{"stream":"caf\u00e9","type":"t","payload":1,"schema_version":7}"#)
                .unwrap();
        assert_eq!(
            (evs[0].1.stream.as_str(), evs[0].1.schema_version),
            ("caf\u{e9}", 7)
        );
    }

    #[test]
    fn keeps_the_payload_as_written() {
        let evs = parse_events(
            "\u{feff}{\"stream\":\"a\",\"type\":\"t\",\"payload\":{\"n\": 12345678901234567890123, \"d\": 19.990000000000000000001}}",
        )
        .unwrap();
        assert_eq!(
            evs[0].1.payload,
            br#"{"d":19.990000000000000000001,"n":12345678901234567890123}"#
        );
    }

    #[test]
    fn rejects_what_would_change_or_misread_the_event() {
        let dup = "{\"stream\":\"a\",\"type\":\"t\",\"payload\":{\"x\":{\"k\":1,\"k\":2}}}";
        let e = parse_events(dup).unwrap_err().to_string();
        assert_eq!(e, "line 1: field `payload`: duplicate key \"k\" at .x");
        let e = parse_events(
            "{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"metadata\":{\"k\":\"1\",\"k\":\"2\"}}",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "line 1: field `metadata`: duplicate key \"k\"");
        let e =
            parse_events("{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"metadata\":{\"k\":1}}")
                .unwrap_err()
                .to_string();
        assert_eq!(
            e, "line 1: field `metadata.k`: expected a string, found a number",
            "{e}"
        );
        let e =
            parse_events("{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"metadata\":[\"k\"]}")
                .unwrap_err()
                .to_string();
        assert_eq!(
            e,
            "line 1: field `metadata`: expected an object of strings, found an array"
        );
        let e = parse_events("[\"a\",\"t\",1]").unwrap_err().to_string();
        assert!(e.starts_with("line 1: expected a JSON object"), "{e}");
        for bad in ["-1", "3.0", "\"latest\"", "true", "18446744073709551616"] {
            let line = format!(
                "{{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"expected_version\":{bad}}}"
            );
            let e = parse_events(&line).unwrap_err().to_string();
            assert!(
                e.starts_with("line 1: field `expected_version`: expected a version number")
                    && e.ends_with(&format!("found {bad}")),
                "{bad}: {e}"
            );
        }
        // Quoted with control characters escaped, and only its start.
        let line =
            "{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"expected_version\":{\"a\":\r1}}";
        let e = parse_events(line).unwrap_err().to_string();
        assert!(e.ends_with("found {\"a\":\\r1}"), "{e}");
        let long = format!("[{}0]", "0,".repeat(1000));
        let line = format!(
            "{{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"expected_version\":{long}}}"
        );
        let e = parse_events(&line).unwrap_err().to_string();
        assert!(
            e.ends_with(&format!("found {}… (2003 bytes)", &long[..64])),
            "{e}"
        );
        let e = parse_events("{\"stream\":\"a\",\"type\":\"t\",\"payload\":{\"a\":1}")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "line 1, column 42: EOF while parsing an object");
    }

    #[test]
    fn parses_expected_versions() {
        let evs = parse_events(
            "{\"stream\":\"a\",\"type\":\"t\",\"payload\":{\"b\":1,\"a\":2},\"expected_version\":\"no_stream\"}\n{\"stream\":\"a\",\"type\":\"t\",\"payload\":null,\"expected_version\":0}",
        )
        .unwrap();
        assert_eq!(evs[0].1.expected_version, ExpectedVersion::NoStream);
        assert_eq!(evs[0].1.payload, br#"{"a":2,"b":1}"#);
        assert_eq!(evs[1].1.expected_version, ExpectedVersion::Exact(0));
    }

    #[test]
    fn takes_crlf_and_names_a_line_that_is_not_utf8() {
        let ok = "{\"stream\":\"a\",\"type\":\"t\",\"payload\":1}";
        let text = format!("{ok}\r\n\r\n{ok}\r\n{ok}");
        let evs = parse_events(&text).unwrap();
        assert_eq!(evs.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 3, 4]);
        let mut bytes = format!("{ok}\n{ok}\n").into_bytes();
        bytes.extend_from_slice(b"{\"stream\":\"\xff\"}\n");
        let e = Events::new(bytes.as_slice())
            .next_chunk(10)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "line 3, byte 12: not UTF-8 text");
        let mut bom = b"\xef\xbb\xbf{\"s\xff".to_vec();
        bom.push(b'\n');
        let e = Events::new(bom.as_slice()).next_chunk(10).unwrap_err();
        assert_eq!(e.to_string(), "line 1, byte 7: not UTF-8 text");
        // A bad line before it, read in the same chunk, is the one named.
        let mut bytes = format!("{ok}\n{{\n").into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        let e = Events::new(bytes.as_slice())
            .next_chunk(10)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2, column "), "{e}");
    }

    #[test]
    fn chunks_of_blank_lines_do_not_end_the_input() {
        let ok = "{\"stream\":\"a\",\"type\":\"t\",\"payload\":1}";
        let text = format!("{}{ok}\n{}{ok}\n\n{{", "\n".repeat(5), "  \n".repeat(7));
        // Chunks of 2 lines: several hold no event at all.
        let e = parse_events(&text).unwrap_err().to_string();
        assert!(e.starts_with("line 16, column "), "{e}");
        let evs = parse_events(&text[..text.len() - 1]).unwrap();
        assert_eq!(evs.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [6, 14]);
    }
}
