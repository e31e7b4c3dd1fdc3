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
use bi_ledger::backend::table::{BatchOp, Entity, Property, TableError, TableStore};

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

/// Set in the child process of `local_stores_survive_sigkill`.
const CRASH_CHILD_DIR: &str = "BI_LEDGER_LOCAL_CRASH_CHILD_DIR";

/// The child of `local_stores_survive_sigkill`: writes through both stores,
/// says what it did, then waits to be killed. Run on its own it does
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
        return;
    };
    let q = LocalQueueStore::open(&dir).await.unwrap();
    q.create_queue("crash").await.unwrap();
    for body in ["a", "b"] {
        q.send("crash", body, &Default::default()).await.unwrap();
    }
    let m = q
        .receive("crash", 1, std::time::Duration::from_secs(2))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let t = LocalTableStore::open(&dir).await.unwrap();
    t.create_table("crash").await.unwrap();
    let e = Entity::new("p", "r").with("V", Property::Int64(i64::MAX));
    let etag = t.insert("crash", &e).await.unwrap();
    let ops: Vec<BatchOp> = (0..5)
        .map(|i| BatchOp::Insert(Entity::new("p", format!("b{i}"))))
        .collect();
    t.batch("crash", &ops).await.unwrap();
    println!("HELD {} {}", m.id, m.pop_receipt);
    println!("ETAG {etag}");
    println!("READY");
    // Keep both stores open: the kill must find them mid-life, not closed.
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
}

/// What a call acknowledged survives the process being killed with both
/// stores open (no clean shutdown, no destructor): redb committed and
/// fsynced it before the call returned. The received, undeleted message
/// comes back after its timeout with its dequeue count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_stores_survive_sigkill() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "local_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The child never exits by itself: kill it even if this test fails.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (mut held, mut etag) = (None, None);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test local_crash_child ... " before the first line.
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |w: &str| words.iter().position(|x| *x == w);
        if let Some(i) = at("HELD") {
            held = Some((words[i + 1].to_owned(), words[i + 2].to_owned()));
        } else if let Some(i) = at("ETAG") {
            etag = Some(words[i + 1].to_owned());
        } else if at("READY").is_some() {
            break;
        }
    }
    let (held, receipt) = held.expect("the child reported its received message");
    let etag = etag.expect("the child reported its ETag");
    child.0.kill().unwrap(); // SIGKILL: no destructor, no clean close
    child.0.wait().unwrap();

    let q = LocalQueueStore::open(dir.path()).await.unwrap();
    assert_eq!(q.approximate_len("crash").await.unwrap(), 2);
    let other = q
        .receive("crash", 32, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(other.len(), 1, "only the message nobody held is visible");
    assert_ne!(other[0].id, held);
    let start = std::time::Instant::now();
    let back = loop {
        let got = q
            .receive("crash", 1, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        if let Some(m) = got.into_iter().next() {
            break m;
        }
        assert!(
            start.elapsed().as_secs() < 8,
            "held message never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!((back.id.as_str(), back.dequeue_count), (held.as_str(), 2));
    assert!(matches!(
        q.delete("crash", &held, &receipt).await,
        Err(QueueError::PopReceiptMismatch { .. })
    ));

    let t = LocalTableStore::open(dir.path()).await.unwrap();
    let e = t
        .get("crash", "p", "r")
        .await
        .unwrap()
        .expect("insert survived");
    assert_eq!(e.get("V"), Some(&Property::Int64(i64::MAX)));
    assert_eq!(e.etag.map(|t| t.0), Some(etag));
    let rows = t.query_all("crash", &Default::default()).await.unwrap();
    assert_eq!(rows.len(), 6, "the whole batch survived");
}
