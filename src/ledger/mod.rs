//! The ledger: `Ledger` is the single writer, `LedgerReader` reads, verifies
//! and proves. The append path is `Ledger::append` → `writer::Writer::run`
//! (`admit`, then `start_write`) → `BlobStore::append`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use crate::backend::BlobStore;
use crate::error::{IntegrityError, LedgerError, Result};
use crate::format::batch::{BODY_HEADER_LEN, FRAME_HEADER_LEN};
use crate::format::checkpoint::{Checkpoint, Verifier};
use crate::format::segment::SegmentHeader;
use crate::model::{NewEvent, Receipt};

/// The bytes of a batch besides its records: an `append` call fits in one
/// batch if this plus its events' [`NewEvent::stored_len_bound`]s is at
/// most [`Ledger::max_batch_bytes`].
pub const BATCH_OVERHEAD: usize = FRAME_HEADER_LEN + BODY_HEADER_LEN;

pub mod layout;
mod log_roots;
pub mod merge;
mod node_cache;
pub mod proof;
pub mod reader;
pub mod recover;
mod running;
pub mod scan;
mod signed;
mod streams;
pub mod tip;
pub mod trusted;
pub mod verify;
pub mod versions;
mod writer;
pub use writer::WRITER_STOPPED;

pub use reader::LedgerReader;

#[derive(Clone, Debug)]
pub struct LedgerOptions {
    pub signing_key: SigningKey,
    /// Largest batch (= block) the writer builds. One `append` call must fit
    /// in one batch, so that it is all-or-nothing even across a crash.
    pub max_batch_bytes: usize,
    /// Segment rollover: whichever comes first.
    pub segment_max_bytes: u64,
    pub segment_max_blocks: u64,
    /// Checkpoint after this many new records...
    pub checkpoint_every_events: Option<u64>,
    /// ...or this long after the last checkpoint, whichever comes first.
    pub checkpoint_interval: Option<Duration>,
    /// Merge the stream indexes of this many checkpoints into one blob
    /// (format §11.3.1)...
    pub merge_index_count: usize,
    /// ...or of as many as cover this many records, whichever comes first.
    pub merge_index_records: u64,
}

/// A segment holds its header and at least one batch: a store that takes
/// fewer blocks per blob cannot hold a ledger.
fn usable_block_count(store: &dyn BlobStore) -> Result<()> {
    match store.max_blocks() {
        0 | 1 => Err(LedgerError::InvalidArgument(format!(
            "the store takes at most {} blocks per blob, but a segment needs 2 (its header and a batch)",
            store.max_blocks()
        ))),
        _ => Ok(()),
    }
}

impl LedgerOptions {
    /// The most bytes one `append` call may take on `store` with these
    /// options, for the ledger of identity `meta`: what
    /// [`Ledger::max_batch_bytes`] gives once opened. Never more than the
    /// block size the ledger recorded when it was created (format §5.1).
    pub fn batch_limit(&self, store: &dyn BlobStore, meta: &layout::Meta) -> usize {
        self.max_batch_bytes
            .min(store.max_block_size())
            .min(meta.max_block)
    }

    /// The smallest `max_batch_bytes` that takes an event at all: one with
    /// one-byte names and an empty payload, alone in its batch.
    pub fn min_batch_bytes() -> usize {
        BATCH_OVERHEAD
            + crate::format::record::stored_len_bound_parts(1, 1, 1, std::iter::empty(), 0)
    }

    /// Refuses options no ledger could work with, before anything is
    /// opened or written. The other limits take any value: a segment cap
    /// below one batch still holds one, and merges take at least two
    /// indexes whatever `merge_index_count` says.
    pub fn validate(&self) -> Result<()> {
        let min = Self::min_batch_bytes();
        if self.max_batch_bytes < min {
            return Err(LedgerError::InvalidOption {
                field: "max_batch_bytes",
                reason: format!(
                    "is {}, below {min}: the smallest batch one event can make",
                    self.max_batch_bytes
                ),
            });
        }
        Ok(())
    }

    pub fn new(signing_key: SigningKey) -> Self {
        LedgerOptions {
            signing_key,
            max_batch_bytes: crate::backend::DEFAULT_MAX_BLOCK,
            segment_max_bytes: 1 << 30,
            segment_max_blocks: crate::backend::AZURE_MAX_BLOCKS,
            checkpoint_every_events: Some(250_000),
            checkpoint_interval: Some(Duration::from_secs(300)),
            merge_index_count: 256,
            merge_index_records: 262_144,
        }
    }
}

/// A signed checkpoint as stored.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub blob: String,
    pub checkpoint: Checkpoint,
    /// The signed note text.
    pub note: String,
}

/// The writer handle. Cheap to clone; all clones feed one writer task.
/// Call [`Ledger::close`] to write the final checkpoint; dropping every
/// handle stops the writer like a crash would (all acknowledged events are
/// durable, the next open reads the tail after the last checkpoint).
///
/// The writer lock is released when the writer thread stops, which after a
/// drop happens a moment later, in the background (the block in flight is
/// finished first). An `open` of the same ledger in the same process, on a
/// store of the same `location()`, waits for that (up to 10 s for the
/// writer to stop) rather than being refused with `Locked`; another process
/// may be refused in that moment. `close` returns only once the
/// lock is released, also when it fails.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<writer::Command>,
    store: Arc<dyn BlobStore>,
    meta: layout::Meta,
    max_batch: usize,
    /// Tells an `open` in this process whether this writer is still in use.
    _handles: Arc<running::Handles>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("name", &self.meta.name)
            .finish()
    }
}

/// Longest an `open` waits for a writer of this process whose handles were
/// all dropped to stop.
const STOPPING_WRITER_WAIT: Duration = Duration::from_secs(10);

/// The writer lock; if a writer of this process whose handles are gone
/// still holds it, once that writer has stopped.
async fn take_lock(
    store: &dyn BlobStore,
    name: &str,
) -> Result<Box<dyn crate::backend::WriterLock>> {
    use crate::backend::{LockExpiry, StoreError};
    match store.lock(&layout::lock(name)).await {
        Err(StoreError::Locked { what, .. }) if running::in_use_here(&store.location(), name) => {
            Err(StoreError::Locked {
                what,
                expiry: LockExpiry::ThisProcess,
            }
            .into())
        }
        Err(StoreError::Locked { .. })
            if running::wait_if_stopping(&store.location(), name, STOPPING_WRITER_WAIT).await =>
        {
            Ok(store.lock(&layout::lock(name)).await?)
        }
        r => Ok(r?),
    }
}

impl Ledger {
    /// Creates a new, empty ledger and opens it for writing.
    pub async fn create(
        store: Arc<dyn BlobStore>,
        name: &str,
        opts: LedgerOptions,
    ) -> Result<Ledger> {
        layout::validate_ledger_name(name)?;
        opts.validate()?;
        let lock = take_lock(store.as_ref(), name).await?;
        match store.info(&layout::meta(name)).await {
            Ok(_) => return Err(LedgerError::AlreadyExists(name.to_owned())),
            Err(crate::backend::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if !recover::list_segments(store.as_ref(), name)
            .await?
            .is_empty()
        {
            return Err(LedgerError::AlreadyExists(name.to_owned()));
        }
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| {
            LedgerError::InvalidArgument(format!("no randomness for a ledger id: {e}"))
        })?;
        usable_block_count(store.as_ref())?;
        let max_block = store.max_block_size();
        if !(layout::MIN_BLOCK..=layout::MAX_BLOCK).contains(&max_block) {
            return Err(LedgerError::InvalidArgument(format!(
                "the store's maximum block size {max_block} is outside {}..={}",
                layout::MIN_BLOCK,
                layout::MAX_BLOCK
            )));
        }
        let meta = layout::Meta {
            name: name.to_owned(),
            id,
            verifier: Verifier {
                name: layout::Meta::key_name(name),
                key: opts.signing_key.verifying_key(),
            },
            max_block,
        };
        store
            .put(&layout::meta(name), meta.encode().as_bytes())
            .await?;
        let seg = layout::segment(name, 0);
        let mut tip = tip::Tip::genesis(id);
        store.create(&seg).await?;
        let header = SegmentHeader {
            ledger_id: id,
            index: 0,
            first_seq: 0,
            prev_chain: tip.chain_head,
        };
        tip.segment_len = store.append(&seg, 0, &header.encode()).await?;
        tip.segment_blocks = 1;
        let ledger = Self::start(store, meta, opts, tip, None, Vec::new(), lock)?;
        // Checkpoint 0 commits to the empty ledger, so even its first tail
        // is covered by the rule "what a checkpoint covers must be there".
        ledger.checkpoint().await?;
        Ok(ledger)
    }

    /// Opens an existing ledger for writing, recovering from a crash if the
    /// last writer did not close.
    pub async fn open(
        store: Arc<dyn BlobStore>,
        name: &str,
        opts: LedgerOptions,
    ) -> Result<Ledger> {
        layout::validate_ledger_name(name)?;
        opts.validate()?;
        usable_block_count(store.as_ref())?;
        let lock = take_lock(store.as_ref(), name).await?;
        let meta = recover::read_meta(store.as_ref(), name).await?;
        if meta.verifier.key != opts.signing_key.verifying_key() {
            return Err(LedgerError::KeyMismatch {
                ledger: name.to_owned(),
                expected: meta.verifier.to_vkey(),
            });
        }
        let max_body = meta.max_body();
        let recover::Recovered {
            tip,
            checkpoint,
            snapshots,
        } = match recover::recover(store.as_ref(), &meta, max_body).await {
            Ok(r) => r,
            // A writer that lost its lock while it read (stopped past its
            // lease, or the lease broken) may have read another writer's
            // work half done, which can look like damage: it says that it
            // lost the lock rather than what it saw.
            Err(e) => return Err(lock.confirm().await.map_or_else(Into::into, |()| e)),
        };
        let last = match checkpoint {
            Some(checkpoint) => {
                let blob = layout::checkpoint(name, checkpoint.size);
                // Already parsed and verified by `recover`, so it is UTF-8.
                let note = String::from_utf8_lossy(&store.read_all(&blob).await?).into_owned();
                Some(CheckpointInfo {
                    blob,
                    note,
                    checkpoint,
                })
            }
            None => None,
        };
        // Without any checkpoint, `create` was cut short before checkpoint
        // 0, or checkpoints were deleted. A writer signs checkpoint 0 before
        // it appends anything, so records here mean the latter, and signing
        // them would vouch for whatever the log now holds.
        if last.is_none() && tip.size > 0 {
            return Err(IntegrityError::new(
                layout::checkpoint(name, 0),
                0,
                Some(0),
                format!(
                    "the log holds {} records but the ledger has no checkpoint: a writer signs checkpoint 0 before it appends, so checkpoints were deleted; nothing binds these records to the key",
                    tip.size
                ),
            )
            .into());
        }
        // A snapshot of exactly the log's size, past the newest checkpoint:
        // a checkpoint a crash cut short after its caches (format §10.4).
        // Completed now, its caches reused, rather than left for `verify`
        // to report for ever: no later checkpoint would have their size.
        let interrupted = last
            .as_ref()
            .is_some_and(|l| l.checkpoint.size < tip.size && snapshots.contains(&tip.size));
        let unsigned = last.is_none();
        let ledger = Self::start(store, meta, opts, tip, last, snapshots, lock)?;
        if unsigned || interrupted {
            // Or completes a creation cut short (format §10.4).
            ledger.checkpoint().await?;
        }
        Ok(ledger)
    }

    fn start(
        store: Arc<dyn BlobStore>,
        meta: layout::Meta,
        mut opts: LedgerOptions,
        tip: tip::Tip,
        last_checkpoint: Option<CheckpointInfo>,
        snapshots: Vec<u64>,
        lock: Box<dyn crate::backend::WriterLock>,
    ) -> Result<Ledger> {
        opts.max_batch_bytes = opts.batch_limit(store.as_ref(), &meta);
        let max_batch = opts.max_batch_bytes;
        let (tx, rx) = mpsc::channel(4096);
        let hashers = writer::Hashers::start(&meta.name).map_err(|source| {
            crate::backend::StoreError::Io {
                op: "start the hashing threads of",
                name: meta.name.clone(),
                source,
            }
        })?;
        let w = writer::Writer {
            hashers,
            store: store.clone(),
            meta: meta.clone(),
            key: opts.signing_key.clone(),
            opts,
            tip,
            lock,
            poisoned: None,
            last_checkpoint,
            last_checkpoint_at: Instant::now(),
            checkpoint_retry: None,
            unanswered: None,
            snapshots: snapshots.into_iter().collect(),
            merge_run: None,
        };
        // The writer gets a thread (and a small runtime) of its own: its
        // store may then write in place, without the thread hand-offs that
        // would otherwise sit between every group commit and its callers
        // (see `backend::fs`), and the application's runtime never waits
        // on the writer's I/O or hashing.
        let (handles, running) = running::register(&store.location(), &meta.name);
        std::thread::Builder::new()
            .name(format!("bi-ledger-writer-{}", meta.name))
            .spawn(move || {
                crate::backend::allow_blocking_here();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(w.run(rx)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the writer's runtime");
                        // Dropping `rx` answers every caller with `Closed`;
                        // the writer's lock goes before `running` says so.
                        drop(rx);
                        drop(w);
                    }
                }
                // Only now, with the writer and its lock gone.
                drop(running);
            })
            .map_err(|source| crate::backend::StoreError::Io {
                op: "start the writer thread of",
                name: meta.name.clone(),
                source,
            })?;
        Ok(Ledger {
            tx,
            store,
            meta,
            max_batch,
            _handles: handles,
        })
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn id(&self) -> [u8; 16] {
        self.meta.id
    }

    pub fn verifier(&self) -> &Verifier {
        &self.meta.verifier
    }

    /// The origin line its checkpoints carry, `bi-ledger/<name>/<id>`: what
    /// tells this ledger from another signed by the same key.
    pub fn origin(&self) -> String {
        self.meta.origin()
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// Appends `events` atomically: all are durable when this returns `Ok`,
    /// and none are written if any is invalid or any expected version does
    /// not hold. Concurrent calls share block writes (group commit).
    ///
    /// Dropping the future (a timeout, say) does not withdraw the events:
    /// once this call has handed them to the writer, they may be appended
    /// all the same, with no receipt to tell. A caller that gives up and
    /// tries again must append with an expected version
    /// ([`crate::ExpectedVersion::Exact`] or `NoStream`), which a second
    /// copy then fails, or read the stream first to see whether the first
    /// try landed.
    ///
    /// A failure of the write itself stops the writer, and its error tells
    /// the caller what became of the events: [`LedgerError::OutcomeUnknown`],
    /// their block's write failed and may have landed whole (look from its
    /// `first_seq` after reopening); [`LedgerError::Poisoned`], they were
    /// not written.
    ///
    /// Needs a tokio runtime (the stores run blocking file and network
    /// work on it); a current-thread runtime will do.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Receipt>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut bytes = BATCH_OVERHEAD;
        for (index, e) in events.iter().enumerate() {
            e.validate()
                .map_err(|(field, reason)| LedgerError::InvalidEvent {
                    index,
                    field,
                    reason,
                })?;
            bytes += e.stored_len_bound();
        }
        if bytes > self.max_batch {
            // An event that fits no batch is that event's fault, whatever
            // else the call holds.
            let alone = |e: &NewEvent| BATCH_OVERHEAD + e.stored_len_bound();
            if let Some(index) = events.iter().position(|e| alone(e) > self.max_batch) {
                let (field, reason) =
                    too_large(&events[index], alone(&events[index]), self.max_batch);
                return Err(LedgerError::InvalidEvent {
                    index,
                    field,
                    reason,
                });
            }
            return Err(LedgerError::BatchTooLarge {
                events: events.len(),
                bytes,
                limit: self.max_batch,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Command::Append {
                events,
                bytes,
                reply,
            })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    fn closed(&self) -> LedgerError {
        LedgerError::Closed {
            ledger: self.meta.name.clone(),
        }
    }

    /// The most bytes the events of one `append` call may take: their
    /// [`NewEvent::stored_len_bound`]s plus [`BATCH_OVERHEAD`].
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch
    }

    pub async fn append_one(&self, event: NewEvent) -> Result<Receipt> {
        Ok(self.append(vec![event]).await?.remove(0))
    }

    /// Writes a signed checkpoint of everything acknowledged so far.
    pub async fn checkpoint(&self) -> Result<CheckpointInfo> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Command::Checkpoint { reply })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Writes the final checkpoint and stops the writer. Other clones of
    /// this handle get [`LedgerError::Closed`] afterwards.
    pub async fn close(self) -> Result<CheckpointInfo> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Command::Close { reply })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// A reader over the same store.
    pub async fn reader(&self) -> Result<LedgerReader> {
        LedgerReader::open(self.store.clone(), &self.meta.name).await
    }
}

/// What an event too large for any batch (`size` bytes alone in one, over
/// `limit`) is told: its field that holds most of it, where one does.
fn too_large(e: &NewEvent, size: usize, limit: usize) -> (&'static str, String) {
    let over = format!(
        "the event encodes to about {size} bytes, over the {limit}-byte batch limit (the most one append may take)"
    );
    let metadata: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if e.payload.len() >= metadata && e.payload.len() * 2 >= size {
        let n = e.payload.len();
        let hint = "store a payload this large elsewhere and append a reference";
        ("payload", format!("is {n} bytes, and {over}: {hint}"))
    } else if metadata * 2 >= size {
        let n = e.metadata.len();
        let hint = "keep large values in the payload, or elsewhere";
        (
            "metadata",
            format!("holds {metadata} bytes in {n} entries, and {over}: {hint}"),
        )
    } else {
        let (p, hint) = (e.payload.len(), "raise max_batch_bytes");
        (
            "event",
            format!(
                "is small ({p}-byte payload, {metadata} bytes of metadata), but {over}: {hint}"
            ),
        )
    }
}
