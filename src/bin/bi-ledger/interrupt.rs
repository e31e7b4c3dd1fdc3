//! Ctrl-C (or SIGTERM) while a command holds the writer lock. Killed
//! there, the writer would leave its last records without a checkpoint and, on Azure, its
//! lease held until it expires (up to 60 s, refusing every other writer
//! meanwhile). So the first Ctrl-C only asks the command to stop taking
//! work: what is in flight lands, the ledger closes (a signed checkpoint,
//! the lock released) and the command exits 130. A second one exits at
//! once, as a kill would.

use std::sync::atomic::{AtomicU8, Ordering};

/// 0 until asked; then what asked: 1 Ctrl-C, 2 SIGTERM.
static ASKED: AtomicU8 = AtomicU8::new(0);

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
            let by = tokio::select! {
                _ = int.recv() => 1,
                _ = term.recv() => 2,
            };
            if n > 0 {
                std::process::exit(130);
            }
            ASKED.store(by, Ordering::SeqCst);
            say!("{}: letting the write in flight land and closing the ledger (again to stop at once)", interrupted());
        }
    });
}

/// Whether Ctrl-C was pressed (or SIGTERM came) since [`watch`].
pub(crate) fn asked() -> bool {
    ASKED.load(Ordering::SeqCst) != 0
}

/// "interrupted (Ctrl-C)", or by what else.
pub(crate) fn interrupted() -> &'static str {
    match ASKED.load(Ordering::SeqCst) {
        2 => "interrupted (SIGTERM)",
        _ => "interrupted (Ctrl-C)",
    }
}
