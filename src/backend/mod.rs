//! The storage seam: an append-only blob store shaped like Azure append
//! blobs. The ledger above it never learns which implementation it has.
//!
//! Contract (checked by `tests/conformance_blob.rs` against every
//! implementation):
//! - `append` is conditional on the blob's current length and atomic: on
//!   success the whole block is durable; on any error nothing of it is
//!   visible to a later `read` (the fs store may leave bytes past the
//!   length it reports only after a crash, which the ledger recovers).
//! - `put` creates a small immutable blob atomically, or fails if it exists.
//! - `lock` makes the caller the only writer of a ledger until the guard is
//!   dropped; a second `lock` fails with [`StoreError::Locked`].

use std::fmt;

use async_trait::async_trait;

pub mod azure;
pub mod fs;
pub mod local;
pub mod queue;
pub mod table;

/// Azure's limit on blocks in one append blob.
pub const AZURE_MAX_BLOCKS: u64 = 50_000;
/// Our default block cap (Azure documents 4 MiB for some API versions).
pub const DEFAULT_MAX_BLOCK: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub name: String,
    /// Bytes in the blob, unwritten space (see [`BlobStore::trim`])
    /// included.
    pub size: u64,
    /// Committed appends (blocks). Azure reports it exactly; the fs store
    /// keeps it in a side file that may undercount after a crash.
    pub block_count: u64,
    pub sealed: bool,
}

/// What ends another holder's claim on a writer lock: what an operator
/// refused by [`StoreError::Locked`] needs to know to decide whether to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockExpiry {
    /// An OS lock, released when the process holding it exits.
    WithProcess,
    /// A lease its holder renews, of at most this many seconds: the lease
    /// of a holder that died expires by then.
    Lease { at_most_secs: u64 },
    /// A lease with no end, which no bi-ledger writer takes: only breaking
    /// it ends it.
    Never,
    /// A `Ledger` of this very process, still in use, holds it (the ledger
    /// layer tells; a store cannot).
    ThisProcess,
}

impl fmt::Display for LockExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockExpiry::WithProcess => f.write_str(
                "another process has it open for writing (the lock of a process that died is gone with it)",
            ),
            LockExpiry::Lease { at_most_secs } => write!(
                f,
                "another writer holds its lease (the lease of a writer that died expires within {at_most_secs} s)"
            ),
            LockExpiry::ThisProcess => f.write_str(
                "a Ledger of this process has it open for writing and is still in use: append through that Ledger (its clones share its writer), or close it first",
            ),
            LockExpiry::Never => f.write_str(
                "its lock blob holds an infinite lease, which never expires and which no bi-ledger writer takes: break it (Lease Blob `break`) once nothing uses it",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {name} not found")]
    NotFound { name: String },
    #[error("blob {name} already exists")]
    AlreadyExists { name: String },
    #[error("append to {name} expected it to hold {expected} bytes, but it holds {actual}: another writer appended")]
    OffsetMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {name} is sealed (read-only)")]
    Sealed { name: String },
    #[error("blob {name} already holds {limit} blocks, the most one blob may")]
    BlockLimit { name: String, limit: u64 },
    #[error("block of {size} bytes exceeds the {limit}-byte block limit")]
    BlockTooLarge { size: usize, limit: usize },
    #[error("read of {name} bytes {offset}..{end} is beyond its end at {size}")]
    OutOfRange {
        name: String,
        offset: u64,
        end: u64,
        size: u64,
    },
    #[error("the writer lock {what} is locked by another writer: {expiry}")]
    Locked { what: String, expiry: LockExpiry },
    #[error("invalid blob name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("{op} {name}: {source}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    /// Whether this error, from an `append`, says the block was not
    /// written: the store refused it (a condition, a limit, a name) rather
    /// than failed on the way, where it may have landed all the same. An
    /// Azure store resolves a refusal met after an uncertain attempt by
    /// reading back (see its README), so a refusal it returns is certain.
    pub fn refused_append(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound { .. }
                | StoreError::OffsetMismatch { .. }
                | StoreError::Sealed { .. }
                | StoreError::BlockLimit { .. }
                | StoreError::BlockTooLarge { .. }
                | StoreError::InvalidName { .. }
        )
    }
}

#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Human-readable location, for logs and errors (never secrets).
    fn location(&self) -> String;
    /// Largest block `append` accepts.
    fn max_block_size(&self) -> usize;
    /// Most blocks one blob may hold.
    fn max_blocks(&self) -> u64;
    /// Whether [`Self::truncate`] can cut a blob back. A store whose
    /// appends cannot tear (Azure's are atomic) need not, and then a tail
    /// that looks torn, or zeros after the last block, were not left by
    /// its writer: recovery reports them instead of cutting.
    fn truncates(&self) -> bool;

    /// Creates an empty appendable blob; fails if it exists.
    async fn create(&self, name: &str) -> Result<(), StoreError>;
    /// Appends `block` if the blob holds exactly `expected_offset` bytes
    /// before its unwritten space (see [`Self::trim`]). Returns where the
    /// block ends once it is durable.
    async fn append(
        &self,
        name: &str,
        expected_offset: u64,
        block: &[u8],
    ) -> Result<u64, StoreError>;
    /// Reads exactly `len` bytes at `offset`.
    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;
    /// Blobs whose names start with `prefix`, sorted by name. A blob
    /// deleted while the listing is taken is listed or left out, never an
    /// error.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError>;
    async fn info(&self, name: &str) -> Result<BlobInfo, StoreError>;
    /// Makes the blob read-only for good.
    async fn seal(&self, name: &str) -> Result<(), StoreError>;
    /// [`Self::seal`], only if the blob holds exactly `expected_len` bytes:
    /// else `OffsetMismatch` (with its length now), and nothing is sealed.
    /// A blob already sealed at that length is `Ok`. The writer seals a
    /// full segment with it when it rolls over, so that a writer that lost
    /// its lock can never seal a segment another writer has appended to
    /// since. Stores where another writer cannot exist (the fs store's
    /// lock is exclusive) may check and seal in two steps, as here; the
    /// Azure store makes the seal itself conditional.
    async fn seal_at(&self, name: &str, expected_len: u64) -> Result<(), StoreError> {
        seal_at_in_two_steps(self, name, expected_len).await
    }
    /// Cuts off the unwritten space after the first `len` bytes: zeros a
    /// store wrote ahead of its appends (the fs store does), which must not
    /// stay in a blob that is sealed. `OffsetMismatch` if anything but
    /// zeros follows them. Stores that write nothing ahead have nothing to
    /// cut, but say so explicitly: a wrapper that forgot to pass this on
    /// would leave zeros in a sealed segment.
    async fn trim(&self, name: &str, len: u64) -> Result<(), StoreError>;
    /// Creates a whole immutable blob atomically; fails if it exists.
    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError>;
    /// Cuts a blob back to `len` bytes. Only crash recovery calls this, for a
    /// torn tail; stores whose appends cannot tear may refuse.
    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError>;
    /// Takes the single-writer lock named `name`.
    async fn lock(&self, name: &str) -> Result<Box<dyn WriterLock>, StoreError>;
    /// Removes a blob that is not evidence (an old writer-state snapshot).
    /// The ledger never deletes segments or checkpoints.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;

    /// [`Self::put`] of `parts` one after the other, for a caller whose blob
    /// is in pieces (a snapshot: its header and a stream table of tens of
    /// MB) and should not be copied into one. Stores that can write pieces
    /// override this; the rest are given the pieces joined.
    async fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        self.put(name, &parts.concat()).await
    }

    /// Reads a whole blob.
    async fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let info = self.info(name).await?;
        self.read(name, 0, info.size).await
    }
}

/// Held for as long as the writer may write; dropping it releases the lock.
pub trait WriterLock: Send + Sync + fmt::Debug {
    /// Fails if the lock has been lost (a lease that could not be renewed).
    /// Answers from what is known here, without asking anyone: a lease
    /// broken (or expired and taken) since its last renewal still passes
    /// until the next one.
    fn check(&self) -> Result<(), StoreError>;

    /// Asks whoever grants the lock whether it is still held, now: for
    /// writes that nothing else fences against another writer (a
    /// checkpoint's puts, a rollover), unlike appends, which the store
    /// makes conditional on the blob's length. Once refused, [`Self::check`]
    /// fails too. A lock that cannot be taken away answers as `check`.
    fn confirm(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + '_>>
    {
        Box::pin(std::future::ready(self.check()))
    }

    /// Gives the lock up and returns once another writer can take it.
    /// Dropping the guard also releases it, but a remote lock (a lease) only
    /// in the background, which a process that exits right after may cut
    /// short; a clean close calls this.
    fn release(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    where
        Self: 'static,
    {
        Box::pin(async move { drop(self) })
    }
}

thread_local! {
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`BlobStore::seal_at`] as a check of the length, then a seal: the
/// default, and what a store (or a wrapper of one) that overrides it may
/// still do where no other writer can exist.
pub async fn seal_at_in_two_steps<S: BlobStore + ?Sized>(
    store: &S,
    name: &str,
    expected_len: u64,
) -> Result<(), StoreError> {
    let info = store.info(name).await?;
    if info.size != expected_len {
        return Err(StoreError::OffsetMismatch {
            name: name.to_owned(),
            expected: expected_len,
            actual: info.size,
        });
    }
    if info.sealed {
        return Ok(());
    }
    store.seal(name).await
}

/// Marks the calling thread as one that does nothing but drive a ledger's
/// writer, where a store may do blocking I/O in place instead of handing it
/// to a thread pool (see `fs`). Only the writer's own thread calls this.
pub(crate) fn allow_blocking_here() {
    MAY_BLOCK.with(|m| m.set(true));
}

/// Whether the calling thread may block on I/O (see `allow_blocking_here`).
pub(crate) fn may_block_here() -> bool {
    MAY_BLOCK.with(|m| m.get())
}

/// What every store checks of a block before appending it: not empty
/// (an empty append would move nothing and count a block) and at most
/// `limit` bytes.
pub fn validate_block(block: &[u8], limit: usize) -> Result<(), StoreError> {
    if block.len() > limit {
        return Err(StoreError::BlockTooLarge {
            size: block.len(),
            limit,
        });
    }
    if block.is_empty() {
        return Err(StoreError::Unsupported(
            "an empty block cannot be appended".into(),
        ));
    }
    Ok(())
}

/// Names are `/`-separated paths of `[A-Za-z0-9._-]` components, none of
/// them `.` or `..` or starting with `.`, so they map to file paths and to
/// Azure blob names alike.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() || name.len() > 512 {
        return bad("must be 1 to 512 bytes");
    }
    for part in name.split('/') {
        if part.is_empty() {
            return bad("empty path component");
        }
        if part.starts_with('.') {
            return bad("a path component starts with '.'");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return bad("only A-Z a-z 0-9 . _ - and / are allowed");
        }
    }
    Ok(())
}
