//! Merkle node caches: the roots of the perfect subtrees of 1,024 leaves
//! and more that were completed between two checkpoints, so that a proof
//! reads a few dozen stored nodes and at most a few thousand records
//! instead of hashing the whole log up to the size it proves.
//!
//! Like a stream index, a node cache is not evidence: `verify` re-derives
//! each one from the log and compares, and a prover checks every proof it
//! builds from one against the signed root before handing it out.
//!
//! ```text
//! magic "BILNODE1" | version:u16le=1 | reserved:u16le=0 | ledger_id[16]
//! from:u64le | to:u64le
//! hash[32] × count(from, to)
//! sha256[32] over all preceding bytes
//! ```
//! The nodes are those completed when the tree grows from `from` to `to`
//! leaves: for each multiple `c` of 2^MIN_HEIGHT with `from < c <= to`, in
//! increasing `c`, the nodes of heights `MIN_HEIGHT ..= trailing_zeros(c)`
//! that end at leaf `c`, lowest first. Their number follows from `from`
//! and `to` alone, so it is not stored.

use super::{DecodeError, Hash};

pub const MAGIC: &[u8; 8] = b"BILNODE1";

/// The lowest cached height: subtrees of 1,024 leaves. Below it a proof
/// hashes records, at most 1,023 of them per side of a range.
pub const MIN_HEIGHT: u32 = 10;

/// Bytes before the first hash.
pub const HEADER_LEN: usize = 8 + 4 + 16 + 16;

/// A node of the tree: the perfect subtree of height `height` over leaves
/// `index · 2^height .. (index + 1) · 2^height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub height: u32,
    pub index: u64,
}

impl Node {
    /// The tree size at which this node is complete: one past its last leaf.
    /// `None` past `u64`.
    pub fn end(&self) -> Option<u64> {
        self.index
            .checked_add(1)?
            .checked_mul(1u64.checked_shl(self.height)?)
    }

    /// Its leaves, `[first, end)`, the end capped at `u64::MAX`.
    pub fn leaves(&self) -> (u64, u64) {
        (self.index << self.height, self.end().unwrap_or(u64::MAX))
    }
}

/// How many cached nodes are completed while the tree grows from `from` to
/// `to` leaves (`from <= to`).
pub fn count(from: u64, to: u64) -> u64 {
    (MIN_HEIGHT..64).map(|h| (to >> h) - (from >> h)).sum()
}

/// Where node `n` sits among the nodes of a cache that starts at `from`,
/// or `None` if it is not completed after `from` or is below `MIN_HEIGHT`.
pub fn position(from: u64, n: Node) -> Option<u64> {
    let end = n.end()?;
    if n.height < MIN_HEIGHT || end <= from {
        return None;
    }
    Some(count(from, end - 1) + u64::from(n.height - MIN_HEIGHT))
}

/// The nodes completed while the tree grows from `from` to `to`, in cache
/// order.
pub fn completed(from: u64, to: u64) -> impl Iterator<Item = Node> {
    let step = 1u64 << MIN_HEIGHT;
    let first = (from >> MIN_HEIGHT) + 1;
    let last = to >> MIN_HEIGHT;
    (first..=last).flat_map(move |k| {
        let end = k * step;
        (MIN_HEIGHT..=end.trailing_zeros()).map(move |height| Node {
            height,
            index: (end >> height) - 1,
        })
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCache {
    pub ledger_id: [u8; 16],
    /// The tree sizes of two consecutive checkpoints.
    pub from: u64,
    pub to: u64,
    /// `count(from, to)` node hashes, in cache order.
    pub hashes: Vec<Hash>,
}

impl NodeCache {
    /// Node `n`'s hash, if this cache holds it.
    pub fn get(&self, n: Node) -> Option<Hash> {
        let end = n.end()?;
        if end > self.to {
            return None;
        }
        let at = usize::try_from(position(self.from, n)?).ok()?;
        self.hashes.get(at).copied()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = super::cache_header(MAGIC, HEADER_LEN + 32 * (self.hashes.len() + 1));
        b.extend_from_slice(&self.ledger_id);
        b.extend_from_slice(&self.from.to_le_bytes());
        b.extend_from_slice(&self.to.to_le_bytes());
        for h in &self.hashes {
            b.extend_from_slice(h);
        }
        super::seal(&mut b);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let b = super::open_cache(b, MAGIC, "node cache", HEADER_LEN)?;
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let (from, to) = (u64_at(28), u64_at(36));
        if from > to {
            return Err(DecodeError::new(28, "range starts after it ends"));
        }
        let want = count(from, to);
        let held = (b.len() - HEADER_LEN) as u64;
        if !held.is_multiple_of(32) || held / 32 != want {
            return Err(DecodeError::new(
                HEADER_LEN,
                format!(
                    "{held} bytes of nodes where records {from}..{to} complete {want} nodes ({} bytes)",
                    want * 32
                ),
            ));
        }
        Ok(NodeCache {
            ledger_id: b[12..28].try_into().unwrap(),
            from,
            to,
            hashes: b[HEADER_LEN..]
                .chunks_exact(32)
                .map(|c| c.try_into().unwrap())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::merkle;
    use proptest::prelude::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| merkle::leaf_hash(&i.to_le_bytes()))
            .collect()
    }

    #[test]
    fn completed_nodes_are_the_perfect_subtrees_that_end_in_the_range() {
        // 4,096 leaves: 4 nodes of height 10, 2 of 11, 1 of 12.
        let all: Vec<Node> = completed(0, 4096).collect();
        let h = |height, index| Node { height, index };
        assert_eq!(
            all,
            [
                h(10, 0),
                h(10, 1),
                h(11, 0),
                h(10, 2),
                h(10, 3),
                h(11, 1),
                h(12, 0)
            ]
        );
        assert_eq!(count(0, 4096), 7);
        assert_eq!(count(1023, 1024), 1);
        assert_eq!(count(1024, 2047), 0);
        assert_eq!(completed(1024, 2047).count(), 0);
    }

    #[test]
    fn the_hashes_are_the_roots_of_those_subtrees() {
        let l = leaves(5000);
        for n in completed(0, 5000) {
            let (a, b) = n.leaves();
            assert!(b <= 5000);
            assert_eq!(b - a, 1 << n.height);
        }
        // The root of the first 4,096 leaves is the cached node (12, 0).
        let root = merkle::root(&l[..4096]);
        let cache = NodeCache {
            ledger_id: [7; 16],
            from: 0,
            to: 4096,
            hashes: completed(0, 4096)
                .map(|n| merkle::root(&l[n.leaves().0 as usize..n.leaves().1 as usize]))
                .collect(),
        };
        assert_eq!(
            cache.get(Node {
                height: 12,
                index: 0
            }),
            Some(root)
        );
        assert_eq!(
            cache.get(Node {
                height: 9,
                index: 0
            }),
            None
        );
        assert_eq!(
            cache.get(Node {
                height: 10,
                index: 4
            }),
            None
        );
    }

    #[test]
    fn huge_trees_do_not_overflow() {
        let n = Node {
            height: 63,
            index: 1,
        };
        assert_eq!(n.end(), None);
        assert_eq!(position(0, n), None);
        // Ends 2^64 - 1024·k for k = 1..4, of 1, 2, 1 and 3 nodes.
        assert_eq!(count(u64::MAX - 5000, u64::MAX), 7);
        assert_eq!(completed(u64::MAX - 5000, u64::MAX).count(), 7);
    }

    fn arb_cache() -> impl Strategy<Value = NodeCache> {
        (0u64..1 << 40, 0u64..20_000).prop_flat_map(|(from, len)| {
            let to = from + len;
            proptest::collection::vec(any::<[u8; 32]>(), count(from, to) as usize).prop_map(
                move |hashes| NodeCache {
                    ledger_id: [3; 16],
                    from,
                    to,
                    hashes,
                },
            )
        })
    }

    proptest! {
        #[test]
        fn position_counts_the_nodes_before(from in 0u64..1 << 50, len in 0u64..50_000) {
            let to = from + len;
            let nodes: Vec<Node> = completed(from, to).collect();
            prop_assert_eq!(nodes.len() as u64, count(from, to));
            for (i, n) in nodes.iter().enumerate() {
                prop_assert_eq!(position(from, *n), Some(i as u64));
                let end = n.end().unwrap();
                prop_assert!(from < end && end <= to);
            }
        }

        #[test]
        fn a_noting_frontier_sees_every_cached_node(
            batches in proptest::collection::vec(1usize..1500, 1..6),
        ) {
            let n: usize = batches.iter().sum();
            let l = leaves(n as u64);
            let mut frontier = merkle::Frontier::new();
            let mut seen = Vec::new();
            let mut at = 0;
            for len in batches {
                let subtrees = merkle::range_subtrees_capped(at as u64, &l[at..at + len], MIN_HEIGHT);
                for (height, hash) in subtrees {
                    frontier
                        .append_subtree_noting(height, hash, MIN_HEIGHT, |node, h| seen.push((node, *h)))
                        .unwrap();
                }
                at += len;
            }
            prop_assert_eq!(frontier.root(), merkle::root(&l));
            let want: Vec<(Node, Hash)> = completed(0, n as u64)
                .map(|nd| (nd, merkle::root(&l[nd.leaves().0 as usize..nd.leaves().1 as usize])))
                .collect();
            prop_assert_eq!(seen, want);
        }

        #[test]
        fn round_trips(cache in arb_cache()) {
            prop_assert_eq!(NodeCache::decode(&cache.encode()).unwrap(), cache);
        }

        #[test]
        fn any_flipped_byte_is_refused(cache in arb_cache(), at in any::<prop::sample::Index>(), mask in 1u8..) {
            let mut b = cache.encode();
            let i = at.index(b.len());
            b[i] ^= mask;
            prop_assert!(NodeCache::decode(&b).is_err());
        }

        #[test]
        fn any_cut_is_refused(cache in arb_cache(), at in any::<prop::sample::Index>()) {
            let b = cache.encode();
            let cut = at.index(b.len());
            prop_assert!(NodeCache::decode(&b[..cut]).is_err());
        }
    }
}
