//! Request authorization for key-based accounts and Azurite, as policies in
//! the `azure_core` pipeline (the SDK's clients only take Entra ID tokens),
//! and the scrubbing of secrets from error text.
//!
//! Both policies are per-try: they run after the retry policy, so every
//! attempt is signed afresh with its own `x-ms-date`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, Url};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::{AccountKey, SasToken};
use super::transport::Service;

/// Storage Shared Key authorization
/// (learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key):
/// `Authorization: SharedKey <account>:base64(HMAC-SHA256(key, StringToSign))`.
#[derive(Debug)]
pub struct SharedKeyPolicy {
    account: String,
    key: AccountKey,
    service: Service,
}

impl SharedKeyPolicy {
    pub fn new(account: String, key: AccountKey, service: Service) -> Self {
        SharedKeyPolicy {
            account,
            key,
            service,
        }
    }

    fn sign(&self, string_to_sign: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key.bytes)
            .expect("HMAC accepts keys of any length");
        mac.update(string_to_sign.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        keep_slashes(request.url_mut());
        request.insert_header("x-ms-date", http_date_now());
        let sts = match self.service {
            Service::BlobOrQueue => string_to_sign(&self.account, request),
            Service::Table => table_string_to_sign(&self.account, request),
        };
        let auth = format!("SharedKey {}:{}", self.account, self.sign(&sts));
        request.insert_header("authorization", auth);
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Appends a SAS token to every request URL.
#[derive(Debug)]
pub struct SasPolicy {
    token: SasToken,
}

impl SasPolicy {
    pub fn new(token: SasToken) -> Self {
        SasPolicy { token }
    }
}

#[async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let url = request.url_mut();
        keep_slashes(url);
        // A retry sends the same request again: add the token only once.
        let has_sig = url.query_pairs().any(|(k, _)| k == "sig");
        if !has_sig {
            let q = match url.query() {
                Some(q) if !q.is_empty() => format!("{q}&{}", self.token.0),
                _ => self.token.0.clone(),
            };
            url.set_query(Some(&q));
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// The SDK puts a blob name into the URL as one path segment, so a `/` in
/// the name travels as `%2F`. The service decodes either form to the same
/// blob, but the Shared Key signature covers the path exactly as sent, and
/// the other SDKs send `/` literally; do the same so the signed path is the
/// usual one. Our blob names hold only `[A-Za-z0-9._/-]`, so `%2F` is the
/// only escape that can occur.
fn keep_slashes(url: &mut Url) {
    if url.path().contains("%2F") {
        let p = url.path().replace("%2F", "/");
        url.set_path(&p);
    }
}

/// RFC 1123 date in GMT, as `x-ms-date` wants it.
fn http_date_now() -> String {
    // Not `Utc::now`, which panics on a clock set before 1970.
    chrono::DateTime::from_timestamp_micros(crate::time::now_us())
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// StringToSign for the Blob service, version 2009-09-19 and later.
pub(crate) fn string_to_sign(account: &str, request: &Request) -> String {
    let h = |name: &'static str| -> String {
        request
            .headers()
            .get_optional_str(&name.into())
            .unwrap_or("")
            .to_owned()
    };
    // Content-Length is signed as sent; reqwest sends the body's length
    // even where the SDK did not set the header. Zero is signed as empty.
    let content_length = {
        let explicit = h("content-length");
        let len = if explicit.is_empty() {
            request.body().len().unwrap_or(0).to_string()
        } else {
            explicit
        };
        if len == "0" {
            String::new()
        } else {
            len
        }
    };
    let mut s = String::with_capacity(256);
    s.push_str(request.method().as_ref());
    s.push('\n');
    for v in [
        h("content-encoding"),
        h("content-language"),
        content_length,
        h("content-md5"),
        h("content-type"),
        // Date is empty: x-ms-date is set instead.
        String::new(),
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
    ] {
        s.push_str(&v);
        s.push('\n');
    }
    // CanonicalizedHeaders: x-ms-* lower-cased, sorted, "name:value\n",
    // values trimmed (as the SDKs and Azurite do; ours hold no runs of spaces).
    let mut ms: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-ms-"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ms.sort_unstable();
    for (k, v) in ms {
        s.push_str(k);
        s.push(':');
        s.push_str(v.trim());
        s.push('\n');
    }
    // CanonicalizedResource: /account/path, then each query parameter as
    // "\nname:value[,value]" sorted by lower-cased name, values decoded.
    s.push('/');
    s.push_str(account);
    s.push_str(request.url().path());
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in request.url().query_pairs() {
        params
            .entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.into_owned());
    }
    for (k, mut vs) in params {
        vs.sort();
        s.push('\n');
        s.push_str(&k);
        s.push(':');
        s.push_str(&vs.join(","));
    }
    s
}

/// StringToSign for the Table service (Shared Key, version 2009-09-19 and
/// later): `VERB\nContent-MD5\nContent-Type\nDate\nCanonicalizedResource`,
/// where Date is the `x-ms-date` value and the resource is `/account/path`
/// (the path as sent, percent-encoded) with only a `comp` parameter, if any,
/// as `?comp=value`. No other header or parameter is signed.
pub(crate) fn table_string_to_sign(account: &str, request: &Request) -> String {
    let h = |name: &'static str| {
        request
            .headers()
            .get_optional_str(&name.into())
            .unwrap_or("")
    };
    let mut s = format!(
        "{}\n{}\n{}\n{}\n/{account}{}",
        request.method().as_ref(),
        h("content-md5"),
        h("content-type"),
        h("x-ms-date"),
        request.url().path()
    );
    if let Some((_, comp)) = request.url().query_pairs().find(|(k, _)| k == "comp") {
        s.push_str("?comp=");
        s.push_str(&comp);
    }
    s
}

/// Removes secrets (account key, SAS token or signature) from text bound
/// for errors or logs.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor(..)")
    }
}

impl Redactor {
    pub fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a token is removed whole before its parts.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[REDACTED]");
            }
        }
        redact_sig_params(&out)
    }
}

/// Blanks the value of any `sig=` URL parameter, whatever signed it.
fn redact_sig_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        let at_param = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b';');
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        if at_param {
            let end = rest
                .find(|c: char| c == '&' || c == ')' || c == '"' || c == '\'' || c.is_whitespace())
                .unwrap_or(rest.len());
            if end > 0 {
                out.push_str("[REDACTED]");
            }
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::Method;

    #[test]
    fn string_to_sign_matches_the_documented_layout() {
        let url =
            Url::parse("http://127.0.0.1:10000/devstoreaccount1/c/a/b?comp=appendblock&timeout=30")
                .unwrap();
        let mut r = Request::new(url, Method::Put);
        r.insert_header("content-length", "5");
        r.insert_header("content-type", "application/octet-stream");
        r.insert_header("x-ms-version", "2026-04-06");
        r.insert_header("x-ms-date", "Sat, 28 Nov 2026 04:26:41 GMT");
        r.insert_header("x-ms-blob-condition-appendpos", "10");
        r.insert_header("if-none-match", "*");
        let sts = string_to_sign("devstoreaccount1", &r);
        assert_eq!(
            sts,
            "PUT\n\n\n5\n\napplication/octet-stream\n\n\n\n*\n\n\n\
             x-ms-blob-condition-appendpos:10\n\
             x-ms-date:Sat, 28 Nov 2026 04:26:41 GMT\n\
             x-ms-version:2026-04-06\n\
             /devstoreaccount1/devstoreaccount1/c/a/b\ncomp:appendblock\ntimeout:30"
        );
    }

    #[test]
    fn table_string_to_sign_matches_the_documented_layout() {
        let url = Url::parse(
            "http://127.0.0.1:10002/devstoreaccount1/t1(PartitionKey='a%20b',RowKey='')?$filter=x&comp=acl",
        )
        .unwrap();
        let mut r = Request::new(url, Method::Put);
        r.insert_header("content-type", "application/json");
        r.insert_header("x-ms-date", "Sat, 28 Nov 2026 04:26:41 GMT");
        r.insert_header("x-ms-version", "2019-02-02");
        r.insert_header("if-match", "*");
        assert_eq!(
            table_string_to_sign("devstoreaccount1", &r),
            "PUT\n\napplication/json\nSat, 28 Nov 2026 04:26:41 GMT\n\
             /devstoreaccount1/devstoreaccount1/t1(PartitionKey='a%20b',RowKey='')?comp=acl"
        );
    }

    #[test]
    fn slashes_are_sent_literally() {
        let mut u = Url::parse("http://h/acct/c/a%2Fb%2Fc").unwrap();
        keep_slashes(&mut u);
        assert_eq!(u.path(), "/acct/c/a/b/c");
    }

    #[test]
    fn redaction() {
        let r = Redactor::new(vec!["S3CR3T==".into()]);
        assert_eq!(
            r.redact("key S3CR3T== in error sending request for url (http://x/c?sv=1&sig=abc%2F)"),
            "key [REDACTED] in error sending request for url (http://x/c?sv=1&sig=[REDACTED])"
        );
        assert_eq!(r.redact("nothing here: design=1"), "nothing here: design=1");
    }
}
