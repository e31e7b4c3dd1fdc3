//! Records: one event each. A record has two encodings:
//!
//! - the *entry*, a self-contained canonical form that is hashed (it is the
//!   RFC 9162 leaf data) and never stored as such;
//! - the *stored* form inside a batch, which omits what the batch lets a
//!   reader derive (the sequence number, an absolute timestamp, a stream id
//!   or event type repeated from the previous record).
//!
//! Hashing the canonical entry keeps the chain independent of how records
//! happened to be grouped into batches.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::{varint, DecodeError, Hash};

/// Version byte that starts every canonical entry.
pub const ENTRY_VERSION: u8 = 1;

pub const FLAG_STREAM_REPEATED: u8 = 0x01;
pub const FLAG_TYPE_REPEATED: u8 = 0x02;
pub const FLAG_HAS_METADATA: u8 = 0x04;
const KNOWN_FLAGS: u8 = FLAG_STREAM_REPEATED | FLAG_TYPE_REPEATED | FLAG_HAS_METADATA;

/// Content types common enough to deserve a one-byte code. Code 0 means the
/// type is spelled out.
pub const CONTENT_TYPES: [&str; 3] = [
    "application/json",
    "application/octet-stream",
    "text/plain; charset=utf-8",
];

/// A content type as an owned record holds it: one of [`CONTENT_TYPES`]
/// is shared rather than allocated, as nearly every record's is.
pub fn content_type_cow(content_type: &str) -> Cow<'static, str> {
    match CONTENT_TYPES.iter().find(|c| **c == content_type) {
        Some(c) => Cow::Borrowed(c),
        None => Cow::Owned(content_type.to_owned()),
    }
}

/// An owned record, as the writer builds it and a reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub timestamp_us: i64,
    pub stream: String,
    pub stream_version: u64,
    pub event_type: Cow<'static, str>,
    pub schema_version: u32,
    /// One of [`CONTENT_TYPES`] is borrowed, not allocated, when decoded.
    pub content_type: Cow<'static, str>,
    /// Sorted by key, keys unique.
    pub metadata: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// A record decoded in place from a batch body, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub timestamp_us: i64,
    pub stream: &'a str,
    pub stream_version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub content_type: &'a str,
    /// The stored metadata pairs (varint-length-prefixed), already validated.
    metadata_raw: &'a [u8],
    metadata_count: u64,
    pub payload: &'a [u8],
}

/// Where bytes of a canonical entry go: a buffer or straight into a hasher.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

fn put_str32(sink: &mut impl Sink, s: &[u8]) {
    sink.put(&(s.len() as u32).to_le_bytes());
    sink.put(s);
}

/// Writes the canonical entry. Shared by the owned and borrowed forms so
/// the two can never disagree on what is hashed.
#[allow(clippy::too_many_arguments)]
fn write_entry<'m>(
    sink: &mut impl Sink,
    seq: u64,
    timestamp_us: i64,
    stream: &str,
    stream_version: u64,
    event_type: &str,
    schema_version: u32,
    content_type: &str,
    metadata_count: u32,
    metadata: impl Iterator<Item = (&'m [u8], &'m [u8])>,
    payload: &[u8],
) {
    sink.put(&[ENTRY_VERSION]);
    sink.put(&seq.to_le_bytes());
    sink.put(&timestamp_us.to_le_bytes());
    put_str32(sink, stream.as_bytes());
    sink.put(&stream_version.to_le_bytes());
    put_str32(sink, event_type.as_bytes());
    sink.put(&schema_version.to_le_bytes());
    put_str32(sink, content_type.as_bytes());
    sink.put(&metadata_count.to_le_bytes());
    for (k, v) in metadata {
        put_str32(sink, k);
        put_str32(sink, v);
    }
    sink.put(&(payload.len() as u64).to_le_bytes());
    sink.put(payload);
}

/// RFC 9162 leaf hash of a canonical entry: SHA-256(0x00 || entry).
///
/// The entry is assembled in a per-thread buffer and hashed in one call:
/// feeding the hasher field by field costs more in call overhead than the
/// copy does.
fn leaf_of(write: impl FnOnce(&mut Vec<u8>)) -> Hash {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.push(0u8);
        write(&mut b);
        Sha256::digest(&b[..]).into()
    })
}

impl Record {
    pub fn write_entry(&self, sink: &mut impl Sink) {
        write_entry(
            sink,
            self.seq,
            self.timestamp_us,
            &self.stream,
            self.stream_version,
            &self.event_type,
            self.schema_version,
            &self.content_type,
            self.metadata.len() as u32,
            self.metadata
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            &self.payload,
        )
    }

    pub fn entry_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_entry(&mut v);
        v
    }

    pub fn leaf_hash(&self) -> Hash {
        leaf_of(|h| self.write_entry(h))
    }
}

impl<'a> RecordRef<'a> {
    pub fn metadata(&self) -> MetadataIter<'a> {
        MetadataIter {
            buf: self.metadata_raw,
            pos: 0,
            left: self.metadata_count,
        }
    }

    pub fn write_entry(&self, sink: &mut impl Sink) {
        write_entry(
            sink,
            self.seq,
            self.timestamp_us,
            self.stream,
            self.stream_version,
            self.event_type,
            self.schema_version,
            self.content_type,
            self.metadata_count as u32,
            self.metadata_bytes(),
            self.payload,
        )
    }

    /// The metadata pairs as bytes, for hashing: decoding checked that
    /// they are UTF-8, so a leaf hash need not check every string again.
    fn metadata_bytes(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        let (buf, mut pos) = (self.metadata_raw, 0);
        (0..self.metadata_count).map_while(move |_| {
            let k = get_bytes(buf, &mut pos, "metadata key").ok()?;
            let v = get_bytes(buf, &mut pos, "metadata value").ok()?;
            Some((k, v))
        })
    }

    pub fn leaf_hash(&self) -> Hash {
        leaf_of(|h| self.write_entry(h))
    }

    pub fn to_owned(&self) -> Record {
        Record {
            seq: self.seq,
            timestamp_us: self.timestamp_us,
            stream: self.stream.to_owned(),
            stream_version: self.stream_version,
            event_type: Cow::Owned(self.event_type.to_owned()),
            schema_version: self.schema_version,
            content_type: content_type_cow(self.content_type),
            metadata: self
                .metadata()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            payload: self.payload.to_vec(),
        }
    }
}

/// Iterates metadata pairs that `decode_stored` has already validated.
pub struct MetadataIter<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u64,
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated on decode, so these cannot fail.
        let k = get_str(self.buf, &mut self.pos, "metadata key").ok()?;
        let v = get_str(self.buf, &mut self.pos, "metadata value").ok()?;
        Some((k, v))
    }
}

/// Appends the stored form of `r`. `prev` is the previous record of the same
/// batch (its timestamp, stream and type), or `None` for the first record, in
/// which case `prev_ts` is the batch's base timestamp.
pub fn encode_stored(out: &mut Vec<u8>, r: &Record, prev: Option<(&str, &str)>, prev_ts: i64) {
    let stream_rep = prev.is_some_and(|(s, _)| s == r.stream);
    let type_rep = prev.is_some_and(|(_, t)| t == r.event_type);
    let mut flags = 0u8;
    if stream_rep {
        flags |= FLAG_STREAM_REPEATED;
    }
    if type_rep {
        flags |= FLAG_TYPE_REPEATED;
    }
    if !r.metadata.is_empty() {
        flags |= FLAG_HAS_METADATA;
    }
    out.push(flags);
    debug_assert!(r.timestamp_us >= prev_ts);
    varint::put(out, (r.timestamp_us - prev_ts) as u64);
    if !stream_rep {
        put_bytes(out, r.stream.as_bytes());
    }
    varint::put(out, r.stream_version);
    if !type_rep {
        put_bytes(out, r.event_type.as_bytes());
    }
    varint::put(out, r.schema_version as u64);
    match CONTENT_TYPES.iter().position(|c| *c == r.content_type) {
        Some(i) => out.push(i as u8 + 1),
        None => {
            out.push(0);
            put_bytes(out, r.content_type.as_bytes());
        }
    }
    if !r.metadata.is_empty() {
        varint::put(out, r.metadata.len() as u64);
        for (k, v) in &r.metadata {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
    }
    put_bytes(out, &r.payload);
}

/// Upper bound of the stored size of `r`, for batch sizing.
pub fn stored_len_bound(r: &Record) -> usize {
    stored_len_bound_parts(
        r.stream.len(),
        r.event_type.len(),
        r.content_type.len(),
        r.metadata.iter().map(|(k, v)| (k.len(), v.len())),
        r.payload.len(),
    )
}

/// The same bound from field lengths, before a record exists.
pub fn stored_len_bound_parts(
    stream: usize,
    event_type: usize,
    content_type: usize,
    metadata: impl Iterator<Item = (usize, usize)>,
    payload: usize,
) -> usize {
    let s = |n: usize| n + varint::len(n as u64);
    // flags, timestamp delta, stream version, schema version, content code
    let fixed = 1 + 10 + 10 + 5 + 1;
    fixed
        + s(stream)
        + s(event_type)
        + s(content_type)
        + 10
        + metadata.map(|(k, v)| s(k) + s(v)).sum::<usize>()
        + s(payload)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint::put(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn get_bytes<'a>(buf: &'a [u8], pos: &mut usize, what: &str) -> Result<&'a [u8], DecodeError> {
    let at = *pos;
    let n = varint::get(buf, pos)?;
    let end = (*pos as u64)
        .checked_add(n)
        .filter(|&e| e <= buf.len() as u64)
        .ok_or_else(|| DecodeError::new(at, format!("{what}: length {n} runs past the end")))?;
    let b = &buf[*pos..end as usize];
    *pos = end as usize;
    Ok(b)
}

fn get_str<'a>(buf: &'a [u8], pos: &mut usize, what: &str) -> Result<&'a str, DecodeError> {
    let at = *pos;
    let b = get_bytes(buf, pos, what)?;
    std::str::from_utf8(b).map_err(|_| DecodeError::new(at, format!("{what} is not UTF-8")))
}

/// Decodes one stored record at `buf[*pos..]`.
pub fn decode_stored<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    seq: u64,
    prev: Option<(&'a str, &'a str)>,
    prev_ts: i64,
) -> Result<RecordRef<'a>, DecodeError> {
    let start = *pos;
    let flags = *buf
        .get(*pos)
        .ok_or_else(|| DecodeError::new(start, "record flags run past the end"))?;
    *pos += 1;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::new(
            start,
            format!("unknown record flags {flags:#04x}"),
        ));
    }
    let at = *pos;
    let delta = varint::get(buf, pos)?;
    let timestamp_us = i64::try_from(delta)
        .ok()
        .and_then(|d| prev_ts.checked_add(d))
        .ok_or_else(|| DecodeError::new(at, "timestamp overflows"))?;
    let stream = if flags & FLAG_STREAM_REPEATED != 0 {
        prev.ok_or_else(|| DecodeError::new(start, "first record of a batch repeats a stream"))?
            .0
    } else {
        get_str(buf, pos, "stream")?
    };
    let stream_version = varint::get(buf, pos)?;
    let event_type = if flags & FLAG_TYPE_REPEATED != 0 {
        prev.ok_or_else(|| {
            DecodeError::new(start, "first record of a batch repeats an event type")
        })?
        .1
    } else {
        get_str(buf, pos, "event type")?
    };
    let at = *pos;
    let schema_version = u32::try_from(varint::get(buf, pos)?)
        .map_err(|_| DecodeError::new(at, "schema version exceeds 32 bits"))?;
    let at = *pos;
    let code = *buf
        .get(*pos)
        .ok_or_else(|| DecodeError::new(at, "content type runs past the end"))?;
    *pos += 1;
    let content_type: &'a str = match code {
        0 => get_str(buf, pos, "content type")?,
        c if (c as usize) <= CONTENT_TYPES.len() => CONTENT_TYPES[c as usize - 1],
        c => {
            return Err(DecodeError::new(
                at,
                format!("unknown content type code {c}"),
            ))
        }
    };
    let (metadata_raw, metadata_count) = if flags & FLAG_HAS_METADATA != 0 {
        let at = *pos;
        let count = varint::get(buf, pos)?;
        if count == 0 || count > u32::MAX as u64 {
            return Err(DecodeError::new(
                at,
                format!("metadata count {count} out of range"),
            ));
        }
        let raw_start = *pos;
        let mut last: Option<&str> = None;
        for _ in 0..count {
            let kat = *pos;
            let k = get_str(buf, pos, "metadata key")?;
            get_str(buf, pos, "metadata value")?;
            if last.is_some_and(|l| l >= k) {
                return Err(DecodeError::new(
                    kat,
                    "metadata keys are not strictly increasing",
                ));
            }
            last = Some(k);
        }
        (&buf[raw_start..*pos], count)
    } else {
        (&buf[0..0], 0)
    };
    let payload = get_bytes(buf, pos, "payload")?;
    Ok(RecordRef {
        seq,
        timestamp_us,
        stream,
        stream_version,
        event_type,
        schema_version,
        content_type,
        metadata_raw,
        metadata_count,
        payload,
    })
}

/// Decodes a canonical entry (the hashed form), as a proof verifier holds
/// it. Strict: the bytes must be exactly what [`Record::entry_bytes`] writes.
pub fn decode_entry(b: &[u8]) -> Result<Record, DecodeError> {
    struct Cur<'a>(&'a [u8], usize);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
            let end = self
                .1
                .checked_add(n)
                .filter(|&e| e <= self.0.len())
                .ok_or_else(|| DecodeError::new(self.1, format!("{what} runs past the end")))?;
            let s = &self.0[self.1..end];
            self.1 = end;
            Ok(s)
        }
        fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
            Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
        }
        fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
            Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
        }
        fn string(&mut self, what: &str) -> Result<String, DecodeError> {
            let at = self.1;
            let n = self.u32(what)? as usize;
            let b = self.take(n, what)?;
            String::from_utf8(b.to_vec())
                .map_err(|_| DecodeError::new(at, format!("{what} is not UTF-8")))
        }
    }
    let mut c = Cur(b, 0);
    let v = c.take(1, "entry version")?[0];
    if v != ENTRY_VERSION {
        return Err(DecodeError::new(
            0,
            format!("unsupported entry version {v}"),
        ));
    }
    let seq = c.u64("sequence number")?;
    let timestamp_us = c.u64("timestamp")? as i64;
    let stream = c.string("stream")?;
    let stream_version = c.u64("stream version")?;
    let event_type = c.string("event type")?;
    let schema_version = c.u32("schema version")?;
    let content_type = c.string("content type")?;
    let count = c.u32("metadata count")?;
    let mut metadata: Vec<(String, String)> = Vec::new();
    for _ in 0..count {
        let at = c.1;
        let k = c.string("metadata key")?;
        let v = c.string("metadata value")?;
        if metadata.last().is_some_and(|(l, _)| *l >= k) {
            return Err(DecodeError::new(
                at,
                "metadata keys are not strictly increasing",
            ));
        }
        metadata.push((k, v));
    }
    let n = c.u64("payload length")?;
    let n = usize::try_from(n).map_err(|_| DecodeError::new(c.1, "payload length overflows"))?;
    let payload = c.take(n, "payload")?.to_vec();
    if c.1 != b.len() {
        return Err(DecodeError::new(c.1, "trailing bytes after the payload"));
    }
    Ok(Record {
        seq,
        timestamp_us,
        stream,
        stream_version,
        event_type: Cow::Owned(event_type),
        schema_version,
        content_type: content_type_cow(&content_type),
        metadata,
        payload,
    })
}
