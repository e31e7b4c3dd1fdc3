//! The `BlobStore` conformance suite, written once against the trait and run
//! against every implementation.
//!
//! A backend plugs in by implementing [`Backend`] (how to get a fresh, empty
//! namespace, and independent store handles on it) and invoking
//! [`conformance_tests!`] once, in a test file that declares this file as
//! `mod blob`:
//!
//! ```ignore
//! #[path = "conformance/blob.rs"]
//! mod blob;
//! blob::conformance_tests!(azure, AzureBackend::from_env());
//! ```
//!
//! That emits one `#[tokio::test]` per check in a module named by the first
//! argument. [`run_all`] runs the same list in one go.
//!
//! Every check asserts on the error variant *and* its fields, and after
//! every refused write that nothing was written.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bi_ledger::backend::{validate_name, BlobInfo, BlobStore, StoreError};

/// How the suite gets stores from a backend.
pub trait Backend: Send + Sync {
    /// A new, empty namespace (fs: a fresh directory; Azure: a fresh
    /// container or name prefix) that lives until the returned value is
    /// dropped. Stores opened on it hold at most `max_blocks` blocks per
    /// blob (`None`: the backend's default).
    fn namespace(&self, max_blocks: Option<u64>) -> Box<dyn Namespace>;
}

pub trait Namespace: Send + Sync {
    /// A new store handle on this namespace. Two calls give two independent
    /// handles, with nothing shared in memory, as two processes would have.
    fn open(&self) -> Arc<dyn BlobStore>;
}

/// The single list of checks: calls `crate::blob::$m!` with `$args` and
/// the names.
macro_rules! for_each_check {
    ($m:ident ! ($($args:tt)*)) => {
        $crate::blob::$m! { $($args)*
            create_then_already_exists,
            names_are_validated,
            append_at_expected_offset,
            append_at_wrong_offset_writes_nothing,
            append_to_missing_blob,
            block_too_large,
            block_count_and_limit,
            read_out_of_range,
            missing_blob_is_not_found,
            list_by_prefix,
            numbered_names,
            seal_makes_read_only,
            seal_seen_by_other_handle,
            seal_at_only_at_the_expected_length,
            put_is_immutable,
            put_parts_is_one_put,
            concurrent_puts_one_wins,
            second_handle_stale_offset,
            lock_is_exclusive,
            concurrent_appends_one_wins,
            concurrent_appends_across_handles_one_wins,
            truncate_cuts_tail,
            delete_removes_blob,
            list_while_blobs_are_deleted,
        }
    };
}
pub(crate) use for_each_check;

/// Emits one test per check, in `mod $module`, against `$backend` (an
/// expression evaluated afresh in each test). This file must be the
/// crate-level module `blob`.
macro_rules! conformance_tests {
    ($module:ident, $backend:expr) => {
        $crate::blob::for_each_check!(emit_tests!(($module, $backend)));
    };
}
pub(crate) use conformance_tests;

macro_rules! emit_tests {
    (($module:ident, $backend:expr) $($check:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    $crate::blob::$check(&$backend).await;
                }
            )*
        }
    };
}
pub(crate) use emit_tests;

macro_rules! define_run_all {
    (() $($check:ident),* $(,)?) => {
        /// Names of all checks, in the order `run_all` runs them.
        pub const CHECKS: &[&str] = &[$(stringify!($check)),*];

        /// Runs every check in turn against `backend`.
        pub async fn run_all(backend: &dyn Backend) {
            $(
                eprintln!("blob conformance: {}", stringify!($check));
                $check(backend).await;
            )*
        }
    };
}
pub(crate) use define_run_all;

for_each_check!(define_run_all!(()));

// ---------------------------------------------------------------- helpers

fn fresh(b: &dyn Backend) -> (Box<dyn Namespace>, Arc<dyn BlobStore>) {
    let ns = b.namespace(None);
    let s = ns.open();
    (ns, s)
}

async fn size_of(s: &dyn BlobStore, name: &str) -> u64 {
    s.info(name).await.unwrap().size
}

pub use crate::listing::names;

async fn contents(s: &dyn BlobStore, name: &str) -> Vec<u8> {
    s.read_all(name).await.unwrap()
}

fn assert_offset_mismatch(r: Result<u64, StoreError>, blob: &str, exp: u64, act: u64) {
    match r {
        Err(StoreError::OffsetMismatch {
            name,
            expected,
            actual,
        }) => {
            assert_eq!(name, blob);
            assert_eq!((expected, actual), (exp, act), "expected/actual");
        }
        other => panic!("append to {blob} at {exp}: wanted OffsetMismatch, got {other:?}"),
    }
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>, blob: &str) {
    match r {
        Err(StoreError::NotFound { name }) => assert_eq!(name, blob),
        other => panic!("{blob}: wanted NotFound, got {other:?}"),
    }
}

fn assert_already_exists<T: std::fmt::Debug>(r: Result<T, StoreError>, blob: &str) {
    match r {
        Err(StoreError::AlreadyExists { name }) => assert_eq!(name, blob),
        other => panic!("{blob}: wanted AlreadyExists, got {other:?}"),
    }
}

fn assert_sealed<T: std::fmt::Debug>(r: Result<T, StoreError>, blob: &str) {
    match r {
        Err(StoreError::Sealed { name }) => assert_eq!(name, blob),
        other => panic!("{blob}: wanted Sealed, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>, bad: &str) {
    match r {
        Err(StoreError::InvalidName { name, .. }) => assert_eq!(name, bad),
        other => panic!("{bad:?}: wanted InvalidName, got {other:?}"),
    }
}

/// A block whose bytes say which writer and round made it.
fn block(tag: usize, round: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (tag * 31 + round * 7 + i) as u8).collect()
}

// ----------------------------------------------------------------- checks

pub async fn create_then_already_exists(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    s.create("c/a").await.unwrap();
    assert_eq!(
        s.info("c/a").await.unwrap(),
        BlobInfo {
            name: "c/a".into(),
            size: 0,
            block_count: 0,
            sealed: false,
        }
    );
    assert_already_exists(s.create("c/a").await, "c/a");
    // Refusing to create did not touch the blob.
    s.append("c/a", 0, b"x").await.unwrap();
    assert_already_exists(s.create("c/a").await, "c/a");
    assert_eq!(contents(s.as_ref(), "c/a").await, b"x");
    // A put blob also counts as existing, and nested names work.
    s.put("c/p", b"immutable").await.unwrap();
    assert_already_exists(s.create("c/p").await, "c/p");
    s.create("c/d/e/f").await.unwrap();
    assert_eq!(size_of(s.as_ref(), "c/d/e/f").await, 0);
}

pub async fn names_are_validated(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    s.create("ok/blob").await.unwrap();
    s.append("ok/blob", 0, b"data").await.unwrap();
    let bad = [
        "",
        ".hidden",
        "ok/.blob.blocks",
        "../escape",
        "ok/../blob",
        "ok/./blob",
        "ok//blob",
        "/abs",
        "trailing/",
        "sp ace",
        "back\\slash",
    ];
    for name in bad {
        assert!(validate_name(name).is_err(), "{name:?}");
        assert_invalid(s.create(name).await, name);
        assert_invalid(s.put(name, b"x").await, name);
        assert_invalid(s.append(name, 0, b"x").await, name);
        assert_invalid(s.read(name, 0, 0).await, name);
        assert_invalid(s.info(name).await, name);
        assert_invalid(s.seal(name).await, name);
        assert_invalid(s.truncate(name, 0).await, name);
        assert_invalid(s.delete(name).await, name);
        assert_invalid(s.lock(name).await, name);
    }
    // Nothing got created under any spelling.
    assert_eq!(names(s.as_ref(), "").await, ["ok/blob"]);
    assert_eq!(contents(s.as_ref(), "ok/blob").await, b"data");
}

pub async fn append_at_expected_offset(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    s.create("a").await.unwrap();
    assert_eq!(s.append("a", 0, b"hello").await.unwrap(), 5);
    assert_eq!(s.append("a", 5, b" world").await.unwrap(), 11);
    let big = block(1, 0, 70_000);
    assert_eq!(s.append("a", 11, &big).await.unwrap(), 70_011);
    let info = s.info("a").await.unwrap();
    assert_eq!(
        (info.size, info.block_count, info.sealed),
        (70_011, 3, false)
    );
    assert_eq!(s.read("a", 0, 11).await.unwrap(), b"hello world");
    assert_eq!(s.read("a", 5, 6).await.unwrap(), b" world");
    assert_eq!(s.read("a", 11, 70_000).await.unwrap(), big);
    assert_eq!(s.read("a", 70_010, 1).await.unwrap(), &big[69_999..]);
    assert_eq!(s.read("a", 3, 0).await.unwrap(), b"");
    let all = contents(s.as_ref(), "a").await;
    assert_eq!(&all[..11], b"hello world");
    assert_eq!(&all[11..], &big[..]);
    // A fresh handle sees the same bytes and blocks.
    let s2 = _ns.open();
    assert_eq!(s2.info("a").await.unwrap(), info);
    assert_eq!(contents(s2.as_ref(), "a").await, all);
}

pub async fn append_at_wrong_offset_writes_nothing(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    s.create("w").await.unwrap();
    assert_offset_mismatch(s.append("w", 1, b"x").await, "w", 1, 0);
    assert_eq!(s.append("w", 0, b"abc").await.unwrap(), 3);
    assert_offset_mismatch(s.append("w", 0, b"xyz").await, "w", 0, 3);
    assert_offset_mismatch(s.append("w", 2, b"xyz").await, "w", 2, 3);
    assert_offset_mismatch(s.append("w", 7, b"xyz").await, "w", 7, 3);
    let info = s.info("w").await.unwrap();
    assert_eq!((info.size, info.block_count), (3, 1));
    assert_eq!(contents(s.as_ref(), "w").await, b"abc");
    // The refusals left the blob appendable at its true end.
    assert_eq!(s.append("w", 3, b"def").await.unwrap(), 6);
    assert_eq!(contents(s.as_ref(), "w").await, b"abcdef");
    assert_eq!(s.info("w").await.unwrap().block_count, 2);
}

pub async fn append_to_missing_blob(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    assert_not_found(s.append("nope", 0, b"x").await, "nope");
    assert_not_found(s.append("dir/nope", 0, b"x").await, "dir/nope");
    // Appending does not create.
    assert_not_found(s.info("nope").await, "nope");
    assert!(s.list("").await.unwrap().is_empty());
}

pub async fn block_too_large(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    let max = s.max_block_size();
    assert!(max > 0);
    s.create("big").await.unwrap();
    s.append("big", 0, b"head").await.unwrap();
    let too_big = vec![7u8; max + 1];
    match s.append("big", 4, &too_big).await {
        Err(StoreError::BlockTooLarge { size, limit }) => {
            assert_eq!((size, limit), (max + 1, max));
        }
        other => panic!("wanted BlockTooLarge, got {other:?}"),
    }
    let info = s.info("big").await.unwrap();
    assert_eq!((info.size, info.block_count), (4, 1));
    // Exactly the limit is fine.
    let at_limit = block(3, 0, max);
    assert_eq!(s.append("big", 4, &at_limit).await.unwrap(), 4 + max as u64);
    assert_eq!(s.read("big", 4, max as u64).await.unwrap(), at_limit);
    assert_eq!(s.info("big").await.unwrap().block_count, 2);
}

pub async fn block_count_and_limit(b: &dyn Backend) {
    let ns = b.namespace(Some(3));
    let s = ns.open();
    assert_eq!(s.max_blocks(), 3);
    s.create("l").await.unwrap();
    let mut end = 0;
    for i in 0..3u64 {
        end = s.append("l", end, &block(i as usize, 0, 10)).await.unwrap();
        assert_eq!(end, (i + 1) * 10);
        assert_eq!(s.info("l").await.unwrap().block_count, i + 1);
    }
    match s.append("l", 30, b"one too many").await {
        Err(StoreError::BlockLimit { name, limit }) => {
            assert_eq!((name.as_str(), limit), ("l", 3));
        }
        other => panic!("wanted BlockLimit, got {other:?}"),
    }
    let info = s.info("l").await.unwrap();
    assert_eq!((info.size, info.block_count), (30, 3));
    // The count is the store's, not the handle's: a new handle agrees and
    // is refused too.
    let s2 = ns.open();
    assert_eq!(s2.info("l").await.unwrap().block_count, 3);
    assert!(matches!(
        s2.append("l", 30, b"x").await,
        Err(StoreError::BlockLimit { limit: 3, .. })
    ));
    let mut want = Vec::new();
    for i in 0..3 {
        want.extend(block(i, 0, 10));
    }
    assert_eq!(contents(s2.as_ref(), "l").await, want);
    // The limit is per blob.
    s.create("m").await.unwrap();
    assert_eq!(s.append("m", 0, b"fresh").await.unwrap(), 5);
}

pub async fn read_out_of_range(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    s.create("r").await.unwrap();
    s.append("r", 0, b"0123456789").await.unwrap();
    for (offset, len) in [(0, 11), (10, 1), (9, 2), (11, 0), (100, 5)] {
        match s.read("r", offset, len).await {
            Err(StoreError::OutOfRange {
                name,
                offset: o,
                end,
                size,
            }) => {
                assert_eq!(name, "r");
                assert_eq!((o, end, size), (offset, offset + len, 10));
            }
            other => panic!("read {offset}+{len}: wanted OutOfRange, got {other:?}"),
        }
    }
    // An end that overflows u64 is out of range, not a panic.
    assert!(matches!(
        s.read("r", u64::MAX, 2).await,
        Err(StoreError::OutOfRange { size: 10, .. })
    ));
    assert_eq!(s.read("r", 10, 0).await.unwrap(), b"");
    assert_eq!(s.read("r", 0, 10).await.unwrap(), b"0123456789");
    // An empty blob: only the empty read at 0 is in range.
    s.create("e").await.unwrap();
    assert_eq!(s.read("e", 0, 0).await.unwrap(), b"");
    assert!(matches!(
        s.read("e", 0, 1).await,
        Err(StoreError::OutOfRange { size: 0, .. })
    ));
}

pub async fn missing_blob_is_not_found(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    assert_not_found(s.read("m/x", 0, 0).await, "m/x");
    assert_not_found(s.read_all("m/x").await, "m/x");
    assert_not_found(s.info("m/x").await, "m/x");
    assert_not_found(s.seal("m/x").await, "m/x");
    assert_not_found(s.delete("m/x").await, "m/x");
    // A name that is only a prefix of other blobs ("a directory") is not a
    // blob either.
    s.create("m/dir/child").await.unwrap();
    s.append("m/dir/child", 0, b"c").await.unwrap();
    assert_not_found(s.read("m/dir", 0, 0).await, "m/dir");
    assert_not_found(s.info("m/dir").await, "m/dir");
    assert_not_found(s.append("m/dir", 0, b"x").await, "m/dir");
    assert_not_found(s.seal("m/dir").await, "m/dir");
    assert_not_found(s.delete("m/dir").await, "m/dir");
    assert_not_found(s.truncate("m/dir", 0).await, "m/dir");
    assert_not_found(s.info("m").await, "m");
    assert_eq!(contents(s.as_ref(), "m/dir/child").await, b"c");
}

/// Names that end in long runs of digits, as a ledger names its
/// checkpoints and caches (a store may file them apart, as the fs store
/// does by all but their last six digits): listed by prefixes that end at,
/// before and after any digit, read, counted and deleted like any other.
pub async fn numbered_names(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    let put = [
        "n/k-00000000000001250000",
        "n/k-00000000000001250001",
        "n/k-00000000000002000000",
        "n/k-0000000",
        "n/k-123456",
        "n/k-1234567",
        "n/7654321",
        "n/x/k-00000000000001250000",
    ];
    for name in put {
        s.put(name, name.as_bytes()).await.unwrap();
    }
    let appended = "n/k-00000000000001250002";
    s.create(appended).await.unwrap();
    s.append(appended, 0, b"ab").await.unwrap();
    s.append(appended, 2, b"c").await.unwrap();
    s.seal(appended).await.unwrap();

    let names = |p: &'static str| {
        let s = s.clone();
        async move { names(s.as_ref(), p).await }
    };
    let mut all: Vec<&str> = put.iter().copied().chain([appended]).collect();
    all.sort();
    assert_eq!(names("n/").await, all);
    for (prefix, want) in [
        (
            "n/k-00000000000001",
            &[
                "n/k-00000000000001250000",
                "n/k-00000000000001250001",
                "n/k-00000000000001250002",
            ][..],
        ),
        (
            "n/k-0000000000000125000",
            &[
                "n/k-00000000000001250000",
                "n/k-00000000000001250001",
                "n/k-00000000000001250002",
            ],
        ),
        ("n/k-00000000000001250001", &["n/k-00000000000001250001"]),
        (
            "n/k-0000000000000",
            &[
                "n/k-00000000000001250000",
                "n/k-00000000000001250001",
                "n/k-00000000000001250002",
                "n/k-00000000000002000000",
            ],
        ),
        (
            "n/k-0000000",
            &[
                "n/k-0000000",
                "n/k-00000000000001250000",
                "n/k-00000000000001250001",
                "n/k-00000000000001250002",
                "n/k-00000000000002000000",
            ],
        ),
        ("n/k-00000000000003", &[]),
        ("n/k-12345", &["n/k-123456", "n/k-1234567"]),
        ("n/k-1234567", &["n/k-1234567"]),
        ("n/7", &["n/7654321"]),
        ("n/x/", &["n/x/k-00000000000001250000"]),
    ] {
        assert_eq!(names(prefix).await, want, "prefix {prefix:?}");
    }
    for name in put {
        assert_eq!(s.read_all(name).await.unwrap(), name.as_bytes(), "{name}");
        assert_eq!(s.info(name).await.unwrap().block_count, 1, "{name}");
    }
    let info = s.info(appended).await.unwrap();
    assert_eq!((info.size, info.block_count, info.sealed), (3, 2, true));
    let listed = s.list(appended).await.unwrap();
    assert_eq!(listed, [info]);
    s.delete("n/k-00000000000001250001").await.unwrap();
    assert_eq!(
        names("n/k-000000000000012").await,
        ["n/k-00000000000001250000", "n/k-00000000000001250002"]
    );
    assert!(matches!(
        s.read_all("n/k-00000000000001250001").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn list_by_prefix(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    // Created out of order, with every kind of side state a store may keep:
    // block indexes, temp files of puts, lock files, sealed blobs.
    for name in ["l/b2", "l/a", "l/c/d", "l/b1", "lx", "m/a", "l/cc"] {
        s.create(name).await.unwrap();
    }
    s.append("l/a", 0, b"aaaa").await.unwrap();
    s.append("l/a", 4, b"aa").await.unwrap();
    s.append("l/c/d", 0, b"d").await.unwrap();
    s.append("l/b1", 0, b"bb").await.unwrap();
    s.append("l/b1", 2, b"b").await.unwrap();
    s.seal("l/b1").await.unwrap();
    s.put("l/checkpoint-2", b"two").await.unwrap();
    s.put("l/checkpoint-1", b"one").await.unwrap();
    let _lock = s.lock("l/writer").await.unwrap();
    let _lock2 = s.lock("l/c/writer").await.unwrap();

    let list = |p: &'static str| {
        let s = s.clone();
        async move {
            let infos = s.list(p).await.unwrap();
            for i in &infos {
                validate_name(&i.name).unwrap();
                assert!(i.name.starts_with(p), "{} listed for prefix {p:?}", i.name);
            }
            infos
        }
    };
    let names = |v: &[BlobInfo]| v.iter().map(|b| b.name.clone()).collect::<Vec<_>>();

    let l = list("l/").await;
    assert_eq!(
        names(&l),
        [
            "l/a",
            "l/b1",
            "l/b2",
            "l/c/d",
            "l/cc",
            "l/checkpoint-1",
            "l/checkpoint-2"
        ]
    );
    let by_name = |n: &str| l.iter().find(|b| b.name == n).unwrap().clone();
    assert_eq!(
        by_name("l/a"),
        BlobInfo {
            name: "l/a".into(),
            size: 6,
            block_count: 2,
            sealed: false
        }
    );
    // Sealed with blocks: a store that learns block counts from side
    // state must still find it for a read-only blob.
    assert_eq!(
        by_name("l/b1"),
        BlobInfo {
            name: "l/b1".into(),
            size: 3,
            block_count: 2,
            sealed: true
        }
    );
    assert!(!by_name("l/b2").sealed);
    assert_eq!(by_name("l/checkpoint-1").size, 3);
    // Info from the listing agrees with info().
    for i in &l {
        if !i.name.starts_with("l/checkpoint-") {
            assert_eq!(&s.info(&i.name).await.unwrap(), i);
        }
    }

    assert_eq!(names(&list("l/b").await), ["l/b1", "l/b2"]);
    assert_eq!(
        names(&list("l/checkpoint-").await),
        ["l/checkpoint-1", "l/checkpoint-2"]
    );
    assert_eq!(
        names(&list("l/c").await),
        ["l/c/d", "l/cc", "l/checkpoint-1", "l/checkpoint-2"]
    );
    assert_eq!(names(&list("l/c/").await), ["l/c/d"]);
    assert_eq!(names(&list("l/a").await), ["l/a"]);
    let mut all_l = names(&l);
    all_l.push("lx".into());
    assert_eq!(names(&list("l").await), all_l);
    assert!(list("nope/").await.is_empty());
    assert!(list("l/z").await.is_empty());
    assert!(list("m/b").await.is_empty());
    assert_eq!(names(&list("m/").await), ["m/a"]);

    // Everything, sorted and unique, and no side files.
    let all = names(&list("").await);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted);
    assert_eq!(all.len(), 9, "{all:?}");
}

pub async fn seal_makes_read_only(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    s.create("s").await.unwrap();
    s.append("s", 0, b"abc").await.unwrap();
    s.append("s", 3, b"de").await.unwrap();
    s.seal("s").await.unwrap();
    let info = s.info("s").await.unwrap();
    assert_eq!((info.size, info.block_count, info.sealed), (5, 2, true));
    assert_sealed(s.append("s", 5, b"f").await, "s");
    // Reads still work, whole and ranged.
    assert_eq!(contents(s.as_ref(), "s").await, b"abcde");
    assert_eq!(s.read("s", 1, 3).await.unwrap(), b"bcd");
    // Cutting a sealed blob is refused too (the store may refuse every
    // truncate, or this one for being sealed).
    assert!(matches!(
        s.truncate("s", 3).await,
        Err(StoreError::Sealed { .. } | StoreError::Unsupported(_))
    ));
    // Put cannot replace it either.
    assert_already_exists(s.put("s", b"other").await, "s");
    assert_eq!(contents(s.as_ref(), "s").await, b"abcde");
    assert_eq!(s.info("s").await.unwrap(), info);
    // An empty blob can be sealed too.
    s.create("empty").await.unwrap();
    s.seal("empty").await.unwrap();
    assert_sealed(s.append("empty", 0, b"x").await, "empty");
    assert_eq!(size_of(s.as_ref(), "empty").await, 0);
}

pub async fn seal_seen_by_other_handle(b: &dyn Backend) {
    let ns = b.namespace(None);
    let (a, other) = (ns.open(), ns.open());
    a.create("s").await.unwrap();
    // `a` has appended, so whatever it caches about the blob is warm.
    a.append("s", 0, b"abc").await.unwrap();
    other.seal("s").await.unwrap();
    assert_sealed(a.append("s", 3, b"d").await, "s");
    assert!(a.info("s").await.unwrap().sealed);
    assert_eq!(contents(a.as_ref(), "s").await, b"abc");
    let fresh = ns.open();
    assert!(fresh.info("s").await.unwrap().sealed);
    assert_sealed(fresh.append("s", 3, b"d").await, "s");
}

/// `seal_at` seals only a blob of the length given: one another handle
/// appended to since is refused with `OffsetMismatch` and stays open (the
/// writer's rollover relies on it); one already sealed at that length is
/// fine.
pub async fn seal_at_only_at_the_expected_length(b: &dyn Backend) {
    let ns = b.namespace(None);
    let (a, other) = (ns.open(), ns.open());
    a.create("s").await.unwrap();
    a.append("s", 0, b"abc").await.unwrap();
    other.append("s", 3, b"de").await.unwrap();
    match a.seal_at("s", 3).await {
        Err(StoreError::OffsetMismatch {
            name,
            expected: 3,
            actual: 5,
        }) => assert_eq!(name, "s"),
        r => panic!("seal_at a stale length: {r:?}"),
    }
    assert!(!a.info("s").await.unwrap().sealed);
    assert_eq!(a.append("s", 5, b"f").await.unwrap(), 6);
    a.seal_at("s", 6).await.unwrap();
    assert!(other.info("s").await.unwrap().sealed);
    assert_sealed(other.append("s", 6, b"g").await, "s");
    // Again, from either handle: already sealed at that length.
    a.seal_at("s", 6).await.unwrap();
    other.seal_at("s", 6).await.unwrap();
    assert!(matches!(
        other.seal_at("s", 5).await,
        Err(StoreError::OffsetMismatch { actual: 6, .. })
    ));
    assert_not_found(a.seal_at("missing", 0).await, "missing");
    assert_eq!(contents(a.as_ref(), "s").await, b"abcdef");
}

pub async fn put_is_immutable(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    let data = block(9, 9, 100_000);
    s.put("p/one", &data).await.unwrap();
    assert_eq!(contents(s.as_ref(), "p/one").await, data);
    assert_eq!(s.read("p/one", 99_990, 10).await.unwrap(), &data[99_990..]);
    assert_eq!(size_of(s.as_ref(), "p/one").await, 100_000);
    // Never overwritten, by put or by create.
    assert_already_exists(s.put("p/one", b"replacement").await, "p/one");
    assert_already_exists(s.create("p/one").await, "p/one");
    // Nor appended to.
    assert!(s.append("p/one", 100_000, b"more").await.is_err());
    assert_eq!(contents(s.as_ref(), "p/one").await, data);
    // Put refuses an existing appendable blob too.
    s.create("p/app").await.unwrap();
    s.append("p/app", 0, b"log").await.unwrap();
    assert_already_exists(s.put("p/app", b"x").await, "p/app");
    assert_eq!(contents(s.as_ref(), "p/app").await, b"log");
    // Empty and nested blobs.
    s.put("p/empty", b"").await.unwrap();
    assert_eq!(contents(s.as_ref(), "p/empty").await, b"");
    s.put("p/deep/er/blob", b"deep").await.unwrap();
    assert_eq!(contents(s.as_ref(), "p/deep/er/blob").await, b"deep");
    // Another handle reads them; the listing shows only the blobs.
    let s2 = _ns.open();
    assert_eq!(contents(s2.as_ref(), "p/one").await, data);
    assert_eq!(
        names(s2.as_ref(), "p/").await,
        ["p/app", "p/deep/er/blob", "p/empty", "p/one"]
    );
}

/// `put_parts` writes its parts as one blob, with `put`'s rules.
pub async fn put_parts_is_one_put(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    let (head, body) = (block(3, 1, 70), block(4, 2, 300_000));
    s.put_parts("pp/snapshot", &[&head, &body, b"", b"end"])
        .await
        .unwrap();
    assert_eq!(
        contents(s.as_ref(), "pp/snapshot").await,
        [&head[..], &body, b"end"].concat()
    );
    assert_already_exists(s.put_parts("pp/snapshot", &[b"x"]).await, "pp/snapshot");
    assert_already_exists(s.put("pp/snapshot", b"x").await, "pp/snapshot");
    s.put_parts("pp/none", &[]).await.unwrap();
    assert_eq!(contents(s.as_ref(), "pp/none").await, b"");
    assert_eq!(size_of(_ns.open().as_ref(), "pp/snapshot").await, 300_073);
}

pub async fn concurrent_puts_one_wins(b: &dyn Backend) {
    let ns = b.namespace(None);
    let handles: Vec<_> = (0..4).map(|_| ns.open()).collect();
    const TASKS: usize = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = handles[t % handles.len()].clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (t, s.put("race/blob", &block(t, 1, 4096)).await)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (t, r) = task.await.unwrap();
        match r {
            Ok(()) => winners.push(t),
            Err(StoreError::AlreadyExists { name }) => assert_eq!(name, "race/blob"),
            Err(e) => panic!("put {t}: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    // The blob is the winner's, whole.
    assert_eq!(
        contents(handles[0].as_ref(), "race/blob").await,
        block(winners[0], 1, 4096)
    );
    assert_eq!(handles[0].list("race/").await.unwrap().len(), 1);
}

pub async fn second_handle_stale_offset(b: &dyn Backend) {
    let ns = b.namespace(None);
    let (a, other) = (ns.open(), ns.open());
    a.create("t").await.unwrap();
    assert_already_exists(other.create("t").await, "t");
    assert_eq!(a.append("t", 0, b"abc").await.unwrap(), 3);
    let info = other.info("t").await.unwrap();
    assert_eq!((info.size, info.block_count), (3, 1));
    // The second writer believes the blob is empty: refused.
    assert_offset_mismatch(other.append("t", 0, b"xyz").await, "t", 0, 3);
    assert_eq!(other.append("t", 3, b"def").await.unwrap(), 6);
    // Now the first is stale, although it wrote last time.
    assert_offset_mismatch(a.append("t", 3, b"ghi").await, "t", 3, 6);
    for s in [&a, &other] {
        let info = s.info("t").await.unwrap();
        assert_eq!((info.size, info.block_count), (6, 2));
        assert_eq!(contents(s.as_ref(), "t").await, b"abcdef");
    }
    assert_eq!(a.append("t", 6, b"ghi").await.unwrap(), 9);
    assert_eq!(other.info("t").await.unwrap().block_count, 3);
    assert_eq!(contents(other.as_ref(), "t").await, b"abcdefghi");
}

pub async fn lock_is_exclusive(b: &dyn Backend) {
    let ns = b.namespace(None);
    let (a, other) = (ns.open(), ns.open());
    let g1 = a.lock("k/writer").await.unwrap();
    g1.check().unwrap();
    for s in [&a, &other] {
        match s.lock("k/writer").await {
            Err(StoreError::Locked { what, .. }) => assert_eq!(what, "k/writer"),
            r => panic!("second lock: wanted Locked, got {r:?}"),
        }
    }
    // Locks are per name, and are not blobs.
    let g_other = other.lock("k/other").await.unwrap();
    assert!(a.list("k/").await.unwrap().is_empty());
    assert_not_found(a.info("k/writer").await, "k/writer");
    g1.check().unwrap();
    drop(g1);
    // Released on drop: another handle gets it (allowing a backend a
    // moment if release is asynchronous).
    let g2 = lock_within(&other, "k/writer", Duration::from_secs(10)).await;
    g2.check().unwrap();
    assert!(matches!(
        a.lock("k/writer").await,
        Err(StoreError::Locked { .. })
    ));
    drop(g2);
    let g3 = lock_within(&a, "k/writer", Duration::from_secs(10)).await;
    g3.check().unwrap();
    g_other.check().unwrap();
}

async fn lock_within(
    s: &Arc<dyn BlobStore>,
    name: &str,
    limit: Duration,
) -> Box<dyn bi_ledger::backend::WriterLock> {
    let start = Instant::now();
    loop {
        match s.lock(name).await {
            Ok(g) => return g,
            Err(StoreError::Locked { .. }) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("lock {name} after release: {e:?}"),
        }
    }
}

/// `rounds` rounds of `tasks` tasks all appending at the same expected
/// offset, spread over `handles`: each round exactly one succeeds.
async fn append_race(handles: Vec<Arc<dyn BlobStore>>, tasks: usize, rounds: usize) {
    handles[0].create("race").await.unwrap();
    let mut end = 0u64;
    let mut want = Vec::new();
    for round in 0..rounds {
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
        let mut joins = Vec::new();
        for t in 0..tasks {
            let s = handles[t % handles.len()].clone();
            let barrier = barrier.clone();
            // Different lengths, so a lost update would show in the size.
            let data = block(t, round, 100 + t);
            joins.push(tokio::spawn(async move {
                barrier.wait().await;
                (t, s.append("race", end, &data).await)
            }));
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for j in joins {
            let (t, r) = j.await.unwrap();
            match r {
                Ok(new_end) => winners.push((t, new_end)),
                Err(StoreError::OffsetMismatch {
                    expected, actual, ..
                }) => {
                    assert_eq!(expected, end);
                    losers.push(actual);
                }
                Err(e) => panic!("round {round} task {t}: {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (t, new_end) = winners[0];
        assert_eq!(new_end, end + 100 + t as u64);
        // Every loser saw the winner's block.
        assert!(losers.iter().all(|&a| a == new_end), "{losers:?}");
        want.extend(block(t, round, 100 + t));
        end = new_end;
    }
    let info = handles[0].info("race").await.unwrap();
    assert_eq!((info.size, info.block_count), (end, rounds as u64));
    assert_eq!(contents(handles[0].as_ref(), "race").await, want);
}

pub async fn concurrent_appends_one_wins(b: &dyn Backend) {
    let ns = b.namespace(None);
    append_race(vec![ns.open()], 16, 8).await;
}

pub async fn concurrent_appends_across_handles_one_wins(b: &dyn Backend) {
    let ns = b.namespace(None);
    append_race((0..8).map(|_| ns.open()).collect(), 16, 8).await;
}

/// `truncate` is for crash recovery, and a store whose appends cannot tear
/// may refuse it with `Unsupported`. A store that does it must cut exactly.
pub async fn truncate_cuts_tail(b: &dyn Backend) {
    let (_ns, s) = fresh(b);
    s.create("t").await.unwrap();
    s.append("t", 0, b"abc").await.unwrap();
    s.append("t", 3, b"defg").await.unwrap();
    match s.truncate("t", 3).await {
        Err(StoreError::Unsupported(_)) => {
            assert_eq!(contents(s.as_ref(), "t").await, b"abcdefg");
            return;
        }
        r => r.unwrap(),
    }
    let info = s.info("t").await.unwrap();
    assert_eq!((info.size, info.block_count), (3, 1));
    assert_eq!(contents(s.as_ref(), "t").await, b"abc");
    assert_offset_mismatch(s.append("t", 7, b"x").await, "t", 7, 3);
    assert_eq!(s.append("t", 3, b"XY").await.unwrap(), 5);
    assert_eq!(contents(s.as_ref(), "t").await, b"abcXY");
    assert_eq!(s.info("t").await.unwrap().block_count, 2);
    // A cut inside a block leaves the rest of it as one block.
    s.append("t", 5, b"0123456789").await.unwrap();
    s.truncate("t", 9).await.unwrap();
    let info = s.info("t").await.unwrap();
    assert_eq!((info.size, info.block_count), (9, 3));
    assert_eq!(contents(s.as_ref(), "t").await, b"abcXY0123");
    // A fresh handle agrees.
    assert_eq!(_ns.open().info("t").await.unwrap(), info);
    // Truncate only cuts: it never grows a blob.
    assert!(matches!(
        s.truncate("t", 10).await,
        Err(StoreError::OutOfRange { size: 9, .. })
    ));
    assert_eq!(contents(s.as_ref(), "t").await, b"abcXY0123");
    s.truncate("t", 9).await.unwrap();
    s.truncate("t", 0).await.unwrap();
    assert_eq!(
        s.info("t").await.unwrap(),
        BlobInfo {
            name: "t".into(),
            size: 0,
            block_count: 0,
            sealed: false
        }
    );
    assert_eq!(s.append("t", 0, b"new").await.unwrap(), 3);
    assert_not_found(s.truncate("missing", 0).await, "missing");
}

/// `delete` is for blobs that are not evidence (old snapshots), but it must
/// remove a blob completely: a blob later created under the name starts
/// from nothing.
pub async fn delete_removes_blob(b: &dyn Backend) {
    let ns = b.namespace(Some(3));
    let s = ns.open();
    s.put("d/snapshot-1", b"old state").await.unwrap();
    s.put("d/snapshot-2", b"new state").await.unwrap();
    s.delete("d/snapshot-1").await.unwrap();
    assert_not_found(s.info("d/snapshot-1").await, "d/snapshot-1");
    assert_not_found(s.read_all("d/snapshot-1").await, "d/snapshot-1");
    assert_not_found(s.delete("d/snapshot-1").await, "d/snapshot-1");
    assert_eq!(names(s.as_ref(), "d/").await, ["d/snapshot-2"]);
    // The name is free again, for a put with other bytes.
    s.put("d/snapshot-1", b"again").await.unwrap();
    assert_eq!(contents(s.as_ref(), "d/snapshot-1").await, b"again");
    assert_eq!(contents(s.as_ref(), "d/snapshot-2").await, b"new state");

    // An appendable blob: its successor inherits neither bytes nor blocks.
    s.create("d/log").await.unwrap();
    let mut end = 0;
    for i in 0..3 {
        end = s.append("d/log", end, &block(i, 0, 8)).await.unwrap();
    }
    s.delete("d/log").await.unwrap();
    assert_not_found(s.append("d/log", 24, b"x").await, "d/log");
    s.create("d/log").await.unwrap();
    assert_eq!(
        s.info("d/log").await.unwrap(),
        BlobInfo {
            name: "d/log".into(),
            size: 0,
            block_count: 0,
            sealed: false
        }
    );
    for i in 0..3u64 {
        s.append("d/log", i, b"y").await.unwrap();
    }
    assert!(matches!(
        s.append("d/log", 3, b"y").await,
        Err(StoreError::BlockLimit { limit: 3, .. })
    ));
    assert_eq!(contents(ns.open().as_ref(), "d/log").await, b"yyy");
}

/// A listing taken while blobs are put and deleted (the writer prunes old
/// snapshots while readers open) lists each blob or not, but never fails
/// because one went away under it.
pub async fn list_while_blobs_are_deleted(b: &dyn Backend) {
    let ns = b.namespace(None);
    let (s, churn) = (ns.open(), ns.open());
    for i in 0..20 {
        s.put(&format!("p/keep-{i:02}"), b"kept").await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let churner = tokio::spawn(async move {
        let mut i = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let name = format!("p/gone-{i}");
            churn.put(&name, b"brief").await.unwrap();
            churn.delete(&name).await.unwrap();
            i += 1;
        }
        i
    });
    for _ in 0..200 {
        let listed = s.list("p/").await.expect("a listing during deletes");
        let kept = listed
            .iter()
            .filter(|b| b.name.starts_with("p/keep-"))
            .count();
        assert_eq!(kept, 20, "{listed:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(churner.await.unwrap() > 0, "the churn ran");
}
