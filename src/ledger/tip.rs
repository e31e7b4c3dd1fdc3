//! The state at the head of the log: everything a writer needs to append
//! the next record, and what a snapshot persists.

use std::sync::Arc;

use crate::format::merkle::{Frontier, MerkleError};
use crate::format::nodes::{self, NodeCache};
use crate::format::record::RecordRef;
use crate::format::snapshot::Snapshot;
use crate::format::stream_index::{BatchFilter, StreamIndex};
use crate::format::stream_table::StreamTable;
use crate::format::{chain, Hash};

use super::versions::StreamVersions;

/// What the chain walk needs of a record besides its stream id.
pub struct Linked {
    pub seq: u64,
    pub timestamp_us: i64,
    pub stream_version: u64,
    /// The chain's parallel half: SHA-256 of `CHAIN_TAG || leaf` so far.
    pub mid: chain::Midstate,
}

#[derive(Clone, Debug)]
pub struct Tip {
    pub ledger_id: [u8; 16],
    /// Records in the log; also the next sequence number.
    pub size: u64,
    pub chain_head: Hash,
    pub last_ts: i64,
    pub frontier: Frontier,
    /// Stream id to its last version.
    pub streams: StreamVersions,
    pub segment_index: u64,
    /// Bytes of the current segment that hold whole batches. 0 means the
    /// header has not been read or written yet.
    pub segment_len: u64,
    pub segment_blocks: u64,
    /// Which batches hold each stream's records since the newest
    /// checkpoint; written beside the next one.
    pub index: StreamIndex,
    /// The Merkle nodes completed since the newest checkpoint, in node
    /// cache order (`format::nodes`); written beside the next one.
    pub nodes: Vec<Hash>,
}

impl Tip {
    pub fn genesis(ledger_id: [u8; 16]) -> Tip {
        Tip {
            ledger_id,
            size: 0,
            chain_head: chain::genesis(&ledger_id),
            last_ts: i64::MIN,
            frontier: Frontier::new(),
            streams: StreamVersions::default(),
            segment_index: 0,
            segment_len: 0,
            segment_blocks: 0,
            index: StreamIndex::new(ledger_id, 0),
            nodes: Vec::new(),
        }
    }

    /// The version a stream's next event gets.
    pub fn next_version(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |v| v.saturating_add(1))
    }

    /// Checks that `r` may follow the current head and advances over it.
    /// `leaf` is the record's leaf hash, computed by the caller (often in
    /// parallel).
    pub fn apply(
        &mut self,
        r: &RecordRef<'_>,
        link: chain::Midstate,
        leaf: Hash,
    ) -> Result<Hash, String> {
        let h = self.link(r, link)?;
        self.append_subtree(0, leaf).map_err(|e| e.to_string())?;
        Ok(h)
    }

    /// Appends a perfect subtree to the Merkle frontier, keeping the nodes
    /// a node cache holds. Callers hand in subtrees no higher than
    /// `nodes::MIN_HEIGHT` (`merkle::range_subtrees_capped`), so that no
    /// such node is hidden inside one.
    pub fn append_subtree(&mut self, height: u32, hash: Hash) -> Result<(), MerkleError> {
        debug_assert!(height <= nodes::MIN_HEIGHT);
        let kept = &mut self.nodes;
        self.frontier
            .append_subtree_noting(height, hash, nodes::MIN_HEIGHT, |_, h| kept.push(*h))
    }

    /// `apply` without the Merkle frontier, for callers that merge whole
    /// subtrees computed in parallel (`verify`); they append the subtrees
    /// before anything reads the frontier.
    pub fn link(&mut self, r: &RecordRef<'_>, link: chain::Midstate) -> Result<Hash, String> {
        self.link_fields(
            Linked {
                seq: r.seq,
                timestamp_us: r.timestamp_us,
                stream_version: r.stream_version,
                mid: link,
            },
            r.stream,
        )
    }

    /// `link` from the fields the chain walk checks, for callers that
    /// decoded the record elsewhere (`verify`'s parallel stage).
    pub fn link_fields(&mut self, r: Linked, stream: &str) -> Result<Hash, String> {
        if r.seq != self.size {
            return Err(format!(
                "sequence number {} where {} was due",
                r.seq, self.size
            ));
        }
        if r.timestamp_us < self.last_ts {
            return Err(format!(
                "timestamp {} is before the previous record's {}",
                crate::time::format_us(r.timestamp_us),
                crate::time::format_us(self.last_ts)
            ));
        }
        let want = r.stream_version;
        let due = |current: Option<u64>| current.map_or(Some(0), |v| v.checked_add(1));
        if let Err(current) = self.streams.advance(stream, |current| {
            (due(current) == Some(want)).then_some(want)
        }) {
            return Err(format!(
                "stream {:?} version {} where {} was due",
                stream,
                want,
                current.map_or(0, |v| v.saturating_add(1))
            ));
        }
        self.streams.fold_if_large();
        self.chain_head = r.mid.link(&self.chain_head);
        self.last_ts = r.timestamp_us;
        self.size += 1;
        Ok(self.chain_head)
    }

    /// Adds the batch at `offset` of the current segment to the stream
    /// index; `streams` yields its records' streams.
    pub fn index_batch<'a>(
        &mut self,
        offset: u64,
        first_seq: u64,
        count: usize,
        streams: impl Iterator<Item = &'a str>,
    ) {
        self.push_filter(BatchFilter::build(
            (self.segment_index, offset),
            first_seq,
            count as u64,
            streams,
        ));
    }

    /// Adds a batch's filter, built by the caller (in parallel, by `verify`).
    pub fn push_filter(&mut self, filter: BatchFilter) {
        self.index.push(filter);
    }

    /// The stream index and node cache since the last checkpoint, leaving
    /// empty ones that start here.
    pub fn take_caches(&mut self) -> (StreamIndex, NodeCache) {
        let nodes = self.node_cache();
        self.nodes.clear();
        let index = std::mem::replace(&mut self.index, StreamIndex::new(self.ledger_id, self.size));
        (index, nodes)
    }

    /// The node cache of the records since the last checkpoint.
    pub fn node_cache(&self) -> NodeCache {
        NodeCache {
            ledger_id: self.ledger_id,
            from: self.index.from,
            to: self.size,
            hashes: self.nodes.clone(),
        }
    }

    /// Drops from the stream index and node cache what a checkpoint at
    /// `at` covers (one between the last known and now, whose caches were
    /// put before it), so that they start there.
    pub fn rebase_caches(&mut self, at: u64) {
        let from = self.index.from;
        if at <= from {
            return;
        }
        self.index.batches.retain(|b| b.first_seq >= at);
        self.index.from = at;
        let covered = (nodes::count(from, at) as usize).min(self.nodes.len());
        self.nodes.drain(..covered);
    }

    /// The snapshot of this state (folding the changed streams into the
    /// stream table, which changes nothing a reader of it sees).
    pub fn snapshot(&mut self) -> Snapshot {
        let streams = self.streams.table();
        self.snapshot_with(streams)
    }

    /// The snapshot of this state but for its streams, which are `streams`.
    pub fn snapshot_with(&self, streams: Arc<StreamTable>) -> Snapshot {
        Snapshot {
            ledger_id: self.ledger_id,
            size: self.size,
            chain_head: self.chain_head,
            last_timestamp_us: self.last_ts,
            segment_index: self.segment_index,
            segment_len: self.segment_len,
            segment_blocks: self.segment_blocks,
            frontier: self.frontier.nodes().to_vec(),
            streams,
        }
    }

    pub fn from_snapshot(s: Snapshot) -> Result<Tip, String> {
        let frontier = Frontier::from_parts(s.size, s.frontier).map_err(|e| e.to_string())?;
        Ok(Tip {
            index: StreamIndex::new(s.ledger_id, s.size),
            ledger_id: s.ledger_id,
            size: s.size,
            chain_head: s.chain_head,
            last_ts: s.last_timestamp_us,
            frontier,
            streams: StreamVersions::from_table(s.streams),
            segment_index: s.segment_index,
            segment_len: s.segment_len,
            segment_blocks: s.segment_blocks,
            nodes: Vec::new(),
        })
    }
}
