//! The TUI's state and how the worker's [`Update`]s change it. Key handling is in `keys.rs`;
//! drawing reads this state and changes nothing.

use std::collections::HashMap;

use ratatui::layout::Rect;

use crate::{
    compose::Compose,
    layout,
    model::{Action, ChatMessage, ConnectionStatus, ConversationSummary, MessageState, Quote, Update},
    transcript,
};

/// How long "typing…" stays after the worker said so.
const TYPING_MS: u64 = 6_000;
/// How long a notice and an error stay.
const NOTICE_MS: u64 = 8_000;
const ERROR_MS: u64 = 20_000;
/// Id prefix of the copies of sent messages shown until the worker's version arrives.
pub(crate) const ECHO_PREFIX: &str = "local:";
/// A copy the worker has not confirmed after this long is shown as failed.
const ECHO_TIMEOUT_MS: u64 = 60_000;
/// The worker's copy may carry a time up to this much before the local one (clocks, rounding).
const ECHO_SLACK_MS: u64 = 60_000;

/// Which part of the screen takes the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The conversation list.
    List,
    /// The messages of the open conversation (select, reply, react, scroll, search).
    Messages,
    /// The compose box.
    Compose,
}

/// What Enter in the compose box does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Sends a message.
    Message,
    /// Sends a reply to this message id.
    Reply(String),
    /// Replaces the text of this message id.
    Edit(String),
    /// Sends the file at the typed path.
    Attach,
}

/// A window over everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Popup {
    /// Every key; scrolled by this many rows.
    Help(u16),
    /// The invite: `None` while the worker makes it.
    Invite(Option<String>),
    /// "Delete for everyone?" for this message id.
    ConfirmDelete(String),
    /// The reaction picker for this message id, with the highlighted choice.
    React(String, usize),
}

/// Search in the open conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Search {
    pub(crate) query: String,
    /// The query is being typed (keys go to it).
    pub(crate) editing: bool,
    /// Index into the hits of the match shown.
    pub(crate) current: Option<usize>,
}

/// A line for the user, red when it is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) text: String,
    pub(crate) error: bool,
    until_ms: u64,
}

/// The whole TUI state. Feed it [`Update`]s from the worker with [`App::apply`] and terminal
/// events with [`App::handle_event`]; send the [`Action`]s these return to the worker; draw it
/// with [`crate::draw`]. Deterministic: time only comes in as a parameter.
#[derive(Debug, Clone)]
pub struct App {
    pub(crate) conversations: Vec<ConversationSummary>,
    pub(crate) open: Option<String>,
    pub(crate) messages: HashMap<String, Vec<ChatMessage>>,
    pub(crate) typing: HashMap<String, (String, u64)>,
    pub(crate) status: ConnectionStatus,
    pub(crate) focus: Focus,
    pub(crate) compose: Compose,
    pub(crate) mode: Mode,
    /// Unsent text per conversation, kept while another one is open.
    pub(crate) drafts: HashMap<String, Compose>,
    /// The draft put aside while editing a message or typing a path.
    pub(crate) stash: Option<Compose>,
    /// Id of the selected message (message focus).
    pub(crate) selected: Option<String>,
    /// Rows scrolled up from the newest message.
    pub(crate) scroll: usize,
    pub(crate) search: Option<Search>,
    pub(crate) popup: Option<Popup>,
    pub(crate) notice: Option<Notice>,
    pub(crate) size: (u16, u16),
    pub(crate) now_ms: u64,
    pub(crate) offset_minutes: i32,
    pub(crate) last_typing: Option<(String, u64)>,
    pub(crate) list_offset: usize,
    pub(crate) next_echo: u64,
    /// Text to put on the terminal's clipboard (OSC 52), taken by the runner.
    pub(crate) clipboard: Option<String>,
    /// The message before which older ones were last asked for (asked once each).
    pub(crate) older_asked: Option<String>,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An empty TUI (80x24 until told the terminal's size), showing times in UTC.
    pub fn new() -> Self {
        App {
            conversations: Vec::new(),
            open: None,
            messages: HashMap::new(),
            typing: HashMap::new(),
            status: ConnectionStatus { syncing: true, ..ConnectionStatus::default() },
            focus: Focus::List,
            compose: Compose::default(),
            mode: Mode::Message,
            drafts: HashMap::new(),
            stash: None,
            selected: None,
            scroll: 0,
            search: None,
            popup: None,
            notice: None,
            size: (80, 24),
            now_ms: 0,
            offset_minutes: 0,
            last_typing: None,
            list_offset: 0,
            next_echo: 0,
            clipboard: None,
            older_asked: None,
        }
    }

    /// Shows times at this offset from UTC, in minutes (e.g. 60 for UTC+1).
    pub fn with_utc_offset(mut self, minutes: i32) -> Self {
        self.offset_minutes = minutes;
        self
    }

    /// Which part takes the keys.
    pub fn focus(&self) -> Focus {
        self.focus
    }

    /// Id of the open conversation.
    pub fn open_conversation(&self) -> Option<&str> {
        self.open.as_deref()
    }

    /// What the compose box holds.
    pub fn compose_text(&self) -> &str {
        self.compose.text()
    }

    /// The conversation list as last pushed (with the open one marked read).
    pub fn conversations(&self) -> &[ConversationSummary] {
        &self.conversations
    }

    /// Messages of a conversation as shown, including sends the worker has not confirmed.
    pub fn messages(&self, conversation: &str) -> &[ChatMessage] {
        self.messages.get(conversation).map_or(&[], Vec::as_slice)
    }

    /// The selected message, in message focus.
    pub fn selected_message(&self) -> Option<&ChatMessage> {
        let id = self.selected.as_deref()?;
        self.open_messages().iter().find(|m| m.id == id)
    }

    /// Text the user asked to copy; the runner writes it to the terminal's clipboard.
    pub(crate) fn take_clipboard(&mut self) -> Option<String> {
        self.clipboard.take()
    }

    /// Takes what the worker says. Never blocks, never asks for anything back.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Conversations(list) => {
                self.conversations = list;
                match self.open.clone() {
                    Some(open) if !self.conversations.iter().any(|c| c.id == open) => self.close_conversation(),
                    Some(open) => self.mark_read(&open),
                    None => {}
                }
                self.clamp_list_offset();
            }
            Update::Messages { conversation, messages } => {
                self.keep_view(&conversation, |app| {
                    let old = app.messages.remove(&conversation).unwrap_or_default();
                    let mut echoes: Vec<ChatMessage> =
                        old.into_iter().filter(|m| m.id.starts_with(ECHO_PREFIX)).collect();
                    for m in &messages {
                        if let Some(i) = echoes.iter().position(|e| confirms(m, e)) {
                            echoes.remove(i);
                        }
                    }
                    let mut all = messages;
                    all.extend(echoes);
                    app.messages.insert(conversation.clone(), all);
                });
            }
            Update::Message { conversation, message } => {
                self.keep_view(&conversation, |app| {
                    let list = app.messages.entry(conversation.clone()).or_default();
                    let same = |m: &ChatMessage| m.id == message.id || confirms(&message, m);
                    match list.iter().position(same) {
                        Some(i) => list[i] = message,
                        None => {
                            // Whoever typed has sent it.
                            if !message.outgoing
                                && app.typing.get(&conversation).is_some_and(|(who, _)| *who == message.sender)
                            {
                                app.typing.remove(&conversation);
                            }
                            list.push(message);
                        }
                    }
                });
            }
            Update::Status(status) => self.status = status,
            Update::Typing { conversation, who } => {
                self.typing.insert(conversation, (who, self.now_ms + TYPING_MS));
            }
            Update::Invite(link) => self.popup = Some(Popup::Invite(Some(link))),
            Update::Notice(text) => self.notify(text, false),
            Update::Error(text) => self.notify(text, true),
        }
        self.drop_expired();
    }

    pub(crate) fn notify(&mut self, text: impl Into<String>, error: bool) {
        let until_ms = self.now_ms + if error { ERROR_MS } else { NOTICE_MS };
        self.notice = Some(Notice { text: text.into(), error, until_ms });
    }

    /// Forgets what has timed out: notices, typing, disappearing messages.
    pub(crate) fn drop_expired(&mut self) {
        let now = self.now_ms;
        if self.notice.as_ref().is_some_and(|n| n.until_ms <= now) {
            self.notice = None;
        }
        self.typing.retain(|_, (_, until)| *until > now);
        for list in self.messages.values_mut() {
            list.retain(|m| m.expires_at_ms.is_none_or(|t| t > now));
            for echo in list.iter_mut().filter(|m| m.id.starts_with(ECHO_PREFIX)) {
                if echo.state == MessageState::Sending && now >= echo.sent_at_ms + ECHO_TIMEOUT_MS {
                    echo.state = MessageState::Failed;
                }
            }
        }
        if let Some(id) = &self.selected
            && !self.open_messages().iter().any(|m| &m.id == id)
        {
            self.selected = None;
        }
        self.clamp_scroll();
    }

    /// Changes a conversation's messages without moving what the user is reading when they
    /// scrolled up: the first message in view stays on the same row, whether rows were added
    /// below (new messages) or above (older ones).
    fn keep_view(&mut self, conversation: &str, change: impl FnOnce(&mut Self)) {
        let anchor =
            if self.open.as_deref() == Some(conversation) && self.scroll > 0 { self.top_in_view() } else { None };
        change(self);
        let Some((id, row)) = anchor else { return };
        let (Some(rows), height) = (self.rows(), self.view_height()) else { return };
        let Some(index) = self.open_messages().iter().position(|m| m.id == id) else { return };
        let Some(line) = rows.owner.iter().position(|o| *o == Some(index)) else { return };
        let top = line.saturating_sub(row);
        self.scroll = rows.owner.len().saturating_sub(top + height);
    }

    /// The first message that starts in view, and the row it starts on.
    fn top_in_view(&self) -> Option<(String, usize)> {
        let rows = self.rows()?;
        let top = rows.owner.len().saturating_sub(self.scroll + self.view_height());
        let messages = self.open_messages();
        (top..rows.owner.len()).find_map(|line| {
            let index = rows.owner[line]?;
            let starts = line == 0 || rows.owner[line - 1] != Some(index);
            starts.then(|| (messages[index].id.clone(), line - top))
        })
    }

    /// Asks the worker for messages older than the oldest shown, once per oldest message.
    pub(crate) fn want_older(&mut self, out: &mut Vec<Action>) {
        let Some(conversation) = self.open.clone() else { return };
        let Some(first) = self.open_messages().iter().find(|m| !m.id.starts_with(ECHO_PREFIX)).map(|m| m.id.clone())
        else {
            return;
        };
        if self.older_asked.as_deref() != Some(first.as_str()) {
            self.older_asked = Some(first.clone());
            out.push(Action::LoadOlder { conversation, before: first });
        }
    }

    pub(crate) fn open_summary(&self) -> Option<&ConversationSummary> {
        let open = self.open.as_deref()?;
        self.conversations.iter().find(|c| c.id == open)
    }

    pub(crate) fn open_messages(&self) -> &[ChatMessage] {
        self.open.as_deref().map_or(&[], |id| self.messages(id))
    }

    pub(crate) fn open_index(&self) -> Option<usize> {
        let open = self.open.as_deref()?;
        self.conversations.iter().position(|c| c.id == open)
    }

    pub(crate) fn selected_index(&self) -> Option<usize> {
        let id = self.selected.as_deref()?;
        self.open_messages().iter().position(|m| m.id == id)
    }

    /// Opens a conversation: keeps the draft of the one left, marks the new one read and asks
    /// the worker for its messages.
    pub(crate) fn open_conversation_at(&mut self, index: usize, out: &mut Vec<Action>) {
        let Some(id) = self.conversations.get(index).map(|c| c.id.clone()) else { return };
        if self.open.as_deref() == Some(id.as_str()) {
            return;
        }
        self.leave_conversation();
        self.compose = self.drafts.remove(&id).unwrap_or_default();
        self.mark_read(&id);
        self.open = Some(id.clone());
        self.clamp_list_offset();
        out.push(Action::Open(id));
    }

    fn leave_conversation(&mut self) {
        self.cancel_mode();
        if let Some(open) = self.open.take()
            && !self.compose.text().is_empty()
        {
            self.drafts.insert(open, std::mem::take(&mut self.compose));
        }
        self.compose = Compose::default();
        self.selected = None;
        self.scroll = 0;
        self.search = None;
    }

    fn close_conversation(&mut self) {
        self.leave_conversation();
        self.focus = Focus::List;
    }

    fn mark_read(&mut self, id: &str) {
        if let Some(c) = self.conversations.iter_mut().find(|c| c.id == id) {
            c.unread = 0;
        }
    }

    /// Back to plain messages, with the draft that was put aside.
    pub(crate) fn cancel_mode(&mut self) {
        if matches!(self.mode, Mode::Edit(_) | Mode::Attach)
            && let Some(draft) = self.stash.take()
        {
            self.compose = draft;
        }
        self.stash = None;
        self.mode = Mode::Message;
    }

    /// Enters a compose mode that uses the box for something else, keeping the draft aside.
    pub(crate) fn stash_and(&mut self, mode: Mode, text: &str) {
        self.cancel_mode();
        self.stash = Some(std::mem::replace(&mut self.compose, Compose::with_text(text)));
        self.mode = mode;
        self.focus = Focus::Compose;
    }

    /// Shows a sent message at once, as "sending", until the worker's copy replaces it.
    pub(crate) fn echo(&mut self, conversation: &str, text: &str, reply_to: Option<Quote>) {
        self.next_echo += 1;
        let message = ChatMessage {
            id: format!("{ECHO_PREFIX}{}", self.next_echo),
            sender: "You".to_owned(),
            text: text.to_owned(),
            sent_at_ms: self.now_ms,
            outgoing: true,
            state: MessageState::Sending,
            reply_to,
            ..ChatMessage::default()
        };
        self.messages.entry(conversation.to_owned()).or_default().push(message);
    }

    /// The screen's areas for the current state.
    pub(crate) fn areas(&self) -> layout::Areas {
        layout::areas(self, Rect::new(0, 0, self.size.0, self.size.1))
    }

    /// The open conversation's rows as drawn now, and the height they are shown in.
    pub(crate) fn rows(&self) -> Option<transcript::Transcript> {
        let area = self.areas().messages?;
        Some(transcript::build(self, area.width, self.now_ms))
    }

    fn view_height(&self) -> usize {
        self.areas().messages.map_or(0, |a| usize::from(a.height))
    }

    pub(crate) fn max_scroll(&self) -> usize {
        self.rows().map_or(0, |r| r.owner.len().saturating_sub(self.view_height()))
    }

    pub(crate) fn clamp_scroll(&mut self) {
        self.scroll = self.scroll.min(self.max_scroll());
    }

    pub(crate) fn scroll_by(&mut self, delta: isize) {
        self.scroll = self.scroll.saturating_add_signed(delta).min(self.max_scroll());
    }

    pub(crate) fn page(&self) -> isize {
        isize::try_from(self.view_height().saturating_sub(2).max(1)).unwrap_or(1)
    }

    /// Scrolls so the selected message is in view.
    pub(crate) fn reveal_selected(&mut self) {
        let (Some(index), Some(rows)) = (self.selected_index(), self.rows()) else { return };
        let lines: Vec<usize> =
            rows.owner.iter().enumerate().filter(|(_, o)| **o == Some(index)).map(|(i, _)| i).collect();
        let (Some(&first), Some(&last)) = (lines.first(), lines.last()) else { return };
        let total = rows.owner.len();
        let height = self.view_height();
        let bottom = total - self.scroll.min(total);
        let top = bottom.saturating_sub(height);
        if last + 1 > bottom {
            self.scroll = total - (last + 1);
        }
        if first < top || last + 1 - first > height {
            self.scroll = total.saturating_sub(first + height);
        }
        self.clamp_scroll();
    }

    /// Rows of conversations the list shows at once (two rows each).
    pub(crate) fn list_capacity(&self) -> usize {
        self.areas().list.map_or(1, |a| usize::from(a.height.saturating_sub(2) / 2).max(1))
    }

    pub(crate) fn clamp_list_offset(&mut self) {
        let capacity = self.list_capacity();
        let max = self.conversations.len().saturating_sub(capacity);
        if let Some(i) = self.open_index() {
            if i < self.list_offset {
                self.list_offset = i;
            } else if i >= self.list_offset + capacity {
                self.list_offset = i + 1 - capacity;
            }
        }
        self.list_offset = self.list_offset.min(max);
    }

    /// Message indices the search matches, oldest first.
    pub(crate) fn search_hits(&self) -> Vec<usize> {
        let Some(search) = self.search.as_ref().filter(|s| !s.query.is_empty()) else { return Vec::new() };
        self.open_messages()
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.deleted && !crate::text::find_all(&m.text, &search.query).is_empty())
            .map(|(i, _)| i)
            .collect()
    }
}

/// `m`, from the worker, is the confirmed copy of the local `echo`: same text, and sent no
/// earlier than a little before it (an older message with the same text is not it).
fn confirms(m: &ChatMessage, echo: &ChatMessage) -> bool {
    echo.id.starts_with(ECHO_PREFIX)
        && !m.id.starts_with(ECHO_PREFIX)
        && m.outgoing
        && m.text == echo.text
        && m.sent_at_ms + ECHO_SLACK_MS >= echo.sent_at_ms
}
