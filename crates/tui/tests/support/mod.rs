//! Fixed data, fixed time, a test terminal, and plain-text snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::path::PathBuf;

use ratatui::{Terminal, backend::TestBackend, buffer::Buffer, style::Style};
use tamizdat_tui::{
    Action, App, Attachment, ChatMessage, ConnectionStatus, ConversationSummary, Event, Key, KeyCode, MessageKind,
    MessageState, Quote, Reaction, Route, Update,
};
use unicode_width::UnicodeWidthStr;

/// Monday 3 March 2025, 12:30 UTC.
pub const NOW: u64 = 1_741_005_000_000;
pub const MIN: u64 = 60_000;

pub fn conversations() -> Vec<ConversationSummary> {
    vec![
        ConversationSummary {
            id: "alice".into(),
            name: "Alice".into(),
            unread: 2,
            last_text: "Can you order for me?".into(),
            last_at_ms: Some(NOW - MIN),
            verified: true,
            ..Default::default()
        },
        ConversationSummary {
            id: "club".into(),
            name: "Book club".into(),
            is_group: true,
            unread: 5,
            last_text: "Dana: Chapter 4 tonight?".into(),
            last_at_ms: Some(NOW - 40 * MIN),
            expire_secs: Some(86_400),
            ..Default::default()
        },
        ConversationSummary {
            id: "bob".into(),
            name: "Bob".into(),
            last_text: "You: the keys are under the mat".into(),
            last_at_ms: Some(NOW - 2 * 86_400_000),
            key_changed: true,
            ..Default::default()
        },
    ]
}

pub fn msg(id: &str, sender: &str, text: &str, at: u64) -> ChatMessage {
    ChatMessage { id: id.into(), sender: sender.into(), text: text.into(), sent_at_ms: at, ..Default::default() }
}

pub fn mine(id: &str, text: &str, at: u64, state: MessageState) -> ChatMessage {
    ChatMessage { outgoing: true, state, ..msg(id, "You", text, at) }
}

/// A conversation with Alice: yesterday and today, every delivery state, a reply, reactions,
/// a file.
pub fn alice_messages() -> Vec<ChatMessage> {
    vec![
        msg("a1", "Alice", "Are we still on for dinner tomorrow?", NOW - 86_400_000 - 3 * 60 * MIN),
        ChatMessage {
            reactions: vec![Reaction { emoji: "❤".into(), count: 1, mine: false }],
            ..mine("a2", "Yes! 7pm at the usual place", NOW - 86_400_000 - 170 * MIN, MessageState::Read)
        },
        msg("a3", "Alice", "Could you bring the menu from last time? I can't find my copy anywhere.", NOW - 35 * MIN),
        ChatMessage {
            kind: MessageKind::File,
            attachment: Some(Attachment { name: "menu.pdf".into(), size: 250_880, saved: false }),
            ..mine("a4", "", NOW - 30 * MIN, MessageState::Delivered)
        },
        ChatMessage {
            reply_to: Some(Quote { sender: "You".into(), snippet: "Yes! 7pm at the usual place".into() }),
            reactions: vec![Reaction { emoji: "👍".into(), count: 1, mine: true }],
            ..msg("a5", "Alice", "Perfect, thanks for the menu 🙏", NOW - 20 * MIN)
        },
        mine("a6", "I'll book the table", NOW - 10 * MIN, MessageState::Sent),
        mine("a7", "Running 5 minutes late", NOW - 2 * MIN, MessageState::Sending),
        mine("a8", "Can you order for me?", NOW - MIN, MessageState::Failed),
    ]
}

pub fn club_messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            kind: MessageKind::Event,
            ..msg("c0", "", "Dana set disappearing messages to 1 day", NOW - 3 * 60 * MIN)
        },
        ChatMessage {
            expires_at_ms: Some(NOW + 20 * 60 * MIN),
            ..msg("c1", "Dana", "Chapter 4 tonight?", NOW - 40 * MIN)
        },
        ChatMessage {
            expires_at_ms: Some(NOW + 21 * 60 * MIN),
            ..msg("c2", "Yusuf", "Yes, and bring the snacks", NOW - 38 * MIN)
        },
    ]
}

pub fn status() -> ConnectionStatus {
    ConnectionStatus {
        route: Route::Direct,
        endpoint: Some("relay.example.org:443".into()),
        blocked: None,
        syncing: false,
        last_ok_ms: Some(NOW - MIN),
    }
}

/// An app that was told the conversations and the status, sized `w`x`h`.
pub fn app(w: u16, h: u16) -> App {
    let mut app = App::new();
    app.handle_event(Event::Resize(w, h), NOW);
    app.apply(Update::Conversations(conversations()));
    app.apply(Update::Status(status()));
    app
}

/// `app` with Alice's conversation open (the worker answered Open with her messages).
pub fn alice(w: u16, h: u16) -> App {
    let mut app = app(w, h);
    let actions = app.handle_event(Event::Key(Key::plain(KeyCode::Down)), NOW);
    assert_eq!(actions, [Action::Open("alice".into())]);
    app.apply(Update::Messages { conversation: "alice".into(), messages: alice_messages() });
    app
}

pub fn key(app: &mut App, key: impl Into<Key>) -> Vec<Action> {
    app.handle_event(Event::Key(key.into()), NOW)
}

pub fn type_text(app: &mut App, text: &str) -> Vec<Action> {
    text.chars().flat_map(|c| key(app, Key::char(c))).collect()
}

/// Draws `app` on a test terminal of its size.
pub fn render(app: &App, w: u16, h: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|frame| tamizdat_tui::draw(frame, app, NOW)).unwrap();
    terminal.backend().buffer().clone()
}

/// Row `y` as the cells a reader sees: `(column, symbol)`, skipping the cells a wide
/// character covers.
fn cells(buffer: &Buffer, y: u16) -> Vec<(u16, &str)> {
    let mut out = Vec::new();
    let mut skip = 0;
    for x in 0..buffer.area.width {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        let symbol = buffer[(x, y)].symbol();
        skip = symbol.width().saturating_sub(1);
        out.push((x, symbol));
    }
    out
}

/// The screen as text, one line per row, trailing spaces dropped.
pub fn text(buffer: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let line: String = cells(buffer, y).into_iter().map(|(_, symbol)| symbol).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn row(buffer: &Buffer, y: u16) -> String {
    text(buffer).lines().nth(usize::from(y)).unwrap_or_default().to_owned()
}

/// Where `needle` first appears on screen: (column, row) in cells.
pub fn find(buffer: &Buffer, needle: &str) -> Option<(u16, u16)> {
    for y in 0..buffer.area.height {
        let mut line = String::new();
        let mut columns = Vec::new();
        for (x, symbol) in cells(buffer, y) {
            columns.extend(symbol.chars().map(|_| x));
            line.push_str(symbol);
        }
        if let Some(byte) = line.find(needle) {
            let index = line[..byte].chars().count();
            return Some((columns[index], y));
        }
    }
    None
}

pub fn style_at(buffer: &Buffer, at: (u16, u16)) -> Style {
    buffer[at].style()
}

/// Compares `actual` with `tests/snapshots/NAME.txt`; `UPDATE_SNAPSHOTS=1` rewrites it.
pub fn snapshot(name: &str, actual: &str) {
    check(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt")), actual);
}

pub fn check(path: PathBuf, actual: &str) {
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no snapshot {}; run with UPDATE_SNAPSHOTS=1 to create it", path.display()));
    if expected != actual {
        panic!(
            "{} differs (UPDATE_SNAPSHOTS=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}
