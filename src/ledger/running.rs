//! The writers running in this process, by store location and ledger name.
//!
//! A writer thread holds the writer lock until it stops, and after the last
//! handle of a `Ledger` is dropped it stops a moment later, in the
//! background (it finishes the block in flight first). An `open` in that
//! moment would be refused with `Locked` by a writer that is already on its
//! way out. With this registry the `open` tells the two cases apart: a
//! writer that still has handles refuses at once; one that has none is
//! waited for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// Held by every handle of a `Ledger` (clones share it).
#[derive(Debug)]
pub(crate) struct Handles;

/// Held by the writer thread; dropping it, after the writer and its lock,
/// says the writer has stopped.
pub(crate) struct Running {
    key: String,
    stopped: watch::Sender<bool>,
}

struct Entry {
    handles: Weak<Handles>,
    stopped: watch::Receiver<bool>,
}

fn registry() -> &'static Mutex<HashMap<String, Entry>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn key(location: &str, ledger: &str) -> String {
    format!("{location}\n{ledger}")
}

/// Registers a writer that has just taken the lock of `ledger` at
/// `location`.
pub(crate) fn register(location: &str, ledger: &str) -> (Arc<Handles>, Running) {
    let key = key(location, ledger);
    let handles = Arc::new(Handles);
    let (stopped, rx) = watch::channel(false);
    registry().lock().unwrap_or_else(|p| p.into_inner()).insert(
        key.clone(),
        Entry {
            handles: Arc::downgrade(&handles),
            stopped: rx,
        },
    );
    (handles, Running { key, stopped })
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
        // Remove the entry only if it is this writer's.
        if map
            .get(&self.key)
            .is_some_and(|e| e.stopped.same_channel(&self.stopped.subscribe()))
        {
            map.remove(&self.key);
        }
        drop(map);
        self.stopped.send_replace(true);
    }
}

/// Whether a writer of this process that still has handles holds the lock
/// of `ledger` at `location`.
pub(crate) fn in_use_here(location: &str, ledger: &str) -> bool {
    let map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.get(&key(location, ledger))
        .is_some_and(|e| e.handles.strong_count() > 0)
}

/// After `lock` was refused: whether to try it once more. A writer of this
/// process still in use: no, at once. One whose handles are all gone: yes,
/// once it has stopped (waiting at most `limit`). None here: yes, since a
/// writer of this process may have stopped between the refusal and now
/// (else the holder is another process, and the second try says so).
pub(crate) async fn wait_if_stopping(location: &str, ledger: &str, limit: Duration) -> bool {
    let mut stopped = {
        let map = registry().lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key(location, ledger)) {
            None => return true,
            Some(e) if e.handles.strong_count() > 0 => return false,
            Some(e) => e.stopped.clone(),
        }
    };
    // The bound is a thread's sleep, not a tokio timer: `open` must not
    // need a runtime with timers enabled.
    let (expired, timer) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = expired.send(());
    });
    tokio::select! {
        r = stopped.wait_for(|s| *s) => r.is_ok(),
        _ = timer => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_writer_in_use_refuses_and_one_without_handles_is_waited_for() {
        let (handles, running) = register("mem://t1", "l");
        // In use: no second try, and no wait.
        let t = std::time::Instant::now();
        assert!(!wait_if_stopping("mem://t1", "l", LIMIT).await);
        assert!(t.elapsed() < LIMIT);
        // Another ledger, or another store: nothing of ours holds it.
        assert!(wait_if_stopping("mem://t1", "other", LIMIT).await);
        assert!(wait_if_stopping("mem://t2", "l", LIMIT).await);
        // Handles gone, writer still stopping: waited for until it stops.
        drop(handles);
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(running);
        });
        let t = std::time::Instant::now();
        assert!(wait_if_stopping("mem://t1", "l", LIMIT).await);
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
        stop.await.unwrap();
        // Stopped: its entry is gone.
        assert!(!registry()
            .lock()
            .unwrap()
            .contains_key(&key("mem://t1", "l")));
    }

    #[tokio::test]
    async fn a_writer_that_never_stops_is_waited_for_no_longer_than_the_limit() {
        let (handles, _running) = register("mem://t3", "l");
        drop(handles);
        let t = std::time::Instant::now();
        assert!(!wait_if_stopping("mem://t3", "l", Duration::from_millis(50)).await);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_stopping_writer_does_not_remove_its_successors_entry() {
        let (old_handles, old) = register("mem://t4", "l");
        drop(old_handles);
        // A new writer registered (say, after the old one lost its lease).
        let (new_handles, _new) = register("mem://t4", "l");
        drop(old);
        assert!(!wait_if_stopping("mem://t4", "l", LIMIT).await);
        drop(new_handles);
    }
}
