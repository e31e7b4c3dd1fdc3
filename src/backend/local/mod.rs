//! Embedded implementations of [`QueueStore`](super::queue::QueueStore) and
//! [`TableStore`](super::table::TableStore) on redb: one database file each
//! in a directory of their own. Every write is one redb write transaction,
//! committed with redb's default (immediate, fsynced) durability before the
//! call returns, so what a call acknowledged survives a crash or restart.
//!
//! redb is synchronous: every call runs on tokio's blocking pool, so an
//! fsync never stalls the async workers. redb serialises write transactions
//! and lets reads run beside them. A database file can be open in one store
//! at a time (redb locks it): a second open fails until the first store and
//! every clone of it are dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod queue;
pub mod table;

pub use queue::LocalQueueStore;
pub use table::LocalTableStore;

/// Opens (or creates) `dir/file`, creating `dir` if need be.
fn open_db(dir: &Path, file: &str) -> Result<(Arc<redb::Database>, PathBuf), redb::Error> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file);
    let db = redb::Database::create(&path)?;
    Ok((Arc::new(db), path))
}

/// Runs `f` on the blocking pool. A panic in `f` becomes an error from
/// `on_panic` instead of tearing down the caller.
async fn blocking<T, E, F>(on_panic: impl FnOnce(String) -> E, f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(on_panic(e.to_string())),
    }
}

/// The fixed-width little-endian reader both record codecs use.
struct Reader<'a> {
    buf: &'a [u8],
}

/// A stored record did not decode: the file is damaged or was written by
/// an incompatible version.
#[derive(Debug, thiserror::Error)]
#[error("stored record is corrupt: {0}")]
struct Corrupt(&'static str);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.buf.len() < n {
            return Err(Corrupt("record ends early"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, Corrupt> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, len: usize) -> Result<&'a str, Corrupt> {
        std::str::from_utf8(self.take(len)?).map_err(|_| Corrupt("text is not UTF-8"))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(&self) -> Result<(), Corrupt> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Corrupt("trailing bytes"))
        }
    }
}
