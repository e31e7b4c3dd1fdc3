//! The `bi-ledger` binary end to end: every test drives the real binary
//! (`CARGO_BIN_EXE_bi-ledger`) in its own temporary data directory, and
//! checks exit codes (0 ok, 1 integrity failure, 2 usage or I/O error),
//! stdout (JSON lines) and stderr.
//!
//! The tamper tests flip every byte of a small ledger's segment, newest
//! checkpoint, snapshot and `LEDGER` file in turn and run `verify` on each
//! flip; the torn-tail test cuts the segment at every byte of its last batch
//! and re-opens it through `bi-ledger append`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use bi_ledger::backend::fs::FsStore;
use bi_ledger::backend::BlobStore;
use bi_ledger::{Ledger, LedgerOptions, NewEvent};
use serde_json::{json, Value};

#[path = "support/cli.rs"]
mod cli_support;
#[path = "support/dirs.rs"]
mod dirs;
use cli_support::*;
use dirs::copy_dir;

// ---------------------------------------------------------------------------
// init, append, read, stats, verify

#[test]
fn init_append_read_filter_stats_verify() {
    let (f, init) = Fixture::init();
    let public_key = init["public_key"].as_str().unwrap();
    assert!(public_key.starts_with("bi-ledger/main+"), "{init}");
    assert_eq!(
        fs::read_to_string(f.path("main.key.pub")).unwrap().trim(),
        public_key
    );
    assert!(fs::read_to_string(f.path("main.key"))
        .unwrap()
        .starts_with("PRIVATE+KEY+bi-ledger/main+"));
    // A second init must not replace the ledger or its key.
    assert_eq!(f.run(&["init"]).code, 2);

    // Keys out of order and spaces: stored as canonical JSON.
    let first = [
        r#"{"stream": "order-1", "type": "OrderPlaced", "payload": {"total": 12.5, "items": [{"sku": "a", "qty": 2}], "currency": "EUR"}, "expected_version": "no_stream", "metadata": {"actor": "cfo", "corr": "c-1"}}"#,
        "",
        r#"{"stream":"order-1","type":"OrderPaid","payload":{"b":1,"a":null},"expected_version":0,"schema_version":3}"#,
        r#"{"stream":"customer-7","type":"CustomerCreated","payload":"plain string","expected_version":"any"}"#,
    ]
    .join("\n");
    let receipts = f.append(&first).ok().json_lines();
    assert_eq!(receipts.len(), 3, "one receipt per event line");
    assert_eq!(seqs(&receipts), vec![0, 1, 2]);
    let versions: Vec<(String, u64)> = receipts
        .iter()
        .map(|r| {
            (
                r["stream"].as_str().unwrap().to_owned(),
                r["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            ("order-1".into(), 0),
            ("order-1".into(), 1),
            ("customer-7".into(), 0)
        ]
    );
    for r in &receipts {
        assert_eq!(r["hash"].as_str().unwrap().len(), 64, "{r}");
        assert_eq!(r["segment"], 0);
        assert_eq!(r["offset"], HEADER_LEN as u64, "one input = one batch");
    }

    // A time strictly between the two appends.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let between = bi_ledger::time::format_us(bi_ledger::time::now_us());
    std::thread::sleep(std::time::Duration::from_millis(5));

    let second = format!(
        "{}\n{}\n",
        r#"{"stream":"order-1","type":"OrderShipped","payload":[3,2,1],"expected_version":1}"#,
        line("invoice-9", "InvoiceIssued", json!({"n": 9}))
    );
    let receipts2 = f.append(&second).ok().json_lines();
    assert_eq!(seqs(&receipts2), vec![3, 4], "seq continues across runs");
    assert_eq!(receipts2[0]["version"], 2);

    let all = f.read(&[]);
    assert_eq!(seqs(&all), vec![0, 1, 2, 3, 4]);
    let expect_payloads = [
        json!({"currency":"EUR","items":[{"qty":2,"sku":"a"}],"total":12.5}),
        json!({"a":null,"b":1}),
        json!("plain string"),
        json!([3, 2, 1]),
        json!({"n": 9}),
    ];
    for (e, want) in all.iter().zip(&expect_payloads) {
        assert_eq!(&e["payload"], want, "{e}");
        assert_eq!(e["content_type"], "application/json");
    }
    // Canonical form on the wire: sorted keys, no white space.
    assert!(
        f.run(&["read", "--to", "1"])
            .stdout
            .contains(r#""payload":{"currency":"EUR","items":[{"qty":2,"sku":"a"}],"total":12.5}"#),
        "payload not canonical"
    );
    assert_eq!(all[0]["metadata"], json!({"actor": "cfo", "corr": "c-1"}));
    assert_eq!(all[1]["schema_version"], 3);
    assert_eq!(all[0]["schema_version"], 1);
    assert_eq!(all[0]["type"], "OrderPlaced");
    for (e, r) in all.iter().zip(receipts.iter().chain(&receipts2)) {
        assert_eq!(e["timestamp"], r["timestamp"]);
        assert_eq!(e["stream"], r["stream"]);
        assert_eq!(e["version"], r["version"]);
    }

    // Filters.
    let order = f.read(&["--stream", "order-1"]);
    assert_eq!(seqs(&order), vec![0, 1, 3]);
    assert_eq!(
        order
            .iter()
            .map(|e| e["version"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)]
    );
    assert_eq!(seqs(&f.read(&["--from", "1", "--to", "3"])), vec![1, 2]);
    assert_eq!(seqs(&f.read(&["--from", "3"])), vec![3, 4]);
    assert_eq!(seqs(&f.read(&["--to", "0"])), Vec::<u64>::new());
    assert_eq!(
        seqs(&f.read(&["--stream", "order-1", "--from", "1", "--to", "4"])),
        vec![1, 3]
    );
    assert_eq!(
        seqs(&f.read(&["--stream", "order-1", "--to", "3"])),
        vec![0, 1]
    );
    assert_eq!(seqs(&f.read(&["--as-of", &between])), vec![0, 1, 2]);
    // As of the exact time of the first batch: it is included.
    let t0 = receipts[0]["timestamp"].as_str().unwrap();
    assert_eq!(seqs(&f.read(&["--as-of", t0])), vec![0, 1, 2]);
    assert_eq!(
        seqs(&f.read(&["--as-of", "2000-01-01T00:00:00Z"])),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&f.read(&["--as-of", &between, "--stream", "order-1"])),
        vec![0, 1]
    );
    assert_eq!(
        seqs(&f.read(&["--as-of", "2999-01-01T00:00:00+02:00"])).len(),
        5
    );
    let bad = f.run(&["read", "--as-of", "yesterday"]);
    assert_eq!(bad.code, 2, "{}", bad.describe());
    assert!(bad.stderr.contains("--as-of"), "{}", bad.describe());

    // Stats.
    let stats = f.run(&["stats"]).ok().json();
    assert_eq!(stats["records"], 5, "{stats}");
    assert_eq!(stats["segments"], 1, "{stats}");
    assert_eq!(stats["checkpoints"], 3, "checkpoints 0, 3 and 5: {stats}");
    assert_eq!(stats["newest_checkpoint"]["size"], 5, "{stats}");
    assert_eq!(stats["bytes"], f.seg_len(), "{stats}");
    assert_eq!(stats["public_key"], public_key);

    // The environment names the data directory and ledger as the options do.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
    cmd.arg("stats");
    let via_env = cmd_out(
        cmd,
        None,
        &[
            ("BI_LEDGER_DATA", f.data().to_str().unwrap()),
            ("BI_LEDGER_LEDGER", "main"),
        ],
    );
    assert_eq!(via_env.ok().json()["records"], 5);

    // Verify, with the recorded key and with the key file.
    let v = f.run(&["verify"]).ok().json();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["records"], 5);
    assert_eq!(v["unsigned_tail"], 0);
    assert_eq!(v["chain_head"], receipts2[1]["hash"], "{v}");
    let v = f.verify().ok().json();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["checkpoints"], 3);

    // An empty input appends nothing and succeeds.
    assert!(f.append("\n\n").ok().stdout.is_empty());
    assert_eq!(f.read(&[]).len(), 5);

    // Append from a file.
    let file = f.dir.path().join("events.jsonl");
    fs::write(&file, line("file-1", "FromFile", json!(1)) + "\n").unwrap();
    let r = f.run(&["append", file.to_str().unwrap()]).ok().json();
    assert_eq!(r["seq"], 5);
}

/// Two ledgers signed by one key: either verifies against the key, so a
/// whole ledger swapped for the other goes unseen unless the verifier pins
/// the origin that `init` printed (the ledger's name and id). With
/// `--origin`, `verify` and `verify-proof` fail on the other ledger.
#[test]
fn the_origin_tells_two_ledgers_of_one_key_apart() {
    let (f, made) = Fixture::init();
    let origin = made["origin"].as_str().unwrap().to_owned();
    assert!(origin.starts_with("bi-ledger/main/"), "{made}");
    f.append(&line("s", "T", json!(1))).ok();
    let key = f.path("main.key");
    let other = Fixture::new();
    let out = other
        .run(&["init", "--signing-key", key.to_str().unwrap()])
        .ok();
    let other_origin = out.json()["origin"].as_str().unwrap().to_owned();
    assert_ne!(origin, other_origin);
    other
        .run_stdin(
            &["append", "--signing-key", key.to_str().unwrap()],
            &line("s", "T", json!(2)),
        )
        .ok();
    let proof = other.run(&["prove", "--seq", "0"]).ok().stdout;

    // The other ledger put where this one was.
    fs::remove_dir_all(f.path("main")).unwrap();
    let copied = Command::new("cp")
        .args([
            "-a",
            other.path("main").to_str().unwrap(),
            f.path("main").to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(copied.success());
    let public = f.path("main.key.pub");
    let public = public.to_str().unwrap();
    let out = f.verify().ok();
    assert_eq!(
        out.json()["origin"],
        other_origin.as_str(),
        "{}",
        out.describe()
    );
    let out = f.run(&["verify", "--public-key", public, "--origin", &origin]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("not the expected {origin}")),
        "{}",
        out.describe()
    );
    let out = f.run(&["verify", "--public-key", public, "--origin", &other_origin]);
    assert_eq!(out.code, 0, "{}", out.describe());

    let verify_proof = |origin: &str| {
        f.run_stdin(
            &["verify-proof", "--public-key", public, "--origin", origin],
            &proof,
        )
    };
    let out = verify_proof(&origin);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr.contains("not the expected"),
        "{}",
        out.describe()
    );
    assert_eq!(verify_proof(&other_origin).code, 0);
    // Not an origin at all: a usage error, not a ledger that fails to be
    // the one expected.
    for bad in ["foo", &origin.to_uppercase(), &format!("{origin} ")] {
        let out = f.run(&["verify", "--public-key", public, "--origin", bad]);
        assert_eq!(out.code, 2, "{}", out.describe());
        assert!(
            out.stderr.contains("expected bi-ledger/NAME/LEDGER-ID"),
            "{}",
            out.describe()
        );
        assert_eq!(verify_proof(bad).code, 2);
    }
}

#[test]
fn other_ledger_names_and_missing_ledger() {
    let f = Fixture::new();
    let missing = f.run(&["read"]);
    assert_eq!(missing.code, 2, "{}", missing.describe());
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.describe()
    );
    assert_eq!(f.run(&["--ledger", "Bad_Name", "init"]).code, 2);
    f.run(&["--ledger", "books", "init"]).ok();
    f.run_stdin(
        &["--ledger", "books", "append"],
        &line("b", "T", json!(true)),
    )
    .ok();
    assert_eq!(f.read(&["--ledger", "books"]).len(), 1);
    assert!(f.path("books/0000000000.seg").exists());
    assert!(f.path("books.key").exists());
    assert_eq!(f.run(&["read"]).code, 2, "ledger main was never created");
}

// ---------------------------------------------------------------------------
// Bad input and expected-version conflicts write nothing

/// What must not change when an append is refused.
#[derive(PartialEq, Debug)]
struct State {
    events: String,
    seg_len: u64,
    checkpoints: Vec<String>,
}

fn state(f: &Fixture) -> State {
    State {
        events: f.run(&["read"]).ok().stdout,
        seg_len: f.seg_len(),
        checkpoints: f.checkpoints(),
    }
}

fn ledger_with_two_events() -> Fixture {
    let (f, _) = Fixture::init();
    f.append(&format!(
        "{}\n{}\n",
        line("a", "Created", json!({"n": 1})),
        line("b", "Created", json!({"n": 2}))
    ))
    .ok();
    f
}

#[test]
fn malformed_lines_append_nothing() {
    let f = ledger_with_two_events();
    let before = state(&f);
    let good = line("c", "Created", json!({"ok": true}));
    // (input, line number the error must name, a word it must contain)
    let cases: Vec<(String, usize, &str)> = vec![
        (format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":\n"), 2, ""),
        (format!("{good}\nnot json at all\n"), 2, ""),
        (format!("{good}\n{good}\n{{\"stream\":\"c\",\"type\":\"T\"}}\n"), 3, "payload"),
        (format!("{good}\n{{\"type\":\"T\",\"payload\":1}}\n"), 2, "stream"),
        (format!("{good}\n{{\"stream\":\"c\",\"payload\":1}}\n"), 2, "type"),
        (format!("{good}\n\n\n{}\n", line("", "T", json!(1))), 4, "stream"),
        (format!("{good}\n{}\n", line("c", "", json!(1))), 2, "type"),
        (format!("{good}\n{}\n", line("c\u{7}", "T", json!(1))), 2, "stream"),
        (
            format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":1,\"expected_version\":\"latest\"}}\n"),
            2,
            "expected_version",
        ),
        (
            format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":1,\"expected_version\":-1}}\n"),
            2,
            "",
        ),
        (
            format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":1,\"expected_version\":1.5}}\n"),
            2,
            "",
        ),
        (
            format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":1,\"expected_version\":null,\"extra\":1}}\n"),
            2,
            "extra",
        ),
        // null could be "any" or a stream's version as read when there
        // was none (no stream): neither is guessed.
        (
            format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":1,\"expected_version\":null}}\n"),
            2,
            "null could mean any version or no stream",
        ),
        (
            format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":1,\"metadata\":{{\"k\":1}}}}\n"),
            2,
            "",
        ),
        (
            format!("{good}\n{{\"stream\":\"c\",\"type\":\"T\",\"payload\":1,\"schema_version\":\"one\"}}\n"),
            2,
            "",
        ),
        (format!("[1,2]\n{good}\n"), 1, ""),
        (format!("{good}\n{good}\n{good}\n{good}\n{{}}\n"), 5, ""),
    ];
    for (input, n, word) in &cases {
        let out = f.append(input);
        assert_eq!(out.code, 2, "input {input:?}: {}", out.describe());
        assert!(
            out.stdout.is_empty(),
            "no receipt may be printed: {}",
            out.describe()
        );
        let err = out.stderr.trim();
        assert!(
            err.contains(&format!("line {n}:")) || err.contains(&format!("line {n}, column ")),
            "input {input:?}: error must name line {n}: {}",
            out.describe()
        );
        assert!(
            err.contains(word),
            "input {input:?}: error must mention {word:?}: {}",
            out.describe()
        );
        assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");
        assert_eq!(state(&f), before, "input {input:?} changed the ledger");
    }
    f.verify().ok();
}

#[test]
fn version_conflicts_append_nothing() {
    let f = ledger_with_two_events();
    // Stream a is at version 0; give it version 1.
    f.append(
        &json!({"stream": "a", "type": "Changed", "payload": 2, "expected_version": 0}).to_string(),
    )
    .ok();
    let before = state(&f);
    let ok = |stream: &str| line(stream, "T", json!("fine"));
    let ev = |stream: &str, expected: Value| {
        json!({"stream": stream, "type": "T", "payload": 0, "expected_version": expected})
            .to_string()
    };
    // (input, line the message must name, words it must contain)
    let cases: Vec<(String, usize, Vec<&str>)> = vec![
        // Stale.
        (ev("a", json!(0)), 1, vec!["\"a\"", "1"]),
        // Ahead.
        (
            format!("{}\n{}", ok("fresh"), ev("a", json!(5))),
            2,
            vec!["\"a\""],
        ),
        // no_stream on an existing stream.
        (
            format!(
                "{}\n{}\n{}",
                ok("fresh"),
                ok("fresh2"),
                ev("b", json!("no_stream"))
            ),
            3,
            vec!["\"b\""],
        ),
        // Exact on a stream that does not exist.
        (
            format!("{}\n\n{}", ok("fresh"), ev("nope", json!(0))),
            3,
            vec!["\"nope\"", "none"],
        ),
        // An earlier line of the same input created the stream.
        (
            format!(
                "{}\n{}",
                ev("fresh", json!("no_stream")),
                ev("fresh", json!("no_stream"))
            ),
            2,
            vec!["\"fresh\""],
        ),
        // An earlier line of the same input moved the stream on: the
        // message says so, and gives the version the ledger has.
        (
            format!("{}\n{}", ev("a", json!(1)), ev("a", json!(1))),
            2,
            vec![
                "\"a\"",
                "but line 1 of this input comes first on it and would bring it to version 2 (its current version is 1); nothing was appended",
            ],
        ),
        (
            format!(
                "{}\n{}\n{}\n{}",
                ev("a", json!(1)),
                ok("z"),
                ok("a"),
                ev("a", json!(2))
            ),
            4,
            vec![
                "2 earlier lines of this input come first on it and would bring it to version 3 (its current version is 1); nothing was appended",
            ],
        ),
    ];
    for (input, n, words) in &cases {
        let out = f.append(input);
        assert_ne!(out.code, 0, "input {input:?}: {}", out.describe());
        assert_ne!(out.code, 1, "a conflict is not an integrity failure");
        assert!(
            out.stdout.is_empty(),
            "no receipt may be printed: {}",
            out.describe()
        );
        let err = out.stderr.trim();
        assert!(
            err.contains(&format!("line {n}:")) || err.contains(&format!("line {n}, column ")),
            "input {input:?}: must name line {n}: {}",
            out.describe()
        );
        for w in words {
            assert!(err.contains(w), "input {input:?}: must mention {w}: {err}");
        }
        assert!(
            err.contains("nothing was appended"),
            "input {input:?}: {err}"
        );
        assert_eq!(state(&f), before, "input {input:?} changed the ledger");
    }
    // The same events with the right expectations go through.
    let out = f
        .append(&format!(
            "{}\n{}\n{}",
            ev("a", json!(1)),
            ev("a", json!(2)),
            ev("fresh", json!("no_stream"))
        ))
        .ok();
    assert_eq!(seqs(&out.json_lines()), vec![3, 4, 5]);
    f.verify().ok();
}

// ---------------------------------------------------------------------------
// Tampering: every byte of every file verify depends on

/// A small ledger closed cleanly: three events in two batches, written
/// through the library so that there are only two checkpoints, 0 and 3
/// (each checkpoint costs `verify` a signature check, and these tests run
/// `verify` hundreds of times). Returns the batches' start offsets.
fn small_ledger() -> (Fixture, Vec<u64>) {
    let (f, _) = Fixture::init();
    let rt = runtime();
    let ledger = library_open(&rt, &f);
    let r1 = rt
        .block_on(ledger.append(vec![
            NewEvent::json("a", "Created", &json!({"n": 1})),
            NewEvent::json("b", "Created", &json!([true, null])),
        ]))
        .unwrap();
    let r2 =
        rt.block_on(ledger.append_one(
            NewEvent::json("a", "Updated", &json!({"x": "y"})).with_metadata("k", "v"),
        ))
        .unwrap();
    rt.block_on(ledger.close()).unwrap();
    let offsets = vec![r1[0].offset, r2.offset];
    assert_eq!(offsets[0], HEADER_LEN as u64);
    assert_eq!(
        f.checkpoints(),
        vec![
            "checkpoint-00000000000000000000",
            "checkpoint-00000000000000000003"
        ]
    );
    let v = f.verify().ok().json();
    assert_eq!(v["unsigned_tail"], 0);
    (f, offsets)
}

/// A ledger written by three CLI appends (2, 1 and 1 events), each closed
/// with a checkpoint: checkpoints 0, 2, 3 and 4.
fn ledger_for_proofs() -> Fixture {
    let (f, _) = Fixture::init();
    f.append(&format!(
        "{}\n{}\n",
        line("a", "Created", json!({"n": 1})),
        line("b", "Created", json!([true, null]))
    ))
    .ok();
    f.append(&line("a", "Updated", json!({"x": "y"}))).ok();
    f.append(&line("c", "Created", json!("z"))).ok();
    assert_eq!(f.checkpoints().len(), 4);
    f
}

/// Bit patterns, rotated over the bytes, so that every byte is changed and
/// every kind of change (low bit, high bit, ASCII case, all bits) occurs.
const MASKS: [u8; 9] = [0xff, 0x01, 0x80, 0x20, 0x02, 0x40, 0x04, 0x10, 0x08];

/// Where a failed `verify` says the damage is: (blob, offset, seq), from
/// its stdout JSON or, for failures found while opening, its stderr line.
fn location(out: &Out) -> Option<(String, u64, Option<u64>)> {
    if let Some(v) = out.json_lines().first() {
        if v["valid"] == false {
            return Some((
                v["blob"].as_str()?.to_owned(),
                v["offset"].as_u64()?,
                v["seq"].as_u64(),
            ));
        }
    }
    // "integrity error in BLOB at byte N (sequence number S): ..."
    let rest = out.stderr.split("integrity error in ").nth(1)?;
    let (blob, rest) = rest.split_once(" at byte ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let seq = rest
        .split_once("(sequence number ")
        .and_then(|(_, s)| s.split(')').next()?.parse().ok());
    Some((blob.to_owned(), digits.parse().ok()?, seq))
}

/// The `kind` a failed `verify` prints on stdout, if it printed one.
fn kind(out: &Out) -> Option<String> {
    let v = out.json_lines().into_iter().next()?;
    Some(v["kind"].as_str()?.to_owned())
}

/// Changes byte `i` of `path` by each of `masks(i)` in turn, runs `verify`
/// on each, hands the result to `check`, and restores the file. Returns
/// the flips that verified as valid (`check` sees them first).
fn flip_each(
    f: &Fixture,
    blob: &str,
    masks: impl Fn(usize) -> Vec<u8>,
    mut check: impl FnMut(usize, u8, &Out),
) -> usize {
    let path = f.path(blob);
    let original = fs::read(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    writable(&path);
    let mut runs = 0;
    for i in 0..original.len() {
        for m in masks(i) {
            let mut bytes = original.clone();
            bytes[i] ^= m;
            fs::write(&path, &bytes).unwrap();
            let out = f.verify();
            runs += 1;
            check(i, m, &out);
        }
    }
    fs::write(&path, &original).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    // Restored: valid again.
    f.verify().ok();
    runs
}

#[test]
fn tamper_every_segment_byte() {
    let (f, offsets) = small_ledger();
    let len = f.seg_len();
    // Batch i spans starts[i]..starts[i + 1]; its first seq is 0 then 2.
    let starts = [offsets[0], offsets[1], len];
    let first_seqs = [0u64, 2];
    let mut failures = Vec::new();
    let runs = flip_each(
        &f,
        SEG,
        |i| vec![MASKS[i % MASKS.len()]],
        |i, m, out| {
            let i = i as u64;
            let problem = if out.code != 1 {
                Some(format!("exit {}", out.code))
            } else {
                match location(out) {
                    None => Some("no location".into()),
                    Some((blob, _, _)) if blob != SEG => Some(format!("blames {blob}")),
                    // A header flip is named by the field it hits or by
                    // the header's CRC at byte 80.
                    Some((_, off, _)) if i < HEADER_LEN as u64 => (off >= HEADER_LEN as u64)
                        .then(|| format!("offset {off} outside the header")),
                    _ if kind(out).is_some_and(|k| k != "damage") => {
                        Some(format!("kind {:?}", kind(out)))
                    }
                    Some((_, off, seq)) => {
                        let b = if i < starts[1] { 0 } else { 1 };
                        if off != starts[b] {
                            Some(format!("offset {off}, batch starts at {}", starts[b]))
                        } else if seq != Some(first_seqs[b]) {
                            Some(format!("seq {seq:?}, batch starts at {}", first_seqs[b]))
                        } else {
                            None
                        }
                    }
                }
            };
            if let Some(p) = problem {
                failures.push(format!("byte {i} ^ {m:#04x}: {p}\n{}", out.describe()));
            }
        },
    );
    assert_eq!(runs, len as usize);
    assert!(
        failures.is_empty(),
        "{} of {runs} segment flips not reported right:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn tamper_every_checkpoint_byte() {
    let (f, _) = small_ledger();
    let blob = "main/checkpoint-00000000000000000003";
    let text = fs::read(f.path(blob)).unwrap();
    // The signature line: after the blank line that ends the body.
    let sig_start = text.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    assert!(text[sig_start..].starts_with("\u{2014} ".as_bytes()));
    let mut failures = Vec::new();
    let mut sig_runs = 0;
    let runs = flip_each(
        &f,
        blob,
        |i| {
            let rotated = MASKS[i % MASKS.len()];
            if i >= sig_start {
                // Every byte of the signature line, by several patterns:
                // low bits matter in base64's last digit.
                vec![rotated, if rotated == 0x01 { 0x20 } else { 0x01 }]
            } else {
                vec![rotated]
            }
        },
        |i, m, out| {
            if i >= sig_start {
                sig_runs += 1;
            }
            let problem = if out.code != 1 {
                Some(format!("exit {}", out.code))
            } else {
                match location(out) {
                    None => Some("no location".into()),
                    Some((b, _, _)) if b != blob => Some(format!("blames {b}")),
                    // Any change to a note breaks its signature by the key.
                    _ if kind(out).is_some_and(|k| k == "damage") => Some("kind damage".into()),
                    Some(_) => None,
                }
            };
            if let Some(p) = problem {
                failures.push(format!("byte {i} ^ {m:#04x}: {p}\n{}", out.describe()));
            }
        },
    );
    assert_eq!(sig_runs, 2 * (text.len() - sig_start));
    assert!(
        failures.is_empty(),
        "{} of {runs} checkpoint flips not reported right:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Flips every byte of a cache blob beside checkpoint 3 (snapshot, stream
/// index), each by the mask `masks` picks: `verify` must exit 1 naming
/// that blob and sequence number 3. `also` runs after each flip, for
/// checks of its own; failures from both are collected.
fn tamper_every_cache_byte(
    blob: &str,
    mask_shift: usize,
    also: impl FnMut(&Fixture, usize) -> Option<String>,
) {
    let (f, _) = small_ledger();
    tamper_every_byte_of_cache(&f, blob, 3, mask_shift, also);
}

/// [`tamper_every_cache_byte`] on any ledger, for a cache beside the
/// checkpoint of `size`.
fn tamper_every_byte_of_cache(
    f: &Fixture,
    blob: &str,
    size: u64,
    mask_shift: usize,
    mut also: impl FnMut(&Fixture, usize) -> Option<String>,
) {
    let mut failures = Vec::new();
    let runs = flip_each(
        f,
        blob,
        |i| vec![MASKS[(i + mask_shift) % MASKS.len()]],
        |i, m, out| {
            let problem = if out.code != 1 {
                Some(format!("exit {}", out.code))
            } else {
                match location(out) {
                    None => Some("no location".into()),
                    Some((b, _, seq)) if b != blob || seq != Some(size) => {
                        Some(format!("blames {b} seq {seq:?}"))
                    }
                    Some(_) => None,
                }
            };
            if let Some(p) = problem.or_else(|| also(f, i)) {
                failures.push(format!("byte {i} ^ {m:#04x}: {p}\n{}", out.describe()));
            }
        },
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} flips of {blob} not reported right:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn tamper_every_snapshot_byte() {
    tamper_every_cache_byte("main/snapshot-00000000000000000003", 4, |_, _| None);
}

/// The node cache beside a checkpoint (here of 1,024 records: one node) is
/// a cache that proofs use: every changed byte of it is reported by
/// `verify`, naming the blob and the checkpoint's size.
#[test]
fn tamper_every_node_cache_byte() {
    let (f, _) = Fixture::init();
    let rt = runtime();
    let ledger = library_open(&rt, &f);
    let events = (0..1024)
        .map(|i| NewEvent::json(format!("s-{}", i % 7), "Counted", &json!({ "i": i })))
        .collect();
    rt.block_on(ledger.append(events)).unwrap();
    rt.block_on(ledger.close()).unwrap();
    let blob = "main/nodes-00000000000000001024";
    assert_eq!(fs::read(f.path(blob)).unwrap().len(), 44 + 32 + 32);
    tamper_every_byte_of_cache(&f, blob, 1024, 0, |_, _| None);
}

/// The stream index beside a checkpoint is a cache, but one that readers
/// use: every changed byte of it is reported by `verify`, naming the blob
/// and the checkpoint's size, and `read --stream` still answers right
/// (it falls back to scanning the log).
#[test]
fn tamper_every_stream_index_byte() {
    let mut reads = 0;
    tamper_every_cache_byte("main/streams-00000000000000000003", 2, |f, i| {
        // Reading a stream through the damaged index, on a sample of the
        // flips (each read starts a process): stream "a" is records 0 and
        // 2, versions 0 and 1.
        if i % 7 != 0 {
            return None;
        }
        reads += 1;
        let got = f.run(&["read", "--stream", "a"]);
        let seen: Vec<_> = got
            .json_lines()
            .iter()
            .map(|r| {
                (
                    r["seq"].as_u64(),
                    r["stream"].clone(),
                    r["version"].as_u64(),
                )
            })
            .collect();
        let want = vec![
            (Some(0), json!("a"), Some(0)),
            (Some(2), json!("a"), Some(1)),
        ];
        (got.code != 0 || seen != want)
            .then(|| format!("read --stream gave {seen:?}\n{}", got.describe()))
    });
    assert!(reads > 3);
}

#[test]
fn tamper_every_ledger_file_byte() {
    let (f, _) = small_ledger();
    let original = fs::read(f.path("main/LEDGER")).unwrap();
    let mut valid = Vec::new();
    let mut codes = std::collections::BTreeMap::new();
    flip_each(
        &f,
        "main/LEDGER",
        // Case flips (0x20) turn hex digits a-f into A-F; 0x01 and 0x07
        // turn the last newline into other white space.
        |i| {
            let mut v = vec![MASKS[i % MASKS.len()]];
            let b = original[i];
            let extra: &[u8] = if b.is_ascii_alphabetic() {
                &[0x01, 0x20]
            } else if b.is_ascii_whitespace() {
                &[0x01, 0x07]
            } else {
                &[0x01]
            };
            for m in extra {
                if !v.contains(m) {
                    v.push(*m);
                }
            }
            v
        },
        |i, m, out| {
            *codes.entry(out.code).or_insert(0) += 1;
            if out.code == 0 || !(out.code == 1 || out.code == 2) {
                valid.push(format!("byte {i} ^ {m:#04x}: exit {}", out.code));
            }
        },
    );
    assert!(
        valid.is_empty(),
        "changed LEDGER files that verify accepts ({codes:?}):\n{}",
        valid.join("\n")
    );
}

#[test]
fn verify_against_another_key_fails() {
    let (f, _) = small_ledger();
    let other = f.dir.path().join("other.key");
    let kg = f
        .run(&["keygen", "--out", other.to_str().unwrap()])
        .ok()
        .json();
    let other_pub = f.dir.path().join("other.key.pub");
    assert_eq!(
        fs::read_to_string(&other_pub).unwrap().trim(),
        kg["public_key"].as_str().unwrap()
    );
    // Same key name as the ledger's (the default), different key.
    assert!(kg["public_key"]
        .as_str()
        .unwrap()
        .starts_with("bi-ledger/main+"));
    let out = f.run(&["verify", "--public-key", other_pub.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.describe());
    let (blob, _, _) = location(&out).expect("names where");
    assert!(blob.starts_with("main/checkpoint-"), "{}", out.describe());
    assert_eq!(
        out.json()["kind"],
        "not_signed_by_key",
        "{}",
        out.describe()
    );

    // A key made for another ledger signs under that ledger's name.
    let named = f.dir.path().join("named.key");
    f.run(&[
        "--ledger",
        "books",
        "keygen",
        "--out",
        named.to_str().unwrap(),
    ])
    .ok();
    let out = f.run(&[
        "verify",
        "--public-key",
        f.dir.path().join("named.key.pub").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1, "{}", out.describe());

    // keygen never overwrites.
    assert_eq!(f.run(&["keygen", "--out", other.to_str().unwrap()]).code, 2);
    // A missing or garbled public key file is a usage error.
    let out = f.run(&["verify", "--public-key", "/nonexistent/key.pub"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    let garbled = f.dir.path().join("garbled.pub");
    fs::write(&garbled, "not a key\n").unwrap();
    let out = f.run(&["verify", "--public-key", garbled.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.describe());
    // The ledger's own key still verifies.
    f.verify().ok();
}

// ---------------------------------------------------------------------------
// Proofs

/// Replaces the hex digit at `i` with a different one.
fn change_digit(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = if b[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

#[test]
fn inclusion_and_consistency_proofs() {
    let f = ledger_for_proofs();
    let pubkey = f.path("main.key.pub");
    let pubkey = pubkey.to_str().unwrap();
    let other = f.dir.path().join("other.key");
    f.run(&["keygen", "--out", other.to_str().unwrap()]).ok();
    let other_pub = f.dir.path().join("other.key.pub");
    let other_pub = other_pub.to_str().unwrap();
    let check = |proof: &Value, key: &str| -> Out {
        f.run_stdin(&["verify-proof", "--public-key", key], &proof.to_string())
    };
    let events = f.read(&[]);

    // `checkpoint` with nothing new prints the newest one.
    let cp = f.run(&["checkpoint"]).ok().json();
    assert_eq!(cp["size"], 4, "{cp}");
    assert!(cp["note"].as_str().unwrap().contains("\n4\n"), "{cp}");
    assert_eq!(f.checkpoints().len(), 4);

    for seq in 0..4u64 {
        let p = f.run(&["prove", "--seq", &seq.to_string()]).ok().json();
        assert_eq!(p["type"], "inclusion");
        assert_eq!(p["proof"]["seq"], seq);
        assert_eq!(p["proof"]["size"], 4);
        assert_eq!(p["checkpoint"], cp["note"]);
        let ok = check(&p, pubkey).ok().json();
        assert_eq!(ok["valid"], true, "{ok}");
        assert_eq!(ok["seq"], seq);
        // It says which ledger and which state it checked against: a key
        // may sign for more than one ledger of the same name.
        let stats = f.run(&["stats"]).ok().json();
        let origin = format!("bi-ledger/main/{}", stats["id"].as_str().unwrap());
        assert_eq!(ok["checked_against"]["origin"], origin.as_str(), "{ok}");
        assert_eq!(ok["checked_against"]["size"], 4, "{ok}");
        assert_eq!(ok["checked_against"]["root"], cp["root"], "{ok}");
        assert_eq!(ok["checked_against"]["time"], cp["time"], "{ok}");
        // The entry carries the canonical payload bytes.
        let payload = serde_json::to_vec(&events[seq as usize]["payload"]).unwrap();
        assert!(
            p["proof"]["entry"]
                .as_str()
                .unwrap()
                .contains(&bi_ledger::format::hex(&payload)),
            "entry lacks the payload"
        );

        let out = check(&p, other_pub);
        assert_eq!(out.code, 1, "other key: {}", out.describe());
        assert_eq!(out.json()["valid"], false, "{}", out.describe());

        // One hex digit of each proof node: first, middle and last.
        let nodes = p["proof"]["proof"].as_array().unwrap().len();
        assert!(nodes >= 1);
        for n in 0..nodes {
            for d in [0, 31, 63] {
                let mut t = p.clone();
                let node = t["proof"]["proof"][n].as_str().unwrap().to_owned();
                t["proof"]["proof"][n] = json!(change_digit(&node, d));
                let out = check(&t, pubkey);
                assert_eq!(out.code, 1, "node {n} digit {d}: {}", out.describe());
                assert!(out.json()["valid"] == false);
            }
        }
        // Digits of the entry, spread over all of it.
        let entry = p["proof"]["entry"].as_str().unwrap().to_owned();
        for d in (0..entry.len()).step_by(13).chain([entry.len() - 1]) {
            let mut t = p.clone();
            t["proof"]["entry"] = json!(change_digit(&entry, d));
            let out = check(&t, pubkey);
            assert_eq!(out.code, 1, "entry digit {d}: {}", out.describe());
        }
        // Another seq, a dropped or added node, a changed checkpoint.
        let mut t = p.clone();
        t["proof"]["seq"] = json!((seq + 1) % 4);
        assert_eq!(check(&t, pubkey).code, 1);
        let mut t = p.clone();
        t["proof"]["proof"].as_array_mut().unwrap().pop();
        assert_eq!(check(&t, pubkey).code, 1);
        let mut t = p.clone();
        t["proof"]["proof"]
            .as_array_mut()
            .unwrap()
            .push(json!("00".repeat(32)));
        assert_eq!(check(&t, pubkey).code, 1);
        let mut t = p.clone();
        let note = p["checkpoint"]
            .as_str()
            .unwrap()
            .replacen("\n4\n", "\n3\n", 1);
        t["checkpoint"] = json!(note);
        assert_eq!(check(&t, pubkey).code, 1);
    }
    // Not covered by a checkpoint; no such checkpoint.
    assert_eq!(f.run(&["prove", "--seq", "4"]).code, 2);
    assert_eq!(f.run(&["prove", "--seq", "0", "--size", "1"]).code, 2);
    assert_eq!(f.run(&["prove"]).code, 2);
    // Against an older checkpoint.
    let p = f.run(&["prove", "--seq", "1", "--size", "2"]).ok().json();
    assert_eq!(p["proof"]["size"], 2);
    check(&p, pubkey).ok();

    // Consistency: 2 -> 4, 3 -> 4, 0 -> 4, 4 -> 4, 2 -> 3, 2 -> 2.
    for (old, new) in [
        (2u64, None),
        (3, None),
        (0, None),
        (4, None),
        (2, Some(3u64)),
        (2, Some(2)),
    ] {
        let mut args = vec!["prove".to_owned(), "--old-size".into(), old.to_string()];
        if let Some(n) = new {
            args.extend(["--size".into(), n.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = f.run(&args).ok().json();
        assert_eq!(p["type"], "consistency");
        assert_eq!(p["proof"]["old_size"], old);
        let out = check(&p, pubkey);
        assert_eq!(out.code, 0, "{old} -> {new:?}: {}", out.describe());
        assert_eq!(out.json()["valid"], true);
        let sizes = (
            &out.json()["old_checked_against"]["size"],
            &out.json()["checked_against"]["size"],
        );
        assert_eq!(sizes, (&json!(old), &json!(new.unwrap_or(4))));
        assert_eq!(check(&p, other_pub).code, 1, "other key");
        let nodes = p["proof"]["proof"].as_array().unwrap().len();
        for n in 0..nodes {
            for d in [0, 63] {
                let mut t = p.clone();
                let node = t["proof"]["proof"][n].as_str().unwrap().to_owned();
                t["proof"]["proof"][n] = json!(change_digit(&node, d));
                let out = check(&t, pubkey);
                assert_eq!(out.code, 1, "node {n} digit {d}: {}", out.describe());
            }
        }
        // Claiming the old checkpoint is another size.
        if old == 2 && new.is_none() {
            let mut t = p.clone();
            t["proof"]["old_size"] = json!(1);
            assert_eq!(check(&t, pubkey).code, 1);
            // Swapped checkpoints.
            let mut t = p.clone();
            t["checkpoint"] = p["old_checkpoint"].clone();
            t["old_checkpoint"] = p["checkpoint"].clone();
            assert_eq!(check(&t, pubkey).code, 1);
        }
    }
    assert_eq!(f.run(&["prove", "--old-size", "1"]).code, 2);
    // A newer "old" checkpoint than the new one.
    let out = f.run(&["prove", "--old-size", "3", "--size", "2"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    // Garbage proofs are usage errors, not "valid".
    let out = f.run_stdin(&["verify-proof", "--public-key", pubkey], "{}");
    assert_eq!(out.code, 2, "{}", out.describe());
    let out = f.run_stdin(&["verify-proof", "--public-key", pubkey], "nope");
    assert_eq!(out.code, 2, "{}", out.describe());
    // A key given twice: serde_json would check the last value, and a
    // reader taking the first would see an entry never checked.
    let p = f.run(&["prove", "--seq", "0"]).ok().json();
    let entry = p["proof"]["entry"].as_str().unwrap();
    let text = p.to_string();
    let twice = text.replacen(
        "\"entry\":",
        &format!("\"entry\":\"{}\",\"entry\":", change_digit(entry, 10)),
        1,
    );
    assert_ne!(twice, text);
    let out = f.run_stdin(&["verify-proof", "--public-key", pubkey], &twice);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("duplicate key \"entry\""),
        "{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------
// One writer at a time

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn library_open(rt: &tokio::runtime::Runtime, f: &Fixture) -> Ledger {
    let text = fs::read_to_string(f.path("main.key")).unwrap();
    let (_, key) = bi_ledger::keys::decode_signing_key(&text).unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(FsStore::new(f.data()).unwrap().shared());
    rt.block_on(Ledger::open(store, "main", LedgerOptions::new(key)))
        .unwrap()
}

#[test]
fn second_writer_is_refused() {
    let (f, _) = Fixture::init();
    let rt = runtime();
    let ledger = library_open(&rt, &f);
    rt.block_on(ledger.append_one(NewEvent::json("held", "T", &json!(0))))
        .unwrap();

    for args in [&["append"][..], &["checkpoint"][..]] {
        let out = f.run_stdin(args, &line("cli", "T", json!(1)));
        assert_eq!(out.code, 2, "{args:?}: {}", out.describe());
        assert!(
            out.stderr.contains("locked by another writer")
                && out
                    .stderr
                    .contains("another process has it open for writing"),
            "{args:?}: {}",
            out.describe()
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
        assert!(out.stdout.is_empty());
    }
    // Readers take no lock.
    assert_eq!(seqs(&f.read(&[])), vec![0]);
    f.verify().ok();

    // The library writer still works, then closes.
    rt.block_on(ledger.append_one(NewEvent::json("held", "T", &json!(1))))
        .unwrap();
    rt.block_on(ledger.close()).unwrap();
    let r = f.append(&line("cli", "T", json!(2))).ok().json();
    assert_eq!(r["seq"], 2);

    // Dropping the writer (a crash) releases the lock too, once the
    // writer has ended.
    let ledger = library_open(&rt, &f);
    let out = f.append(&line("cli", "T", json!(3)));
    assert_eq!(out.code, 2, "{}", out.describe());
    rt.block_on(ledger.append_one(NewEvent::json("held", "T", &json!(4))))
        .unwrap();
    drop(ledger);
    // The writer's thread notices, lets go of the lock and ends.
    let store = FsStore::new(f.data()).unwrap().shared();
    let released = (0..5000).any(|_| {
        let lock = rt.block_on(store.lock(&bi_ledger::ledger::layout::lock("main")));
        lock.is_ok() || {
            std::thread::sleep(std::time::Duration::from_millis(1));
            false
        }
    });
    assert!(released, "the dropped writer never released its lock");
    drop(rt);
    let r = f.append(&line("cli", "T", json!(5))).ok().json();
    assert_eq!(r["seq"], 4);
    let events = f.read(&[]);
    assert_eq!(seqs(&events), vec![0, 1, 2, 3, 4]);
    assert_eq!(events[3]["payload"], 4);
    assert_eq!(events[4]["payload"], 5);
    f.verify().ok();
}

// ---------------------------------------------------------------------------
// A torn last batch, recovered by the next writer

#[test]
fn torn_tail_is_cut_on_reopen() {
    let (f, _) = Fixture::init();
    let rt = runtime();
    let ledger = library_open(&rt, &f);
    let before = rt
        .block_on(ledger.append(vec![
            NewEvent::json("a", "T", &json!({"i": 0})),
            NewEvent::json("b", "T", &json!({"i": 1})),
        ]))
        .unwrap();
    let before2 = rt
        .block_on(ledger.append_one(NewEvent::json("a", "T", &json!({"i": 2}))))
        .unwrap();
    let last = rt
        .block_on(ledger.append_one(NewEvent::json("c", "T", &json!(3))))
        .unwrap();
    // A crash: no close, no final checkpoint.
    drop(ledger);
    drop(rt);
    assert_eq!(
        f.checkpoints(),
        vec!["checkpoint-00000000000000000000"],
        "no checkpoint after the crash"
    );
    let start = last.offset;
    let end = f.seg_len();
    assert!(start > before2.offset && end > start);
    assert_eq!(last.seq, 3);
    let kept = [before[0].seq, before[1].seq, before2.seq];
    assert_eq!(kept, [0, 1, 2]);

    let pristine = f.data();
    let key = f.path("main.key");
    let key = key.to_str().unwrap();
    // (cut, verify before re-open)
    let mut failures = Vec::new();
    for cut in start..=end {
        let data = f.dir.path().join(format!("cut-{cut}"));
        copy_dir(&pristine, &data);
        let seg = data.join(SEG);
        writable(&seg);
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let run = |args: &[&str], stdin: Option<&str>| {
            let mut a = vec!["--signing-key", key];
            a.extend_from_slice(args);
            run_in(&data, &a, stdin)
        };
        let torn = cut > start && cut < end;
        let mut fail = |what: String, out: &Out| {
            failures.push(format!("cut at {cut}: {what}\n{}", out.describe()));
        };

        // Before: verify names the torn batch.
        let v = run(&["verify"], None);
        if torn {
            match location(&v) {
                Some((blob, off, seq))
                    if v.code == 1
                        && blob == SEG
                        && off == start
                        && seq == Some(3)
                        && (v.stdout.contains("torn") || v.stderr.contains("torn")) => {}
                _ => fail("verify before re-open".into(), &v),
            }
        } else if v.code != 0 {
            fail("verify of an intact log".into(), &v);
        }

        // Re-open for writing: cut and logged.
        let a = run(&["append"], Some(&line("after", "T", json!(cut))));
        let want_seq = if cut == end { 4 } else { 3 };
        if a.code != 0 || a.json_lines().first().map(|r| r["seq"].clone()) != Some(json!(want_seq))
        {
            fail("append after the crash".into(), &a);
            continue;
        }
        let logged = a.stderr.contains("WARN") && a.stderr.contains("torn");
        // What was cut: where, how many bytes, from which sequence number.
        let fields = [
            format!("offset={start}"),
            format!("bytes_cut={}", cut - start),
            "first_lost_seq=3".to_owned(),
        ];
        if torn && !(logged && fields.iter().all(|f| a.stderr.contains(f))) {
            fail(
                format!("truncation not logged at warn level with {fields:?}"),
                &a,
            );
        }
        if !torn && a.stderr.contains("truncat") {
            fail("nothing to truncate, yet truncation logged".into(), &a);
        }

        let r = run(&["read"], None);
        let got: Vec<(u64, String)> = r
            .json_lines()
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["stream"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut want: Vec<(u64, String)> = vec![(0, "a".into()), (1, "b".into()), (2, "a".into())];
        if cut == end {
            want.push((3, "c".into()));
        }
        want.push((want.len() as u64, "after".into()));
        if r.code != 0 || got != want {
            fail(format!("read after re-open: {got:?}, want {want:?}"), &r);
        }
        let v = run(&["verify"], None);
        if v.code != 0 || v.json()["unsigned_tail"] != 0 {
            fail("verify after re-open".into(), &v);
        }
        fs::remove_dir_all(&data).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// The block size a ledger records (format §3.4, §5.1)

/// Creates ledger `main` through the library on a store whose blocks are
/// at most `max_block` bytes, with a key made by `keygen` where the CLI
/// looks for it.
fn library_create(
    rt: &tokio::runtime::Runtime,
    f: &Fixture,
    max_block: usize,
    max_batch_bytes: usize,
) -> Ledger {
    let key_file = f.data().join("main.key");
    f.run(&["keygen", "--out", key_file.to_str().unwrap()]).ok();
    let text = fs::read_to_string(&key_file).unwrap();
    let (_, key) = bi_ledger::keys::decode_signing_key(&text).unwrap();
    let opts = bi_ledger::backend::fs::FsOptions {
        max_block_size: max_block,
        ..Default::default()
    };
    let store: Arc<dyn BlobStore> =
        Arc::new(FsStore::with_options(f.data(), opts).unwrap().shared());
    let mut opts = LedgerOptions::new(key);
    opts.max_batch_bytes = max_batch_bytes;
    rt.block_on(Ledger::create(store, "main", opts)).unwrap()
}

/// A ledger made on a store of 8 MiB blocks holds frames larger than the
/// default 4 MiB. The LEDGER file says so, and the CLI (on the default
/// store) reads, verifies, recovers and appends to it; without the record
/// it would take those frames for damaged lengths.
#[test]
fn a_ledger_of_large_blocks_is_read_by_the_default_store() {
    let f = Fixture::new();
    let rt = runtime();
    let ledger = library_create(&rt, &f, 8 << 20, 8 << 20);
    let big = "x".repeat(1 << 20);
    let events: Vec<_> = (0..5)
        .map(|i| NewEvent::json("big", "Blob", &json!({"i": i, "data": big})))
        .collect();
    let receipts = rt.block_on(ledger.append(events)).unwrap();
    assert_eq!(receipts.len(), 5);
    // Dropped without close: the next writer recovers the tail, reading
    // the 5 MiB frame.
    drop(ledger);
    drop(rt);

    let text = fs::read_to_string(f.path("main/LEDGER")).unwrap();
    assert!(text.ends_with("\nblock 8388608\n"), "{text}");
    assert!(f.seg_len() > 5 << 20);
    f.verify().ok();
    let events = f.read(&[]);
    assert_eq!(seqs(&events), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        events[4]["payload"]["data"].as_str().map(str::len),
        Some(1 << 20)
    );
    let r = f.append(&line("small", "T", json!(5))).ok().json();
    assert_eq!(r["seq"], 5);
    f.verify().ok();
}

/// A ledger made on a store of 64 KiB blocks keeps its batches that small
/// when later written through a store and options that allow more: an
/// event that does not fit is refused whole, by the CLI and the library.
#[test]
fn a_ledger_of_small_blocks_keeps_them_small() {
    let f = Fixture::new();
    let rt = runtime();
    let ledger = library_create(&rt, &f, 64 << 10, 4 << 20);
    assert_eq!(ledger.max_batch_bytes(), 64 << 10);
    rt.block_on(ledger.close()).unwrap();
    let text = fs::read_to_string(f.path("main/LEDGER")).unwrap();
    assert!(text.ends_with("\nblock 65536\n"), "{text}");

    let big = "x".repeat(100 << 10);
    let input = format!(
        "{}\n{}\n",
        line("s", "T", json!(0)),
        line("s", "T", json!(big))
    );
    let out = f.append(&input);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("line 2:") && out.stderr.contains("more than the 65536 a batch holds"),
        "{}",
        out.describe()
    );
    assert!(f.read(&[]).is_empty());

    let ledger = library_open(&rt, &f);
    assert_eq!(ledger.max_batch_bytes(), 64 << 10);
    let refused = rt.block_on(ledger.append_one(NewEvent::json("s", "T", &json!(big))));
    assert!(refused.is_err(), "{refused:?}");
    rt.block_on(ledger.append_one(NewEvent::json("s", "T", &json!(1))))
        .unwrap();
    rt.block_on(ledger.close()).unwrap();
    assert_eq!(seqs(&f.read(&[])), vec![0]);
    f.verify().ok();
}

/// Every byte of a merged stream index (format §11.3.1), flipped, makes
/// `verify` exit 1 naming the index and the checkpoint it ends at. The
/// ledger is written through the library, merging every two checkpoints'
/// indexes.
#[test]
fn tamper_every_merged_stream_index_byte() {
    let f = Fixture::new();
    let rt = runtime();
    let key_file = f.data().join("main.key");
    f.run(&["keygen", "--out", key_file.to_str().unwrap()]).ok();
    let text = fs::read_to_string(&key_file).unwrap();
    let (_, key) = bi_ledger::keys::decode_signing_key(&text).unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(FsStore::new(f.data()).unwrap().shared());
    let mut opts = LedgerOptions::new(key);
    opts.merge_index_count = 2;
    let ledger = rt.block_on(Ledger::create(store, "main", opts)).unwrap();
    for round in 0..3 {
        let events = ["a", "b", "a"]
            .iter()
            .map(|s| NewEvent::json(*s, "T", &json!(round)))
            .collect();
        rt.block_on(ledger.append(events)).unwrap();
        rt.block_on(ledger.checkpoint()).unwrap();
    }
    rt.block_on(ledger.close()).unwrap();
    drop(rt);
    let blob = "main/streams-merged-00000000000000000006";
    assert!(f.path(blob).exists());
    let a = f.read(&["--stream", "a"]);
    assert_eq!(seqs(&a), vec![0, 2, 3, 5, 6, 8]);
    f.verify().ok();
    tamper_every_byte_of_cache(&f, blob, 6, 0, |_, _| None);
}

/// `read --stream` with `--to` or `--as-of` stops where the log passes
/// them, as a filtered scan does: a damaged batch after that point is not
/// reached. The whole stream's read goes to the log's end and finds it.
#[test]
fn stream_reads_that_end_early_do_not_read_on() {
    let (f, _) = Fixture::init();
    let lines = |stream: &str| {
        (0..3)
            .map(|i| line(stream, "T", json!(i)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    f.append(&lines("x")).ok();
    f.append(&lines("y")).ok();
    let z = f.append(&lines("z")).ok().json_lines();
    let at = z[0]["offset"].as_u64().unwrap() + 40;
    let seg = f.path(SEG);
    fs::set_permissions(&seg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[at as usize] ^= 0x01;
    fs::write(&seg, bytes).unwrap();
    let to = f.read(&["--stream", "x", "--to", "3"]);
    assert_eq!(seqs(&to), vec![0, 1, 2]);
    let t = to[2]["timestamp"].as_str().unwrap().to_owned();
    assert_eq!(
        seqs(&f.read(&["--stream", "x", "--as-of", &t])),
        vec![0, 1, 2]
    );
    let whole = f.run(&["read", "--stream", "x"]);
    assert_eq!(whole.code, 1, "{}", whole.describe());
}

// ---------------------------------------------------------------------------
// verify --trusted-checkpoint: checkpoints kept outside the ledger

/// A checkpoint kept elsewhere, in any of the three forms the tool prints
/// or stores it in, finds a tail cut off with its checkpoints (which
/// `verify` alone passes); a file that is not a checkpoint signed by the
/// key is refused before anything is read.
#[test]
fn verify_against_kept_checkpoints_finds_a_cut_tail() {
    let (f, _) = Fixture::init();
    f.append(&line("order-1", "OrderPlaced", json!({"n": 1})))
        .ok();
    let before = f.dir.path().join("before");
    copy_dir(&f.data(), &before);
    f.append(&line("order-1", "OrderShipped", json!({"n": 2})))
        .ok();
    let cp = f.run(&["checkpoint"]).ok();
    let kept = f.dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    let file = |name: &str, text: &str| {
        let p = kept.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let as_json = file("checkpoint.json", &cp.stdout);
    let note = cp.json()["note"].as_str().unwrap().to_owned();
    let as_note = file("checkpoint.note", &note);
    let proof = f.run(&["prove", "--seq", "0"]).ok();
    let as_proof = file("proof.json", &proof.stdout);
    let key = f.path("main.key.pub");
    let key = key.to_str().unwrap();

    let v = f
        .run(&[
            "verify",
            "--public-key",
            key,
            "--trusted-checkpoint",
            &as_json,
            "--trusted-checkpoint",
            &as_note,
            "--trusted-checkpoint",
            &as_proof,
        ])
        .ok()
        .json();
    let matched: Vec<_> = v["trusted_checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["size"].as_u64().unwrap(),
                m["matched"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(matched, vec![(2, "checkpoint".to_owned()); 3], "{v}");
    // verify's own output carries the newest checkpoint it verified: kept,
    // it is the next run's trusted checkpoint.
    assert_eq!(v["checkpoint"].as_str(), Some(&note[..]), "{v}");
    let as_verified = file("verified.json", &f.verify().ok().stdout);

    // The ledger as it was before the second event: whole and signed, so
    // verify alone passes; the kept checkpoint says two records.
    let rolled_back = |args: &[&str]| {
        let mut a = vec!["verify", "--public-key", key];
        a.extend_from_slice(args);
        run_in(&before, &a, None)
    };
    rolled_back(&[]).ok();
    for kept in [&as_note, &as_verified] {
        let out = rolled_back(&["--trusted-checkpoint", kept]);
        assert_eq!(out.code, 1, "{}", out.describe());
    }
    let out = rolled_back(&["--trusted-checkpoint", &as_note]);
    let v = out.json();
    assert_eq!(
        (&v["valid"], &v["blob"], &v["seq"]),
        (&json!(false), &json!("main/0000000000.seg"), &json!(1)),
        "{v}"
    );
    let seg_len = std::fs::metadata(before.join("main/0000000000.seg"))
        .unwrap()
        .len();
    assert_eq!(v["offset"], seg_len, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("at least record 1 was removed"),
        "{v}"
    );

    // Not a checkpoint, or not one this key signed: a usage error, named.
    let other_key = f.dir.path().join("other.key");
    f.run(&["keygen", "--out", other_key.to_str().unwrap()])
        .ok();
    let other_pub = format!("{}.pub", other_key.display());
    // The ledger before the second event has signed one record.
    let first_note = run_in(&before, &["checkpoint"], None).ok().json()["note"].clone();
    assert_ne!(first_note, json!(note));
    let two_notes = file(
        "two.json",
        &json!({"note": first_note, "checkpoint": note}).to_string(),
    );
    let note_twice = file(
        "twice.json",
        &format!("{{\"note\":{},\"note\":{}}}", json!(note), json!(note)),
    );
    for (args, says) in [
        (
            vec![
                "--trusted-checkpoint",
                &as_proof[..],
                "--public-key",
                &other_pub[..],
            ],
            "no signature by key",
        ),
        (vec!["--trusted-checkpoint", key], "trusted checkpoint"),
        (
            vec!["--trusted-checkpoint", &two_notes[..]],
            "hold different checkpoints",
        ),
        (
            vec!["--trusted-checkpoint", &note_twice[..]],
            "duplicate key \"note\"",
        ),
        (
            vec!["--trusted-checkpoint", "/nonexistent/cp"],
            "/nonexistent/cp",
        ),
    ] {
        let mut a = vec!["verify"];
        a.extend(args);
        let out = f.run(&a);
        assert_eq!(out.code, 2, "{}", out.describe());
        assert!(out.stdout.is_empty(), "{}", out.describe());
        assert!(strip_ansi(&out.stderr).contains(says), "{}", out.describe());
    }
}

/// `--segment-max-bytes` (or its variable) rolls segments over early: each
/// append's batch of ~5 KB here gets a segment of its own past 4 KiB, and
/// the log reads and verifies across them. A cap below 4 KiB is refused
/// before anything is written.
#[test]
fn a_small_segment_cap_spreads_the_log_over_segments() {
    let (f, _) = Fixture::init();
    let batch: String = (0..8)
        .map(|i| {
            line(
                "order-1",
                "LinePriced",
                json!({"i": i, "pad": "x".repeat(600)}),
            ) + "\n"
        })
        .collect();
    for _ in 0..3 {
        f.run_stdin(&["--segment-max-bytes", "4096", "append"], &batch)
            .ok();
    }
    let out = cmd_out(
        {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
            c.arg("--data").arg(f.data()).arg("append");
            c
        },
        Some(&batch),
        &[("BI_LEDGER_SEGMENT_MAX_BYTES", "4096")],
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    let stats = f.run(&["stats"]).ok().json();
    assert_eq!(stats["records"], 32, "{stats}");
    assert_eq!(stats["segments"], 4, "{stats}");
    assert_eq!(f.read(&["--stream", "order-1"]).len(), 32);
    assert_eq!(f.verify().ok().json()["valid"], true);

    let refused = f.run_stdin(&["--segment-max-bytes", "100", "append"], &batch);
    assert_eq!(refused.code, 2, "{}", refused.describe());
    assert!(
        refused.stderr.contains("--segment-max-bytes"),
        "{}",
        refused.describe()
    );
    assert_eq!(f.run(&["stats"]).ok().json()["records"], 32);
}

/// Ctrl-C during an `append` stops it between calls, not in the middle of
/// one: the call in flight lands, the ledger closes with a signed
/// checkpoint (and lets go of the writer lock), and it exits 130 saying
/// which lines were appended, exactly those it printed receipts for.
#[test]
fn ctrl_c_stops_an_append_between_calls_and_closes_the_ledger() {
    use std::io::{BufRead, Read};
    let (f, _) = Fixture::init();
    let total = 500_000;
    let input = f.dir.path().join("many.jsonl");
    let mut text = String::with_capacity(total * 60);
    for i in 0..total {
        text.push_str(&format!(
            "{{\"stream\":\"s-{}\",\"type\":\"Tick\",\"payload\":{{\"i\":{i}}}}}\n",
            i % 97
        ));
    }
    fs::write(&input, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bi-ledger"))
        .arg("--data")
        .arg(f.data())
        .arg("append")
        .arg(&input)
        .env_remove("BI_LEDGER_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"seq\":0"), "{first}");
    signal(&child, "-INT");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let receipts = 1 + rest.lines().count();
    assert!(receipts < total, "it stopped early: {receipts} receipts");
    assert!(
        stderr.contains(&format!(
            "interrupted (Ctrl-C): lines up to {receipts} were appended, and none after"
        )),
        "{receipts} receipts: {stderr}"
    );
    let v = f.verify().ok().json();
    assert_eq!(v["records"], receipts as u64);
    assert_eq!(
        v["unsigned_tail"], 0,
        "the closing checkpoint signs them all"
    );
    let more = f.append(&line("s-0", "Tick", json!({}))).ok().json();
    assert_eq!(more["seq"], receipts as u64);
}

/// SIGTERM (a service manager's stop) during `demo`, as Ctrl-C: its
/// writers stop taking stories, the ledger
/// closes with a signed checkpoint, and it exits 130 saying how many
/// events were appended.
#[test]
fn sigterm_stops_the_demo_with_its_ledger_closed() {
    let f = Fixture::new();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
    demo.arg("--data")
        .arg(f.data())
        .args(["demo", "--stories", "100000000"]);
    let (code, rest) = demo_stopped_by(demo, std::time::Duration::from_millis(300), "-TERM");
    assert_eq!(code, Some(130), "{rest}");
    assert!(
        rest.contains("interrupted (SIGTERM): the demo appended"),
        "{rest}"
    );
    let said = rest
        .split("the demo appended ")
        .nth(1)
        .unwrap_or_else(|| panic!("{rest}"));
    let events: u64 = said.split(' ').next().unwrap().parse().unwrap();
    assert!(events > 0, "{rest}");
    assert!(
        said.contains(&format!("checkpoint at size {events};")),
        "{rest}"
    );
    let v = f.verify().ok().json();
    assert_eq!(
        (v["records"].as_u64(), v["unsigned_tail"].as_u64()),
        (Some(events), Some(0))
    );
}
