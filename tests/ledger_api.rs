//! The library API end to end on the local backend; the same suite runs on
//! Azure in `tests/azure_blob.rs`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;

#[path = "suite/ledger.rs"]
mod ledger;

fn store(dir: &std::path::Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).unwrap().shared())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_reopen_verify_prove() {
    let dir = tempfile::tempdir().unwrap();
    // Two handles on one directory, as two processes would have.
    ledger::append_read_reopen_verify_prove(store(dir.path()), store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_use_the_index() {
    let dir = tempfile::tempdir().unwrap();
    ledger::stream_reads_use_the_index(store(dir.path())).await;
}

/// `read_stream` goes through the stream index once the indexes are large
/// enough to pay off: a damaged batch that cannot hold the stream is never
/// read (a full scan stops at it; `verify` reports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_stream_skips_batches_the_index_rules_out() {
    use bi_ledger::{Ledger, LedgerOptions, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let opts = LedgerOptions::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    let bulk = |n: u64| -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent::json("bulk", "Counted", &json!({ "i": i })))
            .collect()
    };
    let a = ledger.append(bulk(1000)).await.unwrap();
    ledger
        .append_one(NewEvent::json("needle", "Found", &json!({})))
        .await
        .unwrap();
    ledger.append(bulk(4000)).await.unwrap();
    ledger.close().await.unwrap();

    // Damage batch A (1,000 "bulk" events), after its frame header.
    let seg = dir.path().join("main/0000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[a[0].offset as usize + 40] ^= 0x55;
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&seg, &bytes).unwrap();

    let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
    let found = reader.read_stream("needle").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].seq, 1000);
    let err = reader.read_stream_scan("needle").await.unwrap_err();
    assert!(err.to_string().contains("0000000000.seg"), "{err}");
}

/// `verify` hashes one 8 MiB chunk on rayon while it walks the chain of the
/// chunk before: the damage it reports is still the first in log order,
/// whichever chunk holds it. The damage keeps each frame's CRC valid (as a
/// tamperer would), so only the chain walk can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_first_damage_across_chunks() {
    use bi_ledger::{Ledger, LedgerError, LedgerOptions, LedgerReader, NewEvent};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let opts = LedgerOptions::new(ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
    let ledger = Ledger::create(store(dir.path()), "main", opts)
        .await
        .unwrap();
    // 40 batches of 1,000 events of about 300 bytes: two chunks and more.
    let pad = "x".repeat(256);
    let mut batches = Vec::new();
    for b in 0..40u64 {
        let events = (0..1000u64)
            .map(|i| {
                NewEvent::json(
                    format!("s-{}", i % 97),
                    "Padded",
                    &json!({"b": b, "pad": pad}),
                )
            })
            .collect();
        batches.push(ledger.append(events).await.unwrap()[0].clone());
    }
    ledger.close().await.unwrap();
    let seg = dir.path().join("main/0000000000.seg");
    assert!(std::fs::metadata(&seg).unwrap().len() > 10 << 20);

    // Bumps the first sequence number of the batch at `offset` and gives
    // the frame a CRC that matches.
    let bump = |bytes: &mut Vec<u8>, offset: usize| {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let body = offset + 12;
        bytes[body] = bytes[body].wrapping_add(1);
        let mut crc = crc32c::crc32c(&bytes[offset..offset + 4]);
        crc = crc32c::crc32c_append(crc, &bytes[body..body + len]);
        bytes[offset + 8..offset + 12].copy_from_slice(&crc.to_le_bytes());
    };
    let verify = || async {
        let reader = LedgerReader::open(store(dir.path()), "main").await.unwrap();
        let verifier = reader.recorded_verifier().clone();
        match reader.verify(&verifier, &|_, _| {}).await {
            Err(LedgerError::Integrity(e)) => e,
            other => panic!("verify of a damaged ledger gave {other:?}"),
        }
    };
    let mut bytes = std::fs::read(&seg).unwrap();
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let late = &batches[37];
    assert!(late.offset > 9 << 20, "batch 37 lies past the first chunk");
    bump(&mut bytes, late.offset as usize);
    std::fs::write(&seg, &bytes).unwrap();
    let e = verify().await;
    assert_eq!(e.blob, "main/0000000000.seg", "{e}");
    assert_eq!(
        (e.offset, e.seq),
        (late.offset + 12, Some(late.seq + 1)),
        "{e}"
    );
    assert!(
        e.what.contains(&format!("where {} was due", late.seq)),
        "{e}"
    );

    let early = &batches[2];
    bump(&mut bytes, early.offset as usize);
    std::fs::write(&seg, &bytes).unwrap();
    let e = verify().await;
    assert_eq!(
        (e.offset, e.seq),
        (early.offset + 12, Some(early.seq + 1)),
        "{e}"
    );
}
