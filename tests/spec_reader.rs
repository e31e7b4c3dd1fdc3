//! The independent reader of `tools/spec-reader`, written from
//! `ledger-format.md` alone, against the document's test vectors and
//! against a ledger the real binary (`CARGO_BIN_EXE_bi-ledger`) wrote: if
//! the two readers ever disagree, the document no longer says enough to
//! read the tool's ledgers (or one of the two is wrong).
//!
//! The reader is Python 3 (standard library only). CI has `python3`; where
//! it is missing these tests fail, they do not skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

#[path = "support/cli.rs"]
mod cli_support;
use cli_support::*;

const SEGMENT_MAX_BYTES: &str = "4096";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `python3 tools/spec-reader/check.py ARGS` from the repository root.
fn spec_reader(args: &[&str]) -> Out {
    let out = Command::new("python3")
        .arg("-B") // no __pycache__ in the checkout
        .arg(repo().join("tools/spec-reader/check.py"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): the spec-reader tests need python3 (3.11, \
                 standard library only) on PATH; CI has it, install it to run them"
            )
        });
    Out {
        code: out.status.code().expect("python3 was killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn event(stream: &str, ty: &str, payload: Value, metadata: Option<Value>) -> String {
    let mut e = json!({"stream": stream, "type": ty, "payload": payload});
    if let Some(m) = metadata {
        e["metadata"] = m;
    }
    e.to_string() + "\n"
}

/// `n` events from `start` on, over ASCII and non-ASCII streams, some with
/// metadata, with payloads whose numbers must be kept as written.
fn events(start: usize, n: usize) -> String {
    const STREAMS: [&str; 5] = ["order-1", "kunde-müller", "顧客-7", "émoji-🎉", "invoice-9"];
    (start..start + n)
        .map(|i| {
            let metadata =
                (i % 3 == 0).then(|| json!({"actor": "cfo", "corr": format!("c-{i}"), "zé": "ü"}));
            let payload =
                json!({"i": i, "note": "naïve café ✓", "n": [1.5, -0.0, 1e3], "ok": i % 2 == 0});
            event(
                STREAMS[i % STREAMS.len()],
                &format!("Event{}", i % 4),
                payload,
                metadata,
            )
        })
        .collect()
}

/// A ledger written by the binary: segments capped at 4 KiB (so it rolls
/// over several times), appended by several runs (each ends in a
/// checkpoint) with an explicit `checkpoint` between two of them, and more
/// than 1,024 records, so that it has a node cache (§11.4).
struct Written {
    f: Fixture,
    /// The receipts of the first append, all covered by a checkpoint.
    first: Vec<Value>,
    records: usize,
}

impl Written {
    fn new() -> Self {
        let f = Fixture::new();
        // The cap is not recorded in the ledger: every command that writes needs it.
        f.run(&["--segment-max-bytes", SEGMENT_MAX_BYTES, "init"])
            .ok();
        let mut records = 0;
        let mut first = Vec::new();
        for (i, n) in [400, 3, 5, 300, 420].into_iter().enumerate() {
            let receipts = f
                .run_stdin(
                    &["--segment-max-bytes", SEGMENT_MAX_BYTES, "append"],
                    &events(records, n),
                )
                .ok()
                .json_lines();
            assert_eq!(receipts.len(), n);
            if i == 0 {
                first = receipts;
            }
            if i == 2 {
                f.run(&["checkpoint"]).ok();
            }
            records += n;
        }
        Written { f, first, records }
    }

    fn data(&self) -> PathBuf {
        self.f.data()
    }

    /// `check.py ledger` on ledger `main`, with the key file `init` wrote.
    fn check(&self, read_jsonl: Option<&Path>) -> Out {
        let data = self.data();
        let key = data.join("main.key.pub");
        let mut args = vec![
            "ledger",
            data.to_str().unwrap(),
            "main",
            "--public-key",
            key.to_str().unwrap(),
        ];
        if let Some(p) = read_jsonl {
            args.extend(["--read-jsonl", p.to_str().unwrap()]);
        }
        spec_reader(&args)
    }
}

#[test]
fn the_spec_reader_checks_every_vector_of_the_format_document() {
    let out = spec_reader(&["vectors", "ledger-format.md"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let checked: usize = out
        .stdout
        .split_once("checked ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'checked N vectors': {}", out.describe()));
    assert!(
        checked > 30,
        "only {checked} vectors checked: {}",
        out.describe()
    );
}

#[test]
fn the_spec_reader_reads_what_the_binary_wrote() {
    let w = Written::new();
    let stats = w.f.run(&["stats"]).ok().json();
    assert!(
        stats["segments"].as_u64().unwrap() >= 4,
        "the cap must roll the log over: {stats}"
    );

    let read = w.f.run(&["read"]).ok();
    assert_eq!(read.json_lines().len(), w.records);
    let read_file = w.f.dir.path().join("read.jsonl");
    fs::write(&read_file, &read.stdout).unwrap();

    let out = w.check(Some(&read_file));
    assert_eq!(out.code, 0, "{}", out.describe());
    let expect = format!(
        "OK main: {} records, {} segments",
        w.records, stats["segments"]
    );
    assert!(
        out.stdout.contains(&expect),
        "want {expect:?}: {}",
        out.describe()
    );
    for part in [
        "1 node caches",
        &format!("{} lines of read output match", w.records),
    ] {
        assert!(
            out.stdout.contains(part),
            "want {part:?}: {}",
            out.describe()
        );
    }
}

#[test]
fn the_spec_reader_names_a_flipped_byte_in_a_checkpointed_batch() {
    let w = Written::new();
    // The first append's batch: every record of it is covered by a checkpoint.
    let (segment, offset) = (
        w.first[0]["segment"].as_u64().unwrap(),
        w.first[0]["offset"].as_u64().unwrap(),
    );
    let blob = format!("main/{segment:010}.seg");
    let path = w.f.path(&blob);
    let mut bytes = fs::read(&path).unwrap();
    // 32 bytes of frame and body header, then the first record (§5.1).
    bytes[offset as usize + 40] ^= 0x20;
    writable(&path);
    fs::write(&path, bytes).unwrap();

    let out = w.check(None);
    assert_eq!(out.code, 1, "{}", out.describe());
    let want = format!("{blob} at byte {offset}: frame CRC mismatch");
    assert!(
        out.stderr.contains(&want),
        "want {want:?}: {}",
        out.describe()
    );
}

#[test]
fn the_spec_reader_refuses_a_changed_checkpoint_signature() {
    let w = Written::new();
    let blob = format!("main/checkpoint-{:020}", w.first.len());
    let path = w.f.path(&blob);
    let text = fs::read_to_string(&path).unwrap();
    let sig_line = text.find("\n\u{2014} ").expect("a signature line") + 1;
    // A character inside the signature's base64 (not its padding), swapped
    // for another base64 digit: still canonical, no longer a valid signature.
    let at = sig_line + text[sig_line..].trim_end().len() - 10;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    writable(&path);
    fs::write(&path, bytes).unwrap();

    let out = w.check(None);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("FAIL {blob} at byte ")),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("signature"), "{}", out.describe());
}
