//! Reading the log. Readers take no lock: they see every batch that was
//! durable when they reached it, and stop quietly at a batch still being
//! written at the very end of the log.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::layout::{self, Meta};
use super::recover;
use super::scan::Scanner;
use super::streams::Seek;
use crate::backend::{BlobStore, StoreError};
use crate::error::{IntegrityError, LedgerError, Result};
use crate::format::checkpoint::{Checkpoint, Verifier};
use crate::format::record::{Record, RecordRef};
use crate::format::segment::{is_unwritten_header, SegmentHeader, HEADER_LEN};

#[derive(Clone, Debug)]
pub struct SegmentRef {
    pub index: u64,
    pub name: String,
    pub first_seq: u64,
    pub size: u64,
    pub sealed: bool,
}

/// The sequence number the next batch of a read must start with: a gap (a
/// segment cut at a frame boundary, say) is damage, never a shorter log.
pub(crate) struct Due(pub u64);

impl Due {
    /// Entering segment `seg`. Every segment before the last has its final
    /// length in [`LedgerReader::segments`] (`LedgerReader::open` looks
    /// again at one the listing did not show sealed), so a new segment
    /// that does not start where the one before it ended is a gap, sealed
    /// or not: readers do not rely on sealing (format §4.2).
    pub fn segment(&mut self, seg: &SegmentRef) -> Result<()> {
        if self.0 != seg.first_seq {
            return Err(IntegrityError::new(
                &seg.name,
                crate::format::segment::FIRST_SEQ_AT,
                Some(self.0),
                format!(
                    "segment starts at sequence number {} but the one before it ends at {}",
                    seg.first_seq, self.0
                ),
            )
            .into());
        }
        self.0 = seg.first_seq;
        Ok(())
    }

    /// The batch at `offset` of `blob`, of `count` records from `first`.
    pub fn batch(&mut self, blob: &str, offset: u64, first: u64, count: u64) -> Result<()> {
        if first != self.0 {
            return Err(IntegrityError::new(
                blob,
                offset,
                Some(self.0),
                format!(
                    "batch starts at sequence number {first} where {} was due",
                    self.0
                ),
            )
            .into());
        }
        self.0 = first + count;
        Ok(())
    }
}

/// Where a record was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    /// Offset of the batch frame in the segment.
    pub offset: u64,
}

pub struct LedgerReader {
    store: Arc<dyn BlobStore>,
    meta: Meta,
    segments: Vec<SegmentRef>,
    max_body: usize,
    /// The newest checkpoint's size when the reader opened, listed before
    /// the segments: a checkpoint is put after the records it covers are
    /// durable, so the segments as listed hold at least this many records,
    /// and a log that ends sooner has lost some.
    signed: u64,
    /// Where the first read that reached the end of the last segment
    /// stopped, at a batch being written (or torn): later reads stop there
    /// too. Without it, a block a writer was copying into the unwritten
    /// space the fs store writes ahead (format §12.2), shown whole while
    /// it lands, would turn up in this reader's later reads, and after it
    /// whatever else the writer put into that space.
    last_end: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LedgerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerReader")
            .field("ledger", &self.meta.name)
            .field("store", &self.store.location())
            .field("segments", &self.segments.len())
            .field("signed", &self.signed)
            .finish()
    }
}

impl LedgerReader {
    /// Opens a ledger for reading, seeing the segments as they are now:
    /// every read of this reader ends where the log ended then, and sees
    /// only records whose append was done (on the fs store, a read waits
    /// for an append under way). One exception: of a ledger a crash left,
    /// before a writer reopened it, the store cannot tell where the log
    /// ends until a read reaches it, and the first read that does may see
    /// batches a writer appended since this open; later reads see no
    /// further than it did.
    pub async fn open(store: Arc<dyn BlobStore>, name: &str) -> Result<LedgerReader> {
        layout::validate_ledger_name(name)?;
        let meta = recover::read_meta(store.as_ref(), name).await?;
        let newest = recover::newest_checkpoint_near(store.as_ref(), name).await?;
        let signed = newest.unwrap_or(0);
        let mut segments = Vec::new();
        let listed = recover::list_segments(store.as_ref(), name).await?;
        let last = listed.last().map(|(index, _)| *index);
        for (index, mut info) in listed {
            if Some(index) != last && !info.sealed {
                // A listing taken while the writer rolled over may show the
                // segment before the new one shorter than it ended (or not
                // yet sealed). Its appends ended before the next segment
                // was created, which this listing shows: its length now is
                // final.
                info = store.info(&info.name).await?;
            }
            if info.size < HEADER_LEN as u64 {
                if Some(index) != last {
                    // Only the last segment may be a rollover in progress
                    // (format §12.3); one before it lost its header.
                    return Err(IntegrityError::new(
                        &info.name,
                        info.size,
                        None,
                        "segment header is incomplete",
                    )
                    .into());
                }
                // A rollover in progress (or interrupted): nothing to read yet.
                continue;
            }
            let bytes = store.read(&info.name, 0, HEADER_LEN as u64).await?;
            if Some(index) == last && is_unwritten_header(info.size, &bytes) {
                // A rollover that a crash interrupted, and the writer's
                // open completes: no records (format §12.3).
                continue;
            }
            let h = SegmentHeader::decode(&bytes)
                .map_err(|e| IntegrityError::decoding(&info.name, 0, e, None))?;
            // Each field at its own offset (format §4.1).
            let wrong = if h.ledger_id != meta.id {
                Some((
                    16,
                    format!(
                        "segment belongs to ledger {}, but the LEDGER file names {} (one of the two was changed, or the segment is another ledger's)",
                        crate::format::hex(&h.ledger_id),
                        crate::format::hex(&meta.id)
                    ),
                ))
            } else if h.index != index {
                Some((
                    32,
                    format!("header says segment {}, file is segment {index}", h.index),
                ))
            } else {
                None
            };
            if let Some((offset, what)) = wrong {
                return Err(IntegrityError::new(&info.name, offset, None, what).into());
            }
            segments.push(SegmentRef {
                index,
                name: info.name,
                first_seq: h.first_seq,
                size: info.size,
                sealed: info.sealed,
            });
        }
        if segments.is_empty() {
            if let Some(size) = newest {
                let blob = layout::checkpoint(name, size);
                return Err(recover::segment_zero_missing(name, &blob, size));
            }
        }
        let max_body = meta.max_body();
        Ok(LedgerReader {
            store,
            meta,
            segments,
            max_body,
            last_end: u64::MAX.into(),
            signed,
        })
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn id(&self) -> [u8; 16] {
        self.meta.id
    }

    /// The public key recorded in the ledger itself. Verification against
    /// it proves only self-consistency; pass a key obtained out of band to
    /// prove authenticity.
    pub fn recorded_verifier(&self) -> &Verifier {
        &self.meta.verifier
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    pub fn segments(&self) -> &[SegmentRef] {
        &self.segments
    }

    pub(crate) fn max_body(&self) -> usize {
        self.max_body
    }

    /// Checkpoints, oldest first, each signature checked against `verifier`.
    pub async fn checkpoints(&self, verifier: &Verifier) -> Result<Vec<(String, Checkpoint)>> {
        let meta = Meta {
            verifier: verifier.clone(),
            ..self.meta.clone()
        };
        let blobs = recover::checkpoint_blobs(self.store.as_ref(), &self.meta.name).await?;
        let mut out = Vec::with_capacity(blobs.len());
        for (size, blob) in blobs {
            let cp = recover::open_checkpoint(self.store.as_ref(), &meta, size, &blob).await?;
            out.push((blob, cp));
        }
        Ok(out)
    }

    /// The checkpoint of `size`, or the newest in the store now when `size`
    /// is `None` (which may cover records appended after this reader opened:
    /// a proof against it needs a reader opened after it; found
    /// through the snapshots and the names near, `recover::newest_checkpoint_near`): its
    /// blob, its statement (signature and origin checked against the key
    /// recorded in the ledger, size against the name) and its note text.
    /// Reads that one blob, however many checkpoints ten years have left.
    pub async fn signed_checkpoint(
        &self,
        size: Option<u64>,
    ) -> Result<Option<(String, Checkpoint, String)>> {
        let store = self.store.as_ref();
        let (size, blob) = match size {
            Some(s) => (s, layout::checkpoint(&self.meta.name, s)),
            None => match recover::newest_checkpoint_near(store, &self.meta.name).await? {
                Some(s) => (s, layout::checkpoint(&self.meta.name, s)),
                None => return Ok(None),
            },
        };
        match recover::open_checkpoint_note(store, &self.meta, size, &blob).await {
            Ok((cp, note)) => Ok(Some((blob, cp, note))),
            Err(LedgerError::Store(StoreError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Calls `f` with each record whose sequence number is in `from..to`
    /// (`to` = `None`: to the end), in order, until `f` breaks. Starts at
    /// the batch holding `from` where a stream index says where it is
    /// (see `streams.rs`), so batches before it are not read. Each batch
    /// is decoded whole before its records are passed on, so a batch whose
    /// CRC matches but whose body does not decode (damage, never a tear)
    /// passes none of them: the read fails at its start.
    pub async fn scan<F>(&self, from: u64, to: Option<u64>, f: F) -> Result<()>
    where
        F: FnMut(&RecordRef<'_>, Location) -> ControlFlow<()>,
    {
        let at = self.seek(from).await?;
        self.scan_at(at, from, to, f).await
    }

    /// [`Self::scan`], starting at the batch `at`.
    pub(crate) async fn scan_at<F>(
        &self,
        at: Seek,
        from: u64,
        to: Option<u64>,
        mut f: F,
    ) -> Result<()>
    where
        F: FnMut(&RecordRef<'_>, Location) -> ControlFlow<()>,
    {
        let to = to.unwrap_or(u64::MAX);
        if from >= to {
            return Ok(());
        }
        let (start, offset) = (at.segment, at.offset);
        let last = self.segments.len().saturating_sub(1);
        let mut due = Due(at.first_seq);
        for (i, seg) in self.segments.iter().enumerate().skip(start) {
            let begin = if i == start {
                offset
            } else {
                HEADER_LEN as u64
            };
            if i > start {
                due.segment(seg)?;
            }
            // After the gap check: a read that ends before this segment
            // still holds the one before it to its end.
            if seg.first_seq >= to {
                return Ok(());
            }
            let mut scan = self.scanner(seg, begin);
            if i == start && offset > HEADER_LEN as u64 {
                scan = scan.starting_small();
            }
            while let Some(chunk) = scan.next_chunk().await? {
                for (i, range) in chunk.frames.iter().enumerate() {
                    let body = chunk.frame(i);
                    let at = chunk.base + range.start as u64;
                    due.batch(&seg.name, at, body.first_seq, body.count.into())?;
                    if body.first_seq + body.count as u64 <= from {
                        continue;
                    }
                    if body.first_seq >= to {
                        return Ok(());
                    }
                    let loc = Location {
                        segment: seg.index,
                        offset: chunk.base + range.start as u64,
                    };
                    // Decoded whole before any record is passed on: a
                    // batch that does not decode passes nothing.
                    for r in chunk.records(i, &seg.name)? {
                        if r.seq < from {
                            continue;
                        }
                        if r.seq >= to {
                            return Ok(());
                        }
                        if f(&r, loc).is_break() {
                            return Ok(());
                        }
                    }
                }
            }
            if let Some(bad) = scan.bad {
                if due.0 >= to {
                    // Damage past the range asked for is another read's.
                    return Ok(());
                }
                self.bad_frame(seg, i == last, bad, due.0).await?;
            }
        }
        self.check_end(due.0, to).await
    }

    /// A read that ran to the end of the log before `to`, at record `ends`:
    /// the log must hold what the newest checkpoint listed at open signs
    /// (a cut at a batch boundary, or a deleted last segment, leaves no
    /// bad frame to find).
    pub(crate) async fn check_end(&self, ends: u64, to: u64) -> Result<()> {
        if ends >= self.signed.min(to) {
            return match self.segments.last() {
                Some(seg) if seg.sealed && ends < to => {
                    self.check_sealed_last(seg.index, &seg.name, self.view_len(seg), ends)
                        .await
                }
                _ => Ok(()),
            };
        }
        let (blob, offset) = self
            .segments
            .last()
            .map_or((layout::segment(self.name(), 0), 0), |s| {
                (s.name.clone(), self.view_len(s))
            });
        let short = IntegrityError::new(
            &blob,
            offset,
            Some(ends),
            format!(
                "the log ends at record {ends}, but a checkpoint covers {} records: records were removed from its end (a segment cut at a batch boundary, or a later segment deleted)",
                self.signed
            ),
        );
        Err(self.short_of_signed(short).await)
    }

    /// A read or verification that ran to the end of sealed last segment
    /// `index` (`name`), its records ending at byte `end` before `seq`: a
    /// writer seals a segment only after it created the next, so unless the
    /// next one was created after the segments were listed, the segments
    /// after it were removed, with records no checkpoint may cover yet.
    pub(crate) async fn check_sealed_last(
        &self,
        index: u64,
        name: &str,
        end: u64,
        seq: u64,
    ) -> Result<()> {
        match self
            .store
            .info(&layout::segment(self.name(), index + 1))
            .await
        {
            Err(crate::backend::StoreError::NotFound { .. }) => {
                Err(recover::sealed_last(self.name(), index, name, end, seq).into())
            }
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// `short`, unless the newest checkpoint (by name) is not one.
    async fn short_of_signed(&self, short: IntegrityError) -> LedgerError {
        let blob = layout::checkpoint(self.name(), self.signed);
        recover::short_of_checkpoint(self.store.as_ref(), &self.meta, self.signed, &blob, short)
            .await
    }

    /// Where a scan stopped at a frame it could not read: a batch being
    /// written (or torn by a crash) at the very end of the log is simply
    /// not there yet, unless a checkpoint already signed it; anything else
    /// is damage. `reached` is the sequence number the scan got to.
    pub(crate) async fn bad_frame(
        &self,
        seg: &SegmentRef,
        is_last: bool,
        bad: super::scan::BadFrame,
        reached: u64,
    ) -> Result<()> {
        if !(is_last && bad.reaches_end) {
            return Err(
                IntegrityError::new(&seg.name, bad.offset, Some(reached), bad.error.what).into(),
            );
        }
        if !self.store.truncates() && !bad.unwritten {
            // Where appends are whole or absent (Azure), nothing is ever
            // being written at the end as a reader looks: bytes there that
            // are no whole batch were put there otherwise. (Zeros are
            // where the log ends, as `verify` has it: nothing is lost.)
            return Err(IntegrityError::new(
                &seg.name,
                bad.offset,
                Some(reached),
                format!(
                    "{} (at the end of the last segment, on a store whose appends cannot tear: damage)",
                    bad.error.what
                ),
            )
            .into());
        }
        self.last_end
            .fetch_min(bad.offset, std::sync::atomic::Ordering::Relaxed);
        let signed = self.signed;
        if signed > reached {
            let short = IntegrityError::new(
                &seg.name,
                bad.offset,
                Some(reached),
                format!(
                    "{}; a checkpoint covers {signed} records but the log ends at {reached}",
                    bad.error.what
                ),
            );
            return Err(self.short_of_signed(short).await);
        }
        Ok(())
    }

    /// A scan of `seg` from `start`, over what this reader sees of it.
    pub(crate) fn scanner(&self, seg: &SegmentRef, start: u64) -> Scanner<'_> {
        let scan = Scanner::new(
            self.store.as_ref(),
            &seg.name,
            start,
            self.view_len(seg),
            self.max_body,
        );
        match self.segments.last() {
            Some(last) if last.index == seg.index => scan.pinning(&self.last_end),
            _ => scan,
        }
    }

    /// How much of `seg` this reader reads: its length as listed, and of
    /// the last segment no further than `last_end`.
    pub(crate) fn view_len(&self, seg: &SegmentRef) -> u64 {
        match self.segments.last() {
            Some(last) if last.index == seg.index => seg
                .size
                .min(self.last_end.load(std::sync::atomic::Ordering::Relaxed)),
            _ => seg.size,
        }
    }

    /// The newest checkpoint's size when this reader opened.
    pub fn signed_at_open(&self) -> u64 {
        self.signed
    }

    /// Records `from..to` as owned values.
    pub async fn read(&self, from: u64, to: Option<u64>) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.scan(from, to, |r, _| {
            out.push(r.to_owned());
            ControlFlow::Continue(())
        })
        .await?;
        Ok(out)
    }

    /// One stream's events, by reading the whole log (see
    /// [`Self::read_stream`], which uses the stream index).
    pub async fn read_stream_scan(&self, stream: &str) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.scan(0, None, |r, _| {
            if r.stream == stream {
                out.push(r.to_owned());
            }
            ControlFlow::Continue(())
        })
        .await?;
        Ok(out)
    }

    /// The log as it stood at time `as_of_us`: every record stamped at or
    /// before it. Timestamps never decrease along the log, so this is a
    /// prefix.
    pub async fn read_as_of(&self, as_of_us: i64) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.scan(0, None, |r, _| {
            if r.timestamp_us > as_of_us {
                return ControlFlow::Break(());
            }
            out.push(r.to_owned());
            ControlFlow::Continue(())
        })
        .await?;
        Ok(out)
    }

    /// Number of records this reader sees: those in the segments as they
    /// were when it opened, up to the end of the last whole batch (a reader
    /// does not follow later appends; open another to see them). Reads the last segment from the
    /// last batch the newest checkpoint covers, where a stream index says
    /// where that is (see `Self::seek`), else from its start.
    pub async fn len(&self) -> Result<u64> {
        let Some(seg) = self.segments.last() else {
            return Ok(0);
        };
        let last = self.segments.len() - 1;
        let signed = self.signed;
        let plain = Seek {
            segment: last,
            offset: HEADER_LEN as u64,
            first_seq: seg.first_seq,
        };
        let at = if signed > seg.first_seq {
            self.seek(signed - 1).await?
        } else {
            plain
        };
        // The seek stays in the last segment when it holds record
        // `signed - 1`; if it does not, the check below says so.
        let at = if at.segment == last { at } else { plain };
        let mut n = at.first_seq;
        let mut scan = self.scanner(seg, at.offset);
        while let Some(chunk) = scan.next_chunk().await? {
            if let Some(i) = chunk.frames.len().checked_sub(1) {
                let b = chunk.frame(i);
                n = b.first_seq + b.count as u64;
            }
        }
        if let Some(bad) = scan.bad {
            self.bad_frame(seg, true, bad, n).await?;
        }
        self.check_end(n, u64::MAX).await?;
        Ok(n)
    }

    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }
}
