//! One client connection: version negotiation, then request/reply. Every check that can
//! refuse a request (size, ids, signature) runs before any storage work.

use std::{collections::HashSet, time::Duration};

use prost::Message;
use rand::RngCore;
use tamizdat_transport::server::{ServerWs, recv_frame, send_frame};
use tamizdat_wire::{
    frame,
    limits::{self, ID_LEN, KEY_LEN, MAX_COMMIT_PAYLOAD, MAX_PAYLOAD},
    mls::{ContentType, peek_header},
    proto::{
        Appended, ClientFrame, Command, Done, Entries, Error, ErrorCode, HelloOk, LogCreated, Notify, Op, QueueCreated,
        Reply, ServerFrame,
    },
    verify_auth,
};

use tokio::sync::broadcast;

use crate::{
    current_hour,
    limits::{Bucket, Limits},
    metrics::{self, Metrics},
    store::{Notice, Outcome, Store, Write},
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
    subscriptions: HashSet<Vec<u8>>,
    notices: Option<broadcast::Receiver<Notice>>,
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

/// Runs a session until the client leaves, idles out or breaks the protocol. Requests are
/// answered in order; between them, notices for subscribed logs and queues are pushed.
pub async fn run(mut ws: ServerWs, store: Store, limits: &Limits) {
    let m = metrics::global();
    let mut bucket = Bucket::new(limits.requests_per_second, limits.requests_burst);
    let mut limited_in_a_row = 0u32;
    let mut nonce = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut session = Session { store, nonce, subscriptions: HashSet::new(), notices: None };
    let mut greeted = false;
    // The idle clock runs from the last request, whatever notices pass in between.
    let mut last_request = tokio::time::Instant::now();
    loop {
        let idle = if session.subscriptions.is_empty() { IDLE } else { IDLE_SUBSCRIBED };
        let bytes = tokio::select! {
            incoming = tokio::time::timeout_at(last_request + idle, recv_frame(&mut ws)) => match incoming {
                Ok(Ok(Some(b))) => {
                    last_request = tokio::time::Instant::now();
                    b
                }
                _ => break,
            },
            notice = next_notice(&mut session.notices) => {
                let pushed = match notice {
                    Some(n) if session.subscriptions.contains(&n.id) => vec![n],
                    Some(n) if !n.id.is_empty() => continue,
                    // Fell behind the hub, or notices may have been lost: tell the client to
                    // look at everything it watches.
                    _ => session.subscriptions.iter().map(|id| Notice { id: id.clone(), seq: 0 }).collect(),
                };
                for n in pushed {
                    Metrics::inc(&m.notices_pushed_total);
                    let frame = ServerFrame { request_id: 0, reply: Some(Reply::Notify(Notify { id: n.id, seq: n.seq })) };
                    let Ok(out) = frame::encode(&frame) else { break };
                    if !send_within(&mut ws, out).await {
                        return;
                    }
                }
                continue;
            }
        };
        let (request_id, reply, fatal) = match frame::decode::<ClientFrame>(&bytes) {
            Ok(cf) if !bucket.take(std::time::Instant::now()) => {
                // Over the request rate: refused before any signature check or storage work;
                // a client that keeps pushing is disconnected.
                Metrics::inc(&m.rate_limited_total);
                limited_in_a_row += 1;
                let fatal = limited_in_a_row >= MAX_LIMITED_IN_A_ROW;
                (cf.request_id, error_reply(&Refusal { fatal, ..refuse(ErrorCode::RateLimited, "slow down") }), fatal)
            }
            Ok(cf) => {
                limited_in_a_row = 0;
                Metrics::inc(&m.requests_total);
                let id = cf.request_id;
                match session.handle(&cf, &mut greeted).await {
                    Ok(reply) => (id, reply, false),
                    Err(r) => {
                        Metrics::inc(&m.refusals_total);
                        (id, error_reply(&r), r.fatal)
                    }
                }
            }
            Err(_) => {
                Metrics::inc(&m.malformed_frames_total);
                (0, error_reply(&Refusal { fatal: true, ..refuse(ErrorCode::BadRequest, "malformed frame") }), true)
            }
        };
        let Ok(out) = frame::encode(&ServerFrame { request_id, reply: Some(reply) }) else { break };
        if !send_within(&mut ws, out).await || fatal {
            break;
        }
    }
    let _ = ws.close(None).await;
}

/// How long one frame may take to leave: a peer that stops reading loses its connection
/// instead of holding a session, its permits and its buffers.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

async fn send_within(ws: &mut ServerWs, frame: Vec<u8>) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, send_frame(ws, frame)).await, Ok(Ok(())))
}

/// The next notice, `None` if this session fell behind; pending forever without a
/// subscription.
async fn next_notice(rx: &mut Option<broadcast::Receiver<Notice>>) -> Option<Notice> {
    let Some(rx) = rx else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(n) => return Some(n),
            Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
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
    async fn handle(&mut self, cf: &ClientFrame, greeted: &mut bool) -> Result<Reply, Refusal> {
        let command = Command::decode(cf.command.as_slice())
            .map_err(|_| Refusal { fatal: true, ..refuse(ErrorCode::BadRequest, "undecodable command") })?;
        let op = command.op.ok_or(Refusal { fatal: !*greeted, ..refuse(ErrorCode::BadRequest, "empty command") })?;
        if !*greeted {
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
            *greeted = true;
            return Ok(Reply::HelloOk(HelloOk {
                version,
                session_nonce: self.nonce.clone(),
                max_frame: limits::MAX_FRAME as u32,
                max_payload: MAX_PAYLOAD as u32,
            }));
        }
        let authorized = |key: &[u8]| verify_auth(key, &self.nonce, cf.request_id, &cf.command, &cf.signature);
        match op {
            Op::Hello(_) => Err(refuse(ErrorCode::BadRequest, "hello twice")),
            Op::CreateQueue(c) => {
                if c.read_key.len() != KEY_LEN || !authorized(&c.read_key) {
                    return Err(refuse(ErrorCode::Unauthorized, "prove the read key"));
                }
                let (read_id, send_id) = (new_id(), new_id());
                let w = Write::CreateQueue { read_id: read_id.clone(), send_id: send_id.clone(), read_key: c.read_key };
                self.store.write(w).await.map_err(internal)?;
                Ok(Reply::QueueCreated(QueueCreated { read_id, send_id }))
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
                match self.store.write(w).await.map_err(internal)? {
                    Outcome::Stored { duplicate, .. } => {
                        if !duplicate {
                            Metrics::inc(&metrics::global().queue_messages_total);
                        }
                        Ok(Reply::Done(Done {}))
                    }
                    Outcome::QueueFull => Err(refuse(ErrorCode::RateLimited, "the queue is full; retry later")),
                    _ => Err(refuse(ErrorCode::Unauthorized, "no such queue")),
                }
            }
            Op::ReadQueue(c) => {
                self.authorize_queue(&c.read_id, &authorized).await?;
                let (entries, more) =
                    self.store.read_queue(&c.read_id, c.after, c.limit, c.max_bytes).await.map_err(internal)?;
                Ok(Reply::Entries(Entries { entries, more }))
            }
            Op::AckQueue(c) => {
                self.authorize_queue(&c.read_id, &authorized).await?;
                self.store.write(Write::AckQueue { read_id: c.read_id, up_to: c.up_to }).await.map_err(internal)?;
                Ok(Reply::Done(Done {}))
            }
            Op::CreateLog(c) => {
                if c.log_key.len() != KEY_LEN || !authorized(&c.log_key) {
                    return Err(refuse(ErrorCode::Unauthorized, "prove the log key"));
                }
                let log_id = new_id();
                self.store
                    .write(Write::CreateLog { log_id: log_id.clone(), log_key: c.log_key })
                    .await
                    .map_err(internal)?;
                Ok(Reply::LogCreated(LogCreated { log_id }))
            }
            Op::Append(c) => {
                check_id(&c.dedup_id)?;
                check_payload(&c.payload, MAX_COMMIT_PAYLOAD)?;
                let header =
                    peek_header(&c.payload).map_err(|_| refuse(ErrorCode::NotMls, "not an MLS group message"))?;
                if header.content_type != ContentType::Commit {
                    check_payload(&c.payload, MAX_PAYLOAD)?;
                }
                self.authorize_log(&c.log_id, &authorized).await?;
                let w = Write::Append {
                    log_id: c.log_id,
                    dedup_id: c.dedup_id,
                    payload: c.payload,
                    header,
                    hour: current_hour(),
                };
                match self.store.write(w).await.map_err(internal)? {
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
            }
            Op::ReadLog(c) => {
                self.authorize_log(&c.log_id, &authorized).await?;
                let (entries, more) =
                    self.store.read_log(&c.log_id, c.after, c.limit, c.max_bytes).await.map_err(internal)?;
                Ok(Reply::Entries(Entries { entries, more }))
            }
            Op::Subscribe(c) => {
                if self.subscriptions.len() >= limits::MAX_SUBSCRIPTIONS {
                    return Err(refuse(ErrorCode::RateLimited, "too many subscriptions on one connection"));
                }
                let id = match (c.log_id.is_empty(), c.read_id.is_empty()) {
                    (false, true) => {
                        self.authorize_log(&c.log_id, &authorized).await?;
                        c.log_id
                    }
                    (true, false) => {
                        self.authorize_queue(&c.read_id, &authorized).await?;
                        c.read_id
                    }
                    _ => return Err(refuse(ErrorCode::BadRequest, "subscribe to one log or one queue")),
                };
                if self.notices.is_none() {
                    self.notices = Some(self.store.notices());
                }
                self.subscriptions.insert(id);
                Ok(Reply::Done(Done {}))
            }
            Op::AckLog(c) => {
                check_id(&c.cursor_id)?;
                self.authorize_log(&c.log_id, &authorized).await?;
                let w = Write::AckLog { log_id: c.log_id, cursor_id: c.cursor_id, up_to: c.up_to };
                self.store.write(w).await.map_err(internal)?;
                Ok(Reply::Done(Done {}))
            }
        }
    }

    /// Unknown ids and wrong signatures get the same answer: no oracle for which ids exist.
    async fn authorize_queue(&self, read_id: &[u8], authorized: &impl Fn(&[u8]) -> bool) -> Result<(), Refusal> {
        check_id(read_id)?;
        match self.store.queue_key(read_id).await.map_err(internal)? {
            Some(key) if authorized(&key) => Ok(()),
            _ => Err(refuse(ErrorCode::Unauthorized, "not authorized for this queue")),
        }
    }

    async fn authorize_log(&self, log_id: &[u8], authorized: &impl Fn(&[u8]) -> bool) -> Result<(), Refusal> {
        check_id(log_id)?;
        match self.store.log_key(log_id).await.map_err(internal)? {
            Some(key) if authorized(&key) => Ok(()),
            _ => Err(refuse(ErrorCode::Unauthorized, "not authorized for this log")),
        }
    }
}
