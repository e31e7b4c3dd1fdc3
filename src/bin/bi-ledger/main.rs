//! The `bi-ledger` command line: append, read, verify and prove on a
//! ledger. Machine output is JSON lines on stdout; errors are one line on
//! stderr. Exit codes: 0 success, 1 integrity failure, 2 any other error
//! (usage, I/O, a malformed input line, an expected version that does not hold).

mod append;
mod demo;
mod input;
mod progress;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bi_ledger::backend::azure::account::{AccountSettings, ACCOUNT_URL_ENV};
use bi_ledger::backend::azure::{AzureAccount, AzureBlobStore, AzureOptions};
use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::{BlobStore, StoreError};
use bi_ledger::error::IntegrityError;
use bi_ledger::format::checkpoint::{Checkpoint, Verifier};
use bi_ledger::format::hex;
use bi_ledger::ledger::layout::Meta;
use bi_ledger::ledger::proof::{ConsistencyProof, InclusionProof};
use bi_ledger::ledger::verify::VerifyOptions;
use bi_ledger::{keys, Ledger, LedgerError, LedgerOptions, LedgerReader};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use serde_json::json;

/// Where `--help` lists the options every command takes, apart from the
/// command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "bi-ledger",
    version,
    about = "Append-only, hash-chained, signed event ledger"
)]
struct Cli {
    /// Where the ledger lives: `fs` (files under --data) or `azure` (append
    /// blobs in --container, account from AZURE_STORAGE_CONNECTION_STRING,
    /// or --account-url with AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or
    /// Entra ID).
    #[arg(long, global = true, help_heading = GLOBAL, env = "BI_LEDGER_BACKEND", default_value = "fs")]
    backend: Backend,
    /// Directory holding the ledgers (fs backend) and, on any backend, the
    /// default place of key files.
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        env = "BI_LEDGER_DATA",
        default_value = "./ledger-data"
    )]
    data: PathBuf,
    /// Blob container (azure backend).
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        env = "BI_LEDGER_CONTAINER",
        default_value = "bi-ledger"
    )]
    container: String,
    /// Blob service URL of the account (azure backend), used when
    /// AZURE_STORAGE_CONNECTION_STRING is not set. With AZURE_STORAGE_KEY or
    /// AZURE_STORAGE_SAS_TOKEN that secret signs requests; with neither,
    /// Entra ID does (workload identity if AZURE_FEDERATED_TOKEN_FILE is
    /// set, else managed identity; AZURE_CLIENT_ID picks a user-assigned one).
    #[arg(long, global = true, help_heading = GLOBAL, env = ACCOUNT_URL_ENV)]
    account_url: Option<String>,
    /// Ledger name.
    #[arg(long, global = true, help_heading = GLOBAL, env = "BI_LEDGER_LEDGER", default_value = "main")]
    ledger: String,
    /// Signing key file for commands that write (default: DATA/LEDGER.key).
    #[arg(long, global = true, help_heading = GLOBAL, env = "BI_LEDGER_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// For commands that write: start a new segment before one would pass
    /// this many bytes (default 1 GiB; a larger batch gets a segment of its
    /// own). Smaller segments are smaller files, or blobs, to copy and back up.
    #[arg(long, global = true, help_heading = GLOBAL, env = "BI_LEDGER_SEGMENT_MAX_BYTES",
          value_parser = clap::value_parser!(u64).range(4096..))]
    segment_max_bytes: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Fs,
    Azure,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the ledger (and a signing key unless --signing-key is given).
    Init,
    /// Write a new ed25519 key pair for --ledger: FILE (private) and
    /// FILE.pub. Checkpoints name their signer `bi-ledger/<ledger>`, so a
    /// key serves the ledger it was made for.
    Keygen {
        /// Private key file to write (FILE.pub gets the public key); neither may exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Append events from JSON lines (FILE or stdin); prints a receipt per event.
    Append {
        /// JSON lines file (default, or `-`: stdin).
        file: Option<PathBuf>,
    },
    /// Print events as JSON lines.
    Read {
        /// Only this stream's events.
        #[arg(long, value_parser = stream_id)]
        stream: Option<String>,
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop before this sequence number (exclusive).
        #[arg(long)]
        to: Option<u64>,
        /// Only events at or before this time (RFC 3339): the ledger as it was then.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Verify every byte, hash, chain link, checkpoint and signature.
    Verify {
        /// Trusted public key file (verifier key). Without it the key recorded in the ledger is used.
        #[arg(long, env = "BI_LEDGER_PUBLIC_KEY")]
        public_key: Option<PathBuf>,
        /// Put back missing stream indexes and node caches (derived from the
        /// verified log; a cache that is there is never replaced).
        #[arg(long)]
        restore_caches: bool,
        /// The origin the ledger's checkpoints must name, `bi-ledger/NAME/LEDGER-ID`
        /// (printed by `init` and `verify`): another ledger signed by the same key fails.
        #[arg(long, env = "BI_LEDGER_ORIGIN", value_parser = origin_arg)]
        origin: Option<String>,
        /// A checkpoint kept outside the ledger (the output of `checkpoint`,
        /// `prove` or `verify`, or a checkpoint's note text); repeatable. The ledger must
        /// still hold at least its records, unchanged: this finds records cut
        /// off together with the checkpoints that signed them, and a history
        /// signed again with the same key, which the ledger's own checkpoints cannot.
        #[arg(long = "trusted-checkpoint", value_name = "FILE")]
        trusted_checkpoints: Vec<PathBuf>,
    },
    /// Sign a checkpoint of the ledger as it is now and print it (the newest
    /// checkpoint, if it already covers every record).
    Checkpoint,
    /// Print an inclusion proof (--seq) or a consistency proof (--old-size).
    Prove {
        /// Sequence number of the record to prove included.
        #[arg(long, conflicts_with = "old_size")]
        seq: Option<u64>,
        /// Size of an older checkpoint to prove a prefix of the one proven against.
        #[arg(long)]
        old_size: Option<u64>,
        /// Checkpoint size to prove against (default: the newest).
        #[arg(long)]
        size: Option<u64>,
    },
    /// Check a proof printed by `prove` (FILE or stdin) against a public key.
    VerifyProof {
        /// Trusted public key file (verifier key).
        #[arg(long, env = "BI_LEDGER_PUBLIC_KEY")]
        public_key: PathBuf,
        /// The origin the ledger's checkpoints must name, `bi-ledger/NAME/LEDGER-ID`
        /// (printed by `init` and `verify`): another ledger signed by the same key fails.
        #[arg(long, env = "BI_LEDGER_ORIGIN", value_parser = origin_arg)]
        origin: Option<String>,
        /// Proof file (default, or `-`: stdin).
        file: Option<PathBuf>,
    },
    /// Print counts and sizes.
    Stats,
    /// Append a realistic stream of business events, checkpoint and verify.
    Demo {
        /// Number of business stories (each is 1 to 7 events).
        #[arg(long, default_value_t = 20_000)]
        stories: u64,
        /// Concurrent appenders (their events share block writes), at most
        /// 1024; never more than there are stories.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=MAX_DEMO_WRITERS))]
        writers: u64,
    },
}

/// Each demo writer is a task with one story (at most 7 events) in flight.
/// Group commit gains nothing past a few dozen of them (64 concurrent
/// appenders already fill an fsync with 64 events, see the README's
/// performance table), so 1024 leaves room to try and still bounds what a
/// mistyped count can allocate.
const MAX_DEMO_WRITERS: u64 = 1024;

/// `--origin`: the form `init` prints, so that a mistyped one is a usage
/// error, not a ledger that fails to be the one expected (exit 1).
fn origin_arg(s: &str) -> std::result::Result<String, String> {
    let form = "expected bi-ledger/NAME/LEDGER-ID, as `init` and `verify` print it (LEDGER-ID: 32 lower-case hex digits)";
    let (name, id) = s
        .strip_prefix("bi-ledger/")
        .and_then(|rest| rest.rsplit_once('/'))
        .ok_or(form)?;
    let hex = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex || bi_ledger::ledger::layout::validate_ledger_name(name).is_err() {
        return Err(form.into());
    }
    Ok(s.to_owned())
}

/// A stream id the writer would take (`NewEvent::validate`): another can
/// never match, and reading it would look like reading an empty stream.
fn stream_id(s: &str) -> std::result::Result<String, String> {
    let max = bi_ledger::model::MAX_STREAM;
    bi_ledger::model::validate_stream(s).map_err(|_| {
        format!("a stream id is 1 to {max} bytes, without control, invisible or text-direction characters")
    })?;
    Ok(s.to_owned())
}

/// An error that means the data is bad (exit 1), not the invocation: the
/// line stderr gets.
struct Integrity(String);

impl Integrity {
    /// A check that failed with `what`, which does not say so itself.
    fn failed(what: impl std::fmt::Display) -> Self {
        Integrity(format!("integrity failure: {what}"))
    }
}

impl From<IntegrityError> for Integrity {
    /// Its text says "integrity error in BLOB at byte N" already.
    fn from(e: IntegrityError) -> Self {
        Integrity(format!("{e}{}", in_file(&e.blob)))
    }
}

/// The data directory, on the fs backend: errors name blobs, and some
/// blobs are files of another name (`main/checkpoint-00000000000001250000`
/// is `main/.checkpoint-00000000000001/250000`), so they name the file too.
static FS_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn file_of(blob: &str) -> Option<PathBuf> {
    FS_ROOT.get().map(|root| FsStore::file_path(root, blob))
}

/// " (file PATH)" for a blob on the fs backend, else nothing.
fn in_file(blob: &str) -> String {
    file_of(blob).map_or_else(String::new, |f| format!(" (file {})", f.display()))
}

/// `eprintln!` that does not panic when standard error is gone (a closed
/// pipe, as in `bi-ledger ... 2>&1 | head`): there is no one left to tell.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    // An empty BI_LEDGER_* variable (`BI_LEDGER_DATA= bi-ledger ...`) means
    // "not set", as in most tools; clap would take it for an empty value
    // and ask for one that was never given on the command line. Done before
    // any thread starts, so changing the environment is sound.
    for (name, value) in std::env::vars_os() {
        if value.is_empty() && name.to_string_lossy().starts_with("BI_LEDGER_") {
            std::env::remove_var(name);
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if matches!(cli.backend, Backend::Fs) {
        let _ = FS_ROOT.set(cli.data.clone());
    }
    // A writer that stops says why in the error every command then
    // reports: once is enough.
    let default_filter = || {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,{}=off",
            bi_ledger::ledger::WRITER_STOPPED
        ))
    };
    let (filter, bad_filter) = match std::env::var("BI_LEDGER_LOG") {
        Ok(v) if !v.is_empty() => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (default_filter(), Some(e)),
        },
        _ => (default_filter(), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    if let Some(e) = bad_filter {
        tracing::warn!("BI_LEDGER_LOG is not a log filter ({e}); logging warnings and errors");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Integrity(msg))) => {
            say!("{msg}");
            ExitCode::from(1)
        }
        Err(e) => {
            // An integrity error that surfaced through `?` is still exit 1;
            // its own text says it is one.
            if let Some(LedgerError::Integrity(ie)) = e.downcast_ref::<LedgerError>() {
                say!("{}{}", one_line(&e), in_file(&ie.blob));
                return ExitCode::from(1);
            }
            say!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// Help and version go out as clap writes them; a usage error becomes one
/// line, as every other error here is, and says where help is.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
    }
    let args: Vec<_> = std::env::args_os().collect();
    let from_env = e
        .get(clap::error::ContextKind::InvalidArg)
        .zip(e.get(clap::error::ContextKind::InvalidValue))
        .and_then(|(a, v)| env_behind(&a.to_string(), &v.to_string(), &args))
        .map(|var| format!(" (the value is from {var})"))
        .unwrap_or_default();
    say!("{}{from_env}", usage_line(&e.render().to_string(), &args));
    ExitCode::from(2)
}

/// The environment variable the refused `value` of `arg` (as clap names it
/// in an error, `--flag <VALUE>`) came from, if the command line does not
/// give it: an error naming only the flag sends the user to a command line
/// that does not have it. (clap checks the variable's value even where the
/// flag is given too.)
fn env_behind(arg: &str, value: &str, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::CommandFactory;
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let cmd = Cli::command();
    let var = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|c| c.get_arguments()))
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    let on_the_line = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == value || a == format!("--{long}={value}"))
    });
    (!on_the_line && std::env::var(&var).is_ok_and(|v| v == value)).then_some(var)
}

/// clap's usage error (`error: …`, a blank line, tips, usage, a pointer
/// to help) as one line: the error, its tips, and the help of the
/// subcommand it was about (which a bad value's error does not name).
fn usage_line(rendered: &str, args: &[std::ffi::OsString]) -> String {
    use clap::CommandFactory;
    // What follows the error line up to the usage is part of it: the
    // missing arguments, the possible values, tips.
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("error: invalid arguments");
    let mut line = if first.starts_with("error:") {
        first.to_owned()
    } else {
        format!("error: {first}")
    };
    let (tips, rest): (Vec<&str>, Vec<&str>) = lines.partition(|l| l.starts_with("tip:"));
    if !rest.is_empty() {
        // After "…not provided:", a list of arguments, a line each.
        line.push(' ');
        line.push_str(&rest.join(if first.ends_with(':') { ", " } else { " " }));
    }
    for tip in tips {
        line.push_str(&format!(" ({})", tip["tip:".len()..].trim()));
    }
    let sub = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()
        .and_then(|m| m.subcommand_name().map(|s| format!(" {s}")))
        .unwrap_or_default();
    format!("{line}; see 'bi-ledger{sub} --help'")
}

/// The error and its causes on one line. Most of our errors already
/// spell out their cause (`"reading X: {source}"`), so a cause the line
/// ends with is not repeated. Line breaks within a cause (the Azure SDK's
/// add a line of advice) become spaces, and other control characters are
/// escaped. A cause that quotes megabytes of input (serde quotes a string
/// where a number belongs) keeps its start and its end.
fn one_line(e: &anyhow::Error) -> String {
    const KEEP: usize = 480;
    let mut line = String::new();
    for cause in e.chain() {
        let mut text = String::new();
        for c in cause.to_string().trim_end().replace("\r\n", "\n").chars() {
            match c {
                '\n' => text.push(' '),
                c if c.is_control() => text.extend(c.escape_default()),
                c => text.push(c),
            }
        }
        let chars = text.chars().count();
        if chars > 2 * KEEP + 100 {
            let start: String = text.chars().take(KEEP).collect();
            let end: String = text.chars().skip(chars - KEEP).collect();
            text = format!(
                "{start} … ({} characters left out) … {end}",
                chars - 2 * KEEP
            );
        }
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

type Outcome = Result<std::result::Result<(), Integrity>>;

/// The store, for a command that may create a ledger (`create`) or only
/// works on an existing one: those must not leave an empty data directory
/// behind when it was mistyped.
async fn store(cli: &Cli, create: bool) -> Result<Arc<dyn BlobStore>> {
    match cli.backend {
        Backend::Fs => {
            if !create && !cli.data.is_dir() {
                let what = if cli.data.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                };
                bail!(
                    "data directory {} {what} (--data, BI_LEDGER_DATA)",
                    cli.data.display()
                );
            }
            let s = FsStore::new(&cli.data)
                .map_err(|e| anyhow!("opening data directory {}: {e}", cli.data.display()))?;
            Ok(Arc::new(s.shared()))
        }
        Backend::Azure => {
            let mut settings = AccountSettings::from_env();
            if cli.account_url.is_some() {
                settings.account_url = cli.account_url.clone();
                if settings.connection_string.is_some() {
                    // A leftover variable must not send writes to another
                    // account unremarked.
                    tracing::warn!("--account-url (BI_LEDGER_AZURE_ACCOUNT_URL) is ignored: AZURE_STORAGE_CONNECTION_STRING is set, and names the account; unset it to use the URL");
                }
            }
            let account = AzureAccount::from_settings(settings)?;
            if let AzureAccount::Entra { kind, .. } = &account {
                tracing::info!(%kind, "authorizing with Entra ID");
            }
            let opened = if create {
                AzureBlobStore::open(&account, &cli.container, AzureOptions::default()).await
            } else {
                AzureBlobStore::open_existing(&account, &cli.container, AzureOptions::default())
                    .await
            };
            let s = match opened {
                Err(StoreError::NotFound { .. }) => bail!(
                    "Azure blob container {:?} does not exist (--container, BI_LEDGER_CONTAINER; `bi-ledger init` creates it)",
                    cli.container
                ),
                other => other.with_context(|| {
                    format!("opening Azure blob container {:?}", cli.container)
                })?,
            };
            Ok(Arc::new(s))
        }
    }
}

fn key_path(cli: &Cli) -> PathBuf {
    cli.signing_key
        .clone()
        .unwrap_or_else(|| cli.data.join(format!("{}.key", cli.ledger)))
}

/// The options a command that writes opens the ledger with.
pub(crate) fn writer_options(cli: &Cli, key: SigningKey) -> LedgerOptions {
    let mut opts = LedgerOptions::new(key);
    if let Some(cap) = cli.segment_max_bytes {
        opts.segment_max_bytes = cap;
    }
    opts
}

fn load_key(cli: &Cli) -> Result<SigningKey> {
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

fn load_verifier(path: &Path) -> Result<Verifier> {
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
fn key_turn(key: &Path) -> Result<std::fs::File> {
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
fn made_dir_of(path: &Path) -> Result<(&Path, std::borrow::Cow<'_, str>)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    bi_ledger::backend::fs::create_dirs(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok((dir, path.file_name().unwrap_or_default().to_string_lossy()))
}

fn pub_path_of(path: &Path) -> PathBuf {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    PathBuf::from(pub_path)
}

/// Writes FILE and FILE.pub, neither of which may exist; on failure
/// neither is left behind.
fn write_key_pair(path: &Path, name: &str) -> Result<(SigningKey, Verifier, PathBuf)> {
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
fn write_public(pub_path: &Path, name: &str, key: &SigningKey) -> Result<Verifier> {
    let verifier = Verifier {
        name: name.to_owned(),
        key: key.verifying_key(),
    };
    write_file(pub_path, &format!("{}\n", verifier.to_vkey()), 0o644)?;
    Ok(verifier)
}

fn remove_key_pair(path: &Path, pub_path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(pub_path);
}

fn print(v: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &v)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(out.write_all(b"\n")?))
        .context("writing to standard output")
}

fn read_input(file: Option<&Path>) -> Result<String> {
    let mut s = String::new();
    match file {
        Some(p) if p != Path::new("-") => {
            s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading stdin")?;
        }
    }
    Ok(s)
}

async fn open_writer_here(cli: &Cli) -> Result<Ledger> {
    let store = store(cli, false).await?;
    ledger_exists(cli, store.as_ref()).await?;
    let opts = writer_options(cli, load_key(cli)?);
    open_writer(cli, store, opts).await
}

/// A mistyped `--ledger` is named as such, before its signing key is
/// looked for (or an empty input is taken as nothing to do).
async fn ledger_exists(cli: &Cli, store: &dyn BlobStore) -> Result<()> {
    bi_ledger::ledger::layout::validate_ledger_name(&cli.ledger)?;
    match store
        .info(&bi_ledger::ledger::layout::meta(&cli.ledger))
        .await
    {
        Err(StoreError::NotFound { .. }) => bail!(
            "{} in {} (--ledger, BI_LEDGER_LEDGER)",
            LedgerError::NotFound(cli.ledger.clone()),
            store.location()
        ),
        _ => Ok(()),
    }
}

async fn open_writer(cli: &Cli, store: Arc<dyn BlobStore>, opts: LedgerOptions) -> Result<Ledger> {
    let what = format!(
        "opening ledger {:?} in {} for writing",
        cli.ledger,
        store.location()
    );
    Ledger::open(store, &cli.ledger, opts).await.context(what)
}

async fn open_reader(cli: &Cli) -> Result<LedgerReader> {
    let store = store(cli, false).await?;
    let at = store.location();
    LedgerReader::open(store, &cli.ledger)
        .await
        .with_context(|| format!("opening ledger {:?} in {at}", cli.ledger))
}

async fn run(cli: Cli) -> Outcome {
    match &cli.cmd {
        Cmd::Init => init(&cli).await,
        Cmd::Keygen { out } => {
            bi_ledger::ledger::layout::validate_ledger_name(&cli.ledger)?;
            let (_, verifier, pub_path) = write_key_pair(out, &Meta::key_name(&cli.ledger))?;
            print(json!({
                "ledger": cli.ledger,
                "key_file": out,
                "public_key_file": pub_path,
                "public_key": verifier.to_vkey(),
            }))?;
            Ok(Ok(()))
        }
        Cmd::Append { file } => append::append(&cli, file.as_deref()).await,
        Cmd::Read {
            stream,
            from,
            to,
            as_of,
        } => read(&cli, stream.as_deref(), *from, *to, as_of.as_deref()).await,
        Cmd::Verify {
            public_key,
            restore_caches,
            origin,
            trusted_checkpoints,
        } => {
            verify(
                &cli,
                public_key.as_deref(),
                *restore_caches,
                origin.as_deref(),
                trusted_checkpoints,
            )
            .await
        }
        Cmd::Checkpoint => {
            let ledger = open_writer_here(&cli).await?;
            ledger.checkpoint().await?;
            let info = ledger.close().await?;
            // Done whether or not it can be printed: say so.
            print(checkpoint_json(&info.blob, &info.checkpoint, &info.note)).with_context(
                || {
                    format!(
                        "checkpoint {} (size {}) is written and signed, but could not be printed",
                        info.blob, info.checkpoint.size
                    )
                },
            )?;
            Ok(Ok(()))
        }
        Cmd::Prove {
            seq,
            old_size,
            size,
        } => prove(&cli, *seq, *old_size, *size).await,
        Cmd::VerifyProof {
            public_key,
            origin,
            file,
        } => verify_proof(public_key, origin.as_deref(), file.as_deref()),
        Cmd::Stats => stats(&cli).await,
        Cmd::Demo { stories, writers } => run_demo(&cli, *stories, *writers).await,
    }
}

/// A ledger name or a given signing key that cannot be used must not leave
/// a data directory (or container) behind.
fn usable_before_creating(cli: &Cli) -> Result<()> {
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

async fn init(cli: &Cli) -> Outcome {
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
async fn create_ledger(cli: &Cli, store: Arc<dyn BlobStore>) -> Result<(Ledger, PathBuf)> {
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

async fn read(
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

async fn verify(
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
fn unambiguous_json(text: &str) -> Result<serde_json::Value> {
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

fn integrity_json(e: IntegrityError) -> Outcome {
    let mut j = json!({"valid": false, "kind": e.kind.as_str(), "blob": e.blob, "offset": e.offset, "seq": e.seq, "error": e.what});
    if let Some(file) = file_of(&e.blob) {
        j["file"] = json!(file.display().to_string());
    }
    print(j)?;
    Ok(Err(e.into()))
}

fn checkpoint_json(blob: &str, cp: &Checkpoint, note: &str) -> serde_json::Value {
    json!({
        "blob": blob,
        "size": cp.size,
        "root": hex(&cp.root),
        "chain_head": hex(&cp.chain_head),
        "time": bi_ledger::time::format_us(cp.time_us),
        "note": note,
    })
}

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

async fn prove(cli: &Cli, seq: Option<u64>, old_size: Option<u64>, size: Option<u64>) -> Outcome {
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

fn verify_proof(public_key: &Path, origin: Option<&str>, file: Option<&Path>) -> Outcome {
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

async fn stats(cli: &Cli) -> Outcome {
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

async fn run_demo(cli: &Cli, stories: u64, writers: u64) -> Outcome {
    usable_before_creating(cli)?;
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
            while i < stories {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_each_cause_once() {
        let io = std::io::Error::other("disk full");
        let e = anyhow::Error::new(bi_ledger::backend::StoreError::Io {
            op: "append to",
            name: "main/0000000000.seg".into(),
            source: io,
        })
        .context("appending lines 1..");
        assert_eq!(
            one_line(&e),
            "appending lines 1..: append to main/0000000000.seg: disk full"
        );
        let e = anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
        let e = anyhow!("denied\r\nTo troubleshoot, visit x\n").context("opening \u{1b}[2J");
        assert_eq!(
            one_line(&e),
            "opening \\u{1b}[2J: denied To troubleshoot, visit x"
        );
        let quoted = format!(
            "invalid type: string \"{}\", expected u32",
            "é".repeat(5000)
        );
        let line = one_line(&anyhow!("{quoted}").context("line 1"));
        assert!(
            line.starts_with("line 1: invalid type: string \"éé"),
            "{line}"
        );
        assert!(line.ends_with("éé\", expected u32"), "{line}");
        assert!(line.contains(" … (4077 characters left out) … "), "{line}");
        assert!(line.chars().count() < 1100, "{line}");
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_command_and_its_help() {
        let cases: [(&[&str], &str, &str); 7] = [
            (
                &["bi-ledger", "read", "--form", "3"],
                "'--form'",
                "see 'bi-ledger read --help'",
            ),
            (&["bi-ledger", "verfy"], "'verfy'", "see 'bi-ledger --help'"),
            (
                &["bi-ledger", "read", "--from", "x"],
                "'x'",
                "see 'bi-ledger read --help'",
            ),
            (
                &["bi-ledger", "demo", "--writers", "0"],
                "'0'",
                "see 'bi-ledger demo --help'",
            ),
            (
                &["bi-ledger", "verify-proof", "p.json"],
                "not provided: --public-key <PUBLIC_KEY>;",
                "see 'bi-ledger verify-proof --help'",
            ),
            (
                &["bi-ledger", "keygen"],
                "not provided: --out <OUT>;",
                "see 'bi-ledger keygen --help'",
            ),
            (
                &["bi-ledger", "--backend", "foo", "stats"],
                "'foo' for '--backend <BACKEND>' [possible values: fs, azure];",
                "see 'bi-ledger stats --help'",
            ),
        ];
        for (args, names, help) in cases {
            let e = Cli::try_parse_from(args).err().expect("a usage error");
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let line = usage_line(&e.render().to_string(), &args);
            assert!(!line.contains('\n'), "{args:?}: {line}");
            assert!(line.starts_with("error: "), "{args:?}: {line}");
            assert!(line.contains(names), "{args:?}: {line}");
            assert!(line.ends_with(help), "{args:?}: {line}");
        }
    }
}
