//! A container of its own for each Azure test, deleted when the test ends,
//! and store handles on it, directly or through the fault proxy. Shared by
//! the Azure blob test files (declare it as `#[path =
//! "support/container.rs"] mod container;`, beside `support/proxy.rs` as
//! `mod proxy`).

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;

use std::time::Duration;

use bi_ledger::backend::azure::{AzureBlobStore, AzureOptions, ConnectionInfo, RetrySettings};
use bi_ledger::backend::BlobStore;

use crate::proxy::{start_proxy, upstream_of, Faults};

pub fn unique_container(tag: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{tag}-{}", &id[..20])
}

/// Runs a future to completion from synchronous code inside a
/// multi-threaded runtime (the conformance suite's namespaces are sync).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// A container that is deleted when dropped.
pub struct Container {
    pub account: ConnectionInfo,
    pub name: String,
    pub opts: AzureOptions,
}

impl Container {
    pub async fn new(account: &ConnectionInfo, tag: &str, opts: AzureOptions) -> Container {
        let c = Container {
            account: account.clone(),
            name: unique_container(tag),
            opts,
        };
        c.store().create_container_if_missing().await.unwrap();
        c
    }

    /// A new, independent store handle on the container.
    pub fn store(&self) -> AzureBlobStore {
        AzureBlobStore::new(self.account.clone(), &self.name, self.opts.clone()).unwrap()
    }

    pub fn dyn_store(&self) -> Arc<dyn BlobStore> {
        Arc::new(self.store())
    }
}

/// A store whose requests go through a fault-injecting proxy, with short
/// retry delays.
pub async fn proxied(account: &ConnectionInfo, tag: &str) -> (Container, Arc<Faults>) {
    proxied_with(account, tag, AzureOptions::default()).await
}

/// [`proxied`], with `opts` but for the retry delays.
pub async fn proxied_with(
    account: &ConnectionInfo,
    tag: &str,
    opts: AzureOptions,
) -> (Container, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let upstream = upstream_of(&account.blob_endpoint);
    let port = start_proxy(upstream, faults.clone()).await;
    let mut via = account.clone();
    via.blob_endpoint.set_port(Some(port)).unwrap();
    let opts = AzureOptions {
        retry: RetrySettings {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..RetrySettings::default()
        },
        ..opts
    };
    (Container::new(&via, tag, opts).await, faults)
}

impl Drop for Container {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            let s = self.store();
            let _ = block_on(s.delete_container());
        }
    }
}
