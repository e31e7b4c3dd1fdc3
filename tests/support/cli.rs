//! Running the `bi-ledger` binary in tests: each `Fixture` is a temporary
//! data directory, and `Out` is what one run printed and returned.
#![allow(dead_code)] // each test crate uses its own share of these

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

pub const SEG: &str = "main/0000000000.seg";
pub const HEADER_LEN: usize = 84;

// ---------------------------------------------------------------------------
// Running the binary

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout as JSON lines.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l:?}"))
            })
            .collect()
    }

    pub fn json(&self) -> Value {
        let mut v = self.json_lines();
        assert_eq!(v.len(), 1, "expected one JSON line: {}", self.describe());
        v.remove(0)
    }

    pub fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {}", self.describe());
        self
    }
}

/// Removes ANSI colour sequences (the log formatter may emit them).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `bi-ledger --data DATA ARGS` with `stdin` (or an empty stdin).
pub fn run_in(data: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
    cmd.arg("--data").arg(data).args(args);
    cmd_out(cmd, stdin, &[])
}

/// Runs `cmd` with no `BI_LEDGER_*` variables but `env`.
pub fn cmd_out(mut cmd: Command, stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
    for var in [
        "BI_LEDGER_DATA",
        "BI_LEDGER_LEDGER",
        "BI_LEDGER_SIGNING_KEY",
        "BI_LEDGER_PUBLIC_KEY",
        "BI_LEDGER_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn bi-ledger");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The binary may exit before reading everything (usage errors).
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().expect("wait for bi-ledger");
    Out {
        code: out.status.code().expect("bi-ledger was killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// A temporary data directory and the commands run against it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fixture with an initialised ledger `main`.
    pub fn init() -> (Self, Value) {
        let f = Fixture::new();
        let out = f.run(&["init"]).ok();
        let v = out.json();
        (f, v)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the fs store keeps `blob`.
    pub fn path(&self, blob: &str) -> PathBuf {
        bi_ledger::backend::fs::FsStore::file_path(&self.data(), blob)
    }

    pub fn run(&self, args: &[&str]) -> Out {
        run_in(&self.data(), args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Out {
        run_in(&self.data(), args, Some(stdin))
    }

    pub fn append(&self, lines: &str) -> Out {
        self.run_stdin(&["append"], lines)
    }

    pub fn read(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["read"];
        a.extend_from_slice(args);
        self.run(&a).ok().json_lines()
    }

    pub fn verify(&self) -> Out {
        let key = self.path("main.key.pub");
        self.run(&["verify", "--public-key", key.to_str().unwrap()])
    }

    /// The bytes written to segment 0: the file less the unwritten space
    /// (zeros) the fs store writes ahead of its appends, which a writer
    /// that did not close leaves behind. Every batch these tests write
    /// ends in a JSON payload, never in a zero byte.
    pub fn seg_len(&self) -> u64 {
        let bytes = fs::read(self.path(SEG)).unwrap();
        bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i as u64 + 1)
    }

    /// Names of the checkpoint blobs under `main/`, without the `main/`,
    /// sorted. The fs store files them in directories by all but their
    /// last six digits (`FsStore::file_path`).
    pub fn checkpoints(&self) -> Vec<String> {
        let mut v = Vec::new();
        for dir in fs::read_dir(self.path("main")).unwrap() {
            let dir = dir.unwrap();
            let stem = dir.file_name().into_string().unwrap();
            let Some(stem) = stem.strip_prefix(".checkpoint-") else {
                continue;
            };
            for file in fs::read_dir(dir.path()).unwrap() {
                let file = file.unwrap().file_name().into_string().unwrap();
                v.push(format!("checkpoint-{stem}{file}"));
            }
        }
        v.sort();
        v
    }
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

pub fn line(stream: &str, ty: &str, payload: Value) -> String {
    json!({"stream": stream, "type": ty, "payload": payload}).to_string()
}

/// Makes a finished (read-only) file writable.
pub fn writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

/// Sends `signal` (`-INT`: what Ctrl-C on a terminal does) to `child`.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `demo` (`cmd`, its arguments given) until it has appended for
/// `after`, then sends it `sig`; returns its exit code and what it wrote
/// to stderr after its first line.
pub fn demo_stopped_by(
    mut cmd: Command,
    after: std::time::Duration,
    sig: &str,
) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    let mut child = cmd
        .env_remove("BI_LEDGER_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.starts_with("demo: appending"), "{first}");
    std::thread::sleep(after);
    signal(&child, sig);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    (child.wait().unwrap().code(), rest)
}
