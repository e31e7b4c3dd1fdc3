//! The Azure blob store: one [`BlobStore`] is one container; appendable
//! blobs are Azure append blobs, `put` blobs are block blobs, and the
//! writer lock is a blob lease. Built on Microsoft's `azure_storage_blob`
//! client and the `azure_core` pipeline. See `README.md` beside this file
//! for the life of an event through it and what a crash at each step
//! leaves behind.
//!
//! Retries: reads, listings, seals and lease calls go through a pipeline
//! whose retry policy retries timeouts, connection failures, 408, 429 and
//! 5xx with exponential backoff. The conditional writes (`create`, `put`,
//! `append`, `delete`) go through a pipeline without retries and are
//! retried here, because only here is it known whether an earlier attempt
//! may have landed: after such an attempt, a "blob exists", "append
//! position not met" or "not found" answer is checked against what is
//! stored before it is believed. So an append is never written twice and
//! never reported failed when it landed.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZero;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{Etag, RequestContent, RetryOptions, Url};
use azure_storage_blob::models::{
    AppendBlobClientAppendBlockOptions, AppendBlobClientAppendBlockResultHeaders,
    AppendBlobClientCreateOptions, AppendBlobClientSealOptions, BlobClientAcquireLeaseOptions,
    BlobClientAcquireLeaseResultHeaders, BlobClientBreakLeaseOptions, BlobClientDeleteOptions,
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, BlobType, BlockBlobClientUploadOptions, LeaseDuration,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use super::{
    validate_block, validate_name, BlobInfo, BlobStore, LockExpiry, StoreError, WriterLock,
    AZURE_MAX_BLOCKS, DEFAULT_MAX_BLOCK,
};

pub mod account;
mod auth;
pub mod config;
mod lease;
pub mod queue;
pub mod table;
mod transport;

pub use account::{AzureAccount, EntraKind};
pub use config::{ConfigError, ConnectionInfo, Credential, CONNECTION_STRING_ENV};
pub use queue::{AzureQueueOptions, AzureQueueStore};
pub use table::{AzureTableError, AzureTableOptions, AzureTableStore};
pub use transport::RetrySettings;

use auth::Redactor;
pub(crate) use transport::describe;
use transport::{backoff, code_of, error_chain, status_of, Attempted, Connection};

/// Metadata key carrying a per-call id on blobs we create, so that a retry
/// which finds the blob existing can tell its own earlier attempt from
/// another writer's blob.
const WRITE_ID: &str = "biledgerwrite";

/// Lock blobs live under a name no ledger blob can have (`validate_name`
/// refuses components starting with '.'), and `list` skips them.
const LOCK_PREFIX: &str = ".locks/";

/// The longest fixed lease the service grants: the most that any writer's
/// lease, whatever its options, outlives the writer.
const MAX_LEASE: Duration = Duration::from_secs(60);

/// Reads larger than this check the blob's size before allocating.
const CHECK_SIZE_ABOVE: u64 = 64 << 20;

#[derive(Clone, Debug)]
pub struct AzureOptions {
    /// Blocks per append blob. Azure's limit is 50,000; tests set less.
    pub max_blocks: u64,
    /// Largest block `append` accepts (Azure documents 4 MiB for some
    /// service versions and 100 MiB for newer ones).
    pub max_block_size: usize,
    /// Writer lease duration, 15 to 60 seconds.
    pub lease_duration: Duration,
    /// How often the lease is renewed; at most a third of its duration.
    /// `check()` fails once the last renewal is older than
    /// `lease_duration - lease_renew_interval`.
    pub lease_renew_interval: Duration,
    pub retry: RetrySettings,
    pub connect_timeout: Duration,
    /// Longest wait for any read on a connection.
    pub read_timeout: Duration,
    /// Get Properties calls in flight while `list` collects block counts.
    pub list_concurrency: usize,
}

impl Default for AzureOptions {
    fn default() -> Self {
        AzureOptions {
            max_blocks: AZURE_MAX_BLOCKS,
            max_block_size: DEFAULT_MAX_BLOCK,
            lease_duration: Duration::from_secs(60),
            lease_renew_interval: Duration::from_secs(15),
            retry: RetrySettings::default(),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            list_concurrency: 16,
        }
    }
}

/// An Azure blob container as a [`BlobStore`]. Cheap to clone.
#[derive(Clone)]
pub struct AzureBlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Pipeline with retries: reads, listings, seals, leases.
    retrying: BlobContainerClient,
    /// Pipeline without retries: conditional writes, retried by `attempt`.
    once: BlobContainerClient,
    /// Pipeline with retries on a connection pool of its own, used only on
    /// the lease runtime (`lease.rs`): pooled connections are driven by the
    /// runtime that opened them, and a caller's runtime left idle (a
    /// `block_on` per call) would stall a renewal that reused one.
    leasing: BlobContainerClient,
    container: String,
    /// Container URL without query, for logs and errors.
    location: String,
    opts: AzureOptions,
    redactor: Redactor,
    /// Last seen (size, committed blocks) of blobs this store appended to,
    /// so the block limit is enforced without a round trip per append.
    blocks: Mutex<HashMap<String, (u64, u64)>>,
}

impl fmt::Debug for AzureBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

fn config_err(what: &str, why: impl Into<String>) -> StoreError {
    StoreError::Io {
        op: "configure Azure blob store",
        name: what.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.into()),
    }
}

/// Azure container names: 3-63 of `a-z 0-9 -`, starting and ending with a
/// letter or digit, no `--`.
pub fn validate_container_name(name: &str) -> Result<(), StoreError> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(config_err(
            name,
            "invalid container name: use 3-63 of a-z 0-9 and '-', starting and ending with a letter or digit, no \"--\"",
        ))
    }
}

impl AzureBlobStore {
    /// Opens `container` (creating it if missing) in the account that
    /// [`CONNECTION_STRING_ENV`] names.
    pub async fn from_env(container: &str, opts: AzureOptions) -> Result<Self, StoreError> {
        let info = ConnectionInfo::from_env()
            .map_err(|e| config_err(CONNECTION_STRING_ENV, e.0.clone()))?;
        Self::from_connection_info(info, container, opts).await
    }

    /// Opens `container` (creating it if missing) in the account a
    /// connection string names; `UseDevelopmentStorage=true` is Azurite.
    pub async fn from_connection_string(
        cs: &str,
        container: &str,
        opts: AzureOptions,
    ) -> Result<Self, StoreError> {
        let info =
            ConnectionInfo::parse(cs).map_err(|e| config_err("connection string", e.0.clone()))?;
        Self::from_connection_info(info, container, opts).await
    }

    pub async fn from_connection_info(
        info: ConnectionInfo,
        container: &str,
        opts: AzureOptions,
    ) -> Result<Self, StoreError> {
        let store = Self::new(info, container, opts)?;
        store.create_container_if_missing().await?;
        Ok(store)
    }

    /// A store on `container` without any I/O: the container must exist
    /// (see [`AzureBlobStore::create_container_if_missing`]).
    pub fn new(
        info: ConnectionInfo,
        container: &str,
        opts: AzureOptions,
    ) -> Result<Self, StoreError> {
        let secrets = info.secrets();
        Self::build(
            info.blob_endpoint,
            container,
            Some(info.credential),
            secrets,
            None,
            opts,
        )
    }

    /// Opens `container` (creating it if missing) in `account`.
    pub async fn open(
        account: &AzureAccount,
        container: &str,
        opts: AzureOptions,
    ) -> Result<AzureBlobStore, StoreError> {
        let store = Self::unopened(account, container, opts)?;
        store.create_container_if_missing().await?;
        Ok(store)
    }

    /// Opens `container` in `account`, which must exist: for work on a
    /// ledger that is already there (reading, verifying, appending), so
    /// that a mistyped container name is an error rather than a new, empty
    /// container left behind. A missing container is `NotFound` naming it.
    pub async fn open_existing(
        account: &AzureAccount,
        container: &str,
        opts: AzureOptions,
    ) -> Result<AzureBlobStore, StoreError> {
        let store = Self::unopened(account, container, opts)?;
        store.check_container().await?;
        Ok(store)
    }

    fn unopened(
        account: &AzureAccount,
        container: &str,
        opts: AzureOptions,
    ) -> Result<AzureBlobStore, StoreError> {
        match account {
            AzureAccount::Keyed(info) => Self::new((**info).clone(), container, opts),
            AzureAccount::Entra {
                blob_endpoint,
                credential,
                ..
            } => Self::build(
                blob_endpoint.clone(),
                container,
                None,
                Vec::new(),
                Some(credential.clone()),
                opts,
            ),
        }
    }

    /// Opens `container` (creating it if missing) with an Entra ID
    /// credential (e.g. `azure_identity`'s managed or workload identity).
    /// `blob_endpoint` is the account's blob service URL (https).
    pub async fn with_token_credential(
        blob_endpoint: Url,
        container: &str,
        credential: Arc<dyn TokenCredential>,
        opts: AzureOptions,
    ) -> Result<Self, StoreError> {
        let store = Self::build(
            blob_endpoint,
            container,
            None,
            Vec::new(),
            Some(credential),
            opts,
        )?;
        store.create_container_if_missing().await?;
        Ok(store)
    }

    fn build(
        mut endpoint: Url,
        container: &str,
        signing: Option<Credential>,
        secrets: Vec<String>,
        credential: Option<Arc<dyn TokenCredential>>,
        opts: AzureOptions,
    ) -> Result<Self, StoreError> {
        validate_container_name(container)?;
        let lease_secs = opts.lease_duration.as_secs();
        if !(15..=60).contains(&lease_secs) || opts.lease_duration.subsec_nanos() != 0 {
            return Err(config_err(
                "lease_duration",
                "must be a whole number of seconds from 15 to 60",
            ));
        }
        if opts.lease_renew_interval.is_zero()
            || opts.lease_renew_interval * 3 > opts.lease_duration
        {
            return Err(config_err(
                "lease_renew_interval",
                "must be more than zero and at most a third of lease_duration",
            ));
        }
        if opts.max_blocks == 0 || opts.max_block_size == 0 {
            return Err(config_err(
                "max_blocks / max_block_size",
                "must be more than zero",
            ));
        }
        if !endpoint.path().ends_with('/') {
            let p = format!("{}/", endpoint.path());
            endpoint.set_path(&p);
        }
        let container_url = endpoint
            .join(container)
            .map_err(|e| config_err("blob endpoint", e.to_string()))?;
        let location = {
            let mut u = container_url.clone();
            u.set_query(None);
            u.to_string()
        };
        let connect = || {
            Connection::new(
                signing.clone(),
                secrets.clone(),
                opts.connect_timeout,
                opts.read_timeout,
            )
            .map_err(|e| config_err("HTTP client", e))
        };
        let (conn, lease_conn) = (connect()?, connect()?);
        let redactor = conn.redactor.clone();
        let client = |conn: &Connection, retry: RetryOptions| {
            let options = BlobContainerClientOptions {
                client_options: conn.client_options(retry),
                ..Default::default()
            };
            BlobContainerClient::new(container_url.clone(), credential.clone(), Some(options))
                .map_err(|e| config_err("blob container client", redactor.redact(&describe(&e))))
        };
        let retrying = client(&conn, opts.retry.pipeline_policy())?;
        let once = client(&conn, RetryOptions::none())?;
        let leasing = client(&lease_conn, opts.retry.pipeline_policy())?;
        Ok(AzureBlobStore {
            inner: Arc::new(Inner {
                retrying,
                once,
                leasing,
                container: container.to_owned(),
                location,
                opts,
                redactor,
                blocks: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The SDK's own client for this container, on this store's connection
    /// (the same HTTP client and signing, no retry policy and none of this
    /// store's checks): to measure what this layer adds
    /// (`benches/azure_blob.rs`).
    pub fn sdk_client(&self) -> &BlobContainerClient {
        &self.inner.once
    }

    pub fn container(&self) -> &str {
        &self.inner.container
    }

    pub fn options(&self) -> &AzureOptions {
        &self.inner.opts
    }

    pub async fn create_container_if_missing(&self) -> Result<(), StoreError> {
        match self.inner.retrying.create(None).await {
            Ok(_) => {
                debug!(container = %self.inner.container, "created container");
                Ok(())
            }
            Err(e) if code_of(&e) == Some("ContainerAlreadyExists") => Ok(()),
            // A SAS scoped to the container cannot create one, and is
            // refused even when it exists; listing one blob tells whether
            // it does (and whether the SAS can be used at all).
            Err(e) if status_of(&e) == Some(403) => match self.check_container().await {
                Ok(()) => {
                    debug!(container = %self.inner.container, "no right to create the container, but it exists");
                    Ok(())
                }
                Err(_) => Err(self.err("create container", &self.inner.container, &e)),
            },
            Err(e) => Err(self.err("create container", &self.inner.container, &e)),
        }
    }

    /// Whether the container is there, by listing at most one blob (which
    /// a SAS scoped to the container may do, unlike reading its
    /// properties).
    async fn check_container(&self) -> Result<(), StoreError> {
        let name = &self.inner.container;
        let probe = self
            .inner
            .retrying
            .list_blobs(Some(BlobContainerClientListBlobsOptions {
                maxresults: Some(1),
                ..Default::default()
            }))
            .map_err(|e| self.err("list", name, &e))?
            .try_next()
            .await;
        match probe {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some("ContainerNotFound") => Err(StoreError::NotFound {
                name: format!("container {name}"),
            }),
            // The Blob service names what it did not find; a 404 without
            // that came from something else at that address (a web server,
            // a path that is not an account), and is not "no container".
            Err(e) if status_of(&e) == Some(404) && code_of(&e).is_none() => Err(StoreError::Io {
                op: "list",
                name: name.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "{}: the answer has no Azure error code, so this is not an Azure Storage blob endpoint (check the account URL or connection string)",
                        self.inner.redactor.redact(&describe(&e))
                    ),
                ),
            }),
            Err(e) => Err(self.err("list", name, &e)),
        }
    }

    /// Deletes the whole container. For tests and tools; the ledger never
    /// deletes anything.
    pub async fn delete_container(&self) -> Result<(), StoreError> {
        match self.inner.retrying.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.err("delete container", &self.inner.container, &e)),
        }
    }

    /// Breaks the writer lease on lock `name` at once, whoever holds it.
    /// For operators (a writer host died and its lease must not be waited
    /// out) and tests. The old holder's `check()` fails at its next
    /// renewal, and its appends meet the append-position condition.
    pub async fn break_lock(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let blob = format!("{LOCK_PREFIX}{name}");
        match self
            .inner
            .retrying
            .blob_client(&blob)
            .break_lease(Some(BlobClientBreakLeaseOptions {
                break_period: Some(0),
                ..Default::default()
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(StoreError::NotFound {
                name: name.to_owned(),
            }),
            // No lease to break: nobody holds the lock.
            Err(e) if code_of(&e) == Some("LeaseNotPresentWithLeaseOperation") => Ok(()),
            Err(e) => Err(self.err("break writer lease on", name, &e)),
        }
    }

    /// An error for the caller: kind kept, secrets scrubbed.
    /// Get Blob Properties: the blob's length, block count and seal, and
    /// its ETag (for a later call conditional on the blob being unchanged).
    async fn properties(&self, name: &str) -> Result<(BlobInfo, Option<Etag>), StoreError> {
        let p = self
            .inner
            .retrying
            .blob_client(name)
            .get_properties(None)
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => StoreError::NotFound {
                    name: name.to_owned(),
                },
                _ => self.err("get properties of", name, &e),
            })?;
        let read = |e| self.err("read properties of", name, &e);
        Ok((
            info_from_headers(name, &p).map_err(read)?,
            p.etag().map_err(read)?,
        ))
    }

    fn err(&self, op: &'static str, name: &str, e: &azure_core::Error) -> StoreError {
        let kind = match (e.kind(), status_of(e)) {
            (_, Some(401 | 403)) => std::io::ErrorKind::PermissionDenied,
            (ErrorKind::Connection, _) => std::io::ErrorKind::ConnectionRefused,
            (_, Some(408 | 500 | 502 | 503 | 504)) => std::io::ErrorKind::Other,
            (ErrorKind::Io, _) if error_chain(e).contains("timed out") => {
                std::io::ErrorKind::TimedOut
            }
            _ => std::io::ErrorKind::Other,
        };
        StoreError::Io {
            op,
            name: name.to_owned(),
            source: std::io::Error::new(kind, self.inner.redactor.redact(&describe(e))),
        }
    }

    /// Runs a write with the store's own retries (see [`transport::attempt`]).
    async fn attempt<T, F, Fut>(&self, op: &str, name: &str, f: F) -> Attempted<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        transport::attempt(&self.inner.opts.retry, &self.inner.redactor, op, name, f).await
    }

    /// Whether blob `name` exists and was created by the write tagged `id`:
    /// asked only after a create or put whose answer was lost, so a failure
    /// here says that the write's outcome is unknown.
    async fn written_by(&self, name: &str, id: &str) -> Result<bool, StoreError> {
        const OP: &str = "learn whether a create or put whose answer was lost landed in";
        match self
            .inner
            .retrying
            .blob_client(name)
            .get_properties(None)
            .await
        {
            Ok(p) => Ok(p
                .metadata()
                .map_err(|e| self.err(OP, name, &e))?
                .get(WRITE_ID)
                .is_some_and(|v| v == id)),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.err(OP, name, &e)),
        }
    }

    /// After an append whose outcome is unknown: is our block there?
    /// `Ok(Some(end))` if the blob holds our bytes at `expected` (and
    /// perhaps more after them: another writer, which took the lease while
    /// this one waited, appended after our block), `Ok(None)` if it did not
    /// grow, `OffsetMismatch` if it grew by something else.
    /// If the blob cannot be read back, the error says that the append's
    /// outcome is what is unknown, not merely that a read failed.
    async fn resolve_append(
        &self,
        name: &str,
        expected: u64,
        block: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        let unknown = |e: StoreError| match e {
            StoreError::Io { name, source, .. } => StoreError::Io {
                op: "learn whether an append whose answer was lost landed in",
                name,
                source,
            },
            e => e,
        };
        let info = self.info(name).await.map_err(unknown)?;
        let end = expected + block.len() as u64;
        if info.size == expected {
            return Ok(None);
        }
        let ours = info.size >= end
            && self
                .read(name, expected, block.len() as u64)
                .await
                .map_err(unknown)?
                == block;
        if ours {
            self.remember(name, info.size, info.block_count);
            return Ok(Some(end));
        }
        Err(StoreError::OffsetMismatch {
            name: name.to_owned(),
            expected,
            actual: info.size,
        })
    }

    fn remember(&self, name: &str, size: u64, blocks: u64) {
        self.inner
            .blocks
            .lock()
            .unwrap()
            .insert(name.to_owned(), (size, blocks));
    }

    /// Committed blocks of `name` if it holds `expected` bytes, from the
    /// cache or one Get Properties call.
    async fn blocks_at(&self, name: &str, expected: u64) -> Result<u64, StoreError> {
        if let Some(&(size, blocks)) = self.inner.blocks.lock().unwrap().get(name) {
            if size == expected {
                return Ok(blocks);
            }
        }
        let info = self.info(name).await?;
        if info.sealed {
            return Err(StoreError::Sealed {
                name: name.to_owned(),
            });
        }
        if info.size != expected {
            return Err(StoreError::OffsetMismatch {
                name: name.to_owned(),
                expected,
                actual: info.size,
            });
        }
        self.remember(name, info.size, info.block_count);
        Ok(info.block_count)
    }

    fn hidden(name: &str) -> bool {
        name.split('/').any(|c| c.starts_with('.'))
    }
}

fn info_from_headers(
    name: &str,
    p: &impl BlobClientGetPropertiesResultHeaders,
) -> azure_core::Result<BlobInfo> {
    let size = p.content_length()?.unwrap_or(0);
    let append = matches!(p.blob_type()?, Some(BlobType::AppendBlob));
    let block_count = if append {
        p.blob_committed_block_count()?.unwrap_or(0).max(0) as u64
    } else {
        // A block blob written by `put` counts as one block, as on the fs
        // store.
        u64::from(size > 0)
    };
    Ok(BlobInfo {
        name: name.to_owned(),
        size,
        block_count,
        sealed: p.is_sealed()?.unwrap_or(false),
    })
}

#[async_trait]
impl BlobStore for AzureBlobStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn max_block_size(&self) -> usize {
        self.inner.opts.max_block_size
    }

    fn max_blocks(&self) -> u64 {
        self.inner.opts.max_blocks
    }

    fn truncates(&self) -> bool {
        false
    }

    async fn create(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let client = self.inner.once.blob_client(name).append_blob_client();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let a = self
            .attempt("create", name, || {
                client.create(Some(AppendBlobClientCreateOptions {
                    if_none_match: Some(Etag::from("*")),
                    metadata: Some(HashMap::from([(WRITE_ID.to_owned(), id.clone())])),
                    ..Default::default()
                }))
            })
            .await;
        match a.result {
            Ok(_) => {
                self.remember(name, 0, 0);
                Ok(())
            }
            Err(e) if matches!(code_of(&e), Some("BlobAlreadyExists" | "ConditionNotMet")) => {
                if a.uncertain && self.written_by(name, &id).await? {
                    self.remember(name, 0, 0);
                    return Ok(());
                }
                Err(StoreError::AlreadyExists {
                    name: name.to_owned(),
                })
            }
            Err(e) => {
                if a.uncertain && self.written_by(name, &id).await? {
                    self.remember(name, 0, 0);
                    return Ok(());
                }
                Err(self.err("create", name, &e))
            }
        }
    }

    async fn append(
        &self,
        name: &str,
        expected_offset: u64,
        block: &[u8],
    ) -> Result<u64, StoreError> {
        validate_name(name)?;
        validate_block(block, self.inner.opts.max_block_size)?;
        let blocks = self.blocks_at(name, expected_offset).await?;
        let max_blocks = self.inner.opts.max_blocks;
        if blocks >= max_blocks {
            return Err(StoreError::BlockLimit {
                name: name.to_owned(),
                limit: max_blocks,
            });
        }
        let end = expected_offset + block.len() as u64;
        let client = self.inner.once.blob_client(name).append_blob_client();
        let body = azure_core::Bytes::copy_from_slice(block);
        let a = self
            .attempt("append to", name, || {
                client.append_block(
                    <RequestContent<_, _> as From<azure_core::Bytes>>::from(body.clone()),
                    body.len() as u64,
                    Some(AppendBlobClientAppendBlockOptions {
                        append_position: Some(expected_offset as i64),
                        ..Default::default()
                    }),
                )
            })
            .await;
        let e = match a.result {
            Ok(r) => {
                let count = r
                    .blob_committed_block_count()
                    .ok()
                    .flatten()
                    .map_or(blocks + 1, |c| c.max(0) as u64);
                self.remember(name, end, count);
                return Ok(end);
            }
            Err(e) => e,
        };
        let lost_track = || {
            self.inner.blocks.lock().unwrap().remove(name);
        };
        // Whatever the retry was told, a first attempt whose answer was lost
        // may have landed: a block limit or seal met by the retry can be the
        // landed block's own doing.
        let (status, code) = (status_of(&e), code_of(&e));
        if a.uncertain
            && matches!(
                (status, code),
                (Some(409), Some("BlockCountExceedsLimit" | "BlobIsSealed"))
            )
        {
            lost_track();
            if let Some(end) = self.resolve_append(name, expected_offset, block).await? {
                debug!(blob = %name, offset = expected_offset, "an append retried after an unknown outcome had landed");
                return Ok(end);
            }
        }
        match (status, code) {
            (Some(412), Some("AppendPositionConditionNotMet")) => {
                lost_track();
                if a.uncertain {
                    // An earlier attempt may be what moved the position.
                    if let Some(end) = self.resolve_append(name, expected_offset, block).await? {
                        debug!(blob = %name, offset = expected_offset, "an append retried after an unknown outcome had landed");
                        return Ok(end);
                    }
                }
                let actual = self.info(name).await?.size;
                Err(StoreError::OffsetMismatch {
                    name: name.to_owned(),
                    expected: expected_offset,
                    actual,
                })
            }
            (Some(409), Some("BlockCountExceedsLimit")) => Err(StoreError::BlockLimit {
                name: name.to_owned(),
                limit: max_blocks.min(AZURE_MAX_BLOCKS),
            }),
            (Some(409), Some("BlobIsSealed")) => Err(StoreError::Sealed {
                name: name.to_owned(),
            }),
            (Some(404), _) => Err(StoreError::NotFound {
                name: name.to_owned(),
            }),
            _ => {
                lost_track();
                if a.uncertain {
                    if let Some(end) = self.resolve_append(name, expected_offset, block).await? {
                        return Ok(end);
                    }
                }
                Err(self.err("append to", name, &e))
            }
        }
    }

    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        validate_name(name)?;
        let end = offset.saturating_add(len);
        let out_of_range = |size| StoreError::OutOfRange {
            name: name.to_owned(),
            offset,
            end,
            size,
        };
        if len == 0 || len > CHECK_SIZE_ABOVE || end == u64::MAX {
            let size = self.info(name).await?.size;
            if end > size {
                return Err(out_of_range(size));
            }
            if len == 0 {
                return Ok(Vec::new());
            }
        }
        let client = self.inner.retrying.blob_client(name);
        // One ranged GET whose body streams straight into the buffer: the
        // SDK's partitioned download would pin the ETag across partitions,
        // and an append blob's ETag changes with every append.
        let mut buf = vec![0u8; len as usize];
        let one = NonZero::new(1).unwrap();
        let whole = NonZero::new(len as usize).unwrap();
        let r = &self.inner.opts.retry;
        let mut retry = 0;
        let got = loop {
            // The pipeline retries failed requests; this loop retries a body
            // that broke off mid-stream.
            let res = client
                .download_into(
                    &mut buf,
                    Some(BlobClientDownloadOptions {
                        range: Some((offset..end).into()),
                        parallel: Some(one),
                        partition_size: Some(whole),
                        ..Default::default()
                    }),
                )
                .await;
            match res {
                Ok(d) => break d.len,
                Err(e) if matches!(e.kind(), ErrorKind::Io) && retry < r.max_retries => {
                    warn!(blob = %name, offset, len, error = %self.inner.redactor.redact(&describe(&e)), "read broke off; retrying");
                    tokio::time::sleep(backoff(r, retry)).await;
                    retry += 1;
                }
                Err(e) if status_of(&e) == Some(404) => {
                    return Err(StoreError::NotFound {
                        name: name.to_owned(),
                    })
                }
                Err(e) => {
                    // 416, or the SDK's own trouble with a range past the
                    // end (an empty blob answers with no range at all):
                    // the size says whether the read was out of range.
                    let size = self.info(name).await?.size;
                    if end > size {
                        return Err(out_of_range(size));
                    }
                    return Err(self.err("read", name, &e));
                }
            }
        };
        if got as u64 != len {
            return Err(out_of_range(self.info(name).await?.size));
        }
        Ok(buf)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError> {
        let mut pager = self
            .inner
            .retrying
            .list_blobs(Some(BlobContainerClientListBlobsOptions {
                prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
                ..Default::default()
            }))
            .map_err(|e| self.err("list", prefix, &e))?;
        let mut out = Vec::new();
        let mut appendable = Vec::new();
        while let Some(item) = pager
            .try_next()
            .await
            .map_err(|e| self.err("list", prefix, &e))?
        {
            let Some(name) = item.name else { continue };
            if Self::hidden(&name) {
                continue;
            }
            let p = item.properties.unwrap_or_default();
            if matches!(p.blob_type, Some(BlobType::AppendBlob)) {
                // Another tool's blob with a name this store would not
                // write cannot be asked about by name; it is no blob of
                // ours, and must not make the whole listing fail.
                if validate_name(&name).is_err() {
                    debug!(blob = %name, "listing skips an append blob with a name outside this store's rules");
                    continue;
                }
                appendable.push(name);
                continue;
            }
            let size = p.content_length.unwrap_or(0);
            out.push(BlobInfo {
                name,
                size,
                block_count: u64::from(size > 0),
                sealed: p.is_sealed.unwrap_or(false),
            });
        }
        // List Blobs does not report committed block counts: ask each
        // append blob (a ledger has one per segment), several at a time.
        let infos: Vec<Result<BlobInfo, StoreError>> = futures::stream::iter(appendable)
            .map(|name| async move { self.info(&name).await })
            .buffered(self.inner.opts.list_concurrency.max(1))
            .collect()
            .await;
        for info in infos {
            match info {
                Ok(i) => out.push(i),
                // Deleted between listing and asking.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn info(&self, name: &str) -> Result<BlobInfo, StoreError> {
        validate_name(name)?;
        Ok(self.properties(name).await?.0)
    }

    async fn seal(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let res = self
            .inner
            .retrying
            .blob_client(name)
            .append_blob_client()
            .seal(None)
            .await;
        self.inner.blocks.lock().unwrap().remove(name);
        match res {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(StoreError::NotFound {
                name: name.to_owned(),
            }),
            Err(e) => Err(self.err("seal", name, &e)),
        }
    }

    /// One Get Blob Properties for the length and ETag, then Append Blob
    /// Seal conditional on both (`If-Match` and the append-position
    /// condition; Azurite checks only the first): an append by anyone
    /// between the two changes the ETag, and the seal is refused.
    async fn seal_at(&self, name: &str, expected_len: u64) -> Result<(), StoreError> {
        validate_name(name)?;
        let client = self.inner.retrying.blob_client(name);
        let not_found = || StoreError::NotFound {
            name: name.to_owned(),
        };
        let (info, etag) = self.properties(name).await?;
        let mismatch = |actual| StoreError::OffsetMismatch {
            name: name.to_owned(),
            expected: expected_len,
            actual,
        };
        if info.size != expected_len {
            return Err(mismatch(info.size));
        }
        if info.sealed {
            return Ok(());
        }
        let res = client
            .append_blob_client()
            .seal(Some(AppendBlobClientSealOptions {
                append_position: Some(expected_len as i64),
                if_match: etag,
                ..Default::default()
            }))
            .await;
        self.inner.blocks.lock().unwrap().remove(name);
        match res {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(not_found()),
            // The blob changed since it was looked at: appended to (by
            // another writer), or sealed (perhaps by this very seal, whose
            // answer was lost and which the pipeline sent again).
            Err(e) if status_of(&e) == Some(412) => {
                let now = self.info(name).await?;
                if now.size != expected_len {
                    Err(mismatch(now.size))
                } else if now.sealed {
                    Ok(())
                } else {
                    Err(self.err("seal", name, &e))
                }
            }
            Err(e) => Err(self.err("seal", name, &e)),
        }
    }

    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        validate_name(name)?;
        let client = self.inner.once.blob_client(name).block_blob_client();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let body = azure_core::Bytes::copy_from_slice(data);
        // One Put Blob, never staged blocks: atomic, and the If-None-Match
        // condition applies to the whole.
        let whole = NonZero::new((data.len() as u64).max(1)).unwrap();
        let a = self
            .attempt("put", name, || {
                client.upload(
                    <RequestContent<_, _> as From<azure_core::Bytes>>::from(body.clone()),
                    Some(BlockBlobClientUploadOptions {
                        if_none_match: Some(Etag::from("*")),
                        metadata: Some(HashMap::from([(WRITE_ID.to_owned(), id.clone())])),
                        partition_size: Some(whole),
                        parallel: NonZero::new(1),
                        ..Default::default()
                    }),
                )
            })
            .await;
        match a.result {
            Ok(_) => Ok(()),
            Err(e) => {
                if a.uncertain && self.written_by(name, &id).await? {
                    return Ok(());
                }
                match code_of(&e) {
                    Some("BlobAlreadyExists" | "ConditionNotMet") => {
                        Err(StoreError::AlreadyExists {
                            name: name.to_owned(),
                        })
                    }
                    _ => Err(self.err("put", name, &e)),
                }
            }
        }
    }

    /// Append blobs hold what was appended and nothing ahead of it.
    async fn trim(&self, name: &str, len: u64) -> Result<(), StoreError> {
        let _ = (name, len);
        Ok(())
    }

    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        validate_name(name)?;
        // The same answer as the fs store for a blob that is not there.
        self.info(name).await?;
        Err(StoreError::Unsupported(format!(
            "cannot cut {name} back to {len} bytes: Azure append blobs cannot be truncated, and need not be, since an Append Block is atomic and cannot leave a torn tail; a damaged tail there is not a crash artefact"
        )))
    }

    /// Get Blob Properties for the blob's ETag, then Delete Blob with
    /// `If-Match` on it: every attempt deletes that blob and no other. An
    /// attempt held up on its way, reaching the service after its retry
    /// deleted the blob and after a new one of the same name was put (the
    /// writer replaces a cache so: delete, then put), is refused by the
    /// service instead of deleting the new blob.
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let not_found = || StoreError::NotFound {
            name: name.to_owned(),
        };
        let (_, etag) = self.properties(name).await?;
        let client = self.inner.once.blob_client(name);
        let a = self
            .attempt("delete", name, || {
                client.delete(Some(BlobClientDeleteOptions {
                    if_match: etag.clone(),
                    ..Default::default()
                }))
            })
            .await;
        self.inner.blocks.lock().unwrap().remove(name);
        match a.result {
            Ok(_) => Ok(()),
            // The blob looked at is gone: "not found", or "condition not
            // met" where another of that name was put since. After an
            // attempt that may have landed, that is this delete's doing.
            Err(e) if matches!(status_of(&e), Some(404 | 412)) && a.uncertain => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404 | 412)) => Err(not_found()),
            Err(e) => Err(self.err("delete", name, &e)),
        }
    }

    async fn lock(&self, name: &str) -> Result<Box<dyn WriterLock>, StoreError> {
        validate_name(name)?;
        let blob = format!("{LOCK_PREFIX}{name}");
        let key = format!("{}/{blob}", self.inner.location);
        // A lease this process released a moment ago (a writer closed and
        // the ledger is reopened) may still be on its way to the service.
        lease::wait_for_release(&key, Duration::from_secs(10)).await;
        // On the lease runtime, with the lease's own connections, like
        // every renewal after it (see `Inner::leasing`).
        let store = self.clone();
        let lock_name = name.to_owned();
        let (client, lease_id, sent) = lease::on_lease_runtime(name, async move {
            let name = lock_name.as_str();
            let client = store.inner.leasing.blob_client(&blob);
            match client
                .block_blob_client()
                .upload(
                    RequestContent::from(Vec::new()),
                    Some(BlockBlobClientUploadOptions {
                        if_none_match: Some(Etag::from("*")),
                        ..Default::default()
                    }),
                )
                .await
            {
                Ok(_) => {}
                // Exists, and maybe leased (a leased blob answers a write
                // without its lease id with 412).
                Err(e) if matches!(status_of(&e), Some(409 | 412)) => {}
                Err(e) => return Err(store.err("create lock blob", &blob, &e)),
            }
            // A proposed id makes the acquire idempotent: if the pipeline
            // retries after an attempt that landed, acquiring again with the
            // lease's own id succeeds.
            let proposed = uuid::Uuid::new_v4().to_string();
            let sent = Instant::now();
            let res = client
                .acquire_lease(
                    store.inner.opts.lease_duration.as_secs() as i32,
                    Some(BlobClientAcquireLeaseOptions {
                        proposed_lease_id: Some(proposed.clone()),
                        ..Default::default()
                    }),
                )
                .await;
            let lease_id = match res {
                Ok(r) => r.lease_id().ok().flatten().unwrap_or(proposed),
                Err(e) if code_of(&e) == Some("LeaseAlreadyPresent") => {
                    // Whether the holder's lease can end by itself: a
                    // writer's is fixed, an operator's may be infinite.
                    let infinite = client
                        .get_properties(None)
                        .await
                        .is_ok_and(|p| matches!(p.duration(), Ok(Some(LeaseDuration::Infinite))));
                    return Err(StoreError::Locked {
                        what: name.to_owned(),
                        expiry: if infinite {
                            LockExpiry::Never
                        } else {
                            LockExpiry::Lease {
                                at_most_secs: MAX_LEASE.as_secs(),
                            }
                        },
                    });
                }
                Err(e) => {
                    // The acquire may have landed though no answer came
                    // back: its lease would lock every writer out until it
                    // ran out. A release under our id frees it if so, and
                    // changes nothing if not (another id, or no lease).
                    if let Err(r) = client.release_lease(proposed, None).await {
                        debug!(lock = %name, error = %store.inner.redactor.redact(&describe(&r)), "no lease of ours to release after a failed acquire");
                    }
                    return Err(store.err("acquire writer lease on", &blob, &e));
                }
            };
            Ok((client, lease_id, sent))
        })
        .await?;
        debug!(lock = %name, "acquired writer lease");
        Ok(Box::new(lease::Lease::start(
            name.to_owned(),
            key,
            client,
            lease_id,
            sent,
            &self.inner.opts,
            self.inner.redactor.clone(),
        )))
    }
}
