//! Ctrl-C while a command holds the writer lock. Killed there, the writer
//! would leave its last records without a checkpoint and, on Azure, its
//! lease held until it expires (up to 60 s, refusing every other writer
//! meanwhile). So the first Ctrl-C only asks the command to stop taking
//! work: what is in flight lands, the ledger closes (a signed checkpoint,
//! the lock released) and the command exits 130. A second one exits at
//! once, as a kill would.

use std::sync::atomic::{AtomicBool, Ordering};

static ASKED: AtomicBool = AtomicBool::new(false);

/// The error a command stopped by Ctrl-C returns: `main` exits 130.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Interrupted(pub String);

/// Starts listening for Ctrl-C (SIGINT), from a command that now holds the
/// writer lock. Before this, Ctrl-C ends the process as usual.
pub(crate) fn watch() {
    let Ok(mut sigint) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    else {
        // Without a handler Ctrl-C still works, as a kill.
        return;
    };
    tokio::spawn(async move {
        sigint.recv().await;
        ASKED.store(true, Ordering::SeqCst);
        say!("interrupted: letting the write in flight land and closing the ledger (Ctrl-C again to stop at once)");
        sigint.recv().await;
        std::process::exit(130);
    });
}

/// Whether Ctrl-C was pressed since [`watch`].
pub(crate) fn asked() -> bool {
    ASKED.load(Ordering::SeqCst)
}
