//! Key files: the signing key a writer loads, the public keys verifiers
//! load, and writing a new pair whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bi_ledger::format::checkpoint::Verifier;
use bi_ledger::keys;
use bi_ledger::ledger::layout::Meta;
use ed25519_dalek::SigningKey;

use crate::Cli;

pub(crate) fn key_path(cli: &Cli) -> PathBuf {
    cli.signing_key
        .clone()
        .unwrap_or_else(|| cli.data.join(format!("{}.key", cli.ledger)))
}

pub(crate) fn load_key(cli: &Cli) -> Result<SigningKey> {
    let path = key_path(cli);
    let text = std::fs::read_to_string(&path).with_context(|| match &cli.signing_key {
        // The user named the file: the hint is about that file.
        Some(_) => format!(
            "reading signing key {} (--signing-key names an existing key: make one with `bi-ledger --ledger {} keygen --out FILE`)",
            path.display(),
            cli.ledger
        ),
        None => format!(
            "reading signing key {} (give --signing-key FILE or set BI_LEDGER_SIGNING_KEY; `bi-ledger init` makes DATA/LEDGER.key only for a new ledger, and only without --signing-key)",
            path.display()
        ),
    })?;
    let (name, key) =
        keys::decode_signing_key(&text).with_context(|| format!("in {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // As ssh does for its keys, though without refusing: whoever could
        // read it can sign checkpoints of this ledger.
        if let Ok(mode) = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777) {
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "signing key {} can be read by other users (mode {mode:o}): `chmod 600` it",
                    path.display()
                );
            }
        }
    }
    let want = Meta::key_name(&cli.ledger);
    if name != want {
        bail!(
            "signing key {} is named {name:?}, but ledger {:?} signs its checkpoints as {want:?}; make its key with `bi-ledger --ledger {} keygen --out FILE`",
            path.display(),
            cli.ledger,
            cli.ledger
        );
    }
    Ok(key)
}

pub(crate) fn load_verifier(path: &Path) -> Result<Verifier> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading public key {}", path.display()))?;
    Verifier::from_vkey(&text).with_context(|| format!("in {}", path.display()))
}

/// Writes a file whole or not at all, refusing to overwrite: a temporary
/// file beside it, synced, then linked to its name (which fails if the name
/// is taken), so that a crash never leaves a part-written key.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let (dir, file_name) = made_dir_of(path)?;
    let tmp = dir.join(format!(".{file_name}.tmp-{}", uuid::Uuid::new_v4()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::hard_link(&tmp, path)
                .with_context(|| format!("creating {} (it must not exist yet)", path.display()))
        });
    let _ = std::fs::remove_file(&tmp);
    written?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// An exclusive lock on a hidden file beside `key`, held by whoever makes
/// that key and its ledger; waits for the holder. The file stays: removing
/// it would let a waiter lock a file no one else can see.
pub(crate) fn key_turn(key: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let (dir, name) = made_dir_of(key)?;
    let path = dir.join(format!(".{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// The directory `path` is in ("." for a bare name), made if missing, and
/// the file's name.
pub(crate) fn made_dir_of(path: &Path) -> Result<(&Path, std::borrow::Cow<'_, str>)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    bi_ledger::backend::fs::create_dirs(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok((dir, path.file_name().unwrap_or_default().to_string_lossy()))
}

pub(crate) fn pub_path_of(path: &Path) -> PathBuf {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    PathBuf::from(pub_path)
}

/// Writes FILE and FILE.pub, neither of which may exist; on failure
/// neither is left behind.
pub(crate) fn write_key_pair(path: &Path, name: &str) -> Result<(SigningKey, Verifier, PathBuf)> {
    let pub_path = pub_path_of(path);
    if pub_path.exists() {
        bail!("{} exists already; not overwriting it", pub_path.display());
    }
    let key = keys::generate()?;
    write_file(path, &keys::encode_signing_key(name, &key), 0o600)?;
    let verifier = write_public(&pub_path, name, &key).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })?;
    Ok((key, verifier, pub_path))
}

/// Writes the public half of `key` to `pub_path`, which may not exist.
pub(crate) fn write_public(pub_path: &Path, name: &str, key: &SigningKey) -> Result<Verifier> {
    let verifier = Verifier {
        name: name.to_owned(),
        key: key.verifying_key(),
    };
    write_file(pub_path, &format!("{}\n", verifier.to_vkey()), 0o644)?;
    Ok(verifier)
}

pub(crate) fn remove_key_pair(path: &Path, pub_path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(pub_path);
}
