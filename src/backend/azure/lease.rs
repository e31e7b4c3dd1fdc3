//! The single-writer lock on Azure: a blob lease on a lock blob, renewed in
//! the background. See `README.md` beside this file for why appends to the
//! segments do not carry it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use azure_storage_blob::BlobClient;
use tracing::{debug, error};

use super::auth::Redactor;
use super::transport::code_of;
use super::{describe, AzureOptions};
use crate::backend::{StoreError, WriterLock};
use crate::ledger::WRITER_STOPPED;

/// What the renewal task reports to `check()`.
#[derive(Debug)]
struct State {
    lost: Mutex<Option<String>>,
    /// When the last successful acquire or renew was sent. The service
    /// starts the lease clock when it receives the request, so this is a
    /// safe lower bound.
    renewed_at: Mutex<Instant>,
}

/// A held lease. Dropping it stops renewal and releases the lease.
pub(super) struct Lease {
    name: String,
    key: String,
    client: Arc<BlobClient>,
    lease_id: String,
    state: Arc<State>,
    /// How old the last renewal may be before `check()` stops trusting
    /// the lease: its duration less one renewal interval, so a writer stops
    /// well before the lease could have expired and passed to another.
    max_age: Duration,
    renewer: tokio::task::JoinHandle<()>,
    /// Transport errors name the request URL, which carries a SAS token
    /// when the account uses one: every error logged goes through this.
    redactor: Redactor,
}

impl Lease {
    /// Starts renewing a lease just acquired (the acquire request was sent
    /// at `acquired_at`).
    pub(super) fn start(
        name: String,
        key: String,
        client: BlobClient,
        lease_id: String,
        acquired_at: Instant,
        opts: &AzureOptions,
        redactor: Redactor,
    ) -> Lease {
        let (duration, renew_every) = (opts.lease_duration, opts.lease_renew_interval);
        let client = Arc::new(client);
        let state = Arc::new(State {
            lost: Mutex::new(None),
            renewed_at: Mutex::new(acquired_at),
        });
        let renewer = lease_runtime().spawn({
            let (client, state, id, name, redactor) = (
                client.clone(),
                state.clone(),
                lease_id.clone(),
                name.clone(),
                redactor.clone(),
            );
            async move {
                loop {
                    tokio::time::sleep(renew_every).await;
                    let sent = Instant::now();
                    // The pipeline retries transient failures; an error here
                    // means it gave up, or the service refused the lease
                    // (expired and taken, or broken).
                    match client.renew_lease(id.clone(), None).await {
                        Ok(_) => {
                            *state.renewed_at.lock().unwrap() = sent;
                            debug!(lock = %name, "renewed writer lease");
                        }
                        Err(e) => {
                            let why = redactor.redact(&refused(&e));
                            error!(target: WRITER_STOPPED, lock = %name, error = %why, "could not renew the writer lease; the writer stops appending");
                            *state.lost.lock().unwrap() = Some(why);
                            return;
                        }
                    }
                }
            }
        });
        Lease {
            name,
            key,
            client,
            lease_id,
            state,
            max_age: duration.saturating_sub(renew_every),
            renewer,
            redactor,
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("lock", &self.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl WriterLock for Lease {
    fn release(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            // Dropping starts the release (see `Drop`); wait until it lands.
            let mut released = releases_of(&self.key).subscribe();
            drop(self);
            let _ = released.wait_for(|in_flight| *in_flight == 0).await;
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        self.state
            .check(self.max_age)
            .map_err(|why| StoreError::Io {
                op: "hold the writer lease on",
                name: self.name.clone(),
                source: std::io::Error::other(why),
            })
    }

    /// Renews the lease now, on the lease runtime (its client's pooled
    /// connections belong there). A renewal the service refuses (the
    /// lease was broken, or expired and taken) marks the lease lost, as a
    /// failed background renewal does; one that could not reach the service
    /// is an error for this call only.
    fn confirm(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + '_>>
    {
        Box::pin(async move {
            self.check()?;
            let (client, state, id, name, redactor) = (
                self.client.clone(),
                self.state.clone(),
                self.lease_id.clone(),
                self.name.clone(),
                self.redactor.clone(),
            );
            let renewed = lease_runtime()
                .spawn(async move {
                    let sent = Instant::now();
                    match client.renew_lease(id, None).await {
                        Ok(_) => {
                            let mut at = state.renewed_at.lock().unwrap();
                            *at = (*at).max(sent);
                            Ok(())
                        }
                        Err(e) => {
                            let why = redactor.redact(&refused(&e));
                            if !super::transport::is_transient(&e) {
                                error!(target: WRITER_STOPPED, lock = %name, error = %why, "the writer lease was refused; the writer stops");
                                *state.lost.lock().unwrap() = Some(why.clone());
                            }
                            Err(why)
                        }
                    }
                })
                .await;
            match renewed {
                Ok(Ok(())) => self.check(),
                Ok(Err(why)) => Err(StoreError::Io {
                    op: "renew the writer lease on",
                    name: self.name.clone(),
                    source: std::io::Error::other(why),
                }),
                Err(e) => Err(StoreError::Io {
                    op: "renew the writer lease on",
                    name: self.name.clone(),
                    source: std::io::Error::other(e.to_string()),
                }),
            }
        })
    }
}

/// A failed renewal, with what its error code means for the writer: the
/// codes alone ("LeaseIdMismatchWithLeaseOperation") do not say that
/// another writer may hold the ledger now.
fn refused(e: &azure_core::Error) -> String {
    let meaning = match code_of(e) {
        Some("LeaseIdMismatchWithLeaseOperation") => {
            "the lock holds another lease now: ours was broken, or expired and was taken, and another writer may hold the ledger"
        }
        Some("LeaseNotPresentWithLeaseOperation") => {
            "the lock holds no lease now: ours was broken, or expired"
        }
        Some("LeaseIsBrokenAndCannotBeRenewed") => "our lease on the lock was broken",
        _ => return describe(e),
    };
    format!("{meaning} ({})", describe(e))
}

impl State {
    /// Whether the lease can still be trusted: no renewal has failed, and
    /// the last one is younger than `max_age`.
    fn check(&self, max_age: Duration) -> Result<(), String> {
        if let Some(why) = self.lost.lock().unwrap().clone() {
            return Err(format!("the lease was lost: renewal failed: {why}"));
        }
        let age = self.renewed_at.lock().unwrap().elapsed();
        if age > max_age {
            return Err(format!(
                "the lease was not renewed for {:.1}s and may have expired",
                age.as_secs_f64()
            ));
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        // Release in the background; until it lands, `lock()` in this
        // process waits for it (see `wait_for_release`), so close-then-open
        // is not refused.
        let rt = lease_runtime();
        let in_flight = InFlight::new(&self.key);
        let (client, id, name, redactor) = (
            self.client.clone(),
            self.lease_id.clone(),
            self.name.clone(),
            self.redactor.clone(),
        );
        rt.spawn(async move {
            match client.release_lease(id, None).await {
                Ok(_) => debug!(lock = %name, "released writer lease"),
                Err(e) => debug!(lock = %name, error = %redactor.redact(&describe(&e)), "could not release writer lease; it will expire"),
            }
            // Also dropped, and so counted off, if the runtime shuts down
            // before the release ran.
            drop(in_flight);
        });
    }
}

/// Where leases are renewed and released: a runtime on a thread of its
/// own, for the life of the process. On the runtime that opened the ledger,
/// renewal would stop whenever that runtime is dropped or not driven (a
/// setup runtime, `block_on` per request, a busy worker), and the writer
/// would lose its lease while its handle is open and idle; the writer's
/// own thread may sit in a long synchronous step.
fn lease_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for lease renewals");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("bi-ledger-lease".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("a thread for lease renewals");
        handle
    })
}

/// Runs `f` on the lease runtime and waits for it here.
/// (`lock` names the lock, for the error if that runtime is gone.)
pub(super) async fn on_lease_runtime<T: Send + 'static>(
    lock: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    match lease_runtime().spawn(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Io {
            op: "take the writer lease on",
            name: lock.to_owned(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Counts a release in flight for as long as it lives.
struct InFlight(tokio::sync::watch::Sender<usize>);

impl InFlight {
    fn new(key: &str) -> InFlight {
        let tx = releases_of(key);
        tx.send_modify(|n| *n += 1);
        InFlight(tx)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Per lock blob in this process: how many releases are in flight.
fn releases_of(key: &str) -> tokio::sync::watch::Sender<usize> {
    static RELEASES: OnceLock<Mutex<HashMap<String, tokio::sync::watch::Sender<usize>>>> =
        OnceLock::new();
    RELEASES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_insert_with(|| tokio::sync::watch::Sender::new(0))
        .clone()
}

/// Waits until releases of this lock by this process have landed (bounded,
/// in case a release hangs: the lease then expires on its own).
pub(super) async fn wait_for_release(key: &str, limit: Duration) {
    let mut rx = releases_of(key).subscribe();
    let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_fails_once_renewal_failed_or_is_overdue() {
        let st = State {
            lost: Mutex::new(None),
            renewed_at: Mutex::new(Instant::now()),
        };
        assert!(st.check(Duration::from_secs(45)).is_ok());
        // Overdue: the renewal task is stuck or starved.
        *st.renewed_at.lock().unwrap() = Instant::now() - Duration::from_secs(46);
        let e = st.check(Duration::from_secs(45)).unwrap_err();
        assert!(e.contains("not renewed for 46"), "{e}");
        // Failed: whatever the age.
        *st.renewed_at.lock().unwrap() = Instant::now();
        *st.lost.lock().unwrap() = Some("HTTP 409 LeaseIdMismatchWithLeaseOperation".into());
        let e = st.check(Duration::from_secs(45)).unwrap_err();
        assert!(e.contains("renewal failed: HTTP 409"), "{e}");
    }
}
