//! `init`: a new ledger, and its signing key unless one is given.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bi_ledger::backend::{BlobStore, StoreError};
use bi_ledger::ledger::layout::Meta;
use bi_ledger::{Ledger, LedgerError};
use serde_json::json;

use crate::keyfile::{
    key_path, key_turn, load_key, load_verifier, made_dir_of, pub_path_of, remove_key_pair,
    write_key_pair, write_public,
};
use crate::{print, store, writer_options, Cli, Outcome};

/// A ledger name or a given signing key that cannot be used must not leave
/// a data directory (or container) behind.
pub(crate) fn usable_before_creating(cli: &Cli) -> Result<()> {
    bi_ledger::ledger::layout::validate_ledger_name(&cli.ledger)?;
    match cli.signing_key {
        Some(_) => {
            load_key(cli)?;
        }
        // Where the new key goes: made now, so that a --data that cannot
        // hold it fails before an Azure container is created for nothing.
        None => {
            made_dir_of(&key_path(cli))?;
        }
    }
    Ok(())
}

pub(crate) async fn init(cli: &Cli) -> Outcome {
    // Everything that can be checked is, before a key file is written.
    usable_before_creating(cli)?;
    let store = store(cli, true).await?;
    if store
        .info(&bi_ledger::ledger::layout::meta(&cli.ledger))
        .await
        .is_ok()
    {
        return Err(LedgerError::AlreadyExists(cli.ledger.clone()).into());
    }
    let (ledger, key_file) = create_ledger(cli, store).await?;
    let (vkey, origin) = (ledger.verifier().to_vkey(), ledger.origin());
    ledger.close().await?;
    print(json!({
        "ledger": cli.ledger,
        "origin": origin,
        "data": cli.data,
        "signing_key_file": key_file,
        "public_key": vkey,
    }))
    .with_context(|| {
        format!(
            "ledger {:?} is created, with its signing key in {}, but its public key could not be printed (`bi-ledger stats` prints it)",
            cli.ledger,
            key_file.display()
        )
    })?;
    Ok(Ok(()))
}

/// Creates the ledger, which does not exist yet, with the key of
/// `--signing-key`, else the one at DATA/LEDGER.key, else a new one written
/// there. A key found there belongs to no ledger (an `init` interrupted
/// before it wrote the LEDGER file leaves one, written whole), so it is
/// used rather than refused.
pub(crate) async fn create_ledger(
    cli: &Cli,
    store: Arc<dyn BlobStore>,
) -> Result<(Ledger, PathBuf)> {
    let default_key = key_path(cli);
    let meta_blob = bi_ledger::ledger::layout::meta(&cli.ledger);
    // Of two `init`s (or `demo`s) at once, each would find the key the
    // other wrote, and one would delete it after the other had created
    // the ledger with it. So they take turns, and the second finds the
    // ledger made and leaves the key alone.
    let _turn = match &cli.signing_key {
        Some(_) => None,
        None => Some(key_turn(&default_key)?),
    };
    if store.info(&meta_blob).await.is_ok() {
        return Err(LedgerError::AlreadyExists(cli.ledger.clone()).into());
    }
    let (key, key_file, made) = match &cli.signing_key {
        Some(p) => (load_key(cli)?, p.clone(), None),
        None if default_key.exists() => {
            let key = load_key(cli).context(
                "a key file is there, for no ledger; remove it to have a new key made, or give --signing-key",
            )?;
            let pub_path = pub_path_of(&default_key);
            if pub_path.exists() {
                if load_verifier(&pub_path)?.key != key.verifying_key() {
                    bail!(
                        "{} is not the public half of {}; remove both to have a new key made",
                        pub_path.display(),
                        default_key.display()
                    );
                }
            } else {
                write_public(&pub_path, &Meta::key_name(&cli.ledger), &key)?;
            }
            tracing::warn!(key = %default_key.display(), "using the signing key that is already there, for no ledger (an interrupted init leaves one)");
            (key, default_key, None)
        }
        None => {
            let (k, _, pub_path) = write_key_pair(&default_key, &Meta::key_name(&cli.ledger))?;
            (k, default_key.clone(), Some((default_key, pub_path)))
        }
    };
    match Ledger::create(store.clone(), &cli.ledger, writer_options(cli, key)).await {
        Ok(l) => Ok((l, key_file)),
        // Made meanwhile by another process, with a key of its own.
        Err(e @ LedgerError::AlreadyExists(_)) => {
            if let Some((k, p)) = &made {
                remove_key_pair(k, p);
            }
            Err(e.into())
        }
        // Another process holds the writer lock, which `create` takes
        // before it writes anything: it is creating the ledger (a race of
        // two `init`s), or writing to one that exists. Nothing of ours is
        // there, and the LEDGER file, if any, records the other one's key.
        Err(e @ LedgerError::Store(StoreError::Locked { .. })) => {
            if let Some((k, p)) = &made {
                remove_key_pair(k, p);
            }
            bail!(
                "not creating ledger {:?} in {}: {e}, which is creating it or writing to it; nothing was written",
                cli.ledger,
                store.location()
            )
        }
        Err(e) => {
            let what = format!("creating ledger {:?} in {}", cli.ledger, store.location());
            // Once the LEDGER file is written the ledger exists, and opens
            // (a missing first segment or checkpoint is a create that did
            // not finish) with the key it records: keep that key. Before
            // that, a key for no ledger would only mislead.
            if store.info(&meta_blob).await.is_ok() {
                bail!(
                    "{what} failed part-way: {e}. The ledger exists with the key in {}, which is kept: it opens with it, e.g. `bi-ledger append`; or remove the ledger's blobs to start again",
                    key_file.display()
                );
            }
            if let Some((k, p)) = &made {
                remove_key_pair(k, p);
            }
            Err(anyhow!(e).context(what))
        }
    }
}
