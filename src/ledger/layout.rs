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
}

impl Meta {
    pub fn origin(&self) -> String {
        format!("bi-ledger/{}/{}", self.name, crate::format::hex(&self.id))
    }

    pub fn key_name(name: &str) -> String {
        format!("bi-ledger/{name}")
    }

    pub fn encode(&self) -> String {
        format!(
            "bi-ledger ledger v1\nname {}\nid {}\nkey {}\n",
            self.name,
            crate::format::hex(&self.id),
            self.verifier.to_vkey()
        )
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
        if lines.next().is_some() {
            return Err(bad(5, "unexpected trailing line"));
        }
        let meta = Meta { name, id, verifier };
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
