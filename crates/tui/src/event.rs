//! Input the [`App`](crate::App) understands: keys, mouse, paste, resize and the clock tick.
//! Our own small types, so tests can write keys without a terminal and the model does not
//! depend on crossterm's version.

use crossterm::event as ct;

/// Something that happened at the terminal (or the clock ticked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was pressed.
    Key(Key),
    /// A mouse click or wheel turn.
    Mouse(Mouse),
    /// Text pasted at once (bracketed paste): newlines stay newlines instead of sending.
    Paste(String),
    /// The terminal is now this many columns and rows.
    Resize(u16, u16),
    /// Time passed: typing indicators, notices and disappearing messages age.
    Tick,
}

/// A key with its modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Which key.
    pub code: KeyCode,
    /// Control held.
    pub ctrl: bool,
    /// Alt (Meta, Option) held.
    pub alt: bool,
    /// Shift held (only reported for non-character keys; characters arrive shifted).
    pub shift: bool,
}

/// Keys the TUI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCode {
    /// A character.
    Char(char),
    /// Enter / Return.
    Enter,
    /// Backspace.
    Backspace,
    /// Delete.
    Delete,
    /// Left arrow.
    Left,
    /// Right arrow.
    Right,
    /// Up arrow.
    Up,
    /// Down arrow.
    Down,
    /// Home.
    Home,
    /// End.
    End,
    /// Page Up.
    PageUp,
    /// Page Down.
    PageDown,
    /// Tab.
    Tab,
    /// Shift-Tab.
    BackTab,
    /// Escape.
    Esc,
    /// A function key, F1 to F12.
    F(u8),
}

impl Key {
    /// A key without modifiers.
    pub fn plain(code: KeyCode) -> Self {
        Key { code, ctrl: false, alt: false, shift: false }
    }
    /// A character without modifiers.
    pub fn char(c: char) -> Self {
        Key::plain(KeyCode::Char(c))
    }
    /// Control and a character.
    pub fn ctrl(c: char) -> Self {
        Key { ctrl: true, ..Key::char(c) }
    }
    /// Alt and a key.
    pub fn alt(code: KeyCode) -> Self {
        Key { alt: true, ..Key::plain(code) }
    }
    /// Shift and a key.
    pub fn shift(code: KeyCode) -> Self {
        Key { shift: true, ..Key::plain(code) }
    }
}

impl From<KeyCode> for Key {
    fn from(code: KeyCode) -> Self {
        Key::plain(code)
    }
}

/// A mouse event at a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mouse {
    /// Click or wheel.
    pub kind: MouseKind,
    /// Column, from 0.
    pub column: u16,
    /// Row, from 0.
    pub row: u16,
}

/// The mouse events the TUI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MouseKind {
    /// Left button pressed.
    Click,
    /// Wheel turned away from the user.
    ScrollUp,
    /// Wheel turned towards the user.
    ScrollDown,
}

impl Event {
    /// Converts a crossterm event; `None` for what the TUI ignores (key releases, focus,
    /// mouse moves).
    pub fn from_crossterm(event: ct::Event) -> Option<Event> {
        match event {
            ct::Event::Key(key) if key.kind != ct::KeyEventKind::Release => {
                let code = match key.code {
                    ct::KeyCode::Char(c) => KeyCode::Char(c),
                    ct::KeyCode::Enter => KeyCode::Enter,
                    ct::KeyCode::Backspace => KeyCode::Backspace,
                    ct::KeyCode::Delete => KeyCode::Delete,
                    ct::KeyCode::Left => KeyCode::Left,
                    ct::KeyCode::Right => KeyCode::Right,
                    ct::KeyCode::Up => KeyCode::Up,
                    ct::KeyCode::Down => KeyCode::Down,
                    ct::KeyCode::Home => KeyCode::Home,
                    ct::KeyCode::End => KeyCode::End,
                    ct::KeyCode::PageUp => KeyCode::PageUp,
                    ct::KeyCode::PageDown => KeyCode::PageDown,
                    ct::KeyCode::Tab => KeyCode::Tab,
                    ct::KeyCode::BackTab => KeyCode::BackTab,
                    ct::KeyCode::Esc => KeyCode::Esc,
                    ct::KeyCode::F(n) => KeyCode::F(n),
                    _ => return None,
                };
                let m = key.modifiers;
                Some(Event::Key(Key {
                    code,
                    ctrl: m.contains(ct::KeyModifiers::CONTROL),
                    alt: m.contains(ct::KeyModifiers::ALT),
                    shift: m.contains(ct::KeyModifiers::SHIFT) && !matches!(code, KeyCode::Char(_)),
                }))
            }
            ct::Event::Mouse(mouse) => {
                let kind = match mouse.kind {
                    ct::MouseEventKind::Down(ct::MouseButton::Left) => MouseKind::Click,
                    ct::MouseEventKind::ScrollUp => MouseKind::ScrollUp,
                    ct::MouseEventKind::ScrollDown => MouseKind::ScrollDown,
                    _ => return None,
                };
                Some(Event::Mouse(Mouse { kind, column: mouse.column, row: mouse.row }))
            }
            ct::Event::Paste(text) => Some(Event::Paste(text)),
            ct::Event::Resize(w, h) => Some(Event::Resize(w, h)),
            _ => None,
        }
    }
}
