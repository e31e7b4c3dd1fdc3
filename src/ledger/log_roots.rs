//! Merkle roots of leaf ranges hashed from the log itself: what a proof
//! needs where no node cache holds it (`node_cache.rs`), and all of it for
//! a size no checkpoint has.

use std::ops::ControlFlow;
use std::sync::Arc;

use rayon::prelude::*;
use tokio::sync::oneshot;

use super::reader::{Due, LedgerReader};
use super::scan::{pipelined, Chunk};
use crate::error::{LedgerError, Result};
use crate::format::merkle::{self, Frontier};
use crate::format::segment::HEADER_LEN;
use crate::format::Hash;

impl LedgerReader {
    /// Merkle roots of the given (disjoint) leaf ranges, in the given
    /// order, from one pass over the log up to record `size`, starting at
    /// the first range (or `want`); hands the entry of record `want` to
    /// `found` on the way.
    ///
    /// A pipeline as in `verify`: rayon decodes and hashes one chunk, and
    /// cuts each range's leaves in it into perfect subtrees, while the next
    /// chunk is read; this task only merges the subtrees, in order.
    pub(crate) async fn range_roots(
        &self,
        ranges: &[(u64, u64)],
        want: Option<u64>,
        size: u64,
        mut found: impl FnMut(&[u8]),
    ) -> Result<Vec<Hash>> {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].0);
        let sorted: Arc<Vec<(u64, u64)>> = Arc::new(order.iter().map(|&i| ranges[i]).collect());
        let from = ranges.iter().map(|r| r.0).chain(want).min().unwrap_or(0);
        let mut merge = Merge {
            roots: vec![None; sorted.len()],
            frontier: Frontier::new(),
            sorted: sorted.clone(),
        };
        let segments = self.segments();
        let at = self.seek(from).await?;
        let (first, offset) = (at.segment, at.offset);
        // Where the read has got to, which names damage met there (where it
        // starts, by its batch's first record). A gap in the log is damage,
        // named as a read names it, not a tree that will not add up.
        let mut due = Due(at.first_seq);
        let last = segments.len().saturating_sub(1);
        for (i, seg) in segments.iter().enumerate().skip(first) {
            if i > first {
                due.segment(seg)?;
            }
            if seg.first_seq >= size {
                break;
            }
            let start = if i == first {
                offset
            } else {
                HEADER_LEN as u64
            };
            let mut scan = self.scanner(seg, start);
            // A proof's groups of records are often a few hundred KiB; a
            // long scan doubles its way up to full chunks in a few reads.
            if i == first {
                scan = scan.starting_small();
            }
            let flow = pipelined(
                &mut scan,
                |c| spawn_pieces(c, seg.name.clone(), sorted.clone(), want, from, size),
                |frames: Result<Vec<FramePieces>>| {
                    for frame in frames? {
                        due.batch(
                            &seg.name,
                            frame.offset,
                            frame.first,
                            frame.end - frame.first,
                        )?;
                        if let Some(entry) = &frame.entry {
                            found(entry);
                        }
                        merge.add(frame.pieces)?;
                    }
                    Ok::<_, LedgerError>(if due.0 >= size {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    })
                },
            )
            .await?;
            if flow.is_break() {
                break;
            }
            if let Some(bad) = scan.bad {
                self.bad_frame(seg, i == last, bad, due.0).await?;
            }
        }
        if due.0 < size {
            self.check_end(due.0, size).await?;
            return Err(LedgerError::InvalidArgument(format!(
                "this reader sees {} records, fewer than the {size} asked for (a reader sees the segments as they were when it was opened; open a new one to prove newer records)",
                due.0
            )));
        }
        let mut roots = vec![None; ranges.len()];
        for (root, &i) in merge.roots.into_iter().zip(&order) {
            roots[i] = root;
        }
        roots
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| LedgerError::InvalidArgument("proof range outside the log".into()))
            })
            .collect()
    }
}

/// One frame's share of the proof: for each range it meets (by index in
/// the sorted ranges), the perfect subtrees of its leaves there, placed
/// relative to the range's start, as RFC 9162 hashes the range on its own.
struct FramePieces {
    pieces: Vec<(usize, Vec<(u32, Hash)>)>,
    /// The canonical entry of the record asked for, if the frame holds it.
    entry: Option<Vec<u8>>,
    /// Where the frame is, and the sequence numbers of its first record
    /// and the one after its last.
    offset: u64,
    first: u64,
    end: u64,
}

fn spawn_pieces(
    chunk: Chunk,
    name: String,
    sorted: Arc<Vec<(u64, u64)>>,
    want: Option<u64>,
    from: u64,
    to: u64,
) -> oneshot::Receiver<Result<Vec<FramePieces>>> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let frames = (0..chunk.frames.len())
            .into_par_iter()
            .map(|i| {
                let body = chunk.frame(i);
                let end = body.first_seq + u64::from(body.count);
                let mut out = FramePieces {
                    pieces: Vec::new(),
                    entry: None,
                    offset: chunk.offset(i),
                    first: body.first_seq,
                    end,
                };
                if end <= from || body.first_seq >= to {
                    return Ok(out);
                }
                let records = chunk.records(i, &name)?;
                // The range each record falls in, if any, and its leaves.
                let mut cur: Option<(usize, u64, Vec<Hash>)> = None;
                let mut ri = sorted.partition_point(|r| r.1 <= body.first_seq);
                let mut entry = Vec::new();
                for r in &records {
                    entry.clear();
                    r.write_entry(&mut entry);
                    if want == Some(r.seq) {
                        out.entry = Some(entry.clone());
                    }
                    while ri < sorted.len() && sorted[ri].1 <= r.seq {
                        ri += 1;
                    }
                    let inside = ri < sorted.len() && sorted[ri].0 <= r.seq;
                    if cur.as_ref().is_some_and(|c| !inside || c.0 != ri) {
                        let (k, start, leaves) = cur.take().unwrap();
                        out.pieces
                            .push((k, merkle::range_subtrees(start - sorted[k].0, &leaves)));
                    }
                    if inside {
                        cur.get_or_insert_with(|| (ri, r.seq, Vec::new()))
                            .2
                            .push(merkle::leaf_hash(&entry));
                    }
                }
                if let Some((k, start, leaves)) = cur {
                    out.pieces
                        .push((k, merkle::range_subtrees(start - sorted[k].0, &leaves)));
                }
                Ok(out)
            })
            .collect();
        // The receiver is gone only if the proof already failed.
        let _ = tx.send(frames);
    });
    rx
}

/// Merges the pieces of the ranges, in log order, into their roots.
struct Merge {
    roots: Vec<Option<Hash>>,
    frontier: Frontier,
    sorted: Arc<Vec<(u64, u64)>>,
}

impl Merge {
    fn add(&mut self, pieces: Vec<(usize, Vec<(u32, Hash)>)>) -> Result<()> {
        for (k, subtrees) in pieces {
            let (a, b) = self.sorted[k];
            for (height, hash) in subtrees {
                // Pieces come in log order, each placed relative to its
                // range's start, so they always fit.
                self.frontier.append_subtree(height, hash)?;
            }
            if self.frontier.size() == b - a {
                self.roots[k] = Some(self.frontier.root());
                self.frontier = Frontier::new();
            }
        }
        Ok(())
    }
}
