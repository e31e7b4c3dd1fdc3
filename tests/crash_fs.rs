//! Crash recovery on the fs backend, following `src/backend/fs/README.md`
//! step by step: for each point where a crash can interrupt the life of an
//! event, reproduce the files that crash leaves and check that
//! `Ledger::open` recovers exactly as documented: every acknowledged event
//! before a torn batch intact, the next sequence number right, and
//! `LedgerReader::verify` clean afterwards. Then the damage a crash cannot
//! cause, which must stop `open` with an integrity error that names the
//! segment, byte offset and sequence number.
//!
//! A ledger is "crashed" by dropping every handle without `close()`: the
//! writer stops with the log durable and no final checkpoint. The files are
//! then edited as the crash would have left them, in a copy per case, and
//! opened by a fresh `FsStore`, as the next process would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::format::segment::{SegmentHeader, HEADER_LEN};
use bi_ledger::ledger::layout;
use bi_ledger::ledger::verify::VerifyReport;
use bi_ledger::model::Record;
use bi_ledger::{IntegrityError, Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent};
use ed25519_dalek::SigningKey;
use serde_json::json;

#[path = "support/dirs.rs"]
mod dirs;
use dirs::copy_dir;

const NAME: &str = "main";

fn opts(segment_max_blocks: u64) -> LedgerOptions {
    LedgerOptions {
        segment_max_blocks,
        checkpoint_every_events: None,
        checkpoint_interval: None,
        ..LedgerOptions::new(SigningKey::from_bytes(&[7; 32]))
    }
}

fn store(dir: &Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

fn seg_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(layout::segment(NAME, index))
}

fn seg_name(index: u64) -> String {
    layout::segment(NAME, index)
}

fn event(i: u64) -> NewEvent {
    NewEvent::json(format!("s{}", i % 3), "Happened", &json!({ "i": i }))
}

/// A crashed ledger: its files, and what was acknowledged batch by batch.
struct Crashed {
    dir: tempfile::TempDir,
    max_blocks: u64,
    /// Every acknowledged record, in order.
    records: Vec<Record>,
    /// Per batch: (segment, offset, first seq, number of records).
    batches: Vec<Batch>,
}

#[derive(Clone, Copy, Debug)]
struct Batch {
    segment: u64,
    offset: u64,
    first_seq: u64,
}

impl Crashed {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Records acknowledged before batch `b`.
    fn before(&self, b: usize) -> &[Record] {
        &self.records[..self.batches[b].first_seq as usize]
    }

    /// Byte range of batch `b` in its segment.
    fn range(&self, b: usize) -> (u64, u64) {
        let this = self.batches[b];
        let end = match self.batches.get(b + 1) {
            Some(next) if next.segment == this.segment => next.offset,
            _ => written_len(&seg_path(self.path(), this.segment)),
        };
        (this.offset, end)
    }

    /// A copy of the crashed files, to damage without touching the original.
    fn copy(&self) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        copy_dir(self.path(), to.path());
        to
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// The segment's bytes less the unwritten space the fs store writes ahead
/// of its appends (zeros). Every batch here ends in a JSON payload, never in
/// a zero byte.
fn written_len(p: &Path) -> u64 {
    let bytes = std::fs::read(p).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// What a crash inside an append over unwritten space leaves: the block's
/// bytes from `from` on never reached the disk, and are still zeros.
fn zero_from(p: &Path, from: u64) {
    let len = file_len(p);
    let sealed = is_sealed(p);
    set_sealed(p, false);
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(p).unwrap(),
        &vec![0; (len - from) as usize],
        from,
    )
    .unwrap();
    set_sealed(p, sealed);
}

fn set_sealed(p: &Path, sealed: bool) {
    let mut perms = std::fs::metadata(p).unwrap().permissions();
    perms.set_readonly(sealed);
    std::fs::set_permissions(p, perms).unwrap();
}

fn is_sealed(p: &Path) -> bool {
    std::fs::metadata(p).unwrap().permissions().readonly()
}

fn truncate(p: &Path, len: u64) {
    let sealed = is_sealed(p);
    set_sealed(p, false);
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
    set_sealed(p, sealed);
}

fn flip(p: &Path, at: u64, mask: u8) {
    let sealed = is_sealed(p);
    set_sealed(p, false);
    let mut bytes = std::fs::read(p).unwrap();
    bytes[at as usize] ^= mask;
    std::fs::write(p, bytes).unwrap();
    set_sealed(p, sealed);
}

/// Drops the writer as a crash would and waits until its task has let go
/// of the writer lock (in a real crash the OS drops it with the process).
async fn crash(ledger: Ledger, dir: &Path) {
    drop(ledger);
    let s = store(dir);
    for _ in 0..5000 {
        if s.lock(&layout::lock(NAME)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("the dropped writer never released its lock");
}

/// Creates a ledger, appends one batch per entry of `sizes` (that many
/// events each; a lone caller's append is one batch), optionally
/// checkpoints after the first `checkpoint_after` batches, and crashes.
async fn build(max_blocks: u64, sizes: &[u64], checkpoint_after: Option<usize>) -> Crashed {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ledger = Ledger::create(s.clone(), NAME, opts(max_blocks))
        .await
        .unwrap();
    let mut batches = Vec::new();
    let mut seq = 0;
    for (i, &n) in sizes.iter().enumerate() {
        if checkpoint_after == Some(i) {
            assert_eq!(ledger.checkpoint().await.unwrap().checkpoint.size, seq);
        }
        let receipts = ledger
            .append((seq..seq + n).map(event).collect())
            .await
            .unwrap();
        let first = receipts[0].clone();
        assert_eq!(first.seq, seq);
        assert!(receipts
            .iter()
            .all(|r| (r.segment, r.offset) == (first.segment, first.offset)));
        batches.push(Batch {
            segment: first.segment,
            offset: first.offset,
            first_seq: seq,
        });
        seq += n;
    }
    if checkpoint_after == Some(sizes.len()) {
        assert_eq!(ledger.checkpoint().await.unwrap().checkpoint.size, seq);
    }
    let records = ledger.reader().await.unwrap().read(0, None).await.unwrap();
    assert_eq!(records.len() as u64, seq);
    crash(ledger, dir.path()).await;
    Crashed {
        dir,
        max_blocks,
        records,
        batches,
    }
}

async fn read_all(dir: &Path) -> Vec<Record> {
    LedgerReader::open(store(dir), NAME)
        .await
        .unwrap()
        .read(0, None)
        .await
        .unwrap()
}

/// Also checks that no checkpoint lacks a cache: a crash never leaves a
/// checkpoint without its stream index or node cache.
async fn verify(dir: &Path) -> VerifyReport {
    let reader = LedgerReader::open(store(dir), NAME).await.unwrap();
    let verifier = reader.recorded_verifier().clone();
    let report = reader.verify(&verifier, &|_, _| {}).await.unwrap();
    assert_eq!(report.missing_caches, Vec::<String>::new());
    report
}

/// Opens the damaged copy as the next process would and checks that it
/// holds exactly `expect`.
async fn open_recovered(dir: &Path, max_blocks: u64, expect: &[Record]) -> Ledger {
    let ledger = Ledger::open(store(dir), NAME, opts(max_blocks))
        .await
        .unwrap_or_else(|e| panic!("open after a crash: {e}"));
    assert_eq!(read_all(dir).await, expect);
    ledger
}

/// Checks that the next append after recovering to `expect` gets the next
/// sequence number (in `segment` at `offset`, when given), and that the
/// ledger verifies, and again after a final checkpoint when `close` is set
/// (else the writer crashes again).
async fn continues(
    ledger: Ledger,
    dir: &Path,
    expect: &[Record],
    at: Option<(u64, u64)>,
    close: bool,
) {
    let next = expect.len() as u64;
    let r = ledger.append_one(event(next)).await.unwrap();
    assert_eq!(r.seq, next);
    if let Some(at) = at {
        assert_eq!((r.segment, r.offset), at, "where the next batch went");
    }
    let report = verify(dir).await;
    assert_eq!(report.records, next + 1);
    if close {
        ledger.close().await.unwrap();
        let report = verify(dir).await;
        assert_eq!((report.records, report.unsigned_tail), (next + 1, 0));
    } else {
        crash(ledger, dir).await;
    }
    let all = read_all(dir).await;
    assert_eq!(&all[..expect.len()], expect);
    assert_eq!(all.len() as u64, next + 1);
}

async fn recovers_to(
    dir: &Path,
    max_blocks: u64,
    expect: &[Record],
    at: Option<(u64, u64)>,
    close: bool,
) {
    let ledger = open_recovered(dir, max_blocks, expect).await;
    continues(ledger, dir, expect, at, close).await;
}

async fn open_err(dir: &Path, max_blocks: u64) -> IntegrityError {
    match Ledger::open(store(dir), NAME, opts(max_blocks)).await {
        Err(LedgerError::Integrity(e)) => e,
        Err(e) => panic!("wanted an integrity error, got {e}"),
        Ok(_) => panic!("wanted an integrity error, but the ledger opened"),
    }
}

fn assert_names(e: &IntegrityError, blob: &str, offset: u64, seq: Option<u64>) {
    assert_eq!(
        (e.blob.as_str(), e.offset, e.seq),
        (blob, offset, seq),
        "{e}"
    );
}

// ------------------------------------------------- crashes during append

/// Step "append": the last batch's pwrite was cut short, at every byte,
/// either at the end of the file or in the unwritten space the store wrote
/// ahead (the rest of the block still zeros). Recovery truncates it and the
/// ledger continues where it was.
async fn torn_last_batch_at_every_byte(sizes: &[u64]) {
    let c = build(3, sizes, None).await;
    let last = c.batches.len() - 1;
    let (start, end) = c.range(last);
    let seg = c.batches[last].segment;
    assert!(end - start > 30, "the batch is {} bytes", end - start);
    assert!(
        file_len(&seg_path(c.path(), seg)) > end,
        "the store wrote zeros ahead"
    );
    for (cut, zeroed) in (start..end).flat_map(|cut| [(cut, false), (cut, true)]) {
        let dir = c.copy();
        match zeroed {
            false => truncate(&seg_path(dir.path(), seg), cut),
            true => zero_from(&seg_path(dir.path(), seg), cut),
        }
        if zeroed && cut > start && cut < start + 8 {
            // Part of the 8 length bytes, the rest still zero: a sector
            // write is atomic, so only a length straddling two sectors
            // tears so, and a half-written length cannot be told from a
            // flipped one. Damage, then (ledger-format.md §12.2): nothing
            // is cut, and an operator decides.
            let e = open_err(dir.path(), c.max_blocks).await;
            assert_names(&e, &seg_name(seg), start, Some(c.batches[last].first_seq));
            continue;
        }
        // The last few cuts also write the final checkpoint.
        let close = end - cut <= 2;
        recovers_to(
            dir.path(),
            c.max_blocks,
            c.before(last),
            Some((seg, start)),
            close,
        )
        .await;
    }
    // And the crash that tore nothing loses nothing.
    recovers_to(c.path(), c.max_blocks, &c.records, None, true).await;
}

/// A crash that kept the last batch's end from the fs store's side file
/// (which is not fsynced): the store cannot tell where the batch ends and
/// its unwritten space begins, and shows the segment whole, zeros and all.
/// Readers and `verify` read every record and stop at the zeros; `open`
/// cuts them off and appends where the batch ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_block_end_shows_the_unwritten_space() {
    let c = build(100, &[1, 2, 1], None).await;
    let dir = c.copy();
    forget_last_end(dir.path());
    let seg = seg_path(dir.path(), 0);
    let (_, end) = c.range(2);
    assert!(file_len(&seg) > end, "the store wrote zeros ahead");
    assert_eq!(
        store(dir.path()).info(&seg_name(0)).await.unwrap().size,
        file_len(&seg)
    );
    assert_eq!(read_all(dir.path()).await, c.records);
    assert_eq!(verify(dir.path()).await.records, 4);
    recovers_to(dir.path(), 100, &c.records, Some((0, end)), true).await;
    assert_eq!(
        written_len(&seg),
        file_len(&seg),
        "closed with no zeros left"
    );
}

/// Drops the last end the side file of segment 0 records, as a crash
/// between a block's `fdatasync` and the record of its end leaves it, and
/// as it is while an append is under way; returns its bytes.
fn forget_last_end(dir: &Path) -> Vec<u8> {
    let side = dir.join(NAME).join(".0000000000.seg.blocks");
    let mut ends = std::fs::read(&side).unwrap();
    let last = ends.split_off(ends.len() - 8);
    std::fs::write(&side, &ends).unwrap();
    last
}

/// Step "write", as a reader sees it: a block whose append is under way
/// (written, but neither made durable nor its end recorded; the append
/// holds the blob's lock until it has done both, or cut the block off) is
/// not read until the append is done. Its `fdatasync` may fail, the append
/// then cuts it off, and the next append reuses its sequence numbers for
/// other records: a reader must not have seen them. A reader waits for the
/// append a while, and past that (a writer stopped, a disk that hangs)
/// goes on without its block. Once no append holds the lock, the same
/// bytes are what a crash left, and are shown
/// (`a_lost_block_end_shows_the_unwritten_space`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_being_appended_is_read_only_once_its_append_is_done() {
    let c = build(100, &[1, 2, 1], None).await;
    let (start, _) = c.range(2);
    for (outcome, held_ms) in [("durable", 100), ("failed", 100), ("stuck", 3000)] {
        let dir = c.copy();
        let end = forget_last_end(dir.path());
        let seg = seg_path(dir.path(), 0);
        let append = std::fs::File::open(&seg).unwrap();
        append.lock().unwrap();
        let path = dir.path().to_owned();
        let reading = tokio::spawn(async move { read_all(&path).await });
        tokio::time::sleep(std::time::Duration::from_millis(held_ms)).await;
        assert_eq!(
            reading.is_finished(),
            outcome == "stuck",
            "{outcome}: a read waits a while for the append, not for ever"
        );
        match outcome {
            // Its `fdatasync` returned: it records where the block ends.
            "durable" => {
                let side = dir.path().join(NAME).join(".0000000000.seg.blocks");
                let mut f = std::fs::OpenOptions::new().append(true).open(side).unwrap();
                std::io::Write::write_all(&mut f, &end).unwrap();
            }
            // Its `fdatasync` failed: it cuts the block off.
            "failed" => {
                let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
                f.set_len(start).unwrap();
            }
            _ => {}
        }
        append.unlock().unwrap();
        let read = reading.await.unwrap();
        let want = if outcome == "durable" {
            &c.records[..]
        } else {
            c.before(2)
        };
        assert_eq!(read, want, "{outcome}");
    }
}

/// A writer that takes over blocks whose ends a crash kept from the side
/// file records their end before its first append writes, so that a
/// reader, which sees no further than the side file while an append is
/// under way, does not lose them meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_records_the_end_of_blocks_a_crash_left_unrecorded() {
    let c = build(100, &[1, 2, 1], None).await;
    let dir = c.copy();
    let lost = forget_last_end(dir.path());
    let side = dir.path().join(NAME).join(".0000000000.seg.blocks");
    let ledger = Ledger::open(store(dir.path()), NAME, opts(c.max_blocks))
        .await
        .unwrap();
    let n = c.records.len() as u64;
    let r = ledger.append_one(event(n)).await.unwrap();
    assert_eq!(
        r.offset,
        u64::from_le_bytes(lost.clone().try_into().unwrap())
    );
    let ends = std::fs::read(&side).unwrap();
    assert!(
        ends.chunks_exact(8).any(|e| e == lost.as_slice()),
        "the end a crash lost is recorded again"
    );
    ledger.close().await.unwrap();
    assert_eq!(read_all(dir.path()).await.len() as u64, n + 1);
}

/// A reader opened on what a crash left, before a writer reopens the
/// ledger, keeps to the log it read first: the writer cuts the zeros off
/// and appends after them, and the reader does not follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_keeps_to_its_log_when_a_writer_cuts_and_appends() {
    let c = build(100, &[1, 2, 1], None).await;
    let dir = c.copy();
    forget_last_end(dir.path());
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    let ledger = Ledger::open(store(dir.path()), NAME, opts(c.max_blocks))
        .await
        .unwrap();
    assert_eq!(reader.read(0, None).await.unwrap(), c.records);
    let n = c.records.len() as u64;
    for i in 0..3 {
        ledger.append(vec![event(n + i)]).await.unwrap();
    }
    assert_eq!(reader.read(0, None).await.unwrap(), c.records);
    assert_eq!(reader.len().await.unwrap(), n);
    ledger.close().await.unwrap();
    assert_eq!(read_all(dir.path()).await.len() as u64, n + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_batch_alone_in_new_segment() {
    // Segments of 3 blocks (header + 2 batches): the fifth batch is the
    // first of segment 2.
    torn_last_batch_at_every_byte(&[2, 1, 1, 1, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_batch_after_others() {
    torn_last_batch_at_every_byte(&[1, 2, 1, 1, 2, 1]).await;
}

/// A torn batch in the middle of what a crash left is the end of the log:
/// the crash happened while writing it, so nothing after it was written.
/// (Here later batches did exist and are cut with it, as the crash would
/// have prevented them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_inside_an_earlier_batch_of_the_last_segment() {
    let c = build(100, &[1, 2, 1, 2, 1], None).await;
    for b in [1usize, 3] {
        let (start, end) = c.range(b);
        for cut in [start + 1, start + 8, (start + end) / 2, end - 1] {
            let dir = c.copy();
            truncate(&seg_path(dir.path(), 0), cut);
            recovers_to(dir.path(), 100, c.before(b), Some((0, start)), false).await;
        }
    }
}

/// Step "acknowledge": many callers in flight when the writer stops. All
/// that were acknowledged are there, with the sequence numbers and stream
/// versions their receipts gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_dropped_with_callers_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create(store(dir.path()), NAME, opts(4))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move { l.append_one(event(i)).await }));
    }
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.unwrap().unwrap());
    }
    crash(ledger, dir.path()).await;
    let before = verify(dir.path()).await;
    assert_eq!((before.records, before.unsigned_tail), (40, 40));
    let records = read_all(dir.path()).await;
    for r in &receipts {
        let rec = &records[r.seq as usize];
        assert_eq!((&rec.stream, rec.stream_version), (&r.stream, r.version));
    }
    recovers_to(dir.path(), 4, &records, None, true).await;
}

// ----------------------------------------------- crashes during rollover

/// Step "rollover": `create` of the new segment, then its header, then
/// sealing the old one. A crash after `create` leaves 0 bytes; during the
/// header, a prefix of it; after it, the old segment unsealed. Recovery
/// writes the header (byte for byte what the writer would have), seals the
/// old segment and carries on in the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_interrupted_at_every_header_byte() {
    // Segment 2 starts with the fifth batch.
    let c = build(3, &[1, 2, 1, 1, 2], None).await;
    assert_eq!(c.batches[4].segment, 2);
    let header = std::fs::read(seg_path(c.path(), 2)).unwrap()[..HEADER_LEN].to_vec();
    let h = SegmentHeader::decode(&header).unwrap();
    assert_eq!((h.index, h.first_seq), (2, c.batches[4].first_seq));
    for k in 0..=HEADER_LEN as u64 {
        let old_sealed: &[bool] = if k == HEADER_LEN as u64 {
            &[false, true]
        } else {
            &[false]
        };
        for &old_sealed in old_sealed {
            let dir = c.copy();
            truncate(&seg_path(dir.path(), 2), k);
            set_sealed(&seg_path(dir.path(), 1), old_sealed);
            let ledger = open_recovered(dir.path(), 3, c.before(4)).await;
            assert_eq!(file_len(&seg_path(dir.path(), 2)), HEADER_LEN as u64);
            assert_eq!(std::fs::read(seg_path(dir.path(), 2)).unwrap(), header);
            assert!(is_sealed(&seg_path(dir.path(), 1)), "k={k}");
            assert!(is_sealed(&seg_path(dir.path(), 0)));
            let at = Some((2, HEADER_LEN as u64));
            continues(ledger, dir.path(), c.before(4), at, k % 21 == 0).await;
        }
    }
}

/// The same step on a file system that made the new segment's length
/// durable but not its data: the header is 84 zero bytes. Readers see no
/// records in it, `verify` fails naming it as an interrupted rollover, and
/// the writer's open completes it. Zeros anywhere else (a segment before
/// the last, or with bytes after the header) are damage, left as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_interrupted_with_a_zeroed_header() {
    let c = build(3, &[1, 2, 1, 1, 2], None).await;
    let header = std::fs::read(seg_path(c.path(), 2)).unwrap()[..HEADER_LEN].to_vec();
    let zero = |dir: &Path, index: u64| {
        let p = seg_path(dir, index);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[..HEADER_LEN].fill(0);
        std::fs::write(&p, bytes).unwrap();
    };

    let dir = c.copy();
    truncate(&seg_path(dir.path(), 2), HEADER_LEN as u64);
    zero(dir.path(), 2);
    assert_eq!(read_all(dir.path()).await, c.before(4));
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    let verifier = reader.recorded_verifier().clone();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => {
            assert_names(&e, &seg_name(2), 0, Some(c.before(4).len() as u64));
            assert!(e.what.contains("rollover that a crash interrupted"), "{e}");
        }
        other => panic!("verify of a zeroed last header: {other:?}"),
    }
    let ledger = open_recovered(dir.path(), 3, c.before(4)).await;
    assert_eq!(std::fs::read(seg_path(dir.path(), 2)).unwrap(), header);
    assert!(is_sealed(&seg_path(dir.path(), 1)));
    continues(
        ledger,
        dir.path(),
        c.before(4),
        Some((2, HEADER_LEN as u64)),
        true,
    )
    .await;

    // With its batches after it, a zeroed header was durable once: damage,
    // to the writer, to readers and to verify.
    let dir = c.copy();
    zero(dir.path(), 2);
    let e = open_err(dir.path(), 3).await;
    assert_eq!(e.blob, seg_name(2), "{e}");
    assert!(file_len(&seg_path(dir.path(), 2)) > HEADER_LEN as u64);
    match LedgerReader::open(store(dir.path()), NAME).await {
        Err(LedgerError::Integrity(e)) => assert_eq!(e.blob, seg_name(2), "{e}"),
        Err(e) => panic!("reader of a zeroed header with batches after it: {e}"),
        Ok(r) => {
            let r = r.read(0, None).await;
            panic!("a zeroed header with batches after it was read: {r:?}")
        }
    }
    // So is a zeroed header of a segment before the last.
    let dir = c.copy();
    zero(dir.path(), 1);
    let e = open_err(dir.path(), 3).await;
    assert_eq!(e.blob, seg_name(1), "{e}");
}

/// Older segments left unsealed (a rollover's last step lost, more than
/// once) are all sealed by the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsealed_older_segments_are_sealed() {
    let c = build(3, &[1, 1, 1, 1, 1, 1, 1], None).await;
    assert_eq!(c.batches.last().unwrap().segment, 3);
    let dir = c.copy();
    for i in 0..3 {
        set_sealed(&seg_path(dir.path(), i), false);
    }
    let ledger = open_recovered(dir.path(), 3, &c.records).await;
    for i in 0..3 {
        assert!(is_sealed(&seg_path(dir.path(), i)), "segment {i}");
    }
    assert!(!is_sealed(&seg_path(dir.path(), 3)));
    continues(ledger, dir.path(), &c.records, None, true).await;
}

/// A copy of `c` whose segment 0, unsealed, has 4 KiB of zeros after its
/// frames (as an append's unwritten space leaves them): the copy, the
/// segment's path and its length before the zeros.
fn zeros_after_segment_0(c: &Crashed) -> (tempfile::TempDir, PathBuf, u64) {
    let dir = c.copy();
    let seg0 = seg_path(dir.path(), 0);
    let len = std::fs::metadata(&seg0).unwrap().len();
    set_sealed(&seg0, false);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg0)
        .unwrap()
        .write_all(&[0; 4096])
        .unwrap();
    (dir, seg0, len)
}

/// Recovery that seals an older segment trims its unwritten space first
/// (ledger-format.md §12.2): a sealed segment shows every byte it has, so
/// zeros left in it would be damage to every reader after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_segment_is_trimmed_before_recovery_seals_it() {
    let c = build(3, &[1, 1, 1, 1], None).await;
    let (dir, seg0, len) = zeros_after_segment_0(&c);
    let ledger = open_recovered(dir.path(), 3, &c.records).await;
    assert!(is_sealed(&seg0));
    assert_eq!(std::fs::metadata(&seg0).unwrap().len(), len);
    continues(ledger, dir.path(), &c.records, None, true).await;
}

/// Zeros after the frames of a sealed segment before the last are damage
/// (ledger-format.md §12.2), whatever the store's side file of block ends
/// says: a sealed blob has no unwritten space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_after_a_sealed_segment_are_damage() {
    let c = build(3, &[1, 1, 1, 1], None).await;
    let (dir, seg0, len) = zeros_after_segment_0(&c);
    set_sealed(&seg0, true);
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    let verifier = reader.recorded_verifier().clone();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => {
            assert_eq!(
                (e.blob.as_str(), e.offset),
                (layout::segment(NAME, 0).as_str(), len),
                "{e}"
            );
        }
        other => panic!("verify of a sealed segment with zeros after it gave {other:?}"),
    }
}

/// A sealed last segment is no crash state (a writer seals a segment only
/// once it created the next): the segments after it were removed, or it was
/// made read-only by hand. Neither the writer nor `verify` goes on as if the
/// log ended there; before, the writer opened and then failed every append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_last_segment_is_named() {
    let c = build(3, &[1, 1, 1, 1], None).await;
    let dir = c.copy();
    let last = seg_path(dir.path(), 1);
    // Where its records end: the crashed writer left unwritten space after
    // them, which the error does not count.
    let len = store(dir.path()).info(&seg_name(1)).await.unwrap().size;
    assert!(len < std::fs::metadata(&last).unwrap().len());
    set_sealed(&last, true);
    let named = |e: &IntegrityError| {
        assert_eq!(
            (e.blob.as_str(), e.offset, e.seq),
            (
                layout::segment(NAME, 1).as_str(),
                len,
                Some(c.records.len() as u64)
            ),
            "{e}"
        );
        assert!(e.what.contains("0000000002.seg after it is missing"), "{e}");
    };
    match Ledger::open(store(dir.path()), NAME, opts(3)).await {
        Err(LedgerError::Integrity(e)) => named(&e),
        Err(e) => panic!("open of a ledger whose last segment is sealed: {e}"),
        Ok(_) => panic!("a ledger whose last segment is sealed opened for writing"),
    }
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    let verifier = reader.recorded_verifier().clone();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => named(&e),
        other => panic!("verify of a ledger whose last segment is sealed gave {other:?}"),
    }
    // A read to the end of the log says so too; one that asks for no more
    // than the records there gets them.
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    match reader.read(0, None).await {
        Err(LedgerError::Integrity(e)) => named(&e),
        other => panic!("a read to the end of a sealed last segment gave {other:?}"),
    }
    let n = c.records.len() as u64;
    assert_eq!(reader.read(0, Some(n)).await.unwrap().len() as u64, n);
}

/// A rollover interrupted after `create`, and the ledger closed right after
/// recovery, before any new event: the final checkpoint then signs a state
/// whose position is the start of the new segment, which `verify` accepts
/// as the same state as the end of the previous one (format §11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_interrupted_then_closed_without_appending() {
    let c = build(3, &[1, 1, 1, 1, 1], None).await;
    let dir = c.copy();
    truncate(&seg_path(dir.path(), 2), 0);
    set_sealed(&seg_path(dir.path(), 1), false);
    let ledger = Ledger::open(store(dir.path()), NAME, opts(3))
        .await
        .unwrap();
    ledger.close().await.unwrap();
    let report = verify(dir.path()).await;
    assert_eq!((report.records, report.unsigned_tail), (4, 0));
}

/// `Ledger::create` is `put LEDGER`, `create` segment 0, its header, then
/// checkpoint 0. A crash after any of them leaves a ledger `open` completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_interrupted() {
    let c = build(3, &[], None).await;
    let seg0 = seg_path(c.path(), 0);
    let header = std::fs::read(&seg0).unwrap();
    assert_eq!(header.len(), HEADER_LEN);
    let cp0 = [layout::checkpoint(NAME, 0), layout::snapshot(NAME, 0)];
    // (bytes of segment 0 left, or None for no file; checkpoint 0 written?)
    for (seg_len, checkpointed) in [
        (None, false),
        (Some(0), false),
        (Some(40), false),
        (Some(HEADER_LEN as u64), false),
        (Some(HEADER_LEN as u64), true),
    ] {
        let dir = c.copy();
        let seg = seg_path(dir.path(), 0);
        match seg_len {
            None => std::fs::remove_file(&seg).unwrap(),
            Some(n) => truncate(&seg, n),
        }
        if !checkpointed {
            for blob in &cp0 {
                std::fs::remove_file(FsStore::file_path(dir.path(), blob)).unwrap();
            }
        }
        let ledger = open_recovered(dir.path(), 3, &[]).await;
        assert_eq!(std::fs::read(&seg).unwrap(), header);
        continues(ledger, dir.path(), &[], Some((0, HEADER_LEN as u64)), true).await;
    }
}

/// The block-count side file is advisory and not fsynced: a crash may
/// leave it short, here empty. The writer counts a full segment's blocks
/// itself on recovery (the header and one per batch) and rolls over at its
/// own count, not at the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_block_count_side_file_does_not_move_the_rollover() {
    // Segment 0 is full: its header and two batches, at 3 blocks a segment.
    let c = build(3, &[1, 1], None).await;
    let dir = c.copy();
    let side = dir.path().join(NAME).join(".0000000000.seg.blocks");
    assert!(side.exists(), "{side:?}");
    std::fs::write(&side, b"").unwrap();
    let ledger = open_recovered(dir.path(), 3, &c.records).await;
    continues(
        ledger,
        dir.path(),
        &c.records,
        Some((1, HEADER_LEN as u64)),
        true,
    )
    .await;
}

/// A crash inside `put LEDGER` (before its link) leaves only the hidden
/// temp file: there is no ledger, `open` says so, and `create` makes one,
/// removing the temp file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_interrupted_inside_put_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join(NAME);
    std::fs::create_dir_all(&ledger_dir).unwrap();
    let tmp = ledger_dir.join(".LEDGER.tmp-5f0c2a");
    std::fs::write(&tmp, b"bi-ledger ledger v1\nname ma").unwrap();
    match Ledger::open(store(dir.path()), NAME, opts(3)).await {
        Err(LedgerError::NotFound(name)) => assert_eq!(name, NAME),
        other => panic!("open over a half-put LEDGER gave {other:?}"),
    }
    let ledger = Ledger::create(store(dir.path()), NAME, opts(3))
        .await
        .unwrap();
    assert!(!tmp.exists(), "the temp file is removed");
    ledger.append(vec![event(0)]).await.unwrap();
    ledger.close().await.unwrap();
    assert_eq!(verify(dir.path()).await.records, 1);
}

// --------------------------------------------- crashes during checkpoint

/// A crash while pruning snapshots leaves more than the two newest. Nothing
/// needs them and nothing minds them: `verify` checks each against the log,
/// and the next checkpoint's pruning removes the extra one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_pruning_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ledger = Ledger::create(s.clone(), NAME, opts(100)).await.unwrap();
    let mut kept = Vec::new();
    for i in 0..3 {
        ledger.append(vec![event(i)]).await.unwrap();
        let cp = ledger.checkpoint().await.unwrap();
        let snap = layout::snapshot(NAME, cp.checkpoint.size);
        kept.push((snap.clone(), s.read_all(&snap).await.unwrap()));
    }
    let snapshots = || async {
        let mut names: Vec<String> = s
            .list(&layout::snapshot_prefix(NAME))
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(snapshots().await, [kept[1].0.clone(), kept[2].0.clone()]);
    // The delete of the oldest did not happen.
    s.put(&kept[0].0, &kept[0].1).await.unwrap();
    ledger.close().await.unwrap();
    let report = verify(dir.path()).await;
    assert_eq!((report.records, report.checkpoints), (3, 4));

    let ledger = Ledger::open(s.clone(), NAME, opts(100)).await.unwrap();
    ledger.append(vec![event(3)]).await.unwrap();
    let cp = ledger.close().await.unwrap();
    assert_eq!(
        snapshots().await,
        [
            kept[2].0.clone(),
            layout::snapshot(NAME, cp.checkpoint.size)
        ]
    );
    assert_eq!(verify(dir.path()).await.records, 4);
}

/// Step "checkpoint": the snapshot is put, then the checkpoint. A crash
/// between the two leaves the snapshot alone; `open` ignores it (it goes by
/// checkpoints) and replays the tail from the previous checkpoint, and the
/// next checkpoint at that size finds the same snapshot bytes and reuses
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_without_its_checkpoint() {
    // Checkpoint after 4 batches (2 segments), then 1 more batch.
    let c = build(3, &[1, 2, 1, 1, 1], Some(4)).await;
    let size = c.batches[4].first_seq;
    let cp = FsStore::file_path(c.path(), &layout::checkpoint(NAME, size));
    let snap = FsStore::file_path(c.path(), &layout::snapshot(NAME, size));
    assert!(cp.exists() && snap.exists());

    // The crash came before the checkpoint, so before the fifth batch and
    // the rollover it caused: no segment 2, segment 1 unsealed.
    let dir = c.copy();
    std::fs::remove_file(FsStore::file_path(
        dir.path(),
        &layout::checkpoint(NAME, size),
    ))
    .unwrap();
    std::fs::remove_file(seg_path(dir.path(), 2)).unwrap();
    set_sealed(&seg_path(dir.path(), 1), false);
    let s = store(dir.path());
    let ledger = Ledger::open(s.clone(), NAME, opts(3)).await.unwrap();
    assert_eq!(read_all(dir.path()).await, c.before(4));
    // Closing writes the checkpoint the crash lost, over the same snapshot.
    let info = ledger.close().await.unwrap();
    assert_eq!(info.checkpoint.size, size);
    let report = verify(dir.path()).await;
    assert_eq!((report.records, report.unsigned_tail), (size, 0));
    assert_eq!(
        std::fs::read(FsStore::file_path(
            dir.path(),
            &layout::snapshot(NAME, size)
        ))
        .unwrap(),
        std::fs::read(&snap).unwrap()
    );
    recovers_to(dir.path(), 3, c.before(4), None, true).await;

    // The checkpoint put failed (an I/O error, not a crash: the writer logs
    // it and carries on), the fifth batch was written, then the crash: the
    // orphan snapshot is simply passed over.
    let dir = c.copy();
    std::fs::remove_file(FsStore::file_path(
        dir.path(),
        &layout::checkpoint(NAME, size),
    ))
    .unwrap();
    recovers_to(dir.path(), 3, &c.records, None, true).await;
}

/// The snapshot a crash left without its checkpoint, with records after
/// it (its checkpoint's put failed, the writer went on, then crashed), is
/// pruned by the next checkpoint, and the previous checkpoint's is kept:
/// the writer keeps the snapshots of its two newest checkpoints, and an
/// orphan must not count as one of them. (One at the log's very end is a
/// checkpoint the next writer completes as it opens: see
/// `checkpoint_interrupted_then_reopened`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_snapshot_is_pruned_not_kept() {
    let c = build(3, &[1, 2, 1, 1, 1], Some(4)).await;
    let size = c.batches[4].first_seq;
    let dir = c.copy();
    let file = |blob: String| FsStore::file_path(dir.path(), &blob);
    std::fs::remove_file(file(layout::checkpoint(NAME, size))).unwrap();
    assert!(file(layout::snapshot(NAME, 0)).exists());
    assert!(file(layout::snapshot(NAME, size)).exists());

    let ledger = Ledger::open(store(dir.path()), NAME, opts(3))
        .await
        .unwrap();
    assert!(
        !file(layout::checkpoint(NAME, size)).exists(),
        "no checkpoint completed behind the log's end"
    );
    ledger.append(vec![event(size + 1)]).await.unwrap();
    let info = ledger.close().await.unwrap();
    assert_eq!(info.checkpoint.size, size + 2);
    assert!(file(layout::snapshot(NAME, size + 2)).exists());
    assert!(
        file(layout::snapshot(NAME, 0)).exists(),
        "the previous checkpoint's snapshot was pruned"
    );
    assert!(
        !file(layout::snapshot(NAME, size)).exists(),
        "the orphan snapshot was kept"
    );
    assert_eq!(verify(dir.path()).await.records, size + 2);
}

/// Two crashes: one between snapshot and checkpoint (so the snapshot at
/// that size stays behind), then, after reopening, one inside the rollover
/// that the next append started. Closing right after the second recovery
/// must write the checkpoint the first crash lost. The tip's position after
/// the recovered rollover differs from the orphan snapshot's, so the
/// checkpoint replaces that snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_snapshot_then_interrupted_rollover_then_close() {
    // Segment 1 is full after 4 batches; checkpoint at that size.
    let c = build(3, &[1, 2, 1, 1], Some(4)).await;
    let size = c.records.len() as u64;
    let dir = c.copy();
    std::fs::remove_file(FsStore::file_path(
        dir.path(),
        &layout::checkpoint(NAME, size),
    ))
    .unwrap();
    // The rollover cut segment 1's unwritten space off and got as far as
    // creating segment 2.
    let seg1 = seg_path(dir.path(), 1);
    truncate(&seg1, written_len(&seg1));
    std::fs::write(seg_path(dir.path(), 2), b"").unwrap();
    set_sealed(&seg_path(dir.path(), 1), false);
    let ledger = open_recovered(dir.path(), 3, &c.records).await;
    let info = ledger.close().await.unwrap();
    assert_eq!(info.checkpoint.size, size);
    let report = verify(dir.path()).await;
    assert_eq!((report.records, report.unsigned_tail), (size, 0));
}

/// A put interrupted before its link leaves only a hidden temporary file,
/// which neither `open` nor `verify` sees, and which the next writer's
/// lock removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_put_leaves_only_a_hidden_temp_file() {
    let c = build(3, &[1, 1, 1], None).await;
    let dir = c.copy();
    let size = c.records.len() as u64;
    let mut temps = Vec::new();
    for blob in [layout::snapshot(NAME, size), layout::checkpoint(NAME, size)] {
        let (parent, file) = blob.rsplit_once('/').unwrap();
        let p = dir
            .path()
            .join(parent)
            .join(format!(".{file}.tmp-0123abcd"));
        std::fs::write(&p, b"half a blob").unwrap();
        temps.push(p);
    }
    // A reader neither needs nor touches them.
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    drop(reader);
    assert!(temps.iter().all(|p| p.exists()));
    recovers_to(dir.path(), 3, &c.records, None, true).await;
    for p in &temps {
        assert!(!p.exists(), "{} was left behind", p.display());
    }
}

// ------------------------------------ damage a crash cannot cause: refused

/// A flipped byte in any batch but the last of the last segment (CRC or
/// body) is damage, not a torn write: `open` refuses, naming the segment,
/// the batch's offset and its first sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_non_last_batch() {
    let c = build(100, &[2, 1, 1, 1], None).await;
    for (b, step) in [(0usize, 5), (2, 1)] {
        let (start, end) = c.range(b);
        // Every byte of the batch before the last, every fifth of the
        // first. Bytes 0..4 are the length: see
        // `flipped_length_in_a_non_last_batch`.
        for at in (start + 4..end).step_by(step) {
            let dir = c.copy();
            flip(&seg_path(dir.path(), 0), at, 0x20);
            let e = open_err(dir.path(), 100).await;
            assert_names(&e, &seg_name(0), start, Some(c.batches[b].first_seq));
            // Nothing was cut: the evidence is still there.
            assert_eq!(written_len(&seg_path(dir.path(), 0)), c.range(3).1);
        }
    }
}

/// The same for a flipped bit of the length field. A grown length would
/// make the batch appear to run past the end of the segment, like a torn
/// write; but the length carries its complement (format §5.1), so every
/// single-bit flip is damage, and nothing after it is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_length_in_a_non_last_batch() {
    let c = build(100, &[2, 1, 1, 1], None).await;
    let (start, _) = c.range(2);
    let mut lost = Vec::new();
    for bit in 0..32u64 {
        let dir = c.copy();
        flip(&seg_path(dir.path(), 0), start + bit / 8, 1 << (bit % 8));
        match Ledger::open(store(dir.path()), NAME, opts(100)).await {
            Err(LedgerError::Integrity(e)) => {
                assert_names(&e, &seg_name(0), start, Some(c.batches[2].first_seq))
            }
            Err(e) => panic!("bit {bit}: {e}"),
            Ok(_) => lost.push((bit, read_all(dir.path()).await.len())),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of 32 single-bit flips of batch 2's length opened the ledger, \
         keeping only these many of {} acknowledged records: {lost:?}",
        lost.len(),
        c.records.len()
    );
}

/// In a segment that is not the last, even the last batch, and even its
/// length, cannot be a torn write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_an_earlier_segment() {
    let c = build(3, &[2, 1, 1, 1, 1], None).await;
    assert_eq!(c.batches[1].segment, 0);
    let (start, end) = c.range(1);
    // Every byte of the frame header (length and CRC), then a sample.
    for at in (start..start + 8).chain((start + 8..end).step_by(3)) {
        let dir = c.copy();
        flip(&seg_path(dir.path(), 0), at, 0x80);
        let e = open_err(dir.path(), 3).await;
        assert_names(&e, &seg_name(0), start, Some(c.batches[1].first_seq));
    }
}

/// The last batch after the newest checkpoint, written whole and then
/// changed: a flipped byte anywhere after its length, or a few bytes
/// zeroed short of a sector, leave every sector of it written, which a
/// write a crash cut short does not (ledger-format.md §12.2). Damage, then,
/// never cut off as a torn tail: `open`, readers and `verify` name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_last_batch_is_damage_not_a_tear() {
    let c = build(100, &[2, 1, 200], None).await;
    let (start, end) = c.range(2);
    assert!(end - start > 3 * 512, "the batch is {} bytes", end - start);
    let first_seq = c.batches[2].first_seq;
    let changes = (start + 8..end)
        .step_by(97)
        .chain([end - 1])
        .map(|at| (at, 1u64))
        .chain([((start + end) / 2, 10), (start + 700, 511)]);
    for (at, len) in changes {
        let dir = c.copy();
        let seg = seg_path(dir.path(), 0);
        match len {
            1 => flip(&seg, at, 0x04),
            _ => zero_range(&seg, at, len),
        }
        let e = open_err(dir.path(), 100).await;
        assert_names(&e, &seg_name(0), start, Some(first_seq));
        let read = LedgerReader::open(store(dir.path()), NAME)
            .await
            .unwrap()
            .read(0, None)
            .await;
        match read {
            Err(LedgerError::Integrity(e)) => {
                assert_names(&e, &seg_name(0), start, Some(first_seq))
            }
            other => panic!("a read past byte {at} changed: {other:?}"),
        }
        assert_eq!(written_len(&seg), end, "nothing was cut");
    }
}

/// A sector of the last batch still zeros while the ones after it were
/// written (a crash during a write whose sectors reached the disk out of
/// order): a tear, truncated on open like one cut at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_sector_inside_the_last_batch_is_a_tear() {
    let c = build(100, &[2, 1, 200], None).await;
    let (start, end) = c.range(2);
    let first_sector = (start / 512 + 1) * 512;
    assert!(
        first_sector + 512 < end,
        "the batch is {} bytes",
        end - start
    );
    let mut sector = first_sector;
    while sector + 512 <= end {
        let dir = c.copy();
        zero_range(&seg_path(dir.path(), 0), sector, 512);
        recovers_to(dir.path(), 100, c.before(2), Some((0, start)), false).await;
        sector += 512;
    }
}

fn zero_range(p: &Path, from: u64, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0; len as usize], from).unwrap();
}

/// A damaged header of a segment after the newest checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_segment_header() {
    let c = build(3, &[1, 1, 1, 1, 1], None).await;
    let header = std::fs::read(seg_path(c.path(), 1)).unwrap()[..HEADER_LEN].to_vec();
    // A byte of every field.
    for at in [
        0, 7, 8, 9, 10, 11, 12, 15, 16, 31, 32, 39, 40, 47, 48, 79, 80, 83,
    ] {
        let dir = c.copy();
        flip(&seg_path(dir.path(), 1), at as u64, 0x01);
        let mut bad = header.clone();
        bad[at] ^= 0x01;
        let want = SegmentHeader::decode(&bad).unwrap_err().offset as u64;
        let e = open_err(dir.path(), 3).await;
        assert_eq!((e.blob.as_str(), e.offset), (seg_name(1).as_str(), want));
    }
}

/// A reader names the header field that does not fit the file: the ledger
/// id at 16, the segment index at 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_names_the_wrong_header_field() {
    let c = build(3, &[1, 1, 1, 1, 1], None).await;
    for (at, len) in [(16u64, 16usize), (32, 8)] {
        let dir = c.copy();
        let p = seg_path(dir.path(), 1);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[at as usize] ^= 0x01;
        let crc = crc32c::crc32c(&bytes[..80]);
        bytes[80..84].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        match LedgerReader::open(store(dir.path()), NAME).await {
            Err(LedgerError::Integrity(e)) => assert_names(&e, &seg_name(1), at, None),
            Err(e) => panic!("field at {at} (+{len}): {e}"),
            Ok(_) => panic!("field at {at} (+{len}): the reader opened"),
        }
    }
}

/// A segment cut shorter than the newest checkpoint covers: `open`
/// refuses, naming the segment and where its whole batches end: the byte
/// and the sequence number after the last of them (none if the header is
/// cut too), not the checkpoint's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_inside_what_a_checkpoint_covers() {
    let c = build(100, &[1, 2, 1, 2, 1], Some(3)).await;
    let covered = c.batches[3].offset;
    let size = c.batches[3].first_seq;
    let header = HEADER_LEN as u64;
    // (cut, where the error names: byte and sequence number)
    let mut cuts = vec![
        (0, (0, None)),
        (1, (1, None)),
        (header - 1, (header - 1, None)),
        (header, (header, Some(0))),
        (covered - 1, (c.range(2).0, Some(c.batches[2].first_seq))),
    ];
    for b in 0..3 {
        let (start, end) = c.range(b);
        let names = (start, Some(c.batches[b].first_seq));
        for cut in [
            start + 1,
            start + 4,
            start + 8,
            start + 20,
            (start + end) / 2,
            end - 1,
        ] {
            cuts.push((cut, names));
        }
        if b > 0 {
            cuts.push((start, names));
        }
    }
    for (cut, (offset, seq)) in cuts {
        let dir = c.copy();
        truncate(&seg_path(dir.path(), 0), cut);
        let e = open_err(dir.path(), 100).await;
        assert_names(&e, &seg_name(0), offset, seq);
        assert!(
            e.what.contains(&format!("signs {size} records")),
            "cut at {cut}: {e}"
        );
        assert_eq!(
            file_len(&seg_path(dir.path(), 0)),
            cut,
            "nothing is repaired"
        );
    }
    // In a later segment, not the last: the sequence numbers count from
    // that segment's first, and the message says the middle of the log.
    let r = build(3, &[1, 2, 1, 2, 1], Some(4)).await;
    assert_eq!((r.batches[2].segment, r.batches[3].segment), (1, 1));
    assert_eq!(r.batches[4].segment, 2);
    for (b, cut) in [(2, r.range(2).0 + 5), (3, r.range(3).1 - 1)] {
        let dir = r.copy();
        truncate(&seg_path(dir.path(), 1), cut);
        let e = open_err(dir.path(), 3).await;
        assert_names(&e, &seg_name(1), r.range(b).0, Some(r.batches[b].first_seq));
        assert!(e.what.contains("signs 6 records"), "{e}");
        assert!(e.what.contains("from the middle of the log"), "{e}");
    }
    // Cut exactly at the checkpoint: the uncheckpointed tail is gone, as
    // if never written, which a crash cannot tell apart.
    let dir = c.copy();
    truncate(&seg_path(dir.path(), 0), covered);
    recovers_to(dir.path(), 100, c.before(3), Some((0, covered)), true).await;
}

/// The newest checkpoint's snapshot cannot go missing by a crash (it is
/// written first): refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_snapshot_of_the_newest_checkpoint() {
    let c = build(100, &[1, 2, 1], Some(2)).await;
    let size = c.batches[2].first_seq;
    let dir = c.copy();
    std::fs::remove_file(FsStore::file_path(
        dir.path(),
        &layout::snapshot(NAME, size),
    ))
    .unwrap();
    let e = open_err(dir.path(), 100).await;
    assert_names(&e, &layout::snapshot(NAME, size), 0, Some(size));
}

/// `open` finds the newest checkpoint through its snapshot. With that
/// snapshot removed by hand it starts from an older one, and still finds by
/// name the newer checkpoint, which covers records the log has since lost:
/// refused, naming where the log ends, and nothing is changed, not even a
/// batch that looks torn from the older snapshot. Readers find it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tail_is_found_without_the_newest_snapshot() {
    let c = build(100, &[1, 2, 1], Some(2)).await;
    let size = c.batches[2].first_seq;
    let (cut, _) = c.range(1);
    let dir = c.copy();
    std::fs::remove_file(FsStore::file_path(
        dir.path(),
        &layout::snapshot(NAME, size),
    ))
    .unwrap();
    truncate(&seg_path(dir.path(), 0), cut);
    let e = open_err(dir.path(), 100).await;
    assert_names(&e, &seg_name(0), cut, Some(c.batches[1].first_seq));
    assert!(e.what.contains(&layout::checkpoint(NAME, size)), "{e}");
    assert_eq!(file_len(&seg_path(dir.path(), 0)), cut);
    // Readers find the newer checkpoint by name as well.
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    assert_eq!(reader.signed_at_open(), size);
    match reader.len().await {
        Err(LedgerError::Integrity(e)) => {
            assert_names(&e, &seg_name(0), cut, Some(c.batches[1].first_seq))
        }
        other => panic!("wanted an integrity error, got {other:?}"),
    }
    let (_, newest, _) = reader.signed_checkpoint(None).await.unwrap().unwrap();
    assert_eq!(newest.size, size);
    // The last batch the checkpoint covers cut inside: it looks torn from
    // the older snapshot, but is not cut. Changed whole, it is damage
    // whatever covers it.
    let (start, end) = c.range(1);
    for damage in ["flip", "cut"] {
        let dir = c.copy();
        std::fs::remove_file(FsStore::file_path(
            dir.path(),
            &layout::snapshot(NAME, size),
        ))
        .unwrap();
        let seg = seg_path(dir.path(), 0);
        truncate(&seg, end);
        match damage {
            "flip" => flip(&seg, start + 30, 0x10),
            _ => truncate(&seg, end - 1),
        }
        let before = std::fs::read(&seg).unwrap();
        let e = open_err(dir.path(), 100).await;
        assert_names(&e, &seg_name(0), start, Some(c.batches[1].first_seq));
        let want = match damage {
            "flip" => "CRC32C mismatch",
            _ => "torn or damaged",
        };
        assert!(e.what.contains(want), "{damage}: {e}");
        assert_eq!(std::fs::read(&seg).unwrap(), before, "{damage}");
    }
    // A later segment whose header a crash would have cut short: not
    // completed, and named as it is.
    let c = build(3, &[1, 2, 1, 1, 2], Some(5)).await;
    let dir = c.copy();
    std::fs::remove_file(FsStore::file_path(dir.path(), &layout::snapshot(NAME, 7))).unwrap();
    truncate(&seg_path(dir.path(), 2), 10);
    let e = open_err(dir.path(), 3).await;
    assert_names(&e, &seg_name(2), 10, Some(5));
    assert!(e.what.contains("header is incomplete"), "{e}");
    assert_eq!(file_len(&seg_path(dir.path(), 2)), 10);
}

/// Segments are listed by leading digit, so `open` does not list the
/// checkpoints beside them; `verify` lists every digit, and a segment far
/// past a gap is an integrity error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_segment_past_a_gap_is_found_by_verify() {
    let c = build(100, &[1, 2], None).await;
    let dir = c.copy();
    let stray = format!("{NAME}/1000000000.seg");
    std::fs::copy(seg_path(dir.path(), 0), dir.path().join(&stray)).unwrap();
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    assert_eq!(reader.len().await.unwrap(), 3);
    let verifier = reader.recorded_verifier().clone();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => {
            assert_names(&e, &stray, 0, None);
            assert!(e.what.contains("segment 1 is missing"), "{e}");
        }
        other => panic!("wanted an integrity error, got {other:?}"),
    }
}

/// A segment missing between two others: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_middle_segment() {
    let c = build(3, &[1, 1, 1, 1, 1], None).await;
    let dir = c.copy();
    std::fs::remove_file(seg_path(dir.path(), 1)).unwrap();
    let e = open_err(dir.path(), 3).await;
    assert_eq!((e.blob.as_str(), e.offset), (seg_name(2).as_str(), 0));
}

/// `open` reads only what follows the newest checkpoint, so damage inside
/// what it covers is for `verify` to find, which it does, by position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_checkpoint_is_found_by_verify() {
    let c = build(100, &[1, 2, 1], Some(3)).await;
    let (start, _) = c.range(1);
    let dir = c.copy();
    flip(&seg_path(dir.path(), 0), start + 12, 0x04);
    let ledger = Ledger::open(store(dir.path()), NAME, opts(100))
        .await
        .unwrap();
    crash(ledger, dir.path()).await;
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    let verifier = reader.recorded_verifier().clone();
    match reader.verify(&verifier, &|_, _| {}).await {
        Err(LedgerError::Integrity(e)) => {
            assert_names(&e, &seg_name(0), start, Some(c.batches[1].first_seq))
        }
        other => panic!("wanted an integrity error, got {other:?}"),
    }
}

/// A sealed segment cut back at a batch boundary leaves a gap before the
/// next segment: a read that ends before the next segment still meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_bounded_before_the_next_segment_meets_a_cut_in_this_one() {
    let c = build(3, &[2, 1, 1, 1, 1], None).await;
    assert_eq!((c.batches[1].segment, c.batches[2].segment), (0, 1));
    let dir = c.copy();
    truncate(&seg_path(dir.path(), 0), c.batches[1].offset);
    let next = c.batches[2].first_seq;
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    for (from, to) in [(0, next), (0, next - 1), (1, next)] {
        match reader.read(from, Some(to)).await {
            Err(LedgerError::Integrity(e)) => {
                assert_names(&e, &seg_name(1), 40, Some(c.batches[1].first_seq))
            }
            r => panic!("read({from}, {to}): wanted the gap named, got {r:?}"),
        }
    }
}

/// A segment before the last cut at a batch boundary (it stays sealed):
/// proofs whose records span the gap are refused as `read` refuses, naming
/// the segment after it, its byte 0 and the sequence number that was due,
/// not as a tree that does not add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_middle_of_the_log_fails_proofs_by_name() {
    let c = build(3, &[1, 2, 1, 2, 1, 2, 1], Some(7)).await;
    assert_eq!((c.batches[3].segment, c.batches[4].segment), (1, 2));
    let dir = c.copy();
    truncate(&seg_path(dir.path(), 1), c.range(3).0);
    let reader = LedgerReader::open(store(dir.path()), NAME).await.unwrap();
    let due = c.batches[3].first_seq;
    let named = |what: &str, r: Result<(), LedgerError>| match r {
        Err(LedgerError::Integrity(e)) => {
            assert_names(&e, &seg_name(2), 40, Some(due));
            assert!(e.what.contains("the one before it ends at"), "{what}: {e}");
        }
        other => panic!("{what}: wanted an integrity error, got {other:?}"),
    };
    for seq in [0, due - 1, 9] {
        named(
            &format!("inclusion {seq}"),
            reader.inclusion_proof(seq, 10).await.map(drop),
        );
    }
    named(
        "consistency 1 -> 10",
        reader.consistency_proof(1, 10).await.map(drop),
    );
    named("read", reader.read(0, None).await.map(drop));
}

/// A tmpfs of `bytes` mounted on a fresh directory, unmounted on drop; `None`
/// where this process may not mount (not root, or no `mount`).
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// The zeros the fs store writes ahead of small appends (unwritten space)
/// only make later appends quicker: on a disk with room for the block but
/// not for them, the append still succeeds, without them. Before, such a
/// disk refused every append, about a MiB before it was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_too_full_for_the_zeros_still_takes_the_block() {
    let Some(disk) = SmallDisk::mount(512 * 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = disk.0.path();
    let ledger = Ledger::create(store(dir), NAME, opts(1_000)).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(ledger.append_one(event(i)).await.unwrap());
    }
    ledger.close().await.unwrap();
    let seg = std::fs::metadata(seg_path(dir, 0)).unwrap().len();
    assert!(seg < 64 * 1024, "segment 0 holds {seg} bytes");
    let records = read_all(dir).await;
    assert_eq!(records.len(), acked.len());
    for (r, a) in records.iter().zip(&acked) {
        assert_eq!(r.seq, a.seq);
    }
    assert_eq!(verify(dir).await.records, 20);
    drop(disk);
}
