//! `tamizdat chat`: the TUI's worker. It owns the client and does everything that waits on
//! the network or the disk; the TUI (crate `tamizdat-tui`) only draws and sends it actions, so
//! the screen never waits for a relay.

use std::time::Duration;

use tamizdat_client::{Client, ClientError, ConversationView, MessageView, SyncReport};
use tamizdat_tui::{Action, ChatMessage, ConversationSummary, Update};
use tokio::sync::mpsc;

use crate::Failure;

/// Resync this often even without announcements; retry this often while offline.
const RESYNC: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(3);
/// How often disappearing messages are looked for.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Runs the TUI and its worker until the user quits.
pub(crate) async fn run(client: Client) -> Result<(), Failure> {
    let (updates, updates_rx) = mpsc::channel::<Update>(1024);
    let (actions, actions_rx) = mpsc::channel::<Action>(256);
    let options = tamizdat_tui::Options { mouse: true, utc_offset_minutes: local_offset_minutes() };
    let ui = tamizdat_tui::run_with(options, updates_rx, actions);
    let own_name = client.name().to_string();
    let mut worker = Worker { client, updates, open: None, own_name, last_ok_ms: None };
    let (ui, worker_result) = tokio::join!(ui, worker.run(actions_rx));
    worker.client.close().await;
    ui.map_err(|e| Failure(format!("the terminal: {e}")))?;
    worker_result
}

/// The offset of local time from UTC, from `TZ_OFFSET_MINUTES` if set (the TUI shows UTC
/// otherwise: reading the system's time zone database is not worth a dependency).
fn local_offset_minutes() -> i32 {
    std::env::var("TAMIZDAT_UTC_OFFSET_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

struct Worker {
    client: Client,
    updates: mpsc::Sender<Update>,
    /// The conversation on screen: what arrives in it is read.
    open: Option<String>,
    own_name: String,
    /// When a sync last reached every relay, for the status line.
    last_ok_ms: Option<u64>,
}

impl Worker {
    async fn run(&mut self, mut actions: mpsc::Receiver<Action>) -> Result<(), Failure> {
        let mut sync_due = true;
        let mut healthy = false;
        let mut purge = tokio::time::interval(PURGE_EVERY);
        self.push_conversations().await;
        loop {
            if sync_due {
                healthy = self.sync().await;
                sync_due = false;
            }
            let wait = if healthy { RESYNC } else { RETRY };
            tokio::select! {
                action = actions.recv() => match action {
                    None | Some(Action::Quit) => return Ok(()),
                    Some(action) => self.act(action).await,
                },
                _ = self.client.wait_for_notice(wait) => sync_due = true,
                _ = purge.tick() => {
                    if self.client.purge_expired().unwrap_or(0) > 0 {
                        self.reload_open().await;
                        self.push_conversations().await;
                    }
                }
            }
        }
    }

    async fn push(&self, update: Update) {
        // The TUI drains its queue every frame; waiting here only when it is far behind.
        let _ = self.updates.send(update).await;
    }

    async fn push_status(&self, syncing: bool) {
        let status = self.client.connection_status();
        let route = match status.route {
            "direct" => tamizdat_tui::Route::Direct,
            "bridge" => tamizdat_tui::Route::Bridge,
            "proxy" => tamizdat_tui::Route::Proxy,
            "pt" => tamizdat_tui::Route::PluggableTransport(
                status.endpoint.as_deref().and_then(|e| e.split_whitespace().next()).unwrap_or("pt").to_string(),
            ),
            _ => tamizdat_tui::Route::Offline,
        };
        let blocked = match (&status.problem, status.blocked) {
            (Some(p), true) => Some(format!("blocked: {p}")),
            (Some(p), false) => Some(p.clone()),
            (None, _) if status.freezes => Some("this network freezes busy connections; keeping them small".into()),
            (None, _) => None,
        };
        self.push(Update::Status(tamizdat_tui::ConnectionStatus {
            route,
            endpoint: status.endpoint,
            blocked,
            syncing,
            last_ok_ms: self.last_ok_ms,
        }))
        .await;
    }

    /// Subscribes, syncs, and shows what arrived. Returns whether every relay answered.
    async fn sync(&mut self) -> bool {
        self.push_status(true).await;
        let subscribed = self.client.subscribe_all().await.is_ok();
        let healthy = match self.client.sync().await {
            Ok(report) => {
                self.show(&report).await;
                if report.failures.is_empty() {
                    self.last_ok_ms = Some(now_ms());
                }
                subscribed && report.failures.is_empty()
            }
            Err(e) => {
                self.push(Update::Error(e.to_string())).await;
                false
            }
        };
        self.push_status(false).await;
        healthy
    }

    /// Shows a sync's findings; what arrived in the open conversation is read.
    async fn show(&mut self, report: &SyncReport) {
        for name in &report.new_contacts {
            self.push(Update::Notice(format!("{name} accepted your invite"))).await;
        }
        for name in &report.new_groups {
            self.push(Update::Notice(format!("you were added to {name}"))).await;
        }
        for m in report.messages.iter().chain(&report.changed) {
            self.push(Update::Message { conversation: m.conversation.clone(), message: self.chat_message(m) }).await;
        }
        for t in report.typing.iter().filter(|t| t.typing) {
            self.push(Update::Typing { conversation: t.conversation.clone(), who: t.who.clone() }).await;
        }
        let arrived_here =
            self.open.as_ref().is_some_and(|open| report.messages.iter().any(|m| &m.conversation == open));
        if arrived_here && let Some(open) = self.open.clone() {
            let read = self.client.mark_read(&open).await;
            self.check(read).await;
        }
        self.push_conversations().await;
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Open(name) => {
                self.open = Some(name.clone());
                self.reload_open().await;
                let read = self.client.mark_read(&name).await;
                self.check(read).await;
                self.push_conversations().await;
            }
            Action::Send { conversation, text, reply_to } => {
                let sent = match reply_to {
                    Some(id) => self.client.reply(&conversation, &text, &id).await,
                    None => self.client.send(&conversation, &text).await,
                };
                self.after_change(&conversation, sent).await;
            }
            Action::Edit { conversation, message, text } => {
                let edited = self.client.edit(&conversation, &message, &text).await;
                self.after_change(&conversation, edited).await;
            }
            Action::Delete { conversation, message } => {
                let deleted = self.client.delete(&conversation, &message).await;
                self.after_change(&conversation, deleted).await;
            }
            Action::React { conversation, message, emoji } => {
                // Reacting again with the same emoji takes it back.
                let mine = self
                    .find(&conversation, &message)
                    .is_some_and(|m| m.reactions.iter().any(|r| r.emoji == emoji && r.by.contains(&self.own_name)));
                let emoji = if mine { String::new() } else { emoji };
                let reacted = self.client.react(&conversation, &message, &emoji).await;
                self.after_change(&conversation, reacted).await;
            }
            Action::Retry { conversation, message } => match self.find(&conversation, &message) {
                Some(m) => {
                    let sent = self.client.send(&conversation, &m.text).await;
                    self.after_change(&conversation, sent).await;
                }
                None => self.push(Update::Error("that message is gone".into())).await,
            },
            Action::Typing(conversation) => {
                // Typing indicators are best effort: a failure is not worth a line.
                let _ = self.client.typing(&conversation, true).await;
            }
            Action::SendFile { conversation, path } => {
                let path = expand_home(&path);
                let updates = self.updates.clone();
                let sent = self
                    .client
                    .send_file(&conversation, &path, None, None, |done, total| {
                        if total > 0 && (done == total || done % (8 * 1024 * 1024) < 256 * 1024) {
                            let _ = updates.try_send(Update::Notice(format!(
                                "uploading {}: {}%",
                                path.display(),
                                done * 100 / total
                            )));
                        }
                    })
                    .await;
                self.after_change(&conversation, sent).await;
            }
            Action::Save { conversation: _, message } => {
                let saved = self.client.save(&message, None, |_, _| {}).await;
                match saved {
                    Ok(saved) => self.push(Update::Notice(format!("saved to {}", saved.path))).await,
                    Err(e) => self.push(Update::Error(e.to_string())).await,
                }
                self.reload_open().await;
            }
            // Open loads the whole conversation, so there is nothing older to fetch.
            Action::LoadOlder { .. } => {}
            Action::NewInvite => match self.client.invite(7 * 86_400) {
                // The QR code shows the short code when the relay can hold the invite.
                Ok(link) => match self.client.invite_code(&link).await {
                    Ok(code) => self.push(Update::Invite(code)).await,
                    Err(_) => self.push(Update::Invite(link)).await,
                },
                Err(e) => self.push(Update::Error(e.to_string())).await,
            },
            Action::Quit => {}
        }
    }

    /// After the user changed something: show the message (or why it failed) and refresh.
    async fn after_change(&mut self, conversation: &str, result: Result<MessageView, ClientError>) {
        match result {
            Ok(m) => {
                self.push(Update::Message { conversation: m.conversation.clone(), message: self.chat_message(&m) })
                    .await
            }
            Err(e) => {
                // A message the relay could not take yet is kept and shown as sending.
                self.push(Update::Error(e.to_string())).await;
                if self.open.as_deref() == Some(conversation) {
                    self.reload_open().await;
                }
            }
        }
        self.push_status(false).await;
        self.push_conversations().await;
    }

    async fn check(&self, result: Result<usize, ClientError>) {
        if let Err(e) = result {
            self.push(Update::Error(e.to_string())).await;
        }
    }

    fn find(&self, conversation: &str, id: &str) -> Option<MessageView> {
        self.client.message(conversation, id).ok().flatten()
    }

    async fn reload_open(&self) {
        let Some(open) = &self.open else { return };
        match self.client.messages(open) {
            Ok(messages) => {
                let messages = messages.iter().map(|m| self.chat_message(m)).collect();
                self.push(Update::Messages { conversation: open.clone(), messages }).await;
            }
            Err(e) => self.push(Update::Error(e.to_string())).await,
        }
    }

    async fn push_conversations(&self) {
        match self.client.conversations() {
            Ok(list) => self.push(Update::Conversations(list.iter().map(summary).collect())).await,
            Err(e) => self.push(Update::Error(e.to_string())).await,
        }
    }

    fn chat_message(&self, m: &MessageView) -> ChatMessage {
        chat_message(m, &self.own_name)
    }
}

fn summary(c: &ConversationView) -> ConversationSummary {
    ConversationSummary {
        id: c.name.clone(),
        name: c.name.clone(),
        is_group: c.group,
        unread: c.unread,
        last_text: c.last.as_ref().map(preview).unwrap_or_default(),
        last_at_ms: c.last.as_ref().map(|m| m.sent_at),
        typing: c.typing.clone(),
        verified: c.verified,
        key_changed: c.key_changed,
        expire_secs: (c.expire_secs > 0).then_some(u64::from(c.expire_secs)),
    }
}

/// What the conversation list shows of a message.
fn preview(m: &MessageView) -> String {
    if m.deleted {
        return "(deleted)".into();
    }
    match &m.attachment {
        Some(a) => format!("📎 {}", a.name),
        None => m.text.clone(),
    }
}

fn chat_message(m: &MessageView, own_name: &str) -> ChatMessage {
    use tamizdat_tui::{MessageKind, MessageState};
    let state = match m.state.as_str() {
        "sending" | "uploading" => MessageState::Sending,
        "sent" => MessageState::Sent,
        "delivered" => MessageState::Delivered,
        "read" => MessageState::Read,
        "failed" => MessageState::Failed,
        _ => MessageState::Received,
    };
    let kind = match m.kind.as_str() {
        "event" => MessageKind::Event,
        "file" => MessageKind::File,
        _ => MessageKind::Text,
    };
    ChatMessage {
        id: m.id.clone(),
        sender: m.sender.clone(),
        text: m.text.clone(),
        sent_at_ms: m.sent_at,
        outgoing: m.outgoing,
        state,
        reply_to: m.reply_to.as_ref().map(|r| tamizdat_tui::Quote {
            sender: r.sender.clone().unwrap_or_else(|| "?".into()),
            snippet: r.text.clone(),
        }),
        edited: m.edited,
        deleted: m.deleted,
        reactions: m
            .reactions
            .iter()
            .map(|r| tamizdat_tui::Reaction {
                emoji: r.emoji.clone(),
                count: u32::try_from(r.by.len()).unwrap_or(u32::MAX),
                mine: r.by.iter().any(|who| who == own_name),
            })
            .collect(),
        attachment: m.attachment.as_ref().map(|a| tamizdat_tui::Attachment {
            name: a.name.clone(),
            size: a.size,
            saved: a.saved_path.is_some(),
        }),
        kind,
        expires_at_ms: m.expires_at,
    }
}

fn expand_home(path: &std::path::Path) -> std::path::PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
