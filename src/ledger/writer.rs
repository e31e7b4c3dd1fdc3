//! The single writer task. Callers send their events over a channel; the
//! task drains whatever is waiting (group commit), checks expected versions
//! against the head, encodes one batch, appends it as one block (one
//! fsync), and only then acknowledges every caller in the group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use super::layout::{self, Meta};
use super::tip::Tip;
use super::{CheckpointInfo, LedgerOptions};
use crate::backend::{BlobStore, StoreError, WriterLock};
use crate::error::{LedgerError, Result};
use crate::format::batch::BatchEncoder;
use crate::format::checkpoint::Checkpoint;
use crate::format::record::Record;
use crate::format::segment::{SegmentHeader, HEADER_LEN};
use crate::format::{chain, Hash};
use crate::model::{NewEvent, Receipt};

pub enum Command {
    Append {
        events: Vec<NewEvent>,
        bytes: usize,
        reply: oneshot::Sender<Result<Vec<Receipt>>>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<CheckpointInfo>>,
    },
    Close {
        reply: oneshot::Sender<Result<CheckpointInfo>>,
    },
}

pub struct Writer {
    pub store: Arc<dyn BlobStore>,
    pub meta: Meta,
    pub key: SigningKey,
    pub opts: LedgerOptions,
    pub tip: Tip,
    pub lock: Box<dyn WriterLock>,
    pub poisoned: Option<String>,
    pub last_checkpoint: Option<CheckpointInfo>,
    pub last_checkpoint_at: Instant,
}

type Reply = oneshot::Sender<Result<Vec<Receipt>>>;
type Pending = (Vec<NewEvent>, Reply);

impl Writer {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut stash: Option<Command> = None;
        loop {
            let cmd = match stash.take() {
                Some(c) => c,
                None => {
                    let due = self.checkpoint_due_in();
                    tokio::select! {
                        c = rx.recv() => match c {
                            Some(c) => c,
                            // Every handle dropped without close(): stop as a
                            // crash would, with the log durable and no
                            // final checkpoint.
                            None => return,
                        },
                        _ = tokio::time::sleep(due.unwrap_or(Duration::from_secs(3600))), if due.is_some() => {
                            self.timed_checkpoint().await;
                            continue;
                        }
                    }
                }
            };
            match cmd {
                Command::Append {
                    events,
                    bytes,
                    reply,
                } => {
                    let mut group: Vec<Pending> = vec![(events, reply)];
                    let mut total = bytes;
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Command::Append {
                                events,
                                bytes,
                                reply,
                            } if total + bytes <= self.opts.max_batch_bytes => {
                                total += bytes;
                                group.push((events, reply));
                            }
                            other => {
                                stash = Some(other);
                                break;
                            }
                        }
                    }
                    self.commit(group).await;
                    if self.checkpoint_due_in() == Some(Duration::ZERO) {
                        self.timed_checkpoint().await;
                    }
                }
                Command::Checkpoint { reply } => {
                    let _ = reply.send(self.checkpoint().await);
                }
                Command::Close { reply } => {
                    let result = self.checkpoint().await;
                    // Release the writer lock before answering, so that a
                    // caller may reopen as soon as close() returns.
                    drop(self);
                    let _ = reply.send(result);
                    return;
                }
            }
        }
    }

    /// How long until a checkpoint is due, if records are uncheckpointed.
    fn checkpoint_due_in(&self) -> Option<Duration> {
        let covered = self
            .last_checkpoint
            .as_ref()
            .map_or(0, |c| c.checkpoint.size);
        if self.tip.size == covered || self.poisoned.is_some() {
            return None;
        }
        if self
            .opts
            .checkpoint_every_events
            .is_some_and(|n| self.tip.size - covered >= n)
        {
            return Some(Duration::ZERO);
        }
        self.opts
            .checkpoint_interval
            .map(|i| i.saturating_sub(self.last_checkpoint_at.elapsed()))
    }

    async fn timed_checkpoint(&mut self) {
        if let Err(e) = self.checkpoint().await {
            error!(error = %e, "periodic checkpoint failed");
        }
    }

    fn fail_all(group: Vec<Pending>, why: &str) {
        for (_, reply) in group {
            let _ = reply.send(Err(LedgerError::Poisoned(why.to_owned())));
        }
    }

    async fn commit(&mut self, group: Vec<Pending>) {
        if let Some(p) = &self.poisoned {
            return Self::fail_all(group, p);
        }
        if let Err(e) = self.lock.check() {
            let why = format!("writer lock lost: {e}");
            self.poisoned = Some(why.clone());
            return Self::fail_all(group, &why);
        }
        let ts = crate::time::now_us().max(self.tip.last_ts);
        let mut records: Vec<Record> = Vec::new();
        // Versions granted to earlier callers of this group, on top of the tip.
        let mut granted: HashMap<String, u64> = HashMap::new();
        // Each accepted caller and its records' range in `records`.
        let mut accepted: Vec<(Reply, usize, usize)> = Vec::new();
        for (events, reply) in group {
            let mut local: HashMap<&str, u64> = HashMap::new();
            let mut conflict = None;
            let mut versions = Vec::with_capacity(events.len());
            for (i, e) in events.iter().enumerate() {
                let current = local
                    .get(e.stream.as_str())
                    .or_else(|| granted.get(&e.stream))
                    .copied()
                    .or_else(|| self.tip.streams.get(&e.stream).copied());
                if !e.expected_version.admits(current) {
                    conflict = Some(LedgerError::VersionConflict {
                        index: i,
                        stream: e.stream.clone(),
                        expected: e.expected_version,
                        current,
                    });
                    break;
                }
                let v = current.map_or(0, |c| c + 1);
                local.insert(&e.stream, v);
                versions.push(v);
            }
            if let Some(c) = conflict {
                let _ = reply.send(Err(c));
                continue;
            }
            for (s, v) in local {
                granted.insert(s.to_owned(), v);
            }
            let start = records.len();
            for (e, v) in events.into_iter().zip(versions) {
                records.push(Record {
                    seq: self.tip.size + records.len() as u64,
                    timestamp_us: ts,
                    stream: e.stream,
                    stream_version: v,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    content_type: e.content_type,
                    metadata: e.metadata.into_iter().collect(),
                    payload: e.payload,
                });
            }
            accepted.push((reply, start, records.len()));
        }
        if records.is_empty() {
            return;
        }
        let mut enc = BatchEncoder::new(self.tip.size, ts);
        for r in &records {
            enc.push(r);
        }
        let block = enc.finish();
        let hashes = hash_owned(&records);
        match self.write_block(&block).await {
            Ok(offset) => {
                let mut receipts = Vec::with_capacity(records.len());
                for (r, (leaf, mid)) in records.iter().zip(hashes) {
                    let hash = self.advance(r, mid, leaf);
                    receipts.push(Receipt {
                        seq: r.seq,
                        hash,
                        stream: String::new(),
                        version: r.stream_version,
                        timestamp_us: r.timestamp_us,
                        segment: self.tip.segment_index,
                        offset,
                    });
                }
                let mut receipts = receipts.into_iter();
                for (reply, start, end) in accepted {
                    let mine: Vec<Receipt> = receipts
                        .by_ref()
                        .take(end - start)
                        .zip(&records[start..end])
                        .map(|(mut rc, r)| {
                            rc.stream.clone_from(&r.stream);
                            rc
                        })
                        .collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let why = format!("append failed: {e}");
                error!(error = %e, "append failed; the writer stops");
                self.poisoned = Some(why.clone());
                for (reply, _, _) in accepted {
                    let _ = reply.send(Err(LedgerError::Poisoned(why.clone())));
                }
            }
        }
    }

    /// Applies a record the writer itself built: nothing to check.
    fn advance(&mut self, r: &Record, mid: chain::Midstate, leaf: Hash) -> Hash {
        let t = &mut self.tip;
        t.chain_head = mid.link(&t.chain_head);
        t.frontier.push(leaf);
        t.last_ts = r.timestamp_us;
        t.size += 1;
        match t.streams.get_mut(&r.stream) {
            Some(v) => *v = r.stream_version,
            None => {
                t.streams.insert(r.stream.clone(), r.stream_version);
            }
        }
        t.chain_head
    }

    /// Appends one block, rolling over to a new segment first if this one is
    /// full. Returns the block's offset in its segment.
    async fn write_block(&mut self, block: &[u8]) -> Result<u64, StoreError> {
        let max_blocks = self.opts.segment_max_blocks.min(self.store.max_blocks());
        let full_blocks = self.tip.segment_blocks + 1 > max_blocks;
        let full_bytes = self.tip.segment_len + block.len() as u64 > self.opts.segment_max_bytes
            && self.tip.segment_blocks > 1;
        if full_blocks || full_bytes {
            self.roll_over().await?;
        }
        let name = layout::segment(&self.meta.name, self.tip.segment_index);
        let offset = self.tip.segment_len;
        let end = self.store.append(&name, offset, block).await?;
        self.tip.segment_len = end;
        self.tip.segment_blocks += 1;
        Ok(offset)
    }

    /// Starts the next segment. Order matters for recovery: the new blob,
    /// then its header, then sealing the old one; a crash between any two
    /// leaves a state that `recover` completes.
    async fn roll_over(&mut self) -> Result<(), StoreError> {
        let old = layout::segment(&self.meta.name, self.tip.segment_index);
        let index = self.tip.segment_index + 1;
        let name = layout::segment(&self.meta.name, index);
        let header = SegmentHeader {
            ledger_id: self.meta.id,
            index,
            first_seq: self.tip.size,
            prev_chain: self.tip.chain_head,
        };
        self.store.create(&name).await?;
        self.store.append(&name, 0, &header.encode()).await?;
        self.store.seal(&old).await?;
        debug!(segment = %name, first_seq = self.tip.size, "rolled over to a new segment");
        self.tip.segment_index = index;
        self.tip.segment_len = HEADER_LEN as u64;
        self.tip.segment_blocks = 1;
        Ok(())
    }

    /// Signs and stores a checkpoint of the current head, with the snapshot
    /// that lets the next open skip everything it covers.
    pub async fn checkpoint(&mut self) -> Result<CheckpointInfo> {
        if let Some(p) = &self.poisoned {
            return Err(LedgerError::Poisoned(p.clone()));
        }
        if let Some(last) = &self.last_checkpoint {
            if last.checkpoint.size == self.tip.size {
                return Ok(last.clone());
            }
        }
        let cp = Checkpoint {
            origin: self.meta.origin(),
            size: self.tip.size,
            root: self.tip.frontier.root(),
            chain_head: self.tip.chain_head,
            time_us: crate::time::now_us(),
        };
        let note = cp.sign(&Meta::key_name(&self.meta.name), &self.key);
        let snap_blob = layout::snapshot(&self.meta.name, cp.size);
        let snap = self.tip.snapshot().encode();
        match self.store.put(&snap_blob, &snap).await {
            Ok(()) => {}
            // A crash between snapshot and checkpoint leaves an orphan
            // snapshot of this size. No checkpoint refers to it (or this one
            // would not be written), so it is replaced; usually its bytes are
            // the same, but a recovered rollover since moves the position.
            Err(StoreError::AlreadyExists { .. }) => {
                if self.store.read_all(&snap_blob).await? != snap {
                    self.store.delete(&snap_blob).await?;
                    self.store.put(&snap_blob, &snap).await?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        let blob = layout::checkpoint(&self.meta.name, cp.size);
        self.store.put(&blob, note.as_bytes()).await?;
        info!(size = cp.size, checkpoint = %blob, "wrote checkpoint");
        self.prune_snapshots(cp.size).await;
        let info = CheckpointInfo {
            blob,
            checkpoint: cp,
            note,
        };
        self.last_checkpoint = Some(info.clone());
        self.last_checkpoint_at = Instant::now();
        Ok(info)
    }
}

impl Writer {
    /// Snapshots are a cache, not evidence: keep the newest two (the newest
    /// for `open`, the one before in case the newest checkpoint is being
    /// read by someone) and drop the rest, or a ledger checkpointed every few
    /// minutes for ten years would hoard copies of its stream index.
    async fn prune_snapshots(&self, newest: u64) {
        let prefix = layout::snapshot_prefix(&self.meta.name);
        let mut sizes: Vec<(u64, String)> = match self.store.list(&prefix).await {
            Ok(blobs) => blobs
                .into_iter()
                .filter_map(|b| {
                    layout::snapshot_size(&self.meta.name, &b.name).map(|s| (s, b.name))
                })
                .filter(|(s, _)| *s <= newest)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list snapshots to prune");
                return;
            }
        };
        sizes.sort();
        let keep = sizes.len().saturating_sub(2);
        for (_, name) in sizes.into_iter().take(keep) {
            if let Err(e) = self.store.delete(&name).await {
                tracing::warn!(error = %e, snapshot = %name, "could not delete an old snapshot");
            }
        }
    }
}

fn hash_owned(records: &[Record]) -> Vec<(Hash, chain::Midstate)> {
    use rayon::prelude::*;
    let one = |r: &Record| {
        let leaf = r.leaf_hash();
        (leaf, chain::midstate(&leaf))
    };
    if records.len() >= 256 {
        records.par_iter().map(one).collect()
    } else {
        records.iter().map(one).collect()
    }
}
