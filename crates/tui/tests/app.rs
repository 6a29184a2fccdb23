//! The TUI driven on ratatui's test terminal with fixed data and a fixed clock: open, read,
//! send, switch conversations, and everything around them. Each test checks what the user
//! sees (text on screen, styles of specific cells) and what the worker is asked to do;
//! whole screens are compared with `tests/snapshots/*.txt` (`UPDATE_SNAPSHOTS=1` rewrites).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::PathBuf;

use ratatui::style::Color;
use support::*;
use tamizdat_tui::*;

const W: u16 = 100;
const H: u16 = 30;

fn screen(app: &App) -> String {
    text(&render(app, W, H))
}

#[test]
fn starts_with_the_list_and_unread_badges() {
    let app = app(W, H);
    let buffer = render(&app, W, H);
    let screen = text(&buffer);
    assert!(screen.contains("Chats · 7 unread"), "{screen}");
    assert!(screen.contains("No conversation open"));
    assert_eq!(app.focus(), Focus::List);
    // Alice's badge "2" sits at the end of her second row, in the badge colour.
    let at = find(&buffer, " 2  │").unwrap();
    assert_eq!(style_at(&buffer, (at.0 + 1, at.1)).bg, Some(Color::Green));
    snapshot("start", &screen);
}

#[test]
fn opening_a_conversation_marks_it_read_and_shows_its_messages() {
    let mut app = app(W, H);
    let actions = key(&mut app, KeyCode::Down);
    assert_eq!(actions, [Action::Open("alice".into())]);
    assert_eq!(app.conversations()[0].unread, 0, "the badge goes when the conversation opens");
    assert_eq!(app.open_conversation(), Some("alice"));

    // Until the worker answers, the conversation is empty.
    assert!(screen(&app).contains("No messages yet"));
    app.apply(Update::Messages { conversation: "alice".into(), messages: alice_messages() });
    let buffer = render(&app, W, H);
    let screen = text(&buffer);
    assert!(screen.contains("Chats · 5 unread"), "{screen}");
    assert!(!screen.contains(" 2  │"));
    assert!(screen.contains("Alice ✔ verified"));
    for expected in [
        "Alice  12:10",
        "▎ You: Yes! 7pm at the usual place",
        "Perfect, thanks for the menu 🙏",
        "👍 1",
        "📎 menu.pdf · 245 KB · s saves it",
        "You  12:00 ✓✓",
        "You  12:20 ✓",
        "You  12:28 …",
        "You  12:29 ! failed",
        "not sent · select it, Enter retries",
        "─ Today ─",
    ] {
        assert!(screen.contains(expected), "{expected:?} missing:\n{screen}");
    }
    // Own messages sit on the right, others' on the left.
    let (mine, _) = find(&buffer, "I'll book the table").unwrap();
    let (theirs, _) = find(&buffer, "Perfect, thanks").unwrap();
    assert!(mine > 60 && theirs < 35, "{mine} {theirs}");
    // Read is a blue double tick; delivered is not.
    let read_tick = find(&buffer, "You  09:40 ✓✓");
    assert!(read_tick.is_none(), "yesterday's messages are scrolled above");
    let delivered = find(&buffer, "12:00 ✓✓").unwrap();
    assert_ne!(style_at(&buffer, (delivered.0 + 6, delivered.1)).fg, Some(Color::LightBlue));
    snapshot("open", &screen);
}

#[test]
fn read_ticks_are_blue_and_days_are_separated() {
    let mut app = alice(W, 44);
    key(&mut app, KeyCode::Tab);
    let buffer = render(&app, W, 44);
    let screen = text(&buffer);
    let yesterday = find(&buffer, "─ Yesterday ─").unwrap();
    let today = find(&buffer, "─ Today ─").unwrap();
    assert!(yesterday.1 < today.1);
    let read = find(&buffer, "09:40 ✓✓").unwrap();
    assert_eq!(style_at(&buffer, (read.0 + 6, read.1)).fg, Some(Color::LightBlue), "{screen}");
    assert!(screen.contains("❤ 1"));
}

#[test]
fn times_follow_the_given_utc_offset() {
    let mut app = App::new().with_utc_offset(120);
    app.handle_event(Event::Resize(W, H), NOW);
    app.apply(Update::Conversations(conversations()));
    key(&mut app, KeyCode::Down);
    app.apply(Update::Messages { conversation: "alice".into(), messages: alice_messages() });
    let screen = screen(&app);
    assert!(screen.contains("Alice  14:10"), "{screen}");
    assert!(screen.contains("14:29"));
}

#[test]
fn sending_clears_the_box_and_shows_the_message_at_once() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.focus(), Focus::Compose);
    let typed = type_text(&mut app, "On my way");
    assert_eq!(typed, [Action::Typing("alice".into())], "typing is told once, not per key");
    assert!(screen(&app).contains("On my way"));
    let sent = key(&mut app, KeyCode::Enter);
    assert_eq!(sent, [Action::Send { conversation: "alice".into(), text: "On my way".into(), reply_to: None }]);
    assert_eq!(app.compose_text(), "");

    // Shown as sending until the worker's copy comes.
    let buffer = render(&app, W, H);
    let (x, y) = find(&buffer, "On my way").unwrap();
    assert!(x > 60);
    assert!(row(&buffer, y - 1).ends_with("You  12:30 … │"), "{}", row(&buffer, y - 1));
    let confirmed = ChatMessage {
        id: "a9".into(),
        outgoing: true,
        state: MessageState::Sent,
        text: "On my way".into(),
        sent_at_ms: NOW,
        ..Default::default()
    };
    app.apply(Update::Message { conversation: "alice".into(), message: confirmed });
    let screen = screen(&app);
    assert_eq!(screen.matches("On my way").count(), 1, "{screen}");
    assert!(screen.contains("You  12:30 ✓"));
    assert_eq!(app.messages("alice").last().unwrap().id, "a9");

    // An empty box sends nothing.
    assert!(key(&mut app, KeyCode::Enter).is_empty());
}

#[test]
fn multi_line_messages_and_editing_keys() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "First line");
    key(&mut app, Key::alt(KeyCode::Enter));
    type_text(&mut app, "second");
    key(&mut app, Key::ctrl('j'));
    type_text(&mut app, "third line");
    key(&mut app, Key::shift(KeyCode::Enter));
    type_text(&mut app, "4th");
    assert_eq!(app.compose_text(), "First line\nsecond\nthird line\n4th");
    // The box grew to four rows.
    let buffer = render(&app, W, H);
    let (_, y) = find(&buffer, "First line").unwrap();
    assert!(row(&buffer, y - 1).contains("┌ Message "));
    assert!(row(&buffer, y + 3).contains("│ 4th"));
    assert!(row(&buffer, y + 4).contains("└───"));
    snapshot("compose_multiline", &text(&buffer));

    // Cursor keys: back over "4th", up into "third line", Home, a word deleted, text inserted.
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Home);
    key(&mut app, Key::ctrl('e'));
    key(&mut app, Key::ctrl('w'));
    type_text(&mut app, "row");
    assert_eq!(app.compose_text(), "First line\nsecond\nthird row\n4th");
    key(&mut app, KeyCode::Backspace);
    key(&mut app, Key::ctrl('a'));
    key(&mut app, KeyCode::Delete);
    assert_eq!(app.compose_text(), "First line\nsecond\nhird ro\n4th");
    let sent = key(&mut app, KeyCode::Enter);
    assert_eq!(
        sent,
        [Action::Send {
            conversation: "alice".into(),
            text: "First line\nsecond\nhird ro\n4th".into(),
            reply_to: None
        }]
    );
    type_text(&mut app, "scrap this");
    key(&mut app, Key::ctrl('u'));
    assert_eq!(app.compose_text(), "");
}

#[test]
fn pasted_text_keeps_its_newlines() {
    let mut app = alice(W, H);
    let actions = app.handle_event(Event::Paste("line 1\r\nline 2".into()), NOW);
    assert_eq!(actions, [Action::Typing("alice".into())]);
    assert_eq!(app.focus(), Focus::Compose);
    assert_eq!(app.compose_text(), "line 1\nline 2");
}

#[test]
fn typing_is_told_again_after_a_few_seconds() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    assert_eq!(type_text(&mut app, "ab").len(), 1);
    assert!(app.handle_event(Event::Key(Key::char('c')), NOW + 3_000).is_empty());
    assert_eq!(app.handle_event(Event::Key(Key::char('d')), NOW + 4_500), [Action::Typing("alice".into())]);
}

#[test]
fn switching_conversations_keeps_drafts() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "half a thought");
    let actions = key(&mut app, Key::alt(KeyCode::Down));
    assert_eq!(actions, [Action::Open("club".into())]);
    assert_eq!(app.compose_text(), "");
    app.apply(Update::Messages { conversation: "club".into(), messages: club_messages() });
    let screen = screen(&app);
    assert!(screen.contains("Book club ◷ 1d"), "{screen}");
    assert!(screen.contains("Dana  11:50 · ◷ 20h"));
    assert!(screen.contains("Dana set disappearing messages to 1 day · 09:30"));
    assert!(screen.contains("Chats ─"), "all read now: {screen}");

    assert_eq!(key(&mut app, Key::alt(KeyCode::Up)), [Action::Open("alice".into())]);
    assert_eq!(app.compose_text(), "half a thought");
    // The end of the list stays put; the same conversation is not opened twice.
    assert!(key(&mut app, Key::alt(KeyCode::Up)).is_empty());
}

#[test]
fn tab_cycles_focus_and_list_keys_move() {
    let mut app = alice(W, H);
    assert_eq!(app.focus(), Focus::List);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::Messages);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::Compose);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::List);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.focus(), Focus::Compose);
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.focus(), Focus::List);
    assert_eq!(key(&mut app, Key::char('j')), [Action::Open("club".into())]);
    assert_eq!(key(&mut app, KeyCode::End), [Action::Open("bob".into())]);
    assert_eq!(key(&mut app, Key::char('g')), [Action::Open("alice".into())]);
    // The focused pane's border is highlighted.
    let buffer = render(&app, W, H);
    assert_eq!(style_at(&buffer, (0, 0)).fg, Some(Color::Cyan));
    assert_eq!(style_at(&buffer, (W - 1, 0)).fg, Some(Color::DarkGray));
}

#[test]
fn mouse_clicks_open_and_the_wheel_scrolls() {
    let mut app = alice(W, H);
    // Bob is the third conversation: rows 5 and 6 of the list.
    let click = |column, row| Event::Mouse(Mouse { kind: MouseKind::Click, column, row });
    assert_eq!(app.handle_event(click(5, 6), NOW), [Action::Open("bob".into())]);
    assert_eq!(app.handle_event(click(5, 1), NOW), [Action::Open("alice".into())]);
    app.apply(Update::Messages { conversation: "alice".into(), messages: alice_messages() });

    // A click on a message selects it.
    let buffer = render(&app, W, H);
    let (_, y) = find(&buffer, "Perfect, thanks").unwrap();
    app.handle_event(click(40, y), NOW);
    assert_eq!(app.focus(), Focus::Messages);
    assert_eq!(app.selected_message().unwrap().id, "a5");
    // The compose box takes a click too.
    app.handle_event(click(50, H - 3), NOW);
    assert_eq!(app.focus(), Focus::Compose);

    let before = screen(&app);
    app.handle_event(Event::Mouse(Mouse { kind: MouseKind::ScrollUp, column: 50, row: 10 }), NOW);
    let after = screen(&app);
    assert_ne!(before, after);
    assert!(after.contains("↓ newer messages below"));
    app.handle_event(Event::Mouse(Mouse { kind: MouseKind::ScrollDown, column: 50, row: 10 }), NOW);
    assert_eq!(screen(&app), before);
}

#[test]
fn scrollback_keeps_its_place_when_messages_arrive() {
    let mut app = alice(W, H);
    let many: Vec<ChatMessage> =
        (0..80).map(|i| msg(&format!("m{i}"), "Alice", &format!("message number {i}"), NOW - (80 - i) * MIN)).collect();
    app.apply(Update::Messages { conversation: "alice".into(), messages: many.clone() });
    let bottom = screen(&app);
    assert!(bottom.contains("message number 79"));
    key(&mut app, KeyCode::PageUp);
    let up = screen(&app);
    assert!(!up.contains("message number 79"), "{up}");
    assert!(up.contains("↓ newer messages below · End"));
    key(&mut app, KeyCode::PageUp);
    key(&mut app, KeyCode::PageUp);
    let further = screen(&app);
    assert_ne!(up, further);

    // A new message does not move what is being read.
    let mut more = many;
    more.push(msg("m80", "Alice", "message number 80", NOW));
    app.apply(Update::Messages { conversation: "alice".into(), messages: more });
    assert_eq!(screen(&app), further);

    // End (in the messages) goes back to the newest.
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::End);
    assert!(screen(&app).contains("message number 80"));
    // Home goes to the oldest.
    key(&mut app, KeyCode::Home);
    assert!(screen(&app).contains("message number 0\n") || screen(&app).contains("message number 0 "));
    key(&mut app, KeyCode::PageDown);
    key(&mut app, KeyCode::PageDown);
    assert!(!screen(&app).contains("message number 0 "));
}

#[test]
fn scrolling_past_the_oldest_message_asks_for_older_ones() {
    let mut app = alice(W, H);
    let window: Vec<ChatMessage> = (40..80)
        .map(|i| msg(&format!("m{i}"), "Alice", &format!("message number {i}"), NOW - (80 - i) * MIN))
        .collect();
    app.apply(Update::Messages { conversation: "alice".into(), messages: window.clone() });
    let mut asked = Vec::new();
    for _ in 0..10 {
        asked.extend(key(&mut app, KeyCode::PageUp));
    }
    assert_eq!(asked, [Action::LoadOlder { conversation: "alice".into(), before: "m40".into() }], "asked once");
    let top = screen(&app);
    assert!(top.contains("message number 40"));

    // Older messages come in above: the messages on screen stay on their rows (the day
    // separator on the first row now belongs above the older ones).
    let mut all: Vec<ChatMessage> =
        (0..40).map(|i| msg(&format!("m{i}"), "Alice", &format!("message number {i}"), NOW - (80 - i) * MIN)).collect();
    all.extend(window);
    app.apply(Update::Messages { conversation: "alice".into(), messages: all });
    let after = screen(&app);
    assert_eq!(after.lines().skip(2).collect::<Vec<_>>(), top.lines().skip(2).collect::<Vec<_>>());
    assert!(after.contains("message number 39"));
    let mut asked = Vec::new();
    for _ in 0..30 {
        asked.extend(key(&mut app, KeyCode::PageUp));
    }
    assert_eq!(asked, [Action::LoadOlder { conversation: "alice".into(), before: "m0".into() }]);
    // In the messages, Up on the oldest asks too (once per oldest message).
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Home);
    assert!(key(&mut app, KeyCode::Up).is_empty());
}

#[test]
fn a_send_the_worker_never_confirms_turns_failed_and_can_be_sent_again() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    // The same text was sent long ago: that old message does not confirm the new one.
    type_text(&mut app, "I'll book the table");
    key(&mut app, KeyCode::Enter);
    app.apply(Update::Messages { conversation: "alice".into(), messages: alice_messages() });
    assert_eq!(app.messages("alice").last().unwrap().state, MessageState::Sending);
    assert!(app.messages("alice").last().unwrap().id.starts_with("local:"));

    app.handle_event(Event::Tick, NOW + 61_000);
    assert_eq!(app.messages("alice").last().unwrap().state, MessageState::Failed);
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Up);
    let again = key(&mut app, KeyCode::Enter);
    assert_eq!(
        again,
        [Action::Send { conversation: "alice".into(), text: "I'll book the table".into(), reply_to: None }]
    );
    let echoes = app.messages("alice").iter().filter(|m| m.id.starts_with("local:")).count();
    assert_eq!(echoes, 1);
    assert_eq!(app.messages("alice").last().unwrap().state, MessageState::Sending);
}

#[test]
fn reply_to_the_selected_message() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Tab);
    for _ in 0..4 {
        key(&mut app, KeyCode::Up);
    }
    assert_eq!(app.selected_message().unwrap().id, "a5");
    // The selection is marked in the first column, on a shaded background.
    let buffer = render(&app, W, H);
    let (x, y) = find(&buffer, "Perfect, thanks").unwrap();
    assert_eq!(buffer[(x - 1, y)].symbol(), "▌");
    assert_eq!(style_at(&buffer, (x + 2, y)).bg, Some(Color::DarkGray));

    key(&mut app, Key::char('r'));
    assert_eq!(app.focus(), Focus::Compose);
    assert!(screen(&app).contains("↩ Reply to Alice: Perfect, thanks for the menu"));
    type_text(&mut app, "Any time");
    let sent = key(&mut app, KeyCode::Enter);
    assert_eq!(
        sent,
        [Action::Send { conversation: "alice".into(), text: "Any time".into(), reply_to: Some("a5".into()) }]
    );
    let screen = screen(&app);
    assert!(screen.contains("▎ Alice: Perfect, thanks for the menu"), "{screen}");
    assert!(screen.contains("┌ Message "), "back to plain messages");
}

#[test]
fn edit_own_message() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Tab);
    for _ in 0..3 {
        key(&mut app, KeyCode::Up);
    }
    assert_eq!(app.selected_message().unwrap().id, "a6");
    key(&mut app, Key::char('e'));
    assert_eq!(app.compose_text(), "I'll book the table");
    assert!(screen(&app).contains("Edit message"));
    key(&mut app, Key::ctrl('u'));
    type_text(&mut app, "I booked the table");
    let actions = key(&mut app, KeyCode::Enter);
    assert_eq!(
        actions,
        [Action::Edit { conversation: "alice".into(), message: "a6".into(), text: "I booked the table".into() }]
    );
    assert!(screen(&app).contains("You  12:20 · edited ✓"));

    // Someone else's message cannot be edited.
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::Messages);
    assert_eq!(app.selected_message().unwrap().id, "a6");
    key(&mut app, Key::char('k'));
    assert_eq!(app.selected_message().unwrap().id, "a5");
    assert!(key(&mut app, Key::char('e')).is_empty());
    assert!(screen(&app).contains("Only your own text messages can be edited"));
}

#[test]
fn up_in_an_empty_box_edits_the_last_message_and_esc_keeps_the_draft() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Up);
    assert_eq!(app.compose_text(), "Can you order for me?");
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.compose_text(), "");
    type_text(&mut app, "draft");
    key(&mut app, Key::ctrl('o'));
    assert!(screen(&app).contains("Send a file"));
    assert_eq!(app.compose_text(), "");
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.compose_text(), "draft");
}

#[test]
fn delete_for_everyone_asks_first() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Tab);
    for _ in 0..3 {
        key(&mut app, KeyCode::Up);
    }
    assert!(key(&mut app, Key::char('d')).is_empty());
    let screen_text = screen(&app);
    assert!(screen_text.contains("Delete for everyone?"));
    assert!(screen_text.contains("“I'll book the table”"));
    // Anything but y or n is ignored; n keeps the message.
    assert!(key(&mut app, Key::char('x')).is_empty());
    assert!(key(&mut app, Key::char('n')).is_empty());
    assert!(!screen(&app).contains("Delete for everyone?"));
    key(&mut app, Key::char('d'));
    let actions = key(&mut app, Key::char('y'));
    assert_eq!(actions, [Action::Delete { conversation: "alice".into(), message: "a6".into() }]);
    let after = screen(&app);
    assert!(after.contains("This message was deleted"));
    assert!(!after.contains("I'll book the table"));

    // Others' messages cannot be deleted for everyone.
    key(&mut app, KeyCode::Up);
    assert_eq!(app.selected_message().unwrap().id, "a5");
    key(&mut app, Key::char('d'));
    assert!(!screen(&app).contains("Delete for everyone?"));
    assert!(screen(&app).contains("Only your own messages can be deleted"));
}

#[test]
fn react_with_the_picker() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Tab);
    for _ in 0..4 {
        key(&mut app, KeyCode::Up);
    }
    key(&mut app, Key::char('+'));
    let screen_text = screen(&app);
    assert!(screen_text.contains("1 👍  2 ❤  3 😂  4 😮  5 😢  6 🙏"), "{screen_text}");
    let actions = key(&mut app, Key::char('2'));
    assert_eq!(actions, [Action::React { conversation: "alice".into(), message: "a5".into(), emoji: "❤".into() }]);
    key(&mut app, Key::char('+'));
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Right);
    let actions = key(&mut app, KeyCode::Enter);
    assert_eq!(actions, [Action::React { conversation: "alice".into(), message: "a5".into(), emoji: "😂".into() }]);
    // Without a selection, the user is told how to select.
    key(&mut app, KeyCode::Esc);
    key(&mut app, Key::char('+'));
    assert!(screen(&app).contains("Select a message first"));
}

#[test]
fn retry_save_and_copy() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Up);
    assert_eq!(key(&mut app, KeyCode::Enter), [Action::Retry { conversation: "alice".into(), message: "a8".into() }]);
    for _ in 0..4 {
        key(&mut app, KeyCode::Up);
    }
    assert_eq!(app.selected_message().unwrap().id, "a4");
    assert_eq!(key(&mut app, Key::char('s')), [Action::Save { conversation: "alice".into(), message: "a4".into() }]);
    assert!(screen(&app).contains("Saving menu.pdf…"));
    key(&mut app, KeyCode::Up);
    assert!(key(&mut app, Key::char('s')).is_empty());
    assert!(screen(&app).contains("The selected message has no file"));
    assert!(key(&mut app, Key::char('y')).is_empty());
    assert!(screen(&app).contains("Message copied"));
    // Enter on a message that did not fail goes to the compose box.
    assert!(key(&mut app, KeyCode::Enter).is_empty());
    assert_eq!(app.focus(), Focus::Compose);
}

#[test]
fn search_highlights_and_jumps_between_matches() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    key(&mut app, Key::ctrl('f'));
    type_text(&mut app, "MENU");
    let buffer = render(&app, W, H);
    let screen_text = text(&buffer);
    assert!(screen_text.contains("Search: MENU"), "{screen_text}");
    assert!(screen_text.contains("2 of 2"));
    // Every match is highlighted, case-insensitively.
    let (x, y) = find(&buffer, "menu 🙏").unwrap();
    assert_eq!(style_at(&buffer, (x, y)).bg, Some(Color::Yellow));
    assert_eq!(style_at(&buffer, (x + 3, y)).bg, Some(Color::Yellow));
    assert_ne!(style_at(&buffer, (x + 4, y)).bg, Some(Color::Yellow));
    let (x, y) = find(&buffer, "menu from").unwrap();
    assert_eq!(style_at(&buffer, (x, y)).bg, Some(Color::Yellow));
    // The newest match is selected.
    assert_eq!(app.selected_message().unwrap().id, "a5");
    snapshot("search", &screen_text);

    key(&mut app, KeyCode::Enter);
    assert_eq!(app.focus(), Focus::Messages);
    key(&mut app, Key::char('n'));
    assert_eq!(app.selected_message().unwrap().id, "a3");
    assert!(screen(&app).contains("1 of 2"));
    key(&mut app, Key::char('n'));
    assert_eq!(app.selected_message().unwrap().id, "a3", "no match older than the first");
    key(&mut app, Key::char('N'));
    assert_eq!(app.selected_message().unwrap().id, "a5");

    key(&mut app, Key::char('/'));
    for _ in 0..4 {
        key(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "zebra");
    assert!(screen(&app).contains("no match"));
    key(&mut app, KeyCode::Esc);
    assert!(!screen(&app).contains("Search:"));
}

#[test]
fn help_lists_every_key() {
    let mut app = alice(W, H);
    key(&mut app, Key::char('?'));
    let screen_text = screen(&app);
    assert!(screen_text.contains("┌ Keys"));
    assert!(screen_text.contains("previous / next conversation"));
    snapshot("help", &screen_text);
    // It scrolls to the end of the list, and any other key closes it.
    for _ in 0..60 {
        key(&mut app, KeyCode::Down);
    }
    let scrolled = screen(&app);
    assert!(scrolled.contains("Ctrl-U"), "{scrolled}");
    assert!(scrolled.contains("read"));
    key(&mut app, KeyCode::Esc);
    assert!(!screen(&app).contains("┌ Keys"));

    // In the compose box ? is text; F1 still opens the help.
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "?");
    assert_eq!(app.compose_text(), "?");
    key(&mut app, KeyCode::F(1));
    assert!(screen(&app).contains("┌ Keys"));
}

#[test]
fn the_help_names_only_keys_that_work() {
    // Every key sequence named for the messages view does something visible or asks the worker.
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Up);
    for k in ['r', 'e', 'd', '+', 's', 'y'] {
        let mut probe = app.clone();
        let before = screen(&probe);
        let actions = key(&mut probe, Key::char(k));
        assert!(!actions.is_empty() || screen(&probe) != before, "{k} did nothing");
    }
}

#[test]
fn status_line_says_the_route_and_what_is_blocked() {
    let mut app = alice(W, H);
    let buffer = render(&app, W, H);
    let status_row = row(&buffer, H - 1);
    assert!(status_row.starts_with(" DIRECT  to relay.example.org:443 · up to date 12:29"), "{status_row}");
    assert_eq!(style_at(&buffer, (1, H - 1)).bg, Some(Color::Green));

    app.apply(Update::Status(ConnectionStatus {
        route: Route::Bridge,
        endpoint: Some("198.51.100.7:443".into()),
        blocked: Some("relay.example.org refused by SNI; using a bridge".into()),
        syncing: true,
        last_ok_ms: Some(NOW - 3 * MIN),
    }));
    let buffer = render(&app, W, H);
    let status_row = row(&buffer, H - 1);
    assert!(
        status_row.starts_with(
            " BRIDGE  via bridge 198.51.100.7:443  BLOCKED  relay.example.org refused by SNI; using a bridge"
        ),
        "{status_row}"
    );
    let (x, y) = find(&buffer, "BLOCKED").unwrap();
    assert_eq!(style_at(&buffer, (x, y)).bg, Some(Color::Red));
    snapshot("blocked", &text(&buffer));

    app.apply(Update::Status(ConnectionStatus {
        route: Route::PluggableTransport("obfs4".into()),
        endpoint: Some("192.0.2.9:9443".into()),
        blocked: Some("DNS tampered; using the IP endpoint".into()),
        ..Default::default()
    }));
    let status_row = row(&render(&app, W, H), H - 1);
    assert!(
        status_row.starts_with(" OBFS4  pluggable transport 192.0.2.9:9443  BLOCKED  DNS tampered"),
        "{status_row}"
    );

    app.apply(Update::Status(ConnectionStatus {
        route: Route::Offline,
        last_ok_ms: Some(NOW - 10 * MIN),
        ..Default::default()
    }));
    let buffer = render(&app, W, H);
    let status_row = row(&buffer, H - 1);
    assert!(status_row.starts_with(" OFFLINE  messages wait in the outbox · last connected 12:20"), "{status_row}");
    assert_eq!(style_at(&buffer, (1, H - 1)).bg, Some(Color::Red));
    assert!(row(&render(&App::new(), W, H), H - 1).starts_with(" CONNECTING "));
}

#[test]
fn changed_safety_number_shows_a_loud_banner() {
    let mut app = app(W, H);
    key(&mut app, KeyCode::End);
    app.apply(Update::Messages {
        conversation: "bob".into(),
        messages: vec![mine("b1", "the keys are under the mat", NOW - 2 * 86_400_000, MessageState::Read)],
    });
    let buffer = render(&app, W, H);
    let screen_text = text(&buffer);
    assert!(screen_text.contains("Bob ! safety number changed"));
    let (x, y) = find(&buffer, "! Bob's safety number changed.").unwrap();
    assert_eq!(style_at(&buffer, (x, y)).bg, Some(Color::Red));
    assert!(row(&buffer, y + 1).contains("Compare safety numbers again before you trust new messages."));
    snapshot("key_changed", &screen_text);
    // The list marks it too.
    assert!(screen_text.contains("│ Bob !"));
}

#[test]
fn invite_shows_a_qr_code_and_the_link() {
    let mut app = alice(W, 40);
    assert_eq!(key(&mut app, KeyCode::F(2)), [Action::NewInvite]);
    assert!(text(&render(&app, W, 40)).contains("Making an invite…"));
    let link = "tamizdat:invite/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEy";
    app.apply(Update::Invite(link.into()));
    let buffer = render(&app, W, 40);
    let screen_text = text(&buffer);
    assert!(screen_text.contains(&link[..62]), "{screen_text}");
    assert!(screen_text.contains(&format!("│ {} ", &link[62..])));

    // The code on screen is the code of the link, dark modules drawn dark on light.
    let expected = qrcode::QrCode::with_error_correction_level(link, qrcode::EcLevel::L)
        .unwrap()
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    let expected: Vec<&str> = expected.lines().collect();
    // The quiet zone is four columns and two rows of light cells.
    assert!(expected[1].trim().is_empty() && !expected[2].trim().is_empty());
    let (x, y) = find(&buffer, expected[2].trim()).unwrap();
    let (left, top) = (x - 4, y - 2);
    for (i, line) in expected.iter().enumerate() {
        let on_screen: String = (0..u16::try_from(line.chars().count()).unwrap())
            .map(|dx| buffer[(left + dx, top + u16::try_from(i).unwrap())].symbol().to_owned())
            .collect();
        assert_eq!(&on_screen, line, "row {i}");
    }
    let dark = find(&buffer, "█▀▀▀▀▀█").unwrap();
    assert_eq!(style_at(&buffer, dark).fg, Some(Color::Black));
    assert_eq!(style_at(&buffer, dark).bg, Some(Color::White));
    snapshot("invite", &screen_text);

    // c copies the link; Esc closes.
    assert!(key(&mut app, Key::char('c')).is_empty());
    key(&mut app, KeyCode::Esc);
    let after = text(&render(&app, W, 40));
    assert!(!after.contains("Invite someone"));
    assert!(after.contains("Invite link copied"));
}

#[test]
fn invite_too_long_for_a_qr_code_says_so() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::F(2));
    // Post-quantum invites are about 5.5 KB, more than a QR code holds.
    let link = format!("tamizdat:invite/{}", "A".repeat(5_520));
    app.apply(Update::Invite(link));
    let screen_text = screen(&app);
    assert!(screen_text.contains("This invite is 5536 characters, more than a QR code holds."), "{screen_text}");
    assert!(screen_text.contains("more characters: c copies the whole link"));
    // A small terminal gets the size it needs instead of a cut code.
    let mut small = alice(W, 24);
    key(&mut small, KeyCode::F(2));
    small.apply(Update::Invite("tamizdat:invite/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into()));
    assert!(text(&render(&small, W, 24)).contains("Enlarge the terminal to"));
}

#[test]
fn narrow_terminals_show_one_pane_at_a_time() {
    let (w, h) = (50, 20);
    let mut app = alice(w, h);
    let list = text(&render(&app, w, h));
    assert!(list.contains("Dana: Chapter 4 tonight?"));
    assert!(!list.contains("Message"));
    snapshot("narrow_list", &list);
    key(&mut app, KeyCode::Enter);
    let chat = text(&render(&app, w, h));
    assert!(!chat.contains("Chats"));
    assert!(chat.contains("Can you order for me?"));
    assert!(chat.contains("Enter sends"));
    snapshot("narrow_chat", &chat);
    key(&mut app, KeyCode::Esc);
    assert!(text(&render(&app, w, h)).contains("Chats"));
}

#[test]
fn typing_indicators_and_notices_age() {
    let mut app = alice(W, H);
    app.apply(Update::Typing { conversation: "alice".into(), who: "Alice".into() });
    app.apply(Update::Typing { conversation: "club".into(), who: "Dana".into() });
    app.apply(Update::Notice("Saved to ~/Downloads/menu.pdf".into()));
    let screen_text = screen(&app);
    assert!(screen_text.contains("typing… ┐"), "{screen_text}");
    assert!(screen_text.contains("Dana is typing…"));
    assert!(screen_text.contains("Saved to ~/Downloads/menu.pdf"));
    app.handle_event(Event::Tick, NOW + 10_000);
    let later = text(&render(&app, W, H));
    assert!(!later.contains("typing…"));
    assert!(!later.contains("Saved to"));

    app.apply(Update::Error("Could not reach the relay".into()));
    let buffer = render(&app, W, H);
    let (x, y) = find(&buffer, "Could not reach the relay").unwrap();
    assert_eq!(style_at(&buffer, (x, y)).fg, Some(Color::Red));
}

#[test]
fn disappearing_messages_go_when_their_time_comes() {
    let mut app = alice(W, H);
    let mut messages = alice_messages();
    messages.push(ChatMessage { expires_at_ms: Some(NOW + 90_000), ..msg("x1", "Alice", "Burn after reading", NOW) });
    app.apply(Update::Messages { conversation: "alice".into(), messages });
    assert!(screen(&app).contains("Alice  12:30 · ◷ 1m"));
    app.handle_event(Event::Tick, NOW + 91_000);
    assert!(!screen(&app).contains("Burn after reading"));
    assert!(app.messages("alice").iter().all(|m| m.id != "x1"));
}

#[test]
fn what_others_write_cannot_drive_the_terminal() {
    let mut app = alice(W, H);
    let evil = msg("e1", "Mallory\u{1b}[2J", "hi \u{1b}]52;c;ZXZpbA==\u{7} there \u{202e}txt.exe", NOW);
    app.apply(Update::Messages { conversation: "alice".into(), messages: vec![evil] });
    let buffer = render(&app, W, H);
    for cell in buffer.content() {
        assert!(!cell.symbol().chars().any(|c| c.is_control() || c == '\u{202e}'), "{:?}", cell.symbol());
    }
    assert!(text(&buffer).contains("hi �]52;c;ZXZpbA==� there �txt.exe"));
}

#[test]
fn a_conversation_that_goes_away_is_closed() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    let mut list = conversations();
    list.remove(0);
    app.apply(Update::Conversations(list));
    assert_eq!(app.open_conversation(), None);
    assert_eq!(app.focus(), Focus::List);
    assert!(screen(&app).contains("No conversation open"));
}

#[test]
fn quit_keys() {
    let mut app = alice(W, H);
    assert_eq!(key(&mut app, Key::ctrl('c')), [Action::Quit]);
    assert_eq!(key(&mut app, Key::ctrl('q')), [Action::Quit]);
    key(&mut app, KeyCode::F(1));
    assert_eq!(key(&mut app, Key::ctrl('q')), [Action::Quit], "even over a popup");
}

/// The screen the README shows: two contacts and a group, every delivery state, a reply, a
/// reaction, a file, someone typing, and a connection that goes around a block.
#[test]
fn readme_capture() {
    let (w, h) = (100, 35);
    let mut app = App::new();
    app.handle_event(Event::Resize(w, h), NOW);
    app.apply(Update::Conversations(conversations()));
    app.apply(Update::Status(ConnectionStatus {
        route: Route::Bridge,
        endpoint: Some("198.51.100.7:443".into()),
        blocked: Some("relay.example.org refused by SNI; using a bridge".into()),
        syncing: false,
        last_ok_ms: Some(NOW - MIN),
    }));
    key(&mut app, KeyCode::Down);
    app.apply(Update::Messages { conversation: "alice".into(), messages: alice_messages() });
    app.apply(Update::Typing { conversation: "club".into(), who: "Dana".into() });
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "Ordering the soup for you");
    let capture = text(&render(&app, w, h));
    for state in ["✓✓", "You  12:20 ✓", "…", "! failed", "▎ You:", "👍 1", "📎 menu.pdf", "Dana is typing…", "BLOCKED"]
    {
        assert!(capture.contains(state), "{state:?} missing");
    }
    check(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/tui-capture.txt"), &capture);
    let readme = include_str!("../README.md");
    assert!(readme.contains(&capture), "the README shows an old capture: paste docs/tui-capture.txt in");
}

#[test]
fn the_readme_lists_the_keys_the_help_shows() {
    let readme = include_str!("../README.md");
    for (section, keys) in KEYS {
        for (key, what) in *keys {
            let row = format!("| {section}: `{key}` | {what} |");
            assert!(readme.contains(&row), "README lacks {row}");
        }
    }
}

#[test]
fn any_size_draws_without_panicking() {
    let mut app = alice(W, H);
    key(&mut app, KeyCode::Enter);
    type_text(&mut app, "a draft long enough to wrap on the smallest of screens, twice over");
    app.apply(Update::Typing { conversation: "alice".into(), who: "Alice".into() });
    app.apply(Update::Error("something went wrong".into()));
    let mut states = vec![app.clone()];
    let mut popups = app.clone();
    key(&mut popups, KeyCode::F(1));
    states.push(popups.clone());
    key(&mut popups, KeyCode::Esc);
    key(&mut popups, KeyCode::F(2));
    popups.apply(Update::Invite("tamizdat:invite/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into()));
    states.push(popups);
    let mut search = app.clone();
    key(&mut search, Key::ctrl('f'));
    type_text(&mut search, "the");
    states.push(search);
    for state in &states {
        for (w, h) in [(1, 1), (2, 3), (10, 4), (20, 8), (59, 12), (60, 12), (61, 5), (200, 60)] {
            let mut sized = state.clone();
            sized.handle_event(Event::Resize(w, h), NOW);
            for k in [KeyCode::PageUp, KeyCode::Up, KeyCode::Tab, KeyCode::Up, KeyCode::PageDown] {
                key(&mut sized, k);
            }
            render(&sized, w, h);
            sized.handle_event(Event::Mouse(Mouse { kind: MouseKind::Click, column: w / 2, row: h / 2 }), NOW);
            render(&sized, w, h);
        }
    }
}
