//! Parsing `AZURE_STORAGE_CONNECTION_STRING`: where the blob, queue and
//! table services are and how to sign for them. Errors name the missing or malformed setting, never a
//! value (a connection string carries the account key).

use std::fmt;

use azure_core::http::Url;
use base64::Engine;

/// The environment variable Azure's tools and SDKs read.
pub const CONNECTION_STRING_ENV: &str = "AZURE_STORAGE_CONNECTION_STRING";

/// Azurite's fixed development account. Microsoft publishes this key; it
/// grants access to nothing but a local emulator.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";
pub const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";
pub const DEV_TABLE_ENDPOINT: &str = "http://127.0.0.1:10002/devstoreaccount1";

/// How requests are authorized.
#[derive(Clone)]
pub enum Credential {
    /// Storage Shared Key: every request is signed with HMAC-SHA256.
    SharedKey { account: String, key: AccountKey },
    /// A SAS token appended to every request URL (without a leading `?`).
    Sas(SasToken),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SharedKey { account, .. } => f
                .debug_struct("SharedKey")
                .field("account", account)
                .finish_non_exhaustive(),
            Credential::Sas(_) => f.write_str("Sas(..)"),
        }
    }
}

/// A decoded account key. Never printed.
#[derive(Clone)]
pub struct AccountKey {
    pub(crate) bytes: Vec<u8>,
    /// The base64 text as given, kept only so error messages can be
    /// scrubbed of it.
    pub(crate) text: String,
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(..)")
    }
}

/// A SAS token. Never printed.
#[derive(Clone)]
pub struct SasToken(pub(crate) String);

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasToken(..)")
    }
}

/// A parsed connection string: the service endpoints and a credential.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The blob service URL, e.g. `https://acct.blob.core.windows.net/` or
    /// Azurite's path-style `http://127.0.0.1:10000/devstoreaccount1/`.
    /// Always ends with `/`.
    pub blob_endpoint: Url,
    /// The queue service URL (`QueueEndpoint`, or derived from the account
    /// name like the blob one). `None` when the string names neither, as a
    /// string with only a `BlobEndpoint` does; see [`Self::queue_endpoint`].
    pub queue_endpoint: Option<Url>,
    /// The table service URL (`TableEndpoint`, or derived); see
    /// [`Self::table_endpoint`].
    pub table_endpoint: Option<Url>,
    pub account: Option<String>,
    pub credential: Credential,
}

/// What is wrong with a connection string. The text names settings, never
/// their values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{CONNECTION_STRING_ENV}: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl ConnectionInfo {
    /// Parses `Key=Value;Key=Value` as the Azure SDKs do. Accepted keys
    /// (case-insensitive): `UseDevelopmentStorage`, `DefaultEndpointsProtocol`,
    /// `AccountName`, `AccountKey`, `EndpointSuffix`, `BlobEndpoint`,
    /// `QueueEndpoint`, `TableEndpoint`, `SharedAccessSignature`; others are
    /// ignored.
    pub fn parse(cs: &str) -> Result<ConnectionInfo, ConfigError> {
        let mut dev = false;
        let mut protocol = None;
        let mut account = None;
        let mut key = None;
        let mut suffix = None;
        let mut blob_endpoint = None;
        let mut queue_endpoint = None;
        let mut table_endpoint = None;
        let mut sas = None;
        if cs.trim().is_empty() {
            return Err(bad("the connection string is empty"));
        }
        for part in cs.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            // Values (base64 keys, SAS tokens) may themselves contain '='.
            let Some((k, v)) = part.split_once('=') else {
                return Err(bad(
                    "a setting has no '=' (expected Key=Value pairs separated by ';')",
                ));
            };
            let v = v.trim().to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "usedevelopmentstorage" => {
                    dev = v.eq_ignore_ascii_case("true");
                    if !dev && !v.eq_ignore_ascii_case("false") {
                        return Err(bad("UseDevelopmentStorage must be true or false"));
                    }
                }
                "defaultendpointsprotocol" => protocol = Some(v),
                "accountname" => account = Some(v),
                "accountkey" => key = Some(v),
                "endpointsuffix" => suffix = Some(v),
                "blobendpoint" => blob_endpoint = Some(v),
                "queueendpoint" => queue_endpoint = Some(v),
                "tableendpoint" => table_endpoint = Some(v),
                "sharedaccesssignature" => sas = Some(v),
                _ => {}
            }
        }
        if dev {
            // Azurite's defaults, unless the string overrides an endpoint
            // (e.g. Azurite on other ports).
            account.get_or_insert_with(|| DEV_ACCOUNT.to_owned());
            key.get_or_insert_with(|| DEV_KEY.to_owned());
            blob_endpoint.get_or_insert_with(|| DEV_BLOB_ENDPOINT.to_owned());
            queue_endpoint.get_or_insert_with(|| DEV_QUEUE_ENDPOINT.to_owned());
            table_endpoint.get_or_insert_with(|| DEV_TABLE_ENDPOINT.to_owned());
        }
        let service = |given: Option<String>, setting: &str, service: &str| {
            let endpoint = match given {
                Some(e) => e,
                None => {
                    let Some(account) = &account else {
                        return Err(bad(format!(
                            "it has neither {setting} nor AccountName, so the {service} service address is unknown",
                        )));
                    };
                    let protocol = protocol.as_deref().unwrap_or("https");
                    if protocol != "https" && protocol != "http" {
                        return Err(bad("DefaultEndpointsProtocol must be https or http"));
                    }
                    let suffix = suffix.as_deref().unwrap_or("core.windows.net");
                    format!("{protocol}://{account}.{service}.{suffix}")
                }
            };
            parse_endpoint(&endpoint, setting)
        };
        let blob_endpoint = service(blob_endpoint, "BlobEndpoint", "blob")?;
        // A string written for blobs alone is fine until a queue or table
        // store is asked for; an endpoint that is given must still parse.
        let optional = |given: Option<String>, setting: &str, name: &str| {
            if given.is_none() && account.is_none() {
                return Ok(None);
            }
            service(given, setting, name).map(Some)
        };
        let queue_endpoint = optional(queue_endpoint, "QueueEndpoint", "queue")?;
        let table_endpoint = optional(table_endpoint, "TableEndpoint", "table")?;
        let credential = match (key, sas) {
            (Some(key), _) => {
                let Some(account) = account.clone() else {
                    return Err(bad(
                        "it has AccountKey but no AccountName; Shared Key signing needs both",
                    ));
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(key.as_bytes())
                    .map_err(|_| bad("AccountKey is not valid base64"))?;
                if bytes.is_empty() {
                    return Err(bad("AccountKey is empty"));
                }
                Credential::SharedKey {
                    account,
                    key: AccountKey { bytes, text: key },
                }
            }
            (None, Some(sas)) => {
                let sas = sas.trim_start_matches('?').to_owned();
                if !sas.split('&').any(|p| p.starts_with("sig=")) {
                    return Err(bad("SharedAccessSignature has no sig= parameter"));
                }
                Credential::Sas(SasToken(sas))
            }
            (None, None) => {
                return Err(bad(
                    "it has neither AccountKey nor SharedAccessSignature (for Entra ID, construct the store with AzureBlobStore::with_token_credential)",
                ))
            }
        };
        Ok(ConnectionInfo {
            blob_endpoint,
            queue_endpoint,
            table_endpoint,
            account,
            credential,
        })
    }

    /// The queue service URL, or an error naming the missing setting.
    pub fn queue_endpoint(&self) -> Result<&Url, ConfigError> {
        self.queue_endpoint.as_ref().ok_or_else(|| {
            bad("it has neither QueueEndpoint nor AccountName, so the queue service address is unknown")
        })
    }

    /// The table service URL, or an error naming the missing setting.
    pub fn table_endpoint(&self) -> Result<&Url, ConfigError> {
        self.table_endpoint.as_ref().ok_or_else(|| {
            bad("it has neither TableEndpoint nor AccountName, so the table service address is unknown")
        })
    }

    /// Reads and parses [`CONNECTION_STRING_ENV`].
    pub fn from_env() -> Result<ConnectionInfo, ConfigError> {
        match std::env::var(CONNECTION_STRING_ENV) {
            Ok(cs) => Self::parse(&cs),
            Err(std::env::VarError::NotPresent) => Err(bad(
                "not set; set it to an account's connection string, or to UseDevelopmentStorage=true for Azurite (tools/azurite.sh start)",
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(bad("not valid UTF-8")),
        }
    }

    /// Strings that must never appear in an error message or log line.
    pub(crate) fn secrets(&self) -> Vec<String> {
        match &self.credential {
            Credential::SharedKey { key, .. } => vec![key.text.clone()],
            Credential::Sas(SasToken(t)) => {
                let mut s = vec![t.clone()];
                for p in t.split('&') {
                    if let Some(sig) = p.strip_prefix("sig=") {
                        s.push(sig.to_owned());
                        // The same signature percent-decoded, as some
                        // messages print it.
                        s.push(percent_decode(sig));
                    }
                }
                s
            }
        }
    }
}

/// A service URL: http(s), no query, path ending in `/` so that names can
/// be joined onto it.
fn parse_endpoint(endpoint: &str, setting: &str) -> Result<Url, ConfigError> {
    let mut url =
        Url::parse(endpoint).map_err(|e| bad(format!("{setting} is not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(bad(format!("{setting} must be an http:// or https:// URL")));
    }
    if url.query().is_some() {
        return Err(bad(format!(
            "{setting} must not carry a query; give a SAS as SharedAccessSignature"
        )));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_storage() {
        let c = ConnectionInfo::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(
            c.blob_endpoint.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/"
        );
        assert_eq!(
            c.queue_endpoint().unwrap().as_str(),
            "http://127.0.0.1:10001/devstoreaccount1/"
        );
        assert_eq!(
            c.table_endpoint().unwrap().as_str(),
            "http://127.0.0.1:10002/devstoreaccount1/"
        );
        assert_eq!(c.account.as_deref(), Some(DEV_ACCOUNT));
        assert!(matches!(c.credential, Credential::SharedKey { .. }));
    }

    #[test]
    fn azurite_script_string_names_all_three_services() {
        let c = ConnectionInfo::parse(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:20000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:20001/devstoreaccount1;TableEndpoint=http://127.0.0.1:20002/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(c.blob_endpoint.port(), Some(20000));
        assert_eq!(
            c.queue_endpoint().unwrap().as_str(),
            "http://127.0.0.1:20001/devstoreaccount1/"
        );
        assert_eq!(
            c.table_endpoint().unwrap().as_str(),
            "http://127.0.0.1:20002/devstoreaccount1/"
        );
    }

    #[test]
    fn account_key_with_defaults() {
        let c = ConnectionInfo::parse(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(
            c.blob_endpoint.as_str(),
            "https://acct.blob.core.windows.net/"
        );
        assert_eq!(
            c.queue_endpoint().unwrap().as_str(),
            "https://acct.queue.core.windows.net/"
        );
        assert_eq!(
            c.table_endpoint().unwrap().as_str(),
            "https://acct.table.core.windows.net/"
        );
        match c.credential {
            Credential::SharedKey { account, key } => {
                assert_eq!(account, "acct");
                assert_eq!(key.bytes, b"keykey");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_endpoint_and_sas() {
        let c = ConnectionInfo::parse(
            "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=?sv=2022-11-02&sig=abc%2Bdef",
        )
        .unwrap();
        assert_eq!(
            c.blob_endpoint.as_str(),
            "https://acct.blob.core.windows.net/"
        );
        let e = c.table_endpoint().unwrap_err();
        assert!(e.to_string().contains("neither TableEndpoint"), "{e}");
        assert!(
            matches!(&c.credential, Credential::Sas(SasToken(t)) if t == "sv=2022-11-02&sig=abc%2Bdef")
        );
        let secrets = c.secrets();
        assert!(secrets.contains(&"abc%2Bdef".to_owned()));
        assert!(secrets.contains(&"abc+def".to_owned()));
    }

    #[test]
    fn errors_name_the_missing_setting_but_no_value() {
        let e = ConnectionInfo::parse("AccountKey=c2VjcmV0").unwrap_err();
        assert!(
            e.to_string()
                .contains("neither BlobEndpoint nor AccountName"),
            "{e}"
        );
        let e = ConnectionInfo::parse("AccountName=acct").unwrap_err();
        assert!(e
            .to_string()
            .contains("neither AccountKey nor SharedAccessSignature"));
        let e = ConnectionInfo::parse("AccountName=acct;AccountKey=not*base64").unwrap_err();
        assert!(e.to_string().contains("AccountKey is not valid base64"));
        assert!(!e.to_string().contains("not*base64"));
        let e = ConnectionInfo::parse("").unwrap_err();
        assert!(e.to_string().contains("empty"));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = ConnectionInfo::parse("UseDevelopmentStorage=true").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains(DEV_KEY), "{d}");
    }
}
