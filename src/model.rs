//! What callers hand the ledger and what it hands back.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format::{hex, Hash};

pub use crate::format::record::Record;

/// The stream version a caller expects before its event is appended.
/// Versions count from 0: a stream's first event has version 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `current` satisfies this.
    pub fn admits(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

/// One event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The entity this event belongs to, e.g. `decision-7f3a…`.
    pub stream: String,
    /// Event types and content types are nearly always constants: a
    /// `&'static str` is kept as it is, so that the writer, which frees a
    /// batch's events on another thread, has fewer allocations to free
    /// (glibc's `free` across threads was an eighth of the CPU time of
    /// batched appends). A `String` is taken too.
    pub event_type: Cow<'static, str>,
    pub schema_version: u32,
    /// What the payload is, as the caller says: the ledger stores payloads
    /// as opaque bytes and does not parse them (on the append path that
    /// would cost more than the rest of it), so a payload set by hand
    /// under `application/json` is not checked to be JSON. [`Self::json`]
    /// writes canonical JSON itself.
    pub content_type: Cow<'static, str>,
    pub metadata: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    pub expected_version: ExpectedVersion,
}

impl NewEvent {
    /// An event whose payload is `value` as canonical JSON: object keys
    /// sorted, no insignificant white space, numbers as serde_json writes
    /// them (`1e2` parsed into a `Value` is written `100.0`). To keep JSON
    /// text exactly as written, numbers and all, canonicalize the text with
    /// [`crate::json::canonicalize`] instead, as `bi-ledger append` does.
    pub fn json(
        stream: impl Into<String>,
        event_type: impl Into<Cow<'static, str>>,
        value: &serde_json::Value,
    ) -> Self {
        NewEvent {
            stream: stream.into(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: "application/json".into(),
            metadata: BTreeMap::new(),
            payload: canonical_json(value),
            expected_version: ExpectedVersion::Any,
        }
    }

    /// The record this event becomes at sequence number `seq`, stamped
    /// `timestamp_us`, as version `stream_version` of its stream.
    pub fn into_record(self, seq: u64, timestamp_us: i64, stream_version: u64) -> Record {
        Record {
            seq,
            timestamp_us,
            stream: self.stream,
            stream_version,
            event_type: self.event_type,
            schema_version: self.schema_version,
            content_type: self.content_type,
            metadata: self.metadata.into_iter().collect(),
            payload: self.payload,
        }
    }

    /// An event with an opaque binary payload.
    pub fn bytes(
        stream: impl Into<String>,
        event_type: impl Into<Cow<'static, str>>,
        payload: Vec<u8>,
    ) -> Self {
        NewEvent {
            stream: stream.into(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: "application/octet-stream".into(),
            metadata: BTreeMap::new(),
            payload,
            expected_version: ExpectedVersion::Any,
        }
    }

    pub fn expect(mut self, v: ExpectedVersion) -> Self {
        self.expected_version = v;
        self
    }

    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.schema_version = v;
        self
    }

    /// At least the bytes this event takes in a batch (see
    /// [`crate::ledger::BATCH_OVERHEAD`]).
    pub fn stored_len_bound(&self) -> usize {
        crate::format::record::stored_len_bound_parts(
            self.stream.len(),
            self.event_type.len(),
            self.content_type.len(),
            self.metadata.iter().map(|(k, v)| (k.len(), v.len())),
            self.payload.len(),
        )
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        text_field("stream", &self.stream, MAX_STREAM)?;
        text_field("type", &self.event_type, MAX_NAME)?;
        text_field("content_type", &self.content_type, MAX_NAME)?;
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err((
                "metadata",
                format!(
                    "has {} entries, at most {MAX_METADATA_ENTRIES} allowed",
                    self.metadata.len()
                ),
            ));
        }
        for (k, v) in &self.metadata {
            text_field("metadata key", k, MAX_NAME).map_err(|(f, reason)| {
                // Which of the keys: escaped, and cut short if overlong.
                let shown: String = k.chars().take(64).collect();
                let more = if shown.len() < k.len() { "…" } else { "" };
                (f, format!("{shown:?}{more} {reason}"))
            })?;
            if v.len() > MAX_METADATA_VALUE {
                return Err((
                    "metadata",
                    format!(
                        "has a value of {} bytes at key {k:?}, at most {MAX_METADATA_VALUE} allowed",
                        v.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Refuses a stream id no event can have, for a read of one stream: an
/// empty or overlong id there is a caller's mistake (a missing field, a
/// wrong variable), which an empty answer would hide.
pub fn validate_stream(stream: &str) -> Result<(), String> {
    text_field("stream", stream, MAX_STREAM)
        .map_err(|(_, reason)| format!("stream id {reason} (no event has such a stream)"))
}

pub const MAX_STREAM: usize = 1024;
pub const MAX_NAME: usize = 256;
pub const MAX_METADATA_ENTRIES: usize = 256;
pub const MAX_METADATA_VALUE: usize = 64 * 1024;

fn text_field(field: &'static str, s: &str, max: usize) -> Result<(), (&'static str, String)> {
    if s.is_empty() {
        return Err((field, "must not be empty".into()));
    }
    if s.len() > max {
        return Err((
            field,
            format!("is {} bytes, at most {max} allowed", s.len()),
        ));
    }
    if has_control(s) {
        return Err((field, "must not contain control characters".into()));
    }
    if let Some((at, c)) = invisible(s) {
        return Err((
            field,
            format!(
                "must not contain invisible or text-direction characters (U+{:04X} at byte {at}): an id holding one looks like another that differs",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// The first character of `s` that is invisible, or reorders the text
/// around it, with its byte offset. An agent's stream id, event type or
/// metadata key that holds one looks like another and is not ("Trojan
/// Source", CVE-2021-42574): the Unicode bidirectional controls (U+061C,
/// U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069) and the zero-width
/// characters that join nothing (U+200B, U+2060, U+FEFF). The zero-width
/// joiner and non-joiner (U+200C, U+200D) stay allowed: some scripts and
/// emoji need them.
fn invisible(s: &str) -> Option<(usize, char)> {
    if s.is_ascii() {
        return None;
    }
    s.char_indices().find(|(_, c)| {
        matches!(
            c,
            '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
    })
}

/// Whether `s` holds a control character (`char::is_control`: U+0000 to
/// U+001F and U+007F to U+009F), a byte at a time where `s` is ASCII:
/// every event's stream, type and content type pass through here, and
/// decoding them a char at a time showed in the append profile.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    // A fold without an early exit, which the compiler vectorizes: these
    // fields are short and nearly always clean, so stopping early gains
    // nothing, and a byte-at-a-time loop was 3 % of batched appends' CPU.
    let (low, high) = b.iter().fold((false, 0u8), |(low, high), &c| {
        (low | (c < 0x20) | (c == 0x7f), high | c)
    });
    low || (high >= 0x80 && s.chars().any(char::is_control))
}

/// Canonical JSON bytes: serde_json's map is ordered by key (the
/// `preserve_order` feature is off), so equal values serialize equally.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
}

/// Proof that an event is durable: where it is and what it hashes to.
#[derive(Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    /// The record's chain hash.
    pub hash: Hash,
    pub stream: String,
    pub version: u64,
    pub timestamp_us: i64,
    /// Segment index and byte offset of the batch holding the record.
    pub segment: u64,
    pub offset: u64,
}

/// The hash in hex, as everywhere else it is shown, not 32 numbers.
impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("seq", &self.seq)
            .field("hash", &format_args!("{}", hex(&self.hash)))
            .field("stream", &self.stream)
            .field("version", &self.version)
            .field("timestamp_us", &self.timestamp_us)
            .field("segment", &self.segment)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Receipt {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "hash": hex(&self.hash),
            "stream": self.stream,
            "version": self.version,
            "timestamp": crate::time::format_us(self.timestamp_us),
            "segment": self.segment,
            "offset": self.offset,
        })
    }
}

/// JSON form of a record for `read` output: JSON payloads inline, exactly
/// as stored (a parsed value could round their numbers), others as base64.
/// Fields in alphabetical order.
#[derive(Serialize)]
pub struct RecordJson<'a> {
    content_type: &'a str,
    metadata: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    schema_version: u32,
    seq: u64,
    stream: &'a str,
    timestamp: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    version: u64,
}

pub fn record_json<'a>(r: &'a crate::format::record::RecordRef<'a>) -> RecordJson<'a> {
    use base64::Engine;
    let payload = (r.content_type == "application/json")
        .then(|| serde_json::from_slice::<&serde_json::value::RawValue>(r.payload).ok())
        .flatten();
    RecordJson {
        content_type: r.content_type,
        metadata: r.metadata().collect(),
        payload_base64: payload
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(r.payload)),
        payload,
        schema_version: r.schema_version,
        seq: r.seq,
        stream: r.stream,
        timestamp: crate::time::format_us(r.timestamp_us),
        event_type: r.event_type,
        version: r.stream_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bad_metadata_key_is_named() {
        let mut e = NewEvent::json("s", "T", &serde_json::json!({}));
        for i in 0..50 {
            e = e.with_metadata(format!("k{i:02}"), "v");
        }
        let bell = e.clone().with_metadata("ring\u{7}", "v");
        let (field, reason) = bell.validate().unwrap_err();
        assert_eq!(field, "metadata key");
        assert_eq!(reason, "\"ring\\u{7}\" must not contain control characters");
        let long = e.with_metadata("x".repeat(300), "v");
        let (_, reason) = long.validate().unwrap_err();
        assert!(
            reason.starts_with(&format!("{:?}… is 300 bytes", "x".repeat(64))),
            "{reason}"
        );
    }

    #[test]
    fn a_receipt_shows_its_hash_in_hex() {
        let r = Receipt {
            seq: 7,
            hash: [0xab; 32],
            stream: "s".into(),
            version: 0,
            timestamp_us: 0,
            segment: 0,
            offset: 84,
        };
        let shown = format!("{r:?}");
        assert!(
            shown.contains(&format!("hash: {}", "ab".repeat(32))),
            "{shown}"
        );
        assert!(shown.contains("seq: 7"), "{shown}");
    }

    /// Characters around the control ranges, and some far from them.
    fn text() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            0u32..0x30,
            0x70u32..0xb0,
            Just(0x2028u32),
            Just(0x1f600u32),
            any::<char>().prop_map(u32::from),
        ]
        .prop_filter_map("a char", char::from_u32);
        proptest::collection::vec(c, 0..12).prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn has_control_is_char_is_control(s in text()) {
            prop_assert_eq!(has_control(&s), s.chars().any(char::is_control));
        }
    }

    #[test]
    fn control_characters_are_named_by_field() {
        for bad in ["a\u{0}", "\u{1f}", "x\u{7f}y", "é\u{85}", "\u{9f}"] {
            let mut e = NewEvent::bytes("s", "t", vec![]);
            e.event_type = bad.into();
            assert_eq!(
                e.validate(),
                Err(("type", "must not contain control characters".into())),
                "{bad:?}"
            );
        }
        for good in [
            "plain",
            "é\u{a0}ü",
            "\u{2028}",
            "😀",
            "👩\u{200D}💻",
            "می\u{200C}خواهم",
        ] {
            let mut e = NewEvent::bytes(good, "t", vec![]);
            e.event_type = good.into();
            assert_eq!(e.validate(), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn invisible_and_direction_characters_are_named_with_their_offset() {
        for c in [
            '\u{061C}', '\u{200B}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2060}',
            '\u{2066}', '\u{2069}', '\u{FEFF}',
        ] {
            let stream = format!("decision-é{c}1");
            let e = NewEvent::bytes(stream, "t", vec![]);
            let (field, reason) = e.validate().unwrap_err();
            assert_eq!(field, "stream");
            assert!(
                reason.contains(&format!("U+{:04X} at byte 11", c as u32)),
                "{reason}"
            );
        }
    }
}
