//! The single writer task, on a thread of its own (see `Ledger::start`).
//! While one block is being made durable (`pwrite` + `fdatasync` in place on
//! this thread, or an Azure append), every append that arrives meanwhile
//! waits in the channel; the next batch takes all of them the moment the
//! previous block is acknowledged. So concurrent callers share block writes
//! (group commit), the disk never idles while callers wait, and each caller
//! is answered only once its own block is durable.
//!
//! A batch's leaf and chain hashes are computed on the writer's own rayon
//! pool while its block is written: the block's bytes do not depend on them, so hashing overlaps the
//! I/O instead of adding to it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rayon::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use super::layout::{self, Meta};
use super::tip::Tip;
use super::versions::Undo;
use super::{CheckpointInfo, LedgerOptions};
use crate::backend::{BlobStore, StoreError, WriterLock};
use crate::error::{LedgerError, Result};
use crate::format::batch::BatchEncoder;
use crate::format::checkpoint::Checkpoint;
use crate::format::nodes;
use crate::format::record::Record;
use crate::format::segment::{SegmentHeader, HEADER_LEN};
use crate::format::stream_index::BatchFilter;
use crate::format::{chain, merkle, Hash};
use crate::model::{NewEvent, Receipt};

pub enum Command {
    Append {
        events: Vec<NewEvent>,
        bytes: usize,
        reply: oneshot::Sender<Result<Vec<Receipt>>>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<CheckpointInfo>>,
    },
    Close {
        reply: oneshot::Sender<Result<CheckpointInfo>>,
    },
}

pub struct Writer {
    pub store: Arc<dyn BlobStore>,
    pub meta: Meta,
    pub key: SigningKey,
    pub opts: LedgerOptions,
    /// The head including every admitted record: sequence numbers, stream
    /// versions and timestamps advance on admission, the chain, frontier and
    /// segment position when a block's write is issued. Checkpoints are
    /// taken only when nothing is in flight, when it is all durable.
    pub tip: Tip,
    pub lock: Box<dyn WriterLock>,
    pub hashers: Hashers,
    pub poisoned: Option<String>,
    pub last_checkpoint: Option<CheckpointInfo>,
    pub last_checkpoint_at: Instant,
    /// After a due checkpoint failed: when to try again, and the pause
    /// that led there (doubling, up to `MAX_CHECKPOINT_RETRY`). Without
    /// it a failing store would be retried in a loop that admits nothing.
    pub checkpoint_retry: Option<(Instant, Duration)>,
    /// A checkpoint whose put failed, its blob and its signed note: it may
    /// have landed all the same (an answer lost on the way back), or land
    /// yet (a request still on its way), so the next checkpoint settles it
    /// first.
    pub unanswered: Option<(Checkpoint, String, String)>,
    /// Sizes of the snapshots there are: listed once by `open`, then each
    /// one put. Pruning goes by these, so a checkpoint lists nothing (on
    /// the local store every listing reads the ledger's whole directory,
    /// which ten years of checkpoints fill with millions of files).
    pub snapshots: std::collections::BTreeSet<u64>,
    /// The stream indexes not merged yet (`merge`); listed at the first
    /// checkpoint, so that opening lists nothing for it.
    pub merge_run: Option<super::merge::Run>,
}

type Reply = oneshot::Sender<Result<Vec<Receipt>>>;

/// Batches smaller than this are hashed by one hashing thread: splitting a few
/// dozen records over both costs more than it saves, and one thread's
/// hashing overlaps the write anyway (group commit's batches are about this
/// size).
const PARALLEL_HASHING: usize = 256;

/// The tracing target of the events that say the writer stopped: after a
/// failed write, or a writer lock found lost. The error every later call
/// of the writer returns says the same, so a program that reports those
/// (as the CLI does) may leave this target out.
pub const WRITER_STOPPED: &str = "bi_ledger::writer_stopped";

/// Pauses between tries of a due checkpoint that fails.
const FIRST_CHECKPOINT_RETRY: Duration = Duration::from_secs(1);
const MAX_CHECKPOINT_RETRY: Duration = Duration::from_secs(60);

/// Longest a ready batch waits for the callers of the previous one.
const HOLD: Duration = Duration::from_micros(300);

/// The batch being filled while the previous one is written.
#[derive(Default)]
struct Next {
    records: Vec<Record>,
    /// Each caller and its records' range in `records`.
    callers: Vec<(Reply, usize, usize)>,
    bytes: usize,
}

/// A block whose write has been issued.
struct InFlight {
    write: Write,
    /// One per record, for its caller once the block is durable.
    receipts: Vec<Receipt>,
    callers: Vec<(Reply, usize, usize)>,
}

/// A batch's hashes, stream filter and receipts.
struct HashedBatch {
    receipts: Vec<Receipt>,
    subtrees: Vec<(u32, Hash)>,
    filter: BatchFilter,
}

type HashJob = (Arc<Vec<Record>>, Hash, oneshot::Sender<HashedBatch>);

/// The threads that hash the writer's batches: its own rayon pool rather
/// than rayon's global one, so that appends never queue behind an
/// application's rayon work or a `verify` in the same process, and one
/// plain thread for batches below `PARALLEL_HASHING`. A rayon worker spins
/// (`sched_yield`) for a while after each job; under group commit, a job
/// every few hundred microseconds, it spun most of the time, on CPU that the
/// application's own threads need (an 8-second group-commit bench run:
/// 757,141 to 881,554 involuntary context switches; 7,120 to 17,960 with
/// the plain thread, which sleeps on its channel). The bench's events/s did
/// not move beyond the disk's noise either way.
pub struct Hashers {
    pool: rayon::ThreadPool,
    small: std::sync::mpsc::Sender<HashJob>,
}

impl Hashers {
    pub fn start(ledger: &str) -> std::io::Result<Hashers> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
            .thread_name({
                let name = ledger.to_owned();
                move |i| format!("bi-ledger-hash-{name}-{i}")
            })
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (small, jobs) = std::sync::mpsc::channel::<HashJob>();
        // Ends when the writer, holding the sender, is dropped.
        std::thread::Builder::new()
            .name(format!("bi-ledger-hash-{ledger}"))
            .spawn(move || {
                while let Ok((records, head, tx)) = jobs.recv() {
                    hash_batch(records, head, tx);
                }
            })?;
        Ok(Hashers { pool, small })
    }

    /// Hashes `records` (see `hash_batch`) and sends the result to `tx`.
    fn hash(&self, records: Arc<Vec<Record>>, head: Hash, tx: oneshot::Sender<HashedBatch>) {
        if records.len() >= PARALLEL_HASHING {
            self.pool.spawn(move || hash_batch(records, head, tx));
        } else if let Err(std::sync::mpsc::SendError((records, head, tx))) =
            self.small.send((records, head, tx))
        {
            // The thread is gone only if a job panicked; the pool stands in.
            self.pool.spawn(move || hash_batch(records, head, tx));
        }
    }
}

/// Hashes a batch whose first record follows chain head `head`, and makes
/// its receipts. Batches are written one at a time, so the head is final
/// when the job starts, and the chain's serial half runs here too, beside
/// the block's write, rather than on the writer after it. The job starts
/// before the writer encodes the block, sharing the records with it; the
/// batch's position (known after encoding, which may roll the segment
/// over) is filled in by the writer. The records are freed here as well,
/// after the answer is sent: freeing thousands of small buffers on the
/// writer once the block lands would hold up the next batch.
fn hash_batch(records: Arc<Vec<Record>>, head: Hash, tx: oneshot::Sender<HashedBatch>) {
    let parallel = records.len() >= PARALLEL_HASHING;
    let leaf_and_mid = |r: &Record| {
        let leaf = r.leaf_hash();
        (leaf, chain::midstate(&leaf))
    };
    let (leaves, mids): (Vec<_>, Vec<_>) = if parallel {
        records.par_iter().map(leaf_and_mid).unzip()
    } else {
        records.iter().map(leaf_and_mid).unzip()
    };
    let first = records[0].seq;
    // The chain is serial; the stream filter and the Merkle subtrees are
    // not, and go beside it, each on its own: one after the other, they
    // took a batch of 1,000 records about 240 µs (90 the filter, 150 the
    // subtrees), long after its chain was done.
    let link = || {
        let mut prev = head;
        mids.into_iter()
            .map(|m| {
                prev = m.link(&prev);
                prev
            })
            .collect::<Vec<_>>()
    };
    let filter = || {
        BatchFilter::build(
            (0, 0),
            first,
            records.len() as u64,
            records.iter().map(|r| r.stream.as_str()),
        )
    };
    let subtrees = || merkle::range_subtrees_capped(first, &leaves, nodes::MIN_HEIGHT);
    let (hashes, (filter, subtrees)) = if parallel {
        rayon::join(link, || rayon::join(filter, subtrees))
    } else {
        (link(), (filter(), subtrees()))
    };
    // The writer let go of the records once it encoded them, long before
    // this; should it not have, the stream ids are copied.
    let mut owned = Arc::try_unwrap(records);
    let receipts = hashes
        .into_iter()
        .enumerate()
        .map(|(i, hash)| {
            let (r, stream) = match &mut owned {
                Ok(v) => {
                    let stream = std::mem::take(&mut v[i].stream);
                    (&v[i], stream)
                }
                Err(shared) => (&shared[i], shared[i].stream.clone()),
            };
            Receipt {
                seq: r.seq,
                hash,
                stream,
                version: r.stream_version,
                timestamp_us: r.timestamp_us,
                segment: 0,
                offset: 0,
            }
        })
        .collect();
    let _ = tx.send(HashedBatch {
        subtrees,
        receipts,
        filter,
    });
    drop(owned);
}

/// A block's append, driven by the writer task itself rather than spawned:
/// a spawned task would wait for the writer to yield, and the fs store's
/// append completes in place on its first poll.
struct Write {
    append: Pin<Box<dyn Future<Output = Result<u64, StoreError>> + Send>>,
    done: Option<Result<u64, StoreError>>,
}

impl Write {
    /// Polls the append once, so the store has the block before the writer
    /// goes on (the fs store on the writer's thread writes it right there).
    async fn start(
        mut append: Pin<Box<dyn Future<Output = Result<u64, StoreError>> + Send>>,
    ) -> Write {
        let done = std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
        Write {
            append,
            done: match done {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            },
        }
    }

    async fn wait(&mut self) -> Result<u64, StoreError> {
        match self.done.take() {
            Some(r) => r,
            None => self.append.as_mut().await,
        }
    }

    /// Waits for `other` while driving the append, which an Azure request
    /// needs (connecting, sending the body) to make progress meanwhile.
    async fn alongside<T>(&mut self, other: impl Future<Output = T>) -> T {
        tokio::pin!(other);
        loop {
            tokio::select! {
                biased;
                out = &mut other => return out,
                r = self.append.as_mut(), if self.done.is_none() => self.done = Some(r),
            }
        }
    }
}

impl Writer {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut next = Next::default();
        let mut in_flight: Option<InFlight> = None;
        // A checkpoint or close waits until everything before it is durable;
        // meanwhile nothing new is admitted.
        let mut barrier: Option<Command> = None;
        let mut stash: Option<Command> = None;
        let mut open = true;
        // Callers active in the last round, and how long to wait for them.
        // Without this, callers split into two halves that alternate between
        // the block in flight and the next, and every fsync carries half of
        // them: after a block lands, its callers are answered and resubmit
        // within microseconds, so the next block briefly waits for them
        // (never longer than HOLD) and one fsync again serves everyone.
        let mut expect = 0usize;
        let mut hold_until: Option<tokio::time::Instant> = None;
        loop {
            // Take every append already waiting: a store that writes on this
            // task's thread (the fs store on a dedicated writer thread) lets
            // nothing be admitted while it writes. Not while a checkpoint is
            // due: it waits for everything admitted to be durable, so under
            // a steady load admitting more would put it off for good.
            while open
                && stash.is_none()
                && barrier.is_none()
                && self.checkpoint_due_in() != Some(Duration::ZERO)
            {
                match rx.try_recv() {
                    Ok(cmd) => self.admit(cmd, &mut next, &mut stash, &mut barrier),
                    Err(_) => break,
                }
            }
            if in_flight.is_none() && !next.records.is_empty() {
                let hold = open
                    && stash.is_none()
                    && barrier.is_none()
                    && next.callers.len() < expect
                    && next.bytes < self.opts.max_batch_bytes / 2
                    && hold_until.is_some_and(|t| tokio::time::Instant::now() < t);
                if !hold {
                    hold_until = None;
                    in_flight = self.start_write(std::mem::take(&mut next)).await;
                }
            }
            let idle = in_flight.is_none() && next.records.is_empty();
            if idle {
                if let Some(cmd) = barrier.take() {
                    match cmd {
                        Command::Checkpoint { reply } => {
                            let _ = reply.send(self.checkpoint().await);
                        }
                        Command::Close { reply } => {
                            let result = self.checkpoint().await;
                            self.trim().await;
                            // Release the writer lock before answering, so
                            // that a caller (or another process) may reopen
                            // once close() returns.
                            let Writer { lock, .. } = self;
                            lock.release().await;
                            let _ = reply.send(result);
                            return;
                        }
                        Command::Append { .. } => unreachable!("appends are never barriers"),
                    }
                    continue;
                }
                if !open {
                    // Every handle dropped without close(): stop as a crash
                    // would, with the log durable and no final checkpoint,
                    // but let go of the lock here, on this runtime: a
                    // release left to the lock's drop (an Azure lease's
                    // Release call) would die with the runtime, and the
                    // lease would hold the ledger until it expired.
                    let Writer { lock, .. } = self;
                    lock.release().await;
                    return;
                }
                if self.checkpoint_due_in() == Some(Duration::ZERO) {
                    self.timed_checkpoint().await;
                    continue;
                }
            }
            // An append that did not fit the previous batch starts the next.
            if next.records.is_empty() {
                if let Some(cmd) = stash.take() {
                    self.admit(cmd, &mut next, &mut stash, &mut barrier);
                    continue;
                }
            }
            let due = if idle { self.checkpoint_due_in() } else { None };
            let admitting = open
                && stash.is_none()
                && barrier.is_none()
                && self.checkpoint_due_in() != Some(Duration::ZERO);
            tokio::select! {
                biased;
                // Wrapped: select! builds the futures of disabled branches too.
                result = async { in_flight.as_mut().unwrap().write.wait().await }, if in_flight.is_some() => {
                    let f = in_flight.take().unwrap();
                    expect = f.callers.len() + next.callers.len();
                    hold_until = Some(tokio::time::Instant::now() + HOLD);
                    self.finish(f, result, &mut next);
                }
                cmd = rx.recv(), if admitting => match cmd {
                    Some(cmd) => self.admit(cmd, &mut next, &mut stash, &mut barrier),
                    None => open = false,
                },
                _ = tokio::time::sleep(due.unwrap_or(Duration::from_secs(3600))), if due.is_some() => {
                    self.timed_checkpoint().await;
                }
                // Tokio's timers tick in whole milliseconds, three times
                // the hold: yield instead, so the callers run, and look at
                // the clock again at the top of the loop.
                _ = tokio::task::yield_now(),
                    if in_flight.is_none() && !next.records.is_empty() && hold_until.is_some() => {}
            }
        }
    }

    /// How long until a checkpoint is due, if records are uncheckpointed.
    fn checkpoint_due_in(&self) -> Option<Duration> {
        let covered = self
            .last_checkpoint
            .as_ref()
            .map_or(0, |c| c.checkpoint.size);
        if self.tip.size == covered || self.poisoned.is_some() {
            return None;
        }
        let due = if self
            .opts
            .checkpoint_every_events
            .is_some_and(|n| self.tip.size - covered >= n)
        {
            Some(Duration::ZERO)
        } else {
            self.opts
                .checkpoint_interval
                .map(|i| i.saturating_sub(self.last_checkpoint_at.elapsed()))
        };
        match self.checkpoint_retry {
            Some((at, _)) => due.map(|d| d.max(at.saturating_duration_since(Instant::now()))),
            None => due,
        }
    }

    async fn timed_checkpoint(&mut self) {
        if let Err(e) = self.checkpoint().await {
            let pause = self
                .checkpoint_retry
                .map_or(FIRST_CHECKPOINT_RETRY, |(_, p)| {
                    (p * 2).min(MAX_CHECKPOINT_RETRY)
                });
            self.checkpoint_retry = Some((Instant::now() + pause, pause));
            error!(
                error = %e,
                retry_in_s = pause.as_secs(),
                "periodic checkpoint failed; appends go on, unsigned until one lands"
            );
        }
    }

    /// Takes one command: an append joins the next batch (or waits in
    /// `stash` if the batch is full); a checkpoint or close becomes the
    /// barrier.
    fn admit(
        &mut self,
        cmd: Command,
        next: &mut Next,
        stash: &mut Option<Command>,
        barrier: &mut Option<Command>,
    ) {
        let (events, bytes, reply) = match cmd {
            Command::Append {
                events,
                bytes,
                reply,
            } => (events, bytes, reply),
            other => {
                *barrier = Some(other);
                return;
            }
        };
        if let Some(p) = &self.poisoned {
            let _ = reply.send(Err(LedgerError::Poisoned(p.clone())));
            return;
        }
        if !next.records.is_empty() && next.bytes + bytes > self.opts.max_batch_bytes {
            *stash = Some(Command::Append {
                events,
                bytes,
                reply,
            });
            return;
        }
        // Advance each stream's version in the head as its event is
        // checked (one map lookup per event), and undo those steps on a
        // conflict: a conflict writes nothing of the call, and leaves the
        // head as it was.
        let mut versions: Vec<(u64, Undo)> = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            // A stream at version u64::MAX (only a forged snapshot can say
            // so) has no next version: refused like a conflict.
            let step = self.tip.streams.advance(&e.stream, |current| {
                let next = current.map_or(Some(0), |c| c.checked_add(1));
                next.filter(|_| e.expected_version.admits(current))
            });
            match step {
                Ok(step) => versions.push(step),
                Err(current) => {
                    for (e, (_, undo)) in events.iter().zip(&versions).rev() {
                        self.tip.streams.restore(&e.stream, *undo);
                    }
                    let earlier = events[..i].iter().filter(|x| x.stream == e.stream).count();
                    let _ = reply.send(Err(LedgerError::VersionConflict {
                        index: i,
                        stream: e.stream.clone(),
                        expected: e.expected_version,
                        // As the ledger has it, not as the call's earlier
                        // events, undone above, advanced it.
                        current: if earlier == 0 {
                            current
                        } else {
                            self.tip.streams.get(&e.stream)
                        },
                        earlier,
                    }));
                    return;
                }
            }
        }
        self.tip.streams.fold_if_large();
        let ts = crate::time::now_us().max(self.tip.last_ts);
        let start = next.records.len();
        next.records.reserve(events.len());
        for (e, (v, _)) in events.into_iter().zip(versions) {
            next.records.push(e.into_record(self.tip.size, ts, v));
            self.tip.size += 1;
        }
        self.tip.last_ts = ts;
        next.bytes += bytes;
        next.callers.push((reply, start, next.records.len()));
    }

    /// Encodes the batch, issues its write, and hashes it while the write
    /// runs. Returns `None` (having answered every caller) if the writer is
    /// or becomes poisoned.
    async fn start_write(&mut self, next: Next) -> Option<InFlight> {
        if let Some(p) = self.poisoned.clone() {
            Self::fail(next.callers, &p);
            return None;
        }
        if let Err(LedgerError::Poisoned(why)) = self.check_lock() {
            Self::fail(next.callers, &why);
            return None;
        }
        // Hash and index on the hashing threads while the block is encoded
        // and on its way to the disk: the block's bytes do not depend on the
        // hashes. The fs store may write on this very thread (see
        // `backend::fs`), so the hashing cannot wait for it here.
        let (tx, rx) = oneshot::channel();
        let records = Arc::new(next.records);
        let (shared, head) = (records.clone(), self.tip.chain_head);
        self.hashers.hash(shared, head, tx);
        let mut enc = BatchEncoder::new(records[0].seq, records[0].timestamp_us);
        for r in records.iter() {
            enc.push(r);
        }
        let first = records[0].seq;
        drop(records);
        let block = enc.finish();
        if let Err(e) = self.make_room(block.len(), first).await {
            self.poison(&e);
            Self::fail(next.callers, self.poisoned.as_deref().unwrap_or_default());
            return None;
        }
        let segment = self.tip.segment_index;
        let offset = self.tip.segment_len;
        let name = layout::segment(&self.meta.name, segment);
        let store = self.store.clone();
        let len = block.len() as u64;
        let mut write = Write::start(Box::pin(async move {
            store.append(&name, offset, &block).await
        }))
        .await;
        self.tip.segment_len += len;
        self.tip.segment_blocks += 1;

        let mut h = write.alongside(rx).await.expect("the hashing job answers");
        h.filter.position = (segment, offset);
        for r in &mut h.receipts {
            (r.segment, r.offset) = (segment, offset);
        }
        self.tip.push_filter(h.filter);
        self.tip.chain_head = h.receipts.last().expect("a batch holds records").hash;
        for (height, hash) in h.subtrees {
            self.tip
                .append_subtree(height, hash)
                .expect("a batch's subtrees follow the frontier");
        }
        Some(InFlight {
            write,
            receipts: h.receipts,
            callers: next.callers,
        })
    }

    /// Answers the callers of a finished write.
    fn finish(&mut self, f: InFlight, result: Result<u64, StoreError>, next: &mut Next) {
        match result {
            Ok(_) if f.callers.len() == 1 => {
                let (reply, _, _) = f.callers.into_iter().next().unwrap();
                let _ = reply.send(Ok(f.receipts));
            }
            Ok(_) => {
                let mut receipts = f.receipts.into_iter();
                for (reply, start, end) in f.callers {
                    let _ = reply.send(Ok(receipts.by_ref().take(end - start).collect()));
                }
            }
            Err(e) => {
                self.poison(&e);
                let why = self.poisoned.clone().unwrap_or_default();
                if e.refused_append() {
                    Self::fail(f.callers, &why);
                } else {
                    // It may have landed all the same.
                    let cause = e.to_string();
                    for (reply, start, end) in f.callers {
                        let _ = reply.send(Err(LedgerError::OutcomeUnknown {
                            first_seq: f.receipts[start].seq,
                            last_seq: f.receipts[end - 1].seq,
                            cause: cause.clone(),
                        }));
                    }
                }
                // The next batch was admitted on the assumption that this one
                // lands; it cannot be written now.
                Self::fail(std::mem::take(&mut next.callers), &why);
                next.records.clear();
            }
        }
    }

    fn poison(&mut self, e: &StoreError) {
        // Every caller from now on gets this error too; the target lets a
        // program that reports those itself (the CLI) leave the log out.
        error!(target: WRITER_STOPPED, error = %e, "append failed; the writer stops");
        self.poisoned = Some(format!("append failed: {e}"));
    }

    fn fail(callers: Vec<(Reply, usize, usize)>, why: &str) {
        for (reply, _, _) in callers {
            let _ = reply.send(Err(LedgerError::Poisoned(why.to_owned())));
        }
    }

    /// Cuts the unwritten space off the last segment, on a clean close, so
    /// that a closed ledger's files hold what was written and nothing
    /// else. Unwritten space is allowed at rest (a crash leaves it), so a
    /// failure only says so.
    async fn trim(&mut self) {
        if self.poisoned.is_some() || self.tip.segment_len == 0 {
            return;
        }
        let name = layout::segment(&self.meta.name, self.tip.segment_index);
        if let Err(e) = self.store.trim(&name, self.tip.segment_len).await {
            tracing::warn!(segment = %name, error = %e, "could not cut the unwritten space off the last segment");
        }
    }

    /// Rolls over to a new segment first if this block would not fit.
    async fn make_room(&mut self, block_len: usize, first_seq: u64) -> Result<(), StoreError> {
        // A segment takes its header and at least one batch.
        let max_blocks = self
            .opts
            .segment_max_blocks
            .min(self.store.max_blocks())
            .max(2);
        let full_blocks = self.tip.segment_blocks + 1 > max_blocks;
        let full_bytes = self.tip.segment_len + block_len as u64 > self.opts.segment_max_bytes
            && self.tip.segment_blocks > 1;
        if full_blocks || full_bytes {
            self.roll_over(first_seq).await?;
        }
        Ok(())
    }

    /// Starts the next segment. Order matters for recovery: the new blob,
    /// then sealing the old one, then the new one's header; a crash between
    /// any two leaves an empty last segment, which `recover` completes.
    /// `first_seq` is the first record of the block about to be written
    /// (the tip's size already counts records admitted after it).
    ///
    /// The seal comes before the header, and holds only if the old segment
    /// is still the length this writer left it (`seal_at`): a writer that
    /// lost its lock (an Azure lease broken, or expired, and taken) while a
    /// new one appended to that segment is refused there, before it has
    /// written a header that starts the next segment where the old one no
    /// longer ends.
    async fn roll_over(&mut self, first_seq: u64) -> Result<(), StoreError> {
        let old = layout::segment(&self.meta.name, self.tip.segment_index);
        let index = self.tip.segment_index + 1;
        let name = layout::segment(&self.meta.name, index);
        let header = SegmentHeader {
            ledger_id: self.meta.id,
            index,
            first_seq,
            prev_chain: self.tip.chain_head,
        };
        // Asked first, so that a writer that lost its lock does not even
        // leave an empty next segment in the new holder's way.
        self.lock.confirm().await?;
        // The zeros an fs store wrote ahead of the appends go before the
        // next segment exists: unwritten space may end only the last
        // segment (ledger-format.md §12.2), and a crash after `create`
        // makes the new one last.
        self.store.trim(&old, self.tip.segment_len).await?;
        match self.store.create(&name).await {
            Ok(()) => {}
            // Left empty by a writer that lost its lock and was stopped at
            // the seal below (or by a crash right after `create`, which
            // `open` completes before any writer gets here): it holds
            // nothing, and the seal and the header, both conditional,
            // decide whether this writer may go on in it.
            Err(StoreError::AlreadyExists { .. })
                if self
                    .store
                    .info(&name)
                    .await
                    .is_ok_and(|i| i.size == 0 && !i.sealed) =>
            {
                info!(segment = %name, "rolling over into an empty segment another writer created");
            }
            Err(e) => return Err(e),
        }
        self.store.seal_at(&old, self.tip.segment_len).await?;
        self.store.append(&name, 0, &header.encode()).await?;
        debug!(segment = %name, first_seq, "rolled over to a new segment");
        self.tip.segment_index = index;
        self.tip.segment_len = HEADER_LEN as u64;
        self.tip.segment_blocks = 1;
        Ok(())
    }

    /// Signs and stores a checkpoint of the current head, with the snapshot
    /// that lets the next open skip everything it covers.
    pub async fn checkpoint(&mut self) -> Result<CheckpointInfo> {
        if let Some(p) = &self.poisoned {
            return Err(LedgerError::Poisoned(p.clone()));
        }
        self.confirm_lock().await?;
        self.settle_unanswered().await?;
        if let Some(last) = &self.last_checkpoint {
            if last.checkpoint.size == self.tip.size {
                return Ok(last.clone());
            }
        }
        // Encoded first: the checkpoint signs the digest that closes it. In
        // parts, so that the stream table (76 MB at four million streams)
        // is written from where it lies, not copied; dropped by the end of
        // this call, so that nothing else holds the table at its next fold,
        // which then rewrites it in place.
        let snapshot = self.tip.snapshot();
        let (snap_head, snap_entries, snap_digest) = snapshot.encoded_parts();
        let cp = Checkpoint {
            origin: self.meta.origin(),
            size: self.tip.size,
            root: self.tip.frontier.root(),
            chain_head: self.tip.chain_head,
            time_us: crate::time::now_us(),
            snapshot: Some(snap_digest),
        };
        let note = cp.sign(&Meta::key_name(&self.meta.name), &self.key);
        debug_assert_eq!(
            self.tip.index.to, self.tip.size,
            "a checkpoint waits for every admitted record"
        );
        // The stream index, node cache and snapshot go first: a checkpoint
        // must never exist without them (caches the reader relies on).
        let indexed = self.tip.index.to > self.tip.index.from;
        let blob = layout::stream_index(&self.meta.name, cp.size);
        match indexed {
            true => self.put_cache(&blob, &[&self.tip.index.encode()]).await?,
            false => self.drop_orphan(&blob).await?,
        }
        self.check_lock()?;
        let blob = layout::nodes(&self.meta.name, cp.size);
        match self.tip.nodes.is_empty() {
            false => {
                self.put_cache(&blob, &[&self.tip.node_cache().encode()])
                    .await?
            }
            true => self.drop_orphan(&blob).await?,
        }
        self.check_lock()?;
        let snap_blob = layout::snapshot(&self.meta.name, cp.size);
        // Known before the put: one that lands although its answer is lost
        // must still be pruned (a size whose snapshot is not there is
        // simply not found when pruned).
        self.snapshots.insert(cp.size);
        self.put_cache(&snap_blob, &[&snap_head, snap_entries, &snap_digest])
            .await?;
        drop(snapshot);
        // The checkpoint itself, once the service says the lease is still
        // ours (not only the last renewal): a writer whose lease was broken
        // or taken since would put it beside the new holder's log, whose
        // next caches start at the checkpoint that holder found.
        self.confirm_lock().await?;
        let blob = layout::checkpoint(&self.meta.name, cp.size);
        let (cp, note) = match self.store.put(&blob, note.as_bytes()).await {
            Ok(()) => (cp, note),
            Err(StoreError::AlreadyExists { .. }) => {
                self.adopt_checkpoint(&blob, cp, &note).await?
            }
            Err(e) => {
                self.unanswered = Some((cp, blob, note));
                return Err(e.into());
            }
        };
        info!(size = cp.size, checkpoint = %blob, "wrote checkpoint");
        self.prune_snapshots(cp.size).await;
        let info = CheckpointInfo {
            blob,
            checkpoint: cp,
            note,
        };
        self.last_checkpoint = Some(info.clone());
        self.last_checkpoint_at = Instant::now();
        self.checkpoint_retry = None;
        self.tip.take_caches();
        // After the checkpoint: a merged index covers only checkpointed
        // records, and is never an orphan.
        if self.check_lock().is_ok() {
            super::merge::after_checkpoint(
                self.store.as_ref(),
                &self.meta,
                self.lock.as_ref(),
                &mut self.merge_run,
                info.checkpoint.size,
                indexed,
                (self.opts.merge_index_records, self.opts.merge_index_count),
            )
            .await;
        }
        Ok(info)
    }

    /// A writer whose lock is gone (on Azure, a lease that expired or was
    /// broken) must write nothing more: another writer may hold the ledger
    /// now, and `put_cache` replaces a cache of the checkpoint's size on
    /// the belief that no checkpoint refers to it. Appends check in
    /// `start_write`; a checkpoint checks before each put. The only error
    /// is `Poisoned`.
    fn check_lock(&mut self) -> Result<()> {
        if let Err(e) = self.lock.check() {
            let why = format!("writer lock lost: {e}");
            self.poisoned = Some(why.clone());
            return Err(LedgerError::Poisoned(why));
        }
        Ok(())
    }

    /// [`Self::check_lock`], then asks the lock's holder whether it is
    /// still held now (on Azure, renews the lease): before the writes that
    /// nothing but the lock keeps from racing another writer's. A lock
    /// refused poisons the writer, as `check_lock` does; one that could not
    /// be asked fails this call only.
    async fn confirm_lock(&mut self) -> Result<()> {
        self.check_lock()?;
        if let Err(e) = self.lock.confirm().await {
            self.check_lock()?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Makes sure the checkpoint whose put failed is stored, and counts it
    /// as the newest: its stream index and node cache were put before it,
    /// so the ones beside the next checkpoint start there, as `verify`
    /// expects. If it is there (and it is ours: `adopt_checkpoint`), it
    /// landed after all. If it is not, it is put again rather than left
    /// out: an attempt of the failed put may still be on its way (every
    /// attempt timed out), and landing after the next checkpoint's caches
    /// were put from the checkpoint before it, it would leave them covering
    /// records it covers too, which `verify` reports as damage. Put again,
    /// it is there for certain, and such a late attempt is refused (the
    /// put's `If-None-Match: *`). If the store cannot tell or take it, the
    /// next checkpoint waits until it can.
    async fn settle_unanswered(&mut self) -> Result<()> {
        let Some((ours, blob, note)) = self.unanswered.take() else {
            return Ok(());
        };
        let stored = match self.store.info(&blob).await {
            Ok(_) => self.adopt_checkpoint(&blob, ours, &note).await?,
            Err(StoreError::NotFound { .. }) => {
                match self.store.put(&blob, note.as_bytes()).await {
                    Ok(()) => {
                        info!(size = ours.size, checkpoint = %blob, "wrote a checkpoint whose earlier put failed");
                        (ours, note)
                    }
                    Err(StoreError::AlreadyExists { .. }) => {
                        self.adopt_checkpoint(&blob, ours, &note).await?
                    }
                    Err(e) => {
                        self.unanswered = Some((ours, blob, note));
                        return Err(e.into());
                    }
                }
            }
            Err(e) => {
                self.unanswered = Some((ours, blob, note));
                return Err(e.into());
            }
        };
        let (checkpoint, note) = stored;
        self.tip.rebase_caches(checkpoint.size);
        // Found again from the store at the next checkpoint: the run
        // counted this checkpoint as unwritten.
        self.merge_run = None;
        self.last_checkpoint = Some(CheckpointInfo {
            blob,
            checkpoint,
            note,
        });
        Ok(())
    }

    /// A checkpoint of this size is already stored. Its bytes differ from
    /// ours only by their time if an earlier put of ours landed but its
    /// answer was lost (a timeout, a dropped connection): then it stands,
    /// and the writer goes on from it rather than failing every checkpoint
    /// at this size. Any other checkpoint here is not ours to replace.
    ///
    /// One not adopted (unreadable now, or not ours) stays unsettled: the
    /// next checkpoint must settle it before it starts its caches.
    async fn adopt_checkpoint(
        &mut self,
        blob: &str,
        ours: Checkpoint,
        note: &str,
    ) -> Result<(Checkpoint, String)> {
        let adopted = self.read_and_match_checkpoint(blob, &ours).await;
        if adopted.is_err() {
            self.unanswered = Some((ours, blob.to_owned(), note.to_owned()));
        }
        adopted
    }

    async fn read_and_match_checkpoint(
        &self,
        blob: &str,
        ours: &Checkpoint,
    ) -> Result<(Checkpoint, String)> {
        let (stored, note) =
            super::recover::read_checkpoint_note(self.store.as_ref(), &self.meta, blob).await?;
        if (stored.size, stored.root, stored.chain_head) != (ours.size, ours.root, ours.chain_head)
        {
            return Err(crate::error::IntegrityError::new(
                blob,
                0,
                Some(ours.size),
                format!(
                    "a checkpoint of this size is already stored, and it differs from the log (its root {} size {}, the log's {} size {})",
                    crate::format::hex(&stored.root),
                    stored.size,
                    crate::format::hex(&ours.root),
                    ours.size
                ),
            )
            .into());
        }
        info!(size = ours.size, checkpoint = %blob, "checkpoint was already written (an earlier put's answer was lost); keeping it");
        Ok((stored, note))
    }

    /// Deletes a cache of the size of a checkpoint about to be written that
    /// has none of this kind: one there is an orphan (a crash before its
    /// checkpoint, after a different history since the checkpoint before,
    /// say one taken in between), and `verify` would hold the checkpoint to
    /// it.
    async fn drop_orphan(&self, blob: &str) -> Result<()> {
        match self.store.delete(blob).await {
            Ok(()) => {
                tracing::warn!(cache = %blob, "deleted a cache that no checkpoint has, of the size of the checkpoint being written, which has none");
                Ok(())
            }
            Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts a cache blob (snapshot, stream index, node cache) of a checkpoint about to
    /// be written. A crash between it and its checkpoint leaves an orphan of
    /// this name. No checkpoint refers to it (or this one would not be
    /// written), so it is replaced; usually its bytes are the same, but a
    /// recovered rollover since moves the position.
    async fn put_cache(&self, blob: &str, parts: &[&[u8]]) -> Result<()> {
        match self.store.put_parts(blob, parts).await {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists { .. }) => {
                let stored = self.store.read_all(blob).await?;
                let same = stored.len() == parts.iter().map(|p| p.len()).sum::<usize>()
                    && parts
                        .iter()
                        .scan(0, |at, p| {
                            *at += p.len();
                            Some(&stored[*at - p.len()..*at] == *p)
                        })
                        .all(|same| same);
                if !same {
                    self.store.delete(blob).await?;
                    self.store.put_parts(blob, parts).await?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Writer {
    /// Snapshots are a cache, not evidence: keep those of the newest two
    /// checkpoints (the newest for `open`, the one before in case it is
    /// being read by someone) and drop the rest, or a ledger checkpointed
    /// every few minutes for ten years would hoard copies of its stream
    /// index. Called before `last_checkpoint` moves on to `newest`. A
    /// snapshot whose checkpoint never landed (a crash between the two
    /// puts) goes too: counted as one of the two, it would displace the
    /// previous checkpoint's.
    async fn prune_snapshots(&mut self, newest: u64) {
        let previous = self.last_checkpoint.as_ref().map(|c| c.checkpoint.size);
        let old: Vec<u64> = self
            .snapshots
            .range(..newest)
            .filter(|&&size| Some(size) != previous)
            .copied()
            .collect();
        for size in old {
            let name = layout::snapshot(&self.meta.name, size);
            match self.store.delete(&name).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {
                    self.snapshots.remove(&size);
                }
                Err(e) => {
                    tracing::warn!(error = %e, snapshot = %name, "could not delete an old snapshot");
                }
            }
        }
    }
}
