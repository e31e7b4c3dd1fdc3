//! Where a ledger's blobs live in the store, and the ledger's identity file.

use crate::error::{LedgerError, Result};
use crate::format::checkpoint::Verifier;

pub fn validate_ledger_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidName(name.to_owned()))
    }
}

pub fn meta(ledger: &str) -> String {
    format!("{ledger}/LEDGER")
}

pub fn segment_prefix(ledger: &str) -> String {
    format!("{ledger}/")
}

pub fn segment(ledger: &str, index: u64) -> String {
    format!("{ledger}/{index:010}.seg")
}

/// Parses a segment index back out of a blob name from `list`.
pub fn segment_index(ledger: &str, blob: &str) -> Option<u64> {
    let file = blob.strip_prefix(ledger)?.strip_prefix('/')?;
    let digits = file.strip_suffix(".seg")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Checkpoints and caches are looked for by name prefix in windows of this
/// many records (the last 6 of a name's 20 digits), so that a ledger with
/// a million checkpoints is not listed whole to find one of them.
pub const WINDOW: u64 = 1_000_000;

/// The listing prefix of the names under `prefix` (a checkpoint or cache
/// prefix) whose size falls in window `w`.
pub fn in_window(prefix: &str, w: u64) -> String {
    format!("{prefix}{w:014}")
}

pub fn checkpoint_prefix(ledger: &str) -> String {
    format!("{ledger}/checkpoint-")
}

pub fn checkpoint(ledger: &str, size: u64) -> String {
    format!("{ledger}/checkpoint-{size:020}")
}

pub fn checkpoint_size(ledger: &str, blob: &str) -> Option<u64> {
    size_after(blob, &checkpoint_prefix(ledger))
}

pub fn snapshot(ledger: &str, size: u64) -> String {
    format!("{ledger}/snapshot-{size:020}")
}

pub fn snapshot_prefix(ledger: &str) -> String {
    format!("{ledger}/snapshot-")
}

pub fn snapshot_size(ledger: &str, blob: &str) -> Option<u64> {
    size_after(blob, &snapshot_prefix(ledger))
}

/// The stream index of the records up to checkpoint `size`.
pub fn stream_index(ledger: &str, size: u64) -> String {
    format!("{ledger}/streams-{size:020}")
}

pub fn stream_index_prefix(ledger: &str) -> String {
    format!("{ledger}/streams-")
}

pub fn stream_index_size(ledger: &str, blob: &str) -> Option<u64> {
    size_after(blob, &stream_index_prefix(ledger))
}

/// The merged stream index (format §11.3.1) that ends at checkpoint `size`.
pub fn merged_stream_index(ledger: &str, size: u64) -> String {
    format!("{ledger}/streams-merged-{size:020}")
}

pub fn merged_stream_index_prefix(ledger: &str) -> String {
    format!("{ledger}/streams-merged-")
}

pub fn merged_stream_index_size(ledger: &str, blob: &str) -> Option<u64> {
    size_after(blob, &merged_stream_index_prefix(ledger))
}

/// The Merkle node cache of the records up to checkpoint `size`.
pub fn nodes(ledger: &str, size: u64) -> String {
    format!("{ledger}/nodes-{size:020}")
}

pub fn nodes_prefix(ledger: &str) -> String {
    format!("{ledger}/nodes-")
}

pub fn nodes_size(ledger: &str, blob: &str) -> Option<u64> {
    size_after(blob, &nodes_prefix(ledger))
}

/// The size in a checkpoint, snapshot, stream index or node cache name: exactly 20
/// decimal digits after `prefix`.
fn size_after(blob: &str, prefix: &str) -> Option<u64> {
    let digits = blob.strip_prefix(prefix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub fn lock(ledger: &str) -> String {
    format!("{ledger}/writer")
}

/// The ledger's identity, written once at creation. Its content is also
/// bound by every segment header (the id) and checkpoint (origin, key).
#[derive(Clone, Debug)]
pub struct Meta {
    pub name: String,
    pub id: [u8; 16],
    pub verifier: Verifier,
    /// The largest block (= frame) the ledger may hold, `B` of format §5.1:
    /// the maximum block size of the store it was created on. Recorded so
    /// that a reader on another store, or with other options, tells a large
    /// frame from a damaged length the same way the writer's store would.
    pub max_block: usize,
}

/// The smallest `B` a ledger may record: the segment header is a block.
pub const MIN_BLOCK: usize = crate::format::segment::HEADER_LEN;
/// The largest: a frame's body length is a `u32`.
pub const MAX_BLOCK: usize = u32::MAX as usize;

impl Meta {
    pub fn origin(&self) -> String {
        format!("bi-ledger/{}/{}", self.name, crate::format::hex(&self.id))
    }

    pub fn key_name(name: &str) -> String {
        format!("bi-ledger/{name}")
    }

    pub fn encode(&self) -> String {
        let mut text = format!(
            "bi-ledger ledger v1\nname {}\nid {}\nkey {}\n",
            self.name,
            crate::format::hex(&self.id),
            self.verifier.to_vkey()
        );
        // Only a `B` other than the default is written, so that a ledger of
        // the default store has the identity file it always had, which
        // readers from before the line still read.
        if self.max_block != crate::backend::DEFAULT_MAX_BLOCK {
            text.push_str(&format!("block {}\n", self.max_block));
        }
        text
    }

    /// The largest frame body a reader of this ledger accepts (format §5.1).
    pub fn max_body(&self) -> usize {
        self.max_block
            .saturating_sub(crate::format::batch::FRAME_HEADER_LEN)
    }

    pub fn decode(blob: &str, text: &str) -> Result<Meta> {
        let bad = |line: usize, what: &str| {
            LedgerError::Integrity(crate::error::IntegrityError::new(
                blob,
                0,
                None,
                format!("line {line}: {what}"),
            ))
        };
        let mut lines = text.lines();
        if lines.next() != Some("bi-ledger ledger v1") {
            return Err(bad(
                1,
                "expected \"bi-ledger ledger v1\" (unknown or damaged ledger file)",
            ));
        }
        let name = lines
            .next()
            .and_then(|l| l.strip_prefix("name "))
            .ok_or_else(|| bad(2, "expected \"name <ledger>\""))?
            .to_owned();
        let id_hex = lines
            .next()
            .and_then(|l| l.strip_prefix("id "))
            .ok_or_else(|| bad(3, "expected \"id <32 hex digits>\""))?;
        let mut id = [0u8; 16];
        if id_hex.len() != 32 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(3, "ledger id must be 32 hex digits"));
        }
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&id_hex[i * 2..i * 2 + 2], 16)
                .map_err(|_| bad(3, "ledger id is not hex"))?;
        }
        let vkey = lines
            .next()
            .and_then(|l| l.strip_prefix("key "))
            .ok_or_else(|| bad(4, "expected \"key <verifier key>\""))?;
        let verifier = Verifier::from_vkey(vkey).map_err(|e| bad(4, &e.to_string()))?;
        let max_block = match lines.next() {
            None => crate::backend::DEFAULT_MAX_BLOCK,
            Some(line) => {
                let digits = line
                    .strip_prefix("block ")
                    .ok_or_else(|| bad(5, "expected \"block <maximum block size>\""))?;
                let canonical = !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !(digits.starts_with('0'));
                if !canonical {
                    return Err(bad(
                        5,
                        "block size must be a decimal number without leading zeros",
                    ));
                }
                // More digits than a u64 holds is out of range too.
                let block = digits.parse::<u64>().unwrap_or(u64::MAX);
                if block < MIN_BLOCK as u64 || block > MAX_BLOCK as u64 {
                    return Err(bad(
                        5,
                        &format!("block size {digits} is outside {MIN_BLOCK}..={MAX_BLOCK}"),
                    ));
                }
                if block as usize == crate::backend::DEFAULT_MAX_BLOCK {
                    return Err(bad(
                        5,
                        "the default block size (4194304) is written by leaving the line out",
                    ));
                }
                block as usize
            }
        };
        if lines.next().is_some() {
            return Err(bad(6, "unexpected trailing line"));
        }
        let meta = Meta {
            name,
            id,
            verifier,
            max_block,
        };
        // One identity, one spelling: anything but the canonical text
        // (case, spacing, line ends, key name) is a changed file.
        if meta.verifier.name != Meta::key_name(&meta.name) {
            return Err(bad(4, "key name must be bi-ledger/<ledger name>"));
        }
        if meta.encode() != text {
            return Err(bad(1, "not in canonical form"));
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DEFAULT_MAX_BLOCK;

    fn meta(max_block: usize) -> Meta {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        Meta {
            name: "main".into(),
            id: [0xab; 16],
            verifier: Verifier {
                name: Meta::key_name("main"),
                key,
            },
            max_block,
        }
    }

    fn refusal(text: &str) -> String {
        Meta::decode("main/LEDGER", text).unwrap_err().to_string()
    }

    #[test]
    fn block_size_is_written_only_when_not_the_default() {
        let default = meta(DEFAULT_MAX_BLOCK).encode();
        assert_eq!(default.lines().count(), 4);
        let small = meta(65_536).encode();
        assert_eq!(small, format!("{default}block 65536\n"));
        for b in [MIN_BLOCK, 65_536, DEFAULT_MAX_BLOCK, 100 << 20, MAX_BLOCK] {
            let text = meta(b).encode();
            let back = Meta::decode("main/LEDGER", &text).unwrap();
            assert_eq!(back.max_block, b);
            assert_eq!(back.max_body(), b - 12);
        }
    }

    #[test]
    fn block_lines_other_than_the_canonical_one_are_refused() {
        let default = meta(DEFAULT_MAX_BLOCK).encode();
        for (line, why) in [
            ("block 065536", "without leading zeros"),
            ("block +65536", "without leading zeros"),
            ("block ", "without leading zeros"),
            ("block 65536 ", "without leading zeros"),
            ("block 12345678901", "outside 84..=4294967295"),
            (
                "block 123456789012345678901234567890",
                "outside 84..=4294967295",
            ),
            ("block 83", "outside 84..=4294967295"),
            ("block 4294967296", "outside 84..=4294967295"),
            ("block 4194304", "leaving the line out"),
            ("blocks 65536", "expected \"block <maximum block size>\""),
        ] {
            let err = refusal(&format!("{default}{line}\n"));
            assert!(
                err.contains("line 5") && err.contains(why),
                "{line:?}: {err}"
            );
        }
        let err = refusal(&format!("{default}block 65536\nblock 65536\n"));
        assert!(err.contains("line 6"), "{err}");
        let err = refusal(&format!("{default}block 65536"));
        assert!(err.contains("canonical"), "{err}");
    }
}
