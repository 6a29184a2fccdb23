//! The reference: NATS JetStream driven with the same conversations, payloads, window and
//! fan-out. One stream with file storage and interest retention (a message is kept until
//! every consumer acknowledged it, as a Tamizdat log keeps an entry until every cursor passed
//! it); publishes wait for the server's acknowledgement; each reader is a durable pull
//! consumer with explicit acknowledgements.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
    stream::{RetentionPolicy, StorageType},
};
use futures_util::{FutureExt, StreamExt};

use crate::{
    load::Spec,
    relay_proc::{Usage, loopback_bytes},
    stats::{Throughput, received, stamp},
};

/// The JetStream server's process id, found by its listening port in its command line.
pub fn server_pid(port: u16) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nats = args.first().is_some_and(|a| a.ends_with(b"nats-server"));
        let port = port.to_string();
        (is_nats && args.windows(2).any(|w| w[0] == b"-p" && w[1] == port.as_bytes())).then_some(pid)
    })
}

/// Runs `spec` against the JetStream server at `url` (its process is `pid`).
pub async fn run(url: &str, pid: u32, spec: &Spec) -> anyhow::Result<Throughput> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
    let js = jetstream::new(client.clone());
    let name = format!("TZBENCH{}", rand::random::<u32>());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            storage: StorageType::File,
            retention: RetentionPolicy::Interest,
            ..Default::default()
        })
        .await
        .context("creating the JetStream stream")?;
    let mut consumers = Vec::new();
    let expected: Vec<Arc<AtomicUsize>> =
        (0..spec.conversations).map(|_| Arc::new(AtomicUsize::new(usize::MAX))).collect();
    for (c, expected) in expected.iter().enumerate() {
        for r in 1..spec.group_size.max(2) {
            let consumer = stream
                .create_consumer(pull::Config {
                    durable_name: Some(format!("c{c}r{r}")),
                    filter_subject: format!("{name}.{c}"),
                    ack_policy: AckPolicy::Explicit,
                    max_ack_pending: 100_000,
                    ..Default::default()
                })
                .await
                .context("creating a consumer")?;
            // Pulling starts before the clock, as the Tamizdat readers subscribe before it: the
            // stream sends its first pull request when it is first polled.
            let mut messages = consumer.messages().await.context("starting a consumer's pulls")?;
            match messages.next().now_or_never() {
                None => {}
                Some(Some(Err(e))) => anyhow::bail!("starting a consumer's pulls: {e}"),
                Some(_) => anyhow::bail!("a JetStream consumer ended or had a message before any was published"),
            }
            consumers.push((messages, expected.clone()));
        }
    }
    // Time for those pull requests to reach the server.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (before, lo_before) = (Usage::of(pid), loopback_bytes());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(spec.seconds);
    let mut readers = Vec::new();
    for (mut messages, expected) in consumers {
        readers.push(tokio::spawn(async move {
            let mut copies = Vec::new();
            let mut got = 0usize;
            loop {
                let want = expected.load(Ordering::Acquire);
                if got >= want {
                    break;
                }
                let next = tokio::time::timeout(Duration::from_millis(200), messages.next()).await;
                let Ok(Some(m)) = next else { continue };
                let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
                copies.push(received(&m.payload, start, Instant::now()));
                got += 1;
                m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(copies)
        }));
    }
    let mut writers = Vec::new();
    for c in 0..spec.conversations {
        let (js, spec, subject) = (js.clone(), spec.clone(), format!("{name}.{c}"));
        writers.push(tokio::spawn(async move {
            let (mut next_send, interval) = spec.pacing(c, start);
            let mut acks = tokio::task::JoinSet::new();
            let mut acked = 0usize;
            loop {
                let open = Instant::now() < deadline;
                loop {
                    let in_flight = acks.len();
                    if !(open && in_flight < spec.window && interval.is_none_or(|_| Instant::now() >= next_send)) {
                        break;
                    }
                    let mut payload = vec![0x5a; spec.payload.max(8)];
                    stamp(&mut payload, start);
                    acks.spawn(std::future::IntoFuture::into_future(
                        js.publish(subject.clone(), payload.into()).await?,
                    ));
                    if let Some(i) = interval {
                        next_send += i;
                    }
                }
                if acks.is_empty() {
                    if !open {
                        break;
                    }
                    tokio::time::sleep_until(next_send.into()).await;
                    continue;
                }
                let ack = match (interval, open) {
                    (Some(_), true) => match tokio::time::timeout_at(next_send.into(), acks.join_next()).await {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ => acks.join_next().await,
                };
                if let Some(a) = ack {
                    a??;
                    acked += 1;
                }
            }
            anyhow::Ok(acked)
        }));
    }
    let mut sent = 0;
    for (w, expected) in writers.into_iter().zip(&expected) {
        let n = w.await??;
        // Its readers stop once they have everything the writer had acknowledged.
        expected.store(n, Ordering::Release);
        sent += n;
    }
    let mut copies = Vec::new();
    for r in readers {
        match tokio::time::timeout(Duration::from_secs(30), r).await {
            Ok(done) => copies.extend(done??),
            Err(_) => anyhow::bail!("a JetStream consumer did not receive everything within 30 s"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = Usage::of(pid);
    let result = Throughput::new(
        sent,
        &copies,
        start,
        elapsed,
        before.cpu_percent(after, elapsed),
        after,
        loopback_bytes().saturating_sub(lo_before),
    );
    let _ = js.delete_stream(&name).await;
    Ok(result)
}
