//! Forging a batch as someone who can write the files would: bytes of a
//! record changed and the frame's CRC32C recomputed, so every frame stays
//! whole and only the hashes can tell.

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
    seg[i..i + to.len()].copy_from_slice(to);
    let mut crc_input = seg[at..at + 4].to_vec();
    crc_input.extend_from_slice(&seg[at + 12..end]);
    seg[at + 8..at + 12].copy_from_slice(&crc32c::crc32c(&crc_input).to_le_bytes());
}
