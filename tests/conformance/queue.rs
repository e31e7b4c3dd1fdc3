//! The `QueueStore` conformance suite, written once against the trait and
//! run against every implementation (the local redb store here; Azure Queue
//! Storage through Azurite later).
//!
//! A backend plugs in by implementing [`Backend`] and invoking
//! [`queue_conformance_tests!`] once, in a test file that declares this file
//! as `mod queue`:
//!
//! ```ignore
//! #[path = "conformance/queue.rs"]
//! mod queue;
//! queue::queue_conformance_tests!(azure, AzureQueues::from_env());
//! ```
//!
//! That emits one `#[tokio::test]` per check in a module named by the first
//! argument. [`run_all`] runs the same list in one go.
//!
//! Nothing here assumes a local store: every check works in queues of its
//! own with unique names, so checks may share one account; timeouts are 1–2
//! seconds and the checks poll for what should happen instead of sleeping
//! through a worst case. Azure keeps times in whole seconds, so a message
//! hidden for 1 s may take up to about 2 s to come back.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bi_ledger::backend::queue::{
    poison_queue_name, MessageTtl, PeekedMessage, PoisonPolicy, QueueError, QueueStore,
    ReceivedMessage, SendOptions, MAX_MESSAGE_BYTES,
};

/// How the suite gets stores from a backend.
pub trait Backend: Send + Sync {
    /// A store handle on this backend's storage. Handles opened one after
    /// another see the same queues, as a restarted process would. The suite
    /// drops every handle it holds before opening the next, so a backend
    /// may allow only one open at a time (the local store locks its file).
    fn open(&self) -> Arc<dyn QueueStore>;
}

/// The single list of checks: calls `crate::queue::$m!` with `$args` and
/// the names.
macro_rules! for_each_queue_check {
    ($m:ident ! ($($args:tt)*)) => {
        $crate::queue::$m! { $($args)*
            names_are_validated,
            create_is_idempotent_and_missing_queue_is_not_found,
            send_receive_delete,
            text_round_trips_exactly,
            unknown_message_ids_are_not_found,
            visibility_timeout_hides_then_redelivers,
            stale_pop_receipt_cannot_delete,
            update_visibility_moves_the_deadline,
            send_receipt_allows_update_and_delete,
            initial_delay_hides_message,
            expired_messages_are_not_delivered,
            peek_leaves_messages_alone,
            receive_limits,
            oversize_message_refused_and_nothing_sent,
            non_xml_text_refused_and_nothing_sent,
            poison_after_max_dequeues,
            approximate_len_counts_hidden_messages,
            concurrent_consumers_get_each_message_once,
            delete_queue_removes_messages,
            restart_keeps_messages_and_visibility,
        }
    };
}
pub(crate) use for_each_queue_check;

/// Emits one test per check, in `mod $module`, against `$backend` (an
/// expression evaluated afresh in each test). This file must be the
/// crate-level module `queue`.
macro_rules! queue_conformance_tests {
    ($module:ident, $backend:expr) => {
        $crate::queue::for_each_queue_check!(emit_queue_tests!(($module, $backend)));
    };
}
pub(crate) use queue_conformance_tests;

macro_rules! emit_queue_tests {
    (($module:ident, $backend:expr) $($check:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    $crate::queue::$check(&$backend).await;
                }
            )*
        }
    };
}
pub(crate) use emit_queue_tests;

macro_rules! define_run_all {
    (() $($check:ident),* $(,)?) => {
        /// Names of all checks, in the order `run_all` runs them.
        pub const CHECKS: &[&str] = &[$(stringify!($check)),*];

        /// Runs every check in turn against `backend`.
        pub async fn run_all(backend: &dyn Backend) {
            $(
                eprintln!("queue conformance: {}", stringify!($check));
                $check(backend).await;
            )*
        }
    };
}
pub(crate) use define_run_all;

for_each_queue_check!(define_run_all!(()));

// ---------------------------------------------------------------- helpers

const SEC: Duration = Duration::from_secs(1);
/// Longest wait for something that should happen within about 2 s.
const PATIENCE: Duration = Duration::from_secs(8);
const POLL: Duration = Duration::from_millis(100);

/// A queue name no other check or run uses.
fn unique(tag: &str) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("ct-{tag}-{}", &r[..12])
}

/// A fresh, created queue.
async fn fresh(b: &dyn Backend, tag: &str) -> (Arc<dyn QueueStore>, String) {
    let s = b.open();
    let q = unique(tag);
    s.create_queue(&q).await.unwrap();
    (s, q)
}

async fn send(s: &dyn QueueStore, q: &str, body: &str) -> String {
    s.send(q, body, &SendOptions::default()).await.unwrap().id
}

async fn receive1(s: &dyn QueueStore, q: &str, vis: Duration) -> Option<ReceivedMessage> {
    let mut v = s.receive(q, 1, vis).await.unwrap();
    assert!(v.len() <= 1, "asked for 1, got {}", v.len());
    v.pop()
}

/// Polls until a receive returns a message; panics after [`PATIENCE`].
async fn receive_eventually(s: &dyn QueueStore, q: &str, vis: Duration) -> ReceivedMessage {
    let start = Instant::now();
    loop {
        if let Some(m) = receive1(s, q, vis).await {
            return m;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no message became visible in {q} within {PATIENCE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn peek_all(s: &dyn QueueStore, q: &str) -> Vec<PeekedMessage> {
    s.peek(q, 32).await.unwrap()
}

fn assert_queue_not_found<T: std::fmt::Debug>(r: Result<T, QueueError>, q: &str) {
    match r {
        Err(QueueError::QueueNotFound { queue }) => assert_eq!(queue, q),
        other => panic!("{q}: wanted QueueNotFound, got {other:?}"),
    }
}

fn assert_receipt_mismatch<T: std::fmt::Debug>(r: Result<T, QueueError>, q: &str, msg: &str) {
    match r {
        Err(QueueError::PopReceiptMismatch { queue, id }) => {
            assert_eq!((queue.as_str(), id.as_str()), (q, msg))
        }
        other => panic!("{q}/{msg}: wanted PopReceiptMismatch, got {other:?}"),
    }
}

fn assert_message_not_found<T: std::fmt::Debug>(r: Result<T, QueueError>, q: &str, msg: &str) {
    match r {
        Err(QueueError::MessageNotFound { queue, id }) => {
            assert_eq!((queue.as_str(), id.as_str()), (q, msg))
        }
        other => panic!("{q}/{msg}: wanted MessageNotFound, got {other:?}"),
    }
}

fn assert_out_of_range<T: std::fmt::Debug>(r: Result<T, QueueError>, field: &str) {
    match r {
        Err(QueueError::OutOfRange { what, .. }) => assert_eq!(what, field),
        other => panic!("wanted OutOfRange for {field}, got {other:?}"),
    }
}

/// A time the backend reports against the test's clock. Azure reports
/// whole seconds and its clock may differ a little from ours.
fn assert_near_now(t: chrono::DateTime<chrono::Utc>, what: &str) {
    let skew = (chrono::Utc::now() - t).num_seconds().abs();
    assert!(skew <= 60, "{what} {t} is {skew} s from now");
}

// ----------------------------------------------------------------- checks

pub async fn names_are_validated(b: &dyn Backend) {
    let s = b.open();
    for bad in ["ab", "Upper", "a--b", "-ab", "ab-", "a_b", &"a".repeat(64)] {
        match s.create_queue(bad).await {
            Err(QueueError::InvalidQueueName { name, why }) => {
                assert_eq!(name, bad);
                assert!(!why.is_empty());
            }
            other => panic!("{bad:?}: wanted InvalidQueueName, got {other:?}"),
        }
        assert!(matches!(
            s.send(bad, "x", &SendOptions::default()).await,
            Err(QueueError::InvalidQueueName { .. })
        ));
    }
    // The longest name, and the longest that still has a poison queue.
    let base = unique("n");
    let q63 = format!("{base}{}", "a".repeat(63 - base.len()));
    s.create_queue(&q63).await.unwrap();
    assert!(poison_queue_name(&q63).is_err());
    s.delete_queue(&q63).await.unwrap();
    let q56 = format!("{base}{}", "b".repeat(56 - base.len()));
    assert_eq!(poison_queue_name(&q56).unwrap().len(), 63);
}

pub async fn create_is_idempotent_and_missing_queue_is_not_found(b: &dyn Backend) {
    let (s, q) = fresh(b, "create").await;
    let id = send(&*s, &q, "kept").await;
    // Creating again neither fails nor empties the queue.
    s.create_queue(&q).await.unwrap();
    let peeked = peek_all(&*s, &q).await;
    assert_eq!(peeked.len(), 1);
    assert_eq!(
        (peeked[0].id.as_str(), peeked[0].body.as_str()),
        (id.as_str(), "kept")
    );

    let missing = unique("missing");
    assert_queue_not_found(
        s.send(&missing, "x", &SendOptions::default()).await,
        &missing,
    );
    assert_queue_not_found(s.receive(&missing, 1, SEC).await, &missing);
    assert_queue_not_found(s.peek(&missing, 1).await, &missing);
    assert_queue_not_found(s.approximate_len(&missing).await, &missing);
    assert_queue_not_found(s.delete(&missing, &id, "r").await, &missing);
    assert_queue_not_found(s.update_visibility(&missing, &id, "r", SEC).await, &missing);
    assert_queue_not_found(s.delete_queue(&missing).await, &missing);
}

pub async fn send_receive_delete(b: &dyn Backend) {
    let (s, q) = fresh(b, "basic").await;
    // Text Azure carries inside XML, escaped by the client.
    let body = "ev 1: <a href=\"x\">&amp;</a> 'q' é 😀\ttab\nline";
    let sent = s.send(&q, body, &SendOptions::default()).await.unwrap();
    assert_near_now(sent.inserted_at, "inserted_at");
    let ttl = sent.expires_at.expect("default TTL is 7 days") - sent.inserted_at;
    assert_eq!(ttl.num_days(), 7, "default time to live");

    let m = receive1(&*s, &q, Duration::from_secs(30))
        .await
        .expect("message");
    assert_eq!(m.id, sent.id);
    assert_eq!(m.body, body);
    assert_eq!(m.dequeue_count, 1);
    assert_eq!(m.inserted_at, sent.inserted_at);
    assert!(m.next_visible_at > chrono::Utc::now() + chrono::Duration::seconds(20));
    assert_ne!(
        m.pop_receipt, sent.pop_receipt,
        "a receive issues a new receipt"
    );

    // Hidden while held.
    assert!(receive1(&*s, &q, SEC).await.is_none());
    s.delete(&q, &m.id, &m.pop_receipt).await.unwrap();
    assert!(receive1(&*s, &q, SEC).await.is_none());
    assert!(peek_all(&*s, &q).await.is_empty());
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
    // Deleted is gone, whatever the receipt.
    assert_message_not_found(s.delete(&q, &m.id, &m.pop_receipt).await, &q, &m.id);
}

/// Any text `validate_message` accepts comes back unchanged: carriage
/// returns (which an XML parser may turn into line feeds), leading and
/// trailing white space (which XML readers may trim), white space alone,
/// the empty text, and markup-like text.
pub async fn text_round_trips_exactly(b: &dyn Backend) {
    let (s, q) = fresh(b, "text").await;
    let bodies = [
        "a\r\nb\rc\r",
        "  padded\t ",
        " ",
        "\n",
        "",
        "<![CDATA[x]]> ]]> &#13; &lt; <MessageText>",
    ];
    let mut sent = BTreeMap::new();
    for body in bodies {
        sent.insert(send(&*s, &q, body).await, body.to_owned());
    }
    let peeked: BTreeMap<String, String> = peek_all(&*s, &q)
        .await
        .into_iter()
        .map(|m| (m.id, m.body))
        .collect();
    assert_eq!(peeked, sent, "peeked bodies");
    let got: BTreeMap<String, String> = s
        .receive(&q, 32, Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.body))
        .collect();
    assert_eq!(got, sent, "received bodies");
}

/// An id no message has, whatever its shape (a path, a query, empty), is
/// `MessageNotFound` in an existing queue, and the queue's absence wins.
pub async fn unknown_message_ids_are_not_found(b: &dyn Backend) {
    let (s, q) = fresh(b, "ids").await;
    let kept = send(&*s, &q, "kept").await;
    let missing = unique("missing");
    let well_formed = uuid::Uuid::new_v4().hyphenated().to_string();
    for id in [well_formed.as_str(), "../x", "a?b=c", "a/b", ""] {
        assert_message_not_found(s.delete(&q, id, "r").await, &q, id);
        assert_message_not_found(s.update_visibility(&q, id, "r", SEC).await, &q, id);
        assert_queue_not_found(s.delete(&missing, id, "r").await, &missing);
    }
    let p = peek_all(&*s, &q).await;
    assert_eq!(p.len(), 1, "nothing else was touched");
    assert_eq!(p[0].id, kept);
}

pub async fn visibility_timeout_hides_then_redelivers(b: &dyn Backend) {
    let (s, q) = fresh(b, "vis").await;
    let id = send(&*s, &q, "again").await;
    let first = receive1(&*s, &q, SEC).await.expect("message");
    assert_eq!((first.id.as_str(), first.dequeue_count), (id.as_str(), 1));
    assert!(
        receive1(&*s, &q, SEC).await.is_none(),
        "hidden right after receive"
    );

    let started = Instant::now();
    let second = receive_eventually(&*s, &q, Duration::from_secs(30)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "came back after only {:?} of a 1 s timeout",
        started.elapsed()
    );
    assert_eq!(second.id, id);
    assert_eq!(second.body, "again");
    assert_eq!(second.dequeue_count, 2);
    assert_ne!(second.pop_receipt, first.pop_receipt);
    s.delete(&q, &id, &second.pop_receipt).await.unwrap();
}

pub async fn stale_pop_receipt_cannot_delete(b: &dyn Backend) {
    let (s, q) = fresh(b, "stale").await;
    let id = send(&*s, &q, "contested").await;
    let first = receive1(&*s, &q, SEC).await.expect("message");
    // The first consumer overruns its timeout; a second one takes over.
    let second = receive_eventually(&*s, &q, Duration::from_secs(30)).await;
    assert_eq!(second.id, id);

    assert_receipt_mismatch(s.delete(&q, &id, &first.pop_receipt).await, &q, &id);
    assert_receipt_mismatch(
        s.update_visibility(&q, &id, &first.pop_receipt, SEC).await,
        &q,
        &id,
    );
    // The refused delete left the message to its current holder.
    assert_eq!(s.approximate_len(&q).await.unwrap(), 1);
    s.delete(&q, &id, &second.pop_receipt).await.unwrap();
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
    assert_message_not_found(s.delete(&q, &id, &second.pop_receipt).await, &q, &id);
}

pub async fn update_visibility_moves_the_deadline(b: &dyn Backend) {
    let (s, q) = fresh(b, "update").await;
    let id = send(&*s, &q, "lease").await;

    // Extend a 1 s lease to 30 s: it must not come back.
    let m = receive1(&*s, &q, SEC).await.expect("message");
    let up = s
        .update_visibility(&q, &id, &m.pop_receipt, Duration::from_secs(30))
        .await
        .unwrap();
    assert_ne!(up.pop_receipt, m.pop_receipt);
    assert!(up.next_visible_at > chrono::Utc::now() + chrono::Duration::seconds(20));
    assert_receipt_mismatch(s.delete(&q, &id, &m.pop_receipt).await, &q, &id);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        receive1(&*s, &q, SEC).await.is_none(),
        "extended lease held"
    );

    // Timeout zero hands it back at once, with its dequeue count.
    let back = s
        .update_visibility(&q, &id, &up.pop_receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = receive_eventually(&*s, &q, Duration::from_secs(30)).await;
    assert_eq!((again.id.as_str(), again.dequeue_count), (id.as_str(), 2));
    assert_receipt_mismatch(s.delete(&q, &id, &back.pop_receipt).await, &q, &id);
    s.delete(&q, &id, &again.pop_receipt).await.unwrap();

    let bad = s
        .update_visibility(&q, &id, &again.pop_receipt, Duration::from_millis(500))
        .await;
    assert!(
        matches!(bad, Err(QueueError::NotWholeSeconds { .. })),
        "{bad:?}"
    );
    assert_message_not_found(
        s.update_visibility(&q, &id, &again.pop_receipt, SEC).await,
        &q,
        &id,
    );
}

pub async fn send_receipt_allows_update_and_delete(b: &dyn Backend) {
    let (s, q) = fresh(b, "sendrcpt").await;
    let sent = s.send(&q, "early", &SendOptions::default()).await.unwrap();
    let up = s
        .update_visibility(&q, &sent.id, &sent.pop_receipt, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        receive1(&*s, &q, SEC).await.is_none(),
        "hidden by the sender"
    );
    assert_receipt_mismatch(
        s.delete(&q, &sent.id, &sent.pop_receipt).await,
        &q,
        &sent.id,
    );
    s.delete(&q, &sent.id, &up.pop_receipt).await.unwrap();
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
}

pub async fn initial_delay_hides_message(b: &dyn Backend) {
    let (s, q) = fresh(b, "delay").await;
    let opts = SendOptions {
        visibility_delay: Some(SEC),
        ttl: None,
    };
    let sent = s.send(&q, "later", &opts).await.unwrap();
    assert!(sent.next_visible_at > sent.inserted_at);
    let started = Instant::now();
    assert!(receive1(&*s, &q, SEC).await.is_none(), "delayed");
    assert!(
        peek_all(&*s, &q).await.is_empty(),
        "peek skips hidden messages"
    );
    assert_eq!(s.approximate_len(&q).await.unwrap(), 1, "but counts them");
    let m = receive_eventually(&*s, &q, Duration::from_secs(30)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((m.id, m.dequeue_count), (sent.id, 1));

    // The checks Azure makes on the options.
    let too_long = SendOptions {
        visibility_delay: Some(Duration::from_secs(7 * 24 * 3600 + 1)),
        ttl: Some(MessageTtl::Never),
    };
    assert_out_of_range(s.send(&q, "x", &too_long).await, "visibility delay");
    let ttl_first = SendOptions {
        visibility_delay: Some(Duration::from_secs(5)),
        ttl: Some(MessageTtl::After(Duration::from_secs(5))),
    };
    assert!(matches!(
        s.send(&q, "x", &ttl_first).await,
        Err(QueueError::TtlNotAfterDelay { .. })
    ));
    assert_eq!(
        s.approximate_len(&q).await.unwrap(),
        1,
        "refused sends sent nothing"
    );
}

pub async fn expired_messages_are_not_delivered(b: &dyn Backend) {
    let (s, q) = fresh(b, "ttl").await;
    let short = SendOptions {
        visibility_delay: None,
        ttl: Some(MessageTtl::After(SEC)),
    };
    let sent = s.send(&q, "brief", &short).await.unwrap();
    let ttl = sent.expires_at.unwrap() - sent.inserted_at;
    assert_eq!(ttl.num_seconds(), 1);
    let forever = SendOptions {
        visibility_delay: None,
        ttl: Some(MessageTtl::Never),
    };
    let kept = s.send(&q, "kept", &forever).await.unwrap();
    assert_eq!(kept.expires_at, None);

    let start = Instant::now();
    while peek_all(&*s, &q).await.iter().any(|m| m.id == sent.id) {
        assert!(start.elapsed() < PATIENCE, "message outlived its 1 s TTL");
        tokio::time::sleep(POLL).await;
    }
    let got = s.receive(&q, 32, Duration::from_secs(30)).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [kept.id.as_str()]);
    assert_eq!(got[0].expires_at, None);
}

pub async fn peek_leaves_messages_alone(b: &dyn Backend) {
    let (s, q) = fresh(b, "peek").await;
    let a = send(&*s, &q, "a").await;
    let c = send(&*s, &q, "c").await;
    for _ in 0..2 {
        let p = peek_all(&*s, &q).await;
        let got: BTreeSet<(&str, u64)> =
            p.iter().map(|m| (m.id.as_str(), m.dequeue_count)).collect();
        assert_eq!(got, BTreeSet::from([(a.as_str(), 0), (c.as_str(), 0)]));
    }
    assert_eq!(s.peek(&q, 1).await.unwrap().len(), 1);
    let m = receive1(&*s, &q, Duration::from_secs(30)).await.unwrap();
    assert_eq!(m.dequeue_count, 1, "peeks did not count");
    let p = peek_all(&*s, &q).await;
    assert_eq!(p.len(), 1, "the received message is hidden from peek");
    assert_ne!(p[0].id, m.id);
}

pub async fn receive_limits(b: &dyn Backend) {
    let (s, q) = fresh(b, "limits").await;
    let mut ids = BTreeSet::new();
    for i in 0..5 {
        ids.insert(send(&*s, &q, &format!("m{i}")).await);
    }
    let first = s.receive(&q, 3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(first.len(), 3);
    let rest = s.receive(&q, 32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rest.len(), 2);
    let got: BTreeSet<String> = first.iter().chain(&rest).map(|m| m.id.clone()).collect();
    assert_eq!(got, ids, "five distinct messages");
    assert!(s.receive(&q, 32, SEC).await.unwrap().is_empty());

    assert_out_of_range(s.receive(&q, 0, SEC).await, "number of messages");
    assert_out_of_range(s.receive(&q, 33, SEC).await, "number of messages");
    assert_out_of_range(s.peek(&q, 33).await, "number of messages");
    assert_out_of_range(s.receive(&q, 1, Duration::ZERO).await, "visibility timeout");
    assert_out_of_range(
        s.receive(&q, 1, Duration::from_secs(7 * 24 * 3600 + 1))
            .await,
        "visibility timeout",
    );
}

pub async fn oversize_message_refused_and_nothing_sent(b: &dyn Backend) {
    let (s, q) = fresh(b, "big").await;
    // Exactly at the limit is fine, and comes back whole.
    let max = "x".repeat(MAX_MESSAGE_BYTES);
    send(&*s, &q, &max).await;
    let over = "y".repeat(MAX_MESSAGE_BYTES + 1);
    match s.send(&q, &over, &SendOptions::default()).await {
        Err(e @ QueueError::MessageTooLarge { .. }) => {
            let text = e.to_string();
            assert!(text.contains("65537") && text.contains("65536"), "{text}");
            assert!(matches!(
                e,
                QueueError::MessageTooLarge {
                    size: 65537,
                    limit: 65536
                }
            ));
        }
        other => panic!("wanted MessageTooLarge, got {other:?}"),
    }
    // The limit counts UTF-8 bytes, not characters: 32,769 × 'é' is 65,538.
    let wide = "é".repeat(MAX_MESSAGE_BYTES / 2 + 1);
    assert!(matches!(
        s.send(&q, &wide, &SendOptions::default()).await,
        Err(QueueError::MessageTooLarge { size: 65538, .. })
    ));
    assert_eq!(
        s.approximate_len(&q).await.unwrap(),
        1,
        "refused sends sent nothing"
    );
    let m = receive1(&*s, &q, Duration::from_secs(30)).await.unwrap();
    assert_eq!(m.body.len(), MAX_MESSAGE_BYTES);
    assert!(m.body == max);
}

pub async fn non_xml_text_refused_and_nothing_sent(b: &dyn Backend) {
    let (s, q) = fresh(b, "xml").await;
    for (bad, offset, code) in [
        ("a\u{0}b", 1, 0),
        ("ok\u{1b}[0m", 2, 0x1b),
        ("\u{FFFF}", 0, 0xFFFF),
    ] {
        match s.send(&q, bad, &SendOptions::default()).await {
            Err(QueueError::InvalidMessageText { offset: o, code: c }) => {
                assert_eq!((o, c), (offset, code), "{bad:?}")
            }
            other => panic!("{bad:?}: wanted InvalidMessageText, got {other:?}"),
        }
    }
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
}

pub async fn poison_after_max_dequeues(b: &dyn Backend) {
    let (s, q) = fresh(b, "poison").await;
    let policy = PoisonPolicy {
        max_dequeue_count: 2,
    };
    let id = send(&*s, &q, "always fails").await;
    let healthy = send(&*s, &q, "fine").await;
    // The healthy message is handled (deleted) the first time.
    let mut tries = 0;
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < 3 * PATIENCE, "poison message never moved");
        let got = s.receive_with_poison(&q, 32, SEC, &policy).await.unwrap();
        for m in got {
            if m.id == healthy {
                s.delete(&q, &m.id, &m.pop_receipt).await.unwrap();
            } else {
                assert_eq!(m.id, id);
                tries += 1;
                assert_eq!(m.dequeue_count, tries, "delivered with its count");
                assert!(m.dequeue_count <= 2, "delivered past the max");
            }
        }
        if tries == 2 && s.approximate_len(&q).await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(tries, 2);
    let poison = poison_queue_name(&q).unwrap();
    assert_eq!(poison, format!("{q}-poison"));
    let p = peek_all(&*s, &poison).await;
    assert_eq!(p.len(), 1, "exactly one poison copy");
    assert_eq!(p[0].body, "always fails");
    assert_eq!(p[0].expires_at, None, "kept until someone looks");
    s.delete_queue(&poison).await.unwrap();
}

pub async fn approximate_len_counts_hidden_messages(b: &dyn Backend) {
    let (s, q) = fresh(b, "len").await;
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
    for i in 0..3 {
        send(&*s, &q, &format!("{i}")).await;
    }
    assert_eq!(s.approximate_len(&q).await.unwrap(), 3);
    let m = receive1(&*s, &q, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        s.approximate_len(&q).await.unwrap(),
        3,
        "hidden still counts"
    );
    s.delete(&q, &m.id, &m.pop_receipt).await.unwrap();
    assert_eq!(s.approximate_len(&q).await.unwrap(), 2);
}

pub async fn concurrent_consumers_get_each_message_once(b: &dyn Backend) {
    let (s, q) = fresh(b, "workers").await;
    let n = 40;
    let mut sent = BTreeMap::new();
    for i in 0..n {
        let body = format!("event-{i}");
        sent.insert(send(&*s, &q, &body).await, body);
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, q) = (s.clone(), q.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.receive(&q, 8, Duration::from_secs(30)).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                for m in batch {
                    s.delete(&q, &m.id, &m.pop_receipt).await.unwrap();
                    got.push((m.id, m.body, m.dequeue_count));
                }
            }
        }));
    }
    let mut seen = BTreeMap::new();
    for t in tasks {
        for (id, body, count) in t.await.unwrap() {
            assert_eq!(count, 1, "{id} delivered twice within its timeout");
            assert!(seen.insert(id, body).is_none(), "duplicate delivery");
        }
    }
    assert_eq!(seen, sent, "every message, exactly once");
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
}

pub async fn delete_queue_removes_messages(b: &dyn Backend) {
    let (s, q) = fresh(b, "delq").await;
    let (s2, other) = (s.clone(), unique("delq-other"));
    s2.create_queue(&other).await.unwrap();
    send(&*s, &q, "doomed").await;
    let survivor = send(&*s, &other, "survivor").await;
    s.delete_queue(&q).await.unwrap();
    assert_queue_not_found(s.approximate_len(&q).await, &q);
    assert_queue_not_found(s.send(&q, "x", &SendOptions::default()).await, &q);
    // A queue made again under the old name starts empty. Azure may refuse
    // the name for a while after a delete (409 QueueBeingDeleted), so only
    // the other queue is checked here.
    let p = peek_all(&*s, &other).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].id, survivor);
    s.delete_queue(&other).await.unwrap();
}

pub async fn restart_keeps_messages_and_visibility(b: &dyn Backend) {
    let q = unique("restart");
    let (held, held_receipt, other) = {
        let s = b.open();
        s.create_queue(&q).await.unwrap();
        let a = send(&*s, &q, "a").await;
        let c = send(&*s, &q, "c").await;
        // Received, never deleted: the consumer "crashes" with it.
        let m = receive1(&*s, &q, Duration::from_secs(2)).await.unwrap();
        let other = if m.id == a { c } else { a };
        (m.id, m.pop_receipt, other)
    };
    // Every handle is gone; a new process opens the same storage.
    let s = b.open();
    assert_eq!(s.approximate_len(&q).await.unwrap(), 2);
    let m = receive1(&*s, &q, Duration::from_secs(30)).await.unwrap();
    assert_eq!((m.id.as_str(), m.dequeue_count), (other.as_str(), 1));
    assert!(
        receive1(&*s, &q, SEC).await.is_none(),
        "still hidden after restart"
    );
    s.delete(&q, &m.id, &m.pop_receipt).await.unwrap();

    let back = receive_eventually(&*s, &q, Duration::from_secs(30)).await;
    assert_eq!(back.id, held);
    assert_eq!(
        back.dequeue_count, 2,
        "the first delivery was counted durably"
    );
    assert_receipt_mismatch(s.delete(&q, &held, &held_receipt).await, &q, &held);
    s.delete(&q, &held, &back.pop_receipt).await.unwrap();
    assert_eq!(s.approximate_len(&q).await.unwrap(), 0);
}
