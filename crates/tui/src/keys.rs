//! Keys and mouse: what each does in each focus. [`KEYS`] is the help popup's list and must
//! say the truth about this file.

use crate::{
    app::{App, ECHO_PREFIX, Focus, Mode, Popup},
    event::{Event, Key, KeyCode, Mouse, MouseKind},
    model::{Action, MessageState},
    text::one_line,
};

/// The emoji the reaction picker offers, in order (keys 1 to 6).
pub const REACTIONS: [&str; 6] = ["👍", "❤", "😂", "😮", "😢", "🙏"];

/// Rows one mouse wheel step scrolls.
const WHEEL_ROWS: isize = 3;

/// Every key, by section, as the help popup shows them.
pub const KEYS: &[(&str, &[(&str, &str)])] = &[
    (
        "Anywhere",
        &[
            ("Tab / Shift-Tab", "next / previous pane: chats, messages, compose"),
            ("Alt-↑ / Alt-↓", "previous / next conversation"),
            ("PgUp / PgDn", "scroll the messages"),
            ("Ctrl-F", "search this conversation"),
            ("Ctrl-O", "send a file (type its path)"),
            ("F2", "invite someone (QR code and link; c copies the link)"),
            ("? / F1", "this help (? outside the compose box)"),
            ("Esc", "cancel, close, go back"),
            ("Ctrl-C / Ctrl-Q", "quit"),
        ],
    ),
    (
        "Chats",
        &[
            ("↑ ↓  k j", "open the previous / next conversation"),
            ("Home End  g G", "first / last conversation"),
            ("Enter  →  l", "write in the open conversation"),
            ("i", "invite someone"),
            ("mouse", "click opens, wheel scrolls"),
        ],
    ),
    (
        "Messages",
        &[
            ("↑ ↓  k j", "select the previous / next message"),
            ("Home End  g G", "oldest / newest message"),
            ("r", "reply to the selected message"),
            ("e", "edit your message"),
            ("d", "delete your message for everyone (asks y/n)"),
            ("+", "react (then 1-6 or ← → Enter)"),
            ("s", "save the file of the selected message"),
            ("y", "copy the message's text to the clipboard"),
            ("Enter", "retry a failed message; else write"),
            ("/", "search; n older match, N newer match"),
            ("← h", "back to the chats"),
            ("c", "write (go to the compose box)"),
            ("i", "invite someone"),
            ("mouse", "click selects, wheel scrolls"),
        ],
    ),
    (
        "Compose",
        &[
            ("Enter", "send"),
            ("Alt-Enter / Ctrl-J", "new line (also Shift-Enter where the terminal tells it)"),
            ("← → Home End", "move; Ctrl-← Ctrl-→ (Alt-b Alt-f) by word; ↑ ↓ between lines"),
            ("Ctrl-A / Ctrl-E", "start / end of the line"),
            ("Backspace Del", "delete; Ctrl-W the word before"),
            ("Ctrl-U", "clear the box"),
            ("↑ in an empty box", "edit your last message"),
        ],
    ),
    (
        "Ticks",
        &[
            ("…", "sending (in the outbox)"),
            ("✓", "sent: the relay has it"),
            ("✓✓", "delivered to their device"),
            ("✓✓ (blue)", "read"),
            ("! failed", "not sent: select it and press Enter"),
        ],
    ),
];

impl App {
    /// Takes a terminal event at `now_ms` (Unix milliseconds) and returns what the worker must
    /// do. Never blocks.
    pub fn handle_event(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        match event {
            Event::Tick => {}
            Event::Resize(w, h) => {
                self.size = (w, h);
                self.clamp_list_offset();
            }
            Event::Paste(text) => self.paste(&text, &mut out),
            Event::Key(key) => self.key(key, &mut out),
            Event::Mouse(mouse) => self.mouse(mouse, &mut out),
        }
        self.drop_expired();
        out
    }

    fn key(&mut self, key: Key, out: &mut Vec<Action>) {
        use KeyCode::*;
        if key.ctrl && matches!(key.code, Char('c' | 'q')) {
            out.push(Action::Quit);
            return;
        }
        if self.popup.is_some() {
            self.popup_key(key, out);
            return;
        }
        if self.search.as_ref().is_some_and(|s| s.editing) {
            self.search_key(key);
            return;
        }
        let typing = self.focus == Focus::Compose;
        match (key.code, key.ctrl, key.alt) {
            (F(1), ..) => self.popup = Some(Popup::Help(0)),
            (Char('?'), false, false) if !typing => self.popup = Some(Popup::Help(0)),
            (F(2), ..) => self.invite(out),
            (Char('f'), true, _) => self.start_search(),
            (Char('o'), true, _) => self.start_attach(),
            (Up, _, true) => self.step_conversation(-1, out),
            (Down, _, true) => self.step_conversation(1, out),
            (Tab, ..) => self.cycle_focus(1),
            (BackTab, ..) => self.cycle_focus(-1),
            (PageUp, ..) => self.scroll_up(self.page(), out),
            (PageDown, ..) => self.scroll_by(-self.page()),
            _ => self.focused_key(key, out),
        }
    }

    fn focused_key(&mut self, key: Key, out: &mut Vec<Action>) {
        match self.focus {
            Focus::List => self.list_key(key, out),
            Focus::Messages => self.messages_key(key, out),
            Focus::Compose => self.compose_key(key, out),
        }
    }

    fn list_key(&mut self, key: Key, out: &mut Vec<Action>) {
        use KeyCode::*;
        if key.ctrl || key.alt {
            return;
        }
        let last = self.conversations.len().saturating_sub(1);
        match key.code {
            Up | Char('k') => self.step_conversation(-1, out),
            Down | Char('j') => self.step_conversation(1, out),
            Home | Char('g') => self.open_conversation_at(0, out),
            End | Char('G') => self.open_conversation_at(last, out),
            Enter | Right | Char('l') => {
                if self.open.is_none() {
                    self.open_conversation_at(0, out);
                }
                if self.open.is_some() {
                    self.focus = Focus::Compose;
                }
            }
            Char('i') => self.invite(out),
            _ => {}
        }
    }

    fn messages_key(&mut self, key: Key, out: &mut Vec<Action>) {
        use KeyCode::*;
        if key.ctrl || key.alt {
            return;
        }
        let count = self.open_messages().len();
        match key.code {
            Up | Char('k') => {
                if self.selected_index() == Some(0) {
                    self.want_older(out);
                }
                let to = self.selected_index().map_or(count.saturating_sub(1), |i| i.saturating_sub(1));
                self.select_message(to);
            }
            Down | Char('j') => match self.selected_index() {
                Some(i) if i + 1 < count => self.select_message(i + 1),
                _ => self.scroll = 0,
            },
            Home | Char('g') => {
                self.select_message(0);
                self.want_older(out);
            }
            End | Char('G') => {
                self.select_message(count.saturating_sub(1));
                self.scroll = 0;
            }
            Esc => {
                if self.selected.take().is_none() {
                    if self.search.take().is_none() {
                        self.focus = Focus::Compose;
                    }
                } else {
                    self.scroll = 0;
                }
            }
            Left | Char('h') => self.focus = Focus::List,
            Char('c') => self.focus = Focus::Compose,
            Char('i') => self.invite(out),
            Char('/') => self.start_search(),
            Char('n') => self.next_hit(-1),
            Char('N') => self.next_hit(1),
            Char('r') => {
                self.with_selected(|app, m| app.reply(m));
            }
            Char('e') => {
                self.with_selected(|app, m| app.edit(m));
            }
            Char('d') => {
                self.with_selected(|app, m| app.ask_delete(m));
            }
            Char('+') => {
                self.with_selected(|app, m| app.pick_reaction(m));
            }
            Char('y') => {
                self.with_selected(|app, m| {
                    let text = m.text.clone();
                    app.copy(text, "Message copied");
                    Some(())
                });
            }
            Char('s') => {
                let save = self.with_selected(|app, m| app.save(m));
                out.extend(save);
            }
            Enter => {
                let failed = self.selected_message().filter(|m| m.outgoing && m.state == MessageState::Failed).cloned();
                match (failed, self.open.clone()) {
                    (Some(m), Some(conversation)) if m.id.starts_with(ECHO_PREFIX) => {
                        // The worker never confirmed it: send the text again.
                        if let Some(list) = self.messages.get_mut(&conversation) {
                            list.retain(|e| e.id != m.id);
                        }
                        self.echo(&conversation, &m.text, m.reply_to.clone());
                        out.push(Action::Send { conversation, text: m.text, reply_to: None });
                        self.after_send();
                    }
                    (Some(m), Some(conversation)) => out.push(Action::Retry { conversation, message: m.id }),
                    _ => self.focus = Focus::Compose,
                }
            }
            _ => {}
        }
    }

    fn compose_key(&mut self, key: Key, out: &mut Vec<Action>) {
        use KeyCode::*;
        let c = &mut self.compose;
        match (key.code, key.ctrl, key.alt) {
            (Enter, _, true) | (Char('j'), true, _) => c.insert('\n'),
            (Enter, ..) if key.shift => c.insert('\n'),
            (Enter, ..) => self.submit(out),
            (Char('u'), true, _) => {
                c.take();
            }
            (Char('w'), true, _) | (Backspace, _, true) | (Backspace, true, _) => c.delete_word(),
            (Char('h'), true, _) | (Backspace, ..) => c.backspace(),
            (Char('a'), true, _) | (Home, ..) => c.home(),
            (Char('e'), true, _) | (End, ..) => c.end(),
            (Left, true, _) | (Char('b'), _, true) => c.word_left(),
            (Right, true, _) | (Char('f'), _, true) => c.word_right(),
            (Delete, ..) => c.delete(),
            (Left, ..) => c.left(),
            (Right, ..) => c.right(),
            (Up, ..) => self.compose_up(),
            (Down, ..) => {
                c.down();
            }
            (Esc, ..) => {
                if self.mode != Mode::Message {
                    self.cancel_mode();
                } else if self.search.take().is_none() {
                    self.focus = Focus::List;
                }
            }
            (Char(ch), false, false) => {
                c.insert(ch);
                self.typed(out);
            }
            _ => {}
        }
    }

    /// Up moves between lines; in an empty box it edits the last message sent.
    fn compose_up(&mut self) {
        let moved = self.compose.up();
        if !moved && self.compose.text().is_empty() && self.mode == Mode::Message {
            self.edit_last();
        }
    }

    fn paste(&mut self, text: &str, out: &mut Vec<Action>) {
        if self.search.as_ref().is_some_and(|s| s.editing) {
            if let Some(s) = self.search.as_mut() {
                s.query.push_str(&one_line(text));
            }
            self.jump_to_newest_hit();
        } else if self.popup.is_none() && self.open.is_some() {
            self.focus = Focus::Compose;
            self.compose.insert_str(text);
            self.typed(out);
        }
    }

    fn popup_key(&mut self, key: Key, out: &mut Vec<Action>) {
        use KeyCode::*;
        let Some(popup) = self.popup.clone() else { return };
        match popup {
            Popup::Help(scroll) => match key.code {
                Up | Char('k') => self.popup = Some(Popup::Help(scroll.saturating_sub(1))),
                Down | Char('j') => self.popup = Some(Popup::Help(scroll.saturating_add(1))),
                PageUp => self.popup = Some(Popup::Help(scroll.saturating_sub(10))),
                PageDown => self.popup = Some(Popup::Help(scroll.saturating_add(10))),
                _ => self.popup = None,
            },
            Popup::Invite(link) => match key.code {
                Char('c') => {
                    if let Some(link) = link {
                        self.copy(link, "Invite link copied");
                    }
                }
                Esc | Enter | Char('q') => self.popup = None,
                _ => {}
            },
            Popup::ConfirmDelete(id) => match key.code {
                Char('y' | 'Y') => {
                    self.popup = None;
                    if let Some(conversation) = self.open.clone() {
                        if let Some(m) =
                            self.messages.get_mut(&conversation).and_then(|l| l.iter_mut().find(|m| m.id == id))
                        {
                            m.deleted = true;
                        }
                        out.push(Action::Delete { conversation, message: id });
                    }
                }
                Char('n' | 'N') | Esc => self.popup = None,
                _ => {}
            },
            Popup::React(id, choice) => {
                let pick = match key.code {
                    Left | Char('h') => {
                        self.popup = Some(Popup::React(id.clone(), (choice + REACTIONS.len() - 1) % REACTIONS.len()));
                        None
                    }
                    Right | Char('l') => {
                        self.popup = Some(Popup::React(id.clone(), (choice + 1) % REACTIONS.len()));
                        None
                    }
                    Enter => Some(choice),
                    Char(d @ '1'..='6') => d.to_digit(10).and_then(|d| usize::try_from(d).ok()).map(|d| d - 1),
                    Esc => {
                        self.popup = None;
                        None
                    }
                    _ => None,
                };
                if let (Some(pick), Some(conversation)) = (pick, self.open.clone()) {
                    self.popup = None;
                    out.push(Action::React { conversation, message: id, emoji: REACTIONS[pick].to_owned() });
                }
            }
        }
    }

    fn search_key(&mut self, key: Key) {
        use KeyCode::*;
        let Some(search) = self.search.as_mut() else { return };
        match key.code {
            Esc => {
                self.search = None;
                self.selected = None;
                self.scroll = 0;
            }
            Enter => {
                search.editing = false;
                self.focus = Focus::Messages;
            }
            Up => self.next_hit(-1),
            Down => self.next_hit(1),
            Backspace => {
                search.query.pop();
                self.jump_to_newest_hit();
            }
            Char('u') if key.ctrl => {
                search.query.clear();
                self.jump_to_newest_hit();
            }
            Char(c) if !key.ctrl && !key.alt => {
                search.query.push(c);
                self.jump_to_newest_hit();
            }
            _ => {}
        }
    }

    fn mouse(&mut self, mouse: Mouse, out: &mut Vec<Action>) {
        let areas = self.areas();
        let inside = |r: Option<ratatui::layout::Rect>| {
            r.is_some_and(|r| r.contains(ratatui::layout::Position { x: mouse.column, y: mouse.row }))
        };
        match mouse.kind {
            MouseKind::ScrollUp | MouseKind::ScrollDown if inside(areas.list) => {
                let up = mouse.kind == MouseKind::ScrollUp;
                let max = self.conversations.len().saturating_sub(self.list_capacity());
                self.list_offset =
                    if up { self.list_offset.saturating_sub(1) } else { (self.list_offset + 1).min(max) };
            }
            MouseKind::ScrollUp => self.scroll_up(WHEEL_ROWS, out),
            MouseKind::ScrollDown => self.scroll_by(-WHEEL_ROWS),
            MouseKind::Click if self.popup.is_some() => {
                if matches!(self.popup, Some(Popup::Help(_) | Popup::Invite(_))) {
                    self.popup = None;
                }
            }
            MouseKind::Click => {
                if let Some(list) = areas.list.filter(|_| inside(areas.list)) {
                    let row = mouse.row.saturating_sub(list.y + 1);
                    if mouse.row > list.y && row < list.height.saturating_sub(2) {
                        self.open_conversation_at(self.list_offset + usize::from(row / 2), out);
                        self.focus = Focus::List;
                    }
                } else if let Some(messages) = areas.messages.filter(|_| inside(areas.messages)) {
                    self.focus = Focus::Messages;
                    let Some(rows) = self.rows() else { return };
                    let total = rows.owner.len();
                    let height = usize::from(messages.height);
                    let first = total.saturating_sub(self.scroll + height);
                    let shown = total.saturating_sub(self.scroll) - first;
                    let blank = height.saturating_sub(shown);
                    let at = usize::from(mouse.row - messages.y);
                    if let Some(Some(index)) = at.checked_sub(blank).and_then(|i| rows.owner.get(first + i)) {
                        self.select_message(*index);
                    }
                } else if inside(areas.compose) {
                    self.focus = Focus::Compose;
                }
            }
        }
    }

    /// Scrolls towards older messages; past the oldest shown, asks the worker for more.
    fn scroll_up(&mut self, rows: isize, out: &mut Vec<Action>) {
        if self.scroll >= self.max_scroll() {
            self.want_older(out);
        }
        self.scroll_by(rows);
    }

    fn cycle_focus(&mut self, step: i8) {
        if self.open.is_none() {
            self.focus = Focus::List;
            return;
        }
        let order = [Focus::List, Focus::Messages, Focus::Compose];
        let at = order.iter().position(|f| *f == self.focus).unwrap_or(0);
        self.focus = order[(at + if step > 0 { 1 } else { 2 }) % 3];
    }

    fn step_conversation(&mut self, step: isize, out: &mut Vec<Action>) {
        if self.conversations.is_empty() {
            return;
        }
        let last = self.conversations.len() - 1;
        let to = match self.open_index() {
            Some(i) => i.saturating_add_signed(step).min(last),
            None if step < 0 => last,
            None => 0,
        };
        self.open_conversation_at(to, out);
    }

    pub(crate) fn select_message(&mut self, index: usize) {
        if let Some(id) = self.open_messages().get(index).map(|m| m.id.clone()) {
            self.selected = Some(id);
            self.reveal_selected();
        }
    }
}
