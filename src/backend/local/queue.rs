//! The embedded queue: Azure Queue Storage semantics on one redb file.
//!
//! Layout:
//! - `queues`: name -> creation time.
//! - `messages`: (queue, message id) -> record (times, dequeue count, pop
//!   receipt, body).
//! - `visible_at`: (queue, next visible time, sequence number) -> message id.
//!   Each message has exactly one entry, so the visible messages of a queue
//!   are one range scan, oldest first, and hiding a message moves its entry.
//!
//! Visibility lives in the file as wall-clock times, so a message received
//! before a restart and never deleted reappears once its timeout has passed,
//! and its dequeue count was committed before `receive` returned it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{blocking, open_db, Corrupt, Reader};
use crate::backend::queue::{
    validate_count, validate_message, validate_queue_name, validate_receive, validate_send_options,
    validate_update_visibility, PeekedMessage, QueueError, QueueStore, ReceivedMessage,
    SendOptions, SentMessage, VisibilityUpdate,
};
use crate::time::now_us;

const QUEUES: TableDefinition<&str, i64> = TableDefinition::new("queues");
const MESSAGES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("messages");
const VISIBLE: TableDefinition<(&str, i64, u64), &str> = TableDefinition::new("visible_at");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";

/// `expires_us` of a message that never expires.
const NEVER: i64 = i64::MAX;

/// The database file inside the store's directory.
pub const QUEUE_DB_FILE: &str = "queues.redb";

#[derive(Clone)]
pub struct LocalQueueStore {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl fmt::Debug for LocalQueueStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueueStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(op: &'static str) -> impl FnOnce(redb::Error) -> QueueError {
    move |e| QueueError::Backend {
        op,
        source: Box::new(e),
    }
}

fn corrupt(op: &'static str) -> impl FnOnce(Corrupt) -> QueueError {
    move |e| QueueError::Backend {
        op,
        source: Box::new(e),
    }
}

/// Shorthand: any redb error type into [`QueueError::Backend`].
macro_rules! db {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| backend($op)(e.into()))
    };
}

impl LocalQueueStore {
    /// Opens the store in `dir` (created if need be) on the blocking pool.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, QueueError> {
        let dir = dir.as_ref().to_owned();
        blocking(panicked("open"), move || Self::open_blocking(&dir)).await
    }

    /// Opens the store in `dir`, blocking the calling thread.
    pub fn open_blocking(dir: &Path) -> Result<Self, QueueError> {
        let op = "open the queue database";
        let (db, path) = open_db(dir, QUEUE_DB_FILE).map_err(backend(op))?;
        // Create every table up front so readers never meet a missing one.
        let txn = db!(op, db.begin_write())?;
        db!(op, txn.open_table(QUEUES))?;
        db!(op, txn.open_table(MESSAGES))?;
        db!(op, txn.open_table(VISIBLE))?;
        db!(op, txn.open_table(META))?;
        db!(op, txn.commit())?;
        Ok(LocalQueueStore { db, path })
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::Database) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let db = self.db.clone();
        blocking(panicked(op), move || f(&db)).await
    }
}

fn panicked(op: &'static str) -> impl FnOnce(String) -> QueueError {
    move |msg| QueueError::Backend {
        op,
        source: format!("task panicked: {msg}").into(),
    }
}

/// One message as stored.
struct Msg {
    seq: u64,
    inserted_us: i64,
    expires_us: i64,
    visible_us: i64,
    dequeue_count: u64,
    pop_receipt: String,
    body: String,
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41 + self.pop_receipt.len() + self.body.len());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(&self.inserted_us.to_le_bytes());
        v.extend_from_slice(&self.expires_us.to_le_bytes());
        v.extend_from_slice(&self.visible_us.to_le_bytes());
        v.extend_from_slice(&self.dequeue_count.to_le_bytes());
        v.push(self.pop_receipt.len() as u8);
        v.extend_from_slice(self.pop_receipt.as_bytes());
        v.extend_from_slice(self.body.as_bytes());
        v
    }

    fn decode(buf: &[u8]) -> Result<Msg, Corrupt> {
        let mut r = Reader { buf };
        let seq = r.u64()?;
        let inserted_us = r.i64()?;
        let expires_us = r.i64()?;
        let visible_us = r.i64()?;
        let dequeue_count = r.u64()?;
        let n = r.u8()? as usize;
        let pop_receipt = r.str(n)?.to_owned();
        let body = std::str::from_utf8(r.rest())
            .map_err(|_| Corrupt("message body is not UTF-8"))?
            .to_owned();
        Ok(Msg {
            seq,
            inserted_us,
            expires_us,
            visible_us,
            dequeue_count,
            pop_receipt,
            body,
        })
    }

    fn expired(&self, now: i64) -> bool {
        self.expires_us != NEVER && self.expires_us <= now
    }

    fn expires_at(&self) -> Option<DateTime<Utc>> {
        (self.expires_us != NEVER).then(|| time(self.expires_us))
    }
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn new_pop_receipt() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn after(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The bounds of all `visible_at` keys of `queue` visible at `until`.
fn visible_range(queue: &str, until: i64) -> std::ops::RangeInclusive<(&str, i64, u64)> {
    (queue, i64::MIN, 0)..=(queue, until, u64::MAX)
}

fn check_queue(
    txn_queues: &impl ReadableTable<&'static str, i64>,
    queue: &str,
    op: &'static str,
) -> Result<(), QueueError> {
    if db!(op, txn_queues.get(queue))?.is_none() {
        return Err(QueueError::QueueNotFound {
            queue: queue.to_owned(),
        });
    }
    Ok(())
}

/// Looks up a message for delete or update: missing or expired is
/// `MessageNotFound`, another receipt `PopReceiptMismatch`.
fn held_message(
    messages: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    queue: &str,
    id: &str,
    pop_receipt: &str,
    now: i64,
    op: &'static str,
) -> Result<Msg, QueueError> {
    let not_found = || QueueError::MessageNotFound {
        queue: queue.to_owned(),
        id: id.to_owned(),
    };
    let m = match db!(op, messages.get((queue, id)))? {
        Some(g) => Msg::decode(g.value()).map_err(corrupt(op))?,
        None => return Err(not_found()),
    };
    if m.expired(now) {
        return Err(not_found());
    }
    if m.pop_receipt != pop_receipt {
        return Err(QueueError::PopReceiptMismatch {
            queue: queue.to_owned(),
            id: id.to_owned(),
        });
    }
    Ok(m)
}

#[async_trait]
impl QueueStore for LocalQueueStore {
    fn location(&self) -> String {
        format!("redb:{}", self.path.display())
    }

    async fn create_queue(&self, queue: &str) -> Result<(), QueueError> {
        validate_queue_name(queue)?;
        let queue = queue.to_owned();
        self.run("create a queue", move |db| {
            let op = "create a queue";
            let txn = db!(op, db.begin_write())?;
            {
                let mut queues = db!(op, txn.open_table(QUEUES))?;
                if db!(op, queues.get(queue.as_str()))?.is_some() {
                    return Ok(());
                }
                db!(op, queues.insert(queue.as_str(), now_us()))?;
            }
            db!(op, txn.commit())
        })
        .await
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        validate_queue_name(queue)?;
        let queue = queue.to_owned();
        self.run("delete a queue", move |db| {
            let op = "delete a queue";
            let q = queue.as_str();
            let txn = db!(op, db.begin_write())?;
            {
                let mut queues = db!(op, txn.open_table(QUEUES))?;
                if db!(op, queues.remove(q))?.is_none() {
                    return Err(QueueError::QueueNotFound {
                        queue: queue.clone(),
                    });
                }
                let mut visible = db!(op, txn.open_table(VISIBLE))?;
                db!(
                    op,
                    visible.retain_in(visible_range(q, i64::MAX), |_, _| false)
                )?;
                // The smallest name after `q` bounds every (q, id) key.
                let past = format!("{q}\0");
                let mut messages = db!(op, txn.open_table(MESSAGES))?;
                db!(
                    op,
                    messages.retain_in((q, "")..(past.as_str(), ""), |_, _| false)
                )?;
            }
            db!(op, txn.commit())
        })
        .await
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
        let queue = queue.to_owned();
        let body = body.to_owned();
        self.run("send a message", move |db| {
            let op = "send a message";
            let q = queue.as_str();
            let txn = db!(op, db.begin_write())?;
            let now = now_us();
            let msg = Msg {
                seq: 0,
                inserted_us: now,
                expires_us: match ttl_s {
                    Some(s) => after(now, Duration::from_secs(s)),
                    None => NEVER,
                },
                visible_us: after(now, Duration::from_secs(delay_s)),
                dequeue_count: 0,
                pop_receipt: new_pop_receipt(),
                body,
            };
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            let msg = {
                check_queue(&db!(op, txn.open_table(QUEUES))?, q, op)?;
                let mut meta = db!(op, txn.open_table(META))?;
                let seq = db!(op, meta.get(NEXT_SEQ))?.map_or(0, |g| g.value());
                db!(op, meta.insert(NEXT_SEQ, seq + 1))?;
                let msg = Msg { seq, ..msg };
                db!(
                    op,
                    db!(op, txn.open_table(MESSAGES))?
                        .insert((q, id.as_str()), msg.encode().as_slice())
                )?;
                db!(
                    op,
                    db!(op, txn.open_table(VISIBLE))?.insert((q, msg.visible_us, seq), id.as_str())
                )?;
                msg
            };
            db!(op, txn.commit())?;
            Ok(SentMessage {
                id,
                pop_receipt: msg.pop_receipt.clone(),
                inserted_at: time(msg.inserted_us),
                expires_at: msg.expires_at(),
                next_visible_at: time(msg.visible_us),
            })
        })
        .await
    }

    async fn receive(
        &self,
        queue: &str,
        max_messages: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        validate_queue_name(queue)?;
        validate_receive(max_messages, visibility_timeout)?;
        let queue = queue.to_owned();
        self.run("receive messages", move |db| {
            let op = "receive messages";
            let q = queue.as_str();
            let txn = db!(op, db.begin_write())?;
            let now = now_us();
            let hidden_until = after(now, visibility_timeout);
            let mut out = Vec::new();
            let changed;
            {
                check_queue(&db!(op, txn.open_table(QUEUES))?, q, op)?;
                let mut visible = db!(op, txn.open_table(VISIBLE))?;
                let mut messages = db!(op, txn.open_table(MESSAGES))?;
                // Collect first: the tables cannot change under an iterator.
                let mut taken = Vec::new();
                let mut expired = Vec::new();
                for entry in db!(op, visible.range(visible_range(q, now)))? {
                    let (k, id) = db!(op, entry)?;
                    let (_, vis, seq) = k.value();
                    let id = id.value().to_owned();
                    let m = match db!(op, messages.get((q, id.as_str())))? {
                        Some(g) => Msg::decode(g.value()).map_err(corrupt(op))?,
                        None => return Err(corrupt(op)(Corrupt("index names a missing message"))),
                    };
                    if m.expired(now) {
                        expired.push((vis, seq, id));
                        continue;
                    }
                    taken.push((id, m));
                    if taken.len() == max_messages as usize {
                        break;
                    }
                }
                changed = !taken.is_empty() || !expired.is_empty();
                for (vis, seq, id) in expired {
                    db!(op, visible.remove((q, vis, seq)))?;
                    db!(op, messages.remove((q, id.as_str())))?;
                }
                for (id, m) in taken {
                    db!(op, visible.remove((q, m.visible_us, m.seq)))?;
                    let m = Msg {
                        visible_us: hidden_until,
                        dequeue_count: m.dequeue_count + 1,
                        pop_receipt: new_pop_receipt(),
                        ..m
                    };
                    db!(op, visible.insert((q, m.visible_us, m.seq), id.as_str()))?;
                    db!(op, messages.insert((q, id.as_str()), m.encode().as_slice()))?;
                    out.push(ReceivedMessage {
                        id,
                        pop_receipt: m.pop_receipt.clone(),
                        dequeue_count: m.dequeue_count,
                        inserted_at: time(m.inserted_us),
                        expires_at: m.expires_at(),
                        next_visible_at: time(m.visible_us),
                        body: m.body,
                    });
                }
            }
            // Workers poll empty queues often; an empty poll must not cost
            // an fsync.
            if changed {
                db!(op, txn.commit())?;
            } else {
                db!(op, txn.abort())?;
            }
            Ok(out)
        })
        .await
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
        let (queue, id, receipt) = (queue.to_owned(), id.to_owned(), pop_receipt.to_owned());
        self.run("update message visibility", move |db| {
            let op = "update message visibility";
            let q = queue.as_str();
            let txn = db!(op, db.begin_write())?;
            let now = now_us();
            let m = {
                check_queue(&db!(op, txn.open_table(QUEUES))?, q, op)?;
                let mut messages = db!(op, txn.open_table(MESSAGES))?;
                let m = held_message(&messages, q, &id, &receipt, now, op)?;
                let mut visible = db!(op, txn.open_table(VISIBLE))?;
                db!(op, visible.remove((q, m.visible_us, m.seq)))?;
                let m = Msg {
                    visible_us: after(now, timeout),
                    pop_receipt: new_pop_receipt(),
                    ..m
                };
                db!(op, visible.insert((q, m.visible_us, m.seq), id.as_str()))?;
                db!(op, messages.insert((q, id.as_str()), m.encode().as_slice()))?;
                m
            };
            db!(op, txn.commit())?;
            Ok(VisibilityUpdate {
                pop_receipt: m.pop_receipt,
                next_visible_at: time(m.visible_us),
            })
        })
        .await
    }

    async fn delete(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<(), QueueError> {
        validate_queue_name(queue)?;
        let (queue, id, receipt) = (queue.to_owned(), id.to_owned(), pop_receipt.to_owned());
        self.run("delete a message", move |db| {
            let op = "delete a message";
            let q = queue.as_str();
            let txn = db!(op, db.begin_write())?;
            {
                check_queue(&db!(op, txn.open_table(QUEUES))?, q, op)?;
                let mut messages = db!(op, txn.open_table(MESSAGES))?;
                let m = held_message(&messages, q, &id, &receipt, now_us(), op)?;
                db!(op, messages.remove((q, id.as_str())))?;
                db!(
                    op,
                    db!(op, txn.open_table(VISIBLE))?.remove((q, m.visible_us, m.seq))
                )?;
            }
            db!(op, txn.commit())
        })
        .await
    }

    async fn peek(&self, queue: &str, max_messages: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        validate_queue_name(queue)?;
        validate_count(max_messages)?;
        let queue = queue.to_owned();
        self.run("peek messages", move |db| {
            let op = "peek messages";
            let q = queue.as_str();
            let txn = db!(op, db.begin_read())?;
            check_queue(&db!(op, txn.open_table(QUEUES))?, q, op)?;
            let visible = db!(op, txn.open_table(VISIBLE))?;
            let messages = db!(op, txn.open_table(MESSAGES))?;
            let now = now_us();
            let mut out = Vec::new();
            for entry in db!(op, visible.range(visible_range(q, now)))? {
                let (_, id) = db!(op, entry)?;
                let id = id.value();
                let Some(g) = db!(op, messages.get((q, id)))? else {
                    return Err(corrupt(op)(Corrupt("index names a missing message")));
                };
                let m = Msg::decode(g.value()).map_err(corrupt(op))?;
                if m.expired(now) {
                    continue;
                }
                out.push(PeekedMessage {
                    id: id.to_owned(),
                    dequeue_count: m.dequeue_count,
                    inserted_at: time(m.inserted_us),
                    expires_at: m.expires_at(),
                    body: m.body,
                });
                if out.len() == max_messages as usize {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn approximate_len(&self, queue: &str) -> Result<u64, QueueError> {
        validate_queue_name(queue)?;
        let queue = queue.to_owned();
        self.run("count messages", move |db| {
            let op = "count messages";
            let q = queue.as_str();
            let txn = db!(op, db.begin_read())?;
            check_queue(&db!(op, txn.open_table(QUEUES))?, q, op)?;
            let visible = db!(op, txn.open_table(VISIBLE))?;
            let mut n = 0;
            for entry in db!(op, visible.range(visible_range(q, i64::MAX)))? {
                db!(op, entry)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let m = Msg {
            seq: 7,
            inserted_us: -3,
            expires_us: NEVER,
            visible_us: 1 << 40,
            dequeue_count: 2,
            pop_receipt: new_pop_receipt(),
            body: "héllo <&>".into(),
        };
        let d = Msg::decode(&m.encode()).unwrap();
        assert_eq!(
            (
                d.seq,
                d.inserted_us,
                d.expires_us,
                d.visible_us,
                d.dequeue_count
            ),
            (7, -3, NEVER, 1 << 40, 2)
        );
        assert!(Msg::decode(&m.encode()[..20]).is_err());
        assert_eq!((d.pop_receipt, d.body), (m.pop_receipt, m.body));
    }
}
