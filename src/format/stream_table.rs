//! Stream versions in the form a snapshot stores them, kept in that form in
//! memory too: the writer of a ledger with millions of entities holds one
//! byte string (about 20 bytes a stream) instead of a hash map of owned
//! strings (about 200), and a snapshot is written and read without a
//! per-stream allocation.
//!
//! ```text
//! ( varint len | stream bytes | varint version ){count}
//! ```
//! Streams are UTF-8, sorted by their bytes and unique. A snapshot stores
//! `count:u64le` before the entries (`format::snapshot`).

use super::{varint, DecodeError};

/// Entries between two points of the sparse index: a lookup binary-searches
/// the points and then decodes at most this many entries.
const STRIDE: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct StreamTable {
    count: u64,
    /// The entries are `bytes[start..end]`: a table decoded from a snapshot
    /// keeps the snapshot's bytes rather than copy the entries out of them.
    bytes: Vec<u8>,
    start: usize,
    end: usize,
    /// Offset in `bytes` of every `STRIDE`th entry, from the first.
    points: Vec<usize>,
}

impl PartialEq for StreamTable {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.entries_bytes() == other.entries_bytes()
    }
}

impl Eq for StreamTable {}

impl StreamTable {
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries' encoded bytes, without the count.
    pub fn entries_bytes(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// A table of entries given sorted and unique (checked in debug builds).
    pub fn from_sorted<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> StreamTable {
        let mut t = StreamTable::default();
        let mut last: Option<&str> = None;
        for (s, v) in entries {
            debug_assert!(last.is_none_or(|l| l < s), "streams sorted and unique");
            last = Some(s);
            t.push(s, v);
        }
        t
    }

    fn push(&mut self, stream: &str, version: u64) {
        if self.count.is_multiple_of(STRIDE as u64) {
            self.points.push(self.bytes.len());
        }
        varint::put(&mut self.bytes, stream.len() as u64);
        self.bytes.extend_from_slice(stream.as_bytes());
        varint::put(&mut self.bytes, version);
        self.end = self.bytes.len();
        self.count += 1;
    }

    /// Decodes `count` entries from `buf[pos..]`, checking that they are
    /// UTF-8, sorted and unique; returns the table, which keeps `buf`, and
    /// where the entries end. Offsets in errors are `buf`'s.
    pub fn decode(
        buf: Vec<u8>,
        pos: usize,
        count: u64,
    ) -> Result<(StreamTable, usize), DecodeError> {
        let mut at = pos;
        let mut points = Vec::new();
        let mut last: Option<&[u8]> = None;
        for i in 0..count {
            if i.is_multiple_of(STRIDE as u64) {
                points.push(at);
            }
            let entry = at;
            let (stream, version_at) = stream_at(&buf, &mut at)?;
            if std::str::from_utf8(stream).is_err() {
                return Err(DecodeError::new(
                    version_at - stream.len(),
                    "stream id is not UTF-8",
                ));
            }
            varint::get(&buf, &mut at)?;
            if last.is_some_and(|l| l >= stream) {
                return Err(DecodeError::new(
                    entry,
                    "stream ids are not strictly increasing",
                ));
            }
            last = Some(stream);
        }
        let t = StreamTable {
            count,
            bytes: buf,
            start: pos,
            end: at,
            points,
        };
        Ok((t, at))
    }

    /// The version recorded for `stream`, if any.
    pub fn get(&self, stream: &str) -> Option<u64> {
        let key = stream.as_bytes();
        // The last point whose stream is <= key starts the only run that
        // can hold it.
        let run = self
            .points
            .partition_point(|&p| self.stream_at(p) <= key)
            .checked_sub(1)?;
        let mut pos = self.points[run];
        let end = self.points.get(run + 1).copied().unwrap_or(self.end);
        while pos < end {
            let (s, v) = self.entry_at(&mut pos);
            match s.cmp(key) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Some(v),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        let mut pos = self.start;
        std::iter::from_fn(move || {
            (pos < self.end).then(|| {
                let (s, v) = self.entry_at(&mut pos);
                // Checked when the table was decoded or built.
                (std::str::from_utf8(s).expect("UTF-8 checked"), v)
            })
        })
    }

    /// This table with `changes` (sorted, unique) laid over it: a stream in
    /// both takes the version in `changes`.
    pub fn merged(&self, changes: &[(&str, u64)]) -> StreamTable {
        // Room for every change as a new entry: a table of millions of
        // streams that grows by one must not double its allocation.
        let room: usize = changes.iter().map(|(s, _)| entry_len_bound(s)).sum();
        let mut out = StreamTable {
            bytes: Vec::with_capacity(self.end - self.start + room),
            ..Default::default()
        };
        for (s, v) in self.overlaid(changes.iter().copied()) {
            out.push(s, v);
        }
        out
    }

    /// [`Self::merged`] in this table's own buffer, for a table nobody else
    /// holds: a table of millions of streams (76 MB at four million) is then
    /// not held twice while it is rewritten. The changes' worst-case room is
    /// added at the end, the entries are merged backwards from there (every
    /// entry lands at or after where it was read from, so nothing unread is
    /// overwritten) and the result is moved to the front.
    pub fn merge_in_place(&mut self, changes: &[(&str, u64)]) {
        if changes.is_empty() {
            return;
        }
        let room: usize = changes.iter().map(|(s, _)| entry_len_bound(s)).sum();
        let old_end = self.end;
        self.bytes.truncate(old_end);
        // Exactly: `resize` alone would double a buffer of tens of MB.
        self.bytes.reserve_exact(room);
        self.bytes.resize(old_end + room, 0);
        let mut w = old_end + room;
        let mut entry = Vec::new();
        let mut count = 0u64;
        let mut emit = |bytes: &mut Vec<u8>, w: &mut usize, stream: &[u8], version: u64| {
            entry.clear();
            varint::put(&mut entry, stream.len() as u64);
            entry.extend_from_slice(stream);
            varint::put(&mut entry, version);
            *w -= entry.len();
            bytes[*w..*w + entry.len()].copy_from_slice(&entry);
            count += 1;
        };
        let mut rest = changes;
        // Entries between two sparse points, decoded forwards so that they
        // can be walked backwards: (stream start, stream end, version).
        let mut run: Vec<(usize, usize, u64)> = Vec::with_capacity(STRIDE);
        let mut run_end = old_end;
        let mut stream = Vec::new();
        for &point in self.points.iter().rev() {
            run.clear();
            let mut pos = point;
            while pos < run_end {
                let (s, _) = stream_at(&self.bytes, &mut pos).expect("entries checked");
                let s_end = pos;
                let v = varint::get(&self.bytes, &mut pos).expect("entries checked");
                run.push((s_end - s.len(), s_end, v));
            }
            for &(s_start, s_end, v) in run.iter().rev() {
                // A copy: the entry written may overlap where it was read.
                stream.clear();
                stream.extend_from_slice(&self.bytes[s_start..s_end]);
                while let Some((&(c, cv), before)) = rest.split_last() {
                    if c.as_bytes() <= stream.as_slice() {
                        break;
                    }
                    emit(&mut self.bytes, &mut w, c.as_bytes(), cv);
                    rest = before;
                }
                match rest.split_last() {
                    Some((&(c, cv), before)) if c.as_bytes() == stream.as_slice() => {
                        emit(&mut self.bytes, &mut w, &stream, cv);
                        rest = before;
                    }
                    _ => emit(&mut self.bytes, &mut w, &stream, v),
                }
            }
            run_end = point;
        }
        for &(c, cv) in rest.iter().rev() {
            emit(&mut self.bytes, &mut w, c.as_bytes(), cv);
        }
        let len = old_end + room - w;
        self.bytes.copy_within(w.., 0);
        self.bytes.truncate(len);
        self.start = 0;
        self.end = len;
        self.count = count;
        self.points.clear();
        let mut pos = 0;
        for i in 0..count {
            if i.is_multiple_of(STRIDE as u64) {
                self.points.push(pos);
            }
            stream_at(&self.bytes, &mut pos).expect("entries written");
            varint::get(&self.bytes, &mut pos).expect("entries written");
        }
    }

    /// The entries of [`Self::merged`], in order, without building it.
    pub fn overlaid<'a>(
        &'a self,
        changes: impl IntoIterator<Item = (&'a str, u64)> + 'a,
    ) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        let mut old = self.iter().peekable();
        let mut new = changes.into_iter().peekable();
        std::iter::from_fn(move || match (old.peek(), new.peek()) {
            (Some(o), Some(n)) if o.0 < n.0 => old.next(),
            (Some(o), Some(n)) if o.0 == n.0 => {
                old.next();
                new.next()
            }
            (_, Some(_)) => new.next(),
            (Some(_), None) => old.next(),
            (None, None) => None,
        })
    }

    fn stream_at(&self, pos: usize) -> &[u8] {
        let mut p = pos;
        stream_at(&self.bytes, &mut p).expect("entries checked").0
    }

    fn entry_at(&self, pos: &mut usize) -> (&[u8], u64) {
        let (s, _) = stream_at(&self.bytes, pos).expect("entries checked");
        let v = varint::get(&self.bytes, pos).expect("entries checked");
        (s, v)
    }
}

/// The most bytes an entry of `stream` takes (its version at most 10).
fn entry_len_bound(stream: &str) -> usize {
    varint::len(stream.len() as u64) + stream.len() + 10
}

/// The stream id of the entry at `*pos`, advancing `pos` to its version.
fn stream_at<'a>(buf: &'a [u8], pos: &mut usize) -> Result<(&'a [u8], usize), DecodeError> {
    let at = *pos;
    let len = varint::get(buf, pos)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| pos.checked_add(l))
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| DecodeError::new(at, "stream id runs past the end"))?;
    let s = &buf[*pos..end];
    *pos = end;
    Ok((s, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn table(m: &BTreeMap<String, u64>) -> StreamTable {
        StreamTable::from_sorted(m.iter().map(|(s, v)| (s.as_str(), *v)))
    }

    proptest! {
        #[test]
        fn lookups_and_merges_agree_with_a_map(
            base in proptest::collection::btree_map(".{0,6}", any::<u64>(), 0..80),
            changes in proptest::collection::btree_map(".{0,6}", any::<u64>(), 0..40),
            probes in proptest::collection::vec(".{0,6}", 0..20),
        ) {
            let t = table(&base);
            prop_assert_eq!(t.len(), base.len() as u64);
            for (s, v) in &base {
                prop_assert_eq!(t.get(s), Some(*v));
            }
            for p in &probes {
                prop_assert_eq!(t.get(p), base.get(p).copied());
            }
            let mut want = base.clone();
            want.extend(changes.iter().map(|(s, v)| (s.clone(), *v)));
            let changes: Vec<(&str, u64)> = changes.iter().map(|(s, v)| (s.as_str(), *v)).collect();
            let m = t.merged(&changes);
            prop_assert!(m.bytes.capacity() <= t.entries_bytes().len() + changes.iter().map(|(s, _)| entry_len_bound(s)).sum::<usize>());
            prop_assert_eq!(&m, &table(&want));
            let mut in_place = t.clone();
            in_place.merge_in_place(&changes);
            prop_assert_eq!(&in_place, &m);
            prop_assert_eq!(&in_place.points, &m.points);
            for p in probes.iter().chain(want.keys()) {
                prop_assert_eq!(in_place.get(p), want.get(p).copied());
            }
            for p in probes.iter().chain(want.keys()) {
                prop_assert_eq!(m.get(p), want.get(p).copied());
            }
            let mut framed = vec![7u8; 3];
            framed.extend_from_slice(m.entries_bytes());
            framed.push(9);
            let (d, end) = StreamTable::decode(framed, 3, m.len()).unwrap();
            prop_assert_eq!(end, m.entries_bytes().len() + 3);
            prop_assert_eq!(&d, &m);
            for p in probes.iter().chain(want.keys()) {
                prop_assert_eq!(d.get(p), want.get(p).copied());
            }
            prop_assert!(d.iter().eq(m.iter()));
            // A table still in its snapshot's buffer, with bytes before and
            // after its entries, is merged in place too.
            let mut framed = vec![7u8; 3];
            framed.extend_from_slice(t.entries_bytes());
            framed.push(9);
            let (mut d, _) = StreamTable::decode(framed, 3, t.len()).unwrap();
            d.merge_in_place(&changes);
            prop_assert_eq!(&d, &m);
            let relative = |t: &StreamTable| t.points.iter().map(|p| p - t.start).collect::<Vec<_>>();
            prop_assert_eq!(relative(&d), relative(&m));
            for p in probes.iter().chain(want.keys()) {
                prop_assert_eq!(d.get(p), want.get(p).copied());
            }
        }
    }

    proptest! {
        /// Long ids that share most of their bytes, or differ only in NUL
        /// bytes past a shorter id's end, over many sparse points.
        #[test]
        fn lookups_among_ids_alike(
            base in proptest::collection::btree_map("(customer-0000000|ab|)[0\u{0}1]{0,12}", any::<u64>(), 0..300),
            probes in proptest::collection::vec("(customer-0000000|ab|)[0\u{0}1]{0,12}", 0..40),
        ) {
            let t = table(&base);
            let (d, _) = StreamTable::decode(t.entries_bytes().to_vec(), 0, t.len()).unwrap();
            for p in probes.iter().chain(base.keys()) {
                prop_assert_eq!(t.get(p), base.get(p).copied());
                prop_assert_eq!(d.get(p), base.get(p).copied());
            }
        }
    }

    #[test]
    fn decode_names_the_offending_entry() {
        let t = StreamTable::from_sorted([("a", 1), ("b", 2)]);
        let mut swapped = Vec::new();
        for (s, v) in [("b", 2u64), ("a", 1)] {
            varint::put(&mut swapped, s.len() as u64);
            swapped.extend_from_slice(s.as_bytes());
            varint::put(&mut swapped, v);
        }
        let e = StreamTable::decode(swapped, 0, 2).unwrap_err();
        assert_eq!(
            (e.offset, e.what.as_str()),
            (3, "stream ids are not strictly increasing")
        );
        let mut bad = t.entries_bytes().to_vec();
        bad[1] = 0xff;
        let e = StreamTable::decode(bad, 0, 2).unwrap_err();
        assert_eq!((e.offset, e.what.as_str()), (1, "stream id is not UTF-8"));
        // The id is checked before the version after it, as entries are
        // read in order.
        let e = StreamTable::decode(vec![1, 0xff, 0x80], 0, 1).unwrap_err();
        assert_eq!((e.offset, e.what.as_str()), (1, "stream id is not UTF-8"));
        let e = StreamTable::decode(t.entries_bytes().to_vec(), 0, 3).unwrap_err();
        assert_eq!(e.offset, 6);
    }
}
