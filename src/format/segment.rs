//! Segment headers. A segment's first block is its header:
//!
//! ```text
//! 0   8  magic "BILEDGER"
//! 8   2  format version (u16le) = 1
//! 10  2  header length (u16le) = 84
//! 12  4  flags (u32le) = 0
//! 16 16  ledger id
//! 32  8  segment index (u64le)
//! 40  8  first sequence number (u64le)
//! 48 32  chain hash of the record before the first (genesis for segment 0)
//! 80  4  CRC32C of bytes 0..80 (u32le)
//! ```

use super::{DecodeError, Hash, FORMAT_VERSION};

pub const MAGIC: &[u8; 8] = b"BILEDGER";
pub const HEADER_LEN: usize = 84;
/// Where the header's first sequence number is: what damage to a
/// segment's start names.
pub const FIRST_SEQ_AT: u64 = 40;

/// Whether a last segment of `size` bytes that starts with `header` is a
/// header a crash left unwritten: exactly a header's length of zeros,
/// nothing after it. A file system may make a file's new length durable
/// before its data, so a rollover interrupted between writing the header
/// and its `fdatasync` can leave this; the writer's `fdatasync` returned
/// before anything followed the header, so nothing else is a crash
/// artifact.
pub fn is_unwritten_header(size: u64, header: &[u8]) -> bool {
    size == HEADER_LEN as u64 && header.len() == HEADER_LEN && header.iter().all(|&b| b == 0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub ledger_id: [u8; 16],
    pub index: u64,
    pub first_seq: u64,
    pub prev_chain: Hash,
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.ledger_id);
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.first_seq.to_le_bytes());
        b.extend_from_slice(&self.prev_chain);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header. The version is checked before anything after it,
    /// so a newer format gets a clear "unsupported version" instead of a
    /// misleading CRC or length error.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 12 {
            return Err(DecodeError::new(
                b.len(),
                "segment header runs past the end",
            ));
        }
        if &b[0..8] != MAGIC {
            return Err(DecodeError::new(0, "not a bi-ledger segment (bad magic)"));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(DecodeError::new(
                8,
                format!("unsupported format version {version} (this build reads version {FORMAT_VERSION})"),
            ));
        }
        let len = u16::from_le_bytes([b[10], b[11]]) as usize;
        if len != HEADER_LEN {
            return Err(DecodeError::new(
                10,
                format!("header length {len}, expected {HEADER_LEN}"),
            ));
        }
        if b.len() < HEADER_LEN {
            return Err(DecodeError::new(
                b.len(),
                "segment header runs past the end",
            ));
        }
        let stored = u32::from_le_bytes(b[80..84].try_into().unwrap());
        let actual = crc32c::crc32c(&b[..80]);
        if stored != actual {
            return Err(DecodeError::new(
                80,
                format!(
                    "segment header CRC32C mismatch: stored {stored:08x}, computed {actual:08x}"
                ),
            ));
        }
        let flags = u32::from_le_bytes(b[12..16].try_into().unwrap());
        if flags != 0 {
            return Err(DecodeError::new(
                12,
                format!("unknown segment flags {flags:#x}"),
            ));
        }
        Ok(SegmentHeader {
            ledger_id: b[16..32].try_into().unwrap(),
            index: u64::from_le_bytes(b[32..40].try_into().unwrap()),
            first_seq: u64::from_le_bytes(b[40..48].try_into().unwrap()),
            prev_chain: b[48..80].try_into().unwrap(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in any::<[u8; 16]>(), index in any::<u64>(), first in any::<u64>(), prev in any::<[u8; 32]>()) {
            let h = SegmentHeader { ledger_id: id, index, first_seq: first, prev_chain: prev };
            let b = h.encode();
            prop_assert_eq!(b.len(), HEADER_LEN);
            prop_assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        }

        #[test]
        fn any_flipped_byte_is_rejected(pos in 0usize..HEADER_LEN, bit in 0u8..8) {
            let h = SegmentHeader { ledger_id: [3; 16], index: 2, first_seq: 9, prev_chain: [4; 32] };
            let mut b = h.encode();
            b[pos] ^= 1 << bit;
            prop_assert!(SegmentHeader::decode(&b).is_err());
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut b = SegmentHeader {
            ledger_id: [0; 16],
            index: 0,
            first_seq: 0,
            prev_chain: [0; 32],
        }
        .encode();
        b[8] = 2;
        let e = SegmentHeader::decode(&b).unwrap_err();
        assert!(e.what.contains("unsupported format version 2"), "{e}");
    }
}
