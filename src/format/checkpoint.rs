//! Checkpoints in the C2SP tlog-checkpoint text form, signed as a C2SP
//! signed-note with Ed25519.
//!
//! A signed checkpoint (format version 1) is exactly:
//!
//! ```text
//! <origin>
//! <size>
//! <base64 root>
//! chain <base64 chain head>
//! time <YYYY-MM-DDTHH:MM:SS.ffffffZ>
//! snapshot <base64 snapshot digest>        (optional)
//!
//! — <key name> <base64(key id || signature)>
//! ```
//!
//! with every line, including the last signature line, ending in `\n`. The
//! lines before the empty one are the body, which is what gets signed. Parsing is
//! strict: a parsed checkpoint always re-serialises to the exact body bytes
//! that were signed, so there is a single valid text per checkpoint.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::Hash;

/// C2SP signed-note signature type byte for Ed25519.
const ED25519_TYPE: u8 = 0x01;

/// Starts every signature line: U+2014 EM DASH and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// 0000-01-01T00:00:00.000000Z: RFC 3339 has four-digit years only.
pub const MIN_TIME_US: i64 = -62_167_219_200_000_000;
/// 9999-12-31T23:59:59.999999Z.
pub const MAX_TIME_US: i64 = 253_402_300_799_999_999;

/// Five body lines and the blank line come first.
const FIRST_SIGNATURE_LINE: usize = 7;

/// Error messages quote at most this many characters of offending input so
/// that a garbage note cannot produce a megabyte-long error.
const MAX_QUOTED_CHARS: usize = 80;

const NAME_RULE: &str = "a non-empty name without whitespace, '+' or control characters";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The note text does not have the version 1 layout.
    #[error("line {line}: {field}: expected {expected}, found {found}")]
    Syntax {
        line: usize,
        field: &'static str,
        expected: &'static str,
        /// The offending text, quoted, or a description such as `end of note`.
        found: String,
    },
    /// Rejected before signing.
    #[error("invalid {what} {name:?}: expected {NAME_RULE}")]
    InvalidName { what: &'static str, name: String },
    /// Rejected before signing: the time has no RFC 3339 form.
    #[error(
        "checkpoint time {time_us} µs since the Unix epoch is outside the RFC 3339 range \
         0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
    )]
    TimeOutOfRange { time_us: i64 },
    #[error("the note has no signature by key {key_name:?} (key id {key_id})")]
    NoMatchingSignature { key_name: String, key_id: String },
    #[error("line {line}: signature by key {key_name:?} (key id {key_id}) is not valid")]
    InvalidSignature {
        line: usize,
        key_name: String,
        key_id: String,
    },
    #[error("line {line}: key {key_name:?} (key id {key_id}) signed the note more than once")]
    DuplicateSignature {
        line: usize,
        key_name: String,
        key_id: String,
    },
    #[error("verifier key {vkey}: {problem}")]
    VerifierKey { vkey: String, problem: String },
}

/// A tree head: the Merkle root over the first `size` leaves, plus the hash
/// chain head and the time at which it was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub chain_head: Hash,
    /// Microseconds since the Unix epoch, UTC. Must be within
    /// [`MIN_TIME_US`]..=[`MAX_TIME_US`] to be signed.
    pub time_us: i64,
    /// The SHA-256 that closes the snapshot of this size (its last 32
    /// bytes), so that the writer state a writer opens with is signed too:
    /// a snapshot is not evidence, but a forged one would set the stream
    /// versions and the last timestamp of every event appended after it.
    /// `None` in a note without the `snapshot` line (format §10.1).
    pub snapshot: Option<Hash>,
}

/// One signature line, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    pub key_name: String,
    pub key_id: [u8; 4],
    /// 64 bytes for an Ed25519 key; another signer's (a witness with
    /// another algorithm) may be of any length, and is ignored.
    pub signature: Vec<u8>,
}

/// An Ed25519 public key together with the name it signs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    pub name: String,
    pub key: VerifyingKey,
}

impl Verifier {
    /// The C2SP signed-note key id: the first four bytes of
    /// SHA-256(name || "\n" || 0x01 || public key).
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.key)
    }

    /// The C2SP verifier key string `<name>+<key id hex>+<base64(0x01 || key)>`.
    pub fn to_vkey(&self) -> String {
        format!(
            "{}+{}+{}",
            self.name,
            hex(&self.key_id()),
            BASE64.encode(typed_key(&self.key))
        )
    }

    /// Parses a verifier key string, checking that its key id matches the
    /// name and key. Surrounding whitespace is ignored; the hex key id may be
    /// in either case.
    pub fn from_vkey(s: &str) -> Result<Verifier, CheckpointError> {
        let s = s.trim();
        // Never echo a signing key, not even in part: errors reach logs.
        // (Anywhere in the text: after a byte order mark, a comment line,
        // or a public key pasted before it.)
        if s.contains("PRIVATE+KEY+") {
            return Err(CheckpointError::VerifierKey {
                vkey: "\"PRIVATE+KEY+...\"".into(),
                problem: "this is a private signing key, not a verifier key; give the public key (the .pub file written beside it)".into(),
            });
        }
        let problem = |problem: String| CheckpointError::VerifierKey {
            vkey: quote(s),
            problem,
        };
        // The base64 part may itself contain '+', so split at most twice.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(problem(
                "expected <name>+<8 hex digit key id>+<base64 key>".into(),
            ));
        };
        if !valid_name(name) {
            return Err(problem(format!("key name: expected {NAME_RULE}")));
        }
        let claimed_id = parse_hex_key_id(id_hex).ok_or_else(|| {
            problem(format!(
                "key id: expected 8 hex digits, found {}",
                quote(id_hex)
            ))
        })?;
        let typed = decode_base64(key_b64, 33).ok_or_else(|| {
            problem("key: expected 33 bytes (type byte and Ed25519 key) in standard base64".into())
        })?;
        if typed[0] != ED25519_TYPE {
            return Err(problem(format!(
                "key: unsupported key type 0x{:02x}, only Ed25519 (0x01) is supported",
                typed[0]
            )));
        }
        let bytes: [u8; 32] = typed[1..].try_into().expect("length checked above");
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| problem("key: not a valid Ed25519 public key".into()))?;
        // RFC 8032 (5.1.3) refuses a y of p or more; the decoder reduces
        // it, and would take the key for another encoding of a canonical
        // one, under another key id.
        if key.to_edwards().compress().to_bytes() != bytes {
            return Err(problem(
                "key: not the canonical encoding of an Ed25519 point (its y is p or more)".into(),
            ));
        }
        // A small-order key verifies signatures over many messages, so it
        // would not bind a checkpoint to its signer.
        if key.is_weak() {
            return Err(problem("key: weak (small-order) Ed25519 public key".into()));
        }
        let verifier = Verifier {
            name: name.to_owned(),
            key,
        };
        let actual_id = verifier.key_id();
        if claimed_id != actual_id {
            return Err(problem(format!(
                "key id {} does not match the name and key, which give {}",
                hex(&claimed_id),
                hex(&actual_id)
            )));
        }
        Ok(verifier)
    }
}

impl Checkpoint {
    /// The signed text: five lines, or six with `snapshot`, each ending in
    /// `\n`.
    ///
    /// Only a checkpoint that passes [`Checkpoint::validate`] has a body that
    /// [`Checkpoint::parse`] accepts.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\nchain {}\ntime {}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root),
            BASE64.encode(self.chain_head),
            format_time(self.time_us)
        );
        if let Some(snapshot) = &self.snapshot {
            body.push_str(&format!("snapshot {}\n", BASE64.encode(snapshot)));
        }
        body
    }

    /// Checks what the body cannot express: the origin must be a valid name
    /// and the time must have a four-digit-year RFC 3339 form.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        check_name("origin", &self.origin)?;
        if !(MIN_TIME_US..=MAX_TIME_US).contains(&self.time_us) {
            return Err(CheckpointError::TimeOutOfRange {
                time_us: self.time_us,
            });
        }
        Ok(())
    }

    /// The whole signed note: body, blank line, one signature line.
    ///
    /// # Panics
    ///
    /// If the checkpoint fails [`Checkpoint::validate`] or `key_name` is not
    /// a valid name. [`Checkpoint::try_sign`] returns the error instead.
    pub fn sign(&self, key_name: &str, key: &SigningKey) -> String {
        match self.try_sign(key_name, key) {
            Ok(note) => note,
            Err(e) => panic!("cannot sign checkpoint: {e}"),
        }
    }

    /// Like [`Checkpoint::sign`], but reports an invalid origin, key name or
    /// time as an error.
    pub fn try_sign(&self, key_name: &str, key: &SigningKey) -> Result<String, CheckpointError> {
        self.validate()?;
        check_name("key name", key_name)?;
        let body = self.body();
        let line = signature_line(key_name, key, &body);
        Ok(format!("{body}\n{line}"))
    }

    /// Parses the structure of a signed note without checking any signature.
    pub fn parse(note: &str) -> Result<(Checkpoint, Vec<NoteSignature>), CheckpointError> {
        let parsed = parse_note(note)?;
        Ok((parsed.checkpoint, parsed.signatures))
    }

    /// Parses a signed note and requires a valid signature by `verifier`.
    /// Signatures by other keys are ignored, as C2SP signed-note requires.
    pub fn open(note: &str, verifier: &Verifier) -> Result<Checkpoint, CheckpointError> {
        let parsed = parse_note(note)?;
        let key_id = verifier.key_id();
        let key_error_fields = || (verifier.name.clone(), hex(&key_id));
        let mut matching = parsed
            .signatures
            .iter()
            .enumerate()
            .filter(|(_, s)| s.key_name == verifier.name && s.key_id == key_id);
        let Some((index, signature)) = matching.next() else {
            let (key_name, key_id) = key_error_fields();
            return Err(CheckpointError::NoMatchingSignature { key_name, key_id });
        };
        // Two lines for one key are ambiguous about which one was meant.
        if let Some((dup, _)) = matching.next() {
            let (key_name, key_id) = key_error_fields();
            return Err(CheckpointError::DuplicateSignature {
                line: FIRST_SIGNATURE_LINE + dup,
                key_name,
                key_id,
            });
        }
        let body = &note[..parsed.body_len];
        let invalid = || {
            let (key_name, key_id) = key_error_fields();
            CheckpointError::InvalidSignature {
                line: FIRST_SIGNATURE_LINE + index,
                key_name,
                key_id,
            }
        };
        let bytes: [u8; 64] = signature.signature[..].try_into().map_err(|_| invalid())?;
        // verify_strict rejects malleable signature encodings, so each
        // checkpoint has exactly one valid signature per key.
        verifier
            .key
            .verify_strict(body.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| invalid())?;
        Ok(parsed.checkpoint)
    }
}

struct ParsedNote {
    checkpoint: Checkpoint,
    signatures: Vec<NoteSignature>,
    /// Length in bytes of the signed body at the start of the note.
    body_len: usize,
}

/// Hands out `\n`-terminated lines and counts them for error messages.
struct Lines<'a> {
    rest: &'a str,
    consumed: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    fn next(
        &mut self,
        field: &'static str,
        expected: &'static str,
    ) -> Result<&'a str, CheckpointError> {
        self.line += 1;
        match self.rest.find('\n') {
            Some(end) => {
                let text = &self.rest[..end];
                self.rest = &self.rest[end + 1..];
                self.consumed += end + 1;
                Ok(text)
            }
            None if self.rest.is_empty() => Err(self.error(field, expected, "end of note".into())),
            None => Err(self.error(
                field,
                expected,
                format!("{} without a final newline", quote(self.rest)),
            )),
        }
    }

    fn error(&self, field: &'static str, expected: &'static str, found: String) -> CheckpointError {
        CheckpointError::Syntax {
            line: self.line,
            field,
            expected,
            found,
        }
    }

    fn bad(&self, field: &'static str, expected: &'static str, text: &str) -> CheckpointError {
        self.error(field, expected, quote(text))
    }
}

fn parse_note(note: &str) -> Result<ParsedNote, CheckpointError> {
    let mut lines = Lines {
        rest: note,
        consumed: 0,
        line: 0,
    };

    const ORIGIN: &str = "origin";
    let origin = lines.next(ORIGIN, NAME_RULE)?;
    if !valid_name(origin) {
        return Err(lines.bad(ORIGIN, NAME_RULE, origin));
    }

    const SIZE: (&str, &str) = ("tree size", "a decimal number");
    let text = lines.next(SIZE.0, SIZE.1)?;
    let size = parse_size(text).ok_or_else(|| lines.bad(SIZE.0, SIZE.1, text))?;

    const ROOT: (&str, &str) = ("root hash", "32 bytes in standard base64 with padding");
    let text = lines.next(ROOT.0, ROOT.1)?;
    let root = decode_hash(text).ok_or_else(|| lines.bad(ROOT.0, ROOT.1, text))?;

    const CHAIN: (&str, &str) = (
        "chain head",
        "\"chain \" and 32 bytes in standard base64 with padding",
    );
    let text = lines.next(CHAIN.0, CHAIN.1)?;
    let chain_head = text
        .strip_prefix("chain ")
        .and_then(decode_hash)
        .ok_or_else(|| lines.bad(CHAIN.0, CHAIN.1, text))?;

    const TIME: (&str, &str) = (
        "time",
        "\"time \" and a UTC RFC 3339 time with 6 fractional digits and 'Z', \
         in years 0000 to 9999",
    );
    let text = lines.next(TIME.0, TIME.1)?;
    let time_us = text
        .strip_prefix("time ")
        .and_then(parse_time)
        .ok_or_else(|| lines.bad(TIME.0, TIME.1, text))?;

    const SNAPSHOT: (&str, &str) = (
        "snapshot or end of body",
        "\"snapshot \" and 32 bytes in standard base64 with padding, or an empty line \
         (format version 1 has no other extension lines)",
    );
    let mut body_len = lines.consumed;
    let mut text = lines.next(SNAPSHOT.0, SNAPSHOT.1)?;
    let mut snapshot = None;
    if !text.is_empty() {
        snapshot = Some(
            text.strip_prefix("snapshot ")
                .and_then(decode_hash)
                .ok_or_else(|| lines.bad(SNAPSHOT.0, SNAPSHOT.1, text))?,
        );
        body_len = lines.consumed;
        const BLANK: (&str, &str) = (
            "end of body",
            "an empty line (format version 1 has no extension lines besides chain, time and snapshot)",
        );
        text = lines.next(BLANK.0, BLANK.1)?;
        if !text.is_empty() {
            return Err(lines.bad(BLANK.0, BLANK.1, text));
        }
    }

    const SIGNATURE: (&str, &str) = (
        "signature",
        "\"— <key name> <base64 of 4-byte key id and 64-byte Ed25519 signature>\"",
    );
    let mut signatures = Vec::new();
    // At least one signature line, then more until the note ends.
    loop {
        let text = lines.next(SIGNATURE.0, SIGNATURE.1)?;
        let signature =
            parse_signature_line(text).ok_or_else(|| lines.bad(SIGNATURE.0, SIGNATURE.1, text))?;
        signatures.push(signature);
        if lines.rest.is_empty() {
            break;
        }
    }

    let checkpoint = Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
        chain_head,
        time_us,
        snapshot,
    };
    debug_assert_eq!(checkpoint.body(), note[..body_len]);
    Ok(ParsedNote {
        checkpoint,
        signatures,
        body_len,
    })
}

fn parse_signature_line(text: &str) -> Option<NoteSignature> {
    let (key_name, blob) = text.strip_prefix(SIGNATURE_PREFIX)?.split_once(' ')?;
    if !valid_name(key_name) {
        return None;
    }
    // C2SP signed-note: a key id of 4 bytes, then a signature whose form
    // is the signer's own. Only the verifier's line must be Ed25519's 64.
    let bytes = decode_base64_any(blob)?;
    if bytes.len() < 5 {
        return None;
    }
    Some(NoteSignature {
        key_name: key_name.to_owned(),
        key_id: bytes[..4].try_into().ok()?,
        signature: bytes[4..].to_vec(),
    })
}

fn signature_line(key_name: &str, key: &SigningKey, body: &str) -> String {
    let signature = key.sign(body.as_bytes());
    let mut blob = Vec::with_capacity(68);
    blob.extend_from_slice(&key_id(key_name, &key.verifying_key()));
    blob.extend_from_slice(&signature.to_bytes());
    format!("{SIGNATURE_PREFIX}{key_name} {}\n", BASE64.encode(blob))
}

fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(typed_key(key));
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn typed_key(key: &VerifyingKey) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = ED25519_TYPE;
    out[1..].copy_from_slice(key.as_bytes());
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '+')
}

fn check_name(what: &'static str, name: &str) -> Result<(), CheckpointError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CheckpointError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

/// Decodes standard padded base64 of exactly `len` bytes, accepting only the
/// canonical encoding so that each value has one spelling.
fn decode_base64(text: &str, len: usize) -> Option<Vec<u8>> {
    decode_base64_any(text).filter(|b| b.len() == len)
}

/// Canonical padded base64 only: one spelling per byte string.
fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    let bytes = BASE64.decode(text).ok()?;
    (BASE64.encode(&bytes) == text).then_some(bytes)
}

fn decode_hash(text: &str) -> Option<Hash> {
    decode_base64(text, 32)?.try_into().ok()
}

fn format_time(time_us: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(time_us) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        // Beyond chrono's ±262,000 years; validate() rejects these anyway.
        None => format!("{time_us}us"),
    }
}

fn parse_time(text: &str) -> Option<i64> {
    let time_us = DateTime::parse_from_rfc3339(text).ok()?.timestamp_micros();
    // Re-formatting rejects every non-canonical spelling that RFC 3339
    // allows (offsets, lowercase, other precisions, leap seconds).
    ((MIN_TIME_US..=MAX_TIME_US).contains(&time_us) && format_time(time_us) == text)
        .then_some(time_us)
}

fn parse_hex_key_id(text: &str) -> Option<[u8; 4]> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok().map(u32::to_be_bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` quoted for an error message, unless it looks like a secret: a
/// file given by mistake where a note, a proof or a public key belongs may
/// be a private key or an account's connection string, and errors reach
/// logs.
fn quote(text: &str) -> String {
    const SECRETS: [&str; 5] = [
        "PRIVATE+KEY+",
        "AccountKey=",
        "SharedAccessSignature=",
        "sig=",
        "_KEY=",
    ];
    if SECRETS.iter().any(|s| text.contains(s)) {
        return format!(
            "text of {} characters that looks like a secret (not quoted)",
            text.chars().count()
        );
    }
    if text.chars().count() <= MAX_QUOTED_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head:?}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_signing_key_given_as_verifier_key_is_not_echoed() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let private = crate::keys::encode_signing_key("bi-ledger/main", &k);
        // PRIVATE+KEY+<name>+<key id>+<base64>: the base64 may hold '+' too.
        let secret = private.trim().splitn(5, '+').nth(4).unwrap().to_owned();
        assert_eq!(secret.len(), 44, "{secret}");
        for text in [
            private.clone(),
            format!("\u{feff}{private}"),
            format!("# my key\n{private}"),
        ] {
            let e = Verifier::from_vkey(&text).unwrap_err().to_string();
            assert!(!e.contains(&secret[..8]), "{e}");
            assert!(e.contains("private signing key"), "{e}");
        }
    }

    /// A private key or an account secret given where a note belongs (a
    /// trusted checkpoint, a proof) is named, never quoted.
    #[test]
    fn a_secret_given_as_a_note_is_not_echoed() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let private = crate::keys::encode_signing_key("bi-ledger/main", &k);
        let secret = private.trim().splitn(5, '+').nth(4).unwrap().to_owned();
        let account = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2U";
        let verifier = verifier_for(TEST_NAME, &test_key());
        for (text, hidden) in [
            (private.clone(), &secret[..]),
            (format!("AZURE_STORAGE_KEY={account}\n"), account),
            (format!("AccountName=a;AccountKey={account};\n"), account),
            (
                "https://a.blob.core.windows.net/?sv=2022&sig=c2VjcmV0c2lnbmF0dXJl\n".into(),
                "c2VjcmV0",
            ),
        ] {
            let e = Checkpoint::open(&text, &verifier).unwrap_err().to_string();
            assert!(!e.contains(&hidden[..8]), "{e}");
            // Some are a valid origin line, and the note fails further on.
            let quoted_line = quote(text.lines().next().unwrap());
            assert!(quoted_line.contains("looks like a secret"), "{quoted_line}");
        }
    }

    const TEST_NAME: &str = "example.com/bi-ledger";

    fn test_key() -> SigningKey {
        SigningKey::from_bytes(&[0x01; 32])
    }

    fn verifier_for(name: &str, key: &SigningKey) -> Verifier {
        verifier_for_key(name, key.verifying_key())
    }

    fn test_checkpoint() -> Checkpoint {
        Checkpoint {
            origin: TEST_NAME.to_owned(),
            size: 42,
            root: [0x02; 32],
            chain_head: [0x03; 32],
            time_us: 1_795_839_251_123_456,
            snapshot: None,
        }
    }

    fn syntax_line(err: CheckpointError) -> usize {
        match err {
            CheckpointError::Syntax { line, .. } => line,
            other => panic!("expected a syntax error, got {other}"),
        }
    }

    #[test]
    fn test_vector_note_is_stable() {
        let key = test_key();
        let cp = test_checkpoint();
        let note = cp.sign(TEST_NAME, &key);
        let verifier = verifier_for(TEST_NAME, &key);
        println!("signing key seed: 32 bytes of 0x01");
        println!("verifier key: {}", verifier.to_vkey());
        println!("note:\n{note}");

        // Ed25519 is deterministic, so signing twice gives identical bytes.
        assert_eq!(note, cp.sign(TEST_NAME, &key));
        assert!(note.starts_with(&format!(
            "{TEST_NAME}\n42\n{}\nchain {}\ntime 2026-11-28T04:14:11.123456Z\n\n\u{2014} {TEST_NAME} ",
            BASE64.encode([0x02; 32]),
            BASE64.encode([0x03; 32]),
        )));
        assert!(note.ends_with('\n'));
        assert_eq!(note.lines().count(), 7);

        let (parsed, sigs) = Checkpoint::parse(&note).unwrap();
        assert_eq!(parsed, cp);
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0].key_name, TEST_NAME);
        assert_eq!(sigs[0].key_id, verifier.key_id());
        assert_eq!(
            sigs[0].signature,
            key.sign(cp.body().as_bytes()).to_bytes().to_vec()
        );
        assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), cp);
    }

    #[test]
    fn time_formats_with_six_digits_and_z() {
        assert_eq!(
            format_time(1_795_839_251_123_456),
            "2026-11-28T04:14:11.123456Z"
        );
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_time(MIN_TIME_US), "0000-01-01T00:00:00.000000Z");
        assert_eq!(format_time(MAX_TIME_US), "9999-12-31T23:59:59.999999Z");
        for t in [0, -1, MIN_TIME_US, MAX_TIME_US, 1_795_839_251_123_456] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        assert_eq!(format_time(i64::MAX), format!("{}us", i64::MAX));
    }

    #[test]
    fn non_canonical_times_are_rejected() {
        for text in [
            "2026-11-28T04:14:11.123456+00:00",
            "2026-11-28T04:14:11.123456z",
            "2026-11-28t04:14:11.123456Z",
            "2026-11-28T04:14:11.12345Z",
            "2026-11-28T04:14:11.1234560Z",
            "2026-11-28T04:14:11Z",
            "2026-11-28 04:14:11.123456Z",
            "2026-11-28T05:14:11.123456+01:00",
            "2016-12-31T23:59:60.500000Z",
            "2026-02-30T00:00:00.000000Z",
            " 2026-11-28T04:14:11.123456Z",
        ] {
            assert_eq!(parse_time(text), None, "{text}");
        }
    }

    #[test]
    fn sign_then_open_round_trips() {
        let key = SigningKey::from_bytes(&[0x42; 32]);
        let cp = Checkpoint {
            origin: "log.example/a".into(),
            size: 0,
            root: [0; 32],
            chain_head: [0xff; 32],
            time_us: -5,
            snapshot: None,
        };
        let note = cp.sign("log.example/a", &key);
        let opened = Checkpoint::open(&note, &verifier_for("log.example/a", &key)).unwrap();
        assert_eq!(opened, cp);
    }

    #[test]
    fn every_single_byte_change_breaks_open() {
        let key = test_key();
        let verifier = verifier_for(TEST_NAME, &key);
        let note = test_checkpoint().sign(TEST_NAME, &key);
        let bytes = note.as_bytes();
        let mut tried = 0;
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut changed = bytes.to_vec();
                changed[i] ^= 1 << bit;
                // A change that is not UTF-8 cannot even be handed to open.
                if let Ok(text) = String::from_utf8(changed) {
                    tried += 1;
                    assert!(
                        Checkpoint::open(&text, &verifier).is_err(),
                        "flipping bit {bit} of byte {i} was accepted:\n{text}"
                    );
                }
            }
        }
        assert!(tried > bytes.len() * 6, "most changes stay UTF-8: {tried}");
    }

    #[test]
    fn wrong_key_fails() {
        let key = test_key();
        let other = SigningKey::from_bytes(&[0x02; 32]);
        let note = test_checkpoint().sign(TEST_NAME, &key);

        let err = Checkpoint::open(&note, &verifier_for(TEST_NAME, &other)).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NoMatchingSignature { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(TEST_NAME), "{err}");

        let err = Checkpoint::open(&note, &verifier_for("other.example", &key)).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NoMatchingSignature { .. }),
            "{err}"
        );

        // Right name and key id, but the signature was made by another key.
        let (cp, _) = Checkpoint::parse(&note).unwrap();
        let forged_sig = other.sign(cp.body().as_bytes()).to_bytes();
        let mut blob = verifier_for(TEST_NAME, &key).key_id().to_vec();
        blob.extend_from_slice(&forged_sig);
        let forged = format!(
            "{}\n\u{2014} {TEST_NAME} {}\n",
            cp.body(),
            BASE64.encode(blob)
        );
        let err = Checkpoint::open(&forged, &verifier_for(TEST_NAME, &key)).unwrap_err();
        assert!(
            matches!(err, CheckpointError::InvalidSignature { line: 7, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(TEST_NAME), "{err}");
    }

    #[test]
    fn other_keys_signatures_are_ignored() {
        let key = test_key();
        let other = SigningKey::from_bytes(&[0x07; 32]);
        let cp = test_checkpoint();
        let body = cp.body();
        let note = format!(
            "{body}\n{}{}",
            signature_line("witness.example", &other, &body),
            signature_line(TEST_NAME, &key, &body)
        );
        let (_, sigs) = Checkpoint::parse(&note).unwrap();
        assert_eq!(sigs.len(), 2);
        assert_eq!(
            Checkpoint::open(&note, &verifier_for(TEST_NAME, &key)).unwrap(),
            cp
        );
        assert_eq!(
            Checkpoint::open(&note, &verifier_for("witness.example", &other)).unwrap(),
            cp
        );

        // A garbage signature from an unknown key does not matter either.
        let mut unknown = vec![0u8; 68];
        unknown[0] = 0x55;
        let note = format!(
            "{body}\n\u{2014} unknown.example {}\n{}",
            BASE64.encode(&unknown),
            signature_line(TEST_NAME, &key, &body)
        );
        assert!(Checkpoint::open(&note, &verifier_for(TEST_NAME, &key)).is_ok());

        // Nor does a witness's of another length (another algorithm), but
        // one of that length under the verifier's own name and key id is
        // no Ed25519 signature: invalid, not ignored.
        let verifier = verifier_for(TEST_NAME, &key);
        for (name, id, len, ok) in [
            ("witness.example", [9u8; 4], 96, true),
            ("witness.example", [9u8; 4], 1, true),
            (TEST_NAME, verifier.key_id(), 96, false),
            (TEST_NAME, verifier.key_id(), 63, false),
        ] {
            let mut blob = id.to_vec();
            blob.extend(std::iter::repeat_n(0x5a, len));
            let foreign = format!("\u{2014} {name} {}\n", BASE64.encode(&blob));
            let note = format!(
                "{body}\n{}{foreign}",
                signature_line(TEST_NAME, &key, &body)
            );
            let opened = Checkpoint::open(&note, &verifier);
            match (ok, opened) {
                (true, Ok(opened)) => assert_eq!(opened, cp),
                (false, Err(CheckpointError::DuplicateSignature { .. })) => {}
                (_, other) => panic!("{name} {len}: {other:?}"),
            }
            let alone = format!("{body}\n{foreign}");
            let opened = Checkpoint::open(&alone, &verifier);
            match (ok, opened) {
                (true, Err(CheckpointError::NoMatchingSignature { .. })) => {}
                (false, Err(CheckpointError::InvalidSignature { .. })) => {}
                (_, other) => panic!("{name} {len} alone: {other:?}"),
            }
        }
        // Four bytes (a key id and no signature) is not a signature line.
        let note = format!("{body}\n\u{2014} w.example {}\n", BASE64.encode([1u8; 4]));
        assert!(Checkpoint::parse(&note).is_err());
    }

    #[test]
    fn duplicate_signature_by_the_key_is_rejected() {
        let key = test_key();
        let body = test_checkpoint().body();
        let line = signature_line(TEST_NAME, &key, &body);
        let note = format!("{body}\n{line}{line}");
        assert!(Checkpoint::parse(&note).is_ok());
        let err = Checkpoint::open(&note, &verifier_for(TEST_NAME, &key)).unwrap_err();
        assert!(
            matches!(err, CheckpointError::DuplicateSignature { line: 8, .. }),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_name_the_line_and_expectation() {
        let note = test_checkpoint().sign(TEST_NAME, &test_key());
        let lines: Vec<&str> = note.split_inclusive('\n').collect();
        let with_line = |n: usize, text: &str| {
            let mut l = lines.clone();
            l[n - 1] = text;
            l.concat()
        };

        let err = Checkpoint::parse(&with_line(2, "01\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: tree size: expected a decimal number, found \"01\""
        );

        let cases: Vec<(String, usize)> = vec![
            (with_line(1, "\n"), 1),
            (with_line(1, "has space\n"), 1),
            (with_line(1, "has+plus\n"), 1),
            (with_line(1, "ctrl\u{7}\n"), 1),
            (with_line(1, "origin\r\n"), 1),
            (with_line(2, "\n"), 2),
            (with_line(2, "+42\n"), 2),
            (with_line(2, "-1\n"), 2),
            (with_line(2, "4 2\n"), 2),
            (with_line(2, "18446744073709551616\n"), 2),
            (with_line(3, &format!("{}\n", BASE64.encode([2u8; 31]))), 3),
            (with_line(3, &format!("{}\n", BASE64.encode([2u8; 33]))), 3),
            (
                with_line(3, "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI\n"),
                3,
            ),
            (
                with_line(3, "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgJ=\n"),
                3,
            ),
            (with_line(4, &format!("{}\n", BASE64.encode([3u8; 32]))), 4),
            (
                with_line(4, &format!("chain  {}\n", BASE64.encode([3u8; 32]))),
                4,
            ),
            (
                with_line(4, &format!("Chain {}\n", BASE64.encode([3u8; 32]))),
                4,
            ),
            (with_line(5, "time 2026-11-28T04:14:11Z\n"), 5),
            (with_line(5, "time: 2026-11-28T04:14:11.123456Z\n"), 5),
            (with_line(6, "extra line\n"), 6),
            (with_line(7, "- example.com/bi-ledger AAAA\n"), 7),
            (with_line(7, "\u{2014} example.com/bi-ledger\n"), 7),
            (with_line(7, "\u{2014} example.com/bi-ledger AAAA\n"), 7),
            (with_line(7, "\u{2014}  example.com/bi-ledger AAAA\n"), 7),
            (with_line(7, "\n"), 7),
            (format!("{note}\n"), 8),
            (format!("{note}trailing"), 8),
            (format!("{note}\u{2014} x"), 8),
            (note[..note.len() - 1].to_owned(), 7),
            (lines[..6].concat(), 7),
            (lines[..5].concat(), 6),
            (lines[..4].concat(), 5),
            (lines[..2].concat() + "AgIC", 3),
            (String::new(), 1),
        ];
        for (text, line) in cases {
            let err = Checkpoint::parse(&text).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("line {line}: ")), "{msg}\n{text}");
            assert!(msg.contains("expected"), "{msg}");
            assert_eq!(syntax_line(err), line);
        }

        // Line 6 holding a signature means the blank line is missing.
        let no_blank = format!("{}{}", lines[..5].concat(), lines[6]);
        assert_eq!(syntax_line(Checkpoint::parse(&no_blank).unwrap_err()), 6);
    }

    /// The optional `snapshot` line: after `time`, signed with the rest of
    /// the body, and nothing else may follow it but the blank line.
    #[test]
    fn the_snapshot_line_is_signed_and_parsed_strictly() {
        let key = test_key();
        let verifier = verifier_for(TEST_NAME, &key);
        let cp = Checkpoint {
            snapshot: Some([0x04; 32]),
            ..test_checkpoint()
        };
        let note = cp.sign(TEST_NAME, &key);
        let lines: Vec<&str> = note.split_inclusive('\n').collect();
        assert_eq!(
            lines[5],
            format!("snapshot {}\n", BASE64.encode([0x04; 32]))
        );
        assert_eq!(lines[6], "\n");
        assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), cp);
        assert_eq!(cp.body(), lines[..6].concat());

        // Another snapshot under the same signature does not open.
        let other = note.replace(&BASE64.encode([0x04; 32]), &BASE64.encode([0x05; 32]));
        assert!(matches!(
            Checkpoint::open(&other, &verifier),
            Err(CheckpointError::InvalidSignature { .. })
        ));
        // Without the line, the signature is over another body.
        let without = format!("{}{}", lines[..5].concat(), lines[6..].concat());
        assert!(matches!(
            Checkpoint::open(&without, &verifier),
            Err(CheckpointError::InvalidSignature { .. })
        ));

        let with_line = |n: usize, text: &str| {
            let mut l = lines.clone();
            l[n - 1] = text;
            l.concat()
        };
        for (text, line) in [
            (with_line(6, "snapshot AAAA\n"), 6),
            (
                with_line(6, &format!("Snapshot {}\n", BASE64.encode([4u8; 32]))),
                6,
            ),
            (
                with_line(6, &format!("snapshot  {}\n", BASE64.encode([4u8; 32]))),
                6,
            ),
            (with_line(7, "extra line\n"), 7),
            (
                with_line(7, &format!("snapshot {}\n", BASE64.encode([4u8; 32]))),
                7,
            ),
        ] {
            let err = Checkpoint::parse(&text).unwrap_err();
            assert_eq!(syntax_line(err), line, "{text}");
        }
    }

    #[test]
    fn error_messages_quote_at_most_a_prefix() {
        let long = "x".repeat(10_000);
        let note = format!("{long} y\n");
        let msg = Checkpoint::parse(&note).unwrap_err().to_string();
        assert!(msg.len() < 400, "{msg}");
    }

    #[test]
    fn sign_rejects_invalid_names_and_times() {
        let key = test_key();
        let mut cp = test_checkpoint();
        for bad in ["", "a b", "a+b", "a\tb", "a\u{2003}b", "a\u{0}b", "a\nb"] {
            cp.origin = bad.to_owned();
            assert!(
                matches!(
                    cp.try_sign(TEST_NAME, &key),
                    Err(CheckpointError::InvalidName { what: "origin", .. })
                ),
                "{bad:?}"
            );
            assert!(matches!(
                test_checkpoint().try_sign(bad, &key),
                Err(CheckpointError::InvalidName {
                    what: "key name",
                    ..
                })
            ));
        }
        let mut cp = test_checkpoint();
        for t in [MIN_TIME_US - 1, MAX_TIME_US + 1, i64::MIN, i64::MAX] {
            cp.time_us = t;
            assert!(matches!(
                cp.try_sign(TEST_NAME, &key),
                Err(CheckpointError::TimeOutOfRange { .. })
            ));
        }
        for t in [MIN_TIME_US, MAX_TIME_US] {
            cp.time_us = t;
            let note = cp.sign(TEST_NAME, &key);
            assert_eq!(Checkpoint::parse(&note).unwrap().0, cp);
        }
    }

    #[test]
    #[should_panic(expected = "cannot sign checkpoint: invalid origin")]
    fn sign_panics_on_invalid_origin() {
        let mut cp = test_checkpoint();
        cp.origin = "two words".into();
        cp.sign(TEST_NAME, &test_key());
    }

    /// A y of p or more decodes in ed25519-dalek (reduced mod p), as a
    /// second spelling of a canonical key; RFC 8032 refuses it, and so do we.
    #[test]
    fn a_non_canonical_key_encoding_is_refused() {
        let mut bytes = [0xff; 32];
        bytes[0] = 0xed + 3; // p + 3, the y of a point of large order
        bytes[31] = 0x7f;
        let key = VerifyingKey::from_bytes(&bytes).expect("dalek decodes it");
        assert!(!key.is_weak());
        let vkey = verifier_for_key(TEST_NAME, key).to_vkey();
        let e = Verifier::from_vkey(&vkey).unwrap_err().to_string();
        assert!(e.contains("canonical"), "{e}");
    }

    fn verifier_for_key(name: &str, key: VerifyingKey) -> Verifier {
        Verifier {
            name: name.to_owned(),
            key,
        }
    }

    #[test]
    fn vkey_round_trips() {
        let v = verifier_for(TEST_NAME, &test_key());
        let vkey = v.to_vkey();
        let (name, rest) = vkey.split_once('+').unwrap();
        assert_eq!(name, TEST_NAME);
        assert_eq!(&rest[..8], hex(&v.key_id()));
        assert_eq!(Verifier::from_vkey(&vkey).unwrap(), v);
        assert_eq!(Verifier::from_vkey(&format!("  {vkey}\n")).unwrap(), v);
        let upper = format!("{name}+{}", rest[..8].to_uppercase()) + &rest[8..];
        assert_eq!(Verifier::from_vkey(&upper).unwrap(), v);
    }

    #[test]
    fn vkey_rejects_manglings() {
        let v = verifier_for(TEST_NAME, &test_key());
        let vkey = v.to_vkey();
        for i in 0..vkey.len() {
            for j in i + 1..=vkey.len() {
                if (i, j) != (0, vkey.len()) {
                    let part = &vkey[i..j];
                    // Trimming may legitimately turn a substring back into
                    // the whole key only if it is the whole key.
                    assert!(Verifier::from_vkey(part).is_err(), "{part}");
                }
            }
        }
        let bytes = vkey.as_bytes();
        for i in 0..bytes.len() {
            let mut changed = bytes.to_vec();
            changed[i] = changed[i].wrapping_add(1);
            if let Ok(text) = String::from_utf8(changed) {
                if text.trim() != vkey && !text.eq_ignore_ascii_case(&vkey) {
                    assert!(Verifier::from_vkey(&text).is_err(), "{text}");
                }
            }
        }
        // Key id that does not belong to the key.
        let wrong = verifier_for("other", &test_key());
        let swapped = format!("{TEST_NAME}+{}", &wrong.to_vkey()["other+".len()..]);
        let err = Verifier::from_vkey(&swapped).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        // Unsupported key type (a cosignature/v1 key, type 0x04).
        let mut typed = typed_key(&v.key).to_vec();
        typed[0] = 0x04;
        let mut h = Sha256::new();
        h.update(format!("{TEST_NAME}\n"));
        h.update(&typed);
        let id = hex(&h.finalize()[..4]);
        let other_type = format!("{TEST_NAME}+{id}+{}", BASE64.encode(&typed));
        let err = Verifier::from_vkey(&other_type).unwrap_err();
        assert!(err.to_string().contains("0x04"), "{err}");
    }

    /// The example of golang.org/x/mod/sumdb/note, an independent
    /// implementation of signed notes: same key id, same signature line.
    #[test]
    fn matches_go_sumdb_note_example() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let skey_b64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let want = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

        let v = Verifier::from_vkey(vkey).unwrap();
        assert_eq!(hex(&v.key_id()), "c74f20a3");
        assert_eq!(v.to_vkey(), vkey);
        let typed_seed = BASE64.decode(skey_b64).unwrap();
        assert_eq!(typed_seed[0], ED25519_TYPE);
        let key = SigningKey::from_bytes(&typed_seed[1..].try_into().unwrap());
        assert_eq!(key.verifying_key(), v.key);
        assert_eq!(signature_line("PeterNeumann", &key, text), want);
        let sig = parse_signature_line(want.trim_end_matches('\n')).unwrap();
        assert_eq!(sig.key_id, v.key_id());
        v.key
            .verify_strict(
                text.as_bytes(),
                &Signature::from_bytes(&sig.signature[..].try_into().unwrap()),
            )
            .unwrap();
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        let chars: Vec<char> = "abcxyz019.-_/:éλ😀".chars().collect();
        prop::collection::vec(prop::sample::select(chars), 1..40)
            .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sign_open_round_trip(
            origin in name_strategy(),
            key_name in name_strategy(),
            seed in any::<[u8; 32]>(),
            size in any::<u64>(),
            root in any::<[u8; 32]>(),
            chain_head in any::<[u8; 32]>(),
            time_us in MIN_TIME_US..=MAX_TIME_US,
            snapshot in proptest::option::of(any::<[u8; 32]>()),
        ) {
            let key = SigningKey::from_bytes(&seed);
            let cp = Checkpoint { origin, size, root, chain_head, time_us, snapshot };
            let note = cp.sign(&key_name, &key);
            let verifier = verifier_for(&key_name, &key);
            prop_assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), cp.clone());
            let (parsed, sigs) = Checkpoint::parse(&note).unwrap();
            prop_assert_eq!(parsed, cp);
            prop_assert_eq!(sigs.len(), 1);
            prop_assert_eq!(Verifier::from_vkey(&verifier.to_vkey()).unwrap(), verifier);
        }
    }
}
