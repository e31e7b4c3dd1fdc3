//! Batches: one batch is one appended block, framed so that a reader can
//! tell a complete batch from a torn write without any other context.
//!
//! ```text
//! frame  = body_len:u32le | crc:u32le | body
//! crc    = CRC32C(body_len:u32le || body)
//! body   = first_seq:u64le | count:u32le | base_ts:i64le | record{count}
//! ```

use super::record::{self, Record, RecordRef};
use super::DecodeError;

pub const FRAME_HEADER_LEN: usize = 8;
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
            self.last_type.clone_from(&r.event_type);
        }
    }

    /// Seals the frame: fills in the count, length and CRC.
    pub fn finish(mut self) -> Vec<u8> {
        let body_len = (self.buf.len() - FRAME_HEADER_LEN) as u32;
        self.buf[16..20].copy_from_slice(&self.count.to_le_bytes());
        self.buf[0..4].copy_from_slice(&body_len.to_le_bytes());
        let crc = frame_crc(body_len, &self.buf[FRAME_HEADER_LEN..]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
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

/// Parses the frame at the start of `buf`. `max_body` bounds the declared
/// length so a corrupted length cannot make a reader allocate gigabytes.
pub fn parse_frame(buf: &[u8], max_body: usize) -> Frame<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return Frame::Incomplete { needed: None };
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if !(BODY_HEADER_LEN..=max_body).contains(&body_len) {
        return Frame::Corrupt(DecodeError::new(
            0,
            format!("batch length {body_len} out of range ({BODY_HEADER_LEN}..={max_body})"),
        ));
    }
    let total = FRAME_HEADER_LEN + body_len;
    if buf.len() < total {
        return Frame::Incomplete {
            needed: Some(total),
        };
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let body = &buf[FRAME_HEADER_LEN..total];
    let actual = frame_crc(body_len as u32, body);
    if stored != actual {
        return Frame::Corrupt(DecodeError::new(
            4,
            format!("batch CRC32C mismatch: stored {stored:08x}, computed {actual:08x}"),
        ));
    }
    Frame::Complete {
        len: total,
        body: BatchBody {
            first_seq: u64::from_le_bytes(body[0..8].try_into().unwrap()),
            count: u32::from_le_bytes(body[8..12].try_into().unwrap()),
            base_ts: i64::from_le_bytes(body[12..20].try_into().unwrap()),
            records: &body[BODY_HEADER_LEN..],
        },
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
        let mut out = Vec::with_capacity(self.count as usize);
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
