//! Batches: one batch is one appended block, framed so that a reader can
//! tell a complete batch from a torn write without any other context.
//!
//! ```text
//! frame  = body_len:u32le | !body_len:u32le | crc:u32le | body
//! crc    = CRC32C(body_len:u32le || body)
//! body   = first_seq:u64le | count:u32le | base_ts:i64le | record{count}
//! ```
//!
//! The length is stored with its bitwise complement so that a damaged length
//! is recognisable before the frame it claims is read: a reader must never
//! mistake a bit flip in an acknowledged batch's length for a write torn by
//! a crash (whose header is either as written or still zero).

use super::record::{self, Record, RecordRef};
use super::DecodeError;

pub const FRAME_HEADER_LEN: usize = 12;
pub const BODY_HEADER_LEN: usize = 20;

/// Builds one batch frame. Records must be pushed with contiguous sequence
/// numbers and non-decreasing timestamps; the writer guarantees both.
pub struct BatchEncoder {
    buf: Vec<u8>,
    first_seq: u64,
    count: u32,
    last_ts: i64,
    last_stream: String,
    last_type: String,
}

impl BatchEncoder {
    pub fn new(first_seq: u64, base_ts: i64) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        buf.extend_from_slice(&first_seq.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&base_ts.to_le_bytes());
        BatchEncoder {
            buf,
            first_seq,
            count: 0,
            last_ts: base_ts,
            last_stream: String::new(),
            last_type: String::new(),
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.count as u64
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes the frame would have if finished now.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, r: &Record) {
        assert_eq!(r.seq, self.next_seq(), "records must be contiguous");
        assert!(
            r.timestamp_us >= self.last_ts,
            "timestamps must not decrease"
        );
        let prev = (self.count > 0).then_some((self.last_stream.as_str(), self.last_type.as_str()));
        record::encode_stored(&mut self.buf, r, prev, self.last_ts);
        self.count += 1;
        self.last_ts = r.timestamp_us;
        if self.last_stream != r.stream {
            self.last_stream.clone_from(&r.stream);
        }
        if self.last_type != r.event_type {
            self.last_type.clear();
            self.last_type.push_str(&r.event_type);
        }
    }

    /// Seals the frame: fills in the count, length and CRC.
    pub fn finish(mut self) -> Vec<u8> {
        let body_len = (self.buf.len() - FRAME_HEADER_LEN) as u32;
        let count_at = FRAME_HEADER_LEN + 8;
        self.buf[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.buf[0..4].copy_from_slice(&body_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&(!body_len).to_le_bytes());
        let crc = frame_crc(body_len, &self.buf[FRAME_HEADER_LEN..]);
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

fn frame_crc(body_len: u32, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&body_len.to_le_bytes()), body)
}

/// What `parse_frame` found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole frame whose CRC matches: `len` bytes in all.
    Complete { len: usize, body: BatchBody<'a> },
    /// The buffer ends inside the frame; `needed` is the full frame length
    /// if the header was readable.
    Incomplete { needed: Option<usize> },
    /// The frame is whole but wrong (CRC, bad header).
    Corrupt(DecodeError),
}

/// What the first 8 bytes of a frame say about its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// All zero: the header never reached the disk (a torn write).
    Unwritten,
    /// The length and its complement agree.
    Valid(usize),
    /// Neither: the length field is damaged.
    Damaged,
}

/// Reads the length field of the frame at the start of `buf` (8+ bytes).
pub fn frame_length(buf: &[u8]) -> Length {
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    let check = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if len == 0 && check == 0 {
        Length::Unwritten
    } else if check == !len {
        Length::Valid(len as usize)
    } else {
        Length::Damaged
    }
}

/// What a frame's first `FRAME_HEADER_LEN + BODY_HEADER_LEN` bytes say,
/// before its CRC is checked: the whole frame's length, its first sequence
/// number and its record count. `None` if the header cannot start a frame
/// of at most `max_body` body bytes. For a reader that already knows what
/// batch to expect at an offset and will check the frame when it reads it.
pub fn frame_head(head: &[u8], max_body: usize) -> Option<(usize, u64, u32)> {
    if head.len() < FRAME_HEADER_LEN + BODY_HEADER_LEN {
        return None;
    }
    let Length::Valid(body_len) = frame_length(head) else {
        return None;
    };
    if !(BODY_HEADER_LEN..=max_body).contains(&body_len) {
        return None;
    }
    let body = &head[FRAME_HEADER_LEN..];
    let first_seq = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let count = u32::from_le_bytes(body[8..12].try_into().unwrap());
    Some((FRAME_HEADER_LEN + body_len, first_seq, count))
}

/// Whether a whole frame's CRC matches: a corrupt frame whose CRC matches
/// was written as it is, so it cannot be a torn write.
pub fn frame_crc_ok(frame: &[u8]) -> bool {
    frame.len() >= FRAME_HEADER_LEN && {
        let len = u32::from_le_bytes(frame[0..4].try_into().unwrap());
        let stored = u32::from_le_bytes(frame[8..12].try_into().unwrap());
        frame.len() == FRAME_HEADER_LEN + len as usize
            && stored == frame_crc(len, &frame[FRAME_HEADER_LEN..])
    }
}

/// The unit a disk writes whole or not at all; the smallest there is, so
/// that a larger one (4 KiB) shows as several.
pub const SECTOR: u64 = 512;

/// Whether a whole frame that starts at blob offset `start` holds a sector
/// of zeros (ledger-format.md §12.2): the trace of a write that did not
/// land there, since a sector left unwritten keeps the zeros it held. The
/// sector holding the frame's start is not looked at: it also holds the
/// header, whose loss shows as an unwritten header.
pub fn has_zero_sector(frame: &[u8], start: u64) -> bool {
    let end = start + frame.len() as u64;
    let mut at = (start / SECTOR + 1) * SECTOR;
    while at + SECTOR <= end {
        let i = (at - start) as usize;
        if frame[i..i + SECTOR as usize].iter().all(|&b| b == 0) {
            return true;
        }
        at += SECTOR;
    }
    false
}

/// Parses the frame at the start of `buf`. `max_body` bounds the declared
/// length so a corrupted length cannot make a reader allocate gigabytes.
pub fn parse_frame(buf: &[u8], max_body: usize) -> Frame<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return Frame::Incomplete { needed: None };
    }
    let body_len = match frame_length(buf) {
        Length::Valid(n) => n,
        Length::Unwritten => {
            return Frame::Corrupt(DecodeError::new(
                0,
                "batch header is all zero (never written)",
            ))
        }
        Length::Damaged => {
            return Frame::Corrupt(DecodeError::new(
                0,
                "batch length does not match its complement (damaged length field)",
            ))
        }
    };
    if !(BODY_HEADER_LEN..=max_body).contains(&body_len) {
        let why = if body_len > max_body {
            format!(
                ": larger than the ledger's largest block ({} bytes with its header, format §5.1; a ledger written through a store of larger blocks before its LEDGER file recorded them needs its block line, §3.4)",
                max_body + FRAME_HEADER_LEN
            )
        } else {
            String::new()
        };
        return Frame::Corrupt(DecodeError::new(
            0,
            format!("batch length {body_len} out of range ({BODY_HEADER_LEN}..={max_body}){why}"),
        ));
    }
    let total = FRAME_HEADER_LEN + body_len;
    if buf.len() < total {
        return Frame::Incomplete {
            needed: Some(total),
        };
    }
    let stored = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    let body = &buf[FRAME_HEADER_LEN..total];
    let actual = frame_crc(body_len as u32, body);
    if stored != actual {
        return Frame::Corrupt(DecodeError::new(
            8,
            format!("batch CRC32C mismatch: stored {stored:08x}, computed {actual:08x}"),
        ));
    }
    let count = u32::from_le_bytes(body[8..12].try_into().unwrap());
    if count == 0 {
        // Writers never write an empty batch; accepting one would give the
        // same log two byte forms.
        return Frame::Corrupt(DecodeError::new(
            FRAME_HEADER_LEN + 8,
            "batch holds no records",
        ));
    }
    let first_seq = u64::from_le_bytes(body[0..8].try_into().unwrap());
    if first_seq.checked_add(count as u64).is_none() {
        return Frame::Corrupt(DecodeError::new(
            FRAME_HEADER_LEN,
            "sequence numbers overflow",
        ));
    }
    Frame::Complete {
        len: total,
        body: BatchBody {
            first_seq,
            count,
            base_ts: i64::from_le_bytes(body[12..20].try_into().unwrap()),
            records: &body[BODY_HEADER_LEN..],
        },
    }
}

/// The fewest bytes a stored record takes: flags, timestamp delta, stream
/// version, schema version, content type code and payload length, one byte
/// each, with the stream id and event type elided and nothing else (§6.1).
const MIN_STORED_RECORD: usize = 6;

/// The body of a frame that `parse_frame` has already accepted.
///
/// # Panics
/// If `frame` is shorter than a frame header and body header.
pub fn checked_body(frame: &[u8]) -> BatchBody<'_> {
    let body = &frame[FRAME_HEADER_LEN..];
    BatchBody {
        first_seq: u64::from_le_bytes(body[0..8].try_into().unwrap()),
        count: u32::from_le_bytes(body[8..12].try_into().unwrap()),
        base_ts: i64::from_le_bytes(body[12..20].try_into().unwrap()),
        records: &body[BODY_HEADER_LEN..],
    }
}

/// A CRC-checked batch body. Its records are decoded lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBody<'a> {
    pub first_seq: u64,
    pub count: u32,
    pub base_ts: i64,
    pub records: &'a [u8],
}

impl<'a> BatchBody<'a> {
    /// Offset of `records` within the frame, for error positions.
    pub const RECORDS_OFFSET: usize = FRAME_HEADER_LEN + BODY_HEADER_LEN;

    pub fn iter(&self) -> RecordIter<'a> {
        RecordIter {
            body: *self,
            pos: 0,
            index: 0,
            prev: None,
            prev_ts: self.base_ts,
        }
    }

    /// Decodes every record, checking that the count and the byte length
    /// agree. Error offsets are relative to the start of the frame.
    pub fn decode_all(&self) -> Result<Vec<RecordRef<'a>>, DecodeError> {
        // The count is only as trustworthy as the CRC, which anyone can
        // recompute: reserve no more records than the bytes can hold.
        let fit = self.records.len() / MIN_STORED_RECORD + 1;
        let mut out = Vec::with_capacity((self.count as usize).min(fit));
        for r in self.iter() {
            out.push(r?);
        }
        Ok(out)
    }
}

pub struct RecordIter<'a> {
    body: BatchBody<'a>,
    pos: usize,
    index: u32,
    prev: Option<(&'a str, &'a str)>,
    prev_ts: i64,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.body.records;
        if self.index == self.body.count {
            if self.pos != buf.len() {
                let at = BatchBody::RECORDS_OFFSET + self.pos;
                let extra = buf.len() - self.pos;
                self.pos = buf.len();
                return Some(Err(DecodeError::new(
                    at,
                    format!("{extra} trailing bytes after the last record"),
                )));
            }
            return None;
        }
        let seq = self.body.first_seq + self.index as u64;
        let r =
            record::decode_stored(buf, &mut self.pos, seq, self.prev, self.prev_ts).map_err(|e| {
                DecodeError::new(
                    BatchBody::RECORDS_OFFSET + e.offset,
                    format!("record {seq}: {}", e.what),
                )
                .in_record(seq)
            });
        match r {
            Ok(r) => {
                self.index += 1;
                self.prev = Some((r.stream, r.event_type));
                self.prev_ts = r.timestamp_us;
                Some(Ok(r))
            }
            Err(e) => {
                self.index = self.body.count;
                self.pos = buf.len();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::format::record::CONTENT_TYPES;

    #[test]
    fn a_zero_sector_counts_only_whole_and_past_the_first() {
        // A frame at blob offset 100, 2000 bytes long: its whole sectors
        // are 512..1024, 1024..1536 and 1536..2048.
        let frame = |zeros: std::ops::Range<u64>| -> Vec<u8> {
            (100..2100u64)
                .map(|at| if zeros.contains(&at) { 0 } else { 7 })
                .collect()
        };
        assert!(!has_zero_sector(&frame(0..0), 100));
        assert!(has_zero_sector(&frame(512..1024), 100));
        assert!(has_zero_sector(&frame(1536..2048), 100));
        assert!(has_zero_sector(&frame(1000..1700), 100));
        // 511 zeros, or 512 across a sector boundary, are not a sector.
        assert!(!has_zero_sector(&frame(513..1024), 100));
        assert!(!has_zero_sector(&frame(600..1112), 100));
        // The sector holding the frame's start, and the frame's last,
        // partial one, are not looked at.
        assert!(!has_zero_sector(&frame(100..512), 100));
        assert!(!has_zero_sector(&frame(2048..2100), 100));
    }

    /// A frame whose CRC was recomputed over a count of four billion
    /// records and no record bytes decodes to an error, without reserving
    /// memory for the count (that would abort the process).
    #[test]
    fn a_forged_count_is_an_error_not_an_allocation() {
        let mut body = Vec::new();
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(&0i64.to_le_bytes());
        let mut frame = Vec::new();
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(!(body.len() as u32)).to_le_bytes());
        frame.extend_from_slice(&frame_crc(body.len() as u32, &body).to_le_bytes());
        frame.extend_from_slice(&body);
        let Frame::Complete { body, .. } = parse_frame(&frame, 1 << 20) else {
            panic!("the CRC holds, so the frame parses");
        };
        assert_eq!(body.count, u32::MAX);
        assert!(body.decode_all().is_err());
    }

    /// A large bound, so that a grown length reads as "incomplete" rather
    /// than "out of range", as it does for a real reader.
    const MAX_BODY: usize = 4 * 1024 * 1024;

    /// Any Unicode text, newlines and control characters included, and
    /// sometimes empty: the format does not care.
    fn text() -> impl Strategy<Value = String> {
        "(?s).{0,10}"
    }

    fn content_type() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(CONTENT_TYPES.to_vec()).prop_map(String::from),
            text(),
        ]
    }

    /// A record without the sequence number and timestamp, which the batch
    /// assigns; stream and type are picks from small pools, so that runs of
    /// the same stream or type (and so elision) are common.
    #[derive(Clone, Debug)]
    struct Draft {
        stream: Index,
        event_type: Index,
        ts_delta: i64,
        stream_version: u64,
        schema_version: u32,
        content_type: String,
        metadata: BTreeMap<String, String>,
        payload: Vec<u8>,
    }

    fn draft() -> impl Strategy<Value = Draft> {
        (
            any::<Index>(),
            any::<Index>(),
            prop_oneof![3 => Just(0i64), 2 => 0i64..1_000, 1 => 0i64..(1 << 40)],
            any::<u64>(),
            any::<u32>(),
            content_type(),
            btree_map(text(), text(), 0..4),
            prop_oneof![
                4 => vec(any::<u8>(), 0..40),
                1 => vec(any::<u8>(), 100..400),
            ],
        )
            .prop_map(
                |(
                    stream,
                    event_type,
                    ts_delta,
                    stream_version,
                    schema_version,
                    content_type,
                    metadata,
                    payload,
                )| Draft {
                    stream,
                    event_type,
                    ts_delta,
                    stream_version,
                    schema_version,
                    content_type,
                    metadata,
                    payload,
                },
            )
    }

    /// A batch as the writer hands it to the encoder: contiguous sequence
    /// numbers from `first_seq`, timestamps that never decrease from
    /// `base_ts`, metadata sorted by key with unique keys.
    #[derive(Clone, Debug)]
    struct Batch {
        first_seq: u64,
        base_ts: i64,
        records: Vec<Record>,
    }

    fn batch() -> impl Strategy<Value = Batch> {
        (
            vec(text(), 1..4),
            vec(text(), 1..4),
            prop_oneof![Just(0u64), 0..u64::MAX / 2],
            -(1i64 << 61)..(1i64 << 61),
            vec(draft(), 1..12),
        )
            .prop_map(|(streams, types, first_seq, base_ts, drafts)| {
                let mut ts = base_ts;
                let records = drafts
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        ts += d.ts_delta;
                        Record {
                            seq: first_seq + i as u64,
                            timestamp_us: ts,
                            stream: d.stream.get(&streams).clone(),
                            stream_version: d.stream_version,
                            event_type: d.event_type.get(&types).clone().into(),
                            schema_version: d.schema_version,
                            content_type: d.content_type.into(),
                            metadata: d.metadata.into_iter().collect(),
                            payload: d.payload,
                        }
                    })
                    .collect();
                Batch {
                    first_seq,
                    base_ts,
                    records,
                }
            })
    }

    fn encode(b: &Batch) -> Vec<u8> {
        let mut enc = BatchEncoder::new(b.first_seq, b.base_ts);
        for r in &b.records {
            enc.push(r);
        }
        let (len, count, next) = (enc.len(), enc.count(), enc.next_seq());
        assert_eq!(enc.is_empty(), b.records.is_empty());
        let frame = enc.finish();
        assert_eq!(frame.len(), len);
        assert_eq!(count as usize, b.records.len());
        assert_eq!(next, b.first_seq + b.records.len() as u64);
        frame
    }

    /// Parses a frame that must be whole and checks every record against
    /// the originals, field by field and by leaf hash.
    fn check_round_trip(b: &Batch, buf: &[u8], frame_len: usize, max_body: usize) {
        let body = match parse_frame(buf, max_body) {
            Frame::Complete { len, body } => {
                assert_eq!(len, frame_len);
                body
            }
            other => panic!("a whole frame parsed as {other:?}"),
        };
        assert_eq!(body.first_seq, b.first_seq);
        assert_eq!(body.count as usize, b.records.len());
        assert_eq!(body.base_ts, b.base_ts);
        let decoded = body.decode_all().unwrap();
        assert_eq!(decoded.len(), b.records.len());
        for (d, r) in decoded.iter().zip(&b.records) {
            assert_eq!(&d.to_owned(), r);
            assert_eq!(d.leaf_hash(), r.leaf_hash());
            let mut entry = Vec::new();
            d.write_entry(&mut entry);
            assert_eq!(entry, r.entry_bytes());
        }
        // The lazy iterator agrees with decode_all.
        let lazy: Vec<Record> = body.iter().map(|r| r.unwrap().to_owned()).collect();
        assert_eq!(lazy, b.records);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(b in batch()) {
            let frame = encode(&b);
            check_round_trip(&b, &frame, frame.len(), MAX_BODY);
            // The tightest bound a reader could use still admits it.
            check_round_trip(&b, &frame, frame.len(), frame.len() - FRAME_HEADER_LEN);
            // Bytes after the frame (the next batch) are not part of it.
            let mut next = b.clone();
            next.first_seq += b.records.len() as u64;
            for r in &mut next.records {
                r.seq += b.records.len() as u64;
            }
            let mut longer = frame.clone();
            longer.extend_from_slice(&encode(&next));
            check_round_trip(&b, &longer, frame.len(), MAX_BODY);
        }

        /// The header alone says what the whole frame does, and a damaged
        /// length is never taken for one.
        #[test]
        fn frame_head_agrees_with_the_frame(b in batch(), flip in 0usize..8, mask in 1u8..=255) {
            let frame = encode(&b);
            let head = &frame[..FRAME_HEADER_LEN + BODY_HEADER_LEN];
            prop_assert_eq!(
                frame_head(head, MAX_BODY),
                Some((frame.len(), b.first_seq, b.records.len() as u32))
            );
            prop_assert_eq!(frame_head(&head[..head.len() - 1], MAX_BODY), None);
            prop_assert_eq!(frame_head(head, frame.len() - FRAME_HEADER_LEN - 1), None);
            let mut bad = head.to_vec();
            bad[flip] ^= mask;
            prop_assert_eq!(frame_head(&bad, MAX_BODY), None);
        }

        #[test]
        fn every_truncation_is_incomplete(b in batch()) {
            let frame = encode(&b);
            for cut in 0..frame.len() {
                let want = if cut < FRAME_HEADER_LEN { None } else { Some(frame.len()) };
                prop_assert_eq!(
                    parse_frame(&frame[..cut], MAX_BODY),
                    Frame::Incomplete { needed: want },
                    "cut at {} of {}", cut, frame.len()
                );
            }
        }

        #[test]
        fn a_flipped_byte_is_never_a_batch(b in batch(), at in any::<Index>(), mask in 1u8..=255) {
            let mut frame = encode(&b);
            let i = at.index(frame.len());
            frame[i] ^= mask;
            match parse_frame(&frame, MAX_BODY) {
                Frame::Corrupt(_) | Frame::Incomplete { .. } => {}
                Frame::Complete { body, .. } => {
                    prop_assert!(false, "byte {} ^ {:#04x} parsed as {:?}", i, mask, body);
                }
            }
        }

        /// Decoding never panics, whatever bytes a CRC happens to admit.
        #[test]
        fn garbage_records_fail_cleanly(
            records in vec(any::<u8>(), 0..200),
            count in 0u32..20,
            first_seq in 0..u64::MAX / 2,
            base_ts in any::<i64>(),
        ) {
            let body = BatchBody { first_seq, count, base_ts, records: &records };
            if let Ok(rs) = body.decode_all() {
                prop_assert_eq!(rs.len(), count as usize);
                for (i, r) in rs.iter().enumerate() {
                    prop_assert_eq!(r.seq, first_seq + i as u64);
                    prop_assert!(r.timestamp_us >= base_ts);
                }
            }
        }
    }

    fn sample() -> Batch {
        let rec = |seq, ts, stream: &str, ty: &str, meta: &[(&str, &str)], payload: &[u8]| Record {
            seq,
            timestamp_us: ts,
            stream: stream.into(),
            stream_version: seq - 40,
            event_type: ty.to_owned().into(),
            schema_version: 2,
            content_type: "application/json".into(),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: payload.to_vec(),
        };
        Batch {
            first_seq: 41,
            base_ts: 1_700_000_000_000_000,
            records: vec![
                rec(
                    41,
                    1_700_000_000_000_000,
                    "décision-1",
                    "Queued",
                    &[("by", "ceo")],
                    b"{}",
                ),
                rec(
                    42,
                    1_700_000_000_000_000,
                    "décision-1",
                    "Queued",
                    &[],
                    b"[1]",
                ),
                rec(43, 1_700_000_000_000_007, "décision-2", "Queued", &[], b""),
                rec(
                    44,
                    1_700_000_000_000_007,
                    "décision-2",
                    "Voted",
                    &[("a", "1"), ("b", "")],
                    b"x",
                ),
            ],
        }
    }

    /// Exhaustively: every bit of every byte of a small batch.
    #[test]
    fn every_single_bit_flip_is_detected() {
        let b = sample();
        let frame = encode(&b);
        check_round_trip(&b, &frame, frame.len(), MAX_BODY);
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[i] ^= 1 << bit;
                assert!(
                    !matches!(parse_frame(&f, MAX_BODY), Frame::Complete { .. }),
                    "bit {bit} of byte {i} went unnoticed"
                );
            }
        }
    }

    /// A repeated stream or type is stored once per run, not per record.
    #[test]
    fn repeats_are_elided() {
        let b = sample();
        let frame = encode(&b);
        let count = |needle: &[u8]| frame.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count("décision-1".as_bytes()), 1);
        assert_eq!(count("décision-2".as_bytes()), 1);
        assert_eq!(count(b"Queued"), 1);
        assert_eq!(count(b"Voted"), 1);
        // The flags say so.
        let body = match parse_frame(&frame, MAX_BODY) {
            Frame::Complete { body, .. } => body,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            body.records[0] & 0x03,
            0,
            "the first record repeats nothing"
        );
        // And a batch with distinct names is bigger by exactly the names.
        let mut distinct = b.clone();
        distinct.records[1].stream = "décision-9".into();
        let longer = encode(&distinct);
        assert_eq!(longer.len(), frame.len() + 1 + "décision-9".len());
    }

    /// Writers never write an empty batch, so a reader refuses one rather
    /// than admit a second byte form of the same log.
    #[test]
    fn empty_batch_is_corrupt() {
        let b = Batch {
            first_seq: 7,
            base_ts: -5,
            records: Vec::new(),
        };
        let frame = encode(&b);
        assert_eq!(frame.len(), FRAME_HEADER_LEN + BODY_HEADER_LEN);
        assert!(
            matches!(parse_frame(&frame, MAX_BODY), Frame::Corrupt(e) if e.what.contains("no records"))
        );
    }

    /// A body shorter than its own header is out of range, not a panic.
    #[test]
    fn short_declared_length_is_corrupt() {
        let mut frame = encode(&sample());
        frame[0..4].copy_from_slice(&((BODY_HEADER_LEN - 1) as u32).to_le_bytes());
        assert!(matches!(parse_frame(&frame, MAX_BODY), Frame::Corrupt(_)));
        frame[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_frame(&frame, MAX_BODY), Frame::Corrupt(_)));
    }
}
