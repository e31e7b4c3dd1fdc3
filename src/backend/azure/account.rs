//! Which storage account, and how to authorize to it, from the environment:
//! a connection string (Shared Key or SAS, or Azurite), or an account URL
//! with a key, a SAS, or no secret at all, in which case Entra ID is used
//! (workload identity where Kubernetes provides its token file, managed
//! identity otherwise).
//!
//! Production accounts often disable Shared Key; Entra ID is then the only
//! way in, and it carries no secret that could leak into a log.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::Url;
use azure_identity::{
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use super::config::{ConfigError, ConnectionInfo, CONNECTION_STRING_ENV};

/// The blob service URL of an account, e.g.
/// `https://acct.blob.core.windows.net/` (or Azurite's
/// `http://127.0.0.1:10000/devstoreaccount1`), used when no connection
/// string is set.
pub const ACCOUNT_URL_ENV: &str = "BI_LEDGER_AZURE_ACCOUNT_URL";
/// The account key for [`ACCOUNT_URL_ENV`] (the Azure CLI's name).
pub const ACCOUNT_KEY_ENV: &str = "AZURE_STORAGE_KEY";
/// A SAS token for [`ACCOUNT_URL_ENV`] (the Azure CLI's name).
pub const SAS_TOKEN_ENV: &str = "AZURE_STORAGE_SAS_TOKEN";
/// Set by Azure Workload Identity in a Kubernetes pod.
const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The identity's client id: required by workload identity, optional
/// (a user-assigned identity) for managed identity.
const CLIENT_ID_ENV: &str = "AZURE_CLIENT_ID";
/// The Entra tenant (workload identity).
const TENANT_ID_ENV: &str = "AZURE_TENANT_ID";

/// Which Entra ID credential was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntraKind {
    WorkloadIdentity,
    ManagedIdentity,
}

impl fmt::Display for EntraKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntraKind::WorkloadIdentity => "workload identity",
            EntraKind::ManagedIdentity => "managed identity",
        })
    }
}

/// An account and a way to authorize to it.
#[derive(Clone)]
pub enum AzureAccount {
    /// Shared Key or SAS, from a connection string or URL + secret.
    Keyed(Box<ConnectionInfo>),
    /// Entra ID tokens for the account at `blob_endpoint`.
    Entra {
        blob_endpoint: Url,
        kind: EntraKind,
        credential: Arc<dyn TokenCredential>,
    },
}

impl fmt::Debug for AzureAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureAccount::Keyed(info) => f.debug_tuple("Keyed").field(info).finish(),
            AzureAccount::Entra {
                blob_endpoint,
                kind,
                ..
            } => f
                .debug_struct("Entra")
                .field("blob_endpoint", &blob_endpoint.as_str())
                .field("kind", kind)
                .finish_non_exhaustive(),
        }
    }
}

/// What [`AzureAccount::from_settings`] reads, so that tests need not set
/// process-wide environment variables.
#[derive(Clone, Debug, Default)]
pub struct AccountSettings {
    pub connection_string: Option<String>,
    pub account_url: Option<String>,
    pub key: Option<String>,
    pub sas: Option<String>,
    pub federated_token_file: Option<String>,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
}

impl AccountSettings {
    pub fn from_env() -> AccountSettings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        AccountSettings {
            connection_string: var(CONNECTION_STRING_ENV),
            account_url: var(ACCOUNT_URL_ENV),
            key: var(ACCOUNT_KEY_ENV),
            sas: var(SAS_TOKEN_ENV),
            federated_token_file: var(FEDERATED_TOKEN_FILE_ENV),
            client_id: var(CLIENT_ID_ENV),
            tenant_id: var(TENANT_ID_ENV),
        }
    }
}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl AzureAccount {
    /// The account the environment names; see [`AzureAccount::from_settings`].
    pub fn from_env() -> Result<AzureAccount, ConfigError> {
        Self::from_settings(AccountSettings::from_env())
    }

    /// A connection string wins; otherwise an account URL with a key, a
    /// SAS, or (with neither) Entra ID. Building a credential does no I/O:
    /// a missing identity shows on the first request, named by its kind.
    pub fn from_settings(s: AccountSettings) -> Result<AzureAccount, ConfigError> {
        if let Some(cs) = &s.connection_string {
            return ConnectionInfo::parse(cs).map(|i| AzureAccount::Keyed(Box::new(i)));
        }
        let Some(url) = &s.account_url else {
            return Err(bad(format!(
                "not set, and neither is {ACCOUNT_URL_ENV}; set one (UseDevelopmentStorage=true is Azurite: tools/azurite.sh start)"
            )));
        };
        let blob_endpoint = Url::parse(url)
            .map_err(|e| ConfigError(format!("{ACCOUNT_URL_ENV} is not a valid URL ({e})")))?;
        if blob_endpoint.query().is_some() {
            return Err(ConfigError(format!(
                "{ACCOUNT_URL_ENV} must not carry a query; give a SAS in {SAS_TOKEN_ENV}"
            )));
        }
        if s.key.is_some() || s.sas.is_some() {
            return keyed(&blob_endpoint, s.key.as_deref(), s.sas.as_deref())
                .map(|i| AzureAccount::Keyed(Box::new(i)));
        }
        if blob_endpoint.scheme() != "https" {
            return Err(ConfigError(format!(
                "{ACCOUNT_URL_ENV}: Entra ID tokens are only sent over https"
            )));
        }
        let entra_err =
            |kind: EntraKind, e: azure_core::Error| ConfigError(format!("Entra ID {kind}: {e}"));
        let (kind, credential): (EntraKind, Arc<dyn TokenCredential>) =
            if let Some(file) = &s.federated_token_file {
                let kind = EntraKind::WorkloadIdentity;
                let missing = |name: &str| {
                    ConfigError(format!(
                        "Entra ID {kind}: {FEDERATED_TOKEN_FILE_ENV} is set but {name} is not"
                    ))
                };
                let options = WorkloadIdentityCredentialOptions {
                    client_id: Some(s.client_id.clone().ok_or_else(|| missing(CLIENT_ID_ENV))?),
                    tenant_id: Some(s.tenant_id.clone().ok_or_else(|| missing(TENANT_ID_ENV))?),
                    token_file_path: Some(file.into()),
                    ..Default::default()
                };
                let c = WorkloadIdentityCredential::new(Some(options))
                    .map_err(|e| entra_err(kind, e))?;
                (kind, c)
            } else {
                let kind = EntraKind::ManagedIdentity;
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: s.client_id.clone().map(UserAssignedId::ClientId),
                    ..Default::default()
                };
                let c = ManagedIdentityCredential::new(Some(options))
                    .map_err(|e| entra_err(kind, e))?;
                (kind, c)
            };
        Ok(AzureAccount::Entra {
            blob_endpoint,
            kind,
            credential,
        })
    }

    /// The account's blob service URL.
    pub fn blob_endpoint(&self) -> &Url {
        match self {
            AzureAccount::Keyed(info) => &info.blob_endpoint,
            AzureAccount::Entra { blob_endpoint, .. } => blob_endpoint,
        }
    }
}

/// `https://acct.blob.SUFFIX/` → `https://acct.<service>.SUFFIX/`: where
/// an account's other services are, given its blob service URL. `None`
/// for a URL of another shape (Azurite's path-style URLs among them).
pub(crate) fn sibling_endpoint(blob_endpoint: &Url, service: &str) -> Option<Url> {
    let host = blob_endpoint.host_str()?;
    let (account, suffix) = host.split_once(".blob.")?;
    let mut url = blob_endpoint.clone();
    url.set_host(Some(&format!("{account}.{service}.{suffix}")))
        .ok()?;
    Some(url)
}

/// URL + key or SAS, as the connection string that says the same, so that
/// one parser checks both. The account name comes from the host
/// (`acct.blob.core.windows.net`) or, for a path-style URL such as
/// Azurite's, from the first path segment.
fn keyed(url: &Url, key: Option<&str>, sas: Option<&str>) -> Result<ConnectionInfo, ConfigError> {
    let host = url.host_str().unwrap_or_default();
    let (account, queue, table) = match host.split_once(".blob.") {
        Some((account, _)) => {
            let service =
                |s: &str| sibling_endpoint(url, s).map_or_else(String::new, |u| u.to_string());
            (account.to_owned(), service("queue"), service("table"))
        }
        None => {
            let account = url
                .path_segments()
                .and_then(|mut s| s.next())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{ACCOUNT_URL_ENV}: cannot tell the account name (expected https://ACCOUNT.blob.SUFFIX or http://HOST:PORT/ACCOUNT)"
                    ))
                })?
                .to_owned();
            (account, String::new(), String::new())
        }
    };
    let mut cs = format!("BlobEndpoint={url};AccountName={account}");
    if !queue.is_empty() {
        cs.push_str(&format!(";QueueEndpoint={queue};TableEndpoint={table}"));
    }
    match (key, sas) {
        (Some(k), _) => cs.push_str(&format!(";AccountKey={k}")),
        (None, Some(s)) => cs.push_str(&format!(";SharedAccessSignature={s}")),
        (None, None) => {}
    }
    ConnectionInfo::parse(&cs).map_err(|e| {
        // The parser names connection-string settings; say where they came from.
        ConfigError(format!(
            "{ACCOUNT_URL_ENV} / {ACCOUNT_KEY_ENV} / {SAS_TOKEN_ENV}: {}",
            e.0
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::azure::config::{Credential, DEV_KEY};

    fn settings(url: &str) -> AccountSettings {
        AccountSettings {
            account_url: Some(url.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn connection_string_wins() {
        let s = AccountSettings {
            connection_string: Some("UseDevelopmentStorage=true".into()),
            account_url: Some("https://other.blob.core.windows.net".into()),
            ..Default::default()
        };
        let a = AzureAccount::from_settings(s).unwrap();
        assert_eq!(a.blob_endpoint().port(), Some(10000));
    }

    #[test]
    fn url_with_key_derives_account_and_services() {
        let mut s = settings("https://acct.blob.core.windows.net");
        s.key = Some("a2V5".into());
        let AzureAccount::Keyed(info) = AzureAccount::from_settings(s).unwrap() else {
            panic!("expected a keyed account");
        };
        assert_eq!(info.account.as_deref(), Some("acct"));
        assert_eq!(
            info.table_endpoint().unwrap().as_str(),
            "https://acct.table.core.windows.net/"
        );
        assert!(matches!(info.credential, Credential::SharedKey { .. }));
    }

    #[test]
    fn path_style_url_with_key_is_azurite() {
        let mut s = settings("http://127.0.0.1:10000/devstoreaccount1");
        s.key = Some(DEV_KEY.into());
        let AzureAccount::Keyed(info) = AzureAccount::from_settings(s).unwrap() else {
            panic!("expected a keyed account");
        };
        assert_eq!(info.account.as_deref(), Some("devstoreaccount1"));
        assert_eq!(
            info.blob_endpoint.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/"
        );
    }

    #[test]
    fn url_with_sas() {
        let mut s = settings("https://acct.blob.core.windows.net/");
        s.sas = Some("?sv=2024-01-01&sig=c2ln".into());
        let AzureAccount::Keyed(info) = AzureAccount::from_settings(s).unwrap() else {
            panic!("expected a keyed account");
        };
        assert!(matches!(info.credential, Credential::Sas(_)));
    }

    #[test]
    fn url_alone_is_entra_id() {
        let a =
            AzureAccount::from_settings(settings("https://acct.blob.core.windows.net")).unwrap();
        assert!(matches!(
            a,
            AzureAccount::Entra {
                kind: EntraKind::ManagedIdentity,
                ..
            }
        ));
        let mut s = settings("https://acct.blob.core.windows.net");
        s.client_id = Some("00000000-0000-0000-0000-000000000001".into());
        assert!(matches!(
            AzureAccount::from_settings(s).unwrap(),
            AzureAccount::Entra {
                kind: EntraKind::ManagedIdentity,
                ..
            }
        ));
    }

    #[test]
    fn entra_account_reaches_the_queue_and_table_services() {
        use crate::backend::azure::{AzureQueueStore, AzureTableStore};
        use crate::backend::queue::QueueStore;
        use crate::backend::table::TableStore;
        let a =
            AzureAccount::from_settings(settings("https://acct.blob.core.windows.net")).unwrap();
        let q = AzureQueueStore::open(&a, Default::default()).unwrap();
        assert!(
            q.location()
                .starts_with("https://acct.queue.core.windows.net"),
            "{}",
            q.location()
        );
        let t = AzureTableStore::open(&a, Default::default()).unwrap();
        assert!(
            t.location()
                .starts_with("https://acct.table.core.windows.net"),
            "{}",
            t.location()
        );
    }

    #[test]
    fn workload_identity_needs_its_client_and_tenant() {
        let mut s = settings("https://acct.blob.core.windows.net");
        s.federated_token_file = Some("/var/run/secrets/azure/tokens/azure-identity-token".into());
        s.client_id = Some("00000000-0000-0000-0000-000000000001".into());
        let e = AzureAccount::from_settings(s.clone()).unwrap_err();
        assert!(e.to_string().contains("workload identity"), "{e}");
        assert!(e.to_string().contains(TENANT_ID_ENV), "{e}");
        s.tenant_id = Some("00000000-0000-0000-0000-000000000002".into());
        // The token file is read when the credential is built.
        let e = AzureAccount::from_settings(s.clone()).unwrap_err();
        assert!(e.to_string().contains("federated token"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "eyJhbGciOi.fake.jwt").unwrap();
        s.federated_token_file = Some(file.to_string_lossy().into_owned());
        assert!(matches!(
            AzureAccount::from_settings(s).unwrap(),
            AzureAccount::Entra {
                kind: EntraKind::WorkloadIdentity,
                ..
            }
        ));
    }

    #[test]
    fn errors_name_the_setting_and_never_the_secret() {
        let e = AzureAccount::from_settings(AccountSettings::default()).unwrap_err();
        assert!(e.to_string().contains(ACCOUNT_URL_ENV), "{e}");
        let e =
            AzureAccount::from_settings(settings("http://acct.blob.core.windows.net")).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        let mut s = settings("https://acct.blob.core.windows.net");
        s.key = Some("not*base64*secret".into());
        let e = AzureAccount::from_settings(s).unwrap_err();
        assert!(
            e.to_string().contains("AccountKey is not valid base64"),
            "{e}"
        );
        assert!(!e.to_string().contains("not*base64*secret"), "{e}");
        let mut s = settings("http://127.0.0.1:10000/");
        s.key = Some(DEV_KEY.into());
        let e = AzureAccount::from_settings(s).unwrap_err();
        assert!(e.to_string().contains("account name"), "{e}");
    }
}
