//! `read` and `stats`: the log as JSON lines, and its counts.

use std::io::Write;

use anyhow::{anyhow, bail};
use bi_ledger::format::hex;
use serde_json::json;

use crate::{open_reader, print, Cli, Outcome};

pub(crate) async fn read(
    cli: &Cli,
    stream: Option<&str>,
    from: u64,
    to: Option<u64>,
    as_of: Option<&str>,
) -> Outcome {
    let as_of = match as_of {
        Some(t) => Some(bi_ledger::time::parse_rfc3339_us(t).ok_or_else(|| {
            anyhow!("--as-of: expected an RFC 3339 time such as 2026-11-28T12:00:00Z, found {t:?}")
        })?),
        None => None,
    };
    if let Some(to) = to.filter(|&to| to < from) {
        bail!(
            "--to {to} is before --from {from} (--to is exclusive: --from 5 --to 7 reads 5 and 6)"
        );
    }
    let reader = open_reader(cli).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    let mut each = |r: &bi_ledger::format::record::RecordRef<'_>| {
        use std::ops::ControlFlow;
        if as_of.is_some_and(|t| r.timestamp_us > t) || to.is_some_and(|to| r.seq >= to) {
            return ControlFlow::Break(());
        }
        if r.seq < from || stream.is_some_and(|s| s != r.stream) {
            return ControlFlow::Continue(());
        }
        let line = bi_ledger::model::record_json(r);
        if let Err(e) = serde_json::to_writer(&mut out, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
        {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    match stream {
        // One entity's whole history: through the stream indexes, not a
        // scan of the whole log. (A read that ends at a record or a time
        // scans to there: the stream may have nothing after it, and the
        // indexed read would go on to the log's end to find out.)
        Some(stream) if from == 0 && to.is_none() && as_of.is_none() => {
            reader.read_stream_with(stream, each).await?
        }
        _ => reader.scan(from, to, |r, _| each(r)).await?,
    }
    // The last lines reach stdout only with the flush: a full disk must
    // fail the read there too, not exit 0 with them lost.
    if let Some(e) = failed.map_or_else(|| out.flush().err(), Some) {
        // A closed pipe (`| head`) is not an error worth a message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow!(e).context("writing to standard output"));
        }
    }
    Ok(Ok(()))
}

pub(crate) async fn stats(cli: &Cli) -> Outcome {
    let reader = open_reader(cli).await?;
    let records = reader.len().await?;
    let bytes: u64 = reader.segments().iter().map(|s| s.size).sum();
    // All as the reader saw the ledger when it opened: a checkpoint a live
    // writer puts since is ahead of the records counted. The count of
    // records already failed if the log ends before that checkpoint.
    let signed = reader.signed_at_open();
    let checkpoints =
        bi_ledger::ledger::recover::checkpoint_blobs(reader.store().as_ref(), reader.name())
            .await?
            .into_iter()
            .filter(|(size, _)| *size <= signed)
            .count();
    let newest = reader.signed_checkpoint(Some(signed)).await?;
    let newest = newest.map(|(_, c, _)| json!({"size": c.size, "time": bi_ledger::time::format_us(c.time_us), "root": hex(&c.root)}));
    print(json!({
        "ledger": reader.name(),
        "id": hex(&reader.id()),
        "records": records,
        "segments": reader.segments().len(),
        "bytes": bytes,
        "bytes_per_record": if records > 0 { bytes as f64 / records as f64 } else { 0.0 },
        "checkpoints": checkpoints,
        "newest_checkpoint": newest,
        "public_key": reader.recorded_verifier().to_vkey(),
    }))?;
    Ok(Ok(()))
}
