//! Each stream's last version, as the writer (for expected-version checks)
//! and `verify` (to re-derive snapshots) keep it: the table of the newest
//! snapshot, in its encoded form, with the streams changed since laid over
//! it. A ledger's memory then grows by about 20 bytes a stream, and only
//! the streams of the last checkpoint interval are held as owned strings.

use std::collections::HashMap;
use std::sync::Arc;

use crate::format::stream_table::StreamTable;

/// Changed streams fold into the table once they reach this many, or an
/// eighth of the table if that is more: a changed stream costs about five
/// times its place in the table, and folding, which rewrites the table,
/// then costs a constant amount per change over time.
const MIN_FOLD: usize = 1 << 16;

#[derive(Clone, Debug, Default)]
pub struct StreamVersions {
    table: Arc<StreamTable>,
    changed: HashMap<String, u64>,
}

/// What [`StreamVersions::advance`] replaced, for [`StreamVersions::restore`],
/// which undoes it as long as nothing is folded in between.
#[derive(Clone, Copy, Debug)]
pub struct Undo(Option<u64>);

impl StreamVersions {
    pub fn from_table(table: Arc<StreamTable>) -> StreamVersions {
        StreamVersions {
            table,
            changed: HashMap::new(),
        }
    }

    pub fn get(&self, stream: &str) -> Option<u64> {
        match self.changed.get(stream) {
            Some(v) => Some(*v),
            None => self.table.get(stream),
        }
    }

    /// Sets `stream`'s version to what `next` makes of the current one, if
    /// it makes one, with one lookup for a stream that changed lately (the
    /// hot path of the writer and of `verify`'s walk). Returns the new
    /// version and the undo, or the current version that `next` refused.
    pub fn advance(
        &mut self,
        stream: &str,
        next: impl FnOnce(Option<u64>) -> Option<u64>,
    ) -> Result<(u64, Undo), Option<u64>> {
        if let Some(v) = self.changed.get_mut(stream) {
            let current = *v;
            return match next(Some(current)) {
                Some(n) => {
                    *v = n;
                    Ok((n, Undo(Some(current))))
                }
                None => Err(Some(current)),
            };
        }
        let current = self.table.get(stream);
        match next(current) {
            Some(n) => {
                self.changed.insert(stream.to_owned(), n);
                Ok((n, Undo(None)))
            }
            None => Err(current),
        }
    }

    pub fn restore(&mut self, stream: &str, undo: Undo) {
        match undo.0 {
            Some(v) => {
                self.changed.insert(stream.to_owned(), v);
            }
            None => {
                self.changed.remove(stream);
            }
        }
    }

    /// Folds the changed streams into the table and returns it.
    pub fn table(&mut self) -> Arc<StreamTable> {
        if !self.changed.is_empty() {
            let changed = std::mem::take(&mut self.changed);
            let changes = sorted(&changed);
            match Arc::get_mut(&mut self.table) {
                // Held only here (verify's walk; a writer whose last
                // snapshot is written): rewritten in its own buffer.
                Some(table) => table.merge_in_place(&changes),
                None => self.table = Arc::new(self.table.merged(&changes)),
            }
        }
        self.table.clone()
    }

    /// The first stream (in byte order) whose version in `other` is not
    /// this one: the stream, its version here and in `other`. Compared
    /// entry by entry, without folding: `verify` holds a snapshot of
    /// millions of streams beside these at that point.
    pub fn first_difference(
        &self,
        other: &StreamTable,
    ) -> Option<(String, Option<u64>, Option<u64>)> {
        let changes = sorted(&self.changed);
        let mut ours = self.table.overlaid(changes).peekable();
        let mut theirs = other.iter().peekable();
        let (stream, ours, theirs) = loop {
            match (ours.peek(), theirs.peek()) {
                (None, None) => return None,
                (Some(a), Some(b)) if a == b => {
                    ours.next();
                    theirs.next();
                }
                (Some(a), Some(b)) if a.0 == b.0 => break (a.0, Some(a.1), Some(b.1)),
                (Some(a), Some(b)) if a.0 < b.0 => break (a.0, Some(a.1), None),
                (Some(a), None) => break (a.0, Some(a.1), None),
                (_, Some(b)) => break (b.0, None, Some(b.1)),
            }
        };
        Some((stream.to_owned(), ours, theirs))
    }

    /// Folds once enough streams changed: bounds the owned strings held by
    /// a walk over many streams that never checkpoints (`verify`, a long
    /// replay of the tail).
    pub fn fold_if_large(&mut self) {
        let limit = MIN_FOLD.max((self.table.len() / 8) as usize);
        if self.changed.len() >= limit {
            self.table();
        }
    }
}

fn sorted(changed: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut changes: Vec<(&str, u64)> = changed.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    changes.sort_unstable_by(|a, b| a.0.cmp(b.0));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u64),
        /// Sets these streams, then undoes them in reverse, as a refused
        /// append does.
        SetAndUndo(Vec<(u8, u64)>),
        /// An advance that `next` refuses: nothing changes.
        Refuse(u8),
        Fold,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, any::<u64>()).prop_map(|(s, v)| Op::Set(s, v)),
            proptest::collection::vec((0u8..24, any::<u64>()), 1..5).prop_map(Op::SetAndUndo),
            (0u8..24).prop_map(Op::Refuse),
            Just(Op::Fold),
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(op(), 0..60)) {
            let name = |s: u8| format!("stream-{s}");
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            let mut v = StreamVersions::default();
            for op in ops {
                match op {
                    Op::Set(s, x) => {
                        prop_assert_eq!(v.advance(&name(s), |_| Some(x)).map(|(n, _)| n), Ok(x));
                        model.insert(name(s), x);
                    }
                    Op::SetAndUndo(steps) => {
                        let undos: Vec<_> = steps
                            .iter()
                            .map(|(s, x)| v.advance(&name(*s), |_| Some(*x)).unwrap().1)
                            .collect();
                        for ((s, _), u) in steps.iter().zip(undos).rev() {
                            v.restore(&name(*s), u);
                        }
                    }
                    Op::Refuse(s) => {
                        let want = model.get(&name(s)).copied();
                        let mut seen = None;
                        let got = v.advance(&name(s), |current| {
                            seen = Some(current);
                            None
                        });
                        prop_assert_eq!(seen, Some(want));
                        prop_assert_eq!(got.map(|(n, _)| n), Err(want));
                    }
                    Op::Fold => {
                        let want = StreamTable::from_sorted(model.iter().map(|(s, x)| (s.as_str(), *x)));
                        prop_assert_eq!(v.first_difference(&want), None);
                        let t = v.table();
                        prop_assert_eq!(&*t, &want);
                    }
                }
                for s in 0..24 {
                    prop_assert_eq!(v.get(&name(s)), model.get(&name(s)).copied());
                }
                // One stream off, missing or extra: the first difference
                // names it.
                for s in 0..24u8 {
                    let mut other = model.clone();
                    let was = other.get(&name(s)).copied();
                    match was {
                        Some(x) if s % 2 == 0 => { other.insert(name(s), x.wrapping_add(1)); }
                        Some(_) => { other.remove(&name(s)); }
                        None => { other.insert(name(s), 3); }
                    }
                    let table = StreamTable::from_sorted(other.iter().map(|(s, x)| (s.as_str(), *x)));
                    prop_assert_eq!(
                        v.first_difference(&table),
                        Some((name(s), was, other.get(&name(s)).copied()))
                    );
                }
            }
        }
    }
}
