//! What every Azure store of ours shares, whichever service it talks to:
//! the HTTP client and TLS setup, request signing, the retry settings and
//! the store-side retry loop, and turning SDK errors into short, redacted
//! text. The blob store (`mod.rs`), the queue store (`queue/`) and the
//! table store (`table/`) are all built on it, so they retry, sign and
//! redact alike.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::error::ErrorKind;
use azure_core::http::policies::Policy;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use tracing::warn;

use super::auth::{Redactor, SasPolicy, SharedKeyPolicy};
use super::config::Credential;

/// How transient failures (timeouts, connection failures, 408, 429, 5xx)
/// are retried, by the pipeline or by a store's own loop (`attempt`).
#[derive(Clone, Debug)]
pub struct RetrySettings {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts after this long.
    pub max_elapsed: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_retries: 6,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetrySettings {
    /// The pipeline's retry policy with these limits: timeouts, connection
    /// failures, 408, 429 and 5xx, with exponential backoff.
    pub(crate) fn pipeline_policy(&self) -> RetryOptions {
        RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: to_time(self.initial_delay),
            max_retries: self.max_retries,
            max_total_elapsed: to_time(self.max_elapsed),
            max_delay: to_time(self.max_delay),
        })
    }
}

/// Which service a Shared Key signs for: the Table service signs fewer
/// parts of the request than Blob and Queue (which sign alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    BlobOrQueue,
    Table,
}

/// The per-try policy that authorizes requests made with a key or a SAS.
pub(crate) fn key_policy(credential: Credential, service: Service) -> Arc<dyn Policy> {
    match credential {
        Credential::SharedKey { account, key } => {
            Arc::new(SharedKeyPolicy::new(account, key, service))
        }
        Credential::Sas(token) => Arc::new(SasPolicy::new(token)),
    }
}

/// One store's connection to a service: its connection pool, the policy
/// that signs each attempt (none for Entra ID, which the SDK's client adds
/// itself), and the redactor for the secrets it was given.
pub(crate) struct Connection {
    transport: Transport,
    per_try: Vec<Arc<dyn Policy>>,
    pub redactor: Redactor,
}

impl Connection {
    /// `credential` is `None` for Entra ID; `secrets` are scrubbed from
    /// every error and log line. Errors are already redacted.
    pub fn new(
        credential: Option<Credential>,
        secrets: Vec<String>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Connection, String> {
        let redactor = Redactor::new(secrets);
        let transport = transport(connect_timeout, read_timeout, &redactor)?;
        let per_try = credential
            .map(|c| key_policy(c, Service::BlobOrQueue))
            .into_iter()
            .collect();
        Ok(Connection {
            transport,
            per_try,
            redactor,
        })
    }

    /// Options for an SDK client on this connection with `retry`.
    pub fn client_options(&self, retry: RetryOptions) -> ClientOptions {
        ClientOptions {
            per_try_policies: self.per_try.clone(),
            retry,
            transport: Some(self.transport.clone()),
            ..Default::default()
        }
    }
}

/// A transport (connection pool) for one store: HTTP/1.1, TLS on the
/// system's OpenSSL, no automatic decompression (blob bytes are returned as
/// stored), no redirects (the storage REST API does not use them).
///
/// The TLS connector is built once per process and shared: building it
/// loads the system's root certificates, which takes tens of milliseconds.
/// The client itself is per store, so its pooled connections belong to the
/// runtime that uses the store.
/// Errors are redacted.
pub(crate) fn transport(
    connect_timeout: Duration,
    read_timeout: Duration,
    redactor: &Redactor,
) -> Result<Transport, String> {
    static TLS: std::sync::OnceLock<Result<native_tls::TlsConnector, String>> =
        std::sync::OnceLock::new();
    let tls = TLS
        .get_or_init(|| native_tls::TlsConnector::new().map_err(|e| error_chain(&e)))
        .clone()
        .map_err(|e| redactor.redact(&e))?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| redactor.redact(&error_chain(&e)))?;
    Ok(Transport::new(Arc::new(http)))
}

/// The outcome of [`attempt`].
pub(crate) struct Attempted<T> {
    pub result: azure_core::Result<T>,
    /// Some failed attempt may have been applied by the service: its
    /// outcome is unknown, so the final answer must be read with that in
    /// mind (a "not found" may be our own earlier delete).
    pub uncertain: bool,
}

/// Runs a call up to the retry limits, retrying transient failures with
/// backoff, through a pipeline that has no retry policy of its own: only
/// here is it known whether an earlier attempt may have landed.
pub(crate) async fn attempt<T, F, Fut>(
    r: &RetrySettings,
    redactor: &Redactor,
    op: &str,
    name: &str,
    mut f: F,
) -> Attempted<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = azure_core::Result<T>>,
{
    let start = Instant::now();
    let mut uncertain = false;
    let mut retry = 0u32;
    loop {
        match f().await {
            Ok(v) => {
                return Attempted {
                    result: Ok(v),
                    uncertain,
                }
            }
            Err(e) if is_transient(&e) => {
                // A connection never made sent nothing; anything else
                // (timeout, reset, 5xx) may have been applied.
                uncertain |= !matches!(e.kind(), ErrorKind::Connection);
                if retry >= r.max_retries || start.elapsed() >= r.max_elapsed {
                    return Attempted {
                        result: Err(e),
                        uncertain,
                    };
                }
                let delay = backoff(r, retry);
                warn!(op, name, retry = retry + 1, delay_ms = delay.as_millis() as u64,
                      error = %redactor.redact(&describe(&e)), "transient failure; retrying");
                tokio::time::sleep(delay).await;
                retry += 1;
            }
            Err(e) => {
                return Attempted {
                    result: Err(e),
                    uncertain,
                }
            }
        }
    }
}

pub(crate) fn to_time(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
}

pub(crate) fn backoff(r: &RetrySettings, retry: u32) -> Duration {
    let base = r
        .initial_delay
        .saturating_mul(1u32 << retry.min(16))
        .min(r.max_delay);
    // ±25% jitter, so writers that failed together do not retry together.
    let mut b = [0u8; 2];
    let _ = getrandom::getrandom(&mut b);
    let frac = u16::from_le_bytes(b) as f64 / u16::MAX as f64; // 0..=1
    base.mul_f64(0.75 + frac * 0.5)
}

pub(crate) fn status_of(e: &azure_core::Error) -> Option<u16> {
    e.http_status().map(u16::from)
}

pub(crate) fn code_of(e: &azure_core::Error) -> Option<&str> {
    match e.kind() {
        ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
        _ => None,
    }
}

pub(crate) fn is_transient(e: &azure_core::Error) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Connection => true,
        ErrorKind::HttpResponse { status, .. } => {
            matches!(u16::from(*status), 408 | 429 | 500 | 502 | 503 | 504)
        }
        _ => false,
    }
}

/// A one-line description of an SDK error: status and service error code,
/// the service's message, or the transport error chain. Not yet redacted.
pub(crate) fn describe(e: &azure_core::Error) -> String {
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let mut s = format!("HTTP {}", u16::from(*status));
            if let Some(c) = error_code {
                s.push(' ');
                s.push_str(c);
            }
            // The SDK's message carries the XML error body; keep only the
            // service's <Message> line. The table client puts the JSON
            // error's message into the error as plain text instead.
            let text = e.to_string();
            let message = match xml_element(&text, "Message") {
                Some(m) => Some(m),
                None if !text.starts_with('<') && !text.is_empty() => Some(text.as_str()),
                None => None,
            };
            if let Some(m) = message.filter(|m| !is_status_text(m, u16::from(*status))) {
                s.push_str(": ");
                s.push_str(m.lines().next().unwrap_or(""));
            }
            if error_code.as_deref() == Some("InvalidBlobType") {
                // Only a hand outside the ledger makes one: say what it means.
                s.push_str(" (the blob is not an append blob, as every segment must be: something replaced it)");
            }
            s
        }
        _ => error_chain(e),
    }
}

/// Whether `m` only restates the status (the SDK's message when the
/// response had no body).
fn is_status_text(m: &str, status: u16) -> bool {
    m.trim().is_empty() || m.split_whitespace().next() == Some(status.to_string().as_str())
}

fn xml_element<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].trim())
}

/// An error and its sources, joined by ": ", each said once.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}
