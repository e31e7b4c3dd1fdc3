//! The durable byte format, as specified in `ledger-format.md`.
//!
//! Everything here is pure: no I/O, no clocks, no randomness. The ledger
//! feeds bytes in and gets bytes or typed errors out, so the encoders can be
//! property-tested and fuzzed in isolation.

pub mod batch;
pub mod chain;
pub mod checkpoint;
pub mod merkle;
pub mod nodes;
pub mod record;
pub mod segment;
pub mod sha;
pub mod snapshot;
pub mod stream_index;
pub mod stream_table;
pub mod varint;

use sha2::Digest;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;

/// Lower-case hex, for hashes in errors, receipts and JSON output.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Parses 64 lower-case hex digits (as [`hex`] writes them, and the
/// format's text forms require) into a hash.
pub fn parse_hash_hex(s: &str) -> Option<Hash> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Starts a cache blob (snapshot, stream index, node cache): its magic,
/// version 1 and a zero reserved field. [`seal`] ends it.
pub(crate) fn cache_header(magic: &[u8; 8], capacity: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(capacity);
    b.extend_from_slice(magic);
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b
}

/// Appends the SHA-256 of everything before it, which ends a cache blob.
pub(crate) fn seal(b: &mut Vec<u8>) {
    let digest: Hash = sha2::Sha256::digest(&b[..]).into();
    b.extend_from_slice(&digest);
}

/// Checks what every cache blob shares (at least `fixed` bytes before the
/// digest, the magic, version 1, the zero reserved field, the SHA-256 at
/// the end) and returns the bytes before the digest. `what` names the blob
/// kind in errors.
pub(crate) fn open_cache<'a>(
    b: &'a [u8],
    magic: &[u8; 8],
    what: &str,
    fixed: usize,
) -> Result<&'a [u8], DecodeError> {
    if b.len() < fixed + 32 {
        return Err(DecodeError::new(
            b.len(),
            format!("{what} runs past the end"),
        ));
    }
    if &b[0..8] != magic {
        return Err(DecodeError::new(
            0,
            format!("not a bi-ledger {what} (bad magic)"),
        ));
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != 1 {
        return Err(DecodeError::new(
            8,
            format!("unsupported {what} version {version}"),
        ));
    }
    if b[10..12] != [0, 0] {
        return Err(DecodeError::new(10, "reserved field is not zero"));
    }
    let body_end = b.len() - 32;
    let digest: Hash = sha2::Sha256::digest(&b[..body_end]).into();
    if digest[..] != b[body_end..] {
        return Err(DecodeError::new(
            body_end,
            format!("{what} SHA-256 mismatch"),
        ));
    }
    Ok(&b[..body_end])
}

/// Why a byte string could not be decoded. `offset` is relative to the start
/// of the buffer handed to the decoder; callers add the segment offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {what}")]
pub struct DecodeError {
    pub offset: usize,
    pub what: String,
    /// The sequence number of the record that failed to decode, where one
    /// did: a batch's frame names only its first.
    pub seq: Option<u64>,
}

impl DecodeError {
    pub fn new(offset: usize, what: impl Into<String>) -> Self {
        DecodeError {
            offset,
            what: what.into(),
            seq: None,
        }
    }

    pub fn in_record(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_read_as_written_in_lower_case() {
        let h: Hash = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(parse_hash_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hash_hex(&hex(&h).to_uppercase()), None);
        assert_eq!(parse_hash_hex(&hex(&h)[1..]), None);
        assert_eq!(parse_hash_hex(&format!("{}g", &hex(&h)[1..])), None);
    }
}
