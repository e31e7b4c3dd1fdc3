//! The queue and table conformance suites (`conformance/queue.rs`,
//! `conformance/table.rs`) run against the embedded redb stores, plus checks
//! of what only the local stores have: their files and their lock.
//!
//! The Azure stores run the same suites by implementing each suite's
//! `Backend` and adding one line each:
//! `queue::queue_conformance_tests!(azure_queue, AzureQueues::from_env());`

use std::sync::Arc;

use bi_ledger::backend::local::queue::QUEUE_DB_FILE;
use bi_ledger::backend::local::table::TABLE_DB_FILE;
use bi_ledger::backend::local::{LocalQueueStore, LocalTableStore};
use bi_ledger::backend::queue::{QueueError, QueueStore};
use bi_ledger::backend::table::{TableError, TableStore};

#[path = "conformance/queue.rs"]
mod queue;
#[path = "conformance/table.rs"]
mod table;

/// Each test gets a fresh directory; each `open` a new store on it, as a
/// restarted process would.
struct Local {
    dir: tempfile::TempDir,
}

impl Local {
    fn new() -> Self {
        Local {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl queue::Backend for Local {
    fn open(&self) -> Arc<dyn QueueStore> {
        Arc::new(LocalQueueStore::open_blocking(self.dir.path()).unwrap())
    }
}

impl table::Backend for Local {
    fn open(&self) -> Arc<dyn TableStore> {
        Arc::new(LocalTableStore::open_blocking(self.dir.path()).unwrap())
    }
}

queue::queue_conformance_tests!(local_queue, Local::new());
table::table_conformance_tests!(local_table, Local::new());

/// The suites' checks also pass one after another on one shared store,
/// as they will on one Azure account (no check depends on a fresh store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_table_checks_share_one_store() {
    assert!(table::CHECKS.len() >= 20);
    table::run_all(&Local::new()).await;
}

/// Both stores can live in one directory: each has its own file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_and_location() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalQueueStore::open(dir.path()).await.unwrap();
    let t = LocalTableStore::open(dir.path()).await.unwrap();
    assert!(dir.path().join(QUEUE_DB_FILE).is_file());
    assert!(dir.path().join(TABLE_DB_FILE).is_file());
    assert!(q.location().ends_with(QUEUE_DB_FILE), "{}", q.location());
    assert!(t.location().ends_with(TABLE_DB_FILE), "{}", t.location());
    // A directory that does not exist yet is created.
    let nested = dir.path().join("a/b");
    LocalQueueStore::open(&nested).await.unwrap();
    assert!(nested.join(QUEUE_DB_FILE).is_file());
}

/// redb locks its file: a second store on the same directory is refused
/// while the first is open (rather than two writers corrupting it), and
/// allowed once the first and its clones are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_second_open_waits_for_the_first_to_close() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalQueueStore::open(dir.path()).await.unwrap();
    let clone = first.clone();
    match LocalQueueStore::open(dir.path()).await {
        Err(QueueError::Backend { op, source }) => {
            assert!(op.contains("open"), "{op}");
            assert!(
                source.to_string().to_lowercase().contains("already open"),
                "{source}"
            );
        }
        other => panic!("wanted Backend error, got {other:?}"),
    }
    drop(first);
    assert!(
        LocalQueueStore::open(dir.path()).await.is_err(),
        "a clone still holds it"
    );
    drop(clone);
    LocalQueueStore::open(dir.path()).await.unwrap();

    let t = LocalTableStore::open(dir.path()).await.unwrap();
    assert!(matches!(
        LocalTableStore::open(dir.path()).await,
        Err(TableError::Backend { .. })
    ));
    drop(t);
    LocalTableStore::open(dir.path()).await.unwrap();
}
