//! The test vectors of `ledger-format.md`.
//!
//! The tiny ledger of the spec's last section is built twice: once with the
//! pure `bi_ledger::format` encoders, and once by hand, field by field, from
//! the spec's byte tables (with an independent CRC32C and varint). The two
//! must agree, and both must equal the fenced blocks of the document, so the
//! spec and the code cannot drift apart. The document's bytes are then
//! decoded with the library's decoders, and written out as real blobs that
//! `LedgerReader::verify` (and a writer's recovery) must accept.
//!
//! A block of the document is a vector when the line before its opening
//! fence is `<!-- vector: NAME -->`:
//!
//! - ` ```hex `: bytes as hex digits; white space is ignored, and so is
//!   everything from a `#` to the end of its line (the annotations, which
//!   are compared separately, as a list);
//! - ` ```text `: the block's lines, each followed by `\n`;
//! - ` ```json `: a JSON value, compared as parsed JSON.
//!
//! To regenerate the blocks after a deliberate format change, run
//! `BI_LEDGER_PRINT_VECTORS=1 cargo test --test vectors -- --nocapture`
//! and paste what it prints into the document.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::format::batch::{self, BatchEncoder, Frame};
use bi_ledger::format::checkpoint::{Checkpoint, Verifier};
use bi_ledger::format::record::Record;
use bi_ledger::format::segment::{SegmentHeader, HEADER_LEN};
use bi_ledger::format::snapshot::Snapshot;
use bi_ledger::format::{chain, hex, merkle, Hash};
use bi_ledger::ledger::layout::{self, Meta};
use bi_ledger::ledger::proof::{ConsistencyProof, InclusionProof};
use bi_ledger::ledger::tip::Tip;
use bi_ledger::{keys, Ledger, LedgerOptions, LedgerReader, NewEvent};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// The vector ledger.

const LEDGER_NAME: &str = "vectors";
const LEDGER_ID: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];
const KEY_SEED: [u8; 32] = [0x01; 32];
/// 2026-01-01T00:00:00Z in microseconds since the Unix epoch.
const T0: i64 = 1_767_225_600_000_000;

/// The two batches: first sequence number, base timestamp, record count.
const BATCHES: [(u64, i64, usize); 2] = [(0, T0, 2), (2, T0 + 1_000_000, 2)];

/// The checkpoints: size, time (µs) and the time as the note spells it.
const CHECKPOINTS: [(u64, i64, &str); 3] = [
    (0, T0 - 4_876_544, "2025-12-31T23:59:55.123456Z"),
    (2, T0 + 500_000, "2026-01-01T00:00:00.500000Z"),
    (4, T0 + 2_000_007, "2026-01-01T00:00:02.000007Z"),
];

/// The inclusion proof given: record 0 in the tree of size 4.
const INCLUSION: (u64, u64) = (0, 4);
/// The consistency proof given: from size 2 to size 4.
const CONSISTENCY: (u64, u64) = (2, 4);

fn records() -> Vec<Record> {
    let rec = |seq: u64,
               timestamp_us: i64,
               stream: &str,
               stream_version: u64,
               event_type: &str,
               schema_version: u32,
               content_type: &str,
               metadata: &[(&str, &str)],
               payload: &[u8]| Record {
        seq,
        timestamp_us,
        stream: stream.into(),
        stream_version,
        event_type: event_type.to_owned().into(),
        schema_version,
        content_type: content_type.to_owned().into(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        payload: payload.to_vec(),
    };
    vec![
        rec(
            0,
            T0,
            "decision-1",
            0,
            "DecisionQueued",
            1,
            "application/json",
            &[("actor", "ceo"), ("correlation-id", "c-42")],
            br#"{"title":"Expand to EU"}"#,
        ),
        rec(
            1,
            T0 + 1_500,
            "decision-1",
            1,
            "VoteCast",
            2,
            "application/json",
            &[],
            br#"{"agent":"cfo","vote":"approve"}"#,
        ),
        rec(
            2,
            T0 + 1_000_250,
            "decision-1-files",
            0,
            "AttachmentAdded",
            1,
            "application/pdf",
            &[],
            b"%PDF-1.7\n",
        ),
        rec(
            3,
            T0 + 1_000_250,
            "decision-1-files",
            1,
            "AttachmentAdded",
            1,
            "application/octet-stream",
            &[],
            &[0x00, 0x01, 0xfe, 0xff],
        ),
    ]
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&KEY_SEED)
}

fn verifier() -> Verifier {
    Verifier {
        name: Meta::key_name(LEDGER_NAME),
        key: signing_key().verifying_key(),
    }
}

fn meta() -> Meta {
    Meta {
        name: LEDGER_NAME.into(),
        id: LEDGER_ID,
        verifier: verifier(),
        max_block: bi_ledger::backend::DEFAULT_MAX_BLOCK,
    }
}

// ---------------------------------------------------------------------------
// Vectors.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hex,
    Text,
    Json,
}

impl Kind {
    fn fence(self) -> &'static str {
        match self {
            Kind::Hex => "hex",
            Kind::Text => "text",
            Kind::Json => "json",
        }
    }
}

struct Vector {
    name: String,
    kind: Kind,
    /// The block's contents as printed into the document.
    block: String,
    /// The value: bytes, text bytes, or compact JSON.
    value: Vec<u8>,
    /// The annotations of a hex block, in order.
    notes: Vec<String>,
}

impl Vector {
    fn hex(name: impl Into<String>, a: &Ann) -> Self {
        Vector {
            name: name.into(),
            kind: Kind::Hex,
            block: a.render(),
            value: a.bytes(),
            notes: a.parts.iter().map(|(_, w)| w.trim().to_owned()).collect(),
        }
    }

    fn hash(name: impl Into<String>, h: &Hash, what: &str) -> Self {
        let mut a = Ann::default();
        a.put(h, what);
        Self::hex(name, &a)
    }

    fn text(name: impl Into<String>, text: &str) -> Self {
        assert!(text.ends_with('\n'), "a text vector ends with a newline");
        Vector {
            name: name.into(),
            kind: Kind::Text,
            block: text.trim_end_matches('\n').to_owned(),
            value: text.as_bytes().to_vec(),
            notes: Vec::new(),
        }
    }

    fn json(name: impl Into<String>, v: &impl serde::Serialize) -> Self {
        Vector {
            name: name.into(),
            kind: Kind::Json,
            block: serde_json::to_string_pretty(v).unwrap(),
            value: serde_json::to_vec(&serde_json::to_value(v).unwrap()).unwrap(),
            notes: Vec::new(),
        }
    }
}

/// Bytes built field by field, each with a note for the document.
#[derive(Default, Clone)]
struct Ann {
    parts: Vec<(Vec<u8>, String)>,
}

impl Ann {
    fn put(&mut self, bytes: impl AsRef<[u8]>, what: impl Into<String>) {
        self.parts.push((bytes.as_ref().to_vec(), what.into()));
    }

    fn append(&mut self, other: &Ann) {
        self.parts.extend(other.parts.iter().cloned());
    }

    fn bytes(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|(b, _)| b.clone()).collect()
    }

    fn len(&self) -> usize {
        self.parts.iter().map(|(b, _)| b.len()).sum()
    }

    /// Offset of the first part whose note starts with `what`.
    fn offset_of(&self, what: &str) -> usize {
        let i = self
            .parts
            .iter()
            .position(|(_, w)| w.starts_with(what))
            .unwrap_or_else(|| panic!("no part {what:?}"));
        self.parts[..i].iter().map(|(b, _)| b.len()).sum()
    }

    /// 16 bytes a line, the note after the first line of each field.
    fn render(&self) -> String {
        let mut out = String::new();
        for (bytes, what) in &self.parts {
            if bytes.is_empty() {
                out.push_str(&format!("{:<47}  # {what}\n", ""));
                continue;
            }
            for (i, chunk) in bytes.chunks(16).enumerate() {
                let h: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                let h = h.join(" ");
                if i == 0 {
                    out.push_str(&format!("{h:<47}  # {what}\n"));
                } else {
                    out.push_str(&h);
                    out.push('\n');
                }
            }
        }
        out.trim_end_matches('\n').to_owned()
    }
}

// ---------------------------------------------------------------------------
// Independent primitives, straight from the spec's conventions.

/// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, initial value and
/// final XOR 0xFFFFFFFF, no masking.
fn crc32c_ref(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn varint_ref(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd number of hex digits");
    (0..s.len())
        .step_by(2)
        .map(|i| {
            let digit = |c: u8| (c as char).to_digit(16).expect("a hex digit") as u8;
            digit(s.as_bytes()[i]) << 4 | digit(s.as_bytes()[i + 1])
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The ledger by hand, per the spec's tables.

fn hand_segment_header(first_seq: u64, prev_chain: &Hash) -> Ann {
    let mut a = Ann::default();
    a.put(b"BILEDGER", "magic \"BILEDGER\"");
    a.put(1u16.to_le_bytes(), "format version 1 (u16le)");
    a.put(84u16.to_le_bytes(), "header length 84 (u16le)");
    a.put(0u32.to_le_bytes(), "flags 0 (u32le)");
    a.put(LEDGER_ID, "ledger id");
    a.put(0u64.to_le_bytes(), "segment index 0 (u64le)");
    a.put(
        first_seq.to_le_bytes(),
        format!("first sequence number {first_seq} (u64le)"),
    );
    a.put(prev_chain, "chain hash before the first record: genesis");
    let crc = crc32c_ref(&a.bytes());
    a.put(
        crc.to_le_bytes(),
        format!("CRC32C of bytes 0..80 = 0x{crc:08x} (u32le)"),
    );
    a
}

fn str_field(a: &mut Ann, what: &str, s: &[u8], len: Vec<u8>) {
    let mut b = len;
    b.extend_from_slice(s);
    let shown = String::from_utf8_lossy(s);
    a.put(b, format!("{what}: length {}, {shown:?}", s.len()));
}

/// The stored form of `r` after `prev` (None: first of its batch).
fn hand_stored(a: &mut Ann, r: &Record, prev: Option<&Record>, prev_ts: i64) {
    let n = r.seq;
    let stream_rep = prev.is_some_and(|p| p.stream == r.stream);
    let type_rep = prev.is_some_and(|p| p.event_type == r.event_type);
    let mut flags = 0u8;
    let mut names = Vec::new();
    if stream_rep {
        flags |= 0x01;
        names.push("stream repeated");
    }
    if type_rep {
        flags |= 0x02;
        names.push("type repeated");
    }
    if !r.metadata.is_empty() {
        flags |= 0x04;
        names.push("has metadata");
    }
    let names = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    a.put(
        [flags],
        format!("record {n}: flags 0x{flags:02x} ({names})"),
    );
    let delta = (r.timestamp_us - prev_ts) as u64;
    a.put(
        varint_ref(delta),
        format!("  timestamp delta {delta} us (varint)"),
    );
    if !stream_rep {
        let s = r.stream.as_bytes();
        str_field(a, "  stream", s, varint_ref(s.len() as u64));
    }
    a.put(
        varint_ref(r.stream_version),
        format!("  stream version {} (varint)", r.stream_version),
    );
    if !type_rep {
        let t = r.event_type.as_bytes();
        str_field(a, "  event type", t, varint_ref(t.len() as u64));
    }
    a.put(
        varint_ref(r.schema_version as u64),
        format!("  schema version {} (varint)", r.schema_version),
    );
    let table = [
        "application/json",
        "application/octet-stream",
        "text/plain; charset=utf-8",
    ];
    match table.iter().position(|c| *c == r.content_type) {
        Some(i) => a.put(
            [i as u8 + 1],
            format!("  content type code {} = {:?}", i + 1, r.content_type),
        ),
        None => {
            a.put([0], "  content type code 0: spelled out");
            let c = r.content_type.as_bytes();
            str_field(a, "  content type", c, varint_ref(c.len() as u64));
        }
    }
    if !r.metadata.is_empty() {
        a.put(
            varint_ref(r.metadata.len() as u64),
            format!("  metadata count {} (varint)", r.metadata.len()),
        );
        for (k, v) in &r.metadata {
            str_field(a, "  key", k.as_bytes(), varint_ref(k.len() as u64));
            str_field(a, "  value", v.as_bytes(), varint_ref(v.len() as u64));
        }
    }
    a.put(
        varint_ref(r.payload.len() as u64),
        format!("  payload length {} (varint)", r.payload.len()),
    );
    a.put(&r.payload, "  payload");
}

/// A whole batch frame around the given stored records.
fn frame_around(first_seq: u64, base_ts: i64, count: u32, records: &Ann) -> Ann {
    let mut body = Ann::default();
    body.put(
        first_seq.to_le_bytes(),
        format!("first sequence number {first_seq} (u64le)"),
    );
    body.put(count.to_le_bytes(), format!("record count {count} (u32le)"));
    body.put(
        base_ts.to_le_bytes(),
        format!("base timestamp {base_ts} us (i64le)"),
    );
    body.append(records);
    let len = body.len() as u32;
    let mut crc_input = len.to_le_bytes().to_vec();
    crc_input.extend(body.bytes());
    let crc = crc32c_ref(&crc_input);
    let mut a = Ann::default();
    a.put(len.to_le_bytes(), format!("body length {len} (u32le)"));
    let check = !len;
    a.put(
        check.to_le_bytes(),
        format!("complement of the body length: !{len} = 0x{check:08x} (u32le)"),
    );
    a.put(
        crc.to_le_bytes(),
        format!("CRC32C(length || body) = 0x{crc:08x} (u32le)"),
    );
    a.append(&body);
    a
}

fn hand_batch(first_seq: u64, base_ts: i64, recs: &[Record]) -> Ann {
    let mut stored = Ann::default();
    let mut prev: Option<&Record> = None;
    let mut prev_ts = base_ts;
    for r in recs {
        hand_stored(&mut stored, r, prev, prev_ts);
        prev = Some(r);
        prev_ts = r.timestamp_us;
    }
    frame_around(first_seq, base_ts, recs.len() as u32, &stored)
}

fn hand_entry(r: &Record) -> Ann {
    let mut a = Ann::default();
    a.put([1u8], "entry version 1");
    a.put(
        r.seq.to_le_bytes(),
        format!("sequence number {} (u64le)", r.seq),
    );
    a.put(
        r.timestamp_us.to_le_bytes(),
        format!("timestamp {} us (i64le)", r.timestamp_us),
    );
    let u32len = |s: &str| (s.len() as u32).to_le_bytes().to_vec();
    str_field(&mut a, "stream", r.stream.as_bytes(), u32len(&r.stream));
    a.put(
        r.stream_version.to_le_bytes(),
        format!("stream version {} (u64le)", r.stream_version),
    );
    str_field(
        &mut a,
        "event type",
        r.event_type.as_bytes(),
        u32len(&r.event_type),
    );
    a.put(
        r.schema_version.to_le_bytes(),
        format!("schema version {} (u32le)", r.schema_version),
    );
    str_field(
        &mut a,
        "content type",
        r.content_type.as_bytes(),
        u32len(&r.content_type),
    );
    a.put(
        (r.metadata.len() as u32).to_le_bytes(),
        format!("metadata count {} (u32le)", r.metadata.len()),
    );
    for (k, v) in &r.metadata {
        str_field(&mut a, "  key", k.as_bytes(), u32len(k));
        str_field(&mut a, "  value", v.as_bytes(), u32len(v));
    }
    a.put(
        (r.payload.len() as u64).to_le_bytes(),
        format!("payload length {} (u64le)", r.payload.len()),
    );
    a.put(&r.payload, "payload");
    a
}

/// RFC 9162 MTH over leaf hashes, straight from the definition.
fn hand_mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            sha256(&[&[1], &hand_mth(&leaves[..k]), &hand_mth(&leaves[k..])])
        }
    }
}

struct HandSnapshot<'a> {
    size: u64,
    chain_head: Hash,
    last_ts: i64,
    segment_len: u64,
    segment_blocks: u64,
    frontier: Vec<Hash>,
    streams: Vec<(&'a str, u64)>,
}

fn hand_snapshot(s: &HandSnapshot<'_>) -> Ann {
    let mut a = Ann::default();
    a.put(b"BILSNAP1", "magic \"BILSNAP1\"");
    a.put(1u16.to_le_bytes(), "snapshot version 1 (u16le)");
    a.put(0u16.to_le_bytes(), "reserved 0 (u16le)");
    a.put(LEDGER_ID, "ledger id");
    a.put(s.size.to_le_bytes(), format!("size {} (u64le)", s.size));
    a.put(s.chain_head, "chain head");
    let ts_note = if s.last_ts == i64::MIN {
        "last timestamp: none yet, i64 minimum (i64le)".to_owned()
    } else {
        format!("last timestamp {} us (i64le)", s.last_ts)
    };
    a.put(s.last_ts.to_le_bytes(), ts_note);
    a.put(0u64.to_le_bytes(), "segment index 0 (u64le)");
    a.put(
        s.segment_len.to_le_bytes(),
        format!("segment length {} (u64le)", s.segment_len),
    );
    a.put(
        s.segment_blocks.to_le_bytes(),
        format!("segment blocks {} (u64le)", s.segment_blocks),
    );
    a.put(
        (s.frontier.len() as u32).to_le_bytes(),
        format!("frontier length {} (u32le)", s.frontier.len()),
    );
    for (i, n) in s.frontier.iter().enumerate() {
        a.put(n, format!("frontier node {i}"));
    }
    a.put(
        (s.streams.len() as u64).to_le_bytes(),
        format!("stream count {} (u64le)", s.streams.len()),
    );
    for (name, v) in &s.streams {
        str_field(
            &mut a,
            "stream",
            name.as_bytes(),
            varint_ref(name.len() as u64),
        );
        a.put(varint_ref(*v), format!("  version {v} (varint)"));
    }
    let digest = sha256(&[&a.bytes()]);
    a.put(digest, "SHA-256 of all preceding bytes");
    a
}

/// The Bloom filter of §11.3 for a batch of `count` records whose streams
/// are `streams` (repeats allowed), from the document's rules alone.
fn hand_filter(count: u64, streams: &[&str]) -> Vec<u8> {
    let len = (10 * count).div_ceil(8);
    let bits = len * 8;
    let mut f = vec![0u8; len as usize];
    for s in streams {
        let mut h1: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h1 ^= u64::from(b);
            h1 = h1.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h2 = h1.rotate_left(32) | 1;
        for i in 0..7u64 {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % bits;
            f[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    f
}

/// §11.3 by hand: the stream index of records `from..to`, whose batches
/// are (frame offset in segment 0, record count, the records' streams).
fn hand_stream_index(from: u64, to: u64, batches: &[(u64, u64, Vec<&str>)]) -> Ann {
    let mut a = Ann::default();
    a.put(b"BILSIDX1", "magic \"BILSIDX1\"");
    a.put(1u16.to_le_bytes(), "stream index version 1 (u16le)");
    a.put(0u16.to_le_bytes(), "reserved 0 (u16le)");
    a.put(LEDGER_ID, "ledger id");
    a.put(from.to_le_bytes(), format!("from {from} (u64le)"));
    a.put(to.to_le_bytes(), format!("to {to} (u64le)"));
    a.put(
        (batches.len() as u64).to_le_bytes(),
        format!("batch count {} (u64le)", batches.len()),
    );
    for (offset, count, streams) in batches {
        let filter = hand_filter(*count, streams);
        a.put(varint_ref(0), "  segment index 0 (varint)");
        a.put(
            varint_ref(*offset),
            format!("  frame offset {offset} (varint)"),
        );
        a.put(
            varint_ref(*count),
            format!("  record count {count} (varint)"),
        );
        a.put(
            varint_ref(filter.len() as u64),
            format!("  filter length {} (varint)", filter.len()),
        );
        a.put(&filter, format!("  filter of {}", streams.join(", ")));
    }
    let digest = sha256(&[&a.bytes()]);
    a.put(digest, "SHA-256 of all preceding bytes");
    a
}

/// §13.9: the node cache from size 1000 to 2048 of the tree whose entry
/// `i` is the 8 bytes `u64le(i)`, under the vector ledger's id; by hand, and
/// checked against the library's encoder and decoder.
fn node_cache_vector() -> Ann {
    use bi_ledger::format::nodes::{self, Node, NodeCache};
    let leaves: Vec<Hash> = (0..2048u64)
        .map(|i| sha256(&[&[0], &i.to_le_bytes()]))
        .collect();
    let mut a = Ann::default();
    a.put(b"BILNODE1", "magic \"BILNODE1\"");
    a.put(1u16.to_le_bytes(), "node cache version 1 (u16le)");
    a.put(0u16.to_le_bytes(), "reserved 0 (u16le)");
    a.put(LEDGER_ID, "ledger id");
    a.put(1000u64.to_le_bytes(), "from 1000 (u64le)");
    a.put(2048u64.to_le_bytes(), "to 2048 (u64le)");
    for (what, range) in [
        ("node (10, 0): MTH of entries 0..1024", 0..1024),
        ("node (10, 1): MTH of entries 1024..2048", 1024..2048),
        ("node (11, 0): MTH of entries 0..2048", 0..2048),
    ] {
        a.put(hand_mth(&leaves[range]), what);
    }
    let digest = sha256(&[&a.bytes()]);
    a.put(digest, "SHA-256 of all preceding bytes");
    let cache = NodeCache {
        ledger_id: LEDGER_ID,
        from: 1000,
        to: 2048,
        hashes: nodes::completed(1000, 2048)
            .map(|n| {
                let first = (n.index << n.height) as usize;
                merkle::root(&leaves[first..n.end().unwrap() as usize])
            })
            .collect(),
    };
    assert_eq!(cache.encode(), a.bytes(), "node cache");
    let decoded = NodeCache::decode(&a.bytes()).unwrap();
    let top = Node {
        height: 11,
        index: 0,
    };
    assert_eq!(decoded.get(top), Some(hand_mth(&leaves)));
    a
}

fn hand_key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let d = sha256(&[name.as_bytes(), b"\n", &[0x01], public]);
    [d[0], d[1], d[2], d[3]]
}

fn hand_note(size: u64, root: &Hash, chain_head: &Hash, time: &str, snapshot: &Hash) -> String {
    let key = signing_key();
    let key_name = format!("bi-ledger/{LEDGER_NAME}");
    let body = format!(
        "bi-ledger/{LEDGER_NAME}/{}\n{size}\n{}\nchain {}\ntime {time}\nsnapshot {}\n",
        hex(&LEDGER_ID),
        BASE64.encode(root),
        BASE64.encode(chain_head),
        BASE64.encode(snapshot),
    );
    let mut blob = hand_key_id(&key_name, key.verifying_key().as_bytes()).to_vec();
    blob.extend_from_slice(&key.sign(body.as_bytes()).to_bytes());
    format!("{body}\n\u{2014} {key_name} {}\n", BASE64.encode(blob))
}

// ---------------------------------------------------------------------------
// The ledger with the library, checked against the hand-built one.

struct Built {
    vectors: Vec<Vector>,
    /// The segment's blob contents.
    segment: Vec<u8>,
    checkpoints: Vec<(u64, String)>,
    snapshots: Vec<(u64, Vec<u8>)>,
    stream_indexes: Vec<(u64, Vec<u8>)>,
    meta_text: String,
}

fn build() -> Built {
    let recs = records();
    let key = signing_key();
    let verifier = verifier();
    let meta = meta();
    let mut v = Vec::new();

    // Identity and keys.
    let meta_text = meta.encode();
    let vkey = verifier.to_vkey();
    let pk = key.verifying_key();
    let hand_id = hand_key_id("bi-ledger/vectors", pk.as_bytes());
    let mut typed = vec![0x01];
    typed.extend_from_slice(pk.as_bytes());
    assert_eq!(
        vkey,
        format!(
            "bi-ledger/vectors+{}+{}",
            hex(&hand_id),
            BASE64.encode(&typed)
        )
    );
    assert_eq!(
        meta_text,
        format!(
            "bi-ledger ledger v1\nname vectors\nid 000102030405060708090a0b0c0d0e0f\nkey {vkey}\n"
        )
    );
    let private = keys::encode_signing_key(&verifier.name, &key);
    let mut typed_seed = vec![0x01];
    typed_seed.extend_from_slice(&KEY_SEED);
    assert_eq!(
        private,
        format!(
            "PRIVATE+KEY+bi-ledger/vectors+{}+{}\n",
            hex(&hand_id),
            BASE64.encode(&typed_seed)
        )
    );
    v.push(Vector::text("ledger-file", &meta_text));
    // The same ledger on a store of 64 KiB blocks.
    let blocks_text = Meta {
        max_block: 65_536,
        ..meta.clone()
    }
    .encode();
    assert_eq!(blocks_text, format!("{meta_text}block 65536\n"));
    v.push(Vector::text("ledger-file-blocks", &blocks_text));
    v.push(Vector::text("signing-key", &private));
    v.push(Vector::text("verifier-key", &format!("{vkey}\n")));

    // The chain's tags, genesis and the segment header.
    let mut chain_tag = b"bi-ledger chain v1".to_vec();
    chain_tag.resize(32, 0);
    assert_eq!(chain_tag, chain::CHAIN_TAG);
    let mut tag = Ann::default();
    tag.put(&chain_tag[..18], "\"bi-ledger chain v1\"");
    tag.put(&chain_tag[18..], "14 zero bytes");
    v.push(Vector::hex("chain-tag", &tag));
    let mut genesis_tag = b"bi-ledger genesis v1".to_vec();
    genesis_tag.resize(32, 0);
    assert_eq!(genesis_tag, chain::GENESIS_TAG);
    let mut tag = Ann::default();
    tag.put(&genesis_tag[..20], "\"bi-ledger genesis v1\"");
    tag.put(&genesis_tag[20..], "12 zero bytes");
    v.push(Vector::hex("genesis-tag", &tag));
    let genesis = chain::genesis(&LEDGER_ID);
    assert_eq!(genesis, sha256(&[&genesis_tag, &LEDGER_ID]));
    v.push(Vector::hash(
        "genesis",
        &genesis,
        "SHA-256(GENESIS_TAG || ledger id)",
    ));
    let header = SegmentHeader {
        ledger_id: LEDGER_ID,
        index: 0,
        first_seq: 0,
        prev_chain: genesis,
    }
    .encode();
    let hand_header = hand_segment_header(0, &genesis);
    assert_eq!(header, hand_header.bytes(), "segment header");
    v.push(Vector::hex("segment-header", &hand_header));

    // Batches.
    let mut segment = header.clone();
    let mut at = 0;
    for (i, &(first_seq, base_ts, count)) in BATCHES.iter().enumerate() {
        let batch_recs = &recs[at..at + count];
        at += count;
        let mut enc = BatchEncoder::new(first_seq, base_ts);
        for r in batch_recs {
            enc.push(r);
        }
        let frame = enc.finish();
        let hand = hand_batch(first_seq, base_ts, batch_recs);
        assert_eq!(frame, hand.bytes(), "batch {i}");
        segment.extend_from_slice(&frame);
        v.push(Vector::hex(format!("batch-{i}"), &hand));
    }

    // Entries, leaves, chain.
    let mut leaves = Vec::new();
    let mut chain_hashes = Vec::new();
    let mut head = genesis;
    for r in &recs {
        let entry = r.entry_bytes();
        let hand = hand_entry(r);
        assert_eq!(entry, hand.bytes(), "entry {}", r.seq);
        let leaf = r.leaf_hash();
        assert_eq!(leaf, merkle::leaf_hash(&entry));
        assert_eq!(leaf, sha256(&[&[0], &entry]));
        let next = chain::link(&head, &leaf);
        assert_eq!(next, sha256(&[&chain_tag, &leaf, &head]));
        head = next;
        v.push(Vector::hex(format!("entry-{}", r.seq), &hand));
        v.push(Vector::hash(
            format!("leaf-{}", r.seq),
            &leaf,
            "SHA-256(0x00 || entry)",
        ));
        let prev = if r.seq == 0 {
            "genesis".to_owned()
        } else {
            format!("chain[{}]", r.seq - 1)
        };
        v.push(Vector::hash(
            format!("chain-{}", r.seq),
            &head,
            &format!("SHA-256(CHAIN_TAG || leaf[{}] || {prev})", r.seq),
        ));
        leaves.push(leaf);
        chain_hashes.push(head);
    }

    // Merkle roots at each checkpoint size.
    for &(size, _, _) in &CHECKPOINTS {
        let root = merkle::root(&leaves[..size as usize]);
        assert_eq!(root, hand_mth(&leaves[..size as usize]));
        let what = match size {
            0 => "SHA-256 of the empty string".to_owned(),
            _ => format!("MTH of leaves 0..{size}"),
        };
        v.push(Vector::hash(format!("root-{size}"), &root, &what));
    }

    // Snapshots, re-derived the way verify does, and checkpoints.
    let mut tip = Tip::genesis(LEDGER_ID);
    tip.segment_len = header.len() as u64;
    tip.segment_blocks = 1;
    let mut checkpoints = Vec::new();
    let mut snapshots = Vec::new();
    let mut stream_indexes = Vec::new();
    let mut batch_lens: Vec<u64> = Vec::new();
    let mut pos = header.len();
    let mut pending = CHECKPOINTS.iter().peekable();
    loop {
        while let Some(&&(size, time_us, time)) = pending.peek() {
            if size != tip.size {
                break;
            }
            pending.next();
            let n = size as usize;
            let snap = tip.snapshot();
            assert_eq!(snap.frontier, {
                let mut f = merkle::Frontier::new();
                f.extend(&leaves[..n]);
                f.nodes().to_vec()
            });
            let bytes = snap.encode();
            let streams: Vec<(&str, u64)> = match size {
                0 => vec![],
                2 => vec![("decision-1", 1)],
                _ => vec![("decision-1", 1), ("decision-1-files", 1)],
            };
            let hand = hand_snapshot(&HandSnapshot {
                size,
                chain_head: if n == 0 { genesis } else { chain_hashes[n - 1] },
                last_ts: if n == 0 {
                    i64::MIN
                } else {
                    recs[n - 1].timestamp_us
                },
                segment_len: pos as u64,
                segment_blocks: 1 + BATCHES.iter().filter(|b| b.0 < size).count() as u64,
                frontier: match size {
                    0 => vec![],
                    _ => vec![hand_mth(&leaves[..n])],
                },
                streams,
            });
            assert_eq!(bytes, hand.bytes(), "snapshot {size}");
            v.push(Vector::hex(format!("snapshot-{size}"), &hand));
            snapshots.push((size, bytes));

            // The checkpoint signs the SHA-256 of the snapshot's bytes
            // before the digest that closes it (format §10.1).
            let hand_bytes = hand.bytes();
            let snapshot: Hash = Sha256::digest(&hand_bytes[..hand_bytes.len() - 32]).into();
            let cp = Checkpoint {
                origin: meta.origin(),
                size,
                root: tip.frontier.root(),
                chain_head: tip.chain_head,
                time_us,
                snapshot: Some(snapshot),
            };
            let note = cp.sign(&verifier.name, &key);
            assert_eq!(
                note,
                hand_note(
                    size,
                    &hand_mth(&leaves[..n]),
                    &cp.chain_head,
                    time,
                    &snapshot
                )
            );
            v.push(Vector::text(format!("checkpoint-{size}"), &note));
            checkpoints.push((size, note));

            // The stream index beside it, re-derived as verify does. There
            // is none for checkpoint 0 (no records since the one before).
            let (index, _) = tip.take_caches();
            if size > 0 {
                let b0 = HEADER_LEN as u64;
                let b1 = b0 + batch_lens[0];
                let batches = match size {
                    2 => vec![(b0, 2, vec!["decision-1", "decision-1"])],
                    _ => vec![(b1, 2, vec!["decision-1-files", "decision-1-files"])],
                };
                let from = size - 2;
                let hand = hand_stream_index(from, size, &batches);
                assert_eq!(index.encode(), hand.bytes(), "stream index {size}");
                v.push(Vector::hex(format!("streams-{size}"), &hand));
                stream_indexes.push((size, index.encode()));
            }
        }
        if pos == segment.len() {
            break;
        }
        let Frame::Complete { len, body } = batch::parse_frame(&segment[pos..], 1 << 22) else {
            panic!("frame at {pos}");
        };
        let records = body.decode_all().unwrap();
        tip.index_batch(
            pos as u64,
            body.first_seq,
            records.len(),
            records.iter().map(|r| r.stream),
        );
        for r in &records {
            let leaf = r.leaf_hash();
            tip.apply(r, chain::midstate(&leaf), leaf).unwrap();
        }
        batch_lens.push(len as u64);
        pos += len;
        tip.segment_len = pos as u64;
        tip.segment_blocks += 1;
    }
    assert!(pending.next().is_none());

    // Proofs.
    let (seq, size) = INCLUSION;
    let proof = merkle::inclusion_proof(&leaves[..size as usize], seq).unwrap();
    assert_eq!(
        proof,
        vec![leaves[1], hand_mth(&leaves[2..4])],
        "inclusion proof of 0 in 4"
    );
    let inclusion = InclusionProof {
        seq,
        size,
        entry: hex(&recs[seq as usize].entry_bytes()),
        proof: proof.iter().map(|h| hex(h)).collect(),
    };
    v.push(Vector::json("inclusion-proof", &inclusion));
    let (old, new) = CONSISTENCY;
    let proof = merkle::consistency_proof(&leaves[..new as usize], old).unwrap();
    assert_eq!(proof, vec![hand_mth(&leaves[2..4])], "consistency 2 -> 4");
    let consistency = ConsistencyProof {
        old_size: old,
        new_size: new,
        proof: proof.iter().map(|h| hex(h)).collect(),
    };
    v.push(Vector::json("consistency-proof", &consistency));
    v.push(Vector::hex("node-cache", &node_cache_vector()));

    Built {
        vectors: v,
        segment,
        checkpoints,
        snapshots,
        stream_indexes,
        meta_text,
    }
}

// ---------------------------------------------------------------------------
// The document.

fn doc_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ledger-format.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A vector block of the document.
struct DocVector {
    kind: Kind,
    value: Vec<u8>,
    /// What follows `#` on the lines of a hex block, in order.
    notes: Vec<String>,
}

/// Every vector block of the document, by name.
fn parse_doc(doc: &str) -> BTreeMap<String, DocVector> {
    let mut out = BTreeMap::new();
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- vector:")
            .and_then(|l| l.strip_suffix("-->"))
            .map(str::trim)
        else {
            continue;
        };
        let (_, fence) = lines.next().expect("a block after the marker");
        let kind = match fence.trim() {
            "```hex" => Kind::Hex,
            "```text" => Kind::Text,
            "```json" => Kind::Json,
            other => panic!("line {}: vector {name}: unexpected fence {other:?}", n + 2),
        };
        let mut body = Vec::new();
        loop {
            let (_, l) = lines
                .next()
                .unwrap_or_else(|| panic!("vector {name}: unterminated block"));
            if l.trim_end() == "```" {
                break;
            }
            body.push(l);
        }
        let value = match kind {
            Kind::Hex => {
                let digits: String = body
                    .iter()
                    .map(|l| l.split('#').next().unwrap())
                    .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
                    .collect();
                unhex(&digits)
            }
            Kind::Text => body
                .iter()
                .flat_map(|l| format!("{l}\n").into_bytes())
                .collect(),
            Kind::Json => {
                let v: serde_json::Value = serde_json::from_str(&body.join("\n"))
                    .unwrap_or_else(|e| panic!("vector {name}: {e}"));
                serde_json::to_vec(&v).unwrap()
            }
        };
        let notes = match kind {
            Kind::Hex => body
                .iter()
                .filter_map(|l| l.split_once('#'))
                .map(|(_, note)| note.trim().to_owned())
                .collect(),
            _ => Vec::new(),
        };
        let previous = out.insert(name.to_owned(), DocVector { kind, value, notes });
        assert!(previous.is_none(), "vector {name} appears twice");
    }
    out
}

fn print_mode() -> bool {
    std::env::var_os("BI_LEDGER_PRINT_VECTORS").is_some_and(|v| v == "1")
}

/// The document's vectors, which must be exactly the ones the code builds.
fn doc_vectors() -> BTreeMap<String, Vec<u8>> {
    let doc = parse_doc(&doc_text());
    doc.into_iter().map(|(k, v)| (k, v.value)).collect()
}

fn doc_hash(doc: &BTreeMap<String, Vec<u8>>, name: &str) -> Hash {
    doc[name].clone().try_into().unwrap()
}

fn doc_str(doc: &BTreeMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(doc[name].clone()).unwrap()
}

#[test]
fn document_matches_the_code() {
    let built = build();
    if print_mode() {
        for v in &built.vectors {
            println!(
                "<!-- vector: {} -->\n```{}\n{}\n```\n",
                v.name,
                v.kind.fence(),
                v.block
            );
        }
        return;
    }
    let doc = parse_doc(&doc_text());
    for v in &built.vectors {
        let Some(d) = doc.get(&v.name) else {
            panic!("ledger-format.md lacks vector {}", v.name);
        };
        assert_eq!(d.kind, v.kind, "vector {}: block kind", v.name);
        assert!(
            d.value == v.value,
            "vector {} differs between ledger-format.md and the code; the code gives:\n{}",
            v.name,
            v.block
        );
        // The annotations are part of the spec too (they state CRCs,
        // lengths and flag meanings), so they must match as well.
        assert!(
            d.notes == v.notes,
            "vector {}: the annotations differ; the code gives:\n{}",
            v.name,
            v.block
        );
    }
    for name in doc.keys() {
        assert!(
            built.vectors.iter().any(|v| &v.name == name),
            "ledger-format.md has vector {name}, which this test does not build"
        );
    }
    // The prose of §13.3 and §13.8 states the segment's layout.
    let text = doc_text().split_whitespace().collect::<Vec<_>>().join(" ");
    let header = HEADER_LEN;
    let b0 = built.vectors.iter().find(|v| v.name == "batch-0").unwrap();
    let b1 = built.vectors.iter().find(|v| v.name == "batch-1").unwrap();
    let (l0, l1) = (b0.value.len(), b1.value.len());
    let total = built.segment.len();
    assert_eq!(total, header + l0 + l1);
    for claim in [
        format!("batch 0 (offset {header}, {l0} bytes"),
        format!("batch 1 (offset {}, {l1} bytes", header + l0),
        format!("{total} bytes, 3 blocks"),
        format!("1 segment, {total} bytes"),
    ] {
        assert!(text.contains(&claim), "ledger-format.md lacks {claim:?}");
    }
}

#[test]
fn reference_primitives_match_the_library() {
    // The CRC-32C check value of the catalogue of CRC algorithms.
    assert_eq!(crc32c_ref(b"123456789"), 0xe306_9283);
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    for v in [0u64, 1, 127, 128, 250, 1500, 16_383, 16_384, u64::MAX] {
        let mut lib = Vec::new();
        bi_ledger::format::varint::put(&mut lib, v);
        assert_eq!(lib, varint_ref(v), "varint {v}");
    }
    assert_eq!(varint_ref(1500), [0xdc, 0x0b]);
    assert_eq!(
        hex(&merkle::empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

// ---------------------------------------------------------------------------
// Decoding the document's bytes.

#[test]
fn document_bytes_decode() {
    if print_mode() {
        return;
    }
    let doc = doc_vectors();
    let recs = records();

    // Identity and keys.
    let meta = Meta::decode("vectors/LEDGER", &doc_str(&doc, "ledger-file")).unwrap();
    assert_eq!(meta.name, LEDGER_NAME);
    assert_eq!(meta.id, LEDGER_ID);
    let verifier = Verifier::from_vkey(&doc_str(&doc, "verifier-key")).unwrap();
    assert_eq!(meta.verifier, verifier);
    assert_eq!(meta.max_block, 4 << 20);
    let blocks = Meta::decode("vectors/LEDGER", &doc_str(&doc, "ledger-file-blocks")).unwrap();
    assert_eq!((blocks.id, blocks.max_block), (LEDGER_ID, 65_536));
    assert_eq!(verifier.name, "bi-ledger/vectors");
    let (name, key) = keys::decode_signing_key(&doc_str(&doc, "signing-key")).unwrap();
    assert_eq!(name, verifier.name);
    assert_eq!(key.as_bytes(), &KEY_SEED);
    assert_eq!(key.verifying_key(), verifier.key);

    // Segment header.
    let h = SegmentHeader::decode(&doc["segment-header"]).unwrap();
    assert_eq!(h.ledger_id, LEDGER_ID);
    assert_eq!((h.index, h.first_seq), (0, 0));
    assert_eq!(h.prev_chain, doc_hash(&doc, "genesis"));

    // Batches, entries, leaves, chain.
    let mut head = doc_hash(&doc, "genesis");
    let mut leaves = Vec::new();
    for (i, &(first_seq, base_ts, count)) in BATCHES.iter().enumerate() {
        let bytes = &doc[&format!("batch-{i}")];
        let Frame::Complete { len, body } = batch::parse_frame(bytes, 1 << 22) else {
            panic!("batch-{i} is not a complete frame");
        };
        assert_eq!(len, bytes.len());
        assert_eq!(
            (body.first_seq, body.count, body.base_ts),
            (first_seq, count as u32, base_ts)
        );
        for r in body.decode_all().unwrap() {
            assert_eq!(r.to_owned(), recs[r.seq as usize]);
            let mut entry = Vec::new();
            r.write_entry(&mut entry);
            assert_eq!(entry, doc[&format!("entry-{}", r.seq)]);
            let leaf = merkle::leaf_hash(&entry);
            assert_eq!(leaf, doc_hash(&doc, &format!("leaf-{}", r.seq)));
            head = chain::link(&head, &leaf);
            assert_eq!(head, doc_hash(&doc, &format!("chain-{}", r.seq)));
            leaves.push(leaf);
        }
    }

    // Checkpoints and snapshots.
    let mut opened = BTreeMap::new();
    for &(size, time_us, _) in &CHECKPOINTS {
        let n = size as usize;
        let note = doc_str(&doc, &format!("checkpoint-{size}"));
        let cp = Checkpoint::open(&note, &verifier).unwrap();
        assert_eq!(
            cp.origin,
            "bi-ledger/vectors/000102030405060708090a0b0c0d0e0f"
        );
        assert_eq!(cp.size, size);
        assert_eq!(cp.time_us, time_us);
        assert_eq!(cp.root, merkle::root(&leaves[..n]));
        assert_eq!(cp.root, doc_hash(&doc, &format!("root-{size}")));
        let want_head = match n {
            0 => doc_hash(&doc, "genesis"),
            _ => doc_hash(&doc, &format!("chain-{}", n - 1)),
        };
        assert_eq!(cp.chain_head, want_head);
        let snap = Snapshot::decode(&doc[&format!("snapshot-{size}")]).unwrap();
        assert_eq!(
            (snap.ledger_id, snap.size, snap.chain_head),
            (LEDGER_ID, size, want_head)
        );
        let frontier = merkle::Frontier::from_parts(snap.size, snap.frontier.clone()).unwrap();
        assert_eq!(frontier.root(), cp.root);
        opened.insert(size, cp);
    }

    // Proofs, checked the way a verifier holding only the checkpoints would.
    let p: InclusionProof = serde_json::from_slice(&doc["inclusion-proof"]).unwrap();
    assert_eq!((p.seq, p.size), INCLUSION);
    assert_eq!(unhex(&p.entry), doc["entry-0"]);
    p.verify(&opened[&4]).unwrap();
    // The entry must carry the proven sequence number: the same entry and
    // path claimed for another position fail.
    let mut moved = p.clone();
    moved.seq = 1;
    assert!(moved.verify(&opened[&4]).is_err());
    let c: ConsistencyProof = serde_json::from_slice(&doc["consistency-proof"]).unwrap();
    assert_eq!((c.old_size, c.new_size), CONSISTENCY);
    c.verify(&opened[&2], &opened[&4]).unwrap();
    assert!(c.verify(&opened[&0], &opened[&4]).is_err());
}

/// Rebuilds a frame around a changed body (new length and CRC), so that
/// the decoder, not the CRC, must catch the change.
fn reframe(frame: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = frame[batch::FRAME_HEADER_LEN..].to_vec();
    edit(&mut body);
    let len = body.len() as u32;
    let mut crc_input = len.to_le_bytes().to_vec();
    crc_input.extend_from_slice(&body);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&crc32c_ref(&crc_input).to_le_bytes());
    out.extend(body);
    out
}

fn decode_error(frame: &[u8]) -> String {
    match batch::parse_frame(frame, 1 << 22) {
        Frame::Complete { body, .. } => body.decode_all().unwrap_err().to_string(),
        other => panic!("expected a complete frame, got {other:?}"),
    }
}

#[test]
fn readers_refuse_what_they_do_not_know() {
    if print_mode() {
        return;
    }
    let doc = doc_vectors();
    let recs = records();
    let batch0 = &doc["batch-0"];
    let hand = hand_batch(0, T0, &recs[..2]);
    assert_eq!(&hand.bytes(), batch0);
    let body_off = |what: &str| hand.offset_of(what) - batch::FRAME_HEADER_LEN;

    // The frame layout of §5.1: a 12-byte frame header, then the body.
    assert_eq!(batch::FRAME_HEADER_LEN, 12);
    assert_eq!(batch::BODY_HEADER_LEN, 20);
    for (what, at) in [
        ("body length", 0),
        ("complement of the body length", 4),
        ("CRC32C(length || body)", 8),
        ("first sequence number", 12),
        ("record count", 20),
        ("base timestamp", 24),
        ("record 0:", 32),
    ] {
        assert_eq!(hand.offset_of(what), at, "offset of {what:?}");
    }

    // Unknown format version, named as such before any CRC check.
    let mut header = doc["segment-header"].clone();
    header[8] = 2;
    let e = SegmentHeader::decode(&header).unwrap_err();
    assert!(e.what.contains("unsupported format version 2"), "{e}");
    // Unknown segment flags (with a correct CRC).
    let mut header = doc["segment-header"].clone();
    header[12] = 1;
    let crc = crc32c_ref(&header[..80]);
    header[80..].copy_from_slice(&crc.to_le_bytes());
    let e = SegmentHeader::decode(&header).unwrap_err();
    assert!(e.what.contains("unknown segment flags"), "{e}");

    // Unknown record flag.
    let at = body_off("record 0: flags");
    let e = decode_error(&reframe(batch0, |b| b[at] |= 0x08));
    assert!(e.contains("unknown record flags 0x0c"), "{e}");
    // Unknown content type code.
    let at = body_off("  content type code 1");
    let e = decode_error(&reframe(batch0, |b| b[at] = 4));
    assert!(e.contains("unknown content type code 4"), "{e}");
    // A non-minimal varint (timestamp delta 0 as 0x80 0x00).
    let at = body_off("  timestamp delta 0");
    let e = decode_error(&reframe(batch0, |b| {
        b[at] = 0x80;
        b.insert(at + 1, 0x00);
    }));
    assert!(e.contains("not minimally encoded"), "{e}");
    // Metadata flag with a zero count.
    let at = body_off("  metadata count 2");
    let e = decode_error(&reframe(batch0, |b| b[at] = 0));
    assert!(e.contains("metadata count 0 out of range"), "{e}");
    // Metadata keys out of order ("actor" renamed "zctor").
    let at = body_off("  key: length 5") + 1;
    let e = decode_error(&reframe(batch0, |b| b[at] = b'z'));
    assert!(e.contains("not strictly increasing"), "{e}");
    // The first record of a batch cannot repeat anything.
    let at = body_off("record 0: flags");
    let e = decode_error(&reframe(batch0, |b| b[at] |= 0x01));
    assert!(
        e.contains("first record of a batch repeats a stream"),
        "{e}"
    );
    // Trailing bytes after the counted records.
    let e = decode_error(&reframe(batch0, |b| b.push(0)));
    assert!(e.contains("1 trailing bytes after the last record"), "{e}");

    // Frames the reader refuses whole, and where it says so (§5.1).
    let corrupt = |frame: &[u8]| match batch::parse_frame(frame, 1 << 22) {
        Frame::Corrupt(e) => e,
        other => panic!("expected a corrupt frame, got {other:?}"),
    };
    // A flipped bit in the records, or in the CRC itself, is a CRC
    // mismatch, reported at the CRC field.
    for at in [40, 8] {
        let mut bad = batch0.clone();
        bad[at] ^= 0x20;
        let e = corrupt(&bad);
        assert!(e.what.contains("CRC32C mismatch"), "{e:?}");
        assert_eq!(e.offset, 8);
    }
    // Any one flipped bit of the length or of its complement is a damaged
    // length, found before the frame it claims is read: never incomplete,
    // even when the flipped length points past the end of the buffer.
    for bit in 0..64 {
        let mut bad = batch0.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            batch::frame_length(&bad),
            batch::Length::Damaged,
            "bit {bit}"
        );
        let e = corrupt(&bad);
        assert!(e.what.contains("does not match its complement"), "{e:?}");
        assert_eq!(e.offset, 0);
    }
    // A header whose length and complement are all zero was never written.
    let mut unwritten = batch0.clone();
    unwritten[..8].fill(0);
    assert_eq!(batch::frame_length(&unwritten), batch::Length::Unwritten);
    assert!(corrupt(&unwritten).what.contains("all zero"));
    assert!(corrupt(&[0; 12]).what.contains("all zero"));
    assert_eq!(
        batch::frame_length(batch0),
        batch::Length::Valid(batch0.len() - 12)
    );
    // A body length below the body header, or above the maximum, with a
    // matching complement, is out of range.
    for len in [19u32, (1 << 22) + 1] {
        let mut bad = batch0.clone();
        bad[0..4].copy_from_slice(&len.to_le_bytes());
        bad[4..8].copy_from_slice(&(!len).to_le_bytes());
        let e = corrupt(&bad);
        assert!(e.what.contains("out of range"), "{e:?}");
        assert_eq!(e.offset, 0);
    }
    // An empty batch (count 0), with a matching CRC, at the count field.
    let count_at = body_off("record count");
    let empty = reframe(batch0, |b| {
        b[count_at..count_at + 4].fill(0);
        b.truncate(batch::BODY_HEADER_LEN);
    });
    assert_eq!(empty.len(), 32);
    let e = corrupt(&empty);
    assert!(e.what.contains("no records"), "{e:?}");
    assert_eq!(e.offset, 20);
    assert!(batch::frame_crc_ok(&empty));
    // first sequence number + count above 2^64 - 1, at the first sequence
    // number; exactly 2^64 - 1 is allowed.
    let seq_at = body_off("first sequence number");
    let e = corrupt(&reframe(batch0, |b| {
        b[seq_at..seq_at + 8].copy_from_slice(&(u64::MAX - 1).to_le_bytes())
    }));
    assert!(e.what.contains("sequence numbers overflow"), "{e:?}");
    assert_eq!(e.offset, 12);
    let last = reframe(batch0, |b| {
        b[seq_at..seq_at + 8].copy_from_slice(&(u64::MAX - 2).to_le_bytes())
    });
    assert!(matches!(
        batch::parse_frame(&last, 1 << 22),
        Frame::Complete { body, .. } if body.first_seq == u64::MAX - 2
    ));

    // A cut frame is incomplete: with its length known once the 12-byte
    // header is there, without it before.
    assert_eq!(
        batch::parse_frame(&batch0[..batch0.len() - 1], 1 << 22),
        Frame::Incomplete {
            needed: Some(batch0.len())
        }
    );
    assert_eq!(
        batch::parse_frame(&batch0[..12], 1 << 22),
        Frame::Incomplete {
            needed: Some(batch0.len())
        }
    );
    assert_eq!(
        batch::parse_frame(&batch0[..11], 1 << 22),
        Frame::Incomplete { needed: None }
    );
}

// ---------------------------------------------------------------------------
// The document's bytes as a real ledger.

/// Writes the document's ledger as plain files, as the fs store lays them out.
fn write_ledger(root: &std::path::Path, doc: &BTreeMap<String, Vec<u8>>) -> std::path::PathBuf {
    let dir = root.join(LEDGER_NAME);
    std::fs::create_dir_all(&dir).unwrap();
    let put = |blob: String, bytes: &[u8]| {
        let file = FsStore::file_path(root, &blob);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap()
    };
    put(layout::meta(LEDGER_NAME), &doc["ledger-file"]);
    let mut segment = doc["segment-header"].clone();
    segment.extend_from_slice(&doc["batch-0"]);
    segment.extend_from_slice(&doc["batch-1"]);
    put(layout::segment(LEDGER_NAME, 0), &segment);
    for &(size, _, _) in &CHECKPOINTS {
        put(
            layout::checkpoint(LEDGER_NAME, size),
            &doc[&format!("checkpoint-{size}")],
        );
        put(
            layout::snapshot(LEDGER_NAME, size),
            &doc[&format!("snapshot-{size}")],
        );
        if size > 0 {
            put(
                layout::stream_index(LEDGER_NAME, size),
                &doc[&format!("streams-{size}")],
            );
        }
    }
    root.join(layout::segment(LEDGER_NAME, 0))
}

fn store(root: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(root).unwrap().shared())
}

#[test]
fn blob_names() {
    assert_eq!(layout::meta("vectors"), "vectors/LEDGER");
    assert_eq!(layout::segment("vectors", 0), "vectors/0000000000.seg");
    assert_eq!(
        layout::checkpoint("vectors", 4),
        "vectors/checkpoint-00000000000000000004"
    );
    assert_eq!(
        layout::snapshot("vectors", 4),
        "vectors/snapshot-00000000000000000004"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_ledger_verifies() {
    if print_mode() {
        return;
    }
    let doc = doc_vectors();
    let built = build();
    let dir = tempfile::tempdir().unwrap();
    let seg_path = write_ledger(dir.path(), &doc);
    // The document's files are the ones the code builds.
    assert_eq!(std::fs::read(&seg_path).unwrap(), built.segment);
    assert_eq!(doc_str(&doc, "ledger-file"), built.meta_text);
    for (size, note) in &built.checkpoints {
        assert_eq!(&doc_str(&doc, &format!("checkpoint-{size}")), note);
    }
    for (size, snap) in &built.snapshots {
        assert_eq!(&doc[&format!("snapshot-{size}")], snap);
    }
    for (size, index) in &built.stream_indexes {
        assert_eq!(&doc[&format!("streams-{size}")], index);
    }

    let s = store(dir.path());
    let verifier = Verifier::from_vkey(&doc_str(&doc, "verifier-key")).unwrap();
    let reader = LedgerReader::open(s.clone(), LEDGER_NAME).await.unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(report.segments, 1);
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.unsigned_tail, 0);
    assert_eq!(report.bytes, built.segment.len() as u64);
    assert_eq!(report.chain_head, doc_hash(&doc, "chain-3"));
    assert_eq!(report.root, doc_hash(&doc, "root-4"));
    assert_eq!(report.caches_without_checkpoint, Some(vec![]));
    assert_eq!(reader.read(0, None).await.unwrap(), records());
    // A stream read goes through the document's stream indexes.
    let files: Vec<_> = reader.read_stream("decision-1-files").await.unwrap();
    assert_eq!(files, records()[2..].to_vec());

    // `prove` over the files gives the document's proofs.
    let p = reader
        .inclusion_proof(INCLUSION.0, INCLUSION.1)
        .await
        .unwrap();
    assert_eq!(
        p,
        serde_json::from_slice::<InclusionProof>(&doc["inclusion-proof"]).unwrap()
    );
    let c = reader
        .consistency_proof(CONSISTENCY.0, CONSISTENCY.1)
        .await
        .unwrap();
    assert_eq!(
        c,
        serde_json::from_slice::<ConsistencyProof>(&doc["consistency-proof"]).unwrap()
    );

    // A writer recovers from snapshot 4 and can continue the ledger.
    let opts = LedgerOptions::new(signing_key());
    let ledger = Ledger::open(s.clone(), LEDGER_NAME, opts).await.unwrap();
    let r = ledger
        .append_one(NewEvent::bytes(
            "decision-1-files",
            "AttachmentAdded",
            vec![7],
        ))
        .await
        .unwrap();
    assert_eq!(
        (r.seq, r.version, r.offset),
        (4, 2, built.segment.len() as u64)
    );
    let cp = ledger.close().await.unwrap();
    assert_eq!(cp.checkpoint.size, 5);
    let reader = LedgerReader::open(s, LEDGER_NAME).await.unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!((report.records, report.checkpoints), (5, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_and_damage() {
    if print_mode() {
        return;
    }
    let doc = doc_vectors();
    let verifier = Verifier::from_vkey(&doc_str(&doc, "verifier-key")).unwrap();

    // A torn last batch beyond the newest checkpoint: readers stop before
    // it, verify reports it, and opening for writing cuts it off.
    let dir = tempfile::tempdir().unwrap();
    let seg_path = write_ledger(dir.path(), &doc);
    let good_len = std::fs::metadata(&seg_path).unwrap().len();
    let mut bytes = std::fs::read(&seg_path).unwrap();
    bytes.extend_from_slice(&doc["batch-1"][..30]);
    std::fs::write(&seg_path, &bytes).unwrap();
    let s = store(dir.path());
    let reader = LedgerReader::open(s.clone(), LEDGER_NAME).await.unwrap();
    assert_eq!(reader.read(0, None).await.unwrap().len(), 4);
    let e = reader.verify(&verifier, &|_, _| {}).await.unwrap_err();
    let e = e.to_string();
    assert!(e.contains("vectors/0000000000.seg"), "{e}");
    assert!(e.contains(&format!("at byte {good_len}")), "{e}");
    assert!(e.contains("torn last batch"), "{e}");
    let ledger = Ledger::open(s.clone(), LEDGER_NAME, LedgerOptions::new(signing_key()))
        .await
        .unwrap();
    drop(ledger);
    assert_eq!(std::fs::metadata(&seg_path).unwrap().len(), good_len);

    // A damaged byte inside the log is an integrity error naming the
    // segment, the frame's offset and the sequence number.
    let dir = tempfile::tempdir().unwrap();
    let seg_path = write_ledger(dir.path(), &doc);
    let mut bytes = std::fs::read(&seg_path).unwrap();
    let batch0_at = doc["segment-header"].len();
    bytes[batch0_at + 40] ^= 0x01;
    std::fs::write(&seg_path, &bytes).unwrap();
    let reader = LedgerReader::open(store(dir.path()), LEDGER_NAME)
        .await
        .unwrap();
    let e = reader.verify(&verifier, &|_, _| {}).await.unwrap_err();
    let e = e.to_string();
    assert!(e.contains("vectors/0000000000.seg"), "{e}");
    assert!(e.contains(&format!("at byte {batch0_at}")), "{e}");
    assert!(e.contains("(sequence number 0)"), "{e}");
    assert!(e.contains("CRC32C mismatch"), "{e}");
    assert!(!e.contains("torn"), "{e}");
    // Records a checkpoint covers must be there: cutting the last batch
    // (covered by checkpoint 4) is not a torn tail to a verifier.
    let dir = tempfile::tempdir().unwrap();
    let seg_path = write_ledger(dir.path(), &doc);
    let bytes = std::fs::read(&seg_path).unwrap();
    let batch1_at = doc["segment-header"].len() + doc["batch-0"].len();
    std::fs::write(&seg_path, &bytes[..batch1_at]).unwrap();
    let reader = LedgerReader::open(store(dir.path()), LEDGER_NAME)
        .await
        .unwrap();
    let e = reader
        .verify(&verifier, &|_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint covers 4 records but the log holds only 2"),
        "{e}"
    );
    assert!(Ledger::open(
        store(dir.path()),
        LEDGER_NAME,
        LedgerOptions::new(signing_key())
    )
    .await
    .unwrap_err()
    .is_integrity());
}

/// A fifth record's batch, appended after the document's ledger: beyond the
/// newest checkpoint (4), as an append in progress or torn by a crash is.
fn tail_batch() -> Vec<u8> {
    tail_batch_with(br#"{"by":"board"}"#.to_vec())
}

/// A last batch of more than two sectors: one record with a 2,000-byte
/// payload that does not end in a zero byte.
fn big_tail_batch() -> Vec<u8> {
    tail_batch_with(format!(r#"{{"by":"{}"}}"#, "b".repeat(2000)).into_bytes())
}

fn tail_batch_with(payload: Vec<u8>) -> Vec<u8> {
    let ts = T0 + 3_000_000;
    let mut enc = BatchEncoder::new(4, ts);
    enc.push(&Record {
        seq: 4,
        timestamp_us: ts,
        stream: "decision-1".into(),
        stream_version: 2,
        event_type: "DecisionApproved".into(),
        schema_version: 1,
        content_type: "application/json".into(),
        metadata: Vec::new(),
        payload,
    });
    enc.finish()
}

/// The document's ledger with `tail` appended to its segment: the temporary
/// directory, the segment's path and its length before the tail.
fn ledger_with_tail(
    doc: &BTreeMap<String, Vec<u8>>,
    tail: &[u8],
) -> (tempfile::TempDir, std::path::PathBuf, u64) {
    let dir = tempfile::tempdir().unwrap();
    let seg_path = write_ledger(dir.path(), doc);
    let mut bytes = std::fs::read(&seg_path).unwrap();
    let good_len = bytes.len() as u64;
    bytes.extend_from_slice(tail);
    std::fs::write(&seg_path, &bytes).unwrap();
    (dir, seg_path, good_len)
}

/// `tail` is a torn last batch (§12.3): readers stop before it silently,
/// verify reports it as torn, and opening for writing cuts it off.
async fn assert_torn(doc: &BTreeMap<String, Vec<u8>>, tail: &[u8], case: &str) {
    let verifier = Verifier::from_vkey(&doc_str(doc, "verifier-key")).unwrap();
    let (dir, seg_path, good_len) = ledger_with_tail(doc, tail);
    let s = store(dir.path());
    let reader = LedgerReader::open(s.clone(), LEDGER_NAME).await.unwrap();
    assert_eq!(reader.read(0, None).await.unwrap(), records(), "{case}");
    let e = reader.verify(&verifier, &|_, _| {}).await.unwrap_err();
    let e = e.to_string();
    assert!(e.contains(&format!("at byte {good_len}")), "{case}: {e}");
    assert!(e.contains("torn last batch"), "{case}: {e}");
    opening_cuts_it_off(&s, &seg_path, good_len, case).await;
    let reader = LedgerReader::open(s, LEDGER_NAME).await.unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.records, 4, "{case}");
}

/// `tail` is unwritten space (§12.2): readers and verify stop before it
/// without an error, and opening for writing cuts it off.
async fn assert_unwritten(doc: &BTreeMap<String, Vec<u8>>, tail: &[u8], case: &str) {
    let verifier = Verifier::from_vkey(&doc_str(doc, "verifier-key")).unwrap();
    let (dir, seg_path, good_len) = ledger_with_tail(doc, tail);
    let s = store(dir.path());
    let reader = LedgerReader::open(s.clone(), LEDGER_NAME).await.unwrap();
    assert_eq!(reader.read(0, None).await.unwrap(), records(), "{case}");
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!((report.records, report.unsigned_tail), (4, 0), "{case}");
    opening_cuts_it_off(&s, &seg_path, good_len, case).await;
}

/// Opening the ledger for writing leaves segment `seg_path` `good_len`
/// bytes long.
async fn opening_cuts_it_off(
    s: &Arc<dyn BlobStore>,
    seg_path: &std::path::Path,
    good_len: u64,
    case: &str,
) {
    let ledger = Ledger::open(s.clone(), LEDGER_NAME, LedgerOptions::new(signing_key()))
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    drop(ledger);
    assert_eq!(
        std::fs::metadata(seg_path).unwrap().len(),
        good_len,
        "{case}"
    );
}

/// `tail` is damage (§12.3): an integrity error for readers, verify and
/// opening for writing alike, which cuts nothing.
async fn assert_damage(doc: &BTreeMap<String, Vec<u8>>, tail: &[u8], case: &str, what: &str) {
    let verifier = Verifier::from_vkey(&doc_str(doc, "verifier-key")).unwrap();
    let (dir, seg_path, good_len) = ledger_with_tail(doc, tail);
    let s = store(dir.path());
    let reader = LedgerReader::open(s.clone(), LEDGER_NAME).await.unwrap();
    let e = reader.read(0, None).await.unwrap_err();
    assert!(e.is_integrity(), "{case}: {e}");
    let e = reader.verify(&verifier, &|_, _| {}).await.unwrap_err();
    let e = e.to_string();
    assert!(e.contains("vectors/0000000000.seg"), "{case}: {e}");
    assert!(e.contains(&format!("at byte {good_len}")), "{case}: {e}");
    assert!(e.contains(what), "{case}: {e}");
    assert!(!e.contains("torn"), "{case}: {e}");
    let e = Ledger::open(s, LEDGER_NAME, LedgerOptions::new(signing_key()))
        .await
        .err()
        .unwrap_or_else(|| panic!("{case}: opened for writing"));
    assert!(e.is_integrity(), "{case}: {e}");
    assert_eq!(
        std::fs::metadata(&seg_path).unwrap().len(),
        good_len + tail.len() as u64,
        "{case}: the segment was cut"
    );
}

/// The torn-tail rules of §12.2 and §12.3 on the last frame of the last
/// segment, beyond the newest checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_or_damaged_last_frame() {
    if print_mode() {
        return;
    }
    let doc = doc_vectors();
    let tail = tail_batch();
    let body_len = tail.len() - batch::FRAME_HEADER_LEN;
    assert_eq!(batch::frame_length(&tail), batch::Length::Valid(body_len));

    // Whole, it is an intact record after the newest checkpoint.
    {
        let verifier = Verifier::from_vkey(&doc_str(&doc, "verifier-key")).unwrap();
        let (dir, _, _) = ledger_with_tail(&doc, &tail);
        let reader = LedgerReader::open(store(dir.path()), LEDGER_NAME)
            .await
            .unwrap();
        let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
        assert_eq!((report.records, report.unsigned_tail), (5, 1));
    }

    // Torn: fewer than 12 bytes (a header cut short).
    assert_torn(&doc, &tail[..5], "5 bytes of a header").await;
    // Torn: the header as written, the frame runs past the end.
    assert_torn(&doc, &tail[..tail.len() - 1], "frame cut short").await;
    assert_torn(&doc, &tail[..12], "header only").await;
    // Torn: the header still all zero (the file extended before the data
    // reached the disk), the rest of the block written.
    let mut headless = tail.clone();
    headless[..12].fill(0);
    assert_torn(&doc, &headless, "all-zero header").await;
    // Not torn: only zeros, however many, are unwritten space (§12.2).
    assert_unwritten(&doc, &[0; 5], "5 zero bytes").await;
    assert_unwritten(&doc, &[0; 12], "a zero header").await;
    assert_unwritten(&doc, &vec![0; tail.len()], "a zero frame").await;
    assert_unwritten(&doc, &vec![0; 5 << 20], "5 MiB of zeros").await;
    // Torn: the header as written, the frame ends exactly at the end of the
    // segment, and its body did not all reach the disk (CRC mismatch).
    let mut zeroed = tail.clone();
    zeroed[40..].fill(0);
    assert_torn(&doc, &zeroed, "body partly zero").await;
    // Torn: the same, followed by unwritten space.
    zeroed.extend_from_slice(&[0; 4096]);
    assert_torn(&doc, &zeroed, "body partly zero, then zeros").await;
    // Torn: a whole sector inside the frame still zero, the ones after it
    // written (they reached the disk out of order). 1,024 zero bytes hold
    // a whole 512-byte sector wherever the frame starts.
    let big = big_tail_batch();
    let mut holed = big.clone();
    holed[100..1124].fill(0);
    assert_torn(&doc, &holed, "a zero sector inside").await;

    // Damage: the frame is all there and ends in its own last byte, yet its
    // CRC does not match: written whole, then changed. Zeros after it, or
    // fewer than a sector's worth inside it, do not make it a tear.
    let mut flipped = tail.clone();
    flipped[40] ^= 0x01;
    flipped.extend_from_slice(&[0; 4]);
    assert_damage(
        &doc,
        &flipped,
        "CRC mismatch, then zeros",
        "CRC32C mismatch",
    )
    .await;
    let mut holed = big.clone();
    holed[100..611].fill(0);
    assert_damage(&doc, &holed, "511 zero bytes inside", "CRC32C mismatch").await;

    // Damage: one flipped bit of the length, here one that makes the frame
    // run past the end of the segment like a torn write would. Without the
    // complement, recovery would have cut it off as torn.
    let mut flipped = tail.clone();
    flipped[1] ^= 0x10;
    let Frame::Corrupt(e) = batch::parse_frame(&flipped, 1 << 22) else {
        panic!("a damaged length parsed as a frame");
    };
    assert_eq!(e.offset, 0);
    assert_eq!(batch::frame_length(&flipped), batch::Length::Damaged);
    assert_damage(&doc, &flipped, "flipped length bit", "complement").await;
    // Damage: one flipped bit of the complement.
    let mut flipped = tail.clone();
    flipped[6] ^= 0x01;
    assert_damage(&doc, &flipped, "flipped complement bit", "complement").await;
    // Damage: a frame whose CRC matches was written as it is, so it is never
    // torn, even when it is otherwise bad (no records).
    let empty = reframe(&tail, |b| {
        b[8..12].fill(0); // the count: body offset 8, frame offset 20
        b.truncate(batch::BODY_HEADER_LEN);
    });
    assert!(batch::frame_crc_ok(&empty));
    assert_damage(&doc, &empty, "empty batch", "no records").await;
    // Damage: a bad CRC in a frame that ends before the end of the segment.
    let mut both = tail.clone();
    both[40] ^= 0x01;
    both.extend_from_slice(&[0, 0, 0, 1]);
    assert_damage(
        &doc,
        &both,
        "CRC mismatch, then more bytes",
        "CRC32C mismatch",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_a_cache() {
    if print_mode() {
        return;
    }
    let doc = doc_vectors();
    let verifier = Verifier::from_vkey(&doc_str(&doc, "verifier-key")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), &doc);
    let snapshot = |size| FsStore::file_path(dir.path(), &layout::snapshot(LEDGER_NAME, size));

    // Older snapshots may be pruned...
    std::fs::remove_file(snapshot(0)).unwrap();
    std::fs::remove_file(snapshot(2)).unwrap();
    let reader = LedgerReader::open(store(dir.path()), LEDGER_NAME)
        .await
        .unwrap();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!((report.records, report.checkpoints), (4, 3));

    // ...but one that exists must match the log,
    let mut wrong = doc["snapshot-2"].clone();
    wrong.truncate(wrong.len() - 32);
    wrong[92] = 3; // segment blocks
    let digest = sha256(&[&wrong]);
    wrong.extend_from_slice(&digest);
    std::fs::write(snapshot(2), &wrong).unwrap();
    let e = reader
        .verify(&verifier, &|_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("snapshot-00000000000000000002"), "{e}");
    assert!(e.contains("position differs from the log"), "{e}");
    std::fs::remove_file(snapshot(2)).unwrap();

    // ...and the newest checkpoint's must exist.
    std::fs::remove_file(snapshot(4)).unwrap();
    let e = reader
        .verify(&verifier, &|_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("snapshot for this checkpoint is missing"), "{e}");
    let e = Ledger::open(
        store(dir.path()),
        LEDGER_NAME,
        LedgerOptions::new(signing_key()),
    )
    .await
    .unwrap_err();
    assert!(e.is_integrity(), "{e}");
}
