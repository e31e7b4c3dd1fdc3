//! Shared by the benches: event generation (256-byte canonical JSON
//! payloads), where bench data lives, latency percentiles and the JSON side
//! files that `tools/bench.sh` collects.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::{LedgerOptions, NewEvent};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

/// Exact size of every payload, in bytes of canonical JSON.
pub const PAYLOAD_BYTES: usize = 256;

/// The cargo target directory (criterion writes `criterion/` under it).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

/// Where bench ledgers live: under the target dir, on the same file system
/// as the work tree (so fsync costs what it costs for real data).
pub fn data_dir() -> PathBuf {
    let d = target_dir().join("bench-data");
    std::fs::create_dir_all(&d).expect("create target/bench-data");
    d
}

/// A fresh temporary directory under [`data_dir`], removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(data_dir())
        .expect("tempdir under target/bench-data")
}

/// Whether criterion runs in its quick test mode (`cargo bench -- --test`,
/// or `cargo test --benches`, which passes no `--bench`).
pub fn quick_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench")
}

pub fn store(dir: &Path) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::new(dir).expect("fs store").shared())
}

pub fn options() -> LedgerOptions {
    LedgerOptions::new(SigningKey::from_bytes(&[7; 32]))
}

/// The runtime every bench uses: 2 workers, as on the 2-core target.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// splitmix64: a cheap, deterministic scramble for picking streams/types.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const TYPES: [&str; 6] = [
    "DecisionQueued",
    "VoteCast",
    "VoteCast",
    "CommentAdded",
    "BudgetAdjusted",
    "DecisionResolved",
];
const AGENTS: [&str; 5] = ["cfo", "cto", "coo", "legal", "ops"];
const FILLER: &str = "Approved within the quarterly budget envelope after review by finance; \
    follow-up actions are tracked on the linked decision and owners were notified. \
    Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt \
    ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.";

/// A business-like JSON object for event `i` of `stream`, padded (in its
/// `note` field) to exactly [`PAYLOAD_BYTES`] bytes of canonical JSON.
pub fn payload(i: u64, stream: &str, event_type: &str) -> Value {
    let r = mix(i ^ 0x5eed);
    let mut v = json!({
        "actor": format!("agent-{}", AGENTS[(r % 5) as usize]),
        "amount": {"cents": (r >> 8) % 100_000_000, "currency": "EUR"},
        "decision_id": stream,
        "kind": event_type,
        "n": i,
        "note": "",
        "occurred_at": format!("2025-11-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            1 + (r >> 20) % 28, (r >> 25) % 24, (r >> 30) % 60, (r >> 36) % 60, (r >> 42) % 1_000_000),
        "vote": if r & 1 == 0 { "approve" } else { "reject" },
    });
    let bare = serde_json::to_vec(&v).unwrap().len();
    assert!(bare < PAYLOAD_BYTES, "payload skeleton is {bare} bytes");
    v["note"] = Value::String(FILLER[..PAYLOAD_BYTES - bare].to_owned());
    v
}

/// Event `i` of a workload over `streams` streams. Streams and types are
/// picked pseudo-randomly, so a stream id is rarely repeated by the next
/// record (the conservative case for bytes per event). No metadata.
pub fn event(i: u64, streams: u64) -> NewEvent {
    let r = mix(i);
    let stream = format!("decision-{:06}", r % streams);
    let event_type = TYPES[((r >> 32) % TYPES.len() as u64) as usize];
    let e = NewEvent::json(&stream, event_type, &payload(i, &stream, event_type));
    debug_assert_eq!(e.payload.len(), PAYLOAD_BYTES);
    e
}

/// A pool of ready events to clone from, so that building JSON stays out of
/// timed regions and off the cores the writer needs.
pub struct Pool(Vec<NewEvent>);

impl Pool {
    pub fn new(n: usize, streams: u64) -> Pool {
        let p: Vec<NewEvent> = (0..n as u64).map(|i| event(i, streams)).collect();
        assert!(p.iter().all(|e| e.payload.len() == PAYLOAD_BYTES));
        Pool(p)
    }

    pub fn get(&self, i: u64) -> NewEvent {
        self.0[(i % self.0.len() as u64) as usize].clone()
    }

    pub fn batch(&self, start: u64, n: usize) -> Vec<NewEvent> {
        (start..start + n as u64).map(|i| self.get(i)).collect()
    }
}

/// Total bytes of the ledger's segment files (`*.seg`) under `root`.
pub fn segment_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            total += segment_bytes(&p);
        } else if p.extension().is_some_and(|x| x == "seg") {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// Latency percentiles (nearest rank) of a set of samples.
#[derive(Clone, Debug)]
pub struct Latency {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Latency {
    pub fn of(samples: &mut [Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let sum: Duration = samples.iter().sum();
        Some(Latency {
            count: n,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[n - 1],
            mean: sum / n as u32,
        })
    }

    fn json(&self) -> Value {
        let us = |d: Duration| (d.as_secs_f64() * 1e6 * 10.0).round() / 10.0;
        json!({
            "count": self.count,
            "p50_us": us(self.p50),
            "p90_us": us(self.p90),
            "p99_us": us(self.p99),
            "p999_us": us(self.p999),
            "max_us": us(self.max),
            "mean_us": us(self.mean),
        })
    }
}

/// Prints a labelled latency line to stderr and records it (with `extra`
/// fields) under `name` in `target/criterion/bi-ledger-latency.json`.
pub fn report_latency(name: &str, samples: &mut [Duration], extra: Value) {
    let Some(l) = Latency::of(samples) else {
        return;
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    eprintln!(
        "LATENCY {name}: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us, mean {:.1} us (n = {})",
        us(l.p50),
        us(l.p99),
        us(l.p999),
        us(l.max),
        us(l.mean),
        l.count
    );
    let mut v = l.json();
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    record("bi-ledger-latency.json", name, v);
}

/// Records a fact (bytes per event, ledger size...) under `name` in
/// `target/criterion/bi-ledger-facts.json`.
pub fn report_fact(name: &str, v: Value) {
    eprintln!("FACT {name}: {v}");
    record("bi-ledger-facts.json", name, v);
}

fn record(file: &str, name: &str, v: Value) {
    let dir = target_dir().join("criterion");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(file);
    let mut all = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let mut v = v;
    if let Value::Object(m) = &mut v {
        m.insert("quick_mode".into(), quick_mode().into());
        m.insert(
            "recorded_unix_s".into(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .into(),
        );
    }
    all[name] = v;
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&all).unwrap()).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}
