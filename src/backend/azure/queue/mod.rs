//! The Azure queue store: [`QueueStore`] on Azure Queue Storage, through
//! Microsoft's `azure_storage_queue` client on the same connection setup,
//! signing, retries and redaction as the blob store (`../transport.rs`).
//! `../README.md` says what is atomic, and what a crash between receive and
//! delete leaves.
//!
//! Retries: every call goes through a pipeline without a retry policy and
//! is retried here (`transport::attempt`), which knows whether a failed
//! attempt may have been applied. After such an attempt a "not found" to a
//! delete is our own earlier delete, and is success. A send or receive
//! whose outcome is unknown is simply retried: a send may then be stored
//! twice, and a receive may hide messages nobody got until their timeout
//! passes; both are within at-least-once delivery, which consumers must
//! handle anyway, and better than losing a notification.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{DeserializeWith, RequestContent, Response, RetryOptions, Url, XmlFormat};
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions,
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions,
};
use azure_storage_queue::{QueueClient, QueueServiceClient, QueueServiceClientOptions};
use tracing::{debug, warn};

use super::account::{sibling_endpoint, AzureAccount};
use super::auth::Redactor;
use super::config::{ConnectionInfo, Credential, CONNECTION_STRING_ENV};
use super::transport::{attempt, describe, Attempted, Connection, RetrySettings};
use crate::backend::queue::{
    validate_count, validate_message, validate_queue_name, validate_receive, validate_send_options,
    validate_update_visibility, PeekedMessage, QueueError, QueueStore, ReceivedMessage,
    SendOptions, SentMessage, VisibilityUpdate,
};

mod wire;

pub use wire::AzureQueueError;
use wire::{chrono_time, expiry, header_str, header_time, message_xml, plausible_id, Target};

const CONFIGURE: &str = "configure the Azure queue store";

#[derive(Clone, Debug)]
pub struct AzureQueueOptions {
    pub retry: RetrySettings,
    pub connect_timeout: Duration,
    /// Longest wait for any read on a connection.
    pub read_timeout: Duration,
}

impl Default for AzureQueueOptions {
    fn default() -> Self {
        AzureQueueOptions {
            retry: RetrySettings::default(),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// The queues of one Azure storage account as a [`QueueStore`]. Cheap to
/// clone; clones share one connection pool.
#[derive(Clone)]
pub struct AzureQueueStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// No retry policy: `attempt` retries.
    service: QueueServiceClient,
    /// The queue service URL, for logs and errors.
    location: String,
    opts: AzureQueueOptions,
    redactor: Redactor,
}

impl fmt::Debug for AzureQueueStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureQueueStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

impl AzureQueueStore {
    /// The account that [`CONNECTION_STRING_ENV`] names. No I/O: a wrong
    /// key or address shows at the first call.
    pub fn from_env(opts: AzureQueueOptions) -> Result<Self, QueueError> {
        let info = ConnectionInfo::from_env()
            .map_err(|e| wire::config(CONFIGURE, CONNECTION_STRING_ENV, e.0))?;
        Self::from_connection_info(info, opts)
    }

    /// The account a connection string names; `UseDevelopmentStorage=true`
    /// is Azurite.
    pub fn from_connection_string(cs: &str, opts: AzureQueueOptions) -> Result<Self, QueueError> {
        let info = ConnectionInfo::parse(cs)
            .map_err(|e| wire::config(CONFIGURE, "connection string", e.0))?;
        Self::from_connection_info(info, opts)
    }

    /// The queue service of `info` (its `QueueEndpoint`, or the one derived
    /// from the account name), signed with its key or SAS.
    pub fn from_connection_info(
        info: ConnectionInfo,
        opts: AzureQueueOptions,
    ) -> Result<Self, QueueError> {
        let endpoint = info
            .queue_endpoint()
            .map_err(|e| wire::config(CONFIGURE, "QueueEndpoint", e.0))?
            .clone();
        let secrets = info.secrets();
        Self::build(endpoint, Some(info.credential), secrets, None, opts)
    }

    /// With an Entra ID credential (e.g. `azure_identity`'s managed or
    /// workload identity). `queue_endpoint` is the account's queue service
    /// URL, which must be https.
    pub fn with_token_credential(
        queue_endpoint: Url,
        credential: Arc<dyn TokenCredential>,
        opts: AzureQueueOptions,
    ) -> Result<Self, QueueError> {
        Self::build(queue_endpoint, None, Vec::new(), Some(credential), opts)
    }

    /// The queue service of `account` (see [`AzureAccount::from_env`]). For
    /// Entra ID the queue service URL is the blob one with `queue` for
    /// `blob` in the host name (`acct.blob.core.windows.net` →
    /// `acct.queue.core.windows.net`).
    pub fn open(account: &AzureAccount, opts: AzureQueueOptions) -> Result<Self, QueueError> {
        match account {
            AzureAccount::Keyed(info) => Self::from_connection_info((**info).clone(), opts),
            AzureAccount::Entra {
                blob_endpoint,
                credential,
                ..
            } => {
                let endpoint = sibling_endpoint(blob_endpoint, "queue").ok_or_else(|| {
                    wire::config(
                        CONFIGURE,
                        "account URL",
                        format!("cannot tell the queue service of {blob_endpoint} (expected https://ACCOUNT.blob.SUFFIX)"),
                    )
                })?;
                Self::with_token_credential(endpoint, credential.clone(), opts)
            }
        }
    }

    fn build(
        mut endpoint: Url,
        signing: Option<Credential>,
        secrets: Vec<String>,
        credential: Option<Arc<dyn TokenCredential>>,
        opts: AzureQueueOptions,
    ) -> Result<Self, QueueError> {
        endpoint.set_query(None);
        // The SDK appends the queue name as a path segment: a trailing `/`
        // would leave an empty segment before it, which the service refuses.
        if let Ok(mut segments) = endpoint.path_segments_mut() {
            segments.pop_if_empty();
        }
        let location = endpoint.to_string();
        let conn = Connection::new(signing, secrets, opts.connect_timeout, opts.read_timeout)
            .map_err(|e| wire::config(CONFIGURE, "HTTP client", e))?;
        let options = QueueServiceClientOptions {
            client_options: conn.client_options(RetryOptions::none()),
            ..Default::default()
        };
        let service =
            QueueServiceClient::new(endpoint, credential, Some(options)).map_err(|e| {
                wire::config(
                    CONFIGURE,
                    "queue service client",
                    conn.redactor.redact(&describe(&e)),
                )
            })?;
        Ok(AzureQueueStore {
            inner: Arc::new(Inner {
                service,
                location,
                opts,
                redactor: conn.redactor,
            }),
        })
    }

    pub fn options(&self) -> &AzureQueueOptions {
        &self.inner.opts
    }

    /// The SDK's own client for `queue`, on this store's connection (the
    /// same HTTP client and signing, no retry policy and none of this
    /// store's checks): for what the trait does not cover, and to measure
    /// what this layer adds (`benches/azure_queue.rs`).
    pub fn sdk_client(&self, queue: &str) -> Result<QueueClient, QueueError> {
        validate_queue_name(queue)?;
        self.client(&self.target("make a queue client", queue, None))
    }

    fn target<'a>(&'a self, op: &'static str, queue: &'a str, id: Option<&'a str>) -> Target<'a> {
        Target {
            op,
            queue,
            id,
            location: &self.inner.location,
        }
    }

    fn client(&self, t: &Target<'_>) -> Result<QueueClient, QueueError> {
        self.inner
            .service
            .queue_client(t.queue)
            .map_err(|e| self.error(t, &e))
    }

    fn error(&self, t: &Target<'_>, e: &azure_core::Error) -> QueueError {
        t.error(e, self.inner.redactor.redact(&describe(e)))
    }

    /// `f` with retries; the error already mapped.
    async fn call<T, F, Fut>(&self, t: &Target<'_>, f: F) -> Attempted<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = azure_core::Result<T>>,
    {
        let name = match t.id {
            Some(id) => format!("{}/{id}", t.queue),
            None => t.queue.to_owned(),
        };
        attempt(&self.inner.opts.retry, &self.inner.redactor, t.op, &name, f).await
    }

    /// `f` with retries, its answer read into its model.
    async fn fetch<M, F, Fut>(&self, t: &Target<'_>, f: F) -> Result<M, QueueError>
    where
        M: DeserializeWith<XmlFormat>,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = azure_core::Result<Response<M, XmlFormat>>>,
    {
        self.call(t, f)
            .await
            .result
            .and_then(|r| r.into_model())
            .map_err(|e| self.error(t, &e))
    }

    /// For a message id that cannot exist: the answer the service would
    /// give, without putting it in a URL.
    async fn no_such_message(&self, t: &Target<'_>) -> QueueError {
        let client = match self.client(t) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // The queue's existence decides, as it does on the service.
        match self.call(t, || client.get_properties(None)).await.result {
            Ok(_) => QueueError::MessageNotFound {
                queue: t.queue.to_owned(),
                id: t.id.unwrap_or_default().to_owned(),
            },
            Err(e) => self.error(t, &e),
        }
    }
}

#[async_trait]
impl QueueStore for AzureQueueStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    async fn create_queue(&self, queue: &str) -> Result<(), QueueError> {
        validate_queue_name(queue)?;
        let t = self.target("create a queue", queue, None);
        let client = self.client(&t)?;
        // 201 made, 204 there already (with the same, empty, metadata).
        match self.call(&t, || client.create(None)).await.result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(&t, &e)),
        }
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        validate_queue_name(queue)?;
        let t = self.target("delete a queue", queue, None);
        let client = self.client(&t)?;
        let a = self.call(&t, || client.delete(None)).await;
        match a.result {
            Ok(_) => Ok(()),
            Err(e) => match self.error(&t, &e) {
                // After an attempt that may have landed, "not found" is ours.
                QueueError::QueueNotFound { .. } if a.uncertain => Ok(()),
                err => Err(err),
            },
        }
    }

    async fn send(
        &self,
        queue: &str,
        body: &str,
        opts: &SendOptions,
    ) -> Result<SentMessage, QueueError> {
        validate_queue_name(queue)?;
        validate_message(body)?;
        let (delay_s, ttl_s) = validate_send_options(opts)?;
        let t = self.target("send a message", queue, None);
        let client = self.client(&t)?;
        // Both fit: the validator caps them at 7 days and `MAX_TTL`.
        let secs = |s: u64| i32::try_from(s).unwrap_or(i32::MAX);
        let options = QueueClientSendMessageOptions {
            visibility_timeout: Some(secs(delay_s)),
            // -1: never expires (service version 2017-07-29 and later).
            message_time_to_live: Some(ttl_s.map_or(-1, secs)),
            ..Default::default()
        };
        let xml = azure_core::Bytes::from(message_xml(body));
        let a = self
            .call(&t, || {
                client.send_message(
                    <RequestContent<_, _> as From<azure_core::Bytes>>::from(xml.clone()),
                    Some(options.clone()),
                )
            })
            .await;
        if a.uncertain {
            warn!(queue, "a send was retried after an attempt with an unknown outcome; the message may be stored twice");
        }
        let sent = a
            .result
            .and_then(|r| r.into_model()?.into_message())
            .map_err(|e| self.error(&t, &e))?;
        Ok(SentMessage {
            id: t.field(sent.message_id, "MessageId")?,
            pop_receipt: t.field(sent.pop_receipt, "PopReceipt")?,
            inserted_at: chrono_time(t.field(sent.insertion_time, "InsertionTime")?),
            expires_at: expiry(t.field(sent.expiration_time, "ExpirationTime")?),
            next_visible_at: chrono_time(t.field(sent.time_next_visible, "TimeNextVisible")?),
        })
    }

    async fn receive(
        &self,
        queue: &str,
        max_messages: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        validate_queue_name(queue)?;
        validate_receive(max_messages, visibility_timeout)?;
        let t = self.target("receive messages", queue, None);
        let client = self.client(&t)?;
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max_messages as i32),
            // At most 7 days: validated above.
            visibility_timeout: Some(visibility_timeout.as_secs() as i32),
            ..Default::default()
        };
        let got = self
            .fetch(&t, || client.receive_messages(Some(options.clone())))
            .await?;
        let mut out = Vec::new();
        for m in got.items.unwrap_or_default() {
            out.push(ReceivedMessage {
                id: t.field(m.message_id, "MessageId")?,
                pop_receipt: t.field(m.pop_receipt, "PopReceipt")?,
                dequeue_count: t.field(m.dequeue_count, "DequeueCount")?.max(0) as u64,
                inserted_at: chrono_time(t.field(m.insertion_time, "InsertionTime")?),
                expires_at: expiry(t.field(m.expiration_time, "ExpirationTime")?),
                next_visible_at: chrono_time(t.field(m.time_next_visible, "TimeNextVisible")?),
                // An empty message comes back without its element.
                body: m.message_text.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn update_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        timeout: Duration,
    ) -> Result<VisibilityUpdate, QueueError> {
        validate_queue_name(queue)?;
        validate_update_visibility(timeout)?;
        let t = self.target("update message visibility", queue, Some(id));
        if !plausible_id(id) {
            return Err(self.no_such_message(&t).await);
        }
        let client = self.client(&t)?;
        let secs = timeout.as_secs() as i32; // at most 7 days: validated
        let a = self
            .call(&t, || client.update_message(id, pop_receipt, secs, None))
            .await;
        let r = match a.result {
            Ok(r) => r,
            Err(e) => {
                let err = self.error(&t, &e);
                if a.uncertain && matches!(err, QueueError::PopReceiptMismatch { .. }) {
                    // Our own lost attempt may be what replaced the receipt;
                    // its new receipt is unknown, so the message is lost to
                    // us either way and comes back after the timeout.
                    warn!(queue, id, "visibility update retried after an unknown outcome met a newer pop receipt");
                }
                return Err(err);
            }
        };
        Ok(VisibilityUpdate {
            pop_receipt: header_str(&t, r.headers(), "x-ms-popreceipt")?.to_owned(),
            next_visible_at: header_time(&t, r.headers(), "x-ms-time-next-visible")?,
        })
    }

    async fn delete(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<(), QueueError> {
        validate_queue_name(queue)?;
        let t = self.target("delete a message", queue, Some(id));
        if !plausible_id(id) {
            return Err(self.no_such_message(&t).await);
        }
        let client = self.client(&t)?;
        let a = self
            .call(&t, || client.delete_message(id, pop_receipt, None))
            .await;
        match a.result {
            Ok(_) => Ok(()),
            Err(e) => match self.error(&t, &e) {
                QueueError::MessageNotFound { .. } if a.uncertain => {
                    debug!(queue, id, "delete retried after an unknown outcome found the message gone: taken as ours");
                    Ok(())
                }
                err => Err(err),
            },
        }
    }

    async fn peek(&self, queue: &str, max_messages: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        validate_queue_name(queue)?;
        validate_count(max_messages)?;
        let t = self.target("peek messages", queue, None);
        let client = self.client(&t)?;
        let options = QueueClientPeekMessagesOptions {
            number_of_messages: Some(max_messages as i32),
            ..Default::default()
        };
        let got = self
            .fetch(&t, || client.peek_messages(Some(options.clone())))
            .await?;
        let mut out = Vec::new();
        for m in got.items.unwrap_or_default() {
            out.push(PeekedMessage {
                id: t.field(m.message_id, "MessageId")?,
                dequeue_count: t.field(m.dequeue_count, "DequeueCount")?.max(0) as u64,
                inserted_at: chrono_time(t.field(m.insertion_time, "InsertionTime")?),
                expires_at: expiry(t.field(m.expiration_time, "ExpirationTime")?),
                body: m.message_text.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn approximate_len(&self, queue: &str) -> Result<u64, QueueError> {
        validate_queue_name(queue)?;
        let t = self.target("count messages", queue, None);
        let client = self.client(&t)?;
        let r = self
            .call(&t, || client.get_properties(None))
            .await
            .result
            .map_err(|e| self.error(&t, &e))?;
        let n = r
            .approximate_messages_count()
            .map_err(|e| t.answer(describe(&e)))?;
        Ok(t.field(n, "x-ms-approximate-messages-count")?.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_endpoint_from_blob_endpoint() {
        let blob = Url::parse("https://acct.blob.core.windows.net/").unwrap();
        assert_eq!(
            sibling_endpoint(&blob, "queue").unwrap().as_str(),
            "https://acct.queue.core.windows.net/"
        );
        let azurite = Url::parse("http://127.0.0.1:10000/devstoreaccount1").unwrap();
        assert!(sibling_endpoint(&azurite, "queue").is_none());
    }
}
