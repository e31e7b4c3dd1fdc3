//! The Azure queue store against Azurite (or a real account): the queue
//! conformance suite (`conformance/queue.rs`, the same checks the local
//! store passes), then what only Azure has: faults injected by a proxy
//! between the client and the service, and credentials kept out of errors.
//!
//! Nothing here starts Azurite; `support/azure.rs` says how the tests find
//! an account, and that they fail without one unless
//! `BI_LEDGER_SKIP_AZURE=1`. Every check uses queues of its own, with
//! unique names, so they share the account.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bi_ledger::backend::azure::queue::AzureQueueError;
use bi_ledger::backend::azure::{
    AzureAccount, AzureQueueOptions, AzureQueueStore, ConnectionInfo, RetrySettings,
};
use bi_ledger::backend::queue::{QueueError, QueueStore, SendOptions};

#[path = "support/azure.rs"]
mod azure_env;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "conformance/queue.rs"]
mod queue;

use azure_env::account_or_skip;
use proxy::{start_proxy, upstream_of, Fault, Faults};

// ------------------------------------------------------------ conformance

/// Every `open` is a new store (its own connection pool) on the account,
/// as a restarted process would have.
struct Azure {
    account: ConnectionInfo,
}

impl queue::Backend for Azure {
    fn open(&self) -> Arc<dyn QueueStore> {
        Arc::new(
            AzureQueueStore::from_connection_info(self.account.clone(), Default::default())
                .unwrap(),
        )
    }
}

queue::queue_conformance_tests!(
    azure_queue,
    Azure {
        account: account_or_skip!()
    }
);

// ------------------------------------------------------------ helpers

fn unique(tag: &str) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("az-{tag}-{}", &r[..12])
}

fn quick_retries() -> AzureQueueOptions {
    AzureQueueOptions {
        retry: RetrySettings {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..RetrySettings::default()
        },
        ..AzureQueueOptions::default()
    }
}

/// A store whose requests go through a fault-injecting proxy, with short
/// retry delays, and a queue made for the test.
async fn proxied(account: &ConnectionInfo, tag: &str) -> (AzureQueueStore, String, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let endpoint = account.queue_endpoint().unwrap().clone();
    let port = start_proxy(upstream_of(&endpoint), faults.clone()).await;
    let mut via = account.clone();
    let mut ep = endpoint;
    ep.set_port(Some(port)).unwrap();
    via.queue_endpoint = Some(ep);
    let s = AzureQueueStore::from_connection_info(via, quick_retries()).unwrap();
    let q = unique(tag);
    s.create_queue(&q).await.unwrap();
    (s, q, faults)
}

fn injected(f: &Faults) -> usize {
    f.injected.load(Ordering::Relaxed)
}

// ------------------------------------------------------- injected faults

/// 503s to every kind of call are retried, and a send that met them is
/// stored once: a 503 the service (here the proxy) gave was not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_without_duplicates() {
    let account = account_or_skip!();
    let (s, q, faults) = proxied(&account, "f503").await;
    let vis = Duration::from_secs(30);

    faults.add("POST /", Fault::Unavailable, 2);
    let sent = s.send(&q, "once", &SendOptions::default()).await.unwrap();
    assert_eq!(injected(&faults), 2);
    faults.add("comp=metadata", Fault::Unavailable, 2);
    assert_eq!(s.approximate_len(&q).await.unwrap(), 1, "sent exactly once");
    faults.add("peekonly=true", Fault::Unavailable, 2);
    assert_eq!(s.peek(&q, 32).await.unwrap().len(), 1);
    faults.add("visibilitytimeout=30", Fault::Unavailable, 2);
    let got = s.receive(&q, 32, vis).await.unwrap();
    assert_eq!(got.len(), 1, "one message, delivered once");
    assert_eq!(
        (got[0].id.as_str(), got[0].dequeue_count),
        (sent.id.as_str(), 1)
    );
    faults.add("PUT /", Fault::Unavailable, 2);
    let up = s
        .update_visibility(&q, &sent.id, &got[0].pop_receipt, vis)
        .await
        .unwrap();
    faults.add("DELETE /", Fault::Unavailable, 2);
    s.delete(&q, &sent.id, &up.pop_receipt).await.unwrap();
    assert_eq!(injected(&faults), 12);
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);

    // The retries have limits: a service that stays unavailable is an
    // error naming the queue, the operation and the status.
    faults.add("POST /", Fault::Unavailable, 100);
    let err = s
        .send(&q, "never", &SendOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("send a message") && text.contains(&q) && text.contains("503"),
        "{text}"
    );
    match &err {
        QueueError::Backend { source, .. } => match source.downcast_ref::<AzureQueueError>() {
            Some(AzureQueueError::Service { status, .. }) => assert_eq!(*status, Some(503)),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let retries = quick_retries().retry.max_retries as usize;
    assert_eq!(
        injected(&faults),
        12 + retries + 1,
        "first try and every retry"
    );
}

/// The answer to a delete is lost after the service applied it: the retry
/// finds the message (or queue) gone, which is our own doing, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_to_a_delete_is_success() {
    let account = account_or_skip!();
    let (s, q, faults) = proxied(&account, "fdrop").await;
    s.send(&q, "m", &SendOptions::default()).await.unwrap();
    let m = s
        .receive(&q, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .unwrap();
    faults.add("DELETE /", Fault::DropAfterForward, 1);
    s.delete(&q, &m.id, &m.pop_receipt).await.unwrap();
    assert_eq!(injected(&faults), 1);
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
    // Without a lost answer, the same delete is refused: gone is gone.
    assert!(matches!(
        s.delete(&q, &m.id, &m.pop_receipt).await,
        Err(QueueError::MessageNotFound { .. })
    ));

    faults.add("DELETE /", Fault::DropAfterForward, 1);
    s.delete_queue(&q).await.unwrap();
    assert_eq!(injected(&faults), 2);
    assert!(matches!(
        s.delete_queue(&q).await,
        Err(QueueError::QueueNotFound { .. })
    ));
}

/// A send whose answer is lost after the service stored it is retried:
/// the caller gets `Ok`, and the message is there twice. This is the
/// at-least-once half of the contract (Azure has no idempotent Put
/// Message); losing the notification instead would break it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_to_a_send_is_delivered_at_least_once() {
    let account = account_or_skip!();
    let (s, q, faults) = proxied(&account, "fsend").await;
    faults.add("POST /", Fault::DropAfterForward, 1);
    let sent = s
        .send(&q, "maybe twice", &SendOptions::default())
        .await
        .unwrap();
    assert_eq!(injected(&faults), 1);
    let got = s.receive(&q, 32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 2, "the lost attempt and its retry");
    assert!(got.iter().all(|m| m.body == "maybe twice"));
    assert!(got.iter().any(|m| m.id == sent.id));
    s.delete_queue(&q).await.unwrap();
}

// ------------------------------------------------------------- secrets

/// A wrong key is a clear error (403, with the queue and operation), and
/// neither the key nor a SAS signature appears in any error or in Debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_clear_and_secret() {
    let account = account_or_skip!();
    let endpoint = account
        .queue_endpoint()
        .unwrap()
        .as_str()
        .trim_end_matches('/');
    let wrong_key = "d3Jvbmcta2V5LXRoYXQtaXMtbm90LXRoZS1hY2NvdW50cy1rZXk=";
    let name = account.account.clone().unwrap_or_default();
    let cs = format!("AccountName={name};AccountKey={wrong_key};QueueEndpoint={endpoint}");
    let s = AzureQueueStore::from_connection_string(&cs, quick_retries()).unwrap();
    let q = unique("creds");
    let err = s.create_queue(&q).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("403"), "{text}");
    assert!(
        text.contains("create a queue") && text.contains(&q),
        "{text}"
    );
    assert!(text.contains("account key"), "says what to check: {text}");
    assert!(!text.contains(wrong_key), "{text}");
    assert!(!format!("{s:?}").contains(wrong_key));

    // A SAS and a service that cannot be reached: the transport error may
    // name the URL, never the signature.
    let sig = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D";
    let cs = format!(
        "QueueEndpoint=http://127.0.0.1:9/{name};BlobEndpoint=http://127.0.0.1:9/{name};SharedAccessSignature=sv=2022-11-02&ss=q&srt=sco&sp=rwdlacup&se=2099-01-01&sig={sig}"
    );
    let opts = AzureQueueOptions {
        retry: RetrySettings {
            max_retries: 1,
            ..quick_retries().retry
        },
        ..quick_retries()
    };
    let s = AzureQueueStore::from_connection_string(&cs, opts).unwrap();
    let err = s.send(&q, "x", &SendOptions::default()).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("send a message") && text.contains(&q),
        "{text}"
    );
    assert!(!text.contains(sig), "{text}");
    assert!(!text.contains("c2VjcmV0LXNpZ25hdHVyZQ=="), "{text}");

    let s = AzureQueueStore::from_connection_info(account.clone(), Default::default()).unwrap();
    assert!(!format!("{s:?}").contains(bi_ledger::backend::azure::config::DEV_KEY));
}

/// The configuration errors say which setting is missing.
#[test]
fn configuration_errors_name_the_setting() {
    // A blob-only SAS string names no queue service.
    let cs = "BlobEndpoint=http://127.0.0.1:9/acct;SharedAccessSignature=sv=1&sig=abc";
    let err = AzureQueueStore::from_connection_string(cs, Default::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("QueueEndpoint"), "{text}");
    assert!(!text.contains("sig=abc"), "{text}");
    let err =
        AzureQueueStore::from_connection_string("AccountName=a", Default::default()).unwrap_err();
    assert!(err.to_string().contains("AccountKey"), "{err}");
}

/// The account the CLI resolves (`AzureAccount`) opens a queue store too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_from_an_azure_account() {
    let account = account_or_skip!();
    let s =
        AzureQueueStore::open(&AzureAccount::Keyed(Box::new(account)), Default::default()).unwrap();
    let q = unique("account");
    s.create_queue(&q).await.unwrap();
    s.send(&q, "via account", &SendOptions::default())
        .await
        .unwrap();
    assert_eq!(s.peek(&q, 1).await.unwrap()[0].body, "via account");
    s.delete_queue(&q).await.unwrap();
}
