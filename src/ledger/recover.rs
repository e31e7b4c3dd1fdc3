//! Opening a ledger for writing: find the newest checkpoint, restore the
//! writer state from its snapshot, then read only the log tail after it.
//! A torn last batch is cut off (and logged); anything else that is wrong is
//! an integrity error and the ledger stays closed for writing.

use rayon::prelude::*;
use tracing::{debug, info, warn};

use super::layout::{self, Meta};
use super::scan::Scanner;
use super::tip::Tip;
use crate::backend::{BlobInfo, BlobStore, StoreError};
use crate::error::{IntegrityError, IntegrityKind, LedgerError, Result};
use crate::format::checkpoint::Checkpoint;
use crate::format::merkle::Frontier;
use crate::format::record::RecordRef;
use crate::format::segment::{is_unwritten_header, SegmentHeader, HEADER_LEN};
use crate::format::snapshot::Snapshot;
use crate::format::{chain, hex, Hash};

/// Leaf hashes and chain midstates of a batch's records, in parallel when
/// the batch is large enough to pay for it.
pub fn hash_records(records: &[RecordRef<'_>]) -> Vec<(Hash, chain::Midstate)> {
    let one = |r: &RecordRef<'_>| {
        let leaf = r.leaf_hash();
        (leaf, chain::midstate(&leaf))
    };
    if records.len() >= 256 {
        records.par_iter().map(one).collect()
    } else {
        records.iter().map(one).collect()
    }
}

/// Segment 0 gone while checkpoint `blob` of `size` records exists:
/// checkpoint 0 is written after segment 0's header, so the log is lost,
/// not empty (only a creation cut short leaves neither).
pub fn segment_zero_missing(ledger: &str, blob: &str, size: u64) -> LedgerError {
    IntegrityError::new(
        layout::segment(ledger, 0),
        0,
        Some(0),
        format!(
            "segment is missing, but checkpoint {blob} (of {size} records) was written after it"
        ),
    )
    .into()
}

pub async fn read_meta(store: &dyn BlobStore, ledger: &str) -> Result<Meta> {
    let blob = layout::meta(ledger);
    let bytes = match store.read_all(&blob).await {
        Ok(b) => b,
        Err(crate::backend::StoreError::NotFound { .. }) => {
            // A ledger whose segments or checkpoints are there has lost its
            // identity file: damage, not a ledger that was never created.
            // Unless it is being created: `Ledger::create` puts the file
            // first, so one that is there when looked for again was put
            // after the first look, not lost.
            let segments = list_segments(store, ledger).await?.len();
            let checkpoints = checkpoint_blobs(store, ledger).await?.len();
            if segments + checkpoints == 0 {
                return Err(LedgerError::NotFound(ledger.to_owned()));
            }
            match store.read_all(&blob).await {
                Ok(b) => b,
                Err(crate::backend::StoreError::NotFound { .. }) => {
                    return Err(IntegrityError::new(
                        &blob,
                        0,
                        None,
                        format!("the ledger's identity file is missing, but {segments} segment(s) and {checkpoints} checkpoint(s) of the ledger exist"),
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| IntegrityError::new(&blob, 0, None, "ledger file is not UTF-8"))?;
    let meta = Meta::decode(&blob, &text)?;
    if meta.name != ledger {
        return Err(IntegrityError::new(
            &blob,
            0,
            None,
            format!("names ledger {:?}, expected {ledger:?}", meta.name),
        )
        .into());
    }
    Ok(meta)
}

/// Checkpoint blobs of a ledger and the sizes their names give, oldest
/// first. Only names of the exact form count.
pub async fn checkpoint_blobs(store: &dyn BlobStore, ledger: &str) -> Result<Vec<(u64, String)>> {
    let mut sizes: Vec<(u64, String)> = store
        .list(&layout::checkpoint_prefix(ledger))
        .await?
        .into_iter()
        .filter_map(|b| layout::checkpoint_size(ledger, &b.name).map(|s| (s, b.name)))
        .collect();
    sizes.sort();
    Ok(sizes)
}

/// Reads a checkpoint, checks its signature, origin, and that its size is
/// the one its name gives.
pub async fn open_checkpoint(
    store: &dyn BlobStore,
    meta: &Meta,
    size: u64,
    blob: &str,
) -> Result<Checkpoint> {
    Ok(open_checkpoint_note(store, meta, size, blob).await?.0)
}

/// [`open_checkpoint`], with the note's text as stored.
pub async fn open_checkpoint_note(
    store: &dyn BlobStore,
    meta: &Meta,
    size: u64,
    blob: &str,
) -> Result<(Checkpoint, String)> {
    let (cp, note) = read_checkpoint_note(store, meta, blob).await?;
    if cp.size != size {
        return Err(IntegrityError::new(
            blob,
            0,
            None,
            format!("checkpoint says size {} but is named for {size}", cp.size),
        )
        .into());
    }
    Ok((cp, note))
}

/// A ledger without any checkpoint: nothing binds its log to the key, and
/// whoever can write the store could have rewritten all of it (format
/// §12.5). `init` signs checkpoint 0, so they were deleted, or the creation
/// was cut short.
pub fn no_checkpoint(ledger: &str) -> IntegrityError {
    IntegrityError::new(
        layout::checkpoint(ledger, 0),
        0,
        Some(0),
        "the ledger has no checkpoint, so nothing binds its log to the key: checkpoint 0 is signed when a ledger is created, so checkpoints were deleted or the creation was cut short (only if you know it was the latter, a checkpoint signs the log as it is now)",
    )
}

/// The error to give where the log ends short of what checkpoint `blob`
/// (of `size` records, by its name) covers: that checkpoint is opened
/// first, so that a blob under a checkpoint's name that is not one, or not
/// signed by the ledger's key, is named for what it is rather than taken
/// for records removed from the log. Only on this error path: otherwise
/// readers go by the names (ledger-format.md §12.3).
pub async fn short_of_checkpoint(
    store: &dyn BlobStore,
    meta: &Meta,
    size: u64,
    blob: &str,
    short: IntegrityError,
) -> LedgerError {
    match open_checkpoint_note(store, meta, size, blob).await {
        Err(LedgerError::Integrity(bad)) => bad.into(),
        // Checked, or unreadable for now: the log's end is what is known.
        _ => short.into(),
    }
}

/// The size of the newest checkpoint, found without listing every
/// checkpoint (ten years at the default interval leave about a million):
/// the writer puts each checkpoint's snapshot before the checkpoint and
/// prunes only snapshots older than its newest two, so the newest snapshot
/// whose checkpoint exists names the newest checkpoint. A snapshot whose
/// checkpoint put never happened is passed over. Only a ledger whose
/// snapshots were all removed has its checkpoints listed. `None`: there is
/// no checkpoint.
async fn newest_checkpoint(store: &dyn BlobStore, ledger: &str) -> Result<Option<u64>> {
    newest_checkpoint_of(store, ledger, &snapshot_sizes(store, ledger).await?).await
}

/// How far ahead of the clock a ledger's last timestamp may be before
/// opening it for writing warns (clocks of two machines differ a little).
const CLOCK_AHEAD_US: i64 = 60_000_000;

/// The newest snapshot of a size past `records`. A writer puts a
/// checkpoint's caches only once every record they cover is durable, and
/// no crash takes a durable record back: such a snapshot says records were
/// removed, with the checkpoint that signed them. (Only snapshots: they
/// are few, as writers prune them, where stream indexes and node caches
/// stay, one per checkpoint; `verify` looks at those too.)
fn snapshot_beyond(ledger: &str, snapshots: &[u64], records: u64) -> Option<(u64, String)> {
    snapshots
        .last()
        .filter(|&&s| s > records)
        .map(|&s| (s, layout::snapshot(ledger, s)))
}

/// The end of the message that cache `blob` of `size` is past the log's end.
pub(crate) fn removed(blob: &str, size: u64) -> String {
    format!(
        "{blob} is there, which a writer puts only once {size} records are durable: records were removed from the log's end, with the checkpoint that signed them"
    )
}

/// The sizes of the snapshots there are, smallest first.
pub async fn snapshot_sizes(store: &dyn BlobStore, ledger: &str) -> Result<Vec<u64>> {
    let mut sizes: Vec<u64> = store
        .list(&layout::snapshot_prefix(ledger))
        .await?
        .into_iter()
        .filter_map(|b| layout::snapshot_size(ledger, &b.name))
        .collect();
    sizes.sort_unstable();
    Ok(sizes)
}

/// [`newest_checkpoint`], given the snapshot sizes listed.
async fn newest_checkpoint_of(
    store: &dyn BlobStore,
    ledger: &str,
    snapshots: &[u64],
) -> Result<Option<u64>> {
    for &size in snapshots.iter().rev() {
        match store.info(&layout::checkpoint(ledger, size)).await {
            Ok(_) => return Ok(Some(size)),
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(checkpoint_blobs(store, ledger)
        .await?
        .pop()
        .map(|(size, _)| size))
}

/// The size of the newest checkpoint, found from the newest snapshot (as
/// the writer finds it, without listing every checkpoint), or a newer
/// checkpoint in its window of 10^6 sizes or the next (one listing each),
/// as a reader finds it: one whose snapshot was removed by hand still
/// holds the log to its size.
pub async fn newest_checkpoint_near(store: &dyn BlobStore, ledger: &str) -> Result<Option<u64>> {
    let Some(size) = newest_checkpoint(store, ledger).await? else {
        return Ok(None);
    };
    Ok(Some(
        checkpoints_after(store, ledger, size, size)
            .await?
            .pop()
            .map_or(size, |(newer, _)| newer),
    ))
}

/// The newest checkpoint ([`newest_checkpoint`]), its signature checked.
async fn latest_checkpoint(
    store: &dyn BlobStore,
    meta: &Meta,
    snapshots: &[u64],
) -> Result<Option<(String, Checkpoint)>> {
    let Some(size) = newest_checkpoint_of(store, &meta.name, snapshots).await? else {
        return Ok(None);
    };
    let blob = layout::checkpoint(&meta.name, size);
    let cp = open_checkpoint(store, meta, size, &blob).await?;
    Ok(Some((blob, cp)))
}

/// Checkpoints of more than `after` records in the windows from `after` to
/// one past `end`, the log's end, by name prefix: as many listings as the
/// replay of `after..end` just read millions of records, at least two.
/// Finds a newer checkpoint whose snapshot was removed by hand, and a lost
/// tail (of up to a window) that such a checkpoint covers.
async fn checkpoints_after(
    store: &dyn BlobStore,
    ledger: &str,
    after: u64,
    end: u64,
) -> Result<Vec<(u64, String)>> {
    let prefix = layout::checkpoint_prefix(ledger);
    let mut out = Vec::new();
    for w in after / layout::WINDOW..=end / layout::WINDOW + 1 {
        for b in store.list(&layout::in_window(&prefix, w)).await? {
            match layout::checkpoint_size(ledger, &b.name) {
                Some(size) if size > after => out.push((size, b.name)),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

pub async fn read_checkpoint(store: &dyn BlobStore, meta: &Meta, blob: &str) -> Result<Checkpoint> {
    Ok(read_checkpoint_note(store, meta, blob).await?.0)
}

/// [`read_checkpoint`], with the note's text as stored.
pub async fn read_checkpoint_note(
    store: &dyn BlobStore,
    meta: &Meta,
    blob: &str,
) -> Result<(Checkpoint, String)> {
    let bytes = store.read_all(blob).await?;
    let text = String::from_utf8(bytes).map_err(|e| IntegrityError {
        kind: IntegrityKind::BadCheckpoint,
        ..IntegrityError::new(
            blob,
            e.utf8_error().valid_up_to() as u64,
            None,
            "checkpoint is not UTF-8",
        )
    })?;
    let cp = Checkpoint::open(&text, &meta.verifier)
        .map_err(|e| IntegrityError::checkpoint_rejected(blob, &e))?;
    if cp.origin != meta.origin() {
        return Err(IntegrityError::new(
            blob,
            0,
            None,
            format!("origin {:?}, expected {:?}", cp.origin, meta.origin()),
        )
        .into());
    }
    Ok((cp, text))
}

/// Segments a listing by one leading digit covers. Segment names are ten
/// digits, so `<ledger>/0` lists segments 0 to 999,999,999 alone, not the
/// checkpoints and caches beside them (millions after ten years) that a
/// listing of `<ledger>/` would also return.
const SEGMENTS_PER_DIGIT: u64 = 1_000_000_000;

/// The ledger's segments in order, checked to run from 0 without a gap.
/// Lists the next leading digit only once the ones before are full.
pub async fn list_segments(store: &dyn BlobStore, ledger: &str) -> Result<Vec<(u64, BlobInfo)>> {
    segments_under_digits(store, ledger, false).await
}

/// [`list_segments`], looking under every leading digit, so that a stray
/// segment far past a gap is found too (for `verify`, and for the writer,
/// which must not extend a log that `verify` refuses).
pub async fn list_every_segment(
    store: &dyn BlobStore,
    ledger: &str,
) -> Result<Vec<(u64, BlobInfo)>> {
    segments_under_digits(store, ledger, true).await
}

/// A listing is no snapshot: one made while a writer rolls over may show
/// a new segment without the one created just before it (a directory read
/// on ext4 returns names in hash order, and a name added behind its cursor
/// is missed; an Azure listing may page past it). Segments are never
/// removed, so a gap that is real is there in every listing: one seen
/// [`GAP_LISTINGS`] times in a row is reported.
async fn segments_under_digits(
    store: &dyn BlobStore,
    ledger: &str,
    every_digit: bool,
) -> Result<Vec<(u64, BlobInfo)>> {
    let mut tries = 1;
    loop {
        match segments_listed(store, ledger, every_digit).await {
            Err(LedgerError::Integrity(e)) if tries < GAP_LISTINGS => {
                debug!(error = %e, tries, "a gap among the segments listed; listing again");
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Listings of the segments that must show the same gap before it is
/// reported as damage.
const GAP_LISTINGS: u32 = 3;

async fn segments_listed(
    store: &dyn BlobStore,
    ledger: &str,
    every_digit: bool,
) -> Result<Vec<(u64, BlobInfo)>> {
    let listing = |digit: u64| {
        let prefix = format!("{}{digit}", layout::segment_prefix(ledger));
        async move {
            let listed = store.list(&prefix).await?;
            Ok::<_, StoreError>(
                listed
                    .into_iter()
                    .filter_map(|b| layout::segment_index(ledger, &b.name).map(|i| (i, b)))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let mut listed = Vec::new();
    if every_digit {
        // All at once: nine of the ten come back empty.
        listed = futures::future::try_join_all((0..10).map(listing)).await?;
    } else {
        for digit in 0..10u64 {
            let below: usize = listed.iter().map(Vec::len).sum();
            if below as u64 != digit * SEGMENTS_PER_DIGIT {
                break;
            }
            listed.push(listing(digit).await?);
        }
    }
    let mut segs: Vec<(u64, BlobInfo)> = listed.into_iter().flatten().collect();
    segs.sort_by_key(|(i, _)| *i);
    for (want, (i, b)) in segs.iter().enumerate() {
        if *i != want as u64 {
            return Err(IntegrityError::new(
                &b.name,
                0,
                None,
                format!("segment {want} is missing before segment {i}"),
            )
            .into());
        }
    }
    Ok(segs)
}

/// What `open` found: the tip, the newest checkpoint and the sizes of the
/// snapshots there are (for the writer to prune without listing them).
pub struct Recovered {
    pub tip: Tip,
    pub checkpoint: Option<Checkpoint>,
    pub snapshots: Vec<u64>,
}

/// Restores the tip, repairing only what a crash can leave behind.
pub async fn recover(store: &dyn BlobStore, meta: &Meta, max_body: usize) -> Result<Recovered> {
    let ledger = &meta.name;
    let snapshots = snapshot_sizes(store, ledger).await?;
    let checkpoint = latest_checkpoint(store, meta, &snapshots).await?;
    let mut tip = match &checkpoint {
        Some((cp_blob, cp)) => load_snapshot(store, meta, cp_blob, cp).await?,
        None => Tip::genesis(meta.id),
    };
    let cp_size = tip.size;
    let mut segments = list_every_segment(store, ledger).await?;
    if segments.is_empty() {
        if let Some((blob, cp)) = &checkpoint {
            return Err(segment_zero_missing(ledger, blob, cp.size));
        }
        let name = layout::segment(ledger, 0);
        store.create(&name).await?;
        segments.push((0, store.info(&name).await?));
        info!(segment = %name, "created missing first segment (crash during creation)");
    }
    if (tip.segment_index as usize) >= segments.len() {
        let name = layout::segment(ledger, tip.segment_index);
        return Err(IntegrityError::new(
            name,
            0,
            Some(tip.size),
            "segment named by the newest checkpoint is missing",
        )
        .into());
    }
    // Repairs wait until every check below has passed: a batch that looks
    // torn may be covered by a newer checkpoint whose snapshot is gone, and
    // cutting it before finding that out would destroy what it signs.
    let mut repairs: Vec<Repair> = Vec::new();
    let last = segments.len() - 1;
    for (index, info) in segments.iter().skip(tip.segment_index as usize) {
        let is_last = *index as usize == last;
        let name = &info.name;
        if *index > tip.segment_index || tip.segment_len == 0 {
            // Read once: to tell an unwritten header, or to check it.
            let bytes = if info.size >= HEADER_LEN as u64 {
                store.read(name, 0, HEADER_LEN as u64).await?
            } else {
                Vec::new()
            };
            if info.size < HEADER_LEN as u64 || is_last && is_unwritten_header(info.size, &bytes) {
                if !is_last {
                    return Err(IntegrityError::new(
                        name,
                        0,
                        Some(tip.size),
                        "segment header is missing",
                    )
                    .into());
                }
                // Rollover or creation crashed before the header was
                // durable (whole in length but zeros, or shorter).
                let header = SegmentHeader {
                    ledger_id: meta.id,
                    index: *index,
                    first_seq: tip.size,
                    prev_chain: tip.chain_head,
                };
                repairs.push(Repair::Header {
                    name: name.clone(),
                    cut: info.size,
                    header: header.encode(),
                });
                tip.segment_index = *index;
                tip.segment_len = HEADER_LEN as u64;
                tip.segment_blocks = 1;
                continue; // the last segment, with nothing after its header
            } else {
                let h = SegmentHeader::decode(&bytes)
                    .map_err(|e| IntegrityError::decoding(name, 0, e, Some(tip.size)))?;
                check_header(name, &h, meta, *index, &tip)?;
            }
            tip.segment_index = *index;
            tip.segment_len = HEADER_LEN as u64;
            tip.segment_blocks = 1;
        } else if info.size >= HEADER_LEN as u64 {
            // The newest snapshot stands in this segment, which this writer
            // appends to: its header is checked as far as the snapshot can
            // tell (whole, as its CRC says; this ledger's; this segment).
            // At the segment's start (a checkpoint right after a recovered
            // rollover) it is what ties the segment to the chain: checked
            // whole.
            let bytes = store.read(name, 0, HEADER_LEN as u64).await?;
            let h = SegmentHeader::decode(&bytes)
                .map_err(|e| IntegrityError::decoding(name, 0, e, Some(tip.size)))?;
            if tip.segment_len == HEADER_LEN as u64 {
                check_header(name, &h, meta, *index, &tip)?;
            } else {
                check_header_identity(name, &h, meta, *index, tip.size)?;
            }
        }
        let size = store.info(name).await?.size;
        if size < tip.segment_len {
            let (ends, at) = where_records_end(store, name, size, max_body).await?;
            let what = if is_last {
                "records were removed from the log's end"
            } else {
                "records were removed from the middle of the log"
            };
            return Err(IntegrityError::new(
                name,
                at,
                ends,
                format!(
                    "segment holds {size} bytes but the newest checkpoint covers {} bytes of it, and signs {} records: {what}",
                    tip.segment_len, tip.size
                ),
            )
            .into());
        }
        let mut scan = Scanner::new(store, name, tip.segment_len, size, max_body);
        while let Some(chunk) = scan.next_chunk().await? {
            for (i, range) in chunk.frames.iter().enumerate() {
                let offset = chunk.base + range.start as u64;
                apply_batch(&mut tip, chunk.frame(i), name, offset)?;
                tip.segment_len = offset + range.len() as u64;
                tip.segment_blocks += 1;
            }
        }
        if let Some(bad) = scan.bad {
            if !(is_last && bad.reaches_end) {
                return Err(
                    IntegrityError::new(name, bad.offset, Some(tip.size), bad.error.what).into(),
                );
            }
            if bad.unwritten {
                // Zeros a store wrote ahead of its appends, which it
                // showed as part of the blob (the fs store does not, unless
                // its side file says a block ended in them): cut, so that
                // the store's idea of where the blob ends is the log's.
                repairs.push(Repair::Unwritten {
                    name: name.clone(),
                    offset: bad.offset,
                    cut: size - bad.offset,
                });
                continue;
            }
            repairs.push(Repair::Cut {
                name: name.clone(),
                offset: bad.offset,
                cut: size - bad.offset,
                first_lost_seq: tip.size,
                reason: bad.error.what,
            });
        }
    }
    debug_assert!(tip.size >= cp_size);
    // Where the log ends, and what is there that looked like a crash's
    // leftover (and was not repaired).
    let (at, left) = match repairs.last() {
        Some(Repair::Cut { offset, .. }) => (
            *offset,
            " (the batch here is torn or damaged, and is left as it is)",
        ),
        Some(Repair::Header { cut, .. }) => (
            *cut,
            " (the segment's header is incomplete, and is left as it is)",
        ),
        Some(Repair::Unwritten { offset, .. }) => {
            (*offset, " (zeros follow, and are left as they are)")
        }
        None => (tip.segment_len, ""),
    };
    if let Some((_, cp)) = &checkpoint {
        if let Some((size, blob)) = checkpoints_after(store, ledger, cp.size, tip.size)
            .await?
            .pop()
        {
            let (_, last_seg) = &segments[last];
            let err = if size > tip.size {
                let short = IntegrityError::new(
                    &last_seg.name,
                    at,
                    Some(tip.size),
                    format!(
                        "the log ends after {} records{left}, but checkpoint {blob} covers {size}",
                        tip.size
                    ),
                );
                return Err(short_of_checkpoint(store, meta, size, &blob, short).await);
            } else {
                IntegrityError::new(
                    layout::snapshot(ledger, size),
                    0,
                    Some(size),
                    format!("snapshot for checkpoint {blob} is missing"),
                )
            };
            return Err(err.into());
        }
    }
    if let Some((size, blob)) = snapshot_beyond(ledger, &snapshots, tip.size) {
        return Err(IntegrityError::new(
            &segments[last].1.name,
            at,
            Some(tip.size),
            format!(
                "the log ends after {} records{left}, but {}",
                tip.size,
                removed(&blob, size)
            ),
        )
        .into());
    }
    if tip.size > cp_size {
        // Only a crash leaves records after the newest checkpoint (a writer
        // signs one as it closes), but nothing tells its records from ones
        // written by whoever else can write the store: say so, since this
        // writer's next checkpoint signs them.
        warn!(
            records = tip.size - cp_size,
            first_seq = cp_size,
            last_seq = tip.size - 1,
            "records after the newest checkpoint, signed by none: a writer crashed before signing them, or someone who can write the store wrote them; this writer's next checkpoint signs them (`bi-ledger read --from {cp_size}` shows them)"
        );
    }
    let (index, last_seg) = &segments[last];
    if last_seg.sealed {
        // No crash undoes a create, and this writer holds the lock.
        return Err(sealed_last(ledger, *index, &last_seg.name, tip.segment_len, tip.size).into());
    }
    if !store.truncates() {
        if let Some(e) = repairs.iter().find_map(Repair::uncuttable) {
            return Err(e.into());
        }
    }
    for repair in repairs {
        repair.apply(store).await?;
    }
    for (index, info) in &segments[..last] {
        if !info.sealed && *index < tip.segment_index {
            // At the length its frames end: a writer trims its unwritten
            // space before it seals (ledger-format.md §12.2).
            store.seal_at(&info.name, info.size).await?;
            info!(segment = %info.name, "sealed a segment whose rollover a crash interrupted");
        }
    }
    let ahead = tip.last_ts.saturating_sub(crate::time::now_us());
    if ahead > CLOCK_AHEAD_US {
        // Timestamps never decrease along the log: every event appended
        // until this clock catches up is stamped with the last one.
        warn!(
            last_timestamp = %crate::time::format_us(tip.last_ts),
            seconds_ahead = ahead / 1_000_000,
            "the ledger's last event is stamped later than this clock says it is now; new events get that time until the clock catches up: check this clock, and the ledger's last events (an earlier writer's clock, or records someone wrote)"
        );
    }
    Ok(Recovered {
        tip,
        checkpoint: checkpoint.map(|(_, cp)| cp),
        snapshots,
    })
}

/// The error for a last segment that is sealed (`name`, segment `index`,
/// its records ending at byte `end`, before `seq`): a writer seals a
/// segment only once it has created the next one, so the segments after it
/// are gone, with whatever records they held.
pub fn sealed_last(ledger: &str, index: u64, name: &str, end: u64, seq: u64) -> IntegrityError {
    IntegrityError::new(
        name,
        end,
        Some(seq),
        format!(
            "the last segment is sealed, but {} after it is missing: a writer seals a segment only after it created the next one, so records from this sequence number on may have been removed (or the segment was made read-only by hand)",
            layout::segment(ledger, index + 1)
        ),
    )
}

/// Where the whole batches of a segment cut short end: the sequence number
/// after its last whole batch, and that batch's end. Only for the error that
/// names a lost tail, so that it says where the log ends rather than where
/// the checkpoint does; a segment whose header is gone too names nothing.
async fn where_records_end(
    store: &dyn BlobStore,
    name: &str,
    size: u64,
    max_body: usize,
) -> Result<(Option<u64>, u64)> {
    if size < HEADER_LEN as u64 {
        return Ok((None, size));
    }
    let Ok(h) = SegmentHeader::decode(&store.read(name, 0, HEADER_LEN as u64).await?) else {
        return Ok((None, 0));
    };
    let (mut seq, mut at) = (h.first_seq, HEADER_LEN as u64);
    let mut scan = Scanner::new(store, name, at, size, max_body);
    while let Some(chunk) = scan.next_chunk().await? {
        for (i, range) in chunk.frames.iter().enumerate() {
            let body = chunk.frame(i);
            seq = body.first_seq + u64::from(body.count);
            at = chunk.base + range.end as u64;
        }
    }
    Ok((Some(seq), at))
}

/// What a crash can leave behind in the last segment, and `open` repairs.
enum Repair {
    /// A rollover or creation cut short before the segment's header was
    /// durable: `cut` bytes of it are there.
    Header {
        name: String,
        cut: u64,
        header: Vec<u8>,
    },
    /// A torn last batch: `cut` bytes from `offset`, a write a crash cut
    /// short (so none its writer acknowledged, unless the disk lost what
    /// it had made durable).
    Cut {
        name: String,
        offset: u64,
        cut: u64,
        first_lost_seq: u64,
        reason: String,
    },
    /// Unwritten space (zeros, format §12.2): `cut` bytes from `offset`,
    /// which never held anything.
    Unwritten { name: String, offset: u64, cut: u64 },
}

impl Repair {
    /// On a store whose appends cannot tear (`BlobStore::truncates` is
    /// false), what this repair would cut was not left by a crash of its
    /// writer, and cannot be cut: reported, never repaired.
    fn uncuttable(&self) -> Option<IntegrityError> {
        const CANNOT: &str = "this store's appends cannot tear and its blobs cannot be cut back, so it was not left by a crash of a writer here (the segment was copied from a file system after a crash, or bytes were appended by something else); the records before it are intact (verify), but no writer can continue this segment";
        match self {
            Repair::Header { cut: 0, .. } => None,
            Repair::Header { name, cut, .. } => Some(IntegrityError::new(
                name,
                *cut,
                None,
                format!("segment header is incomplete ({cut} of 84 bytes): {CANNOT}"),
            )),
            Repair::Unwritten { name, offset, cut } => Some(IntegrityError::new(
                name,
                *offset,
                None,
                format!("{cut} zero bytes follow the last batch (unwritten space, which a file-system store leaves and cuts off): {CANNOT}; copy it without them"),
            )),
            Repair::Cut {
                name,
                offset,
                first_lost_seq,
                reason,
                ..
            } => Some(IntegrityError::new(
                name,
                *offset,
                Some(*first_lost_seq),
                format!("{reason}: a last batch that looks torn, but {CANNOT}"),
            )),
        }
    }

    async fn apply(self, store: &dyn BlobStore) -> Result<()> {
        match self {
            // Logged before the store is touched: a crash (or kill) during
            // the cut must not leave it done and unsaid, the next open
            // finding a clean tail and nothing to tell.
            Repair::Header { name, cut, header } => {
                warn!(segment = %name, cut, "completing a segment header left unwritten by a crash");
                if cut > 0 {
                    store.truncate(&name, 0).await?;
                }
                store.append(&name, 0, &header).await?;
            }
            Repair::Unwritten { name, offset, cut } => {
                info!(segment = %name, offset, bytes_cut = cut, "cutting off unwritten space (zeros) after the last batch");
                store.truncate(&name, offset).await?;
            }
            Repair::Cut {
                name,
                offset,
                cut,
                first_lost_seq,
                reason,
            } => {
                warn!(
                    segment = %name,
                    offset,
                    bytes_cut = cut,
                    first_lost_seq,
                    %reason,
                    "truncating a torn last batch: a write that a crash cut short (zeros or a missing end where its bytes should be), which a writer acknowledges only once it is whole; records from first_lost_seq on are gone"
                );
                store.truncate(&name, offset).await?;
            }
        }
        Ok(())
    }
}

pub fn check_header(
    name: &str,
    h: &SegmentHeader,
    meta: &Meta,
    index: u64,
    tip: &Tip,
) -> Result<()> {
    check_header_identity(name, h, meta, index, tip.size)?;
    let bad = |offset: u64, what: String| -> Result<()> {
        Err(IntegrityError::new(name, offset, Some(tip.size), what).into())
    };
    if h.first_seq != tip.size {
        return bad(
            crate::format::segment::FIRST_SEQ_AT,
            format!(
                "segment starts at sequence number {} but the one before it ends at {}",
                h.first_seq, tip.size
            ),
        );
    }
    if h.prev_chain != tip.chain_head {
        return bad(
            48,
            format!(
                "previous-hash {} does not match the chain head {}",
                hex(&h.prev_chain),
                hex(&tip.chain_head)
            ),
        );
    }
    Ok(())
}

/// The part of [`check_header`] that needs no chain state: which ledger
/// and which segment the header says it is. `seq` is where an error says
/// the log stands.
pub fn check_header_identity(
    name: &str,
    h: &SegmentHeader,
    meta: &Meta,
    index: u64,
    seq: u64,
) -> Result<()> {
    let bad = |offset: u64, what: String| -> Result<()> {
        Err(IntegrityError::new(name, offset, Some(seq), what).into())
    };
    if h.ledger_id != meta.id {
        return bad(
            16,
            format!(
                "segment belongs to ledger {}, but the LEDGER file names {} (one of the two was changed, or the segment is another ledger's)",
                hex(&h.ledger_id),
                hex(&meta.id)
            ),
        );
    }
    if h.index != index {
        return bad(
            32,
            format!("header says segment {}, file is segment {index}", h.index),
        );
    }
    Ok(())
}

/// Decodes, checks and applies one batch to the tip.
pub fn apply_batch(
    tip: &mut Tip,
    body: crate::format::batch::BatchBody<'_>,
    blob: &str,
    offset: u64,
) -> Result<()> {
    if body.first_seq != tip.size {
        return Err(IntegrityError::new(
            blob,
            offset + crate::format::batch::FRAME_HEADER_LEN as u64,
            Some(body.first_seq),
            format!(
                "batch starts at sequence number {} where {} was due",
                body.first_seq, tip.size
            ),
        )
        .into());
    }
    let records = body
        .decode_all()
        .map_err(|e| IntegrityError::decoding(blob, offset, e, Some(tip.size)))?;
    for (r, (leaf, mid)) in records.iter().zip(hash_records(&records)) {
        tip.apply(r, mid, leaf)
            .map_err(|what| IntegrityError::new(blob, offset, Some(r.seq), what))?;
    }
    tip.index_batch(
        offset,
        body.first_seq,
        records.len(),
        records.iter().map(|r| r.stream),
    );
    Ok(())
}

/// The digest that closes a snapshot's bytes (its last 32), which its
/// checkpoint's `snapshot` line signs once decoding has checked that it is
/// the SHA-256 of the bytes before it.
pub(crate) fn snapshot_digest(bytes: &[u8]) -> Option<Hash> {
    bytes
        .len()
        .checked_sub(32)
        .map(|at| bytes[at..].try_into().expect("32 bytes"))
}

/// An integrity error naming snapshot `blob` if checkpoint `cp_blob` signs
/// another digest than `digest` (a checkpoint without the line signs none).
pub(crate) fn check_signed_snapshot(
    blob: &str,
    digest: Option<Hash>,
    cp_blob: &str,
    cp: &Checkpoint,
) -> Result<()> {
    match (cp.snapshot, digest) {
        (Some(signed), Some(digest)) if signed != digest => Err(IntegrityError::new(
            blob,
            0,
            Some(cp.size),
            format!(
                "snapshot is not the one checkpoint {cp_blob} signs (its SHA-256 is {}, the checkpoint's snapshot line says {}): it was changed or replaced",
                hex(&digest),
                hex(&signed)
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

async fn load_snapshot(
    store: &dyn BlobStore,
    meta: &Meta,
    cp_blob: &str,
    cp: &Checkpoint,
) -> Result<Tip> {
    let blob = layout::snapshot(&meta.name, cp.size);
    let bytes = store.read_all(&blob).await.map_err(|e| match e {
        crate::backend::StoreError::NotFound { .. } => LedgerError::Integrity(IntegrityError::new(
            &blob,
            0,
            Some(cp.size),
            format!("snapshot for checkpoint {cp_blob} is missing"),
        )),
        e => e.into(),
    })?;
    let digest = snapshot_digest(&bytes);
    let snap = Snapshot::decode_owned(bytes)
        .map_err(|e| IntegrityError::decoding(&blob, 0, e, Some(cp.size)))?;
    check_signed_snapshot(&blob, digest, cp_blob, cp)?;
    let root = Frontier::from_parts(snap.size, snap.frontier.clone())
        .map_err(|e| IntegrityError::new(&blob, 0, Some(cp.size), e.to_string()))?
        .root();
    if snap.ledger_id != meta.id
        || snap.size != cp.size
        || snap.chain_head != cp.chain_head
        || root != cp.root
    {
        return Err(IntegrityError::new(
            &blob,
            0,
            Some(cp.size),
            format!("snapshot does not match checkpoint {cp_blob}"),
        )
        .into());
    }
    Tip::from_snapshot(snap).map_err(|e| IntegrityError::new(&blob, 0, Some(cp.size), e).into())
}
