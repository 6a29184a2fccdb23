//! What the keys set off: sending, replying, editing, deleting, reacting, saving, copying,
//! inviting, searching. Called from `keys.rs`; each works on the App's state and says what
//! the worker must do.

use std::path::PathBuf;

use crate::{
    app::{App, ECHO_PREFIX, Focus, Mode, Popup, Search},
    model::{Action, ChatMessage, MessageKind, MessageState, Quote},
    text::one_line,
};

/// "Typing" is sent at most this often.
const TYPING_EVERY_MS: u64 = 4_000;

impl App {
    /// Tells the worker the user types, at most every few seconds, and not for edits or paths.
    pub(crate) fn typed(&mut self, out: &mut Vec<Action>) {
        let Some(open) = self.open.clone() else { return };
        if matches!(self.mode, Mode::Edit(_) | Mode::Attach) {
            return;
        }
        let due = match &self.last_typing {
            Some((conversation, at)) => *conversation != open || self.now_ms >= at + TYPING_EVERY_MS,
            None => true,
        };
        if due {
            self.last_typing = Some((open.clone(), self.now_ms));
            out.push(Action::Typing(open));
        }
    }

    /// Enter in the compose box: send, reply, save an edit, or send the file at the typed path.
    pub(crate) fn submit(&mut self, out: &mut Vec<Action>) {
        let Some(conversation) = self.open.clone() else { return };
        match self.mode.clone() {
            Mode::Message | Mode::Reply(_) if self.compose.is_blank() => {}
            Mode::Message => {
                let text = self.compose.take().trim_end().to_owned();
                self.echo(&conversation, &text, None);
                out.push(Action::Send { conversation, text, reply_to: None });
                self.after_send();
            }
            Mode::Reply(id) => {
                let text = self.compose.take().trim_end().to_owned();
                let quote = self.open_messages().iter().find(|m| m.id == id).map(quote_of);
                self.echo(&conversation, &text, quote);
                out.push(Action::Send { conversation, text, reply_to: Some(id) });
                self.mode = Mode::Message;
                self.after_send();
            }
            Mode::Edit(_) if self.compose.is_blank() => {
                self.notify("An edited message cannot be empty: Esc cancels, d deletes it", true);
            }
            Mode::Edit(id) => {
                let text = self.compose.take().trim_end().to_owned();
                if let Some(m) = self.messages.get_mut(&conversation).and_then(|l| l.iter_mut().find(|m| m.id == id)) {
                    m.text.clone_from(&text);
                    m.edited = true;
                }
                out.push(Action::Edit { conversation, message: id, text });
                self.cancel_mode();
            }
            Mode::Attach => {
                let path = self.compose.take().trim().to_owned();
                self.cancel_mode();
                if !path.is_empty() {
                    self.notify(format!("Sending {path}…"), false);
                    out.push(Action::SendFile { conversation, path: PathBuf::from(path) });
                }
            }
        }
    }

    /// After sending the view follows the newest message again.
    pub(crate) fn after_send(&mut self) {
        self.scroll = 0;
        self.selected = None;
        self.last_typing = None;
    }

    /// Runs `f` on a copy of the selected message; says how to select one when none is.
    pub(crate) fn with_selected<T>(&mut self, f: impl FnOnce(&mut Self, &ChatMessage) -> Option<T>) -> Option<T> {
        match self.selected_message().cloned() {
            Some(m) if m.id.starts_with(ECHO_PREFIX) => {
                let why = if m.state == MessageState::Failed {
                    "That message was not sent: Enter sends it again"
                } else {
                    "That message is still being sent"
                };
                self.notify(why, false);
                None
            }
            Some(m) if m.kind == MessageKind::Event => None,
            Some(m) => f(self, &m),
            None => {
                self.notify("Select a message first: ↑ ↓ in the messages (Tab goes there)", false);
                None
            }
        }
    }

    /// `r`: the next message sent answers `m`.
    pub(crate) fn reply(&mut self, m: &ChatMessage) -> Option<()> {
        if m.deleted {
            return None;
        }
        if matches!(self.mode, Mode::Edit(_) | Mode::Attach) {
            self.cancel_mode();
        }
        self.mode = Mode::Reply(m.id.clone());
        self.focus = Focus::Compose;
        Some(())
    }

    /// `e`: puts the text of one of the user's messages in the box; the draft waits aside.
    pub(crate) fn edit(&mut self, m: &ChatMessage) -> Option<()> {
        if !m.outgoing || m.deleted || m.kind != MessageKind::Text {
            self.notify("Only your own text messages can be edited", false);
            return None;
        }
        self.stash_and(Mode::Edit(m.id.clone()), &m.text);
        Some(())
    }

    /// Up in an empty box: edits the last text the user sent.
    pub(crate) fn edit_last(&mut self) {
        let last = self
            .open_messages()
            .iter()
            .rev()
            .find(|m| m.outgoing && !m.deleted && m.kind == MessageKind::Text && !m.id.starts_with(ECHO_PREFIX))
            .cloned();
        if let Some(m) = last {
            self.selected = Some(m.id.clone());
            self.reveal_selected();
            self.edit(&m);
        }
    }

    /// `d`: asks before deleting for everyone (only the user's own messages).
    pub(crate) fn ask_delete(&mut self, m: &ChatMessage) -> Option<()> {
        if !m.outgoing || m.deleted {
            self.notify("Only your own messages can be deleted for everyone", false);
            return None;
        }
        self.popup = Some(Popup::ConfirmDelete(m.id.clone()));
        Some(())
    }

    /// `+`: opens the reaction picker.
    pub(crate) fn pick_reaction(&mut self, m: &ChatMessage) -> Option<()> {
        if m.deleted {
            return None;
        }
        self.popup = Some(Popup::React(m.id.clone(), 0));
        Some(())
    }

    /// `s`: asks the worker to save the selected message's file.
    pub(crate) fn save(&mut self, m: &ChatMessage) -> Option<Action> {
        let conversation = self.open.clone()?;
        match &m.attachment {
            Some(file) if !m.deleted => {
                self.notify(format!("Saving {}…", one_line(&file.name)), false);
                Some(Action::Save { conversation, message: m.id.clone() })
            }
            _ => {
                self.notify("The selected message has no file", false);
                None
            }
        }
    }

    /// Puts text on the clipboard through the terminal (the runner writes OSC 52).
    pub(crate) fn copy(&mut self, text: String, what: &str) {
        self.clipboard = Some(text);
        self.notify(format!("{what} to the clipboard (if the terminal allows it)"), false);
    }

    /// Opens the invite window at once and asks the worker for a link.
    pub(crate) fn invite(&mut self, out: &mut Vec<Action>) {
        self.popup = Some(Popup::Invite(None));
        out.push(Action::NewInvite);
    }

    /// `/` or Ctrl-F: a new search in the open conversation.
    pub(crate) fn start_search(&mut self) {
        if self.open.is_none() {
            self.notify("Open a conversation to search it", false);
            return;
        }
        self.search = Some(Search { editing: true, ..Search::default() });
        self.focus = Focus::Messages;
    }

    /// Ctrl-O: the box takes a path; the draft waits aside.
    pub(crate) fn start_attach(&mut self) {
        if self.open.is_none() {
            self.notify("Open a conversation to send a file", false);
            return;
        }
        self.stash_and(Mode::Attach, "");
    }

    /// While the query is typed, the newest match is selected.
    pub(crate) fn jump_to_newest_hit(&mut self) {
        let hits = self.search_hits();
        if let Some(search) = self.search.as_mut() {
            search.current = hits.len().checked_sub(1);
        }
        match hits.last() {
            Some(&index) => self.select_message(index),
            None => self.selected = None,
        }
    }

    /// Moves to the next match: -1 older, 1 newer.
    pub(crate) fn next_hit(&mut self, step: isize) {
        let hits = self.search_hits();
        let Some(search) = self.search.as_mut() else { return };
        if hits.is_empty() {
            return;
        }
        let to = match search.current {
            Some(i) => i.saturating_add_signed(step).min(hits.len() - 1),
            None => hits.len() - 1,
        };
        search.current = Some(to);
        self.select_message(hits[to]);
    }
}

fn quote_of(m: &ChatMessage) -> Quote {
    let sender = if m.outgoing { "You".to_owned() } else { m.sender.clone() };
    Quote { sender, snippet: m.text.chars().take(80).collect() }
}
