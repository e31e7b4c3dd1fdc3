//! Finding Merkle nodes in the node caches the writer puts beside its
//! checkpoints (`format::nodes`), for proofs.
//!
//! A cache is only a hint: one that is missing, unreadable or of another
//! ledger is skipped (the prover hashes the records instead), and a wrong
//! hash in one makes the proof fail its check against the signed root,
//! after which the prover hashes the log. Only `verify` proves a cache
//! right.

use std::collections::HashMap;

use tracing::warn;

use super::layout;
use super::reader::LedgerReader;
use crate::backend::StoreError;
use crate::error::Result;
use crate::format::nodes::{Node, NodeCache};
use crate::format::Hash;

/// The node caches one proof has looked at.
pub(crate) struct NodeLookup<'a> {
    reader: &'a LedgerReader,
    /// Cache sizes (`to`) and names, by window; `u64::MAX`: all of them.
    listed: HashMap<u64, Vec<(u64, String)>>,
    loaded: HashMap<u64, Option<NodeCache>>,
}

impl<'a> NodeLookup<'a> {
    pub fn new(reader: &'a LedgerReader) -> Self {
        NodeLookup {
            reader,
            listed: HashMap::new(),
            loaded: HashMap::new(),
        }
    }

    /// Lists and loads, concurrently, what [`Self::get`] needs for `nodes`:
    /// a proof's few dozen nodes sit in as many caches, and against a
    /// remote store one round trip after another would add up.
    pub async fn prefetch(&mut self, nodes: &[Node]) -> Result<()> {
        let ends: Vec<u64> = nodes.iter().filter_map(Node::end).collect();
        let mut windows: Vec<u64> = ends
            .iter()
            .flat_map(|e| [e / layout::WINDOW, e / layout::WINDOW + 1])
            .filter(|w| !self.listed.contains_key(w))
            .collect();
        windows.sort_unstable();
        windows.dedup();
        let listed =
            futures::future::try_join_all(windows.iter().map(|&w| list(self.reader, w))).await?;
        self.listed.extend(windows.into_iter().zip(listed));
        let mut tos = Vec::new();
        for end in ends {
            tos.extend(self.cache_for(end).await?);
        }
        tos.sort_unstable();
        tos.dedup();
        tos.retain(|to| !self.loaded.contains_key(to));
        let loaded =
            futures::future::try_join_all(tos.iter().map(|&to| load(self.reader, to))).await?;
        self.loaded.extend(tos.into_iter().zip(loaded));
        Ok(())
    }

    /// Node `n`'s hash from the cache that holds it, if there is one.
    pub async fn get(&mut self, n: Node) -> Result<Option<Hash>> {
        let Some(end) = n.end() else {
            return Ok(None);
        };
        let Some(to) = self.cache_for(end).await? else {
            return Ok(None);
        };
        if !self.loaded.contains_key(&to) {
            let cache = load(self.reader, to).await?;
            self.loaded.insert(to, cache);
        }
        Ok(self.loaded[&to].as_ref().and_then(|c| c.get(n)))
    }

    /// The size of the cache with the smallest `to >= end`: the one that
    /// holds the nodes completed at `end`, unless it is missing.
    async fn cache_for(&mut self, end: u64) -> Result<Option<u64>> {
        for w in [end / layout::WINDOW, end / layout::WINDOW + 1, u64::MAX] {
            if !self.listed.contains_key(&w) {
                let found = list(self.reader, w).await?;
                self.listed.insert(w, found);
            }
            let found = self.listed[&w]
                .iter()
                .map(|(to, _)| *to)
                .filter(|to| *to >= end)
                .min();
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// The node caches whose size falls in `window` (`u64::MAX`: all).
async fn list(reader: &LedgerReader, window: u64) -> Result<Vec<(u64, String)>> {
    let name = reader.name();
    let prefix = layout::nodes_prefix(name);
    let prefix = if window == u64::MAX {
        prefix
    } else {
        layout::in_window(&prefix, window)
    };
    Ok(reader
        .store()
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|b| layout::nodes_size(name, &b.name).map(|s| (s, b.name)))
        .collect())
}

/// The node cache of size `to`, if it is there, decodes and is this
/// ledger's (else `None`, logged: caches are hints).
async fn load(reader: &LedgerReader, to: u64) -> Result<Option<NodeCache>> {
    let blob = layout::nodes(reader.name(), to);
    Ok(match reader.store().read_all(&blob).await {
        Ok(bytes) => match NodeCache::decode(&bytes) {
            Ok(c) if c.ledger_id == reader.id() && c.to == to => Some(c),
            Ok(_) => {
                warn!(cache = %blob, "node cache is of another ledger or size; hashing records instead");
                None
            }
            Err(e) => {
                warn!(cache = %blob, error = %e, "node cache is unreadable; hashing records instead");
                None
            }
        },
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    })
}
