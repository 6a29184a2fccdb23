//! What the relay shows the world, and what it keeps on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{path::Path, sync::Arc};

use common::*;
use rustls::pki_types::ServerName;
use tamizdat_wire::proto::RelayDescriptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTPS request over TLS pinned to the relay's certificate; returns the raw response.
async fn https(link: &str, request: &str) -> String {
    let d = RelayDescriptor::from_link(link).unwrap();
    let config: Arc<rustls::ClientConfig> = tamizdat_transport::tls::pinned_client_config(&d.cert_sha256).unwrap();
    let tcp = tokio::net::TcpStream::connect(&d.endpoints[0]).await.unwrap();
    let ip: std::net::SocketAddr = d.endpoints[0].parse().unwrap();
    let mut tls =
        tokio_rustls::TlsConnector::from(config).connect(ServerName::IpAddress(ip.ip().into()), tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    // Read until the server closes, or stops sending (an upgrade refusal keeps the
    // connection alive like any keep-alive 404).
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(700), tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).to_string()
}

fn get(path: &str, extra: &str) -> String {
    let connection = if extra.is_empty() { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0\r\n{extra}{connection}\r\n")
}

/// Status line and body: what a prober can compare (Date differs by the second).
fn shape(response: &str) -> (String, String) {
    let status = response.lines().next().unwrap_or("").to_string();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "current_thread")]
async fn probes_see_an_ordinary_web_site() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), None);
    let home = https(&relay.link, &get("/", "")).await;
    assert!(home.starts_with("HTTP/1.1 200 OK\r\n"), "{home}");
    assert!(home.contains("\r\nServer: nginx\r\n") && home.contains("Content-Type: text/html"));
    assert!(home.contains("<!DOCTYPE html>") && home.contains("Field notes"));
    assert!(!home.to_lowercase().contains("tamizdat"));

    let missing = shape(&https(&relay.link, &get("/wp-login.php", "")).await);
    assert_eq!(missing.0, "HTTP/1.1 404 Not Found");
    assert!(missing.1.contains("<center>nginx</center>"));

    // The door path without an upgrade, a WebSocket upgrade on a wrong path, and a guessed
    // door all look exactly like any missing page.
    let d = RelayDescriptor::from_link(&relay.link).unwrap();
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_string();
    for (path, extra) in [
        (d.door_path(), String::new()),
        ("/static/AAAAAAAAAAAAAAAAAAAAAA".to_string(), upgrade.clone()),
        ("/".to_string() + "chat", upgrade.clone()),
    ] {
        assert_eq!(shape(&https(&relay.link, &get(&path, &extra)).await), missing, "{path}");
    }
    // Non-GET methods and malformed requests get nginx's answers.
    let post = shape(
        &https(&relay.link, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await,
    );
    assert_eq!(post.0, "HTTP/1.1 405 Not Allowed");
    let bad = shape(&https(&relay.link, "\x01\x02 garbage\r\n\r\n").await);
    assert_eq!(bad.0, "HTTP/1.1 400 Bad Request");

    // What nginx does with the usual probes: queries and doubled slashes find the page,
    // conditional requests get 304, HTTP/1.1 without Host is refused, Connection: close is
    // honoured, and plain HTTP on the TLS port gets nginx's own complaint.
    for path in ["/?utm=1", "//about.html", "/style.css?v=2"] {
        assert!(https(&relay.link, &get(path, "")).await.starts_with("HTTP/1.1 200 OK\r\n"), "{path}");
    }
    let etag = home.lines().find_map(|l| l.strip_prefix("ETag: ")).unwrap().to_string();
    let cached = https(&relay.link, &get("/", &format!("If-None-Match: {etag}\r\n"))).await;
    assert!(cached.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{cached}");
    let no_host = https(&relay.link, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{no_host}");
    assert!(home.contains("\r\nConnection: close\r\n"), "the answer to a closing request says so");
    let plain = {
        let mut s = tokio::net::TcpStream::connect(&relay.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).to_string()
    };
    assert!(plain.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{plain}");
    assert!(plain.contains("The plain HTTP request was sent to HTTPS port"));
    // A POST with a body on a kept-alive connection: one answer, no stray 400 for the body.
    let post = https(&relay.link, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(post.matches("HTTP/1.1 ").count(), 2, "{post}");
    assert!(!post.contains("400 Bad Request"));
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn nothing_readable_at_rest_on_relay_or_clients() {
    let root = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(&root.path().join("relay"), None);
    let (alice, bob) = pair(root.path(), &relay, "Zoryana Leafcutter", "Quokka Bystrov");
    let secrets = ["Meet at the birch grove 7pm", "Пароль: серебряная лиса", "bring the samizdat copies"];
    alice.ok(&["send", "Quokka Bystrov", secrets[0]]);
    bob.ok(&["sync"]);
    bob.ok(&["send", "Zoryana Leafcutter", secrets[1]]);
    // An undelivered message sits in the relay: Bob does not sync this one.
    alice.ok(&["sync"]);
    alice.ok(&["send", "Quokka Bystrov", secrets[2]]);
    relay.kill(); // whatever is on disk now, including the WAL
    let needles: Vec<&str> =
        secrets.iter().copied().chain(["Zoryana Leafcutter", "Quokka Bystrov", "Zoryana", "Quokka"]).collect();
    let mut checked = 0;
    for dir in [root.path().join("relay"), alice.home.clone(), bob.home.clone()] {
        for file in files_under(&dir) {
            let bytes = std::fs::read(&file).unwrap();
            checked += bytes.len();
            for needle in &needles {
                assert!(!contains(&bytes, needle.as_bytes()), "{needle:?} found in {}", file.display());
            }
        }
    }
    assert!(checked > 10_000, "the scan read the stores ({checked} bytes)");
    // And the undelivered message is really there to be found by its owner later.
    relay.restart();
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("Zoryana Leafcutter"), vec![secrets[0], secrets[1], secrets[2]]);
}
