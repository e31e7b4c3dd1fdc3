//! The notification seam: a message queue shaped like Azure Queue Storage.
//! Projector workers learn of new events through it.
//!
//! Contract (checked by `tests/conformance/queue.rs` against every
//! implementation):
//! - Delivery is at least once. `receive` hides each message it returns for
//!   the visibility timeout and increments its dequeue count; a message that
//!   is not deleted in time is delivered again, with a higher count and a new
//!   pop receipt.
//! - Only the latest pop receipt of a message may delete it or change its
//!   visibility; an older one gets [`QueueError::PopReceiptMismatch`] (Azure's
//!   400 `PopReceiptMismatch`), so a consumer that overran its timeout learns
//!   it lost the message. A message that is gone (deleted or expired) is
//!   [`QueueError::MessageNotFound`] (Azure's 404 `MessageNotFound`),
//!   whatever the receipt.
//! - Order is roughly first in, first out and never guaranteed (Azure does
//!   not guarantee it).
//! - Message bodies are text: Azure carries them inside XML, so binary data
//!   must be encoded (e.g. base64) by the caller, and the 64 KiB limit counts
//!   the UTF-8 bytes of the text as given. Every check that Azure would make
//!   is made here first ([`validate_message`], [`validate_queue_name`]), so
//!   both implementations refuse the same input with the same error, before
//!   anything is sent.
//! - Durations are whole seconds, the unit of the Azure REST API; finer
//!   durations are refused rather than rounded differently by each backend.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Largest message body, in UTF-8 bytes (Azure's limit since 2011-08-18).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most messages one `receive` or `peek` returns.
pub const MAX_RECEIVE_MESSAGES: u32 = 32;
/// Longest visibility timeout or initial delay: 7 days.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Time to live when the sender gives none: 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest finite time to live: Azure's `messagettl` is a 32-bit count of
/// seconds (about 68 years); [`MessageTtl::Never`] is the way past it.
pub const MAX_TTL: Duration = Duration::from_secs(i32::MAX as u64);
/// Appended to a queue's name to name its poison queue.
pub const POISON_SUFFIX: &str = "-poison";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid queue name {name:?}: {why}")]
    InvalidQueueName { name: String, why: &'static str },
    #[error("queue {queue} does not exist")]
    QueueNotFound { queue: String },
    #[error("message of {size} bytes exceeds the {limit}-byte limit of a queue message; store the payload elsewhere (a blob or table) and send a reference")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("message text has character U+{code:04X} at byte {offset}, which XML (and so Azure Queue Storage) cannot carry; encode binary data, e.g. as base64")]
    InvalidMessageText { offset: usize, code: u32 },
    #[error("{what} is {value}, out of range {min}..={max}")]
    OutOfRange {
        what: &'static str,
        value: String,
        min: String,
        max: String,
    },
    #[error("{what} of {value:?} is not a whole number of seconds, the unit queues use")]
    NotWholeSeconds { what: &'static str, value: Duration },
    #[error("time to live {ttl:?} must be longer than the initial visibility delay {delay:?}")]
    TtlNotAfterDelay { ttl: Duration, delay: Duration },
    #[error("message {id} is not in queue {queue} (deleted, expired or never sent)")]
    MessageNotFound { queue: String, id: String },
    #[error("pop receipt for message {id} in queue {queue} is stale: the message was received or updated again since, and only its latest pop receipt may delete or update it")]
    PopReceiptMismatch { queue: String, id: String },
    #[error("queue backend failed to {op}: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: BoxError,
    },
}

/// When a sent message expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageTtl {
    /// After this long (whole seconds, at least 1).
    After(Duration),
    Never,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Keep the message invisible this long after sending (0 to 7 days).
    pub visibility_delay: Option<Duration>,
    /// `None`: [`DEFAULT_TTL`].
    pub ttl: Option<MessageTtl>,
}

/// What `send` returns. The pop receipt is valid until the message is first
/// received, as in Azure: the sender may update or delete it meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    pub id: String,
    pub pop_receipt: String,
    pub inserted_at: DateTime<Utc>,
    /// `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub next_visible_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    /// Needed to delete the message or change its visibility; superseded by
    /// the next receive or update of the same message.
    pub pop_receipt: String,
    /// How many times the message has been received, this time included.
    pub dequeue_count: u64,
    pub inserted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub next_visible_at: DateTime<Utc>,
    pub body: String,
}

/// A message seen without receiving it: no pop receipt, no count change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeekedMessage {
    pub id: String,
    pub dequeue_count: u64,
    pub inserted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisibilityUpdate {
    pub pop_receipt: String,
    pub next_visible_at: DateTime<Utc>,
}

/// How [`QueueStore::receive_with_poison`] treats messages that keep
/// failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoisonPolicy {
    /// A message received more often than this is moved to the poison
    /// queue instead of being delivered again.
    pub max_dequeue_count: u64,
}

impl Default for PoisonPolicy {
    /// 5 tries, as Azure Functions' queue trigger.
    fn default() -> Self {
        PoisonPolicy {
            max_dequeue_count: 5,
        }
    }
}

#[async_trait]
pub trait QueueStore: Send + Sync + fmt::Debug {
    /// Human-readable location, for logs and errors (never secrets).
    fn location(&self) -> String;

    /// Creates the queue; succeeds if it exists already.
    async fn create_queue(&self, queue: &str) -> Result<(), QueueError>;
    /// Deletes the queue and every message in it.
    async fn delete_queue(&self, queue: &str) -> Result<(), QueueError>;

    /// Adds a message. Refused before anything is sent if [`validate_message`]
    /// or [`validate_send_options`] refuse it.
    async fn send(
        &self,
        queue: &str,
        body: &str,
        opts: &SendOptions,
    ) -> Result<SentMessage, QueueError>;

    /// Up to `max_messages` (1 to 32) visible messages, each hidden for
    /// `visibility_timeout` (1 s to 7 days) and its dequeue count
    /// incremented. Empty when none is visible; never waits for one.
    async fn receive(
        &self,
        queue: &str,
        max_messages: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Makes the message visible again `timeout` (0 to 7 days) from now.
    /// Zero hands it back at once; a longer one extends a lease on it.
    async fn update_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        timeout: Duration,
    ) -> Result<VisibilityUpdate, QueueError>;

    /// Deletes the message if `pop_receipt` is its latest.
    async fn delete(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<(), QueueError>;

    /// Up to `max_messages` (1 to 32) visible messages, unchanged.
    async fn peek(&self, queue: &str, max_messages: u32) -> Result<Vec<PeekedMessage>, QueueError>;

    /// Messages in the queue, visible or not. Approximate: it may count
    /// expired messages not yet removed.
    async fn approximate_len(&self, queue: &str) -> Result<u64, QueueError>;

    /// `receive`, except that a message received more often than
    /// `policy.max_dequeue_count` is sent to [`poison_queue_name`]`(queue)`
    /// (created if need be) and deleted here instead of being returned.
    ///
    /// The move is a send then a delete, so it too is at least once: if the
    /// delete fails (a crash, or another consumer received the message again
    /// meanwhile) the message may reach the poison queue twice. Poison
    /// queues are for people to inspect, so a duplicate there is harmless.
    /// A move that fails is logged and tried again when the message comes
    /// back; the healthy messages are returned all the same (the error only
    /// when there are none).
    async fn receive_with_poison(
        &self,
        queue: &str,
        max_messages: u32,
        visibility_timeout: Duration,
        policy: &PoisonPolicy,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let poison = poison_queue_name(queue)?;
        let mut healthy = Vec::new();
        let mut poison_created = false;
        // A move that fails must not take the healthy messages of the same
        // receive with it: they are hidden and counted already, and would
        // come back only after their timeout, one count nearer to poison.
        let mut failed: Option<QueueError> = None;
        for m in self
            .receive(queue, max_messages, visibility_timeout)
            .await?
        {
            if m.dequeue_count <= policy.max_dequeue_count {
                healthy.push(m);
                continue;
            }
            let moved = async {
                if !poison_created {
                    self.create_queue(&poison).await?;
                    poison_created = true;
                }
                let opts = SendOptions {
                    visibility_delay: None,
                    ttl: Some(MessageTtl::Never),
                };
                self.send(&poison, &m.body, &opts).await?;
                tracing::warn!(
                    queue,
                    id = %m.id,
                    dequeue_count = m.dequeue_count,
                    max = policy.max_dequeue_count,
                    "message moved to poison queue {poison}"
                );
                match self.delete(queue, &m.id, &m.pop_receipt).await {
                    // Someone else holds or removed it: it will be moved
                    // again or was handled; either way it is not ours to
                    // deliver.
                    Ok(())
                    | Err(QueueError::PopReceiptMismatch { .. })
                    | Err(QueueError::MessageNotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            .await;
            if let Err(e) = moved {
                tracing::error!(
                    queue,
                    id = %m.id,
                    error = %e,
                    "could not move a message to poison queue {poison}; it stays hidden until its timeout and is tried again"
                );
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) if healthy.is_empty() => Err(e),
            _ => Ok(healthy),
        }
    }
}

/// Azure's queue name rules: 3 to 63 characters of lowercase letters,
/// digits and hyphens; starts and ends with a letter or digit; no two
/// hyphens in a row.
pub fn validate_queue_name(name: &str) -> Result<(), QueueError> {
    let bad = |why| {
        Err(QueueError::InvalidQueueName {
            name: name.to_owned(),
            why,
        })
    };
    if !(3..=63).contains(&name.len()) {
        return bad("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters a-z, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    if name.contains("--") {
        return bad("hyphens must be single");
    }
    Ok(())
}

/// The poison queue of `queue`; fails if `queue` is invalid or so long that
/// the suffix would make the name invalid.
pub fn poison_queue_name(queue: &str) -> Result<String, QueueError> {
    validate_queue_name(queue)?;
    let poison = format!("{queue}{POISON_SUFFIX}");
    if poison.len() > 63 {
        return Err(QueueError::InvalidQueueName {
            name: queue.to_owned(),
            why:
                "too long to have a poison queue: at most 56 characters leave room for \"-poison\"",
        });
    }
    Ok(poison)
}

/// Refuses a body Azure would refuse or alter: over [`MAX_MESSAGE_BYTES`],
/// or with a character XML 1.0 cannot carry (control characters other than
/// tab, line feed and carriage return; U+FFFE, U+FFFF).
pub fn validate_message(body: &str) -> Result<(), QueueError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(QueueError::MessageTooLarge {
            size: body.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    for (offset, c) in body.char_indices() {
        let ok =
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}');
        if !ok {
            return Err(QueueError::InvalidMessageText {
                offset,
                code: c as u32,
            });
        }
    }
    Ok(())
}

/// Whole seconds in `min..=max`.
pub fn check_seconds(
    what: &'static str,
    d: Duration,
    min: Duration,
    max: Duration,
) -> Result<u64, QueueError> {
    if d.subsec_nanos() != 0 {
        return Err(QueueError::NotWholeSeconds { what, value: d });
    }
    if d < min || d > max {
        return Err(QueueError::OutOfRange {
            what,
            value: format!("{d:?}"),
            min: format!("{min:?}"),
            max: format!("{max:?}"),
        });
    }
    Ok(d.as_secs())
}

/// The checks Azure makes on Put Message parameters. Returns the delay and
/// the time to live (`None`: never expires) in seconds.
pub fn validate_send_options(opts: &SendOptions) -> Result<(u64, Option<u64>), QueueError> {
    let delay = opts.visibility_delay.unwrap_or(Duration::ZERO);
    let delay_s = check_seconds("visibility delay", delay, Duration::ZERO, MAX_VISIBILITY)?;
    let ttl_s = match opts.ttl.unwrap_or(MessageTtl::After(DEFAULT_TTL)) {
        MessageTtl::Never => None,
        MessageTtl::After(ttl) => {
            // Azure allows any positive TTL since 2017-07-29.
            let s = check_seconds("time to live", ttl, Duration::from_secs(1), MAX_TTL)?;
            if ttl <= delay {
                return Err(QueueError::TtlNotAfterDelay { ttl, delay });
            }
            Some(s)
        }
    };
    Ok((delay_s, ttl_s))
}

/// The checks Azure makes on Get Messages parameters.
pub fn validate_receive(max_messages: u32, visibility_timeout: Duration) -> Result<(), QueueError> {
    validate_count(max_messages)?;
    check_seconds(
        "visibility timeout",
        visibility_timeout,
        Duration::from_secs(1),
        MAX_VISIBILITY,
    )?;
    Ok(())
}

/// The number of messages a receive or peek may ask for.
pub fn validate_count(max_messages: u32) -> Result<(), QueueError> {
    if !(1..=MAX_RECEIVE_MESSAGES).contains(&max_messages) {
        return Err(QueueError::OutOfRange {
            what: "number of messages",
            value: max_messages.to_string(),
            min: "1".into(),
            max: MAX_RECEIVE_MESSAGES.to_string(),
        });
    }
    Ok(())
}

/// The check Azure makes on an Update Message visibility timeout.
pub fn validate_update_visibility(timeout: Duration) -> Result<(), QueueError> {
    check_seconds(
        "visibility timeout",
        timeout,
        Duration::ZERO,
        MAX_VISIBILITY,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for ok in ["abc", "a-b", "a1-2b-c3", &"a".repeat(63), "123"] {
            validate_queue_name(ok).unwrap();
        }
        for bad in [
            "ab",
            "Abc",
            "a--b",
            "-ab",
            "ab-",
            "a_b",
            "a.b",
            &"a".repeat(64),
            "",
        ] {
            assert!(
                matches!(validate_queue_name(bad), Err(QueueError::InvalidQueueName { name, .. }) if name == bad),
                "{bad:?}"
            );
        }
        assert_eq!(poison_queue_name("jobs").unwrap(), "jobs-poison");
        poison_queue_name(&"a".repeat(56)).unwrap();
        assert!(poison_queue_name(&"a".repeat(57)).is_err());
    }

    #[test]
    fn message_checks() {
        validate_message(&"x".repeat(MAX_MESSAGE_BYTES)).unwrap();
        validate_message("tab\tlf\ncr\r <&>'\" é 😀").unwrap();
        match validate_message(&"é".repeat(MAX_MESSAGE_BYTES / 2 + 1)) {
            Err(QueueError::MessageTooLarge { size, limit }) => {
                assert_eq!((size, limit), (MAX_MESSAGE_BYTES + 2, MAX_MESSAGE_BYTES))
            }
            other => panic!("{other:?}"),
        }
        let e = validate_message("ab\u{1}").unwrap_err();
        assert!(matches!(
            e,
            QueueError::InvalidMessageText { offset: 2, code: 1 }
        ));
        assert!(e.to_string().contains("U+0001"), "{e}");
        assert!(validate_message("\u{FFFE}").is_err());
    }

    #[test]
    fn option_checks() {
        let s = |n| Duration::from_secs(n);
        assert_eq!(
            validate_send_options(&SendOptions::default()).unwrap(),
            (0, Some(DEFAULT_TTL.as_secs()))
        );
        let o = SendOptions {
            visibility_delay: Some(s(5)),
            ttl: Some(MessageTtl::Never),
        };
        assert_eq!(validate_send_options(&o).unwrap(), (5, None));
        let o = SendOptions {
            visibility_delay: Some(s(5)),
            ttl: Some(MessageTtl::After(s(5))),
        };
        assert!(matches!(
            validate_send_options(&o),
            Err(QueueError::TtlNotAfterDelay { .. })
        ));
        let o = SendOptions {
            visibility_delay: Some(Duration::from_millis(1500)),
            ttl: None,
        };
        assert!(matches!(
            validate_send_options(&o),
            Err(QueueError::NotWholeSeconds { .. })
        ));
        let o = SendOptions {
            visibility_delay: None,
            ttl: Some(MessageTtl::After(MAX_TTL)),
        };
        assert_eq!(validate_send_options(&o).unwrap().1, Some(i32::MAX as u64));
        let o = SendOptions {
            visibility_delay: None,
            ttl: Some(MessageTtl::After(MAX_TTL + s(1))),
        };
        assert!(matches!(
            validate_send_options(&o),
            Err(QueueError::OutOfRange {
                what: "time to live",
                ..
            })
        ));
        validate_receive(32, s(1)).unwrap();
        assert!(validate_receive(0, s(1)).is_err());
        assert!(validate_receive(33, s(1)).is_err());
        assert!(validate_receive(1, s(0)).is_err());
        assert!(validate_receive(1, MAX_VISIBILITY + s(1)).is_err());
        validate_update_visibility(s(0)).unwrap();
    }
}

#[cfg(test)]
mod poison_tests {
    use super::*;
    use crate::backend::local::LocalQueueStore;

    /// The local store, except that nothing can be sent to a poison queue
    /// (a credential scoped to the one queue, say).
    #[derive(Debug)]
    struct NoPoison(LocalQueueStore);

    #[async_trait]
    impl QueueStore for NoPoison {
        fn location(&self) -> String {
            self.0.location()
        }
        async fn create_queue(&self, queue: &str) -> Result<(), QueueError> {
            self.0.create_queue(queue).await
        }
        async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
            self.0.delete_queue(queue).await
        }
        async fn send(
            &self,
            queue: &str,
            body: &str,
            opts: &SendOptions,
        ) -> Result<SentMessage, QueueError> {
            if queue.ends_with("-poison") {
                return Err(QueueError::Backend {
                    op: "send",
                    source: "injected: not authorized".into(),
                });
            }
            self.0.send(queue, body, opts).await
        }
        async fn receive(
            &self,
            queue: &str,
            max_messages: u32,
            visibility_timeout: Duration,
        ) -> Result<Vec<ReceivedMessage>, QueueError> {
            self.0
                .receive(queue, max_messages, visibility_timeout)
                .await
        }
        async fn update_visibility(
            &self,
            queue: &str,
            id: &str,
            pop_receipt: &str,
            timeout: Duration,
        ) -> Result<VisibilityUpdate, QueueError> {
            self.0
                .update_visibility(queue, id, pop_receipt, timeout)
                .await
        }
        async fn delete(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<(), QueueError> {
            self.0.delete(queue, id, pop_receipt).await
        }
        async fn peek(
            &self,
            queue: &str,
            max_messages: u32,
        ) -> Result<Vec<PeekedMessage>, QueueError> {
            self.0.peek(queue, max_messages).await
        }
        async fn approximate_len(&self, queue: &str) -> Result<u64, QueueError> {
            self.0.approximate_len(queue).await
        }
    }

    /// A poison message that cannot be moved does not take the healthy
    /// messages received with it; with none of those, the error is returned.
    #[tokio::test]
    async fn a_failed_move_keeps_the_healthy_messages() {
        let dir = tempfile::tempdir().unwrap();
        let s = NoPoison(LocalQueueStore::open(dir.path()).await.unwrap());
        let policy = PoisonPolicy {
            max_dequeue_count: 1,
        };
        let second = Duration::from_secs(1);
        let long = Duration::from_secs(60);
        for (queue, with_good) in [("work", true), ("alone", false)] {
            s.create_queue(queue).await.unwrap();
            s.send(queue, "bad", &SendOptions::default()).await.unwrap();
            // Received once and let go at once: one more makes it poison.
            let first = s.receive(queue, 1, second).await.unwrap();
            s.update_visibility(queue, &first[0].id, &first[0].pop_receipt, Duration::ZERO)
                .await
                .unwrap();
            if with_good {
                s.send(queue, "good", &SendOptions::default())
                    .await
                    .unwrap();
            }
            let got = s.receive_with_poison(queue, 32, long, &policy).await;
            if with_good {
                let got = got.unwrap();
                let bodies: Vec<_> = got.iter().map(|m| m.body.as_str()).collect();
                assert_eq!(bodies, ["good"]);
            } else {
                let e = got.unwrap_err().to_string();
                assert!(e.contains("injected: not authorized"), "{e}");
            }
            // The poison message was not lost: it is hidden until its
            // timeout, to be moved when it comes back.
            assert_eq!(
                s.approximate_len(queue).await.unwrap(),
                1 + with_good as u64
            );
        }
    }
}
