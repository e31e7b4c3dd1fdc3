//! Reading one stream through the stream index blobs that the writer puts
//! beside each checkpoint: the batches whose filter admits the stream, then
//! the log after the newest index. A ledger of ten years and millions of
//! entities is not read whole to show one entity's history.
//!
//! The indexes also list where every batch starts, so a read from a
//! sequence number starts at the batch that holds it instead of at the
//! start of its segment (up to 1 GiB before it).
//!
//! The indexes are a cache. One that is missing, damaged or out of line
//! ends the indexed part there, and the rest is scanned; records that do
//! not come out as versions 0, 1, 2, ... make the read start over as a full
//! scan (logged); a batch that is not where an index says is not used.
//! Only `verify` proves an index right.

use std::ops::ControlFlow;

use futures::{StreamExt, TryStreamExt};

use tracing::warn;

use super::layout;
use super::reader::{LedgerReader, SegmentRef};
use super::scan::Chunk;
use crate::error::Result;
use crate::format::batch::{BODY_HEADER_LEN, FRAME_HEADER_LEN};
use crate::format::record::{Record, RecordRef};
use crate::format::segment::HEADER_LEN;
use crate::format::stream_index::{stream_hashes, BatchFilter, StreamIndex};

/// A read that starts fewer records than this after its segment's first
/// scans from there: one index blob and one batch are two requests, and
/// about this many records cost as much to scan.
const MIN_RECORDS_TO_SEEK: u64 = 16_384;

/// Where a read starts: a batch frame, by the segment's place in
/// `LedgerReader::segments`, its offset there, and the sequence number the
/// batch starts with (so that damage found there is named by it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seek {
    pub segment: usize,
    pub offset: u64,
    pub first_seq: u64,
}

/// Below this many records per index blob on average, reading the indexes
/// (one request each) costs about what scanning those records does, so
/// the log is scanned. A quiet ledger checkpointed every five minutes for
/// ten years has a million small indexes; scanning its log is cheaper.
const MIN_RECORDS_PER_INDEX: u64 = 4096;

/// Batches and index blobs a stream read keeps in flight.
const READ_AHEAD: usize = 8;

impl LedgerReader {
    /// One stream's events in version order (the log order is version
    /// order within a stream): through the stream indexes where they pay
    /// off, else by scanning the log.
    pub async fn read_stream(&self, stream: &str) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.read_stream_with(stream, |r| {
            out.push(r.to_owned());
            ControlFlow::Continue(())
        })
        .await?;
        Ok(out)
    }

    /// [`Self::read_stream`], one record at a time, in version order,
    /// without holding the stream in memory; `f` may stop the read. Each
    /// record is passed once: where the indexes turn out to miss one (the
    /// next record found is not the next version), the read goes on by
    /// scanning the log from the start, past the versions already passed.
    pub async fn read_stream_with<F>(&self, stream: &str, f: F) -> Result<()>
    where
        F: FnMut(&RecordRef<'_>) -> ControlFlow<()>,
    {
        crate::model::validate_stream(stream).map_err(crate::LedgerError::InvalidArgument)?;
        let mut emit = InOrder {
            stream,
            next: 0,
            f,
            stopped: false,
            gapped: false,
        };
        let mut chain = self.index_chain().await?;
        if chain.worth_reading().await?
            && self.read_stream_through(&mut emit, chain).await?.is_some()
        {
            return Ok(());
        }
        if emit.gapped {
            warn!(
                passed = emit.next,
                "stream index misses records; scanning the log for the rest"
            );
        }
        self.scan(0, None, |r, _| match emit.offer(r) {
            Offer::Stop => ControlFlow::Break(()),
            Offer::Taken | Offer::Gap => ControlFlow::Continue(()),
        })
        .await
    }

    /// Where a scan for record `from` starts: (position in
    /// [`Self::segments`], byte offset of a batch frame). The batch holding
    /// `from` where a stream index lists it and the log agrees, else the
    /// start of `from`'s segment.
    pub(crate) async fn seek(&self, from: u64) -> Result<Seek> {
        let segments = self.segments();
        let start = segments
            .partition_point(|s| s.first_seq <= from)
            .saturating_sub(1);
        let plain = Seek {
            segment: start,
            offset: HEADER_LEN as u64,
            first_seq: segments.get(start).map_or(0, |s| s.first_seq),
        };
        if segments
            .get(start)
            .is_none_or(|s| from.saturating_sub(s.first_seq) < MIN_RECORDS_TO_SEEK)
        {
            return Ok(plain);
        }
        let Some((size, blob)) = self.stream_index_after(from).await? else {
            return Ok(plain); // not indexed (yet), or checkpoints far apart
        };
        let Some(idx) = self.read_index(&blob).await? else {
            return Ok(plain);
        };
        if idx.to != size || idx.from > from {
            warn!(index = %blob, "stream index does not cover what its name says; scanning the segment");
            return Ok(plain);
        }
        let at = idx.batches.partition_point(|b| b.first_seq <= from);
        let Some(batch) = at.checked_sub(1).map(|i| &idx.batches[i]) else {
            return Ok(plain);
        };
        match self.seek_batch(batch).await? {
            Some(at) if from < batch.first_seq + batch.count => Ok(at),
            _ => {
                let (segment, offset) = batch.position;
                warn!(index = %blob, segment, offset, "stream index names a batch that is not there; scanning the segment");
                Ok(plain)
            }
        }
    }

    /// The stream index that covers record `q`: the one with the smallest
    /// size above `q`, looked for among sizes in the million-record window
    /// of `q` and the next, by name prefix, so that a ledger of a million
    /// checkpoints is not listed whole for one read.
    async fn stream_index_after(&self, q: u64) -> Result<Option<(u64, String)>> {
        let prefix = layout::stream_index_prefix(self.name());
        for w in [q / layout::WINDOW, q / layout::WINDOW + 1] {
            let found = self
                .store()
                .list(&layout::in_window(&prefix, w))
                .await?
                .into_iter()
                .filter_map(|b| {
                    layout::stream_index_size(self.name(), &b.name).map(|s| (s, b.name))
                })
                .filter(|(size, _)| *size > q)
                .min();
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The stream index blobs beside stored checkpoints whose size is above
    /// `after`, and the size each covers up to, oldest first, listed by
    /// window from `after`'s. An index without its checkpoint was left by a
    /// crash between the two puts; the one beside the next checkpoint starts
    /// where it does, so chaining it would end the chain there.
    async fn stream_index_blobs(&self, after: u64) -> Result<Vec<(u64, String)>> {
        let name = self.name();
        let (cp_prefix, idx_prefix) = (
            layout::checkpoint_prefix(name),
            layout::stream_index_prefix(name),
        );
        let mut signed = std::collections::HashSet::new();
        let mut blobs = Vec::new();
        let last = self.signed_at_open().max(after) / layout::WINDOW + 1;
        for w in after / layout::WINDOW..=last {
            for b in self.store().list(&layout::in_window(&cp_prefix, w)).await? {
                signed.extend(layout::checkpoint_size(name, &b.name));
            }
            for b in self
                .store()
                .list(&layout::in_window(&idx_prefix, w))
                .await?
            {
                if let Some(size) = layout::stream_index_size(name, &b.name) {
                    blobs.push((size, b.name));
                }
            }
        }
        // Not past the checkpoint this reader saw when it opened: those
        // indexes name batches beyond the segment lengths it listed.
        let seen = self.signed_at_open();
        blobs.retain(|(size, _)| *size > after && *size <= seen && signed.contains(size));
        blobs.sort();
        Ok(blobs)
    }

    /// The merged stream indexes (format §11.3.1) up to the checkpoint this
    /// reader saw when it opened, oldest first.
    async fn merged_index_blobs(&self) -> Result<Vec<(u64, String)>> {
        let mut blobs: Vec<(u64, String)> =
            super::merge::merged_sizes(self.store().as_ref(), self.name())
                .await?
                .into_iter()
                .filter(|&to| to <= self.signed_at_open())
                .map(|to| (to, layout::merged_stream_index(self.name(), to)))
                .collect();
        blobs.sort();
        Ok(blobs)
    }

    async fn index_chain(&self) -> Result<IndexChain<'_>> {
        Ok(IndexChain {
            reader: self,
            merged: self.merged_index_blobs().await?.into(),
            pending: None,
            single: None,
            fetched: Default::default(),
            gap_checked: false,
            covered: 0,
        })
    }

    /// [`Self::read_stream`] through the indexes, however small: `None`
    /// when they are missing or do not add up, and a full scan is needed.
    pub async fn read_stream_indexed(&self, stream: &str) -> Result<Option<Vec<Record>>> {
        let chain = self.index_chain().await?;
        let mut out = Vec::new();
        let mut emit = InOrder {
            stream,
            next: 0,
            f: |r: &RecordRef<'_>| {
                out.push(r.to_owned());
                ControlFlow::Continue(())
            },
            stopped: false,
            gapped: false,
        };
        let done = self.read_stream_through(&mut emit, chain).await?;
        Ok(done.map(|()| out))
    }

    /// Passes the stream's records through the indexes in `chain`, then
    /// the log after them. `None` when the indexes cannot be used (missing,
    /// out of line, a batch not where they say) or miss a record: `emit`
    /// knows how far it got.
    async fn read_stream_through<F>(
        &self,
        emit: &mut InOrder<'_, F>,
        mut chain: IndexChain<'_>,
    ) -> Result<Option<()>>
    where
        F: FnMut(&RecordRef<'_>) -> ControlFlow<()>,
    {
        // Where the indexed part ends: the next record, and the last batch
        // an index listed (the scan resumes there and skips what it holds).
        let mut covered = 0u64;
        let mut resume: Option<BatchFilter> = None;
        let hashes = stream_hashes(emit.stream);
        while let Some(idx) = chain.next().await? {
            // In order, a few at a time: on a remote store each batch is a
            // request, and its latency, not its bytes, is the cost.
            // A loop rather than stream combinators: a closure there that
            // borrows the batch makes this future not `Send` (rustc cannot
            // prove it for every lifetime), and so not spawnable.
            let mut frames = futures::stream::FuturesOrdered::new();
            let mut next = 0;
            loop {
                while frames.len() < READ_AHEAD && next < idx.batches.len() {
                    let b = &idx.batches[next];
                    next += 1;
                    if b.may_hold(hashes) {
                        frames.push_back(self.batch_at(b));
                    }
                }
                let Some(frame) = frames.next().await else {
                    break;
                };
                let Some((pos, chunk)) = frame? else {
                    return Ok(None); // not where the index says
                };
                match self.offer_batch(emit, pos, &chunk)? {
                    Offer::Taken => {}
                    Offer::Stop => return Ok(Some(())),
                    Offer::Gap => return Ok(None),
                }
            }
            covered = idx.to;
            resume = idx.batches.last().cloned().or(resume);
        }
        let Some(batch) = resume else {
            return Ok(None); // nothing indexed: the plain scan is the same work
        };
        // Where the index says; a frame that is not there makes the read
        // scan the log instead, as for any cache that does not hold.
        let Some(at) = self.seek_batch(&batch).await? else {
            return Ok(None);
        };
        let mut gap = false;
        self.scan_at(at, covered, None, |r, _| match emit.offer(r) {
            Offer::Taken => ControlFlow::Continue(()),
            Offer::Stop => ControlFlow::Break(()),
            Offer::Gap => {
                gap = true;
                ControlFlow::Break(())
            }
        })
        .await?;
        Ok((!gap).then_some(()))
    }

    /// The index `idx` read from `blob`, if it continues the chain at
    /// record `covered`.
    fn in_line(
        blob: &str,
        idx: Option<StreamIndex>,
        size: u64,
        covered: u64,
    ) -> Option<StreamIndex> {
        match idx {
            Some(idx) if idx.from == covered && idx.to == size => Some(idx),
            Some(_) => {
                warn!(index = %blob, "stream index out of line with the ones before; scanning from there");
                None
            }
            None => None,
        }
    }

    /// The stream index in `blob`, if it is there, decodes and is this
    /// ledger's (else `None`, logged: indexes are a cache).
    async fn read_index(&self, blob: &str) -> Result<Option<StreamIndex>> {
        let bytes = match self.store().read_all(blob).await {
            Ok(b) => b,
            Err(crate::backend::StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match StreamIndex::decode(&bytes) {
            Ok(idx) if idx.ledger_id == self.id() => Ok(Some(idx)),
            Ok(_) => {
                warn!(index = %blob, "stream index of another ledger; not used");
                Ok(None)
            }
            Err(e) => {
                warn!(index = %blob, error = %e, "unreadable stream index; not used");
                Ok(None)
            }
        }
    }

    /// Segment number `index`: its place in [`Self::segments`], and its
    /// listing.
    fn listed_segment(&self, index: u64) -> Option<(usize, &SegmentRef)> {
        self.segments()
            .iter()
            .enumerate()
            .find(|(_, s)| s.index == index)
    }

    /// Where a read starts at `batch`, if a frame that starts at the listed
    /// record with the listed count lies where an index says it is. Reads
    /// the frame's header only; the scan that starts there reads the frame
    /// and checks its CRC.
    async fn seek_batch(&self, batch: &BatchFilter) -> Result<Option<Seek>> {
        let (segment, offset) = batch.position;
        let Some((pos, seg)) = self.listed_segment(segment) else {
            return Ok(None);
        };
        let head = (FRAME_HEADER_LEN + BODY_HEADER_LEN) as u64;
        let size = self.view_len(seg);
        if offset.saturating_add(head) > size {
            return Ok(None);
        }
        let bytes = self.store().read(&seg.name, offset, head).await?;
        Ok(
            match crate::format::batch::frame_head(&bytes, self.max_body()) {
                Some((len, first_seq, count))
                    if offset + len as u64 <= size
                        && (first_seq, u64::from(count)) == (batch.first_seq, batch.count) =>
                {
                    Some(Seek {
                        segment: pos,
                        offset,
                        first_seq,
                    })
                }
                _ => None,
            },
        )
    }

    /// The batch an index lists, read where the index says it is: its
    /// segment's place in [`Self::segments`] and the frame, if a frame
    /// there starts at the listed record and holds the listed count.
    async fn batch_at(&self, batch: &BatchFilter) -> Result<Option<(usize, Chunk)>> {
        let (segment, offset) = batch.position;
        let Some((pos, seg)) = self.listed_segment(segment) else {
            return Ok(None);
        };
        let frame = super::scan::read_frame(
            self.store().as_ref(),
            &seg.name,
            offset,
            self.view_len(seg),
            self.max_body(),
        )
        .await?;
        Ok(frame
            .filter(|chunk| {
                let body = chunk.frame(0);
                (body.first_seq, u64::from(body.count)) == (batch.first_seq, batch.count)
            })
            .map(|chunk| (pos, chunk)))
    }

    /// Offers the stream's records in the batch `chunk` holds, read from
    /// `pos` in [`Self::segments`], to `emit`: how the last offer went. The
    /// batch is decoded whole first, so one that does not decode offers
    /// nothing.
    fn offer_batch<F>(&self, emit: &mut InOrder<'_, F>, pos: usize, chunk: &Chunk) -> Result<Offer>
    where
        F: FnMut(&RecordRef<'_>) -> ControlFlow<()>,
    {
        let seg = &self.segments()[pos];
        for r in chunk.records(0, &seg.name)? {
            match emit.offer(&r) {
                Offer::Taken => {}
                other => return Ok(other),
            }
        }
        Ok(Offer::Taken)
    }
}

/// Passes one stream's records to `f` in version order, each once.
struct InOrder<'s, F> {
    stream: &'s str,
    /// The version the next record passed must have.
    next: u64,
    f: F,
    /// `f` asked to stop.
    stopped: bool,
    /// A record came before the one with the next version.
    gapped: bool,
}

enum Offer {
    /// Passed on, or not this stream's, or a version already passed.
    Taken,
    /// `f` asked to stop.
    Stop,
    /// A version after the next one: the records between were missed.
    Gap,
}

impl<F: FnMut(&RecordRef<'_>) -> ControlFlow<()>> InOrder<'_, F> {
    fn offer(&mut self, r: &RecordRef<'_>) -> Offer {
        if self.stopped {
            return Offer::Stop;
        }
        if r.stream != self.stream || r.stream_version < self.next {
            return Offer::Taken;
        }
        if r.stream_version > self.next {
            self.gapped = true;
            return Offer::Gap;
        }
        self.next += 1;
        if (self.f)(r).is_break() {
            self.stopped = true;
            return Offer::Stop;
        }
        Offer::Taken
    }
}

/// The stream indexes a read of one stream goes through, in order, each
/// starting where the one before ended: a merged index where one starts
/// there, else the index beside the next checkpoint. Those are listed only
/// once the merged ones do not go on, from there: a ledger whose indexes
/// are merged is not listed whole for one read.
pub(crate) struct IndexChain<'a> {
    reader: &'a LedgerReader,
    /// Merged indexes not yet used, by `to`.
    merged: std::collections::VecDeque<(u64, String)>,
    /// The first of them, read, when it starts after `covered`.
    pending: Option<StreamIndex>,
    /// The indexes beside checkpoints above a size, listed when first
    /// needed there.
    single: Option<(u64, std::collections::VecDeque<(u64, String)>)>,
    /// The next of those, read ahead (a request each), with what they hold.
    fetched: std::collections::VecDeque<(u64, String, Option<StreamIndex>)>,
    /// The gap before `pending` is worth filling with those.
    gap_checked: bool,
    covered: u64,
}

impl IndexChain<'_> {
    /// The next index in line, or `None` where the chain ends.
    async fn next(&mut self) -> Result<Option<StreamIndex>> {
        let idx = self.next_in_line().await?;
        if let Some(idx) = &idx {
            self.covered = idx.to;
        }
        Ok(idx)
    }

    async fn next_in_line(&mut self) -> Result<Option<StreamIndex>> {
        loop {
            if let Some(p) = &self.pending {
                if p.from == self.covered {
                    return Ok(self.pending.take());
                }
                if p.from > self.covered {
                    // A gap between merged indexes, filled by the indexes
                    // beside its checkpoints: only where they are worth
                    // their requests (a ledger merged only lately has a
                    // gap of every checkpoint before). Looked at once.
                    if !self.gap_checked {
                        let (gap_end, gap) = (p.from, p.from - self.covered);
                        let n = self.singles_up_to(gap_end).await? as u64;
                        if n == 0 || gap / n < MIN_RECORDS_PER_INDEX {
                            return Ok(None);
                        }
                        self.gap_checked = true;
                    }
                    break;
                }
                self.pending = None;
            }
            let Some((to, blob)) = self.merged.pop_front() else {
                break;
            };
            if to <= self.covered {
                continue;
            }
            self.gap_checked = false;
            match self.reader.read_index(&blob).await? {
                Some(idx) if idx.to == to && idx.from < to => self.pending = Some(idx),
                Some(_) => {
                    warn!(index = %blob, "merged stream index does not cover what its name says; not used")
                }
                None => {}
            }
        }
        self.list_singles().await?;
        let covered = self.covered;
        self.fetched.retain(|(size, _, _)| *size > covered);
        if self.fetched.is_empty() {
            let (_, single) = self.single.as_mut().expect("listed");
            while single.front().is_some_and(|(size, _)| *size <= covered) {
                single.pop_front();
            }
            let next: Vec<(u64, String)> = single.drain(..single.len().min(READ_AHEAD)).collect();
            let reader = self.reader;
            let read: Vec<_> = futures::stream::iter(next)
                .map(|(size, blob)| async move {
                    let idx = reader.read_index(&blob).await?;
                    Ok::<_, crate::error::LedgerError>((size, blob, idx))
                })
                .buffered(READ_AHEAD)
                .try_collect()
                .await?;
            self.fetched = read.into();
        }
        let Some((size, blob, idx)) = self.fetched.pop_front() else {
            return Ok(None);
        };
        Ok(LedgerReader::in_line(&blob, idx, size, covered))
    }

    /// Lists the indexes beside checkpoints above `covered` (by window,
    /// from there), unless a listing from no later is at hand.
    async fn list_singles(&mut self) -> Result<()> {
        if self
            .single
            .as_ref()
            .is_none_or(|(after, _)| *after > self.covered)
        {
            let listed = self.reader.stream_index_blobs(self.covered).await?;
            self.single = Some((self.covered, listed.into()));
            self.fetched.clear();
        }
        Ok(())
    }

    /// How many indexes beside checkpoints lie above `covered`, up to
    /// size `end`.
    async fn singles_up_to(&mut self, end: u64) -> Result<usize> {
        self.list_singles().await?;
        let (_, single) = self.single.as_ref().expect("listed");
        let fetched = self.fetched.iter().map(|(size, _, _)| *size);
        Ok(fetched
            .chain(single.iter().map(|(size, _)| *size))
            .filter(|&s| s > self.covered)
            .take_while(|&s| s <= end)
            .count())
    }

    /// Whether reading the indexes costs less than scanning the log: at
    /// least [`MIN_RECORDS_PER_INDEX`] records per index blob on average,
    /// counting the merged ones and the others after them.
    async fn worth_reading(&mut self) -> Result<bool> {
        let merged_end = self.merged.back().map_or(0, |(to, _)| *to);
        let listed = self.reader.stream_index_blobs(merged_end).await?;
        let indexed = listed.last().map_or(merged_end, |(size, _)| *size);
        let blobs = (self.merged.len() + listed.len()) as u64;
        self.single = Some((merged_end, listed.into()));
        Ok(indexed / blobs.max(1) >= MIN_RECORDS_PER_INDEX)
    }
}
