//! The `bi-ledger` binary under the mistakes and accidents of real use:
//! payloads that must be kept as written, inputs that must go in whole or
//! not at all, keys for the wrong ledger, a closed stdout, mistyped data
//! directories, and damage that verify must name precisely.

use std::fs;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

#[path = "support/cli.rs"]
mod cli_support;
use cli_support::*;
#[path = "support/forge.rs"]
mod forge;

fn stats(f: &Fixture) -> Value {
    f.run(&["stats"]).ok().json()
}

/// `n` lines of `stream`, each with a payload of about `pad` bytes.
fn padded_lines(stream: &str, n: usize, pad: usize) -> String {
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&line(stream, "T", json!({"pad": "x".repeat(pad), "i": i})));
        input.push('\n');
    }
    input
}

/// An `append` refused for line `n`, before anything was written, on a
/// ledger that held nothing.
fn refused_whole(f: &Fixture, out: &Out, n: usize) {
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("line {n}")) && out.stderr.contains("nothing was appended"),
        "{}",
        out.describe()
    );
    assert_eq!(stats(f)["records"], 0);
}

#[test]
fn payloads_are_kept_as_written_or_refused() {
    let (f, _) = Fixture::init();
    let exact = r#"{"stream":"p","type":"T","payload":{"big": 12345678901234567890123, "amount": 19.990000000000000000001, "e": 1e2}}"#;
    let receipt = f.append(exact).ok().json();
    let events = f.read(&["--stream", "p"]);
    assert_eq!(events.len(), 1);
    // The payload is printed as the canonical text that was signed.
    let out = f.run(&["read", "--stream", "p"]).ok();
    assert!(
        out.stdout.contains(
            r#"{"amount":19.990000000000000000001,"big":12345678901234567890123,"e":1e2}"#
        ),
        "{}",
        out.describe()
    );
    assert_eq!(receipt["seq"], 0);

    let before = stats(&f)["records"].clone();
    for (bad, says) in [
        (
            r#"{"stream":"p","type":"T","payload":{"dup":1,"dup":2}}"#,
            "line 1: field `payload`: duplicate key \"dup\"",
        ),
        (r#"["p","T",1]"#, "line 1: expected a JSON object"),
        (
            r#"{"stream":"p","type":"T","payload":1,"expected_version":-1}"#,
            "line 1: field `expected_version`",
        ),
        (
            r#"{"stream":"p","type":"T","payload":{},"metadata":{"role":"cfo","actor":2}}"#,
            "line 1: field `metadata.actor`: expected a string, found a number",
        ),
        (
            r#"{"stream":"p","type":"T","payload":{},"metadata":["actor"]}"#,
            r#"line 1: field `metadata`: expected an object of strings, found an array"#,
        ),
    ] {
        let out = f.append(&format!("{}\n{bad}\n", line("q", "T", json!(1))));
        assert_eq!(out.code, 2, "{}", out.describe());
        let says = says.replace("line 1", "line 2");
        assert!(
            out.stderr.contains(&says),
            "wanted {says:?}: {}",
            out.describe()
        );
        assert_eq!(
            stats(&f)["records"],
            before,
            "nothing of the input is appended"
        );
    }
}

#[test]
fn an_input_that_fits_one_batch_is_atomic() {
    let (f, _) = Fixture::init();
    // About 3.1 MB: more than half a batch, less than one. A conflict on
    // the last line must leave nothing of it.
    let input = padded_lines("big", 3000, 1000);
    let conflicting = json!({"stream": "big", "type": "T", "payload": 1, "expected_version": 0});
    let out = f.append(&format!("{input}{conflicting}\n"));
    refused_whole(&f, &out, 3001);
    // An event too large for any batch is found before anything is
    // written, wherever it is in the input.
    let huge = line("big", "T", json!("x".repeat(5 << 20)));
    let out = f.append(&format!("{input}{input}{huge}\n"));
    refused_whole(&f, &out, 6001);
    // Without the conflict it goes in, as one batch.
    let receipts = f.append(&input).ok().json_lines();
    assert_eq!(receipts.len(), 3000);
    assert!(receipts
        .iter()
        .all(|r| r["offset"] == receipts[0]["offset"]));
}

/// Errors are named in line order: an event too large for a batch, before
/// a malformed line of the same chunk, is the one named. A line too long to
/// hold any event that fits a batch is refused once that much of it is read
/// (a 40 MiB file with no line break), not read whole first.
#[test]
fn the_first_bad_line_is_named_and_a_huge_line_is_not_read_whole() {
    let (f, _) = Fixture::init();
    let huge = line("big", "T", json!("x".repeat(5 << 20)));
    let out = f.append(&format!(
        "{}{huge}\n{{\"stream\": \n",
        padded_lines("s", 3, 10)
    ));
    refused_whole(&f, &out, 4);
    assert!(
        out.stderr.contains("line 4: the event takes up to"),
        "{}",
        out.describe()
    );
    let path = f.dir.path().join("one-line.json");
    let mut text = r#"{"stream":"s","type":"T","payload":""#.to_owned();
    text.push_str(&"x".repeat(40 << 20));
    fs::write(&path, text).unwrap();
    let out = f.run(&["append", path.to_str().unwrap()]);
    refused_whole(&f, &out, 1);
    assert!(
        out.stderr.contains("line 1: longer than 25231360 bytes"),
        "{}",
        out.describe()
    );
    // A line longer than a batch whose event fits one goes in: 1 MiB
    // stored, escaped as six times that.
    let escaped = format!(
        r#"{{"stream":"e","type":"T","payload":"{}"}}"#,
        "\\u0041".repeat(1 << 20)
    );
    assert!(escaped.len() > 6 << 20);
    f.append(&escaped).ok();
    let events = f.read(&["--stream", "e"]);
    assert_eq!(events[0]["payload"], "A".repeat(1 << 20));
}

/// `append` reads its input one line at a time, twice (checking, then
/// appending), not whole into memory: an input of several batches is
/// still all or nothing, from stdin or a file.
#[test]
fn an_input_of_several_batches_is_checked_whole_before_any_is_appended() {
    let (f, _) = Fixture::init();
    let input = padded_lines("s", 6000, 1000);
    let out = f.append(&format!("{input}{{\"stream\": \"s\"\n"));
    refused_whole(&f, &out, 6001);
    // A line that is not UTF-8, in a file, is named by line and byte.
    let path = f.dir.path().join("input.jsonl");
    let mut bytes = input.clone().into_bytes();
    bytes.extend_from_slice(b"{\"stream\": \"\xc3\x28\"}\n");
    fs::write(&path, &bytes).unwrap();
    let out = f.run(&["append", path.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("line 6001, byte 13: not UTF-8 text"),
        "{}",
        out.describe()
    );
    assert_eq!(stats(&f)["records"], 0);
    // Without the bad line it goes in whole, in more than one batch.
    let receipts = f.append(&input).ok().json_lines();
    let seqs: Vec<u64> = receipts
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..6000).collect::<Vec<_>>());
    assert!(receipts
        .iter()
        .any(|r| r["offset"] != receipts[0]["offset"]));
    f.verify().ok();
}

/// Long runs of blank lines are skipped, not taken for the end; and a
/// path that is a pipe (`/dev/stdin`, `<(…)`) is read like standard input.
#[test]
fn blank_runs_and_piped_paths() {
    let (f, _) = Fixture::init();
    let one = line("s", "T", json!(1));
    let input = format!("{one}\n{}{one}\n{}", "\n".repeat(2100), " \n".repeat(1500));
    let out = f.append(&format!("{input}{{\"bad\"\n"));
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("line 3603, column "),
        "{}",
        out.describe()
    );
    assert_eq!(stats(&f)["records"], 0);
    let receipts = f
        .run_stdin(&["append", "/dev/stdin"], &input)
        .ok()
        .json_lines();
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    assert_eq!(stats(&f)["records"], 2);
}

#[test]
fn a_closed_stdout_stops_the_append_and_says_what_was_written() {
    let (f, _) = Fixture::init();
    // Two batches' worth, so that what was written is a strict prefix.
    let input = padded_lines("s", 6000, 1000);
    let path = f.dir.path().join("input.jsonl");
    fs::write(&path, input).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bi-ledger"))
        .arg("--data")
        .arg(f.data())
        .arg("append")
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first receipt
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let upto: usize = stderr
        .split("lines up to ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("names the lines written: {stderr}"));
    assert!(stderr.contains("and none after"), "{stderr}");
    assert!(
        stderr.contains("Broken pipe"),
        "the cause is said: {stderr}"
    );
    let s = stats(&f);
    assert_eq!(s["records"], upto as u64, "{s}");
    assert!(upto > 0 && upto < 6000, "{upto}");
    // Closed cleanly: what was written is signed.
    assert_eq!(s["newest_checkpoint"]["size"], upto as u64, "{s}");
    f.verify().ok();
}

/// Work done before its output fails to print (a full disk behind
/// stdout) is said to be done, not left to look like a failure.
#[test]
fn output_that_cannot_be_written_is_named_and_done_work_is_said() {
    let f = Fixture::new();
    let full = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bi-ledger"))
            .arg("--data")
            .arg(f.data())
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(fs::File::create("/dev/full").unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = full(&["init"]);
    assert!(
        err.contains("ledger \"main\" is created") && err.contains("writing to standard output"),
        "{err}"
    );
    f.append(&line("s", "T", json!(1))).ok();
    let err = full(&["checkpoint"]);
    assert!(
        err.contains("(size 1) is written and signed, but could not be printed"),
        "{err}"
    );
    assert_eq!(stats(&f)["newest_checkpoint"]["size"], 1);
    let err = full(&["stats"]);
    assert!(err.contains("writing to standard output"), "{err}");
    // A read short enough to sit in its buffer until the end.
    let err = full(&["read"]);
    assert!(err.contains("writing to standard output"), "{err}");
}

#[test]
fn keys_serve_the_ledger_they_were_made_for() {
    let f = Fixture::new();
    fs::create_dir_all(f.data()).unwrap();
    let key = f.dir.path().join("prod.key");
    let key = key.to_str().unwrap();
    let made = f
        .run(&["--ledger", "prod", "keygen", "--out", key])
        .ok()
        .json();
    assert!(made["public_key"]
        .as_str()
        .unwrap()
        .starts_with("bi-ledger/prod+"));
    f.run(&["--ledger", "prod", "--signing-key", key, "init"])
        .ok();
    let pubkey = format!("{key}.pub");
    f.run(&["--ledger", "prod", "verify", "--public-key", &pubkey])
        .ok();

    // The same key for another ledger is refused before anything is made.
    let out = f.run(&["--ledger", "test", "--signing-key", key, "init"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("\"bi-ledger/prod\"") && out.stderr.contains("keygen"),
        "{}",
        out.describe()
    );
    assert!(!f.path("test").exists());

    // keygen overwrites neither file, and leaves nothing half made.
    let other = f.dir.path().join("other.key");
    fs::write(f.dir.path().join("other.key.pub"), "precious\n").unwrap();
    let out = f.run(&["keygen", "--out", other.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(!other.exists());
    assert_eq!(
        fs::read_to_string(f.dir.path().join("other.key.pub")).unwrap(),
        "precious\n"
    );

    // A private key given as the public one is named, never printed.
    // PRIVATE+KEY+<name>+<key id>+<base64>: the base64 may hold '+' too.
    let secret = fs::read_to_string(key).unwrap();
    let secret = secret.trim().splitn(5, '+').nth(4).unwrap();
    assert_eq!(secret.len(), 44, "{secret}");
    let out = f.run(&["--ledger", "prod", "verify", "--public-key", key]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("private signing key"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
}

#[test]
fn a_refused_init_leaves_no_key_and_reads_create_nothing() {
    let f = Fixture::new();
    for name in ["../escape", "UPPER", "a/b"] {
        let out = f.run(&["--ledger", name, "init"]);
        assert_eq!(out.code, 2, "{name}: {}", out.describe());
    }
    assert!(!f.dir.path().join("escape.key").exists());
    assert!(!f.data().exists() || fs::read_dir(f.data()).unwrap().next().is_none());

    // A mistyped data directory is not created by commands that only read.
    let g = Fixture::new();
    for cmd in [
        &["read"][..],
        &["stats"],
        &["verify"],
        &["prove", "--seq", "0"],
    ] {
        let out = g.run(cmd);
        assert_eq!(out.code, 2, "{cmd:?}: {}", out.describe());
        assert!(out.stderr.contains("does not exist"), "{}", out.describe());
    }
    assert!(!g.data().exists());

    // init over an existing ledger writes no key either.
    let (h, _) = Fixture::init();
    fs::rename(h.path("main.key"), h.path("saved.key")).unwrap();
    fs::rename(h.path("main.key.pub"), h.path("saved.key.pub")).unwrap();
    let out = h.run(&["init"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(!h.path("main.key").exists() && !h.path("main.key.pub").exists());
}

/// A signing key that cannot be used is refused before anything is made:
/// no data directory is left behind by `init` or `demo`.
#[test]
fn an_unusable_signing_key_leaves_no_data_directory() {
    let f = Fixture::new();
    let other = f.dir.path().join("other.key");
    f.run(&[
        "--ledger",
        "other",
        "keygen",
        "--out",
        other.to_str().unwrap(),
    ])
    .ok();
    let missing = f.dir.path().join("missing.key");
    for key in [&missing, &other] {
        for cmd in ["init", "demo"] {
            let out = f.run(&["--signing-key", key.to_str().unwrap(), cmd]);
            assert_eq!(out.code, 2, "{cmd} {key:?}: {}", out.describe());
            assert!(!f.data().exists(), "{cmd} {key:?} made {:?}", f.data());
        }
    }
}

/// An empty `BI_LEDGER_*` variable is as if it were not set.
#[test]
fn empty_environment_variables_are_unset() {
    let (f, _) = Fixture::init();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
    cmd.current_dir(f.dir.path()).arg("stats");
    let env = [
        ("BI_LEDGER_DATA", ""),
        ("BI_LEDGER_LEDGER", ""),
        ("BI_LEDGER_PUBLIC_KEY", ""),
    ];
    // The default data directory, ./ledger-data, is the fixture's.
    std::os::unix::fs::symlink(f.data(), f.dir.path().join("ledger-data")).unwrap();
    let out = cmd_out(cmd, None, &env).ok();
    assert_eq!(out.json()["ledger"], "main", "{}", out.describe());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
    cmd.current_dir(f.dir.path()).arg("verify");
    let out = cmd_out(cmd, None, &env).ok();
    assert_eq!(out.json()["valid"], true, "{}", out.describe());
}

/// A bad value from a variable names the variable, not only the flag the
/// command line does not have; from the flag, only the flag.
#[test]
fn a_bad_value_from_a_variable_names_it() {
    let (f, _) = Fixture::init();
    let data = f.data();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
        cmd.arg("--data").arg(&data).args(args);
        cmd_out(cmd, None, &[("BI_LEDGER_SEGMENT_MAX_BYTES", "10")])
    };
    let out = run(&["stats"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr
            .contains("'--segment-max-bytes <SEGMENT_MAX_BYTES>'")
            && out
                .stderr
                .contains("(the value is from BI_LEDGER_SEGMENT_MAX_BYTES)"),
        "{}",
        out.describe()
    );
    let out = run(&["stats", "--segment-max-bytes", "10"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(out.stderr.contains("'10'"), "{}", out.describe());
    assert!(!out.stderr.contains("BI_LEDGER_"), "{}", out.describe());
}

/// `demo --stories 0` on a new ledger appends nothing and still verifies.
#[test]
fn a_demo_of_nothing_verifies() {
    let f = Fixture::new();
    let out = f.run(&["demo", "--stories", "0"]).ok();
    assert_eq!(out.json()["records"], 0, "{}", out.describe());
    assert_eq!(out.json()["verified"], true, "{}", out.describe());
}

/// `--writers` is bounded, so a mistyped count is a usage error rather
/// than an allocation that fails, and no writer is started without a story.
#[test]
fn demo_writers_are_bounded_and_no_more_than_the_stories() {
    let f = Fixture::new();
    for n in ["1025", "100000000"] {
        let out = f.run(&["demo", "--stories", "1", "--writers", n]);
        assert_eq!(out.code, 2, "{n}: {}", out.describe());
        assert!(
            out.stderr
                .contains(&format!("'{n}' for '--writers <WRITERS>'"))
                && out.stderr.contains("1..=1024"),
            "{n}: {}",
            out.describe()
        );
    }
    assert!(!f.data().exists(), "a refused demo made {:?}", f.data());
    let out = f.run(&["demo", "--stories", "3", "--writers", "1024"]).ok();
    assert!(
        out.stderr.contains("3 business stories")
            && out.stderr.contains("with 3 concurrent writers"),
        "{}",
        out.describe()
    );
    assert_eq!(out.json()["verified"], true, "{}", out.describe());
}

/// A usage error is one line like every other error, names what was
/// wrong and the help to read, and exits 2 having done nothing; help
/// itself is still the whole page.
#[test]
fn a_usage_error_is_one_line() {
    let (f, _) = Fixture::init();
    let before = f.run(&["stats"]);
    for (args, names, help) in [
        (
            &["read", "--form", "3"][..],
            "'--form'",
            "'bi-ledger read --help'",
        ),
        (
            &["append", "--stream"],
            "'--stream'",
            "'bi-ledger append --help'",
        ),
        (&["verfy"], "'verfy'", "'bi-ledger --help'"),
        (
            &["prove", "--seq", "many"],
            "'many'",
            "'bi-ledger prove --help'",
        ),
        // No stream id is empty: reading one would look like an empty stream.
        (
            &["read", "--stream", ""],
            "'--stream <STREAM>': a stream id is 1 to 1024 bytes",
            "'bi-ledger read --help'",
        ),
        (
            &["read", "--stream", &"s".repeat(1025)],
            "'--stream <STREAM>': a stream id is 1 to 1024 bytes",
            "'bi-ledger read --help'",
        ),
    ] {
        let out = f.run_stdin(
            args,
            "{\"stream\": \"s\", \"type\": \"T\", \"payload\": 1}\n",
        );
        assert_eq!(out.code, 2, "{args:?}: {}", out.describe());
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{args:?}: {}",
            out.describe()
        );
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.describe()
        );
        assert!(out.stderr.contains(names), "{args:?}: {}", out.describe());
        assert!(out.stderr.contains(help), "{args:?}: {}", out.describe());
    }
    assert_eq!(
        f.run(&["stats"]).stdout,
        before.stdout,
        "a usage error changed the ledger"
    );
    let out = f.run(&["read", "--help"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(
        out.stdout.contains("Usage: bi-ledger read"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.lines().count() > 5, "{}", out.describe());
}

/// What was mistyped is what the error names: a data directory that is a
/// file, an input that is a directory, a ledger that does not exist (also
/// with an empty input, and before its signing key is looked for).
#[test]
fn a_mistyped_argument_is_named() {
    let (f, _) = Fixture::init();
    let file = f.dir.path().join("afile");
    fs::write(&file, "").unwrap();
    let out = run_in(&file, &["stats"], None);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("is not a directory"),
        "{}",
        out.describe()
    );
    let out = f.run(&["append", f.dir.path().to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("it is a directory"),
        "{}",
        out.describe()
    );
    for args in [
        &["--ledger", "typo", "append"][..],
        &["--ledger", "typo", "checkpoint"],
    ] {
        let out = f.run_stdin(args, "");
        assert_eq!(out.code, 2, "{args:?}: {}", out.describe());
        assert!(
            out.stderr.contains("ledger \"typo\" does not exist"),
            "{args:?}: {}",
            out.describe()
        );
    }
    let metadata: serde_json::Map<String, Value> =
        (0..257).map(|i| (format!("k{i}"), json!("v"))).collect();
    let out = f.append(
        &json!({"stream": "s", "type": "T", "payload": 1, "metadata": metadata}).to_string(),
    );
    assert!(
        out.stderr
            .contains("line 1: field `metadata` has 257 entries, at most 256 allowed"),
        "{}",
        out.describe()
    );
}

#[test]
fn read_refuses_a_range_that_ends_before_it_starts() {
    let (f, _) = Fixture::init();
    let out = f.run(&["read", "--from", "5", "--to", "2"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("--to is exclusive"),
        "{}",
        out.describe()
    );
}

/// A ledger of three checkpointed appends (2, 3 and 2 records).
fn three_appends() -> Fixture {
    let (f, _) = Fixture::init();
    for n in [2, 3, 2] {
        let lines: Vec<String> = (0..n).map(|i| line("s", "T", json!({"b": i}))).collect();
        f.append(&lines.join("\n")).ok();
    }
    f
}

/// An integrity failure's one line says "integrity" once, however it was
/// found: reported with JSON (`verify`, `verify-proof`) or met on the way
/// (`read`, `stats`). The JSON's `error` stays the bare reason.
#[test]
fn an_integrity_failure_says_so_once() {
    let f = three_appends();
    let key = f.path("main.key.pub");
    let key = key.to_str().unwrap();
    let proof = f.run(&["prove", "--seq", "1"]).ok().json();
    let mut seg = fs::read(f.path(SEG)).unwrap();
    let at = HEADER_LEN + 40;
    seg[at] ^= 0x20;
    writable(&f.path(SEG));
    fs::write(f.path(SEG), &seg).unwrap();
    let mut forged = proof.clone();
    forged["proof"]["seq"] = json!(2);
    for (args, stdin) in [
        (&["verify", "--public-key", key][..], None),
        (&["read"], None),
        (&["stats"], None),
        (
            &["verify-proof", "--public-key", key],
            Some(forged.to_string()),
        ),
    ] {
        let out = match &stdin {
            Some(text) => f.run_stdin(args, text),
            None => f.run(args),
        };
        assert_eq!(out.code, 1, "{args:?}: {}", out.describe());
        let err = out.stderr.trim_end();
        assert_eq!(err.lines().count(), 1, "{args:?}: {}", out.describe());
        assert_eq!(
            err.matches("integrity").count(),
            1,
            "{args:?}: {}",
            out.describe()
        );
        if stdin.is_some() {
            let reason = out.json()["error"].as_str().unwrap().to_owned();
            assert_eq!(err, format!("integrity failure: {reason}"));
        } else {
            assert!(
                err.starts_with(&format!("integrity error in {SEG} at byte ")),
                "{args:?}: {}",
                out.describe()
            );
        }
        if args[0] == "verify" {
            let v = out.json();
            let reason = v["error"].as_str().unwrap().to_owned();
            // On the fs backend the file is named too: a blob's name is
            // not always its file's (checkpoints and caches are filed by
            // window).
            let file = f.path(SEG).display().to_string();
            assert_eq!(v["file"], json!(file), "{}", out.describe());
            assert!(
                err.ends_with(&format!("): {reason} (file {file})")),
                "{}",
                out.describe()
            );
        }
    }
}

/// A blob whose file has another name (a checkpoint, filed by window):
/// the error names both, so that `ls` finds what it names.
#[test]
fn an_integrity_error_names_the_file_of_its_blob() {
    let f = three_appends();
    let cp = f.checkpoints().pop().expect("a checkpoint");
    let blob = format!("main/{cp}");
    let file = f.path(&blob);
    assert_ne!(file, f.data().join(&blob), "filed by window");
    writable(&file);
    fs::write(&file, "junk\n").unwrap();
    let out = f.verify();
    assert_eq!(out.code, 1, "{}", out.describe());
    let v = out.json();
    assert_eq!(v["blob"], json!(blob), "{}", out.describe());
    assert_eq!(
        v["file"],
        json!(file.display().to_string()),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr
            .trim_end()
            .ends_with(&format!(" (file {})", file.display())),
        "{}",
        out.describe()
    );
}

/// `init` signs checkpoint 0, so a ledger with no checkpoint lost them:
/// `prove` says so as an integrity failure, in `verify`'s words, and not as
/// if the ledger were new.
#[test]
fn prove_without_any_checkpoint_is_an_integrity_failure() {
    let f = three_appends();
    for cp in f.checkpoints() {
        fs::remove_file(f.path(&format!("main/{cp}"))).unwrap();
    }
    assert!(f.checkpoints().is_empty());
    let verify = f.verify();
    assert_eq!(verify.code, 1, "{}", verify.describe());
    let says = "nothing binds its log to the key";
    let cp0 = "main/checkpoint-00000000000000000000";
    assert_eq!(verify.json()["blob"], cp0, "{}", verify.describe());
    assert!(
        verify.json()["error"].as_str().unwrap().contains(says),
        "{}",
        verify.describe()
    );
    for args in [
        &["prove", "--seq", "0"][..],
        &["prove", "--seq", "0", "--size", "7"],
        &["prove", "--old-size", "0", "--size", "7"],
    ] {
        let out = f.run(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.describe());
        let v = out.json();
        assert_eq!((&v["valid"], &v["blob"]), (&json!(false), &json!(cp0)));
        let reason = v["error"].as_str().unwrap();
        assert!(
            reason.contains(says) && reason.contains("checkpoints were deleted"),
            "{args:?}: {}",
            out.describe()
        );
        assert_eq!(
            out.stderr.trim_end(),
            format!(
                "integrity error in {cp0} at byte 0 (sequence number 0): {reason} (file {})",
                f.path(cp0).display()
            ),
            "{args:?}"
        );
    }
}

#[test]
fn a_changed_record_with_a_good_crc_is_named_by_segment_and_records() {
    let f = three_appends();
    // The second append's batch is checkpoint 2..5. Change its last
    // record's payload and mend the CRC, as a careful forger would.
    let receipts = f.read(&[]);
    assert_eq!(receipts.len(), 7);
    let mut seg = fs::read(f.path(SEG)).unwrap();
    let start = HEADER_LEN + forge::frame_len(&seg, HEADER_LEN);
    forge::forge_in_frame(&mut seg, start, br#""b":2"#, br#""b":7"#);
    writable(&f.path(SEG));
    fs::write(f.path(SEG), &seg).unwrap();

    let out = f.verify();
    assert_eq!(out.code, 1, "{}", out.describe());
    let v = out.json();
    assert_eq!(v["blob"], SEG, "{v}");
    assert_eq!(v["offset"], start as u64, "{v}");
    assert_eq!(v["seq"], 2, "{v}");
    let what = v["error"].as_str().unwrap();
    assert!(
        what.contains("records 2..5") && what.contains("checkpoint-00000000000000000005"),
        "{what}"
    );
}

#[test]
fn missing_files_are_integrity_failures_that_name_them() {
    let f = three_appends();
    let ledger = f.path("main/LEDGER");
    let saved = fs::read(&ledger).unwrap();
    fs::remove_file(&ledger).unwrap();
    let out = f.verify();
    assert_eq!(out.code, 1, "{}", out.describe());
    assert_eq!(out.json()["blob"], "main/LEDGER", "{}", out.describe());
    fs::write(&ledger, saved).unwrap();
    f.verify().ok();

    fs::remove_file(f.path(SEG)).unwrap();
    let out = f.verify();
    assert_eq!(out.code, 1, "{}", out.describe());
    let v = out.json();
    assert_eq!(v["blob"], SEG, "{v}");
    assert!(v["error"].as_str().unwrap().contains("missing"), "{v}");
    // Reading, and opening for writing, refuse too: the log is gone, not
    // empty, and is not started afresh.
    for cmd in [&["read"][..], &["stats"]] {
        let out = f.run(cmd);
        assert_eq!(out.code, 1, "{cmd:?}: {}", out.describe());
        assert!(out.stderr.contains(SEG), "{}", out.describe());
    }
    let out = f.append(&line("s", "T", json!(1)));
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(!f.path(SEG).exists());
}

#[test]
fn a_deleted_stream_index_is_named_by_verify_and_reads_scan_instead() {
    let f = three_appends();
    let v = f.verify().ok().json();
    assert_eq!(v["missing_caches"], json!([]), "{v}");
    let before = f.run(&["read", "--stream", "s"]).ok().stdout;
    let blob = "main/streams-00000000000000000007";
    let written = fs::read(f.path(blob)).unwrap();
    fs::remove_file(f.path(blob)).unwrap();
    let out = f.verify();
    assert_eq!(out.code, 0, "{}", out.describe());
    let v = out.json();
    assert_eq!(v["missing_caches"], json!([blob]), "{v}");
    assert!(
        out.stderr
            .contains("without their stream index or node cache"),
        "{}",
        out.describe()
    );
    assert_eq!(f.run(&["read", "--stream", "s"]).ok().stdout, before);

    // `--restore-caches` puts back the very bytes the writer wrote.
    let v = f.run(&["verify", "--restore-caches"]).ok().json();
    assert_eq!(v["restored_caches"], json!([blob]), "{v}");
    assert_eq!(v["missing_caches"], json!([]), "{v}");
    assert_eq!(fs::read(f.path(blob)).unwrap(), written);
    let v = f.verify().ok().json();
    assert_eq!(v["missing_caches"], json!([]), "{v}");
    assert_eq!(v["restored_caches"], json!([]), "{v}");
}

#[test]
fn restore_caches_never_replaces_a_wrong_cache() {
    let f = three_appends();
    let blob = "main/streams-00000000000000000007";
    let mut bytes = fs::read(f.path(blob)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(f.path(blob), &bytes).unwrap();
    let out = f.run(&["verify", "--restore-caches"]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert_eq!(out.json()["blob"], json!(blob), "{}", out.describe());
    assert_eq!(fs::read(f.path(blob)).unwrap(), bytes);
}

#[test]
fn a_deleted_newest_checkpoint_leaves_caches_that_verify_reports() {
    let f = three_appends();
    let v = f.verify().ok().json();
    assert_eq!(v["caches_without_checkpoint"], json!([]), "{v}");
    let cps = f.checkpoints();
    let newest = cps.last().unwrap();
    assert!(
        newest.ends_with("checkpoint-00000000000000000007"),
        "{cps:?}"
    );
    fs::remove_file(f.path(&format!("main/{newest}"))).unwrap();
    // The log still matches every checkpoint left; the records after the
    // previous one are reported unsigned, and the deleted one's caches
    // are named.
    let out = f.verify();
    assert_eq!(out.code, 0, "{}", out.describe());
    let v = out.json();
    assert_eq!(v["unsigned_tail"], 2, "{v}");
    assert_eq!(
        v["caches_without_checkpoint"],
        json!([
            "main/snapshot-00000000000000000007",
            "main/streams-00000000000000000007"
        ]),
        "{v}"
    );
    assert!(
        out.stderr.contains("caches without a checkpoint"),
        "{}",
        out.describe()
    );
}

/// Records after the newest checkpoint: `verify` passes, and says on
/// stderr that no signature covers them; a writer that takes them over
/// says so too. With the checkpoint that signed them deleted and the
/// records cut off at a batch boundary, the caches that checkpoint left
/// say records were removed: `verify` and writers refuse, naming where.
#[test]
fn records_cut_off_with_their_checkpoint_are_found_by_its_caches() {
    let (f, _) = Fixture::init();
    for n in [2, 3] {
        let lines: Vec<String> = (0..n).map(|i| line("s", "T", json!({"b": i}))).collect();
        f.append(&lines.join("\n")).ok();
    }
    let five = f.seg_len();
    f.append(&format!(
        "{}\n{}",
        line("s", "T", json!(5)),
        line("s", "T", json!(6))
    ))
    .ok();
    let cp7 = "main/checkpoint-00000000000000000007";
    let seg = f.path(SEG);
    let whole = fs::read(&seg).unwrap();
    fs::remove_file(f.path(cp7)).unwrap();

    let out = f.verify();
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(out.json()["unsigned_tail"], 2, "{}", out.describe());
    assert!(
        out.stderr.contains("no signature covers them"),
        "{}",
        out.describe()
    );

    writable(&seg);
    fs::write(&seg, &whole[..five as usize]).unwrap();
    for args in [&["verify"][..], &["checkpoint"][..]] {
        let out = f.run(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.describe());
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(
            said.contains("records were removed from the log's end"),
            "{args:?}: {}",
            out.describe()
        );
        assert!(
            said.contains(&format!(
                "integrity error in {SEG} at byte {five} (sequence number 5)"
            )),
            "{args:?}: {}",
            out.describe()
        );
    }
    assert_eq!(f.seg_len(), five, "a refused writer wrote nothing");

    // Put back, the records are taken over with a warning, and signed.
    fs::write(&seg, &whole).unwrap();
    let out = f.run(&["checkpoint"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(
        out.stderr
            .contains("records after the newest checkpoint, signed by none"),
        "{}",
        out.describe()
    );
    let v = f.verify().ok().json();
    assert_eq!(
        (&v["records"], &v["unsigned_tail"]),
        (&json!(7), &json!(0)),
        "{v}"
    );
}

/// A ledger whose LEDGER file is gone, its segments and checkpoints still
/// there, is damaged: writers say so as `verify` does (exit 1, naming the
/// file), rather than calling the ledger one that does not exist.
#[test]
fn a_missing_ledger_file_is_damage_to_writers_too() {
    let f = three_appends();
    fs::remove_file(f.path("main/LEDGER")).unwrap();
    for args in [
        &["verify"][..],
        &["checkpoint"][..],
        &["append", "/dev/null"][..],
    ] {
        let out = f.run(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.describe());
        assert!(
            out.stderr.contains("integrity error in main/LEDGER")
                && out.stderr.contains("identity file is missing"),
            "{args:?}: {}",
            out.describe()
        );
    }
    let out = f.run(&["--ledger", "other", "append", "/dev/null"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(out.stderr.contains("does not exist"), "{}", out.describe());
}

/// A writer appends behind the newest checkpoint, in the segment it
/// stands in: a change to that segment's header, which only `verify` read
/// before, stops the writer too, and it writes nothing.
#[test]
fn a_writer_refuses_a_changed_header_of_the_segment_it_appends_to() {
    let f = three_appends();
    let seg = f.path(SEG);
    let whole = fs::read(&seg).unwrap();
    writable(&seg);
    for i in 0..HEADER_LEN {
        let mut bytes = whole.clone();
        bytes[i] ^= 0x01;
        fs::write(&seg, &bytes).unwrap();
        let out = f.append(&line("s", "T", json!("more")));
        assert_eq!(out.code, 1, "header byte {i}: {}", out.describe());
        assert!(
            out.stderr
                .contains(&format!("integrity error in {SEG} at byte ")),
            "header byte {i}: {}",
            out.describe()
        );
        assert_eq!(fs::read(&seg).unwrap(), bytes, "header byte {i}: written");
    }
    fs::write(&seg, &whole).unwrap();
    f.append(&line("s", "T", json!("more"))).ok();
}

/// Checkpoint 5 deleted with the stream index of checkpoint 7: the
/// index a writer put for 7 started at 5, one restored from the log
/// would start at 2. A cache of size 5 is left, so verify does not
/// guess: it reports the index missing and puts nothing back.
#[test]
fn restore_caches_does_not_guess_past_a_deleted_checkpoint() {
    let f = three_appends();
    let cps = f.checkpoints();
    assert!(
        cps[2].ends_with("checkpoint-00000000000000000005"),
        "{cps:?}"
    );
    fs::remove_file(f.path(&format!("main/{}", cps[2]))).unwrap();
    let blob = "main/streams-00000000000000000007";
    fs::remove_file(f.path(blob)).unwrap();
    assert!(f.path("main/streams-00000000000000000005").exists());
    let out = f.run(&["verify", "--restore-caches"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let v = out.json();
    assert_eq!(v["restored_caches"], json!([]), "{v}");
    assert_eq!(v["missing_caches"], json!([blob]), "{v}");
    assert!(out.stderr.contains("not restoring"), "{}", out.describe());
    assert!(!f.path(blob).exists());
}

#[test]
fn a_deleted_checkpoint_is_named() {
    let f = three_appends();
    let cps = f.checkpoints();
    assert_eq!(cps.len(), 4, "{cps:?}");
    assert_eq!(cps[2], "checkpoint-00000000000000000005");
    let middle = f.path(&format!("main/{}", cps[2]));
    fs::remove_file(middle).unwrap();
    let out = f.verify();
    assert_eq!(out.code, 1, "{}", out.describe());
    let v = out.json();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("follows a checkpoint of size 5, which is missing"),
        "{v}"
    );
}

/// Every reader, not only `verify`, holds the log to its newest
/// checkpoint: a segment cut back at a batch boundary leaves no bad frame,
/// and records a checkpoint signed are gone.
#[test]
fn a_log_cut_at_a_batch_boundary_fails_every_read() {
    let f = three_appends();
    // Batches of 2, 3 and 2 records: cut the last one off whole.
    let seg = fs::read(f.path(SEG)).unwrap();
    let second = HEADER_LEN + forge::frame_len(&seg, HEADER_LEN);
    let cut = (second + forge::frame_len(&seg, second)) as u64;
    writable(&f.path(SEG));
    fs::OpenOptions::new()
        .write(true)
        .open(f.path(SEG))
        .unwrap()
        .set_len(cut)
        .unwrap();
    let says = format!(
        "integrity error in {SEG} at byte {cut} (sequence number 5): the log ends at record 5, but a checkpoint covers 7 records"
    );
    for args in [
        &["read"][..],
        &["read", "--stream", "s"],
        &["read", "--as-of", "2999-01-01T00:00:00Z"],
        &["read", "--from", "4"],
        &["stats"],
        &["prove", "--seq", "0"],
    ] {
        let out = f.run(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.describe());
        assert!(out.stderr.contains(&says), "{args:?}: {}", out.describe());
    }
    // What the cut left is still there to read.
    let out = f.run(&["read", "--to", "5"]).ok();
    assert_eq!(out.json_lines().len(), 5);
    assert_eq!(f.verify().code, 1);
}

/// A read that starts at a batch found through a stream index names
/// damage there by that batch's first record, as `verify` does; and
/// `stats` does not count a damaged last batch as an empty log.
#[test]
fn damage_met_after_a_seek_is_named_by_its_batch() {
    let (f, _) = Fixture::init();
    let input = padded_lines("s", 50_000, 150);
    let receipts = f.append(&input).ok().json_lines();
    let mut batches: Vec<(u64, u64)> = Vec::new(); // (offset, first seq)
    for r in &receipts {
        let offset = r["offset"].as_u64().unwrap();
        if batches.last().is_none_or(|b| b.0 != offset) {
            batches.push((offset, r["seq"].as_u64().unwrap()));
        }
    }
    assert!(batches.len() >= 3, "{batches:?}");
    let (offset, first) = batches[1];
    let from = first + 17_000.min(batches[2].1 - first - 1);
    assert!(from >= 16_384, "the read must seek: {batches:?}");
    writable(&f.path(SEG));
    let mut seg = fs::read(f.path(SEG)).unwrap();
    seg[(offset + 500) as usize] ^= 0x20;
    fs::write(f.path(SEG), &seg).unwrap();
    let out = f.run(&["read", "--from", &from.to_string()]);
    assert_eq!(out.code, 1, "{}", out.describe());
    let says = format!("at byte {offset} (sequence number {first})");
    assert!(out.stderr.contains(&says), "{}", out.describe());
    let out = f.verify();
    assert_eq!(out.code, 1, "{}", out.describe());
    assert_eq!(out.json()["seq"], first, "{}", out.describe());

    // The last batch damaged instead: signed records are unreadable.
    seg[(offset + 500) as usize] ^= 0x20;
    let (last, last_first) = *batches.last().unwrap();
    seg[(last + 500) as usize] ^= 0x20;
    fs::write(f.path(SEG), &seg).unwrap();
    let out = f.run(&["stats"]);
    assert_eq!(out.code, 1, "{}", out.describe());
    let says = format!("at byte {last} (sequence number {last_first})");
    assert!(out.stderr.contains(&says), "{}", out.describe());
}

/// A blob path taken by a directory makes a put fail: here, the snapshot
/// `init`'s first checkpoint puts after the LEDGER file, and the one
/// `append`'s closing checkpoint puts after the events are durable.
#[test]
fn failures_after_the_point_of_no_return_say_what_was_written() {
    let f = Fixture::new();
    let snapshot = |size: u64| f.path(&format!("main/snapshot-{size:020}"));
    fs::create_dir_all(snapshot(0)).unwrap();
    let out = f.run(&["init"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("failed part-way") && out.stderr.contains("which is kept"),
        "{}",
        out.describe()
    );
    assert!(f.data().join("main.key").exists());
    fs::remove_dir(snapshot(0)).unwrap();
    // The ledger opens with the key that was kept.
    fs::create_dir_all(snapshot(1)).unwrap();
    let out = f.append(&line("s", "T", json!(1)));
    assert_eq!(out.code, 2, "{}", out.describe());
    assert_eq!(out.json_lines().len(), 1, "the receipt: {}", out.describe());
    assert!(
        out.stderr
            .contains("every line (up to 1) was appended and is durable"),
        "{}",
        out.describe()
    );
    fs::remove_dir(snapshot(1)).unwrap();
    assert_eq!(f.read(&[]).len(), 1);
    // The writer of `append` signed the checkpoint 0 that `init` could not,
    // before appending.
    let report = f.verify().ok().json();
    assert_eq!(
        (
            report["checkpoints"].as_u64(),
            report["unsigned_tail"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

/// An `init` interrupted after it wrote the key and before the LEDGER file
/// leaves a key for no ledger: the next `init` (or `demo`) uses it, and
/// writes its public half if that is missing.
#[test]
fn init_uses_a_key_that_an_interrupted_init_left() {
    let f = Fixture::new();
    fs::create_dir_all(f.data()).unwrap();
    let key = f.data().join("main.key");
    let made = f
        .run(&["keygen", "--out", key.to_str().unwrap()])
        .ok()
        .json();
    fs::remove_file(f.data().join("main.key.pub")).unwrap();
    let out = f.run(&["init"]).ok();
    assert!(
        out.stderr
            .contains("using the signing key that is already there"),
        "{}",
        out.describe()
    );
    let v = out.json();
    assert_eq!(v["public_key"], made["public_key"], "{v} {made}");
    let public = fs::read_to_string(f.data().join("main.key.pub")).unwrap();
    assert_eq!(public.trim(), made["public_key"].as_str().unwrap());
    f.append(&line("s", "T", json!(1))).ok();
    f.verify().ok();
    // No stray temporary files beside the keys.
    let names: Vec<String> = fs::read_dir(f.data())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
}

/// An error to report when standard error is a pipe nobody reads any more
/// (`bi-ledger ... 2>&1 | head`): exit 2 as for any error, not a panic's
/// 101 from printing it.
#[test]
fn an_error_with_standard_error_closed_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bi-ledger"))
            .arg("--data")
            .arg(dir.path())
            .arg("stats")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        assert_eq!(child.wait().unwrap().code(), Some(2));
    }
}

/// Two `init`s (or `demo`s) at once: one makes the ledger, the other says
/// it exists (or is locked), and the key the ledger was made with stays.
/// Before, the second deleted the first one's key in about a third of the
/// tries, and no one could append to the new ledger again.
#[test]
fn two_inits_at_once_keep_the_ledgers_key() {
    for (round, args) in (0..16).map(|i| {
        let args: &[&str] = if i % 4 == 3 {
            &["demo", "--stories", "5"]
        } else {
            &["init"]
        };
        (i, args)
    }) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let outs: Vec<Out> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| run_in(&data, args, None)))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let ok = outs.iter().filter(|o| o.code == 0).count();
        let both = || format!("{}\n{}", outs[0].describe(), outs[1].describe());
        assert!(ok >= 1, "round {round} {args:?}: {}", both());
        for o in outs.iter().filter(|o| o.code != 0) {
            assert_eq!(o.code, 2, "round {round} {args:?}: {}", o.describe());
            assert!(
                o.stderr.contains("already exists") || o.stderr.contains("locked"),
                "round {round} {args:?}: {}",
                o.describe()
            );
        }
        if args[0] == "init" {
            assert_eq!(ok, 1, "round {round}: {}", both());
        }
        let out = run_in(&data, &["append"], Some(&line("s", "T", json!(round))));
        assert_eq!(out.code, 0, "round {round} {args:?}: {}", out.describe());
        let out = run_in(&data, &["verify"], None);
        assert_eq!(out.code, 0, "round {round} {args:?}: {}", out.describe());
    }
}

/// `init` while another process holds the ledger's writer lock (another
/// `init` creating it, as two racing `init`s do): it says so, writes
/// nothing and leaves no key of its own behind. It must not send the user
/// to a key the ledger was not made with.
#[test]
fn init_while_another_process_holds_the_lock() {
    let f = Fixture::new();
    let lock_dir = f.data().join("main");
    fs::create_dir_all(&lock_dir).unwrap();
    let script = format!(
        "import fcntl, sys, time\n\
         f = open({:?}, 'w')\n\
         fcntl.flock(f, fcntl.LOCK_EX)\n\
         print('locked', flush=True)\n\
         sys.stdin.read()\n",
        lock_dir.join(".writer.lock").display().to_string()
    );
    let mut holder = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 holds the lock (tests/spec_reader.rs needs it too)");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let out = f.run(&["init"]);
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert_eq!(out.code, 2, "{}", out.describe());
    assert!(
        out.stderr.contains("locked") && out.stderr.contains("nothing was written"),
        "{}",
        out.describe()
    );
    assert!(!f.path("main.key").exists(), "a key for no ledger was left");
    assert!(!f.path("main/LEDGER").exists());
}

/// Under `umask 000` nothing the store creates is writable by others: a
/// segment (the payloads) or a directory anyone could change or delete
/// would make the audit trail anyone's to rewrite.
#[test]
fn nothing_is_writable_by_others_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bin = env!("CARGO_BIN_EXE_bi-ledger");
    let script = format!(
        "umask 000 && {bin} --data {d} init >/dev/null && echo '{{\"stream\":\"s\",\"type\":\"T\",\"payload\":1}}' | {bin} --data {d} append >/dev/null",
        d = data.display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = 0;
    let mut stack = vec![data];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o022, 0, "{} has mode {mode:o}", p.display());
        seen += 1;
        if meta.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 8, "only {seen} entries");
}

/// A signing key others can read is used, with a warning saying so.
#[test]
fn a_signing_key_others_can_read_is_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let (f, _) = Fixture::init();
    let key = f.path("main.key");
    let out = f.append(&line("s", "T", json!(1))).ok();
    assert!(!out.stderr.contains("other users"), "{}", out.describe());
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.append(&line("s", "T", json!(2))).ok();
    assert!(
        out.stderr.contains("can be read by other users (mode 644)"),
        "{}",
        out.describe()
    );
}

/// Records after the newest checkpoint stamped an hour ahead of the clock
/// (forged: a frame's base timestamp changed and its CRC mended; an
/// earlier writer's clock would do the same). A writer that takes them
/// over says so, since timestamps never decrease and every event it
/// appends is stamped that hour ahead too; the log stays valid.
#[test]
fn a_writer_warns_of_a_last_timestamp_ahead_of_its_clock() {
    let (f, _) = Fixture::init();
    f.append(&line("s", "T", json!(0))).ok();
    let tail = f.seg_len();
    f.append(&line("s", "T", json!(1))).ok();
    // Its checkpoint and caches gone, as a crash before them leaves it.
    for blob in [
        bi_ledger::ledger::layout::checkpoint("main", 2),
        bi_ledger::ledger::layout::snapshot("main", 2),
        bi_ledger::ledger::layout::stream_index("main", 2),
        bi_ledger::ledger::layout::nodes("main", 2),
    ] {
        let _ = fs::remove_file(f.path(&blob));
    }
    let seg = f.path(SEG);
    let mut bytes = fs::read(&seg).unwrap();
    let hour = 3_600_000_000i64;
    let ahead = bi_ledger::time::now_us() + hour;
    forge::set_base_timestamp(&mut bytes, tail as usize, ahead);
    writable(&seg);
    fs::write(&seg, &bytes).unwrap();

    let out = f.append(&line("s", "T", json!(2)));
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(
        out.stderr
            .contains("stamped later than this clock says it is now"),
        "{}",
        out.describe()
    );
    let events = f.read(&[]);
    let stamped = |e: &Value| bi_ledger::time::parse_rfc3339_us(e["timestamp"].as_str().unwrap());
    assert_eq!(stamped(&events[1]), Some(ahead));
    assert_eq!(
        stamped(&events[2]),
        Some(ahead),
        "never earlier than the last"
    );
    assert_eq!(f.verify().ok().json()["records"], 3);
}
