//! The client engine: identity, invites, contacts, outbox, sync.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ed25519_dalek::SigningKey;
use openmls::prelude::Ciphersuite;
use prost::Message;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tamizdat_e2e::{
    Conversation, DEFAULT_SUITE, E2eError, Identity, Incoming,
    content::{Body, Content, MAX_NAME, MAX_TEXT, Profile, Text},
    invite::{self, InviteParams},
    proto::{JoinRequest, LogRef},
    seal,
};
use tamizdat_wire::{
    limits::{ID_LEN, MAX_READ_ENTRIES},
    mls::peek_header,
    proto::{
        AckLog, AckQueue, Append, CreateLog, CreateQueue, Entry, ErrorCode, Op, ReadLog, ReadQueue, RelayDescriptor,
        Reply, SendToQueue, Subscribe,
    },
};

use crate::{
    ClientError,
    relay::RelayClient,
    store::{self, Provider},
};

/// A contact as listed to the user.
#[derive(Clone, Debug, Serialize)]
pub struct ContactView {
    /// The name the user knows them by.
    pub name: String,
    /// Their identity key, hex (what verification compares).
    pub identity_key: String,
    /// Unix milliseconds the contact was made.
    pub since: u64,
}

/// A message as listed to the user.
#[derive(Clone, Debug, Serialize)]
pub struct MessageView {
    /// Message id (hex), the same on both sides.
    pub id: String,
    /// Who sent it (our own name for outgoing messages).
    pub sender: String,
    /// The text.
    pub text: String,
    /// Sent by us.
    pub outgoing: bool,
    /// Unix milliseconds, by the sender's clock.
    pub sent_at: u64,
    /// Position in the conversation's log, once the relay stored it.
    pub seq: Option<u64>,
    /// `sending`, `sent`, `received` or `failed`.
    pub state: String,
    /// The conversation it belongs to.
    pub conversation: String,
}

/// What a sync found.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    /// Contacts made by people who accepted our invites.
    pub new_contacts: Vec<String>,
    /// Contacts that told us their name (renamed from a placeholder).
    pub renamed: Vec<(String, String)>,
    /// New incoming messages, in order.
    pub messages: Vec<MessageView>,
    /// Outbox entries delivered.
    pub delivered: usize,
    /// Log and queue entries that could not be processed and were skipped.
    pub skipped: usize,
    /// What could not be reached or done this time (retried on the next sync).
    pub failures: Vec<String>,
}

struct ProfileRow {
    name: String,
    identity_key: Vec<u8>,
    suite: Ciphersuite,
    relay: RelayDescriptor,
    queue_read_id: Vec<u8>,
    queue_send_id: Vec<u8>,
    queue_key: SigningKey,
    queue_cursor: u64,
}

struct ContactRow {
    id: i64,
    name: String,
    identity_key: Vec<u8>,
    group_id: Vec<u8>,
    joined_epoch: u64,
    relay_link: String,
    log_id: Vec<u8>,
    log_key: SigningKey,
    cursor_id: Vec<u8>,
    cursor: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; ID_LEN];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

fn signing_key(secret: &[u8]) -> Result<SigningKey, ClientError> {
    let bytes: [u8; 32] =
        secret.try_into().map_err(|_| ClientError::Corrupt("a stored key has the wrong length".into()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A display name someone else chose: printable, trimmed, bounded, never empty.
fn clean_name(raw: &str) -> String {
    let cleaned: String = raw.chars().filter(|c| !c.is_control()).collect();
    let mut name = cleaned.trim().to_string();
    while name.len() > MAX_NAME {
        name.pop();
    }
    if name.is_empty() { "contact".into() } else { name }
}

fn check_own_name(name: &str) -> Result<(), ClientError> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) || name != name.trim() {
        return Err(ClientError::BadInput(format!(
            "a name must be 1 to {MAX_NAME} bytes of printable text without surrounding spaces"
        )));
    }
    Ok(())
}

/// A Tamizdat identity on this device, opened with its passphrase.
pub struct Client {
    conn: Connection,
    identity: Identity,
    profile: ProfileRow,
    relays: HashMap<String, RelayClient>,
}

impl Client {
    /// Creates an identity in `home` that uses the relay of `relay_link`. The relay is asked
    /// for a contact queue first, so nothing is created if it cannot be reached.
    pub async fn init(home: &Path, passphrase: &str, name: &str, relay_link: &str) -> Result<Self, ClientError> {
        check_own_name(name)?;
        if store::exists(home) {
            return Err(ClientError::AlreadyInitialised(home.display().to_string()));
        }
        let relay =
            RelayDescriptor::from_link(relay_link).map_err(|e| ClientError::BadInput(format!("relay link: {e}")))?;
        let queue_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let mut rc = RelayClient::connect(&relay).await?;
        let reply = rc
            .call(
                Op::CreateQueue(CreateQueue { read_key: queue_key.verifying_key().to_bytes().to_vec() }),
                Some(&queue_key),
            )
            .await?;
        let Reply::QueueCreated(q) = reply else {
            return Err(ClientError::Protocol("expected QueueCreated".into()));
        };
        rc.close().await;

        let conn = store::create(home, passphrase)?;
        let identity = {
            let provider = Provider::new(&conn);
            Identity::create(&provider, DEFAULT_SUITE)?
        };
        conn.execute(
            "INSERT INTO profile (id, name, identity_key, suite, relay_link, queue_read_id, queue_send_id, queue_secret) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![name, identity.public_key(), u16::from(DEFAULT_SUITE), relay.to_link(), q.read_id, q.send_id, queue_key.to_bytes().to_vec()],
        )?;
        let client = Self::from_conn(conn)?;
        store::finish_create(home)?;
        Ok(client)
    }

    /// Opens the identity in `home`.
    pub fn open(home: &Path, passphrase: &str) -> Result<Self, ClientError> {
        Self::from_conn(store::open(home, passphrase)?)
    }

    fn from_conn(conn: Connection) -> Result<Self, ClientError> {
        let profile = conn
            .query_row(
                "SELECT name, identity_key, suite, relay_link, queue_read_id, queue_send_id, queue_secret, queue_cursor FROM profile WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, u16>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                        r.get::<_, Vec<u8>>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| ClientError::Corrupt("the store has no profile".into()))?;
        let suite = Ciphersuite::try_from(profile.2).map_err(|_| ClientError::Corrupt("unknown ciphersuite".into()))?;
        let profile = ProfileRow {
            name: profile.0,
            identity_key: profile.1,
            suite,
            relay: RelayDescriptor::from_link(&profile.3)?,
            queue_read_id: profile.4,
            queue_send_id: profile.5,
            queue_key: signing_key(&profile.6)?,
            queue_cursor: u64::try_from(profile.7).unwrap_or(0),
        };
        let identity = {
            let provider = Provider::new(&conn);
            Identity::load(&provider, &profile.identity_key, suite)?
        };
        Ok(Self { conn, identity, profile, relays: HashMap::new() })
    }

    /// Our display name.
    pub fn name(&self) -> &str {
        &self.profile.name
    }

    /// Our identity key.
    pub fn identity_key(&self) -> &[u8] {
        &self.profile.identity_key
    }

    /// Creates a one-time invite valid for `ttl_secs`. Works offline.
    pub fn invite(&mut self, ttl_secs: u64) -> Result<String, ClientError> {
        let expires_at = now_secs().saturating_add(ttl_secs);
        let tx = self.begin()?;
        let provider = Provider::new(&tx);
        let params =
            InviteParams { relays: vec![self.profile.relay.clone()], send_id: &self.profile.queue_send_id, expires_at };
        let (link, secrets) = invite::create(&provider, &self.identity, self.profile.suite, params)?;
        tx.execute(
            "INSERT INTO invites (invite_id, box_private, expires_at) VALUES (?1, ?2, ?3)",
            params![secrets.invite_id, secrets.box_private, to_i64(secrets.expires_at)],
        )?;
        tx.commit()?;
        Ok(link)
    }

    async fn relay(&mut self, link: &str) -> Result<&mut RelayClient, ClientError> {
        if !self.relays.contains_key(link) {
            let descriptor = RelayDescriptor::from_link(link)?;
            let rc = RelayClient::connect(&descriptor).await?;
            self.relays.insert(link.to_string(), rc);
        }
        self.relays.get_mut(link).ok_or_else(|| ClientError::Protocol("relay connection vanished".into()))
    }

    /// A call that drops a broken connection so the next call reconnects.
    ///
    /// Requests that are safe to repeat (everything but creating queues and logs: appends and
    /// sends carry dedup ids) are retried after a short backoff when the connection fails,
    /// so a blip does not leave a message waiting for the next command.
    async fn call(&mut self, link: &str, op: Op, key: Option<&SigningKey>) -> Result<Reply, ClientError> {
        const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];
        let repeatable = !matches!(op, Op::CreateQueue(_) | Op::CreateLog(_));
        let mut attempt = 0;
        loop {
            let result = match self.relay(link).await {
                Ok(rc) => rc.call(op.clone(), key).await,
                Err(e) => Err(e),
            };
            if matches!(result, Err(ClientError::Transport(_) | ClientError::Protocol(_))) {
                self.relays.remove(link);
            }
            match result {
                Err(ClientError::Transport(_)) if repeatable && attempt < BACKOFF.len() => {
                    tokio::time::sleep(BACKOFF[attempt]).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Accepts an invite: starts the conversation on the inviter's relay and sends the
    /// inviter a sealed join request. Returns the contact's name.
    pub async fn accept(&mut self, link: &str, alias: Option<&str>) -> Result<String, ClientError> {
        let verified = {
            let provider = Provider::new(&self.conn);
            invite::verify(&provider, link, now_secs()).map_err(ClientError::Invite)?
        };
        let body = &verified.body;
        if body.identity_key == self.profile.identity_key {
            return Err(ClientError::BadInput(
                "this is your own invite; send it to the person you want to talk to".into(),
            ));
        }
        let accepted: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM accepted_invites WHERE invite_id = ?1", [&body.invite_id], |r| r.get(0))
            .optional()?;
        if accepted.is_some() {
            return Err(ClientError::BadInput("you already accepted this invite".into()));
        }
        if let Some(alias) = alias {
            check_own_name(alias)?;
            if self.contact_id(alias)?.is_some() {
                return Err(ClientError::BadInput(format!(
                    "you already have a contact named {alias:?}; choose another --as"
                )));
            }
        }
        let relay =
            body.relays.first().ok_or_else(|| ClientError::BadInput("the invite names no relay".into()))?.clone();
        let relay_link = relay.to_link();

        // On the relay first: a log, and a cursor for each member, so nothing is deleted
        // before both have read it. If this fails, nothing changed locally.
        let log_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let reply = self
            .call(
                &relay_link,
                Op::CreateLog(CreateLog { log_key: log_key.verifying_key().to_bytes().to_vec() }),
                Some(&log_key),
            )
            .await?;
        let Reply::LogCreated(created) = reply else {
            return Err(ClientError::Protocol("expected LogCreated".into()));
        };
        let (own_cursor, peer_cursor) = (random_id(), random_id());
        for cursor in [&own_cursor, &peer_cursor] {
            let ack = AckLog { log_id: created.log_id.clone(), cursor_id: cursor.clone(), up_to: 0 };
            self.call(&relay_link, Op::AckLog(ack), Some(&log_key)).await?;
        }

        // Then locally, in one transaction: the group, the contact and the outbox.
        let name = {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            // The log is new and only we hold its key, so no other commit can take epoch 0:
            // merging before the relay stores it is safe here.
            let (mut conv, commit, welcome) =
                Conversation::start(&provider, &self.identity, verified.suite, verified.key_package.clone())?;
            conv.confirm_commit(&provider)?;
            let name = match alias {
                Some(a) => a.to_string(),
                None => unique_name(&tx, &format!("invite-{}", hex::encode(&body.identity_key[..3])))?,
            };
            tx.execute(
                "INSERT INTO contacts (name, named_by_user, identity_key, group_id, joined_epoch, relay_link, log_id, log_secret, cursor_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![name, alias.is_some(), body.identity_key, conv.group_id(), to_i64(conv.epoch()), relay_link, created.log_id, log_key.to_bytes().to_vec(), own_cursor, to_i64(now_ms())],
            )?;
            let contact_id = tx.last_insert_rowid();
            enqueue_log(&tx, contact_id, &relay_link, &created.log_id, &log_key, commit, None)?;
            let join = JoinRequest {
                invite_id: body.invite_id.clone(),
                welcome,
                log: Some(LogRef {
                    relay: Some(relay.clone()),
                    log_id: created.log_id.clone(),
                    log_secret: log_key.to_bytes().to_vec(),
                }),
                display_name: self.profile.name.clone(),
                cursor_id: peer_cursor,
                cursor_position: 0,
            };
            let sealed = seal::seal(&provider, verified.suite, &body.box_key, &body.invite_id, &join.encode_to_vec())?;
            tx.execute(
                "INSERT INTO outbox (relay_link, target, kind, dedup_id, payload) VALUES (?1, ?2, 'queue', ?3, ?4)",
                params![relay_link, body.send_id, random_id(), sealed],
            )?;
            let profile = self.profile_content();
            let payload = conv.encrypt(&provider, &self.identity, &profile)?;
            enqueue_log(&tx, contact_id, &relay_link, &created.log_id, &log_key, payload, None)?;
            tx.execute("INSERT INTO accepted_invites (invite_id) VALUES (?1)", [&body.invite_id])?;
            tx.commit()?;
            name
        };
        // Other relays being down is not this accept's failure; its own entries must have gone.
        if let Err(e) = self.flush_outbox().await {
            let waiting: i64 =
                self.conn
                    .query_row("SELECT count(*) FROM outbox WHERE relay_link = ?1", [&relay_link], |r| r.get(0))?;
            if is_local_failure(&e) || waiting > 0 {
                return Err(e);
            }
        }
        Ok(name)
    }

    /// An immediate transaction: it takes the write lock at once (waiting for another process
    /// if needed), so nothing inside it can fail for a busy database half-way.
    fn begin(&self) -> Result<rusqlite::Transaction<'_>, ClientError> {
        Ok(rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?)
    }

    fn profile_content(&self) -> Content {
        Content {
            message_id: random_id(),
            sent_at_ms: now_ms(),
            body: Some(Body::Profile(Profile { display_name: self.profile.name.clone() })),
        }
    }

    fn contact_ids(&self) -> Result<Vec<i64>, ClientError> {
        let mut stmt = self.conn.prepare("SELECT id FROM contacts ORDER BY id")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }

    fn contact_id(&self, name: &str) -> Result<Option<i64>, ClientError> {
        Ok(self.conn.query_row("SELECT id FROM contacts WHERE name = ?1", [name], |r| r.get(0)).optional()?)
    }

    fn contact(&self, name: &str) -> Result<ContactRow, ClientError> {
        let id = self.contact_id(name)?.ok_or_else(|| ClientError::UnknownContact(name.to_string()))?;
        self.contact_by_id(id)
    }

    fn contact_by_id(&self, id: i64) -> Result<ContactRow, ClientError> {
        let row = self.conn.query_row(
            "SELECT id, name, identity_key, group_id, joined_epoch, relay_link, log_id, log_secret, cursor_id, cursor FROM contacts WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                    r.get::<_, Vec<u8>>(7)?,
                    r.get::<_, Vec<u8>>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            },
        )?;
        Ok(ContactRow {
            id: row.0,
            name: row.1,
            identity_key: row.2,
            group_id: row.3,
            joined_epoch: u64::try_from(row.4).unwrap_or(0),
            relay_link: row.5,
            log_id: row.6,
            log_key: signing_key(&row.7)?,
            cursor_id: row.8,
            cursor: u64::try_from(row.9).unwrap_or(0),
        })
    }

    /// Sends a text. It is saved (with its encryption) before any network use; if the relay
    /// cannot be reached the error says so and the message waits in the outbox.
    pub async fn send(&mut self, contact: &str, text: &str) -> Result<MessageView, ClientError> {
        if text.is_empty() {
            return Err(ClientError::BadInput("the message is empty".into()));
        }
        if text.len() > MAX_TEXT {
            return Err(ClientError::BadInput(format!("the message is {} bytes; the limit is {MAX_TEXT}", text.len())));
        }
        let c = self.contact(contact)?;
        let content = Content {
            message_id: random_id(),
            sent_at_ms: now_ms(),
            body: Some(Body::Text(Text { text: text.into() })),
        };
        let row = {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            let mut conv = Conversation::load(&provider, &c.group_id)?
                .ok_or_else(|| ClientError::Corrupt(format!("the conversation with {} is missing", c.name)))?;
            let payload = conv.encrypt(&provider, &self.identity, &content)?;
            tx.execute(
                "INSERT INTO messages (contact_id, message_id, outgoing, text, sent_at, state) VALUES (?1, ?2, 1, ?3, ?4, 'sending')",
                params![c.id, content.message_id, text, to_i64(content.sent_at_ms)],
            )?;
            let row = tx.last_insert_rowid();
            enqueue_log(&tx, c.id, &c.relay_link, &c.log_id, &c.log_key, payload, Some(row))?;
            tx.commit()?;
            row
        };
        // Entries for other, unreachable relays may stay queued; this send failed only if its
        // own message is still waiting.
        let flushed = self.flush_outbox().await;
        let view = self.message_by_row(row)?;
        match flushed {
            Err(e) if is_local_failure(&e) || view.state != "sent" => Err(e),
            _ => Ok(view),
        }
    }

    /// Delivers everything in the outbox, oldest first. A relay that cannot be reached is
    /// skipped for the rest of this pass (its entries keep their order and wait), so one
    /// unreachable relay never holds up conversations on the others.
    pub async fn flush_outbox(&mut self) -> Result<usize, ClientError> {
        type Row = (i64, String, Vec<u8>, Option<Vec<u8>>, String, Vec<u8>, Vec<u8>, Option<i64>);
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, relay_link, target, target_secret, kind, dedup_id, payload, message_row FROM outbox ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut delivered = 0;
        let mut failed: HashMap<String, ClientError> = HashMap::new();
        for (id, link, target, secret, kind, dedup_id, payload, message_row) in rows {
            if failed.contains_key(&link) {
                continue;
            }
            let result = if kind == "log" {
                let key = signing_key(secret.as_deref().unwrap_or_default())?;
                let op = Op::Append(Append { log_id: target, dedup_id, payload });
                self.call(&link, op, Some(&key)).await.map(|r| match r {
                    Reply::Appended(a) => Some(a.seq),
                    _ => None,
                })
            } else {
                let op = Op::SendToQueue(SendToQueue { send_id: target, dedup_id, payload });
                self.call(&link, op, None).await.map(|_| None)
            };
            match result {
                Ok(seq) => {
                    let tx = self.begin()?;
                    if let Some(row) = message_row {
                        tx.execute(
                            "UPDATE messages SET state = 'sent', seq = ?1 WHERE id = ?2",
                            params![seq.map(to_i64), row],
                        )?;
                    }
                    tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
                    tx.commit()?;
                    delivered += 1;
                }
                Err(ClientError::Relay { code, message, .. }) if is_permanent(code) => {
                    // This entry itself is refused: retrying cannot help, and it must not block
                    // the rest.
                    tracing::warn!(?code, %message, "outbox entry refused by the relay");
                    let tx = self.begin()?;
                    if let Some(row) = message_row {
                        tx.execute("UPDATE messages SET state = 'failed' WHERE id = ?1", [row])?;
                    }
                    tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
                    tx.commit()?;
                }
                Err(e) if is_local_failure(&e) => return Err(e),
                Err(e) => {
                    self.conn.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1", [id])?;
                    failed.insert(link, e);
                }
            }
        }
        match failed.into_values().next() {
            None => Ok(delivered),
            Some(cause) => {
                let queued: i64 = self.conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
                Err(ClientError::Undelivered { queued: usize::try_from(queued).unwrap_or(0), cause: Box::new(cause) })
            }
        }
    }

    /// Delivers the outbox, then fetches and processes everything pending: join requests on
    /// our queue, then every conversation's log. A relay that cannot be reached does not stop
    /// the others: the report lists what failed, and only local failures end the sync.
    pub async fn sync(&mut self) -> Result<SyncReport, ClientError> {
        fn note(report: &mut SyncReport, result: Result<usize, ClientError>) -> Result<(), ClientError> {
            match result {
                Ok(n) => {
                    report.delivered += n;
                    Ok(())
                }
                Err(e) if is_local_failure(&e) => Err(e),
                Err(e) => {
                    let e = e.to_string();
                    if !report.failures.contains(&e) {
                        report.failures.push(e);
                    }
                    Ok(())
                }
            }
        }
        let mut report = SyncReport::default();
        let flushed = self.flush_outbox().await;
        note(&mut report, flushed)?;
        let queue = self.sync_queue(&mut report).await.map(|()| 0);
        note(&mut report, queue)?;
        for id in self.contact_ids()? {
            let log = self.sync_log(id, &mut report).await.map(|()| 0);
            note(&mut report, log)?;
        }
        let flushed = self.flush_outbox().await;
        note(&mut report, flushed)?;
        Ok(report)
    }

    async fn sync_queue(&mut self, report: &mut SyncReport) -> Result<(), ClientError> {
        let link = self.profile.relay.to_link();
        loop {
            let read = ReadQueue {
                read_id: self.profile.queue_read_id.clone(),
                after: self.profile.queue_cursor,
                limit: MAX_READ_ENTRIES,
            };
            let key = self.profile.queue_key.clone();
            let Reply::Entries(batch) = self.call(&link, Op::ReadQueue(read), Some(&key)).await? else {
                return Err(ClientError::Protocol("expected Entries".into()));
            };
            let Some(last) = batch.entries.last().map(|e| e.seq) else {
                break;
            };
            for entry in &batch.entries {
                self.handle_queue_entry(entry, report)?;
            }
            let ack = AckQueue { read_id: self.profile.queue_read_id.clone(), up_to: last };
            self.call(&link, Op::AckQueue(ack), Some(&key)).await?;
            if !batch.more {
                break;
            }
        }
        Ok(())
    }

    /// A queue entry is a sealed join request for one of our open invites. Whatever it is, the
    /// cursor moves past it in the same transaction.
    fn handle_queue_entry(&mut self, entry: &Entry, report: &mut SyncReport) -> Result<(), ClientError> {
        let tx = self.begin()?;
        let cursor: i64 = tx.query_row("SELECT queue_cursor FROM profile WHERE id = 1", [], |r| r.get(0))?;
        if to_i64(entry.seq) <= cursor {
            drop(tx);
            self.profile.queue_cursor = u64::try_from(cursor).unwrap_or(0);
            return Ok(()); // another process on this store handled it already
        }
        tx.execute("SAVEPOINT entry", [])?;
        let provider = Provider::new(&tx);
        let outcome = (|| -> Result<Option<String>, ClientError> {
            let invites: Vec<(Vec<u8>, Vec<u8>, i64)> = {
                let mut stmt = tx.prepare("SELECT invite_id, box_private, expires_at FROM invites WHERE used = 0")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let opened = invites.iter().find_map(|(id, private, expires)| {
                seal::open(&provider, self.profile.suite, private, id, &entry.payload)
                    .ok()
                    .map(|p| (id.clone(), *expires, p))
            });
            let Some((invite_id, expires_at, plaintext)) = opened else {
                return Err(ClientError::BadInput("a queue entry matches no open invite".into()));
            };
            // Arrival is known only to the hour: an answer that arrived in an hour starting
            // after the expiry is refused, so an invite has up to an hour of grace.
            if to_i64(entry.received_hour.saturating_mul(3600)) > expires_at {
                return Err(ClientError::Invite(E2eError::ExpiredInvite));
            }
            let join = JoinRequest::decode(plaintext.as_slice())
                .map_err(|_| ClientError::BadInput("undecodable join request".into()))?;
            if join.invite_id != invite_id || join.cursor_id.len() != ID_LEN {
                return Err(ClientError::BadInput("join request for another invite".into()));
            }
            let log = join.log.ok_or_else(|| ClientError::BadInput("join request without a log".into()))?;
            let relay = log.relay.ok_or_else(|| ClientError::BadInput("join request without a relay".into()))?;
            // Our invite named our own relay, so the conversation's log must be there: a join
            // request must not point us at an address of the sender's choosing.
            let own = &self.profile.relay;
            if relay.cert_sha256 != own.cert_sha256 || relay.door != own.door {
                return Err(ClientError::BadInput("join request names a relay other than ours".into()));
            }
            if log.log_id.len() != ID_LEN {
                return Err(ClientError::BadInput("join request with a bad log id".into()));
            }
            let log_key = signing_key(&log.log_secret)?;
            let mut conv = Conversation::join(&provider, &join.welcome)?;
            let peers = conv.peers(&self.profile.identity_key);
            let [peer] = peers.as_slice() else {
                return Err(ClientError::BadInput("a 1:1 invite was answered with a group".into()));
            };
            let name = unique_name(&tx, &clean_name(&join.display_name))?;
            let relay_link = own.to_link();
            tx.execute(
                "INSERT INTO contacts (name, identity_key, group_id, joined_epoch, relay_link, log_id, log_secret, cursor_id, cursor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![name, peer, conv.group_id(), to_i64(conv.epoch()), relay_link, log.log_id, log.log_secret, join.cursor_id, to_i64(join.cursor_position), to_i64(now_ms())],
            )?;
            let contact_id = tx.last_insert_rowid();
            tx.execute("UPDATE invites SET used = 1 WHERE invite_id = ?1", [&invite_id])?;
            let payload = conv.encrypt(&provider, &self.identity, &self.profile_content())?;
            enqueue_log(&tx, contact_id, &relay_link, &log.log_id, &log_key, payload, None)?;
            Ok(Some(name))
        })();
        if let Some(name) = settle_entry(&tx, outcome, report)? {
            report.new_contacts.push(name);
        }
        tx.execute("UPDATE profile SET queue_cursor = MAX(queue_cursor, ?1) WHERE id = 1", [to_i64(entry.seq)])?;
        tx.commit()?;
        self.profile.queue_cursor = entry.seq;
        Ok(())
    }

    async fn sync_log(&mut self, contact_id: i64, report: &mut SyncReport) -> Result<(), ClientError> {
        loop {
            let c = self.contact_by_id(contact_id)?;
            let read = ReadLog { log_id: c.log_id.clone(), after: c.cursor, limit: MAX_READ_ENTRIES };
            let Reply::Entries(batch) = self.call(&c.relay_link, Op::ReadLog(read), Some(&c.log_key)).await? else {
                return Err(ClientError::Protocol("expected Entries".into()));
            };
            let Some(last) = batch.entries.last().map(|e| e.seq) else {
                break;
            };
            for entry in &batch.entries {
                self.handle_log_entry(contact_id, entry, report)?;
            }
            let ack = AckLog { log_id: c.log_id.clone(), cursor_id: c.cursor_id.clone(), up_to: last };
            self.call(&c.relay_link, Op::AckLog(ack), Some(&c.log_key)).await?;
            if !batch.more {
                break;
            }
        }
        Ok(())
    }

    /// Processes one log entry in one transaction with the cursor move, so an entry is never
    /// processed twice and never skipped by a crash.
    fn handle_log_entry(&mut self, contact_id: i64, entry: &Entry, report: &mut SyncReport) -> Result<(), ClientError> {
        // The cursor is read inside the (immediate) transaction: another process working on
        // the same store may have moved it meanwhile.
        let tx = self.begin()?;
        let c = self.contact_by_id(contact_id)?;
        if entry.seq <= c.cursor {
            return Ok(());
        }
        let own: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM own_entries WHERE contact_id = ?1 AND dedup_id = ?2",
                params![c.id, entry.dedup_id],
                |r| r.get(0),
            )
            .optional()?;
        if own.is_some() {
            // Our own entry: if its acknowledgement was lost, the log is the proof of delivery.
            let pending: Option<(i64, Option<i64>)> = tx
                .query_row("SELECT id, message_row FROM outbox WHERE dedup_id = ?1", [&entry.dedup_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((outbox_id, row)) = pending {
                if let Some(row) = row {
                    tx.execute(
                        "UPDATE messages SET state = 'sent', seq = ?1 WHERE id = ?2",
                        params![to_i64(entry.seq), row],
                    )?;
                }
                tx.execute("DELETE FROM outbox WHERE id = ?1", [outbox_id])?;
            }
        } else {
            tx.execute("SAVEPOINT entry", [])?;
            let provider = Provider::new(&tx);
            let outcome = (|| -> Result<Option<MessageView>, ClientError> {
                let header = peek_header(&entry.payload)?;
                if header.epoch < c.joined_epoch {
                    return Ok(None); // from before we joined
                }
                let mut conv = Conversation::load(&provider, &c.group_id)?
                    .ok_or_else(|| ClientError::Corrupt(format!("the conversation with {} is missing", c.name)))?;
                match conv.process(&provider, &entry.payload)? {
                    Incoming::Content { sender, content } => {
                        if sender != c.identity_key {
                            return Err(ClientError::BadInput("content from a key that is not this contact's".into()));
                        }
                        self.store_content(&tx, &c, entry.seq, content, report)
                    }
                    Incoming::Commit { .. } | Incoming::Own => Ok(None),
                }
            })();
            if let Some(view) = settle_entry(&tx, outcome, report)? {
                report.messages.push(view);
            }
        }
        tx.execute("UPDATE contacts SET cursor = MAX(cursor, ?1) WHERE id = ?2", params![to_i64(entry.seq), c.id])?;
        tx.commit()?;
        Ok(())
    }

    fn store_content(
        &self,
        tx: &Connection,
        c: &ContactRow,
        seq: u64,
        content: Content,
        report: &mut SyncReport,
    ) -> Result<Option<MessageView>, ClientError> {
        match content.body {
            Some(Body::Text(t)) => {
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO messages (contact_id, message_id, seq, outgoing, text, sent_at, state) VALUES (?1, ?2, ?3, 0, ?4, ?5, 'received')",
                    params![c.id, content.message_id, to_i64(seq), t.text, to_i64(content.sent_at_ms)],
                )?;
                if inserted == 0 {
                    return Ok(None); // the same message id again: shown once
                }
                Ok(Some(MessageView {
                    id: hex::encode(&content.message_id),
                    sender: c.name.clone(),
                    text: t.text,
                    outgoing: false,
                    sent_at: content.sent_at_ms,
                    seq: Some(seq),
                    state: "received".into(),
                    conversation: c.name.clone(),
                }))
            }
            Some(Body::Profile(p)) => {
                let named_by_user: bool =
                    tx.query_row("SELECT named_by_user FROM contacts WHERE id = ?1", [c.id], |r| r.get(0))?;
                let wanted = clean_name(&p.display_name);
                if !named_by_user && wanted != c.name {
                    let name = unique_name(tx, &wanted)?;
                    tx.execute("UPDATE contacts SET name = ?1 WHERE id = ?2", params![name, c.id])?;
                    report.renamed.push((c.name.clone(), name));
                }
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Syncs, then waits for the relays to announce something new and syncs again, until
    /// `until` (or forever). `on_report` sees every sync's report. Without announcements it
    /// resyncs every minute anyway, in case one was missed (a relay restarted, a relay node's
    /// database listener reconnected); while a relay is unreachable it retries every few
    /// seconds.
    pub async fn follow(
        &mut self,
        until: Option<tokio::time::Instant>,
        mut on_report: impl FnMut(&SyncReport),
    ) -> Result<(), ClientError> {
        const RESYNC: Duration = Duration::from_secs(60);
        const RETRY: Duration = Duration::from_secs(3);
        loop {
            // Subscribe before syncing, so nothing stored in between goes unannounced.
            let subscribed = self.subscribe_all().await;
            let healthy = match self.sync().await {
                Ok(report) => {
                    on_report(&report);
                    let past_deadline = until.is_some_and(|u| tokio::time::Instant::now() >= u);
                    if !report.new_contacts.is_empty() && !past_deadline {
                        // New conversations: subscribe to them and look again right away.
                        continue;
                    }
                    subscribed.is_ok() && report.failures.is_empty()
                }
                Err(e) if matches!(e.kind(), crate::ErrorKind::Retry | crate::ErrorKind::Blocked) => {
                    tracing::warn!(error = %e, "sync failed; retrying");
                    false
                }
                Err(e) => return Err(e),
            };
            let now = tokio::time::Instant::now();
            if until.is_some_and(|u| now >= u) {
                return Ok(());
            }
            let wait = if healthy { RESYNC } else { RETRY };
            let wait = until.map_or(wait, |u| wait.min(u - now));
            if healthy {
                self.wait_for_notice(wait).await;
            } else {
                self.relays.clear();
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Subscribes to our queue and every conversation's log on their relays.
    async fn subscribe_all(&mut self) -> Result<(), ClientError> {
        let mut wanted: Vec<(String, Subscribe, SigningKey)> = vec![(
            self.profile.relay.to_link(),
            Subscribe { log_id: Vec::new(), read_id: self.profile.queue_read_id.clone() },
            self.profile.queue_key.clone(),
        )];
        for id in self.contact_ids()? {
            let c = self.contact_by_id(id)?;
            wanted.push((c.relay_link, Subscribe { log_id: c.log_id, read_id: Vec::new() }, c.log_key));
        }
        // One relay failing does not stop the subscriptions on the others.
        let mut first_error = None;
        for (link, sub, key) in wanted {
            let result = match self.relay(&link).await {
                Ok(rc) => rc.subscribe(sub, &key).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.relays.remove(&link);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits until any relay pushes a notice, a connection breaks, or `wait` passes.
    async fn wait_for_notice(&mut self, wait: Duration) {
        if self.relays.is_empty() {
            tokio::time::sleep(wait).await;
            return;
        }
        let broken = {
            let waits: Vec<_> = self.relays.values_mut().map(|rc| Box::pin(rc.next_notice())).collect();
            matches!(tokio::time::timeout(wait, futures_util::future::select_all(waits)).await, Ok((Err(_), _, _)))
        };
        if broken {
            // A connection broke: start the next round on fresh ones.
            self.relays.clear();
        }
    }

    /// All contacts, oldest first.
    pub fn contacts(&self) -> Result<Vec<ContactView>, ClientError> {
        let mut stmt = self.conn.prepare("SELECT name, identity_key, created_at FROM contacts ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(ContactView {
                name: r.get(0)?,
                identity_key: hex::encode(r.get::<_, Vec<u8>>(1)?),
                since: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A conversation in log order; messages still waiting to be sent come last.
    pub fn messages(&self, contact: &str) -> Result<Vec<MessageView>, ClientError> {
        let c = self.contact(contact)?;
        let mut stmt =
            self.conn.prepare("SELECT id FROM messages WHERE contact_id = ?1 ORDER BY seq IS NULL, seq, id")?;
        let ids: Vec<i64> = stmt.query_map([c.id], |r| r.get(0))?.collect::<Result<_, _>>()?;
        ids.into_iter().map(|id| self.message_by_row(id)).collect()
    }

    fn message_by_row(&self, row: i64) -> Result<MessageView, ClientError> {
        Ok(self.conn.query_row(
            "SELECT m.message_id, m.outgoing, m.text, m.sent_at, m.seq, m.state, c.name FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.id = ?1",
            [row],
            |r| {
                let outgoing: bool = r.get(1)?;
                let contact: String = r.get(6)?;
                Ok(MessageView {
                    id: hex::encode(r.get::<_, Vec<u8>>(0)?),
                    sender: if outgoing { self.profile.name.clone() } else { contact.clone() },
                    text: r.get(2)?,
                    outgoing,
                    sent_at: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    seq: r.get::<_, Option<i64>>(4)?.and_then(|s| u64::try_from(s).ok()),
                    state: r.get(5)?,
                    conversation: contact,
                })
            },
        )?)
    }

    /// Closes relay connections politely.
    pub async fn close(mut self) {
        for (_, rc) in self.relays.drain() {
            rc.close().await;
        }
    }
}

/// True for failures of this device (storage, damaged state): they end an operation instead
/// of being blamed on the entry or the relay.
fn is_local_failure(e: &ClientError) -> bool {
    matches!(e, ClientError::Io(_) | ClientError::Corrupt(_) | ClientError::E2e(E2eError::Storage(_)))
}

/// Ends the `entry` savepoint of one queue or log entry. A fault of the entry (undecodable,
/// not decryptable, not from this contact) is undone and counted as skipped, so the cursor
/// moves past it; a failure of this device stops the sync with the cursor where it was.
fn settle_entry<T>(
    tx: &Connection,
    outcome: Result<Option<T>, ClientError>,
    report: &mut SyncReport,
) -> Result<Option<T>, ClientError> {
    let value = match outcome {
        Ok(value) => value,
        Err(e) if is_local_failure(&e) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "skipped an entry");
            tx.execute("ROLLBACK TO entry", [])?;
            report.skipped += 1;
            None
        }
    };
    tx.execute("RELEASE entry", [])?;
    Ok(value)
}

/// Relay refusals that are about the request itself, so retrying the same bytes cannot help.
/// Anything else (an overloaded relay, a version it does not speak yet, a code this build does
/// not know) keeps the entry for later.
fn is_permanent(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::BadRequest | ErrorCode::NotMls | ErrorCode::TooLarge | ErrorCode::Unauthorized)
}

/// Puts an MLS message for a log in the outbox and remembers its dedup id as ours.
fn enqueue_log(
    tx: &Connection,
    contact_id: i64,
    relay_link: &str,
    log_id: &[u8],
    log_key: &SigningKey,
    payload: Vec<u8>,
    message_row: Option<i64>,
) -> Result<(), ClientError> {
    let dedup = random_id();
    tx.execute(
        "INSERT INTO outbox (relay_link, target, target_secret, kind, dedup_id, payload, message_row) VALUES (?1, ?2, ?3, 'log', ?4, ?5, ?6)",
        params![relay_link, log_id, log_key.to_bytes().to_vec(), dedup, payload, message_row],
    )?;
    tx.execute("INSERT INTO own_entries (contact_id, dedup_id) VALUES (?1, ?2)", params![contact_id, dedup])?;
    Ok(())
}

/// `base`, or `base-2`, `base-3`, … whichever no contact has yet.
fn unique_name(conn: &Connection, base: &str) -> Result<String, ClientError> {
    let mut candidate = base.to_string();
    for n in 2.. {
        let taken: Option<i64> =
            conn.query_row("SELECT 1 FROM contacts WHERE name = ?1", [&candidate], |r| r.get(0)).optional()?;
        if taken.is_none() {
            return Ok(candidate);
        }
        candidate = format!("{base}-{n}");
    }
    Ok(candidate)
}
