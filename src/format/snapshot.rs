//! Writer-state snapshots, stored beside each checkpoint so that opening a
//! ledger for writing reads only the log tail after the newest checkpoint.
//!
//! A snapshot is not evidence (the signed checkpoint is): the writer checks
//! that its size, chain head and Merkle root equal the checkpoint's, and
//! `verify` re-derives the whole snapshot from the log and compares.
//!
//! ```text
//! magic "BILSNAP1" | version:u16le=1 | reserved:u16le=0 | ledger_id[16]
//! size:u64le | chain_head[32] | last_ts:i64le
//! segment_index:u64le | segment_len:u64le | segment_blocks:u64le
//! frontier_len:u32le | frontier_node[32]{frontier_len}
//! stream_count:u64le | (varint len | stream bytes | varint version){stream_count}
//! sha256[32] over all preceding bytes
//! ```
//! Streams are sorted by their bytes and unique (`format::stream_table`).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::stream_table::StreamTable;
use super::{DecodeError, Hash};

pub const MAGIC: &[u8; 8] = b"BILSNAP1";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub ledger_id: [u8; 16],
    pub size: u64,
    pub chain_head: Hash,
    pub last_timestamp_us: i64,
    /// The segment holding the last record, and how far it extends.
    pub segment_index: u64,
    pub segment_len: u64,
    pub segment_blocks: u64,
    pub frontier: Vec<Hash>,
    /// Each stream's current (last) version.
    pub streams: Arc<StreamTable>,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let (head, entries, digest) = self.encoded_parts();
        let mut b = Vec::with_capacity(head.len() + entries.len() + digest.len());
        b.extend_from_slice(&head);
        b.extend_from_slice(entries);
        b.extend_from_slice(&digest);
        b
    }

    /// The encoding in three parts: the bytes before the stream entries,
    /// the entries (the table's own bytes, not copied) and the closing
    /// SHA-256. `verify` compares a stored snapshot of millions of streams
    /// with these, range by range, instead of holding a second copy.
    pub fn encoded_parts(&self) -> (Vec<u8>, &[u8], Hash) {
        let mut b = super::cache_header(MAGIC, 160 + self.frontier.len() * 32);
        b.extend_from_slice(&self.ledger_id);
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.chain_head);
        b.extend_from_slice(&self.last_timestamp_us.to_le_bytes());
        b.extend_from_slice(&self.segment_index.to_le_bytes());
        b.extend_from_slice(&self.segment_len.to_le_bytes());
        b.extend_from_slice(&self.segment_blocks.to_le_bytes());
        b.extend_from_slice(&(self.frontier.len() as u32).to_le_bytes());
        for n in &self.frontier {
            b.extend_from_slice(n);
        }
        b.extend_from_slice(&self.streams.len().to_le_bytes());
        let entries = self.streams.entries_bytes();
        let mut h = Sha256::new();
        h.update(&b);
        h.update(entries);
        (b, entries, h.finalize().into())
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        Snapshot::decode_owned(b.to_vec())
    }

    /// `decode`, keeping `b` as the stream table's storage: a snapshot of
    /// millions of streams is not copied on the way in.
    pub fn decode_owned(mut b: Vec<u8>) -> Result<Self, DecodeError> {
        const FIXED: usize = 8 + 4 + 16 + 8 + 32 + 8 + 24 + 4;
        let body = super::open_cache(&b, MAGIC, "snapshot", FIXED + 8)?;
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap());
        let mut s = Snapshot {
            ledger_id: body[12..28].try_into().unwrap(),
            size: u64_at(28),
            chain_head: body[36..68].try_into().unwrap(),
            last_timestamp_us: u64_at(68) as i64,
            segment_index: u64_at(76),
            segment_len: u64_at(84),
            segment_blocks: u64_at(92),
            ..Default::default()
        };
        let n = u32::from_le_bytes(body[100..104].try_into().unwrap()) as usize;
        let mut pos = FIXED;
        if n != s.size.count_ones() as usize || body.len() < pos + n * 32 + 8 {
            return Err(DecodeError::new(
                100,
                format!("frontier of {n} nodes does not fit size {}", s.size),
            ));
        }
        for _ in 0..n {
            s.frontier.push(body[pos..pos + 32].try_into().unwrap());
            pos += 32;
        }
        let count = u64_at(pos);
        pos += 8;
        let body_len = body.len();
        b.truncate(body_len);
        let (streams, end) = StreamTable::decode(b, pos, count)?;
        if end != body_len {
            return Err(DecodeError::new(end, "trailing bytes in snapshot"));
        }
        s.streams = Arc::new(streams);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(size in 0u64..5000, head in any::<[u8; 32]>(), ts in any::<i64>(),
                      streams in proptest::collection::btree_map(".{0,12}", any::<u64>(), 0..20)) {
            let s = Snapshot {
                ledger_id: [5; 16],
                size,
                chain_head: head,
                last_timestamp_us: ts,
                segment_index: 3,
                segment_len: 999,
                segment_blocks: 7,
                frontier: (0..size.count_ones()).map(|i| [i as u8; 32]).collect(),
                streams: Arc::new(StreamTable::from_sorted(streams.iter().map(|(s, v)| (s.as_str(), *v)))),
            };
            let b = s.encode();
            prop_assert_eq!(Snapshot::decode(&b).unwrap(), s);
            let mut bad = b.clone();
            let i = bad.len() / 2;
            bad[i] ^= 0x10;
            prop_assert!(Snapshot::decode(&bad).is_err());
        }
    }
}
