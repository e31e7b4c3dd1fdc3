//! `prove` and `verify-proof`: inclusion and consistency proofs against
//! signed checkpoints.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bi_ledger::error::IntegrityError;
use bi_ledger::format::checkpoint::Checkpoint;
use bi_ledger::format::hex;
use bi_ledger::ledger::proof::{ConsistencyProof, InclusionProof};
use bi_ledger::{LedgerError, LedgerReader};
use serde_json::json;

use crate::check::unambiguous_json;
use crate::keyfile::load_verifier;
use crate::{integrity_json, open_reader, print, read_input, Cli, Integrity, Outcome};

/// The checkpoint of `size` (default: the newest) and its note; an
/// integrity error if the ledger has none at all.
async fn checkpoint_note(
    reader: &LedgerReader,
    size: Option<u64>,
) -> Result<std::result::Result<(Checkpoint, String), IntegrityError>> {
    if let Some((_, cp, note)) = reader.signed_checkpoint(size).await? {
        return Ok(Ok((cp, note)));
    }
    let name = reader.name();
    let store = reader.store().as_ref();
    if bi_ledger::ledger::recover::checkpoint_blobs(store, name)
        .await?
        .is_empty()
    {
        // Not a new ledger: `init` signs checkpoint 0 before it returns.
        return Ok(Err(bi_ledger::ledger::recover::no_checkpoint(name)));
    }
    match size {
        Some(s) => bail!(
            "no checkpoint of size {s}; `bi-ledger checkpoint` writes one of the current size"
        ),
        // Listed, but not there when read: removed meanwhile.
        None => bail!(
            "the newest checkpoint could not be read (removed meanwhile?); `bi-ledger verify` checks the ledger's checkpoints"
        ),
    }
}

pub(crate) async fn prove(
    cli: &Cli,
    seq: Option<u64>,
    old_size: Option<u64>,
    size: Option<u64>,
) -> Outcome {
    let reader = open_reader(cli).await?;
    let (cp, note) = match checkpoint_note(&reader, size).await? {
        Ok(found) => found,
        Err(e) => return integrity_json(e),
    };
    // A reader sees the segments as they were when it opened; a live writer
    // may have appended and signed the checkpoint just chosen since then.
    // Checkpoints are written after what they cover, so a reader opened
    // now sees all of it.
    let reader = open_reader(cli).await?;
    match (seq, old_size) {
        (Some(seq), _) => {
            if seq >= cp.size {
                let hint = match size {
                    Some(_) => "give a larger --size",
                    None => "`bi-ledger checkpoint` signs one of the ledger's current size",
                };
                bail!(
                    "--seq {seq} is not covered by the checkpoint of size {}: {hint}",
                    cp.size
                );
            }
            let proof = match reader.inclusion_proof(seq, cp.size).await {
                Err(LedgerError::Integrity(e)) => return integrity_json(e),
                other => other?,
            };
            print(json!({"type": "inclusion", "proof": proof, "checkpoint": note}))?;
        }
        (None, Some(old)) => {
            let (_, old_note) = match checkpoint_note(&reader, Some(old)).await? {
                Ok(found) => found,
                Err(e) => return integrity_json(e),
            };
            let proof = match reader.consistency_proof(old, cp.size).await {
                Err(LedgerError::Integrity(e)) => return integrity_json(e),
                other => other?,
            };
            print(
                json!({"type": "consistency", "proof": proof, "old_checkpoint": old_note, "checkpoint": note}),
            )?;
        }
        (None, None) => bail!("give --seq N (inclusion proof) or --old-size N (consistency proof)"),
    }
    Ok(Ok(()))
}

pub(crate) fn verify_proof(
    public_key: &Path,
    origin: Option<&str>,
    file: Option<&Path>,
) -> Outcome {
    let verifier = load_verifier(public_key)?;
    let text = read_input(file)?;
    let v = unambiguous_json(text.trim()).context("proof")?;
    let field = |name: &str| -> Result<&str> {
        v.get(name)
            .and_then(|x| x.as_str())
            .ok_or_else(|| anyhow!("proof: missing string field `{name}`"))
    };
    let open = |name: &str| -> Result<std::result::Result<Checkpoint, String>> {
        Ok(Checkpoint::open(field(name)?, &verifier)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|cp| match origin {
                Some(want) if cp.origin != want => Err(format!(
                    "{name}: signed for {}, not the expected {want}",
                    cp.origin
                )),
                _ => Ok(cp),
            }))
    };
    // A checkpoint that does not open is a failed proof like any other:
    // it is reported on stdout as well.
    let failed = |e: String| -> Outcome {
        print(json!({"valid": false, "error": e}))?;
        Ok(Err(Integrity::failed(e)))
    };
    let cp = match open("checkpoint")? {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let proof = v
        .get("proof")
        .cloned()
        .ok_or_else(|| anyhow!("proof: missing field `proof`"))?;
    let result = match field("type")? {
        "inclusion" => {
            let p: InclusionProof =
                serde_json::from_value(proof).context("proof: bad inclusion proof")?;
            p.verify(&cp).map(|r| {
                json!({
                    "valid": true, "type": "inclusion", "seq": p.seq, "size": p.size,
                    "stream": r.stream, "version": r.stream_version, "event_type": r.event_type,
                    "timestamp": bi_ledger::time::format_us(r.timestamp_us),
                    "checked_against": checked_against(&cp),
                })
            })
        }
        "consistency" => {
            let old = match open("old_checkpoint")? {
                Ok(c) => c,
                Err(e) => return failed(e),
            };
            let p: ConsistencyProof =
                serde_json::from_value(proof).context("proof: bad consistency proof")?;
            p.verify(&old, &cp)
                .map(|()| json!({
                    "valid": true, "type": "consistency", "old_size": p.old_size, "new_size": p.new_size,
                    "old_checked_against": checked_against(&old), "checked_against": checked_against(&cp),
                }))
        }
        other => bail!("proof: unknown type {other:?}"),
    };
    match result {
        Ok(j) => {
            print(j)?;
            Ok(Ok(()))
        }
        Err(e) => failed(e.to_string()),
    }
}

/// What a proof was checked against: the signing key proves only who signed,
/// so say which ledger (its origin names it and its id) and which state.
fn checked_against(c: &Checkpoint) -> serde_json::Value {
    json!({
        "origin": c.origin,
        "size": c.size,
        "time": bi_ledger::time::format_us(c.time_us),
        "root": hex(&c.root),
    })
}
