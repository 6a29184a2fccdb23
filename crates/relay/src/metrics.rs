//! Counters and two gauges for operators, exported in Prometheus text format on a separate
//! admin listener. They count events and open connections, nothing else: no queue or log id, no address, no label that could
//! link people.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::RelayError;

macro_rules! counters {
    ($($name:ident: $kind:literal, $help:literal;)*) => {
        /// The relay's counters.
        #[derive(Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Prometheus text exposition of every counter.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    out.push_str(concat!("# HELP tamizdat_", stringify!($name), " ", $help, "\n"));
                    out.push_str(concat!("# TYPE tamizdat_", stringify!($name), " ", $kind, "\n"));
                    out.push_str(&format!(concat!("tamizdat_", stringify!($name), " {}\n"), self.$name.load(Relaxed)));
                )*
                out
            }
        }
    };
}

counters! {
    connections_total: "counter", "TCP connections accepted.";
    connections_refused_total: "counter", "TCP connections dropped by per-address limits.";
    connections_open: "gauge", "TCP connections open now.";
    sessions_total: "counter", "Protocol sessions opened through the door.";
    sessions_open: "gauge", "Protocol sessions open now.";
    cover_connections_total: "counter", "Connections that saw only the cover site.";
    requests_total: "counter", "Protocol requests handled.";
    refusals_total: "counter", "Protocol requests refused (any error code).";
    rate_limited_total: "counter", "Requests refused for exceeding a connection's request rate.";
    malformed_frames_total: "counter", "Connections closed for a malformed frame.";
    appends_total: "counter", "Log entries stored.";
    queue_messages_total: "counter", "Queue messages stored.";
    stale_commits_total: "counter", "Commits refused because their epoch was taken.";
    notices_pushed_total: "counter", "Notices pushed to subscribed clients.";
    write_batches_total: "counter", "Group-commit transactions.";
    write_batch_items_total: "counter", "Writes committed in those transactions.";
    blobs_created_total: "counter", "Blobs created.";
    blob_bytes_received_total: "counter", "Blob bytes received in PutBlob requests (retries included).";
    blob_bytes_served_total: "counter", "Blob bytes sent in GetBlob replies.";
}

impl Metrics {
    /// Adds one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Subtracts one (gauges).
    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Relaxed);
    }
}

/// The process-wide counters.
pub fn global() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Serves `GET /metrics` on the admin address (keep it on loopback or a private network).
pub async fn serve_admin(addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>, RelayError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| RelayError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /metrics ") {
                    ("200 OK", global().render())
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    }))
}
