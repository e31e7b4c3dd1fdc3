//! The hash chain. Record `i`'s chain hash is
//!
//! ```text
//! chain[i]  = SHA-256(CHAIN_TAG || leaf[i] || chain[i-1])
//! chain[-1] = SHA-256(GENESIS_TAG || ledger_id)
//! ```
//!
//! where `leaf[i]` is the RFC 9162 leaf hash of the record's canonical entry.
//! The tag is padded to 32 bytes so that `CHAIN_TAG || leaf` fills exactly one
//! SHA-256 block: that block can be compressed in parallel, ahead of the
//! serial walk, leaving one compression per record on the serial path of
//! verification.

use sha2::{Digest, Sha256};

use super::{sha, Hash};

pub const CHAIN_TAG: [u8; 32] = *b"bi-ledger chain v1\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
pub const GENESIS_TAG: [u8; 32] = *b"bi-ledger genesis v1\0\0\0\0\0\0\0\0\0\0\0\0";

pub fn genesis(ledger_id: &[u8; 16]) -> Hash {
    let mut h = Sha256::new();
    h.update(GENESIS_TAG);
    h.update(ledger_id);
    h.finalize().into()
}

/// The SHA-256 state after `CHAIN_TAG || leaf`, independent of the chain:
/// the first of the link's two blocks.
#[derive(Clone, Copy)]
pub struct Midstate([u32; 8]);

pub fn midstate(leaf: &Hash) -> Midstate {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(&CHAIN_TAG);
    block[32..].copy_from_slice(leaf);
    let mut state = sha::IV;
    sha::compress(&mut state, &block);
    Midstate(state)
}

impl Midstate {
    /// The second block: `prev` and the padding of the 96-byte message.
    pub fn link(self, prev: &Hash) -> Hash {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(prev);
        sha::pad(&mut block, 96);
        let mut state = self.0;
        sha::compress(&mut state, &block);
        sha::digest(&state)
    }
}

pub fn link(prev: &Hash, leaf: &Hash) -> Hash {
    midstate(leaf).link(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midstate_matches_one_shot() {
        let leaf = [7u8; 32];
        let prev = [9u8; 32];
        let mut h = Sha256::new();
        h.update(CHAIN_TAG);
        h.update(leaf);
        h.update(prev);
        let direct: Hash = h.finalize().into();
        assert_eq!(link(&prev, &leaf), direct);
        assert_ne!(link(&leaf, &prev), direct);
    }

    use proptest::prelude::*;

    fn head(id: &[u8; 16], entries: &[Vec<u8>]) -> Hash {
        entries.iter().fold(genesis(id), |prev, e| {
            link(&prev, &crate::format::merkle::leaf_hash(e))
        })
    }

    proptest! {
        /// The head commits to every entry, their order and the ledger: any
        /// change, swap, removal or insertion gives another head.
        #[test]
        fn head_commits_to_content_and_order(
            entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 2..12),
            pick in any::<proptest::sample::Index>(),
            byte in any::<proptest::sample::Index>(),
        ) {
            let id = [1u8; 16];
            let h = head(&id, &entries);
            let i = pick.index(entries.len());
            let mut changed = entries.clone();
            if changed[i].is_empty() {
                changed[i].push(0);
            } else {
                let b = byte.index(changed[i].len());
                changed[i][b] ^= 0x01;
            }
            prop_assert_ne!(head(&id, &changed), h);
            let mut removed = entries.clone();
            removed.remove(i);
            prop_assert_ne!(head(&id, &removed), h);
            let mut inserted = entries.clone();
            inserted.insert(i, b"extra".to_vec());
            prop_assert_ne!(head(&id, &inserted), h);
            let j = (i + 1) % entries.len();
            if entries[i] != entries[j] {
                let mut swapped = entries.clone();
                swapped.swap(i, j);
                prop_assert_ne!(head(&id, &swapped), h);
            }
            prop_assert_ne!(head(&[2u8; 16], &entries), h);
        }
    }

    #[test]
    fn genesis_depends_on_ledger() {
        assert_ne!(genesis(&[0; 16]), genesis(&[1; 16]));
    }
}
