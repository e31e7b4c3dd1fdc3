//! SHA-256 of the format's fixed-size messages, a compression at a time.
//!
//! Interior Merkle nodes (65 bytes) and chain links (96 bytes) are hashed
//! once per record each; through the streaming `Digest` API, buffering and
//! finalisation cost almost as much as the compressions themselves. Here
//! the padded blocks are laid out directly and handed to the compression
//! function. The tests check every function against `Sha256` itself.

use sha2::digest::generic_array::GenericArray;

use super::Hash;

/// SHA-256's initial state (FIPS 180-4 §5.3.3).
pub const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

pub fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// The digest a state stands for, once the padded message is compressed.
pub fn digest(state: &[u32; 8]) -> Hash {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Writes SHA-256's padding for a message of `len` bytes into the end of
/// its last block, whose first `len % 64` bytes are the message's tail.
pub fn pad(last: &mut [u8; 64], len: u64) {
    let used = (len % 64) as usize;
    debug_assert!(used < 56, "the length must fit in the same block");
    last[used] = 0x80;
    last[used + 1..56].fill(0);
    last[56..].copy_from_slice(&(len * 8).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn one_padded_block_is_sha256() {
        for len in [0usize, 1, 32, 55] {
            let msg: Vec<u8> = (0..len as u8).collect();
            let mut block = [0u8; 64];
            block[..len].copy_from_slice(&msg);
            pad(&mut block, len as u64);
            let mut s = IV;
            compress(&mut s, &block);
            assert_eq!(
                digest(&s),
                <[u8; 32]>::from(Sha256::digest(&msg)),
                "len {len}"
            );
        }
    }
}
