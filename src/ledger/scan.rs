//! Reads a segment's batch frames in large sequential chunks. Shared by
//! recovery, readers and verification so all three agree on what a
//! complete frame, a torn tail and a damaged frame are.

use std::ops::{ControlFlow, Range};

use tokio::sync::oneshot;

use crate::backend::{BlobStore, StoreError};
use crate::error::IntegrityError;
use crate::format::batch::{self, Frame};
use crate::format::record::RecordRef;
use crate::format::DecodeError;

/// Bytes read per store call: large enough that per-call latency (Azure
/// round trips) is amortised, small enough to bound memory.
pub const CHUNK: u64 = 8 * 1024 * 1024;

/// A run of complete, CRC-checked frames read in one call.
pub struct Chunk {
    /// Offset in the blob of `data[0]`.
    pub base: u64,
    pub data: Vec<u8>,
    /// Byte ranges of whole frames within `data`.
    pub frames: Vec<Range<usize>>,
}

impl Chunk {
    /// The body of frame `i`, already checked when the chunk was read (so
    /// its CRC is not computed twice).
    pub fn frame(&self, i: usize) -> batch::BatchBody<'_> {
        batch::checked_body(&self.data[self.frames[i].clone()])
    }

    /// Offset in the blob of frame `i`.
    pub fn offset(&self, i: usize) -> u64 {
        self.base + self.frames[i].start as u64
    }

    /// Every record of frame `i`, decoded; a record that does not decode
    /// is an integrity error naming `blob`, its offset and the batch.
    pub fn records(&self, i: usize, blob: &str) -> Result<Vec<RecordRef<'_>>, IntegrityError> {
        let body = self.frame(i);
        body.decode_all()
            .map_err(|e| IntegrityError::decoding(blob, self.offset(i), e, Some(body.first_seq)))
    }
}

/// Runs a segment's chunks through a pipeline of three: while the job that
/// `start` spawns for chunk k runs (on rayon), `finish` takes the result of
/// chunk k-1, and then chunk k+1 is read. A failed read is reported only
/// after the chunks before it are finished, so the first damage reported is
/// the first in the log. `finish` may stop the scan early.
pub async fn pipelined<T, E: From<StoreError>>(
    scan: &mut Scanner<'_>,
    mut start: impl FnMut(Chunk) -> oneshot::Receiver<T>,
    // Not an async closure: one that borrows from its caller makes the
    // caller's future not `Send` (rustc cannot prove it for every
    // lifetime), and so not spawnable.
    mut finish: impl FnMut(T) -> Result<ControlFlow<()>, E>,
) -> Result<ControlFlow<()>, E> {
    let mut pending: Option<oneshot::Receiver<T>> = None;
    loop {
        let (started, failed) = match scan.next_chunk().await {
            Ok(chunk) => (chunk.map(&mut start), None),
            Err(e) => (None, Some(e)),
        };
        if let Some(rx) = pending.take() {
            let done = rx.await.expect("the hashing job answers");
            if finish(done)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        match started {
            Some(rx) => pending = Some(rx),
            None => return Ok(ControlFlow::Continue(())),
        }
    }
}

/// Why scanning stopped before the end of the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// Offset of the frame in the blob.
    pub offset: u64,
    /// The frame's bytes run to the end of the blob (or its length field is
    /// unreadable), so it may be a write torn by a crash.
    pub reaches_end: bool,
    /// Every byte from the frame to the end of the blob is zero: not a
    /// frame at all but unwritten space (ledger-format.md §12.2), which in
    /// the last segment is simply where the log ends.
    pub unwritten: bool,
    pub error: DecodeError,
}

pub struct Scanner<'s> {
    store: &'s dyn BlobStore,
    blob: String,
    size: u64,
    pos: u64,
    max_body: usize,
    /// Bytes the next read asks for (at most `CHUNK`).
    chunk: u64,
    pub bad: Option<BadFrame>,
    /// Lowered to a length the blob was found cut back to (see `pinning`).
    pin: Option<&'s std::sync::atomic::AtomicU64>,
}

/// First read of a scan that starts small (see [`Scanner::starting_small`]).
const FIRST_CHUNK: u64 = 256 * 1024;

impl<'s> Scanner<'s> {
    /// Scans `blob` from `start` up to `size` (the length the caller saw).
    pub fn new(
        store: &'s dyn BlobStore,
        blob: &str,
        start: u64,
        size: u64,
        max_body: usize,
    ) -> Self {
        Scanner {
            store,
            blob: blob.to_owned(),
            size,
            pos: start,
            max_body,
            chunk: CHUNK,
            bad: None,
            pin: None,
        }
    }

    /// Lowers `pin` to any shorter length the blob is found to have: a
    /// reader's view of its last segment, which must not move on to what
    /// a writer appends after the cut.
    pub fn pinning(mut self, pin: &'s std::sync::atomic::AtomicU64) -> Self {
        self.pin = Some(pin);
        self
    }

    /// Reads 256 KiB first and doubles each read up to the usual chunk:
    /// for a read from a sequence number, which often wants a few records
    /// (one small request on Azure instead of 8 MiB) but may want them all.
    pub fn starting_small(mut self) -> Self {
        self.chunk = FIRST_CHUNK;
        self
    }

    /// Offset of the first byte not yet consumed: after the last good frame.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// What the corrupt frame at `data[at..]` (read from `self.pos`) is.
    ///
    /// Only the last append can tear, and it is one frame at most. Its
    /// length field is either as written (self-checked, see `batch`) or
    /// still zero; a written frame whose bad CRC covers the rest of the
    /// blob had its body torn if it shows where: its tail is zeros, or a
    /// sector inside it is. A frame that is all there, every sector
    /// written, was written whole and then changed. Anything else is
    /// damage, and must never be cut off as if torn. Zeros at the end of
    /// the blob may be unwritten space a store wrote ahead of its appends;
    /// the torn frame is then the last one before them, or unwritten space
    /// itself.
    async fn classify(
        &self,
        data: &[u8],
        at: usize,
        error: DecodeError,
    ) -> Result<BadFrame, StoreError> {
        let start = self.pos + at as u64;
        let header = batch::FRAME_HEADER_LEN as u64;
        let length = batch::frame_length(&data[at..]);
        let zeros_from = if matches!(length, batch::Length::Damaged) {
            self.size // never torn; no need to look
        } else {
            match self.zeros_from(start, data).await {
                Ok(z) => z,
                // Cut back to before the frame while it was looked at: a
                // writer recovering from a crash cut it off as torn, which
                // is what it was (only the last segment's tail is cut).
                Err(StoreError::OutOfRange { size, .. }) if size <= start => {
                    if let Some(pin) = self.pin {
                        pin.fetch_min(start, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok(BadFrame {
                        offset: start,
                        reaches_end: true,
                        unwritten: false,
                        error,
                    });
                }
                Err(e) => return Err(e),
            }
        };
        let one_frame = zeros_from - start <= header.saturating_add(self.max_body as u64);
        let reaches_end = one_frame
            && match length {
                batch::Length::Unwritten => true,
                batch::Length::Damaged => false,
                batch::Length::Valid(n) => {
                    let frame_end = start + header + n as u64;
                    frame_end >= zeros_from
                        && match data.get(at..at + batch::FRAME_HEADER_LEN + n) {
                            // Out of range, or past the blob's end.
                            None => true,
                            Some(frame) => {
                                !batch::frame_crc_ok(frame)
                                    && (frame_end > zeros_from
                                        || batch::has_zero_sector(frame, start))
                            }
                        }
                }
            };
        Ok(BadFrame {
            offset: start,
            reaches_end,
            unwritten: zeros_from == start,
            error,
        })
    }

    /// Where the zero bytes that end the blob begin, looking no further
    /// back than `floor` (`self.size` if its last byte is not zero).
    /// `data` holds the blob's bytes from `self.pos`. Looked at backwards,
    /// so that bytes before the zeros are read only as far as the last
    /// one that is not zero.
    async fn zeros_from(&self, floor: u64, data: &[u8]) -> Result<u64, StoreError> {
        const STEP: u64 = 1 << 20;
        let held = self.pos..self.pos + data.len() as u64;
        let mut end = self.size;
        while end > floor {
            let start = end.saturating_sub(STEP).max(floor);
            let read;
            let bytes = if held.contains(&start) && end <= held.end {
                &data[(start - self.pos) as usize..(end - self.pos) as usize]
            } else {
                read = self.store.read(&self.blob, start, end - start).await?;
                &read[..]
            };
            if let Some(i) = bytes.iter().rposition(|&b| b != 0) {
                return Ok(start + i as u64 + 1);
            }
            end = start;
        }
        Ok(floor)
    }

    /// Next chunk of good frames, or `None` at the end or at a bad frame
    /// (then `self.bad` says which).
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, StoreError> {
        if self.bad.is_some() || self.pos >= self.size {
            return Ok(None);
        }
        let mut want = self.chunk.min(self.size - self.pos);
        self.chunk = (self.chunk * 2).min(CHUNK);
        loop {
            let data = match self.store.read(&self.blob, self.pos, want).await {
                Ok(data) => data,
                Err(StoreError::OutOfRange { size, .. }) if size < self.size => {
                    // Cut back since it was listed: a writer recovering from
                    // a crash cut a torn last batch off (only the last
                    // segment's tail is ever cut). Scan what is left; a
                    // record a checkpoint signs that is gone is still
                    // found missing by the caller.
                    tracing::info!(
                        blob = %self.blob,
                        listed = self.size,
                        now = size,
                        "segment was cut back while being read (a torn tail recovered); reading up to its new end"
                    );
                    self.size = size;
                    if let Some(pin) = self.pin {
                        pin.fetch_min(size, std::sync::atomic::Ordering::Relaxed);
                    }
                    if self.pos >= self.size {
                        return Ok(None);
                    }
                    want = want.min(self.size - self.pos);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut frames = Vec::new();
            let mut at = 0usize;
            let mut need_more = None;
            let mut bad = None;
            while at < data.len() {
                match batch::parse_frame(&data[at..], self.max_body) {
                    Frame::Complete { len, .. } => {
                        frames.push(at..at + len);
                        at += len;
                    }
                    Frame::Incomplete { needed } => {
                        let start = self.pos + at as u64;
                        let end = start + needed.unwrap_or(batch::FRAME_HEADER_LEN) as u64;
                        if end <= self.size {
                            need_more = Some(end);
                        } else {
                            let unwritten = needed.is_none()
                                && data[at..].iter().all(|&b| b == 0)
                                && self.pos + data.len() as u64 == self.size;
                            self.bad = Some(BadFrame {
                                offset: start,
                                reaches_end: true,
                                unwritten,
                                error: DecodeError::new(
                                    0,
                                    format!(
                                        "incomplete batch: {} bytes present{}",
                                        self.size - start,
                                        needed.map(|n| format!(" of {n}")).unwrap_or_default()
                                    ),
                                ),
                            });
                        }
                        break;
                    }
                    Frame::Corrupt(error) => {
                        bad = Some((at, error));
                        break;
                    }
                }
            }
            if let Some((at, error)) = bad {
                self.bad = Some(self.classify(&data, at, error).await?);
            }
            if frames.is_empty() {
                if let Some(end) = need_more {
                    // One frame larger than the chunk: read it whole.
                    want = end - self.pos;
                    continue;
                }
                return Ok(None);
            }
            let base = self.pos;
            self.pos += at as u64;
            // Stop at a bad frame only after handing out the good ones.
            let mut data = data;
            data.truncate(at);
            return Ok(Some(Chunk { base, data, frames }));
        }
    }
}

/// The one batch frame at `offset` of `blob` (`size` bytes long), if a
/// whole frame with a good CRC is there. Two reads: header, then frame.
pub async fn read_frame(
    store: &dyn BlobStore,
    blob: &str,
    offset: u64,
    size: u64,
    max_body: usize,
) -> Result<Option<Chunk>, StoreError> {
    let header = batch::FRAME_HEADER_LEN as u64;
    if offset.saturating_add(header) > size {
        return Ok(None);
    }
    let head = store.read(blob, offset, header).await?;
    let batch::Length::Valid(n) = batch::frame_length(&head) else {
        return Ok(None);
    };
    if n > max_body || offset + header + n as u64 > size {
        return Ok(None);
    }
    let data = store.read(blob, offset, header + n as u64).await?;
    match batch::parse_frame(&data, max_body) {
        Frame::Complete { len, .. } => Ok(Some(Chunk {
            base: offset,
            data,
            frames: std::iter::once(0..len).collect(),
        })),
        _ => Ok(None),
    }
}
