//! `demo`: a ledger of realistic business events (`demo.rs`), appended by
//! several writers at once, checkpointed and verified.

use std::time::Instant;

use anyhow::Context;
use bi_ledger::format::checkpoint::Verifier;
use bi_ledger::format::hex;
use bi_ledger::{LedgerError, LedgerReader};
use serde_json::json;

use crate::create::{self, create_ledger};
use crate::{demo, open_writer_here, print, progress, store, Cli, Outcome};

pub(crate) async fn run_demo(cli: &Cli, stories: u64, writers: u64) -> Outcome {
    create::usable_before_creating(cli)?;
    let store = store(cli, true).await?;
    let exists = store
        .info(&bi_ledger::ledger::layout::meta(&cli.ledger))
        .await
        .is_ok();
    let ledger = if exists {
        open_writer_here(cli).await?
    } else {
        create_ledger(cli, store.clone()).await?.0
    };
    // A writer takes every `writers`-th story: more would have none.
    let writers = writers.min(stories.max(1));
    say!(
        "demo: appending {stories} business stories (decisions, workflows, metrics, audit) with {writers} concurrent writers to ledger {:?} at {}",
        cli.ledger,
        store.location()
    );
    crate::interrupt::watch();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let ledger = ledger.clone();
        // Stream ids are unique per run, so reruns extend the same ledger.
        let run = bi_ledger::time::now_us();
        tasks.push(tokio::spawn(async move {
            let mut rng = demo::Rng::new(run as u64 ^ w);
            let mut n = 0u64;
            let mut i = w;
            while i < stories && !crate::interrupt::asked() {
                let mut events = demo::story(&mut rng, i);
                for e in &mut events {
                    e.stream = format!("{}-{run:x}", e.stream);
                }
                n += ledger.append(events).await?.len() as u64;
                i += writers;
            }
            Ok::<u64, LedgerError>(n)
        }));
    }
    let mut events = 0;
    for t in tasks {
        events += t.await.context("demo writer panicked")??;
    }
    let append_secs = start.elapsed().as_secs_f64();
    let cp = ledger.close().await?;
    if crate::interrupt::asked() {
        return Err(crate::interrupt::Interrupted(format!(
            "{}: the demo appended {events} events, each of them durable, and closed the ledger with a checkpoint at size {}; nothing was verified",
            crate::interrupt::interrupted(),
            cp.checkpoint.size
        ))
        .into());
    }
    say!(
        "demo: appended {events} events in {append_secs:.2} s ({:.0} events/s, every one durable before its receipt); checkpoint at size {}",
        events as f64 / append_secs,
        cp.checkpoint.size
    );
    let reader = LedgerReader::open(store, &cli.ledger).await?;
    let bar = progress::Progress::new("verify");
    let vstart = Instant::now();
    let report = match reader
        .verify(&cp_verifier(&reader), &|d, t| bar.update(d, t))
        .await
    {
        Ok(r) => r,
        Err(LedgerError::Integrity(e)) => return Ok(Err(e.into())),
        Err(e) => return Err(e.into()),
    };
    bar.finish();
    // An empty ledger (`--stories 0` on a new one) has no record to prove.
    let proved = if cp.checkpoint.size > 0 {
        let proof = reader
            .inclusion_proof(cp.checkpoint.size / 2, cp.checkpoint.size)
            .await?;
        proof.verify(&cp.checkpoint)?;
        format!("; inclusion proof for record {} checks out", proof.seq)
    } else {
        String::new()
    };
    say!(
        "demo: verified {} records ({} bytes, {} segment(s), {} checkpoints) in {:.2} s{proved}",
        report.records,
        report.bytes,
        report.segments,
        report.checkpoints,
        vstart.elapsed().as_secs_f64(),
    );
    print(json!({
        "appended": events,
        "append_seconds": append_secs,
        "events_per_second": events as f64 / append_secs,
        "records": report.records,
        "bytes": report.bytes,
        "checkpoint_size": cp.checkpoint.size,
        "root": hex(&cp.checkpoint.root),
        "verified": true,
    }))?;
    Ok(Ok(()))
}

fn cp_verifier(reader: &LedgerReader) -> Verifier {
    reader.recorded_verifier().clone()
}
