//! A connection to one relay: hello, then signed requests and their replies.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use tamizdat_transport::{TransportError, client::Connection, dial::Dialer, endpoint::Endpoint};
use tamizdat_wire::{
    auth_payload, frame,
    limits::{MAX_PUSHED_PAYLOAD, MAX_VERSION, MIN_VERSION},
    proto::{
        ClientFrame, Command, Entry, ErrorCode, Hello, Notify, Op, RelayDescriptor, Reply, ServerFrame, Subscribe,
    },
};

use crate::ClientError;

/// How long a request may wait for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A pending reply with not one byte arriving for this long means the connection froze (some
/// censors stop a connection's server-to-client bytes after ~16 KB, without a reset).
const STALL_TIMEOUT: Duration = Duration::from_secs(6);

/// Most pushed entries kept per id between syncs; past it the sync reads.
const MAX_PUSHED: usize = 1024;
/// Pushed payload bytes one connection keeps between syncs, over all ids.
const MAX_PUSHED_BYTES: usize = 4 * 1024 * 1024;
/// Notices waiting to wake a sync; each one wakes the same full sync.
const MAX_WAITING_NOTICES: usize = 1024;

/// What the relay pushed for one id since the last sync took it.
#[derive(Default)]
struct Pushed {
    entries: Vec<Entry>,
    /// The highest sequence number announced.
    announced: u64,
    /// A notice came without its entry (too large, or "look again"), or too many were kept.
    must_read: bool,
}

impl Pushed {
    /// Keeps the entry a notice carried, or, for a notice without one (or one not kept),
    /// remembers that the id must be read. Returns the payload bytes kept.
    fn keep(&mut self, n: &Notify, entry: Option<Entry>) -> usize {
        self.announced = self.announced.max(n.seq);
        match entry {
            Some(e) if e.seq == n.seq && self.entries.len() < MAX_PUSHED => {
                let size = e.payload.len();
                self.entries.push(e);
                size
            }
            _ => {
                self.must_read = true;
                0
            }
        }
    }

    /// Payload bytes kept.
    fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.payload.len()).sum()
    }

    /// The kept entries that directly follow `after`, in order, and whether they reach the
    /// last one announced: then a read would find nothing more, since anything newer brings
    /// its own notice.
    fn take(mut self, after: u64) -> (Vec<Entry>, bool) {
        self.entries.sort_by_key(|e| e.seq);
        self.entries.dedup_by_key(|e| e.seq);
        let mut run = Vec::new();
        for e in self.entries.into_iter().filter(|e| e.seq > after) {
            if e.seq != after + 1 + run.len() as u64 {
                break;
            }
            run.push(e);
        }
        let complete = !self.must_read && run.last().is_some_and(|e| e.seq >= self.announced);
        (run, complete)
    }
}

/// An open, greeted connection to a relay.
pub struct RelayClient {
    conn: Connection,
    nonce: Vec<u8>,
    next_id: u64,
    /// Notices pushed by the relay while we waited for a reply.
    notices: VecDeque<Notify>,
    /// Entries the relay pushed inside notices, per id, until a sync takes them.
    pushed: HashMap<Vec<u8>, Pushed>,
    /// Ids this connection is subscribed to, and whether entries were asked for.
    subscribed: HashMap<Vec<u8>, bool>,
    /// Payload bytes kept in `pushed`, across ids.
    pushed_bytes: usize,
    /// Logs and queues whose key this connection has proven: the relay needs no signature for
    /// them again on this session.
    proven: HashSet<Vec<u8>>,
}

impl RelayClient {
    /// Connects with a dialer configured from the environment, trying the descriptor's
    /// endpoints in order, and negotiates the protocol version.
    pub async fn connect(relay: &RelayDescriptor) -> Result<Self, ClientError> {
        let dialer = Dialer::from_env_transient()?;
        Self::connect_with(&dialer, relay, &relay.parsed_endpoints()).await
    }

    /// Races `endpoints` (best first) with `dialer` and negotiates the protocol version.
    pub async fn connect_with(
        dialer: &Dialer,
        relay: &RelayDescriptor,
        endpoints: &[Endpoint],
    ) -> Result<Self, ClientError> {
        let conn = dialer.dial(relay, endpoints).await?;
        let mut client = Self {
            conn,
            nonce: Vec::new(),
            next_id: 1,
            notices: VecDeque::new(),
            pushed: HashMap::new(),
            subscribed: HashMap::new(),
            pushed_bytes: 0,
            proven: HashSet::new(),
        };
        match client.call(Op::Hello(Hello { min_version: MIN_VERSION, max_version: MAX_VERSION }), None).await? {
            Reply::HelloOk(ok) => {
                client.nonce = ok.session_nonce;
                Ok(client)
            }
            _ => Err(ClientError::Protocol("the relay did not answer hello".into())),
        }
    }

    /// The endpoint this connection went through.
    pub fn endpoint(&self) -> &str {
        self.conn.endpoint()
    }

    /// Bytes received on this connection so far.
    pub fn received(&self) -> u64 {
        self.conn.received()
    }

    /// Sends one command, signed with `key` if given, and waits for its reply. A relay error
    /// comes back as [`ClientError::Relay`]. A log's or queue's key is proven once per
    /// connection; later commands for it go unsigned, and are signed again if the relay did
    /// not keep the proof (it keeps a bounded number per connection).
    pub async fn call(&mut self, op: Op, key: Option<&SigningKey>) -> Result<Reply, ClientError> {
        let target = op.signed_for().map(|c| c.id().to_vec());
        let command = Command { op: Some(op) }.encode_to_vec();
        let Some(key) = key else { return self.request(command, None).await };
        let Some(target) = target else { return self.request(command, Some(key)).await };
        if self.proven.contains(&target) {
            match self.request(command.clone(), None).await {
                Err(ClientError::Relay { code: ErrorCode::Unauthorized, .. }) => {
                    self.proven.remove(&target);
                }
                done => return done,
            }
        }
        let reply = self.request(command, Some(key)).await?;
        self.proven.insert(target);
        Ok(reply)
    }

    /// One request and its reply.
    async fn request(&mut self, command: Vec<u8>, key: Option<&SigningKey>) -> Result<Reply, ClientError> {
        let request_id = self.next_id;
        self.next_id += 1;
        let signature = key
            .map(|k| k.sign(&auth_payload(&self.nonce, request_id, &command)).to_bytes().to_vec())
            .unwrap_or_default();
        let bytes = frame::encode(&ClientFrame { request_id, command, signature })?;
        self.conn.send(bytes).await?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let reply = self.recv_watching(deadline).await?;
            let frame: ServerFrame = frame::decode(&reply)?;
            match frame.reply {
                Some(Reply::Notify(n)) if frame.request_id == 0 => {
                    let n = self.keep_pushed(n);
                    // Any waiting notice wakes a full sync; past this many, more add nothing.
                    if self.notices.len() < MAX_WAITING_NOTICES {
                        self.notices.push_back(n);
                    }
                }
                // Request id 0 also carries connection-level errors (a frame the relay could not
                // read); the relay closes the connection after them.
                Some(Reply::Error(e)) if frame.request_id == 0 => {
                    return Err(ClientError::Protocol(format!("the relay closed the connection: {}", e.message)));
                }
                _ if frame.request_id != request_id => {
                    return Err(ClientError::Protocol("reply to another request".into()));
                }
                Some(Reply::Error(e)) => {
                    return Err(ClientError::Relay {
                        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                        message: e.message,
                        current_epoch: e.current_epoch,
                    });
                }
                Some(reply) => return Ok(reply),
                None => return Err(ClientError::Protocol("empty reply".into())),
            }
        }
    }

    /// The next frame, before `deadline`. Receiving nothing at all for [`STALL_TIMEOUT`] is a
    /// stall, reported as such so the caller can reconnect and keep later connections small.
    async fn recv_watching(&mut self, deadline: tokio::time::Instant) -> Result<Vec<u8>, ClientError> {
        let mut seen = self.conn.received();
        loop {
            let wait = (tokio::time::Instant::now() + STALL_TIMEOUT).min(deadline);
            // A WebSocket stream keeps partial frames across a cancelled read.
            match tokio::time::timeout_at(wait, self.conn.recv()).await {
                Ok(frame) => return Ok(frame?),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ClientError::Transport(TransportError::Timeout {
                        step: "relay reply",
                        endpoint: self.conn.endpoint().to_string(),
                    }));
                }
                Err(_) if self.conn.received() == seen => {
                    return Err(ClientError::Transport(TransportError::Stalled {
                        endpoint: self.conn.endpoint().to_string(),
                        received: seen,
                    }));
                }
                Err(_) => seen = self.conn.received(),
            }
        }
    }

    /// Subscribes to a log (with its key) or a queue (with its read key), once per connection.
    pub async fn subscribe(&mut self, sub: Subscribe, key: &SigningKey) -> Result<(), ClientError> {
        let id = if sub.log_id.is_empty() { sub.read_id.clone() } else { sub.log_id.clone() };
        if self.subscribed.contains_key(&id) {
            return Ok(());
        }
        let entries = sub.entries;
        self.call(Op::Subscribe(sub), Some(key)).await?;
        self.subscribed.insert(id, entries);
        Ok(())
    }

    /// The next notice the relay pushed: something new under a subscribed id.
    pub async fn next_notice(&mut self) -> Result<Notify, ClientError> {
        if let Some(n) = self.notices.pop_front() {
            return Ok(n);
        }
        loop {
            let frame: ServerFrame = frame::decode(&self.conn.recv().await?)?;
            match frame.reply {
                Some(Reply::Notify(n)) => return Ok(self.keep_pushed(n)),
                Some(Reply::Error(e)) => return Err(ClientError::Protocol(format!("the relay closed: {}", e.message))),
                _ => continue,
            }
        }
    }

    /// Keeps what a notice for an id subscribed with entries says for the next sync, within
    /// [`MAX_PUSHED_BYTES`] for the connection; returns the notice without its entry.
    fn keep_pushed(&mut self, mut n: Notify) -> Notify {
        let entry = n.entry.take();
        if self.subscribed.get(&n.id) == Some(&true) {
            let size = entry.as_ref().map_or(0, |e| e.payload.len());
            let fits = size <= MAX_PUSHED_PAYLOAD && self.pushed_bytes + size <= MAX_PUSHED_BYTES;
            let kept = self.pushed.entry(n.id.clone()).or_default().keep(&n, entry.filter(|_| fits));
            self.pushed_bytes += kept;
        }
        n
    }

    /// Entries pushed for `id` that directly follow `after`, in order, and whether they reach
    /// everything announced for it. Takes what was kept for `id`.
    pub fn take_pushed(&mut self, id: &[u8], after: u64) -> (Vec<Entry>, bool) {
        let Some(p) = self.pushed.remove(id) else { return (Vec::new(), false) };
        self.pushed_bytes = self.pushed_bytes.saturating_sub(p.bytes());
        p.take(after)
    }

    /// The raw connection, the session nonce and the next request id, for callers that
    /// pipeline requests themselves (the load generator).
    pub fn into_parts(self) -> (Connection, Vec<u8>, u64) {
        (self.conn, self.nonce, self.next_id)
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(seq: u64, with_entry: bool) -> Notify {
        let entry = with_entry.then(|| Entry { seq, payload: vec![seq as u8], ..Default::default() });
        Notify { id: vec![1; 16], seq, entry }
    }

    fn kept(notices: &[Notify]) -> Pushed {
        let mut p = Pushed::default();
        notices.iter().for_each(|n| {
            p.keep(n, n.entry.clone());
        });
        p
    }

    fn seqs(taken: &(Vec<Entry>, bool)) -> (Vec<u64>, bool) {
        (taken.0.iter().map(|e| e.seq).collect(), taken.1)
    }

    #[test]
    fn pushed_entries_that_follow_the_cursor_need_no_read() {
        let p = kept(&[notice(4, true), notice(6, true), notice(5, true), notice(5, true)]);
        assert_eq!(seqs(&p.take(3)), (vec![4, 5, 6], true), "in order, once each, complete");
    }

    #[test]
    fn a_gap_or_a_bare_notice_means_read() {
        assert_eq!(seqs(&kept(&[notice(4, true), notice(6, true)]).take(3)), (vec![4], false), "5 is missing");
        assert_eq!(seqs(&kept(&[notice(5, true)]).take(3)), (vec![], false), "4 is missing");
        assert_eq!(seqs(&kept(&[notice(4, true), notice(5, false)]).take(3)), (vec![4], false), "5 came bare");
        assert_eq!(seqs(&kept(&[notice(0, false), notice(4, true)]).take(3)), (vec![4], false), "look again");
    }

    #[test]
    fn entries_the_cursor_passed_are_dropped() {
        assert_eq!(seqs(&kept(&[notice(4, true), notice(5, true)]).take(4)), (vec![5], true));
        assert_eq!(seqs(&kept(&[notice(4, true)]).take(4)), (vec![], false));
    }
}
