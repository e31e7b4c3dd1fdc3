//! `append`: JSON lines in, receipts out. The input is read twice, a
//! line at a time: first every line is checked, so that a bad one anywhere
//! means nothing is written, then the events are appended in calls that
//! each fill a batch.

use std::io::{Read, Seek};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bi_ledger::{Ledger, LedgerError};

use crate::keyfile::load_key;
use crate::{input, ledger_exists, open_writer, print, store, writer_options, Cli, Outcome};

/// `append`'s input, which is read twice. A regular file is read where it
/// is; anything else (standard input, a pipe, `<(…)`) is first copied to a
/// temporary file, removed at once (it lives until closed).
struct AppendInput {
    file: std::fs::File,
    name: String,
}

impl AppendInput {
    fn open(file: Option<&Path>) -> Result<Self> {
        let (name, source) = match file {
            Some(p) if p != Path::new("-") => {
                let name = p.display().to_string();
                let file = std::fs::File::open(p).with_context(|| format!("reading {name}"))?;
                let meta = file.metadata().with_context(|| format!("reading {name}"))?;
                if meta.is_dir() {
                    bail!("reading {name}: it is a directory, not a file of JSON lines");
                }
                if meta.is_file() {
                    return Ok(AppendInput { file, name });
                }
                (name, Box::new(file) as Box<dyn Read>)
            }
            _ => (
                "stdin".to_owned(),
                Box::new(std::io::stdin().lock()) as Box<dyn Read>,
            ),
        };
        Ok(AppendInput {
            file: spool(&name, source)?,
            name,
        })
    }

    /// The input's first `len` bytes (all of it: `u64::MAX`).
    fn reader(&self, len: u64) -> Result<std::io::BufReader<std::io::Take<&std::fs::File>>> {
        (&self.file)
            .rewind()
            .with_context(|| format!("reading {}", self.name))?;
        Ok(std::io::BufReader::with_capacity(
            1 << 16,
            (&self.file).take(len),
        ))
    }

    /// An error of the input, naming it (a bad line is named already).
    fn named(&self, e: anyhow::Error) -> anyhow::Error {
        match e.downcast::<std::io::Error>() {
            Ok(io) => anyhow!(io).context(format!("reading {}", self.name)),
            Err(e) => e,
        }
    }
}

/// A private copy of `source`, in a temporary file that is already
/// unlinked.
fn spool(name: &str, mut source: Box<dyn Read + '_>) -> Result<std::fs::File> {
    // An empty TMPDIR counts as unset, as our own variables do (std would
    // take it for the current directory).
    let dir = match std::env::var_os("TMPDIR") {
        Some(d) if d.is_empty() => std::path::PathBuf::from("/tmp"),
        _ => std::env::temp_dir(),
    };
    let path = dir.join(format!(
        "bi-ledger-input-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    // The events may be personal data: readable by us alone for the moment
    // before it is unlinked.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(&path)
        .with_context(|| format!("creating {} to hold {name}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    std::io::copy(&mut source, &mut file)
        .with_context(|| format!("copying {name} to {}", path.display()))?;
    Ok(file)
}

pub(crate) async fn append(cli: &Cli, file: Option<&Path>) -> Outcome {
    // Read twice, one line at a time: once to check every line, so that a
    // bad one anywhere means nothing is written, then to append.
    let input = AppendInput::open(file)?;
    let store = store(cli, false).await?;
    ledger_exists(cli, store.as_ref()).await?;
    let opts = writer_options(cli, load_key(cli)?);
    let meta = bi_ledger::ledger::recover::read_meta(store.as_ref(), &cli.ledger)
        .await
        .with_context(|| {
            format!(
                "opening ledger {:?} in {} for writing",
                cli.ledger,
                store.location()
            )
        })?;
    let max = opts.batch_limit(store.as_ref(), &meta);
    let mut events = input::Events::new(input.reader(u64::MAX)?)
        .parallel()
        .fitting(max);
    let mut any = false;
    while let Some(chunk) = events
        .next_chunk(CHUNK_LINES)
        .map_err(|e| anyhow!("{:#}; nothing was appended", input.named(e)))?
    {
        any |= !chunk.is_empty();
    }
    if !any {
        return Ok(Ok(()));
    }
    // A file that grows meanwhile (a log still being written) is appended
    // only as far as it was checked.
    let checked = events.bytes_read();
    let ledger = open_writer(cli, store, opts).await?;
    crate::interrupt::watch();
    let result = append_checked(&ledger, &input, checked, max).await;
    let close = ledger.close().await;
    match (result, close) {
        (Ok(_), Ok(_)) => Ok(Ok(())),
        // Say so: a caller who took the failure for "nothing written" and
        // appended again would record every event twice.
        (Ok(upto), Err(c)) => bail!(
            "every line (up to {upto}) was appended and is durable, as the receipts say, but closing the ledger failed: {c} (its closing checkpoint is not written; the next writer reads them from the log)"
        ),
        (Err(e), Ok(_)) => Err(e),
        // A writer stopped by a failed write fails its close with the
        // same error, which `e` has told already.
        (Err(e), Err(LedgerError::Poisoned(_))) => Err(e),
        (Err(e), Err(c)) => bail!("{e:#} (closing the ledger also failed: {c})"),
    }
}

/// `append`'s second pass: the checked input, in calls that each fill a
/// batch. One append call is one batch, and atomic; an error after the
/// first call says which lines were written.
async fn append_checked(
    ledger: &Ledger,
    input: &AppendInput,
    checked: u64,
    max: usize,
) -> Result<usize> {
    // Parsed on this thread: the writer hashes on the other cores.
    let mut events = input::Events::new(input.reader(checked)?).fitting(max);
    let mut written_upto = 0usize;
    // One call is in flight while the next is parsed, never more: a call
    // that fails is then the last one written to.
    let mut in_flight = None;
    let mut call: Vec<(usize, bi_ledger::NewEvent)> = Vec::new();
    let mut bytes = bi_ledger::ledger::BATCH_OVERHEAD;
    loop {
        if crate::interrupt::asked() {
            settle(&mut in_flight, &mut written_upto).await?;
            return Err(crate::interrupt::Interrupted(format!(
                "{}: {}",
                crate::interrupt::interrupted(),
                appended_hint(written_upto)
            ))
            .into());
        }
        let read = match events.next_chunk(CHUNK_LINES) {
            Ok(None) if events.bytes_read() < checked => Err(anyhow!(
                "{} is shorter than when it was checked",
                input.name
            )),
            Ok(c) => Ok(c),
            Err(e) => Err(input.named(e)),
        };
        let (chunk, end) = match read {
            Ok(Some(c)) => (c, false),
            Ok(None) => (Vec::new(), true),
            Err(e) => {
                settle(&mut in_flight, &mut written_upto).await?;
                bail!(
                    "{e:#}; the input changed since it was checked; {}",
                    appended_hint(written_upto)
                );
            }
        };
        for (line, event) in chunk {
            let len = event.stored_len_bound();
            if !call.is_empty() && bytes + len > max {
                settle(&mut in_flight, &mut written_upto).await?;
                in_flight = Some(spawn_call(ledger, std::mem::take(&mut call), written_upto));
                bytes = bi_ledger::ledger::BATCH_OVERHEAD;
            }
            bytes += len;
            call.push((line, event));
        }
        if end {
            settle(&mut in_flight, &mut written_upto).await?;
            if !call.is_empty() {
                written_upto = append_call(ledger, call, written_upto).await?;
            }
            return Ok(written_upto);
        }
    }
}

/// Lines `append` reads and parses at a time.
const CHUNK_LINES: usize = 1024;

fn spawn_call(
    ledger: &Ledger,
    call: Vec<(usize, bi_ledger::NewEvent)>,
    written_upto: usize,
) -> tokio::task::JoinHandle<Result<usize>> {
    let ledger = ledger.clone();
    tokio::spawn(async move { append_call(&ledger, call, written_upto).await })
}

/// Waits for the call in flight, if any.
async fn settle(
    in_flight: &mut Option<tokio::task::JoinHandle<Result<usize>>>,
    written_upto: &mut usize,
) -> Result<()> {
    if let Some(call) = in_flight.take() {
        *written_upto = call.await.context("appending")??;
    }
    Ok(())
}

fn appended_hint(upto: usize) -> String {
    if upto == 0 {
        "nothing was appended".to_owned()
    } else {
        format!("lines up to {upto} were appended, and none after")
    }
}

/// What an append call of lines `first..=last` whose block write failed
/// has written. A failed write may still land (its answer lost on the way
/// back, a store that could not learn whether it did), so its lines are
/// neither written nor not; nothing after them was tried. `seq`: the
/// sequence number the first of them would have, where the library knows.
fn unknown_outcome(written_upto: usize, first: usize, last: usize, seq: Option<u64>) -> String {
    let before = match written_upto {
        0 => String::new(),
        n => format!("lines up to {n} were appended; "),
    };
    let look = match seq {
        Some(s) => format!(
            "see whether the ledger holds sequence number {s} (`bi-ledger read --from {s}`)"
        ),
        None => {
            "see where the ledger ends (`bi-ledger stats`, then `bi-ledger read --from N`)".into()
        }
    };
    format!(
        "appending lines {first} to {last}: {before}whether those were is not known (a write that fails may still land, as when its answer is lost), and no line after {last} was: {look} before appending any of them again"
    )
}

/// Appends one call's events and prints their receipts; returns the last
/// line now written.
async fn append_call(
    ledger: &Ledger,
    call: Vec<(usize, bi_ledger::NewEvent)>,
    written_upto: usize,
) -> Result<usize> {
    let (lines, events): (Vec<usize>, Vec<_>) = call.into_iter().unzip();
    // For a conflict's message: which lines of the call came first on the
    // stream, and were not written either.
    let streams: Vec<String> = events.iter().map(|e| e.stream.clone()).collect();
    let hint = appended_hint(written_upto);
    let receipts = match ledger.append(events).await {
        Ok(r) => r,
        Err(LedgerError::VersionConflict {
            index,
            stream,
            expected,
            current,
            earlier: _,
        }) => {
            let earlier: Vec<usize> = (0..index)
                .filter(|&i| streams[i] == stream)
                .map(|i| lines[i])
                .collect();
            let version = current.map_or("none".into(), |v| v.to_string());
            let checked = bi_ledger::error::version_after(current, earlier.len())
                .map_or_else(String::new, |v| v.to_string());
            let cause = match earlier.as_slice() {
                [] => format!("current version is {version}"),
                [one] => format!("line {one} of this input comes first on it and would bring it to version {checked} (its current version is {version})"),
                many => format!(
                    "{} earlier lines of this input come first on it and would bring it to version {checked} (its current version is {version})",
                    many.len()
                ),
            };
            bail!(
                "line {}: stream {stream:?} expected {expected}, but {cause}; {hint}",
                lines[index],
            );
        }
        Err(LedgerError::InvalidEvent {
            index,
            field,
            reason,
        }) => bail!("line {}: field `{field}` {reason}; {hint}", lines[index]),
        Err(LedgerError::OutcomeUnknown {
            first_seq, cause, ..
        }) => {
            let last = *lines.last().expect("a call has lines");
            bail!(
                "{}; the write failed: {cause}",
                unknown_outcome(written_upto, lines[0], last, Some(first_seq))
            );
        }
        // The writer had stopped before this call's block was issued.
        Err(LedgerError::Poisoned(why)) => {
            let last = *lines.last().expect("a call has lines");
            bail!(
                "appending lines {} to {last}: not appended, the writer had stopped ({why}); {hint}",
                lines[0]
            );
        }
        Err(other) => {
            let last = *lines.last().expect("a call has lines");
            return Err(anyhow!(other).context(unknown_outcome(
                written_upto,
                lines[0],
                last,
                None,
            )));
        }
    };
    let written_upto = *lines.last().expect("a call has lines");
    // The events are durable now, receipts or not: a reader that went away
    // (a closed pipe) stops the input here, and is told so.
    if let Err(e) = receipts.iter().try_for_each(|r| print(r.to_json())) {
        bail!("writing receipts: {e:#}; {}", appended_hint(written_upto));
    }
    Ok(written_upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_its_lines_unknown() {
        let m = unknown_outcome(41608, 41609, 42000, None);
        assert!(m.starts_with("appending lines 41609 to 42000: lines up to 41608 were appended; whether those were is not known"), "{m}");
        assert!(m.contains("no line after 42000 was"), "{m}");
        assert!(m.contains("`bi-ledger stats`"), "{m}");
        assert!(!m.contains("none after"), "{m}");
        let m = unknown_outcome(0, 1, 5, Some(77));
        assert!(
            m.starts_with("appending lines 1 to 5: whether those were is not known"),
            "{m}"
        );
        assert!(m.contains("`bi-ledger read --from 77`"), "{m}");
    }
}
