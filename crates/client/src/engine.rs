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
    content::{Body, Content, MAX_NAME, Profile, Receipt, ReceiptKind},
    invite::{self, InviteParams},
    proto::{JoinRequest, LogRef},
    seal,
};
use tamizdat_wire::{
    limits::{ID_LEN, MAX_READ_ENTRIES},
    mls::{ContentType, MlsHeader, peek_header},
    proto::{
        AckLog, AckQueue, Append, CreateLog, CreateQueue, Entry, ErrorCode, Op, ReadLog, ReadQueue, RelayDescriptor,
        Reply, SendToQueue, Subscribe,
    },
};

use crate::{
    ClientError,
    paths::{Net, NetOptions, saved_proxy},
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

/// A message or a membership event as listed to the user.
#[derive(Clone, Debug, Serialize)]
pub struct MessageView {
    /// Message id (hex), the same on every member's device for texts.
    pub id: String,
    /// `text`, `file`, or `event` for joins, leaves and removals.
    pub kind: String,
    /// Who sent it (our own name for outgoing messages).
    pub sender: String,
    /// The text (for events, what happened).
    pub text: String,
    /// Sent by us.
    pub outgoing: bool,
    /// Unix milliseconds, by the sender's clock.
    pub sent_at: u64,
    /// Position in the conversation's log, once the relay stored it.
    pub seq: Option<u64>,
    /// Ours: `uploading` (files), `sending`, `sent`, `delivered` (to every recipient), `read`
    /// (by every recipient) or `failed`; theirs: `received`.
    pub state: String,
    /// The conversation it belongs to: the contact's name or the group's.
    pub conversation: String,
    /// The conversation is a group.
    pub group: bool,
    /// The message this one answers.
    pub reply_to: Option<ReplyView>,
    /// Its sender changed the text.
    pub edited: bool,
    /// Its sender deleted it for everyone: the text is gone.
    pub deleted: bool,
    /// Reactions, one per member.
    pub reactions: Vec<ReactionView>,
    /// Unix milliseconds when it disappears (by this device's clock).
    pub expires_at: Option<u64>,
    /// Theirs: Unix milliseconds we read it.
    pub read_at: Option<u64>,
    /// Ours: how many recipients confirmed delivery, and how many read it.
    pub delivered_to: u32,
    /// Ours: how many recipients read it.
    pub read_by: u32,
    /// The file, for `file` messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<crate::AttachmentView>,
}

/// The message a reply answers, as far as this device still has it.
#[derive(Clone, Debug, Serialize)]
pub struct ReplyView {
    /// Its id (hex).
    pub id: String,
    /// Its sender, if it is still here.
    pub sender: Option<String>,
    /// The start of its text (empty if it is gone).
    pub text: String,
}

/// One emoji and who reacted with it.
#[derive(Clone, Debug, Serialize)]
pub struct ReactionView {
    /// The emoji.
    pub emoji: String,
    /// Who, by the names this device knows them by.
    pub by: Vec<String>,
}

/// What a sync found.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    /// Contacts made by people who accepted our invites.
    pub new_contacts: Vec<String>,
    /// Groups we were added to.
    pub new_groups: Vec<String>,
    /// Contacts that told us their name (renamed from a placeholder).
    pub renamed: Vec<(String, String)>,
    /// New incoming messages and events, in order.
    pub messages: Vec<MessageView>,
    /// Messages that changed: edited, deleted, reacted to, delivered or read.
    pub changed: Vec<MessageView>,
    /// Typing indicators that arrived.
    pub typing: Vec<crate::chat::TypingView>,
    /// Outbox entries delivered.
    pub delivered: usize,
    /// Log and queue entries that could not be processed and were skipped.
    pub skipped: usize,
    /// Our membership changes that lost a race for their epoch and were made again.
    pub retried_commits: usize,
    /// Log entries taken from the relay's notices, without a read.
    pub from_notices: usize,
    /// What could not be reached or done this time (retried on the next sync).
    pub failures: Vec<String>,
}

pub(crate) struct ProfileRow {
    pub(crate) name: String,
    pub(crate) identity_key: Vec<u8>,
    pub(crate) suite: Ciphersuite,
    pub(crate) relay: RelayDescriptor,
    pub(crate) queue_read_id: Vec<u8>,
    pub(crate) queue_send_id: Vec<u8>,
    pub(crate) queue_key: SigningKey,
    pub(crate) queue_cursor: u64,
}

pub(crate) struct ContactRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) identity_key: Vec<u8>,
    /// The 1:1 conversation messages to this contact go to.
    pub(crate) conversation_id: i64,
}

/// A conversation: a contact's 1:1 chat or a group.
#[derive(Clone)]
pub(crate) struct ConvRow {
    pub(crate) id: i64,
    pub(crate) is_group: bool,
    /// The group's name, or the contact's.
    pub(crate) name: String,
    pub(crate) contact_id: Option<i64>,
    pub(crate) group_id: Vec<u8>,
    pub(crate) joined_epoch: u64,
    pub(crate) relay_link: String,
    pub(crate) log_id: Vec<u8>,
    pub(crate) log_key: SigningKey,
    pub(crate) cursor_id: Vec<u8>,
    pub(crate) cursor: u64,
    pub(crate) active: bool,
    pub(crate) sent_since_update: u64,
    pub(crate) updated_at: u64,
    /// Disappearing-message timer in seconds (0: off).
    pub(crate) expire_secs: u32,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn now_secs() -> u64 {
    now_ms() / 1000
}

pub(crate) fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; ID_LEN];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

pub(crate) fn signing_key(secret: &[u8]) -> Result<SigningKey, ClientError> {
    let bytes: [u8; 32] =
        secret.try_into().map_err(|_| ClientError::Corrupt("a stored key has the wrong length".into()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A display name someone else chose: printable, trimmed, bounded, never empty.
pub(crate) fn clean_name(raw: &str) -> String {
    let cleaned: String = raw.chars().filter(|c| !c.is_control()).collect();
    let mut name = cleaned.trim().to_string();
    while name.len() > MAX_NAME {
        name.pop();
    }
    if name.is_empty() { "contact".into() } else { name }
}

pub(crate) fn check_own_name(name: &str) -> Result<(), ClientError> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) || name != name.trim() {
        return Err(ClientError::BadInput(format!(
            "a name must be 1 to {MAX_NAME} bytes of printable text without surrounding spaces"
        )));
    }
    Ok(())
}

/// A Tamizdat identity on this device, opened with its passphrase.
pub struct Client {
    pub(crate) conn: Connection,
    pub(crate) identity: Identity,
    pub(crate) profile: ProfileRow,
    pub(crate) relays: HashMap<String, RelayClient>,
    pub(crate) net: Net,
    /// Why the last attempt to reach a relay failed, until one succeeds (for status lines).
    pub(crate) last_failure: Option<(crate::ErrorKind, String)>,
}

impl Client {
    /// Creates an identity in `home` that uses the relay of `relay_link`. The relay is asked
    /// for a contact queue first, so nothing is created if it cannot be reached.
    pub async fn init(home: &Path, passphrase: &str, name: &str, relay_link: &str) -> Result<Self, ClientError> {
        Self::init_with(home, passphrase, name, relay_link, NetOptions::default()).await
    }

    /// [`Self::init`] with network options (a proxy).
    pub async fn init_with(
        home: &Path,
        passphrase: &str,
        name: &str,
        relay_link: &str,
        options: NetOptions,
    ) -> Result<Self, ClientError> {
        check_own_name(name)?;
        if store::exists(home) {
            return Err(ClientError::AlreadyInitialised(home.display().to_string()));
        }
        let relay =
            RelayDescriptor::from_link(relay_link).map_err(|e| ClientError::BadInput(format!("relay link: {e}")))?;
        let queue_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let net = Net::new(home, options.proxy.clone())?;
        let mut rc = RelayClient::connect_with(&net.dialer, &relay, &relay.parsed_endpoints()).await?;
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
        let client = Self::from_conn(conn, net)?;
        store::finish_create(home)?;
        Ok(client)
    }

    /// Opens the identity in `home`.
    pub fn open(home: &Path, passphrase: &str) -> Result<Self, ClientError> {
        Self::open_with(home, passphrase, NetOptions::default())
    }

    /// [`Self::open`] with network options; a proxy given here wins over the `proxy` setting.
    pub fn open_with(home: &Path, passphrase: &str, options: NetOptions) -> Result<Self, ClientError> {
        let conn = store::open(home, passphrase)?;
        let proxy = match options.proxy {
            Some(p) => Some(p),
            None => saved_proxy(&conn)?.map(|s| s.parse()).transpose()?,
        };
        let mut client = Self::from_conn(conn, Net::new(home, proxy)?)?;
        client.load_network()?;
        Ok(client)
    }

    fn from_conn(conn: Connection, net: Net) -> Result<Self, ClientError> {
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
        Ok(Self { conn, identity, profile, relays: HashMap::new(), net, last_failure: None })
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
        if self.relays.get(link).is_some_and(|rc| self.connection_spent(rc)) {
            self.relays.remove(link);
        }
        if !self.relays.contains_key(link) {
            let descriptor = RelayDescriptor::from_link(link)?;
            let rc = self.open_relay(&descriptor).await?;
            self.relays.insert(link.to_string(), rc);
        }
        self.relays.get_mut(link).ok_or_else(|| ClientError::Protocol("relay connection vanished".into()))
    }

    /// A call that drops a broken connection so the next call reconnects.
    ///
    /// Requests that are safe to repeat (everything but creating queues and logs: appends and
    /// sends carry dedup ids) are retried after a short backoff when the connection fails,
    /// so a blip does not leave a message waiting for the next command.
    pub(crate) async fn call(&mut self, link: &str, op: Op, key: Option<&SigningKey>) -> Result<Reply, ClientError> {
        const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];
        let repeatable = !matches!(op, Op::CreateQueue(_) | Op::CreateLog(_) | Op::CreateBlob(_));
        let mut op = op;
        let mut attempt = 0;
        loop {
            // On a network that freezes busy connections, replies are kept small.
            match &mut op {
                Op::ReadLog(r) => r.max_bytes = self.read_bytes(),
                Op::ReadQueue(r) => r.max_bytes = self.read_bytes(),
                Op::GetBlob(r) => r.max_bytes = self.read_bytes(),
                _ => {}
            }
            let result = match self.relay(link).await {
                Ok(rc) => rc.call(op.clone(), key).await,
                Err(e) => Err(e),
            };
            self.last_failure = match &result {
                Err(e @ ClientError::Transport(_)) => Some((e.kind(), e.to_string())),
                _ => None,
            };
            if matches!(result, Err(ClientError::Transport(_) | ClientError::Protocol(_))) {
                self.relays.remove(link);
            }
            if let Err(e) = &result
                && crate::paths::is_stall(e)
            {
                self.note_freeze()?;
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

    /// Accepts an invite (a link, or a code that stands for one): starts the conversation on the inviter's relay and sends the
    /// inviter a sealed join request. Returns the contact's name.
    pub async fn accept(&mut self, link: &str, alias: Option<&str>) -> Result<String, ClientError> {
        let resolved;
        let link = if crate::codes::is_invite_code(link) {
            resolved = self.resolve_invite_code(link).await?;
            resolved.as_str()
        } else {
            link
        };
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
        // Accepting as an existing contact with another key says: this is them, with a new
        // identity (a new device, a reinstall). That is a key change the user must confirm.
        let mut changed_contact = None;
        if let Some(alias) = alias {
            check_own_name(alias)?;
            match self.name_owner(alias)? {
                // The same person under the same name is fine (two invites crossed).
                Some(key) if key == body.identity_key => {}
                Some(key) if key.is_empty() => {
                    return Err(ClientError::BadInput(format!(
                        "you already have a group named {alias:?}; choose another --as"
                    )));
                }
                Some(_) => changed_contact = self.contact_by_name(alias)?.map(|c| c.id),
                None => {}
            }
        }
        let relay =
            body.relays.first().ok_or_else(|| ClientError::BadInput("the invite names no relay".into()))?.clone();
        let relay_link = relay.to_link();

        // On the relay first: a log, and a cursor for each member, so nothing is deleted
        // before both have read it. If this fails, nothing changed locally.
        let (own_cursor, peer_cursor) = (random_id(), random_id());
        let (log_id, log_key) = self.create_log(&relay_link, &[&own_cursor, &peer_cursor]).await?;

        // Then locally, in one transaction: the group, the contact and the outbox.
        let name = {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            // The log is new and only we hold its key, so no other commit can take epoch 0:
            // merging before the relay stores it is safe here.
            let (mut conv, commit, welcome) =
                Conversation::start(&provider, &self.identity, verified.suite, verified.key_package.clone())?;
            conv.confirm_commit(&provider)?;
            let log =
                LogRef { relay: Some(relay.clone()), log_id: log_id.clone(), log_secret: log_key.to_bytes().to_vec() };
            if let Some(contact_id) = changed_contact {
                crate::verify::record_key_change(&tx, contact_id, &body.identity_key)?;
            }
            let conv_id = insert_conversation(&tx, None, &conv, &log, &own_cursor, 0)?;
            let placeholder = format!("invite-{}", hex::encode(&body.identity_key[..3]));
            let (name, contact_id) =
                attach_direct(&tx, &body.identity_key, alias.unwrap_or(&placeholder), alias.is_some(), conv_id)?;
            let c = conv_by_id(&tx, conv_id)?;
            if changed_contact.is_some() {
                let text = format!("{name}'s safety number changed; compare it with `tamizdat verify {name}`");
                crate::chat::insert_event_row(&tx, conv_id, &body.identity_key, false, &text, None)?;
            }
            enqueue_log(&tx, &c, commit, None)?;
            let join = JoinRequest {
                invite_id: body.invite_id.clone(),
                welcome,
                log: Some(log),
                display_name: self.profile.name.clone(),
                cursor_id: peer_cursor,
                cursor_position: 0,
            };
            let sealed = seal::seal(&provider, verified.suite, &body.box_key, &body.invite_id, &join.encode_to_vec())?;
            tx.execute(
                "INSERT INTO outbox (relay_link, target, kind, dedup_id, payload) VALUES (?1, ?2, 'queue', ?3, ?4)",
                params![relay_link, body.send_id, random_id(), sealed],
            )?;
            enqueue_content(&tx, &provider, &self.identity, &mut conv, &c, &self.profile_content(), None)?;
            self.offer_key_packages(&tx, &provider, &mut conv, &c, contact_id)?;
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

    /// Creates a log on a relay, with a cursor at its start for each of `cursors`, so nothing
    /// is deleted before each of those readers has read it. Returns its id and key.
    pub(crate) async fn create_log(
        &mut self,
        link: &str,
        cursors: &[&[u8]],
    ) -> Result<(Vec<u8>, SigningKey), ClientError> {
        let log_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let create = Op::CreateLog(CreateLog { log_key: log_key.verifying_key().to_bytes().to_vec() });
        let Reply::LogCreated(created) = self.call(link, create, Some(&log_key)).await? else {
            return Err(ClientError::Protocol("expected LogCreated".into()));
        };
        for cursor in cursors {
            let ack = AckLog { log_id: created.log_id.clone(), cursor_id: cursor.to_vec(), up_to: 0 };
            self.call(link, Op::AckLog(ack), Some(&log_key)).await?;
        }
        Ok((created.log_id, log_key))
    }

    /// An immediate transaction: it takes the write lock at once (waiting for another process
    /// if needed), so nothing inside it can fail for a busy database half-way.
    pub(crate) fn begin(&self) -> Result<rusqlite::Transaction<'_>, ClientError> {
        Ok(rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?)
    }

    pub(crate) fn profile_content(&self) -> Content {
        content(Body::Profile(Profile { display_name: self.profile.name.clone() }))
    }

    /// The identity key of whoever holds `name` (a contact), an empty key for a group, or `None`.
    pub(crate) fn name_owner(&self, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
        if let Some(c) = self.contact_by_name(name)? {
            return Ok(Some(c.identity_key));
        }
        let group: Option<i64> =
            self.conn.query_row("SELECT id FROM conversations WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        Ok(group.map(|_| Vec::new()))
    }

    /// Active conversations, oldest first.
    fn active_conversations(&self) -> Result<Vec<i64>, ClientError> {
        let mut stmt = self.conn.prepare("SELECT id FROM conversations WHERE state = 'active' ORDER BY id")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }

    pub(crate) fn contact_by_name(&self, name: &str) -> Result<Option<ContactRow>, ClientError> {
        contact_where(&self.conn, "name = ?1", &name)
    }

    pub(crate) fn contact(&self, name: &str) -> Result<ContactRow, ClientError> {
        self.contact_by_name(name)?.ok_or_else(|| ClientError::UnknownContact(name.to_string()))
    }

    /// The conversation `name` means: a contact's 1:1 chat, or a group.
    pub(crate) fn conversation(&self, name: &str) -> Result<ConvRow, ClientError> {
        if let Some(c) = self.contact_by_name(name)? {
            return conv_by_id(&self.conn, c.conversation_id);
        }
        let group: Option<i64> = self
            .conn
            .query_row("SELECT id FROM conversations WHERE kind = 'group' AND name = ?1", [name], |r| r.get(0))
            .optional()?;
        match group {
            Some(id) => conv_by_id(&self.conn, id),
            None => Err(ClientError::UnknownContact(name.to_string())),
        }
    }

    /// Sends a text to a contact or a group. It is saved (with its encryption) before any
    /// network use; if the relay cannot be reached the error says so and the message waits in
    /// the outbox.
    pub async fn send(&mut self, to: &str, text: &str) -> Result<MessageView, ClientError> {
        self.send_text(to, text, Vec::new()).await
    }

    /// Encrypts `body` for conversation `c` into the outbox, in one transaction with `local`,
    /// the change it makes on this device (which returns the message row the entry delivers,
    /// if any), then delivers the outbox. If the relay cannot be reached the change is kept,
    /// the entry waits, and the error says so. Stamps the conversation's disappearing timer.
    pub(crate) async fn post(
        &mut self,
        c: &ConvRow,
        mut body: Content,
        local: impl FnOnce(&Connection) -> Result<Option<i64>, ClientError>,
    ) -> Result<Option<i64>, ClientError> {
        if let Some(warning) = crate::verify::unacknowledged_change(&self.conn, c)? {
            return Err(ClientError::KeyChanged(warning));
        }
        body.expire_secs = c.expire_secs;
        let (row, dedup) = {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            let mut conv = load_conversation(&provider, c)?;
            let row = local(&tx)?;
            if let Some(row) = row {
                let others = conv.members().len().saturating_sub(1);
                tx.execute("UPDATE messages SET recipients = ?1 WHERE id = ?2", params![to_i64(others as u64), row])?;
            }
            let dedup = enqueue_content(&tx, &provider, &self.identity, &mut conv, c, &body, row)?;
            tx.execute("UPDATE conversations SET sent_since_update = sent_since_update + 1 WHERE id = ?1", [c.id])?;
            tx.commit()?;
            (row, dedup)
        };
        // Entries for other, unreachable relays may stay queued; this post failed only if its
        // own entry is still waiting.
        let flushed = self.flush_outbox().await;
        let waiting: Option<i64> =
            self.conn.query_row("SELECT 1 FROM outbox WHERE dedup_id = ?1", [&dedup], |r| r.get(0)).optional()?;
        match flushed {
            Err(e) if is_local_failure(&e) || waiting.is_some() => return Err(e),
            _ => {}
        }
        // Refresh our keys in this conversation when it is due; a failure here is retried by
        // the next sync and does not make the post a failure.
        if let Err(e) = self.refresh_if_due(c.id).await {
            tracing::warn!(error = %e, "key refresh postponed");
        }
        Ok(row)
    }

    /// Delivers everything in the outbox, oldest first. A relay that cannot be reached is
    /// skipped for the rest of this pass (its entries keep their order and wait), so one
    /// unreachable relay never holds up conversations on the others.
    pub async fn flush_outbox(&mut self) -> Result<usize, ClientError> {
        self.flush_outbox_into(&mut SyncReport::default()).await
    }

    /// [`Client::flush_outbox`], with what reading a log on the way finds going to `report`.
    pub(crate) async fn flush_outbox_into(&mut self, report: &mut SyncReport) -> Result<usize, ClientError> {
        /// How often one entry may find its group moved on within one flush.
        const MAX_REENCRYPTIONS: usize = 4;
        type Row = (
            i64,
            String,
            Vec<u8>,
            Option<Vec<u8>>,
            String,
            Vec<u8>,
            Vec<u8>,
            Option<i64>,
            Option<i64>,
            Option<Vec<u8>>,
        );
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, relay_link, target, target_secret, kind, dedup_id, payload, message_row, conversation_id, content FROM outbox ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut delivered = 0;
        let mut failed: HashMap<String, ClientError> = HashMap::new();
        for (id, link, target, secret, kind, dedup_id, mut payload, message_row, conv_id, body) in rows {
            if failed.contains_key(&link) {
                continue;
            }
            let mut reencryptions = 0;
            let mut group_gone = false;
            let result = loop {
                let result = if kind == "log" {
                    let key = signing_key(secret.as_deref().unwrap_or_default())?;
                    let op = Op::Append(Append {
                        log_id: target.clone(),
                        dedup_id: dedup_id.clone(),
                        payload: payload.clone(),
                    });
                    self.call(&link, op, Some(&key)).await.map(|r| match r {
                        Reply::Appended(a) => Some(a.seq),
                        _ => None,
                    })
                } else {
                    let op = Op::SendToQueue(SendToQueue {
                        send_id: target.clone(),
                        dedup_id: dedup_id.clone(),
                        payload: payload.clone(),
                    });
                    self.call(&link, op, None).await.map(|_| None)
                };
                // The group moved to a new epoch before the relay took this: read the commit
                // and encrypt the same content again.
                let stale = matches!(result, Err(ClientError::Relay { code: ErrorCode::StaleEpoch, .. }));
                match (stale, conv_id, &body) {
                    (true, Some(conv_id), Some(body)) if reencryptions < MAX_REENCRYPTIONS => {
                        reencryptions += 1;
                        match self.reencrypt(conv_id, id, body, report).await {
                            Ok(Some(fresh)) => payload = fresh,
                            Ok(None) => {
                                group_gone = true;
                                break result;
                            }
                            Err(e) => break Err(e),
                        }
                    }
                    _ => break result,
                }
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
                Err(ClientError::Relay { code, message, .. }) if is_permanent(code) || group_gone => {
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

    /// Encrypts an outbox entry's content again in its conversation's newest epoch. `None` if
    /// the conversation is closed (we left or were removed): the entry cannot go any more.
    async fn reencrypt(
        &mut self,
        conv_id: i64,
        outbox_id: i64,
        body: &[u8],
        report: &mut SyncReport,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        self.sync_log(conv_id, report).await?;
        let c = conv_by_id(&self.conn, conv_id)?;
        let tx = self.begin()?;
        let provider = Provider::new(&tx);
        let Some(mut conv) = Conversation::load(&provider, &c.group_id)?.filter(|g| c.active && g.is_active()) else {
            return Ok(None);
        };
        let payload = conv.encrypt(&provider, &self.identity, &Content::from_bytes(body)?)?;
        tx.execute("UPDATE outbox SET payload = ?1 WHERE id = ?2", params![payload, outbox_id])?;
        tx.commit()?;
        Ok(Some(payload))
    }

    /// Delivers the outbox, then fetches and processes everything pending: join requests on
    /// our queue, then every conversation's log, then membership changes that are due. A relay
    /// that cannot be reached does not stop the others: the report lists what failed, and only
    /// local failures end the sync.
    pub async fn sync(&mut self) -> Result<SyncReport, ClientError> {
        let mut report = SyncReport::default();
        self.purge_expired()?;
        let flushed = self.flush_outbox_into(&mut report).await;
        note(&mut report, flushed)?;
        let queue = self.sync_queue(&mut report).await.map(|()| 0);
        note(&mut report, queue)?;
        // Conversations joined during this sync are read in the same pass.
        let mut done = Vec::new();
        loop {
            let pending: Vec<i64> = self.active_conversations()?.into_iter().filter(|id| !done.contains(id)).collect();
            if pending.is_empty() {
                break;
            }
            for id in pending {
                done.push(id);
                let log = self.sync_log(id, &mut report).await.map(|()| 0);
                note(&mut report, log)?;
            }
        }
        let ensured = self.ensure_key_packages_offered().map(|()| 0);
        note(&mut report, ensured)?;
        for id in self.active_conversations()? {
            let refreshed = self.schedule_refresh(id).map(|()| 0);
            note(&mut report, refreshed)?;
            let applied = self.apply_intents(id, &mut report).await.map(|()| 0);
            note(&mut report, applied)?;
        }
        let uploads = self.resume_uploads().await.map(|_| 0);
        note(&mut report, uploads)?;
        let flushed = self.flush_outbox_into(&mut report).await;
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
                ..Default::default() // `max_bytes` is set by `call`
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
            self.profile.queue_cursor = to_u64(cursor);
            return Ok(()); // another process on this store handled it already
        }
        tx.prepare_cached("SAVEPOINT entry")?.execute([])?;
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
            let relay =
                log.relay.as_ref().ok_or_else(|| ClientError::BadInput("join request without a relay".into()))?;
            // Our invite named our own relay, so the conversation's log must be there: a join
            // request must not point us at an address of the sender's choosing.
            let own = &self.profile.relay;
            if relay.cert_sha256 != own.cert_sha256 || relay.door != own.door {
                return Err(ClientError::BadInput("join request names a relay other than ours".into()));
            }
            if log.log_id.len() != ID_LEN {
                return Err(ClientError::BadInput("join request with a bad log id".into()));
            }
            signing_key(&log.log_secret)?;
            let mut conv = Conversation::join(&provider, &join.welcome)?;
            let peers = conv.peers(&self.profile.identity_key);
            let [peer] = peers.as_slice() else {
                return Err(ClientError::BadInput("a 1:1 invite was answered with a group".into()));
            };
            let log = LogRef { relay: Some(own.clone()), ..log };
            let conv_id = insert_conversation(&tx, None, &conv, &log, &join.cursor_id, join.cursor_position)?;
            let (name, contact_id) = attach_direct(&tx, peer, &clean_name(&join.display_name), false, conv_id)?;
            tx.execute("UPDATE invites SET used = 1 WHERE invite_id = ?1", [&invite_id])?;
            let c = conv_by_id(&tx, conv_id)?;
            enqueue_content(&tx, &provider, &self.identity, &mut conv, &c, &self.profile_content(), None)?;
            self.offer_key_packages(&tx, &provider, &mut conv, &c, contact_id)?;
            Ok(Some(name))
        })();
        if let Some(name) = settle_entry(&tx, outcome, report)?
            && !report.new_contacts.contains(&name)
        {
            report.new_contacts.push(name);
        }
        tx.execute("UPDATE profile SET queue_cursor = MAX(queue_cursor, ?1) WHERE id = 1", [to_i64(entry.seq)])?;
        tx.commit()?;
        self.profile.queue_cursor = entry.seq;
        Ok(())
    }

    /// Reads a conversation's log to its end. Each batch is processed in one transaction (one
    /// fsync per batch, not per message) with the group loaded once; every entry still has its
    /// own savepoint, so a faulty entry is skipped without undoing its neighbours.
    pub(crate) async fn sync_log(&mut self, conv_id: i64, report: &mut SyncReport) -> Result<(), ClientError> {
        // Entries the relay pushed with its notices are processed without a read; when they
        // reach the last one announced, nothing more is waiting (a newer one brings a notice).
        let c = conv_by_id(&self.conn, conv_id)?;
        let pushed = self.relays.get_mut(&c.relay_link).map(|rc| rc.take_pushed(&c.log_id, c.cursor));
        if let Some((entries, complete)) = pushed
            && !entries.is_empty()
            && c.active
        {
            self.process_log_batch(&c, conv_id, &entries, report).await?;
            report.from_notices += entries.len();
            if complete {
                return Ok(());
            }
        }
        loop {
            let c = conv_by_id(&self.conn, conv_id)?;
            if !c.active {
                return Ok(());
            }
            // `max_bytes` is set by `call`, which knows whether this network freezes.
            let read =
                ReadLog { log_id: c.log_id.clone(), after: c.cursor, limit: MAX_READ_ENTRIES, ..Default::default() };
            let Reply::Entries(batch) = self.call(&c.relay_link, Op::ReadLog(read), Some(&c.log_key)).await? else {
                return Err(ClientError::Protocol("expected Entries".into()));
            };
            if batch.entries.is_empty() {
                break;
            }
            self.process_log_batch(&c, conv_id, &batch.entries, report).await?;
            if !batch.more {
                break;
            }
        }
        Ok(())
    }

    /// Processes a batch of log entries (in order, non-empty), then tells the relay this member
    /// is past them.
    async fn process_log_batch(
        &mut self,
        c: &ConvRow,
        conv_id: i64,
        entries: &[Entry],
        report: &mut SyncReport,
    ) -> Result<(), ClientError> {
        self.handle_log_batch(conv_id, entries, report)?;
        let up_to = entries.last().map_or(c.cursor, |e| e.seq);
        let ack = AckLog { log_id: c.log_id.clone(), cursor_id: c.cursor_id.clone(), up_to };
        self.call(&c.relay_link, Op::AckLog(ack), Some(&c.log_key)).await?;
        Ok(())
    }

    /// Processes a batch of log entries in one transaction with the cursor move, so an entry is
    /// never processed twice and never skipped by a crash.
    fn handle_log_batch(
        &mut self,
        conv_id: i64,
        entries: &[Entry],
        report: &mut SyncReport,
    ) -> Result<(), ClientError> {
        // The cursor is read inside the (immediate) transaction: another process working on
        // the same store may have moved it meanwhile.
        let tx = self.begin()?;
        let provider = Provider::new(&tx);
        let mut slot: Option<Conversation> = None;
        let mut c = conv_by_id(&tx, conv_id)?;
        let mut last = None;
        let mut delivered: Vec<String> = Vec::new();
        for entry in entries {
            if entry.seq <= c.cursor || !c.active {
                continue;
            }
            tx.prepare_cached("SAVEPOINT entry")?.execute([])?;
            // The header is read once: the entry's handling and the batch both need it.
            let header = peek_header(&entry.payload);
            let is_commit = header.as_ref().is_ok_and(|h| h.content_type == ContentType::Commit);
            let outcome = self.handle_log_entry(&tx, &provider, &mut slot, &c, entry, header, report);
            // A commit or an invite may have changed the conversation (closed it, renamed a
            // contact); the group in memory may be ahead of what a rollback leaves in storage.
            let changed = outcome.is_err() || slot.is_none() || is_commit;
            if outcome.is_err() {
                slot = None;
            }
            if let Some(views) = settle_entry(&tx, outcome, report)? {
                delivered.extend(views.iter().filter(|v| !v.outgoing && v.kind != "event").map(|v| v.id.clone()));
                report.messages.extend(views);
            }
            last = Some(entry.seq);
            if changed {
                c = conv_by_id(&tx, conv_id)?;
            }
        }
        if let Some(last) = last {
            tx.execute("UPDATE conversations SET cursor = MAX(cursor, ?1) WHERE id = ?2", params![to_i64(last), c.id])?;
        }
        // Delivery receipts for what arrived, in the same transaction: sent exactly once.
        if c.active && !delivered.is_empty() {
            let conv = loaded(&mut slot, &provider, &c)?;
            for ids in delivered.chunks(tamizdat_e2e::content::MAX_RECEIPT_IDS) {
                let message_ids = ids.iter().filter_map(|id| hex::decode(id).ok()).collect();
                let receipt = Receipt { kind: ReceiptKind::Delivered as i32, message_ids };
                enqueue_content(&tx, &provider, &self.identity, conv, &c, &content(Body::Receipt(receipt)), None)?;
            }
        }
        drop(slot);
        tx.commit()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_log_entry(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        slot: &mut Option<Conversation>,
        c: &ConvRow,
        entry: &Entry,
        header: Result<MlsHeader, tamizdat_wire::WireError>,
        report: &mut SyncReport,
    ) -> Result<Option<Vec<MessageView>>, ClientError> {
        let own: Option<i64> = tx
            .prepare_cached("SELECT 1 FROM own_entries WHERE conversation_id = ?1 AND dedup_id = ?2")?
            .query_row(params![c.id, entry.dedup_id], |r| r.get(0))
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
            // One of our membership changes whose acceptance we had not heard of.
            if let Some(intent) = crate::groups::intent_by_dedup(tx, &entry.dedup_id)? {
                let conv = loaded(slot, provider, c)?;
                // The relay holds this commit: skipping it would leave us behind the group for
                // good, so a failure here stops the sync instead.
                return self.finish_intent(tx, provider, conv, c, &intent, entry.seq).map(Some).map_err(|e| {
                    if is_local_failure(&e) {
                        e
                    } else {
                        ClientError::Corrupt(format!("our own accepted commit could not be applied: {e}"))
                    }
                });
            }
            return Ok(None);
        }
        let header = header?;
        if header.epoch < c.joined_epoch {
            return Ok(None); // from before we joined
        }
        let conv = loaded(slot, provider, c)?;
        if header.content_type == ContentType::Commit && conv.has_pending_commit() {
            // Another member's commit took the epoch ours was made for: ours is void and will
            // be made again on top of theirs.
            conv.abort_commit(provider)?;
            crate::groups::reset_intents(tx, c.id)?;
        }
        match conv.process(provider, &entry.payload)? {
            Incoming::Content { sender, content } => {
                if !c.is_group && self.contact_in(tx, c)?.is_none_or(|k| k.identity_key != sender) {
                    return Err(ClientError::BadInput("content from a key that is not this contact's".into()));
                }
                let (views, touched_others) =
                    self.store_content(tx, provider, c, &sender, entry.seq, content, report)?;
                if touched_others {
                    // Another copy of this group may have been used: read it again from storage.
                    *slot = None;
                }
                Ok(Some(views))
            }
            Incoming::Commit(summary) => self.commit_events(tx, c, &summary, entry.seq).map(Some),
            Incoming::Own => Ok(None),
        }
    }

    fn contact_in(&self, tx: &Connection, c: &ConvRow) -> Result<Option<ContactRow>, ClientError> {
        match c.contact_id {
            Some(id) => contact_where(tx, "id = ?1", &id),
            None => Ok(None),
        }
    }

    /// Stores decrypted content. Returns what to show, and whether other conversations were
    /// written to (their MLS state included).
    #[allow(clippy::too_many_arguments)]
    fn store_content(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        c: &ConvRow,
        sender: &[u8],
        seq: u64,
        content: Content,
        report: &mut SyncReport,
    ) -> Result<(Vec<MessageView>, bool), ClientError> {
        match content.body {
            Some(Body::Text(t)) => {
                // The timer runs from arrival: a sender's clock cannot shorten it.
                let expires_at = crate::chat::expiry(now_ms(), content.expire_secs);
                let reply_to = (!t.reply_to.is_empty()).then_some(&t.reply_to);
                let inserted = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO messages (conversation_id, message_id, seq, outgoing, sender_key, text, sent_at, state, reply_to, expires_at) VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, 'received', ?7, ?8)",
                    )?
                    .execute(params![c.id, content.message_id, to_i64(seq), sender, t.text, to_i64(content.sent_at_ms), reply_to, expires_at])?;
                if inserted == 0 {
                    return Ok((Vec::new(), false)); // the same message id again: shown once
                }
                Ok((vec![self.message_by_row_in(tx, tx.last_insert_rowid())?], false))
            }
            Some(Body::Attachment(a)) => {
                match crate::attachments::store_incoming(
                    tx,
                    c,
                    sender,
                    seq,
                    (&content.message_id, content.sent_at_ms),
                    &a,
                )? {
                    Some(row) => {
                        // Like a text's, the timer runs from arrival.
                        let expires_at = crate::chat::expiry(now_ms(), content.expire_secs);
                        tx.execute("UPDATE messages SET expires_at = ?1 WHERE id = ?2", params![expires_at, row])?;
                        Ok((vec![self.message_by_row_in(tx, row)?], false))
                    }
                    None => Ok((Vec::new(), false)), // the same message id again: shown once
                }
            }
            Some(Body::Profile(p)) => {
                let wanted = clean_name(&p.display_name);
                if c.is_group {
                    tx.execute(
                        "INSERT INTO members (conversation_id, identity_key, name) VALUES (?1, ?2, ?3) ON CONFLICT (conversation_id, identity_key) DO UPDATE SET name = excluded.name",
                        params![c.id, sender, wanted],
                    )?;
                    return Ok((Vec::new(), false));
                }
                let Some(contact) = self.contact_in(tx, c)? else { return Ok((Vec::new(), false)) };
                let named_by_user: bool =
                    tx.query_row("SELECT named_by_user FROM contacts WHERE id = ?1", [contact.id], |r| r.get(0))?;
                if !named_by_user && wanted != contact.name {
                    let name = unique_name(tx, &wanted)?;
                    tx.execute("UPDATE contacts SET name = ?1 WHERE id = ?2", params![name, contact.id])?;
                    report.renamed.push((contact.name.clone(), name));
                    return Ok((Vec::new(), true)); // the conversation's name changed
                }
                Ok((Vec::new(), false))
            }
            Some(Body::KeyPackages(k)) if !c.is_group => {
                let contact = self
                    .contact_in(tx, c)?
                    .ok_or_else(|| ClientError::Corrupt("a 1:1 chat without its contact".into()))?;
                crate::groups::store_peer_key_packages(tx, provider, &contact, &k)?;
                Ok((Vec::new(), false))
            }
            Some(Body::GroupInvite(part)) if !c.is_group => {
                let contact = self
                    .contact_in(tx, c)?
                    .ok_or_else(|| ClientError::Corrupt("a 1:1 chat without its contact".into()))?;
                let joined = self.receive_invite_part(tx, provider, &contact, part)?;
                if let Some((name, views)) = joined {
                    report.new_groups.push(name);
                    return Ok((views, true));
                }
                Ok((Vec::new(), true))
            }
            Some(Body::Leave(_)) if c.is_group => Ok((self.member_left(tx, provider, c, sender, seq)?, true)),
            Some(
                Body::Edit(_)
                | Body::Delete(_)
                | Body::Reaction(_)
                | Body::Receipt(_)
                | Body::Typing(_)
                | Body::ExpiryTimer(_),
            ) => Ok((self.store_chat_content(tx, c, sender, seq, content, report)?, false)),
            _ => Err(ClientError::BadInput("content that does not belong in this conversation".into())),
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
                    let joined = !report.new_contacts.is_empty() || !report.new_groups.is_empty();
                    if joined && !past_deadline {
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

    /// Subscribes to our queue and every active conversation's log on their relays, so they
    /// announce what arrives ([`Client::wait_for_notice`]).
    pub async fn subscribe_all(&mut self) -> Result<(), ClientError> {
        let mut wanted: Vec<(String, Subscribe, SigningKey)> = vec![(
            self.profile.relay.to_link(),
            Subscribe { log_id: Vec::new(), read_id: self.profile.queue_read_id.clone(), entries: false },
            self.profile.queue_key.clone(),
        )];
        // Messages come inside the notices, except on networks that freeze busy connections,
        // where every byte pushed brings the freeze closer.
        let entries = !self.net.freeze;
        for id in self.active_conversations()? {
            let c = conv_by_id(&self.conn, id)?;
            wanted.push((c.relay_link, Subscribe { log_id: c.log_id, read_id: Vec::new(), entries }, c.log_key));
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

    /// Waits until any relay pushes a notice, a connection breaks, or `wait` passes. Safe to
    /// cancel (a frontend drops it when the user does something).
    pub async fn wait_for_notice(&mut self, wait: Duration) {
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
                since: to_u64(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A conversation (a contact's or a group's) in log order; messages still waiting to be
    /// sent come last. If two 1:1 chats with one contact were started at once, the one that
    /// is no longer used comes first.
    pub fn messages(&self, name: &str) -> Result<Vec<MessageView>, ClientError> {
        let c = self.conversation(name)?;
        let ids: Vec<i64> = match c.contact_id.filter(|_| !c.is_group) {
            Some(contact) => {
                let mut stmt = self.conn.prepare(
                    "SELECT m.id FROM messages m JOIN conversations v ON v.id = m.conversation_id WHERE v.kind = 'direct' AND v.contact_id = ?1 AND (m.expires_at IS NULL OR m.expires_at > ?3) ORDER BY v.id = ?2, m.seq IS NULL, m.seq, m.id",
                )?;
                stmt.query_map(params![contact, c.id, to_i64(now_ms())], |r| r.get(0))?.collect::<Result<_, _>>()?
            }
            None => {
                let mut stmt = self
                    .conn
                    .prepare("SELECT id FROM messages WHERE conversation_id = ?1 AND (expires_at IS NULL OR expires_at > ?2) ORDER BY seq IS NULL, seq, id")?;
                stmt.query_map(params![c.id, to_i64(now_ms())], |r| r.get(0))?.collect::<Result<_, _>>()?
            }
        };
        ids.into_iter().map(|id| self.message_by_row(id)).collect()
    }

    pub(crate) fn message_by_row(&self, row: i64) -> Result<MessageView, ClientError> {
        self.message_by_row_in(&self.conn, row)
    }

    pub(crate) fn message_by_row_in(&self, conn: &Connection, row: i64) -> Result<MessageView, ClientError> {
        /// How much of an answered message a reply shows.
        const REPLY_SNIPPET: usize = 100;
        type Row = (
            Vec<u8>,
            String,
            bool,
            Option<Vec<u8>>,
            String,
            i64,
            Option<i64>,
            String,
            i64,
            Option<Vec<u8>>,
            Option<i64>,
            bool,
            Option<i64>,
            Option<i64>,
        );
        let (message_id, kind, outgoing, sender_key, text, sent_at, seq, state, conv_id, reply_to, edited_at, deleted, expires_at, read_at): Row = conn
            .prepare_cached(
                "SELECT message_id, kind, outgoing, sender_key, text, sent_at, seq, state, conversation_id, reply_to, edited_at, deleted, expires_at, read_at FROM messages WHERE id = ?1",
            )?
            .query_row([row], |r| {
                Ok((
                    r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?,
                    r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?,
                ))
            })?;
        let c = conv_by_id(conn, conv_id)?;
        let sender = match (&sender_key, outgoing) {
            (_, true) => self.profile.name.clone(),
            (Some(key), false) => self.member_name(conn, &c, key)?,
            (None, false) => c.name.clone(),
        };
        let reply_to = match reply_to {
            None => None,
            Some(id) => {
                let answered: Option<(bool, Option<Vec<u8>>, String)> = conn
                    .prepare_cached(
                        "SELECT outgoing, sender_key, text FROM messages WHERE conversation_id = ?1 AND message_id = ?2",
                    )?
                    .query_row(params![conv_id, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let (sender, text) = match answered {
                    Some((true, _, text)) => (Some(self.profile.name.clone()), text),
                    Some((false, Some(key), text)) => (Some(self.member_name(conn, &c, &key)?), text),
                    Some((false, None, text)) => (Some(c.name.clone()), text),
                    None => (None, String::new()),
                };
                Some(ReplyView { id: hex::encode(id), sender, text: text.chars().take(REPLY_SNIPPET).collect() })
            }
        };
        let mut reactions: Vec<ReactionView> = Vec::new();
        {
            let mut stmt =
                conn.prepare_cached("SELECT emoji, member_key FROM reactions WHERE message_row = ?1 ORDER BY emoji")?;
            let rows = stmt.query_map([row], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            for reaction in rows {
                let (emoji, key) = reaction?;
                let who = self.member_name(conn, &c, &key)?;
                match reactions.iter_mut().find(|r| r.emoji == emoji) {
                    Some(r) => r.by.push(who),
                    None => reactions.push(ReactionView { emoji, by: vec![who] }),
                }
            }
        }
        let (delivered_to, read_by, recipients): (u32, u32, Option<u32>) = if outgoing {
            conn.prepare_cached(
                "SELECT (SELECT count(*) FROM receipts WHERE message_row = ?1), (SELECT count(read_at) FROM receipts WHERE message_row = ?1), recipients FROM messages WHERE id = ?1",
            )?
            .query_row([row], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        } else {
            (0, 0, None)
        };
        // Ours is delivered (read) once everyone it went to confirmed it.
        let recipients = recipients.unwrap_or(1).max(1);
        let state = match state.as_str() {
            "sent" if read_by >= recipients => "read".to_string(),
            "sent" if delivered_to >= recipients => "delivered".to_string(),
            _ => state,
        };
        Ok(MessageView {
            id: hex::encode(message_id),
            kind,
            sender,
            text,
            outgoing,
            sent_at: to_u64(sent_at),
            seq: seq.map(to_u64),
            state,
            conversation: c.name,
            group: c.is_group,
            reply_to,
            edited: edited_at.is_some(),
            deleted,
            reactions,
            expires_at: expires_at.map(to_u64),
            read_at: read_at.map(to_u64),
            delivered_to,
            read_by,
            attachment: crate::attachments::view(conn, row)?,
        })
    }

    /// What we call the member with this identity key: ourselves, our contact's name, the name
    /// they gave the group, or the start of their key.
    pub(crate) fn member_name(&self, conn: &Connection, c: &ConvRow, key: &[u8]) -> Result<String, ClientError> {
        if key == self.profile.identity_key.as_slice() {
            return Ok(self.profile.name.clone());
        }
        if let Some(contact) = contact_where(conn, "identity_key = ?1", &key)? {
            return Ok(contact.name);
        }
        let named: Option<String> = conn
            .query_row(
                "SELECT name FROM members WHERE conversation_id = ?1 AND identity_key = ?2",
                params![c.id, key],
                |r| r.get(0),
            )
            .optional()?;
        Ok(named.unwrap_or_else(|| format!("member-{}", hex::encode(&key[..key.len().min(4)]))))
    }

    /// Closes relay connections politely.
    pub async fn close(mut self) {
        for (_, rc) in self.relays.drain() {
            rc.close().await;
        }
    }
}

/// Adds a sync step's outcome to the report: relay trouble is listed, local trouble ends the
/// sync.
pub(crate) fn note(report: &mut SyncReport, result: Result<usize, ClientError>) -> Result<(), ClientError> {
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

/// New content with a fresh message id, stamped now.
pub(crate) fn content(body: Body) -> Content {
    Content { message_id: random_id(), sent_at_ms: now_ms(), body: Some(body), expire_secs: 0 }
}

/// True for failures of this device (storage, damaged state): they end an operation instead
/// of being blamed on the entry or the relay.
pub(crate) fn is_local_failure(e: &ClientError) -> bool {
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
            tx.prepare_cached("ROLLBACK TO entry")?.execute([])?;
            report.skipped += 1;
            None
        }
    };
    tx.prepare_cached("RELEASE entry")?.execute([])?;
    Ok(value)
}

/// Relay refusals that are about the request itself, so retrying the same bytes cannot help.
/// Anything else (an overloaded relay, a version it does not speak yet, a code this build does
/// not know) keeps the entry for later.
fn is_permanent(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::BadRequest | ErrorCode::NotMls | ErrorCode::TooLarge | ErrorCode::Unauthorized)
}

/// Puts an MLS message for a conversation's log in the outbox and remembers its dedup id as
/// ours. Returns the dedup id.
pub(crate) fn enqueue_log(
    tx: &Connection,
    c: &ConvRow,
    payload: Vec<u8>,
    message_row: Option<i64>,
) -> Result<Vec<u8>, ClientError> {
    let dedup = random_id();
    tx.execute(
        "INSERT INTO outbox (relay_link, target, target_secret, kind, dedup_id, payload, message_row) VALUES (?1, ?2, ?3, 'log', ?4, ?5, ?6)",
        params![c.relay_link, c.log_id, c.log_key.to_bytes().to_vec(), dedup, payload, message_row],
    )?;
    remember_own(tx, c.id, &dedup)?;
    Ok(dedup)
}

/// Encrypts content for a conversation and puts it in the outbox. The plaintext is kept with
/// it (in the encrypted store) until delivery, so it can be encrypted again if the group moved
/// to a new epoch before the relay took it.
pub(crate) fn enqueue_content(
    tx: &Connection,
    provider: &Provider<'_>,
    identity: &Identity,
    conv: &mut Conversation,
    c: &ConvRow,
    body: &Content,
    message_row: Option<i64>,
) -> Result<Vec<u8>, ClientError> {
    let payload = conv.encrypt(provider, identity, body)?;
    let dedup = enqueue_log(tx, c, payload, message_row)?;
    tx.execute(
        "UPDATE outbox SET conversation_id = ?1, content = ?2 WHERE dedup_id = ?3",
        params![c.id, body.to_bytes(), dedup],
    )?;
    Ok(dedup)
}

/// Marks a log entry with this dedup id as one of ours.
pub(crate) fn remember_own(tx: &Connection, conv_id: i64, dedup: &[u8]) -> Result<(), ClientError> {
    tx.execute(
        "INSERT OR IGNORE INTO own_entries (conversation_id, dedup_id) VALUES (?1, ?2)",
        params![conv_id, dedup],
    )?;
    Ok(())
}

/// `base`, or `base-2`, `base-3`, … whichever no contact or group has yet.
pub(crate) fn unique_name(conn: &Connection, base: &str) -> Result<String, ClientError> {
    let mut candidate = base.to_string();
    for n in 2.. {
        let taken: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM contacts WHERE name = ?1 UNION ALL SELECT 1 FROM conversations WHERE name = ?1",
                [&candidate],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_none() {
            return Ok(candidate);
        }
        candidate = format!("{base}-{n}");
    }
    Ok(candidate)
}

/// Records a conversation we are in; `name` is set for groups only.
pub(crate) fn insert_conversation(
    tx: &Connection,
    name: Option<&str>,
    conv: &Conversation,
    log: &LogRef,
    cursor_id: &[u8],
    cursor: u64,
) -> Result<i64, ClientError> {
    let relay = log.relay.as_ref().ok_or_else(|| ClientError::BadInput("a log without its relay".into()))?;
    let now = to_i64(now_ms());
    tx.execute(
        "INSERT INTO conversations (kind, name, group_id, joined_epoch, relay_link, log_id, log_secret, cursor_id, cursor, updated_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
        params![
            if name.is_some() { "group" } else { "direct" },
            name,
            conv.group_id(),
            to_i64(conv.epoch()),
            relay.to_link(),
            log.log_id,
            log.log_secret,
            cursor_id,
            to_i64(cursor),
            now
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Ties a new 1:1 conversation to the contact with `peer`'s key, creating the contact if
/// needed. When both people accepted each other's invites at once there are two 1:1
/// conversations; both sides pick the one with the smaller MLS group id, so they converge on
/// one chat. Returns the contact's name and id.
pub(crate) fn attach_direct(
    tx: &Connection,
    peer: &[u8],
    name: &str,
    named_by_user: bool,
    conv_id: i64,
) -> Result<(String, i64), ClientError> {
    let (name, contact_id) = match contact_where(tx, "identity_key = ?1", &peer)? {
        Some(existing) => (existing.name, existing.id),
        None => {
            let name = if named_by_user { name.to_string() } else { unique_name(tx, name)? };
            tx.execute(
                "INSERT INTO contacts (name, named_by_user, identity_key, conversation_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, named_by_user, peer, conv_id, to_i64(now_ms())],
            )?;
            (name, tx.last_insert_rowid())
        }
    };
    tx.execute("UPDATE conversations SET contact_id = ?1 WHERE id = ?2", params![contact_id, conv_id])?;
    let canonical: i64 = tx.query_row(
        "SELECT id FROM conversations WHERE kind = 'direct' AND contact_id = ?1 ORDER BY state != 'active', group_id LIMIT 1",
        [contact_id],
        |r| r.get(0),
    )?;
    tx.execute("UPDATE contacts SET conversation_id = ?1 WHERE id = ?2", params![canonical, contact_id])?;
    Ok((name, contact_id))
}

pub(crate) fn contact_where(
    conn: &Connection,
    condition: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<ContactRow>, ClientError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT id, name, identity_key, conversation_id FROM contacts WHERE {condition} ORDER BY id LIMIT 1"
        ))?
        .query_row([value], |r| {
            Ok(ContactRow { id: r.get(0)?, name: r.get(1)?, identity_key: r.get(2)?, conversation_id: r.get(3)? })
        })
        .optional()?)
}

pub(crate) fn conv_by_id(conn: &Connection, id: i64) -> Result<ConvRow, ClientError> {
    type Row = (
        i64,
        String,
        Option<String>,
        Option<i64>,
        Vec<u8>,
        i64,
        String,
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
        i64,
        String,
        i64,
        i64,
        u32,
    );
    let row: Row = conn.query_row(
        "SELECT v.id, v.kind, COALESCE(v.name, c.name), v.contact_id, v.group_id, v.joined_epoch, v.relay_link, v.log_id, v.log_secret, v.cursor_id, v.cursor, v.state, v.sent_since_update, v.updated_at, v.expire_secs FROM conversations v LEFT JOIN contacts c ON c.id = v.contact_id WHERE v.id = ?1",
        [id],
        |r| {
            Ok((
                r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?,
                r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?,
            ))
        },
    )?;
    Ok(ConvRow {
        id: row.0,
        is_group: row.1 == "group",
        name: row.2.unwrap_or_else(|| "(unnamed)".into()),
        contact_id: row.3,
        group_id: row.4,
        joined_epoch: to_u64(row.5),
        relay_link: row.6,
        log_id: row.7,
        log_key: signing_key(&row.8)?,
        cursor_id: row.9,
        cursor: to_u64(row.10),
        active: row.11 == "active",
        sent_since_update: to_u64(row.12),
        updated_at: to_u64(row.13),
        expire_secs: row.14,
    })
}

/// The MLS group of a conversation, from storage.
pub(crate) fn load_conversation(provider: &Provider<'_>, c: &ConvRow) -> Result<Conversation, ClientError> {
    Conversation::load(provider, &c.group_id)?
        .ok_or_else(|| ClientError::Corrupt(format!("the conversation {} is missing its keys", c.name)))
}

/// The group kept in memory across a batch, loaded on first use.
pub(crate) fn loaded<'s>(
    slot: &'s mut Option<Conversation>,
    provider: &Provider<'_>,
    c: &ConvRow,
) -> Result<&'s mut Conversation, ClientError> {
    if slot.is_none() {
        *slot = Some(load_conversation(provider, c)?);
    }
    slot.as_mut().ok_or_else(|| ClientError::Corrupt("the conversation vanished".into()))
}
