//! The local file-system blob store: one file per blob under a root
//! directory. See `README.md` beside this file for the life of an event
//! through it and what a crash at each step leaves behind.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    validate_block, validate_name, BlobInfo, BlobStore, LockExpiry, StoreError, WriterLock,
    AZURE_MAX_BLOCKS, DEFAULT_MAX_BLOCK,
};

#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Blocks per blob, as Azure limits them, so that rollover is exercised
    /// locally exactly as in production.
    pub max_blocks: u64,
    pub max_block_size: usize,
    /// Zero bytes written ahead of the appends (see `append_locked`); 0
    /// writes none, and every append then grows the file.
    pub fill_ahead: u64,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            max_blocks: AZURE_MAX_BLOCKS,
            max_block_size: DEFAULT_MAX_BLOCK,
            fill_ahead: DEFAULT_FILL_AHEAD,
        }
    }
}

/// How far ahead of its appends the store writes zeros: 1 MiB, so that the
/// file grows, and `fdatasync` writes its inode, once per megabyte rather
/// than once per append.
pub const DEFAULT_FILL_AHEAD: u64 = 1 << 20;

/// The most `FsOptions::fill_ahead` may be: the zeros are written from one
/// buffer of that size.
pub const MAX_FILL_AHEAD: u64 = 64 << 20;

#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    /// `file://` and the root made absolute with symlinks resolved: one
    /// directory, however it was named, has one location (an `open` in
    /// this process finds a stopping writer of the same ledger by it).
    location: String,
    opts: FsOptions,
    open: Mutex<HashMap<String, Arc<Mutex<OpenBlob>>>>,
}

/// An appendable blob kept open between appends, so the hot path is one
/// `pwrite` and one `fdatasync`.
#[derive(Debug)]
struct OpenBlob {
    file: File,
    blocks: File,
    block_count: u64,
    /// Where this handle's next append goes: the end of the written bytes,
    /// before any unwritten space.
    len: u64,
    /// The file's length and its side file's after this handle last
    /// changed them (or counted them). Another handle or process that
    /// appends or cuts changes one or both; the blob is then looked at
    /// afresh (`OpenBlob::refresh`).
    file_len: u64,
    side_len: u64,
    /// `len` is past the last end the side file records: blocks a crash
    /// kept from it, which the writer's recovery took as the log's.
    unrecorded: bool,
}

impl OpenBlob {
    /// Reads the blob's state from its files (see `written`).
    fn refresh(&mut self, name: &str) -> Result<(), StoreError> {
        let file_len = self.file.metadata().map_err(|e| io("stat", name, e))?.len();
        let side_len = self
            .blocks
            .metadata()
            .map_err(|e| io("stat block index of", name, e))?
            .len();
        let (written, count, unrecorded) =
            written(&self.file, &self.blocks, file_len, false, Viewer::Writer)
                .map_err(|e| io("read block index of", name, e))?;
        self.block_count = count;
        self.len = written;
        self.unrecorded = unrecorded;
        self.file_len = file_len;
        self.side_len = side_len;
        Ok(())
    }
}

impl FsStore {
    /// `put`, blocking: written to a side file, fsynced, made read-only,
    /// then linked to its name and the directory fsynced.
    fn put_in_place(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        let path = self.path(name)?;
        let dir = path.parent().unwrap().to_owned();
        create_dirs(&dir).map_err(|e| io("create directory for", name, e))?;
        let tmp = self.side_path(name, &format!("tmp-{}", uuid::Uuid::new_v4().simple()))?;
        let result = (|| {
            let mut f = create_file(&tmp)?;
            for part in parts {
                f.write_all(part)?;
            }
            f.sync_all()?;
            let mut perms = f.metadata()?.permissions();
            perms.set_readonly(true);
            fs::set_permissions(&tmp, perms)?;
            // link() fails if the name exists, where rename() would
            // silently replace an immutable blob.
            fs::hard_link(&tmp, &path)
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists {
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(io("write", name, e)),
        }
        sync_dir(&dir).map_err(|e| io("fsync directory of", name, e))
    }

    /// The whole durable append, on the calling thread.
    fn append_now(
        &self,
        name: String,
        expected_offset: u64,
        block: &[u8],
    ) -> Result<u64, StoreError> {
        let blob = self.open_blob(&name)?;
        let mut b = blob.lock().unwrap();
        // The mutex orders this handle's appends. An exclusive flock on the
        // blob orders them with other handles and processes (and with seal
        // and truncate), so that checking the length and writing are one
        // step: of two writers at the same offset, one gets OffsetMismatch
        // instead of both overwriting each other.
        b.file.lock().map_err(|e| io("lock", &name, e))?;
        let result = append_locked(self, &mut b, name, expected_offset, block);
        let _ = b.file.unlock();
        result
    }
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::with_options(root, FsOptions::default())
    }

    pub fn with_options(root: impl Into<PathBuf>, opts: FsOptions) -> Result<Self, StoreError> {
        let root = root.into();
        if opts.fill_ahead > MAX_FILL_AHEAD {
            return Err(StoreError::Unsupported(format!(
                "FsOptions::fill_ahead {} is more than the {MAX_FILL_AHEAD} bytes the fs store writes ahead at most",
                opts.fill_ahead
            )));
        }
        // Each directory made is synced into its parent: a ledger's first
        // durable write must not vanish with a directory entry a crash lost.
        create_dirs(&root).map_err(|e| io("create directory", &root.display().to_string(), e))?;
        let location = format!(
            "file://{}",
            fs::canonicalize(&root)
                .map_err(|e| io("resolve directory", &root.display().to_string(), e))?
                .display()
        );
        Ok(FsStore {
            root,
            location,
            opts,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        Ok(Self::file_path(&self.root, name))
    }

    /// Where blob `name` (a valid name) is kept under `root`.
    ///
    /// A ledger names its checkpoints and caches `<kind>-<20 digits>`, a
    /// few every few minutes for years: ten years of them in one directory
    /// are millions of entries, and a listing reads its directory whole
    /// (two million took ext4 about 5 s, on every open). So a name whose
    /// last component ends in [`FAN_MIN_DIGITS`] or more digits is filed in
    /// a hidden directory named by that component less its last
    /// [`FAN_DIGITS`] digits, under those digits:
    /// `main/checkpoint-00000000000001250000` is the file
    /// `main/.checkpoint-00000000000001/250000`. A directory then holds at most a million such files, and a listing
    /// by a prefix that names the other digits reads only its own. No blob
    /// name starts with '.', so the directory is never a blob; side files
    /// are files, never directories.
    pub fn file_path(root: &Path, name: &str) -> PathBuf {
        let (dir, file) = split_last(name);
        match fanned(file) {
            Some((stem, digits)) => root.join(dir).join(format!(".{stem}")).join(digits),
            None => root.join(name),
        }
    }

    /// Hidden companion files (block ends, temp files, locks) start with '.',
    /// which no blob name may, so they never collide with blobs. They stay
    /// beside the name, never in the directory that files it (`file_path`):
    /// taking the writer's lock removes the temp files a crash left from
    /// one directory, which stays small.
    fn side_path(&self, name: &str, suffix: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        let (dir, file) = split_last(name);
        Ok(self.root.join(dir).join(format!(".{file}.{suffix}")))
    }

    fn open_blob(&self, name: &str) -> Result<Arc<Mutex<OpenBlob>>, StoreError> {
        let mut map = self.open.lock().unwrap();
        if let Some(b) = map.get(name) {
            return Ok(b.clone());
        }
        let path = self.path(name)?;
        let file = open_to_change(&path, name)?;
        if file
            .metadata()
            .map_err(|e| io("stat", name, e))?
            .permissions()
            .readonly()
        {
            return Err(StoreError::Sealed {
                name: name.to_owned(),
            });
        }
        let side = self.side_path(name, "blocks")?;
        let blocks = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&side)
            .map_err(|e| io("open block index of", name, e))?;
        let mut blob = OpenBlob {
            file,
            blocks,
            block_count: 0,
            len: 0,
            file_len: 0,
            side_len: 0,
            unrecorded: false,
        };
        blob.refresh(name)?;
        let b = Arc::new(Mutex::new(blob));
        map.insert(name.to_owned(), b.clone());
        Ok(b)
    }

    /// The blob's length without its unwritten space (see `written`), or
    /// just `at_least` if it is known to be no shorter: the last end the
    /// side file records is read first, which is all a read inside the
    /// blob needs.
    fn written_len(
        &self,
        name: &str,
        file: &File,
        size: u64,
        sealed: bool,
        at_least: u64,
    ) -> Result<u64, StoreError> {
        let last_end = |side: &File| -> std::io::Result<u64> {
            let len = side.metadata()?.len() / 8 * 8;
            if len == 0 {
                return Ok(0);
            }
            let mut end = [0u8; 8];
            side.read_exact_at(&mut end, len - 8)?;
            Ok(u64::from_le_bytes(end))
        };
        match File::open(self.side_path(name, "blocks")?) {
            Ok(side) if last_end(&side).is_ok_and(|end| at_least <= end && end <= size) => {
                Ok(at_least)
            }
            Ok(side) => Ok(written(file, &side, size, sealed, Viewer::Reader)
                .map_err(|e| io("read block index of", name, e))?
                .0),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(size),
            Err(e) => Err(io("open block index of", name, e)),
        }
    }

    fn forget(&self, name: &str) {
        self.open.lock().unwrap().remove(name);
    }

    fn info_sync(&self, name: &str) -> Result<BlobInfo, StoreError> {
        self.info_listed(name, None)
    }

    /// `info`, where a listing that started at `listed` (Unix seconds) may
    /// know that the blob has no side file: its directory read showed none
    /// (see `list`).
    fn info_listed(&self, name: &str, listed: Option<i64>) -> Result<BlobInfo, StoreError> {
        let path = self.path(name)?;
        let meta = fs::metadata(&path).map_err(|e| not_found_or(e, "stat", name))?;
        if !meta.is_file() {
            return Err(StoreError::NotFound {
                name: name.to_owned(),
            });
        }
        // Always from the side file, never from this handle's cache: another
        // handle or process may have appended since.
        let sealed = meta.permissions().readonly();
        // A blob made read-only (its ctime) well before the listing began
        // was read-only when the directory was read: a side file it has
        // would have been there. One sealed since may have been created
        // during the listing too, its side file made after the read, and
        // is looked at. The second of margin covers file times taken from
        // the kernel's coarse clock.
        let settled = |listed: i64| {
            use std::os::unix::fs::MetadataExt;
            sealed && meta.ctime() < listed - 1
        };
        let side = match listed {
            Some(listed) if settled(listed) => Err(std::io::Error::from(ErrorKind::NotFound)),
            _ => File::open(self.side_path(name, "blocks")?),
        };
        let (size, block_count) = match side {
            Ok(f) => File::open(&path)
                .and_then(|blob| written(&blob, &f, meta.len(), sealed, Viewer::Reader))
                .map(|(size, count, _)| (size, count))
                .map_err(|e| io("read block index of", name, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => (meta.len(), u64::from(meta.len() > 0)),
            Err(e) => return Err(io("open block index of", name, e)),
        };
        Ok(BlobInfo {
            name: name.to_owned(),
            size,
            block_count,
            sealed,
        })
    }
}

/// The conditional append proper, under the blob's flock.
///
/// Appends that grow the file are slow to make durable: `fdatasync` must
/// then write the inode (its new size) as well as the data, one more
/// synchronous write. So after the first block (a segment's header, which
/// stays alone) the store writes zeros ahead of the appends, in the same
/// write and `fdatasync` as the block that needs the room, and the next
/// appends overwrite them in place: on this project's 2-vCPU VM, 18 KB
/// appends each made durable took 309-448 µs at the median growing the
/// file and 172-241 µs overwriting zeros. Blocks of more than a sixteenth
/// of the zeros (64 KiB by default) get none. The ledger format calls these
/// zeros unwritten space (ledger-format.md §12.2): readers stop at them,
/// and a writer truncates them before it seals the segment.
fn append_locked(
    me: &FsStore,
    b: &mut OpenBlob,
    name: String,
    expected_offset: u64,
    block: &[u8],
) -> Result<u64, StoreError> {
    let meta = b.file.metadata().map_err(|e| io("stat", &name, e))?;
    if meta.permissions().readonly() {
        return Err(StoreError::Sealed { name });
    }
    // The files' own lengths, not cached ones: another store instance (or
    // process) that appended or cut must make this fail.
    let side_len = b
        .blocks
        .metadata()
        .map_err(|e| io("stat block index of", &name, e))?
        .len();
    if meta.len() != b.file_len || side_len != b.side_len {
        b.refresh(&name)?;
    }
    if expected_offset != b.len {
        return Err(StoreError::OffsetMismatch {
            name,
            expected: expected_offset,
            actual: b.len,
        });
    }
    if b.block_count >= me.opts.max_blocks {
        return Err(StoreError::BlockLimit {
            name,
            limit: me.opts.max_blocks,
        });
    }
    if b.unrecorded {
        // The end of the blocks a crash kept from the side file, which
        // this append continues: recorded before the block is written, so
        // that a reader, which takes the blob to end where the side file
        // says while an append holds the lock, still sees them.
        b.blocks
            .write_all(&expected_offset.to_le_bytes())
            .map_err(|e| io("record a block end of", &name, e))?;
        b.side_len += 8;
        b.unrecorded = false;
    }
    let end = expected_offset + block.len() as u64;
    // Only for blocks small beside the zeros: a large block's transfer
    // dwarfs the inode's write, and zeros written ahead of it would double
    // the bytes a run of large appends puts on the disk.
    let small = (block.len() as u64).saturating_mul(16) <= me.opts.fill_ahead;
    let from = end.max(b.file_len);
    let mut fill_to = if end > b.file_len && expected_offset > 0 && small {
        end + me.opts.fill_ahead
    } else {
        from
    };
    let written = b
        .file
        .write_all_at(block, expected_offset)
        .and_then(|()| {
            if fill_to == from {
                return Ok(());
            }
            match b
                .file
                .write_all_at(&vec![0u8; (fill_to - from) as usize], from)
            {
                // The zeros only make later appends quicker: a disk too
                // full for them still takes the block, without them.
                Err(e) if e.kind() == ErrorKind::StorageFull => {
                    fill_to = from;
                    b.file.set_len(from)
                }
                r => r,
            }
        })
        .and_then(|()| b.file.sync_data());
    if let Err(e) = written {
        // Whatever reached the file is past the length the ledger
        // knows; put the length back so a retry starts clean.
        let cut = b
            .file
            .set_len(expected_offset)
            .and_then(|()| b.file.sync_data());
        b.file_len = u64::MAX; // looked at afresh by the next append
        if let Err(cut) = cut {
            // The block may then stay, CRC and all, and the next open take
            // it in although this append failed: say so where an operator
            // will look.
            tracing::error!(
                blob = %name,
                offset = expected_offset,
                error = %cut,
                "could not cut a failed append back off; the block may reappear when the ledger is next opened"
            );
        }
        return Err(io("append to", &name, e));
    }
    b.block_count += 1;
    b.len = end;
    b.file_len = fill_to;
    if b.blocks.write_all(&end.to_le_bytes()).is_ok() {
        b.side_len += 8;
    }
    Ok(end)
}

/// Whether the caller of `written` looks at the blob through a handle of
/// its own, or through the writer's (which may hold the append lock).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Viewer {
    /// A reader (`info`, `list`, `read`), through a file it opened itself,
    /// which waits for an append under way.
    Reader,
    /// The appending (or sealing) handle, which holds the lock a reader
    /// waits for: a shared `flock` on its own file would convert it, and
    /// on another file would wait for itself.
    Writer,
}

/// Where the written bytes of a file of `size` bytes end, and how many
/// blocks they hold: the blob as `info`, `list` and `read` show it. Every
/// append records its end in the side file before it returns, so the bytes
/// are written up to the last end recorded; past it, only zeros are
/// unwritten space, which the blob does not show. Anything else past it is
/// an append under way, or a block whose end a crash kept from the side
/// file (which is not fsynced). An append under way holds the blob's
/// `flock` until it has recorded its end, and a reader waits for it (one
/// `fdatasync`, at most `APPEND_WAIT`) rather than show its block before
/// it is durable: the `fdatasync` may fail, the append then cuts the block
/// off, and the next one reuses its sequence numbers, so a reader that saw
/// it would have seen records that never were. A block a crash left counts as one more
/// block: the file is then shown whole, zeros and all, for the reader to
/// tell a whole block that ends in zero bytes from the zeros after it
/// (ledger-format.md §12.2), which the store cannot. The third value says
/// that the length shown goes past the last end recorded.
fn written(
    file: &File,
    side: &File,
    size: u64,
    sealed: bool,
    viewer: Viewer,
) -> std::io::Result<(u64, u64, bool)> {
    let at = |size: u64| -> std::io::Result<Option<(u64, u64, bool)>> {
        let (count, last) = recorded_ends(side, size)?;
        // A sealed blob has none: the writer trims it before sealing, so
        // zeros found there were put there afterwards, and are shown to
        // readers, for which they are damage (ledger-format.md §12.2).
        if last == size || (!sealed && zero_run_start(file, last, size)? == last) {
            Ok(Some((last, count, false)))
        } else if sealed || viewer == Viewer::Writer {
            Ok(Some((size, count + 1, true)))
        } else {
            // Unrecorded bytes: decided below, under the lock.
            Ok(None)
        }
    };
    // Cut since `size` was seen (a writer trimming its unwritten space or
    // recovering a torn tail): once more, at the length it has now.
    let at = |size: u64| match at(size) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => at(file.metadata()?.len()),
        r => r,
    };
    if let Some(shown) = at(size)? {
        return Ok(shown);
    }
    // Unrecorded bytes: an append under way, or a block a crash left. An
    // append holds the lock until it has recorded its end, or cut its
    // block off after a failed `fdatasync`; once it has let go, what is
    // left past the recorded end is a crash's. An append that holds it
    // longer than `APPEND_WAIT` (a writer stopped, a disk that hangs) is
    // still under way: its block is not shown, and the reader goes on.
    let deadline = std::time::Instant::now() + APPEND_WAIT;
    let mut pause = std::time::Duration::from_micros(50);
    loop {
        match file.try_lock_shared() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let (count, last) = recorded_ends(side, size)?;
                return Ok((last, count, false));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    let now = file.metadata();
    let shown = now.and_then(|now| match at(now.len())? {
        Some(shown) => Ok(shown),
        None => recorded_ends(side, now.len()).map(|(count, _)| (now.len(), count + 1, true)),
    });
    let _ = file.unlock();
    shown
}

/// The longest a reader waits for an append under way before it shows the
/// blob without that append's block: many `fdatasync`s, even on a slow
/// disk, but short enough that a stopped writer does not stop its readers.
const APPEND_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The offset where the run of zero bytes that ends the file's first
/// `size` bytes begins, looking no further back than `floor`: `size` if the
/// last byte is not zero. Read backwards, a page first and then more at a
/// time, so that the bytes before the zeros are hardly read.
fn zero_run_start(file: &File, floor: u64, size: u64) -> std::io::Result<u64> {
    let mut step: u64 = 4096;
    let mut buf = Vec::new();
    let mut end = size;
    while end > floor {
        let start = end.saturating_sub(step).max(floor);
        step = (step * 4).min(1 << 20);
        buf.resize((end - start) as usize, 0);
        file.read_exact_at(&mut buf, start)?;
        if let Some(i) = buf.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(floor)
}

/// Counts the block ends recorded in a side file, up to the blob's size,
/// and returns the count and the last end. The side file is written after
/// each durable append but not itself fsynced (that would double the cost
/// of every append), so after a crash it may miss the last few ends.
fn recorded_ends(side: &File, size: u64) -> std::io::Result<(u64, u64)> {
    // Read to its end, not to the length just seen: `truncate` rewrites
    // the file in place, and it may be shorter by now.
    let mut buf = vec![0u8; side.metadata()?.len() as usize + 64];
    let mut got = 0;
    loop {
        if got == buf.len() {
            buf.resize(got * 2, 0);
        }
        match side.read_at(&mut buf[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    let mut count = 0;
    let mut last_end = 0;
    for chunk in buf.chunks_exact(8) {
        let end = u64::from_le_bytes(chunk.try_into().unwrap());
        if end > size || end <= last_end {
            break;
        }
        count += 1;
        last_end = end;
    }
    Ok((count, last_end))
}

/// Whether the name `rel/file` (`file` at the root) starts with `prefix`.
fn joined_starts_with(rel: &str, file: &str, prefix: &str) -> bool {
    if rel.is_empty() {
        return file.starts_with(prefix);
    }
    match prefix.strip_prefix(rel) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('/')
            .is_some_and(|rest| file.starts_with(rest)),
        None => rel.starts_with(prefix),
    }
}

/// Names whose last component ends in at least this many digits are
/// filed in a directory of their own kind (see [`FsStore::file_path`]).
pub const FAN_MIN_DIGITS: usize = 7;
/// The digits of such a name that make its file name there.
pub const FAN_DIGITS: usize = 6;

/// A name's last component split as [`FsStore::file_path`] files it: the
/// stem (ending in a digit) and the last [`FAN_DIGITS`] digits.
fn fanned(file: &str) -> Option<(&str, &str)> {
    let digits = file.bytes().rev().take_while(u8::is_ascii_digit).count();
    (digits >= FAN_MIN_DIGITS).then(|| file.split_at(file.len() - FAN_DIGITS))
}

/// A name's directory part ("" at the root) and last component.
fn split_last(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

/// `rel/file`, or `file` at the root.
fn joined(rel: &str, file: &str) -> String {
    if rel.is_empty() {
        file.to_owned()
    } else {
        format!("{rel}/{file}")
    }
}

/// The entries of `dir` whose names are UTF-8 (no blob's is otherwise),
/// with their names; none if it is gone (deleted while listed) or a file.
fn entries_of(
    dir: &Path,
) -> std::io::Result<impl Iterator<Item = std::io::Result<(fs::DirEntry, String)>>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => Some(e),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => None,
        Err(e) => return Err(e),
    };
    Ok(entries.into_iter().flatten().filter_map(|e| match e {
        Ok(e) => e.file_name().into_string().ok().map(|name| Ok((e, name))),
        Err(e) => Some(Err(e)),
    }))
}

/// Adds to `out` the names of the blobs under `dir` (named `rel`, "" for
/// the root) that start with `prefix`, descending only into directories
/// that can hold such names, and to `sides` the names of blobs with a
/// block index. Anything else that is not a valid blob name is skipped.
fn walk(
    dir: &Path,
    rel: &str,
    prefix: &str,
    out: &mut Vec<String>,
    sides: &mut HashSet<String>,
) -> std::io::Result<()> {
    for entry in entries_of(dir)? {
        let (entry, file) = entry?;
        let file = file.as_str();
        if let Some(hidden) = file.strip_prefix('.') {
            let kind = entry.file_type()?;
            if kind.is_dir() && hidden.ends_with(|c: char| c.is_ascii_digit()) {
                let stem = joined(rel, hidden);
                if stem.starts_with(prefix) || prefix.starts_with(&stem) {
                    walk_fanned(&entry.path(), &stem, prefix, out)?;
                }
            } else if let Some(blob) = hidden.strip_suffix(".blocks") {
                sides.insert(joined(rel, blob));
            }
            continue;
        }
        let kind = entry.file_type()?;
        // Most of a ledger's directory is checkpoints and caches that a
        // prefix leaves out: skip them before making their names.
        if kind.is_file() && !joined_starts_with(rel, file, prefix) {
            continue;
        }
        let name = joined(rel, file);
        if kind.is_dir() {
            let sub = format!("{name}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(&entry.path(), &name, prefix, out, sides)?;
            }
        } else if kind.is_file() && name.starts_with(prefix) && validate_name(&name).is_ok() {
            if fanned(file).is_none() {
                out.push(name);
            } else {
                // Not where that name is kept: a copy made by hand, or a
                // ledger from before names were filed by window. Never
                // taken for the blob, but said, since it may be evidence.
                tracing::warn!(
                    file = %entry.path().display(),
                    kept_at = %FsStore::file_path(Path::new(""), &name).display(),
                    "ignored: a file named like a blob that is kept elsewhere (copied by hand, or from before names were filed by window)"
                );
            }
        }
    }
    Ok(())
}

/// [`walk`] in the directory that files the names starting with `stem`
/// (their side files are beside the stem's directory, not in it).
fn walk_fanned(dir: &Path, stem: &str, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let is_digits = |f: &str| f.len() == FAN_DIGITS && f.bytes().all(|b| b.is_ascii_digit());
    for entry in entries_of(dir)? {
        let (entry, file) = entry?;
        let file = file.as_str();
        if !is_digits(file) || !entry.file_type()?.is_file() {
            continue;
        }
        let name = format!("{stem}{file}");
        if name.starts_with(prefix) && validate_name(&name).is_ok() {
            out.push(name);
        }
    }
    Ok(())
}

/// Opens blob `name` at `path` to append to it or cut it.
fn open_to_change(path: &Path, name: &str) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| match e.kind() {
            // A directory is only a prefix of other blobs' names.
            ErrorKind::NotFound | ErrorKind::IsADirectory => StoreError::NotFound {
                name: name.to_owned(),
            },
            // Read-only is how the store seals; refused otherwise (an
            // immutable file, a read-only mount), it is not a seal.
            ErrorKind::PermissionDenied
                if fs::metadata(path).is_ok_and(|m| m.permissions().readonly()) =>
            {
                StoreError::Sealed {
                    name: name.to_owned(),
                }
            }
            _ => io("open", name, e),
        })
}

fn io(op: &'static str, name: &str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        name: name.to_owned(),
        source,
    }
}

fn not_found_or(e: std::io::Error, op: &'static str, name: &str) -> StoreError {
    // A directory is only a prefix of other blobs' names, not a blob.
    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory) {
        StoreError::NotFound {
            name: name.to_owned(),
        }
    } else {
        io(op, name, e)
    }
}

/// Makes a directory entry (create, rename, link) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Modes of what the store creates, before the umask: never writable by
/// others, whatever the umask (under `umask 000` the defaults would let
/// any user change or delete a segment). Sealed blobs lose the owner's
/// write bit too.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// A file created new (or truncated) with [`FILE_MODE`].
fn create_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates `dir` and its missing parents, syncing each parent so that the
/// new entries survive a crash (`create_dir_all` leaves them to chance).
pub fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(()); // "" is the current directory, the parent of "a"
    }
    let parent = dir.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    if let Some(parent) = parent {
        create_dirs(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = parent {
        sync_dir(parent)?;
    }
    Ok(())
}

/// The longest read whose buffer is allocated before the size is checked:
/// a scan's chunk (`ledger::scan::CHUNK`) and a snapshot of millions of
/// streams.
const READ_ON_CALLER: u64 = 256 << 20;

/// Runs blocking file I/O off the async runtime's workers; on a ledger
/// writer's own thread, in place.
///
/// Every caller of a group commit waits on the writer's append. A hand-off
/// to the blocking pool and back costs two thread wake-ups, and on a small
/// machine whose cores are busy with those callers each wake-up waits for a
/// core: measured at 75 µs there and 60 µs back on a 2-vCPU VM, a third of
/// the `fdatasync` itself. The writer's thread has nothing else to do
/// meanwhile, so it does the I/O itself.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    if crate::backend::may_block_here() {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            op: "run blocking I/O",
            name: String::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Shares the store with blocking tasks without cloning its state.
#[derive(Clone, Debug)]
pub struct SharedFs(Arc<FsStore>);

impl FsStore {
    pub fn shared(self) -> SharedFs {
        SharedFs(Arc::new(self))
    }
}

impl std::ops::Deref for SharedFs {
    type Target = FsStore;
    fn deref(&self) -> &FsStore {
        &self.0
    }
}

#[async_trait]
impl BlobStore for SharedFs {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn max_block_size(&self) -> usize {
        self.opts.max_block_size
    }

    fn max_blocks(&self) -> u64 {
        self.opts.max_blocks
    }

    fn truncates(&self) -> bool {
        true
    }

    async fn create(&self, name: &str) -> Result<(), StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        blocking(move || {
            let path = me.path(&name)?;
            let dir = path.parent().unwrap().to_owned();
            create_dirs(&dir).map_err(|e| io("create directory for", &name, e))?;
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(|e| match e.kind() {
                    ErrorKind::AlreadyExists => StoreError::AlreadyExists { name: name.clone() },
                    _ => io("create", &name, e),
                })?;
            f.sync_all().map_err(|e| io("fsync", &name, e))?;
            // A stale side file from an earlier blob of this name must not
            // lend its block ends to the new one.
            let side = me.side_path(&name, "blocks")?;
            create_file(&side).map_err(|e| io("create block index of", &name, e))?;
            sync_dir(&dir).map_err(|e| io("fsync directory of", &name, e))?;
            Ok(())
        })
        .await
    }

    async fn append(
        &self,
        name: &str,
        expected_offset: u64,
        block: &[u8],
    ) -> Result<u64, StoreError> {
        validate_block(block, self.opts.max_block_size)?;
        if crate::backend::may_block_here() {
            // As `blocking` does, without copying the block.
            return self.append_now(name.to_owned(), expected_offset, block);
        }
        let (me, name, block) = (self.clone(), name.to_owned(), block.to_vec());
        blocking(move || me.append_now(name, expected_offset, &block)).await
    }

    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        // Allocated here, on the caller's thread, not on one of the many
        // threads of tokio's blocking pool: glibc gives each thread an arena
        // of its own, and the chunks a scan frees stay resident in the arena
        // that allocated them (verify of 4M streams: 387 MiB resident with
        // the buffers allocated there). A length past any chunk is allocated
        // after the size check instead.
        let mut buf = Vec::with_capacity(if len <= READ_ON_CALLER {
            len as usize
        } else {
            0
        });
        blocking(move || {
            let path = me.path(&name)?;
            let f = File::open(&path).map_err(|e| not_found_or(e, "open", &name))?;
            let meta = f.metadata().map_err(|e| io("stat", &name, e))?;
            if !meta.is_file() {
                return Err(StoreError::NotFound { name });
            }
            let (size, sealed) = (meta.len(), meta.permissions().readonly());
            let end = offset.saturating_add(len);
            if end > size {
                return Err(StoreError::OutOfRange {
                    offset,
                    end,
                    size: me.written_len(&name, &f, size, sealed, u64::MAX)?,
                    name,
                });
            }
            // read_to_end fills spare capacity without zeroing it first,
            // which for 8 MiB scan chunks is a measurable share of a read.
            buf.reserve_exact(len as usize);
            let mut f = f;
            f.seek(std::io::SeekFrom::Start(offset))
                .and_then(|_| (&f).take(len).read_to_end(&mut buf))
                .map_err(|e| io("read", &name, e))?;
            if buf.len() as u64 != len {
                // Cut back between the size check and the read.
                return Err(StoreError::OutOfRange {
                    size: offset + buf.len() as u64,
                    name,
                    offset,
                    end,
                });
            }
            // A read that ends in zeros may have reached into unwritten
            // space, which is not part of the blob.
            if end > 0 && buf.last().is_none_or(|&b| b == 0) {
                let written = me.written_len(&name, &f, size, sealed, end)?;
                if end > written {
                    return Err(StoreError::OutOfRange {
                        name,
                        offset,
                        end,
                        size: written,
                    });
                }
            }
            Ok(buf)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError> {
        let (me, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || {
            // Names are flat, as in Azure: "a/" lists "a/b/c" too. Start in
            // the deepest directory the prefix names in full.
            let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
            let dir = if dir_part.is_empty() {
                me.root.clone()
            } else {
                validate_name(dir_part)?;
                me.root.join(dir_part)
            };
            let listed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let (mut names, mut sides) = (Vec::new(), HashSet::new());
            walk(&dir, dir_part, &prefix, &mut names, &mut sides)
                .map_err(|e| io("list", &prefix, e))?;
            names.sort();
            // A blob deleted since the directory was read is simply not
            // listed, as in Azure's listing: a reader that opens while the
            // writer prunes a snapshot must not fail.
            //
            // A put blob has no side file, and trying to open one for each
            // of a million checkpoints took most of the listing's time. A
            // side file the directory read did not show may still be made
            // since, by a `create` in progress (and appends, and a seal):
            // only a blob read-only since before the listing skips the try.
            names
                .iter()
                .filter_map(|name| {
                    match me.info_listed(name, (!sides.contains(name)).then_some(listed)) {
                        Err(StoreError::NotFound { .. }) => None,
                        other => Some(other),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    async fn info(&self, name: &str) -> Result<BlobInfo, StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        blocking(move || me.info_sync(&name)).await
    }

    async fn seal(&self, name: &str) -> Result<(), StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        blocking(move || {
            let path = me.path(&name)?;
            let f = File::open(&path).map_err(|e| not_found_or(e, "open", &name))?;
            let meta = f.metadata().map_err(|e| io("stat", &name, e))?;
            if !meta.is_file() {
                return Err(StoreError::NotFound { name });
            }
            // Wait for an append in flight (any handle, any process): once
            // this returns, no append succeeds.
            f.lock().map_err(|e| io("lock", &name, e))?;
            if !meta.permissions().readonly() {
                // A sealed blob shows every byte it has (see `written`):
                // its unwritten space goes first. Looked at as the writer
                // does, holding the lock: as a reader, this would take its
                // own lock for an append under way, and cut a block that a
                // crash kept from the side file.
                let len = match File::open(me.side_path(&name, "blocks")?) {
                    Ok(side) => {
                        written(&f, &side, meta.len(), false, Viewer::Writer)
                            .map_err(|e| io("read block index of", &name, e))?
                            .0
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => meta.len(),
                    Err(e) => return Err(io("open block index of", &name, e)),
                };
                if len < meta.len() {
                    let w = open_to_change(&path, &name)?;
                    w.set_len(len)
                        .and_then(|()| w.sync_data())
                        .map_err(|e| io("trim", &name, e))?;
                }
            }
            let mut perms = meta.permissions();
            perms.set_readonly(true);
            fs::set_permissions(&path, perms).map_err(|e| io("seal", &name, e))?;
            f.sync_all().map_err(|e| io("fsync", &name, e))?;
            me.forget(&name);
            Ok(())
        })
        .await
    }

    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.put_parts(name, &[data]).await
    }

    async fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        // On the writer's own thread the put runs in place and writes the
        // caller's bytes: a snapshot of millions of streams is tens of MB,
        // and a copy for the thread pool would be one more of them.
        if crate::backend::may_block_here() {
            return self.put_in_place(name, parts);
        }
        let (me, name, data) = (self.clone(), name.to_owned(), parts.concat());
        blocking(move || me.put_in_place(&name, &[&data])).await
    }

    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        blocking(move || {
            me.forget(&name);
            let path = me.path(&name)?;
            let f = open_to_change(&path, &name)?;
            f.lock().map_err(|e| io("lock", &name, e))?;
            let meta = f.metadata().map_err(|e| io("stat", &name, e))?;
            // Opening for writing does not stop root: check the seal.
            if meta.permissions().readonly() {
                return Err(StoreError::Sealed { name });
            }
            // Only ever cut: set_len would grow the blob with zeros.
            if len > meta.len() {
                return Err(StoreError::OutOfRange {
                    name,
                    offset: len,
                    end: len,
                    size: meta.len(),
                });
            }
            f.set_len(len).map_err(|e| io("truncate", &name, e))?;
            f.sync_all().map_err(|e| io("fsync", &name, e))?;
            // Drop recorded block ends past the cut.
            let side = me.side_path(&name, "blocks")?;
            let ends = fs::read(&side).unwrap_or_default();
            let kept: Vec<u8> = ends
                .chunks_exact(8)
                .take_while(|c| u64::from_le_bytes((*c).try_into().unwrap()) <= len)
                .flatten()
                .copied()
                .collect();
            fs::write(&side, kept).map_err(|e| io("rewrite block index of", &name, e))?;
            Ok(())
        })
        .await
    }

    /// Cuts the unwritten space off first: a sealed blob keeps none.
    async fn seal_at(&self, name: &str, expected_len: u64) -> Result<(), StoreError> {
        match self.trim(name, expected_len).await {
            Ok(()) | Err(StoreError::Sealed { .. }) => {}
            Err(e) => return Err(e),
        }
        super::seal_at_in_two_steps(self, name, expected_len).await
    }

    async fn trim(&self, name: &str, len: u64) -> Result<(), StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        blocking(move || {
            let path = me.path(&name)?;
            let meta = fs::metadata(&path).map_err(|e| not_found_or(e, "stat", &name))?;
            if meta.permissions().readonly() {
                // Sealed: there is nothing to cut, but it must be as long.
                return match meta.len() == len {
                    true => Ok(()),
                    false => Err(StoreError::Sealed { name }),
                };
            }
            let f = open_to_change(&path, &name)?;
            f.lock().map_err(|e| io("lock", &name, e))?;
            let size = f.metadata().map_err(|e| io("stat", &name, e))?.len();
            let zeros_from =
                zero_run_start(&f, len.min(size), size).map_err(|e| io("read", &name, e))?;
            if len > size || zeros_from > len {
                return Err(StoreError::OffsetMismatch {
                    name,
                    expected: len,
                    actual: size.min(zeros_from),
                });
            }
            if size > len {
                f.set_len(len).map_err(|e| io("trim", &name, e))?;
                f.sync_all().map_err(|e| io("fsync", &name, e))?;
                me.forget(&name);
            }
            Ok(())
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        blocking(move || {
            me.forget(&name);
            let path = me.path(&name)?;
            fs::remove_file(&path).map_err(|e| not_found_or(e, "delete", &name))?;
            let _ = fs::remove_file(me.side_path(&name, "blocks")?);
            sync_dir(path.parent().unwrap()).map_err(|e| io("fsync directory of", &name, e))
        })
        .await
    }

    async fn lock(&self, name: &str) -> Result<Box<dyn WriterLock>, StoreError> {
        let (me, name) = (self.clone(), name.to_owned());
        blocking(move || {
            let path = me.side_path(&name, "lock")?;
            create_dirs(path.parent().unwrap())
                .map_err(|e| io("create directory for", &name, e))?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(|e| io("open lock file of", &name, e))?;
            match f.try_lock() {
                Ok(()) => {
                    remove_orphan_temp_files(path.parent().unwrap());
                    Ok(Box::new(FsLock { _file: f }) as Box<dyn WriterLock>)
                }
                Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
                    what: name,
                    expiry: LockExpiry::WithProcess,
                }),
                Err(std::fs::TryLockError::Error(e)) => Err(io("lock", &name, e)),
            }
        })
        .await
    }
}

/// Deletes the temp files of `put`s that a crash interrupted, in the
/// directory whose writer lock was just taken. Only the lock holder puts
/// there, so a temp file found now belongs to no live call. Failing to
/// delete one is logged, never fatal: the file is invisible to every reader.
fn remove_orphan_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.contains(".tmp-")) {
            continue;
        }
        let path = e.path();
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed the temp file of an interrupted put")
            }
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "could not remove the temp file of an interrupted put")
            }
        }
    }
}

/// An exclusive `flock` on a hidden lock file; the OS releases it when the
/// file is closed, including when the process dies.
#[derive(Debug)]
struct FsLock {
    _file: File,
}

impl WriterLock for FsLock {
    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::joined_starts_with;

    /// The root and its missing parents are made; a file where a directory
    /// should be is refused, as `create_dir_all` refuses it.
    #[test]
    fn the_root_is_made_and_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/c");
        super::FsStore::new(&root).unwrap();
        assert!(root.is_dir());
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(super::FsStore::new(&file).is_err());
        assert!(super::FsStore::new(file.join("below")).is_err());
    }

    /// Against the name built whole, over every short combination.
    #[test]
    fn joined_starts_with_is_starts_with_of_the_joined_name() {
        let parts = ["", "a", "b", "ab", "a/b", "a/", "/", "ab/c", "b/a"];
        for rel in ["", "a", "ab", "a/b"] {
            for file in ["a", "b", "ab", "ba", "abc"] {
                for prefix in parts {
                    let name = if rel.is_empty() {
                        file.to_owned()
                    } else {
                        format!("{rel}/{file}")
                    };
                    assert_eq!(
                        joined_starts_with(rel, file, prefix),
                        name.starts_with(prefix),
                        "rel {rel:?} file {file:?} prefix {prefix:?}"
                    );
                }
            }
        }
    }
}
