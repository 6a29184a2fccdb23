//! Conversation features beyond plain text: replies, edits and deletion for everyone,
//! reactions, delivery and read receipts, typing, disappearing messages, and the conversation
//! list with unread counts.
//!
//! Everything here travels as encrypted [`Content`] in the conversation's log like a text, so
//! the relay cannot tell a reaction from a message. What a member may change is checked on
//! arrival: only the sender of a message edits or deletes it, and a receipt only marks our own
//! messages.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tamizdat_e2e::content::{
    Body, Content, Delete, Edit, ExpiryTimer, MAX_EXPIRE_SECS, MAX_REACTION, MAX_RECEIPT_IDS, MAX_TEXT, Reaction,
    Receipt, ReceiptKind, Text, Typing,
};

use crate::{
    Client, ClientError, MessageView, SyncReport,
    engine::{ConvRow, content, conv_by_id, now_ms, to_i64},
    groups::setting,
};

/// A typing indicator older than this (by arrival or by the sender's clock) is ignored.
pub const TYPING_FRESH_MS: u64 = 15_000;

/// A conversation as the conversation list shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConversationView {
    /// The contact's or the group's name.
    pub name: String,
    /// A group, not a 1:1 chat.
    pub group: bool,
    /// Incoming messages not yet read.
    pub unread: u32,
    /// The newest message, if any.
    pub last: Option<MessageView>,
    /// Seconds after which messages disappear (0: never).
    pub expire_secs: u32,
    /// 1:1 only: the contact's safety number was compared and marked verified.
    pub verified: bool,
    /// 1:1 only: the contact's key changed and the user has not acknowledged it yet.
    pub key_changed: bool,
    /// Who is typing right now.
    pub typing: Option<String>,
    /// `active`, `left` or `removed`.
    pub state: String,
}

/// Someone started or stopped typing.
#[derive(Clone, Debug, Serialize)]
pub struct TypingView {
    /// The conversation.
    pub conversation: String,
    /// Who.
    pub who: String,
    /// Typing (true) or stopped (false).
    pub typing: bool,
}

/// Renders a timer for people: `30s`, `5m`, `12h`, `7d`, or `off`.
pub fn format_timer(secs: u32) -> String {
    match secs {
        0 => "off".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A stored message found by its id: which row, and who may change it.
struct Found {
    row: i64,
    outgoing: bool,
    sender_key: Option<Vec<u8>>,
    deleted: bool,
}

/// The message with this id in the conversation. A contact may have two 1:1 conversations
/// (two invites crossed); a message of either counts.
fn find_message(conn: &Connection, c: &ConvRow, message_id: &[u8]) -> Result<Option<Found>, ClientError> {
    let sql = "SELECT m.id, m.outgoing, m.sender_key, m.deleted FROM messages m JOIN conversations v ON v.id = m.conversation_id \
               WHERE m.message_id = ?1 AND m.kind != 'event' AND (v.id = ?2 OR (v.kind = 'direct' AND v.contact_id = ?3)) LIMIT 1";
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params![message_id, c.id, c.contact_id.filter(|_| !c.is_group)], |r| {
            Ok(Found { row: r.get(0)?, outgoing: r.get(1)?, sender_key: r.get(2)?, deleted: r.get(3)? })
        })
        .optional()?)
}

pub(crate) fn parse_id(hex_id: &str) -> Result<Vec<u8>, ClientError> {
    hex::decode(hex_id).ok().filter(|id| id.len() == tamizdat_wire::limits::ID_LEN).ok_or_else(|| {
        ClientError::BadInput(format!("{hex_id:?} is not a message id (32 hex digits, as `messages --json` shows)"))
    })
}

/// Erases a message's content for everyone's view: its text, reactions and file key go; the
/// row stays as "deleted" so the conversation keeps its shape.
fn erase(tx: &Connection, row: i64) -> Result<(), ClientError> {
    tx.execute("UPDATE messages SET text = '', deleted = 1, reply_to = NULL WHERE id = ?1", [row])?;
    tx.execute("DELETE FROM reactions WHERE message_row = ?1", [row])?;
    tx.execute("DELETE FROM attachments WHERE message_row = ?1", [row])?;
    Ok(())
}

/// When a message with this timer disappears, counted from `from_ms`.
pub(crate) fn expiry(from_ms: u64, secs: u32) -> Option<i64> {
    (secs > 0).then(|| to_i64(from_ms.saturating_add(u64::from(secs) * 1000)))
}

impl Client {
    /// Sends a text that answers another message of the conversation.
    pub async fn reply(&mut self, to: &str, text: &str, reply_to: &str) -> Result<MessageView, ClientError> {
        let c = self.conversation(to)?;
        let target = parse_id(reply_to)?;
        if find_message(&self.conn, &c, &target)?.is_none() {
            return Err(ClientError::BadInput(format!("no message {reply_to} in {to}")));
        }
        self.send_text(to, text, target).await
    }

    /// Changes the text of one of our messages, for everyone in the conversation.
    pub async fn edit(&mut self, to: &str, message: &str, text: &str) -> Result<MessageView, ClientError> {
        if text.is_empty() || text.len() > MAX_TEXT {
            return Err(ClientError::BadInput(format!("the new text must be 1 to {MAX_TEXT} bytes")));
        }
        let (c, found) = self.own_message(to, message)?;
        let target = parse_id(message)?;
        let body = Body::Edit(Edit { target, text: text.into() });
        self.post(&c, content(body), |tx| {
            tx.execute(
                "UPDATE messages SET text = ?1, edited_at = ?2 WHERE id = ?3",
                params![text, to_i64(now_ms()), found.row],
            )?;
            Ok(None)
        })
        .await?;
        self.message_by_row(found.row)
    }

    /// Deletes one of our messages for everyone in the conversation.
    pub async fn delete(&mut self, to: &str, message: &str) -> Result<MessageView, ClientError> {
        let (c, found) = self.own_message(to, message)?;
        let body = Body::Delete(Delete { target: parse_id(message)? });
        self.post(&c, content(body), |tx| {
            erase(tx, found.row)?;
            Ok(None)
        })
        .await?;
        self.message_by_row(found.row)
    }

    /// Reacts to a message; an empty `emoji` takes our reaction back.
    pub async fn react(&mut self, to: &str, message: &str, emoji: &str) -> Result<MessageView, ClientError> {
        if emoji.len() > MAX_REACTION || emoji.chars().any(char::is_control) {
            return Err(ClientError::BadInput(format!("a reaction is one emoji (at most {MAX_REACTION} bytes)")));
        }
        let c = self.conversation(to)?;
        let target = parse_id(message)?;
        let found = find_message(&self.conn, &c, &target)?
            .filter(|f| !f.deleted)
            .ok_or_else(|| ClientError::BadInput(format!("no message {message} in {to}")))?;
        let own_key = self.profile.identity_key.clone();
        let body = Body::Reaction(Reaction { target, emoji: emoji.into() });
        self.post(&c, content(body), |tx| {
            set_reaction(tx, found.row, &own_key, emoji)?;
            Ok(None)
        })
        .await?;
        self.message_by_row(found.row)
    }

    /// Marks everything in a conversation as read. Unless `read-receipts` is off, the senders
    /// are told (one receipt for up to 256 messages). Returns how many messages were unread.
    pub async fn mark_read(&mut self, name: &str) -> Result<usize, ClientError> {
        let c = self.conversation(name)?;
        let now = to_i64(now_ms());
        let unread: Vec<(i64, Vec<u8>, String)> = {
            let mut stmt = self.conn.prepare(
                "SELECT m.id, m.message_id, m.kind FROM messages m JOIN conversations v ON v.id = m.conversation_id \
                 WHERE m.outgoing = 0 AND m.read_at IS NULL AND (v.id = ?1 OR (v.kind = 'direct' AND v.contact_id = ?2))",
            )?;
            let rows = stmt.query_map(params![c.id, c.contact_id.filter(|_| !c.is_group)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        if unread.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Vec<u8>> =
            unread.iter().filter(|(_, _, kind)| kind != "event").map(|(_, id, _)| id.clone()).collect();
        let mark = |tx: &Connection| -> Result<(), ClientError> {
            for (row, _, _) in &unread {
                tx.execute("UPDATE messages SET read_at = ?1 WHERE id = ?2", params![now, row])?;
            }
            Ok(())
        };
        if ids.is_empty() || setting(&self.conn, "read-receipts")? == 0 || !c.active {
            let tx = self.begin()?;
            mark(&tx)?;
            tx.commit()?;
            return Ok(unread.len());
        }
        let mut chunks = ids.chunks(MAX_RECEIPT_IDS).peekable();
        while let Some(chunk) = chunks.next() {
            let receipt = Body::Receipt(Receipt { kind: ReceiptKind::Read as i32, message_ids: chunk.to_vec() });
            let last = chunks.peek().is_none();
            // The marks are written with the last receipt, in its transaction.
            self.post(&c, content(receipt), |tx| {
                if last {
                    mark(tx)?;
                }
                Ok(None)
            })
            .await?;
        }
        Ok(unread.len())
    }

    /// Tells the conversation we are typing (or stopped), unless `typing-indicators` is off.
    /// Returns whether anything was sent. Callers send it at most every few seconds.
    pub async fn typing(&mut self, name: &str, typing: bool) -> Result<bool, ClientError> {
        let c = self.conversation(name)?;
        if setting(&self.conn, "typing-indicators")? == 0 || !c.active {
            return Ok(false);
        }
        self.post(&c, content(Body::Typing(Typing { typing })), |_| Ok(None)).await?;
        Ok(true)
    }

    /// Sets the conversation's disappearing-message timer (0 turns it off) for everyone in it.
    pub async fn set_expiry(&mut self, name: &str, secs: u32) -> Result<MessageView, ClientError> {
        if secs > MAX_EXPIRE_SECS {
            return Err(ClientError::BadInput("the longest disappearing-message timer is 366 days".into()));
        }
        let c = self.conversation(name)?;
        if !c.active {
            return Err(ClientError::BadInput(format!("you are no longer in {name}")));
        }
        let own_key = self.profile.identity_key.clone();
        let row = self
            .post(&c, content(Body::ExpiryTimer(ExpiryTimer { seconds: secs })), |tx| {
                tx.execute("UPDATE conversations SET expire_secs = ?1 WHERE id = ?2", params![secs, c.id])?;
                let text = match secs {
                    0 => "you turned disappearing messages off".to_string(),
                    s => format!("you set disappearing messages to {}", format_timer(s)),
                };
                Ok(Some(insert_event_row(tx, c.id, &own_key, true, &text, None)?))
            })
            .await?;
        self.message_by_row(row.ok_or_else(|| ClientError::Corrupt("the timer event vanished".into()))?)
    }

    /// Deletes every message whose disappearing timer ran out. Returns how many.
    pub fn purge_expired(&self) -> Result<usize, ClientError> {
        Ok(self
            .conn
            .execute("DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?1", [to_i64(now_ms())])?)
    }

    /// Every conversation, the most recently active first, with unread counts and the newest
    /// message.
    pub fn conversations(&self) -> Result<Vec<ConversationView>, ClientError> {
        let now = to_i64(now_ms());
        type Row = (i64, Option<i64>, u32, bool, bool, Option<Vec<u8>>, i64, String);
        let rows: Vec<Row> = {
            // A contact with two 1:1 conversations is listed once, under the one in use.
            let mut stmt = self.conn.prepare(
                "SELECT v.id, v.contact_id, v.expire_secs, COALESCE(c.verified, 0), c.key_changed_at IS NOT NULL, v.typing_key, v.typing_until, v.state \
                 FROM conversations v LEFT JOIN contacts c ON c.id = v.contact_id \
                 WHERE v.kind = 'group' OR c.conversation_id = v.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut views = Vec::with_capacity(rows.len());
        for (id, contact, expire_secs, verified, key_changed, typing_key, typing_until, state) in rows {
            let c = conv_by_id(&self.conn, id)?;
            let scope = "(m.conversation_id = ?1 OR m.conversation_id IN (SELECT id FROM conversations WHERE kind = 'direct' AND contact_id = ?2)) \
                         AND (m.expires_at IS NULL OR m.expires_at > ?3)";
            let unread: u32 = self.conn.query_row(
                &format!("SELECT count(*) FROM messages m WHERE {scope} AND m.outgoing = 0 AND m.read_at IS NULL"),
                params![id, contact, now],
                |r| r.get(0),
            )?;
            let last: Option<i64> = self
                .conn
                .query_row(
                    &format!("SELECT m.id FROM messages m WHERE {scope} ORDER BY m.id DESC LIMIT 1"),
                    params![id, contact, now],
                    |r| r.get(0),
                )
                .optional()?;
            let typing = match typing_key {
                Some(key) if typing_until > now => Some(self.member_name(&self.conn, &c, &key)?),
                _ => None,
            };
            views.push(ConversationView {
                name: c.name.clone(),
                group: c.is_group,
                unread,
                last: last.map(|row| self.message_by_row(row)).transpose()?,
                expire_secs,
                verified,
                key_changed,
                typing,
                state,
            });
        }
        views.sort_by_key(|v| std::cmp::Reverse(v.last.as_ref().map_or(0, |m| m.sent_at)));
        Ok(views)
    }

    /// One message of a conversation by its id, if this device still has it.
    pub fn message(&self, conversation: &str, message: &str) -> Result<Option<MessageView>, ClientError> {
        let c = self.conversation(conversation)?;
        find_message(&self.conn, &c, &parse_id(message)?)?.map(|f| self.message_by_row(f.row)).transpose()
    }

    /// The conversation and our own, not deleted, message `message` in it.
    fn own_message(&self, to: &str, message: &str) -> Result<(ConvRow, Found), ClientError> {
        let c = self.conversation(to)?;
        let found = find_message(&self.conn, &c, &parse_id(message)?)?
            .filter(|f| f.outgoing && !f.deleted)
            .ok_or_else(|| ClientError::BadInput(format!("{message} is not a message of yours in {to}")))?;
        if !c.active {
            return Err(ClientError::BadInput(format!("you are no longer in {to}")));
        }
        Ok((c, found))
    }

    /// Stores a reply, edit, deletion, reaction, receipt, typing indicator or timer that
    /// arrived in conversation `c` from `sender`. Returns the messages whose view changed.
    pub(crate) fn store_chat_content(
        &self,
        tx: &Connection,
        c: &ConvRow,
        sender: &[u8],
        seq: u64,
        content: Content,
        report: &mut SyncReport,
    ) -> Result<Vec<MessageView>, ClientError> {
        let changed = |row: i64| self.message_by_row_in(tx, row).map(|v| vec![v]);
        match content.body {
            Some(Body::Edit(e)) => {
                // A message already gone here (disappeared, deleted) has nothing left to edit.
                let Some(found) = find_message(tx, c, &e.target)? else { return Ok(Vec::new()) };
                if !is_senders(&found, sender) {
                    return Err(ClientError::BadInput("an edit of a message that is not the sender's".into()));
                }
                if found.deleted {
                    return Ok(Vec::new());
                }
                tx.execute(
                    "UPDATE messages SET text = ?1, edited_at = ?2 WHERE id = ?3",
                    params![e.text, to_i64(content.sent_at_ms), found.row],
                )?;
                report.changed.extend(changed(found.row)?);
                Ok(Vec::new())
            }
            Some(Body::Delete(d)) => {
                let Some(found) = find_message(tx, c, &d.target)? else { return Ok(Vec::new()) };
                if !is_senders(&found, sender) {
                    return Err(ClientError::BadInput("a deletion of a message that is not the sender's".into()));
                }
                erase(tx, found.row)?;
                report.changed.extend(changed(found.row)?);
                Ok(Vec::new())
            }
            Some(Body::Reaction(r)) => {
                let Some(found) = find_message(tx, c, &r.target)?.filter(|f| !f.deleted) else {
                    return Ok(Vec::new()); // reacting to something gone (expired, deleted)
                };
                set_reaction(tx, found.row, sender, &r.emoji)?;
                report.changed.extend(changed(found.row)?);
                Ok(Vec::new())
            }
            Some(Body::Receipt(r)) => {
                let read = r.kind == ReceiptKind::Read as i32;
                let at = to_i64(now_ms());
                for id in &r.message_ids {
                    let Some(found) = find_message(tx, c, id)?.filter(|f| f.outgoing) else { continue };
                    tx.execute(
                        "INSERT INTO receipts (message_row, member_key, delivered_at, read_at) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (message_row, member_key) DO UPDATE SET delivered_at = COALESCE(delivered_at, excluded.delivered_at), read_at = COALESCE(read_at, excluded.read_at)",
                        params![found.row, sender, at, read.then_some(at)],
                    )?;
                    report.changed.extend(changed(found.row)?);
                }
                Ok(Vec::new())
            }
            Some(Body::Typing(t)) => {
                let now = now_ms();
                let fresh = content.sent_at_ms.abs_diff(now) < TYPING_FRESH_MS;
                if fresh {
                    let until = if t.typing { to_i64(now + TYPING_FRESH_MS) } else { 0 };
                    tx.execute(
                        "UPDATE conversations SET typing_key = ?1, typing_until = ?2 WHERE id = ?3",
                        params![sender, until, c.id],
                    )?;
                    let who = self.member_name(tx, c, sender)?;
                    report.typing.push(TypingView { conversation: c.name.clone(), who, typing: t.typing });
                }
                Ok(Vec::new())
            }
            Some(Body::ExpiryTimer(t)) => {
                tx.execute("UPDATE conversations SET expire_secs = ?1 WHERE id = ?2", params![t.seconds, c.id])?;
                let who = self.member_name(tx, c, sender)?;
                let text = match t.seconds {
                    0 => format!("{who} turned disappearing messages off"),
                    s => format!("{who} set disappearing messages to {}", format_timer(s)),
                };
                let row = insert_event_row(tx, c.id, sender, false, &text, Some(seq))?;
                Ok(vec![self.message_by_row_in(tx, row)?])
            }
            _ => Err(ClientError::BadInput("content that does not belong in this conversation".into())),
        }
    }

    /// Sends a text, answering `reply_to` if it is not empty.
    pub(crate) async fn send_text(
        &mut self,
        to: &str,
        text: &str,
        reply_to: Vec<u8>,
    ) -> Result<MessageView, ClientError> {
        if text.is_empty() {
            return Err(ClientError::BadInput("the message is empty".into()));
        }
        if text.len() > MAX_TEXT {
            return Err(ClientError::BadInput(format!("the message is {} bytes; the limit is {MAX_TEXT}", text.len())));
        }
        let c = self.conversation(to)?;
        if !c.active {
            return Err(ClientError::BadInput(format!("you are no longer in {to}")));
        }
        let body = content(Body::Text(Text { text: text.into(), reply_to: reply_to.clone() }));
        let (own_key, sent_at, message_id) =
            (self.profile.identity_key.clone(), body.sent_at_ms, body.message_id.clone());
        let expires_at = expiry(sent_at, c.expire_secs);
        let row = self
            .post(&c, body, |tx| {
                tx.execute(
                    "INSERT INTO messages (conversation_id, message_id, outgoing, sender_key, text, sent_at, state, reply_to, expires_at) VALUES (?1, ?2, 1, ?3, ?4, ?5, 'sending', ?6, ?7)",
                    params![c.id, message_id, own_key, text, to_i64(sent_at), (!reply_to.is_empty()).then_some(&reply_to), expires_at],
                )?;
                Ok(Some(tx.last_insert_rowid()))
            })
            .await?;
        self.message_by_row(row.ok_or_else(|| ClientError::Corrupt("the sent message vanished".into()))?)
    }
}

/// A deletion or edit must come from the message's sender.
fn is_senders(found: &Found, sender: &[u8]) -> bool {
    !found.outgoing && found.sender_key.as_deref() == Some(sender)
}

fn set_reaction(tx: &Connection, row: i64, member: &[u8], emoji: &str) -> Result<(), ClientError> {
    if emoji.is_empty() {
        tx.execute("DELETE FROM reactions WHERE message_row = ?1 AND member_key = ?2", params![row, member])?;
    } else {
        tx.execute(
            "INSERT INTO reactions (message_row, member_key, emoji) VALUES (?1, ?2, ?3) \
             ON CONFLICT (message_row, member_key) DO UPDATE SET emoji = excluded.emoji",
            params![row, member, emoji],
        )?;
    }
    Ok(())
}

/// Records an event (a membership change, a timer change) and returns its row. Our own events
/// count as read.
pub(crate) fn insert_event_row(
    tx: &Connection,
    conv_id: i64,
    actor: &[u8],
    outgoing: bool,
    text: &str,
    seq: Option<u64>,
) -> Result<i64, ClientError> {
    let now = to_i64(now_ms());
    tx.execute(
        "INSERT INTO messages (conversation_id, message_id, seq, outgoing, sender_key, kind, text, sent_at, state, read_at) VALUES (?1, ?2, ?3, ?4, ?5, 'event', ?6, ?7, ?8, ?9)",
        params![
            conv_id,
            crate::engine::random_id(),
            seq.map(to_i64),
            outgoing,
            actor,
            text,
            now,
            if outgoing { "sent" } else { "received" },
            outgoing.then_some(now)
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A member's modified client forges an edit and a deletion of someone else's message: the
    /// receiver refuses both (counted as skipped) and the message stays as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_sender_edits_or_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let link = tamizdat_relay::testing::spawn_relay(dir.path()).await.0.to_link();
        let pass = "correct horse battery staple";
        let mut alice = Client::init(&dir.path().join("a"), pass, "Alice", &link).await.unwrap();
        let mut bob = Client::init(&dir.path().join("b"), pass, "Bob", &link).await.unwrap();
        let invite = alice.invite(3600).unwrap();
        bob.accept(&invite, None).await.unwrap();
        alice.sync().await.unwrap();
        bob.sync().await.unwrap();

        let original = alice.send("Bob", "the meeting is at six").await.unwrap();
        bob.sync().await.unwrap();
        let target = hex::decode(&original.id).unwrap();
        let c = bob.conversation("Alice").unwrap();
        let forged_edit = Body::Edit(Edit { target: target.clone(), text: "the meeting is cancelled".into() });
        bob.post(&c, content(forged_edit), |_| Ok(None)).await.unwrap();
        bob.post(&c, content(Body::Delete(Delete { target })), |_| Ok(None)).await.unwrap();

        let report = alice.sync().await.unwrap();
        assert_eq!(report.skipped, 2, "{report:?}");
        // What did change is Bob's delivery receipt, not the text.
        assert!(report.changed.iter().all(|m| m.text == "the meeting is at six" && !m.edited && !m.deleted));
        let kept = alice.messages("Bob").unwrap().into_iter().find(|m| m.id == original.id).unwrap();
        assert_eq!(kept.text, "the meeting is at six");
        assert!(!kept.edited && !kept.deleted);
    }
}
