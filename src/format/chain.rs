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

use super::Hash;

pub const CHAIN_TAG: [u8; 32] = *b"bi-ledger chain v1\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
pub const GENESIS_TAG: [u8; 32] = *b"bi-ledger genesis v1\0\0\0\0\0\0\0\0\0\0\0\0";

pub fn genesis(ledger_id: &[u8; 16]) -> Hash {
    let mut h = Sha256::new();
    h.update(GENESIS_TAG);
    h.update(ledger_id);
    h.finalize().into()
}

/// The SHA-256 state after `CHAIN_TAG || leaf`, independent of the chain.
#[derive(Clone)]
pub struct Midstate(Sha256);

pub fn midstate(leaf: &Hash) -> Midstate {
    let mut h = Sha256::new();
    h.update(CHAIN_TAG);
    h.update(leaf);
    Midstate(h)
}

impl Midstate {
    pub fn link(self, prev: &Hash) -> Hash {
        let mut h = self.0;
        h.update(prev);
        h.finalize().into()
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

    #[test]
    fn genesis_depends_on_ledger() {
        assert_ne!(genesis(&[0; 16]), genesis(&[1; 16]));
    }
}
