//! Durable relayed messages through a relay: writers append to conversation logs over the
//! real carrier, every other member of the conversation receives them (the entry inside its
//! notice, or a read) and acknowledges, the way a client does.

use std::time::{Duration, Instant};

use anyhow::bail;
use ed25519_dalek::SigningKey;
use prost::Message;
use tamizdat_client::relay::RelayClient;
use tamizdat_wire::{
    frame,
    proto::{
        AckLog, Append, ClientFrame, Command as WireCommand, CreateLog, Op, ReadLog, RelayDescriptor, Reply,
        ServerFrame, Subscribe,
    },
};
use tokio::sync::watch;

use crate::{
    relay_proc::{RelayProcess, Usage, loopback_bytes},
    stats::{Received, RelayLatency, Throughput, histogram_quantile, received, stamp},
};

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Conversations; each has one writer.
    pub conversations: usize,
    /// Members per conversation: the writer and `group_size - 1` readers (2 is one-to-one).
    pub group_size: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Appends in flight per writer.
    pub window: usize,
    /// Target appends per second over all writers; 0 is as fast as possible.
    pub rate: u64,
    /// How long writers send.
    pub seconds: f64,
    /// Readers subscribe with entries inside notices (as clients do); without, every message
    /// costs a read.
    pub pushed_entries: bool,
}

impl Spec {
    /// When writer number `writer` sends first, and how far apart its messages follow (none
    /// when writers send as fast as possible, from `start`). Paced writers' first sends are
    /// spread evenly over one interval, as independent clients' would fall, so the server sees
    /// a steady stream rather than every writer sending at the same instant.
    pub fn pacing(&self, writer: usize, start: Instant) -> (Instant, Option<Duration>) {
        if self.rate == 0 {
            return (start, None);
        }
        let interval = Duration::from_secs_f64(self.conversations as f64 / self.rate as f64);
        let phase = interval.mul_f64(writer as f64 / self.conversations.max(1) as f64);
        (start + phase, Some(interval))
    }
}

/// An MLS PrivateMessage-shaped application message of `size` bytes (the relay reads its
/// header), ending with the send time.
fn mls_payload(size: usize, start: Instant) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, 16];
    m.extend_from_slice(&[7; 16]);
    m.extend_from_slice(&0u64.to_be_bytes());
    m.push(1);
    m.resize(size.max(m.len() + 8), 0x5a);
    stamp(&mut m, start);
    m
}

struct Conversation {
    log_id: Vec<u8>,
    /// The writer's connection, opened before the clock starts, like the readers'.
    writer: RelayClient,
    /// Each reader's connection and cursor.
    readers: Vec<(RelayClient, Vec<u8>)>,
}

/// Runs `spec` against `relay` and measures it.
pub async fn run(relay: &RelayProcess, spec: &Spec) -> anyhow::Result<Throughput> {
    let d = RelayDescriptor::from_link(&relay.link)?;
    let mut conversations = Vec::new();
    for _ in 0..spec.conversations {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        // The writer creates its conversation's log on the connection it will write on.
        let mut writer = RelayClient::connect(&d).await?;
        let Reply::LogCreated(l) = writer
            .call(Op::CreateLog(CreateLog { log_key: key.verifying_key().to_bytes().to_vec() }), Some(&key))
            .await?
        else {
            bail!("no log");
        };
        let mut readers = Vec::new();
        for _ in 1..spec.group_size.max(2) {
            let mut r = RelayClient::connect(&d).await?;
            let sub = Subscribe { log_id: l.log_id.clone(), read_id: vec![], entries: spec.pushed_entries };
            r.subscribe(sub, &key).await?;
            // A member's cursor exists from the start, as a joining client registers it: the
            // relay deletes entries every registered cursor has passed.
            let cursor_id = rand::random::<[u8; 16]>().to_vec();
            let register = AckLog { log_id: l.log_id.clone(), cursor_id: cursor_id.clone(), up_to: 0 };
            r.call(Op::AckLog(register), Some(&key)).await?;
            readers.push((r, cursor_id));
        }
        conversations.push(Conversation { log_id: l.log_id, writer, readers });
    }
    let (before, lo_before, counters_before) = (relay.usage(), loopback_bytes(), relay.counters());
    let start = Instant::now();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, c) in conversations.into_iter().enumerate() {
        let (done_tx, done_rx) = watch::channel(None);
        for (r, cursor_id) in c.readers {
            readers.push(tokio::spawn(reader(r, c.log_id.clone(), cursor_id, done_rx.clone(), start)));
        }
        writers.push(tokio::spawn(writer(c.writer, c.log_id, spec.clone(), i, start, done_tx)));
    }
    let mut sent = 0;
    let mut peak_rss = 0;
    for w in writers {
        sent += w.await??;
        peak_rss = peak_rss.max(relay.usage().rss_kib);
    }
    let mut copies = Vec::new();
    for r in readers {
        copies.extend(r.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = relay.usage();
    let counters = relay.counters();
    let delta = |k: &str| counters.get(k).copied().unwrap_or(0.0) - counters_before.get(k).copied().unwrap_or(0.0);
    let batches = delta("write_batches_total");
    let ms = |name: &str, q: f64| histogram_quantile(&counters_before, &counters, name, q).map(|s| s * 1e3);
    Ok(Throughput::new(
        sent,
        &copies,
        start,
        elapsed,
        before.cpu_percent(after, elapsed),
        Usage { rss_kib: after.rss_kib.max(peak_rss), ..after },
        loopback_bytes().saturating_sub(lo_before),
    )
    .with_batches(batches / elapsed, if batches > 0.0 { delta("write_batch_items_total") / batches } else { 0.0 })
    .with_relay_latency(RelayLatency {
        write_ms_p99: ms("write_seconds", 0.99),
        notice_ms_p99: ms("notice_seconds", 0.99),
        commit_ms_max: ms("commit_seconds", 1.0),
        checkpoint_ms_max: ms("checkpoint_seconds", 1.0),
    }))
}

/// Writer number `index` appends as fast as allowed ([`Spec::pacing`]), `window` in flight,
/// for the run's seconds from `start`; returns how many were acknowledged and tells the
/// readers the last sequence number.
async fn writer(
    rc: RelayClient,
    log_id: Vec<u8>,
    spec: Spec,
    index: usize,
    start: Instant,
    done: watch::Sender<Option<u64>>,
) -> anyhow::Result<usize> {
    // Creating the log proved its key for this session: appends go unsigned.
    let (mut conn, _nonce, mut next_id) = rc.into_parts();
    let deadline = start + Duration::from_secs_f64(spec.seconds);
    let (mut next_send, interval) = spec.pacing(index, start);
    let (mut in_flight, mut acked, mut last_seq, mut counter) = (0usize, 0usize, 0u64, 0u64);
    loop {
        let open = Instant::now() < deadline;
        while open && in_flight < spec.window && interval.is_none_or(|_| Instant::now() >= next_send) {
            counter += 1;
            let mut dedup = counter.to_be_bytes().to_vec();
            dedup.extend_from_slice(&rand::random::<u64>().to_be_bytes());
            let op = Op::Append(Append {
                log_id: log_id.clone(),
                dedup_id: dedup,
                payload: mls_payload(spec.payload, start),
            });
            let command = WireCommand { op: Some(op) }.encode_to_vec();
            conn.send(frame::encode(&ClientFrame { request_id: next_id, command, signature: Vec::new() })?).await?;
            next_id += 1;
            in_flight += 1;
            if let Some(i) = interval {
                next_send += i;
            }
        }
        if in_flight == 0 {
            if !open {
                break;
            }
            tokio::time::sleep_until(next_send.into()).await;
            continue;
        }
        let wait = if interval.is_some() && open { Some(next_send) } else { None };
        let reply = match wait {
            Some(t) => match tokio::time::timeout_at(t.into(), conn.recv()).await {
                Ok(r) => r?,
                Err(_) => continue,
            },
            None => conn.recv().await?,
        };
        let f: ServerFrame = frame::decode(&reply)?;
        match f.reply {
            Some(Reply::Appended(a)) => {
                in_flight -= 1;
                acked += 1;
                last_seq = last_seq.max(a.seq);
            }
            other => bail!("append refused: {other:?}"),
        }
    }
    let _ = done.send(Some(last_seq));
    conn.close().await;
    Ok(acked)
}

/// Takes each message from its notice when the relay pushed it there and it follows the last
/// one held, and reads (`ReadLog`) otherwise; acknowledges what it holds with one `AckLog` in
/// flight at a time, without waiting for it before taking the next message, as a client that
/// stores first and acknowledges after does. Returns each message's send time and latency;
/// stops once it has everything the writer stored.
async fn reader(
    rc: RelayClient,
    log_id: Vec<u8>,
    cursor_id: Vec<u8>,
    mut done: watch::Receiver<Option<u64>>,
    start: Instant,
) -> anyhow::Result<Vec<Received>> {
    // The subscription proved the log's key for this session: later requests go unsigned.
    let (mut conn, _nonce, mut next_id) = rc.into_parts();
    let mut copies = Vec::new();
    // Held up to `last`; the relay announced up to `announced`; acknowledged up to `acked`.
    let (mut last, mut announced, mut acked) = (0u64, 0u64, 0u64);
    let (mut reading, mut acking, mut writer_running) = (false, false, true);
    let mut request = |op: Op| -> anyhow::Result<Vec<u8>> {
        let command = WireCommand { op: Some(op) }.encode_to_vec();
        let bytes = frame::encode(&ClientFrame { request_id: next_id, command, signature: Vec::new() })?;
        next_id += 1;
        Ok(bytes)
    };
    loop {
        let final_seq = *done.borrow();
        if final_seq.is_some_and(|f| last >= f) {
            break;
        }
        if !reading && last < announced.max(final_seq.unwrap_or(0)) {
            let read = ReadLog { log_id: log_id.clone(), after: last, limit: 256, max_bytes: 0 };
            conn.send(request(Op::ReadLog(read))?).await?;
            reading = true;
        }
        if !acking && acked < last {
            let ack = AckLog { log_id: log_id.clone(), cursor_id: cursor_id.clone(), up_to: last };
            conn.send(request(Op::AckLog(ack))?).await?;
            (acking, acked) = (true, last);
        }
        let bytes = tokio::select! {
            bytes = conn.recv() => bytes?,
            // The writer finished: its last sequence number is in `done` (read at the top).
            changed = done.changed(), if writer_running => {
                writer_running = changed.is_ok();
                continue;
            }
        };
        let f: ServerFrame = frame::decode(&bytes)?;
        let now = Instant::now();
        match f.reply {
            Some(Reply::Notify(n)) => {
                // Sequence 0 is "notices were lost, look again": read past what is held.
                announced = announced.max(if n.seq == 0 { last + 1 } else { n.seq });
                match n.entry {
                    Some(e) if !reading && e.seq == last + 1 => {
                        copies.push(received(&e.payload, start, now));
                        last = e.seq;
                    }
                    _ => {}
                }
            }
            Some(Reply::Entries(e)) => {
                reading = false;
                for entry in &e.entries {
                    if entry.seq > last {
                        copies.push(received(&entry.payload, start, now));
                        last = entry.seq;
                    }
                }
                if e.more {
                    announced = announced.max(last + 1);
                }
            }
            Some(Reply::Done(_)) => acking = false,
            other => bail!("reader: unexpected reply {other:?}"),
        }
    }
    conn.close().await;
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(conversations: usize, rate: u64) -> Spec {
        Spec { conversations, group_size: 2, payload: 256, window: 32, rate, seconds: 1.0, pushed_entries: true }
    }

    #[test]
    fn paced_writers_start_spread_over_one_interval() {
        let start = Instant::now();
        let s = spec(64, 20_000);
        let interval = Duration::from_micros(3_200);
        let firsts: Vec<Duration> = (0..64)
            .map(|w| {
                let (first, every) = s.pacing(w, start);
                assert_eq!(every, Some(interval));
                first - start
            })
            .collect();
        assert_eq!(firsts[0], Duration::ZERO);
        assert_eq!(firsts[32], interval / 2);
        // Evenly apart (to a microsecond of rounding), all within the first interval.
        for pair in firsts.windows(2) {
            assert!((pair[1] - pair[0]).abs_diff(Duration::from_micros(50)) <= Duration::from_micros(1), "{pair:?}");
        }
        assert!(firsts[63] < interval);
    }

    #[test]
    fn writers_at_full_speed_have_no_pacing() {
        let start = Instant::now();
        assert_eq!(spec(64, 0).pacing(3, start), (start, None));
    }
}
