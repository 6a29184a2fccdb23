//! Groups: membership changes as intents, KeyPackages between contacts, group invites, leaving,
//! and the periodic key refresh that gives post-compromise security.
//!
//! A membership change is first written down as an *intent*. Running it syncs the group's log,
//! builds a commit for the current epoch and appends it. The relay accepts one commit per
//! epoch: if another member's commit won, ours is dropped, theirs applied, and the intent is
//! built again on top of it. An intent survives crashes and unreachable relays; the commit it
//! holds is resent with the same dedup id until the relay answers, so it is never applied twice.

use openmls::prelude::Ciphersuite;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tamizdat_e2e::{
    CommitSummary, Conversation, SUITES,
    content::{
        Body, GroupInvite, GroupInvitePart, KeyPackages, Leave, MAX_INVITE_PART, MAX_LAST_RESORT_PACKAGES,
        MAX_ONE_TIME_PACKAGES, MemberName,
    },
    key_packages, max_adds_per_commit, max_members,
    proto::LogRef,
};
use tamizdat_wire::{
    limits::ID_LEN,
    proto::{AckLog, Append, ErrorCode, Op, RelayDescriptor, Reply},
};

use crate::{
    Client, ClientError, SyncReport,
    engine::{
        ContactRow, ConvRow, MessageView, check_own_name, clean_name, contact_where, content, conv_by_id,
        enqueue_content, insert_conversation, load_conversation, now_ms, random_id, remember_own, signing_key, to_i64,
        to_u64, unique_name,
    },
    store::Provider,
};

/// One-time KeyPackages each contact holds of ours, per ciphersuite.
const ONE_TIME_PER_SUITE: usize = 2;
/// How many one-time KeyPackages of one contact we keep per ciphersuite.
const KEEP_PER_SUITE: i64 = 8;
/// KeyPackages live 84 days (OpenMLS's default); a contact gets fresh ones once ours are this
/// old, so someone who made contact months ago can still be added to groups.
const RENEW_KEY_PACKAGES_AFTER_MS: u64 = 56 * 86_400_000;

fn renewal_cutoff() -> i64 {
    to_i64(now_ms().saturating_sub(RENEW_KEY_PACKAGES_AFTER_MS))
}

/// How often an intent may lose the race for an epoch in one run before we stop for now.
const MAX_ATTEMPTS: usize = 8;
/// A member who is not first in line to remove a departed member waits this long for the one
/// who is, then does it itself.
const DEPARTURE_GRACE_MS: u64 = 10 * 60 * 1000;

/// Settings a user can change, with their defaults.
pub const SETTINGS: [(&str, u64, &str); 4] = [
    ("update-after-messages", 100, "refresh your keys in a conversation after sending this many messages"),
    ("update-after-days", 7, "refresh your keys in a conversation at least this often"),
    ("read-receipts", 1, "tell senders when you have read their messages: on or off"),
    ("typing-indicators", 1, "show others while you type: on or off"),
];

/// Settings that are switches: on (1) or off (0).
const SWITCHES: [&str; 2] = ["read-receipts", "typing-indicators"];

/// A group as listed to the user.
#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    /// The group's name.
    pub name: String,
    /// How many members it has (0 once we left or were removed).
    pub members: usize,
    /// `active`, `left` or `removed`.
    pub state: String,
    /// The MLS epoch we are in.
    pub epoch: u64,
    /// The ciphersuite's name.
    pub suite: String,
}

/// A group member as listed to the user.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// What we call them.
    pub name: String,
    /// Their identity key, hex.
    pub identity_key: String,
    /// This is us.
    pub you: bool,
}

/// A membership change waiting to be committed.
pub(crate) struct Intent {
    id: i64,
    kind: String,
    keys: Vec<Vec<u8>>,
    key_packages: Vec<Vec<u8>>,
    cursor_ids: Vec<Vec<u8>>,
    commit: Option<Vec<u8>>,
    welcome: Option<Vec<u8>>,
    dedup: Option<Vec<u8>>,
}

fn hex_list(items: &[Vec<u8>]) -> String {
    serde_json::Value::from(items.iter().map(hex::encode).collect::<Vec<_>>()).to_string()
}

fn parse_hex_list(text: &str) -> Result<Vec<Vec<u8>>, ClientError> {
    let items: Vec<String> =
        serde_json::from_str(text).map_err(|_| ClientError::Corrupt("a stored membership change is damaged".into()))?;
    items
        .iter()
        .map(|h| hex::decode(h).map_err(|_| ClientError::Corrupt("a stored membership change is damaged".into())))
        .collect()
}

const INTENT_COLUMNS: &str = "id, kind, keys, key_packages, cursor_ids, commit_bytes, welcome, dedup_id";

type IntentRow = (i64, String, String, String, String, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

fn intent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IntentRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
}

fn intent_where(
    conn: &Connection,
    condition: &str,
    values: impl rusqlite::Params,
) -> Result<Option<Intent>, ClientError> {
    let row = conn
        .query_row(
            // An intent whose commit is built goes first: its commit may already be on the relay,
            // and building another would drop it.
            &format!(
                "SELECT {INTENT_COLUMNS} FROM intents WHERE {condition} ORDER BY commit_bytes IS NULL, id LIMIT 1"
            ),
            values,
            intent_row,
        )
        .optional()?;
    row.map(|(id, kind, keys, kps, cursors, commit, welcome, dedup)| {
        Ok(Intent {
            id,
            kind,
            keys: parse_hex_list(&keys)?,
            key_packages: parse_hex_list(&kps)?,
            cursor_ids: parse_hex_list(&cursors)?,
            commit,
            welcome,
            dedup,
        })
    })
    .transpose()
}

/// The intent whose commit was appended with this dedup id.
pub(crate) fn intent_by_dedup(conn: &Connection, dedup: &[u8]) -> Result<Option<Intent>, ClientError> {
    intent_where(conn, "dedup_id = ?1", [dedup])
}

/// Forgets the commits built for a conversation's intents (another commit took their epoch);
/// they are built again on the next run.
pub(crate) fn reset_intents(tx: &Connection, conv_id: i64) -> Result<(), ClientError> {
    tx.execute(
        "UPDATE intents SET commit_bytes = NULL, welcome = NULL, dedup_id = NULL, attempts = attempts + 1 WHERE conversation_id = ?1 AND commit_bytes IS NOT NULL",
        [conv_id],
    )?;
    Ok(())
}

fn insert_intent(
    tx: &Connection,
    conv_id: i64,
    kind: &str,
    keys: &[Vec<u8>],
    key_packages: &[Vec<u8>],
    not_before: u64,
) -> Result<(), ClientError> {
    tx.execute(
        "INSERT INTO intents (conversation_id, kind, keys, key_packages, not_before) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![conv_id, kind, hex_list(keys), hex_list(key_packages), to_i64(not_before)],
    )?;
    Ok(())
}

/// Stores KeyPackages a contact gave us, after checking each is theirs and valid.
pub(crate) fn store_peer_key_packages(
    tx: &Connection,
    provider: &Provider<'_>,
    contact: &ContactRow,
    offer: &KeyPackages,
) -> Result<(), ClientError> {
    for (bytes, last_resort) in
        offer.one_time.iter().map(|b| (b, false)).chain(offer.last_resort.iter().map(|b| (b, true)))
    {
        let kp = key_packages::validate(provider, bytes, &contact.identity_key)?;
        let suite = u16::from(kp.ciphersuite());
        if last_resort {
            tx.execute(
                "DELETE FROM peer_key_packages WHERE contact_id = ?1 AND suite = ?2 AND last_resort = 1",
                params![contact.id, suite],
            )?;
        }
        tx.execute(
            "INSERT INTO peer_key_packages (contact_id, suite, last_resort, key_package) VALUES (?1, ?2, ?3, ?4)",
            params![contact.id, suite, last_resort, bytes],
        )?;
    }
    // A contact cannot fill our store: only the newest few one-time packages are kept.
    tx.execute(
        "DELETE FROM peer_key_packages WHERE contact_id = ?1 AND last_resort = 0 AND id NOT IN (SELECT id FROM peer_key_packages p WHERE p.contact_id = ?1 AND p.last_resort = 0 AND p.suite = peer_key_packages.suite ORDER BY id DESC LIMIT ?2)",
        params![contact.id, KEEP_PER_SUITE],
    )?;
    Ok(())
}

/// Takes a KeyPackage of `contact` for `suite`: a one-time one if any is left (it is used up),
/// else the last-resort one (which stays).
fn take_key_package(
    tx: &Connection,
    provider: &Provider<'_>,
    contact: &ContactRow,
    suite: Ciphersuite,
) -> Result<Option<Vec<u8>>, ClientError> {
    loop {
        let row: Option<(i64, bool, Vec<u8>)> = tx
            .query_row(
                "SELECT id, last_resort, key_package FROM peer_key_packages WHERE contact_id = ?1 AND suite = ?2 ORDER BY last_resort, id LIMIT 1",
                params![contact.id, u16::from(suite)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((id, last_resort, bytes)) = row else { return Ok(None) };
        let valid = key_packages::validate(provider, &bytes, &contact.identity_key).is_ok();
        if !last_resort || !valid {
            tx.execute("DELETE FROM peer_key_packages WHERE id = ?1", [id])?;
        }
        if valid {
            return Ok(Some(bytes));
        }
    }
}

/// Records a membership event in a conversation and returns it as shown.
fn insert_event(
    client: &Client,
    tx: &Connection,
    c: &ConvRow,
    actor: &[u8],
    text: &str,
    seq: Option<u64>,
) -> Result<MessageView, ClientError> {
    let outgoing = actor == client.profile.identity_key.as_slice();
    let row = crate::chat::insert_event_row(tx, c.id, actor, outgoing, text, seq)?;
    client.message_by_row_in(tx, row)
}

pub(crate) fn setting(conn: &Connection, key: &str) -> Result<u64, ClientError> {
    let default = SETTINGS.iter().find(|(k, _, _)| *k == key).map_or(0, |(_, d, _)| *d);
    let value: Option<String> =
        conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(default))
}

impl Client {
    /// The settings and their values.
    pub fn settings(&self) -> Result<Vec<(String, u64, String)>, ClientError> {
        SETTINGS
            .iter()
            .map(|(key, _, about)| Ok((key.to_string(), setting(&self.conn, key)?, about.to_string())))
            .collect()
    }

    /// Changes a setting.
    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        if !SETTINGS.iter().any(|(k, _, _)| *k == key) {
            let known: Vec<_> = SETTINGS.iter().map(|(k, _, _)| *k).collect();
            return Err(ClientError::BadInput(format!("no setting {key:?}; there are: {}", known.join(", "))));
        }
        let n: u64 =
            if SWITCHES.contains(&key) {
                match value {
                    "on" | "1" | "true" | "yes" => 1,
                    "off" | "0" | "false" | "no" => 0,
                    _ => return Err(ClientError::BadInput(format!("{key} is on or off, not {value:?}"))),
                }
            } else {
                value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ClientError::BadInput(format!("{key} takes a whole number above 0, not {value:?}"))
                })?
            };
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, n.to_string()],
        )?;
        Ok(())
    }

    /// Creates a group with only us in it, its log on our relay.
    pub async fn group_create(&mut self, name: &str, suite: Ciphersuite) -> Result<String, ClientError> {
        check_own_name(name)?;
        let taken = self.name_owner(name)?;
        if taken.is_some() {
            return Err(ClientError::BadInput(format!("you already have a contact or group named {name:?}")));
        }
        let relay = self.profile.relay.clone();
        let cursor = random_id();
        let (log_id, log_key) = self.create_log(&relay.to_link(), &[&cursor]).await?;
        {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            let mut conv = Conversation::create(&provider, &self.identity, suite)?;
            let log = LogRef { relay: Some(relay), log_id, log_secret: log_key.to_bytes().to_vec() };
            let conv_id = insert_conversation(&tx, Some(name), &conv, &log, &cursor, 0)?;
            let c = conv_by_id(&tx, conv_id)?;
            enqueue_content(&tx, &provider, &self.identity, &mut conv, &c, &self.profile_content(), None)?;
            insert_event(self, &tx, &c, &self.profile.identity_key.clone(), "you created the group", Some(0))?;
            tx.commit()?;
        }
        self.flush_outbox().await?;
        Ok(name.to_string())
    }

    fn group(&self, name: &str) -> Result<ConvRow, ClientError> {
        let c = self.conversation(name)?;
        if !c.is_group {
            return Err(ClientError::BadInput(format!("{name} is a contact, not a group")));
        }
        Ok(c)
    }

    fn active_group(&self, name: &str) -> Result<ConvRow, ClientError> {
        let c = self.group(name)?;
        if !c.active {
            return Err(ClientError::BadInput(format!("you are no longer in {name}")));
        }
        Ok(c)
    }

    /// Adds contacts to a group. Each needs a KeyPackage they gave us in our 1:1 chat.
    pub async fn group_add(&mut self, group: &str, contacts: &[String]) -> Result<SyncReport, ClientError> {
        let c = self.active_group(group)?;
        {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            let conv = load_conversation(&provider, &c)?;
            let members = conv.members();
            let max = max_members(conv.suite());
            if members.len() + contacts.len() > max {
                return Err(ClientError::BadInput(format!(
                    "{group} would have {} members; groups of its ciphersuite stop at {max} so that their commits \
                     fit through the relay. A post-quantum group can be replaced by a larger one made with \
                     `tamizdat group create NAME --classic` (up to 5000 members)",
                    members.len() + contacts.len()
                )));
            }
            let (mut keys, mut kps) = (Vec::new(), Vec::new());
            for name in contacts {
                let contact = self.contact(name)?;
                if !conv_by_id(&tx, contact.conversation_id)?.active {
                    return Err(ClientError::BadInput(format!("your chat with {name} is closed; invite them again")));
                }
                if members.contains(&contact.identity_key) || keys.contains(&contact.identity_key) {
                    return Err(ClientError::BadInput(format!("{name} is already in {group}")));
                }
                let kp = take_key_package(&tx, &provider, &contact, conv.suite())?.ok_or_else(|| {
                    ClientError::BadInput(format!(
                        "{name} has not sent you the keys needed to add them yet; they are sent when the two of you \
                         first sync, so ask {name} to run `tamizdat sync`, then run `tamizdat sync` and try again"
                    ))
                })?;
                keys.push(contact.identity_key);
                kps.push(kp);
            }
            // A commit carries every new member's KeyPackage: batches keep each one well inside
            // a relay entry.
            let batch = max_adds_per_commit(conv.suite());
            for (keys, kps) in keys.chunks(batch).zip(kps.chunks(batch)) {
                insert_intent(&tx, c.id, "add", keys, kps, 0)?;
            }
            tx.commit()?;
        }
        let mut report = SyncReport::default();
        self.apply_intents(c.id, &mut report).await?;
        self.flush_outbox().await?;
        Ok(report)
    }

    /// Removes members (by contact name or by the name shown in `group members`).
    pub async fn group_remove(&mut self, group: &str, who: &[String]) -> Result<SyncReport, ClientError> {
        let c = self.active_group(group)?;
        let members = self.group_members(group)?;
        let mut keys = Vec::new();
        for name in who {
            let member = members
                .iter()
                .find(|m| &m.name == name)
                .ok_or_else(|| ClientError::BadInput(format!("{name} is not a member of {group}")))?;
            if member.you {
                return Err(ClientError::BadInput(format!("to remove yourself, use `tamizdat group leave {group}`")));
            }
            keys.push(hex::decode(&member.identity_key).map_err(|_| ClientError::Corrupt("a member key".into()))?);
        }
        {
            let tx = self.begin()?;
            insert_intent(&tx, c.id, "remove", &keys, &[], 0)?;
            tx.commit()?;
        }
        let mut report = SyncReport::default();
        self.apply_intents(c.id, &mut report).await?;
        Ok(report)
    }

    /// Leaves a group: says so to the members (the next one to commit removes us) and erases
    /// the group's keys from this device.
    pub async fn group_leave(&mut self, group: &str) -> Result<(), ClientError> {
        let c = self.active_group(group)?;
        // The goodbye is encrypted in the newest epoch we can reach: once the keys are erased it
        // cannot be encrypted again. Offline, it goes in the epoch we know.
        if let Err(e) = self.sync_log(c.id, &mut SyncReport::default()).await {
            tracing::warn!(error = %e, "leaving without reading the group's newest messages");
        }
        let c = self.active_group(group)?;
        {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            let mut conv = load_conversation(&provider, &c)?;
            if conv.has_pending_commit() {
                conv.abort_commit(&provider)?;
            }
            enqueue_content(&tx, &provider, &self.identity, &mut conv, &c, &content(Body::Leave(Leave {})), None)?;
            conv.delete(&provider)?;
            tx.execute("DELETE FROM intents WHERE conversation_id = ?1", [c.id])?;
            tx.execute("UPDATE conversations SET state = 'left' WHERE id = ?1", [c.id])?;
            insert_event(self, &tx, &c, &self.profile.identity_key.clone(), "you left the group", None)?;
            tx.commit()?;
        }
        self.flush_outbox().await?;
        Ok(())
    }

    /// The members of a group, in the order of the group's tree.
    pub fn group_members(&self, group: &str) -> Result<Vec<MemberView>, ClientError> {
        let c = self.group(group)?;
        if !c.active {
            return Ok(Vec::new());
        }
        let provider = Provider::new(&self.conn);
        let conv = load_conversation(&provider, &c)?;
        conv.members()
            .into_iter()
            .map(|key| {
                Ok(MemberView {
                    name: self.member_name(&self.conn, &c, &key)?,
                    you: key == self.profile.identity_key,
                    identity_key: hex::encode(key),
                })
            })
            .collect()
    }

    /// All groups, oldest first.
    pub fn groups(&self) -> Result<Vec<GroupView>, ClientError> {
        let ids: Vec<i64> = {
            let mut stmt = self.conn.prepare("SELECT id FROM conversations WHERE kind = 'group' ORDER BY id")?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        let provider = Provider::new(&self.conn);
        ids.into_iter()
            .map(|id| {
                let c = conv_by_id(&self.conn, id)?;
                let state: String =
                    self.conn.query_row("SELECT state FROM conversations WHERE id = ?1", [id], |r| r.get(0))?;
                let conv = if c.active { Conversation::load(&provider, &c.group_id)? } else { None };
                Ok(GroupView {
                    name: c.name,
                    members: conv.as_ref().map_or(0, |g| g.members().len()),
                    state,
                    epoch: conv.as_ref().map_or(0, Conversation::epoch),
                    suite: conv.as_ref().map_or_else(String::new, |g| format!("{:?}", g.suite())),
                })
            })
            .collect()
    }

    /// Queues a key refresh for a conversation if one is due and none is queued.
    pub(crate) fn schedule_refresh(&self, conv_id: i64) -> Result<(), ClientError> {
        let c = conv_by_id(&self.conn, conv_id)?;
        if !c.active {
            return Ok(());
        }
        let after_messages = setting(&self.conn, "update-after-messages")?;
        let after_ms = setting(&self.conn, "update-after-days")?.saturating_mul(86_400_000);
        let due = c.sent_since_update >= after_messages || now_ms().saturating_sub(c.updated_at) >= after_ms;
        let queued: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM intents WHERE conversation_id = ?1 AND kind = 'update'", [conv_id], |r| r.get(0))
            .optional()?;
        if due && queued.is_none() {
            let tx = self.begin()?;
            insert_intent(&tx, conv_id, "update", &[], &[], 0)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Refreshes our keys in a conversation now if it is due.
    pub(crate) async fn refresh_if_due(&mut self, conv_id: i64) -> Result<(), ClientError> {
        self.schedule_refresh(conv_id)?;
        self.apply_intents(conv_id, &mut SyncReport::default()).await
    }

    /// Runs a conversation's due intents, oldest first, until none is left.
    pub(crate) async fn apply_intents(&mut self, conv_id: i64, report: &mut SyncReport) -> Result<(), ClientError> {
        let mut synced = false;
        for _ in 0..MAX_ATTEMPTS * 4 {
            let c = conv_by_id(&self.conn, conv_id)?;
            if !c.active {
                return Ok(());
            }
            let due =
                intent_where(&self.conn, "conversation_id = ?1 AND not_before <= ?2", params![c.id, to_i64(now_ms())])?;
            let Some(intent) = due else { return Ok(()) };
            if !synced {
                // Build on the newest epoch: read what others committed first.
                self.sync_log(conv_id, report).await?;
                synced = true;
                continue;
            }
            let intent = match intent.commit {
                Some(_) => intent,
                None => match self.build_intent(&c, intent)? {
                    Some(built) => built,
                    None => continue,
                },
            };
            let (Some(commit), Some(dedup)) = (intent.commit.clone(), intent.dedup.clone()) else {
                return Err(ClientError::Corrupt("a built membership change lost its commit".into()));
            };
            // New members' cursors exist before the commit that adds them, so nothing they need
            // is deleted before they first read.
            for cursor in &intent.cursor_ids {
                let ack = AckLog { log_id: c.log_id.clone(), cursor_id: cursor.clone(), up_to: c.cursor };
                self.call(&c.relay_link, Op::AckLog(ack), Some(&c.log_key)).await?;
            }
            let append = Op::Append(Append { log_id: c.log_id.clone(), dedup_id: dedup, payload: commit });
            match self.call(&c.relay_link, append, Some(&c.log_key)).await {
                Ok(Reply::Appended(a)) => {
                    let tx = self.begin()?;
                    // A concurrent sync of this store may have finished it already.
                    if let Some(intent) = intent_where(&tx, "id = ?1", [intent.id])?.filter(|i| i.commit.is_some()) {
                        let provider = Provider::new(&tx);
                        let mut conv = load_conversation(&provider, &c)?;
                        let events = self.finish_intent(&tx, &provider, &mut conv, &c, &intent, a.seq)?;
                        report.messages.extend(events);
                    }
                    tx.commit()?;
                }
                Ok(_) => return Err(ClientError::Protocol("expected Appended".into())),
                Err(ClientError::Relay { code: ErrorCode::StaleEpoch, .. }) => {
                    {
                        let tx = self.begin()?;
                        let provider = Provider::new(&tx);
                        let mut conv = load_conversation(&provider, &c)?;
                        if conv.has_pending_commit() {
                            conv.abort_commit(&provider)?;
                        }
                        reset_intents(&tx, c.id)?;
                        tx.commit()?;
                    }
                    report.retried_commits += 1;
                    self.sync_log(conv_id, report).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Relay {
            code: ErrorCode::StaleEpoch,
            message: "other members kept changing the group; your change is kept and retried on the next sync".into(),
            current_epoch: 0,
        })
    }

    /// Builds the commit of an intent on the group's current epoch. `None` if there is nothing
    /// left to do (everyone to add is in, everyone to remove is out), in which case the intent is
    /// deleted.
    fn build_intent(&self, c: &ConvRow, intent: Intent) -> Result<Option<Intent>, ClientError> {
        let tx = self.begin()?;
        let provider = Provider::new(&tx);
        let mut conv = load_conversation(&provider, c)?;
        if conv.has_pending_commit() {
            conv.abort_commit(&provider)?;
        }
        let members = conv.members();
        let mut keys = Vec::new();
        let mut kps = Vec::new();
        let out = match intent.kind.as_str() {
            "add" => {
                let mut packages = Vec::new();
                for (key, bytes) in intent.keys.iter().zip(&intent.key_packages) {
                    if !members.contains(key) {
                        // A package that expired while the change waited: that member is left
                        // out rather than blocking the group's later changes.
                        match key_packages::validate(&provider, bytes, key) {
                            Ok(kp) => packages.push(kp),
                            Err(e) => {
                                tracing::warn!(error = %e, "left out of an add: their KeyPackage is no longer valid");
                                continue;
                            }
                        }
                        keys.push(key.clone());
                        kps.push(bytes.clone());
                    }
                }
                if packages.is_empty() { None } else { Some(conv.add(&provider, &self.identity, &packages)?) }
            }
            "remove" => {
                keys = intent.keys.iter().filter(|k| members.contains(k)).cloned().collect();
                if keys.is_empty() { None } else { conv.remove(&provider, &self.identity, &keys)? }
            }
            _ => Some(conv.self_update(&provider, &self.identity)?),
        };
        let Some(out) = out else {
            tx.execute("DELETE FROM intents WHERE id = ?1", [intent.id])?;
            tx.commit()?;
            return Ok(None);
        };
        let dedup = random_id();
        let cursor_ids: Vec<Vec<u8>> = keys.iter().filter(|_| intent.kind == "add").map(|_| random_id()).collect();
        tx.execute(
            "UPDATE intents SET keys = ?1, key_packages = ?2, cursor_ids = ?3, commit_bytes = ?4, welcome = ?5, dedup_id = ?6 WHERE id = ?7",
            params![hex_list(&keys), hex_list(&kps), hex_list(&cursor_ids), out.commit, out.welcome, dedup, intent.id],
        )?;
        remember_own(&tx, c.id, &dedup)?;
        let built = intent_where(&tx, "id = ?1", [intent.id])?;
        tx.commit()?;
        Ok(built)
    }

    /// The relay stored our commit: merge it, tell new members how to join, record events.
    pub(crate) fn finish_intent(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        conv: &mut Conversation,
        c: &ConvRow,
        intent: &Intent,
        seq: u64,
    ) -> Result<Vec<MessageView>, ClientError> {
        conv.confirm_commit(provider)?;
        tx.execute("DELETE FROM intents WHERE id = ?1", [intent.id])?;
        if intent.kind != "add" {
            // Removals and updates carry a fresh path: our keys in this group are new.
            tx.execute(
                "UPDATE conversations SET sent_since_update = 0, updated_at = ?1 WHERE id = ?2",
                params![to_i64(now_ms()), c.id],
            )?;
        }
        let own = self.profile.identity_key.clone();
        let names = |keys: &[Vec<u8>]| -> Result<String, ClientError> {
            Ok(keys.iter().map(|k| self.member_name(tx, c, k)).collect::<Result<Vec<_>, _>>()?.join(", "))
        };
        let mut events = Vec::new();
        match intent.kind.as_str() {
            "add" => {
                events.push(insert_event(
                    self,
                    tx,
                    c,
                    &own,
                    &format!("you added {}", names(&intent.keys)?),
                    Some(seq),
                )?);
                let welcome =
                    intent.welcome.clone().ok_or_else(|| ClientError::Corrupt("an add without its Welcome".into()))?;
                let roster = self.roster(tx, c, conv)?;
                for (key, cursor) in intent.keys.iter().zip(&intent.cursor_ids) {
                    let invite = GroupInvite {
                        welcome: welcome.clone(),
                        log: Some(LogRef {
                            relay: Some(RelayDescriptor::from_link(&c.relay_link)?),
                            log_id: c.log_id.clone(),
                            log_secret: c.log_key.to_bytes().to_vec(),
                        }),
                        name: c.name.clone(),
                        cursor_id: cursor.clone(),
                        cursor_position: seq,
                        roster: roster.clone(),
                    };
                    // The commit is merged whatever happens here: a failed invite must not undo
                    // it (the relay has it), only be reported.
                    tx.execute("SAVEPOINT invite", [])?;
                    match self.send_invite(tx, provider, key, &invite) {
                        Ok(()) => tx.execute("RELEASE invite", []).map(|_| ())?,
                        Err(e) if crate::engine::is_local_failure(&e) => return Err(e),
                        Err(e) => {
                            tx.execute("ROLLBACK TO invite", [])?;
                            tx.execute("RELEASE invite", [])?;
                            let who = self.member_name(tx, c, key)?;
                            tracing::warn!(error = %e, "a group invite could not be sent");
                            events.push(insert_event(
                                self,
                                tx,
                                c,
                                &own,
                                &format!("the invite to {who} could not be sent ({e})"),
                                Some(seq),
                            )?);
                        }
                    }
                }
            }
            "remove" => {
                let departed = self.departed(tx, c.id)?;
                let removed: Vec<Vec<u8>> = intent.keys.iter().filter(|k| !departed.contains(k)).cloned().collect();
                if !removed.is_empty() {
                    events.push(insert_event(
                        self,
                        tx,
                        c,
                        &own,
                        &format!("you removed {}", names(&removed)?),
                        Some(seq),
                    )?);
                }
            }
            _ => {}
        }
        Ok(events)
    }

    /// The names members gave themselves, for a new member to show.
    fn roster(&self, tx: &Connection, c: &ConvRow, conv: &Conversation) -> Result<Vec<MemberName>, ClientError> {
        let mut roster =
            vec![MemberName { identity_key: self.profile.identity_key.clone(), name: self.profile.name.clone() }];
        for key in conv.members() {
            // The name they chose: from the group, or from our 1:1 chat unless we renamed them
            // (our own names for people stay ours).
            let name: Option<String> = tx
                .query_row(
                    "SELECT name FROM members WHERE conversation_id = ?1 AND identity_key = ?2 UNION ALL SELECT name FROM contacts WHERE identity_key = ?2 AND named_by_user = 0",
                    params![c.id, key],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(name) = name {
                roster.push(MemberName { identity_key: key, name });
            }
        }
        Ok(roster)
    }

    fn departed(&self, tx: &Connection, conv_id: i64) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut stmt = tx.prepare("SELECT identity_key FROM members WHERE conversation_id = ?1 AND departed = 1")?;
        let keys = stmt.query_map([conv_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(keys)
    }

    /// Sends a group invite, in parts, through our 1:1 chat with the member it is for.
    fn send_invite(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        key: &[u8],
        invite: &GroupInvite,
    ) -> Result<(), ClientError> {
        let contact = contact_where(tx, "identity_key = ?1", &key)?
            .ok_or_else(|| ClientError::Corrupt("a new member who is not a contact".into()))?;
        let dc = conv_by_id(tx, contact.conversation_id)?;
        let mut direct = load_conversation(provider, &dc)?;
        let bytes = invite.encode_to_vec();
        let chunks: Vec<&[u8]> = bytes.chunks(MAX_INVITE_PART).collect();
        let invite_id = random_id();
        let parts = u32::try_from(chunks.len()).map_err(|_| ClientError::BadInput("the group is too large".into()))?;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let part = GroupInvitePart {
                invite_id: invite_id.clone(),
                part: u32::try_from(i).unwrap_or(u32::MAX),
                parts,
                data: chunk.to_vec(),
            };
            enqueue_content(tx, provider, &self.identity, &mut direct, &dc, &content(Body::GroupInvite(part)), None)?;
        }
        Ok(())
    }

    /// Stores one part of a group invite from `contact`; with the last part, joins the group.
    pub(crate) fn receive_invite_part(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        contact: &ContactRow,
        part: GroupInvitePart,
    ) -> Result<Option<(String, Vec<MessageView>)>, ClientError> {
        let other_parts: Option<i64> = tx
            .query_row(
                "SELECT parts FROM invite_parts WHERE contact_id = ?1 AND invite_id = ?2 AND parts != ?3 LIMIT 1",
                params![contact.id, part.invite_id, part.parts],
                |r| r.get(0),
            )
            .optional()?;
        if other_parts.is_some() {
            return Err(ClientError::BadInput("group invite parts disagree on their count".into()));
        }
        tx.execute(
            "INSERT OR IGNORE INTO invite_parts (contact_id, invite_id, part, parts, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![contact.id, part.invite_id, part.part, part.parts, part.data],
        )?;
        let have: i64 = tx.query_row(
            "SELECT count(*) FROM invite_parts WHERE contact_id = ?1 AND invite_id = ?2",
            params![contact.id, part.invite_id],
            |r| r.get(0),
        )?;
        if to_u64(have) < u64::from(part.parts) {
            return Ok(None);
        }
        let bytes: Vec<u8> = {
            let mut stmt =
                tx.prepare("SELECT data FROM invite_parts WHERE contact_id = ?1 AND invite_id = ?2 ORDER BY part")?;
            let chunks: Vec<Vec<u8>> =
                stmt.query_map(params![contact.id, part.invite_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
            chunks.concat()
        };
        tx.execute(
            "DELETE FROM invite_parts WHERE contact_id = ?1 AND invite_id = ?2",
            params![contact.id, part.invite_id],
        )?;
        let invite = GroupInvite::decode(bytes.as_slice())
            .map_err(|_| ClientError::BadInput("undecodable group invite".into()))?;
        self.join_group(tx, provider, contact, invite).map(Some)
    }

    fn join_group(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        adder: &ContactRow,
        invite: GroupInvite,
    ) -> Result<(String, Vec<MessageView>), ClientError> {
        let log = invite.log.ok_or_else(|| ClientError::BadInput("a group invite without its log".into()))?;
        let relay =
            log.relay.as_ref().ok_or_else(|| ClientError::BadInput("a group invite without its relay".into()))?;
        relay.validate()?;
        if log.log_id.len() != ID_LEN || invite.cursor_id.len() != ID_LEN {
            return Err(ClientError::BadInput("a group invite with a bad log or cursor id".into()));
        }
        signing_key(&log.log_secret)?;
        let targets = key_packages::welcome_targets(&invite.welcome)?;
        let mut conv = Conversation::join(provider, &invite.welcome)?;
        if !conv.members().contains(&adder.identity_key) {
            return Err(ClientError::BadInput("a group invite from someone outside the group".into()));
        }
        let known: Option<(i64, String, String)> = tx
            .query_row("SELECT id, state, name FROM conversations WHERE group_id = ?1", [conv.group_id()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let (conv_id, name) = match known {
            Some((_, state, _)) if state == "active" => {
                return Err(ClientError::BadInput("an invite to a group we are already in".into()));
            }
            // Added back after leaving or being removed: the same conversation, read from here on.
            Some((id, _, name)) => {
                let relay = log.relay.as_ref().map(RelayDescriptor::to_link).unwrap_or_default();
                tx.execute(
                    "UPDATE conversations SET state = 'active', joined_epoch = ?1, relay_link = ?2, log_id = ?3, log_secret = ?4, cursor_id = ?5, cursor = ?6, sent_since_update = 0, updated_at = ?7 WHERE id = ?8",
                    params![
                        to_i64(conv.epoch()),
                        relay,
                        log.log_id,
                        log.log_secret,
                        invite.cursor_id,
                        to_i64(invite.cursor_position),
                        to_i64(now_ms()),
                        id
                    ],
                )?;
                (id, name)
            }
            None => {
                let name = unique_name(tx, &clean_name(&invite.name))?;
                (insert_conversation(tx, Some(&name), &conv, &log, &invite.cursor_id, invite.cursor_position)?, name)
            }
        };
        let c = conv_by_id(tx, conv_id)?;
        for m in invite.roster.iter().filter(|m| m.identity_key.len() <= 64) {
            tx.execute(
                "INSERT OR IGNORE INTO members (conversation_id, identity_key, name) VALUES (?1, ?2, ?3)",
                params![conv_id, m.identity_key, clean_name(&m.name)],
            )?;
        }
        enqueue_content(tx, provider, &self.identity, &mut conv, &c, &self.profile_content(), None)?;
        // Shown where the adding commit stands in the group's log.
        let event = insert_event(
            self,
            tx,
            &c,
            &adder.identity_key,
            &format!("{} added you", adder.name),
            Some(invite.cursor_position),
        )?;
        // The one-time KeyPackage the Welcome used is gone: give that contact a new one.
        for target in targets {
            let used: Option<(i64, u16, bool)> = tx
                .query_row(
                    "SELECT contact_id, suite, last_resort FROM own_key_packages WHERE hash_ref = ?1",
                    [&target],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((contact_id, suite, false)) = used {
                tx.execute("DELETE FROM own_key_packages WHERE hash_ref = ?1", [&target])?;
                let suite =
                    Ciphersuite::try_from(suite).map_err(|_| ClientError::Corrupt("unknown ciphersuite".into()))?;
                let contact = contact_where(tx, "id = ?1", &contact_id)?
                    .ok_or_else(|| ClientError::Corrupt("a KeyPackage of a vanished contact".into()))?;
                let dc = conv_by_id(tx, contact.conversation_id)?;
                let mut direct = load_conversation(provider, &dc)?;
                self.send_key_packages(tx, provider, &mut direct, &dc, contact.id, &[(suite, 1, false)])?;
            }
        }
        Ok((name, vec![event]))
    }

    /// Gives a contact our KeyPackages through our 1:1 chat: a few one-time ones and a
    /// last-resort one per ciphersuite.
    pub(crate) fn offer_key_packages(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        conv: &mut Conversation,
        c: &ConvRow,
        contact_id: i64,
    ) -> Result<(), ClientError> {
        let offered: i64 = tx.query_row(
            "SELECT count(*) FROM own_key_packages WHERE contact_id = ?1 AND created_at > ?2",
            params![contact_id, renewal_cutoff()],
            |r| r.get(0),
        )?;
        if offered > 0 {
            return Ok(()); // two crossed invites: the first chat already carried them
        }
        let plan: Vec<(Ciphersuite, usize, bool)> =
            SUITES.iter().flat_map(|s| [(*s, ONE_TIME_PER_SUITE, false), (*s, 1, true)]).collect();
        self.send_key_packages(tx, provider, conv, c, contact_id, &plan)
    }

    fn send_key_packages(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        conv: &mut Conversation,
        c: &ConvRow,
        contact_id: i64,
        plan: &[(Ciphersuite, usize, bool)],
    ) -> Result<(), ClientError> {
        let mut offer = KeyPackages::default();
        for &(suite, count, last_resort) in plan {
            for _ in 0..count {
                let kp = key_packages::generate(provider, &self.identity, suite, last_resort)?;
                tx.execute(
                    "INSERT INTO own_key_packages (hash_ref, contact_id, suite, last_resort, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![kp.hash_ref, contact_id, u16::from(suite), last_resort, to_i64(now_ms())],
                )?;
                if last_resort { offer.last_resort.push(kp.bytes) } else { offer.one_time.push(kp.bytes) }
            }
        }
        debug_assert!(
            offer.one_time.len() <= MAX_ONE_TIME_PACKAGES && offer.last_resort.len() <= MAX_LAST_RESORT_PACKAGES
        );
        enqueue_content(tx, provider, &self.identity, conv, c, &content(Body::KeyPackages(offer)), None)?;
        Ok(())
    }

    /// Offers KeyPackages to contacts who hold none of ours that are fresh (contacts made before
    /// this version, or whose packages are near their expiry).
    pub(crate) fn ensure_key_packages_offered(&self) -> Result<(), ClientError> {
        let missing: Vec<(i64, i64)> = {
            let mut stmt = self.conn.prepare(
                "SELECT c.id, c.conversation_id FROM contacts c JOIN conversations v ON v.id = c.conversation_id WHERE v.state = 'active' AND NOT EXISTS (SELECT 1 FROM own_key_packages k WHERE k.contact_id = c.id AND k.created_at > ?1)",
            )?;
            stmt.query_map([renewal_cutoff()], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        for (contact_id, conv_id) in missing {
            let tx = self.begin()?;
            let provider = Provider::new(&tx);
            let c = conv_by_id(&tx, conv_id)?;
            let mut conv = load_conversation(&provider, &c)?;
            self.offer_key_packages(&tx, &provider, &mut conv, &c, contact_id)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Events for a commit another member made; if it removed us, the group is closed.
    pub(crate) fn commit_events(
        &self,
        tx: &Connection,
        c: &ConvRow,
        summary: &CommitSummary,
        seq: u64,
    ) -> Result<Vec<MessageView>, ClientError> {
        let who = self.member_name(tx, c, &summary.committer)?;
        let mut events = Vec::new();
        if summary.removed_us {
            tx.execute("UPDATE conversations SET state = 'removed' WHERE id = ?1", [c.id])?;
            tx.execute("DELETE FROM intents WHERE conversation_id = ?1", [c.id])?;
            events.push(insert_event(self, tx, c, &summary.committer, &format!("{who} removed you"), Some(seq))?);
            return Ok(events);
        }
        if !summary.added.is_empty() {
            let names: Vec<String> =
                summary.added.iter().map(|k| self.member_name(tx, c, k)).collect::<Result<_, _>>()?;
            events.push(insert_event(
                self,
                tx,
                c,
                &summary.committer,
                &format!("{who} added {}", names.join(", ")),
                Some(seq),
            )?);
        }
        let departed = self.departed(tx, c.id)?;
        let removed: Vec<String> = summary
            .removed
            .iter()
            .filter(|k| !departed.contains(k))
            .map(|k| self.member_name(tx, c, k))
            .collect::<Result<_, _>>()?;
        if !removed.is_empty() {
            events.push(insert_event(
                self,
                tx,
                c,
                &summary.committer,
                &format!("{who} removed {}", removed.join(", ")),
                Some(seq),
            )?);
        }
        Ok(events)
    }

    /// A member said it is leaving. The first remaining member in the tree removes it at once;
    /// the others wait a while and do it only if nobody did.
    pub(crate) fn member_left(
        &self,
        tx: &Connection,
        provider: &Provider<'_>,
        c: &ConvRow,
        sender: &[u8],
        seq: u64,
    ) -> Result<Vec<MessageView>, ClientError> {
        let name = self.member_name(tx, c, sender)?;
        tx.execute(
            "INSERT INTO members (conversation_id, identity_key, name, departed) VALUES (?1, ?2, ?3, 1) ON CONFLICT (conversation_id, identity_key) DO UPDATE SET departed = 1",
            params![c.id, sender, name],
        )?;
        let event = insert_event(self, tx, c, sender, &format!("{name} left"), Some(seq))?;
        let departed = self.departed(tx, c.id)?;
        let conv = load_conversation(provider, c)?;
        let first = conv.members().into_iter().find(|k| !departed.contains(k));
        let wait = if first.as_deref() == Some(self.profile.identity_key.as_slice()) { 0 } else { DEPARTURE_GRACE_MS };
        insert_intent(tx, c.id, "remove", &[sender.to_vec()], &[], now_ms() + wait)?;
        Ok(vec![event])
    }
}
