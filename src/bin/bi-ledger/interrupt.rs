//! Ctrl-C (or SIGTERM) while a command holds the writer lock. Killed there, the writer
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

/// Starts listening for Ctrl-C (SIGINT) and SIGTERM (what a service
/// manager sends before it kills), from a command that now holds the
/// writer lock. Before this, either ends the process as usual.
pub(crate) fn watch() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without a handler the signals still work, as a kill.
        return;
    };
    tokio::spawn(async move {
        for n in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if n > 0 {
                std::process::exit(130);
            }
            ASKED.store(true, Ordering::SeqCst);
            say!("interrupted: letting the write in flight land and closing the ledger (Ctrl-C again to stop at once)");
        }
    });
}

/// Whether Ctrl-C was pressed since [`watch`].
pub(crate) fn asked() -> bool {
    ASKED.load(Ordering::SeqCst)
}
