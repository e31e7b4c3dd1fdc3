//! A small fault-injecting HTTP/1.1 proxy on loopback, between an Azure
//! client and Azurite: it answers 503 instead of forwarding, forwards and
//! then drops the answer or cuts it short, or holds the request and
//! forwards it when the test says, for requests whose head matches a
//! pattern.
//! Shared by the Azure test files (declare it as `#[path =
//! "support/proxy.rs"] mod proxy;`). It speaks plain HTTP only, so it
//! works with Azurite, not with a real account.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use azure_core::http::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to requests whose head contains a pattern.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Answer 503 Service Unavailable without forwarding.
    Unavailable,
    /// Forward, let the service act on it, then drop the connection
    /// without relaying the answer: the client cannot know the outcome.
    DropAfterForward,
    /// Hold the request until the test calls [`Faults::release`], then
    /// forward it (and relay the answer, if the client still waits): with
    /// a client read timeout, a request that reaches the service after the
    /// client's retry of it, as one stuck in a network or a front end can.
    Hold,
    /// Forward, then relay the answer's head and only part of its body
    /// before closing the connection: a body that breaks off.
    CutAnswer,
}

#[derive(Default)]
pub struct Faults {
    /// (substring of the request head, fault, how many more times)
    pub rules: Mutex<Vec<(String, Fault, usize)>>,
    pub injected: AtomicUsize,
    pub requests: AtomicUsize,
    /// Whether held requests may go on (see [`Fault::Hold`]).
    pub released: std::sync::atomic::AtomicBool,
    /// Held requests that reached the service once released.
    pub held_forwarded: AtomicUsize,
}

impl Faults {
    pub fn add(&self, pattern: &str, fault: Fault, times: usize) {
        self.rules
            .lock()
            .unwrap()
            .push((pattern.to_owned(), fault, times));
    }

    /// Lets every held request go on (see [`Fault::Hold`]), and waits
    /// until `n` of them have reached the service and been answered.
    pub async fn release(&self, n: usize) {
        self.released.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.held_forwarded.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "held requests did not reach the service"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn take(&self, head: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules
            .iter_mut()
            .find(|(p, _, n)| *n > 0 && head.contains(p.as_str()))?;
        rule.2 -= 1;
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(rule.1)
    }
}

/// A small HTTP/1.1 proxy on loopback: one request per connection (it
/// answers `Connection: close`), forwarded to `upstream` unless a fault
/// rule matches. Stops when the test's runtime ends.
pub async fn start_proxy(upstream: String, faults: Arc<Faults>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (upstream, faults) = (upstream.clone(), faults.clone());
            tokio::spawn(async move {
                let _ = proxy_one(client, &upstream, &faults).await;
            });
        }
    });
    port
}

async fn proxy_one(mut client: TcpStream, upstream: &str, faults: &Faults) -> std::io::Result<()> {
    // Read the head, then exactly Content-Length bytes of body.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let body_len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + body_len {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    faults.requests.fetch_add(1, Ordering::Relaxed);
    let fault = faults.take(&head);
    if fault == Some(Fault::Unavailable) {
        client
            .write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nx-ms-error-code: ServerBusy\r\n\r\n",
            )
            .await?;
        return client.shutdown().await;
    }
    if fault == Some(Fault::Hold) {
        while !faults.released.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    // Ask the service to close after answering, so its answer ends at EOF.
    let mut forwarded = String::new();
    for line in head[..head_end - 4].split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(forwarded.as_bytes()).await?;
    up.write_all(&buf[head_end..head_end + body_len]).await?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await?;
    if fault == Some(Fault::Hold) {
        faults.held_forwarded.fetch_add(1, Ordering::SeqCst);
    }
    if fault == Some(Fault::DropAfterForward) {
        // The service acted; the client hears nothing.
        drop(client);
        return Ok(());
    }
    if fault == Some(Fault::CutAnswer) {
        let body_at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| i + 4);
        let keep = body_at + (answer.len() - body_at) / 2;
        client.write_all(&answer[..keep]).await?;
        drop(client);
        return Ok(());
    }
    client.write_all(&answer).await?;
    client.shutdown().await
}

/// `host:port` of a plain-HTTP service endpoint, for [`start_proxy`].
pub fn upstream_of(endpoint: &Url) -> String {
    assert_eq!(
        endpoint.scheme(),
        "http",
        "the fault proxy speaks plain HTTP (Azurite)"
    );
    format!(
        "{}:{}",
        endpoint.host_str().unwrap(),
        endpoint.port_or_known_default().unwrap()
    )
}
