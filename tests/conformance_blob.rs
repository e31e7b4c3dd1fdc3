//! The `BlobStore` conformance suite (`conformance/blob.rs`) run against the
//! local file-system store, plus checks of what only the fs store has: its
//! hidden side files and how it behaves after a crash lost them.
//!
//! Another backend runs the same suite by implementing `blob::Backend` and
//! adding one line: `blob::conformance_tests!(azure, AzureBackend::new());`

use std::sync::Arc;

use bi_ledger::backend::fs::{FsOptions, FsStore};
use bi_ledger::backend::{BlobStore, StoreError};

#[path = "conformance/blob.rs"]
mod blob;
#[path = "support/names.rs"]
mod listing;

/// Each namespace is a fresh temporary directory; each handle a new
/// `FsStore` on it, with its own open-file cache, as another process has.
/// Run with the zeros the store writes ahead of its appends by default, and
/// without them, when its files hold exactly what was appended, as an
/// Azure append blob does.
struct Fs {
    fill_ahead: u64,
}

struct FsNamespace {
    dir: tempfile::TempDir,
    opts: FsOptions,
}

impl blob::Backend for Fs {
    fn namespace(&self, max_blocks: Option<u64>) -> Box<dyn blob::Namespace> {
        let mut opts = FsOptions {
            // Small enough that the at-the-limit check stays quick.
            max_block_size: 256 * 1024,
            fill_ahead: self.fill_ahead,
            ..FsOptions::default()
        };
        if let Some(n) = max_blocks {
            opts.max_blocks = n;
        }
        Box::new(FsNamespace {
            dir: tempfile::tempdir().unwrap(),
            opts,
        })
    }
}

impl blob::Namespace for FsNamespace {
    fn open(&self) -> Arc<dyn BlobStore> {
        Arc::new(
            FsStore::with_options(self.dir.path(), self.opts.clone())
                .unwrap()
                .shared(),
        )
    }
}

blob::conformance_tests!(
    fs,
    Fs {
        fill_ahead: bi_ledger::backend::fs::DEFAULT_FILL_AHEAD
    }
);
blob::conformance_tests!(fs_without_fill, Fs { fill_ahead: 0 });

/// The same list, in one go, with the default fs limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_run_all_with_default_limits() {
    struct Defaults;
    impl blob::Backend for Defaults {
        fn namespace(&self, max_blocks: Option<u64>) -> Box<dyn blob::Namespace> {
            Box::new(FsNamespace {
                dir: tempfile::tempdir().unwrap(),
                opts: FsOptions {
                    max_blocks: max_blocks.unwrap_or(FsOptions::default().max_blocks),
                    ..FsOptions::default()
                },
            })
        }
    }
    assert!(blob::CHECKS.len() >= 20);
    blob::run_all(&Defaults).await;
}

/// A store that writes nothing ahead of its appends, for the checks below
/// that put bytes in its files by hand, as a crash leaves them.
fn fs_store(dir: &std::path::Path, max_blocks: u64) -> Arc<dyn BlobStore> {
    Arc::new(
        FsStore::with_options(
            dir,
            FsOptions {
                max_blocks,
                fill_ahead: 0,
                ..FsOptions::default()
            },
        )
        .unwrap()
        .shared(),
    )
}

fn hidden_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Side files are where the fs store says they are, and put leaves no
/// temporary file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_side_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_store(dir.path(), 10);
    s.create("l/seg").await.unwrap();
    s.append("l/seg", 0, b"abc").await.unwrap();
    s.append("l/seg", 3, b"de").await.unwrap();
    s.put("l/checkpoint", b"cp").await.unwrap();
    let lock = s.lock("l/writer").await.unwrap();
    let l = dir.path().join("l");
    assert_eq!(hidden_files(&l), [".seg.blocks", ".writer.lock"]);
    let ends = std::fs::read(l.join(".seg.blocks")).unwrap();
    assert_eq!(ends, [3u64.to_le_bytes(), 5u64.to_le_bytes()].concat());
    // Put blobs and sealed blobs are read-only files.
    assert!(std::fs::metadata(l.join("checkpoint"))
        .unwrap()
        .permissions()
        .readonly());
    s.seal("l/seg").await.unwrap();
    assert!(std::fs::metadata(l.join("seg"))
        .unwrap()
        .permissions()
        .readonly());
    drop(lock);
}

/// Names ending in seven or more digits are filed in a hidden directory by
/// all but their last six (`FsStore::file_path`), their side files beside
/// that directory; a file left where the name would once have been kept,
/// or one in that directory that no name maps to, is not a blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_numbered_names_are_filed_by_all_but_their_last_digits() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_store(dir.path(), 10);
    s.put("l/checkpoint-00000000000001250000", b"cp")
        .await
        .unwrap();
    s.create("l/seg-1234567").await.unwrap();
    s.append("l/seg-1234567", 0, b"abc").await.unwrap();
    s.put("l/k-123456", b"six").await.unwrap();
    let l = dir.path().join("l");
    let file = l.join(".checkpoint-00000000000001/250000");
    assert_eq!(std::fs::read(&file).unwrap(), b"cp");
    assert_eq!(
        FsStore::file_path(dir.path(), "l/checkpoint-00000000000001250000"),
        file
    );
    assert_eq!(std::fs::read(l.join(".seg-1/234567")).unwrap(), b"abc");
    assert_eq!(std::fs::read(l.join("k-123456")).unwrap(), b"six");
    assert_eq!(
        hidden_files(&l),
        [
            ".checkpoint-00000000000001",
            ".seg-1",
            ".seg-1234567.blocks"
        ]
    );
    // Strays: where an unfiled name would be, a file in the directory that
    // is not six digits, and one named like a side file there.
    std::fs::write(l.join("checkpoint-00000000000002000000"), b"x").unwrap();
    std::fs::write(l.join(".checkpoint-00000000000001/25000"), b"x").unwrap();
    std::fs::write(l.join(".checkpoint-00000000000001/.250001.blocks"), b"x").unwrap();
    let names = blob::names(s.as_ref(), "l/").await;
    assert_eq!(
        names,
        [
            "l/checkpoint-00000000000001250000",
            "l/k-123456",
            "l/seg-1234567"
        ]
    );
    assert_eq!(s.info("l/seg-1234567").await.unwrap().block_count, 1);
    s.append("l/seg-1234567", 3, b"de").await.unwrap();
    let listed = s.list("l/seg").await.unwrap();
    assert_eq!((listed[0].size, listed[0].block_count), (5, 2));
}

/// The block-count side file is advisory: after a crash it may miss the
/// last ends (it is not fsynced) or be gone; the count then treats the
/// unrecorded bytes as one block and never counts past the blob's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_block_count_after_losing_side_file_entries() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_store(dir.path(), 4);
    s.create("b").await.unwrap();
    let mut end = 0;
    for i in 0..3u8 {
        end = s.append("b", end, &[i; 10]).await.unwrap();
    }
    drop(s);
    let side = dir.path().join(".b.blocks");
    // Lost the last two ends: 10 recorded, 20 bytes unrecorded = 2 blocks.
    std::fs::write(&side, 10u64.to_le_bytes()).unwrap();
    let s = fs_store(dir.path(), 4);
    assert_eq!(s.info("b").await.unwrap().block_count, 2);
    // Half of an end written: ignored.
    std::fs::write(&side, [&10u64.to_le_bytes()[..], &[20, 0, 0]].concat()).unwrap();
    let s = fs_store(dir.path(), 4);
    assert_eq!(s.info("b").await.unwrap().block_count, 2);
    // Ends past the size (a later append lost by the crash) are ignored.
    std::fs::write(
        &side,
        [10u64, 20, 30, 45]
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let s = fs_store(dir.path(), 4);
    assert_eq!(s.info("b").await.unwrap().block_count, 3);
    // No side file at all: whatever is there is one block.
    std::fs::remove_file(&side).unwrap();
    let s = fs_store(dir.path(), 4);
    assert_eq!(s.info("b").await.unwrap().block_count, 1);
    // Undercounting only delays BlockLimit; appending keeps working and
    // the bytes are intact. The append first records the end of the
    // unrecorded history (30), so that a reader while it holds the lock
    // sees those bytes, then its own (31): the 3 blocks before it count
    // as 1, and the count is 2.
    assert_eq!(s.append("b", 30, b"x").await.unwrap(), 31);
    assert_eq!(s.info("b").await.unwrap().block_count, 2);
    let ends = std::fs::read(&side).unwrap();
    assert_eq!(ends, [30u64, 31].map(u64::to_le_bytes).concat());
    assert_eq!(s.read("b", 0, 10).await.unwrap(), [0u8; 10]);
}

/// Bytes past the last block a crash left (a torn append) are visible to
/// the store as a block of their own until recovery truncates them; a
/// temporary file of an interrupted put is never listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_store(dir.path(), 10);
    s.create("l/seg").await.unwrap();
    s.append("l/seg", 0, b"abc").await.unwrap();
    drop(s);
    // A torn append: bytes written, end never recorded.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("l/seg"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"to").unwrap();
    std::fs::write(dir.path().join("l/.checkpoint-9.tmp-0123"), b"half").unwrap();
    let s = fs_store(dir.path(), 10);
    let info = s.info("l/seg").await.unwrap();
    assert_eq!((info.size, info.block_count), (5, 2));
    let names = blob::names(s.as_ref(), "l/").await;
    assert_eq!(names, ["l/seg"]);
    s.truncate("l/seg", 3).await.unwrap();
    let info = s.info("l/seg").await.unwrap();
    assert_eq!((info.size, info.block_count), (3, 1));
    assert_eq!(s.append("l/seg", 3, b"def").await.unwrap(), 6);
    assert_eq!(s.read_all("l/seg").await.unwrap(), b"abcdef");
    // The interrupted put does not block a real one.
    s.put("l/checkpoint-9", b"whole").await.unwrap();
    assert_eq!(s.read_all("l/checkpoint-9").await.unwrap(), b"whole");
}

/// The writer lock is an flock: it dies with its file descriptor, so a
/// lock file left by a crashed process does not block the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_stale_lock_file_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("l")).unwrap();
    std::fs::write(dir.path().join("l/.writer.lock"), b"").unwrap();
    let s = fs_store(dir.path(), 10);
    let g = s.lock("l/writer").await.unwrap();
    g.check().unwrap();
}

/// A listing skips the side file of a blob read-only since well before it
/// began, if the directory read showed none (put blobs have none), and
/// still finds the side file of one sealed long ago, at the root and in
/// nested directories: the block counts from `list` are `info`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_listing_block_counts_of_long_sealed_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = fs_store(dir.path(), 1_000);
    for name in ["root", "a/nested", "a/b/deeper"] {
        s.create(name).await.unwrap();
        for i in 0..3u64 {
            s.append(name, i * 2, b"xy").await.unwrap();
        }
        s.seal(name).await.unwrap();
        s.put(&format!("{name}-put"), b"one block").await.unwrap();
    }
    // Read-only for more than the margin of a whole second.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let listed = s.list("").await.unwrap();
    assert_eq!(listed.len(), 6);
    for info in &listed {
        assert_eq!(&s.info(&info.name).await.unwrap(), info);
        let blocks = if info.name.ends_with("-put") { 1 } else { 3 };
        assert_eq!((info.block_count, info.sealed), (blocks, true), "{info:?}");
    }
}

/// The fs store writes zeros ahead of its appends (unwritten space, so that
/// an append's `fdatasync` need not write the file's new length): not
/// after a blob's first block, and then up to `fill_ahead` past the block
/// that needed the room. They are not part of the blob: `info`, `list` and
/// `read` stop before them. Appends go over the zeros; another handle that
/// appended meanwhile still makes a stale append fail; `trim` and
/// `seal_at` cut the zeros off, and refuse to cut anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_unwritten_space() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FsOptions {
        fill_ahead: 4096,
        ..FsOptions::default()
    };
    let open = || -> Arc<dyn BlobStore> {
        Arc::new(
            FsStore::with_options(dir.path(), opts.clone())
                .unwrap()
                .shared(),
        )
    };
    let file_len = || std::fs::metadata(dir.path().join("s")).unwrap().len();
    let (a, b) = (open(), open());
    a.create("s").await.unwrap();
    assert_eq!(a.append("s", 0, &[7; 84]).await.unwrap(), 84);
    assert_eq!(file_len(), 84, "nothing is written ahead of a first block");
    assert_eq!(a.append("s", 84, &[1; 100]).await.unwrap(), 184);
    assert_eq!(file_len(), 184 + 4096);
    let info = b.info("s").await.unwrap();
    assert_eq!((info.size, info.block_count), (184, 2));
    assert_eq!(b.list("s").await.unwrap(), [info]);
    let bytes = std::fs::read(dir.path().join("s")).unwrap();
    assert!(bytes[184..].iter().all(|&x| x == 0));
    match b.read("s", 180, 5).await {
        Err(StoreError::OutOfRange { size: 184, .. }) => {}
        r => panic!("a read into the unwritten space: {r:?}"),
    }
    assert_eq!(b.read("s", 180, 4).await.unwrap(), [1; 4]);
    // Over the zeros: the file does not grow.
    assert_eq!(a.append("s", 184, &[2; 1000]).await.unwrap(), 1184);
    assert_eq!(file_len(), 184 + 4096);
    // Another handle sees where the written bytes end, and appends there;
    // the first one, stale now, is refused with the true end.
    let refused = |r: Result<u64, StoreError>, at: u64, end: u64| match r {
        Err(StoreError::OffsetMismatch {
            expected, actual, ..
        }) if (expected, actual) == (at, end) => {}
        r => panic!("a stale append at {at} (the end is {end}): {r:?}"),
    };
    refused(b.append("s", 184, &[9; 5]).await, 184, 1184);
    assert_eq!(b.append("s", 1184, &[3; 10]).await.unwrap(), 1194);
    refused(a.append("s", 1184, &[9; 5]).await, 1184, 1194);
    // A large block that does not fit the zeros grows the file by itself
    // only (more than a sixteenth of `fill_ahead`); a small one, past
    // itself by the zeros.
    assert_eq!(a.append("s", 1194, &[4; 5000]).await.unwrap(), 6194);
    assert_eq!(file_len(), 6194);
    assert_eq!(a.append("s", 6194, &[6; 100]).await.unwrap(), 6294);
    assert_eq!(file_len(), 6294 + 4096);
    let info = a.info("s").await.unwrap();
    assert_eq!((info.size, info.block_count), (6294, 6));
    // Only zeros are cut.
    match a.trim("s", 6000).await {
        Err(StoreError::OffsetMismatch {
            expected: 6000,
            actual: 6294,
            ..
        }) => {}
        r => panic!("trim into the written bytes: {r:?}"),
    }
    assert_eq!(file_len(), 6294 + 4096);
    a.trim("s", 6294).await.unwrap();
    assert_eq!(file_len(), 6294);
    a.trim("s", 6294).await.unwrap();
    // And the next append writes ahead again, from a handle that did not
    // see the cut.
    assert_eq!(b.append("s", 6294, &[5; 6]).await.unwrap(), 6300);
    assert_eq!(file_len(), 6300 + 4096);
    a.seal_at("s", 6300).await.unwrap();
    let info = b.info("s").await.unwrap();
    assert_eq!((info.size, info.block_count, info.sealed), (6300, 7, true));
    let bytes = std::fs::read(dir.path().join("s")).unwrap();
    let want: Vec<u8> = [
        vec![7; 84],
        vec![1; 100],
        vec![2; 1000],
        vec![3; 10],
        vec![4; 5000],
        vec![6; 100],
        vec![5; 6],
    ]
    .concat();
    assert_eq!(bytes, want);
}

/// After a crash kept a block's end from the side file, the store cannot
/// tell a block that ends in zero bytes from the unwritten space after it:
/// it shows the file whole, and the writer (which reads the frames) cuts
/// the zeros off before it appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_unwritten_space_after_a_block_whose_end_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<dyn BlobStore> { Arc::new(FsStore::new(dir.path()).unwrap().shared()) };
    let s = open();
    s.create("z").await.unwrap();
    s.append("z", 0, b"head").await.unwrap();
    s.append("z", 4, &[1, 2, 0, 0]).await.unwrap();
    assert_eq!(s.info("z").await.unwrap().size, 8);
    drop(s);
    let file_len = std::fs::metadata(dir.path().join("z")).unwrap().len();
    assert!(file_len > 8);
    std::fs::write(dir.path().join(".z.blocks"), 4u64.to_le_bytes()).unwrap();
    let s = open();
    let info = s.info("z").await.unwrap();
    assert_eq!((info.size, info.block_count), (file_len, 2));
    match s.append("z", 8, b"tail").await {
        Err(StoreError::OffsetMismatch {
            expected: 8,
            actual,
            ..
        }) => {
            assert_eq!(actual, file_len)
        }
        r => panic!("an append before zeros the store cannot place: {r:?}"),
    }
    s.truncate("z", 8).await.unwrap();
    assert_eq!(s.append("z", 8, b"tail").await.unwrap(), 12);
    assert_eq!(s.read_all("z").await.unwrap(), b"head\x01\x02\x00\x00tail");
}
