//! Forging a batch as someone who can write the files would: bytes of a
//! record changed and the frame's CRC32C recomputed, so every frame stays
//! whole and only the hashes can tell.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

/// The length of the frame at `at` of segment bytes `seg`, header included.
pub fn frame_len(seg: &[u8], at: usize) -> usize {
    12 + u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize
}

/// Replaces the last `from` in the frame at `at` with `to` (as long), and
/// mends the frame's CRC.
pub fn forge_in_frame(seg: &mut [u8], at: usize, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let end = at + frame_len(seg, at);
    let i = at
        + seg[at..end]
            .windows(from.len())
            .rposition(|w| w == from)
            .expect("the bytes are in the frame");
    forge_at(seg, at, i, from, to);
}

/// Sets the base timestamp (body bytes 12..20, ledger-format.md §6) of the
/// frame at `at` to `ts`, and mends the frame's CRC.
pub fn set_base_timestamp(seg: &mut [u8], at: usize, ts: i64) {
    let old = seg[at + 24..at + 32].to_vec();
    forge_at(seg, at, at + 24, &old, &ts.to_le_bytes());
}

fn forge_at(seg: &mut [u8], at: usize, i: usize, from: &[u8], to: &[u8]) {
    assert_eq!(&seg[i..i + from.len()], from);
    seg[i..i + to.len()].copy_from_slice(to);
    let end = at + frame_len(seg, at);
    let mut crc_input = seg[at..at + 4].to_vec();
    crc_input.extend_from_slice(&seg[at + 12..end]);
    seg[at + 8..at + 12].copy_from_slice(&crc32c::crc32c(&crc_input).to_le_bytes());
}
