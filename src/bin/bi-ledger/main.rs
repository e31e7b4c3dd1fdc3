//! The `bi-ledger` command line: append, read, verify and prove on a
//! ledger. Machine output is JSON lines on stdout; errors are one line on
//! stderr. Exit codes: 0 success, 1 integrity failure, 2 any other error
//! (usage, I/O, a malformed input line, an expected version that does not hold).

/// `eprintln!` that does not panic when standard error is gone (a closed
/// pipe, as in `bi-ledger ... 2>&1 | head`): there is no one left to tell.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod append;
mod check;
mod create;
mod demo;
mod demo_run;
mod input;
mod interrupt;
mod keyfile;
mod progress;
mod proofs;
mod read;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bi_ledger::backend::azure::account::{AccountSettings, ACCOUNT_URL_ENV};
use bi_ledger::backend::azure::{AzureAccount, AzureBlobStore, AzureOptions};
use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::{BlobStore, StoreError};
use bi_ledger::error::IntegrityError;
use bi_ledger::format::checkpoint::Checkpoint;
use bi_ledger::format::hex;
use bi_ledger::ledger::layout::Meta;
use bi_ledger::{Ledger, LedgerError, LedgerOptions, LedgerReader};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use serde_json::json;

use check::verify;
use create::init;
use demo_run::run_demo;
use keyfile::{load_key, write_key_pair};
use proofs::{prove, verify_proof};
use read::{read, stats};

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
        Err(e) if e.downcast_ref::<interrupt::Interrupted>().is_some() => {
            say!("{}", one_line(&e));
            ExitCode::from(130)
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

/// The options a command that writes opens the ledger with.
pub(crate) fn writer_options(cli: &Cli, key: SigningKey) -> LedgerOptions {
    let mut opts = LedgerOptions::new(key);
    if let Some(cap) = cli.segment_max_bytes {
        opts.segment_max_bytes = cap;
    }
    opts
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
        // Missing with segments or checkpoints there: damage, as `verify`
        // reports it, not a mistyped name.
        Err(StoreError::NotFound { .. }) => {
            match bi_ledger::ledger::recover::read_meta(store, &cli.ledger).await {
                Err(e @ LedgerError::Integrity(_)) => Err(e.into()),
                _ => bail!(
                    "{} in {} (--ledger, BI_LEDGER_LEDGER)",
                    LedgerError::NotFound(cli.ledger.clone()),
                    store.location()
                ),
            }
        }
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
