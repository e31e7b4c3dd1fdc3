//! One base for the test stores that wrap another and change a few of its
//! calls (a failure injected, a pause, a count): a wrapper implements
//! [`Wrap`], overrides what it changes, and [`Wrapped`] makes it a
//! `BlobStore`. Every call it does not change goes to the store inside, so
//! a method added to `BlobStore` is passed on here once, not forgotten in
//! one of the wrappers.
//!
//! The three methods that `BlobStore` provides (`seal_at`, `put_parts`,
//! `read_all`) are made of the wrapper's own calls, as `BlobStore`'s
//! defaults are: a wrapper that fails `seal` also fails the seal of a
//! rollover, and one that counts `put` counts a snapshot's parts.

use std::ops::Deref;

use bi_ledger::backend::{seal_at_in_two_steps, BlobInfo, BlobStore, StoreError, WriterLock};

#[async_trait::async_trait]
pub trait Wrap: Send + Sync + std::fmt::Debug {
    fn inner(&self) -> &dyn BlobStore;

    async fn create(&self, name: &str) -> Result<(), StoreError> {
        self.inner().create(name).await
    }
    async fn append(&self, name: &str, at: u64, block: &[u8]) -> Result<u64, StoreError> {
        self.inner().append(name, at, block).await
    }
    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner().read(name, offset, len).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError> {
        self.inner().list(prefix).await
    }
    async fn info(&self, name: &str) -> Result<BlobInfo, StoreError> {
        self.inner().info(name).await
    }
    async fn seal(&self, name: &str) -> Result<(), StoreError> {
        self.inner().seal(name).await
    }
    /// `BlobStore`'s default, on `outer` (the [`Wrapped`] around this):
    /// the length checked through [`Wrap::info`], then [`Wrap::seal`].
    async fn seal_at(
        &self,
        outer: &dyn BlobStore,
        name: &str,
        expected_len: u64,
    ) -> Result<(), StoreError> {
        seal_at_in_two_steps(outer, name, expected_len).await
    }
    async fn trim(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.inner().trim(name, len).await
    }
    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.inner().put(name, data).await
    }
    /// The parts joined, then [`Wrap::put`]: `BlobStore`'s default.
    async fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        self.put(name, &parts.concat()).await
    }
    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.inner().truncate(name, len).await
    }
    async fn lock(&self, name: &str) -> Result<Box<dyn WriterLock>, StoreError> {
        self.inner().lock(name).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner().delete(name).await
    }
    /// [`Wrap::info`], then [`Wrap::read`]: `BlobStore`'s default.
    async fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let info = self.info(name).await?;
        self.read(name, 0, info.size).await
    }
}

/// A [`Wrap`] as a `BlobStore`; derefs to the wrapper, so a test keeps one
/// handle to set its switches and to give to a ledger.
#[derive(Debug)]
pub struct Wrapped<W>(pub W);

impl<W> Deref for Wrapped<W> {
    type Target = W;
    fn deref(&self) -> &W {
        &self.0
    }
}

#[async_trait::async_trait]
impl<W: Wrap> BlobStore for Wrapped<W> {
    fn location(&self) -> String {
        self.0.inner().location()
    }
    fn max_block_size(&self) -> usize {
        self.0.inner().max_block_size()
    }
    fn max_blocks(&self) -> u64 {
        self.0.inner().max_blocks()
    }
    fn truncates(&self) -> bool {
        self.0.inner().truncates()
    }
    async fn create(&self, name: &str) -> Result<(), StoreError> {
        self.0.create(name).await
    }
    async fn append(&self, name: &str, at: u64, block: &[u8]) -> Result<u64, StoreError> {
        self.0.append(name, at, block).await
    }
    async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.0.read(name, offset, len).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError> {
        self.0.list(prefix).await
    }
    async fn info(&self, name: &str) -> Result<BlobInfo, StoreError> {
        self.0.info(name).await
    }
    async fn seal(&self, name: &str) -> Result<(), StoreError> {
        self.0.seal(name).await
    }
    async fn seal_at(&self, name: &str, expected_len: u64) -> Result<(), StoreError> {
        self.0.seal_at(self, name, expected_len).await
    }
    async fn trim(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.0.trim(name, len).await
    }
    async fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.0.put(name, data).await
    }
    async fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        self.0.put_parts(name, parts).await
    }
    async fn truncate(&self, name: &str, len: u64) -> Result<(), StoreError> {
        self.0.truncate(name, len).await
    }
    async fn lock(&self, name: &str) -> Result<Box<dyn WriterLock>, StoreError> {
        self.0.lock(name).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.0.delete(name).await
    }
    async fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.0.read_all(name).await
    }
}
