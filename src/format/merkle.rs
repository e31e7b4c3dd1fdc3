//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing, section 2.1.
//!
//! Leaves are passed around already hashed with [`leaf_hash`], so a caller can
//! hash entries in parallel and keep only 32 bytes per leaf. Proof generation
//! is expressed as leaf ranges (see [`inclusion_proof_ranges`] and
//! [`consistency_proof_ranges`]) so that a ledger with millions of leaves can
//! compute each proof node from whatever it has stored (for example, cached
//! subtree roots) without loading every leaf.

use sha2::{Digest, Sha256};

use super::nodes::Node;
use super::{sha, Hash};

/// Why a Merkle tree operation or proof verification failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    #[error("leaf index {index} is out of range for tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error(
        "misaligned subtree: cannot append a subtree of height {height} to a tree of size {size} \
         (the size must be a multiple of 2^{height})"
    )]
    MisalignedSubtree { size: u64, height: u32 },
    #[error(
        "appending a subtree of height {height} to a tree of size {size} overflows the 64-bit tree size"
    )]
    SizeOverflow { size: u64, height: u32 },
    #[error("wrong number of hashes: expected {expected}, got {got}")]
    WrongProofLength { expected: usize, got: usize },
    #[error("root mismatch: the inclusion proof does not lead to the expected tree root")]
    RootMismatch,
    #[error("root mismatch: the consistency proof does not lead to the expected old root")]
    OldRootMismatch,
    #[error("root mismatch: the consistency proof does not lead to the expected new root")]
    NewRootMismatch,
    #[error("old tree size {old_size} is greater than new tree size {new_size}")]
    OldSizeGreater { old_size: u64, new_size: u64 },
    #[error("bad frontier encoding: tree size {size} needs {expected} subtree hashes, got {got}")]
    BadFrontier {
        size: u64,
        expected: u32,
        got: usize,
    },
}

/// SHA-256(0x00 || data): the hash of one log entry.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// SHA-256(0x01 || left || right): the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut first = [0u8; 64];
    first[0] = 0x01;
    first[1..33].copy_from_slice(left);
    first[33..].copy_from_slice(&right[..31]);
    let mut last = [0u8; 64];
    last[0] = right[31];
    sha::pad(&mut last, 65);
    let mut state = sha::IV;
    sha::compress(&mut state, &first);
    sha::compress(&mut state, &last);
    sha::digest(&state)
}

/// The root of the empty tree, SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The RFC 9162 split point: the largest power of two strictly less than `n`.
/// Only meaningful for `n >= 2`.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH over already-hashed leaves. A single leaf is its own root; the empty
/// tree has [`empty_root`].
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The compact range [0, size): one root per 1-bit of `size`, largest
/// subtree first. This is all the state needed to keep appending and to
/// compute the current root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from a stored size and its subtree roots (largest
    /// first), rejecting a node count that does not fit the size.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, MerkleError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(MerkleError::BadFrontier {
                size,
                expected: size.count_ones(),
                got: nodes.len(),
            });
        }
        Ok(Self { size, nodes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest (leftmost) first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash.
    ///
    /// # Panics
    ///
    /// If the tree already holds `u64::MAX` leaves.
    pub fn push(&mut self, leaf: Hash) {
        if let Err(e) = self.append_subtree(0, leaf) {
            panic!("{e}");
        }
    }

    /// Appends several leaf hashes.
    ///
    /// # Panics
    ///
    /// If the tree size would overflow `u64`.
    pub fn extend(&mut self, leaves: &[Hash]) {
        for leaf in leaves {
            self.push(*leaf);
        }
    }

    /// Appends a perfect subtree of `2^height` leaves whose root is `hash`.
    /// The current size must be a multiple of `2^height`, otherwise the
    /// subtree would straddle a boundary of the RFC 9162 tree shape.
    pub fn append_subtree(&mut self, height: u32, hash: Hash) -> Result<(), MerkleError> {
        self.append_subtree_noting(height, hash, u32::MAX, |_, _| {})
    }

    /// [`Self::append_subtree`], handing every node of height `note_from`
    /// or more that it appends or completes to `note`, lowest first. Fed
    /// with subtrees no higher than `note_from`, it sees every such node of
    /// the tree (what a node cache holds, `format::nodes`).
    pub fn append_subtree_noting(
        &mut self,
        height: u32,
        hash: Hash,
        note_from: u32,
        mut note: impl FnMut(Node, &Hash),
    ) -> Result<(), MerkleError> {
        let width = 1u64.checked_shl(height).ok_or(MerkleError::SizeOverflow {
            size: self.size,
            height,
        })?;
        if self.size.trailing_zeros() < height {
            return Err(MerkleError::MisalignedSubtree {
                size: self.size,
                height,
            });
        }
        let new_size = self
            .size
            .checked_add(width)
            .ok_or(MerkleError::SizeOverflow {
                size: self.size,
                height,
            })?;
        // Binary increment: every 1-bit that carries merges the two equal
        // subtrees, exactly as the full tree would pair them.
        let mut carry = hash;
        let mut bit = height;
        let mut noted = |bit: u32, carry: &Hash| {
            if bit >= note_from {
                note(
                    Node {
                        height: bit,
                        index: (new_size - 1) >> bit,
                    },
                    carry,
                );
            }
        };
        noted(bit, &carry);
        while bit < 64 && self.size & (1 << bit) != 0 {
            let left = self
                .nodes
                .pop()
                .expect("frontier holds one node per 1-bit of its size");
            carry = node_hash(&left, &carry);
            bit += 1;
            noted(bit, &carry);
        }
        self.nodes.push(carry);
        self.size = new_size;
        Ok(())
    }

    /// The MTH of the leaves appended so far.
    pub fn root(&self) -> Hash {
        // MTH splits off the largest power of two first, so the rightmost
        // (smallest) subtrees are combined first.
        let mut nodes = self.nodes.iter().rev();
        match nodes.next() {
            None => empty_root(),
            Some(last) => nodes.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

/// Splits the leaf range `[start, start + leaves.len())` into its maximal
/// aligned perfect subtrees, left to right, returning `(height, root)` for
/// each. Appending them in order with [`Frontier::append_subtree`] to a
/// frontier of size `start` is equivalent to [`Frontier::extend`], which lets
/// batches be hashed in parallel and merged serially.
///
/// # Panics
///
/// If `start + leaves.len()` overflows `u64`.
pub fn range_subtrees(start: u64, leaves: &[Hash]) -> Vec<(u32, Hash)> {
    range_subtrees_capped(start, leaves, 63)
}

/// [`range_subtrees`] with no subtree higher than `max_height`, for a
/// frontier that notes the nodes from that height up
/// ([`Frontier::append_subtree_noting`]).
pub fn range_subtrees_capped(start: u64, leaves: &[Hash], max_height: u32) -> Vec<(u32, Hash)> {
    let end = start
        .checked_add(leaves.len() as u64)
        .expect("leaf range end overflows u64");
    range_pieces(start, end, max_height)
        .into_iter()
        .map(|n| {
            let offset = ((n.index << n.height) - start) as usize;
            (
                n.height,
                root(&leaves[offset..offset + (1usize << n.height)]),
            )
        })
        .collect()
}

/// The leaf range `[start, end)` as its maximal aligned perfect subtrees
/// no higher than `max_height`, left to right.
pub fn range_pieces(start: u64, end: u64, max_height: u32) -> Vec<Node> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // The subtree must start on a multiple of its width and stay inside
        // the range; take the widest that does both.
        let remaining = end - pos;
        let max_by_range = 63 - remaining.leading_zeros();
        let height = pos.trailing_zeros().min(max_by_range).min(max_height);
        out.push(Node {
            height,
            index: pos >> height,
        });
        pos += 1u64 << height;
    }
    out
}

/// The leaf ranges `[a, b)` whose MTHs form the inclusion proof of leaf
/// `index` in a tree of `size` leaves (RFC 9162 2.1.3.1 PATH), in proof order
/// (nearest the leaf first).
pub fn inclusion_proof_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    // PATH recurses towards the leaf and appends the sibling after the
    // sub-path, so collect top-down and reverse.
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let mid = lo + split(hi - lo);
        if index < mid {
            out.push((mid, hi));
            hi = mid;
        } else {
            out.push((lo, mid));
            lo = mid;
        }
    }
    out.reverse();
    Ok(out)
}

/// The leaf ranges `[a, b)` whose MTHs form the consistency proof between
/// trees of `old_size` and `new_size` leaves (RFC 9162 2.1.4.1 PROOF and
/// SUBPROOF), in proof order. Empty when `old_size` is 0 or equals
/// `new_size`.
pub fn consistency_proof_ranges(
    old_size: u64,
    new_size: u64,
) -> Result<Vec<(u64, u64)>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeGreater { old_size, new_size });
    }
    let mut out = Vec::new();
    if old_size == 0 || old_size == new_size {
        return Ok(out);
    }
    // SUBPROOF appends the sibling after the recursive part, so collect
    // top-down and reverse. `m` is the old size relative to `lo`; `whole`
    // is SUBPROOF's flag b (the old tree is a complete left part so far).
    let (mut lo, mut hi, mut m, mut whole) = (0u64, new_size, old_size, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                out.push((lo, hi));
            }
            break;
        }
        let k = split(n);
        if m <= k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
            m -= k;
            whole = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// The inclusion proof of leaf `index` in the tree of all `leaves`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, MerkleError> {
    let ranges = inclusion_proof_ranges(index, leaves.len() as u64)?;
    Ok(hash_ranges(leaves, &ranges))
}

/// The consistency proof from the first `old_size` leaves to all `leaves`.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, MerkleError> {
    let ranges = consistency_proof_ranges(old_size, leaves.len() as u64)?;
    Ok(hash_ranges(leaves, &ranges))
}

fn hash_ranges(leaves: &[Hash], ranges: &[(u64, u64)]) -> Vec<Hash> {
    ranges
        .iter()
        .map(|&(a, b)| root(&leaves[a as usize..b as usize]))
        .collect()
}

/// Checks that `leaf` (a [`leaf_hash`]) is at `index` in the tree of `size`
/// leaves with `root`, using the RFC 9162 2.1.3.2 algorithm.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    // Step 1, plus a length check up front so a bad proof gets a precise
    // error instead of a generic mismatch.
    let expected = inclusion_proof_ranges(index, size)?.len();
    let wrong_length = MerkleError::WrongProofLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_length);
    }
    if r != *root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `new_size` leaves with `new_root` extends the tree
/// of `old_size` leaves with `old_root`, using the RFC 9162 2.1.4.2
/// algorithm. The RFC only defines `0 < old_size < new_size`; for
/// `old_size == new_size` the proof must be empty and the roots equal, and
/// for `old_size == 0` the proof must be empty and `old_root` must be
/// [`empty_root`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    let expected = consistency_proof_ranges(old_size, new_size)?.len();
    let wrong_length = MerkleError::WrongProofLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    if old_size == 0 {
        if *old_root != empty_root() {
            return Err(MerkleError::OldRootMismatch);
        }
        if new_size == 0 && *new_root != empty_root() {
            return Err(MerkleError::NewRootMismatch);
        }
        return Ok(());
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(MerkleError::NewRootMismatch);
        }
        return Ok(());
    }

    // Step 1.
    if proof.is_empty() {
        return Err(wrong_length);
    }
    // Step 2: a power-of-two old tree is itself a node of the new tree, so
    // the proof leaves it out and the verifier supplies it.
    let mut path = proof.iter();
    let first = if old_size.is_power_of_two() {
        *old_root
    } else {
        *path.next().expect("proof is non-empty")
    };
    // Steps 3 and 4.
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Steps 5 and 6.
    let (mut fr, mut sr) = (first, first);
    for c in path {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(MerkleError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(MerkleError::NewRootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Hash {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    proptest! {
        /// The block-level node hash is SHA-256(0x01 || left || right).
        #[test]
        fn node_hash_is_sha256_of_the_node(l in any::<[u8; 32]>(), r in any::<[u8; 32]>()) {
            let mut h = Sha256::new();
            h.update([0x01]);
            h.update(l);
            h.update(r);
            prop_assert_eq!(node_hash(&l, &r), <[u8; 32]>::from(h.finalize()));
        }
    }

    /// MTH straight from the RFC text, on raw entries, independent of the
    /// code under test except for the two hash functions.
    fn reference_mth(entries: &[Vec<u8>]) -> Hash {
        let n = entries.len();
        if n == 0 {
            return Sha256::digest([]).into();
        }
        if n == 1 {
            return leaf_hash(&entries[0]);
        }
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        node_hash(&reference_mth(&entries[..k]), &reference_mth(&entries[k..]))
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| (i as u32).to_be_bytes().to_vec()).collect()
    }

    fn leaves(n: usize) -> Vec<Hash> {
        entries(n).iter().map(|e| leaf_hash(e)).collect()
    }

    /// The RFC 6962 reference leaves used across CT implementations.
    fn ct_leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn empty_root_known_answer() {
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(root(&[]), empty_root());
        assert_eq!(Frontier::new().root(), empty_root());
    }

    #[test]
    fn leaf_hash_of_empty_entry_known_answer() {
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn roots_match_rfc6962_reference_vectors() {
        let l = ct_leaves();
        for (n, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex(&root(&l[..n])), *want, "size {n}");
            let mut f = Frontier::new();
            f.extend(&l[..n]);
            assert_eq!(hex(&f.root()), *want, "frontier size {n}");
        }
    }

    #[test]
    fn proofs_match_rfc6962_reference_vectors() {
        let l = ct_leaves();
        let inclusion: [(u64, &[&str]); 2] = [
            (
                0,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, want) in inclusion {
            let got: Vec<String> = inclusion_proof(&l, index)
                .unwrap()
                .iter()
                .map(hex)
                .collect();
            assert_eq!(got, want, "inclusion of {index} in 8");
        }
        let consistency: [(usize, usize, &[&str]); 3] = [
            (
                2,
                8,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, want) in consistency {
            let proof = consistency_proof(&l[..new], old as u64).unwrap();
            let got: Vec<String> = proof.iter().map(hex).collect();
            assert_eq!(got, want, "consistency {old} -> {new}");
            verify_consistency(
                old as u64,
                new as u64,
                &unhex(CT_ROOTS[old]),
                &unhex(CT_ROOTS[new]),
                &proof,
            )
            .unwrap();
        }
    }

    #[test]
    fn small_roots_match_reference_mth() {
        for n in 0..=70 {
            let e = entries(n);
            assert_eq!(root(&leaves(n)), reference_mth(&e), "size {n}");
        }
    }

    #[test]
    fn split_is_largest_power_of_two_below() {
        for (n, k) in [
            (2u64, 1u64),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1000, 512),
            (1 << 40, 1 << 39),
            ((1 << 63) + 1, 1 << 63),
            (u64::MAX, 1 << 63),
        ] {
            assert_eq!(split(n), k, "n = {n}");
        }
    }

    #[test]
    fn frontier_nodes_are_perfect_subtree_roots() {
        let l = leaves(13);
        let mut f = Frontier::new();
        f.extend(&l);
        assert_eq!(f.size(), 13);
        assert_eq!(f.nodes(), &[root(&l[..8]), root(&l[8..12]), l[12]]);
        let g = Frontier::from_parts(13, f.nodes().to_vec()).unwrap();
        assert_eq!(f, g);
    }

    #[test]
    fn from_parts_rejects_wrong_node_count() {
        assert_eq!(
            Frontier::from_parts(13, vec![[0; 32]; 2]),
            Err(MerkleError::BadFrontier {
                size: 13,
                expected: 3,
                got: 2
            })
        );
        assert!(Frontier::from_parts(0, vec![]).is_ok());
        assert!(Frontier::from_parts(0, vec![[0; 32]]).is_err());
    }

    #[test]
    fn append_subtree_rejects_misaligned_and_overflowing() {
        let mut f = Frontier::new();
        f.extend(&leaves(6));
        let before = f.clone();
        let err = f.append_subtree(2, [7; 32]).unwrap_err();
        assert_eq!(err, MerkleError::MisalignedSubtree { size: 6, height: 2 });
        assert!(err.to_string().contains("size 6"), "{err}");
        assert!(err.to_string().contains("height 2"), "{err}");
        assert_eq!(f, before, "a failed append leaves the frontier unchanged");
        f.append_subtree(1, [7; 32]).unwrap();
        assert_eq!(f.size(), 8);
        assert_eq!(f.nodes().len(), 1);

        let mut empty = Frontier::new();
        assert!(matches!(
            empty.append_subtree(64, [0; 32]),
            Err(MerkleError::SizeOverflow { .. })
        ));
        empty.append_subtree(63, [0; 32]).unwrap();
        assert_eq!(empty.size(), 1 << 63);
        assert!(matches!(
            empty.append_subtree(63, [0; 32]),
            Err(MerkleError::SizeOverflow { .. })
        ));
        let mut full = Frontier::from_parts(u64::MAX, vec![[0; 32]; 64]).unwrap();
        assert!(matches!(
            full.append_subtree(0, [0; 32]),
            Err(MerkleError::SizeOverflow { .. })
        ));
    }

    #[test]
    fn range_subtrees_are_canonical() {
        // [5, 21): 5 | 6..8 | 8..16 | 16..20 | 20
        let l = leaves(16);
        let got: Vec<u32> = range_subtrees(5, &l).iter().map(|s| s.0).collect();
        assert_eq!(got, vec![0, 1, 3, 2, 0]);
        assert!(range_subtrees(7, &[]).is_empty());
        let from_zero: Vec<u32> = range_subtrees(0, &leaves(13)).iter().map(|s| s.0).collect();
        assert_eq!(from_zero, vec![3, 2, 0]);
    }

    #[test]
    fn range_functions_reject_bad_sizes() {
        assert_eq!(
            inclusion_proof_ranges(5, 5),
            Err(MerkleError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert!(inclusion_proof_ranges(0, 0).is_err());
        assert_eq!(
            consistency_proof_ranges(6, 5),
            Err(MerkleError::OldSizeGreater {
                old_size: 6,
                new_size: 5
            })
        );
        assert_eq!(consistency_proof_ranges(0, 5), Ok(vec![]));
        assert_eq!(consistency_proof_ranges(5, 5), Ok(vec![]));
        assert_eq!(inclusion_proof_ranges(0, 1), Ok(vec![]));
        let msg = inclusion_proof_ranges(9, 4).unwrap_err().to_string();
        assert!(msg.contains('9') && msg.contains('4'), "{msg}");
    }

    #[test]
    fn range_functions_handle_huge_trees() {
        let size = u64::MAX;
        let first = inclusion_proof_ranges(0, size).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(first[0], (1, 2));
        assert_eq!(first.last(), Some(&(1 << 63, size)));
        // The last leaf is its own size-1 subtree: one sibling per other 1-bit.
        let last = inclusion_proof_ranges(size - 1, size).unwrap();
        assert_eq!(last.len(), 63);
        assert_eq!(last.last(), Some(&(0, 1 << 63)));
        let c = consistency_proof_ranges(10_000_001, size).unwrap();
        assert!(c.iter().all(|&(a, b)| a < b));
    }

    #[test]
    fn all_inclusion_proofs_up_to_40_verify_and_tampering_fails() {
        let l = leaves(40);
        let roots: Vec<Hash> = (0..=40).map(|n| root(&l[..n])).collect();
        for size in 1..=40u64 {
            let tree = &l[..size as usize];
            for index in 0..size {
                let leaf = &l[index as usize];
                let proof = inclusion_proof(tree, index).unwrap();
                let r = &roots[size as usize];
                verify_inclusion(leaf, index, size, &proof, r)
                    .unwrap_or_else(|e| panic!("({index}, {size}): {e}"));
                for i in 0..proof.len() {
                    for byte in 0..32 {
                        let mut bad = proof.clone();
                        bad[i][byte] ^= 0x01;
                        assert!(verify_inclusion(leaf, index, size, &bad, r).is_err());
                    }
                }
                for other in (0..size).filter(|&o| o != index) {
                    assert!(
                        verify_inclusion(leaf, other, size, &proof, r).is_err(),
                        "index {other} instead of {index} in {size}"
                    );
                }
                for other in (index + 1..=40).filter(|&s| s != size) {
                    assert!(
                        verify_inclusion(leaf, index, other, &proof, &roots[other as usize])
                            .is_err(),
                        "size {other} instead of {size} for {index}"
                    );
                }
                assert!(verify_inclusion(leaf, index, size, &proof, &[0; 32]).is_err());
                let mut longer = proof.clone();
                longer.push([0; 32]);
                assert!(matches!(
                    verify_inclusion(leaf, index, size, &longer, r),
                    Err(MerkleError::WrongProofLength { .. })
                ));
                if !proof.is_empty() {
                    assert!(matches!(
                        verify_inclusion(leaf, index, size, &proof[1..], r),
                        Err(MerkleError::WrongProofLength { .. })
                    ));
                }
            }
            assert_eq!(
                verify_inclusion(&l[0], size, size, &[], &roots[size as usize]),
                Err(MerkleError::IndexOutOfRange { index: size, size })
            );
        }
    }

    #[test]
    fn all_consistency_proofs_up_to_40_verify_and_tampering_fails() {
        let l = leaves(40);
        let roots: Vec<Hash> = (0..=40).map(|n| root(&l[..n])).collect();
        for new in 0..=40u64 {
            let tree = &l[..new as usize];
            for old in 0..=new {
                let proof = consistency_proof(tree, old).unwrap();
                let (ro, rn) = (&roots[old as usize], &roots[new as usize]);
                verify_consistency(old, new, ro, rn, &proof)
                    .unwrap_or_else(|e| panic!("({old}, {new}): {e}"));
                for i in 0..proof.len() {
                    for byte in 0..32 {
                        let mut bad = proof.clone();
                        bad[i][byte] ^= 0x80;
                        assert!(verify_consistency(old, new, ro, rn, &bad).is_err());
                    }
                }
                if proof.is_empty() {
                    // Every tree extends the empty tree, so only the old root
                    // can be wrong there; an unchanged tree needs equal roots.
                    assert!(verify_consistency(old, new, &[9; 32], rn, &proof).is_err());
                    if old == new {
                        assert!(verify_consistency(old, new, ro, &[9; 32], &proof).is_err());
                    }
                    continue;
                }
                for other in (1..new).filter(|&o| o != old) {
                    assert!(
                        verify_consistency(other, new, &roots[other as usize], rn, &proof).is_err(),
                        "old size {other} instead of {old} -> {new}"
                    );
                }
                for other in (old + 1..=40).filter(|&n| n != new) {
                    assert!(
                        verify_consistency(old, other, ro, &roots[other as usize], &proof).is_err(),
                        "new size {other} instead of {old} -> {new}"
                    );
                }
                assert!(verify_consistency(old, new, rn, rn, &proof).is_err());
                assert!(verify_consistency(old, new, ro, ro, &proof).is_err());
                let mut longer = proof.clone();
                longer.push([0; 32]);
                assert!(matches!(
                    verify_consistency(old, new, ro, rn, &longer),
                    Err(MerkleError::WrongProofLength { .. })
                ));
            }
        }
        assert_eq!(
            verify_consistency(5, 4, &roots[5], &roots[4], &[]),
            Err(MerkleError::OldSizeGreater {
                old_size: 5,
                new_size: 4
            })
        );
    }

    #[test]
    fn proof_ranges_fit_inside_the_tree() {
        for size in 1..=64u64 {
            for index in 0..size {
                for (a, b) in inclusion_proof_ranges(index, size).unwrap() {
                    assert!(a < b && b <= size && !(a..b).contains(&index));
                }
            }
            for old in 0..=size {
                for (a, b) in consistency_proof_ranges(old, size).unwrap() {
                    assert!(a < b && b <= size);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn frontier_push_matches_reference(n in 0usize..300) {
            let e = entries(n);
            let mut f = Frontier::new();
            for x in &e {
                f.push(leaf_hash(x));
            }
            prop_assert_eq!(f.size(), n as u64);
            prop_assert_eq!(f.nodes().len(), (n as u64).count_ones() as usize);
            prop_assert_eq!(f.root(), reference_mth(&e));
        }

        #[test]
        fn range_subtrees_merge_equals_extend(start in 0usize..300, len in 0usize..300) {
            let l = leaves(start + len);
            let mut base = Frontier::new();
            base.extend(&l[..start]);
            let mut extended = base.clone();
            extended.extend(&l[start..]);
            let mut merged = base;
            for (height, hash) in range_subtrees(start as u64, &l[start..]) {
                merged.append_subtree(height, hash).unwrap();
            }
            prop_assert_eq!(&merged, &extended);
            prop_assert_eq!(merged.root(), root(&l));
        }
    }
}
