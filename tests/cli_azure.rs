//! The CLI on the Azure backend, against Azurite (or the account that
//! AZURE_STORAGE_CONNECTION_STRING names): every command that reads or
//! writes a ledger, end to end through the real binary. Like
//! tests/azure_blob.rs, it fails without an account unless
//! BI_LEDGER_SKIP_AZURE=1.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use std::io::Write;

#[path = "support/azure.rs"]
mod azure_env;
#[path = "support/cli.rs"]
mod cli_support;
#[path = "support/proxy.rs"]
mod proxy;

/// The account's connection string (the binary reads it from the
/// environment), or `None` to skip.
fn account() -> Option<String> {
    azure_env::account()?;
    std::env::var("AZURE_STORAGE_CONNECTION_STRING").ok()
}

fn run(dir: &Path, container: &str, args: &[&str], stdin: Option<&str>) -> Output {
    run_via(None, dir, container, args, stdin)
}

/// [`run`], with `connection` as the account's connection string if given.
fn run_via(
    connection: Option<&str>,
    dir: &Path,
    container: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
    if let Some(cs) = connection {
        c.env("AZURE_STORAGE_CONNECTION_STRING", cs);
    }
    c.args(["--backend", "azure", "--container", container, "--data"])
        .arg(dir)
        .args(args)
        .env_remove("BI_LEDGER_LEDGER")
        .env_remove("BI_LEDGER_SIGNING_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let input = stdin.unwrap_or("").to_owned();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A container name no other run uses.
fn unique_container(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

#[test]
fn every_command_on_azure() {
    if account().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let container = unique_container("cli");

    let init = lines(&ok(&run(d, &container, &["init"], None)));
    assert!(init[0]["public_key"]
        .as_str()
        .unwrap()
        .starts_with("bi-ledger/main+"));

    let input = concat!(
        r#"{"stream":"decision-1","type":"DecisionQueued","payload":{"title":"EU expansion"},"expected_version":"no_stream"}"#,
        "\n",
        r#"{"stream":"decision-1","type":"AgentVoteCast","payload":{"agent":"cfo","vote":"approve"}}"#,
        "\n",
        r#"{"stream":"audit-1","type":"AuditEvent","payload":{"action":"read"},"metadata":{"actor":"agent"}}"#,
        "\n"
    );
    let receipts = lines(&ok(&run(d, &container, &["append"], Some(input))));
    let seqs: Vec<u64> = receipts
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![0, 1, 2]);

    // A conflict writes nothing, on Azure as locally.
    let stale = r#"{"stream":"decision-1","type":"X","payload":1,"expected_version":0}"#;
    let o = run(d, &container, &["append"], Some(stale));
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let read = lines(&ok(&run(
        d,
        &container,
        &["read", "--stream", "decision-1"],
        None,
    )));
    assert_eq!(read.len(), 2);
    assert_eq!(read[1]["payload"]["vote"], "approve");
    assert_eq!(lines(&ok(&run(d, &container, &["read"], None))).len(), 3);

    let pubkey = d.join("main.key.pub");
    let verified = ok(&run(
        d,
        &container,
        &["verify", "--public-key", pubkey.to_str().unwrap()],
        None,
    ));
    let v = lines(&verified);
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[0]["records"], 3);
    // Kept, it is a later run's trusted checkpoint (checked at the end).
    let kept = d.join("kept.json");
    std::fs::write(&kept, &verified).unwrap();

    ok(&run(d, &container, &["checkpoint"], None));
    let proof = ok(&run(d, &container, &["prove", "--seq", "1"], None));
    let checked = lines(&ok(&run(
        d,
        &container,
        &["verify-proof", "--public-key", pubkey.to_str().unwrap()],
        Some(&proof),
    )));
    assert_eq!(checked[0]["valid"], true);
    assert_eq!(checked[0]["stream"], "decision-1");

    let stats = lines(&ok(&run(d, &container, &["stats"], None)));
    assert_eq!(stats[0]["records"], 3);

    // A second writer is refused while one holds the lease.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_bi-ledger"))
        .args(["--backend", "azure", "--container", &container, "--data"])
        .arg(d)
        .args(["demo", "--stories", "2000", "--writers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The demo says it is appending only once it holds the writer lease.
    let mut progress = std::io::BufReader::new(holder.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut progress, &mut first).unwrap();
    assert!(first.starts_with("demo: appending"), "{first}");
    let mut refused = false;
    for _ in 0..100 {
        let o = run(d, &container, &["append"], Some(stale));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        if err.contains("locked by another writer") {
            assert!(
                err.contains("the lease of a writer that died expires within 60 s"),
                "{err}"
            );
            refused = true;
            break;
        }
        if holder.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = holder.wait().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut progress, &mut rest);
    assert!(status.success(), "demo on azure failed: {rest}");
    assert!(
        refused,
        "a second writer was never refused while the demo wrote"
    );
    let v = lines(&ok(&run(
        d,
        &container,
        &["verify", "--trusted-checkpoint", kept.to_str().unwrap()],
        None,
    )));
    assert_eq!(v[0]["valid"], true);
    assert_eq!(
        v[0]["trusted_checkpoints"],
        serde_json::json!([{"file": kept.to_str().unwrap(), "size": 3, "matched": "checkpoint"}]),
        "{}",
        v[0]
    );
}

/// Without a connection string: an account URL with the account key, as
/// `AZURE_STORAGE_KEY` gives it; the same ledger is then readable through
/// the connection string. An http URL without a secret is refused (Entra
/// ID tokens only go over https) before anything is sent.
#[test]
fn account_url_with_key_and_refusals() {
    use bi_ledger::backend::azure::config::{DEV_ACCOUNT, DEV_KEY};
    use bi_ledger::backend::azure::ConnectionInfo;
    let Some(cs) = account() else { return };
    let info = ConnectionInfo::parse(&cs).unwrap();
    if info.account.as_deref() != Some(DEV_ACCOUNT) {
        eprintln!("not Azurite: the account key is not known to this test; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let container = format!("cli-url-{}", uuid::Uuid::new_v4().simple());
    let url = info.blob_endpoint.as_str();
    let by_url = |args: &[&str], key: Option<&str>, stdin: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
        c.args(["--backend", "azure", "--container", &container, "--data"])
            .arg(d)
            .args(["--account-url", url])
            .args(args)
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env_remove("AZURE_STORAGE_SAS_TOKEN")
            .env_remove("BI_LEDGER_LEDGER")
            .env_remove("BI_LEDGER_SIGNING_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match key {
            Some(k) => c.env("AZURE_STORAGE_KEY", k),
            None => c.env_remove("AZURE_STORAGE_KEY"),
        };
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    ok(&by_url(&["init"], Some(DEV_KEY), None));
    let r = lines(&ok(&by_url(
        &["append"],
        Some(DEV_KEY),
        Some("{\"stream\":\"s-1\",\"type\":\"Opened\",\"payload\":{\"n\":1}}\n"),
    )));
    assert_eq!(r[0]["seq"], 0);
    // The same ledger through the connection string.
    let read = lines(&ok(&run(d, &container, &["read"], None)));
    assert_eq!(read.len(), 1);
    assert_eq!(read[0]["stream"], "s-1");

    let o = by_url(&["verify"], None, None);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("BI_LEDGER_AZURE_ACCOUNT_URL"), "{err}");
    assert!(err.contains("https"), "{err}");

    let o = by_url(&["verify"], Some("bm90IHRoZSBrZXk="), None);
    assert_ne!(o.status.code(), Some(0), "a wrong key was accepted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("bm90IHRoZSBrZXk="), "the key leaked: {err}");
}

/// Only `init` (and `demo`) may create the container: any other command
/// given a mistyped container name says it does not exist and leaves no
/// new, empty container behind (each command meets it missing again).
#[test]
fn a_missing_container_is_named_and_not_created() {
    if account().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let container = unique_container("typo");
    let event = r#"{"stream":"s","type":"t","payload":{}}"#;
    for args in [
        &["stats"][..],
        &["read"],
        &["verify"],
        &["checkpoint"],
        &["prove", "--seq", "0"],
        &["append"],
        &["stats"],
    ] {
        let out = run(d, &container, args, Some(event));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("container {container:?} does not exist")),
            "{args:?}: {err}"
        );
    }
    // Nor by an `init` whose key files cannot be written (`--data` is a
    // file): it fails before it creates the container.
    let file = d.join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = run(&file, &container, &["init"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(d, &container, &["stats"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("container {container:?} does not exist")),
        "{err}"
    );
    // `init` does create it.
    ok(&run(d, &container, &["init"], None));
    let stats = lines(&ok(&run(d, &container, &["stats"], None)));
    assert_eq!(stats[0]["records"], 0);
}

/// An `append` whose block write fails for good (the service answers 503
/// to every attempt) exits 2 saying that whether its lines landed is not
/// known, and names the sequence number to look for; nothing after them
/// is tried. Here the 503s were never applied: the ledger ends before that
/// number, verifies, and the same lines then append as that number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_names_the_sequence_number_to_look_for() {
    let Some(cs) = account() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let container = unique_container("clifail");
    let cli = |cs: Option<String>, args: &'static [&'static str], input: Option<&'static str>| {
        let (d, container) = (d.clone(), container.clone());
        tokio::task::spawn_blocking(move || run_via(cs.as_deref(), &d, &container, args, input))
    };
    ok(&cli(None, &["init"], None).await.unwrap());
    let three = concat!(
        r#"{"stream":"s","type":"T","payload":0}"#,
        "\n",
        r#"{"stream":"s","type":"T","payload":1}"#,
        "\n",
        r#"{"stream":"s","type":"T","payload":2}"#,
        "\n"
    );
    ok(&cli(None, &["append"], Some(three)).await.unwrap());

    let info = bi_ledger::backend::azure::ConnectionInfo::parse(&cs).unwrap();
    let blob = info.blob_endpoint.clone();
    let upstream = proxy::upstream_of(&blob);
    let faults = std::sync::Arc::new(proxy::Faults::default());
    faults.add("comp=appendblock", proxy::Fault::Unavailable, 1000);
    let port = proxy::start_proxy(upstream.clone(), faults.clone()).await;
    let via = cs.replace(&upstream, &format!("127.0.0.1:{port}"));
    assert_ne!(
        via, cs,
        "the blob endpoint {upstream} is in the connection string"
    );
    let two = concat!(
        r#"{"stream":"s","type":"T","payload":3}"#,
        "\n",
        r#"{"stream":"s","type":"T","payload":4}"#,
        "\n"
    );
    let o = cli(Some(via), &["append"], Some(two)).await.unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("appending lines 1 to 2: whether those were is not known"),
        "{err}"
    );
    assert!(err.contains("`bi-ledger read --from 3`"), "{err}");
    assert!(!err.contains("closing"), "the close adds nothing: {err}");
    assert!(o.stdout.is_empty(), "no receipt: {o:?}");
    assert!(
        faults.injected.load(std::sync::atomic::Ordering::Relaxed) > 1,
        "the write was retried before it failed"
    );

    assert!(lines(&ok(&cli(None, &["read", "--from", "3"], None)
        .await
        .unwrap()))
    .is_empty());
    let v = lines(&ok(&cli(None, &["verify"], None).await.unwrap()));
    assert_eq!(
        (v[0]["valid"].clone(), v[0]["records"].clone()),
        (true.into(), 3.into())
    );
    let again = lines(&ok(&cli(None, &["append"], Some(two)).await.unwrap()));
    let seqs: Vec<_> = again.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4]);
}

/// Something that is not the Blob service at the account URL (a web
/// server answering 404 to everything) is said to be that, not taken for
/// a missing container.
#[test]
fn a_404_without_an_azure_error_code_is_no_missing_container() {
    use bi_ledger::backend::azure::config::DEV_KEY;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut head);
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/devstoreaccount1");
    let o = Command::new(env!("CARGO_BIN_EXE_bi-ledger"))
        .args(["--backend", "azure", "--container", "ledgers", "--data"])
        .arg(dir.path())
        .args(["--account-url", &url, "stats"])
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .env_remove("AZURE_STORAGE_SAS_TOKEN")
        .env("AZURE_STORAGE_KEY", DEV_KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("does not exist"), "{err}");
    assert!(
        err.contains("HTTP 404") && err.contains("not an Azure Storage blob endpoint"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

/// A segment replaced by a block blob with the same bytes (only a hand
/// outside the ledger makes one) still reads and verifies, but a writer
/// cannot append to it, and says what the blob is instead of relaying a
/// bare `409 InvalidBlobType`. Nothing is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_replaced_by_a_block_blob_is_named() {
    use bi_ledger::backend::azure::{AzureBlobStore, AzureOptions, ConnectionInfo};
    use bi_ledger::backend::BlobStore;
    let Some(cs) = account() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let container = unique_container("cliblock");
    let cli = |args: &'static [&'static str], input: Option<&'static str>| {
        let (d, container) = (d.clone(), container.clone());
        tokio::task::spawn_blocking(move || run(&d, &container, args, input))
    };
    ok(&cli(&["init"], None).await.unwrap());
    let one = "{\"stream\":\"s\",\"type\":\"T\",\"payload\":0}\n";
    ok(&cli(&["append"], Some(one)).await.unwrap());
    let store = AzureBlobStore::new(
        ConnectionInfo::parse(&cs).unwrap(),
        &container,
        AzureOptions::default(),
    )
    .unwrap();
    let seg = "main/0000000000.seg";
    let bytes = store.read_all(seg).await.unwrap();
    store.delete(seg).await.unwrap();
    store.put(seg, &bytes).await.unwrap();

    let v = lines(&ok(&cli(&["verify"], None).await.unwrap()));
    assert_eq!(v[0]["records"], 1);
    let o = cli(&["append"], Some(one)).await.unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("409 InvalidBlobType") && err.contains("not an append blob"),
        "{err}"
    );
    assert_eq!(
        store.read_all(seg).await.unwrap(),
        bytes,
        "nothing appended"
    );
}

/// Ctrl-C during a write on Azure releases the writer's lease: a killed
/// writer's lease would refuse every other writer for up to 60 s, but one
/// interrupted this way closes first, and the next writer gets in at once.
#[test]
fn ctrl_c_releases_the_lease() {
    if account().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let container = unique_container("clictrlc");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_bi-ledger"));
    demo.args(["--backend", "azure", "--container", &container, "--data"])
        .arg(d)
        .args(["demo", "--stories", "100000000"])
        .env_remove("BI_LEDGER_LEDGER")
        .env_remove("BI_LEDGER_SIGNING_KEY");
    let (code, rest) =
        cli_support::demo_stopped_by(demo, std::time::Duration::from_millis(500), "-INT");
    assert_eq!(code, Some(130), "{rest}");
    assert!(
        rest.contains("interrupted (Ctrl-C): the demo appended"),
        "{rest}"
    );
    let one = "{\"stream\":\"after\",\"type\":\"T\",\"payload\":0}\n";
    let r = lines(&ok(&run(d, &container, &["append"], Some(one))));
    let v = lines(&ok(&run(d, &container, &["verify"], None)));
    assert_eq!(v[0]["records"], r[0]["seq"].as_u64().unwrap() + 1);
    assert_eq!(v[0]["unsigned_tail"], 0);
}
