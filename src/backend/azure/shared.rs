//! What the Azure blob and table stores share: the HTTP client and
//! transport, retry settings and the retry loop for writes whose outcome
//! must be judged by the caller, and reading `azure_core` errors.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::error::ErrorKind;
use azure_core::http::policies::Policy;
use azure_core::http::{ExponentialRetryOptions, RetryOptions, Transport};
use tracing::warn;

use super::auth::{Redactor, SasPolicy, SharedKeyPolicy};
use super::config::Credential;

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
    pub(crate) fn pipeline_retry(&self) -> RetryOptions {
        RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: to_time(self.initial_delay),
            max_retries: self.max_retries,
            max_total_elapsed: to_time(self.max_elapsed),
            max_delay: to_time(self.max_delay),
        })
    }
}

/// Which service a Shared Key signs for: the Table service signs fewer
/// parts of the request than Blob and Queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Blob,
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

/// A transport (connection pool) for one store: HTTP/1.1, TLS on the
/// system's OpenSSL, no automatic decompression (bytes are returned as
/// stored), no redirects (the storage REST API does not use them).
///
/// The TLS connector is built once per process and shared: building it
/// loads the system's root certificates, which takes tens of milliseconds.
/// The client itself is per store, so its pooled connections belong to the
/// runtime that uses the store.
pub(crate) fn transport(
    connect_timeout: Duration,
    read_timeout: Duration,
    redactor: &Redactor,
) -> Result<Transport, String> {
    static TLS: std::sync::OnceLock<Result<native_tls::TlsConnector, String>> =
        std::sync::OnceLock::new();
    let tls = TLS
        .get_or_init(|| native_tls::TlsConnector::new().map_err(|e| error_chain(&e)))
        .clone()?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| redactor.redact(&error_chain(&e)))?;
    Ok(Transport::new(Arc::new(http)))
}

pub(crate) struct Attempted<T> {
    pub result: azure_core::Result<T>,
    /// Whether a failed attempt may have been applied by the service.
    pub uncertain: bool,
}

/// Runs a write up to the retry limits, retrying transient failures
/// with backoff. Reports whether any failed attempt may have been
/// applied by the service (its outcome is unknown), so the caller can
/// judge a later "already exists" or "condition not met" answer.
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
    let end = start + text[start..].find(&close)?;
    Some(&text[start..end])
}

/// The error and its sources, joined with ": ", each cause once.
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
