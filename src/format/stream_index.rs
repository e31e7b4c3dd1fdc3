//! Stream index blobs: for the batches between two checkpoints, where each
//! batch is and a Bloom filter of the streams it holds, so that reading one
//! stream reads only the batches whose filter admits it (and the tail),
//! not the whole log.
//!
//! A filter, not an exact list: building it costs a few bit sets per
//! record in a small array (the writer does it for every batch it appends,
//! while the block is on its way to the disk), and the index stays a small
//! fraction of the log however many streams there are. A false positive
//! costs one batch read; there are no false negatives.
//!
//! Like a snapshot, an index is not evidence: `verify` re-derives each one
//! from the log and compares, and a reader that finds one missing or out
//! of line reads the log instead.
//!
//! ```text
//! magic "BILSIDX1" | version:u16le=1 | reserved:u16le=0 | ledger_id[16]
//! from:u64le | to:u64le | batch_count:u64le
//! ( varint segment | varint offset | varint record_count
//!   | varint filter_len | filter[filter_len] ){batch_count}
//! sha256[32] over all preceding bytes
//! ```
//! Batches are in log order; their record counts add up to `to - from`.
//! `filter_len` is `ceil(BITS_PER_RECORD * record_count / 8)` bytes; stream
//! `s` sets bits `(h1 + i * h2) mod (8 * filter_len)` for `i` in
//! `0..PROBES`, where `h1` is FNV-1a 64 of `s`'s bytes and `h2` is `h1`
//! rotated by 32 bits, OR 1. Bit `b` is bit `b % 8` of byte `b / 8`.

use super::{varint, DecodeError};

pub const MAGIC: &[u8; 8] = b"BILSIDX1";

/// Filter bits per record, and probes per stream: about 1 % false
/// positives.
pub const BITS_PER_RECORD: u64 = 10;
pub const PROBES: u64 = 7;

/// A batch's place in the log: segment index and frame offset.
pub type Position = (u64, u64);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamIndex {
    pub ledger_id: [u8; 16],
    /// Records `from..to` are indexed.
    pub from: u64,
    pub to: u64,
    pub batches: Vec<BatchFilter>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchFilter {
    pub position: Position,
    pub first_seq: u64,
    pub count: u64,
    pub filter: Vec<u8>,
}

/// The two hashes a stream's probes are made of.
pub fn stream_hashes(stream: &str) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h, h.rotate_left(32) | 1)
}

impl BatchFilter {
    /// The filter of a batch of `count` records at `position`, whose
    /// streams `streams` yields (once per record, repeats allowed).
    pub fn build<'a>(
        position: Position,
        first_seq: u64,
        count: u64,
        streams: impl Iterator<Item = &'a str>,
    ) -> BatchFilter {
        let bits = filter_len(count) * 8;
        let mut filter = vec![0u8; filter_len(count) as usize];
        if bits > 0 {
            let m = Modulus::new(bits);
            for s in streams {
                for b in probes(stream_hashes(s), &m) {
                    filter[(b / 8) as usize] |= 1 << (b % 8);
                }
            }
        }
        BatchFilter {
            position,
            first_seq,
            count,
            filter,
        }
    }

    /// Whether the batch may hold a record of the stream with these hashes
    /// (false: it certainly does not).
    pub fn may_hold(&self, (h1, h2): (u64, u64)) -> bool {
        let bits = self.filter.len() as u64 * 8;
        bits > 0
            && probes((h1, h2), &Modulus::new(bits))
                .all(|b| self.filter[(b / 8) as usize] & (1 << (b % 8)) != 0)
    }
}

/// Remainders modulo a filter's bit count, by multiplication (Lemire,
/// Kaser and Kurz, "Faster remainder by direct computation", 2019): a
/// 64-bit division costs tens of cycles, and every record of every batch
/// takes two, in the writer and again in verify.
struct Modulus {
    bits: u64,
    /// `2^128 / bits`, rounded up (0 for `bits` = 1, where every
    /// remainder is 0).
    m: u128,
    /// 2^64 mod `bits`.
    wrap: u64,
}

impl Modulus {
    fn new(bits: u64) -> Modulus {
        debug_assert!(bits > 0);
        let m = (u128::MAX / u128::from(bits)).wrapping_add(1);
        let mut this = Modulus { bits, m, wrap: 0 };
        this.wrap = (this.rem(u64::MAX) + 1) % bits;
        this
    }

    fn rem(&self, x: u64) -> u64 {
        let low = self.m.wrapping_mul(u128::from(x));
        let d = u128::from(self.bits);
        let hi = (low >> 64) * d;
        let lo = (u128::from(low as u64) * d) >> 64;
        ((hi + lo) >> 64) as u64
    }
}

/// The bit numbers `(h1 + i * h2) mod bits` for `i` in `0..PROBES`, with the
/// sum wrapping at 2^64 as the format says, but with two remainders per
/// stream instead of one per probe: each step adds `h2 mod bits`, less
/// 2^64 mod `bits` where the 64-bit sum wrapped. Verify builds a filter
/// for every batch, and the divisions showed in its profile.
fn probes((h1, h2): (u64, u64), m: &Modulus) -> impl Iterator<Item = u64> + '_ {
    let bits = m.bits;
    let step = m.rem(h2);
    let unwrap = bits - m.wrap; // ≡ -2^64 (mod bits)
    let (mut v, mut r) = (h1, m.rem(h1));
    (0..PROBES).map(move |i| {
        if i > 0 {
            let (next, wrapped) = v.overflowing_add(h2);
            v = next;
            r += step;
            if wrapped {
                r += unwrap;
            }
            while r >= bits {
                r -= bits;
            }
        }
        r
    })
}

fn filter_len(count: u64) -> u64 {
    // Saturating: a count read from a damaged index must give a length
    // that fails the checks after it, not an overflow.
    BITS_PER_RECORD.saturating_mul(count).div_ceil(8)
}

impl StreamIndex {
    pub fn new(ledger_id: [u8; 16], from: u64) -> StreamIndex {
        StreamIndex {
            ledger_id,
            from,
            to: from,
            batches: Vec::new(),
        }
    }

    /// Adds the next batch (it must start at `self.to`).
    pub fn push(&mut self, batch: BatchFilter) {
        debug_assert_eq!(batch.first_seq, self.to, "batches are indexed in log order");
        self.to = batch.first_seq + batch.count;
        self.batches.push(batch);
    }

    pub fn encode(&self) -> Vec<u8> {
        let filters: usize = self.batches.iter().map(|b| b.filter.len() + 12).sum();
        let mut b = super::cache_header(MAGIC, 92 + filters);
        b.extend_from_slice(&self.ledger_id);
        for v in [self.from, self.to, self.batches.len() as u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for f in &self.batches {
            varint::put(&mut b, f.position.0);
            varint::put(&mut b, f.position.1);
            varint::put(&mut b, f.count);
            varint::put(&mut b, f.filter.len() as u64);
            b.extend_from_slice(&f.filter);
        }
        super::seal(&mut b);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        const FIXED: usize = 8 + 4 + 16 + 24;
        let body = super::open_cache(b, MAGIC, "stream index", FIXED)?;
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap());
        let mut idx = StreamIndex::new(body[12..28].try_into().unwrap(), u64_at(28));
        let to = u64_at(36);
        if idx.from > to {
            return Err(DecodeError::new(28, "range starts after it ends"));
        }
        let count = u64_at(44);
        let mut pos = FIXED;
        for _ in 0..count {
            let at = pos;
            let position = (varint::get(body, &mut pos)?, varint::get(body, &mut pos)?);
            if idx.batches.last().is_some_and(|l| l.position >= position) {
                return Err(DecodeError::new(at, "batches are not in log order"));
            }
            let n = varint::get(body, &mut pos)?;
            if n == 0 || n > to - idx.to {
                return Err(DecodeError::new(
                    at,
                    "batch record count does not fit the range",
                ));
            }
            let at = pos;
            let len = varint::get(body, &mut pos)?;
            if len != filter_len(n) {
                return Err(DecodeError::new(
                    at,
                    "filter length does not fit the record count",
                ));
            }
            let filter = body
                .get(pos..pos + len as usize)
                .ok_or_else(|| DecodeError::new(at, "filter runs past the end"))?
                .to_vec();
            pos += len as usize;
            idx.push(BatchFilter {
                position,
                first_seq: idx.to,
                count: n,
                filter,
            });
        }
        if idx.to != to {
            return Err(DecodeError::new(
                36,
                "batch record counts do not add up to the range",
            ));
        }
        if pos != body.len() {
            return Err(DecodeError::new(pos, "trailing bytes after the last batch"));
        }
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The incremental probes are the format's formula exactly,
        /// wrapping sums included.
        #[test]
        fn probes_follow_the_formula(h1 in proptest::prelude::any::<u64>(), h2 in proptest::prelude::any::<u64>(), bits in 1u64..1 << 40) {
            let h2 = h2 | 1;
            let want: Vec<u64> = (0..PROBES).map(|i| h1.wrapping_add(i.wrapping_mul(h2)) % bits).collect();
            let got: Vec<u64> = probes((h1, h2), &Modulus::new(bits)).collect();
            proptest::prop_assert_eq!(got, want);
        }

        /// The remainder by multiplication is `%`, for any divisor.
        #[test]
        fn remainders_are_remainders(x in proptest::prelude::any::<u64>(), d in 1u64..) {
            proptest::prop_assert_eq!(Modulus::new(d).rem(x), x % d);
        }

        /// A batch's filter sets exactly the bits that the format's
        /// formula, stream by stream, sets.
        #[test]
        fn filters_follow_the_formula(streams in proptest::collection::vec(".{0,40}", 0..40)) {
            let n = streams.len() as u64;
            let f = BatchFilter::build((0, 84), 0, n, streams.iter().map(String::as_str));
            let bits = filter_len(n) * 8;
            let mut want = vec![0u8; filter_len(n) as usize];
            for s in &streams {
                let mut h = 0xcbf2_9ce4_8422_2325u64;
                for b in s.as_bytes() {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
                }
                let h2 = h.rotate_left(32) | 1;
                for i in 0..PROBES {
                    let b = h.wrapping_add(i.wrapping_mul(h2)) % bits;
                    want[(b / 8) as usize] |= 1 << (b % 8);
                }
            }
            proptest::prop_assert_eq!(f.filter, want);
        }
    }
    use proptest::prelude::*;

    #[test]
    fn remainders_at_the_edges() {
        for d in [
            1,
            2,
            3,
            7,
            8,
            1 << 32,
            (1 << 32) + 1,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let m = Modulus::new(d);
            for x in [0, 1, d - 1, d, d.wrapping_add(1), u64::MAX - 1, u64::MAX] {
                assert_eq!(m.rem(x), x % d, "{x} mod {d}");
            }
            assert_eq!(m.wrap, (u64::MAX % d + 1) % d, "2^64 mod {d}");
        }
    }

    fn arb_index() -> impl Strategy<Value = StreamIndex> {
        (
            any::<[u8; 16]>(),
            0u64..1 << 40,
            proptest::collection::vec(
                (
                    proptest::collection::vec("[a-z0-9-]{1,12}", 1..20),
                    any::<bool>(),
                ),
                0..12,
            ),
        )
            .prop_map(|(id, from, batches)| {
                let mut idx = StreamIndex::new(id, from);
                let (mut seg, mut off) = (0u64, 84u64);
                for (streams, new_segment) in batches {
                    if new_segment {
                        seg += 1;
                        off = 84;
                    }
                    let n = streams.len() as u64;
                    idx.push(BatchFilter::build(
                        (seg, off),
                        idx.to,
                        n,
                        streams.iter().map(String::as_str),
                    ));
                    off += 300 * n;
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

        /// No false negatives, ever.
        #[test]
        fn a_batch_admits_every_stream_it_holds(streams in proptest::collection::vec("\\PC{0,20}", 1..300)) {
            let f = BatchFilter::build((0, 84), 0, streams.len() as u64, streams.iter().map(String::as_str));
            for s in &streams {
                prop_assert!(f.may_hold(stream_hashes(s)));
            }
        }
    }

    #[test]
    fn false_positives_are_rare() {
        let streams: Vec<String> = (0..1000).map(|i| format!("decision-{i:06}")).collect();
        let f = BatchFilter::build((0, 84), 0, 1000, streams.iter().map(String::as_str));
        assert_eq!(f.filter.len(), 1250);
        let fp = (1000..101_000)
            .filter(|i| f.may_hold(stream_hashes(&format!("decision-{i:06}"))))
            .count();
        // 10 bits and 7 probes per stream: about 0.8 % in theory.
        assert!(fp < 2_000, "{fp} false positives in 100,000");
    }

    #[test]
    fn hashes_are_fnv1a() {
        // FNV-1a 64 test vectors (the empty string and "a").
        assert_eq!(stream_hashes("").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(stream_hashes("a").0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stream_hashes("a").1, 0x8601_ec8c_af63_dc4c | 1);
    }
}
