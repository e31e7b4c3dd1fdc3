//! `verify`: the whole ledger against a public key, and the checkpoints
//! kept elsewhere (`--trusted-checkpoint`) against the ledger.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bi_ledger::error::IntegrityError;
use bi_ledger::format::checkpoint::{Checkpoint, Verifier};
use bi_ledger::format::hex;
use bi_ledger::ledger::verify::VerifyOptions;
use bi_ledger::{LedgerError, LedgerReader};
use serde_json::json;

use crate::keyfile::load_verifier;
use crate::{integrity_json, print, progress, store, Cli, Outcome};

pub(crate) async fn verify(
    cli: &Cli,
    public_key: Option<&Path>,
    restore_caches: bool,
    origin: Option<&str>,
    trusted_files: &[PathBuf],
) -> Outcome {
    // Damage found while opening (the LEDGER file, a segment header, the
    // segment listing) is reported like damage found later.
    let reader = match LedgerReader::open(store(cli, false).await?, &cli.ledger).await {
        Ok(r) => r,
        Err(LedgerError::Integrity(e)) => return integrity_json(e),
        Err(e) => {
            return Err(anyhow!(e).context(format!("opening ledger {:?}", cli.ledger)));
        }
    };
    let verifier = match public_key {
        Some(p) => load_verifier(p)?,
        None => {
            tracing::warn!("no --public-key given: verifying against the key recorded in the ledger, which proves integrity but not who signed");
            reader.recorded_verifier().clone()
        }
    };
    let found = reader.meta().origin();
    if let Some(want) = origin.filter(|w| *w != found) {
        // Checkpoints name the origin of the LEDGER file, which nothing
        // signs: a whole other ledger under the same key verifies.
        return integrity_json(IntegrityError::new(
            bi_ledger::ledger::layout::meta(&cli.ledger),
            0,
            None,
            format!("this is ledger {found}, not the expected {want}"),
        ));
    }
    // Before the long part: a file that is not a checkpoint signed by the
    // key is the caller's mistake, found at once.
    let trusted = trusted_files
        .iter()
        .map(|f| Ok((f, load_trusted_checkpoint(f, &verifier)?)))
        .collect::<Result<Vec<_>>>()?;
    let bar = progress::Progress::new("verify");
    let start = Instant::now();
    let opts = VerifyOptions { restore_caches };
    let result = reader
        .verify_with(&verifier, opts, &|done, total| bar.update(done, total))
        .await;
    bar.finish();
    let mut matched = Vec::with_capacity(trusted.len());
    if let (Ok(r), false) = (&result, trusted.is_empty()) {
        // Opened again: verify lists the segments afresh, and may have
        // seen records that a live writer appended after the first open.
        let reader = LedgerReader::open(store(cli, false).await?, &cli.ledger).await?;
        for (file, cp) in &trusted {
            match reader.check_trusted(cp, r).await {
                Ok(how) => matched.push(json!({
                    "file": file.display().to_string(),
                    "size": cp.size,
                    "matched": how.as_str(),
                })),
                Err(LedgerError::Integrity(mut e)) => {
                    e.what = format!("{} ({})", e.what, file.display());
                    return integrity_json(e);
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "checking the trusted checkpoint {}",
                        file.display()
                    )))
                }
            }
        }
    }
    match result {
        Ok(r) => {
            // The newest checkpoint verified, as its note: this output, kept,
            // is what the next run's --trusted-checkpoint reads.
            let newest = r.records - r.unsigned_tail;
            let note = match reader.signed_checkpoint(Some(newest)).await? {
                Some((_, _, note)) if Checkpoint::open(&note, &verifier).is_ok() => Some(note),
                _ => None,
            };
            print(json!({
                "valid": true,
                "origin": found,
                "checkpoint": note,
                "records": r.records,
                "segments": r.segments,
                "bytes": r.bytes,
                "checkpoints": r.checkpoints,
                "unsigned_tail": r.unsigned_tail,
                "caches_without_checkpoint": r.caches_without_checkpoint,
                "missing_caches": r.missing_caches,
                "restored_caches": r.restored_caches,
                "failed_restores": r.failed_restores.iter()
                    .map(|(blob, error)| json!({"blob": blob, "error": error}))
                    .collect::<Vec<_>>(),
                "trusted_checkpoints": matched,
                "root": hex(&r.root),
                "chain_head": hex(&r.chain_head),
                "seconds": start.elapsed().as_secs_f64(),
            }))?;
            // Valid, but what --restore-caches asked for was not done: an
            // I/O error, after the report that says which.
            if let Some((blob, error)) = r.failed_restores.first() {
                bail!(
                    "could not restore {} missing cache(s), the first {blob}: {error}",
                    r.failed_restores.len()
                );
            }
            Ok(Ok(()))
        }
        Err(LedgerError::Integrity(e)) => integrity_json(e),
        Err(e) => Err(e.into()),
    }
}

/// JSON read as evidence. A key given twice is refused: a reader that takes
/// the first value would see what was never checked (serde_json keeps the
/// last).
pub(crate) fn unambiguous_json(text: &str) -> Result<serde_json::Value> {
    bi_ledger::json::canonicalize(text).map_err(|e| anyhow!("not JSON to trust: {e}"))?;
    Ok(serde_json::from_str(text)?)
}

/// A checkpoint kept outside the ledger, from FILE: the JSON that
/// `checkpoint` (its `note`), or `prove` or `verify` (their `checkpoint`)
/// printed, or the note's own text. Its signature is checked against `verifier`.
fn load_trusted_checkpoint(file: &Path, verifier: &Verifier) -> Result<Checkpoint> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading trusted checkpoint {}", file.display()))?;
    if text.trim().is_empty() {
        bail!(
            "trusted checkpoint {} is empty: give a checkpoint that `checkpoint`, `prove` or `verify` printed",
            file.display()
        );
    }
    let note = if text.trim_start().starts_with('{') {
        let v = unambiguous_json(&text)
            .with_context(|| format!("trusted checkpoint {}", file.display()))?;
        let notes: Vec<&str> = ["note", "checkpoint"]
            .iter()
            .filter_map(|k| v.get(k).and_then(|x| x.as_str()))
            .collect();
        match notes[..] {
            [a, b] if a != b => bail!(
                "trusted checkpoint {}: fields `note` and `checkpoint` hold different checkpoints: keep one",
                file.display()
            ),
            [n, ..] => n.to_owned(),
            [] => bail!(
                "trusted checkpoint {}: JSON without a string field `note` (as `checkpoint` prints) or `checkpoint` (as `prove` and `verify` print)",
                file.display()
            ),
        }
    } else {
        text
    };
    Checkpoint::open(&note, verifier)
        .with_context(|| format!("trusted checkpoint {}", file.display()))
}
