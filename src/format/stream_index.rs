//! Stream index blobs: for the records between two checkpoints, which
//! batches hold each stream's events, so that reading one stream reads
//! those batches and the tail instead of the whole log.
//!
//! Like a snapshot, an index is not evidence: `verify` re-derives each one
//! from the log and compares, and a reader that finds one missing or
//! inconsistent reads the log instead.
//!
//! ```text
//! magic "BILSIDX1" | version:u16le=1 | reserved:u16le=0 | ledger_id[16]
//! from:u64le | to:u64le | stream_count:u64le
//! ( varint len | stream bytes | varint last_version | varint position_count
//!   | (varint segment | varint offset){position_count} ){stream_count}
//! sha256[32] over all preceding bytes
//! ```
//! Streams are sorted by their bytes and unique; each stream's positions
//! (segment index and batch frame offset) are in log order and unique.
//! Checkpoints fall between batches, so every batch of the range is listed
//! under at least one stream and the greatest position is the range's last
//! batch.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::{varint, DecodeError, Hash};

pub const MAGIC: &[u8; 8] = b"BILSIDX1";

/// A batch's place in the log: segment index and frame offset.
pub type Position = (u64, u64);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamIndex {
    pub ledger_id: [u8; 16],
    /// Records `from..to` are indexed.
    pub from: u64,
    pub to: u64,
    /// Hashed, not sorted: the writer notes every record it appends here,
    /// and sorting is left to `encode`, once per checkpoint.
    pub streams: HashMap<String, StreamEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamEntry {
    /// The stream's version at its last record in the range.
    pub last_version: u64,
    pub positions: Vec<Position>,
}

impl StreamIndex {
    pub fn new(ledger_id: [u8; 16], from: u64) -> StreamIndex {
        StreamIndex {
            ledger_id,
            from,
            to: from,
            ..Default::default()
        }
    }

    /// Notes record `seq` of `stream` (at `version`) in the batch at `at`.
    /// Records must come in log order.
    pub fn note(&mut self, seq: u64, stream: &str, version: u64, at: Position) {
        debug_assert_eq!(seq, self.to, "records are indexed in log order");
        self.to = seq + 1;
        let e = match self.streams.get_mut(stream) {
            Some(e) => e,
            None => self.streams.entry(stream.to_owned()).or_default(),
        };
        e.last_version = version;
        if e.positions.last() != Some(&at) {
            e.positions.push(at);
        }
    }

    /// The range's last batch.
    pub fn last_position(&self) -> Option<Position> {
        self.streams
            .values()
            .filter_map(|e| e.positions.last())
            .max()
            .copied()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.streams.len() * 32);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.ledger_id);
        for v in [self.from, self.to] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.streams.len() as u64).to_le_bytes());
        let mut sorted: Vec<_> = self.streams.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (s, e) in sorted {
            varint::put(&mut b, s.len() as u64);
            b.extend_from_slice(s.as_bytes());
            varint::put(&mut b, e.last_version);
            varint::put(&mut b, e.positions.len() as u64);
            for (seg, off) in &e.positions {
                varint::put(&mut b, *seg);
                varint::put(&mut b, *off);
            }
        }
        let digest: Hash = Sha256::digest(&b).into();
        b.extend_from_slice(&digest);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        const FIXED: usize = 8 + 4 + 16 + 16 + 8;
        if b.len() < FIXED + 32 {
            return Err(DecodeError::new(b.len(), "stream index runs past the end"));
        }
        if &b[0..8] != MAGIC {
            return Err(DecodeError::new(
                0,
                "not a bi-ledger stream index (bad magic)",
            ));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != 1 {
            return Err(DecodeError::new(
                8,
                format!("unsupported stream index version {version}"),
            ));
        }
        if b[10..12] != [0, 0] {
            return Err(DecodeError::new(10, "reserved bytes are not zero"));
        }
        let body_end = b.len() - 32;
        let digest: Hash = Sha256::digest(&b[..body_end]).into();
        if digest[..] != b[body_end..] {
            return Err(DecodeError::new(body_end, "stream index checksum mismatch"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let mut idx = StreamIndex {
            ledger_id: b[12..28].try_into().unwrap(),
            from: u64_at(28),
            to: u64_at(36),
            streams: HashMap::new(),
        };
        if idx.from > idx.to {
            return Err(DecodeError::new(28, "range starts after it ends"));
        }
        let count = u64_at(44);
        let mut pos = FIXED;
        let body = &b[..body_end];
        let var = |pos: &mut usize| varint::get(body, pos);
        let mut prev: Option<String> = None;
        for _ in 0..count {
            let at = pos;
            let len = var(&mut pos)? as usize;
            let s = body
                .get(pos..pos.saturating_add(len))
                .ok_or_else(|| DecodeError::new(at, "stream id runs past the end"))?;
            let s = std::str::from_utf8(s)
                .map_err(|_| DecodeError::new(pos, "stream id is not UTF-8"))?
                .to_owned();
            if prev.as_ref().is_some_and(|p| p.as_bytes() >= s.as_bytes()) {
                return Err(DecodeError::new(at, "streams are not sorted and unique"));
            }
            pos += len;
            let last_version = var(&mut pos)?;
            let at = pos;
            let n = var(&mut pos)?;
            if n == 0 || n > (body_end - pos) as u64 {
                return Err(DecodeError::new(at, "bad position count"));
            }
            let mut positions = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let at = pos;
                let p = (var(&mut pos)?, var(&mut pos)?);
                if positions.last().is_some_and(|l| *l >= p) {
                    return Err(DecodeError::new(at, "positions are not in log order"));
                }
                positions.push(p);
            }
            idx.streams.insert(
                s.clone(),
                StreamEntry {
                    last_version,
                    positions,
                },
            );
            prev = Some(s);
        }
        if pos != body_end {
            return Err(DecodeError::new(
                pos,
                "trailing bytes after the last stream",
            ));
        }
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_index() -> impl Strategy<Value = StreamIndex> {
        (
            any::<[u8; 16]>(),
            0u64..1 << 40,
            proptest::collection::vec(("[a-z0-9-]{1,12}", 0u64..4, 0u64..3), 0..60),
        )
            .prop_map(|(id, from, recs)| {
                let mut idx = StreamIndex::new(id, from);
                let (mut seg, mut off) = (0u64, 84u64);
                let mut versions: std::collections::BTreeMap<String, u64> = Default::default();
                for (i, (stream, new_seg, new_batch)) in recs.into_iter().enumerate() {
                    if new_seg == 0 {
                        seg += 1;
                        off = 84;
                    } else if new_batch == 0 {
                        off += 300;
                    }
                    let v = versions.entry(stream.clone()).or_insert(0);
                    *v += 1;
                    idx.note(from + i as u64, &stream, *v, (seg, off));
                }
                idx
            })
    }

    proptest! {
        #[test]
        fn round_trips(idx in arb_index()) {
            let b = idx.encode();
            prop_assert_eq!(StreamIndex::decode(&b).unwrap(), idx);
        }

        #[test]
        fn any_flipped_byte_is_refused(idx in arb_index(), at in any::<prop::sample::Index>(), mask in 1u8..) {
            let mut b = idx.encode();
            let i = at.index(b.len());
            b[i] ^= mask;
            prop_assert!(StreamIndex::decode(&b).is_err());
        }

        #[test]
        fn any_cut_is_refused(idx in arb_index(), at in any::<prop::sample::Index>()) {
            let b = idx.encode();
            let cut = at.index(b.len());
            prop_assert!(StreamIndex::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn positions_are_kept_once_per_batch() {
        let mut idx = StreamIndex::new([1; 16], 10);
        idx.note(10, "a", 0, (0, 84));
        idx.note(11, "a", 1, (0, 84));
        idx.note(12, "b", 0, (0, 84));
        idx.note(13, "a", 2, (0, 400));
        assert_eq!(idx.to, 14);
        assert_eq!(idx.streams["a"].positions, vec![(0, 84), (0, 400)]);
        assert_eq!(idx.streams["a"].last_version, 2);
        assert_eq!(idx.streams["b"].positions, vec![(0, 84)]);
        let e = StreamIndex::decode(b"BILSNAP1").unwrap_err();
        assert!(e.what.contains("past the end"), "{e}");
    }
}
