//! One client connection: version negotiation, then request/reply. Every check that can
//! refuse a request (size, ids, signature) runs before any storage work.

use std::{
    collections::HashSet,
    future::{Future, ready},
    pin::Pin,
    time::Duration,
};

use futures_util::{FutureExt, StreamExt, stream::FuturesOrdered};
use std::sync::atomic::Ordering::Relaxed;

use prost::Message;
use rand::RngCore;
use tamizdat_transport::server::{ServerWs, recv_frame, send_frames};
use tamizdat_wire::{
    Capability, frame,
    limits::{self, ID_LEN, KEY_LEN, MAX_BLOB_PIECE, MAX_COMMIT_PAYLOAD, MAX_PAYLOAD},
    mls::{ContentType, peek_header},
    proto::{
        Appended, BlobCreated, BlobData, BlobStored, ClientFrame, Command, Done, Entries, Error, ErrorCode, HelloOk,
        LogCreated, Notify, Op, QueueCreated, Reply, ServerFrame,
    },
    verify_auth,
};

use crate::{
    current_hour,
    hub::Listener,
    limits::{Bucket, Limits},
    metrics::{self, Metrics},
    store::{Commit, Outcome, Store, Write},
};

/// A connection with no complete request for this long is closed.
const IDLE: Duration = Duration::from_secs(300);
/// A connection refused this many times in a row for its request rate is closed.
const MAX_LIMITED_IN_A_ROW: u32 = 1000;
/// The same for a connection that waits for notices (clients resync well within this).
const IDLE_SUBSCRIBED: Duration = Duration::from_secs(900);

struct Session {
    store: Store,
    nonce: Vec<u8>,
    greeted: bool,
    /// Created at the first subscription.
    listener: Option<Listener>,
    /// Logs, queues and blobs whose key this session has proven.
    proven: HashSet<Vec<u8>>,
    /// Largest blob this relay takes.
    max_blob_bytes: u64,
    /// Blobs this session may still create.
    blobs_left: u32,
}

/// A refusal: its code, its message, and whether the connection ends with it.
struct Refusal {
    code: ErrorCode,
    message: &'static str,
    epoch: u64,
    fatal: bool,
}

fn refuse(code: ErrorCode, message: &'static str) -> Refusal {
    Refusal { code, message, epoch: 0, fatal: false }
}

/// A write handed to the store in request order, answered once its batch is durable.
type Committing = Pin<Box<dyn Future<Output = Result<Reply, Refusal>> + Send>>;

/// Encoded replies in request order, each ready once its write is durable.
type Replies = FuturesOrdered<Pin<Box<dyn Future<Output = Vec<u8>> + Send>>>;

/// What handling one request gave: its reply now, or a write still committing.
enum Handled {
    Now(Reply),
    Later(Committing),
}

/// Writes one session may have committing at once. A client that pipelines gets its replies
/// in request order; past this many, the session stops reading until some are answered.
const MAX_PIPELINE: usize = 64;

/// Runs a session until the client leaves, idles out or breaks the protocol. Replies go out
/// in request order; writes from one session commit in that order too, several per batch.
/// Between replies, notices for subscribed logs and queues are pushed.
///
/// The stream stays boxed: an async fn's arguments are kept in its state as well as its
/// locals, so a stream passed by value would sit twice in every idle session's task.
pub async fn run(mut ws: Box<ServerWs>, store: Store, limits: &Limits) {
    let m = metrics::global();
    let mut bucket = Bucket::new(limits.requests_per_second, limits.requests_burst);
    let mut limited_in_a_row = 0u32;
    let mut nonce = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut session = Session {
        store,
        nonce,
        greeted: false,
        listener: None,
        proven: HashSet::new(),
        max_blob_bytes: limits.max_blob_bytes,
        blobs_left: limits.blobs_per_connection,
    };
    let mut committing = Replies::new();
    // The idle clock runs from the last request, whatever notices pass in between.
    let mut last_request = tokio::time::Instant::now();
    loop {
        let idle = if session.listener.is_none() { IDLE } else { IDLE_SUBSCRIBED };
        let bytes = tokio::select! {
            biased;
            // Whichever wakes the session, everything else ready (replies, then notices) leaves
            // in the same flush: one TLS write instead of one per kind.
            Some(first) = committing.next(), if !committing.is_empty() => {
                let mut out = vec![first];
                take_ready_replies(&mut committing, &mut out);
                if let Some(notices) = next_notices(&mut session.listener).now_or_never() {
                    push_notices(notices, &mut out);
                }
                if !send_within(&mut ws, out).await {
                    return;
                }
                continue;
            }
            notices = next_notices(&mut session.listener) => {
                let mut out = Vec::new();
                take_ready_replies(&mut committing, &mut out);
                push_notices(notices, &mut out);
                if !send_within(&mut ws, out).await {
                    return;
                }
                continue;
            }
            incoming = tokio::time::timeout_at(last_request + idle, recv_frame(&mut ws)), if committing.len() < MAX_PIPELINE => match incoming {
                Ok(Ok(Some(b))) => {
                    last_request = tokio::time::Instant::now();
                    b
                }
                _ => break,
            },
        };
        let (request_id, handled) = match frame::decode::<ClientFrame>(&bytes) {
            Ok(cf) if !bucket.take(std::time::Instant::now()) => {
                // Over the request rate: refused before any signature check or storage work;
                // a client that keeps pushing is disconnected.
                Metrics::inc(&m.rate_limited_total);
                limited_in_a_row += 1;
                let fatal = limited_in_a_row >= MAX_LIMITED_IN_A_ROW;
                (cf.request_id, Err(Refusal { fatal, ..refuse(ErrorCode::RateLimited, "slow down") }))
            }
            Ok(cf) => {
                limited_in_a_row = 0;
                Metrics::inc(&m.requests_total);
                match Command::decode(cf.command.as_slice()) {
                    Ok(Command { op: Some(op) }) => {
                        // Anything but a write waits for this session's earlier writes, so a
                        // read sees them.
                        if !is_write(&op) && !drain(&mut ws, &mut committing).await {
                            return;
                        }
                        // Boxed: the largest request's state would otherwise sit in every
                        // idle session's task (measured: 2,048 bytes of task instead of 1,424).
                        (cf.request_id, Box::pin(session.handle(&cf, op)).await)
                    }
                    Ok(Command { op: None }) => {
                        let fatal = !session.greeted;
                        (cf.request_id, Err(Refusal { fatal, ..refuse(ErrorCode::BadRequest, "empty command") }))
                    }
                    Err(_) => (
                        cf.request_id,
                        Err(Refusal { fatal: true, ..refuse(ErrorCode::BadRequest, "undecodable command") }),
                    ),
                }
            }
            Err(_) => {
                Metrics::inc(&m.malformed_frames_total);
                (0, Err(Refusal { fatal: true, ..refuse(ErrorCode::BadRequest, "malformed frame") }))
            }
        };
        // Every reply takes its place in line; the loop sends it as soon as it and everything
        // before it are ready.
        match handled {
            Ok(Handled::Later(commit)) => {
                committing.push_back(Box::pin(async move { reply_frame(request_id, commit.await) }));
            }
            Ok(Handled::Now(reply)) => committing.push_back(Box::pin(ready(reply_frame(request_id, Ok(reply))))),
            Err(r) if r.fatal => {
                // Earlier replies first, then the one that ends the session.
                let out = reply_frame(request_id, Err(r));
                let _ = drain(&mut ws, &mut committing).await && send_within(&mut ws, vec![out]).await;
                break;
            }
            Err(r) => committing.push_back(Box::pin(ready(reply_frame(request_id, Err(r))))),
        }
    }
    let _ = ws.close(None).await;
}

/// Writes are pipelined; everything else is answered after the session's earlier writes.
fn is_write(op: &Op) -> bool {
    matches!(op, Op::Append(_) | Op::SendToQueue(_) | Op::AckLog(_) | Op::AckQueue(_))
}

/// Moves the replies at the head of the line that are already durable into `out`, in order.
///
/// Polled outside tokio's cooperative budget: a task that has used its budget sees even a
/// ready reply as pending, and a notice would then leave before the reply to its own write,
/// which a notice may never do on the connection that made the write (protocol §8). The
/// writer answers a batch before it announces it, so a reply is ready by the time its
/// notice arrives.
fn take_ready_replies(committing: &mut Replies, out: &mut Vec<Vec<u8>>) {
    while let Some(Some(reply)) = tokio::task::unconstrained(committing.next()).now_or_never() {
        out.push(reply);
    }
}

/// Encodes notices as frames into `out`.
fn push_notices(notices: Vec<crate::store::Notice>, out: &mut Vec<Vec<u8>>) {
    let m = metrics::global();
    let now = std::time::Instant::now();
    out.extend(notices.into_iter().filter_map(|n| {
        Metrics::inc(&m.notices_pushed_total);
        if let Some(queued) = n.queued {
            m.notice_seconds.observe(now.saturating_duration_since(queued));
        }
        let notify = Notify { id: n.id, seq: n.seq, entry: n.entry.as_deref().cloned() };
        frame::encode(&ServerFrame { request_id: 0, reply: Some(Reply::Notify(notify)) }).ok()
    }));
}

/// Sends every reply still committing, in order.
async fn drain(ws: &mut ServerWs, committing: &mut Replies) -> bool {
    let mut out = Vec::new();
    while let Some(frame) = committing.next().await {
        out.push(frame);
    }
    out.is_empty() || send_within(ws, out).await
}

/// The encoded reply frame for a request (a refusal counts in the metrics).
fn reply_frame(request_id: u64, result: Result<Reply, Refusal>) -> Vec<u8> {
    let reply = result.unwrap_or_else(|r| {
        Metrics::inc(&metrics::global().refusals_total);
        error_reply(&r)
    });
    // Entries are bounded by the read budget, so a reply fits its frame; if one ever did not,
    // the client hears so instead of getting an empty frame.
    frame::encode(&ServerFrame { request_id, reply: Some(reply) }).unwrap_or_else(|_| {
        let too_big = error_reply(&refuse(ErrorCode::Internal, "the reply did not fit a frame"));
        frame::encode(&ServerFrame { request_id, reply: Some(too_big) }).unwrap_or_default()
    })
}

/// How long frames may take to leave: a peer that stops reading loses its connection
/// instead of holding a session, its permits and its buffers.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Queues the frames and flushes once: one TLS write for everything ready.
async fn send_within(ws: &mut ServerWs, frames: Vec<Vec<u8>>) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, send_frames(ws, frames)).await, Ok(Ok(())))
}

/// The next notices to push; pending forever without a subscription.
async fn next_notices(listener: &mut Option<Listener>) -> Vec<crate::store::Notice> {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

fn error_reply(r: &Refusal) -> Reply {
    Reply::Error(Error { code: r.code as i32, message: r.message.to_string(), current_epoch: r.epoch })
}

fn check_id(id: &[u8]) -> Result<(), Refusal> {
    if id.len() == ID_LEN { Ok(()) } else { Err(refuse(ErrorCode::BadRequest, "an id has the wrong length")) }
}

fn check_payload(payload: &[u8], limit: usize) -> Result<(), Refusal> {
    match payload.len() {
        0 => Err(refuse(ErrorCode::BadRequest, "empty payload")),
        n if n > limit => Err(refuse(ErrorCode::TooLarge, "payload over the limit")),
        _ => Ok(()),
    }
}

fn new_id() -> Vec<u8> {
    let mut id = vec![0u8; ID_LEN];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

fn internal(_: crate::RelayError) -> Refusal {
    refuse(ErrorCode::Internal, "the relay could not store this; retry")
}

impl Session {
    async fn handle(&mut self, cf: &ClientFrame, op: Op) -> Result<Handled, Refusal> {
        if !self.greeted {
            let Op::Hello(hello) = op else {
                return Err(Refusal { fatal: true, ..refuse(ErrorCode::BadRequest, "hello first") });
            };
            let version = hello.max_version.min(limits::MAX_VERSION);
            if version < hello.min_version.max(limits::MIN_VERSION) {
                return Err(Refusal {
                    fatal: true,
                    ..refuse(ErrorCode::VersionMismatch, "no common protocol version")
                });
            }
            self.greeted = true;
            return Ok(Handled::Now(Reply::HelloOk(HelloOk {
                version,
                session_nonce: self.nonce.clone(),
                max_frame: limits::MAX_FRAME as u32,
                max_payload: MAX_PAYLOAD as u32,
            })));
        }
        if let Some(capability) = op.signed_for() {
            self.authorize(capability, cf).await?;
        }
        let signed_by = |key: &[u8]| verify_auth(key, &self.nonce, cf.request_id, &cf.command, &cf.signature);
        match op {
            Op::Hello(_) => Err(refuse(ErrorCode::BadRequest, "hello twice")),
            Op::CreateQueue(c) => {
                if c.read_key.len() != KEY_LEN || !signed_by(&c.read_key) {
                    return Err(refuse(ErrorCode::Unauthorized, "prove the read key"));
                }
                let (read_id, send_id) = (new_id(), new_id());
                let w = Write::CreateQueue { read_id: read_id.clone(), send_id: send_id.clone(), read_key: c.read_key };
                self.store.write(w).await.map_err(internal)?;
                self.remember(&read_id);
                Ok(Handled::Now(Reply::QueueCreated(QueueCreated { read_id, send_id })))
            }
            Op::SendToQueue(c) => {
                check_id(&c.send_id)?;
                check_id(&c.dedup_id)?;
                check_payload(&c.payload, MAX_PAYLOAD)?;
                let w = Write::SendToQueue {
                    send_id: c.send_id,
                    dedup_id: c.dedup_id,
                    payload: c.payload,
                    hour: current_hour(),
                };
                let commit = self.store.submit(w).await.map_err(internal)?;
                Ok(Handled::Later(Box::pin(async move {
                    match commit.await.map_err(internal)? {
                        Outcome::Stored { duplicate, .. } => {
                            if !duplicate {
                                Metrics::inc(&metrics::global().queue_messages_total);
                            }
                            Ok(Reply::Done(Done {}))
                        }
                        Outcome::QueueFull => Err(refuse(ErrorCode::RateLimited, "the queue is full; retry later")),
                        _ => Err(refuse(ErrorCode::Unauthorized, "no such queue")),
                    }
                })))
            }
            Op::ReadQueue(c) => {
                let (entries, more) =
                    self.store.read_queue(&c.read_id, c.after, c.limit, c.max_bytes).await.map_err(internal)?;
                Ok(Handled::Now(Reply::Entries(Entries { entries, more })))
            }
            Op::AckQueue(c) => {
                let commit = self.store.submit(Write::AckQueue { read_id: c.read_id, up_to: c.up_to }).await;
                Ok(Handled::Later(done_when(commit.map_err(internal)?)))
            }
            Op::CreateLog(c) => {
                if c.log_key.len() != KEY_LEN || !signed_by(&c.log_key) {
                    return Err(refuse(ErrorCode::Unauthorized, "prove the log key"));
                }
                let log_id = new_id();
                self.store
                    .write(Write::CreateLog { log_id: log_id.clone(), log_key: c.log_key })
                    .await
                    .map_err(internal)?;
                self.remember(&log_id);
                Ok(Handled::Now(Reply::LogCreated(LogCreated { log_id })))
            }
            Op::Append(c) => {
                check_id(&c.dedup_id)?;
                check_payload(&c.payload, MAX_COMMIT_PAYLOAD)?;
                let header =
                    peek_header(&c.payload).map_err(|_| refuse(ErrorCode::NotMls, "not an MLS group message"))?;
                if header.content_type != ContentType::Commit {
                    check_payload(&c.payload, MAX_PAYLOAD)?;
                }
                let w = Write::Append {
                    log_id: c.log_id,
                    dedup_id: c.dedup_id,
                    payload: c.payload,
                    header,
                    hour: current_hour(),
                };
                let commit = self.store.submit(w).await.map_err(internal)?;
                Ok(Handled::Later(Box::pin(async move {
                    match commit.await.map_err(internal)? {
                        Outcome::Stored { seq, epoch, duplicate } => {
                            if !duplicate {
                                Metrics::inc(&metrics::global().appends_total);
                            }
                            Ok(Reply::Appended(Appended { seq, epoch, duplicate }))
                        }
                        Outcome::StaleEpoch { current } => {
                            Metrics::inc(&metrics::global().stale_commits_total);
                            Err(Refusal {
                                epoch: current,
                                ..refuse(ErrorCode::StaleEpoch, "the group has moved to a newer epoch")
                            })
                        }
                        Outcome::Refused(why) => Err(refuse(ErrorCode::BadRequest, why)),
                        _ => Err(refuse(ErrorCode::Unauthorized, "no such log")),
                    }
                })))
            }
            Op::ReadLog(c) => {
                let (entries, more) =
                    self.store.read_log(&c.log_id, c.after, c.limit, c.max_bytes).await.map_err(internal)?;
                Ok(Handled::Now(Reply::Entries(Entries { entries, more })))
            }
            Op::Subscribe(c) => {
                if !c.log_id.is_empty() && !c.read_id.is_empty() {
                    return Err(refuse(ErrorCode::BadRequest, "subscribe to one log or one queue"));
                }
                let listener = self.listener.get_or_insert_with(|| self.store.listener());
                if listener.ids().len() >= limits::MAX_SUBSCRIPTIONS {
                    return Err(refuse(ErrorCode::RateLimited, "too many subscriptions on one connection"));
                }
                listener.watch(if c.log_id.is_empty() { c.read_id } else { c.log_id }, c.entries);
                Ok(Handled::Now(Reply::Done(Done {})))
            }
            Op::AckLog(c) => {
                check_id(&c.cursor_id)?;
                let w = Write::AckLog { log_id: c.log_id, cursor_id: c.cursor_id, up_to: c.up_to };
                Ok(Handled::Later(done_when(self.store.submit(w).await.map_err(internal)?)))
            }
            Op::CreateBlob(c) => {
                if c.write_key.len() != KEY_LEN || !signed_by(&c.write_key) {
                    return Err(refuse(ErrorCode::Unauthorized, "prove the write key"));
                }
                if c.size == 0 {
                    return Err(refuse(ErrorCode::BadRequest, "an empty blob"));
                }
                if c.size > self.max_blob_bytes {
                    return Err(refuse(ErrorCode::TooLarge, "the blob is over this relay's size limit"));
                }
                if self.blobs_left == 0 {
                    return Err(refuse(ErrorCode::RateLimited, "too many blobs on one connection"));
                }
                let blob_id = new_id();
                let w = Write::CreateBlob {
                    blob_id: blob_id.clone(),
                    write_key: c.write_key,
                    size: c.size,
                    hour: current_hour(),
                };
                self.store.write(w).await.map_err(internal)?;
                self.blobs_left -= 1;
                self.remember(&blob_id);
                Metrics::inc(&metrics::global().blobs_created_total);
                Ok(Handled::Now(Reply::BlobCreated(BlobCreated { blob_id })))
            }
            // Not pipelined: a connection has at most one piece (up to 1 MiB) in the writer.
            Op::PutBlob(c) => {
                check_payload(&c.data, MAX_BLOB_PIECE)?;
                metrics::global().blob_bytes_received_total.fetch_add(c.data.len() as u64, Relaxed);
                let w = Write::PutBlob { blob_id: c.blob_id, offset: c.offset, data: c.data };
                match self.store.write(w).await.map_err(internal)? {
                    Outcome::Blob { length, size } => Ok(Handled::Now(Reply::BlobStored(BlobStored { length, size }))),
                    Outcome::Refused(why) => Err(refuse(ErrorCode::BadRequest, why)),
                    _ => Err(refuse(ErrorCode::Unauthorized, "no such blob")),
                }
            }
            Op::GetBlob(c) => {
                check_id(&c.blob_id)?;
                let max = match usize::try_from(c.max_bytes) {
                    Ok(0) | Err(_) => MAX_BLOB_PIECE,
                    Ok(n) => n.min(MAX_BLOB_PIECE),
                };
                let Some((data, length, size)) =
                    self.store.read_blob(&c.blob_id, c.offset, max).await.map_err(internal)?
                else {
                    return Err(refuse(ErrorCode::Unauthorized, "no such blob"));
                };
                metrics::global().blob_bytes_served_total.fetch_add(data.len() as u64, Relaxed);
                Ok(Handled::Now(Reply::BlobData(BlobData { data, length, size })))
            }
            Op::BlobStatus(c) => {
                check_id(&c.blob_id)?;
                match self.store.blob_status(&c.blob_id).await.map_err(internal)? {
                    Some((length, size)) => Ok(Handled::Now(Reply::BlobStored(BlobStored { length, size }))),
                    None => Err(refuse(ErrorCode::Unauthorized, "no such blob")),
                }
            }
        }
    }

    /// Checks the command's signature against the key of the log or queue it is for, unless
    /// this session proved that key already. Unknown ids and wrong signatures get the same
    /// answer: no oracle for which ids exist.
    async fn authorize(&mut self, capability: Capability<'_>, cf: &ClientFrame) -> Result<(), Refusal> {
        let id = capability.id();
        check_id(id)?;
        if self.proven.contains(id) {
            return Ok(());
        }
        let (key, what) = match capability {
            Capability::Queue(_) => (self.store.queue_key(id).await, "not authorized for this queue"),
            Capability::Log(_) => (self.store.log_key(id).await, "not authorized for this log"),
            Capability::Blob(_) => (self.store.blob_key(id).await, "not authorized for this blob"),
        };
        match key.map_err(internal)? {
            Some(key) if verify_auth(&key, &self.nonce, cf.request_id, &cf.command, &cf.signature) => {
                self.remember(id);
                Ok(())
            }
            _ => Err(refuse(ErrorCode::Unauthorized, what)),
        }
    }

    fn remember(&mut self, id: &[u8]) {
        if self.proven.len() < limits::MAX_PROVEN {
            self.proven.insert(id.to_vec());
        }
    }
}

/// A write whose reply is just "done".
fn done_when(commit: Commit) -> Committing {
    Box::pin(async move {
        commit.await.map_err(internal)?;
        Ok(Reply::Done(Done {}))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_ready_reply_is_taken_even_after_the_task_used_its_budget() {
        let mut committing = Replies::new();
        let (answer, reply) = tokio::sync::oneshot::channel::<Vec<u8>>();
        answer.send(b"stored".to_vec()).unwrap();
        committing.push_back(Box::pin(async move { reply.await.unwrap() }));
        // A busy session spends its budget on other channels first.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..1_000 {
            tx.send(()).unwrap();
        }
        let mut taken = 0;
        while rx.recv().now_or_never().is_some() {
            taken += 1;
        }
        assert!(taken < 1_000, "the budget ran out after {taken} receives");
        let mut out = Vec::new();
        take_ready_replies(&mut committing, &mut out);
        assert_eq!(out, vec![b"stored".to_vec()]);
    }
}
